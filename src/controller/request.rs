//! The MachineRequest reconciler: finalizer, template and provider lookup, then one short driver
//! — observe (describe) -> plan (pure) -> act (at most one mutating cloud call) -> report (status
//! by server-side apply, an Event on each phase change) — and a requeue. It never waits for the
//! cloud inline.
//!
//! It never acts on a status older than the last one this process wrote: the controller's cache
//! often lags behind a write (a requeue fires before the watch delivers it), and a plan made from
//! a stale status could launch again or reuse an old client token. `StatusMemory` remembers each
//! request's last write; when the cache differs, the request is read from the API server.

use super::headroom::{self, Headroom};
use super::planner::{self, Frame, Requeue, Step};
use super::{Context, Error, FINALIZER, MANAGER};
use crate::api::conditions::{self, Cond};
use crate::api::{DeletionPolicy, MachineRequest, MachineRequestStatus, MachineTemplate, Phase};
use crate::provider::{AnyProvider, Holdings, Owner, Provider, ProvisionRequest, Released, ReturnRequest};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

/// Where the driver reads and writes status. The Kubernetes implementation applies `/status`;
/// tests use an in-memory one (and can drop a write to simulate a crash).
#[async_trait::async_trait]
pub trait StatusSink: Send + Sync {
    async fn write(&self, status: &MachineRequestStatus) -> Result<(), Error>;
    /// The status to plan from: `cached` (the controller's cache) unless it is older than the
    /// last status this process wrote, in which case the API server's current one.
    async fn latest(&self, cached: Option<&MachineRequestStatus>) -> Result<MachineRequestStatus, Error>;
}

/// A digest of a status: what `StatusMemory` keeps of each write (a copy of every request's
/// status would double what the request cache holds).
type Digest = [u8; 16];

fn digest(status: &MachineRequestStatus) -> Digest {
    use sha2::Digest as _;
    let json = serde_json::to_vec(status).unwrap_or_default();
    let mut out = [0u8; 16];
    out.copy_from_slice(&sha2::Sha256::digest(&json)[..16]);
    out
}

/// Requests (by uid) this process released lately. The watch brings a released request back
/// once more before its finalizer's removal reaches the cache (its Deleting status write
/// queued a reconcile): that pass must not release again — everything is gone, and a second
/// release would list by tags what the first one already tore down.
#[derive(Default)]
pub struct ReleasedMemory(Mutex<HashMap<String, std::time::Instant>>);

impl ReleasedMemory {
    /// How long a release is remembered: far longer than a cache lags.
    const KEPT: std::time::Duration = std::time::Duration::from_secs(600);

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn record(&self, uid: &str) {
        let mut map = self.map();
        map.retain(|_, at| at.elapsed() < Self::KEPT);
        map.insert(uid.to_string(), std::time::Instant::now());
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.map().get(uid).is_some_and(|at| at.elapsed() < Self::KEPT)
    }
}

/// The last status this process wrote for each request (by uid), as a digest.
#[derive(Default)]
pub struct StatusMemory(Mutex<HashMap<String, Digest>>);

impl StatusMemory {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Digest>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers `status` as the latest written for `uid`.
    pub fn record(&self, uid: &str, status: &MachineRequestStatus) {
        self.map().insert(uid.to_string(), digest(status));
    }

    /// Forgets a request that is gone.
    pub fn forget(&self, uid: &str) {
        self.map().remove(uid);
    }

    /// The status to plan from. When `cached` is not what this process last wrote, the cache
    /// lags (or someone else wrote): `fetch` reads the API server's copy, which wins.
    pub async fn latest<F, Fut>(
        &self,
        uid: &str,
        cached: Option<&MachineRequestStatus>,
        fetch: F,
    ) -> Result<MachineRequestStatus, Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<MachineRequestStatus>, Error>>,
    {
        let cached = cached.cloned().unwrap_or_default();
        let written = self.map().get(uid).copied();
        if written.is_none_or(|written| written == digest(&cached)) {
            return Ok(cached);
        }
        let fresh = fetch().await?.unwrap_or_default();
        tracing::debug!(uid, "cache behind the last status write; planning from the API server's copy");
        self.record(uid, &fresh);
        Ok(fresh)
    }
}

/// Server-side apply of a request's status subresource.
pub struct KubeStatus<'a> {
    api: Api<MachineRequest>,
    name: String,
    uid: String,
    memory: &'a StatusMemory,
}

#[async_trait::async_trait]
impl StatusSink for KubeStatus<'_> {
    async fn write(&self, status: &MachineRequestStatus) -> Result<(), Error> {
        let patch = serde_json::json!({
            "apiVersion": "orb.dev/v1alpha1",
            "kind": "MachineRequest",
            "status": status,
        });
        let written =
            self.api.patch_status(&self.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
        self.memory.record(&self.uid, &written.status.unwrap_or_default());
        Ok(())
    }

    async fn latest(&self, cached: Option<&MachineRequestStatus>) -> Result<MachineRequestStatus, Error> {
        self.memory.latest(&self.uid, cached, || async { Ok(self.api.get_status(&self.name).await?.status) }).await
    }
}

/// A sink that also keeps the last status written through it, for the length of one pass.
struct Recording<'a> {
    inner: &'a dyn StatusSink,
    last: Mutex<Option<MachineRequestStatus>>,
}

#[async_trait::async_trait]
impl StatusSink for Recording<'_> {
    async fn write(&self, status: &MachineRequestStatus) -> Result<(), Error> {
        self.inner.write(status).await?;
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(status.clone());
        Ok(())
    }

    async fn latest(&self, cached: Option<&MachineRequestStatus>) -> Result<MachineRequestStatus, Error> {
        self.inner.latest(cached).await
    }
}

/// Writes only when something changed: an unchanged status costs no API call.
///
/// A status the API server refuses for its size is not dropped in silence: `before` (which
/// fitted) is written again with Ready=False `StatusTooLarge` saying so, and the pass fails, so
/// nothing is launched or returned on a plan the status does not record.
async fn write_if_changed(
    sink: &dyn StatusSink,
    before: &MachineRequestStatus,
    after: &MachineRequestStatus,
) -> Result<(), Error> {
    if before == after {
        return Ok(());
    }
    match sink.write(after).await {
        Err(Error::Kube(cause)) if super::too_large(&cause) => {
            let error = Error::StatusTooLarge {
                machines: after.machines.len(),
                bytes: serde_json::to_vec(after).map_or(0, |v| v.len()),
                cause,
            };
            let mut held = before.clone();
            let now = Time(jiff::Timestamp::now());
            let generation = held.observed_generation;
            for type_ in [conditions::READY, conditions::DEGRADED] {
                let status = type_ == conditions::DEGRADED;
                let cond = Cond::new(type_, status, "StatusTooLarge", error.to_string());
                conditions::upsert(&mut held.conditions, cond, generation, &now);
            }
            if let Err(e) = sink.write(&held).await {
                tracing::warn!(error = %e, "could not record that the status is too large");
            }
            Err(error)
        }
        other => other,
    }
}

/// The owner of a request's machines, as tags name it.
pub fn owner_of(mr: &MachineRequest) -> Result<Owner, Error> {
    let missing = |field| Error::MissingField { object: format!("MachineRequest {}", mr.name_any()), field };
    Ok(Owner {
        uid: mr.uid().ok_or_else(|| missing("metadata.uid"))?,
        namespace: mr.namespace().ok_or_else(|| missing("metadata.namespace"))?,
        name: mr.name_any(),
        template: mr.spec.template_ref.name.clone(),
    })
}

/// What the caller settled for one pass of `drive`.
pub struct Target<'a> {
    pub provider_name: &'a str,
    pub provider: &'a AnyProvider,
    /// A reason of the caller's to launch nothing (the template's readiness is checked here).
    pub hold: Option<(String, String)>,
    /// Live machines of the template's other requests, for `maxMachines`.
    pub machines_elsewhere: u32,
}

/// One pass of observe -> plan -> act -> report for a request whose template and provider are
/// known. Returns the status it left and when to look again.
pub async fn drive(
    mr: &MachineRequest,
    template: &MachineTemplate,
    target: Target<'_>,
    sink: &dyn StatusSink,
    now: jiff::Timestamp,
) -> Result<(MachineRequestStatus, Requeue), Error> {
    let Target { provider_name, provider, hold, machines_elsewhere } = target;
    let owner = owner_of(mr)?;
    let previous = sink.latest(mr.status.as_ref()).await?;
    let fleets = provider.describe_fleets(&owner, &previous.resources).await?;
    let frame = Frame {
        // Whole seconds, as the API server stores times.
        now: jiff::Timestamp::from_second(now.as_second()).unwrap_or(now),
        request_name: &owner.name,
        uid: &owner.uid,
        generation: mr.meta().generation.unwrap_or_default(),
        spec: &mr.spec,
        template: &template.spec,
        template_generation: template.meta().generation.unwrap_or_default(),
        launch_hold: hold.or_else(|| launch_hold(template)),
        machines_elsewhere,
        outstanding: fleets.outstanding,
        fleet_failures: &fleets.failures,
        finished_fleets: &fleets.finished,
    };
    // The machines the status knows and the fleets' members, looked up by id as well as by
    // tags: a fleet of type request or maintain launches from a launch template shared by the
    // template's requests, so its members carry no request tag, and a running machine whose
    // tags were stripped must not be forgotten (and leaked).
    let known: Vec<String> =
        previous.machines.iter().map(|m| m.instance_id.clone()).chain(fleets.members.iter().cloned()).collect();
    let launched = previous.attempt.is_some() || !known.is_empty();
    let mut observed = provider.observe(&owner, &known, launched).await?;
    for m in &mut observed {
        // A fleet member is known by its fleet, not "lost by its tags".
        m.untagged &= !fleets.members.contains(&m.instance_id);
    }
    let mut plan = planner::plan(&frame, &previous, &observed);
    let mut status = plan.status;
    status.provider = Some(provider_name.to_string());
    let replays = matches!(&plan.step, Step::Launch { attempt, .. }
        if previous.attempt.as_ref().is_some_and(|open| open.number == attempt.number));
    if let Step::Launch { attempt, .. } = &mut plan.step
        && !replays
    {
        // Decided once, written with the attempt before its first call: every try sends the same.
        attempt.left_out = provider.left_out(&template.spec, planner::attempt_mix(attempt)).await?;
        status.attempt = Some(attempt.clone());
    }
    let still_open = status.attempt.as_ref().zip(previous.attempt.as_ref()).is_some_and(|(now, before)| now == before);
    // (RunInstances makes nothing but tagged instances, which the tag listing finds.)
    let makes_fleets = template.spec.api != crate::api::Api::RunInstances;
    if previous.outcome_unknown() && !still_open && !replays && makes_fleets {
        // An attempt whose answer was lost is closed without a replay (capacity lowered, say):
        // what it made is adopted, so that it is followed, returned and released like the rest.
        status.resources.absorb(provider.unrecorded(&owner, &status.resources).await?);
    }
    write_if_changed(sink, &previous, &status).await?;
    match plan.step {
        Step::Wait => {}
        Step::Return(ids) => {
            if ids.is_empty() {
                tracing::info!(request = %owner.key(), "lowering the fleet's target to the request's capacity");
            } else {
                tracing::info!(request = %owner.key(), machines = ?ids, "returning machines");
            }
            let target = planner::fleet_target(&frame, &status);
            let request = ReturnRequest {
                instance_ids: &ids,
                template: &template.spec,
                resources: &status.resources,
                target_units: target,
            };
            if let Err(e) = provider.return_machines(&owner, &request).await {
                planner::record_return_error(&frame, &mut status, &e);
                sink.write(&status).await?;
                return Err(e.into());
            }
        }
        Step::Launch { units, attempt } => {
            if replays {
                // Why, every time: a replay is a mutating call that nothing else explains.
                tracing::info!(request = %owner.key(), units, attempt = attempt.number, "replaying: the last try of this attempt has an unknown outcome (its answer was lost, or the status write after it failed); same client token and offerings");
            } else {
                tracing::info!(request = %owner.key(), units, attempt = attempt.number, "launching");
            }
            let request = ProvisionRequest {
                owner: &owner,
                template: &template.spec,
                mix: planner::attempt_mix(&attempt),
                client_token: &attempt.client_token,
                resources: &previous.resources,
                target_units: attempt.target_units.max(0).unsigned_abs(),
                replay: replays,
                left_out: &attempt.left_out,
            };
            let result = provider.provision(&request).await;
            let before = status.clone();
            planner::record_launch(&frame, &mut status, &result);
            if status.attempt.as_ref().is_some_and(|a| !a.completed) {
                let why = match &result {
                    Err(e) => e.to_string(),
                    Ok(outcome) => outcome.failures.last().map(|f| f.message.clone()).unwrap_or_default(),
                };
                tracing::warn!(request = %owner.key(), attempt = attempt.number, %why, "the outcome of this try is unknown: the attempt stays open and is replayed with the same client token");
            }
            write_if_changed(sink, &before, &status).await?;
            if let Err(e) = result {
                return Err(e.into());
            }
        }
    }
    Ok((status, plan.requeue))
}

/// One pass of `drive` for a request whose template caps its machines (`maxMachines`): the
/// template's requests take turns, and the others' machines (`cached`: uid and held machines,
/// from the cache, read once it is this request's turn) are counted at their freshest (see
/// `headroom`). Without a cap, `drive` as is: the cache is not read and `target`'s
/// `machines_elsewhere` is not used.
pub async fn drive_capped(
    mr: &MachineRequest,
    template: &MachineTemplate,
    target: Target<'_>,
    sink: &dyn StatusSink,
    now: jiff::Timestamp,
    headroom: &Headroom,
    cached: impl FnOnce() -> Vec<(String, u32)>,
) -> Result<(MachineRequestStatus, Requeue), Error> {
    if template.spec.max_machines.is_none() {
        return drive(mr, template, target, sink, now).await;
    }
    let owner = owner_of(mr)?;
    let key = headroom::template_key(&owner.namespace, &owner.template);
    let _turn = headroom.turn(&key).await;
    let target = Target { machines_elsewhere: headroom.elsewhere(&key, &owner.uid, &cached()), ..target };
    let recording = Recording { inner: sink, last: Mutex::default() };
    let result = drive(mr, template, target, &recording, now).await;
    let left = match &result {
        Ok((status, _)) => Some(status.clone()),
        // A failed launch may still have launched: what was written counts (else what the
        // pass started from).
        Err(_) => recording.last.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).or(mr.status.clone()),
    };
    if let Some(status) = left {
        headroom.hold(&key, &owner.uid, planner::machines_held(&status, &template.spec));
    }
    result
}

/// Launching waits until the template's current generation was validated: bad input never
/// launches anything.
fn launch_hold(template: &MachineTemplate) -> Option<(String, String)> {
    let generation = template.meta().generation;
    let ready = template.status.as_ref().and_then(|s| conditions::find(&s.conditions, conditions::READY));
    match ready {
        Some(c) if c.status == "True" && c.observed_generation == generation => None,
        Some(c) if c.observed_generation == generation => Some((
            "TemplateNotReady".into(),
            format!("template {} is not Ready: {} ({})", template.name_any(), c.message, c.reason),
        )),
        _ => Some((
            "TemplateNotValidated".into(),
            format!("template {} has not been validated yet", template.name_any()),
        )),
    }
}

/// Reconciles one MachineRequest. An object that does not deserialize (written past the schema,
/// or by a newer operator) is reported on itself and left alone; the others go on.
pub async fn reconcile(guard: Arc<DeserializeGuard<MachineRequest>>, ctx: Arc<Context>) -> Result<Action, Error> {
    match &guard.0 {
        Ok(mr) => reconcile_request(Arc::new(mr.clone()), ctx).await,
        Err(invalid) => {
            super::report_invalid(&ctx, "MachineRequest", invalid).await;
            Ok(Action::await_change())
        }
    }
}

async fn reconcile_request(mr: Arc<MachineRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let ns = mr.namespace().unwrap_or_default();
    let api: Api<MachineRequest> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, mr.clone(), |event| async {
        match event {
            Finalizer::Apply(mr) => apply(&mr, &api, &ctx).await,
            Finalizer::Cleanup(mr) => cleanup(&mr, &api, &ctx).await,
        }
    })
    .await
    .map_err(super::flatten);
    match &result {
        // Deleted while this reconcile ran, or read from a cache that was behind (its finalizer
        // already added): nothing is wrong, and the watch brings whatever is left to do.
        Err(error) if error.is_benign() => {
            tracing::debug!(request = %format!("{ns}/{}", mr.name_any()), %error, "nothing to do in this reconcile");
            return Ok(Action::await_change());
        }
        Err(error @ Error::ReleaseInProgress { .. }) => {
            tracing::debug!(request = %format!("{ns}/{}", mr.name_any()), %error, "release in progress");
            ctx.metrics.reconciled("request", started.elapsed(), None);
        }
        Err(error) => {
            tracing::warn!(request = %format!("{ns}/{}", mr.name_any()), %error, "reconcile failed");
            publish(&ctx, &mr, EventType::Warning, &error.reason(), error.to_string(), "Reconcile").await;
            ctx.metrics.reconciled("request", started.elapsed(), Some(&error.reason()));
        }
        Ok(_) => ctx.metrics.reconciled("request", started.elapsed(), None),
    }
    result
}

pub fn error_policy(_mr: Arc<DeserializeGuard<MachineRequest>>, error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(error.backoff(&ctx.timing))
}

fn sink<'a>(mr: &MachineRequest, api: &Api<MachineRequest>, ctx: &'a Context) -> KubeStatus<'a> {
    KubeStatus { api: api.clone(), name: mr.name_any(), uid: mr.uid().unwrap_or_default(), memory: &ctx.written }
}

async fn apply(mr: &MachineRequest, api: &Api<MachineRequest>, ctx: &Context) -> Result<Action, Error> {
    let sink = sink(mr, api, ctx);
    let ns = mr.namespace().unwrap_or_default();
    let previous = mr.status.clone().unwrap_or_default();
    let name = &mr.spec.template_ref.name;
    let template = match ctx.template(&ns, name) {
        Some(t) if launch_hold(&t).is_none() => Some(t),
        // The cache is fed by another watch than the one that woke this reconcile: when it says
        // "missing" or "not ready", ask the API server, which may already know better.
        _ => Api::<MachineTemplate>::namespaced(ctx.client.clone(), &ns).get_opt(name).await?.map(Arc::new),
    };
    let Some(template) = template else {
        let message = format!(
            "MachineTemplate {} not found in namespace {ns}; nothing is launched until it exists",
            mr.spec.template_ref.name
        );
        return wait_pending(mr, ctx, &sink, "TemplateNotFound", message).await;
    };
    // Concrete instance types from here on, also when `instanceRequirements` describe them.
    let template = Arc::new(template.for_launch());
    // Machines stay with the provider that launched them: after the template's provider changes,
    // they can still be returned through it, but nothing new is launched until they are gone.
    let live_machines = previous.machines.iter().any(crate::api::Machine::counts_as_live);
    let (provider_name, hold) = match &previous.provider {
        Some(old) if *old != template.spec.provider && live_machines => (
            old.clone(),
            Some((
                "ProviderChanged".to_string(),
                format!(
                    "template {} now names provider `{}` but this request's machines were launched by `{old}`; scale the request to 0 or recreate it to move",
                    template.name_any(),
                    template.spec.provider
                ),
            )),
        ),
        _ => (template.spec.provider.clone(), None),
    };
    let Some(provider) = ctx.registry.get(&provider_name) else {
        let message = format!(
            "template {} names provider `{provider_name}`, which the operator config does not define (configured: {})",
            template.name_any(),
            ctx.registry.names().join(", ")
        );
        return wait_pending(mr, ctx, &sink, "ProviderNotFound", message).await;
    };
    // `drive_capped` counts the other requests' machines when the template has a cap.
    let target = Target { provider_name: &provider_name, provider, hold, machines_elsewhere: 0 };
    let now = jiff::Timestamp::now();
    let cached = || ctx.machines_on(&template);
    let (status, requeue) = drive_capped(mr, &template, target, &sink, now, &ctx.headroom, cached).await?;
    announce(ctx, mr, &previous, &status).await;
    Ok(ctx.timing.after(requeue))
}

/// Records that the request cannot proceed (no template, no provider) without touching a cloud.
async fn wait_pending(
    mr: &MachineRequest,
    ctx: &Context,
    sink: &dyn StatusSink,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    let previous = sink.latest(mr.status.as_ref()).await?;
    let mut status = previous.clone();
    let now = Time(jiff::Timestamp::now());
    let generation = mr.meta().generation;
    status.observed_generation = generation;
    status.requested_capacity = mr.spec.capacity;
    status.phase = Some(Phase::Pending);
    for cond in [
        Cond::new(conditions::READY, false, reason, message.clone()),
        Cond::new(conditions::PROGRESSING, false, reason, message.clone()),
        // Only a new template or provider helps: kstatus tools should stop waiting.
        Cond::new(conditions::STALLED, true, reason, message),
        Cond::new(conditions::RECONCILING, false, reason, "waiting for a change"),
    ] {
        conditions::upsert(&mut status.conditions, cond, generation, &now);
    }
    write_if_changed(sink, &previous, &status).await?;
    announce(ctx, mr, &previous, &status).await;
    // The template (or config) appearing re-queues through the watch; this is a safety net.
    Ok(Action::requeue(ctx.timing.idle))
}

async fn cleanup(mr: &MachineRequest, api: &Api<MachineRequest>, ctx: &Context) -> Result<Action, Error> {
    let owner = owner_of(mr)?;
    if mr.spec.deletion_policy == DeletionPolicy::Orphan {
        // Marked as the user's, so that the leak sweep never takes them.
        let status = sink(mr, api, ctx).latest(mr.status.as_ref()).await?;
        let mut note = "deletionPolicy Orphan: machines left running".to_string();
        let mut type_ = EventType::Normal;
        if let Some(provider) = status.provider.as_deref().and_then(|name| ctx.registry.get(name)) {
            let known: Vec<String> = status.machines.iter().map(|m| m.instance_id.clone()).collect();
            let holdings = Holdings {
                known: &known,
                resources: &status.resources,
                launch_templates_in_use: &[],
                last_attempt: status.attempt.as_ref(),
            };
            // The user asked to keep everything: a cloud that cannot be reached (broken
            // credentials, say) must not hold the deletion, and the namespace's, forever.
            if let Err(error) = provider.orphan(&owner, holdings).await {
                tracing::warn!(request = %owner.key(), %error, "orphaned without the orb.dev/orphaned mark");
                type_ = EventType::Warning;
                // An Event's note holds 1 KiB: name a few, count the rest.
                let mut ids = known.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
                if known.len() > 5 {
                    ids.push_str(&format!(" and {} more", known.len() - 5));
                }
                note = format!(
                    "deletionPolicy Orphan: machines left running [{ids}] but not marked orb.dev/orphaned ({error}). The leak sweep removes resources of this cluster whose request is gone: tag them orb.dev/orphaned=true (with their fleets, spot fleet requests and group) before its grace period ends, or they are removed as leaked"
                );
            }
        }
        ctx.written.forget(&owner.uid);
        ctx.headroom.forget(&owner.uid);
        let reason = if type_ == EventType::Normal { "Orphaned" } else { "OrphanedUnmarked" };
        publish(ctx, mr, type_, reason, note, "Release").await;
        return Ok(Action::await_change());
    }
    if ctx.released.contains(&owner.uid) {
        // Released by an earlier pass; the finalizer helper removes the finalizer (again).
        return Ok(Action::await_change());
    }
    let status = sink(mr, api, ctx).latest(mr.status.as_ref()).await?;
    // The provider that launched the machines, even if the template now names another.
    let provider_name = status
        .provider
        .clone()
        .or_else(|| ctx.template(&owner.namespace, &owner.template).map(|t| t.spec.provider.clone()));
    let Some(provider_name) = provider_name else {
        // No template and no recorded provider: nothing was ever launched.
        return Ok(Action::await_change());
    };
    let provider = ctx.registry.get(&provider_name).ok_or_else(|| Error::ProviderGone {
        object: owner.key(),
        provider: provider_name.clone(),
        configured: ctx.registry.names().join(", "),
    })?;
    let known: Vec<String> = status.machines.iter().map(|m| m.instance_id.clone()).collect();
    let in_use = ctx.launch_templates_in_use(&owner.uid);
    let holdings = Holdings {
        known: &known,
        resources: &status.resources,
        launch_templates_in_use: &in_use,
        last_attempt: status.attempt.as_ref(),
    };
    // The status says `Deleting` only when the release does not finish in this pass: one that
    // does lets the request go at once, and two API calls (the write and its Event) per
    // request are what deleting many together waits on.
    let (reason, message, outcome) = match provider.release(&owner, holdings).await {
        Ok(Released::Done) => {
            ctx.released.record(&owner.uid);
            ctx.written.forget(&owner.uid);
            ctx.headroom.forget(&owner.uid);
            tracing::info!(request = %owner.key(), "released");
            publish(
                ctx,
                mr,
                EventType::Normal,
                "Released",
                "every machine of the request was released".into(),
                "Release",
            )
            .await;
            return Ok(Action::await_change());
        }
        Ok(Released::InProgress(left)) => {
            ("Deleting", RELEASING.to_string(), Error::ReleaseInProgress { object: owner.key(), left })
        }
        // Woken by the provider's `changes` (the requeue only backs that up).
        Ok(Released::AwaitingWake) => {
            let left = "waiting for the provider's next look at its machines".into();
            ("Deleting", RELEASING.to_string(), Error::ReleaseInProgress { object: owner.key(), left })
        }
        // What `kubectl describe mr` shows while it retries: the AWS error and what to do.
        Err(error) => ("ReleaseFailed", format!("release failed, retrying: {error}"), error.into()),
    };
    let mut deleting = status.clone();
    deleting.phase = Some(Phase::Deleting);
    let now = Time(jiff::Timestamp::now());
    let ready = Cond::new(conditions::READY, false, reason, message);
    conditions::upsert(&mut deleting.conditions, ready, mr.meta().generation, &now);
    if deleting != status {
        sink(mr, api, ctx).write(&deleting).await?;
        announce(ctx, mr, &status, &deleting).await;
    }
    Err(outcome)
}

/// The Ready message of a request whose release goes on.
const RELEASING: &str = "request deleted; releasing every machine it owns";

/// An Event for each phase transition, and for each notice a machine gets.
async fn announce(ctx: &Context, mr: &MachineRequest, before: &MachineRequestStatus, after: &MachineRequestStatus) {
    for (machine, notice) in after.machines.iter().filter_map(|m| Some((m, m.notice.as_ref()?))) {
        let had = before.machines.iter().find(|p| p.instance_id == machine.instance_id).and_then(|p| p.notice.as_ref());
        if had.is_none_or(|n| n.kind != notice.kind) {
            publish(ctx, mr, EventType::Warning, notice.kind.as_str(), notice_note(machine, notice), "Reconcile").await;
        }
    }
    let (Some(phase), true) = (after.phase, after.phase != before.phase) else { return };
    if let (Phase::Fulfilled, Some(created)) = (phase, mr.meta().creation_timestamp.as_ref()) {
        let took = jiff::Timestamp::now().duration_since(created.0);
        ctx.metrics.fulfilled(took.unsigned_abs());
    }
    let note = conditions::find(&after.conditions, conditions::READY).map(|c| c.message.clone()).unwrap_or_default();
    let type_ = match phase {
        Phase::Failed | Phase::Partial => EventType::Warning,
        _ => EventType::Normal,
    };
    publish(ctx, mr, type_, &format!("{phase:?}"), note, "Reconcile").await;
}

/// What a notice means for the request, for the person reading `kubectl describe mr`.
fn notice_note(machine: &crate::api::Machine, notice: &crate::api::MachineNotice) -> String {
    use crate::api::NoticeKind;
    let what = match notice.kind {
        NoticeKind::SpotInterruption => "EC2 interrupts this spot machine",
        NoticeKind::RebalanceRecommendation => "EC2 recommends rebalancing this spot machine (interruption risk)",
        NoticeKind::ScheduledRetirement => "AWS retires or stops this machine",
        NoticeKind::ScheduledMaintenance => "AWS maintains (reboots) this machine",
    };
    let when = notice.deadline.as_ref().map(|t| format!(" at {}", t.0)).unwrap_or_default();
    let then = if notice.replaced {
        "it no longer counts toward capacity and its replacement is launched now"
    } else if notice.kind.is_loss() {
        "it is not replaced ahead of the loss (lostMachines: Report leaves that to whoever asked; a maintain fleet or Auto Scaling group replaces its own machines)"
    } else {
        "it stays in service"
    };
    format!("{what}{when}: {} ({}); {then}", machine.instance_id, machine.instance_type.as_deref().unwrap_or("?"))
}

async fn publish(ctx: &Context, mr: &MachineRequest, type_: EventType, reason: &str, note: String, action: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(crate::api::truncate(note, 1000)),
        action: action.into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &mr.object_ref(&())).await {
        tracing::warn!(%error, "could not publish event");
    }
}
