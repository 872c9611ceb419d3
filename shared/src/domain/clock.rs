//! The tenant's clock: quiet hours (`21:00-08:00`) and IANA time zones (`America/New_York`), parsed once.

use std::fmt;
use std::str::FromStr;

use super::BoundError;

/// A daily window, in local time, in which no text may reach a recipient: `21:00-08:00` (it may wrap midnight).
/// Minute precision.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuietHours {
    /// Minutes after local midnight when the quiet window starts (inclusive).
    pub start_min: u16,
    /// Minutes after local midnight when it ends (exclusive): the first minute a text may go.
    pub end_min: u16,
}

impl QuietHours {
    /// The TCPA's window: texts to consumers only between 8 a.m. and 9 p.m. in the recipient's local time.
    pub const DEFAULT: QuietHours = QuietHours { start_min: 21 * 60, end_min: 8 * 60 };

    /// Parses `HH:MM-HH:MM` (24-hour clock).
    pub fn parse(s: &str) -> Result<Self, BoundError> {
        let bad =
            || BoundError(format!("{s:?} is not a quiet window such as 21:00-08:00 (HH:MM-HH:MM, 24-hour clock)"));
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let digits = |s: &str, n: std::ops::RangeInclusive<usize>| {
                n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
            };
            if !(digits(h, 1..=2) && digits(m, 2..=2)) {
                return None;
            }
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start_min, end_min) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start_min == end_min {
            return Err(BoundError(format!("{s:?} starts and ends at the same minute: say `off` for no quiet hours")));
        }
        Ok(Self { start_min, end_min })
    }

    /// Whether a local time (minutes after midnight) is inside the window.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start_min < self.end_min {
            (self.start_min..self.end_min).contains(&minute)
        } else {
            minute >= self.start_min || minute < self.end_min
        }
    }
}

impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start_min), hm(self.end_min))
    }
}

impl fmt::Debug for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuietHours({self})")
    }
}

/// Quiet hours as configured: a window, or explicitly none (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuietSetting {
    Off,
    Window(QuietHours),
}

impl QuietSetting {
    /// `off`, or a window such as `21:00-08:00`.
    pub fn parse(s: &str) -> Result<Self, BoundError> {
        if s.trim().eq_ignore_ascii_case("off") {
            Ok(QuietSetting::Off)
        } else {
            QuietHours::parse(s).map(QuietSetting::Window)
        }
    }

    pub fn window(self) -> Option<QuietHours> {
        match self {
            QuietSetting::Off => None,
            QuietSetting::Window(w) => Some(w),
        }
    }
}

impl fmt::Display for QuietSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuietSetting::Off => f.write_str("off"),
            QuietSetting::Window(w) => w.fmt(f),
        }
    }
}

impl FromStr for QuietSetting {
    type Err = BoundError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An IANA time zone (`America/New_York`), from the tz database chrono-tz compiles in.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeZone(pub chrono_tz::Tz);

impl TimeZone {
    pub fn parse(s: &str) -> Result<Self, BoundError> {
        s.trim()
            .parse::<chrono_tz::Tz>()
            .map(TimeZone)
            .map_err(|_| BoundError(format!("{s:?} is not an IANA time zone (such as America/New_York)")))
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimeZone({})", self.name())
    }
}

impl AsRef<str> for TimeZone {
    fn as_ref(&self) -> &str {
        self.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_windows_parse_and_may_wrap_midnight() {
        let w = QuietHours::parse("21:00-08:00").unwrap();
        assert_eq!(w, QuietHours::DEFAULT);
        assert!(w.contains(21 * 60) && w.contains(23 * 60 + 59) && w.contains(0) && w.contains(7 * 60 + 59));
        assert!(!w.contains(8 * 60) && !w.contains(20 * 60 + 59));
        let day = QuietHours::parse("12:30-13:45").unwrap();
        assert!(day.contains(12 * 60 + 30) && !day.contains(13 * 60 + 45));
        assert_eq!(day.to_string(), "12:30-13:45");
        assert_eq!(QuietSetting::parse("OFF").unwrap(), QuietSetting::Off);
    }

    #[test]
    fn malformed_windows_and_zones_are_refused_by_what_they_are() {
        assert_eq!(QuietHours::parse("9:00-17:00").unwrap().to_string(), "09:00-17:00");
        for bad in ["21-08", "9:0-17:00", "24:00-08:00", "21:60-08:00", "08:00-08:00", "", "always"] {
            assert!(QuietSetting::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(TimeZone::parse("America/New_York").unwrap().name(), "America/New_York");
        assert!(TimeZone::parse("Mars/Olympus_Mons").unwrap_err().0.contains("not an IANA time zone"));
    }
}
