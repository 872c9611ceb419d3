//! Answering back: the events a customer's app reads (`GET /v1/customers/{id}/events`), written in the same script
//! as each change they report; replies with the batch they answer; opt-outs and their records; HELP answered.
//! Everything through a real `producer serve` process, killed and restarted while the app pages through.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{ADMIN, World, inbound_params, status_params};
use harness::fixtures::{recipients, wait_until};
use harness::procs::Proc;
use harness::sim::{self, SimConfig};
use rand::seq::SliceRandom;
use serde_json::{Value, json};

struct Server {
    base: String,
    port: u16,
}

impl Server {
    /// A server's address for `w` (a free port), with the workers' public URL pointing at it and `env` set.
    fn for_world(w: &mut World, env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Server { base: format!("http://127.0.0.1:{port}"), port };
        let mut e = w.env.clone().set("MESSENGER_PUBLIC_URL", &server.base);
        for (k, v) in env {
            e = e.set(k, v);
        }
        w.env = e;
        server
    }

    fn start(w: &World, port: u16) -> Proc {
        let listen = format!("127.0.0.1:{port}");
        let public = format!("http://{listen}");
        w.env.spawn_producer(&[
            "serve",
            "--listen",
            &listen,
            "--public-url",
            &public,
            "--api-tokens",
            &format!("ops:{ADMIN}:admin"),
        ])
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req =
            harness::http().request(method.parse().unwrap(), format!("{}{path}", self.base)).bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Err(_) => (0, Value::Null),
        }
    }

    async fn up(&self) {
        wait_until(Duration::from_secs(60), "producer serve to answer", || async {
            let (s, _) = self.call("GET", "/healthz", None).await;
            (s == 200).then_some(())
        })
        .await;
    }
}

/// A signed inbound webhook as Twilio sends it; the status and body of the answer.
async fn reply(server: &Server, from: &str, to: &str, body: &str, sid: &str) -> (u16, String) {
    let params = inbound_params(from, to, body, sid);
    sim::post_signed(sim::DEFAULT_AUTH_TOKEN, &format!("{}/twilio/inbound", server.base), &params).await.unwrap()
}

/// Every event of `customer` from the start, `page` at a time (the server may be restarted between pages by
/// `between`).
async fn all_events(server: &Server, customer: &str, page: usize, mut between: impl FnMut(usize)) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    for i in 0.. {
        let q = after.as_ref().map_or(String::new(), |a| format!("&after={a}"));
        let (s, body) = loop {
            let (s, body) = server.call("GET", &format!("/v1/customers/{customer}/events?limit={page}{q}"), None).await;
            if s != 0 {
                break (s, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(s, 200, "{body}");
        let events = body["events"].as_array().unwrap().clone();
        if events.is_empty() {
            assert_eq!(body["next"].as_str(), after.as_deref(), "the cursor stays put at the end");
            break;
        }
        after = body["next"].as_str().map(str::to_owned);
        out.extend(events);
        between(i);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_every_outcome_reply_and_opt_out_once_in_order_across_server_restarts() {
    let mut w = World::start(SimConfig::default()).await;
    // 25 texts a number: the 40 below go out from two numbers, so which number answers a tenant matters.
    let server = Server::for_world(&mut w, &[("MESSENGER_DAILY_QUOTA", "25")]);
    let mut serve = Some(Server::start(&w, server.port));
    server.up().await;
    let help = "Acme Property: notices about your building. Reply STOP to end.";
    let (s, c) = server
        .call("PUT", "/v1/customers/acme", Some(json!({"max_numbers": 3, "events": true, "help_text": help})))
        .await;
    assert_eq!(s, 201, "{c}");
    assert_eq!((c["events"].as_bool(), c["help_text"].as_str()), (Some(true), Some(help)));
    // A customer that does not record events: nothing of its batch appears anywhere.
    let (s, _) = server.call("PUT", "/v1/customers/beta", Some(json!({"max_numbers": 1}))).await;
    assert_eq!(s, 201);

    let _workers: Vec<_> = (0..2).map(|_| w.worker(8)).collect();
    let to = recipients(40, 0);
    let (s, accepted) = server
        .call("POST", "/v1/customers/acme/bulk-texts", Some(json!({"body": "Water off 9-11", "recipients": to})))
        .await;
    assert_eq!(s, 202, "{accepted}");
    let batch = accepted["batch_id"].as_str().unwrap().to_owned();
    let (s, _) = server
        .call("POST", "/v1/customers/beta/bulk-texts", Some(json!({"body": "Hello", "recipients": recipients(5, 500)})))
        .await;
    assert_eq!(s, 202);
    let status = wait_until(Duration::from_secs(60), "the batch to complete", || async {
        let (_, b) = server.call("GET", &format!("/v1/batches/{batch}"), None).await;
        (b["state"] == "complete").then_some(b)
    })
    .await;
    assert_eq!(status["sent"], 40);

    // Delivery reports: 30 delivered, 10 undelivered (30007), each status three times, shuffled.
    let messages: Vec<_> = w.state().messages.into_iter().filter(|m| m.body == "Water off 9-11").collect();
    assert_eq!(messages.len(), 40);
    let mut callbacks = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let url = m.status_callback.clone().expect("status callbacks asked for");
        let last = if i < 30 { "delivered" } else { "undelivered" };
        for status in ["sent", last] {
            callbacks.extend(std::iter::repeat_n((url.clone(), status_params(&m.sid, &m.to, status)), 3));
        }
    }
    callbacks.shuffle(&mut rand::rng());
    for (url, p) in &callbacks {
        let (code, _) = sim::post_signed(sim::DEFAULT_AUTH_TOKEN, url, p).await.unwrap();
        assert!(code < 300, "callback answered {code}");
    }
    let undelivered: HashSet<&str> = messages[30..].iter().map(|m| m.to.as_str()).collect();

    // Replies: five answers, three STOPs (one tenant twice), one START, one HELP; and one reply retried by Twilio.
    let from_of = |r: &str| messages.iter().find(|m| m.to == r).unwrap().from.clone();
    let mut replies = Vec::new();
    for (i, r) in to[..5].iter().enumerate() {
        replies.push((r.clone(), format!("Is the water back on? #{i}")));
    }
    for r in &to[5..8] {
        replies.push((r.clone(), "STOP".to_owned()));
    }
    replies.push((to[5].clone(), "stop".to_owned()));
    replies.push((to[6].clone(), " Start ".to_owned()));
    for (i, (r, body)) in replies.iter().enumerate() {
        let (code, _) = reply(&server, r, &from_of(r), body, &format!("SMreply{i:030}")).await;
        assert_eq!(code, 200);
    }
    let (code, twiml) = reply(&server, &to[9], &from_of(&to[9]), "help", "SMhelp000000000000000000000000001").await;
    println!("HELP answered {code}: {twiml}");
    assert!(twiml.contains(&format!("<Message>{}</Message>", help.replace('\'', "&apos;"))), "{twiml}");
    let (code, _) =
        reply(&server, &to[0], &from_of(&to[0]), "Is the water back on? #0", &format!("SMreply{:030}", 0)).await;
    assert_eq!(code, 200, "a retried webhook is accepted (and recorded once)");

    // The app pages through 9 events at a time; the server is killed (-9) and restarted after the second page.
    let mut restarts = 0;
    let events = all_events(&server, "acme", 9, |page| {
        if page == 1 {
            drop(serve.take());
            serve = Some(Server::start(&w, server.port));
            restarts += 1;
        }
    })
    .await;
    assert_eq!(restarts, 1);

    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let distinct: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "an event came twice");
    let key = |id: &str| -> (u64, u64) {
        let (ms, n) = id.trim_start_matches("evt_").split_once('-').unwrap();
        (ms.parse().unwrap(), n.parse().unwrap())
    };
    assert!(ids.windows(2).all(|p| key(p[0]) < key(p[1])), "events out of order");
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        *by_type.entry(e["type"].as_str().unwrap()).or_default() += 1;
        assert_eq!(e["data"]["customer"], "acme");
        assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    println!("{} events over 1 server restart, by type: {by_type:?}", events.len());
    let expected: BTreeMap<&str, usize> = [
        ("batch.completed", 1),
        ("message.delivered", 30),
        ("message.failed", 10),
        ("message.received", replies.len() + 1),
        ("message.sent", 40),
        ("recipient.opted_in", 1),
        ("recipient.opted_out", 3),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_type, expected);

    // Their data: each message's sid and recipient; the failure's code and meaning; a reply's body and batch.
    let sent: HashSet<(String, String)> = events
        .iter()
        .filter(|e| e["type"] == "message.sent")
        .map(|e| {
            (e["data"]["recipient"].as_str().unwrap().to_owned(), e["data"]["message_sid"].as_str().unwrap().to_owned())
        })
        .collect();
    let truth: HashSet<(String, String)> = messages.iter().map(|m| (m.to.clone(), m.sid.clone())).collect();
    assert_eq!(sent, truth);
    for e in events.iter().filter(|e| e["type"] == "message.failed") {
        assert_eq!(e["data"]["error_code"], 30007, "{e}");
        assert!(e["data"]["error_message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        assert!(undelivered.contains(e["data"]["recipient"].as_str().unwrap()), "{e}");
    }
    let received: Vec<&Value> = events.iter().filter(|e| e["type"] == "message.received").collect();
    for (e, (r, body)) in received.iter().zip(&replies) {
        assert_eq!(
            (e["data"]["recipient"].as_str(), e["data"]["body"].as_str()),
            (Some(r.as_str()), Some(body.as_str()))
        );
        assert_eq!(e["data"]["batch"], batch.as_str(), "a reply names the batch it answers: {e}");
        assert_eq!(e["data"]["to"], from_of(r).as_str());
    }
    let completed = events.iter().find(|e| e["type"] == "batch.completed").unwrap();
    assert_eq!(
        (completed["data"]["batch"].as_str(), completed["data"]["sent"].as_u64()),
        (Some(batch.as_str()), Some(40))
    );
    let last_sent = events.iter().rposition(|e| e["type"] == "message.sent").unwrap();
    let completed_at = events.iter().position(|e| e["type"] == "batch.completed").unwrap();
    assert!(completed_at > last_sent, "batch.completed comes after its last message.sent");
    let stops: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "recipient.opted_out")
        .map(|e| e["data"]["recipient"].as_str().unwrap())
        .collect();
    assert_eq!(stops, to[5..8].iter().map(String::as_str).collect::<Vec<_>>());

    // Reading again from the middle returns exactly the rest.
    let (_, page) = server.call("GET", &format!("/v1/customers/acme/events?after={}&limit=1000", ids[20]), None).await;
    let rest: Vec<&str> = page["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(rest, ids[21..].to_vec());
    // The customer without events has none.
    let (_, beta) = server.call("GET", "/v1/customers/beta/events", None).await;
    assert_eq!(
        (beta["events"].as_array().map(Vec::len), beta["recording"].as_bool()),
        (Some(0), Some(false)),
        "{beta}"
    );

    // Opt-out records: the tenant who stopped twice, and the one who stopped and started again.
    let (_, twice) = server.call("GET", &format!("/v1/customers/acme/opt-outs/{}", to[5]), None).await;
    println!("opt-out record: {twice}");
    assert_eq!(twice["opted_out"], true);
    let kw: Vec<&str> = twice["history"].as_array().unwrap().iter().map(|h| h["keyword"].as_str().unwrap()).collect();
    assert_eq!(kw, ["STOP", "stop"]);
    assert_eq!(twice["history"][0]["number"], from_of(&to[5]).as_str());
    let (_, back) = server.call("GET", &format!("/v1/customers/acme/opt-outs/{}", to[6]), None).await;
    assert_eq!(back["opted_out"], false);
    let kinds: Vec<&str> = back["history"].as_array().unwrap().iter().map(|h| h["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["opt_out", "opt_in"]);
    let (_, none) = server.call("GET", &format!("/v1/customers/acme/opt-outs/{}", to[20]), None).await;
    assert_eq!((none["opted_out"].as_bool(), none["history"].as_array().map(Vec::len)), (Some(false), Some(0)));

    // Bad input names the problem.
    for (path, field) in [
        ("/v1/customers/acme/events?after=yesterday", "after"),
        ("/v1/customers/acme/events?limit=0", "limit"),
        ("/v1/customers/acme/events?limit=5000", "limit"),
        ("/v1/customers/acme/opt-outs/not-a-phone", "phone"),
    ] {
        let (s, body) = server.call("GET", path, None).await;
        println!("{path}: {s} {body}");
        assert_eq!(s, 422, "{path}: {body}");
        assert!(body.to_string().contains(field), "{path}: {body}");
    }
    let (s, body) = server.call("PUT", "/v1/customers/acme", Some(json!({"help_text": "x".repeat(400)}))).await;
    assert_eq!(s, 422, "{body}");
    assert!(body.to_string().contains("help_text"), "{body}");

    conversations(&w, &server, &to, &messages, &batch, help).await;
}

/// The tenants' threads, and the app answering them: `to[0]` was texted from number A and replied to it; tenant X,
/// texted from B, writes to A instead. Each answer (`POST …/messages`) goes out from the number the tenant is
/// talking to, and the threads (API, then the dashboard page in Chromium, axe-core clean) show every message once.
async fn conversations(
    w: &World,
    server: &Server,
    to: &[String],
    messages: &[sim::SimMessage],
    batch: &str,
    help: &str,
) {
    let from_of = |r: &str| messages.iter().find(|m| m.to == r).unwrap().from.clone();
    let a = from_of(&to[0]);
    let x = to[10..].iter().find(|r| from_of(r) != a).expect("the batch went out from two numbers").clone();
    let b = from_of(&x);
    let (code, _) = reply(server, &x, &a, "Which number is this?", "SMotherNumber00000000000000000001").await;
    assert_eq!(code, 200);
    for (tenant, body) in [(&to[0], "Yes, the water is back on."), (&x, "This is Acme's line, Alex here.")] {
        let (s, r) =
            server.call("POST", "/v1/customers/acme/messages", Some(json!({"to": tenant, "body": body}))).await;
        assert_eq!(s, 202, "{r}");
    }
    let answers = wait_until(Duration::from_secs(60), "the two answers to go out", || async {
        let got: Vec<sim::SimMessage> = w
            .state()
            .messages
            .into_iter()
            .filter(|m| m.body.starts_with("Yes, the") || m.body.starts_with("This is"))
            .collect();
        (got.len() == 2).then_some(got)
    })
    .await;
    for m in &answers {
        println!(
            "answer to {} went from {} (the tenant wrote to {})",
            shared::domain::Masked(&m.to),
            shared::domain::Masked(&m.from),
            shared::domain::Masked(&a)
        );
        assert_eq!(m.from, a, "an answer did not go from the number the tenant is talking to");
    }
    assert_ne!(a, b);

    let thread = |phone: String| async move {
        let (s, c) = server.call("GET", &format!("/v1/customers/acme/conversations/{phone}"), None).await;
        assert_eq!(s, 200, "{c}");
        c
    };
    let summary = |c: &Value| -> Vec<(String, String, String)> {
        c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let f = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                (f("direction"), f("number"), f("body"))
            })
            .collect()
    };
    let first = wait_until(Duration::from_secs(30), "the answer in the thread", || async {
        let c = thread(to[0].clone()).await;
        (c["messages"].as_array().map(Vec::len) == Some(3)).then_some(c)
    })
    .await;
    let out = |n: &str, body: &str| ("outbound".to_owned(), n.to_owned(), body.to_owned());
    let inb = |n: &str, body: &str| ("inbound".to_owned(), n.to_owned(), body.to_owned());
    assert_eq!(
        summary(&first),
        [out(&a, "Water off 9-11"), inb(&a, "Is the water back on? #0"), out(&a, "Yes, the water is back on.")],
        "a retried reply appears once; the answer goes last"
    );
    assert_eq!(first["messages"][0]["batch"], batch);
    assert_eq!(first["messages"][1]["batch"], batch, "the reply answers the batch");
    assert_eq!(first["messages"][0]["message_sid"], messages.iter().find(|m| m.to == to[0]).unwrap().sid.as_str());
    let other = wait_until(Duration::from_secs(30), "X's thread", || async {
        let c = thread(x.clone()).await;
        (c["messages"].as_array().map(Vec::len) == Some(3)).then_some(c)
    })
    .await;
    assert_eq!(
        summary(&other),
        [out(&b, "Water off 9-11"), inb(&a, "Which number is this?"), out(&a, "This is Acme's line, Alex here.")]
    );
    assert!(other["messages"][1].get("batch").is_none(), "a reply to another number answers no batch: {other}");
    let helped = thread(to[9].clone()).await;
    assert_eq!(summary(&helped)[1..], [inb(&from_of(&to[9]), "help"), out(&from_of(&to[9]), help)]);
    let stopped = thread(to[7].clone()).await;
    assert_eq!(stopped["opted_out"], true);
    println!(
        "threads: {} and {} messages; HELP thread {:?}",
        first["messages"].as_array().unwrap().len(),
        other["messages"].as_array().unwrap().len(),
        summary(&helped).iter().map(|m| m.0.as_str()).collect::<Vec<_>>()
    );
    for (path, field) in
        [("/v1/customers/acme/conversations/12345", "phone"), ("/v1/customers/nobody/conversations/+14155550100", "")]
    {
        let (s, body) = server.call("GET", path, None).await;
        println!("{path}: {s} {body}");
        assert!(s == 422 || s == 404, "{path}: {s} {body}");
        assert!(body.to_string().contains(field), "{body}");
    }

    // The dashboard's conversation page, as support staff use it, in Chromium.
    let browser = concat!(env!("CARGO_MANIFEST_DIR"), "/browser");
    assert!(
        std::path::Path::new(&format!("{browser}/node_modules/playwright-core")).exists(),
        "run `npm ci` in tests/browser (scripts/test does it)"
    );
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dashboard");
    std::fs::create_dir_all(shots).unwrap();
    let run = tokio::process::Command::new("node")
        .arg(format!("{browser}/conversation.mjs"))
        .args([server.base.as_str(), ADMIN, "acme", to[0].as_str(), shots])
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "browser script failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let seen: Vec<(String, String)> = v["thread"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["dir"].as_str().unwrap().to_owned(), m["body"].as_str().unwrap().to_owned()))
        .collect();
    println!(
        "conversation page: {} messages; axe serious/critical: {}",
        seen.len(),
        json!(harness::dashboard::axe_serious(&v))
    );
    let bodies: Vec<String> = summary(&first).into_iter().map(|m| m.2).collect();
    assert_eq!(seen.iter().map(|m| m.1.clone()).collect::<Vec<_>>(), bodies);
    assert_eq!(seen.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(), ["out", "in", "out"]);
    harness::dashboard::assert_axe_clean(&v);
    assert_eq!(v["events_heading"], "Events of acme");
    assert_eq!(v["page_errors"], json!([]));
}

/// One request an endpoint received: its headers and body.
type Request = (BTreeMap<String, String>, String);

/// What the app's endpoint received, in arrival order.
#[derive(Clone, Default)]
struct Inbox(std::sync::Arc<std::sync::Mutex<Vec<Request>>>);

/// An app's endpoint on loopback: 503 for the first `down`, then every tenth request answered only after `slow`
/// (longer than Messenger waits: it times out and delivers again); `gone`: 410 to everything.
async fn endpoint(down: Duration, slow: Duration, gone: bool) -> (String, Inbox) {
    use axum::http::{HeaderMap, StatusCode};
    let inbox = Inbox::default();
    let started = std::time::Instant::now();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/hooks/messenger",
        axum::routing::post({
            let inbox = inbox.clone();
            move |headers: HeaderMap, body: String| {
                let (inbox, count) = (inbox.clone(), count.clone());
                async move {
                    let h = headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned())).collect();
                    inbox.0.lock().unwrap().push((h, body));
                    if gone {
                        return StatusCode::GONE;
                    }
                    if started.elapsed() < down {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    if count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10 == 9 {
                        tokio::time::sleep(slow).await;
                    }
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/messenger", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, inbox)
}

/// How big a delivery run is.
struct Run {
    recipients: usize,
    /// Signed replies, each posted twice (Twilio retries a webhook), of which `stops` are STOP.
    replies: usize,
    stops: usize,
    /// The endpoint answers 503 this long after it starts.
    down: Duration,
}

/// Acceptance 1 at CI size: 200 recipients, 20 replies, 5 STOPs, the endpoint down for 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_apps_endpoint_signed_once_per_id_in_order_through_outages_and_a_killed_server() {
    delivery_run(Run { recipients: 200, replies: 20, stops: 5, down: Duration::from_secs(5) }).await;
}

/// Acceptance 1 at full size (a few minutes): 5,000 recipients, 500 replies, 50 STOPs, the endpoint down for 30 s.
/// `cargo test -p messenger-tests --test events -- --ignored --nocapture full_size`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full size, a few minutes: run by hand"]
async fn full_size_events_reach_the_apps_endpoint_through_outages_and_killed_processes() {
    delivery_run(Run { recipients: 5_000, replies: 500, stops: 50, down: Duration::from_secs(30) }).await;
}

/// A batch's events delivered to an app's endpoint that answers 503 for `run.down` and then times out on every tenth
/// request, while delivery reports arrive shuffled and repeated, tenants reply (some twice, some STOP), a worker is
/// killed (-9) mid-send and `producer serve` is killed (-9) mid-delivery. After recovery: the distinct event ids
/// per type equal the truth, each occurrence has one id, per recipient the events left in order, and every
/// signature verifies with the Python `standardwebhooks` library.
async fn delivery_run(run: Run) {
    let started = std::time::Instant::now();
    let mut w = World::start(SimConfig::default()).await;
    let server = Server::for_world(
        &mut w,
        &[
            ("MESSENGER_EVENTS_ALLOW_PRIVATE", "true"),
            ("MESSENGER_EVENTS_RETRY_SCHEDULE", "300ms,500ms,1s,1s,2s,2s,2s,2s,2s,2s,2s,2s,5s,5s,5s,5s"),
            ("MESSENGER_EVENTS_TIMEOUT_MS", "400"),
            ("MESSENGER_EVENTS_CONCURRENCY", "8"),
        ],
    );
    let mut serve = Server::start(&w, server.port);
    server.up().await;
    let (url, inbox) = endpoint(run.down, Duration::from_millis(900), false).await;
    let endpoint_up = tokio::time::Instant::now() + run.down;
    let max_numbers = run.recipients.div_ceil(250) + 2;
    let (s, c) =
        server.call("PUT", "/v1/customers/acme", Some(json!({"max_numbers": max_numbers, "events_url": url}))).await;
    assert_eq!(s, 201, "{c}");
    let secret = c["events_secret"].as_str().expect("a generated secret, shown once").to_owned();
    assert!(secret.starts_with("whsec_") && c["events"] == true, "{c}");
    let (_, again) = server.call("GET", "/v1/customers/acme", None).await;
    assert!(again.get("events_secret").is_none() && !again.to_string().contains(&secret), "the secret is shown once");
    // An endpoint that answers 410 Gone is not called again.
    let (gone_url, gone_inbox) = endpoint(Duration::ZERO, Duration::ZERO, true).await;
    let (s, _) =
        server.call("PUT", "/v1/customers/beta", Some(json!({"max_numbers": 1, "events_url": gone_url}))).await;
    assert_eq!(s, 201);

    let mut workers: Vec<_> = (0..2).map(|_| w.worker(16)).collect();
    let to = recipients(run.recipients, 0);
    let (s, accepted) = server
        .call("POST", "/v1/customers/acme/bulk-texts", Some(json!({"body": "Boiler service", "recipients": to})))
        .await;
    assert_eq!(s, 202, "{accepted}");
    let batch = accepted["batch_id"].as_str().unwrap().to_owned();
    server
        .call("POST", "/v1/customers/beta/bulk-texts", Some(json!({"body": "Hi", "recipients": recipients(3, 900)})))
        .await;
    // A worker killed (-9) a third of the way through the sends; its jobs come back when their leases lapse.
    wait_until(Duration::from_secs(120), "a third of the texts out", || async {
        (w.state().messages.len() >= run.recipients / 3).then_some(())
    })
    .await;
    workers[0].kill9();
    println!("worker killed (-9) after {} texts", w.state().messages.len());
    workers.push(w.worker(16));
    wait_until(Duration::from_secs(300), "the batch to complete", || async {
        let (_, b) = server.call("GET", &format!("/v1/batches/{batch}"), None).await;
        (b["state"] == "complete").then_some(())
    })
    .await;
    let messages: Vec<_> = w.state().messages.into_iter().filter(|m| m.body == "Boiler service").collect();
    assert_eq!(messages.len(), run.recipients, "each tenant texted once");
    // Delivery reports: `sent`, then `delivered` (nine in ten) or `undelivered` 30007, each twice, shuffled.
    let mut callbacks = Vec::new();
    let mut undelivered = HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        let last = if i % 10 == 3 { "undelivered" } else { "delivered" };
        if last == "undelivered" {
            undelivered.insert(m.to.clone());
        }
        for status in ["sent", last] {
            let p = status_params(&m.sid, &m.to, status);
            callbacks.extend(std::iter::repeat_n((m.status_callback.clone().unwrap(), p), 2));
        }
    }
    callbacks.shuffle(&mut rand::rng());
    // Posted as Twilio does, retrying while the server is away (it is killed below, mid-stream).
    let n_callbacks = callbacks.len();
    let posting = tokio::spawn(async move {
        for (url, p) in &callbacks {
            loop {
                match sim::post_signed(sim::DEFAULT_AUTH_TOKEN, url, p).await {
                    Ok((code, _)) if code < 300 => break,
                    Ok((code, _)) if code < 500 => panic!("callback answered {code}"),
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    });
    // Once the endpoint is up and has taken a quarter of the events, the server is killed (-9) and started again,
    // while delivery reports are still arriving.
    let expected_total = run.recipients * 2 + run.replies + run.stops + 1;
    let distinct = |inbox: &Inbox| {
        inbox.0.lock().unwrap().iter().map(|(h, _)| h["webhook-id"].clone()).collect::<HashSet<_>>().len()
    };
    wait_until(Duration::from_secs(300), "the endpoint to take a quarter of the events", || async {
        (tokio::time::Instant::now() >= endpoint_up && distinct(&inbox) > expected_total / 4).then_some(())
    })
    .await;
    drop(serve);
    let requests = inbox.0.lock().unwrap().len();
    let events = distinct(&inbox);
    let posted_all = posting.is_finished();
    println!(
        "producer serve killed (-9) after {requests} deliveries of {events} distinct events; delivery reports all \
         posted: {posted_all}"
    );
    serve = Server::start(&w, server.port);
    server.up().await;
    posting.await.unwrap();
    // Replies, each posted twice: the first `stops` are STOP, the rest questions.
    let mut bodies: BTreeMap<String, String> = BTreeMap::new();
    for (i, r) in to[..run.replies].iter().enumerate() {
        let from = messages.iter().find(|m| &m.to == r).unwrap().from.clone();
        let body = if i < run.stops { "STOP".to_owned() } else { format!("Is the heat back? #{i}") };
        for _ in 0..2 {
            assert_eq!(reply(&server, r, &from, &body, &format!("SMr{i:031}")).await.0, 200);
        }
        bodies.insert(r.clone(), body);
    }
    println!("{n_callbacks} callbacks and {} replies posted after {:?}", run.replies * 2, started.elapsed());

    let truth = all_events(&server, "acme", 1000, |_| {}).await;
    let truth_ids: Vec<String> = truth.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    let delivered = wait_until(Duration::from_secs(900), "every event delivered", || async {
        let got = inbox.0.lock().unwrap().clone();
        let ids: HashSet<String> = got.iter().filter_map(|(h, _)| h.get("webhook-id").cloned()).collect();
        truth_ids.iter().all(|id| ids.contains(id)).then_some(got)
    })
    .await;
    assert!(serve.is_running());
    let ids: HashSet<&str> = delivered.iter().map(|(h, _)| h["webhook-id"].as_str()).collect();
    let mut by_type: BTreeMap<String, HashSet<&str>> = BTreeMap::new();
    for (h, body) in &delivered {
        let v: Value = serde_json::from_str(body).unwrap();
        by_type.entry(v["type"].as_str().unwrap().to_owned()).or_default().insert(h["webhook-id"].as_str());
    }
    let counts: BTreeMap<&str, usize> = by_type.iter().map(|(t, s)| (t.as_str(), s.len())).collect();
    println!(
        "{} requests for {} distinct events ({:?} of 503, every tenth slower than the timeout, a worker and the server \
         killed -9) after {:?}: {counts:?}",
        delivered.len(),
        ids.len(),
        run.down,
        started.elapsed()
    );
    assert_eq!(ids.len(), truth_ids.len(), "an event the stream does not have was delivered");
    let expected: BTreeMap<&str, usize> = [
        ("batch.completed", 1),
        ("message.delivered", run.recipients - undelivered.len()),
        ("message.failed", undelivered.len()),
        ("message.received", run.replies),
        ("message.sent", run.recipients),
        ("recipient.opted_out", run.stops),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, expected);
    // The same event always carries the same body (one id, one event); one occurrence has one id.
    let mut data_of: BTreeMap<&str, String> = BTreeMap::new();
    let mut ids_of: BTreeMap<(String, String, String), HashSet<&str>> = BTreeMap::new();
    for (h, body) in &delivered {
        let v: Value = serde_json::from_str(body).unwrap();
        let data = v["data"].to_string();
        let prev = data_of.insert(h["webhook-id"].as_str(), data.clone());
        assert!(prev.is_none_or(|p| p == data), "an id carried two different events");
        let field = |k: &str| v["data"][k].as_str().unwrap_or_default().to_owned();
        let occurrence = (v["type"].as_str().unwrap().to_owned(), field("recipient"), field("message_sid"));
        ids_of.entry(occurrence).or_default().insert(h["webhook-id"].as_str());
    }
    let twice: Vec<_> = ids_of.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "occurrences with two ids: {twice:?}");
    for e in truth.iter().filter(|e| e["type"] == "message.received") {
        let r = e["data"]["recipient"].as_str().unwrap();
        assert_eq!(e["data"]["body"].as_str(), bodies.get(r).map(String::as_str), "{e}");
    }
    for e in truth.iter().filter(|e| e["type"] == "message.failed") {
        assert!(undelivered.contains(e["data"]["recipient"].as_str().unwrap()), "{e}");
        assert_eq!(e["data"]["error_code"], 30007, "{e}");
    }
    // Per recipient, events were first delivered in the order they happened.
    let mut first_seen: Vec<&str> = Vec::new();
    let mut seen = HashSet::new();
    for (h, _) in &delivered {
        if seen.insert(h["webhook-id"].as_str()) {
            first_seen.push(h["webhook-id"].as_str());
        }
    }
    let recipient_of: BTreeMap<&str, String> =
        truth.iter().filter_map(|e| Some((e["id"].as_str()?, e["data"]["recipient"].as_str()?.to_owned()))).collect();
    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
    let position: BTreeMap<&str, usize> = truth_ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    for id in &first_seen {
        if let Some(r) = recipient_of.get(id) {
            if let Some(prev) = last.insert(r.as_str(), id) {
                assert!(position[prev] < position[id], "{r}: {id} left before {prev}");
            }
        }
    }
    // Every signature verifies with Standard Webhooks' own Python library.
    let verified = verified_by(&delivered, &secret);
    println!(
        "signatures verified by the Python standardwebhooks library: {} of {}",
        verified.iter().filter(|v| **v).count(),
        delivered.len()
    );
    assert!(verified.iter().all(|v| *v), "a signature did not verify");

    // 410: called once per lane at most (they run side by side), then never again; the customer says why.
    let (_, beta) = server.call("GET", "/v1/customers/beta", None).await;
    println!(
        "after a 410: {} call(s); events_disabled {}",
        gone_inbox.0.lock().unwrap().len(),
        beta["events_disabled"]
    );
    assert!(beta["events_disabled"].as_str().is_some_and(|w| w.contains("410")), "{beta}");
    let calls = gone_inbox.0.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(gone_inbox.0.lock().unwrap().len(), calls, "a gone endpoint was called again");
    assert!((1..=8).contains(&calls), "{calls} calls");
}

/// Acceptance 4: with the guard on, an endpoint on loopback, a private network, the metadata address, IPv6 loopback
/// or a name that resolves to loopback is refused with a clear error — exit 2 from the CLI, 422 from the API — and
/// nothing changes. Issue 29, acceptance 4 and 5: so are the IPv6 forms that carry a private IPv4 address
/// (IPv4-compatible, IPv4-translated, 6to4, Teredo); and a malformed events cursor is the caller's mistake (422
/// naming `after`), not an outage (none logged, `/healthz` unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_on_private_addresses_are_refused_and_change_nothing() {
    let mut w = World::start(SimConfig::default()).await;
    w.producer_ok(&["customer", "add", "acme", "--max-numbers", "2"]).await;
    let server = Server::for_world(&mut w, &[]);
    let _serve = Server::start(&w, server.port);
    server.up().await;
    let before = w.redis.digest();
    for (url, words) in [
        ("https://127.0.0.1/hooks", "loopback"),
        ("https://10.20.30.40/hooks", "private"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://[::1]:8443/hooks", "loopback"),
        ("https://localhost/hooks", "loopback"),
        ("http://93.184.216.34/hooks", "https"),
        ("ftp://example.com/x", "https"),
        // IPv4-compatible, IPv4-translated and 6to4 forms of 127.0.0.1; 6to4 and Teredo forms of 10.0.0.1.
        ("https://[::127.0.0.1]/", "loopback"),
        ("https://[::ffff:0:127.0.0.1]/", "loopback"),
        ("https://[2002:7f00:1::]/", "loopback"),
        ("https://[2002:a00:1::1]/", "private"),
        ("https://[2001:0:a00:1::1]/", "private"),
        ("https://[2001:0:808:808::f5ff:fffe]/", "private"),
    ] {
        let out = w.producer(&["customer", "add", "acme", "--events-url", url]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{url}: exit {:?}: {}", out.status.code(), err.trim());
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(err.contains("--events-url") && err.contains(words), "{url}: {err}");
        let (s, body) = server.call("PUT", "/v1/customers/acme", Some(json!({"events_url": url}))).await;
        assert_eq!(s, 422, "{url}: {body}");
        assert_eq!(body["error"]["field"], "events_url", "{body}");
        assert!(body.to_string().contains(words), "{url}: {body}");
    }
    let bad_secret = w.producer(&["customer", "add", "acme", "--events-secret", "hunter2"]).await;
    assert_eq!(bad_secret.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_secret.stderr).contains("whsec_"));
    assert_eq!(w.redis.digest(), before, "a refused endpoint changed something");

    // A cursor Redis would refuse (each part beyond 64 bits): the caller's mistake, named, and no outage.
    let (_, health_before) = server.call("GET", "/healthz", None).await;
    let cursor = "evt_99999999999999999999-99999999999999999999";
    let (s, body) = server.call("GET", &format!("/v1/customers/acme/events?after={cursor}"), None).await;
    println!("after={cursor}: {s} {body}");
    assert_eq!((s, &body["error"]["field"]), (422, &json!("after")), "{body}");
    let (s, body) = server.call("POST", "/v1/customers/acme/events/dead/replay", Some(json!({"ids": [cursor]}))).await;
    assert_eq!((s, &body["error"]["field"]), (422, &json!("ids")), "{body}");
    let (_, health_after) = server.call("GET", "/healthz", None).await;
    assert_eq!(health_after["status"], health_before["status"]);
    assert_eq!(health_after["status"], "ok", "{health_after}");
    let log = _serve.log();
    assert!(!log.contains("unavailable"), "an outage was logged for a client's mistake:\n{log}");
    println!(
        "healthz before and after: {} / {}; no outage in the server's log",
        health_before["status"], health_after["status"]
    );
    assert_eq!(w.redis.digest(), before);
}

/// Events that fail every attempt are dead-lettered — listed with why — while their lane goes on; a replay sends
/// them once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_fail_every_attempt_are_dead_lettered_and_can_be_replayed() {
    use axum::http::StatusCode;
    let mut w = World::start(SimConfig::default()).await;
    let server = Server::for_world(
        &mut w,
        &[("MESSENGER_EVENTS_ALLOW_PRIVATE", "true"), ("MESSENGER_EVENTS_RETRY_SCHEDULE", "100ms,200ms")],
    );
    let _serve = Server::start(&w, server.port);
    server.up().await;
    // An endpoint that refuses (500) until told otherwise.
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let (up, received) = (up.clone(), received.clone());
            move |headers: axum::http::HeaderMap| {
                let (up, received) = (up.clone(), received.clone());
                async move {
                    if !up.load(std::sync::atomic::Ordering::Relaxed) {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    received.lock().unwrap().push(id);
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (s, _) = server.call("PUT", "/v1/customers/acme", Some(json!({"max_numbers": 1, "events_url": url}))).await;
    assert_eq!(s, 201);
    let _worker = w.worker(4);
    let (_, accepted) = server
        .call(
            "POST",
            "/v1/customers/acme/bulk-texts",
            Some(json!({"body": "Fire drill", "recipients": recipients(6, 0)})),
        )
        .await;
    let batch = accepted["batch_id"].as_str().unwrap().to_owned();
    // 6 sent and the batch's completion: 7 events, each tried three times (the first and two retries).
    let dead = wait_until(Duration::from_secs(60), "every event dead-lettered", || async {
        let (_, d) = server.call("GET", "/v1/customers/acme/events/dead", None).await;
        (d.as_array().map(Vec::len) == Some(7)).then_some(d)
    })
    .await;
    println!("dead letters: {} — first: {}", dead.as_array().unwrap().len(), dead[0]);
    assert!(dead[0]["why"].as_str().unwrap().contains("3 attempts; last: answered 500"), "{}", dead[0]);
    assert!(
        dead.as_array()
            .unwrap()
            .iter()
            .any(|d| d["event"]["type"] == "batch.completed" && d["event"]["data"]["batch"] == batch.as_str())
    );
    let (s, body) = server.call("POST", "/v1/customers/acme/events/dead/replay", Some(json!({"ids": ["nope"]}))).await;
    assert_eq!(s, 422, "{body}");
    let ids: Vec<String> =
        dead.as_array().unwrap().iter().map(|d| d["event"]["id"].as_str().unwrap().to_owned()).collect();

    // The dashboard lists them, each with a replay button; a replay without the form's CSRF token is refused.
    let staff = harness::dashboard::login(&server.base, ADMIN).await;
    let (status, _, page) = staff.get("/dashboard/events/acme").await;
    assert_eq!(status, 200);
    let buttons = ids.iter().filter(|i| page.contains(&format!("aria-label=\"Replay {i}\""))).count();
    println!("dashboard events page: {buttons} dead letters with a replay button");
    assert_eq!(buttons, 7);
    let (status, _) = staff.post("/dashboard/events/acme/replay", &[("id", ids[0].as_str())], false).await;
    assert_eq!(status, 403, "a replay without the CSRF token");
    let (_, still) = server.call("GET", "/v1/customers/acme/events/dead", None).await;
    assert_eq!(still.as_array().map(Vec::len), Some(7), "a refused replay changed something");
    up.store(true, std::sync::atomic::Ordering::Relaxed);
    let (status, answer) = staff.post("/dashboard/events/acme/replay", &[("id", ids[0].as_str())], true).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("1 dead letter(s) of acme"), "{answer}");
    wait_until(Duration::from_secs(30), "the one replayed from the dashboard to arrive", || async {
        received.lock().unwrap().contains(&ids[0]).then_some(())
    })
    .await;
    let (_, left) = server.call("GET", "/v1/customers/acme/events/dead", None).await;
    assert_eq!(left.as_array().map(Vec::len), Some(6), "{left}");
    println!("replayed 1 from the dashboard; 6 left");

    let (s, q) = server.call("POST", "/v1/customers/acme/events/dead/replay", Some(json!({}))).await;
    assert_eq!((s, q["queued"].as_u64()), (202, Some(6)), "{q}");
    wait_until(Duration::from_secs(30), "the replays to arrive", || async {
        let got = received.lock().unwrap().clone();
        ids.iter().all(|i| got.contains(i)).then_some(())
    })
    .await;
    let (_, after) = server.call("GET", "/v1/customers/acme/events/dead", None).await;
    assert_eq!(after.as_array().map(Vec::len), Some(0), "{after}");
    println!("replayed {} dead letters; none left", ids.len());
}

/// For each delivery, whether its signature verifies with `secret`, judged by Standard Webhooks' Python library.
fn verified_by(deliveries: &[Request], secret: &str) -> Vec<bool> {
    let dump = std::env::temp_dir().join(format!("deliveries-{}.json", ulid::Ulid::new()));
    std::fs::write(
        &dump,
        serde_json::to_string(&deliveries.iter().map(|(h, b)| json!({"headers": h, "body": b})).collect::<Vec<_>>())
            .unwrap(),
    )
    .unwrap();
    let python = std::env::var("MESSENGER_SDK_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import json,sys\nfrom standardwebhooks.webhooks import Webhook, WebhookVerificationError\n\
             wh=Webhook(sys.argv[2])\nok=[]\nfor d in json.load(open(sys.argv[1])):\n    try:\n        \
             wh.verify(d['body'], d['headers']); ok.append(True)\n    except WebhookVerificationError:\n        \
             ok.append(False)\nprint(json.dumps(ok))",
        ])
        .arg(&dump)
        .arg(secret)
        .output()
        .expect("python with standardwebhooks (scripts/test installs it)");
    let _ = std::fs::remove_file(&dump);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sends a batch of 3 (`Phase <n>`) and waits until its 4 events (3 `message.sent` and its `batch.completed`) reach
/// the endpoint; returns what it received meanwhile.
async fn batch_delivered(server: &Server, inbox: &Inbox, n: usize) -> Vec<Request> {
    let start = inbox.0.lock().unwrap().len();
    let (s, a) = server
        .call(
            "POST",
            "/v1/customers/acme/bulk-texts",
            Some(json!({"body": format!("Phase {n}"), "recipients": recipients(3, n * 10)})),
        )
        .await;
    assert_eq!(s, 202, "{a}");
    let batch = a["batch_id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(60), "the phase's 4 events delivered", || async {
        let got: Vec<Request> = inbox.0.lock().unwrap()[start..].to_vec();
        let done = got.iter().any(|(_, b)| {
            let v: Value = serde_json::from_str(b).unwrap();
            v["type"] == "batch.completed" && v["data"]["batch"] == batch.as_str()
        });
        let ids: HashSet<&String> = got.iter().map(|(h, _)| &h["webhook-id"]).collect();
        (done && ids.len() >= 4).then_some(got.clone())
    })
    .await
}

/// Issue 29, acceptance 7: events secrets are sealed in Redis (no `HGETALL` shows one in clear); a secret an earlier
/// release stored in clear is sealed at its first use; after the key changes (new key, the old one as previous,
/// `producer secrets rewrap`, then the old one dropped) deliveries go on — each verified by Python's
/// `standardwebhooks` with the secret the app holds. Without the key, the server says so at start and refuses to
/// store a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_secrets_are_sealed_at_rest_upgraded_from_clear_and_survive_a_key_change() {
    const NEW_KEY: &str = "c2Vjb25kIHRlc3Qga2V5LCAzMiBieXRlcyBsb25nISE=";
    let given = "whsec_Z2l2ZW4gc2VjcmV0IG9mIGFjbWUsIDI0Yg==";
    let legacy = "whsec_bGVnYWN5IGNsZWFyIHNlY3JldCBvZiBhY21l";
    let mut w = World::start(SimConfig::default()).await;
    let server = Server::for_world(
        &mut w,
        &[("MESSENGER_EVENTS_ALLOW_PRIVATE", "true"), ("MESSENGER_EVENTS_RETRY_SCHEDULE", "200ms")],
    );
    let serve = Server::start(&w, server.port);
    server.up().await;
    let (url, inbox) = endpoint(Duration::ZERO, Duration::ZERO, false).await;
    let (s, c) = server
        .call("PUT", "/v1/customers/acme", Some(json!({"max_numbers": 1, "events_url": url, "events_secret": given})))
        .await;
    assert_eq!(s, 201, "{c}");
    let _worker = w.worker(4);
    let cfg = |w: &World| -> BTreeMap<String, String> {
        redis::cmd("HGETALL").arg("{c:acme}:cfg").query(&mut w.redis.sync_conn()).unwrap()
    };
    let in_clear = |m: &BTreeMap<String, String>| m.values().any(|v| v.contains("whsec_") || v.contains(&given[6..20]));
    let stored = cfg(&w);
    println!("HGETALL {{c:acme}}:cfg events_secret: {}…", &stored["events_secret"][..20]);
    assert!(!in_clear(&stored), "a secret in clear: {stored:?}");
    assert!(stored["events_secret"].starts_with("enc1:"));
    let verified = |r: &[Request], secret: &str| {
        let v = verified_by(r, secret);
        (v.iter().filter(|b| **b).count(), v.len())
    };
    let sealed = verified(&batch_delivered(&server, &inbox, 0).await, given);

    // An earlier release left a secret in clear (written as it wrote them): this one delivers with it and seals it on
    // first use.
    let _: () = redis::cmd("HSET")
        .arg("{c:acme}:cfg")
        .arg("events_secret")
        .arg(legacy)
        .query(&mut w.redis.sync_conn())
        .unwrap();
    let upgraded = verified(&batch_delivered(&server, &inbox, 1).await, legacy);
    let after_upgrade = cfg(&w);
    println!("after the first delivery from clear: events_secret {}…", &after_upgrade["events_secret"][..20]);
    assert!(!in_clear(&after_upgrade) && after_upgrade["events_secret"].starts_with("enc1:"));

    // The key changes: the new one sealing, the old one still opening; rewrap; then the old one dropped. Each server
    // is stopped as a deployment stops it (SIGTERM), handing its deliveries to the next at once.
    let stop = |mut p: Proc| {
        p.signal(libc::SIGTERM);
        assert!(p.wait_timeout(Duration::from_secs(15)).is_some(), "producer serve did not stop on SIGTERM");
    };
    stop(serve);
    w.env =
        w.env.clone().set("MESSENGER_SECRETS_KEY", NEW_KEY).set("MESSENGER_SECRETS_KEY_PREVIOUS", harness::SECRETS_KEY);
    let serve = Server::start(&w, server.port);
    server.up().await;
    let both_keys = verified(&batch_delivered(&server, &inbox, 2).await, legacy);
    // A customer with no endpoint (no deliveries to seal it on the way), its secret left in clear by an earlier
    // release: the rewrap seals it.
    w.producer_ok(&["customer", "add", "globex"]).await;
    let _: () = redis::cmd("HSET")
        .arg("{c:globex}:cfg")
        .arg("events_secret")
        .arg(legacy)
        .query(&mut w.redis.sync_conn())
        .unwrap();
    let rewrap: Value = serde_json::from_str(&w.producer_ok(&["secrets", "rewrap", "--json"]).await).unwrap();
    w.env = w.env.clone().set("MESSENGER_SECRETS_KEY_PREVIOUS", "");
    let status: Value = serde_json::from_str(&w.producer_ok(&["secrets", "status", "--json"]).await).unwrap();
    println!(
        "secrets rewrap: sealed now {}, {}; status with the new key only: {}",
        rewrap["sealed_now"], rewrap["by_storage"], status["by_storage"]
    );
    let new_id = status["current_key"].as_str().unwrap().to_owned();
    assert_eq!(rewrap["sealed_now"], 1, "{rewrap}");
    assert_eq!(status["by_storage"], json!({format!("sealed:{new_id}"): 2}));
    assert_eq!(status["unopened"], json!([]));
    stop(serve);
    let serve = Server::start(&w, server.port);
    server.up().await;
    let new_key_only = verified(&batch_delivered(&server, &inbox, 3).await, legacy);
    println!(
        "deliveries verified by Python standardwebhooks: sealed {sealed:?}, upgraded from clear {upgraded:?}, during the \
         key change {both_keys:?}, with the new key only {new_key_only:?}"
    );
    for (ok, all) in [sealed, upgraded, both_keys, new_key_only] {
        assert!(all >= 4 && ok == all, "{ok} of {all} verified");
    }

    // Without a key: said at start; a secret is not stored (nothing changes), and what is sealed is not delivered.
    stop(serve);
    w.env = w.env.clone().set("MESSENGER_SECRETS_KEY", "");
    let serve = Server::start(&w, server.port);
    server.up().await;
    let before = w.redis.digest();
    let (s, e) = server.call("PUT", "/v1/customers/acme", Some(json!({"events_secret": given}))).await;
    println!("without MESSENGER_SECRETS_KEY: PUT events_secret {s} {}", e["error"]["message"]);
    assert_eq!(s, 503, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("MESSENGER_SECRETS_KEY is not set"), "{e}");
    assert_eq!(w.redis.digest(), before);
    let log = serve.log();
    assert!(log.contains("MESSENGER_SECRETS_KEY is not set"), "{log}");
}

/// Rotating the secret: for the overlap (`MESSENGER_EVENTS_SECRET_OVERLAP`) every delivery carries two signatures,
/// so a receiver still on the old secret and one already on the new both verify it; after the overlap only the new
/// secret signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_new_one_for_the_overlap_then_stops() {
    let old = "whsec_Zmlyc3Qgc2VjcmV0IG9mIGFjbWUsIDI0Yg==";
    let new = "whsec_c2Vjb25kIHNlY3JldCBvZiBhY21lIDI0";
    let mut w = World::start(SimConfig::default()).await;
    let overlap = Duration::from_secs(6);
    let server = Server::for_world(
        &mut w,
        &[
            ("MESSENGER_EVENTS_ALLOW_PRIVATE", "true"),
            ("MESSENGER_EVENTS_RETRY_SCHEDULE", "200ms"),
            ("MESSENGER_EVENTS_SECRET_OVERLAP", "6s"),
        ],
    );
    let _serve = Server::start(&w, server.port);
    server.up().await;
    let (url, inbox) = endpoint(Duration::ZERO, Duration::ZERO, false).await;
    let (s, c) = server
        .call("PUT", "/v1/customers/acme", Some(json!({"max_numbers": 1, "events_url": url, "events_secret": old})))
        .await;
    assert_eq!(s, 201, "{c}");
    assert!(c.get("events_secret").is_none_or(Value::is_null), "a given secret is not echoed: {c}");
    let _worker = w.worker(4);
    let phase = |n: usize| batch_delivered(&server, &inbox, n);
    let before = phase(0).await;
    let (s, c) = server.call("PUT", "/v1/customers/acme", Some(json!({"events_secret": new}))).await;
    assert_eq!(s, 200, "{c}");
    let rotated = std::time::Instant::now();
    let during = phase(1).await;
    assert!(rotated.elapsed() < overlap, "the second phase outlasted the overlap; the test cannot judge it");
    tokio::time::sleep(overlap.saturating_sub(rotated.elapsed()) + Duration::from_secs(1)).await;
    let after = phase(2).await;
    let signatures =
        |r: &[Request]| r.iter().map(|(h, _)| h["webhook-signature"].split(' ').count()).collect::<Vec<_>>();
    let all_true = |v: &[bool]| !v.is_empty() && v.iter().all(|b| *b);
    let none_true = |v: &[bool]| !v.is_empty() && v.iter().all(|b| !*b);
    println!(
        "signatures per delivery: before {:?}, during the overlap {:?}, after {:?}",
        signatures(&before),
        signatures(&during),
        signatures(&after)
    );
    let (b_old, d_old, d_new, a_old, a_new) = (
        verified_by(&before, old),
        verified_by(&during, old),
        verified_by(&during, new),
        verified_by(&after, old),
        verified_by(&after, new),
    );
    println!(
        "verified (Python standardwebhooks): before with the old secret {}/{}; during: old {}/{}, new {}/{}; after: \
         old {}/{}, new {}/{}",
        b_old.iter().filter(|b| **b).count(),
        b_old.len(),
        d_old.iter().filter(|b| **b).count(),
        d_old.len(),
        d_new.iter().filter(|b| **b).count(),
        d_new.len(),
        a_old.iter().filter(|b| **b).count(),
        a_old.len(),
        a_new.iter().filter(|b| **b).count(),
        a_new.len()
    );
    assert!(all_true(&b_old));
    assert!(all_true(&d_old) && all_true(&d_new), "during the overlap both secrets verify");
    assert!(none_true(&a_old) && all_true(&a_new), "after the overlap only the new secret signs");
    assert!(signatures(&during).iter().all(|n| *n == 2) && signatures(&after).iter().all(|n| *n == 1));
}
