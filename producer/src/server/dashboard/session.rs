//! Dashboard sessions: the signed cookie, what it is bound to, how it ends, and how often anyone may try to sign in.
//!
//! The cookie is `v2.<name>.<issued ms>.<nonce>.<fingerprint>.<mac>`, MAC'd with HMAC-SHA256 under
//! `MESSENGER_DASHBOARD_SECRET`. It names its token and carries a fingerprint of the token's *value* (an HMAC of
//! its digest under the same key, never the value): each request finds the token by name and recomputes the
//! fingerprint, so a token removed or given a new value ends every session it opened. A session lasts
//! [`SESSION_TTL`] and ends sooner when it is signed out (a revocation record in Redis that outlives the cookie) or
//! when an admin signs everyone out (sessions issued before that instant end). Sessions live on one clock, Redis's on
//! the `{msgr:dash}` slot: sign-ins and "sign everyone out" are stamped with it and a session's age is judged against
//! it (`dashboard_session.lua`), one script call per request.
//!
//! Sign-in attempts are counted per client address (an IPv6 address by its /64, which one host usually holds whole)
//! in Redis, so every `producer serve` behind one address shares the count. Each attempt is counted before its
//! token is checked, in one step (`signin_attempt.lua`: attempts sent in parallel cannot all slip under the limit),
//! and a successful one is given back: past the limit of failures, sign-in answers 429 with `Retry-After` until the
//! window ends. The form presents only a token, so there is no name to count a wrong one against; the address is
//! what an attacker spends.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use shared::store::Conn;
use shared::{keys, scripts};

use super::{Dashboard, DashboardConfig, cookie, equal};
use crate::server::auth::Scope;

pub const SESSION_COOKIE: &str = "msgr_session";
pub const LOGIN_COOKIE: &str = "msgr_login";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long a revocation record outlives the session it ends.
const REVOCATION_MARGIN: Duration = Duration::from_secs(3600);

/// A signed-in viewer.
pub struct Session {
    pub name: String,
    pub scope: Scope,
    pub csrf: String,
    nonce: String,
    issued_ms: u64,
}

/// The token's fingerprint: 132 bits of an HMAC of its digest, so the cookie proves which value signed in without
/// carrying anything that helps guess it.
fn fingerprint(cfg: &DashboardConfig, digest: &[u8; 32]) -> String {
    cfg.mac(&["token", &hex::encode(digest)])[..22].to_owned()
}

/// The cookie value of a new session of token `name` (value digest `digest`), issued at `issued_ms` (Redis time).
pub fn issue(cfg: &DashboardConfig, name: &str, digest: &[u8; 32], issued_ms: u64) -> String {
    let name = URL_SAFE_NO_PAD.encode(name.as_bytes());
    let issued = issued_ms.to_string();
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let fp = fingerprint(cfg, digest);
    let mac = cfg.mac(&["session", &name, &issued, &nonce, &fp]);
    format!("v2.{name}.{issued}.{nonce}.{fp}.{mac}")
}

/// The session a cookie value stands for, checked without Redis: its MAC, and that its token still exists with the
/// value it signed in with. (Its age is judged on Redis's clock, in [`current`].)
fn verify(s: &Dashboard, raw: &str) -> Option<Session> {
    let parts: Vec<&str> = raw.split('.').collect();
    let ["v2", name, issued, nonce, fp, mac] = parts.as_slice() else { return None };
    let cfg = &s.config;
    if !equal(mac, &cfg.mac(&["session", name, issued, nonce, fp])) {
        return None;
    }
    let issued_ms: u64 = issued.parse().ok()?;
    let name = String::from_utf8(URL_SAFE_NO_PAD.decode(name).ok()?).ok()?;
    let (digest, scope) = s.tokens.by_name(&name)?;
    if !equal(fp, &fingerprint(cfg, &digest)) {
        return None;
    }
    Some(Session { csrf: cfg.mac(&["csrf", nonce]), name, scope, nonce: (*nonce).to_owned(), issued_ms })
}

/// The request's session: `None` when there is no cookie or it is forged, expired, signed out, revoked, or its
/// token was removed or changed. An error when Redis cannot say.
pub async fn current(s: &Dashboard, headers: &HeaderMap) -> redis::RedisResult<Option<Session>> {
    let Some(session) = cookie(headers, SESSION_COOKIE).and_then(|raw| verify(s, &raw)) else {
        return Ok(None);
    };
    let (now, since, revoked): (u64, String, u8) = scripts::DASHBOARD_SESSION
        .key(keys::DASHBOARD_SINCE)
        .key(keys::dashboard_revoked(&session.nonce))
        .arg("check")
        .run(&mut s.conn())
        .await?;
    let expired = session.issued_ms.saturating_add(SESSION_TTL.as_millis() as u64) < now;
    let revoked_all = since.parse::<u64>().is_ok_and(|t| session.issued_ms < t);
    if expired || revoked == 1 || revoked_all {
        return Ok(None);
    }
    Ok(Some(session))
}

/// The sessions' clock (Redis's, on the `{msgr:dash}` slot), in ms: a sign-in is stamped with it.
pub async fn now_ms(conn: &mut Conn) -> redis::RedisResult<u64> {
    scripts::DASHBOARD_SESSION.key(keys::DASHBOARD_SINCE).arg("now").run(conn).await
}

/// Ends `session` on every server: its cookie is refused from now on, even if a copy of it was kept. The record
/// outlives any cookie issued before it.
pub async fn revoke(conn: &mut Conn, session: &Session) -> redis::RedisResult<()> {
    let ttl = (SESSION_TTL + REVOCATION_MARGIN).as_millis() as u64;
    redis::cmd("SET").arg(keys::dashboard_revoked(&session.nonce)).arg(1).arg("PX").arg(ttl).query_async(conn).await
}

/// Where a request comes from, for counting sign-ins: the rightmost address of the configured header (the one
/// the deployment's own proxy added) when there is one, else the connection's peer. IPv6 by its /64.
pub fn client(headers: &HeaderMap, peer: Option<SocketAddr>, header: Option<&str>) -> String {
    let last = header
        .and_then(|h| headers.get_all(h).iter().filter_map(|v| v.to_str().ok()).next_back())
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim);
    let from_header = match last {
        // An address, or an address and a port (`1.2.3.4:5678`, `[2001:db8::1]:443`).
        Some(v) => match v.parse::<IpAddr>().or_else(|_| v.parse::<SocketAddr>().map(|a| a.ip())) {
            Ok(ip) => Some(ip),
            Err(_) => {
                // Not an address: a bucket of its own (never the proxy's, which every client shares).
                tracing::warn!("the client address header holds something that is not an address");
                return format!("unparsed:{}", v.chars().take(64).collect::<String>());
            }
        },
        None => None,
    };
    match from_header.or(peer.map(|p| p.ip())) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        None => "unknown".to_owned(),
    }
}

/// The sign-in limit: attempts that failed, per client address, per window.
#[derive(Clone, Copy, Debug)]
pub struct SigninLimit {
    pub failures: u32,
    pub window: Duration,
}

impl Default for SigninLimit {
    fn default() -> Self {
        Self { failures: 10, window: Duration::from_secs(300) }
    }
}

/// Counts a sign-in attempt from `client` before its token is checked; how long it must wait when it is past the
/// limit (the attempt is refused), or `None` when it may go on.
pub async fn attempt(conn: &mut Conn, client: &str, limit: SigninLimit) -> redis::RedisResult<Option<Duration>> {
    let (n, ttl_ms): (u32, u64) = scripts::SIGNIN_ATTEMPT
        .key(keys::dashboard_signin(client))
        .arg("take")
        .arg(limit.window.as_millis() as u64)
        .run(conn)
        .await?;
    Ok((n > limit.failures).then(|| Duration::from_millis(ttl_ms.max(1000))))
}

/// Gives a successful attempt's count back: only failures stay counted.
pub async fn succeeded(conn: &mut Conn, client: &str) -> redis::RedisResult<()> {
    let _: i64 = scripts::SIGNIN_ATTEMPT.key(keys::dashboard_signin(client)).arg("give_back").arg(0).run(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_their_peer_or_the_proxys_last_entry_and_ipv6_counts_by_its_64() {
        let peer: SocketAddr = "203.0.113.9:5555".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(client(&h, Some(peer), Some("x-forwarded-for")), "203.0.113.9");
        h.insert("x-forwarded-for", "1.2.3.4, 198.51.100.7".parse().unwrap());
        assert_eq!(client(&h, Some(peer), Some("x-forwarded-for")), "198.51.100.7");
        // Without the setting, a header anyone can send counts for nothing.
        assert_eq!(client(&h, Some(peer), None), "203.0.113.9");
        let v6: SocketAddr = "[2001:db8:1:2:3:4:5:6]:1".parse().unwrap();
        assert_eq!(client(&HeaderMap::new(), Some(v6), None), "2001:db8:1:2::/64");
        // A proxy that writes the port too; something that is not an address at all gets a bucket of its own.
        h.insert("x-forwarded-for", "198.51.100.7:5678".parse().unwrap());
        assert_eq!(client(&h, Some(peer), Some("x-forwarded-for")), "198.51.100.7");
        h.insert("x-forwarded-for", "[2001:db8:9:8::1]:443".parse().unwrap());
        assert_eq!(client(&h, Some(peer), Some("x-forwarded-for")), "2001:db8:9:8::/64");
        h.insert("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(client(&h, Some(peer), Some("x-forwarded-for")), "unparsed:unknown");
    }
}
