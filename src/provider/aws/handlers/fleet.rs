//! What the fleet APIs (EC2 Fleet, Spot Fleet, and Auto Scaling's mixed instances) share: the
//! offerings a template allows — one per (instance type, subnet), with the type's weight and
//! priority — the allocation strategies in each API's spelling, the fleet type a template asks
//! for, how much of a fleet's target is still on its way, and how a failure in an EC2 or Spot
//! Fleet's history is reported, and `Described`: what one describe says of a fleet, spot fleet
//! request or group (the handlers make it, `state::fleet_state` keeps it).

use crate::api::{Api, FleetType, LeftOut, MAX_LEFT_OUT, MachineTemplateSpec, PriceType};
use crate::provider::aws::calls::ops::Ops;
use crate::provider::{LaunchFailure, MarketMix};

/// One (instance type, subnet) a fleet may launch into.
#[derive(Clone, Debug, PartialEq)]
pub struct Offering {
    /// `None` when a given launch template chooses the type.
    pub instance_type: Option<String>,
    /// `None`: the launch template's (or the default VPC's) subnet.
    pub subnet: Option<String>,
    /// Capacity units one machine provides.
    pub weight: u32,
    /// Lower is preferred (`prioritized` strategies): the type's `priority`, else its place in
    /// the list.
    pub priority: f64,
}

/// An offering's (instance type, subnet): how a failed one is excluded.
pub type OfferingKey = (Option<String>, Option<String>);

impl Offering {
    /// The (type, subnet) pair, to exclude an offering that failed.
    pub fn key(&self) -> OfferingKey {
        (self.instance_type.clone(), self.subnet.clone())
    }
}

/// The offerings (per market the attempt launches in) that failed for capacity lately, for a
/// new attempt of `template` to leave out: at most half of `MAX_LEFT_OUT` (the memory is advice;
/// the rest is tried), each counted as a skip. Only for the APIs that pick offerings call by
/// call — RunInstances and instant EC2 Fleets; the others hand the whole list to AWS.
pub async fn left_out(ops: &Ops, template: &MachineTemplateSpec, mix: MarketMix) -> Vec<LeftOut> {
    let picks_offerings = match template.api {
        Api::RunInstances => true,
        Api::Ec2Fleet => fleet_type(template) == FleetType::Instant,
        Api::SpotFleet | Api::Asg => false,
    };
    if !picks_offerings {
        return vec![];
    }
    let markets = [(false, mix.on_demand), (true, mix.spot)].into_iter().filter(|(_, units)| *units > 0);
    let mut out = vec![];
    for (spot, _) in markets {
        for o in offerings(template) {
            if let Some(key) = ops.offering(o.instance_type.as_deref(), o.subnet.as_deref(), spot).await
                && let Some(skip) = ops.capacity.skip(&key)
                && out.len() < MAX_LEFT_OUT / 2
            {
                out.push(LeftOut { instance_type: o.instance_type, subnet: o.subnet, spot, code: skip.code });
            }
        }
    }
    ops.capacity.skipped(out.len());
    out
}

/// How an offering the attempt left out is reported among its launch failures.
pub async fn left_out_failure(ops: &Ops, l: &LeftOut) -> LaunchFailure {
    let zone = match &l.subnet {
        Some(subnet) => ops.zone_of(subnet).await,
        None => None,
    };
    LaunchFailure { code: l.code.clone(), message: l.message(), instance_type: l.instance_type.clone(), zone }
}

/// Every offering of `template`: instance types in list order times subnets.
pub fn offerings(template: &MachineTemplateSpec) -> Vec<Offering> {
    let types: Vec<(Option<String>, u32, f64)> = if template.instance_types.is_empty() {
        vec![(None, 1, 0.0)]
    } else {
        template
            .instance_types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (Some(t.type_.clone()), t.weight.max(1).unsigned_abs(), f64::from(t.priority.unwrap_or(i as i32)))
            })
            .collect()
    };
    let subnets: Vec<Option<String>> = match template.subnet_ids.as_slice() {
        [] => vec![None],
        ids => ids.iter().cloned().map(Some).collect(),
    };
    types
        .iter()
        .flat_map(|(instance_type, weight, priority)| {
            subnets.iter().map(move |subnet| Offering {
                instance_type: instance_type.clone(),
                subnet: subnet.clone(),
                weight: *weight,
                priority: *priority,
            })
        })
        .collect()
}

/// The template's spot allocation strategy in the template's (Spot Fleet's) spelling; price
/// and capacity optimized unless the template says otherwise (AWS's recommendation).
pub fn spot_strategy(template: &MachineTemplateSpec) -> &str {
    template.allocation_strategy.as_deref().unwrap_or("priceCapacityOptimized")
}

/// The template's on-demand allocation strategy in the template's spelling: `prioritized` when
/// any instance type has a priority, else `lowestPrice`.
pub fn on_demand_strategy(template: &MachineTemplateSpec) -> &str {
    match &template.on_demand_allocation_strategy {
        Some(strategy) => strategy,
        None if template.instance_types.iter().any(|t| t.priority.is_some()) => "prioritized",
        None => "lowestPrice",
    }
}

/// A camelCase strategy (`capacityOptimizedPrioritized`) in EC2 Fleet's and Auto Scaling's
/// spelling (`capacity-optimized-prioritized`).
pub fn hyphenated(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The fleet type of a template: as given, else `instant` for EC2 Fleet (the synchronous
/// one) and `request` for Spot Fleet (which has no instant type).
pub fn fleet_type(template: &MachineTemplateSpec) -> FleetType {
    template.fleet_type.unwrap_or(match template.api {
        Api::SpotFleet => FleetType::Request,
        _ => FleetType::Instant,
    })
}

/// Whether a template launches spot at all (and so needs a spot price and strategy).
pub fn uses_spot(template: &MachineTemplateSpec) -> bool {
    template.price_type != PriceType::OnDemand
}

/// Capacity units a fleet still works to launch: for `maintain`, whatever its target exceeds
/// what is fulfilled (it replaces lost machines by itself); for `request`, the same only while
/// it is still fulfilling (once fulfilled it never launches again). Never for a fleet that is
/// no longer active.
pub fn outstanding(fleet_type: FleetType, active: bool, fulfilling: bool, target: f64, fulfilled: f64) -> u32 {
    let working = active && (fleet_type == FleetType::Maintain || (fleet_type == FleetType::Request && fulfilling));
    if !working {
        return 0;
    }
    let missing = (target - fulfilled).ceil();
    if missing > 0.0 { missing as u32 } else { 0 }
}

/// Where a fleet's history is read from for its errors: the last hour.
pub fn history_start() -> aws_sdk_ec2::primitives::DateTime {
    aws_sdk_ec2::primitives::DateTime::from_secs(jiff::Timestamp::now().as_second() - 3600)
}

/// A failure an EC2 Fleet or Spot Fleet history records (the two share its shape), for
/// `subject` ("fleet <id>"), with `fallback_code` when the record names no sub-type.
pub fn history_failure(
    info: Option<&aws_sdk_ec2::types::EventInformation>,
    fallback_code: &str,
    subject: &str,
) -> LaunchFailure {
    LaunchFailure {
        code: info.and_then(|i| i.event_sub_type()).unwrap_or(fallback_code).to_string(),
        message: format!("{subject}: {}", info.and_then(|i| i.event_description()).unwrap_or("no description")),
        instance_type: None,
        zone: None,
    }
}

/// What one describe says of a fleet, spot fleet request or group, reduced to what a view needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Described {
    pub id: String,
    /// Over (deleted, cancelled, failed): it launches nothing more and is not described again.
    pub finished: bool,
    /// Active and holding members worth listing (instant fleets: their instances carry the
    /// request's tags).
    pub working: bool,
    /// Capacity units it is still working to launch.
    pub outstanding: u32,
    /// Whether its errors are worth reading (short of its target, or reporting errors).
    pub troubled: bool,
    /// What, unchanged, means its members and errors are unchanged too.
    pub signature: String,
    /// Members the describe itself names (groups); fleets' members take a call of their own.
    pub members: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::InstanceTypeSpec;

    #[test]
    fn offerings_cross_types_and_subnets_with_weights_and_priorities() {
        let t = MachineTemplateSpec {
            instance_types: vec![
                InstanceTypeSpec { type_: "t3.medium".into(), weight: 2, priority: None },
                InstanceTypeSpec { type_: "t3.xlarge".into(), weight: 4, priority: Some(0) },
            ],
            subnet_ids: vec!["subnet-a".into(), "subnet-b".into()],
            ..Default::default()
        };
        let all = offerings(&t);
        let keys: Vec<_> = all
            .iter()
            .map(|o| (o.instance_type.as_deref().unwrap(), o.subnet.as_deref().unwrap(), o.weight, o.priority))
            .collect();
        assert_eq!(
            keys,
            [
                ("t3.medium", "subnet-a", 2, 0.0),
                ("t3.medium", "subnet-b", 2, 0.0),
                ("t3.xlarge", "subnet-a", 4, 0.0),
                ("t3.xlarge", "subnet-b", 4, 0.0),
            ]
        );
        let bare = offerings(&MachineTemplateSpec::default());
        assert_eq!(bare, [Offering { instance_type: None, subnet: None, weight: 1, priority: 0.0 }]);
    }

    #[test]
    fn strategies_are_spelled_per_api() {
        assert_eq!(hyphenated("lowestPrice"), "lowest-price");
        assert_eq!(hyphenated("capacityOptimizedPrioritized"), "capacity-optimized-prioritized");
        assert_eq!(hyphenated("priceCapacityOptimized"), "price-capacity-optimized");
        assert_eq!(hyphenated("diversified"), "diversified");
        assert_eq!(hyphenated("prioritized"), "prioritized");
        let t = MachineTemplateSpec::default();
        assert_eq!(spot_strategy(&t), "priceCapacityOptimized");
        assert_eq!(on_demand_strategy(&t), "lowestPrice");
    }

    #[test]
    fn fleets_default_to_the_type_each_api_supports() {
        let ec2 = MachineTemplateSpec { api: Api::Ec2Fleet, ..Default::default() };
        assert_eq!(fleet_type(&ec2), FleetType::Instant);
        let spot = MachineTemplateSpec { api: Api::SpotFleet, ..Default::default() };
        assert_eq!(fleet_type(&spot), FleetType::Request);
        let given = MachineTemplateSpec { fleet_type: Some(FleetType::Maintain), ..spot };
        assert_eq!(fleet_type(&given), FleetType::Maintain);
    }

    #[test]
    fn only_working_fleets_have_outstanding_units() {
        assert_eq!(outstanding(FleetType::Maintain, true, false, 10.0, 6.0), 4, "maintain replaces lost machines");
        assert_eq!(outstanding(FleetType::Request, true, true, 10.0, 6.0), 4);
        assert_eq!(outstanding(FleetType::Request, true, false, 10.0, 6.0), 0, "a fulfilled request fleet is done");
        assert_eq!(outstanding(FleetType::Maintain, false, false, 10.0, 6.0), 0, "deleted fleets launch nothing");
        assert_eq!(outstanding(FleetType::Instant, true, true, 10.0, 6.0), 0);
        assert_eq!(outstanding(FleetType::Maintain, true, false, 10.0, 12.0), 0, "weights may overshoot");
        assert_eq!(outstanding(FleetType::Maintain, true, false, 10.0, 9.5), 1);
    }
}
