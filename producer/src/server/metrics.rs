//! `GET /metrics`: Prometheus text exposition of the API's and webhooks' counters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use shared::store::{self, Conn};
use shared::twilio::accounts::AccountTokens;

use crate::ops::Deps;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub customer: String,
    /// `ready`, `scheduled` (retries, deferrals) or `in_flight`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpendLabels {
    pub customer: String,
    /// `spent` (this month, in the customer's zone) or `limit` (absent when it has none).
    pub of: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
    pub counted: bool,
}

/// Every metric the server keeps, registered in its own registry (no process-global state, so tests can run many
/// servers in one process).
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    pub recipients_accepted: Counter,
    pub inbound: Counter,
    pub opt_outs: Counter,
    pub opt_ins: Counter,
    pub webhook_rejected: Counter,
    signins: Family<OutcomeLabels, Counter>,
    /// Mirrors [`AccountTokens::lookups`] of `account_tokens` at each scrape.
    token_lookups: Counter,
    account_tokens: Option<Arc<AccountTokens>>,
    deliveries: Family<StatusLabels, Counter>,
    /// Read from Redis at each scrape.
    queue: Family<QueueLabels, Gauge>,
    spend: Family<SpendLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    workers: Gauge,
    shards: Family<ShardLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: String,
    pub state: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Metrics {
    /// The metrics of a server whose webhooks look subaccounts' tokens up with `account_tokens`.
    pub fn new(account_tokens: Option<Arc<AccountTokens>>) -> Self {
        let mut registry = Registry::with_prefix("messenger");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let recipients_accepted = Counter::default();
        let inbound = Counter::default();
        let opt_outs = Counter::default();
        let opt_ins = Counter::default();
        let webhook_rejected = Counter::default();
        let signins = Family::<OutcomeLabels, Counter>::default();
        let token_lookups = Counter::default();
        let deliveries = Family::<StatusLabels, Counter>::default();
        let queue = Family::<QueueLabels, Gauge>::default();
        let spend = Family::<SpendLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let workers = Gauge::default();
        let shards = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "redis_shard_state",
            "1 for each Redis shard's replication state as the producer sees it (replica acknowledgements on): \
             confirming, paused (replicas exist but did not confirm: enqueues there answer 503) or no_replica",
            shards.clone(),
        );
        registry.register("http_requests", "HTTP requests by route, method and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by route", latency.clone());
        registry.register(
            "recipients_accepted",
            "Recipients accepted into batches through the API",
            recipients_accepted.clone(),
        );
        registry.register("inbound_messages", "Inbound messages received on customers' numbers", inbound.clone());
        registry.register("opt_outs", "STOP keywords received", opt_outs.clone());
        registry.register("opt_ins", "START keywords received", opt_ins.clone());
        registry.register(
            "webhooks_rejected",
            "Webhooks refused for a missing or invalid signature",
            webhook_rejected.clone(),
        );
        registry.register(
            "dashboard_signins",
            "Dashboard sign-in attempts by outcome: ok, wrong_token, limited (too many failures from the address: 429)",
            signins.clone(),
        );
        registry.register(
            "subaccount_token_lookups",
            "Requests to Twilio for a subaccount's auth token (to verify its webhooks)",
            token_lookups.clone(),
        );
        registry.register(
            "delivery_reports",
            "Twilio status callbacks by status (counted = first final status)",
            deliveries.clone(),
        );
        registry.register(
            "queue_jobs",
            "Jobs of customers with work, by state (read from Redis at scrape time)",
            queue.clone(),
        );
        registry.register(
            "customer_spend_usd",
            "Customers with work: what they spent this month (texts, numbers, lookups at the fleet's prices) and their \
             monthly limit, in dollars",
            spend.clone(),
        );
        registry.register(
            "workers_alive",
            "Worker processes that sent a heartbeat in the last minute",
            workers.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            recipients_accepted,
            inbound,
            opt_outs,
            opt_ins,
            webhook_rejected,
            signins,
            token_lookups,
            account_tokens,
            deliveries,
            queue,
            spend,
            workers,
            shards,
        }
    }

    /// Counts a dashboard sign-in attempt by its outcome.
    pub fn signin(&self, outcome: &str) {
        self.signins.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
    }

    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route: route.to_owned(), method: method.to_owned(), status })
            .inc();
        self.latency.get_or_create(&RouteLabels { route: route.to_owned() }).observe(took.as_secs_f64());
    }

    pub fn delivery(&self, status: &str, counted: bool) {
        // Only Twilio's own status names become label values (no unbounded label sets from bad input).
        let known = [
            "queued",
            "sending",
            "sent",
            "delivered",
            "undelivered",
            "failed",
            "read",
            "accepted",
            "scheduled",
            "canceled",
        ];
        let status = if known.contains(&status) { status } else { "other" };
        self.deliveries.get_or_create(&StatusLabels { status: status.to_owned(), counted }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap())
            .expect("writing to a String");
        out
    }
}

/// Refreshes the queue gauges from Redis: per active customer (at most 500), jobs ready, scheduled and in flight;
/// and the live workers. A Redis error leaves the gauges as they were rather than failing the scrape.
async fn refresh_queues(metrics: &Metrics, mut conn: Conn) -> redis::RedisResult<()> {
    use redis::AsyncCommands;
    let now = shared::customers::redis_now_ms(&mut conn).await?;
    let mut active: Vec<String> = conn.smembers(shared::keys::ACTIVE).await?;
    active.sort();
    active.truncate(500);
    let alive: i64 = conn.zcount(shared::keys::WORKERS, now - 60_000, "+inf").await?;
    let ids: Vec<_> = active.iter().filter_map(|c| shared::domain::CustomerId::parse(c).ok()).collect();
    let counts = shared::customers::queue_depths(&conn, &ids).await?;
    metrics.queue.clear();
    for (id, d) in ids.iter().zip(counts) {
        for (state, n) in [("ready", d.ready), ("scheduled", d.scheduled), ("in_flight", d.in_flight)] {
            let labels = QueueLabels { customer: id.to_string(), state: state.to_owned() };
            metrics.queue.get_or_create(&labels).set(n);
        }
    }
    let spends = shared::customers::month_spends(&conn, &ids, now).await?;
    metrics.spend.clear();
    for (id, s) in ids.iter().zip(spends) {
        let at = |of: &str| SpendLabels { customer: id.to_string(), of: of.to_owned() };
        metrics.spend.get_or_create(&at("spent")).set(s.spent.dollars());
        if let Some(limit) = s.limit {
            metrics.spend.get_or_create(&at("limit")).set(limit.dollars());
        }
    }
    metrics.workers.set(alive);
    Ok(())
}

/// `GET /metrics`.
pub async fn render(State(ops): State<Deps>, State(metrics): State<Arc<Metrics>>) -> Response {
    if let Err(e) = refresh_queues(&metrics, ops.conn()).await {
        tracing::warn!(error.message = %e, "queue gauges not refreshed");
    }
    if let Some(acks) = &ops.settings.redis.acks {
        store::refresh_topology(&mut ops.conn(), Some(acks)).await;
        metrics.shards.clear();
        for s in acks.report().shards {
            let shard = s.primary.unwrap_or_else(|| "redis".into());
            metrics.shards.get_or_create(&ShardLabels { shard, state: s.state.to_owned() }).set(1);
        }
    }
    if let Some(t) = &metrics.account_tokens {
        let seen = metrics.token_lookups.get();
        metrics.token_lookups.inc_by(t.lookups().saturating_sub(seen));
    }
    let ct = HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    ([(header::CONTENT_TYPE, ct)], metrics.encode()).into_response()
}
