//! Customers and their number pools.

use std::collections::HashMap;

use redis::AsyncCommands;
use serde::Serialize;

use crate::carriers::Caps;
use crate::config::QuotaSettings;
use crate::domain::{AccountSid, AreaCode, CustomerId, MaxNumbers, QuietSetting, ServiceSid, TimeZone};
use crate::keys::{self, CustomerKeys};
use crate::spend::Usd;
use crate::store::Conn;

/// A customer's purchase settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Customer {
    pub id: CustomerId,
    /// Twilio subaccount that owns this customer's numbers; `None` = the main account.
    pub account_sid: Option<AccountSid>,
    /// Area code to buy numbers in; `None` = any US local number.
    pub area_code: Option<AreaCode>,
    pub max_numbers: u32,
    /// Messaging Service (A2P 10DLC sender pool) every number of this customer is attached to before it sends;
    /// sends carry it as `MessagingServiceSid`. `None`: numbers send bare.
    pub messaging_service: Option<ServiceSid>,
    /// The customer's quiet hours (a window, or `off`); `None`: the fleet's (`MESSENGER_QUIET_HOURS`).
    #[serde(serialize_with = "as_text")]
    pub quiet_hours: Option<QuietSetting>,
    /// Where the customer's tenants live when nothing else says: quiet hours apply in this zone too.
    #[serde(serialize_with = "as_text")]
    pub time_zone: Option<TimeZone>,
    /// Look recipients' lines up (Twilio Lookup) before texting them: landlines and invalid numbers are skipped.
    /// Always on when a carrier cap needs the carrier.
    pub lookup: bool,
    /// The brand's and campaign's carrier caps.
    #[serde(flatten)]
    pub caps: Caps,
    /// What the customer may spend in a month (its time zone's month): texts, numbers bought and lookups at the
    /// fleet's prices ([`crate::spend`]). `None`: no limit.
    pub monthly_spend_limit: Option<Usd>,
    /// When a batch pauses itself because carriers filter its texts.
    #[serde(flatten)]
    pub pause: PauseRule,
    /// At most this many texts to one tenant per window, across batches (urgent batches exempt). `None`: no cap.
    #[serde(serialize_with = "as_text")]
    pub max_texts_per_tenant: Option<FrequencyCap>,
    /// Record events for the customer's app (`GET …/events`): batches created while this is on report their
    /// messages, and replies and opt-outs are reported.
    pub events: bool,
    /// The answer to a tenant's HELP or INFO (CTIA expects one: who is texting, how to stop).
    pub help_text: Option<String>,
    /// Where its events are delivered (Standard Webhooks), checked against the SSRF rule when saved.
    pub events_url: Option<String>,
    /// The `whsec_…` secret events are signed with, as stored (sealed: [`crate::secrets`]); never serialised.
    #[serde(skip)]
    pub events_secret: Option<StoredSecret>,
    /// The secret a change of `events_secret` replaced, still signing beside it for the overlap; never serialised.
    #[serde(skip)]
    pub events_secret_previous: Option<PreviousSecret>,
    /// Why delivery to `events_url` stopped (the endpoint answered 410 Gone), until the URL is saved again.
    pub events_disabled: Option<String>,
    /// How tenants' consent is kept: their own opt-out words, what a suspected revocation does to their texts,
    /// whether a text needs an opt-in on record, the confirmation of a revocation.
    #[serde(flatten)]
    pub consent: ConsentSettings,
}

/// The deliverability pause (docs/DESIGN.md, "Deliverability pause"): a batch pauses once it has `after_reports`
/// delivery reports and `threshold_pct` percent of them carry one of `codes`. `None`: the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PauseRule {
    /// Delivery reports a batch needs before the rule looks (default 50).
    pub pause_after_reports: Option<u32>,
    /// Percent of those reports with a filtering code at which it pauses (default 10; 0 = never).
    pub pause_threshold_pct: Option<u32>,
    /// Twilio error codes that count as carrier filtering (default 30007 and 30034).
    pub pause_codes: Option<Vec<u32>>,
}

impl PauseRule {
    pub const DEFAULT_AFTER: u32 = 50;
    pub const DEFAULT_PCT: u32 = 10;
    pub const DEFAULT_CODES: [u32; 2] = [30007, 30034];

    /// `after_reports`: 1 to 100,000.
    pub fn parse_after(v: &str) -> Result<u32, String> {
        match v.trim().parse::<i64>() {
            Ok(n) if (1..=100_000).contains(&n) => Ok(n as u32),
            Ok(n) => Err(format!("must be 1 to 100000 delivery reports, not {n}")),
            Err(_) => Err(format!("{v:?} is not a whole number")),
        }
    }

    /// A whole percentage from 0 (never pause) to 100.
    pub fn parse_pct(v: &str) -> Result<u32, String> {
        match v.trim().trim_end_matches('%').parse::<i64>() {
            Ok(p) if (0..=100).contains(&p) => Ok(p as u32),
            Ok(p) => Err(format!("must be a percentage from 0 to 100, not {p}%")),
            Err(_) => Err(format!("{v:?} is not a whole percentage")),
        }
    }

    /// Comma-separated Twilio error codes Messenger knows (at most 20).
    pub fn parse_codes(v: &str) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let code: u32 = part.parse().map_err(|_| format!("{part:?} is not a Twilio error code"))?;
            if crate::twilio::error::describe(code).is_none() {
                return Err(format!("{code} is not a Twilio error code Messenger knows (such as 30007 or 30034)"));
            }
            if !out.contains(&code) {
                out.push(code);
            }
        }
        if out.is_empty() || out.len() > 20 {
            return Err(format!("must list 1 to 20 codes, not {}", out.len()));
        }
        Ok(out)
    }
}

/// What a customer without a Messaging Service is told (`customer add`, the dry run, the dashboard).
pub const NO_A2P_WARNING: &str = "no Messaging Service: since 2025-02-01 every US carrier blocks unregistered 10DLC \
     traffic, so texts from bare long codes may be filtered (Twilio 30034); register an A2P 10DLC campaign and set \
     --messaging-service";

/// At most `texts` texts to one tenant per `window`, across batches: `3/24h` (Maryland, Florida and Oklahoma cap
/// solicitations at three per 24 hours on one subject).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrequencyCap {
    pub texts: u32,
    pub window: std::time::Duration,
}

impl FrequencyCap {
    /// `<texts>/<window>`: 1 to 1,000 texts, a window of 1 minute to 31 days written `90m`, `24h` or `7d`.
    pub fn parse(v: &str) -> Result<Self, String> {
        let v = v.trim();
        let Some((n, w)) = v.split_once('/') else {
            return Err(format!("{v:?} is not texts/window (such as 3/24h)"));
        };
        let texts: u32 = match n.trim().parse::<i64>() {
            Ok(n) if (1..=1_000).contains(&n) => n as u32,
            _ => return Err(format!("{n:?} texts: must be a whole number from 1 to 1000")),
        };
        let w = w.trim();
        let (digits, unit) = w.split_at(w.find(|c: char| !c.is_ascii_digit()).unwrap_or(w.len()));
        let count: u64 = digits.parse().map_err(|_| format!("{w:?} is not a window such as 90m, 24h or 7d"))?;
        let secs = match unit {
            "m" => count * 60,
            "h" => count * 3_600,
            "d" => count * 86_400,
            _ => return Err(format!("{w:?} is not a window such as 90m, 24h or 7d")),
        };
        if !(60..=31 * 86_400).contains(&secs) {
            return Err(format!("the window {w:?} must be 1 minute to 31 days"));
        }
        Ok(FrequencyCap { texts, window: std::time::Duration::from_secs(secs) })
    }
}

impl std::fmt::Display for FrequencyCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.window.as_secs();
        if s % 86_400 == 0 && s >= 86_400 * 2 {
            write!(f, "{}/{}d", self.texts, s / 86_400)
        } else if s % 3_600 == 0 {
            write!(f, "{}/{}h", self.texts, s / 3_600)
        } else {
            write!(f, "{}/{}m", self.texts, s / 60)
        }
    }
}

/// A customer's consent settings (docs/DESIGN.md, "Consent").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsentSettings {
    /// The customer's own phrases that revoke consent wherever they appear in a reply (normalised), besides the
    /// table's (`shared/data/revocation-phrases.txt`).
    pub opt_out_words: Vec<String>,
    /// What happens to texts for a tenant whose reply is a suspected revocation, until a person decides.
    pub review_hold: ReviewHold,
    /// Text only tenants with an opt-in on record; the others are skipped (`no_consent`).
    pub require_consent: bool,
    /// The one text confirming a revocation Twilio does not confirm itself; `{name}` is the sender's name.
    /// `None`: the default ([`DEFAULT_CONFIRMATION`]).
    pub confirmation_text: Option<String>,
    /// Who the tenant is told has stopped texting them (`{name}`); `None`: the customer's id.
    pub sender_name: Option<String>,
}

/// The confirmation of a revocation, when the customer gives none.
pub const DEFAULT_CONFIRMATION: &str = "You won't get more texts from {name}. Reply START to resubscribe.";

impl ConsentSettings {
    /// The confirmation text for customer `id`, its `{name}` filled.
    pub fn confirmation(&self, id: &CustomerId) -> String {
        let name = self.sender_name.as_deref().unwrap_or(id.as_str());
        self.confirmation_text.as_deref().unwrap_or(DEFAULT_CONFIRMATION).replace("{name}", name)
    }
}

/// What happens to texts for a tenant under review (a suspected revocation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ReviewHold {
    /// Held (counted as held) until a person dismisses the review (they go) or confirms it (they end opted out).
    #[default]
    Hold,
    /// Sent as usual while the review waits.
    Send,
}

impl ReviewHold {
    pub fn parse(v: &str) -> Result<Self, String> {
        match v.trim() {
            "hold" => Ok(ReviewHold::Hold),
            "send" => Ok(ReviewHold::Send),
            other => Err(format!("must be hold or send, not {other:?}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewHold::Hold => "hold",
            ReviewHold::Send => "send",
        }
    }
}

/// A replaced events secret and until when (ms) it still signs. Stored as `<until ms>|<stored secret>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviousSecret {
    pub secret: StoredSecret,
    pub until_ms: i64,
}

impl PreviousSecret {
    /// The stored form, `<until ms>|<secret>`.
    pub fn parse(v: &str) -> Option<Self> {
        let (until, secret) = v.split_once('|')?;
        Some(Self { secret: StoredSecret(secret.to_owned()), until_ms: until.parse().ok()? })
    }

    /// The secret, if it still signs at `now_ms`.
    pub fn live_at(&self, now_ms: i64) -> Option<&StoredSecret> {
        (now_ms < self.until_ms).then_some(&self.secret)
    }
}

/// A secret as Redis holds it: sealed under `MESSENGER_SECRETS_KEY` (`enc1:…`), or in clear from before sealing
/// existed. Opened with [`crate::secrets::open`]; never in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSecret(pub String);

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredSecret(…)")
    }
}

impl std::fmt::Display for StoredSecret {
    /// The stored form (only for storing it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for PreviousSecret {
    /// The stored form (holds the secret: only for storing it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}|{}", self.until_ms, self.secret.0)
    }
}

/// A webhook signing secret (`whsec_` and base64): shown once when generated, never in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct EventsSecret(pub String);

impl std::fmt::Debug for EventsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventsSecret(…)")
    }
}

impl AsRef<str> for EventsSecret {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EventsSecret {
    /// The secret itself: only for storing it and showing it once.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn as_text<T: std::fmt::Display, S: serde::Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&v.to_string()),
        None => s.serialize_none(),
    }
}

impl Customer {
    /// A customer on the main account, buying any US local number, without a Messaging Service, on the fleet's
    /// quiet hours.
    pub fn new(id: CustomerId, max_numbers: u32) -> Self {
        Self {
            id,
            account_sid: None,
            area_code: None,
            max_numbers,
            messaging_service: None,
            quiet_hours: None,
            time_zone: None,
            monthly_spend_limit: None,
            pause: PauseRule::default(),
            max_texts_per_tenant: None,
            lookup: false,
            caps: Caps::default(),
            events: false,
            help_text: None,
            events_url: None,
            events_secret: None,
            events_secret_previous: None,
            events_disabled: None,
            consent: ConsentSettings::default(),
        }
    }

    /// Whether its recipients' lines are looked up (asked for, or needed by a carrier cap).
    pub fn looks_up(&self) -> bool {
        self.lookup || self.caps.need_lookups()
    }

    /// The quiet hours that apply to this customer's texts, given the fleet's.
    pub fn quiet_window(&self, fleet: QuietSetting) -> Option<crate::domain::QuietHours> {
        self.quiet_hours.unwrap_or(fleet).window()
    }
}

/// A change to one stored setting of a customer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Change<T> {
    /// Not mentioned: the stored value stays.
    #[default]
    Keep,
    /// Explicitly cleared: back to the default (the main account, any area code, no Messaging Service).
    Clear,
    Set(T),
}

impl<T> Change<T> {
    /// The value after the change, given the stored one.
    pub fn apply(self, stored: Option<T>) -> Option<T> {
        match self {
            Change::Keep => stored,
            Change::Clear => None,
            Change::Set(v) => Some(v),
        }
    }

    pub fn is_keep(&self) -> bool {
        matches!(self, Change::Keep)
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Change<U> {
        match self {
            Change::Keep => Change::Keep,
            Change::Clear => Change::Clear,
            Change::Set(v) => Change::Set(f(v)),
        }
    }
}

/// What to change in a customer's record. Fields left at [`Change::Keep`] are not written, so two updates of
/// different fields never undo each other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomerUpdate {
    pub account_sid: Change<AccountSid>,
    pub area_code: Change<AreaCode>,
    /// `Clear` = the fleet's default (`MESSENGER_MAX_NUMBERS`).
    pub max_numbers: Change<MaxNumbers>,
    pub messaging_service: Change<ServiceSid>,
    /// `Clear` = the fleet's quiet hours.
    pub quiet_hours: Change<QuietSetting>,
    pub time_zone: Change<TimeZone>,
    /// `Clear` = off.
    pub lookup: Change<bool>,
    /// `Clear` = no cap.
    pub tmobile_daily_cap: Change<u32>,
    pub att_per_minute: Change<u32>,
    pub per_second: Change<u32>,
    /// `Clear` = no limit. A change releases the texts the old limit held (they are looked at again at once).
    pub monthly_spend_limit: Change<Usd>,
    /// `Clear` = the defaults.
    pub pause_after_reports: Change<u32>,
    pub pause_threshold_pct: Change<u32>,
    pub pause_codes: Change<Vec<u32>>,
    /// `Clear` = no cap.
    pub max_texts_per_tenant: Change<FrequencyCap>,
    /// `Clear` = off.
    pub events: Change<bool>,
    pub help_text: Change<String>,
    /// Saving a URL turns events on and re-enables delivery stopped by a 410.
    pub events_url: Change<String>,
    pub events_secret: Change<StoredSecret>,
    /// Set by a rotation (the secret it replaced, and until when it still signs); cleared with the secret.
    pub events_secret_previous: Change<PreviousSecret>,
    /// `Clear` = none.
    pub opt_out_words: Change<Vec<String>>,
    /// `Clear` = hold.
    pub review_hold: Change<ReviewHold>,
    /// `Clear` = off.
    pub require_consent: Change<bool>,
    /// `Clear` = the default text.
    pub confirmation_text: Change<String>,
    /// `Clear` = the customer's id.
    pub sender_name: Change<String>,
}

impl CustomerUpdate {
    /// `stored` (or a new customer with `default_max` numbers) after this update.
    pub fn applied_to(&self, id: &CustomerId, stored: Option<&Customer>, default_max: MaxNumbers) -> Customer {
        let max = match &self.max_numbers {
            Change::Set(m) => m.get(),
            Change::Clear => default_max.get(),
            Change::Keep => stored.map_or(default_max.get(), |c| c.max_numbers),
        };
        Customer {
            id: id.clone(),
            account_sid: self.account_sid.clone().apply(stored.and_then(|c| c.account_sid.clone())),
            area_code: self.area_code.clone().apply(stored.and_then(|c| c.area_code.clone())),
            max_numbers: max,
            messaging_service: self.messaging_service.clone().apply(stored.and_then(|c| c.messaging_service.clone())),
            quiet_hours: self.quiet_hours.clone().apply(stored.and_then(|c| c.quiet_hours)),
            time_zone: self.time_zone.clone().apply(stored.and_then(|c| c.time_zone)),
            lookup: self.lookup.clone().apply(stored.map(|c| c.lookup)).unwrap_or(false),
            caps: Caps {
                tmobile_daily: self.tmobile_daily_cap.clone().apply(stored.and_then(|c| c.caps.tmobile_daily)),
                att_per_minute: self.att_per_minute.clone().apply(stored.and_then(|c| c.caps.att_per_minute)),
                per_second: self.per_second.clone().apply(stored.and_then(|c| c.caps.per_second)),
            },
            monthly_spend_limit: self.monthly_spend_limit.clone().apply(stored.and_then(|c| c.monthly_spend_limit)),
            pause: PauseRule {
                pause_after_reports: self
                    .pause_after_reports
                    .clone()
                    .apply(stored.and_then(|c| c.pause.pause_after_reports)),
                pause_threshold_pct: self
                    .pause_threshold_pct
                    .clone()
                    .apply(stored.and_then(|c| c.pause.pause_threshold_pct)),
                pause_codes: self.pause_codes.clone().apply(stored.and_then(|c| c.pause.pause_codes.clone())),
            },
            max_texts_per_tenant: self.max_texts_per_tenant.clone().apply(stored.and_then(|c| c.max_texts_per_tenant)),
            events: self.events.clone().apply(stored.map(|c| c.events)).unwrap_or(false),
            help_text: self.help_text.clone().apply(stored.and_then(|c| c.help_text.clone())),
            events_url: self.events_url.clone().apply(stored.and_then(|c| c.events_url.clone())),
            events_secret: self.events_secret.clone().apply(stored.and_then(|c| c.events_secret.clone())),
            events_secret_previous: self
                .events_secret_previous
                .clone()
                .apply(stored.and_then(|c| c.events_secret_previous.clone())),
            events_disabled: if self.events_url.is_keep() {
                stored.and_then(|c| c.events_disabled.clone())
            } else {
                None
            },
            consent: ConsentSettings {
                opt_out_words: self
                    .opt_out_words
                    .clone()
                    .apply(stored.map(|c| c.consent.opt_out_words.clone()))
                    .unwrap_or_default(),
                review_hold: self.review_hold.clone().apply(stored.map(|c| c.consent.review_hold)).unwrap_or_default(),
                require_consent: self
                    .require_consent
                    .clone()
                    .apply(stored.map(|c| c.consent.require_consent))
                    .unwrap_or(false),
                confirmation_text: self
                    .confirmation_text
                    .clone()
                    .apply(stored.and_then(|c| c.consent.confirmation_text.clone())),
                sender_name: self.sender_name.clone().apply(stored.and_then(|c| c.consent.sender_name.clone())),
            },
        }
    }
}

fn join_codes(codes: &[u32]) -> String {
    codes.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn stored_field<T: AsRef<str>>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.as_ref().to_owned()).unwrap_or_default()
}

/// What a change writes to the stored field: nothing (`Keep`), the empty string (`Clear`), or the value.
fn written<T: std::fmt::Display>(c: &Change<T>) -> Option<String> {
    match c {
        Change::Keep => None,
        Change::Clear => Some(String::new()),
        Change::Set(v) => Some(v.to_string()),
    }
}

/// Writes `update` to the customer's record, creating the customer (with `default_max` numbers unless the update
/// says otherwise) if it is new. Only the fields the update changes are written. Returns true if it was new.
/// Counters kept in the same hash (reservation ids, fill cursor, open jobs) are never touched.
pub async fn update(
    conn: &mut Conn,
    id: &CustomerId,
    update: &CustomerUpdate,
    default_max: MaxNumbers,
) -> redis::RedisResult<bool> {
    let k = CustomerKeys::new(id);
    let max = match &update.max_numbers {
        Change::Clear => Change::Set(default_max),
        other => other.clone(),
    };
    let fields: Vec<(&str, String)> = [
        ("account_sid", written(&update.account_sid)),
        ("area_code", written(&update.area_code)),
        ("max_numbers", written(&max)),
        ("messaging_service", written(&update.messaging_service)),
        ("quiet_hours", written(&update.quiet_hours)),
        ("time_zone", written(&update.time_zone)),
        ("lookup", written(&update.lookup.clone().map(|on| if on { "1" } else { "" }))),
        ("cap_tmo", written(&update.tmobile_daily_cap)),
        ("cap_att", written(&update.att_per_minute)),
        ("cap_mps", written(&update.per_second)),
        ("spend_limit", written(&update.monthly_spend_limit.clone().map(|u| u.micros()))),
        ("pause_min", written(&update.pause_after_reports)),
        ("pause_pct", written(&update.pause_threshold_pct)),
        ("pause_codes", written(&update.pause_codes.clone().map(|c| join_codes(&c)))),
        ("freq_n", written(&update.max_texts_per_tenant.clone().map(|f| f.texts))),
        ("freq_ms", written(&update.max_texts_per_tenant.clone().map(|f| f.window.as_millis()))),
        ("events", written(&update.events.clone().map(|on| if on { "1" } else { "" }))),
        ("help_text", written(&update.help_text)),
        ("events_url", written(&update.events_url)),
        ("events_secret", written(&update.events_secret)),
        ("events_secret_prev", written(&update.events_secret_previous)),
        ("events_disabled", (!update.events_url.is_keep()).then(String::new)),
        ("optout_words", written(&update.opt_out_words.clone().map(|w| w.join(",")))),
        ("review", written(&update.review_hold.clone().map(|h| if h == ReviewHold::Send { "send" } else { "" }))),
        ("consent", written(&update.require_consent.clone().map(|on| if on { "1" } else { "" }))),
        ("confirm_text", written(&update.confirmation_text)),
        ("sender_name", written(&update.sender_name)),
    ]
    .into_iter()
    .filter_map(|(f, v)| Some((f, v?)))
    .collect();
    // The set entry goes first: a set member without a record is skipped by readers; a record missing from the
    // set would be invisible to the reconciler. (Two commands: the set and the record live in different slots of a
    // Redis Cluster.)
    let added: i64 = conn.sadd(keys::CUSTOMERS, id.as_str()).await?;
    let mut pipe = redis::pipe();
    // A record is a customer only with a max_numbers; a new one gets the default unless the update sets it.
    pipe.hset_nx(k.cfg(), "max_numbers", default_max.get()).ignore();
    if !fields.is_empty() {
        pipe.hset_multiple(k.cfg(), &fields).ignore();
    }
    let (): () = pipe.query_async(conn).await?;
    if !update.monthly_spend_limit.is_keep() {
        // Texts the old limit held are looked at again now: under the new one they go, or wait again.
        let _: i64 = crate::scripts::SPEND_RELEASE.key(k.spend_wait()).key(k.scheduled()).run(conn).await?;
    }
    Ok(added == 1)
}

/// Creates or replaces a customer's settings as a whole (tests and tools). Returns true if it was new.
pub async fn upsert(conn: &mut Conn, c: &Customer) -> redis::RedisResult<bool> {
    let k = CustomerKeys::new(&c.id);
    let added: i64 = conn.sadd(keys::CUSTOMERS, c.id.as_str()).await?;
    let (): () = redis::pipe()
        .hset_multiple(
            k.cfg(),
            &[
                ("account_sid", stored_field(&c.account_sid)),
                ("area_code", c.area_code.as_ref().map(|a| a.to_string()).unwrap_or_default()),
                ("max_numbers", c.max_numbers.to_string()),
                ("messaging_service", stored_field(&c.messaging_service)),
                ("quiet_hours", c.quiet_hours.map(|q| q.to_string()).unwrap_or_default()),
                ("time_zone", stored_field(&c.time_zone)),
                ("lookup", if c.lookup { "1".into() } else { String::new() }),
                ("cap_tmo", c.caps.tmobile_daily.map(|v| v.to_string()).unwrap_or_default()),
                ("cap_att", c.caps.att_per_minute.map(|v| v.to_string()).unwrap_or_default()),
                ("cap_mps", c.caps.per_second.map(|v| v.to_string()).unwrap_or_default()),
                ("spend_limit", c.monthly_spend_limit.map(|v| v.micros().to_string()).unwrap_or_default()),
                ("pause_min", c.pause.pause_after_reports.map(|v| v.to_string()).unwrap_or_default()),
                ("pause_pct", c.pause.pause_threshold_pct.map(|v| v.to_string()).unwrap_or_default()),
                ("pause_codes", c.pause.pause_codes.as_deref().map(join_codes).unwrap_or_default()),
                ("freq_n", c.max_texts_per_tenant.map(|f| f.texts.to_string()).unwrap_or_default()),
                ("freq_ms", c.max_texts_per_tenant.map(|f| f.window.as_millis().to_string()).unwrap_or_default()),
                ("events", if c.events { "1".into() } else { String::new() }),
                ("help_text", c.help_text.clone().unwrap_or_default()),
                ("events_url", c.events_url.clone().unwrap_or_default()),
                ("events_secret", c.events_secret.as_ref().map(|s| s.0.clone()).unwrap_or_default()),
                ("events_secret_prev", c.events_secret_previous.as_ref().map(|p| p.to_string()).unwrap_or_default()),
                ("optout_words", c.consent.opt_out_words.join(",")),
                ("review", if c.consent.review_hold == ReviewHold::Send { "send".into() } else { String::new() }),
                ("consent", if c.consent.require_consent { "1".into() } else { String::new() }),
                ("confirm_text", c.consent.confirmation_text.clone().unwrap_or_default()),
                ("sender_name", c.consent.sender_name.clone().unwrap_or_default()),
            ],
        )
        .ignore()
        .query_async(conn)
        .await?;
    Ok(added == 1)
}

/// Re-writes fields of a customer's record in a new form (secrets sealed under the current key): each
/// `(field, value read, new value)` is written only if the field still holds the value read, so a change saved
/// meanwhile is never undone. Returns how many were written.
pub async fn reseal(conn: &mut Conn, id: &CustomerId, swaps: &[(&str, String, String)]) -> redis::RedisResult<u64> {
    let k = CustomerKeys::new(id);
    let mut call = crate::scripts::HASH_SWAP.key(k.cfg());
    for (field, read, new) in swaps {
        call.arg(*field).arg(read).arg(new);
    }
    call.run(conn).await
}

/// A customer's consent settings alone (one `HMGET`: what the inbound webhook needs for every reply).
pub async fn consent_settings(conn: &mut Conn, id: &CustomerId) -> redis::RedisResult<ConsentSettings> {
    let k = CustomerKeys::new(id);
    let f: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(k.cfg())
        .arg(&["optout_words", "review", "consent", "confirm_text", "sender_name"])
        .query_async(conn)
        .await?;
    let field = |i: usize| f.get(i).cloned().flatten().filter(|v| !v.is_empty());
    let (words, review, consent, text, name) = (field(0), field(1), field(2), field(3), field(4));
    Ok(ConsentSettings {
        opt_out_words: words
            .map(|w| w.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default(),
        review_hold: if review.as_deref() == Some("send") { ReviewHold::Send } else { ReviewHold::Hold },
        require_consent: consent.as_deref() == Some("1"),
        confirmation_text: text.filter(|t| !t.is_empty()),
        sender_name: name.filter(|t| !t.is_empty()),
    })
}

pub async fn get(conn: &mut Conn, id: &CustomerId) -> redis::RedisResult<Option<Customer>> {
    let k = CustomerKeys::new(id);
    let m: HashMap<String, String> = conn.hgetall(k.cfg()).await?;
    if m.is_empty() {
        return Ok(None);
    }
    Ok(Some(Customer {
        id: id.clone(),
        account_sid: m.get("account_sid").and_then(|s| AccountSid::parse(s).ok()),
        area_code: m.get("area_code").and_then(|s| AreaCode::parse(s).ok()),
        max_numbers: m.get("max_numbers").and_then(|s| s.parse().ok()).unwrap_or(0),
        messaging_service: m.get("messaging_service").and_then(|s| ServiceSid::parse(s).ok()),
        quiet_hours: m.get("quiet_hours").and_then(|s| QuietSetting::parse(s).ok()),
        time_zone: m.get("time_zone").and_then(|s| TimeZone::parse(s).ok()),
        lookup: m.get("lookup").map(String::as_str) == Some("1"),
        caps: Caps {
            tmobile_daily: m.get("cap_tmo").and_then(|s| s.parse().ok()),
            att_per_minute: m.get("cap_att").and_then(|s| s.parse().ok()),
            per_second: m.get("cap_mps").and_then(|s| s.parse().ok()),
        },
        monthly_spend_limit: m.get("spend_limit").and_then(|s| s.parse().ok()).map(Usd::from_micros),
        max_texts_per_tenant: match (
            m.get("freq_n").and_then(|s| s.parse().ok()),
            m.get("freq_ms").and_then(|s| s.parse().ok()),
        ) {
            (Some(texts), Some(ms)) => Some(FrequencyCap { texts, window: std::time::Duration::from_millis(ms) }),
            _ => None,
        },
        pause: PauseRule {
            pause_after_reports: m.get("pause_min").and_then(|s| s.parse().ok()),
            pause_threshold_pct: m.get("pause_pct").and_then(|s| s.parse().ok()),
            pause_codes: m
                .get("pause_codes")
                .filter(|s| !s.is_empty())
                .map(|s| s.split(',').filter_map(|c| c.parse().ok()).collect()),
        },
        events: m.get("events").map(String::as_str) == Some("1"),
        help_text: m.get("help_text").filter(|s| !s.is_empty()).cloned(),
        events_url: m.get("events_url").filter(|s| !s.is_empty()).cloned(),
        events_secret: m.get("events_secret").filter(|s| !s.is_empty()).map(|s| StoredSecret(s.clone())),
        events_secret_previous: m.get("events_secret_prev").and_then(|s| PreviousSecret::parse(s)),
        events_disabled: m.get("events_disabled").filter(|s| !s.is_empty()).cloned(),
        consent: ConsentSettings {
            opt_out_words: m
                .get("optout_words")
                .map(|w| w.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect())
                .unwrap_or_default(),
            review_hold: if m.get("review").map(String::as_str) == Some("send") {
                ReviewHold::Send
            } else {
                ReviewHold::Hold
            },
            require_consent: m.get("consent").map(String::as_str) == Some("1"),
            confirmation_text: m.get("confirm_text").filter(|s| !s.is_empty()).cloned(),
            sender_name: m.get("sender_name").filter(|s| !s.is_empty()).cloned(),
        },
    }))
}

pub async fn list(conn: &mut Conn) -> redis::RedisResult<Vec<CustomerId>> {
    let ids: Vec<String> = conn.smembers(keys::CUSTOMERS).await?;
    let mut out: Vec<CustomerId> = ids.iter().filter_map(|s| CustomerId::parse(s).ok()).collect();
    out.sort();
    Ok(out)
}

/// One number of a pool, with its use of the current window.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NumberUsage {
    pub number: String,
    pub sid: String,
    /// When it was bought (Redis ms).
    pub bought_ms: i64,
    /// When it last sent (Redis ms); `None` if it never did.
    pub last_send_ms: Option<i64>,
    pub sent: u32,
    pub received: u32,
    pub limit: u32,
    pub available: u32,
}

#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolReport {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub customer: CustomerId,
    pub numbers: Vec<NumberUsage>,
    pub max_numbers: u32,
    pub pending_purchases: u32,
    /// Numbers out of the pool whose release Twilio has not confirmed yet.
    pub pending_releases: u32,
    pub messaging_service_sid: Option<String>,
    /// What the numbers cost per month at `MESSENGER_NUMBER_MONTHLY_COST` (set by the caller).
    pub monthly_cost: Option<f64>,
    /// The customer's carrier caps and today's use (set by the caller, when it has caps or looks lines up).
    pub carriers: Option<crate::carriers::CapUse>,
    /// The month spend is counted in (`2026-12`, in the customer's time zone; UTC when it has none).
    pub spend_month: String,
    /// What the customer spent this month, in dollars: texts, numbers bought and lookups at the fleet's prices.
    pub spend_this_month: f64,
    /// The customer's monthly spend limit in dollars; `None`: no limit.
    pub monthly_spend_limit: Option<f64>,
    pub window_secs: u64,
    pub daily_quota: u32,
    pub conversational_cap: u32,
}

impl PoolReport {
    pub fn total_available(&self) -> u32 {
        self.numbers.iter().map(|n| n.available).sum()
    }

    /// Fills in the monthly cost at `per_number` a month.
    pub fn with_cost(mut self, per_number: f64) -> Self {
        self.monthly_cost = Some((self.numbers.len() as f64 * per_number * 100.0).round() / 100.0);
        self
    }
}

/// Reads a customer's numbers and their window counts at Redis time, without modifying anything.
pub async fn pool(conn: &mut Conn, id: &CustomerId, quota: &QuotaSettings) -> redis::RedisResult<Option<PoolReport>> {
    let Some(customer) = get(conn, id).await? else {
        return Ok(None);
    };
    let k = CustomerKeys::new(id);
    type Read =
        ((i64, i64), Vec<(String, f64)>, HashMap<String, String>, HashMap<String, i64>, i64, i64, [Option<String>; 2]);
    let (time, numbers, meta, last, intents, releases, spend): Read = redis::pipe()
        .cmd("TIME")
        .zrange_withscores(k.pool(), 0, -1)
        .hgetall(k.pool_meta())
        .hgetall(k.pool_last())
        .hlen(k.intents())
        .hlen(k.releases())
        .cmd("HMGET")
        .arg(k.cfg())
        .arg(&["spend_m", "spend_u"])
        .query_async(conn)
        .await?;
    let now_ms = time.0 * 1000 + time.1 / 1000;
    let spend = crate::spend::MonthSpend::from_fields(
        &crate::spend::month_of(
            chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default(),
            customer.time_zone.map_or(chrono_tz::UTC, |z| z.0),
        ),
        spend[0].as_deref(),
        spend[1].as_deref(),
        customer.monthly_spend_limit.map(|u| u.micros().to_string()).as_deref(),
    );
    let horizon = now_ms - (quota.window_ms() + quota.window_slack_ms()) as i64;
    let mut pipe = redis::pipe();
    for (n, _) in &numbers {
        pipe.lrange(k.window(n), 0, -1).zcount(k.received(n), format!("({horizon}"), "+inf");
    }
    let counts: Vec<(Vec<String>, u32)> = if numbers.is_empty() { Vec::new() } else { pipe.query_async(conn).await? };
    let usage = numbers
        .iter()
        .zip(counts)
        .map(|((n, bought), (window, received))| {
            let sent = keys::window_entries_after(&window, horizon) as u32;
            let limit = (quota.daily_quota + received).min(quota.conversational_cap);
            NumberUsage {
                number: n.clone(),
                sid: meta.get(n).and_then(|m| m.split('|').next()).unwrap_or_default().to_owned(),
                bought_ms: *bought as i64,
                last_send_ms: last.get(n).copied(),
                sent,
                received,
                limit,
                available: limit.saturating_sub(sent),
            }
        })
        .collect();
    Ok(Some(PoolReport {
        customer: id.clone(),
        numbers: usage,
        max_numbers: customer.max_numbers,
        pending_purchases: intents as u32,
        pending_releases: releases as u32,
        messaging_service_sid: customer.messaging_service.map(|s| s.to_string()),
        monthly_cost: None,
        carriers: None,
        spend_month: spend.month.clone(),
        spend_this_month: spend.spent.dollars(),
        monthly_spend_limit: spend.limit.map(Usd::dollars),
        window_secs: quota.window.as_secs(),
        daily_quota: quota.daily_quota,
        conversational_cap: quota.conversational_cap,
    }))
}

/// What customers spent this month and their limits (one HMGET each, all in flight at once), at Redis time
/// `now_ms`, each in its own time zone's month.
pub async fn month_spends(
    conn: &Conn,
    ids: &[CustomerId],
    now_ms: i64,
) -> redis::RedisResult<Vec<crate::spend::MonthSpend>> {
    let now = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    futures::future::try_join_all(ids.iter().map(|id| {
        let mut conn = conn.clone();
        async move {
            let f: [Option<String>; 4] = redis::cmd("HMGET")
                .arg(CustomerKeys::new(id).cfg())
                .arg(&["spend_m", "spend_u", "spend_limit", "time_zone"])
                .query_async(&mut conn)
                .await?;
            let tz = f[3].as_deref().and_then(|z| TimeZone::parse(z).ok()).map_or(chrono_tz::UTC, |z| z.0);
            let month = crate::spend::month_of(now, tz);
            Ok(crate::spend::MonthSpend::from_fields(
                &month,
                f[0].as_deref(),
                f[1].as_deref(),
                f[2].as_deref().filter(|v| !v.is_empty()),
            ))
        }
    }))
    .await
}

/// How many of a customer's jobs are ready, scheduled (retries and deferrals) and in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueDepth {
    pub ready: i64,
    pub scheduled: i64,
    pub in_flight: i64,
}

/// The queue depths of these customers: one pipeline per customer (its keys share one slot of a Redis Cluster), all
/// in flight at once. Three O(1) commands per customer, whatever the backlog.
pub async fn queue_depths(conn: &Conn, ids: &[CustomerId]) -> redis::RedisResult<Vec<QueueDepth>> {
    futures::future::try_join_all(ids.iter().map(|id| {
        let mut conn = conn.clone();
        let k = CustomerKeys::new(id);
        async move {
            let (ready, scheduled, in_flight): (i64, i64, i64) =
                redis::pipe().llen(k.queue()).zcard(k.scheduled()).zcard(k.inflight()).query_async(&mut conn).await?;
            Ok(QueueDepth { ready, scheduled, in_flight })
        }
    }))
    .await
}

/// Redis's clock, in ms. Everything time-based in Messenger uses it, never a process clock.
pub async fn redis_now_ms(conn: &mut Conn) -> redis::RedisResult<i64> {
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(s * 1000 + us / 1000)
}
