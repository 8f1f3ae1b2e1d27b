//! The RunInstances handler: capacity units become instance counts by weight, spread across
//! the template's subnets, with `MinCount = MaxCount` on every call so a partial launch is
//! explicit. A capacity error for one (instance type, subnet) moves that share to the next
//! subnet, then to the next instance type, within the same provision call, and is reported as a
//! failure. Spot and the spot part of heterogeneous templates use InstanceMarketOptions. A given
//! launch template is used as-is with the template's fields as overrides.

use super::fleet::left_out_failure;
use crate::api::{LeftOut, MAX_LEFT_OUT, MachineTemplateSpec};
use crate::provider::aws::calls::errors::classify;
use crate::provider::aws::calls::ops::{self, Ops};
use crate::provider::{
    LaunchFailure, ProviderError, ProvisionOutcome, ProvisionRequest, machines_for, spot_after_on_demand,
};
use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, IamInstanceProfileSpecification, InstanceInterruptionBehavior,
    InstanceMarketOptionsRequest, InstanceType, LaunchTemplateSpecification, MarketType, SpotInstanceType,
    SpotMarketOptions, Tag, VolumeType,
};
use base64::Engine;

/// One RunInstances call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// `None` when a launch template chooses the type.
    pub instance_type: Option<String>,
    pub subnet: Option<String>,
    pub count: u32,
    pub spot: bool,
    pub client_token: String,
}

/// What every call of one provision shares: the resolved image and the tags.
pub struct Shared<'a> {
    pub template: &'a MachineTemplateSpec,
    pub image: Option<String>,
    pub root_device: Option<String>,
    pub tags: Vec<Tag>,
}

/// Instance types in launch order (by `priority` when given, else as listed) with weights.
pub fn type_order(template: &MachineTemplateSpec) -> Vec<(Option<String>, u32)> {
    if template.instance_types.is_empty() {
        return vec![(None, 1)];
    }
    let mut types: Vec<_> = template.instance_types.iter().collect();
    types.sort_by_key(|t| t.priority.unwrap_or(i32::MAX));
    types.into_iter().map(|t| (Some(t.type_.clone()), t.weight.max(1).unsigned_abs())).collect()
}

/// `count` machines spread as evenly as possible over `slots` subnets, first ones first.
pub fn spread(count: u32, slots: usize) -> Vec<u32> {
    let slots = slots.max(1) as u32;
    (0..slots).map(|i| count / slots + u32::from(i < count % slots)).collect()
}

/// Puts one launch into a RunInstances call.
pub fn configure(call: RunInstancesFluentBuilder, shared: &Shared<'_>, launch: &Launch) -> RunInstancesFluentBuilder {
    let t = shared.template;
    let count = i32::try_from(launch.count).unwrap_or(i32::MAX);
    let mut call = call
        .min_count(count)
        .max_count(count)
        .client_token(&launch.client_token)
        .set_tag_specifications(Some(ops::tag_specifications(&shared.tags, launch.spot)))
        .set_image_id(shared.image.clone())
        .set_instance_type(launch.instance_type.as_deref().map(InstanceType::from))
        .set_subnet_id(launch.subnet.clone())
        .set_key_name(t.key_name.clone());
    if let Some(lt) = &t.launch_template {
        call = call.launch_template(
            LaunchTemplateSpecification::builder()
                .set_launch_template_id(lt.id.clone())
                .set_launch_template_name(lt.name.clone())
                .version(lt.version.clone().unwrap_or_else(|| "$Default".into()))
                .build(),
        );
    }
    if !t.security_group_ids.is_empty() {
        call = call.set_security_group_ids(Some(t.security_group_ids.clone()));
    }
    if let Some(text) = &t.user_data {
        call = call.user_data(base64::engine::general_purpose::STANDARD.encode(text));
    }
    if let Some(profile) = &t.instance_profile {
        let spec = IamInstanceProfileSpecification::builder();
        call = call.iam_instance_profile(
            if profile.starts_with("arn:") { spec.arn(profile) } else { spec.name(profile) }.build(),
        );
    }
    if let Some(root) = &t.root_volume {
        let ebs = EbsBlockDevice::builder()
            .set_volume_size(root.size_gi_b)
            .set_volume_type(root.type_.as_deref().map(VolumeType::from))
            .set_iops(root.iops)
            .set_throughput(root.throughput)
            .set_encrypted(root.encrypted)
            .set_kms_key_id(root.kms_key_id.clone())
            .delete_on_termination(true)
            .build();
        let device = shared.root_device.clone().unwrap_or_else(|| "/dev/xvda".into());
        call = call.block_device_mappings(BlockDeviceMapping::builder().device_name(device).ebs(ebs).build());
    }
    if launch.spot {
        let options = SpotMarketOptions::builder()
            .set_max_price(t.max_spot_price.clone())
            .spot_instance_type(SpotInstanceType::OneTime)
            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
            .build();
        call = call.instance_market_options(
            InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).spot_options(options).build(),
        );
    }
    call
}

/// Runs the launches of one provision call, falling back across subnets and types.
struct Runner<'a> {
    ops: &'a Ops,
    /// Offerings the attempt leaves out: fixed when it opened, grown by each refusal, so that
    /// every try sends the same calls with the same counts under the same tokens.
    left_out: Vec<LeftOut>,
    shared: Shared<'a>,
    token: &'a str,
    calls: u32,
    outcome: ProvisionOutcome,
}

impl Runner<'_> {
    /// Launches `units` in one market and returns the units launched. `Err` only for errors
    /// that are not about one offering's capacity (an account limit stops everything).
    async fn market(&mut self, units: u32, spot: bool) -> Result<u32, ProviderError> {
        let mut remaining = units;
        let mut launched = 0;
        let subnets: Vec<Option<String>> = match self.shared.template.subnet_ids.as_slice() {
            [] => vec![None],
            ids => ids.iter().cloned().map(Some).collect(),
        };
        for (type_index, (instance_type, weight)) in type_order(self.shared.template).into_iter().enumerate() {
            if remaining == 0 {
                break;
            }
            let mut carried = 0;
            let mut placed = 0;
            let shares = spread(machines_for(remaining, weight), subnets.len());
            for (subnet_index, (subnet, share)) in subnets.iter().zip(shares).enumerate() {
                let count = share + carried;
                if count == 0 {
                    continue;
                }
                let offering = self.ops.offering(instance_type.as_deref(), subnet.as_deref(), spot).await;
                if let Some(out) =
                    self.left_out.iter().find(|l| l.is(instance_type.as_deref(), subnet.as_deref(), spot))
                {
                    self.outcome.failures.push(left_out_failure(self.ops, out).await);
                    carried = count;
                    continue;
                }
                self.calls += 1;
                let launch = Launch {
                    instance_type: instance_type.clone(),
                    subnet: subnet.clone(),
                    count,
                    spot,
                    // One token per offering, not per call: a replay that skips an offering
                    // (refused by an earlier try) still sends each offering its first token.
                    client_token: format!("{}-{}{type_index}-{subnet_index}", self.token, if spot { 's' } else { 'o' }),
                };
                match self.run(&launch).await {
                    Ok(()) => {
                        placed += count;
                        carried = 0;
                    }
                    Err(ProviderError::Capacity { code, message }) => {
                        tracing::info!(%code, instance_type = ?launch.instance_type, subnet = ?launch.subnet, "no capacity; trying the next placement");
                        if let Some(offering) = offering.clone() {
                            self.ops.capacity.remember(offering, &code);
                        }
                        let message = match &launch.subnet {
                            Some(subnet) => format!("{message} (subnet {subnet})"),
                            None => message,
                        };
                        self.outcome.failures.push(LaunchFailure {
                            code: code.clone(),
                            message,
                            instance_type: launch.instance_type.clone(),
                            zone: offering.map(|o| o.1),
                        });
                        // EC2 keeps no refusal under a token: a replay must not ask this
                        // offering again and hand the count it carries on to another. A
                        // refusal with no room in the record ends the try here, so that no call
                        // follows one a replay would send differently.
                        if self.left_out.len() >= MAX_LEFT_OUT {
                            return Err(ProviderError::Capacity {
                                code,
                                message: format!(
                                    "{MAX_LEFT_OUT} offerings of this attempt failed for capacity; the next attempt tries the rest"
                                ),
                            });
                        }
                        let refused = LeftOut {
                            instance_type: launch.instance_type.clone(),
                            subnet: launch.subnet.clone(),
                            spot,
                            code,
                        };
                        self.left_out.push(refused.clone());
                        self.outcome.refused.push(refused);
                        carried = count;
                    }
                    Err(other) => return Err(other),
                }
            }
            remaining = remaining.saturating_sub(placed * weight);
            launched += placed * weight;
        }
        Ok(launched)
    }

    async fn run(&mut self, launch: &Launch) -> Result<(), ProviderError> {
        let call = configure(self.ops.ec2.run_instances(), &self.shared, launch);
        let out = call.send().await.map_err(|e| classify("RunInstances", e))?;
        if let Some(reservation) = out.reservation_id() {
            self.outcome.resources.reservation_ids.push(reservation.to_string());
        }
        self.outcome.launched.extend(out.instances().iter().filter_map(|i| ops::observed(i, out.reservation_id())));
        Ok(())
    }
}

/// Provisions `request.mix` through RunInstances: on-demand first, then spot less whatever the
/// on-demand machines' rounding already covered.
pub async fn provision(ops: &Ops, request: &ProvisionRequest<'_>) -> Result<ProvisionOutcome, ProviderError> {
    let template = request.template;
    let image = match &template.image_id {
        Some(image) => Some(ops.resolve_image(image).await?),
        None => None,
    };
    let root_device = match (&template.root_volume, &image) {
        (Some(_), Some(ami)) => ops.root_device(ami).await?,
        _ => None,
    };
    let shared = Shared {
        template,
        image,
        root_device,
        tags: ops::resource_tags(request.owner, &ops.cluster_id, &template.tags),
    };
    let mut runner = Runner {
        ops,
        left_out: request.left_out.to_vec(),
        shared,
        token: request.client_token,
        calls: 0,
        outcome: ProvisionOutcome::default(),
    };
    let mix = request.mix;
    let mut on_demand_launched = 0;
    for spot in [false, true] {
        let units = if spot { spot_after_on_demand(mix, on_demand_launched) } else { mix.on_demand };
        if units == 0 {
            continue;
        }
        match runner.market(units, spot).await {
            Ok(launched) if !spot => on_demand_launched = launched,
            Ok(_) => {}
            Err(error) => {
                let error = match error {
                    ProviderError::Limit { code, message } => ProviderError::Limit {
                        code,
                        message: format!(
                            "{message} (an account-wide limit: no other instance type or subnet was tried)"
                        ),
                    },
                    other => other,
                };
                // Keep what launched: it is in the cloud and must be recorded. So must the
                // refusals before a call whose answer was lost: its replay skips them.
                let to_record = !runner.outcome.refused.is_empty() && error.is_ambiguous();
                if runner.outcome.launched.is_empty() && !to_record {
                    return Err(error);
                }
                runner.outcome.ambiguous = error.is_ambiguous();
                runner.outcome.failures.push(LaunchFailure {
                    code: error.code().into(),
                    message: error.to_string(),
                    instance_type: None,
                    zone: None,
                });
                return Ok(runner.outcome);
            }
        }
    }
    if runner.outcome.launched.is_empty() {
        let tried = runner.outcome.failures.len();
        return Err(match runner.outcome.failures.pop() {
            Some(last) => ProviderError::Capacity {
                code: last.code,
                message: format!(
                    "no capacity in any of {tried} instance type/subnet placements; last: {}",
                    last.message
                ),
            },
            None => ProviderError::invalid("spec.instanceTypes", "NothingToLaunch", "no instance type to launch"),
        });
    }
    Ok(runner.outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{InstanceTypeSpec, LaunchTemplateRef, PriceType, RootVolume};

    use crate::provider::aws::calls::client::offline as client;

    fn template() -> MachineTemplateSpec {
        MachineTemplateSpec {
            image_id: Some("ami-12345678".into()),
            instance_types: vec![
                InstanceTypeSpec { type_: "m5.large".into(), weight: 2, priority: None },
                InstanceTypeSpec { type_: "m5.xlarge".into(), weight: 4, priority: Some(1) },
            ],
            subnet_ids: vec!["subnet-a".into(), "subnet-b".into()],
            security_group_ids: vec!["sg-1".into()],
            key_name: Some("ops".into()),
            user_data: Some("#!/bin/sh\necho hi\n".into()),
            instance_profile: Some("arn:aws:iam::123456789012:instance-profile/worker".into()),
            root_volume: Some(RootVolume {
                size_gi_b: Some(50),
                type_: Some("gp3".into()),
                encrypted: Some(true),
                ..Default::default()
            }),
            max_spot_price: Some("0.08".into()),
            price_type: PriceType::Spot,
            ..Default::default()
        }
    }

    #[test]
    fn priority_orders_types_before_list_order() {
        let order: Vec<_> = type_order(&template()).into_iter().map(|(t, w)| (t.unwrap(), w)).collect();
        assert_eq!(order, [("m5.xlarge".to_string(), 4), ("m5.large".to_string(), 2)]);
        let lt_only = MachineTemplateSpec { launch_template: Some(LaunchTemplateRef::default()), ..Default::default() };
        assert_eq!(type_order(&lt_only), [(None, 1)]);
    }

    #[test]
    fn machines_spread_evenly_over_subnets() {
        assert_eq!(spread(5, 2), [3, 2]);
        assert_eq!(spread(1, 3), [1, 0, 0]);
        assert_eq!(spread(6, 3), [2, 2, 2]);
        assert_eq!(spread(4, 0), [4], "no subnets: one slot, the default VPC");
    }

    #[test]
    fn the_call_carries_every_template_field() {
        let t = template();
        let tags = vec![Tag::builder().key("orb.dev/request-uid").value("u").build()];
        let shared =
            Shared { template: &t, image: Some("ami-12345678".into()), root_device: Some("/dev/sda1".into()), tags };
        let launch = Launch {
            instance_type: Some("m5.large".into()),
            subnet: Some("subnet-b".into()),
            count: 3,
            spot: true,
            client_token: "orb-1-abc-2".into(),
        };
        let call = configure(client().run_instances(), &shared, &launch);
        let input = call.as_input();
        assert_eq!((input.get_min_count(), input.get_max_count()), (&Some(3), &Some(3)), "MinCount = MaxCount");
        assert_eq!(input.get_client_token().as_deref(), Some("orb-1-abc-2"));
        assert_eq!(input.get_image_id().as_deref(), Some("ami-12345678"));
        assert_eq!(input.get_instance_type().as_ref().map(|t| t.as_str()), Some("m5.large"));
        assert_eq!(input.get_subnet_id().as_deref(), Some("subnet-b"));
        assert_eq!(input.get_security_group_ids().as_deref(), Some(&["sg-1".to_string()][..]));
        assert_eq!(input.get_key_name().as_deref(), Some("ops"));
        let user_data =
            base64::engine::general_purpose::STANDARD.decode(input.get_user_data().as_deref().unwrap()).unwrap();
        assert_eq!(user_data, b"#!/bin/sh\necho hi\n");
        assert_eq!(
            input.get_iam_instance_profile().as_ref().unwrap().arn(),
            Some("arn:aws:iam::123456789012:instance-profile/worker")
        );
        let bdm = &input.get_block_device_mappings().as_ref().unwrap()[0];
        assert_eq!(bdm.device_name(), Some("/dev/sda1"));
        assert_eq!(bdm.ebs().unwrap().volume_size(), Some(50));
        assert_eq!(bdm.ebs().unwrap().encrypted(), Some(true));
        let market = input.get_instance_market_options().as_ref().unwrap();
        assert_eq!(market.market_type(), Some(&MarketType::Spot));
        assert_eq!(market.spot_options().unwrap().max_price(), Some("0.08"));
        let kinds: Vec<_> = input
            .get_tag_specifications()
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| s.resource_type().unwrap().as_str())
            .collect();
        assert_eq!(kinds, ["instance", "volume", "spot-instances-request"]);
    }

    #[test]
    fn a_launch_template_is_used_with_the_template_fields_as_overrides() {
        let t = MachineTemplateSpec {
            launch_template: Some(LaunchTemplateRef { name: Some("base".into()), ..Default::default() }),
            subnet_ids: vec!["subnet-a".into()],
            ..Default::default()
        };
        let shared = Shared { template: &t, image: None, root_device: None, tags: vec![] };
        let launch = Launch {
            instance_type: None,
            subnet: Some("subnet-a".into()),
            count: 1,
            spot: false,
            client_token: "t".into(),
        };
        let call = configure(client().run_instances(), &shared, &launch);
        let input = call.as_input();
        let lt = input.get_launch_template().as_ref().unwrap();
        assert_eq!((lt.launch_template_name(), lt.version()), (Some("base"), Some("$Default")));
        assert!(input.get_image_id().is_none() && input.get_instance_type().is_none(), "the launch template decides");
        assert!(input.get_instance_market_options().is_none(), "on-demand has no market options");
        assert_eq!(input.get_subnet_id().as_deref(), Some("subnet-a"));
    }
}
