//! What a worker does with one job: reserve a slot, send, record; or buy a number, defer, retry, resolve.
//!
//! The handler never returns an error to apalis: every outcome is recorded in Redis by a script (sent, failed,
//! opted out, rescheduled), because an error there would make apalis retry a job whose text may already be out.
//! Bookkeeping after a successful send is retried, and if Redis stays unreachable the job's `r|…` marker makes the
//! next delivery look the message up in Twilio instead of sending it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis_core::task::data::Data;
use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use redis::AsyncCommands;
use shared::customers::{self, Customer};
use shared::domain::{BatchId, CustomerId};
use shared::keys::CustomerKeys;
use shared::ledger::{Commit, Due, Ending, Full, Job, Ledger, Requeue, Reserve, ReserveMode, Slot};
use shared::purchase::{self, BuyOutcome, PurchaseLock};
use shared::twilio::{CreateMessage, MessageFilter, SendFailure, TwilioClient};
use tokio::sync::{Notify, mpsc, watch};

use crate::backend::SendTask;
use crate::fetcher::Wake;
use crate::settings::WorkerSettings;

/// This process's counters: logged at exit and served at `/metrics` (see [`crate::ops`]). Prometheus counters
/// are shared handles, so the metrics registry holds the same ones the handlers bump.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: Counter,
    pub failed: Counter,
    pub opted_out: Counter,
    pub retried: Counter,
    pub deferred: Counter,
    pub ambiguous: Counter,
    pub resolved_found: Counter,
    pub resolved_unsent: Counter,
    pub purchases: Counter,
    pub duplicate_sends: Counter,
    pub apalis_restarts: Counter,
}

/// Everything handlers share in one process.
pub struct Ctx {
    pub ledger: Ledger,
    pub twilio: TwilioClient,
    pub settings: Arc<WorkerSettings>,
    pub wake: mpsc::UnboundedSender<Wake>,
    pub stop: watch::Receiver<bool>,
    pub stats: Stats,
    bodies: Mutex<HashMap<BatchId, Arc<str>>>,
    customers: Mutex<HashMap<CustomerId, (Customer, Instant)>>,
    /// One task per customer per process at a time on the slow path (purchases, waiting for one), so a full
    /// customer costs one Redis poller per process, not one per handler.
    gates: Mutex<HashMap<CustomerId, Arc<Gate>>>,
}

/// The slow path of one customer in this process: one task works it, the others wait for its step to end.
#[derive(Default)]
struct Gate {
    /// Held by the task on the slow path; the value is when it last asked Twilio about a pending intent.
    slow: tokio::sync::Mutex<Option<Instant>>,
    /// Bumped when that task finishes a step (bought, waited, deferred...), waking every task that queued behind
    /// it at once, so they retry the fast path concurrently instead of one at a time.
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

/// What to do next with a job.
enum Step {
    /// Run the fast path again.
    Again,
    /// Reserve again, releasing this slot: Twilio showed its attempt never arrived.
    Unsent(Slot),
    Send(Slot),
    Done,
}

impl Ctx {
    pub fn new(
        ledger: Ledger,
        twilio: TwilioClient,
        settings: Arc<WorkerSettings>,
        wake: mpsc::UnboundedSender<Wake>,
        stop: watch::Receiver<bool>,
        stats: Stats,
    ) -> Self {
        Self {
            ledger,
            twilio,
            settings,
            wake,
            stop,
            stats,
            bodies: Mutex::default(),
            customers: Mutex::default(),
            gates: Mutex::default(),
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Processes one job to a recorded outcome.
    #[tracing::instrument(name = "job", skip_all, fields(customer = %task.job.customer, batch = %task.job.batch.local(), to = %task.job.recipient.masked()))]
    pub async fn process(&self, task: &SendTask) {
        let job = &task.job;
        let mut unsent: Option<Slot> = None;
        let mut redis_errors = 0u32;
        loop {
            if task.lease.is_lost() {
                return;
            }
            let reserved = self.ledger.reserve(job, ReserveMode::Fast, unsent.as_ref()).await;
            unsent = None;
            let r = match reserved {
                Ok(r) => r,
                Err(e) => {
                    redis_errors += 1;
                    if redis_errors > 5 || self.stopping() {
                        tracing::warn!(error.message = %e, "giving the job up to its lease: redis keeps failing");
                        return;
                    }
                    self.pause(Duration::from_millis(100 << redis_errors)).await;
                    continue;
                }
            };
            let step = match r {
                Reserve::Reserved(slot) => Step::Send(slot),
                Reserve::Lost => {
                    tracing::debug!("lease lost; leaving the job to its new holder");
                    Step::Done
                }
                Reserve::Ambiguous { slot, now_ms } => self.resolve_ambiguous(task, slot, now_ms).await,
                Reserve::Full(f) => self.no_capacity(task, f).await,
                _ => Step::Done,
            };
            match step {
                Step::Again => continue,
                Step::Unsent(slot) => unsent = Some(slot),
                Step::Send(slot) => return self.send(task, slot).await,
                Step::Done => return,
            }
        }
    }

    async fn send(&self, task: &SendTask, slot: Slot) {
        let job = &task.job;
        let marker = slot.marker();
        let (body, customer) = match (self.body(&job.batch).await, self.customer(&job.customer).await) {
            (Ok(Some(b)), Ok(Some(c))) => (b, c),
            (Ok(None), _) | (_, Ok(None)) => {
                // The batch or customer vanished (deleted by an operator): give the slot back and stop.
                let _ = self.ledger.finish(job, Ending::Failed, "batch or customer missing", Some(&marker)).await;
                return;
            }
            _ => {
                // Redis failed: nothing was sent; give the slot back and try again shortly.
                let delay = self.backoff(1);
                self.requeue(job, Requeue::Release, Due::In(delay), slot.attempt, "redis", Some(&marker)).await;
                return;
            }
        };
        // Never start a send that could outlive our lease: past it another worker may own the job.
        if task.lease.remaining() < self.settings.shared.twilio.timeout + Duration::from_secs(2) {
            tracing::warn!("lease too close to expiry to send; leaving the job to be redelivered");
            return;
        }
        let callback = self.settings.public_url.as_ref().map(|u| format!("{u}/twilio/status?b={}", job.batch));
        let account = purchase::account_for(&customer, &self.twilio);
        let req = CreateMessage {
            to: job.recipient.as_str(),
            from: &slot.number,
            body: &body,
            status_callback: callback.as_deref(),
        };
        match self.twilio.send_message(account, &req).await {
            Ok(m) => match m.sid.filter(|s| !s.is_empty()) {
                Some(sid) => self.commit(job, &sid, &slot.number).await,
                None => {
                    self.requeue(
                        job,
                        Requeue::Keep,
                        Due::In(self.settings.ambiguous_grace),
                        slot.attempt,
                        "no sid",
                        Some(&marker),
                    )
                    .await
                }
            },
            Err(e) => match e.send_failure() {
                SendFailure::Recipient { code, .. } => {
                    self.stats.failed.inc();
                    tracing::info!(code, "recipient cannot be texted");
                    let _ = self.ledger.finish(job, Ending::Failed, &format!("twilio {code}"), Some(&marker)).await;
                }
                SendFailure::OptedOut => {
                    self.stats.opted_out.inc();
                    let _ = self.ledger.finish(job, Ending::OptedOut, "21610", Some(&marker)).await;
                }
                SendFailure::Transient { reason, retry_after } => {
                    self.retry_later(job, slot.attempt + 1, &reason, retry_after, &marker).await;
                }
                SendFailure::Ambiguous { reason } => {
                    self.stats.ambiguous.inc();
                    tracing::warn!(%reason, "send outcome unknown; will check Twilio before any resend");
                    self.requeue(
                        job,
                        Requeue::Keep,
                        Due::In(self.settings.ambiguous_grace),
                        slot.attempt,
                        &reason,
                        Some(&marker),
                    )
                    .await;
                }
            },
        }
    }

    /// Records a sent message, retrying through Redis errors. If it still fails, the job's marker makes the next
    /// delivery find the message in Twilio: a failed commit never causes a second text.
    async fn commit(&self, job: &Job, sid: &str, from: &str) {
        for i in 0..8u32 {
            match self.ledger.commit_sent(job, sid, from).await {
                Ok(c) => {
                    match c {
                        Commit::Duplicate => {
                            self.stats.duplicate_sends.inc();
                            tracing::error!(
                                "a text was sent twice for the same recipient and batch (recorded in dup_sends)"
                            );
                        }
                        _ => {
                            self.stats.sent.inc();
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error.message = %e, "could not record a sent message yet");
                    tokio::time::sleep(Duration::from_millis((100u64 << i).min(5_000))).await;
                }
            }
        }
        tracing::error!("could not record a sent message; its next delivery will find it in Twilio");
    }

    async fn retry_later(&self, job: &Job, attempt: u32, reason: &str, retry_after: Option<Duration>, seen: &str) {
        let reason = reason.replace('|', "/");
        if attempt >= self.settings.max_attempts {
            self.stats.failed.inc();
            tracing::warn!(%reason, attempt, "giving up after repeated transient failures");
            let _ = self.ledger.finish(job, Ending::Failed, &format!("{reason} (retries exhausted)"), Some(seen)).await;
            return;
        }
        self.stats.retried.inc();
        let delay = self.backoff(attempt).max(retry_after.unwrap_or_default());
        self.requeue(job, Requeue::Release, Due::In(delay), attempt, &reason, Some(seen)).await;
    }

    /// Exponential backoff with jitter: the n-th retry waits between half and all of `base · 2^(n-1)`, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.settings.backoff_base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.settings.backoff_max);
        let half = cap / 2;
        half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
    }

    async fn requeue(&self, job: &Job, how: Requeue, when: Due, attempt: u32, reason: &str, seen: Option<&str>) {
        match self.ledger.requeue(job, how, when, attempt, reason, seen).await {
            Ok(Some(_)) => {
                let after = match when {
                    Due::In(d) => d,
                    Due::At(_) => self.settings.idle_poll,
                };
                let _ = self.wake.send(Wake { customer: job.customer.clone(), after: Some(after) });
            }
            Ok(None) => tracing::debug!("job changed state under us; leaving it"),
            Err(e) => {
                tracing::warn!(error.message = %e, "could not reschedule; the lease will return the job")
            }
        }
    }

    /// An earlier attempt reserved `slot` and may have reached Twilio. After a grace period (so a request still on
    /// the wire has landed), list the messages to the recipient from that number, newest first: found → record it;
    /// not found → it never arrived, reserve again.
    async fn resolve_ambiguous(&self, task: &SendTask, slot: Slot, now_ms: i64) -> Step {
        let job = &task.job;
        let marker = slot.marker();
        let grace = self.settings.ambiguous_grace.as_millis() as i64;
        let age = now_ms - slot.at_ms;
        if age < grace {
            self.requeue(
                job,
                Requeue::Keep,
                Due::In(Duration::from_millis((grace - age) as u64)),
                slot.attempt,
                "ambiguous",
                Some(&marker),
            )
            .await;
            return Step::Done;
        }
        let (Ok(Some(body)), Ok(Some(customer))) = (self.body(&job.batch).await, self.customer(&job.customer).await)
        else {
            self.requeue(job, Requeue::Keep, Due::In(self.backoff(1)), slot.attempt, "ambiguous", Some(&marker)).await;
            return Step::Done;
        };
        // Twilio's clock and Redis's may differ a little; messages older than this cannot be ours.
        let since = chrono::DateTime::from_timestamp_millis(slot.at_ms - 10_000).unwrap_or_default();
        let filter =
            MessageFilter { to: Some(job.recipient.as_str()), from: Some(&slot.number), date_sent_after: None };
        let account = purchase::account_for(&customer, &self.twilio);
        let listed =
            self.twilio.list_messages(account, &filter, 200, |m| m.date_created.is_some_and(|d| d < since)).await;
        match listed {
            Ok(messages) => {
                // Twilio may store a body a little differently from what was sent (a trial-account prefix, Smart
                // Encoding's character substitutions), so bodies are compared by their letters and digits.
                let ours: Vec<_> = messages
                    .iter()
                    .filter(|m| m.date_created.is_some_and(|d| d >= since))
                    .filter(|m| m.body.as_deref().is_some_and(|b| same_text(b, &body)))
                    .collect();
                // Several identical texts to this recipient from this number in seconds: do not guess (and do not
                // send again); record the oldest, which is the first that went out.
                match ours.iter().min_by_key(|m| m.date_created) {
                    Some(oldest) => {
                        self.stats.resolved_found.inc();
                        if ours.len() > 1 {
                            tracing::warn!(
                                matches = ours.len(),
                                "several matching messages in Twilio; recording the oldest"
                            );
                        } else {
                            tracing::info!("ambiguous send found in Twilio; recording it");
                        }
                        self.commit(job, oldest.sid.as_deref().unwrap_or_default(), &slot.number).await;
                        Step::Done
                    }
                    None => {
                        self.stats.resolved_unsent.inc();
                        tracing::info!("ambiguous send never reached Twilio; sending again");
                        Step::Unsent(slot)
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "could not list messages to resolve an ambiguous send");
                self.requeue(
                    job,
                    Requeue::Keep,
                    Due::In(self.backoff(slot.attempt + 1)),
                    slot.attempt,
                    "ambiguous",
                    Some(&marker),
                )
                .await;
                Step::Done
            }
        }
    }

    /// No number has capacity. Defer at max numbers; otherwise, one task per process per customer at a time
    /// either waits for a purchase in flight (resolving it if its outcome is unknown) or makes one.
    async fn no_capacity(&self, task: &SendTask, f: Full) -> Step {
        let job = &task.job;
        if f.at_max() && f.pending_intents == 0 {
            return self.defer(job, &f).await;
        }
        let gate = self.gate(&job.customer);
        let mut round = gate.round.subscribe();
        let Ok(mut last_resolve) = gate.slow.try_lock() else {
            // Another task of this process is on it: wait for its step to end, then try the fast path again.
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = round.changed() => {}
                _ = tokio::time::sleep(self.settings.lock_ttl.max(Duration::from_secs(2))) => {}
                _ = stop.changed() => {}
            }
            return Step::Again;
        };
        let _end = RoundEnd(&gate);
        if self.stopping() {
            self.requeue(job, Requeue::Wait, Due::In(Duration::ZERO), f.attempt(), "", f.state.as_deref()).await;
            return Step::Done;
        }
        // `f` is fresh: nothing awaited between the reserve that returned it and taking the gate (which never
        // queues). Capacity that appears from here on is caught by the re-check inside the purchase lock.
        if f.pending_intents > 0 {
            let settle_after = (self.settings.shared.twilio.timeout + Duration::from_secs(2)).as_millis() as i64;
            let old = f.oldest_intent_ms.is_some_and(|t| f.now_ms - t > settle_after);
            if old && last_resolve.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                *last_resolve = Some(Instant::now());
                self.resolve_intents(&job.customer, f.now_ms, settle_after).await;
            } else {
                self.wait_for_pool(&job.customer, &f).await;
            }
            return Step::Again;
        }
        if f.at_max() {
            return self.defer(job, &f).await;
        }
        if f.orphaned_slots > 0 {
            // A worker died mid-send holding slots that may turn out free: buying now could buy a number nobody
            // needs. Their jobs come back when their leases expire; look again then.
            tracing::info!(orphaned = f.orphaned_slots, "not buying while orphaned reservations are unresolved");
            let delay = (self.settings.lease / 3).min(Duration::from_secs(5));
            self.requeue(job, Requeue::Wait, Due::In(delay), f.attempt(), "", f.state.as_deref()).await;
            return Step::Done;
        }
        self.purchase(job, &f).await
    }

    async fn defer(&self, job: &Job, f: &Full) -> Step {
        self.stats.deferred.inc();
        let jitter: i64 = rand::rng().random_range(0..50);
        let mut due = f.earliest_free_ms.map(|t| t + jitter).unwrap_or(f.now_ms + 1_000);
        if f.orphaned_slots > 0 {
            // Orphaned reservations may free slots as soon as their leases expire.
            due = due.min(f.now_ms + self.settings.lease.as_millis() as i64 + jitter);
        }
        tracing::debug!(in_ms = due - f.now_ms, "customer at max numbers and full; deferring");
        let _ = self.ledger.requeue(job, Requeue::Defer, Due::At(due), f.attempt(), "", f.state.as_deref()).await;
        let after = Duration::from_millis((due - f.now_ms).max(0) as u64);
        let _ = self.wake.send(Wake { customer: job.customer.clone(), after: Some(after) });
        Step::Done
    }

    /// Steps 2–4 of the purchase protocol, called with the customer's gate held.
    async fn purchase(&self, job: &Job, f: &Full) -> Step {
        let conn = self.ledger.conn();
        let lock =
            match PurchaseLock::try_acquire(&conn, &job.customer, self.settings.lock_ttl, self.settings.lock_renew)
                .await
            {
                Ok(Some(l)) => l,
                Ok(None) => {
                    // Another process is deciding; it will buy or find capacity. Wait for the pool to change.
                    self.wait_for_pool(&job.customer, f).await;
                    return Step::Again;
                }
                Err(e) => {
                    tracing::warn!(error.message = %e, "could not take the purchase lock");
                    self.pause(Duration::from_millis(200)).await;
                    return Step::Again;
                }
            };
        let customer = match self.customer(&job.customer).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                lock.release().await;
                return Step::Done;
            }
            Err(_) => {
                lock.release().await;
                self.pause(Duration::from_millis(200)).await;
                return Step::Again;
            }
        };
        let intent_id = purchase::new_intent_id();
        let name = purchase::friendly_name(&job.customer, &intent_id);
        let decided_at = Instant::now();
        let mode = ReserveMode::Locked { token: lock.token(), intent_id: &intent_id, friendly_name: &name };
        let now_ms = match self.ledger.reserve(job, mode, None).await {
            Ok(Reserve::Intent { now_ms, .. }) => now_ms,
            Ok(Reserve::Reserved(s)) => {
                lock.release().await;
                return Step::Send(s);
            }
            Ok(Reserve::Full(_)) | Ok(Reserve::LostLock) | Ok(Reserve::Ambiguous { .. }) => {
                lock.release().await;
                return Step::Again;
            }
            Ok(_) => {
                lock.release().await;
                return Step::Done;
            }
            Err(e) => {
                // The script may have recorded the intent before the reply was lost; we never sent a purchase for
                // it, so dropping it is safe.
                tracing::warn!(error.message = %e, "purchase re-check failed");
                let _ = purchase::abandon_intent(&mut conn.clone(), &job.customer, &intent_id, "*").await;
                lock.release().await;
                return Step::Again;
            }
        };
        // An intent older than the stale limit may already have been given up by a resolver; buying for it now
        // could buy a number someone else also bought. Only a process paused for minutes gets here.
        let budget =
            self.settings.intent_stale.saturating_sub(self.settings.shared.twilio.timeout + Duration::from_secs(5));
        if decided_at.elapsed() > budget {
            let _ = purchase::abandon_intent(&mut conn.clone(), &job.customer, &intent_id, "*").await;
            lock.release().await;
            return Step::Again;
        }
        tracing::debug!(intent = %intent_id, "purchase decided");
        let sms_url = self.settings.public_url.as_ref().map(|u| format!("{u}/twilio/inbound"));
        // Every Twilio call of the purchase must start before this deadline, so the last one ends while the intent
        // is still pending (a resolver only drops intents older than `intent_stale`).
        let deadline = decided_at + budget;
        let outcome = purchase::buy(&self.twilio, &customer, &intent_id, sms_url.as_deref(), deadline).await;
        let raw = format!("{now_ms}|{name}");
        let step = match outcome {
            BuyOutcome::Bought(b) => {
                let mut recorded = false;
                for i in 0..8u32 {
                    match purchase::commit_number(&mut conn.clone(), &job.customer, &b, &intent_id).await {
                        Ok(_) => {
                            recorded = true;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error.message = %e, "could not record a bought number yet");
                            tokio::time::sleep(Duration::from_millis((100u64 << i).min(5_000))).await;
                        }
                    }
                }
                if recorded {
                    self.stats.purchases.inc();
                    tracing::info!(numbers = f.numbers + 1, "bought a number");
                } else {
                    tracing::error!(
                        "bought a number but could not record it; its intent stays until the reconciler adopts it"
                    );
                }
                self.pool_changed(&job.customer);
                Step::Again
            }
            BuyOutcome::NotBought { reason, retry_after } => {
                let _ = purchase::abandon_intent(&mut conn.clone(), &job.customer, &intent_id, &raw).await;
                tracing::warn!(%reason, "could not buy a number");
                let seen = f.state.as_deref().filter(|s| !s.is_empty());
                let attempt = f.attempt() + 1;
                if attempt >= self.settings.max_attempts {
                    self.stats.failed.inc();
                    let _ = self.ledger.finish(job, Ending::Failed, &format!("no number: {reason}"), seen).await;
                } else {
                    let delay = self.backoff(attempt).max(retry_after.unwrap_or_default());
                    self.requeue(job, Requeue::Release, Due::In(delay), attempt, &format!("no number: {reason}"), seen)
                        .await;
                }
                Step::Done
            }
            BuyOutcome::Unknown { reason } => {
                // The intent stays: nobody buys until it is resolved against Twilio's list of numbers.
                tracing::warn!(%reason, intent = %intent_id, "purchase outcome unknown; will resolve against Twilio");
                Step::Again
            }
        };
        lock.release().await;
        step
    }

    /// Resolves the customer's intents whose purchase has certainly finished: adopt the tagged number if Twilio
    /// has it, drop the intent once it is stale.
    async fn resolve_intents(&self, customer_id: &CustomerId, now_ms: i64, older_than_ms: i64) {
        let Ok(Some(customer)) = self.customer(customer_id).await else {
            return;
        };
        let mut conn = self.ledger.conn();
        let Ok(intents) = purchase::pending_intents(&mut conn, customer_id).await else {
            return;
        };
        for intent in intents.iter().filter(|i| now_ms - i.created_ms > older_than_ms) {
            match purchase::resolve_intent(
                &mut conn,
                &self.twilio,
                &customer,
                intent,
                now_ms,
                self.settings.intent_stale,
            )
            .await
            {
                Ok(purchase::Resolution::Pending) => self.pause(Duration::from_millis(500)).await,
                Ok(_) => self.pool_changed(customer_id),
                Err(e) => {
                    tracing::warn!(error.message = %e, "could not resolve a purchase intent");
                    self.pause(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Waits (briefly) until the pool, the pending intents or the lock change, polling Redis every ~20 ms; a
    /// purchase made by this process wakes the waiter at once.
    async fn wait_for_pool(&self, customer: &CustomerId, f: &Full) {
        let k = CustomerKeys::new(customer);
        let gate = self.gate(customer);
        let deadline =
            Instant::now() + self.settings.lock_ttl.clamp(Duration::from_millis(200), Duration::from_secs(2));
        let mut conn = self.ledger.conn();
        let mut stop = self.stop.clone();
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

    async fn pause(&self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.changed() => {}
        }
    }

    fn gate(&self, c: &CustomerId) -> Arc<Gate> {
        self.gates.lock().unwrap().entry(c.clone()).or_default().clone()
    }

    /// Wakes this process's tasks waiting on `c`'s pool (a number bought or adopted, here or elsewhere).
    pub fn pool_changed(&self, c: &CustomerId) {
        self.gate(c).pool.notify_waiters();
    }

    /// The batch's body, cached: it never changes. `Ok(None)`: the batch is gone.
    async fn body(&self, batch: &BatchId) -> redis::RedisResult<Option<Arc<str>>> {
        if let Some(b) = self.bodies.lock().unwrap().get(batch) {
            return Ok(Some(b.clone()));
        }
        let k = CustomerKeys::new(batch.customer());
        let body: Option<String> = self.ledger.conn().hget(k.batch(batch), "body").await?;
        let Some(body) = body else { return Ok(None) };
        let body: Arc<str> = body.into();
        let mut cache = self.bodies.lock().unwrap();
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(batch.clone(), body.clone());
        Ok(Some(body))
    }

    /// The customer's record, cached for 30 s. `Ok(None)`: the customer is gone.
    async fn customer(&self, id: &CustomerId) -> redis::RedisResult<Option<Customer>> {
        if let Some((c, at)) = self.customers.lock().unwrap().get(id)
            && at.elapsed() < Duration::from_secs(30)
        {
            return Ok(Some(c.clone()));
        }
        let Some(c) = customers::get(&mut self.ledger.conn(), id).await? else { return Ok(None) };
        self.customers.lock().unwrap().insert(id.clone(), (c.clone(), Instant::now()));
        Ok(Some(c))
    }
}

/// Whether two bodies are the same text, ignoring everything but letters and digits (Twilio may prefix or
/// re-encode what it stores).
fn same_text(stored: &str, sent: &str) -> bool {
    let norm = |s: &str| s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect::<String>();
    let (stored, sent) = (norm(stored), norm(sent));
    !sent.is_empty() && stored.contains(&sent) || (!stored.is_empty() && sent.contains(&stored))
}

/// The apalis handler: process the job, never fail it (every outcome is recorded by the ledger).
pub async fn handle(task: SendTask, ctx: Data<Arc<Ctx>>) -> Result<(), apalis_core::error::BoxDynError> {
    ctx.process(&task).await;
    drop(task);
    Ok(())
}
