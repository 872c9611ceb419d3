//! Typed contracts of the hot path's scripts that take several jobs in one call (`reserve_many.lua`,
//! `commit_many.lua`): what a call carries is a list of typed items, turned into KEYS and ARGV in exactly one place
//! per script, and each reply is a type the caller matches without a catch-all.
//!
//! Each contract names its keys and arguments in the order the script's header declares them (`KEYS[1] cfg HASH`,
//! `ARGV[2] daily quota`, and for the per-item part `KEYS[6..] per job, two keys: batch HASH, …`); a test reads every
//! header and fails when a header and its contract disagree, so neither can change without the other.

use redis::Value;

use crate::keys::CustomerKeys;
use crate::ledger::{Job, Slot};
use crate::scripts::{self, Call, Lua};
use crate::store::{num, strings};

/// The declared shape of a script: fixed keys and arguments, then the keys and arguments each item adds.
pub struct Contract {
    pub file: &'static str,
    pub keys: &'static [&'static str],
    pub args: &'static [&'static str],
    pub keys_each: &'static [&'static str],
    pub args_each: &'static [&'static str],
}

/// The job parts of a multi-job call, for the header test.
pub const CONTRACTS: &[&Contract] = &[&RESERVE_MANY, &COMMIT_MANY];

pub const RESERVE_MANY: Contract = Contract {
    file: "reserve_many.lua",
    keys: &["cfg", "pool", "optouts", "inflight", "unsent"],
    args: &[
        "window ms",
        "daily quota",
        "conversational cap",
        "window key prefix",
        "received key prefix",
        "sticky key prefix",
        "lookup cache prefix",
        "carrier caps' prefix",
        "the spend terms",
    ],
    keys_each: &["batch", "batch state"],
    args_each: &["recipient", "in-flight member", "quiet periods", "segments", "the carriers' day"],
};

pub const COMMIT_MANY: Contract = Contract {
    file: "commit_many.lua",
    keys: &["customer cfg", "inflight", "unsent", "pool last-send", "events"],
    args: &["batch retention s", "window key prefix", "window ms", "carrier caps' key prefix"],
    keys_each: &["batch", "batch state", "batch failures", "the recipient's conversation"],
    args_each: &["recipient", "in-flight member", "message sid", "the number it was sent from", "the text as sent"],
};

/// Builds a call from a contract: the fixed keys and arguments, then each item's, checked against the contract's
/// counts (a mismatch is a bug in this module, caught by its tests).
struct Builder<'a> {
    contract: &'static Contract,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
    script: &'a Lua,
}

impl<'a> Builder<'a> {
    fn new(script: &'a Lua, contract: &'static Contract, keys: Vec<String>, args: Vec<Vec<u8>>) -> Self {
        debug_assert_eq!((keys.len(), args.len()), (contract.keys.len(), contract.args.len()), "{}", contract.file);
        Self { contract, keys, args, script }
    }

    fn item(&mut self, keys: Vec<String>, args: Vec<Vec<u8>>) {
        debug_assert_eq!(keys.len(), self.contract.keys_each.len(), "{}", self.contract.file);
        debug_assert_eq!(args.len(), self.contract.args_each.len(), "{}", self.contract.file);
        self.keys.extend(keys);
        self.args.extend(args);
    }

    fn call(self) -> Call<'a> {
        let mut keys = self.keys.into_iter();
        let mut call = self.script.key(keys.next().unwrap_or_default());
        for k in keys {
            call.key(k);
        }
        for a in self.args {
            call.arg(a);
        }
        call
    }
}

fn arg(v: impl ToString) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// One job of a [`ReserveMany`] call: the job and what [`crate::ledger::Rules`] says of it — the quiet periods of its
/// recipient's zones, and for a customer with a T-Mobile cap the carriers' day and the segments of the job's text.
pub struct Reserving<'a> {
    pub job: &'a Job,
    pub quiet: &'a str,
    pub days: &'a str,
    pub segments: u32,
    /// The spend terms ([`crate::spend::Terms`], encoded); every job of one customer has the same, and the call
    /// passes the first job's.
    pub spend: &'a str,
}

/// What `reserve_many.lua` says of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserved {
    Slot(Slot),
    /// Not the plain case: reserve it with `reserve.lua`. Nothing changed.
    Slow,
    /// The customer's settings need `reserve.lua`'s rules on every send (consent required, a review open, a spent
    /// campaign): reserve its jobs with it. Nothing changed.
    Rules,
}

/// A call of `reserve_many.lua` for jobs of one customer.
pub struct ReserveMany<'a> {
    pub keys: &'a CustomerKeys,
    pub window_ms: u64,
    pub daily_quota: u32,
    pub conversational_cap: u32,
    pub jobs: &'a [Reserving<'a>],
}

impl ReserveMany<'_> {
    pub fn call(&self) -> Call<'static> {
        let k = self.keys;
        let mut b = Builder::new(
            &scripts::RESERVE_MANY,
            &RESERVE_MANY,
            vec![k.cfg(), k.pool(), k.optouts(), k.inflight(), k.unsent()],
            vec![
                arg(self.window_ms),
                arg(self.daily_quota),
                arg(self.conversational_cap),
                arg(k.window_prefix()),
                arg(k.received_prefix()),
                arg(k.sticky_prefix()),
                arg(k.lookup_prefix()),
                arg(k.caps_prefix()),
                arg(self.jobs.first().map_or("", |r| r.spend)),
            ],
        );
        for r in self.jobs {
            b.item(
                vec![k.batch(&r.job.batch), k.batch_state(&r.job.batch)],
                vec![arg(r.job.recipient.as_str()), arg(&r.job.lease), arg(r.quiet), arg(r.segments), arg(r.days)],
            );
        }
        b.call()
    }

    /// One reply per job, in order.
    pub fn replies(&self, v: Value) -> Result<Vec<Reserved>, String> {
        each_reply(v, self.jobs.len(), RESERVE_MANY.file, |p| match p.first().map(String::as_str) {
            Some("ok") if p.len() == 5 => Some(Reserved::Slot(Slot {
                number: p[1].clone(),
                resid: p[2].clone(),
                at_ms: num(p, 3),
                attempt: num(p, 4) as u32,
            })),
            Some("slow") => Some(Reserved::Slow),
            Some("rules") => Some(Reserved::Rules),
            _ => None,
        })
    }
}

/// One message of a [`CommitMany`] call.
pub struct Committing<'a> {
    pub job: &'a Job,
    pub sid: &'a str,
    pub from: &'a str,
    /// The text as sent, kept in the tenant's conversation (`None`: not kept).
    pub body: Option<&'a str>,
}

/// What `commit_many.lua` says of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    Recorded {
        batch_completed: bool,
    },
    /// The same sid was recorded before (a retried commit).
    Already,
    /// Not the plain case: record it with `commit.lua`. Nothing changed for it.
    Single,
}

/// A call of `commit_many.lua` for messages of one customer.
pub struct CommitMany<'a> {
    pub keys: &'a CustomerKeys,
    pub retention_s: u64,
    pub window_ms: u64,
    pub items: &'a [Committing<'a>],
}

impl CommitMany<'_> {
    pub fn call(&self) -> Call<'static> {
        let k = self.keys;
        let mut b = Builder::new(
            &scripts::COMMIT_MANY,
            &COMMIT_MANY,
            vec![k.cfg(), k.inflight(), k.unsent(), k.pool_last(), k.events()],
            vec![arg(self.retention_s), arg(k.window_prefix()), arg(self.window_ms), arg(k.caps_prefix())],
        );
        for c in self.items {
            let j = c.job;
            b.item(
                vec![
                    k.batch(&j.batch),
                    k.batch_state(&j.batch),
                    k.batch_failures(&j.batch),
                    k.conversation(j.recipient.as_str()),
                ],
                vec![arg(j.recipient.as_str()), arg(&j.lease), arg(c.sid), arg(c.from), arg(c.body.unwrap_or(""))],
            );
        }
        b.call()
    }

    /// One reply per message, in order.
    pub fn replies(&self, v: Value) -> Result<Vec<Committed>, String> {
        each_reply(v, self.items.len(), COMMIT_MANY.file, |p| match p.first().map(String::as_str) {
            Some("ok") => Some(Committed::Recorded { batch_completed: num(p, 1) == 1 }),
            Some("already") => Some(Committed::Already),
            Some("single") => Some(Committed::Single),
            _ => None,
        })
    }
}

/// A multi-item script's reply: exactly `expected` replies, each read by `read` (`None`: a reply the contract does
/// not know, an error naming it).
fn each_reply<T>(
    v: Value,
    expected: usize,
    file: &str,
    read: impl Fn(&[String]) -> Option<T>,
) -> Result<Vec<T>, String> {
    let Value::Array(items) = v else { return Err(format!("{file} answered {v:?}")) };
    if items.len() != expected {
        return Err(format!("{file} answered {} replies for {expected} items", items.len()));
    }
    items
        .into_iter()
        .map(|item| {
            let p = strings(item);
            read(&p).ok_or_else(|| format!("unexpected reply from {file}: {p:?}"))
        })
        .collect()
}

/// A script header's declarations: `KEYS[n] text` and `ARGV[n] text` (n a number, or `n..` for the per-item part,
/// whose text lists the item's names after the colon).
#[cfg(test)]
fn declared(header: &str, what: &str) -> (Vec<String>, Vec<String>) {
    let text: String = header
        .lines()
        .take_while(|l| l.starts_with("--"))
        .map(|l| l.trim_start_matches('-').trim())
        .collect::<Vec<_>>()
        .join(" ");
    let marker = format!("{what}[");
    let mut fixed = Vec::new();
    let mut each = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find(&marker) {
        rest = &rest[i + marker.len()..];
        let close = rest.find(']').expect("a closing bracket");
        let index = &rest[..close];
        let after = rest[close + 1..].trim_start();
        // The declaration runs to the next KEYS[/ARGV[ or the end of the sentence-ending `Returns`.
        let end = ["KEYS[", "ARGV[", "Returns"].iter().filter_map(|m| after.find(m)).min().unwrap_or(after.len());
        let decl = after[..end].trim();
        if index.ends_with("..") {
            let names = decl.split_once(':').map_or(decl, |(_, l)| l);
            each = names.split(',').map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
        } else {
            let n: usize = index.parse().expect("a numbered declaration");
            assert_eq!(n, fixed.len() + 1, "{what}[{n}] declared out of order");
            fixed.push(decl.to_owned());
        }
    }
    (fixed, each)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(file: &str) -> String {
        std::fs::read_to_string(format!("{}/lua/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// Every header names the keys and arguments its contract names, in the same order, and no more.
    fn check(c: &Contract, header: &str) -> Result<(), String> {
        let mut problems = Vec::new();
        for (what, fixed, each) in [("KEYS", c.keys, c.keys_each), ("ARGV", c.args, c.args_each)] {
            let (h_fixed, h_each) = declared(header, what);
            if h_fixed.len() != fixed.len() {
                problems.push(format!(
                    "{what}: the header declares {} fixed, the contract {}",
                    h_fixed.len(),
                    fixed.len()
                ));
            }
            for (i, (h, name)) in h_fixed.iter().zip(fixed).enumerate() {
                if !h.starts_with(name) {
                    problems.push(format!("{what}[{}]: the header says '{h}', the contract '{name}'", i + 1));
                }
            }
            if h_each.len() != each.len() {
                problems.push(format!(
                    "{what} per item: the header declares {}, the contract {}",
                    h_each.len(),
                    each.len()
                ));
            }
            for (h, name) in h_each.iter().zip(each) {
                if !h.starts_with(name) {
                    problems.push(format!("{what} per item: the header says '{h}', the contract '{name}'"));
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(format!("{}: {}", c.file, problems.join("; "))) }
    }

    #[test]
    fn headers_match_their_contracts() {
        for c in CONTRACTS {
            check(c, &source(c.file)).unwrap();
        }
    }

    #[test]
    fn a_header_edited_without_its_contract_fails() {
        let header = source(RESERVE_MANY.file);
        let edited = header.replacen("KEYS[5] unsent ZSET", "KEYS[5] unsent ZSET   KEYS[6] queue LIST", 1);
        let err = check(&RESERVE_MANY, &edited).unwrap_err();
        assert!(err.contains("KEYS: the header declares 6 fixed, the contract 5"), "{err}");
        let swapped = source(COMMIT_MANY.file).replacen("message sid, the number", "the number, message sid", 1);
        let err = check(&COMMIT_MANY, &swapped).unwrap_err();
        assert!(err.contains("ARGV per item: the header says 'the number"), "{err}");
    }
}
