//! Dashboard sessions, from the operator's side: signing every session out at once (after a token leaked, or a
//! person left). A single session's sign-out and the checks on every request live with the dashboard
//! (`server::dashboard::session`); both sides meet in the keys written here.

use serde::Serialize;
use shared::keys;
use shared::store::Conn;

use super::{Deps, OpsError};

/// How long the "signed out before" instant is kept: past it, every session it ended has expired anyway.
pub const SINCE_TTL_MS: u64 = (8 + 1) * 3600 * 1000;

/// What signing everyone out did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Revoked {
    /// Sessions signed in before this instant (Redis's clock, RFC 3339) are refused from now on.
    pub signed_in_before: String,
    pub signed_in_before_ms: u64,
}

/// Redis's clock, in ms: sessions are issued and revoked on one clock, however the servers' clocks differ.
pub async fn redis_now_ms(conn: &mut Conn) -> redis::RedisResult<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs * 1000 + micros / 1000)
}

/// Ends every dashboard session issued until now, on every server.
pub async fn revoke_all(deps: &Deps) -> Result<Revoked, OpsError> {
    let mut conn = deps.conn();
    // One ms more: a session issued in the same ms as this request is issued before it.
    let since = redis_now_ms(&mut conn).await? + 1;
    let (): () = redis::cmd("SET")
        .arg(keys::DASHBOARD_SINCE)
        .arg(since)
        .arg("PX")
        .arg(SINCE_TTL_MS)
        .query_async(&mut conn)
        .await?;
    tracing::warn!("every dashboard session signed out");
    let signed_in_before = chrono::DateTime::from_timestamp_millis(since as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    Ok(Revoked { signed_in_before, signed_in_before_ms: since })
}
