//! Pulls jobs from Redis into this process, fairly across customers.
//!
//! Each customer has its own queue. The fetcher keeps the set of customers with work (`msgr:active`), visits the
//! ones that are due in round-robin order and takes at most a small batch from each visit, so one customer's
//! 100,000-recipient batch never keeps another customer's single message waiting behind it. It only fetches as many
//! jobs as this process has free handler slots: nothing sits in a local buffer that another worker could be sending.
//!
//! When nothing is due the fetcher sleeps until the earliest scheduled job or lease deadline (as `fetch.lua`
//! reports), a wake-up published by the producer (`msgr:wake`), or a short safety poll.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::AsyncCommands;
use secrecy::ExposeSecret;
use shared::domain::CustomerId;
use shared::keys;
use shared::ledger::Ledger;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::backend::{SendTask, Wake};
use crate::leases::Registry;
use crate::settings::WorkerSettings;
use crate::stats::Health;

pub struct Fetcher {
    pub ledger: Ledger,
    pub settings: Arc<WorkerSettings>,
    pub registry: Arc<Registry>,
    pub slots: Arc<Semaphore>,
    pub tx: mpsc::Sender<SendTask>,
    pub wake: mpsc::UnboundedReceiver<Wake>,
    pub stop: watch::Receiver<bool>,
    pub health: Arc<Health>,
}

/// How often the set of active customers is re-read.
const REFRESH: Duration = Duration::from_secs(1);

impl Fetcher {
    pub async fn run(mut self) {
        let _running = self.health.fetcher_guard();
        let mut due: HashMap<CustomerId, Instant> = HashMap::new();
        let mut ring: VecDeque<CustomerId> = VecDeque::new();
        let mut last_refresh = Instant::now() - REFRESH;
        let mut backoff = Duration::from_millis(100);
        let mut conn = self.ledger.conn();

        'outer: loop {
            if *self.stop.borrow() {
                break;
            }
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = self.stop.changed() => break,
            };

            // Find a customer that is due, sleeping until one is.
            let customer = loop {
                while let Ok(w) = self.wake.try_recv() {
                    apply_wake(&mut due, &mut ring, w);
                }
                if last_refresh.elapsed() >= REFRESH {
                    last_refresh = Instant::now();
                    match conn.smembers::<_, Vec<String>>(keys::ACTIVE).await {
                        Ok(active) => {
                            self.health.redis_replied();
                            for c in active.iter().filter_map(|s| CustomerId::parse(s).ok()) {
                                if !due.contains_key(&c) {
                                    due.insert(c.clone(), Instant::now());
                                    ring.push_back(c);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error.message = %e, "could not read active customers")
                        }
                    }
                }
                let now = Instant::now();
                if let Some(c) = next_due(&due, &mut ring, now) {
                    break c;
                }
                let next = due.values().min().copied().unwrap_or(now + REFRESH).min(last_refresh + REFRESH);
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    w = self.wake.recv() => if let Some(w) = w { apply_wake(&mut due, &mut ring, w) },
                    _ = self.stop.changed() => break 'outer,
                }
            };

            let mut permits = vec![first];
            while permits.len() < self.settings.fetch_batch {
                match self.slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let sent_at = Instant::now();
            let fetched = match self.ledger.fetch(&customer, permits.len(), self.settings.lease).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(customer = %customer, error.message = %e, "fetch failed; backing off {backoff:?}");
                    due.insert(customer, Instant::now() + backoff);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop.changed() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            self.health.redis_replied();
            let got = fetched.jobs.len();
            for (job, permit) in fetched.jobs.into_iter().zip(permits.drain(..)) {
                let lease = self.registry.add(&customer, &job.lease, sent_at);
                if self.tx.send(SendTask { job, lease, permit }).await.is_err() {
                    break 'outer;
                }
            }
            drop(permits);

            let now = Instant::now();
            if fetched.queue_len > 0 {
                due.insert(customer, now);
            } else if let Some(d) = fetched.next_due_in {
                due.insert(customer, now + d.min(self.settings.idle_poll));
            } else if got > 0 {
                due.insert(customer, now + self.settings.idle_poll);
            } else if self.deactivate(&customer).await {
                due.remove(&customer);
                ring.retain(|c| c != &customer);
            } else {
                due.insert(customer, now);
            }
        }
        tracing::debug!("fetcher stopped");
    }

    /// Removes an idle customer from the active set, then re-checks: a producer may have pushed between our fetch
    /// and the removal (it adds to the set *after* pushing, so the re-check sees its jobs). Returns true if the
    /// customer is idle.
    async fn deactivate(&self, customer: &CustomerId) -> bool {
        let mut conn = self.ledger.conn();
        if let Err(e) = conn.srem::<_, _, ()>(keys::ACTIVE, customer.as_str()).await {
            tracing::warn!(error.message = %e, "could not update active customers");
            return false;
        }
        match self.ledger.fetch(customer, 0, self.settings.lease).await {
            Ok(f) if f.queue_len == 0 && f.next_due_in.is_none() => true,
            _ => {
                let _ = conn.sadd::<_, _, ()>(keys::ACTIVE, customer.as_str()).await;
                false
            }
        }
    }
}

fn apply_wake(due: &mut HashMap<CustomerId, Instant>, ring: &mut VecDeque<CustomerId>, w: Wake) {
    let at = Instant::now() + w.after.unwrap_or_default();
    match due.get_mut(&w.customer) {
        Some(t) => *t = (*t).min(at),
        None => {
            due.insert(w.customer.clone(), at);
            ring.push_back(w.customer);
        }
    }
}

/// The next due customer in round-robin order (rotates the ring).
fn next_due(due: &HashMap<CustomerId, Instant>, ring: &mut VecDeque<CustomerId>, now: Instant) -> Option<CustomerId> {
    for _ in 0..ring.len() {
        let c = ring.pop_front()?;
        ring.push_back(c.clone());
        if due.get(&c).is_some_and(|t| *t <= now) {
            return Some(c);
        }
    }
    None
}

/// Forwards the producer's wake-ups (`PUBLISH msgr:wake <customer>`) to the fetcher and pool changes
/// (`msgr:pool`) to `on_pool`, reconnecting as needed. Losing this channel only costs latency: both are also polled.
///
/// In a Redis Cluster a plain `PUBLISH` reaches every node over the cluster bus, so subscribing on any one node
/// hears every message. The subscription moves to the next seed node each time its connection ends (the node
/// died, or a failover), so it survives the loss of any node.
pub async fn listen_for_wakes(
    settings: Arc<WorkerSettings>,
    tx: mpsc::UnboundedSender<Wake>,
    on_pool: impl Fn(CustomerId) + Send + Sync + 'static,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    let redis = &settings.shared.redis;
    let mut next_seed = 0usize;
    loop {
        let url = if redis.cluster_nodes.is_empty() {
            redis.url.expose_secret().to_owned()
        } else {
            next_seed += 1;
            redis.cluster_nodes[next_seed % redis.cluster_nodes.len()].expose_secret().to_owned()
        };
        let attempt = async {
            let client = shared::store::node_client(redis, &url)?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&[keys::WAKE_CHANNEL, keys::POOL_CHANNEL]).await?;
            let mut stream = pubsub.on_message();
            while let Some(msg) = stream.next().await {
                let Some(customer) = msg.get_payload::<String>().ok().and_then(|s| CustomerId::parse(&s).ok()) else {
                    continue;
                };
                if msg.get_channel_name() == keys::POOL_CHANNEL {
                    on_pool(customer);
                } else if tx.send(Wake { customer, after: None }).is_err() {
                    break;
                }
            }
            Ok::<_, redis::RedisError>(())
        };
        tokio::select! {
            r = attempt => {
                if let Err(e) = r {
                    tracing::debug!(error.message = %e, "wake-up subscription lost; reconnecting in {backoff:?}");
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
