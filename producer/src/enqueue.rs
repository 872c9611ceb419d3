//! One path from an untrusted request to queued jobs, shared by the CLI and the HTTP API: validate everything,
//! check the customer, then create the batch and enqueue exactly once.

use std::time::Duration;

use shared::batches::{self, NewBatch, Progress, Receipt, SubmitError};
use shared::customers;
use shared::store::Conn;

use crate::validate::{self, BulkRequest, Invalid};

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("{0}")]
    Invalid(Invalid),
    /// Unknown customer, reused idempotency key, or Redis failing while enqueuing.
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

impl BulkError {
    /// The request was fine; Redis was not.
    pub fn is_redis(&self) -> bool {
        matches!(self, BulkError::Submit(SubmitError::Redis(_)))
    }
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
    if customers::get(conn, &batch.customer).await.map_err(SubmitError::Redis)?.is_none() {
        return Err(SubmitError::UnknownCustomer(batch.customer).into());
    }
    Ok(batches::submit(conn, &batch, retention, chunk_size, progress).await?)
}
