//! `producer sessions revoke-all`: sign every dashboard session out.

use std::process::ExitCode;

use shared::config::Settings;

use super::{Failure, connect, print_json};
use crate::ops::sessions;

#[derive(clap::Subcommand, Debug)]
pub enum SessionsCommand {
    /// Sign every dashboard session out, on every server (sessions signed in afterwards are not affected).
    RevokeAll {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: Settings, command: SessionsCommand) -> Result<ExitCode, Failure> {
    match command {
        SessionsCommand::RevokeAll { json } => {
            let r = sessions::revoke_all(&connect(settings).await?).await?;
            if json {
                print_json(&r);
            } else {
                println!("every dashboard session signed in before {} is signed out", r.signed_in_before);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
