//! The AWS provider: one SDK configuration and one set of clients per configured provider,
//! shared by the per-API handlers: RunInstances, EC2 Fleet, Spot Fleet and Auto Scaling groups.

pub mod calls;
pub mod handlers;
pub mod notices;
pub mod state;

use calls::{call_metrics, capacity_memory, client, errors, gather, limits, ops};
use handlers::{asg, ec2_fleet, fleet, run_instances, spot_fleet, validate};
use state::{fleet_state, poller, sweep};

use super::{
    FleetView, Holdings, MarketMix, ObservedMachine, Owner, Provider, ProviderError, ProvisionOutcome,
    ProvisionRequest, Released, ReturnRequest, tags,
};
use crate::api::{Api, InstanceTypeFacts, LeftOut, MachineTemplateSpec, Resources};
use crate::config::AwsSettings;
use errors::classify;
use ops::Ops;
use validate::profile_name;

/// A configured AWS account and region.
pub struct AwsProvider {
    ops: Ops,
    /// Every instance of every request, refreshed in batches.
    poller: poller::Poller,
    sweeper: sweep::Sweeper,
    calls: call_metrics::CallMetrics,
    region: String,
    /// Instance profile names templates may use (`allowedInstanceProfiles`).
    allowed_profiles: Vec<String>,
    /// The consumer of `interruptionQueue`, when one is configured.
    queue: Option<notices::queue::InterruptionQueue>,
    /// How long after an attempt began what it made may not show in EC2 yet: its answer may
    /// come as late as the SDK's operation timeout (queued behind the budget), and EC2's
    /// listings lag behind an answer for up to `VISIBILITY_WINDOW`.
    not_shown_for: std::time::Duration,
}

impl AwsProvider {
    /// Builds the SDK configuration and clients (no network call is made here); every call is
    /// counted in `calls`.
    pub async fn new(settings: &AwsSettings, cluster_id: &str, calls: call_metrics::CallMetrics) -> Self {
        Self::from_sdk(&client::sdk_config(settings).await, settings, cluster_id, calls)
    }

    /// Builds the clients from a prepared SDK configuration (tests give it fixed credentials).
    pub fn from_sdk(
        sdk: &aws_config::SdkConfig,
        settings: &AwsSettings,
        cluster_id: &str,
        calls: call_metrics::CallMetrics,
    ) -> Self {
        // Every call of every client waits on the provider's one budget.
        let budget = std::sync::Arc::new(limits::Budget::new(settings.rates(), calls.clone()));
        let http = limits::Paced::new(sdk.http_client().unwrap_or_else(client::https_client), budget);
        macro_rules! client {
            ($sdk:ident) => {
                $sdk::Client::from_conf(
                    $sdk::config::Builder::from(sdk)
                        .http_client(http.clone())
                        .interceptor(calls.clone())
                        .interceptor(limits::ClassifyCalls)
                        .build(),
                )
            };
        }
        let ops = Ops {
            ec2: client!(aws_sdk_ec2),
            ssm: client!(aws_sdk_ssm),
            iam: client!(aws_sdk_iam),
            autoscaling: client!(aws_sdk_autoscaling),
            cluster_id: cluster_id.to_string(),
            zones: Default::default(),
            managed_templates: Default::default(),
            launch_template_uses: Default::default(),
            instant_fleets: Default::default(),
            spot_fleet_roles: Default::default(),
            capacity: std::sync::Arc::new(capacity_memory::CapacityMemory::new(
                settings.capacity_ttl(),
                calls.provider.clone(),
                calls.metrics.clone(),
            )),
            creating_templates: Default::default(),
            terminations: gather::Gathered::new(|ops, ids| Box::pin(async move { ops.terminate_now(&ids).await })),
            fleet_deletions: gather::Gathered::new(|ops, ids| {
                Box::pin(async move { ec2_fleet::delete_now(&ops, &ids).await })
            }),
            spot_cancellations: gather::Gathered::new(|ops, ids| {
                Box::pin(async move { spot_fleet::cancel_now(&ops, &ids).await })
            }),
            fleet_listing: gather::SharedListing::new(|ops| {
                Box::pin(async move { ec2_fleet::list_active(&ops).await })
            }),
            spot_fleet_listing: gather::SharedListing::new(|ops| {
                Box::pin(async move { spot_fleet::list_active(&ops).await })
            }),
            template_deletions: gather::Gathered::new(|ops, ids| {
                Box::pin(async move { sweep::delete_unless_in_use(&ops, &ids).await })
            }),
            deleted_templates: Default::default(),
            removed_fleets: Default::default(),
            seen_fleets: Default::default(),
            catalogue: Default::default(),
            root_devices: Default::default(),
            id_lists: std::sync::Arc::new(calls::id_lists::IdLists::new(ops::PAGE)),
            uid_lists: std::sync::Arc::new(calls::id_lists::IdLists::new(ops::TAG_VALUES)),
        };
        let intervals = poller::Intervals { poll: settings.poll(), steady: settings.steady_poll() };
        let sweep_every = if cluster_id == crate::config::DEFAULT_CLUSTER_ID {
            tracing::warn!(provider = %calls.provider, cluster_id, "the leak sweep is off: clusterId is the default, which every installation that did not choose one shares, and in an account and region shared with another cluster each sweep would delete the other's resources; set clusterId to a name unique to this cluster to turn it on");
            std::time::Duration::ZERO
        } else {
            settings.sweep_every()
        };
        let poller = poller::Poller::new(ops.clone(), intervals, calls.provider.clone(), calls.metrics.clone());
        let queue = settings.interruption_queue.clone().map(|queue| {
            // Not behind the EC2 budget (SQS has its own limits), and a long poll's 20 s wait
            // fits in an attempt.
            let sqs = aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(sdk)
                    .http_client(sdk.http_client().unwrap_or_else(client::https_client))
                    .interceptor(calls.clone())
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .connect_timeout(std::time::Duration::from_secs(5))
                            .operation_attempt_timeout(std::time::Duration::from_secs(30))
                            .operation_timeout(std::time::Duration::from_secs(60))
                            .build(),
                    )
                    .build(),
            );
            let (provider, metrics) = (calls.provider.clone(), calls.metrics.clone());
            notices::queue::InterruptionQueue::new(
                sqs,
                queue,
                settings.region.clone(),
                poller.notices(),
                provider,
                metrics,
            )
        });
        Self {
            poller,
            queue,
            sweeper: sweep::Sweeper::new(sweep_every, settings.sweep_after(), settings.sweep_dry_run),
            calls,
            ops,
            region: settings.region.clone(),
            not_shown_for: client::operation_timeout(settings) + VISIBILITY_WINDOW,
            allowed_profiles: settings.allowed_instance_profiles.iter().map(|p| profile_name(p).to_string()).collect(),
        }
    }

    /// What works only in part: the interruption queue cannot be read (the provider still
    /// launches and returns machines).
    pub fn degraded(&self) -> Option<String> {
        self.queue.as_ref()?.problem()
    }

    /// Requests whose machines the poller saw change, and those whose release waits for its
    /// next look (`Released::AwaitingWake`) once that look is done.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<super::RequestKey> {
        self.poller.changes()
    }

    /// Deletes the operator-made launch templates among `recorded` (by the released request)
    /// that nothing launches from: no other request by the cache or by this process's recent
    /// launches, and no active fleet, spot fleet request or group by AWS's own listings (an
    /// orphaned group or fleet keeps its launch template; so does a fleet whose request's status
    /// has not reached the cache). Requests released together share one look at the listings
    /// and one deletion (`Ops::template_deletions`); a launch template of an older template
    /// generation no request records is the leak sweep's.
    async fn delete_unused_launch_templates(
        &self,
        owner: &Owner,
        in_use: &[String],
        recorded: &[String],
    ) -> Result<(), ProviderError> {
        let candidates = self.ops.unused_launch_templates(owner, in_use, recorded);
        self.ops.template_deletions.call(&self.ops, &candidates).await
    }

    /// Those of `ids` that still exist and are the owner's: tagged with its uid, or carrying no
    /// uid tag at all (a tag policy stripped it; the request's status, which only the operator
    /// writes, says it launched them). An instance tagged for another request is never touched.
    async fn owned(&self, owner: &Owner, ids: &[String]) -> Result<Vec<ObservedMachine>, ProviderError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        Ok(self
            .ops
            .describe_by_ids(ids)
            .await?
            .iter()
            .filter(|i| ops::tag_value(i, tags::REQUEST_UID).is_none_or(|uid| uid == owner.uid))
            .filter_map(|i| {
                let listed = ops::tag_value(i, tags::REQUEST_UID).is_some()
                    && ops::tag_value(i, tags::CLUSTER) == Some(self.ops.cluster_id.as_str());
                ops::observed(i, None).map(|m| ObservedMachine { untagged: !listed, ..m })
            })
            .collect())
    }

    /// The ids of those of `ids` the operator may terminate now: from the poller's view, or
    /// described when the view does not know them all.
    async fn terminable(&self, owner: &Owner, ids: &[String]) -> Result<Vec<String>, ProviderError> {
        if let Some(known) = self.poller.terminable(owner, ids) {
            return Ok(known);
        }
        Ok(self
            .owned(owner, ids)
            .await?
            .into_iter()
            .filter(|m| m.state.can_terminate())
            .map(|m| m.instance_id)
            .collect())
    }

    /// Terminates `machines`: those with this cluster's tags together (gathered with other
    /// requests'), and each one whose tags are gone (a tag policy stripped them) in a call of
    /// its own. The shipped IAM policy lets TerminateInstances act only on tagged instances, so
    /// one such id would fail the whole call and hold back every other machine. A refused one
    /// fails the release with what an administrator must do, after all the others went.
    async fn terminate_tagged_apart(&self, owner: &Owner, machines: Vec<ObservedMachine>) -> Result<(), ProviderError> {
        let (untagged, tagged): (Vec<_>, Vec<_>) = machines.into_iter().partition(|m| m.untagged);
        let mut ids: Vec<String> = tagged.into_iter().map(|m| m.instance_id).collect();
        ids.sort();
        ids.dedup();
        self.ops.terminate(&ids).await?;
        let mut refused = vec![];
        for m in untagged {
            if let Err(error) = self.ops.terminate_now(std::slice::from_ref(&m.instance_id)).await {
                refused.push((m.instance_id, error));
            }
        }
        let Some((_, first)) = refused.first() else { return Ok(()) };
        let ids: Vec<&str> = refused.iter().map(|(id, _)| id.as_str()).collect();
        let message = format!(
            "TerminateInstances refused for {ids:?}, which no longer carry this operator's tags (a tag policy?): {first}. The IAM policy lets the operator terminate only instances tagged orb.dev/cluster={}. An administrator must terminate them, or restore their tags orb.dev/cluster={} and orb.dev/request-uid={}; every other machine of the request was released",
            self.ops.cluster_id, self.ops.cluster_id, owner.uid
        );
        Err(match first {
            ProviderError::Auth { code, .. } => ProviderError::Auth { code: code.clone(), message },
            other => ProviderError::Transient { code: other.code().to_string(), message },
        })
    }

    /// What a create whose answer was lost made and `resources` does not record: the
    /// request's fleets and spot fleet requests (found by its tags), its group (named after it)
    /// if it exists, the launch template they launch from; and the machines instant fleets
    /// among them launched.
    async fn find_unrecorded(
        &self,
        owner: &Owner,
        resources: &Resources,
    ) -> Result<(Resources, Vec<String>), ProviderError> {
        let (mut found, mut machines) = (Resources::default(), vec![]);
        for f in ec2_fleet::unrecorded(&self.ops, owner, &resources.fleet_ids).await? {
            found.fleet_ids.push(f.fleet_id);
            found.launch_template_id = found.launch_template_id.or(f.launch_template_id);
            machines.extend(f.machines.into_iter().map(|m| m.instance_id));
        }
        for (id, lt) in spot_fleet::unrecorded(&self.ops, owner, &resources.spot_fleet_request_ids).await? {
            found.spot_fleet_request_ids.push(id);
            found.launch_template_id = found.launch_template_id.or(lt);
        }
        if resources.asg_name.is_none() {
            let name = asg::group_name(&self.ops.cluster_id, owner);
            if let Some(group) = asg::describe(&self.ops, &name).await? {
                // Recorded with it, or the last release would not know to delete it.
                let lt = asg::launch_templates(&group).find_map(|spec| spec.launch_template_id());
                found.launch_template_id = found.launch_template_id.or(lt.map(str::to_string));
                found.asg_name = Some(name);
            }
        }
        if found != Resources::default() {
            tracing::info!(request = %owner.key(), fleets = ?found.fleet_ids, spot_fleet_requests = ?found.spot_fleet_request_ids, group = ?found.asg_name, "found what a create whose answer was lost made");
        }
        Ok((found, machines))
    }

    /// The shared EC2 and SSM operations.
    pub fn ops(&self) -> &Ops {
        &self.ops
    }
}

/// How long after a launch's answer EC2 may still not show what it made (it is eventually
/// consistent): within it, a release treats an id EC2 does not know as not yet visible rather
/// than gone (counted from the attempt's start, after the longest its answer may take).
pub const VISIBILITY_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

impl Provider for AwsProvider {
    async fn health(&self) -> Result<String, ProviderError> {
        let zones = self
            .ops
            .ec2
            .describe_availability_zones()
            .send()
            .await
            .map_err(|e| classify("DescribeAvailabilityZones", e))?;
        let reachable =
            format!("AWS region {} reachable ({} availability zones)", self.region, zones.availability_zones().len());
        Ok(match self.degraded() {
            Some(problem) => format!("{reachable}; but {problem}"),
            None => reachable,
        })
    }

    async fn validate(&self, template: &MachineTemplateSpec) -> Result<Vec<InstanceTypeFacts>, ProviderError> {
        if let Some(profile) = &template.instance_profile
            && !self.allowed_profiles.iter().any(|allowed| allowed == profile_name(profile))
        {
            return Err(ProviderError::invalid(
                "spec.instanceProfile",
                "InstanceProfileNotAllowed",
                format!(
                    "instance profile {profile} is not in allowedInstanceProfiles of provider `{}` (allowed: {}); the operator passes only the roles its config allows",
                    template.provider,
                    if self.allowed_profiles.is_empty() {
                        "none".to_string()
                    } else {
                        self.allowed_profiles.join(", ")
                    }
                ),
            ));
        }
        validate::template(&self.ops, template).await
    }

    async fn left_out(&self, template: &MachineTemplateSpec, mix: MarketMix) -> Result<Vec<LeftOut>, ProviderError> {
        Ok(fleet::left_out(&self.ops, template, mix).await)
    }

    async fn provision(&self, request: &ProvisionRequest<'_>) -> Result<ProvisionOutcome, ProviderError> {
        let outcome = match request.template.api {
            Api::RunInstances => run_instances::provision(&self.ops, request).await,
            Api::Ec2Fleet => ec2_fleet::provision(&self.ops, request).await,
            Api::SpotFleet => spot_fleet::provision(&self.ops, request).await,
            Api::Asg => asg::provision(&self.ops, request).await,
        };
        self.poller.acted(request.owner);
        match &outcome {
            Ok(done) => {
                self.poller.launched(request.owner, &done.launched);
                if done.ambiguous {
                    self.poller.outcome_unknown(request.owner);
                }
            }
            // It may have launched: the request is listed by its tags for a while.
            Err(e) if e.is_ambiguous() => self.poller.outcome_unknown(request.owner),
            Err(_) => {}
        }
        outcome
    }

    async fn observe(
        &self,
        owner: &Owner,
        known: &[String],
        launched: bool,
    ) -> Result<Vec<ObservedMachine>, ProviderError> {
        if let Some(queue) = &self.queue {
            queue.start();
        }
        self.poller.observe(owner, known, launched).await
    }

    async fn describe_fleets(&self, owner: &Owner, resources: &Resources) -> Result<FleetView, ProviderError> {
        let held = fleet_state::Held {
            fleets: resources.fleet_ids.iter().cloned().collect(),
            spot_fleets: resources.spot_fleet_request_ids.iter().cloned().collect(),
            group: resources.asg_name.clone(),
        };
        self.poller.fleets(owner, held).await
    }

    async fn unrecorded(&self, owner: &Owner, resources: &Resources) -> Result<Resources, ProviderError> {
        Ok(self.find_unrecorded(owner, resources).await?.0)
    }

    async fn return_machines(&self, owner: &Owner, request: &ReturnRequest<'_>) -> Result<(), ProviderError> {
        let ids = request.instance_ids;
        let mine = self.terminable(owner, ids).await?;
        if mine.len() < ids.len() {
            tracing::warn!(request = %owner.key(), asked = ids.len(), owned = mine.len(), "not returning instances this request does not own");
        }
        // A maintain fleet would replace what leaves: lower it first (absolute, replay-safe).
        // With no machine to return, this only lowers a fleet launching more than wanted.
        let (resources, template, units) = (request.resources, request.template, request.target_units);
        let result = async {
            ec2_fleet::before_return(&self.ops, &resources.fleet_ids, template, units).await?;
            spot_fleet::before_return(&self.ops, &resources.spot_fleet_request_ids, template, units).await?;
            let rest = match &resources.asg_name {
                Some(group) => asg::return_members(&self.ops, group, template, &mine, units).await?,
                None => mine,
            };
            self.ops.terminate(&rest).await
        }
        .await;
        // After the calls, not before: a cycle that began while they were in flight may not
        // show their effect, and the request's next look must.
        self.poller.acted(owner);
        result
    }

    async fn release(&self, owner: &Owner, holdings: Holdings<'_>) -> Result<Released, ProviderError> {
        // Forgotten at once, not when done: requests released together would each count the
        // others' recent launches as uses of a shared launch template and all keep it.
        let mut launch_templates = self.ops.forget_launch_template_uses(&owner.uid);
        let outcome_unknown = holdings.outcome_unknown();
        // Nothing recorded at all: it never launched (an attempt is written before any create).
        let launched =
            holdings.last_attempt.is_some() || !holdings.known.is_empty() || holdings.resources.launches_on_its_own();
        let recent = holdings.launched_within(self.not_shown_for, jiff::Timestamp::now());
        let Holdings { known, resources, launch_templates_in_use, .. } = holdings;
        let (mut everything, mut known) = (resources.clone(), known.to_vec());
        if outcome_unknown {
            // The last create's answer was lost: what it made is recorded nowhere else.
            let (found, machines) = self.find_unrecorded(owner, resources).await?;
            everything.absorb(found);
            known.extend(machines);
        }
        // The launch templates the request launched from: recorded, found with what a lost
        // create made, or used by this process lately. Only this cluster's are ever deleted
        // (`sweep::delete_unless_in_use`): an adopted fleet may launch from the user's own.
        launch_templates.extend(resources.launch_template_id.iter().chain(&everything.launch_template_id).cloned());
        if outcome_unknown {
            // A lost create (a group's, say) may have made one that nothing names: look for it.
            launch_templates.extend(self.ops.launch_templates_of_template(owner).await?);
        }
        // What to tear down: the ids the status knows, and after a lost answer a fresh tag
        // listing (batched with every other request's) for what no record names. Otherwise the
        // poller already tracks all there is: what its listing found when it first saw the
        // request, and every machine launched since (their answers came back), so a release
        // costs no listing; and when the poller has not looked at the request yet (a restart),
        // the release comes back once it has (it wakes the request) rather than hold a
        // controller worker while it looks.
        let listed = if outcome_unknown {
            self.poller.relist(owner, &known).await?
        } else {
            match self.poller.look(owner, &known, launched)? {
                Some(listed) => listed,
                None => return Ok(Released::AwaitingWake),
            }
        };
        // Fleets first, or a maintain fleet would replace what is terminated below; each is
        // removed once per process (a release that comes back sends nothing for it again).
        // What they launched goes with them, and a fleet launches nothing after its deletion:
        // the live machines of the view are terminated below all the same (one call shared
        // with the other releases; EC2 takes it as done for a machine already on its way out),
        // so nothing is left to look at again and wait for.
        ec2_fleet::delete(&self.ops, &everything.fleet_ids).await?;
        spot_fleet::cancel(&self.ops, &everything.spot_fleet_request_ids).await?;
        asg::delete(&self.ops, everything.asg_name.as_deref()).await?;
        // Moments after a launch, EC2 may not show what it made yet: an id it does not know is
        // "not yet", not "gone" (else the finalizer would go and the machine run on, untracked).
        // (A fleet or spot fleet request counts as not shown yet only if this process never saw
        // it described: one this release deleted may drop out of a listing at once.)
        let unseen: Vec<String> = if recent {
            let mut unseen: Vec<String> =
                known.iter().filter(|id| !listed.iter().any(|m| &m.instance_id == *id)).cloned().collect();
            unseen.extend(ec2_fleet::not_shown_yet(&self.ops, &resources.fleet_ids).await?);
            unseen.extend(spot_fleet::not_shown_yet(&self.ops, &resources.spot_fleet_request_ids).await?);
            unseen
        } else {
            vec![]
        };
        let live: Vec<ObservedMachine> = listed.into_iter().filter(|m| m.state.can_terminate()).collect();
        self.terminate_tagged_apart(owner, live).await?;
        if !unseen.is_empty() {
            // The next pass looks again: at a view after these removals.
            self.poller.acted(owner);
            return Ok(Released::InProgress(format!(
                "waiting for EC2 to show {unseen:?}, made moments ago, before letting the request go"
            )));
        }
        self.delete_unused_launch_templates(owner, launch_templates_in_use, &launch_templates).await?;
        self.poller.forget(owner);
        Ok(Released::Done)
    }

    async fn orphan(&self, owner: &Owner, holdings: Holdings<'_>) -> Result<(), ProviderError> {
        self.ops.forget_launch_template_uses(&owner.uid);
        let Holdings { known, resources, .. } = holdings;
        let mut ids: Vec<String> = self.poller.relist(owner, known).await?.into_iter().map(|m| m.instance_id).collect();
        ids.extend(resources.fleet_ids.iter().cloned());
        ids.extend(resources.spot_fleet_request_ids.iter().cloned());
        ids.sort();
        ids.dedup();
        let tag = aws_sdk_ec2::types::Tag::builder().key(tags::ORPHANED).value("true").build();
        for chunk in ids.chunks(ops::PAGE) {
            self.ops
                .ec2
                .create_tags()
                .set_resources(Some(chunk.to_vec()))
                .tags(tag.clone())
                .send()
                .await
                .map_err(|e| classify("CreateTags", e))?;
        }
        if let Some(group) = &resources.asg_name {
            let tag = aws_sdk_autoscaling::types::Tag::builder()
                .resource_id(group)
                .resource_type("auto-scaling-group")
                .key(tags::ORPHANED)
                .value("true")
                // What the user's group launches later is theirs too: the sweep must not take
                // it for a leak of the deleted request (whose uid it carries).
                .propagate_at_launch(true)
                .build();
            self.ops
                .autoscaling
                .create_or_update_tags()
                .tags(tag)
                .send()
                .await
                .map_err(|e| classify("CreateOrUpdateTags", e))?;
        }
        // A maintain fleet launches later from the shared launch template, whose tags carry no
        // mark: it launches from a marked version of it from now on (made only if one exists).
        if let Some(lt) = &resources.launch_template_id {
            let version = tokio::sync::OnceCell::new();
            ec2_fleet::launch_from(&self.ops, &resources.fleet_ids, lt, &version).await?;
            spot_fleet::launch_from(&self.ops, &resources.spot_fleet_request_ids, lt, &version).await?;
        }
        self.poller.forget(owner);
        tracing::info!(request = %owner.key(), resources = ids.len(), "marked orb.dev/orphaned: left to the user");
        Ok(())
    }

    async fn sweep(&self, live: &super::Live, now: std::time::Instant) -> Result<Vec<super::Leak>, ProviderError> {
        self.sweeper.sweep(&self.ops, live, now, &self.calls).await
    }
}
