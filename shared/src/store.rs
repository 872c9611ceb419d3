//! Redis connections — one node or a Redis Cluster, plain or TLS — and reply decoding.
//!
//! [`Conn`] is what every part of Messenger talks to: either a [`ConnectionManager`] to one node (`REDIS_URL`), one
//! multiplexed connection that pipelines concurrent requests from all tasks and reconnects by itself, or a cluster
//! connection (`REDIS_CLUSTER_NODES`, redis-rs `cluster-async`), which keeps one such connection per node, routes
//! each command by its key's slot, follows `MOVED`/`ASK` and refreshes the slot map after a failover. Both speak
//! the same `ConnectionLike`, so scripts, pipelines and commands are written once. Every multi-key script and
//! pipeline touches one customer's hash tag (one slot); global keys are only ever read or written alone.
//!
//! `rediss://` URLs use rustls (the same stack reqwest uses), with the system's roots or the CA in `REDIS_CA_FILE`.
//! The response timeout is set explicitly instead of inheriting redis-rs's 500 ms default, which turns a busy Redis
//! into errors (apalis-redis#76).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ErrorKind, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::{QuotaSettings, RedisSettings, without_credentials};

/// A connection to Messenger's Redis: one node, or a cluster.
#[derive(Clone)]
pub enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

/// rustls needs a process-wide crypto provider; Messenger uses ring everywhere (a second call is a no-op).
fn ensure_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn tls_certs(settings: &RedisSettings) -> redis::TlsCertificates {
    redis::TlsCertificates { client_tls: None, root_cert: settings.ca.clone() }
}

/// A client for one node URL (with the configured CA for `rediss://`).
pub fn node_client(settings: &RedisSettings, url: &str) -> RedisResult<redis::Client> {
    ensure_tls_provider();
    if url.starts_with("rediss://") && settings.ca.is_some() {
        redis::Client::build_with_tls(url, tls_certs(settings))
    } else {
        redis::Client::open(url)
    }
}

/// Opens a connection (one node or the cluster). Fails if Redis cannot be reached after a few quick retries;
/// long-running processes wrap this in their own retry loop. [`config_problem`] tells a configuration error (wrong
/// password, untrusted certificate) from an outage.
pub async fn connect(settings: &RedisSettings) -> RedisResult<Conn> {
    if settings.cluster_nodes.is_empty() {
        let client = node_client(settings, settings.url.expose_secret())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(2));
        return Ok(Conn::Node(ConnectionManager::new_with_config(client, config).await?));
    }
    ensure_tls_provider();
    let seeds: Vec<&str> = settings.cluster_nodes.iter().map(|s| s.expose_secret()).collect();
    let mut builder = ClusterClientBuilder::new(seeds)
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(settings.response_timeout)
        // A failover takes a few seconds (node timeout + election): keep retrying through it, quickly, within one
        // overall deadline, instead of redis-rs's default of 16 retries starting at 1.28 s.
        .overall_response_timeout(Some(settings.response_timeout.max(Duration::from_secs(10))))
        .retries(12)
        .min_retry_wait(100)
        .max_retry_wait(1_000);
    if settings.ca.is_some() {
        builder = builder.certs(tls_certs(settings));
    }
    let client = builder.build()?;
    // The first connection can hang on a cluster that is mid-failover (redis-rs#1953): bound it.
    match tokio::time::timeout(Duration::from_secs(10), client.get_async_connection()).await {
        Ok(c) => Ok(Conn::Cluster(c?)),
        Err(_) => Err(redis::RedisError::from((
            ErrorKind::Io,
            "timed out connecting to the cluster",
            format!("no answer from the seed nodes in 10 s ({})", describe_seeds(settings)),
        ))),
    }
}

/// Opens `n` more connections (each its own multiplexed connection, or its own set of per-node connections for a
/// cluster), for calls that must not share one: `WAIT` blocks the connection it runs on.
pub async fn connect_many(settings: &RedisSettings, n: usize) -> RedisResult<Vec<Conn>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(connect(settings).await?);
    }
    Ok(out)
}

/// The seed nodes without credentials, for messages.
pub fn describe_seeds(settings: &RedisSettings) -> String {
    settings.cluster_nodes.iter().map(|u| without_credentials(u.expose_secret())).collect::<Vec<_>>().join(", ")
}

/// Whether `e` means Redis is unavailable (a connection lost or refused, a timeout, a cluster without a primary for
/// the slot, a node loading or read-only mid-failover, refused credentials): the same request may succeed later.
/// Anything else is an error *answered* by a healthy Redis to a command it could not run (an argument it refused,
/// a script's error): a bug, or input that should have been refused before it reached Redis; never an outage.
pub fn is_unavailable(e: &redis::RedisError) -> bool {
    use redis::ServerErrorKind as S;
    match e.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound | ErrorKind::AuthenticationFailed => true,
        ErrorKind::Server(
            S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly | S::Moved | S::Ask | S::NoPerm,
        ) => true,
        // Transient states a healthy server reports as its own codes: out of memory, a script running, a failed
        // save refusing writes, too few replicas.
        _ if matches!(e.code(), Some("OOM" | "BUSY" | "MISCONF" | "NOREPLICAS" | "MASTERDOWN" | "LOADING")) => true,
        _ => e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal(),
    }
}

/// If `e` (from connecting) means the configuration is wrong rather than Redis being down — a refused password or
/// user, a certificate the CA does not vouch for, TLS against a plain port — says which setting to fix.
pub fn config_problem(e: &redis::RedisError, settings: &RedisSettings) -> Option<String> {
    let text = format!("{e} {:?}", e.kind());
    let lower = text.to_ascii_lowercase();
    let setting = if settings.cluster_nodes.is_empty() { "REDIS_URL" } else { "REDIS_CLUSTER_NODES" };
    if e.kind() == ErrorKind::AuthenticationFailed
        || ["wrongpass", "noauth", "invalid username-password", "invalid password", "noperm"]
            .iter()
            .any(|w| lower.contains(w))
    {
        return Some(format!(
            "{setting}: Redis refused the credentials ({}). Check the user and password in the URL",
            first_line(&e.to_string())
        ));
    }
    if ["certificate", "unknownissuer", "invalidcertificate", "handshake", "tls", "ssl"]
        .iter()
        .any(|w| lower.contains(w))
    {
        let ca = if settings.ca.is_some() {
            "REDIS_CA_FILE does not vouch for the server's certificate (or it names another host)"
        } else {
            "the system's roots do not vouch for the server's certificate: set REDIS_CA_FILE to the CA that signed it"
        };
        return Some(format!("{setting}: TLS with Redis failed ({}): {ca}", first_line(&e.to_string())));
    }
    if e.kind() == ErrorKind::InvalidClientConfig {
        return Some(format!("{setting}: {}", first_line(&e.to_string())));
    }
    None
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Opens a connection, retrying with capped exponential backoff until it succeeds or `give_up` elapses. A
/// configuration problem is not retried.
pub async fn connect_with_retry(settings: &RedisSettings, give_up: Duration) -> RedisResult<Conn> {
    let start = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match connect(settings).await {
            Ok(c) => return Ok(c),
            Err(e) if config_problem(&e, settings).is_none() && start.elapsed() + delay < give_up => {
                tracing::warn!(error.message = %e, "redis not reachable yet, retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One node of a cluster as the cluster sees it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NodeHealth {
    /// `ip:port`.
    pub address: String,
    /// `master` or `replica`.
    pub role: String,
    /// `online`, `failed` or `loading`.
    pub health: String,
    /// Slot ranges the node's shard serves (`0-5460`).
    pub slots: String,
}

/// What a health probe says about Redis.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RedisHealth {
    /// True when every slot has a reachable primary (a single node: it answered).
    pub ok: bool,
    /// `ok`, `fail`, or why nothing answered.
    pub state: String,
    /// Nodes that are not online, by address and role (empty for a single node that answered).
    pub unreachable: Vec<String>,
    pub nodes: Vec<NodeHealth>,
}

/// Asks Redis how it is: a `PING` for one node; `CLUSTER INFO` and `CLUSTER SHARDS` for a cluster, naming the nodes
/// that are not online and whether every slot still has a primary.
pub async fn health(conn: &mut Conn) -> RedisHealth {
    let down = |why: String| RedisHealth { ok: false, state: why, unreachable: Vec::new(), nodes: Vec::new() };
    match conn {
        Conn::Node(_) => match redis::cmd("PING").query_async::<String>(conn).await {
            Ok(_) => RedisHealth { ok: true, state: "ok".into(), unreachable: Vec::new(), nodes: Vec::new() },
            Err(e) => down(format!("redis unreachable: {}", first_line(&e.to_string()))),
        },
        Conn::Cluster(c) => {
            let random = || RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
            let info = c.route_command(redis::cmd("CLUSTER").arg("INFO").clone(), random()).await;
            let shards = c.route_command(redis::cmd("CLUSTER").arg("SHARDS").clone(), random()).await;
            let (info, shards) = match (info, shards) {
                (Ok(i), Ok(s)) => (i, s),
                (Err(e), _) | (_, Err(e)) => {
                    return down(format!("no cluster node answered: {}", first_line(&e.to_string())));
                }
            };
            let info = String::from_redis_value(info).unwrap_or_default();
            let state =
                info.lines().find_map(|l| l.strip_prefix("cluster_state:")).unwrap_or("unknown").trim().to_owned();
            let nodes = parse_shards(shards);
            let unreachable: Vec<String> = nodes
                .iter()
                .filter(|n| n.health != "online")
                .map(|n| format!("{} ({}, {})", n.address, n.role, n.health))
                .collect();
            // Every shard with slots needs an online primary.
            let mut shards_ok = true;
            for slots in nodes.iter().map(|n| &n.slots).collect::<std::collections::BTreeSet<_>>() {
                if slots.is_empty() {
                    continue;
                }
                let served = nodes.iter().any(|n| &n.slots == slots && n.role == "master" && n.health == "online");
                shards_ok &= served;
            }
            RedisHealth { ok: state == "ok" && shards_ok, state, unreachable, nodes }
        }
    }
}

/// Reads the cluster's topology into `acks` (which shards have replicas) unless it was read in the last two seconds;
/// nothing for a single node or without acknowledgements. A failed look keeps the last topology.
pub async fn refresh_topology(conn: &mut Conn, acks: Option<&crate::scripts::Acks>) {
    let Some(acks) = acks.filter(|_| conn.is_cluster()) else { return };
    if acks.shards.age().is_some_and(|a| a < Duration::from_secs(2)) {
        return;
    }
    let mut nodes = health(conn).await.nodes;
    complete_replicas(conn, &mut nodes).await;
    acks.shards.update(&nodes);
}

/// The node that answered `CLUSTER SHARDS` may not know every replica yet (a replica's role spreads by gossip, which
/// takes a moment after it joins or after a failover), and a shard it lists without a replica would have its writes
/// go on unconfirmed. Each primary knows its own replicas: for such a shard, its primary's `INFO replication` names
/// the replicas connected to it now.
async fn complete_replicas(conn: &mut Conn, nodes: &mut Vec<NodeHealth>) {
    let Conn::Cluster(c) = conn else { return };
    let lonely: Vec<(String, String)> = nodes
        .iter()
        .filter(|n| n.role == "master" && !n.slots.is_empty())
        .filter(|n| !nodes.iter().any(|r| r.role != "master" && r.slots == n.slots))
        .map(|n| (n.address.clone(), n.slots.clone()))
        .collect();
    for (address, slots) in lonely {
        let Some((host, port)) = address.rsplit_once(':').and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
        else {
            continue;
        };
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        let Ok(v) = c.route_command(redis::cmd("INFO").arg("replication").clone(), routing).await else { continue };
        let info = String::from_redis_value(v).unwrap_or_default();
        // `slave0:ip=127.0.0.1,port=7004,state=online,offset=…,lag=0`
        for line in info.lines().filter(|l| l.starts_with("slave") && l.contains(":ip=")) {
            let field = |name: &str| {
                line.split([':', ',']).find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).unwrap_or("").to_owned()
            };
            if field("state") == "online" {
                nodes.push(NodeHealth {
                    address: format!("{}:{}", field("ip"), field("port")),
                    role: "replica".into(),
                    health: "online".into(),
                    slots: slots.clone(),
                });
            }
        }
    }
}

/// Reads `CLUSTER SHARDS` (RESP2: arrays of alternating names and values).
fn parse_shards(v: Value) -> Vec<NodeHealth> {
    fn pairs(v: &Value) -> Vec<(String, &Value)> {
        match v {
            Value::Array(items) => items
                .chunks(2)
                .filter_map(|c| match c {
                    [k, v] => Some((String::from_redis_value(k.clone()).ok()?, v)),
                    _ => None,
                })
                .collect(),
            Value::Map(m) => {
                m.iter().filter_map(|(k, v)| Some((String::from_redis_value(k.clone()).ok()?, v))).collect()
            }
            _ => Vec::new(),
        }
    }
    let text = |v: &Value| match v {
        Value::Int(i) => i.to_string(),
        other => String::from_redis_value(other.clone()).unwrap_or_default(),
    };
    let mut out = Vec::new();
    let Value::Array(shards) = v else { return out };
    for shard in &shards {
        let fields = pairs(shard);
        let slots = fields
            .iter()
            .find(|(k, _)| k == "slots")
            .map(|(_, v)| match v {
                Value::Array(s) => s
                    .chunks(2)
                    .map(|r| format!("{}-{}", text(&r[0]), r.get(1).map(text).unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(","),
                _ => String::new(),
            })
            .unwrap_or_default();
        let Some((_, Value::Array(nodes))) = fields.iter().find(|(k, _)| k == "nodes") else { continue };
        for node in nodes {
            let f = pairs(node);
            let get = |name: &str| f.iter().find(|(k, _)| k == name).map(|(_, v)| text(v)).unwrap_or_default();
            let port = if get("port").is_empty() { get("tls-port") } else { get("port") };
            out.push(NodeHealth {
                address: format!("{}:{port}", get("ip")),
                role: get("role"),
                health: get("health"),
                slots: slots.clone(),
            });
        }
    }
    out
}

/// Checks that this process's quota settings are the fleet's (stores them if it is the first process).
pub async fn ensure_fleet_settings(conn: &mut Conn, quota: &QuotaSettings, force: bool) -> anyhow::Result<()> {
    let stored: Vec<Option<u64>> = crate::scripts::FLEET_SETTINGS
        .key(crate::keys::SETTINGS)
        .arg(quota.window_ms())
        .arg(quota.daily_quota)
        .arg(quota.conversational_cap)
        .arg(if force { "1" } else { "0" })
        .run(conn)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_kept_out_of_messages() {
        assert_eq!(without_credentials("rediss://msgr:s3cret@h:6380/0"), "rediss://h:6380/0");
        assert_eq!(without_credentials("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn cluster_shards_are_read_from_resp2() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let node = |port: i64, role: &str, health: &str| {
            Value::Array(vec![
                s("id"),
                s("abc"),
                s("port"),
                Value::Int(port),
                s("ip"),
                s("127.0.0.1"),
                s("role"),
                s(role),
                s("health"),
                s(health),
            ])
        };
        let shard = Value::Array(vec![
            s("slots"),
            Value::Array(vec![Value::Int(0), Value::Int(5460)]),
            s("nodes"),
            Value::Array(vec![node(7000, "master", "online"), node(7003, "replica", "failed")]),
        ]);
        let nodes = parse_shards(Value::Array(vec![shard]));
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].address, "127.0.0.1:7000");
        assert_eq!(nodes[1].health, "failed");
        assert_eq!(nodes[0].slots, "0-5460");
    }
}
