//! The apalis handler: hands each job to the send path ([`crate::send`]) and never fails it — every outcome is
//! recorded in Redis by the ledger, because an error returned to apalis would make it retry a job whose text may
//! already be out.

use std::sync::Arc;

use apalis_core::task::data::Data;

use crate::backend::SendTask;
use crate::send::Sender;

pub async fn handle(task: SendTask, sender: Data<Arc<Sender>>) -> Result<(), apalis_core::error::BoxDynError> {
    sender.process(&task).await;
    drop(task);
    Ok(())
}
