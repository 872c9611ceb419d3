//! Identifiers: customers, batches, idempotency keys, Twilio account sids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} {reason}")]
pub struct IdError {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

fn check_token(what: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    let err = |reason| IdError { what, value: s.chars().take(80).collect(), reason };
    if s.is_empty() {
        return Err(err("is empty"));
    }
    if s.len() > max {
        return Err(err(if max == 32 { "is longer than 32 characters" } else { "is longer than 128 characters" }));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(err("may only contain letters, digits, '_' and '-'"));
    }
    Ok(())
}

/// A customer (one property-management company): 1–32 of `[A-Za-z0-9_-]`.
///
/// The character set keeps the id safe inside a Redis hash tag (`{c:ID}`), a Twilio `FriendlyName` (≤ 64 chars
/// together with an intent id) and a URL path segment without escaping.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

impl CustomerId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_token("customer id", s, 32)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A batch: one bulk text (or one single message) for one customer, written `<customer>.<ulid>`.
///
/// Carrying the customer in the id lets any process find the batch's keys (which live under the customer's hash
/// tag) from the id alone, without a global index that would need its own cleanup.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BatchId {
    customer: CustomerId,
    /// Lower-case ULID: sorts by creation time.
    local: String,
}

impl BatchId {
    pub fn new(customer: &CustomerId) -> Self {
        Self { customer: customer.clone(), local: ulid::Ulid::new().to_string().to_ascii_lowercase() }
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        let err = |reason| IdError { what: "batch id", value: s.chars().take(80).collect(), reason };
        let (customer, local) = s.rsplit_once('.').ok_or_else(|| err("is not of the form <customer>.<id>"))?;
        let customer = CustomerId::parse(customer).map_err(|_| err("does not start with a valid customer id"))?;
        let ok = local.len() == 26 && ulid::Ulid::from_str(local).is_ok();
        if !ok {
            return Err(err("does not end with a 26-character batch id"));
        }
        Ok(Self { customer, local: local.to_ascii_lowercase() })
    }

    pub fn customer(&self) -> &CustomerId {
        &self.customer
    }

    /// The part after the customer: unique within the customer, used in Redis keys and job members.
    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn from_parts(customer: &CustomerId, local: &str) -> Result<Self, IdError> {
        Self::parse(&format!("{}.{}", customer.as_str(), local))
    }
}

/// A caller-chosen key that makes a bulk request safe to resubmit: the same key returns the same batch.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let err = |reason| IdError { what: "idempotency key", value: s.chars().take(80).collect(), reason };
        if s.is_empty() {
            return Err(err("is empty"));
        }
        if s.len() > 128 {
            return Err(err("is longer than 128 characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err("may only contain printable ASCII without spaces"));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Twilio account (or subaccount) sid: `AC` + 32 hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountSid(String);

impl AccountSid {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = s.len() == 34 && s.starts_with("AC") && s[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(IdError {
                what: "account sid",
                value: s.chars().take(40).collect(),
                reason: "is not AC followed by 32 hex digits",
            });
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Twilio Messaging Service sid: `MG` + 32 hex digits. A customer with one sends through it (A2P 10DLC).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceSid(String);

impl ServiceSid {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = s.len() == 34 && s.starts_with("MG") && s[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(IdError {
                what: "messaging service sid",
                value: s.chars().take(40).collect(),
                reason: "is not MG followed by 32 hex digits",
            });
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ServiceSid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_impls {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_ref())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), <Self as AsRef<str>>::as_ref(self))
            }
        }
        impl TryFrom<String> for $t {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }
        impl FromStr for $t {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl From<$t> for String {
            fn from(value: $t) -> String {
                <$t as AsRef<str>>::as_ref(&value).to_owned()
            }
        }
    )*};
}

impl AsRef<str> for CustomerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
impl AsRef<str> for AccountSid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

string_newtype_impls!(CustomerId, IdempotencyKey, AccountSid, ServiceSid);

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.customer, self.local)
    }
}
impl fmt::Debug for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BatchId({self})")
    }
}
impl TryFrom<String> for BatchId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}
impl FromStr for BatchId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
impl From<BatchId> for String {
    fn from(value: BatchId) -> String {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_ids_are_restricted_to_a_safe_alphabet() {
        assert!(CustomerId::parse("acme-properties_2").is_ok());
        assert!(CustomerId::parse("").is_err());
        assert!(CustomerId::parse("a{b}").is_err());
        assert!(CustomerId::parse("a.b").is_err());
        assert!(CustomerId::parse(&"x".repeat(33)).is_err());
    }

    #[test]
    fn batch_ids_round_trip_and_carry_their_customer() {
        let c = CustomerId::parse("acme").unwrap();
        let b = BatchId::new(&c);
        let parsed = BatchId::parse(&b.to_string()).unwrap();
        assert_eq!(parsed, b);
        assert_eq!(parsed.customer(), &c);
        assert!(BatchId::parse("acme").is_err());
        assert!(BatchId::parse("acme.123").is_err());
    }

    #[test]
    fn account_sids_need_the_ac_prefix_and_32_hex_digits() {
        assert!(AccountSid::parse(&format!("AC{}", "a".repeat(32))).is_ok());
        assert!(AccountSid::parse(&format!("AC{}", "g".repeat(32))).is_err());
        assert!(AccountSid::parse("AC123").is_err());
    }
}
