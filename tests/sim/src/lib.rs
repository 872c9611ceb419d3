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
//!
//! It is a crate of its own so that the production image never compiles it; tests reach it as `harness::sim`.
//!
//! # Layout
//! - this file: settings ([`SimConfig`], [`Faults`]), what the simulator holds ([`SimState`]), the router, `serve`.
//! - [`accounts`]: the main account and its subaccounts (`/Accounts`), their tokens and rotation.
//! - [`numbers`]: `IncomingPhoneNumbers` (buy, list, fetch, release) and `AvailablePhoneNumbers` searches.
//! - [`messages`]: `Messages` (create with Twilio's validation and magic numbers, list with filters, fetch).
//! - [`services`]: Messaging Services (`messaging.twilio.com/v1`) and their sender pools (A2P 10DLC).
//! - [`webhooks`]: what the simulator sends: inbound messages and status callbacks, signed as Twilio signs them.
//! - [`carriers`]: Lookup v2 (line type and carrier per number) and carriers' A2P limits (30022, 30023, 30006).
//! - [`faults`]: injected failures (500, 429, dropped connections, accept then time out).
//! - [`control`]: `/_sim/state` and `/_sim/config`, for tests (not Twilio).
//! - `wire`: Twilio's error body, Basic auth, form fields, list paging.

// Handlers return an error `Response` early; boxing it would only add noise to a test server.
#![allow(clippy::result_large_err)]

pub mod accounts;
pub mod carriers;
pub mod control;
pub mod faults;
pub mod messages;
pub mod numbers;
pub mod services;
pub mod webhooks;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use self::faults::ConnKill;
pub use self::webhooks::post_signed;
use self::wire::twilio_error;

pub const DEFAULT_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
pub const DEFAULT_AUTH_TOKEN: &str = "simulator-auth-token";
/// Area code of numbers handed out when a search or purchase names none.
pub const DEFAULT_AREA_CODE: &str = "415";

/// Messenger's Twilio client pointed at a simulator at `base`, as the default account with `token`.
pub fn client(base: &str, token: &str, timeout: Duration) -> shared::twilio::TwilioClient {
    shared::twilio::TwilioClient::new(&shared::config::TwilioSettings {
        api_base: base.to_owned(),
        messaging_api_base: base.to_owned(),
        lookups_api_base: base.to_owned(),
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
    /// Carriers act on what Twilio accepted: texts to landlines fail (30006), and the caps below apply.
    pub carriers: bool,
    /// A brand's T-Mobile segments per day (the day ends at midnight Pacific); beyond it, 30023.
    pub tmobile_daily_cap: Option<u64>,
    /// A brand's AT&T messages in any 60 s; beyond it, 30022.
    pub att_per_minute: Option<u64>,
    /// Numbers whose line Lookup reports as given (otherwise a hash of the number decides).
    pub line_overrides: HashMap<String, carriers::Line>,
    pub lookup_latency_ms: u64,
    pub lookup_faults: Faults,
    /// Recipients Twilio refuses for good (21614, not a mobile number), as if they had been reassigned.
    pub refuse_recipients: Vec<String>,
    /// Recipients this sender cannot reach right now (21612): refused, but another attempt later may succeed.
    pub unreachable_recipients: Vec<String>,
    /// The carrier reports every accepted message delivered this long after Twilio accepted it, through the
    /// message's `StatusCallback` (off when `None`: tests then report what they choose, as a carrier would).
    pub deliver_after_ms: Option<u64>,
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
            carriers: false,
            tmobile_daily_cap: None,
            att_per_minute: None,
            line_overrides: HashMap::new(),
            lookup_latency_ms: 0,
            lookup_faults: Faults::default(),
            refuse_recipients: Vec::new(),
            unreachable_recipients: Vec::new(),
            deliver_after_ms: None,
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
    /// `ValidityPeriod`: seconds the message may wait in Twilio's queue (1 to 36,000), when the request gave one.
    #[serde(default)]
    pub validity_period: Option<u32>,
    /// With `deliver_after_ms`: when the status callback reporting the message delivered was answered 2xx (the
    /// moment the sender's system knew, which is what a load test's delivered latency measures).
    #[serde(default)]
    pub delivery_acknowledged: Option<DateTime<Utc>>,
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
pub(crate) struct Store {
    pub(crate) messages: Vec<SimMessage>,
    pub(crate) by_to: HashMap<String, Vec<usize>>,
    pub(crate) by_sid: HashMap<String, usize>,
    pub(crate) numbers: Vec<SimNumber>,
    /// Index into `numbers` of each number not released, by phone number (sends look their sender up here).
    pub(crate) live: HashMap<String, usize>,
    /// Next line number to hand out per area code.
    pub(crate) next_line: HashMap<String, u32>,
    pub(crate) attempts: Vec<SendAttempt>,
    pub(crate) purchase_requests: u64,
    pub(crate) inbound: Vec<SimInbound>,
    /// (our number, recipient) pairs where the recipient replied STOP: Twilio refuses those sends with 21610.
    pub(crate) opted_out: std::collections::HashSet<(String, String)>,
    /// Subaccounts of the main account.
    pub(crate) accounts: Vec<SimAccount>,
    pub(crate) services: Vec<SimService>,
    pub(crate) attach_requests: u64,
    /// `GET /Accounts/{sid}.json` requests (how often a client looked an account up).
    pub(crate) account_fetches: u64,
    /// Lookup v2 requests, faults included.
    pub(crate) lookup_requests: u64,
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
    /// Lookup v2 requests, faults included.
    #[serde(default)]
    pub lookup_requests: u64,
    pub config: SimConfig,
}

/// A running simulator: shared state and settings.
#[derive(Clone)]
pub struct Sim {
    pub(crate) store: Arc<Mutex<Store>>,
    config: Arc<RwLock<SimConfig>>,
}

impl Store {
    /// The number not released with this phone number.
    pub(crate) fn live_number(&self, phone: &str) -> Option<&SimNumber> {
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
            lookup_requests: s.lookup_requests,
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
        use self::{accounts as a, control as c, messages as m, numbers as n, services as s, webhooks as w};
        let api = Router::new()
            .route("/Messages.json", post(m::create_message).get(m::list_messages))
            .route("/Messages/{sid}", get(m::fetch_message))
            .route("/IncomingPhoneNumbers.json", post(n::buy_number).get(n::list_numbers))
            .route("/IncomingPhoneNumbers/Local.json", post(n::buy_number).get(n::list_numbers))
            .route("/IncomingPhoneNumbers/{sid}", get(n::fetch_number).delete(n::release_number))
            .route("/AvailablePhoneNumbers/{country}/Local.json", get(n::available_numbers));
        Router::new()
            .route("/2010-04-01/Accounts.json", post(a::create_account).get(a::list_accounts))
            .route("/2010-04-01/Accounts/{account}", get(a::fetch_account))
            .nest("/2010-04-01/Accounts/{account}", api)
            .route("/v1/Services", post(s::create_service))
            .route("/v1/Services/{service}", get(s::fetch_service))
            .route("/v1/Services/{service}/PhoneNumbers", post(s::attach_number).get(s::list_service_numbers))
            .route(
                "/v1/Services/{service}/PhoneNumbers/{number}",
                get(s::fetch_service_number).delete(s::detach_number),
            )
            .route("/_sim/accounts/{account}/rotate", post(a::rotate_account_token))
            .route("/_sim/status-callback", post(w::sim_status_callback))
            .route("/_sim/state", get(c::sim_state))
            .route("/_sim/config", get(c::sim_config).post(c::set_sim_config))
            .route("/_sim/inbound", post(w::sim_inbound))
            .route("/v2/PhoneNumbers/{number}", get(carriers::lookup))
            .route("/healthz", get(|| async { "ok" }))
            .fallback(|| async { twilio_error(404, 20404, "The requested resource was not found") })
            .with_state(self.clone())
    }
}

/// An HTTP client for the webhooks the simulator sends (installs the TLS crypto provider reqwest needs first).
pub(crate) fn http() -> reqwest::Client {
    shared::twilio::client::ensure_tls_provider();
    reqwest::Client::new()
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
    spawn_on(std::net::Ipv4Addr::LOCALHOST, config).await
}

/// Starts a simulator on a free port of `ip` (an address of this machine) in this process.
pub async fn spawn_on(ip: std::net::Ipv4Addr, config: SimConfig) -> (Sim, SocketAddr) {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind simulator");
    let addr = listener.local_addr().unwrap();
    let sim = Sim::new(config);
    tokio::spawn(serve(listener, sim.clone(), std::future::pending()));
    (sim, addr)
}
