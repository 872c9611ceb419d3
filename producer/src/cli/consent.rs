//! `producer consent …`: tenants' consent from the operator's side — an opt-out that came another way, an opt-in on
//! record, a suppression list to load, the reviews of suspected revocations, a tenant's record, the export.

use std::path::PathBuf;
use std::process::ExitCode;

use shared::config::Settings;
use shared::domain::CustomerId;

use super::{Failure, connect, parse_id, print_json};
use crate::ops::consent::{self, OptInInput, OptOutInput, Via};

#[derive(clap::Subcommand, Debug)]
pub enum ConsentCommand {
    /// Record that a tenant asked, some other way (a call to the office), not to be texted any more: opted out at
    /// once, across every number and the batches already queued.
    OptOut {
        customer: String,
        #[arg(long)]
        phone: String,
        /// How they asked: "phone call to the office".
        #[arg(long)]
        source: String,
        #[arg(long)]
        note: Option<String>,
        /// When they asked (RFC 3339 with an offset); now when absent.
        #[arg(long)]
        at: Option<String>,
    },
    /// Put a tenant's opt-in on record (the lease signed, the portal box ticked).
    OptIn {
        customer: String,
        #[arg(long)]
        phone: String,
        /// Where consent was given: "lease signed".
        #[arg(long)]
        source: String,
        /// What shows it (a document id); required for a tenant who opted out.
        #[arg(long)]
        evidence: Option<String>,
        /// When consent was given (RFC 3339 with an offset).
        #[arg(long)]
        at: String,
    },
    /// Load a suppression list: one number per line, or CSV with `phone` and optional `note` and `at` columns.
    /// Every row is checked first; nothing is applied unless all are good; a re-import changes nothing.
    Import {
        customer: String,
        file: PathBuf,
        /// Where the list came from: "the old system's opt-outs, 2026-11".
        #[arg(long)]
        source: String,
        #[arg(long)]
        json: bool,
    },
    /// Every consent record of the customer, for an audit (CSV, or `--json`).
    Export {
        customer: String,
        #[arg(long)]
        json: bool,
    },
    /// Replies that may revoke consent, waiting for a person (the nearest deadline first).
    Reviews {
        customer: String,
        #[arg(long)]
        json: bool,
    },
    /// Decide a review: `--confirm` (it was a revocation) or `--dismiss --note WHY` (it was not; held texts go).
    Review {
        customer: String,
        phone: String,
        #[arg(long, conflicts_with = "dismiss", required_unless_present = "dismiss")]
        confirm: bool,
        #[arg(long)]
        dismiss: bool,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// A tenant's consent record: state, every change, and the texts sent just before and after each.
    Show { customer: String, phone: String },
}

/// Most bytes of a suppression list read from a file (the API takes 8 MiB a request).
const MAX_LIST_BYTES: u64 = 64 * 1024 * 1024;

fn read_list(path: &std::path::Path) -> Result<String, Failure> {
    use std::io::Read;
    let cannot = |e: std::io::Error| Failure::Usage(format!("cannot read {}: {e}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path).map_err(cannot)?.take(MAX_LIST_BYTES + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > MAX_LIST_BYTES {
        return Err(Failure::Usage(format!("{} is larger than {} MiB", path.display(), MAX_LIST_BYTES >> 20)));
    }
    String::from_utf8(bytes).map_err(|_| Failure::Usage(format!("{} is not UTF-8 text", path.display())))
}

pub async fn run(settings: Settings, command: ConsentCommand) -> Result<ExitCode, Failure> {
    let id = |c: &str| parse_id(CustomerId::parse, c);
    match command {
        ConsentCommand::OptOut { customer, phone, source, note, at } => {
            let c = id(&customer)?;
            let r = consent::opt_out(&connect(settings).await?, &c, OptOutInput { phone, source, note, at }, Via::Cli)
                .await?;
            println!(
                "{} opted out{}",
                r.phone,
                if r.changed { "" } else { " (already was; the request is on record)" }
            );
        }
        ConsentCommand::OptIn { customer, phone, source, evidence, at } => {
            let c = id(&customer)?;
            let r =
                consent::opt_in(&connect(settings).await?, &c, OptInInput { phone, source, evidence, at }, Via::Cli)
                    .await?;
            println!("{}: opt-in on record", r.phone);
        }
        ConsentCommand::Import { customer, file, source, json } => {
            let c = id(&customer)?;
            let list = read_list(&file)?;
            let started = std::time::Instant::now();
            let r = consent::import(&connect(settings).await?, &c, &list, &source).await?;
            if json {
                print_json(&r);
            } else {
                println!(
                    "{} rows: {} opted out now, {} already were, {} duplicate rows ({:.1?})",
                    r.rows,
                    r.opted_out_now,
                    r.already_opted_out,
                    r.duplicates,
                    started.elapsed()
                );
            }
        }
        ConsentCommand::Export { customer, json } => {
            let rows = consent::export(&connect(settings).await?, &id(&customer)?).await?;
            if json {
                print_json(&rows);
            } else {
                print!("{}", consent::export_csv(&rows));
            }
        }
        ConsentCommand::Reviews { customer, json } => {
            let list = consent::reviews(&connect(settings).await?, &id(&customer)?).await?;
            if json {
                print_json(&list);
            } else if list.is_empty() {
                println!("no reviews waiting");
            } else {
                for r in &list {
                    let overdue = if r.overdue { " OVERDUE" } else { "" };
                    println!("{}\tdeadline {}{overdue}\t{:?}\t({})", r.phone, r.deadline, r.words, r.rule);
                }
            }
        }
        ConsentCommand::Review { customer, phone, confirm, dismiss: _, note } => {
            let c = id(&customer)?;
            let decision = if confirm { "confirm" } else { "dismiss" };
            let r = consent::decide(&connect(settings).await?, &c, &phone, decision, &note, "cli").await?;
            let what = if r.opted_out { "opted out" } else { "review dismissed" };
            println!("{}: {what}; {} held text(s) released", r.phone, r.held_released);
        }
        ConsentCommand::Show { customer, phone } => {
            print_json(&consent::record(&connect(settings).await?, &id(&customer)?, &phone).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
