//! The AWS provider at scale: N requests of C capacity units against moto, through the counting
//! fault proxy, for each handler. Prints figures; not a test.
//!
//! `cargo bench --bench scale` runs 10 and 100 requests of 5 for RunInstances, EC2 Fleet,
//! Spot Fleet and Auto Scaling groups. `cargo bench --bench scale -- --handler ec2-fleet
//! --requests 100 --capacity 5` runs one; `--mutate-rate N` lifts the client-side limit on
//! mutating calls (default 4/s after a burst of 40), which otherwise bounds 100 creates. Each request is driven the way the controller drives
//! it (observe -> plan -> act -> report, requeued after the planner's delay or woken by the
//! poller), without Kubernetes: the figures are the operator's AWS traffic and time.
//!
//! `cargo bench --bench scale -- --handler sim-cluster [--requests 1000] [--capacity 10]` needs
//! `ORB_E2E_KUBECONFIG`: it runs the operator binary with the simulated provider against that
//! cluster, applies N requests at once in a fresh namespace and prints the time until all are
//! Fulfilled, reconciles per second, API writes per request (watch events of the requests) and
//! the operator process's peak memory (10,000 machines at the defaults).
//!
//! `cargo bench --bench scale -- --handler aws-cluster[:ec2-fleet|:run-instances]
//! [--requests 10,100,1000] [--capacity 5] [--limits default]` needs `ORB_E2E_KUBECONFIG` too
//! (`tests/e2e/with-apiserver` provides one): the operator binary against that cluster, its
//! provider pointed at moto through the counting proxy, N requests applied at once per size; it
//! prints the time to all Fulfilled and to all deleted, AWS calls and request writes per
//! request, where the time went (emulator, API server, operator CPU), peak memory, and the
//! growth from each size to the next.
//!
//! Printed per run: AWS calls by action, mutating calls per request, DescribeInstances per poll
//! cycle, time until every request is Fulfilled, AWS calls per minute once steady, time to
//! release them all, and this process's peak memory (VmHWM).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failed run

#[path = "../tests/support/mod.rs"]
mod support;

use orb_operator::api::*;
use orb_operator::controller::Timing;
use orb_operator::controller::planner::Requeue;
use orb_operator::controller::request::{Target, drive};
use orb_operator::provider::aws::calls::limits::CallClass;
use orb_operator::provider::{Holdings, Provider, Released};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::aws_scale::{Cost, Launcher};
use support::driver::{MemoryStatus, ready, request};

/// How long the steady phase is watched.
const STEADY_WINDOW: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Handler {
    RunInstances,
    Ec2Fleet,
    SpotFleet,
    Asg,
}

impl Handler {
    fn name(self) -> &'static str {
        match self {
            Self::RunInstances => "run-instances",
            Self::Ec2Fleet => "ec2-fleet",
            Self::SpotFleet => "spot-fleet",
            Self::Asg => "asg",
        }
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn peak_memory_mib() -> f64 {
    support::cluster::peak_memory_kib("self").unwrap_or(0) as f64 / 1024.0
}

/// Drives one request as the controller would until it is Fulfilled; returns the passes made.
async fn fulfil(
    aws: &support::aws::Aws,
    template: &MachineTemplate,
    mr: &mut MachineRequest,
    sink: &MemoryStatus,
) -> u32 {
    let timing = Timing::default();
    let mut changes = aws.changes();
    let mut passes = 0;
    loop {
        passes += 1;
        mr.status = sink.current();
        let target = Target { provider_name: "default", provider: &aws.provider, hold: None, machines_elsewhere: 0 };
        let requeue = match drive(mr, template, target, sink, jiff::Timestamp::now()).await {
            Ok((status, _)) if status.phase == Some(Phase::Fulfilled) => return passes,
            Ok((_, Requeue::Soon)) => timing.soon,
            Ok(_) => timing.poll,
            Err(_) => timing.error,
        };
        // Requeued after the planner's delay, or woken at once by a change of its machines.
        let name = mr.metadata.name.clone().unwrap();
        let _ = tokio::time::timeout(requeue, async {
            while let Ok(key) = changes.recv().await {
                if key.name == name {
                    return;
                }
            }
        })
        .await;
    }
}

async fn run(handler: Handler, n: usize, capacity: i32, mutate_rate: Option<u32>) {
    let name = format!("bench-{}-{n}", handler.name());
    let Some(aws) = support::aws::aws_with(&name, |s| {
        s.poll_interval = "1s".into();
        s.steady_poll_interval = "5s".into();
        if let Some(rate) = mutate_rate {
            s.mutate_rate = Some(rate);
        }
    })
    .await
    else {
        println!("SKIPPED: moto_server is not installed (run `make test` once to create .venv)");
        return;
    };
    let mut spec = aws.template(&[("m5.large", 1)]);
    spec.subnet_ids.truncate(1);
    match handler {
        Handler::RunInstances => {}
        Handler::Ec2Fleet => spec.api = Api::Ec2Fleet,
        Handler::SpotFleet => {
            aws.spot_fleet_role().await;
            spec.api = Api::SpotFleet;
            spec.price_type = PriceType::Spot;
        }
        Handler::Asg => spec.api = Api::Asg,
    }
    let template = ready(MachineTemplate::new("workers", spec));
    aws.provider.validate(&template.spec).await.expect("the template is valid");
    let before = aws.proxy.all_calls();
    let mut requests: Vec<(MachineRequest, MemoryStatus)> =
        (0..n).map(|i| (request(&format!("r{i:04}"), capacity), MemoryStatus::default())).collect();

    let started = Instant::now();
    let passes: u32 =
        futures::future::join_all(requests.iter_mut().map(|(mr, sink)| fulfil(&aws, &template, mr, sink)))
            .await
            .into_iter()
            .sum();
    let to_fulfilled = started.elapsed();
    let calls: BTreeMap<String, usize> = aws
        .proxy
        .all_calls()
        .into_iter()
        .map(|(a, c)| (a.clone(), c - before.get(&a).copied().unwrap_or(0)))
        .filter(|(_, c)| *c > 0)
        .collect();
    let total: usize = calls.values().sum();
    let mutations: usize = calls.iter().filter(|(a, _)| CallClass::of(a) == CallClass::Mutate).map(|(_, c)| c).sum();
    let poll_cycles = aws.poll_cycles();
    let describes = calls.get("DescribeInstances").copied().unwrap_or(0);

    // Steady: every request Fulfilled, the poller at its steady interval.
    let steady_before = aws.proxy.all_calls().values().sum::<usize>();
    tokio::time::sleep(STEADY_WINDOW).await;
    let steady = aws.proxy.all_calls().values().sum::<usize>() - steady_before;
    let per_minute = steady as f64 * 60.0 / STEADY_WINDOW.as_secs_f64();

    let released = Instant::now();
    futures::future::join_all(requests.iter().map(|(mr, sink)| {
        let (aws, owner) = (&aws, orb_operator::controller::request::owner_of(mr).unwrap());
        async move {
            let status = sink.current().unwrap();
            let known: Vec<String> = status.machines.iter().map(|m| m.instance_id.clone()).collect();
            let holdings = Holdings {
                known: &known,
                resources: &status.resources,
                launch_templates_in_use: &[],
                last_attempt: None,
            };
            while support::aws::release(&aws.provider, &owner, holdings).await != Ok(Released::Done) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }))
    .await;
    let to_release = released.elapsed();

    let limit = mutate_rate.map_or(String::new(), |r| format!(" (mutateRate {r}/s)"));
    println!("== {} x {n} requests of {capacity}{limit}", handler.name());
    println!("  time to all Fulfilled      {:>8.1} s   ({passes} passes)", to_fulfilled.as_secs_f64());
    println!("  AWS calls until then       {total:>8}     ({:.2} per request)", total as f64 / n as f64);
    println!("  mutating calls per request {:>8.2}", mutations as f64 / n as f64);
    println!(
        "  DescribeInstances          {describes:>8}     over {poll_cycles} poll cycles ({:.2} per cycle, {} instances)",
        describes as f64 / poll_cycles.max(1) as f64,
        n * capacity as usize
    );
    println!("  steady AWS calls / minute  {per_minute:>8.1}");
    println!("  time to release all        {:>8.1} s", to_release.as_secs_f64());
    println!("  peak memory (VmHWM)        {:>8.1} MiB", peak_memory_mib());
    println!("  calls by action: {calls:?}");
}

/// The simulated provider against a real cluster: the operator binary as a process.
async fn sim_cluster(n: usize, capacity: i32) {
    let Some(path) = support::cluster::kubeconfig("scale sim-cluster") else { return };
    let f = support::sim_scale::run(&path, n, capacity).await;
    println!("== sim against a real cluster: {} requests of {capacity} ({} machines)", f.requests, f.machines);
    println!("  time to all Fulfilled      {:>8.1} s", f.to_fulfilled.as_secs_f64());
    println!("  request reconciles / s     {:>8.1}", f.reconciles_per_second);
    println!("  API writes per request     {:>8.1}", f.writes_per_request);
    println!("  time to delete all         {:>8.1} s", f.to_deleted.as_secs_f64());
    match f.peak_kib {
        Some(kib) => println!("  operator peak memory       {:>8.1} MiB", kib as f64 / 1024.0),
        None => println!("  operator peak memory       unknown (no /proc)"),
    }
}

/// One phase of a whole-operator run, printed as soon as it ends.
fn print_phase(phase: &str, cost: &Cost, n: usize, capacity: i32) {
    let per = |x: usize| x as f64 / n as f64;
    match &cost.unfinished {
        Some(how_far) => println!("  {phase}: DID NOT END ({how_far}); its costs until then"),
        None => println!("  {phase}"),
    }
    println!("    time                     {:>8.2} s", cost.took.as_secs_f64());
    println!(
        "    AWS calls per request    {:>8.2}   (describes {:.2}, mutating {:.2})",
        per(cost.total_calls()),
        per(cost.describes()),
        per(cost.total_calls() - cost.describes())
    );
    println!("    request writes per req.  {:>8.2}", per(cost.writes));
    println!(
        "    emulator                 {:>8.2} s busy   ({:.2} s over its calls)",
        cost.emulator_busy.as_secs_f64(),
        cost.emulator_sum().as_secs_f64()
    );
    let mut slowest: Vec<_> = cost.emulator_by_action.iter().collect();
    slowest.sort_by_key(|(_, t)| std::cmp::Reverse(**t));
    let slowest: Vec<String> = slowest
        .iter()
        .take(4)
        .map(|(a, t)| {
            format!(
                "{a} {:.2} s / {} = {:.0} ms",
                t.as_secs_f64(),
                cost.calls.get(*a).copied().unwrap_or(0),
                t.as_secs_f64() * 1e3 / cost.calls.get(*a).copied().unwrap_or(1).max(1) as f64
            )
        })
        .collect();
    println!("      of which             {}", slowest.join(", "));
    println!(
        "      DescribeInstances    {} instance ids by id ({:.1} per machine), {} tag listings",
        cost.ids_described,
        cost.ids_described as f64 / (n as f64 * f64::from(capacity)),
        cost.listings
    );
    println!(
        "    API server               {:>8.2} s        ({} MachineRequest calls)",
        cost.apiserver_sum.as_secs_f64(),
        cost.apiserver_calls
    );
    println!("    operator CPU             {:>8.2} s", cost.operator_cpu.as_secs_f64());
    println!("    calls by action: {:?}", cost.calls);
}

/// The whole operator against moto and a real cluster, for each API and size; then the growth
/// from each size to the next.
async fn aws_cluster(launchers: &[Launcher], sizes: &[usize], capacity: i32, lifted: bool) {
    let Some(path) = support::cluster::kubeconfig("scale aws-cluster") else { return };
    // EC2's buckets scaled by 5: the limiter out of the way, to see the operator's own growth.
    let lifted_env = [
        ("ORB_PROVIDERS__DEFAULT__MUTATE_RATE", "100"),
        ("ORB_PROVIDERS__DEFAULT__MUTATE_BURST", "500"),
        ("ORB_PROVIDERS__DEFAULT__DESCRIBE_RATE", "100"),
        ("ORB_PROVIDERS__DEFAULT__DESCRIBE_BURST", "500"),
    ];
    let env: &[(&str, &str)] = if lifted { &lifted_env } else { &[] };
    let limits = if lifted { "limits lifted: 100/s after 500, both buckets" } else { "default limits" };
    for &launcher in launchers {
        let mut runs = vec![];
        for &n in sizes {
            println!(
                "== {} x {n} requests of {capacity}, the operator binary on a real cluster ({limits})",
                launcher.name()
            );
            let report = |phase: &str, cost: &Cost| print_phase(phase, cost, n, capacity);
            let f = support::aws_scale::run(&path, launcher, n, capacity, env, &report).await;
            match f.peak_kib {
                Some(kib) => println!("  operator peak memory       {:>8.1} MiB", kib as f64 / 1024.0),
                None => println!("  operator peak memory       unknown (no /proc)"),
            }
            runs.push(f);
        }
        for pair in runs.windows(2) {
            let ratio = |a: &Cost, b: &Cost| match (&a.unfinished, &b.unfinished) {
                (None, None) => format!("x{:.1}", b.took.as_secs_f64() / a.took.as_secs_f64().max(1e-3)),
                _ => "unknown (a phase did not end)".to_string(),
            };
            println!(
                "== {} growth {} -> {} requests: create {}, delete {}",
                launcher.name(),
                pair[0].requests,
                pair[1].requests,
                ratio(&pair[0].create, &pair[1].create),
                ratio(&pair[0].delete, &pair[1].delete)
            );
        }
    }
}

fn main() {
    // `cargo test --all-targets` runs this binary too: measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // ORB_LOG=warn (or debug, …) shows what the provider logs while it runs.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("ORB_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if let Some(which) = arg("--handler").and_then(|h| h.strip_prefix("aws-cluster").map(str::to_string)) {
        let launchers = match which.as_str() {
            "" => vec![Launcher::Ec2Fleet, Launcher::RunInstances],
            ":ec2-fleet" => vec![Launcher::Ec2Fleet],
            ":run-instances" => vec![Launcher::RunInstances],
            other => panic!(
                "unknown aws-cluster API {other}: aws-cluster, aws-cluster:ec2-fleet or aws-cluster:run-instances"
            ),
        };
        let sizes: Vec<usize> = match arg("--requests") {
            Some(list) => list.split(',').map(|n| n.parse().expect("--requests N[,N...]")).collect(),
            None => vec![10, 100, 1000],
        };
        let capacity = arg("--capacity").map_or(5, |c| c.parse().expect("--capacity C"));
        let lifted = arg("--limits").as_deref() != Some("default");
        runtime.block_on(aws_cluster(&launchers, &sizes, capacity, lifted));
        return;
    }
    if arg("--handler").as_deref() == Some("sim-cluster") {
        let n = arg("--requests").map_or(1000, |n| n.parse().expect("--requests N"));
        let capacity = arg("--capacity").map_or(10, |c| c.parse().expect("--capacity C"));
        runtime.block_on(sim_cluster(n, capacity));
        return;
    }
    let handlers = match arg("--handler").as_deref() {
        None | Some("all") => vec![Handler::RunInstances, Handler::Ec2Fleet, Handler::SpotFleet, Handler::Asg],
        Some("run-instances") => vec![Handler::RunInstances],
        Some("ec2-fleet") => vec![Handler::Ec2Fleet],
        Some("spot-fleet") => vec![Handler::SpotFleet],
        Some("asg") => vec![Handler::Asg],
        Some(other) => panic!("unknown handler {other}: run-instances, ec2-fleet, spot-fleet, asg, all or sim-cluster"),
    };
    let sizes: Vec<usize> = match arg("--requests") {
        Some(n) => vec![n.parse().expect("--requests N")],
        None => vec![10, 100],
    };
    let capacity: i32 = arg("--capacity").map_or(5, |c| c.parse().expect("--capacity C"));
    // The default mutating budget (4/s after a burst of 40) bounds how fast 100 creates can go;
    // `--mutate-rate` lifts it to see the operator's own scaling.
    let mutate_rate: Option<u32> = arg("--mutate-rate").map(|r| r.parse().expect("--mutate-rate N"));
    for handler in handlers {
        for &n in &sizes {
            runtime.block_on(run(handler, n, capacity, mutate_rate));
        }
    }
}
