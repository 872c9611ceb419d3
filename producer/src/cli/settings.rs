//! `producer settings`: check this process's quota settings against the fleet's, or make them the fleet's.

use std::process::ExitCode;

use shared::config::Settings;

use super::{Failure, connect};
use crate::ops::pools;

#[derive(clap::Args, Debug)]
pub struct SettingsArgs {
    /// Store these settings as the fleet's (after changing them on purpose everywhere).
    #[arg(long)]
    pub apply: bool,
}

pub async fn run(settings: Settings, args: SettingsArgs) -> Result<ExitCode, Failure> {
    let quota = settings.quota;
    pools::fleet_settings(&connect(settings).await?, args.apply).await?;
    println!(
        "fleet quota settings: window {}s, quota {}, cap {}",
        quota.window.as_secs(),
        quota.daily_quota,
        quota.conversational_cap
    );
    Ok(ExitCode::SUCCESS)
}
