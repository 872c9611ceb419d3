//! Shared setup for the integration tests: a private Redis, an in-process Twilio simulator, and the environment
//! the real `producer` and `worker` binaries run with.

#![allow(dead_code)]

use std::process::Output;
use std::time::Duration;

use harness::fixtures::wait_until;
use harness::procs::{Env, Proc, stdout_of};
use harness::redis_server::{RedisOptions, TestRedis};
use harness::sim::{self, Sim, SimConfig, SimState};
use shared::batches::{self, BatchStatus};
use shared::domain::BatchId;

pub struct World {
    pub redis: TestRedis,
    pub sim: Sim,
    pub sim_base: String,
    pub env: Env,
}

impl World {
    pub async fn start(config: SimConfig) -> Self {
        Self::start_with(config, RedisOptions::default()).await
    }

    pub async fn start_with(config: SimConfig, options: RedisOptions) -> Self {
        let redis = TestRedis::start_with(options);
        let (sim, addr) = sim::spawn(config).await;
        let sim_base = format!("http://{addr}");
        let env = Env::new(&redis.url(), &sim_base)
            // Fast orphan recovery and quick ambiguity checks keep the tests short.
            .set("MESSENGER_TWILIO_TIMEOUT_MS", 3000)
            .set("MESSENGER_LEASE_SECS", 6)
            .set("MESSENGER_AMBIGUOUS_GRACE_MS", 1000)
            .set("MESSENGER_INTENT_STALE_SECS", 10)
            .set("MESSENGER_LOCK_TTL_MS", 2000)
            .set("MESSENGER_RECONCILE_SECS", 2)
            .set("MESSENGER_BACKOFF_BASE_MS", 100)
            .set("MESSENGER_BACKOFF_MAX_MS", 2000);
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
