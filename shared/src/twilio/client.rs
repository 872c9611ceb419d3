//! A small Twilio REST client on reqwest: Basic auth, form-encoded requests, Twilio's JSON and error bodies.
//!
//! It does not retry by itself: whether a failure may be retried depends on what the caller was doing (a send that
//! timed out must be resolved first), so every error comes back classified ([`TwilioError`]) and the caller decides.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::error::{TwilioError, parse_retry_after};
use super::types::*;
use crate::config::{ConfigError, TwilioSettings};
use crate::domain::AccountSid;

/// How many pages a list call follows at most (a guard against a server that never ends its paging).
const MAX_PAGES: usize = 100;

#[derive(Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    base: Arc<str>,
    messaging_base: Arc<str>,
    lookups_base: Arc<str>,
    account: AccountSid,
    token: SecretString,
}

impl std::fmt::Debug for TwilioClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioClient").field("base", &self.base).field("account", &self.account).finish()
    }
}

/// Parameters of `POST …/Messages.json`.
#[derive(Debug, Clone, Default)]
pub struct CreateMessage<'a> {
    pub to: &'a str,
    pub from: &'a str,
    pub body: &'a str,
    pub status_callback: Option<&'a str>,
    /// The customer's Messaging Service (A2P 10DLC): sent with `From`, which must be in its sender pool.
    pub messaging_service: Option<&'a str>,
    /// Seconds Twilio may keep the message queued before giving up on it (1 to 36,000; 30036 after): the time left
    /// before the batch's expiry.
    pub validity_period: Option<u32>,
}

/// Parameters of `POST …/IncomingPhoneNumbers.json`: exactly one of `phone_number` and `area_code`.
#[derive(Debug, Clone, Default)]
pub struct BuyNumber<'a> {
    pub phone_number: Option<&'a str>,
    pub area_code: Option<&'a str>,
    pub friendly_name: &'a str,
    pub sms_url: Option<&'a str>,
}

/// Filters of `GET …/Messages.json`.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter<'a> {
    pub to: Option<&'a str>,
    pub from: Option<&'a str>,
    /// `DateSent>=` (date only, as Twilio documents for this filter).
    pub date_sent_after: Option<DateTime<Utc>>,
}

impl TwilioClient {
    pub fn new(settings: &TwilioSettings) -> Result<Self, ConfigError> {
        let (account, token) = settings.credentials()?;
        ensure_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(3).min(settings.timeout))
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("messenger/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: settings.api_base.clone().into(),
            messaging_base: settings.messaging_api_base.clone().into(),
            lookups_base: settings.lookups_api_base.clone().into(),
            account,
            token,
        })
    }

    /// The account whose credentials sign requests (the parent account when customers use subaccounts).
    pub fn account(&self) -> &AccountSid {
        &self.account
    }

    fn url(&self, account: &AccountSid, path: &str) -> String {
        format!("{}/2010-04-01/Accounts/{}/{}", self.base, account.as_str(), path)
    }

    async fn execute<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, TwilioError> {
        let resp = req
            .basic_auth(self.account.as_str(), Some(self.token.expose_secret()))
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let bytes = resp.bytes().await.map_err(transport_error)?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes)
                .map_err(|e| TwilioError::Malformed { status, detail: e.to_string() });
        }
        Err(api_error(status, &bytes, retry_after))
    }

    /// What Lookup v2 says a number's line is (`GET /v2/PhoneNumbers/{n}?Fields=line_type_intelligence`). An invalid
    /// number is an answer (HTTP 200, `valid: false`), not an error.
    pub async fn lookup_line(&self, number: &str) -> Result<crate::carriers::Line, TwilioError> {
        // E.164 needs no escaping in a path but its `+`, which is a literal in paths (Twilio takes it as such).
        let url = format!("{}/v2/PhoneNumbers/{number}", self.lookups_base);
        let v: super::types::LookupResult =
            self.execute(self.http.get(url).query(&[("Fields", "line_type_intelligence")])).await?;
        let lti = v.line_type_intelligence.as_ref();
        Ok(crate::carriers::Line::of_lookup(
            v.valid.unwrap_or(false),
            lti.and_then(|l| l.kind.as_deref()),
            lti.and_then(|l| l.carrier_name.as_deref()),
        ))
    }

    /// Sends one message. A 201 returns the created message (its `sid` is what to record).
    pub async fn create_message(&self, account: &AccountSid, m: &CreateMessage<'_>) -> Result<Message, TwilioError> {
        self.post_message(account, m).await
    }

    /// [`Self::create_message`], reading only the sid and status of the reply (the worker's hot path).
    pub async fn send_message(
        &self,
        account: &AccountSid,
        m: &CreateMessage<'_>,
    ) -> Result<CreatedMessage, TwilioError> {
        self.post_message(account, m).await
    }

    async fn post_message<T: DeserializeOwned>(
        &self,
        account: &AccountSid,
        m: &CreateMessage<'_>,
    ) -> Result<T, TwilioError> {
        let validity = m.validity_period.map(|v| v.clamp(1, 36_000).to_string());
        let mut form = vec![("To", m.to), ("From", m.from), ("Body", m.body)];
        if let Some(cb) = m.status_callback {
            form.push(("StatusCallback", cb));
        }
        if let Some(s) = m.messaging_service {
            form.push(("MessagingServiceSid", s));
        }
        if let Some(v) = &validity {
            form.push(("ValidityPeriod", v));
        }
        self.execute(self.http.post(self.url(account, "Messages.json")).form(&form)).await
    }

    /// Lists messages, newest first, following `next_page_uri` until `stop` says enough or `limit` are read.
    pub async fn list_messages(
        &self,
        account: &AccountSid,
        filter: &MessageFilter<'_>,
        limit: usize,
        mut stop: impl FnMut(&Message) -> bool,
    ) -> Result<Vec<Message>, TwilioError> {
        let mut query: Vec<(&str, String)> = vec![("PageSize", "100".into())];
        if let Some(to) = filter.to {
            query.push(("To", to.into()));
        }
        if let Some(from) = filter.from {
            query.push(("From", from.into()));
        }
        if let Some(t) = filter.date_sent_after {
            query.push(("DateSent>", t.format("%Y-%m-%d").to_string()));
        }
        let first = self.http.get(self.url(account, "Messages.json")).query(&query);
        let mut out = Vec::new();
        self.paginate::<Messages>(first, |page| {
            for m in page.messages {
                if stop(&m) || out.len() >= limit {
                    return false;
                }
                out.push(m);
            }
            true
        })
        .await?;
        Ok(out)
    }

    /// Buys a number. The `FriendlyName` carries the purchase intent so an unknown outcome can be looked up.
    pub async fn buy_number(
        &self,
        account: &AccountSid,
        b: &BuyNumber<'_>,
    ) -> Result<IncomingPhoneNumber, TwilioError> {
        let mut form: Vec<(&str, &str)> = vec![("FriendlyName", b.friendly_name)];
        if let Some(p) = b.phone_number {
            form.push(("PhoneNumber", p));
        }
        if let Some(a) = b.area_code {
            form.push(("AreaCode", a));
        }
        if let Some(u) = b.sms_url {
            form.push(("SmsUrl", u));
            form.push(("SmsMethod", "POST"));
        }
        self.execute(self.http.post(self.url(account, "IncomingPhoneNumbers.json")).form(&form)).await
    }

    /// Lists owned numbers, optionally filtered by exact `FriendlyName` or by `PhoneNumber`.
    pub async fn list_numbers(
        &self,
        account: &AccountSid,
        friendly_name: Option<&str>,
        phone_number: Option<&str>,
    ) -> Result<Vec<IncomingPhoneNumber>, TwilioError> {
        let mut query: Vec<(&str, &str)> = vec![("PageSize", "1000")];
        if let Some(f) = friendly_name {
            query.push(("FriendlyName", f));
        }
        if let Some(p) = phone_number {
            query.push(("PhoneNumber", p));
        }
        let first = self.http.get(self.url(account, "IncomingPhoneNumbers.json")).query(&query);
        let mut out = Vec::new();
        self.paginate::<IncomingPhoneNumbers>(first, |page| {
            out.extend(page.incoming_phone_numbers);
            true
        })
        .await?;
        Ok(out)
    }

    /// Searches local numbers that can send SMS.
    pub async fn search_local(
        &self,
        account: &AccountSid,
        country: &str,
        area_code: Option<&str>,
        page_size: u32,
    ) -> Result<Vec<AvailablePhoneNumber>, TwilioError> {
        let size = page_size.to_string();
        let mut query: Vec<(&str, &str)> = vec![("SmsEnabled", "true"), ("PageSize", &size)];
        if let Some(a) = area_code {
            query.push(("AreaCode", a));
        }
        let page: Page<AvailablePhoneNumbers> = self
            .execute(
                self.http.get(self.url(account, &format!("AvailablePhoneNumbers/{country}/Local.json"))).query(&query),
            )
            .await?;
        Ok(page.records.available_phone_numbers)
    }

    /// Reads an account. Asked with the parent's credentials about one of its subaccounts, Twilio includes the
    /// subaccount's auth token (which signs that subaccount's webhooks); about any other account it answers 404.
    pub async fn fetch_account(&self, sid: &AccountSid) -> Result<Account, TwilioError> {
        let url = format!("{}/2010-04-01/Accounts/{}.json", self.base, sid.as_str());
        self.execute(self.http.get(url)).await
    }

    /// Creates a subaccount of the account whose credentials this client uses.
    pub async fn create_subaccount(&self, friendly_name: &str) -> Result<Account, TwilioError> {
        let url = format!("{}/2010-04-01/Accounts.json", self.base);
        self.execute(self.http.post(url).form(&[("FriendlyName", friendly_name)])).await
    }

    /// Releases a number (`DELETE`, answered 204).
    pub async fn release_number(&self, account: &AccountSid, sid: &str) -> Result<(), TwilioError> {
        self.delete(self.url(account, &format!("IncomingPhoneNumbers/{sid}.json"))).await
    }

    /// Reads one of the account's numbers by sid (404 once it is released).
    pub async fn fetch_number(&self, account: &AccountSid, sid: &str) -> Result<IncomingPhoneNumber, TwilioError> {
        self.execute(self.http.get(self.url(account, &format!("IncomingPhoneNumbers/{sid}.json")))).await
    }

    fn service_url(&self, service: &str, rest: &str) -> String {
        format!("{}/v1/Services/{service}{rest}", self.messaging_base)
    }

    /// Reads a Messaging Service (404 if the account has no such service).
    pub async fn fetch_service(&self, service: &str) -> Result<Service, TwilioError> {
        self.execute(self.http.get(self.service_url(service, ""))).await
    }

    /// Adds a number (by its `PN…` sid) to a Messaging Service's sender pool. Twilio refuses a 401st number (21714),
    /// a number in another service (21712), and one already in this service (21710).
    pub async fn attach_number(&self, service: &str, number_sid: &str) -> Result<ServicePhoneNumber, TwilioError> {
        let req = self.http.post(self.service_url(service, "/PhoneNumbers")).form(&[("PhoneNumberSid", number_sid)]);
        self.execute(req).await
    }

    /// Removes a number from a Messaging Service's sender pool (`DELETE`, answered 204).
    pub async fn detach_number(&self, service: &str, number_sid: &str) -> Result<(), TwilioError> {
        self.delete(self.service_url(service, &format!("/PhoneNumbers/{number_sid}"))).await
    }

    /// Every number in a Messaging Service's sender pool (following the v1 `meta.next_page_url`).
    pub async fn list_service_numbers(&self, service: &str) -> Result<Vec<ServicePhoneNumber>, TwilioError> {
        let mut out = Vec::new();
        let mut req = self.http.get(self.service_url(service, "/PhoneNumbers")).query(&[("PageSize", "1000")]);
        for _ in 0..MAX_PAGES {
            let page: ServicePhoneNumbers = self.execute(req).await?;
            out.extend(page.phone_numbers);
            match page.meta.next_page_url {
                Some(next) if !next.is_empty() => req = self.http.get(next),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn delete(&self, url: String) -> Result<(), TwilioError> {
        let resp = self
            .http
            .delete(url)
            .basic_auth(self.account.as_str(), Some(self.token.expose_secret()))
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let bytes = resp.bytes().await.map_err(transport_error)?;
        Err(api_error(status, &bytes, None))
    }

    /// Follows `next_page_uri` (relative to the API base) until it is null, `visit` returns false, or
    /// [`MAX_PAGES`] pages were read.
    async fn paginate<T: DeserializeOwned>(
        &self,
        first: reqwest::RequestBuilder,
        mut visit: impl FnMut(T) -> bool,
    ) -> Result<(), TwilioError> {
        let mut req = first;
        for _ in 0..MAX_PAGES {
            let page: Page<T> = self.execute(req).await?;
            if !visit(page.records) {
                return Ok(());
            }
            match page.next_page_uri {
                Some(next) if !next.is_empty() => req = self.http.get(format!("{}{}", self.base, next)),
                _ => return Ok(()),
            }
        }
        Ok(())
    }
}

/// reqwest is built without a bundled TLS crypto provider: install ring once per process before building any
/// client (a second call is a harmless no-op).
pub fn ensure_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn transport_error(e: reqwest::Error) -> TwilioError {
    // The URL can carry recipients' numbers (list filters): never let it reach a log line.
    let e = e.without_url();
    if e.is_connect() {
        TwilioError::Connect(error_chain(&e))
    } else if e.is_timeout() {
        TwilioError::Timeout
    } else {
        TwilioError::Interrupted(error_chain(&e))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Reads Twilio's error JSON; a body without a `code` takes the HTTP status as its code, as the official SDKs do.
pub fn api_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> TwilioError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => TwilioError::Api {
            status,
            code: e.code.unwrap_or(status as u32),
            message: e.message.unwrap_or_default(),
            more_info: e.more_info,
            retry_after,
        },
        Err(_) if body.is_empty() || status >= 500 || status == 429 => TwilioError::Api {
            status,
            code: status as u32,
            message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            more_info: None,
            retry_after,
        },
        Err(e) => TwilioError::Malformed { status, detail: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_error_body_becomes_a_typed_error() {
        let body = br#"{"code":21211,"message":"The 'To' number 5551234567 is not a valid phone number.","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#;
        match api_error(400, body, None) {
            TwilioError::Api { status: 400, code: 21211, message, more_info, .. } => {
                assert!(message.contains("not a valid phone number"));
                assert_eq!(more_info.as_deref(), Some("https://www.twilio.com/docs/errors/21211"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_body_without_code_uses_the_http_status() {
        let e = api_error(503, b"<html>Service Unavailable</html>", Some(Duration::from_secs(2)));
        assert_eq!(e.code(), Some(503));
        assert_eq!(e.short_reason(), "http 503");
    }

    #[test]
    fn an_unreadable_4xx_is_malformed() {
        assert!(matches!(api_error(400, b"not json", None), TwilioError::Malformed { status: 400, .. }));
    }
}
