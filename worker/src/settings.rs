//! Worker settings: the shared ones plus what only the worker needs.

use std::time::Duration;

use shared::config::{CommonArgs, ConfigError, Settings};
use shared::domain::IdleDays;

/// Sends queued texts through Twilio, keeping every number under its quota and buying numbers when needed.
#[derive(clap::Parser, Clone, Debug)]
#[command(name = "worker", version)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Jobs this process works on at once.
    #[arg(long, env = "MESSENGER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// A fetched job belongs to this process for this long unless renewed (every third of it). A killed process's
    /// jobs return to the queue within one lease.
    #[arg(long, env = "MESSENGER_LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u64,

    /// Attempts per job for transient failures (429, 5xx, connection errors) before it fails with its reason.
    #[arg(long, env = "MESSENGER_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,

    /// First retry delay; doubles per attempt (with jitter) up to `--backoff-max-ms`.
    #[arg(long, env = "MESSENGER_BACKOFF_BASE_MS", default_value_t = 1_000)]
    pub backoff_base_ms: u64,

    #[arg(long, env = "MESSENGER_BACKOFF_MAX_MS", default_value_t = 60_000)]
    pub backoff_max_ms: u64,

    /// After a send whose outcome is unknown, wait this long before asking Twilio whether it went out.
    #[arg(long, env = "MESSENGER_AMBIGUOUS_GRACE_MS", default_value_t = 10_000)]
    pub ambiguous_grace_ms: u64,

    /// Renew the purchase lock while a purchase runs. Turning it off lets tests watch the lock expire mid-purchase.
    #[arg(long, env = "MESSENGER_LOCK_RENEW", default_value_t = true, action = clap::ArgAction::Set)]
    pub lock_renew: bool,

    /// A purchase intent older than this with no number tagged in Twilio is dropped. Must exceed the Twilio timeout
    /// (a purchase still on the wire must not outlive its intent).
    #[arg(long, env = "MESSENGER_INTENT_STALE_SECS", default_value_t = 120)]
    pub intent_stale_secs: u64,

    /// Purchases of one decision that run at once (a decision buys as many numbers as the backlog needs). 32 buys
    /// the 80 numbers of a 20,000-recipient backlog in three rounds of Twilio latency while staying well under the
    /// account's limit on concurrent API requests (beyond it Twilio answers 429, which is retried).
    #[arg(long, env = "MESSENGER_PURCHASE_CONCURRENCY", default_value_t = 32)]
    pub purchase_concurrency: usize,

    /// Twilio Lookups this process runs at once (recipients' line types, for carrier caps and skipping landlines);
    /// each recipient is looked up once and cached for 30 days.
    #[arg(long, env = "MESSENGER_LOOKUP_CONCURRENCY", default_value_t = 16)]
    pub lookup_concurrency: usize,

    /// Senders a Messaging Service may hold (Twilio's default limit is 400; error 21714 past it). A customer with a
    /// service never gets a number its service could not take.
    #[arg(long, env = "MESSENGER_SERVICE_MAX_NUMBERS", default_value_t = 400)]
    pub service_max_numbers: u32,

    /// Release numbers that sent nothing for this many days (the reconciler checks every customer once per audit
    /// interval), keeping what the backlog and the numbers' sticky recipients need. Off unless set.
    #[arg(long, env = "MESSENGER_RELEASE_IDLE_DAYS", value_parser = IdleDays::parse)]
    pub release_idle_days: Option<IdleDays>,

    /// How often one worker of the fleet resolves stale purchase intents and cleans up.
    #[arg(long, env = "MESSENGER_RECONCILE_SECS", default_value_t = 15)]
    pub reconcile_secs: u64,

    /// How often the fleet compares every account's numbers with the pools and adopts tagged numbers it lost.
    #[arg(long, env = "MESSENGER_AUDIT_SECS", default_value_t = 300)]
    pub audit_secs: u64,

    /// How long SIGTERM waits for in-flight sends before exiting anyway (their leases then expire).
    #[arg(long, env = "MESSENGER_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    /// Public base URL of the producer's HTTP server; when set, sends ask Twilio for status callbacks and bought
    /// numbers get the inbound webhook.
    #[arg(long, env = "MESSENGER_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Serve `/metrics` and `/healthz` for this process on this address (e.g. `0.0.0.0:9100`; port 0 picks a
    /// free one). Off by default: workers sharing a machine cannot share a port.
    #[arg(long, env = "MESSENGER_WORKER_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,

    /// Chaos testing: end the first apalis worker after this many seconds, as if it had died, so tests can watch
    /// the supervisor replace it.
    #[arg(long, env = "MESSENGER_CHAOS_END_WORKER_SECS", hide = true)]
    pub chaos_end_worker_secs: Option<u64>,
}

/// Validated worker settings.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub shared: Settings,
    pub concurrency: usize,
    pub lease: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub ambiguous_grace: Duration,
    pub lock_renew: bool,
    pub intent_stale: Duration,
    pub purchase_concurrency: usize,
    pub lookup_concurrency: usize,
    pub service_max_numbers: u32,
    /// Idle numbers are released after this long (`None`: never, by the worker).
    pub release_idle: Option<Duration>,
    pub reconcile_every: Duration,
    pub audit_every: Duration,
    pub shutdown_timeout: Duration,
    pub public_url: Option<String>,
    pub listen: Option<std::net::SocketAddr>,
    /// See [`WorkerArgs::chaos_end_worker_secs`].
    pub chaos_end_worker: Option<Duration>,
    /// Jobs fetched per Redis round trip at most.
    pub fetch_batch: usize,
    /// A customer with nothing due is still polled this often (safety net for a missed wake-up).
    pub idle_poll: Duration,
}

impl WorkerArgs {
    pub fn settings(&self) -> Result<WorkerSettings, ConfigError> {
        let shared = self.common.settings()?;
        shared.twilio.credentials()?;
        let bad = |s: &str| Err(ConfigError(s.to_owned()));
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return bad("MESSENGER_CONCURRENCY must be between 1 and 10000");
        }
        if self.lease_secs < 2 {
            return bad("MESSENGER_LEASE_SECS must be at least 2");
        }
        if self.max_attempts == 0 {
            return bad("MESSENGER_MAX_ATTEMPTS must be at least 1");
        }
        let twilio_timeout = shared.twilio.timeout;
        let lease = Duration::from_secs(self.lease_secs);
        if lease <= twilio_timeout {
            return Err(ConfigError(format!(
                "MESSENGER_LEASE_SECS ({}s) must exceed MESSENGER_TWILIO_TIMEOUT_MS ({}ms): a send must be able to finish \
                 within its lease",
                self.lease_secs,
                twilio_timeout.as_millis()
            )));
        }
        let intent_stale = Duration::from_secs(self.intent_stale_secs);
        if intent_stale <= twilio_timeout + shared.lock_ttl {
            return Err(ConfigError(
                "MESSENGER_INTENT_STALE_SECS must exceed the Twilio timeout plus the lock TTL, or a purchase still on \
                 the wire could outlive its intent"
                    .into(),
            ));
        }
        if self.purchase_concurrency == 0 || self.purchase_concurrency > 100 {
            return bad("MESSENGER_PURCHASE_CONCURRENCY must be between 1 and 100");
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return bad("MESSENGER_PUBLIC_URL must be an http(s) URL");
        }
        Ok(WorkerSettings {
            shared,
            concurrency: self.concurrency,
            lease,
            max_attempts: self.max_attempts,
            backoff_base: Duration::from_millis(self.backoff_base_ms.max(1)),
            backoff_max: Duration::from_millis(self.backoff_max_ms.max(self.backoff_base_ms.max(1))),
            ambiguous_grace: Duration::from_millis(self.ambiguous_grace_ms),
            lock_renew: self.lock_renew,
            intent_stale,
            purchase_concurrency: self.purchase_concurrency,
            lookup_concurrency: self.lookup_concurrency.clamp(1, 1_000),
            service_max_numbers: self.service_max_numbers,
            release_idle: self.release_idle_days.map(IdleDays::duration),
            reconcile_every: Duration::from_secs(self.reconcile_secs.max(1)),
            audit_every: Duration::from_secs(self.audit_secs.max(1)),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            public_url: self.public_url.as_ref().map(|u| u.trim_end_matches('/').to_owned()),
            listen: self.listen,
            chaos_end_worker: self.chaos_end_worker_secs.map(Duration::from_secs),
            fetch_batch: 32,
            idle_poll: Duration::from_secs(2),
        })
    }
}
