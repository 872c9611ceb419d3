//! Hearing "stop" however a tenant says it (issue 30): replies read in the tenant's own words, opt-outs and opt-ins
//! from other channels, reviews of suspected revocations, the confirmation, the record, and a revocation that
//! arrives while a batch is being sent. Against a real `producer serve` and real workers; Twilio's webhooks posted
//! signed, as Twilio posts them.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{ADMIN, World};
use harness::fixtures::{per_recipient, recipients, wait_until};
use harness::procs::Proc;
use harness::sim::{self, SimConfig};
use serde_json::{Value, json};

/// A `producer serve` process on a port of its own, the workers' public URL pointing at it.
struct Server {
    base: String,
    proc: Proc,
}

impl Server {
    async fn start<R: common::Store>(w: &mut World<R>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let base = format!("http://127.0.0.1:{port}");
        w.env = w.env.clone().set("MESSENGER_PUBLIC_URL", &base);
        let proc = w.env.spawn_producer(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--api-tokens",
            &format!("ops:{ADMIN}:admin"),
        ]);
        let s = Server { base, proc };
        wait_until(Duration::from_secs(60), "producer serve to answer", || async {
            (s.call("GET", "/healthz", None).await.0 == 200).then_some(())
        })
        .await;
        s
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

    /// A tenant's reply, signed as Twilio signs it; the status and the TwiML answered.
    async fn reply(&self, from: &str, to: &str, body: &str, sid: &str) -> (u16, String) {
        let params = common::inbound_params(from, to, body, sid);
        sim::post_signed(sim::DEFAULT_AUTH_TOKEN, &format!("{}/twilio/inbound", self.base), &params).await.unwrap()
    }
}

/// The customer's first pool number (replies are sent to it).
async fn a_pool_number<R: common::Store>(w: &World<R>, customer: &str) -> String {
    let pool: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{{c:{customer}}}:pool"))
        .arg(0)
        .arg(0)
        .query_async(&mut w.redis.conn().await)
        .await
        .unwrap();
    pool.into_iter().next().expect("a number in the pool")
}

async fn batch(server: &Server, to: &[String], body: &str) -> String {
    let (s, a) =
        server.call("POST", "/v1/customers/acme/bulk-texts", Some(json!({"body": body, "recipients": to}))).await;
    assert_eq!(s, 202, "{a}");
    a["batch_id"].as_str().unwrap().to_owned()
}

/// Acceptance 2: forty tenants texted; replies of every kind and an opt-out over the API; a second batch texts no
/// revoker and no opted-out tenant, holds the suspected ones, texts everyone else once; one confirmation per
/// revocation in words (none for Twilio's keywords, none for a repeat); a dismissal releases the held text, a
/// confirmation ends it opted out; the record keeps the words and how they were read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_in_the_tenants_own_words_are_heard_and_suspected_ones_wait_for_a_person() {
    let mut w = World::start(SimConfig::default()).await;
    let server = Server::start(&mut w).await;
    let (s, c) = server
        .call(
            "PUT",
            "/v1/customers/acme",
            Some(json!({"max_numbers": 1, "events": true, "sender_name": "Acme Property"})),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let _workers = [w.worker(8), w.worker(8)];
    let to = recipients(40, 0);
    let first = batch(&server, &to, "Water off Tuesday 9-11. Reply STOP to opt out.").await;
    w.wait_complete(&first, Duration::from_secs(60)).await;
    let number = a_pool_number(&w, "acme").await;

    // Replies: Twilio's keywords, revocations in words (English and Spanish), suspected ones, ordinary ones.
    let keywords = ["STOP", "unsubscribe", "Cancel"];
    let words =
        ["Stop texting me please", "OPT OUT", "opt-out!", "Please remove my number", "No más mensajes", "wrong number"];
    let suspected = ["The banging has to stop", "I need to cancel the repair", "I moved out last month"];
    let ordinary = ["Thanks!", "Is the water back on?", "Can someone stop by to fix the sink?"];
    let mut answers = BTreeMap::new();
    let mut tenant = to.iter();
    let mut sid = 0;
    let mut said: Vec<(&str, String, &str)> = Vec::new();
    for (kind, list) in
        [("keyword", &keywords[..]), ("words", &words[..]), ("suspected", &suspected[..]), ("ordinary", &ordinary[..])]
    {
        for body in list {
            let t = tenant.next().unwrap().clone();
            sid += 1;
            let (status, twiml) = server.reply(&t, &number, body, &format!("SMreply{sid:04}")).await;
            assert_eq!(status, 200, "{body}: {twiml}");
            *answers.entry(kind).or_insert(0usize) += usize::from(twiml.contains("<Message>"));
            said.push((kind, t, body));
        }
    }
    // A storm: the first revoker in words says it twice more (new messages): no second confirmation.
    let repeat = said.iter().find(|(k, _, _)| *k == "words").unwrap().1.clone();
    for i in 0..2 {
        let (status, twiml) = server.reply(&repeat, &number, "Stop texting me please", &format!("SMstorm{i}")).await;
        assert_eq!(status, 200);
        *answers.entry("storm").or_insert(0usize) += usize::from(twiml.contains("<Message>"));
    }
    // The tenant who phoned the office.
    let phoned = tenant.next().unwrap().clone();
    let (s, r) = server
        .call(
            "POST",
            "/v1/customers/acme/opt-outs",
            Some(json!({"phone": phoned, "source": "phone call to the office", "note": "spoke to Dana"})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    println!("confirmations in the webhook answers: {answers:?}");
    assert_eq!(answers.get("keyword"), Some(&0), "Twilio confirms its own keywords");
    assert_eq!(answers.get("words"), Some(&words.len()), "one confirmation per revocation in words");
    assert_eq!(answers.get("suspected"), Some(&0));
    assert_eq!(answers.get("ordinary"), Some(&0));
    assert_eq!(answers.get("storm"), Some(&0), "a repeat gets no second confirmation");

    // The review queue holds the three suspected replies, each with its deadline.
    let (s, reviews) = server.call("GET", "/v1/customers/acme/reviews", None).await;
    assert_eq!(s, 200);
    let under_review: HashSet<String> =
        reviews.as_array().unwrap().iter().map(|r| r["phone"].as_str().unwrap().to_owned()).collect();
    println!("under review: {} ({})", under_review.len(), reviews[0]["deadline"]);
    assert_eq!(under_review.len(), suspected.len());

    // The second batch.
    let sent_before = per_recipient(&w.state());
    let second = batch(&server, &to, "Inspection Thursday. Reply STOP to opt out.").await;
    let revokers: HashSet<String> = said
        .iter()
        .filter(|(k, _, _)| *k == "keyword" || *k == "words")
        .map(|(_, t, _)| t.clone())
        .chain([phoned.clone()])
        .collect();
    let expected_texted = to.len() - revokers.len() - under_review.len();
    let status = wait_until(Duration::from_secs(60), "the second batch to settle", || async {
        let st = w.status(&second).await;
        (st.sent as usize == expected_texted && st.held_for_review as usize == under_review.len()).then_some(st)
    })
    .await;
    let after = per_recipient(&w.state());
    let texted: HashSet<&String> = to.iter().filter(|t| after.get(*t) > sent_before.get(*t)).collect();
    println!(
        "second batch: sent {}, opted out {}, held for review {}; texted revokers {}, texted under review {}",
        status.sent,
        status.opted_out,
        status.held_for_review,
        texted.iter().filter(|t| revokers.contains(**t)).count(),
        texted.iter().filter(|t| under_review.contains(**t)).count()
    );
    assert_eq!(status.opted_out as usize, revokers.len());
    assert!(texted.iter().all(|t| !revokers.contains(*t) && !under_review.contains(*t)));
    assert!(to.iter().all(|t| after.get(t).copied().unwrap_or(0) - sent_before.get(t).copied().unwrap_or(0) <= 1));

    // A person decides: one dismissed (its held text goes, once), one confirmed (it ends opted out).
    // The reviews in the order the API and the dashboard list them (nearest deadline first).
    let (_, listed) = server.call("GET", "/v1/customers/acme/reviews", None).await;
    let order: Vec<String> =
        listed.as_array().unwrap().iter().map(|r| r["phone"].as_str().unwrap().to_owned()).collect();
    let (dismissed, confirmed) = (order[0].clone(), order[1].clone());
    let (s, e) = server
        .call("POST", &format!("/v1/customers/acme/reviews/{dismissed}"), Some(json!({"decision": "dismiss"})))
        .await;
    assert_eq!((s, &e["error"]["field"]), (422, &json!("note")), "a dismissal needs a note: {e}");
    // The dismissal from the dashboard's Consent page, as support staff make it (the form carries a reference, never
    // the number).
    let staff = harness::dashboard::login(&server.base, ADMIN).await;
    let (status, _, page) = staff.get("/dashboard/consent/acme").await;
    assert_eq!(status, 200);
    assert!(page.contains("Replies under review (3)"), "{page}");
    assert!(page.contains(&dismissed), "an admin sees the full numbers");
    assert!(!page.contains(&format!("value=\"{dismissed}\"")), "a form carries the number");
    let refs: Vec<&str> = page.split("name=\"ref\" value=\"").skip(1).map(|r| &r[..r.find('"').unwrap()]).collect();
    assert_eq!(refs.len(), 3);
    let (s, body) = staff
        .post(
            "/dashboard/consent/acme/review",
            &[("ref", refs[0]), ("decision", "dismiss"), ("note", "about the noise upstairs")],
            true,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let done = body.contains("review dismissed").then_some(body);
    let body = done.expect("dismissed from the dashboard");
    assert!(body.contains("1 held text(s) released"), "{body}");
    let r = json!({"held_released": 1});
    let (s, r2) = server
        .call(
            "POST",
            &format!("/v1/customers/acme/reviews/{confirmed}"),
            Some(json!({"decision": "confirm", "note": "called back: wants no texts"})),
        )
        .await;
    assert_eq!(s, 200, "{r2}");
    let st = wait_until(Duration::from_secs(30), "the released texts to settle", || async {
        let st = w.status(&second).await;
        (st.held_for_review as usize == under_review.len() - 2 && st.sent as usize == expected_texted + 1).then_some(st)
    })
    .await;
    let last = per_recipient(&w.state());
    println!(
        "dismissed: {} released, texted {}; confirmed: {} released, texted {}; batch: sent {}, opted out {}, held {}",
        r["held_released"],
        last.get(&dismissed).unwrap_or(&0) - sent_before.get(&dismissed).unwrap_or(&0),
        r2["held_released"],
        last.get(&confirmed).unwrap_or(&0) - sent_before.get(&confirmed).unwrap_or(&0),
        st.sent,
        st.opted_out,
        st.held_for_review
    );
    assert_eq!(last.get(&dismissed).unwrap_or(&0) - sent_before.get(&dismissed).unwrap_or(&0), 1);
    assert_eq!(last.get(&confirmed), sent_before.get(&confirmed), "a confirmed revoker was texted");
    assert_eq!(st.opted_out as usize, revokers.len() + 1);

    // The third review nobody decides: past its deadline (moved into the past here; it is 10 business days), the held
    // text comes up and the revocation it may have been is honoured.
    let undecided = order[2].clone();
    let mut conn = w.redis.sync_conn();
    let stored: String = redis::cmd("HGET").arg("{c:acme}:review").arg(&undecided).query(&mut conn).unwrap();
    let mut review: Value = serde_json::from_str(&stored).unwrap();
    review["deadline_ms"] = json!(1_000);
    let _: () =
        redis::cmd("HSET").arg("{c:acme}:review").arg(&undecided).arg(review.to_string()).query(&mut conn).unwrap();
    let held: Vec<String> =
        redis::cmd("SMEMBERS").arg(format!("{{c:acme}}:held:{undecided}")).query(&mut conn).unwrap();
    for job in &held {
        let _: () = redis::cmd("ZADD").arg("{c:acme}:sched").arg("XX").arg(0).arg(job).query(&mut conn).unwrap();
    }
    let st = wait_until(Duration::from_secs(30), "the overdue review to be honoured", || async {
        let st = w.status(&second).await;
        (st.held_for_review == 0).then_some(st)
    })
    .await;
    let (_, rec) = server.call("GET", &format!("/v1/customers/acme/opt-outs/{undecided}"), None).await;
    let last = rec["history"].as_array().unwrap().last().unwrap().clone();
    println!(
        "an overdue review: batch opted out {}, held {}; the record: {} via {}",
        st.opted_out, st.held_for_review, last["kind"], last["via"]
    );
    assert_eq!((last["kind"].as_str(), last["via"].as_str()), (Some("opt_out"), Some("review_deadline")));
    assert_eq!(rec["opted_out"], true);
    assert_eq!(st.opted_out as usize, revokers.len() + 2);
    assert_eq!(
        per_recipient(&w.state()).get(&undecided),
        sent_before.get(&undecided),
        "an overdue review's tenant was texted"
    );

    // The record: the words, how they were read, when, and the texts around the change.
    let revoker_in_words = said.iter().find(|(k, _, _)| *k == "words").unwrap();
    let (s, rec) = server.call("GET", &format!("/v1/customers/acme/opt-outs/{}", revoker_in_words.1), None).await;
    assert_eq!(s, 200);
    let change = &rec["history"][0];
    println!("record of a revoker in words: {change}");
    assert_eq!((change["kind"].as_str(), change["via"].as_str()), (Some("opt_out"), Some("words")));
    assert_eq!(change["keyword"], *revoker_in_words.2);
    assert!(
        change["rule"].as_str().unwrap().starts_with("phrase: ")
            || change["rule"].as_str().unwrap().starts_with("keyword: ")
    );
    assert!(change["last_text_before"]["at"].is_string(), "{change}");
    assert!(change.get("first_text_after").is_none(), "texted after the opt-out: {change}");
    let (_, phoned_rec) = server.call("GET", &format!("/v1/customers/acme/opt-outs/{phoned}"), None).await;
    assert_eq!(phoned_rec["history"][0]["source"], "phone call to the office");
    let (_, confirmed_rec) = server.call("GET", &format!("/v1/customers/acme/opt-outs/{confirmed}"), None).await;
    let kinds: Vec<&str> =
        confirmed_rec["history"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["suspected", "opt_out"], "{confirmed_rec}");

    // The events an app receives: `via` and the words; the suspected ones.
    let (_, page) = server.call("GET", "/v1/customers/acme/events?limit=1000", None).await;
    let by_type =
        |t: &str| page["events"].as_array().unwrap().iter().filter(|e| e["type"] == t).cloned().collect::<Vec<_>>();
    let vias: BTreeMap<String, usize> = by_type("recipient.opted_out").iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e["data"]["via"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
        m
    });
    println!(
        "recipient.opted_out by via: {vias:?}; recipient.revocation_suspected: {}",
        by_type("recipient.revocation_suspected").len()
    );
    assert_eq!(vias.get("keyword"), Some(&keywords.len()));
    assert_eq!(vias.get("words"), Some(&words.len()));
    assert_eq!(vias.get("api"), Some(&1));
    assert_eq!(vias.get("review"), Some(&1));
    assert_eq!(by_type("recipient.revocation_suspected").len(), suspected.len());
    drop(server.proc);
}

/// Acceptance 3: a revocation in words arrives while a 5,000-recipient batch is being sent by two worker processes:
/// after the webhook's 200, the simulator receives no text for that tenant (by its own clock), in 5 of 5 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_text_reaches_a_tenant_after_their_revocation_is_answered() {
    let mut w = World::start(SimConfig { send_latency_ms: 20, ..SimConfig::default() }).await;
    // 25,000 texts over five runs: numbers of 5,000 a window, so capacity never holds a run back.
    w.env = w.env.clone().set("MESSENGER_DAILY_QUOTA", 5_000).set("MESSENGER_CONVERSATIONAL_CAP", 5_000);
    let server = Server::start(&mut w).await;
    let (s, c) = server.call("PUT", "/v1/customers/acme", Some(json!({"max_numbers": 10}))).await;
    assert_eq!(s, 201, "{c}");
    let _workers = [w.worker(64), w.worker(64)];
    let mut runs = Vec::new();
    for run in 0..5 {
        let to = recipients(5_000, 100_000 + run * 10_000);
        let start = w.state().messages.len();
        let id = batch(&server, &to, "Fire alarm test Friday at 10.").await;
        // Wait until sending is under way, then revoke for a tenant just ahead of it: its text is queued, about to
        // be fetched, or on its way.
        let at = wait_until(Duration::from_secs(60), "sending under way", || async {
            let n = w.state().messages.len() - start;
            (n >= 1_000 + run * 500).then_some(n)
        })
        .await;
        // A tenant a little further ahead each run: from "being sent now" to "still queued".
        let ahead = [40, 120, 250, 400, 700][run];
        let tenant = to[(at + ahead).min(to.len() - 1)].clone();
        let number = a_pool_number(&w, "acme").await;
        let asked = chrono::Utc::now();
        let (status, _) = server.reply(&tenant, &number, "please stop texting me", &format!("SMrace{run}")).await;
        let answered = chrono::Utc::now();
        assert_eq!(status, 200);
        w.wait_complete(&id, Duration::from_secs(120)).await;
        let state = w.state();
        let to_tenant: Vec<_> = state.messages.iter().filter(|m| m.to == tenant).collect();
        let after: Vec<_> = to_tenant.iter().filter(|m| m.date_created > answered).collect();
        let while_answering = to_tenant.iter().filter(|m| m.date_created > asked && m.date_created <= answered).count();
        println!(
            "run {}: revoked at text {} of 5000 for the tenant {ahead} ahead; texted {} time(s) before the 200 ({} while \
             the webhook was being answered: a send already on its way) and {} after; the 200 took {} ms",
            run + 1,
            at,
            to_tenant.len() - after.len(),
            while_answering,
            after.len(),
            (answered - asked).num_milliseconds()
        );
        runs.push(after.len());
    }
    assert_eq!(runs, [0; 5], "texts after the revocation was answered");
}

/// Acceptance 5 (import, export) and 6 (bad input): a 100,000-row suppression list is imported (timed) and a
/// re-import changes nothing; a list with one bad row changes nothing and names the row; an opt-in after an opt-out
/// needs evidence; bad phone, a time in the future, an empty source: named, nothing changed (API and CLI alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppression_lists_import_once_and_bad_input_changes_nothing() {
    let mut w = World::start(SimConfig::default()).await;
    let server = Server::start(&mut w).await;
    w.producer_ok(&["customer", "add", "acme"]).await;
    let list: String = std::iter::once("phone,note,at\n".to_owned())
        .chain(recipients(100_000, 0).iter().map(|r| format!("{r},from the old system,2025-06-01T12:00:00Z\n")))
        .collect();
    let path = std::env::temp_dir().join(format!("messenger-suppression-{}.csv", ulid::Ulid::new()));
    std::fs::write(&path, &list).unwrap();
    let file = path.display().to_string();
    let started = Instant::now();
    let out = w.producer_ok(&["consent", "import", "acme", &file, "--source", "old system, 2026-11", "--json"]).await;
    let took = started.elapsed();
    let r: Value = serde_json::from_str(&out).unwrap();
    println!("import of 100,000 rows: {:.1?}: {r}", took);
    assert_eq!((r["rows"].as_u64(), r["opted_out_now"].as_u64()), (Some(100_000), Some(100_000)));
    let digest = w.redis.digest();
    let again: Value = serde_json::from_str(
        &w.producer_ok(&["consent", "import", "acme", &file, "--source", "old system, 2026-11", "--json"]).await,
    )
    .unwrap();
    println!("re-import: {again}; digest unchanged: {}", w.redis.digest() == digest);
    assert_eq!((again["opted_out_now"].as_u64(), again["already_opted_out"].as_u64()), (Some(0), Some(100_000)));
    assert_eq!(w.redis.digest(), digest, "a re-import changed something");

    // One bad row among good ones: nothing applied, the row named.
    let fresh = recipients(3, 200_000);
    let bad = format!("phone\n{}\n{}\n415-555-01x\n{}\n", fresh[0], fresh[1], fresh[2]);
    std::fs::write(&path, &bad).unwrap();
    let out = w.producer(&["consent", "import", "acme", &file, "--source", "x"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("a list with one bad row: exit {:?}: {}", out.status.code(), err.trim());
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("line 4"), "{err}");
    let _ = std::fs::remove_file(&path);
    assert_eq!(w.redis.digest(), digest);

    // Bad input over the API and the CLI: named, nothing changed.
    let t = recipients(1, 300_000)[0].clone();
    for (body, field) in [
        (json!({"phone": "not a number", "source": "call"}), "phone"),
        (json!({"phone": t, "source": "call", "at": "2099-01-01T00:00:00Z"}), "at"),
        (json!({"phone": t, "source": "  "}), "source"),
        (json!({"phone": t, "source": "call", "at": "yesterday"}), "at"),
    ] {
        let (s, e) = server.call("POST", "/v1/customers/acme/opt-outs", Some(body.clone())).await;
        println!("POST opt-outs {body}: {s} {}", e["error"]["message"]);
        assert_eq!((s, &e["error"]["field"]), (422, &json!(field)), "{e}");
    }
    let out = w
        .producer(&["consent", "opt-out", "acme", "--phone", &t, "--source", "call", "--at", "2099-01-01T00:00:00Z"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--at"), "{}", String::from_utf8_lossy(&out.stderr));
    let (s, e) = server
        .call("POST", "/v1/customers/acme/reviews/+14155550123", Some(json!({"decision": "maybe", "note": "x"})))
        .await;
    assert_eq!((s, &e["error"]["field"]), (422, &json!("decision")));
    assert_eq!(w.redis.digest(), digest, "bad input changed something");

    // An opt-in after an opt-out needs evidence.
    let opted = recipients(1, 0)[0].clone();
    let (s, e) = server
        .call(
            "POST",
            "/v1/customers/acme/opt-ins",
            Some(json!({"phone": opted, "source": "lease", "at": "2026-11-01T10:00:00Z"})),
        )
        .await;
    assert_eq!((s, &e["error"]["field"]), (409, &json!("evidence")), "{e}");
    assert_eq!(w.redis.digest(), digest);
    let (s, r) = server
        .call("POST", "/v1/customers/acme/opt-ins", Some(json!({"phone": opted, "source": "lease renewal", "evidence": "lease #4471, clause 12", "at": "2026-11-01T10:00:00Z"})))
        .await;
    assert_eq!(s, 200, "{r}");

    // The export, for an audit.
    let resp = harness::http()
        .get(format!("{}/v1/customers/acme/opt-outs?format=csv", server.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let csv = resp.text().await.unwrap();
    let lines = csv.lines().count();
    println!("export: {} lines; first: {}", lines, csv.lines().nth(1).unwrap_or(""));
    assert_eq!(lines, 1 + 100_000 + 1, "a header, one line per opt-out, and the opt-in");
}

/// A reply posted as Twilio posts it, with the idempotency token of its delivery (a retry carries the same one).
async fn reply_as_delivery(server: &Server, from: &str, to: &str, body: &str, sid: &str, token: &str) -> u16 {
    let params = common::inbound_params(from, to, body, sid);
    let url = format!("{}/twilio/inbound", server.base);
    let signature = shared::twilio::signature::compute(sim::DEFAULT_AUTH_TOKEN, &url, &params);
    let r = harness::http()
        .post(&url)
        .header("X-Twilio-Signature", signature)
        .header("I-Twilio-Idempotency-Token", token)
        .form(&params)
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

/// Acceptance 4: on a cluster of 3 primaries with a replica each, at the recommended acknowledgements (1), a
/// revocation in words answered 200 survives the loss of its primary right after (killed -9 before anything else is
/// written; its replica takes over): the tenant is still opted out, in 5 of 5 runs. With the replica unreachable
/// (paused), the webhook is answered 503 and changes nothing Twilio could rely on; Twilio's retry (the same delivery)
/// lands it once the replica is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_answered_200_survives_a_failover() {
    let mut w = World::start_cluster(SimConfig::default()).await;
    w.env = w.env.clone().set("MESSENGER_REDIS_REPLICA_ACKS", 1);
    let server = Server::start(&mut w).await;
    let (s, c) = server.call("PUT", "/v1/customers/acme", Some(json!({"max_numbers": 1}))).await;
    assert_eq!(s, 201, "{c}");
    let to = recipients(6, 0);
    {
        let _worker = w.worker(4);
        let b = batch(&server, &to, "Water off Tuesday. Reply STOP to opt out.").await;
        w.wait_complete(&b, Duration::from_secs(60)).await;
    }
    let number = a_pool_number(&w, "acme").await;
    let optout = "{c:acme}:optout";
    let mut survived = Vec::new();
    for (run, tenant) in to.iter().take(5).enumerate() {
        let status = reply_as_delivery(
            &server,
            tenant,
            &number,
            "no more texts please",
            &format!("SMfo{run}"),
            &format!("idem-fo-{run}"),
        )
        .await;
        assert_eq!(status, 200, "run {run}");
        // At once: the primary of the customer's slot dies before anything else is written. (What its replica held
        // at that moment is read first, straight from the replica: if the opt-out were ever lost, this says whether
        // the replica had it.)
        let victim = w.redis.primary_of(optout);
        let on_replica: Vec<(u16, bool)> = w
            .redis
            .replicas_of(victim)
            .into_iter()
            .map(|r| {
                let mut c =
                    redis::Client::open(format!("redis://{}", w.redis.addr(r))).unwrap().get_connection().unwrap();
                let _: () = redis::cmd("READONLY").query(&mut c).unwrap();
                (r, redis::cmd("SISMEMBER").arg(optout).arg(tenant).query(&mut c).unwrap())
            })
            .collect();
        w.redis.kill(victim);
        // Blocking waits, off the async workers (the simulator runs on them).
        let took = tokio::task::block_in_place(|| w.redis.wait_failover(victim, Duration::from_secs(30)));
        let still: bool =
            redis::cmd("SISMEMBER").arg(optout).arg(tenant).query_async(&mut w.redis.conn().await).await.unwrap();
        let now_primary = w.redis.primary_of(optout);
        println!(
            "run {}: revocation answered 200; on the replica before the kill: {on_replica:?}; primary {victim} killed; \
             failover {:.1}s to {now_primary}; still opted out: {still}",
            run + 1,
            took.as_secs_f64()
        );
        survived.push(still);
        // The old primary comes back, and the next run starts once it is the new primary's replica again, in sync
        // (a shard without a replica goes on unconfirmed, by design: that is not what this test is about).
        w.redis.restart(victim);
        let primary = w.redis.primary_of(optout);
        tokio::task::block_in_place(|| {
            w.redis.wait_healthy(Duration::from_secs(60));
            let deadline = Instant::now() + Duration::from_secs(60);
            let in_sync = |w: &World<harness::redis_cluster::TestCluster>| {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(
                        &mut redis::Client::open(format!("redis://{}", w.redis.addr(primary)))
                            .unwrap()
                            .get_connection()
                            .unwrap(),
                    )
                    .unwrap_or_default();
                info.lines().any(|l| l.starts_with("slave0:") && l.contains(&format!("port={victim},state=online")))
            };
            while !in_sync(&w) {
                assert!(Instant::now() < deadline, "{victim} did not rejoin as {primary}'s replica");
                std::thread::sleep(Duration::from_millis(100));
            }
            w.redis.wait_healthy(Duration::from_secs(60));
        });
    }
    assert_eq!(survived, [true; 5]);

    // The replica unreachable: 503, and Twilio's retry (same delivery) lands it once the replica is back.
    let tenant = &to[5];
    let primary = w.redis.primary_of(optout);
    let replica = w.redis.replicas_of(primary)[0];
    w.redis.pause(replica, true);
    let first = reply_as_delivery(&server, tenant, &number, "take me off this list", "SMpaused", "idem-paused").await;
    w.redis.pause(replica, false);
    let retried = wait_until(Duration::from_secs(30), "Twilio's retry to be answered 200", || async {
        let s = reply_as_delivery(&server, tenant, &number, "take me off this list", "SMpaused", "idem-paused").await;
        (s == 200).then_some(s)
    })
    .await;
    let out: bool =
        redis::cmd("SISMEMBER").arg(optout).arg(tenant).query_async(&mut w.redis.conn().await).await.unwrap();
    println!("replica paused: the webhook answered {first}; Twilio's retry {retried}; opted out: {out}");
    assert_eq!(first, 503);
    assert!(out);
}
