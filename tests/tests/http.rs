//! Messenger's HTTP API and Twilio's webhooks: signatures, the end-to-end flow through the API, every error status
//! with its JSON shape, requests that try to break the server, token scopes, and the OpenAPI document.

mod common;

use std::time::Duration;

use common::{ADMIN, APP_A, APP_B, Api, World, inbound_params, start_api, start_api_with};
use harness::fixtures::{owned_numbers, recipients, wait_until};
use harness::sim::{self, SimConfig};
use producer::server::webhooks::TokenPolicy;
use rand::seq::SliceRandom;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::domain::CustomerId;
use shared::purchase::{self, Bought};
use shared::twilio::signature;

/// The error shape every failure must have.
fn assert_error_shape(status: StatusCode, body: &Value, code: &str) {
    let e = &body["error"];
    assert_eq!(e["code"], code, "{status}: {body}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{status}: {body}");
}

/// A customer with one number (so inbound webhooks have something to credit).
async fn customer_with_number(w: &World, id: &str, number: &str) {
    let mut conn = w.redis.conn().await;
    let c = CustomerId::parse(id).unwrap();
    shared::customers::upsert(&mut conn, &shared::customers::Customer::new(c.clone(), 5)).await.unwrap();
    purchase::commit_number(&mut conn, &c, &Bought { number: number.into(), sid: "PN1".into() }, "").await.unwrap();
}

/// Acceptance 1: the webhook accepts Twilio's signature over the URL with or without its port, and rejects tampered
/// bodies, wrong tokens, missing or malformed headers, signatures for another URL or query string, and injected
/// repeated parameters — each before touching any state (Redis' DEBUG DIGEST is unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signatures_are_checked_before_anything_changes() {
    let w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    customer_with_number(&w, "acme", "+14152000001").await;
    let url = format!("{}/twilio/inbound", api.base);
    let without_port = url.replacen(&format!(":{}", api.base.rsplit(':').next().unwrap()), "", 1);
    let params = inbound_params("+14155550100", "+14152000001", "STOP", "SM1");
    let token = sim::DEFAULT_AUTH_TOKEN;
    let post = |sig: Option<String>, form: Vec<(String, String)>, query: &'static str| {
        let client = api.client.clone();
        let url = format!("{url}{query}");
        async move {
            let mut req = client.post(url).form(&form);
            if let Some(s) = sig {
                req = req.header("X-Twilio-Signature", s);
            }
            req.send().await.unwrap().status()
        }
    };

    let mut tampered = params.clone();
    tampered[1].1 = "START".into();
    let mut injected = params.clone();
    injected.push(("Body".into(), "START".into()));
    let rejected = vec![
        ("tampered body", Some(signature::compute(token, &url, &params)), tampered, ""),
        ("wrong token", Some(signature::compute("not-the-token", &url, &params)), params.clone(), ""),
        ("missing header", None, params.clone(), ""),
        ("empty header", Some(String::new()), params.clone(), ""),
        ("malformed header", Some("%%%not-base64".into()), params.clone(), ""),
        (
            "another URL",
            Some(signature::compute(token, &format!("{}/twilio/status", api.base), &params)),
            params.clone(),
            "",
        ),
        (
            "another query string",
            Some(signature::compute(token, &format!("{url}?x=1"), &params)),
            params.clone(),
            "?x=2",
        ),
        ("injected repeated parameter", Some(signature::compute(token, &url, &params)), injected, ""),
    ];
    let before = w.redis.digest();
    for (what, sig, form, query) in rejected {
        let status = post(sig, form, query).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
        assert_eq!(w.redis.digest(), before, "{what} changed Redis");
        println!("{what}: {status}");
    }

    // Valid: signed over the URL as requested, and over the URL without its port.
    let optouts = shared::keys::CustomerKeys::new(&CustomerId::parse("acme").unwrap()).optouts();
    let mut conn = w.redis.sync_conn();
    assert_eq!(post(Some(signature::compute(token, &url, &params)), params.clone(), "").await, StatusCode::OK);
    assert!(redis::cmd("SISMEMBER").arg(&optouts).arg("+14155550100").query::<bool>(&mut conn).unwrap());
    let start = inbound_params("+14155550100", "+14152000001", "start", "SM2");
    assert_eq!(post(Some(signature::compute(token, &without_port, &start)), start, "").await, StatusCode::OK);
    assert!(!redis::cmd("SISMEMBER").arg(&optouts).arg("+14155550100").query::<bool>(&mut conn).unwrap());
}

/// Acceptance 2: a bulk text through the API is sent by the workers; a reply raises that number's limit by one; a
/// STOP reply makes the next message to that tenant end as `opted_out` with no Twilio call; START undoes it; status
/// callbacks, shuffled and repeated, leave the delivered / undelivered counts exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_replies_opt_outs_and_delivery_reports_over_http() {
    let mut w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    w.env = w.env.clone().set("MESSENGER_PUBLIC_URL", &api.base);
    let _workers: Vec<_> = (0..2).map(|_| w.worker(8)).collect();

    let (s, _) = api.call("PUT", "/v1/customers/acme", Some(ADMIN), Some(json!({"max_numbers": 3}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let to = recipients(6, 0);
    let (s, accepted) = api
        .call(
            "POST",
            "/v1/customers/acme/bulk-texts",
            Some(APP_A),
            Some(json!({"body": "Rent is due", "recipients": to})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{accepted}");
    let batch = accepted["batch_id"].as_str().unwrap().to_owned();
    let status = wait_batch(&api, &batch, |b| b["state"] == "complete").await;
    assert_eq!(status["sent"], 6);

    // A reply credits the number it arrived on.
    let (_, pool) = api.call("GET", "/v1/customers/acme/pool", Some(APP_A), None).await;
    let number = pool["numbers"][0]["number"].as_str().unwrap().to_owned();
    assert_eq!(pool["numbers"][0]["limit"], 250);
    inbound(&w, &to[0], &number, "Thanks, paid!").await;
    let (_, pool) = api.call("GET", "/v1/customers/acme/pool", Some(APP_A), None).await;
    assert_eq!((pool["numbers"][0]["received"].as_u64(), pool["numbers"][0]["limit"].as_u64()), (Some(1), Some(251)));

    // STOP: the next message ends as opted_out and never reaches Twilio.
    inbound(&w, &to[1], &number, "STOP").await;
    let attempts_before = w.state().send_attempts.iter().filter(|a| a.to == to[1]).count();
    let (_, m) = api
        .call("POST", "/v1/customers/acme/messages", Some(APP_A), Some(json!({"to": to[1], "body": "Pool closed"})))
        .await;
    let st = wait_batch(&api, m["batch_id"].as_str().unwrap(), |b| b["state"] == "complete").await;
    assert_eq!((st["opted_out"].as_u64(), st["sent"].as_u64()), (Some(1), Some(0)));
    assert_eq!(w.state().send_attempts.iter().filter(|a| a.to == to[1]).count(), attempts_before, "Twilio was called");

    // START undoes it.
    inbound(&w, &to[1], &number, "START").await;
    let (_, m) = api
        .call("POST", "/v1/customers/acme/messages", Some(APP_A), Some(json!({"to": to[1], "body": "Pool open"})))
        .await;
    let st = wait_batch(&api, m["batch_id"].as_str().unwrap(), |b| b["state"] == "complete").await;
    assert_eq!(st["sent"], 1);

    // Delivery reports for the bulk batch: 4 delivered, 2 undelivered (30007), each report sent 3 times, shuffled.
    let messages: Vec<_> = w.state().messages.into_iter().filter(|m| m.body == "Rent is due").collect();
    assert_eq!(messages.len(), 6);
    let mut callbacks = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let url = m.status_callback.clone().expect("the worker asked for status callbacks");
        assert_eq!(url, format!("{}/twilio/status?b={batch}", api.base));
        let last = if i < 4 { "delivered" } else { "undelivered" };
        for status in ["queued", "sent", last] {
            let mut p = vec![("MessageSid".to_owned(), m.sid.clone()), ("MessageStatus".to_owned(), status.to_owned())];
            if status == "undelivered" {
                p.push(("ErrorCode".to_owned(), "30007".to_owned()));
            }
            for _ in 0..3 {
                callbacks.push((url.clone(), p.clone()));
            }
        }
    }
    callbacks.shuffle(&mut rand::rng());
    for (url, p) in &callbacks {
        let (code, _) = sim::post_signed(sim::DEFAULT_AUTH_TOKEN, url, p).await.unwrap();
        assert!(code < 300, "callback answered {code}");
    }
    let (_, st) = api.call("GET", &format!("/v1/batches/{batch}"), Some(APP_A), None).await;
    println!("after {} shuffled, repeated callbacks: {st}", callbacks.len());
    assert_eq!((st["delivered"].as_u64(), st["undelivered"].as_u64()), (Some(4), Some(2)));
    assert_eq!(st["undelivered_reasons"]["30007"], 2);
    assert_eq!(owned_numbers(&w.state()), 1);
}

async fn inbound(w: &World, from: &str, to: &str, body: &str) {
    let r = handset_texts(w, from, to, body).await;
    assert_eq!(r["webhook_status"], 200, "the inbound webhook was not accepted: {r}");
}

/// A handset texts `to` through the simulator, which signs and sends the inbound webhook; its answer (with the
/// webhook's `webhook_status`).
async fn handset_texts(w: &World, from: &str, to: &str, body: &str) -> Value {
    harness::http()
        .post(format!("{}/_sim/inbound", w.sim_base))
        .json(&json!({"from": from, "to": to, "body": body}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_batch(api: &Api, batch: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_until(Duration::from_secs(60), "batch status", || async {
        let (s, b) = api.call("GET", &format!("/v1/batches/{batch}"), Some(ADMIN), None).await;
        (s == StatusCode::OK && done(&b)).then_some(b)
    })
    .await
}

/// method, path, token, body, expected status, expected error code ("" for success).
type Case<'a> = (&'a str, String, Option<&'a str>, Option<Value>, StatusCode, &'a str);

/// Acceptance 3 and 4: every error status with the JSON shape; a token scoped to one customer cannot act for
/// another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_one_shape_and_tokens_keep_to_their_customers() {
    let mut w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    for c in ["acme", "globex"] {
        assert_eq!(
            api.call("PUT", &format!("/v1/customers/{c}"), Some(ADMIN), Some(json!({}))).await.0,
            StatusCode::CREATED
        );
    }
    let ok_to = recipients(2, 0);
    let (_, b) = api
        .call(
            "POST",
            "/v1/customers/globex/bulk-texts",
            Some(APP_B),
            Some(json!({"body": "hi", "recipients": ok_to, "idempotency_key": "k1"})),
        )
        .await;
    let globex_batch = b["batch_id"].as_str().unwrap().to_owned();

    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/customers/acme/bulk-texts".into(),
            None,
            Some(json!({"body": "hi", "recipients": ok_to})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/customers/acme/bulk-texts".into(),
            Some("wrong-token-0123456789"),
            Some(json!({})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        // Scopes: A's token cannot send for, or read, B.
        (
            "POST",
            "/v1/customers/globex/bulk-texts".into(),
            Some(APP_A),
            Some(json!({"body": "hi", "recipients": ok_to})),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "POST",
            "/v1/customers/globex/messages".into(),
            Some(APP_A),
            Some(json!({"to": ok_to[0], "body": "hi"})),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        ("GET", format!("/v1/batches/{globex_batch}"), Some(APP_A), None, StatusCode::FORBIDDEN, "forbidden"),
        ("GET", "/v1/customers/globex/pool".into(), Some(APP_A), None, StatusCode::FORBIDDEN, "forbidden"),
        ("PUT", "/v1/customers/acme".into(), Some(APP_A), Some(json!({})), StatusCode::FORBIDDEN, "forbidden"),
        ("GET", "/v1/customers/acme/pool".into(), Some(APP_A), None, StatusCode::OK, ""),
        ("GET", format!("/v1/batches/{globex_batch}"), Some(APP_B), None, StatusCode::OK, ""),
        // 400, 404, 405, 409, 422
        ("GET", "/v1/batches/not-a-batch".into(), Some(ADMIN), None, StatusCode::BAD_REQUEST, "invalid_id"),
        (
            "GET",
            "/v1/batches/acme.01jduuuuuuuuuuuuuuuuuuuu".into(),
            Some(ADMIN),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "GET",
            "/v1/batches/acme.01jd0000000000000000000000".into(),
            Some(ADMIN),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        ("GET", "/v1/customers/nobody/pool".into(), Some(ADMIN), None, StatusCode::NOT_FOUND, "not_found"),
        (
            "POST",
            "/v1/customers/nobody/bulk-texts".into(),
            Some(ADMIN),
            Some(json!({"body": "hi", "recipients": ok_to})),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        ("GET", "/v1/nothing-here".into(), Some(ADMIN), None, StatusCode::NOT_FOUND, "not_found"),
        (
            "DELETE",
            "/v1/customers/acme".into(),
            Some(ADMIN),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/customers/globex/bulk-texts".into(),
            Some(APP_B),
            Some(json!({"body": "different", "recipients": ok_to, "idempotency_key": "k1"})),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            "POST",
            "/v1/customers/acme/bulk-texts".into(),
            Some(APP_A),
            Some(json!({"body": "", "recipients": ok_to})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/customers/acme/bulk-texts".into(),
            Some(APP_A),
            Some(json!({"body": "x".repeat(1601), "recipients": ok_to})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/customers/acme/bulk-texts".into(),
            Some(APP_A),
            Some(json!({"body": "hi", "recipients": [ok_to[0], "555-0100"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/customers/acme/bulk-texts".into(),
            Some(APP_A),
            Some(json!({"body": "hi"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/customers/acme/bulk-texts".into(),
            Some(APP_A),
            Some(json!({"body": "hi", "recipients": ok_to, "extra": 1})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/customers/acme".into(),
            Some(ADMIN),
            Some(json!({"area_code": "12"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        ("PUT", "/v1/customers/bad%20id".into(), Some(ADMIN), Some(json!({})), StatusCode::BAD_REQUEST, "invalid_id"),
    ];
    let before = w.redis.digest();
    for (method, path, token, body, expected, code) in &cases {
        let (status, resp) = api.call(method, path, *token, body.clone()).await;
        assert_eq!(status, *expected, "{method} {path}: {resp}");
        if !code.is_empty() {
            assert_error_shape(status, &resp, code);
        }
    }
    assert_eq!(w.redis.digest(), before, "a rejected request changed Redis");

    // The field of a bad recipient is named.
    let (_, resp) = api
        .call(
            "POST",
            "/v1/customers/acme/bulk-texts",
            Some(APP_A),
            Some(json!({"body": "hi", "recipients": [ok_to[0], "555-0100"]})),
        )
        .await;
    assert_eq!(resp["error"]["field"], "recipients[1]");

    // 400 malformed JSON, 415 wrong content type, 413 too large (bytes, and recipients).
    let raw = |ct: &'static str, body: Vec<u8>| {
        api.client
            .post(format!("{}/v1/customers/acme/bulk-texts", api.base))
            .bearer_auth(APP_A)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = raw("application/json", b"{\"body\": \"hi\", ".to_vec()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_error_shape(r.status(), &r.json().await.unwrap(), "invalid_json");
    let r = raw("text/plain", b"{}".to_vec()).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error_shape(r.status(), &r.json().await.unwrap(), "unsupported_media_type");
    let r = raw("application/json", vec![b' '; 9 * 1024 * 1024]).await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_shape(r.status(), &r.json().await.unwrap(), "payload_too_large");
    let many: Vec<String> = (0..100_001).map(|i| format!("+1415555{:04}", i % 10_000)).collect();
    let (s, resp) = api
        .call("POST", "/v1/customers/acme/bulk-texts", Some(APP_A), Some(json!({"body": "hi", "recipients": many})))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp["error"]["field"], "recipients");
    assert_eq!(w.redis.digest(), before, "a rejected request changed Redis");

    let (_, metrics) = api.call("GET", "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("messenger_http_requests_total{route=\"/v1/customers/{id}/bulk-texts\""), "{metrics}");
    // globex's 2 queued jobs (no workers run in this test).
    assert!(metrics.contains("messenger_queue_jobs{customer=\"globex\",state=\"ready\"} 2"), "{metrics}");

    // 503 when Redis is down, and /healthz says so.
    tokio::task::block_in_place(|| w.redis.kill());
    let (s, resp) = api.call("GET", "/v1/customers/acme/pool", Some(APP_A), None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_error_shape(s, &resp, "unavailable");
    assert!(!resp.to_string().contains("127.0.0.1"), "internals leaked: {resp}");
    assert_eq!(api.call("GET", "/healthz", None, None).await.0, StatusCode::SERVICE_UNAVAILABLE);
    tokio::task::block_in_place(|| w.redis.restart());
}

/// Acceptance 3: no request makes the server answer 500 or panic: malformed JSON, wrong content types, huge and
/// empty bodies, invalid UTF-8 and odd encodings, at every route with every method. Every error is our JSON shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_never_make_the_server_fail() {
    let w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    api.call("PUT", "/v1/customers/acme", Some(ADMIN), Some(json!({}))).await;
    let paths = [
        "/v1/customers/acme",
        "/v1/customers/acme/bulk-texts",
        "/v1/customers/acme/messages",
        "/v1/customers/acme/pool",
        "/v1/batches/acme.01jd0000000000000000000000",
        "/v1/customers/%FF%FE%00/pool",
        "/v1/batches/..%2F..%2Fetc",
        "/v1/customers/acme/bulk-texts?x=%ZZ",
        "/twilio/inbound",
        "/twilio/status?b=%00",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/%F0%9F%92%A9",
    ];
    let long_path = format!("/v1/customers/{}/pool", "a".repeat(10_000));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"".to_vec()),
        ("application/json", b"null".to_vec()),
        ("application/json", b"[]".to_vec()),
        ("application/json", b"{\"body\": 12, \"recipients\": \"+14155552671\"}".to_vec()),
        ("application/json", b"{\"body\": \"hi\", \"recipients\": [null, 1, {}, []]}".to_vec()),
        ("application/json", vec![0xff, 0xfe, 0x00, 0x7b]),
        ("application/json", b"{\"body\": \"\\ud800\", \"recipients\": [\"+14155552671\"]}".to_vec()),
        ("application/json", format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes()),
        ("application/json", vec![b'{'; 1_000_000]),
        ("application/x-www-form-urlencoded", b"To=%ZZ&Body=%FF&&&==".to_vec()),
        ("text/plain; charset=utf-16", vec![0xff, 0xfe, 0x41, 0x00]),
        ("multipart/form-data; boundary=x", b"--x\r\n\r\n--x--".to_vec()),
    ];
    let tokens = [None, Some(ADMIN), Some(APP_A)];
    // A fresh connection per request: the server may close one it answered early (before reading a big body).
    let client = harness::http_builder().pool_max_idle_per_host(0).build().unwrap();
    let mut requests = 0;
    for path in paths.iter().copied().chain([long_path.as_str()]) {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            for token in tokens {
                for (ct, body) in &bodies {
                    let mut req = client
                        .request(method.parse().unwrap(), format!("{}{path}", api.base))
                        .header("content-type", *ct)
                        .body(body.clone());
                    if let Some(t) = token {
                        req = req.bearer_auth(t);
                    }
                    requests += 1;
                    let resp = match req.send().await {
                        Ok(r) => r,
                        // The server may answer (401, 413…) and close before a large body is fully written.
                        Err(e) if body.len() > 64 * 1024 && e.is_request() => continue,
                        Err(e) => panic!("{method} {path}: {e}"),
                    };
                    let status = resp.status();
                    let text = resp.text().await.unwrap();
                    assert!(status.as_u16() < 500, "{method} {path} ({ct}) answered {status}: {text}");
                    if status.is_client_error() {
                        let v: Value =
                            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
                        assert!(
                            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                            "{method} {path}: {text}"
                        );
                    }
                }
            }
        }
    }
    println!("{requests} hostile requests, no 5xx");
    assert_eq!(api.call("GET", "/healthz", None, None).await.0, StatusCode::OK);
}

/// Acceptance 5: `/openapi.json` is valid OpenAPI 3 (openapi-spec-validator), and the routes behave as it says:
/// schemathesis generates requests from the document and checks every answer's status, content type and schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_matches_the_routes() {
    let python = std::env::var("MESSENGER_SDK_PYTHON").unwrap_or_else(|_| "python3".into());
    let w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    api.call("PUT", "/v1/customers/acme", Some(ADMIN), Some(json!({}))).await;
    let (s, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for p in [
        "/v1/customers/{id}",
        "/v1/customers/{id}/bulk-texts",
        "/v1/customers/{id}/messages",
        "/v1/customers/{id}/pool",
        "/v1/batches/{id}",
    ] {
        assert!(paths.iter().any(|x| *x == p), "{p} is not documented");
    }
    let spec = std::env::temp_dir().join(format!("openapi-{}.json", ulid::Ulid::new()));
    std::fs::write(&spec, doc.to_string()).unwrap();
    let validate = std::process::Command::new(&python)
        .args(["-c", "import json,sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')"])
        .arg(&spec)
        .output()
        .expect("python");
    assert!(
        validate.status.success(),
        "invalid OpenAPI (install openapi-spec-validator via scripts/test): {}",
        String::from_utf8_lossy(&validate.stderr)
    );

    let schemathesis = std::path::Path::new(&python).with_file_name("schemathesis");
    let out = tokio::process::Command::new(&schemathesis)
        .args(["run", &format!("{}/openapi.json", api.base), "--url", &api.base])
        .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "25", "--seed", "1", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        // It keeps a cache of crashes in `.schemathesis/` under its working directory: not in the source tree.
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .expect("schemathesis (installed by scripts/test)");
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{}", report.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"));
    assert!(out.status.success(), "schemathesis found mismatches:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_file(spec);
}

/// Issue 12, acceptance 1 and 2: two customers, one on the main account and one on a Twilio subaccount. Twilio
/// signs every webhook about a subaccount's number with the subaccount's token: replies to both raise their
/// number's limit, STOP on the subaccount's number opts the tenant out, and its delivery reports (sent by the
/// simulator, shuffled and repeated) are counted. Webhooks for the subaccount's number signed with the main token
/// or another subaccount's token are refused and change nothing; a rotated token is picked up with one refresh;
/// a flood of forged webhooks costs a bounded number of token look-ups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_on_subaccounts_get_their_replies_stops_and_delivery_reports() {
    let mut w = World::start(SimConfig::default()).await;
    let refresh_every = Duration::from_secs(2);
    let api = start_api_with(&w, TokenPolicy { ttl: Duration::from_secs(3600), refresh_every }).await;
    w.env = w.env.clone().set("MESSENGER_PUBLIC_URL", &api.base);
    let twilio = sim::client(&w.sim_base, sim::DEFAULT_AUTH_TOKEN, Duration::from_secs(5));
    let sub = twilio.create_subaccount("Globex Property Co").await.unwrap();
    let other = twilio.create_subaccount("Another client").await.unwrap();
    let (sub_sid, other_sid) = (sub.sid.clone().unwrap(), other.sid.clone().unwrap());
    let other_token = other.auth_token.clone().unwrap();

    // The API checks the subaccount with Twilio before storing it.
    let put = |id: &'static str, body: Value| {
        let api = &api;
        async move { api.call("PUT", &format!("/v1/customers/{id}"), Some(ADMIN), Some(body)).await }
    };
    assert_eq!(put("acme", json!({"max_numbers": 3})).await.0, StatusCode::CREATED);
    assert_eq!(put("globex", json!({"max_numbers": 3, "account_sid": sub_sid})).await.0, StatusCode::CREATED);
    let (s, e) = put("initech", json!({"account_sid": format!("AC{}", "1".repeat(32))})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["field"], "account_sid");
    println!("unknown subaccount refused: {s} {}", e["error"]["message"]);

    let _workers: Vec<_> = (0..2).map(|_| w.worker(8)).collect();
    let send = |customer: &'static str, token: &'static str, to: Vec<String>, body: &'static str| {
        let api = &api;
        async move {
            let (s, r) = api
                .call(
                    "POST",
                    &format!("/v1/customers/{customer}/bulk-texts"),
                    Some(token),
                    Some(json!({"body": body, "recipients": to})),
                )
                .await;
            assert_eq!(s, StatusCode::ACCEPTED, "{r}");
            let batch = r["batch_id"].as_str().unwrap().to_owned();
            wait_batch(api, &batch, |b| b["state"] == "complete").await;
            batch
        }
    };
    let acme_to = recipients(6, 0);
    let globex_to = recipients(6, 100);
    send("acme", APP_A, acme_to.clone(), "Acme: rent is due").await;
    let globex_batch = send("globex", APP_B, globex_to.clone(), "Globex: water off Tuesday").await;
    let state = w.state();
    let number_of = |account: &str| {
        state.numbers.iter().find(|n| n.account_sid == account && !n.released).map(|n| n.phone_number.clone())
    };
    let acme_number = number_of(sim::DEFAULT_ACCOUNT_SID).expect("acme bought a number in the main account");
    let globex_number = number_of(&sub_sid).expect("globex bought a number in its subaccount");

    // A reply to each customer's number raises that number's limit by one.
    inbound(&w, &acme_to[0], &acme_number, "Paid, thanks").await;
    inbound(&w, &globex_to[0], &globex_number, "When does it come back?").await;
    for (customer, token) in [("acme", APP_A), ("globex", APP_B)] {
        let (_, pool) = api.call("GET", &format!("/v1/customers/{customer}/pool"), Some(token), None).await;
        let n = &pool["numbers"][0];
        println!("{customer}: {} received {}, limit {}", n["number"], n["received"], n["limit"]);
        assert_eq!((n["received"].as_u64(), n["limit"].as_u64()), (Some(1), Some(251)), "{customer}");
    }

    // STOP on the subaccount's number: the tenant's next message ends opted out with no Twilio call.
    inbound(&w, &globex_to[1], &globex_number, "STOP").await;
    let attempts = |w: &World| w.state().send_attempts.iter().filter(|a| a.to == globex_to[1]).count();
    let before = attempts(&w);
    let (_, m) = api
        .call("POST", "/v1/customers/globex/messages", Some(APP_B), Some(json!({"to": globex_to[1], "body": "Hi"})))
        .await;
    let st = wait_batch(&api, m["batch_id"].as_str().unwrap(), |b| b["state"] == "complete").await;
    assert_eq!((st["opted_out"].as_u64(), st["sent"].as_u64()), (Some(1), Some(0)));
    assert_eq!(attempts(&w), before, "an opted-out tenant reached Twilio");
    println!("STOP on the subaccount's number: next message opted_out, no Twilio call");

    // Delivery reports for the subaccount's batch, sent by the simulator (signed with the subaccount's token),
    // each status three times, shuffled.
    let messages: Vec<_> = w.state().messages.into_iter().filter(|m| m.body == "Globex: water off Tuesday").collect();
    assert_eq!(messages.len(), 6);
    let mut reports = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let last = if i < 4 { ("delivered", None) } else { ("undelivered", Some(30007)) };
        for (status, code) in [("sent", None), last] {
            for _ in 0..3 {
                reports.push(json!({"sid": m.sid, "status": status, "error_code": code}));
            }
        }
    }
    reports.shuffle(&mut rand::rng());
    for r in &reports {
        let answer: Value = harness::http()
            .post(format!("{}/_sim/status-callback", w.sim_base))
            .json(r)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(answer["webhook_status"].as_u64().is_some_and(|s| (200..300).contains(&s)), "{answer}");
    }
    let (_, st) = api.call("GET", &format!("/v1/batches/{globex_batch}"), Some(APP_B), None).await;
    println!("subaccount batch after {} shuffled, repeated callbacks: {st}", reports.len());
    assert_eq!((st["delivered"].as_u64(), st["undelivered"].as_u64()), (Some(4), Some(2)));

    // Forgeries for the subaccount's number: refused, Redis unchanged.
    let url = format!("{}/twilio/inbound", api.base);
    let forged = |account: &str, token: &str, sid: &str| {
        let mut p = inbound_params(&globex_to[2], &globex_number, "STOP", sid);
        p[0].1 = account.to_owned();
        let sig = signature::compute(token, &url, &p);
        let client = api.client.clone();
        let url = url.clone();
        async move { client.post(url).header("X-Twilio-Signature", sig).form(&p).send().await.unwrap().status() }
    };
    let digest = w.redis.digest();
    let cases = [
        ("main token, subaccount's AccountSid", sub_sid.as_str(), sim::DEFAULT_AUTH_TOKEN),
        ("main token, main AccountSid", sim::DEFAULT_ACCOUNT_SID, sim::DEFAULT_AUTH_TOKEN),
        ("another subaccount's token and AccountSid", other_sid.as_str(), other_token.as_str()),
        ("another subaccount's token, this AccountSid", sub_sid.as_str(), other_token.as_str()),
    ];
    for (i, (what, account, token)) in cases.into_iter().enumerate() {
        let status = forged(account, token, &format!("SMforged{i}")).await;
        println!("forged ({what}): {status}");
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
        assert_eq!(w.redis.digest(), digest, "{what} changed Redis");
    }

    // Rotation: the subaccount gets a new token; the next real webhook is accepted after exactly one look-up.
    tokio::time::sleep(refresh_every + Duration::from_millis(200)).await;
    let rotated: Value = harness::http()
        .post(format!("{}/_sim/accounts/{sub_sid}/rotate", w.sim_base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rotated["sid"], sub_sid.as_str());
    let lookups_before = w.state().account_fetches;
    inbound(&w, &globex_to[3], &globex_number, "Got it").await;
    let refreshes = w.state().account_fetches - lookups_before;
    println!("rotated token: webhook accepted after {refreshes} token look-up(s)");
    assert_eq!(refreshes, 1);

    // A flood of forged webhooks for the subaccount's number costs at most one look-up per refresh interval.
    // (After one refresh interval, so the flood may cost one look-up, and no more.)
    tokio::time::sleep(refresh_every + Duration::from_millis(200)).await;
    let digest = w.redis.digest();
    let lookups_before = w.state().account_fetches;
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for chunk in (0..1000).collect::<Vec<_>>().chunks(50) {
        let batch: Vec<_> = chunk.iter().map(|i| forged(&sub_sid, "forged-token", &format!("SMflood{i}"))).collect();
        statuses.extend(futures::future::join_all(batch).await);
    }
    let took = started.elapsed();
    let lookups = w.state().account_fetches - lookups_before;
    let bound = 1 + took.as_millis() as u64 / refresh_every.as_millis() as u64;
    println!("1000 forged webhooks in {took:?}: {lookups} token look-up(s) (bound {bound})");
    assert!(statuses.iter().all(|s| *s == StatusCode::FORBIDDEN));
    assert!(lookups <= bound, "{lookups} look-ups for 1000 forged webhooks");
    assert_eq!(w.redis.digest(), digest, "forged webhooks changed Redis");
}

/// Issue 20, acceptance 6: replies to numbers in no pool (bought by hand in a subaccount; the same holds for one not
/// yet adopted or whose pool entry a failover lost). Twilio signs them with the subaccount's token and the pool
/// cannot name their customer: 20 such webhooks with a customer's subaccount are accepted and attributed to it — a
/// STOP and a REVOKE among them opt those tenants out of every number of the customer, including one bought after —
/// while 20 naming a subaccount no customer is stored with are refused (403) and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_numbers_in_no_pool_are_attributed_by_the_subaccount_that_signed_them() {
    let mut w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    w.env = w.env.clone().set("MESSENGER_PUBLIC_URL", &api.base);
    let twilio = sim::client(&w.sim_base, sim::DEFAULT_AUTH_TOKEN, Duration::from_secs(5));
    let sub = twilio.create_subaccount("Globex Property Co").await.unwrap().sid.unwrap();
    let stranger = twilio.create_subaccount("Not a customer").await.unwrap().sid.unwrap();
    let (s, e) =
        api.call("PUT", "/v1/customers/globex", Some(ADMIN), Some(json!({"max_numbers": 3, "account_sid": sub}))).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let inbound_url = format!("{}/twilio/inbound", api.base);
    let by_hand = |account: String| {
        let twilio = &twilio;
        let url = inbound_url.clone();
        async move {
            let account = shared::domain::AccountSid::parse(&account).unwrap();
            let b = shared::twilio::BuyNumber {
                phone_number: None,
                area_code: Some("415"),
                friendly_name: "bought by hand",
                sms_url: Some(&url),
            };
            twilio.buy_number(&account, &b).await.unwrap().phone_number.unwrap()
        }
    };
    let hand_number = by_hand(sub.clone()).await;
    let stranger_number = by_hand(stranger.clone()).await;
    let tenants = recipients(20, 500);

    // The stranger's number first: every webhook refused, Redis unchanged.
    let digest = w.redis.digest();
    for (i, t) in tenants.iter().enumerate() {
        let body = if i == 0 { "STOP" } else { "Is the water back on?" };
        let r = handset_texts(&w, t, &stranger_number, body).await;
        assert_eq!(r["webhook_status"], 403, "a subaccount no customer is stored with: {r}");
    }
    assert_eq!(w.redis.digest(), digest, "refused webhooks changed Redis");
    println!("20 webhooks signed by a subaccount no customer has: 403 each, digest unchanged");

    // The customer's hand-bought number: all accepted; STOP and REVOKE opt out.
    for (i, t) in tenants.iter().enumerate() {
        let body = match i {
            3 => "STOP",
            7 => "revoke",
            _ => "Is the water back on?",
        };
        inbound(&w, t, &hand_number, body).await;
    }
    let mut conn = w.redis.conn().await;
    let mut got: Vec<String> = redis::cmd("SMEMBERS")
        .arg(shared::keys::CustomerKeys::new(&CustomerId::parse("globex").unwrap()).optouts())
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut expected = vec![tenants[3].clone(), tenants[7].clone()];
    expected.sort();
    got.sort();
    println!("20 webhooks to a number in no pool, signed by globex's subaccount: accepted; opted out {}", got.len());
    assert_eq!(got, expected, "the STOP and the REVOKE opt exactly those tenants out");

    // The opt-out covers the numbers the pool buys later: a text to each of the 20 tenants buys one and skips two.
    let _worker = w.worker(4);
    let (s, r) = api
        .call(
            "POST",
            "/v1/customers/globex/bulk-texts",
            Some(APP_B),
            Some(json!({"body": "Globex: the water is back", "recipients": tenants})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let st = wait_batch(&api, r["batch_id"].as_str().unwrap(), |b| b["state"] == "complete").await;
    println!("then a batch to all 20: sent {}, opted_out {}", st["sent"], st["opted_out"]);
    assert_eq!((st["sent"].as_u64(), st["opted_out"].as_u64()), (Some(18), Some(2)));
    let texted: Vec<String> =
        w.state().messages.into_iter().filter(|m| m.body == "Globex: the water is back").map(|m| m.to).collect();
    assert!(!texted.contains(&tenants[3]) && !texted.contains(&tenants[7]), "an opted-out tenant was texted");
}

/// Issue 10, acceptance 4 (and the API's dry run): on an account that enforces US A2P 10DLC, a customer without a
/// Messaging Service sends from bare numbers; Twilio accepts the messages, then reports each undelivered with
/// 30034 through its status callback, and the batch status shows the 30034 failures with what they mean. Before
/// that, `"dry_run": true` answers 200 with the estimate and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_senders_on_an_a2p_account_show_30034_in_the_batch() {
    let mut w = World::start(SimConfig { a2p_required: true, ..Default::default() }).await;
    let api = start_api(&w).await;
    w.env = w.env.clone().set("MESSENGER_PUBLIC_URL", &api.base);
    assert_eq!(api.call("PUT", "/v1/customers/acme", Some(ADMIN), Some(json!({}))).await.0, StatusCode::CREATED);
    let to = recipients(10, 0);
    let before = w.redis.digest();
    let (s, estimate) = api
        .call(
            "POST",
            "/v1/customers/acme/bulk-texts",
            Some(APP_A),
            Some(json!({"body": "Rent is due \u{2014} thanks", "recipients": to, "dry_run": true, "smart_encoding": true})),
        )
        .await;
    println!("dry run over the API: {s} {estimate}");
    assert_eq!(s, StatusCode::OK);
    assert_eq!((estimate["encoding"].as_str(), estimate["purchases"].as_u64()), (Some("GSM-7"), Some(1)));
    assert_eq!(estimate["smart_encoding"]["segments_before"], 1);
    assert_eq!(w.redis.digest(), before, "the dry run changed Redis");

    let _worker = w.worker(8);
    let (s, r) = api
        .call(
            "POST",
            "/v1/customers/acme/bulk-texts",
            Some(APP_A),
            Some(json!({"body": "Rent is due", "recipients": to})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let batch = r["batch_id"].as_str().unwrap().to_owned();
    let st = wait_batch(&api, &batch, |b| b["undelivered"] == 10).await;
    let shown = w.producer_ok(&["status", &batch]).await;
    println!("{shown}");
    assert_eq!(st["sent"], 10, "Twilio accepted every message");
    assert_eq!(st["undelivered_reasons"]["30034"], 10);
    assert!(shown.contains("error 30034 × 10: US A2P 10DLC"), "{shown}");
}
