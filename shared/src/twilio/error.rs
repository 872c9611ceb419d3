//! What went wrong talking to Twilio, and what to do about it.
//!
//! Every failure is put in one of three classes ([`Disposition`]): *permanent* (never retry: the request itself is
//! wrong), *transient* (Twilio did not act on the request: retry with backoff) and *ambiguous* (the request may
//! have been acted on: find out before doing it again). The class depends on the operation: a 404 on a list is
//! permanent, an unreadable 201 on a send is ambiguous.

use std::time::Duration;

/// A failed Twilio call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TwilioError {
    /// Twilio answered with an error status (its JSON body parsed into code and message where present).
    #[error("Twilio answered HTTP {status} with error {code}: {message}")]
    Api { status: u16, code: u32, message: String, more_info: Option<String>, retry_after: Option<Duration> },
    /// The connection could not be made: the request never left this process.
    #[error("could not connect to Twilio: {0}")]
    Connect(String),
    /// No response within the timeout: Twilio may or may not have acted on the request.
    #[error("no response from Twilio within the timeout (the request may have been processed)")]
    Timeout,
    /// The connection broke after the request was (or may have been) written.
    #[error("the connection to Twilio broke mid-request (the request may have been processed): {0}")]
    Interrupted(String),
    /// A response arrived but its body could not be read as Twilio JSON.
    #[error("Twilio answered HTTP {status} with a body that is not Twilio JSON: {detail}")]
    Malformed { status: u16, detail: String },
}

/// What the caller should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Do not retry; the request is wrong as it stands.
    Permanent,
    /// Twilio did not act on the request; retry after backoff (at least `retry_after` when Twilio said so).
    Transient { retry_after: Option<Duration> },
    /// Twilio may have acted; resolve (list what exists) before retrying.
    Ambiguous,
}

/// Twilio error codes Messenger acts on.
pub mod codes {
    pub const AUTHENTICATION_FAILED: u32 = 20003;
    pub const NOT_FOUND: u32 = 20404;
    pub const TOO_MANY_REQUESTS: u32 = 20429;
    pub const INVALID_TO: u32 = 21211;
    pub const INVALID_FROM: u32 = 21212;
    pub const FROM_NOT_OWNED: u32 = 21606;
    pub const REGION_NOT_ENABLED: u32 = 21408;
    pub const UNSUBSCRIBED: u32 = 21610;
    pub const QUEUE_FULL: u32 = 21611;
    pub const TO_UNREACHABLE: u32 = 21612;
    pub const TO_NOT_MOBILE: u32 = 21614;
    pub const BODY_TOO_LONG: u32 = 21617;
    pub const TO_LANDLINE: u32 = 21635;
    pub const NUMBER_INVALID: u32 = 21421;
    pub const NUMBER_NOT_AVAILABLE: u32 = 21422;
    pub const AREA_CODE_INVALID: u32 = 21451;
    pub const NO_NUMBERS_IN_AREA: u32 = 21452;
    /// The number is already in this Messaging Service (harmless on a retried attach).
    pub const ALREADY_IN_SERVICE: u32 = 21710;
    /// The number is in another Messaging Service.
    pub const IN_ANOTHER_SERVICE: u32 = 21712;
    /// The Messaging Service's sender pool is full (400 numbers by default).
    pub const SERVICE_POOL_FULL: u32 = 21714;
    /// "Phone number already in service": some Twilio products report a repeated add with this code.
    pub const ALREADY_IN_SERVICE_ALT: u32 = 80104;
    /// A2P 10DLC: the message came from a number not registered through a Messaging Service (status callback).
    pub const UNREGISTERED_SENDER: u32 = 30034;
}

/// What a Twilio error code means, in a few words (for batch status and the dashboard); `None` for codes Messenger
/// has no description of. From Twilio's error dictionary.
pub fn describe(code: u32) -> Option<&'static str> {
    Some(match code {
        20003 => "authentication failed (account sid or auth token wrong)",
        20404 => "resource not found",
        20429 => "too many concurrent requests to Twilio's API",
        21211 => "invalid 'To' phone number",
        21212 => "invalid 'From' number",
        21408 => "sending to this region is not enabled on the account",
        21606 => "the 'From' number is not a message-capable number of this account",
        21610 => "the recipient replied STOP (unsubscribed)",
        21611 => "the 'From' number's message queue is full",
        21612 => "the 'To' number is not reachable by SMS from this sender",
        21614 => "the 'To' number is not a valid mobile number",
        21617 => "the body exceeds 1,600 characters",
        21635 => "the 'To' number is a landline",
        21710 => "the number is already in this Messaging Service",
        21712 => "the number is in another Messaging Service",
        21714 => "the Messaging Service's sender pool is full (400 numbers)",
        30001 => "queue overflow",
        30003 => "unreachable destination handset",
        30004 => "message blocked (the recipient blocked the sender, or a carrier did)",
        30005 => "unknown destination handset",
        30006 => "landline or unreachable carrier",
        30007 => "filtered by the carrier as spam",
        30008 => "unknown delivery error",
        30034 => "US A2P 10DLC: message from an unregistered number (not sent through a registered Messaging Service)",
        _ => return None,
    })
}

/// How a send ended, from the point of view of the job.
#[derive(Debug, Clone, PartialEq)]
pub enum SendFailure {
    /// The recipient can never be texted this way (invalid, landline, unreachable region...).
    Recipient { code: u32, message: String },
    /// The recipient replied STOP (21610): record the opt-out, never retry.
    OptedOut,
    /// Retry later; the message was not accepted and its quota slot can be given back.
    Transient { reason: String, retry_after: Option<Duration> },
    /// The message may have been accepted: resolve by listing messages before any resend.
    Ambiguous { reason: String },
}

impl TwilioError {
    pub fn code(&self) -> Option<u32> {
        match self {
            TwilioError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            TwilioError::Api { status, .. } | TwilioError::Malformed { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Classification for idempotent reads (lists, searches) and for anything that is not a create.
    pub fn disposition(&self) -> Disposition {
        match self {
            TwilioError::Api { status, retry_after, .. } => {
                if *status == 429 || *status >= 500 {
                    Disposition::Transient { retry_after: *retry_after }
                } else {
                    Disposition::Permanent
                }
            }
            TwilioError::Connect(_) | TwilioError::Timeout | TwilioError::Interrupted(_) => {
                Disposition::Transient { retry_after: None }
            }
            TwilioError::Malformed { status, .. } if *status >= 500 => Disposition::Transient { retry_after: None },
            TwilioError::Malformed { .. } => Disposition::Permanent,
        }
    }

    /// Classification for creates (send a message, buy a number): anything after which Twilio may have acted is
    /// ambiguous.
    pub fn create_disposition(&self) -> Disposition {
        match self {
            TwilioError::Timeout | TwilioError::Interrupted(_) => Disposition::Ambiguous,
            TwilioError::Malformed { status, .. } if (200..300).contains(status) => Disposition::Ambiguous,
            other => other.disposition(),
        }
    }

    /// What a failed message create means for the job.
    pub fn send_failure(&self) -> SendFailure {
        use codes::*;
        if let TwilioError::Api { code, message, .. } = self {
            match *code {
                UNSUBSCRIBED => return SendFailure::OptedOut,
                INVALID_TO | TO_UNREACHABLE | TO_NOT_MOBILE | TO_LANDLINE | REGION_NOT_ENABLED | BODY_TOO_LONG => {
                    return SendFailure::Recipient { code: *code, message: message.clone() };
                }
                // The sender is at fault, not the recipient: a queue that is full now drains, a number missing
                // from the account is an operator problem worth retrying after (the reconciler adopts numbers).
                QUEUE_FULL | INVALID_FROM | FROM_NOT_OWNED | AUTHENTICATION_FAILED => {
                    return SendFailure::Transient { reason: format!("twilio {code}"), retry_after: None };
                }
                _ => {}
            }
        }
        match self.create_disposition() {
            Disposition::Permanent => SendFailure::Recipient {
                code: self.code().unwrap_or(self.status().unwrap_or(0) as u32),
                message: self.to_string(),
            },
            Disposition::Transient { retry_after } => {
                SendFailure::Transient { reason: self.short_reason(), retry_after }
            }
            Disposition::Ambiguous => SendFailure::Ambiguous { reason: self.short_reason() },
        }
    }

    /// A compact reason for counters and batch status (`twilio 21211`, `http 503`, `timeout`).
    pub fn short_reason(&self) -> String {
        match self {
            TwilioError::Api { code, status, .. } if *code as u16 == *status => {
                format!("http {status}")
            }
            TwilioError::Api { code, .. } => format!("twilio {code}"),
            TwilioError::Connect(_) => "connect error".into(),
            TwilioError::Timeout => "timeout".into(),
            TwilioError::Interrupted(_) => "connection dropped".into(),
            TwilioError::Malformed { status, .. } => format!("http {status} malformed"),
        }
    }
}

/// Parses `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    if let Ok(secs) = v.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs.min(3600.0)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO).min(Duration::from_secs(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: u32) -> TwilioError {
        TwilioError::Api { status, code, message: "m".into(), more_info: None, retry_after: None }
    }

    #[test]
    fn recipient_errors_are_permanent_and_opt_outs_are_their_own_outcome() {
        assert!(matches!(api(400, 21211).send_failure(), SendFailure::Recipient { code: 21211, .. }));
        assert!(matches!(api(400, 21614).send_failure(), SendFailure::Recipient { code: 21614, .. }));
        assert_eq!(api(400, 21610).send_failure(), SendFailure::OptedOut);
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        assert!(matches!(api(429, 20429).send_failure(), SendFailure::Transient { .. }));
        assert!(matches!(api(503, 503).send_failure(), SendFailure::Transient { .. }));
        assert!(matches!(TwilioError::Connect("refused".into()).send_failure(), SendFailure::Transient { .. }));
    }

    #[test]
    fn a_timeout_on_a_create_is_ambiguous_but_on_a_read_is_transient() {
        assert!(matches!(TwilioError::Timeout.send_failure(), SendFailure::Ambiguous { .. }));
        assert_eq!(TwilioError::Timeout.disposition(), Disposition::Transient { retry_after: None });
        let unreadable_201 = TwilioError::Malformed { status: 201, detail: "eof".into() };
        assert_eq!(unreadable_201.create_disposition(), Disposition::Ambiguous);
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
