//! The Messenger worker: sends queued texts through Twilio.
//!
//! # Layout
//! - [`settings`]: flags and environment, validated into [`settings::WorkerSettings`].
//! - [`fetcher`]: pulls jobs from Redis, fairly across customers, only as many as there are free handler slots.
//! - [`backend`]: the apalis [`apalis_core::backend::Backend`] those jobs flow through (and the wake-ups that tell
//!   the fetcher to look at a customer); hands unstarted jobs back on shutdown.
//! - [`handler`]: the apalis handler, a thin shell over the send path.
//! - [`send`]: the send path, owner of the job — reserve, send, record; retry, defer, resolve ambiguity.
//! - [`purchase`]: the purchase path, owner of the customer's numbers — decide, buy, attach, commit, resolve.
//! - [`context`]: what the paths share (ledger, Twilio, settings, caches).
//! - [`leases`]: the leases of held jobs and the heartbeat that renews them.
//! - [`reconciler`]: resolves stale purchase and release intents, adopts untracked numbers, releases idle ones.
//! - [`stats`]: counters and health, read by [`ops`], the optional `/metrics` and `/healthz` endpoint.
//! - [`run`]: wiring, supervision, graceful shutdown.

pub mod backend;
pub mod context;
pub mod fetcher;
pub mod group;
pub mod handler;
pub mod leases;
pub mod ops;
pub mod purchase;
pub mod reconciler;
pub mod run;
pub mod send;
pub mod settings;
pub mod stats;

pub use run::run;
pub use settings::{WorkerArgs, WorkerSettings};
