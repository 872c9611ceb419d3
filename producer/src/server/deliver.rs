//! Delivery of customers' events to their endpoints (`events_url`), signed per Standard Webhooks; runs inside every
//! `producer serve`, apart from sending (workers never wait for an endpoint, however slow or dead it is).
//!
//! # What it keeps in Redis (per customer, `keys.rs`)
//! - a lease (`{c:ID}:events:lease`, `SET NX PX`): one server delivers a customer's events at a time (a pass
//!   starts no delivery after 3 s, and the lease lasts that plus a delivery's timeout plus 5 s);
//! - `{c:ID}:events:lanes`: per lane, the id of the last event handled (delivered or dead-lettered), and `start`
//!   (events before it, recorded before the URL was set, are not delivered);
//! - `{c:ID}:events:retry`: per lane, its failing head event `<id>|<attempts>|<due ms>`;
//! - `{c:ID}:events:dead` (ZSET, id → when) and `{c:ID}:events:dead:why` (id → attempts and last error);
//!   `{c:ID}:events:replay`: dead letters queued (API) to be sent once more.
//!
//! # How
//! Events are split into lanes by recipient (or batch), `MESSENGER_EVENTS_CONCURRENCY` of them: a lane delivers
//! its events one at a time in stream order, lanes run side by side. So a recipient's events leave in the order
//! they happened, and an event that fails holds back only its lane: it is tried again on the retry schedule, and
//! after the last attempt dead-lettered (listed in the API) and its lane moves on. An event is marked handled only
//! after the endpoint answered 2xx (at least once: a server killed mid-delivery delivers it again, same
//! `webhook-id`). `410 Gone` stops delivery to the URL (`events_disabled` in the customer's record) until it is
//! saved again; events are still recorded and can be pulled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use shared::customers::{Customer, EventsSecret, PreviousSecret, StoredSecret};
use shared::keys::CustomerKeys;
use shared::secrets;

use crate::ops::Deps;
use crate::ops::events::{Event, StreamEntry, event};

/// Events read per lane-pass, and how often a server looks for work.
const PAGE: usize = 500;
const TICK: Duration = Duration::from_millis(200);
/// A pass starts no delivery after this long; the lease outlives a pass (this, plus one delivery's timeout, plus a
/// margin), so two servers never deliver one customer's lanes at once.
const PASS: Duration = Duration::from_secs(3);
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// How often the list of customers with an endpoint is re-read.
const CUSTOMERS_EVERY: Duration = Duration::from_secs(3);

/// Runs until the task is dropped (the server shutting down), leasing customers under `token` (this server's).
pub async fn run(deps: Deps, token: String) {
    let d = match Deliverer::new(deps, token) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::error!(error = %e, "event delivery disabled: cannot build its HTTP client");
            return;
        }
    };
    let mut targets: Vec<Customer> = Vec::new();
    let mut listed = Instant::now() - CUSTOMERS_EVERY;
    loop {
        if listed.elapsed() >= CUSTOMERS_EVERY {
            match crate::ops::customers::list(&d.deps).await {
                Ok(all) => {
                    targets = all
                        .into_iter()
                        .filter(|c| c.events_url.is_some() && c.events_secret.is_some() && c.events_disabled.is_none())
                        .collect();
                }
                Err(e) => tracing::warn!(error = %e, "event delivery: cannot list customers"),
            }
            listed = Instant::now();
        }
        let passes = targets.iter().map(|c| {
            let d = d.clone();
            async move {
                match d.pass(c).await {
                    Ok(stopped) => stopped,
                    Err(e) => {
                        tracing::warn!(customer = %c.id, error = %e, "event delivery pass failed; retried shortly");
                        false
                    }
                }
            }
        });
        // A customer whose endpoint answered 410 is dropped at once, not at the next listing.
        let stopped = futures::future::join_all(passes).await;
        let mut i = 0;
        targets.retain(|_| {
            i += 1;
            !stopped[i - 1]
        });
        tokio::time::sleep(TICK).await;
    }
}

/// Gives back the leases `token` holds (a server shutting down), so another server delivers those customers' events
/// at once rather than after the lease runs out. An event cut off mid-delivery goes again, with the same id.
pub async fn hand_back(deps: &Deps, token: &str) {
    let mut conn = deps.conn();
    let Ok(ids) = shared::customers::list(&mut conn).await else { return };
    for id in ids {
        let released: redis::RedisResult<i64> =
            shared::scripts::LOCK_RELEASE.key(CustomerKeys::new(&id).events_lease()).arg(token).run(&mut conn).await;
        if let Ok(1) = released {
            tracing::info!(customer = %id, "event delivery handed back");
        }
    }
}

struct Deliverer {
    deps: Deps,
    http: reqwest::Client,
    /// This server's lease token.
    token: String,
    /// Customers whose stored secret does not open (said once each, until it opens again).
    unopened: std::sync::Mutex<std::collections::HashSet<shared::domain::CustomerId>>,
}

/// One delivery's outcome.
enum Outcome {
    Delivered,
    Failed(String),
    Gone,
}

impl Deliverer {
    fn new(deps: Deps, token: String) -> Result<Self, reqwest::Error> {
        shared::twilio::client::ensure_tls_provider();
        let events = &deps.settings.events;
        let http = reqwest::Client::builder()
            .timeout(events.timeout)
            .connect_timeout(events.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(crate::ssrf::GuardedResolver { allow_private: events.allow_private })
            .no_proxy()
            .user_agent(concat!("messenger-events/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { deps, http, token, unopened: Default::default() })
    }

    fn lease_ms(&self) -> u64 {
        (PASS + self.deps.settings.events.timeout + LEASE_MARGIN).as_millis() as u64
    }

    /// Takes or renews the customer's lease; false when another server holds it.
    async fn lease(&self, k: &CustomerKeys) -> redis::RedisResult<bool> {
        let mut conn = self.deps.conn();
        let key = k.events_lease();
        let got: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&self.token)
            .arg("NX")
            .arg("PX")
            .arg(self.lease_ms())
            .query_async(&mut conn)
            .await?;
        if got.is_some() {
            return Ok(true);
        }
        let holder: Option<String> = conn.get(&key).await?;
        if holder.as_deref() == Some(self.token.as_str()) {
            let _: () = conn.pexpire(&key, self.lease_ms() as i64).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The customer's secrets in clear, as read in this pass: the current one, and the replaced one while it still
    /// signs. What is stored in clear (from before sealing) or under a previous key is sealed under the current key
    /// on the way (each field only if it still holds what was read). `None` when the current one does not open
    /// (said once per customer): no delivery until it does.
    async fn open_secrets(
        &self,
        c: &Customer,
        stored: &str,
        previous_field: Option<&str>,
        now_ms: i64,
    ) -> redis::RedisResult<Option<(EventsSecret, Option<EventsSecret>)>> {
        let keys = self.deps.settings.events.keys.as_ref();
        let owner = c.id.as_str();
        let current = match secrets::open(keys, stored, owner) {
            Ok(o) => {
                if self.unopened.lock().expect("not poisoned").remove(&c.id) {
                    tracing::info!(customer = %c.id, "event delivery: the customer's secret opens again; delivering");
                }
                o
            }
            Err(e) => {
                if self.unopened.lock().expect("not poisoned").insert(c.id.clone()) {
                    tracing::error!(customer = %c.id, problem = %e, "event delivery stopped: the customer's events secret does not open");
                }
                return Ok(None);
            }
        };
        let previous = previous_field.filter(|p| !p.is_empty()).and_then(PreviousSecret::parse);
        let previous_open = previous.as_ref().and_then(|p| secrets::open(keys, &p.secret.0, owner).ok());
        if let Some(keys) = keys {
            let mut swaps: Vec<(&str, String, String)> = Vec::new();
            if !current.current {
                swaps.push(("events_secret", stored.to_owned(), keys.seal(&current.plain, owner)));
            }
            if let (Some(p), Some(o)) = (&previous, &previous_open)
                && !o.current
            {
                let sealed = PreviousSecret { secret: StoredSecret(keys.seal(&o.plain, owner)), until_ms: p.until_ms };
                swaps.push(("events_secret_prev", previous_field.unwrap_or_default().to_owned(), sealed.to_string()));
            }
            if !swaps.is_empty() {
                // Sealing on the way is an improvement, not a condition of delivery: a failure waits for the next pass.
                match shared::customers::reseal(&mut self.deps.conn(), &c.id, &swaps).await {
                    Ok(n) => {
                        tracing::info!(customer = %c.id, sealed = n, key = keys.current_id(), "events secrets sealed under the current key")
                    }
                    Err(e) => {
                        tracing::warn!(customer = %c.id, error.message = %e, "events secrets not sealed anew this pass")
                    }
                }
            }
        }
        let live = previous.as_ref().is_some_and(|p| p.live_at(now_ms).is_some());
        Ok(Some((EventsSecret(current.plain), previous_open.filter(|_| live).map(|o| EventsSecret(o.plain)))))
    }

    /// One round of deliveries for customer `c`; true when its endpoint answered 410 Gone (delivery stopped).
    async fn pass(&self, c: &Customer) -> redis::RedisResult<bool> {
        let k = CustomerKeys::new(&c.id);
        if !self.lease(&k).await? {
            return Ok(false);
        }
        let lanes = self.deps.settings.events.concurrency as usize;
        let mut conn = self.deps.conn();
        // The endpoint and its secrets are read afresh each pass (the customer list is re-read only every few
        // seconds): a rotated secret signs from the next delivery on, a new URL gets nothing meant for the old one.
        type Fresh = (Option<String>, Option<String>, Option<String>, Option<String>);
        type Read = (HashMap<String, String>, HashMap<String, String>, (i64, i64), Fresh);
        let (done, retry, now, fresh): Read = redis::pipe()
            .hgetall(k.events_lanes())
            .hgetall(k.events_retry())
            .cmd("TIME")
            .cmd("HMGET")
            .arg(k.cfg())
            .arg(&["events_url", "events_secret", "events_secret_prev", "events_disabled"])
            .query_async(&mut conn)
            .await?;
        let (url, secret, previous, disabled) = fresh;
        let (Some(url), Some(secret)) = (url.filter(|u| !u.is_empty()), secret.filter(|s| !s.is_empty())) else {
            return Ok(false);
        };
        if disabled.is_some_and(|d| !d.is_empty()) {
            return Ok(false);
        }
        // A URL that names an address is connected to without the resolver (which checks names): it is checked here,
        // at every pass, so one saved before a rule was added is not called either.
        if !self.deps.settings.events.allow_private
            && let Some(why) = crate::ssrf::forbidden_literal(&url)
        {
            if self.unopened.lock().expect("not poisoned").insert(c.id.clone()) {
                tracing::error!(customer = %c.id, why, "event delivery stopped: the endpoint's address is not public");
            }
            return Ok(false);
        }
        let url = url.as_str();
        let now_ms = now.0 * 1000 + now.1 / 1000;
        let Some((current, previous)) = self.open_secrets(c, &secret, previous.as_deref(), now_ms).await? else {
            return Ok(false);
        };
        let Some(signer) = Signer::new(&current, previous.as_ref()) else {
            tracing::warn!(customer = %c.id, "event delivery: the stored secret is not whsec_ and base64");
            return Ok(false);
        };
        let start = done.get("start").cloned().unwrap_or_else(|| "0-0".into());
        let done_of = |lane: usize| done.get(&lane.to_string()).cloned().unwrap_or_else(|| start.clone());

        // Each lane: its queue of events to deliver now, in order. A blocked lane gets its head event when due.
        let mut queues: Vec<Vec<Event>> = vec![Vec::new(); lanes];
        let mut heads: Vec<Option<(String, u32)>> = vec![None; lanes];
        for (lane, v) in &retry {
            let Ok(lane) = lane.parse::<usize>() else { continue };
            if lane >= lanes {
                continue;
            }
            let mut p = v.split('|');
            let (id, attempts, due) = (p.next().unwrap_or(""), p.next().unwrap_or("0"), p.next().unwrap_or("0"));
            heads[lane] = Some((id.to_owned(), attempts.parse().unwrap_or(0)));
            if due.parse::<i64>().unwrap_or(0) <= now_ms {
                let rows: Vec<StreamEntry> =
                    redis::cmd("XRANGE").arg(k.events()).arg(id).arg(id).query_async(&mut conn).await?;
                match rows.into_iter().next() {
                    Some((sid, fields)) => queues[lane].push(event(&c.id, &sid, fields)),
                    // Trimmed away meanwhile (retention): nothing left to deliver.
                    None => self.handled(&k, lane, id, None).await?,
                }
            }
        }
        let open: Vec<usize> = (0..lanes).filter(|l| heads[*l].is_none()).collect();
        if let Some(from) = open.iter().map(|l| done_of(*l)).min_by_key(|id| stream_key(id)) {
            let rows: Vec<StreamEntry> = redis::cmd("XRANGE")
                .arg(k.events())
                .arg(format!("({from}"))
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await?;
            for (sid, fields) in rows {
                let e = event(&c.id, &sid, fields);
                let lane = lane_of(&e, lanes);
                if heads[lane].is_none() && stream_key(&sid) > stream_key(&done_of(lane)) {
                    queues[lane].push(e);
                }
            }
        }

        // Replays asked for through the API: once each, apart from the lanes.
        let replays: Vec<String> =
            redis::cmd("ZRANGE").arg(k.events_replay()).arg(0).arg(49).query_async(&mut conn).await?;
        for id in replays {
            let rows: Vec<StreamEntry> =
                redis::cmd("XRANGE").arg(k.events()).arg(&id).arg(&id).query_async(&mut conn).await?;
            let mut pipe = redis::pipe();
            pipe.zrem(k.events_replay(), &id).ignore();
            if let Some((sid, fields)) = rows.into_iter().next() {
                let why = match self.deliver(url, &signer, &event(&c.id, &sid, fields)).await {
                    Outcome::Delivered => None,
                    Outcome::Failed(why) => Some(why),
                    Outcome::Gone => Some("answered 410 Gone".to_owned()),
                };
                match why {
                    None => {
                        pipe.hdel(k.events_dead_why(), &id).ignore();
                    }
                    Some(why) => {
                        let ms: i64 = id.split('-').next().and_then(|m| m.parse().ok()).unwrap_or(0);
                        pipe.zadd(k.events_dead(), &id, ms).ignore();
                        pipe.hset(k.events_dead_why(), &id, format!("replayed at {}: {why}", now_iso(now_ms))).ignore();
                    }
                }
            }
            let (): () = pipe.query_async(&mut conn).await?;
        }

        let schedule = &self.deps.settings.events.retry_schedule.0;
        let deadline = Instant::now() + PASS;
        let gone = std::sync::atomic::AtomicBool::new(false);
        let work = queues.into_iter().enumerate().filter(|(_, q)| !q.is_empty()).map(|(lane, queue)| {
            let head = heads[lane].clone();
            let (signer, gone, k) = (&signer, &gone, &k);
            async move {
                for e in queue {
                    if gone.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() >= deadline {
                        return Ok(());
                    }
                    match self.deliver(url, signer, &e).await {
                        Outcome::Delivered => self.handled(k, lane, e.id.trim_start_matches("evt_"), None).await?,
                        Outcome::Gone => {
                            gone.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Ok(());
                        }
                        Outcome::Failed(why) => {
                            let raw = e.id.trim_start_matches("evt_");
                            let attempts = match &head {
                                Some((id, n)) if id == raw => n + 1,
                                _ => 1,
                            };
                            match schedule.get(attempts as usize - 1) {
                                Some(wait) => {
                                    let due = now_ms + wait.as_millis() as i64;
                                    let _: () = self
                                        .deps
                                        .conn()
                                        .hset(k.events_retry(), lane, format!("{raw}|{attempts}|{due}"))
                                        .await?;
                                    tracing::info!(customer = %c.id, event = %e.id, attempts, error = %why,
                                        "event delivery failed; tried again later");
                                }
                                None => {
                                    tracing::warn!(customer = %c.id, event = %e.id, attempts, error = %why,
                                        "event delivery failed on every attempt: dead-lettered");
                                    self.handled(k, lane, raw, Some(format!("{attempts} attempts; last: {why}")))
                                        .await?;
                                    continue;
                                }
                            }
                            return Ok(());
                        }
                    }
                }
                Ok::<(), redis::RedisError>(())
            }
        });
        for r in futures::future::join_all(work).await {
            r?;
        }
        if gone.load(std::sync::atomic::Ordering::Relaxed) {
            let why = format!("the endpoint answered 410 Gone at {}; save the URL again to resume", now_iso(now_ms));
            tracing::warn!(customer = %c.id, "event endpoint answered 410 Gone: delivery stopped");
            let _: () = conn.hset(k.cfg(), "events_disabled", why).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Marks an event of `lane` handled: delivered, or dead-lettered with `dead`.
    async fn handled(&self, k: &CustomerKeys, lane: usize, id: &str, dead: Option<String>) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.hset(k.events_lanes(), lane, id).ignore().hdel(k.events_retry(), lane).ignore();
        if let Some(why) = dead {
            let ms: i64 = id.split('-').next().and_then(|m| m.parse().ok()).unwrap_or(0);
            pipe.zadd(k.events_dead(), id, ms).ignore().hset(k.events_dead_why(), id, why).ignore();
        }
        pipe.query_async(&mut self.deps.conn()).await
    }

    async fn deliver(&self, url: &str, signer: &Signer, e: &Event) -> Outcome {
        let body = serde_json::to_vec(&serde_json::json!({"type": e.kind, "timestamp": e.timestamp, "data": e.data}))
            .expect("serialisable");
        let ts = chrono::Utc::now().timestamp();
        let Some(signature) = signer.sign(&e.id, ts, &body) else { return Outcome::Failed("cannot sign".into()) };
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &e.id)
            .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, ts.to_string())
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            Ok(r) if r.status() == reqwest::StatusCode::GONE => Outcome::Gone,
            Ok(r) => Outcome::Failed(format!("answered {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Outcome::Failed("timed out".into()),
            Err(e) => Outcome::Failed(format!("could not be reached ({})", short(&e))),
        }
    }
}

/// The innermost cause of a request error, without the URL (it may carry a customer's path).
fn short(e: &reqwest::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

fn now_iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A stream id as numbers, for comparing (`<ms>-<n>`).
fn stream_key(id: &str) -> (u64, u64) {
    let (ms, n) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), n.parse().unwrap_or(0))
}

/// The lane of an event: by recipient, else by batch, else by id (FNV-1a, stable across servers and restarts).
fn lane_of(e: &Event, lanes: usize) -> usize {
    let key = ["recipient", "batch"].iter().find_map(|f| e.data.get(*f).and_then(|v| v.as_str())).unwrap_or(&e.id);
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % lanes.max(1) as u64) as usize
}

/// Signs a delivery with the customer's secret and, during a rotation's overlap, with the secret it replaced too:
/// `v1,<new> v1,<old>` (Standard Webhooks: space-separated signatures; a receiver accepts any that verifies).
struct Signer {
    current: standardwebhooks::Webhook,
    previous: Option<standardwebhooks::Webhook>,
}

impl Signer {
    /// `None` when the current secret is not `whsec_` and base64 (a previous one that is not is left out).
    fn new(secret: &EventsSecret, previous: Option<&EventsSecret>) -> Option<Self> {
        let current = standardwebhooks::Webhook::new(&secret.0).ok()?;
        let previous = previous.and_then(|p| standardwebhooks::Webhook::new(&p.0).ok());
        Some(Self { current, previous })
    }

    fn sign(&self, id: &str, ts: i64, body: &[u8]) -> Option<String> {
        let mut header = self.current.sign(id, ts, body).ok()?;
        if let Some(p) = &self.previous {
            header.push(' ');
            header.push_str(&p.sign(id, ts, body).ok()?);
        }
        Some(header)
    }
}
