//! `loadtest`: synthetic sends against the Twilio simulator, with a report.
//!
//! By default each run starts its own private Redis, simulator and worker processes; `--redis-url` and
//! `--twilio-api-base` use existing ones instead (customer ids are prefixed per run, nothing is flushed).
//! `--threshold` judges a run: the exit status is 1 when a threshold is missed (each named on stderr), 2 for bad
//! usage, 0 otherwise. `docs/LOAD-TESTING.md` is the guide.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use harness::load::{self, BulkReport, LoadConfig};
use harness::sim::Faults;
use harness::threshold::{self, Threshold};
use serde::Serialize;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Load tests Messenger against the Twilio simulator and reports the numbers in BENCHMARKS.md")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print the report as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// A pass/fail criterion on a figure of the report, such as 'sends_per_sec>=5000' or 'p99_ms<=100'. The
    /// comparisons are <, <=, >, >= and ==. A bare name is the report's first figure of that name; a dotted path,
    /// such as enqueue_to_twilio.p99_9_ms, names one exactly. Repeatable; a missed one makes the exit status 1.
    #[arg(long = "threshold", global = true, value_name = "FIGURE<OP>NUMBER")]
    thresholds: Vec<Threshold>,
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
    /// Texts arriving at a fixed rate for a fixed time, each its own request (an open loop): the rate achieved, and
    /// the latency to Twilio's accept and to delivered (the simulator's status callbacks).
    Rate {
        #[command(flatten)]
        common: Common,
        /// Arrivals a second: `500/s` or `500`.
        #[arg(long, value_parser = parse_rate, default_value = "100/s")]
        rate: f64,
        /// How long texts arrive: `60s`, `2m` or `60` (seconds).
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        duration: Duration,
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
    /// The simulator reports each accepted text delivered this many ms later, through its status callback (`rate`
    /// receives and measures them; default 20 there, off elsewhere).
    #[arg(long)]
    deliver_after_ms: Option<u64>,
}

/// `500/s`, `500` → 500.0 arrivals a second.
fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    match n.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1_000_000.0 => Ok(r),
        Ok(r) => Err(format!("{r} a second is out of range: give a rate above 0 and at most 1000000/s")),
        Err(_) => Err(format!("\"{s}\" is not a rate: write it as 500/s")),
    }
}

/// `60s`, `2m`, `60` → a duration of at least one second and at most a day.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (n, unit) = match t.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (t.strip_suffix('s').unwrap_or(t), 1),
    };
    match n.parse::<u64>() {
        Ok(v) if (1..=86_400).contains(&(v * unit)) => Ok(Duration::from_secs(v * unit)),
        Ok(_) => Err(format!("\"{s}\" is out of range: from 1s to 1440m")),
        Err(_) => Err(format!("\"{s}\" is not a duration: write it as 60s or 2m")),
    }
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
            deliver_after_ms: self.deliver_after_ms,
            show_progress: !json,
            cluster: self.cluster,
            replica_acks: self.replica_acks,
        }
    }
}

#[derive(Clone, Serialize)]
struct BaselineRound {
    bullmq_per_sec: f64,
    messenger_sends_per_sec: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init("warn");
    let cli = Cli::parse();
    // A misspelt figure is refused before a run is spent on it.
    if let Err(e) = threshold::check_names(&cli.thresholds, &skeleton(&cli.scenario)) {
        eprintln!("loadtest: --threshold: {e}");
        std::process::exit(2);
    }
    let out = Out { json: cli.json, thresholds: &cli.thresholds };
    let met = match cli.scenario {
        Scenario::Throughput { common, bullmq_rounds } => {
            let mut cfg = common.config(cli.json);
            if bullmq_rounds == 0 {
                let r = load::bulk_run(&cfg).await?;
                return out.finish(&r, || print_bulk(&r)).map(exit_on_miss);
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
            let report = baseline_report(&rounds, last.clone().unwrap_or_default());
            out.finish(&report, || {
                if let Some(r) = &last {
                    print_bulk(r);
                }
                println!(
                    "BullMQ 6.7 no-op baseline: {:.0} jobs/s; Messenger: {:.0} sends/s; ratio {:.2}",
                    report["bullmq_per_sec"].as_f64().unwrap_or(0.0),
                    report["messenger_sends_per_sec"].as_f64().unwrap_or(0.0),
                    report["ratio"].as_f64().unwrap_or(0.0),
                );
            })?
        }
        Scenario::Idle { common, rate, duration_secs } => {
            let r = load::idle_run(&common.config(cli.json), rate, Duration::from_secs(duration_secs)).await?;
            out.finish(&r, || {
                let p = &r.enqueue_to_twilio;
                println!(
                    "idle latency at {} msg/s over {} messages: enqueue → Twilio request p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
                    r.rate_per_sec, r.messages, p.p50_ms, p.p95_ms, p.p99_ms, p.p99_9_ms, p.max_ms
                );
            })?
        }
        Scenario::Rate { common, rate, duration } => {
            let mut cfg = common.config(cli.json);
            cfg.deliver_after_ms.get_or_insert(20);
            let r = load::rate_run(&cfg, rate, duration).await?;
            out.finish(&r, || print_rate(&r))?
        }
        Scenario::Fairness { common, probes } => {
            let r = load::fairness_run(&common.config(cli.json), probes).await?;
            out.finish(&r, || {
                let p = &r.probe_latency;
                println!(
                    "fairness: while A's {} recipients drained ({} still pending at the last probe), B's {} probes took p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    r.big_batch, r.a_pending_at_last_probe, p.count, p.p50_ms, p.p99_ms, p.max_ms
                );
            })?
        }
        Scenario::Dashboard { common, rounds } => {
            let r = load::dashboard_run(&common.config(cli.json), rounds).await?;
            out.finish(&r, || {
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
            })?
        }
        Scenario::Purchases { common } => {
            let mut cfg = common.config(cli.json);
            cfg.customers = 1;
            cfg.prebuy = true;
            let bought_before = load::bulk_run(&cfg).await?;
            cfg.prebuy = false;
            let buying = load::bulk_run(&cfg).await?;
            let report = purchases_report(&bought_before, &buying, cfg.purchase_latency_ms);
            out.finish(&report, || {
                println!("numbers bought beforehand:");
                print_bulk(&bought_before);
                println!("\nno numbers at start:");
                print_bulk(&buying);
                println!("\nthroughput while buying / with numbers bought: {:.2}", report["ratio"].as_f64().unwrap_or(0.0));
                println!(
                    "from starting the workers to every job done: {:.2} s with the numbers bought, {:.2} s buying them: \
                     {:.2} s longer = {:.1} purchase latencies of {} ms",
                    bought_before.drain_secs,
                    buying.drain_secs,
                    report["extra_secs"].as_f64().unwrap_or(0.0),
                    report["extra_in_purchase_latencies"].as_f64().unwrap_or(0.0),
                    cfg.purchase_latency_ms
                );
            })?
        }
    };
    exit_on_miss(met);
    Ok(())
}

/// Exits with status 1 when a threshold was missed.
fn exit_on_miss(met: bool) {
    if !met {
        std::process::exit(1);
    }
}

/// The report of `throughput --bullmq-rounds N`.
fn baseline_report(rounds: &[BaselineRound], last: BulkReport) -> Value {
    let n = rounds.len().max(1) as f64;
    let bull = rounds.iter().map(|r| r.bullmq_per_sec).sum::<f64>() / n;
    let ours = rounds.iter().map(|r| r.messenger_sends_per_sec).sum::<f64>() / n;
    let ratio = if bull > 0.0 { ours / bull } else { 0.0 };
    serde_json::json!({ "rounds": rounds, "bullmq_per_sec": bull, "messenger_sends_per_sec": ours,
        "ratio": ratio, "last_run": last })
}

/// The report of `purchases`: the run with numbers bought beforehand against the one that buys them.
fn purchases_report(bought_before: &BulkReport, buying: &BulkReport, purchase_latency_ms: u64) -> Value {
    let ratio =
        if bought_before.sends_per_sec > 0.0 { buying.sends_per_sec / bought_before.sends_per_sec } else { 0.0 };
    // How much longer the drain took because the numbers were bought on the way, in purchase latencies.
    let extra_secs = buying.drain_secs - bought_before.drain_secs;
    let latencies = extra_secs * 1000.0 / (purchase_latency_ms.max(1) as f64);
    serde_json::json!({
        "prebought": bought_before, "buying": buying, "ratio": ratio,
        "extra_secs": extra_secs, "extra_in_purchase_latencies": latencies,
    })
}

/// A scenario's report with every figure at zero: what `--threshold` names are checked against before a run.
fn skeleton(s: &Scenario) -> Value {
    let v = match s {
        Scenario::Throughput { bullmq_rounds: 0, .. } => serde_json::to_value(BulkReport::default()),
        Scenario::Throughput { .. } => Ok(baseline_report(&[], BulkReport::default())),
        Scenario::Idle { .. } => serde_json::to_value(load::LatencyReport::default()),
        Scenario::Rate { .. } => serde_json::to_value(load::RateReport::default()),
        Scenario::Fairness { .. } => serde_json::to_value(load::FairnessReport::default()),
        Scenario::Dashboard { .. } => serde_json::to_value(load::DashboardReport::default()),
        Scenario::Purchases { .. } => Ok(purchases_report(&BulkReport::default(), &BulkReport::default(), 0)),
    };
    v.unwrap_or_default()
}

/// How a report is printed and judged.
struct Out<'a> {
    json: bool,
    thresholds: &'a [Threshold],
}

impl Out<'_> {
    /// Prints the report (JSON, or `human`), judges it by every threshold and prints the verdicts (in JSON under
    /// `thresholds`); names each missed threshold on stderr. True when every threshold held.
    fn finish<T: Serialize>(&self, report: &T, human: impl FnOnce()) -> anyhow::Result<bool> {
        let mut value = serde_json::to_value(report)?;
        let verdicts = threshold::judge(self.thresholds, &value).map_err(anyhow::Error::msg)?;
        if self.json {
            if let (Value::Object(map), false) = (&mut value, verdicts.is_empty()) {
                map.insert("thresholds".into(), serde_json::to_value(&verdicts)?);
            }
            println!("{}", serde_json::to_string(&value)?);
        } else {
            human();
            for v in &verdicts {
                println!("{v}");
            }
        }
        let missed: Vec<_> = verdicts.iter().filter(|v| !v.met).collect();
        if !missed.is_empty() {
            eprintln!("loadtest: {} of {} thresholds missed:", missed.len(), verdicts.len());
            for v in missed {
                eprintln!("  {v}");
            }
        }
        Ok(verdicts.iter().all(|v| v.met))
    }
}

fn print_rate(r: &load::RateReport) {
    println!(
        "arrival rate {:.0}/s for {:.0} s: {} texts enqueued at {:.1}/s achieved ({} dropped, {} failed requests)",
        r.target_rate_per_sec,
        r.duration_secs,
        r.enqueued,
        r.achieved_rate_per_sec,
        r.dropped_arrivals,
        r.failed_requests
    );
    let line = |name: &str, p: &load::Percentiles| {
        println!(
            "  {name:<20} p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms ({} texts)",
            p.p50_ms, p.p95_ms, p.p99_ms, p.p99_9_ms, p.max_ms, p.count
        )
    };
    line("enqueue request", &r.enqueue);
    line("enqueue → Twilio", &r.enqueue_to_twilio);
    line("enqueue → delivered", &r.enqueue_to_delivered);
    println!(
        "  sent {} ({:.1}/s), delivered {} (the simulator reports each {} ms after accepting it); {} recipients \
         texted twice; worker peak RSS {:?} KiB",
        r.sent, r.sends_per_sec, r.delivered, r.deliver_after_ms, r.recipients_texted_twice, r.worker_peak_rss_kib
    );
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
        "  enqueue → Twilio   p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, p99.9 {:.0} ms (includes queueing behind the batch)",
        p.p50_ms, p.p95_ms, p.p99_ms, p.p99_9_ms
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
