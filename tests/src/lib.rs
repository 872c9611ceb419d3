//! Test support for Messenger: private Redis servers, the Twilio simulator, and spawning the real binaries.
//!
//! # Layout
//! - [`sim`]: the Twilio simulator (also the `twilio-sim` binary).
//! - [`redis_server`]: [`redis_server::TestRedis`], a private `redis-server` on a free loopback port.
//! - [`procs`]: locating and running the `worker`, `producer` and `twilio-sim` binaries as child processes.
//! - [`load`]: the load-test engine behind the `loadtest` binary.
//! - [`fixtures`]: recipient lists, polling helpers and invariant checks used by the integration tests,
//!   the demo and the load-test tool.

/// An HTTP client for tests and tools (installs the TLS crypto provider reqwest needs first).
pub fn http() -> reqwest::Client {
    shared::twilio::client::ensure_tls_provider();
    reqwest::Client::new()
}

pub mod fixtures;
pub mod load;
pub mod procs;
pub mod redis_server;
pub mod sim;
