//! `producer secrets status | rewrap`: how customers' events secrets are stored, and sealing them all under the
//! current `MESSENGER_SECRETS_KEY` (after changing it).

use std::process::ExitCode;

use shared::config::Settings;

use super::{Failure, connect, print_json};
use crate::ops::secrets::{self, SecretsReport};

#[derive(clap::Subcommand, Debug)]
pub enum SecretsCommand {
    /// Count the stored secrets by how they are kept (in clear, or sealed under which key).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Seal every stored secret under MESSENGER_SECRETS_KEY (those in clear, and those under a key of
    /// MESSENGER_SECRETS_KEY_PREVIOUS); then the previous key can be dropped.
    Rewrap {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: Settings, command: SecretsCommand) -> Result<ExitCode, Failure> {
    let (rewrap, json) = match command {
        SecretsCommand::Status { json } => (false, json),
        SecretsCommand::Rewrap { json } => (true, json),
    };
    let r = secrets::report(&connect(settings).await?, rewrap).await?;
    if json {
        print_json(&r);
    } else {
        print_report(&r, rewrap);
    }
    // Secrets that do not open are a problem to fix (a key missing from MESSENGER_SECRETS_KEY_PREVIOUS).
    Ok(if r.unopened.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_report(r: &SecretsReport, rewrap: bool) {
    match &r.current_key {
        Some(k) => println!("current key: {k}"),
        None => println!("current key: none (MESSENGER_SECRETS_KEY is not set)"),
    }
    if rewrap {
        println!("sealed under the current key now: {}", r.sealed_now);
    }
    if r.by_storage.is_empty() {
        println!("no stored secrets");
    }
    for (how, n) in &r.by_storage {
        println!("  {how}: {n}");
    }
    if !r.unopened.is_empty() {
        println!(
            "do not open with the configured keys (add the key that sealed them to MESSENGER_SECRETS_KEY_PREVIOUS): {}",
            r.unopened.join(", ")
        );
    }
}
