//! The worker's operations endpoint, off unless `--listen ADDR` (`MESSENGER_WORKER_LISTEN`) is given:
//!
//! - `GET /metrics`: this process's counters in Prometheus text (sends, failures, retries, deferrals, ambiguous
//!   sends and how they resolved, purchases, apalis worker restarts) and gauges (jobs in flight, age of the last
//!   Redis reply). Fleet-wide figures (queue depth per customer, live workers) are the producer's `/metrics`.
//! - `GET /healthz`: a liveness probe. `200` while the process is working; `503` with the reason when it is alive
//!   but not working — no Redis reply for longer than one lease, or the fetcher gone — which is exactly the failure
//!   apalis-redis fleets hide (a pool that looks alive and does nothing). The worker already reconnects by itself;
//!   the probe is the second line, for an orchestrator that restarts what stays unhealthy. During shutdown it
//!   answers `503 stopping`. With replica acknowledgements on, `"replication"` gives every shard's state (see
//!   `shared::replication`); a shard *paused* (its replicas do not confirm) or running *without a replica* makes
//!   the answer `200` with `"status": "degraded"` and a `"reason"` naming the shard and what is done about it —
//!   restarting the worker would not help, an alert should (`messenger_worker_redis_shard_state`).
//!
//! Off by default because many workers usually share a machine and could not share a port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shared::config::ConfigError;
use shared::scripts::Acks;

use crate::leases;
use crate::stats::{Health, Stats};

struct Ops {
    registry: Registry,
    in_flight: Gauge,
    redis_reply_age: Gauge<f64, AtomicU64>,
    wait_timeouts: Counter,
    shards: Family<ShardLabels, Gauge>,
    health: Arc<Health>,
    leases: Arc<leases::Registry>,
    endpoint: Endpoint,
}

/// What the endpoint reports besides the counters.
pub struct Endpoint {
    /// How long without a Redis reply is unhealthy (one lease).
    pub stale: Duration,
    pub concurrency: usize,
    /// This worker's name.
    pub worker: String,
    /// Replica acknowledgements, whose state per shard `/healthz` and `/metrics` report.
    pub acks: Option<Acks>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: String,
    state: String,
}

/// Binds `addr` now (a port in use is a configuration error, exit 2) and serves the endpoint in the background.
pub async fn serve(
    addr: SocketAddr,
    stats: &Stats,
    health: Arc<Health>,
    leases: Arc<leases::Registry>,
    endpoint: Endpoint,
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
        ("quiet_hours_waits", "Jobs parked until quiet hours end in their recipients' time zones", &stats.quiet),
        ("expired", "Jobs that ended expired: their batch's expiry passed before they could go", &stats.expired),
        (
            "carrier_cap_waits",
            "Jobs parked until a carrier cap (T-Mobile's day, AT&T's minute, per second) renews",
            &stats.capped,
        ),
        (
            "spend_limit_waits",
            "Jobs parked because their text or number would pass the customer's monthly spend limit",
            &stats.spend_limited,
        ),
        ("lookups", "Twilio Lookup requests for recipients' line types (retries included)", &stats.lookups),
        ("lookup_failures", "Twilio Lookup requests that failed", &stats.lookup_failures),
        ("ambiguous_sends", "Sends whose outcome was unknown (timeout, dropped connection)", &stats.ambiguous),
        ("ambiguous_found", "Ambiguous sends Twilio showed had gone out (not resent)", &stats.resolved_found),
        ("ambiguous_unsent", "Ambiguous sends Twilio showed had not arrived (sent again)", &stats.resolved_unsent),
        ("purchases", "Numbers this process bought", &stats.purchases),
        ("purchase_decisions", "Purchase decisions, each sized to the customer's backlog", &stats.purchase_decisions),
        ("numbers_attached", "Numbers attached to a customer's Messaging Service", &stats.attached),
        ("numbers_released", "Idle numbers released to Twilio", &stats.releases),
        (
            "replica_unconfirmed",
            "Sends and purchases postponed because Redis replicas did not confirm a write in time",
            &stats.unconfirmed,
        ),
        ("duplicate_sends", "Sends recorded for a job that was already sent (should stay 0)", &stats.duplicate_sends),
        ("apalis_restarts", "apalis workers replaced by the supervisor", &stats.apalis_restarts),
    ];
    for (name, help, counter) in counters {
        registry.register(name, help, counter.clone());
    }
    let in_flight = Gauge::default();
    let redis_reply_age = Gauge::<f64, AtomicU64>::default();
    let capacity = Gauge::<i64>::default();
    capacity.set(endpoint.concurrency as i64);
    registry.register("in_flight", "Jobs this process holds (leased)", in_flight.clone());
    registry.register("concurrency", "Handler slots of this process", capacity);
    let wait_timeouts = Counter::default();
    registry.register(
        "replica_wait_timeouts",
        "WAITs the Redis replicas did not confirm in time (MESSENGER_REDIS_REPLICA_ACKS)",
        wait_timeouts.clone(),
    );
    registry.register(
        "redis_reply_age_seconds",
        "Seconds since Redis last answered this process (-1: never)",
        redis_reply_age.clone(),
    );

    let shards = Family::<ShardLabels, Gauge>::default();
    registry.register(
        "redis_shard_state",
        "1 for each Redis shard's replication state as this process sees it: confirming, paused (replicas exist but \
         did not confirm: its customers' sends and purchases wait) or no_replica (writes go on unconfirmed)",
        shards.clone(),
    );
    let ops = Arc::new(Ops { registry, in_flight, redis_reply_age, wait_timeouts, shards, health, leases, endpoint });
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
    let seen = ops.wait_timeouts.get();
    ops.wait_timeouts.inc_by(ops.health.wait_timeouts.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(seen));
    if let Some(acks) = &ops.endpoint.acks {
        ops.shards.clear();
        for s in acks.report().shards {
            let shard = s.primary.unwrap_or_else(|| "redis".into());
            ops.shards.get_or_create(&ShardLabels { shard, state: s.state.to_owned() }).set(1);
        }
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &ops.registry) {
        tracing::error!(error.message = %e, "could not encode metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn healthz(State(ops): State<Arc<Ops>>) -> Response {
    let problem = ops.health.problem(ops.endpoint.stale);
    let replication = ops.endpoint.acks.as_ref().map(Acks::report);
    // Shards paused or running without a replica: the process works (restarting it would change nothing), so the
    // answer stays 200 and says what is degraded.
    let degraded = replication.as_ref().map(|r| r.problems()).unwrap_or_default();
    let status = match (&problem, degraded.is_empty()) {
        (Some(_), _) => "unhealthy",
        (None, false) => "degraded",
        (None, true) => "ok",
    };
    let reason = problem.clone().or_else(|| (!degraded.is_empty()).then(|| degraded.join("; ")));
    let body = serde_json::json!({
        "status": status,
        "reason": reason,
        "worker": ops.endpoint.worker,
        "in_flight": ops.leases.len(),
        "redis_reply_age_ms": ops.health.since_redis_reply().map(|d| d.as_millis() as u64),
        "redis": ops.health.redis_health(),
        "replication": replication,
    });
    let code = if problem.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, axum::Json(body)).into_response()
}
