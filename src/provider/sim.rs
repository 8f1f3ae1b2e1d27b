//! The simulated cloud (`type: sim`): an in-process stand-in for EC2 with EC2-shaped instance
//! ids, `pending` -> `running` after a configurable delay, `shutting-down` -> `terminated` after
//! another, injected `InsufficientInstanceCapacity` per instance type, and client-token
//! idempotency like AWS's. It is the zero-setup default for demos and the fake behind controller
//! tests.
//!
//! Its state lives in the operator's memory: a restart forgets every simulated machine.

use super::{
    FleetView, Holdings, InstanceState, LaunchFailure, MarketMix, ObservedMachine, Owner, Provider, ProviderError,
    ProvisionOutcome, ProvisionRequest, Released, ReturnRequest, machines_for, spot_after_on_demand,
};
use crate::api::{InstanceTypeFacts, LeftOut, MachineTemplateSpec, Resources};
use crate::config::SimSettings;
use jiff::{SignedDuration, Timestamp};
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// How long terminated machines stay visible, like EC2's roughly one hour.
const TERMINATED_RETENTION: SignedDuration = SignedDuration::from_hours(1);

struct SimInstance {
    owner_uid: String,
    instance_type: String,
    subnet_id: Option<String>,
    zone: String,
    spot: bool,
    private_ip: String,
    launched_at: Timestamp,
    terminate_requested_at: Option<Timestamp>,
    /// Whether the tag listing (`describe`) finds it; `untag` clears it, as a tag policy would.
    tagged: bool,
}

#[derive(Default)]
struct Cloud {
    instances: BTreeMap<String, SimInstance>,
    /// client token -> instances launched with it.
    tokens: BTreeMap<String, Vec<String>>,
    next_ip: u32,
}

/// The simulated provider.
pub struct SimProvider {
    settings: SimSettings,
    cloud: Mutex<Cloud>,
    /// Every call that would change the cloud fails, as with broken credentials (tests).
    unreachable: std::sync::atomic::AtomicBool,
}

impl SimProvider {
    pub fn new(settings: SimSettings) -> Self {
        Self { settings, cloud: Mutex::new(Cloud::default()), unreachable: Default::default() }
    }

    /// Makes the cloud unreachable (or reachable again): releases and orphan marks fail.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, std::sync::atomic::Ordering::Relaxed);
    }

    fn reachable(&self) -> Result<(), ProviderError> {
        if self.unreachable.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ProviderError::Auth {
                code: "AuthFailure".into(),
                message: "AWS was not able to validate the provided access credentials (simulated)".into(),
            });
        }
        Ok(())
    }

    fn cloud(&self) -> std::sync::MutexGuard<'_, Cloud> {
        // A panic while holding the lock leaves consistent data (every write is one insert).
        self.cloud.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn state_of(&self, instance: &SimInstance, now: Timestamp) -> InstanceState {
        match instance.terminate_requested_at {
            Some(at) if now >= at + self.settings.terminating() => InstanceState::Terminated,
            Some(_) => InstanceState::ShuttingDown,
            None if now >= instance.launched_at + self.settings.pending() => InstanceState::Running,
            None => InstanceState::Pending,
        }
    }

    fn observed(&self, id: &str, instance: &SimInstance, now: Timestamp) -> ObservedMachine {
        let state = self.state_of(instance, now);
        ObservedMachine {
            instance_type: Some(instance.instance_type.clone()),
            capacity_type: Some(if instance.spot { "spot" } else { "on-demand" }.into()),
            zone: Some(instance.zone.clone()),
            subnet_id: instance.subnet_id.clone(),
            private_ip: (state != InstanceState::Terminated).then(|| instance.private_ip.clone()),
            // EC2's shape: ip-<address with dashes>.<domain>.
            private_dns_name: Some(format!("ip-{}.sim.internal", instance.private_ip.replace('.', "-"))),
            public_ip: None,
            launch_time: Some(instance.launched_at),
            state_reason: instance
                .terminate_requested_at
                .map(|_| "Client.UserInitiatedShutdown: User initiated shutdown".into()),
            ..ObservedMachine::new(id, state)
        }
    }

    /// Terminates machines as if from outside the operator (the console, a spot reclaim).
    /// Returns whether the machine existed.
    pub fn terminate_externally(&self, instance_id: &str) -> bool {
        let mut cloud = self.cloud();
        match cloud.instances.get_mut(instance_id) {
            Some(instance) => {
                instance.terminate_requested_at.get_or_insert(Timestamp::now());
                true
            }
            None => false,
        }
    }

    /// Removes a machine from the tag listing while it keeps running, as a tag policy stripping
    /// `orb.dev/*` tags would. Returns whether the machine existed.
    pub fn untag(&self, instance_id: &str) -> bool {
        self.cloud().instances.get_mut(instance_id).map(|i| i.tagged = false).is_some()
    }

    /// How many instances the owner has that are pending or running (tests, demos).
    pub fn live_count(&self, owner_uid: &str) -> usize {
        let now = Timestamp::now();
        let cloud = self.cloud();
        cloud.instances.values().filter(|i| i.owner_uid == owner_uid && self.state_of(i, now).is_live()).count()
    }

    /// Launches `units` in one market on the first listed type with capacity; returns the ids
    /// and the units they provide.
    fn launch_market(
        &self,
        cloud: &mut Cloud,
        request: &ProvisionRequest<'_>,
        units: u32,
        spot: bool,
        now: Timestamp,
        failures: &mut Vec<LaunchFailure>,
    ) -> (Vec<String>, u32) {
        if units == 0 {
            return (vec![], 0);
        }
        for it in &request.template.instance_types {
            if self.settings.insufficient_capacity.contains(&it.type_) {
                failures.push(LaunchFailure {
                    code: "InsufficientInstanceCapacity".into(),
                    message: format!("We currently do not have sufficient {} capacity (simulated).", it.type_),
                    instance_type: Some(it.type_.clone()),
                    zone: None,
                });
                continue;
            }
            let subnets = &request.template.subnet_ids;
            let mut ids = vec![];
            let count = machines_for(units, it.weight.unsigned_abs());
            for n in 0..count {
                let id = new_instance_id(&cloud.instances);
                let slot = n as usize % subnets.len().max(1);
                cloud.next_ip += 1;
                let ip = cloud.next_ip;
                cloud.instances.insert(
                    id.clone(),
                    SimInstance {
                        owner_uid: request.owner.uid.clone(),
                        instance_type: it.type_.clone(),
                        subnet_id: subnets.get(slot).cloned(),
                        zone: format!("sim-1{}", (b'a' + (slot % 3) as u8) as char),
                        spot,
                        private_ip: format!("10.{}.{}.{}", (ip >> 16) & 255, (ip >> 8) & 255, ip & 255),
                        launched_at: now,
                        terminate_requested_at: None,
                        tagged: true,
                    },
                );
                ids.push(id);
            }
            return (ids, count * it.weight.max(1).unsigned_abs());
        }
        (vec![], 0)
    }
}

/// A fresh id shaped like EC2's: `i-` and 17 hex digits.
fn new_instance_id(existing: &BTreeMap<String, SimInstance>) -> String {
    let mut rng = rand::rng();
    loop {
        let id = format!("i-{:017x}", rng.random::<u128>() & ((1u128 << 68) - 1));
        if !existing.contains_key(&id) {
            return id;
        }
    }
}

impl Provider for SimProvider {
    async fn health(&self) -> Result<String, ProviderError> {
        Ok("simulated cloud (in memory)".into())
    }

    /// The simulator has no resources to look up: a template is valid when its fields have
    /// the shapes AWS accepts.
    async fn validate(&self, template: &MachineTemplateSpec) -> Result<Vec<InstanceTypeFacts>, ProviderError> {
        crate::api::shape::check(template)
            .map_err(|e| ProviderError::invalid(e.field, "InvalidParameterValue", e.message))?;
        if template.instance_requirements.is_some() {
            return super::selection::resolve_template(template, &catalogue(), "the simulated cloud");
        }
        Ok(template.instance_types.iter().map(|t| simulated_facts(&t.type_)).collect())
    }

    /// The simulated cloud never runs out of capacity: nothing to leave out.
    async fn left_out(&self, _: &MachineTemplateSpec, _: MarketMix) -> Result<Vec<LeftOut>, ProviderError> {
        Ok(vec![])
    }

    async fn provision(&self, request: &ProvisionRequest<'_>) -> Result<ProvisionOutcome, ProviderError> {
        let now = Timestamp::now();
        let mut cloud = self.cloud();
        if let Some(ids) = cloud.tokens.get(request.client_token) {
            // Same token, same answer: nothing new is launched.
            let launched =
                ids.iter().filter_map(|id| cloud.instances.get(id).map(|i| self.observed(id, i, now))).collect();
            return Ok(ProvisionOutcome { launched, ..Default::default() });
        }
        let mut outcome = ProvisionOutcome::default();
        let (mut ids, on_demand_units) =
            self.launch_market(&mut cloud, request, request.mix.on_demand, false, now, &mut outcome.failures);
        let spot = spot_after_on_demand(request.mix, on_demand_units);
        if spot > 0 {
            ids.extend(self.launch_market(&mut cloud, request, spot, true, now, &mut outcome.failures).0);
        }
        if ids.is_empty() {
            return Err(ProviderError::Capacity {
                code: "InsufficientInstanceCapacity".into(),
                message: format!("no capacity for any of {} instance type(s) (simulated)", outcome.failures.len()),
            });
        }
        outcome.launched =
            ids.iter().filter_map(|id| cloud.instances.get(id).map(|i| self.observed(id, i, now))).collect();
        cloud.tokens.insert(request.client_token.to_string(), ids);
        Ok(outcome)
    }

    async fn observe(&self, owner: &Owner, known: &[String], _: bool) -> Result<Vec<ObservedMachine>, ProviderError> {
        let now = Timestamp::now();
        let mut cloud = self.cloud();
        let settings_terminating = self.settings.terminating();
        cloud.instances.retain(|_, i| {
            i.terminate_requested_at.is_none_or(|at| now < at + settings_terminating + TERMINATED_RETENTION)
        });
        Ok(cloud
            .instances
            .iter()
            .filter(|(id, i)| i.owner_uid == owner.uid && (i.tagged || known.contains(id)))
            .map(|(id, i)| ObservedMachine { untagged: !i.tagged, ..self.observed(id, i, now) })
            .collect())
    }

    /// The simulated cloud has no fleets: every machine carries its request's tags.
    async fn describe_fleets(&self, _owner: &Owner, _resources: &Resources) -> Result<FleetView, ProviderError> {
        Ok(FleetView::default())
    }

    /// The simulated cloud answers every launch: nothing is ever made unrecorded.
    async fn unrecorded(&self, _owner: &Owner, _resources: &Resources) -> Result<Resources, ProviderError> {
        Ok(Resources::default())
    }

    async fn return_machines(&self, owner: &Owner, request: &ReturnRequest<'_>) -> Result<(), ProviderError> {
        let now = Timestamp::now();
        let mut cloud = self.cloud();
        for id in request.instance_ids {
            if let Some(instance) = cloud.instances.get_mut(id)
                && instance.owner_uid == owner.uid
            {
                instance.terminate_requested_at.get_or_insert(now);
            }
        }
        Ok(())
    }

    /// The simulator's listing never lags, so `known` adds nothing.
    async fn release(&self, owner: &Owner, _holdings: Holdings<'_>) -> Result<Released, ProviderError> {
        self.reachable()?;
        let now = Timestamp::now();
        let mut cloud = self.cloud();
        for instance in cloud.instances.values_mut().filter(|i| i.owner_uid == owner.uid) {
            instance.terminate_requested_at.get_or_insert(now);
        }
        Ok(Released::Done)
    }

    /// The simulator never sweeps: nothing to mark.
    async fn orphan(&self, _owner: &Owner, _holdings: Holdings<'_>) -> Result<(), ProviderError> {
        self.reachable()
    }

    /// Simulated machines live in this process only: a request gone is released, never leaked.
    async fn sweep(&self, _live: &super::Live, _now: std::time::Instant) -> Result<Vec<super::Leak>, ProviderError> {
        Ok(vec![])
    }
}
/// What the simulated cloud says of an instance type: vCPUs from its size (`large` 2,
/// `xlarge` 4, `4xlarge` 16, smaller sizes 1 or 2), 4 GiB per vCPU (8 for `r` families, 2 for
/// `c`), `arm64` for Graviton families (a `g` after the generation digit, e.g. `m6g`).
pub fn simulated_facts(instance_type: &str) -> InstanceTypeFacts {
    let (family, size) = instance_type.split_once('.').unwrap_or((instance_type, "large"));
    let vcpus: i32 = match size {
        "nano" | "micro" | "small" => 1,
        "medium" | "large" => 2,
        "xlarge" => 4,
        other => other.strip_suffix("xlarge").and_then(|n| n.parse::<i32>().ok()).map_or(2, |n| n * 4),
    };
    let per_vcpu = match family.chars().next() {
        Some('r' | 'x') => 8192,
        Some('c') => 2048,
        _ => 4096,
    };
    let graviton = family.find(|c: char| c.is_ascii_digit()).is_some_and(|i| family[i + 1..].starts_with('g'));
    InstanceTypeFacts {
        type_: instance_type.to_string(),
        vcpus,
        memory_mib: i64::from(vcpus) * per_vcpu,
        architecture: if graviton { "arm64" } else { "x86_64" }.to_string(),
        weight: None,
    }
}

/// The simulated cloud's instance type catalogue, for `instanceRequirements`: general purpose,
/// compute and memory families on Intel and Graviton, and one burstable family, from `large` to
/// `8xlarge`.
pub fn catalogue() -> Vec<super::selection::CatalogueEntry> {
    let families = ["m5", "m6i", "c5", "c6i", "r5", "r6i", "m6g", "c6g", "r6g", "t3"];
    let sizes = ["large", "xlarge", "2xlarge", "4xlarge", "8xlarge"];
    families
        .iter()
        .flat_map(|f| sizes.iter().map(move |s| format!("{f}.{s}")))
        .map(|name| {
            let facts = simulated_facts(&name);
            let graviton = facts.architecture == "arm64";
            super::selection::CatalogueEntry {
                burstable: name.starts_with('t'),
                type_: name,
                vcpus: facts.vcpus,
                memory_mib: facts.memory_mib,
                architectures: vec![facts.architecture],
                manufacturer: if graviton { "AWS" } else { "Intel" }.into(),
                current_generation: true,
                ..Default::default()
            }
        })
        .collect()
}
