//! kube-runtime glue: one reconciler per kind, the shared context, error classification and the
//! wiring that runs both controllers. The decisions live in `planner` (pure); the I/O of a
//! request reconcile is in `request`, of a template reconcile in `template`.

pub mod headroom;
pub mod leader;
pub mod planner;
pub mod request;
pub mod template;

use crate::api::{MachineRequest, MachineTemplate};
use crate::provider::{ProviderError, Registry};
use futures::StreamExt;
use kube::core::{DeserializeGuard, error_boundary::InvalidObject};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// Field manager for every status write (server-side apply).
pub const MANAGER: &str = "orb-operator";
/// Finalizer on every request that may own cloud resources.
pub const FINALIZER: &str = "orb.dev/cleanup";

/// Requeue delays for each planner `Requeue` class and for errors.
#[derive(Clone, Debug)]
pub struct Timing {
    pub soon: Duration,
    pub poll: Duration,
    pub idle: Duration,
    pub await_change: Duration,
    pub error: Duration,
    pub throttled: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            soon: Duration::from_secs(1),
            poll: Duration::from_secs(5),
            idle: Duration::from_secs(300),
            await_change: Duration::from_secs(900),
            error: Duration::from_secs(15),
            throttled: Duration::from_secs(60),
        }
    }
}

impl Timing {
    pub fn after(&self, requeue: planner::Requeue) -> Action {
        use planner::Requeue::*;
        Action::requeue(match requeue {
            Soon => self.soon,
            Poll => self.poll,
            Idle => self.idle,
            AwaitChange => self.await_change,
            After(wait) => wait.max(self.soon),
        })
    }
}

/// Reconciles of one kind run at once. A reconcile mostly waits — on the API server, on a
/// shared AWS call gathered across requests, on the rate limiter — so deleting or creating a
/// hundred requests together goes in two rounds, not seven (at 16, deleting 100 took 7.4 s
/// with nothing to wait for but the workers).
pub const WORKERS: u16 = 64;

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub registry: Registry,
    pub templates: Store<DeserializeGuard<MachineTemplate>>,
    pub requests: Store<DeserializeGuard<MachineRequest>>,
    pub recorder: Recorder,
    pub timing: Timing,
    pub validations: template::ValidationCache,
    /// The last status written for each request: a reconcile never plans from an older one.
    pub written: request::StatusMemory,
    /// Requests this process released lately: not released again.
    pub released: request::ReleasedMemory,
    /// Turns and held machines of templates with `maxMachines`.
    pub headroom: headroom::Headroom,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Context {
    /// Machines each request on `template` holds against its `maxMachines` (uid, machines:
    /// live ones and what its fleets still launch; see `planner::machines_held`), from the
    /// cache.
    pub fn machines_on(&self, template: &MachineTemplate) -> Vec<(String, u32)> {
        let (namespace, name) = (template.namespace(), template.name_any());
        let spec = template.launch_spec();
        self.requests
            .state()
            .iter()
            .filter_map(|r| r.0.as_ref().ok())
            .filter(|r| r.namespace() == namespace && r.spec.template_ref.name == name)
            .map(|r| {
                let held = r.status.as_ref().map_or(0, |s| planner::machines_held(s, &spec));
                (r.uid().unwrap_or_default(), held)
            })
            .collect()
    }

    /// Operator-made launch templates that requests other than `except` (by uid) record in
    /// their status, from the cache: a release never deletes one of these. Requests being
    /// deleted do not count: they launch nothing more, and when several are deleted at once
    /// each would otherwise keep the launch template for the others.
    pub fn launch_templates_in_use(&self, except: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .requests
            .state()
            .iter()
            .filter_map(|r| r.0.as_ref().ok())
            .filter(|r| r.uid().as_deref() != Some(except) && r.metadata.deletion_timestamp.is_none())
            .filter_map(|r| r.status.as_ref()?.resources.launch_template_id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The template `name` in `namespace`, from the controller's cache.
    pub fn template(&self, namespace: &str, name: &str) -> Option<Arc<MachineTemplate>> {
        let cached = self.templates.get(&ObjectRef::new(name).within(namespace))?;
        cached.0.as_ref().ok().cloned().map(Arc::new)
    }
}

/// `Ok` when every configured provider answers its health check, else which one does not.
pub async fn providers_answer(registry: &Registry) -> Result<(), String> {
    use crate::provider::Provider;
    for name in registry.names() {
        if let Some(provider) = registry.get(name)
            && let Err(e) = provider.health().await
        {
            return Err(format!("provider `{name}`: {e}"));
        }
    }
    Ok(())
}

/// Reports an object that does not deserialize: a Warning Event on it (naming the problem) and
/// a log line. The controllers leave it alone until it changes; every other object goes on.
pub(crate) async fn report_invalid(ctx: &Context, kind: &str, invalid: &InvalidObject) {
    let meta = &invalid.metadata;
    let name = meta.name.clone().unwrap_or_default();
    tracing::warn!(kind, namespace = ?meta.namespace, name, error = %invalid.error, "object does not deserialize; ignoring it until it changes");
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("orb.dev/v1alpha1".into()),
        kind: Some(kind.into()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    };
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: "InvalidObject".into(),
        note: Some(format!("{kind} {name} cannot be read by this operator version: {}", invalid.error)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(%error, "could not publish event");
    }
}

/// How often the leak sweep asks each provider whether its sweep is due (each provider has
/// its own interval).
const SWEEP_TICK: Duration = Duration::from_secs(30);

/// What the operator's cache holds: every request (and what they record), for the leak sweep.
pub fn live(requests: &Store<DeserializeGuard<MachineRequest>>, namespace: Option<String>) -> crate::provider::Live {
    let mut live = crate::provider::Live { namespace, ..Default::default() };
    for r in requests.state() {
        // An object this version cannot read still owns its resources.
        let uid = match &r.0 {
            Ok(mr) => mr.uid(),
            Err(invalid) => invalid.metadata.uid.clone(),
        };
        live.uids.extend(uid);
        if let Ok(mr) = &r.0 {
            live.launch_templates.extend(mr.status.as_ref().and_then(|s| s.resources.launch_template_id.clone()));
        }
    }
    live
}

/// Runs every provider's leak sweep, once the request cache is complete, and publishes an Event
/// for each leak found.
async fn sweep_leaks(ctx: Arc<Context>, namespace: Option<String>) {
    use crate::provider::Provider;
    if !synced(&ctx.requests).await {
        return;
    }
    loop {
        let live = live(&ctx.requests, namespace.clone());
        for name in ctx.registry.names() {
            let Some(provider) = ctx.registry.get(name) else { continue };
            match provider.sweep(&live, std::time::Instant::now()).await {
                Ok(leaks) => {
                    for leak in leaks {
                        publish_leak(&ctx, name, &leak).await;
                    }
                }
                Err(error) => tracing::warn!(provider = name, %error, "leak sweep failed; trying again later"),
            }
        }
        tokio::time::sleep(SWEEP_TICK).await;
    }
}

/// An Event about a leak, on the request it belonged to (or the template, for a launch
/// template); the object itself is usually gone.
async fn publish_leak(ctx: &Context, provider: &str, leak: &crate::provider::Leak) {
    let Some(owner) = &leak.request else { return };
    let (kind, key) = match owner.strip_prefix("template ") {
        Some(template) => ("MachineTemplate", template),
        None => ("MachineRequest", owner.as_str()),
    };
    let Some((namespace, name)) = key.split_once('/') else { return };
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("orb.dev/v1alpha1".into()),
        kind: Some(kind.into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..Default::default()
    };
    let verb = if leak.removed { "removed" } else { "found (dry run: left in place)" };
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: "LeakSwept".into(),
        note: Some(format!("{} {} of provider `{provider}` outlived its request; {verb}", leak.kind, leak.id)),
        action: "Sweep".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &reference).await {
        tracing::debug!(%error, "could not publish the leak event");
    }
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Provider(#[from] ProviderError),
    #[error("{object} has no {field}")]
    MissingField { object: String, field: &'static str },
    #[error(
        "provider `{provider}` of {object} is not configured (configured: {configured}); cannot release its machines. Restore the provider, or set spec.deletionPolicy: Orphan to let them go"
    )]
    ProviderGone { object: String, provider: String, configured: String },
    #[error("releasing {object}: {left}")]
    ReleaseInProgress { object: String, left: String },
    #[error("finalizer could not be updated: {0}")]
    Finalizer(String),
    /// The finalizer patch's `test` failed (422): the object changed since the cached copy this
    /// reconcile read, typically because another reconcile of it added the finalizer first.
    /// Not a failure: the watch brings the newer copy.
    #[error("the cached copy is behind the API server: {0}")]
    StaleCopy(kube::Error),
    /// The API server refused a status write for its size (etcd stores at most 1.5 MiB per
    /// object by default).
    #[error(
        "the status of {machines} machine(s), {bytes} bytes, is more than the API server stores ({cause}); lower spec.capacity or split the request"
    )]
    StatusTooLarge { machines: usize, bytes: usize, cause: kube::Error },
    #[error("status write dropped by test hook")]
    InjectedFault,
}

impl Error {
    /// The object was deleted while the reconcile ran (the API server answered 404 for it).
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Kube(kube::Error::Api(status)) if status.code == 404)
    }

    /// Nothing went wrong: the object was deleted meanwhile, or the cache was behind.
    pub fn is_benign(&self) -> bool {
        self.is_gone() || matches!(self, Self::StaleCopy(_))
    }

    /// Event reason for a failed reconcile.
    pub fn reason(&self) -> String {
        match self {
            Self::Kube(_) => "KubeApiError".into(),
            Self::Provider(e) => format!("Provider{}", e.category()),
            Self::MissingField { .. } => "InvalidObject".into(),
            Self::ProviderGone { .. } => "ProviderNotConfigured".into(),
            Self::ReleaseInProgress { .. } => "Releasing".into(),
            Self::Finalizer(_) => "FinalizerError".into(),
            Self::StaleCopy(_) => "StaleCopy".into(),
            Self::StatusTooLarge { .. } => "StatusTooLarge".into(),
            Self::InjectedFault => "InjectedFault".into(),
        }
    }

    /// The requeue a failure deserves: throttling backs off longer; errors that need a change
    /// wait long; the rest retry soon.
    pub fn backoff(&self, timing: &Timing) -> Duration {
        match self {
            Self::Provider(e) if e.is_terminal() => timing.await_change,
            Self::Provider(ProviderError::Throttled { .. }) => jitter(timing.throttled),
            Self::ReleaseInProgress { .. } => timing.poll,
            _ => jitter(timing.error),
        }
    }
}

/// The API server refused a write for the object's size: etcd's request limit (500
/// "request is too large", or the gRPC client's "larger than max"), or the API server's own
/// body limit (413).
pub(crate) fn too_large(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => {
            status.code == 413
                || (status.code == 500
                    && ["request is too large", "larger than max"].iter().any(|s| status.message.contains(s)))
        }
        _ => false,
    }
}

/// Adds up to 20% so that many objects failing together do not retry together.
fn jitter(base: Duration) -> Duration {
    base + base.mul_f64(rand::random::<f64>() * 0.2)
}

/// Flattens the finalizer helper's wrapper so logs and Events name the real cause.
pub(crate) fn flatten(error: kube::runtime::finalizer::Error<Error>) -> Error {
    use kube::runtime::finalizer::Error as F;
    match error {
        F::ApplyFailed(e) | F::CleanupFailed(e) => e,
        F::AddFinalizer(kube::Error::Api(status)) | F::RemoveFinalizer(kube::Error::Api(status))
            if status.code == 422 =>
        {
            Error::StaleCopy(kube::Error::Api(status))
        }
        F::AddFinalizer(e) | F::RemoveFinalizer(e) => Error::Kube(e),
        other => Error::Finalizer(other.to_string()),
    }
}

/// Fails fast, with the fix, when the CRDs are not installed (or cannot be listed where the
/// controllers will watch).
async fn check_crds(
    templates: &Api<DeserializeGuard<MachineTemplate>>,
    requests: &Api<DeserializeGuard<MachineRequest>>,
) -> anyhow::Result<()> {
    let lp = kube::api::ListParams::default().limit(1);
    for (kind, probe) in [
        ("MachineTemplate", templates.list_metadata(&lp).await.map(|_| ())),
        ("MachineRequest", requests.list_metadata(&lp).await.map(|_| ())),
    ] {
        if let Err(e) = probe {
            anyhow::bail!(
                "cannot list {kind} objects ({e}); are the CRDs installed? Run `orb-operator crd | kubectl apply -f -`"
            );
        }
    }
    Ok(())
}

/// Waits until `store` has had its first full list; false if its writer is gone. kube's
/// `wait_until_ready` wakes only the last of several waiters (a oneshot channel underneath) and
/// the controller waits on the same store, so the wait is polled again every 100 ms.
async fn synced<K>(store: &kube::runtime::reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(result) = tokio::time::timeout(std::time::Duration::from_millis(100), store.wait_until_ready()).await
        {
            return result.is_ok();
        }
    }
}

/// Runs both controllers until a shutdown signal, over all namespaces or only `namespace`.
/// Runs both controllers, and serves `/healthz`, `/readyz` (once the caches are synced) and
/// `/metrics` on `listener` when one is given.
/// With `election`, reconciles only while this replica holds the lease (see `leader`); the
/// HTTP endpoints are served meanwhile, `/readyz` ready on standby.
pub async fn run(
    client: Client,
    registry: Registry,
    namespace: Option<&str>,
    listener: Option<tokio::net::TcpListener>,
    metrics: Arc<crate::metrics::Metrics>,
    election: Option<leader::Election>,
) -> anyhow::Result<()> {
    type Templates = DeserializeGuard<MachineTemplate>;
    type Requests = DeserializeGuard<MachineRequest>;
    let (templates, requests) = match namespace {
        Some(ns) => (Api::<Templates>::namespaced(client.clone(), ns), Api::<Requests>::namespaced(client.clone(), ns)),
        None => (Api::<Templates>::all(client.clone()), Api::<Requests>::all(client.clone())),
    };
    check_crds(&templates, &requests).await?;
    let cfg = controller::Config::default().concurrency(WORKERS);

    let template_ctrl = Controller::new(templates.clone(), watcher::Config::default()).with_config(cfg.clone());
    // The request cache keeps no managedFields: the operator never reads them, and with 10,000
    // machines they are a good part of what it would hold.
    let (request_store, request_writer) = kube::runtime::reflector::store();
    let request_stream = watcher::watcher(requests.clone(), watcher::Config::default())
        .modify(|r: &mut DeserializeGuard<MachineRequest>| r.managed_fields_mut().clear())
        .reflect(request_writer)
        .applied_objects();
    let request_ctrl = Controller::for_stream(request_stream, request_store.clone()).with_config(cfg);
    let template_store = template_ctrl.store();

    let changes = registry.changes();
    let ctx = Arc::new(Context {
        client: client.clone(),
        registry,
        templates: template_store,
        requests: request_store.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() },
        ),
        timing: Timing::default(),
        validations: template::ValidationCache::default(),
        written: request::StatusMemory::default(),
        released: request::ReleasedMemory::default(),
        headroom: headroom::Headroom::default(),
        metrics,
    });
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(listener) = listener {
        let state = crate::http::State {
            metrics: ctx.metrics.clone(),
            ready: ready.clone(),
            requests: Some(request_store.clone()),
            degraded: {
                let ctx = ctx.clone();
                Arc::new(move || ctx.registry.degraded())
            },
        };
        tokio::spawn(crate::http::serve(listener, state));
    }
    // A standby replica is healthy and ready: it only waits for the lease.
    let mut leadership = match &election {
        Some(election) => {
            ready.store(true, std::sync::atomic::Ordering::SeqCst);
            // A standby stopped by a signal just goes (it holds nothing).
            let held = tokio::select! {
                held = leader::lead(client.clone(), election) => held?,
                () = shutdown_signal() => return Ok(()),
            };
            ready.store(false, std::sync::atomic::Ordering::SeqCst);
            Some(held)
        }
        None => None,
    };
    let (ready_templates, ready_requests, providers) = (ctx.templates.clone(), request_store.clone(), ctx.clone());
    tokio::spawn(async move {
        if !synced(&ready_templates).await || !synced(&ready_requests).await {
            return;
        }
        // Ready once every configured provider answers too (a cloud that cannot be reached
        // would only fail every reconcile); asked again every 10 s until then.
        while let Err(unhealthy) = providers_answer(&providers.registry).await {
            tracing::warn!(%unhealthy, "not ready: a provider does not answer");
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        }
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!("caches synced and providers answer; ready");
    });

    tokio::spawn(sweep_leaks(ctx.clone(), namespace.map(str::to_string)));

    // A template change re-queues the requests that use it: a new generation or a new Ready
    // verdict, not every status write (machinesInUse changes with every machine).
    let users = request_store.clone();
    let seen = std::sync::Mutex::new(std::collections::HashMap::new());
    let request_ctrl = request_ctrl
        .watches(templates, watcher::Config::default(), move |t: DeserializeGuard<MachineTemplate>| {
            let Ok(t) = t.0 else { return vec![] };
            let verdict = t
                .status
                .as_ref()
                .and_then(|s| crate::api::conditions::find(&s.conditions, crate::api::conditions::READY));
            let key =
                (t.metadata.generation, verdict.map(|c| (c.status.clone(), c.reason.clone(), c.observed_generation)));
            let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.insert(t.uid().unwrap_or_default(), key.clone()) == Some(key) {
                return vec![];
            }
            drop(seen);
            let (ns, name) = (t.namespace().unwrap_or_default(), t.name_any());
            users
                .state()
                .into_iter()
                .filter(|r| {
                    r.0.as_ref().is_ok_and(|r| {
                        r.namespace().as_deref() == Some(ns.as_str()) && r.spec.template_ref.name == name
                    })
                })
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>()
        })
        // A machine the provider saw change wakes its request at once.
        .reconcile_on(changes.map(|key| ObjectRef::new(&key.name).within(&key.namespace)))
        .shutdown_on_signal()
        .run(request::reconcile, request::error_policy, ctx.clone())
        .for_each(|_| async {});
    // A request change re-queues its template (machinesInUse).
    let template_ctrl = template_ctrl
        .watches(requests, watcher::Config::default(), |r: DeserializeGuard<MachineRequest>| {
            let r = r.0.ok()?;
            r.namespace().map(|ns| ObjectRef::new(&r.spec.template_ref.name).within(&ns))
        })
        .shutdown_on_signal()
        .run(template::reconcile, template::error_policy, ctx)
        .for_each(|_| async {});
    tracing::info!("controllers started");
    let lost = async {
        match leadership.as_mut() {
            Some(held) => held.lost().await,
            None => futures::future::pending().await,
        }
    };
    tokio::select! {
        _ = futures::future::join(request_ctrl, template_ctrl) => {}
        () = lost => anyhow::bail!(
            "lost the lease {}/{} to another replica; exiting so that only the leader reconciles",
            election.as_ref().map(|e| e.namespace.as_str()).unwrap_or_default(),
            leader::LEASE
        ),
    }
    // Shut down by a signal: hand the lease over at once.
    if let Some(held) = leadership {
        held.release().await;
    }
    Ok(())
}

#[cfg(test)]
mod readiness_tests {
    use super::*;
    use crate::config::{AwsSettings, SimSettings};
    use crate::provider::{AnyProvider, aws, sim};

    #[tokio::test]
    async fn ready_only_when_every_provider_answers() {
        let sim = || AnyProvider::Sim(sim::SimProvider::new(SimSettings::default()));
        assert_eq!(providers_answer(&Registry::with([("default".to_string(), sim())])).await, Ok(()));

        // An AWS provider whose endpoint nobody serves.
        let settings = AwsSettings {
            region: "us-east-1".into(),
            endpoint_url: Some("http://127.0.0.1:9".into()),
            max_attempts: Some(1),
            ..AwsSettings::default()
        };
        let sdk = aws::calls::client::sdk_config(&settings)
            .await
            .into_builder()
            .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                aws_sdk_ec2::config::Credentials::new("k", "s", None, None, "test"),
            ))
            .build();
        let calls = aws::calls::call_metrics::CallMetrics { provider: "prod".into(), metrics: Arc::default() };
        let unreachable = AnyProvider::Aws(aws::AwsProvider::from_sdk(&sdk, &settings, "c", calls));
        let registry = Registry::with([("default".to_string(), sim()), ("prod".to_string(), unreachable)]);
        let error = providers_answer(&registry).await.unwrap_err();
        assert!(error.starts_with("provider `prod`"), "{error}");
    }
}
