//! Test support for Messenger: private Redis servers, the Twilio simulator, and spawning the real binaries.
//!
//! # Layout
//! - [`sim`]: the Twilio simulator (the crate in `tests/sim`, also the `twilio-sim` binary), re-exported.
//! - [`redis_server`]: [`redis_server::TestRedis`], a private `redis-server` on a free loopback port (plain or TLS).
//! - [`redis_cluster`]: [`redis_cluster::TestCluster`], a private Redis Cluster (primaries and replicas) to fail over,
//!   on loopback or in a network test bed.
//! - [`netbed`]: [`netbed::Bed`], hosts in network namespaces on one bridge, with cuts, loss and latency between them.
//! - [`partition`]: the partition scenarios and the checker that judges them from the simulator's log.
//! - [`dashboard`]: signing in to the dashboard over HTTP and measuring what its pages cost Redis.
//! - [`procs`]: locating and running the `worker`, `producer` and `twilio-sim` binaries as child processes.
//! - [`load`]: the load-test engine behind the `loadtest` binary; [`threshold`]: its pass/fail criteria.
//! - [`doc_links`]: the check that every link between the project's Markdown documents resolves.
//! - [`fixtures`]: recipient lists, polling helpers and invariant checks used by the integration tests,
//!   the demo and the load-test tool.

/// The key the tests' processes seal customers' events secrets with (`MESSENGER_SECRETS_KEY`): 32 bytes of base64,
/// for tests only.
pub const SECRETS_KEY: &str = "dGVzdHMgb25seTogbm90IGEgcmVhbCBrZXkgMzJiISE=";

/// An HTTP client for tests and tools (installs the TLS crypto provider reqwest needs first).
pub fn http() -> reqwest::Client {
    http_builder().build().expect("HTTP client")
}

/// A builder for a differently configured client, with the TLS crypto provider installed.
pub fn http_builder() -> reqwest::ClientBuilder {
    shared::twilio::client::ensure_tls_provider();
    reqwest::Client::builder()
}

pub mod dashboard;
pub mod doc_links;
pub mod fixtures;
pub mod load;
pub mod netbed;
pub mod partition;
pub mod procs;
pub mod redis_cluster;
pub mod redis_server;
pub mod threshold;
pub use twilio_sim as sim;
