//! Offerings — (instance type, availability zone, market) — that recently failed for capacity,
//! shared by every request of one provider: for a while (`capacityErrorTtl`, default 3
//! minutes) launches leave them out instead of each request asking EC2 again and failing the
//! same way. Skips are counted and reported as launch failures, so the status says why an
//! offering was not tried.

use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// (instance type, zone, spot).
pub type Offering = (String, String, bool);

/// What the memory holds of a failed offering.
#[derive(Clone, Debug)]
struct Failed {
    at: Instant,
    code: String,
}

/// The memory of one provider.
#[derive(Debug)]
pub struct CapacityMemory {
    ttl: Duration,
    failed: Mutex<HashMap<Offering, Failed>>,
    provider: String,
    metrics: Arc<Metrics>,
}

/// Why an offering is skipped: its error code and a sentence for the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    pub code: String,
    pub message: String,
}

impl CapacityMemory {
    pub fn new(ttl: Duration, provider: String, metrics: Arc<Metrics>) -> Self {
        Self { ttl, failed: Mutex::default(), provider, metrics }
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, HashMap<Offering, Failed>> {
        self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers that `offering` just failed for capacity with `code`.
    pub fn remember(&self, offering: Offering, code: &str) {
        if self.ttl.is_zero() {
            return;
        }
        tracing::info!(instance_type = %offering.0, zone = %offering.1, spot = offering.2, %code, ttl = ?self.ttl, "offering out of capacity; skipped by every request for a while");
        self.failed().insert(offering, Failed { at: Instant::now(), code: code.to_string() });
    }

    /// Counts `n` offerings left out of a launch.
    pub fn skipped(&self, n: usize) {
        self.metrics.offerings_skipped(&self.provider, n);
    }

    /// Whether `offering` failed for capacity within the TTL, and then why it is skipped.
    pub fn skip(&self, offering: &Offering) -> Option<Skip> {
        let now = Instant::now();
        let mut failed = self.failed();
        failed.retain(|_, f| now.duration_since(f.at) < self.ttl);
        let f = failed.get(offering)?;
        let (ago, left) = (now.duration_since(f.at).as_secs(), (self.ttl - now.duration_since(f.at)).as_secs());
        Some(Skip {
            code: f.code.clone(),
            message: format!(
                "{} {} in {} not tried: it failed for capacity ({}) {ago}s ago; tried again in {left}s",
                if offering.2 { "spot" } else { "on-demand" },
                offering.0,
                offering.1,
                f.code
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_offering_is_skipped_until_the_ttl_passes() {
        let metrics = Arc::new(Metrics::default());
        let memory = CapacityMemory::new(Duration::from_secs(180), "p".into(), metrics.clone());
        let a: Offering = ("m5.large".into(), "us-east-1a".into(), true);
        let on_demand: Offering = ("m5.large".into(), "us-east-1a".into(), false);
        assert_eq!(memory.skip(&a), None);
        memory.remember(a.clone(), "InsufficientInstanceCapacity");
        let skip = memory.skip(&a).unwrap();
        memory.skipped(2);
        assert_eq!(skip.code, "InsufficientInstanceCapacity");
        assert!(skip.message.contains("spot m5.large in us-east-1a"), "{}", skip.message);
        assert_eq!(memory.skip(&on_demand), None, "the other market is another offering");
        tokio::time::advance(Duration::from_secs(179)).await;
        assert!(memory.skip(&a).is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(memory.skip(&a), None, "forgotten after the TTL");
        assert!(metrics.render([]).contains(r#"orb_offerings_skipped_total{provider="p"} 2"#));
    }
}
