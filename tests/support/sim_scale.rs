//! The simulated provider at scale against a real cluster (`ORB_E2E_KUBECONFIG`): the operator
//! binary, N requests of C sim machines applied at once in a fresh namespace, waited on until
//! all are Fulfilled, then deleted together and waited on until gone. Shared by the e2e test
//! that holds the figures to their bounds and by `cargo bench --bench scale -- --handler
//! sim-cluster`, which prints them.

use super::cluster;
use futures::StreamExt;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use orb_operator::api::{MachineRequest, MachineTemplate, Phase};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Debug)]
pub struct Figures {
    pub requests: usize,
    /// Machines running once all were Fulfilled, as the requests' statuses list them.
    pub machines: usize,
    pub to_fulfilled: Duration,
    pub reconciles_per_second: f64,
    /// Changes to requests (status writes, finalizers) per request, seen by a watch.
    pub writes_per_request: f64,
    pub to_deleted: Duration,
    /// The operator process's peak resident memory (VmHWM), in KiB.
    pub peak_kib: Option<u64>,
}

/// Polls `done` every second until it holds, at most `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let waited = tokio::time::timeout(limit, async {
        while !done().await {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out after {limit:?} waiting for {what}");
}

/// Runs the scenario against the cluster of kubeconfig `path`.
pub async fn run(path: &str, n: usize, capacity: i32) -> Figures {
    let client = cluster::client(path).await;
    cluster::apply_crds(&client).await;
    let ns = cluster::TestNamespace::create(&client, path, "orb-scale").await;
    let env =
        [("ORB_LOG", "warn"), ("ORB_PROVIDERS__DEFAULT__TYPE", "sim"), ("ORB_PROVIDERS__DEFAULT__PENDING_DELAY", "1s")];
    let operator = cluster::Operator::start(path, &ns.name, &env);
    let templates: kube::Api<MachineTemplate> = kube::Api::namespaced(client.clone(), &ns.name);
    let requests: kube::Api<MachineRequest> = kube::Api::namespaced(client.clone(), &ns.name);
    let template: MachineTemplate = cluster::example("sim/template.yaml");
    let template_name = template.metadata.name.clone().unwrap();
    templates.create(&PostParams::default(), &template).await.unwrap();
    // Every change to a request is one API write (status, finalizer): counted from a watch.
    let writes = Arc::new(AtomicUsize::new(0));
    let counter = writes.clone();
    let watch = tokio::spawn(watcher(requests.clone(), watcher::Config::default()).for_each(move |e| {
        if matches!(e, Ok(watcher::Event::Apply(_))) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        async {}
    }));

    let started = Instant::now();
    cluster::create_requests(&requests, "sim/request.yaml", &template_name, n, capacity).await;
    let limit = Duration::from_secs(60 + n as u64);
    // A busy API server may refuse a list now and then (429, 5xx): that is "not yet".
    until("every request Fulfilled", limit, || async {
        requests.list(&ListParams::default()).await.is_ok_and(|all| {
            all.items.iter().filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(Phase::Fulfilled)).count() == n
        })
    })
    .await;
    let to_fulfilled = started.elapsed();
    let (_, metrics) = operator.get("/metrics").await;
    let reconciles: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("orb_reconciles_total{controller=\"request\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let writes_per_request = writes.load(Ordering::Relaxed) as f64 / n as f64;
    let all = requests.list(&ListParams::default()).await.unwrap();
    let machines = all.items.iter().map(|r| super::lifecycle::running(r).len()).sum();

    let started = Instant::now();
    requests.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    until("every request deleted (its machines released)", limit, || async {
        requests.list(&ListParams::default()).await.is_ok_and(|left| left.items.is_empty())
    })
    .await;
    let to_deleted = started.elapsed();
    let peak_kib = cluster::peak_memory_kib(&operator.pid().to_string());
    watch.abort();
    Figures {
        requests: n,
        machines,
        to_fulfilled,
        reconciles_per_second: reconciles / to_fulfilled.as_secs_f64(),
        writes_per_request,
        to_deleted,
        peak_kib,
    }
}
