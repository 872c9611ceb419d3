//! What the send path, the purchase path and the reconciler of one process share: Redis (the ledger), Twilio, the
//! settings, the counters, the stop signal, and read-through caches of the records jobs need (batches' bodies and
//! timing, customers, quiet periods). Nothing here decides anything about a job or a number.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use chrono_tz::Tz;
use rand::Rng;
use shared::customers::{self, Customer};
use shared::domain::{BatchId, CustomerId, QuietHours, Template};
use shared::keys::CustomerKeys;
use shared::ledger::Ledger;
use shared::twilio::TwilioClient;
use tokio::sync::{mpsc, watch};

use crate::backend::Wake;
use crate::settings::WorkerSettings;
use crate::stats::Stats;

pub struct Shared {
    pub ledger: Ledger,
    /// The send path's group calls (reservations and commits of one customer in one script call).
    pub groups: crate::group::Groups,
    pub twilio: TwilioClient,
    pub settings: Arc<WorkerSettings>,
    pub stats: Stats,
    /// Tells the fetcher to look at a customer (a job was rescheduled).
    pub wake: mpsc::UnboundedSender<Wake>,
    pub stop: watch::Receiver<bool>,
    /// Bounds the Twilio Lookups in flight (`MESSENGER_LOOKUP_CONCURRENCY`).
    pub lookups: tokio::sync::Semaphore,
    batches: Mutex<HashMap<BatchId, Arc<BatchInfo>>>,
    customers: Mutex<HashMap<CustomerId, (Customer, Instant)>>,
    /// Quiet periods (encoded for the reserve script) per set of zones and window, computed once an hour.
    quiet: Mutex<HashMap<QuietKey, (i64, Arc<str>)>>,
    /// The carriers' day starts (encoded for the reserve script), recomputed once a minute.
    days: Mutex<(i64, Arc<str>)>,
    /// The spend terms (encoded for the reserve scripts) per customer zone, recomputed once a minute.
    spend: Mutex<HashMap<Tz, (i64, Arc<str>)>>,
}

/// A recipient's zones and the window that applies.
type QuietKey = (Vec<Tz>, QuietHours);

/// What a job needs of its batch; it never changes once the batch exists.
#[derive(Debug)]
pub struct BatchInfo {
    /// The body, with merge fields when personalised.
    pub body: Template,
    /// The variables whose values each job carries, in order.
    pub variables: Vec<String>,
    /// Quiet hours do not apply.
    pub urgent: bool,
    /// Texts not sent by then end `expired` (Redis ms).
    pub expires_ms: Option<i64>,
    /// The batch records events (and so its texts are kept in the tenants' conversations).
    pub events: bool,
}

impl BatchInfo {
    /// A job's text: the body with its values filled in. `Err(name)`: a value the job lacks (its batch was validated,
    /// so only a job written by hand can lack one).
    pub fn text(&self, values: Option<&str>) -> Result<String, String> {
        if self.variables.is_empty() {
            return Ok(self.body.as_str().to_owned());
        }
        self.body.render_encoded(&self.variables, values)
    }

    /// A job's value of `name`, if it has one.
    pub fn value<'a>(&self, values: Option<&'a str>, name: &str) -> Option<&'a str> {
        let i = self.variables.iter().position(|v| v == name)?;
        values?.split(shared::domain::template::VALUE_SEPARATOR).nth(i).filter(|v| !v.is_empty())
    }
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
        let lookups = tokio::sync::Semaphore::new(settings.lookup_concurrency);
        Self {
            groups: crate::group::Groups::new(ledger.clone()),
            ledger,
            twilio,
            settings,
            stats,
            wake,
            stop,
            lookups,
            batches: Mutex::default(),
            customers: Mutex::default(),
            quiet: Mutex::default(),
            days: Mutex::new((i64::MIN, Arc::from(""))),
            spend: Mutex::default(),
        }
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

    /// What jobs need of their batch, cached: it never changes. `Ok(None)`: the batch is gone.
    pub async fn batch(&self, batch: &BatchId) -> redis::RedisResult<Option<Arc<BatchInfo>>> {
        if let Some(b) = self.batches.lock().unwrap().get(batch) {
            return Ok(Some(b.clone()));
        }
        let k = CustomerKeys::new(batch.customer());
        type Fields = (Option<String>, Option<String>, Option<String>, Option<i64>, Option<String>);
        let (body, vars, urgent, expires, events): Fields = redis::cmd("HMGET")
            .arg(k.batch(batch))
            .arg(&["body", "vars", "urgent", "expires", "ev"])
            .query_async(&mut self.ledger.conn())
            .await?;
        let Some(body) = body else { return Ok(None) };
        let Ok(body) = Template::parse(&body) else {
            return Err(redis::RedisError::from((redis::ErrorKind::Client, "batch body is not a template")));
        };
        let info = Arc::new(BatchInfo {
            body,
            variables: vars
                .filter(|v| !v.is_empty())
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            urgent: urgent.as_deref() == Some("1"),
            expires_ms: expires,
            events: events.as_deref() == Some("1"),
        });
        let mut cache = self.batches.lock().unwrap();
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(batch.clone(), info.clone());
        Ok(Some(info))
    }

    /// Three consecutive starts of the carriers' day around now, encoded for the reserve script (computed from this
    /// process's clock once a minute; the script picks the day Redis's clock is in).
    pub fn carrier_days(&self) -> Arc<str> {
        let now = Utc::now();
        let minute = now.timestamp() / 60;
        let mut days = self.days.lock().unwrap();
        if days.0 != minute {
            let starts = shared::carriers::day_starts(now, self.settings.shared.cap_day);
            *days = (minute, shared::carriers::encode_days(starts).into());
        }
        days.1.clone()
    }

    /// The spend terms for a customer in `zone` (UTC when it has none): its month by this process's clock, and the
    /// fleet's prices, encoded for the reserve scripts. Recomputed once a minute.
    pub fn spend_terms(&self, zone: Option<shared::domain::TimeZone>) -> Arc<str> {
        let now = Utc::now();
        let minute = now.timestamp() / 60;
        let tz = zone.map_or(chrono_tz::UTC, |z| z.0);
        let mut cache = self.spend.lock().unwrap();
        if let Some((m, terms)) = cache.get(&tz)
            && *m == minute
        {
            return terms.clone();
        }
        let terms: Arc<str> = shared::spend::Terms {
            month: shared::spend::month_of(now, tz),
            prices: self.settings.shared.pricing.prices,
        }
        .encode()
        .into();
        cache.insert(tz, (minute, terms.clone()));
        terms
    }

    /// The quiet periods of `window` in `zones` around now, encoded for the reserve script. Computed from this
    /// process's clock once an hour (they span a day back and two ahead, far more than any clock skew); the
    /// script compares them with Redis's clock.
    pub fn quiet_periods(&self, zones: Vec<Tz>, window: QuietHours) -> Arc<str> {
        let now = Utc::now();
        let hour = now.timestamp() / 3600;
        let key = (zones, window);
        if let Some((h, p)) = self.quiet.lock().unwrap().get(&key)
            && *h == hour
        {
            return p.clone();
        }
        let day = chrono::Duration::days(1);
        let periods: Arc<str> =
            shared::quiet::encode(&shared::quiet::quiet_intervals(&key.0, window, now - day, now + day * 2)).into();
        let mut cache = self.quiet.lock().unwrap();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, (hour, periods.clone()));
        periods
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
