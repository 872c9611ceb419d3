//! An upgrade with a batch in flight (docs/DESIGN.md, "Upgrades"): the previous release's producer enqueues, its
//! workers send part and are stopped with SIGTERM, and this release's workers take over on the same Redis.
//!
//! The previous release's binaries are not part of this build: `scripts/upgrade-check [COMMIT]` builds them and runs
//! this test with `MESSENGER_PREVIOUS_BINS` set to their directory. Without it the test is skipped (ignored).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{World, assert_exactly_once};
use harness::fixtures::{owned_numbers, recipients, wait_until};
use harness::sim::SimConfig;
use redis::AsyncCommands;
use shared::domain::CustomerId;
use shared::keys::CustomerKeys;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the previous release's binaries: run by scripts/upgrade-check"]
async fn an_upgrade_with_a_batch_in_flight_texts_everyone_once() {
    let old = PathBuf::from(
        std::env::var("MESSENGER_PREVIOUS_BINS").expect("MESSENGER_PREVIOUS_BINS: see scripts/upgrade-check"),
    );
    let total = 20_000;
    let w = World::start(SimConfig { send_latency_ms: 20, ..SimConfig::default() }).await;
    let env = w.env.clone().set("MESSENGER_SHUTDOWN_TIMEOUT_SECS", 10);
    let old_producer = |args: &[&str]| {
        let mut cmd = Command::new(old.join("producer"));
        env.apply(&mut cmd);
        let out = cmd.args(args).stdin(Stdio::null()).output().expect("the previous release's producer");
        assert!(out.status.success(), "previous producer {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // The previous release: a customer without numbers, 20,000 texts, two workers buying and sending.
    tokio::task::block_in_place(|| old_producer(&["customer", "add", "acme", "--max-numbers", "200"]));
    let to = recipients(total, 0);
    let file = harness::fixtures::write_recipients(&to);
    let receipt = tokio::task::block_in_place(|| {
        old_producer(&[
            "bulk",
            "--customer",
            "acme",
            "--body",
            "Upgrade night",
            "--recipients",
            &file.display().to_string(),
            "--json",
        ])
    });
    let _ = std::fs::remove_file(&file);
    let batch = serde_json::from_str::<serde_json::Value>(&receipt).unwrap()["batch_id"].as_str().unwrap().to_owned();
    let mut old_workers: Vec<_> =
        (0..2).map(|_| env.spawn(Command::new(old.join("worker")), "old-worker", &["--concurrency", "32"])).collect();
    wait_until(Duration::from_secs(120), "the previous release to send part", || async {
        (w.state().messages.len() >= total / 4).then_some(())
    })
    .await;

    // Stop it the way the procedure says: SIGTERM, and wait for every old worker to exit.
    let stopped = Instant::now();
    for p in &old_workers {
        p.signal(libc::SIGTERM);
    }
    for p in &mut old_workers {
        let code = tokio::task::block_in_place(|| p.wait_timeout(Duration::from_secs(20)));
        assert_eq!(code, Some(Some(0)), "an old worker did not exit cleanly:\n{}", p.log());
    }
    let before = w.state();
    let mut conn = w.redis.conn().await;
    let k = CustomerKeys::new(&CustomerId::parse("acme").unwrap());
    let inflight: u32 = conn.zcard(k.inflight()).await.unwrap();
    println!(
        "the previous release sent {} of {total} with {} numbers ({} purchase requests) and stopped in {:.1} s; {inflight} in flight after",
        before.messages.len(),
        owned_numbers(&before),
        before.purchase_requests,
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(inflight, 0, "the old workers left jobs in flight");

    // This release takes over.
    let _new: Vec<_> = (0..2).map(|_| w.worker(32)).collect();
    let status = w.wait_complete(&batch, Duration::from_secs(180)).await;
    let after = w.state();
    assert_exactly_once(&after, &to, &status);
    let queued: u32 = conn.llen(k.queue()).await.unwrap();
    let scheduled: u32 = conn.zcard(k.scheduled()).await.unwrap();
    let inflight: u32 = conn.zcard(k.inflight()).await.unwrap();
    println!(
        "after the upgrade: {} texts to {} tenants, sent {}, {} numbers from {} purchase requests (minimum {}); queue {queued}, scheduled {scheduled}, in flight {inflight}",
        after.messages.len(),
        harness::fixtures::per_recipient(&after).len(),
        status.sent,
        owned_numbers(&after),
        after.purchase_requests,
        total.div_ceil(250)
    );
    assert_eq!((status.sent as usize, after.messages.len()), (total, total));
    assert_eq!(owned_numbers(&after), total.div_ceil(250), "a number was bought twice or not needed");
    assert_eq!(after.purchase_requests as usize, total.div_ceil(250));
    assert_eq!((queued, scheduled, inflight), (0, 0, 0), "a job was stranded");
}
