//! The dry run: what a bulk text would do and cost, and when its texts would go — from the validated request and
//! read-only Redis queries (the customer's record, its pool, its opt-out list, Redis's clock). Nothing is written,
//! not even the purchase lock.
//!
//! The timeline is a forecast on the tenant's clock: who can be texted when the batch starts, who waits for quiet
//! hours in their zone and until when, how many are beyond what the pool can send in this window (its free slots
//! plus the numbers it could still buy) and so wait for the next one, and how many of those waits would outlast the
//! batch's expiry.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use shared::customers;
use shared::domain::smart::{SmartEncoding, describe_char, ucs2_characters};
use shared::domain::{TimeZone, count_segments, is_gsm7};
use shared::keys::CustomerKeys;
use shared::quiet::{self, TZ_VARIABLE};
use utoipa::ToSchema;

use super::texts::Prepared;
use super::{Deps, OpsError};

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
    /// Recipients whose reply may have revoked consent, waiting for a person: their texts would be held until the
    /// review ends (when the customer holds them).
    pub under_review: usize,
    /// Recipients without an opt-in on record, while the customer requires one: skipped (`no_consent`).
    pub without_consent: usize,
    /// What deserves a look before sending (no opt-out instructions in the text, …).
    pub warnings: Vec<String>,
    /// Recipients who would be texted.
    pub recipients: usize,
    /// Characters of the body (the template, for a personalised body).
    pub characters: usize,
    /// `GSM-7`, `UCS-2`, or `mixed` (personalised texts of both).
    pub encoding: String,
    /// Segments of the longest text.
    pub segments_per_message: u32,
    /// Segments of the shortest text (the same as the longest unless the body is personalised).
    pub segments_min: u32,
    /// The characters of the body that force UCS-2 (`U+2019 ’`); empty for GSM-7.
    pub ucs2_characters: Vec<String>,
    /// Variable → recipients whose value of it forces UCS-2 (the template alone would be GSM-7).
    pub ucs2_variables: BTreeMap<String, usize>,
    /// Variable → recipients whose text needs an extra segment because of that variable's value.
    pub segment_variables: BTreeMap<String, usize>,
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
    /// Segments of every text that would be sent, each counted for itself.
    pub segments_total: u64,
    pub segment_cost: f64,
    /// Segments × segment cost.
    pub messages_cost: f64,
    /// What the numbers bought for it would add per month.
    pub numbers_monthly_cost: f64,
    /// Everything the batch would spend at the fleet's prices, as the spend limit counts it: its texts (with the
    /// carriers' surcharges on the lines already looked up), the numbers bought for it, and the lookups it needs.
    pub total_cost: f64,
    /// The month spend is counted in (the customer's zone), what was spent in it so far, and the customer's
    /// monthly spend limit (`None`: no limit).
    pub spend_month: String,
    pub spend_this_month: f64,
    pub monthly_spend_limit: Option<f64>,
    /// Whether the whole batch fits under the limit (`None`: no limit); when it does not, the texts beyond it
    /// would wait (`spend limit`) until the limit is raised or the month ends.
    pub fits_under_limit: Option<bool>,
    pub timeline: Timeline,
    /// Per carrier, for a customer whose recipients' lines are looked up (its carrier caps need them).
    pub carriers: Option<CarrierForecast>,
}

/// What the carriers' limits do to a batch, from the lines already looked up (cached) for its recipients.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CarrierForecast {
    /// Recipients whose line is not known yet: each is looked up once when its text comes up.
    pub lookups_needed: usize,
    /// Those lookups at `MESSENGER_LOOKUP_COST` each.
    pub lookups_cost: f64,
    /// The carriers' surcharges (`MESSENGER_CARRIER_FEES`) on the texts to lines already looked up.
    pub carrier_fees_cost: f64,
    /// Recipients by line as looked up (`tmobile`, `att`, `verizon`, `other`, `landline`, `invalid`, `unknown`).
    pub by_line: BTreeMap<String, usize>,
    /// Landlines and invalid numbers: they would end `failed` without a send.
    pub unreachable: usize,
    /// Known T-Mobile recipients that fit in what is left of the brand's T-Mobile day, and those that would go
    /// after it ends (at `tmobile_day_ends_ms`).
    pub tmobile_today: Option<usize>,
    pub tmobile_after: Option<usize>,
    pub tmobile_day_ends_ms: Option<i64>,
    /// Minutes AT&T's per-minute cap spreads the known AT&T recipients over.
    pub att_minutes: Option<u64>,
    /// Minutes the per-second cap spreads the whole batch over.
    pub per_second_minutes: Option<u64>,
}

/// When the texts would go.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Timeline {
    /// Redis's clock when the forecast was made (ms).
    pub now_ms: i64,
    /// When the batch starts: its `send_at`, or now (ms).
    pub starts_ms: i64,
    /// The quiet hours that apply (`21:00-08:00`), or `None`: off for this customer, or the batch is urgent.
    pub quiet_hours: Option<String>,
    pub urgent: bool,
    /// Recipients who can be texted when the batch starts (before the pool's limits).
    pub sendable_at_start: usize,
    /// Recipients in quiet hours when the batch starts, by the zone they wait for and until when.
    pub quiet: Vec<QuietGroup>,
    /// Recipients beyond what the pool can send in this window (free slots plus numbers it may still buy): they
    /// wait for the window to free slots.
    pub beyond_capacity: u64,
    /// The batch's expiry (ms), if it has one.
    pub expires_at_ms: Option<i64>,
    /// Recipients the forecast says would end `expired`: their quiet hours, or the pool's next window, end after
    /// the batch's expiry.
    pub would_expire: u64,
}

/// Recipients waiting for quiet hours to end in one zone.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct QuietGroup {
    pub zone: String,
    pub recipients: usize,
    /// When they may be texted (ms), before each one's spread.
    pub until_ms: i64,
}

fn cents(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Estimates a prepared request for its customer.
pub async fn estimate(deps: &Deps, prepared: &Prepared) -> Result<Estimate, OpsError> {
    let batch = &prepared.batch;
    let settings = &deps.settings;
    let mut conn = deps.conn();
    let id = batch.customer.clone();
    let record = customers::get(&mut conn, &id).await?.ok_or_else(|| super::customers::unknown(&id))?;
    let pool = customers::pool(&mut conn, &id, &settings.quota).await?.ok_or_else(|| super::customers::unknown(&id))?;
    let now_ms = customers::redis_now_ms(&mut conn).await?;
    // Opted-out recipients, in chunks (SMISMEMBER reads many members in one command).
    let optouts = CustomerKeys::new(&id).optouts();
    let mut opted: Vec<bool> = Vec::with_capacity(batch.recipients.len());
    for chunk in batch.recipients.chunks(1_000) {
        let mut cmd = redis::cmd("SMISMEMBER");
        cmd.arg(&optouts);
        for r in chunk {
            cmd.arg(r.as_str());
        }
        let flags: Vec<bool> = cmd.query_async(&mut conn).await?;
        opted.extend(flags);
    }
    let opted_out = opted.iter().filter(|f| **f).count();
    // Consent: recipients without an opt-in on record (when the customer requires one) are skipped like the opted
    // out; recipients under review are counted (they wait for a person).
    let k = CustomerKeys::new(&id);
    if record.consent.require_consent {
        for (c, chunk) in batch.recipients.chunks(1_000).enumerate() {
            let mut cmd = redis::cmd("SMISMEMBER");
            cmd.arg(k.consent());
            for r in chunk {
                cmd.arg(r.as_str());
            }
            let flags: Vec<bool> = cmd.query_async(&mut conn).await?;
            for (i, on_record) in flags.into_iter().enumerate() {
                opted[c * 1_000 + i] |= !on_record;
            }
        }
    }
    let without_consent = opted.iter().filter(|f| **f).count() - opted_out;
    let reviews: u64 = redis::cmd("HLEN").arg(k.reviews()).query_async(&mut conn).await?;
    let mut under_review = 0;
    if reviews > 0 {
        for chunk in batch.recipients.chunks(1_000) {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(k.reviews());
            for r in chunk {
                cmd.arg(r.as_str());
            }
            let found: Vec<Option<String>> = cmd.query_async(&mut conn).await?;
            under_review += found.iter().filter(|f| f.is_some()).count();
        }
    }
    let to_send = batch.recipients.len() - opted_out - without_consent;
    let mut warnings = Vec::new();
    if record.messaging_service.is_none() {
        warnings.push(customers::NO_A2P_WARNING.to_owned());
    }
    let lower = batch.body.as_str().to_lowercase();
    if !["stop", "opt out", "opt-out", "unsubscribe"].iter().any(|w| lower.contains(w)) {
        warnings.push(
            "the text has no opt-out instructions (\"Reply STOP to opt out\"): carriers (CTIA) expect them in the first \
             text to each tenant"
                .to_owned(),
        );
    }

    // Each text that would go, counted for itself; and what its variables do to it.
    let names = batch.personal.as_ref().map(|p| p.names.clone()).unwrap_or_default();
    let body = batch.body.as_str();
    let template_gsm = ucs2_characters(body).is_empty();
    let mut segments = (u32::MAX, 0u32, 0u64);
    let mut ucs2_variables: BTreeMap<String, usize> = BTreeMap::new();
    let mut segment_variables: BTreeMap<String, usize> = BTreeMap::new();
    let mut encodings = (false, false);
    for (i, _) in batch.recipients.iter().enumerate().filter(|(i, _)| !opted[*i]) {
        let values = batch.values(i);
        let text = batch.body.render_encoded(&names, values).unwrap_or_default();
        let s = count_segments(&text);
        segments = (segments.0.min(s.segments), segments.1.max(s.segments), segments.2 + s.segments as u64);
        match s.encoding {
            shared::domain::Encoding::Gsm7 => encodings.0 = true,
            shared::domain::Encoding::Ucs2 => encodings.1 = true,
        }
        if names.is_empty() {
            continue;
        }
        let parts: Vec<&str> =
            values.map(|v| v.split(shared::domain::template::VALUE_SEPARATOR).collect()).unwrap_or_default();
        for (n, name) in names.iter().enumerate() {
            let value = parts.get(n).copied().unwrap_or("");
            if value.is_empty() || name == TZ_VARIABLE {
                continue;
            }
            if template_gsm && !value.chars().all(is_gsm7) {
                *ucs2_variables.entry(name.clone()).or_default() += 1;
            }
            // The same text with a one-letter value instead: fewer segments means this value added one.
            let without = batch
                .body
                .render(|f| if f == name { Some("x") } else { parts.get(names.iter().position(|x| x == f)?).copied() });
            if without.is_ok_and(|t| count_segments(&t).segments < s.segments) {
                *segment_variables.entry(name.clone()).or_default() += 1;
            }
        }
    }
    if segments.0 == u32::MAX {
        segments.0 = 0;
    }
    let encoding = match encodings {
        (true, true) => "mixed",
        (false, true) => "UCS-2",
        _ => "GSM-7",
    };

    let quota = settings.quota.daily_quota as u64;
    let owned = pool.numbers.len() as u32;
    let available = pool.total_available();
    let short = (to_send as u64).saturating_sub(available as u64);
    let room = pool.max_numbers.saturating_sub(owned);
    let purchases = (short.div_ceil(quota) as u32).min(room);
    let deferred = short.saturating_sub(purchases as u64 * quota);

    let timeline = timeline(deps, prepared, &record, &opted, now_ms, deferred);
    let carriers = if record.looks_up() || record.caps.any() {
        Some(carrier_forecast(deps, prepared, &record, &opted, now_ms, segments).await?)
    } else {
        None
    };
    let segments_total = segments.2;
    // What the spend limit would count: the same prices the reserve scripts use.
    let prices = settings.pricing.prices;
    let total = shared::spend::Usd(
        segments_total as i64 * prices.segment.micros() + purchases as i64 * prices.number_monthly.micros(),
    )
    .dollars()
        + carriers.as_ref().map_or(0.0, |c| c.lookups_cost + c.carrier_fees_cost);
    let spend = customers::month_spends(&deps.conn(), std::slice::from_ref(&id), now_ms)
        .await?
        .pop()
        .expect("one customer asked, one answer");
    let left = spend.left().map(shared::spend::Usd::dollars);
    let fits = left.map(|l| total <= l + 1e-9);
    if let (Some(false), Some(l)) = (fits, left) {
        warnings.push(format!(
            "the batch would cost about ${total:.2} and ${l:.2} is left of the customer's monthly spend limit ({}): \
             the texts beyond it would wait until the limit is raised or the month ends",
            spend.describe()
        ));
    }
    Ok(Estimate {
        dry_run: true,
        customer: id.to_string(),
        recipients_submitted: batch.recipients.len() + batch.duplicates,
        duplicates: batch.duplicates,
        opted_out,
        under_review,
        without_consent,
        warnings,
        recipients: to_send,
        characters: body.chars().count(),
        encoding: encoding.to_owned(),
        segments_per_message: segments.1,
        segments_min: segments.0,
        ucs2_characters: ucs2_characters(body).into_iter().map(describe_char).collect(),
        ucs2_variables,
        segment_variables,
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
        total_cost: cents(total),
        spend_month: spend.month.clone(),
        spend_this_month: spend.spent.dollars(),
        monthly_spend_limit: spend.limit.map(shared::spend::Usd::dollars),
        fits_under_limit: fits,
        timeline,
        carriers,
    })
}

/// The carriers' view of a batch: lines from the lookup cache (two reads per recipient, pipelined), caps from the
/// customer, today's use from Redis.
async fn carrier_forecast(
    deps: &Deps,
    prepared: &Prepared,
    customer: &customers::Customer,
    opted: &[bool],
    now_ms: i64,
    segments: (u32, u32, u64),
) -> Result<CarrierForecast, OpsError> {
    use shared::carriers::{Line, Unreachable};
    let batch = &prepared.batch;
    let mut conn = deps.conn();
    let mut by_line: BTreeMap<String, usize> = BTreeMap::new();
    let (mut tmo, mut att, mut unreachable, mut unknown) = (0usize, 0usize, 0usize, 0usize);
    let mut verizon = 0usize;
    let to: Vec<&str> =
        batch.recipients.iter().enumerate().filter(|(i, _)| !opted[*i]).map(|(_, r)| r.as_str()).collect();
    for chunk in to.chunks(1_000) {
        let lines = shared::carriers::cached_lines(&mut conn, &customer.id, chunk, now_ms).await?;
        for line in lines {
            let name = match line {
                None => {
                    unknown += 1;
                    "not looked up yet"
                }
                Some(Line::TMobile) => {
                    tmo += 1;
                    "tmobile"
                }
                Some(Line::Att) => {
                    att += 1;
                    "att"
                }
                Some(Line::Verizon) => {
                    verizon += 1;
                    "verizon"
                }
                Some(Line::Other) => "other",
                Some(Line::Unknown) => "unknown",
                Some(Line::Unreachable(u)) => {
                    unreachable += 1;
                    match u {
                        Unreachable::Landline => "landline",
                        Unreachable::Invalid => "invalid",
                        Unreachable::NotMessaging => "not messaging",
                    }
                }
            };
            *by_line.entry(name.to_owned()).or_default() += 1;
        }
    }
    let caps = customer.caps;
    let cap_use =
        shared::carriers::cap_use(&mut conn, &customer.id, caps, customer.looks_up(), now_ms, deps.settings.cap_day)
            .await?;
    let per_text = (segments.2 as f64 / to.len().max(1) as f64).max(1.0);
    let (tmobile_today, tmobile_after, tmobile_day_ends_ms) = match caps.tmobile_daily {
        Some(cap) => {
            let room = (cap as f64 - cap_use.tmobile_today as f64).max(0.0) / per_text;
            let today = tmo.min(room as usize);
            let now = DateTime::<Utc>::from_timestamp_millis(now_ms).unwrap_or_default();
            let ends = shared::carriers::day_starts(now, deps.settings.cap_day)[1];
            (Some(today), Some(tmo - today), Some(ends))
        }
        None => (None, None, None),
    };
    let fees = deps.settings.pricing.prices.fees;
    let fee_per_segment =
        tmo as f64 * fees.tmobile.dollars() + att as f64 * fees.att.dollars() + verizon as f64 * fees.verizon.dollars();
    Ok(CarrierForecast {
        lookups_needed: unknown,
        lookups_cost: cents(unknown as f64 * deps.settings.pricing.lookup),
        carrier_fees_cost: cents(fee_per_segment * per_text),
        by_line,
        unreachable,
        tmobile_today,
        tmobile_after,
        tmobile_day_ends_ms,
        att_minutes: caps.att_per_minute.map(|cap| (att as u64).div_ceil(cap as u64)),
        per_second_minutes: caps.per_second.map(|cap| (to.len() as u64).div_ceil(cap as u64 * 60)),
    })
}

/// Who can go when the batch starts, who waits for quiet hours (and until when), who would expire.
fn timeline(
    deps: &Deps,
    prepared: &Prepared,
    customer: &customers::Customer,
    opted: &[bool],
    now_ms: i64,
    beyond_capacity: u64,
) -> Timeline {
    let batch = &prepared.batch;
    let timing = batch.timing;
    let starts_ms = timing.send_at_ms.unwrap_or(now_ms).max(now_ms);
    let window = customer.quiet_window(deps.settings.quiet_hours).filter(|_| !timing.urgent);
    let start = DateTime::<Utc>::from_timestamp_millis(starts_ms).unwrap_or_default();
    let names = batch.personal.as_ref().map(|p| p.names.clone()).unwrap_or_default();
    let tz_at = names.iter().position(|n| n == TZ_VARIABLE);
    let mut waits: HashMap<Vec<Tz>, Option<(DateTime<Utc>, Tz)>> = HashMap::new();
    let mut groups: BTreeMap<(String, i64), usize> = BTreeMap::new();
    let mut sendable = 0usize;
    let mut would_expire = 0u64;
    for (i, number) in batch.recipients.iter().enumerate().filter(|(i, _)| !opted[*i]) {
        let Some(window) = window else {
            sendable += 1;
            continue;
        };
        let tz = tz_at
            .and_then(|t| batch.values(i)?.split(shared::domain::template::VALUE_SEPARATOR).nth(t))
            .filter(|v| !v.is_empty())
            .and_then(|v| TimeZone::parse(v).ok());
        let zones = quiet::recipient_zones(number, tz, customer.time_zone);
        let wait = *waits.entry(zones).or_insert_with_key(|z| quiet::quiet_until(z, window, start));
        match wait {
            None => sendable += 1,
            Some((until, zone)) => {
                let until_ms = until.timestamp_millis();
                *groups.entry((zone.name().to_owned(), until_ms)).or_default() += 1;
                if timing.expires_at_ms.is_some_and(|e| e <= until_ms) {
                    would_expire += 1;
                }
            }
        }
    }
    // Those beyond the pool's capacity wait a window for slots to free: past the expiry, they would expire too.
    let window_ms = deps.settings.quota.window_ms() as i64;
    if timing.expires_at_ms.is_some_and(|e| e <= starts_ms + window_ms) {
        would_expire += beyond_capacity;
    }
    Timeline {
        now_ms,
        starts_ms,
        quiet_hours: window.map(|w| w.to_string()),
        urgent: timing.urgent,
        sendable_at_start: sendable,
        quiet: groups
            .into_iter()
            .map(|((zone, until_ms), recipients)| QuietGroup { zone, recipients, until_ms })
            .collect(),
        beyond_capacity,
        expires_at_ms: timing.expires_at_ms,
        would_expire,
    }
}
