//! Every Redis key Messenger uses, in one place.
//!
//! Global keys start with `msgr:`. Everything that belongs to one customer lives under the hash tag `{c:<id>}`, so
//! every multi-key script touches a single Redis Cluster slot. Scripts never invent key names: keys that depend on a
//! value only known inside the script (a number's window, the sticky-sender epoch) are built there from a *prefix*
//! that this module hands over, so the naming still lives only here.
//!
//! | key | type | what |
//! |---|---|---|
//! | `msgr:customers` | SET | every customer id |
//! | `msgr:active` | SET | customers that may have queued, scheduled or in-flight jobs (fetchers poll these) |
//! | `msgr:settings` | HASH | the fleet's quota settings; processes with different ones refuse to start |
//! | `msgr:workers` | ZSET | worker name → last heartbeat (Redis ms), for operators |
//! | `msgr:numbers` | HASH | E.164 number → customer, to route inbound webhooks |
//! | `msgr:reconcile` | STRING | lock that elects one reconciler per pass |
//! | `msgr:audit` | STRING | lock that elects one auditor of the accounts' numbers per audit interval |
//! | `msgr:webhook:<token>` | STRING | an `I-Twilio-Idempotency-Token` already processed (24 h) |
//! | `{msgr:dash}:since` | STRING | dashboard sessions signed in before this instant (Redis ms on this key's slot) are revoked (an admin's "sign out everyone") |
//! | `{msgr:dash}:revoked:<nonce>` | STRING | a signed-out dashboard session, kept until its cookie would have expired and an hour more |
//! | `{msgr:dash}:signin:<client>` | STRING | dashboard sign-in attempts from one client address in the current window, successful ones given back (expires with it) |
//! | `{msgr:idx}:batches` | ZSET | the newest 10,000 batches of the fleet (id → created ms), for the dashboard |
//! | `{msgr:stats}:m:<minute>` | HASH | per minute (Redis time): `sent`, `failed`, `purchases` and the same per customer (`sent:<id>` …); 2 h |
//! | `{msgr:stats}:workers` | HASH | worker name → `sent|failed|purchases|restarts|started_ms`, refreshed by each worker |
//! | `{c:ID}:cfg` | HASH | account sid, area code, max numbers, messaging service, quiet hours, time zone, `lookup`, carrier caps (`cap_tmo`, `cap_att`, `cap_mps`) and their counters (`mps_s`/`mps_n`: the current second of Redis's clock and its sends; `tmo_day`/`tmo_used`: a T-Mobile day's start and its segments, `tmo_nday`/`tmo_next`: the same for the next day, counted in the last 10 s of a day; `att_x`: the second AT&T's log expiry was last refreshed), caps Twilio reported spent until (`spent_tmo`, `spent_att`, `spent_all`), held jobs' pacing (`pace:<cap>`), looked-up lines by kind (`mix`, `mix:<code>`); `resseq` (reservation ids), `current` (the number being filled; clear it when a number leaves the pool), `open` (enqueued jobs not yet terminal, over batches not cancelled); consent: `optout_words` (the customer's own phrases, comma-joined), `review` (`send`, or holding), `consent` (`1`: text only tenants with an opt-in on record), `confirm_text`, `sender_name`, `review_n` (tenants under review: the send path looks them up only when there are any); spend: `spend_limit` (micro-dollars a month, '' = none), `spend_m`/`spend_u` (the month, in the customer's zone, and its spend in micro-dollars), `spend_w`/`spend_r` (the month the 80 % warning / the limit was reported) |
//! | `{c:ID}:pool` | ZSET | owned numbers, scored by purchase time |
//! | `{c:ID}:pool:meta` | HASH | number → `PNsid|intent` |
//! | `{c:ID}:pool:last` | HASH | number → Redis ms of its last send (idle numbers are released) |
//! | `{c:ID}:svcfull` | STRING | senders in the customer's Messaging Service when Twilio last refused one more (21714); expires after an hour |
//! | `{c:ID}:releases` | HASH | release intents: number → `created_ms|PNsid` (removed from the pool, Twilio DELETE pending) |
//! | `{c:ID}:w:<number>` | LIST | sends of one number in the window, `<Redis ms>:<reservation id>`, oldest first |
//! | `{c:ID}:r:<number>` | ZSET | messages received on one number in the window (member = message sid) |
//! | `{c:ID}:sticky:<epoch>:<ddd>` | HASH | recipient (without its last 3 digits `ddd`) → number that last texted them (`<number>|<batch id>` for a batch recording events); one set of 1,000 buckets per window-long epoch |
//! | `{c:ID}:optout` | SET | recipients who replied STOP |
//! | `{c:ID}:optrec` | HASH | recipient → its consent history (`[{"kind","via","keyword","number","at_ms",…}…]`, the last 50: opt-outs, opt-ins, suspected revocations and their reviews), the evidence of consent |
//! | `{c:ID}:review` | HASH | recipient → a suspected revocation waiting for a person (`{"at_ms","deadline_ms","words","rule","number","sid"}`) |
//! | `{c:ID}:held:<E.164>` | SET | that tenant's jobs held while a review waits (job members; each also in `sched`) |
//! | `{c:ID}:ft:<E.164>` | ZSET | a tenant's texts in the customer's frequency-cap window (job → reservation ms), when it has a cap; expires with the window |
//! | `{c:ID}:spendwait` | SET | jobs parked by the monthly spend limit (each also in `sched`, due next month); a change of the limit brings them due at once |
//!
//! (reserve.lua builds `review`, `consent`, `held:`, `spendwait` and `ft:` from the cfg key's `{c:ID}:`, only when a customer uses them:
//! the test below keeps those names and this module's in step.)
//! | `{c:ID}:consent` | SET | recipients with an opt-in on record (an API opt-in, or their own START) |
//! | `{c:ID}:conv:<epoch>:<E.164>` | STRING | a tenant's conversation in one 30-day epoch: length-prefixed `<bytes>:<entry>` entries `<o|i|f>|<ms>|<number>|<sid>|<batch>|<body>` (`o` sent, `i` received, `f` could not be sent), oldest first, at most 12,000 bytes; expires 60 days after its first entry; kept for every customer (a thread is the last 30 days of this epoch's string and the one before) |
//! | `{c:ID}:events:lease` | STRING | the `producer serve` delivering its events (`SET NX PX`; 3 s + the delivery timeout + 5 s) |
//! | `{c:ID}:events:lanes` | HASH | delivery progress: lane → last event id handled; `start` (delivery begins after it) |
//! | `{c:ID}:events:retry` | HASH | lane → its failing head event `<id>|<attempts>|<due ms>` |
//! | `{c:ID}:events:dead` | ZSET | events given up after every attempt (id → ms); `:dead:why` HASH id → attempts and last error; `:replay` ZSET: the ones queued to be sent once more |
//! | `{c:ID}:events` | STREAM | the customer's events (`t` type and data fields), about 200,000 and 7 days kept; written only when the customer records events |
//! | `{c:ID}:lt:<epoch>:<ddd>` | HASH | recipient (without its last 3 digits) → its line as Lookup said (carriers.rs code); one set of 1,000 buckets per 30-day epoch, two epochs kept |
//! | `{c:ID}:cap:att` | LIST | its AT&T sends in the last 61 s, `<Redis ms>:<reservation id>` (AT&T's per-minute cap) |
//! | `{c:ID}:lock` | STRING | purchase lock token |
//! | `{c:ID}:intents` | HASH | purchase intent id → `created_ms|friendly_name` |
//! | `{c:ID}:q` | LIST | ready jobs, `<batch>|<recipient>` |
//! | `{c:ID}:sched` | ZSET | jobs waiting for a retry, a deferral or an ambiguity grace period (score = due ms) |
//! | `{c:ID}:inflight` | ZSET | fetched jobs, scored by lease deadline; expired ones are fetched again |
//! | `{c:ID}:unsent` | ZSET | reserved slots whose send outcome is not known yet (`<number>|<resid>`, scored by time) |
//! | `{c:ID}:b:<batch>` | HASH | batch record: body, counters, state |
//! | `{c:ID}:b:<batch>:st` | HASH | recipient → job state (deleted when the batch completes) |
//! | `{c:ID}:b:<batch>:pw` | SET | the paused batch's jobs parked by the pause (each also in `sched`); a resume brings them due at once |
//! | `{c:ID}:b:<batch>:fail` | HASH | recipient → failure reason |
//! | `{c:ID}:b:<batch>:dlr` | HASH | message sid → furthest delivery status reported by Twilio |
//! | `{c:ID}:b:<batch>:undl` | HASH | recipient → `<sid>|<status>|<code>` of a text the carriers did not deliver |
//! | `{c:ID}:b:<batch>:v` | HASH | a personalised batch's recipient → merge values (for resends and the inbox), kept twice the retention |
//! | `{c:ID}:b:<batch>:replies` | ZSET | tenants who replied to the batch → ms of their last reply (30 days) |
//! | `{c:ID}:inbox` | ZSET | the support desk's inbox: tenant → ms of their last reply, newest 100,000 threads, 30 days |
//! | `{c:ID}:unread` | HASH | tenant → replies not read yet |
//! | `{c:ID}:idem:<key>` | STRING | idempotency key → batch id |
//! | `{c:ID}:batches` | ZSET | the customer's batches (id → created ms) within the retention |

use crate::domain::{BatchId, CustomerId};

pub const CUSTOMERS: &str = "msgr:customers";
pub const ACTIVE: &str = "msgr:active";
pub const SETTINGS: &str = "msgr:settings";
pub const WORKERS: &str = "msgr:workers";
pub const NUMBERS: &str = "msgr:numbers";
pub const RECONCILE_LOCK: &str = "msgr:reconcile";
/// Lock that elects one worker per audit of the accounts' numbers.
pub const AUDIT_LOCK: &str = "msgr:audit";

/// Marks a webhook delivery (by Twilio's `I-Twilio-Idempotency-Token`) as processed.
pub fn webhook_delivery(token: &str) -> String {
    format!("msgr:webhook:{token}")
}
/// The newest batches of the fleet, for the dashboard's list.
pub const BATCH_INDEX: &str = "{msgr:idx}:batches";
/// Routes the statistics script to the slot of the statistics keys (which share the `{msgr:stats}` tag).
pub const STATS: &str = "{msgr:stats}";
/// Prefix of the per-minute statistics hashes: the script appends the minute (Redis time / 60 s).
pub const STATS_MINUTE_PREFIX: &str = "{msgr:stats}:m:";
/// Worker name → its totals.
pub const STATS_WORKERS: &str = "{msgr:stats}:workers";

/// The per-minute statistics hash of `minute` (Redis seconds / 60).
pub fn stats_minute(minute: i64) -> String {
    format!("{STATS_MINUTE_PREFIX}{minute}")
}

/// Dashboard sessions signed in before this instant (ms, Redis's clock on this key's slot) are revoked.
pub const DASHBOARD_SINCE: &str = "{msgr:dash}:since";

/// A signed-out dashboard session, by its nonce (same slot as [`DASHBOARD_SINCE`]: one MGET checks both).
pub fn dashboard_revoked(nonce: &str) -> String {
    format!("{{msgr:dash}}:revoked:{nonce}")
}

/// Dashboard sign-in attempts from one client address (successful ones given back).
pub fn dashboard_signin(client: &str) -> String {
    format!("{{msgr:dash}}:signin:{client}")
}

/// Pub/sub channel: the producer publishes a customer id when it enqueues, so idle fetchers wake at once.
pub const WAKE_CHANNEL: &str = "msgr:wake";
/// Pub/sub channel: a customer id when its pool gained a number, so workers waiting for a purchase resume at once.
pub const POOL_CHANNEL: &str = "msgr:pool";

/// Keys of one customer, all under the hash tag `{c:<id>}`.
#[derive(Clone, Debug)]
pub struct CustomerKeys {
    /// `{c:<id>}:`
    prefix: String,
}

impl CustomerKeys {
    pub fn new(customer: &CustomerId) -> Self {
        Self { prefix: format!("{{c:{}}}:", customer.as_str()) }
    }

    fn key(&self, suffix: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + suffix.len());
        k.push_str(&self.prefix);
        k.push_str(suffix);
        k
    }

    pub fn cfg(&self) -> String {
        self.key("cfg")
    }
    pub fn pool(&self) -> String {
        self.key("pool")
    }
    pub fn pool_meta(&self) -> String {
        self.key("pool:meta")
    }
    pub fn pool_last(&self) -> String {
        self.key("pool:last")
    }
    pub fn releases(&self) -> String {
        self.key("releases")
    }
    /// Set when Twilio refused a number because the Messaging Service is full (21714).
    pub fn service_full(&self) -> String {
        self.key("svcfull")
    }
    /// Prefix of per-number send windows: the script appends the E.164 number.
    pub fn window_prefix(&self) -> String {
        self.key("w:")
    }
    pub fn window(&self, number: &str) -> String {
        self.key(&format!("w:{number}"))
    }
    /// Prefix of per-number received windows.
    pub fn received_prefix(&self) -> String {
        self.key("r:")
    }
    pub fn received(&self, number: &str) -> String {
        self.key(&format!("r:{number}"))
    }
    /// Prefix of the sticky-sender hashes: the script appends `<epoch>:<last three digits of the recipient>`.
    pub fn sticky_prefix(&self) -> String {
        self.key("sticky:")
    }
    /// Prefix of the lookup cache: the script appends `<30-day epoch>:<last three digits of the recipient>`.
    pub fn lookup_prefix(&self) -> String {
        self.key("lt:")
    }
    /// Prefix of the carrier caps' keys: `att` (AT&T's send log; the other caps count in the customer's cfg).
    pub fn caps_prefix(&self) -> String {
        self.key("cap:")
    }
    pub fn optouts(&self) -> String {
        self.key("optout")
    }
    /// The customer's events (a STREAM; common.lua writes it, the events API reads it).
    pub fn events(&self) -> String {
        self.key("events")
    }
    /// The lease of the server delivering the customer's events (STRING, `SET NX PX`).
    pub fn events_lease(&self) -> String {
        self.key("events:lease")
    }
    /// Delivery progress: lane → id of the last event handled, and `start` (HASH).
    pub fn events_lanes(&self) -> String {
        self.key("events:lanes")
    }
    /// Lanes held by a failing event: lane → `<id>|<attempts>|<due ms>` (HASH).
    pub fn events_retry(&self) -> String {
        self.key("events:retry")
    }
    /// Dead-lettered events: id → when recorded (ZSET).
    pub fn events_dead(&self) -> String {
        self.key("events:dead")
    }
    /// Dead-lettered events queued for one more delivery: id → when recorded (ZSET).
    pub fn events_replay(&self) -> String {
        self.key("events:replay")
    }
    /// Why each dead-lettered event was given up: id → attempts and last error (HASH).
    pub fn events_dead_why(&self) -> String {
        self.key("events:dead:why")
    }
    /// A tenant's conversation with the customer in the current 30-day epoch (STRING of length-prefixed entries;
    /// common.lua `converse`), the one written to now.
    pub fn conversation(&self, tenant: &str) -> String {
        self.conversation_in(tenant, conversation_epoch(chrono::Utc::now().timestamp_millis()))
    }
    /// A tenant's conversation list of one 30-day epoch.
    pub fn conversation_in(&self, tenant: &str, epoch: i64) -> String {
        self.key(&format!("conv:{epoch}:{tenant}"))
    }
    /// The lists a thread's last 30 days are in at `now_ms`: the previous epoch's, then the current one's.
    pub fn conversations(&self, tenant: &str, now_ms: i64) -> [String; 2] {
        let e = conversation_epoch(now_ms);
        [self.conversation_in(tenant, e - 1), self.conversation_in(tenant, e)]
    }
    /// Opt-out records: recipient → its opt-outs and opt-ins, newest last (JSON).
    /// Suspected revocations waiting for a person (HASH).
    pub fn reviews(&self) -> String {
        self.key("review")
    }
    /// Prefix of the held-jobs sets: the script appends the tenant's E.164.
    pub fn held_prefix(&self) -> String {
        self.key("held:")
    }
    pub fn held(&self, tenant: &str) -> String {
        self.key(&format!("held:{tenant}"))
    }
    /// Tenants with an opt-in on record (SET).
    pub fn consent(&self) -> String {
        self.key("consent")
    }
    pub fn optout_records(&self) -> String {
        self.key("optrec")
    }
    pub fn lock(&self) -> String {
        self.key("lock")
    }
    pub fn intents(&self) -> String {
        self.key("intents")
    }
    pub fn queue(&self) -> String {
        self.key("q")
    }
    pub fn unsent(&self) -> String {
        self.key("unsent")
    }
    /// A paused batch's parked jobs (SET; reserve.lua builds it as the batch key plus `:pw`).
    pub fn batch_paused_jobs(&self, batch: &BatchId) -> String {
        format!("{}:pw", self.batch(batch))
    }
    pub fn scheduled(&self) -> String {
        self.key("sched")
    }
    /// A tenant's texts in the frequency cap's window (ZSET; reserve.lua builds it from the cfg key).
    pub fn tenant_texts(&self, tenant: &str) -> String {
        self.key(&format!("ft:{tenant}"))
    }
    /// Jobs parked by the monthly spend limit (SET of job members, each also in `sched`).
    pub fn spend_wait(&self) -> String {
        self.key("spendwait")
    }
    pub fn inflight(&self) -> String {
        self.key("inflight")
    }
    pub fn batch(&self, batch: &BatchId) -> String {
        self.key(&format!("b:{}", batch.local()))
    }
    pub fn batch_state(&self, batch: &BatchId) -> String {
        self.key(&format!("b:{}:st", batch.local()))
    }
    pub fn batch_failures(&self, batch: &BatchId) -> String {
        self.key(&format!("b:{}:fail", batch.local()))
    }
    pub fn batch_deliveries(&self, batch: &BatchId) -> String {
        self.key(&format!("b:{}:dlr", batch.local()))
    }
    /// Recipients the carriers did not reach: recipient → `<sid>|<status>|<code>` (HASH; delivery.lua).
    pub fn batch_undelivered(&self, batch: &BatchId) -> String {
        self.key(&format!("b:{}:undl", batch.local()))
    }
    /// A personalised batch's merge values: recipient → values (HASH; enqueue_chunk.lua), for resends and the inbox.
    pub fn batch_values(&self, batch: &BatchId) -> String {
        self.key(&format!("b:{}:v", batch.local()))
    }
    /// Tenants who replied to the batch: tenant → ms of their last reply (ZSET; record_inbound.lua).
    pub fn batch_replies(&self, batch: &BatchId) -> String {
        self.key(&format!("b:{}:replies", batch.local()))
    }
    /// The support desk's inbox: tenant → ms of their last reply (ZSET; record_inbound.lua).
    pub fn inbox(&self) -> String {
        self.key("inbox")
    }
    /// Replies not read yet per tenant (HASH; record_inbound.lua adds, the desk's "read" removes).
    pub fn unread(&self) -> String {
        self.key("unread")
    }
    pub fn idempotency(&self, key: &str) -> String {
        self.key(&format!("idem:{key}"))
    }
    pub fn batches(&self) -> String {
        self.key("batches")
    }
}

/// How long one conversation string collects messages (30 days). It expires two epochs after its first message,
/// set when it is created (common.lua `converse`: `SET NX PX`, then `APPEND`), so a thread's last 30 days are always
/// in the current and the previous epoch's strings.
pub const CONVERSATION_EPOCH_MS: i64 = 30 * 86_400_000;

/// The conversation epoch of an instant (ms).
pub fn conversation_epoch(ms: i64) -> i64 {
    ms.div_euclid(CONVERSATION_EPOCH_MS)
}

/// The entries of a conversation string (common.lua `converse`: length-prefixed, `<bytes>:<entry>`), oldest first.
pub fn conversation_entries(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some((len, tail)) = rest.split_once(':') {
        let Some(entry) = len.parse::<usize>().ok().and_then(|n| tail.get(..n)) else { break };
        out.push(entry.to_owned());
        rest = &tail[entry.len()..];
    }
    out
}

/// One conversation entry as `converse` stores it (for tools that write threads directly).
pub fn conversation_record(entry: &str) -> String {
    format!("{}:{entry}", entry.len())
}

/// A job as stored in the queue: `<batch local id>|<recipient E.164>`, about 40 bytes, and for a personalised batch
/// `|<values>` after it (the recipient's merge-field values in the batch's order of variables).
///
/// The body lives once in the batch record; the customer is implied by the queue the member sits in. A job's values
/// live only in its member, so they leave Redis with the job.
pub fn job_member(batch: &BatchId, recipient: &str, values: Option<&str>) -> String {
    let extra = values.map_or(0, |v| v.len() + 1);
    let mut m = String::with_capacity(batch.local().len() + 1 + recipient.len() + extra);
    m.push_str(batch.local());
    m.push('|');
    m.push_str(recipient);
    if let Some(v) = values {
        m.push('|');
        m.push_str(v);
    }
    m
}

/// Entries (`<ms>:<resid>`, the format of a send window and of AT&T's per-minute log) of a list newer than
/// `horizon` (Redis ms).
pub fn window_entries_after(window: &[String], horizon: i64) -> usize {
    window
        .iter()
        .filter(|e| e.split(':').next().and_then(|t| t.parse::<i64>().ok()).is_some_and(|t| t > horizon))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_entries_parse_what_converse_writes() {
        let raw = ["o|1|+1|SM1|b|Hi: there | all", "i|2|+1|SM2||¿Qué? 2:3"].map(conversation_record).concat();
        assert_eq!(conversation_entries(&raw), vec!["o|1|+1|SM1|b|Hi: there | all", "i|2|+1|SM2||¿Qué? 2:3"]);
        assert_eq!(conversation_entries("5:abc"), Vec::<String>::new(), "a cut entry is not read");
    }

    #[test]
    fn every_customer_key_shares_one_hash_tag() {
        let c = CustomerId::parse("acme").unwrap();
        let b = BatchId::new(&c);
        let k = CustomerKeys::new(&c);
        let all = [
            k.cfg(),
            k.pool(),
            k.pool_meta(),
            k.pool_last(),
            k.releases(),
            k.window("+14155550100"),
            k.received("+14155550100"),
            k.sticky_prefix(),
            k.optouts(),
            k.lock(),
            k.intents(),
            k.queue(),
            k.scheduled(),
            k.inflight(),
            k.unsent(),
            k.batch(&b),
            k.batch_state(&b),
            k.batch_failures(&b),
            k.idempotency("x"),
        ];
        for key in all {
            assert!(key.starts_with("{c:acme}:"), "{key}");
        }
        assert_eq!(k.window("+1"), format!("{}+1", k.window_prefix()));
    }

    /// reserve.lua derives these from the cfg key (`{c:ID}:cfg` less `cfg`): the names must stay as it builds them.
    #[test]
    fn the_keys_reserve_lua_builds_from_the_cfg_key_are_these() {
        let k = CustomerKeys::new(&CustomerId::parse("acme").unwrap());
        let prefix = k.cfg().strip_suffix("cfg").unwrap().to_owned();
        assert_eq!(k.reviews(), format!("{prefix}review"));
        assert_eq!(k.consent(), format!("{prefix}consent"));
        assert_eq!(k.held("+14155550100"), format!("{prefix}held:+14155550100"));
        assert_eq!(k.held_prefix(), format!("{prefix}held:"));
        assert_eq!(k.optout_records(), format!("{prefix}optrec"));
        assert_eq!(k.scheduled(), format!("{prefix}sched"));
        assert_eq!(k.spend_wait(), format!("{prefix}spendwait"));
        assert_eq!(k.tenant_texts("+14155550100"), format!("{prefix}ft:+14155550100"));
        let uses = [
            (include_str!("../lua/reserve.lua"), &["review", "consent", "held:", "optrec", "spendwait", "ft:"][..]),
            (include_str!("../lua/fail.lua"), &["review", "held:", "sched"][..]),
        ];
        for (script, suffixes) in uses {
            for suffix in suffixes {
                assert!(script.contains(&format!("customer_key(cfg, '{suffix}')")), "{suffix}");
            }
        }
    }
}
