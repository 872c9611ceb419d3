//! Answering back: a customer's events (what happened to its messages, its tenants' replies and opt-outs) and a
//! tenant's opt-out record.
//!
//! The events are written by the scripts that make the changes they report (`shared/lua/common.lua`), into the
//! customer's stream; this module only reads it. An event's id is its stream id (`<ms>-<n>`): stable, strictly
//! increasing, the cursor of the pull API — reading from a cursor returns every later event once, in order, with
//! no gap, whichever server answers and however often it restarted.

use serde::Serialize;
use shared::batches::rfc3339;
use shared::domain::CustomerId;
use shared::keys::CustomerKeys;

use super::{Deps, OpsError, Problems, customers};

/// A stream entry as Redis returns it: its id and its field/value pairs.
pub type StreamEntry = (String, Vec<(String, String)>);

/// Most events one page returns, and how many when the caller does not say.
pub const PAGE_MAX: usize = 1_000;
pub const PAGE_DEFAULT: usize = 100;

/// One event, in the shape Standard Webhooks payloads have (`type`, `timestamp`, `data`), with its id.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Event {
    /// `evt_<stream id>`: the same event always has the same id.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened (Redis's clock), RFC 3339 with milliseconds.
    pub timestamp: String,
    /// `customer`, and where they apply `batch`, `recipient`, `message_sid`, …
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A page of events after a cursor.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Pass as `after` for the next page: the last event's cursor, or the one given when there is nothing newer.
    pub next: Option<String>,
    /// Whether the customer records events (`events` setting); when off, no new events appear.
    pub recording: bool,
}

/// The events of customer `id` after cursor `after` (an event id, or its stream id; none: from the oldest kept),
/// at most `limit` of them.
pub async fn list(
    deps: &Deps,
    id: &CustomerId,
    after: Option<&str>,
    limit: Option<&str>,
) -> Result<EventPage, OpsError> {
    let mut p = Problems::default();
    let after = after.and_then(|a| p.check("after", cursor(a)));
    let limit = match limit {
        None => Some(PAGE_DEFAULT),
        Some(l) => p.check("limit", page_size(l)),
    };
    p.finish()?;
    let customer = customers::get(deps, id).await?;
    let start = after.as_ref().map_or_else(|| "-".to_owned(), |a| format!("({a}"));
    let rows: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(CustomerKeys::new(id).events())
        .arg(&start)
        .arg("+")
        .arg("COUNT")
        .arg(limit.unwrap_or(PAGE_DEFAULT))
        .query_async(&mut deps.conn())
        .await
        .map_err(OpsError::from)?;
    let events: Vec<Event> = rows.into_iter().map(|(sid, fields)| event(id, &sid, fields)).collect();
    let next = events.last().map(|e| e.id.clone()).or(after.map(|a| format!("evt_{a}")));
    Ok(EventPage { events, next, recording: customer.events })
}

/// A cursor: `evt_<ms>-<n>` or `<ms>-<n>`, each part a 64-bit number as Redis stream ids are (a larger one is the
/// caller's mistake, answered 422, not a Redis error that would read as an outage).
fn cursor(v: &str) -> Result<String, String> {
    let raw = v.strip_prefix("evt_").unwrap_or(v);
    let part =
        |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u64>().is_ok();
    // The very last id is no cursor: nothing can come after it (Redis refuses an interval that starts past it).
    let ok = raw.split_once('-').is_some_and(|(ms, n)| part(ms) && part(n))
        && raw != "18446744073709551615-18446744073709551615";
    if ok { Ok(raw.to_owned()) } else { Err(format!("{v:?} is not an event id (evt_<ms>-<n>, as `next` gives)")) }
}

#[cfg(test)]
#[test]
fn cursors_are_two_64_bit_numbers() {
    assert_eq!(cursor("evt_1764000000000-3").unwrap(), "1764000000000-3");
    assert_eq!(
        cursor("18446744073709551615-18446744073709551614").unwrap(),
        "18446744073709551615-18446744073709551614"
    );
    for bad in [
        "evt_99999999999999999999-99999999999999999999",
        "18446744073709551615-18446744073709551615",
        "18446744073709551616-0",
        "1-",
        "-1",
        "1-2-3",
        "x-1",
        "1",
    ] {
        assert!(cursor(bad).is_err(), "{bad}");
    }
}

fn page_size(v: &str) -> Result<usize, String> {
    match v.trim().parse::<i64>() {
        Ok(n) if (1..=PAGE_MAX as i64).contains(&n) => Ok(n as usize),
        Ok(n) => Err(format!("must be between 1 and {PAGE_MAX}, not {n}")),
        Err(_) => Err(format!("{v:?} is not a whole number")),
    }
}

/// An event from its stream entry (`t` and the data fields the scripts wrote).
pub fn event(customer: &CustomerId, stream_id: &str, fields: Vec<(String, String)>) -> Event {
    let ms: i64 = stream_id.split('-').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    let timestamp = rfc3339(ms);
    let mut kind = String::new();
    let mut data = serde_json::Map::new();
    data.insert("customer".into(), customer.as_str().into());
    for (f, v) in fields {
        let (name, value): (&str, serde_json::Value) = match f.as_str() {
            "t" => {
                kind = v;
                continue;
            }
            "b" if v.is_empty() => continue,
            "b" => ("batch", v.into()),
            "r" => ("recipient", v.into()),
            "sid" if v.is_empty() => continue,
            "sid" => ("message_sid", v.into()),
            "code" if v.is_empty() => continue,
            "code" => {
                if let Some(meaning) = v.parse().ok().and_then(shared::twilio::error::describe) {
                    data.insert("error_message".into(), meaning.into());
                }
                ("error_code", v.parse::<u64>().map_or(v.clone().into(), Into::into))
            }
            "total" | "sent" | "failed" | "opted_out" | "cancelled" | "expired" => {
                (f.as_str(), v.parse::<u64>().map_or(v.clone().into(), Into::into))
            }
            "spent_usd" | "limit_usd" => (f.as_str(), v.parse::<f64>().map_or(v.clone().into(), Into::into)),
            other => (other, v.into()),
        };
        data.insert(name.to_owned(), value);
    }
    Event { id: format!("evt_{stream_id}"), kind, timestamp, data: serde_json::Value::Object(data) }
}

/// Marks where delivery to a newly set URL starts: the events recorded from now on (the stream's last id now);
/// earlier ones stay available to the pull API.
pub async fn start_delivery_here(deps: &Deps, id: &CustomerId) -> Result<(), OpsError> {
    let k = CustomerKeys::new(id);
    let mut conn = deps.conn();
    let last: Vec<StreamEntry> = redis::cmd("XREVRANGE")
        .arg(k.events())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .map_err(OpsError::from)?;
    let from = last.first().map_or_else(|| "0-0".to_owned(), |(id, _)| id.clone());
    let (): () = redis::pipe()
        .del(k.events_lanes())
        .ignore()
        .del(k.events_retry())
        .ignore()
        .hset(k.events_lanes(), "start", from)
        .ignore()
        .query_async(&mut conn)
        .await
        .map_err(OpsError::from)?;
    Ok(())
}

/// An event given up after every delivery attempt.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub event: Event,
    /// How many attempts, and the last failure.
    pub why: String,
}

/// Most dead letters one call lists or replays.
pub const DEAD_MAX: usize = 1_000;

/// Customer `id`'s dead-lettered events, oldest first (at most [`DEAD_MAX`]); events the stream no longer keeps
/// (retention) are left out.
pub async fn dead_letters(deps: &Deps, id: &CustomerId) -> Result<Vec<DeadLetter>, OpsError> {
    customers::get(deps, id).await?;
    let k = CustomerKeys::new(id);
    let mut conn = deps.conn();
    let ids: Vec<String> =
        redis::cmd("ZRANGE").arg(k.events_dead()).arg(0).arg(DEAD_MAX as i64 - 1).query_async(&mut conn).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for i in &ids {
        pipe.cmd("XRANGE").arg(k.events()).arg(i).arg(i).hget(k.events_dead_why(), i);
    }
    let rows: Vec<(Vec<StreamEntry>, Option<String>)> = pipe.query_async(&mut conn).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(found, why)| {
            let (sid, fields) = found.into_iter().next()?;
            Some(DeadLetter { event: event(id, &sid, fields), why: why.unwrap_or_default() })
        })
        .collect())
}

/// Queues customer `id`'s dead-lettered events (all, or those of `only`) for one more delivery each; returns how
/// many were queued. The deliverer sends them apart from the lanes (a replay is out of order by nature); one that
/// fails again goes back to the dead letters.
pub async fn replay_dead(deps: &Deps, id: &CustomerId, only: Option<&[String]>) -> Result<u64, OpsError> {
    customers::get(deps, id).await?;
    let ids: Vec<String> = match only {
        Some(list) => {
            let mut p = Problems::default();
            let parsed: Vec<String> = list.iter().filter_map(|e| p.check("ids", cursor(e))).collect();
            if list.len() > DEAD_MAX {
                p.push("ids", format!("at most {DEAD_MAX} at once, not {}", list.len()));
            }
            p.finish()?;
            parsed
        }
        None => Vec::new(),
    };
    let n: u64 = shared::scripts::EVENTS_REPLAY
        .key(CustomerKeys::new(id).events_dead())
        .key(CustomerKeys::new(id).events_replay())
        .arg(DEAD_MAX)
        .arg(&ids)
        .run(&mut deps.conn())
        .await?;
    Ok(n)
}
