//! The operator's Prometheus metrics: reconciles (count, duration, errors by category) per
//! controller, the time from a request's creation to Fulfilled, and — read from the request
//! cache at each scrape — machines by state and template. Served on `/metrics` by `http`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsCallLabels {
    pub provider: String,
    pub service: String,
    pub operation: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsOperationLabels {
    pub provider: String,
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    pub provider: String,
    /// `describe` or `mutate`.
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SweepLabels {
    pub provider: String,
    /// instance, fleet, spot-fleet-request, auto-scaling-group, launch-template.
    pub kind: String,
    /// `removed`, or `reported` in dry-run mode.
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub provider: String,
    /// spot_interruption, rebalance_recommendation, scheduled_change, state_change, other,
    /// malformed.
    pub kind: String,
    /// applied (a machine of this cluster), unknown (no such machine here), foreign (another
    /// region), ignored (not about a machine), malformed.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MachineLabels {
    pub namespace: String,
    pub template: String,
    pub state: String,
}

fn seconds_histogram() -> Histogram {
    // 5 ms to ~80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Every metric family, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_seconds: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    time_to_fulfilled: Histogram,
    machines: Family<MachineLabels, Gauge>,
    aws_calls: Family<AwsCallLabels, Counter>,
    aws_call_seconds: Family<AwsOperationLabels, Histogram, fn() -> Histogram>,
    budget_waits: Family<BudgetLabels, Counter>,
    budget_wait_seconds: Family<BudgetLabels, Counter<f64>>,
    swept: Family<SweepLabels, Counter>,
    poll_cycles: Family<ProviderLabels, Counter>,
    tracked: Family<ProviderLabels, Gauge>,
    offerings_skipped: Family<ProviderLabels, Counter>,
    queue_messages: Family<QueueLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("orb");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_seconds =
            Family::<ControllerLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram);
        // 1 s to ~4.5 h.
        let time_to_fulfilled = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        let machines = Family::<MachineLabels, Gauge>::default();
        let aws_calls = Family::<AwsCallLabels, Counter>::default();
        let aws_call_seconds =
            Family::<AwsOperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram);
        registry.register("reconciles", "Reconciles by controller and result", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by controller and error category",
            reconcile_errors.clone(),
        );
        registry.register("reconcile_duration_seconds", "Time spent in one reconcile", reconcile_seconds.clone());
        registry.register(
            "request_time_to_fulfilled_seconds",
            "Time from a MachineRequest's creation to its phase Fulfilled",
            time_to_fulfilled.clone(),
        );
        registry.register(
            "machines",
            "Machines of all requests by namespace, template and EC2 state",
            machines.clone(),
        );
        registry.register(
            "aws_calls",
            "AWS calls by provider, service, operation and outcome (ok, client_error, throttled, server_error, no_response)",
            aws_calls.clone(),
        );
        registry.register(
            "aws_call_duration_seconds",
            "Latency of AWS calls, SDK retries included",
            aws_call_seconds.clone(),
        );
        let budget_waits = Family::<BudgetLabels, Counter>::default();
        let budget_wait_seconds = Family::<BudgetLabels, Counter<f64>>::default();
        let swept = Family::<SweepLabels, Counter>::default();
        let poll_cycles = Family::<ProviderLabels, Counter>::default();
        let tracked = Family::<ProviderLabels, Gauge>::default();
        let offerings_skipped = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "aws_rate_limit_waits",
            "AWS calls that waited for the provider's client-side rate limiter, by class (describe, mutate)",
            budget_waits.clone(),
        );
        registry.register(
            "aws_rate_limit_wait_seconds",
            "Time AWS calls spent waiting for the client-side rate limiter",
            budget_wait_seconds.clone(),
        );
        registry.register(
            "leaked_resources_swept",
            "Cloud resources tagged with this cluster whose MachineRequest no longer exists, removed (or reported in dry-run)",
            swept.clone(),
        );
        registry.register("poll_cycles", "Batched instance refreshes by provider", poll_cycles.clone());
        registry.register("tracked_instances", "Instances the provider's poller refreshes", tracked.clone());
        registry.register(
            "offerings_skipped",
            "Launch offerings (type, zone, market) left out because they failed for capacity recently",
            offerings_skipped.clone(),
        );
        let queue_messages = Family::<QueueLabels, Counter>::default();
        registry.register(
            "interruption_messages",
            "Messages of the providers' interruption queues by kind and outcome (each deleted once read)",
            queue_messages.clone(),
        );
        Self {
            registry,
            queue_messages,
            budget_waits,
            budget_wait_seconds,
            swept,
            poll_cycles,
            tracked,
            offerings_skipped,
            reconciles,
            reconcile_errors,
            reconcile_seconds,
            time_to_fulfilled,
            machines,
            aws_calls,
            aws_call_seconds,
        }
    }
}

impl Metrics {
    /// Records one reconcile of `controller`; `error` is the error's category when it failed.
    pub fn reconciled(&self, controller: &str, took: Duration, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles.get_or_create(&ReconcileLabels { controller: controller.into(), result: result.into() }).inc();
        if let Some(category) = error {
            let labels = ErrorLabels { controller: controller.into(), category: category.into() };
            self.reconcile_errors.get_or_create(&labels).inc();
        }
        self.reconcile_seconds
            .get_or_create(&ControllerLabels { controller: controller.into() })
            .observe(took.as_secs_f64());
    }

    /// Records one AWS call (with the SDK's retries) and how long it took.
    pub fn aws_call(&self, provider: &str, service: &str, operation: &str, outcome: &str, took: Duration) {
        let labels = AwsCallLabels {
            provider: provider.into(),
            service: service.into(),
            operation: operation.into(),
            outcome: outcome.into(),
        };
        self.aws_calls.get_or_create(&labels).inc();
        let labels = AwsOperationLabels { provider: provider.into(), operation: operation.into() };
        self.aws_call_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Records an AWS call that waited `took` for the rate limiter of `class`.
    pub fn budget_wait(&self, provider: &str, class: &str, took: Duration) {
        let labels = BudgetLabels { provider: provider.into(), class: class.into() };
        self.budget_waits.get_or_create(&labels).inc();
        self.budget_wait_seconds.get_or_create(&labels).inc_by(took.as_secs_f64());
    }

    /// Records a leaked resource of `kind` removed (or only reported, in dry-run).
    pub fn swept(&self, provider: &str, kind: &str, dry_run: bool) {
        let action = if dry_run { "reported" } else { "removed" };
        self.swept
            .get_or_create(&SweepLabels { provider: provider.into(), kind: kind.into(), action: action.into() })
            .inc();
    }

    /// Records one poll cycle and how many instances the poller now tracks.
    pub fn polled(&self, provider: &str, tracked: usize) {
        let labels = ProviderLabels { provider: provider.into() };
        self.poll_cycles.get_or_create(&labels).inc();
        self.tracked.get_or_create(&labels).set(i64::try_from(tracked).unwrap_or(i64::MAX));
    }

    /// Records `n` offerings left out of a launch for a recent capacity error.
    pub fn offerings_skipped(&self, provider: &str, n: usize) {
        self.offerings_skipped.get_or_create(&ProviderLabels { provider: provider.into() }).inc_by(n as u64);
    }

    /// Records one event of an interruption queue's message (`kind`, `outcome`: `QueueLabels`).
    pub fn queue_message(&self, provider: &str, kind: &str, outcome: &str) {
        let labels = QueueLabels { provider: provider.into(), kind: kind.into(), outcome: outcome.into() };
        self.queue_messages.get_or_create(&labels).inc();
    }

    /// Records a request reaching Fulfilled `took` after its creation.
    pub fn fulfilled(&self, took: Duration) {
        self.time_to_fulfilled.observe(took.as_secs_f64());
    }

    /// The text exposition, with the machine gauges set from `requests` (the controller's cache).
    pub fn render<'a>(&self, requests: impl IntoIterator<Item = &'a crate::api::MachineRequest>) -> String {
        use kube::ResourceExt;
        self.machines.clear();
        for mr in requests {
            for m in mr.status.iter().flat_map(|s| s.machines.iter()) {
                let labels = MachineLabels {
                    namespace: mr.namespace().unwrap_or_default(),
                    template: mr.spec.template_ref.name.clone(),
                    state: m.state.clone(),
                };
                self.machines.get_or_create(&labels).inc();
            }
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Machine, MachineRequest, MachineRequestSpec, MachineRequestStatus, TemplateRef};

    #[test]
    fn every_family_is_exposed_with_what_was_recorded() {
        let metrics = Metrics::default();
        metrics.reconciled("request", Duration::from_millis(20), None);
        metrics.reconciled("request", Duration::from_millis(40), Some("Provider"));
        metrics.fulfilled(Duration::from_secs(12));
        let mut mr = MachineRequest::new(
            "r",
            MachineRequestSpec { template_ref: TemplateRef { name: "w".into() }, ..Default::default() },
        );
        mr.metadata.namespace = Some("grid".into());
        let machine =
            |id: &str, state: &str| Machine { instance_id: id.into(), state: state.into(), ..Default::default() };
        mr.status = Some(MachineRequestStatus {
            machines: vec![machine("i-1", "running"), machine("i-2", "running"), machine("i-3", "pending")],
            ..Default::default()
        });
        let text = metrics.render([&mr]);
        for expected in [
            r#"orb_reconciles_total{controller="request",result="ok"} 1"#,
            r#"orb_reconciles_total{controller="request",result="error"} 1"#,
            r#"orb_reconcile_errors_total{controller="request",category="Provider"} 1"#,
            r#"orb_reconcile_duration_seconds_count{controller="request"} 2"#,
            "orb_request_time_to_fulfilled_seconds_count 1",
            r#"orb_machines{namespace="grid",template="w",state="running"} 2"#,
            r#"orb_machines{namespace="grid",template="w",state="pending"} 1"#,
        ] {
            assert!(text.contains(expected), "missing {expected} in:\n{text}");
        }
        // Machines that are gone leave the gauges at the next scrape.
        let text = metrics.render([]);
        assert!(!text.contains("orb_machines{"), "{text}");
    }
}
