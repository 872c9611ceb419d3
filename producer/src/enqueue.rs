//! One path from an untrusted request to queued jobs, shared by the CLI and the HTTP API: validate everything,
//! check the customer, then create the batch and enqueue exactly once.

use std::time::Duration;

use shared::batches::{self, NewBatch, Progress, Receipt, SubmitError};
use shared::customers;
use shared::domain::CustomerId;
use shared::store::Conn;

use crate::validate::{self, BulkRequest, Invalid};

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("{0}")]
    Invalid(Invalid),
    #[error("unknown customer {0}: create it first with `producer customer add {0}`")]
    UnknownCustomer(CustomerId),
    #[error(
        "idempotency key {key:?} was already used for batch {batch} with a different request (body or recipients \
         differ); use a new key for a new request"
    )]
    KeyReused { key: String, batch: String },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Validates and enqueues. `priority` puts the jobs at the front of the customer's queue (single messages).
pub async fn submit(
    conn: &mut Conn,
    request: &BulkRequest,
    retention: Duration,
    chunk_size: usize,
    priority: bool,
    progress: Option<Progress<'_>>,
) -> Result<Receipt, BulkError> {
    let batch = prepare(request, priority)?;
    enqueue(conn, batch, retention, chunk_size, progress).await
}

/// The CPU-bound half: validation (run it off the async runtime for big requests).
pub fn prepare(request: &BulkRequest, priority: bool) -> Result<NewBatch, BulkError> {
    let mut batch = validate::validate(request).map_err(BulkError::Invalid)?;
    batch.priority = priority;
    Ok(batch)
}

/// The I/O half: check the customer, create the batch, enqueue its jobs exactly once.
pub async fn enqueue(
    conn: &mut Conn,
    batch: NewBatch,
    retention: Duration,
    chunk_size: usize,
    progress: Option<Progress<'_>>,
) -> Result<Receipt, BulkError> {
    // Checked before any write so an unknown customer changes nothing (batch creation re-checks atomically).
    if customers::get(conn, &batch.customer).await?.is_none() {
        return Err(BulkError::UnknownCustomer(batch.customer));
    }
    batches::submit(conn, &batch, retention, chunk_size, progress).await.map_err(|e| match e {
        SubmitError::UnknownCustomer(c) => BulkError::UnknownCustomer(c),
        SubmitError::KeyReused { key, batch } => BulkError::KeyReused { key, batch },
        SubmitError::Redis(r) => BulkError::Redis(r),
    })
}
