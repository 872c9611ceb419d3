//! `loadtest`: synthetic sends against the Twilio simulator, with a report.
//!
//! By default each run starts its own private Redis, simulator and worker processes; `--redis-url` and
//! `--twilio-api-base` use existing ones instead (customer ids are prefixed per run, nothing is flushed).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use harness::load::{self, BulkReport, LoadConfig};
use harness::sim::Faults;
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Load tests Messenger against the Twilio simulator and reports the numbers in BENCHMARKS.md")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print the report as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Scenario {
    /// Enqueue a bulk text per customer, then drain with the workers: sends/s, latency, Redis cost.
    Throughput {
        #[command(flatten)]
        common: Common,
        /// Alternate this many BullMQ no-op runs (same job count, same Redis) with Messenger runs, and print the
        /// ratio. Needs `npm install --prefix bench` (scripts/bench does it).
        #[arg(long, default_value_t = 0)]
        bullmq_rounds: usize,
    },
    /// Single messages at a steady rate to idle workers: enqueue-to-Twilio latency.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 30)]
        duration_secs: u64,
    },
    /// A big batch for customer A while customer B sends single messages: B's latency.
    Fairness {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 20)]
        probes: usize,
    },
    /// One customer with no numbers vs the same run with its numbers bought beforehand.
    Purchases {
        #[command(flatten)]
        common: Common,
    },
    /// The dashboard with a big backlog queued: Redis commands per page and latency (no workers run).
    Dashboard {
        #[command(flatten)]
        common: Common,
        /// Requests per page for the latency figures.
        #[arg(long, default_value_t = 50)]
        rounds: usize,
    },
}

#[derive(ClapArgs, Clone)]
struct Common {
    #[arg(long)]
    redis_url: Option<String>,
    #[arg(long)]
    twilio_api_base: Option<String>,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    #[arg(long, default_value_t = 1)]
    customers: usize,
    #[arg(long, default_value_t = 100_000)]
    recipients: usize,
    #[arg(long, default_value_t = 0)]
    send_latency_ms: u64,
    #[arg(long, default_value_t = 0)]
    purchase_latency_ms: u64,
    /// Send fault rates passed to the simulator (0..1).
    #[arg(long, default_value_t = 0.0)]
    fault_500: f64,
    #[arg(long, default_value_t = 0.0)]
    fault_429: f64,
    #[arg(long, default_value_t = 0.0)]
    fault_drop: f64,
    #[arg(long, default_value_t = 0.0)]
    fault_accept_timeout: f64,
    #[arg(long, default_value_t = 250)]
    daily_quota: u32,
    #[arg(long, default_value_t = 86_400)]
    window_secs: u64,
    #[arg(long, default_value_t = 1_000)]
    max_numbers: u32,
    /// Buy every number a customer needs before sending.
    #[arg(long)]
    prebuy: bool,
    /// Count commands with MONITOR (round trips vs commands inside scripts). Slows Redis down: use a separate run.
    #[arg(long)]
    count_commands: bool,
    /// Run against a private Redis Cluster (3 primaries, 3 replicas on loopback) instead of one node.
    #[arg(long)]
    cluster: bool,
    /// MESSENGER_REDIS_REPLICA_ACKS for the run (a single node then gets a replica to confirm).
    #[arg(long, default_value_t = 0)]
    replica_acks: u32,
    /// Personalised texts: a template with three merge fields filled from a three-variable CSV.
    #[arg(long)]
    personalise: bool,
    /// MESSENGER_QUIET_HOURS for the run: `off` (so a run at night still sends), or a window such as 21:00-08:00.
    #[arg(long, default_value = "off")]
    quiet_hours: String,
    /// Customers with carrier caps (T-Mobile 200,000 a day, AT&T 4,500 a minute, 2,000 a second: checked on every
    /// send, never reached) and so lookups of every recipient.
    #[arg(long)]
    caps: bool,
    /// Events: `off`, `pull` (recorded, not delivered) or `dead` (recorded and delivered by a `producer serve` to
    /// an endpoint that refuses connections).
    #[arg(long, default_value = "off", value_parser = ["off", "pull", "dead"])]
    events: String,
    /// Give every customer this monthly spend limit in dollars (set high, it measures what checking it costs).
    #[arg(long, value_name = "USD")]
    spend_limit: Option<String>,
}

impl Common {
    fn config(&self, json: bool) -> LoadConfig {
        LoadConfig {
            redis_url: self.redis_url.clone(),
            twilio_api_base: self.twilio_api_base.clone(),
            workers: self.workers,
            concurrency: self.concurrency,
            customers: self.customers.max(1),
            recipients: self.recipients,
            send_latency_ms: self.send_latency_ms,
            purchase_latency_ms: self.purchase_latency_ms,
            send_faults: Faults {
                error_500: self.fault_500,
                error_429: self.fault_429,
                drop: self.fault_drop,
                accept_then_timeout: self.fault_accept_timeout,
                retry_after_secs: 1,
            },
            daily_quota: self.daily_quota,
            window_secs: self.window_secs,
            max_numbers: self.max_numbers,
            prebuy: self.prebuy,
            count_commands: self.count_commands,
            personalise: self.personalise,
            quiet_hours: self.quiet_hours.clone(),
            caps: self.caps,
            events: self.events.clone(),
            spend_limit: self.spend_limit.clone(),
            show_progress: !json,
            cluster: self.cluster,
            replica_acks: self.replica_acks,
        }
    }
}

#[derive(Serialize)]
struct BaselineRound {
    bullmq_per_sec: f64,
    messenger_sends_per_sec: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init("warn");
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Throughput { common, bullmq_rounds } => {
            let mut cfg = common.config(cli.json);
            if bullmq_rounds == 0 {
                let r = load::bulk_run(&cfg).await?;
                return print(cli.json, &r, || print_bulk(&r));
            }
            // Alternate on one Redis so both see the same machine state.
            let redis = harness::redis_server::TestRedis::start();
            cfg.redis_url = Some(redis.url());
            let mut rounds = Vec::new();
            let mut last = None;
            for round in 1..=bullmq_rounds {
                let bull = bullmq(&redis.url(), cfg.recipients)?;
                let r = load::bulk_run(&cfg).await?;
                eprintln!("round {round}: BullMQ {bull:.0} jobs/s, Messenger {:.0} sends/s", r.sends_per_sec);
                rounds.push(BaselineRound { bullmq_per_sec: bull, messenger_sends_per_sec: r.sends_per_sec });
                last = Some(r);
            }
            let bull = rounds.iter().map(|r| r.bullmq_per_sec).sum::<f64>() / rounds.len() as f64;
            let ours = rounds.iter().map(|r| r.messenger_sends_per_sec).sum::<f64>() / rounds.len() as f64;
            let report = serde_json::json!({ "rounds": rounds, "bullmq_per_sec": bull, "messenger_sends_per_sec": ours,
                "ratio": ours / bull, "last_run": last });
            print(cli.json, &report, || {
                if let Some(r) = &last {
                    print_bulk(r);
                }
                println!(
                    "BullMQ 6.7 no-op baseline: {bull:.0} jobs/s; Messenger: {ours:.0} sends/s; ratio {:.2}",
                    ours / bull
                );
            })
        }
        Scenario::Idle { common, rate, duration_secs } => {
            let r = load::idle_run(&common.config(cli.json), rate, Duration::from_secs(duration_secs)).await?;
            print(cli.json, &r, || {
                let p = &r.enqueue_to_twilio;
                println!(
                    "idle latency at {} msg/s over {} messages: enqueue → Twilio request p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    r.rate_per_sec, r.messages, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms
                );
            })
        }
        Scenario::Fairness { common, probes } => {
            let r = load::fairness_run(&common.config(cli.json), probes).await?;
            print(cli.json, &r, || {
                let p = &r.probe_latency;
                println!(
                    "fairness: while A's {} recipients drained ({} still pending at the last probe), B's {} probes took p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    r.big_batch, r.a_pending_at_last_probe, p.count, p.p50_ms, p.p99_ms, p.max_ms
                );
            })
        }
        Scenario::Dashboard { common, rounds } => {
            let r = load::dashboard_run(&common.config(cli.json), rounds).await?;
            print(cli.json, &r, || {
                println!(
                    "dashboard with {} jobs queued over {} customers ({rounds} requests per page):",
                    r.queued_jobs, r.customers
                );
                for p in &r.pages {
                    println!(
                        "  {:<48} {} · {:>3} Redis commands · p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                        p.path, p.status, p.commands, p.p50_ms, p.p99_ms, p.max_ms
                    );
                }
            })
        }
        Scenario::Purchases { common } => {
            let mut cfg = common.config(cli.json);
            cfg.customers = 1;
            cfg.prebuy = true;
            let bought_before = load::bulk_run(&cfg).await?;
            cfg.prebuy = false;
            let buying = load::bulk_run(&cfg).await?;
            let ratio = buying.sends_per_sec / bought_before.sends_per_sec;
            // How much longer the drain took because the numbers were bought on the way, in purchase latencies.
            let extra_secs = buying.drain_secs - bought_before.drain_secs;
            let latencies = extra_secs * 1000.0 / (cfg.purchase_latency_ms.max(1) as f64);
            let report = serde_json::json!({
                "prebought": bought_before, "buying": buying, "ratio": ratio,
                "extra_secs": extra_secs, "extra_in_purchase_latencies": latencies,
            });
            print(cli.json, &report, || {
                println!("numbers bought beforehand:");
                print_bulk(&bought_before);
                println!("\nno numbers at start:");
                print_bulk(&buying);
                println!("\nthroughput while buying / with numbers bought: {ratio:.2}");
                println!(
                    "from starting the workers to every job done: {:.2} s with the numbers bought, {:.2} s buying them: \
                     {extra_secs:.2} s longer = {latencies:.1} purchase latencies of {} ms",
                    bought_before.drain_secs, buying.drain_secs, cfg.purchase_latency_ms
                );
            })
        }
    }
}

fn print<T: Serialize>(json: bool, v: &T, human: impl FnOnce()) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(v)?);
    } else {
        human();
    }
    Ok(())
}

fn print_bulk(r: &BulkReport) {
    println!("redis: {}, replica acks {}", r.redis, r.replica_acks);
    println!(
        "{} recipients, {} customers, {} workers × {} concurrency, send latency {} ms, purchase latency {} ms",
        r.recipients, r.customers, r.workers, r.concurrency, r.send_latency_ms, r.purchase_latency_ms
    );
    println!(
        "  enqueue            {:.2} s ({:.0}/s; slowest single request {:.2} s)",
        r.enqueue_secs, r.enqueue_per_sec, r.largest_enqueue_secs
    );
    println!("  sends              {} in {:.2} s = {:.0} sends/s", r.messages, r.send_secs, r.sends_per_sec);
    let p = &r.enqueue_to_twilio;
    println!(
        "  enqueue → Twilio   p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms (includes queueing behind the batch)",
        p.p50_ms, p.p95_ms, p.p99_ms
    );
    println!(
        "  numbers            {} bought, {} minimum, {} purchase requests; busiest number {} in the window",
        r.numbers_bought, r.numbers_minimum, r.purchase_requests, r.max_per_number_in_window
    );
    if r.purchase_gap.count > 0 {
        let g = &r.purchase_gap;
        println!(
            "  purchase gaps      p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms between consecutive purchases",
            g.p50_ms, g.p95_ms, g.max_ms
        );
    }
    println!("  exactly once       {} recipients texted twice", r.recipients_texted_twice);
    if let Some(rt) = r.round_trips_per_message {
        println!(
            "  redis round trips  {rt:.2} per message ({}), plus {:.1} commands inside scripts",
            r.round_trips_breakdown
                .as_ref()
                .unwrap()
                .iter()
                .take(6)
                .map(|(k, v)| format!("{k} {v:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.script_commands_per_message.unwrap_or(0.0)
        );
    }
    println!(
        "  commandstats       {:.1} commands per message incl. inside scripts ({})",
        r.commandstats_per_message,
        r.commandstats_top.iter().take(6).map(|(k, v)| format!("{k} {v:.2}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  redis memory       {:.0} B per queued job; {} B kept after completion = {:.0} B per window entry",
        r.redis_bytes_per_queued_job, r.redis_bytes_after_completion, r.redis_bytes_per_window_entry
    );
    let kinds: Vec<String> = r.redis_keys_after.iter().map(|(k, (n, b))| format!("{k}: {n} keys {b} B")).collect();
    println!("  redis keys after   {}", kinds.join("; "));
    let cpu: Vec<String> = r.redis_cpu_ms_per_1000.iter().map(|(n, ms)| format!("{n} {ms:.1} ms")).collect();
    println!("  redis cpu          per 1,000 messages: {}", cpu.join(", "));
    println!("  worker peak RSS    {:?} KiB", r.worker_peak_rss_kib);
}

/// Runs the BullMQ baseline (bench/bullmq-baseline.mjs) on `redis_url`; returns jobs per second.
fn bullmq(redis_url: &str, jobs: usize) -> anyhow::Result<f64> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/bullmq-baseline.mjs");
    let out =
        std::process::Command::new("node").arg(&script).arg(redis_url).arg(jobs.to_string()).arg("50").output()?;
    if !out.status.success() {
        anyhow::bail!(
            "BullMQ baseline failed (run `npm install --prefix bench` first): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())?;
    Ok(v["per_sec"].as_f64().unwrap_or(0.0))
}
