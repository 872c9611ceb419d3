//! Numbers that pay for themselves: purchases sized to the backlog and made concurrently, idle numbers released
//! (safely, even when the releasing process is killed), Messaging Service (A2P 10DLC) senders, and the cost of a
//! bulk text before it is sent. Real worker and producer processes, a private Redis, the Twilio simulator.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{World, create_service};
use harness::fixtures::{max_in_window, owned_numbers, per_recipient, recipients, wait_until};
use harness::sim::{self, Faults, SimConfig};
use redis::AsyncCommands;
use serde_json::json;
use shared::domain::CustomerId;
use shared::keys::CustomerKeys;

fn acme() -> CustomerKeys {
    CustomerKeys::new(&CustomerId::parse("acme").unwrap())
}

/// A decision buys every number the backlog needs at once, and the purchases run concurrently: eight numbers
/// at 500 ms each land within one purchase latency of each other (strictly serial purchases would take 4 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_decision_buys_what_the_backlog_needs_concurrently() {
    let w = World::start(SimConfig { purchase_latency_ms: 500, ..Default::default() }).await;
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "20", "--area-code", "415"]).await;
    let batch = w.bulk("acme", "Water off Tuesday", &recipients(2_000, 0), &[]).await;
    let _workers: Vec<_> = (0..2).map(|_| w.worker(16)).collect();
    let status = w.wait_complete(&batch, Duration::from_secs(90)).await;
    let state = w.state();
    let mut bought: Vec<i64> = state.numbers.iter().map(|n| n.date_created.timestamp_millis()).collect();
    bought.sort_unstable();
    let spread = bought.last().unwrap() - bought.first().unwrap();
    println!(
        "sent {}, numbers {}, purchase requests {}, first to last purchase {spread} ms, busiest number {}",
        status.sent,
        owned_numbers(&state),
        state.purchase_requests,
        max_in_window(&state, Duration::from_secs(86_400))
    );
    assert_eq!(status.sent, 2_000);
    assert_eq!(owned_numbers(&state), 8);
    assert_eq!(state.purchase_requests, 8);
    assert!(spread < 500, "purchases did not overlap: {spread} ms from the first to the last");
    assert!(max_in_window(&state, Duration::from_secs(86_400)) <= 250);
}

/// Acceptance 2: a batch cancelled right after its purchases were decided buys no more numbers than were decided,
/// and no decision follows (the cancelled jobs still in the queue do not count as backlog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cancelled_after_the_decision_buys_no_more_than_decided() {
    let w = World::start(SimConfig { purchase_latency_ms: 1_500, ..Default::default() }).await;
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "20", "--area-code", "415"]).await;
    let batch = w.bulk("acme", "Cancelled soon", &recipients(3_000, 0), &[]).await;
    let _workers: Vec<_> = (0..2).map(|_| w.worker(16)).collect();
    let conn = w.redis.conn().await;
    // Intents plus numbers already in the pool: what the decision (or decisions) so far committed to buy.
    let decided = wait_until(Duration::from_secs(30), "a purchase decision", || {
        let mut conn = conn.clone();
        async move {
            let (intents, pool): (u64, u64) =
                redis::pipe().hlen(acme().intents()).zcard(acme().pool()).query_async(&mut conn).await.ok()?;
            (intents > 0).then_some(intents + pool)
        }
    })
    .await;
    w.producer_ok(&["cancel", &batch]).await;
    let status = w.wait_complete(&batch, Duration::from_secs(60)).await;
    // Give any stray decision time to happen.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let state = w.state();
    println!(
        "decided {decided} numbers, then cancelled: bought {}, purchase requests {}, sent {}, cancelled {}",
        owned_numbers(&state),
        state.purchase_requests,
        status.sent,
        status.cancelled
    );
    assert_eq!(decided, 12, "3,000 recipients at 250 per number");
    assert!(owned_numbers(&state) as u64 <= decided);
    assert!(state.purchase_requests <= decided);
    assert_eq!(status.sent + status.cancelled, 3_000);
}

/// Acceptance 3: after a burst on a 3 s window, a dry run lists the idle numbers and changes nothing; the real run
/// releases them in Twilio and takes them out of the pool and the inbound routing; a batch that arrives while a
/// release is under way is sent exactly once without overrunning any number; and a producer killed mid-release
/// leaves nothing both released and in the pool once a worker's reconciler has run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_numbers_are_released_without_loss_even_when_the_releaser_is_killed() {
    let mut w = World::start(SimConfig::default()).await;
    w.env = w.env.clone().set("MESSENGER_WINDOW_SECS", 3);
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "10", "--area-code", "415"]).await;
    let _workers: Vec<_> = (0..2).map(|_| w.worker(16)).collect();
    let burst = w.bulk("acme", "Burst", &recipients(1_000, 0), &[]).await;
    w.wait_complete(&burst, Duration::from_secs(60)).await;
    assert_eq!(owned_numbers(&w.state()), 4);

    // Sticky senders are remembered for two windows: a number is idle for release only after that.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let before = w.redis.digest();
    let dry = w.producer_ok(&["pool", "release-idle", "acme", "--idle-days", "0", "--dry-run", "--json"]).await;
    let dry: serde_json::Value = serde_json::from_str(&dry).unwrap();
    println!("dry run: {dry}");
    assert_eq!(dry["released"].as_array().unwrap().len(), 4);
    assert_eq!(w.redis.digest(), before, "the dry run changed Redis");
    assert_eq!(owned_numbers(&w.state()), 4);

    let real = w.producer_ok(&["pool", "release-idle", "acme", "--idle-days", "0"]).await;
    println!("{real}");
    let state = w.state();
    assert_eq!(owned_numbers(&state), 0, "the simulator still has numbers");
    let mut conn = w.redis.conn().await;
    let pool: Vec<String> = conn.zrange(acme().pool(), 0, -1).await.unwrap();
    let routed: HashMap<String, String> = conn.hgetall(shared::keys::NUMBERS).await.unwrap();
    assert!(pool.is_empty() && routed.is_empty(), "pool {pool:?}, inbound routing {routed:?}");

    // A batch arrives while a release is under way (each DELETE takes 2 s): it waits for the release's lock, then
    // buys what it needs; every recipient gets exactly one text and no number exceeds its quota.
    let again = w.bulk("acme", "Burst two", &recipients(1_000, 10_000), &[]).await;
    w.wait_complete(&again, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    w.sim.set_config(SimConfig { release_latency_ms: 2_000, ..w.sim.config() });
    let mut releaser = w.env.spawn_producer(&["pool", "release-idle", "acme", "--idle-days", "0"]);
    wait_until(Duration::from_secs(10), "the release to start", || {
        let mut conn = conn.clone();
        async move { (conn.hlen::<_, u64>(acme().releases()).await.ok()? > 0).then_some(()) }
    })
    .await;
    let during = recipients(500, 20_000);
    let during_batch = w.bulk("acme", "During release", &during, &[]).await;
    let status = w.wait_complete(&during_batch, Duration::from_secs(60)).await;
    assert_eq!(releaser.wait_timeout(Duration::from_secs(60)), Some(Some(0)), "the release failed: {}", releaser.log());
    let state = w.state();
    let texts = per_recipient(&state);
    let twice = during.iter().filter(|r| texts.get(*r).copied().unwrap_or(0) != 1).count();
    let busiest = max_in_window(&state, Duration::from_secs(3));
    println!(
        "batch during a release: sent {}, recipients not texted exactly once {twice}, busiest {busiest}",
        status.sent
    );
    assert_eq!((status.sent, twice), (500, 0));
    assert!(busiest <= 250, "a number sent {busiest} in one window");

    // kill -9 mid-release: DELETEs take 5 s; the producer dies while they are under way.
    tokio::time::sleep(Duration::from_secs(7)).await;
    w.sim.set_config(SimConfig { release_latency_ms: 5_000, ..w.sim.config() });
    let owned_before: HashSet<String> =
        w.state().numbers.iter().filter(|n| !n.released).map(|n| n.phone_number.clone()).collect();
    let mut releaser = w.env.spawn_producer(&["pool", "release-idle", "acme", "--idle-days", "0"]);
    wait_until(Duration::from_secs(10), "the release to start", || {
        let mut conn = conn.clone();
        async move { (conn.hlen::<_, u64>(acme().releases()).await.ok()? > 0).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    releaser.kill9();
    let pending: u64 = conn.hlen(acme().releases()).await.unwrap();
    println!(
        "producer killed mid-release: {pending} release intents pending, {} numbers owned before",
        owned_before.len()
    );
    assert!(pending > 0);
    // The workers' reconciler finishes the releases against Twilio.
    wait_until(Duration::from_secs(60), "the reconciler to finish the releases", || {
        let mut conn = conn.clone();
        async move { (conn.hlen::<_, u64>(acme().releases()).await.ok()? == 0).then_some(()) }
    })
    .await;
    let state = w.state();
    let pool: HashSet<String> =
        conn.zrange::<_, Vec<String>>(acme().pool(), 0, -1).await.unwrap().into_iter().collect();
    let released: HashSet<String> =
        state.numbers.iter().filter(|n| n.released).map(|n| n.phone_number.clone()).collect();
    let both: Vec<_> = pool.intersection(&released).collect();
    let in_pool_not_owned: Vec<_> =
        pool.iter().filter(|n| !owned_before.contains(*n) && !released.contains(*n)).collect();
    println!("after the reconciler: pool {}, released in Twilio {}, both {}", pool.len(), released.len(), both.len());
    assert!(both.is_empty(), "released yet in the pool: {both:?}");
    assert!(in_pool_not_owned.is_empty());
    assert!(pool.is_empty(), "every idle number was released: {pool:?}");
}

/// Acceptance 4: a customer with a Messaging Service on an account that enforces A2P: every number is attached
/// before its first send (the simulator's own record of when it was attached), even though the first three attach
/// requests and a fifth of the rest fail transiently (they are retried); every send carries the service; nothing
/// fails with 30034.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_are_attached_to_the_messaging_service_before_they_send() {
    let flaky = Faults { error_500: 0.2, ..Default::default() };
    let config = SimConfig { a2p_required: true, attach_faults: flaky, attach_fail_first: 3, ..Default::default() };
    let w = World::start(config).await;
    let service = create_service(&w).await;
    w.producer_ok(&[
        "customer",
        "add",
        "acme",
        "--max-numbers",
        "10",
        "--area-code",
        "415",
        "--messaging-service",
        &service,
    ])
    .await;
    let batch = w.bulk("acme", "Registered sender", &recipients(600, 0), &[]).await;
    let _workers: Vec<_> = (0..2).map(|_| w.worker(16)).collect();
    let status = w.wait_complete(&batch, Duration::from_secs(60)).await;
    let state = w.state();
    let attached: HashMap<&str, i64> = state
        .numbers
        .iter()
        .filter(|n| n.service_sid.as_deref() == Some(service.as_str()))
        .map(|n| (n.phone_number.as_str(), n.attached_at.unwrap().timestamp_millis()))
        .collect();
    let mut first_send: HashMap<&str, i64> = HashMap::new();
    for m in &state.messages {
        let t = first_send.entry(m.from.as_str()).or_insert(i64::MAX);
        *t = (*t).min(m.date_created.timestamp_millis());
    }
    println!(
        "sent {}; numbers {} attached {}; attach requests {} (the first 3 and 20% fail); first send after attach by {:?} ms",
        status.sent,
        owned_numbers(&state),
        attached.len(),
        state.attach_requests,
        first_send.iter().map(|(n, t)| t - attached.get(n).copied().unwrap_or(i64::MAX)).collect::<Vec<_>>()
    );
    assert_eq!(status.sent, 600);
    assert_eq!((owned_numbers(&state), attached.len()), (3, 3));
    assert!(state.attach_requests >= 6, "the failed attaches were not retried");
    for (number, sent_at) in &first_send {
        let at = attached.get(number).unwrap_or_else(|| panic!("{number} sent without being attached"));
        assert!(at <= sent_at, "{number} sent at {sent_at} before it was attached at {at}");
    }
    assert!(state.messages.iter().all(|m| m.messaging_service_sid.as_deref() == Some(service.as_str())));
    assert!(state.messages.iter().all(|m| m.error_code.is_none()), "a message failed (30034?)");

    // Released idle, the service keeps its last number (a 10DLC campaign without one for 60 days costs a fee).
    let plan = w.producer_ok(&["pool", "release-idle", "acme", "--idle-days", "0", "--dry-run", "--json"]).await;
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    println!("release-idle with a messaging service (dry run): {plan}");
    assert!(plan["kept"].as_u64().unwrap() >= 1, "{plan}");
}

/// A customer with a Messaging Service keeps its last number when idle numbers are released; one without releases
/// them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messaging_services_last_number_is_never_released() {
    let mut w = World::start(SimConfig::default()).await;
    w.env = w.env.clone().set("MESSENGER_WINDOW_SECS", 2);
    let service = create_service(&w).await;
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "10", "--messaging-service", &service]).await;
    w.producer_ok(&["customer", "add", "globex", "--max-numbers", "10"]).await;
    let _workers: Vec<_> = (0..2).map(|_| w.worker(16)).collect();
    let a = w.bulk("acme", "Registered", &recipients(600, 0), &[]).await;
    let g = w.bulk("globex", "Bare", &recipients(600, 10_000), &[]).await;
    w.wait_complete(&a, Duration::from_secs(60)).await;
    w.wait_complete(&g, Duration::from_secs(60)).await;
    // Sticky senders are remembered for two windows: idle only after that.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let released = |out: String| -> usize {
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["released"].as_array().unwrap().len()
    };
    let acme_out = w.producer_ok(&["pool", "release-idle", "acme", "--idle-days", "0", "--json"]).await;
    let globex_out = w.producer_ok(&["pool", "release-idle", "globex", "--idle-days", "0", "--json"]).await;
    let mut conn = w.redis.conn().await;
    let acme_left: Vec<String> = conn.zrange(acme().pool(), 0, -1).await.unwrap();
    let globex_left: u64 = conn.zcard(CustomerKeys::new(&CustomerId::parse("globex").unwrap()).pool()).await.unwrap();
    println!(
        "released: acme (service) {} keeping {}, globex (none) {} keeping {globex_left}",
        released(acme_out),
        acme_left.len(),
        released(globex_out)
    );
    assert_eq!(acme_left.len(), 1, "the service lost its last number");
    assert_eq!(globex_left, 0);
}

/// Acceptance 4: Twilio refuses the 401st number of a Messaging Service (21714). The number Messenger bought for it
/// is released (not left costing money), the job is deferred with a reason that says so, and later decisions do
/// not buy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_401st_number_is_refused_and_the_job_deferred_with_the_reason() {
    let mut w = World::start(SimConfig::default()).await;
    let service = create_service(&w).await;
    // Fill the service with 400 numbers bought outside Messenger.
    let twilio = sim::client(&w.sim_base, sim::DEFAULT_AUTH_TOKEN, Duration::from_secs(5));
    let main = twilio.account().clone();
    for _ in 0..400 {
        let req = shared::twilio::BuyNumber { area_code: Some("650"), friendly_name: "other", ..Default::default() };
        let n = twilio.buy_number(&main, &req).await.unwrap();
        twilio.attach_number(&service, n.sid.as_deref().unwrap()).await.unwrap();
    }
    // Messenger is told the limit is higher than Twilio's, so it does try (and Twilio refuses).
    w.env = w.env.clone().set("MESSENGER_SERVICE_MAX_NUMBERS", 1_000);
    w.producer_ok(&["customer", "add", "acme", "--area-code", "415", "--messaging-service", &service]).await;
    let batch = w.bulk("acme", "No room", &recipients(5, 0), &[]).await;
    let _worker = w.worker(4);
    let id = shared::domain::BatchId::parse(&batch).unwrap();
    let conn = w.redis.conn().await;
    let status = wait_until(Duration::from_secs(30), "the jobs to be deferred", || {
        let mut conn = conn.clone();
        let id = id.clone();
        async move { shared::batches::status(&mut conn, &id).await.ok().flatten().filter(|s| s.deferred == 5) }
    })
    .await;
    let shown = w.producer_ok(&["status", &batch]).await;
    let requests_then = w.state().purchase_requests;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state = w.state();
    let ours: Vec<_> = state.numbers.iter().filter(|n| n.friendly_name.starts_with("msgr:acme:")).collect();
    println!("{shown}");
    println!(
        "numbers bought for acme {}, still owned {}, purchase requests {} then {} three seconds later",
        ours.len(),
        ours.iter().filter(|n| !n.released).count(),
        requests_then,
        state.purchase_requests
    );
    let reason = status.deferred_reason.unwrap_or_default();
    assert!(reason.contains("21714"), "{reason}");
    assert!(shown.contains("21714"), "{shown}");
    assert_eq!(ours.len(), 1, "exactly one number was bought and refused");
    assert!(ours.iter().all(|n| n.released), "the refused number was not released");
    assert_eq!(state.purchase_requests - requests_then, 0, "later decisions bought again");
    assert_eq!(state.numbers.iter().filter(|n| n.service_sid.as_deref() == Some(service.as_str())).count(), 400);
}

/// Acceptance 5: a dry run of a 1,000-recipient file with a curly-quoted 160-character body says UCS-2, 3 segments,
/// which characters forced it, and what it would cost; with `--smart-encoding` GSM-7, 1 segment. Redis is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_shows_encoding_segments_and_cost_and_changes_nothing() {
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "20"]).await;
    let body = format!(
        "\u{201C}{}\u{201D}",
        "Water will be off Tuesday 9-11am for repairs. ".repeat(4).chars().take(158).collect::<String>()
    );
    assert_eq!(body.chars().count(), 160);
    let file = harness::fixtures::write_recipients(&recipients(1_000, 0));
    let f = file.to_str().unwrap();
    let before = w.redis.digest();
    let started = Instant::now();
    let plain = w.producer_ok(&["bulk", "--customer", "acme", "--body", &body, "--recipients", f, "--dry-run"]).await;
    println!("{plain}");
    let smart = w
        .producer_ok(&[
            "bulk",
            "--customer",
            "acme",
            "--body",
            &body,
            "--recipients",
            f,
            "--dry-run",
            "--smart-encoding",
        ])
        .await;
    println!("{smart}");
    let json =
        w.producer_ok(&["bulk", "--customer", "acme", "--body", &body, "--recipients", f, "--dry-run", "--json"]).await;
    println!("three dry runs in {:?}", started.elapsed());
    assert_eq!(w.redis.digest(), before, "a dry run changed Redis");
    assert!(plain.contains("UCS-2, 3 segment(s)"), "{plain}");
    assert!(plain.contains("U+201C \u{201C}") && plain.contains("U+201D \u{201D}"), "{plain}");
    assert!(plain.contains("would buy 4"), "{plain}");
    assert!(smart.contains("UCS-2 3 -> GSM-7 1 segment(s)"), "{smart}");
    assert!(smart.contains("GSM-7, 1 segment(s)"), "{smart}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((v["recipients"].as_u64(), v["segments_total"].as_u64()), (Some(1_000), Some(3_000)));
    assert_eq!(v["messages_cost"], 24.9);
    assert_eq!(v["purchases"], 4);
}

/// What the simulator saw sending and buying, at $0.01 a segment and $1.00 a number, in dollars.
fn simulator_cost(state: &harness::sim::SimState) -> f64 {
    let segments: u64 = state.messages.iter().map(|m| m.num_segments.max(1) as u64).sum();
    segments as f64 * 0.01 + state.numbers.len() as f64 * 1.00
}

/// Spend-limit acceptance: 1,000 one-segment texts under a $6.00 limit at $0.01 a segment and $1.00 a number, two
/// workers of 32 handlers each, purchases on. `kill` kills one worker with SIGKILL while texts are going.
async fn spend_limit_round(kill: bool) {
    let mut w = World::start(SimConfig::default()).await;
    w.env = w
        .env
        .clone()
        .set("MESSENGER_SEGMENT_COST", "0.01")
        .set("MESSENGER_NUMBER_MONTHLY_COST", "1.00")
        .set("MESSENGER_CARRIER_FEES", "");
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "20", "--monthly-spend-limit", "6.00"]).await;
    let to = recipients(1_000, 0);
    let batch = w.bulk("acme", "Water off Tuesday 9-11. Reply STOP to opt out", &to, &[]).await;
    let mut workers: Vec<_> = (0..2).map(|_| w.worker(32)).collect();
    if kill {
        wait_until(Duration::from_secs(60), "the first texts", || {
            let n = w.state().messages.len();
            async move { (n >= 50).then_some(()) }
        })
        .await;
        workers[0].kill9();
        workers[0] = w.worker(32);
    }
    // Every text either sent or waiting for the limit, and nothing moving.
    let status = wait_until(Duration::from_secs(120), "every text sent or waiting for the spend limit", || {
        let w = &w;
        let batch = batch.clone();
        async move {
            let s = w.status(&batch).await;
            (s.sent + s.spend_limit == 1_000 && s.queued == 0).then_some(s)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = w.state();
    let used: HashSet<&str> = state.messages.iter().map(|m| m.from.as_str()).collect();
    let cost = simulator_cost(&state);
    let pool = w.producer_ok(&["pool", "acme"]).await;
    let spend_line = pool.lines().find(|l| l.contains("spend this month")).unwrap_or_default().to_owned();
    println!(
        "limit $6.00{}: simulator saw {} texts + {} numbers = ${cost:.2}; {} waiting ({:?}); {}",
        if kill { ", a worker killed" } else { "" },
        state.messages.len(),
        state.numbers.len(),
        status.spend_limit,
        status.waiting_at(0).iter().find(|l| l.contains("spend limit")),
        spend_line.trim()
    );
    assert!(cost <= 6.0 + 1e-9, "spent ${cost:.2} past the $6.00 limit");
    assert!(state.messages.len() >= 300, "only {} texts: the limit was not used", state.messages.len());
    assert_eq!(w.status(&batch).await.sent as usize, state.messages.len(), "texts sent after the wait began");
    assert!(state.numbers.iter().all(|n| used.contains(n.phone_number.as_str())), "a number bought and never used");
    assert!(per_recipient(&state).values().all(|&n| n == 1), "a tenant texted twice");
    assert!(status.spend_limit > 0);
    assert!(status.waiting_at(0).iter().any(|l| l.contains("spend limit")), "{:?}", status.waiting_at(0));
    assert!(spend_line.contains("of a $6.00 limit"), "{pool}");
    let cfg: HashMap<String, String> = w.redis.conn().await.hgetall(acme().cfg()).await.unwrap();
    assert!(cfg.get("spend_w").is_some_and(|m| !m.is_empty()), "no 80 % warning recorded: {cfg:?}");
    assert!(cfg.get("spend_r").is_some_and(|m| !m.is_empty()), "no limit reached recorded: {cfg:?}");

    // Raised to $20: the waiting texts go at once, each tenant exactly once.
    w.producer_ok(&["customer", "add", "acme", "--monthly-spend-limit", "20"]).await;
    let done = w.wait_complete(&batch, Duration::from_secs(120)).await;
    let state = w.state();
    let used: HashSet<&str> = state.messages.iter().map(|m| m.from.as_str()).collect();
    let cost = simulator_cost(&state);
    println!(
        "raised to $20: {} texts to {} tenants, {} numbers, ${cost:.2} in all",
        state.messages.len(),
        per_recipient(&state).len(),
        state.numbers.len()
    );
    assert_eq!(done.sent, 1_000);
    assert_eq!(state.messages.len(), 1_000);
    assert!(per_recipient(&state).values().all(|&n| n == 1), "a tenant texted twice");
    assert!(cost <= 20.0 + 1e-9);
    assert!(state.numbers.iter().all(|n| used.contains(n.phone_number.as_str())), "a number bought and never used");
    drop(workers);
}

/// A monthly spend limit no race passes: what the simulator saw never costs more than the limit, no bought number
/// is left unused, the rest waits with the reason; raising the limit sends each tenant exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_spend_limit_holds_under_racing_workers_and_raising_it_sends_the_rest_once() {
    spend_limit_round(false).await;
}

/// The same with a worker killed (SIGKILL) while texts are going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_spend_limit_holds_through_a_killed_worker() {
    spend_limit_round(true).await;
}

/// Bad limits are refused with the reason, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_spend_limit_is_refused_and_changes_nothing() {
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme", "--monthly-spend-limit", "6"]).await;
    let before = w.redis.digest();
    for (bad, says) in
        [("-5", "negative"), ("six", "not an amount"), ("0.0000001", "six decimals"), ("1e3", "not an amount")]
    {
        let arg = format!("--monthly-spend-limit={bad}");
        let out = w.producer(&["customer", "add", "acme", &arg]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        println!("--monthly-spend-limit {bad}: exit {:?}: {}", out.status.code(), err.trim());
        assert!(!out.status.success());
        assert!(err.contains("--monthly-spend-limit") && err.contains(says), "{err}");
        assert_eq!(w.redis.digest(), before, "{bad} changed something");
    }
    let shown = w.producer_ok(&["customer", "list"]).await;
    assert!(shown.contains("spend limit $6.00/month"), "{shown}");

    // The API: the same rule, the same words; a good change shows on the customer and its pool.
    let api = common::start_api(&w).await;
    for bad in [json!(-5), json!("six"), json!(true)] {
        let (s, e) =
            api.call("PUT", "/v1/customers/acme", Some(common::ADMIN), Some(json!({"monthly_spend_limit": bad}))).await;
        println!("PUT monthly_spend_limit {bad}: {s} {}", e["error"]["message"]);
        assert_eq!(s, 422, "{e}");
        assert!(e.to_string().contains("monthly_spend_limit"), "{e}");
        assert_eq!(w.redis.digest(), before, "{bad} changed something");
    }
    let (s, c) =
        api.call("PUT", "/v1/customers/acme", Some(common::ADMIN), Some(json!({"monthly_spend_limit": 12.5}))).await;
    assert_eq!((s.as_u16(), c["monthly_spend_limit"].as_f64()), (200, Some(12.5)), "{c}");
    let (s, pool) = api.call("GET", "/v1/customers/acme/pool", Some(common::ADMIN), None).await;
    assert_eq!(s, 200, "{pool}");
    assert_eq!((pool["monthly_spend_limit"].as_f64(), pool["spend_this_month"].as_f64()), (Some(12.5), Some(0.0)));
    let (_, c) =
        api.call("PUT", "/v1/customers/acme", Some(common::ADMIN), Some(json!({"monthly_spend_limit": "none"}))).await;
    assert!(c["monthly_spend_limit"].is_null(), "{c}");
}

/// A customer on US long codes without a Messaging Service is warned (`customer add`, the dry run), and refused when
/// `MESSENGER_REQUIRE_A2P=true`, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_without_a_messaging_service_is_warned_or_refused() {
    let mut w = World::start(SimConfig::default()).await;
    let out = w.producer(&["customer", "add", "acme"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("customer add without a service: exit {:?}, {}", out.status.code(), err.trim());
    assert!(out.status.success() && err.contains("no Messaging Service"), "{err}");
    let dry = w
        .producer_ok(&["bulk", "--customer", "acme", "--body", "Hello", "--to", "+14155550100", "--dry-run", "--json"])
        .await;
    assert!(dry.contains("no Messaging Service"), "{dry}");
    w.env = w.env.clone().set("MESSENGER_REQUIRE_A2P", "true");
    let before = w.redis.digest();
    let out = w.producer(&["customer", "add", "globex"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("with MESSENGER_REQUIRE_A2P=true: exit {:?}, {}", out.status.code(), err.trim());
    assert!(!out.status.success() && err.contains("MESSENGER_REQUIRE_A2P"), "{err}");
    assert_eq!(w.redis.digest(), before);
    let service = create_service(&w).await;
    w.producer_ok(&["customer", "add", "globex", "--messaging-service", &service]).await;
}
