//! The EC2 Fleet handler. One CreateFleet call launches across every (instance type, subnet)
//! override of the template, weighted in capacity units, with the on-demand / spot split of the
//! attempt and a ClientToken per call.
//!
//! - `instant`: instances and per-override errors come back in the answer. When capacity is
//!   short, the remainder is asked for again without the offerings that failed, at most
//!   `INSTANT_ROUNDS` calls per attempt, each with its own token derived from the attempt's.
//! - `request`: one fleet per attempt; it fulfils asynchronously, and what it still works on
//!   is `outstanding` (never launched twice). It never replaces machines, so a return is a
//!   termination.
//! - `maintain`: one fleet per request. More capacity, and returns, set its target (ModifyFleet,
//!   an absolute value) — returns first lower it, then terminate exactly the chosen machines.
//!
//! Release deletes the fleets with their instances (DeleteFleets, TerminateInstances=true).

use super::fleet::Described;
use super::fleet::{self, Offering, OfferingKey, left_out_failure};
use super::launch_template::LaunchTemplate;
use crate::api::{FleetType, MachineTemplateSpec};
use crate::provider::aws::calls::errors::{self, classify, classify_code};
use crate::provider::aws::calls::ops::{self, Ops};
use crate::provider::{
    InstanceState, LaunchFailure, MarketMix, ObservedMachine, Owner, ProviderError, ProvisionOutcome, ProvisionRequest,
    market_split, target_of,
};
use aws_sdk_ec2::operation::create_fleet::builders::CreateFleetFluentBuilder;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetData, FleetExcessCapacityTerminationPolicy, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest, FleetOnDemandAllocationStrategy,
    FleetStateCode, InstanceLifecycle, InstanceType, OnDemandOptionsRequest, ResourceType, SpotAllocationStrategy,
    SpotInstanceInterruptionBehavior, SpotOptionsRequest, Tag, TagSpecification, TargetCapacitySpecificationRequest,
};
use std::collections::BTreeSet;

/// CreateFleet calls an instant attempt may make: the first, then follow-ups without the
/// offerings that failed.
pub const INSTANT_ROUNDS: usize = 3;
/// Fleets per DeleteFleets call: within EC2's limits for every fleet type.
const DELETE_BATCH: usize = 25;
/// A fleet that has not reported its activity this long after its creation is not placing
/// requests any more (moto never reports one).
const PLACING: i64 = 120;

/// One CreateFleet call.
pub struct FleetCall<'a> {
    pub template: &'a MachineTemplateSpec,
    pub launch_template: &'a LaunchTemplate,
    pub offerings: &'a [Offering],
    pub fleet_type: FleetType,
    pub mix: MarketMix,
    pub client_token: String,
    pub tags: &'a [Tag],
}

fn aws_type(fleet_type: FleetType) -> aws_sdk_ec2::types::FleetType {
    match fleet_type {
        FleetType::Instant => aws_sdk_ec2::types::FleetType::Instant,
        FleetType::Request => aws_sdk_ec2::types::FleetType::Request,
        FleetType::Maintain => aws_sdk_ec2::types::FleetType::Maintain,
    }
}

/// The target in units, split by market as the attempt asked. The default capacity type (what
/// the rest of the target is launched as) follows the template's price type, and is only sent
/// at creation: ModifyFleet changes the three numbers only.
pub fn target(mix: MarketMix, default_type: Option<&MachineTemplateSpec>) -> TargetCapacitySpecificationRequest {
    let total = mix.on_demand + mix.spot;
    TargetCapacitySpecificationRequest::builder()
        .total_target_capacity(total as i32)
        .on_demand_target_capacity(mix.on_demand as i32)
        .spot_target_capacity(mix.spot as i32)
        .set_default_target_capacity_type(default_type.map(|t| {
            if fleet::uses_spot(t) { DefaultTargetCapacityType::Spot } else { DefaultTargetCapacityType::OnDemand }
        }))
        .build()
}

/// Puts one fleet into a CreateFleet call.
pub fn configure(call: CreateFleetFluentBuilder, c: &FleetCall<'_>) -> CreateFleetFluentBuilder {
    let t = c.template;
    let lt = FleetLaunchTemplateSpecificationRequest::builder()
        .set_launch_template_id(c.launch_template.id.clone())
        .set_launch_template_name(c.launch_template.name.clone())
        .version(&c.launch_template.version)
        .build();
    let spot_price = t.max_spot_price.clone().filter(|_| fleet::uses_spot(t));
    let overrides = c
        .offerings
        .iter()
        .map(|o| {
            FleetLaunchTemplateOverridesRequest::builder()
                .set_instance_type(o.instance_type.as_deref().map(InstanceType::from))
                .set_subnet_id(o.subnet.clone())
                .weighted_capacity(f64::from(o.weight))
                .priority(o.priority)
                .set_max_price(spot_price.clone())
                .build()
        })
        .collect();
    let mut tag_kinds = vec![ResourceType::Fleet];
    if c.fleet_type == FleetType::Instant {
        // Only instant fleets may tag instances at launch (and nothing else: volumes are
        // tagged through the launch template); the others tag instances through it too.
        tag_kinds.push(ResourceType::Instance);
    }
    let mut call = call
        .r#type(aws_type(c.fleet_type))
        .client_token(&c.client_token)
        .launch_template_configs(
            FleetLaunchTemplateConfigRequest::builder()
                .launch_template_specification(lt)
                .set_overrides(Some(overrides))
                .build(),
        )
        .target_capacity_specification(target(c.mix, Some(t)))
        .on_demand_options(
            OnDemandOptionsRequest::builder()
                .allocation_strategy(FleetOnDemandAllocationStrategy::from(
                    fleet::hyphenated(fleet::on_demand_strategy(t)).as_str(),
                ))
                .build(),
        )
        .spot_options(
            SpotOptionsRequest::builder()
                .allocation_strategy(SpotAllocationStrategy::from(fleet::hyphenated(fleet::spot_strategy(t)).as_str()))
                .instance_interruption_behavior(SpotInstanceInterruptionBehavior::Terminate)
                .build(),
        )
        .set_tag_specifications(Some(
            tag_kinds
                .into_iter()
                .map(|kind| TagSpecification::builder().resource_type(kind).set_tags(Some(c.tags.to_vec())).build())
                .collect(),
        ));
    if c.fleet_type == FleetType::Maintain {
        // The operator chooses which machines leave; the fleet replaces unhealthy ones.
        call = call
            .excess_capacity_termination_policy(FleetExcessCapacityTerminationPolicy::NoTermination)
            .replace_unhealthy_instances(true);
    }
    call
}

/// The machines of an instant fleet's answer, pending until described.
fn launched(out: &aws_sdk_ec2::operation::create_fleet::CreateFleetOutput) -> Vec<ObservedMachine> {
    let now = jiff::Timestamp::now();
    out.instances()
        .iter()
        .flat_map(|i| {
            let overrides = i.launch_template_and_overrides().and_then(|lt| lt.overrides());
            let placed = Placed {
                instance_type: i.instance_type(),
                lifecycle: i.lifecycle(),
                subnet: i.subnet_id().or(overrides.and_then(|o| o.subnet_id())),
                zone: i.availability_zone().or(overrides.and_then(|o| o.availability_zone())),
            };
            placed.machines(i.instance_ids(), now)
        })
        .collect()
}

/// What a fleet reports of a group of instances it launched alike.
struct Placed<'a> {
    instance_type: Option<&'a InstanceType>,
    lifecycle: Option<&'a InstanceLifecycle>,
    subnet: Option<&'a str>,
    zone: Option<&'a str>,
}

impl Placed<'_> {
    /// The machines `ids`, pending until described.
    fn machines(&self, ids: &[String], now: jiff::Timestamp) -> Vec<ObservedMachine> {
        let spot = self.lifecycle == Some(&InstanceLifecycle::Spot);
        ids.iter()
            .map(|id| ObservedMachine {
                instance_type: self.instance_type.map(|t| t.as_str().to_string()),
                capacity_type: Some(if spot { "spot" } else { "on-demand" }.into()),
                subnet_id: self.subnet.map(str::to_string),
                zone: self.zone.map(str::to_string),
                launch_time: Some(now),
                ..ObservedMachine::new(id, InstanceState::Pending)
            })
            .collect()
    }
}

/// An active fleet tagged with a request's uid that its status does not record, with the
/// machines it launched (instant fleets report them).
pub struct Unrecorded {
    pub fleet_id: String,
    pub machines: Vec<ObservedMachine>,
    /// The launch template it launches from (the operator's, unless the template names one).
    pub launch_template_id: Option<String>,
}

/// The active fleets tagged with `owner`'s uid (and this cluster) that `recorded` does not
/// list: what a CreateFleet whose answer was lost (a crash, a timeout, a 5xx) made. Asked only
/// when an attempt's outcome is unknown, from a listing of the account's active fleets shared
/// with the requests asking at the same moment (`Ops::fleet_listing`).
pub async fn unrecorded(ops: &Ops, owner: &Owner, recorded: &[String]) -> Result<Vec<Unrecorded>, ProviderError> {
    let listed = ops.fleet_listing.call(ops).await?;
    let now = jiff::Timestamp::now();
    let out = listed
        .iter()
        .filter(|f| ops::tagged_for(f.tags(), owner, &ops.cluster_id))
        .filter_map(|f| {
            let fleet_id = f.fleet_id().filter(|id| !recorded.iter().any(|r| r == id))?.to_string();
            let machines = f
                .instances()
                .iter()
                .flat_map(|i| {
                    let overrides = i.launch_template_and_overrides().and_then(|lt| lt.overrides());
                    let placed = Placed {
                        instance_type: i.instance_type(),
                        lifecycle: i.lifecycle(),
                        subnet: overrides.and_then(|o| o.subnet_id()),
                        zone: overrides.and_then(|o| o.availability_zone()),
                    };
                    placed.machines(i.instance_ids(), now)
                })
                .collect();
            let launch_template_id = f
                .launch_template_configs()
                .iter()
                .find_map(|c| c.launch_template_specification()?.launch_template_id())
                .map(str::to_string);
            Some(Unrecorded { fleet_id, machines, launch_template_id })
        })
        .collect();
    Ok(out)
}

/// The account's active fleets, every page: DescribeFleets filters by no tag.
pub async fn list_active(ops: &Ops) -> Result<Vec<FleetData>, ProviderError> {
    let mut pages = ops.ec2.describe_fleets().into_paginator().send();
    let mut active = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("DescribeFleets", e))?;
        active.extend(page.fleets().iter().filter(|f| f.fleet_state().is_some_and(is_active)).cloned());
    }
    Ok(active)
}

/// On the replay of an attempt whose answer was lost: the fleets that create made, adopted
/// instead of asked for again (EC2 would answer the same token with them; an emulator that
/// ignores tokens would make more). `None` when there are none: the replay goes ahead.
async fn adopt(ops: &Ops, request: &ProvisionRequest<'_>) -> Result<Option<ProvisionOutcome>, ProviderError> {
    let found = unrecorded(ops, request.owner, &request.resources.fleet_ids).await?;
    if found.is_empty() {
        return Ok(None);
    }
    let ids: Vec<&str> = found.iter().map(|f| f.fleet_id.as_str()).collect();
    tracing::info!(request = %request.owner.key(), fleets = ?ids, "adopting the fleets of a create whose answer was lost, instead of creating again");
    let lt = ops.launch_template(request.owner, request.template).await?;
    let mut outcome = ProvisionOutcome::default();
    outcome.resources.launch_template_id = lt.id.clone().filter(|_| lt.managed);
    if fleet::fleet_type(request.template) != FleetType::Instant {
        outcome.accepted_units = request.mix.on_demand + request.mix.spot;
    }
    for f in found {
        outcome.resources.fleet_ids.push(f.fleet_id);
        outcome.launched.extend(f.machines);
    }
    Ok(Some(outcome))
}

/// The per-override errors of a CreateFleet answer, and the offerings they rule out.
fn errors(out: &aws_sdk_ec2::operation::create_fleet::CreateFleetOutput) -> Vec<(LaunchFailure, OfferingKey)> {
    out.errors()
        .iter()
        .map(|e| {
            let overrides = e.launch_template_and_overrides().and_then(|lt| lt.overrides());
            let instance_type = overrides.and_then(|o| o.instance_type()).map(|t| t.as_str().to_string());
            let subnet = overrides.and_then(|o| o.subnet_id()).map(str::to_string);
            let mut message = e.error_message().unwrap_or("no message").to_string();
            if let Some(subnet) = &subnet {
                message.push_str(&format!(" (subnet {subnet})"));
            }
            let failure = LaunchFailure {
                code: e.error_code().unwrap_or("Unknown").to_string(),
                message: format!("CreateFleet: {message}"),
                instance_type: instance_type.clone(),
                zone: overrides.and_then(|o| o.availability_zone()).map(str::to_string),
            };
            (failure, (instance_type, subnet))
        })
        .collect()
}

/// Capacity units of machines by market.
fn units_by_market(template: &MachineTemplateSpec, machines: &[ObservedMachine]) -> MarketMix {
    let mut mix = MarketMix::default();
    for m in machines {
        let units = template.weight_of(m.instance_type.as_deref().unwrap_or_default());
        if m.capacity_type.as_deref() == Some("spot") { mix.spot += units } else { mix.on_demand += units }
    }
    mix
}

/// Provisions the attempt through EC2 Fleet.
pub async fn provision(ops: &Ops, request: &ProvisionRequest<'_>) -> Result<ProvisionOutcome, ProviderError> {
    let template = request.template;
    let kind = fleet::fleet_type(template);
    if kind == FleetType::Maintain
        && let Some(id) = active_maintain_fleet(ops, &request.resources.fleet_ids).await?
    {
        set_target(ops, &id, template, target_of(request)).await?;
        return Ok(ProvisionOutcome { accepted_units: request.mix.on_demand + request.mix.spot, ..Default::default() });
    }
    if request.replay
        && let Some(adopted) = adopt(ops, request).await?
    {
        return Ok(adopted);
    }
    let lt = ops.launch_template(request.owner, template).await?;
    let mut outcome = ProvisionOutcome::default();
    outcome.resources.launch_template_id = lt.id.clone().filter(|_| lt.managed);
    let tags = ops::resource_tags(request.owner, &ops.cluster_id, &template.tags);
    let all = fleet::offerings(template);
    if kind != FleetType::Instant {
        let call = FleetCall {
            template,
            launch_template: &lt,
            offerings: &all,
            fleet_type: kind,
            mix: request.mix,
            client_token: request.client_token.to_string(),
            tags: &tags,
        };
        let out = configure(ops.ec2.create_fleet(), &call)
            .send()
            .await
            .map_err(|e| ops.launch_template_gone(&lt, classify("CreateFleet", e)))?;
        outcome.resources.fleet_ids.extend(out.fleet_id().map(str::to_string));
        outcome.accepted_units = request.mix.on_demand + request.mix.spot;
        for (failure, _) in errors(&out) {
            outcome.failures.push(failure);
        }
        return Ok(outcome);
    }

    let mut excluded = BTreeSet::new();
    let mut left = request.mix;
    let markets: Vec<bool> = [(false, left.on_demand), (true, left.spot)]
        .into_iter()
        .filter(|(_, units)| *units > 0)
        .map(|(spot, _)| spot)
        .collect();
    // The offerings the attempt leaves out (failed for capacity lately, in every market it
    // launches in), fixed when it opened: every try sends the same overrides.
    for o in &all {
        let out: Vec<_> = request
            .left_out
            .iter()
            .filter(|l| markets.iter().any(|&spot| l.is(o.instance_type.as_deref(), o.subnet.as_deref(), spot)))
            .collect();
        if !out.is_empty() && out.len() == markets.len() {
            excluded.insert(o.key());
            for l in out {
                outcome.failures.push(left_out_failure(ops, l).await);
            }
        }
    }
    // A capacity error is remembered for the market it happened in, when the attempt had one.
    let single_market = match markets.as_slice() {
        [spot] => Some(*spot),
        _ => None,
    };
    for round in 0..INSTANT_ROUNDS {
        let usable: Vec<Offering> = all.iter().filter(|o| !excluded.contains(&o.key())).cloned().collect();
        if usable.is_empty() || left.on_demand + left.spot == 0 {
            break;
        }
        let client_token = match round {
            0 => request.client_token.to_string(),
            n => format!("{}-r{}", request.client_token, n + 1),
        };
        let call = FleetCall {
            template,
            launch_template: &lt,
            offerings: &usable,
            fleet_type: kind,
            mix: left,
            client_token,
            tags: &tags,
        };
        let out = match configure(ops.ec2.create_fleet(), &call).send().await {
            Ok(out) => out,
            Err(error) => {
                let error = ops.launch_template_gone(&lt, classify("CreateFleet", error));
                if outcome.launched.is_empty() {
                    return Err(error);
                }
                // Keep what launched: it is in the cloud and must be recorded.
                outcome.ambiguous = error.is_ambiguous();
                outcome.failures.push(LaunchFailure {
                    code: error.code().into(),
                    message: error.to_string(),
                    instance_type: None,
                    zone: None,
                });
                break;
            }
        };
        outcome.resources.fleet_ids.extend(out.fleet_id().map(str::to_string));
        ops.remember_instant(out.fleet_id().map(str::to_string));
        let machines = launched(&out);
        let got = units_by_market(template, &machines);
        outcome.launched.extend(machines);
        let errors = errors(&out);
        let limit = errors.iter().any(|(f, _)| matches!(classify_code(&f.code, "", None), ProviderError::Limit { .. }));
        let stop = errors.is_empty() || limit;
        for (failure, key) in errors {
            if let (Some(spot), ProviderError::Capacity { .. }) =
                (single_market, classify_code(&failure.code, "", None))
                && let Some(offering) = ops.offering(key.0.as_deref(), key.1.as_deref(), spot).await
            {
                ops.capacity.remember(offering, &failure.code);
            }
            tracing::info!(code = %failure.code, instance_type = ?key.0, subnet = ?key.1, "fleet override failed; excluded from the follow-up");
            excluded.insert(key);
            outcome.failures.push(failure);
        }
        // On-demand launched beyond its share comes off the spot share (whole machines).
        let surplus = got.on_demand.saturating_sub(left.on_demand);
        left = MarketMix {
            on_demand: left.on_demand.saturating_sub(got.on_demand),
            spot: left.spot.saturating_sub(got.spot + surplus),
        };
        if stop {
            break;
        }
    }
    if outcome.launched.is_empty() {
        let tried = outcome.failures.len();
        return Err(match outcome.failures.pop() {
            Some(last) => classify_code(
                &last.code,
                &format!("no capacity in any of {tried} fleet overrides; last: {}", last.message),
                None,
            ),
            None => ProviderError::Capacity {
                code: "UnfulfillableCapacity".into(),
                message: "CreateFleet launched nothing and reported no error".into(),
            },
        });
    }
    Ok(outcome)
}

/// The request's active `maintain` fleet, if it has one. A recorded fleet that EC2 does not
/// list yet (its listing lags behind a create) may be it: that is an error worth retrying, never
/// a reason to create a second fleet.
async fn active_maintain_fleet(ops: &Ops, fleet_ids: &[String]) -> Result<Option<String>, ProviderError> {
    if fleet_ids.is_empty() {
        return Ok(None);
    }
    let fleets = describe(ops, fleet_ids).await?;
    if let Some(f) = fleets.iter().find(|f| {
        f.r#type() == Some(&aws_sdk_ec2::types::FleetType::Maintain) && f.fleet_state().is_some_and(is_active)
    }) {
        return Ok(f.fleet_id().map(str::to_string));
    }
    if let Some(unlisted) = fleet_ids.iter().find(|id| !fleets.iter().any(|f| f.fleet_id() == Some(id.as_str()))) {
        return Err(ProviderError::Transient {
            code: "FleetNotListedYet".into(),
            message: format!("fleet {unlisted} is recorded but DescribeFleets does not list it yet; waiting for it"),
        });
    }
    Ok(None)
}

pub fn is_active(state: &FleetStateCode) -> bool {
    matches!(state, FleetStateCode::Submitted | FleetStateCode::Active | FleetStateCode::Modifying)
}

/// Sets a maintain fleet's target to `units`, split by market as the template asks.
pub fn modify_call(
    call: aws_sdk_ec2::operation::modify_fleet::builders::ModifyFleetFluentBuilder,
    fleet_id: &str,
    template: &MachineTemplateSpec,
    units: u32,
) -> aws_sdk_ec2::operation::modify_fleet::builders::ModifyFleetFluentBuilder {
    let mix = market_split(template, units, MarketMix::default(), units);
    call.fleet_id(fleet_id)
        .target_capacity_specification(target(mix, None))
        .excess_capacity_termination_policy(FleetExcessCapacityTerminationPolicy::NoTermination)
}

async fn set_target(
    ops: &Ops,
    fleet_id: &str,
    template: &MachineTemplateSpec,
    units: u32,
) -> Result<(), ProviderError> {
    tracing::info!(fleet = fleet_id, units, "setting the maintain fleet's target");
    modify_call(ops.ec2.modify_fleet(), fleet_id, template, units)
        .send()
        .await
        .map(drop)
        .map_err(|e| classify("ModifyFleet", e))
}

/// Lowers the request's maintain fleet (if any) to `units` before machines are terminated.
pub async fn before_return(
    ops: &Ops,
    fleet_ids: &[String],
    template: &MachineTemplateSpec,
    units: u32,
) -> Result<(), ProviderError> {
    match active_maintain_fleet(ops, fleet_ids).await? {
        Some(id) => set_target(ops, &id, template, units).await,
        None => Ok(()),
    }
}

/// Points the active `maintain` fleets among `fleet_ids` that launch from launch template `lt`
/// at the marked `version` (made on first need, shared with the spot fleets), overrides
/// unchanged: an orphaned fleet's later instances carry the version's tags. No version is made
/// and no call modifies anything when no such fleet exists (instant and request fleets launch
/// nothing later).
pub async fn launch_from(
    ops: &Ops,
    fleet_ids: &[String],
    lt: &str,
    version: &tokio::sync::OnceCell<String>,
) -> Result<(), ProviderError> {
    if fleet_ids.is_empty() {
        return Ok(());
    }
    let maintained = describe(ops, fleet_ids).await?.into_iter().filter(|f| {
        f.r#type() == Some(&aws_sdk_ec2::types::FleetType::Maintain) && f.fleet_state().is_some_and(is_active)
    });
    for f in maintained {
        let ours: Vec<_> = f
            .launch_template_configs()
            .iter()
            .filter(|c| c.launch_template_specification().and_then(|s| s.launch_template_id()) == Some(lt))
            .collect();
        let Some(id) = f.fleet_id().filter(|_| !ours.is_empty()) else { continue };
        let version = version.get_or_try_init(|| ops.orphaned_version(lt)).await?;
        let configs = ours.iter().map(|c| {
            let spec = FleetLaunchTemplateSpecificationRequest::builder().launch_template_id(lt).version(version);
            let overrides = c.overrides().iter().map(|o| {
                FleetLaunchTemplateOverridesRequest::builder()
                    .set_instance_type(o.instance_type().cloned())
                    .set_subnet_id(o.subnet_id().map(str::to_string))
                    .set_availability_zone(o.availability_zone().map(str::to_string))
                    .set_weighted_capacity(o.weighted_capacity())
                    .set_priority(o.priority())
                    .set_max_price(o.max_price().map(str::to_string))
                    .build()
            });
            FleetLaunchTemplateConfigRequest::builder()
                .launch_template_specification(spec.build())
                .set_overrides(Some(overrides.collect()))
                .build()
        });
        ops.ec2
            .modify_fleet()
            .fleet_id(id)
            .set_launch_template_configs(Some(configs.collect()))
            .send()
            .await
            .map_err(|e| classify("ModifyFleet", e))?;
    }
    Ok(())
}

/// The fleets, by id; ids EC2 no longer knows are left out.
async fn describe(ops: &Ops, fleet_ids: &[String]) -> Result<Vec<aws_sdk_ec2::types::FleetData>, ProviderError> {
    let fleets = ops::describe_known(fleet_ids, |ids| describe_once(ops, ids)).await?;
    ops.saw_fleets(fleets.iter().filter_map(|f| f.fleet_id()));
    Ok(fleets)
}

/// Of the recorded `ids`, those EC2 does not show and this process never saw (see
/// `Ops::not_shown_yet`). Instant fleets this process made are left out: their answer named
/// their machines, which are what counts. No call without ids.
pub async fn not_shown_yet(ops: &Ops, ids: &[String]) -> Result<Vec<String>, ProviderError> {
    // Only those never seen described need a look.
    let ids: Vec<String> = ops.not_shown_yet(ids, &[]).into_iter().filter(|id| !ops.is_instant(id)).collect();
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let listed = describe(ops, &ids).await?;
    Ok(ops.not_shown_yet(&ids, &listed.iter().filter_map(|f| f.fleet_id()).collect::<Vec<_>>()))
}

async fn describe_once(ops: &Ops, fleet_ids: Vec<String>) -> Result<Vec<aws_sdk_ec2::types::FleetData>, ProviderError> {
    let mut fleets = vec![];
    let mut pages = ops.ec2.describe_fleets().set_fleet_ids(Some(fleet_ids)).into_paginator().send();
    while let Some(page) = pages.next().await {
        fleets.extend(page.map_err(|e| classify("DescribeFleets", e))?.fleets().iter().cloned());
    }
    Ok(fleets)
}

/// Whether a request fleet is still placing or fulfilling its requests: it says so, or it has
/// said nothing yet and is young.
fn fulfilling(f: &aws_sdk_ec2::types::FleetData) -> bool {
    use aws_sdk_ec2::types::FleetActivityStatus;
    match f.activity_status() {
        Some(FleetActivityStatus::PendingFulfillment) => true,
        Some(_) => false,
        None => f.create_time().is_some_and(|t| jiff::Timestamp::now().as_second() - t.secs() < PLACING),
    }
}

/// The fleets among `ids` as the poller keeps them (`fleet_state`); instant fleets found among
/// them are remembered (never described again) and left out.
pub async fn assess(ops: &Ops, ids: &[String]) -> Result<Vec<Described>, ProviderError> {
    let mut out = vec![];
    for f in describe(ops, ids).await? {
        let Some(id) = f.fleet_id() else { continue };
        let kind = match f.r#type() {
            Some(aws_sdk_ec2::types::FleetType::Maintain) => FleetType::Maintain,
            Some(aws_sdk_ec2::types::FleetType::Request) => FleetType::Request,
            _ => {
                // Its errors were recorded from its CreateFleet answer; its instances carry
                // the request's tags.
                ops.remember_instant([id.to_string()]);
                continue;
            }
        };
        let active = f.fleet_state().is_some_and(is_active);
        let target = f.target_capacity_specification().and_then(|t| t.total_target_capacity()).unwrap_or(0);
        let fulfilled = f.fulfilled_capacity().unwrap_or(0.0);
        let outstanding = fleet::outstanding(kind, active, fulfilling(&f), f64::from(target), fulfilled);
        out.push(Described {
            id: id.to_string(),
            finished: f.fleet_state().is_some() && !active,
            working: active,
            outstanding,
            // Short of its target: say why (request and maintain fleets report errors in their
            // history, not in DescribeFleets).
            troubled: outstanding > 0,
            signature: format!("{:?}/{:?}/{target}/{fulfilled}/{outstanding}", f.fleet_state(), f.activity_status()),
            members: None,
        });
    }
    Ok(out)
}

/// The active instances of fleet `id`.
pub async fn members(ops: &Ops, id: &str) -> Result<Vec<String>, ProviderError> {
    ops::follow(|token| async move {
        let out = ops
            .ec2
            .describe_fleet_instances()
            .fleet_id(id)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| classify("DescribeFleetInstances", e))?;
        let ids = out.active_instances().iter().filter_map(|i| i.instance_id()).map(str::to_string).collect();
        Ok((ids, out.next_token().map(str::to_string)))
    })
    .await
}

/// The errors in fleet `id`'s recent history.
pub async fn history_errors(ops: &Ops, id: &str) -> Result<Vec<LaunchFailure>, ProviderError> {
    let out = ops
        .ec2
        .describe_fleet_history()
        .fleet_id(id)
        .start_time(fleet::history_start())
        .event_type(aws_sdk_ec2::types::FleetEventType::ServiceError)
        .send()
        .await
        .map_err(|e| classify("DescribeFleetHistory", e))?;
    let subject = format!("fleet {id}");
    Ok(out
        .history_records()
        .iter()
        .map(|record| fleet::history_failure(record.event_information(), "FleetError", &subject))
        .collect())
}

/// Deletes the request's fleets, terminating their instances, with other requests' deletions
/// made at the same moment; no describe first. When that fails (one of them gone already, or
/// not shown by EC2 yet; another request's failing the shared call), those EC2 describes as
/// still active are deleted on their own. A fleet EC2 does not describe is left to the
/// release's "not shown yet" wait.
pub async fn delete(ops: &Ops, fleet_ids: &[String]) -> Result<(), ProviderError> {
    let ids = ops.not_removed(fleet_ids);
    if ids.is_empty() {
        return Ok(());
    }
    if ops.fleet_deletions.call(ops, &ids).await.is_ok() {
        ops.removed(&ids);
        return Ok(());
    }
    let described = describe(ops, &ids).await?;
    let active: Vec<String> = described
        .iter()
        .filter(|f| f.fleet_state().is_some_and(is_active))
        .filter_map(|f| f.fleet_id().map(str::to_string))
        .collect();
    delete_now(ops, &active).await?;
    ops.removed(&described.iter().filter_map(|f| f.fleet_id().map(str::to_string)).collect::<Vec<_>>());
    Ok(())
}

/// Deletes fleets now, with their instances, in calls of up to `DELETE_BATCH`.
pub async fn delete_now(ops: &Ops, live: &[String]) -> Result<(), ProviderError> {
    for chunk in live.chunks(DELETE_BATCH) {
        tracing::info!(fleets = ?chunk, "deleting fleets with their instances");
        let out = ops
            .ec2
            .delete_fleets()
            .set_fleet_ids(Some(chunk.to_vec()))
            .terminate_instances(true)
            .send()
            .await
            .map_err(|e| classify("DeleteFleets", e))?;
        if let Some(failed) = out.unsuccessful_fleet_deletions().first() {
            let error = failed.error();
            return Err(errors::not_removed(
                "DeleteFleets",
                &format!("fleet {} was not deleted", failed.fleet_id().unwrap_or_default()),
                error.and_then(|e| e.code()).map(|c| c.as_str()),
                error.and_then(|e| e.message()),
                "DeleteFleetFailed",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{InstanceTypeSpec, PriceType};

    use crate::provider::aws::calls::client::offline as client;

    fn template(price_type: PriceType, fleet_type: FleetType) -> MachineTemplateSpec {
        MachineTemplateSpec {
            api: crate::api::Api::Ec2Fleet,
            fleet_type: Some(fleet_type),
            price_type,
            on_demand_base: Some(2),
            on_demand_percent: Some(50),
            max_spot_price: Some("0.09".into()),
            allocation_strategy: Some("capacityOptimizedPrioritized".into()),
            instance_types: vec![
                InstanceTypeSpec { type_: "t3.medium".into(), weight: 2, priority: Some(1) },
                InstanceTypeSpec { type_: "t3.xlarge".into(), weight: 4, priority: Some(0) },
            ],
            subnet_ids: vec!["subnet-a".into(), "subnet-b".into()],
            ..Default::default()
        }
    }

    fn lt() -> LaunchTemplate {
        LaunchTemplate { id: Some("lt-0abc".into()), name: None, version: "1".into(), managed: true }
    }

    /// Every fleet type with every price type: the request the SDK sends.
    #[test]
    fn the_create_call_for_each_fleet_type_and_price_type() {
        let tags = vec![Tag::builder().key("orb.dev/request-uid").value("u-1").build()];
        for fleet_type in [FleetType::Instant, FleetType::Request, FleetType::Maintain] {
            for price_type in [PriceType::OnDemand, PriceType::Spot, PriceType::Heterogeneous] {
                let t = template(price_type, fleet_type);
                let capacity = 10;
                let mix = market_split(&t, capacity, MarketMix::default(), capacity);
                let all = fleet::offerings(&t);
                let lt = lt();
                let call = FleetCall {
                    template: &t,
                    launch_template: &lt,
                    offerings: &all,
                    fleet_type,
                    mix,
                    client_token: "orb-1-abc".into(),
                    tags: &tags,
                };
                let built = configure(client().create_fleet(), &call);
                let input = built.as_input();
                let case = format!("{fleet_type:?}/{price_type:?}");
                assert_eq!(input.get_client_token().as_deref(), Some("orb-1-abc"), "{case}");
                assert_eq!(
                    input.get_type().as_ref().map(|t| t.as_str()),
                    Some(format!("{fleet_type:?}").to_lowercase().as_str()),
                    "{case}"
                );
                let target = input.get_target_capacity_specification().as_ref().unwrap();
                let (od, spot) = match price_type {
                    PriceType::OnDemand => (10, 0),
                    PriceType::Spot => (0, 10),
                    // base 2 + 50% of the other 8
                    PriceType::Heterogeneous => (6, 4),
                };
                assert_eq!(target.total_target_capacity(), Some(10), "{case}: in units");
                let default = if price_type == PriceType::OnDemand { "on-demand" } else { "spot" };
                assert_eq!(target.default_target_capacity_type().map(|d| d.as_str()), Some(default), "{case}");
                assert_eq!(
                    (target.on_demand_target_capacity(), target.spot_target_capacity()),
                    (Some(od), Some(spot)),
                    "{case}"
                );
                let configs = input.get_launch_template_configs().as_ref().unwrap();
                assert_eq!(configs.len(), 1);
                assert_eq!(configs[0].launch_template_specification().unwrap().launch_template_id(), Some("lt-0abc"));
                let overrides: Vec<_> = configs[0]
                    .overrides()
                    .iter()
                    .map(|o| {
                        (
                            o.instance_type().unwrap().as_str().to_string(),
                            o.subnet_id().unwrap().to_string(),
                            o.weighted_capacity().unwrap(),
                            o.priority().unwrap(),
                            o.max_price().map(str::to_string),
                        )
                    })
                    .collect();
                let price = (price_type != PriceType::OnDemand).then(|| "0.09".to_string());
                assert_eq!(
                    overrides,
                    [
                        ("t3.medium".into(), "subnet-a".into(), 2.0, 1.0, price.clone()),
                        ("t3.medium".into(), "subnet-b".into(), 2.0, 1.0, price.clone()),
                        ("t3.xlarge".into(), "subnet-a".into(), 4.0, 0.0, price.clone()),
                        ("t3.xlarge".into(), "subnet-b".into(), 4.0, 0.0, price),
                    ],
                    "{case}: one override per (type, subnet) with weight and priority"
                );
                let spot_options = input.get_spot_options().as_ref().unwrap();
                assert_eq!(
                    spot_options.allocation_strategy().unwrap().as_str(),
                    "capacity-optimized-prioritized",
                    "{case}"
                );
                let od_options = input.get_on_demand_options().as_ref().unwrap();
                assert_eq!(od_options.allocation_strategy().unwrap().as_str(), "prioritized", "{case}");
                let kinds: Vec<_> = input
                    .get_tag_specifications()
                    .as_ref()
                    .unwrap()
                    .iter()
                    .map(|s| s.resource_type().unwrap().as_str().to_string())
                    .collect();
                if fleet_type == FleetType::Instant {
                    assert_eq!(kinds, ["fleet", "instance"], "{case}: EC2 accepts no other kinds here");
                } else {
                    assert_eq!(kinds, ["fleet"], "{case}: EC2 refuses instance tags on request/maintain fleets");
                }
                let maintain = fleet_type == FleetType::Maintain;
                assert_eq!(input.get_replace_unhealthy_instances(), &maintain.then_some(true), "{case}");
                assert_eq!(
                    input.get_excess_capacity_termination_policy().as_ref().map(|p| p.as_str()),
                    maintain.then_some("no-termination"),
                    "{case}: the operator chooses who leaves"
                );
            }
        }
    }

    /// moto answers ModifyFleet with HTTP 500 (not implemented), so the call is proven here.
    #[test]
    fn a_maintain_fleet_is_scaled_to_an_absolute_target_without_the_fleet_choosing_victims() {
        let t = template(PriceType::Heterogeneous, FleetType::Maintain);
        let built = modify_call(client().modify_fleet(), "fleet-1", &t, 12);
        let input = built.as_input();
        assert_eq!(input.get_fleet_id().as_deref(), Some("fleet-1"));
        let target = input.get_target_capacity_specification().as_ref().unwrap();
        // base 2 + 50% of 10 = 7 on-demand, 5 spot
        assert_eq!(
            (target.total_target_capacity(), target.on_demand_target_capacity(), target.spot_target_capacity()),
            (Some(12), Some(7), Some(5))
        );
        assert_eq!(input.get_excess_capacity_termination_policy().as_ref().map(|p| p.as_str()), Some("no-termination"));
        assert!(target.default_target_capacity_type().is_none(), "ModifyFleet changes the numbers only");
    }
}
