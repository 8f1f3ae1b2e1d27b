//! Objects and a controller context for tests that drive the reconcilers against a scripted
//! API server (tower-test): one ready template `grid/workers`, one request `grid/batch` on it,
//! and simulated providers with no delays as the cloud.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::store;
use kube::runtime::watcher;
use kube::{Client, Resource};
use orb_operator::api::conditions::{self, Cond};
use orb_operator::api::*;
use orb_operator::config::SimSettings;
use orb_operator::controller::{Context, FINALIZER, Timing, template::ValidationCache};
use orb_operator::provider::{AnyProvider, Registry};
use std::sync::Arc;

pub const NS: &str = "grid";
pub const UID: &str = "5f0c3a2e-0000-4000-8000-000000000001";
pub const MR_PATH: &str = "/apis/orb.dev/v1alpha1/namespaces/grid/machinerequests/batch";
pub const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/grid/events";

/// `grid/workers`, validated (`Ready=True` at generation 1).
pub fn ready_template() -> MachineTemplate {
    let mut t = MachineTemplate::new(
        "workers",
        MachineTemplateSpec {
            provider: "default".into(),
            image_id: Some("ami-0123456789abcdef0".into()),
            instance_types: vec![InstanceTypeSpec { type_: "m5.large".into(), weight: 1, priority: None }],
            ..Default::default()
        },
    );
    t.meta_mut().namespace = Some(NS.into());
    t.meta_mut().generation = Some(1);
    let mut status = MachineTemplateStatus::default();
    let now = Time(jiff::Timestamp::now());
    conditions::upsert(&mut status.conditions, Cond::new(conditions::READY, true, "Valid", "ok"), Some(1), &now);
    t.status = Some(status);
    t
}

/// `grid/batch` for 3 machines of `workers`, with or without the finalizer, deleted or not.
pub fn request_object(finalized: bool, deleting: bool) -> MachineRequest {
    let mut mr = MachineRequest::new(
        "batch",
        MachineRequestSpec {
            template_ref: TemplateRef { name: "workers".into() },
            capacity: 3,
            fulfilment_timeout: "15m".into(),
            ..Default::default()
        },
    );
    let meta = mr.meta_mut();
    meta.namespace = Some(NS.into());
    meta.uid = Some(UID.into());
    meta.generation = Some(1);
    meta.resource_version = Some("1".into());
    if finalized {
        meta.finalizers = Some(vec![FINALIZER.into()]);
    }
    if deleting {
        meta.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    }
    mr
}

/// A simulated cloud whose machines run and terminate at once.
pub fn sim_provider() -> AnyProvider {
    let sim = SimSettings { pending_delay: "0s".into(), terminating_delay: "0s".into(), ..Default::default() };
    AnyProvider::Sim(orb_operator::provider::sim::SimProvider::new(sim))
}

/// A context over `client` whose template cache holds `cached`, with providers `default` and
/// `old`.
pub fn context_with(client: Client, cached: MachineTemplate) -> Arc<Context> {
    let (templates, mut writer) = store();
    writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(cached))));
    let (requests, _w) = store();
    let ctx = Context {
        client: client.clone(),
        registry: Registry::with([("default".to_string(), sim_provider()), ("old".to_string(), sim_provider())]),
        templates,
        requests,
        recorder: Recorder::new(client, Reporter { controller: "orb-operator".into(), instance: None }),
        timing: Timing::default(),
        validations: ValidationCache::default(),
        written: Default::default(),
        released: Default::default(),
        headroom: Default::default(),
        metrics: Default::default(),
    };
    Arc::new(ctx)
}
