//! `Messages`: create (validated as Twilio validates, with its test-credential magic numbers; A2P enforced when
//! configured), list with Twilio's filters and paging, fetch.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use shared::domain::count_segments;
use shared::twilio::types::{Message, Messages};

use crate::faults::{ConnKill, Fault, fault_response, roll, vanish};
use crate::webhooks::send_status_callback;
use crate::wire::*;
use crate::{SendAttempt, Sim, SimMessage};

pub(crate) async fn create_message(
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
    let to = field(&f, "To").unwrap_or("").to_owned();
    let fault = roll(&cfg.send_faults);
    let outcome = match fault {
        Fault::None => "normal",
        Fault::E500 => "500",
        Fault::E429(_) => "429",
        Fault::Drop => "drop",
        Fault::AcceptThenTimeout => "accept_then_timeout",
    };
    sim.store.lock().unwrap().attempts.push(SendAttempt {
        to: to.clone(),
        at_ms: Utc::now().timestamp_millis(),
        outcome: outcome.into(),
    });
    if let Some(r) = fault_response(&fault) {
        return r;
    }
    if let Fault::Drop = fault {
        return vanish(&kill, Duration::ZERO).await;
    }
    if cfg.send_latency_ms > 0 && !matches!(fault, Fault::AcceptThenTimeout) {
        tokio::time::sleep(Duration::from_millis(cfg.send_latency_ms)).await;
    }
    let result = accept_message(&sim, &account, &f, cfg.a2p_required);
    if let Fault::AcceptThenTimeout = fault {
        return vanish(&kill, Duration::from_millis(cfg.hang_ms)).await;
    }
    match result {
        Ok(m) => (StatusCode::CREATED, Json(message_json(&m))).into_response(),
        Err(r) => r,
    }
}

pub(crate) fn message_json(m: &SimMessage) -> Message {
    let uri = format!("/2010-04-01/Accounts/{}/Messages/{}.json", m.account_sid, m.sid);
    Message {
        account_sid: Some(m.account_sid.clone()),
        api_version: Some("2010-04-01".into()),
        body: Some(m.body.clone()),
        date_created: Some(m.date_created),
        date_sent: m.date_sent,
        date_updated: Some(m.date_sent.unwrap_or(m.date_created)),
        direction: Some(m.direction.clone()),
        error_code: m.error_code.map(i64::from),
        error_message: m.error_code.and_then(|c| shared::twilio::error::describe(c).map(str::to_owned)),
        from: Some(m.from.clone()),
        messaging_service_sid: m.messaging_service_sid.clone(),
        num_media: Some("0".into()),
        num_segments: Some(m.num_segments.to_string()),
        price: None,
        price_unit: Some("USD".into()),
        sid: Some(m.sid.clone()),
        status: Some(m.status.clone()),
        subresource_uris: Some(serde_json::json!({
            "media": format!("/2010-04-01/Accounts/{}/Messages/{}/Media.json", m.account_sid, m.sid),
            "feedback": format!("/2010-04-01/Accounts/{}/Messages/{}/Feedback.json", m.account_sid, m.sid),
        })),
        to: Some(m.to.clone()),
        uri: Some(uri),
    }
}

/// Validates a create request the way Twilio does and stores the message.
pub(crate) fn accept_message(
    sim: &Sim,
    account: &str,
    f: &[(String, String)],
    a2p_required: bool,
) -> Result<SimMessage, Response> {
    let to = field(f, "To").unwrap_or("");
    let from = field(f, "From").unwrap_or("");
    let body = field(f, "Body").unwrap_or("");
    if to.is_empty() {
        return Err(twilio_error(400, 21604, "A 'To' phone number is required."));
    }
    if from.is_empty() && field(f, "MessagingServiceSid").is_none() {
        return Err(twilio_error(400, 21603, "A 'From' phone number is required."));
    }
    if body.is_empty() && field(f, "MediaUrl").is_none() && field(f, "ContentSid").is_none() {
        return Err(twilio_error(400, 21602, "Message body is required."));
    }
    let validity = match field(f, "ValidityPeriod") {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=36_000).contains(&n) => Some(n),
            _ => return Err(twilio_error(400, 21624, "Invalid validity period value")),
        },
    };
    if body.chars().count() > 1600 {
        return Err(twilio_error(400, 21617, "The concatenated message body exceeds the 1600 character limit."));
    }
    if !is_e164(to) {
        return Err(twilio_error(400, 21211, &format!("The 'To' number {to} is not a valid phone number.")));
    }
    // Twilio's test-credential magic numbers.
    match from {
        "+15005550001" => {
            return Err(twilio_error(
                400,
                21212,
                "The 'From' number +15005550001 is not a valid phone number, shortcode, or alphanumeric sender ID.",
            ));
        }
        "+15005550007" => {
            return Err(twilio_error(
                400,
                21606,
                "The 'From' phone number provided (+15005550007) is not a valid message-capable Twilio phone number for this destination.",
            ));
        }
        "+15005550008" => {
            return Err(twilio_error(
                400,
                21611,
                "This 'From' number has exceeded the maximum number of queued messages.",
            ));
        }
        _ => {}
    }
    match to {
        "+15005550001" => {
            return Err(twilio_error(400, 21211, "The 'To' number +15005550001 is not a valid phone number."));
        }
        "+15005550002" => {
            return Err(twilio_error(
                400,
                21612,
                "The 'To' phone number: +15005550002, is not currently reachable using the 'From' phone number via SMS.",
            ));
        }
        "+15005550003" => {
            return Err(twilio_error(
                400,
                21408,
                "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: +15005550003.",
            ));
        }
        "+15005550004" => {
            return Err(twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"));
        }
        _ if sim.store.lock().unwrap().opted_out.contains(&(from.to_owned(), to.to_owned())) => {
            return Err(twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"));
        }
        "+15005550009" => {
            return Err(twilio_error(400, 21614, "'To' number is not a valid mobile number"));
        }
        _ => {}
    }
    if sim.config().refuse_recipients.iter().any(|r| r == to) {
        return Err(twilio_error(400, 21614, "'To' number is not a valid mobile number"));
    }
    if sim.config().unreachable_recipients.iter().any(|r| r == to) {
        return Err(twilio_error(
            400,
            21612,
            &format!("The 'To' phone number: {to}, is not currently reachable using the 'From' phone number via SMS."),
        ));
    }
    let mut store = sim.store.lock().unwrap();
    let service = field(f, "MessagingServiceSid").map(str::to_owned);
    if let Some(s) = &service
        && !store.services.iter().any(|x| &x.sid == s && x.account_sid == account)
    {
        return Err(twilio_error(400, 21701, "The Messaging Service does not exist"));
    }
    let owned = from == "+15005550006" || store.live_number(from).is_some_and(|n| n.account_sid == account);
    if !owned && !from.is_empty() {
        return Err(twilio_error(
            400,
            21606,
            &format!(
                "The 'From' phone number provided ({from}) is not a valid message-capable Twilio phone number for this destination."
            ),
        ));
    }
    let now = Utc::now();
    let m = SimMessage {
        sid: new_sid("SM"),
        account_sid: account.to_owned(),
        from: from.to_owned(),
        to: to.to_owned(),
        body: body.to_owned(),
        status: "queued".into(),
        direction: "outbound-api".into(),
        num_segments: count_segments(body).segments.max(1),
        status_callback: field(f, "StatusCallback").map(str::to_owned),
        date_created: now,
        date_sent: None,
        messaging_service_sid: service.clone(),
        error_code: None,
        validity_period: validity,
        delivery_acknowledged: None,
    };
    let idx = store.messages.len();
    store.by_to.entry(m.to.clone()).or_default().push(idx);
    store.by_sid.insert(m.sid.clone(), idx);
    store.messages.push(m.clone());
    // The simulated carrier hands every message over at once: reads after the create see it as sent. Under A2P
    // 10DLC, a number in no Messaging Service is an unregistered sender: carriers drop its messages (30034).
    let registered = store.live_number(from).is_some_and(|n| n.service_sid.is_some());
    let refusal = if a2p_required && !registered {
        Some(shared::twilio::codes::UNREGISTERED_SENDER)
    } else {
        crate::carriers::carrier_refusal(sim, &m, &store.messages[..idx])
    };
    let stored = &mut store.messages[idx];
    match refusal {
        Some(code) => {
            stored.status = "undelivered".into();
            stored.error_code = Some(code);
        }
        None => stored.status = "sent".into(),
    }
    stored.date_sent = Some(now);
    let failed = stored.clone();
    drop(store);
    if let (Some(code), Some(url)) = (refusal, failed.status_callback.clone()) {
        let sim = sim.clone();
        tokio::spawn(async move {
            send_status_callback(&sim, &failed, &url, "undelivered", Some(code)).await;
        });
    } else if let (None, Some(after), Some(url)) =
        (refusal, sim.config().deliver_after_ms, failed.status_callback.clone())
    {
        let sim = sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(after)).await;
            let status = send_status_callback(&sim, &failed, &url, "delivered", None).await;
            if (200..300).contains(&status) {
                let mut store = sim.store.lock().unwrap();
                let m = &mut store.messages[idx];
                m.status = "delivered".into();
                m.delivery_acknowledged = Some(Utc::now());
            }
        });
    }
    let mut m = m;
    if m.messaging_service_sid.is_some() {
        // Twilio's initial status for a message sent through a Messaging Service.
        m.status = "accepted".into();
    }
    Ok(m)
}

pub(crate) async fn list_messages(
    State(sim): State<Sim>,
    Path(account): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = authorize_list(&sim, &headers, &account).await {
        return r;
    }
    let q = parse_query(raw);
    let to = field(&q, "To");
    let from = field(&q, "From");
    let on = field(&q, "DateSent").and_then(parse_filter_date);
    let before = field(&q, "DateSent<").and_then(parse_filter_date);
    let after = field(&q, "DateSent>").and_then(parse_filter_date);
    let store = sim.store.lock().unwrap();
    let candidates: Box<dyn Iterator<Item = &SimMessage>> = match to {
        Some(t) => Box::new(store.by_to.get(t).into_iter().flatten().map(|&i| &store.messages[i])),
        None => Box::new(store.messages.iter()),
    };
    let mut matched: Vec<Message> = candidates
        .filter(|m| m.account_sid == account)
        .filter(|m| from.is_none_or(|f| m.from == f))
        .filter(|m| {
            let sent = m.date_sent;
            on.is_none_or(|d| sent.is_some_and(|s| s.date_naive() == d.date_naive()))
                && before.is_none_or(|d| sent.is_some_and(|s| s < d))
                && after.is_none_or(|d| sent.is_some_and(|s| s >= d))
        })
        .map(message_json)
        .collect();
    drop(store);
    // Newest first, as Twilio lists them.
    matched.reverse();
    let path = format!("/2010-04-01/Accounts/{account}/Messages.json");
    let (slice, meta) = page_of(&matched, &path, &q);
    envelope(Messages { messages: slice }, meta)
}

pub(crate) async fn fetch_message(
    State(sim): State<Sim>,
    Path((account, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, &account) {
        return r;
    }
    let sid = sid.trim_end_matches(".json");
    let store = sim.store.lock().unwrap();
    match store.by_sid.get(sid).map(|&i| &store.messages[i]).filter(|m| m.account_sid == account) {
        Some(m) => (StatusCode::OK, Json(message_json(m))).into_response(),
        None => twilio_error(
            404,
            20404,
            &format!("The requested resource /2010-04-01/Accounts/{account}/Messages/{sid}.json was not found"),
        ),
    }
}
