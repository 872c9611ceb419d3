//! Settings with a range, written once: every front end (CLI flags, API fields, dashboard forms, worker settings)
//! parses through these, so a bound cannot drift between them.
//!
//! Errors name the rule but not the field: the caller knows whether it was `--idle-days`, `idle_days` or
//! `MESSENGER_RELEASE_IDLE_DAYS`, and prefixes it.

use std::fmt;
use std::time::Duration;

/// A value outside its range, or not a value at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BoundError(pub String);

/// How long a number may go without sending before it counts as idle and may be released: 0 to 3,650 days (ten
/// years), fractions allowed (`0.5` = 12 hours; `0` = any number that is not busy).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct IdleDays(f64);

impl IdleDays {
    pub const MAX: f64 = 3_650.0;
    /// A month: numbers are bought for bursts, and a month without a send means the burst is over.
    pub const DEFAULT: IdleDays = IdleDays(30.0);

    pub fn new(days: f64) -> Result<Self, BoundError> {
        if days.is_finite() && (0.0..=Self::MAX).contains(&days) {
            Ok(Self(days))
        } else {
            Err(BoundError(format!("must be between 0 and {} days, not {days}", Self::MAX)))
        }
    }

    /// Parses a number of days (`30`, `0.5`); for clap's `value_parser`.
    pub fn parse(s: &str) -> Result<Self, BoundError> {
        let days: f64 = s.trim().parse().map_err(|_| BoundError(format!("{s:?} is not a number of days")))?;
        Self::new(days)
    }

    pub fn days(self) -> f64 {
        self.0
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs_f64(self.0 * 86_400.0)
    }
}

impl Default for IdleDays {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for IdleDays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The most numbers a customer may own: at least 1, at most 10,000 (far beyond what one customer's texts could
/// use; a typo such as `1000000` is caught instead of letting a runaway backlog buy that many).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaxNumbers(u32);

impl MaxNumbers {
    pub const MAX: u32 = 10_000;

    pub fn new(n: u32) -> Result<Self, BoundError> {
        if (1..=Self::MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(BoundError(format!("must be between 1 and {}, not {n}", Self::MAX)))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for MaxNumbers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A North American area code: 3 digits, the first 2 to 9.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AreaCode(String);

impl AreaCode {
    pub fn parse(s: &str) -> Result<Self, BoundError> {
        let s = s.trim();
        if s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with(['0', '1']) {
            Ok(Self(s.to_owned()))
        } else {
            Err(BoundError(format!("{s:?} is not an area code (3 digits, the first 2 to 9)")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AreaCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AreaCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl serde::Serialize for AreaCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_days_accept_fractions_and_refuse_what_is_out_of_range() {
        assert_eq!(IdleDays::parse("0.5").unwrap().duration(), Duration::from_secs(43_200));
        assert!(IdleDays::new(0.0).is_ok() && IdleDays::new(3_650.0).is_ok());
        for bad in ["-1", "3650.5", "NaN", "inf", "soon"] {
            assert!(IdleDays::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(IdleDays::new(4_000.0).unwrap_err().0, "must be between 0 and 3650 days, not 4000");
    }

    #[test]
    fn max_numbers_is_at_least_one_and_bounded() {
        assert!(MaxNumbers::new(0).is_err());
        assert!(MaxNumbers::new(1).is_ok() && MaxNumbers::new(10_000).is_ok());
        assert!(MaxNumbers::new(10_001).is_err());
    }

    #[test]
    fn area_codes_are_three_digits_not_starting_with_0_or_1() {
        assert_eq!(AreaCode::parse("415").unwrap().as_str(), "415");
        for bad in ["041", "141", "4155", "41a", ""] {
            assert!(AreaCode::parse(bad).is_err(), "{bad}");
        }
    }
}
