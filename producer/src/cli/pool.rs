//! `producer pool`: a customer's numbers; `producer pool release-idle`: release the ones that sit idle.

use std::process::ExitCode;

use clap::Subcommand;
use shared::config::Settings;
use shared::customers::PoolReport;
use shared::domain::{CustomerId, IdleDays};
use shared::release::ReleaseReport;

use super::{Failure, connect, format_ms, parse_id, print_json};
use crate::ops::pools;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PoolArgs {
    #[command(subcommand)]
    pub action: Option<PoolCommand>,
    #[arg(required = true)]
    pub customer: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// Release numbers that sent nothing for `--idle-days` (Twilio DELETE), keeping what the customer's backlog and
    /// its numbers' sticky recipients need and never a number with a send in progress.
    ReleaseIdle {
        customer: String,
        /// Days without a send (fractions allowed; 0 = any number that is not busy).
        #[arg(long, default_value_t = IdleDays::DEFAULT.days())]
        idle_days: f64,
        /// Only list what would be released; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: Settings, args: PoolArgs) -> Result<ExitCode, Failure> {
    let number_monthly = settings.pricing.number_monthly;
    match args {
        PoolArgs { action: Some(PoolCommand::ReleaseIdle { customer, idle_days, dry_run, json }), .. } => {
            let id = parse_id(CustomerId::parse, &customer)?;
            let report = pools::release_idle(&connect(settings).await?, &id, Some(idle_days), dry_run).await?;
            if json { print_json(&report) } else { print_released(&report, idle_days) }
        }
        PoolArgs { action: None, customer, json } => {
            let id = parse_id(CustomerId::parse, customer.as_deref().unwrap_or_default())?;
            let report = pools::pool(&connect(settings).await?, &id).await?;
            if json { print_json(&report) } else { print_pool(&report, number_monthly) }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_pool(report: &PoolReport, number_monthly: f64) {
    println!(
        "customer {}: {} of {} numbers; window {}s, quota {} per number (+1 per reply, cap {})",
        report.customer,
        report.numbers.len(),
        report.max_numbers,
        report.window_secs,
        report.daily_quota,
        report.conversational_cap
    );
    println!("  {:<16} {:>6} {:>6} {:>6} {:>9}  LAST SEND", "NUMBER", "SENT", "RECV", "LIMIT", "AVAILABLE");
    for n in &report.numbers {
        println!(
            "  {:<16} {:>6} {:>6} {:>6} {:>9}  {}",
            n.number,
            n.sent,
            n.received,
            n.limit,
            n.available,
            n.last_send_ms.map(format_ms).unwrap_or_else(|| "never".into())
        );
    }
    println!(
        "  available now: {}; purchases in flight: {}; releases in flight: {}",
        report.total_available(),
        report.pending_purchases,
        report.pending_releases
    );
    if let Some(c) = &report.carriers {
        let cap = |n: Option<u32>| n.map_or("no cap".to_owned(), |n| n.to_string());
        println!(
            "  carrier caps: T-Mobile {} of {} segments today; AT&T {} of {} in the last minute; {} of {} in the last second; lookups {}",
            c.tmobile_today,
            cap(c.caps.tmobile_daily),
            c.att_last_minute,
            cap(c.caps.att_per_minute),
            c.last_second,
            cap(c.caps.per_second),
            if c.lookup { "on" } else { "off" }
        );
        for (what, until) in &c.spent_until {
            println!("    Twilio reported the {what} cap spent: those texts wait until {}", format_ms(*until));
        }
    }
    println!(
        "  monthly cost: ${:.2} ({} number{} at ${number_monthly:.2}){}",
        report.monthly_cost.unwrap_or_default(),
        report.numbers.len(),
        if report.numbers.len() == 1 { "" } else { "s" },
        report.messaging_service_sid.as_ref().map(|s| format!("; messaging service {s}")).unwrap_or_default()
    );
    let usd = |d: f64| shared::spend::Usd::from_dollars(d).unwrap_or_default();
    match report.monthly_spend_limit {
        Some(limit) => println!(
            "  spend this month ({}): {} of a {} limit ({}%)",
            report.spend_month,
            usd(report.spend_this_month),
            usd(limit),
            if limit > 0.0 { (report.spend_this_month / limit * 100.0).round() } else { 100.0 }
        ),
        None => {
            println!("  spend this month ({}): {} (no limit)", report.spend_month, usd(report.spend_this_month))
        }
    }
}

fn print_released(report: &ReleaseReport, idle_days: f64) {
    let verb = if report.dry_run { "would release" } else { "released" };
    println!(
        "customer {}: {verb} {} number(s) idle for {idle_days} day(s) or more; keeps {} (backlog: {} jobs); saves \
         ${:.2} a month",
        report.customer,
        report.released.len(),
        report.kept,
        report.backlog,
        report.monthly_saving.unwrap_or_default()
    );
    for n in &report.released {
        println!(
            "  {:<16} {}  last send {}",
            n.number,
            n.sid,
            n.last_send_ms.map(format_ms).unwrap_or_else(|| "never".into())
        );
    }
    if !report.pending.is_empty() {
        println!(
            "  {} number(s) left the pool but Twilio did not confirm the release yet; workers will finish it",
            report.pending.len()
        );
    }
}
