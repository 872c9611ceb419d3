//! Batch records: creating a batch and enqueuing its jobs exactly once, reading its status, cancelling it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::AsyncCommands;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::domain::{BatchId, CustomerId, Encoding, IdempotencyKey, MessageBody, PhoneNumber, Template};
use crate::keys::{self, CustomerKeys};
use crate::scripts;
use crate::store::{Conn, strings};

/// A validated bulk request, recipients already de-duplicated (first occurrence kept).
#[derive(Clone, Debug)]
pub struct NewBatch {
    pub customer: CustomerId,
    /// The body, with merge fields (`{{first_name}}`) when it is personalised; stored once for the batch.
    pub body: Template,
    pub recipients: Vec<PhoneNumber>,
    /// Merge-field values, when the body has fields: the variables' names, and per recipient (same order as
    /// `recipients`) its values joined by [`crate::domain::template::VALUE_SEPARATOR`], carried in its job.
    pub personal: Option<Personal>,
    /// How many input lines repeated an earlier recipient (reported, not enqueued).
    pub duplicates: usize,
    pub idempotency_key: Option<IdempotencyKey>,
    /// Queue at the front (single messages, usually awaited by a person) instead of the back.
    pub priority: bool,
    pub timing: Timing,
    /// The segments the texts take (each rendered text counted for itself).
    pub segments: SegmentTotals,
    /// A name people find the batch by (validated by the producer).
    pub label: Option<String>,
    /// The batch this one resends to (its failed and undelivered recipients).
    pub resend_of: Option<String>,
}

/// The variables of a personalised batch and each recipient's values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Personal {
    pub names: Vec<String>,
    pub values: Vec<String>,
}

/// When a batch's texts may go (Redis ms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// Not before this: the jobs wait in the schedule until then.
    pub send_at_ms: Option<i64>,
    /// A job not sent by then ends `expired`; Twilio is told the seconds left (`ValidityPeriod`).
    pub expires_at_ms: Option<i64>,
    /// Sent whatever the hour (a burst pipe at 2 a.m.): quiet hours do not apply.
    pub urgent: bool,
}

/// Segments over a batch's texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SegmentTotals {
    pub min: u32,
    pub max: u32,
    pub total: u64,
    /// GSM-7 for every text, UCS-2 for every text, or some of each (`mixed`).
    pub encoding: &'static str,
}

impl SegmentTotals {
    /// No text yet.
    pub const EMPTY: SegmentTotals = SegmentTotals { min: 0, max: 0, total: 0, encoding: "" };

    /// `n` copies of one text.
    pub fn uniform(body: &MessageBody, n: usize) -> Self {
        let s = body.segments();
        Self { min: s.segments, max: s.segments, total: s.segments as u64 * n as u64, encoding: s.encoding.as_str() }
    }

    /// Adds one text's segments (every text has at least one).
    pub fn add(&mut self, segments: u32, encoding: Encoding) {
        if self.max == 0 {
            *self = Self { min: segments, max: segments, total: 0, encoding: encoding.as_str() };
        }
        self.min = self.min.min(segments);
        self.max = self.max.max(segments);
        self.total += segments as u64;
        if self.encoding != encoding.as_str() {
            self.encoding = "mixed";
        }
    }
}

impl NewBatch {
    /// A plain batch: one body for every recipient, sent now (tests and tools).
    pub fn plain(customer: CustomerId, body: MessageBody, recipients: Vec<PhoneNumber>) -> Self {
        let segments = SegmentTotals::uniform(&body, recipients.len());
        Self {
            customer,
            body: Template::parse(body.as_str()).expect("a message body is a valid template"),
            recipients,
            personal: None,
            duplicates: 0,
            idempotency_key: None,
            priority: false,
            timing: Timing::default(),
            segments,
            label: None,
            resend_of: None,
        }
    }

    /// What kind of batch this is, for the lists: `answer` (a single message, usually a person's answer to a
    /// tenant), `resend` (to another batch's failed recipients) or `bulk`.
    pub fn kind(&self) -> &'static str {
        if self.resend_of.is_some() {
            "resend"
        } else if self.priority {
            "answer"
        } else {
            "bulk"
        }
    }

    /// The values of the `i`-th recipient, if the batch is personalised.
    pub fn values(&self, i: usize) -> Option<&str> {
        self.personal.as_ref().and_then(|p| p.values.get(i)).map(String::as_str)
    }

    /// Identifies the request's content, so a reused idempotency key with a different request is caught.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.customer.as_str());
        h.update(b"\n");
        h.update(self.body.as_str());
        let t = &self.timing;
        h.update(format!("\n{:?}|{:?}|{}", t.send_at_ms, t.expires_at_ms, t.urgent).as_bytes());
        if let Some(p) = &self.personal {
            h.update(p.names.join(",").as_bytes());
        }
        if let Some(l) = &self.label {
            h.update(b"\nlabel:");
            h.update(l.as_bytes());
        }
        if let Some(r) = &self.resend_of {
            h.update(b"\nresend_of:");
            h.update(r.as_bytes());
        }
        for (i, r) in self.recipients.iter().enumerate() {
            h.update(b"\n");
            h.update(r.as_str());
            if let Some(v) = self.values(i) {
                h.update(b"|");
                h.update(v.as_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// What the producer reports after a submit.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Receipt {
    pub batch_id: String,
    pub accepted: usize,
    pub duplicates: usize,
    /// True if the idempotency key named an existing batch (nothing new was created).
    pub existing: bool,
    /// Jobs this call pushed (0 when an earlier submit already enqueued everything).
    pub enqueued_now: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("unknown customer {0}: create it first with `producer customer add {0}`")]
    UnknownCustomer(CustomerId),
    #[error(
        "idempotency key {key:?} was already used for batch {batch} with a different request (body or recipients \
         differ); use a new key for a new request"
    )]
    KeyReused { key: String, batch: String },
    /// Replica acknowledgements are on and the replicas did not confirm a write in time: the request may or may not
    /// survive a failover of the node that holds it.
    #[error(
        "Redis replicas did not confirm the enqueue of batch {batch} in time (MESSENGER_REDIS_REPLICA_ACKS); resubmit \
         the same request with the same idempotency key: it finishes the batch without queueing anyone twice"
    )]
    NotDurable { batch: String },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Progress callback: (jobs enqueued so far, total).
pub type Progress<'a> = &'a mut (dyn FnMut(usize, usize) + Send);

/// Creates the batch (or finds the one its idempotency key names) and pushes its jobs in chunks, resuming from the
/// batch's cursor, so a resubmission after a crash completes the batch without queueing anyone twice.
pub async fn submit(
    conn: &mut Conn,
    req: &NewBatch,
    retention: Duration,
    chunk_size: usize,
    progress: Option<Progress<'_>>,
    acks: Option<&scripts::Acks>,
) -> Result<Receipt, SubmitError> {
    let k = CustomerKeys::new(&req.customer);
    let fresh = BatchId::new(&req.customer);
    let key = req
        .idempotency_key
        .as_ref()
        .map(|k| k.as_str().to_owned())
        .unwrap_or_else(|| format!("auto:{}", fresh.local()));
    let fingerprint = req.fingerprint();
    let segments = req.segments;
    let total = req.recipients.len();

    let mut inv = scripts::BATCH_CREATE.key(k.cfg());
    inv.key(k.idempotency(&key)).key(k.batch(&fresh)).key(k.batches()).arg(fresh.to_string()).arg(retention.as_secs());
    let mut fields = vec![
        ("customer", req.customer.as_str().to_owned()),
        ("body", req.body.as_str().to_owned()),
        ("total", total.to_string()),
        ("duplicates", req.duplicates.to_string()),
        ("fingerprint", fingerprint.clone()),
        ("idempotency_key", key.clone()),
        ("segments", segments.max.to_string()),
        ("segments_min", segments.min.to_string()),
        ("segments_total", segments.total.to_string()),
        ("encoding", segments.encoding.to_owned()),
        ("kind", req.kind().to_owned()),
    ];
    if let Some(l) = &req.label {
        fields.push(("label", l.clone()));
    }
    if let Some(r) = &req.resend_of {
        fields.push(("resend_of", r.clone()));
    }
    if let Some(p) = &req.personal {
        fields.push(("vars", p.names.join(",")));
    }
    let t = req.timing;
    if let Some(at) = t.send_at_ms {
        fields.push(("send_at", at.to_string()));
    }
    if let Some(at) = t.expires_at_ms {
        fields.push(("expires", at.to_string()));
    }
    if t.urgent {
        fields.push(("urgent", "1".to_owned()));
    }
    for (f, v) in fields {
        inv.arg(f).arg(v);
    }
    let (reply, confirmed): (redis::Value, bool) = inv.run_acked(conn, acks).await?;
    let reply = strings(reply);
    let (batch, existing) = match reply.first().map(String::as_str) {
        Some("created") => {
            // The fleet-wide index of recent batches (the dashboard's list), newest 10,000 kept. A separate command:
            // in a Redis Cluster the index and the batch live in different slots. Losing an entry only hides the
            // batch from the list (the customer's own index has it). Scored with the creation time the script read.
            let created: i64 = reply.get(1).and_then(|ms| ms.parse().ok()).unwrap_or_default();
            let _: () = redis::pipe()
                .zadd(keys::BATCH_INDEX, fresh.to_string(), created)
                .ignore()
                .zremrangebyrank(keys::BATCH_INDEX, 0, -10_001)
                .ignore()
                .query_async(conn)
                .await?;
            (fresh, false)
        }
        Some("exists") => {
            let id = BatchId::parse(reply.get(1).map(String::as_str).unwrap_or_default()).map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Client, "bad batch id stored", e.to_string()))
            })?;
            let stored: Option<String> = conn.hget(k.batch(&id), "fingerprint").await?;
            if stored.as_deref() != Some(fingerprint.as_str()) {
                return Err(SubmitError::KeyReused { key, batch: id.to_string() });
            }
            (id, true)
        }
        _ => return Err(SubmitError::UnknownCustomer(req.customer.clone())),
    };
    if !confirmed {
        return Err(SubmitError::NotDurable { batch: batch.to_string() });
    }

    let mut cursor: usize = conn.hget::<_, _, Option<usize>>(k.batch(&batch), "enqueued").await?.unwrap_or(0);
    let start = cursor;
    let mut progress = progress;
    while cursor < total {
        // Bounded: each chunk is one script call whose arguments Lua unpacks (at most ~8,000).
        let end = (cursor + chunk_size.clamp(1, 5_000)).min(total);
        let mut inv = scripts::ENQUEUE_CHUNK.key(k.batch(&batch));
        let place = match (req.timing.send_at_ms, req.priority) {
            (Some(at), _) => format!("at:{at}"),
            (None, true) => "front".to_owned(),
            (None, false) => "back".to_owned(),
        };
        // A personalised batch's values outlive its jobs (resends, the inbox) for twice the retention.
        inv.key(k.queue()).key(k.cfg()).key(k.scheduled()).key(k.batch_values(&batch));
        inv.arg(cursor).arg(place).arg(retention.as_secs().saturating_mul(2).max(1));
        for (i, r) in req.recipients[cursor..end].iter().enumerate() {
            inv.arg(keys::job_member(&batch, r.as_str(), req.values(cursor + i)));
        }
        // A push that timed out may have been applied; the cursor check in the script makes the retry safe.
        let mut tries = 0;
        let new_cursor: usize = loop {
            match inv.run_acked::<usize, _>(conn, acks).await {
                Ok((c, true)) => break c,
                Ok((_, false)) => return Err(SubmitError::NotDurable { batch: batch.to_string() }),
                Err(e) if tries < 5 && (e.is_timeout() || e.is_io_error() || e.is_connection_dropped()) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        // The active set is how fetchers find customers with work (it must survive a failover like the jobs: in the
        // same pipeline as its WAIT, on the node that holds it); then wake idle fetchers. Separate commands: the set
        // and the channel live in different slots of a Redis Cluster.
        let mut pipe = redis::pipe();
        pipe.sadd(keys::ACTIVE, req.customer.as_str()).ignore();
        match acks.filter(|a| a.replicas > 0).map(|a| (a, a.needed(keys::ACTIVE.as_bytes()))) {
            Some((a, need)) if need.replicas > 0 => {
                let (confirmed,): (u32,) =
                    pipe.cmd("WAIT").arg(need.replicas).arg(a.timeout.as_millis() as u64).query_async(conn).await?;
                a.observe(&need, Some(confirmed >= need.replicas));
                if confirmed < need.replicas {
                    return Err(SubmitError::NotDurable { batch: batch.to_string() });
                }
            }
            other => {
                let _: () = pipe.query_async(conn).await?;
                if let Some((a, need)) = other {
                    a.observe(&need, None);
                }
            }
        }
        let _: () = conn.publish(keys::WAKE_CHANNEL, req.customer.as_str()).await?;
        cursor = new_cursor;
        if let Some(p) = progress.as_mut() {
            p(cursor, total);
        }
    }
    Ok(Receipt {
        batch_id: batch.to_string(),
        accepted: total,
        duplicates: req.duplicates,
        existing,
        enqueued_now: cursor.saturating_sub(start),
    })
}

/// A batch's counts. At every moment `sent + failed + opted_out + cancelled + expired + pending == total`, and
/// `queued + deferred + quiet_hours + capped + held_for_review + spend_limit + held_by_pause + frequency_capped ==
/// pending`: the counters move in the same scripts as
/// the job states.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchStatus {
    pub batch_id: String,
    pub customer: String,
    /// The name people find the batch by, when it was given one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `bulk`, `answer` (a single message, usually a person's answer to a tenant) or `resend`.
    pub kind: String,
    /// The batch this one resends to (its failed or undelivered recipients), and the resend made of this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resend_of: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resent_by: Option<String>,
    /// `enqueuing` (the producer is still pushing, or died doing so), `queued`, or `complete`.
    pub state: String,
    pub total: u64,
    pub enqueued: u64,
    pub duplicates: u64,
    /// Not terminal and not deferred: waiting in the queue, in flight, or waiting for a retry.
    pub queued: u64,
    /// Waiting because the customer is at max numbers and every number is full.
    pub deferred: u64,
    /// Why the latest deferral could not buy a number (`max_numbers`, or a Messaging Service's sender limit).
    pub deferred_reason: Option<String>,
    /// Waiting for quiet hours to end in their recipients' time zones.
    pub quiet_hours: u64,
    /// Per zone: how many wait for its quiet hours to end, and until when (Redis ms).
    pub quiet_by_zone: BTreeMap<String, QuietWait>,
    /// Waiting for a carrier cap to renew (T-Mobile's day, AT&T's minute, the campaign's second).
    pub capped: u64,
    /// Per cap: how many wait for it, and until when (Redis ms).
    pub capped_by_cap: BTreeMap<String, QuietWait>,
    /// Held while their tenant's reply, a suspected revocation of consent, waits for a person to decide.
    pub held_for_review: u64,
    /// Waiting because sending them would pass the customer's monthly spend limit: until the limit is raised or
    /// the month (in the customer's zone) ends. Not failed.
    pub spend_limit: u64,
    /// The batch is paused (carriers filtering its texts, or a person's choice): its texts wait until it is resumed.
    pub paused: bool,
    /// Why, with the figures ("20 of 60 delivery reports (33%) were carrier filtering (30007: 20), …").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// `auto` (the deliverability rule) or who paused it; and when (Redis ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_at_ms: Option<i64>,
    /// Texts parked by the pause (texts still queued are parked as the workers reach them).
    pub held_by_pause: u64,
    /// Waiting because their tenant already had the customer's most texts in its frequency cap's window (across
    /// batches), and until when the last of them waits (Redis ms).
    pub frequency_capped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_until_ms: Option<i64>,
    pub sent: u64,
    pub failed: u64,
    pub opted_out: u64,
    pub cancelled: u64,
    /// Not sent by the batch's expiry (terminal).
    pub expired: u64,
    /// Texts sent twice (a worker paused past its lease). Should always be 0.
    pub dup_sends: u64,
    pub failure_reasons: BTreeMap<String, u64>,
    /// Delivery reports from Twilio's status callbacks (when a public URL is configured): messages that reached the
    /// handset, and messages the carrier did not deliver, with Twilio's error codes.
    pub delivered: u64,
    pub undelivered: u64,
    pub undelivered_reasons: BTreeMap<String, u64>,
    pub cancel_requested: bool,
    /// Segments of the longest text (every text, when the body has no merge fields).
    pub segments: u64,
    /// Segments of all texts together.
    pub segments_total: u64,
    /// `GSM-7`, `UCS-2`, or `mixed` (personalised texts of both).
    pub encoding: String,
    /// The batch's merge-field variables (empty: one body for everyone).
    pub variables: Vec<String>,
    /// Not sent before this (Redis ms): a scheduled batch.
    pub send_at_ms: Option<i64>,
    /// Texts not sent by then end `expired` (Redis ms).
    pub expires_at_ms: Option<i64>,
    /// Quiet hours do not apply to this batch.
    pub urgent: bool,
    pub created_ms: i64,
    pub completed_ms: Option<i64>,
    /// Why texts still wait, one sentence per reason ("12 waiting for quiet hours in America/Los_Angeles until
    /// 08:00 local (16:00 UTC)"); empty when nothing waits or the batch is complete.
    pub waiting: Vec<String>,
    /// The same instants as RFC 3339 (UTC).
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// Redis ms as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Jobs waiting for one zone's quiet hours to end, or for one carrier cap to renew. Serialised with `until` (RFC 3339)
/// beside `until_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuietWait {
    pub count: u64,
    /// When the latest of them comes due (Redis ms).
    pub until_ms: i64,
}

impl Serialize for QuietWait {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("QuietWait", 3)?;
        st.serialize_field("count", &self.count)?;
        st.serialize_field("until_ms", &self.until_ms)?;
        st.serialize_field("until", &rfc3339(self.until_ms))?;
        st.end()
    }
}

impl BatchStatus {
    pub fn terminal(&self) -> u64 {
        self.sent + self.failed + self.opted_out + self.cancelled + self.expired
    }
    pub fn pending(&self) -> u64 {
        self.total.saturating_sub(self.terminal())
    }
    pub fn is_complete(&self) -> bool {
        self.state == "complete"
    }
    /// The enqueue stopped short of the total (the producer died): resubmitting with the same key finishes it.
    pub fn enqueue_incomplete(&self) -> bool {
        self.enqueued < self.total
    }

    /// Why texts still wait, in words, at `now_ms`: quiet hours per zone (local time and UTC), carrier caps, the
    /// pool being full, consent reviews, a schedule; and how many are simply queued for the workers.
    pub fn waiting_at(&self, now_ms: i64) -> Vec<String> {
        if self.is_complete() || self.pending() == 0 {
            return Vec::new();
        }
        let utc = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .map(|t| t.format("%H:%M UTC, %b %-d").to_string())
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        if let Some(at) = self.send_at_ms.filter(|at| *at > now_ms) {
            out.push(format!("{} scheduled for {}", self.pending(), utc(at)));
        }
        for (zone, w) in &self.quiet_by_zone {
            let local = zone
                .parse::<chrono_tz::Tz>()
                .ok()
                .and_then(|tz| chrono::DateTime::from_timestamp_millis(w.until_ms).map(|t| t.with_timezone(&tz)))
                .map(|t| format!("{} local (", t.format("%H:%M")))
                .unwrap_or_else(|| "(".to_owned());
            out.push(format!(
                "{} waiting for quiet hours in {zone} to end, until {local}{})",
                w.count,
                utc(w.until_ms)
            ));
        }
        for (cap, w) in &self.capped_by_cap {
            let name = match cap.as_str() {
                "tmobile" | "tmo" => "T-Mobile's daily",
                "att" => "AT&T's per-minute",
                "mps" | "all" => "the campaign's per-second",
                other => other,
            };
            out.push(format!("{} held by {name} cap until {}", w.count, utc(w.until_ms)));
        }
        if self.deferred > 0 {
            let why = self.deferred_reason.as_deref().unwrap_or("no number can be added");
            out.push(format!("{} waiting for a number to free up ({why})", self.deferred));
        }
        if self.held_for_review > 0 {
            out.push(format!("{} held while a tenant's reply waits for a consent review", self.held_for_review));
        }
        if self.frequency_capped > 0 {
            out.push(format!(
                "{} waiting for the tenant frequency cap (texts per tenant across batches) until {} at the latest",
                self.frequency_capped,
                utc(self.frequency_until_ms.unwrap_or_default())
            ));
        }
        if self.paused {
            out.push(format!(
                "{} waiting: the batch is paused ({}); resume it to send them",
                self.pending(),
                self.pause_reason.as_deref().unwrap_or("paused")
            ));
        }
        if self.spend_limit > 0 {
            out.push(format!(
                "{} waiting for the customer's monthly spend limit (spend limit): they go when it is raised or the \
                 month ends",
                self.spend_limit
            ));
        }
        if self.queued > 0 && self.send_at_ms.is_none_or(|at| at <= now_ms) {
            out.push(format!("{} queued for the workers", self.queued));
        }
        out
    }
}

/// Reads a batch's status in one command (so the counts are a consistent snapshot).
pub async fn status(conn: &mut Conn, id: &BatchId) -> redis::RedisResult<Option<BatchStatus>> {
    let k = CustomerKeys::new(id.customer());
    let m: HashMap<String, String> = conn.hgetall(k.batch(id)).await?;
    if m.is_empty() {
        return Ok(None);
    }
    let n = |f: &str| m.get(f).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0).max(0) as u64;
    let total = n("total");
    let terminal = n("sent") + n("failed") + n("opted_out") + n("cancelled") + n("expired");
    let pending = total.saturating_sub(terminal);
    let deferred = n("deferred").min(pending);
    let quiet = n("quiet").min(pending - deferred);
    let capped = n("capped").min(pending - deferred - quiet);
    let held = n("held").min(pending - deferred - quiet - capped);
    let spend_limit = n("spend").min(pending - deferred - quiet - capped - held);
    let by_pause = n("pausedjobs").min(pending - deferred - quiet - capped - held - spend_limit);
    let freq = n("freq").min(pending - deferred - quiet - capped - held - spend_limit - by_pause);
    let opt = |f: &str| m.get(f).and_then(|v| v.parse::<i64>().ok());
    // Jobs waiting per reason (`<kind>:<reason>` counts, `<kind>_until:<reason>` latest due).
    let waits = |kind: &str| -> BTreeMap<String, QuietWait> {
        m.iter()
            .filter_map(|(f, v)| Some((f.strip_prefix(kind)?.strip_prefix(':')?, v.parse::<i64>().ok()?)))
            .filter(|(_, count)| *count > 0)
            .map(|(why, count)| {
                let until_ms = opt(&format!("{kind}_until:{why}")).unwrap_or_default();
                (why.to_owned(), QuietWait { count: count as u64, until_ms })
            })
            .collect()
    };
    let quiet_by_zone = waits("quiet");
    let capped_by_cap = waits("capped");
    // Counts kept under `<prefix><code>` fields: failure reasons, undelivered error codes.
    let by = |prefix: &str| {
        m.iter().filter_map(|(f, v)| f.strip_prefix(prefix).map(|r| (r.to_owned(), v.parse().unwrap_or(0)))).collect()
    };
    let completed_ms: Option<i64> = m.get("completed_ms").and_then(|v| v.parse().ok());
    let mut status = BatchStatus {
        batch_id: id.to_string(),
        customer: id.customer().to_string(),
        label: m.get("label").cloned(),
        kind: m.get("kind").cloned().unwrap_or_else(|| "bulk".to_owned()),
        resend_of: m.get("resend_of").cloned(),
        resent_by: m.get("resent_by").cloned(),
        created_at: rfc3339(n("created_ms") as i64),
        send_at: opt("send_at").map(rfc3339),
        expires_at: opt("expires").map(rfc3339),
        completed_at: completed_ms.map(rfc3339),
        state: m.get("state").cloned().unwrap_or_default(),
        total,
        enqueued: n("enqueued"),
        duplicates: n("duplicates"),
        queued: pending - deferred - quiet - capped - held - spend_limit - by_pause - freq,
        deferred,
        deferred_reason: m.get("deferred_reason").filter(|r| !r.is_empty()).cloned(),
        quiet_hours: quiet,
        quiet_by_zone,
        capped,
        capped_by_cap,
        held_for_review: held,
        spend_limit,
        paused: m.get("paused").map(String::as_str) == Some("1"),
        pause_reason: m.get("pause_why").filter(|_| m.get("paused").map(String::as_str) == Some("1")).cloned(),
        paused_by: m.get("paused_by").filter(|_| m.get("paused").map(String::as_str) == Some("1")).cloned(),
        paused_at_ms: opt("paused_ms").filter(|_| m.get("paused").map(String::as_str) == Some("1")),
        held_by_pause: by_pause,
        frequency_capped: freq,
        frequency_until_ms: opt("freq_until").filter(|_| freq > 0),
        sent: n("sent"),
        failed: n("failed"),
        opted_out: n("opted_out"),
        cancelled: n("cancelled"),
        expired: n("expired"),
        dup_sends: n("dup_sends"),
        failure_reasons: by("reason:"),
        delivered: n("delivered"),
        undelivered: n("undelivered"),
        undelivered_reasons: by("dlr:"),
        cancel_requested: m.get("cancel").map(String::as_str) == Some("1"),
        segments: n("segments"),
        segments_total: opt("segments_total").map_or(n("segments") * total, |t| t.max(0) as u64),
        encoding: m.get("encoding").cloned().unwrap_or_default(),
        variables: m.get("vars").map(|v| v.split(',').map(str::to_owned).collect()).unwrap_or_default(),
        send_at_ms: opt("send_at"),
        expires_at_ms: opt("expires"),
        urgent: m.get("urgent").map(String::as_str) == Some("1"),
        created_ms: n("created_ms") as i64,
        completed_ms,
        waiting: Vec::new(),
    };
    status.waiting = status.waiting_at(chrono::Utc::now().timestamp_millis());
    Ok(Some(status))
}

/// Failed recipients of a batch and why (kept with the batch record).
pub async fn failures(conn: &mut Conn, id: &BatchId) -> redis::RedisResult<BTreeMap<String, String>> {
    let k = CustomerKeys::new(id.customer());
    conn.hgetall(k.batch_failures(id)).await
}

/// What a delivery report did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The message reached a final status for the first time: counted.
    Counted,
    /// A further, not yet final, status.
    Advanced,
    /// Not further than what was already known (a repeat or an out-of-order report).
    Ignored,
    /// The batch no longer exists (expired) or the status is not one of Twilio's.
    Dropped,
}

/// Records a Twilio status callback for a message of `batch` (idempotent, order-independent).
pub async fn record_delivery(
    conn: &mut Conn,
    batch: &BatchId,
    message_sid: &str,
    recipient: Option<&str>,
    status: &str,
    error_code: Option<&str>,
    retention: Duration,
) -> redis::RedisResult<Delivery> {
    let k = CustomerKeys::new(batch.customer());
    let reply = strings(
        scripts::DELIVERY
            .key(k.batch(batch))
            .key(k.batch_deliveries(batch))
            .key(k.events())
            .key(k.batch_undelivered(batch))
            .key(k.cfg())
            .arg(message_sid)
            .arg(status)
            .arg(error_code.unwrap_or(""))
            .arg(retention.as_secs())
            .arg(recipient.unwrap_or(""))
            .run(conn)
            .await?,
    );
    Ok(match reply.first().map(String::as_str) {
        Some("counted") => Delivery::Counted,
        Some("advanced") => Delivery::Advanced,
        Some("ignored") => Delivery::Ignored,
        _ => Delivery::Dropped,
    })
}

/// What a pause or resume did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum PauseOutcome {
    Paused,
    /// Resumed: the texts the pause had parked came due at once.
    Resumed {
        released: u64,
    },
    /// Nothing to do: it already was `paused` or `running`.
    Already {
        state: String,
    },
    /// Complete or cancelled: nothing left to pause or resume.
    AlreadyComplete,
    NotFound,
}

/// Pauses (`resume` false) or resumes a batch by hand; `who` is recorded.
pub async fn pause(conn: &mut Conn, id: &BatchId, resume: bool, who: &str) -> redis::RedisResult<PauseOutcome> {
    let k = CustomerKeys::new(id.customer());
    let reply = strings(
        scripts::BATCH_PAUSE
            .key(k.batch(id))
            .key(k.batch_paused_jobs(id))
            .key(k.scheduled())
            .key(k.events())
            .key(k.cfg())
            .arg(if resume { "resume" } else { "pause" })
            .arg(who)
            .run(conn)
            .await?,
    );
    if resume {
        // Wake fetchers so the released jobs go at once.
        let _: () = conn.publish(keys::WAKE_CHANNEL, id.customer().as_str()).await?;
    }
    Ok(match reply.first().map(String::as_str) {
        Some("paused") => PauseOutcome::Paused,
        Some("resumed") => PauseOutcome::Resumed { released: reply.get(1).and_then(|v| v.parse().ok()).unwrap_or(0) },
        Some("already") => PauseOutcome::Already { state: reply.get(1).cloned().unwrap_or_default() },
        Some("complete") => PauseOutcome::AlreadyComplete,
        _ => PauseOutcome::NotFound,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum CancelOutcome {
    Cancelled { cancelled_now: u64 },
    AlreadyComplete,
    NotFound,
}

/// Cancels a batch: parked jobs end now, queued ones when a worker reaches them, in-flight ones finish.
pub async fn cancel(conn: &mut Conn, id: &BatchId, retention: Duration) -> redis::RedisResult<CancelOutcome> {
    let k = CustomerKeys::new(id.customer());
    let reply = strings(
        scripts::CANCEL
            .key(k.batch(id))
            .key(k.batch_state(id))
            .key(k.batch_failures(id))
            .key(k.inflight())
            .key(k.scheduled())
            .key(k.cfg())
            .key(k.events())
            .arg(id.local())
            .arg(retention.as_secs())
            .run(conn)
            .await?,
    );
    // Wake fetchers so the queued jobs are drained (and cancelled) promptly.
    let _: () = conn.publish(keys::WAKE_CHANNEL, id.customer().as_str()).await?;
    Ok(match reply.first().map(String::as_str) {
        Some("ok") => {
            CancelOutcome::Cancelled { cancelled_now: reply.get(1).and_then(|v| v.parse().ok()).unwrap_or(0) }
        }
        Some("complete") => CancelOutcome::AlreadyComplete,
        _ => CancelOutcome::NotFound,
    })
}
