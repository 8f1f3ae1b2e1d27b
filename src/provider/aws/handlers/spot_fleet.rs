//! The Spot Fleet handler. RequestSpotFleet with the template's launch template and one
//! override per (instance type, subnet) carrying weight and priority, target and on-demand
//! capacity in units, the allocation strategies in this API's (camelCase) spelling — always
//! set — the fleet role, `request` or `maintain`, and the attempt's ClientToken. The request
//! is tagged; its instances are tagged through the launch template and found through the fleet.
//!
//! `request` fleets are one per attempt and never replace machines; a `maintain` fleet is one
//! per request and is scaled — and lowered before a return — with ModifySpotFleetRequest (an
//! absolute target, the fleet never choosing victims). Release cancels every active request of
//! the request with its instances, including one still provisioning.

use super::fleet;
use super::fleet::Described;
use super::launch_template::LaunchTemplate;
use crate::api::{FleetType, MachineTemplateSpec};
use crate::provider::aws::calls::errors::{self, classify};
use crate::provider::aws::calls::ops::{self, Ops};
use crate::provider::{
    LaunchFailure, MarketMix, Owner, ProviderError, ProvisionOutcome, ProvisionRequest, market_split, target_of,
};
use aws_sdk_ec2::types::{
    ActivityStatus, AllocationStrategy, BatchState, ExcessCapacityTerminationPolicy, FleetLaunchTemplateSpecification,
    InstanceInterruptionBehavior, InstanceType, LaunchTemplateConfig, LaunchTemplateOverrides,
    OnDemandAllocationStrategy, ResourceType, SpotFleetRequestConfig, SpotFleetRequestConfigData, Tag,
    TagSpecification,
};

/// The role Spot Fleet uses when the template names none: the service-linked role.
pub const SERVICE_LINKED_ROLE: &str = "AWSServiceRoleForEC2SpotFleet";
/// Spot Fleet requests per CancelSpotFleetRequests call (EC2's limit is 100).
const CANCEL_BATCH: usize = 100;
/// A request that has not reported its activity this long after its creation is not placing
/// requests any more (moto never reports one).
const PLACING: i64 = 120;

/// The role name to look up for `spotFleetRole` (an ARN is used as it is): the name given —
/// `AWSServiceRoleForEC2SpotFleet` is the service-linked role's, `AmazonEC2SpotFleetTaggingRole`
/// the one AWS guides have users create — or the service-linked role when none is given.
pub fn role_name(template: &MachineTemplateSpec) -> Option<&str> {
    match template.spot_fleet_role.as_deref() {
        Some(arn) if arn.starts_with("arn:") => None,
        Some(name) => Some(name),
        None => Some(SERVICE_LINKED_ROLE),
    }
}

impl Ops {
    /// The ARN of the template's Spot Fleet role (GetRole for a name; a launch reuses what an
    /// earlier lookup found, validation always asks).
    pub async fn spot_fleet_role(&self, template: &MachineTemplateSpec, fresh: bool) -> Result<String, ProviderError> {
        let Some(name) = role_name(template) else { return Ok(template.spot_fleet_role.clone().unwrap_or_default()) };
        let known = self.spot_fleet_roles.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned();
        if let (Some(arn), false) = (known, fresh) {
            return Ok(arn);
        }
        let out = self.iam.get_role().role_name(name).send().await.map_err(|e| match classify("GetRole", e) {
            ProviderError::NotFound { code, message } => ProviderError::invalid(
                "spec.spotFleetRole",
                code,
                format!("{message} (role {name}; create it, or name an existing role)"),
            ),
            other => other,
        })?;
        let arn = out.role().map(|r| r.arn().to_string()).unwrap_or_default();
        self.spot_fleet_roles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), arn.clone());
        Ok(arn)
    }
}

/// One RequestSpotFleet configuration.
pub struct SpotFleetCall<'a> {
    pub template: &'a MachineTemplateSpec,
    pub launch_template: &'a LaunchTemplate,
    pub role_arn: &'a str,
    pub fleet_type: FleetType,
    pub mix: MarketMix,
    pub client_token: &'a str,
    pub tags: &'a [Tag],
}

/// The configuration of a spot fleet request.
pub fn config(c: &SpotFleetCall<'_>) -> SpotFleetRequestConfigData {
    let t = c.template;
    let lt = FleetLaunchTemplateSpecification::builder()
        .set_launch_template_id(c.launch_template.id.clone())
        .set_launch_template_name(c.launch_template.name.clone())
        .version(&c.launch_template.version)
        .build();
    let overrides = fleet::offerings(t)
        .into_iter()
        .map(|o| {
            LaunchTemplateOverrides::builder()
                .set_instance_type(o.instance_type.as_deref().map(InstanceType::from))
                .set_subnet_id(o.subnet)
                .weighted_capacity(f64::from(o.weight))
                .priority(o.priority)
                .build()
        })
        .collect();
    let maintain = c.fleet_type == FleetType::Maintain;
    SpotFleetRequestConfigData::builder()
        .iam_fleet_role(c.role_arn)
        .r#type(if maintain { aws_sdk_ec2::types::FleetType::Maintain } else { aws_sdk_ec2::types::FleetType::Request })
        .client_token(c.client_token)
        .target_capacity((c.mix.on_demand + c.mix.spot) as i32)
        .on_demand_target_capacity(c.mix.on_demand as i32)
        .allocation_strategy(AllocationStrategy::from(fleet::spot_strategy(t)))
        .on_demand_allocation_strategy(OnDemandAllocationStrategy::from(fleet::on_demand_strategy(t)))
        .set_spot_price(t.max_spot_price.clone())
        .launch_template_configs(
            LaunchTemplateConfig::builder().launch_template_specification(lt).set_overrides(Some(overrides)).build(),
        )
        .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
        .excess_capacity_termination_policy(ExcessCapacityTerminationPolicy::NoTermination)
        .replace_unhealthy_instances(maintain)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::SpotFleetRequest)
                .set_tags(Some(c.tags.to_vec()))
                .build(),
        )
        .build()
}

/// Provisions the attempt through Spot Fleet.
pub async fn provision(ops: &Ops, request: &ProvisionRequest<'_>) -> Result<ProvisionOutcome, ProviderError> {
    let template = request.template;
    let kind = fleet::fleet_type(template);
    let units = request.mix.on_demand + request.mix.spot;
    let recorded = &request.resources.spot_fleet_request_ids;
    if kind == FleetType::Maintain && !recorded.is_empty() {
        let configs = describe(ops, recorded).await?;
        if let Some(id) = select(&configs, Wanted::Maintain { template_says: true }).into_iter().next() {
            set_target(ops, &id, template, target_of(request)).await?;
            return Ok(ProvisionOutcome { accepted_units: units, ..Default::default() });
        }
        // A recorded request the listing does not show yet may be the maintain fleet: wait for
        // it rather than make a second one.
        if let Some(unlisted) =
            recorded.iter().find(|id| !configs.iter().any(|c| c.spot_fleet_request_id() == Some(id.as_str())))
        {
            return Err(ProviderError::Transient {
                code: "SpotFleetNotListedYet".into(),
                message: format!("spot fleet request {unlisted} is recorded but not listed yet; waiting for it"),
            });
        }
    }
    let lt = ops.launch_template(request.owner, template).await?;
    if request.replay {
        // The create whose answer was lost may have made one: adopt it rather than ask again
        // (EC2 would answer the same token with it; an emulator that ignores tokens would not).
        let found: Vec<String> =
            unrecorded(ops, request.owner, recorded).await?.into_iter().map(|(id, _)| id).collect();
        if !found.is_empty() {
            tracing::info!(request = %request.owner.key(), spot_fleet_requests = ?found, "adopting the spot fleet requests of a create whose answer was lost, instead of creating again");
            let mut outcome = ProvisionOutcome { accepted_units: units, ..Default::default() };
            outcome.resources.launch_template_id = lt.id.clone().filter(|_| lt.managed);
            outcome.resources.spot_fleet_request_ids = found;
            return Ok(outcome);
        }
    }
    let role_arn = ops.spot_fleet_role(template, false).await?;
    let tags = ops::resource_tags(request.owner, &ops.cluster_id, &template.tags);
    let call = SpotFleetCall {
        template,
        launch_template: &lt,
        role_arn: &role_arn,
        fleet_type: kind,
        mix: request.mix,
        client_token: request.client_token,
        tags: &tags,
    };
    let out = ops
        .ec2
        .request_spot_fleet()
        .spot_fleet_request_config(config(&call))
        .send()
        .await
        .map_err(|e| ops.launch_template_gone(&lt, classify("RequestSpotFleet", e)))?;
    let mut outcome = ProvisionOutcome { accepted_units: units, ..Default::default() };
    outcome.resources.launch_template_id = lt.id.clone().filter(|_| lt.managed);
    outcome.resources.spot_fleet_request_ids.extend(out.spot_fleet_request_id().map(str::to_string));
    Ok(outcome)
}

/// The active spot fleet requests tagged with `owner`'s uid (and this cluster) that `recorded`
/// does not list, each with the launch template it launches from: what a RequestSpotFleet
/// whose answer was lost made. Asked only when an attempt's outcome is unknown, from a listing
/// of the account's active spot fleet requests shared with the requests asking at the same
/// moment (`Ops::spot_fleet_listing`).
pub async fn unrecorded(
    ops: &Ops,
    owner: &Owner,
    recorded: &[String],
) -> Result<Vec<(String, Option<String>)>, ProviderError> {
    let listed = ops.spot_fleet_listing.call(ops).await?;
    let out = listed
        .iter()
        .filter(|r| ops::tagged_for(r.tags(), owner, &ops.cluster_id))
        .filter_map(|r| {
            let id = r.spot_fleet_request_id().filter(|id| !recorded.iter().any(|known| known == id))?;
            let launch_template = r
                .spot_fleet_request_config()
                .into_iter()
                .flat_map(|c| c.launch_template_configs())
                .find_map(|c| c.launch_template_specification()?.launch_template_id())
                .map(str::to_string);
            Some((id.to_string(), launch_template))
        })
        .collect();
    Ok(out)
}

/// The account's active spot fleet requests, every page: DescribeSpotFleetRequests filters by
/// no tag.
pub async fn list_active(ops: &Ops) -> Result<Vec<SpotFleetRequestConfig>, ProviderError> {
    let mut pages = ops.ec2.describe_spot_fleet_requests().into_paginator().send();
    let mut active = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("DescribeSpotFleetRequests", e))?;
        active.extend(
            page.spot_fleet_request_configs()
                .iter()
                .filter(|r| r.spot_fleet_request_state().is_some_and(is_active))
                .cloned(),
        );
    }
    Ok(active)
}

pub fn is_active(state: &BatchState) -> bool {
    matches!(state, BatchState::Submitted | BatchState::Active | BatchState::Modifying)
}

fn kind_of(config: &SpotFleetRequestConfig) -> FleetType {
    match config.spot_fleet_request_config().and_then(|c| c.r#type()) {
        Some(aws_sdk_ec2::types::FleetType::Maintain) => FleetType::Maintain,
        _ => FleetType::Request,
    }
}

/// Points the active `maintain` spot fleet requests among `ids` that launch from launch template
/// `lt` at the marked `version`, overrides unchanged (see `ec2_fleet::launch_from`).
pub async fn launch_from(
    ops: &Ops,
    ids: &[String],
    lt: &str,
    version: &tokio::sync::OnceCell<String>,
) -> Result<(), ProviderError> {
    if ids.is_empty() {
        return Ok(());
    }
    let maintained = describe(ops, ids)
        .await?
        .into_iter()
        .filter(|c| kind_of(c) == FleetType::Maintain && c.spot_fleet_request_state().is_some_and(is_active));
    for c in maintained {
        let ours: Vec<&LaunchTemplateConfig> = c
            .spot_fleet_request_config()
            .map(|d| d.launch_template_configs())
            .unwrap_or_default()
            .iter()
            .filter(|lc| lc.launch_template_specification().and_then(|s| s.launch_template_id()) == Some(lt))
            .collect();
        let Some(id) = c.spot_fleet_request_id().filter(|_| !ours.is_empty()) else { continue };
        let version = version.get_or_try_init(|| ops.orphaned_version(lt)).await?;
        let configs = ours.iter().map(|lc| {
            let spec = FleetLaunchTemplateSpecification::builder().launch_template_id(lt).version(version).build();
            LaunchTemplateConfig::builder()
                .launch_template_specification(spec)
                .set_overrides(Some(lc.overrides().to_vec()))
                .build()
        });
        ops.ec2
            .modify_spot_fleet_request()
            .spot_fleet_request_id(id)
            .set_launch_template_configs(Some(configs.collect()))
            .send()
            .await
            .map_err(|e| classify("ModifySpotFleetRequest", e))?;
    }
    Ok(())
}

/// The spot fleet requests, by id; ids EC2 no longer knows (deleted 48 hours after their
/// cancellation) are left out.
async fn describe(ops: &Ops, ids: &[String]) -> Result<Vec<SpotFleetRequestConfig>, ProviderError> {
    let configs = ops::describe_known(ids, |ids| describe_once(ops, ids)).await?;
    ops.saw_fleets(configs.iter().filter_map(|c| c.spot_fleet_request_id()));
    Ok(configs)
}

/// Of the recorded `ids`, those EC2 does not show and this process never saw (see
/// `Ops::not_shown_yet`). No call without ids.
pub async fn not_shown_yet(ops: &Ops, ids: &[String]) -> Result<Vec<String>, ProviderError> {
    // Only those never seen described need a look.
    let ids = ops.not_shown_yet(ids, &[]);
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let listed = describe(ops, &ids).await?;
    Ok(ops.not_shown_yet(&ids, &listed.iter().filter_map(|c| c.spot_fleet_request_id()).collect::<Vec<_>>()))
}

async fn describe_once(ops: &Ops, ids: Vec<String>) -> Result<Vec<SpotFleetRequestConfig>, ProviderError> {
    let mut all = vec![];
    let mut pages =
        ops.ec2.describe_spot_fleet_requests().set_spot_fleet_request_ids(Some(ids)).into_paginator().send();
    while let Some(page) = pages.next().await {
        all.extend(
            page.map_err(|e| classify("DescribeSpotFleetRequests", e))?.spot_fleet_request_configs().iter().cloned(),
        );
    }
    Ok(all)
}

/// Whether a request is still placing or fulfilling: it says so, or has said nothing yet and
/// is young.
fn fulfilling(c: &SpotFleetRequestConfig) -> bool {
    match c.activity_status() {
        Some(ActivityStatus::PendingFulfillment) => true,
        Some(_) => false,
        None => c.create_time().is_some_and(|t| jiff::Timestamp::now().as_second() - t.secs() < PLACING),
    }
}

/// Which active requests `active` looks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Any,
    /// `maintain` ones; a request whose type the answer omits is taken to be of the template's
    /// type (`true`: maintain).
    Maintain {
        template_says: bool,
    },
}

/// The active requests among `ids` that are `wanted`.
async fn active(ops: &Ops, ids: &[String], wanted: Wanted) -> Result<Vec<String>, ProviderError> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    Ok(select(&describe(ops, ids).await?, wanted))
}

/// The ids of the active requests among `configs` that are `wanted`.
fn select(configs: &[SpotFleetRequestConfig], wanted: Wanted) -> Vec<String> {
    configs
        .iter()
        .filter(|c| c.spot_fleet_request_state().is_some_and(is_active))
        .filter(|c| match wanted {
            Wanted::Any => true,
            Wanted::Maintain { template_says } => c
                .spot_fleet_request_config()
                .and_then(|d| d.r#type())
                .map_or(template_says, |t| *t == aws_sdk_ec2::types::FleetType::Maintain),
        })
        .filter_map(|c| c.spot_fleet_request_id().map(str::to_string))
        .collect()
}

/// Sets a maintain spot fleet's target to `units`, split by market as the template asks.
pub fn modify_call(
    call: aws_sdk_ec2::operation::modify_spot_fleet_request::builders::ModifySpotFleetRequestFluentBuilder,
    id: &str,
    template: &MachineTemplateSpec,
    units: u32,
) -> aws_sdk_ec2::operation::modify_spot_fleet_request::builders::ModifySpotFleetRequestFluentBuilder {
    let mix = market_split(template, units, MarketMix::default(), units);
    call.spot_fleet_request_id(id)
        .target_capacity(units as i32)
        .on_demand_target_capacity(mix.on_demand as i32)
        .excess_capacity_termination_policy(ExcessCapacityTerminationPolicy::NoTermination)
}

async fn set_target(ops: &Ops, id: &str, template: &MachineTemplateSpec, units: u32) -> Result<(), ProviderError> {
    tracing::info!(spot_fleet_request = id, units, "setting the maintain spot fleet's target");
    modify_call(ops.ec2.modify_spot_fleet_request(), id, template, units)
        .send()
        .await
        .map(drop)
        .map_err(|e| classify("ModifySpotFleetRequest", e))
}

/// Lowers the request's maintain spot fleet (if any) to `units` before machines are terminated.
pub async fn before_return(
    ops: &Ops,
    ids: &[String],
    template: &MachineTemplateSpec,
    units: u32,
) -> Result<(), ProviderError> {
    let template_says = fleet::fleet_type(template) == FleetType::Maintain;
    for id in active(ops, ids, Wanted::Maintain { template_says }).await? {
        set_target(ops, &id, template, units).await?;
    }
    Ok(())
}

/// The spot fleet requests among `ids` as the poller keeps them (`fleet_state`).
pub async fn assess(ops: &Ops, ids: &[String]) -> Result<Vec<Described>, ProviderError> {
    let mut out = vec![];
    for c in describe(ops, ids).await? {
        let Some(id) = c.spot_fleet_request_id() else { continue };
        let active = c.spot_fleet_request_state().is_some_and(is_active);
        let data = c.spot_fleet_request_config();
        let target = data.and_then(|d| d.target_capacity()).unwrap_or(0);
        let fulfilled = data.and_then(|d| d.fulfilled_capacity()).unwrap_or(0.0);
        let outstanding = fleet::outstanding(kind_of(&c), active, fulfilling(&c), f64::from(target), fulfilled);
        out.push(Described {
            id: id.to_string(),
            finished: c.spot_fleet_request_state().is_some() && !active,
            working: active,
            outstanding,
            troubled: c.activity_status() == Some(&ActivityStatus::Error),
            signature: format!(
                "{:?}/{:?}/{target}/{fulfilled}/{outstanding}",
                c.spot_fleet_request_state(),
                c.activity_status()
            ),
            members: None,
        });
    }
    Ok(out)
}

/// The active instances of spot fleet request `id`.
pub async fn members(ops: &Ops, id: &str) -> Result<Vec<String>, ProviderError> {
    ops::follow(|token| async move {
        let out = ops
            .ec2
            .describe_spot_fleet_instances()
            .spot_fleet_request_id(id)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| classify("DescribeSpotFleetInstances", e))?;
        let ids = out.active_instances().iter().filter_map(|i| i.instance_id()).map(str::to_string).collect();
        Ok((ids, out.next_token().map(str::to_string)))
    })
    .await
}

/// The errors in spot fleet request `id`'s recent history (read when it reports errors).
pub async fn errors(ops: &Ops, id: &str) -> Result<Vec<LaunchFailure>, ProviderError> {
    let out = ops
        .ec2
        .describe_spot_fleet_request_history()
        .spot_fleet_request_id(id)
        .start_time(fleet::history_start())
        .event_type(aws_sdk_ec2::types::EventType::Error)
        .send()
        .await
        .map_err(|e| classify("DescribeSpotFleetRequestHistory", e))?;
    let subject = format!("spot fleet request {id}");
    Ok(out
        .history_records()
        .iter()
        .map(|record| fleet::history_failure(record.event_information(), "SpotFleetError", &subject))
        .collect())
}

/// Cancels the request's active spot fleet requests, terminating their instances (a request
/// still provisioning included).
pub async fn cancel(ops: &Ops, ids: &[String]) -> Result<(), ProviderError> {
    let ids = ops.not_removed(ids);
    if ids.is_empty() {
        return Ok(());
    }
    // With other requests' cancellations made at the same moment, no describe first; when that
    // fails, those EC2 describes as still active on their own (see `ec2_fleet::delete`).
    if ops.spot_cancellations.call(ops, &ids).await.is_ok() {
        ops.removed(&ids);
        return Ok(());
    }
    let described = describe(ops, &ids).await?;
    cancel_now(ops, &select(&described, Wanted::Any)).await?;
    ops.removed(&described.iter().filter_map(|c| c.spot_fleet_request_id().map(str::to_string)).collect::<Vec<_>>());
    Ok(())
}

/// Cancels spot fleet requests now, with their instances, in calls of up to `CANCEL_BATCH`.
pub async fn cancel_now(ops: &Ops, live: &[String]) -> Result<(), ProviderError> {
    for chunk in live.chunks(CANCEL_BATCH) {
        tracing::info!(spot_fleet_requests = ?chunk, "cancelling spot fleet requests with their instances");
        let out = ops
            .ec2
            .cancel_spot_fleet_requests()
            .set_spot_fleet_request_ids(Some(chunk.to_vec()))
            .terminate_instances(true)
            .send()
            .await
            .map_err(|e| classify("CancelSpotFleetRequests", e))?;
        if let Some(failed) = out.unsuccessful_fleet_requests().first() {
            let error = failed.error();
            return Err(errors::not_removed(
                "CancelSpotFleetRequests",
                &format!("{} was not cancelled", failed.spot_fleet_request_id().unwrap_or_default()),
                error.and_then(|e| e.code()).map(|c| c.as_str()),
                error.and_then(|e| e.message()),
                "CancelFailed",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Api, InstanceTypeSpec, PriceType};

    fn template(price_type: PriceType, fleet_type: FleetType) -> MachineTemplateSpec {
        MachineTemplateSpec {
            api: Api::SpotFleet,
            fleet_type: Some(fleet_type),
            price_type,
            on_demand_percent: Some(30),
            max_spot_price: Some("0.07".into()),
            instance_types: vec![
                InstanceTypeSpec { type_: "t3.medium".into(), weight: 2, priority: None },
                InstanceTypeSpec { type_: "t3.xlarge".into(), weight: 4, priority: None },
            ],
            subnet_ids: vec!["subnet-a".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_spot_fleet_request_for_each_fleet_type_and_price_type() {
        let lt = LaunchTemplate { id: Some("lt-1".into()), name: None, version: "1".into(), managed: true };
        let tags = vec![Tag::builder().key("orb.dev/request-uid").value("u-1").build()];
        for fleet_type in [FleetType::Request, FleetType::Maintain] {
            for price_type in [PriceType::OnDemand, PriceType::Spot, PriceType::Heterogeneous] {
                let t = template(price_type, fleet_type);
                let mix = market_split(&t, 10, MarketMix::default(), 10);
                let call = SpotFleetCall {
                    template: &t,
                    launch_template: &lt,
                    role_arn: "arn:aws:iam::123456789012:role/aws-service-role/spotfleet.amazonaws.com/AWSServiceRoleForEC2SpotFleet",
                    fleet_type,
                    mix,
                    client_token: "orb-2-abc",
                    tags: &tags,
                };
                let c = config(&call);
                let case = format!("{fleet_type:?}/{price_type:?}");
                assert_eq!(c.client_token(), Some("orb-2-abc"), "{case}");
                assert_eq!(c.target_capacity(), Some(10), "{case}: in units");
                let od = match price_type {
                    PriceType::OnDemand => 10,
                    PriceType::Spot => 0,
                    PriceType::Heterogeneous => 3,
                };
                assert_eq!(c.on_demand_target_capacity(), Some(od), "{case}");
                assert_eq!(
                    c.allocation_strategy().map(|s| s.as_str()),
                    Some("priceCapacityOptimized"),
                    "{case}: always set, camelCase"
                );
                assert_eq!(c.on_demand_allocation_strategy().map(|s| s.as_str()), Some("lowestPrice"), "{case}");
                assert_eq!(c.r#type().map(|t| t.as_str()), Some(format!("{fleet_type:?}").to_lowercase().as_str()));
                assert_eq!(c.spot_price(), Some("0.07"));
                assert_eq!(c.replace_unhealthy_instances(), Some(fleet_type == FleetType::Maintain));
                assert_eq!(c.excess_capacity_termination_policy().map(|p| p.as_str()), Some("noTermination"));
                let config = &c.launch_template_configs()[0];
                assert_eq!(config.launch_template_specification().unwrap().launch_template_id(), Some("lt-1"));
                let overrides: Vec<_> = config
                    .overrides()
                    .iter()
                    .map(|o| {
                        (
                            o.instance_type().unwrap().as_str(),
                            o.subnet_id().unwrap(),
                            o.weighted_capacity().unwrap(),
                            o.priority().unwrap(),
                        )
                    })
                    .collect();
                assert_eq!(
                    overrides,
                    [("t3.medium", "subnet-a", 2.0, 0.0), ("t3.xlarge", "subnet-a", 4.0, 1.0)],
                    "{case}"
                );
                let spec = &c.tag_specifications()[0];
                assert_eq!(spec.resource_type().map(|r| r.as_str()), Some("spot-fleet-request"));
                assert_eq!(spec.tags()[0].key(), Some("orb.dev/request-uid"));
            }
        }
    }

    #[test]
    fn role_names_are_looked_up_and_none_means_the_service_linked_role() {
        let with = |role: Option<&str>| MachineTemplateSpec {
            spot_fleet_role: role.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(role_name(&with(None)), Some(SERVICE_LINKED_ROLE));
        assert_eq!(role_name(&with(Some("AmazonEC2SpotFleetTaggingRole"))), Some("AmazonEC2SpotFleetTaggingRole"));
        assert_eq!(role_name(&with(Some("my-fleet-role"))), Some("my-fleet-role"));
        assert_eq!(role_name(&with(Some("arn:aws:iam::1:role/x"))), None);
    }

    #[test]
    fn a_maintain_spot_fleet_is_scaled_to_an_absolute_target() {
        let client = crate::provider::aws::calls::client::offline();
        let t = template(PriceType::Heterogeneous, FleetType::Maintain);
        let built = modify_call(client.modify_spot_fleet_request(), "sfr-1", &t, 10);
        let input = built.as_input();
        assert_eq!((input.get_target_capacity(), input.get_on_demand_target_capacity()), (&Some(10), &Some(3)));
        assert_eq!(input.get_excess_capacity_termination_policy().as_ref().map(|p| p.as_str()), Some("noTermination"));
    }
}
