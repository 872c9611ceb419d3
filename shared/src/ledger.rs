//! The job ledger: typed calls over the Lua scripts that move a job between states.
//!
//! A job is one (batch, recipient). It sits in its customer's queue as `<batch>|<recipient>`, moves to the in-flight
//! set under a lease when a worker fetches it, and ends in a terminal state recorded in the batch's state hash,
//! with the batch counters updated in the same script. The quota window is part of the same ledger: a slot is
//! reserved before the send and given back if Twilio refused the message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Value;

use crate::config::QuotaSettings;
use crate::contracts::{CommitMany, Committed, Committing, ReserveMany, Reserved, Reserving};
use crate::domain::{BatchId, CustomerId, PhoneNumber};
use crate::keys::CustomerKeys;
use crate::scripts::{self, Acks};
use crate::store::{Conn, num, strings};

/// One job: a recipient of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub customer: CustomerId,
    pub batch: BatchId,
    pub recipient: PhoneNumber,
    /// The recipient's merge-field values (personalised batches), as [`crate::keys::job_member`] stores them.
    pub values: Option<String>,
    /// The in-flight member, `<queue member>#<lease token>` (queue member: `<batch local id>|<recipient>`, then
    /// `|<values>` when personalised): who holds the job (a fresh token per fetch).
    pub lease: String,
}

impl Job {
    /// Decodes a queue member fetched from `customer`'s queue under lease `token`.
    pub fn leased(customer: &CustomerId, member: &str, token: &str) -> Option<Self> {
        let (local, rest) = member.split_once('|')?;
        let (recipient, values) = match rest.split_once('|') {
            Some((r, v)) => (r, Some(v.to_owned())),
            None => (rest, None),
        };
        let batch = BatchId::from_parts(customer, local).ok()?;
        let recipient = PhoneNumber::from_trusted(recipient).ok()?;
        let lease = format!("{member}#{token}");
        Some(Self { customer: customer.clone(), batch, recipient, values, lease })
    }
}

/// What the reserve script needs to know, beyond Redis, of the rules one job is under: the tenant's clock — the
/// quiet periods of the recipient's zones as instants ([`crate::quiet::encode`]; empty when quiet hours are off or
/// the batch is urgent) and when after a period's end this job comes due (spreads a morning's jobs) — and the
/// carriers' — the recipient's line when the caller just looked it up, the T-Mobile day as instants, and the
/// segments of the job's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub quiet: Arc<str>,
    pub spread_ms: u64,
    /// The line Lookup just gave (the script caches it), or `None`: the script reads its cache.
    pub line: Option<crate::carriers::Line>,
    /// Three consecutive starts of the carriers' day (ms, see [`crate::carriers::day_starts`]).
    pub days: Arc<str>,
    pub segments: u32,
    /// The spend terms ([`crate::spend::Terms::encode`]): the customer's month and the prices; empty: nothing is
    /// counted.
    pub spend: Arc<str>,
}

impl Default for Rules {
    /// No quiet hours, no looked-up line, one segment, no spend counted.
    fn default() -> Self {
        Self { quiet: Arc::from(""), spread_ms: 0, line: None, days: Arc::from(""), segments: 1, spend: Arc::from("") }
    }
}

/// A reserved quota slot: which number sends, and the window entry that counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub number: String,
    pub resid: String,
    /// Redis time of the reservation, ms.
    pub at_ms: i64,
    /// Transient failures before this attempt.
    pub attempt: u32,
}

impl Slot {
    /// The job state this slot wrote (`r|…`), used for compare-and-set by later scripts.
    pub fn marker(&self) -> String {
        format!("r|{}|{}|{}|{}", self.number, self.resid, self.at_ms, self.attempt)
    }
}

/// Why there was no slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Full {
    pub numbers: u32,
    pub pending_intents: u32,
    pub max_numbers: u32,
    /// When the oldest window entry of any number ages out (Redis ms), if the customer has numbers.
    pub earliest_free_ms: Option<i64>,
    /// Creation time of the oldest pending purchase intent (Redis ms).
    pub oldest_intent_ms: Option<i64>,
    pub now_ms: i64,
    /// The job's state as the script saw it (`None` if never attempted), for compare-and-set.
    pub state: Option<String>,
    /// Reserved slots older than any live send, whose worker presumably died mid-send. Until they are resolved
    /// (when their jobs' leases expire) nobody buys: they may turn out to be free capacity.
    pub orphaned_slots: u32,
}

impl Full {
    pub fn at_max(&self) -> bool {
        self.numbers >= self.max_numbers
    }
    /// Transient failures recorded in the job's state so far.
    pub fn attempt(&self) -> u32 {
        attempt_of(self.state.as_deref())
    }
}

/// Result of [`Ledger::reserve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserve {
    Reserved(Slot),
    /// The slot was reserved but the replicas did not confirm its attempt marker in time: do not send (a failover
    /// could lose the marker and a later delivery would send again); give the slot back and retry later.
    Unconfirmed(Slot),
    /// Sent before (e.g. a redelivered job); the sid is the one recorded.
    AlreadySent(String),
    /// Already failed, opted out or cancelled.
    Terminal,
    /// The caller's lease is gone (it expired and the job went back to the queue): leave the job alone.
    Lost,
    /// Ended here: the recipient opted out, the batch was cancelled, or the batch no longer exists.
    OptedOut,
    Cancelled,
    Orphan,
    /// Ended here: the batch's expiry passed before the text could go.
    Expired,
    /// Parked until quiet hours end in `zone` (Redis ms).
    Quiet {
        due_ms: i64,
        zone: String,
    },
    /// The recipient's line is needed (a carrier cap, or lookups asked for) and not cached: look it up, then call
    /// again with [`Rules::line`]. Nothing changed.
    Lookup,
    /// Ended here: the recipient cannot take a text (a landline, an invalid number), with the reason.
    Unreachable(String),
    /// Parked until the carrier cap `cap` renews (Redis ms).
    Capped {
        due_ms: i64,
        cap: String,
    },
    /// Held while the tenant's suspected revocation waits for a person (looked at again at `recheck_ms` at the
    /// latest; the review's end releases it at once).
    Held {
        recheck_ms: i64,
    },
    /// Parked: the text (or the number it needs) would pass the customer's monthly spend limit. It comes due at the
    /// next month (`due_ms`), or at once when the limit is raised.
    Spend {
        due_ms: i64,
    },
    /// Parked: its batch is paused (deliverability, or by hand) until a person resumes it; looked at again at
    /// `due_ms` meanwhile.
    Paused {
        due_ms: i64,
    },
    /// Parked: the tenant already had the customer's most texts in the frequency cap's window (across batches);
    /// due when the oldest ages out.
    Frequency {
        due_ms: i64,
    },
    /// Ended here: the customer requires consent on record and the tenant has none.
    NoConsent,
    /// An earlier attempt reserved `slot` and may have reached Twilio.
    Ambiguous {
        slot: Slot,
        now_ms: i64,
    },
    Full(Full),
    /// Locked mode: purchase intents were recorded; buy exactly one number for each.
    Intents(Decision),
    /// Locked mode: the lock expired or was taken over.
    LostLock,
}

/// A purchase decision (locked mode): the intents recorded, sized to the backlog the script saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub intent_ids: Vec<String>,
    /// False when replica acknowledgements are on and the replicas did not confirm the intents in time: nothing may
    /// be bought for them (a failover could lose them); the caller drops them.
    pub confirmed: bool,
    pub now_ms: i64,
    /// Jobs that wanted a slot when the decision was made.
    pub backlog: u64,
    /// Free slots over the customer's numbers at that moment.
    pub free: u64,
}

/// How a job that is not finished goes back to the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Twilio did not take the message: give the slot back, count the failure.
    Release,
    /// The outcome is unknown: keep the slot and the marker for resolution.
    Keep,
    /// No capacity at max numbers: count as deferred.
    Defer,
    /// Nothing to record (waiting on someone else's purchase, or shutting down).
    Wait,
}

impl Requeue {
    fn as_str(self) -> &'static str {
        match self {
            Requeue::Release => "release",
            Requeue::Keep => "keep",
            Requeue::Defer => "defer",
            Requeue::Wait => "wait",
        }
    }
}

/// Terminal outcomes other than "sent".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Failed,
    OptedOut,
    Cancelled,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Failed => "f",
            Ending::OptedOut => "o",
            Ending::Cancelled => "x",
        }
    }
}

/// Result of [`Ledger::commit_sent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    Recorded {
        batch_completed: bool,
    },
    /// The same sid was already recorded (a retried commit).
    Already,
    /// The job had already ended: the text went out twice. Counted in the batch's `dup_sends`.
    Duplicate,
    Orphan,
}

/// Jobs handed out by [`Ledger::fetch`]. (Queue entries are only written by [`crate::batches`]; one that does not
/// decode is skipped.)
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    pub jobs: Vec<Job>,
    pub queue_len: i64,
    /// Time until the earliest scheduled job or lease deadline.
    pub next_due_in: Option<Duration>,
    pub inflight: i64,
}

#[derive(Clone)]
pub struct Ledger {
    conn: Conn,
    quota: QuotaSettings,
    retention_s: u64,
    orphan_after: Duration,
    /// Replicas that must confirm the writes a failover must not lose (see [`Ledger::with_acks`]).
    acks: Option<Acks>,
    /// Connections for the calls followed by `WAIT` (see [`Ledger::with_acks`]), used in turn.
    acked: Arc<Vec<Conn>>,
    next_acked: Arc<std::sync::atomic::AtomicUsize>,
    /// `WAIT`s that returned fewer replicas than asked for.
    wait_timeouts: Arc<AtomicU64>,
}

impl Ledger {
    pub fn new(conn: Conn, quota: QuotaSettings, retention: Duration) -> Self {
        Self {
            conn,
            quota,
            retention_s: retention.as_secs().max(60),
            orphan_after: Duration::from_secs(15),
            acks: None,
            acked: Arc::default(),
            next_acked: Arc::default(),
            wait_timeouts: Arc::default(),
        }
    }

    /// Replica acknowledgements (`MESSENGER_REDIS_REPLICA_ACKS`): a reservation's attempt marker (written before a
    /// send) and a purchase decision's intents (written before a buy) must be confirmed by `acks.replicas` replicas
    /// before the caller acts on them — otherwise a failover could lose them and the job could be texted twice, or a
    /// number bought twice. [`Reserve::Unconfirmed`] and an unconfirmed [`Decision`] say they were not. A recorded
    /// send is waited for too, but its loss is safe (the attempt marker survives and the next delivery finds the
    /// message in Twilio), so it only counts a timeout.
    ///
    /// `WAIT` blocks the connection it runs on (Redis reads nothing more from it until the replicas answer or the
    /// timeout passes), so the acknowledged calls run on their own `connections`, in turn, never on the shared
    /// connection the fetcher and everything else use: a primary that has lost its replica then slows only the
    /// acknowledged calls of its own customers.
    pub fn with_acks(mut self, acks: Option<Acks>, connections: Vec<Conn>) -> Self {
        self.acks = acks.filter(|a| a.replicas > 0);
        self.acked = Arc::new(connections);
        self
    }

    /// The connection for a call followed by `WAIT` (the shared one when there is no dedicated one).
    fn acked_conn(&self) -> Conn {
        if self.acks.is_none() || self.acked.is_empty() {
            return self.conn.clone();
        }
        let i = self.next_acked.fetch_add(1, Ordering::Relaxed);
        self.acked[i % self.acked.len()].clone()
    }

    /// Counts unconfirmed `WAIT`s in `counter` (shared with whoever reports them).
    pub fn with_wait_counter(mut self, counter: Arc<AtomicU64>) -> Self {
        self.wait_timeouts = counter;
        self
    }

    /// `WAIT`s that were not confirmed in time so far.
    pub fn wait_timeouts(&self) -> u64 {
        self.wait_timeouts.load(Ordering::Relaxed)
    }

    fn unconfirmed(&self) {
        self.wait_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// How old an unsettled reservation must be to count as orphaned: longer than any live send can take (the
    /// Twilio timeout plus a margin). Reservations younger than this belong to sends still in progress.
    pub fn with_orphan_after(mut self, d: Duration) -> Self {
        self.orphan_after = d;
        self
    }

    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    pub fn quota(&self) -> &QuotaSettings {
        &self.quota
    }

    /// The fast path (`Fast`) or the re-check under the purchase lock (`Locked`).
    pub async fn reserve(
        &self,
        job: &Job,
        mode: ReserveMode<'_>,
        resolved: Option<&Slot>,
        rules: &Rules,
    ) -> redis::RedisResult<Reserve> {
        let k = CustomerKeys::new(&job.customer);
        let (mode_s, token, intent, name, room) = match mode {
            ReserveMode::Fast => ("fast", "", "", "", -1),
            ReserveMode::Locked { token, intent_prefix, name_prefix, room } => {
                ("locked", token, intent_prefix, name_prefix, room.map_or(-1, i64::from))
            }
        };
        let v: (Value, bool) = scripts::RESERVE
            .key(k.cfg())
            .key(k.pool())
            .key(k.optouts())
            .key(k.batch(&job.batch))
            .key(k.batch_state(&job.batch))
            .key(k.batch_failures(&job.batch))
            .key(k.inflight())
            .key(k.intents())
            .key(k.lock())
            .key(k.unsent())
            .key(k.queue())
            .key(k.scheduled())
            .key(k.events())
            .key(k.conversation(job.recipient.as_str()))
            .arg(job.recipient.as_str())
            .arg(&job.lease)
            .arg(self.quota.window_ms())
            .arg(self.quota.daily_quota)
            .arg(self.quota.conversational_cap)
            .arg(k.window_prefix())
            .arg(k.received_prefix())
            .arg(k.sticky_prefix())
            .arg(self.retention_s)
            .arg(mode_s)
            .arg(token)
            .arg(intent)
            .arg(name)
            .arg(resolved.map(Slot::marker).unwrap_or_default())
            .arg(self.orphan_after.as_millis() as u64)
            .arg(room)
            .arg(&*rules.quiet)
            .arg(rules.spread_ms)
            .arg(rules.line.map_or("", crate::carriers::Line::code))
            .arg(k.lookup_prefix())
            .arg(k.caps_prefix())
            .arg(&*rules.days)
            .arg(rules.segments)
            .arg(&*rules.spend)
            .run_acked(&mut self.acked_conn(), self.acks.as_ref())
            .await?;
        let (v, confirmed): (Value, bool) = v;
        let p = strings(v);
        let slot_at = |i: usize| Slot {
            number: p[i].clone(),
            resid: p[i + 1].clone(),
            at_ms: num(&p, i + 2),
            attempt: num(&p, i + 3) as u32,
        };
        if !confirmed {
            self.unconfirmed();
        }
        Ok(match p.first().map(String::as_str) {
            Some("ok") => {
                let slot =
                    Slot { number: p[1].clone(), resid: p[2].clone(), at_ms: num(&p, 3), attempt: num(&p, 4) as u32 };
                if confirmed { Reserve::Reserved(slot) } else { Reserve::Unconfirmed(slot) }
            }
            Some("done") => Reserve::AlreadySent(p.get(1).cloned().unwrap_or_default()),
            Some("terminal") => Reserve::Terminal,
            Some("opted_out") => Reserve::OptedOut,
            Some("cancelled") => Reserve::Cancelled,
            Some("orphan") => Reserve::Orphan,
            Some("expired") => Reserve::Expired,
            Some("lookup") => Reserve::Lookup,
            Some("unreachable") => Reserve::Unreachable(p.get(1).cloned().unwrap_or_default()),
            Some("capped") => Reserve::Capped { due_ms: num(&p, 1), cap: p.get(2).cloned().unwrap_or_default() },
            Some("quiet") => Reserve::Quiet { due_ms: num(&p, 1), zone: p.get(2).cloned().unwrap_or_default() },
            Some("held") => Reserve::Held { recheck_ms: num(&p, 1) },
            Some("spend") => Reserve::Spend { due_ms: num(&p, 1) },
            Some("paused") => Reserve::Paused { due_ms: num(&p, 1) },
            Some("frequency") => Reserve::Frequency { due_ms: num(&p, 1) },
            Some("no_consent") => Reserve::NoConsent,
            Some("lost") => Reserve::Lost,
            Some("ambiguous") => Reserve::Ambiguous { slot: slot_at(1), now_ms: num(&p, 5) },
            Some("full") => Reserve::Full(Full {
                numbers: num(&p, 1) as u32,
                pending_intents: num(&p, 2) as u32,
                max_numbers: num(&p, 3) as u32,
                earliest_free_ms: Some(num(&p, 4)).filter(|v| *v >= 0),
                oldest_intent_ms: Some(num(&p, 5)).filter(|v| *v >= 0),
                now_ms: num(&p, 6),
                state: p.get(7).filter(|s| !s.is_empty()).cloned(),
                orphaned_slots: num(&p, 8) as u32,
            }),
            Some("intents") => Reserve::Intents(Decision {
                confirmed,
                now_ms: num(&p, 1),
                backlog: num(&p, 2).max(0) as u64,
                free: num(&p, 3).max(0) as u64,
                intent_ids: p[4..].to_vec(),
            }),
            Some("lost_lock") => Reserve::LostLock,
            other => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "unexpected reply from reserve.lua",
                    format!("{other:?}"),
                )));
            }
        })
    }

    /// The fast path for several jobs of one customer in one call (reserve_many.lua): a slot for each job in the
    /// plain case, [`Reserved::Slow`] for the others (reserve them with [`Ledger::reserve`]). The second value is
    /// whether the replicas confirmed the reservations (see [`Ledger::with_acks`]; unconfirmed slots must not be
    /// used to send).
    pub async fn reserve_many(
        &self,
        customer: &CustomerId,
        jobs: &[Reserving<'_>],
    ) -> redis::RedisResult<(Vec<Reserved>, bool)> {
        let k = CustomerKeys::new(customer);
        let call = ReserveMany {
            keys: &k,
            window_ms: self.quota.window_ms(),
            daily_quota: self.quota.daily_quota,
            conversational_cap: self.quota.conversational_cap,
            jobs,
        };
        let (v, confirmed): (Value, bool) = call.call().run_acked(&mut self.acked_conn(), self.acks.as_ref()).await?;
        if !confirmed {
            self.unconfirmed();
        }
        let replies =
            call.replies(v).map_err(|e| redis::RedisError::from((redis::ErrorKind::Client, "reserve_many", e)))?;
        Ok((replies, confirmed))
    }

    /// Records several messages of one customer in one call (commit_many.lua): the group commit. A message answered
    /// [`Committed::Single`] is recorded with [`Ledger::commit_sent`].
    pub async fn commit_many(
        &self,
        customer: &CustomerId,
        items: &[Committing<'_>],
    ) -> redis::RedisResult<Vec<Committed>> {
        let k = CustomerKeys::new(customer);
        let call = CommitMany { keys: &k, retention_s: self.retention_s, window_ms: self.quota.window_ms(), items };
        let (v, confirmed): (Value, bool) = call.call().run_acked(&mut self.acked_conn(), self.acks.as_ref()).await?;
        if !confirmed {
            // Safe, as for one message (commit_sent).
            self.unconfirmed();
        }
        call.replies(v).map_err(|e| redis::RedisError::from((redis::ErrorKind::Client, "commit_many", e)))
    }

    /// Records a message sent from `from` (idempotent; see commit.lua). `body`: the text as sent, kept in the
    /// tenant's conversation when the batch records events (`None` otherwise: nothing is kept).
    pub async fn commit_sent(
        &self,
        job: &Job,
        sid: &str,
        from: &str,
        body: Option<&str>,
    ) -> redis::RedisResult<Commit> {
        let k = CustomerKeys::new(&job.customer);
        let (v, confirmed): (Value, bool) = scripts::COMMIT
            .key(k.batch(&job.batch))
            .key(k.batch_state(&job.batch))
            .key(k.batch_failures(&job.batch))
            .key(k.inflight())
            .key(k.unsent())
            .key(k.cfg())
            .key(k.pool_last())
            .key(k.events())
            .key(k.conversation(job.recipient.as_str()))
            .arg(job.recipient.as_str())
            .arg(&job.lease)
            .arg(sid)
            .arg(self.retention_s)
            .arg(k.window_prefix())
            .arg(self.quota.window_ms())
            .arg(from)
            .arg(k.caps_prefix())
            .arg(body.unwrap_or(""))
            .run_acked(&mut self.acked_conn(), self.acks.as_ref())
            .await?;
        if !confirmed {
            // Safe to go on: the attempt marker was confirmed before the send, so losing this record only makes the
            // next delivery look the message up in Twilio.
            self.unconfirmed();
        }
        let p = strings(v);
        Ok(match p.first().map(String::as_str) {
            Some("ok") => Commit::Recorded { batch_completed: num(&p, 1) == 1 },
            Some("already") => Commit::Already,
            Some("duplicate") => Commit::Duplicate,
            _ => Commit::Orphan,
        })
    }

    /// Ends a job without a (new) text. `seen` is the state the caller acted on (compare-and-set).
    pub async fn finish(
        &self,
        job: &Job,
        ending: Ending,
        reason: &str,
        seen: Option<&str>,
    ) -> redis::RedisResult<bool> {
        let k = CustomerKeys::new(&job.customer);
        let v: Value = scripts::FAIL
            .key(k.batch(&job.batch))
            .key(k.batch_state(&job.batch))
            .key(k.batch_failures(&job.batch))
            .key(k.inflight())
            .key(k.optouts())
            .key(k.unsent())
            .key(k.cfg())
            .key(k.events())
            .key(k.optout_records())
            .key(k.conversation(job.recipient.as_str()))
            .arg(job.recipient.as_str())
            .arg(&job.lease)
            .arg(ending.as_str())
            .arg(reason)
            .arg(seen.unwrap_or(""))
            .arg(k.window_prefix())
            .arg(self.retention_s)
            .run(&mut self.conn.clone())
            .await?;
        Ok(strings(v).first().map(String::as_str) == Some("ok"))
    }

    /// Moves a job from in-flight back to the schedule, due after `delay` (Redis time) or at `due_ms`.
    /// `seen` is the job state the caller acted on (`None` = no state yet). Returns the due time, or `None` if the
    /// job is no longer the caller's (lease lost, state changed) or ended (its batch was cancelled meanwhile).
    #[allow(clippy::too_many_arguments)]
    pub async fn requeue(
        &self,
        job: &Job,
        how: Requeue,
        when: Due,
        attempt: u32,
        reason: &str,
        seen: Option<&str>,
    ) -> redis::RedisResult<Option<i64>> {
        let k = CustomerKeys::new(&job.customer);
        let (delay, due) = match when {
            Due::In(d) => (d.as_millis() as i64, 0),
            Due::At(ms) => (-1, ms),
        };
        let v: Value = scripts::RETRY
            .key(k.batch(&job.batch))
            .key(k.batch_state(&job.batch))
            .key(k.inflight())
            .key(k.scheduled())
            .key(k.unsent())
            .key(k.batch_failures(&job.batch))
            .key(k.cfg())
            .key(k.events())
            .key(k.conversation(job.recipient.as_str()))
            .arg(job.recipient.as_str())
            .arg(&job.lease)
            .arg(how.as_str())
            .arg(delay)
            .arg(due)
            .arg(attempt)
            .arg(reason)
            .arg(seen.unwrap_or(""))
            .arg(k.window_prefix())
            .arg(self.retention_s)
            .run(&mut self.conn.clone())
            .await?;
        let p = strings(v);
        Ok((p.first().map(String::as_str) == Some("ok")).then(|| num(&p, 1)))
    }

    /// The current state of a job (`None` if never attempted or if the batch completed).
    pub async fn job_state(&self, job: &Job) -> redis::RedisResult<Option<String>> {
        let k = CustomerKeys::new(&job.customer);
        redis::cmd("HGET")
            .arg(k.batch_state(&job.batch))
            .arg(job.recipient.as_str())
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Hands up to `n` jobs of `customer` to this worker under a lease of `lease` (and a fresh lease token).
    pub async fn fetch(&self, customer: &CustomerId, n: usize, lease: Duration) -> redis::RedisResult<Fetched> {
        let k = CustomerKeys::new(customer);
        let token = hex::encode(rand::random::<[u8; 6]>());
        let v: Value = scripts::FETCH
            .key(k.queue())
            .key(k.scheduled())
            .key(k.inflight())
            .key(k.cfg())
            .arg(n)
            .arg(lease.as_millis() as u64)
            .arg(1000)
            .arg(&token)
            .run(&mut self.conn.clone())
            .await?;
        let mut p = strings(v);
        if p.len() < 3 {
            return Err(redis::RedisError::from((redis::ErrorKind::Client, "short reply from fetch.lua")));
        }
        let jobs = p.split_off(3);
        Ok(Fetched {
            jobs: jobs.iter().filter_map(|m| Job::leased(customer, m, &token)).collect(),
            queue_len: num(&p, 0),
            next_due_in: Some(num(&p, 1)).filter(|v| *v >= 0).map(|ms| Duration::from_millis(ms as u64)),
            inflight: num(&p, 2),
        })
    }

    /// Extends leases (`members` are in-flight members, [`Job::lease`]); returns the ones no longer held (their
    /// lease expired).
    pub async fn renew(
        &self,
        customer: &CustomerId,
        lease: Duration,
        members: &[String],
    ) -> redis::RedisResult<Vec<String>> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let k = CustomerKeys::new(customer);
        let mut inv = scripts::RENEW.key(k.inflight());
        inv.arg(lease.as_millis() as u64);
        for m in members {
            inv.arg(m);
        }
        let v: Value = inv.run(&mut self.conn.clone()).await?;
        Ok(strings(v).into_iter().filter(|s| !s.is_empty()).collect())
    }

    /// Hands fetched-but-unstarted jobs (their [`Job::lease`]s) back to the front of the queue.
    pub async fn release(&self, customer: &CustomerId, members: &[String]) -> redis::RedisResult<u64> {
        if members.is_empty() {
            return Ok(0);
        }
        let k = CustomerKeys::new(customer);
        let mut inv = scripts::RELEASE.key(k.queue());
        inv.key(k.inflight());
        for m in members {
            inv.arg(m);
        }
        inv.run(&mut self.conn.clone()).await
    }

    /// Credits a message received on `number` (+1 to its limit for one window, up to the cap).
    pub async fn record_inbound(
        &self,
        customer: &CustomerId,
        number: &str,
        message_sid: &str,
    ) -> redis::RedisResult<Inbound> {
        let k = CustomerKeys::new(customer);
        let v: Value = scripts::RECORD_INBOUND
            .key(k.received(number))
            .key(k.pool())
            .arg(message_sid)
            .arg(self.quota.window_ms())
            .arg(number)
            .run(&mut self.conn.clone())
            .await?;
        let p = strings(v);
        Ok(match p.first().map(String::as_str) {
            Some("ok") => Inbound::Credited { received_in_window: num(&p, 1) as u32 },
            Some("duplicate") => Inbound::Duplicate { received_in_window: num(&p, 1) as u32 },
            _ => Inbound::UnknownNumber,
        })
    }

    /// Records a tenant's reply to `number` in one step (record_inbound.lua): the credit (a number of the pool),
    /// an opt-out, opt-in or review and its record, and the customer's events. Once per message sid. With replica
    /// acknowledgements on, the step is confirmed by the replicas before this returns ([`ReplyOutcome::confirmed`]):
    /// a change of consent is answered to Twilio only once it would survive a failover.
    pub async fn record_reply(
        &self,
        customer: &CustomerId,
        number: &str,
        message_sid: &str,
        reply: &Reply<'_>,
    ) -> redis::RedisResult<ReplyOutcome> {
        let k = CustomerKeys::new(customer);
        let (rule, deadline) = match &reply.action {
            ReplyAction::Revoke { rule } => (rule.as_str(), String::new()),
            ReplyAction::Suspect { rule, deadline_ms } => (rule.as_str(), deadline_ms.to_string()),
            _ => ("", String::new()),
        };
        let (v, confirmed): (Value, bool) = scripts::RECORD_INBOUND
            .key(k.received(number))
            .key(k.pool())
            .key(k.cfg())
            .key(k.optouts())
            .key(k.optout_records())
            .key(k.events())
            .key(k.conversation(reply.from.as_str()))
            .key(k.reviews())
            .key(k.scheduled())
            .key(k.consent())
            .key(k.inbox())
            .key(k.unread())
            .arg(message_sid)
            .arg(self.quota.window_ms())
            .arg(number)
            .arg(reply.from.as_str())
            .arg(reply.body)
            .arg(reply.action.name())
            .arg(reply.as_written)
            .arg(k.sticky_prefix())
            .arg(rule)
            .arg(deadline)
            .arg(k.held_prefix())
            .run_acked(&mut self.acked_conn(), self.acks.as_ref())
            .await?;
        if !confirmed {
            self.unconfirmed();
        }
        let p = strings(v);
        let change = match p.get(2).map(String::as_str) {
            Some("out") => Some(OptChange::OptedOut),
            Some("in") => Some(OptChange::OptedIn),
            Some("suspected") => Some(OptChange::Suspected),
            _ => None,
        };
        Ok(ReplyOutcome {
            duplicate: p.first().map(String::as_str) == Some("duplicate"),
            change,
            help_text: p.get(3).filter(|h| !h.is_empty()).cloned(),
            confirmed,
        })
    }

    /// The members of customer `customer`'s in-flight set that are texts to `tenant` holding a slot (state `r|`):
    /// sends that may be on their way to Twilio right now (a revocation is answered once none is). A job in flight
    /// without a slot is not one: its reservation will see the opt-out.
    pub async fn in_flight_to(&self, customer: &CustomerId, tenant: &str) -> redis::RedisResult<Vec<String>> {
        let k = CustomerKeys::new(customer);
        let members: Vec<String> =
            redis::cmd("ZRANGE").arg(k.inflight()).arg(0).arg(-1).query_async(&mut self.conn.clone()).await?;
        // `<batch local id>|<recipient>[|values]#<lease token>` (the token holds no `#`).
        let mine: Vec<(String, crate::domain::BatchId)> = members
            .into_iter()
            .filter_map(|m| {
                let job = m.rsplit_once('#').map_or(m.as_str(), |(j, _)| j);
                let mut parts = job.split('|');
                let (local, recipient) = (parts.next()?, parts.next()?);
                let batch = crate::domain::BatchId::from_parts(customer, local).ok()?;
                (recipient == tenant).then_some((m.clone(), batch))
            })
            .collect();
        if mine.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (_, batch) in &mine {
            pipe.hget(k.batch_state(batch), tenant);
        }
        let states: Vec<Option<String>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(mine
            .into_iter()
            .zip(states)
            .filter(|(_, st)| st.as_deref().is_some_and(|s| s.starts_with("r|")))
            .map(|((m, _), _)| m)
            .collect())
    }

    /// Which of `members` are still in customer `customer`'s in-flight set.
    pub async fn still_in_flight(&self, customer: &CustomerId, members: &[String]) -> redis::RedisResult<Vec<String>> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let k = CustomerKeys::new(customer);
        let mut pipe = redis::pipe();
        for m in members {
            pipe.zscore(k.inflight(), m);
        }
        let scores: Vec<Option<f64>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(members.iter().zip(scores).filter(|(_, s)| s.is_some()).map(|(m, _)| m.clone()).collect())
    }
}

/// What a tenant's reply asks for: Twilio's default keyword lists (only a reply that is exactly one of the words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyword {
    Stop,
    Start,
    Help,
    None,
}

impl Keyword {
    /// Opt-out keywords for long codes and toll-free numbers.
    pub const STOP: [&str; 8] = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"];
    pub const START: [&str; 3] = ["START", "YES", "UNSTOP"];
    pub const HELP: [&str; 2] = ["HELP", "INFO"];

    /// The keyword of a reply's body (trimmed, any case).
    pub fn of(body: &str) -> Self {
        let word = body.trim().to_ascii_uppercase();
        if Self::STOP.contains(&word.as_str()) {
            Keyword::Stop
        } else if Self::START.contains(&word.as_str()) {
            Keyword::Start
        } else if Self::HELP.contains(&word.as_str()) {
            Keyword::Help
        } else {
            Keyword::None
        }
    }
}

/// What a reply does to the tenant's consent, as the webhook read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyAction {
    /// One of Twilio's opt-out keywords (Twilio blocks and confirms those itself).
    Stop,
    /// The tenant's own words, read as a revocation by `rule` (domain/revocation.rs).
    Revoke {
        rule: String,
    },
    /// Words that may be a revocation: a person decides by `deadline_ms` (10 business days from receipt).
    Suspect {
        rule: String,
        deadline_ms: i64,
    },
    Start,
    Help,
    None,
}

impl ReplyAction {
    fn name(&self) -> &'static str {
        match self {
            ReplyAction::Stop => "stop",
            ReplyAction::Revoke { .. } => "revoke",
            ReplyAction::Suspect { .. } => "suspect",
            ReplyAction::Start => "start",
            ReplyAction::Help => "help",
            ReplyAction::None => "",
        }
    }
}

impl From<Keyword> for ReplyAction {
    fn from(k: Keyword) -> Self {
        match k {
            Keyword::Stop => ReplyAction::Stop,
            Keyword::Start => ReplyAction::Start,
            Keyword::Help => ReplyAction::Help,
            Keyword::None => ReplyAction::None,
        }
    }
}

/// A tenant's reply, as a webhook brought it.
#[derive(Clone, Debug)]
pub struct Reply<'a> {
    pub from: &'a crate::domain::PhoneNumber,
    pub body: &'a str,
    pub action: ReplyAction,
    /// The words as the tenant wrote them (trimmed, at most 320 characters), for the consent record.
    pub as_written: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptChange {
    OptedOut,
    OptedIn,
    /// A review of a suspected revocation opened.
    Suspected,
}

/// What recording a reply did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyOutcome {
    /// The message sid was recorded before: nothing changed.
    pub duplicate: bool,
    /// The tenant's opt-out state moved.
    pub change: Option<OptChange>,
    /// The customer's answer to HELP / INFO, when it asked and one is set.
    pub help_text: Option<String>,
    /// The replicas confirmed the step (true when acknowledgements are off).
    pub confirmed: bool,
}

/// The failure count stored in a job state (`w|n|…`, `D|n`, `r|…|n`).
pub fn attempt_of(state: Option<&str>) -> u32 {
    let Some(s) = state else { return 0 };
    let parts: Vec<&str> = s.split('|').collect();
    let field = match parts.first() {
        Some(&"w") | Some(&"D") | Some(&"Q") | Some(&"C") | Some(&"H") | Some(&"S") | Some(&"P") | Some(&"F") => {
            parts.get(1)
        }
        Some(&"r") => parts.get(4),
        _ => None,
    };
    field.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// When a requeued job becomes due.
#[derive(Clone, Copy, Debug)]
pub enum Due {
    /// After this long, measured on Redis's clock.
    In(Duration),
    /// At this Redis time (ms).
    At(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReserveMode<'a> {
    Fast,
    /// The re-check under the purchase lock `token`. Intents are named `<intent_prefix><n>` and their numbers'
    /// FriendlyName is `<name_prefix><intent id>`; `room` caps how many numbers may be added (besides
    /// `max_numbers`), e.g. what a Messaging Service still accepts.
    Locked {
        token: &'a str,
        intent_prefix: &'a str,
        name_prefix: &'a str,
        room: Option<u32>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    Credited { received_in_window: u32 },
    Duplicate { received_in_window: u32 },
    UnknownNumber,
}
