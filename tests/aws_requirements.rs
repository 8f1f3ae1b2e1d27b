//! Attribute-based instance selection against moto's instance type catalogue: a template's
//! `instanceRequirements` resolved by validation into concrete types (each checked here against
//! `DescribeInstanceTypes`), launched on each of the four APIs, weighted by vCPUs, and refused
//! naming the field when nothing matches. Each test has its own region.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use orb_operator::api::*;
use orb_operator::provider::{Provider, ProviderError};
use support::aws::{Aws, aws};
use support::driver::{MemoryStatus, converge, ready, request};

/// 4-8 vCPUs, 16-32 GiB, x86_64, current generation, no burstable (EC2's default).
fn general_purpose() -> InstanceRequirements {
    InstanceRequirements {
        v_cpu_count: IntRange { min: Some(4), max: Some(8) },
        memory_mib: IntRange { min: Some(16 * 1024), max: Some(32 * 1024) },
        architectures: vec![Architecture::X86_64],
        instance_generations: vec![Generation::Current],
        ..Default::default()
    }
}

/// The template as the controller launches from it: validated (its requirements resolved into
/// `status.instanceTypes`), Ready, and with the resolved types in its launch spec.
async fn resolved(aws: &Aws, api: Api, requirements: InstanceRequirements) -> MachineTemplate {
    let mut spec = aws.template(&[]);
    spec.api = api;
    spec.instance_requirements = Some(requirements);
    if api == Api::SpotFleet {
        spec.fleet_type = Some(FleetType::Request);
    }
    let facts = aws.provider.validate(&spec).await.expect("requirements that match");
    let mut template = ready(MachineTemplate::new("workers", spec));
    template.status.as_mut().unwrap().instance_types = facts;
    template.for_launch()
}

#[tokio::test]
async fn requirements_resolve_to_types_that_satisfy_them_and_launch_on_every_api() {
    let Some(aws) = aws("requirements_resolve_to_types_that_satisfy_them_and_launch_on_every_api").await else {
        return;
    };
    aws.spot_fleet_role().await;
    let template = resolved(&aws, Api::RunInstances, general_purpose()).await;
    let facts = template.status.as_ref().unwrap().instance_types.clone();
    assert!(!facts.is_empty() && facts.len() <= 40, "{} types", facts.len());
    let names: Vec<String> = facts.iter().map(|f| f.type_.clone()).collect();
    // Checked against EC2's own description of each type, not the operator's reading of it.
    let described = aws
        .ec2
        .describe_instance_types()
        .set_instance_types(Some(names.iter().map(|n| n.as_str().into()).collect()))
        .send()
        .await
        .unwrap();
    assert_eq!(described.instance_types().len(), names.len());
    for info in described.instance_types() {
        let name = info.instance_type().unwrap().as_str();
        let vcpus = info.v_cpu_info().unwrap().default_v_cpus().unwrap();
        let mib = info.memory_info().unwrap().size_in_mib().unwrap();
        let archs = info.processor_info().unwrap().supported_architectures();
        assert!((4..=8).contains(&vcpus), "{name}: {vcpus} vCPUs");
        assert!((16 * 1024..=32 * 1024).contains(&mib), "{name}: {mib} MiB");
        assert!(archs.iter().any(|a| a.as_str() == "x86_64"), "{name}: {archs:?}");
        assert_eq!(info.current_generation(), Some(true), "{name}");
        assert_eq!(info.burstable_performance_supported(), Some(false), "{name}");
        assert_eq!(info.bare_metal(), Some(false), "{name}");
    }
    let families: std::collections::BTreeSet<&str> = names.iter().map(|n| n.split('.').next().unwrap()).collect();
    assert!(families.len() > 1, "spread across families: {names:?}");
    let calls = aws.proxy.calls("DescribeInstanceTypes").len();

    for api in [Api::RunInstances, Api::Ec2Fleet, Api::SpotFleet, Api::Asg] {
        let template = resolved(&aws, api, general_purpose()).await;
        assert_eq!(template.spec.instance_types.len(), names.len(), "{api:?}: the same resolution");
        let (mut mr, sink) = (request(&format!("on-{}", api.as_str().to_lowercase()), 2), MemoryStatus::default());
        let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 8).await;
        assert!(error.is_none(), "{api:?}: {error:?}");
        assert_eq!(status.fulfilled_capacity, 2, "{api:?}: {:?}", status.conditions);
        // Read back from EC2 by id (a spot fleet's instances carry no request uid).
        let ids: Vec<String> =
            status.machines.iter().filter(|m| m.counts_as_live()).map(|m| m.instance_id.clone()).collect();
        assert_eq!(ids.len(), 2, "{api:?}");
        let described = aws.ec2.describe_instances().set_instance_ids(Some(ids)).send().await.unwrap();
        if api == Api::Asg {
            // moto launches a mixed instances group's machines with no instance type: the
            // group's overrides are what it launches from.
            let group = status.resources.asg_name.clone().unwrap();
            let client = aws_sdk_autoscaling::Client::new(&support::moto::sdk(aws.moto, aws.region).await);
            let groups = client.describe_auto_scaling_groups().auto_scaling_group_names(group).send().await;
            let groups = groups.unwrap();
            let policy = groups.auto_scaling_groups()[0].mixed_instances_policy().unwrap();
            let overrides = policy.launch_template().unwrap().overrides();
            let types: Vec<String> = overrides.iter().filter_map(|o| o.instance_type().map(str::to_string)).collect();
            assert_eq!(types, names, "the group launches from the resolved types");
            continue;
        }
        for instance in described.reservations().iter().flat_map(|r| r.instances()) {
            let launched = instance.instance_type().unwrap().as_str().to_string();
            assert!(names.contains(&launched), "{api:?}: {launched} is not a resolved type");
        }
    }
    // The catalogue is read once per provider (paged), not per template or request.
    assert_eq!(aws.proxy.calls("DescribeInstanceTypes").len(), calls, "the catalogue was read again");
}

#[tokio::test]
async fn capacity_weighted_by_vcpus_is_fulfilled_in_vcpus() {
    let Some(aws) = aws("capacity_weighted_by_vcpus_is_fulfilled_in_vcpus").await else { return };
    for api in [Api::RunInstances, Api::Ec2Fleet] {
        let requirements = InstanceRequirements { weight_by: WeightBy::Vcpu, ..general_purpose() };
        let template = resolved(&aws, api, requirements).await;
        fulfilled_in_vcpus(&aws, &template, &format!("vcpus-{}", api.as_str().to_lowercase())).await;
    }
}

/// A request of 64 units from `template` (weighted by vCPUs) gets machines whose vCPUs add up
/// to 64, or at most one machine more.
async fn fulfilled_in_vcpus(aws: &Aws, template: &MachineTemplate, name: &str) {
    let (mut mr, sink) = (request(name, 64), MemoryStatus::default());
    let (status, error) = converge(&mut mr, template, &aws.provider, &sink, 8).await;
    assert!(error.is_none(), "{name}: {error:?}");
    let live: Vec<&Machine> = status.machines.iter().filter(|m| m.counts_as_live()).collect();
    let vcpus: Vec<i32> = live
        .iter()
        .map(|m| {
            let facts = template
                .status
                .as_ref()
                .unwrap()
                .instance_types
                .iter()
                .find(|f| Some(&f.type_) == m.instance_type.as_ref());
            facts.unwrap().vcpus
        })
        .collect();
    let total: i32 = vcpus.iter().sum();
    let smallest = vcpus.iter().min().copied().unwrap_or_default();
    assert!(total >= 64 && total - smallest < 64, "{name}: {} machines with {total} vCPUs: {vcpus:?}", live.len());
    assert!(status.fulfilled_capacity >= 64, "{name}: fulfilled in vCPUs: {}", status.fulfilled_capacity);
}

#[tokio::test]
async fn requirements_that_match_nothing_or_conflict_are_refused_naming_the_field() {
    let Some(aws) = aws("requirements_that_match_nothing_or_conflict_are_refused_naming_the_field").await else {
        return;
    };
    let cases = [
        (
            InstanceRequirements { v_cpu_count: IntRange { min: Some(1000), max: None }, ..general_purpose() },
            "spec.instanceRequirements",
            "NoMatchingInstanceTypes",
        ),
        (
            InstanceRequirements { v_cpu_count: IntRange { min: Some(8), max: Some(4) }, ..general_purpose() },
            "spec.instanceRequirements.vCpuCount",
            "InvalidParameterValue",
        ),
        (
            InstanceRequirements {
                allowed_instance_types: vec!["m5.*".into()],
                excluded_instance_types: vec!["m5.large".into()],
                ..general_purpose()
            },
            "spec.instanceRequirements",
            "InvalidParameterValue",
        ),
    ];
    for (requirements, field_wanted, code_wanted) in cases {
        let mut spec = aws.template(&[]);
        spec.instance_requirements = Some(requirements);
        match aws.provider.validate(&spec).await {
            Err(ProviderError::Invalid { field, code, message }) => {
                assert_eq!((field.as_str(), code.as_str()), (field_wanted, code_wanted), "{message}");
            }
            other => panic!("expected Invalid naming {field_wanted}, got {other:?}"),
        }
    }
    let mut both = aws.template(&[("m5.large", 1)]);
    both.instance_requirements = Some(general_purpose());
    let refused = aws.provider.validate(&both).await.unwrap_err();
    assert!(refused.to_string().contains("not both"), "{refused}");
    assert!(aws.proxy.calls("RunInstances").is_empty(), "nothing launched");
}
