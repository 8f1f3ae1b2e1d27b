//! The shape of a template's fields as AWS accepts them: the patterns the CRD schema enforces at
//! admission, and `check`, which applies the same patterns (and what a schema cannot say, such as
//! user data in bytes) to a spec. Providers run `check` before any cloud call, so a template that
//! reached the cluster some other way (an older CRD, a schema-less apply) is still held with
//! `Ready=False` naming the field instead of being sent to AWS.

use super::{Api, FleetType, InstanceRequirements, MAX_USER_TAGS, MachineTemplateSpec, RESERVED_PREFIX};
use regex::Regex;
use std::sync::LazyLock;

/// Regular expressions (RE2 syntax, as the API server evaluates them) for the schema's `pattern`s.
pub mod patterns {
    /// The field's `maxLength` bounds the parameter name: the API server compiles patterns with
    /// Go's RE2, which refuses a repeat count above 1000 (the `regex` crate does not).
    pub const IMAGE: &str = r"^(ami-[0-9a-f]{8}([0-9a-f]{9})?|resolve:ssm:[a-zA-Z0-9_.:\-/]+)$";
    pub const INSTANCE_TYPE: &str = r"^[a-z0-9][a-z0-9\-]*\.[a-z0-9\-]+$";
    /// An instance type with `*` wildcards, as `instanceRequirements` allows or excludes them.
    pub const INSTANCE_TYPE_WILDCARD: &str = r"^[a-z0-9.*\-]+$";
    pub const SUBNET: &str = r"^subnet-[0-9a-f]{8}([0-9a-f]{9})?$";
    pub const SECURITY_GROUP: &str = r"^sg-[0-9a-f]{8}([0-9a-f]{9})?$";
    pub const VOLUME_TYPE: &str = r"^(standard|gp2|gp3|io1|io2|st1|sc1)$";
    pub const LAUNCH_TEMPLATE_ID: &str = r"^lt-[0-9a-f]{17}$";
    pub const LAUNCH_TEMPLATE_NAME: &str = r"^[a-zA-Z0-9().\-/_]{3,128}$";
    pub const LAUNCH_TEMPLATE_VERSION: &str = r"^(\$Latest|\$Default|[1-9][0-9]{0,17})$";
    pub const INSTANCE_PROFILE: &str =
        r"^([a-zA-Z0-9+=,.@_\-]{1,128}|arn:aws[a-z\-]*:iam::[0-9]{12}:instance-profile/[a-zA-Z0-9+=,.@_\-/]{1,512})$";
    pub const SPOT_ALLOCATION: &str =
        r"^(lowestPrice|diversified|capacityOptimized|capacityOptimizedPrioritized|priceCapacityOptimized)$";
    pub const ON_DEMAND_ALLOCATION: &str = r"^(lowestPrice|prioritized)$";
    /// US dollars per hour, e.g. `0.05`.
    pub const PRICE: &str = r"^[0-9]{1,6}(\.[0-9]{1,8})?$";
}

/// The longest `imageId` (the schema's `maxLength`): `resolve:ssm:` and an SSM parameter name.
pub const MAX_IMAGE_ID_LEN: usize = 2048;

/// EC2's limit on user data, in bytes before base64 encoding.
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;

/// A field that AWS would refuse: its spec path and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn regex(pattern: &str) -> Regex {
    #[allow(clippy::expect_used)] // constant patterns, covered by tests
    Regex::new(pattern).expect("a valid constant pattern")
}

macro_rules! compiled {
    ($name:ident) => {{
        static RE: LazyLock<Regex> = LazyLock::new(|| regex(patterns::$name));
        &*RE
    }};
}

/// What the schema says of `instanceRequirements`, for specs that did not pass through it.
fn requirements(r: &InstanceRequirements, with_types: bool) -> Result<(), FieldError> {
    const AT: &str = "spec.instanceRequirements";
    if with_types {
        field(AT, "give instanceTypes or instanceRequirements, not both")?;
    }
    let ranges = [
        ("vCpuCount", r.v_cpu_count.min, r.v_cpu_count.max),
        ("memoryMiB", r.memory_mib.min, r.memory_mib.max),
        (
            "acceleratorCount",
            r.accelerator_count.as_ref().and_then(|a| a.min),
            r.accelerator_count.as_ref().and_then(|a| a.max),
        ),
    ];
    for (name, min, max) in ranges {
        if min.is_some_and(|m| m < 0) || max.is_some_and(|m| m < 0) {
            field(format!("{AT}.{name}"), "must not be negative")?;
        }
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            field(format!("{AT}.{name}"), format!("min {min} is greater than max {max}"))?;
        }
    }
    if let Some((Some(min), Some(max))) = r.memory_gib_per_v_cpu.as_ref().map(|range| (range.min, range.max))
        && min > max
    {
        field(format!("{AT}.memoryGiBPerVCpu"), format!("min {min} is greater than max {max}"))?;
    }
    if !r.allowed_instance_types.is_empty() && !r.excluded_instance_types.is_empty() {
        field(AT, "give allowedInstanceTypes or excludedInstanceTypes, not both")?;
    }
    for (name, list) in
        [("allowedInstanceTypes", &r.allowed_instance_types), ("excludedInstanceTypes", &r.excluded_instance_types)]
    {
        for (i, pattern) in list.iter().enumerate() {
            matches(
                compiled!(INSTANCE_TYPE_WILDCARD),
                pattern,
                format!("{AT}.{name}[{i}]"),
                "an instance type, `*` standing for any characters (m5.*, c6*)",
            )?;
        }
    }
    Ok(())
}

fn field(field: impl Into<String>, message: impl Into<String>) -> Result<(), FieldError> {
    Err(FieldError { field: field.into(), message: message.into() })
}

/// `value`, when given, lies in `range`.
fn within(value: Option<i32>, range: std::ops::RangeInclusive<i32>, path: &str) -> Result<(), FieldError> {
    match value {
        Some(v) if !range.contains(&v) => field(path, format!("{v} is outside {}-{}", range.start(), range.end())),
        _ => Ok(()),
    }
}

fn matches(re: &Regex, value: &str, path: String, what: &str) -> Result<(), FieldError> {
    if re.is_match(value) { Ok(()) } else { field(path, format!("`{value}` is not {what}")) }
}

/// The first field of `t` that AWS would refuse, checked without any cloud call.
/// EC2's limit on overrides (instance types x subnets) in one fleet request.
pub const MAX_FLEET_OVERRIDES: usize = 300;

pub fn check(t: &MachineTemplateSpec) -> Result<(), FieldError> {
    if let Some(image) = &t.image_id {
        if image.len() > MAX_IMAGE_ID_LEN {
            field("spec.imageId", format!("{} characters; at most {MAX_IMAGE_ID_LEN}", image.len()))?;
        }
        matches(compiled!(IMAGE), image, "spec.imageId".into(), "an AMI id (ami-...) or resolve:ssm:<parameter>")?;
    }
    if t.instance_types.is_empty() && t.launch_template.is_none() && t.instance_requirements.is_none() {
        field(
            "spec.instanceTypes",
            "list at least one instance type (or describe them in instanceRequirements) unless launchTemplate is given",
        )?;
    }
    if let Some(r) = &t.instance_requirements {
        requirements(r, !t.instance_types.is_empty())?;
    }
    if t.image_id.is_none() && t.launch_template.is_none() {
        field("spec.imageId", "required unless launchTemplate is given")?;
    }
    for (i, it) in t.instance_types.iter().enumerate() {
        matches(
            compiled!(INSTANCE_TYPE),
            &it.type_,
            format!("spec.instanceTypes[{i}].type"),
            "an instance type such as m5.large",
        )?;
        if it.weight < 1 {
            field(format!("spec.instanceTypes[{i}].weight"), "must be at least 1")?;
        }
    }
    for (i, subnet) in t.subnet_ids.iter().enumerate() {
        matches(compiled!(SUBNET), subnet, format!("spec.subnetIds[{i}]"), "a subnet id (subnet-...)")?;
    }
    if t.api == Api::Asg && t.subnet_ids.is_empty() {
        field("spec.subnetIds", "an Auto Scaling group needs at least one subnet (its VPCZoneIdentifier)")?;
    }
    if matches!(t.api, Api::Ec2Fleet | Api::SpotFleet) {
        // Fleets of type request and maintain tag their instances only through the launch
        // template: a given one would launch instances without the operator's tags, which it
        // could neither find nor (under the IAM policy) terminate.
        let instant = t.api == Api::Ec2Fleet && t.fleet_type.is_none_or(|f| f == FleetType::Instant);
        if t.launch_template.is_some() && !instant {
            field(
                "spec.launchTemplate",
                "request and maintain fleets tag their instances only through the launch template; leave launchTemplate out (the operator makes one from the template's fields) or use an instant EC2Fleet",
            )?;
        }
        if t.api == Api::SpotFleet && t.fleet_type == Some(FleetType::Instant) {
            field("spec.fleetType", "SpotFleet has no instant type; use request or maintain (or EC2Fleet)")?;
        }
        let overrides = t.instance_types.len().max(1) * t.subnet_ids.len().max(1);
        if overrides > MAX_FLEET_OVERRIDES {
            field(
                "spec.instanceTypes",
                format!(
                    "{} instance types x {} subnets make {overrides} fleet overrides; EC2 accepts at most {MAX_FLEET_OVERRIDES}",
                    t.instance_types.len(),
                    t.subnet_ids.len()
                ),
            )?;
        }
    }
    for (i, group) in t.security_group_ids.iter().enumerate() {
        matches(
            compiled!(SECURITY_GROUP),
            group,
            format!("spec.securityGroupIds[{i}]"),
            "a security group id (sg-...)",
        )?;
    }
    if let Some(key) = &t.key_name
        && key.is_empty()
    {
        field("spec.keyName", "must not be empty")?;
    }
    if let Some(text) = &t.user_data
        && text.len() > MAX_USER_DATA_BYTES
    {
        field("spec.userData", format!("{} bytes; EC2 accepts at most {MAX_USER_DATA_BYTES}", text.len()))?;
    }
    if let Some(profile) = &t.instance_profile {
        matches(
            compiled!(INSTANCE_PROFILE),
            profile,
            "spec.instanceProfile".into(),
            "an instance profile name or ARN",
        )?;
    }
    if let Some(root) = &t.root_volume {
        if let Some(kind) = &root.type_ {
            matches(compiled!(VOLUME_TYPE), kind, "spec.rootVolume.type".into(), "an EBS volume type")?;
        }
        within(root.size_gi_b, 1..=65536, "spec.rootVolume.sizeGiB")?;
        within(root.iops, 100..=256_000, "spec.rootVolume.iops")?;
        within(root.throughput, 125..=2000, "spec.rootVolume.throughput")?;
    }
    within(t.on_demand_percent, 0..=100, "spec.onDemandPercent")?;
    if t.on_demand_base.is_some_and(|b| b < 0) {
        field("spec.onDemandBase", "must not be negative")?;
    }
    if let Some(strategy) = &t.allocation_strategy {
        matches(compiled!(SPOT_ALLOCATION), strategy, "spec.allocationStrategy".into(), "a spot allocation strategy")?;
    }
    if let Some(strategy) = &t.on_demand_allocation_strategy {
        matches(
            compiled!(ON_DEMAND_ALLOCATION),
            strategy,
            "spec.onDemandAllocationStrategy".into(),
            "an on-demand allocation strategy",
        )?;
    }
    if let Some(price) = &t.max_spot_price {
        matches(compiled!(PRICE), price, "spec.maxSpotPrice".into(), "a price in US dollars such as 0.05")?;
    }
    if let Some(lt) = &t.launch_template {
        if lt.id.is_some() == lt.name.is_some() {
            field("spec.launchTemplate", "give exactly one of id or name")?;
        }
        if let Some(id) = &lt.id {
            matches(compiled!(LAUNCH_TEMPLATE_ID), id, "spec.launchTemplate.id".into(), "a launch template id")?;
        }
        if let Some(name) = &lt.name {
            matches(
                compiled!(LAUNCH_TEMPLATE_NAME),
                name,
                "spec.launchTemplate.name".into(),
                "a launch template name",
            )?;
        }
        if let Some(version) = &lt.version {
            matches(
                compiled!(LAUNCH_TEMPLATE_VERSION),
                version,
                "spec.launchTemplate.version".into(),
                "$Latest, $Default or a version number",
            )?;
        }
    }
    if t.max_machines.is_some_and(|m| m < 0) {
        field("spec.maxMachines", "must not be negative")?;
    }
    check_tags(t)
}

fn check_tags(t: &MachineTemplateSpec) -> Result<(), FieldError> {
    if t.tags.len() > MAX_USER_TAGS {
        field(
            "spec.tags",
            format!("{} tags; at most {MAX_USER_TAGS} (EC2 allows 50 and the operator adds its own)", t.tags.len()),
        )?;
    }
    for (key, value) in &t.tags {
        let path = format!("spec.tags[{key}]");
        if key.is_empty() || key.chars().count() > 128 {
            field(&path, "keys must be 1 to 128 characters long")?;
        }
        if key.starts_with(RESERVED_PREFIX) {
            field(&path, "keys under orb.dev/ are reserved for the operator")?;
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            field(&path, "keys starting with aws: are reserved by AWS")?;
        }
        if value.chars().count() > 256 {
            field(&path, "values are at most 256 characters long")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::InstanceTypeSpec;

    fn valid() -> MachineTemplateSpec {
        MachineTemplateSpec {
            image_id: Some("ami-0123456789abcdef0".into()),
            instance_types: vec![InstanceTypeSpec { type_: "m5.large".into(), weight: 1, priority: None }],
            subnet_ids: vec!["subnet-0123abcd".into()],
            ..Default::default()
        }
    }

    #[test]
    fn every_pattern_compiles_and_a_valid_template_passes() {
        for p in [
            patterns::IMAGE,
            patterns::INSTANCE_TYPE,
            patterns::SUBNET,
            patterns::SECURITY_GROUP,
            patterns::VOLUME_TYPE,
            patterns::LAUNCH_TEMPLATE_ID,
            patterns::LAUNCH_TEMPLATE_NAME,
            patterns::LAUNCH_TEMPLATE_VERSION,
            patterns::INSTANCE_PROFILE,
            patterns::SPOT_ALLOCATION,
            patterns::ON_DEMAND_ALLOCATION,
            patterns::PRICE,
            patterns::INSTANCE_TYPE_WILDCARD,
        ] {
            regex(p);
        }
        assert_eq!(check(&valid()), Ok(()));
    }

    #[test]
    fn fields_aws_refuses_are_named() {
        type Mutation = Box<dyn Fn(&mut MachineTemplateSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|t| t.max_spot_price = Some("cheap".into())), "spec.maxSpotPrice"),
            (Box::new(|t| t.image_id = Some("ubuntu".into())), "spec.imageId"),
            (Box::new(|t| t.image_id = Some(format!("resolve:ssm:/{}", "a".repeat(2036)))), "spec.imageId"),
            (Box::new(|t| t.subnet_ids.push("subnet-xyz".into())), "spec.subnetIds[1]"),
            (
                Box::new(|t| drop(t.tags.insert("aws:cloudformation".into(), "x".into()))),
                "spec.tags[aws:cloudformation]",
            ),
            (Box::new(|t| drop(t.tags.insert("AWS:x".into(), "x".into()))), "spec.tags[AWS:x]"),
            (Box::new(|t| t.tags = (0..46).map(|i| (format!("k{i}"), "v".into())).collect()), "spec.tags"),
            (Box::new(|t| t.user_data = Some("x".repeat(MAX_USER_DATA_BYTES + 1))), "spec.userData"),
            (Box::new(|t| t.instance_types[0].type_ = "large".into()), "spec.instanceTypes[0].type"),
            (
                Box::new(|t| {
                    t.api = Api::SpotFleet;
                    t.launch_template =
                        Some(crate::api::LaunchTemplateRef { name: Some("mine".into()), ..Default::default() });
                }),
                "spec.launchTemplate",
            ),
            (
                Box::new(|t| {
                    t.api = Api::SpotFleet;
                    t.fleet_type = Some(FleetType::Instant);
                }),
                "spec.fleetType",
            ),
            (
                Box::new(|t| {
                    t.api = Api::Asg;
                    t.subnet_ids.clear();
                }),
                "spec.subnetIds",
            ),
            (
                Box::new(|t| {
                    t.api = Api::Ec2Fleet;
                    t.subnet_ids = (0..8).map(|i| format!("subnet-{i:08x}")).collect();
                    t.instance_types = (0..40)
                        .map(|i| crate::api::InstanceTypeSpec {
                            type_: format!("m{i}.large"),
                            weight: 1,
                            priority: None,
                        })
                        .collect();
                }),
                "spec.instanceTypes",
            ),
        ];
        for (mutate, expected) in cases {
            let mut t = valid();
            mutate(&mut t);
            assert_eq!(check(&t).map_err(|e| e.field), Err(expected.to_string()));
        }
    }

    #[test]
    fn an_instant_ec2_fleet_may_launch_from_a_given_launch_template() {
        let mut t = valid();
        t.api = Api::Ec2Fleet;
        t.launch_template = Some(crate::api::LaunchTemplateRef { name: Some("mine".into()), ..Default::default() });
        assert_eq!(check(&t).map_err(|e| e.field), Ok(()));
        t.fleet_type = Some(FleetType::Maintain);
        assert_eq!(check(&t).map_err(|e| e.field), Err("spec.launchTemplate".to_string()));
    }
}
