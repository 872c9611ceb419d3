//! `producer cancel`, `pause`, `resume`: stop a batch for good, or for a while.

use std::process::ExitCode;

use shared::batches::{CancelOutcome, PauseOutcome};
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

/// `producer pause BATCH` / `producer resume BATCH`.
pub async fn pause(settings: Settings, args: CancelArgs, resume: bool) -> Result<ExitCode, Failure> {
    let id = parse_id(BatchId::parse, &args.batch)?;
    match batches::pause(&connect(settings).await?, &id, resume, "cli").await? {
        PauseOutcome::Paused => println!("batch {id} paused: its texts wait until `producer resume {id}`"),
        PauseOutcome::Resumed { released } => {
            println!("batch {id} resumed ({released} held texts go now; queued ones as workers reach them)")
        }
        PauseOutcome::Already { state } => println!("batch {id} is already {state}"),
        PauseOutcome::AlreadyComplete => println!("batch {id} is complete or cancelled: nothing to pause or resume"),
        PauseOutcome::NotFound => unreachable!("an unknown batch is an error of the operation"),
    }
    Ok(ExitCode::SUCCESS)
}
