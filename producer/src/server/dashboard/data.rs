//! What each dashboard page reads from Redis: a bounded number of commands per page, never a scan over all keys.
//! Every page also costs one script call before it is read (the session's check, `session.rs`: four commands inside,
//! one round trip).
//!
//! | page | commands |
//! |---|---|
//! | overview | `TIME`; 60 `HMGET` (one per minute of the last hour, one pipeline); `SMEMBERS msgr:active` and 3 per customer shown (at most 50); admins also `ZRANGE msgr:workers` and `HGETALL` of the workers' totals |
//! | batches | `ZREVRANGE` of the fleet's index (admins) or of each customer's index in scope (at most 20 customers); `HGETALL` per batch shown (at most 50) |
//! | batch | `HGETALL` of the batch (twice: the page and the recipients listing); `HGETALL` of its failed and of its undelivered recipients, `HGET` of its variables and `HMGET` of the values of the 50 shown; once complete with some of them and not resent yet, the resend's count: the same reads again, one pipeline of four `HGET`, and two `SMISMEMBER` (opt-outs, consent) |
//! | inbox | `SMEMBERS msgr:customers` (admins); `HGETALL` of the customer; `ZREVRANGEBYSCORE` of the inbox (51 entries; with `unread`, a pipeline of `HGET` per entry read, and when some are read already, more reads twice as big up to 500 entries, at most 20); per thread shown (at most 50) an `HGET`, two `GET` (its conversation this epoch and the last) and a `SISMEMBER` in one pipeline, then per batch answered an `HMGET` and an `HGET` in one pipeline; `HLEN` of the unread |
//! | unread badge | one `HLEN` per customer in view (at most 200), one pipeline |
//! | pool | what `producer pool` reads (`TIME`, the pool, its sids and last sends, 2 per number) and `HGETALL` of pending purchase and release intents |
//! | conversations | `SMEMBERS msgr:customers` (admins: the customer list); with a phone, `HGETALL` of the customer, one pipeline of `SISMEMBER`, `HGET` and two `GET` (the conversation, at most 12 KB each), one pipeline of two `HGET` per text sent (its delivery report, and the carrier's code); with replies unread, `HGETALL` of the customer again and a pipeline of `HGET`, `HDEL`, `HLEN` |
//! | events | `HGETALL` of the customer (twice: the page and the dead-letter listing each check it exists); `ZRANGE` of its dead letters (at most 1,000) and one pipeline of an `XRANGE` and an `HGET` per dead letter |

use std::collections::HashMap;

use redis::AsyncCommands;
use serde::Serialize;
use shared::batches::{self, BatchStatus};
use shared::customers::{self, PoolReport};
use shared::domain::{BatchId, CustomerId};
use shared::keys::{self, CustomerKeys};
use shared::store::Conn;

use crate::server::auth::Scope;

/// Customers shown on the overview at most.
pub const MAX_CUSTOMERS: usize = 50;
/// Batches listed at most.
pub const MAX_BATCHES: usize = 50;

/// One minute of the fleet's (or the scope's) activity.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Minute {
    /// Redis minute (Unix seconds / 60).
    pub minute: i64,
    pub sent: u64,
    pub failed: u64,
    pub purchases: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct QueueRow {
    pub customer: String,
    pub ready: i64,
    pub scheduled: i64,
    pub in_flight: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkerRow {
    pub name: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_s: f64,
    pub sent: u64,
    pub failed: u64,
    pub purchases: u64,
    pub restarts: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Overview {
    pub now_ms: i64,
    /// The last 60 minutes, oldest first.
    pub minutes: Vec<Minute>,
    pub queues: Vec<QueueRow>,
    /// Customers with work that were not shown (beyond [`MAX_CUSTOMERS`]).
    pub more_customers: usize,
    /// `None` for customer-scoped viewers (the fleet is not theirs to see).
    pub workers: Option<Vec<WorkerRow>>,
}

impl Overview {
    pub fn sent_last_hour(&self) -> u64 {
        self.minutes.iter().map(|m| m.sent).sum()
    }
    pub fn failed_last_hour(&self) -> u64 {
        self.minutes.iter().map(|m| m.failed).sum()
    }
    pub fn purchases_last_hour(&self) -> u64 {
        self.minutes.iter().map(|m| m.purchases).sum()
    }
}

fn in_scope(scope: &Scope, c: &CustomerId) -> bool {
    match scope {
        Scope::Admin => true,
        Scope::Customers(ids) => ids.contains(c),
    }
}

pub async fn overview(conn: &mut Conn, scope: &Scope) -> redis::RedisResult<Overview> {
    let now_ms = customers::redis_now_ms(conn).await?;
    let this_minute = now_ms / 60_000;
    // Per-minute counts: fleet totals for admins, the sum of their customers' for scoped viewers.
    let fields: Vec<Vec<String>> = match scope {
        Scope::Admin => vec![vec!["sent".into()], vec!["failed".into()], vec!["purchases".into()]],
        Scope::Customers(ids) => {
            ["sent", "failed", "purchases"].iter().map(|k| ids.iter().map(|c| format!("{k}:{c}")).collect()).collect()
        }
    };
    let flat: Vec<&String> = fields.iter().flatten().collect();
    let mut pipe = redis::pipe();
    for m in (this_minute - 59)..=this_minute {
        pipe.cmd("HMGET").arg(keys::stats_minute(m)).arg(&flat);
    }
    let rows: Vec<Vec<Option<u64>>> = if flat.is_empty() { Vec::new() } else { pipe.query_async(conn).await? };
    let minutes = rows
        .into_iter()
        .enumerate()
        .map(|(i, vals)| {
            let mut at = 0;
            let mut sum = |n: usize| {
                let s: u64 = vals[at..at + n].iter().map(|v| v.unwrap_or(0)).sum();
                at += n;
                s
            };
            Minute {
                minute: this_minute - 59 + i as i64,
                sent: sum(fields[0].len()),
                failed: sum(fields[1].len()),
                purchases: sum(fields[2].len()),
            }
        })
        .collect();

    let active: Vec<String> = conn.smembers(keys::ACTIVE).await?;
    let mut ids: Vec<CustomerId> =
        active.iter().filter_map(|c| CustomerId::parse(c).ok()).filter(|c| in_scope(scope, c)).collect();
    ids.sort();
    let more_customers = ids.len().saturating_sub(MAX_CUSTOMERS);
    ids.truncate(MAX_CUSTOMERS);
    let counts = customers::queue_depths(conn, &ids).await?;
    let queues = ids
        .iter()
        .zip(counts)
        .map(|(c, d)| QueueRow {
            customer: c.to_string(),
            ready: d.ready,
            scheduled: d.scheduled,
            in_flight: d.in_flight,
        })
        .collect();

    let workers = match scope {
        Scope::Customers(_) => None,
        Scope::Admin => {
            let beats: Vec<(String, f64)> = conn.zrange_withscores(keys::WORKERS, 0, -1).await?;
            let totals: HashMap<String, String> = conn.hgetall(keys::STATS_WORKERS).await?;
            let mut rows: Vec<WorkerRow> = beats
                .into_iter()
                .map(|(name, at)| {
                    let t: Vec<u64> = totals
                        .get(&name)
                        .map(|l| l.split('|').map(|v| v.parse().unwrap_or(0)).collect())
                        .unwrap_or_default();
                    let get = |i: usize| t.get(i).copied().unwrap_or(0);
                    WorkerRow {
                        heartbeat_age_s: ((now_ms as f64 - at) / 1000.0).max(0.0),
                        name,
                        sent: get(0),
                        failed: get(1),
                        purchases: get(2),
                        restarts: get(3),
                    }
                })
                .collect();
            rows.sort_by(|a, b| a.heartbeat_age_s.total_cmp(&b.heartbeat_age_s));
            Some(rows)
        }
    };
    Ok(Overview { now_ms, minutes, queues, more_customers, workers })
}

/// Batches to list: the newest first, optionally one customer's, optionally those whose id contains `q`.
pub async fn batches(
    conn: &mut Conn,
    scope: &Scope,
    customer: Option<&CustomerId>,
    q: &str,
) -> redis::RedisResult<Vec<BatchStatus>> {
    // Candidate ids, newest first.
    let mut ids: Vec<(String, f64)> = match (scope, customer) {
        (_, Some(c)) => conn.zrevrange_withscores(CustomerKeys::new(c).batches(), 0, 199).await?,
        (Scope::Admin, None) => conn.zrevrange_withscores(keys::BATCH_INDEX, 0, 199).await?,
        (Scope::Customers(cs), None) => {
            let mut all = Vec::new();
            let mut cs: Vec<&CustomerId> = cs.iter().collect();
            cs.sort();
            for c in cs.into_iter().take(20) {
                let some: Vec<(String, f64)> = conn.zrevrange_withscores(CustomerKeys::new(c).batches(), 0, 49).await?;
                all.extend(some);
            }
            all
        }
    };
    ids.sort_by(|a, b| b.1.total_cmp(&a.1));
    let q = q.trim().to_ascii_lowercase();
    let wanted: Vec<BatchId> = ids
        .into_iter()
        .filter(|(id, _)| q.is_empty() || id.to_ascii_lowercase().contains(&q))
        .filter_map(|(id, _)| BatchId::parse(&id).ok())
        .filter(|b| in_scope(scope, b.customer()))
        .take(MAX_BATCHES)
        .collect();
    let statuses = futures::future::try_join_all(wanted.iter().map(|b| {
        let mut conn = conn.clone();
        async move { batches::status(&mut conn, b).await }
    }))
    .await?;
    Ok(statuses.into_iter().flatten().collect())
}

/// A batch and up to 50 of its failed recipients (recipient → reason).
pub async fn batch(conn: &mut Conn, id: &BatchId) -> redis::RedisResult<Option<BatchStatus>> {
    batches::status(conn, id).await
}

/// A pending purchase or release, for the pool page.
#[derive(Clone, Debug, Serialize)]
pub struct Pending {
    pub what: &'static str,
    pub id: String,
    pub since_ms: i64,
    pub detail: String,
}

/// A customer's pool and its purchases and releases in flight.
pub async fn pool(
    conn: &mut Conn,
    id: &CustomerId,
    quota: &shared::config::QuotaSettings,
) -> redis::RedisResult<Option<(PoolReport, Vec<Pending>)>> {
    let Some(report) = customers::pool(conn, id, quota).await? else { return Ok(None) };
    let k = CustomerKeys::new(id);
    let (intents, releases): (HashMap<String, String>, HashMap<String, String>) =
        redis::pipe().hgetall(k.intents()).hgetall(k.releases()).query_async(conn).await?;
    let split = |v: &str| {
        let (at, rest) = v.split_once('|').unwrap_or((v, ""));
        (at.parse().unwrap_or(0), rest.to_owned())
    };
    let mut pending: Vec<Pending> = intents
        .into_iter()
        .map(|(i, v)| {
            let (since_ms, name) = split(&v);
            Pending { what: "purchase", id: i, since_ms, detail: name }
        })
        .chain(releases.into_iter().map(|(n, v)| {
            let (since_ms, sid) = split(&v);
            Pending { what: "release", id: n, since_ms, detail: sid }
        }))
        .collect();
    pending.sort_by_key(|p| p.since_ms);
    Ok(Some((report, pending)))
}
