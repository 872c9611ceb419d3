//! Messenger's shared library: everything the producer, the worker and the tests agree on.
//!
//! # Layout
//! - [`domain`]: types that parse — [`domain::PhoneNumber`] (E.164), [`domain::CustomerId`], [`domain::BatchId`],
//!   [`domain::MessageBody`] with SMS segment counting.
//! - [`config`]: environment variables and flags, validated into [`config::Settings`].
//! - [`keys`]: every Redis key, with a per-customer hash tag.
//! - [`scripts`]: the Lua scripts (documented files in `shared/lua/`).
//! - [`secrets`]: secrets at rest (customers' events signing secrets), sealed under `MESSENGER_SECRETS_KEY`.
//! - [`store`]: Redis connections with explicit timeouts, fleet settings check, reply decoding.
//! - [`replication`]: replica acknowledgements per shard (how many replicas a write waits for, paused shards).
//! - [`ledger`]: job states and quota windows — reserve, commit, fail, requeue, fetch, lease renewal.
//! - [`customers`]: customer records and number pools.
//! - [`batches`]: creating and enqueuing batches exactly once, status, cancel.
//! - [`carriers`]: recipients' lines (Lookup) and the carriers' A2P caps per brand and campaign.
//! - [`purchase`]: the purchase lock, intents, buying and resolving numbers.
//! - [`quiet`]: quiet hours in the recipient's local time: zones of a number, quiet periods as instants.
//! - [`twilio`]: the REST client and the wire types the simulator shares.
//! - [`telemetry`]: logging setup and error formatting.

pub mod batches;
pub mod carriers;
pub mod config;
pub mod contracts;
pub mod customers;
pub mod domain;
pub mod keys;
pub mod ledger;
pub mod purchase;
pub mod quiet;
pub mod release;
pub mod replication;
pub mod scripts;
pub mod secrets;
pub mod spend;
pub mod store;
pub mod telemetry;
pub mod twilio;
