//! Pools: a customer's numbers and their use of the window, releasing idle numbers, crediting an inbound message,
//! and the fleet's quota settings.

use shared::carriers::{self, CapUse};
use shared::customers::{self, PoolReport};
use shared::domain::{CustomerId, IdleDays, PhoneNumber};
use shared::ledger::{Inbound, Ledger};
use shared::release::{self, ReleaseError, ReleaseOptions, ReleaseReport};
use shared::store;

use super::{Deps, OpsError};

/// The customer's numbers with their use of the current window, last sends and monthly cost, and its carrier caps
/// with today's use.
pub async fn pool(deps: &Deps, id: &CustomerId) -> Result<PoolReport, OpsError> {
    let s = &deps.settings;
    let mut conn = deps.conn();
    let report = customers::pool(&mut conn, id, &s.quota).await?.ok_or_else(|| super::customers::unknown(id))?;
    let mut report = report.with_cost(s.pricing.number_monthly);
    report.carriers = cap_use(deps, id).await?;
    Ok(report)
}

/// A customer's carrier caps and today's use, when it has caps or looks lines up.
pub async fn cap_use(deps: &Deps, id: &CustomerId) -> Result<Option<CapUse>, OpsError> {
    let mut conn = deps.conn();
    let Some(c) = customers::get(&mut conn, id).await? else { return Ok(None) };
    if !(c.looks_up() || c.caps.any()) {
        return Ok(None);
    }
    let now = customers::redis_now_ms(&mut conn).await?;
    Ok(Some(carriers::cap_use(&mut conn, &c.id, c.caps, c.looks_up(), now, deps.settings.cap_day).await?))
}

/// Releases the customer's numbers idle for `idle_days` (default [`IdleDays::DEFAULT`]), keeping what its backlog
/// and its numbers' sticky recipients need and never a number with a send in progress; with `dry_run`, only says
/// which it would release and writes nothing. Field names in errors: `idle_days`.
pub async fn release_idle(
    deps: &Deps,
    id: &CustomerId,
    idle_days: Option<f64>,
    dry_run: bool,
) -> Result<ReleaseReport, OpsError> {
    let idle = match idle_days {
        Some(d) => IdleDays::new(d).map_err(|e| OpsError::invalid("idle_days", e.to_string()))?,
        None => IdleDays::DEFAULT,
    };
    if deps.twilio.is_none() && !dry_run {
        return Err(OpsError::NotConfigured(
            "releasing numbers calls Twilio: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or make it a dry run)"
                .into(),
        ));
    }
    let s = &deps.settings;
    let mut conn = deps.conn();
    let customer = customers::get(&mut conn, id).await?.ok_or_else(|| super::customers::unknown(id))?;
    let options = ReleaseOptions { idle: idle.duration(), dry_run, lock_ttl: s.lock_ttl, acks: s.redis.acks.clone() };
    let report = release::release_idle(&mut conn, deps.twilio.as_ref(), &customer, &s.quota, options).await.map_err(
        |e| match e {
            ReleaseError::Busy(_) => OpsError::Busy(e.to_string()),
            ReleaseError::Redis(r) => OpsError::Storage(r),
        },
    )?;
    Ok(report.with_saving(s.pricing.number_monthly))
}

/// Credits a message received on one of the customer's numbers (+1 to its limit for one window, up to the cap);
/// a repeated message sid is counted once. Returns the messages received on the number in the current window.
pub async fn record_inbound(
    deps: &Deps,
    id: &CustomerId,
    number: &PhoneNumber,
    message_sid: &str,
) -> Result<u32, OpsError> {
    let s = &deps.settings;
    let ledger = Ledger::new(deps.conn(), s.quota, s.batch_retention);
    match ledger.record_inbound(id, number.as_str(), message_sid).await? {
        Inbound::Credited { received_in_window } | Inbound::Duplicate { received_in_window } => Ok(received_in_window),
        Inbound::UnknownNumber => Err(OpsError::invalid("number", format!("{number} is not one of {id}'s numbers"))),
    }
}

/// Checks that this process's quota settings are the fleet's, or (`apply`) makes them the fleet's.
pub async fn fleet_settings(deps: &Deps, apply: bool) -> Result<(), OpsError> {
    store::ensure_fleet_settings(&mut deps.conn(), &deps.settings.quota, apply).await.map_err(|e| {
        match e.downcast::<redis::RedisError>() {
            Ok(r) => OpsError::Storage(r),
            Err(e) => OpsError::Conflict { field: None, message: e.to_string() },
        }
    })
}
