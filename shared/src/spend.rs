//! Spend: what a customer's texts, numbers and lookups cost in a month, and the monthly limit no race can pass
//! (docs/DESIGN.md, "Spend limit").
//!
//! Money is counted in whole micro-dollars ([`Usd`]) so that Lua and Rust add the same integers. The reserve
//! scripts count spend in the customer's cfg hash (`spend_m` the month, `spend_u` its spend) in the same step as
//! the reservation, lookup or purchase decision that spends it, and check it there against `spend_limit`; the
//! worker hands them the [`Terms`]: the customer's month (in its time zone) and the prices.

use std::fmt;

use chrono::{DateTime, Datelike, TimeZone as _, Utc};
use chrono_tz::Tz;

/// An amount in US dollars, kept as whole micro-dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(pub i64);

/// The largest limit or price accepted: a billion dollars (keeps every sum far inside an i64 and Lua's doubles).
pub const MAX_USD: i64 = 1_000_000_000;

impl Usd {
    pub const ZERO: Usd = Usd(0);

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn from_micros(m: i64) -> Self {
        Usd(m)
    }

    /// Parses an amount such as `6`, `6.00`, `$0.0083`: not negative, at most six decimals, at most a billion.
    pub fn parse(s: &str) -> Result<Usd, String> {
        let t = s.trim();
        let t = t.strip_prefix('$').unwrap_or(t);
        if t.starts_with('-') {
            return Err(format!("{s:?} is negative: an amount of money is 0 or more"));
        }
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !(frac.is_empty() || digits(frac)) {
            return Err(format!("{s:?} is not an amount of dollars (write it as 6, 6.00 or 0.0083)"));
        }
        if frac.len() > 6 {
            return Err(format!("{s:?} has more than six decimals"));
        }
        if whole.len() > 10 {
            return Err(format!("{s:?} is more than {MAX_USD} dollars"));
        }
        let w: i64 = whole.parse().map_err(|_| format!("{s:?} is not an amount of dollars"))?;
        let f: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().unwrap_or(0) };
        if w > MAX_USD || (w == MAX_USD && f > 0) {
            return Err(format!("{s:?} is more than {MAX_USD} dollars"));
        }
        Ok(Usd(w * 1_000_000 + f))
    }

    /// From a price in dollars given as a float (the fleet's price settings); negative or not finite: `None`.
    pub fn from_dollars(d: f64) -> Option<Usd> {
        (d.is_finite() && d >= 0.0 && d <= MAX_USD as f64).then(|| Usd((d * 1_000_000.0).round() as i64))
    }

    pub fn dollars(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }
}

impl fmt::Display for Usd {
    /// `$6.00`; cents only when the amount is whole cents, else as many decimals as it needs (`$0.0083`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (w, frac) = (self.0 / 1_000_000, self.0 % 1_000_000);
        if frac % 10_000 == 0 {
            write!(f, "${w}.{:02}", frac / 10_000)
        } else {
            let s = format!("{frac:06}");
            write!(f, "${w}.{}", s.trim_end_matches('0'))
        }
    }
}

/// The carriers' pass-through surcharges per outbound segment (`MESSENGER_CARRIER_FEES`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CarrierFees {
    pub tmobile: Usd,
    pub att: Usd,
    pub verizon: Usd,
}

impl CarrierFees {
    /// `tmobile=0.0045,att=0.0035,verizon=0.0045` (any subset; `''` = none).
    pub fn parse(s: &str) -> Result<CarrierFees, String> {
        let mut fees = CarrierFees::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((carrier, amount)) = part.split_once('=') else {
                return Err(format!("{part:?} is not carrier=amount (e.g. tmobile=0.0045)"));
            };
            let amount = Usd::parse(amount).map_err(|e| format!("{carrier}: {e}"))?;
            match carrier.trim().to_ascii_lowercase().as_str() {
                "tmobile" | "t-mobile" => fees.tmobile = amount,
                "att" | "at&t" => fees.att = amount,
                "verizon" => fees.verizon = amount,
                other => return Err(format!("unknown carrier {other:?}: tmobile, att or verizon")),
            }
        }
        Ok(fees)
    }

    /// The surcharge on a line of `carrier` (carriers.rs line codes: `t`, `a`, `v`; others pay none).
    pub fn of(&self, line_code: &str) -> Usd {
        match line_code {
            "t" => self.tmobile,
            "a" => self.att,
            "v" => self.verizon,
            _ => Usd::ZERO,
        }
    }
}

impl fmt::Display for CarrierFees {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |u: Usd| u.to_string().trim_start_matches('$').to_owned();
        write!(f, "tmobile={},att={},verizon={}", d(self.tmobile), d(self.att), d(self.verizon))
    }
}

/// What things cost, in micro-dollars (from the fleet's settings: `MESSENGER_SEGMENT_COST` and friends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prices {
    pub segment: Usd,
    pub number_monthly: Usd,
    pub lookup: Usd,
    pub fees: CarrierFees,
}

impl Prices {
    /// A text of `segments` segments to a line of `line_code` ('' = not known: no surcharge).
    pub fn text(&self, segments: u32, line_code: &str) -> Usd {
        Usd(segments as i64 * (self.segment.0 + self.fees.of(line_code).0))
    }
}

/// A month of a customer's calendar: its name (`2026-12`) and when the next one starts (ms since the epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Month {
    pub name: String,
    pub next_start_ms: i64,
}

/// The month `now` is in, in `tz` (the customer's zone; UTC when it has none).
pub fn month_of(now: DateTime<Utc>, tz: Tz) -> Month {
    let local = now.with_timezone(&tz);
    let (y, m) = (local.year(), local.month());
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    // Midnight on the 1st exists in every zone chrono-tz knows except where a transition falls on it; then the
    // earliest instant of that day.
    let next = tz
        .with_ymd_and_hms(ny, nm, 1, 0, 0, 0)
        .earliest()
        .or_else(|| tz.with_ymd_and_hms(ny, nm, 1, 1, 0, 0).earliest())
        .map_or(now.timestamp_millis() + 31 * 86_400_000, |t| t.timestamp_millis());
    Month { name: format!("{y:04}-{m:02}"), next_start_ms: next }
}

/// What the reserve scripts need to count spend: the month and the prices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    pub month: Month,
    pub prices: Prices,
}

impl Terms {
    /// `<month>,<next month's start ms>,<segment>,<number>,<lookup>,<T-Mobile fee>,<AT&T fee>,<Verizon fee>`, in
    /// micro-dollars (common.lua, `spend_terms`).
    pub fn encode(&self) -> String {
        let p = &self.prices;
        format!(
            "{},{},{},{},{},{},{},{}",
            self.month.name,
            self.month.next_start_ms,
            p.segment.0,
            p.number_monthly.0,
            p.lookup.0,
            p.fees.tmobile.0,
            p.fees.att.0,
            p.fees.verizon.0
        )
    }
}

/// A customer's spend this month as its cfg fields say (`spend_m`, `spend_u`, `spend_limit`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MonthSpend {
    /// The month (`2026-12`).
    pub month: String,
    pub spent: Usd,
    pub limit: Option<Usd>,
}

impl MonthSpend {
    /// From the stored fields; spend recorded for another month counts as none this month.
    pub fn from_fields(month: &Month, spend_m: Option<&str>, spend_u: Option<&str>, limit: Option<&str>) -> Self {
        let spent = if spend_m == Some(month.name.as_str()) {
            spend_u.and_then(|v| v.parse::<f64>().ok()).map_or(0, |v| v as i64)
        } else {
            0
        };
        let limit = limit.and_then(|v| v.parse::<i64>().ok()).map(Usd);
        MonthSpend { month: month.name.clone(), spent: Usd(spent), limit }
    }

    /// What is left under the limit (`None`: no limit).
    pub fn left(&self) -> Option<Usd> {
        self.limit.map(|l| Usd((l.0 - self.spent.0).max(0)))
    }

    /// One line for people: `$4.12 of $6.00 this month (2026-12)`.
    pub fn describe(&self) -> String {
        match self.limit {
            Some(l) => format!("{} of {} this month ({})", self.spent, l, self.month),
            None => format!("{} this month ({}), no limit", self.spent, self.month),
        }
    }
}

impl serde::Serialize for Usd {
    /// As dollars (a JSON number: 6.0, 0.0083).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.dollars())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_and_print() {
        assert_eq!(Usd::parse("6").unwrap(), Usd(6_000_000));
        assert_eq!(Usd::parse("$6.00").unwrap(), Usd(6_000_000));
        assert_eq!(Usd::parse("0.0083").unwrap(), Usd(8_300));
        assert_eq!(Usd::parse("0.0083").unwrap().to_string(), "$0.0083");
        assert_eq!(Usd(6_000_000).to_string(), "$6.00");
        assert_eq!(Usd(4_125_000).to_string(), "$4.125");
        for bad in ["-1", "", "abc", "1.2.3", "0.0000001", "1000000001", "1e3", " - 5"] {
            assert!(Usd::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(Usd::parse("-6").unwrap_err().contains("negative"));
    }

    #[test]
    fn carrier_fees_name_their_carrier() {
        let f = CarrierFees::parse("tmobile=0.0045,att=0.0035,verizon=0.0045").unwrap();
        assert_eq!((f.tmobile, f.att, f.verizon), (Usd(4_500), Usd(3_500), Usd(4_500)));
        assert_eq!(f.of("a"), Usd(3_500));
        assert_eq!(f.of("o"), Usd::ZERO);
        assert!(CarrierFees::parse("sprint=0.01").unwrap_err().contains("unknown carrier"));
        assert!(CarrierFees::parse("att").is_err());
        assert_eq!(CarrierFees::parse("").unwrap(), CarrierFees::default());
    }

    #[test]
    fn a_month_ends_at_midnight_in_the_customers_zone() {
        let now = Utc.with_ymd_and_hms(2027, 1, 1, 3, 0, 0).unwrap();
        // 03:00 UTC on Jan 1 is still Dec 31 in Los Angeles.
        let la = month_of(now, chrono_tz::America::Los_Angeles);
        assert_eq!(la.name, "2026-12");
        assert_eq!(la.next_start_ms, Utc.with_ymd_and_hms(2027, 1, 1, 8, 0, 0).unwrap().timestamp_millis());
        let utc = month_of(now, chrono_tz::UTC);
        assert_eq!(utc.name, "2027-01");
    }

    #[test]
    fn spend_of_another_month_is_none() {
        let m = Month { name: "2026-12".into(), next_start_ms: 0 };
        let s = MonthSpend::from_fields(&m, Some("2026-11"), Some("5000000"), Some("6000000"));
        assert_eq!((s.spent, s.left()), (Usd::ZERO, Some(Usd(6_000_000))));
        let s = MonthSpend::from_fields(&m, Some("2026-12"), Some("5000000"), None);
        assert_eq!((s.spent, s.left()), (Usd(5_000_000), None));
    }
}
