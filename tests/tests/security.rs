//! What an attacker tried, and what now holds (issue 29): a recipients file that would have mailed three tenants'
//! numbers to a fourth, input without a bound (a file, a request, many requests at once), dashboard sessions that
//! outlived sign-out or their token's value, sign-in guessing, and HSTS. Everything against real `producer`
//! processes on loopback, started by the test. (The SSRF forms and the malformed events cursor are in `events`,
//! beside the other endpoint checks; secrets at rest too, where deliveries are verified.)

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN, APP_B, World};
use harness::dashboard::{self, Session};
use harness::fixtures::{recipients, wait_until};
use harness::procs::{Env, Proc, bin};
use harness::sim::SimConfig;
use serde_json::{Value, json};

const DASHBOARD_SECRET: &str = "a dashboard secret for the security tests, 32+";

/// A `producer serve` process on a port of its own.
struct Server {
    base: String,
    port: u16,
}

impl Server {
    fn new() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self { base: format!("http://127.0.0.1:{port}"), port }
    }

    /// Starts it with `tokens` and `extra` settings, and waits until it answers.
    async fn start(&self, env: &Env, tokens: &str, extra: &[(&str, &str)]) -> Proc {
        let mut env =
            env.clone().set("MESSENGER_API_TOKENS", tokens).set("MESSENGER_DASHBOARD_SECRET", DASHBOARD_SECRET);
        for (k, v) in extra {
            env = env.set(k, v);
        }
        let proc = env.spawn_producer(&["serve", "--listen", &format!("127.0.0.1:{}", self.port)]);
        let url = format!("{}/healthz", self.base);
        wait_until(Duration::from_secs(60), "producer serve to answer", || async {
            harness::http().get(&url).send().await.ok().filter(|r| r.status() == 200).map(|_| ())
        })
        .await;
        proc
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req =
            harness::http().request(method.parse().unwrap(), format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await.expect("the server answers");
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), headers)
    }
}

/// Peak resident memory of a process, from the kernel (`VmHWM`), in MB.
fn peak_rss_mb(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Runs `producer <args>` to its end, measuring it: exit code, time, peak resident memory (MB, from `wait4`), stderr.
fn measured(env: &Env, args: &[&str]) -> (Option<i32>, Duration, f64, String) {
    let err = std::env::temp_dir().join(format!("messenger-measured-{}.err", ulid::Ulid::new()));
    let mut cmd = std::process::Command::new(bin("producer"));
    env.apply(&mut cmd);
    cmd.args(args).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    cmd.stderr(std::fs::File::create(&err).unwrap());
    let started = Instant::now();
    // Reaped by wait4 below (std's wait would not report the child's peak memory).
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("start producer");
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, once; `status` and `usage` outlive the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    let took = started.elapsed();
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let _ = std::fs::remove_file(&err);
    (code, took, usage.ru_maxrss as f64 / 1024.0, stderr)
}

/// Acceptance 1: the attacker's file — one unclosed quote on line 2, three tenants after it — is refused naming
/// line 2, before anything is written or sent; the same rows with the quote closed are four tenants, each texted
/// with their own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_an_unclosed_quote_is_refused_naming_its_line_and_nothing_is_sent() {
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "2"]).await;
    let to = recipients(4, 0);
    let names = ["Ann", "Bob", "Cy", "Di"];
    let rows = |open_quote: bool| {
        let mut f = String::from("phone,name\n");
        for (i, (phone, name)) in to.iter().zip(names).enumerate() {
            let name = if i == 0 && open_quote { format!("\"{name}") } else { name.to_owned() };
            f.push_str(&format!("{phone},{name}\n"));
        }
        f
    };
    let path = std::env::temp_dir().join(format!("messenger-attack-{}.csv", ulid::Ulid::new()));
    std::fs::write(&path, rows(true)).unwrap();
    let before = w.redis.digest();
    let file = path.display().to_string();
    let body = "Hi {{name|there}}, the water is off on Tuesday.";
    let out = w.producer(&["bulk", "--customer", "acme", "--body", body, "--recipients", &file]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("the attacker's file: exit {:?}: {}", out.status.code(), err.trim());
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 2: a quoted value opens at column 14") && err.contains("nothing was sent"), "{err}");
    assert_eq!(w.redis.digest(), before, "a refused file changed Redis");
    let _worker = w.worker(4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.state().messages.len(), 0, "a text was sent");

    // The quote closed: four tenants, each with their own name and nobody else's number.
    std::fs::write(&path, rows(false)).unwrap();
    let batch = w.env.bulk_file("acme", body, &path, &[]).await.unwrap()["batch_id"].as_str().unwrap().to_owned();
    let _ = std::fs::remove_file(&path);
    w.wait_complete(&batch, Duration::from_secs(60)).await;
    let state = w.state();
    let mut texts: Vec<(String, String)> = state.messages.iter().map(|m| (m.to.clone(), m.body.clone())).collect();
    texts.sort();
    for ((phone, name), (got_to, got_body)) in to.iter().zip(names).zip(&texts) {
        assert_eq!(got_to, phone);
        assert_eq!(got_body, &format!("Hi {name}, the water is off on Tuesday."));
        assert!(!to.iter().any(|p| got_body.contains(&p[2..])), "a number in a text: {got_body}");
    }
    println!("with the quote closed: {} texts, each to its own row's tenant with its own name", texts.len());
    assert_eq!(texts.len(), 4);
}

/// Acceptance 2: input without a bound stops at one. `producer bulk --recipients /dev/zero` exits 2 within seconds
/// naming the bound, its peak memory printed; a file past `MESSENGER_MAX_RECIPIENTS_FILE_MB` likewise. A recipient
/// with 700 variables is refused while it is read. Twenty 6 MB dry runs at once: a few run, the others are told to
/// come back (503 with `Retry-After`), the server's peak memory stays bounded, and it is still serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_stops_at_its_bounds_and_heavy_requests_run_a_few_at_a_time() {
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "20"]).await;
    let before = w.redis.digest();
    let (code, took, rss, err) =
        measured(&w.env, &["bulk", "--customer", "acme", "--body", "hi", "--recipients", "/dev/zero"]);
    println!("bulk --recipients /dev/zero: exit {code:?} after {took:.2?}, peak RSS {rss:.1} MB: {}", err.trim());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("line 1 is longer than 65536 bytes"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(rss <= 512.0, "peak RSS {rss} MB");

    // A real list larger than the file bound (set to 1 MB here): refused at the line where it passed it.
    let path = std::env::temp_dir().join(format!("messenger-big-{}.txt", ulid::Ulid::new()));
    let list: String = recipients(100_000, 0).iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, &list).unwrap();
    let env = w.env.clone().set("MESSENGER_MAX_RECIPIENTS_FILE_MB", 1);
    let (code, _, _, err) =
        measured(&env, &["bulk", "--customer", "acme", "--body", "hi", "--recipients", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    println!(
        "a {:.1} MB list with MESSENGER_MAX_RECIPIENTS_FILE_MB=1: exit {code:?}: {}",
        list.len() as f64 / 1e6,
        err.trim()
    );
    assert_eq!(code, Some(2));
    // Every line is 13 bytes: the one that passes 1 MB is line ⌊1,048,576 / 13⌋ + 1.
    let at = 1_048_576 / 13 + 1;
    assert!(
        err.contains(&format!("larger than 1 MB (MESSENGER_MAX_RECIPIENTS_FILE_MB); stopped at line {at}")),
        "{err}"
    );
    assert_eq!(w.redis.digest(), before);

    let server = Server::new();
    let mut serve = server.start(&w.env, &format!("ops:{ADMIN}:admin"), &[]).await;
    let idle = peak_rss_mb(serve.pid());
    // 700 variables on one recipient: refused as it is read, naming it.
    let vars: serde_json::Map<String, Value> = (0..700).map(|i| (format!("v{i}"), json!("x"))).collect();
    let wide = json!({"body": "Hi", "dry_run": true, "recipients": [{"to": recipients(1, 0)[0], "vars": vars}]});
    let (s, e, _) = server.call("POST", "/v1/customers/acme/bulk-texts", ADMIN, Some(&wide)).await;
    println!("a recipient with 700 variables: {s} {}", e["error"]["message"]);
    assert_eq!(s, 422);
    assert!(e["error"]["message"].as_str().unwrap().contains("recipients[0].vars: more than 50 variables"), "{e}");

    // Twenty 6 MB dry runs at once: 1,000 recipients of 40 values of 140 characters each.
    let value = "x".repeat(140);
    let to = recipients(1_000, 0);
    let rows: Vec<Value> = to
        .iter()
        .map(|t| {
            let vars: serde_json::Map<String, Value> = (0..40).map(|i| (format!("v{i}"), json!(value))).collect();
            json!({"to": t, "vars": vars})
        })
        .collect();
    let body = serde_json::to_vec(&json!({"body": "Hi {{v0}}", "dry_run": true, "recipients": rows})).unwrap();
    let mb = body.len() as f64 / 1e6;
    let started = Instant::now();
    let answers = futures::future::join_all((0..20).map(|_| {
        let body = body.clone();
        let url = format!("{}/v1/customers/acme/bulk-texts", server.base);
        async move {
            let r = harness::http()
                .post(url)
                .bearer_auth(ADMIN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("an answer");
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), retry)
        }
    }))
    .await;
    let peak = peak_rss_mb(serve.pid());
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let shed: Vec<&Option<String>> = answers.iter().filter(|(s, _)| *s == 503).map(|(_, r)| r).collect();
    println!(
        "20 concurrent {mb:.1} MB dry runs in {:.1?}: 200 x{ok}, 503 x{} (Retry-After {:?}); server peak RSS {peak:.0} MB \
         (idle {idle:.0} MB)",
        started.elapsed(),
        shed.len(),
        shed.first()
    );
    assert!(mb > 5.5 && mb < 7.0, "{mb} MB");
    assert_eq!(ok + shed.len(), 20, "{answers:?}");
    assert!(ok >= 2 && !shed.is_empty(), "{answers:?}");
    assert!(shed.iter().all(|r| r.as_deref() == Some("1")), "{answers:?}");
    assert!(peak < 400.0, "peak RSS {peak} MB");
    assert!(serve.is_running(), "the server died");
    let (s, _, _) = server.call("GET", "/v1/customers/acme", ADMIN, None).await;
    assert_eq!(s, 200);
    assert_eq!(w.redis.digest(), before, "a dry run wrote something");
}

/// The session's page: (status, where it redirects).
async fn page(s: &Session, path: &str) -> (u16, Option<String>) {
    let (status, headers, _) = s.get(path).await;
    (status, headers.get("location").map(|l| l.to_str().unwrap().to_owned()))
}

const TO_SIGN_IN: (u16, Option<&str>) = (303, Some("/dashboard/login"));

fn is_sign_in(p: &(u16, Option<String>)) -> bool {
    (p.0, p.1.as_deref()) == TO_SIGN_IN
}

/// Acceptance 3 and 6: a session ends at sign-out on the server (its cookie, copied, is refused, and so is its CSRF
/// token); a token given a new value ends its sessions; an admin ends them all at once; duplicate token names stop
/// the server at start. Chromium walks the sign-in, sign-out and re-use. Thirty wrong sign-ins in a second: 429
/// after the limit, counted in `/metrics`; HSTS on every response when the public URL is https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_on_the_server_and_sign_in_guessing_is_limited() {
    let browser = concat!(env!("CARGO_MANIFEST_DIR"), "/browser");
    assert!(
        std::path::Path::new(&format!("{browser}/node_modules/playwright-core")).exists(),
        "run `npm ci` in tests/browser (scripts/test does it)"
    );
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "globex"]).await;
    let server = Server::new();
    let tokens = format!("ops:{ADMIN}:admin,appb:{APP_B}:globex");
    let https = [("MESSENGER_PUBLIC_URL", "https://messenger.example.com")];
    let mut serve = server.start(&w.env, &tokens, &https).await;

    // HSTS: the public URL is https.
    let (_, _, headers) = server.call("GET", "/dashboard/login", "", None).await;
    let hsts = headers.get("strict-transport-security").map(|v| v.to_str().unwrap().to_owned());
    println!("Strict-Transport-Security: {hsts:?}");
    assert_eq!(hsts.as_deref(), Some("max-age=63072000"));

    // Chromium: sign in, keep a copy of the cookie, sign out, put the copy back.
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dashboard");
    std::fs::create_dir_all(shots).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(format!("{browser}/session.mjs"))
        .args([server.base.as_str(), APP_B, shots])
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "browser script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    println!(
        "Chromium: signed in at {} as {}; signed out to {} (cookie kept: {}); the copy put back lands on {}; signed in again at {}",
        v["signed_in_at"],
        v["signed_in_as"],
        v["after_sign_out"],
        v["cookie_after_sign_out"],
        v["reused_lands_on"],
        v["signed_in_again_at"]
    );
    assert_eq!(v["signed_in_at"], "/dashboard");
    assert_eq!(v["signed_in_as"], "appb");
    assert_eq!(v["after_sign_out"], "/dashboard/login");
    assert_eq!(v["cookie_after_sign_out"], false);
    assert_eq!(v["reused_lands_on"], "/dashboard/login");
    assert_eq!(v["reused_sees_sign_in"], true);
    assert_eq!(v["signed_in_again_at"], "/dashboard");
    assert_eq!(v["page_errors"], json!([]));
    harness::dashboard::assert_axe_clean(&v);

    // Over HTTP: signed out, the cookie and its CSRF token are refused — a replay POST changes nothing.
    let s = dashboard::login(&server.base, APP_B).await;
    assert_eq!(page(&s, "/dashboard/pools/globex").await.0, 200);
    let (status, _) = s.post("/dashboard/logout", &[], true).await;
    assert_eq!(status, 303);
    let digest = w.redis.digest();
    let reused = page(&s, "/dashboard/pools/globex").await;
    let (replay, _) = s.post("/dashboard/events/globex/replay", &[], true).await;
    let (cancel, _) = s.post("/dashboard/logout", &[], true).await;
    println!(
        "after sign-out: the page {reused:?}; a replay POST with its CSRF token {replay}; sign-out again {cancel}"
    );
    assert!(is_sign_in(&reused), "{reused:?}");
    assert_eq!((replay, cancel), (303, 303));
    assert_eq!(w.redis.digest(), digest, "a signed-out session changed something");
    let revoked: Vec<String> = redis::cmd("KEYS").arg("{msgr:dash}:revoked:*").query(&mut w.redis.sync_conn()).unwrap();
    assert_eq!(revoked.len(), 2, "one record per signed-out session (the browser's and this one)");
    let ttl: i64 = redis::cmd("PTTL").arg(&revoked[0]).query(&mut w.redis.sync_conn()).unwrap();
    assert!(ttl > 8 * 3_600_000, "the record must outlive the cookie's 8 hours: {ttl} ms");

    // A token given a new value (same name) ends its sessions; one whose value stayed keeps its own.
    let admin = dashboard::login(&server.base, ADMIN).await;
    let appb = dashboard::login(&server.base, APP_B).await;
    serve.kill9();
    let rotated = "app-b-rotated-token-9876543210";
    let mut serve = server.start(&w.env, &format!("ops:{ADMIN}:admin,appb:{rotated}:globex"), &https).await;
    let (a, b) = (page(&admin, "/dashboard").await, page(&appb, "/dashboard").await);
    println!("after appb's value was rotated and the server restarted: admin's session {a:?}, appb's {b:?}");
    assert_eq!(a.0, 200);
    assert!(is_sign_in(&b), "{b:?}");
    let (status, _, _) = server.call("GET", "/v1/customers/globex", APP_B, None).await;
    assert_eq!(status, 401, "the old value still works on /v1");

    // An admin signs everyone out: both sessions end; a sign-in afterwards works.
    let appb = dashboard::login(&server.base, rotated).await;
    assert_eq!(page(&appb, "/dashboard").await.0, 200);
    let (status, r, _) = server.call("POST", "/v1/sessions/revoke-all", APP_B, None).await;
    assert_eq!(status, 401, "{r}");
    let (status, r, _) = server.call("POST", "/v1/sessions/revoke-all", rotated, None).await;
    assert_eq!(status, 403, "a scoped token may not sign everyone out: {r}");
    let (status, r, _) = server.call("POST", "/v1/sessions/revoke-all", ADMIN, None).await;
    assert_eq!(status, 200, "{r}");
    let (a, b) = (page(&admin, "/dashboard").await, page(&appb, "/dashboard").await);
    let fresh = dashboard::login(&server.base, rotated).await;
    println!(
        "revoke-all ({}): admin {a:?}, appb {b:?}; a new sign-in {:?}",
        r["signed_in_before"],
        page(&fresh, "/dashboard").await
    );
    assert!(is_sign_in(&a) && is_sign_in(&b));
    assert_eq!(page(&fresh, "/dashboard").await.0, 200);

    // Thirty wrong sign-ins as fast as they go: 401 until the limit (10), then 429 with Retry-After — for the right
    // token too, from this address, until the window ends.
    let c = harness::http_builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login = c.get(format!("{}/dashboard/login", server.base)).send().await.unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let csrf = dashboard::csrf_of(&login.text().await.unwrap()).unwrap();
    let try_token = |token: String| {
        let (c, cookie, csrf, url) =
            (c.clone(), cookie.clone(), csrf.clone(), format!("{}/dashboard/login", server.base));
        async move {
            let r =
                c.post(url).header("cookie", cookie).form(&[("token", token), ("csrf", csrf)]).send().await.unwrap();
            (r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()))
        }
    };
    let started = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..30 {
        statuses.push(try_token(format!("wrong-guess-number-{i:04}")).await);
    }
    let took = started.elapsed();
    let right = try_token(ADMIN.to_owned()).await;
    let codes: Vec<u16> = statuses.iter().map(|(s, _)| *s).collect();
    println!("30 wrong sign-ins in {took:.2?}: {codes:?}; then the right token: {right:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(&codes[..10], &[401; 10]);
    assert!(codes[10..].iter().all(|c| *c == 429), "{codes:?}");
    let retry: u64 = statuses[29].1.as_deref().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    assert_eq!(right.0, 429, "the limit holds for the right token too");
    let metrics = harness::http().get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    let limited = metrics.lines().find(|l| l.starts_with("messenger_dashboard_signins_total{outcome=\"limited\"}"));
    println!("/metrics: {}", limited.unwrap_or("(missing)"));
    assert_eq!(limited.and_then(|l| l.rsplit(' ').next()), Some("21"));
    let (_, _, headers) = server.call("GET", "/dashboard/login", "", None).await;
    assert!(headers.get("strict-transport-security").is_some());

    // Duplicate names stop the server at start, naming them (and no value).
    serve.kill9();
    let dup = format!("dup:{ADMIN}:admin,dup:{APP_B}:globex");
    let out =
        w.env.clone().set("MESSENGER_API_TOKENS", &dup).producer_async(&["serve", "--listen", "127.0.0.1:0"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("duplicate names: exit {:?}: {}", out.status.code(), err.trim());
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("the name \"dup\" is given to more than one token") && !err.contains(ADMIN), "{err}");
}

/// The worst request for `producer serve`'s memory, many at once: each 8 MB body packed with the smallest variables
/// the API accepts (95,000 recipients of 7 one-character variables), whose parsed form is the largest per byte.
/// Prints the server's peak RSS; docs/API.md and BENCHMARKS quote it. A study (run it with `--ignored`), not a CI test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test -p messenger-tests --test security -- --ignored --nocapture worst_case"]
async fn worst_case_memory_of_producer_serve() {
    let w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme"]).await;
    let server = Server::new();
    let serve = server.start(&w.env, &format!("ops:{ADMIN}:admin"), &[]).await;
    let idle = peak_rss_mb(serve.pid());
    let to = recipients(95_000, 0);
    let rows: Vec<Value> = to
        .iter()
        .map(|t| json!({"to": t, "vars": {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5", "f": "6", "g": "7"}}))
        .collect();
    let body = serde_json::to_vec(&json!({"body": "Hi {{a}}", "dry_run": true, "recipients": rows})).unwrap();
    let mb = body.len() as f64 / 1e6;
    for concurrent in [1, 2, 20] {
        let answers = futures::future::join_all((0..concurrent).map(|_| {
            let url = format!("{}/v1/customers/acme/bulk-texts", server.base);
            let body = body.clone();
            async move {
                let r = harness::http()
                    .post(url)
                    .bearer_auth(ADMIN)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                r.map(|r| r.status().as_u16()).unwrap_or(0)
            }
        }))
        .await;
        println!(
            "{concurrent} x {mb:.1} MB of tiny variables: answers {answers:?}; server peak RSS so far {:.0} MB (idle {idle:.0} MB)",
            peak_rss_mb(serve.pid())
        );
        assert!(answers.iter().all(|s| *s == 200 || *s == 503), "{answers:?}");
    }
}
