//! Leases of the jobs this process holds, and the heartbeat that renews them.
//!
//! A fetched job is in its customer's in-flight set with a deadline (Redis time). The heartbeat extends the
//! deadlines of every job this process still holds, once every third of the lease. Each job also keeps a local,
//! conservative view of its deadline (measured from the instant *before* the renewal was sent), so a handler can
//! refuse to start a Twilio send that might outlive its lease: after that point another worker may legitimately
//! have the job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::domain::CustomerId;
use shared::ledger::Ledger;

/// One job's lease, as this process knows it.
#[derive(Debug)]
pub struct Lease {
    /// Milliseconds since the registry's origin until which the lease is certainly ours.
    valid_until: AtomicU64,
    lost: AtomicBool,
}

/// Every lease this process holds.
#[derive(Debug)]
pub struct Registry {
    origin: Instant,
    lease: Duration,
    inner: Mutex<HashMap<CustomerId, HashMap<String, Arc<Lease>>>>,
}

impl Registry {
    pub fn new(lease: Duration) -> Arc<Self> {
        Arc::new(Self { origin: Instant::now(), lease, inner: Mutex::default() })
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// Registers a job fetched by a request sent at `sent_at`.
    pub fn add(self: &Arc<Self>, customer: &CustomerId, member: &str, sent_at: Instant) -> LeaseGuard {
        let lease = Arc::new(Lease {
            valid_until: AtomicU64::new(self.ms(sent_at) + self.lease.as_millis() as u64),
            lost: AtomicBool::new(false),
        });
        self.inner.lock().unwrap().entry(customer.clone()).or_default().insert(member.to_owned(), lease.clone());
        LeaseGuard { registry: self.clone(), customer: customer.clone(), member: member.to_owned(), lease }
    }

    fn remove(&self, customer: &CustomerId, member: &str) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(m) = inner.get_mut(customer) {
            m.remove(member);
            if m.is_empty() {
                inner.remove(customer);
            }
        }
    }

    /// The jobs held, grouped by customer.
    pub fn snapshot(&self) -> Vec<(CustomerId, Vec<String>)> {
        self.inner.lock().unwrap().iter().map(|(c, m)| (c.clone(), m.keys().cloned().collect())).collect()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a renewal sent at `sent_at`: extends every member except the `lost` ones, which are flagged.
    pub fn renewed(&self, customer: &CustomerId, members: &[String], lost: &[String], sent_at: Instant) {
        let until = self.ms(sent_at) + self.lease.as_millis() as u64;
        let inner = self.inner.lock().unwrap();
        let Some(m) = inner.get(customer) else { return };
        for member in members {
            if let Some(l) = m.get(member) {
                if lost.contains(member) {
                    l.lost.store(true, Ordering::SeqCst);
                } else {
                    l.valid_until.fetch_max(until, Ordering::SeqCst);
                }
            }
        }
    }

    /// Renews every lease once; returns how many jobs were found lost.
    pub async fn renew_all(&self, ledger: &Ledger) -> usize {
        let mut lost_total = 0;
        for (customer, members) in self.snapshot() {
            let sent_at = Instant::now();
            match ledger.renew(&customer, self.lease, &members).await {
                Ok(lost) => {
                    if !lost.is_empty() {
                        tracing::warn!(customer = %customer, lost = lost.len(), "leases expired before renewal; those jobs will not be sent by this process");
                    }
                    lost_total += lost.len();
                    self.renewed(&customer, &members, &lost, sent_at);
                }
                Err(e) => {
                    tracing::warn!(customer = %customer, error.message = %e, "lease renewal failed")
                }
            }
        }
        lost_total
    }
}

/// A held lease; dropping it forgets the job (the handler is done with it).
#[derive(Debug)]
pub struct LeaseGuard {
    registry: Arc<Registry>,
    customer: CustomerId,
    member: String,
    lease: Arc<Lease>,
}

impl LeaseGuard {
    /// How long the job is certainly still ours. Zero if it was lost.
    pub fn remaining(&self) -> Duration {
        if self.lease.lost.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        let now = self.registry.ms(Instant::now());
        Duration::from_millis(self.lease.valid_until.load(Ordering::SeqCst).saturating_sub(now))
    }

    pub fn is_lost(&self) -> bool {
        self.lease.lost.load(Ordering::SeqCst)
    }

    /// Renews this job's lease now (one round trip), for a handler that waited (for a purchase, say) and must not
    /// start a send its lease might not cover. False if Redis failed or the job is no longer ours.
    pub async fn renew_now(&self, ledger: &Ledger) -> bool {
        let sent_at = Instant::now();
        let members = [self.member.clone()];
        match ledger.renew(&self.customer, self.registry.lease, &members).await {
            Ok(lost) => {
                self.registry.renewed(&self.customer, &members, &lost, sent_at);
                lost.is_empty()
            }
            Err(_) => false,
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.registry.remove(&self.customer, &self.member);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_counts_down_from_the_request_instant_and_can_be_lost() {
        let r = Registry::new(Duration::from_secs(30));
        let c = CustomerId::parse("c").unwrap();
        let sent = Instant::now();
        let g = r.add(&c, "b|+1", sent);
        assert!(g.remaining() > Duration::from_secs(29));
        assert_eq!(r.len(), 1);
        r.renewed(&c, &["b|+1".to_owned()], &["b|+1".to_owned()], Instant::now());
        assert!(g.is_lost());
        assert_eq!(g.remaining(), Duration::ZERO);
        drop(g);
        assert!(r.is_empty());
    }
}
