//! The purchase lock and the steps of the purchase protocol (`docs/DESIGN.md`, section 5).
//!
//! Why not just the seed's fix (re-check inside the lock)? Because a lock can expire during a slow purchase, and a
//! worker can die after Twilio bought a number but before it was recorded: both double-buy. Here the decision to
//! buy is recorded as a *purchase intent* by the same script that re-checks capacity (`reserve.lua` in locked
//! mode), and the intent counts as capacity on the way: nobody buys while an intent is pending. The intent's id is
//! in the number's `FriendlyName`, so an unknown outcome is resolved by asking Twilio, never by buying again.
//!
//! A decision is sized to the customer's backlog (`reserve.lua`): it records one intent per number the backlog needs,
//! and the purchases run concurrently, each committed as it lands. For a customer with a Messaging Service, a bought
//! number is attached to the service's sender pool before it is committed to the pool, so it is never used bare;
//! a number bought but not attached (a crash, a failing attach) keeps its intent pending, and whoever resolves the
//! intent attaches it first.
//!
//! The orchestration (when to take the lock, how to wait, how many at once) lives in the worker; this module has the
//! pieces.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use redis::AsyncCommands;

use crate::customers::Customer;
use crate::domain::{AccountSid, AreaCode, CustomerId, PhoneNumber, ServiceSid};
use crate::keys::{self, CustomerKeys};
use crate::scripts;
use crate::store::Conn;
use crate::twilio::{BuyNumber, Disposition, TwilioClient, TwilioError, codes};

/// `msgr:<customer>:<intent>`: at most 5 + 32 + 1 + 16 = 54 characters, under Twilio's 64.
pub fn friendly_name(customer: &CustomerId, intent_id: &str) -> String {
    format!("{}{}", name_prefix(customer), intent_id)
}

/// `msgr:<customer>:`, the FriendlyName of every number bought for `customer` up to its intent id.
pub fn name_prefix(customer: &CustomerId) -> String {
    format!("msgr:{}:", customer.as_str())
}

/// Parses a FriendlyName written by [`friendly_name`].
pub fn parse_friendly_name(name: &str) -> Option<(CustomerId, String)> {
    let rest = name.strip_prefix("msgr:")?;
    let (customer, intent) = rest.split_once(':')?;
    Some((CustomerId::parse(customer).ok()?, intent.to_owned()))
}

pub fn new_intent_id() -> String {
    let bytes: [u8; 8] = rand::rng().random();
    hex::encode(bytes)
}

/// 12 random hex digits; a decision names its intents `<prefix><3 hex digits>` (16 characters at most).
pub fn new_intent_prefix() -> String {
    let bytes: [u8; 6] = rand::rng().random();
    hex::encode(bytes)
}

/// `<pid>:<random>`: unique, and tells an operator (or a chaos test) which process holds the lock.
fn new_token() -> String {
    let bytes: [u8; 12] = rand::rng().random();
    format!("{}:{}", std::process::id(), hex::encode(bytes))
}

/// A held purchase lock (`SET NX PX`), renewed in the background while held, released by compare-and-delete.
pub struct PurchaseLock {
    conn: Conn,
    key: String,
    token: String,
    ttl: Duration,
    /// Local instant before the last successful acquire/renew was sent: the lock is ours until at least
    /// `renewed_at + ttl` on our monotonic clock (Redis started counting later than we did).
    renewed_at: Arc<std::sync::Mutex<Instant>>,
    lost: Arc<AtomicBool>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl PurchaseLock {
    /// Tries once. `renew` keeps the lock alive while held; tests turn it off to let the lock expire mid-purchase.
    pub async fn try_acquire(
        conn: &Conn,
        customer: &CustomerId,
        ttl: Duration,
        renew: bool,
    ) -> redis::RedisResult<Option<Self>> {
        let key = CustomerKeys::new(customer).lock();
        let token = new_token();
        let sent_at = Instant::now();
        let ok: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn.clone())
            .await?;
        if ok.is_none() {
            return Ok(None);
        }
        let renewed_at = Arc::new(std::sync::Mutex::new(sent_at));
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = renew.then(|| {
            let (mut conn, key, token, renewed_at, lost) =
                (conn.clone(), key.clone(), token.clone(), renewed_at.clone(), lost.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let sent = Instant::now();
                    let r: redis::RedisResult<i64> =
                        scripts::LOCK_RENEW.key(&key).arg(&token).arg(ttl.as_millis() as u64).run(&mut conn).await;
                    match r {
                        Ok(1) => *renewed_at.lock().unwrap() = sent,
                        Ok(_) => {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        // A failed renewal is not a lost lock yet: the deadline check covers it.
                        Err(e) => {
                            tracing::warn!(error.message = %e, "purchase lock renewal failed")
                        }
                    }
                }
            })
        });
        Ok(Some(Self { conn: conn.clone(), key, token, ttl, renewed_at, lost, renewer }))
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// How long the lock is still certainly ours, by our own clock. Zero once it may have expired.
    pub fn remaining(&self) -> Duration {
        if self.lost.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        let since = self.renewed_at.lock().unwrap().elapsed();
        self.ttl.saturating_sub(since)
    }

    /// Releases the lock if it is still ours.
    pub async fn release(mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        let r: redis::RedisResult<i64> =
            scripts::LOCK_RELEASE.key(&self.key).arg(&self.token).run(&mut self.conn).await;
        if let Err(e) = r {
            // It expires on its own within the TTL.
            tracing::warn!(error.message = %e, "could not release purchase lock");
        }
    }
}

impl Drop for PurchaseLock {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}

/// The account that owns a customer's numbers.
pub fn account_for<'a>(customer: &'a Customer, twilio: &'a TwilioClient) -> &'a AccountSid {
    customer.account_sid.as_ref().unwrap_or_else(|| twilio.account())
}

/// A number Twilio sold us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bought {
    pub number: String,
    pub sid: String,
}

/// How a purchase attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum BuyOutcome {
    Bought(Bought),
    /// Twilio definitely did not sell a number (the intent can be dropped); retry later.
    NotBought {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Unknown: the intent must stay until resolved against Twilio's list.
    Unknown {
        reason: String,
    },
}

/// Numbers a search found, shared by the concurrent purchases of one decision so that they try different ones (a
/// number bought by one of them would cost the others a 21422 and a request).
#[derive(Default)]
pub struct Candidates(tokio::sync::Mutex<Vec<String>>);

impl Candidates {
    /// The next candidate, searching (in random order) when none are left. `want`: how many purchases share them.
    async fn next(
        &self,
        twilio: &TwilioClient,
        account: &AccountSid,
        want: usize,
    ) -> Result<Option<String>, BuyOutcome> {
        let mut list = self.0.lock().await;
        if list.is_empty() {
            let found =
                twilio.search_local(account, "US", None, (want + 10).clamp(20, 200) as u32).await.map_err(|e| {
                    let retry_after = match e.disposition() {
                        Disposition::Transient { retry_after } => retry_after,
                        _ => None,
                    };
                    BuyOutcome::NotBought { reason: format!("search: {}", e.short_reason()), retry_after }
                })?;
            list.extend(found.into_iter().filter_map(|c| c.phone_number));
            // Customers buying at the same moment search the same list: random order keeps them apart.
            rand::seq::SliceRandom::shuffle(list.as_mut_slice(), &mut rand::rng());
            if list.is_empty() {
                return Ok(None);
            }
        }
        Ok(list.pop())
    }
}

/// Buys one number for `customer`, tagged with the intent. Uses `AreaCode` directly when the customer has one;
/// otherwise takes numbers from `candidates` (one search shared by the purchases of a decision). No Twilio call
/// starts after `deadline` (the intent must outlive every request made for it).
pub async fn buy(
    twilio: &TwilioClient,
    customer: &Customer,
    intent_id: &str,
    sms_url: Option<&str>,
    deadline: Instant,
    candidates: &Candidates,
    sharing: usize,
) -> BuyOutcome {
    let out_of_time = || BuyOutcome::NotBought { reason: "purchase took too long".into(), retry_after: None };
    let account = account_for(customer, twilio);
    let name = friendly_name(&customer.id, intent_id);
    let classify = |e: TwilioError| match e.create_disposition() {
        Disposition::Ambiguous => BuyOutcome::Unknown { reason: e.short_reason() },
        Disposition::Transient { retry_after } => BuyOutcome::NotBought { reason: e.short_reason(), retry_after },
        Disposition::Permanent => BuyOutcome::NotBought { reason: e.short_reason(), retry_after: None },
    };
    let done = |n: crate::twilio::types::IncomingPhoneNumber| match (n.phone_number, n.sid) {
        (Some(number), Some(sid)) => BuyOutcome::Bought(Bought { number, sid }),
        // A 201 without the fields we need: the number exists but we cannot record it; let reconcile adopt it.
        _ => BuyOutcome::Unknown { reason: "purchase response without phone_number/sid".into() },
    };
    if Instant::now() >= deadline {
        return out_of_time();
    }
    if let Some(area) = customer.area_code.as_ref().map(AreaCode::as_str) {
        let req = BuyNumber { area_code: Some(area), friendly_name: &name, sms_url, ..Default::default() };
        return twilio.buy_number(account, &req).await.map_or_else(classify, done);
    }
    // A few searches at most: numbers taken by others between search and purchase are skipped.
    for _ in 0..(sharing + 40) {
        let candidate = match candidates.next(twilio, account, sharing).await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(not_bought) => return not_bought,
        };
        if Instant::now() >= deadline {
            return out_of_time();
        }
        let req = BuyNumber { phone_number: Some(&candidate), friendly_name: &name, sms_url, ..Default::default() };
        match twilio.buy_number(account, &req).await {
            Ok(n) => return done(n),
            // Someone else took it between search and purchase: try the next candidate.
            Err(e) if e.code() == Some(codes::NUMBER_NOT_AVAILABLE) => continue,
            Err(e) => return classify(e),
        }
    }
    BuyOutcome::NotBought { reason: "no available numbers".into(), retry_after: None }
}

/// How attaching a number to a Messaging Service ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Attach {
    /// In the service's sender pool (now, or already: a retried attach answers 21710).
    Attached,
    /// The service's sender pool is full (21714): this number can never be attached there.
    ServiceFull(String),
    /// Refused for good (the number is in another service, 21712, or the service does not exist).
    Refused(String),
    /// Failed for now (or the outcome is unknown, which a retry settles: a repeat is harmless).
    Transient { reason: String, retry_after: Option<Duration> },
}

/// Adds `number` to `service`'s sender pool.
pub async fn attach(twilio: &TwilioClient, service: &ServiceSid, number: &Bought) -> Attach {
    match twilio.attach_number(service.as_str(), &number.sid).await {
        Ok(_) => Attach::Attached,
        Err(e) => match e.code() {
            Some(codes::ALREADY_IN_SERVICE | codes::ALREADY_IN_SERVICE_ALT) => Attach::Attached,
            Some(codes::SERVICE_POOL_FULL) => Attach::ServiceFull(e.short_reason()),
            _ => match e.create_disposition() {
                Disposition::Permanent => Attach::Refused(e.short_reason()),
                Disposition::Transient { retry_after } => Attach::Transient { reason: e.short_reason(), retry_after },
                Disposition::Ambiguous => Attach::Transient { reason: e.short_reason(), retry_after: None },
            },
        },
    }
}

/// Adds a bought or adopted number to the pool and clears its intent (atomic, idempotent). Also indexes the number
/// for inbound webhooks.
pub async fn commit_number(
    conn: &mut Conn,
    customer: &CustomerId,
    number: &Bought,
    intent_id: &str,
) -> redis::RedisResult<bool> {
    let k = CustomerKeys::new(customer);
    let added: i64 = scripts::PURCHASE_COMMIT
        .key(k.pool())
        .key(k.pool_meta())
        .key(k.intents())
        .arg(&number.number)
        .arg(&number.sid)
        .arg(intent_id)
        .run(conn)
        .await?;
    // Index the number for inbound webhooks, and tell waiting workers in other processes at once (two commands:
    // the index and the channel live in different slots of a Redis Cluster).
    let _: () = conn.hset(keys::NUMBERS, &number.number, customer.as_str()).await?;
    let _: () = conn.publish(keys::POOL_CHANNEL, customer.as_str()).await?;
    Ok(added == 1)
}

/// Drops an intent that bought nothing (compare-and-delete on its stored value).
pub async fn abandon_intent(
    conn: &mut Conn,
    customer: &CustomerId,
    intent_id: &str,
    value: &str,
) -> redis::RedisResult<bool> {
    let k = CustomerKeys::new(customer);
    let n: i64 = scripts::INTENT_ABANDON.key(k.intents()).arg(intent_id).arg(value).run(conn).await?;
    Ok(n == 1)
}

/// Drops every intent of a decision (by its id prefix) whose reply never reached the caller: the script may have
/// recorded them, and no purchase was started for any.
pub async fn abandon_decision(conn: &mut Conn, customer: &CustomerId, prefix: &str) -> redis::RedisResult<u64> {
    let k = CustomerKeys::new(customer);
    scripts::INTENT_ABANDON.key(k.intents()).arg(prefix).arg("*prefix").run(conn).await
}

/// Pending intents of a customer: id → (created ms, FriendlyName, raw value).
pub async fn pending_intents(conn: &mut Conn, customer: &CustomerId) -> redis::RedisResult<Vec<Intent>> {
    let k = CustomerKeys::new(customer);
    let m: std::collections::HashMap<String, String> = conn.hgetall(k.intents()).await?;
    Ok(m.into_iter()
        .map(|(id, raw)| {
            let (created, name) = raw.split_once('|').unwrap_or((&raw, ""));
            Intent { created_ms: created.parse().unwrap_or(0), friendly_name: name.to_owned(), id, raw }
        })
        .collect())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub id: String,
    pub created_ms: i64,
    pub friendly_name: String,
    /// The stored value, for compare-and-delete.
    pub raw: String,
}

/// What resolving an intent found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Twilio has a number tagged with the intent: it is now in the pool.
    Adopted(String),
    /// Nothing was bought and the purchase can no longer complete: the intent is dropped.
    Abandoned,
    /// Too early to tell (the purchase may still be running).
    Pending,
}

/// Resolves a pending intent against Twilio's list of numbers (`FriendlyName` filter).
///
/// An intent is only dropped once it is older than `stale_after`, which must exceed the longest a purchase request
/// can take (the Twilio timeout plus the lock TTL), so a purchase still on the wire cannot land after its intent was
/// given up.
pub async fn resolve_intent(
    conn: &mut Conn,
    twilio: &TwilioClient,
    customer: &Customer,
    intent: &Intent,
    now_ms: i64,
    stale_after: Duration,
) -> Result<Resolution, anyhow::Error> {
    let account = account_for(customer, twilio);
    let name = if intent.friendly_name.is_empty() {
        friendly_name(&customer.id, &intent.id)
    } else {
        intent.friendly_name.clone()
    };
    let found = twilio.list_numbers(account, Some(&name), None).await?;
    if let Some(n) = found.iter().find(|n| n.phone_number.is_some() && n.sid.is_some()) {
        let bought = Bought { number: n.phone_number.clone().unwrap(), sid: n.sid.clone().unwrap() };
        // A number of a customer with a Messaging Service is never used bare: attach it first.
        if let Some(service) = &customer.messaging_service {
            match attach(twilio, service, &bought).await {
                Attach::Attached => {}
                Attach::Transient { reason, .. } => {
                    tracing::warn!(customer = %customer.id, intent = %intent.id, %reason,
                        "a bought number is not attached to its Messaging Service yet; will retry");
                    return Ok(Resolution::Pending);
                }
                Attach::ServiceFull(reason) | Attach::Refused(reason) => {
                    // It can never send for this customer: give it back rather than pay for it every month.
                    twilio.release_number(account, &bought.sid).await?;
                    abandon_intent(conn, &customer.id, &intent.id, &intent.raw).await?;
                    tracing::error!(customer = %customer.id, intent = %intent.id, %reason,
                        "released a bought number its Messaging Service refused");
                    return Ok(Resolution::Abandoned);
                }
            }
        }
        commit_number(conn, &customer.id, &bought, &intent.id).await?;
        tracing::info!(customer = %customer.id, number = %PhoneNumber::from_trusted(&bought.number).map(|p| p.masked().to_string()).unwrap_or_default(),
            intent = %intent.id, "adopted a number whose purchase outcome was unknown");
        return Ok(Resolution::Adopted(bought.number));
    }
    if now_ms - intent.created_ms > stale_after.as_millis() as i64 {
        abandon_intent(conn, &customer.id, &intent.id, &intent.raw).await?;
        tracing::info!(customer = %customer.id, intent = %intent.id, "dropped a purchase intent that bought nothing");
        return Ok(Resolution::Abandoned);
    }
    Ok(Resolution::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendly_names_fit_twilio_and_round_trip() {
        let c = CustomerId::parse(&"c".repeat(32)).unwrap();
        let id = new_intent_id();
        let name = friendly_name(&c, &id);
        assert!(name.len() <= 64, "{}", name.len());
        assert_eq!(parse_friendly_name(&name), Some((c, id)));
        assert_eq!(parse_friendly_name("(415) 555-0100"), None);
    }
}
