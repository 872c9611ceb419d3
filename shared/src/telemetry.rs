//! Logging: one subscriber factory for every binary.
//!
//! Human-readable lines on a terminal, JSON lines otherwise (`MESSENGER_LOG_FORMAT=json|text` overrides); the
//! filter comes from `RUST_LOG` (default `info`). Never log a full phone number, a body or a secret: use
//! [`crate::domain::PhoneNumber::masked`]; the domain types' `Debug` already hides them.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (logs go to stderr, so stdout stays clean for `--json` output).
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = match std::env::var("MESSENGER_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.compact().try_init() };
}

/// Resolves on SIGTERM or SIGINT: what every long-running binary shuts down on.
pub async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Formats an error with its whole cause chain: `outer: inner: root`.
pub fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let next = inner.to_string();
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = inner.source();
    }
    s
}
