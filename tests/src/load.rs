//! The load-test tool's engine: starts (or uses) Redis, the simulator and worker processes, drives a scenario, and
//! measures what the targets in BENCHMARKS.md ask for.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use shared::batches::{self, NewBatch};
use shared::domain::{BatchId, CustomerId, MessageBody, PhoneNumber};
use shared::keys::CustomerKeys;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::fixtures::{self, max_in_window, recipients};
use crate::procs::{self, Env, Proc};
use crate::redis_cluster::TestCluster;
use crate::redis_server::{RedisOptions, TestRedis};
use crate::sim::{self, Faults, Sim, SimConfig, SimState};

/// Everything a run needs to know.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub redis_url: Option<String>,
    pub twilio_api_base: Option<String>,
    pub workers: usize,
    pub concurrency: usize,
    pub customers: usize,
    pub recipients: usize,
    pub send_latency_ms: u64,
    pub purchase_latency_ms: u64,
    pub send_faults: Faults,
    pub daily_quota: u32,
    pub window_secs: u64,
    pub max_numbers: u32,
    /// Buy every number a customer will need before sending.
    pub prebuy: bool,
    /// Count commands with MONITOR (top-level vs inside scripts). Slows Redis: use on a separate, smaller run.
    pub count_commands: bool,
    pub show_progress: bool,
    /// Run against a private Redis Cluster (3 primaries, 3 replicas) instead of one node.
    pub cluster: bool,
    /// `MESSENGER_REDIS_REPLICA_ACKS` for the workers and the producer; a single node then gets a replica.
    pub replica_acks: u32,
    /// Personalised texts: a template with three merge fields, and a CSV of recipients with three variables.
    pub personalise: bool,
    /// `MESSENGER_QUIET_HOURS` for the run (`off`, or a window such as `21:00-08:00`).
    pub quiet_hours: String,
    /// Customers with carrier caps high enough never to hold a text (lookups on, every cap checked): what the
    /// caps cost per message.
    pub caps: bool,
    /// Events: `off`; `pull` (customers record events, nobody is sent them); `dead` (recorded and delivered by a
    /// `producer serve` to an endpoint that refuses connections): what events cost sending.
    pub events: String,
    /// Every customer's monthly spend limit (`customer add --monthly-spend-limit`), or none.
    pub spend_limit: Option<String>,
    /// The simulator reports each accepted text delivered this long after accepting it (through the status
    /// callback), or never.
    pub deliver_after_ms: Option<u64>,
}

/// The template of personalised load-test texts, and one recipient's CSV row for it.
pub const PERSONAL_BODY: &str = "Hi {{first_name|there}}, water is off in unit {{unit}} of {{building}} on Tuesday.";

fn personal_row(number: &str, i: usize) -> String {
    const NAMES: [&str; 5] = ["Ana", "Bo", "Chen", "Dara", ""];
    format!("{number},{},{}{},Building {}", NAMES[i % NAMES.len()], i % 30 + 1, ["A", "B", "C"][i % 3], i % 12 + 1)
}

/// The running pieces of one run.
pub struct Stack {
    pub redis: Option<TestRedis>,
    /// The single node's replica (when replica acknowledgements are on).
    pub replica: Option<TestRedis>,
    pub cluster: Option<TestCluster>,
    pub redis_url: String,
    pub sim: Option<Sim>,
    pub sim_base: String,
    pub env: Env,
    pub workers: Vec<Proc>,
    /// Prefix of this run's customer ids, so runs against a shared Redis never collide.
    pub run: String,
    /// `producer serve` processes of the run (event delivery).
    pub servers: Vec<Proc>,
}

impl Stack {
    pub async fn start(cfg: &LoadConfig) -> anyhow::Result<Self> {
        let (mut redis, mut replica, mut cluster) = (None, None, None);
        let redis_url = match &cfg.redis_url {
            Some(u) => u.clone(),
            None if cfg.cluster => {
                let c = tokio::task::spawn_blocking(|| TestCluster::start(3, 1)).await?;
                let seeds = c.seeds();
                cluster = Some(c);
                seeds
            }
            None => {
                let r = TestRedis::start();
                let u = r.url();
                if cfg.replica_acks > 0 {
                    let options = RedisOptions { replica_of: Some(r.port()), ..Default::default() };
                    let rep = TestRedis::start_with(options);
                    rep.wait_in_sync(Duration::from_secs(10));
                    replica = Some(rep);
                }
                redis = Some(r);
                u
            }
        };
        let (sim, sim_base) = match &cfg.twilio_api_base {
            Some(b) => (None, b.trim_end_matches('/').to_owned()),
            None => {
                let (s, addr) = sim::spawn(SimConfig {
                    send_latency_ms: cfg.send_latency_ms,
                    purchase_latency_ms: cfg.purchase_latency_ms,
                    send_faults: cfg.send_faults.clone(),
                    hang_ms: 15_000,
                    deliver_after_ms: cfg.deliver_after_ms,
                    ..SimConfig::default()
                })
                .await;
                (Some(s), format!("http://{addr}"))
            }
        };
        let env = if cluster.is_some() {
            Env::new("redis://unused", &sim_base).set("REDIS_CLUSTER_NODES", &redis_url)
        } else {
            Env::new(&redis_url, &sim_base)
        };
        let env = env
            .set("MESSENGER_REDIS_REPLICA_ACKS", cfg.replica_acks)
            .set("MESSENGER_DAILY_QUOTA", cfg.daily_quota)
            .set("MESSENGER_CONVERSATIONAL_CAP", cfg.daily_quota.max(1_000))
            .set("MESSENGER_WINDOW_SECS", cfg.window_secs)
            .set("MESSENGER_MAX_NUMBERS", cfg.max_numbers)
            .set("MESSENGER_TWILIO_TIMEOUT_MS", 5_000)
            .set("MESSENGER_AMBIGUOUS_GRACE_MS", 2_000)
            .set("MESSENGER_QUIET_HOURS", &cfg.quiet_hours)
            .set("RUST_LOG", "warn");
        let run = format!("lt{}", &ulid::Ulid::new().to_string().to_ascii_lowercase()[20..]);
        Ok(Self {
            redis,
            replica,
            cluster,
            redis_url,
            sim,
            sim_base,
            env,
            workers: Vec::new(),
            run,
            servers: Vec::new(),
        })
    }

    pub fn start_workers(&mut self, n: usize, concurrency: usize) {
        for _ in 0..n {
            self.workers.push(self.env.worker(&["--concurrency", &concurrency.to_string()]));
        }
    }

    /// Stops the workers with SIGTERM and returns their peak resident set sizes (KiB).
    pub fn stop_workers(&mut self) -> Vec<u64> {
        let peaks = self.workers.iter().map(|w| peak_rss_kib(w.pid())).collect();
        for w in &self.workers {
            w.signal(libc::SIGTERM);
        }
        for w in &mut self.workers {
            let _ = w.wait_timeout(Duration::from_secs(20));
        }
        self.workers.clear();
        peaks
    }

    pub async fn conn(&self) -> shared::store::Conn {
        let mut settings = shared::config::RedisSettings::node(&self.redis_url, Duration::from_secs(30));
        if self.cluster.is_some() {
            settings.cluster_nodes = self.redis_url.split(',').map(|u| u.to_owned().into()).collect();
        }
        shared::store::connect(&settings).await.expect("connect to redis")
    }

    /// Serves the HTTP API, the dashboard and Twilio's webhooks in this process, the way `producer serve` does, on a
    /// free loopback port that is also its public URL (webhook signatures use it). Returns that URL and an admin
    /// token.
    pub async fn serve_in_process(&self) -> anyhow::Result<(String, String)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let redis_flag = if self.cluster.is_some() { "--redis-cluster-nodes" } else { "--redis-url" };
        let mut args = vec!["x", redis_flag, &self.redis_url, "--secrets-key", crate::SECRETS_KEY];
        args.extend(["--twilio-api-base", &self.sim_base, "--twilio-messaging-api-base", &self.sim_base]);
        if self.sim.is_some() {
            args.extend(["--twilio-account-sid", sim::DEFAULT_ACCOUNT_SID]);
            args.extend(["--twilio-auth-token", sim::DEFAULT_AUTH_TOKEN]);
        }
        let settings = <ServerArgs as clap::Parser>::parse_from(args).common.settings()?;
        let token = format!("{:032x}", rand::random::<u128>());
        let tokens =
            producer::server::auth::Tokens::parse(&format!("ops:{token}:admin")).map_err(anyhow::Error::msg)?;
        let config = producer::server::ServeConfig {
            public_url: Some(base.clone()),
            ..producer::server::ServeConfig::new(tokens)
        };
        let app = producer::server::Application::build_on(listener, settings, config).await?;
        tokio::spawn(app.run_until(std::future::pending()));
        Ok((base, token))
    }

    /// Direct connections to every node that holds data: the one node, or each primary of the cluster (for INFO,
    /// SCAN and MEMORY, which a cluster connection would send to one random node).
    pub async fn data_nodes(&self) -> Vec<(String, shared::store::Conn)> {
        let urls: Vec<String> = match &self.cluster {
            Some(c) => c.primaries().into_iter().map(|p| format!("redis://127.0.0.1:{p}")).collect(),
            None => vec![self.redis_url.clone()],
        };
        let mut out = Vec::new();
        for u in urls {
            let settings = shared::config::RedisSettings::node(&u, Duration::from_secs(30));
            if let Ok(c) = shared::store::connect(&settings).await {
                out.push((u.trim_start_matches("redis://").to_owned(), c));
            }
        }
        out
    }

    /// `INFO <section>` of every data node.
    async fn infos(&self, section: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, mut c) in self.data_nodes().await {
            let info: String = redis::cmd("INFO").arg(section).query_async(&mut c).await.unwrap_or_default();
            out.push((name, info));
        }
        out
    }

    /// CPU seconds (user + system) each data node has used so far.
    pub async fn cpu_secs(&self) -> Vec<(String, f64)> {
        self.infos("cpu")
            .await
            .into_iter()
            .map(|(n, i)| {
                let cpu =
                    info_field(&i, "used_cpu_sys").unwrap_or(0.0) + info_field(&i, "used_cpu_user").unwrap_or(0.0);
                (n, cpu)
            })
            .collect()
    }

    pub async fn sim_state(&self, with_messages: bool) -> SimState {
        match &self.sim {
            Some(s) => s.state(with_messages),
            None => fixtures::sim_state(&self.sim_base, with_messages).await,
        }
    }

    pub fn customer(&self, i: usize) -> CustomerId {
        CustomerId::parse(&format!("{}-c{i}", self.run)).unwrap()
    }

    pub async fn add_customer(&self, id: &CustomerId, max_numbers: u32) -> anyhow::Result<()> {
        self.add_customer_with(id, max_numbers, false, &[]).await
    }

    /// [`Stack::add_customer`], with (`caps`) carrier caps that check every send and never hold one.
    pub async fn add_customer_with(
        &self,
        id: &CustomerId,
        max_numbers: u32,
        caps: bool,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let max = max_numbers.to_string();
        let mut args = vec!["customer", "add", id.as_str(), "--max-numbers", &max];
        if caps {
            args.extend(["--tmobile-daily-cap", "200000", "--att-per-minute", "4500", "--per-second", "2000"]);
        }
        args.extend(extra);
        procs::stdout_of(&args, self.env.producer_async(&args).await).map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// Buys `n` numbers for a customer in the simulator and records them in its pool.
    pub async fn prebuy(&self, id: &CustomerId, n: usize) -> anyhow::Result<()> {
        let twilio = sim::client(&self.sim_base, sim::DEFAULT_AUTH_TOKEN, Duration::from_secs(10));
        let mut conn = self.conn().await;
        for i in 0..n {
            let name = format!("msgr:{id}:prebuy{i}");
            let req = shared::twilio::BuyNumber { area_code: Some("415"), friendly_name: &name, ..Default::default() };
            let n = twilio.buy_number(twilio.account(), &req).await?;
            let b = shared::purchase::Bought { number: n.phone_number.unwrap(), sid: n.sid.unwrap() };
            shared::purchase::commit_number(&mut conn, id, &b, "").await?;
        }
        Ok(())
    }

    /// Fills a customer's lookup cache with the simulator's lines for `to`, as if they had been looked up before
    /// (so a run measures the caps, not first-time lookups).
    pub async fn warm_lookups(&self, id: &CustomerId, to: &[String]) -> anyhow::Result<()> {
        let Some(sim) = &self.sim else { return Ok(()) };
        let mut conn = self.conn().await;
        let now = shared::customers::redis_now_ms(&mut conn).await?;
        let lines: Vec<(&str, shared::carriers::Line)> = to
            .iter()
            .map(|n| {
                let line = match sim::carriers::Line::of(sim, n) {
                    sim::carriers::Line::TMobile => shared::carriers::Line::TMobile,
                    sim::carriers::Line::Att => shared::carriers::Line::Att,
                    sim::carriers::Line::Verizon => shared::carriers::Line::Verizon,
                    // A landline would end failed without a send: the throughput runs count sends, so not here.
                    sim::carriers::Line::Landline => shared::carriers::Line::Other,
                };
                (n.as_str(), line)
            })
            .collect();
        for chunk in lines.chunks(5_000) {
            shared::carriers::cache_lines(&mut conn, id, chunk, now).await?;
        }
        Ok(())
    }

    /// `producer bulk` for one customer from a file; returns (batch id, seconds).
    pub async fn bulk(&self, id: &CustomerId, to: &[String], body: &str) -> anyhow::Result<(String, f64)> {
        let started = Instant::now();
        let receipt = self.env.bulk(id.as_str(), body, to, &[]).await.map_err(anyhow::Error::msg)?;
        Ok((receipt["batch_id"].as_str().unwrap_or_default().to_owned(), started.elapsed().as_secs_f64()))
    }

    /// `producer bulk` of [`PERSONAL_BODY`] for one customer, from a CSV with three variables; returns (batch id,
    /// seconds).
    pub async fn bulk_personal(&self, id: &CustomerId, to: &[String]) -> anyhow::Result<(String, f64)> {
        let rows: Vec<String> = to.iter().enumerate().map(|(i, n)| personal_row(n, i)).collect();
        let path = std::env::temp_dir().join(format!("recipients-{}.csv", ulid::Ulid::new()));
        std::fs::write(&path, format!("phone,first_name,unit,building\n{}\n", rows.join("\n")))?;
        let started = Instant::now();
        let receipt = self.env.bulk_file(id.as_str(), PERSONAL_BODY, &path, &[]).await;
        let _ = std::fs::remove_file(&path);
        let receipt = receipt.map_err(anyhow::Error::msg)?;
        Ok((receipt["batch_id"].as_str().unwrap_or_default().to_owned(), started.elapsed().as_secs_f64()))
    }

    /// Waits until every batch is complete, with a progress bar; returns the seconds it took.
    pub async fn wait_all(&self, batches: &[String], total: u64, show: bool, timeout: Duration) -> anyhow::Result<f64> {
        let started = Instant::now();
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{elapsed_precise} {bar:40} {pos}/{len} terminal ({per_sec})").unwrap(),
            );
            b
        });
        let mut conn = self.conn().await;
        let ids: Vec<BatchId> = batches.iter().map(|b| BatchId::parse(b)).collect::<Result<_, _>>()?;
        loop {
            let mut done = 0;
            let mut complete = 0;
            for id in &ids {
                if let Some(s) = batches::status(&mut conn, id).await? {
                    done += s.terminal();
                    complete += usize::from(s.is_complete());
                }
            }
            if let Some(b) = &bar {
                b.set_position(done);
            }
            if complete == ids.len() {
                break;
            }
            if started.elapsed() > timeout {
                anyhow::bail!("timed out after {timeout:?} with {done} of {total} jobs terminal");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Memory used by the data nodes, summed.
    pub async fn used_memory(&self) -> i64 {
        self.infos("memory").await.iter().map(|(_, i)| info_field(i, "used_memory").unwrap_or(0.0) as i64).sum()
    }

    /// Calls per command over the data nodes, summed.
    pub async fn commandstats(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (_, info) in self.infos("commandstats").await {
            for l in info.lines() {
                let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
                let Some(calls) =
                    rest.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|v| v.parse::<u64>().ok())
                else {
                    continue;
                };
                *out.entry(name.to_owned()).or_insert(0) += calls;
            }
        }
        out
    }

    /// Resets Redis's bounded bookkeeping (latency histograms, slow log) so memory deltas show Messenger's data.
    pub async fn reset_redis_stats(&self) {
        for (_, mut c) in self.data_nodes().await {
            let _: redis::RedisResult<()> = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut c).await;
            let _: redis::RedisResult<()> = redis::cmd("SLOWLOG").arg("RESET").query_async(&mut c).await;
        }
    }
}

fn info_field(info: &str, field: &str) -> Option<f64> {
    info.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).and_then(|v| v.trim().parse().ok())
}

/// Peak resident set of a process (VmHWM), KiB.
pub fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()))
        })
        .flatten()
        .unwrap_or(0)
}

/// Percentiles of a list of millisecond values.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// The 99.9th percentile (equal to the maximum below 1,000 values).
    pub p99_9_ms: f64,
    pub max_ms: f64,
}

pub fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| v[(((v.len() - 1) as f64) * p).round() as usize];
    Percentiles {
        count: v.len(),
        p50_ms: at(0.50),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
        p99_9_ms: at(0.999),
        max_ms: *v.last().unwrap(),
    }
}

/// Commands seen by MONITOR, split into the ones clients sent (round trips) and the ones scripts ran.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CommandCount {
    pub top_level: BTreeMap<String, u64>,
    pub in_scripts: BTreeMap<String, u64>,
}

/// Counts every command Redis executes while it runs (MONITOR marks script-issued commands with `[db lua]`).
pub struct Monitor {
    task: tokio::task::JoinHandle<CommandCount>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Monitor {
    pub async fn start(redis_url: &str) -> anyhow::Result<Self> {
        let addr = redis_url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
        let mut stream = tokio::net::TcpStream::connect(&addr).await?;
        stream.write_all(b"MONITOR\r\n").await?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut lines = BufReader::with_capacity(1 << 20, stream).lines();
            let mut count = CommandCount::default();
            loop {
                tokio::select! {
                    l = lines.next_line() => match l {
                        Ok(Some(line)) => {
                            // +1700000000.123456 [0 127.0.0.1:5555] "evalsha" "…"  or  [0 lua] "zadd" …
                            let Some(rest) = line.split_once(" [").map(|(_, r)| r) else { continue };
                            let Some((who, cmd)) = rest.split_once("] \"") else { continue };
                            let name = cmd.split('"').next().unwrap_or("").to_ascii_lowercase();
                            let map = if who.ends_with(" lua") { &mut count.in_scripts } else { &mut count.top_level };
                            *map.entry(name).or_insert(0) += 1;
                        }
                        _ => break,
                    },
                    _ = &mut stopped => break,
                }
            }
            count
        });
        Ok(Self { task, stop })
    }

    pub async fn stop(self) -> CommandCount {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The report of a bulk run (`throughput` and `purchases` scenarios).
#[derive(Clone, Debug, Default, Serialize)]
pub struct BulkReport {
    /// `single node`, `single node + replica` or `cluster 3+3`.
    pub redis: String,
    pub replica_acks: u32,
    /// Redis CPU (user + system) per 1,000 messages sent, per data node, ms.
    pub redis_cpu_ms_per_1000: Vec<(String, f64)>,
    pub recipients: usize,
    pub customers: usize,
    pub workers: usize,
    pub concurrency: usize,
    pub send_latency_ms: u64,
    pub purchase_latency_ms: u64,
    pub enqueue_secs: f64,
    pub enqueue_per_sec: f64,
    /// The slowest single `producer bulk` (validation + enqueue of one customer's request), seconds.
    pub largest_enqueue_secs: f64,
    pub send_secs: f64,
    pub sends_per_sec: f64,
    /// From starting the workers until every batch was complete (purchases included).
    pub drain_secs: f64,
    /// From the start of a customer's enqueue to the simulator receiving the send.
    pub enqueue_to_twilio: Percentiles,
    pub numbers_bought: usize,
    pub numbers_minimum: usize,
    pub purchase_requests: u64,
    /// Time between consecutive purchases, as the simulator saw them.
    pub purchase_gap: Percentiles,
    pub max_per_number_in_window: usize,
    pub messages: usize,
    pub recipients_texted_twice: usize,
    /// INFO commandstats deltas over the sending phase (these include commands run inside scripts).
    pub commandstats_per_message: f64,
    pub commandstats_top: Vec<(String, f64)>,
    /// With --count-commands: commands clients sent (round trips) and commands scripts ran, per message.
    pub round_trips_per_message: Option<f64>,
    pub round_trips_breakdown: Option<Vec<(String, f64)>>,
    pub script_commands_per_message: Option<f64>,
    pub redis_bytes_per_queued_job: f64,
    pub redis_bytes_after_completion: i64,
    pub redis_bytes_per_window_entry: f64,
    /// What Redis holds after completion, by kind of key: (keys, bytes).
    pub redis_keys_after: BTreeMap<String, (u64, u64)>,
    pub worker_peak_rss_kib: Vec<u64>,
    /// Events the customers' streams hold after the run, and their memory per event.
    pub events_recorded: u64,
    pub redis_bytes_per_event: f64,
}

/// Sends `cfg.recipients` spread over `cfg.customers`: enqueue everything, then start the workers and time the
/// drain.
pub async fn bulk_run(cfg: &LoadConfig) -> anyhow::Result<BulkReport> {
    let mut stack = Stack::start(cfg).await?;
    let mut report = BulkReport {
        recipients: cfg.recipients,
        customers: cfg.customers,
        workers: cfg.workers,
        concurrency: cfg.concurrency,
        send_latency_ms: cfg.send_latency_ms,
        purchase_latency_ms: cfg.purchase_latency_ms,
        ..BulkReport::default()
    };
    let per_customer = cfg.recipients.div_ceil(cfg.customers);
    let ids: Vec<CustomerId> = (0..cfg.customers).map(|i| stack.customer(i)).collect();
    // Events delivered to a dead endpoint: a port nothing listens on, and a `producer serve` delivering to it.
    let dead_url =
        format!("http://127.0.0.1:{}/hook", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    let mut events_args: Vec<&str> = match cfg.events.as_str() {
        "pull" => vec!["--events", "on"],
        "dead" => vec!["--events-url", &dead_url],
        _ => Vec::new(),
    };
    if let Some(limit) = &cfg.spend_limit {
        events_args.extend(["--monthly-spend-limit", limit.as_str()]);
    }
    if cfg.events == "dead" {
        stack.env = stack.env.clone().set("MESSENGER_EVENTS_ALLOW_PRIVATE", "true");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        stack.servers.push(stack.env.spawn_producer(&["serve", "--listen", &format!("127.0.0.1:{port}")]));
    }
    for id in &ids {
        stack.add_customer_with(id, cfg.max_numbers, cfg.caps, &events_args).await?;
    }
    report.numbers_minimum = ids.len() * per_customer.div_ceil(cfg.daily_quota as usize);
    if cfg.prebuy {
        for id in &ids {
            stack.prebuy(id, per_customer.div_ceil(cfg.daily_quota as usize)).await?;
        }
    }
    if cfg.caps {
        for (i, id) in ids.iter().enumerate() {
            let n = per_customer.min(cfg.recipients - i * per_customer);
            stack.warm_lookups(id, &recipients(n, i * per_customer)).await?;
        }
    }
    stack.reset_redis_stats().await;
    let mem_before = stack.used_memory().await;

    // Enqueue: one `producer bulk` per customer, disjoint recipient lists.
    let mut batches = Vec::new();
    let mut enqueued_at: HashMap<String, SystemTime> = HashMap::new();
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let n = per_customer.min(cfg.recipients - i * per_customer);
        let to = recipients(n, i * per_customer);
        let t = SystemTime::now();
        let (batch, secs) = if cfg.personalise {
            stack.bulk_personal(id, &to).await?
        } else {
            stack.bulk(id, &to, "Load test: building notice").await?
        };
        report.largest_enqueue_secs = report.largest_enqueue_secs.max(secs);
        for r in to {
            enqueued_at.insert(r, t);
        }
        batches.push(batch);
    }
    report.enqueue_secs = started.elapsed().as_secs_f64();
    report.enqueue_per_sec = cfg.recipients as f64 / report.enqueue_secs;
    report.redis_bytes_per_queued_job = (stack.used_memory().await - mem_before) as f64 / cfg.recipients as f64;

    // Send.
    let stats_before = stack.commandstats().await;
    let cpu_before = stack.cpu_secs().await;
    let monitor = if cfg.count_commands && !cfg.cluster { Some(Monitor::start(&stack.redis_url).await?) } else { None };
    let sending_started: DateTime<Utc> = SystemTime::now().into();
    stack.start_workers(cfg.workers, cfg.concurrency);
    report.drain_secs =
        stack.wait_all(&batches, cfg.recipients as u64, cfg.show_progress, Duration::from_secs(3600)).await?;
    let counted = match monitor {
        Some(m) => Some(m.stop().await),
        None => None,
    };
    let stats_after = stack.commandstats().await;
    let cpu_after = stack.cpu_secs().await;
    report.worker_peak_rss_kib = stack.stop_workers();

    let state = stack.sim_state(true).await;
    let first = state.messages.iter().map(|m| m.date_created).min();
    let last = state.messages.iter().map(|m| m.date_created).max();
    if let (Some(a), Some(b)) = (first, last) {
        report.send_secs = ((b - a).num_milliseconds() as f64 / 1000.0).max(0.001);
        report.sends_per_sec = state.messages.len() as f64 / report.send_secs;
    }
    report.enqueue_to_twilio = percentiles(
        state.messages.iter().filter_map(|m| Some(ms_between(*enqueued_at.get(&m.to)?, m.date_created))).collect(),
    );
    let per = fixtures::per_recipient(&state);
    report.messages = state.messages.len();
    report.redis = match (&stack.cluster, &stack.replica) {
        (Some(_), _) => "cluster 3+3".into(),
        (None, Some(_)) => "single node + replica".into(),
        (None, None) => "single node".into(),
    };
    report.replica_acks = cfg.replica_acks;
    report.redis_cpu_ms_per_1000 = cpu_after
        .iter()
        .map(|(n, after)| {
            let before = cpu_before.iter().find(|(b, _)| b == n).map_or(0.0, |(_, v)| *v);
            (n.clone(), (after - before) * 1000.0 * 1000.0 / report.messages.max(1) as f64)
        })
        .collect();
    report.recipients_texted_twice = per.values().filter(|n| **n > 1).count();
    report.numbers_bought = fixtures::owned_numbers(&state);
    report.purchase_requests = state.purchase_requests;
    // Purchases made while sending (not the ones --prebuy made before).
    let mut bought: Vec<i64> = state
        .numbers
        .iter()
        .filter(|n| n.date_created >= sending_started)
        .map(|n| n.date_created.timestamp_millis())
        .collect();
    bought.sort();
    report.purchase_gap = percentiles(bought.windows(2).map(|w| (w[1] - w[0]) as f64).collect());
    report.max_per_number_in_window = max_in_window(&state, Duration::from_secs(cfg.window_secs));

    let delta: BTreeMap<String, u64> = stats_after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*stats_before.get(k).unwrap_or(&0))))
        .filter(|(_, v)| *v > 0)
        .collect();
    let msgs = report.messages.max(1) as f64;
    report.commandstats_per_message = delta.values().sum::<u64>() as f64 / msgs;
    let mut top: Vec<(String, f64)> = delta.iter().map(|(k, v)| (k.clone(), *v as f64 / msgs)).collect();
    top.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    top.truncate(12);
    report.commandstats_top = top;
    if let Some(c) = counted {
        report.round_trips_per_message = Some(c.top_level.values().sum::<u64>() as f64 / msgs);
        report.script_commands_per_message = Some(c.in_scripts.values().sum::<u64>() as f64 / msgs);
        let mut b: Vec<(String, f64)> = c.top_level.iter().map(|(k, v)| (k.clone(), *v as f64 / msgs)).collect();
        b.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
        report.round_trips_breakdown = Some(b);
    }

    stack.reset_redis_stats().await;
    let after = stack.used_memory().await;
    report.redis_bytes_after_completion = after - mem_before;
    report.redis_bytes_per_window_entry = (after - mem_before) as f64 / msgs;
    report.redis_keys_after = key_inventory(&stack).await;
    if cfg.events != "off" {
        let mut conn = stack.conn().await;
        for id in &ids {
            let n: u64 =
                redis::cmd("XLEN").arg(CustomerKeys::new(id).events()).query_async(&mut conn).await.unwrap_or(0);
            report.events_recorded += n;
        }
        let bytes = report.redis_keys_after.get("events").map_or(0, |e| e.1);
        report.redis_bytes_per_event = bytes as f64 / report.events_recorded.max(1) as f64;
    }
    Ok(report)
}

/// Every key in Redis by kind (windows, sticky senders, batch records, pools, …) with its memory.
pub async fn key_inventory(stack: &Stack) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (_, mut conn) in stack.data_nodes().await {
        inventory_of(&mut conn, &mut out).await;
    }
    out
}

async fn inventory_of(conn: &mut shared::store::Conn, out: &mut BTreeMap<String, (u64, u64)>) {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query_async(conn).await.unwrap_or((0, Vec::new()));
        for k in keys {
            let kind = match k.split_once("}:").map(|(_, rest)| rest) {
                Some(r) if r.starts_with("w:") => "send windows",
                Some(r) if r.starts_with("r:") => "reply windows",
                Some(r) if r.starts_with("sticky:") => "sticky senders",
                Some(r) if r.starts_with("conv:") => "conversations",
                Some(r) if r.starts_with("b:") => "batch records",
                Some(r) if r.starts_with("pool") => "pools",
                Some(r) if r.starts_with("idem:") => "idempotency keys",
                Some("events") => "events",
                Some(_) => "customer config and queues",
                None => "global",
            };
            let bytes: u64 = redis::cmd("MEMORY").arg("USAGE").arg(&k).query_async(conn).await.unwrap_or(0);
            let e = out.entry(kind.to_owned()).or_default();
            e.0 += 1;
            e.1 += bytes;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// Enqueues one single message (front of the queue), as `POST /v1/customers/{id}/messages` does.
async fn send_single(
    conn: &mut shared::store::Conn,
    customer: &CustomerId,
    to: &str,
    body: &str,
) -> anyhow::Result<()> {
    let req = NewBatch {
        priority: true,
        ..NewBatch::plain(customer.clone(), MessageBody::parse(body)?, vec![PhoneNumber::parse(to)?])
    };
    batches::submit(conn, &req, Duration::from_secs(3600), 1000, None, None).await?;
    Ok(())
}

fn ms_between(a: SystemTime, b: DateTime<Utc>) -> f64 {
    let a: DateTime<Utc> = a.into();
    (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

/// Idle latency: single messages at a steady rate to idle workers, enqueue (library call) to Twilio request.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyReport {
    pub rate_per_sec: f64,
    pub messages: usize,
    pub enqueue_to_twilio: Percentiles,
}

pub async fn idle_run(cfg: &LoadConfig, rate: f64, duration: Duration) -> anyhow::Result<LatencyReport> {
    let mut stack = Stack::start(cfg).await?;
    let id = stack.customer(0);
    stack.add_customer(&id, cfg.max_numbers).await?;
    stack.prebuy(&id, 2).await?;
    stack.start_workers(cfg.workers, cfg.concurrency);
    // Let the workers connect and settle into idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut conn = stack.conn().await;
    let to = recipients((rate * duration.as_secs_f64()).ceil() as usize + 1, 0);
    let mut sent_at: HashMap<String, SystemTime> = HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    for (i, r) in to.iter().enumerate() {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        if started.elapsed() > duration {
            break;
        }
        sent_at.insert(r.clone(), SystemTime::now());
        send_single(&mut conn, &id, r, "Your package is at the front desk.").await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.stop_workers();
    let state = stack.sim_state(true).await;
    let lat: Vec<f64> =
        state.messages.iter().filter_map(|m| Some(ms_between(*sent_at.get(&m.to)?, m.date_created))).collect();
    Ok(LatencyReport { rate_per_sec: rate, messages: lat.len(), enqueue_to_twilio: percentiles(lat) })
}

/// Arrivals the load generator may have waiting on Redis at once in [`rate_run`]; an arrival beyond it is dropped
/// and counted (as k6 counts dropped iterations), so a stalled system shows as drops, not as a generator's backlog.
pub const MAX_ARRIVALS_IN_FLIGHT: usize = 2_048;

/// An arrival-rate run (`loadtest rate`): texts arrive at a fixed rate for a fixed time, each its own one-recipient
/// request, whatever pace the system keeps (an open loop: a slow answer does not slow the arrivals).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RateReport {
    pub target_rate_per_sec: f64,
    pub duration_secs: f64,
    /// Texts enqueued (their request answered).
    pub enqueued: usize,
    /// Enqueued texts per second, from the first arrival to the last.
    pub achieved_rate_per_sec: f64,
    /// Arrivals dropped because `MAX_ARRIVALS_IN_FLIGHT` requests were already waiting.
    pub dropped_arrivals: usize,
    /// Requests that failed (each named on stderr).
    pub failed_requests: usize,
    /// How long each enqueue request took.
    pub enqueue: Percentiles,
    /// Texts Twilio (the simulator) accepted.
    pub sent: usize,
    /// Texts accepted per second, from the first arrival to the last acceptance.
    pub sends_per_sec: f64,
    /// From the enqueue request to Twilio's accept.
    pub enqueue_to_twilio: Percentiles,
    /// The simulator's delay from accepting a text to reporting it delivered.
    pub deliver_after_ms: u64,
    /// Texts whose "delivered" status callback Messenger answered.
    pub delivered: usize,
    /// From the enqueue request to Messenger's answer to the "delivered" status callback (includes
    /// `deliver_after_ms`).
    pub enqueue_to_delivered: Percentiles,
    pub recipients_texted_twice: usize,
    pub worker_peak_rss_kib: Vec<u64>,
}

/// The body of every text of a rate run.
const RATE_BODY: &str = "Your package is at the front desk.";

/// Texts arrive at `rate` a second for `duration`, each through the library call an app's request makes; the
/// simulator reports each delivered `cfg.deliver_after_ms` later to a `producer serve` (started here, in process)
/// that records it. Measures the arrival rate achieved and the latency to Twilio's accept and to delivered.
pub async fn rate_run(cfg: &LoadConfig, rate: f64, duration: Duration) -> anyhow::Result<RateReport> {
    anyhow::ensure!(rate > 0.0 && rate.is_finite(), "the rate must be above 0 texts a second");
    let mut stack = Stack::start(cfg).await?;
    let id = stack.customer(0);
    let total = (rate * duration.as_secs_f64()).ceil() as usize;
    stack.add_customer(&id, cfg.max_numbers).await?;
    stack.prebuy(&id, total.div_ceil(cfg.daily_quota.max(1) as usize).max(1)).await?;
    // The status callbacks' receiver: Messenger's webhook, served the way `producer serve` serves it.
    let (base, _) = stack.serve_in_process().await?;
    stack.env = stack.env.clone().set("MESSENGER_PUBLIC_URL", &base);
    stack.start_workers(cfg.workers, cfg.concurrency);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let conn = stack.conn().await;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut in_flight = tokio::task::JoinSet::new();
    let (mut enqueued, mut enqueue_ms, mut dropped, mut failed) = (HashMap::new(), Vec::new(), 0, 0);
    let mut collect = |r: Result<(String, SystemTime, f64, anyhow::Result<()>), tokio::task::JoinError>| match r {
        Ok((to, at, ms, Ok(()))) => {
            enqueued.insert(to, at);
            enqueue_ms.push(ms);
        }
        Ok((_, _, _, Err(e))) => {
            failed += 1;
            eprintln!("an enqueue request failed: {e:#}");
        }
        Err(e) => {
            failed += 1;
            eprintln!("an enqueue task failed: {e}");
        }
    };
    let started = Instant::now();
    let (mut first, mut last) = (None, started);
    for (i, to) in recipients(total, 0).into_iter().enumerate() {
        let due = started + interval.mul_f64(i as f64);
        if due - started >= duration {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        while let Some(r) = in_flight.try_join_next() {
            collect(r);
        }
        if in_flight.len() >= MAX_ARRIVALS_IN_FLIGHT {
            dropped += 1;
            continue;
        }
        first.get_or_insert_with(Instant::now);
        last = Instant::now();
        let (mut c, id) = (conn.clone(), id.clone());
        in_flight.spawn(async move {
            let (at, t0) = (SystemTime::now(), Instant::now());
            let r = send_single(&mut c, &id, &to, RATE_BODY).await;
            (to, at, t0.elapsed().as_secs_f64() * 1000.0, r)
        });
    }
    while let Some(r) = in_flight.join_next().await {
        collect(r);
    }
    let arrival_secs = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);

    // Wait for every enqueued text to reach Twilio and be reported delivered (bounded: a stuck run still reports).
    let deliver_after_ms = cfg.deliver_after_ms.unwrap_or(0);
    let want = enqueued.len();
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(deliver_after_ms);
    let state = loop {
        let state = stack.sim_state(true).await;
        let mine = || state.messages.iter().filter(|m| enqueued.contains_key(&m.to));
        let (sent, delivered) = (mine().count(), mine().filter(|m| m.delivery_acknowledged.is_some()).count());
        let done = sent >= want && (cfg.deliver_after_ms.is_none() || delivered >= sent);
        if done || Instant::now() >= deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let peaks = stack.stop_workers();
    let mine: Vec<&sim::SimMessage> = state.messages.iter().filter(|m| enqueued.contains_key(&m.to)).collect();
    let to_twilio: Vec<f64> = mine.iter().map(|m| ms_between(enqueued[&m.to], m.date_created)).collect();
    let to_delivered: Vec<f64> =
        mine.iter().filter_map(|m| Some(ms_between(enqueued[&m.to], m.delivery_acknowledged?))).collect();
    let first_enqueue = enqueued.values().min().copied();
    let last_accept = mine.iter().map(|m| m.date_created).max();
    let send_span = match (first_enqueue, last_accept) {
        (Some(f), Some(l)) => ms_between(f, l) / 1000.0,
        _ => 0.0,
    };
    let mut per_to: HashMap<&str, usize> = HashMap::new();
    for m in &mine {
        *per_to.entry(m.to.as_str()).or_default() += 1;
    }
    Ok(RateReport {
        target_rate_per_sec: rate,
        duration_secs: duration.as_secs_f64(),
        enqueued: want,
        achieved_rate_per_sec: if arrival_secs > 0.0 { (want.saturating_sub(1)) as f64 / arrival_secs } else { 0.0 },
        dropped_arrivals: dropped,
        failed_requests: failed,
        enqueue: percentiles(enqueue_ms),
        sent: mine.len(),
        sends_per_sec: if send_span > 0.0 { mine.len() as f64 / send_span } else { 0.0 },
        enqueue_to_twilio: percentiles(to_twilio),
        deliver_after_ms,
        delivered: to_delivered.len(),
        enqueue_to_delivered: percentiles(to_delivered),
        recipients_texted_twice: per_to.values().filter(|c| **c > 1).count(),
        worker_peak_rss_kib: peaks,
    })
}

/// Fairness: customer A's big batch drains while customer B sends single messages; B's enqueue-to-Twilio latency.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FairnessReport {
    pub big_batch: usize,
    pub probes: usize,
    pub probe_latency: Percentiles,
    /// How much of A's batch was still queued when the last probe went out (the probes really competed with it).
    pub a_pending_at_last_probe: u64,
}

pub async fn fairness_run(cfg: &LoadConfig, probes: usize) -> anyhow::Result<FairnessReport> {
    let mut stack = Stack::start(cfg).await?;
    let (a, b) = (stack.customer(0), stack.customer(1));
    stack.add_customer(&a, cfg.max_numbers).await?;
    stack.add_customer(&b, cfg.max_numbers).await?;
    stack.prebuy(&a, cfg.recipients.div_ceil(cfg.daily_quota as usize)).await?;
    stack.prebuy(&b, 1).await?;
    let (batch_a, _) = stack.bulk(&a, &recipients(cfg.recipients, 0), "Big batch for customer A").await?;
    stack.start_workers(cfg.workers, cfg.concurrency);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut conn = stack.conn().await;
    let probe_to = recipients(probes, 5_000_000);
    let mut sent_at = HashMap::new();
    let mut a_pending = 0;
    for r in &probe_to {
        sent_at.insert(r.clone(), SystemTime::now());
        send_single(&mut conn, &b, r, "Probe for customer B").await?;
        a_pending = batches::status(&mut conn, &BatchId::parse(&batch_a)?).await?.map(|s| s.pending()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state = stack.sim_state(true).await;
    stack.stop_workers();
    let lat: Vec<f64> =
        state.messages.iter().filter_map(|m| Some(ms_between(*sent_at.get(&m.to)?, m.date_created))).collect();
    Ok(FairnessReport {
        big_batch: cfg.recipients,
        probes,
        probe_latency: percentiles(lat),
        a_pending_at_last_probe: a_pending,
    })
}

/// Threads in the first customer's inbox for `loadtest dashboard`.
pub const INBOX_THREADS: usize = 10_000;

/// What each dashboard page costs with a big backlog queued (`loadtest dashboard`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DashboardReport {
    pub queued_jobs: usize,
    pub customers: usize,
    pub pages: Vec<crate::dashboard::PageCost>,
}

#[derive(clap::Parser)]
struct ServerArgs {
    #[command(flatten)]
    common: shared::config::CommonArgs,
}

/// Queues `cfg.recipients` jobs over `cfg.customers` customers (no workers, so they stay queued), serves the
/// dashboard in this process, and measures each page: Redis commands for one request, and latency over `rounds`.
pub async fn dashboard_run(cfg: &LoadConfig, rounds: usize) -> anyhow::Result<DashboardReport> {
    let stack = Stack::start(cfg).await?;
    let ids: Vec<CustomerId> = (0..cfg.customers).map(|i| stack.customer(i)).collect();
    let mut conn = stack.conn().await;
    let per_customer = cfg.recipients.div_ceil(cfg.customers);
    let mut first_batch = None;
    for (i, id) in ids.iter().enumerate() {
        stack.add_customer(id, cfg.max_numbers).await?;
        stack.prebuy(id, 4).await?;
        let to = recipients(per_customer, i * per_customer);
        let req = NewBatch::plain(
            id.clone(),
            MessageBody::parse("Dashboard cost: queued notice")?,
            to.iter().map(|r| PhoneNumber::parse(r)).collect::<Result<_, _>>()?,
        );
        let r = batches::submit(&mut conn, &req, Duration::from_secs(3600), 5_000, None, None).await?;
        first_batch.get_or_insert(r.batch_id);
    }
    // The first customer's inbox: 10,000 tenants who wrote, each with a thread answering the first batch.
    let inbox_of = ids[0].clone();
    let k = shared::keys::CustomerKeys::new(&inbox_of);
    let batch = first_batch.clone().unwrap_or_default();
    let writers = recipients(INBOX_THREADS, 5_000_000);
    let now = chrono::Utc::now().timestamp_millis();
    for (c, chunk) in writers.chunks(1_000).enumerate() {
        let mut p = redis::pipe();
        for (i, t) in chunk.iter().enumerate() {
            let ms = now - ((c * 1_000 + i) as i64) * 7;
            p.zadd(k.inbox(), t, ms).ignore();
            p.hincr(k.unread(), t, 1).ignore();
            let entry = format!("i|{ms}|+14155550100|SM{i:032}|{batch}|When is the water back?");
            p.set(k.conversation(t), shared::keys::conversation_record(&entry)).ignore();
        }
        let _: () = p.query_async(&mut conn).await?;
    }
    let (base, token) = stack.serve_in_process().await?;
    let session = crate::dashboard::login(&base, &token).await;
    let pages = [
        "/dashboard".to_owned(),
        "/dashboard/batches".to_owned(),
        format!("/dashboard/batches/{}", first_batch.unwrap_or_default()),
        format!("/dashboard/pools/{}", ids[0]),
        format!("/dashboard/inbox?customer={inbox_of}"),
        format!("/dashboard/inbox?customer={inbox_of}&unread=1"),
    ];
    let mut node = redis::Client::open(stack.redis_url.as_str())?.get_connection()?;
    let pages = crate::dashboard::page_costs(&session, &mut node, &pages, rounds).await;
    Ok(DashboardReport { queued_jobs: cfg.recipients, customers: cfg.customers, pages })
}
