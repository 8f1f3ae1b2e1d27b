//! The MachineTemplate reconciler: runs the provider's validation and health check, reports the
//! `Ready` condition (reason and message name the exact problem), and counts `machinesInUse`
//! across the requests that use the template. Validation results are cached per generation for
//! a few minutes so that request churn does not turn into cloud API calls.

use super::{Context, Error, MANAGER};
use crate::api::conditions::{self, Cond};
use crate::api::{InstanceTypeFacts, MachineTemplate, MachineTemplateStatus};
use crate::provider::{Provider, ProviderError, Registry};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a validation verdict is reused for the same template generation.
const VALIDATION_TTL: Duration = Duration::from_secs(300);

/// The verdict of a validation: the `Ready` condition and, when valid, the instance type facts.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub ready: Cond,
    pub instance_types: Vec<InstanceTypeFacts>,
}

/// Last verdict per template uid: (generation, when, verdict).
#[derive(Default)]
pub struct ValidationCache(Mutex<HashMap<String, (i64, Instant, Verdict)>>);

impl ValidationCache {
    fn get(&self, uid: &str, generation: i64) -> Option<Verdict> {
        let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(uid).filter(|(g, at, _)| *g == generation && at.elapsed() < VALIDATION_TTL).map(|(_, _, v)| v.clone())
    }
    fn put(&self, uid: String, generation: i64, verdict: Verdict) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(uid, (generation, Instant::now(), verdict));
    }
}

/// The `Ready` verdict for a template: provider known, template valid, provider healthy.
pub async fn readiness(template: &MachineTemplate, registry: &Registry) -> Cond {
    verdict(template, registry).await.ready
}

/// The verdict for a template, with what validation learnt about its instance types.
pub async fn verdict(template: &MachineTemplate, registry: &Registry) -> Verdict {
    let not_ready = |ready: Cond| Verdict { ready, instance_types: vec![] };
    let name = &template.spec.provider;
    let Some(provider) = registry.get(name) else {
        return not_ready(Cond::new(
            conditions::READY,
            false,
            "ProviderNotFound",
            format!(
                "spec.provider: no provider named `{name}` in the operator config (configured: {})",
                registry.names().join(", ")
            ),
        ));
    };
    let instance_types = match provider.validate(&template.spec).await {
        Ok(facts) => facts,
        Err(e) => {
            let reason = match &e {
                ProviderError::Invalid { .. } => "InvalidSpec",
                ProviderError::Auth { .. } => "NotAuthorized",
                _ => "ValidationUnavailable",
            };
            return not_ready(Cond::new(conditions::READY, false, reason, e.to_string()));
        }
    };
    match provider.health().await {
        Ok(where_) => Verdict {
            ready: Cond::new(
                conditions::READY,
                true,
                "Valid",
                format!("template valid; provider `{name}` healthy: {where_}"),
            ),
            instance_types,
        },
        Err(e) => {
            not_ready(Cond::new(conditions::READY, false, "ProviderUnhealthy", format!("provider `{name}`: {e}")))
        }
    }
}

/// Reconciles one MachineTemplate; one that does not deserialize is reported on itself.
pub async fn reconcile(guard: Arc<DeserializeGuard<MachineTemplate>>, ctx: Arc<Context>) -> Result<Action, Error> {
    match &guard.0 {
        Ok(template) => {
            let started = Instant::now();
            let metrics = ctx.metrics.clone();
            let result = reconcile_template(template, ctx).await;
            let category = result.as_ref().err().map(Error::reason);
            metrics.reconciled("template", started.elapsed(), category.as_deref());
            result
        }
        Err(invalid) => {
            super::report_invalid(&ctx, "MachineTemplate", invalid).await;
            Ok(Action::await_change())
        }
    }
}

async fn reconcile_template(template: &MachineTemplate, ctx: Arc<Context>) -> Result<Action, Error> {
    let generation = template.meta().generation.unwrap_or_default();
    let uid = template.uid().unwrap_or_default();
    let verdict = match ctx.validations.get(&uid, generation) {
        Some(verdict) => verdict,
        None => {
            let verdict = verdict(template, &ctx.registry).await;
            let cond = &verdict.ready;
            // Transient trouble (throttling, outages) is re-checked soon rather than cached.
            if cond.status || cond.reason == "InvalidSpec" || cond.reason == "ProviderNotFound" {
                ctx.validations.put(uid, generation, verdict.clone());
            }
            verdict
        }
    };
    let ready = verdict.ready;
    let previous = template.status.clone().unwrap_or_default();
    // Facts of the current generation when it validated; else what was known before.
    let instance_types = if ready.status { verdict.instance_types } else { previous.instance_types.clone() };
    let mut status = MachineTemplateStatus {
        observed_generation: Some(generation),
        conditions: previous.conditions.clone(),
        machines_in_use: i32::try_from(
            ctx.machines_on(template).iter().map(|(_, n)| *n).fold(0u32, u32::saturating_add),
        )
        .unwrap_or(i32::MAX),
        types: crate::api::types_summary(&instance_types),
        instance_types,
    };
    if !ready.status {
        tracing::info!(template = %template.name_any(), reason = %ready.reason, message = %ready.message, "template not ready");
    }
    let now = Time(jiff::Timestamp::now());
    // kstatus: a template refused for its content needs an edit (Stalled); one that could not
    // be checked yet is still being worked on (Reconciling).
    let needs_edit =
        !ready.status && ["InvalidSpec", "ProviderNotFound", "NotAuthorized"].contains(&ready.reason.as_str());
    let stalled = match needs_edit {
        true => Cond::new(conditions::STALLED, true, ready.reason.clone(), ready.message.clone()),
        false => Cond::new(conditions::STALLED, false, "AsExpected", "validated or being validated"),
    };
    let reconciling = match !ready.status && !needs_edit {
        true => Cond::new(conditions::RECONCILING, true, ready.reason.clone(), ready.message.clone()),
        false => Cond::new(conditions::RECONCILING, false, ready.reason.clone(), "validation done"),
    };
    for cond in [ready.clone(), stalled, reconciling] {
        conditions::upsert(&mut status.conditions, cond, Some(generation), &now);
    }
    if status != previous {
        let api: Api<MachineTemplate> = Api::namespaced(ctx.client.clone(), &template.namespace().unwrap_or_default());
        let patch = serde_json::json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineTemplate", "status": status});
        api.patch_status(&template.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    }
    Ok(Action::requeue(if ready.status { ctx.timing.idle } else { ctx.timing.error * 2 }))
}

pub fn error_policy(_template: Arc<DeserializeGuard<MachineTemplate>>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "template reconcile failed");
    Action::requeue(error.backoff(&ctx.timing))
}
