//! The Auto Scaling group handler: one group per request, named from the request's uid so that
//! creating it again finds it (AlreadyExists -> adopt). Its MixedInstancesPolicy launches from
//! the template's launch template (the operator's, or the given one) with one override per
//! instance type carrying its weight, the on-demand / spot distribution from `priceType`,
//! `onDemandBase` and `onDemandPercent`, the allocation strategies in this API's spelling and the
//! spot price cap; the template's subnets are its VPCZoneIdentifier; its tags (the operator's,
//! the request's uid included) propagate to every instance at launch; `DesiredCapacity` is in
//! capacity units and new instances are protected from scale-in, so only the operator chooses
//! who leaves.
//!
//! More capacity sets the desired capacity (absolute: a replay sets the same). A return first
//! sets the desired capacity to what the request keeps, then terminates exactly the chosen
//! members (TerminateInstanceInAutoScalingGroup; an instance that is no member any more is
//! terminated through EC2 — moto answers an unknown id with HTTP 500). What the group still
//! works to launch is outstanding; failed scaling activities land in `status.failures`.
//! Release force-deletes the group (its instances with it) and terminates whatever is left.

use super::fleet;
use super::fleet::Described;
use super::launch_template::LaunchTemplate;
use crate::api::{MachineTemplateSpec, PriceType};
use crate::provider::aws::calls::errors::classify;
use crate::provider::aws::calls::ops::{self, Ops};
use crate::provider::{LaunchFailure, Owner, ProviderError, ProvisionOutcome, ProvisionRequest, target_of};
use aws_sdk_autoscaling::operation::create_auto_scaling_group::builders::CreateAutoScalingGroupFluentBuilder;
use aws_sdk_autoscaling::types::{
    AutoScalingGroup, InstancesDistribution, LaunchTemplateOverrides, LaunchTemplateSpecification, LifecycleState,
    MixedInstancesPolicy, ScalingActivityStatusCode, Tag,
};

/// The group's name: the cluster and the request's uid (unique, stable, within 255 characters).
pub fn group_name(cluster_id: &str, owner: &Owner) -> String {
    format!("orb-{cluster_id}-{}", owner.uid)
}

/// The largest weight of the template (room `MaxSize` leaves above the desired capacity).
fn largest_weight(template: &MachineTemplateSpec) -> u32 {
    template.instance_types.iter().map(|t| t.weight.max(1).unsigned_abs()).max().unwrap_or(1)
}

/// `MaxSize` for a desired capacity: a weighted group may overshoot by less than one machine.
pub fn max_size(template: &MachineTemplateSpec, desired: u32) -> i32 {
    (desired + largest_weight(template)) as i32
}

/// The mixed instances policy of a template.
pub fn policy(template: &MachineTemplateSpec, lt: &LaunchTemplate) -> MixedInstancesPolicy {
    let spec = LaunchTemplateSpecification::builder()
        .set_launch_template_id(lt.id.clone())
        .set_launch_template_name(lt.name.clone())
        .version(&lt.version)
        .build();
    let overrides = template
        .instance_types
        .iter()
        .map(|t| {
            LaunchTemplateOverrides::builder()
                .instance_type(&t.type_)
                .weighted_capacity(t.weight.max(1).to_string())
                .build()
        })
        .collect();
    let (base, percent) = match template.price_type {
        PriceType::OnDemand => (0, 100),
        PriceType::Spot => (0, 0),
        PriceType::Heterogeneous => {
            (template.on_demand_base.unwrap_or(0).max(0), template.on_demand_percent.unwrap_or(0).clamp(0, 100))
        }
    };
    let distribution = InstancesDistribution::builder()
        .on_demand_base_capacity(base)
        .on_demand_percentage_above_base_capacity(percent)
        .on_demand_allocation_strategy(fleet::hyphenated(fleet::on_demand_strategy(template)))
        .spot_allocation_strategy(fleet::hyphenated(fleet::spot_strategy(template)))
        .set_spot_max_price(template.max_spot_price.clone().filter(|_| fleet::uses_spot(template)))
        .build();
    MixedInstancesPolicy::builder()
        .launch_template(
            aws_sdk_autoscaling::types::LaunchTemplate::builder()
                .launch_template_specification(spec)
                .set_overrides(Some(overrides))
                .build(),
        )
        .instances_distribution(distribution)
        .build()
}

/// Puts the group of `owner` into a CreateAutoScalingGroup call.
pub fn create_call(
    call: CreateAutoScalingGroupFluentBuilder,
    name: &str,
    template: &MachineTemplateSpec,
    lt: &LaunchTemplate,
    tags: &[aws_sdk_ec2::types::Tag],
    desired: u32,
) -> CreateAutoScalingGroupFluentBuilder {
    let tags = tags
        .iter()
        .map(|t| {
            Tag::builder()
                .resource_id(name)
                .resource_type("auto-scaling-group")
                .set_key(t.key().map(str::to_string))
                .set_value(t.value().map(str::to_string))
                .propagate_at_launch(true)
                .build()
        })
        .collect();
    call.auto_scaling_group_name(name)
        .mixed_instances_policy(policy(template, lt))
        .min_size(0)
        .max_size(max_size(template, desired))
        .desired_capacity(desired as i32)
        .desired_capacity_type("units")
        .vpc_zone_identifier(template.subnet_ids.join(","))
        .new_instances_protected_from_scale_in(true)
        .set_tags(Some(tags))
}

/// Sets the group's desired capacity (and the room above it).
async fn set_desired(ops: &Ops, name: &str, template: &MachineTemplateSpec, desired: u32) -> Result<(), ProviderError> {
    tracing::info!(group = name, units = desired, "setting the Auto Scaling group's desired capacity");
    ops.autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(name)
        .min_size(0)
        .max_size(max_size(template, desired))
        .desired_capacity(desired as i32)
        .send()
        .await
        .map(drop)
        .map_err(|e| classify("UpdateAutoScalingGroup", e))
}

/// The group, if it exists.
pub async fn describe(ops: &Ops, name: &str) -> Result<Option<AutoScalingGroup>, ProviderError> {
    let out = ops
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .map_err(|e| classify("DescribeAutoScalingGroups", e))?;
    Ok(out.auto_scaling_groups().first().cloned())
}

/// Provisions the attempt: creates the request's group, or sets the desired capacity of the
/// group it has (found by name when the status has not recorded it yet).
pub async fn provision(ops: &Ops, request: &ProvisionRequest<'_>) -> Result<ProvisionOutcome, ProviderError> {
    let template = request.template;
    let name = group_name(&ops.cluster_id, request.owner);
    let target = target_of(request);
    let units = request.mix.on_demand + request.mix.spot;
    let mut outcome = ProvisionOutcome { accepted_units: units, ..Default::default() };
    outcome.resources.asg_name = Some(name.clone());
    if request.resources.asg_name.is_some() {
        set_desired(ops, &name, template, target).await?;
        return Ok(outcome);
    }
    let lt = ops.launch_template(request.owner, template).await?;
    outcome.resources.launch_template_id = lt.id.clone().filter(|_| lt.managed);
    let tags = ops::resource_tags(request.owner, &ops.cluster_id, &template.tags);
    let created = create_call(ops.autoscaling.create_auto_scaling_group(), &name, template, &lt, &tags, target)
        .send()
        .await
        .map_err(|e| ops.launch_template_gone(&lt, classify("CreateAutoScalingGroup", e)));
    match created {
        Ok(_) => tracing::info!(group = %name, units = target, "created the Auto Scaling group"),
        // Made by an earlier try whose answer was lost: adopt it.
        Err(error) if error.code() == "AlreadyExists" => {
            tracing::info!(group = %name, "the Auto Scaling group exists already; adopting it");
            set_desired(ops, &name, template, target).await?;
        }
        Err(error) => return Err(error),
    }
    Ok(outcome)
}

/// Members that still count: not leaving the group.
fn staying(state: Option<&LifecycleState>) -> bool {
    !state.is_some_and(|s| {
        let s = s.as_str();
        s.starts_with("Terminat") || s.starts_with("Detach") || s.starts_with("Warmed")
    })
}

/// The groups among `names` as the poller keeps them (`fleet_state`), with their members;
/// groups that do not exist are left out.
pub async fn assess(ops: &Ops, names: &[String]) -> Result<Vec<Described>, ProviderError> {
    let mut out = vec![];
    let mut pages = ops
        .autoscaling
        .describe_auto_scaling_groups()
        .set_auto_scaling_group_names(Some(names.to_vec()))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for group in page.map_err(|e| classify("DescribeAutoScalingGroups", e))?.auto_scaling_groups() {
            let Some(name) = group.auto_scaling_group_name() else { continue };
            let mut held = 0u32;
            let mut members = vec![];
            for i in group.instances().iter().filter(|i| staying(i.lifecycle_state())) {
                held += i.weighted_capacity().and_then(|w| w.parse::<u32>().ok()).unwrap_or(1);
                members.extend(i.instance_id().map(str::to_string));
            }
            let desired = group.desired_capacity().unwrap_or(0).max(0).unsigned_abs();
            let outstanding = desired.saturating_sub(held);
            out.push(Described {
                id: name.to_string(),
                finished: false,
                working: true,
                outstanding,
                // Short of its capacity: say why, from the group's recent activities.
                troubled: outstanding > 0,
                signature: format!("{desired}/{held}"),
                members: Some(members),
            });
        }
    }
    Ok(out)
}

/// The group's failed or cancelled recent scaling activities.
pub async fn errors(ops: &Ops, name: &str) -> Result<Vec<LaunchFailure>, ProviderError> {
    let out = ops
        .autoscaling
        .describe_scaling_activities()
        .auto_scaling_group_name(name)
        .max_records(20)
        .send()
        .await
        .map_err(|e| classify("DescribeScalingActivities", e))?;
    Ok(out
        .activities()
        .iter()
        .filter(|a| {
            matches!(a.status_code(), Some(ScalingActivityStatusCode::Failed | ScalingActivityStatusCode::Cancelled))
        })
        .map(|a| LaunchFailure {
            code: "ScalingActivityFailed".into(),
            message: format!(
                "group {name}: {} ({})",
                a.status_message().unwrap_or("no message"),
                a.cause().unwrap_or("no cause")
            ),
            instance_type: None,
            zone: None,
        })
        .collect())
}

/// Returns `ids` from the request's group: its desired capacity set to `keep` units first (so it
/// does not replace them), then each member terminated. Returns the ids that are no member
/// (EC2 terminates those).
pub async fn return_members(
    ops: &Ops,
    name: &str,
    template: &MachineTemplateSpec,
    ids: &[String],
    keep: u32,
) -> Result<Vec<String>, ProviderError> {
    let Some(group) = describe(ops, name).await? else { return Ok(ids.to_vec()) };
    let members: Vec<&str> =
        group.instances().iter().filter(|i| staying(i.lifecycle_state())).filter_map(|i| i.instance_id()).collect();
    set_desired(ops, name, template, keep).await?;
    let mut others = vec![];
    for id in ids {
        if !members.contains(&id.as_str()) {
            others.push(id.clone());
            continue;
        }
        ops.autoscaling
            .terminate_instance_in_auto_scaling_group()
            .instance_id(id)
            .should_decrement_desired_capacity(false)
            .send()
            .await
            .map_err(|e| classify("TerminateInstanceInAutoScalingGroup", e))?;
    }
    Ok(others)
}

/// The launch templates group `g` launches from: its own, or its mixed instances policy's.
pub fn launch_templates(g: &AutoScalingGroup) -> impl Iterator<Item = &LaunchTemplateSpecification> {
    let mixed = g.mixed_instances_policy().and_then(|p| p.launch_template());
    g.launch_template().into_iter().chain(mixed.and_then(|lt| lt.launch_template_specification()))
}

/// Deletes the request's group with its instances (once per process: see `Ops::removed`).
pub async fn delete(ops: &Ops, name: Option<&str>) -> Result<(), ProviderError> {
    let Some(name) = name else { return Ok(()) };
    let name = [name.to_string()];
    if ops.not_removed(&name).is_empty() || describe(ops, &name[0]).await?.is_none() {
        return Ok(());
    }
    tracing::info!(group = name[0], "deleting the Auto Scaling group with its instances");
    ops.autoscaling
        .delete_auto_scaling_group()
        .auto_scaling_group_name(&name[0])
        .force_delete(true)
        .send()
        .await
        .map_err(|e| classify("DeleteAutoScalingGroup", e))?;
    ops.removed(&name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Api, InstanceTypeSpec};

    fn client() -> aws_sdk_autoscaling::Client {
        aws_sdk_autoscaling::Client::from_conf(
            aws_sdk_autoscaling::Config::builder()
                .behavior_version(aws_sdk_autoscaling::config::BehaviorVersion::latest())
                .region(aws_sdk_autoscaling::config::Region::new("us-east-1"))
                .build(),
        )
    }

    fn template(price_type: PriceType) -> MachineTemplateSpec {
        MachineTemplateSpec {
            api: Api::Asg,
            price_type,
            on_demand_base: Some(1),
            on_demand_percent: Some(40),
            max_spot_price: Some("0.05".into()),
            allocation_strategy: Some("capacityOptimized".into()),
            instance_types: vec![
                InstanceTypeSpec { type_: "m5.large".into(), weight: 2, priority: None },
                InstanceTypeSpec { type_: "m5.xlarge".into(), weight: 4, priority: None },
            ],
            subnet_ids: vec!["subnet-a".into(), "subnet-b".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_group_as_created_for_each_price_type() {
        let lt = LaunchTemplate { id: Some("lt-1".into()), name: None, version: "1".into(), managed: true };
        let tags = vec![aws_sdk_ec2::types::Tag::builder().key("orb.dev/request-uid").value("u-1").build()];
        for (price_type, base, percent) in
            [(PriceType::OnDemand, 0, 100), (PriceType::Spot, 0, 0), (PriceType::Heterogeneous, 1, 40)]
        {
            let t = template(price_type);
            let built = create_call(client().create_auto_scaling_group(), "orb-c-u-1", &t, &lt, &tags, 10);
            let input = built.as_input();
            let case = format!("{price_type:?}");
            assert_eq!(input.get_auto_scaling_group_name().as_deref(), Some("orb-c-u-1"));
            assert_eq!(
                (input.get_min_size(), input.get_max_size(), input.get_desired_capacity()),
                (&Some(0), &Some(14), &Some(10)),
                "{case}: room for the largest weight"
            );
            assert_eq!(input.get_desired_capacity_type().as_deref(), Some("units"));
            assert_eq!(input.get_vpc_zone_identifier().as_deref(), Some("subnet-a,subnet-b"));
            assert_eq!(
                input.get_new_instances_protected_from_scale_in(),
                &Some(true),
                "only the operator chooses who leaves"
            );
            let tag = &input.get_tags().as_ref().unwrap()[0];
            assert_eq!(
                (tag.key(), tag.propagate_at_launch(), tag.resource_type()),
                (Some("orb.dev/request-uid"), Some(true), Some("auto-scaling-group"))
            );
            let policy = input.get_mixed_instances_policy().as_ref().unwrap();
            let lt_part = policy.launch_template().unwrap();
            assert_eq!(lt_part.launch_template_specification().unwrap().launch_template_id(), Some("lt-1"));
            let overrides: Vec<_> = lt_part
                .overrides()
                .iter()
                .map(|o| (o.instance_type().unwrap(), o.weighted_capacity().unwrap()))
                .collect();
            assert_eq!(overrides, [("m5.large", "2"), ("m5.xlarge", "4")]);
            let d = policy.instances_distribution().unwrap();
            assert_eq!(
                (d.on_demand_base_capacity(), d.on_demand_percentage_above_base_capacity()),
                (Some(base), Some(percent)),
                "{case}"
            );
            assert_eq!(d.spot_allocation_strategy(), Some("capacity-optimized"), "{case}: this API's spelling");
            assert_eq!(d.on_demand_allocation_strategy(), Some("lowest-price"));
            assert_eq!(d.spot_max_price(), (price_type != PriceType::OnDemand).then_some("0.05"), "{case}");
        }
    }

    #[test]
    fn the_group_is_named_from_the_request_uid() {
        let owner = Owner { uid: "7f0e".into(), namespace: "grid".into(), name: "batch".into(), template: "w".into() };
        assert_eq!(group_name("blue", &owner), "orb-blue-7f0e");
    }
}
