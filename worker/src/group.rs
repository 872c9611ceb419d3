//! Group calls: the send path's reservations and commits of one customer, gathered from the jobs that reach that
//! step at the same moment and sent to Redis as one script call (`reserve_many.lua`, `commit_many.lua`).
//!
//! There is no linger. A customer's first request starts a call at once; requests that arrive while it is on the
//! wire wait for it and go together in the next one (at most [`MAX_GROUP`]). So a quiet worker sends each request
//! alone, as soon as it comes (nothing waits for company), and a busy one sends them in groups as large as the load
//! makes them — the busier, the fewer round trips and script calls per text. At most one call per customer is in
//! flight from a process, so a group never races another group of the same process; groups of different processes
//! are serialised by Redis like any two scripts.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::contracts::{Committed, Committing, Reserved, Reserving};
use shared::domain::CustomerId;
use shared::ledger::{Job, Ledger};
use tokio::sync::oneshot;

/// Most requests in one call: a bound on the time one script holds Redis (about 6 commands a job).
pub const MAX_GROUP: usize = 32;

type Run<T, R> = Arc<dyn Fn(CustomerId, Vec<T>) -> Pin<Box<dyn Future<Output = Vec<R>> + Send>> + Send + Sync>;

/// Gathers requests per customer and runs them in groups.
pub struct Combiner<T, R> {
    queues: Mutex<HashMap<CustomerId, Queue<T, R>>>,
    run: Run<T, R>,
}

struct Queue<T, R> {
    waiting: Vec<(T, oneshot::Sender<R>)>,
    running: bool,
}

impl<T: Send + 'static, R: Send + 'static> Combiner<T, R> {
    pub fn new(run: Run<T, R>) -> Arc<Self> {
        Arc::new(Self { queues: Mutex::default(), run })
    }

    /// The answer to `item`, run with whatever else of `customer` is waiting. `None` only if the runner dropped the
    /// request (it never does: every request of a group gets its answer).
    pub async fn submit(self: &Arc<Self>, customer: &CustomerId, item: T) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queues = self.queues.lock().unwrap();
            let q = queues.entry(customer.clone()).or_insert_with(|| Queue { waiting: Vec::new(), running: false });
            q.waiting.push((item, tx));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            tokio::spawn(self.clone().drain(customer.clone()));
        }
        rx.await.ok()
    }

    /// Runs the customer's waiting requests, a group at a time, until none is left.
    async fn drain(self: Arc<Self>, customer: CustomerId) {
        // Should a run panic, the customer's queue goes with it: its waiting requests see their answer dropped (and
        // take the single path), and the next request starts a new drain instead of waiting for this one forever.
        struct Abandon<'a, T, R>(&'a Combiner<T, R>, &'a CustomerId, bool);
        impl<T, R> Drop for Abandon<'_, T, R> {
            fn drop(&mut self) {
                if self.2 {
                    if let Ok(mut queues) = self.0.queues.lock() {
                        queues.remove(self.1);
                    }
                }
            }
        }
        let mut guard = Abandon(&self, &customer, true);
        loop {
            let group: Vec<(T, oneshot::Sender<R>)> = {
                let mut queues = self.queues.lock().unwrap();
                let Some(q) = queues.get_mut(&customer) else {
                    guard.2 = false;
                    return;
                };
                if q.waiting.is_empty() {
                    queues.remove(&customer);
                    guard.2 = false;
                    return;
                }
                let n = q.waiting.len().min(MAX_GROUP);
                q.waiting.drain(..n).collect()
            };
            let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = group.into_iter().unzip();
            let answers = (self.run)(customer.clone(), items).await;
            for (tx, answer) in replies.into_iter().zip(answers) {
                let _ = tx.send(answer);
            }
        }
    }
}

/// A job asking for a slot, with what its rules say of it (see `shared::ledger::Rules`).
pub struct ReserveRequest {
    pub job: Job,
    pub quiet: Arc<str>,
    pub days: Arc<str>,
    pub segments: u32,
    pub spend: Arc<str>,
}

/// A slot (and whether the replicas confirmed it), `Slow` (reserve it alone), or the Redis error the group met.
pub type ReserveAnswer = Result<(Reserved, bool), String>;

/// A message Twilio took, to record.
pub struct CommitRequest {
    pub job: Job,
    pub sid: String,
    pub from: String,
    pub body: Option<String>,
}

pub type CommitAnswer = Result<Committed, String>;

/// The two group calls of the send path.
pub struct Groups {
    pub reserve: Arc<Combiner<ReserveRequest, ReserveAnswer>>,
    pub commit: Arc<Combiner<CommitRequest, CommitAnswer>>,
    /// Customers whose settings need reserve.lua on every send ([`Reserved::Rules`]: consent required, a review
    /// open, a spent campaign), until when: their jobs skip
    /// the group call (it would only answer the same) and are looked at again after [`RULES_RECHECK`].
    ruled: Mutex<HashMap<CustomerId, Instant>>,
}

/// How long a customer answered [`Reserved::Rules`] reserves alone before a group call asks again (its settings
/// may change: caps removed, reviews closed).
pub const RULES_RECHECK: Duration = Duration::from_secs(5);

impl Groups {
    pub fn new(ledger: Ledger) -> Self {
        let l = ledger.clone();
        let reserve: Run<ReserveRequest, ReserveAnswer> = Arc::new(move |customer, items: Vec<ReserveRequest>| {
            let ledger = l.clone();
            Box::pin(async move {
                let jobs: Vec<Reserving<'_>> = items
                    .iter()
                    .map(|r| Reserving {
                        job: &r.job,
                        quiet: &r.quiet,
                        days: &r.days,
                        segments: r.segments,
                        spend: &r.spend,
                    })
                    .collect();
                match ledger.reserve_many(&customer, &jobs).await {
                    Ok((replies, confirmed)) => replies.into_iter().map(|r| Ok((r, confirmed))).collect(),
                    Err(e) => vec![Err(e.to_string()); items.len()],
                }
            })
        });
        let commit: Run<CommitRequest, CommitAnswer> = Arc::new(move |customer, items: Vec<CommitRequest>| {
            let ledger = ledger.clone();
            Box::pin(async move {
                let sent: Vec<Committing<'_>> = items
                    .iter()
                    .map(|c| Committing { job: &c.job, sid: &c.sid, from: &c.from, body: c.body.as_deref() })
                    .collect();
                match ledger.commit_many(&customer, &sent).await {
                    Ok(replies) => replies.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e.to_string()); items.len()],
                }
            })
        });
        Self { reserve: Combiner::new(reserve), commit: Combiner::new(commit), ruled: Mutex::default() }
    }

    /// Whether the customer's jobs reserve alone for now.
    pub fn ruled(&self, customer: &CustomerId) -> bool {
        let mut ruled = self.ruled.lock().unwrap();
        match ruled.get(customer) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                ruled.remove(customer);
                false
            }
            None => false,
        }
    }

    /// The customer's settings need reserve.lua's rules: its jobs reserve alone for [`RULES_RECHECK`].
    pub fn rule(&self, customer: &CustomerId) {
        self.ruled.lock().unwrap().insert(customer.clone(), Instant::now() + RULES_RECHECK);
    }
}
