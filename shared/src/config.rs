//! Configuration every binary reads: environment variables, overridable by flags.
//!
//! [`CommonArgs`] is flattened into each binary's clap parser, so `--daily-quota 5` and `MESSENGER_DAILY_QUOTA=5`
//! mean the same thing and `--help` lists every variable. [`CommonArgs::settings`] validates the lot into a typed
//! [`Settings`]; secrets are wrapped in [`SecretString`] so they never reach a log through `Debug`.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::domain::{AccountSid, MaxNumbers, QuietSetting};

/// Options shared by the producer and the worker.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// Redis to keep queues, windows, pools and locks in: `redis://` or `rediss://` (TLS), with an ACL user and
    /// password if needed (`rediss://user:pass@host:6380/0`).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: String,

    /// Seed nodes of a Redis Cluster, comma-separated (`redis://h1:7000,redis://h2:7000`; `rediss://` for TLS).
    /// When set, every process runs in cluster mode and `REDIS_URL` is not used.
    #[arg(long, env = "REDIS_CLUSTER_NODES", hide_env_values = true)]
    pub redis_cluster_nodes: Option<String>,

    /// PEM file of the CA that signed Redis's TLS certificate (a private CA); default: the system's roots.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Replicas that must confirm, with `WAIT`, the writes whose loss in a failover could text someone twice or buy
    /// a surplus number (the attempt marker before a send, the purchase intent before a buy, the enqueued jobs), before
    /// the next irreversible step. 0 = do not wait.
    #[arg(long, env = "MESSENGER_REDIS_REPLICA_ACKS", default_value_t = 0)]
    pub redis_replica_acks: u32,

    /// How long to wait for those replicas; past it the step is not taken and the job is retried later.
    #[arg(long, env = "MESSENGER_REDIS_REPLICA_ACK_TIMEOUT_MS", default_value_t = 1_000)]
    pub redis_replica_ack_timeout_ms: u64,

    /// How long to wait for any one Redis reply before treating the connection as broken. redis-rs defaults to
    /// 500 ms, which turns a busy Redis into errors; a script reply never takes this long on a healthy server.
    #[arg(long, env = "MESSENGER_REDIS_TIMEOUT_MS", default_value_t = 5_000)]
    pub redis_timeout_ms: u64,

    /// Base URL of Twilio's REST API (point it at the simulator for tests and demos).
    #[arg(long, env = "TWILIO_API_BASE", default_value = "https://api.twilio.com")]
    pub twilio_api_base: String,

    /// Base URL of Twilio's Messaging API (Messaging Services and their sender pools).
    #[arg(long, env = "TWILIO_MESSAGING_API_BASE", default_value = "https://messaging.twilio.com")]
    pub twilio_messaging_api_base: String,

    /// Base URL of Twilio's Lookup API (line type and carrier of recipients, for carrier caps).
    #[arg(long, env = "TWILIO_LOOKUPS_API_BASE", default_value = "https://lookups.twilio.com")]
    pub twilio_lookups_api_base: String,

    /// The Twilio account (or parent account) whose credentials sign every request.
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    /// Auth token of `TWILIO_ACCOUNT_SID`: used for Basic auth and to verify webhook signatures.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<String>,

    /// Whole-request timeout for Twilio calls. A send that times out is ambiguous and is resolved by listing
    /// messages before any resend, so this bounds how long a worker waits, not correctness.
    #[arg(long, env = "MESSENGER_TWILIO_TIMEOUT_MS", default_value_t = 10_000)]
    pub twilio_timeout_ms: u64,

    /// Rolling window of the quota model, in seconds.
    #[arg(long, env = "MESSENGER_WINDOW_SECS", default_value_t = 86_400)]
    pub window_secs: u64,

    /// Messages one number may send per window before it risks being flagged as spam.
    #[arg(long, env = "MESSENGER_DAILY_QUOTA", default_value_t = 250)]
    pub daily_quota: u32,

    /// Upper bound of a number's limit however many replies it receives (each reply adds one).
    #[arg(long, env = "MESSENGER_CONVERSATIONAL_CAP", default_value_t = 1_000)]
    pub conversational_cap: u32,

    /// Numbers a new customer may own unless `customer add --max-numbers` says otherwise.
    #[arg(long, env = "MESSENGER_MAX_NUMBERS", default_value_t = 20)]
    pub max_numbers: u32,

    /// What one number costs per month (US local numbers: $1.15), for `producer pool` and dry-run estimates.
    #[arg(long, env = "MESSENGER_NUMBER_MONTHLY_COST", default_value_t = 1.15)]
    pub number_monthly_cost: f64,

    /// What one outbound SMS segment costs (US: $0.0083): counted against customers' monthly spend limits and
    /// used for dry-run estimates.
    #[arg(long, env = "MESSENGER_SEGMENT_COST", default_value_t = 0.0083)]
    pub segment_cost: f64,

    /// The carriers' surcharges per outbound segment, added where a recipient's line is known (looked up):
    /// `tmobile=…,att=…,verizon=…` (any subset; '' = none). Defaults: the 10DLC pass-through fees of May 2026.
    #[arg(long, env = "MESSENGER_CARRIER_FEES", default_value = "tmobile=0.0045,att=0.0035,verizon=0.0045")]
    pub carrier_fees: String,

    /// TTL of a customer's purchase lock, held while a purchase is decided and bought, or idle numbers released.
    /// Renewed while held, so this only bounds how long a crashed holder blocks the next one; a purchase that
    /// outlives it is still safe (purchase intents).
    #[arg(long, env = "MESSENGER_LOCK_TTL_MS", default_value_t = 10_000)]
    pub lock_ttl_ms: u64,

    /// Quiet hours in the recipient's local time, when no text may reach them: `21:00-08:00` (the TCPA's 8 a.m. to
    /// 9 p.m.), another window, or `off`. A customer's own setting (`customer add --quiet-hours`) wins.
    #[arg(long, env = "MESSENGER_QUIET_HOURS", default_value = "21:00-08:00", value_parser = QuietSetting::parse)]
    pub quiet_hours: QuietSetting,

    /// Texts held for quiet hours come due over this many seconds after the window ends (each recipient at its own
    /// offset), so a morning's backlog does not all wake at 08:00:00.
    #[arg(long, env = "MESSENGER_QUIET_SPREAD_SECS", default_value_t = 600)]
    pub quiet_spread_secs: u64,

    /// Refuse customers without a Messaging Service (an A2P 10DLC campaign's sender pool): since 2025-02-01 every US
    /// carrier blocks unregistered 10DLC traffic. Off: such a customer is saved with a warning.
    #[arg(long, env = "MESSENGER_REQUIRE_A2P", default_value_t = false, action = clap::ArgAction::Set)]
    pub require_a2p: bool,

    /// What one Lookup (line type intelligence) costs, for dry-run estimates ($0.008 on Twilio's price list).
    #[arg(long, env = "MESSENGER_LOOKUP_COST", default_value_t = 0.008)]
    pub lookup_cost: f64,

    /// Tests: the length of a carrier's "day" in seconds (T-Mobile's day otherwise ends at midnight Pacific), so a
    /// daily cap's renewal can be brought forward.
    #[arg(long, env = "MESSENGER_CAP_DAY_SECS", hide = true)]
    pub cap_day_secs: Option<u64>,

    /// How long finished batch records (counts and failure reasons) and idempotency keys are kept, in seconds.
    #[arg(long, env = "MESSENGER_BATCH_RETENTION_SECS", default_value_t = 7 * 86_400)]
    pub batch_retention_secs: u64,

    /// Let customers' event endpoints be plain `http` and on private, loopback or link-local addresses (tests, an
    /// on-premise app). Off: `https` to public addresses only (a URL a customer gives is untrusted).
    #[arg(long, env = "MESSENGER_EVENTS_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub events_allow_private: bool,

    /// When an event whose delivery failed is tried again: delays after each failed attempt, e.g.
    /// `5s,5m,30m,2h,5h,10h,14h,20h,24h` (about 3 days in all); after the last it is dead-lettered.
    #[arg(long, env = "MESSENGER_EVENTS_RETRY_SCHEDULE", default_value = "5s,5m,30m,2h,5h,10h,14h,20h,24h",
        value_parser = parse_schedule)]
    pub events_retry_schedule: RetrySchedule,

    /// How long one delivery of an event may take, in ms (connect, send, answer).
    #[arg(long, env = "MESSENGER_EVENTS_TIMEOUT_MS", default_value_t = 10_000)]
    pub events_timeout_ms: u64,

    /// Deliveries in flight to one customer's endpoint at once (events of one recipient always go one at a time,
    /// in order).
    #[arg(long, env = "MESSENGER_EVENTS_CONCURRENCY", default_value_t = 8)]
    pub events_concurrency: u16,

    /// After a customer's events secret is changed, events are signed with the old one too for this long
    /// (`webhook-signature: v1,<new> v1,<old>`), so the app can switch over without rejecting anything; `0`: not.
    #[arg(long, env = "MESSENGER_EVENTS_SECRET_OVERLAP", default_value = "24h", value_parser = parse_delay)]
    pub events_secret_overlap: Duration,

    /// The key customers' events signing secrets are sealed with in Redis (32 random bytes, base64 or hex:
    /// `openssl rand -base64 32`); the same on every producer. Unset: event endpoints cannot be given secrets.
    #[arg(long, env = "MESSENGER_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,

    /// Keys secrets were sealed with before (comma-separated), still opened while `producer secrets rewrap` moves
    /// everything to `MESSENGER_SECRETS_KEY`.
    #[arg(long, env = "MESSENGER_SECRETS_KEY_PREVIOUS", hide_env_values = true)]
    pub secrets_key_previous: Option<String>,
}

/// The delays between delivery attempts of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

/// A delay such as `5s`, `5m`, `2h` or `500ms` (a bare number is seconds).
fn parse_delay(part: &str) -> Result<Duration, String> {
    let part = part.trim();
    let split = part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len());
    let (n, unit) = part.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{part:?} is not a delay such as 5s, 5m, 2h or 500ms"))?;
    let ms = match unit {
        "ms" => n,
        "s" | "" => n.saturating_mul(1_000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("{part:?}: the unit must be ms, s, m or h")),
    };
    Ok(Duration::from_millis(ms))
}

fn parse_schedule(v: &str) -> Result<RetrySchedule, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        out.push(parse_delay(part)?);
    }
    if out.is_empty() {
        return Err("the schedule needs at least one delay".into());
    }
    if out.len() > 50 {
        return Err(format!("at most 50 attempts, not {}", out.len()));
    }
    Ok(RetrySchedule(out))
}

/// Delivery of customers' events to their endpoints.
#[derive(Clone, Debug)]
pub struct EventsSettings {
    pub allow_private: bool,
    pub retry_schedule: RetrySchedule,
    pub timeout: Duration,
    pub concurrency: u16,
    /// How long a replaced secret still signs, beside the new one.
    pub secret_overlap: Duration,
    /// The keys its secrets are sealed with in Redis; `None`: `MESSENGER_SECRETS_KEY` is not set.
    pub keys: Option<crate::secrets::Keyring>,
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub redis: RedisSettings,
    pub twilio: TwilioSettings,
    pub quota: QuotaSettings,
    /// Default `max_numbers` for new customers.
    pub default_max_numbers: MaxNumbers,
    /// TTL of the per-customer purchase lock (purchases and idle releases).
    pub lock_ttl: Duration,
    /// The fleet's quiet hours (a customer's own setting wins).
    pub quiet_hours: QuietSetting,
    /// How long after quiet hours end the held texts come due, spread over.
    pub quiet_spread: Duration,
    /// See [`CommonArgs::cap_day_secs`].
    pub cap_day: Option<Duration>,
    pub batch_retention: Duration,
    pub pricing: Pricing,
    pub events: EventsSettings,
    /// Customers must have a Messaging Service (`MESSENGER_REQUIRE_A2P`).
    pub require_a2p: bool,
}

/// Prices used for estimates and spend limits (Messenger never reads a bill; Twilio's prices vary by country and
/// contract).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pricing {
    pub number_monthly: f64,
    pub segment: f64,
    pub lookup: f64,
    /// The same prices in micro-dollars, with the carriers' surcharges (what spend is counted in).
    pub prices: crate::spend::Prices,
}

#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub url: SecretString,
    /// Cluster seed nodes; empty = one node at `url`.
    pub cluster_nodes: Vec<SecretString>,
    /// PEM of the CA for `rediss://` (from `REDIS_CA_FILE`).
    pub ca: Option<Vec<u8>>,
    pub response_timeout: Duration,
    /// `WAIT` for this many replicas after the writes that must survive a failover.
    pub acks: Option<crate::scripts::Acks>,
}

impl RedisSettings {
    /// One node at `url`, plain, no replica acknowledgements (tests and tools).
    pub fn node(url: &str, response_timeout: Duration) -> Self {
        Self { url: url.to_owned().into(), cluster_nodes: Vec::new(), ca: None, response_timeout, acks: None }
    }
}

#[derive(Clone, Debug)]
pub struct TwilioSettings {
    pub api_base: String,
    /// Messaging API base (`https://messaging.twilio.com`).
    pub messaging_api_base: String,
    /// Lookup API base (`https://lookups.twilio.com`).
    pub lookups_api_base: String,
    /// `None` in processes that never call Twilio (the producer's CLI).
    pub account_sid: Option<AccountSid>,
    pub auth_token: Option<SecretString>,
    pub timeout: Duration,
}

/// The quota model of `docs/DESIGN.md` (section 3): `limit(N) = min(daily_quota + received(N), conversational_cap)`
/// over `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaSettings {
    pub window: Duration,
    pub daily_quota: u32,
    pub conversational_cap: u32,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self { window: Duration::from_secs(86_400), daily_quota: 250, conversational_cap: 1_000 }
    }
}

/// A setting that cannot work, named by its environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl CommonArgs {
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let bad = |s: String| Err(ConfigError(s));
        if !(self.redis_url.starts_with("redis://")
            || self.redis_url.starts_with("rediss://")
            || self.redis_url.starts_with("unix://"))
        {
            return bad("REDIS_URL must start with redis://, rediss:// or unix://".into());
        }
        let cluster_nodes: Vec<SecretString> = self
            .redis_cluster_nodes
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_owned()))
            .collect();
        for n in &cluster_nodes {
            let n = n.expose_secret();
            if !(n.starts_with("redis://") || n.starts_with("rediss://")) {
                return bad(format!(
                    "REDIS_CLUSTER_NODES: {:?} must start with redis:// or rediss://",
                    without_credentials(n)
                ));
            }
        }
        let ca = match &self.redis_ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| ConfigError(format!("REDIS_CA_FILE {}: cannot read it: {e}", path.display())))?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return bad(format!("REDIS_CA_FILE {}: not a PEM certificate", path.display()));
                }
                Some(pem)
            }
            None => None,
        };
        if self.redis_replica_acks > 0 && self.redis_replica_ack_timeout_ms == 0 {
            return bad("MESSENGER_REDIS_REPLICA_ACK_TIMEOUT_MS must be positive when replica acks are on".into());
        }
        for (name, url) in [
            ("TWILIO_API_BASE", &self.twilio_api_base),
            ("TWILIO_MESSAGING_API_BASE", &self.twilio_messaging_api_base),
            ("TWILIO_LOOKUPS_API_BASE", &self.twilio_lookups_api_base),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad(format!("{name} {url:?} must be an http(s) URL"));
            }
        }
        let account_sid = match &self.twilio_account_sid {
            Some(s) if !s.is_empty() => {
                Some(AccountSid::parse(s).map_err(|e| ConfigError(format!("TWILIO_ACCOUNT_SID: {e}")))?)
            }
            _ => None,
        };
        let quota = QuotaSettings {
            window: Duration::from_secs(self.window_secs),
            daily_quota: self.daily_quota,
            conversational_cap: self.conversational_cap,
        };
        quota.validate()?;
        let default_max_numbers =
            MaxNumbers::new(self.max_numbers).map_err(|e| ConfigError(format!("MESSENGER_MAX_NUMBERS {e}")))?;
        if self.lock_ttl_ms < 100 {
            return bad("MESSENGER_LOCK_TTL_MS must be at least 100".into());
        }
        if self.redis_timeout_ms == 0 || self.twilio_timeout_ms == 0 {
            return bad("timeouts must be positive".into());
        }
        for (name, v) in [
            ("MESSENGER_NUMBER_MONTHLY_COST", self.number_monthly_cost),
            ("MESSENGER_SEGMENT_COST", self.segment_cost),
            ("MESSENGER_LOOKUP_COST", self.lookup_cost),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be a price of 0 or more, not {v}"));
            }
        }
        let keys = match self.secrets_key.as_deref().filter(|k| !k.trim().is_empty()) {
            Some(k) => {
                Some(crate::secrets::Keyring::parse(k, self.secrets_key_previous.as_deref()).map_err(ConfigError)?)
            }
            None if self.secrets_key_previous.as_deref().is_some_and(|p| !p.trim().is_empty()) => {
                return bad("MESSENGER_SECRETS_KEY_PREVIOUS is set without MESSENGER_SECRETS_KEY".into());
            }
            None => None,
        };
        Ok(Settings {
            redis: RedisSettings {
                url: SecretString::from(self.redis_url.clone()),
                cluster_nodes,
                ca,
                response_timeout: Duration::from_millis(self.redis_timeout_ms),
                acks: (self.redis_replica_acks > 0).then(|| {
                    crate::scripts::Acks::new(
                        self.redis_replica_acks,
                        Duration::from_millis(self.redis_replica_ack_timeout_ms),
                    )
                }),
            },
            twilio: TwilioSettings {
                api_base: self.twilio_api_base.trim_end_matches('/').to_owned(),
                messaging_api_base: self.twilio_messaging_api_base.trim_end_matches('/').to_owned(),
                lookups_api_base: self.twilio_lookups_api_base.trim_end_matches('/').to_owned(),
                account_sid,
                auth_token: self.twilio_auth_token.clone().filter(|t| !t.is_empty()).map(SecretString::from),
                timeout: Duration::from_millis(self.twilio_timeout_ms),
            },
            quota,
            default_max_numbers,
            lock_ttl: Duration::from_millis(self.lock_ttl_ms),
            quiet_hours: self.quiet_hours,
            quiet_spread: Duration::from_secs(self.quiet_spread_secs),
            cap_day: self.cap_day_secs.filter(|d| *d > 0).map(Duration::from_secs),
            batch_retention: Duration::from_secs(self.batch_retention_secs.max(60)),
            pricing: Pricing {
                number_monthly: self.number_monthly_cost,
                segment: self.segment_cost,
                lookup: self.lookup_cost,
                prices: self.prices()?,
            },
            require_a2p: self.require_a2p,
            events: EventsSettings {
                allow_private: self.events_allow_private,
                retry_schedule: self.events_retry_schedule.clone(),
                timeout: Duration::from_millis(self.events_timeout_ms.max(100)),
                concurrency: self.events_concurrency.clamp(1, 256),
                secret_overlap: self.events_secret_overlap,
                keys,
            },
        })
    }
}

impl CommonArgs {
    /// The price settings as micro-dollars, each checked (a price is a dollar amount, 0 or more).
    fn prices(&self) -> Result<crate::spend::Prices, ConfigError> {
        use crate::spend::{CarrierFees, Prices, Usd};
        let usd = |name: &str, v: f64| {
            Usd::from_dollars(v)
                .ok_or_else(|| ConfigError(format!("{name} must be a dollar amount, 0 or more, not {v}")))
        };
        Ok(Prices {
            segment: usd("MESSENGER_SEGMENT_COST", self.segment_cost)?,
            number_monthly: usd("MESSENGER_NUMBER_MONTHLY_COST", self.number_monthly_cost)?,
            lookup: usd("MESSENGER_LOOKUP_COST", self.lookup_cost)?,
            fees: CarrierFees::parse(&self.carrier_fees)
                .map_err(|e| ConfigError(format!("MESSENGER_CARRIER_FEES: {e}")))?,
        })
    }
}

impl QuotaSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.window.as_millis() < 1_000 {
            return Err(ConfigError("MESSENGER_WINDOW_SECS must be at least 1".into()));
        }
        if self.daily_quota == 0 {
            return Err(ConfigError("MESSENGER_DAILY_QUOTA must be at least 1".into()));
        }
        if self.conversational_cap < self.daily_quota {
            return Err(ConfigError(format!(
                "MESSENGER_CONVERSATIONAL_CAP ({}) is below MESSENGER_DAILY_QUOTA ({}); the cap bounds the quota \
                 plus replies, so it must be at least the quota",
                self.conversational_cap, self.daily_quota
            )));
        }
        Ok(())
    }

    pub fn window_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }

    /// How much longer than the window a send counts against its number (common.lua, `window_slack`): the entry
    /// keeps its reservation time unless the send took longer than this to reach Twilio.
    pub fn window_slack_ms(&self) -> u64 {
        (self.window_ms() / 100).min(1_000)
    }
}

impl TwilioSettings {
    /// The account and token, or a configuration error naming what is missing.
    pub fn credentials(&self) -> Result<(AccountSid, SecretString), ConfigError> {
        match (&self.account_sid, &self.auth_token) {
            (Some(sid), Some(token)) if !token.expose_secret().is_empty() => Ok((sid.clone(), token.clone())),
            (None, _) => Err(ConfigError("TWILIO_ACCOUNT_SID is not set".into())),
            _ => Err(ConfigError("TWILIO_AUTH_TOKEN is not set".into())),
        }
    }
}

/// `rediss://user:pass@host:6380/0` → `rediss://host:6380/0`.
pub fn without_credentials(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn defaults_match_the_seed_article() {
        let s = Cli::parse_from(["x"]).common.settings().unwrap();
        assert_eq!(s.quota, QuotaSettings::default());
    }

    #[test]
    fn a_cap_below_the_quota_is_rejected_by_name() {
        let e = Cli::parse_from(["x", "--daily-quota", "300", "--conversational-cap", "200"]).common.settings();
        assert!(e.unwrap_err().0.contains("MESSENGER_CONVERSATIONAL_CAP"));
    }

    #[test]
    fn a_malformed_account_sid_is_rejected() {
        let e = Cli::parse_from(["x", "--twilio-account-sid", "nope"]).common.settings();
        assert!(e.unwrap_err().0.contains("TWILIO_ACCOUNT_SID"));
    }
}
