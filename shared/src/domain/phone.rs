//! E.164 phone numbers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A phone number in E.164 form (`+14155552671`), checked against libphonenumber's metadata.
///
/// Parsing accepts the usual separators (`+1 (415) 555-2671`) but requires the leading `+` and country code: a
/// property app that stores national numbers must say which country they belong to, we will not guess.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

/// Why a string is not a phone number we can text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("is empty")]
    Empty,
    #[error("must start with + and a country code (E.164, e.g. +14155552671)")]
    MissingPlus,
    #[error("contains {0:?}, which is not a digit or a separator")]
    BadCharacter(char),
    #[error("is not a valid phone number ({0})")]
    Invalid(String),
}

impl PhoneNumber {
    /// Parses and normalises a phone number to E.164.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(PhoneError::Empty);
        }
        if !trimmed.starts_with('+') {
            return Err(PhoneError::MissingPlus);
        }
        // Cheap lexical checks first: they give clearer errors than libphonenumber's and skip its regexes for
        // obvious garbage.
        let mut digits = String::with_capacity(16);
        digits.push('+');
        for c in trimmed[1..].chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' => {}
                other => return Err(PhoneError::BadCharacter(other)),
            }
        }
        if digits.len() < 8 || digits.len() > 16 {
            return Err(PhoneError::Invalid(format!("{} digits", digits.len() - 1)));
        }
        let parsed = phonenumber::parse(None, &digits).map_err(|e| PhoneError::Invalid(e.to_string()))?;
        if !phonenumber::is_valid(&parsed) {
            return Err(PhoneError::Invalid("no such number range in its country".into()));
        }
        Ok(Self(parsed.format().mode(phonenumber::Mode::E164).to_string()))
    }

    /// Wraps a number that is already known to be E.164, such as one Twilio returned for a number we own.
    ///
    /// Only the lexical form is checked: Twilio's numbers (including its test-credential magic numbers) are
    /// authoritative, and libphonenumber's ranges lag behind real allocations.
    pub fn from_trusted(input: &str) -> Result<Self, PhoneError> {
        let ok = input.len() >= 8
            && input.len() <= 16
            && input.starts_with('+')
            && input[1..].bytes().all(|b| b.is_ascii_digit());
        if ok {
            Ok(Self(input.to_owned()))
        } else {
            Err(PhoneError::Invalid(format!("{:?} is not E.164", Masked(input))))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A form that is safe to log: `+1415•••2671`.
    pub fn masked(&self) -> Masked<'_> {
        Masked(&self.0)
    }
}

/// Display adapter that hides the middle digits of a phone number (or any identifier-like string).
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let n = s.chars().count();
        if n <= 6 {
            return f.write_str("•••");
        }
        let (keep_head, keep_tail) = if n >= 11 { (5, 4) } else { (3, 2) };
        let head: String = s.chars().take(keep_head).collect();
        let tail: String = s.chars().skip(n - keep_tail).collect();
        write!(f, "{head}•••{tail}")
    }
}

impl fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Debug never prints the full number, so a stray `?job` in a log line cannot leak it.
impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

/// Display prints the full E.164 number: use it for Twilio and Redis, never for logs (use [`PhoneNumber::masked`]).
impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = PhoneError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PhoneNumber> for String {
    fn from(value: PhoneNumber) -> Self {
        value.0
    }
}

impl AsRef<str> for PhoneNumber {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_input_is_normalised_to_e164() {
        assert_eq!(PhoneNumber::parse("+1 (415) 555-2671").unwrap().as_str(), "+14155552671");
        assert_eq!(PhoneNumber::parse(" +44 20 7183 8750 ").unwrap().as_str(), "+442071838750");
    }

    #[test]
    fn national_numbers_are_rejected_with_a_reason() {
        assert_eq!(PhoneNumber::parse("4155552671"), Err(PhoneError::MissingPlus));
        assert_eq!(PhoneNumber::parse(""), Err(PhoneError::Empty));
        assert_eq!(PhoneNumber::parse("+1415abc2671"), Err(PhoneError::BadCharacter('a')));
    }

    #[test]
    fn numbers_outside_any_allocated_range_are_invalid() {
        assert!(matches!(PhoneNumber::parse("+999123456"), Err(PhoneError::Invalid(_))));
        // 555-01xx is reserved for fiction in North America.
        assert!(matches!(PhoneNumber::parse("+15555550123"), Err(PhoneError::Invalid(_))));
    }

    #[test]
    fn twilio_magic_numbers_parse() {
        assert!(PhoneNumber::parse("+15005550006").is_ok());
        assert!(PhoneNumber::parse("+15005550001").is_ok());
    }

    #[test]
    fn masking_hides_the_middle_digits() {
        let p = PhoneNumber::parse("+14155552671").unwrap();
        assert_eq!(p.masked().to_string(), "+1415•••2671");
        assert_eq!(format!("{p:?}"), "PhoneNumber(+1415•••2671)");
        assert!(!format!("{p:?}").contains("555"));
    }
}
