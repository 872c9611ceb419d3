//! The Messenger producer: validates bulk texts and enqueues one job per recipient.
//!
//! # Layout
//! - [`validate`]: whole-request validation (all-or-nothing), de-duplication of recipients.
//! - [`recipients`]: reading recipient files (plain lines or CSV with a `phone` column).
//! - [`enqueue`]: validate-then-enqueue, shared by the CLI and the HTTP API.
//! - [`estimate`]: cost before sending (dry runs): recipients, encoding, segments, numbers to buy, price.
//! - [`server`]: `producer serve`, the HTTP API and Twilio's webhooks.
//! - [`cli`]: the `producer` command line (customers, bulk, status, pool, cancel, inbound, settings, serve).
//!
//! Enqueuing itself (exactly once, resumable) lives in [`shared::batches`] so tests and the HTTP API use the same
//! code path.

pub mod cli;
pub mod enqueue;
pub mod estimate;
pub mod recipients;
pub mod server;
pub mod validate;
