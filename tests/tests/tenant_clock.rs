//! Texts on the tenant's clock: merge fields, scheduled sends, quiet hours in the recipient's time zone, expiry —
//! checked from the simulator's own record of what it received and when.
//!
//! These tests pass at any hour: the quiet window of the quiet-hours test is set around the current time (Redis's
//! clock cannot be shifted here), and every other test runs with quiet hours off (the harness's default).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use common::{ADMIN, World, start_api};
use harness::fixtures::{per_recipient, wait_until};
use harness::sim::SimConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::domain::count_segments;

/// `n` valid numbers in `area` (exchanges 300 and up).
fn numbers(area: u32, n: usize, offset: usize) -> Vec<String> {
    (offset..offset + n).map(|i| format!("+1{area}{}{:04}", 300 + i / 10_000, i % 10_000)).collect()
}

/// Writes a CSV file of recipients; returns its path.
fn csv(header: &str, rows: &[String]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("recipients-{}.csv", ulid::Ulid::new()));
    std::fs::write(&path, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
    path
}

async fn json_of(w: &World, args: &[&str]) -> Value {
    serde_json::from_str(&w.producer_ok(args).await).unwrap()
}

/// Issue 18, acceptance 1: a 10,000-recipient CSV with three variable columns. Every text the simulator received is
/// the template rendered for its row (all 10,000 compared, against a rendering written here independently), and the
/// dry run's segment total is the sum of the simulator's `num_segments`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recipient_gets_the_template_rendered_for_its_row() {
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "60"]).await;
    let to = numbers(415, 10_000, 0);
    let names = ["Ana", "", "Łucja", "Zoë", "Bo", "Christopher-Alexander"];
    let buildings = ["4", "Maple Court", "the north tower of the Harbor View complex on Seventh Avenue, entrance B"];
    let rows: Vec<String> = to
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n},{},{}B,\"{}\"", names[i % names.len()], i % 40, buildings[i % buildings.len()]))
        .collect();
    let file = csv("phone,first_name,unit,building", &rows);
    let body =
        "Hi {{first_name|there}}, water is off in unit {{unit}} of {{building}} Tuesday 9-11am. Reply STOP to opt out.";
    let expected = |i: usize| {
        let name = match names[i % names.len()] {
            "" => "there",
            n => n,
        };
        format!(
            "Hi {name}, water is off in unit {}B of {} Tuesday 9-11am. Reply STOP to opt out.",
            i % 40,
            buildings[i % buildings.len()]
        )
    };
    let path = file.display().to_string();
    let base = ["bulk", "--customer", "acme", "--body", body, "--recipients", &path, "--json"];
    let mut dry = base.to_vec();
    dry.push("--dry-run");
    let estimate = json_of(&w, &dry).await;
    println!(
        "dry run: {} segments ({} to {} per text, {}); UCS-2 forced by {}; extra segments from {}",
        estimate["segments_total"],
        estimate["segments_min"],
        estimate["segments_per_message"],
        estimate["encoding"],
        estimate["ucs2_variables"],
        estimate["segment_variables"]
    );
    let started = Instant::now();
    let receipt = json_of(&w, &base).await;
    let batch = receipt["batch_id"].as_str().unwrap().to_owned();
    let _workers: Vec<_> = (0..2).map(|_| w.worker(32)).collect();
    let status = w.wait_complete(&batch, Duration::from_secs(240)).await;
    let _ = std::fs::remove_file(file);

    let state = w.state();
    let by_to: HashMap<&str, &harness::sim::SimMessage> = state.messages.iter().map(|m| (m.to.as_str(), m)).collect();
    let mut wrong = Vec::new();
    for (i, n) in to.iter().enumerate() {
        match by_to.get(n.as_str()) {
            Some(m) if m.body == expected(i) => {}
            Some(m) => wrong.push(format!("{n}: {:?}", m.body)),
            None => wrong.push(format!("{n}: no text")),
        }
    }
    let sim_segments: u64 = state.messages.iter().map(|m| m.num_segments as u64).sum();
    let ours: u64 = (0..to.len()).map(|i| count_segments(&expected(i)).segments as u64).sum();
    println!(
        "{} texts compared with their rows, {} wrong; simulator's num_segments total {sim_segments}, dry run {}, \
         batch status {}; {:.1}s",
        to.len(),
        wrong.len(),
        estimate["segments_total"],
        status.segments_total,
        started.elapsed().as_secs_f64()
    );
    assert!(wrong.is_empty(), "{} texts differ from their rows, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(3)]);
    assert_eq!(state.messages.len(), 10_000);
    assert_eq!(estimate["segments_total"].as_u64(), Some(sim_segments), "dry run vs the simulator's num_segments");
    assert_eq!(ours, sim_segments);
    assert_eq!(status.segments_total, sim_segments);
    assert_eq!(estimate["encoding"], "mixed");
    assert!(estimate["ucs2_variables"]["first_name"].as_u64().unwrap() > 0, "{estimate}");
    assert!(estimate["segment_variables"]["building"].as_u64().unwrap() > 0, "{estimate}");
    assert_eq!((status.sent, status.failed), (10_000, 0));
}

/// A quiet window, in local wall-clock minutes, around the current time in `zone`: it started 10 minutes ago and ends
/// at the next minute boundary at least 30 s away. Returns the window (`HH:MM-HH:MM`) and its end.
fn window_around_now(zone: Tz) -> (String, DateTime<Utc>) {
    let now = Utc::now().with_timezone(&zone);
    let minute = now.with_second(0).unwrap().with_nanosecond(0).unwrap();
    let end = minute + chrono::Duration::minutes(if now.second() < 30 { 1 } else { 2 });
    let start = minute - chrono::Duration::minutes(10);
    (
        format!("{:02}:{:02}-{:02}:{:02}", start.hour(), start.minute(), end.hour(), end.minute()),
        end.with_timezone(&Utc),
    )
}

/// Whether `at` falls inside the window `HH:MM-HH:MM` in `zone`'s local time.
fn inside(window: &str, zone: Tz, at: DateTime<Utc>) -> bool {
    let w = shared::domain::QuietHours::parse(window).unwrap();
    let local = at.with_timezone(&zone);
    w.contains((local.hour() * 60 + local.minute()) as u16)
}

/// Issue 18, acceptance 2: a customer's quiet window set around the current time so that New York is inside it and
/// Los Angeles is not. One batch to 212 and 213 numbers texts every 213 recipient at once, no 212 recipient before
/// the window ends, and the status says they wait until its end (America/New_York); when it ends, all are sent, and
/// every send time, converted to its recipient's zone, lies outside the window. An urgent batch to 212 numbers inside
/// the window goes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_texts_in_the_recipients_own_zone_until_the_window_ends() {
    let mut w = World::start(SimConfig::default()).await;
    w.env = w.env.clone().set("MESSENGER_QUIET_SPREAD_SECS", 3);
    let ny = Tz::America__New_York;
    let la = Tz::America__Los_Angeles;
    let (window, end) = window_around_now(ny);
    assert!(inside(&window, ny, Utc::now()) && !inside(&window, la, Utc::now()), "{window}");
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "5", "--quiet-hours", &window]).await;
    let (new_york, los_angeles) = (numbers(212, 20, 0), numbers(213, 20, 0));
    let all: Vec<String> = new_york.iter().chain(&los_angeles).cloned().collect();
    let batch = w.bulk("acme", "Building notice: the lobby is closed tomorrow.", &all, &[]).await;
    let _workers: Vec<_> = (0..2).map(|_| w.worker(8)).collect();

    let texted = |state: &harness::sim::SimState, list: &[String]| {
        let per = per_recipient(state);
        list.iter().filter(|n| per.contains_key(*n)).count()
    };
    wait_until(Duration::from_secs(30), "every Los Angeles recipient texted", || async {
        (texted(&w.state(), &los_angeles) == 20).then_some(())
    })
    .await;
    let status = w.status(&batch).await;
    let waits = status.quiet_by_zone.get("America/New_York").copied();
    let cli = w.producer_ok(&["status", &batch]).await;
    println!(
        "window {window} (ends {end}): Los Angeles texted 20 of 20; New York texted {} of 20; status: {} waiting for \
         quiet hours, {waits:?}",
        texted(&w.state(), &new_york),
        status.quiet_hours
    );
    assert_eq!(texted(&w.state(), &new_york), 0, "a New York recipient was texted inside the quiet window");
    assert_eq!(status.quiet_hours, 20, "{status:?}");
    let waits = waits.expect("the status names America/New_York");
    assert_eq!(waits.count, 20);
    let until = waits.until_ms - end.timestamp_millis();
    assert!((0..=3_000).contains(&until), "they wait until the window's end plus the spread, not {until} ms after");
    assert!(cli.contains("America/New_York") && cli.contains("quiet"), "{cli}");

    // An urgent batch inside the window goes at once.
    let urgent_to = numbers(212, 5, 100);
    let urgent = w.bulk("acme", "Burst pipe on floor 3: water is off now.", &urgent_to, &["--urgent"]).await;
    let u = w.wait_complete(&urgent, Duration::from_secs(20)).await;
    let urgent_done = Utc::now();
    println!("urgent batch: {} sent at {urgent_done}, before the window's end: {}", u.sent, urgent_done < end);
    assert_eq!(u.sent, 5);
    assert!(u.urgent);
    assert!(urgent_done < end, "the urgent batch waited for the window to end");

    let status = w.wait_complete(&batch, Duration::from_secs(150)).await;
    assert_eq!((status.sent, status.quiet_hours), (40, 0));
    let state = w.state();
    let mut earliest_ny = None::<DateTime<Utc>>;
    for m in state.messages.iter().filter(|m| !urgent_to.contains(&m.to)) {
        let zone = if m.to.starts_with("+1212") { ny } else { la };
        assert!(
            !inside(&window, zone, m.date_created),
            "{} texted at {} inside the window in {zone}",
            m.to,
            m.date_created
        );
        if zone == ny {
            earliest_ny = Some(earliest_ny.map_or(m.date_created, |e| e.min(m.date_created)));
        }
    }
    let first = earliest_ny.unwrap();
    println!(
        "after the window: all 40 sent; 0 of 40 send times inside the window in their recipient's zone; first New York \
         text {:.1} s after the window's end",
        (first - end).num_milliseconds() as f64 / 1000.0
    );
    assert!(first >= end);
}

/// Issue 18, acceptance 4: a batch scheduled 30 s ahead sends nothing before its time (the simulator's timestamps)
/// and everything after; a scheduled batch cancelled before its time sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_batch_waits_for_its_time_and_a_cancelled_one_never_goes() {
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "5"]).await;
    let send_at = (Utc::now() + chrono::Duration::seconds(30)).to_rfc3339();
    let at = DateTime::parse_from_rfc3339(&send_at).unwrap().with_timezone(&Utc);
    let (first, second) = (numbers(415, 30, 0), numbers(415, 30, 1_000));
    let batch = w.bulk("acme", "Reminder: inspections start at 9am.", &first, &["--send-at", &send_at]).await;
    let cancelled = w.bulk("acme", "This one is called off.", &second, &["--send-at", &send_at]).await;
    let _worker = w.worker(8);
    let cli = w.producer_ok(&["status", &batch]).await;
    assert!(cli.contains("scheduled for"), "{cli}");
    w.producer_ok(&["cancel", &cancelled]).await;
    let c = w.status(&cancelled).await;
    assert!(c.is_complete() && c.cancelled == 30, "{c:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(w.state().messages.is_empty(), "a text went before its scheduled time");
    let status = w.wait_complete(&batch, Duration::from_secs(90)).await;
    let state = w.state();
    let earliest = state.messages.iter().map(|m| m.date_created).min().unwrap();
    let to_cancelled = state.messages.iter().filter(|m| second.contains(&m.to)).count();
    println!(
        "scheduled for {at}: {} sent, the first {:.2} s after its time, none before; the batch cancelled before its \
         time: {} cancelled, {to_cancelled} texts",
        status.sent,
        (earliest - at).num_milliseconds() as f64 / 1000.0,
        c.cancelled
    );
    assert_eq!(status.sent, 30);
    assert!(earliest >= at, "first text at {earliest}, scheduled for {at}");
    assert_eq!(to_cancelled, 0);
}

/// Issue 18, acceptance 5: at max numbers with every number full, a batch with `--expires-in 20s`: the texts that
/// could go carried `ValidityPeriod` ≤ the seconds left; after 20 s every other job is `expired`, nothing is sent
/// after that, and the totals add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_not_sent_before_the_expiry_end_expired() {
    let mut w = World::start(SimConfig::default()).await;
    w.env = w
        .env
        .clone()
        .set("MESSENGER_DAILY_QUOTA", 5)
        .set("MESSENGER_CONVERSATIONAL_CAP", 5)
        .set("MESSENGER_WINDOW_SECS", 3_600);
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "1"]).await;
    let _worker = w.worker(4);
    // Three of the number's five slots are taken by an earlier batch.
    let earlier = w.bulk("acme", "Earlier notice.", &numbers(415, 3, 0), &[]).await;
    w.wait_complete(&earlier, Duration::from_secs(30)).await;
    let batch = w.bulk("acme", "Water off 9-11am today.", &numbers(415, 10, 100), &["--expires-in", "20s"]).await;
    let status = w.wait_complete(&batch, Duration::from_secs(60)).await;
    let expires = DateTime::from_timestamp_millis(status.expires_at_ms.unwrap()).unwrap();
    let state = w.state();
    let ours: Vec<_> = state.messages.iter().filter(|m| m.body == "Water off 9-11am today.").collect();
    let validity: Vec<u32> = ours.iter().filter_map(|m| m.validity_period).collect();
    let after = ours.iter().filter(|m| m.date_created >= expires).count();
    println!(
        "expires {expires}: sent {} (ValidityPeriod {validity:?}), expired {}, texts after the expiry {after}; total {} \
         = {} terminal",
        status.sent,
        status.expired,
        status.total,
        status.terminal()
    );
    assert_eq!((status.sent, status.expired, status.total), (2, 8, 10));
    assert_eq!(status.terminal(), status.total);
    assert_eq!(validity.len(), 2, "every send carried a ValidityPeriod");
    assert!(validity.iter().all(|v| (1..=20).contains(v)), "{validity:?}");
    assert_eq!(after, 0);
    assert!(Utc::now() >= expires);
}

/// Issue 18, acceptance 6: bad input — an unknown placeholder, a row missing a variable, a rendered text over 1,600
/// characters, `send_at` in the past or beyond 35 days, an unknown `tz`, malformed quiet hours — each refused with
/// 422 / exit 2 naming the field and row, and Redis unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_timing_templates_and_zones_are_refused_naming_field_and_row_and_change_nothing() {
    let w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    w.producer_ok(&["customer", "add", "acme"]).await;
    let past = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let far = (Utc::now() + chrono::Duration::days(36)).to_rfc3339();
    let long = "x".repeat(1_600);
    let row = |unit: &str, tz: &str| json!({"to": "+14155550123", "vars": {"unit": unit, "tz": tz}});
    // (CSV rows after `phone,unit,tz`, the CLI's extra flags, the API's body, the field the CLI names, the API's)
    type Case<'a> = (Vec<String>, Vec<String>, Value, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["+14155550123,4B,".into()],
            vec!["--body".into(), "Unit {{unti}}".into()],
            json!({"body": "Unit {{unti}}", "recipients": [row("4B", "")]}),
            "body",
            "body",
        ),
        (
            vec!["+14155550123,4B,".into(), "+14155550124,,".into()],
            vec!["--body".into(), "Unit {{unit}}".into()],
            json!({"body": "Unit {{unit}}", "recipients": [row("4B", ""), json!({"to": "+14155550124", "vars": {}})]}),
            "line 3, column unit",
            "recipients[1].vars.unit",
        ),
        (
            vec![format!("+14155550123,{long},")],
            vec!["--body".into(), "Unit {{unit}}".into()],
            json!({"body": "Unit {{unit}}", "recipients": [row(&long, "")]}),
            "line 2",
            "recipients[0]",
        ),
        (
            vec!["+14155550123,4B,".into()],
            vec!["--body".into(), "hi".into(), "--send-at".into(), past.clone()],
            json!({"body": "hi", "recipients": ["+14155550123"], "send_at": past}),
            "--send-at",
            "send_at",
        ),
        (
            vec!["+14155550123,4B,".into()],
            vec!["--body".into(), "hi".into(), "--send-at".into(), far.clone()],
            json!({"body": "hi", "recipients": ["+14155550123"], "send_at": far}),
            "--send-at",
            "send_at",
        ),
        (
            vec!["+14155550123,4B,Mars/Olympus".into()],
            vec!["--body".into(), "Unit {{unit}}".into()],
            json!({"body": "Unit {{unit}}", "recipients": [row("4B", "Mars/Olympus")]}),
            "line 2, column tz",
            "recipients[0].vars.tz",
        ),
    ];
    let before = w.redis.digest();
    for (rows, flags, body, cli_field, api_field) in &cases {
        let file = csv("phone,unit,tz", rows);
        let path = file.display().to_string();
        let mut args = vec!["bulk", "--customer", "acme", "--recipients", &path];
        args.extend(flags.iter().map(String::as_str));
        let out = w.producer(&args).await;
        let _ = std::fs::remove_file(file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let (s, r) = api.call("POST", "/v1/customers/acme/bulk-texts", Some(ADMIN), Some(body.clone())).await;
        println!("{api_field}: exit {:?}, API {s}: {}", out.status.code(), r["error"]["message"]);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(&format!("{cli_field}:")), "{flags:?}: {stderr}");
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {r}");
        assert_eq!(r["error"]["field"], *api_field, "{r}");
        assert_eq!(w.redis.digest(), before, "{api_field} changed Redis");
    }
    // Malformed quiet hours, for a customer.
    let out = w.producer(&["customer", "add", "acme", "--quiet-hours", "25:00-08:00"]).await;
    let (s, r) = api.call("PUT", "/v1/customers/acme", Some(ADMIN), Some(json!({"quiet_hours": "25:00-08:00"}))).await;
    println!("quiet_hours: exit {:?}, API {s}: {}", out.status.code(), r["error"]["message"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--quiet-hours:"));
    assert_eq!((s, r["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("quiet_hours")));
    assert_eq!(w.redis.digest(), before, "malformed quiet hours changed Redis");
}

/// A frequency cap of 3 texts per tenant per 24 h across batches: four batches to the same 20 tenants, and every
/// tenant gets 3; the fourth batch's texts wait with the reason (until the oldest ages out); an urgent batch goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frequency_cap_holds_the_fourth_batch_and_an_urgent_one_goes() {
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme", "--max-texts-per-tenant", "3/24h"]).await;
    let to = harness::fixtures::recipients(20, 0);
    let _worker = w.worker(8);
    let mut batches = Vec::new();
    for i in 1..=4 {
        let batch = w.bulk("acme", &format!("Notice {i} of 4. Reply STOP to opt out"), &to, &[]).await;
        batches.push(batch);
    }
    for b in &batches[..3] {
        w.wait_complete(b, Duration::from_secs(60)).await;
    }
    let fourth = wait_until(Duration::from_secs(30), "the fourth batch's texts to wait", || {
        let (w, b) = (&w, batches[3].clone());
        async move { Some(w.status(&b).await).filter(|s| s.frequency_capped == 20) }
    })
    .await;
    let state = w.state();
    let per = per_recipient(&state);
    println!(
        "after four batches: {} texts, per tenant {:?}; fourth batch: {} waiting ({:?})",
        state.messages.len(),
        per.values().collect::<std::collections::BTreeSet<_>>(),
        fourth.frequency_capped,
        fourth.waiting_at(0)
    );
    assert_eq!(state.messages.len(), 60);
    assert!(per.values().all(|&n| n == 3), "{per:?}");
    assert_eq!(fourth.sent, 0);
    assert!(fourth.waiting_at(0).iter().any(|l| l.contains("frequency cap")), "{:?}", fourth.waiting_at(0));
    let until = fourth.frequency_until_ms.unwrap();
    assert!(until > Utc::now().timestamp_millis() + 23 * 3_600_000, "waits for the window: {until}");

    let urgent = w.bulk("acme", "Gas leak: leave the building now", &to, &["--urgent"]).await;
    let done = w.wait_complete(&urgent, Duration::from_secs(60)).await;
    println!("urgent batch: {} sent", done.sent);
    assert_eq!(done.sent, 20);
    assert_eq!(w.state().messages.len(), 80);
}
