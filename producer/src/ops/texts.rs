//! Bulk texts and single messages: one path from an untrusted request to queued jobs — validate everything, then
//! create the batch (which checks the customer exists before writing anything) and enqueue exactly once — and the
//! dry run, which estimates what the same request would do and cost and writes nothing.
//!
//! Validation is CPU work (100,000 numbers take a few hundred milliseconds) and needs no Redis, so it is a step of
//! its own: the CLI reports a bad file without connecting anywhere, and the server runs it off the async threads.

use serde::Serialize;
use shared::batches::{self, NewBatch, Progress, SubmitError};
use shared::customers;
use shared::domain::smart::{SmartEncoding, describe_char, ucs2_characters};
use shared::keys::CustomerKeys;
use utoipa::ToSchema;

use super::{Deps, OpsError};
use crate::validate::{self, BulkRequest};

/// A request that passed validation: the batch to enqueue, and what Smart Encoding changed (when asked for).
#[derive(Clone, Debug)]
pub struct Prepared {
    pub batch: NewBatch,
    pub smart_encoding: Option<SmartEncoding>,
}

/// How to enqueue.
#[derive(Clone, Copy, Debug)]
pub struct Enqueue {
    /// Queue at the front of the customer's queue (single messages, usually awaited by a person).
    pub priority: bool,
    /// Jobs per Redis round trip.
    pub chunk_size: usize,
}

impl Enqueue {
    pub const BULK: Enqueue = Enqueue { priority: false, chunk_size: 1_000 };
    pub const SINGLE: Enqueue = Enqueue { priority: true, chunk_size: 1_000 };
}

/// What an enqueue did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct Accepted {
    pub batch_id: String,
    pub accepted: usize,
    pub duplicates: usize,
    /// True if the idempotency key named an existing batch (nothing new was created).
    pub existing: bool,
    /// Jobs this call pushed (0 when an earlier submit already enqueued everything).
    pub enqueued_now: usize,
    /// What Smart Encoding changed, when it was asked for.
    pub smart_encoding: Option<SmartEncoding>,
}

/// Validates `request` as a whole: any invalid part rejects it, and every problem is named.
pub fn prepare(request: &BulkRequest) -> Result<Prepared, OpsError> {
    let batch = validate::validate(request).map_err(OpsError::Invalid)?;
    Ok(Prepared { batch, smart_encoding: request.smart_report() })
}

/// [`prepare`] on a blocking thread, for servers.
pub async fn prepare_blocking(request: BulkRequest) -> Result<Prepared, OpsError> {
    tokio::task::spawn_blocking(move || prepare(&request)).await.expect("validation does not panic")
}

/// Creates the batch and enqueues its jobs exactly once; resubmitting after a crash (same idempotency key)
/// finishes the enqueue without queueing anyone twice. `progress` is told (jobs enqueued, total) after each chunk.
pub async fn enqueue(
    deps: &Deps,
    prepared: Prepared,
    how: Enqueue,
    progress: Option<Progress<'_>>,
) -> Result<Accepted, OpsError> {
    let Prepared { mut batch, smart_encoding } = prepared;
    batch.priority = how.priority;
    let s = &deps.settings;
    let mut conn = deps.acked.clone().unwrap_or_else(|| deps.conn());
    let receipt = batches::submit(&mut conn, &batch, s.batch_retention, how.chunk_size, progress, s.redis.acks)
        .await
        .map_err(|e| match e {
        SubmitError::UnknownCustomer(c) => super::customers::unknown(&c),
        e @ SubmitError::KeyReused { .. } => {
            OpsError::Conflict { field: Some("idempotency_key"), message: e.to_string() }
        }
        e @ SubmitError::NotDurable { .. } => OpsError::Unavailable(e.to_string()),
        SubmitError::Redis(r) => OpsError::Storage(r),
    })?;
    Ok(Accepted {
        batch_id: receipt.batch_id,
        accepted: receipt.accepted,
        duplicates: receipt.duplicates,
        existing: receipt.existing,
        enqueued_now: receipt.enqueued_now,
        smart_encoding,
    })
}

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

fn cents(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Estimates a prepared request for its customer from read-only queries: the customer's record, its pool and its
/// opt-out list are read, and everything else is arithmetic. Nothing is written, not even the purchase lock.
pub async fn estimate(deps: &Deps, prepared: &Prepared) -> Result<Estimate, OpsError> {
    let batch = &prepared.batch;
    let settings = &deps.settings;
    let mut conn = deps.conn();
    let customer = batch.customer.clone();
    let pool = customers::pool(&mut conn, &customer, &settings.quota)
        .await?
        .ok_or_else(|| super::customers::unknown(&customer))?;
    // Opted-out recipients, in chunks (SMISMEMBER reads many members in one command).
    let optouts = CustomerKeys::new(&customer).optouts();
    let mut opted_out = 0;
    for chunk in batch.recipients.chunks(1_000) {
        let mut cmd = redis::cmd("SMISMEMBER");
        cmd.arg(&optouts);
        for r in chunk {
            cmd.arg(r.as_str());
        }
        let flags: Vec<bool> = cmd.query_async(&mut conn).await?;
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
        smart_encoding: prepared.smart_encoding.clone(),
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
