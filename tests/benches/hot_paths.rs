//! Micro-benchmarks of the hot paths: pure functions run per message or per request, and the Redis scripts every
//! send goes through (against a private redis-server, one round trip at a time).
//!
//! `cargo bench -p messenger-tests --bench hot_paths`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use harness::redis_server::TestRedis;
use shared::batches::{self, NewBatch};
use shared::config::QuotaSettings;
use shared::customers::{self, Customer};
use shared::domain::{BatchId, CustomerId, MessageBody, PhoneNumber, count_segments};
use shared::keys::{self, CustomerKeys};
use shared::ledger::{Ledger, Reserve, ReserveMode, Rules};
use shared::purchase::{self, Bought};
use shared::twilio::signature;

fn pure(c: &mut Criterion) {
    let gsm = "Building 4: the water will be off Tuesday 9-11am for repairs. Reply STOP to opt out.";
    let ucs = "Bâtiment 4 : l’eau sera coupée mardi de 9 h à 11 h 🚰. Répondez STOP pour vous désabonner.";
    c.bench_function("segments/gsm7 85 chars", |b| b.iter(|| count_segments(std::hint::black_box(gsm))));
    c.bench_function("segments/ucs2 90 chars", |b| b.iter(|| count_segments(std::hint::black_box(ucs))));
    let long = gsm.repeat(18);
    c.bench_function("segments/gsm7 1530 chars", |b| b.iter(|| count_segments(std::hint::black_box(&long))));
    c.bench_function("phone/parse E.164", |b| {
        b.iter(|| PhoneNumber::parse(std::hint::black_box("+14155552671")).unwrap())
    });
    // An inbound webhook as Twilio posts it (13 parameters), checked over the URL with and without its port.
    let url = "https://messenger.example.com/twilio/inbound";
    let params: Vec<(String, String)> = [
        ("AccountSid", "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
        ("ApiVersion", "2010-04-01"),
        ("Body", "STOP"),
        ("From", "+14155552671"),
        ("FromCountry", "US"),
        ("MessageSid", "SMXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
        ("MessagingServiceSid", ""),
        ("NumMedia", "0"),
        ("NumSegments", "1"),
        ("SmsMessageSid", "SMXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
        ("SmsSid", "SMXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
        ("SmsStatus", "received"),
        ("To", "+15005550006"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let token = "12345";
    let header = signature::compute(token, url, &params);
    c.bench_function("signature/validate inbound webhook", |b| {
        b.iter(|| assert!(signature::validate(token, std::hint::black_box(url), &params, &header)))
    });
    let customer = CustomerId::parse("acme-properties").unwrap();
    let batch = BatchId::new(&customer);
    c.bench_function("keys/customer keys for one job", |b| {
        b.iter(|| {
            let k = CustomerKeys::new(std::hint::black_box(&customer));
            (
                k.batch(&batch),
                k.batch_state(&batch),
                k.inflight(),
                k.unsent(),
                keys::job_member(&batch, "+14155552671", None),
            )
        })
    });
}

/// The per-message scripts against a real Redis: reserve (fast path) and commit, one call at a time.
fn scripts(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = TestRedis::start();
    let n = 200_000;
    let (ledger, jobs) = rt.block_on(async {
        let mut conn = redis.conn().await;
        let id = CustomerId::parse("bench").unwrap();
        customers::upsert(&mut conn, &Customer::new(id.clone(), 2000)).await.unwrap();
        // Plenty of numbers with a large quota, so the benchmark measures the fast path, not purchases.
        for i in 0..4 {
            let b = Bought { number: format!("+1415200{i:04}"), sid: format!("PN{i}") };
            purchase::commit_number(&mut conn, &id, &b, "").await.unwrap();
        }
        let to: Vec<PhoneNumber> =
            harness::fixtures::recipients(n, 0).iter().map(|r| PhoneNumber::parse(r).unwrap()).collect();
        let req = NewBatch::plain(id.clone(), MessageBody::parse("bench").unwrap(), to);
        batches::submit(&mut conn, &req, Duration::from_secs(3600), 1000, None, None).await.unwrap();
        let quota = QuotaSettings {
            window: Duration::from_secs(86_400),
            daily_quota: 1_000_000,
            conversational_cap: 1_000_000,
        };
        let ledger = Ledger::new(conn, quota, Duration::from_secs(3600));
        let mut jobs = Vec::new();
        while jobs.len() < n {
            let f = ledger.fetch(&id, 1000, Duration::from_secs(3600)).await.unwrap();
            if f.jobs.is_empty() {
                break;
            }
            jobs.extend(f.jobs);
        }
        (ledger, jobs)
    });
    let mut i = 0;
    let mut g = c.benchmark_group("redis");
    g.sample_size(20);
    g.bench_function("reserve + commit round trips (one message)", |b| {
        b.iter(|| {
            let job = &jobs[i % jobs.len()];
            i += 1;
            rt.block_on(async {
                if let Reserve::Reserved(_) =
                    ledger.reserve(job, ReserveMode::Fast, None, &Rules::default()).await.unwrap()
                {
                    ledger.commit_sent(job, "SMbench", "+14152000000", None).await.unwrap();
                }
            })
        })
    });
    let mut conn = rt.block_on(redis.conn());
    g.bench_function("PING round trip (for scale)", |b| {
        b.iter(|| rt.block_on(async { redis::cmd("PING").query_async::<String>(&mut conn).await.unwrap() }))
    });
    g.finish();
}

criterion_group!(benches, pure, scripts);
criterion_main!(benches);
