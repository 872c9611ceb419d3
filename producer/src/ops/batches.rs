//! Batches: status, failed recipients, pausing and resuming, cancelling.

use std::collections::BTreeMap;

use shared::batches::{self, BatchStatus, CancelOutcome, PauseOutcome};
use shared::domain::BatchId;

use super::{Deps, OpsError};

/// The error for a batch that does not exist (or expired).
pub fn unknown(id: &BatchId) -> OpsError {
    OpsError::NotFound(format!("unknown batch {id} (never created, or expired)"))
}

/// A batch's counts per state, one consistent snapshot.
pub async fn status(deps: &Deps, id: &BatchId) -> Result<BatchStatus, OpsError> {
    batches::status(&mut deps.conn(), id).await?.ok_or_else(|| unknown(id))
}

/// The recipients of a batch that failed, and why.
pub async fn failures(deps: &Deps, id: &BatchId) -> Result<BTreeMap<String, String>, OpsError> {
    Ok(batches::failures(&mut deps.conn(), id).await?)
}

/// Pauses a batch (`resume` false: its texts wait, sends under way finish) or resumes it (the texts the pause parked
/// go at once); `who` is recorded with it.
pub async fn pause(deps: &Deps, id: &BatchId, resume: bool, who: &str) -> Result<PauseOutcome, OpsError> {
    match batches::pause(&mut deps.conn(), id, resume, who).await? {
        PauseOutcome::NotFound => Err(unknown(id)),
        done => Ok(done),
    }
}

/// Cancels a batch: parked jobs end now, queued ones as workers reach them, in-flight sends finish. Cancelling a
/// complete batch changes nothing and says so.
pub async fn cancel(deps: &Deps, id: &BatchId) -> Result<CancelOutcome, OpsError> {
    match batches::cancel(&mut deps.conn(), id, deps.settings.batch_retention).await? {
        CancelOutcome::NotFound => Err(unknown(id)),
        done => Ok(done),
    }
}
