//! Recipient lists, polling, and invariant checks over the simulator's state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::sim::SimState;

/// `n` distinct recipients that libphonenumber accepts, starting at `offset` (so lists can be disjoint).
pub fn recipients(n: usize, offset: usize) -> Vec<String> {
    const AREAS: [u32; 6] = [415, 628, 212, 646, 312, 617];
    (offset..offset + n)
        .map(|i| {
            let area = AREAS[(i / 7_000_000) % AREAS.len()];
            let j = i % 7_000_000;
            // Exchanges 300..=999 keep clear of N11 codes and the 555 fiction range handled below.
            let mut exchange = 300 + (j / 10_000) as u32;
            if exchange == 555 {
                exchange = 299;
            }
            format!("+1{area}{exchange}{:04}", j % 10_000)
        })
        .collect()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
/// Writes a recipient list (one number per line) to a fresh temporary file.
pub fn write_recipients(list: &[String]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("recipients-{}.txt", ulid::Ulid::new()));
    std::fs::write(&path, list.join("\n")).expect("write recipients file");
    path
}

pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fetches the simulator's state over HTTP.
pub async fn sim_state(base: &str, with_messages: bool) -> SimState {
    crate::http()
        .get(format!("{base}/_sim/state?messages={with_messages}"))
        .send()
        .await
        .expect("simulator state")
        .json()
        .await
        .expect("simulator state json")
}

/// Messages per recipient.
pub fn per_recipient(state: &SimState) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for msg in &state.messages {
        *m.entry(msg.to.clone()).or_insert(0) += 1;
    }
    m
}

/// The most messages any one sender number sent within any window of length `window` (by the simulator's clock).
pub fn max_in_window(state: &SimState, window: Duration) -> usize {
    let mut by_from: HashMap<&str, Vec<i64>> = HashMap::new();
    for m in &state.messages {
        by_from.entry(m.from.as_str()).or_default().push(m.date_created.timestamp_millis());
    }
    let w = window.as_millis() as i64;
    by_from
        .values_mut()
        .map(|times| {
            times.sort_unstable();
            let (mut best, mut lo) = (0, 0);
            for hi in 0..times.len() {
                while times[hi] - times[lo] >= w {
                    lo += 1;
                }
                best = best.max(hi - lo + 1);
            }
            best
        })
        .max()
        .unwrap_or(0)
}

/// Numbers currently owned (not released).
pub fn owned_numbers(state: &SimState) -> usize {
    state.numbers.iter().filter(|n| !n.released).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_recipients_are_valid_and_distinct() {
        let r = recipients(20_000, 0);
        let set: std::collections::HashSet<_> = r.iter().collect();
        assert_eq!(set.len(), r.len());
        for n in r.iter().step_by(97) {
            shared::domain::PhoneNumber::parse(n).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }
}
