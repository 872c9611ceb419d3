//! The Lua scripts, and how they are called.
//!
//! Each script lives as a documented file in `shared/lua/` (header: KEYS, ARGV, return value). `common.lua` holds
//! the helpers for job states and batch counters and is prepended to every script, so those rules exist once.
//!
//! A call is one `EVALSHA` round trip. When a node answers `NOSCRIPT` (its script cache is empty: it restarted, or
//! it is a replica just promoted by a failover), the script is loaded in the same pipeline as the retried call, so
//! both go to the node that holds the call's keys — in a Redis Cluster too, where a plain `SCRIPT LOAD` would be
//! sent to every node and fail while any of them is down. [`Call::run_acked`] adds `WAIT n timeout` to the same
//! pipeline: it runs on the same connection to the same node right after the script, so it confirms exactly the
//! writes the script made (and any made before them on that connection).

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};
use std::sync::LazyLock;

/// A script of `shared/lua/`.
pub struct Lua(Script);

impl Lua {
    fn new(code: &str) -> Self {
        Self(Script::new(code))
    }

    /// A call of this script, starting with its first key.
    pub fn key<T: ToRedisArgs>(&self, key: T) -> Call<'_> {
        let mut call = Call { script: &self.0, keys: Vec::new(), args: Vec::new() };
        call.key(key);
        call
    }
}

pub use crate::replication::Acks;

/// One call of a script: its keys and arguments.
pub struct Call<'a> {
    script: &'a Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call<'_> {
    pub fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    fn evalsha(&self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }

    /// Runs the script (loading it first on the node that answers `NOSCRIPT`).
    pub async fn run<T: FromRedisValue, C: ConnectionLike + Send>(&self, conn: &mut C) -> RedisResult<T> {
        match self.evalsha().query_async(conn).await {
            Err(e) if no_script(&e) => {
                let (v,): (T,) = redis::pipe()
                    .load_script(self.script)
                    .ignore()
                    .add_command(self.evalsha())
                    .query_async(conn)
                    .await?;
                Ok(v)
            }
            other => other,
        }
    }

    /// Runs the script, then `WAIT`s for the replicas of the node that ran it to confirm its writes — as many as
    /// [`Acks::needed`] says for the shard of the call's first key (none when that shard has no replica). Returns
    /// the script's reply and whether enough replicas confirmed in time (`true` when `acks` is `None`).
    pub async fn run_acked<T: FromRedisValue, C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        acks: Option<&Acks>,
    ) -> RedisResult<(T, bool)> {
        let Some(acks) = acks.filter(|a| a.replicas > 0) else {
            return Ok((self.run(conn).await?, true));
        };
        let first_key = self.keys.first().map(Vec::as_slice).unwrap_or_default();
        let need = acks.needed(first_key);
        if need.replicas == 0 {
            // The topology says this shard has no replica. It is read from one node's view, which gossip updates a
            // moment late (a replica that just joined, a failover's new primary): the primary that ran the script
            // is asked itself, in the same pipeline, and when it has replicas online the write waits for them.
            let mut pipe = redis::pipe();
            pipe.add_command(self.evalsha()).cmd("INFO").arg("replication");
            let (v, info): (T, String) = match pipe.query_async(conn).await {
                Err(e) if no_script(&e) => {
                    let mut pipe = redis::pipe();
                    pipe.load_script(self.script).ignore().add_command(self.evalsha()).cmd("INFO").arg("replication");
                    pipe.query_async(conn).await?
                }
                other => other?,
            };
            // A slot map a failover made stale can send the script on (MOVED) while the INFO is answered by the old
            // node, now a replica: its answer says nothing of the primary's replicas, so the write is unconfirmed.
            let first = Replication::of(&info);
            if !first.primary {
                acks.observe(&need, Some(false));
                return Ok((v, false));
            }
            // Every replica connected counts, synced or still syncing (one mid-resync must confirm before the write
            // is durable: the WAIT below waits for it, or fails the write as unconfirmed).
            let online = first.replicas.len() as u32;
            if online == 0 {
                tracing::debug!("a write on a shard without a replica goes on unconfirmed");
                acks.observe(&need, None);
                return Ok((v, true));
            }
            let replicas = acks.replicas.min(online);
            // A keyed command first, so the pipeline reaches the node of the key. That is a second round trip, which
            // might meet another node (a reconnection, a newer failover): the INFO after the WAIT must come from the
            // same primary (its replication id) and show the replicas at or past the script's offset.
            let (_, _, after): (i64, u32, String) = redis::pipe()
                .cmd("EXISTS")
                .arg(first_key)
                .cmd("WAIT")
                .arg(replicas)
                .arg(acks.timeout.as_millis() as u64)
                .cmd("INFO")
                .arg("replication")
                .query_async(conn)
                .await?;
            let after = Replication::of(&after);
            let confirmed = if after.primary && after.replid == first.replid {
                after.replicas.iter().filter(|o| **o >= first.offset).count() as u32
            } else {
                0
            };
            tracing::debug!(
                replicas,
                confirmed,
                "a write on a shard believed without replica waited for the ones its primary has"
            );
            let ok = confirmed >= replicas;
            acks.observe(&need, Some(ok));
            return Ok((v, ok));
        }
        let wait = |pipe: &mut redis::Pipeline| {
            pipe.cmd("WAIT").arg(need.replicas).arg(acks.timeout.as_millis() as u64);
        };
        let mut pipe = redis::pipe();
        pipe.add_command(self.evalsha());
        wait(&mut pipe);
        let (v, confirmed): (T, u32) = match pipe.query_async(conn).await {
            Err(e) if no_script(&e) => {
                let mut pipe = redis::pipe();
                pipe.load_script(self.script).ignore().add_command(self.evalsha());
                wait(&mut pipe);
                pipe.query_async(conn).await?
            }
            other => other?,
        };
        let ok = confirmed >= need.replicas;
        tracing::debug!(needed = need.replicas, shard = ?need.shard, confirmed, "a write waited for replicas");
        acks.observe(&need, Some(ok));
        Ok((v, ok))
    }
}

/// What `INFO replication` says of a node: whether it is a primary, its replication id and offset, and the offset
/// each connected replica has acknowledged.
struct Replication {
    primary: bool,
    replid: String,
    offset: i64,
    replicas: Vec<i64>,
}

impl Replication {
    fn of(info: &str) -> Self {
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("");
        // `slave0:ip=127.0.0.1,port=7004,state=online,offset=13272,lag=0`
        let replicas = info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains(":ip="))
            .map(|l| l.split(',').find_map(|kv| kv.strip_prefix("offset=")).and_then(|o| o.parse().ok()).unwrap_or(-1))
            .collect();
        Self {
            primary: field("role:") == "master",
            replid: field("master_replid:").to_owned(),
            offset: field("master_repl_offset:").parse().unwrap_or(i64::MAX),
            replicas,
        }
    }
}

fn no_script(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

macro_rules! scripts {
    ($($(#[$doc:meta])* $name:ident => $file:literal;)*) => {$(
        $(#[$doc])*
        pub static $name: LazyLock<Lua> = LazyLock::new(|| {
            Lua::new(concat!(include_str!("../lua/common.lua"), "\n", include_str!(concat!("../lua/", $file))))
        });
    )*};
}

scripts! {
    /// Fast path and locked re-check: reserve a quota slot, or report why not.
    RESERVE => "reserve.lua";
    /// Record a sent message (idempotent).
    COMMIT => "commit.lua";
    /// The fast path for several jobs of one customer (contracts.rs).
    RESERVE_MANY => "reserve_many.lua";
    /// Record several sent messages of one customer: the group commit (contracts.rs).
    COMMIT_MANY => "commit_many.lua";
    /// End a job as failed, opted out or cancelled, giving back its slot.
    FAIL => "fail.lua";
    /// Reschedule a job (transient failure, ambiguity grace, deferral, waiting).
    RETRY => "retry.lua";
    /// Hand ready jobs to a worker under a lease.
    FETCH => "fetch.lua";
    /// Extend a worker's leases and report lost jobs.
    RENEW => "renew.lua";
    /// Hand unstarted jobs back to the queue.
    RELEASE => "release.lua";
    /// Create a batch or find the one an idempotency key made.
    BATCH_CREATE => "batch_create.lua";
    /// Push one chunk of jobs exactly once.
    ENQUEUE_CHUNK => "enqueue_chunk.lua";
    /// Add a bought number to the pool and clear its intent.
    PURCHASE_COMMIT => "purchase_commit.lua";
    /// Drop an intent that bought nothing.
    INTENT_ABANDON => "intent_abandon.lua";
    /// Pick idle numbers to release, and take them out of the pool under the purchase lock.
    RELEASE_PLAN => "release_plan.lua";
    /// Extend a lock we still own.
    LOCK_RENEW => "lock_renew.lua";
    /// Release a lock we still own.
    LOCK_RELEASE => "lock_release.lua";
    /// Credit an inbound message to a number's limit.
    RECORD_INBOUND => "record_inbound.lua";
    /// Queue dead-lettered events for one more delivery.
    EVENTS_REPLAY => "events_replay.lua";
    /// Store or compare the fleet's quota settings.
    FLEET_SETTINGS => "fleet_settings.lua";
    /// Cancel a batch.
    CANCEL => "cancel.lua";
    /// Count a delivery report once per message.
    DELIVERY => "delivery.lua";
    /// Add a worker's counts to the per-minute statistics.
    STATS_FLUSH => "stats_flush.lua";
    /// Hold a carrier's texts until a cap Twilio reported spent renews.
    CAP_SPENT => "cap_spent.lua";
    /// Re-write hash fields that still hold what was read (secrets sealed anew).
    HASH_SWAP => "hash_swap.lua";
    /// A dashboard session's standing on the sessions' one clock; sign everyone out.
    DASHBOARD_SESSION => "dashboard_session.lua";
    /// Count a dashboard sign-in attempt from one address.
    SIGNIN_ATTEMPT => "signin_attempt.lua";
    /// A change of consent that did not come in a reply: an opt-out or opt-in on record, an import, a review.
    CONSENT => "consent.lua";
    /// Claim a batch's failed or undelivered recipients for one resend.
    RESEND_CLAIM => "resend_claim.lua";
    /// Bring the jobs a spend limit parked due now (the limit changed).
    SPEND_RELEASE => "spend_release.lua";
    /// Pause or resume a batch by hand.
    BATCH_PAUSE => "batch_pause.lua";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_info_is_read() {
        let primary = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
            slave0:ip=127.0.0.1,port=7004,state=online,offset=120,lag=0\r\n\
            slave1:ip=127.0.0.1,port=7005,state=wait_bgsave,offset=0,lag=0\r\n\
            master_replid:abc\r\nmaster_repl_offset:120\r\n";
        let r = Replication::of(primary);
        assert!(r.primary);
        assert_eq!((r.replid.as_str(), r.offset, r.replicas), ("abc", 120, vec![120, 0]));
        let replica = Replication::of("role:slave\r\nmaster_replid:abc\r\nmaster_repl_offset:120\r\n");
        assert!(!replica.primary && replica.replicas.is_empty());
    }
}
