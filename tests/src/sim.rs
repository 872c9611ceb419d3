//! A local imitation of Twilio's 2010-04-01 REST API, faithful enough for Twilio's official SDKs.
//!
//! It speaks the real wire format (form-encoded requests, Basic auth, snake_case JSON with RFC 2822 dates and
//! numbers-as-strings, the legacy error body, list paging with `next_page_uri`) for Messages, IncomingPhoneNumbers
//! and AvailablePhoneNumbers, honours Twilio's test-credential magic numbers, and adds what tests need:
//! configurable latency, injected faults (500s, 429s with `Retry-After`, dropped connections, and "accept then time
//! out": the request takes effect but no response ever comes), and a non-Twilio `GET /_sim/state` that shows every
//! message and number it holds, so tests check invariants from the outside.
//!
//! Subaccounts are real: `POST /Accounts.json` creates one with its own auth token, `GET /Accounts/{sid}.json`
//! returns it (token included) to its parent, the parent's credentials act for it and its own act for it alone,
//! and every webhook about a subaccount's number (inbound messages, status callbacks) is signed with the
//! subaccount's token, as Twilio does. `POST /_sim/accounts/{sid}/rotate` gives one a new token (tests of rotation).

// Handlers return an error `Response` early; boxing it would only add noise to a test server.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use shared::domain::count_segments;
use shared::twilio::types::*;
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub const DEFAULT_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
pub const DEFAULT_AUTH_TOKEN: &str = "simulator-auth-token";
/// Area code of numbers handed out when a search or purchase names none.
pub const DEFAULT_AREA_CODE: &str = "415";

/// Messenger's Twilio client pointed at a simulator at `base`, as the default account with `token`.
pub fn client(base: &str, token: &str, timeout: Duration) -> shared::twilio::TwilioClient {
    shared::twilio::TwilioClient::new(&shared::config::TwilioSettings {
        api_base: base.to_owned(),
        messaging_api_base: base.to_owned(),
        account_sid: Some(shared::domain::AccountSid::parse(DEFAULT_ACCOUNT_SID).expect("default account sid")),
        auth_token: Some(token.to_owned().into()),
        timeout,
    })
    .expect("Twilio client")
}

/// Fault rates for one kind of request, each a probability in [0, 1].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Answer 500 without acting.
    pub error_500: f64,
    /// Answer 429 (code 20429) with `Retry-After`, without acting.
    pub error_429: f64,
    /// Close the connection without answering and without acting.
    pub drop: f64,
    /// Act (create the message / buy the number), then never answer.
    pub accept_then_timeout: f64,
    /// The `Retry-After` value sent with 429s, seconds.
    pub retry_after_secs: u64,
}

/// Simulator settings. All can be changed at run time with `POST /_sim/config` (partial JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SimConfig {
    pub account_sid: String,
    pub auth_token: String,
    pub send_latency_ms: u64,
    pub purchase_latency_ms: u64,
    pub list_latency_ms: u64,
    /// How long releasing a number (`DELETE …/IncomingPhoneNumbers/{sid}`) takes before it acts.
    pub release_latency_ms: u64,
    pub send_faults: Faults,
    pub purchase_faults: Faults,
    /// Faults of `POST /v1/Services/{sid}/PhoneNumbers` (attaching a number to a Messaging Service).
    pub attach_faults: Faults,
    /// The first this-many attach requests answer 500 (deterministic transient failures).
    pub attach_fail_first: u64,
    /// US A2P 10DLC is enforced: a message from a number that is in no Messaging Service is accepted, then fails
    /// with 30034 (reported through its status callback).
    pub a2p_required: bool,
    /// Senders one Messaging Service may hold (Twilio: 400); the next attach fails with 21714.
    pub service_max_numbers: usize,
    /// How long an "accept then time out" request is held open before the connection is closed.
    pub hang_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            account_sid: DEFAULT_ACCOUNT_SID.into(),
            auth_token: DEFAULT_AUTH_TOKEN.into(),
            send_latency_ms: 0,
            purchase_latency_ms: 0,
            list_latency_ms: 0,
            release_latency_ms: 0,
            send_faults: Faults::default(),
            purchase_faults: Faults::default(),
            attach_faults: Faults::default(),
            attach_fail_first: 0,
            a2p_required: false,
            service_max_numbers: 400,
            hang_ms: 120_000,
        }
    }
}

/// A message the simulator accepted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimMessage {
    pub sid: String,
    pub account_sid: String,
    pub from: String,
    pub to: String,
    pub body: String,
    pub status: String,
    pub direction: String,
    pub num_segments: u32,
    pub status_callback: Option<String>,
    pub date_created: DateTime<Utc>,
    pub date_sent: Option<DateTime<Utc>>,
    pub messaging_service_sid: Option<String>,
    /// Set when the carrier reported a failure (e.g. 30034 for an unregistered sender under A2P).
    pub error_code: Option<u32>,
}

/// A number the simulator sold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimNumber {
    pub sid: String,
    pub account_sid: String,
    pub phone_number: String,
    pub friendly_name: String,
    pub sms_url: Option<String>,
    pub date_created: DateTime<Utc>,
    pub released: bool,
    /// The Messaging Service whose sender pool it is in, and since when.
    pub service_sid: Option<String>,
    pub attached_at: Option<DateTime<Utc>>,
}

/// One send request as the simulator saw it: when, to whom, and what it did with it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendAttempt {
    pub to: String,
    pub at_ms: i64,
    pub outcome: String,
}

#[derive(Default)]
struct Store {
    messages: Vec<SimMessage>,
    by_to: HashMap<String, Vec<usize>>,
    by_sid: HashMap<String, usize>,
    numbers: Vec<SimNumber>,
    /// Index into `numbers` of each number not released, by phone number (sends look their sender up here).
    live: HashMap<String, usize>,
    /// Next line number to hand out per area code.
    next_line: HashMap<String, u32>,
    attempts: Vec<SendAttempt>,
    purchase_requests: u64,
    inbound: Vec<SimInbound>,
    /// (our number, recipient) pairs where the recipient replied STOP: Twilio refuses those sends with 21610.
    opted_out: std::collections::HashSet<(String, String)>,
    /// Subaccounts of the main account.
    accounts: Vec<SimAccount>,
    services: Vec<SimService>,
    attach_requests: u64,
    /// `GET /Accounts/{sid}.json` requests (how often a client looked an account up).
    account_fetches: u64,
}

/// A Messaging Service (its sender pool is the numbers whose `service_sid` names it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimService {
    pub sid: String,
    pub account_sid: String,
    pub friendly_name: String,
    pub date_created: DateTime<Utc>,
}

/// A subaccount the simulator created.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimAccount {
    pub sid: String,
    pub friendly_name: String,
    pub auth_token: String,
    pub owner_account_sid: String,
    pub status: String,
    pub date_created: DateTime<Utc>,
}

/// A message a "handset" sent to one of our numbers through `POST /_sim/inbound`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimInbound {
    pub sid: String,
    pub from: String,
    pub to: String,
    pub body: String,
    /// The status of the webhook call to the number's SmsUrl (0 if there was none).
    pub webhook_status: u16,
}

/// Everything `GET /_sim/state` returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimState {
    pub messages: Vec<SimMessage>,
    pub numbers: Vec<SimNumber>,
    pub send_attempts: Vec<SendAttempt>,
    pub purchase_requests: u64,
    pub inbound: Vec<SimInbound>,
    pub accounts: Vec<SimAccount>,
    pub account_fetches: u64,
    pub services: Vec<SimService>,
    /// `POST /v1/Services/{sid}/PhoneNumbers` requests, faults included.
    pub attach_requests: u64,
    pub config: SimConfig,
}

/// A running simulator: shared state and settings.
#[derive(Clone)]
pub struct Sim {
    store: Arc<Mutex<Store>>,
    config: Arc<RwLock<SimConfig>>,
}

impl Store {
    /// The number not released with this phone number.
    fn live_number(&self, phone: &str) -> Option<&SimNumber> {
        self.live.get(phone).map(|&i| &self.numbers[i])
    }
}

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        Self { store: Arc::default(), config: Arc::new(RwLock::new(config)) }
    }

    pub fn config(&self) -> SimConfig {
        self.config.read().unwrap().clone()
    }

    pub fn set_config(&self, c: SimConfig) {
        *self.config.write().unwrap() = c;
    }

    pub fn state(&self, with_messages: bool) -> SimState {
        let s = self.store.lock().unwrap();
        SimState {
            messages: if with_messages { s.messages.clone() } else { Vec::new() },
            numbers: s.numbers.clone(),
            send_attempts: if with_messages { s.attempts.clone() } else { Vec::new() },
            purchase_requests: s.purchase_requests,
            inbound: s.inbound.clone(),
            accounts: s.accounts.clone(),
            account_fetches: s.account_fetches,
            services: s.services.clone(),
            attach_requests: s.attach_requests,
            config: self.config(),
        }
    }

    /// The auth token that signs `account`'s requests and webhooks (`None`: not the main account or one of its
    /// subaccounts).
    pub fn token_of(&self, account: &str) -> Option<String> {
        let cfg = self.config.read().unwrap();
        if account == cfg.account_sid {
            return Some(cfg.auth_token.clone());
        }
        self.store.lock().unwrap().accounts.iter().find(|a| a.sid == account).map(|a| a.auth_token.clone())
    }

    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/Messages.json", post(create_message).get(list_messages))
            .route("/Messages/{sid}", get(fetch_message))
            .route("/IncomingPhoneNumbers.json", post(buy_number).get(list_numbers))
            .route("/IncomingPhoneNumbers/Local.json", post(buy_number).get(list_numbers))
            .route("/IncomingPhoneNumbers/{sid}", get(fetch_number).delete(release_number))
            .route("/AvailablePhoneNumbers/{country}/Local.json", get(available_numbers));
        Router::new()
            .route("/2010-04-01/Accounts.json", post(create_account).get(list_accounts))
            .route("/2010-04-01/Accounts/{account}", get(fetch_account))
            .nest("/2010-04-01/Accounts/{account}", api)
            .route("/v1/Services", post(create_service))
            .route("/v1/Services/{service}", get(fetch_service))
            .route("/v1/Services/{service}/PhoneNumbers", post(attach_number).get(list_service_numbers))
            .route("/v1/Services/{service}/PhoneNumbers/{number}", get(fetch_service_number).delete(detach_number))
            .route("/_sim/accounts/{account}/rotate", post(rotate_account_token))
            .route("/_sim/status-callback", post(sim_status_callback))
            .route("/_sim/state", get(sim_state))
            .route("/_sim/config", get(sim_config).post(set_sim_config))
            .route("/_sim/inbound", post(sim_inbound))
            .route("/healthz", get(|| async { "ok" }))
            .fallback(|| async { twilio_error(404, 20404, "The requested resource was not found") })
            .with_state(self.clone())
    }
}

/// Serves the simulator on `listener` until `shutdown` resolves. Each connection is served by hyper directly so
/// that a handler can drop its connection without an answer (fault injection).
pub async fn serve(listener: TcpListener, sim: Sim, shutdown: impl std::future::Future<Output = ()>) {
    use hyper_util::rt::TokioIo;
    use tower::Service;
    let router = sim.router();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("simulator accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        tokio::spawn(async move {
            let kill = Arc::new(Notify::new());
            let k = kill.clone();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnKill(k.clone()));
                router.clone().call(req.map(Body::new))
            });
            let conn =
                hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                // Dropping the connection future closes the socket with no response written.
                _ = kill.notified() => {}
            }
        });
    }
}

/// Starts a simulator on a free loopback port in this process; returns its base URL.
pub async fn spawn(config: SimConfig) -> (Sim, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind simulator");
    let addr = listener.local_addr().unwrap();
    let sim = Sim::new(config);
    tokio::spawn(serve(listener, sim.clone(), std::future::pending()));
    (sim, addr)
}

#[derive(Clone)]
struct ConnKill(Arc<Notify>);

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn twilio_error(status: u16, code: u32, message: &str) -> Response {
    let body = ErrorBody {
        code: Some(code),
        message: Some(message.to_owned()),
        more_info: Some(format!("https://www.twilio.com/docs/errors/{code}")),
        status: Some(status),
    };
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

fn new_sid(prefix: &str) -> String {
    let v: u128 = rand::rng().random();
    format!("{prefix}{v:032x}")
}

fn is_account_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("AC") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_e164(s: &str) -> bool {
    s.len() >= 8 && s.len() <= 16 && s.starts_with('+') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// The `(user, password)` of a Basic `Authorization` header.
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let raw = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())?;
    let (user, pass) = raw.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

fn unauthorized() -> Response {
    let mut r = twilio_error(401, 20003, "Authenticate");
    r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Basic realm=\"Twilio API\""));
    r
}

/// Checks Basic auth, and that the caller may act for the account in the path: the main account's credentials
/// act for it and for its subaccounts, a subaccount's own credentials for that subaccount only. An account that is
/// neither is not found.
fn authorize(sim: &Sim, headers: &HeaderMap, account: &str) -> Result<(), Response> {
    let Some((user, pass)) = basic_auth(headers) else { return Err(unauthorized()) };
    let main = sim.config().account_sid;
    if sim.token_of(&user).is_none_or(|t| t != pass) {
        return Err(unauthorized());
    }
    let sub = sim.store.lock().unwrap().accounts.iter().any(|a| a.sid == account && a.status != "closed");
    let allowed = if user == main { account == main || sub } else { account == user };
    if !is_account_sid(account) || !allowed {
        return Err(twilio_error(404, 20404, "The requested resource was not found"));
    }
    Ok(())
}

/// Authorizes a list request, then waits the configured list latency.
async fn authorize_list(sim: &Sim, headers: &HeaderMap, account: &str) -> Result<(), Response> {
    authorize(sim, headers, account)?;
    let latency = sim.config().list_latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    Ok(())
}

/// Parses a form body keeping repeated keys.
fn form(body: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

fn field<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

enum Fault {
    None,
    E500,
    E429(u64),
    Drop,
    AcceptThenTimeout,
}

fn roll(f: &Faults) -> Fault {
    let x: f64 = rand::rng().random();
    let mut edge = f.error_500;
    if x < edge {
        return Fault::E500;
    }
    edge += f.error_429;
    if x < edge {
        return Fault::E429(f.retry_after_secs);
    }
    edge += f.drop;
    if x < edge {
        return Fault::Drop;
    }
    edge += f.accept_then_timeout;
    if x < edge {
        return Fault::AcceptThenTimeout;
    }
    Fault::None
}

fn fault_response(f: &Fault) -> Option<Response> {
    match f {
        Fault::E500 => Some(twilio_error(500, 20500, "An internal server error has occurred")),
        Fault::E429(secs) => {
            let mut r = twilio_error(429, 20429, "Too Many Requests");
            r.headers_mut().insert("retry-after", HeaderValue::from_str(&secs.to_string()).unwrap());
            Some(r)
        }
        _ => None,
    }
}

/// Never answers: closes the connection now (`Drop`) or after `hang` (`AcceptThenTimeout`).
async fn vanish(kill: &ConnKill, hang: Duration) -> Response {
    tokio::time::sleep(hang).await;
    kill.0.notify_one();
    std::future::pending::<()>().await;
    unreachable!()
}

fn message_json(m: &SimMessage) -> Message {
    let uri = format!("/2010-04-01/Accounts/{}/Messages/{}.json", m.account_sid, m.sid);
    Message {
        account_sid: Some(m.account_sid.clone()),
        api_version: Some("2010-04-01".into()),
        body: Some(m.body.clone()),
        date_created: Some(m.date_created),
        date_sent: m.date_sent,
        date_updated: Some(m.date_sent.unwrap_or(m.date_created)),
        direction: Some(m.direction.clone()),
        error_code: m.error_code.map(i64::from),
        error_message: m.error_code.and_then(|c| shared::twilio::error::describe(c).map(str::to_owned)),
        from: Some(m.from.clone()),
        messaging_service_sid: m.messaging_service_sid.clone(),
        num_media: Some("0".into()),
        num_segments: Some(m.num_segments.to_string()),
        price: None,
        price_unit: Some("USD".into()),
        sid: Some(m.sid.clone()),
        status: Some(m.status.clone()),
        subresource_uris: Some(serde_json::json!({
            "media": format!("/2010-04-01/Accounts/{}/Messages/{}/Media.json", m.account_sid, m.sid),
            "feedback": format!("/2010-04-01/Accounts/{}/Messages/{}/Feedback.json", m.account_sid, m.sid),
        })),
        to: Some(m.to.clone()),
        uri: Some(uri),
    }
}

fn pretty_number(n: &str) -> String {
    if n.len() == 12 && n.starts_with("+1") { format!("({}) {}-{}", &n[2..5], &n[5..8], &n[8..]) } else { n.to_owned() }
}

fn caps() -> Capabilities {
    Capabilities { voice: true, sms: true, mms: true, fax: false }
}

fn number_json(n: &SimNumber) -> IncomingPhoneNumber {
    IncomingPhoneNumber {
        account_sid: Some(n.account_sid.clone()),
        address_requirements: Some("none".into()),
        api_version: Some("2010-04-01".into()),
        beta: Some(false),
        capabilities: Some(caps()),
        date_created: Some(n.date_created),
        date_updated: Some(n.date_created),
        friendly_name: Some(n.friendly_name.clone()),
        phone_number: Some(n.phone_number.clone()),
        origin: Some("twilio".into()),
        sid: Some(n.sid.clone()),
        sms_application_sid: Some(String::new()),
        sms_fallback_method: Some("POST".into()),
        sms_fallback_url: Some(String::new()),
        sms_method: Some("POST".into()),
        sms_url: Some(n.sms_url.clone().unwrap_or_default()),
        status_callback: Some(String::new()),
        status_callback_method: Some("POST".into()),
        uri: Some(format!("/2010-04-01/Accounts/{}/IncomingPhoneNumbers/{}.json", n.account_sid, n.sid)),
        voice_receive_mode: Some("voice".into()),
        voice_application_sid: Some(String::new()),
        voice_caller_id_lookup: Some(false),
        voice_fallback_method: Some("POST".into()),
        voice_method: Some("POST".into()),
        emergency_status: Some("Inactive".into()),
        emergency_address_status: Some("unregistered".into()),
        status: Some("in-use".into()),
        kind: Some("local".into()),
        ..Default::default()
    }
}

/// Paging: `PageSize` (default 50, max 1000), `Page`, `PageToken` (`PA<offset>`). Builds the envelope with the
/// other query parameters carried into every page URI.
fn page_of<T: Clone>(items: &[T], path: &str, query: &[(String, String)]) -> (Vec<T>, PageMeta) {
    let size = field(query, "PageSize").and_then(|v| v.parse::<usize>().ok()).unwrap_or(50).clamp(1, 1000);
    let page = field(query, "Page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    let offset = field(query, "PageToken")
        .and_then(|t| t.strip_prefix("PA"))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(page * size);
    let slice: Vec<T> = items.iter().skip(offset).take(size).cloned().collect();
    let keep: Vec<(String, String)> =
        query.iter().filter(|(k, _)| k != "Page" && k != "PageSize" && k != "PageToken").cloned().collect();
    let uri_for = |p: usize, token: Option<usize>| {
        let mut q = keep.clone();
        q.push(("PageSize".into(), size.to_string()));
        q.push(("Page".into(), p.to_string()));
        if let Some(t) = token {
            q.push(("PageToken".into(), format!("PA{t}")));
        }
        format!("{path}?{}", serde_urlencoded::to_string(&q).unwrap())
    };
    let next = (offset + slice.len() < items.len()).then(|| uri_for(page + 1, Some(offset + slice.len())));
    let prev = (page > 0).then(|| uri_for(page - 1, Some(offset.saturating_sub(size))));
    let meta = PageMeta {
        first_page_uri: uri_for(0, None),
        next_page_uri: next,
        previous_page_uri: prev,
        page,
        page_size: size,
        start: offset,
        end: if slice.is_empty() { offset } else { offset + slice.len() - 1 },
        uri: uri_for(page, (offset != page * size).then_some(offset)),
    };
    (slice, meta)
}

struct PageMeta {
    first_page_uri: String,
    next_page_uri: Option<String>,
    previous_page_uri: Option<String>,
    page: usize,
    page_size: usize,
    start: usize,
    end: usize,
    uri: String,
}

fn envelope<R: Serialize>(records: R, m: PageMeta) -> Response {
    let page = Page {
        records,
        first_page_uri: Some(m.first_page_uri),
        next_page_uri: m.next_page_uri,
        previous_page_uri: m.previous_page_uri,
        page: Some(m.page as u64),
        page_size: Some(m.page_size as u64),
        start: Some(m.start as u64),
        end: Some(m.end as u64),
        uri: Some(m.uri),
    };
    (StatusCode::OK, Json(page)).into_response()
}

fn parse_query(raw: Option<String>) -> Vec<(String, String)> {
    raw.map(|q| serde_urlencoded::from_str(&q).unwrap_or_default()).unwrap_or_default()
}

/// Twilio's date filters take `YYYY-MM-DD` (or a full ISO timestamp).
fn parse_filter_date(v: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Some(d.and_hms_opt(0, 0, 0)?.and_utc());
    }
    DateTime::parse_from_rfc3339(v).ok().map(|t| t.with_timezone(&Utc))
}

// ---------------------------------------------------------------------------------------------------------------
// Messages

async fn create_message(
    State(sim): State<Sim>,
    Path(account): Path<String>,
    Extension(kill): Extension<ConnKill>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, &account) {
        return r;
    }
    let f = form(&body);
    let cfg = sim.config();
    let to = field(&f, "To").unwrap_or("").to_owned();
    let fault = roll(&cfg.send_faults);
    let outcome = match fault {
        Fault::None => "normal",
        Fault::E500 => "500",
        Fault::E429(_) => "429",
        Fault::Drop => "drop",
        Fault::AcceptThenTimeout => "accept_then_timeout",
    };
    sim.store.lock().unwrap().attempts.push(SendAttempt {
        to: to.clone(),
        at_ms: Utc::now().timestamp_millis(),
        outcome: outcome.into(),
    });
    if let Some(r) = fault_response(&fault) {
        return r;
    }
    if let Fault::Drop = fault {
        return vanish(&kill, Duration::ZERO).await;
    }
    if cfg.send_latency_ms > 0 && !matches!(fault, Fault::AcceptThenTimeout) {
        tokio::time::sleep(Duration::from_millis(cfg.send_latency_ms)).await;
    }
    let result = accept_message(&sim, &account, &f, cfg.a2p_required);
    if let Fault::AcceptThenTimeout = fault {
        return vanish(&kill, Duration::from_millis(cfg.hang_ms)).await;
    }
    match result {
        Ok(m) => (StatusCode::CREATED, Json(message_json(&m))).into_response(),
        Err(r) => r,
    }
}

/// POSTs a form to a webhook the way Twilio does: `X-Twilio-Signature` and `I-Twilio-Idempotency-Token`.
pub async fn post_signed(token: &str, url: &str, params: &[(String, String)]) -> Result<(u16, String), reqwest::Error> {
    let signature = shared::twilio::signature::compute(token, url, params);
    let resp = crate::http()
        .post(url)
        .header("X-Twilio-Signature", signature)
        .header("I-Twilio-Idempotency-Token", new_sid("idem"))
        .form(params)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

/// `POST /_sim/inbound` `{"from", "to", "body"}`: a handset texts one of our numbers. Opt-out keywords are honoured
/// as Twilio does (later sends from that number to that handset fail with 21610), and the number's SmsUrl is called
/// with Twilio's webhook parameters, signed.
#[derive(Deserialize)]
struct InboundRequest {
    from: String,
    to: String,
    body: String,
}

async fn sim_inbound(State(sim): State<Sim>, Json(req): Json<InboundRequest>) -> Response {
    let cfg = sim.config();
    let sid = new_sid("SM");
    let keyword = req.body.trim().to_ascii_uppercase();
    let (number, sms_url) = {
        let mut store = sim.store.lock().unwrap();
        let number = store.live_number(&req.to).cloned();
        let pair = (req.to.clone(), req.from.clone());
        if ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"].contains(&keyword.as_str()) {
            store.opted_out.insert(pair);
        } else if ["START", "YES", "UNSTOP"].contains(&keyword.as_str()) {
            store.opted_out.remove(&pair);
        }
        let url = number.as_ref().and_then(|n| n.sms_url.clone()).filter(|u| !u.is_empty());
        (number, url)
    };
    let Some(number) = number else { return twilio_error(404, 20404, "no such number") };
    let mut webhook_status = 0;
    if let Some(url) = sms_url {
        let params: Vec<(String, String)> = [
            ("AccountSid", number.account_sid.as_str()),
            ("ApiVersion", "2010-04-01"),
            ("Body", req.body.as_str()),
            ("From", req.from.as_str()),
            ("FromCountry", "US"),
            ("MessageSid", sid.as_str()),
            ("NumMedia", "0"),
            ("NumSegments", "1"),
            ("SmsMessageSid", sid.as_str()),
            ("SmsSid", sid.as_str()),
            ("SmsStatus", "received"),
            ("To", req.to.as_str()),
            ("ToCountry", "US"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let token = sim.token_of(&number.account_sid).unwrap_or(cfg.auth_token);
        webhook_status = post_signed(&token, &url, &params).await.map(|(s, _)| s).unwrap_or(0);
    }
    sim.store.lock().unwrap().inbound.push(SimInbound {
        sid: sid.clone(),
        from: req.from,
        to: req.to,
        body: req.body,
        webhook_status,
    });
    Json(serde_json::json!({ "sid": sid, "webhook_status": webhook_status })).into_response()
}

/// Validates a create request the way Twilio does and stores the message.
fn accept_message(
    sim: &Sim,
    account: &str,
    f: &[(String, String)],
    a2p_required: bool,
) -> Result<SimMessage, Response> {
    let to = field(f, "To").unwrap_or("");
    let from = field(f, "From").unwrap_or("");
    let body = field(f, "Body").unwrap_or("");
    if to.is_empty() {
        return Err(twilio_error(400, 21604, "A 'To' phone number is required."));
    }
    if from.is_empty() && field(f, "MessagingServiceSid").is_none() {
        return Err(twilio_error(400, 21603, "A 'From' phone number is required."));
    }
    if body.is_empty() && field(f, "MediaUrl").is_none() && field(f, "ContentSid").is_none() {
        return Err(twilio_error(400, 21602, "Message body is required."));
    }
    if body.chars().count() > 1600 {
        return Err(twilio_error(400, 21617, "The concatenated message body exceeds the 1600 character limit."));
    }
    if !is_e164(to) {
        return Err(twilio_error(400, 21211, &format!("The 'To' number {to} is not a valid phone number.")));
    }
    // Twilio's test-credential magic numbers.
    match from {
        "+15005550001" => {
            return Err(twilio_error(
                400,
                21212,
                "The 'From' number +15005550001 is not a valid phone number, shortcode, or alphanumeric sender ID.",
            ));
        }
        "+15005550007" => {
            return Err(twilio_error(
                400,
                21606,
                "The 'From' phone number provided (+15005550007) is not a valid message-capable Twilio phone number for this destination.",
            ));
        }
        "+15005550008" => {
            return Err(twilio_error(
                400,
                21611,
                "This 'From' number has exceeded the maximum number of queued messages.",
            ));
        }
        _ => {}
    }
    match to {
        "+15005550001" => {
            return Err(twilio_error(400, 21211, "The 'To' number +15005550001 is not a valid phone number."));
        }
        "+15005550002" => {
            return Err(twilio_error(
                400,
                21612,
                "The 'To' phone number: +15005550002, is not currently reachable using the 'From' phone number via SMS.",
            ));
        }
        "+15005550003" => {
            return Err(twilio_error(
                400,
                21408,
                "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: +15005550003.",
            ));
        }
        "+15005550004" => {
            return Err(twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"));
        }
        _ if sim.store.lock().unwrap().opted_out.contains(&(from.to_owned(), to.to_owned())) => {
            return Err(twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"));
        }
        "+15005550009" => {
            return Err(twilio_error(400, 21614, "'To' number is not a valid mobile number"));
        }
        _ => {}
    }
    let mut store = sim.store.lock().unwrap();
    let service = field(f, "MessagingServiceSid").map(str::to_owned);
    if let Some(s) = &service
        && !store.services.iter().any(|x| &x.sid == s && x.account_sid == account)
    {
        return Err(twilio_error(400, 21701, "The Messaging Service does not exist"));
    }
    let owned = from == "+15005550006" || store.live_number(from).is_some_and(|n| n.account_sid == account);
    if !owned && !from.is_empty() {
        return Err(twilio_error(
            400,
            21606,
            &format!(
                "The 'From' phone number provided ({from}) is not a valid message-capable Twilio phone number for this destination."
            ),
        ));
    }
    let now = Utc::now();
    let m = SimMessage {
        sid: new_sid("SM"),
        account_sid: account.to_owned(),
        from: from.to_owned(),
        to: to.to_owned(),
        body: body.to_owned(),
        status: "queued".into(),
        direction: "outbound-api".into(),
        num_segments: count_segments(body).segments.max(1),
        status_callback: field(f, "StatusCallback").map(str::to_owned),
        date_created: now,
        date_sent: None,
        messaging_service_sid: service.clone(),
        error_code: None,
    };
    let idx = store.messages.len();
    store.by_to.entry(m.to.clone()).or_default().push(idx);
    store.by_sid.insert(m.sid.clone(), idx);
    store.messages.push(m.clone());
    // The simulated carrier hands every message over at once: reads after the create see it as sent. Under A2P
    // 10DLC, a number in no Messaging Service is an unregistered sender: carriers drop its messages (30034).
    let registered = store.live_number(from).is_some_and(|n| n.service_sid.is_some());
    let unregistered = a2p_required && !registered;
    let stored = &mut store.messages[idx];
    if unregistered {
        stored.status = "undelivered".into();
        stored.error_code = Some(shared::twilio::codes::UNREGISTERED_SENDER);
    } else {
        stored.status = "sent".into();
    }
    stored.date_sent = Some(now);
    let failed = stored.clone();
    drop(store);
    if unregistered && let Some(url) = failed.status_callback.clone() {
        let sim = sim.clone();
        tokio::spawn(async move {
            send_status_callback(&sim, &failed, &url, "undelivered", Some(shared::twilio::codes::UNREGISTERED_SENDER))
                .await;
        });
    }
    let mut m = m;
    if m.messaging_service_sid.is_some() {
        // Twilio's initial status for a message sent through a Messaging Service.
        m.status = "accepted".into();
    }
    Ok(m)
}

async fn list_messages(
    State(sim): State<Sim>,
    Path(account): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = authorize_list(&sim, &headers, &account).await {
        return r;
    }
    let q = parse_query(raw);
    let to = field(&q, "To");
    let from = field(&q, "From");
    let on = field(&q, "DateSent").and_then(parse_filter_date);
    let before = field(&q, "DateSent<").and_then(parse_filter_date);
    let after = field(&q, "DateSent>").and_then(parse_filter_date);
    let store = sim.store.lock().unwrap();
    let candidates: Box<dyn Iterator<Item = &SimMessage>> = match to {
        Some(t) => Box::new(store.by_to.get(t).into_iter().flatten().map(|&i| &store.messages[i])),
        None => Box::new(store.messages.iter()),
    };
    let mut matched: Vec<Message> = candidates
        .filter(|m| m.account_sid == account)
        .filter(|m| from.is_none_or(|f| m.from == f))
        .filter(|m| {
            let sent = m.date_sent;
            on.is_none_or(|d| sent.is_some_and(|s| s.date_naive() == d.date_naive()))
                && before.is_none_or(|d| sent.is_some_and(|s| s < d))
                && after.is_none_or(|d| sent.is_some_and(|s| s >= d))
        })
        .map(message_json)
        .collect();
    drop(store);
    // Newest first, as Twilio lists them.
    matched.reverse();
    let path = format!("/2010-04-01/Accounts/{account}/Messages.json");
    let (slice, meta) = page_of(&matched, &path, &q);
    envelope(Messages { messages: slice }, meta)
}

async fn fetch_message(
    State(sim): State<Sim>,
    Path((account, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, &account) {
        return r;
    }
    let sid = sid.trim_end_matches(".json");
    let store = sim.store.lock().unwrap();
    match store.by_sid.get(sid).map(|&i| &store.messages[i]).filter(|m| m.account_sid == account) {
        Some(m) => (StatusCode::OK, Json(message_json(m))).into_response(),
        None => twilio_error(
            404,
            20404,
            &format!("The requested resource /2010-04-01/Accounts/{account}/Messages/{sid}.json was not found"),
        ),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Numbers

fn next_free_number(store: &mut Store, area: &str) -> String {
    loop {
        let line = store.next_line.entry(area.to_owned()).or_insert(0);
        *line += 1;
        // Exchange 2xx keeps clear of the 555 range reserved for fiction.
        let candidate = format!("+1{area}2{:06}", *line);
        if !store.live.contains_key(&candidate) {
            return candidate;
        }
    }
}

async fn buy_number(
    State(sim): State<Sim>,
    Path(account): Path<String>,
    Extension(kill): Extension<ConnKill>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, &account) {
        return r;
    }
    let f = form(&body);
    let cfg = sim.config();
    sim.store.lock().unwrap().purchase_requests += 1;
    let fault = roll(&cfg.purchase_faults);
    if let Some(r) = fault_response(&fault) {
        return r;
    }
    if let Fault::Drop = fault {
        return vanish(&kill, Duration::ZERO).await;
    }
    if cfg.purchase_latency_ms > 0 && !matches!(fault, Fault::AcceptThenTimeout) {
        tokio::time::sleep(Duration::from_millis(cfg.purchase_latency_ms)).await;
    }
    let result = accept_purchase(&sim, &account, &f);
    if let Fault::AcceptThenTimeout = fault {
        return vanish(&kill, Duration::from_millis(cfg.hang_ms)).await;
    }
    match result {
        Ok(n) => (StatusCode::CREATED, Json(number_json(&n))).into_response(),
        Err(r) => r,
    }
}

fn accept_purchase(sim: &Sim, account: &str, f: &[(String, String)]) -> Result<SimNumber, Response> {
    let phone = field(f, "PhoneNumber");
    let area = field(f, "AreaCode");
    let friendly = field(f, "FriendlyName");
    if friendly.is_some_and(|n| n.chars().count() > 64) {
        return Err(twilio_error(400, 21401, "FriendlyName must be 64 characters or fewer."));
    }
    let mut store = sim.store.lock().unwrap();
    let number = match (phone, area) {
        (Some("+15005550000"), _) => {
            return Err(twilio_error(400, 21422, "PhoneNumber is not available"));
        }
        (Some("+15005550001"), _) => {
            return Err(twilio_error(400, 21421, "PhoneNumber is invalid"));
        }
        (Some(p), _) => {
            if !is_e164(p) {
                return Err(twilio_error(400, 21421, "PhoneNumber is invalid"));
            }
            if p != "+15005550006" && store.live.contains_key(p) {
                return Err(twilio_error(400, 21422, "PhoneNumber is not available"));
            }
            p.to_owned()
        }
        (None, Some("533")) => {
            return Err(twilio_error(400, 21452, "No phone numbers found in area code 533"));
        }
        (None, Some("500")) => "+15005550006".to_owned(),
        (None, Some(a)) => {
            if a.len() != 3 || !a.bytes().all(|b| b.is_ascii_digit()) {
                return Err(twilio_error(400, 21451, &format!("AreaCode {a} is invalid")));
            }
            next_free_number(&mut store, a)
        }
        (None, None) => {
            return Err(twilio_error(400, 21450, "You must provide an AreaCode or a PhoneNumber to purchase."));
        }
    };
    let n = SimNumber {
        sid: new_sid("PN"),
        account_sid: account.to_owned(),
        friendly_name: friendly.map(str::to_owned).unwrap_or_else(|| pretty_number(&number)),
        phone_number: number,
        sms_url: field(f, "SmsUrl").map(str::to_owned),
        date_created: Utc::now(),
        released: false,
        service_sid: None,
        attached_at: None,
    };
    let at = store.numbers.len();
    store.live.insert(n.phone_number.clone(), at);
    store.numbers.push(n.clone());
    Ok(n)
}

async fn list_numbers(
    State(sim): State<Sim>,
    Path(account): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = authorize_list(&sim, &headers, &account).await {
        return r;
    }
    let q = parse_query(raw);
    let friendly = field(&q, "FriendlyName");
    let digits: Option<String> = field(&q, "PhoneNumber").map(|p| p.chars().filter(char::is_ascii_digit).collect());
    let matched: Vec<IncomingPhoneNumber> = sim
        .store
        .lock()
        .unwrap()
        .numbers
        .iter()
        .filter(|n| !n.released && n.account_sid == account)
        .filter(|n| friendly.is_none_or(|f| n.friendly_name == f))
        .filter(|n| digits.as_deref().is_none_or(|d| n.phone_number.contains(d)))
        .map(number_json)
        .collect();
    let path = format!("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json");
    let (slice, meta) = page_of(&matched, &path, &q);
    envelope(IncomingPhoneNumbers { incoming_phone_numbers: slice }, meta)
}

async fn fetch_number(
    State(sim): State<Sim>,
    Path((account, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, &account) {
        return r;
    }
    let sid = sid.trim_end_matches(".json");
    let store = sim.store.lock().unwrap();
    match store.numbers.iter().find(|n| n.sid == sid && n.account_sid == account && !n.released) {
        Some(n) => (StatusCode::OK, Json(number_json(n))).into_response(),
        None => twilio_error(404, 20404, "The requested resource was not found"),
    }
}

async fn release_number(
    State(sim): State<Sim>,
    Path((account, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, &account) {
        return r;
    }
    // Twilio finishes a DELETE it received even if the client stops waiting: the work runs in its own task.
    let latency = sim.config().release_latency_ms;
    let sid = sid.trim_end_matches(".json").to_owned();
    let work = tokio::spawn(async move {
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let mut store = sim.store.lock().unwrap();
        match store.numbers.iter_mut().find(|n| n.sid == sid && n.account_sid == account && !n.released) {
            Some(n) => {
                // A released number leaves its Messaging Service too.
                n.released = true;
                n.service_sid = None;
                let phone = n.phone_number.clone();
                store.live.remove(&phone);
                true
            }
            None => false,
        }
    });
    match work.await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        _ => twilio_error(404, 20404, "The requested resource was not found"),
    }
}

async fn available_numbers(
    State(sim): State<Sim>,
    Path((account, country)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, &account) {
        return r;
    }
    let q = parse_query(raw);
    let area = field(&q, "AreaCode").unwrap_or(DEFAULT_AREA_CODE).to_owned();
    let size = field(&q, "PageSize").and_then(|v| v.parse::<usize>().ok()).unwrap_or(50).clamp(1, 1000);
    let path = format!("/2010-04-01/Accounts/{account}/AvailablePhoneNumbers/{country}/Local.json");
    let mut found = Vec::new();
    if country == "US" && area != "533" && area.len() == 3 {
        let store = sim.store.lock().unwrap();
        let mut line = store.next_line.get(&area).copied().unwrap_or(0);
        while found.len() < size {
            line += 1;
            let candidate = format!("+1{area}2{line:06}");
            if store.live.contains_key(&candidate) {
                continue;
            }
            found.push(AvailablePhoneNumber {
                friendly_name: Some(pretty_number(&candidate)),
                phone_number: Some(candidate),
                lata: Some("722".into()),
                locality: Some("San Francisco".into()),
                rate_center: Some("SNFC CNTL".into()),
                latitude: Some(serde_json::json!("37.770000")),
                longitude: Some(serde_json::json!("-122.410000")),
                region: Some("CA".into()),
                postal_code: Some("94103".into()),
                iso_country: Some("US".into()),
                address_requirements: Some("none".into()),
                beta: Some(false),
                capabilities: Some(caps()),
            });
        }
    }
    let (slice, mut meta) = page_of(&found, &path, &q);
    // Twilio does not page searches: one page of results, no next page.
    meta.next_page_uri = None;
    envelope(AvailablePhoneNumbers { available_phone_numbers: slice }, meta)
}

// ---------------------------------------------------------------------------------------------------------------
// Messaging Services (messaging.twilio.com/v1): services and their sender pools

/// The account whose credentials are on the request (the v1 APIs act on the authenticated account), or 401.
fn v1_account(sim: &Sim, headers: &HeaderMap) -> Result<String, Response> {
    match basic_auth(headers) {
        Some((user, pass)) if sim.token_of(&user).is_some_and(|t| t == pass) => Ok(user),
        _ => Err(unauthorized()),
    }
}

/// Dates in the v1 APIs: ISO 8601, UTC, no fraction.
fn iso(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn v1_not_found(path: &str) -> Response {
    twilio_error(404, 20404, &format!("The requested resource {path} was not found"))
}

fn service_json(base: &str, s: &SimService) -> Service {
    let url = format!("{base}/v1/Services/{}", s.sid);
    Service {
        sid: Some(s.sid.clone()),
        account_sid: Some(s.account_sid.clone()),
        friendly_name: Some(s.friendly_name.clone()),
        date_created: Some(iso(&s.date_created)),
        date_updated: Some(iso(&s.date_created)),
        status_callback: None,
        sticky_sender: Some(true),
        smart_encoding: Some(false),
        us_app_to_person_registered: Some(true),
        links: Some(serde_json::json!({
            "phone_numbers": format!("{url}/PhoneNumbers"),
            "short_codes": format!("{url}/ShortCodes"),
            "alpha_senders": format!("{url}/AlphaSenders"),
            "messages": format!("{url}/Messages"),
        })),
        url: Some(url),
    }
}

fn service_number_json(base: &str, service: &str, n: &SimNumber) -> ServicePhoneNumber {
    let at = n.attached_at.unwrap_or(n.date_created);
    ServicePhoneNumber {
        sid: Some(n.sid.clone()),
        account_sid: Some(n.account_sid.clone()),
        service_sid: Some(service.to_owned()),
        date_created: Some(iso(&at)),
        date_updated: Some(iso(&at)),
        phone_number: Some(n.phone_number.clone()),
        country_code: Some("US".into()),
        capabilities: Some(vec!["MMS".into(), "SMS".into(), "Voice".into()]),
        url: Some(format!("{base}/v1/Services/{service}/PhoneNumbers/{}", n.sid)),
    }
}

/// The base URL a client used (v1 resources carry absolute URLs).
fn request_base(headers: &HeaderMap) -> String {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("messaging.twilio.com");
    format!("http://{host}")
}

/// `POST /v1/Services`.
async fn create_service(State(sim): State<Sim>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let account = match v1_account(&sim, &headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let f = form(&body);
    let s = SimService {
        sid: new_sid("MG"),
        account_sid: account,
        friendly_name: field(&f, "FriendlyName").unwrap_or("Messaging Service").to_owned(),
        date_created: Utc::now(),
    };
    sim.store.lock().unwrap().services.push(s.clone());
    (StatusCode::CREATED, Json(service_json(&request_base(&headers), &s))).into_response()
}

/// The service `sid` if it belongs to the authenticated account.
fn own_service(sim: &Sim, headers: &HeaderMap, sid: &str) -> Result<SimService, Response> {
    let account = v1_account(sim, headers)?;
    sim.store
        .lock()
        .unwrap()
        .services
        .iter()
        .find(|s| s.sid == sid && s.account_sid == account)
        .cloned()
        .ok_or_else(|| v1_not_found(&format!("/Services/{sid}")))
}

/// `GET /v1/Services/{sid}`.
async fn fetch_service(State(sim): State<Sim>, Path(service): Path<String>, headers: HeaderMap) -> Response {
    match own_service(&sim, &headers, &service) {
        Ok(s) => Json(service_json(&request_base(&headers), &s)).into_response(),
        Err(r) => r,
    }
}

/// `POST /v1/Services/{sid}/PhoneNumbers` (`PhoneNumberSid`): adds one of the account's numbers to the sender pool.
async fn attach_number(
    State(sim): State<Sim>,
    Path(service): Path<String>,
    Extension(kill): Extension<ConnKill>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let s = match own_service(&sim, &headers, &service) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let cfg = sim.config();
    let nth = {
        let mut store = sim.store.lock().unwrap();
        store.attach_requests += 1;
        store.attach_requests
    };
    let fault = if nth <= cfg.attach_fail_first { Fault::E500 } else { roll(&cfg.attach_faults) };
    if let Some(r) = fault_response(&fault) {
        return r;
    }
    if let Fault::Drop = fault {
        return vanish(&kill, Duration::ZERO).await;
    }
    let f = form(&body);
    let Some(pn) = field(&f, "PhoneNumberSid").map(str::to_owned) else {
        return twilio_error(400, 21421, "PhoneNumberSid is required");
    };
    let result = {
        let mut store = sim.store.lock().unwrap();
        let in_pool = store.numbers.iter().filter(|n| !n.released && n.service_sid.as_deref() == Some(&s.sid)).count();
        match store.numbers.iter_mut().find(|n| n.sid == pn && !n.released && n.account_sid == s.account_sid) {
            None => Err(twilio_error(400, 21421, "Phone Number is invalid")),
            Some(n) if n.service_sid.as_deref() == Some(&s.sid) => {
                Err(twilio_error(409, 21710, "Phone Number or Short Code is already in the Messaging Service."))
            }
            Some(n) if n.service_sid.is_some() => Err(twilio_error(
                409,
                21712,
                "Phone Number or Short Code is associated with another Messaging Service.",
            )),
            Some(_) if in_pool >= cfg.service_max_numbers => {
                Err(twilio_error(400, 21714, "Messaging Service Number Pool size limit reached"))
            }
            Some(n) => {
                n.service_sid = Some(s.sid.clone());
                n.attached_at = Some(Utc::now());
                Ok(n.clone())
            }
        }
    };
    if let Fault::AcceptThenTimeout = fault {
        return vanish(&kill, Duration::from_millis(cfg.hang_ms)).await;
    }
    match result {
        Ok(n) => (StatusCode::CREATED, Json(service_number_json(&request_base(&headers), &s.sid, &n))).into_response(),
        Err(r) => r,
    }
}

/// `GET /v1/Services/{sid}/PhoneNumbers`, paged the v1 way (`meta` with absolute URLs).
async fn list_service_numbers(
    State(sim): State<Sim>,
    Path(service): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let s = match own_service(&sim, &headers, &service) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let base = request_base(&headers);
    let q = parse_query(raw);
    let size = field(&q, "PageSize").and_then(|v| v.parse::<usize>().ok()).unwrap_or(50).clamp(1, 1000);
    let page = field(&q, "Page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    let all: Vec<ServicePhoneNumber> = sim
        .store
        .lock()
        .unwrap()
        .numbers
        .iter()
        .filter(|n| !n.released && n.service_sid.as_deref() == Some(&s.sid))
        .map(|n| service_number_json(&base, &s.sid, n))
        .collect();
    let url = |p: usize| format!("{base}/v1/Services/{}/PhoneNumbers?PageSize={size}&Page={p}", s.sid);
    let slice: Vec<_> = all.iter().skip(page * size).take(size).cloned().collect();
    let meta = V1Meta {
        page: Some(page as u64),
        page_size: Some(size as u64),
        first_page_url: Some(url(0)),
        previous_page_url: (page > 0).then(|| url(page - 1)),
        next_page_url: ((page + 1) * size < all.len()).then(|| url(page + 1)),
        key: Some("phone_numbers".into()),
        url: Some(url(page)),
    };
    Json(ServicePhoneNumbers { meta, phone_numbers: slice }).into_response()
}

/// `GET /v1/Services/{sid}/PhoneNumbers/{PN…}`.
async fn fetch_service_number(
    State(sim): State<Sim>,
    Path((service, number)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let s = match own_service(&sim, &headers, &service) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let found = sim
        .store
        .lock()
        .unwrap()
        .numbers
        .iter()
        .find(|n| n.sid == number && !n.released && n.service_sid.as_deref() == Some(&s.sid))
        .cloned();
    match found {
        Some(n) => Json(service_number_json(&request_base(&headers), &s.sid, &n)).into_response(),
        None => v1_not_found(&format!("/Services/{}/PhoneNumbers/{number}", s.sid)),
    }
}

/// `DELETE /v1/Services/{sid}/PhoneNumbers/{PN…}`: out of the sender pool (the number stays in the account).
async fn detach_number(
    State(sim): State<Sim>,
    Path((service, number)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let s = match own_service(&sim, &headers, &service) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut store = sim.store.lock().unwrap();
    match store.numbers.iter_mut().find(|n| n.sid == number && !n.released && n.service_sid.as_deref() == Some(&s.sid))
    {
        Some(n) => {
            n.service_sid = None;
            n.attached_at = None;
            StatusCode::NO_CONTENT.into_response()
        }
        None => v1_not_found(&format!("/Services/{}/PhoneNumbers/{number}", s.sid)),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Accounts

fn account_json(
    sid: &str,
    friendly_name: &str,
    token: &str,
    owner: &str,
    status: &str,
    created: DateTime<Utc>,
) -> Account {
    let base = format!("/2010-04-01/Accounts/{sid}");
    let subresources = [
        ("available_phone_numbers", "AvailablePhoneNumbers"),
        ("calls", "Calls"),
        ("conferences", "Conferences"),
        ("incoming_phone_numbers", "IncomingPhoneNumbers"),
        ("notifications", "Notifications"),
        ("outgoing_caller_ids", "OutgoingCallerIds"),
        ("recordings", "Recordings"),
        ("transcriptions", "Transcriptions"),
        ("addresses", "Addresses"),
        ("signing_keys", "SigningKeys"),
        ("connect_apps", "ConnectApps"),
        ("sip", "SIP"),
        ("authorized_connect_apps", "AuthorizedConnectApps"),
        ("usage", "Usage"),
        ("keys", "Keys"),
        ("applications", "Applications"),
        ("short_codes", "SMS/ShortCodes"),
        ("queues", "Queues"),
        ("messages", "Messages"),
        ("balance", "Balance"),
    ];
    let uris: serde_json::Map<String, serde_json::Value> =
        subresources.iter().map(|(k, p)| ((*k).to_owned(), format!("{base}/{p}.json").into())).collect();
    Account {
        auth_token: Some(token.to_owned()),
        date_created: Some(created),
        date_updated: Some(created),
        friendly_name: Some(friendly_name.to_owned()),
        owner_account_sid: Some(owner.to_owned()),
        sid: Some(sid.to_owned()),
        status: Some(status.to_owned()),
        subresource_uris: Some(serde_json::Value::Object(uris)),
        kind: Some("Full".into()),
        uri: Some(format!("{base}.json")),
    }
}

fn sub_json(a: &SimAccount) -> Account {
    account_json(&a.sid, &a.friendly_name, &a.auth_token, &a.owner_account_sid, &a.status, a.date_created)
}

/// The main account's credentials, or 401.
fn authorize_main(sim: &Sim, headers: &HeaderMap) -> Result<SimConfig, Response> {
    let cfg = sim.config();
    match basic_auth(headers) {
        Some((user, pass)) if user == cfg.account_sid && pass == cfg.auth_token => Ok(cfg),
        _ => Err(unauthorized()),
    }
}

/// `POST /2010-04-01/Accounts.json`: a new subaccount with its own auth token.
async fn create_account(State(sim): State<Sim>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let cfg = match authorize_main(&sim, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let f = form(&body);
    let now = Utc::now();
    let a = SimAccount {
        sid: new_sid("AC"),
        friendly_name: field(&f, "FriendlyName")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("SubAccount Created at {}", now.format("%Y-%m-%d %I:%M %p"))),
        auth_token: format!("{:032x}", rand::rng().random::<u128>()),
        owner_account_sid: cfg.account_sid,
        status: "active".into(),
        date_created: now,
    };
    sim.store.lock().unwrap().accounts.push(a.clone());
    (StatusCode::CREATED, Json(sub_json(&a))).into_response()
}

/// `GET /2010-04-01/Accounts.json`: the main account and its subaccounts.
async fn list_accounts(State(sim): State<Sim>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let cfg = match authorize_main(&sim, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let q = parse_query(raw);
    let mut all = vec![account_json(
        &cfg.account_sid,
        "Main account",
        &cfg.auth_token,
        &cfg.account_sid,
        "active",
        DateTime::<Utc>::UNIX_EPOCH,
    )];
    all.extend(sim.store.lock().unwrap().accounts.iter().map(sub_json));
    let friendly = field(&q, "FriendlyName");
    let status = field(&q, "Status");
    let matched: Vec<Account> = all
        .into_iter()
        .filter(|a| friendly.is_none_or(|f| a.friendly_name.as_deref() == Some(f)))
        .filter(|a| status.is_none_or(|st| a.status.as_deref() == Some(st)))
        .collect();
    let (slice, meta) = page_of(&matched, "/2010-04-01/Accounts.json", &q);
    envelope(Accounts { accounts: slice }, meta)
}

/// `GET /2010-04-01/Accounts/{sid}.json`: the main account itself, or one of its subaccounts (with its token).
async fn fetch_account(State(sim): State<Sim>, Path(account): Path<String>, headers: HeaderMap) -> Response {
    let account = account.trim_end_matches(".json").to_owned();
    sim.store.lock().unwrap().account_fetches += 1;
    let Some((user, pass)) = basic_auth(&headers) else { return unauthorized() };
    if sim.token_of(&user).is_none_or(|t| t != pass) {
        return unauthorized();
    }
    let cfg = sim.config();
    let not_found = || {
        twilio_error(404, 20404, &format!("The requested resource /2010-04-01/Accounts/{account}.json was not found"))
    };
    if account == cfg.account_sid {
        if user != cfg.account_sid {
            return not_found();
        }
        let main =
            account_json(&account, "Main account", &cfg.auth_token, &account, "active", DateTime::<Utc>::UNIX_EPOCH);
        return Json(main).into_response();
    }
    let found = sim.store.lock().unwrap().accounts.iter().find(|a| a.sid == account).cloned();
    match found {
        Some(a) if user == cfg.account_sid || user == a.sid => Json(sub_json(&a)).into_response(),
        _ => not_found(),
    }
}

/// `POST /_sim/accounts/{sid}/rotate`: gives a subaccount a new auth token (returned), as promoting a secondary
/// token does in Twilio's console.
async fn rotate_account_token(State(sim): State<Sim>, Path(account): Path<String>) -> Response {
    let mut store = sim.store.lock().unwrap();
    match store.accounts.iter_mut().find(|a| a.sid == account) {
        Some(a) => {
            a.auth_token = format!("{:032x}", rand::rng().random::<u128>());
            Json(serde_json::json!({ "sid": a.sid, "auth_token": a.auth_token })).into_response()
        }
        None => twilio_error(404, 20404, "no such subaccount"),
    }
}

/// `POST /_sim/status-callback` `{"sid", "status", "error_code"?}`: the carrier reports on a message; Twilio calls
/// the message's `StatusCallback`, signed with the token of the account that sent it. Answers the callback's HTTP
/// status (0 if the message asked for none).
#[derive(Deserialize)]
struct StatusCallbackRequest {
    sid: String,
    status: String,
    error_code: Option<u32>,
}

async fn sim_status_callback(State(sim): State<Sim>, Json(req): Json<StatusCallbackRequest>) -> Response {
    let m = {
        let store = sim.store.lock().unwrap();
        store.by_sid.get(&req.sid).map(|&i| store.messages[i].clone())
    };
    let Some(m) = m else { return twilio_error(404, 20404, "no such message") };
    let status = match &m.status_callback {
        Some(url) => send_status_callback(&sim, &m, url, &req.status, req.error_code).await,
        None => 0,
    };
    Json(serde_json::json!({ "webhook_status": status })).into_response()
}

/// POSTs one status callback for `m` the way Twilio does; returns the HTTP status (0 if the call failed).
async fn send_status_callback(sim: &Sim, m: &SimMessage, url: &str, status: &str, error_code: Option<u32>) -> u16 {
    let mut params: Vec<(String, String)> = vec![
        ("AccountSid".into(), m.account_sid.clone()),
        ("ApiVersion".into(), "2010-04-01".into()),
        ("From".into(), m.from.clone()),
        ("MessageSid".into(), m.sid.clone()),
        ("MessageStatus".into(), status.to_owned()),
        ("SmsSid".into(), m.sid.clone()),
        ("SmsStatus".into(), status.to_owned()),
        ("To".into(), m.to.clone()),
    ];
    if let Some(code) = error_code {
        params.push(("ErrorCode".into(), code.to_string()));
    }
    let Some(token) = sim.token_of(&m.account_sid) else { return 0 };
    post_signed(&token, url, &params).await.map(|(s, _)| s).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------------------------
// Simulator control (not Twilio)

#[derive(Deserialize)]
struct StateQuery {
    messages: Option<bool>,
}

async fn sim_state(State(sim): State<Sim>, Query(q): Query<StateQuery>) -> Json<SimState> {
    Json(sim.state(q.messages.unwrap_or(true)))
}

async fn sim_config(State(sim): State<Sim>) -> Json<SimConfig> {
    Json(sim.config())
}

/// Merges a partial JSON object into the settings.
async fn set_sim_config(State(sim): State<Sim>, Json(patch): Json<serde_json::Value>) -> Response {
    let mut current = serde_json::to_value(sim.config()).unwrap();
    merge(&mut current, patch);
    match serde_json::from_value::<SimConfig>(current) {
        Ok(c) => {
            sim.set_config(c.clone());
            Json(c).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("bad simulator config: {e}")).into_response(),
    }
}

fn merge(into: &mut serde_json::Value, patch: serde_json::Value) {
    match (into, patch) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}
