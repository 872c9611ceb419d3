//! The core: bulk texts from producer to Twilio with quota windows and race-free purchases.
//!
//! Every test talks to a private `redis-server` and runs the real `producer` and `worker` binaries as separate
//! processes against an in-process Twilio simulator; invariants are checked from the outside, in the simulator's
//! record of what was sent and bought.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::World;
use harness::fixtures::{owned_numbers, per_recipient, recipients, wait_until};
use harness::sim::SimConfig;
use redis::AsyncCommands;
use shared::batches::{self, NewBatch};
use shared::config::QuotaSettings;
use shared::contracts::{Committed, Committing, Reserved, Reserving};
use shared::customers::{self, Customer};
use shared::domain::{BatchId, CustomerId, MessageBody, PhoneNumber};
use shared::keys::CustomerKeys;
use shared::ledger::{Inbound, Job, Ledger, Reserve, ReserveMode, Rules};
use shared::purchase::{self, Bought};

use common::DAY;

/// Acceptance 2: 4 processes × 16 handlers race to buy numbers for 2,000 recipients with a slow Twilio; they buy
/// exactly ceil(2000 / 250) = 8, send exactly one message per recipient and never exceed 250 per number. Three
/// rounds, each on a fresh Redis and simulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_workers_buy_exactly_the_numbers_needed() {
    for round in 1..=3 {
        let w = World::start(SimConfig { purchase_latency_ms: 250, ..SimConfig::default() }).await;
        common::race_round(&w, round).await;
    }
}

/// Acceptance 3: the lock expires long before the purchase returns (TTL 100 ms, no renewal, purchase 400 ms), so
/// other workers do get the lock while a purchase is in flight; the purchase intent still stops them buying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_purchase_lock_buys_no_surplus_number() {
    let mut w = World::start(SimConfig { purchase_latency_ms: 400, ..SimConfig::default() }).await;
    w.env = w.env.clone().set("MESSENGER_LOCK_TTL_MS", 100).set("MESSENGER_LOCK_RENEW", "false");
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "20"]).await;
    let to = recipients(1_000, 0);
    let batch = w.bulk("acme", "Lock expiry drill", &to, &[]).await;

    // Watch Redis for the moment the race is real: a purchase in flight and the lock gone.
    let seen_expiry = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, done) = (seen_expiry.clone(), done.clone());
        let mut conn = w.redis.conn().await;
        let k = CustomerKeys::new(&CustomerId::parse("acme").unwrap());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let (intents, locked): (u32, bool) =
                    redis::pipe().atomic().hlen(k.intents()).exists(k.lock()).query_async(&mut conn).await.unwrap();
                if intents > 0 && !locked {
                    seen.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let _workers: Vec<_> = (0..4).map(|_| w.worker(16)).collect();
    let status = w.wait_complete(&batch, Duration::from_secs(120)).await;
    done.store(true, Ordering::SeqCst);
    watcher.await.unwrap();

    let state = w.state();
    println!(
        "numbers {}, purchase requests {}, lock seen expired mid-purchase: {}",
        owned_numbers(&state),
        state.purchase_requests,
        seen_expiry.load(Ordering::SeqCst)
    );
    assert!(seen_expiry.load(Ordering::SeqCst), "the lock never expired during a purchase: the test proved nothing");
    assert_eq!(owned_numbers(&state), 4);
    assert_eq!(state.purchase_requests, 4);
    assert_eq!(status.sent, 1_000);
    assert!(per_recipient(&state).values().all(|&n| n == 1));
}

/// A number only the pool knows of (not in the simulator), for tests that never send.
const POOL_NUMBER: &str = "+14152000001";

fn pool_number() -> Bought {
    Bought { number: POOL_NUMBER.into(), sid: "PN1".into() }
}

/// Sets up customer `acme` with `number` in its pool (max 1 number), and a batch of `n` recipients; returns the
/// fetched jobs.
async fn one_number_customer(w: &World, quota: QuotaSettings, n: usize, number: &Bought) -> (Ledger, Vec<Job>) {
    let mut conn = w.redis.conn().await;
    let id = CustomerId::parse("acme").unwrap();
    customers::upsert(&mut conn, &Customer::new(id.clone(), 1)).await.unwrap();
    purchase::commit_number(&mut conn, &id, number, "").await.unwrap();
    let to: Vec<PhoneNumber> = recipients(n, 0).iter().map(|r| PhoneNumber::parse(r).unwrap()).collect();
    let req = NewBatch::plain(id.clone(), MessageBody::parse("window test").unwrap(), to);
    batches::submit(&mut conn, &req, DAY, 100, None, None).await.unwrap();
    let ledger = Ledger::new(conn, quota, DAY);
    let jobs = ledger.fetch(&id, n, Duration::from_secs(60)).await.unwrap().jobs;
    (ledger, jobs)
}

fn reserved_on(r: &Reserve) -> Option<&str> {
    match r {
        Reserve::Reserved(s) => Some(s.number.as_str()),
        _ => None,
    }
}

/// Acceptance 4 (windows): with a 3-second window, quota 3 and cap 5, the reserve script admits 3, credits each
/// distinct inbound message (+1, repeats ignored) up to the cap, and gives capacity back as entries age out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_return_capacity_and_credit_replies_up_to_the_cap() {
    let w = World::start(SimConfig::default()).await;
    let quota = QuotaSettings { window: Duration::from_secs(3), daily_quota: 3, conversational_cap: 5 };
    let (ledger, jobs) = one_number_customer(&w, quota, 10, &pool_number()).await;
    let number = POOL_NUMBER;
    let id = CustomerId::parse("acme").unwrap();
    let fast = ReserveMode::Fast;

    // Three fit; the fourth finds the only number full (and the customer at max numbers).
    for j in &jobs[..3] {
        assert_eq!(reserved_on(&ledger.reserve(j, fast, None, &Rules::default()).await.unwrap()), Some(number));
    }
    let started = Instant::now();
    match ledger.reserve(&jobs[3], fast, None, &Rules::default()).await.unwrap() {
        Reserve::Full(f) => {
            assert!(f.at_max());
            // A slot counts for the window and its slack (30 ms of a 3 s window).
            let until_free = f.earliest_free_ms.unwrap() - f.now_ms;
            let span = (quota.window_ms() + quota.window_slack_ms()) as i64;
            assert!((2_000..=span).contains(&until_free), "earliest free in {until_free} ms");
        }
        other => panic!("expected full, got {other:?}"),
    }

    // A reply raises the limit by one; the same reply delivered twice counts once.
    assert_eq!(
        ledger.record_inbound(&id, number, "SMreply1").await.unwrap(),
        Inbound::Credited { received_in_window: 1 }
    );
    assert_eq!(
        ledger.record_inbound(&id, number, "SMreply1").await.unwrap(),
        Inbound::Duplicate { received_in_window: 1 }
    );
    assert!(reserved_on(&ledger.reserve(&jobs[3], fast, None, &Rules::default()).await.unwrap()).is_some());
    assert!(matches!(ledger.reserve(&jobs[4], fast, None, &Rules::default()).await.unwrap(), Reserve::Full(_)));

    // Three more replies would make 3 + 4 = 7, but the cap is 5: only one more send fits.
    for sid in ["SMreply2", "SMreply3", "SMreply4"] {
        ledger.record_inbound(&id, number, sid).await.unwrap();
    }
    assert!(reserved_on(&ledger.reserve(&jobs[4], fast, None, &Rules::default()).await.unwrap()).is_some());
    assert!(matches!(ledger.reserve(&jobs[5], fast, None, &Rules::default()).await.unwrap(), Reserve::Full(_)));
    let pool = customers::pool(&mut ledger.conn(), &id, &quota).await.unwrap().unwrap();
    assert_eq!((pool.numbers[0].sent, pool.numbers[0].received, pool.numbers[0].limit), (5, 4, 5));

    // Unknown numbers are not credited.
    assert_eq!(ledger.record_inbound(&id, "+19995550000", "SMx").await.unwrap(), Inbound::UnknownNumber);

    // Once the window has passed, every entry (sends and replies) has aged out: the quota is back to 3.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()) + Duration::from_millis(1_200)).await;
    for j in &jobs[5..8] {
        assert!(
            reserved_on(&ledger.reserve(j, fast, None, &Rules::default()).await.unwrap()).is_some(),
            "capacity did not return"
        );
    }
    assert!(matches!(ledger.reserve(&jobs[8], fast, None, &Rules::default()).await.unwrap(), Reserve::Full(_)));
}

/// The group calls of the hot path (reserve_many.lua, commit_many.lua): plain jobs get their slots in one call, in
/// the same number order as one at a time; every other case is left to reserve.lua ('slow') with nothing changed;
/// a customer whose settings need reserve.lua is answered 'rules'; the group commit records each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_call_reserves_plain_jobs_and_leaves_the_rest_to_the_single_path() {
    let w = World::start(SimConfig::default()).await;
    let quota = QuotaSettings { window: Duration::from_secs(600), daily_quota: 3, conversational_cap: 3 };
    let (ledger, jobs) = one_number_customer(&w, quota, 7, &pool_number()).await;
    let id = CustomerId::parse("acme").unwrap();
    let k = CustomerKeys::new(&id);
    let mut conn = ledger.conn();
    let _: () = conn.sadd(k.optouts(), jobs[1].recipient.as_str()).await.unwrap();
    let mut lost = jobs[6].clone();
    lost.lease.push_str("stale");
    let before: Vec<String> = conn.lrange(k.window(POOL_NUMBER), 0, -1).await.unwrap();
    assert!(before.is_empty());
    // Job 2's recipient is inside a quiet period; job 1 opted out; job 6's lease is not ours; the number takes 3.
    let quiet = "0,99999999999999,America/New_York";
    let group: Vec<Reserving<'_>> = [&jobs[0], &jobs[1], &jobs[2], &jobs[3], &jobs[4], &jobs[5], &lost]
        .into_iter()
        .enumerate()
        .map(|(i, job)| Reserving { job, quiet: if i == 2 { quiet } else { "" }, days: "", segments: 1, spend: "" })
        .collect();
    let (replies, confirmed) = ledger.reserve_many(&id, &group).await.unwrap();
    assert!(confirmed);
    let kinds: Vec<&str> = replies
        .iter()
        .map(|r| match r {
            Reserved::Slot(s) if s.number == POOL_NUMBER => "slot",
            Reserved::Slot(_) => "other number",
            Reserved::Slow => "slow",
            Reserved::Rules => "rules",
        })
        .collect();
    assert_eq!(kinds, ["slot", "slow", "slow", "slot", "slot", "slow", "slow"]);
    let window: Vec<String> = conn.lrange(k.window(POOL_NUMBER), 0, -1).await.unwrap();
    assert_eq!(window.len(), 3, "one entry per slot");
    // The slow jobs are untouched: reserve.lua decides them as it always did.
    for j in [&jobs[1], &jobs[2], &jobs[5]] {
        assert_eq!(ledger.job_state(j).await.unwrap(), None);
    }
    assert!(matches!(
        ledger.reserve(&jobs[1], ReserveMode::Fast, None, &Rules::default()).await.unwrap(),
        Reserve::OptedOut
    ));
    assert!(matches!(
        ledger.reserve(&jobs[5], ReserveMode::Fast, None, &Rules::default()).await.unwrap(),
        Reserve::Full(_)
    ));
    let rules = Rules { quiet: Arc::from(quiet), ..Rules::default() };
    assert!(matches!(ledger.reserve(&jobs[2], ReserveMode::Fast, None, &rules).await.unwrap(), Reserve::Quiet { .. }));

    // The group commit records each message once, and says so again for a retried commit.
    let sent: Vec<Committing<'_>> = [(0, "SMa"), (3, "SMb"), (4, "SMc")]
        .iter()
        .map(|&(i, sid)| Committing { job: &jobs[i], sid, from: POOL_NUMBER, body: Some("window test") })
        .collect();
    let first = ledger.commit_many(&id, &sent).await.unwrap();
    assert!(first.iter().all(|c| matches!(c, Committed::Recorded { .. })), "{first:?}");
    assert_eq!(ledger.commit_many(&id, &sent).await.unwrap(), vec![Committed::Already; 3]);
    assert_eq!(ledger.job_state(&jobs[3]).await.unwrap().as_deref(), Some("d|SMb"));
    let batch = shared::batches::status(&mut conn, &jobs[0].batch).await.unwrap().unwrap();
    assert_eq!((batch.sent, batch.opted_out), (3, 1));
    let unsent: i64 = conn.zcard(k.unsent()).await.unwrap();
    assert_eq!(unsent, 0, "every slot settled");
    // Sends quicker than the slack keep their entries: still three, none re-stamped or lost.
    let after: Vec<String> = conn.lrange(k.window(POOL_NUMBER), 0, -1).await.unwrap();
    assert_eq!(after, window);

    // A customer that requires consent needs reserve.lua's rules on every send.
    let _: () = conn.hset(k.cfg(), "consent", "1").await.unwrap();
    let (replies, _) = ledger
        .reserve_many(&id, &[Reserving { job: &jobs[5], quiet: "", days: "", segments: 1, spend: "" }])
        .await
        .unwrap();
    assert_eq!(replies, [Reserved::Rules]);
}

/// A group call counts the carriers' caps as reserve.lua does: with a per-second cap of 2, two of four jobs get slots
/// in one call, the cap's counter says 2, and the other two are left to reserve.lua, which holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_call_stops_at_a_carrier_cap() {
    let w = World::start(SimConfig::default()).await;
    let quota = QuotaSettings { window: Duration::from_secs(600), daily_quota: 10, conversational_cap: 10 };
    let (ledger, jobs) = one_number_customer(&w, quota, 4, &pool_number()).await;
    let id = CustomerId::parse("acme").unwrap();
    let k = CustomerKeys::new(&id);
    let mut conn = ledger.conn();
    let _: () = conn.hset(k.cfg(), "cap_mps", 2).await.unwrap();
    let group: Vec<Reserving<'_>> =
        jobs.iter().map(|job| Reserving { job, quiet: "", days: "", segments: 1, spend: "" }).collect();
    let (replies, _) = ledger.reserve_many(&id, &group).await.unwrap();
    let slots = replies.iter().filter(|r| matches!(r, Reserved::Slot(_))).count();
    assert_eq!(slots, 2, "{replies:?}");
    assert_eq!(replies[2..], [Reserved::Slow, Reserved::Slow]);
    let counted: Option<u32> = conn.hget(k.cfg(), "mps_n").await.unwrap();
    assert_eq!(counted, Some(2));
    match ledger.reserve(&jobs[2], ReserveMode::Fast, None, &Rules::default()).await.unwrap() {
        Reserve::Capped { cap, .. } => assert_eq!(cap, "per-second cap"),
        // The second turned between the two calls: the cap has room again.
        Reserve::Reserved(_) => {}
        other => panic!("expected the per-second cap to hold the job, got {other:?}"),
    }
}

/// Spend in the group call: each slot counts its text in the month's spend, in the call's one cfg write; a job that
/// would bring spend to the 80 % warning or past the limit is left to reserve.lua, which reports the warning, and
/// parks the job that would pass the limit (state S, the batch's `spend`, `spendwait`) without a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_call_counts_spend_and_leaves_the_limit_to_reserve_lua() {
    let w = World::start(SimConfig::default()).await;
    let quota = QuotaSettings { window: Duration::from_secs(600), daily_quota: 20, conversational_cap: 20 };
    let (ledger, jobs) = one_number_customer(&w, quota, 6, &pool_number()).await;
    let id = CustomerId::parse("acme").unwrap();
    let k = CustomerKeys::new(&id);
    let mut conn = ledger.conn();
    // $0.01 a segment, two-segment texts: $0.02 each; a limit of $0.09 (warning at $0.072).
    let terms = shared::spend::Terms {
        month: shared::spend::Month { name: "2026-12".into(), next_start_ms: 4_102_444_800_000 },
        prices: shared::spend::Prices { segment: shared::spend::Usd(10_000), ..Default::default() },
    }
    .encode();
    let _: () = conn.hset(k.cfg(), "spend_limit", 90_000).await.unwrap();
    let group: Vec<Reserving<'_>> =
        jobs.iter().map(|job| Reserving { job, quiet: "", days: "", segments: 2, spend: &terms }).collect();
    let (replies, _) = ledger.reserve_many(&id, &group).await.unwrap();
    let slots = replies.iter().filter(|r| matches!(r, Reserved::Slot(_))).count();
    // $0.02, $0.04, $0.06 go; $0.08 would reach the warning: reserve.lua's.
    assert_eq!(slots, 3, "{replies:?}");
    let spent: Option<i64> = conn.hget(k.cfg(), "spend_u").await.unwrap();
    assert_eq!(spent, Some(60_000));
    let rules = Rules { segments: 2, spend: Arc::from(terms.as_str()), ..Rules::default() };
    let fast = ReserveMode::Fast;
    assert!(matches!(ledger.reserve(&jobs[3], fast, None, &rules).await.unwrap(), Reserve::Reserved(_)));
    let warned: Option<String> = conn.hget(k.cfg(), "spend_w").await.unwrap();
    assert_eq!(warned.as_deref(), Some("2026-12"));
    // $0.10 would pass $0.09: parked, no slot, nothing more spent.
    match ledger.reserve(&jobs[4], fast, None, &rules).await.unwrap() {
        Reserve::Spend { due_ms } => assert_eq!(due_ms, 4_102_444_800_000),
        other => panic!("expected the spend limit to park the job, got {other:?}"),
    }
    let spent: Option<i64> = conn.hget(k.cfg(), "spend_u").await.unwrap();
    assert_eq!(spent, Some(80_000));
    assert!(ledger.job_state(&jobs[4]).await.unwrap().is_some_and(|s| s.starts_with("S|")));
    let waiting: Vec<String> = conn.smembers(k.spend_wait()).await.unwrap();
    assert_eq!(waiting.len(), 1);
    let status = shared::batches::status(&mut conn, &jobs[0].batch).await.unwrap().unwrap();
    assert_eq!(status.spend_limit, 1);
    // The group call leaves it alone too (the limit is reserve.lua's to decide).
    let (replies, _) = ledger
        .reserve_many(&id, &[Reserving { job: &jobs[5], quiet: "", days: "", segments: 2, spend: &terms }])
        .await
        .unwrap();
    assert_eq!(replies, [Reserved::Slow]);
}

/// Sticky senders: a recipient keeps hearing from the number that last texted them while it has capacity (so replies
/// land in one thread), even after the customer moved on to filling another number; a full number lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_keeps_its_sender_while_that_number_has_capacity() {
    let w = World::start(SimConfig::default()).await;
    let quota = QuotaSettings { window: Duration::from_secs(600), daily_quota: 3, conversational_cap: 3 };
    let id = CustomerId::parse("acme").unwrap();
    let mut conn = w.redis.conn().await;
    customers::upsert(&mut conn, &Customer::new(id.clone(), 2)).await.unwrap();
    for (n, sid) in [("+14152000001", "PN1"), ("+14152000002", "PN2")] {
        purchase::commit_number(&mut conn, &id, &Bought { number: n.into(), sid: sid.into() }, "").await.unwrap();
    }
    let ledger = Ledger::new(conn.clone(), quota, DAY);
    // One batch per message to the same recipient (a batch texts a recipient once).
    let next = |body: &'static str, to: String| {
        let (mut conn, ledger, id) = (conn.clone(), ledger.clone(), id.clone());
        async move {
            let req = NewBatch {
                priority: true,
                ..NewBatch::plain(id.clone(), MessageBody::parse(body).unwrap(), vec![PhoneNumber::parse(&to).unwrap()])
            };
            batches::submit(&mut conn, &req, DAY, 10, None, None).await.unwrap();
            let f = ledger.fetch(&id, 1, Duration::from_secs(60)).await.unwrap();
            let job = f.jobs[0].clone();
            match ledger.reserve(&job, ReserveMode::Fast, None, &Rules::default()).await.unwrap() {
                Reserve::Reserved(s) => s.number,
                other => panic!("{other:?}"),
            }
        }
    };
    let tenant = recipients(1, 0)[0].clone();
    let first = next("one", tenant.clone()).await;
    // The customer moves on: the other number becomes the one being filled.
    let other = if first == "+14152000001" { "+14152000002" } else { "+14152000001" };
    let _: () = redis::cmd("HSET")
        .arg(CustomerKeys::new(&id).cfg())
        .arg("current")
        .arg(other)
        .query_async(&mut ledger.conn())
        .await
        .unwrap();
    assert_eq!(next("two", tenant.clone()).await, first, "the tenant switched senders while the first had room");
    assert_eq!(next("three", tenant.clone()).await, first);
    // The first number is now full (quota 3): the tenant moves to the other one.
    assert_eq!(next("four", tenant.clone()).await, other);
    // And a new tenant goes to the number being filled.
    assert_eq!(next("five", recipients(1, 1)[0].clone()).await, other);
}

/// Acceptance 4 (Redis time): a worker whose clock says it is yesterday still keeps the quota, because windows
/// are scored with Redis's `TIME`. Had it scored sends with its own clock, every entry would already have aged
/// out and all 10 recipients would be texted from the one number allowed 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_windows_use_redis_time_not_the_workers_clock() {
    let mut w = World::start(SimConfig::default()).await;
    w.env = w
        .env
        .clone()
        .set("MESSENGER_WINDOW_SECS", 600)
        .set("MESSENGER_DAILY_QUOTA", 5)
        .set("MESSENGER_CONVERSATIONAL_CAP", 5);
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "1"]).await;
    let batch = w.bulk("acme", "Clock test", &recipients(10, 0), &[]).await;
    let worker = w
        .env
        .clone()
        .set("RUST_LOG", "warn,worker::run=info")
        .set("MESSENGER_LOG_FORMAT", "json")
        .worker_with_clock_offset("-1d", &["--concurrency", "4"]);
    // The worker really lives a day behind: its own log's timestamps (its clock) say so.
    let stamp = wait_until(Duration::from_secs(20), "the worker's first log line", || async {
        let log = worker.log();
        let line: serde_json::Value = serde_json::from_str(log.lines().next()?).ok()?;
        line["timestamp"].as_str()?.parse::<chrono::DateTime<chrono::Utc>>().ok()
    })
    .await;
    let behind = chrono::Utc::now() - stamp;
    println!("the worker's clock is {:.1} h behind", behind.num_seconds() as f64 / 3600.0);
    assert!((behind - chrono::TimeDelta::days(1)).num_seconds().abs() < 600, "worker clock behind by {behind}");

    let mut conn = w.redis.conn().await;
    let s = wait_until(Duration::from_secs(60), "5 sent and 5 deferred", || {
        let w = &w;
        let batch = batch.clone();
        async move { Some(w.status(&batch).await).filter(|s| s.sent == 5 && s.deferred == 5) }
    })
    .await;
    assert_eq!(s.sent, 5);
    // Give a clock-confused worker every chance to overrun, then look again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = w.status(&batch).await;
    assert_eq!((s.sent, s.deferred), (5, 5));
    assert_eq!(w.state().messages.len(), 5);

    // The window entries carry Redis's time, not the worker's (a day behind).
    let k = CustomerKeys::new(&CustomerId::parse("acme").unwrap());
    let numbers: Vec<String> = conn.zrange(k.pool(), 0, -1).await.unwrap();
    let entries: Vec<String> = conn.lrange(k.window(&numbers[0]), 0, -1).await.unwrap();
    let redis_now = customers::redis_now_ms(&mut conn).await.unwrap();
    assert_eq!(entries.len(), 5);
    for e in entries {
        let at: i64 = e.split(':').next().unwrap().parse().unwrap();
        assert!((redis_now - at).abs() < 60_000, "entry stamped {at}, Redis says {redis_now}");
    }
}

/// Acceptance 5: max 2 numbers, quota 5, 15 recipients → 10 sent and 5 deferred, then the 5 go out when the
/// window frees their slots; the counters add up and every pending job is in exactly one place throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_at_max_numbers_defers_then_sends_when_the_window_frees() {
    let mut w = World::start(SimConfig::default()).await;
    common::deferral_at_max_numbers(&mut w).await;
}

/// Acceptance 6: the same request with the same idempotency key enqueues once, and the key cannot be reused for
/// a different request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_enqueues_once() {
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme"]).await;
    let to = recipients(300, 0);
    let first = w.bulk("acme", "Once", &to, &["--idempotency-key", "rent-2026-12"]).await;
    let second = w.bulk("acme", "Once", &to, &["--idempotency-key", "rent-2026-12"]).await;
    assert_eq!(first, second);
    let mut conn = w.redis.conn().await;
    let k = CustomerKeys::new(&CustomerId::parse("acme").unwrap());
    let queued: i64 = conn.llen(k.queue()).await.unwrap();
    assert_eq!(queued, 300);

    let before = w.redis.digest();
    let file = harness::fixtures::write_recipients(&to);
    let out = w
        .producer(&[
            "bulk",
            "--customer",
            "acme",
            "--body",
            "Different",
            "--recipients",
            file.to_str().unwrap(),
            "--idempotency-key",
            "rent-2026-12",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different request"));
    assert_eq!(w.redis.digest(), before, "a rejected request changed Redis");

    let _worker = w.worker(16);
    let status = w.wait_complete(&first, Duration::from_secs(60)).await;
    assert_eq!(status.sent, 300);
    assert_eq!(w.state().messages.len(), 300);
}

/// Acceptance 6: a job delivered again after its send was recorded is not texted again. Recipient A's send is
/// recorded (as if a worker sent it and then crashed before acknowledging), then both jobs are handed back to the
/// queue; a real worker then texts only B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_delivered_again_after_its_send_was_recorded_does_not_text_again() {
    let w = World::start(SimConfig::default()).await;
    // The number must exist in the simulator, or the send to B would be refused.
    let twilio = harness::sim::client(&w.sim_base, harness::sim::DEFAULT_AUTH_TOKEN, Duration::from_secs(5));
    let bought = twilio
        .buy_number(
            twilio.account(),
            &shared::twilio::BuyNumber { area_code: Some("415"), friendly_name: "test", ..Default::default() },
        )
        .await
        .unwrap();
    let b = Bought { number: bought.phone_number.clone().unwrap(), sid: bought.sid.clone().unwrap() };
    let (ledger, jobs) = one_number_customer(&w, QuotaSettings::default(), 2, &b).await;
    let (a, b) = (&jobs[0], &jobs[1]);
    assert!(matches!(
        ledger.reserve(a, ReserveMode::Fast, None, &Rules::default()).await.unwrap(),
        Reserve::Reserved(_)
    ));
    ledger.commit_sent(a, "SMrecordedbeforethecrash", bought.phone_number.as_deref().unwrap(), None).await.unwrap();
    // Both jobs come back, as they would after a crash or a duplicate delivery.
    ledger.release(&a.customer, &[a.lease.clone(), b.lease.clone()]).await.unwrap();

    let _worker = w.worker(4);
    let status = w.wait_complete(&a.batch.to_string(), Duration::from_secs(30)).await;
    let per = per_recipient(&w.state());
    assert_eq!(per.get(b.recipient.as_str()), Some(&1));
    assert_eq!(per.get(a.recipient.as_str()), None, "A was texted again");
    assert_eq!((status.sent, status.dup_sends), (2, 0));
}

/// A worker whose lease expired, and whose job another worker then fetched, can no longer act for the job: its
/// renewal reports the job lost, its reserve is refused, and its reschedule does not put a second copy in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_cannot_act_for_the_job() {
    let w = World::start(SimConfig::default()).await;
    let quota = QuotaSettings { window: Duration::from_secs(600), daily_quota: 10, conversational_cap: 10 };
    let (ledger, jobs) = one_number_customer(&w, quota, 1, &pool_number()).await;
    let id = CustomerId::parse("acme").unwrap();
    let k = CustomerKeys::new(&id);
    // Worker A's lease (fetched by one_number_customer) runs out; worker B fetches the job again.
    let stale = jobs[0].clone();
    let mut conn = w.redis.conn().await;
    let _: () = conn.zadd(k.inflight(), &stale.lease, 0).await.unwrap();
    let b = ledger.fetch(&id, 1, Duration::from_secs(60)).await.unwrap();
    assert_eq!(b.jobs.len(), 1);
    assert_ne!(b.jobs[0].lease, stale.lease);

    assert_eq!(
        ledger.renew(&id, Duration::from_secs(60), std::slice::from_ref(&stale.lease)).await.unwrap(),
        vec![stale.lease.clone()]
    );
    assert_eq!(ledger.reserve(&stale, ReserveMode::Fast, None, &Rules::default()).await.unwrap(), Reserve::Lost);
    let requeued = ledger
        .requeue(&stale, shared::ledger::Requeue::Wait, shared::ledger::Due::In(Duration::ZERO), 0, "", None)
        .await
        .unwrap();
    assert_eq!(requeued, None);
    assert_eq!(ledger.release(&id, std::slice::from_ref(&stale.lease)).await.unwrap(), 0);
    let (queued, scheduled): (i64, i64) =
        redis::pipe().llen(k.queue()).zcard(k.scheduled()).query_async(&mut conn).await.unwrap();
    assert_eq!((queued, scheduled), (0, 0), "a second copy of the job was queued");
    // B still holds it and can send it.
    assert!(matches!(
        ledger.reserve(&b.jobs[0], ReserveMode::Fast, None, &Rules::default()).await.unwrap(),
        Reserve::Reserved(_)
    ));
}

/// Cancelling a batch whose producer died mid-enqueue ends it: the jobs never enqueued count as cancelled, and a
/// resubmission enqueues nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_half_enqueued_batch_completes_it() {
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme"]).await;
    let mut conn = w.redis.conn().await;
    let id = CustomerId::parse("acme").unwrap();
    let to: Vec<PhoneNumber> = recipients(10, 0).iter().map(|r| PhoneNumber::parse(r).unwrap()).collect();
    let req = NewBatch {
        idempotency_key: Some(shared::domain::IdempotencyKey::parse("half-1").unwrap()),
        ..NewBatch::plain(id.clone(), MessageBody::parse("half").unwrap(), to)
    };
    let receipt = batches::submit(&mut conn, &req, DAY, 4, None, None).await.unwrap();
    let batch = BatchId::parse(&receipt.batch_id).unwrap();
    // Pretend the producer died after the first chunk: 6 of 10 never enqueued.
    let _: () = redis::cmd("HSET")
        .arg(CustomerKeys::new(&id).batch(&batch))
        .arg("enqueued")
        .arg(4)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () =
        redis::cmd("LTRIM").arg(CustomerKeys::new(&id).queue()).arg(0).arg(3).query_async(&mut conn).await.unwrap();
    batches::cancel(&mut conn, &batch, DAY).await.unwrap();
    assert_eq!(batches::submit(&mut conn, &req, DAY, 4, None, None).await.unwrap().enqueued_now, 0);
    let _worker = w.worker(4);
    let s = w.wait_complete(&batch.to_string(), Duration::from_secs(30)).await;
    assert_eq!((s.cancelled, s.sent, s.total), (10, 0, 10));
    assert!(w.state().messages.is_empty());
}

/// Acceptance 7: bad input is rejected whole, with a message naming the problem, exit code 2, and no change at
/// all to Redis (`DEBUG DIGEST` before and after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_whole_and_changes_nothing() {
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme"]).await;
    let mut good = recipients(5, 0);
    let file_with_bad_line = {
        good.insert(2, "+1 (415) 55x-0100".into());
        harness::fixtures::write_recipients(&good)
    };
    let long_body = "a".repeat(1_601);
    let f = file_with_bad_line.to_str().unwrap();
    let ok_to = recipients(1, 100)[0].clone();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["bulk", "--customer", "acme", "--body", "hi", "--recipients", f], "line 3:"),
        (vec!["bulk", "--customer", "acme", "--body", "hi", "--to", &ok_to, "--to", "4155550100"], "--to #2:"),
        (vec!["bulk", "--customer", "acme", "--body", "", "--to", &ok_to], "message body is empty"),
        (vec!["bulk", "--customer", "acme", "--body", &long_body, "--to", &ok_to], "1601 characters"),
        (vec!["bulk", "--customer", "nobody", "--body", "hi", "--to", &ok_to], "unknown customer nobody"),
        (vec!["bulk", "--customer", "bad id!", "--body", "hi", "--to", &ok_to], "customer id"),
        (vec!["customer", "add", "acme", "--area-code", "12"], "area code"),
        (vec!["status", "acme.nope"], "batch id"),
        // Twilio does not know this account as a subaccount of ours.
        (
            vec!["customer", "add", "globex", "--account-sid", "AC11111111111111111111111111111111"],
            "is not an active subaccount of TWILIO_ACCOUNT_SID",
        ),
    ];
    let before = w.redis.digest();
    for (args, expected) in cases {
        let out = w.producer(&args).await;
        let err = String::from_utf8_lossy(&out.stderr);
        println!(
            "producer {} -> exit {:?}: {}",
            args.iter().take(3).cloned().collect::<Vec<_>>().join(" "),
            out.status.code(),
            err.trim()
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: expected {expected:?} in {err}");
        assert_eq!(w.redis.digest(), before, "{args:?} changed Redis");
    }
    // A real subaccount of ours is accepted.
    let twilio = harness::sim::client(&w.sim_base, harness::sim::DEFAULT_AUTH_TOKEN, Duration::from_secs(5));
    let sub = twilio.create_subaccount("Globex").await.unwrap().sid.unwrap();
    let out = w.producer_ok(&["customer", "add", "globex", "--account-sid", &sub]).await;
    assert!(out.contains("customer globex created"), "{out}");
}
