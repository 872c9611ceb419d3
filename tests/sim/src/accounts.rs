//! `Accounts`: the main account and its subaccounts, each with its own auth token; the parent's credentials act
//! for its subaccounts. `POST /_sim/accounts/{sid}/rotate` gives a subaccount a new token.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rand::Rng;
use shared::twilio::types::{Account, Accounts};

use crate::wire::*;
use crate::{Sim, SimAccount, SimConfig};

pub(crate) fn account_json(
    sid: &str,
    friendly_name: &str,
    token: &str,
    owner: &str,
    status: &str,
    created: DateTime<Utc>,
) -> Account {
    let base = format!("/2010-04-01/Accounts/{sid}");
    let subresources = [
        ("available_phone_numbers", "AvailablePhoneNumbers"),
        ("calls", "Calls"),
        ("conferences", "Conferences"),
        ("incoming_phone_numbers", "IncomingPhoneNumbers"),
        ("notifications", "Notifications"),
        ("outgoing_caller_ids", "OutgoingCallerIds"),
        ("recordings", "Recordings"),
        ("transcriptions", "Transcriptions"),
        ("addresses", "Addresses"),
        ("signing_keys", "SigningKeys"),
        ("connect_apps", "ConnectApps"),
        ("sip", "SIP"),
        ("authorized_connect_apps", "AuthorizedConnectApps"),
        ("usage", "Usage"),
        ("keys", "Keys"),
        ("applications", "Applications"),
        ("short_codes", "SMS/ShortCodes"),
        ("queues", "Queues"),
        ("messages", "Messages"),
        ("balance", "Balance"),
    ];
    let uris: serde_json::Map<String, serde_json::Value> =
        subresources.iter().map(|(k, p)| ((*k).to_owned(), format!("{base}/{p}.json").into())).collect();
    Account {
        auth_token: Some(token.to_owned()),
        date_created: Some(created),
        date_updated: Some(created),
        friendly_name: Some(friendly_name.to_owned()),
        owner_account_sid: Some(owner.to_owned()),
        sid: Some(sid.to_owned()),
        status: Some(status.to_owned()),
        subresource_uris: Some(serde_json::Value::Object(uris)),
        kind: Some("Full".into()),
        uri: Some(format!("{base}.json")),
    }
}

pub(crate) fn sub_json(a: &SimAccount) -> Account {
    account_json(&a.sid, &a.friendly_name, &a.auth_token, &a.owner_account_sid, &a.status, a.date_created)
}

/// The main account's credentials, or 401.
pub(crate) fn authorize_main(sim: &Sim, headers: &HeaderMap) -> Result<SimConfig, Response> {
    let cfg = sim.config();
    match basic_auth(headers) {
        Some((user, pass)) if user == cfg.account_sid && pass == cfg.auth_token => Ok(cfg),
        _ => Err(unauthorized()),
    }
}

/// `POST /2010-04-01/Accounts.json`: a new subaccount with its own auth token.
pub(crate) async fn create_account(State(sim): State<Sim>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let cfg = match authorize_main(&sim, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let f = form(&body);
    let now = Utc::now();
    let a = SimAccount {
        sid: new_sid("AC"),
        friendly_name: field(&f, "FriendlyName")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("SubAccount Created at {}", now.format("%Y-%m-%d %I:%M %p"))),
        auth_token: format!("{:032x}", rand::rng().random::<u128>()),
        owner_account_sid: cfg.account_sid,
        status: "active".into(),
        date_created: now,
    };
    sim.store.lock().unwrap().accounts.push(a.clone());
    (StatusCode::CREATED, Json(sub_json(&a))).into_response()
}

/// `GET /2010-04-01/Accounts.json`: the main account and its subaccounts.
pub(crate) async fn list_accounts(State(sim): State<Sim>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let cfg = match authorize_main(&sim, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let q = parse_query(raw);
    let mut all = vec![account_json(
        &cfg.account_sid,
        "Main account",
        &cfg.auth_token,
        &cfg.account_sid,
        "active",
        DateTime::<Utc>::UNIX_EPOCH,
    )];
    all.extend(sim.store.lock().unwrap().accounts.iter().map(sub_json));
    let friendly = field(&q, "FriendlyName");
    let status = field(&q, "Status");
    let matched: Vec<Account> = all
        .into_iter()
        .filter(|a| friendly.is_none_or(|f| a.friendly_name.as_deref() == Some(f)))
        .filter(|a| status.is_none_or(|st| a.status.as_deref() == Some(st)))
        .collect();
    let (slice, meta) = page_of(&matched, "/2010-04-01/Accounts.json", &q);
    envelope(Accounts { accounts: slice }, meta)
}

/// `GET /2010-04-01/Accounts/{sid}.json`: the main account itself, or one of its subaccounts (with its token).
pub(crate) async fn fetch_account(State(sim): State<Sim>, Path(account): Path<String>, headers: HeaderMap) -> Response {
    let account = account.trim_end_matches(".json").to_owned();
    sim.store.lock().unwrap().account_fetches += 1;
    let Some((user, pass)) = basic_auth(&headers) else { return unauthorized() };
    if sim.token_of(&user).is_none_or(|t| t != pass) {
        return unauthorized();
    }
    let cfg = sim.config();
    let not_found = || {
        twilio_error(404, 20404, &format!("The requested resource /2010-04-01/Accounts/{account}.json was not found"))
    };
    if account == cfg.account_sid {
        if user != cfg.account_sid {
            return not_found();
        }
        let main =
            account_json(&account, "Main account", &cfg.auth_token, &account, "active", DateTime::<Utc>::UNIX_EPOCH);
        return Json(main).into_response();
    }
    let found = sim.store.lock().unwrap().accounts.iter().find(|a| a.sid == account).cloned();
    match found {
        Some(a) if user == cfg.account_sid || user == a.sid => Json(sub_json(&a)).into_response(),
        _ => not_found(),
    }
}

/// `POST /_sim/accounts/{sid}/rotate`: gives a subaccount a new auth token (returned), as promoting a secondary
/// token does in Twilio's console.
pub(crate) async fn rotate_account_token(State(sim): State<Sim>, Path(account): Path<String>) -> Response {
    let mut store = sim.store.lock().unwrap();
    match store.accounts.iter_mut().find(|a| a.sid == account) {
        Some(a) => {
            a.auth_token = format!("{:032x}", rand::rng().random::<u128>());
            Json(serde_json::json!({ "sid": a.sid, "auth_token": a.auth_token })).into_response()
        }
        None => twilio_error(404, 20404, "no such subaccount"),
    }
}
