//! The reconciler: resolves purchase intents whose outcome nobody learned, adopts numbers Messenger bought but
//! never recorded, and cleans up. It runs in every worker process; a short Redis lock elects one per pass, and every
//! step is idempotent, so running it in many processes at once is safe.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use redis::AsyncCommands;
use shared::customers;
use shared::domain::AccountSid;
use shared::keys::{self, CustomerKeys};
use shared::purchase::{self, Bought};
use tokio::sync::watch;

use crate::handler::Ctx;

pub async fn run(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    loop {
        let every = ctx.settings.reconcile_every;
        let jitter = Duration::from_millis(rand::rng().random_range(0..=every.as_millis() as u64 / 5));
        tokio::select! {
            _ = tokio::time::sleep(every + jitter) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = pass(&ctx).await {
            tracing::warn!(error.message = %e, "reconcile pass failed");
        }
    }
}

/// One pass: takes the fleet-wide reconcile lock for the interval, then resolves intents; every `audit_every`
/// also audits each account's numbers.
pub async fn pass(ctx: &Ctx) -> anyhow::Result<()> {
    let mut conn = ctx.ledger.conn();
    let every = ctx.settings.reconcile_every;
    let elected: Option<String> = redis::cmd("SET")
        .arg(keys::RECONCILE_LOCK)
        .arg("1")
        .arg("NX")
        .arg("PX")
        .arg(every.as_millis() as u64)
        .query_async(&mut conn)
        .await?;
    if elected.is_none() {
        return Ok(());
    }
    let now_ms = customers::redis_now_ms(&mut conn).await?;
    let settle =
        (ctx.settings.shared.twilio.timeout + ctx.settings.lock_ttl + Duration::from_secs(2)).as_millis() as i64;
    let ids = customers::list(&mut conn).await?;
    for id in &ids {
        let intents = purchase::pending_intents(&mut conn, id).await?;
        let due: Vec<_> = intents.into_iter().filter(|i| now_ms - i.created_ms > settle).collect();
        if due.is_empty() {
            continue;
        }
        let Some(customer) = customers::get(&mut conn, id).await? else {
            continue;
        };
        for intent in &due {
            match purchase::resolve_intent(&mut conn, &ctx.twilio, &customer, intent, now_ms, ctx.settings.intent_stale)
                .await
            {
                Ok(r) => {
                    tracing::debug!(customer = %id, intent = %intent.id, resolution = ?r, "resolved intent")
                }
                Err(e) => {
                    tracing::warn!(customer = %id, error.message = %e, "could not resolve a purchase intent")
                }
            }
        }
    }
    // Forget workers that have not beaten for a day.
    let _: () = conn.zrembyscore(keys::WORKERS, "-inf", now_ms - 86_400_000).await?;

    let audit: Option<String> = redis::cmd("SET")
        .arg("msgr:audit")
        .arg("1")
        .arg("NX")
        .arg("PX")
        .arg(ctx.settings.audit_every.as_millis() as u64)
        .query_async(&mut conn)
        .await?;
    if audit.is_some() {
        audit_numbers(ctx, &ids).await?;
    }
    Ok(())
}

/// Lists every account's numbers and adopts the ones tagged `msgr:<customer>:<intent>` that the customer's pool
/// does not know (a purchase whose record was lost, e.g. to a Redis restart without fsync).
pub async fn audit_numbers(ctx: &Ctx, ids: &[shared::domain::CustomerId]) -> anyhow::Result<usize> {
    let mut conn = ctx.ledger.conn();
    let mut accounts: BTreeSet<AccountSid> = BTreeSet::new();
    accounts.insert(ctx.twilio.account().clone());
    for id in ids {
        if let Some(c) = customers::get(&mut conn, id).await?
            && let Some(a) = c.account_sid
        {
            accounts.insert(a);
        }
    }
    let mut adopted = 0;
    for account in accounts {
        let numbers = ctx.twilio.list_numbers(&account, None, None).await?;
        for n in numbers {
            let (Some(name), Some(number), Some(sid)) = (n.friendly_name, n.phone_number, n.sid) else {
                continue;
            };
            let Some((customer, intent)) = purchase::parse_friendly_name(&name) else {
                continue;
            };
            if !ids.contains(&customer) {
                continue;
            }
            let known: Option<f64> = conn.zscore(CustomerKeys::new(&customer).pool(), &number).await?;
            if known.is_none() {
                purchase::commit_number(&mut conn, &customer, &Bought { number, sid }, &intent).await?;
                tracing::warn!(customer = %customer, intent = %intent, "adopted a tagged number the pool did not know");
                adopted += 1;
            }
        }
    }
    Ok(adopted)
}
