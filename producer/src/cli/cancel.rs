//! `producer cancel`: cancel a batch.

use std::process::ExitCode;

use shared::batches::CancelOutcome;
use shared::config::Settings;
use shared::domain::BatchId;

use super::{Failure, connect, parse_id};
use crate::ops::batches;

#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    pub batch: String,
}

pub async fn run(settings: Settings, args: CancelArgs) -> Result<ExitCode, Failure> {
    let id = parse_id(BatchId::parse, &args.batch)?;
    match batches::cancel(&connect(settings).await?, &id).await? {
        CancelOutcome::Cancelled { cancelled_now } => {
            println!(
                "batch {id} cancelled ({cancelled_now} parked jobs ended now; queued ones end as workers reach them)"
            )
        }
        CancelOutcome::AlreadyComplete => println!("batch {id} is already complete"),
        CancelOutcome::NotFound => unreachable!("an unknown batch is an error of the operation"),
    }
    Ok(ExitCode::SUCCESS)
}
