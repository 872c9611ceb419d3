//! The reconciler: resolves purchase intents whose outcome nobody learned (attaching their numbers to the customer's
//! Messaging Service first), finishes releases whose outcome nobody learned, adopts numbers Messenger bought but
//! never recorded, releases idle numbers when `MESSENGER_RELEASE_IDLE_DAYS` is set, and cleans up. It runs in every
//! worker process; a short Redis lock elects one per pass, and every step is idempotent, so running it in many
//! processes at once is safe.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use redis::AsyncCommands;
use shared::customers;
use shared::domain::AccountSid;
use shared::keys::{self, CustomerKeys};
use shared::purchase::{self, Bought};
use shared::release::{self, ReleaseError};
use tokio::sync::watch;

use crate::context::Shared;
use crate::purchase::Purchases;

pub async fn run(shared: Arc<Shared>, purchases: Arc<Purchases>, mut stop: watch::Receiver<bool>) {
    loop {
        let every = shared.settings.reconcile_every;
        let jitter = Duration::from_millis(rand::rng().random_range(0..=every.as_millis() as u64 / 5));
        tokio::select! {
            _ = tokio::time::sleep(every + jitter) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = pass(&shared, &purchases).await {
            tracing::warn!(error.message = %e, "reconcile pass failed");
        }
    }
}

/// One pass: takes the fleet-wide reconcile lock for the interval, then resolves purchase and release intents;
/// every `audit_every` also audits each account's numbers and releases idle ones (when configured).
pub async fn pass(shared: &Shared, purchases: &Purchases) -> anyhow::Result<()> {
    let mut conn = shared.ledger.conn();
    let settings = &shared.settings;
    let every = settings.reconcile_every;
    if !elect(&mut conn, keys::RECONCILE_LOCK, every).await? {
        return Ok(());
    }
    let now_ms = customers::redis_now_ms(&mut conn).await?;
    let settle =
        (settings.shared.twilio.timeout + settings.shared.lock_ttl + Duration::from_secs(2)).as_millis() as i64;
    let ids = customers::list(&mut conn).await?;
    for id in &ids {
        let intents = purchase::pending_intents(&mut conn, id).await?;
        let due: Vec<_> = intents.into_iter().filter(|i| now_ms - i.created_ms > settle).collect();
        let releases = release::pending_releases(&mut conn, id).await?;
        if due.is_empty() && releases.is_empty() {
            continue;
        }
        let Some(customer) = customers::get(&mut conn, id).await? else {
            continue;
        };
        for intent in &due {
            let r =
                purchase::resolve_intent(&mut conn, &shared.twilio, &customer, intent, now_ms, settings.intent_stale)
                    .await;
            match r {
                Ok(r) => {
                    if r != purchase::Resolution::Pending {
                        purchases.pool_changed(id);
                    }
                    tracing::debug!(customer = %id, intent = %intent.id, resolution = ?r, "resolved intent")
                }
                Err(e) => {
                    tracing::warn!(customer = %id, error.message = %e, "could not resolve a purchase intent")
                }
            }
        }
        if !releases.is_empty() {
            let finished = release::resolve_releases(&mut conn, &shared.twilio, &customer, now_ms, settle).await?;
            shared.stats.releases.inc_by(finished as u64);
        }
    }
    // Forget workers that have not beaten for a day, and their totals.
    let _: () = conn.zrembyscore(keys::WORKERS, "-inf", now_ms - 86_400_000).await?;
    let listed: Vec<String> = conn.hkeys(keys::STATS_WORKERS).await?;
    if !listed.is_empty() {
        let beats: Vec<Option<f64>> = conn.zscore_multiple(keys::WORKERS, &listed).await?;
        let gone: Vec<&String> = listed.iter().zip(beats).filter(|(_, b)| b.is_none()).map(|(n, _)| n).collect();
        if !gone.is_empty() {
            let _: () = conn.hdel(keys::STATS_WORKERS, &gone).await?;
        }
    }

    if elect(&mut conn, keys::AUDIT_LOCK, settings.audit_every).await? {
        audit_numbers(shared, purchases, &ids).await?;
        if let Some(idle) = settings.release_idle {
            release_idle_numbers(shared, &ids, idle).await;
        }
    }
    Ok(())
}

/// Elects this process for `key`'s job until `term` has passed (`SET NX PX`; never released: the term is the
/// interval between runs, so the next one starts when it expires).
async fn elect(conn: &mut shared::store::Conn, key: &str, term: Duration) -> redis::RedisResult<bool> {
    let won: Option<String> =
        redis::cmd("SET").arg(key).arg("1").arg("NX").arg("PX").arg(term.as_millis() as u64).query_async(conn).await?;
    Ok(won.is_some())
}

/// Releases every customer's idle numbers (a customer whose purchase lock is held is skipped this time).
async fn release_idle_numbers(shared: &Shared, ids: &[shared::domain::CustomerId], idle: Duration) {
    let mut conn = shared.ledger.conn();
    for id in ids {
        let Ok(Some(customer)) = customers::get(&mut conn, id).await else { continue };
        let quota = shared.ledger.quota();
        let lock_ttl = shared.settings.shared.lock_ttl;
        let options =
            release::ReleaseOptions { idle, dry_run: false, lock_ttl, acks: shared.settings.shared.redis.acks.clone() };
        let r = release::release_idle(&mut conn, Some(&shared.twilio), &customer, quota, options);
        match r.await {
            Ok(r) => {
                shared.stats.releases.inc_by(r.released.len() as u64);
            }
            Err(ReleaseError::Busy(_)) => {}
            Err(e) => tracing::warn!(customer = %id, error.message = %e, "could not release idle numbers"),
        }
    }
}

/// Lists every account's numbers and adopts the ones tagged `msgr:<customer>:<intent>` that the customer's pool
/// does not know (a purchase whose record was lost, e.g. to a Redis restart without fsync). A number of a customer
/// with a Messaging Service is attached to it before it is adopted.
pub async fn audit_numbers(
    shared: &Shared,
    purchases: &Purchases,
    ids: &[shared::domain::CustomerId],
) -> anyhow::Result<usize> {
    let mut conn = shared.ledger.conn();
    let mut accounts: BTreeSet<AccountSid> = BTreeSet::new();
    accounts.insert(shared.twilio.account().clone());
    let mut by_id = std::collections::HashMap::new();
    for id in ids {
        if let Some(c) = customers::get(&mut conn, id).await? {
            if let Some(a) = &c.account_sid {
                accounts.insert(a.clone());
            }
            by_id.insert(id.clone(), c);
        }
    }
    let mut adopted = 0;
    for account in accounts {
        let numbers = shared.twilio.list_numbers(&account, None, None).await?;
        for n in numbers {
            let (Some(name), Some(number), Some(sid)) = (n.friendly_name, n.phone_number, n.sid) else {
                continue;
            };
            let Some((customer, intent)) = purchase::parse_friendly_name(&name) else {
                continue;
            };
            let Some(c) = by_id.get(&customer) else {
                continue;
            };
            let k = CustomerKeys::new(&customer);
            let known: Option<f64> = conn.zscore(k.pool(), &number).await?;
            // A number being released left the pool on purpose.
            let releasing: bool = conn.hexists(k.releases(), &number).await?;
            if known.is_some() || releasing {
                continue;
            }
            let bought = Bought { number, sid };
            if let Some(service) = &c.messaging_service
                && purchase::attach(&shared.twilio, service, &bought).await != purchase::Attach::Attached
            {
                tracing::warn!(customer = %customer, "a tagged number could not be attached to its service yet");
                continue;
            }
            purchase::commit_number(&mut conn, &customer, &bought, &intent).await?;
            purchases.pool_changed(&customer);
            tracing::warn!(customer = %customer, intent = %intent, "adopted a tagged number the pool did not know");
            adopted += 1;
        }
    }
    Ok(adopted)
}
