//! Releasing idle numbers: the mirror of buying one.
//!
//! A number costs money every month whether it sends or not. A number that sent nothing for a while is released
//! (Twilio `DELETE`), keeping what the customer's backlog needs and never a number a recipient could still be
//! steered to (sticky senders) or one with a send in progress — see `release_plan.lua` for the exact rule.
//!
//! The protocol mirrors the purchase protocol. Under the customer's purchase lock (so no purchase decision runs at
//! the same time), one script picks the numbers, takes them out of the pool and records a *release intent* for each
//! — so no job can reserve a slot on a number from then on. The number also leaves the inbound routing. Then Twilio's
//! `DELETE` runs; the intent is cleared when Twilio confirms (204, or 404: already gone). If the outcome is unknown
//! (a timeout, a crash), the intent stays and [`resolve_releases`] asks Twilio whether the number still exists and
//! deletes it again if so: a released number never comes back to the pool, and no number is both released and in
//! the pool.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use serde::Serialize;

use crate::config::QuotaSettings;
use crate::customers::Customer;
use crate::domain::CustomerId;
use crate::keys::{self, CustomerKeys};
use crate::purchase::{self, PurchaseLock};
use crate::scripts::{self, Acks};
use crate::store::{Conn, num, strings};
use crate::twilio::{TwilioClient, TwilioError};

/// A number picked for release.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Releasable {
    pub number: String,
    pub sid: String,
    /// Redis ms of its last send (`None`: it never sent).
    pub last_send_ms: Option<i64>,
    /// How long it has been idle, ms.
    pub idle_ms: i64,
}

/// What a release run decided (and, unless it was a dry run, did).
#[derive(Clone, Debug, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseReport {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub customer: CustomerId,
    pub dry_run: bool,
    /// Jobs that wanted a slot when the plan was made.
    pub backlog: u64,
    /// Numbers left in the pool.
    pub kept: u64,
    pub released: Vec<Releasable>,
    /// Numbers taken out of the pool whose `DELETE` did not finish (resolved against Twilio later).
    pub pending: Vec<String>,
    /// What the released numbers cost a month at `MESSENGER_NUMBER_MONTHLY_COST` (set by the caller).
    pub monthly_saving: Option<f64>,
}

impl ReleaseReport {
    /// Fills in the monthly saving at `per_number` a month.
    pub fn with_saving(mut self, per_number: f64) -> Self {
        self.monthly_saving = Some((self.released.len() as f64 * per_number * 100.0).round() / 100.0);
        self
    }
}

/// Why a release did not run.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("a purchase for {0} is in progress (its lock is held or an intent is pending); try again shortly")]
    Busy(CustomerId),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// How a release runs.
#[derive(Clone, Debug)]
pub struct ReleaseOptions {
    /// Numbers idle at least this long are released.
    pub idle: Duration,
    /// Only say which numbers would be released; write nothing (not even the lock).
    pub dry_run: bool,
    /// TTL of the purchase lock the release holds (renewed while held).
    pub lock_ttl: Duration,
    /// Replicas that must confirm the numbers left the pool before Twilio's `DELETE`.
    pub acks: Option<Acks>,
}

/// Releases `customer`'s idle numbers (or, with `dry_run`, only says which it would release, writing nothing).
pub async fn release_idle(
    conn: &mut Conn,
    twilio: Option<&TwilioClient>,
    customer: &Customer,
    quota: &QuotaSettings,
    options: ReleaseOptions,
) -> Result<ReleaseReport, ReleaseError> {
    let ReleaseOptions { idle, dry_run, lock_ttl, acks } = options;
    let lock = if dry_run {
        None
    } else {
        match PurchaseLock::try_acquire(conn, &customer.id, lock_ttl, true).await? {
            Some(l) => Some(l),
            None => return Err(ReleaseError::Busy(customer.id.clone())),
        }
    };
    let planned = plan(conn, &customer.id, quota, idle, lock.as_ref().map(PurchaseLock::token), acks.as_ref()).await;
    let (backlog, kept, picked, confirmed) = match planned {
        Ok(Plan::Picked { backlog, kept, numbers, confirmed }) => (backlog, kept, numbers, confirmed),
        Ok(Plan::Busy) => {
            if let Some(l) = lock {
                l.release().await;
            }
            return Err(ReleaseError::Busy(customer.id.clone()));
        }
        Err(e) => {
            if let Some(l) = lock {
                l.release().await;
            }
            return Err(e.into());
        }
    };
    let mut report = ReleaseReport {
        customer: customer.id.clone(),
        dry_run,
        backlog,
        kept,
        released: Vec::new(),
        pending: Vec::new(),
        monthly_saving: None,
    };
    let Some(lock) = lock else {
        report.released = picked;
        return Ok(report);
    };
    if !picked.is_empty() {
        // Out of the inbound routing too (the numbers are already out of the pool).
        let mut pipe = redis::pipe();
        for n in &picked {
            pipe.hdel(keys::NUMBERS, &n.number).ignore();
        }
        let _: redis::RedisResult<()> = pipe.query_async(conn).await;
    }
    for n in picked {
        if !confirmed {
            // The replicas did not confirm that the numbers left the pool: a failover could put them back, so
            // Twilio's DELETE waits for the reconciler (which finds the intents if they survived).
            report.pending.push(n.number);
            continue;
        }
        match delete(conn, twilio, customer, &n.number, &n.sid).await {
            Ok(true) => report.released.push(n),
            Ok(false) | Err(_) => report.pending.push(n.number),
        }
    }
    lock.release().await;
    if !report.released.is_empty() {
        tracing::info!(customer = %customer.id, released = report.released.len(), kept, "released idle numbers");
    }
    Ok(report)
}

enum Plan {
    Picked { backlog: u64, kept: u64, numbers: Vec<Releasable>, confirmed: bool },
    Busy,
}

async fn plan(
    conn: &mut Conn,
    customer: &CustomerId,
    quota: &QuotaSettings,
    idle: Duration,
    token: Option<&str>,
    acks: Option<&Acks>,
) -> redis::RedisResult<Plan> {
    let k = CustomerKeys::new(customer);
    let (reply, confirmed): (redis::Value, bool) = scripts::RELEASE_PLAN
        .key(k.cfg())
        .key(k.pool())
        .key(k.pool_meta())
        .key(k.pool_last())
        .key(k.unsent())
        .key(k.intents())
        .key(k.lock())
        .key(k.releases())
        .key(k.queue())
        .key(k.scheduled())
        .key(k.inflight())
        .arg(if token.is_some() { "apply" } else { "dry" })
        .arg(token.unwrap_or(""))
        .arg(idle.as_millis() as u64)
        .arg(quota.window_ms())
        .arg(quota.daily_quota)
        .arg(quota.conversational_cap)
        .arg(k.window_prefix())
        .arg(k.received_prefix())
        .run_acked(conn, if token.is_some() { acks } else { None })
        .await?;
    let reply = strings(reply);
    match reply.first().map(String::as_str) {
        Some("plan") => {
            let numbers = reply[4..]
                .chunks_exact(4)
                .map(|c| Releasable {
                    number: c[0].clone(),
                    sid: c[1].clone(),
                    last_send_ms: c[2].parse::<i64>().ok().filter(|v| *v >= 0),
                    idle_ms: c[3].parse().unwrap_or(0),
                })
                .collect();
            Ok(Plan::Picked {
                backlog: num(&reply, 2).max(0) as u64,
                kept: num(&reply, 3).max(0) as u64,
                numbers,
                confirmed,
            })
        }
        _ => Ok(Plan::Busy),
    }
}

/// Deletes a number taken out of the pool and clears its release intent once Twilio confirms it is gone. `Ok(false)`:
/// the outcome is unknown (or Twilio cannot be asked); the intent stays for [`resolve_releases`].
async fn delete(
    conn: &mut Conn,
    twilio: Option<&TwilioClient>,
    customer: &Customer,
    number: &str,
    sid: &str,
) -> redis::RedisResult<bool> {
    let Some(twilio) = twilio else { return Ok(false) };
    let account = purchase::account_for(customer, twilio);
    let gone = match twilio.release_number(account, sid).await {
        Ok(()) => true,
        Err(TwilioError::Api { status: 404, .. }) => true,
        Err(e) => {
            tracing::warn!(customer = %customer.id, error.message = %e, "releasing a number did not finish; will resolve");
            false
        }
    };
    if gone {
        let _: () = conn.hdel(CustomerKeys::new(&customer.id).releases(), number).await?;
    }
    Ok(gone)
}

/// Release intents of a customer: number → (created ms, sid).
pub async fn pending_releases(
    conn: &mut Conn,
    customer: &CustomerId,
) -> redis::RedisResult<HashMap<String, (i64, String)>> {
    let raw: HashMap<String, String> = conn.hgetall(CustomerKeys::new(customer).releases()).await?;
    Ok(raw
        .into_iter()
        .map(|(n, v)| {
            let (at, sid) = v.split_once('|').unwrap_or((&v, ""));
            (n, (at.parse().unwrap_or(0), sid.to_owned()))
        })
        .collect())
}

/// Finishes releases whose outcome is unknown and that are older than `settle_ms` (so no `DELETE` is still on the
/// wire): asks Twilio whether each number still exists, deletes it if so, and clears the intent once it is gone.
/// Returns how many were finished.
pub async fn resolve_releases(
    conn: &mut Conn,
    twilio: &TwilioClient,
    customer: &Customer,
    now_ms: i64,
    settle_ms: i64,
) -> redis::RedisResult<usize> {
    let mut done = 0;
    for (number, (at, sid)) in pending_releases(conn, &customer.id).await? {
        if now_ms - at < settle_ms {
            continue;
        }
        let account = purchase::account_for(customer, twilio);
        let exists = match twilio.fetch_number(account, &sid).await {
            Ok(_) => true,
            Err(TwilioError::Api { status: 404, .. }) => false,
            Err(e) => {
                tracing::warn!(customer = %customer.id, error.message = %e, "could not check a released number");
                continue;
            }
        };
        let released = !exists || delete(conn, Some(twilio), customer, &number, &sid).await?;
        if released {
            let _: () = conn.hdel(CustomerKeys::new(&customer.id).releases(), &number).await?;
            // It may still be routed for inbound messages if the process died before that step.
            let _: () = conn.hdel(keys::NUMBERS, &number).await?;
            done += 1;
        }
    }
    Ok(done)
}
