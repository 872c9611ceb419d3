//! The purchase path: a customer has no capacity, so decide whether it needs numbers, buy them, and tell the jobs
//! waiting for them. It owns the customer's numbers; it never decides a job's fate — it answers the send path with a
//! [`Capacity`] and the send path (which owns the job) acts on it.
//!
//! One task per customer per process works this path at a time (the others wait for its step to end), so a full
//! customer costs one Redis poller per process, not one per handler. Across processes the purchase lock
//! (`SET NX`) elects one decider; inside it, `reserve.lua` re-checks capacity and pending intents and sizes the
//! decision to the backlog, recording one intent per number in the same script (`docs/DESIGN.md`, section 5). The
//! decided purchases then run concurrently (at most `MESSENGER_PURCHASE_CONCURRENCY`) in a task that holds the lock
//! until the last one ends; each number is attached to the customer's Messaging Service (if any) and committed as
//! it lands, and the jobs waiting for capacity resume on the first one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use shared::customers::Customer;
use shared::domain::CustomerId;
use shared::keys::CustomerKeys;
use shared::ledger::{Decision, Full, Job, Reserve, ReserveMode, Rules, Slot};
use shared::purchase::{self, Attach, BuyOutcome, Candidates, PurchaseLock};
use tokio::sync::{Notify, oneshot};

use crate::context::Shared;
use crate::stats::Tally;

/// What the purchase path tells the send path about a job that found no capacity.
#[derive(Debug)]
pub enum Capacity {
    /// Look for a slot again (the pool changed, a purchase is under way elsewhere, or the wait ended).
    Retry,
    /// The re-check under the lock found a slot for this job.
    Reserved(Slot),
    /// No number can be added: the job waits for the window to free a slot (the reason goes to the batch status).
    Defer { reason: String },
    /// Look again after this long (orphaned reservations may turn out to be free capacity).
    WaitFor(Duration),
    /// The purchase failed: the job retries later, or fails once it has run out of attempts.
    NotBought { reason: String, retry_after: Option<Duration> },
    /// The reserve script ended the job or says it is no longer ours, or its customer is gone.
    Gone,
    /// The process is shutting down: hand the job back.
    Stopping,
}

/// The slow path of one customer in this process: one task works it, the others wait for its step to end.
#[derive(Default)]
struct Gate {
    /// Held by the task on the slow path; the value is when it last asked Twilio about a pending intent.
    slow: tokio::sync::Mutex<Option<Instant>>,
    /// Bumped when that task finishes a step, waking every task that queued behind it at once, so they retry the
    /// fast path concurrently instead of one at a time.
    round: tokio::sync::watch::Sender<u64>,
    /// Wakes tasks waiting for the customer's pool to change (a number bought or adopted, here or elsewhere).
    pool: Notify,
}

/// Bumps the gate's round when the slow-path step ends, however it ends.
struct RoundEnd<'a>(&'a Gate);

impl Drop for RoundEnd<'_> {
    fn drop(&mut self) {
        self.0.round.send_modify(|r| *r += 1);
    }
}

pub struct Purchases {
    shared: Arc<Shared>,
    gates: Mutex<HashMap<CustomerId, Arc<Gate>>>,
}

impl Purchases {
    pub fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self { shared, gates: Mutex::default() })
    }

    fn gate(&self, c: &CustomerId) -> Arc<Gate> {
        self.gates.lock().unwrap().entry(c.clone()).or_default().clone()
    }

    /// Wakes this process's tasks waiting on `c`'s pool (a number bought or adopted, here or elsewhere).
    pub fn pool_changed(&self, c: &CustomerId) {
        self.gate(c).pool.notify_waiters();
    }

    /// No number of the job's customer has capacity (`f`, fresh from the reserve script). Defer at max numbers;
    /// otherwise, one task per process per customer at a time waits for a purchase in flight (resolving it if its
    /// outcome is unknown) or makes a decision.
    pub async fn need_capacity(self: &Arc<Self>, job: &Job, f: &Full, rules: &Rules) -> Capacity {
        if f.at_max() && f.pending_intents == 0 {
            return Capacity::Defer { reason: at_max_reason(f) };
        }
        let gate = self.gate(&job.customer);
        let mut round = gate.round.subscribe();
        let Ok(mut last_resolve) = gate.slow.try_lock() else {
            // Another task of this process is on it: wait for its step to end, then try the fast path again.
            let mut stop = self.shared.stop.clone();
            tokio::select! {
                _ = round.changed() => {}
                _ = tokio::time::sleep(self.shared.settings.shared.lock_ttl.max(Duration::from_secs(2))) => {}
                _ = stop.changed() => {}
            }
            return Capacity::Retry;
        };
        let _end = RoundEnd(&gate);
        if self.shared.stopping() {
            return Capacity::Stopping;
        }
        // `f` is fresh: nothing awaited between the reserve that returned it and taking the gate (which never
        // queues). Capacity that appears from here on is caught by the re-check inside the purchase lock.
        if f.pending_intents > 0 {
            let settings = &self.shared.settings;
            let settle_after = (settings.shared.twilio.timeout + Duration::from_secs(2)).as_millis() as i64;
            let old = f.oldest_intent_ms.is_some_and(|t| f.now_ms - t > settle_after);
            if old && last_resolve.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                *last_resolve = Some(Instant::now());
                self.resolve_intents(&job.customer, f.now_ms, settle_after).await;
            } else {
                self.wait_for_pool(&job.customer, f).await;
            }
            return Capacity::Retry;
        }
        if f.at_max() {
            return Capacity::Defer { reason: at_max_reason(f) };
        }
        if f.orphaned_slots > 0 {
            // A worker died mid-send holding slots that may turn out free: buying now could buy a number nobody
            // needs. Their jobs come back when their leases expire; look again then.
            tracing::info!(orphaned = f.orphaned_slots, "not buying while orphaned reservations are unresolved");
            return Capacity::WaitFor((self.shared.settings.lease / 3).min(Duration::from_secs(5)));
        }
        self.decide(job, f, rules).await
    }

    /// Steps 2–4 of the purchase protocol, called with the customer's gate held: take the lock, re-check and size
    /// the decision, then buy in the background and return once the first number is in the pool.
    async fn decide(self: &Arc<Self>, job: &Job, f: &Full, rules: &Rules) -> Capacity {
        let shared = &self.shared;
        let settings = &shared.settings;
        let conn = shared.ledger.conn();
        let lock = match PurchaseLock::try_acquire(&conn, &job.customer, settings.shared.lock_ttl, settings.lock_renew)
            .await
        {
            Ok(Some(l)) => l,
            Ok(None) => {
                // Another process is deciding; it will buy or find capacity. Wait for the pool to change.
                self.wait_for_pool(&job.customer, f).await;
                return Capacity::Retry;
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "could not take the purchase lock");
                shared.pause(Duration::from_millis(200)).await;
                return Capacity::Retry;
            }
        };
        let customer = match shared.customer(&job.customer).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                lock.release().await;
                return Capacity::Gone;
            }
            Err(_) => {
                lock.release().await;
                shared.pause(Duration::from_millis(200)).await;
                return Capacity::Retry;
            }
        };
        // A Messaging Service holds a limited number of senders: never buy a number it could not take. Twilio's
        // limit is the setting, or the size at which Twilio last refused one more (21714), whichever is lower.
        let room = match &customer.messaging_service {
            None => None,
            Some(service) => match shared.twilio.list_service_numbers(service.as_str()).await {
                Ok(list) => {
                    let refused_at: Option<u32> =
                        redis::AsyncCommands::get(&mut conn.clone(), CustomerKeys::new(&job.customer).service_full())
                            .await
                            .ok()
                            .flatten();
                    let limit =
                        refused_at.map_or(settings.service_max_numbers, |r| r.min(settings.service_max_numbers));
                    Some(limit.saturating_sub(list.len() as u32))
                }
                Err(e) => {
                    lock.release().await;
                    return Capacity::NotBought {
                        reason: format!("messaging service {service}: {}", e.short_reason()),
                        retry_after: None,
                    };
                }
            },
        };
        let prefix = purchase::new_intent_prefix();
        let names = purchase::name_prefix(&job.customer);
        let decided_at = Instant::now();
        let mode = ReserveMode::Locked { token: lock.token(), intent_prefix: &prefix, name_prefix: &names, room };
        let decision = match shared.ledger.reserve(job, mode, None, rules).await {
            Ok(Reserve::Intents(d)) => d,
            Ok(Reserve::Reserved(s)) => {
                lock.release().await;
                return Capacity::Reserved(s);
            }
            Ok(Reserve::Full(now)) => {
                lock.release().await;
                return match (&customer.messaging_service, room) {
                    (Some(service), Some(0)) if !now.at_max() && now.pending_intents == 0 => Capacity::Defer {
                        reason: format!("messaging service {service} is full: Twilio's sender limit (error 21714)"),
                    },
                    _ => Capacity::Retry,
                };
            }
            Ok(Reserve::LostLock) | Ok(Reserve::Ambiguous { .. }) | Ok(Reserve::Lookup) => {
                lock.release().await;
                return Capacity::Retry;
            }
            Ok(Reserve::Paused { .. }) | Ok(Reserve::Frequency { .. }) => {
                // A paused batch never buys: the script parked the job.
                lock.release().await;
                return Capacity::Gone;
            }
            Ok(Reserve::Spend { due_ms }) => {
                // No number the spend limit would let send: the script parked the job (nothing bought).
                shared.stats.spend_limited.inc();
                tracing::info!(due_ms, "the monthly spend limit leaves no room for a number; the job waits");
                lock.release().await;
                return Capacity::Gone;
            }
            Ok(_) => {
                lock.release().await;
                return Capacity::Gone;
            }
            Err(e) => {
                // The script may have recorded the intents before the reply was lost; no purchase was sent for any
                // of them, so dropping them is safe.
                tracing::warn!(error.message = %e, "purchase re-check failed");
                let _ = purchase::abandon_decision(&mut conn.clone(), &job.customer, &prefix).await;
                lock.release().await;
                return Capacity::Retry;
            }
        };
        if !decision.confirmed {
            // The replicas did not confirm the intents: a failover could lose them and let someone buy again. Buy
            // nothing for them; decide again shortly.
            shared.stats.unconfirmed.inc();
            let _ = purchase::abandon_decision(&mut conn.clone(), &job.customer, &prefix).await;
            lock.release().await;
            return Capacity::WaitFor(shared.backoff(1));
        }
        shared.stats.purchase_decisions.inc();
        tracing::info!(
            numbers = decision.intent_ids.len(),
            backlog = decision.backlog,
            owned = f.numbers,
            "purchase decided"
        );
        let (first_tx, first_rx) = oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move { this.buy_all(lock, customer, decision, decided_at, first_tx).await });
        first_rx.await.unwrap_or(Capacity::Retry)
    }

    /// Buys the numbers of one decision, at most `purchase_concurrency` at a time, committing each as it lands.
    /// Holds the lock until the last one ends. `first` hears about the first number in the pool (or, if none lands,
    /// how the decision ended).
    async fn buy_all(
        self: Arc<Self>,
        lock: PurchaseLock,
        customer: Customer,
        decision: Decision,
        decided_at: Instant,
        first: oneshot::Sender<Capacity>,
    ) {
        let settings = &self.shared.settings;
        // Every Twilio call of a purchase must start before this deadline, so the last one ends while its intent is
        // still pending (a resolver only drops intents older than `intent_stale`).
        let budget = settings.intent_stale.saturating_sub(settings.shared.twilio.timeout + Duration::from_secs(5));
        let deadline = decided_at + budget;
        let candidates = Candidates::default();
        let sharing = decision.intent_ids.len();
        let mut first = Some(first);
        let mut last_failure: Option<Capacity> = None;
        let (this, customer, candidates, now_ms) = (&self, &customer, &candidates, decision.now_ms);
        let mut outcomes = futures::stream::iter(decision.intent_ids.clone())
            .map(move |id| async move { this.buy_one(customer, &id, now_ms, deadline, candidates, sharing).await })
            .buffer_unordered(settings.purchase_concurrency.max(1));
        while let Some(outcome) = outcomes.next().await {
            match outcome {
                Capacity::Retry => {
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Capacity::Retry);
                    }
                }
                other => last_failure = Some(other),
            }
        }
        drop(outcomes);
        lock.release().await;
        if let Some(tx) = first.take() {
            let _ = tx.send(last_failure.unwrap_or(Capacity::Retry));
        }
    }

    /// One purchase of a decision: buy, attach to the Messaging Service, commit. `Retry` when the number is in the
    /// pool (or its outcome is unknown and its intent stays for a resolver); otherwise why not.
    async fn buy_one(
        &self,
        customer: &Customer,
        intent_id: &str,
        now_ms: i64,
        deadline: Instant,
        candidates: &Candidates,
        sharing: usize,
    ) -> Capacity {
        let shared = &self.shared;
        let mut conn = shared.ledger.conn();
        let name = purchase::friendly_name(&customer.id, intent_id);
        let raw = format!("{now_ms}|{name}");
        let sms_url = shared.settings.public_url.as_ref().map(|u| format!("{u}/twilio/inbound"));
        let outcome =
            purchase::buy(&shared.twilio, customer, intent_id, sms_url.as_deref(), deadline, candidates, sharing).await;
        let bought = match outcome {
            BuyOutcome::Bought(b) => b,
            BuyOutcome::NotBought { reason, retry_after } => {
                let _ = purchase::abandon_intent(&mut conn, &customer.id, intent_id, &raw).await;
                tracing::warn!(%reason, "could not buy a number");
                return Capacity::NotBought { reason: format!("no number: {reason}"), retry_after };
            }
            BuyOutcome::Unknown { reason } => {
                // The intent stays: nobody buys until it is resolved against Twilio's list of numbers.
                tracing::warn!(%reason, intent = %intent_id, "purchase outcome unknown; will resolve against Twilio");
                return Capacity::Retry;
            }
        };
        if let Some(service) = &customer.messaging_service {
            let mut attempt = 0u32;
            loop {
                match purchase::attach(&shared.twilio, service, &bought).await {
                    Attach::Attached => {
                        shared.stats.attached.inc();
                        break;
                    }
                    Attach::Transient { reason, retry_after } => {
                        attempt += 1;
                        let wait = shared.backoff(attempt).max(retry_after.unwrap_or_default());
                        if Instant::now() + wait >= deadline || shared.stopping() {
                            // Bought but not attached: the intent stays, and whoever resolves it attaches the number
                            // first. It is never used bare.
                            tracing::warn!(%reason, intent = %intent_id,
                                "could not attach a bought number to its Messaging Service yet; left to the reconciler");
                            return Capacity::Retry;
                        }
                        tracing::info!(%reason, attempt, "attaching a bought number failed; retrying");
                        shared.pause(wait).await;
                    }
                    Attach::ServiceFull(reason) => {
                        // Remember the size Twilio refused at, so the next decision does not buy again.
                        if let Ok(list) = shared.twilio.list_service_numbers(service.as_str()).await {
                            let key = CustomerKeys::new(&customer.id).service_full();
                            let _: redis::RedisResult<()> =
                                redis::AsyncCommands::set_ex(&mut conn, key, list.len(), 3600).await;
                        }
                        return self.give_back(customer, &bought, intent_id, &raw, &reason).await;
                    }
                    Attach::Refused(reason) => {
                        return self.give_back(customer, &bought, intent_id, &raw, &reason).await;
                    }
                }
            }
        }
        for i in 0..8u32 {
            match purchase::commit_number(&mut conn, &customer.id, &bought, intent_id).await {
                Ok(_) => {
                    shared.stats.tally(&customer.id, Tally::Purchase);
                    tracing::info!(intent = %intent_id, "bought a number");
                    self.pool_changed(&customer.id);
                    return Capacity::Retry;
                }
                Err(e) => {
                    tracing::warn!(error.message = %e, "could not record a bought number yet");
                    tokio::time::sleep(Duration::from_millis((100u64 << i).min(5_000))).await;
                }
            }
        }
        tracing::error!("bought a number but could not record it; its intent stays until the reconciler adopts it");
        Capacity::Retry
    }

    /// A bought number its Messaging Service refused can never send for this customer: release it rather than pay
    /// for it every month (the intent goes once Twilio confirms), and defer the job with the reason.
    async fn give_back(
        &self,
        customer: &Customer,
        bought: &purchase::Bought,
        intent_id: &str,
        raw: &str,
        reason: &str,
    ) -> Capacity {
        let shared = &self.shared;
        let account = purchase::account_for(customer, &shared.twilio);
        let released = shared.twilio.release_number(account, &bought.sid).await;
        if released.is_ok() {
            let _ = purchase::abandon_intent(&mut shared.ledger.conn(), &customer.id, intent_id, raw).await;
        }
        tracing::error!(%reason, released = released.is_ok(), "the Messaging Service refused a bought number");
        let service = customer.messaging_service.as_ref().map(|s| s.to_string()).unwrap_or_default();
        Capacity::Defer { reason: format!("messaging service {service} refused a number ({reason})") }
    }

    /// Resolves the customer's intents whose purchase has certainly finished: adopt the tagged number if Twilio
    /// has it (attaching it first if the customer has a Messaging Service), drop the intent once it is stale.
    pub async fn resolve_intents(&self, customer_id: &CustomerId, now_ms: i64, older_than_ms: i64) {
        let shared = &self.shared;
        let Ok(Some(customer)) = shared.customer(customer_id).await else {
            return;
        };
        let mut conn = shared.ledger.conn();
        let Ok(intents) = purchase::pending_intents(&mut conn, customer_id).await else {
            return;
        };
        for intent in intents.iter().filter(|i| now_ms - i.created_ms > older_than_ms) {
            let r = purchase::resolve_intent(
                &mut conn,
                &shared.twilio,
                &customer,
                intent,
                now_ms,
                shared.settings.intent_stale,
            )
            .await;
            match r {
                Ok(purchase::Resolution::Pending) => shared.pause(Duration::from_millis(500)).await,
                Ok(_) => self.pool_changed(customer_id),
                Err(e) => {
                    tracing::warn!(error.message = %e, "could not resolve a purchase intent");
                    shared.pause(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Waits (briefly) until the pool, the pending intents or the lock change, polling Redis every ~20 ms; a
    /// number landing anywhere in the fleet wakes the waiter at once (pool notifications).
    async fn wait_for_pool(&self, customer: &CustomerId, f: &Full) {
        let k = CustomerKeys::new(customer);
        let gate = self.gate(customer);
        let settings = &self.shared.settings;
        let deadline =
            Instant::now() + settings.shared.lock_ttl.clamp(Duration::from_millis(200), Duration::from_secs(2));
        let mut conn = self.shared.ledger.conn();
        let mut stop = self.shared.stop.clone();
        while Instant::now() < deadline {
            let tick = Duration::from_millis(15 + rand::rng().random_range(0..10));
            tokio::select! {
                _ = gate.pool.notified() => return,
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => return,
            }
            let r: redis::RedisResult<(u32, u32, bool)> =
                redis::pipe().zcard(k.pool()).hlen(k.intents()).exists(k.lock()).query_async(&mut conn).await;
            match r {
                Ok((numbers, pending, locked)) => {
                    if numbers != f.numbers || pending != f.pending_intents || (!locked && pending == 0) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

fn at_max_reason(f: &Full) -> String {
    format!("customer at max_numbers ({}) and every number is full", f.max_numbers)
}
