//! The dashboard: driven in Debian's Chromium through a real batch (progress rising to 100% without a reload,
//! axe-core on every page, screenshots), its security (scopes, CSRF, cookie flags, CSP) over HTTP, and what each
//! page costs Redis with 100,000 jobs queued.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{ADMIN, APP_A, APP_B, World, start_api};
use harness::dashboard::{self, page_costs};
use harness::fixtures::{owned_numbers, recipients};
use harness::sim::SimConfig;
use reqwest::StatusCode;
use serde_json::json;
use shared::batches::{self, NewBatch};
use shared::domain::{CustomerId, MessageBody, PhoneNumber};

fn node_ready(dir: &str) -> bool {
    std::path::Path::new(&format!("{dir}/node_modules/playwright-core")).exists()
}

/// Issue 11, acceptance 1 and 3: a support person signs in, a 5,000-recipient batch is started with workers running,
/// and the batch page's progress bar rises to 100% without the page reloading; the pool page shows the 20 numbers
/// bought and their use; axe-core finds no serious or critical violation on any page; screenshots are saved under
/// `target/dashboard/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_followed_in_a_real_browser_to_100_percent() {
    let browser = concat!(env!("CARGO_MANIFEST_DIR"), "/browser");
    assert!(node_ready(browser), "run `npm ci` in tests/browser (scripts/test does it)");
    let mut w = World::start(SimConfig { send_latency_ms: 5, ..SimConfig::default() }).await;
    let api = start_api(&w).await;
    w.env = w.env.clone().set("MESSENGER_PUBLIC_URL", &api.base);
    let (s, _) =
        api.call("PUT", "/v1/customers/acme", Some(ADMIN), Some(json!({"max_numbers": 20, "area_code": "415"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let _workers: Vec<_> = (0..2).map(|_| w.worker(16)).collect();

    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dashboard");
    std::fs::create_dir_all(shots).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(format!("{browser}/dashboard.mjs"))
        .args([api.base.as_str(), ADMIN, "acme", "5000", shots])
        .output()
        .await
        .expect("run node (apt-get install nodejs npm)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "browser script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let samples: Vec<u64> = v["progress_samples"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    let distinct: std::collections::BTreeSet<u64> = samples.iter().copied().collect();
    println!(
        "progress samples ({}): {:?} … {:?}; distinct values {}; not reloaded {}",
        samples.len(),
        &samples[..samples.len().min(6)],
        &samples[samples.len().saturating_sub(3)..],
        distinct.len(),
        v["not_reloaded"]
    );
    println!("cookie {}; first Tab: {}; login redirect {}", v["cookie"], v["first_tab"], v["login_redirect"]);
    println!("axe serious/critical: {}", json!(harness::dashboard::axe_serious(&v)));
    println!(
        "pool rows {}, window use {}, overview sent in the last hour {}",
        v["pool_rows"], v["pool_meter_total"], v["overview_sent_last_hour"]
    );
    println!("screenshots: {}", v["screenshots"]);
    assert_eq!(v["login_redirect"], "/dashboard/login");
    assert_eq!(v["first_tab"], "Skip to content");
    assert_eq!(v["cookie"], json!({"httpOnly": true, "secure": true, "sameSite": "Strict", "path": "/dashboard"}));
    assert_eq!(v["progress_max"], 5000);
    assert_eq!(samples.last().copied(), Some(5000), "the bar never reached 100%");
    assert!(samples.windows(2).all(|p| p[0] <= p[1]), "the bar went backwards: {samples:?}");
    assert!(distinct.len() >= 3, "the bar did not move by itself: {samples:?}");
    assert_eq!(v["not_reloaded"], true);
    harness::dashboard::assert_axe_clean(&v);
    let numbers = owned_numbers(&w.state());
    assert_eq!(numbers, 20);
    assert_eq!(v["pool_rows"], numbers);
    assert_eq!(v["pool_meter_total"], 5000);
    assert!(v["overview_sent_last_hour"].as_u64().unwrap() >= 5000, "{}", v["overview_sent_last_hour"]);
    assert_eq!(v["overview_chart_bars"], 60);
    assert_eq!(v["search_hits"], 1);
    assert_eq!(v["phone_overflows"], false, "the overview scrolls sideways on a phone");
    assert_eq!(v["page_errors"], json!([]));
    for shot in v["screenshots"].as_array().unwrap() {
        assert!(std::fs::metadata(shot.as_str().unwrap()).is_ok_and(|m| m.len() > 1_000), "{shot}");
    }
}

/// Issue 11, acceptance 2: a token scoped to one customer cannot see or act on another customer's batch or pool
/// through any dashboard route (403, and nothing changes); a POST without the CSRF token is refused; the session
/// cookie is `HttpOnly; Secure; SameSite=Strict`; every response carries the Content-Security-Policy; a forged or
/// altered cookie is not a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_csrf_cookies_and_csp_hold_on_every_route() {
    let w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    let mut batch_of = BTreeMap::new();
    for (c, token) in [("acme", APP_A), ("globex", APP_B)] {
        let (s, _) = api.call("PUT", &format!("/v1/customers/{c}"), Some(ADMIN), Some(json!({}))).await;
        assert_eq!(s, StatusCode::CREATED);
        let (_, r) = api
            .call(
                "POST",
                &format!("/v1/customers/{c}/bulk-texts"),
                Some(token),
                Some(json!({"body": "hi", "recipients": recipients(3, 0)})),
            )
            .await;
        batch_of.insert(c, r["batch_id"].as_str().unwrap().to_owned());
    }
    let acme_batch = &batch_of["acme"];
    let globex_batch = &batch_of["globex"];
    let globex = dashboard::login(&api.base, APP_B).await;
    println!("session cookie: {}", globex.set_cookie.split_once(';').map(|(_, flags)| flags).unwrap_or_default());
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/dashboard"] {
        assert!(globex.set_cookie.contains(flag), "{flag} missing: {}", globex.set_cookie);
    }
    assert!(!globex.set_cookie.contains(APP_B), "the cookie holds the token itself");

    // Another customer's batch and pool, through every route, as GET and as POST (with a valid CSRF token).
    let digest = w.redis.digest();
    let reads = [
        format!("/dashboard/batches/{acme_batch}"),
        format!("/dashboard/batches/{acme_batch}/live"),
        "/dashboard/batches?customer=acme".to_owned(),
        "/dashboard/pools/acme".to_owned(),
        "/dashboard/pools/acme/live".to_owned(),
        "/dashboard/conversations?customer=acme&phone=%2B14153000000".to_owned(),
        "/dashboard/events/acme".to_owned(),
    ];
    for path in &reads {
        let (status, headers, _) = globex.get(path).await;
        println!("globex GET {path}: {status}");
        assert_eq!(status, 403, "{path}");
        assert!(headers.get("content-security-policy").is_some(), "{path}");
    }
    for path in [
        format!("/dashboard/batches/{acme_batch}/cancel"),
        "/dashboard/pools/acme/release-idle".to_owned(),
        "/dashboard/events/acme/replay".to_owned(),
    ] {
        let (status, _) = globex.post(&path, &[("idle_days", "0"), ("dry_run", "1")], true).await;
        println!("globex POST {path}: {status}");
        assert_eq!(status, 403, "{path}");
    }
    assert_eq!(w.redis.digest(), digest, "a refused request changed Redis");
    // Its own batches and pool are fine; another customer's never appear in its lists.
    for path in [
        "/dashboard",
        "/dashboard/batches",
        &format!("/dashboard/batches/{globex_batch}"),
        "/dashboard/pools/globex",
        "/dashboard/conversations",
        "/dashboard/events",
        "/dashboard/events/globex",
    ] {
        let (status, headers, body) = globex.get(path).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.contains(acme_batch.as_str()) && !body.contains(">acme<"), "{path} shows acme");
        let csp = headers.get("content-security-policy").unwrap().to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(headers.get("x-frame-options").unwrap(), "DENY");
    }
    // No CSRF token, or a wrong one: refused, nothing cancelled.
    let (status, _) = globex.post(&format!("/dashboard/batches/{globex_batch}/cancel"), &[], false).await;
    assert_eq!(status, 403);
    let (status, _) =
        globex.post(&format!("/dashboard/batches/{globex_batch}/cancel"), &[("csrf", "forged")], false).await;
    assert_eq!(status, 403);
    assert!(!w.status(globex_batch).await.cancel_requested, "cancelled without a CSRF token");
    // With it: cancelled.
    let (status, _) = globex.post(&format!("/dashboard/batches/{globex_batch}/cancel"), &[], true).await;
    assert_eq!(status, 200);
    assert!(w.status(globex_batch).await.cancel_requested);
    println!("cancel without CSRF: 403 and not cancelled; with CSRF: 200 and cancelled");

    // A cookie that was altered (another token's name, or a changed expiry) is no session: sign-in page.
    let mut forged = globex.clone();
    let parts: Vec<&str> = globex.cookie.trim_start_matches("msgr_session=").split('.').collect();
    forged.cookie = format!("msgr_session=v2.b3Bz.{}.{}.{}.{}", parts[2], parts[3], parts[4], parts[5]);
    let (status, headers, _) = forged.get("/dashboard").await;
    assert_eq!((status, headers.get("location").map(|l| l.to_str().unwrap())), (303, Some("/dashboard/login")));
    // A customer-scoped viewer sees numbers masked.
    let (_, _, body) = globex.get(&format!("/dashboard/batches/{globex_batch}")).await;
    assert!(!body.contains(&recipients(3, 0)[0]), "a full phone number was shown to a scoped token");
}

/// Issue 11, acceptance 4: with 100,000 jobs queued, each page costs a bounded number of Redis commands (counted
/// with INFO commandstats around one request) and none scans the keyspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_page_costs_a_bounded_number_of_redis_commands() {
    let w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    for c in ["acme", "globex"] {
        let (s, _) = api.call("PUT", &format!("/v1/customers/{c}"), Some(ADMIN), Some(json!({}))).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let mut conn = w.redis.conn().await;
    let req = NewBatch::plain(
        CustomerId::parse("acme").unwrap(),
        MessageBody::parse("Queued for the page-cost test").unwrap(),
        recipients(100_000, 0).iter().map(|r| PhoneNumber::parse(r).unwrap()).collect(),
    );
    let receipt = batches::submit(&mut conn, &req, Duration::from_secs(3600), 5_000, None, None).await.unwrap();
    let queued: u64 = redis::cmd("LLEN").arg("{c:acme}:q").query(&mut w.redis.sync_conn()).unwrap();
    assert_eq!(queued, 100_000);
    let admin = dashboard::login(&api.base, ADMIN).await;
    let pages = [
        "/dashboard".to_owned(),
        "/dashboard/batches".to_owned(),
        format!("/dashboard/batches/{}", receipt.batch_id),
        "/dashboard/pools/acme".to_owned(),
        "/dashboard/conversations?customer=acme&phone=%2B14153000000".to_owned(),
        "/dashboard/events/acme".to_owned(),
    ];
    let costs = page_costs(&admin, &mut w.redis.sync_conn(), &pages, 5).await;
    // Bounds from the table in producer/src/server/dashboard/data.rs, for this data (2 customers, 1 batch, no
    // numbers, no workers, no conversation, no dead letters), each with the session's check (one script call: its
    // EVALSHA, TIME, GET and EXISTS).
    let bounds = [74u64, 14, 9, 16, 10, 7];
    for (c, bound) in costs.iter().zip(bounds) {
        println!("{} -> {} commands {:?}; p50 {:.1} ms", c.path, c.commands, c.by_command, c.p50_ms);
        assert_eq!(c.status, 200, "{}", c.path);
        assert!(c.commands <= bound, "{} cost {} commands (bound {bound})", c.path, c.commands);
        for scan in ["keys", "scan"] {
            assert!(!c.by_command.contains_key(scan), "{} ran {scan}", c.path);
        }
    }
}
