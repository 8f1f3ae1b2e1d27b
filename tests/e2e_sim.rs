//! End to end against a real Kubernetes API server (`ORB_E2E_KUBECONFIG`), with the operator
//! binary and its default simulated provider: fulfil 3, scale 3 -> 5 -> 4 naming the machine to
//! go, replace a machine at unchanged capacity, delete; and an invalid template refused at
//! admission. Skips with a message when no cluster is given.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::conditions;
use kube::{Api, ResourceExt};
use orb_operator::api::{MachineRequest, MachineTemplate, Phase};
use serde_json::json;
use std::collections::BTreeSet;
use support::cluster::{self, Operator, TestNamespace};

fn running(mr: &MachineRequest) -> BTreeSet<String> {
    mr.status
        .iter()
        .flat_map(|s| s.machines.iter())
        .filter(|m| m.state == "running" && !m.returning)
        .map(|m| m.instance_id.clone())
        .collect()
}

/// Fulfilled, at the current generation, with exactly `n` running machines.
fn fulfilled_with(n: usize) -> impl Fn(Option<&MachineRequest>) -> bool {
    move |mr| {
        mr.is_some_and(|mr| {
            let s = mr.status.as_ref();
            s.is_some_and(|s| s.phase == Some(Phase::Fulfilled) && s.observed_generation == mr.metadata.generation)
                && running(mr).len() == n
        })
    }
}

#[tokio::test]
async fn sim_request_lifecycle_against_a_real_cluster() {
    let Some(path) = cluster::kubeconfig("sim_request_lifecycle_against_a_real_cluster") else { return };
    let client = cluster::client(&path).await;
    cluster::apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "orb-e2e-sim").await;
    let _operator = Operator::start(&path, &ns.name, &[]);

    let templates: Api<MachineTemplate> = Api::namespaced(client.clone(), &ns.name);
    let requests: Api<MachineRequest> = Api::namespaced(client.clone(), &ns.name);
    let template: MachineTemplate = cluster::example("sim/template.yaml");
    templates.create(&PostParams::default(), &template).await.unwrap();
    let request: MachineRequest = cluster::example("sim/request.yaml");
    let name = request.name_any();
    let started = std::time::Instant::now();
    requests.create(&PostParams::default(), &request).await.unwrap();

    let mr = cluster::wait(&requests, &name, fulfilled_with(3), 60).await.unwrap();
    eprintln!("fulfilled 3 in {:?}", started.elapsed());
    assert_eq!(mr.status.as_ref().unwrap().fulfilled_capacity, 3);
    assert!(mr.finalizers().contains(&"orb.dev/cleanup".to_string()));

    // Scale subresource: 3 -> 5.
    let pp = PatchParams::default();
    requests.patch_scale(&name, &pp, &Patch::Merge(json!({"spec": {"replicas": 5}}))).await.unwrap();
    let mr = cluster::wait(&requests, &name, fulfilled_with(5), 60).await.unwrap();
    let five = running(&mr);
    let scale = requests.get_scale(&name).await.unwrap();
    assert_eq!(scale.status.unwrap().replicas, 5, "scale status replicas = fulfilled capacity");

    // 5 -> 4 naming the machine that must go: exactly that one leaves.
    let victim = five.iter().next().unwrap().clone();
    requests
        .patch(&name, &pp, &Patch::Merge(json!({"spec": {"capacity": 4, "returnMachines": [victim]}})))
        .await
        .unwrap();
    let mr = cluster::wait(&requests, &name, fulfilled_with(4), 60).await.unwrap();
    let four = running(&mr);
    let mut expected = five.clone();
    expected.remove(&victim);
    assert_eq!(four, expected, "exactly the named machine left");

    // Replace a machine at unchanged capacity.
    let bad_host = four.iter().next().unwrap().clone();
    requests.patch(&name, &pp, &Patch::Merge(json!({"spec": {"returnMachines": [victim, bad_host]}}))).await.unwrap();
    let replaced =
        |mr: Option<&MachineRequest>| fulfilled_with(4)(mr) && mr.is_some_and(|mr| !running(mr).contains(&bad_host));
    let mr = cluster::wait(&requests, &name, replaced, 60).await.unwrap();
    let after = running(&mr);
    assert_eq!(after.len(), 4);
    assert_eq!(after.difference(&four).count(), 1, "one new machine replaced the returned one");

    // Delete: the operator releases and removes its finalizer; the object goes.
    let uid = mr.uid().unwrap();
    requests.delete(&name, &Default::default()).await.unwrap();
    cluster::wait(&requests, &name, conditions::is_deleted(&uid), 60).await;

    // Admission refuses an invalid template and names the field.
    let mut bad: MachineTemplate = cluster::example("sim/template.yaml");
    bad.metadata.name = Some("bad".into());
    bad.spec.tags.insert("orb.dev/request".into(), "mine".into());
    bad.spec.on_demand_percent = Some(150);
    let error = templates.create(&PostParams::default(), &bad).await.unwrap_err().to_string();
    assert!(error.contains("orb.dev/"), "{error}");
    assert!(error.contains("onDemandPercent"), "{error}");
}
