//! Cost before sending: what a bulk text would do, from the validated request and read-only Redis queries. A dry
//! run writes nothing (not even the purchase lock): the customer's record, its pool and its opt-out list are read,
//! and everything else is arithmetic.

use serde::Serialize;
use shared::batches::NewBatch;
use shared::config::Settings;
use shared::customers;
use shared::domain::smart::{SmartEncoding, describe_char, ucs2_characters};
use shared::keys::CustomerKeys;
use shared::store::Conn;
use utoipa::ToSchema;

/// What a bulk text would do and cost.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Estimate {
    /// Always true: nothing was written.
    pub dry_run: bool,
    pub customer: String,
    /// Recipients in the request, before de-duplication.
    pub recipients_submitted: usize,
    pub duplicates: usize,
    /// Recipients who replied STOP to this customer: their jobs would end `opted_out` without a Twilio call.
    pub opted_out: usize,
    /// Recipients who would be texted.
    pub recipients: usize,
    pub characters: usize,
    /// `GSM-7` or `UCS-2`.
    pub encoding: String,
    pub segments_per_message: u32,
    /// The characters that force UCS-2 (`U+2019 ’`); empty for GSM-7.
    pub ucs2_characters: Vec<String>,
    /// What Smart Encoding changed, when it was asked for.
    pub smart_encoding: Option<SmartEncoding>,
    pub numbers_owned: u32,
    /// Free slots over the owned numbers in the current window.
    pub slots_available: u32,
    /// Numbers the whole send needs in one window (recipients / daily quota).
    pub numbers_needed: u32,
    /// Numbers the workers would buy for it now.
    pub purchases: u32,
    pub max_numbers: u32,
    /// Recipients that would wait for a later window (the customer would reach max_numbers).
    pub deferred: u64,
    pub segments_total: u64,
    pub segment_cost: f64,
    /// Segments × segment cost.
    pub messages_cost: f64,
    /// What the numbers bought for it would add per month.
    pub numbers_monthly_cost: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum EstimateError {
    #[error("unknown customer {0}: create it first with `producer customer add {0}`")]
    UnknownCustomer(String),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

fn cents(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Estimates `batch` (validated, smart-encoded if asked) for its customer. `submitted`: recipients before
/// de-duplication.
pub async fn estimate(
    conn: &mut Conn,
    batch: &NewBatch,
    smart: Option<SmartEncoding>,
    settings: &Settings,
) -> Result<Estimate, EstimateError> {
    let customer = batch.customer.clone();
    let pool = customers::pool(conn, &customer, &settings.quota)
        .await?
        .ok_or_else(|| EstimateError::UnknownCustomer(customer.to_string()))?;
    // Opted-out recipients, in chunks (SMISMEMBER reads many members in one command).
    let optouts = CustomerKeys::new(&customer).optouts();
    let mut opted_out = 0;
    for chunk in batch.recipients.chunks(1_000) {
        let mut cmd = redis::cmd("SMISMEMBER");
        cmd.arg(&optouts);
        for r in chunk {
            cmd.arg(r.as_str());
        }
        let flags: Vec<bool> = cmd.query_async(conn).await?;
        opted_out += flags.into_iter().filter(|f| *f).count();
    }
    let to_send = batch.recipients.len() - opted_out;
    let body = batch.body.as_str();
    let segments = batch.body.segments();
    let quota = settings.quota.daily_quota as u64;
    let owned = pool.numbers.len() as u32;
    let available = pool.total_available();
    let short = (to_send as u64).saturating_sub(available as u64);
    let room = pool.max_numbers.saturating_sub(owned);
    let purchases = (short.div_ceil(quota) as u32).min(room);
    let deferred = short.saturating_sub(purchases as u64 * quota);
    let segments_total = to_send as u64 * segments.segments as u64;
    Ok(Estimate {
        dry_run: true,
        customer: customer.to_string(),
        recipients_submitted: batch.recipients.len() + batch.duplicates,
        duplicates: batch.duplicates,
        opted_out,
        recipients: to_send,
        characters: body.chars().count(),
        encoding: segments.encoding.as_str().to_owned(),
        segments_per_message: segments.segments,
        ucs2_characters: ucs2_characters(body).into_iter().map(describe_char).collect(),
        smart_encoding: smart,
        numbers_owned: owned,
        slots_available: available,
        numbers_needed: (to_send as u64).div_ceil(quota) as u32,
        purchases,
        max_numbers: pool.max_numbers,
        deferred,
        segments_total,
        segment_cost: settings.pricing.segment,
        messages_cost: cents(segments_total as f64 * settings.pricing.segment),
        numbers_monthly_cost: cents(purchases as f64 * settings.pricing.number_monthly),
    })
}

/// The estimate for people.
pub fn print(e: &Estimate) {
    println!("dry run for {}: nothing was written", e.customer);
    println!(
        "  recipients: {} submitted, {} duplicates, {} opted out -> {} to text",
        e.recipients_submitted, e.duplicates, e.opted_out, e.recipients
    );
    println!("  body: {} characters, {}, {} segment(s) per message", e.characters, e.encoding, e.segments_per_message);
    if !e.ucs2_characters.is_empty() {
        println!("    characters that force UCS-2: {}", e.ucs2_characters.join(", "));
    }
    match &e.smart_encoding {
        Some(s) => println!(
            "  smart encoding: {} {} -> {} {} segment(s) per message ({} replaced: {}); saves {} segments",
            s.encoding_before,
            s.segments_before,
            s.encoding_after,
            s.segments_after,
            s.replaced.len(),
            s.replaced.join(", "),
            s.saved() as u64 * e.recipients as u64
        ),
        None if !e.ucs2_characters.is_empty() => {
            println!("    (--smart-encoding replaces look-alikes such as curly quotes and long dashes with GSM-7)")
        }
        None => {}
    }
    println!(
        "  numbers: {} owned with {} free slot(s); this send needs {}; would buy {} (max {}){}",
        e.numbers_owned,
        e.slots_available,
        e.numbers_needed,
        e.purchases,
        e.max_numbers,
        if e.deferred > 0 {
            format!("; {} recipients would wait for the next window", e.deferred)
        } else {
            String::new()
        }
    );
    println!(
        "  estimated cost: {} segments x ${} = ${:.2}, plus ${:.2} a month for {} new number(s)",
        e.segments_total, e.segment_cost, e.messages_cost, e.numbers_monthly_cost, e.purchases
    );
}
