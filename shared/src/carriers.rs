//! The carriers' limits, not only the number's: what Twilio Lookup says a recipient's line is, and the A2P 10DLC caps
//! US carriers enforce per brand and campaign — T-Mobile's texts per day (the day ends at midnight Pacific), AT&T's
//! messages per minute, and the campaign's messages per second.
//!
//! A recipient's line is looked up once (Lookup v2, `line_type_intelligence`) and cached per customer for 30 days in
//! the class this module defines: the reserve script reads the cache in the same step that reserves a slot, so a
//! cached recipient costs no extra round trip. Landlines and invalid numbers end `failed` (`unreachable: …`) without
//! a send or a slot.
//!
//! **A lookup that cannot be had** (Twilio keeps failing after retries) leaves the recipient's class `unknown`: it
//! is texted (the number passed validation), and counts against *every* carrier cap at once — T-Mobile's day and
//! AT&T's minute — so no cap can be exceeded by a recipient whose carrier nobody knows. It is not cached, so a
//! later batch looks it up again.

use std::time::Duration;

use crate::domain::{BoundError, CustomerId};

/// How long a lookup's answer is kept.
pub const LOOKUP_TTL: Duration = Duration::from_secs(30 * 86_400);

/// What a recipient's line is, for sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Line {
    TMobile,
    Att,
    Verizon,
    /// A mobile (or VoIP, toll-free) line of another carrier: texted, no carrier cap applies.
    Other,
    /// Cannot receive a text: ends `failed` with the reason, no send, no slot.
    Unreachable(Unreachable),
    /// The lookup could not be had: texted, counted against every carrier cap.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unreachable {
    Landline,
    Invalid,
    /// A pager, voicemail or premium line.
    NotMessaging,
}

impl Line {
    /// The one-letter code the reserve script and the cache use.
    pub fn code(self) -> &'static str {
        match self {
            Line::TMobile => "t",
            Line::Att => "a",
            Line::Verizon => "v",
            Line::Other => "o",
            Line::Unreachable(Unreachable::Landline) => "l",
            Line::Unreachable(Unreachable::Invalid) => "i",
            Line::Unreachable(Unreachable::NotMessaging) => "n",
            Line::Unknown => "u",
        }
    }

    pub fn from_code(c: &str) -> Option<Line> {
        Some(match c {
            "t" => Line::TMobile,
            "a" => Line::Att,
            "v" => Line::Verizon,
            "o" => Line::Other,
            "l" => Line::Unreachable(Unreachable::Landline),
            "i" => Line::Unreachable(Unreachable::Invalid),
            "n" => Line::Unreachable(Unreachable::NotMessaging),
            "u" => Line::Unknown,
            _ => return None,
        })
    }

    /// Classifies Lookup v2's answer: `valid`, `line_type_intelligence.type` and `.carrier_name`.
    pub fn of_lookup(valid: bool, kind: Option<&str>, carrier: Option<&str>) -> Line {
        if !valid {
            return Line::Unreachable(Unreachable::Invalid);
        }
        match kind.unwrap_or("unknown") {
            "landline" => return Line::Unreachable(Unreachable::Landline),
            "pager" | "voicemail" | "premium" | "sharedCost" | "uan" => {
                return Line::Unreachable(Unreachable::NotMessaging);
            }
            _ => {}
        }
        // Carrier names as Lookup reports them; Sprint and Metro are T-Mobile's network, Cricket AT&T's.
        let name = carrier.unwrap_or("").to_ascii_lowercase();
        if name.contains("t-mobile") || name.contains("sprint") || name.contains("metro") {
            Line::TMobile
        } else if name.contains("at&t") || name.contains("cricket") || name.starts_with("att ") {
            Line::Att
        } else if name.contains("verizon") {
            Line::Verizon
        } else {
            Line::Other
        }
    }

    /// Why a recipient cannot be texted (a failure reason), if it cannot.
    pub fn unreachable_reason(self) -> Option<&'static str> {
        match self {
            Line::Unreachable(Unreachable::Landline) => Some("unreachable: landline"),
            Line::Unreachable(Unreachable::Invalid) => Some("unreachable: invalid number"),
            Line::Unreachable(Unreachable::NotMessaging) => Some("unreachable: not a messaging line"),
            _ => None,
        }
    }
}

/// A customer's carrier caps (its brand's and campaign's), each optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Caps {
    /// T-Mobile segments per day (2,000 by default for a brand, 1,000 for a sole proprietor, up to 200,000).
    #[serde(rename = "tmobile_daily_cap")]
    pub tmobile_daily: Option<u32>,
    /// AT&T messages per minute (75, 240, 2,400 or 4,500 by campaign class).
    pub att_per_minute: Option<u32>,
    /// Messages per second over every carrier (the campaign's throughput).
    pub per_second: Option<u32>,
}

impl Caps {
    pub const TMOBILE_DAILY_MAX: u32 = 200_000;
    pub const ATT_PER_MINUTE_MAX: u32 = 4_500;
    /// Twilio's account-wide limit.
    pub const PER_SECOND_MAX: u32 = 2_000;

    /// Whether any carrier cap needs the recipients' carriers (the per-second cap does not).
    pub fn need_lookups(&self) -> bool {
        self.tmobile_daily.is_some() || self.att_per_minute.is_some()
    }

    pub fn any(&self) -> bool {
        self.need_lookups() || self.per_second.is_some()
    }

    /// A cap value within `1..=max`.
    pub fn bound(value: u32, max: u32) -> Result<u32, BoundError> {
        if (1..=max).contains(&value) {
            Ok(value)
        } else {
            Err(BoundError(format!("must be between 1 and {max}, not {value}")))
        }
    }
}

/// Three consecutive starts of the carriers' day around `now` (ms): T-Mobile's day ends at midnight Pacific, so
/// these are Pacific midnights (daylight saving included); `day` (tests) makes days that long instead, counted from
/// the Unix epoch. The reserve script picks the day Redis's clock is in.
pub fn day_starts(now: chrono::DateTime<chrono::Utc>, day: Option<Duration>) -> [i64; 3] {
    if let Some(len) = day {
        let len = len.as_millis().max(1) as i64;
        let start = now.timestamp_millis().div_euclid(len) * len;
        return [start, start + len, start + 2 * len];
    }
    let pacific = chrono_tz::America::Los_Angeles;
    let date = now.with_timezone(&pacific).date_naive();
    let midnight = |d: chrono::NaiveDate| {
        use chrono::TimeZone;
        pacific
            .from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"))
            .earliest()
            .map_or(0, |t| t.timestamp_millis())
    };
    [midnight(date), midnight(date + chrono::Days::new(1)), midnight(date + chrono::Days::new(2))]
}

/// [`day_starts`] as the reserve script reads them.
pub fn encode_days(starts: [i64; 3]) -> String {
    format!("{},{},{}", starts[0], starts[1], starts[2])
}

/// What a carrier's refusal after Twilio accepted a text says about the customer's caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spent {
    /// 30023, 30027: the brand's T-Mobile day is used up (on any platform): T-Mobile texts wait for its end.
    TMobileDay,
    /// 30022 for an AT&T recipient: the campaign's AT&T minute is used up.
    AttMinute,
    /// 30022 for anyone else: the campaign's throughput is exceeded; everything pauses briefly.
    Throughput,
}

impl Spent {
    /// The cap an undelivered text's error code reports spent, given the recipient's line if known.
    pub fn of(code: u32, line: Option<Line>) -> Option<Spent> {
        match code {
            30023 | 30027 => Some(Spent::TMobileDay),
            30022 if line == Some(Line::Att) => Some(Spent::AttMinute),
            30022 => Some(Spent::Throughput),
            _ => None,
        }
    }
}

/// Records that a cap is spent: T-Mobile's until the carrier day ends, AT&T's for a minute, the campaign's
/// throughput for 10 s. Returns until when (Redis ms).
pub async fn mark_spent(
    conn: &mut crate::store::Conn,
    customer: &crate::domain::CustomerId,
    spent: Spent,
    day: Option<Duration>,
) -> redis::RedisResult<i64> {
    let cfg = crate::keys::CustomerKeys::new(customer).cfg();
    let mut call = crate::scripts::CAP_SPENT.key(cfg);
    match spent {
        Spent::TMobileDay => call.arg("spent_tmo").arg(day_starts(chrono::Utc::now(), day)[1]).arg(0),
        Spent::AttMinute => call.arg("spent_att").arg("").arg(60_000),
        Spent::Throughput => call.arg("spent_all").arg("").arg(10_000),
    };
    call.run(conn).await
}

/// A recipient's line as the customer's lookup cache has it (what the reserve script cached), if it is there.
pub async fn cached_line(
    conn: &mut crate::store::Conn,
    customer: &crate::domain::CustomerId,
    number: &str,
    now_ms: i64,
) -> redis::RedisResult<Option<Line>> {
    Ok(cached_lines(conn, customer, &[number], now_ms).await?.pop().flatten())
}

/// The cached lines of `numbers` (in order), in one pipeline of two reads each (the current and previous epoch).
pub async fn cached_lines(
    conn: &mut crate::store::Conn,
    customer: &crate::domain::CustomerId,
    numbers: &[&str],
    now_ms: i64,
) -> redis::RedisResult<Vec<Option<Line>>> {
    let prefix = crate::keys::CustomerKeys::new(customer).lookup_prefix();
    let epoch = now_ms.div_euclid(LOOKUP_TTL.as_millis() as i64);
    let mut pipe = redis::pipe();
    for n in numbers {
        let split = n.len().saturating_sub(3);
        let (field, bucket) = n.split_at(split);
        pipe.hget(format!("{prefix}{epoch}:{bucket}"), field).hget(format!("{prefix}{}:{bucket}", epoch - 1), field);
    }
    if numbers.is_empty() {
        return Ok(Vec::new());
    }
    let got: Vec<Option<String>> = pipe.query_async(conn).await?;
    Ok(got.chunks(2).map(|p| p[0].clone().or(p[1].clone()).and_then(|c| Line::from_code(&c))).collect())
}

/// A customer's carrier caps and today's use of them, for `producer pool`, the API and the dashboard.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CapUse {
    /// Recipients' lines are looked up.
    pub lookup: bool,
    #[serde(flatten)]
    pub caps: Caps,
    /// T-Mobile segments sent (reserved) this carrier day.
    pub tmobile_today: u64,
    /// AT&T texts in the last 60 s.
    pub att_last_minute: u64,
    /// Texts in the current second of Redis's clock.
    pub last_second: u64,
    /// Caps Twilio reported spent, and until when (Redis ms): `tmobile`, `att`, `all`.
    pub spent_until: std::collections::BTreeMap<String, i64>,
    /// Looked-up recipients by line (`tmobile`, `att`, `verizon`, `other`, `landline`, `invalid`, …).
    pub lines: std::collections::BTreeMap<String, u64>,
}

/// Reads a customer's caps and their use now: one pipeline of two commands (AT&T's log is at most a cap long; the
/// per-second and T-Mobile counters are fields of the customer's cfg, as reserve.lua keeps them).
pub async fn cap_use(
    conn: &mut crate::store::Conn,
    customer: &CustomerId,
    caps: Caps,
    lookup: bool,
    now_ms: i64,
    day: Option<Duration>,
) -> redis::RedisResult<CapUse> {
    let k = crate::keys::CustomerKeys::new(customer);
    let now = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    let start = day_starts(now, day)[0];
    let fields = [
        "spent_tmo",
        "spent_att",
        "spent_all",
        "mix:t",
        "mix:a",
        "mix:v",
        "mix:o",
        "mix:l",
        "mix:i",
        "mix:n",
        "mps_s",
        "mps_n",
        "tmo_day",
        "tmo_used",
        "tmo_nday",
        "tmo_next",
    ];
    let (att, mut f): (Vec<String>, Vec<Option<i64>>) = redis::pipe()
        .lrange(format!("{}att", k.caps_prefix()), 0, -1)
        .cmd("HMGET")
        .arg(k.cfg())
        .arg(&fields)
        .query_async(conn)
        .await?;
    let counters = f.split_off(10);
    // A counter is a pair of fields (what it counts for: a second, a day's start; and its count).
    let counter = |at: usize, of: i64| (counters[at] == Some(of)).then(|| counters[at + 1].unwrap_or(0));
    let tmo = counter(2, start).or_else(|| counter(4, start)).unwrap_or(0);
    let recent = |log: &[String], span: i64| crate::keys::window_entries_after(log, now_ms - span) as u64;
    let names = ["tmobile", "att", "all", "tmobile", "att", "verizon", "other", "landline", "invalid", "not messaging"];
    let mut out = CapUse {
        lookup,
        caps,
        tmobile_today: tmo.max(0) as u64,
        att_last_minute: recent(&att, 60_000),
        last_second: counter(0, now_ms.div_euclid(1000)).unwrap_or(0).max(0) as u64,
        ..CapUse::default()
    };
    for (i, v) in f.into_iter().enumerate() {
        match (i, v) {
            (0..3, Some(until)) if until > now_ms => {
                out.spent_until.insert(names[i].to_owned(), until);
            }
            (3.., Some(n)) if n > 0 => {
                out.lines.insert(names[i].to_owned(), n as u64);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Writes looked-up lines into a customer's cache as the reserve script would (tools and tests: a cache that is
/// already warm), in one pipeline.
pub async fn cache_lines(
    conn: &mut crate::store::Conn,
    customer: &crate::domain::CustomerId,
    lines: &[(&str, Line)],
    now_ms: i64,
) -> redis::RedisResult<()> {
    let k = crate::keys::CustomerKeys::new(customer);
    let prefix = k.lookup_prefix();
    let ttl = LOOKUP_TTL.as_millis() as i64;
    let epoch = now_ms.div_euclid(ttl);
    let mut pipe = redis::pipe();
    for (n, line) in lines {
        let (field, bucket) = n.split_at(n.len().saturating_sub(3));
        let key = format!("{prefix}{epoch}:{bucket}");
        pipe.hset(&key, field, line.code()).ignore().pexpire(&key, 2 * ttl + 1_000).ignore();
        pipe.hincr(k.cfg(), format!("mix:{}", line.code()), 1).ignore().hincr(k.cfg(), "mix", 1).ignore();
    }
    pipe.query_async(conn).await
}

/// The caps' names, as batches count jobs held by them.
pub const TMOBILE_DAY: &str = "T-Mobile daily cap";
pub const ATT_MINUTE: &str = "AT&T per-minute cap";
pub const PER_SECOND: &str = "per-second cap";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_answers_become_lines() {
        assert_eq!(Line::of_lookup(true, Some("mobile"), Some("T-Mobile USA, Inc.")), Line::TMobile);
        assert_eq!(Line::of_lookup(true, Some("mobile"), Some("AT&T Wireless")), Line::Att);
        assert_eq!(Line::of_lookup(true, Some("mobile"), Some("Verizon Wireless")), Line::Verizon);
        assert_eq!(Line::of_lookup(true, Some("nonFixedVoip"), Some("Twilio - SMS/MMS-SVR")), Line::Other);
        assert_eq!(
            Line::of_lookup(true, Some("landline"), Some("Pacific Bell")).unreachable_reason(),
            Some("unreachable: landline")
        );
        assert_eq!(Line::of_lookup(false, None, None).unreachable_reason(), Some("unreachable: invalid number"));
        for l in [
            Line::TMobile,
            Line::Att,
            Line::Verizon,
            Line::Other,
            Line::Unknown,
            Line::Unreachable(Unreachable::Landline),
        ] {
            assert_eq!(Line::from_code(l.code()), Some(l));
        }
    }

    #[test]
    fn the_carriers_day_ends_at_midnight_pacific() {
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc);
        // 2026-12-02 07:30 UTC is 23:30 on 1 December in Los Angeles (PST, UTC-8).
        let d = day_starts(t("2026-12-02T07:30:00Z"), None);
        assert_eq!(d[0], t("2026-12-01T08:00:00Z").timestamp_millis());
        assert_eq!(d[1], t("2026-12-02T08:00:00Z").timestamp_millis());
        // The day the clocks go forward (2026-03-08) is 23 hours long: midnight PST to midnight PDT.
        let d = day_starts(t("2026-03-08T12:00:00Z"), None);
        assert_eq!(d[1] - d[0], 23 * 3_600_000);
        let d = day_starts(t("2026-12-02T07:30:30Z"), Some(Duration::from_secs(60)));
        assert_eq!((d[1] - d[0], d[0] % 60_000), (60_000, 0));
    }

    #[test]
    fn caps_are_bounded() {
        assert!(Caps::bound(0, Caps::TMOBILE_DAILY_MAX).is_err());
        assert!(Caps::bound(200_001, Caps::TMOBILE_DAILY_MAX).is_err());
        assert_eq!(Caps::bound(240, Caps::ATT_PER_MINUTE_MAX), Ok(240));
    }
}
