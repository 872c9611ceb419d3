//! Bulk texts and single messages: one path from an untrusted request to queued jobs — validate everything, then
//! create the batch (which checks the customer exists before writing anything) and enqueue exactly once. The dry
//! run, which forecasts what the same request would do and cost and writes nothing, is [`super::estimate`].
//!
//! Validation is CPU work (100,000 numbers take a few hundred milliseconds) and needs no Redis, so it is a step of
//! its own: the CLI reports a bad file without connecting anywhere, and the server runs it off the async threads.

use serde::Serialize;
use shared::batches::{self, NewBatch, Progress, SubmitError};
use shared::domain::smart::SmartEncoding;
use shared::store;
use utoipa::ToSchema;

pub use super::estimate::{Estimate, estimate};

use super::{Deps, OpsError};
use crate::validate::{self, BulkRequest};

/// A request that passed validation: the batch to enqueue, and what Smart Encoding changed (when asked for).
#[derive(Clone, Debug)]
pub struct Prepared {
    pub batch: NewBatch,
    pub smart_encoding: Option<SmartEncoding>,
}

/// How to enqueue.
#[derive(Clone, Copy, Debug)]
pub struct Enqueue {
    /// Queue at the front of the customer's queue (single messages, usually awaited by a person).
    pub priority: bool,
    /// Jobs per Redis round trip.
    pub chunk_size: usize,
}

impl Enqueue {
    pub const BULK: Enqueue = Enqueue { priority: false, chunk_size: 1_000 };
    pub const SINGLE: Enqueue = Enqueue { priority: true, chunk_size: 1_000 };
}

/// What an enqueue did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct Accepted {
    pub batch_id: String,
    pub accepted: usize,
    pub duplicates: usize,
    /// True if the idempotency key named an existing batch (nothing new was created).
    pub existing: bool,
    /// Jobs this call pushed (0 when an earlier submit already enqueued everything).
    pub enqueued_now: usize,
    /// What Smart Encoding changed, when it was asked for.
    pub smart_encoding: Option<SmartEncoding>,
}

/// Validates `request` as a whole: any invalid part rejects it, and every problem is named.
pub fn prepare(request: &BulkRequest) -> Result<Prepared, OpsError> {
    let batch = validate::validate(request).map_err(OpsError::Invalid)?;
    Ok(Prepared { batch, smart_encoding: request.smart_report() })
}

/// [`prepare`] on a blocking thread, for servers.
pub async fn prepare_blocking(request: BulkRequest) -> Result<Prepared, OpsError> {
    tokio::task::spawn_blocking(move || prepare(&request)).await.expect("validation does not panic")
}

/// Creates the batch and enqueues its jobs exactly once; resubmitting after a crash (same idempotency key)
/// finishes the enqueue without queueing anyone twice. `progress` is told (jobs enqueued, total) after each chunk.
pub async fn enqueue(
    deps: &Deps,
    prepared: Prepared,
    how: Enqueue,
    progress: Option<Progress<'_>>,
) -> Result<Accepted, OpsError> {
    let Prepared { mut batch, smart_encoding } = prepared;
    batch.priority = how.priority;
    let s = &deps.settings;
    let mut conn = deps.acked.clone().unwrap_or_else(|| deps.conn());
    // How many replicas each write waits for depends on the shards' topology: read it unless it is fresh.
    store::refresh_topology(&mut conn, s.redis.acks.as_ref()).await;
    let receipt =
        batches::submit(&mut conn, &batch, s.batch_retention, how.chunk_size, progress, s.redis.acks.as_ref())
            .await
            .map_err(|e| match e {
                SubmitError::UnknownCustomer(c) => super::customers::unknown(&c),
                e @ SubmitError::KeyReused { .. } => {
                    OpsError::Conflict { field: Some("idempotency_key"), message: e.to_string() }
                }
                e @ SubmitError::NotDurable { .. } => OpsError::Unavailable(e.to_string()),
                SubmitError::Redis(r) => OpsError::Storage(r),
            })?;
    Ok(Accepted {
        batch_id: receipt.batch_id,
        accepted: receipt.accepted,
        duplicates: receipt.duplicates,
        existing: receipt.existing,
        enqueued_now: receipt.enqueued_now,
        smart_encoding,
    })
}
