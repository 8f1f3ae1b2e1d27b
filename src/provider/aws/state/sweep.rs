//! The leak sweep of one AWS provider: every resource tagged with this operator's
//! `orb.dev/cluster` whose `orb.dev/request-uid` names no live MachineRequest — instances,
//! EC2 fleets, spot fleet requests, Auto Scaling groups — and every operator-made launch
//! template no live request records, is removed once it has been seen orphaned for the grace
//! period (a request created a moment ago is not in the operator's cache yet). Other clusters'
//! resources, resources without a request uid, resources marked `orb.dev/orphaned` (their
//! request was deleted with `deletionPolicy: Orphan`) and (when the operator watches one
//! namespace) other namespaces' resources are never touched. In dry-run mode leaks are only reported.
//!
//! A launch template that an active fleet, spot fleet request or group launches from is in use,
//! whoever owns that (an orphaned group, a fleet whose request is not in the cache yet): the
//! sweep and releases ask AWS (`launch_templates_in_use`), never the cache alone.
//!
//! Every leak is logged and counted; the caller also publishes an Event for each.

use crate::provider::aws::calls::call_metrics::CallMetrics;
use crate::provider::aws::calls::errors::classify;
use crate::provider::aws::calls::ops::{self, Ops};
use crate::provider::aws::handlers::{asg, ec2_fleet, launch_template, spot_fleet};
use crate::provider::{Leak, Live, ProviderError, tags};
use aws_sdk_ec2::types::Filter;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The sweep's settings and what it has seen orphaned, and since when.
pub struct Sweeper {
    every: Duration,
    grace: Duration,
    dry_run: bool,
    last: Mutex<Option<Instant>>,
    /// (kind, id) -> first seen orphaned.
    orphaned: Mutex<HashMap<(&'static str, String), Instant>>,
}

/// One tagged resource found by a listing.
struct Found {
    kind: &'static str,
    id: String,
    /// Its `orb.dev/request-uid`; `None` for launch templates (shared by a template's requests).
    uid: Option<String>,
    /// Its `orb.dev/request` (`namespace/name`), or the launch template's namespace.
    request: Option<String>,
    namespace: Option<String>,
    /// Marked `orb.dev/orphaned`: its request was deleted with `deletionPolicy: Orphan`.
    orphaned: bool,
}

impl Sweeper {
    pub fn new(every: Duration, grace: Duration, dry_run: bool) -> Self {
        Self { every, grace, dry_run, last: Mutex::default(), orphaned: Mutex::default() }
    }

    /// Whether a sweep is due at `now` (and then records it as done).
    fn due(&self, now: Instant) -> bool {
        if self.every.is_zero() {
            return false;
        }
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Lists this cluster's resources, removes those orphaned for the grace period and returns
    /// them. Nothing is listed unless a sweep is due.
    pub async fn sweep(
        &self,
        ops: &Ops,
        live: &Live,
        now: Instant,
        metrics: &CallMetrics,
    ) -> Result<Vec<Leak>, ProviderError> {
        if !self.due(now) {
            return Ok(vec![]);
        }
        let mut in_use = BTreeSet::new();
        let mut found = instances(ops).await?;
        found.extend(fleets(ops, &mut in_use).await?);
        found.extend(spot_fleet_requests(ops, &mut in_use).await?);
        found.extend(groups(ops, &mut in_use).await?);
        found.extend(launch_templates(ops, &in_use).await?);
        let in_scope = |f: &Found| match &live.namespace {
            None => true,
            Some(ns) => f.namespace.as_deref() == Some(ns.as_str()),
        };
        let orphans: Vec<Found> = found
            .into_iter()
            .filter(in_scope)
            .filter(|f| !f.orphaned)
            .filter(|f| match &f.uid {
                Some(uid) => !live.uids.contains(uid),
                None => f.kind == "launch-template" && !live.launch_templates.contains(&f.id),
            })
            .collect();
        let due: Vec<Found> = {
            let mut seen = self.orphaned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Forget what is no longer orphaned (or gone).
            seen.retain(|key, _| orphans.iter().any(|f| (f.kind, &f.id) == (key.0, &key.1)));
            orphans
                .into_iter()
                .filter(|f| {
                    let since = *seen.entry((f.kind, f.id.clone())).or_insert(now);
                    now.duration_since(since) >= self.grace
                })
                .collect()
        };
        let mut leaks = vec![];
        for f in due {
            if !self.dry_run {
                remove(ops, &f).await?;
                self.orphaned.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&(f.kind, f.id.clone()));
            }
            tracing::warn!(kind = f.kind, id = %f.id, request = ?f.request, request_uid = ?f.uid, dry_run = self.dry_run, "leaked resource of a request that no longer exists");
            metrics.metrics.swept(&metrics.provider, f.kind, self.dry_run);
            leaks.push(Leak { kind: f.kind.into(), id: f.id, request: f.request, removed: !self.dry_run });
        }
        Ok(leaks)
    }
}

async fn remove(ops: &Ops, f: &Found) -> Result<(), ProviderError> {
    match f.kind {
        "instance" => ops.terminate(std::slice::from_ref(&f.id)).await,
        "fleet" => ec2_fleet::delete(ops, std::slice::from_ref(&f.id)).await,
        "spot-fleet-request" => spot_fleet::cancel(ops, std::slice::from_ref(&f.id)).await,
        "auto-scaling-group" => asg::delete(ops, Some(&f.id)).await,
        _ => ops.delete_launch_template(&f.id).await,
    }
}

fn cluster_filter(ops: &Ops) -> Filter {
    Filter::builder().name(format!("tag:{}", tags::CLUSTER)).values(&ops.cluster_id).build()
}

/// Tag value `key` among `(key, value)` pairs.
fn tag<'a>(pairs: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>, key: &str) -> Option<String> {
    pairs.into_iter().find(|(k, _)| *k == Some(key)).and_then(|(_, v)| v).map(str::to_string)
}

/// A listed resource as the sweep judges it, if it is this cluster's (its `orb.dev/cluster`
/// tag — the server-side filters are not trusted alone) and has an id.
fn found(ops: &Ops, kind: &'static str, id: Option<&str>, pairs: &[(Option<&str>, Option<&str>)]) -> Option<Found> {
    let tag = |key| tag(pairs.iter().copied(), key);
    if tag(tags::CLUSTER).as_deref() != Some(ops.cluster_id.as_str()) {
        return None;
    }
    let request = tag(tags::REQUEST);
    Some(Found {
        kind,
        id: id?.to_string(),
        uid: tag(tags::REQUEST_UID),
        namespace: request.as_deref().and_then(|r| r.split_once('/')).map(|(ns, _)| ns.to_string()),
        request,
        orphaned: tag(tags::ORPHANED).is_some(),
    })
}

/// This cluster's instances that are not on their way out.
async fn instances(ops: &Ops) -> Result<Vec<Found>, ProviderError> {
    let states = Filter::builder()
        .name("instance-state-name")
        .set_values(Some(["pending", "running", "stopping", "stopped"].map(String::from).to_vec()))
        .build();
    let mut pages = ops
        .ec2
        .describe_instances()
        .filters(cluster_filter(ops))
        .filters(states)
        .max_results(ops::PAGE as i32)
        .into_paginator()
        .send();
    let mut out = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("DescribeInstances", e))?;
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            let tags: Vec<_> = i.tags().iter().map(|t| (t.key(), t.value())).collect();
            out.extend(found(ops, "instance", i.instance_id(), &tags));
        }
    }
    Ok(out)
}

/// Launch templates (ids and names) that an active EC2 fleet (of type request or maintain),
/// spot fleet request or this cluster's Auto Scaling group launches from: three paged listings.
pub async fn launch_templates_in_use(ops: &Ops) -> Result<BTreeSet<String>, ProviderError> {
    let mut in_use = BTreeSet::new();
    fleets(ops, &mut in_use).await?;
    spot_fleet_requests(ops, &mut in_use).await?;
    groups(ops, &mut in_use).await?;
    Ok(in_use)
}

/// Deletes those of launch templates `ids` that are this cluster's (tagged with its id: a
/// request may have adopted a fleet launching from the user's own) and that no active fleet, spot
/// fleet request or group launches from by AWS's listings — each listing made once for every id
/// given together.
pub async fn delete_unless_in_use(ops: &Ops, ids: &[String]) -> Result<(), ProviderError> {
    let ours: BTreeMap<String, Option<String>> = ops
        .cluster_launch_templates(&[])
        .await?
        .iter()
        .filter_map(|lt| Some((lt.launch_template_id()?.to_string(), lt.launch_template_name().map(str::to_string))))
        .filter(|(id, _)| ids.contains(id))
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let referenced = launch_templates_in_use(ops).await?;
    for (id, name) in ours {
        if referenced.contains(&id) || name.is_some_and(|n| referenced.contains(&n)) {
            tracing::info!(launch_template = %id, "kept: an active fleet or group launches from it");
            continue;
        }
        ops.delete_launch_template(&id).await?;
    }
    Ok(())
}

/// Adds a launch template reference (its id and name, whichever it names) to `in_use`.
fn uses(in_use: &mut BTreeSet<String>, id: Option<&str>, name: Option<&str>) {
    in_use.extend([id, name].into_iter().flatten().map(str::to_string));
}

/// This cluster's EC2 fleets (of type request or maintain: instant fleets are listed only by
/// id, and their instances carry the request's tags) that still launch or hold instances; the
/// launch templates of every active fleet go to `in_use`.
async fn fleets(ops: &Ops, in_use: &mut BTreeSet<String>) -> Result<Vec<Found>, ProviderError> {
    let mut pages = ops.ec2.describe_fleets().into_paginator().send();
    let mut out = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("DescribeFleets", e))?;
        for f in page.fleets() {
            if f.fleet_state().is_some_and(ec2_fleet::is_active) {
                // An instant fleet launched once, at its creation: it needs its template no more.
                let launches_later = f.r#type() != Some(&aws_sdk_ec2::types::FleetType::Instant);
                let configs = if launches_later { f.launch_template_configs() } else { &[] };
                for spec in configs.iter().filter_map(|c| c.launch_template_specification()) {
                    uses(in_use, spec.launch_template_id(), spec.launch_template_name());
                }
                let tags: Vec<_> = f.tags().iter().map(|t| (t.key(), t.value())).collect();
                out.extend(found(ops, "fleet", f.fleet_id(), &tags));
            }
        }
    }
    Ok(out)
}

/// This cluster's spot fleet requests that are not cancelled; the launch templates of every
/// active one go to `in_use`.
async fn spot_fleet_requests(ops: &Ops, in_use: &mut BTreeSet<String>) -> Result<Vec<Found>, ProviderError> {
    let mut pages = ops.ec2.describe_spot_fleet_requests().into_paginator().send();
    let mut out = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("DescribeSpotFleetRequests", e))?;
        for r in page.spot_fleet_request_configs() {
            if r.spot_fleet_request_state().is_some_and(spot_fleet::is_active) {
                let configs = r.spot_fleet_request_config().map(|c| c.launch_template_configs()).unwrap_or_default();
                for spec in configs.iter().filter_map(|c| c.launch_template_specification()) {
                    uses(in_use, spec.launch_template_id(), spec.launch_template_name());
                }
                let tags: Vec<_> = r.tags().iter().map(|t| (t.key(), t.value())).collect();
                out.extend(found(ops, "spot-fleet-request", r.spot_fleet_request_id(), &tags));
            }
        }
    }
    Ok(out)
}

/// This cluster's Auto Scaling groups; the launch templates of those not being deleted go to
/// `in_use`.
async fn groups(ops: &Ops, in_use: &mut BTreeSet<String>) -> Result<Vec<Found>, ProviderError> {
    let filter = aws_sdk_autoscaling::types::Filter::builder()
        .name(format!("tag:{}", tags::CLUSTER))
        .values(&ops.cluster_id)
        .build();
    let mut pages = ops.autoscaling.describe_auto_scaling_groups().filters(filter).into_paginator().send();
    let mut out = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("DescribeAutoScalingGroups", e))?;
        for g in page.auto_scaling_groups() {
            // A group being deleted is on its way out already.
            if g.status().is_none() {
                for spec in asg::launch_templates(g) {
                    uses(in_use, spec.launch_template_id(), spec.launch_template_name());
                }
                let tags: Vec<_> = g.tags().iter().map(|t| (t.key(), t.value())).collect();
                out.extend(found(ops, "auto-scaling-group", g.auto_scaling_group_name(), &tags));
            }
        }
    }
    Ok(out)
}

/// This cluster's operator-made launch templates that nothing in `in_use` launches from.
async fn launch_templates(ops: &Ops, in_use: &BTreeSet<String>) -> Result<Vec<Found>, ProviderError> {
    let mut out = vec![];
    for lt in ops.cluster_launch_templates(&[]).await? {
        if [lt.launch_template_id(), lt.launch_template_name()].into_iter().flatten().any(|r| in_use.contains(r)) {
            continue;
        }
        let tags: Vec<_> = lt.tags().iter().map(|t| (t.key(), t.value())).collect();
        // Shared by a template's requests: no request uid; named after its template.
        let Some(mut f) = found(ops, "launch-template", lt.launch_template_id(), &tags) else { continue };
        f.namespace = tag(tags.iter().copied(), launch_template::NAMESPACE_TAG);
        f.request = tag(tags.iter().copied(), tags::TEMPLATE)
            .map(|t| format!("template {}/{t}", f.namespace.clone().unwrap_or_default()));
        out.push(f);
    }
    Ok(out)
}
