//! How long each HostFactory call takes at 10 and 1,000 requests. Prints figures; not a test.
//!
//! `cargo bench --bench hostfactory` answers every verb in-process against a scripted API server
//! (tower-test) holding N HostFactory requests of 5 machines each: the plugin's own cost —
//! decoding the label-selected lists, building the answers — without a network; and the calls
//! per second of HostFactory's polling after 10,000 finished requests (which the plugin deletes).
//! With `ORB_E2E_KUBECONFIG` set it also creates N such requests in a fresh namespace of that
//! cluster (statuses written directly; no operator needed) and times the real binary through the
//! provider scripts, as HostFactory runs them, then deletes the namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failed run

use http::{Request, Response};
use kube::client::Body;
use orb_operator::hostfactory::{Plugin, Verb};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const NS: &str = "bench";

fn request(i: usize) -> Value {
    let name = format!("req-{i:08x}-0000-4000-8000-000000000000");
    let machines: Vec<Value> = (0..5)
        .map(|m| {
            let id = format!("i-{i:08x}{m:09x}");
            json!({"privateDnsName": format!("ip-{}.ec2.internal", &id[2..]), "instanceId": id, "state": "running", "result": "succeed",
                   "instanceType": "m5.large", "capacityType": "on-demand", "weight": 1, "zone": "us-east-1a",
                   "privateIp": "10.0.0.1", "launchTime": "2026-11-26T10:00:00Z"})
        })
        .collect();
    json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineRequest",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{i}"), "resourceVersion": "1", "generation": 1,
                     "labels": {"orb.dev/created-by": "hostfactory", "hostfactory.orb.dev/provider": "default"}},
        "spec": {"templateRef": {"name": "workers"}, "capacity": 5, "fulfilmentTimeout": "15m"},
        "status": {"phase": "Fulfilled", "requestedCapacity": 5, "fulfilledCapacity": 5, "machines": machines, "conditions": []}})
}

fn template() -> Value {
    json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineTemplate",
        "metadata": {"name": "workers", "namespace": NS, "uid": "t", "generation": 1},
        "spec": {"imageId": "ami-0123456789abcdef0", "instanceTypes": [{"type": "m5.large"}]},
        "status": {"observedGeneration": 1, "machinesInUse": 0,
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Valid", "message": "ok", "observedGeneration": 1, "lastTransitionTime": "2026-11-26T10:00:00Z"}],
                   "instanceTypes": [{"type": "m5.large", "vcpus": 2, "memoryMiB": 8192, "architecture": "x86_64"}]}})
}

/// A request HostFactory is done with: capacity 0, its machines terminated, returned and the
/// return reported.
fn finished(i: usize) -> Value {
    let mut r = request(i);
    let ids: Vec<Value> = r["status"]["machines"].as_array().unwrap().iter().map(|m| m["instanceId"].clone()).collect();
    for m in r["status"]["machines"].as_array_mut().unwrap() {
        m["state"] = json!("terminated");
    }
    r["spec"]["capacity"] = json!(0);
    r["spec"]["returnMachines"] = json!(ids);
    r["metadata"]["labels"][format!("hostfactory.orb.dev/ret-{i:08x}-0000-4000-8000-000000000000")] = json!("reported");
    r
}

/// A plugin whose API server holds `n` requests.
fn scripted(n: usize) -> Plugin {
    scripted_with((0..n).map(request).collect())
}

/// A plugin whose API server holds `requests`; a delete removes one, as an API server would.
fn scripted_with(requests: Vec<Value>) -> Plugin {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut requests = requests;
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let method = req.method().clone();
            let name = path.rsplit('/').next().unwrap().to_string();
            let answer = if path.ends_with("/machinetemplates") {
                json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineTemplateList", "metadata": {}, "items": [template()]})
            } else if path.ends_with("/machinetemplates/workers") {
                template()
            } else if path.ends_with("/machinerequests") && method == http::Method::POST {
                let bytes = req.into_body().collect_bytes().await.unwrap();
                serde_json::from_slice(&bytes).unwrap()
            } else if path.ends_with("/machinerequests") {
                json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineRequestList", "metadata": {}, "items": requests})
            } else if method == http::Method::DELETE {
                requests.retain(|r| r["metadata"]["name"] != name.as_str());
                json!({"kind": "Status", "status": "Success"})
            } else {
                requests
                    .iter()
                    .find(|r| r["metadata"]["name"] == name.as_str())
                    .cloned()
                    .unwrap_or_else(|| requests[0].clone())
            };
            send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap());
        }
    });
    Plugin {
        client: kube::Client::new(service, NS),
        namespace: NS.into(),
        template_selector: None,
        provider: "default".into(),
    }
}

/// Calls per second of HostFactory's polling pair (getRequestStatus of one request, then
/// getReturnRequests) over one second.
async fn polls_per_second(plugin: &Plugin) -> f64 {
    let status = json!({"requests": [{"requestId": request(0)["metadata"]["name"]}]});
    let (started, mut calls) = (Instant::now(), 0u32);
    while started.elapsed() < Duration::from_secs(1) {
        plugin.answer(Verb::GetRequestStatus, &status).await.unwrap();
        plugin.answer(Verb::GetReturnRequests, &json!({"machines": []})).await.unwrap();
        calls += 2;
    }
    f64::from(calls) / started.elapsed().as_secs_f64()
}

/// The cost of a long history: 10 live requests and 10,000 finished ones. The first
/// getReturnRequests deletes the finished ones; from then on the calls cost what 10 cost.
async fn after_history() {
    const FINISHED: usize = 10_000;
    let live_only = scripted(10);
    let alone = polls_per_second(&live_only).await;
    let plugin = scripted_with((0..10).map(request).chain((10..10 + FINISHED).map(finished)).collect());
    let (started, mut calls, mut slowest) = (Instant::now(), 0, Duration::ZERO);
    // Each call deletes at most DELETES_PER_CALL: HostFactory's polling clears the backlog.
    for _ in 0..FINISHED.div_ceil(orb_operator::hostfactory::DELETES_PER_CALL) {
        let call = Instant::now();
        plugin.answer(Verb::GetReturnRequests, &json!({"machines": []})).await.unwrap();
        slowest = slowest.max(call.elapsed());
        calls += 1;
    }
    let cleanup = started.elapsed();
    let after = polls_per_second(&plugin).await;
    println!("\nafter {FINISHED} finished requests (10 live):");
    println!("  {calls} getReturnRequests delete them in {cleanup:.2?} (slowest call {slowest:.2?})");
    println!(
        "  then {after:.0} calls/s (getRequestStatus + getReturnRequests); 10 live requests alone: {alone:.0} calls/s"
    );
}

fn inputs() -> Vec<(Verb, Value)> {
    let first = request(0);
    let machine = &first["status"]["machines"][0];
    vec![
        (Verb::GetAvailableTemplates, json!({})),
        (Verb::RequestMachines, json!({"template": {"templateId": "workers", "machineCount": 5}})),
        (Verb::GetRequestStatus, json!({"requests": [{"requestId": first["metadata"]["name"]}]})),
        (
            Verb::RequestReturnMachines,
            json!({"machines": [{"name": machine["privateDnsName"], "machineId": machine["instanceId"]}]}),
        ),
        (Verb::GetReturnRequests, json!({"machines": []})),
    ]
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

async fn in_process() {
    println!("in-process against a scripted API server (median of 20 calls):");
    println!("{:<24} {:>12} {:>12}", "verb", "10 requests", "1000 requests");
    let mut rows: Vec<(Verb, Vec<Duration>)> = inputs().into_iter().map(|(v, _)| (v, vec![])).collect();
    for n in [10, 1000] {
        let plugin = scripted(n);
        for (i, (verb, input)) in inputs().into_iter().enumerate() {
            let mut times = vec![];
            for _ in 0..20 {
                let started = Instant::now();
                // requestReturnMachines patches; the scripted server answers a patch like a get.
                let _ = plugin.answer(verb, &input).await;
                times.push(started.elapsed());
            }
            rows[i].1.push(median(times));
        }
    }
    for (verb, times) in rows {
        println!("{:<24} {:>12.2?} {:>12.2?}", format!("{verb:?}"), times[0], times[1]);
    }
}

/// Against a real cluster: N requests in a fresh namespace, each verb run through its script.
async fn on_a_cluster(kubeconfig: &str) {
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
    use orb_operator::api::{MachineRequest, MachineTemplate};
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(kubeconfig).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    println!("\nthrough the provider scripts against {kubeconfig} (one call each):");
    println!("{:<24} {:>12} {:>12}", "verb", "10 requests", "1000 requests");
    let mut rows: Vec<(Verb, Vec<Duration>)> = inputs().into_iter().map(|(v, _)| (v, vec![])).collect();
    for n in [10, 1000] {
        let ns = format!("orb-bench-hf-{n}-{:04x}", rand::random::<u16>());
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let object =
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).unwrap();
        namespaces.create(&PostParams::default(), &object).await.unwrap();
        let templates: Api<MachineTemplate> = Api::namespaced(client.clone(), &ns);
        let requests: Api<MachineRequest> = Api::namespaced(client.clone(), &ns);
        let mut t: MachineTemplate = serde_json::from_value(template()).unwrap();
        t.metadata.namespace = Some(ns.clone());
        let status = t.status.take();
        templates.create(&PostParams::default(), &t).await.unwrap();
        let patch = json!({"status": status});
        templates.patch_status("workers", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        for i in 0..n {
            let mut mr: MachineRequest = serde_json::from_value(request(i)).unwrap();
            mr.metadata.namespace = Some(ns.clone());
            mr.metadata.uid = None;
            mr.metadata.resource_version = None;
            let status = mr.status.take();
            let name = mr.metadata.name.clone().unwrap();
            requests.create(&PostParams::default(), &mr).await.unwrap();
            requests
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
                .await
                .unwrap();
        }
        let dir = std::env::temp_dir().join(&ns);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, (verb, input)) in inputs().into_iter().enumerate() {
            let name = format!("{verb:?}");
            let script_name = format!("{}{}.sh", name[..1].to_lowercase(), &name[1..]);
            let file = dir.join("input.json");
            std::fs::write(&file, input.to_string()).unwrap();
            let started = Instant::now();
            let output = std::process::Command::new(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hostfactory/scripts").join(&script_name),
            )
            .arg("-f")
            .arg(&file)
            .env("ORB_OPERATOR_BIN", env!("CARGO_BIN_EXE_orb-operator"))
            .env("KUBECONFIG", kubeconfig)
            .env("ORB_HF_NAMESPACE", &ns)
            .output()
            .unwrap();
            rows[i].1.push(started.elapsed());
            assert!(output.status.success(), "{script_name}: {}", String::from_utf8_lossy(&output.stdout));
        }
        namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
    }
    for (verb, times) in rows {
        println!("{:<24} {:>12.2?} {:>12.2?}", format!("{verb:?}"), times[0], times[1]);
    }
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench binaries too: measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("hostfactory benchmark: run it with `cargo bench --bench hostfactory`");
        return;
    }
    in_process().await;
    after_history().await;
    match std::env::var("ORB_E2E_KUBECONFIG") {
        Ok(path) if !path.is_empty() => on_a_cluster(&path).await,
        _ => println!("\n(set ORB_E2E_KUBECONFIG to also time the scripts against a real cluster)"),
    }
}
