//! Tenants' consent, from every channel that is not a reply: an opt-out recorded by staff (the tenant phoned the
//! office) or loaded from the suppression list the old system kept, an opt-in on record (the lease signed, the
//! portal box ticked), a person's decision on a suspected revocation, and the whole record for an audit.
//!
//! Replies are read in the inbound webhook (`server::webhooks`, `shared::domain::revocation`); everything here goes
//! through `consent.lua`, so a change, its record and its event happen in one step. A change is answered only
//! once it is as durable as a send (the replica acknowledgements the deployment asks for); otherwise the caller is
//! told to retry, and retrying is safe (every change is idempotent).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::batches::rfc3339;
use shared::domain::{CustomerId, PhoneNumber};
use shared::keys::CustomerKeys;
use shared::scripts;
use shared::store::strings;

use super::{Deps, OpsError, Problems, customers};
use crate::recipients::{self, Columns, FileLimits};

/// Longest source, note and evidence, in characters.
pub const MAX_SOURCE_CHARS: usize = 200;
pub const MAX_NOTE_CHARS: usize = 1_000;
/// Rows of a suppression list applied per script call.
const IMPORT_CHUNK: usize = 1_000;

/// Which front end recorded a change (kept in the record as `via`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Api,
    Dashboard,
    Cli,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Dashboard => "dashboard",
            Via::Cli => "cli",
        }
    }
}

/// An opt-out from another channel, as the caller wrote it.
#[derive(Clone, Debug, Default)]
pub struct OptOutInput {
    pub phone: String,
    /// How the tenant asked: free text such as "phone call to the office".
    pub source: String,
    pub note: Option<String>,
    /// When the tenant asked (RFC 3339 with an offset); now when absent.
    pub at: Option<String>,
}

/// An opt-in on record, as the caller wrote it.
#[derive(Clone, Debug, Default)]
pub struct OptInInput {
    pub phone: String,
    /// Where consent was given: "lease signed", "portal checkbox".
    pub source: String,
    /// What shows it (a document id, a URL): required to opt back in a tenant who opted out.
    pub evidence: Option<String>,
    /// When consent was given (RFC 3339 with an offset).
    pub at: String,
}

/// What a change did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ConsentChange {
    pub phone: String,
    /// The tenant's state moved (false: it already was so; the record keeps the request all the same).
    pub changed: bool,
    pub opted_out: bool,
    /// Texts held for the tenant's review that were released by this change.
    pub held_released: u64,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn text(p: &mut Problems, field: &str, v: &str, max: usize, required: bool) -> Option<String> {
    let v = v.trim();
    let n = v.chars().count();
    if required && n == 0 {
        p.push(field, "is required: how it came (\"phone call to the office\", \"lease signed\")");
        return None;
    }
    if n > max {
        p.push(field, format!("is {n} characters; at most {max}"));
        return None;
    }
    if v.chars().any(recipients::breaks_a_line) {
        p.push(field, "may not contain line breaks or control characters");
        return None;
    }
    Some(v.to_owned())
}

/// A time a change happened: RFC 3339 with an offset, not in the future (a minute's grace), not before 2000.
fn instant(p: &mut Problems, field: &str, v: &str) -> Option<i64> {
    let t = match DateTime::parse_from_rfc3339(v.trim()) {
        Ok(t) => t.timestamp_millis(),
        Err(_) => {
            p.push(field, format!("{v:?} is not an RFC 3339 time with an offset, such as 2026-12-04T09:00:00-05:00"));
            return None;
        }
    };
    if t > now_ms() + 60_000 {
        p.push(field, format!("{v} is in the future"));
        return None;
    }
    if t < 946_684_800_000 {
        p.push(field, format!("{v} is before 2000"));
        return None;
    }
    Some(t)
}

fn phone(p: &mut Problems, field: &str, v: &str) -> Option<PhoneNumber> {
    p.check(field, PhoneNumber::parse(v))
}

/// Runs one change; `Unavailable` when the replicas did not confirm it.
async fn run(deps: &Deps, id: &CustomerId, args: &[String]) -> Result<Vec<String>, OpsError> {
    let k = CustomerKeys::new(id);
    let mut call = scripts::CONSENT.key(k.cfg());
    call.key(k.optouts()).key(k.optout_records()).key(k.reviews()).key(k.scheduled()).key(k.consent()).key(k.events());
    for a in args {
        call.arg(a);
    }
    shared::store::refresh_topology(&mut deps.conn(), deps.settings.redis.acks.as_ref()).await;
    let mut conn = deps.acked.clone().unwrap_or_else(|| deps.conn());
    let (v, confirmed): (redis::Value, bool) = call.run_acked(&mut conn, deps.settings.redis.acks.as_ref()).await?;
    if !confirmed {
        return Err(OpsError::Unavailable(
            "the change is recorded but Redis's replicas did not confirm it in time; send it again (it is safe)".into(),
        ));
    }
    Ok(strings(v))
}

fn num(p: &[String], i: usize) -> u64 {
    p.get(i).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Records that the tenant asked not to be texted any more through another channel: opted out at once, across
/// every number of the customer and the batches already queued.
pub async fn opt_out(deps: &Deps, id: &CustomerId, input: OptOutInput, via: Via) -> Result<ConsentChange, OpsError> {
    let mut p = Problems::default();
    let to = phone(&mut p, "phone", &input.phone);
    let source = text(&mut p, "source", &input.source, MAX_SOURCE_CHARS, true);
    let note = input.note.as_deref().and_then(|n| text(&mut p, "note", n, MAX_NOTE_CHARS, false));
    let at = input.at.as_deref().map(|a| instant(&mut p, "at", a));
    p.finish()?;
    let (to, source) = (to.expect("checked"), source.expect("checked"));
    customers::get(deps, id).await?;
    let r = run(
        deps,
        id,
        &[
            "opt_out".into(),
            CustomerKeys::new(id).held_prefix(),
            to.to_string(),
            via.as_str().into(),
            source,
            note.unwrap_or_default(),
            at.flatten().map(|t| t.to_string()).unwrap_or_default(),
        ],
    )
    .await?;
    Ok(ConsentChange { phone: to.to_string(), changed: num(&r, 1) == 1, opted_out: true, held_released: num(&r, 2) })
}

/// Puts an opt-in on record (what `require_consent` asks for). A tenant who opted out is opted back in only with
/// evidence: otherwise their own START is the way back.
pub async fn opt_in(deps: &Deps, id: &CustomerId, input: OptInInput, via: Via) -> Result<ConsentChange, OpsError> {
    let mut p = Problems::default();
    let to = phone(&mut p, "phone", &input.phone);
    let source = text(&mut p, "source", &input.source, MAX_SOURCE_CHARS, true);
    let evidence = input.evidence.as_deref().and_then(|e| text(&mut p, "evidence", e, MAX_NOTE_CHARS, false));
    let at = instant(&mut p, "at", &input.at);
    p.finish()?;
    let to = to.expect("checked");
    customers::get(deps, id).await?;
    let r = run(
        deps,
        id,
        &[
            "opt_in".into(),
            CustomerKeys::new(id).held_prefix(),
            to.to_string(),
            via.as_str().into(),
            source.expect("checked"),
            evidence.unwrap_or_default(),
            at.expect("checked").to_string(),
        ],
    )
    .await?;
    if r.first().map(String::as_str) == Some("opted_out") {
        return Err(OpsError::Conflict {
            field: Some("evidence"),
            message: format!(
                "{} opted out; an opt-in on record needs evidence of the new consent (or the tenant's own START)",
                to.masked()
            ),
        });
    }
    Ok(ConsentChange { phone: to.to_string(), changed: num(&r, 1) == 1, opted_out: false, held_released: 0 })
}

/// What an import did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Rows read (a header, blank lines and comments are not rows).
    pub rows: usize,
    /// Tenants opted out by this import.
    pub opted_out_now: u64,
    /// Tenants already opted out (a re-import changes nothing).
    pub already_opted_out: u64,
    /// Rows naming a tenant an earlier row named.
    pub duplicates: usize,
}

/// Loads a suppression list (the old system's opt-outs): one number per line, or CSV with a `phone` column and
/// optional `note` and `at` columns. Every row is checked first and every bad one named; nothing is applied unless
/// all are good. Idempotent: a tenant already opted out is left as is, so a re-import changes nothing (and an
/// import cut short is finished by running it again).
pub async fn import(deps: &Deps, id: &CustomerId, list: &str, source: &str) -> Result<ImportReport, OpsError> {
    let mut p = Problems::default();
    let source = text(&mut p, "source", source, MAX_SOURCE_CHARS, true);
    let rows = match recipients::read_text(list, FileLimits::default(), &Columns::All) {
        Ok(f) => f.rows,
        Err(m) => return Err(OpsError::invalid("list", m)),
    };
    if rows.is_empty() {
        p.push("list", "no rows");
    }
    let mut seen = HashSet::with_capacity(rows.len());
    let mut apply: Vec<(String, String, String)> = Vec::with_capacity(rows.len());
    let mut duplicates = 0;
    for r in &rows {
        let vars: HashMap<&str, &str> = r.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let to = phone(&mut p, &r.origin, &r.value);
        let note = vars.get("note").and_then(|n| text(&mut p, &r.var_origin("note"), n, MAX_NOTE_CHARS, false));
        let at = match vars.get("at").filter(|a| !a.trim().is_empty()) {
            Some(a) => instant(&mut p, &r.var_origin("at"), a).map(|t| t.to_string()),
            None => Some(String::new()),
        };
        if let (Some(to), Some(at)) = (to, at) {
            if seen.insert(to.clone()) {
                apply.push((to.to_string(), note.unwrap_or_default(), at));
            } else {
                duplicates += 1;
            }
        }
    }
    p.finish()?;
    customers::get(deps, id).await?;
    let source = source.expect("checked");
    let (mut added, mut already) = (0, 0);
    for chunk in apply.chunks(IMPORT_CHUNK) {
        let mut args = vec!["import".to_owned(), CustomerKeys::new(id).held_prefix(), source.clone()];
        for (to, note, at) in chunk {
            args.extend([to.clone(), note.clone(), at.clone()]);
        }
        let r = run(deps, id, &args).await?;
        added += num(&r, 1);
        already += num(&r, 2);
    }
    Ok(ImportReport { rows: rows.len(), opted_out_now: added, already_opted_out: already, duplicates })
}

/// A suspected revocation waiting for a person.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Review {
    pub phone: String,
    /// The reply, as the tenant wrote it.
    pub words: String,
    /// The rule that found it suspect (`suspect: cancel`).
    pub rule: String,
    /// The customer's number it was sent to.
    pub number: String,
    pub received: String,
    /// 10 business days after receipt: the rule's limit for honouring a revocation.
    pub deadline: String,
    pub deadline_ms: i64,
    pub overdue: bool,
}

fn review_of(phone: &str, stored: &str, now: i64) -> Option<Review> {
    let v: serde_json::Value = serde_json::from_str(stored).ok()?;
    let s = |f: &str| v.get(f).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let ms = |f: &str| v.get(f).and_then(serde_json::Value::as_i64).unwrap_or(0);
    Some(Review {
        phone: phone.to_owned(),
        words: s("words"),
        rule: s("rule"),
        number: s("number"),
        received: rfc3339(ms("at_ms")),
        deadline: rfc3339(ms("deadline_ms")),
        deadline_ms: ms("deadline_ms"),
        overdue: ms("deadline_ms") < now,
    })
}

/// Most reviews listed at once.
pub const REVIEWS_MAX: usize = 1_000;

/// The customer's suspected revocations waiting for a person, the nearest deadline first.
pub async fn reviews(deps: &Deps, id: &CustomerId) -> Result<Vec<Review>, OpsError> {
    customers::get(deps, id).await?;
    let all: HashMap<String, String> =
        redis::cmd("HGETALL").arg(CustomerKeys::new(id).reviews()).query_async(&mut deps.conn()).await?;
    let now = now_ms();
    let mut out: Vec<Review> = all.iter().filter_map(|(p, s)| review_of(p, s, now)).collect();
    out.sort_by(|a, b| (a.deadline_ms, &a.phone).cmp(&(b.deadline_ms, &b.phone)));
    out.truncate(REVIEWS_MAX);
    Ok(out)
}

/// A person's decision on a suspected revocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It was a revocation: the tenant is opted out (recorded at the time they wrote).
    Confirm,
    /// It was not: the held texts go, and the note says why.
    Dismiss,
}

impl Decision {
    pub fn parse(v: &str) -> Result<Self, String> {
        match v.trim() {
            "confirm" => Ok(Decision::Confirm),
            "dismiss" => Ok(Decision::Dismiss),
            other => Err(format!("must be confirm or dismiss, not {other:?}")),
        }
    }
}

/// Decides tenant `phone`'s review; `by` names who decided (the token's name). A dismissal needs a note (kept).
pub async fn decide(
    deps: &Deps,
    id: &CustomerId,
    phone_raw: &str,
    decision: &str,
    note: &str,
    by: &str,
) -> Result<ConsentChange, OpsError> {
    let mut p = Problems::default();
    let to = phone(&mut p, "phone", phone_raw);
    let decision = p.check("decision", Decision::parse(decision));
    let note = text(&mut p, "note", note, MAX_NOTE_CHARS, decision == Some(Decision::Dismiss));
    p.finish()?;
    let (to, decision) = (to.expect("checked"), decision.expect("checked"));
    customers::get(deps, id).await?;
    let op = if decision == Decision::Confirm { "confirm" } else { "dismiss" };
    let r = run(
        deps,
        id,
        &[op.into(), CustomerKeys::new(id).held_prefix(), to.to_string(), note.unwrap_or_default(), by.to_owned()],
    )
    .await?;
    if r.first().map(String::as_str) == Some("no_review") {
        return Err(OpsError::NotFound(format!("{} has no review waiting", to.masked())));
    }
    Ok(ConsentChange {
        phone: to.to_string(),
        changed: true,
        opted_out: decision == Decision::Confirm,
        held_released: num(&r, 1),
    })
}

/// A tenant's consent state and every change on record (the last 50), oldest first.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct OptOutRecord {
    pub phone: String,
    /// Messenger texts this tenant nothing from any of the customer's numbers.
    pub opted_out: bool,
    /// An opt-in is on record (an API opt-in, or the tenant's own START).
    pub consent_on_record: bool,
    /// A suspected revocation of theirs waiting for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub under_review: Option<Review>,
    pub history: Vec<OptOutEntry>,
    /// Whether the texts around each change below could be read: conversations are kept for every customer now, so
    /// this is true (kept for clients of the earlier API).
    pub texts_recorded: bool,
}

/// One change of consent.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OptOutEntry {
    /// `opt_out`, `opt_in`, `suspected` (a reply that may revoke: under review), `review_dismissed`.
    pub kind: String,
    /// How it came: `keyword` (Twilio's list), `words` (the tenant's own), `api`, `dashboard`, `cli`, `import`,
    /// `review` (a person confirmed a suspected one), `twilio` (error 21610).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The keyword or words as the tenant wrote them, or what reported it (`twilio 21610`).
    pub keyword: String,
    /// The rule that read the words (`phrase: stop texting`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The customer's number it concerned ('' when not known).
    pub number: String,
    /// When the tenant asked (or consent was given).
    pub at: String,
    /// When it was recorded, when later than `at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// Who decided a review.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// The reply's message sid, when it came from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_sid: Option<String>,
    /// The last text sent to the tenant before this change, and the first after it (which, after an opt-out, should
    /// be none), from the conversation (while the customer keeps one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_text_before: Option<TextRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_text_after: Option<TextRef>,
}

/// A text sent to the tenant.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TextRef {
    pub at: String,
    pub number: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_sid: Option<String>,
}

fn entry_of(r: &BTreeMap<String, serde_json::Value>) -> (i64, OptOutEntry) {
    let s = |f: &str| r.get(f).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let opt = |f: &str| Some(s(f)).filter(|v| !v.is_empty());
    let at_ms = r.get("at_ms").and_then(serde_json::Value::as_i64).unwrap_or(0);
    let recorded = r.get("recorded_ms").and_then(serde_json::Value::as_i64).filter(|t| *t != at_ms).map(rfc3339);
    (
        at_ms,
        OptOutEntry {
            kind: s("kind"),
            via: opt("via"),
            keyword: s("keyword"),
            rule: opt("rule"),
            number: s("number"),
            at: rfc3339(at_ms),
            recorded,
            source: opt("source"),
            note: opt("note"),
            evidence: opt("evidence"),
            decided_by: opt("decided_by"),
            message_sid: opt("sid"),
            last_text_before: None,
            first_text_after: None,
        },
    )
}

/// Customer `id`'s consent record of `phone`: its state, every change, and the texts around each change.
pub async fn record(deps: &Deps, id: &CustomerId, phone_raw: &str) -> Result<OptOutRecord, OpsError> {
    let to = PhoneNumber::parse(phone_raw).map_err(|e| OpsError::invalid("phone", e.to_string()))?;
    customers::get(deps, id).await?;
    let k = CustomerKeys::new(id);
    type Read = (bool, bool, Option<String>, Option<String>, Option<String>, Option<String>);
    let now = chrono::Utc::now().timestamp_millis();
    let [prev, cur] = k.conversations(to.as_str(), now);
    let (out, consent, stored, review, prev, cur): Read = redis::pipe()
        .sismember(k.optouts(), to.as_str())
        .sismember(k.consent(), to.as_str())
        .hget(k.optout_records(), to.as_str())
        .hget(k.reviews(), to.as_str())
        .get(prev)
        .get(cur)
        .query_async(&mut deps.conn())
        .await?;
    let thread = super::desk::merge_thread(super::desk::entries_of(prev), super::desk::entries_of(cur), now);
    let rows: Vec<BTreeMap<String, serde_json::Value>> =
        stored.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    // The texts sent to the tenant, oldest first (`o|<ms>|<number>|<sid>|…` entries of the conversation).
    let sent: Vec<(i64, TextRef)> = thread
        .iter()
        .filter_map(|e| {
            let mut p = e.splitn(6, '|');
            let (dir, at, number, sid) = (p.next()?, p.next()?, p.next()?, p.next()?);
            let at: i64 = at.parse().ok()?;
            (dir == "o" && !sid.is_empty()).then(|| {
                (at, TextRef { at: rfc3339(at), number: number.to_owned(), message_sid: Some(sid.to_owned()) })
            })
        })
        .collect();
    let history = rows
        .iter()
        .map(|r| {
            let (at, mut e) = entry_of(r);
            e.last_text_before = sent.iter().rev().find(|(t, _)| *t < at).map(|(_, x)| x.clone());
            e.first_text_after = sent.iter().find(|(t, _)| *t > at).map(|(_, x)| x.clone());
            e
        })
        .collect();
    Ok(OptOutRecord {
        phone: to.to_string(),
        opted_out: out,
        consent_on_record: consent,
        under_review: review.and_then(|r| review_of(to.as_str(), &r, now_ms())),
        history,
        texts_recorded: true,
    })
}

/// One row of an export: one change of one tenant (a tenant opted out with no change on record has one row of
/// kind `opt_out` and no time).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ExportRow {
    pub phone: String,
    pub opted_out: bool,
    pub consent_on_record: bool,
    pub under_review: bool,
    #[serde(flatten)]
    pub entry: OptOutEntry,
}

/// Every consent record of the customer, for an audit: each tenant with a record, an opt-out, an opt-in on record or
/// a review, and every change kept for them.
pub async fn export(deps: &Deps, id: &CustomerId) -> Result<Vec<ExportRow>, OpsError> {
    customers::get(deps, id).await?;
    let k = CustomerKeys::new(id);
    let mut conn = deps.conn();
    let (outs, consents, reviews): (Vec<String>, Vec<String>, Vec<String>) =
        redis::pipe().smembers(k.optouts()).smembers(k.consent()).hkeys(k.reviews()).query_async(&mut conn).await?;
    let (outs, consents, reviews): (HashSet<String>, HashSet<String>, HashSet<String>) =
        (outs.into_iter().collect(), consents.into_iter().collect(), reviews.into_iter().collect());
    let mut records: BTreeMap<String, String> = BTreeMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(k.optout_records())
            .arg(cursor)
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut conn)
            .await?;
        records.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut phones: Vec<&String> = records.keys().chain(&outs).chain(&consents).chain(&reviews).collect();
    phones.sort();
    phones.dedup();
    let mut out = Vec::new();
    for p in phones {
        let state = |e: OptOutEntry| ExportRow {
            phone: p.clone(),
            opted_out: outs.contains(p),
            consent_on_record: consents.contains(p),
            under_review: reviews.contains(p),
            entry: e,
        };
        let rows: Vec<BTreeMap<String, serde_json::Value>> =
            records.get(p).and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
        if rows.is_empty() {
            out.push(state(OptOutEntry {
                kind: if outs.contains(p) { "opt_out" } else { "opt_in" }.into(),
                ..OptOutEntry::default()
            }));
        }
        for r in &rows {
            out.push(state(entry_of(r).1));
        }
    }
    Ok(out)
}

/// The export as CSV (one line per change; quoted where needed, formulas defused).
pub fn export_csv(rows: &[ExportRow]) -> String {
    let q = super::csv_cell;
    let o = |v: &Option<String>| q(v.as_deref().unwrap_or(""));
    let mut out = String::from(
        "phone,opted_out,consent_on_record,under_review,kind,via,words,rule,number,at,recorded,source,note,evidence,decided_by,message_sid\n",
    );
    for r in rows {
        let e = &r.entry;
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.phone,
            r.opted_out,
            r.consent_on_record,
            r.under_review,
            q(&e.kind),
            o(&e.via),
            q(&e.keyword),
            o(&e.rule),
            q(&e.number),
            q(&e.at),
            o(&e.recorded),
            o(&e.source),
            o(&e.note),
            o(&e.evidence),
            o(&e.decided_by),
            o(&e.message_sid)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csv_export_quotes_line_breaks_and_defuses_formulas() {
        let row = |words: &str| ExportRow {
            phone: "+14155550100".into(),
            opted_out: true,
            consent_on_record: false,
            under_review: false,
            entry: OptOutEntry { kind: "opt_out".into(), keyword: words.into(), ..OptOutEntry::default() },
        };
        let csv = export_csv(&[row("stop\nplease, now"), row("=HYPERLINK(\"x\")"), row("+SUM(1)")]);
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[1].starts_with("+14155550100,true,false,false,opt_out,,\"stop"), "{csv}");
        assert!(csv.contains("\"'=HYPERLINK(\"\"x\"\")\""), "{csv}");
        assert!(csv.contains(",'+SUM(1),"), "{csv}");
    }
}
