//! Customers: one update rule for every front end. A field the caller does not mention keeps its stored value;
//! clearing one is explicit ([`Change::Clear`]: the CLI's `--account-sid main`, JSON `"account_sid": null`).

use shared::carriers::Caps;
use shared::customers::{self, Change, Customer, CustomerUpdate, EventsSecret, PreviousSecret, StoredSecret};
use shared::domain::{AccountSid, AreaCode, CustomerId, MaxNumbers, QuietSetting, ServiceSid, TimeZone};
use shared::secrets::{self, Keyring};
use shared::twilio::TwilioError;
use shared::twilio::accounts::{TokenError, check_subaccount};

use super::{Deps, OpsError, Problems};

/// A change to a customer as the caller wrote it, not yet parsed. Field names in errors: `account_sid`,
/// `area_code`, `max_numbers`, `messaging_service_sid`, `quiet_hours`, `time_zone`, `lookup`, `tmobile_daily_cap`,
/// `att_per_minute`, `per_second`, `events`, `help_text`, `events_url`, `events_secret`.
#[derive(Clone, Debug, Default)]
pub struct CustomerInput {
    pub account_sid: Change<String>,
    pub area_code: Change<String>,
    /// `Clear`: back to the fleet's default (`MESSENGER_MAX_NUMBERS`).
    pub max_numbers: Change<u32>,
    pub messaging_service_sid: Change<String>,
    /// A window such as `20:00-09:00`, or `off`; `Clear`: the fleet's (`MESSENGER_QUIET_HOURS`).
    pub quiet_hours: Change<String>,
    /// An IANA zone such as `America/New_York`: quiet hours apply there too, and for numbers whose zone is unknown.
    pub time_zone: Change<String>,
    /// Look recipients' lines up before texting them (always, when a carrier cap needs their carriers).
    pub lookup: Change<bool>,
    /// Carrier caps: whole numbers; `Clear` = no cap. Field names `tmobile_daily_cap`, `att_per_minute`,
    /// `per_second`.
    pub tmobile_daily_cap: Change<String>,
    pub att_per_minute: Change<String>,
    pub per_second: Change<String>,
    /// What the customer may spend a month, in dollars (`6`, `6.00`); `Clear` = no limit. Field name
    /// `monthly_spend_limit`.
    pub monthly_spend_limit: Change<String>,
    /// The deliverability pause: delivery reports before it looks (1 to 100,000), the percent of them with a
    /// filtering code that pauses a batch (0 to 100; 0 = never), and the codes (comma-separated Twilio codes).
    /// `Clear` = the defaults (50, 10, 30007 and 30034). Field names `pause_after_reports`, `pause_threshold_pct`,
    /// `pause_codes`.
    pub pause_after_reports: Change<String>,
    pub pause_threshold_pct: Change<String>,
    pub pause_codes: Change<String>,
    /// At most this many texts to one tenant per window across batches, `3/24h` (urgent batches exempt); `Clear`
    /// = no cap. Field name `max_texts_per_tenant`.
    pub max_texts_per_tenant: Change<String>,
    /// Record events (replies, opt-outs, each message's outcome) for the app's `GET …/events`.
    pub events: Change<bool>,
    /// The answer to HELP / INFO: 1 to 320 characters, no control characters.
    pub help_text: Change<String>,
    /// Where events are delivered: an https URL of a public address (`crate::ssrf`). Setting it turns events on.
    pub events_url: Change<String>,
    /// `whsec_` and base64 of 24 to 64 bytes; generated (and shown once) when a URL is set and none is stored.
    pub events_secret: Change<String>,
    /// The customer's own phrases that revoke consent in a reply, comma-separated (at most 50 of 64 characters).
    pub opt_out_words: Change<String>,
    /// `hold` (default) or `send`: what a suspected revocation does to the tenant's texts until a person decides.
    pub review_hold: Change<String>,
    /// Text only tenants with an opt-in on record.
    pub require_consent: Change<bool>,
    /// The one text confirming a revocation in words (1 to 320 characters; `{name}` is the sender's name).
    pub confirmation_text: Change<String>,
    /// Who the tenant is told has stopped texting them (1 to 60 characters).
    pub sender_name: Change<String>,
}

/// A saved customer.
#[derive(Clone, Debug)]
pub struct Saved {
    pub customer: Customer,
    pub created: bool,
    /// What could not be checked (Twilio unreachable or not configured) or deserves attention (a suspended
    /// subaccount). The change was saved anyway.
    pub warnings: Vec<String>,
    /// The events secret Messenger generated for this save: shown to the caller this once, never again.
    pub generated_secret: Option<EventsSecret>,
}

/// Parses `input` into an update and the secret it sets (sealed later); every problem is named.
fn parse(input: CustomerInput) -> Result<(CustomerUpdate, Change<EventsSecret>), OpsError> {
    let mut p = Problems::default();
    let secret = parse_change(&mut p, "events_secret", input.events_secret, events_secret);
    let update = CustomerUpdate {
        account_sid: parse_change(&mut p, "account_sid", input.account_sid, AccountSid::parse),
        area_code: parse_change(&mut p, "area_code", input.area_code, AreaCode::parse),
        max_numbers: match input.max_numbers {
            Change::Set(n) => p.check("max_numbers", MaxNumbers::new(n)).map_or(Change::Keep, Change::Set),
            Change::Clear => Change::Clear,
            Change::Keep => Change::Keep,
        },
        messaging_service: parse_change(
            &mut p,
            "messaging_service_sid",
            input.messaging_service_sid,
            ServiceSid::parse,
        ),
        quiet_hours: parse_change(&mut p, "quiet_hours", input.quiet_hours, QuietSetting::parse),
        time_zone: parse_change(&mut p, "time_zone", input.time_zone, TimeZone::parse),
        lookup: input.lookup,
        tmobile_daily_cap: parse_change(&mut p, "tmobile_daily_cap", input.tmobile_daily_cap, |v| {
            cap(v, Caps::TMOBILE_DAILY_MAX)
        }),
        att_per_minute: parse_change(&mut p, "att_per_minute", input.att_per_minute, |v| {
            cap(v, Caps::ATT_PER_MINUTE_MAX)
        }),
        per_second: parse_change(&mut p, "per_second", input.per_second, |v| cap(v, Caps::PER_SECOND_MAX)),
        monthly_spend_limit: parse_change(&mut p, "monthly_spend_limit", input.monthly_spend_limit, |v| {
            shared::spend::Usd::parse(v)
        }),
        pause_after_reports: parse_change(
            &mut p,
            "pause_after_reports",
            input.pause_after_reports,
            customers::PauseRule::parse_after,
        ),
        pause_threshold_pct: parse_change(
            &mut p,
            "pause_threshold_pct",
            input.pause_threshold_pct,
            customers::PauseRule::parse_pct,
        ),
        pause_codes: parse_change(&mut p, "pause_codes", input.pause_codes, customers::PauseRule::parse_codes),
        max_texts_per_tenant: parse_change(
            &mut p,
            "max_texts_per_tenant",
            input.max_texts_per_tenant,
            customers::FrequencyCap::parse,
        ),
        events: input.events,
        help_text: parse_change(&mut p, "help_text", input.help_text, help_text),
        // Checked (with a DNS lookup) in `save`.
        events_url: input.events_url,
        // Both set by `seal_secret` in `save`, never by the caller.
        events_secret: Change::Keep,
        events_secret_previous: Change::Keep,
        opt_out_words: parse_change(&mut p, "opt_out_words", input.opt_out_words, |v| {
            shared::domain::revocation::parse_customer_words(v)
        }),
        review_hold: parse_change(&mut p, "review_hold", input.review_hold, customers::ReviewHold::parse),
        require_consent: input.require_consent,
        confirmation_text: parse_change(&mut p, "confirmation_text", input.confirmation_text, help_text),
        sender_name: parse_change(&mut p, "sender_name", input.sender_name, |v| short_text(v, 60)),
    };
    p.finish()?;
    Ok((update, secret))
}

/// A HELP answer: what a tenant is sent back, so short enough for two segments and plain text.
fn help_text(v: &str) -> Result<String, String> {
    let v = v.trim();
    let n = v.chars().count();
    if n == 0 || n > 320 {
        return Err(format!("must be 1 to 320 characters, not {n}"));
    }
    if v.chars().any(char::is_control) {
        return Err("may not contain control characters (line breaks included)".into());
    }
    Ok(v.to_owned())
}

/// A name: 1 to `max` characters on one line.
fn short_text(v: &str, max: usize) -> Result<String, String> {
    let v = v.trim();
    let n = v.chars().count();
    if n == 0 || n > max {
        return Err(format!("must be 1 to {max} characters, not {n}"));
    }
    if v.chars().any(char::is_control) {
        return Err("may not contain control characters".into());
    }
    Ok(v.to_owned())
}

/// A webhook signing secret as Standard Webhooks writes them.
fn events_secret(v: &str) -> Result<EventsSecret, String> {
    use base64::Engine;
    let raw = v.trim().strip_prefix("whsec_").ok_or("must start with whsec_ (Standard Webhooks' form)")?;
    let key = base64::engine::general_purpose::STANDARD.decode(raw).map_err(|_| "is not whsec_ and base64")?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!("must hold 24 to 64 bytes, not {}", key.len()));
    }
    Ok(EventsSecret(format!("whsec_{raw}")))
}

/// A new signing secret: 32 random bytes.
fn new_secret() -> EventsSecret {
    use base64::Engine;
    let key: [u8; 32] = rand::random();
    EventsSecret(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key)))
}

/// A carrier cap: a whole number within `1..=max`.
fn cap(v: &str, max: u32) -> Result<u32, String> {
    let n: i64 = v.trim().parse().map_err(|_| format!("{v:?} is not a whole number (or `none` for no cap)"))?;
    let n = u32::try_from(n).map_err(|_| format!("must be between 1 and {max}, not {n}"))?;
    Caps::bound(n, max).map_err(|e| e.0)
}

/// A set value parsed with `parse` (its problem noted under `field`); `Keep` and `Clear` as they are.
fn parse_change<T, E: std::fmt::Display>(
    p: &mut Problems,
    field: &str,
    change: Change<String>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Change<T> {
    match change {
        Change::Set(v) => p.check(field, parse(&v)).map_or(Change::Keep, Change::Set),
        Change::Clear => Change::Clear,
        Change::Keep => Change::Keep,
    }
}

/// Creates or updates customer `id`: parses the input, applies it to the stored record, checks the result (a
/// subaccount and a Messaging Service together are not supported) and what it newly names with Twilio (a definite
/// "no" rejects the request), then writes only the fields that change.
pub async fn save(deps: &Deps, id: &CustomerId, input: CustomerInput) -> Result<Saved, OpsError> {
    let (mut update, mut secret) = parse(input)?;
    let keys = deps.settings.events.keys.as_ref();
    if matches!(secret, Change::Set(_)) && keys.is_none() {
        return Err(OpsError::NotConfigured(NO_KEY.into()));
    }
    if let Change::Set(url) = &update.events_url {
        let url = crate::ssrf::check_url(url, deps.settings.events.allow_private)
            .await
            .map_err(|e| OpsError::invalid("events_url", e))?;
        update.events_url = Change::Set(url.to_string());
        if update.events.is_keep() {
            update.events = Change::Set(true);
        }
    }
    let mut conn = deps.conn();
    let stored = customers::get(&mut conn, id).await?;
    let mut generated_secret = None;
    let has_secret = stored.as_ref().is_some_and(|c| c.events_secret.is_some());
    if matches!(update.events_url, Change::Set(_)) && secret.is_keep() && !has_secret {
        if keys.is_none() {
            return Err(OpsError::NotConfigured(NO_KEY.into()));
        }
        let new = new_secret();
        secret = Change::Set(new.clone());
        generated_secret = Some(new);
    }
    seal_secret(&mut update, secret, stored.as_ref(), deps.settings.events.secret_overlap, keys, id);
    let after = update.applied_to(id, stored.as_ref(), deps.settings.default_max_numbers);
    if after.account_sid.is_some() && after.messaging_service.is_some() {
        let field = if update.messaging_service.is_keep() { "account_sid" } else { "messaging_service_sid" };
        return Err(OpsError::invalid(
            field,
            "a Messaging Service for a customer on a subaccount is not supported yet: Messenger manages Messaging \
             Services with the main account's credentials, and Twilio lets those reach only the main account's \
             services",
        ));
    }
    let mut warnings = Vec::new();
    if after.messaging_service.is_none() {
        if deps.settings.require_a2p {
            return Err(OpsError::invalid(
                "messaging_service_sid",
                "MESSENGER_REQUIRE_A2P is on: every customer needs a Messaging Service (an A2P 10DLC campaign's \
                 sender pool) to text US long codes",
            ));
        }
        warnings.push(customers::NO_A2P_WARNING.to_owned());
    }
    if let Change::Set(account) = &update.account_sid {
        check_account(deps, account, &mut warnings).await?;
    }
    if let Change::Set(service) = &update.messaging_service {
        check_service(deps, service, &mut warnings).await?;
    }
    let new_url = match &update.events_url {
        Change::Set(url) => stored.as_ref().and_then(|c| c.events_url.as_deref()) != Some(url.as_str()),
        _ => false,
    };
    if new_url {
        // Before the URL is stored, so no deliverer sees it without a starting point.
        super::events::start_delivery_here(deps, id).await?;
    }
    let created = customers::update(&mut conn, id, &update, deps.settings.default_max_numbers).await?;
    Ok(Saved { customer: after, created, warnings, generated_secret })
}

/// Why a secret cannot be saved without `MESSENGER_SECRETS_KEY`.
pub const NO_KEY: &str = "MESSENGER_SECRETS_KEY is not set: Messenger keeps events signing secrets only sealed, and \
     needs the key to seal one (32 random bytes in base64, `openssl rand -base64 32`, the same on every producer)";

/// The secret change as stored: a new secret sealed under the current key (for this customer only). A new secret
/// replacing another keeps the old one signing beside it for `overlap`, so the app can switch over without
/// rejecting a delivery; clearing the secret ends any overlap. `keys` is present whenever `secret` is set.
fn seal_secret(
    update: &mut CustomerUpdate,
    secret: Change<EventsSecret>,
    stored: Option<&Customer>,
    overlap: std::time::Duration,
    keys: Option<&Keyring>,
    id: &CustomerId,
) {
    let owner = id.as_str();
    match (secret, keys) {
        (Change::Keep, _) => {}
        (Change::Clear, _) => {
            update.events_secret = Change::Clear;
            update.events_secret_previous = Change::Clear;
        }
        (Change::Set(new), Some(keys)) => {
            if let Some(old) = stored.and_then(|c| c.events_secret.as_ref()) {
                let opened = secrets::open(Some(keys), &old.0, owner).ok();
                if opened.as_ref().is_none_or(|o| o.plain != new.0) {
                    update.events_secret_previous = if overlap.is_zero() {
                        Change::Clear
                    } else {
                        let now =
                            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                        // The old secret sealed anew (it may have been in clear); one that does not open stays
                        // as it is, sealed.
                        let secret = opened.map_or_else(|| old.clone(), |o| StoredSecret(keys.seal(&o.plain, owner)));
                        Change::Set(PreviousSecret {
                            secret,
                            until_ms: (now + overlap).as_millis().min(i64::MAX as u128) as i64,
                        })
                    };
                }
            }
            update.events_secret = Change::Set(StoredSecret(keys.seal(&new.0, owner)));
        }
        (Change::Set(_), None) => unreachable!("save refuses a secret without a key"),
    }
}

const NOT_CHECKED: &str = "not checked with Twilio (TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not both set)";

/// Checks with Twilio that `account` is a subaccount of the main account (or that account itself).
async fn check_account(deps: &Deps, account: &AccountSid, warnings: &mut Vec<String>) -> Result<(), OpsError> {
    let Some(twilio) = &deps.twilio else {
        warnings.push(format!("account_sid {account} {NOT_CHECKED}"));
        return Ok(());
    };
    match check_subaccount(twilio, account).await {
        Ok(a) => {
            if a.status.as_deref() == Some("suspended") {
                warnings.push(format!("subaccount {account} is suspended: Twilio refuses its sends until reactivated"));
            }
            Ok(())
        }
        Err(TokenError::NotOurs(_)) => Err(OpsError::invalid(
            "account_sid",
            format!(
                "{account} is not an active subaccount of TWILIO_ACCOUNT_SID {}: Twilio does not list it under that \
                 account (check the sid, or create it under this account first)",
                twilio.account()
            ),
        )),
        // Twilio could not be asked: store it; webhooks for it are verified once its token can be read.
        Err(e) => {
            warnings.push(format!("{e}; the account was stored without being checked"));
            Ok(())
        }
    }
}

/// Checks with Twilio that the Messaging Service exists in the main account.
async fn check_service(deps: &Deps, service: &ServiceSid, warnings: &mut Vec<String>) -> Result<(), OpsError> {
    let Some(twilio) = &deps.twilio else {
        warnings.push(format!("messaging_service_sid {service} {NOT_CHECKED}"));
        return Ok(());
    };
    match twilio.fetch_service(service.as_str()).await {
        Ok(_) => Ok(()),
        Err(TwilioError::Api { status: 404, .. }) => Err(OpsError::invalid(
            "messaging_service_sid",
            format!("Twilio has no Messaging Service {service} in account {}", twilio.account()),
        )),
        Err(e) => {
            warnings
                .push(format!("could not check {service} with Twilio ({}); it was stored unchecked", e.short_reason()));
            Ok(())
        }
    }
}

/// Every customer, by id.
pub async fn list(deps: &Deps) -> Result<Vec<Customer>, OpsError> {
    let mut conn = deps.conn();
    let mut all = Vec::new();
    for id in customers::list(&mut conn).await? {
        if let Some(c) = customers::get(&mut conn, &id).await? {
            all.push(c);
        }
    }
    Ok(all)
}

/// One customer.
pub async fn get(deps: &Deps, id: &CustomerId) -> Result<Customer, OpsError> {
    customers::get(&mut deps.conn(), id).await?.ok_or_else(|| unknown(id))
}

/// The error for a customer that does not exist.
pub fn unknown(id: &CustomerId) -> OpsError {
    OpsError::NotFound(format!("unknown customer {id}: create it first with `producer customer add {id}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keyring {
        Keyring::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", None).unwrap()
    }

    fn stored(secret: &str) -> Customer {
        let mut c = Customer::new(CustomerId::parse("acme").unwrap(), 1);
        c.events_secret = Some(StoredSecret(keys().seal(secret, "acme")));
        c
    }

    fn open(s: &StoredSecret) -> String {
        secrets::open(Some(&keys()), &s.0, "acme").unwrap().plain
    }

    #[test]
    fn a_new_secret_is_sealed_and_keeps_the_old_one_signing_for_the_overlap_and_clearing_ends_it() {
        let day = std::time::Duration::from_secs(86_400);
        let acme = CustomerId::parse("acme").unwrap();
        let set = |s: &str| Change::Set(EventsSecret(s.into()));
        let seal = |secret: Change<EventsSecret>, stored: Option<&Customer>, overlap| {
            let mut u = CustomerUpdate::default();
            seal_secret(&mut u, secret, stored, overlap, Some(&keys()), &acme);
            u
        };
        let u = seal(set("whsec_new"), Some(&stored("whsec_old")), day);
        let Change::Set(new) = &u.events_secret else { panic!("not set: {u:?}") };
        assert!(new.0.starts_with("enc1:") && open(new) == "whsec_new", "sealed");
        let Change::Set(prev) = &u.events_secret_previous else { panic!("no overlap: {u:?}") };
        assert_eq!(open(&prev.secret), "whsec_old");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        assert!(prev.live_at(now).is_some() && prev.live_at(now + 86_400_000 + 1_000).is_none());
        assert_eq!(PreviousSecret::parse(&prev.to_string()).as_ref(), Some(prev), "stored form round-trips");
        // A secret stored in clear before sealing existed is sealed when it becomes the previous one.
        let mut clear = Customer::new(acme.clone(), 1);
        clear.events_secret = Some(StoredSecret("whsec_old".into()));
        let u = seal(set("whsec_new"), Some(&clear), day);
        let Change::Set(prev) = &u.events_secret_previous else { panic!("no overlap: {u:?}") };
        assert!(prev.secret.0.starts_with("enc1:") && open(&prev.secret) == "whsec_old");

        // The same secret saved again, or a first secret: nothing to overlap.
        assert_eq!(seal(set("whsec_old"), Some(&stored("whsec_old")), day).events_secret_previous, Change::Keep);
        assert_eq!(seal(set("whsec_new"), None, day).events_secret_previous, Change::Keep);
        // No overlap configured, or the secret cleared: the old one stops at once.
        assert_eq!(
            seal(set("whsec_new"), Some(&stored("whsec_old")), std::time::Duration::ZERO).events_secret_previous,
            Change::Clear
        );
        let cleared = seal(Change::Clear, Some(&stored("whsec_old")), day);
        assert_eq!((cleared.events_secret, cleared.events_secret_previous), (Change::Clear, Change::Clear));
    }
}
