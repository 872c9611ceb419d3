//! Shared setup for the integration tests: a private Redis (one node, or a cluster), an in-process Twilio
//! simulator, the environment the real `producer` and `worker` binaries run with — and the scenarios that run the
//! same way on a single node and on a cluster (the purchase race, the deferral at max numbers, kill -9 churn).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::process::Output;
use std::time::{Duration, Instant};

use harness::fixtures::{max_in_window, owned_numbers, per_recipient, recipients, wait_until};
use harness::procs::{Env, Proc, stdout_of};
use harness::redis_cluster::TestCluster;
use harness::redis_server::{RedisOptions, TestRedis};
use harness::sim::{self, Sim, SimConfig, SimState};
use rand::Rng;
use shared::batches::{self, BatchStatus};
use shared::domain::BatchId;
use shared::keys::CustomerKeys;
use shared::store::Conn;

pub const DAY: Duration = Duration::from_secs(86_400);

/// The Redis a test runs against: one node or a cluster.
pub trait Store {
    /// Points Messenger's processes at it.
    fn configure(&self, env: Env) -> Env;
    fn conn(&self) -> impl std::future::Future<Output = Conn> + Send;
}

impl Store for TestRedis {
    fn configure(&self, env: Env) -> Env {
        let env = env.set("REDIS_URL", self.url());
        match self.certs() {
            Some(c) => env.set("REDIS_CA_FILE", c.ca.display()),
            None => env,
        }
    }
    async fn conn(&self) -> Conn {
        TestRedis::conn(self).await
    }
}

impl Store for TestCluster {
    fn configure(&self, env: Env) -> Env {
        env.set("REDIS_CLUSTER_NODES", self.seeds())
    }
    async fn conn(&self) -> Conn {
        TestCluster::conn(self).await
    }
}

pub struct World<R: Store = TestRedis> {
    pub redis: R,
    pub sim: Sim,
    pub sim_base: String,
    pub env: Env,
}

impl World<TestRedis> {
    pub async fn start(config: SimConfig) -> Self {
        Self::start_with(config, RedisOptions::default()).await
    }

    pub async fn start_with(config: SimConfig, options: RedisOptions) -> Self {
        World::on(TestRedis::start_with(options), config).await
    }
}

impl World<TestCluster> {
    /// A 3-primary, 3-replica cluster.
    pub async fn start_cluster(config: SimConfig) -> Self {
        Self::start_cluster_with(config, false).await
    }

    /// A 3-primary, 3-replica cluster whose nodes keep fsynced append-only files (to be killed and restarted).
    pub async fn start_cluster_with(config: SimConfig, persistence: bool) -> Self {
        let cluster = tokio::task::spawn_blocking(move || TestCluster::start_with(3, 1, persistence))
            .await
            .expect("cluster start");
        World::on(cluster, config).await
    }
}

impl<R: Store> World<R> {
    pub async fn on(redis: R, config: SimConfig) -> Self {
        let (sim, addr) = sim::spawn(config).await;
        let sim_base = format!("http://{addr}");
        let env = Env::new("redis://unused", &sim_base)
            // Fast orphan recovery and quick ambiguity checks keep the tests short.
            .set("MESSENGER_TWILIO_TIMEOUT_MS", 3000)
            .set("MESSENGER_LEASE_SECS", 6)
            .set("MESSENGER_AMBIGUOUS_GRACE_MS", 1000)
            .set("MESSENGER_INTENT_STALE_SECS", 10)
            .set("MESSENGER_LOCK_TTL_MS", 2000)
            .set("MESSENGER_RECONCILE_SECS", 2)
            .set("MESSENGER_BACKOFF_BASE_MS", 100)
            .set("MESSENGER_BACKOFF_MAX_MS", 2000);
        let env = redis.configure(env);
        Self { redis, sim, sim_base, env }
    }

    /// Runs the producer CLI (off the async runtime, which keeps serving the simulator).
    pub async fn producer(&self, args: &[&str]) -> Output {
        self.env.producer_async(args).await
    }

    pub async fn producer_ok(&self, args: &[&str]) -> String {
        stdout_of(args, self.env.producer_async(args).await).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `producer bulk … --json`, returning the batch id.
    pub async fn bulk(&self, customer: &str, body: &str, recipients: &[String], extra: &[&str]) -> String {
        let receipt = self.env.bulk(customer, body, recipients, extra).await.unwrap_or_else(|e| panic!("{e}"));
        receipt["batch_id"].as_str().unwrap().to_owned()
    }

    pub fn worker(&self, concurrency: usize) -> Proc {
        self.env.worker(&["--concurrency", &concurrency.to_string()])
    }

    pub async fn status(&self, batch: &str) -> BatchStatus {
        let mut conn = self.redis.conn().await;
        batches::status(&mut conn, &BatchId::parse(batch).unwrap()).await.unwrap().expect("batch exists")
    }

    pub async fn wait_complete(&self, batch: &str, timeout: Duration) -> BatchStatus {
        let conn = self.redis.conn().await;
        let id = BatchId::parse(batch).unwrap();
        wait_until(timeout, &format!("batch {batch} to complete"), || {
            let mut conn = conn.clone();
            let id = id.clone();
            async move { batches::status(&mut conn, &id).await.ok().flatten().filter(|s| s.is_complete()) }
        })
        .await
    }

    pub fn state(&self) -> SimState {
        self.sim.state(true)
    }
}

/// Exactly one message per reachable recipient, every job terminal, counts adding up, no duplicate sends.
pub fn assert_exactly_once(state: &SimState, reachable: &[String], status: &BatchStatus) {
    let per = per_recipient(state);
    let twice: Vec<_> = per.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "recipients texted more than once: {twice:?}");
    let missing: Vec<_> = reachable.iter().filter(|r| !per.contains_key(*r)).take(5).collect();
    assert!(missing.is_empty(), "reachable recipients never texted: {missing:?}");
    assert!(status.is_complete(), "{status:?}");
    assert_eq!(status.terminal(), status.total, "{status:?}");
    assert_eq!(status.sent as usize, reachable.len(), "{status:?}");
    assert_eq!(status.dup_sends, 0);
}

/// One round of the purchase race: 4 worker processes × 16 handlers start at once against a customer with no
/// numbers and 2,000 recipients, with a slow Twilio (250 ms a purchase). They must buy exactly ceil(2000 / 250) = 8,
/// send exactly one message per recipient and never exceed 250 per number.
pub async fn race_round<R: Store>(w: &World<R>, round: usize) {
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "20"]).await;
    let to = recipients(2_000, round * 10_000);
    let batch = w.bulk("acme", "Water is off Tuesday 9-11am.", &to, &[]).await;

    let mut workers: Vec<_> = (0..4).map(|_| w.worker(16)).collect();
    let status = w.wait_complete(&batch, Duration::from_secs(180)).await;

    let state = w.state();
    let per = per_recipient(&state);
    let busiest = max_in_window(&state, DAY);
    println!(
        "round {round}: numbers bought {}, purchase requests {}, messages {}, recipients {}, max per number {busiest}",
        owned_numbers(&state),
        state.purchase_requests,
        state.messages.len(),
        per.len()
    );
    assert_eq!(owned_numbers(&state), 8, "round {round}: numbers bought");
    assert_eq!(state.purchase_requests, 8, "round {round}: purchase requests");
    assert_eq!(per.len(), 2_000, "round {round}: recipients reached");
    assert!(per.values().all(|&n| n == 1), "round {round}: someone got two texts");
    assert!(busiest <= 250, "round {round}: a number sent {busiest} in the window");
    assert_eq!((status.sent, status.failed, status.dup_sends), (2_000, 0, 0));
    for p in &mut workers {
        assert!(p.is_running(), "a worker died:\n{}", p.log());
    }
}

/// The deferral at max numbers: max 2 numbers, quota 5, 15 recipients → 10 sent and 5 deferred, then the 5 go out
/// when the window frees their slots. Sampled atomically throughout: the counters always add up, and every
/// pending job is in exactly one of queue, schedule or in-flight.
pub async fn deferral_at_max_numbers<R: Store>(w: &mut World<R>) {
    w.env = w
        .env
        .clone()
        .set("MESSENGER_WINDOW_SECS", 4)
        .set("MESSENGER_DAILY_QUOTA", 5)
        .set("MESSENGER_CONVERSATIONAL_CAP", 5);
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "2"]).await;
    let batch = w.bulk("acme", "Capacity test", &recipients(15, 0), &[]).await;
    let id = BatchId::parse(&batch).unwrap();
    let k = CustomerKeys::new(id.customer());
    let _worker = w.worker(4);

    let mut conn = w.redis.conn().await;
    let mut saw_deferred = false;
    let mut samples = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (h, q, sched, inflight): (HashMap<String, String>, i64, i64, i64) = redis::pipe()
            .atomic()
            .hgetall(k.batch(&id))
            .llen(k.queue())
            .zcard(k.scheduled())
            .zcard(k.inflight())
            .query_async(&mut conn)
            .await
            .unwrap();
        let get = |f: &str| h.get(f).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let terminal = get("sent") + get("failed") + get("opted_out") + get("cancelled");
        let pending = get("total") - terminal;
        samples += 1;
        assert_eq!(get("total"), 15);
        assert!(pending >= 0 && get("deferred") >= 0 && get("deferred") <= pending, "{h:?}");
        assert_eq!(
            q + sched + inflight,
            pending,
            "jobs lost or duplicated: {h:?} q={q} sched={sched} inflight={inflight}"
        );
        if get("sent") == 10 && get("deferred") == 5 {
            saw_deferred = true;
        }
        if get("sent") == 15 {
            assert!(saw_deferred, "never saw 10 sent / 5 deferred");
            break;
        }
        assert!(Instant::now() < deadline, "did not finish: {h:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = w.wait_complete(&batch, Duration::from_secs(10)).await;
    let state = w.state();
    println!(
        "{samples} consistent samples; numbers {}; busiest number in any 4 s: {}",
        owned_numbers(&state),
        max_in_window(&state, Duration::from_secs(4))
    );
    assert_eq!((status.sent, status.deferred, status.failed), (15, 0, 0));
    assert_eq!(owned_numbers(&state), 2);
    assert!(max_in_window(&state, Duration::from_secs(4)) <= 5);
    assert!(per_recipient(&state).values().all(|&n| n == 1));
}

/// Kill -9 churn: while a batch of `n` is sending over 4 worker processes, a random worker is killed every 2.5 s
/// and a new one started. Killed workers' jobs come back when their leases expire; those that were mid-send are
/// resolved against Twilio before any resend. Every recipient gets exactly one text and no surplus number is bought.
pub async fn kill9_churn<R: Store>(w: &World<R>, n: usize) {
    kill9_churn_with(w, n, &[], &HashSet::new()).await;
}

/// [`kill9_churn`] for a customer added with `extra` options (carrier caps, say); `unreachable` are recipients
/// Messenger must not text (landlines), left out of the exactly-once check and of the numbers needed.
pub async fn kill9_churn_with<R: Store>(w: &World<R>, n: usize, extra: &[&str], unreachable: &HashSet<String>) {
    let mut args = vec!["customer", "add", "acme", "--max-numbers", "100"];
    args.extend_from_slice(extra);
    w.producer_ok(&args).await;
    let to = recipients(n, 0);
    let reachable: Vec<String> = to.iter().filter(|r| !unreachable.contains(*r)).cloned().collect();
    let batch = w.bulk("acme", "Chaos: kill -9", &to, &[]).await;
    let mut workers: Vec<_> = (0..4).map(|_| w.worker(8)).collect();

    let started = Instant::now();
    let mut kills = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let s = w.status(&batch).await;
        if s.is_complete() {
            break;
        }
        let i = rand::rng().random_range(0..workers.len());
        workers[i].kill9();
        workers[i] = w.worker(8);
        kills += 1;
        println!("kill #{kills} at {:.1}s: {} of {n} terminal", started.elapsed().as_secs_f64(), s.terminal());
        assert!(started.elapsed() < Duration::from_secs(600), "too slow: {s:?}");
    }
    let status = w.wait_complete(&batch, Duration::from_secs(60)).await;
    let state = w.state();
    let needed = reachable.len().div_ceil(250);
    println!(
        "{kills} kills; {} messages to {} recipients ({} reachable); {} numbers ({needed} needed); {:.1}s",
        state.messages.len(),
        per_recipient(&state).len(),
        reachable.len(),
        owned_numbers(&state),
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 5, "only {kills} kills: the batch finished too fast to prove anything");
    assert_exactly_once(&state, &reachable, &status);
    assert_eq!(state.messages.len(), reachable.len(), "a text to an unreachable recipient");
    assert_eq!(owned_numbers(&state), needed, "surplus or missing numbers");
}

/// Creates a Messaging Service in the simulator's main account; returns its sid.
pub async fn create_service(w: &World) -> String {
    let v: serde_json::Value = harness::http()
        .post(format!("{}/v1/Services", w.sim_base))
        .basic_auth(sim::DEFAULT_ACCOUNT_SID, Some(sim::DEFAULT_AUTH_TOKEN))
        .form(&[("FriendlyName", "Acme A2P")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["sid"].as_str().unwrap().to_owned()
}

/// Logs the operations endpoint's address (info) and otherwise only warnings.
pub const OPS_LOG: &str = "warn,worker::ops=info";

/// The address a worker started with `MESSENGER_WORKER_LISTEN=127.0.0.1:0` serves its operations endpoint on.
pub async fn ops_base(worker: &harness::procs::Proc) -> String {
    wait_until(Duration::from_secs(20), "the worker's operations endpoint", || async {
        let log = worker.log();
        let at = log.find("listening on http://")? + "listening on ".len();
        let end = at + log[at..].find([' ', '"'])?;
        Some(log[at..end].to_owned())
    })
    .await
}

pub async fn get(url: &str) -> Option<(u16, String)> {
    let resp = harness::http().get(url).send().await.ok()?;
    Some((resp.status().as_u16(), resp.text().await.ok()?))
}

/// One sample of a Prometheus text exposition, e.g. `messenger_worker_sent_total`.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub const ADMIN: &str = "admin-token-0123456789";
pub const APP_A: &str = "app-a-token-0123456789";
pub const APP_B: &str = "app-b-token-0123456789";

/// A producer server (in this process) over the world's Redis, with tokens for an admin and two scoped apps.
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

#[derive(clap::Parser)]
struct Common {
    #[command(flatten)]
    c: shared::config::CommonArgs,
}

pub async fn start_api(w: &World) -> Api {
    start_api_with(w, producer::server::webhooks::TokenPolicy::default()).await
}

/// Started the way `producer serve` starts ([`producer::server::Application`]), on a port bound first: the
/// address is the public URL the simulator signs webhooks for.
pub async fn start_api_with(w: &World, policy: producer::server::webhooks::TokenPolicy) -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let settings = <Common as clap::Parser>::parse_from([
        "x",
        "--redis-url",
        &w.redis.url(),
        "--twilio-auth-token",
        sim::DEFAULT_AUTH_TOKEN,
        "--twilio-account-sid",
        sim::DEFAULT_ACCOUNT_SID,
        "--twilio-api-base",
        &w.sim_base,
        "--twilio-messaging-api-base",
        &w.sim_base,
        "--twilio-lookups-api-base",
        &w.sim_base,
        "--secrets-key",
        harness::SECRETS_KEY,
    ])
    .c
    .settings()
    .unwrap();
    let tokens =
        producer::server::auth::Tokens::parse(&format!("ops:{ADMIN}:admin,appa:{APP_A}:acme,appb:{APP_B}:globex"))
            .unwrap();
    let config = producer::server::ServeConfig {
        public_url: Some(base.clone()),
        token_policy: policy,
        ..producer::server::ServeConfig::new(tokens)
    };
    let app = producer::server::Application::build_on(listener, settings, config).await.unwrap();
    tokio::spawn(app.run_until(std::future::pending()));
    Api { base, client: harness::http() }
}

impl Api {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut req = self.client.request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }
}

/// The form parameters of a status callback for message `sid` to `to`: `status`, with Twilio's 30007 when it is
/// `undelivered`.
pub fn status_params(sid: &str, to: &str, status: &str) -> Vec<(String, String)> {
    let mut p = vec![
        ("MessageSid".to_owned(), sid.to_owned()),
        ("MessageStatus".to_owned(), status.to_owned()),
        ("To".to_owned(), to.to_owned()),
    ];
    if status == "undelivered" {
        p.push(("ErrorCode".to_owned(), "30007".to_owned()));
    }
    p
}

/// The form parameters of an inbound-message webhook as Twilio sends them (main account).
pub fn inbound_params(from: &str, to: &str, body: &str, sid: &str) -> Vec<(String, String)> {
    [
        ("AccountSid", sim::DEFAULT_ACCOUNT_SID),
        ("Body", body),
        ("From", from),
        ("MessageSid", sid),
        ("SmsStatus", "received"),
        ("To", to),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}
