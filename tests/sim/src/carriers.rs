//! The carriers behind the numbers: Twilio Lookup v2 (`GET /v2/PhoneNumbers/{n}?Fields=line_type_intelligence` on the
//! Lookups API base), and the limits US carriers enforce on A2P 10DLC traffic after Twilio accepted a message —
//! reported, as Twilio reports them, through the message's status callback.
//!
//! Every number has a deterministic line type and carrier, by a hash of its digits: about 40 % T-Mobile, 35 %
//! AT&T, 20 % Verizon (mobile) and 5 % landlines; `line_overrides` in the settings fixes any number's. A brand (the
//! account) over `tmobile_daily_cap` segments in a day gets 30023 for T-Mobile recipients, over `att_per_minute`
//! messages in any 60 s gets 30022 for AT&T ones; a text to a landline gets 30006 — all with `carriers` on (off by
//! default, so other tests see every text delivered).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::faults::{fault_response, roll};
use crate::wire::{basic_auth, parse_query, unauthorized};
use crate::{Sim, SimMessage};

/// What a number is, as Lookup says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    TMobile,
    Att,
    Verizon,
    Landline,
}

impl Line {
    /// The line of `number`, unless the settings fix it.
    pub fn of(sim: &Sim, number: &str) -> Line {
        if let Some(l) = sim.config().line_overrides.get(number) {
            return *l;
        }
        let h = number.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        match h % 100 {
            0..40 => Line::TMobile,
            40..75 => Line::Att,
            75..95 => Line::Verizon,
            _ => Line::Landline,
        }
    }

    fn lti(self) -> serde_json::Value {
        let (carrier, kind, mcc, mnc) = match self {
            Line::TMobile => ("T-Mobile USA, Inc.", "mobile", "310", "260"),
            Line::Att => ("AT&T Wireless", "mobile", "310", "410"),
            Line::Verizon => ("Verizon Wireless", "mobile", "311", "480"),
            Line::Landline => ("Pacific Bell", "landline", "", ""),
        };
        let code = |c: &str| if c.is_empty() { serde_json::Value::Null } else { c.into() };
        serde_json::json!({
            "error_code": null,
            "mobile_country_code": code(mcc),
            "mobile_network_code": code(mnc),
            "carrier_name": carrier,
            "type": kind,
        })
    }
}

/// `GET /v2/PhoneNumbers/{number}` (Lookup v2), with `Fields=line_type_intelligence`.
pub(crate) async fn lookup(
    State(sim): State<Sim>,
    Path(number): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    match basic_auth(&headers) {
        Some((user, pass)) if sim.token_of(&user).is_some_and(|t| t == pass) => {}
        _ => return unauthorized(),
    }
    let cfg = sim.config();
    sim.store.lock().unwrap().lookup_requests += 1;
    if let Some(r) = fault_response(&roll(&cfg.lookup_faults)) {
        return r;
    }
    if cfg.lookup_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(cfg.lookup_latency_ms)).await;
    }
    let q = parse_query(raw);
    let wanted = q.iter().any(|(k, v)| k == "Fields" && v.split(',').any(|f| f == "line_type_intelligence"));
    let valid = number.len() == 12 && number.starts_with("+1") && number[2..].bytes().all(|b| b.is_ascii_digit());
    let url = format!("https://lookups.twilio.com/v2/PhoneNumbers/{number}");
    if !valid {
        return Json(serde_json::json!({
            "calling_country_code": null, "country_code": null, "phone_number": number, "national_format": null,
            "valid": false, "validation_errors": ["NOT_A_NUMBER"], "caller_name": null, "sim_swap": null,
            "call_forwarding": null, "line_status": null, "line_type_intelligence": null, "identity_match": null,
            "reassigned_number": null, "sms_pumping_risk": null, "phone_number_quality_score": null,
            "pre_fill": null, "url": url,
        }))
        .into_response();
    }
    let national = format!("({}) {}-{}", &number[2..5], &number[5..8], &number[8..]);
    Json(serde_json::json!({
        "calling_country_code": "1", "country_code": "US", "phone_number": number, "national_format": national,
        "valid": true, "validation_errors": [], "caller_name": null, "sim_swap": null, "call_forwarding": null,
        "line_status": null,
        "line_type_intelligence": if wanted { Line::of(&sim, &number).lti() } else { serde_json::Value::Null },
        "identity_match": null, "reassigned_number": null, "sms_pumping_risk": null,
        "phone_number_quality_score": null, "pre_fill": null, "url": url,
    }))
    .into_response()
}

/// The error a carrier reports for this message after Twilio accepted it, if any (with `carriers` on): a landline
/// (30006), the brand's T-Mobile day spent (30023), AT&T's per-minute limit (30022).
pub(crate) fn carrier_refusal(sim: &Sim, m: &SimMessage, earlier: &[SimMessage]) -> Option<u32> {
    let cfg = sim.config();
    if !cfg.carriers {
        return None;
    }
    let line = Line::of(sim, &m.to);
    if line == Line::Landline {
        return Some(30006);
    }
    let same_brand = |x: &&SimMessage| x.account_sid == m.account_sid && x.error_code.is_none();
    match line {
        Line::TMobile => {
            let cap = cfg.tmobile_daily_cap?;
            let day = pacific_day(m.date_created);
            let used: u64 = earlier
                .iter()
                .filter(same_brand)
                .filter(|x| Line::of(sim, &x.to) == Line::TMobile && pacific_day(x.date_created) == day)
                .map(|x| u64::from(x.num_segments))
                .sum();
            (used + u64::from(m.num_segments) > cap).then_some(30023)
        }
        Line::Att => {
            let cap = cfg.att_per_minute?;
            let since = m.date_created - chrono::Duration::seconds(60);
            let used = earlier
                .iter()
                .rev()
                .take_while(|x| x.date_created > since)
                .filter(same_brand)
                .filter(|x| Line::of(sim, &x.to) == Line::Att)
                .count() as u64;
            (used >= cap).then_some(30022)
        }
        _ => None,
    }
}

/// The T-Mobile day a moment falls in: it ends at midnight Pacific time.
fn pacific_day(t: DateTime<Utc>) -> chrono::NaiveDate {
    t.with_timezone(&chrono_tz::America::Los_Angeles).date_naive()
}

/// Lookups the simulator answered (faults included).
pub fn lookups(sim: &Sim) -> u64 {
    sim.store.lock().unwrap().lookup_requests
}
