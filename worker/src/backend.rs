//! An apalis [`Backend`] fed by Messenger's own Redis fetcher.
//!
//! apalis-redis 1.0 cannot meet Messenger's needs (measured before this backend was written: it dies on backlogs
//! of ~8,000 due jobs, locks tasks in O(n²), has no per-customer fairness and keeps every finished job), so the
//! queue lives in Messenger's own Lua scripts and apalis stays the worker framework: concurrency, panics caught,
//! graceful drain of in-flight tasks. The [`crate::fetcher`] pulls jobs from Redis into a bounded channel; this
//! backend hands them to apalis; on shutdown it gives every job that never started back to the queue.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::task::task_id::RandomId;
use apalis_core::worker::context::WorkerContext;
use futures::FutureExt;
use futures::future::BoxFuture;
use shared::domain::CustomerId;
use shared::ledger::{Job, Ledger};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tower::layer::util::Identity;

use crate::leases::LeaseGuard;

/// A reason for the fetcher to look at a customer sooner than planned (sent by the send path when it reschedules a
/// job, and by the wake-up subscription).
#[derive(Debug, Clone)]
pub struct Wake {
    pub customer: CustomerId,
    /// Look after this long (a rescheduled job's delay); `None` = now.
    pub after: Option<std::time::Duration>,
}

/// One job handed to a handler, with its lease and its concurrency slot (both released when it is dropped).
#[derive(Debug)]
pub struct SendTask {
    pub job: Job,
    pub lease: LeaseGuard,
    pub permit: OwnedSemaphorePermit,
}

/// The receiving end of the fetcher's channel, shared so that a restarted apalis worker picks up where the last
/// one stopped.
pub type Inbox = Arc<Mutex<mpsc::Receiver<SendTask>>>;

pub struct QueueBackend {
    inbox: Inbox,
    ledger: Ledger,
    closing: Option<BoxFuture<'static, ()>>,
    /// Chaos testing only: end this backend's stream when this fires, as if the apalis worker had died.
    end_at: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for QueueBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueBackend").finish_non_exhaustive()
    }
}

impl QueueBackend {
    pub fn new(inbox: Inbox, ledger: Ledger) -> Self {
        Self { inbox, ledger, closing: None, end_at: None }
    }

    /// Makes the stream end after `after` (to test that the supervisor restarts a worker that died).
    pub fn ending_after(mut self, after: std::time::Duration) -> Self {
        self.end_at = Some(Box::pin(tokio::time::sleep(after)));
        self
    }
}

impl Backend for QueueBackend {
    type Task = Task<SendTask>;
    type Error = Infallible;

    fn poll_ready(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        let ended = self.end_at.as_mut().is_some_and(|end| end.poll_unpin(cx).is_ready());
        let next = if ended { Poll::Ready(None) } else { self.inbox.lock().unwrap().poll_recv(cx) };
        if let Poll::Ready(None) = next {
            // apalis only finishes a worker whose context is stopped; an ended stream alone leaves `run()` pending
            // forever. Stop it so the supervisor sees the worker end and starts another.
            let _ = worker.stop();
        }
        next.map(|t| t.map(|t| Ok(Task::new(t))))
    }

    /// Hands back every job that was fetched but never started.
    fn poll_close(&mut self, cx: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        if self.closing.is_none() {
            let mut unstarted: Vec<SendTask> = Vec::new();
            {
                let mut rx = self.inbox.lock().unwrap();
                while let Ok(t) = rx.try_recv() {
                    unstarted.push(t);
                }
            }
            let ledger = self.ledger.clone();
            self.closing = Some(release(ledger, unstarted).boxed());
        }
        self.closing.as_mut().unwrap().poll_unpin(cx).map(Ok)
    }
}

/// Gives jobs back to the front of their customers' queues.
pub async fn release(ledger: Ledger, tasks: Vec<SendTask>) {
    let mut by_customer: std::collections::HashMap<CustomerId, Vec<String>> = Default::default();
    for t in &tasks {
        by_customer.entry(t.job.customer.clone()).or_default().push(t.job.lease.clone());
    }
    for (customer, members) in by_customer {
        match ledger.release(&customer, &members).await {
            Ok(n) => {
                tracing::info!(customer = %customer, handed_back = n, "returned unstarted jobs to the queue")
            }
            Err(e) => {
                tracing::warn!(customer = %customer, error.message = %e, "could not return unstarted jobs; their leases will expire")
            }
        }
    }
    drop(tasks);
}

impl BackendConfig for QueueBackend {
    type Args = SendTask;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}
