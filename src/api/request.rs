//! `MachineRequest`: how many machines, and everything the operator observed about them. Pure data
//! and admission rules; no I/O. The operator writes only `status`.

// Several `printcolumn(type_ = ...)` arguments are alike by design; clippy mistakes them for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest list of ids `spec.returnMachines` may carry (bounds the CEL cost).
pub const MAX_RETURN_MACHINES: usize = 1000;
/// How many distinct failures `status.failures` keeps (the most recent win).
pub const MAX_FAILURES: usize = 10;

/// The most capacity units one request may ask for. Its status lists every machine (about 370
/// bytes each, 530 at worst), and etcd refuses an object over 1.5 MiB: `capacity` live
/// machines, as many again leaving (a scale-down to zero and back up) and `MAX_SETTLED_MACHINES`
/// terminated ones fit, with room to spare for the rest of the object (a test holds this).
pub const MAX_CAPACITY: i32 = 1000;

/// Terminated machines a status keeps listing, the most recently launched first. They hold no
/// capacity and need nothing more; without a bound a request that loses spot machines for
/// weeks would list each one until EC2 forgets it.
pub const MAX_SETTLED_MACHINES: usize = 200;

/// A machine's message is cut to this many bytes (EC2's state reasons are free text; the longest
/// the operator writes, "terminated outside the operator: " and EC2's reason, fit in it). 100, not
/// more: with every machine's host name, the largest request must still fit in etcd.
pub const MAX_MACHINE_MESSAGE: usize = 100;

/// A failure's message is cut to this many bytes.
pub const MAX_FAILURE_MESSAGE: usize = 512;

/// The template a request launches from (same namespace).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
pub struct TemplateRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What happens to the machines when the request is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DeletionPolicy {
    /// Terminate every machine and delete every resource the request made.
    #[default]
    Delete,
    /// Leave everything running in AWS; only the Kubernetes object goes.
    Orphan,
}

/// What the operator does about a machine stopped or terminated outside it (a spot reclaim, the
/// console, a scheduled retirement).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum LostMachines {
    /// Launch a replacement, so the request holds its capacity.
    #[default]
    Replace,
    /// Report it (`result: fail`, `Degraded=True MachinesLost`) and replace nothing: its capacity
    /// stays held until it is named in `returnMachines` (which lowers `capacity` for it) or
    /// `capacity` is lowered. For a client that replaces machines itself, as HostFactory does.
    Report,
}

/// How many machines (in capacity units) a template should provide.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "orb.dev",
    version = "v1alpha1",
    kind = "MachineRequest",
    namespaced,
    status = "MachineRequestStatus",
    shortname = "mr",
    category = "orb",
    doc = "A desired amount of capacity, in the capacity units of a MachineTemplate.",
    scale(spec_replicas_path = ".spec.capacity", status_replicas_path = ".status.fulfilledCapacity"),
    printcolumn(name = "Template", type_ = "string", json_path = ".spec.templateRef.name"),
    printcolumn(name = "API", type_ = "string", json_path = ".status.api"),
    printcolumn(name = "Capacity", type_ = "integer", json_path = ".spec.capacity"),
    printcolumn(name = "Fulfilled", type_ = "integer", json_path = ".status.fulfilledCapacity"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = super::name_fits_event_names()
)]
#[serde(rename_all = "camelCase")]
pub struct MachineRequestSpec {
    pub template_ref: TemplateRef,
    /// Desired total capacity in capacity units (instance weights come from the template), at
    /// most 1000: for more, several requests of the same template.
    #[x_kube(validation = Rule::new("self >= 0").message("capacity must not be negative"))]
    #[x_kube(validation = Rule::new(format!("self <= {MAX_CAPACITY}")).message(kube::core::Message::Message(format!("capacity must be at most {MAX_CAPACITY} per MachineRequest (its status lists every machine, and etcd bounds an object's size); for more, create several MachineRequests of the same template"))))]
    pub capacity: i32,
    /// Instances that must leave this request. While `capacity` is unchanged each is replaced;
    /// lower `capacity` to shrink. Ids that are already gone are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(max = 19)))]
    #[x_kube(validation = Rule::new("self.all(id, id.matches('^i-([0-9a-f]{8}|[0-9a-f]{17})$'))").message("returnMachines entries must be EC2 instance ids like i-0123456789abcdef0"))]
    pub return_machines: Vec<String>,
    /// How long to keep provisioning missing capacity before settling on Partial or Failed
    /// (Go duration from 30s to 168h, e.g. `15m`, `1h30m`).
    #[serde(default = "default_fulfilment_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,6}(ms|s|m|h)){1,4}$') && duration(self) >= duration('30s') && duration(self) <= duration('168h')").message("fulfilmentTimeout must be a duration from 30s to 168h, such as 90s, 15m or 1h30m"))]
    pub fulfilment_timeout: String,
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// `Replace` (the default) or `Report` a machine lost outside the operator.
    #[serde(default, skip_serializing_if = "is_default")]
    pub lost_machines: LostMachines,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_fulfilment_timeout() -> String {
    "15m".to_string()
}

/// Lifecycle phase of a request, as shown by `kubectl get mr`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, nothing launched yet (e.g. waiting for its template).
    Pending,
    /// Launching or waiting for machines to run.
    Provisioning,
    /// All requested capacity is running.
    Fulfilled,
    /// The fulfilment timeout passed with some, not all, capacity running.
    Partial,
    /// Nothing could be provided: timeout with no capacity, or an error that needs a spec change.
    Failed,
    /// Deleted; releasing machines.
    Deleting,
}

/// Outcome of one machine, in HostFactory's terms.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MachineResult {
    Executing,
    Succeed,
    Fail,
}

/// One machine of the request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub instance_id: String,
    /// EC2 instance state: pending, running, shutting-down, terminated, stopping, stopped.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<MachineResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// `spot` or `on-demand`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_type: Option<String>,
    /// Capacity units this machine provides.
    pub weight: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    /// The host name in its VPC (EC2's private DNS name): the name HostFactory knows it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_dns_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_time: Option<Time>,
    /// What happened to it, when something did (at most `MAX_MACHINE_MESSAGE` bytes). Not
    /// written while the machine is under `notice`, which says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// AWS said the machine is going away (a spot interruption warning, a scheduled retirement)
    /// or may be (a rebalance recommendation, scheduled maintenance). Kept while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<MachineNotice>,
    /// The operator returned this machine (named in returnMachines, a scale-down victim or a
    /// release). It stays listed, `succeed` once terminated, until the cloud forgets it; it
    /// never counts as capacity or as lost.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub returning: bool,
}

impl Machine {
    /// Pending or running, not being returned and not replaced ahead of a notice: it holds (or
    /// will hold) capacity.
    pub fn counts_as_live(&self) -> bool {
        !self.returning && !self.is_replaced() && matches!(self.state.as_str(), "pending" | "running")
    }

    /// Under a notice that made the operator launch its replacement before the loss.
    pub fn is_replaced(&self) -> bool {
        self.notice.as_ref().is_some_and(|n| n.replaced)
    }
}

/// What AWS announced about a machine (by EventBridge, through the provider's interruption
/// queue).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum NoticeKind {
    /// EC2 Spot Instance Interruption Warning: the spot machine goes at the deadline (two
    /// minutes after the warning).
    SpotInterruption,
    /// EC2 Instance Rebalance Recommendation: the spot machine is at elevated risk of
    /// interruption. Replaced only when the template says `replaceOnRebalance: true`.
    RebalanceRecommendation,
    /// AWS Health scheduled change retiring or stopping the machine at the deadline.
    ScheduledRetirement,
    /// AWS Health scheduled change that reboots or maintains the machine: it comes back.
    ScheduledMaintenance,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SpotInterruption => "SpotInterruption",
            Self::RebalanceRecommendation => "RebalanceRecommendation",
            Self::ScheduledRetirement => "ScheduledRetirement",
            Self::ScheduledMaintenance => "ScheduledMaintenance",
        }
    }

    /// The machine is lost at the deadline whatever anyone does.
    pub fn is_loss(self) -> bool {
        matches!(self, Self::SpotInterruption | Self::ScheduledRetirement)
    }
}

/// A notice on one machine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineNotice {
    pub kind: NoticeKind,
    /// When AWS acts (interruption, retirement, maintenance start); none for a rebalance
    /// recommendation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// The machine stopped counting toward capacity when the notice came and a replacement was
    /// launched for it (`lostMachines: Replace`, and a template whose fleet does not keep its
    /// own target).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replaced: bool,
}

/// A provisioning failure, aggregated by (code, instance type, zone).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// AWS error code (e.g. `InsufficientInstanceCapacity`) or an operator code.
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
}

/// Cloud resources that belong to the request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleet_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asg_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spot_fleet_request_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reservation_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template_id: Option<String>,
}

impl Resources {
    /// Holds something that launches machines of its own (a fleet, a spot fleet request, a
    /// group): removing it terminates them.
    pub fn launches_on_its_own(&self) -> bool {
        !self.fleet_ids.is_empty() || !self.spot_fleet_request_ids.is_empty() || self.asg_name.is_some()
    }

    /// Adds `other`'s ids, keeping every list sorted and free of duplicates.
    pub fn absorb(&mut self, other: Resources) {
        fn union(into: &mut Vec<String>, from: Vec<String>) {
            into.extend(from);
            into.sort();
            into.dedup();
        }
        union(&mut self.fleet_ids, other.fleet_ids);
        union(&mut self.spot_fleet_request_ids, other.spot_fleet_request_ids);
        union(&mut self.reservation_ids, other.reservation_ids);
        self.asg_name = other.asg_name.or(self.asg_name.take());
        self.launch_template_id = other.launch_template_id.or(self.launch_template_id.take());
    }
}

/// A provisioning attempt. Written to status *before* the create call so that a crash and
/// retry reuse the same client token (AWS then returns the original result instead of launching
/// again).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub number: i32,
    pub client_token: String,
    /// Capacity units this attempt asked for.
    pub units: i32,
    /// Of `units`, those asked for on-demand and as spot: a replay sends exactly the same.
    #[serde(default)]
    pub on_demand_units: i32,
    #[serde(default)]
    pub spot_units: i32,
    /// Capacity units the request should hold once this attempt is done: a `maintain` fleet's
    /// target (absolute, so a replay sets the same).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub target_units: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// The create call's outcome is known; the next attempt takes a new token. An ambiguous
    /// failure (timeout, 5xx, throttling) leaves it `false` so the retry reuses the token.
    pub completed: bool,
    /// Attempts in a row that did not provide what they asked for.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_streak: i32,
    /// No new launch before this time (backoff after a failed attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Time>,
    /// Offerings this attempt does not send, fixed so that every try of it sends the same calls:
    /// those the provider's capacity-error memory held out when the attempt opened (written
    /// before the first call, so a restart that forgets the memory does not change the replay),
    /// and those a RunInstances call of it was refused for capacity (EC2 keeps no refusal under a
    /// token, so asking again could launch with a token whose count was given to another
    /// offering).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_LEFT_OUT))]
    pub left_out: Vec<LeftOut>,
}

/// At most this many offerings left out of one attempt (a bound on the status size). The memory
/// fills at most half when the attempt opens (it is advice: an offering beyond that is tried);
/// a RunInstances try stops at a refusal it has no room to record, so that its replay never
/// sends a call after one it could not record.
pub const MAX_LEFT_OUT: usize = 64;

/// An offering (instance type, subnet, market) an attempt does not send, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LeftOut {
    /// Absent when a given launch template chooses the type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Absent for the launch template's (or the default VPC's) subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spot: bool,
    /// The capacity error that put it out, e.g. `InsufficientInstanceCapacity`.
    pub code: String,
}

impl LeftOut {
    /// Whether this names `instance_type` in `subnet` in the spot (`true`) or on-demand market.
    pub fn is(&self, instance_type: Option<&str>, subnet: Option<&str>, spot: bool) -> bool {
        self.instance_type.as_deref() == instance_type && self.subnet.as_deref() == subnet && self.spot == spot
    }

    /// A sentence for the status: what was not tried and why.
    pub fn message(&self) -> String {
        format!(
            "{} {} in {} not tried by this attempt: it failed for capacity ({})",
            if self.spot { "spot" } else { "on-demand" },
            self.instance_type.as_deref().unwrap_or("the launch template's type"),
            self.subnet.as_deref().unwrap_or("the default subnet"),
            self.code
        )
    }
}

impl MachineRequestStatus {
    /// An attempt whose create call may have made something the status does not record (its
    /// answer was lost to a crash, a timeout or a 5xx).
    pub fn outcome_unknown(&self) -> bool {
        self.attempt.as_ref().is_some_and(|a| !a.completed)
    }
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// An error that needs a change to the request or its template before launching again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Blocked {
    pub generation: i64,
    pub template_generation: i64,
    pub code: String,
    pub message: String,
    /// Errors that may clear without a change (missing permissions being granted) are tried
    /// again after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Time>,
}

/// What the operator observed and did for a request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub requested_capacity: i32,
    /// Capacity units of running machines (the scale subresource's replicas).
    #[serde(default)]
    pub fulfilled_capacity: i32,
    /// Capacity units of machines launched but not yet running.
    #[serde(default)]
    pub pending_capacity: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The provider that launched the machines; deletion releases through it even if the
    /// template is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Attempt>,
    /// When the current shortfall began; the fulfilment timeout counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_since: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocked>,
    /// Sorted by instance id.
    #[serde(default)]
    pub machines: Vec<Machine>,
    /// Bounded to the most recent distinct failures; sorted by code, instance type, zone.
    #[serde(default)]
    pub failures: Vec<Failure>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// What etcd stores at most per object by default (`--max-request-bytes`).
    const ETCD_LIMIT: usize = 1536 * 1024;

    fn worst_machine(k: usize, state: &str, returning: bool) -> Machine {
        Machine {
            instance_id: format!("i-{k:017x}"),
            state: state.into(),
            result: Some(MachineResult::Executing),
            instance_type: Some("u7in-32tb.224xlarge".into()),
            capacity_type: Some("on-demand".into()),
            weight: i32::MAX,
            zone: Some("ap-northeast-1-wl1-nrt-wlz-1a".into()),
            subnet_id: Some("subnet-0123456789abcdef0".into()),
            private_ip: Some("100.100.100.100".into()),
            // Resource-based names in the longest region, with room to spare: 64 characters.
            private_dns_name: Some(format!("{:.<64}", "i-0123456789abcdef0.ap-southeast-2.compute.internal")),
            public_ip: Some("100.100.100.100".into()),
            launch_time: Some(Time(jiff::Timestamp::from_second(1_800_000_000).unwrap())),
            message: Some("m".repeat(MAX_MACHINE_MESSAGE)),
            notice: None,
            returning,
        }
    }

    /// A machine under the longest notice: it carries no message then.
    fn worst_noticed(k: usize, state: &str) -> Machine {
        let notice = MachineNotice {
            kind: NoticeKind::RebalanceRecommendation,
            deadline: Some(Time(jiff::Timestamp::from_second(1_800_000_000).unwrap())),
            replaced: true,
        };
        Machine { message: None, notice: Some(notice), ..worst_machine(k, state, false) }
    }

    #[test]
    fn the_largest_request_the_crd_admits_fits_in_what_etcd_stores_with_every_machine_at_its_longest() {
        // `capacity` live machines, as many again leaving, the settled ones the status keeps.
        let machines: Vec<Machine> = (0..MAX_CAPACITY as usize)
            .map(|k| worst_machine(k, "running", false))
            .chain((0..MAX_CAPACITY as usize).map(|k| worst_machine(10_000 + k, "shutting-down", true)))
            .chain((0..MAX_SETTLED_MACHINES).map(|k| worst_machine(20_000 + k, "terminated", true)))
            .collect();
        assert_fits(machines);
        // Leaving ahead of a notice instead of returned (`MAX_CAPACITY` leaving at most), and
        // every live machine under a notice too.
        let machines: Vec<Machine> = (0..MAX_CAPACITY as usize)
            .map(|k| worst_noticed(k, "running"))
            .chain((0..MAX_CAPACITY as usize).map(|k| worst_noticed(10_000 + k, "running")))
            .chain((0..MAX_SETTLED_MACHINES).map(|k| worst_machine(20_000 + k, "terminated", true)))
            .collect();
        assert_fits(machines);
    }

    fn assert_fits(machines: Vec<Machine>) {
        let failures = (0..MAX_FAILURES)
            .map(|k| Failure {
                code: format!("InsufficientInstanceCapacity{k}"),
                message: "f".repeat(MAX_FAILURE_MESSAGE),
                instance_type: Some("u7in-32tb.224xlarge".into()),
                zone: Some("ap-northeast-1-wl1-nrt-wlz-1a".into()),
                count: i32::MAX,
                last_seen: Some(Time(jiff::Timestamp::from_second(1_800_000_000).unwrap())),
            })
            .collect();
        let now = Time(jiff::Timestamp::from_second(1_800_000_000).unwrap());
        let mut conditions = vec![];
        for t in [conditions::READY, conditions::PROGRESSING, conditions::DEGRADED, conditions::STALLED] {
            let cond = conditions::Cond::new(t, false, "R".repeat(64), "c".repeat(conditions::MAX_MESSAGE * 2));
            conditions::upsert(&mut conditions, cond, Some(i64::MAX), &now);
        }
        let mr = MachineRequest {
            metadata: ObjectMeta { name: Some("n".repeat(253)), namespace: Some("s".repeat(63)), ..Default::default() },
            spec: MachineRequestSpec {
                template_ref: TemplateRef { name: "t".repeat(253) },
                capacity: MAX_CAPACITY,
                return_machines: (0..MAX_RETURN_MACHINES).map(|k| format!("i-{k:017x}")).collect(),
                fulfilment_timeout: "1h30m".into(),
                deletion_policy: DeletionPolicy::Delete,
                lost_machines: LostMachines::Report,
            },
            status: Some(MachineRequestStatus {
                machines,
                failures,
                conditions,
                resources: Resources {
                    fleet_ids: (0..20).map(|k| format!("fleet-{k:08x}-0000-0000-0000-000000000000")).collect(),
                    ..Default::default()
                },
                attempt: Some(Attempt {
                    client_token: "orb-99999-0123456789abcdef0123456789abcdef".into(),
                    left_out: (0..MAX_LEFT_OUT)
                        .map(|k| LeftOut {
                            instance_type: Some(format!("u7in-32tb.{k:03}xlarge")),
                            subnet: Some(format!("subnet-{k:017x}")),
                            spot: true,
                            code: "InsufficientInstanceCapacity".into(),
                        })
                        .collect(),
                    started_at: Some(Time(jiff::Timestamp::now())),
                    retry_after: Some(Time(jiff::Timestamp::now())),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let size = serde_json::to_vec(&mr).unwrap().len();
        eprintln!("largest admitted request at its worst: {size} bytes of {ETCD_LIMIT}");
        // The rest (managedFields, labels and annotations others add) gets at least 20%.
        assert!(size < ETCD_LIMIT * 4 / 5, "{size} bytes");
    }
}
