//! The worker process: wiring, supervision and graceful shutdown.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis::prelude::*;
use redis::AsyncCommands;
use shared::config::ConfigError;
use shared::keys;
use shared::ledger::Ledger;
use shared::store;
use shared::twilio::TwilioClient;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::backend::{Inbox, QueueBackend, release};
use crate::context::Shared;
use crate::fetcher::{Fetcher, listen_for_wakes};
use crate::handler::handle;
use crate::leases::Registry;
use crate::ops;
use crate::purchase::Purchases;
use crate::reconciler;
use crate::send::Sender;
use crate::settings::WorkerSettings;
use crate::stats::{Health, Stats};

/// Connections a worker keeps for the calls it follows with `WAIT` (each `WAIT` holds its connection until the
/// replicas answer: 8 let 8 of them wait at once).
const ACKED_CONNECTIONS: usize = 8;

/// A unique name per process and per restart: apalis and operators tell workers apart by it, and reusing a name
/// is what makes apalis-redis fleets lose orphaned jobs.
pub fn worker_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("worker-{host}-{}-{}", std::process::id(), ulid::Ulid::new().to_string().to_ascii_lowercase())
}

/// Runs a worker until `shutdown` resolves, then drains: stop fetching, hand back unstarted jobs, let in-flight
/// sends finish (up to the shutdown timeout). Returns an error only for configuration problems; Redis outages are
/// waited out.
pub async fn run(settings: WorkerSettings, shutdown: impl Future<Output = ()>) -> Result<(), ConfigError> {
    let settings = Arc::new(settings);
    tokio::pin!(shutdown);
    let name = worker_name();
    tracing::info!(worker = %name, concurrency = settings.concurrency, "worker starting");
    let health = Arc::new(Health::default());
    let stats = Stats::default();
    let registry = Registry::new(settings.lease);
    if let Some(addr) = settings.listen {
        // Before connecting, so a probe sees "no reply from Redis yet" while Redis is down at start.
        let acks = settings.shared.redis.acks.clone();
        let endpoint =
            ops::Endpoint { stale: settings.lease, concurrency: settings.concurrency, worker: name.clone(), acks };
        ops::serve(addr, &stats, health.clone(), registry.clone(), endpoint).await?;
    }

    // Connect, waiting out a Redis that is not up yet, then check the fleet's quota settings.
    let mut delay = Duration::from_millis(200);
    let mut conn = loop {
        let attempt = async {
            let redis = &settings.shared.redis;
            let mut c = store::connect(redis).await.map_err(|e| match store::config_problem(&e, redis) {
                Some(problem) => anyhow::Error::from(ConfigError(problem)),
                None => anyhow::Error::from(e),
            })?;
            store::ensure_fleet_settings(&mut c, &settings.shared.quota, false).await.map_err(|e| {
                match e.downcast::<redis::RedisError>() {
                    Ok(r) => anyhow::Error::from(r),
                    Err(other) => anyhow::Error::from(ConfigError(other.to_string())),
                }
            })?;
            Ok::<_, anyhow::Error>(c)
        };
        tokio::select! {
            r = attempt => match r {
                Ok(c) => {
                    health.redis_replied();
                    break c;
                }
                Err(e) => match e.downcast::<ConfigError>() {
                    Ok(config) => return Err(config),
                    Err(e) => {
                        let redis = &settings.shared.redis;
                        let target = if redis.cluster_nodes.is_empty() {
                            shared::config::without_credentials(secrecy::ExposeSecret::expose_secret(&redis.url))
                        } else {
                            format!("cluster seeds {}", shared::store::describe_seeds(redis))
                        };
                        health.connect_failed(format!("{target}: {e}"));
                        tracing::warn!(error.message = %e, "redis not reachable; retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            },
            _ = &mut shutdown => return Ok(()),
        }
    };
    // Replica acknowledgements block the connection their WAIT runs on: they get connections of their own.
    let acked = match &settings.shared.redis.acks {
        Some(_) => loop {
            match store::connect_many(&settings.shared.redis, ACKED_CONNECTIONS).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error.message = %e, "redis not reachable for the acknowledged connections; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = &mut shutdown => return Ok(()),
                    }
                }
            }
        },
        None => Vec::new(),
    };
    let ledger = Ledger::new(conn.clone(), settings.shared.quota, settings.shared.batch_retention)
        .with_orphan_after(settings.shared.twilio.timeout + Duration::from_secs(5))
        .with_acks(settings.shared.redis.acks.clone(), acked)
        .with_wait_counter(health.wait_timeouts.clone());
    let twilio = TwilioClient::new(&settings.shared.twilio)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (final_tx, final_rx) = watch::channel(false);
    let (wake_tx, wake_rx) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let (tx, rx) = mpsc::channel(settings.concurrency);
    let inbox: Inbox = Arc::new(Mutex::new(rx));
    let shared =
        Arc::new(Shared::new(ledger.clone(), twilio, settings.clone(), stats, wake_tx.clone(), stop_rx.clone()));
    let purchases = Purchases::new(shared.clone());
    let sender = Arc::new(Sender::new(shared.clone(), purchases.clone()));

    let fetcher = tokio::spawn(
        Fetcher {
            ledger: ledger.clone(),
            settings: settings.clone(),
            registry: registry.clone(),
            slots,
            tx,
            wake: wake_rx,
            stop: stop_rx.clone(),
            health: health.clone(),
        }
        .run(),
    );
    let pool_watch = purchases.clone();
    tokio::spawn(listen_for_wakes(settings.clone(), wake_tx, move |c| pool_watch.pool_changed(&c), stop_rx.clone()));
    // Leases must stay renewed while in-flight sends drain, so the heartbeat stops last.
    let heartbeat = tokio::spawn(heartbeat(
        ledger.clone(),
        registry.clone(),
        health.clone(),
        settings.lease,
        name.clone(),
        final_rx.clone(),
    ));
    tokio::spawn(reconciler::run(shared.clone(), purchases.clone(), stop_rx.clone()));
    if conn.is_cluster() {
        let acks = settings.shared.redis.acks.clone();
        tokio::spawn(watch_cluster(conn.clone(), health.clone(), acks, stop_rx.clone()));
    }
    let stats_flusher = tokio::spawn(flush_stats(shared.clone(), name.clone(), final_rx.clone()));
    // The apalis worker runs on this task (its future is not `Send` for every lifetime, so it is not spawned).
    let supervisor = supervise(sender, shared.clone(), inbox.clone(), ledger.clone(), stop_rx.clone(), name.clone());
    tokio::pin!(supervisor);
    tokio::select! {
        _ = &mut supervisor => tracing::error!("supervisor ended unexpectedly"),
        _ = &mut shutdown => {}
    }
    tracing::info!(worker = %name, in_flight = registry.len(), "shutting down: no new jobs; waiting for in-flight sends");
    health.stopping();
    let _ = stop_tx.send(true);
    let _ = fetcher.await;
    match tokio::time::timeout(settings.shutdown_timeout, &mut supervisor).await {
        Ok(_) => tracing::info!("in-flight sends finished"),
        Err(_) => tracing::warn!(
            in_flight = registry.len(),
            "shutdown timeout: exiting with sends in flight; their leases expire and other workers resolve them"
        ),
    }
    // Anything still buffered (if the drain timed out) goes back to the queue now rather than at lease expiry.
    let leftover: Vec<_> = {
        let mut rx = inbox.lock().unwrap();
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    };
    if !leftover.is_empty() {
        release(ledger.clone(), leftover).await;
    }
    let _ = final_tx.send(true);
    let _ = heartbeat.await;
    let _ = stats_flusher.await;
    let _: redis::RedisResult<()> = conn.zrem(keys::WORKERS, &name).await;
    let s = &shared.stats;
    tracing::info!(
        sent = s.sent.get(),
        failed = s.failed.get(),
        retried = s.retried.get(),
        deferred = s.deferred.get(),
        purchases = s.purchases.get(),
        ambiguous = s.ambiguous.get(),
        "worker stopped"
    );
    Ok(())
}

/// Runs the apalis worker; if it ever ends while we are not shutting down, starts a new one under a new name.
async fn supervise(
    sender: Arc<Sender>,
    shared: Arc<Shared>,
    inbox: Inbox,
    ledger: Ledger,
    stop: watch::Receiver<bool>,
    first_name: String,
) {
    let mut name = first_name;
    let mut chaos = shared.settings.chaos_end_worker;
    loop {
        let mut backend = QueueBackend::new(inbox.clone(), ledger.clone());
        if let Some(after) = chaos.take() {
            backend = backend.ending_after(after);
        }
        let context = apalis_core::worker::context::WorkerContext::from(name.as_str());
        let worker = WorkerBuilder::new(&context)
            .backend(backend)
            .data(sender.clone())
            .catch_panic()
            .concurrency(shared.settings.concurrency)
            .parallelize(tokio::spawn)
            .build(handle);
        // Not apalis's `run_until`: it waits for the shutdown signal even after the worker has ended, which would
        // leave a process that looks alive and does nothing. Race the two instead.
        let run = worker.run();
        tokio::pin!(run);
        let mut s = stop.clone();
        let result = tokio::select! {
            r = &mut run => r,
            _ = s.wait_for(|&stopping| stopping) => {
                let _ = context.stop();
                run.await
            }
        };
        if *stop.borrow() {
            return;
        }
        match result {
            Ok(()) => {
                tracing::error!(worker = %name, "apalis worker ended unexpectedly; restarting under a new name")
            }
            Err(e) => {
                tracing::error!(worker = %name, error.message = %e, "apalis worker died; restarting under a new name")
            }
        }
        shared.stats.apalis_restarts.inc();
        tokio::time::sleep(Duration::from_secs(1)).await;
        name = worker_name();
    }
}

/// Every two seconds, adds what this process did since the last time (sends, failures and purchases, in total and
/// per customer) to the fleet's per-minute statistics, and records its totals: the dashboard's chart and fleet list.
async fn flush_stats(shared: Arc<Shared>, name: String, mut stop: watch::Receiver<bool>) {
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let mut conn = shared.ledger.conn();
    let mut pending: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            _ = stop.changed() => true,
        };
        let mut totals = [0u64; 3];
        for (customer, counts) in shared.stats.take_tally() {
            for (i, n) in counts.into_iter().enumerate().filter(|(_, n)| *n > 0) {
                totals[i] += n;
                *pending.entry(format!("{}:{customer}", crate::stats::Tally::NAMES[i])).or_default() += n;
            }
        }
        for (i, n) in totals.into_iter().enumerate().filter(|(_, n)| *n > 0) {
            *pending.entry(crate::stats::Tally::NAMES[i].to_owned()).or_default() += n;
        }
        let s = &shared.stats;
        let line =
            format!("{}|{}|{}|{}|{started}", s.sent.get(), s.failed.get(), s.purchases.get(), s.apalis_restarts.get());
        let mut call = shared::scripts::STATS_FLUSH.key(keys::STATS);
        call.arg(keys::STATS_MINUTE_PREFIX).arg(keys::STATS_WORKERS).arg(&name).arg(line);
        for (field, n) in &pending {
            call.arg(field).arg(*n);
        }
        // Counts that could not be written are kept for the next flush.
        if call.run::<i64, _>(&mut conn).await.is_ok() {
            pending.clear();
        }
        if stopping {
            return;
        }
    }
}

/// In cluster mode, looks at the cluster every two seconds, so `/healthz` can name the nodes that are down and say
/// whether every slot still has a primary, and replica acknowledgements know which shards have replicas.
async fn watch_cluster(
    mut conn: store::Conn,
    health: Arc<Health>,
    acks: Option<shared::scripts::Acks>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let h = store::health(&mut conn).await;
        if let Some(a) = &acks {
            a.shards.update(&h.nodes);
        }
        health.redis_checked(h);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn heartbeat(
    ledger: Ledger,
    registry: Arc<Registry>,
    health: Arc<Health>,
    lease: Duration,
    name: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn = ledger.conn();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lease / 3) => {}
            _ = stop.changed() => return,
        }
        registry.renew_all(&ledger).await;
        if let Ok(now) = shared::customers::redis_now_ms(&mut conn).await {
            health.redis_replied();
            let _: redis::RedisResult<()> = conn.zadd(keys::WORKERS, &name, now).await;
        }
    }
}
