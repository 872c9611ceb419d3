//! The producer's front ends over its one set of operations: the CLI and the HTTP API given the same input store
//! the same thing and refuse the same mistakes in the same words.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{ADMIN, World, create_service, start_api};
use harness::sim::{self, SimConfig};
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::domain::CustomerId;
use shared::keys::CustomerKeys;

/// A customer's stored settings: the fields of its record that `customer add` / `PUT` write.
async fn stored(w: &World, id: &str) -> BTreeMap<String, String> {
    let mut conn = w.redis.conn().await;
    let all: BTreeMap<String, String> =
        conn.hgetall(CustomerKeys::new(&CustomerId::parse(id).unwrap()).cfg()).await.unwrap();
    all.into_iter()
        .filter(|(k, _)| ["account_sid", "area_code", "max_numbers", "messaging_service"].contains(&k.as_str()))
        .collect()
}

/// Issue 17, acceptance 1: the same changes given to `producer customer add` (one customer) and to
/// `PUT /v1/customers/{id}` (another) leave the same stored record after every step. A setting a step does not
/// mention keeps its value (raising `--max-numbers` alone keeps the subaccount and the area code: the reported
/// defect); clearing is explicit (`--account-sid main` / `"account_sid": null`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_api_store_the_same_customer_for_the_same_changes() {
    let w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    let twilio = sim::client(&w.sim_base, sim::DEFAULT_AUTH_TOKEN, Duration::from_secs(5));
    let sub = twilio.create_subaccount("Oak Property Co").await.unwrap().sid.unwrap();
    let service = create_service(&w).await;

    let steps: Vec<(Vec<&str>, Value)> = vec![
        (
            vec!["--account-sid", &sub, "--area-code", "415", "--max-numbers", "10"],
            json!({"account_sid": sub, "area_code": "415", "max_numbers": 10}),
        ),
        (vec!["--max-numbers", "30"], json!({"max_numbers": 30})),
        (vec!["--area-code", "any"], json!({"area_code": null})),
        (
            vec!["--account-sid", "main", "--messaging-service", &service],
            json!({"account_sid": null, "messaging_service_sid": service}),
        ),
        (vec!["--max-numbers", "12", "--area-code", "212"], json!({"max_numbers": 12, "area_code": "212"})),
        (vec!["--messaging-service", "none"], json!({"messaging_service_sid": null})),
        (vec![], json!({})),
    ];
    let mut records = Vec::new();
    for (i, (flags, body)) in steps.iter().enumerate() {
        let mut args = vec!["customer", "add", "oak-cli"];
        args.extend(flags);
        w.producer_ok(&args).await;
        let (s, r) = api.call("PUT", "/v1/customers/oak-api", Some(ADMIN), Some(body.clone())).await;
        assert!(s.is_success(), "step {i}: {s} {r}");
        let (cli, http) = (stored(&w, "oak-cli").await, stored(&w, "oak-api").await);
        println!("step {i}: {flags:?} / {body} -> {cli:?}");
        assert_eq!(cli, http, "step {i}: the CLI and the API stored different records");
        records.push(cli);
    }
    // The reported defect: raising the cap alone kept the subaccount and the area code.
    assert_eq!(records[0]["account_sid"], sub);
    assert_eq!(records[1]["account_sid"], sub, "customer add --max-numbers moved the customer off its subaccount");
    assert_eq!(records[1]["area_code"], "415", "customer add --max-numbers cleared the area code");
    assert_eq!(records[1]["max_numbers"], "30");
    // Clearing is explicit, and a later change of another field keeps the service.
    assert_eq!((records[2]["area_code"].as_str(), records[2]["account_sid"].as_str()), ("", sub.as_str()));
    assert_eq!((records[3]["account_sid"].as_str(), records[3]["messaging_service"].as_str()), ("", service.as_str()));
    assert_eq!(records[4]["messaging_service"], service);
    assert_eq!(records[5]["messaging_service"], "");
    assert_eq!(records[6], records[5], "a change that names nothing changes nothing");

    // The CLI prints what is stored now, so an operator sees the account and area code it kept.
    let out = w.producer_ok(&["customer", "add", "oak-cli", "--max-numbers", "40"]).await;
    assert!(out.contains("max 40 numbers") && out.contains("area code 212"), "{out}");
}

/// Issue 17, acceptance 1 (the other half): the same mistakes are refused by both front ends with the same words
/// (exit 2 / 422, naming the field), and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_api_refuse_the_same_mistakes_in_the_same_words_and_change_nothing() {
    let w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    let twilio = sim::client(&w.sim_base, sim::DEFAULT_AUTH_TOKEN, Duration::from_secs(5));
    let sub = twilio.create_subaccount("Oak Property Co").await.unwrap().sid.unwrap();
    let service = create_service(&w).await;
    w.producer_ok(&["customer", "add", "oak", "--account-sid", &sub]).await;
    w.producer_ok(&["customer", "add", "elm"]).await;
    let unknown_service = format!("MG{}", "1".repeat(32));
    let unknown_account = format!("AC{}", "2".repeat(32));
    // (customer, flags, the same as JSON, the field at fault); oak is on a subaccount, elm on the main account.
    let mistakes: Vec<(&str, Vec<&str>, Value, &str)> = vec![
        ("oak", vec!["--max-numbers", "0"], json!({"max_numbers": 0}), "max_numbers"),
        ("oak", vec!["--max-numbers", "20000"], json!({"max_numbers": 20000}), "max_numbers"),
        ("oak", vec!["--area-code", "041"], json!({"area_code": "041"}), "area_code"),
        ("oak", vec!["--account-sid", "AC123"], json!({"account_sid": "AC123"}), "account_sid"),
        ("elm", vec!["--account-sid", &unknown_account], json!({"account_sid": unknown_account}), "account_sid"),
        (
            "elm",
            vec!["--messaging-service", &unknown_service],
            json!({"messaging_service_sid": unknown_service}),
            "messaging_service_sid",
        ),
        // The stored subaccount and a Messaging Service together are not supported.
        (
            "oak",
            vec!["--messaging-service", &service],
            json!({"messaging_service_sid": service}),
            "messaging_service_sid",
        ),
        ("elm", vec!["--idle-days", "1"], json!({"idle_days": 1}), ""),
    ];
    let before = w.redis.digest();
    for (customer, flags, body, field) in &mistakes {
        let mut args = vec!["customer", "add", customer];
        args.extend(flags);
        let out = w.producer(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let (s, r) = api.call("PUT", &format!("/v1/customers/{customer}"), Some(ADMIN), Some(body.clone())).await;
        if field.is_empty() {
            // Not a setting of customers at all: the CLI's parser and the API's JSON shape say so.
            println!("{flags:?}: exit {:?}, API {s}", out.status.code());
            assert_eq!((out.status.code(), s), (Some(2), StatusCode::UNPROCESSABLE_ENTITY), "{stderr} {r}");
            assert_eq!(w.redis.digest(), before, "{flags:?} changed Redis");
            continue;
        }
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {r}");
        assert_eq!(r["error"]["field"], *field, "{r}");
        let words = r["error"]["problems"][0]["message"].as_str().unwrap();
        println!("{flags:?}: exit {:?}, API {s}: {field}: {words}", out.status.code());
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(words), "{flags:?}: the CLI said {stderr:?}, the API {words:?}");
        assert_eq!(w.redis.digest(), before, "{flags:?} changed Redis");
    }
}
