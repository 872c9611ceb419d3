//! The worker's operations endpoint, off unless `--listen ADDR` (`MESSENGER_WORKER_LISTEN`) is given:
//!
//! - `GET /metrics`: this process's counters in Prometheus text (sends, failures, retries, deferrals, ambiguous
//!   sends and how they resolved, purchases, apalis worker restarts) and gauges (jobs in flight, age of the last
//!   Redis reply). Fleet-wide figures (queue depth per customer, live workers) are the producer's `/metrics`.
//! - `GET /healthz`: a liveness probe. `200` while the process is working; `503` with the reason when it is alive
//!   but not working — no Redis reply for longer than one lease, or the fetcher gone — which is exactly the failure
//!   apalis-redis fleets hide (a pool that looks alive and does nothing). The worker already reconnects by itself;
//!   the probe is the second line, for an orchestrator that restarts what stays unhealthy. During shutdown it
//!   answers `503 stopping`.
//!
//! Off by default because many workers usually share a machine and could not share a port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shared::config::ConfigError;

use crate::handler::Stats;
use crate::leases;

/// What the probe looks at; updated by the fetcher, the heartbeat and shutdown.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` of the last Redis reply, plus one (0 = none yet).
    redis_reply: AtomicU64,
    fetcher_running: AtomicBool,
    stopping: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            redis_reply: AtomicU64::new(0),
            fetcher_running: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// Redis just answered one of this process's commands.
    pub fn redis_replied(&self) {
        self.redis_reply.store(self.started.elapsed().as_millis() as u64 + 1, Relaxed);
    }

    /// How long ago Redis last answered; `None` if it never has.
    pub fn since_redis_reply(&self) -> Option<Duration> {
        match self.redis_reply.load(Relaxed) {
            0 => None,
            at => Some(self.started.elapsed().saturating_sub(Duration::from_millis(at - 1))),
        }
    }

    /// Marks the fetcher as running until the returned guard drops (however the fetcher ends, panics included).
    pub fn fetcher_guard(self: &Arc<Self>) -> FetcherGuard {
        self.fetcher_running.store(true, Relaxed);
        FetcherGuard(self.clone())
    }

    pub fn stopping(&self) {
        self.stopping.store(true, Relaxed);
    }

    /// `None` when healthy, otherwise why not. `stale`: how long without a Redis reply is too long.
    pub fn problem(&self, stale: Duration) -> Option<String> {
        if self.stopping.load(Relaxed) {
            return Some("stopping".into());
        }
        let Some(age) = self.since_redis_reply() else {
            return Some("no reply from Redis yet".into());
        };
        if !self.fetcher_running.load(Relaxed) {
            return Some("the fetcher is not running".into());
        }
        (age > stale).then(|| format!("no reply from Redis for {} s", age.as_secs()))
    }
}

pub struct FetcherGuard(Arc<Health>);

impl Drop for FetcherGuard {
    fn drop(&mut self) {
        self.0.fetcher_running.store(false, Relaxed);
    }
}

struct Ops {
    registry: Registry,
    in_flight: Gauge,
    redis_reply_age: Gauge<f64, AtomicU64>,
    health: Arc<Health>,
    leases: Arc<leases::Registry>,
    stale: Duration,
    worker: String,
}

/// Binds `addr` now (a port in use is a configuration error, exit 2) and serves the endpoint in the background.
pub async fn serve(
    addr: SocketAddr,
    stats: &Stats,
    health: Arc<Health>,
    leases: Arc<leases::Registry>,
    stale: Duration,
    concurrency: usize,
    worker: String,
) -> Result<SocketAddr, ConfigError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ConfigError(format!("MESSENGER_WORKER_LISTEN {addr}: cannot listen: {e}")))?;
    let bound = listener.local_addr().map_err(|e| ConfigError(format!("MESSENGER_WORKER_LISTEN {addr}: {e}")))?;

    let mut registry = Registry::with_prefix("messenger_worker");
    let counters = [
        ("sent", "Messages Twilio accepted", &stats.sent),
        ("failed", "Jobs that ended failed (permanent error or attempts exhausted)", &stats.failed),
        ("opted_out", "Jobs that ended opted out (no Twilio call, or Twilio error 21610)", &stats.opted_out),
        ("retries", "Transient failures scheduled for another attempt", &stats.retried),
        ("deferrals", "Jobs deferred because every number was full at max numbers", &stats.deferred),
        ("ambiguous_sends", "Sends whose outcome was unknown (timeout, dropped connection)", &stats.ambiguous),
        ("ambiguous_found", "Ambiguous sends Twilio showed had gone out (not resent)", &stats.resolved_found),
        ("ambiguous_unsent", "Ambiguous sends Twilio showed had not arrived (sent again)", &stats.resolved_unsent),
        ("purchases", "Numbers this process bought", &stats.purchases),
        ("duplicate_sends", "Sends recorded for a job that was already sent (should stay 0)", &stats.duplicate_sends),
        ("apalis_restarts", "apalis workers replaced by the supervisor", &stats.apalis_restarts),
    ];
    for (name, help, counter) in counters {
        registry.register(name, help, counter.clone());
    }
    let in_flight = Gauge::default();
    let redis_reply_age = Gauge::<f64, AtomicU64>::default();
    let capacity = Gauge::<i64>::default();
    capacity.set(concurrency as i64);
    registry.register("in_flight", "Jobs this process holds (leased)", in_flight.clone());
    registry.register("concurrency", "Handler slots of this process", capacity);
    registry.register(
        "redis_reply_age_seconds",
        "Seconds since Redis last answered this process (-1: never)",
        redis_reply_age.clone(),
    );

    let ops = Arc::new(Ops { registry, in_flight, redis_reply_age, health, leases, stale, worker });
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(ops);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error.message = %e, "operations endpoint stopped");
        }
    });
    tracing::info!("operations endpoint listening on http://{bound} (/metrics, /healthz)");
    Ok(bound)
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    ops.in_flight.set(ops.leases.len() as i64);
    ops.redis_reply_age.set(ops.health.since_redis_reply().map_or(-1.0, |d| d.as_secs_f64()));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &ops.registry) {
        tracing::error!(error.message = %e, "could not encode metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn healthz(State(ops): State<Arc<Ops>>) -> Response {
    let problem = ops.health.problem(ops.stale);
    let body = serde_json::json!({
        "status": if problem.is_some() { "unhealthy" } else { "ok" },
        "reason": problem,
        "worker": ops.worker,
        "in_flight": ops.leases.len(),
        "redis_reply_age_ms": ops.health.since_redis_reply().map(|d| d.as_millis() as u64),
    });
    let code = if problem.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_needs_a_running_fetcher_and_a_recent_redis_reply() {
        let h = Arc::new(Health::default());
        let stale = Duration::from_millis(50);
        assert_eq!(h.problem(stale).as_deref(), Some("no reply from Redis yet"));
        h.redis_replied();
        assert_eq!(h.problem(stale).as_deref(), Some("the fetcher is not running"));
        let guard = h.fetcher_guard();
        assert_eq!(h.problem(stale), None);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(h.problem(stale).as_deref(), Some("no reply from Redis for 1 s"));
        h.redis_replied();
        assert_eq!(h.problem(stale), None);
        drop(guard);
        assert_eq!(h.problem(stale).as_deref(), Some("the fetcher is not running"));
        let _guard = h.fetcher_guard();
        h.stopping();
        assert_eq!(h.problem(stale).as_deref(), Some("stopping"));
    }
}
