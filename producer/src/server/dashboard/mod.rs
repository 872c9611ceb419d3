//! `/dashboard`: what support staff open when a property manager asks "did my notice go out, and why did 12
//! tenants not get it?" — an overview of the fleet, searchable batches with their failures explained, number
//! pools, a tenant's conversation, and each customer's event delivery with its dead letters (replayable) — served by
//! `producer serve`, rendered on the server, with a little JavaScript that refreshes figures while work runs.
//!
//! # Layout
//! - this module: routes, sign-in, sessions, CSRF tokens, security headers, and the handlers.
//! - [`data`]: what each page reads from Redis (a bounded number of commands per page, stated there).
//! - [`pages`]: the HTML.
//! - `assets/`: the stylesheet and the script, served from `/dashboard/static/`.
//!
//! # Sessions and tokens
//! Staff sign in with the same API tokens as `/v1`, with the same scopes: a token scoped to `acme` sees only acme.
//! The session cookie names the token and carries a fingerprint of its value, never the value ([`session`]), MAC'd
//! under `MESSENGER_DASHBOARD_SECRET` (random per process when unset): removing or rotating a token ends its
//! sessions, signing out ends one on every server, and an admin can end them all. Sign-in attempts are limited per
//! client address. The cookie is `HttpOnly; Secure; SameSite=Strict; Path=/dashboard`. Every state-changing action
//! is a `POST` carrying a CSRF token derived from the session (HMAC of its nonce); the sign-in form carries one
//! derived from a short-lived pre-session cookie. Every response carries a strict Content-Security-Policy (no
//! inline script or style) and `no-store`.

pub mod data;
pub mod pages;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Extension, Form, FromRef, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use maud::Markup;
use serde::Deserialize;
use sha2::Sha256;
use shared::domain::{BatchId, CustomerId};
use subtle::ConstantTimeEq;

use super::auth::{Scope, Tokens};
use super::error::ApiError;
use super::metrics::Metrics;
use crate::ops::{Deps, OpsError, batches, consent, desk, events, pools, texts};
use pages::Viewer;
use session::{LOGIN_COOKIE, SESSION_COOKIE, SESSION_TTL, Session, SigninLimit};

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's settings.
#[derive(Clone)]
pub struct DashboardConfig {
    /// Key of the session and CSRF MACs.
    secret: Vec<u8>,
    /// Show phone numbers in full to customer-scoped viewers too.
    pub show_numbers: bool,
    /// Failed sign-ins allowed per client address and window.
    pub signin: SigninLimit,
    /// The header the deployment's proxy writes the client's address into (`X-Forwarded-For`), if any; otherwise
    /// the connection's peer is the client.
    pub client_ip_header: Option<String>,
}

impl DashboardConfig {
    /// `secret`: at least 32 bytes, shared by every `producer serve` behind one address; `None` = random (sessions
    /// then last as long as the process, and only on it).
    pub fn new(secret: Option<&str>, show_numbers: bool) -> Result<Self, String> {
        let secret = match secret {
            Some(s) if s.len() >= 32 => s.as_bytes().to_vec(),
            Some(_) => return Err("MESSENGER_DASHBOARD_SECRET must be at least 32 characters".into()),
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        Ok(Self { secret, show_numbers, signin: SigninLimit::default(), client_ip_header: None })
    }

    /// An opaque reference to a tenant of `customer`, for links and forms: pages shown to scoped viewers keep the
    /// number masked, so it never travels in clear in their URLs (sealed under a key derived from the secret; it
    /// opens for this customer only).
    fn tenant_ref(&self, customer: &CustomerId, phone: &str) -> String {
        self.tenant_keys().seal(phone, customer.as_str())
    }

    /// The tenant a reference names, if it is one of ours for this customer.
    fn tenant_of(&self, customer: &CustomerId, reference: &str) -> Option<String> {
        let keys = self.tenant_keys();
        shared::secrets::open(Some(&keys), reference, customer.as_str()).ok().filter(|o| o.current).map(|o| o.plain)
    }

    fn tenant_keys(&self) -> shared::secrets::Keyring {
        let key = hex::encode(<Sha256 as sha2::Digest>::digest([b"tenant-ref\x00".as_slice(), &self.secret].concat()));
        shared::secrets::Keyring::parse(&key, None).expect("a 32-byte hex key parses")
    }

    fn mac(&self, parts: &[&str]) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC takes any key");
        for p in parts {
            m.update(p.as_bytes());
            m.update(b"\x00");
        }
        URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
    }
}

impl std::fmt::Debug for DashboardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardConfig").field("show_numbers", &self.show_numbers).finish_non_exhaustive()
    }
}

fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/dashboard; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    ))
    .expect("cookie value is ASCII")
}

/// What the dashboard's handlers use.
#[derive(Clone)]
pub struct Dashboard {
    ops: Deps,
    tokens: Arc<Tokens>,
    config: Arc<DashboardConfig>,
    metrics: Arc<Metrics>,
}

impl Dashboard {
    pub fn new(ops: Deps, tokens: Arc<Tokens>, config: DashboardConfig, metrics: Arc<Metrics>) -> Self {
        Self { ops, tokens, config: Arc::new(config), metrics }
    }

    fn conn(&self) -> shared::store::Conn {
        self.ops.conn()
    }
}

impl Session {
    fn viewer<'a>(&'a self, config: &DashboardConfig) -> Viewer<'a> {
        let admin = self.scope == Scope::Admin;
        Viewer { name: &self.name, admin, full_numbers: admin || config.show_numbers, csrf: &self.csrf }
    }

    fn may_see(&self, c: &CustomerId) -> bool {
        match &self.scope {
            Scope::Admin => true,
            Scope::Customers(ids) => ids.contains(c),
        }
    }
}

/// The request's session, or what to answer instead: the sign-in page (`live` fragments: 403, the script then
/// reloads), or a page saying Redis is not answering.
async fn signed_in(s: &Dashboard, headers: &HeaderMap, live: bool) -> Result<Session, Outcome> {
    match session::current(s, headers).await {
        Ok(Some(session)) => Ok(session),
        Ok(None) if live => Err(forbidden(None, "Sign in again.")),
        Ok(None) => Err(Outcome::Redirect("/dashboard/login")),
        Err(e) => Err(unavailable(&e)),
    }
}

/// What a handler answers: a page, a redirect, or a refusal page with its status.
enum Outcome {
    Page(Markup),
    Status(StatusCode, Markup),
    Redirect(&'static str),
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        match self {
            Outcome::Page(m) => Html(m.into_string()).into_response(),
            Outcome::Status(code, m) => (code, Html(m.into_string())).into_response(),
            Outcome::Redirect(to) => Redirect::to(to).into_response(),
        }
    }
}

fn forbidden(v: Option<&Viewer<'_>>, why: &str) -> Outcome {
    Outcome::Status(StatusCode::FORBIDDEN, pages::message("Not allowed", v, why))
}

fn not_found(v: &Viewer<'_>, what: &str) -> Outcome {
    Outcome::Status(StatusCode::NOT_FOUND, pages::message("Not found", Some(v), what))
}

/// The page for an operation that did not happen, with the status the API would answer.
fn failed(v: Option<&Viewer<'_>>, title: &str, e: OpsError) -> Outcome {
    let e = ApiError::from(e);
    Outcome::Status(e.status, pages::message(title, v, &e.detail.message))
}

/// The page for a Redis failure: unavailable (503), or an error Redis answered (500: a bug, not an outage).
fn unavailable(e: &redis::RedisError) -> Outcome {
    let e = ApiError::redis(e);
    let text = if e.status == StatusCode::SERVICE_UNAVAILABLE {
        "Redis is not answering; try again shortly."
    } else {
        "Something failed on our side; it has been logged."
    };
    Outcome::Status(e.status, pages::message("Unavailable", None, text))
}

/// Every dashboard route, over any state the dashboard's part can be taken from.
pub fn router<S>() -> Router<S>
where
    Dashboard: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/dashboard", get(overview))
        .route("/dashboard/live/overview", get(overview_live))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/sessions/revoke-all", post(revoke_all))
        .route("/dashboard/batches", get(batches))
        .route("/dashboard/batches/{id}", get(batch))
        .route("/dashboard/batches/{id}/live", get(batch_live))
        .route("/dashboard/batches/{id}/cancel", post(cancel))
        .route("/dashboard/batches/{id}/pause", post(pause))
        .route("/dashboard/batches/{id}/resume", post(resume))
        .route("/dashboard/pools", get(pools))
        .route("/dashboard/pools/{customer}", get(pool))
        .route("/dashboard/pools/{customer}/live", get(pool_live))
        .route("/dashboard/pools/{customer}/release-idle", post(release_idle))
        .route("/dashboard/inbox", get(inbox))
        .route("/dashboard/live/unread", get(unread_badge))
        .route("/dashboard/conversations", get(conversation))
        .route("/dashboard/conversations/{customer}/reply", post(reply))
        .route("/dashboard/batches/{id}/recipients.csv", get(recipients_csv))
        .route("/dashboard/batches/{id}/resend", post(resend))
        .route("/dashboard/events", get(events_index))
        .route("/dashboard/events/{customer}", get(events_page))
        .route("/dashboard/events/{customer}/replay", post(replay))
        .route("/dashboard/consent", get(consent_index))
        .route("/dashboard/consent/{customer}", get(consent_page))
        .route("/dashboard/consent/{customer}/review", post(consent_decide))
        .route("/dashboard/consent/{customer}/opt-out", post(consent_opt_out))
        .route("/dashboard/consent/{customer}/export.csv", get(consent_export))
        .route("/dashboard/static/{file}", get(asset))
        .layer(middleware::from_fn(security_headers))
}

/// Headers on every dashboard response: the Content-Security-Policy, no caching, no framing, no sniffing.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    resp
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "dashboard.css" => (include_str!("assets/dashboard.css"), "text/css; charset=utf-8"),
        "dashboard.js" => (include_str!("assets/dashboard.js"), "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

async fn login_page(State(s): State<Dashboard>) -> Response {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let csrf = s.config.mac(&["login", &nonce]);
    let mut resp = Outcome::Page(pages::login(&csrf, None)).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &nonce, 600));
    resp
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

/// The sign-in form again, with a new CSRF pair and why the last attempt failed.
fn login_again(s: &Dashboard, status: StatusCode, why: &str) -> Response {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let csrf = s.config.mac(&["login", &nonce]);
    let mut resp = Outcome::Status(status, pages::login(&csrf, Some(why))).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &nonce, 600));
    resp
}

async fn login(
    State(s): State<Dashboard>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).map(|n| s.config.mac(&["login", &n]));
    if !expected.is_some_and(|e| equal(&e, &f.csrf)) {
        return forbidden(None, "The sign-in form expired or did not come from this site; open it again.")
            .into_response();
    }
    let client =
        session::client(&headers, peer.map(|Extension(ConnectInfo(a))| a), s.config.client_ip_header.as_deref());
    let limit = s.config.signin;
    let mut conn = s.conn();
    match session::attempt(&mut conn, &client, limit).await {
        Ok(None) => {}
        Ok(Some(wait)) => {
            s.metrics.signin("limited");
            tracing::warn!(client = %client, "dashboard sign-in refused: too many failed attempts");
            let secs = wait.as_secs().max(1);
            let mut resp = login_again(
                &s,
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too many failed sign-ins from your address; try again in {} minute(s).", secs.div_ceil(60)),
            );
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return resp;
        }
        Err(e) => return unavailable(&e).into_response(),
    }
    let Some((name, digest)) = s.tokens.authenticate(f.token.trim()) else {
        s.metrics.signin("wrong_token");
        return login_again(&s, StatusCode::UNAUTHORIZED, "That token is not valid.");
    };
    let issued = match session::succeeded(&mut conn, &client).await {
        Ok(()) => session::now_ms(&mut conn).await,
        Err(e) => Err(e),
    };
    let issued = match issued {
        Ok(t) => t,
        Err(e) => return unavailable(&e).into_response(),
    };
    s.metrics.signin("ok");
    let value = session::issue(&s.config, &name, &digest, issued);
    let mut resp = Redirect::to("/dashboard").into_response();
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &value, SESSION_TTL.as_secs()));
    h.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0));
    resp
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// The session of a state-changing request, if its CSRF token matches.
async fn checked(s: &Dashboard, headers: &HeaderMap, csrf: &str) -> Result<Session, Outcome> {
    let session = signed_in(s, headers, false).await?;
    if !equal(&session.csrf, csrf) {
        return Err(forbidden(None, "This form expired or did not come from this site (missing or wrong CSRF token)."));
    }
    Ok(session)
}

/// The session of a state-changing request about customer `c`, if its CSRF token matches and it may see `c`.
async fn checked_for(
    s: &Dashboard,
    headers: &HeaderMap,
    csrf: &str,
    c: &str,
) -> Result<(Session, CustomerId), Outcome> {
    let session = checked(s, headers, csrf).await?;
    let id = customer_id(&session, &session.viewer(&s.config), c)?;
    Ok((session, id))
}

/// The session of a state-changing request about batch `id`, if its CSRF token matches and it may see the batch.
async fn checked_batch(
    s: &Dashboard,
    headers: &HeaderMap,
    csrf: &str,
    id: &str,
) -> Result<(Session, BatchId), Outcome> {
    let session = checked(s, headers, csrf).await?;
    let id = batch_id(&session, &session.viewer(&s.config), id)?;
    Ok((session, id))
}

/// Signs out: the session is revoked on the server (a copy of the cookie is refused too), then the cookie cleared.
async fn logout(State(s): State<Dashboard>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let session = match checked(&s, &headers, &f.csrf).await {
        Ok(x) => x,
        Err(o) => return o.into_response(),
    };
    if let Err(e) = session::revoke(&mut s.conn(), &session).await {
        return unavailable(&e).into_response();
    }
    let mut resp = Redirect::to("/dashboard/login").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    resp
}

/// Signs every session out, this one included (admins only): after a token leaked, or a person left.
async fn revoke_all(State(s): State<Dashboard>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let session = match checked(&s, &headers, &f.csrf).await {
        Ok(x) => x,
        Err(o) => return o.into_response(),
    };
    if session.scope != Scope::Admin {
        let v = session.viewer(&s.config);
        return forbidden(Some(&v), "Only an admin token may sign everyone out.").into_response();
    }
    if let Err(e) = crate::ops::sessions::revoke_all(&s.ops).await {
        return failed(None, "Not signed out", e).into_response();
    }
    tracing::warn!(by = %session.name, "every dashboard session signed out from the dashboard");
    let mut resp = Redirect::to("/dashboard/login").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    resp
}

async fn overview(State(s): State<Dashboard>, headers: HeaderMap) -> Outcome {
    let session = match signed_in(&s, &headers, false).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    match data::overview(&mut s.conn(), &session.scope).await {
        Ok(o) => Outcome::Page(pages::overview(&o, &v)),
        Err(e) => unavailable(&e),
    }
}

async fn overview_live(State(s): State<Dashboard>, headers: HeaderMap) -> Outcome {
    let session = match signed_in(&s, &headers, true).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    match data::overview(&mut s.conn(), &session.scope).await {
        Ok(o) => Outcome::Page(pages::overview_live(&o, &v)),
        Err(e) => unavailable(&e),
    }
}

#[derive(Deserialize)]
struct BatchQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    customer: String,
}

async fn batches(State(s): State<Dashboard>, headers: HeaderMap, Query(q): Query<BatchQuery>) -> Outcome {
    let session = match signed_in(&s, &headers, false).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    let customer = match q.customer.trim() {
        "" => None,
        c => match CustomerId::parse(c) {
            Ok(id) if session.may_see(&id) => Some(id),
            Ok(_) => return forbidden(Some(&v), "These batches belong to a customer your token may not see."),
            Err(e) => {
                return Outcome::Status(
                    StatusCode::BAD_REQUEST,
                    pages::message("Bad request", Some(&v), &e.to_string()),
                );
            }
        },
    };
    match data::batches(&mut s.conn(), &session.scope, customer.as_ref(), &q.q).await {
        Ok(list) => Outcome::Page(pages::batches(&list, &q.q, customer.as_ref().map(CustomerId::as_str), &v)),
        Err(e) => unavailable(&e),
    }
}

/// The batch `id` if the session may see it, or the page that says why not.
fn batch_id(session: &Session, v: &Viewer<'_>, id: &str) -> Result<BatchId, Outcome> {
    let id = BatchId::parse(id).map_err(|e| not_found(v, &e.to_string()))?;
    if !session.may_see(id.customer()) {
        return Err(forbidden(Some(v), "This batch belongs to a customer your token may not see."));
    }
    Ok(id)
}

async fn batch(State(s): State<Dashboard>, headers: HeaderMap, Path(id): Path<String>) -> Outcome {
    let session = match signed_in(&s, &headers, false).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    let id = match batch_id(&session, &v, &id) {
        Ok(id) => id,
        Err(o) => return o,
    };
    match data::batch(&mut s.conn(), &id).await {
        Ok(Some(status)) => {
            // The failed and undelivered, a page of them; and what a resend would do, once the batch is done.
            let page = match desk::recipients(&s.ops, &id, &desk::STATES, None, Some(50)).await {
                Ok(p) => p,
                Err(e) => return failed(Some(&v), "Unavailable", e),
            };
            let plan = if status.is_complete() && page.total > 0 && status.resent_by.is_none() {
                let all =
                    desk::Resend { which: vec!["failed,undelivered".into()], dry_run: true, ..Default::default() };
                desk::resend(&s.ops, &id, &all).await.ok()
            } else {
                None
            };
            Outcome::Page(pages::batch(&status, &page, plan.as_ref(), &v))
        }
        Ok(None) => not_found(&v, "No such batch (never created, or its record expired)."),
        Err(e) => unavailable(&e),
    }
}

/// The batch's failed and undelivered recipients as CSV (numbers masked for scoped viewers, as on the pages).
async fn recipients_csv(State(s): State<Dashboard>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let session = match signed_in(&s, &headers, false).await {
        Ok(x) => x,
        Err(o) => return o.into_response(),
    };
    let v = session.viewer(&s.config);
    let id = match batch_id(&session, &v, &id) {
        Ok(id) => id,
        Err(o) => return o.into_response(),
    };
    match desk::recipients_csv(&s.ops, &id, &desk::STATES).await {
        Ok(csv) => {
            let csv = if v.full_numbers { csv } else { mask_first_column(&csv) };
            let headers = [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"recipients-{id}.csv\"")),
            ];
            (headers, csv).into_response()
        }
        Err(e) => failed(Some(&v), "Unavailable", e).into_response(),
    }
}

/// Masks the phone number that starts each line after the header.
fn mask_first_column(csv: &str) -> String {
    let mut out = String::with_capacity(csv.len());
    for (i, line) in csv.lines().enumerate() {
        match line.split_once(',') {
            Some((phone, rest)) if i > 0 => {
                out.push_str(&shared::domain::Masked(phone).to_string());
                out.push(',');
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Deserialize)]
struct ResendForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    which: String,
}

/// Resends to a finished batch's failed and undelivered recipients (the counts were on the batch page).
async fn resend(
    State(s): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ResendForm>,
) -> Outcome {
    let (session, id) = match checked_batch(&s, &headers, &f.csrf, &id).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    let which = if f.which.trim().is_empty() { "failed,undelivered".to_owned() } else { f.which };
    match desk::resend(&s.ops, &id, &desk::Resend { which: vec![which], ..Default::default() }).await {
        Ok(out) => {
            tracing::info!(batch = %id, by = %session.name, texts = out.recipients, "resend from the dashboard");
            Outcome::Page(pages::resent(&out, &v))
        }
        Err(e) => failed(Some(&v), "Not resent", e),
    }
}

#[derive(Deserialize)]
struct InboxQuery {
    #[serde(default)]
    customer: String,
    #[serde(default)]
    unread: String,
    #[serde(default)]
    batch: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    after: String,
}

/// The support desk's inbox: a customer's threads newest reply first (unread only, or one batch's), or a search for
/// a tenant's phone across the customers the viewer may see.
async fn inbox(State(s): State<Dashboard>, headers: HeaderMap, Query(q): Query<InboxQuery>) -> Outcome {
    let session = match signed_in(&s, &headers, false).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    let customers = match visible_customers(&s, &session).await {
        Ok(ids) => ids,
        Err(o) => return o,
    };
    if !q.phone.trim().is_empty() {
        let phone = match shared::domain::PhoneNumber::parse(q.phone.trim()) {
            Ok(p) => p,
            Err(e) => {
                return Outcome::Status(
                    StatusCode::BAD_REQUEST,
                    pages::message("Bad request", Some(&v), &e.to_string()),
                );
            }
        };
        let ids: Vec<CustomerId> = customers.iter().filter_map(|c| CustomerId::parse(c).ok()).take(200).collect();
        let mut p = redis::pipe();
        for id in &ids {
            let k = shared::keys::CustomerKeys::new(id);
            p.zscore(k.inbox(), phone.as_str()).exists(k.conversation(phone.as_str()));
        }
        let found: Vec<(Option<i64>, bool)> = match p.query_async(&mut s.conn()).await {
            Ok(f) => f,
            Err(e) => return unavailable(&e),
        };
        let hits: Vec<pages::Found> = ids
            .iter()
            .zip(found)
            .filter(|(_, (reply, thread))| reply.is_some() || *thread)
            .map(|(id, (reply, _))| pages::Found {
                customer: id.to_string(),
                reference: s.config.tenant_ref(id, phone.as_str()),
                last_reply_ms: reply,
            })
            .collect();
        return Outcome::Page(pages::inbox_search(&customers, phone.as_str(), &hits, &v));
    }
    let Some(customer) = Some(q.customer.trim()).filter(|c| !c.is_empty()).or(customers.first().map(String::as_str))
    else {
        return Outcome::Page(pages::message("Inbox", Some(&v), "No customers yet."));
    };
    let id = match customer_id(&session, &v, customer) {
        Ok(id) => id,
        Err(o) => return o,
    };
    let query = desk::InboxQuery {
        unread: q.unread == "1",
        batch: Some(q.batch.trim().to_owned()).filter(|b| !b.is_empty()),
        after: Some(q.after.trim().to_owned()).filter(|a| !a.is_empty()),
        limit: Some(50),
    };
    match desk::inbox(&s.ops, &id, &query).await {
        Ok(page) => {
            let refs: Vec<String> = page.threads.iter().map(|t| s.config.tenant_ref(&id, &t.phone)).collect();
            let filters = pages::InboxFilters { unread: query.unread, batch: query.batch.as_deref() };
            Outcome::Page(pages::inbox(&customers, &page, &refs, &filters, &v))
        }
        Err(e) => failed(Some(&v), "Unavailable", e),
    }
}

/// The navigation's unread badge: threads with unread replies over the customers the viewer may see (the first
/// 200), refreshed by the page's script.
async fn unread_badge(State(s): State<Dashboard>, headers: HeaderMap) -> Outcome {
    let session = match signed_in(&s, &headers, true).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let customers = match visible_customers(&s, &session).await {
        Ok(ids) => ids,
        Err(o) => return o,
    };
    let mut p = redis::pipe();
    for c in customers.iter().take(200).filter_map(|c| CustomerId::parse(c).ok()) {
        p.cmd("HLEN").arg(shared::keys::CustomerKeys::new(&c).unread());
    }
    match p.query_async::<Vec<u64>>(&mut s.conn()).await {
        Ok(n) => Outcome::Page(pages::unread_badge(n.iter().sum())),
        Err(e) => unavailable(&e),
    }
}

async fn batch_live(State(s): State<Dashboard>, headers: HeaderMap, Path(id): Path<String>) -> Outcome {
    let session = match signed_in(&s, &headers, true).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    let id = match batch_id(&session, &v, &id) {
        Ok(id) => id,
        Err(o) => return o,
    };
    match shared::batches::status(&mut s.conn(), &id).await {
        Ok(Some(status)) => Outcome::Page(pages::batch_live(&status, &v)),
        Ok(None) => Outcome::Page(pages::nothing()),
        Err(e) => unavailable(&e),
    }
}

async fn cancel(
    State(s): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Outcome {
    let (session, id) = match checked_batch(&s, &headers, &f.csrf, &id).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    match batches::cancel(&s.ops, &id).await {
        Ok(_) => {
            tracing::info!(batch = %id, by = %session.name, "batch cancelled from the dashboard");
            Outcome::Page(pages::message(
                "Batch cancelled",
                Some(&v),
                &format!("Batch {id} is cancelled: queued texts end as cancelled."),
            ))
        }
        Err(e) => failed(Some(&v), "Not cancelled", e),
    }
}

async fn pause(
    State(s): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Outcome {
    pause_or_resume(s, headers, id, f, false).await
}

async fn resume(
    State(s): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Outcome {
    pause_or_resume(s, headers, id, f, true).await
}

async fn pause_or_resume(s: Dashboard, headers: HeaderMap, id: String, f: CsrfForm, resume: bool) -> Outcome {
    let (session, id) = match checked_batch(&s, &headers, &f.csrf, &id).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    let (done, not_done) = if resume { ("Batch resumed", "Not resumed") } else { ("Batch paused", "Not paused") };
    match batches::pause(&s.ops, &id, resume, &session.name).await {
        Ok(outcome) => {
            tracing::info!(batch = %id, by = %session.name, resume, "batch paused or resumed from the dashboard");
            let says = match outcome {
                shared::batches::PauseOutcome::Paused => {
                    format!("Batch {id} is paused: its texts wait until it is resumed.")
                }
                shared::batches::PauseOutcome::Resumed { released } => {
                    format!(
                        "Batch {id} is resumed: {released} held texts go now, the queued ones as workers reach them."
                    )
                }
                shared::batches::PauseOutcome::Already { state } => format!("Batch {id} was already {state}."),
                _ => format!("Batch {id} is complete or cancelled: nothing to pause or resume."),
            };
            Outcome::Page(pages::message(done, Some(&v), &says))
        }
        Err(e) => failed(Some(&v), not_done, e),
    }
}

/// The customers the session may see, sorted (an admin's: the first 500).
async fn visible_customers(s: &Dashboard, session: &Session) -> Result<Vec<String>, Outcome> {
    Ok(match &session.scope {
        Scope::Customers(ids) => {
            let mut ids: Vec<String> = ids.iter().map(|c| c.to_string()).collect();
            ids.sort();
            ids
        }
        Scope::Admin => match shared::customers::list(&mut s.conn()).await {
            Ok(ids) => ids.into_iter().take(500).map(|c| c.to_string()).collect(),
            Err(e) => return Err(unavailable(&e)),
        },
    })
}

async fn pools(State(s): State<Dashboard>, headers: HeaderMap) -> Outcome {
    let session = match signed_in(&s, &headers, false).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    match visible_customers(&s, &session).await {
        Ok(ids) => Outcome::Page(pages::pools(&ids, &v)),
        Err(o) => o,
    }
}

/// The customer `c` if the session may see it.
fn customer_id(session: &Session, v: &Viewer<'_>, c: &str) -> Result<CustomerId, Outcome> {
    let id = CustomerId::parse(c).map_err(|e| not_found(v, &e.to_string()))?;
    if !session.may_see(&id) {
        return Err(forbidden(Some(v), "This belongs to a customer your token may not see."));
    }
    Ok(id)
}

async fn pool_page(s: &Dashboard, headers: &HeaderMap, c: &str, live: bool) -> Outcome {
    let session = match signed_in(s, headers, live).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    let id = match customer_id(&session, &v, c) {
        Ok(id) => id,
        Err(o) => return o,
    };
    let settings = &s.ops.settings;
    match data::pool(&mut s.conn(), &id, &settings.quota).await {
        Ok(Some((report, pending))) => {
            let mut report = report.with_cost(settings.pricing.number_monthly);
            match pools::cap_use(&s.ops, &id).await {
                Ok(c) => report.carriers = c,
                Err(e) => return failed(Some(&v), "Unavailable", e),
            }
            Outcome::Page(if live {
                pages::pool_live(&report, &pending, &v)
            } else {
                pages::pool(&report, &pending, &v)
            })
        }
        Ok(None) => not_found(&v, "No such customer."),
        Err(e) => unavailable(&e),
    }
}

async fn pool(State(s): State<Dashboard>, headers: HeaderMap, Path(c): Path<String>) -> Outcome {
    pool_page(&s, &headers, &c, false).await
}

async fn pool_live(State(s): State<Dashboard>, headers: HeaderMap, Path(c): Path<String>) -> Outcome {
    pool_page(&s, &headers, &c, true).await
}

#[derive(Deserialize)]
struct ReleaseForm {
    #[serde(default)]
    csrf: String,
    idle_days: Option<f64>,
    dry_run: Option<String>,
}

async fn release_idle(
    State(s): State<Dashboard>,
    headers: HeaderMap,
    Path(c): Path<String>,
    Form(f): Form<ReleaseForm>,
) -> Outcome {
    let (session, id) = match checked_for(&s, &headers, &f.csrf, &c).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    if session.scope != Scope::Admin {
        return forbidden(Some(&v), "Only an admin token may release numbers.");
    }
    match pools::release_idle(&s.ops, &id, f.idle_days, f.dry_run.is_some()).await {
        Ok(report) => Outcome::Page(pages::released(&report, &v)),
        Err(e) => failed(Some(&v), "Not released", e),
    }
}

#[derive(Deserialize)]
struct ConversationQuery {
    #[serde(default)]
    customer: String,
    #[serde(default)]
    phone: String,
    /// A tenant reference from the inbox (the number is not in the URL).
    #[serde(default, rename = "t")]
    reference: String,
}

/// A tenant's thread, for support staff answering "what did we tell them, and what did they say?", with a box to
/// answer; opening it marks the tenant's replies read. With no tenant yet, the form that asks for one.
async fn conversation(State(s): State<Dashboard>, headers: HeaderMap, Query(q): Query<ConversationQuery>) -> Outcome {
    let session = match signed_in(&s, &headers, false).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    let customers = match visible_customers(&s, &session).await {
        Ok(ids) => ids,
        Err(o) => return o,
    };
    let customer = q.customer.trim();
    if customer.is_empty() || (q.phone.trim().is_empty() && q.reference.is_empty()) {
        return Outcome::Page(pages::conversation(&customers, customer, q.phone.trim(), None, &v));
    }
    let id = match customer_id(&session, &v, customer) {
        Ok(id) => id,
        Err(o) => return o,
    };
    let phone = if q.reference.is_empty() {
        q.phone.trim().to_owned()
    } else {
        match s.config.tenant_of(&id, &q.reference) {
            Some(p) => p,
            None => {
                return not_found(
                    &v,
                    "That link to a thread is not valid here (wrong customer, or from another server's secret).",
                );
            }
        }
    };
    thread_view(&s, &session, &customers, &id, &phone, None).await
}

async fn thread_view(
    s: &Dashboard,
    session: &Session,
    customers: &[String],
    id: &CustomerId,
    phone: &str,
    done: Option<&str>,
) -> Outcome {
    let v = session.viewer(&s.config);
    match desk::thread(&s.ops, id, phone).await {
        Ok(t) => {
            if t.unread > 0
                && let Err(e) = desk::mark_read(&s.ops, id, phone).await
            {
                return failed(Some(&v), "Unavailable", e);
            }
            let reference = s.config.tenant_ref(id, &t.phone);
            let shown = if v.full_numbers { t.phone.clone() } else { String::new() };
            Outcome::Page(pages::conversation(
                customers,
                id.as_str(),
                &shown,
                Some(pages::ThreadView { thread: &t, reference: &reference, done }),
                &v,
            ))
        }
        Err(e) => failed(Some(&v), "No conversation", e),
    }
}

#[derive(Deserialize)]
struct ReplyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default, rename = "t")]
    reference: String,
    #[serde(default)]
    body: String,
}

/// Answers a tenant from their thread: the same operation as `POST /v1/customers/{id}/messages`, so the answer goes
/// out from the number the tenant wrote to (their sticky sender), ahead of bulk texts.
async fn reply(
    State(s): State<Dashboard>,
    headers: HeaderMap,
    Path(c): Path<String>,
    Form(f): Form<ReplyForm>,
) -> Outcome {
    let (session, id) = match checked_for(&s, &headers, &f.csrf, &c).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    let Some(phone) = s.config.tenant_of(&id, &f.reference) else {
        return not_found(&v, "That thread reference is not valid here.");
    };
    let request = crate::validate::BulkRequest {
        customer: id.to_string(),
        body: f.body,
        recipients: vec![crate::recipients::RawRecipient {
            origin: "to".into(),
            value: phone.clone(),
            vars: Vec::new(),
        }],
        ..Default::default()
    };
    let prepared = match texts::prepare(&request) {
        Ok(p) => p,
        Err(e) => return failed(Some(&v), "Not sent", e),
    };
    match texts::enqueue(&s.ops, prepared, texts::Enqueue::SINGLE, None).await {
        Ok(a) => {
            tracing::info!(customer = %id, by = %session.name, batch = %a.batch_id, "answer queued from the dashboard");
            let customers = match visible_customers(&s, &session).await {
                Ok(ids) => ids,
                Err(o) => return o,
            };
            let done =
                format!("Answer queued (batch {}): it goes out from the number the tenant last wrote to.", a.batch_id);
            thread_view(&s, &session, &customers, &id, &phone, Some(&done)).await
        }
        Err(e) => failed(Some(&v), "Not sent", e),
    }
}

async fn events_index(State(s): State<Dashboard>, headers: HeaderMap) -> Outcome {
    let session = match signed_in(&s, &headers, false).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    match visible_customers(&s, &session).await {
        Ok(ids) => Outcome::Page(pages::events_index(&ids, &v)),
        Err(o) => o,
    }
}

/// A customer's event delivery: where events go, and the dead letters with a button to send them once more.
async fn events_page(State(s): State<Dashboard>, headers: HeaderMap, Path(c): Path<String>) -> Outcome {
    let session = match signed_in(&s, &headers, false).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    let id = match customer_id(&session, &v, &c) {
        Ok(id) => id,
        Err(o) => return o,
    };
    let customer = match crate::ops::customers::get(&s.ops, &id).await {
        Ok(c) => c,
        Err(e) => return failed(Some(&v), "No such customer", e),
    };
    match events::dead_letters(&s.ops, &id).await {
        Ok(dead) => Outcome::Page(pages::events(&customer, &dead, &v)),
        Err(e) => failed(Some(&v), "Unavailable", e),
    }
}

#[derive(Deserialize)]
struct ReplayForm {
    #[serde(default)]
    csrf: String,
    /// One dead letter to replay; none: all of them.
    id: Option<String>,
}

async fn replay(
    State(s): State<Dashboard>,
    headers: HeaderMap,
    Path(c): Path<String>,
    Form(f): Form<ReplayForm>,
) -> Outcome {
    let (session, id) = match checked_for(&s, &headers, &f.csrf, &c).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    let only = f.id.filter(|i| !i.trim().is_empty()).map(|i| vec![i.trim().to_owned()]);
    match events::replay_dead(&s.ops, &id, only.as_deref()).await {
        Ok(queued) => {
            tracing::info!(customer = %id, queued, by = %session.name, "dead letters queued for replay from the dashboard");
            Outcome::Page(pages::replayed(&id, queued, &v))
        }
        Err(e) => failed(Some(&v), "Not replayed", e),
    }
}

async fn consent_index(State(s): State<Dashboard>, headers: HeaderMap) -> Outcome {
    let session = match signed_in(&s, &headers, false).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v = session.viewer(&s.config);
    match visible_customers(&s, &session).await {
        Ok(ids) => Outcome::Page(pages::consent_index(&ids, &v)),
        Err(o) => o,
    }
}

/// The opaque reference a review's form posts: a MAC of the customer and the tenant (the number stays on the server).
fn review_ref(s: &Dashboard, id: &CustomerId, phone: &str) -> String {
    s.config.mac(&["review", id.as_str(), phone])[..22].to_owned()
}

async fn consent_view(s: &Dashboard, session: &Session, id: &CustomerId, done: Option<&str>) -> Outcome {
    let v = session.viewer(&s.config);
    match consent::reviews(&s.ops, id).await {
        Ok(list) => {
            let refs: Vec<String> = list.iter().map(|r| review_ref(s, id, &r.phone)).collect();
            Outcome::Page(pages::consent(id.as_str(), &list, &refs, done, &v))
        }
        Err(e) => failed(Some(&v), "Unavailable", e),
    }
}

async fn consent_page(State(s): State<Dashboard>, headers: HeaderMap, Path(c): Path<String>) -> Outcome {
    let session = match signed_in(&s, &headers, false).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let id = match customer_id(&session, &session.viewer(&s.config), &c) {
        Ok(id) => id,
        Err(o) => return o,
    };
    consent_view(&s, &session, &id, None).await
}

#[derive(Deserialize)]
struct DecideForm {
    #[serde(default)]
    csrf: String,
    /// The review's reference (`review_ref`).
    #[serde(default, rename = "ref")]
    reference: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    note: String,
}

async fn consent_decide(
    State(s): State<Dashboard>,
    headers: HeaderMap,
    Path(c): Path<String>,
    Form(f): Form<DecideForm>,
) -> Outcome {
    let (session, id) = match checked_for(&s, &headers, &f.csrf, &c).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let phone = match consent::reviews(&s.ops, &id).await {
        Ok(list) => list.into_iter().map(|r| r.phone).find(|p| equal(&review_ref(&s, &id, p), &f.reference)),
        Err(e) => return failed(Some(&session.viewer(&s.config)), "Unavailable", e),
    };
    let Some(phone) = phone else {
        let v = session.viewer(&s.config);
        return not_found(&v, "That review is no longer waiting (decided already, or its reference is wrong).");
    };
    match consent::decide(&s.ops, &id, &phone, &f.decision, &f.note, &session.name).await {
        Ok(r) => {
            tracing::info!(customer = %id, by = %session.name, decision = %f.decision, "consent review decided from the dashboard");
            let v = session.viewer(&s.config);
            let what = if r.opted_out { "opted out" } else { "review dismissed" };
            let done = format!("{}: {what}; {} held text(s) released.", v.number(&r.phone), r.held_released);
            consent_view(&s, &session, &id, Some(&done)).await
        }
        Err(e) => failed(Some(&session.viewer(&s.config)), "Not decided", e),
    }
}

#[derive(Deserialize)]
struct OptOutForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    note: String,
}

async fn consent_opt_out(
    State(s): State<Dashboard>,
    headers: HeaderMap,
    Path(c): Path<String>,
    Form(f): Form<OptOutForm>,
) -> Outcome {
    let (session, id) = match checked_for(&s, &headers, &f.csrf, &c).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let note = Some(f.note).filter(|n| !n.trim().is_empty());
    let input = consent::OptOutInput { phone: f.phone, source: f.source, note, at: None };
    match consent::opt_out(&s.ops, &id, input, consent::Via::Dashboard).await {
        Ok(r) => {
            tracing::info!(customer = %id, by = %session.name, "opt-out recorded from the dashboard");
            let v = session.viewer(&s.config);
            let done = format!("{} is opted out.", v.number(&r.phone));
            consent_view(&s, &session, &id, Some(&done)).await
        }
        Err(e) => failed(Some(&session.viewer(&s.config)), "Not recorded", e),
    }
}

async fn consent_export(State(s): State<Dashboard>, headers: HeaderMap, Path(c): Path<String>) -> Response {
    let session = match signed_in(&s, &headers, false).await {
        Ok(x) => x,
        Err(o) => return o.into_response(),
    };
    let id = match customer_id(&session, &session.viewer(&s.config), &c) {
        Ok(id) => id,
        Err(o) => return o.into_response(),
    };
    match consent::export(&s.ops, &id).await {
        Ok(mut rows) => {
            if !session.viewer(&s.config).full_numbers {
                // A scoped viewer's export masks the numbers, as its pages do.
                for r in &mut rows {
                    r.phone = shared::domain::Masked(&r.phone).to_string();
                }
            }
            let csv = consent::export_csv(&rows);
            let headers = [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"consent-{id}.csv\"")),
            ];
            (headers, csv).into_response()
        }
        Err(e) => failed(None, "Unavailable", e).into_response(),
    }
}
