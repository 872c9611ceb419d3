//! What every Twilio endpoint shares: the error body, sids, Basic auth and who may act for an account, form
//! fields, list paging and date filters.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use rand::Rng;
use serde::Serialize;
use shared::twilio::types::{ErrorBody, Page};

use crate::Sim;

pub(crate) fn twilio_error(status: u16, code: u32, message: &str) -> Response {
    let body = ErrorBody {
        code: Some(code),
        message: Some(message.to_owned()),
        more_info: Some(format!("https://www.twilio.com/docs/errors/{code}")),
        status: Some(status),
    };
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

pub(crate) fn new_sid(prefix: &str) -> String {
    let v: u128 = rand::rng().random();
    format!("{prefix}{v:032x}")
}

pub(crate) fn is_account_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("AC") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn is_e164(s: &str) -> bool {
    s.len() >= 8 && s.len() <= 16 && s.starts_with('+') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// The `(user, password)` of a Basic `Authorization` header.
pub(crate) fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let raw = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())?;
    let (user, pass) = raw.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

pub(crate) fn unauthorized() -> Response {
    let mut r = twilio_error(401, 20003, "Authenticate");
    r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Basic realm=\"Twilio API\""));
    r
}

/// Checks Basic auth, and that the caller may act for the account in the path: the main account's credentials
/// act for it and for its subaccounts, a subaccount's own credentials for that subaccount only. An account that is
/// neither is not found.
pub(crate) fn authorize(sim: &Sim, headers: &HeaderMap, account: &str) -> Result<(), Response> {
    let Some((user, pass)) = basic_auth(headers) else { return Err(unauthorized()) };
    let main = sim.config().account_sid;
    if sim.token_of(&user).is_none_or(|t| t != pass) {
        return Err(unauthorized());
    }
    let sub = sim.store.lock().unwrap().accounts.iter().any(|a| a.sid == account && a.status != "closed");
    let allowed = if user == main { account == main || sub } else { account == user };
    if !is_account_sid(account) || !allowed {
        return Err(twilio_error(404, 20404, "The requested resource was not found"));
    }
    Ok(())
}

/// Authorizes a list request, then waits the configured list latency.
pub(crate) async fn authorize_list(sim: &Sim, headers: &HeaderMap, account: &str) -> Result<(), Response> {
    authorize(sim, headers, account)?;
    let latency = sim.config().list_latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    Ok(())
}

/// Parses a form body keeping repeated keys.
pub(crate) fn form(body: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

pub(crate) fn field<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Paging: `PageSize` (default 50, max 1000), `Page`, `PageToken` (`PA<offset>`). Builds the envelope with the
/// other query parameters carried into every page URI.
pub(crate) fn page_of<T: Clone>(items: &[T], path: &str, query: &[(String, String)]) -> (Vec<T>, PageMeta) {
    let size = field(query, "PageSize").and_then(|v| v.parse::<usize>().ok()).unwrap_or(50).clamp(1, 1000);
    let page = field(query, "Page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    let offset = field(query, "PageToken")
        .and_then(|t| t.strip_prefix("PA"))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(page * size);
    let slice: Vec<T> = items.iter().skip(offset).take(size).cloned().collect();
    let keep: Vec<(String, String)> =
        query.iter().filter(|(k, _)| k != "Page" && k != "PageSize" && k != "PageToken").cloned().collect();
    let uri_for = |p: usize, token: Option<usize>| {
        let mut q = keep.clone();
        q.push(("PageSize".into(), size.to_string()));
        q.push(("Page".into(), p.to_string()));
        if let Some(t) = token {
            q.push(("PageToken".into(), format!("PA{t}")));
        }
        format!("{path}?{}", serde_urlencoded::to_string(&q).unwrap())
    };
    let next = (offset + slice.len() < items.len()).then(|| uri_for(page + 1, Some(offset + slice.len())));
    let prev = (page > 0).then(|| uri_for(page - 1, Some(offset.saturating_sub(size))));
    let meta = PageMeta {
        first_page_uri: uri_for(0, None),
        next_page_uri: next,
        previous_page_uri: prev,
        page,
        page_size: size,
        start: offset,
        end: if slice.is_empty() { offset } else { offset + slice.len() - 1 },
        uri: uri_for(page, (offset != page * size).then_some(offset)),
    };
    (slice, meta)
}

pub(crate) struct PageMeta {
    first_page_uri: String,
    pub(crate) next_page_uri: Option<String>,
    previous_page_uri: Option<String>,
    page: usize,
    page_size: usize,
    start: usize,
    end: usize,
    uri: String,
}

pub(crate) fn envelope<R: Serialize>(records: R, m: PageMeta) -> Response {
    let page = Page {
        records,
        first_page_uri: Some(m.first_page_uri),
        next_page_uri: m.next_page_uri,
        previous_page_uri: m.previous_page_uri,
        page: Some(m.page as u64),
        page_size: Some(m.page_size as u64),
        start: Some(m.start as u64),
        end: Some(m.end as u64),
        uri: Some(m.uri),
    };
    (StatusCode::OK, Json(page)).into_response()
}

pub(crate) fn parse_query(raw: Option<String>) -> Vec<(String, String)> {
    raw.map(|q| serde_urlencoded::from_str(&q).unwrap_or_default()).unwrap_or_default()
}

/// Twilio's date filters take `YYYY-MM-DD` (or a full ISO timestamp).
pub(crate) fn parse_filter_date(v: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Some(d.and_hms_opt(0, 0, 0)?.and_utc());
    }
    DateTime::parse_from_rfc3339(v).ok().map(|t| t.with_timezone(&Utc))
}
