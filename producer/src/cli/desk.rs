//! `producer recipients` and `producer resend`: a batch's failed and undelivered recipients, and texting them again.

use std::process::ExitCode;

use shared::config::Settings;
use shared::domain::BatchId;

use super::{Failure, connect, parse_id, print_json};
use crate::ops::desk;

#[derive(clap::Args, Debug)]
pub struct RecipientsArgs {
    pub batch: String,
    /// `failed` (refused before or by Twilio), `undelivered` (the carrier did not deliver it); comma-separated or
    /// repeated; both when absent.
    #[arg(long)]
    pub state: Vec<String>,
    /// Print every one of them as CSV (phone, state, reason, code, meaning, message sid, merge fields).
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    #[arg(long)]
    pub json: bool,
}

pub async fn recipients(settings: Settings, args: RecipientsArgs) -> Result<ExitCode, Failure> {
    let id = parse_id(BatchId::parse, &args.batch)?;
    let states = desk::parse_states("state", &args.state)?;
    let deps = connect(settings).await?;
    if args.csv {
        print!("{}", desk::recipients_csv(&deps, &id, &states).await?);
        return Ok(ExitCode::SUCCESS);
    }
    let all = desk::all_recipients(&deps, &id, &states).await?;
    let total = all.len();
    if args.json {
        print_json(&all);
        return Ok(ExitCode::SUCCESS);
    }
    println!("batch {id}: {total} recipient(s) {}", states.join(" or "));
    for r in &all {
        let code = r.error_code.map(|c| format!(" ({c}: {})", r.meaning.as_deref().unwrap_or("?"))).unwrap_or_default();
        let fields: Vec<String> = r.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  {}  {:<11} {}{}  {}", r.phone, r.state, r.reason, code, fields.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct ResendArgs {
    pub batch: String,
    /// Text the recipients that failed (refused before or by Twilio).
    #[arg(long)]
    pub failed: bool,
    /// Text the recipients the carrier did not deliver to.
    #[arg(long)]
    pub undelivered: bool,
    /// A new text over the batch's merge fields (the batch's own text by default).
    #[arg(long)]
    pub body: Option<String>,
    /// The new batch's label ("Resend of …" by default).
    #[arg(long)]
    pub label: Option<String>,
    /// Makes the request safe to repeat (by default, one resend per batch and states).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Count whom it would text and skip; nothing written.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

pub async fn resend(settings: Settings, args: ResendArgs) -> Result<ExitCode, Failure> {
    let id = parse_id(BatchId::parse, &args.batch)?;
    let mut which = Vec::new();
    if args.failed {
        which.push("failed".to_owned());
    }
    if args.undelivered {
        which.push("undelivered".to_owned());
    }
    if which.is_empty() {
        return Err(Failure::Usage("say whom to text again: --failed, --undelivered, or both".into()));
    }
    let req = desk::Resend {
        which,
        body: args.body,
        label: args.label,
        idempotency_key: args.idempotency_key,
        dry_run: args.dry_run,
    };
    let out = desk::resend(&connect(settings).await?, &id, &req).await?;
    if args.json {
        print_json(&out);
        return Ok(ExitCode::SUCCESS);
    }
    let skipped: Vec<String> = out.skipped.iter().map(|(k, n)| format!("{n} {}", k.replace('_', " "))).collect();
    let skipped = if skipped.is_empty() { String::new() } else { format!("; skipped: {}", skipped.join(", ")) };
    match &out.batch_id {
        None => {
            println!("would text {} {} recipient(s) of {id} again{skipped}", out.recipients, out.which.join(" and "))
        }
        Some(b) if out.existing => println!("already resent as batch {b} ({} recipient(s)){skipped}", out.recipients),
        Some(b) => println!("batch {b} texts {} recipient(s) of {id} again{skipped}", out.recipients),
    }
    Ok(ExitCode::SUCCESS)
}
