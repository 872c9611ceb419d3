//! Messaging Services (`messaging.twilio.com/v1`): services and their sender pools, with Twilio's limit on
//! senders per service (21714).

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use shared::twilio::types::{Service, ServicePhoneNumber, ServicePhoneNumbers, V1Meta};

use crate::faults::{ConnKill, Fault, fault_response, roll, vanish};
use crate::wire::*;
use crate::{Sim, SimNumber, SimService};

/// The account whose credentials are on the request (the v1 APIs act on the authenticated account), or 401.
pub(crate) fn v1_account(sim: &Sim, headers: &HeaderMap) -> Result<String, Response> {
    match basic_auth(headers) {
        Some((user, pass)) if sim.token_of(&user).is_some_and(|t| t == pass) => Ok(user),
        _ => Err(unauthorized()),
    }
}

/// Dates in the v1 APIs: ISO 8601, UTC, no fraction.
pub(crate) fn iso(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn v1_not_found(path: &str) -> Response {
    twilio_error(404, 20404, &format!("The requested resource {path} was not found"))
}

pub(crate) fn service_json(base: &str, s: &SimService) -> Service {
    let url = format!("{base}/v1/Services/{}", s.sid);
    Service {
        sid: Some(s.sid.clone()),
        account_sid: Some(s.account_sid.clone()),
        friendly_name: Some(s.friendly_name.clone()),
        date_created: Some(iso(&s.date_created)),
        date_updated: Some(iso(&s.date_created)),
        status_callback: None,
        sticky_sender: Some(true),
        smart_encoding: Some(false),
        us_app_to_person_registered: Some(true),
        links: Some(serde_json::json!({
            "phone_numbers": format!("{url}/PhoneNumbers"),
            "short_codes": format!("{url}/ShortCodes"),
            "alpha_senders": format!("{url}/AlphaSenders"),
            "messages": format!("{url}/Messages"),
        })),
        url: Some(url),
    }
}

pub(crate) fn service_number_json(base: &str, service: &str, n: &SimNumber) -> ServicePhoneNumber {
    let at = n.attached_at.unwrap_or(n.date_created);
    ServicePhoneNumber {
        sid: Some(n.sid.clone()),
        account_sid: Some(n.account_sid.clone()),
        service_sid: Some(service.to_owned()),
        date_created: Some(iso(&at)),
        date_updated: Some(iso(&at)),
        phone_number: Some(n.phone_number.clone()),
        country_code: Some("US".into()),
        capabilities: Some(vec!["MMS".into(), "SMS".into(), "Voice".into()]),
        url: Some(format!("{base}/v1/Services/{service}/PhoneNumbers/{}", n.sid)),
    }
}

/// The base URL a client used (v1 resources carry absolute URLs).
pub(crate) fn request_base(headers: &HeaderMap) -> String {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("messaging.twilio.com");
    format!("http://{host}")
}

/// `POST /v1/Services`.
pub(crate) async fn create_service(State(sim): State<Sim>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let account = match v1_account(&sim, &headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let f = form(&body);
    let s = SimService {
        sid: new_sid("MG"),
        account_sid: account,
        friendly_name: field(&f, "FriendlyName").unwrap_or("Messaging Service").to_owned(),
        date_created: Utc::now(),
    };
    sim.store.lock().unwrap().services.push(s.clone());
    (StatusCode::CREATED, Json(service_json(&request_base(&headers), &s))).into_response()
}

/// The service `sid` if it belongs to the authenticated account.
pub(crate) fn own_service(sim: &Sim, headers: &HeaderMap, sid: &str) -> Result<SimService, Response> {
    let account = v1_account(sim, headers)?;
    sim.store
        .lock()
        .unwrap()
        .services
        .iter()
        .find(|s| s.sid == sid && s.account_sid == account)
        .cloned()
        .ok_or_else(|| v1_not_found(&format!("/Services/{sid}")))
}

/// `GET /v1/Services/{sid}`.
pub(crate) async fn fetch_service(State(sim): State<Sim>, Path(service): Path<String>, headers: HeaderMap) -> Response {
    match own_service(&sim, &headers, &service) {
        Ok(s) => Json(service_json(&request_base(&headers), &s)).into_response(),
        Err(r) => r,
    }
}

/// `POST /v1/Services/{sid}/PhoneNumbers` (`PhoneNumberSid`): adds one of the account's numbers to the sender pool.
pub(crate) async fn attach_number(
    State(sim): State<Sim>,
    Path(service): Path<String>,
    Extension(kill): Extension<ConnKill>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let s = match own_service(&sim, &headers, &service) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let cfg = sim.config();
    let nth = {
        let mut store = sim.store.lock().unwrap();
        store.attach_requests += 1;
        store.attach_requests
    };
    let fault = if nth <= cfg.attach_fail_first { Fault::E500 } else { roll(&cfg.attach_faults) };
    if let Some(r) = fault_response(&fault) {
        return r;
    }
    if let Fault::Drop = fault {
        return vanish(&kill, Duration::ZERO).await;
    }
    let f = form(&body);
    let Some(pn) = field(&f, "PhoneNumberSid").map(str::to_owned) else {
        return twilio_error(400, 21421, "PhoneNumberSid is required");
    };
    let result = {
        let mut store = sim.store.lock().unwrap();
        let in_pool = store.numbers.iter().filter(|n| !n.released && n.service_sid.as_deref() == Some(&s.sid)).count();
        match store.numbers.iter_mut().find(|n| n.sid == pn && !n.released && n.account_sid == s.account_sid) {
            None => Err(twilio_error(400, 21421, "Phone Number is invalid")),
            Some(n) if n.service_sid.as_deref() == Some(&s.sid) => {
                Err(twilio_error(409, 21710, "Phone Number or Short Code is already in the Messaging Service."))
            }
            Some(n) if n.service_sid.is_some() => Err(twilio_error(
                409,
                21712,
                "Phone Number or Short Code is associated with another Messaging Service.",
            )),
            Some(_) if in_pool >= cfg.service_max_numbers => {
                Err(twilio_error(400, 21714, "Messaging Service Number Pool size limit reached"))
            }
            Some(n) => {
                n.service_sid = Some(s.sid.clone());
                n.attached_at = Some(Utc::now());
                Ok(n.clone())
            }
        }
    };
    if let Fault::AcceptThenTimeout = fault {
        return vanish(&kill, Duration::from_millis(cfg.hang_ms)).await;
    }
    match result {
        Ok(n) => (StatusCode::CREATED, Json(service_number_json(&request_base(&headers), &s.sid, &n))).into_response(),
        Err(r) => r,
    }
}

/// `GET /v1/Services/{sid}/PhoneNumbers`, paged the v1 way (`meta` with absolute URLs).
pub(crate) async fn list_service_numbers(
    State(sim): State<Sim>,
    Path(service): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let s = match own_service(&sim, &headers, &service) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let base = request_base(&headers);
    let q = parse_query(raw);
    let size = field(&q, "PageSize").and_then(|v| v.parse::<usize>().ok()).unwrap_or(50).clamp(1, 1000);
    let page = field(&q, "Page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    let all: Vec<ServicePhoneNumber> = sim
        .store
        .lock()
        .unwrap()
        .numbers
        .iter()
        .filter(|n| !n.released && n.service_sid.as_deref() == Some(&s.sid))
        .map(|n| service_number_json(&base, &s.sid, n))
        .collect();
    let url = |p: usize| format!("{base}/v1/Services/{}/PhoneNumbers?PageSize={size}&Page={p}", s.sid);
    let slice: Vec<_> = all.iter().skip(page * size).take(size).cloned().collect();
    let meta = V1Meta {
        page: Some(page as u64),
        page_size: Some(size as u64),
        first_page_url: Some(url(0)),
        previous_page_url: (page > 0).then(|| url(page - 1)),
        next_page_url: ((page + 1) * size < all.len()).then(|| url(page + 1)),
        key: Some("phone_numbers".into()),
        url: Some(url(page)),
    };
    Json(ServicePhoneNumbers { meta, phone_numbers: slice }).into_response()
}

/// `GET /v1/Services/{sid}/PhoneNumbers/{PN…}`.
pub(crate) async fn fetch_service_number(
    State(sim): State<Sim>,
    Path((service, number)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let s = match own_service(&sim, &headers, &service) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let found = sim
        .store
        .lock()
        .unwrap()
        .numbers
        .iter()
        .find(|n| n.sid == number && !n.released && n.service_sid.as_deref() == Some(&s.sid))
        .cloned();
    match found {
        Some(n) => Json(service_number_json(&request_base(&headers), &s.sid, &n)).into_response(),
        None => v1_not_found(&format!("/Services/{}/PhoneNumbers/{number}", s.sid)),
    }
}

/// `DELETE /v1/Services/{sid}/PhoneNumbers/{PN…}`: out of the sender pool (the number stays in the account).
pub(crate) async fn detach_number(
    State(sim): State<Sim>,
    Path((service, number)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let s = match own_service(&sim, &headers, &service) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut store = sim.store.lock().unwrap();
    match store.numbers.iter_mut().find(|n| n.sid == number && !n.released && n.service_sid.as_deref() == Some(&s.sid))
    {
        Some(n) => {
            n.service_sid = None;
            n.attached_at = None;
            StatusCode::NO_CONTENT.into_response()
        }
        None => v1_not_found(&format!("/Services/{}/PhoneNumbers/{number}", s.sid)),
    }
}
