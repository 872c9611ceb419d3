//! `IncomingPhoneNumbers` (buy by area code or number, list, fetch, release) and `AvailablePhoneNumbers`
//! searches.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use shared::twilio::types::{
    AvailablePhoneNumber, AvailablePhoneNumbers, Capabilities, IncomingPhoneNumber, IncomingPhoneNumbers,
};

use crate::faults::{ConnKill, Fault, fault_response, roll, vanish};
use crate::wire::*;
use crate::{DEFAULT_AREA_CODE, Sim, SimNumber, Store};

pub(crate) fn next_free_number(store: &mut Store, area: &str) -> String {
    loop {
        let line = store.next_line.entry(area.to_owned()).or_insert(0);
        *line += 1;
        // Exchange 2xx keeps clear of the 555 range reserved for fiction.
        let candidate = format!("+1{area}2{:06}", *line);
        if !store.live.contains_key(&candidate) {
            return candidate;
        }
    }
}

pub(crate) async fn buy_number(
    State(sim): State<Sim>,
    Path(account): Path<String>,
    Extension(kill): Extension<ConnKill>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, &account) {
        return r;
    }
    let f = form(&body);
    let cfg = sim.config();
    sim.store.lock().unwrap().purchase_requests += 1;
    let fault = roll(&cfg.purchase_faults);
    if let Some(r) = fault_response(&fault) {
        return r;
    }
    if let Fault::Drop = fault {
        return vanish(&kill, Duration::ZERO).await;
    }
    if cfg.purchase_latency_ms > 0 && !matches!(fault, Fault::AcceptThenTimeout) {
        tokio::time::sleep(Duration::from_millis(cfg.purchase_latency_ms)).await;
    }
    let result = accept_purchase(&sim, &account, &f);
    if let Fault::AcceptThenTimeout = fault {
        return vanish(&kill, Duration::from_millis(cfg.hang_ms)).await;
    }
    match result {
        Ok(n) => (StatusCode::CREATED, Json(number_json(&n))).into_response(),
        Err(r) => r,
    }
}

pub(crate) fn accept_purchase(sim: &Sim, account: &str, f: &[(String, String)]) -> Result<SimNumber, Response> {
    let phone = field(f, "PhoneNumber");
    let area = field(f, "AreaCode");
    let friendly = field(f, "FriendlyName");
    if friendly.is_some_and(|n| n.chars().count() > 64) {
        return Err(twilio_error(400, 21401, "FriendlyName must be 64 characters or fewer."));
    }
    let mut store = sim.store.lock().unwrap();
    let number = match (phone, area) {
        (Some("+15005550000"), _) => {
            return Err(twilio_error(400, 21422, "PhoneNumber is not available"));
        }
        (Some("+15005550001"), _) => {
            return Err(twilio_error(400, 21421, "PhoneNumber is invalid"));
        }
        (Some(p), _) => {
            if !is_e164(p) {
                return Err(twilio_error(400, 21421, "PhoneNumber is invalid"));
            }
            if p != "+15005550006" && store.live.contains_key(p) {
                return Err(twilio_error(400, 21422, "PhoneNumber is not available"));
            }
            p.to_owned()
        }
        (None, Some("533")) => {
            return Err(twilio_error(400, 21452, "No phone numbers found in area code 533"));
        }
        (None, Some("500")) => "+15005550006".to_owned(),
        (None, Some(a)) => {
            if a.len() != 3 || !a.bytes().all(|b| b.is_ascii_digit()) {
                return Err(twilio_error(400, 21451, &format!("AreaCode {a} is invalid")));
            }
            next_free_number(&mut store, a)
        }
        (None, None) => {
            return Err(twilio_error(400, 21450, "You must provide an AreaCode or a PhoneNumber to purchase."));
        }
    };
    let n = SimNumber {
        sid: new_sid("PN"),
        account_sid: account.to_owned(),
        friendly_name: friendly.map(str::to_owned).unwrap_or_else(|| pretty_number(&number)),
        phone_number: number,
        sms_url: field(f, "SmsUrl").map(str::to_owned),
        date_created: Utc::now(),
        released: false,
        service_sid: None,
        attached_at: None,
    };
    let at = store.numbers.len();
    store.live.insert(n.phone_number.clone(), at);
    store.numbers.push(n.clone());
    Ok(n)
}

pub(crate) async fn list_numbers(
    State(sim): State<Sim>,
    Path(account): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = authorize_list(&sim, &headers, &account).await {
        return r;
    }
    let q = parse_query(raw);
    let friendly = field(&q, "FriendlyName");
    let digits: Option<String> = field(&q, "PhoneNumber").map(|p| p.chars().filter(char::is_ascii_digit).collect());
    let matched: Vec<IncomingPhoneNumber> = sim
        .store
        .lock()
        .unwrap()
        .numbers
        .iter()
        .filter(|n| !n.released && n.account_sid == account)
        .filter(|n| friendly.is_none_or(|f| n.friendly_name == f))
        .filter(|n| digits.as_deref().is_none_or(|d| n.phone_number.contains(d)))
        .map(number_json)
        .collect();
    let path = format!("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json");
    let (slice, meta) = page_of(&matched, &path, &q);
    envelope(IncomingPhoneNumbers { incoming_phone_numbers: slice }, meta)
}

pub(crate) async fn fetch_number(
    State(sim): State<Sim>,
    Path((account, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, &account) {
        return r;
    }
    let sid = sid.trim_end_matches(".json");
    let store = sim.store.lock().unwrap();
    match store.numbers.iter().find(|n| n.sid == sid && n.account_sid == account && !n.released) {
        Some(n) => (StatusCode::OK, Json(number_json(n))).into_response(),
        None => twilio_error(404, 20404, "The requested resource was not found"),
    }
}

pub(crate) async fn release_number(
    State(sim): State<Sim>,
    Path((account, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, &account) {
        return r;
    }
    // Twilio finishes a DELETE it received even if the client stops waiting: the work runs in its own task.
    let latency = sim.config().release_latency_ms;
    let sid = sid.trim_end_matches(".json").to_owned();
    let work = tokio::spawn(async move {
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let mut store = sim.store.lock().unwrap();
        match store.numbers.iter_mut().find(|n| n.sid == sid && n.account_sid == account && !n.released) {
            Some(n) => {
                // A released number leaves its Messaging Service too.
                n.released = true;
                n.service_sid = None;
                let phone = n.phone_number.clone();
                store.live.remove(&phone);
                true
            }
            None => false,
        }
    });
    match work.await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        _ => twilio_error(404, 20404, "The requested resource was not found"),
    }
}

pub(crate) async fn available_numbers(
    State(sim): State<Sim>,
    Path((account, country)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, &account) {
        return r;
    }
    let q = parse_query(raw);
    let area = field(&q, "AreaCode").unwrap_or(DEFAULT_AREA_CODE).to_owned();
    let size = field(&q, "PageSize").and_then(|v| v.parse::<usize>().ok()).unwrap_or(50).clamp(1, 1000);
    let path = format!("/2010-04-01/Accounts/{account}/AvailablePhoneNumbers/{country}/Local.json");
    let mut found = Vec::new();
    if country == "US" && area != "533" && area.len() == 3 {
        let store = sim.store.lock().unwrap();
        let mut line = store.next_line.get(&area).copied().unwrap_or(0);
        while found.len() < size {
            line += 1;
            let candidate = format!("+1{area}2{line:06}");
            if store.live.contains_key(&candidate) {
                continue;
            }
            found.push(AvailablePhoneNumber {
                friendly_name: Some(pretty_number(&candidate)),
                phone_number: Some(candidate),
                lata: Some("722".into()),
                locality: Some("San Francisco".into()),
                rate_center: Some("SNFC CNTL".into()),
                latitude: Some(serde_json::json!("37.770000")),
                longitude: Some(serde_json::json!("-122.410000")),
                region: Some("CA".into()),
                postal_code: Some("94103".into()),
                iso_country: Some("US".into()),
                address_requirements: Some("none".into()),
                beta: Some(false),
                capabilities: Some(caps()),
            });
        }
    }
    let (slice, mut meta) = page_of(&found, &path, &q);
    // Twilio does not page searches: one page of results, no next page.
    meta.next_page_uri = None;
    envelope(AvailablePhoneNumbers { available_phone_numbers: slice }, meta)
}

pub(crate) fn pretty_number(n: &str) -> String {
    if n.len() == 12 && n.starts_with("+1") { format!("({}) {}-{}", &n[2..5], &n[5..8], &n[8..]) } else { n.to_owned() }
}

pub(crate) fn caps() -> Capabilities {
    Capabilities { voice: true, sms: true, mms: true, fax: false }
}

pub(crate) fn number_json(n: &SimNumber) -> IncomingPhoneNumber {
    IncomingPhoneNumber {
        account_sid: Some(n.account_sid.clone()),
        address_requirements: Some("none".into()),
        api_version: Some("2010-04-01".into()),
        beta: Some(false),
        capabilities: Some(caps()),
        date_created: Some(n.date_created),
        date_updated: Some(n.date_created),
        friendly_name: Some(n.friendly_name.clone()),
        phone_number: Some(n.phone_number.clone()),
        origin: Some("twilio".into()),
        sid: Some(n.sid.clone()),
        sms_application_sid: Some(String::new()),
        sms_fallback_method: Some("POST".into()),
        sms_fallback_url: Some(String::new()),
        sms_method: Some("POST".into()),
        sms_url: Some(n.sms_url.clone().unwrap_or_default()),
        status_callback: Some(String::new()),
        status_callback_method: Some("POST".into()),
        uri: Some(format!("/2010-04-01/Accounts/{}/IncomingPhoneNumbers/{}.json", n.account_sid, n.sid)),
        voice_receive_mode: Some("voice".into()),
        voice_application_sid: Some(String::new()),
        voice_caller_id_lookup: Some(false),
        voice_fallback_method: Some("POST".into()),
        voice_method: Some("POST".into()),
        emergency_status: Some("Inactive".into()),
        emergency_address_status: Some("unregistered".into()),
        status: Some("in-use".into()),
        kind: Some("local".into()),
        ..Default::default()
    }
}
