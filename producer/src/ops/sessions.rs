//! Dashboard sessions, from the operator's side: signing every session out at once (after a token leaked, or a
//! person left). A single session's sign-out and the checks on every request live with the dashboard
//! (`server::dashboard::session`); both sides meet in the keys written here.

use serde::Serialize;
use shared::{keys, scripts};

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

/// Ends every dashboard session issued until now, on every server (on the sessions' one clock: Redis's on the
/// `{msgr:dash}` slot).
pub async fn revoke_all(deps: &Deps) -> Result<Revoked, OpsError> {
    let since: u64 = scripts::DASHBOARD_SESSION
        .key(keys::DASHBOARD_SINCE)
        .arg("revoke_all")
        .arg(SINCE_TTL_MS)
        .run(&mut deps.conn())
        .await?;
    tracing::warn!("every dashboard session signed out");
    let signed_in_before = chrono::DateTime::from_timestamp_millis(since as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    Ok(Revoked { signed_in_before, signed_in_before_ms: since })
}
