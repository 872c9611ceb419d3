//! The producer's operations, written once: the CLI, the HTTP API and the dashboard are front ends that turn their
//! own syntax (flags, JSON, forms) into these calls and render what comes back. A rule — a bound, a default, an
//! update rule, a check with Twilio — lives here and nowhere else.
//!
//! Operations are plain async functions over explicit dependencies ([`Deps`]): no HTTP, no command line, no
//! printing. They take domain types where the front end already has them (a customer id from a path or an
//! argument) and parse the request bodies themselves, so every front end rejects the same input with the same
//! words. Their one error type, [`OpsError`], says what the caller should do; it is mapped once to HTTP
//! (`server::error`) and once to exit codes (`cli`).
//!
//! # Layout
//! - [`consent`]: opt-outs and opt-ins from other channels, suppression lists, reviews of suspected revocations,
//!   a tenant's whole consent record and the export for an audit.
//! - [`customers`]: create or update a customer (one update rule), list, get.
//! - [`desk`]: the support desk — the inbox of tenants' replies, a thread with its delivery statuses, a customer's
//!   batches, a batch's failed and undelivered recipients (and their CSV), resending to them.
//! - [`texts`]: bulk texts and single messages — validate, then enqueue.
//! - [`estimate`]: the dry run — what a bulk text would cost, and when its texts would go.
//! - [`batches`]: a batch's status and failures, cancelling it.
//! - [`events`]: answering back — a customer's events (pull API) and a tenant's opt-out record.
//! - [`secrets`]: how customers' events secrets are stored, and sealing them under the current key.
//! - [`sessions`]: signing every dashboard session out.
//! - [`pools`]: a customer's numbers, releasing idle ones, crediting an inbound message, the fleet's quota settings.

pub mod batches;
pub mod consent;
pub mod customers;
pub mod desk;
pub mod estimate;
pub mod events;
pub mod pools;
pub mod secrets;
pub mod sessions;
pub mod texts;

use std::sync::Arc;

use shared::config::Settings;
use shared::store::Conn;
use shared::twilio::TwilioClient;

use crate::validate::{Invalid, Problem};

/// What the operations need. Cheap to clone (connections are multiplexed handles).
#[derive(Clone)]
pub struct Deps {
    pub conn: Conn,
    /// A connection of its own for enqueues followed by `WAIT` (replica acknowledgements), which blocks the
    /// connection it runs on; `None` when acknowledgements are off (enqueues use `conn`).
    pub acked: Option<Conn>,
    pub settings: Arc<Settings>,
    /// Twilio with the main account's credentials, when they are configured: checks subaccounts and Messaging
    /// Services, releases numbers.
    pub twilio: Option<TwilioClient>,
}

impl Deps {
    /// Dependencies over `conn`; Twilio is reachable when the main account's credentials are configured.
    pub fn new(conn: Conn, settings: Settings) -> Self {
        let twilio = TwilioClient::new(&settings.twilio).ok();
        Self { conn, acked: None, settings: Arc::new(settings), twilio }
    }

    /// Uses `conn` for the enqueues that wait for replicas.
    pub fn with_acked(mut self, conn: Conn) -> Self {
        self.acked = Some(conn);
        self
    }

    /// A handle on the connection, for one operation.
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }
}

/// Why an operation did not happen, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The request is wrong, and every problem found is named; nothing changed. The same request fails again.
    #[error("{0}")]
    Invalid(Invalid),
    /// What the request names does not exist (a customer, a batch).
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts what is stored (an idempotency key already used for another request).
    #[error("{message}")]
    Conflict { field: Option<&'static str>, message: String },
    /// This deployment lacks a setting the operation needs (Twilio credentials); nothing changed.
    #[error("{0}")]
    NotConfigured(String),
    /// Another operation holds what this one needs (the customer's purchase lock); retry shortly.
    #[error("{0}")]
    Busy(String),
    /// Redis could not confirm the request is durable; retry it (an idempotency key makes that safe).
    #[error("{0}")]
    Unavailable(String),
    /// Redis failed; retry later.
    #[error("redis: {0}")]
    Storage(#[from] redis::RedisError),
}

impl OpsError {
    /// One problem with one field of the request.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        OpsError::Invalid(Invalid::one(field, message))
    }

    /// True when the same request may succeed later (nothing was wrong with it).
    pub fn is_transient(&self) -> bool {
        matches!(self, OpsError::Busy(_) | OpsError::Unavailable(_) | OpsError::Storage(_))
    }
}

/// Collects the problems of a request as its parts are parsed, so that one answer names them all.
#[derive(Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// The value, or `None` after noting the problem under `field`.
    pub fn check<T, E: std::fmt::Display>(&mut self, field: &str, r: Result<T, E>) -> Option<T> {
        r.map_err(|e| self.0.push(Problem { field: field.to_owned(), message: e.to_string() })).ok()
    }

    pub fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(Problem { field: field.to_owned(), message: message.into() });
    }

    /// `Ok` if nothing was wrong.
    pub fn finish(self) -> Result<(), OpsError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let total = self.0.len();
        Err(OpsError::Invalid(Invalid { problems: self.0, total }))
    }
}

/// One CSV cell: quoted when it holds a comma, a quote or a line break; a cell a spreadsheet would read as a formula
/// (`=`, `-`, `@`, or `+` not followed by digits only, as a phone number is: tenants' words and merge values are
/// untrusted) is prefixed with `'`.
pub fn csv_cell(v: &str) -> String {
    let phone = v.strip_prefix('+').is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    let v =
        if v.starts_with(['=', '-', '@']) || (v.starts_with('+') && !phone) { format!("'{v}") } else { v.to_owned() };
    if v.contains([',', '"', '\n', '\r']) { format!("\"{}\"", v.replace('"', "\"\"")) } else { v }
}
