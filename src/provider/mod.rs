//! The provider seam: what the controllers need from a cloud, in domain terms (health, validate a
//! template, provision capacity, describe a request's machines, return machines, release
//! everything), and the registry of named providers built from configuration.
//!
//! Providers never touch Kubernetes; controllers never touch a cloud SDK.

pub mod aws;
pub mod selection;
pub mod sim;

use crate::api::{InstanceTypeFacts, LeftOut, MachineTemplateSpec, Resources};
use crate::config::{Config, ProviderConfig};
use std::collections::BTreeMap;
use std::future::Future;

/// Tag keys the operator puts on every cloud resource (DESIGN §4.3).
pub mod tags {
    pub const CLUSTER: &str = "orb.dev/cluster";
    pub const REQUEST_UID: &str = "orb.dev/request-uid";
    pub const REQUEST: &str = "orb.dev/request";
    pub const TEMPLATE: &str = "orb.dev/template";
    /// Set on the resources of a request deleted with `deletionPolicy: Orphan`: the leak
    /// sweep leaves them alone.
    pub const ORPHANED: &str = "orb.dev/orphaned";
}

/// The request that owns machines, as the cloud sees it (it is written into tags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub template: String,
}

impl Owner {
    /// `namespace/name`, the value of the `orb.dev/request` tag.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A request as Kubernetes names it: what a provider's change of machines wakes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub namespace: String,
    pub name: String,
}

/// EC2 instance states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::ShuttingDown => "shutting-down",
            Self::Terminated => "terminated",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "shutting-down" => Self::ShuttingDown,
            "terminated" => Self::Terminated,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            _ => return None,
        })
    }

    /// Pending or running: the machine provides (or is about to provide) capacity.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }

    /// Not yet on its way out: terminating it is still meaningful.
    pub fn can_terminate(self) -> bool {
        !matches!(self, Self::ShuttingDown | Self::Terminated)
    }
}

/// One machine as the cloud reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedMachine {
    pub instance_id: String,
    pub state: InstanceState,
    pub instance_type: Option<String>,
    /// `spot` or `on-demand`.
    pub capacity_type: Option<String>,
    pub zone: Option<String>,
    pub subnet_id: Option<String>,
    pub private_ip: Option<String>,
    /// The host name the machine has in its VPC (EC2's private DNS name): the name it joins a
    /// grid with.
    pub private_dns_name: Option<String>,
    pub public_ip: Option<String>,
    pub launch_time: Option<jiff::Timestamp>,
    /// Why the cloud changed the state (EC2 StateReason), if it said.
    pub state_reason: Option<String>,
    /// The launch (EC2 reservation) the machine came from.
    pub reservation_id: Option<String>,
    /// Found by its instance id only: its `orb.dev/*` tags are missing or name another cluster.
    pub untagged: bool,
    /// What AWS announced about it (interruption warning, rebalance recommendation, scheduled
    /// change), from the provider's interruption queue; never `replaced` (the planner decides).
    pub notice: Option<crate::api::MachineNotice>,
}

impl ObservedMachine {
    /// A machine with only an id and a state; the rest filled by the caller.
    pub fn new(instance_id: impl Into<String>, state: InstanceState) -> Self {
        Self {
            instance_id: instance_id.into(),
            state,
            instance_type: None,
            capacity_type: None,
            zone: None,
            subnet_id: None,
            private_ip: None,
            private_dns_name: None,
            public_ip: None,
            launch_time: None,
            state_reason: None,
            reservation_id: None,
            untagged: false,
            notice: None,
        }
    }
}

/// Capacity units by market.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarketMix {
    pub on_demand: u32,
    pub spot: u32,
}

/// How many of `units` new capacity units to launch on-demand and how many as spot, given the
/// request's total `capacity` and the units already live in each market. For `heterogeneous`,
/// the on-demand share is `onDemandBase` plus `onDemandPercent` of the rest (rounded up), so
/// top-ups restore the mix rather than repeat the split.
pub fn market_split(template: &MachineTemplateSpec, capacity: u32, live: MarketMix, units: u32) -> MarketMix {
    use crate::api::PriceType;
    match template.price_type {
        PriceType::OnDemand => MarketMix { on_demand: units, spot: 0 },
        PriceType::Spot => MarketMix { on_demand: 0, spot: units },
        PriceType::Heterogeneous => {
            let base = template.on_demand_base.unwrap_or(0).max(0).unsigned_abs().min(capacity);
            let percent = template.on_demand_percent.unwrap_or(0).clamp(0, 100).unsigned_abs();
            let target = base + ((capacity - base) * percent).div_ceil(100);
            let on_demand = target.saturating_sub(live.on_demand).min(units);
            MarketMix { on_demand, spot: units - on_demand }
        }
    }
}

/// Spot units still to launch once on-demand launched `on_demand_launched` units: whole machines
/// overshoot their market's share, and that surplus comes off the spot share so the whole launch
/// has less than one machine of surplus (capacity 6, weight 4, 10% on-demand: one on-demand and
/// one spot machine, not one and two).
pub fn spot_after_on_demand(mix: MarketMix, on_demand_launched: u32) -> u32 {
    mix.spot.saturating_sub(on_demand_launched.saturating_sub(mix.on_demand))
}

/// A request to provision capacity units for `owner`.
#[derive(Clone, Debug)]
pub struct ProvisionRequest<'a> {
    pub owner: &'a Owner,
    pub template: &'a MachineTemplateSpec,
    /// Capacity units to launch per market, fixed when the attempt was opened (a replay of an
    /// attempt sends exactly what the first try sent).
    pub mix: MarketMix,
    /// Idempotency token of this attempt; the same token never launches twice.
    pub client_token: &'a str,
    /// What the request already owns in the cloud: a `maintain` fleet is scaled, not created
    /// again.
    pub resources: &'a Resources,
    /// Capacity units the request should hold once this attempt is done (live, plus what its
    /// fleets are still launching, plus `mix`): a `maintain` fleet's target is set to it, an
    /// absolute value so that a replay changes nothing.
    pub target_units: u32,
    /// This attempt was sent before (its outcome is unknown): what that try made is looked for
    /// before it is sent again.
    pub replay: bool,
    /// Offerings every try of this attempt leaves out (`Attempt::left_out`): a replay sends the
    /// calls the first try sent, whatever the capacity memory has learnt since.
    pub left_out: &'a [LeftOut],
}

/// The absolute target a `maintain` fleet is set to for `request`: never below what the attempt
/// itself asks for (an attempt recorded without a target must not shrink a fleet to zero).
pub fn target_of(request: &ProvisionRequest<'_>) -> u32 {
    request.target_units.max(request.mix.on_demand + request.mix.spot)
}

/// The request's fleets (EC2 Fleet, Spot Fleet) as the cloud reports them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetView {
    /// Instances the fleets report as theirs. Fleets of type `request` and `maintain` launch
    /// from a launch template shared by the template's requests, so these carry no request tag:
    /// they are found through their fleet.
    pub members: Vec<String>,
    /// Capacity units the fleets are still working to launch (target minus fulfilled, while
    /// they are fulfilling or maintaining): counted as pending, never launched a second time.
    pub outstanding: u32,
    /// Errors the fleets reported (capacity, limits, bad parameters).
    pub failures: Vec<LaunchFailure>,
    /// Recorded fleets that are over (deleted, cancelled, failed): they launch nothing more.
    pub finished: Vec<String>,
}

/// Machines to return, and what the request holds that a return may have to adjust.
#[derive(Clone, Copy, Debug)]
pub struct ReturnRequest<'a> {
    pub instance_ids: &'a [String],
    pub template: &'a MachineTemplateSpec,
    pub resources: &'a Resources,
    /// Capacity units the request keeps: a `maintain` fleet's new target.
    pub target_units: u32,
}

/// Everything a request's release must tear down.
#[derive(Clone, Copy, Debug)]
pub struct Holdings<'a> {
    /// Instance ids the request's status lists (the cloud's listing may lag behind a launch).
    pub known: &'a [String],
    /// Fleets, spot fleet requests and launch template from the request's status.
    pub resources: &'a Resources,
    /// Operator-made launch templates other requests still use (never deleted).
    pub launch_templates_in_use: &'a [String],
    /// The request's last launch attempt. While its outcome is unknown, what it made may be
    /// recorded nowhere, so the release looks its fleets up by the request's tags too; shortly
    /// after it, EC2 may not show what it made yet, and the release waits for it.
    pub last_attempt: Option<&'a crate::api::Attempt>,
}

impl Holdings<'_> {
    /// The last attempt's create call may have made something the status does not record.
    pub fn outcome_unknown(&self) -> bool {
        self.last_attempt.is_some_and(|a| !a.completed)
    }

    /// The last attempt started within `window` of `now`: what it made may not be visible yet
    /// (EC2 is eventually consistent), so "not found" does not mean "gone".
    pub fn launched_within(&self, window: std::time::Duration, now: jiff::Timestamp) -> bool {
        let started = self.last_attempt.and_then(|a| a.started_at.as_ref());
        started.is_some_and(|t| now.duration_since(t.0).unsigned_abs() < window)
    }
}

/// A launch that failed for one instance type / zone while others may have worked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchFailure {
    pub code: String,
    pub message: String,
    pub instance_type: Option<String>,
    pub zone: Option<String>,
}

/// What a provision call achieved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProvisionOutcome {
    pub launched: Vec<ObservedMachine>,
    pub failures: Vec<LaunchFailure>,
    pub resources: Resources,
    /// A call's outcome is unknown (no answer, a 5xx): it may have launched, so the attempt
    /// stays open and is replayed with the same tokens.
    pub ambiguous: bool,
    /// Capacity units an asynchronous fleet (`request`, `maintain`) accepted and launches later:
    /// the attempt asked for them and got them, though no machine exists yet.
    pub accepted_units: u32,
    /// Offerings refused for capacity by a call EC2 does not answer again under its token
    /// (RunInstances): added to the attempt's `left_out`, so a replay does not ask again.
    pub refused: Vec<LeftOut>,
}

/// What is alive on the Kubernetes side, for the leak sweep.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// Uids of every MachineRequest in the operator's cache (being deleted included).
    pub uids: std::collections::BTreeSet<String>,
    /// Operator-made launch templates some request records.
    pub launch_templates: std::collections::BTreeSet<String>,
    /// The one namespace the operator watches, if it watches only one: resources of other
    /// namespaces are not its to judge.
    pub namespace: Option<String>,
}

/// A cloud resource of a request that no longer exists, found by the leak sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leak {
    /// instance, fleet, spot-fleet-request, auto-scaling-group, launch-template.
    pub kind: String,
    pub id: String,
    /// The request it belonged to (`namespace/name`), as its tags say.
    pub request: Option<String>,
    /// Removed; `false` in dry-run mode (only reported).
    pub removed: bool,
}

/// Whether `release` finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Released {
    /// Nothing of the request is pending or running any more.
    Done,
    /// Teardown started; call again later. The text says what is left.
    InProgress(String),
    /// The release waits on the provider's next look at the request's machines (its first
    /// after a restart, or one after removals that left machines it has not seen go), which
    /// wakes the request (`Registry::changes`): call again then.
    AwaitingWake,
}

/// Provider errors, classified (DESIGN §4.6). Each carries the cloud's error code and message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("throttled ({code}): {message}")]
    Throttled { code: String, message: String },
    #[error("insufficient capacity ({code}): {message}")]
    Capacity { code: String, message: String },
    /// An account-wide limit (vCPUs, instances, spot requests): no other instance type or
    /// subnet can help, so the attempt stops at once.
    #[error("account limit reached ({code}): {message}")]
    Limit { code: String, message: String },
    /// A client token was sent again with different parameters: that attempt is over.
    #[error("client token reused with other parameters ({code}): {message}")]
    TokenConflict { code: String, message: String },
    #[error("not found ({code}): {message}")]
    NotFound { code: String, message: String },
    /// The template or request is wrong; `field` is the spec path (e.g. `spec.imageId`).
    #[error("{field}: {message} ({code})")]
    Invalid { field: String, code: String, message: String },
    #[error("not authorized ({code}): {message}")]
    Auth { code: String, message: String },
    #[error("transient error ({code}): {message}")]
    Transient { code: String, message: String },
}

impl ProviderError {
    /// The error class, used for Event reasons and metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Throttled { .. } => "Throttled",
            Self::Capacity { .. } => "Capacity",
            Self::Limit { .. } => "Limit",
            Self::TokenConflict { .. } => "TokenConflict",
            Self::NotFound { .. } => "NotFound",
            Self::Invalid { .. } => "Invalid",
            Self::Auth { .. } => "Auth",
            Self::Transient { .. } => "Transient",
        }
    }

    /// The cloud's error code.
    pub fn code(&self) -> &str {
        match self {
            Self::Throttled { code, .. }
            | Self::Capacity { code, .. }
            | Self::Limit { code, .. }
            | Self::TokenConflict { code, .. }
            | Self::NotFound { code, .. }
            | Self::Invalid { code, .. }
            | Self::Auth { code, .. }
            | Self::Transient { code, .. } => code,
        }
    }

    /// Errors that retrying soon cannot fix: the spec or the permissions must change. (An auth
    /// error is still retried after a long backoff: permissions get granted without a spec edit.)
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Invalid { .. } | Self::Auth { .. })
    }

    /// Whether the call's outcome is unknown (no answer, a 5xx, throttling): the cloud may have
    /// acted, so a retry must reuse the client token.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Self::Transient { .. } | Self::Throttled { .. })
    }

    /// The call got no answer within its attempt's time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Transient { code, .. } if code == "Timeout")
    }

    pub fn invalid(field: impl Into<String>, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), code: code.into(), message: message.into() }
    }
}

/// What the controllers need from a cloud. Implementations must not block: long operations are
/// started and observed on later calls.
pub trait Provider: Send + Sync {
    /// A cheap call proving the cloud is reachable; the text describes where (e.g. the region).
    fn health(&self) -> impl Future<Output = Result<String, ProviderError>> + Send;
    /// Checks what admission cannot: do the image, subnets, groups and types exist? Returns
    /// what it learnt about the instance types (vCPUs, memory, architecture), in the
    /// template's order.
    fn validate(
        &self,
        template: &MachineTemplateSpec,
    ) -> impl Future<Output = Result<Vec<InstanceTypeFacts>, ProviderError>> + Send;
    /// The offerings a new attempt leaves out (those that failed for capacity lately), at most
    /// `MAX_LEFT_OUT / 2`: recorded in the attempt before its first call, so every try of it
    /// sends the same calls.
    fn left_out(
        &self,
        template: &MachineTemplateSpec,
        mix: MarketMix,
    ) -> impl Future<Output = Result<Vec<LeftOut>, ProviderError>> + Send;
    /// Launches up to `units` capacity units. Partial success is `Ok` with failures listed.
    fn provision(
        &self,
        request: &ProvisionRequest<'_>,
    ) -> impl Future<Output = Result<ProvisionOutcome, ProviderError>> + Send;
    /// Every machine of the owner: those its tags list, and those of `known` (ids its status or
    /// its fleets name) that still exist and are not another request's — terminated ones
    /// included while the cloud still reports them. `untagged` marks the machines the tag
    /// listing does not find (a tag policy stripped them, or they carry another cluster id).
    /// `launched` says whether the request ever launched (its status records an attempt, which
    /// is written before the first create call): one that never did has nothing in the cloud,
    /// so its first look lists nothing and waits for no refresh.
    fn observe(
        &self,
        owner: &Owner,
        known: &[String],
        launched: bool,
    ) -> impl Future<Output = Result<Vec<ObservedMachine>, ProviderError>> + Send;
    /// The request's fleets named in `resources`: their members, what they still launch and
    /// their errors. No call when the request has no fleet.
    fn describe_fleets(
        &self,
        owner: &Owner,
        resources: &Resources,
    ) -> impl Future<Output = Result<FleetView, ProviderError>> + Send;
    /// Fleets, spot fleet requests and the group of `owner` that `resources` does not record:
    /// what a create whose answer was lost made. Asked only when such an attempt is closed
    /// without a replay, so that nothing it made runs on untracked.
    fn unrecorded(
        &self,
        owner: &Owner,
        resources: &Resources,
    ) -> impl Future<Output = Result<Resources, ProviderError>> + Send;
    /// Terminates the given machines of `owner`; ids already gone are ignored. A `maintain`
    /// fleet among the request's resources first has its target set to `target_units`, so it
    /// does not replace them.
    fn return_machines(
        &self,
        owner: &Owner,
        request: &ReturnRequest<'_>,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Tears down everything the owner has: its fleets, its instances and the operator-made
    /// launch templates of its template that no other request uses.
    fn release(
        &self,
        owner: &Owner,
        holdings: Holdings<'_>,
    ) -> impl Future<Output = Result<Released, ProviderError>> + Send;
    /// Marks everything the owner has (`orb.dev/orphaned`) as the user's to keep: the request is
    /// deleted with `deletionPolicy: Orphan`, and the leak sweep must not remove it.
    fn orphan(&self, owner: &Owner, holdings: Holdings<'_>) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// When due (by the provider's own interval), removes the cloud resources of this cluster
    /// whose request is not in `live` and that have been orphaned for the grace period, and
    /// returns them. `now` is the caller's clock (tests move it past the grace).
    fn sweep(
        &self,
        live: &Live,
        now: std::time::Instant,
    ) -> impl Future<Output = Result<Vec<Leak>, ProviderError>> + Send;
}

/// A configured provider: adding a kind is a compile error everywhere it must be handled.
// One value per configured provider, built once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum AnyProvider {
    Sim(sim::SimProvider),
    Aws(aws::AwsProvider),
}

impl Provider for AnyProvider {
    async fn health(&self) -> Result<String, ProviderError> {
        match self {
            Self::Sim(p) => p.health().await,
            Self::Aws(p) => p.health().await,
        }
    }
    async fn validate(&self, template: &MachineTemplateSpec) -> Result<Vec<InstanceTypeFacts>, ProviderError> {
        match self {
            Self::Sim(p) => p.validate(template).await,
            Self::Aws(p) => p.validate(template).await,
        }
    }
    async fn left_out(&self, template: &MachineTemplateSpec, mix: MarketMix) -> Result<Vec<LeftOut>, ProviderError> {
        match self {
            Self::Sim(p) => p.left_out(template, mix).await,
            Self::Aws(p) => p.left_out(template, mix).await,
        }
    }
    async fn provision(&self, request: &ProvisionRequest<'_>) -> Result<ProvisionOutcome, ProviderError> {
        match self {
            Self::Sim(p) => p.provision(request).await,
            Self::Aws(p) => p.provision(request).await,
        }
    }
    async fn observe(
        &self,
        owner: &Owner,
        known: &[String],
        launched: bool,
    ) -> Result<Vec<ObservedMachine>, ProviderError> {
        match self {
            Self::Sim(p) => p.observe(owner, known, launched).await,
            Self::Aws(p) => p.observe(owner, known, launched).await,
        }
    }
    async fn describe_fleets(&self, owner: &Owner, resources: &Resources) -> Result<FleetView, ProviderError> {
        match self {
            Self::Sim(p) => p.describe_fleets(owner, resources).await,
            Self::Aws(p) => p.describe_fleets(owner, resources).await,
        }
    }

    async fn unrecorded(&self, owner: &Owner, resources: &Resources) -> Result<Resources, ProviderError> {
        match self {
            Self::Sim(p) => p.unrecorded(owner, resources).await,
            Self::Aws(p) => p.unrecorded(owner, resources).await,
        }
    }
    async fn return_machines(&self, owner: &Owner, request: &ReturnRequest<'_>) -> Result<(), ProviderError> {
        match self {
            Self::Sim(p) => p.return_machines(owner, request).await,
            Self::Aws(p) => p.return_machines(owner, request).await,
        }
    }
    async fn release(&self, owner: &Owner, holdings: Holdings<'_>) -> Result<Released, ProviderError> {
        match self {
            Self::Sim(p) => p.release(owner, holdings).await,
            Self::Aws(p) => p.release(owner, holdings).await,
        }
    }
    async fn orphan(&self, owner: &Owner, holdings: Holdings<'_>) -> Result<(), ProviderError> {
        match self {
            Self::Sim(p) => p.orphan(owner, holdings).await,
            Self::Aws(p) => p.orphan(owner, holdings).await,
        }
    }
    async fn sweep(&self, live: &Live, now: std::time::Instant) -> Result<Vec<Leak>, ProviderError> {
        match self {
            Self::Sim(p) => p.sweep(live, now).await,
            Self::Aws(p) => p.sweep(live, now).await,
        }
    }
}

/// The named providers of the configuration.
pub struct Registry {
    providers: BTreeMap<String, AnyProvider>,
}

impl Registry {
    /// Builds every configured provider (AWS clients are created here, once); their AWS calls
    /// are counted in `metrics`.
    pub async fn from_config(config: &Config, metrics: &std::sync::Arc<crate::metrics::Metrics>) -> Self {
        let mut providers = BTreeMap::new();
        for (name, provider) in &config.providers {
            let built = match provider {
                ProviderConfig::Sim(settings) => AnyProvider::Sim(sim::SimProvider::new(settings.clone())),
                ProviderConfig::Aws(settings) => {
                    let calls =
                        aws::calls::call_metrics::CallMetrics { provider: name.clone(), metrics: metrics.clone() };
                    AnyProvider::Aws(aws::AwsProvider::new(settings, &config.cluster_id, calls).await)
                }
            };
            providers.insert(name.clone(), built);
        }
        Self { providers }
    }

    /// A registry of explicitly built providers (tests, embedding).
    pub fn with(providers: impl IntoIterator<Item = (String, AnyProvider)>) -> Self {
        Self { providers: providers.into_iter().collect() }
    }

    pub fn get(&self, name: &str) -> Option<&AnyProvider> {
        self.providers.get(name)
    }

    /// Requests whose machines a provider saw change (AWS providers' pollers), as they change:
    /// each is reconciled at once rather than at its next requeue.
    pub fn changes(&self) -> impl futures::Stream<Item = RequestKey> + Send + 'static {
        let receivers: Vec<_> = self
            .providers
            .values()
            .filter_map(|p| match p {
                AnyProvider::Aws(aws) => Some(aws.changes()),
                AnyProvider::Sim(_) => None,
            })
            .map(|rx| {
                Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                    loop {
                        match rx.recv().await {
                            Ok(key) => return Some((key, rx)),
                            // Missed wakes cost only latency: every request is requeued anyway.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }))
            })
            .collect();
        futures::stream::select_all(receivers)
    }

    /// What works only in part, per provider (an interruption queue that cannot be read).
    pub fn degraded(&self) -> Vec<String> {
        self.providers
            .iter()
            .filter_map(|(name, p)| match p {
                AnyProvider::Aws(aws) => aws.degraded().map(|problem| format!("provider `{name}`: {problem}")),
                AnyProvider::Sim(_) => None,
            })
            .collect()
    }

    /// Configured names, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.providers.keys().map(String::as_str).collect()
    }
}

/// How many machines of `weight` units cover `units`: rounding up, so the surplus is always
/// less than one machine.
pub fn machines_for(units: u32, weight: u32) -> u32 {
    units.div_ceil(weight.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_for_rounds_up_and_never_overshoots_by_a_whole_machine() {
        assert_eq!(machines_for(10, 4), 3);
        assert_eq!(machines_for(8, 4), 2);
        assert_eq!(machines_for(0, 4), 0);
        assert_eq!(machines_for(3, 1), 3);
        assert_eq!(machines_for(3, 0), 3, "a zero weight counts as one");
        for units in 0..50u32 {
            for weight in 1..8u32 {
                let n = machines_for(units, weight);
                assert!(n * weight >= units && n * weight < units + weight);
            }
        }
    }

    #[test]
    fn heterogeneous_splits_base_plus_percent_on_demand_and_the_rest_spot() {
        use crate::api::PriceType;
        let t = MachineTemplateSpec {
            price_type: PriceType::Heterogeneous,
            on_demand_base: Some(2),
            on_demand_percent: Some(50),
            ..Default::default()
        };
        let none = MarketMix::default();
        assert_eq!(market_split(&t, 10, none, 10), MarketMix { on_demand: 6, spot: 4 });
        assert_eq!(market_split(&t, 11, none, 11), MarketMix { on_demand: 7, spot: 4 }, "rounds on-demand up");
        // A top-up after losing spot machines relaunches spot, not on-demand.
        assert_eq!(market_split(&t, 10, MarketMix { on_demand: 6, spot: 2 }, 2), MarketMix { on_demand: 0, spot: 2 });
        assert_eq!(market_split(&t, 1, none, 1), MarketMix { on_demand: 1, spot: 0 }, "the base is capped by capacity");
        let spot = MachineTemplateSpec { price_type: PriceType::Spot, ..Default::default() };
        assert_eq!(market_split(&spot, 5, none, 5), MarketMix { on_demand: 0, spot: 5 });
        assert_eq!(market_split(&MachineTemplateSpec::default(), 5, none, 3), MarketMix { on_demand: 3, spot: 0 });
    }

    #[test]
    fn on_demand_rounding_comes_off_the_spot_share() {
        use crate::api::{InstanceTypeSpec, PriceType};
        // capacity 6, weight 4, 10% on-demand: 1 on-demand unit -> one machine of 4 units.
        let t = MachineTemplateSpec {
            price_type: PriceType::Heterogeneous,
            on_demand_percent: Some(10),
            instance_types: vec![InstanceTypeSpec { type_: "m5.xlarge".into(), weight: 4, priority: None }],
            ..Default::default()
        };
        let mix = market_split(&t, 6, MarketMix::default(), 6);
        assert_eq!(mix, MarketMix { on_demand: 1, spot: 5 });
        let spot = spot_after_on_demand(mix, 4);
        assert_eq!(spot, 2);
        assert_eq!(machines_for(spot, 4), 1, "two machines in all: 8 units for 6, less than one machine over");
        assert_eq!(spot_after_on_demand(mix, 0), 5, "on-demand failing leaves the spot share as it was");
        assert_eq!(spot_after_on_demand(MarketMix { on_demand: 2, spot: 1 }, 12), 0);
    }

    #[test]
    fn only_invalid_and_auth_errors_are_terminal() {
        let e = |f: fn(String, String) -> ProviderError| f("C".into(), "m".into());
        assert!(!e(|code, message| ProviderError::Throttled { code, message }).is_terminal());
        assert!(!e(|code, message| ProviderError::Capacity { code, message }).is_terminal());
        assert!(!e(|code, message| ProviderError::Transient { code, message }).is_terminal());
        assert!(e(|code, message| ProviderError::Auth { code, message }).is_terminal());
        assert!(ProviderError::invalid("spec.imageId", "InvalidAMIID.NotFound", "no such image").is_terminal());
        assert_eq!(
            ProviderError::invalid("spec.imageId", "InvalidAMIID.NotFound", "no such image").to_string(),
            "spec.imageId: no such image (InvalidAMIID.NotFound)"
        );
    }
}
