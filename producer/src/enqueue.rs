//! One path from an untrusted request to queued jobs, shared by the CLI and the HTTP API: validate everything,
//! then create the batch (which checks the customer exists before writing anything) and enqueue exactly once.

use std::time::Duration;

use shared::batches::{self, NewBatch, Progress, Receipt, SubmitError};
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
        matches!(self, BulkError::Submit(SubmitError::Redis(_) | SubmitError::NotDurable { .. }))
    }
}

/// The CPU-bound half: validation (run it off the async runtime for big requests). `priority` puts the jobs at
/// the front of the customer's queue (single messages).
pub fn prepare(request: &BulkRequest, priority: bool) -> Result<NewBatch, BulkError> {
    let mut batch = validate::validate(request).map_err(BulkError::Invalid)?;
    batch.priority = priority;
    Ok(batch)
}

/// The I/O half: create the batch, enqueue its jobs exactly once. An unknown customer is refused by the batch
/// creation script before it writes anything.
pub async fn enqueue(
    conn: &mut Conn,
    batch: NewBatch,
    retention: Duration,
    chunk_size: usize,
    progress: Option<Progress<'_>>,
    acks: Option<shared::scripts::Acks>,
) -> Result<Receipt, BulkError> {
    Ok(batches::submit(conn, &batch, retention, chunk_size, progress, acks).await?)
}
