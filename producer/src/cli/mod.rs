//! The `producer` command line: one file per command, each a thin front end over [`crate::ops`] — it turns flags
//! into an operation's input, calls it, and prints the result. Exit codes: 0 done, 2 the request was wrong and
//! nothing changed, 1 it could not be done now (Redis down, a lock held): try again.
//!
//! # Layout
//! - [`customer`]: `customer add` (create or update; unmentioned settings keep their value), `customer list`.
//! - [`bulk`]: `bulk` — validate and enqueue a bulk text, or estimate it (`--dry-run`).
//! - [`consent`]: `consent opt-out | opt-in | import | export | reviews | review | show` — tenants' consent.
//! - [`status`]: `status` — a batch's counts, optionally waiting with a progress bar.
//! - [`desk`]: `recipients` (a batch's failed and undelivered, or their CSV), `resend` (text them again).
//! - [`pool`]: `pool` — a customer's numbers; `pool release-idle`.
//! - [`cancel`], [`inbound`], [`settings`]: the operator's one-liners.
//! - [`secrets`]: `secrets status | rewrap` — how events secrets are stored; seal them under the current key.
//! - [`sessions`]: `sessions revoke-all` — sign every dashboard session out.
//! - [`serve`]: `serve` — the HTTP server ([`crate::server::Application`]); `openapi` prints its API document.

mod bulk;
mod cancel;
mod consent;
mod customer;
mod desk;
mod inbound;
mod pool;
mod secrets;
mod serve;
mod sessions;
mod settings;
mod status;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shared::config::{CommonArgs, Settings};
use shared::store;

use crate::ops::{Deps, OpsError};
use crate::validate::Invalid;

/// Enqueues bulk texts for Messenger's workers and reports on them.
#[derive(Parser, Debug)]
#[command(name = "producer", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage customers.
    #[command(subcommand)]
    Customer(customer::CustomerCommand),
    /// Validate a bulk text and enqueue one job per distinct recipient.
    Bulk(bulk::BulkArgs),
    /// Show a batch's counts per state.
    Status(status::StatusArgs),
    /// Show a customer's numbers (sent / limit in the current window, last send, monthly cost), or release idle
    /// ones (`pool release-idle`).
    Pool(pool::PoolArgs),
    /// Cancel a batch: queued and parked jobs end as cancelled; in-flight sends finish.
    Cancel(cancel::CancelArgs),
    /// Pause a batch: its texts wait (no send, no purchase) until it is resumed; sends under way finish.
    Pause(cancel::CancelArgs),
    /// Resume a paused batch (paused by hand, or by carriers filtering its texts): the texts it held go at once.
    Resume(cancel::CancelArgs),
    /// A batch's failed and undelivered recipients, with reasons and merge fields (`--csv` for every one).
    Recipients(desk::RecipientsArgs),
    /// Text a finished batch's failed and/or undelivered recipients again, as a new batch linked to it.
    Resend(desk::ResendArgs),
    /// Record a message received on one of a customer's numbers (+1 to its limit for one window, up to the cap).
    /// Twilio's inbound webhook does this automatically; this is for operators and tests.
    Inbound(inbound::InboundArgs),
    /// Store this process's quota settings as the fleet's (after changing them on purpose).
    Settings(settings::SettingsArgs),
    /// Tenants' consent: opt-outs and opt-ins from other channels, suppression lists, reviews of replies that may
    /// revoke consent, a tenant's record, the export for an audit.
    #[command(subcommand)]
    Consent(consent::ConsentCommand),
    /// Customers' events secrets at rest: `secrets status` (how they are stored), `secrets rewrap` (seal them all
    /// under MESSENGER_SECRETS_KEY, after changing it).
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Dashboard sessions: `sessions revoke-all` signs every one out, on every server.
    #[command(subcommand)]
    Sessions(sessions::SessionsCommand),
    /// Serve the HTTP API (`/v1`), the dashboard, Twilio's webhooks, `/healthz`, `/metrics` and `/openapi.json`.
    Serve(serve::ServeArgs),
    /// Print the HTTP API's OpenAPI 3 document (what `serve` answers at `/openapi.json`), or with `--markdown` its
    /// reference page (docs/API-REFERENCE.md). Needs no Redis.
    Openapi(OpenapiArgs),
}

#[derive(clap::Args, Debug)]
pub struct OpenapiArgs {
    /// The reference as Markdown instead of the JSON document.
    #[arg(long)]
    markdown: bool,
}

/// A failure that decides the exit code: 2 = the request was wrong (nothing changed), 1 = could not do it now.
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Runtime(String),
}

impl From<OpsError> for Failure {
    fn from(e: OpsError) -> Self {
        let transient = e.is_transient();
        let message = match e {
            OpsError::Invalid(invalid) => as_flags(invalid).to_string(),
            OpsError::Conflict { field: Some(f), message } => format!("{}: {message}", flag(f)),
            other => other.to_string(),
        };
        if transient { Failure::Runtime(message) } else { Failure::Usage(message) }
    }
}

impl From<redis::RedisError> for Failure {
    fn from(e: redis::RedisError) -> Self {
        Failure::from(OpsError::Storage(e))
    }
}

/// The flag that sets an operation's field (`idle_days` → `--idle-days`); other locations (`line 17`,
/// `--to #3`) as they are.
fn flag(field: &str) -> String {
    match field {
        "messaging_service_sid" => "--messaging-service".into(),
        f if !f.is_empty() && f.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => {
            format!("--{}", f.replace('_', "-"))
        }
        f => f.to_owned(),
    }
}

fn as_flags(mut invalid: Invalid) -> Invalid {
    for p in &mut invalid.problems {
        p.field = flag(&p.field);
    }
    invalid
}

pub async fn main(cli: Cli) -> ExitCode {
    match run(cli).await {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    if let Command::Openapi(a) = &cli.command {
        return openapi(a);
    }
    let settings = cli.common.settings().map_err(|e| Failure::Usage(e.to_string()))?;
    match cli.command {
        Command::Customer(c) => customer::run(settings, c).await,
        Command::Bulk(a) => bulk::run(settings, a).await,
        Command::Status(a) => status::run(settings, a).await,
        Command::Pool(a) => pool::run(settings, a).await,
        Command::Cancel(a) => cancel::run(settings, a).await,
        Command::Pause(a) => cancel::pause(settings, a, false).await,
        Command::Resume(a) => cancel::pause(settings, a, true).await,
        Command::Recipients(a) => desk::recipients(settings, a).await,
        Command::Resend(a) => desk::resend(settings, a).await,
        Command::Inbound(a) => inbound::run(settings, a).await,
        Command::Settings(a) => settings::run(settings, a).await,
        Command::Consent(c) => consent::run(settings, c).await,
        Command::Secrets(c) => secrets::run(settings, c).await,
        Command::Sessions(c) => sessions::run(settings, c).await,
        Command::Serve(a) => serve::run(settings, a).await,
        Command::Openapi(a) => openapi(&a),
    }
}

/// `producer openapi [--markdown]`. A closed pipe (`| head`) ends the output quietly.
fn openapi(a: &OpenapiArgs) -> Result<ExitCode, Failure> {
    use std::io::Write;
    let text = if a.markdown {
        crate::server::openapi::markdown()
    } else {
        let doc = <crate::server::openapi::ApiDoc as utoipa::OpenApi>::openapi();
        doc.to_pretty_json().map_err(|e| Failure::Runtime(e.to_string()))? + "\n"
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// Connects for a one-shot command. A configuration problem (refused credentials, an untrusted certificate) is a
/// usage error naming the setting to fix (exit 2); Redis being down is a runtime error (exit 1).
async fn connect(settings: Settings) -> Result<Deps, Failure> {
    // Long enough to ride out a cluster failover (a few seconds) or a Redis restart.
    let give_up = Duration::from_secs(30);
    let conn = store::connect_with_retry(&settings.redis, give_up).await.map_err(|e| {
        match store::config_problem(&e, &settings.redis) {
            Some(problem) => Failure::Usage(problem),
            None => Failure::Runtime(format!("cannot connect to Redis: {e}")),
        }
    })?;
    Ok(Deps::new(conn, settings))
}

/// Parses an id argument; a malformed one is a usage error.
fn parse_id<T, E: std::fmt::Display>(parse: impl FnOnce(&str) -> Result<T, E>, raw: &str) -> Result<T, Failure> {
    parse(raw).map_err(|e| Failure::Usage(e.to_string()))
}

/// Prints `v` as pretty JSON.
fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serialisable"));
}

/// A Redis time (ms) as a UTC timestamp.
fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}
