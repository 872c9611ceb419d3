//! The Lua scripts, loaded once per process.
//!
//! Each script lives as a documented file in `shared/lua/` (header: KEYS, ARGV, return value). `common.lua` holds
//! the helpers for job states and batch counters and is prepended to every script, so those rules exist once.
//! redis-rs sends `EVALSHA` and falls back to `EVAL` after a `NOSCRIPT` (a restarted Redis has an empty cache).

use std::sync::LazyLock;

use redis::Script;

macro_rules! scripts {
    ($($(#[$doc:meta])* $name:ident => $file:literal;)*) => {$(
        $(#[$doc])*
        pub static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(include_str!("../lua/common.lua"), "\n", include_str!(concat!("../lua/", $file))))
        });
    )*};
}

scripts! {
    /// Fast path and locked re-check: reserve a quota slot, or report why not.
    RESERVE => "reserve.lua";
    /// Record a sent message (idempotent).
    COMMIT => "commit.lua";
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
    /// Store or compare the fleet's quota settings.
    FLEET_SETTINGS => "fleet_settings.lua";
    /// Cancel a batch.
    CANCEL => "cancel.lua";
    /// Count a delivery report once per message.
    DELIVERY => "delivery.lua";
}
