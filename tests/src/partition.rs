//! Partition scenarios: a Redis Cluster and Messenger's workers in a network test bed ([`crate::netbed`]), a fault
//! between them, and an independent checker that judges the run from the Twilio simulator's log alone.
//!
//! One run: 3 primaries with 1 or 2 replicas each (one namespace per node), four workers (`w1`, `w2` on the side of
//! the primary that holds the most customers, `w3`, `w4` on the other), `producer serve` (`api`, with the majority),
//! six customers × [`RunConfig::recipients`] recipients, quota 100 texts per number per window, simulator send
//! latency 200 ms. Once a fifth of the texts are out, the fault; then the bed heals and the run waits (bounded) for
//! every batch to finish. The [`Verdict`] counts, from the simulator's messages and numbers only:
//! duplicates (recipients of a batch texted more than once), surplus numbers (bought beyond `ceil(texts / quota)`
//! per customer), recipients never texted, quota overruns (numbers with more texts than the quota in the window),
//! and seconds from the heal to the last text.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::netbed::Bed;
use crate::procs::{Env, Proc, bin};
use crate::redis_cluster::TestCluster;
use crate::sim::{SimConfig, SimState};

/// A fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// (a) The busiest primary cut off from its replicas and the other primaries (two workers on its side, two on
    /// the other) for this many `cluster-node-timeout`s, then healed.
    Cut(u32),
    /// (b) That primary paused (SIGSTOP) until its replica took over, then resumed.
    Pause,
    /// (c) 300 ms of latency and 20 % loss between the workers and that primary for 30 s.
    Slow,
    /// (d) One worker cut off from Redis mid-send for two leases.
    WorkerCut,
    /// That primary killed and never brought back: after the failover its shard has no replica.
    Lost,
    /// No fault: the baseline for "recover", which includes sending what was still queued when the fault began.
    Calm,
    /// That primary's replica cut off from everyone for 12 s: the shard's replica exists but cannot confirm.
    ReplicaCut,
}

impl Scenario {
    pub fn name(&self) -> String {
        match self {
            Scenario::Cut(k) => format!("a: cut {k}x timeout"),
            Scenario::Pause => "b: SIGSTOP primary".into(),
            Scenario::Slow => "c: 300ms + 20% loss".into(),
            Scenario::WorkerCut => "d: worker cut off".into(),
            Scenario::Lost => "primary killed, not back".into(),
            Scenario::ReplicaCut => "replica cut off".into(),
            Scenario::Calm => "no fault (baseline)".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub scenario: Scenario,
    /// Replicas per primary (1 or 2).
    pub replicas: usize,
    /// `MESSENGER_REDIS_REPLICA_ACKS`.
    pub acks: u32,
    /// Recipients per customer (six customers).
    pub recipients: usize,
    /// Which run of a series (recipients differ per run).
    pub run: usize,
}

impl RunConfig {
    pub fn new(scenario: Scenario, replicas: usize, acks: u32) -> Self {
        Self { scenario, replicas, acks, recipients: 400, run: 0 }
    }
}

/// What the checker found, and what else the run showed.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub duplicates: usize,
    pub surplus_numbers: usize,
    pub never_texted: usize,
    pub quota_overruns: usize,
    /// From the heal to the last text (0 when everything was out before the heal).
    pub recover_s: f64,
    pub texts: usize,
    /// Every worker still running at the end.
    pub workers_alive: bool,
    /// Every batch complete with every job terminal, and each batch's `sent` equal to its recipients texted.
    pub totals_add_up: bool,
    /// Seconds from the fault to a replica serving the primary's slots (None: no failover).
    pub failover_s: Option<f64>,
    /// What `/healthz` said during the fault (worker on the majority side, and `producer serve`).
    pub health: Vec<String>,
    /// How long the fault lasted.
    pub fault_s: f64,
    /// Seconds from the fault's start to the last text.
    pub last_text_s: f64,
    pub notes: Vec<String>,
}

impl Verdict {
    /// 0 / 0 / 0 / 0 and the invariants held.
    pub fn clean(&self) -> bool {
        self.duplicates == 0
            && self.surplus_numbers == 0
            && self.never_texted == 0
            && self.quota_overruns == 0
            && self.workers_alive
            && self.totals_add_up
    }
}

pub const QUOTA: usize = 100;
const NODE_TIMEOUT_MS: u64 = 1_500;
const WORKER_PORT: u16 = 9100;
const API_PORT: u16 = 8080;

/// The checker: judges a run from the simulator's log alone. `batches`: each batch's body and its recipients, by
/// customer.
pub fn check(state: &SimState, batches: &[(String, String, Vec<String>)]) -> Verdict {
    let mut v = Verdict { texts: state.messages.len(), ..Verdict::default() };
    let mut per: HashMap<(&str, &str), usize> = HashMap::new();
    for m in state.messages.iter().filter(|m| m.direction.starts_with("outbound")) {
        *per.entry((m.body.as_str(), m.to.as_str())).or_default() += 1;
    }
    v.duplicates = per.values().filter(|n| **n > 1).count();
    let mut texted_by_customer: HashMap<&str, usize> = HashMap::new();
    for (customer, body, to) in batches {
        let sent = to.iter().filter(|r| per.contains_key(&(body.as_str(), r.as_str()))).count();
        v.never_texted += to.len() - sent;
        *texted_by_customer.entry(customer.as_str()).or_default() += sent;
    }
    let mut bought: HashMap<String, usize> = HashMap::new();
    for n in state.numbers.iter().filter(|n| !n.released) {
        if let Some((c, _)) = shared::purchase::parse_friendly_name(&n.friendly_name) {
            *bought.entry(c.to_string()).or_default() += 1;
        }
    }
    for (customer, texted) in &texted_by_customer {
        let needed = texted.div_ceil(QUOTA);
        v.surplus_numbers += bought.get(*customer).copied().unwrap_or(0).saturating_sub(needed);
    }
    let mut per_number: HashMap<&str, usize> = HashMap::new();
    for m in &state.messages {
        *per_number.entry(m.from.as_str()).or_default() += 1;
    }
    // A run lasts minutes, far less than the 24-hour window: every text of a number is in one window.
    v.quota_overruns = per_number.values().filter(|n| **n > QUOTA).count();
    v
}

/// Runs one scenario in a fresh bed. Errors are set-up failures (the bed, the cluster), not findings.
pub async fn run(cfg: &RunConfig) -> Result<Verdict, String> {
    let primaries = 3;
    let nodes = primaries * (1 + cfg.replicas);
    let redis_hosts: Vec<String> = (1..=nodes).map(|i| format!("r{i}")).collect();
    let mut names: Vec<&str> = redis_hosts.iter().map(String::as_str).collect();
    names.extend(["w1", "w2", "w3", "w4", "api"]);
    let bed = Bed::new(&names)?;

    let (sim, sim_addr) = crate::sim::spawn_on(
        bed.root_ip(),
        SimConfig { send_latency_ms: 200, purchase_latency_ms: 300, ..SimConfig::default() },
    )
    .await;
    bed.allow_root_port(sim_addr.port());
    let hosts: Vec<String> = redis_hosts.clone();
    let bed = std::sync::Arc::new(bed);
    let b = bed.clone();
    let replicas = cfg.replicas;
    let mut cluster = tokio::task::spawn_blocking(move || {
        let hs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        TestCluster::start_in_bed(&b, &hs, replicas, NODE_TIMEOUT_MS)
    })
    .await
    .map_err(|e| format!("cluster did not start: {e}"))?;

    let env = Env::new("redis://unused", &format!("http://{sim_addr}"))
        .set("REDIS_CLUSTER_NODES", cluster.seeds())
        .set("MESSENGER_REDIS_REPLICA_ACKS", cfg.acks)
        .set("MESSENGER_DAILY_QUOTA", QUOTA)
        .set("MESSENGER_LEASE_SECS", 6)
        .set("MESSENGER_TWILIO_TIMEOUT_MS", 3_000)
        .set("MESSENGER_REDIS_TIMEOUT_MS", 2_000)
        .set("MESSENGER_WORKER_LISTEN", format!("0.0.0.0:{WORKER_PORT}"))
        .set("RUST_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()));

    // Six customers: three on the victim primary (the busiest), the rest on the others.
    let victim = cluster.primary_of("{c:x0}:q");
    let mut customers: Vec<String> = Vec::new();
    let (mut on_victim, mut elsewhere) = (0, 0);
    for i in 0..2_000 {
        let name = format!("r{}c{i}", cfg.run);
        let home = cluster.primary_of(&format!("{{c:{name}}}:q"));
        if home == victim && on_victim < 3 {
            on_victim += 1;
            customers.push(name);
        } else if home != victim && elsewhere < 3 {
            elsewhere += 1;
            customers.push(name);
        }
        if customers.len() == 6 {
            break;
        }
    }
    let mut batches = Vec::new();
    for (i, c) in customers.iter().enumerate() {
        let out = env.producer_async(&["customer", "add", c, "--area-code", "415", "--max-numbers", "10"]).await;
        crate::procs::stdout_of(&["customer", "add"], out)?;
        let to = crate::fixtures::recipients(cfg.recipients, (cfg.run * 10 + i) * 10_000 + 3_000_000);
        let body = format!("Drill {c}: water off Tuesday 9-11");
        let receipt = env.bulk(c, &body, &to, &[]).await?;
        let id = receipt["batch_id"].as_str().unwrap_or_default().to_owned();
        batches.push((c.clone(), body, to, id));
    }
    let total: usize = batches.iter().map(|b| b.2.len()).sum();

    let spawn_in = |host: &str, program: &str, what: &str, args: &[&str]| -> Proc {
        env.spawn(bed.command(host, bin(program)), what, args)
    };
    let mut workers: Vec<Proc> =
        ["w1", "w2", "w3", "w4"].iter().map(|h| spawn_in(h, "worker", "worker", &["--concurrency", "8"])).collect();
    let api_listen = format!("0.0.0.0:{API_PORT}");
    let mut api = spawn_in("api", "producer", "producer", &["serve", "--listen", &api_listen]);

    // The fault, once a fifth of the texts are out (bounded).
    let started = Instant::now();
    while sim.state(true).messages.len() < total / 5 {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "only {} of {total} texts after 120 s, before any fault",
                sim.state(true).messages.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let victim_host = redis_host(&cluster, &bed, victim);
    let victim_replicas: Vec<String> =
        cluster.replicas_of(victim).into_iter().map(|p| redis_host(&cluster, &bed, p)).collect();
    v_replicas_check(&victim_replicas, cfg.replicas)?;
    let others: Vec<String> = redis_hosts.iter().filter(|h| **h != victim_host).cloned().collect();
    let others_ref: Vec<&str> = others.iter().map(String::as_str).collect();
    let mut v = Verdict::default();
    let fault_at = Instant::now();
    let timeout = cluster.node_timeout();
    let w_ips: Vec<String> = ["w3", "api"].iter().map(|h| bed.host(h).ip.to_string()).collect();
    match cfg.scenario {
        Scenario::Cut(k) => {
            let mut majority = others_ref.clone();
            majority.extend(["w3", "w4", "api"]);
            bed.partition(&[victim_host.as_str(), "w1", "w2"], &majority);
            let until = fault_at + timeout * k;
            v.failover_s = watch(&mut cluster, victim, until, &w_ips, &mut v.health).await;
        }
        Scenario::Pause => {
            cluster.pause(victim, true);
            let until = fault_at + timeout * 3 + Duration::from_secs(1);
            v.failover_s = watch(&mut cluster, victim, until, &w_ips, &mut v.health).await;
            // Wait (bounded) for the promotion if it has not happened yet, then resume the old primary.
            let deadline = fault_at + Duration::from_secs(20);
            while v.failover_s.is_none() && Instant::now() < deadline {
                v.failover_s = promoted(&cluster, victim).then(|| fault_at.elapsed().as_secs_f64());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            cluster.pause(victim, false);
        }
        Scenario::Slow => {
            let workers = ["w1", "w2", "w3", "w4"];
            bed.delay(&victim_host, &workers, 300, Duration::from_secs(35));
            bed.loss(&[victim_host.as_str()], &workers, 20);
            let until = fault_at + Duration::from_secs(30);
            v.failover_s = watch(&mut cluster, victim, until, &w_ips, &mut v.health).await;
        }
        Scenario::WorkerCut => {
            let mut all: Vec<&str> = redis_hosts.iter().map(String::as_str).collect();
            all.push("api");
            bed.partition(&["w1"], &all);
            let until = fault_at + Duration::from_secs(12);
            v.failover_s = watch(&mut cluster, victim, until, &w_ips, &mut v.health).await;
        }
        Scenario::Lost => {
            cluster.kill(victim);
            let until = fault_at + Duration::from_secs(12);
            v.failover_s = watch(&mut cluster, victim, until, &w_ips, &mut v.health).await;
        }
        Scenario::Calm => {}
        Scenario::ReplicaCut => {
            let replica = victim_replicas[0].as_str();
            let rest: Vec<&str> = names.iter().copied().filter(|h| *h != replica).collect();
            bed.partition(&[replica], &rest);
            let until = fault_at + Duration::from_secs(12);
            watch(&mut cluster, victim, until, &w_ips, &mut v.health).await;
        }
    }
    let healed_at = Instant::now();
    v.fault_s = fault_at.elapsed().as_secs_f64();
    bed.heal();

    // Every batch complete (bounded), read from the majority side's view (the test's own cluster connection).
    let conn = tokio::time::timeout(Duration::from_secs(20), cluster_conn(&cluster))
        .await
        .map_err(|_| "no cluster connection after the heal".to_owned())??;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut statuses = Vec::new();
    for (_, _, _, id) in &batches {
        let id = shared::domain::BatchId::parse(id).map_err(|e| e.to_string())?;
        loop {
            let s = tokio::time::timeout(Duration::from_secs(5), shared::batches::status(&mut conn.clone(), &id))
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten();
            // A failover may also come after the heal (the election outlasting a short cut).
            if v.failover_s.is_none() && promoted(&cluster, victim) {
                v.failover_s = Some(fault_at.elapsed().as_secs_f64());
                v.notes.push(format!(
                    "failover after the heal, {:.1} s after the fault",
                    fault_at.elapsed().as_secs_f64()
                ));
            }
            if s.as_ref().is_some_and(|s| s.is_complete()) || Instant::now() > deadline {
                statuses.push(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let state = sim.state(true);
    let judged: Vec<(String, String, Vec<String>)> =
        batches.iter().map(|(c, b, to, _)| (c.clone(), b.clone(), to.clone())).collect();
    let found = check(&state, &judged);
    v.duplicates = found.duplicates;
    v.surplus_numbers = found.surplus_numbers;
    v.never_texted = found.never_texted;
    v.quota_overruns = found.quota_overruns;
    v.texts = found.texts;
    let last = state.messages.iter().map(|m| m.date_created).max();
    let heal_wall = chrono::Utc::now() - chrono::Duration::from_std(healed_at.elapsed()).unwrap_or_default();
    v.recover_s = last.map_or(0.0, |l| ((l - heal_wall).num_milliseconds() as f64 / 1000.0).max(0.0));
    v.last_text_s = v.fault_s + v.recover_s;
    v.workers_alive = workers.iter_mut().all(Proc::is_running) && api.is_running();
    v.totals_add_up = statuses.iter().zip(&batches).all(|(s, (_, body, to, _))| {
        let texted: HashSet<&str> = state.messages.iter().filter(|m| &m.body == body).map(|m| m.to.as_str()).collect();
        s.as_ref().is_some_and(|s| {
            s.is_complete()
                && s.terminal() == s.total
                && s.total as usize == to.len()
                && s.sent as usize == texted.len()
        })
    });
    if !v.totals_add_up {
        v.notes.push(format!("statuses: {statuses:?}"));
    }
    if !v.workers_alive {
        for w in &workers {
            v.notes.push(format!("worker log: {}", w.log().lines().rev().take(5).collect::<Vec<_>>().join(" | ")));
        }
    }
    drop(workers);
    drop(api);
    drop(cluster);
    drop(bed);
    Ok(v)
}

fn v_replicas_check(found: &[String], want: usize) -> Result<(), String> {
    if found.len() == want {
        Ok(())
    } else {
        Err(format!("the victim primary has replicas {found:?}, expected {want}"))
    }
}

/// The bed host a node runs in.
fn redis_host(cluster: &TestCluster, bed: &Bed, port: u16) -> String {
    let addr = cluster.addr(port);
    let ip = addr.split(':').next().unwrap_or_default();
    bed.hosts().find(|h| h.ip.to_string() == ip).map(|h| h.name.clone()).unwrap_or_default()
}

/// A node other than `old` serves what `old` served (asked of the nodes the test reaches; blocking calls, each
/// bounded).
fn promoted(cluster: &TestCluster, old: u16) -> bool {
    tokio::task::block_in_place(|| {
        cluster.replicas_of(old).is_empty() && cluster.primaries().iter().filter(|p| **p != old).count() >= 3
    })
}

/// Until `until`: notes when the failover happened and what `/healthz` of the majority-side worker and the producer
/// said (every second, each request bounded).
async fn watch(
    cluster: &mut TestCluster,
    victim: u16,
    until: Instant,
    probes: &[String],
    health: &mut Vec<String>,
) -> Option<f64> {
    let started = Instant::now();
    let mut failover = None;
    let http = crate::http_builder().timeout(Duration::from_secs(1)).build().expect("client");
    let mut last_probe = Instant::now() - Duration::from_secs(10);
    while Instant::now() < until {
        if failover.is_none() && promoted(cluster, victim) {
            failover = Some(started.elapsed().as_secs_f64());
        }
        if last_probe.elapsed() >= Duration::from_secs(1) {
            last_probe = Instant::now();
            for (i, ip) in probes.iter().enumerate() {
                let port = if i == 0 { WORKER_PORT } else { API_PORT };
                if let Ok(r) = http.get(format!("http://{ip}:{port}/healthz")).send().await {
                    let code = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    health.push(format!(
                        "{:.1}s {} {code} {body}",
                        started.elapsed().as_secs_f64(),
                        if i == 0 { "worker" } else { "producer" }
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    failover
}

async fn cluster_conn(cluster: &TestCluster) -> Result<shared::store::Conn, String> {
    shared::store::connect(&cluster.settings()).await.map_err(|e| e.to_string())
}

/// The matrix as a Markdown table: per row the five runs' counts (`0·0·0·0·0`), the seconds to recover (median and
/// worst), and how many runs were clean.
pub fn table(rows: &[(RunConfig, Vec<Verdict>)]) -> String {
    let mut out = String::from(
        "| scenario | topology | acks | duplicates | surplus numbers | never texted | quota overruns | recover s (median / max) | failover s (median) | clean runs |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let each =
        |vs: &[Verdict], f: fn(&Verdict) -> usize| vs.iter().map(|v| f(v).to_string()).collect::<Vec<_>>().join("·");
    let median = |mut xs: Vec<f64>| -> Option<f64> {
        xs.sort_by(f64::total_cmp);
        (!xs.is_empty()).then(|| xs[xs.len() / 2])
    };
    for (cfg, vs) in rows {
        let recover: Vec<f64> = vs.iter().map(|v| v.recover_s).collect();
        let worst = recover.iter().copied().fold(0.0, f64::max);
        let failover =
            median(vs.iter().filter_map(|v| v.failover_s).collect()).map_or("none".to_owned(), |f| format!("{f:.1}"));
        out += &format!(
            "| {} | 3 × {} | {} | {} | {} | {} | {} | {:.1} / {worst:.1} | {failover} | {} of {} |\n",
            cfg.scenario.name(),
            cfg.replicas,
            cfg.acks,
            each(vs, |v| v.duplicates),
            each(vs, |v| v.surplus_numbers),
            each(vs, |v| v.never_texted),
            each(vs, |v| v.quota_overruns),
            median(recover).unwrap_or(0.0),
            vs.iter().filter(|v| v.clean()).count(),
            vs.len()
        );
    }
    out
}
