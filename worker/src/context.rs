//! What the send path, the purchase path and the reconciler of one process share: Redis (the ledger), Twilio, the
//! settings, the counters, the stop signal, and read-through caches of the records jobs need (batch bodies,
//! customers). Nothing here decides anything about a job or a number.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use redis::AsyncCommands;
use shared::customers::{self, Customer};
use shared::domain::{BatchId, CustomerId};
use shared::keys::CustomerKeys;
use shared::ledger::Ledger;
use shared::twilio::TwilioClient;
use tokio::sync::{mpsc, watch};

use crate::backend::Wake;
use crate::settings::WorkerSettings;
use crate::stats::Stats;

pub struct Shared {
    pub ledger: Ledger,
    pub twilio: TwilioClient,
    pub settings: Arc<WorkerSettings>,
    pub stats: Stats,
    /// Tells the fetcher to look at a customer (a job was rescheduled).
    pub wake: mpsc::UnboundedSender<Wake>,
    pub stop: watch::Receiver<bool>,
    bodies: Mutex<HashMap<BatchId, Arc<str>>>,
    customers: Mutex<HashMap<CustomerId, (Customer, Instant)>>,
}

impl Shared {
    pub fn new(
        ledger: Ledger,
        twilio: TwilioClient,
        settings: Arc<WorkerSettings>,
        stats: Stats,
        wake: mpsc::UnboundedSender<Wake>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self { ledger, twilio, settings, stats, wake, stop, bodies: Mutex::default(), customers: Mutex::default() }
    }

    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps for `d`, or less if the process starts shutting down.
    pub async fn pause(&self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.changed() => {}
        }
    }

    /// Exponential backoff with jitter: the n-th retry waits between half and all of `base · 2^(n-1)`, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.settings.backoff_base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.settings.backoff_max);
        let half = cap / 2;
        half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
    }

    /// The batch's body, cached: it never changes. `Ok(None)`: the batch is gone.
    pub async fn body(&self, batch: &BatchId) -> redis::RedisResult<Option<Arc<str>>> {
        if let Some(b) = self.bodies.lock().unwrap().get(batch) {
            return Ok(Some(b.clone()));
        }
        let k = CustomerKeys::new(batch.customer());
        let body: Option<String> = self.ledger.conn().hget(k.batch(batch), "body").await?;
        let Some(body) = body else { return Ok(None) };
        let body: Arc<str> = body.into();
        let mut cache = self.bodies.lock().unwrap();
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(batch.clone(), body.clone());
        Ok(Some(body))
    }

    /// The customer's record, cached for 30 s. `Ok(None)`: the customer is gone.
    pub async fn customer(&self, id: &CustomerId) -> redis::RedisResult<Option<Customer>> {
        if let Some((c, at)) = self.customers.lock().unwrap().get(id)
            && at.elapsed() < Duration::from_secs(30)
        {
            return Ok(Some(c.clone()));
        }
        let Some(c) = customers::get(&mut self.ledger.conn(), id).await? else { return Ok(None) };
        self.customers.lock().unwrap().insert(id.clone(), (c.clone(), Instant::now()));
        Ok(Some(c))
    }
}
