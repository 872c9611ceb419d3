//! The Messenger producer: validates bulk texts and enqueues one job per recipient, and reports on them.
//!
//! # Layout
//! - [`ops`]: the operations — customers, bulk texts and estimates, batches, pools — written once, with one error
//!   type; every front end below calls them.
//! - [`cli`]: the `producer` command line, one file per command.
//! - [`server`]: `producer serve`: the HTTP API, the dashboard, Twilio's webhooks; [`server::Application`] starts it.
//! - [`validate`]: whole-request validation of a bulk text (all-or-nothing), de-duplication of recipients.
//! - [`recipients`]: reading recipient files (plain lines or CSV with a `phone` column).
//! - [`ssrf`]: the guard on URLs customers give (event endpoints): https and public addresses only.
//!
//! Enqueuing itself (exactly once, resumable) lives in [`shared::batches`], under [`ops::texts`].

pub mod cli;
pub mod ops;
pub mod recipients;
pub mod server;
pub mod ssrf;
pub mod validate;
