//! Replica acknowledgements, shard by shard: how many replicas must confirm a write, and what Messenger does when
//! they do not.
//!
//! `MESSENGER_REDIS_REPLICA_ACKS=N` asks for `WAIT N` after the writes a failover must not lose (attempt markers,
//! purchase intents, release intents, enqueued batches). In a Redis Cluster the number a write waits for is decided
//! per shard, from the cluster's own view of its topology (`CLUSTER SHARDS`, read every two seconds by the worker and
//! whenever the producer writes or is probed):
//!
//! - **replicas in the topology ≥ N:** `WAIT N`. Not confirmed in time → the caller does not take the irreversible
//!   step (a send, a purchase); the shard is *paused* for its customers until a confirmation comes.
//! - **fewer replicas than N, but some:** `WAIT` for all of them. A replica that exists but does not confirm (cut
//!   off, stopped, still syncing) keeps the shard paused: it might be promoted, and it would not have the write.
//! - **no replica at all:** no `WAIT`; the write goes on *unconfirmed*. This is safe against failovers because a
//!   failover promotes a replica and this shard has none — nothing can take over with older data. (A crash of the
//!   primary itself can still lose its last writes, as with `N = 0`; the shard runs *without replica* and says so.)
//!   This is the state after a failover whose old primary is gone: pausing there would stop the shard's customers
//!   for good while protecting nothing.
//!
//! A single Redis (no cluster) has no topology here: `WAIT N` always, paused while unconfirmed.
//!
//! With two replicas and `N = 1`, the replica that confirmed is not necessarily the one promoted (Redis prefers the
//! replica with the most data, but an election can pick the other): `N` should be the number of replicas per primary.
//! [`Shards::report`] says so for every shard that has more replicas than `N`.
//!
//! The state of every shard (`confirming`, `paused`, `no_replica`) is reported in `/healthz` and `/metrics` of the
//! worker and the producer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::store::NodeHealth;

/// Replicas that must confirm a write before the caller goes on (`WAIT numreplicas timeout`), and the cluster's
/// shards they are counted in.
#[derive(Clone, Debug)]
pub struct Acks {
    pub replicas: u32,
    pub timeout: Duration,
    /// The topology and what was observed per shard (shared by every clone of these settings).
    pub shards: Arc<Shards>,
}

impl Acks {
    pub fn new(replicas: u32, timeout: Duration) -> Self {
        Self { replicas, timeout, shards: Arc::default() }
    }

    /// How many replicas a write to `key` must wait for now, and in which shard.
    pub fn needed(&self, key: &[u8]) -> Need {
        let view = self.shards.view.read().unwrap();
        let Some(view) = view.as_ref() else {
            return Need { replicas: self.replicas, shard: None };
        };
        let slot = slot(key);
        match view.shards.iter().find(|s| s.serves(slot)) {
            Some(s) => Need { replicas: self.replicas.min(s.replicas.len() as u32), shard: Some(s.primary.clone()) },
            // A slot no primary serves: the write fails anyway; wait for what was asked.
            None => Need { replicas: self.replicas, shard: None },
        }
    }

    /// Records what happened to a write: `None` when it did not wait (no replica), else whether it was confirmed.
    pub fn observe(&self, need: &Need, confirmed: Option<bool>) {
        let key = need.shard.clone().unwrap_or_default();
        let mut states = self.shards.observed.lock().unwrap();
        let o = states.entry(key).or_default();
        let now = Instant::now();
        match confirmed {
            None => o.unreplicated += 1,
            Some(true) => {
                o.unconfirmed_since = None;
                o.last_confirmed = Some(now);
            }
            Some(false) => {
                o.unconfirmed_since.get_or_insert(now);
                o.last_unconfirmed = Some(now);
                o.unconfirmed += 1;
            }
        }
    }

    /// The state of every shard (a single node: one entry with no address), for `/healthz` and `/metrics`.
    pub fn report(&self) -> Report {
        self.shards.report(self.replicas)
    }
}

/// What [`Acks::needed`] decided for one write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    /// Replicas to `WAIT` for (0: none, the shard has no replica).
    pub replicas: u32,
    /// The shard's primary (`ip:port`), when the topology is known.
    pub shard: Option<String>,
}

/// The cluster's shards as last seen, and what writes to each found.
#[derive(Default)]
pub struct Shards {
    view: RwLock<Option<View>>,
    observed: Mutex<HashMap<String, Observed>>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards").finish_non_exhaustive()
    }
}

struct View {
    shards: Vec<Shard>,
    at: Instant,
}

struct Shard {
    primary: String,
    slots: String,
    ranges: Vec<(u16, u16)>,
    /// Every replica the topology lists for this primary, whatever its health (`ip:port`, health).
    replicas: Vec<(String, String)>,
}

impl Shard {
    fn serves(&self, slot: u16) -> bool {
        self.ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&slot))
    }
}

#[derive(Default)]
struct Observed {
    unconfirmed_since: Option<Instant>,
    last_unconfirmed: Option<Instant>,
    last_confirmed: Option<Instant>,
    unconfirmed: u64,
    unreplicated: u64,
}

/// How long after the last unconfirmed write a shard still counts as paused when no write has been tried since.
const PAUSE_MEMORY: Duration = Duration::from_secs(30);

impl Shards {
    /// Replaces the topology with the nodes `CLUSTER SHARDS` listed (see [`crate::store::health`]). A look that
    /// found no shard (no node answered) keeps the last one.
    pub fn update(&self, nodes: &[NodeHealth]) {
        let mut shards: Vec<Shard> = Vec::new();
        for n in nodes.iter().filter(|n| n.role == "master" && !n.slots.is_empty()) {
            if shards.iter().any(|s| s.slots == n.slots) {
                continue;
            }
            let replicas = nodes
                .iter()
                .filter(|r| r.role != "master" && r.slots == n.slots)
                .map(|r| (r.address.clone(), r.health.clone()))
                .collect();
            shards.push(Shard {
                primary: n.address.clone(),
                slots: n.slots.clone(),
                ranges: ranges(&n.slots),
                replicas,
            });
        }
        if !shards.is_empty() {
            *self.view.write().unwrap() = Some(View { shards, at: Instant::now() });
        }
    }

    /// How old the topology is (`None`: never read, or a single node).
    pub fn age(&self) -> Option<Duration> {
        self.view.read().unwrap().as_ref().map(|v| v.at.elapsed())
    }

    fn report(&self, acks: u32) -> Report {
        let observed = self.observed.lock().unwrap();
        let view = self.view.read().unwrap();
        let entry = |primary: Option<&str>, slots: &str, replicas: &[(String, String)], known: bool| {
            let o = observed.get(primary.unwrap_or_default());
            let paused_for = o.and_then(|o| {
                let since = o.unconfirmed_since?;
                (o.last_unconfirmed?.elapsed() < PAUSE_MEMORY).then(|| since.elapsed())
            });
            let waits_for = if known { acks.min(replicas.len() as u32) } else { acks };
            let online = replicas.iter().filter(|(_, h)| h == "online").count() as u32;
            let listed = replicas.iter().map(|(a, h)| format!("{a} ({h})")).collect::<Vec<_>>().join(", ");
            let name = match primary {
                Some(p) => format!("shard {p} (slots {slots})"),
                None => "redis".to_owned(),
            };
            let (state, doing) = if let Some(d) = paused_for {
                let who = if listed.is_empty() { String::new() } else { format!(" (replicas: {listed})") };
                (
                    "paused",
                    format!(
                        "{name}: paused for {} s — {waits_for} replica(s) have not confirmed writes{who}; sends and \
                         purchases of its customers wait and are retried every few seconds. Bring the replica back, \
                         or remove it from the cluster (CLUSTER FORGET) if it is gone for good",
                        d.as_secs()
                    ),
                )
            } else if known && online < waits_for {
                // Seen in the topology before any write failed: a replica that is down cannot confirm, so the next
                // write of this shard will wait (and the producer, which writes rarely, says so too).
                (
                    "paused",
                    format!(
                        "{name}: paused — {online} of the {waits_for} replica(s) writes wait for are online \
                         (replicas: {listed}); its writes cannot be confirmed, so sends and purchases of its \
                         customers wait and are retried every few seconds. Bring the replica back, or remove it from \
                         the cluster (CLUSTER FORGET) if it is gone for good"
                    ),
                )
            } else if known && replicas.is_empty() {
                (
                    "no_replica",
                    format!(
                        "{name}: running without a replica — writes go on unconfirmed ({} so far): no replica can be \
                         promoted, so a failover cannot lose them, but a crash of this primary can. Add a replica \
                         (or bring the old primary back)",
                        o.map_or(0, |o| o.unreplicated)
                    ),
                )
            } else {
                ("confirming", String::new())
            };
            let note = (known && (replicas.len() as u32) > acks).then(|| {
                format!(
                    "{name} has {} replicas but MESSENGER_REDIS_REPLICA_ACKS is {acks}: a failover may promote a \
                     replica that did not confirm; set it to {}",
                    replicas.len(),
                    replicas.len()
                )
            });
            ShardReport {
                primary: primary.map(str::to_owned),
                slots: slots.to_owned(),
                replicas: replicas.len() as u32,
                replicas_online: online,
                waits_for,
                state,
                paused_s: paused_for.map(|d| d.as_secs()),
                doing: (!doing.is_empty()).then_some(doing),
                note,
                unconfirmed: o.map_or(0, |o| o.unconfirmed),
                unreplicated: o.map_or(0, |o| o.unreplicated),
            }
        };
        let shards = match view.as_ref() {
            Some(v) => v.shards.iter().map(|s| entry(Some(&s.primary), &s.slots, &s.replicas, true)).collect(),
            None => vec![entry(None, "0-16383", &[], false)],
        };
        Report { acks, shards }
    }
}

/// Replica acknowledgements as `/healthz` shows them.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `MESSENGER_REDIS_REPLICA_ACKS`.
    pub acks: u32,
    pub shards: Vec<ShardReport>,
}

impl Report {
    pub fn count(&self, state: &str) -> usize {
        self.shards.iter().filter(|s| s.state == state).count()
    }

    /// One sentence per shard that is not simply confirming (what it is, what Messenger does about it).
    pub fn problems(&self) -> Vec<String> {
        self.shards.iter().filter_map(|s| s.doing.clone()).collect()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ShardReport {
    /// `ip:port` of the shard's primary (`None` for a single Redis).
    pub primary: Option<String>,
    pub slots: String,
    /// Replicas the cluster lists for this primary, and how many of them are online.
    pub replicas: u32,
    pub replicas_online: u32,
    /// Replicas a write to this shard waits for now.
    pub waits_for: u32,
    /// `confirming`, `paused` (replicas exist but did not confirm: sends and purchases wait) or `no_replica`
    /// (nothing can be promoted: writes go on unconfirmed).
    pub state: &'static str,
    pub paused_s: Option<u64>,
    pub doing: Option<String>,
    /// A setting that leaves a risk (fewer acknowledgements than replicas).
    pub note: Option<String>,
    /// Writes this process made to the shard that were not confirmed in time, and that went on without a `WAIT`.
    pub unconfirmed: u64,
    pub unreplicated: u64,
}

/// `0-5460,10923-10924` → ranges.
fn ranges(slots: &str) -> Vec<(u16, u16)> {
    slots
        .split(',')
        .filter_map(|r| {
            let (lo, hi) = r.split_once('-').unwrap_or((r, r));
            Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?))
        })
        .collect()
}

/// The cluster slot of a key: CRC16 (XMODEM) of its hash tag (`{…}`, when not empty) or of the whole key, mod 16384.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|b| *b == b'}').map(|close| &rest[..close])
        })
        .filter(|t| !t.is_empty());
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(address: &str, role: &str, health: &str, slots: &str) -> NodeHealth {
        NodeHealth { address: address.into(), role: role.into(), health: health.into(), slots: slots.into() }
    }

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{c:acme}:q"), slot(b"c:acme"));
        assert_eq!(slot(b"{}x"), slot(b"{}x"));
        assert_ne!(slot(b"{}x"), slot(b""));
    }

    #[test]
    fn waits_for_the_replicas_the_shard_has() {
        let acks = Acks::new(2, Duration::from_secs(1));
        // Before any topology: what was asked.
        assert_eq!(acks.needed(b"{c:acme}:q").replicas, 2);
        let s = slot(b"{c:acme}:q");
        let mine = format!("0-{}", s);
        let other = format!("{}-16383", s + 1);
        acks.shards.update(&[
            node("10.0.0.1:7000", "master", "online", &mine),
            node("10.0.0.4:7000", "replica", "online", &mine),
            node("10.0.0.2:7000", "master", "online", &other),
            node("10.0.0.5:7000", "replica", "failed", &other),
            node("10.0.0.6:7000", "replica", "online", &other),
            // The old primary of a failed-over shard: listed, but no longer serving or replicating anything.
            node("10.0.0.3:7000", "master", "failed", ""),
        ]);
        let n = acks.needed(b"{c:acme}:q");
        assert_eq!(n, Need { replicas: 1, shard: Some("10.0.0.1:7000".into()) });
        // A key of the other shard waits for both of its replicas, the failed one included.
        let theirs = (0..1000).map(|i| format!("{{c:p{i}}}:q")).find(|k| slot(k.as_bytes()) > s).unwrap();
        assert_eq!(acks.needed(theirs.as_bytes()), Need { replicas: 2, shard: Some("10.0.0.2:7000".into()) });
        let r = acks.report();
        assert_eq!(r.shards[0].state, "confirming");
        assert!(r.shards[0].note.is_none());
        assert_eq!(r.shards[1].replicas, 2);
        assert_eq!(r.shards[1].replicas_online, 1);
        assert_eq!(r.shards[1].waits_for, 2);
        // One of the two replicas its writes wait for is down: paused before any write has failed.
        assert_eq!(r.shards[1].state, "paused");
        assert!(r.problems()[0].contains("1 of the 2 replica(s)"), "{:?}", r.problems());
        // A shard left with no replica: writes go on without WAIT, and the report says so.
        acks.shards.update(&[
            node("10.0.0.1:7000", "master", "online", &mine),
            node("10.0.0.2:7000", "master", "online", &other),
        ]);
        let n = acks.needed(b"{c:acme}:q");
        assert_eq!(n.replicas, 0);
        acks.observe(&n, None);
        let r = acks.report();
        assert_eq!(r.count("no_replica"), 2);
        assert!(r.problems()[0].contains("running without a replica"), "{:?}", r.problems());
        assert_eq!(r.shards[0].unreplicated, 1);
    }

    #[test]
    fn an_unconfirmed_write_pauses_the_shard_until_one_is_confirmed() {
        let acks = Acks::new(1, Duration::from_secs(1));
        acks.shards.update(&[
            node("10.0.0.1:7000", "master", "online", "0-16383"),
            node("10.0.0.4:7000", "replica", "failed", "0-16383"),
            node("10.0.0.5:7000", "replica", "online", "0-16383"),
        ]);
        let n = acks.needed(b"{c:acme}:q");
        assert_eq!(n.replicas, 1);
        acks.observe(&n, Some(false));
        let r = acks.report();
        assert_eq!(r.shards[0].state, "paused");
        assert!(r.problems()[0].contains("10.0.0.4:7000 (failed)"), "{:?}", r.problems());
        assert!(r.shards[0].note.as_deref().unwrap_or_default().contains("set it to 2"));
        acks.observe(&n, Some(true));
        assert_eq!(acks.report().shards[0].state, "confirming");
    }

    #[test]
    fn a_single_node_waits_for_what_was_asked() {
        let acks = Acks::new(1, Duration::from_secs(1));
        let n = acks.needed(b"{c:acme}:q");
        assert_eq!(n, Need { replicas: 1, shard: None });
        acks.observe(&n, Some(false));
        let r = acks.report();
        assert_eq!(r.shards.len(), 1);
        assert_eq!(r.shards[0].state, "paused");
        assert!(r.problems()[0].starts_with("redis: paused"), "{:?}", r.problems());
    }
}
