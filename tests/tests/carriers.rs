//! The carriers' limits, judged from the simulator's record of what it received and when: T-Mobile's daily cap
//! and AT&T's per-minute cap hold, landlines are never texted, a cap spent on another platform holds texts after the
//! first refusals, lookups are cached and retried, and no number is bought that the sendable texts do not need.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{ADMIN, World, start_api};
use harness::fixtures::{owned_numbers, per_recipient, recipients};
use harness::sim::carriers::Line;
use harness::sim::{Faults, SimConfig, SimState};
use reqwest::StatusCode;
use serde_json::json;

const DAY_SECS: i64 = 40;

/// The sim's line of each recipient.
fn lines(w: &World, to: &[String]) -> HashMap<String, Line> {
    to.iter().map(|n| (n.clone(), Line::of(&w.sim, n))).collect()
}

/// The most texts to `line` in any `span` of the simulator's clock.
fn busiest_span(state: &SimState, lines: &HashMap<String, Line>, line: Line, span_ms: i64) -> usize {
    let mut t: Vec<i64> = state
        .messages
        .iter()
        .filter(|m| lines.get(&m.to) == Some(&line))
        .map(|m| m.date_created.timestamp_millis())
        .collect();
    t.sort_unstable();
    let (mut best, mut lo) = (0, 0);
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= span_ms {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Issue 19, acceptance 1 (at a size CI runs; `scripts/carrier-study` runs the full 6,000 recipients): a T-Mobile
/// cap of 200 a day (the day brought forward to 40 s by MESSENGER_CAP_DAY_SECS) and AT&T's 200 a minute (about 330
/// AT&T recipients: the cap binds once, and the run ends early in its second minute). Exactly 200 T-Mobile texts
/// before the cap first renews, the rest after; no 60-second span of the simulator's clock with more than 200 AT&T
/// texts; no landline texted; numbers bought = what the sendable texts needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_keep_under_the_carriers_caps_and_numbers_follow_what_could_be_sent() {
    caps_run(1_000, 200, 200, 50).await;
}

/// The full-size study of acceptance 1: 6,000 recipients, T-Mobile 1,000 a day, AT&T 240 a minute, 250 a number
/// (about 9 minutes: AT&T's 2,100 texts at 240 a minute). `cargo test -p messenger-tests --test carriers --
/// --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 9 minutes; run by scripts/carrier-study"]
async fn the_full_size_carrier_study() {
    caps_run(6_000, 1_000, 240, 250).await;
}

async fn caps_run(n: usize, tmobile: u64, att: u64, quota_about: u32) {
    let mut w = World::start(SimConfig { carriers: true, ..SimConfig::default() }).await;
    let to = recipients(n, 0);
    let line = lines(&w, &to);
    let count = |l: Line| line.values().filter(|x| **x == l).count();
    let (tmo, att_n, landlines) = (count(Line::TMobile), count(Line::Att), count(Line::Landline));
    let sendable = n - landlines;
    // A quota near the one asked for at which the sendable texts need fewer numbers than all of them would: the
    // count of numbers then tells whether landlines or held texts were bought for.
    let quota = (quota_about..quota_about * 2)
        .find(|q| sendable.div_ceil(*q as usize) < n.div_ceil(*q as usize))
        .unwrap_or(quota_about);
    // Held T-Mobile texts come back right after a (40 s) day renews, not spread over the ten minutes after midnight.
    w.env = w
        .env
        .clone()
        .set("MESSENGER_CAP_DAY_SECS", DAY_SECS)
        .set("MESSENGER_QUIET_SPREAD_SECS", 2)
        .set("MESSENGER_DAILY_QUOTA", quota)
        .set("MESSENGER_CONVERSATIONAL_CAP", quota.max(1_000));
    let (t, a) = (tmobile.to_string(), att.to_string());
    let customer =
        ["customer", "add", "acme", "--max-numbers", "200", "--tmobile-daily-cap", &t, "--att-per-minute", &a];
    w.producer_ok(&customer).await;
    // Start at the beginning of a carrier day, so the first day has the time to reach its cap.
    while chrono::Utc::now().timestamp_millis().rem_euclid(DAY_SECS * 1000) > 3_000 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let batch = w.bulk("acme", "Carrier caps: building notice", &to, &[]).await;
    let _workers: Vec<_> = (0..2).map(|_| w.worker(16)).collect();
    let status = w.wait_complete(&batch, Duration::from_secs(60 * 20)).await;
    let state = w.state();

    // T-Mobile texts per carrier day (days are DAY_SECS long, counted from the Unix epoch, as the workers count).
    let day = |ms: i64| ms.div_euclid(DAY_SECS * 1000);
    let mut per_day: Vec<(i64, usize)> = Vec::new();
    let mut tmo_times: Vec<i64> = state
        .messages
        .iter()
        .filter(|m| line.get(&m.to) == Some(&Line::TMobile))
        .map(|m| m.date_created.timestamp_millis())
        .collect();
    tmo_times.sort_unstable();
    for t in &tmo_times {
        match per_day.last_mut() {
            Some((d, c)) if *d == day(*t) => *c += 1,
            _ => per_day.push((day(*t), 1)),
        }
    }
    let busiest_att = busiest_span(&state, &line, Line::Att, 60_000);
    let to_landlines = state.messages.iter().filter(|m| line.get(&m.to) == Some(&Line::Landline)).count();
    let refused = state.messages.iter().filter(|m| m.error_code.is_some()).count();
    let numbers = owned_numbers(&state);
    println!(
        "{n} recipients: {tmo} T-Mobile, {att_n} AT&T, {landlines} landlines; T-Mobile texts per carrier day {:?} \
         (cap {tmobile}); busiest 60 s of AT&T {busiest_att} (cap {att}); texts to landlines {to_landlines}; refused \
         by carriers {refused}; numbers bought {numbers} for {sendable} sendable texts (ceil {} ; ceil of all {n}: {}); \
         {:.0}s",
        per_day.iter().map(|(_, c)| c).collect::<Vec<_>>(),
        sendable.div_ceil(quota as usize),
        n.div_ceil(quota as usize),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(per_day.first().map(|d| d.1), Some(tmobile as usize), "T-Mobile texts before the cap first renewed");
    assert!(per_day.iter().all(|(_, c)| *c as u64 <= tmobile), "a T-Mobile day over its cap: {per_day:?}");
    assert_eq!(tmo_times.len(), tmo, "every T-Mobile recipient texted in the end");
    assert!(busiest_att as u64 <= att, "{busiest_att} AT&T texts in 60 s");
    assert_eq!(to_landlines, 0);
    assert_eq!(refused, 0, "a text was refused by a carrier");
    assert_eq!((status.sent as usize, status.failed as usize), (sendable, landlines));
    assert_eq!(status.failure_reasons.get("unreachable: landline").copied(), Some(landlines as u64));
    assert_eq!(numbers, sendable.div_ceil(quota as usize), "numbers bought vs what the sendable texts needed");
    assert!(per_recipient(&state).values().all(|c| *c == 1));
}

/// Issue 19, acceptance 2: the brand's T-Mobile day is already used on another platform (the simulator refuses
/// every T-Mobile text with 30023, through its status callback). Messenger stops texting T-Mobile recipients after
/// the first refusals, holds them, and buys no number for them meanwhile: the numbers bought are what the texts
/// that went needed (100 a number here), not what the whole batch would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brand_spent_elsewhere_holds_t_mobile_texts_after_the_first_refusals() {
    let mut w = World::start(SimConfig { carriers: true, tmobile_daily_cap: Some(0), ..SimConfig::default() }).await;
    let api = start_api(&w).await;
    w.env = w
        .env
        .clone()
        .set("MESSENGER_PUBLIC_URL", &api.base)
        .set("MESSENGER_DAILY_QUOTA", 100)
        .set("MESSENGER_CONVERSATIONAL_CAP", 1_000);
    w.producer_ok(&["customer", "add", "acme", "--lookup", "on", "--max-numbers", "20"]).await;
    let to = recipients(600, 0);
    let line = lines(&w, &to);
    let tmo = line.values().filter(|l| **l == Line::TMobile).count();
    let batch = w.bulk("acme", "Spent elsewhere", &to, &[]).await;
    let _worker = w.worker(8);
    // Wait for the batch to settle: every job terminal but the held T-Mobile ones.
    let settled = harness::fixtures::wait_until(Duration::from_secs(60), "the batch to settle", || async {
        let s = w.status(&batch).await;
        (s.capped > 0 && s.queued == 0 && s.sent + s.failed + s.capped == s.total).then_some(s)
    })
    .await;
    let state = w.state();
    let refusals: Vec<_> = state.messages.iter().filter(|m| m.error_code == Some(30023)).collect();
    let last_refusal = refusals.iter().map(|m| m.date_created).max().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = w.state();
    let tmo_after = later
        .messages
        .iter()
        .filter(|m| line.get(&m.to) == Some(&Line::TMobile) && m.date_created > last_refusal)
        .count();
    let status = w.status(&batch).await;
    let cli = w.producer_ok(&["status", &batch]).await;
    let needed = (status.sent as usize).div_ceil(100);
    println!(
        "{tmo} T-Mobile recipients: {} refused with 30023 before Messenger held the rest; {} held ({:?}); T-Mobile \
         texts after the last refusal {tmo_after}; numbers bought {} for the {} texts sent (they needed {needed}; the \
         whole batch's {} sendable texts would have needed {})",
        refusals.len(),
        settled.capped,
        status.capped_by_cap.keys().collect::<Vec<_>>(),
        owned_numbers(&later),
        status.sent,
        600 - status.failed,
        (600 - status.failed as usize).div_ceil(100)
    );
    assert!(!refusals.is_empty() && refusals.len() <= 50, "{} refusals before the hold", refusals.len());
    assert_eq!(tmo_after, 0, "texted T-Mobile after the cap was reported spent");
    assert_eq!(status.capped as usize + refusals.len(), tmo, "{status:?}");
    assert!(status.capped_by_cap.keys().any(|k| k.contains("30023")), "{status:?}");
    assert_eq!(owned_numbers(&later), needed, "numbers were bought for the held T-Mobile texts");
    assert!(cli.contains("T-Mobile daily cap (Twilio 30023)"), "{cli}");
}

/// Issue 19, acceptance 3: the purchase race with caps on — four worker processes of 64 handlers, three rounds —
/// still buys exactly the numbers the sendable texts need, from as many purchase requests, one text each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_workers_buy_exactly_the_numbers_needed_with_caps_on() {
    for round in 0..3 {
        let w = World::start(SimConfig { purchase_latency_ms: 250, carriers: true, ..SimConfig::default() }).await;
        w.producer_ok(&[
            "customer",
            "add",
            "acme",
            "--max-numbers",
            "20",
            "--tmobile-daily-cap",
            "200000",
            "--att-per-minute",
            "4500",
            "--per-second",
            "2000",
        ])
        .await;
        let to = recipients(2_000, round * 10_000);
        let landlines = lines(&w, &to).values().filter(|l| **l == Line::Landline).count();
        let batch = w.bulk("acme", "Race with caps", &to, &[]).await;
        let mut workers: Vec<_> = (0..4).map(|_| w.worker(64)).collect();
        let status = w.wait_complete(&batch, Duration::from_secs(180)).await;
        let state = w.state();
        let needed = (2_000 - landlines).div_ceil(250);
        let busiest = harness::fixtures::max_in_window(&state, common::DAY);
        println!(
            "round {round}: numbers {} (needed {needed}), purchase requests {}, texts {}, landlines {landlines}, \
             max per number {busiest}",
            owned_numbers(&state),
            state.purchase_requests,
            state.messages.len()
        );
        assert_eq!(owned_numbers(&state), needed);
        assert_eq!(state.purchase_requests as usize, needed);
        assert_eq!(state.messages.len(), 2_000 - landlines);
        assert!(per_recipient(&state).values().all(|c| *c == 1));
        assert!(busiest <= 250);
        assert_eq!(status.sent as usize + landlines, 2_000);
        for p in &mut workers {
            assert!(p.is_running());
        }
    }
}

/// Issue 19, acceptance 3: the kill -9 chaos test with caps on (caps high enough not to hold texts back, so every
/// reachable recipient is texted during the churn): a random worker of four is killed every 2.5 s and replaced;
/// every mobile recipient gets exactly one text, no landline any, and the numbers are what the sendable texts needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing_and_send_nothing_twice_with_caps_on() {
    let w = World::start(SimConfig {
        send_latency_ms: 150,
        purchase_latency_ms: 100,
        carriers: true,
        ..SimConfig::default()
    })
    .await;
    let to = recipients(5_000, 0);
    let landlines: HashSet<String> =
        lines(&w, &to).into_iter().filter(|(_, l)| *l == Line::Landline).map(|(n, _)| n).collect();
    assert!(!landlines.is_empty(), "the sample should hold landlines");
    let caps = ["--tmobile-daily-cap", "200000", "--att-per-minute", "4500", "--per-second", "2000"];
    common::kill9_churn_with(&w, 5_000, &caps, &landlines).await;
}

/// Issue 19, acceptance 4: lookups that fail (500s, dropped connections) are retried; a second batch to the same
/// recipients makes no lookup at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_are_retried_through_faults_and_cached_for_the_next_batch() {
    let faults = Faults { error_500: 0.15, drop: 0.05, ..Faults::default() };
    let w = World::start(SimConfig { lookup_faults: faults, ..SimConfig::default() }).await;
    w.producer_ok(&["customer", "add", "acme", "--lookup", "on", "--max-numbers", "10"]).await;
    let to = recipients(300, 0);
    let _worker = w.worker(16);
    let first = w.bulk("acme", "First notice", &to, &[]).await;
    let s1 = w.wait_complete(&first, Duration::from_secs(120)).await;
    let after_first = harness::sim::carriers::lookups(&w.sim);
    let second = w.bulk("acme", "Second notice", &to, &[]).await;
    let s2 = w.wait_complete(&second, Duration::from_secs(60)).await;
    let after_second = harness::sim::carriers::lookups(&w.sim);
    let pool = w.producer_ok(&["pool", "acme", "--json"]).await;
    let pool: serde_json::Value = serde_json::from_str(&pool).unwrap();
    println!(
        "first batch: {} lookups for 300 recipients (faults retried), sent {} failed {}; second batch: {} lookups, \
         sent {} failed {}; lines {}",
        after_first,
        s1.sent,
        s1.failed,
        after_second - after_first,
        s2.sent,
        s2.failed,
        pool["carriers"]["lines"]
    );
    assert!(after_first > 300, "faults were not retried");
    assert_eq!(after_second, after_first, "the second batch looked recipients up again");
    assert_eq!(s1.sent + s1.failed, 300);
    assert_eq!((s2.sent, s2.failed), (s1.sent, s1.failed));
}

/// Issue 19, acceptance 6: a negative or absurd cap, or an unknown option value, is refused with a clear error
/// (exit 2 / 422) and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_caps_are_refused_and_change_nothing() {
    let w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    w.producer_ok(&["customer", "add", "acme"]).await;
    let before = w.redis.digest();
    for (flags, body, field) in [
        (vec!["--tmobile-daily-cap=-5"], json!({"tmobile_daily_cap": -5}), "tmobile_daily_cap"),
        (vec!["--tmobile-daily-cap", "999999999"], json!({"tmobile_daily_cap": 999_999_999}), "tmobile_daily_cap"),
        (vec!["--att-per-minute", "0"], json!({"att_per_minute": 0}), "att_per_minute"),
        (vec!["--per-second", "lots"], json!({"per_second": 1_000_000_000}), "per_second"),
        (vec!["--lookup", "maybe"], json!({"lookup": "maybe"}), ""),
    ] {
        let mut args = vec!["customer", "add", "acme"];
        args.extend(&flags);
        let out = w.producer(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let (s, r) = api.call("PUT", "/v1/customers/acme", Some(ADMIN), Some(body.clone())).await;
        println!("{flags:?}: exit {:?} {:?} / API {s} {}", out.status.code(), stderr.trim(), r["error"]["message"]);
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        if !field.is_empty() {
            assert_eq!(r["error"]["field"], field);
            assert!(stderr.contains(&format!("--{}", field.replace('_', "-"))), "{stderr}");
        }
        assert_eq!(w.redis.digest(), before, "{flags:?} changed Redis");
    }
}

/// Issue 19, acceptance 7: 1,501 recipients of whom 30 (2 %) Twilio refuses for good: 6 numbers, not 7, none
/// without a send; the extra time over pre-bought numbers stays within one purchase latency of buying them all at
/// once (printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_partial_number_is_bought_late_so_none_sits_idle() {
    let latency = 1_000;
    let to = recipients(1_501, 0);
    let refused: Vec<String> = to.iter().step_by(50).take(30).cloned().collect();
    let run = |prebuy: bool| {
        let to = to.clone();
        let refused = refused.clone();
        async move {
            let config = SimConfig { purchase_latency_ms: latency, refuse_recipients: refused, ..SimConfig::default() };
            let w = World::start(config).await;
            w.producer_ok(&["customer", "add", "acme", "--max-numbers", "20"]).await;
            if prebuy {
                let mut conn = w.redis.conn().await;
                let twilio =
                    harness::sim::client(&w.sim_base, harness::sim::DEFAULT_AUTH_TOKEN, Duration::from_secs(5));
                let id = shared::domain::CustomerId::parse("acme").unwrap();
                for i in 0..6 {
                    let req = shared::twilio::BuyNumber {
                        area_code: Some("415"),
                        friendly_name: &format!("pre{i}"),
                        ..Default::default()
                    };
                    let n = twilio.buy_number(twilio.account(), &req).await.unwrap();
                    let b = shared::purchase::Bought { number: n.phone_number.unwrap(), sid: n.sid.unwrap() };
                    shared::purchase::commit_number(&mut conn, &id, &b, "").await.unwrap();
                }
            }
            // The whole batch is queued before the workers start, so the first purchase decision sees all of it.
            let batch = w.bulk("acme", "Late partial number", &to, &[]).await;
            let started = Instant::now();
            let _workers: Vec<_> = (0..2).map(|_| w.worker(32)).collect();
            let status = w.wait_complete(&batch, Duration::from_secs(120)).await;
            (started.elapsed(), status, w.state())
        }
    };
    let (pre_time, _, _) = run(true).await;
    let (time, status, state) = run(false).await;
    let mut sends: HashMap<&str, usize> = state.numbers.iter().map(|n| (n.phone_number.as_str(), 0)).collect();
    for m in &state.messages {
        *sends.entry(m.from.as_str()).or_default() += 1;
    }
    let extra = time.as_secs_f64() - pre_time.as_secs_f64();
    println!(
        "1,501 recipients, 30 refused for good: {} numbers bought ({} purchase requests), sends per number {:?}; \
         {:.2}s with numbers bought during the batch vs {:.2}s pre-bought: +{extra:.2}s (purchase latency {:.1}s)",
        owned_numbers(&state),
        state.purchase_requests,
        {
            let mut v: Vec<usize> = sends.values().copied().collect();
            v.sort();
            v
        },
        time.as_secs_f64(),
        pre_time.as_secs_f64(),
        latency as f64 / 1000.0
    );
    assert_eq!((status.sent, status.failed), (1_471, 30));
    assert_eq!(owned_numbers(&state), 6, "the partial seventh number was bought");
    assert_eq!(state.purchase_requests, 6);
    assert!(sends.values().all(|n| *n > 0), "a number never sent a text: {sends:?}");
    // Buying everything at once costs one purchase latency over pre-bought numbers; waiting for the partial one
    // may cost one more.
    assert!(extra <= 2.0 * latency as f64 / 1000.0 + 1.5, "+{extra:.2}s over pre-bought numbers");
}

/// The deliverability pause: 800 texts at 20 a second; after 100, status callbacks report the first 60 (20 of them
/// filtered, 30007). The batch pauses itself within 5 s (texts after the pause no more than were in flight), the API
/// says why, no number is bought while it waits, and a resume sends the rest once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_carriers_filter_pauses_itself_and_a_resume_sends_the_rest_once() {
    let mut w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    w.env = w.env.clone().set("MESSENGER_PUBLIC_URL", &api.base);
    w.producer_ok(&["customer", "add", "acme", "--per-second", "20", "--events", "on"]).await;
    let to = recipients(800, 0);
    let batch = w.bulk("acme", "Fire alarm test Thursday 10am. Reply STOP to opt out", &to, &[]).await;
    let workers: Vec<_> = (0..2).map(|_| w.worker(16)).collect();
    harness::fixtures::wait_until(Duration::from_secs(60), "100 texts", || {
        let n = w.state().messages.len();
        async move { (n >= 100).then_some(()) }
    })
    .await;
    let mut first: Vec<_> = w.state().messages;
    first.sort_by_key(|m| m.date_created);
    for (i, m) in first.iter().take(60).enumerate() {
        let status = if i % 3 == 0 { "undelivered" } else { "delivered" };
        let url = format!("{}/twilio/status?b={batch}", api.base);
        let (code, _) = harness::sim::post_signed(
            harness::sim::DEFAULT_AUTH_TOKEN,
            &url,
            &common::status_params(&m.sid, &m.to, status),
        )
        .await
        .unwrap();
        assert!(code < 300, "status callback answered {code}");
    }
    let reported = Instant::now();
    let (at_pause, took) = harness::fixtures::wait_until(Duration::from_secs(5), "the batch to pause", || {
        let w = &w;
        let batch = batch.clone();
        async move { w.status(&batch).await.paused.then(|| (w.state(), reported.elapsed())) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = w.state();
    let after = later.messages.len() - at_pause.messages.len();
    let (_, b) = api.call("GET", &format!("/v1/batches/{batch}"), Some(ADMIN), None).await;
    println!(
        "paused {:.1}s after the reports; {} texts sent by then, {after} after it (32 handlers); numbers {} then {}; \
         API: paused={} reason={} held={}",
        took.as_secs_f64(),
        at_pause.messages.len(),
        owned_numbers(&at_pause),
        owned_numbers(&later),
        b["paused"],
        b["pause_reason"],
        b["held_by_pause"]
    );
    assert!(after <= 32, "{after} texts sent after the pause: more than were in flight");
    assert_eq!(owned_numbers(&later), owned_numbers(&at_pause), "a number bought for a paused batch");
    assert_eq!(b["paused"], true);
    assert!(b["pause_reason"].as_str().unwrap().contains("30007: "), "{b}");
    assert!(b["waiting"].to_string().contains("paused"), "{b}");
    assert!(later.messages.len() < 800);
    let (_, events) = api.call("GET", "/v1/customers/acme/events?limit=1000", Some(ADMIN), None).await;
    assert!(events.to_string().contains("batch.paused"), "no batch.paused event");

    let (s, resumed) = api.call("POST", &format!("/v1/batches/{batch}/resume"), Some(ADMIN), None).await;
    println!("resume: {s} {resumed}");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(resumed["result"], "resumed");
    let done = w.wait_complete(&batch, Duration::from_secs(120)).await;
    let state = w.state();
    println!(
        "after the resume: {} sent, {} texts to {} tenants",
        done.sent,
        state.messages.len(),
        per_recipient(&state).len()
    );
    assert_eq!(done.sent, 800);
    assert_eq!(state.messages.len(), 800);
    assert!(per_recipient(&state).values().all(|&n| n == 1), "a tenant texted twice");
    drop(workers);
}

/// Bad settings of the pause are refused with the reason, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pause_settings_are_refused_and_change_nothing() {
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme"]).await;
    let before = w.redis.digest();
    for (flag, bad, says) in [
        ("--pause-threshold-pct", "150", "from 0 to 100"),
        ("--pause-threshold-pct", "-1", "from 0 to 100"),
        ("--pause-codes", "99999", "not a Twilio error code Messenger knows"),
        ("--pause-codes", "30007,abc", "not a Twilio error code"),
        ("--pause-after-reports", "0", "1 to 100000"),
    ] {
        let arg = format!("{flag}={bad}");
        let out = w.producer(&["customer", "add", "acme", &arg]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{arg}: exit {:?}: {}", out.status.code(), err.trim());
        assert!(!out.status.success());
        assert!(err.contains(flag) && err.contains(says), "{err}");
        assert_eq!(w.redis.digest(), before, "{arg} changed something");
    }
    w.producer_ok(&["customer", "add", "acme", "--pause-threshold-pct", "25", "--pause-codes", "30007"]).await;
    let api = start_api(&w).await;
    let (_, c) = api.call("GET", "/v1/customers/acme", Some(ADMIN), None).await;
    assert_eq!((c["pause_threshold_pct"].as_u64(), c["pause_codes"].clone()), (Some(25), json!([30007])), "{c}");
}
