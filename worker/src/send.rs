//! The send path: one job from reservation to a recorded outcome. It owns the job — every way a job ends or goes back
//! to the schedule is decided here and recorded by a ledger script (sent, failed, opted out, retried, deferred,
//! left for ambiguity resolution). When no number has capacity it asks the purchase path ([`crate::purchase`]),
//! which answers with a [`Capacity`] and never touches the job's state itself.
//!
//! Nothing here returns an error to apalis: an error there would make apalis retry a job whose text may already be
//! out. Bookkeeping after a successful send is retried, and if Redis stays unreachable the job's `r|…` marker makes
//! the next delivery look the message up in Twilio instead of sending it again.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use shared::carriers::Line;
use shared::contracts::{Committed, Reserved};
use shared::customers::Customer;
use shared::domain::TimeZone;
use shared::domain::count_segments;
use shared::ledger::{Commit, Due, Ending, Full, Job, Requeue, Reserve, ReserveMode, Rules, Slot};
use shared::purchase;
use shared::quiet::{self, TZ_VARIABLE};
use shared::twilio::{CreateMessage, Disposition, MessageFilter, SendFailure};

use crate::backend::{SendTask, Wake};
use crate::context::{BatchInfo, Shared};
use crate::group::{CommitRequest, ReserveRequest};
use crate::purchase::{Capacity, Purchases};
use crate::stats::Tally;

/// What to do next with a job.
enum Step {
    /// Run the fast path again.
    Again,
    /// Reserve again, releasing this slot: Twilio showed its attempt never arrived.
    Unsent(Slot),
    Send(Slot),
    Done,
}

pub struct Sender {
    shared: Arc<Shared>,
    purchases: Arc<Purchases>,
}

impl Sender {
    pub fn new(shared: Arc<Shared>, purchases: Arc<Purchases>) -> Self {
        Self { shared, purchases }
    }

    /// What the job needs of its batch and customer (cached), retrying through a few Redis errors. `None`: give
    /// the job up to its lease (Redis keeps failing, or the process stops).
    async fn records(&self, job: &Job) -> Option<(Option<Arc<BatchInfo>>, Option<Customer>)> {
        for errors in 1..=6u32 {
            match (self.shared.batch(&job.batch).await, self.shared.customer(&job.customer).await) {
                (Ok(b), Ok(c)) => return Some((b, c)),
                (Err(e), _) | (_, Err(e)) => {
                    if errors > 5 || self.shared.stopping() {
                        tracing::warn!(error.message = %e, "giving the job up to its lease: redis keeps failing");
                        return None;
                    }
                    self.shared.pause(Duration::from_millis(100 << errors)).await;
                }
            }
        }
        None
    }

    /// The rules this job is under, for the reserve script: the quiet periods of its recipient's zones (none for
    /// an urgent batch or when quiet hours are off) and its offset after a period's end; for a customer with a
    /// T-Mobile cap, the carrier's day and the segments of the job's text.
    fn rules(&self, job: &Job, batch: &BatchInfo, customer: Option<&Customer>) -> Rules {
        let s = &self.shared.settings.shared;
        let mut rules = Rules {
            spread_ms: quiet::spread_offset(&job.recipient, s.quiet_spread.as_millis() as u64),
            ..Rules::default()
        };
        let window = customer.map_or(s.quiet_hours.window(), |c| c.quiet_window(s.quiet_hours));
        if let Some(window) = window.filter(|_| !batch.urgent) {
            let tz = batch.value(job.values.as_deref(), TZ_VARIABLE).and_then(|v| TimeZone::parse(v).ok());
            let zones = quiet::recipient_zones(&job.recipient, tz, customer.and_then(|c| c.time_zone));
            rules.quiet = self.shared.quiet_periods(zones, window);
        }
        if customer.is_some_and(|c| c.caps.tmobile_daily.is_some()) {
            rules.days = self.shared.carrier_days();
        }
        // Spend counts segments for every customer (its monthly figure shows without a limit too).
        rules.segments = batch.text(job.values.as_deref()).map_or(1, |t| count_segments(&t).segments);
        rules.spend = self.shared.spend_terms(customer.and_then(|c| c.time_zone));
        rules
    }

    /// The recipient's line from Twilio Lookup, retried with backoff through transient failures; after the last
    /// attempt, [`Line::Unknown`] (texted, and counted against every carrier cap: see `shared::carriers`).
    async fn look_up(&self, job: &Job) -> Line {
        let _permit = self.shared.lookups.acquire().await.expect("the semaphore is never closed");
        const ATTEMPTS: u32 = 6;
        for attempt in 1..=ATTEMPTS {
            self.shared.stats.lookups.inc();
            match self.shared.twilio.lookup_line(job.recipient.as_str()).await {
                Ok(line) => return line,
                Err(e) => {
                    self.shared.stats.lookup_failures.inc();
                    let retry_after = match e.disposition() {
                        Disposition::Transient { retry_after } if attempt < ATTEMPTS && !self.shared.stopping() => {
                            retry_after
                        }
                        _ => {
                            tracing::warn!(error.message = %e, "no line type for the recipient; counting it against every carrier cap");
                            return Line::Unknown;
                        }
                    };
                    self.shared.pause(self.shared.backoff(attempt).max(retry_after.unwrap_or_default())).await;
                }
            }
        }
        Line::Unknown
    }

    /// Processes one job to a recorded outcome.
    #[tracing::instrument(name = "job", skip_all, fields(customer = %task.job.customer, batch = %task.job.batch.local(), to = %task.job.recipient.masked()))]
    pub async fn process(&self, task: &SendTask) {
        let job = &task.job;
        let Some((batch, customer)) = self.records(job).await else { return };
        // A batch that is gone: the reserve script ends the job (it finds no batch record).
        let mut rules = batch.as_ref().map(|b| self.rules(job, b, customer.as_ref())).unwrap_or_default();
        let mut unsent: Option<Slot> = None;
        let mut redis_errors = 0u32;
        // The first reservation goes with whatever else of the customer reserves at the same moment (group.rs);
        // a job that is not in the plain case, a Redis error, or any later pass takes reserve.lua alone.
        let mut grouped = batch.is_some();
        loop {
            if task.lease.is_lost() {
                return;
            }
            let group = if std::mem::take(&mut grouped) { self.reserve_grouped(job, &rules).await } else { None };
            let reserved = match group {
                Some(r) => Ok(r),
                None => self.shared.ledger.reserve(job, ReserveMode::Fast, unsent.as_ref(), &rules).await,
            };
            unsent = None;
            let r = match reserved {
                Ok(r) => r,
                Err(e) => {
                    redis_errors += 1;
                    if redis_errors > 5 || self.shared.stopping() {
                        tracing::warn!(error.message = %e, "giving the job up to its lease: redis keeps failing");
                        return;
                    }
                    self.shared.pause(Duration::from_millis(100 << redis_errors)).await;
                    continue;
                }
            };
            let step = match r {
                Reserve::Reserved(slot) => Step::Send(slot),
                Reserve::Unconfirmed(slot) => {
                    // The replicas did not confirm the attempt marker: sending now could text twice after a
                    // failover. Give the slot back and try again shortly.
                    self.shared.stats.unconfirmed.inc();
                    let delay = self.shared.backoff(1);
                    let marker = slot.marker();
                    self.requeue(job, Requeue::Release, Due::In(delay), slot.attempt, "replicas", Some(&marker)).await;
                    Step::Done
                }
                Reserve::Lost => {
                    tracing::debug!("lease lost; leaving the job to its new holder");
                    Step::Done
                }
                Reserve::Ambiguous { slot, now_ms } => {
                    self.resolve_ambiguous(task, slot, now_ms, batch.as_deref(), customer.as_ref()).await
                }
                Reserve::Full(f) => self.no_capacity(job, f, &rules, batch.as_deref()).await,
                Reserve::Lookup => {
                    rules.line = Some(self.look_up(job).await);
                    Step::Again
                }
                Reserve::Unreachable(reason) => {
                    self.shared.stats.tally(&job.customer, Tally::Failed);
                    tracing::info!(reason, "recipient cannot take a text; not sent");
                    Step::Done
                }
                Reserve::Capped { due_ms, cap } => {
                    self.shared.stats.capped.inc();
                    tracing::debug!(cap, due_ms, "a carrier cap holds the job");
                    let after = Duration::from_millis(self.shared.settings.idle_poll.as_millis() as u64);
                    let _ = self.shared.wake.send(Wake { customer: job.customer.clone(), after: Some(after) });
                    Step::Done
                }
                Reserve::Quiet { due_ms, zone } => {
                    self.shared.stats.quiet.inc();
                    tracing::debug!(zone, due_ms, "quiet hours in the recipient's zone; waiting");
                    let after = Duration::from_millis(self.shared.settings.idle_poll.as_millis() as u64);
                    let _ = self.shared.wake.send(Wake { customer: job.customer.clone(), after: Some(after) });
                    Step::Done
                }
                Reserve::Expired => {
                    self.shared.stats.expired.inc();
                    Step::Done
                }
                Reserve::Frequency { due_ms } => {
                    tracing::debug!(due_ms, "the tenant reached the customer's frequency cap; the job waits");
                    Step::Done
                }
                Reserve::Paused { due_ms } => {
                    tracing::debug!(due_ms, "the batch is paused; the job waits for a person to resume it");
                    Step::Done
                }
                Reserve::Spend { due_ms } => {
                    self.shared.stats.spend_limited.inc();
                    tracing::debug!(due_ms, "the customer's monthly spend limit holds the job");
                    Step::Done
                }
                Reserve::Held { recheck_ms } => {
                    tracing::debug!(recheck_ms, "the tenant's reply may have revoked consent; held for review");
                    Step::Done
                }
                Reserve::NoConsent => {
                    self.shared.stats.tally(&job.customer, Tally::Failed);
                    tracing::debug!("no consent on record; not sent");
                    Step::Done
                }
                // Ended here or before, with its counters written by the script: nothing left to do.
                Reserve::AlreadySent(_)
                | Reserve::Terminal
                | Reserve::OptedOut
                | Reserve::Cancelled
                | Reserve::Orphan => Step::Done,
                // Answers of the locked mode only (the purchase path's call): the fast path never sees them.
                Reserve::Intents(_) | Reserve::LostLock => {
                    tracing::error!("the fast reservation answered as the locked one; leaving the job to its lease");
                    Step::Done
                }
            };
            match step {
                Step::Again => continue,
                Step::Unsent(slot) => unsent = Some(slot),
                Step::Send(slot) => {
                    let (Some(batch), Some(customer)) = (batch, customer) else {
                        // The batch or customer vanished (deleted by an operator): give the slot back and stop.
                        let why = "batch or customer missing";
                        let _ = self.shared.ledger.finish(job, Ending::Failed, why, Some(&slot.marker())).await;
                        return;
                    };
                    return self.send(task, slot, &batch, &customer).await;
                }
                Step::Done => return,
            }
        }
    }

    /// The job's slot from a group call, or `None`: reserve it alone.
    async fn reserve_grouped(&self, job: &Job, rules: &Rules) -> Option<Reserve> {
        if self.shared.groups.ruled(&job.customer) {
            return None;
        }
        let request = ReserveRequest {
            job: job.clone(),
            quiet: rules.quiet.clone(),
            days: rules.days.clone(),
            segments: rules.segments,
            spend: rules.spend.clone(),
        };
        match self.shared.groups.reserve.submit(&job.customer, request).await? {
            Ok((Reserved::Slot(slot), true)) => Some(Reserve::Reserved(slot)),
            Ok((Reserved::Slot(slot), false)) => Some(Reserve::Unconfirmed(slot)),
            Ok((Reserved::Slow, _)) => None,
            Ok((Reserved::Rules, _)) => {
                self.shared.groups.rule(&job.customer);
                None
            }
            Err(e) => {
                tracing::debug!(error.message = %e, "a group reservation failed; reserving alone");
                None
            }
        }
    }

    /// Acts on what the purchase path says about a job that found no capacity.
    async fn no_capacity(&self, job: &Job, f: Full, rules: &Rules, batch: Option<&BatchInfo>) -> Step {
        let seen = f.state.as_deref();
        match self.purchases.need_capacity(job, &f, rules).await {
            Capacity::Retry => Step::Again,
            Capacity::Reserved(slot) => Step::Send(slot),
            Capacity::Defer { reason } => self.defer(job, &f, &reason, batch.and_then(|b| b.expires_ms)).await,
            Capacity::WaitFor(delay) => {
                self.requeue(job, Requeue::Wait, Due::In(delay), f.attempt(), "", seen).await;
                Step::Done
            }
            Capacity::Stopping => {
                self.requeue(job, Requeue::Wait, Due::In(Duration::ZERO), f.attempt(), "", seen).await;
                Step::Done
            }
            Capacity::NotBought { reason, retry_after } => {
                let seen = seen.filter(|s| !s.is_empty());
                let attempt = f.attempt() + 1;
                if attempt >= self.shared.settings.max_attempts {
                    self.shared.stats.tally(&job.customer, Tally::Failed);
                    let _ = self.shared.ledger.finish(job, Ending::Failed, &reason, seen).await;
                } else {
                    let delay = self.shared.backoff(attempt).max(retry_after.unwrap_or_default());
                    self.requeue(job, Requeue::Release, Due::In(delay), attempt, &reason, seen).await;
                }
                Step::Done
            }
            Capacity::Gone => Step::Done,
        }
    }

    async fn send(&self, task: &SendTask, slot: Slot, batch: &BatchInfo, customer: &Customer) {
        let job = &task.job;
        let marker = slot.marker();
        let body = match batch.text(job.values.as_deref()) {
            Ok(b) => b,
            Err(missing) => {
                let why = format!("no value for {{{{{missing}}}}}");
                let _ = self.shared.ledger.finish(job, Ending::Failed, &why, Some(&marker)).await;
                return;
            }
        };
        // Never start a send that could outlive our lease: past it another worker may own the job. A job that waited
        // (for a purchase) renews its lease first rather than wait for it to expire and be fetched again.
        let needed = self.shared.settings.shared.twilio.timeout + Duration::from_secs(2);
        if task.lease.remaining() < needed
            && !(task.lease.renew_now(&self.shared.ledger).await && task.lease.remaining() >= needed)
        {
            tracing::warn!("lease too close to expiry to send; leaving the job to be redelivered");
            return;
        }
        let callback = self.shared.settings.public_url.as_ref().map(|u| format!("{u}/twilio/status?b={}", job.batch));
        let account = purchase::account_for(customer, &self.shared.twilio);
        // Twilio keeps a message queued no longer than the batch's expiry leaves (its clock: seconds from now).
        let validity = batch.expires_ms.map(|e| ((e - slot.at_ms).max(1) as u64).div_ceil(1000).min(36_000) as u32);
        let req = CreateMessage {
            to: job.recipient.as_str(),
            from: &slot.number,
            body: &body,
            status_callback: callback.as_deref(),
            messaging_service: customer.messaging_service.as_ref().map(|s| s.as_str()),
            validity_period: validity,
        };
        match self.shared.twilio.send_message(account, &req).await {
            Ok(m) => match m.sid.filter(|s| !s.is_empty()) {
                // The text as sent goes into the tenant's thread (every customer: the support desk reads it).
                Some(sid) => self.commit(job, &sid, &slot.number, Some(body.as_str())).await,
                None => {
                    self.requeue(
                        job,
                        Requeue::Keep,
                        Due::In(self.shared.settings.ambiguous_grace),
                        slot.attempt,
                        "no sid",
                        Some(&marker),
                    )
                    .await
                }
            },
            Err(e) => match e.send_failure() {
                SendFailure::Recipient { code, .. } => {
                    self.shared.stats.tally(&job.customer, Tally::Failed);
                    tracing::info!(code, "recipient cannot be texted");
                    let _ =
                        self.shared.ledger.finish(job, Ending::Failed, &format!("twilio {code}"), Some(&marker)).await;
                }
                SendFailure::OptedOut => {
                    self.shared.stats.opted_out.inc();
                    let _ = self.shared.ledger.finish(job, Ending::OptedOut, "21610", Some(&marker)).await;
                }
                SendFailure::Transient { reason, retry_after } => {
                    self.retry_later(job, slot.attempt + 1, &reason, retry_after, &marker).await;
                }
                SendFailure::Ambiguous { reason } => {
                    self.shared.stats.ambiguous.inc();
                    tracing::warn!(%reason, "send outcome unknown; will check Twilio before any resend");
                    self.requeue(
                        job,
                        Requeue::Keep,
                        Due::In(self.shared.settings.ambiguous_grace),
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
    async fn commit(&self, job: &Job, sid: &str, from: &str, body: Option<&str>) {
        // The group commit first (group.rs); a message it leaves to commit.lua, or a Redis error, takes the loop below.
        let request = CommitRequest {
            job: job.clone(),
            sid: sid.to_owned(),
            from: from.to_owned(),
            body: body.map(str::to_owned),
        };
        match self.shared.groups.commit.submit(&job.customer, request).await {
            Some(Ok(Committed::Recorded { .. } | Committed::Already)) => {
                self.shared.stats.tally(&job.customer, Tally::Sent);
                return;
            }
            Some(Ok(Committed::Single)) | None => {}
            Some(Err(e)) => tracing::debug!(error.message = %e, "a group commit failed; recording the message alone"),
        }
        for i in 0..8u32 {
            match self.shared.ledger.commit_sent(job, sid, from, body).await {
                Ok(c) => {
                    match c {
                        Commit::Duplicate => {
                            self.shared.stats.duplicate_sends.inc();
                            tracing::error!(
                                "a text was sent twice for the same recipient and batch (recorded in dup_sends)"
                            );
                        }
                        _ => {
                            self.shared.stats.tally(&job.customer, Tally::Sent);
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
        if attempt >= self.shared.settings.max_attempts {
            self.shared.stats.tally(&job.customer, Tally::Failed);
            tracing::warn!(%reason, attempt, "giving up after repeated transient failures");
            let _ = self
                .shared
                .ledger
                .finish(job, Ending::Failed, &format!("{reason} (retries exhausted)"), Some(seen))
                .await;
            return;
        }
        self.shared.stats.retried.inc();
        let delay = self.shared.backoff(attempt).max(retry_after.unwrap_or_default());
        self.requeue(job, Requeue::Release, Due::In(delay), attempt, &reason, Some(seen)).await;
    }

    async fn requeue(&self, job: &Job, how: Requeue, when: Due, attempt: u32, reason: &str, seen: Option<&str>) {
        match self.shared.ledger.requeue(job, how, when, attempt, reason, seen).await {
            Ok(Some(_)) => {
                let after = match when {
                    Due::In(d) => d,
                    Due::At(_) => self.shared.settings.idle_poll,
                };
                let _ = self.shared.wake.send(Wake { customer: job.customer.clone(), after: Some(after) });
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
    async fn resolve_ambiguous(
        &self,
        task: &SendTask,
        slot: Slot,
        now_ms: i64,
        batch: Option<&BatchInfo>,
        customer: Option<&Customer>,
    ) -> Step {
        let job = &task.job;
        let marker = slot.marker();
        let grace = self.shared.settings.ambiguous_grace.as_millis() as i64;
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
        let (Some(Ok(body)), Some(customer)) = (batch.map(|b| b.text(job.values.as_deref())), customer) else {
            self.requeue(job, Requeue::Keep, Due::In(self.shared.backoff(1)), slot.attempt, "ambiguous", Some(&marker))
                .await;
            return Step::Done;
        };
        // Twilio's clock and Redis's may differ a little; messages older than this cannot be ours.
        let since = chrono::DateTime::from_timestamp_millis(slot.at_ms - 10_000).unwrap_or_default();
        let filter =
            MessageFilter { to: Some(job.recipient.as_str()), from: Some(&slot.number), date_sent_after: None };
        let account = purchase::account_for(customer, &self.shared.twilio);
        let listed = self
            .shared
            .twilio
            .list_messages(account, &filter, 200, |m| m.date_created.is_some_and(|d| d < since))
            .await;
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
                        self.shared.stats.resolved_found.inc();
                        if ours.len() > 1 {
                            tracing::warn!(
                                matches = ours.len(),
                                "several matching messages in Twilio; recording the oldest"
                            );
                        } else {
                            tracing::info!("ambiguous send found in Twilio; recording it");
                        }
                        self.commit(job, oldest.sid.as_deref().unwrap_or_default(), &slot.number, Some(body.as_str()))
                            .await;
                        Step::Done
                    }
                    None => {
                        self.shared.stats.resolved_unsent.inc();
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
                    Due::In(self.shared.backoff(slot.attempt + 1)),
                    slot.attempt,
                    "ambiguous",
                    Some(&marker),
                )
                .await;
                Step::Done
            }
        }
    }

    /// No number can be added: park the job until the earliest slot of any number frees (`reason` says why no
    /// number can be added, for the batch status), or until the batch expires if that is sooner (it then ends
    /// `expired`).
    async fn defer(&self, job: &Job, f: &Full, reason: &str, expires_ms: Option<i64>) -> Step {
        self.shared.stats.deferred.inc();
        let jitter: i64 = rand::rng().random_range(0..50);
        let mut due = f.earliest_free_ms.map(|t| t + jitter).unwrap_or(f.now_ms + 1_000);
        if f.orphaned_slots > 0 {
            // Orphaned reservations may free slots as soon as their leases expire.
            due = due.min(f.now_ms + self.shared.settings.lease.as_millis() as i64 + jitter);
        }
        if let Some(e) = expires_ms {
            due = due.min(e);
        }
        tracing::debug!(in_ms = due - f.now_ms, reason, "no capacity and no number can be added; deferring");
        let reason = reason.replace('|', "/");
        let _ = self
            .shared
            .ledger
            .requeue(job, Requeue::Defer, Due::At(due), f.attempt(), &reason, f.state.as_deref())
            .await;
        let after = Duration::from_millis((due - f.now_ms).max(0) as u64);
        let _ = self.shared.wake.send(Wake { customer: job.customer.clone(), after: Some(after) });
        Step::Done
    }
}

/// Whether two bodies are the same text, ignoring everything but letters and digits (Twilio may prefix or
/// re-encode what it stores).
fn same_text(stored: &str, sent: &str) -> bool {
    let norm = |s: &str| s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect::<String>();
    let (stored, sent) = (norm(stored), norm(sent));
    !sent.is_empty() && stored.contains(&sent) || (!stored.is_empty() && sent.contains(&stored))
}
