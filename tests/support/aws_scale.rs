//! The whole operator against AWS at scale, as users run it: the operator binary against a real
//! cluster (`ORB_E2E_KUBECONFIG`), its AWS provider pointed at moto through the counting fault
//! proxy, N MachineRequests of C machines applied at once in a fresh namespace, waited on until
//! all are Fulfilled, then deleted together and waited on until gone. `cargo bench --bench scale
//! -- --handler aws-cluster` prints the figures.
//!
//! Where the time goes, so that growth beyond linear is attributed: the emulator's share is
//! what the proxy sees (the time its calls to moto took, summed and as the span during which at
//! least one was in flight), the API server's is its own `apiserver_request_duration_seconds`
//! for MachineRequests (watches left out), and the operator's is its process's CPU time.

use super::cluster;
use super::fault_proxy::FaultProxy;
use futures::StreamExt;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use orb_operator::api::{MachineRequest, Phase};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// The handler a run's template launches through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    Ec2Fleet,
    RunInstances,
}

impl Launcher {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ec2Fleet => "ec2-fleet",
            Self::RunInstances => "run-instances",
        }
    }

    fn example(self) -> &'static str {
        match self {
            Self::Ec2Fleet => "aws/ec2-fleet-instant.yaml",
            Self::RunInstances => "aws/run-instances-on-demand.yaml",
        }
    }
}

/// What one phase (creating, or deleting) cost.
#[derive(Debug, Default)]
pub struct Cost {
    pub took: Duration,
    /// AWS calls by action.
    pub calls: BTreeMap<String, usize>,
    /// Changes to requests (status writes, finalizers) seen by a watch.
    pub writes: usize,
    /// The emulator's time: its calls' durations summed by action, and the span any was in flight.
    pub emulator_by_action: BTreeMap<String, Duration>,
    pub emulator_busy: Duration,
    /// The API server's time serving MachineRequest calls (watches left out), and their number.
    pub apiserver_sum: Duration,
    pub apiserver_calls: u64,
    /// The operator process's CPU time.
    pub operator_cpu: Duration,
    /// DescribeInstances: instance ids named by the calls by id, and the calls listing by tags.
    pub ids_described: usize,
    pub listings: usize,
    /// Set when the phase did not end within its time limit: how far it got.
    pub unfinished: Option<String>,
}

impl Cost {
    pub fn total_calls(&self) -> usize {
        self.calls.values().sum()
    }

    /// The emulator's time summed over every call.
    pub fn emulator_sum(&self) -> Duration {
        self.emulator_by_action.values().sum()
    }

    /// Calls whose action starts with `Describe`.
    pub fn describes(&self) -> usize {
        self.calls.iter().filter(|(a, _)| a.starts_with("Describe")).map(|(_, n)| n).sum()
    }
}

/// What one run measured.
#[derive(Debug)]
pub struct Figures {
    pub launcher: Launcher,
    pub requests: usize,
    pub capacity: i32,
    pub create: Cost,
    pub delete: Cost,
    /// The operator process's peak resident memory (VmHWM), in KiB.
    pub peak_kib: Option<u64>,
}

/// The operator's CPU time so far (user and system), from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // CLK_TCK is 100 on every Linux the tests run on.
    Duration::from_millis(ticks * 10)
}

/// The API server's summed request time and count for MachineRequests, watches left out.
async fn apiserver_time(client: &kube::Client) -> (Duration, u64) {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let Ok(text) = client.request_text(request).await else { return (Duration::ZERO, 0) };
    let (mut seconds, mut count) = (0.0, 0.0);
    for line in text.lines() {
        let ours = line.contains("resource=\"machinerequests\"") && !line.contains("verb=\"WATCH\"");
        let value = || line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        if ours && line.starts_with("apiserver_request_duration_seconds_sum{") {
            seconds += value();
        } else if ours && line.starts_with("apiserver_request_duration_seconds_count{") {
            count += value();
        }
    }
    (Duration::from_secs_f64(seconds), count as u64)
}

/// A point from which a phase's costs are counted.
struct Mark {
    at: Instant,
    calls: BTreeMap<String, usize>,
    writes: usize,
    apiserver: (Duration, u64),
    cpu: Duration,
}

struct Meter<'a> {
    client: &'a kube::Client,
    proxy: &'a FaultProxy,
    pid: u32,
    writes: &'a std::sync::atomic::AtomicUsize,
}

impl Meter<'_> {
    async fn mark(&self) -> Mark {
        Mark {
            at: Instant::now(),
            calls: self.proxy.all_calls(),
            writes: self.writes.load(std::sync::atomic::Ordering::Relaxed),
            apiserver: apiserver_time(self.client).await,
            cpu: cpu_time(self.pid),
        }
    }

    /// The costs since `from`, over the time until `done`.
    async fn since(&self, from: &Mark, done: Instant) -> Cost {
        let (emulator_by_action, emulator_busy) = self.proxy.upstream_time_since(from.at);
        let (apiserver_sum, apiserver_calls) = apiserver_time(self.client).await;
        let before = from.calls.get("DescribeInstances").copied().unwrap_or(0);
        let describes = self.proxy.calls("DescribeInstances").split_off(before);
        Cost {
            ids_described: describes.iter().map(|b| b.matches("InstanceId.").count()).sum(),
            listings: describes.iter().filter(|b| b.contains("Filter.")).count(),
            took: done - from.at,
            calls: self.proxy.spent_since(&from.calls),
            writes: self.writes.load(std::sync::atomic::Ordering::Relaxed) - from.writes,
            emulator_by_action,
            emulator_busy,
            apiserver_sum: apiserver_sum.saturating_sub(from.apiserver.0),
            apiserver_calls: apiserver_calls - from.apiserver.1,
            operator_cpu: cpu_time(self.pid).saturating_sub(from.cpu),
            unfinished: None,
        }
    }

    /// The costs of a phase that began at `from`: until the moment `ended` reads from the
    /// milestones, or, past `limit`, until then, saying how far it got.
    async fn phase(
        &self,
        from: &Mark,
        limit: Duration,
        seen: &mut tokio::sync::watch::Receiver<Milestones>,
        ended: fn(&Milestones) -> Option<Instant>,
        how_far: impl Fn(&Milestones) -> String,
    ) -> Cost {
        let reached = tokio::time::timeout(limit, seen.wait_for(|m| ended(m).is_some())).await.map(|m| *m.unwrap());
        match reached.ok().and_then(|m| ended(&m)) {
            Some(at) => self.since(from, at).await,
            None => {
                let unfinished = Some(format!("{} after {limit:?}", how_far(&seen.borrow())));
                Cost { unfinished, ..self.since(from, Instant::now()).await }
            }
        }
    }
}

/// How many requests a watch has seen Fulfilled and gone, and when all were.
#[derive(Clone, Copy, Debug, Default)]
struct Milestones {
    fulfilled_count: usize,
    deleted_count: usize,
    fulfilled: Option<Instant>,
    deleted: Option<Instant>,
}

/// Runs the scenario against the cluster of kubeconfig `path`; `env` is added to the
/// operator's environment (rate limits, say). `report` is given each phase's cost as soon as
/// the phase ends, or its time limit does: a phase that did not end says how far it got, and
/// the run goes on (deleting what it created), so a size too large still shows where its time went.
pub async fn run(
    path: &str,
    launcher: Launcher,
    n: usize,
    capacity: i32,
    env: &[(&str, &str)],
    report: &dyn Fn(&str, &Cost),
) -> Figures {
    let test = format!("aws-cluster {}", launcher.name());
    let (moto, region, ec2, network) = super::moto::e2e_cloud(&test).await;
    let network = super::moto::wide_network(&ec2, region, network).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    // As EC2 does: an SDK retry of a create moto answered with a 500 makes nothing new.
    proxy.honour_client_tokens();
    let client = cluster::client(path).await;
    cluster::apply_crds(&client).await;
    let ns = cluster::TestNamespace::create(&client, path, "orb-aws-scale").await;
    let cluster_id = "orb-aws-scale";
    let mut operator_env: Vec<(&str, &str)> = super::moto::operator_env(moto, region, cluster_id).to_vec();
    for (k, v) in &mut operator_env {
        if *k == "ORB_PROVIDERS__DEFAULT__ENDPOINT_URL" {
            *v = proxy.endpoint.as_str();
        }
    }
    // Quiet unless the run asks for the operator's log (`ORB_OPERATOR_LOG=debug`, say).
    let log = std::env::var("ORB_OPERATOR_LOG").unwrap_or_else(|_| "warn".into());
    operator_env.push(("ORB_LOG", log.as_str()));
    operator_env.extend_from_slice(env);
    let templates: kube::Api<orb_operator::api::MachineTemplate> = kube::Api::namespaced(client.clone(), &ns.name);
    let requests: kube::Api<MachineRequest> = kube::Api::namespaced(client.clone(), &ns.name);
    let template = super::moto::example_template(launcher.example(), &network);
    let template_name = template.metadata.name.clone().unwrap();
    templates.create(&PostParams::default(), &template).await.unwrap();
    let operator = cluster::Operator::start_with(path, &ns.name, &operator_env, &["--leader-elect=false"]);
    // Requests are applied against a Ready template, as users do: the template's validation
    // (its image, subnets, groups, types described once) is not a cost of the requests.
    cluster::wait(&templates, &template_name, cluster::template_ready, 60).await;

    // One watch counts every change to a request and notes when all were Fulfilled, and when
    // all were gone.
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (milestones, mut seen) = tokio::sync::watch::channel(Milestones::default());
    let (counter, watched) = (writes.clone(), requests.clone());
    let watch = tokio::spawn(async move {
        let (mut fulfilled, mut deleted) = (HashSet::new(), 0);
        let mut events = std::pin::pin!(watcher(watched, watcher::Config::default()));
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(mr)) => {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if mr.status.as_ref().and_then(|s| s.phase) == Some(Phase::Fulfilled) {
                        fulfilled.insert(mr.metadata.name.clone().unwrap_or_default());
                    }
                }
                Ok(watcher::Event::Delete(_)) => deleted += 1,
                _ => continue,
            }
            milestones.send_modify(|m| {
                (m.fulfilled_count, m.deleted_count) = (fulfilled.len(), deleted);
                if m.fulfilled.is_none() && fulfilled.len() == n {
                    m.fulfilled = Some(Instant::now());
                }
                if m.deleted.is_none() && deleted == n {
                    m.deleted = Some(Instant::now());
                }
            });
        }
    });
    let meter = Meter { client: &client, proxy: &proxy, pid: operator.pid(), writes: &writes };
    let limit = Duration::from_secs(120 + n as u64);

    let start = meter.mark().await;
    cluster::create_requests(&requests, "aws/request.yaml", &template_name, n, capacity).await;
    let create = meter
        .phase(&start, limit, &mut seen, |m| m.fulfilled, |m| format!("{} of {n} Fulfilled", m.fulfilled_count))
        .await;
    report("create (until all Fulfilled)", &create);

    let start = meter.mark().await;
    requests.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    let delete =
        meter.phase(&start, limit, &mut seen, |m| m.deleted, |m| format!("{} of {n} gone", m.deleted_count)).await;
    report("delete (until all gone)", &delete);
    watch.abort();

    let peak_kib = cluster::peak_memory_kib(&operator.pid().to_string());
    let left = super::moto::leftovers(moto, region, cluster_id).await;
    // A deletion that ended must have left nothing; one that did not says what it left.
    assert!(left.is_empty() || delete.unfinished.is_some(), "left behind after deletion: {left:?}");
    if !left.is_empty() {
        println!("    left behind in the emulator: {} resources", left.len());
    }
    Figures { launcher, requests: n, capacity, create, delete, peak_kib }
}
