//! `producer serve`: Messenger's HTTP API for property apps, the dashboard, and Twilio's webhooks.
//!
//! [`Application::build`] does the whole start-up — checks the configuration, connects to Redis (waiting for it),
//! binds — and [`Application::run_until`] serves until a shutdown future resolves; `producer serve`, the tests and
//! the load-test tool all start the server this way.
//!
//! Each route takes only the state it uses: the operations' dependencies ([`Deps`]), the tokens, the metrics, the
//! webhooks' verification state, the dashboard's. They are parts of one private [`AppState`], handed out with
//! axum's `FromRef`, so no child module names (or depends on) the whole.
//!
//! # Layout
//! - [`api`]: the `/v1` routes (customers, bulk texts, single messages, batches, pools), over [`crate::ops`].
//! - [`dashboard`]: `/dashboard`, the web pages support staff use (overview, batches, pools), over [`crate::ops`].
//! - [`webhooks`]: `/twilio/inbound` (replies, STOP/START) and `/twilio/status` (delivery reports), signed by Twilio.
//! - [`deliver`]: customers' events to their endpoints, signed per Standard Webhooks, beside the API.
//! - [`auth`]: bearer tokens, admin or scoped to customers.
//! - [`error`]: the one error shape every route answers with, and the one mapping of [`crate::ops::OpsError`].
//! - [`metrics`]: Prometheus counters and histograms behind `/metrics`.
//! - [`openapi`]: the OpenAPI 3 document generated from the route annotations, served at `/openapi.json`.
//! - [`recipients`]: a bulk text's recipients read from JSON within bounds.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod deliver;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod recipients;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use shared::config::Settings;
use shared::store;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;

pub use self::api::Limits;
use self::auth::Tokens;
use self::dashboard::{Dashboard, DashboardConfig};
use self::error::ApiError;
use self::metrics::Metrics;
use self::webhooks::{TokenPolicy, Webhooks};

use crate::ops::Deps;

/// How the server runs, beyond the settings every process shares.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub tokens: Tokens,
    /// The public base URL Twilio calls (`https://messenger.example.com`): webhook signatures are computed over it,
    /// so behind a proxy it is the outside URL, not the listening address. `None`: webhooks are refused.
    pub public_url: Option<String>,
    pub dashboard: DashboardConfig,
    pub token_policy: TokenPolicy,
    pub limits: Limits,
}

impl ServeConfig {
    /// `tokens`, no public URL, a dashboard with a random session key, default limits.
    pub fn new(tokens: Tokens) -> Self {
        Self {
            tokens,
            public_url: None,
            dashboard: DashboardConfig::new(None, false).expect("a random key is long enough"),
            token_policy: TokenPolicy::default(),
            limits: Limits::default(),
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting cannot work (named); fix it and start again.
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
}

/// Every part of the server's state; handlers take the parts they use.
#[derive(Clone)]
struct AppState {
    ops: Deps,
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
    limits: Limits,
    webhooks: Webhooks,
    dashboard: Dashboard,
}

macro_rules! part {
    ($t:ty, $field:ident) => {
        impl FromRef<AppState> for $t {
            fn from_ref(s: &AppState) -> Self {
                s.$field.clone()
            }
        }
    };
}
part!(Deps, ops);
part!(Arc<Tokens>, tokens);
part!(Arc<Metrics>, metrics);
part!(Limits, limits);
part!(Webhooks, webhooks);
part!(Dashboard, dashboard);

/// A server ready to serve: configured, connected, bound.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    ops: Deps,
}

impl Application {
    /// Starts a server on `listen` (port 0 picks a free one; see [`Application::addr`]).
    pub async fn build(settings: Settings, config: ServeConfig, listen: &str) -> Result<Self, StartError> {
        let listener =
            TcpListener::bind(listen).await.map_err(|source| StartError::Listen { addr: listen.to_owned(), source })?;
        Self::build_on(listener, settings, config).await
    }

    /// Starts a server on a listener the caller bound (tests that must know the address before the server exists:
    /// it is the public URL Twilio's webhooks are signed over).
    pub async fn build_on(listener: TcpListener, settings: Settings, config: ServeConfig) -> Result<Self, StartError> {
        let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: "?".into(), source })?;
        let public_url = match config.public_url {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Some(u.trim_end_matches('/').into()),
            Some(u) => return Err(StartError::Config(format!("MESSENGER_PUBLIC_URL {u:?} must be an http(s) URL"))),
            None => None,
        };
        if config.tokens.is_empty() {
            tracing::warn!(
                "no API tokens configured (MESSENGER_API_TOKENS or MESSENGER_API_TOKENS_FILE): /v1 answers 401"
            );
        }
        if settings.events.keys.is_none() {
            tracing::warn!(
                "MESSENGER_SECRETS_KEY is not set: customers' event endpoints cannot be given signing secrets (they \
                 are stored only sealed); secrets stored in clear by an earlier release still sign, unsealed, until \
                 the key is set"
            );
        }
        if public_url.is_none() || settings.twilio.auth_token.is_none() {
            tracing::warn!("webhooks disabled: they need MESSENGER_PUBLIC_URL and TWILIO_AUTH_TOKEN");
        }
        let conn = connect_waiting(&settings).await?;
        let acked = match &settings.redis.acks {
            Some(_) => Some(connect_waiting(&settings).await?),
            None => None,
        };
        let mut ops = Deps::new(conn, settings);
        if let Some(c) = acked {
            ops = ops.with_acked(c);
        }
        let hsts = public_url.as_deref().is_some_and(|u: &str| u.starts_with("https://"));
        let account_tokens = webhooks::account_tokens(&ops, config.token_policy);
        let metrics = Arc::new(Metrics::new(account_tokens.clone()));
        let tokens = Arc::new(config.tokens);
        let state = AppState {
            dashboard: Dashboard::new(ops.clone(), tokens.clone(), config.dashboard, metrics.clone()),
            webhooks: Webhooks::new(&ops, public_url, account_tokens, metrics.clone()),
            ops: ops.clone(),
            tokens,
            metrics,
            limits: config.limits,
        };
        Ok(Self { listener, addr, router: router(state, hsts), ops })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then drains open requests.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        tracing::info!(addr = %self.addr, "producer serving");
        // Event delivery runs beside the API, and stops with it, handing its customers back.
        let token = ulid::Ulid::new().to_string();
        let delivery = tokio::spawn(deliver::run(self.ops.clone(), token.clone()));
        // The peer's address reaches the handlers (the dashboard counts failed sign-ins per client address).
        let app = self.router.into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await;
        delivery.abort();
        let _ = delivery.await;
        let _ = tokio::time::timeout(Duration::from_secs(2), deliver::hand_back(&self.ops, &token)).await;
        served
    }
}

/// A server waits for Redis (a cluster mid-failover, a node restarting) rather than exit; only a configuration
/// problem stops it.
async fn connect_waiting(settings: &Settings) -> Result<shared::store::Conn, StartError> {
    loop {
        match store::connect_with_retry(&settings.redis, Duration::from_secs(60)).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                if let Some(problem) = store::config_problem(&e, &settings.redis) {
                    return Err(StartError::Config(problem));
                }
                tracing::warn!(error.message = %e, "redis still not reachable; the server keeps waiting for it");
            }
        }
    }
}

/// Every route; `hsts`: the public URL is https, so browsers are told to use nothing else.
fn router(state: AppState, hsts: bool) -> Router {
    let limits = state.limits;
    // Bulk texts may carry megabytes each: a few at a time (the others wait briefly, then 503 with Retry-After),
    // the permit taken before the body is read.
    let heavy = Heavy::new(limits, state.tokens.clone());
    let bulk = Router::new()
        .route("/v1/customers/{id}/bulk-texts", post(api::post_bulk))
        .route("/v1/customers/{id}/opt-outs/import", post(api::post_import))
        .route_layer(middleware::from_fn_with_state(heavy, one_of_few));
    let v1 = Router::new()
        .merge(bulk)
        .route("/v1/customers", get(api::list_customers))
        .route("/v1/customers/{id}", put(api::put_customer).get(api::get_customer))
        .route("/v1/customers/{id}/messages", post(api::post_message))
        .route("/v1/customers/{id}/pool", get(api::get_pool))
        .route("/v1/customers/{id}/events", get(api::get_events))
        .route("/v1/customers/{id}/events/dead", get(api::get_dead_letters))
        .route("/v1/customers/{id}/events/dead/replay", post(api::post_replay))
        .route("/v1/customers/{id}/opt-outs", post(api::post_opt_out).get(api::get_export))
        .route("/v1/customers/{id}/opt-outs/{phone}", get(api::get_opt_out))
        .route("/v1/customers/{id}/opt-ins", post(api::post_opt_in))
        .route("/v1/customers/{id}/reviews", get(api::get_reviews))
        .route("/v1/customers/{id}/reviews/{phone}", post(api::post_decision))
        .route("/v1/customers/{id}/conversations", get(api::get_inbox))
        .route("/v1/customers/{id}/conversations/{phone}", get(api::get_conversation))
        .route("/v1/customers/{id}/conversations/{phone}/read", post(api::post_read))
        .route("/v1/customers/{id}/batches", get(api::get_batches))
        .route("/v1/customers/{id}/pool/release-idle", post(api::post_release_idle))
        .route("/v1/batches/{id}", get(api::get_batch))
        .route("/v1/batches/{id}/cancel", post(api::post_cancel))
        .route("/v1/batches/{id}/pause", post(api::post_pause))
        .route("/v1/batches/{id}/resume", post(api::post_resume))
        .route("/v1/batches/{id}/recipients", get(api::get_recipients))
        .route("/v1/batches/{id}/resend", post(api::post_resend))
        .route("/v1/sessions/revoke-all", post(api::post_revoke_sessions))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes));
    let hooks = Router::new()
        .route("/twilio/inbound", post(webhooks::inbound))
        .route("/twilio/status", post(webhooks::status))
        .layer(DefaultBodyLimit::max(limits.max_webhook_bytes));
    Router::new()
        .merge(v1)
        .merge(hooks)
        .merge(dashboard::router().layer(DefaultBodyLimit::max(64 * 1024)))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi::document))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(state.metrics.clone(), track))
        .layer(middleware::from_fn_with_state(hsts, strict_transport))
        // A bug must never take the server down or leak a backtrace: the panic is logged, the client gets a 500.
        .layer(CatchPanicLayer::custom(|_| ApiError::internal(&"handler panicked").into_response()))
        .with_state(state)
}

/// `GET /healthz`: 200 when Redis answers (a cluster: every slot has a reachable primary), 503 otherwise; the body
/// names the cluster's nodes that are not online. With replica acknowledgements on, `"replication"` gives each
/// shard's state, and a shard paused (replicas that do not confirm: enqueues there answer 503) or without a replica
/// (writes go on unconfirmed) makes it `200` with `"status": "degraded"` and a `"reason"` naming it.
async fn healthz(State(ops): State<Deps>) -> Response {
    let h = store::health(&mut ops.conn()).await;
    let acks = ops.settings.redis.acks.as_ref();
    if let Some(a) = acks.filter(|_| h.ok) {
        a.shards.update(&h.nodes);
    }
    let replication = acks.map(|a| a.report());
    let degraded = replication.as_ref().map(|r| r.problems()).unwrap_or_default();
    let status = match (h.ok, degraded.is_empty()) {
        (false, _) => "unavailable",
        (true, false) => "degraded",
        (true, true) => "ok",
    };
    // Unavailable: what Redis said and which nodes it cannot reach (a shard failing over: enqueues for its
    // customers are refused until a replica serves its slots).
    let reason = if h.ok {
        (!degraded.is_empty()).then(|| degraded.join("; "))
    } else if h.unreachable.is_empty() {
        Some(format!("redis: {}", h.state))
    } else {
        Some(format!("redis cluster state {}; not online: {}", h.state, h.unreachable.join(", ")))
    };
    let body = serde_json::json!({
        "status": status,
        "reason": reason,
        "redis": h.state,
        "unreachable": h.unreachable,
        "replication": replication,
    });
    let code = if h.ok { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

/// `Strict-Transport-Security` on every response when the server is reached over https: a browser that saw it once
/// never sends a session cookie over plain http to this host (two years, as the HSTS preload list asks).
async fn strict_transport(State(hsts): State<bool>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if hsts {
        resp.headers_mut().insert(
            axum::http::header::STRICT_TRANSPORT_SECURITY,
            axum::http::HeaderValue::from_static("max-age=63072000"),
        );
    }
    resp
}

/// Permits for requests that hold a large body in memory.
#[derive(Clone)]
struct Heavy {
    permits: Arc<tokio::sync::Semaphore>,
    most: usize,
    wait: Duration,
    tokens: Arc<Tokens>,
    max_body: usize,
}

impl Heavy {
    fn new(limits: Limits, tokens: Arc<Tokens>) -> Self {
        let most = limits.heavy_requests.max(1);
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(most)),
            most,
            wait: limits.heavy_wait,
            tokens,
            max_body: limits.max_body_bytes,
        }
    }
}

/// How long a heavy request's body may take to arrive once it holds a permit.
const BODY_WITHIN: Duration = Duration::from_secs(30);

/// Runs the request under one of the few permits, or answers 503 with `Retry-After` when none frees up in time.
/// Only a caller with a valid token waits for a permit, and the body must arrive within [`BODY_WITHIN`] of it: no
/// stranger and no slow upload can keep the customers' bulk texts waiting. When the last one running finishes, the
/// allocator hands the pages it freed back to the system (glibc keeps them otherwise, and a burst of large requests
/// would leave the server's resident memory at its peak).
async fn one_of_few(State(h): State<Heavy>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if presented.and_then(|t| h.tokens.authenticate(t)).is_none() {
        return ApiError::unauthorized().into_response();
    }
    let Ok(Ok(permit)) = tokio::time::timeout(h.wait, h.permits.clone().acquire_owned()).await else {
        let mut resp = ApiError::unavailable(format!(
            "this server is handling {} bulk texts already; retry in a second (an idempotency key makes that safe)",
            h.most
        ))
        .into_response();
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        return resp;
    };
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(BODY_WITHIN, axum::body::to_bytes(body, h.max_body)).await {
        Ok(Ok(b)) => b,
        // Over the size bound (or the client went away: nobody reads this answer then).
        Ok(Err(_)) => return error::too_large().into_response(),
        Err(_) => {
            let mut e = ApiError::bad_request(
                "body_timeout",
                format!("the request body did not arrive within {} s", BODY_WITHIN.as_secs()),
            );
            e.status = axum::http::StatusCode::REQUEST_TIMEOUT;
            return e.into_response();
        }
    };
    let resp = next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await;
    drop(permit);
    if h.permits.available_permits() == h.most {
        tokio::task::spawn_blocking(trim_heap);
    }
    resp
}

/// Returns free heap pages to the system.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Counts every request by route template, method and status, and times it.
async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics.request(&route, &method, resp.status().as_u16(), started.elapsed());
    resp
}
