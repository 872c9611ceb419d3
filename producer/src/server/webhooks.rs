//! Twilio's webhooks: inbound messages (`/twilio/inbound`) and delivery reports (`/twilio/status`).
//!
//! Both authenticate by `X-Twilio-Signature` only, checked against the configured public URL before anything else
//! is read or written. Twilio retries webhooks: a delivery carrying an `I-Twilio-Idempotency-Token` already seen is
//! answered without being processed again, and every effect is idempotent anyway (a reply is credited once per
//! message sid, opt-outs are set operations, delivery reports are counted once per message).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use redis::AsyncCommands;
use secrecy::{ExposeSecret, SecretString};
use shared::batches::{self, Delivery};
use shared::carriers;
use shared::config::Settings;
use shared::domain::revocation::{self, Class};
use shared::domain::{AccountSid, BatchId, CustomerId, PhoneNumber};
use shared::keys::{self, CustomerKeys};
use shared::ledger::{Keyword, Ledger, OptChange, Reply, ReplyAction};
use shared::store::Conn;
use shared::twilio::accounts::AccountTokens;
use shared::twilio::signature;

use super::error::{ApiError, too_large};
use super::metrics::Metrics;
use crate::ops::Deps;

const TWIML_EMPTY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

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

/// The tokens that sign subaccounts' webhooks, read from Twilio with the main account's credentials; `None` when
/// those are not configured.
pub fn account_tokens(ops: &Deps, policy: TokenPolicy) -> Option<Arc<AccountTokens>> {
    let (Some(client), Some(token)) = (&ops.twilio, &ops.settings.twilio.auth_token) else { return None };
    Some(Arc::new(AccountTokens::new(
        client.clone(),
        token.clone(),
        policy.ttl.max(Duration::from_secs(1)),
        policy.refresh_every,
    )))
}

/// What verifying and recording webhooks needs.
#[derive(Clone)]
pub struct Webhooks {
    conn: Conn,
    /// The connection for steps confirmed by replicas (`WAIT`), when acknowledgements are on.
    acked: Option<Conn>,
    settings: Arc<Settings>,
    /// The public base URL Twilio calls: signatures are computed over it. `None`: webhooks are refused.
    public_url: Option<Arc<str>>,
    /// The main account's token (it signs webhooks about the main account's numbers).
    main_token: Option<SecretString>,
    /// Subaccounts' tokens, looked up in Twilio.
    account_tokens: Option<Arc<AccountTokens>>,
    /// Customer → the account that owns its numbers, cached briefly (every webhook needs it).
    customer_accounts: Arc<CustomerAccounts>,
    /// Subaccount → its customers, for webhooks about numbers in no pool.
    account_owners: Arc<AccountOwners>,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    pub fn new(
        ops: &Deps,
        public_url: Option<Arc<str>>,
        account_tokens: Option<Arc<AccountTokens>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            conn: ops.conn(),
            acked: ops.acked.clone(),
            settings: ops.settings.clone(),
            public_url,
            main_token: ops.settings.twilio.auth_token.clone(),
            account_tokens,
            customer_accounts: Arc::default(),
            account_owners: Arc::default(),
            metrics,
        }
    }
}

/// The raw body, with a too-large body answered in our error shape.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state).await.map(RawBody).map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::bad_request("invalid_body", "the body could not be read")
            }
        })
    }
}

/// A webhook whose signature checked out: its form parameters.
struct Signed(Vec<(String, String)>);

impl Signed {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What a webhook is about, which decides whose token must have signed it.
enum Subject {
    /// An inbound message: the number it was sent to (`To`) is one of ours.
    Inbound,
    /// A delivery report for a message of this batch (from `?b=`).
    Batch(Option<BatchId>),
}

/// Customer → the Twilio account that owns its numbers (`None` = the main account), cached for [`Self::TTL`] so
/// that a burst of status callbacks does not read the customer's record once per callback.
#[derive(Default)]
pub struct CustomerAccounts(Mutex<HashMap<CustomerId, (Option<AccountSid>, Instant)>>);

impl CustomerAccounts {
    const TTL: Duration = Duration::from_secs(30);

    async fn get(&self, conn: &mut Conn, customer: &CustomerId) -> redis::RedisResult<Option<AccountSid>> {
        if let Some((a, at)) = self.0.lock().unwrap().get(customer)
            && at.elapsed() < Self::TTL
        {
            return Ok(a.clone());
        }
        let raw: Option<String> = conn.hget(CustomerKeys::new(customer).cfg(), "account_sid").await?;
        let account = raw.and_then(|a| AccountSid::parse(&a).ok());
        let mut cache = self.0.lock().unwrap();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(customer.clone(), (account.clone(), Instant::now()));
        Ok(account)
    }
}

/// Subaccount → the customers stored with it, for a webhook about a number that is in no pool: bought by hand in
/// the subaccount, not yet adopted by the reconciler, or whose pool entry a failover lost. Its sender can only be
/// found through the subaccount that signed it — and a STOP in it must not be lost.
///
/// Built from every customer's record (one read each) at most every [`Self::FRESH`], or after [`Self::RETRY`] when
/// an account is not in it (a customer just added). The lock is held while it is rebuilt, so a flood of webhooks
/// naming unknown accounts costs one rebuild per [`Self::RETRY`], not one per webhook.
#[derive(Default)]
pub struct AccountOwners(tokio::sync::Mutex<(Owners, Option<Instant>)>);

/// Subaccount → the customers stored with it (sorted).
type Owners = HashMap<AccountSid, Vec<CustomerId>>;

impl AccountOwners {
    const FRESH: Duration = Duration::from_secs(60);
    const RETRY: Duration = Duration::from_secs(5);

    async fn owners(&self, conn: &mut Conn, account: &AccountSid) -> redis::RedisResult<Vec<CustomerId>> {
        let mut guard = self.0.lock().await;
        let (map, built) = &mut *guard;
        let age = built.map(|at| at.elapsed());
        let stale =
            age.is_none_or(|a| a > Self::FRESH) || (!map.contains_key(account) && age.is_some_and(|a| a > Self::RETRY));
        if stale {
            use futures::StreamExt;
            let ids = shared::customers::list(conn).await?;
            let reads = futures::stream::iter(ids.into_iter().map(|id| {
                let mut conn = conn.clone();
                async move {
                    let raw: Option<String> = conn.hget(CustomerKeys::new(&id).cfg(), "account_sid").await?;
                    Ok::<_, redis::RedisError>(raw.and_then(|a| AccountSid::parse(&a).ok()).map(|a| (a, id)))
                }
            }))
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
            let mut fresh = Owners::new();
            for r in reads {
                if let Some((a, id)) = r? {
                    fresh.entry(a).or_default().push(id);
                }
            }
            fresh.values_mut().for_each(|v| v.sort());
            *map = fresh;
            *built = Some(Instant::now());
        }
        Ok(map.get(account).cloned().unwrap_or_default())
    }
}

/// A signed webhook seen for the first time: process it, then [`remember`] its token.
struct Webhook {
    params: Signed,
    /// The customer it concerns, when known (inbound: the owner of `To`).
    customer: Option<CustomerId>,
    /// Inbound to a number in no pool, signed by a subaccount: the customers stored with that subaccount.
    by_account: Vec<CustomerId>,
    token: Option<String>,
}

/// Checks `X-Twilio-Signature` over the public URL of `path` (with the query string exactly as received), with the
/// auth token of the account that owns what the webhook is about, then whether Twilio delivered this webhook before
/// (same `I-Twilio-Idempotency-Token`): `None` for a repeat, which is answered without being processed again.
///
/// The parameters are read before they are trusted only to find that account: the number or batch they name leads
/// to a customer, and the customer's record (not the request) names the account. The request's `AccountSid` must
/// agree with it. An inbound message to a number in no pool leads nowhere; then the `AccountSid` it names is
/// accepted only if it is a customer's subaccount, and the signature must be that subaccount's — any other account
/// (an unknown one included) is checked against the main token, which a webhook naming it cannot carry. A forged
/// request can therefore only choose which of our own accounts' tokens it is checked against, and a valid signature
/// from one account never acts on another account's customers. Nothing is written before the signature checks out.
async fn accept(
    s: &Webhooks,
    path: &str,
    query: &Option<String>,
    headers: &HeaderMap,
    body: &[u8],
    subject: Subject,
) -> Result<Option<Webhook>, ApiError> {
    let (Some(base), Some(main_token)) = (&s.public_url, &s.main_token) else {
        return Err(ApiError::unavailable("webhooks need MESSENGER_PUBLIC_URL and TWILIO_AUTH_TOKEN"));
    };
    let header = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    let url = match query {
        Some(q) => format!("{base}{path}?{q}"),
        None => format!("{base}{path}"),
    };
    let reject = |why: &str| {
        s.metrics.webhook_rejected.inc();
        tracing::debug!(reason = why, "webhook rejected");
        ApiError::forbidden("missing or invalid X-Twilio-Signature")
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (params, (customer, by_account)) = if content_type.starts_with("application/json") {
        // Twilio's messaging webhooks are forms; a JSON body names no number, so only the main account can sign it.
        if !signature::validate_json(main_token.expose_secret(), &url, body, header) {
            return Err(reject("json signature"));
        }
        (Vec::new(), (None, Vec::new()))
    } else {
        let Some(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).ok() else {
            return Err(reject("unreadable form"));
        };
        if header.is_empty() {
            return Err(reject("no signature"));
        }
        let unverified = Signed(params);
        let mut conn = s.conn.clone();
        let customer = match &subject {
            Subject::Inbound => match unverified.get("To") {
                Some(to) => {
                    let owner: Option<String> = conn.hget(keys::NUMBERS, to).await.map_err(|e| ApiError::redis(&e))?;
                    owner.and_then(|c| CustomerId::parse(&c).ok())
                }
                None => None,
            },
            Subject::Batch(b) => b.as_ref().map(|b| b.customer().clone()),
        };
        let main = s.settings.twilio.account_sid.as_ref();
        // A number in no pool: its owner can only be the subaccount the request names, if a customer is stored
        // with it (the signature is then checked with that subaccount's token).
        let claimed = unverified.get("AccountSid").and_then(|a| AccountSid::parse(a).ok()).filter(|a| Some(a) != main);
        let by_account = match (&subject, &customer, claimed) {
            (Subject::Inbound, None, Some(claimed)) => {
                s.account_owners.owners(&mut conn, &claimed).await.map_err(|e| ApiError::redis(&e))?
            }
            _ => Vec::new(),
        };
        let account = match customer.as_ref().or(by_account.first()) {
            Some(c) => s.customer_accounts.get(&mut conn, c).await.map_err(|e| ApiError::redis(&e))?,
            None => None,
        };
        let account = account.filter(|a| Some(a) != main);
        if let Some(claimed) = unverified.get("AccountSid") {
            let expected = account.as_ref().or(main).map(AccountSid::as_str);
            if expected.is_some_and(|e| e != claimed) {
                return Err(reject("AccountSid is not the account that owns the number"));
            }
        }
        match &account {
            None => {
                if !signature::validate(main_token.expose_secret(), &url, &unverified.0, header) {
                    return Err(reject("signature"));
                }
            }
            Some(sub) => {
                let Some(tokens) = &s.account_tokens else {
                    tracing::warn!(customer = ?customer.as_ref().map(|c| c.to_string()),
                        "a webhook for a subaccount's number, but TWILIO_ACCOUNT_SID is not set: cannot look up \
                         the subaccount's token");
                    return Err(reject("no credentials for subaccount tokens"));
                };
                let token = tokens.token(sub).await.map_err(|_| reject("subaccount token unavailable"))?;
                if !signature::validate(token.expose_secret(), &url, &unverified.0, header) {
                    // The subaccount's token may have been rotated: read it once more (rate-limited per account).
                    let fresh = tokens.refresh(sub, &token).await;
                    if !fresh.is_some_and(|t| signature::validate(t.expose_secret(), &url, &unverified.0, header)) {
                        return Err(reject("signature"));
                    }
                }
            }
        }
        (unverified.0, (customer, by_account))
    };
    let token = headers
        .get("i-twilio-idempotency-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty() && t.len() <= 200);
    if let Some(t) = token {
        let done: bool = s.conn.clone().exists(keys::webhook_delivery(t)).await.map_err(|e| ApiError::redis(&e))?;
        if done {
            return Ok(None);
        }
    }
    Ok(Some(Webhook { params: Signed(params), customer, by_account, token: token.map(str::to_owned) }))
}

async fn remember(s: &Webhooks, token: Option<String>) {
    if let Some(t) = token {
        let _: redis::RedisResult<()> = s.conn.clone().set_ex(keys::webhook_delivery(&t), 1, 86_400).await;
    }
}

fn twiml() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"))], TWIML_EMPTY).into_response()
}

/// TwiML that answers the tenant with `text`.
fn twiml_message(text: &str) -> Response {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            c => escaped.push(c),
        }
    }
    let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>{escaped}</Message></Response>");
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"))], xml).into_response()
}

/// `POST /twilio/inbound`: a reply to one of our numbers. Credits the number (+1 to its limit for a window, up to
/// the cap), handles STOP / START keywords (with the tenant's opt-out record) and records the customer's events, in
/// one script per customer. Answers an empty TwiML `<Response/>`, or for HELP / INFO the customer's help text.
///
/// A reply to a number in no pool, signed by a customer's subaccount, is that customer's (every customer's stored
/// with that subaccount, if several share it): its keywords count, though no pool number is credited.
pub async fn inbound(
    State(s): State<Webhooks>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let Some(Webhook { params: p, customer, by_account, token }) =
        accept(&s, "/twilio/inbound", &query, &headers, &body, Subject::Inbound).await?
    else {
        return Ok(twiml());
    };
    let (Some(to), Some(from)) = (p.get("To"), p.get("From")) else {
        return Err(ApiError::unprocessable("inbound webhook without To and From"));
    };
    let sid = p.get("MessageSid").or(p.get("SmsMessageSid")).or(p.get("SmsSid")).unwrap_or_default();
    let customers = match (&customer, by_account.is_empty()) {
        (Some(c), _) => vec![c.clone()],
        (None, false) => {
            let names: Vec<&str> = by_account.iter().map(CustomerId::as_str).collect();
            tracing::info!(to = %shared::domain::Masked(to), customers = ?names,
                "inbound message to a number in no pool, attributed by the subaccount that signed it");
            by_account
        }
        (None, true) => {
            tracing::warn!(to = %shared::domain::Masked(to), "inbound message to a number no customer owns");
            return Ok(twiml());
        }
    };
    s.metrics.inbound.inc();
    let Ok(sender) = PhoneNumber::from_trusted(from) else {
        tracing::warn!(customer = ?customers.first().map(CustomerId::as_str), "inbound message from a malformed number");
        return Ok(twiml());
    };
    // Twilio always sends a sid; without one the message still counts once per webhook delivery.
    let sid = match (sid.is_empty(), &token) {
        (false, _) => sid.to_owned(),
        (true, Some(t)) => format!("idem:{t}"),
        (true, None) => format!("local:{}", ulid::Ulid::new()),
    };
    let body = p.get("Body").unwrap_or_default();
    let as_written = clip(body.trim(), 320);
    let keyword = Keyword::of(body);
    let ledger = Ledger::new(s.conn.clone(), s.settings.quota, s.settings.batch_retention)
        .with_acks(s.settings.redis.acks.clone(), s.acked.iter().cloned().collect());
    // Which shards have replicas to confirm a change of consent (read again at most every 2 s).
    shared::store::refresh_topology(&mut s.conn.clone(), s.settings.redis.acks.as_ref()).await;
    let mut help = None;
    let mut confirmation = None;
    let mut unconfirmed = false;
    let mut revoked = Vec::new();
    for customer in &customers {
        let consent = shared::customers::consent_settings(&mut s.conn.clone(), customer)
            .await
            .map_err(|e| ApiError::redis(&e))?;
        // Twilio's own keywords keep their path (Twilio blocks and confirms them); anything else is read for a
        // revocation in the tenant's own words.
        let action = match keyword {
            Keyword::None => {
                let reading = revocation::STANDARD.classify(body, &consent.opt_out_words);
                let rule = reading.rule.unwrap_or_default();
                match reading.class {
                    Class::Revocation => ReplyAction::Revoke { rule },
                    Class::Suspected => {
                        ReplyAction::Suspect { rule, deadline_ms: revocation::review_deadline(now_ms()) }
                    }
                    Class::Ordinary => ReplyAction::None,
                }
            }
            k => k.into(),
        };
        let reply = Reply { from: &sender, body, action: action.clone(), as_written };
        let done = ledger.record_reply(customer, to, &sid, &reply).await.map_err(|e| ApiError::redis(&e))?;
        let consent_changing = !matches!(action, ReplyAction::None | ReplyAction::Help);
        unconfirmed |= consent_changing && !done.confirmed;
        match done.change {
            Some(OptChange::OptedOut) => {
                s.metrics.opt_outs.inc();
                tracing::info!(customer = %customer, from = %sender.masked(), via = action_name(&action), "recipient opted out");
                // One confirmation, for a revocation Twilio does not confirm itself (its own keywords it does);
                // only when this reply changed something, so a storm of repeats gets none.
                if matches!(action, ReplyAction::Revoke { .. }) {
                    confirmation = confirmation.or(Some(consent.confirmation(customer)));
                }
            }
            Some(OptChange::OptedIn) => {
                s.metrics.opt_ins.inc();
                tracing::info!(customer = %customer, from = %sender.masked(), "recipient opted back in");
            }
            Some(OptChange::Suspected) => {
                tracing::info!(customer = %customer, from = %sender.masked(), "a reply may revoke consent: held for review");
            }
            None => {}
        }
        if matches!(action, ReplyAction::Stop | ReplyAction::Revoke { .. }) {
            revoked.push(customer.clone());
        }
        help = help.or(done.help_text);
    }
    if unconfirmed {
        // Not yet as durable as a send: a failover now could lose the change of consent. Twilio delivers again.
        let mut r = ApiError::unavailable("the change of consent is not confirmed by Redis's replicas yet; retry")
            .into_response();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(r);
    }
    // A revocation is answered once no text to the tenant can still reach Twilio: a send that had its slot before
    // the opt-out is let finish first, and every later one sees the opt-out.
    let within = (s.settings.twilio.timeout + Duration::from_secs(2)).min(Duration::from_secs(13));
    for customer in &revoked {
        if !sends_settled(&ledger, customer, sender.as_str(), within).await.map_err(|e| ApiError::redis(&e))? {
            tracing::warn!(customer = %customer, from = %sender.masked(), "a text to a tenant who revoked consent is still on its way; answering 503 so Twilio delivers again");
            let mut r = ApiError::unavailable("a text to this tenant is still on its way; retry").into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return Ok(r);
        }
    }
    remember(&s, token).await;
    // HELP / INFO: the customer's help text as the reply (CTIA); a revocation in words: its one confirmation.
    if let Some(text) = help.or(confirmation) {
        return Ok(twiml_message(&text));
    }
    Ok(twiml())
}

/// The first `max` characters of `s`.
fn clip(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(at, _)| &s[..at])
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn action_name(a: &ReplyAction) -> &'static str {
    match a {
        ReplyAction::Stop => "keyword",
        ReplyAction::Revoke { .. } => "words",
        _ => "",
    }
}

/// Waits (up to `within`) until no job to `tenant` is in customer `customer`'s in-flight set — none that could still
/// reach Twilio. True when none is left.
async fn sends_settled(
    ledger: &Ledger,
    customer: &CustomerId,
    tenant: &str,
    within: Duration,
) -> redis::RedisResult<bool> {
    let mut left = ledger.in_flight_to(customer, tenant).await?;
    let deadline = Instant::now() + within;
    while !left.is_empty() {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = ledger.still_in_flight(customer, &left).await?;
    }
    Ok(true)
}

/// A carrier refused a text Twilio had accepted because a cap was spent (30022, 30023, 30027): hold that carrier's
/// texts of the customer until the cap renews, instead of sending them to be refused too.
async fn spent_cap(s: &Webhooks, customer: &CustomerId, code: u32, to: Option<&str>) -> Result<(), ApiError> {
    if !matches!(code, 30022 | 30023 | 30027) {
        return Ok(());
    }
    let mut conn = s.conn.clone();
    let line = match (code, to) {
        (30022, Some(to)) => {
            let now = shared::customers::redis_now_ms(&mut conn).await.map_err(|e| ApiError::redis(&e))?;
            carriers::cached_line(&mut conn, customer, to, now).await.map_err(|e| ApiError::redis(&e))?
        }
        _ => None,
    };
    let Some(spent) = carriers::Spent::of(code, line) else { return Ok(()) };
    let until =
        carriers::mark_spent(&mut conn, customer, spent, s.settings.cap_day).await.map_err(|e| ApiError::redis(&e))?;
    tracing::info!(customer = %customer, code, ?spent, until_ms = until, "a carrier cap is spent: holding those texts");
    Ok(())
}

/// `POST /twilio/status?b=<batch>`: a delivery report. Counted once per message in its batch's `delivered` or
/// `undelivered` (with Twilio's error code), however often and in whatever order reports arrive.
pub async fn status(
    State(s): State<Webhooks>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    RawBody(body): RawBody,
) -> Result<StatusCode, ApiError> {
    let batch = query
        .as_deref()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .and_then(|q| q.into_iter().find(|(k, _)| k == "b").map(|(_, v)| v))
        .and_then(|b| BatchId::parse(&b).ok());
    let Some(Webhook { params: p, token, .. }) =
        accept(&s, "/twilio/status", &query, &headers, &body, Subject::Batch(batch.clone())).await?
    else {
        return Ok(StatusCode::NO_CONTENT);
    };
    let batch = batch.ok_or_else(|| ApiError::unprocessable("status callback without a batch (?b=)").field("b"))?;
    let sid = p
        .get("MessageSid")
        .or(p.get("SmsSid"))
        .ok_or_else(|| ApiError::unprocessable("no MessageSid").field("MessageSid"))?;
    let status = p
        .get("MessageStatus")
        .or(p.get("SmsStatus"))
        .ok_or_else(|| ApiError::unprocessable("no MessageStatus").field("MessageStatus"))?;
    let code = p.get("ErrorCode").filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && c.len() <= 6);
    let to = p.get("To").and_then(|t| PhoneNumber::from_trusted(t).ok());
    let d = batches::record_delivery(
        &mut s.conn.clone(),
        &batch,
        sid,
        to.as_ref().map(PhoneNumber::as_str),
        status,
        code,
        s.settings.batch_retention,
    )
    .await
    .map_err(|e| ApiError::redis(&e))?;
    s.metrics.delivery(status, d == Delivery::Counted);
    if let Some(code) = code.and_then(|c| c.parse::<u32>().ok()) {
        spent_cap(&s, batch.customer(), code, p.get("To")).await?;
    }
    remember(&s, token).await;
    Ok(StatusCode::NO_CONTENT)
}
