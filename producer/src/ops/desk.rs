//! The support desk: what a property manager's support person acts on, not only reads.
//!
//! - **Inbox** ([`inbox`], [`mark_read`], [`unread_threads`]): tenants' threads newest reply first, with the last
//!   message, the replies not read yet and the tenant's merge fields from the batch they answered (name, unit).
//!   Texts from numbers Messenger never texted are there too. Written by `record_inbound.lua`.
//! - **A thread** ([`thread`]): every message to and from one tenant, each text sent with its delivery status and,
//!   when it failed, why; a text that could not be sent at all is in the thread with its reason.
//! - **A customer's batches** ([`batches`]): newest first, with their label, a preview of the text, counts and
//!   state; one-off answers are their own kind.
//! - **A batch's recipients by state** ([`recipients`], [`recipients_csv`]): the failed (Messenger or Twilio refused
//!   the text) and the undelivered (the carrier did not deliver it), with reason, Twilio code and meaning, and
//!   merge fields.
//! - **Resend** ([`resend`]): a new batch to a finished batch's failed and/or undelivered recipients, with the same
//!   template and values (or a new body), linked to the first; recipients that cannot succeed are skipped and
//!   counted by reason. Each state of a batch is resent once (`resend_claim.lua`): nobody is texted twice.
//!
//! Lists are pages over sorted sets: `after` is an opaque cursor (`<ms>-<member>`) and `has_more` says whether
//! another page follows. Every page's cost is bounded: at most [`SCAN_ROUNDS`] reads (the first of one page and one
//! more entry, each next one twice as big, up to [`SCAN_CHUNK`]) to find a filtered page, then one pipeline for the
//! page's details.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use shared::batches::{BatchStatus, rfc3339};
use shared::domain::template::VALUE_SEPARATOR;
use shared::domain::{BatchId, CustomerId, PhoneNumber};
use shared::keys::CustomerKeys;
use shared::scripts;
use shared::store::strings;
use shared::twilio::error::describe;
use utoipa::ToSchema;

use super::texts::{self, Enqueue};
use super::{Deps, OpsError, batches as batch_ops, customers};
use crate::recipients::RawRecipient;
use crate::validate::{self, BulkRequest};

/// Threads or batches one page returns at most, and when the caller does not say.
pub const PAGE_MAX: usize = 200;
pub const PAGE_DEFAULT: usize = 50;
/// Recipients one page returns at most, and when the caller does not say.
pub const RECIPIENTS_MAX: usize = 1_000;
pub const RECIPIENTS_DEFAULT: usize = 100;
/// A filtered page reads the index in chunks of this many, at most this many times, then answers with what it found
/// and a cursor to go on from.
pub const SCAN_CHUNK: usize = 500;
pub const SCAN_ROUNDS: usize = 20;
/// How many entries on one millisecond a page reads past at most (replies landing in the same millisecond).
const TIE_CHUNK_MAX: usize = 8_000;

/// Most messages a thread shows (common.lua `CONV_MAX`), and for how long (its `CONV_TTL_MS`).
pub const THREAD_MAX: usize = 50;
pub const THREAD_DAYS_MS: i64 = 30 * 86_400_000;

/// The entries of a stored conversation string (none when it is absent).
pub fn entries_of(raw: Option<String>) -> Vec<String> {
    raw.map(|r| shared::keys::conversation_entries(&r)).unwrap_or_default()
}

/// A thread from its two lists (the previous epoch's, then the current one's: keys.rs `conversations`): the entries
/// of the last 30 days, the newest [`THREAD_MAX`].
pub fn merge_thread(prev: Vec<String>, cur: Vec<String>, now_ms: i64) -> Vec<String> {
    let since = now_ms - THREAD_DAYS_MS;
    let mut all: Vec<String> = prev
        .into_iter()
        .chain(cur)
        .filter(|e| e.split('|').nth(1).and_then(|ms| ms.parse::<i64>().ok()).is_some_and(|ms| ms >= since))
        .collect();
    let extra = all.len().saturating_sub(THREAD_MAX);
    all.drain(..extra);
    all
}

/// The states a batch's recipients can be listed and resent by.
pub const STATES: [&str; 2] = ["failed", "undelivered"];

/// A page cursor: the score and member of the last entry of the page before (`<ms>-<member>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub ms: i64,
    pub member: String,
}

impl Cursor {
    pub fn parse(field: &str, s: &str) -> Result<Self, OpsError> {
        let bad = || OpsError::invalid(field, format!("{:?} is not a cursor this API returned", short(s)));
        let (ms, member) = s.split_once('-').ok_or_else(bad)?;
        let ms = ms.parse::<i64>().ok().filter(|m| *m >= 0).ok_or_else(bad)?;
        if member.is_empty() || member.len() > 80 {
            return Err(bad());
        }
        Ok(Self { ms, member: member.to_owned() })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.member)
    }
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

fn limit_of(limit: Option<usize>, default: usize, max: usize) -> Result<usize, OpsError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(OpsError::invalid("limit", format!("{n}; a page holds 1 to {max}"))),
    }
}

/// Which entries of an index a page keeps, and what it reads to decide.
enum Keep<'a> {
    /// Every entry.
    All,
    /// Tenants with replies not read yet (the unread hash).
    Unread(&'a str),
    /// Batches whose record still exists, of one kind if given: their summary fields are read on the way.
    Batches { keys: &'a CustomerKeys, kind: Option<&'a str> },
}

/// An entry of an index kept for a page, and the fields read to decide (batches).
type Kept = (String, i64, Vec<Option<String>>);

impl Keep<'_> {
    async fn verdicts(
        &self,
        deps: &Deps,
        rows: &[(String, i64)],
    ) -> Result<Vec<Option<Vec<Option<String>>>>, OpsError> {
        match self {
            Keep::All => Ok(rows.iter().map(|_| Some(Vec::new())).collect()),
            Keep::Unread(key) => {
                let mut p = redis::pipe();
                for (m, _) in rows {
                    p.hget(*key, m);
                }
                let counts: Vec<Option<u64>> = p.query_async(&mut deps.conn()).await?;
                Ok(counts.into_iter().map(|c| (c.unwrap_or(0) > 0).then(Vec::new)).collect())
            }
            Keep::Batches { keys, kind } => {
                let mut p = redis::pipe();
                for (m, _) in rows {
                    let b = BatchId::parse(m).map_err(|e| OpsError::Storage(bad_stored(e)))?;
                    p.cmd("HMGET").arg(keys.batch(&b)).arg(&SUMMARY_FIELDS[..]);
                }
                let got: Vec<Vec<Option<String>>> = p.query_async(&mut deps.conn()).await?;
                // An expired record leaves its index entry behind until the next batch trims it.
                Ok(got
                    .into_iter()
                    .map(|f| {
                        let ok = f[4].is_some() && kind.is_none_or(|want| f[1].as_deref().unwrap_or("bulk") == want);
                        ok.then_some(f)
                    })
                    .collect())
            }
        }
    }
}

/// Walks a sorted set newest first from `after`, keeping the entries `keep` accepts, until `limit` are kept (then
/// `has_more` says whether one more exists) or the scan budget is spent. Returns (entries, has_more, next cursor).
async fn newest_first(
    deps: &Deps,
    index: &str,
    after: Option<&Cursor>,
    limit: usize,
    keep: Keep<'_>,
) -> Result<(Vec<Kept>, bool, Option<Cursor>), OpsError> {
    let mut conn = deps.conn();
    let mut from = after.cloned();
    let mut kept: Vec<Kept> = Vec::new();
    // The first read asks for one page and one more; a filter that skips entries doubles it, up to SCAN_CHUNK.
    let mut chunk = (limit + 1).min(SCAN_CHUNK);
    for _ in 0..SCAN_ROUNDS {
        let max = from.as_ref().map_or("+inf".to_owned(), |c| c.ms.to_string());
        let rows: Vec<(String, i64)> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(index)
            .arg(&max)
            .arg("-inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(chunk)
            .query_async(&mut conn)
            .await?;
        let full = rows.len() == chunk;
        // Entries at the cursor's score come in reverse member order: those at or above its member were on a page
        // already.
        let fresh: Vec<(String, i64)> = rows
            .into_iter()
            .filter(|(m, s)| from.as_ref().is_none_or(|c| *s < c.ms || m.as_str() < c.member.as_str()))
            .collect();
        let Some(last) = fresh.last().cloned() else {
            if full && chunk < TIE_CHUNK_MAX {
                // A full read of entries all on the cursor's millisecond, every one shown already: read more of them.
                chunk = (chunk * 4).min(TIE_CHUNK_MAX);
                continue;
            }
            return Ok((kept, false, None));
        };
        let verdicts = keep.verdicts(deps, &fresh).await?;
        for ((m, s), v) in fresh.into_iter().zip(verdicts) {
            let Some(fields) = v else { continue };
            if kept.len() == limit {
                let next = kept.last().map(|(m, s, _)| Cursor { ms: *s, member: m.clone() });
                return Ok((kept, true, next));
            }
            kept.push((m, s, fields));
        }
        from = Some(Cursor { ms: last.1, member: last.0 });
        if !full {
            return Ok((kept, false, None));
        }
        chunk = (chunk * 2).clamp(1, SCAN_CHUNK);
    }
    // The scan budget is spent: what was found, and where to go on from.
    Ok((kept, true, from))
}

// ---------------------------------------------------------------------------------------------------------------
// Inbox

/// What the inbox lists.
#[derive(Clone, Debug, Default)]
pub struct InboxQuery {
    /// Only threads with replies not read yet.
    pub unread: bool,
    /// Only tenants who replied to this batch.
    pub batch: Option<String>,
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// A page of the inbox.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InboxPage {
    pub customer: String,
    pub threads: Vec<ThreadSummary>,
    pub has_more: bool,
    /// Pass as `after` for the next page (present when `has_more`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Threads of this customer with replies not read yet (the navigation's badge).
    pub unread_threads: u64,
}

/// One tenant's thread in the inbox.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ThreadSummary {
    pub phone: String,
    /// When the tenant last wrote (RFC 3339), and the same in Redis ms.
    pub last_reply_at: String,
    pub last_reply_ms: i64,
    /// Replies not read yet.
    pub unread: u64,
    /// The thread's newest message (the conversation may have expired: 30 days after its last message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<Message>,
    /// The batch the tenant's newest message belongs to (what they most likely answered), with its label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_label: Option<String>,
    /// The tenant's merge fields in that batch (`name`, `unit`, …); empty for a plain batch or an unknown number.
    pub fields: BTreeMap<String, String>,
    /// Messenger texts this tenant nothing (they opted out).
    pub opted_out: bool,
}

/// The threads of customer `id`, newest reply first.
pub async fn inbox(deps: &Deps, id: &CustomerId, q: &InboxQuery) -> Result<InboxPage, OpsError> {
    let limit = limit_of(q.limit, PAGE_DEFAULT, PAGE_MAX)?;
    let after = q.after.as_deref().map(|a| Cursor::parse("after", a)).transpose()?;
    let k = CustomerKeys::new(id);
    let index = match &q.batch {
        Some(b) => {
            let b = BatchId::parse(b).map_err(|e| OpsError::invalid("batch", e.to_string()))?;
            if b.customer() != id {
                return Err(OpsError::invalid("batch", format!("batch {b} is not a batch of customer {id}")));
            }
            k.batch_replies(&b)
        }
        None => k.inbox(),
    };
    customers::get(deps, id).await?;
    let unread_key = k.unread();
    let keep = if q.unread { Keep::Unread(&unread_key) } else { Keep::All };
    let (rows, has_more, next) = newest_first(deps, &index, after.as_ref(), limit, keep).await?;
    let rows: Vec<(String, i64)> = rows.into_iter().map(|(m, s, _)| (m, s)).collect();
    let threads = summaries(deps, id, &rows).await?;
    let unread_threads: u64 = redis::cmd("HLEN").arg(k.unread()).query_async(&mut deps.conn()).await?;
    Ok(InboxPage { customer: id.to_string(), threads, has_more, next: next.map(|c| c.to_string()), unread_threads })
}

/// The details of a page of threads: two pipelines (the threads, then the batches they answered).
async fn summaries(deps: &Deps, id: &CustomerId, rows: &[(String, i64)]) -> Result<Vec<ThreadSummary>, OpsError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let k = CustomerKeys::new(id);
    let now = chrono::Utc::now().timestamp_millis();
    let mut p = redis::pipe();
    for (phone, _) in rows {
        let [prev, cur] = k.conversations(phone, now);
        p.hget(k.unread(), phone).get(prev).get(cur).sismember(k.optouts(), phone);
    }
    // Per thread: unread replies, the last epoch's and this epoch's conversation, opted out.
    type Read = (Option<u64>, Option<String>, Option<String>, bool);
    let got: Vec<Read> = p.query_async(&mut deps.conn()).await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut wanted: Vec<(usize, BatchId)> = Vec::new();
    for (i, ((phone, ms), (unread, prev, cur, opted_out))) in rows.iter().zip(got).enumerate() {
        let tail = merge_thread(entries_of(prev), entries_of(cur), now);
        let entries: Vec<Entry> = tail.iter().filter_map(|e| Entry::parse(e)).collect();
        let batch = entries.iter().rev().find_map(|e| e.batch.clone());
        if let Some(b) = batch.as_deref().and_then(|b| BatchId::parse(b).ok()).filter(|b| b.customer() == id) {
            wanted.push((i, b));
        }
        out.push(ThreadSummary {
            phone: phone.clone(),
            last_reply_at: rfc3339(*ms),
            last_reply_ms: *ms,
            unread: unread.unwrap_or(0),
            last: entries.last().map(|e| e.message(None)),
            batch,
            batch_label: None,
            fields: BTreeMap::new(),
            opted_out,
        });
    }
    if wanted.is_empty() {
        return Ok(out);
    }
    let mut p = redis::pipe();
    for (i, b) in &wanted {
        p.cmd("HMGET").arg(k.batch(b)).arg("vars").arg("label").hget(k.batch_values(b), &out[*i].phone);
    }
    // Per thread answering a batch: the batch's variables and label, and the tenant's values.
    type Fields = ((Option<String>, Option<String>), Option<String>);
    let got: Vec<Fields> = p.query_async(&mut deps.conn()).await?;
    for ((i, _), ((vars, label), values)) in wanted.iter().zip(got) {
        let t = &mut out[*i];
        t.batch_label = label;
        t.fields = fields_of(vars.as_deref(), values.as_deref());
    }
    Ok(out)
}

/// A recipient's merge fields: the batch's variable names (comma-joined) paired with their values.
fn fields_of(vars: Option<&str>, values: Option<&str>) -> BTreeMap<String, String> {
    match (vars, values) {
        (Some(names), Some(values)) if !names.is_empty() => names
            .split(',')
            .zip(values.split(VALUE_SEPARATOR))
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// What marking a thread read did.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MarkedRead {
    pub phone: String,
    /// Replies that were unread until now.
    pub was_unread: u64,
    /// Threads of the customer still with unread replies.
    pub unread_threads: u64,
}

/// Marks `phone`'s replies to customer `id` read.
pub async fn mark_read(deps: &Deps, id: &CustomerId, phone: &str) -> Result<MarkedRead, OpsError> {
    let phone = PhoneNumber::parse(phone).map_err(|e| OpsError::invalid("phone", e.to_string()))?;
    customers::get(deps, id).await?;
    let k = CustomerKeys::new(id);
    let (was, _, left): (Option<u64>, u32, u64) = redis::pipe()
        .hget(k.unread(), phone.as_str())
        .hdel(k.unread(), phone.as_str())
        .cmd("HLEN")
        .arg(k.unread())
        .query_async(&mut deps.conn())
        .await?;
    Ok(MarkedRead { phone: phone.to_string(), was_unread: was.unwrap_or(0), unread_threads: left })
}

/// Threads of customer `id` with replies not read yet.
pub async fn unread_threads(deps: &Deps, id: &CustomerId) -> Result<u64, OpsError> {
    Ok(redis::cmd("HLEN").arg(CustomerKeys::new(id).unread()).query_async(&mut deps.conn()).await?)
}

// ---------------------------------------------------------------------------------------------------------------
// A thread

/// A conversation entry as stored (common.lua `converse`).
#[derive(Clone, Debug)]
struct Entry {
    dir: char,
    ms: i64,
    number: String,
    sid: Option<String>,
    batch: Option<String>,
    body: String,
}

impl Entry {
    fn parse(s: &str) -> Option<Self> {
        let mut p = s.splitn(6, '|');
        let (dir, at, number, sid, batch, body) = (p.next()?, p.next()?, p.next()?, p.next()?, p.next()?, p.next()?);
        Some(Self {
            dir: dir.chars().next()?,
            ms: at.parse().ok()?,
            number: number.to_owned(),
            sid: Some(sid.to_owned()).filter(|s| !s.is_empty()),
            batch: Some(batch.to_owned()).filter(|s| !s.is_empty()),
            body: body.to_owned(),
        })
    }

    fn message(&self, delivery: Option<(String, Option<u32>)>) -> Message {
        let (direction, status, code, reason) = match self.dir {
            'i' => ("inbound", None, None, None),
            'f' => ("failed", Some("failed".to_owned()), twilio_code(&self.body), Some(self.body.clone())),
            _ => {
                let (status, code) = delivery.map_or((None, None), |(s, c)| (Some(s), c));
                ("outbound", status.or_else(|| self.sid.as_ref().map(|_| "sent".to_owned())), code, None)
            }
        };
        Message {
            direction: direction.to_owned(),
            at: rfc3339(self.ms),
            at_ms: self.ms,
            number: Some(self.number.clone()).filter(|n| !n.is_empty()),
            body: if self.dir == 'f' { String::new() } else { self.body.clone() },
            message_sid: self.sid.clone(),
            batch: self.batch.clone(),
            status,
            error_code: code,
            meaning: code.and_then(describe).map(str::to_owned),
            reason,
        }
    }
}

/// Twilio's error code in a failure reason (`twilio 21211`, `twilio 21211 (retries exhausted)`).
fn twilio_code(reason: &str) -> Option<u32> {
    reason.strip_prefix("twilio ")?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A customer's conversation with one tenant.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Thread {
    pub customer: String,
    pub phone: String,
    /// Messenger texts this tenant nothing (they opted out): an answer to them would not be sent.
    pub opted_out: bool,
    /// Conversations are kept for every customer (this stays true; kept for clients of the earlier API).
    pub recording: bool,
    /// Replies not read yet.
    pub unread: u64,
    pub messages: Vec<Message>,
}

/// One message of a thread.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Message {
    /// `outbound` (a text to the tenant, or the HELP answer), `inbound` (the tenant's reply), or `failed` (a text
    /// that could not be sent: `reason` says why).
    pub direction: String,
    /// RFC 3339, and the same in Redis ms.
    pub at: String,
    pub at_ms: i64,
    /// The customer's number it went from or to (absent for a text that failed before a number was chosen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    pub body: String,
    /// Twilio's message sid (absent for the HELP answer, which went back in the webhook's reply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_sid: Option<String>,
    /// The batch of a text sent, or the one a reply most likely answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// A text's delivery: `sent` (Twilio took it), then Twilio's furthest report (`delivered`, `undelivered`,
    /// `failed`, …); `failed` for a text that could not be sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Twilio's error code when it failed or was not delivered, and what it means.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meaning: Option<String>,
    /// Why a text could not be sent (Messenger's reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Customer `id`'s conversation with `phone`: the thread and its texts' delivery (two pipelines).
pub async fn thread(deps: &Deps, id: &CustomerId, phone: &str) -> Result<Thread, OpsError> {
    let phone = PhoneNumber::parse(phone).map_err(|e| OpsError::invalid("phone", e.to_string()))?;
    customers::get(deps, id).await?;
    let k = CustomerKeys::new(id);
    let now = chrono::Utc::now().timestamp_millis();
    let [prev, cur] = k.conversations(phone.as_str(), now);
    let (opted_out, unread, prev, cur): (bool, Option<u64>, Option<String>, Option<String>) = redis::pipe()
        .sismember(k.optouts(), phone.as_str())
        .hget(k.unread(), phone.as_str())
        .get(prev)
        .get(cur)
        .query_async(&mut deps.conn())
        .await?;
    let rows = merge_thread(entries_of(prev), entries_of(cur), now);
    let entries: Vec<Entry> = rows.iter().filter_map(|r| Entry::parse(r)).collect();
    // Each text sent: its furthest delivery report, and the carrier's code when it was not delivered.
    let sent: Vec<(usize, BatchId, String)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.dir == 'o')
        .filter_map(|(i, e)| {
            let b = BatchId::parse(e.batch.as_deref()?).ok().filter(|b| b.customer() == id)?;
            Some((i, b, e.sid.clone()?))
        })
        .collect();
    let mut delivery: HashMap<usize, (String, Option<u32>)> = HashMap::new();
    if !sent.is_empty() {
        let mut p = redis::pipe();
        for (_, b, sid) in &sent {
            p.hget(k.batch_deliveries(b), sid).hget(k.batch_undelivered(b), phone.as_str());
        }
        let got: Vec<(Option<String>, Option<String>)> = p.query_async(&mut deps.conn()).await?;
        for ((i, _, sid), (status, undl)) in sent.iter().zip(got) {
            let Some(status) = status else { continue };
            let code = undl
                .as_deref()
                .and_then(|u| {
                    let mut p = u.split('|');
                    (p.next() == Some(sid.as_str())).then(|| p.nth(1)).flatten()
                })
                .and_then(|c| c.parse().ok());
            delivery.insert(*i, (status, code));
        }
    }
    let messages = entries.iter().enumerate().map(|(i, e)| e.message(delivery.remove(&i))).collect();
    Ok(Thread {
        customer: id.to_string(),
        phone: phone.to_string(),
        opted_out,
        recording: true,
        unread: unread.unwrap_or(0),
        messages,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Batches

/// `bulk`, `answer` or `resend`, as a filter.
pub const KINDS: [&str; 3] = ["bulk", "answer", "resend"];

/// One batch in a customer's list.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BatchSummary {
    pub batch_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `bulk`, `answer` (a single message, usually a person's answer) or `resend`.
    pub kind: String,
    /// The text's first 80 characters (its template, for a personalised batch).
    pub preview: String,
    /// `enqueuing`, `queued` or `complete`.
    pub state: String,
    pub total: u64,
    pub sent: u64,
    /// Refused before or by Twilio, and not delivered by the carrier: the two kinds of failure people act on.
    pub failed: u64,
    pub undelivered: u64,
    pub delivered: u64,
    pub opted_out: u64,
    pub created_at: String,
    pub created_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resend_of: Option<String>,
}

/// A page of a customer's batches.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BatchPage {
    pub customer: String,
    pub batches: Vec<BatchSummary>,
    pub has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

const SUMMARY_FIELDS: [&str; 13] = [
    "label",
    "kind",
    "body",
    "state",
    "total",
    "sent",
    "failed",
    "undelivered",
    "delivered",
    "opted_out",
    "created_ms",
    "resend_of",
    "id",
];

/// Customer `id`'s batches, newest first (`kind`: one of [`KINDS`]).
pub async fn batches(
    deps: &Deps,
    id: &CustomerId,
    kind: Option<&str>,
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<BatchPage, OpsError> {
    let limit = limit_of(limit, PAGE_DEFAULT, PAGE_MAX)?;
    if let Some(kind) = kind.filter(|k| !KINDS.contains(k)) {
        return Err(OpsError::invalid("kind", format!("{:?}; one of {}", short(kind), KINDS.join(", "))));
    }
    let after = after.map(|a| Cursor::parse("after", a)).transpose()?;
    customers::get(deps, id).await?;
    let k = CustomerKeys::new(id);
    let keep = Keep::Batches { keys: &k, kind };
    let (rows, has_more, next) = newest_first(deps, &k.batches(), after.as_ref(), limit, keep).await?;
    let batches = rows
        .into_iter()
        .map(|(m, _, f)| {
            let n = |i: usize| f[i].as_deref().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0).max(0) as u64;
            let created_ms = n(10) as i64;
            BatchSummary {
                batch_id: m,
                label: f[0].clone(),
                kind: f[1].clone().unwrap_or_else(|| "bulk".to_owned()),
                preview: preview(f[2].as_deref().unwrap_or("")),
                state: f[3].clone().unwrap_or_default(),
                total: n(4),
                sent: n(5),
                failed: n(6),
                undelivered: n(7),
                delivered: n(8),
                opted_out: n(9),
                created_at: rfc3339(created_ms),
                created_ms,
                resend_of: f[11].clone(),
            }
        })
        .collect();
    Ok(BatchPage { customer: id.to_string(), batches, has_more, next: next.map(|c| c.to_string()) })
}

fn bad_stored(e: impl std::fmt::Display) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "bad batch id stored", e.to_string()))
}

/// The first 80 characters of a text, on one line.
pub fn preview(body: &str) -> String {
    let one_line: String = body.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one_line.chars().count() > 80 {
        format!("{}…", one_line.chars().take(79).collect::<String>())
    } else {
        one_line
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Recipients by state

/// One recipient of a batch in a state people act on.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RecipientRow {
    pub phone: String,
    /// `failed` (Messenger or Twilio refused the text) or `undelivered` (the carrier did not deliver it).
    pub state: String,
    /// Messenger's reason (`twilio 21211`, `unreachable: landline`, …), or the delivery status Twilio reported.
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meaning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_sid: Option<String>,
    /// The recipient's merge fields in the batch.
    pub fields: BTreeMap<String, String>,
}

/// A page of a batch's recipients.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RecipientPage {
    pub batch_id: String,
    /// The states listed.
    pub states: Vec<String>,
    /// How many recipients are in those states, over every page.
    pub total: u64,
    pub recipients: Vec<RecipientRow>,
    pub has_more: bool,
    /// Pass as `after` for the next page: the last recipient listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Parses a comma-separated list of states (`failed,undelivered`); empty means both.
pub fn parse_states(field: &str, raw: &[String]) -> Result<Vec<&'static str>, OpsError> {
    let mut out = BTreeSet::new();
    for s in raw.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
        match STATES.iter().find(|k| **k == s) {
            Some(k) => {
                out.insert(*k);
            }
            None => {
                return Err(OpsError::invalid(
                    field,
                    format!("unknown state {:?}; one or more of {}", short(s), STATES.join(", ")),
                ));
            }
        }
    }
    Ok(if out.is_empty() { STATES.to_vec() } else { out.into_iter().collect() })
}

/// Every recipient of `batch` in `states`, by phone (the failure and delivery records of a batch: bounded by its size).
async fn all_in_states(deps: &Deps, batch: &BatchId, states: &[&str]) -> Result<Vec<RecipientRow>, OpsError> {
    let k = CustomerKeys::new(batch.customer());
    let mut conn = deps.conn();
    let mut read = async |key: String, wanted: bool| -> Result<HashMap<String, String>, OpsError> {
        if !wanted {
            return Ok(HashMap::new());
        }
        Ok(redis::cmd("HGETALL").arg(key).query_async(&mut conn).await?)
    };
    let failed = read(k.batch_failures(batch), states.contains(&"failed")).await?;
    let undelivered = read(k.batch_undelivered(batch), states.contains(&"undelivered")).await?;
    let mut rows: BTreeMap<String, RecipientRow> = BTreeMap::new();
    for (phone, reason) in failed {
        let code = twilio_code(&reason);
        let row = RecipientRow {
            phone: phone.clone(),
            state: "failed".into(),
            meaning: code.and_then(describe).map(str::to_owned),
            error_code: code,
            reason,
            message_sid: None,
            fields: BTreeMap::new(),
        };
        rows.insert(phone, row);
    }
    for (phone, v) in undelivered {
        let mut p = v.splitn(3, '|');
        let (sid, status, code) = (p.next().unwrap_or(""), p.next().unwrap_or(""), p.next().unwrap_or(""));
        let code = code.parse::<u32>().ok();
        let row = RecipientRow {
            phone: phone.clone(),
            state: "undelivered".into(),
            reason: format!("carrier: {status}"),
            error_code: code,
            meaning: code.and_then(describe).map(str::to_owned),
            message_sid: Some(sid.to_owned()).filter(|s| !s.is_empty()),
            fields: BTreeMap::new(),
        };
        rows.insert(phone, row);
    }
    Ok(rows.into_values().collect())
}

/// Fills in the rows' merge fields (one pipeline).
async fn with_fields(deps: &Deps, batch: &BatchId, rows: &mut [RecipientRow]) -> Result<(), OpsError> {
    if rows.is_empty() {
        return Ok(());
    }
    let k = CustomerKeys::new(batch.customer());
    let vars: Option<String> = redis::cmd("HGET").arg(k.batch(batch)).arg("vars").query_async(&mut deps.conn()).await?;
    let Some(vars) = vars.filter(|v| !v.is_empty()) else { return Ok(()) };
    let phones: Vec<&str> = rows.iter().map(|r| r.phone.as_str()).collect();
    let values: Vec<Option<String>> =
        redis::cmd("HMGET").arg(k.batch_values(batch)).arg(&phones).query_async(&mut deps.conn()).await?;
    for (r, v) in rows.iter_mut().zip(values) {
        r.fields = fields_of(Some(&vars), v.as_deref());
    }
    Ok(())
}

/// The recipients of `batch` in `states`, by phone, a page at a time.
pub async fn recipients(
    deps: &Deps,
    batch: &BatchId,
    states: &[&'static str],
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<RecipientPage, OpsError> {
    let limit = limit_of(limit, RECIPIENTS_DEFAULT, RECIPIENTS_MAX)?;
    let after =
        after.map(|a| PhoneNumber::parse(a).map_err(|e| OpsError::invalid("after", e.to_string()))).transpose()?;
    batch_ops::status(deps, batch).await?;
    let all = all_in_states(deps, batch, states).await?;
    let total = all.len() as u64;
    let mut page: Vec<RecipientRow> = all
        .into_iter()
        .filter(|r| after.as_ref().is_none_or(|a| r.phone.as_str() > a.as_str()))
        .take(limit + 1)
        .collect();
    let has_more = page.len() > limit;
    page.truncate(limit);
    with_fields(deps, batch, &mut page).await?;
    Ok(RecipientPage {
        batch_id: batch.to_string(),
        states: states.iter().map(|s| (*s).to_owned()).collect(),
        total,
        next: has_more.then(|| page.last().map(|r| r.phone.clone())).flatten(),
        recipients: page,
        has_more,
    })
}

/// Every recipient of `batch` in `states`, by phone, with merge fields (one read of each record: for the CLI).
pub async fn all_recipients(
    deps: &Deps,
    batch: &BatchId,
    states: &[&'static str],
) -> Result<Vec<RecipientRow>, OpsError> {
    batch_ops::status(deps, batch).await?;
    let mut all = all_in_states(deps, batch, states).await?;
    with_fields(deps, batch, &mut all).await?;
    Ok(all)
}

/// Every recipient of `batch` in `states` as CSV: phone, state, reason, code, meaning, message sid, then the
/// batch's merge fields (formulas defused).
pub async fn recipients_csv(deps: &Deps, batch: &BatchId, states: &[&'static str]) -> Result<String, OpsError> {
    let status = batch_ops::status(deps, batch).await?;
    let mut all = all_in_states(deps, batch, states).await?;
    with_fields(deps, batch, &mut all).await?;
    let vars: Vec<&str> = status.variables.iter().map(String::as_str).collect();
    let mut out = String::from("phone,state,reason,error_code,meaning,message_sid");
    for v in &vars {
        out.push(',');
        out.push_str(&super::csv_cell(v));
    }
    out.push('\n');
    for r in &all {
        let cells = [
            r.phone.clone(),
            r.state.clone(),
            r.reason.clone(),
            r.error_code.map(|c| c.to_string()).unwrap_or_default(),
            r.meaning.clone().unwrap_or_default(),
            r.message_sid.clone().unwrap_or_default(),
        ];
        let mut line: Vec<String> = cells.iter().map(|c| super::csv_cell(c)).collect();
        line.extend(vars.iter().map(|v| super::csv_cell(r.fields.get(*v).map(String::as_str).unwrap_or(""))));
        out.push_str(&line.join(","));
        out.push('\n');
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------------
// Resend

/// A resend: which recipients of a finished batch, and optionally a new body.
#[derive(Clone, Debug, Default)]
pub struct Resend {
    pub which: Vec<String>,
    /// A new text (a template over the first batch's merge fields); the first batch's text when absent.
    pub body: Option<String>,
    pub label: Option<String>,
    pub idempotency_key: Option<String>,
    /// Count only: who would be texted and who skipped, nothing written.
    pub dry_run: bool,
}

/// What a resend did (or, for a dry run, would do).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ResendOutcome {
    /// The new batch (absent on a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    pub resend_of: String,
    pub which: Vec<String>,
    /// Recipients the new batch texts.
    pub recipients: usize,
    /// Recipients left out because the text cannot succeed, by reason (`opted_out`, `landline`,
    /// `invalid_number`, `no_consent`).
    pub skipped: BTreeMap<String, u64>,
    /// True when the same request was made before: nothing new was created.
    pub existing: bool,
    pub dry_run: bool,
}

/// Why a recipient's text cannot succeed, from its failure reason or carrier code.
fn hopeless(row: &RecipientRow) -> Option<&'static str> {
    match row.error_code {
        Some(21211 | 21421) => return Some("invalid_number"),
        Some(21614 | 21635 | 30006) => return Some("landline"),
        Some(21610) => return Some("opted_out"),
        _ => {}
    }
    let r = row.reason.as_str();
    if r.starts_with("unreachable: landline") {
        Some("landline")
    } else if r.starts_with("unreachable") {
        Some("invalid_number")
    } else {
        None
    }
}

/// Texts a finished batch's failed and/or undelivered recipients again, as a new batch linked to it.
pub async fn resend(deps: &Deps, batch: &BatchId, req: &Resend) -> Result<ResendOutcome, OpsError> {
    if req.which.is_empty() {
        return Err(OpsError::invalid("which", format!("name what to resend: one or more of {}", STATES.join(", "))));
    }
    let states = parse_states("which", &req.which)?;
    let label = match req.label.as_deref() {
        Some(l) => validate::parse_label(l).map_err(|m| OpsError::invalid("label", m))?,
        None => None,
    };
    let status: BatchStatus = batch_ops::status(deps, batch).await?;
    if status.state != "complete" {
        let pending = status.pending();
        return Err(OpsError::Conflict {
            field: Some("batch"),
            message: format!(
                "batch {batch} is still sending ({pending} of its texts are not finished): a resend now could text \
                 someone twice; resend once it is complete, or cancel it first"
            ),
        });
    }
    let k = CustomerKeys::new(batch.customer());
    let (template, vars, old_label, consent): (Option<String>, Option<String>, Option<String>, Option<String>) =
        redis::pipe()
            .hget(k.batch(batch), "body")
            .hget(k.batch(batch), "vars")
            .hget(k.batch(batch), "label")
            .hget(k.cfg(), "consent")
            .query_async(&mut deps.conn())
            .await?;
    let mut rows = all_in_states(deps, batch, &states).await?;
    with_fields(deps, batch, &mut rows).await?;
    // Who cannot be texted: by their failure, then by the customer's current opt-outs and consent.
    let phones: Vec<&str> = rows.iter().map(|r| r.phone.as_str()).collect();
    let (out, with_consent): (Vec<bool>, Vec<bool>) = if phones.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        redis::pipe()
            .cmd("SMISMEMBER")
            .arg(k.optouts())
            .arg(&phones)
            .cmd("SMISMEMBER")
            .arg(k.consent())
            .arg(&phones)
            .query_async(&mut deps.conn())
            .await?
    };
    let need_consent = consent.as_deref() == Some("1");
    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
    let mut chosen: Vec<&RecipientRow> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let why = hopeless(r)
            .or_else(|| out.get(i).copied().unwrap_or(false).then_some("opted_out"))
            .or_else(|| (need_consent && !with_consent.get(i).copied().unwrap_or(false)).then_some("no_consent"));
        match why {
            Some(w) => *skipped.entry(w.to_owned()).or_default() += 1,
            None => chosen.push(r),
        }
    }
    let which: Vec<String> = states.iter().map(|s| (*s).to_owned()).collect();
    let outcome = |batch_id: Option<String>, existing: bool| ResendOutcome {
        batch_id,
        resend_of: batch.to_string(),
        which: which.clone(),
        recipients: chosen.len(),
        skipped: skipped.clone(),
        existing,
        dry_run: req.dry_run,
    };
    if req.dry_run {
        return Ok(outcome(None, false));
    }
    if chosen.is_empty() {
        return Err(OpsError::invalid(
            "which",
            format!(
                "nobody to resend to: batch {batch} has {} {} recipients, and none of them can be texted ({})",
                rows.len(),
                which.join(" or "),
                if skipped.is_empty() {
                    "none at all".to_owned()
                } else {
                    skipped.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
                }
            ),
        ));
    }
    // The same resend asked again (a retried request, a double click) finds the batch its first call made.
    let key = match &req.idempotency_key {
        Some(k) => k.clone(),
        None => format!("resend-{}-{}", batch.local(), which.join("-")),
    };
    let names: Vec<String> =
        vars.filter(|v| !v.is_empty()).map(|v| v.split(',').map(str::to_owned).collect()).unwrap_or_default();
    let renders_fields = req.body.as_deref().or(template.as_deref()).is_some_and(|b| b.contains("{{"));
    if renders_fields && chosen.iter().any(|r| r.fields.is_empty()) {
        return Err(OpsError::invalid(
            "body",
            format!(
                "batch {batch}'s merge values are no longer kept for some of these recipients (the batch predates \
                 keeping them, or they expired): give a body without merge fields"
            ),
        ));
    }
    let bulk = BulkRequest {
        customer: batch.customer().to_string(),
        body: req.body.clone().or(template).unwrap_or_default(),
        recipients: chosen
            .iter()
            .map(|r| RawRecipient {
                origin: format!("recipient {}", r.phone),
                value: r.phone.clone(),
                vars: names.iter().filter_map(|n| Some((n.clone(), r.fields.get(n)?.clone()))).collect(),
            })
            .collect(),
        columns: names.clone(),
        idempotency_key: Some(key.clone()),
        smart_encoding: false,
        send_at: None,
        expiry: None,
        urgent: status.urgent,
        label: Some(label.unwrap_or_else(|| {
            let of = old_label.unwrap_or_else(|| batch.to_string());
            validate::parse_label(&format!("Resend of {}", of.chars().take(180).collect::<String>()))
                .ok()
                .flatten()
                .unwrap_or_default()
        })),
    };
    let mut prepared = texts::prepare_blocking(bulk).await?;
    prepared.batch.resend_of = Some(batch.to_string());
    // Claim the states for this resend before anything is queued: a second, different resend is refused.
    let claim_call = |mode: &str| {
        let mut claim = scripts::RESEND_CLAIM.key(k.batch(batch));
        claim.arg(mode).arg(&key);
        for s in &states {
            claim.arg(*s);
        }
        claim
    };
    let reply = strings(claim_call("claim").run(&mut deps.conn()).await?);
    let fresh_claim = match reply.first().map(String::as_str) {
        Some("claimed") => reply.get(1).map(String::as_str) == Some("1"),
        Some("taken") => {
            return Err(OpsError::Conflict {
                field: Some("which"),
                message: format!(
                    "batch {batch}'s {} recipients were already resent (idempotency key {:?}); a second resend would \
                     text them twice",
                    reply.get(1).map(String::as_str).unwrap_or(""),
                    reply.get(2).map(String::as_str).unwrap_or("")
                ),
            });
        }
        _ => return Err(batch_ops::unknown(batch)),
    };
    let accepted = match texts::enqueue(deps, prepared, Enqueue::BULK, None).await {
        Ok(a) => a,
        // Refused before anything was queued (the key names another request's batch, the customer is gone): a claim
        // this call made is given back, so a corrected request can resend. A claim from an earlier call stays: its
        // batch may hold texts already.
        Err(e @ (OpsError::Conflict { .. } | OpsError::NotFound(_) | OpsError::Invalid(_))) if fresh_claim => {
            let _: redis::Value = claim_call("release").run(&mut deps.conn()).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    // Linked both ways (a field of the first batch's record only while it exists: HSET would create one).
    let _: redis::Value = redis::cmd("EVAL")
        .arg("if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], 'resent_by', ARGV[1]) end")
        .arg(1)
        .arg(k.batch(batch))
        .arg(&accepted.batch_id)
        .query_async(&mut deps.conn())
        .await?;
    Ok(outcome(Some(accepted.batch_id), accepted.existing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_no_page_returned() {
        let c = Cursor { ms: 1_765_000_000_000, member: "+14155550100".into() };
        assert_eq!(Cursor::parse("after", &c.to_string()).unwrap(), c);
        for bad in ["", "x", "-+1415", "12-", "-1-+1415", "abc-+1415"] {
            assert!(Cursor::parse("after", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn states_parse_and_unknown_ones_are_named() {
        assert_eq!(parse_states("state", &["failed".into()]).unwrap(), vec!["failed"]);
        assert_eq!(parse_states("state", &["undelivered,failed".into()]).unwrap(), vec!["failed", "undelivered"]);
        assert_eq!(parse_states("state", &[]).unwrap(), STATES.to_vec());
        let e = parse_states("state", &["failed,lost".into()]).unwrap_err().to_string();
        assert!(e.contains("\"lost\"") && e.contains("failed, undelivered"), "{e}");
    }

    #[test]
    fn twilio_codes_are_read_from_reasons() {
        assert_eq!(twilio_code("twilio 21211"), Some(21211));
        assert_eq!(twilio_code("twilio 21611 (retries exhausted)"), Some(21611));
        assert_eq!(twilio_code("timeout"), None);
    }

    #[test]
    fn merge_fields_pair_names_with_values() {
        let v = format!("Ann{VALUE_SEPARATOR}3B");
        let f = fields_of(Some("name,unit"), Some(&v));
        assert_eq!(f.get("name").map(String::as_str), Some("Ann"));
        assert_eq!(f.get("unit").map(String::as_str), Some("3B"));
        assert!(fields_of(None, Some(&v)).is_empty());
    }

    #[test]
    fn a_thread_is_the_last_thirty_days_of_its_two_lists_newest_fifty() {
        let now = 100 * THREAD_DAYS_MS;
        let e = |ms: i64| format!("o|{ms}|+14155550100|SM1|acme.x|hi");
        let prev = vec![e(now - THREAD_DAYS_MS - 1), e(now - THREAD_DAYS_MS + 5)];
        let cur: Vec<String> = (0..60).map(|i| e(now - 1000 + i)).collect();
        let t = merge_thread(prev.clone(), cur, now);
        assert_eq!(t.len(), THREAD_MAX);
        assert_eq!(t.last().unwrap(), &e(now - 1000 + 59));
        let t = merge_thread(prev, vec![e(now)], now);
        assert_eq!(t, vec![e(now - THREAD_DAYS_MS + 5), e(now)], "older than 30 days left out, order kept");
    }

    #[test]
    fn previews_are_one_short_line() {
        assert_eq!(preview("Hi\nthere"), "Hi there");
        let long = "x".repeat(200);
        assert_eq!(preview(&long).chars().count(), 80);
    }
}
