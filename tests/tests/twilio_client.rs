//! Acceptance 8: the Twilio client speaks Twilio's wire format (Basic auth, form bodies, JSON and error bodies)
//! and turns every failure into a typed, classified error. Checked against a capturing server, the simulator, and
//! Twilio's official Python SDK pointed at the simulator.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use harness::sim::{self, Faults, SimConfig};
use shared::twilio::{
    BuyNumber, CreateMessage, Disposition, MessageFilter, SendFailure, TwilioClient, TwilioError, codes,
};

async fn sim_client(config: SimConfig) -> (harness::sim::Sim, TwilioClient) {
    let (s, addr) = sim::spawn(config).await;
    (s, sim::client(&format!("http://{addr}"), sim::DEFAULT_AUTH_TOKEN, Duration::from_secs(5)))
}

async fn own_a_number(c: &TwilioClient) -> String {
    c.buy_number(c.account(), &BuyNumber { area_code: Some("415"), friendly_name: "msgr:test:1", ..Default::default() })
        .await
        .unwrap()
        .phone_number
        .unwrap()
}

/// What the client puts on the wire, captured by a bare HTTP server.
#[tokio::test]
async fn a_send_is_a_basic_auth_form_post_and_the_documented_reply_parses() {
    type Seen = Arc<Mutex<Option<(String, HeaderMap, Bytes)>>>;
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/2010-04-01/Accounts/{account}/Messages.json",
        post(move |axum::extract::Path(account): axum::extract::Path<String>, headers: HeaderMap, body: Bytes| {
            let s2 = s2.clone();
            async move {
                *s2.lock().unwrap() = Some((account, headers, body));
                let reply = include_str!("fixtures/message_create.json");
                (StatusCode::CREATED, [("content-type", "application/json")], reply)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let c = sim::client(&base, "s3cret", Duration::from_secs(5));
    let req = CreateMessage {
        to: "+14155552671",
        from: "+14155550100",
        body: "Hi & bye = 100%",
        status_callback: None,
        ..Default::default()
    };
    let m = c.create_message(c.account(), &req).await.unwrap();

    let (account, headers, body) = seen.lock().unwrap().take().unwrap();
    assert_eq!(account, sim::DEFAULT_ACCOUNT_SID);
    let expected_auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:s3cret", sim::DEFAULT_ACCOUNT_SID));
    assert_eq!(headers["authorization"], format!("Basic {expected_auth}"));
    assert_eq!(headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(std::str::from_utf8(&body).unwrap(), "To=%2B14155552671&From=%2B14155550100&Body=Hi+%26+bye+%3D+100%25");
    // The spec's example reply, parsed.
    assert_eq!(m.sid.as_deref(), Some("SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
    assert_eq!(m.status.as_deref(), Some("queued"));
    assert_eq!(m.num_segments.as_deref(), Some("1"));
    assert!(m.date_created.is_some());
}

#[tokio::test]
async fn the_simulator_accepts_a_send_and_lists_it_back_across_pages() {
    let (_s, c) = sim_client(SimConfig::default()).await;
    let from = own_a_number(&c).await;
    let m = c
        .create_message(
            c.account(),
            &CreateMessage {
                to: "+14155552671",
                from: &from,
                body: "Hello! 👍",
                status_callback: None,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let sid = m.sid.clone().unwrap();
    assert!(sid.starts_with("SM") && sid.len() == 34 && sid[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(m.num_segments.as_deref(), Some("1"));
    assert_eq!(m.direction.as_deref(), Some("outbound-api"));

    // 250 more to the same recipient: the list spans three pages of 100, newest first.
    for i in 0..250 {
        let body = format!("n{i}");
        c.create_message(
            c.account(),
            &CreateMessage {
                to: "+14155552671",
                from: &from,
                body: &body,
                status_callback: None,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let filter = MessageFilter { to: Some("+14155552671"), from: Some(&from), date_sent_after: None };
    let all = c.list_messages(c.account(), &filter, 10_000, |_| false).await.unwrap();
    assert_eq!(all.len(), 251);
    assert_eq!(all[0].body.as_deref(), Some("n249"));
    assert_eq!(all.last().unwrap().sid.as_deref(), Some(sid.as_str()));
    // A filter that matches nothing is an empty list, not an error.
    let none = MessageFilter { to: Some("+14155550000"), from: None, date_sent_after: None };
    assert!(c.list_messages(c.account(), &none, 10, |_| false).await.unwrap().is_empty());
}

#[tokio::test]
async fn twilio_errors_become_typed_and_classified() {
    let (_s, c) = sim_client(SimConfig::default()).await;
    let from = own_a_number(&c).await;
    let send = |to: &'static str, body: String| {
        let c = c.clone();
        let from = from.clone();
        async move {
            c.create_message(
                c.account(),
                &CreateMessage { to, from: &from, body: &body, status_callback: None, ..Default::default() },
            )
            .await
        }
    };

    let e = send("5551234567", "x".into()).await.unwrap_err();
    assert!(matches!(e, TwilioError::Api { status: 400, code: codes::INVALID_TO, .. }), "{e:?}");
    assert!(matches!(e.send_failure(), SendFailure::Recipient { code: 21211, .. }));

    let e = send("+14155552671", "x".repeat(1601)).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(400), Some(codes::BODY_TOO_LONG)));

    let e = send("+15005550004", "x".into()).await.unwrap_err();
    assert_eq!(e.send_failure(), SendFailure::OptedOut);

    let wrong = sim::client(&format!("http://{}", "127.0.0.1:1"), "x", Duration::from_secs(1));
    let e = wrong
        .create_message(
            wrong.account(),
            &CreateMessage { to: "+1", from: "+1", body: "x", status_callback: None, ..Default::default() },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, TwilioError::Connect(_)), "{e:?}");
    assert!(matches!(e.send_failure(), SendFailure::Transient { .. }));

    let (_, addr) = sim::spawn(SimConfig::default()).await;
    let bad_token = sim::client(&format!("http://{addr}"), "wrong-token", Duration::from_secs(5));
    let e = bad_token.list_numbers(bad_token.account(), None, None).await.unwrap_err();
    assert!(matches!(e, TwilioError::Api { status: 401, code: codes::AUTHENTICATION_FAILED, .. }), "{e:?}");
    assert_eq!(e.disposition(), Disposition::Permanent);
}

#[tokio::test]
async fn injected_faults_are_classified_by_what_twilio_may_have_done() {
    let fault = |f: Faults| SimConfig { send_faults: f, hang_ms: 5_000, ..SimConfig::default() };
    let cases = [
        (Faults { error_500: 1.0, ..Faults::default() }, "transient"),
        (Faults { error_429: 1.0, retry_after_secs: 3, ..Faults::default() }, "transient-3s"),
        (Faults { drop: 1.0, ..Faults::default() }, "ambiguous"),
        (Faults { accept_then_timeout: 1.0, ..Faults::default() }, "ambiguous-created"),
    ];
    for (faults, expect) in cases {
        let (s, addr) = sim::spawn(SimConfig::default()).await;
        let c = sim::client(&format!("http://{addr}"), sim::DEFAULT_AUTH_TOKEN, Duration::from_millis(700));
        let from = own_a_number(&c).await;
        s.set_config(fault(faults));
        let e = c
            .create_message(
                c.account(),
                &CreateMessage {
                    to: "+14155552671",
                    from: &from,
                    body: "x",
                    status_callback: None,
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        let failure = e.send_failure();
        let created = s.state(true).messages.len();
        match expect {
            "transient" => assert!(matches!(failure, SendFailure::Transient { retry_after: None, .. }), "{e:?}"),
            "transient-3s" => {
                assert!(
                    matches!(failure, SendFailure::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(3)),
                    "{e:?}"
                )
            }
            _ => assert!(matches!(failure, SendFailure::Ambiguous { .. }), "{expect}: {e:?}"),
        }
        // Only "accept then time out" leaves a message behind: that is why timeouts are resolved, not retried.
        assert_eq!(created, usize::from(expect == "ambiguous-created"), "{expect}");
        println!("{expect}: {e}");
    }
}

#[tokio::test]
async fn numbers_are_bought_found_by_friendly_name_and_released() {
    let (_s, c) = sim_client(SimConfig::default()).await;
    let a = c.account();
    let found = c.search_local(a, "US", Some("628"), 5).await.unwrap();
    assert_eq!(found.len(), 5);
    assert!(
        found.iter().all(|n| n.capabilities.unwrap().sms && n.phone_number.as_deref().unwrap().starts_with("+1628"))
    );

    let first = found[0].phone_number.clone().unwrap();
    let bought = c
        .buy_number(a, &BuyNumber { phone_number: Some(&first), friendly_name: "msgr:acme:abc", ..Default::default() })
        .await
        .unwrap();
    assert!(bought.sid.as_deref().unwrap().starts_with("PN"));
    let again = c
        .buy_number(a, &BuyNumber { phone_number: Some(&first), friendly_name: "x", ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some(codes::NUMBER_NOT_AVAILABLE));
    let none = c
        .buy_number(a, &BuyNumber { area_code: Some("533"), friendly_name: "x", ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(none.code(), Some(codes::NO_NUMBERS_IN_AREA));

    let by_name = c.list_numbers(a, Some("msgr:acme:abc"), None).await.unwrap();
    assert_eq!(by_name.len(), 1);
    assert_eq!(by_name[0].phone_number.as_deref(), Some(first.as_str()));
    assert!(c.list_numbers(a, Some("msgr:acme:other"), None).await.unwrap().is_empty());

    c.release_number(a, bought.sid.as_deref().unwrap()).await.unwrap();
    assert!(c.list_numbers(a, Some("msgr:acme:abc"), None).await.unwrap().is_empty());
}

/// Twilio's official Python SDK (twilio-python 9.x) sends, lists across pages, buys and reads errors from the
/// simulator exactly as it would from Twilio. The test script prints what the SDK parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_cannot_tell_the_simulator_from_twilio() {
    let v = run_sdk_script("twilio_sdk_check.py").await;
    assert!(v["bought_sid"].as_str().unwrap().starts_with("PN"));
    assert!(v["message_sid"].as_str().unwrap().starts_with("SM"));
    assert_eq!(v["date_created_is_datetime"], true);
    assert_eq!(v["num_segments"], "2");
    assert_eq!(v["listed"], 120);
    assert_eq!(v["invalid_to"], serde_json::json!([400, 21211]));
    assert_eq!(v["bad_auth"], serde_json::json!([401, 20003]));
    assert_eq!(v["bad_auth_list"], 401);
    assert_eq!(v["too_long"], serde_json::json!([400, 21617]));
    assert_eq!(v["by_friendly_name"], 1);
    assert_eq!(v["available"], 3);
}

/// Issue 12, acceptance 3: Twilio's official `RequestValidator`, given a subaccount's token (read back through the
/// SDK as a parent account does), accepts the inbound-message and status-callback webhooks the simulator sends for
/// that subaccount's number, and the main account's token does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_validator_accepts_subaccount_webhooks_with_the_subaccount_token() {
    let v = run_sdk_script("validate_subaccount_webhooks.py").await;
    assert_eq!(v["owner"], sim::DEFAULT_ACCOUNT_SID);
    assert_eq!(v["status"], "active");
    assert_eq!(v["token_differs"], true);
    assert_eq!(v["paths"], serde_json::json!(["/inbound", "/status"]));
    assert_eq!(v["account_sids"], serde_json::json!([v["sub_sid"], v["sub_sid"]]));
    assert_eq!(v["subaccount_token"], serde_json::json!([true, true]));
    assert_eq!(v["main_token"], serde_json::json!([false, false]));
}

/// The Python that has Twilio's official SDK (scripts/test makes a venv and sets `MESSENGER_SDK_PYTHON`).
/// Runs one of `tests/sdk/*.py` with the official SDK against a fresh simulator (main account's credentials) and
/// returns the JSON the script printed last.
async fn run_sdk_script(name: &str) -> serde_json::Value {
    let (_s, addr) = sim::spawn(SimConfig::default()).await;
    let script = format!("{}/tests/sdk/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(sdk_python())
        .arg(script)
        .arg(format!("http://{addr}"))
        .arg(sim::DEFAULT_ACCOUNT_SID)
        .arg(sim::DEFAULT_AUTH_TOKEN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "SDK script {name} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    println!("{v:#}");
    v
}

fn sdk_python() -> String {
    let python = std::env::var("MESSENGER_SDK_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_sdk =
        std::process::Command::new(&python).args(["-c", "import twilio"]).output().is_ok_and(|o| o.status.success());
    assert!(
        has_sdk,
        "Twilio's Python SDK is not installed for {python}: run scripts/test (it creates a venv with `pip install twilio`) \
         or set MESSENGER_SDK_PYTHON to a python that has it"
    );
    python
}
