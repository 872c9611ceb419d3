//! What the parts of one worker process report: counters (served at `/metrics`, logged at exit) and the health the
//! liveness probe reads. A leaf module: the fetcher, the send and purchase paths and the operations endpoint all
//! write or read these, and none of them owns them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

/// This process's counters. Prometheus counters are shared handles, so the metrics registry holds the same ones
/// the paths bump.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: Counter,
    pub failed: Counter,
    pub opted_out: Counter,
    pub retried: Counter,
    pub deferred: Counter,
    /// Jobs parked until quiet hours end in their recipients' zones.
    pub quiet: Counter,
    /// Jobs that ended expired (their batch's expiry passed before they could go).
    pub expired: Counter,
    /// Jobs parked until a carrier cap renews.
    pub capped: Counter,
    /// Jobs parked because their text or number would pass the customer's monthly spend limit.
    pub spend_limited: Counter,
    /// Lookup requests to Twilio (retries included), and those that failed.
    pub lookups: Counter,
    pub lookup_failures: Counter,
    pub ambiguous: Counter,
    pub resolved_found: Counter,
    pub resolved_unsent: Counter,
    pub purchases: Counter,
    /// Purchase decisions (each records one or more intents, sized to the backlog).
    pub purchase_decisions: Counter,
    /// Numbers attached to a Messaging Service (a retry after a transient failure counts once more).
    pub attached: Counter,
    pub releases: Counter,
    /// Steps not taken because the replicas did not confirm a write in time (`MESSENGER_REDIS_REPLICA_ACKS`).
    pub unconfirmed: Counter,
    pub duplicate_sends: Counter,
    pub apalis_restarts: Counter,
    /// Sends, failures and purchases per customer since the last flush to the fleet's statistics.
    tally: std::sync::Mutex<std::collections::HashMap<shared::domain::CustomerId, [u64; 3]>>,
}

/// What [`Stats::tally`] counts per customer.
#[derive(Clone, Copy, Debug)]
pub enum Tally {
    Sent = 0,
    Failed = 1,
    Purchase = 2,
}

impl Tally {
    pub const NAMES: [&'static str; 3] = ["sent", "failed", "purchases"];
}

impl Stats {
    /// Counts one send, failure or purchase of `customer`: the process counter, and the customer's share for the
    /// fleet's per-minute statistics.
    pub fn tally(&self, customer: &shared::domain::CustomerId, what: Tally) {
        match what {
            Tally::Sent => self.sent.inc(),
            Tally::Failed => self.failed.inc(),
            Tally::Purchase => self.purchases.inc(),
        };
        let mut t = self.tally.lock().unwrap();
        match t.get_mut(customer) {
            Some(c) => c[what as usize] += 1,
            None => {
                let mut c = [0; 3];
                c[what as usize] = 1;
                t.insert(customer.clone(), c);
            }
        }
    }

    /// The per-customer counts since the last call (and starts counting afresh).
    pub fn take_tally(&self) -> std::collections::HashMap<shared::domain::CustomerId, [u64; 3]> {
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

/// What the probe looks at; updated by the fetcher, the heartbeat and shutdown.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` of the last Redis reply, plus one (0 = none yet).
    redis_reply: AtomicU64,
    fetcher_running: AtomicBool,
    stopping: AtomicBool,
    /// What the last look at Redis found (a cluster: which nodes are unreachable, whether every slot is served).
    redis: std::sync::Mutex<Option<shared::store::RedisHealth>>,
    /// Why the last attempt to connect failed (shown until Redis first answers).
    connect_error: std::sync::Mutex<Option<String>>,
    /// `WAIT`s the replicas did not confirm in time (the ledger counts them here).
    pub wait_timeouts: Arc<AtomicU64>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            redis_reply: AtomicU64::new(0),
            fetcher_running: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            redis: std::sync::Mutex::new(None),
            connect_error: std::sync::Mutex::new(None),
            wait_timeouts: Arc::default(),
        }
    }
}

impl Health {
    /// Redis just answered one of this process's commands.
    pub fn redis_replied(&self) {
        self.redis_reply.store(self.started.elapsed().as_millis() as u64 + 1, Relaxed);
    }

    /// How long ago Redis last answered; `None` if it never has.
    pub fn since_redis_reply(&self) -> Option<Duration> {
        match self.redis_reply.load(Relaxed) {
            0 => None,
            at => Some(self.started.elapsed().saturating_sub(Duration::from_millis(at - 1))),
        }
    }

    /// Marks the fetcher as running until the returned guard drops (however the fetcher ends, panics included).
    pub fn fetcher_guard(self: &Arc<Self>) -> FetcherGuard {
        self.fetcher_running.store(true, Relaxed);
        FetcherGuard(self.clone())
    }

    /// Records why connecting failed (until Redis answers).
    pub fn connect_failed(&self, why: String) {
        *self.connect_error.lock().unwrap() = Some(why);
    }

    /// Records what a look at Redis found.
    pub fn redis_checked(&self, h: shared::store::RedisHealth) {
        if h.ok {
            self.redis_replied();
        }
        *self.redis.lock().unwrap() = Some(h);
    }

    /// The last look at Redis (a cluster's nodes), if any.
    pub fn redis_health(&self) -> Option<shared::store::RedisHealth> {
        self.redis.lock().unwrap().clone()
    }

    pub fn stopping(&self) {
        self.stopping.store(true, Relaxed);
    }

    /// `None` when healthy, otherwise why not. `stale`: how long without a Redis reply is too long.
    pub fn problem(&self, stale: Duration) -> Option<String> {
        if self.stopping.load(Relaxed) {
            return Some("stopping".into());
        }
        let Some(age) = self.since_redis_reply() else {
            return Some(match self.connect_error.lock().unwrap().as_deref() {
                Some(why) => format!("no reply from Redis yet: {why}"),
                None => "no reply from Redis yet".into(),
            });
        };
        if !self.fetcher_running.load(Relaxed) {
            return Some("the fetcher is not running".into());
        }
        if let Some(h) = self.redis.lock().unwrap().as_ref().filter(|h| !h.ok) {
            let nodes = if h.unreachable.is_empty() {
                String::new()
            } else {
                format!("; unreachable: {}", h.unreachable.join(", "))
            };
            return Some(format!("redis cluster not serving every slot (state {}){nodes}", h.state));
        }
        (age > stale).then(|| format!("no reply from Redis for {} s", age.as_secs()))
    }
}

pub struct FetcherGuard(Arc<Health>);

impl Drop for FetcherGuard {
    fn drop(&mut self) {
        self.0.fetcher_running.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_needs_a_running_fetcher_and_a_recent_redis_reply() {
        let h = Arc::new(Health::default());
        let stale = Duration::from_millis(50);
        assert_eq!(h.problem(stale).as_deref(), Some("no reply from Redis yet"));
        h.redis_replied();
        assert_eq!(h.problem(stale).as_deref(), Some("the fetcher is not running"));
        let guard = h.fetcher_guard();
        assert_eq!(h.problem(stale), None);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(h.problem(stale).as_deref(), Some("no reply from Redis for 1 s"));
        h.redis_replied();
        assert_eq!(h.problem(stale), None);
        drop(guard);
        assert_eq!(h.problem(stale).as_deref(), Some("the fetcher is not running"));
        let _guard = h.fetcher_guard();
        h.stopping();
        assert_eq!(h.problem(stale).as_deref(), Some("stopping"));
    }
}
