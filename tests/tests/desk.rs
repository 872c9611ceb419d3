//! The support desk, driven over the API as a property manager's app (or support person) would: a labelled,
//! personalised 400-recipient batch with refusals, carrier-undelivered reports and replies; the inbox of those
//! replies; the failed and undelivered recipients listed exactly; one resend texting exactly the ones that can
//! succeed, nobody else and nobody twice; and bad input refused with nothing changed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{ADMIN, APP_A, APP_B, World, inbound_params, start_api};
use harness::fixtures::recipients;
use harness::sim::{self, SimConfig};
use serde_json::{Value, json};

/// The form parameters of a status callback: `status`, with Twilio's error `code` when there is one.
fn callback(sid: &str, to: &str, status: &str, code: Option<&str>) -> Vec<(String, String)> {
    let mut p = vec![
        ("MessageSid".to_owned(), sid.to_owned()),
        ("MessageStatus".to_owned(), status.to_owned()),
        ("To".to_owned(), to.to_owned()),
    ];
    if let Some(c) = code {
        p.push(("ErrorCode".to_owned(), c.to_owned()));
    }
    p
}

fn name_of(i: usize) -> String {
    format!("Tenant {i}")
}

fn unit_of(i: usize) -> String {
    format!("{}{}", 1 + i / 20, (b'A' + (i % 20) as u8) as char)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_support_desk_lists_replies_and_failures_and_resends_to_exactly_the_failed() {
    let to = recipients(400, 0);
    // 12 refused for good (21614: not a mobile number), 10 unreachable from this sender for now (21612).
    let refused: Vec<String> = to[100..112].to_vec();
    let unreachable: Vec<String> = to[200..210].to_vec();
    let mut w = World::start(SimConfig {
        refuse_recipients: refused.clone(),
        unreachable_recipients: unreachable.clone(),
        ..SimConfig::default()
    })
    .await;
    let api = start_api(&w).await;
    w.env = w.env.clone().set("MESSENGER_PUBLIC_URL", &api.base);
    let (s, _) = api.call("PUT", "/v1/customers/acme", Some(ADMIN), Some(json!({"max_numbers": 2}))).await;
    assert_eq!(s, 201);
    let _workers: Vec<_> = (0..2).map(|_| w.worker(8)).collect();

    // A labelled, personalised batch; the 202 says where the batch is.
    let body = "Hi {{name}}, the water in unit {{unit}} is off 9-11 tomorrow.";
    let list: Vec<Value> = to
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"to": p, "vars": {"name": name_of(i), "unit": unit_of(i)}}))
        .collect();
    let label = "Water shut-off, building 4";
    let resp = harness::http()
        .post(format!("{}/v1/customers/acme/bulk-texts", api.base))
        .bearer_auth(APP_A)
        .json(&json!({"body": body, "recipients": list, "label": label}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
    let accepted: Value = resp.json().await.unwrap();
    let batch = accepted["batch_id"].as_str().unwrap().to_owned();
    assert_eq!(location.as_deref(), Some(format!("/v1/batches/{batch}").as_str()));
    let done = w.wait_complete(&batch, Duration::from_secs(120)).await;
    assert_eq!((done.sent, done.failed), (378, 22), "{done:?}");

    // Delivery reports: 8 undelivered as spam (30007), 2 to landlines (30006), the rest delivered.
    let messages: Vec<_> = w.state().messages.into_iter().filter(|m| m.body.contains("is off 9-11")).collect();
    assert_eq!(messages.len(), 378);
    let spam: Vec<String> = messages[..8].iter().map(|m| m.to.clone()).collect();
    let landline: Vec<String> = messages[8..10].iter().map(|m| m.to.clone()).collect();
    for (i, m) in messages.iter().enumerate() {
        let url = m.status_callback.clone().expect("status callbacks asked for");
        let p = match i {
            0..8 => callback(&m.sid, &m.to, "undelivered", Some("30007")),
            8..10 => callback(&m.sid, &m.to, "undelivered", Some("30006")),
            _ => callback(&m.sid, &m.to, "delivered", None),
        };
        let (code, _) = sim::post_signed(sim::DEFAULT_AUTH_TOKEN, &url, &p).await.unwrap();
        assert!(code < 300, "callback answered {code}");
    }

    // Six replies: four tenants of the batch, one of the unreachable ones saying STOP, and a number never texted.
    let from_of = |r: &str| messages.iter().find(|m| m.to == r).map(|m| m.from.clone());
    let our_number = messages[0].from.clone();
    let stranger = recipients(1, 9_000)[0].clone();
    let replies: Vec<(String, String, String)> = vec![
        (to[20].clone(), from_of(&to[20]).unwrap(), "Thanks, noted".into()),
        (to[21].clone(), from_of(&to[21]).unwrap(), "Until what time exactly?".into()),
        (to[22].clone(), from_of(&to[22]).unwrap(), "Is the laundry room affected?".into()),
        (spam[0].clone(), from_of(&spam[0]).unwrap(), "I only got this from a friend".into()),
        (unreachable[0].clone(), our_number.clone(), "STOP".into()),
        (stranger.clone(), our_number.clone(), "Hi, I'm the new tenant in 3B".into()),
    ];
    for (i, (from, number, text)) in replies.iter().enumerate() {
        let p = inbound_params(from, number, text, &format!("SMdesk{i:032}"));
        let (code, _) =
            sim::post_signed(sim::DEFAULT_AUTH_TOKEN, &format!("{}/twilio/inbound", api.base), &p).await.unwrap();
        assert_eq!(code, 200);
        // One reply per millisecond at most, so "newest first" has one answer.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    // The batch is listed with its label; a one-off answer is listed apart.
    let (s, answer) = api
        .call("POST", "/v1/customers/acme/messages", Some(APP_A), Some(json!({"to": to[21], "body": "Until 11:00."})))
        .await;
    assert_eq!(s, 202, "{answer}");
    let (_, bulk) = api.call("GET", "/v1/customers/acme/batches?kind=bulk", Some(APP_A), None).await;
    let (_, answers) = api.call("GET", "/v1/customers/acme/batches?kind=answer", Some(APP_A), None).await;
    println!(
        "batches: bulk {:?}; answers {}",
        bulk["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["label"].clone(), b["total"].clone()))
            .collect::<Vec<_>>(),
        answers["batches"].as_array().unwrap().len()
    );
    assert_eq!(bulk["batches"].as_array().unwrap().len(), 1);
    assert_eq!(bulk["batches"][0]["label"], label);
    assert_eq!(bulk["batches"][0]["batch_id"], batch.as_str());
    assert!(bulk["batches"][0]["preview"].as_str().unwrap().starts_with("Hi {{name}}"));
    assert_eq!(
        (bulk["batches"][0]["failed"].as_u64(), bulk["batches"][0]["undelivered"].as_u64()),
        (Some(22), Some(10))
    );
    assert!(bulk["batches"][0]["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(answers["batches"][0]["batch_id"], answer["batch_id"]);
    assert_eq!(bulk["has_more"], false);

    // The inbox: six unread threads, newest reply first, with the tenants' merge fields.
    let (s, inbox) = api.call("GET", "/v1/customers/acme/conversations?unread=true", Some(APP_A), None).await;
    assert_eq!(s, 200, "{inbox}");
    let threads = inbox["threads"].as_array().unwrap();
    let phones: Vec<&str> = threads.iter().map(|t| t["phone"].as_str().unwrap()).collect();
    let expected: Vec<&str> = replies.iter().rev().map(|(p, _, _)| p.as_str()).collect();
    println!("inbox: {} unread threads: {phones:?}", inbox["unread_threads"]);
    assert_eq!(phones, expected, "newest reply first");
    assert_eq!(inbox["unread_threads"], 6);
    let t22 = threads.iter().find(|t| t["phone"] == to[22].as_str()).unwrap();
    assert_eq!(
        (t22["fields"]["name"].as_str(), t22["fields"]["unit"].as_str()),
        (Some(name_of(22).as_str()), Some(unit_of(22).as_str()))
    );
    assert_eq!((t22["batch"].as_str(), t22["batch_label"].as_str()), (Some(batch.as_str()), Some(label)));
    assert_eq!(t22["last"]["body"], "Is the laundry room affected?");
    let new_tenant = threads.iter().find(|t| t["phone"] == stranger.as_str()).unwrap();
    assert!(new_tenant["fields"].as_object().unwrap().is_empty() && new_tenant["batch"].is_null(), "{new_tenant}");
    // Paged two at a time, the same six in the same order; filtered by the batch, the four who answered a text of
    // it (the STOP came from a tenant whose text failed, the last from a number never texted).
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let (_, page) =
            api.call("GET", &format!("/v1/customers/acme/conversations?limit=2{after}"), Some(APP_A), None).await;
        paged.extend(page["threads"].as_array().unwrap().iter().map(|t| t["phone"].as_str().unwrap().to_owned()));
        if page["has_more"] != true {
            break;
        }
        after = format!("&after={}", page["next"].as_str().unwrap());
    }
    assert_eq!(paged, expected);
    let (_, of_batch) =
        api.call("GET", &format!("/v1/customers/acme/conversations?batch={batch}"), Some(APP_A), None).await;
    assert_eq!(of_batch["threads"].as_array().unwrap().len(), 4, "{of_batch}");
    let (s, read) =
        api.call("POST", &format!("/v1/customers/acme/conversations/{}/read", to[20]), Some(APP_A), None).await;
    assert_eq!((s.as_u16(), read["was_unread"].as_u64(), read["unread_threads"].as_u64()), (200, Some(1), Some(5)));
    // Another customer's app sees none of it.
    let (s, _) = api.call("GET", "/v1/customers/acme/conversations", Some(APP_B), None).await;
    assert_eq!(s, 403);

    // Threads: a failed tenant's says why; an undelivered one shows the carrier's code.
    let (_, failed_thread) =
        api.call("GET", &format!("/v1/customers/acme/conversations/{}", unreachable[1]), Some(APP_A), None).await;
    let m = &failed_thread["messages"][0];
    println!("a failed tenant's thread: {m}");
    assert_eq!((m["direction"].as_str(), m["error_code"].as_u64()), (Some("failed"), Some(21612)), "{failed_thread}");
    assert!(m["reason"].as_str().unwrap().contains("21612"));
    let (_, spam_thread) =
        api.call("GET", &format!("/v1/customers/acme/conversations/{}", spam[1]), Some(APP_A), None).await;
    let m = &spam_thread["messages"][0];
    assert_eq!((m["status"].as_str(), m["error_code"].as_u64()), (Some("undelivered"), Some(30007)), "{spam_thread}");
    assert!(
        m["body"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Hi {}", name_of(to.iter().position(|t| *t == spam[1]).unwrap())))
    );

    // The failed and undelivered, listed exactly, with merge fields.
    let mut listed: BTreeMap<String, (String, Option<u64>)> = BTreeMap::new();
    let mut after = String::new();
    loop {
        let (s, page) = api
            .call(
                "GET",
                &format!("/v1/batches/{batch}/recipients?state=failed,undelivered&limit=7{after}"),
                Some(APP_A),
                None,
            )
            .await;
        assert_eq!(s, 200, "{page}");
        assert_eq!(page["total"], 32);
        for r in page["recipients"].as_array().unwrap() {
            let i = to.iter().position(|t| t == r["phone"].as_str().unwrap()).unwrap();
            assert_eq!(r["fields"]["name"].as_str(), Some(name_of(i).as_str()), "{r}");
            listed.insert(
                r["phone"].as_str().unwrap().to_owned(),
                (r["state"].as_str().unwrap().to_owned(), r["error_code"].as_u64()),
            );
        }
        if page["has_more"] != true {
            break;
        }
        after = format!("&after={}", page["next"].as_str().unwrap().replace('+', "%2B"));
    }
    let mut truth: BTreeMap<String, (String, Option<u64>)> = BTreeMap::new();
    truth.extend(refused.iter().map(|r| (r.clone(), ("failed".to_owned(), Some(21614)))));
    truth.extend(unreachable.iter().map(|r| (r.clone(), ("failed".to_owned(), Some(21612)))));
    truth.extend(spam.iter().map(|r| (r.clone(), ("undelivered".to_owned(), Some(30007)))));
    truth.extend(landline.iter().map(|r| (r.clone(), ("undelivered".to_owned(), Some(30006)))));
    assert_eq!(listed, truth, "the failed and undelivered, exactly");
    println!("recipients listed: {} (failed 22, undelivered 10)", listed.len());

    // Bad input: nothing changes.
    let sent_before = w.state().messages.len();
    let (s, e) = api.call("GET", &format!("/v1/batches/{batch}/recipients?state=lost"), Some(APP_A), None).await;
    println!("unknown state: {s} {e}");
    assert_eq!(s, 422);
    assert!(e["error"]["message"].as_str().unwrap().contains("\"lost\""), "{e}");
    let long = "x".repeat(2000);
    let (s, e) = api
        .call(
            "POST",
            "/v1/customers/acme/bulk-texts",
            Some(APP_A),
            Some(json!({"body": "Hi", "recipients": [to[0]], "label": long})),
        )
        .await;
    println!("label of 2,000 characters: {s} {e}");
    assert_eq!(s, 422);
    assert_eq!(e["error"]["field"], "label", "{e}");
    let (s, later) = api
        .call(
            "POST",
            "/v1/customers/acme/bulk-texts",
            Some(APP_A),
            Some(json!({"body": "Later", "recipients": [to[0]], "idempotency_key": "later-1", "send_at": (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339()})),
        )
        .await;
    assert_eq!(s, 202, "{later}");
    let running = later["batch_id"].as_str().unwrap();
    let (s, e) = api
        .call("POST", &format!("/v1/batches/{running}/resend"), Some(APP_A), Some(json!({"which": ["failed"]})))
        .await;
    println!("resend of a running batch: {s} {e}");
    assert_eq!(s, 409, "{e}");
    let (s, e) = api
        .call("POST", &format!("/v1/batches/{batch}/resend"), Some(APP_A), Some(json!({"which": ["everyone"]})))
        .await;
    assert_eq!(s, 422, "{e}");
    let (s, _) =
        api.call("POST", &format!("/v1/batches/{batch}/resend"), Some(APP_B), Some(json!({"which": ["failed"]}))).await;
    assert_eq!(s, 403);
    // A resend whose key belongs to another request is refused, and gives its claim back: the real one still goes.
    let (s, e) = api
        .call(
            "POST",
            &format!("/v1/batches/{batch}/resend"),
            Some(APP_A),
            Some(json!({"which": ["failed"], "idempotency_key": "later-1"})),
        )
        .await;
    println!("a resend reusing another request's key: {s} {e}");
    assert_eq!(s, 409, "{e}");
    assert_eq!(w.state().messages.len(), sent_before, "bad input texted nobody");

    // The resend: its count first (dry run), then the batch; exactly the ones that can succeed get it.
    w.sim.set_config(SimConfig { refuse_recipients: refused.clone(), ..SimConfig::default() });
    let (s, plan) = api
        .call(
            "POST",
            &format!("/v1/batches/{batch}/resend"),
            Some(APP_A),
            Some(json!({"which": ["failed", "undelivered"], "dry_run": true})),
        )
        .await;
    println!("resend plan: {plan}");
    assert_eq!(s, 200);
    let expected_skips: BTreeMap<String, u64> =
        [("landline".to_owned(), 14), ("opted_out".to_owned(), 1)].into_iter().collect();
    let skipped: BTreeMap<String, u64> = serde_json::from_value(plan["skipped"].clone()).unwrap();
    assert_eq!((plan["recipients"].as_u64(), &skipped), (Some(17), &expected_skips));
    let resp = harness::http()
        .post(format!("{}/v1/batches/{batch}/resend", api.base))
        .bearer_auth(APP_A)
        .json(&json!({"which": ["failed", "undelivered"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers().get("location").unwrap().to_str().unwrap().to_owned();
    let out: Value = resp.json().await.unwrap();
    let resend = out["batch_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/batches/{resend}"));
    // Asked again (a double click): the same batch; asked with another key: refused, it would text them twice.
    let (s, again) = api
        .call(
            "POST",
            &format!("/v1/batches/{batch}/resend"),
            Some(APP_A),
            Some(json!({"which": ["undelivered", "failed"]})),
        )
        .await;
    assert_eq!(
        (s.as_u16(), again["batch_id"].as_str(), again["existing"].as_bool()),
        (202, Some(resend.as_str()), Some(true))
    );
    let (s, e) = api
        .call(
            "POST",
            &format!("/v1/batches/{batch}/resend"),
            Some(APP_A),
            Some(json!({"which": ["failed"], "idempotency_key": "other"})),
        )
        .await;
    println!("a second, different resend: {s} {e}");
    assert_eq!(s, 409, "{e}");
    let status = w.wait_complete(&resend, Duration::from_secs(60)).await;
    assert_eq!((status.sent, status.resend_of.as_deref(), status.kind.as_str()), (17, Some(batch.as_str()), "resend"));
    let resent: Vec<_> =
        w.state().messages.into_iter().skip(sent_before).filter(|m| m.body.contains("is off 9-11")).collect();
    let got: BTreeSet<&str> = resent.iter().map(|m| m.to.as_str()).collect();
    let want: BTreeSet<&str> = unreachable[1..].iter().chain(&spam).map(String::as_str).collect();
    println!(
        "resend texted {} recipients ({} distinct): {}",
        resent.len(),
        got.len(),
        if got == want { "exactly the failed and undelivered that can succeed" } else { "WRONG" }
    );
    assert_eq!(resent.len(), 17, "nobody twice");
    assert_eq!(got, want, "exactly them");
    for m in &resent {
        let i = to.iter().position(|t| *t == m.to).unwrap();
        assert_eq!(m.body, format!("Hi {}, the water in unit {} is off 9-11 tomorrow.", name_of(i), unit_of(i)));
    }
    let (_, original) = api.call("GET", &format!("/v1/batches/{batch}"), Some(APP_A), None).await;
    assert_eq!(original["resent_by"], resend.as_str());
    assert_eq!(original["label"], label);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_of_ten_thousand_threads_pages_without_gaps_and_every_page_is_bounded() {
    let w = World::start(SimConfig::default()).await;
    let api = start_api(&w).await;
    let (s, _) = api.call("PUT", "/v1/customers/acme", Some(ADMIN), Some(json!({"max_numbers": 1}))).await;
    assert_eq!(s, 201);
    // 10,000 tenants each wrote once (written as record_inbound.lua writes them, with some on one millisecond).
    let tenants = recipients(10_000, 50_000);
    let mut conn = w.redis.conn().await;
    let k = shared::keys::CustomerKeys::new(&shared::domain::CustomerId::parse("acme").unwrap());
    for chunk in tenants.chunks(1_000) {
        let mut p = redis::pipe();
        for (i, t) in chunk.iter().enumerate() {
            let ms = 1_765_000_000_000i64 + (i as i64 / 3);
            p.zadd(k.inbox(), t, ms).ignore().hincr(k.unread(), t, 1).ignore();
        }
        let _: () = p.query_async(&mut conn).await.unwrap();
    }
    let mut seen = BTreeSet::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let (s, page) =
            api.call("GET", &format!("/v1/customers/acme/conversations?limit=200{after}"), Some(APP_A), None).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        for t in page["threads"].as_array().unwrap() {
            assert!(seen.insert(t["phone"].as_str().unwrap().to_owned()), "a thread came twice: {t}");
        }
        if page["has_more"] != true {
            break;
        }
        after = format!("&after={}", page["next"].as_str().unwrap().replace('+', "%2B"));
    }
    println!("10,000 threads in {pages} pages of 200, each once");
    assert_eq!(seen.len(), 10_000);
    // One at a time over replies that share a millisecond (three a millisecond here): none skipped, none repeated.
    let (_, first) = api.call("GET", "/v1/customers/acme/conversations?limit=12", Some(APP_A), None).await;
    let twelve: Vec<&str> = first["threads"].as_array().unwrap().iter().map(|t| t["phone"].as_str().unwrap()).collect();
    let mut one_by_one = Vec::new();
    let mut after = String::new();
    while one_by_one.len() < 12 {
        let (_, page) =
            api.call("GET", &format!("/v1/customers/acme/conversations?limit=1{after}"), Some(APP_A), None).await;
        one_by_one.push(page["threads"][0]["phone"].as_str().unwrap().to_owned());
        after = format!("&after={}", page["next"].as_str().unwrap().replace('+', "%2B"));
    }
    assert_eq!(one_by_one, twelve, "pages of one across ties");
    let (_, unread) = api.call("GET", "/v1/customers/acme/conversations?unread=true&limit=5", Some(APP_A), None).await;
    assert_eq!(
        (unread["unread_threads"].as_u64(), unread["threads"].as_array().map(Vec::len)),
        (Some(10_000), Some(5))
    );
    // What the dashboard's inbox costs Redis with 10,000 threads: bounded by the page, not the inbox (the session's
    // check 4, the customer list 1, the customer 1, the index 1, 4 per thread shown, the unread count 1; with
    // `unread`, one HGET per entry read: 51 here, all being unread).
    let session = harness::dashboard::login(&api.base, ADMIN).await;
    let pages = ["/dashboard/inbox?customer=acme".to_owned(), "/dashboard/inbox?customer=acme&unread=1".to_owned()];
    let costs = harness::dashboard::page_costs(&session, &mut w.redis.sync_conn(), &pages, 3).await;
    for (c, bound) in costs.iter().zip([8 + 4 * 50, 8 + 4 * 50 + 51]) {
        println!("{} -> {} commands {:?}", c.path, c.commands, c.by_command);
        assert_eq!(c.status, 200, "{}", c.path);
        assert!(c.commands <= bound as u64, "{} cost {} commands (bound {bound})", c.path, c.commands);
    }
    let (s, e) = api.call("GET", "/v1/customers/acme/conversations?after=yesterday", Some(APP_A), None).await;
    assert_eq!((s.as_u16(), e["error"]["field"].as_str()), (422, Some("after")), "{e}");
    let (s, e) = api.call("GET", "/v1/customers/acme/conversations?limit=5000", Some(APP_A), None).await;
    assert_eq!(s, 422, "{e}");
}

/// Acceptance 2: the same desk in Chromium, as a scoped support person (numbers masked, merge fields shown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desk_in_a_real_browser_answers_a_thread_exports_and_resends() {
    let browser = concat!(env!("CARGO_MANIFEST_DIR"), "/browser");
    assert!(
        std::path::Path::new(&format!("{browser}/node_modules/playwright-core")).exists(),
        "run `npm ci` in tests/browser (scripts/test does it)"
    );
    let to = recipients(40, 700);
    let refused: Vec<String> = to[10..13].to_vec();
    let unreachable: Vec<String> = to[20..22].to_vec();
    let mut w = World::start(SimConfig {
        refuse_recipients: refused.clone(),
        unreachable_recipients: unreachable.clone(),
        ..SimConfig::default()
    })
    .await;
    let api = start_api(&w).await;
    w.env = w.env.clone().set("MESSENGER_PUBLIC_URL", &api.base);
    let (s, _) = api.call("PUT", "/v1/customers/acme", Some(ADMIN), Some(json!({"max_numbers": 2}))).await;
    assert_eq!(s, 201);
    let _workers: Vec<_> = (0..2).map(|_| w.worker(8)).collect();
    let list: Vec<Value> = to
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"to": p, "vars": {"name": name_of(i), "unit": unit_of(i)}}))
        .collect();
    let (s, accepted) = api
        .call(
            "POST",
            "/v1/customers/acme/bulk-texts",
            Some(APP_A),
            Some(json!({"body": "Hi {{name}}: boiler service in {{unit}} on Monday.", "recipients": list, "label": "Boiler service"})),
        )
        .await;
    assert_eq!(s, 202, "{accepted}");
    let batch = accepted["batch_id"].as_str().unwrap().to_owned();
    w.wait_complete(&batch, Duration::from_secs(60)).await;
    let messages: Vec<_> = w.state().messages;
    let spam: Vec<String> = messages[..3].iter().map(|m| m.to.clone()).collect();
    for (i, m) in messages.iter().enumerate() {
        let p = if i < 3 {
            callback(&m.sid, &m.to, "undelivered", Some("30007"))
        } else {
            callback(&m.sid, &m.to, "delivered", None)
        };
        let (code, _) =
            sim::post_signed(sim::DEFAULT_AUTH_TOKEN, m.status_callback.as_deref().unwrap(), &p).await.unwrap();
        assert!(code < 300);
    }
    let from_of = |r: &str| messages.iter().find(|m| m.to == r).unwrap().from.clone();
    for (i, r) in to[5..8].iter().enumerate() {
        let p = inbound_params(r, &from_of(r), &format!("Question #{i}"), &format!("SMbrowser{i:029}"));
        let (code, _) =
            sim::post_signed(sim::DEFAULT_AUTH_TOKEN, &format!("{}/twilio/inbound", api.base), &p).await.unwrap();
        assert_eq!(code, 200);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    w.sim.set_config(SimConfig { refuse_recipients: refused.clone(), ..SimConfig::default() });

    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dashboard");
    std::fs::create_dir_all(shots).unwrap();
    let answer = "Monday 9-11; leave the unit key with the office.";
    let out = tokio::process::Command::new("node")
        .arg(format!("{browser}/desk.mjs"))
        .args([api.base.as_str(), APP_A, "acme", answer, shots])
        .output()
        .await
        .expect("run node (apt-get install nodejs npm)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "browser script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    println!("badge {}; inbox {}", v["badge"], v["inbox"]);
    println!("thread {}; reply: {}", v["thread_before"], v["reply_done"]);
    println!(
        "batch page {:?}: {} rows; {}; {}",
        v["batch_title"], v["table_rows"], v["resend_button"], v["resend_hint"]
    );
    println!("after resend: {}", v["resent"]);
    println!("axe serious/critical: {}", json!(harness::dashboard::axe_serious(&v)));
    assert_eq!(v["badge"].as_str().map(|b| b.starts_with('3')), Some(true), "{}", v["badge"]);
    let inbox = v["inbox"].as_array().unwrap();
    assert_eq!(inbox.len(), 3);
    assert_eq!(inbox[0]["tenant"], shared::domain::Masked(&to[7]).to_string(), "newest first, the number masked");
    assert!(inbox[0]["fields"].as_str().unwrap().contains(&format!("name: {}", name_of(7))), "{}", inbox[0]);
    assert_eq!(v["thread_url_has_number"], false, "a scoped viewer's URLs carry no number");
    assert!(v["reply_done"].as_str().unwrap().starts_with("Answer queued"));
    // The answer reached the simulator from the number the tenant wrote to.
    let sent = harness::fixtures::wait_until(Duration::from_secs(30), "the answer to be sent", || async {
        w.state().messages.into_iter().find(|m| m.body == answer)
    })
    .await;
    println!(
        "the answer went to {} from {} (the tenant wrote to {})",
        shared::domain::Masked(&sent.to),
        shared::domain::Masked(&sent.from),
        shared::domain::Masked(&from_of(&to[7]))
    );
    assert_eq!((sent.to.as_str(), sent.from.clone()), (to[7].as_str(), from_of(&to[7])));
    // The page's table and the export: the 3 refused, 2 unreachable, 3 undelivered, numbers masked, merge fields in.
    assert_eq!(v["table_rows"], 8);
    let csv = v["csv"].as_str().unwrap();
    let (_, listed) = api.call("GET", &format!("/v1/batches/{batch}/recipients"), Some(APP_A), None).await;
    let expected: BTreeSet<String> = listed["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{},{},{}",
                shared::domain::Masked(r["phone"].as_str().unwrap()),
                r["state"].as_str().unwrap(),
                r["fields"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "phone,state,reason,error_code,meaning,message_sid,name,unit");
    let got: BTreeSet<String> = lines[1..]
        .iter()
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            format!("{},{},{}", c[0], c[1], c[c.len() - 2])
        })
        .collect();
    println!("export: {} lines, equal to the API's list: {}", lines.len() - 1, got == expected);
    assert_eq!(got, expected);
    assert_eq!(v["resend_button"], "Resend to 5 recipient(s)");
    assert!(v["resend_hint"].as_str().unwrap().contains("3 landline"), "{}", v["resend_hint"]);
    let out = api.call("GET", &format!("/v1/batches/{batch}"), Some(APP_A), None).await.1;
    let resend = out["resent_by"].as_str().expect("resent").to_owned();
    let done = w.wait_complete(&resend, Duration::from_secs(30)).await;
    let resent: BTreeSet<String> = w
        .state()
        .messages
        .into_iter()
        .filter(|m| m.body.contains("boiler service") && messages.iter().all(|x| x.sid != m.sid))
        .map(|m| m.to)
        .collect();
    let want: BTreeSet<String> = unreachable.iter().chain(&spam).cloned().collect();
    assert_eq!((done.sent, resent), (5, want));
    harness::dashboard::assert_axe_clean(&v);
    assert_eq!(v["axe"].as_object().map(|a| a.len()), Some(4), "inbox, thread, batch and resent pages audited");
    assert_eq!(v["page_errors"].as_array().map(Vec::len), Some(0), "{}", v["page_errors"]);
}
