//! What the simulator sends to Messenger: inbound messages from "handsets" (`POST /_sim/inbound`) and status
//! callbacks (`POST /_sim/status-callback`), each signed with the token of the account that owns the number, as
//! Twilio signs them.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::wire::{new_sid, twilio_error};
use crate::{Sim, SimInbound, SimMessage};

/// POSTs a form to a webhook the way Twilio does: `X-Twilio-Signature` and `I-Twilio-Idempotency-Token`.
pub async fn post_signed(token: &str, url: &str, params: &[(String, String)]) -> Result<(u16, String), reqwest::Error> {
    let signature = shared::twilio::signature::compute(token, url, params);
    let resp = crate::http()
        .post(url)
        .header("X-Twilio-Signature", signature)
        .header("I-Twilio-Idempotency-Token", new_sid("idem"))
        .form(params)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

/// `POST /_sim/inbound` `{"from", "to", "body"}`: a handset texts one of our numbers. Opt-out keywords are honoured
/// as Twilio does (later sends from that number to that handset fail with 21610), and the number's SmsUrl is called
/// with Twilio's webhook parameters, signed.
#[derive(Deserialize)]
pub(crate) struct InboundRequest {
    from: String,
    to: String,
    body: String,
}

pub(crate) async fn sim_inbound(State(sim): State<Sim>, Json(req): Json<InboundRequest>) -> Response {
    let cfg = sim.config();
    let sid = new_sid("SM");
    let keyword = req.body.trim().to_ascii_uppercase();
    let (number, sms_url) = {
        let mut store = sim.store.lock().unwrap();
        let number = store.live_number(&req.to).cloned();
        let pair = (req.to.clone(), req.from.clone());
        if ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"].contains(&keyword.as_str()) {
            store.opted_out.insert(pair);
        } else if ["START", "YES", "UNSTOP"].contains(&keyword.as_str()) {
            store.opted_out.remove(&pair);
        }
        let url = number.as_ref().and_then(|n| n.sms_url.clone()).filter(|u| !u.is_empty());
        (number, url)
    };
    let Some(number) = number else { return twilio_error(404, 20404, "no such number") };
    let mut webhook_status = 0;
    if let Some(url) = sms_url {
        let params: Vec<(String, String)> = [
            ("AccountSid", number.account_sid.as_str()),
            ("ApiVersion", "2010-04-01"),
            ("Body", req.body.as_str()),
            ("From", req.from.as_str()),
            ("FromCountry", "US"),
            ("MessageSid", sid.as_str()),
            ("NumMedia", "0"),
            ("NumSegments", "1"),
            ("SmsMessageSid", sid.as_str()),
            ("SmsSid", sid.as_str()),
            ("SmsStatus", "received"),
            ("To", req.to.as_str()),
            ("ToCountry", "US"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let token = sim.token_of(&number.account_sid).unwrap_or(cfg.auth_token);
        webhook_status = post_signed(&token, &url, &params).await.map(|(s, _)| s).unwrap_or(0);
    }
    sim.store.lock().unwrap().inbound.push(SimInbound {
        sid: sid.clone(),
        from: req.from,
        to: req.to,
        body: req.body,
        webhook_status,
    });
    Json(serde_json::json!({ "sid": sid, "webhook_status": webhook_status })).into_response()
}

/// `POST /_sim/status-callback` `{"sid", "status", "error_code"?}`: the carrier reports on a message; Twilio calls
/// the message's `StatusCallback`, signed with the token of the account that sent it. Answers the callback's HTTP
/// status (0 if the message asked for none).
#[derive(Deserialize)]
pub(crate) struct StatusCallbackRequest {
    sid: String,
    status: String,
    error_code: Option<u32>,
}

pub(crate) async fn sim_status_callback(State(sim): State<Sim>, Json(req): Json<StatusCallbackRequest>) -> Response {
    let m = {
        let store = sim.store.lock().unwrap();
        store.by_sid.get(&req.sid).map(|&i| store.messages[i].clone())
    };
    let Some(m) = m else { return twilio_error(404, 20404, "no such message") };
    let status = match &m.status_callback {
        Some(url) => send_status_callback(&sim, &m, url, &req.status, req.error_code).await,
        None => 0,
    };
    Json(serde_json::json!({ "webhook_status": status })).into_response()
}

/// POSTs one status callback for `m` the way Twilio does; returns the HTTP status (0 if the call failed).
pub(crate) async fn send_status_callback(
    sim: &Sim,
    m: &SimMessage,
    url: &str,
    status: &str,
    error_code: Option<u32>,
) -> u16 {
    let mut params: Vec<(String, String)> = vec![
        ("AccountSid".into(), m.account_sid.clone()),
        ("ApiVersion".into(), "2010-04-01".into()),
        ("From".into(), m.from.clone()),
        ("MessageSid".into(), m.sid.clone()),
        ("MessageStatus".into(), status.to_owned()),
        ("SmsSid".into(), m.sid.clone()),
        ("SmsStatus".into(), status.to_owned()),
        ("To".into(), m.to.clone()),
    ];
    if let Some(code) = error_code {
        params.push(("ErrorCode".into(), code.to_string()));
    }
    let Some(token) = sim.token_of(&m.account_sid) else { return 0 };
    post_signed(&token, url, &params).await.map(|(s, _)| s).unwrap_or(0)
}
