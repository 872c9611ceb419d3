//! Validating a bulk request as a whole: any invalid part rejects the request, and every problem is reported with
//! where it is (invariant 6: bad input changes nothing).
//!
//! The body is a template (`Hi {{first_name|there}}, water is off in unit {{unit}}`): every recipient's text is
//! rendered here, so a missing value, a text over 1,600 characters or a bad time zone is found before anything is
//! written, and each text's segments are counted for itself. Times (`send_at`, the expiry) are checked against this
//! process's clock, with a minute's grace; whether a text may go *now* is decided later on Redis's clock.

use std::collections::{HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::batches::{NewBatch, Personal, SegmentTotals, Timing};
use shared::domain::template::{VALUE_SEPARATOR, encode_values};
use shared::domain::{CustomerId, IdempotencyKey, MessageBody, PhoneNumber, Template, TimeZone};
use shared::quiet::TZ_VARIABLE;

use crate::recipients::RawRecipient;

/// Most recipients one request may carry.
pub const MAX_RECIPIENTS: usize = 1_000_000;
/// Most variables (merge fields) one recipient may carry: a CSV's columns besides `phone`, a JSON recipient's `vars`.
pub const MAX_VARIABLES: usize = 50;
/// Longest variable value, in characters: a text is at most 1,600, so a longer value could never be sent.
pub const MAX_VALUE_CHARS: usize = 1_600;
/// Longest variable name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// The furthest ahead a batch may be scheduled (Twilio schedules messages up to 35 days ahead, too).
pub const MAX_SCHEDULE_DAYS: i64 = 35;

/// When the texts of a batch stop being worth sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// RFC 3339 with an offset (API `expires_at`).
    At(String),
    /// A duration from now such as `90s`, `20m`, `2h`, `1d`, `1h30m` (CLI `--expires-in`).
    In(String),
}

/// A bulk request as it arrives (from flags, a file or JSON), not yet trusted.
#[derive(Clone, Debug, Default)]
pub struct BulkRequest {
    pub customer: String,
    pub body: String,
    pub recipients: Vec<RawRecipient>,
    /// Every variable the source offered, when the recipients carry only those the body uses (a CSV file's header
    /// columns): named when a merge field has no value. Empty: the recipients' own variables are the list.
    pub columns: Vec<String>,
    pub idempotency_key: Option<String>,
    /// Replace Unicode look-alikes with GSM-7 characters before anything else (Twilio's Smart Encoding list).
    pub smart_encoding: bool,
    /// Not before this: RFC 3339 with an offset (`2026-12-04T09:00:00-05:00`), from now to 35 days ahead.
    pub send_at: Option<String>,
    pub expiry: Option<Expiry>,
    /// Ignore quiet hours (a burst pipe at 2 a.m.).
    pub urgent: bool,
    /// A name for people to find the batch by ("Water shut-off, building 4"): single-line, at most
    /// [`MAX_LABEL_CHARS`] characters.
    pub label: Option<String>,
}

/// The longest batch label.
pub const MAX_LABEL_CHARS: usize = 200;

/// The label, trimmed, or why it is refused.
pub fn parse_label(label: &str) -> Result<Option<String>, String> {
    let label = label.trim();
    let len = label.chars().count();
    if len > MAX_LABEL_CHARS {
        return Err(format!("{len} characters; a label is at most {MAX_LABEL_CHARS}"));
    }
    if let Some(c) = label.chars().find(|c| c.is_control() || crate::recipients::breaks_a_line(*c)) {
        return Err(format!("contains a control character (U+{:04X}): a label is one line of text", c as u32));
    }
    Ok((!label.is_empty()).then(|| label.to_owned()))
}

impl BulkRequest {
    /// The body that will be sent: as given, or smart-encoded.
    pub fn effective_body(&self) -> std::borrow::Cow<'_, str> {
        if self.smart_encoding {
            std::borrow::Cow::Owned(shared::domain::smart::smart_encode(&self.body).0)
        } else {
            std::borrow::Cow::Borrowed(&self.body)
        }
    }

    /// What Smart Encoding changed (when asked for).
    pub fn smart_report(&self) -> Option<shared::domain::smart::SmartEncoding> {
        self.smart_encoding.then(|| {
            let (out, replaced) = shared::domain::smart::smart_encode(&self.body);
            shared::domain::smart::SmartEncoding::of(&self.body, &out, &replaced)
        })
    }
}

/// One thing wrong with a request: which part, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

/// Everything wrong with a request (the first [`Invalid::SHOWN`] problems, and how many there were).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Invalid {
    pub problems: Vec<Problem>,
    pub total: usize,
}

impl Invalid {
    pub const SHOWN: usize = 20;

    /// One problem with one part of the request.
    pub fn one(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { problems: vec![Problem { field: field.into(), message: message.into() }], total: 1 }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request rejected, nothing was changed: ")?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{}: {}", p.field, p.message)?;
        }
        if self.total > self.problems.len() {
            write!(f, "; and {} more problems", self.total - self.problems.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// Problems found so far (the first [`Invalid::SHOWN`] kept, all counted).
#[derive(Default)]
struct Found {
    problems: Vec<Problem>,
    total: usize,
}

impl Found {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.total += 1;
        if self.problems.len() < Invalid::SHOWN {
            self.problems.push(Problem { field: field.into(), message: message.into() });
        }
    }

    fn check<T, E: fmt::Display>(&mut self, field: &str, r: Result<T, E>) -> Option<T> {
        r.map_err(|e| self.push(field, e.to_string())).ok()
    }
}

/// A duration such as `90s`, `20m`, `2h`, `1d` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 90s, 20m, 2h, 1d or 1h30m");
    let mut total = 0i64;
    let mut digits = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
    }
    if !digits.is_empty() || total <= 0 {
        return Err(bad());
    }
    Ok(chrono::Duration::seconds(total))
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{s:?} is not an RFC 3339 time with an offset, such as 2026-12-04T09:00:00-05:00"))
}

/// Checks the request's times against `now`.
fn timing(req: &BulkRequest, now: DateTime<Utc>, found: &mut Found) -> Timing {
    let grace = chrono::Duration::minutes(1);
    let latest = now + chrono::Duration::days(MAX_SCHEDULE_DAYS);
    let send_at = req.send_at.as_deref().and_then(|s| found.check("send_at", parse_instant(s)));
    if let Some(at) = send_at {
        if at < now - grace {
            found.push("send_at", format!("{at} is in the past (now is {})", now.format("%Y-%m-%d %H:%M:%S UTC")));
        } else if at > latest {
            found.push("send_at", format!("{at} is more than {MAX_SCHEDULE_DAYS} days ahead"));
        }
    }
    let start = send_at.unwrap_or(now).max(now);
    let (field, expires) = match &req.expiry {
        None => ("", None),
        Some(Expiry::At(s)) => ("expires_at", found.check("expires_at", parse_instant(s))),
        Some(Expiry::In(s)) => ("expires_in", found.check("expires_in", parse_duration(s)).map(|d| now + d)),
    };
    if let Some(e) = expires {
        if e <= start {
            let after = if send_at.is_some() { "the batch's send_at" } else { "now" };
            found.push(field, format!("{e} is not after {after}"));
        } else if e > start + chrono::Duration::days(MAX_SCHEDULE_DAYS) {
            found.push(field, format!("{e} is more than {MAX_SCHEDULE_DAYS} days after the batch may start"));
        }
    }
    Timing {
        send_at_ms: send_at.map(|t| t.timestamp_millis()),
        expires_at_ms: expires.map(|t| t.timestamp_millis()),
        urgent: req.urgent,
    }
}

/// Parses every part of the request at `now`; returns the batch to enqueue (recipients de-duplicated, first
/// occurrence kept) or every problem found.
pub fn validate(req: &BulkRequest) -> Result<NewBatch, Invalid> {
    validate_at(req, Utc::now())
}

/// [`validate`] with the clock given (tests).
pub fn validate_at(req: &BulkRequest, now: DateTime<Utc>) -> Result<NewBatch, Invalid> {
    let mut found = Found::default();
    let customer = found.check("customer", CustomerId::parse(&req.customer));
    let body = req.effective_body();
    let template = found.check("body", Template::parse(&body));
    let key = req.idempotency_key.as_ref().and_then(|k| found.check("idempotency_key", IdempotencyKey::parse(k)));
    if req.recipients.is_empty() {
        found.push("recipients", "no recipients given");
    }
    if req.recipients.len() > MAX_RECIPIENTS {
        return Err(Invalid::one(
            "recipients",
            format!("{} recipients; one request may carry at most {MAX_RECIPIENTS}", req.recipients.len()),
        ));
    }
    let timing = timing(req, now, &mut found);
    let label = req.label.as_deref().and_then(|l| found.check("label", parse_label(l))).flatten();
    let plain =
        template.as_ref().filter(|t| !t.has_fields()).map(|t| found.check("body", MessageBody::parse(t.as_str())));

    // The variables stored with the jobs: those the body uses, and the time zone when any recipient gives one.
    let mut names: Vec<String> = template.iter().flat_map(|t| t.fields()).map(|(n, _)| n.to_owned()).collect();
    let given: HashSet<&str> = req.recipients.iter().flat_map(|r| r.vars.iter().map(|(k, _)| k.as_str())).collect();
    if given.contains(TZ_VARIABLE) && !names.iter().any(|n| n == TZ_VARIABLE) {
        names.push(TZ_VARIABLE.to_owned());
    }
    // A placeholder without a fallback that no recipient has a value for is a typo in the body: said once.
    let mut unknown = HashSet::new();
    for (name, has_fallback) in template.iter().flat_map(|t| t.fields()) {
        if !has_fallback && !given.contains(name) {
            let mut columns: Vec<&str> = if req.columns.is_empty() {
                given.iter().copied().collect()
            } else {
                req.columns.iter().map(String::as_str).collect()
            };
            columns.sort();
            let known = if columns.is_empty() { "none".to_owned() } else { columns.join(", ") };
            found.push(
                "body",
                format!("{{{{{name}}}}} has no value for any recipient and no fallback ({{{{{name}|…}}}}); the recipients' variables: {known}"),
            );
            unknown.insert(name.to_owned());
        }
    }

    let parsed = parse_all(&req.recipients);
    let mut numbers = Vec::with_capacity(parsed.len());
    let mut values: Vec<Option<String>> = Vec::with_capacity(parsed.len());
    let mut segments = SegmentTotals::EMPTY;
    let personal = template.as_ref().is_some_and(Template::has_fields);
    for (raw, r) in req.recipients.iter().zip(parsed) {
        match r {
            Ok(p) => numbers.push(p),
            Err(e) => found.push(raw.origin.clone(), format!("{:?} {e}", shorten(&raw.value))),
        }
        let vars: HashMap<&str, &str> = raw.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if let Some(tz) = vars.get(TZ_VARIABLE).filter(|v| !v.is_empty()) {
            found.check(&raw.var_origin(TZ_VARIABLE), TimeZone::parse(tz));
        }
        if raw.vars.len() > MAX_VARIABLES {
            found.push(raw.origin.clone(), format!("{} variables; at most {MAX_VARIABLES}", raw.vars.len()));
        }
        for (k, v) in &raw.vars {
            if let Some(problem) = variable_problem(k, v) {
                found.push(raw.var_origin(&shorten(k)), problem);
            }
        }
        if personal && let Some(t) = &template {
            match t.render(|n| vars.get(n).copied()) {
                Ok(text) => match MessageBody::parse(&text) {
                    Ok(b) => {
                        let s = b.segments();
                        segments.add(s.segments, s.encoding);
                    }
                    Err(e) => found.push(raw.origin.clone(), format!("the text for this recipient: {e}")),
                },
                Err(missing) if unknown.contains(&missing) => {}
                Err(missing) => found.push(
                    raw.var_origin(&missing),
                    format!("no value for {{{{{missing}}}}}, and the placeholder has no fallback"),
                ),
            }
        }
        values.push(encode_values(&names, |n| vars.get(n).map(|v| (*v).to_owned())));
    }
    if found.total > 0 {
        return Err(Invalid { problems: found.problems, total: found.total });
    }
    let mut seen = HashSet::with_capacity(numbers.len());
    let mut recipients = Vec::with_capacity(numbers.len());
    let mut kept = Vec::with_capacity(numbers.len());
    for (n, v) in numbers.into_iter().zip(values) {
        if seen.insert(n.clone()) {
            recipients.push(n);
            kept.push(v);
        }
    }
    let duplicates = req.recipients.len() - recipients.len();
    let body = template.expect("no problems, so the body parsed");
    let segments = match plain.flatten() {
        Some(b) => SegmentTotals::uniform(&b, recipients.len()),
        // Duplicates were counted too: count again over the recipients kept (rare; only then).
        None if duplicates > 0 => recount(&body, &names, &kept),
        None => segments,
    };
    let personal = (!names.is_empty()).then(|| Personal { names, values: kept.into_iter().flatten().collect() });
    Ok(NewBatch {
        customer: customer.expect("no problems, so the customer parsed"),
        body,
        recipients,
        personal,
        duplicates,
        idempotency_key: key,
        priority: false,
        timing,
        segments,
        label,
        resend_of: None,
    })
}

/// The segments of the texts of the recipients kept.
fn recount(body: &Template, names: &[String], values: &[Option<String>]) -> SegmentTotals {
    let mut totals = SegmentTotals::EMPTY;
    for v in values {
        let text = body.render_encoded(names, v.as_deref()).unwrap_or_default();
        let s = shared::domain::count_segments(&text);
        totals.add(s.segments, s.encoding);
    }
    totals
}

/// What is wrong with a variable, if anything: values are single-line text of bounded length (a line break would
/// let one value pose as the start of another row in an export, and a longer value can never be sent).
fn variable_problem(name: &str, value: &str) -> Option<String> {
    let name_len = name.chars().count();
    if name.is_empty() || name_len > MAX_NAME_CHARS {
        return Some(format!("a variable's name is 1 to {MAX_NAME_CHARS} characters, not {name_len}"));
    }
    if name.chars().any(|c| c.is_control() || crate::recipients::breaks_a_line(c)) {
        return Some("a variable's name may not contain control characters".into());
    }
    if let Some(c) = value.chars().find(|c| crate::recipients::breaks_a_line(*c) || *c == VALUE_SEPARATOR) {
        return Some(format!(
            "contains a control character (U+{:04X}): values are single-line text without control characters",
            c as u32
        ));
    }
    let len = value.chars().count();
    (len > MAX_VALUE_CHARS).then(|| format!("{len} characters; a value is at most {MAX_VALUE_CHARS}"))
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s.to_owned() }
}

/// Parses every number, on one thread: libphonenumber's validation (~8 µs a number) goes through one regex cache
/// behind a mutex for the whole process, so parser threads only queue on that lock — measured on 2 cores, 100,000
/// numbers took longer on two threads than on one.
fn parse_all(raw: &[RawRecipient]) -> Vec<Result<PhoneNumber, shared::domain::PhoneError>> {
    raw.iter().map(|r| PhoneNumber::parse(&r.value)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(customer: &str, body: &str, to: &[&str]) -> BulkRequest {
        BulkRequest {
            customer: customer.into(),
            body: body.into(),
            recipients: to.iter().enumerate().map(|(i, v)| RawRecipient::line(i + 1, v)).collect(),
            ..Default::default()
        }
    }

    fn with_vars(body: &str, rows: &[(&str, &[(&str, &str)])]) -> BulkRequest {
        let recipients = rows
            .iter()
            .enumerate()
            .map(|(i, (to, vars))| {
                let mut r = RawRecipient::json(i, to);
                r.vars = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
                r
            })
            .collect();
        BulkRequest { customer: "acme".into(), body: body.into(), recipients, ..Default::default() }
    }

    #[test]
    fn duplicates_are_removed_keeping_the_first() {
        let b = validate(&req("acme", "hi", &["+14155552671", "+1 415 555 2671", "+14155552672"])).unwrap();
        assert_eq!(b.recipients.len(), 2);
        assert_eq!(b.duplicates, 1);
        assert_eq!(b.segments.total, 2);
    }

    #[test]
    fn every_problem_is_reported_with_its_location() {
        let e = validate(&req("", "", &["+14155552671", "nope", "+1415555267x"])).unwrap_err();
        let fields: Vec<_> = e.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["customer", "body", "line 2", "line 3"]);
        assert!(e.to_string().contains("nothing was changed"));
    }

    #[test]
    fn large_lists_are_parsed_in_order() {
        let nums: Vec<String> = (0..10_000).map(|i| format!("+1415555{:04}", i)).collect();
        let refs: Vec<&str> = nums.iter().map(String::as_str).collect();
        let b = validate(&req("acme", "hi", &refs)).unwrap();
        assert_eq!(b.recipients[9_999].as_str(), "+14155559999");
    }

    #[test]
    fn each_recipient_gets_its_values_and_its_own_segment_count() {
        let long = "x".repeat(150);
        let b = with_vars(
            "Hi {{first_name|there}}, unit {{unit}}.",
            &[
                ("+14155550001", &[("first_name", "Ana"), ("unit", "4B")]),
                ("+14155550002", &[("unit", "7")]),
                ("+14155550003", &[("first_name", &long), ("unit", "1")]),
                ("+14155550004", &[("first_name", "Zoë"), ("unit", "2"), ("tz", "America/Chicago")]),
            ],
        );
        let batch = validate(&b).unwrap();
        let p = batch.personal.as_ref().unwrap();
        assert_eq!(p.names, ["first_name", "unit", "tz"]);
        let text = |i: usize| batch.body.render_encoded(&p.names, batch.values(i)).unwrap();
        assert_eq!(text(0), "Hi Ana, unit 4B.");
        assert_eq!(text(1), "Hi there, unit 7.");
        // 150 x's and the rest: 166 GSM-7 characters, two segments; "Zoë" is GSM-7 (ë is not: UCS-2).
        assert_eq!(batch.segments.max, 2);
        assert_eq!(batch.segments.min, 1);
        assert_eq!(batch.segments.total, 1 + 1 + 2 + 1);
        assert_eq!(batch.segments.encoding, "mixed");
    }

    #[test]
    fn missing_values_unknown_placeholders_long_texts_and_bad_zones_are_named() {
        let long = "y".repeat(1_600);
        let rows: &[(&str, &[(&str, &str)])] = &[
            ("+14155550001", &[("unit", "4B")]),
            ("+14155550002", &[("unit", "")]),
            ("+14155550003", &[("unit", "1"), ("note", &long)]),
            ("+14155550004", &[("unit", "1"), ("tz", "Mars/Base")]),
        ];
        let e = validate(&with_vars("Unit {{unit}}: {{note|}}", rows)).unwrap_err();
        let fields: Vec<_> = e.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["recipients[1].vars.unit", "recipients[2]", "recipients[3].vars.tz"], "{e}");
        assert!(e.problems[1].message.contains("1600"), "{e}");
        // A placeholder nobody has a value for is a typo in the body, said once (not once per recipient).
        let e = validate(&with_vars("Unit {{unit}}, {{typo}}", rows)).unwrap_err();
        assert_eq!(e.problems[0].field, "body");
        assert!(e.problems[0].message.contains("{{typo}} has no value for any recipient"), "{e}");
        assert_eq!(e.problems.iter().filter(|p| p.message.contains("typo")).count(), 1, "{e}");
    }

    #[test]
    fn variables_are_single_line_bounded_and_few() {
        let many: Vec<(String, String)> = (0..=MAX_VARIABLES).map(|i| (format!("v{i}"), "x".into())).collect();
        let long = "z".repeat(MAX_VALUE_CHARS + 1);
        let rows: &[(&str, &[(&str, &str)])] = &[
            ("+14155550001", &[("unit", "4B\nNext tenant: +14155550002")]),
            ("+14155550002", &[("unit", &long)]),
            ("+14155550003", &[("unit", "1"), ("", "x")]),
        ];
        let mut req = with_vars("Unit {{unit}}", rows);
        let mut wide = RawRecipient::json(3, "+14155550004");
        wide.vars = many;
        wide.vars.push(("unit".into(), "2".into()));
        req.recipients.push(wide);
        let e = validate(&req).unwrap_err();
        let has = |field: &str, words: &str| e.problems.iter().any(|p| p.field == field && p.message.contains(words));
        assert!(has("recipients[0].vars.unit", "control character (U+000A)"), "{e}");
        assert!(has("recipients[1].vars.unit", "1601 characters; a value is at most 1600"), "{e}");
        assert!(has("recipients[2].vars.", "name is 1 to 64 characters, not 0"), "{e}");
        assert!(has("recipients[3]", "52 variables; at most 50"), "{e}");
    }

    #[test]
    fn csv_rows_name_their_line_and_column() {
        let raw = crate::recipients::parse("phone,unit\n+14155550001,4B\n+14155550002,\n").unwrap();
        let b = BulkRequest {
            customer: "acme".into(),
            body: "Unit {{unit}}".into(),
            recipients: raw,
            ..Default::default()
        };
        let e = validate(&b).unwrap_err();
        assert_eq!(e.problems[0].field, "line 3, column unit");
    }

    #[test]
    fn times_are_checked_against_now() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z").unwrap().with_timezone(&Utc);
        let at = |send_at: Option<&str>, expiry: Option<Expiry>| {
            let mut r = req("acme", "hi", &["+14155552671"]);
            r.send_at = send_at.map(str::to_owned);
            r.expiry = expiry;
            validate_at(&r, now)
        };
        let ok = at(Some("2026-12-04T09:00:00-05:00"), Some(Expiry::In("4d".into()))).unwrap();
        assert_eq!(ok.timing.send_at_ms, Some(1_796_392_800_000));
        assert_eq!(ok.timing.expires_at_ms, Some(1_796_472_000_000));
        // The expiry counts from now, and must come after send_at: 2 hours from now is before 4 December.
        let e = at(Some("2026-12-04T09:00:00-05:00"), Some(Expiry::In("2h".into()))).unwrap_err();
        assert_eq!(e.problems[0].field, "expires_in");
        for (send_at, field) in
            [("2026-11-30T12:00:00Z", "send_at"), ("2027-01-10T12:00:00Z", "send_at"), ("tomorrow", "send_at")]
        {
            assert_eq!(at(Some(send_at), None).unwrap_err().problems[0].field, field, "{send_at}");
        }
        assert_eq!(at(None, Some(Expiry::In("2 hours".into()))).unwrap_err().problems[0].field, "expires_in");
        assert_eq!(
            at(None, Some(Expiry::At("2026-12-01T11:00:00Z".into()))).unwrap_err().problems[0].field,
            "expires_at"
        );
        assert_eq!(parse_duration("1h30m").unwrap(), chrono::Duration::minutes(90));
    }
}
