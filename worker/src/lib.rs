//! The Messenger worker: sends queued texts through Twilio.
//!
//! # Layout
//! - [`settings`]: flags and environment, validated into [`settings::WorkerSettings`].
//! - [`fetcher`]: pulls jobs from Redis, fairly across customers, only as many as there are free handler slots.
//! - [`backend`]: the apalis [`apalis_core::backend::Backend`] those jobs flow through; hands unstarted jobs back on
//!   shutdown.
//! - [`handler`]: one job's life — reserve, send, record; purchase, defer, retry, resolve ambiguity.
//! - [`leases`]: the leases of held jobs and the heartbeat that renews them.
//! - [`reconciler`]: resolves stale purchase intents and adopts untracked numbers.
//! - [`ops`]: the optional `/metrics` and `/healthz` endpoint of one process.
//! - [`run`]: wiring, supervision, graceful shutdown.

pub mod backend;
pub mod fetcher;
pub mod handler;
pub mod leases;
pub mod ops;
pub mod reconciler;
pub mod run;
pub mod settings;

pub use run::run;
pub use settings::{WorkerArgs, WorkerSettings};
