//! Redis connections and reply decoding.
//!
//! Every process talks to Redis through a [`redis::aio::ConnectionManager`]: one multiplexed connection that
//! pipelines concurrent requests from all tasks (so 256 concurrent handlers cost one socket) and reconnects by itself.
//! The response timeout is set explicitly from configuration instead of inheriting redis-rs's 500 ms default, which
//! turns a busy Redis into errors (apalis-redis#76).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Value};
use secrecy::ExposeSecret;

use crate::config::{QuotaSettings, RedisSettings};

pub type Conn = ConnectionManager;

/// Opens a managed connection. Fails if Redis cannot be reached after a few quick retries; long-running processes
/// wrap this in their own retry loop.
pub async fn connect(settings: &RedisSettings) -> redis::RedisResult<Conn> {
    let client = redis::Client::open(settings.url.expose_secret())?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(settings.response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, config).await
}

/// Opens a connection, retrying with capped exponential backoff until it succeeds or `give_up` elapses.
pub async fn connect_with_retry(settings: &RedisSettings, give_up: Duration) -> redis::RedisResult<Conn> {
    let start = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match connect(settings).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() + delay < give_up => {
                tracing::warn!(error.message = %e, "redis not reachable yet, retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Checks that this process's quota settings are the fleet's (stores them if it is the first process).
pub async fn ensure_fleet_settings(conn: &mut Conn, quota: &QuotaSettings, force: bool) -> anyhow::Result<()> {
    let stored: Vec<Option<u64>> = crate::scripts::FLEET_SETTINGS
        .key(crate::keys::SETTINGS)
        .arg(quota.window_ms())
        .arg(quota.daily_quota)
        .arg(quota.conversational_cap)
        .arg(if force { "1" } else { "0" })
        .invoke_async(conn)
        .await?;
    let mine = [quota.window_ms(), quota.daily_quota as u64, quota.conversational_cap as u64];
    let names = ["MESSENGER_WINDOW_SECS (ms)", "MESSENGER_DAILY_QUOTA", "MESSENGER_CONVERSATIONAL_CAP"];
    let mut diffs = Vec::new();
    for i in 0..3 {
        if stored.get(i).copied().flatten() != Some(mine[i]) {
            diffs.push(format!(
                "{} is {} here but {:?} in the fleet",
                names[i],
                mine[i],
                stored.get(i).copied().flatten()
            ));
        }
    }
    if !diffs.is_empty() {
        anyhow::bail!(
            "quota settings differ from the ones the fleet uses (Redis key {}): {}. Every process must use the same \
             quota model; change them everywhere, and apply the new ones with `producer settings --apply`",
            crate::keys::SETTINGS,
            diffs.join("; ")
        );
    }
    Ok(())
}

/// A script reply as a list of strings (integers are rendered in decimal).
pub fn strings(v: Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.into_iter().map(string).collect(),
        other => vec![string(other)],
    }
}

fn string(v: Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Nil => String::new(),
        other => String::from_redis_value(other).unwrap_or_default(),
    }
}

/// Parses field `i` of a script reply as a number, defaulting to 0.
pub fn num(parts: &[String], i: usize) -> i64 {
    parts.get(i).and_then(|s| s.parse().ok()).unwrap_or(0)
}
