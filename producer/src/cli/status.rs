//! `producer status`: a batch's counts, optionally waiting (with a progress bar) until every job is terminal.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use shared::batches::BatchStatus;
use shared::config::Settings;
use shared::domain::BatchId;

use super::{Failure, connect, format_ms, parse_id, print_json};
use crate::ops::{Deps, batches};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    pub batch: String,
    #[arg(long)]
    pub json: bool,
    /// Show a progress bar until every job is terminal.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (exit 1).
    #[arg(long, requires = "wait")]
    pub timeout: Option<u64>,
    /// Also list the recipients that failed and why.
    #[arg(long)]
    pub failures: bool,
}

pub async fn run(settings: Settings, args: StatusArgs) -> Result<ExitCode, Failure> {
    let id = parse_id(BatchId::parse, &args.batch)?;
    let deps = connect(settings).await?;
    let status = if args.wait {
        wait_for(&deps, &id, args.timeout.map(Duration::from_secs), args.json).await?
    } else {
        batches::status(&deps, &id).await?
    };
    let failed = if args.failures { Some(batches::failures(&deps, &id).await?) } else { None };
    if args.json {
        let mut v = serde_json::to_value(&status).expect("serialisable");
        v["pending"] = status.pending().into();
        if let Some(f) = failed {
            v["failed_recipients"] = serde_json::to_value(f).expect("serialisable");
        }
        print_json(&v);
    } else {
        print_status(&status);
        for (to, why) in failed.into_iter().flatten() {
            println!("  failed {to}: {why}");
        }
    }
    if args.wait && !status.is_complete() {
        let why = if status.waiting.is_empty() { String::new() } else { format!(": {}", status.waiting.join("; ")) };
        eprintln!(
            "gave up waiting after {} s with {} of {} texts not finished{why}. The batch goes on; run `producer status {}` \
             again to follow it.",
            args.timeout.unwrap_or_default(),
            status.pending(),
            status.total,
            status.batch_id
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for(deps: &Deps, id: &BatchId, timeout: Option<Duration>, quiet: bool) -> Result<BatchStatus, Failure> {
    let start = Instant::now();
    let mut status = batches::status(deps, id).await?;
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(status.total);
        b.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} terminal  {msg}").expect("template"));
        b
    });
    while !status.is_complete() {
        if timeout.is_some_and(|t| start.elapsed() > t) {
            break;
        }
        if let Some(b) = &bar {
            b.set_position(status.terminal());
            let waiting = status.waiting.iter().find(|w| !w.ends_with("queued for the workers"));
            b.set_message(format!(
                "sent {} · failed {} · opted out {}{}",
                status.sent,
                status.failed,
                status.opted_out,
                waiting.map(|w| format!(" · {w}")).unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        status = batches::status(deps, id).await?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(status)
}

pub fn print_status(s: &BatchStatus) {
    println!("batch {}  (customer {})  state: {}", s.batch_id, s.customer, s.state);
    if let Some(l) = &s.label {
        println!("  label: {l}");
    }
    for w in &s.waiting {
        println!("  now: {w}");
    }
    if s.variables.is_empty() {
        println!(
            "  total {} recipients ({} duplicates removed), {} segments each ({})",
            s.total, s.duplicates, s.segments, s.encoding
        );
    } else {
        println!(
            "  total {} recipients ({} duplicates removed), personalised ({}): {} segments in all, at most {} each ({})",
            s.total,
            s.duplicates,
            s.variables.join(", "),
            s.segments_total,
            s.segments,
            s.encoding
        );
    }
    if let Some(at) = s.send_at_ms {
        let now = chrono::Utc::now().timestamp_millis();
        let when = if at > now { "scheduled for" } else { "scheduled, from" };
        println!("  {when} {}", format_ms(at));
    }
    if let Some(at) = s.expires_at_ms {
        println!("  texts not sent by {} expire", format_ms(at));
    }
    if s.urgent {
        println!("  urgent: sent whatever the hour (quiet hours do not apply)");
    }
    if s.enqueue_incomplete() {
        println!(
            "  ENQUEUE INCOMPLETE: {} of {} jobs enqueued. If the producer stopped, resubmit the same request with the \
             same idempotency key to finish it.",
            s.enqueued, s.total
        );
    }
    println!("  queued     {:>8}", s.queued);
    let why = s.deferred_reason.as_deref().unwrap_or("no number can be added");
    match s.deferred {
        0 => println!("  deferred   {:>8}", 0),
        n => println!("  deferred   {n:>8}   ({why}; waiting for the window to free a slot)"),
    }
    println!(
        "  quiet hrs  {:>8}{}",
        s.quiet_hours,
        if s.quiet_hours > 0 { "   (waiting for quiet hours to end in the recipients' zones)" } else { "" }
    );
    for (zone, w) in &s.quiet_by_zone {
        println!("    {} wait until {} ({zone})", w.count, format_ms(w.until_ms));
    }
    println!(
        "  capped     {:>8}{}",
        s.capped,
        if s.capped > 0 { "   (waiting for a carrier cap to renew)" } else { "" }
    );
    for (cap, w) in &s.capped_by_cap {
        println!("    {} wait until {} ({cap})", w.count, format_ms(w.until_ms));
    }
    if s.held_for_review > 0 {
        println!(
            "  held       {:>8}   (their tenant's reply may have revoked consent: `producer consent reviews {}`)",
            s.held_for_review, s.customer
        );
    }
    if s.frequency_capped > 0 {
        println!(
            "  frequency  {:>8}   (their tenants had the customer's most texts per window; they wait until {} at the latest)",
            s.frequency_capped,
            s.frequency_until_ms.map(format_ms).unwrap_or_default()
        );
    }
    if s.paused {
        println!(
            "  PAUSED              {} by {}: {}   (`producer resume {}` sends the rest)",
            s.paused_at_ms.map(format_ms).unwrap_or_default(),
            s.paused_by.as_deref().unwrap_or("?"),
            s.pause_reason.as_deref().unwrap_or(""),
            s.batch_id
        );
    }
    if s.spend_limit > 0 {
        println!(
            "  spend      {:>8}   (waiting for the monthly spend limit: `producer customer add {} --monthly-spend-limit USD` raises it)",
            s.spend_limit, s.customer
        );
    }
    println!("  sent       {:>8}", s.sent);
    let reasons: Vec<String> = s.failure_reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect();
    if reasons.is_empty() {
        println!("  failed     {:>8}", s.failed);
    } else {
        println!("  failed     {:>8}   ({})", s.failed, reasons.join(", "));
    }
    println!("  opted out  {:>8}", s.opted_out);
    println!("  cancelled  {:>8}{}", s.cancelled, if s.cancel_requested { "   (cancel requested)" } else { "" });
    println!("  expired    {:>8}", s.expired);
    if s.delivered + s.undelivered > 0 {
        println!("  delivery reports: {} delivered, {} undelivered", s.delivered, s.undelivered);
        for (code, n) in &s.undelivered_reasons {
            let meaning =
                code.parse().ok().and_then(shared::twilio::error::describe).unwrap_or("see twilio.com/docs/errors");
            println!("    error {code} × {n}: {meaning}");
        }
    }
    if s.dup_sends > 0 {
        println!("  DUPLICATE SENDS {:>3}   (a worker was paused past its lease)", s.dup_sends);
    }
}
