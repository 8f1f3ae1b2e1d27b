//! `MachineTemplate`: how machines are launched. Pure data and the admission rules (CEL) that the
//! API server enforces; no I/O. Checks that need the cloud (does the subnet exist?) live in the
//! provider's `validate`.

// Several `printcolumn(type_ = ...)` arguments are alike by design; clippy mistakes them for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::shape::patterns;

/// The AWS API a template provisions through.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum Api {
    #[serde(rename = "EC2Fleet")]
    Ec2Fleet,
    #[serde(rename = "ASG")]
    Asg,
    SpotFleet,
    #[default]
    RunInstances,
}

impl Api {
    /// The name users write in `spec.api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Ec2Fleet => "EC2Fleet",
            Api::Asg => "ASG",
            Api::SpotFleet => "SpotFleet",
            Api::RunInstances => "RunInstances",
        }
    }
}

/// How machines are paid for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum PriceType {
    #[default]
    OnDemand,
    Spot,
    /// An on-demand part (`onDemandBase` plus `onDemandPercent` of the rest) and a spot part.
    Heterogeneous,
}

/// Fleet request type (EC2Fleet and SpotFleet only).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FleetType {
    Instant,
    Request,
    Maintain,
}

/// One instance type the template may launch, with its weight in capacity units.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTypeSpec {
    /// EC2 instance type, e.g. `m5.large`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 64), pattern(patterns::INSTANCE_TYPE))]
    pub type_: String,
    /// Capacity units one machine of this type provides (default 1).
    #[serde(default = "default_weight")]
    #[x_kube(validation = Rule::new("self >= 1").message("weight must be at least 1"))]
    pub weight: i32,
    /// Lower is preferred when the allocation strategy is `prioritized`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub priority: Option<i32>,
}

fn default_weight() -> i32 {
    1
}

/// Root EBS volume settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RootVolume {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub size_gi_b: Option<i32>,
    /// EBS volume type: `gp3`, `gp2`, `io1`, `io2`, `st1`, `sc1` or `standard`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), pattern(patterns::VOLUME_TYPE))]
    pub type_: Option<String>,
    /// Provisioned IOPS (gp3, io1, io2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 256000))]
    pub iops: Option<i32>,
    /// Throughput in MiB/s (gp3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 125, max = 2000))]
    pub throughput: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub kms_key_id: Option<String>,
}

/// An existing launch template to use; the template's own fields become overrides.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.name)").message("launchTemplate needs exactly one of id or name"))]
pub struct LaunchTemplateRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), pattern(patterns::LAUNCH_TEMPLATE_ID))]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), pattern(patterns::LAUNCH_TEMPLATE_NAME))]
    pub name: Option<String>,
    /// `$Latest`, `$Default` or a version number (default `$Default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), pattern(patterns::LAUNCH_TEMPLATE_VERSION))]
    pub version: Option<String>,
}

/// An inclusive range of whole numbers; an end left out is open.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message("min must not be greater than max"))]
pub struct IntRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max: Option<i64>,
}

impl IntRange {
    pub fn holds(&self, value: i64) -> bool {
        within(self.min, self.max, value)
    }
}

/// Whether `value` lies between the ends that are given. (The two range types stay apart:
/// the schema derive takes no generic type.)
fn within<T: PartialOrd>(min: Option<T>, max: Option<T>, value: T) -> bool {
    min.is_none_or(|min| value >= min) && max.is_none_or(|max| value <= max)
}

/// An inclusive range of decimal numbers; an end left out is open.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message("min must not be greater than max"))]
pub struct FloatRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max: Option<f64>,
}

impl FloatRange {
    pub fn holds(&self, value: f64) -> bool {
        within(self.min, self.max, value)
    }
}

impl Default for InstanceRequirements {
    /// Any size; EC2's defaults for the rest.
    fn default() -> Self {
        Self {
            v_cpu_count: IntRange::default(),
            memory_mib: IntRange::default(),
            memory_gib_per_v_cpu: None,
            architectures: vec![],
            cpu_manufacturers: vec![],
            instance_generations: vec![],
            burstable_performance: excluded(),
            bare_metal: excluded(),
            local_storage: included(),
            accelerator_count: None,
            allowed_instance_types: vec![],
            excluded_instance_types: vec![],
            weight_by: WeightBy::None,
        }
    }
}

/// A processor architecture.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Architecture {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "arm64")]
    Arm64,
}

/// A CPU maker, as EC2's `InstanceRequirements` names it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CpuManufacturer {
    Intel,
    Amd,
    AmazonWebServices,
    Apple,
}

/// An instance generation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Generation {
    Current,
    Previous,
}

/// Whether types with a feature are allowed, left out or the only ones.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Inclusion {
    Included,
    Excluded,
    Required,
}

impl Inclusion {
    /// Whether a type that has the feature (`has`) or not is admitted.
    pub fn admits(self, has: bool) -> bool {
        match self {
            Inclusion::Included => true,
            Inclusion::Excluded => !has,
            Inclusion::Required => has,
        }
    }
}

/// What one machine of a resolved type counts for in capacity units.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum WeightBy {
    /// Every machine counts 1.
    #[default]
    None,
    /// A machine counts its vCPUs.
    Vcpu,
    /// A machine counts its memory in whole GiB.
    Memory,
}

fn excluded() -> Inclusion {
    Inclusion::Excluded
}

fn included() -> Inclusion {
    Inclusion::Included
}

/// Machines described by what they have, as EC2's `InstanceRequirements` describes them: the
/// operator resolves them into instance types when it validates the template (see
/// `status.instanceTypes`), the same way for every API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.allowedInstanceTypes) || !has(self.excludedInstanceTypes) || size(self.allowedInstanceTypes) == 0 || size(self.excludedInstanceTypes) == 0").message("instanceRequirements: give allowedInstanceTypes or excludedInstanceTypes, not both"))]
pub struct InstanceRequirements {
    /// vCPUs per machine.
    pub v_cpu_count: IntRange,
    /// Memory per machine, in MiB.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: IntRange,
    /// Memory per vCPU, in GiB.
    #[serde(default, rename = "memoryGiBPerVCpu", skip_serializing_if = "Option::is_none")]
    pub memory_gib_per_v_cpu: Option<FloatRange>,
    /// Any of these architectures (default: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub architectures: Vec<Architecture>,
    /// Any of these CPU makers (default: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub cpu_manufacturers: Vec<CpuManufacturer>,
    /// Current or previous generation (default: both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub instance_generations: Vec<Generation>,
    /// Burstable types (T family; default excluded, as in EC2).
    #[serde(default = "excluded")]
    pub burstable_performance: Inclusion,
    /// Bare metal types (default excluded, as in EC2).
    #[serde(default = "excluded")]
    pub bare_metal: Inclusion,
    /// Types with instance store volumes (default included, as in EC2).
    #[serde(default = "included")]
    pub local_storage: Inclusion,
    /// GPUs, FPGAs and inference accelerators per machine (default: any, as in EC2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_count: Option<IntRange>,
    /// Only types matching one of these (`*` is a wildcard: `m5.*`, `c6*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 400), inner(length(min = 1, max = 30), pattern(patterns::INSTANCE_TYPE_WILDCARD)))]
    pub allowed_instance_types: Vec<String>,
    /// No type matching one of these (`*` is a wildcard).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 400), inner(length(min = 1, max = 30), pattern(patterns::INSTANCE_TYPE_WILDCARD)))]
    pub excluded_instance_types: Vec<String>,
    /// What a machine counts for in capacity units: `none` (1), `vcpu` or `memory` (whole GiB).
    #[serde(default)]
    pub weight_by: WeightBy,
}

/// How to launch machines: image, instance types and weights, network, pricing and the AWS API.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "orb.dev",
    version = "v1alpha1",
    kind = "MachineTemplate",
    namespaced,
    status = "MachineTemplateStatus",
    shortname = "mt",
    category = "orb",
    doc = "How to launch machines: image, instance types and weights, network, pricing, AWS API.",
    printcolumn(name = "API", type_ = "string", json_path = ".spec.api"),
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "In Use", type_ = "integer", json_path = ".status.machinesInUse"),
    printcolumn(name = "Types", type_ = "string", json_path = ".status.types"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = super::name_fits_event_names()
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.launchTemplate) || size(self.instanceTypes) > 0 || has(self.instanceRequirements)").message("instanceTypes must list at least one instance type (or instanceRequirements describe them) unless launchTemplate is given"),
    validation = Rule::new("!has(self.instanceRequirements) || size(self.instanceTypes) == 0").message("give instanceTypes or instanceRequirements, not both"),
    validation = Rule::new("has(self.launchTemplate) || has(self.imageId)").message("imageId is required unless launchTemplate is given"),
    validation = Rule::new("!has(self.fleetType) || self.api == 'EC2Fleet' || self.api == 'SpotFleet'").message("fleetType is only valid when api is EC2Fleet or SpotFleet"),
    validation = Rule::new("!has(self.spotFleetRole) || self.api == 'SpotFleet'").message("spotFleetRole is only valid when api is SpotFleet"),
    validation = Rule::new("!(self.api == 'SpotFleet' && has(self.fleetType) && self.fleetType == 'instant')").message("fleetType instant is not available with SpotFleet; use request or maintain"),
)]
pub struct MachineTemplateSpec {
    /// Name of a provider in the operator's configuration.
    #[serde(default = "default_provider")]
    #[schemars(length(min = 1, max = 63))]
    pub provider: String,
    /// The AWS API to provision through.
    #[serde(default)]
    pub api: Api,
    /// AMI id (`ami-...`) or `resolve:ssm:<parameter>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = super::shape::MAX_IMAGE_ID_LEN), pattern(patterns::IMAGE))]
    pub image_id: Option<String>,
    /// Instance types with their weights in capacity units.
    #[serde(default)]
    #[schemars(length(max = 40))]
    pub instance_types: Vec<InstanceTypeSpec>,
    /// Machines described by vCPUs, memory and other attributes instead of `instanceTypes`:
    /// resolved into instance types (listed in `status.instanceTypes`) when validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_requirements: Option<InstanceRequirements>,
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(max = 64), pattern(patterns::SUBNET)))]
    pub subnet_ids: Vec<String>,
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(max = 64), pattern(patterns::SECURITY_GROUP)))]
    pub security_group_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub key_name: Option<String>,
    /// Plain text, at most 16 KiB (EC2's limit before encoding); the operator base64-encodes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub user_data: Option<String>,
    /// Instance profile name or ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(patterns::INSTANCE_PROFILE))]
    pub instance_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume: Option<RootVolume>,
    #[serde(default)]
    pub price_type: PriceType,
    /// Percentage of capacity above `onDemandBase` that is on-demand (heterogeneous only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("onDemandPercent must be between 0 and 100"))]
    pub on_demand_percent: Option<i32>,
    /// Capacity units that are always on-demand (heterogeneous only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("onDemandBase must not be negative"))]
    pub on_demand_base: Option<i32>,
    /// Spot allocation strategy (fleets and ASG): `lowestPrice`, `diversified`,
    /// `capacityOptimized`, `capacityOptimizedPrioritized` or `priceCapacityOptimized`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), pattern(patterns::SPOT_ALLOCATION))]
    pub allocation_strategy: Option<String>,
    /// On-demand allocation strategy (fleets and ASG): `lowestPrice` or `prioritized`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), pattern(patterns::ON_DEMAND_ALLOCATION))]
    pub on_demand_allocation_strategy: Option<String>,
    /// Maximum hourly spot price in USD, as a decimal string (e.g. `"0.05"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), pattern(patterns::PRICE))]
    pub max_spot_price: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_type: Option<FleetType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub spot_fleet_role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<LaunchTemplateRef>,
    /// Tags for every resource launched; keys under `orb.dev/` are reserved.
    #[serde(default)]
    #[schemars(schema_with = "tags_schema")]
    pub tags: BTreeMap<String, String>,
    /// Cap on machines across all requests using this template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_machines: Option<i32>,
    /// Replace a spot machine as soon as EC2 recommends rebalancing it (early, and often
    /// withdrawn), not only on its interruption warning. Needs the provider's interruption queue.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace_on_rebalance: bool,
}

/// Tags a template may carry: EC2 allows 50 per resource and the operator adds its own
/// (`OPERATOR_TAGS`), keys are 1-128 characters and values at most 256, and keys under
/// `orb.dev/` (the operator's) or `aws:` (AWS's) are refused at admission.
fn tags_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "Tags for every resource launched (at most 45: EC2 allows 50 and the operator adds 5); keys under `orb.dev/` and `aws:` are reserved.",
        "additionalProperties": {"type": "string", "maxLength": 256},
        "maxProperties": MAX_USER_TAGS,
        "default": {},
        "x-kubernetes-validations": [
            {
                "rule": "self.all(k, !k.startsWith('orb.dev/'))",
                "message": "tags: keys under orb.dev/ are reserved for the operator"
            },
            {
                "rule": "self.all(k, !k.matches('^[aA][wW][sS]:'))",
                "message": "tags: keys starting with aws: are reserved by AWS"
            },
            {
                "rule": "self.all(k, size(k) >= 1 && size(k) <= 128)",
                "message": "tags: keys must be 1 to 128 characters long"
            }
        ]
    })
}

/// Tags the operator puts on every resource (`orb.dev/cluster`, `orb.dev/request-uid`,
/// `orb.dev/request`, `orb.dev/template`, `Name`).
pub const OPERATOR_TAGS: usize = 5;
/// EC2's limit of tags per resource.
pub const EC2_MAX_TAGS: usize = 50;
/// Tags a template may add on top of the operator's.
pub const MAX_USER_TAGS: usize = EC2_MAX_TAGS - OPERATOR_TAGS;

fn default_provider() -> String {
    "default".to_string()
}

/// What the operator observed about a template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineTemplateStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the template is valid and its provider healthy; the reason and message name the
    /// exact problem when it is not.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Machines of all requests using this template, counted as `maxMachines` counts them: live
    /// machines, and what their fleets still launch.
    #[serde(default)]
    pub machines_in_use: i32,
    /// What validation learnt about the instance types, in the template's order (HostFactory's
    /// `getAvailableTemplates` answers from it without calling the cloud).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_types: Vec<InstanceTypeFacts>,
    /// The instance types in one line for `kubectl get` (`c5.xlarge, m5.xlarge, r5.xlarge +37`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<String>,
}

/// `instance_types` in one line: the first three names and how many more.
pub fn types_summary(instance_types: &[InstanceTypeFacts]) -> Option<String> {
    const SHOWN: usize = 3;
    let first: Vec<&str> = instance_types.iter().take(SHOWN).map(|t| t.type_.as_str()).collect();
    let more = instance_types.len().saturating_sub(SHOWN);
    match (first.is_empty(), more) {
        (true, _) => None,
        (false, 0) => Some(first.join(", ")),
        (false, more) => Some(format!("{} +{more}", first.join(", "))),
    }
}

/// One instance type as the cloud describes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTypeFacts {
    #[serde(rename = "type")]
    pub type_: String,
    pub vcpus: i32,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: i64,
    /// `x86_64`, `arm64`, ...
    pub architecture: String,
    /// Capacity units a machine of this type counts for, when `instanceRequirements` chose it
    /// (`weightBy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

impl MachineTemplate {
    /// The spec machines are launched from: with `instanceRequirements`, the instance types
    /// validation resolved them to (`status.instanceTypes`), with their weights, in place of
    /// `instanceTypes` — so every handler, the planner and `maxMachines` see concrete types.
    /// Launching waits until the template's current generation is Ready, so they are there.
    pub fn launch_spec(&self) -> MachineTemplateSpec {
        let mut spec = self.spec.clone();
        if spec.instance_requirements.is_some() {
            let resolved = self.status.iter().flat_map(|s| s.instance_types.iter());
            spec.instance_types = resolved
                .map(|t| InstanceTypeSpec {
                    type_: t.type_.clone(),
                    weight: t.weight.unwrap_or(1).max(1),
                    priority: None,
                })
                .collect();
        }
        spec
    }

    /// This template with `launch_spec` as its spec.
    pub fn for_launch(&self) -> MachineTemplate {
        MachineTemplate { metadata: self.metadata.clone(), spec: self.launch_spec(), status: self.status.clone() }
    }
}

impl MachineTemplateSpec {
    /// The weight of an instance type in capacity units (1 for types the template does not list,
    /// e.g. those a launch template chose).
    pub fn weight_of(&self, instance_type: &str) -> u32 {
        self.instance_types.iter().find(|t| t.type_ == instance_type).map_or(1, |t| t.weight.max(1).unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_types_summary_names_three_and_counts_the_rest() {
        let facts = |n: usize| -> Vec<InstanceTypeFacts> {
            (0..n).map(|i| InstanceTypeFacts { type_: format!("m{i}.large"), ..Default::default() }).collect()
        };
        assert_eq!(types_summary(&facts(0)), None);
        assert_eq!(types_summary(&facts(2)).as_deref(), Some("m0.large, m1.large"));
        assert_eq!(types_summary(&facts(40)).as_deref(), Some("m0.large, m1.large, m2.large +37"));
    }
}
