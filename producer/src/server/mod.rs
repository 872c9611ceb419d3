//! `producer serve`: Messenger's HTTP API for property apps, and Twilio's webhooks.
//!
//! # Layout
//! - [`api`]: the `/v1` routes (customers, bulk texts, single messages, batch status, pools).
//! - [`dashboard`]: `/dashboard`, the web pages support staff use (overview, batches, pools).
//! - [`webhooks`]: `/twilio/inbound` (replies, STOP/START) and `/twilio/status` (delivery reports), signed by Twilio.
//! - [`auth`]: bearer tokens, admin or scoped to customers.
//! - [`error`]: the one error shape every route answers with.
//! - [`metrics`]: Prometheus counters and histograms behind `/metrics`.
//! - [`openapi`]: the OpenAPI 3 document generated from the route annotations, served at `/openapi.json`.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use shared::config::Settings;
use shared::store::Conn;
use shared::twilio::TwilioClient;
use shared::twilio::accounts::AccountTokens;
use tower_http::catch_panic::CatchPanicLayer;

use self::auth::Tokens;
use self::error::ApiError;
use self::metrics::Metrics;

/// Documented request limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Recipients in one `POST …/bulk-texts`.
    pub max_recipients: usize,
    /// Bytes of a `/v1` request body.
    pub max_body_bytes: usize,
    /// Bytes of a webhook body (Twilio's are a few kilobytes).
    pub max_webhook_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_recipients: 100_000, max_body_bytes: 8 * 1024 * 1024, max_webhook_bytes: 64 * 1024 }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub conn: Conn,
    pub settings: Arc<Settings>,
    pub tokens: Arc<Tokens>,
    /// The public base URL Twilio calls (`https://messenger.example.com`): webhook signatures are computed over it.
    pub public_url: Option<Arc<str>>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Twilio with the main account's credentials, when they are configured: checks customers' subaccounts and
    /// reads their webhook tokens.
    pub twilio: Option<TwilioClient>,
    /// The tokens that sign webhooks, per account (the main one, and subaccounts' looked up in Twilio).
    pub webhook_tokens: Option<Arc<AccountTokens>>,
    /// Customer → the account that owns its numbers, cached briefly (every webhook needs it).
    pub customer_accounts: Arc<webhooks::CustomerAccounts>,
    /// A connection of its own for enqueues followed by `WAIT` (replica acknowledgements), which blocks the
    /// connection it runs on; `None` when acknowledgements are off.
    pub acked: Option<Conn>,
    /// The dashboard's session key and display settings.
    pub dashboard: Arc<dashboard::DashboardConfig>,
}

/// How long subaccount webhook tokens are kept, and how often one account may be looked up again.
#[derive(Clone, Copy, Debug)]
pub struct TokenPolicy {
    pub ttl: Duration,
    pub refresh_every: Duration,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(3600), refresh_every: Duration::from_secs(30) }
    }
}

impl AppState {
    /// The state for `settings`; Twilio calls (subaccount checks and tokens) are enabled when the main account's
    /// credentials are configured.
    pub fn new(
        conn: Conn,
        settings: Settings,
        tokens: Tokens,
        public_url: Option<Arc<str>>,
        limits: Limits,
        policy: TokenPolicy,
    ) -> Self {
        let twilio = TwilioClient::new(&settings.twilio).ok();
        let webhook_tokens = match (&twilio, &settings.twilio.auth_token) {
            (Some(client), Some(token)) => {
                Some(Arc::new(AccountTokens::new(client.clone(), token.clone(), policy.ttl, policy.refresh_every)))
            }
            _ => None,
        };
        Self {
            conn,
            settings: Arc::new(settings),
            tokens: Arc::new(tokens),
            public_url,
            metrics: Arc::new(Metrics::default()),
            limits,
            twilio,
            webhook_tokens,
            customer_accounts: Arc::default(),
            acked: None,
            dashboard: Arc::new(dashboard::DashboardConfig::new(None, false).expect("a random secret")),
        }
    }

    /// The dashboard's session key and settings.
    pub fn with_dashboard(mut self, config: dashboard::DashboardConfig) -> Self {
        self.dashboard = Arc::new(config);
        self
    }

    /// Uses `conn` for the enqueues that wait for replicas.
    pub fn with_acked_conn(mut self, conn: Conn) -> Self {
        self.acked = Some(conn);
        self
    }
}

/// Every route.
pub fn router(state: AppState) -> Router {
    let limits = state.limits;
    let v1 = Router::new()
        .route("/v1/customers/{id}", put(api::put_customer))
        .route("/v1/customers/{id}/bulk-texts", post(api::post_bulk))
        .route("/v1/customers/{id}/messages", post(api::post_message))
        .route("/v1/customers/{id}/pool", get(api::get_pool))
        .route("/v1/customers/{id}/pool/release-idle", post(api::post_release_idle))
        .route("/v1/batches/{id}", get(api::get_batch))
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
        .layer(middleware::from_fn_with_state(state.clone(), track))
        // A bug must never take the server down or leak a backtrace: the panic is logged, the client gets a 500.
        .layer(CatchPanicLayer::custom(|_| ApiError::internal(&"handler panicked").into_response()))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then drains open requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// `GET /healthz`: 200 when Redis answers (a cluster: every slot has a reachable primary), 503 otherwise; the body
/// names the cluster's nodes that are not online.
async fn healthz(State(s): State<AppState>) -> Response {
    let h = shared::store::health(&mut s.conn.clone()).await;
    let body = serde_json::json!({
        "status": if h.ok { "ok" } else { "unavailable" },
        "redis": h.state,
        "unreachable": h.unreachable,
    });
    let code = if h.ok { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

/// Counts every request by route template, method and status, and times it.
async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    s.metrics.request(&route, &method, resp.status().as_u16(), started.elapsed());
    resp
}
