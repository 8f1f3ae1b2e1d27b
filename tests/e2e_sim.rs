//! End to end against a real Kubernetes API server (`ORB_E2E_KUBECONFIG`), with the operator
//! binary and its default simulated provider: the request lifecycle of `support::lifecycle`,
//! an invalid template refused at admission, and the largest request the CRD admits writing
//! its status with as many machines again on their way out. Skips with a message when no
//! cluster is given.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use orb_operator::api::{
    InstanceTypeSpec, MAX_CAPACITY, MAX_NAME_LEN, MachineRequest, MachineTemplate, Phase, conditions,
};
use serde_json::json;
use support::cluster::{self, Operator, TestNamespace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_request_lifecycle_against_a_real_cluster() {
    let Some(path) = cluster::kubeconfig("sim_request_lifecycle_against_a_real_cluster") else { return };
    let client = cluster::client(&path).await;
    cluster::apply_crds(&client).await;
    let ns = TestNamespace::create(&client, &path, "orb-e2e-sim").await;
    let _operator = Operator::start(&path, &ns.name, &[]);

    let template: MachineTemplate = cluster::example("sim/template.yaml");
    let request: MachineRequest = cluster::example("sim/request.yaml");
    support::lifecycle::exercise(&client, &ns.name, template, request).await;

    // Admission refuses an invalid template and names the fields.
    let templates: Api<MachineTemplate> = Api::namespaced(client.clone(), &ns.name);
    let mut bad: MachineTemplate = cluster::example("sim/template.yaml");
    bad.metadata.name = Some("bad".into());
    bad.spec.tags.insert("orb.dev/request".into(), "mine".into());
    bad.spec.on_demand_percent = Some(150);
    let error = templates.create(&PostParams::default(), &bad).await.unwrap_err().to_string();
    assert!(error.contains("orb.dev/"), "{error}");
    assert!(error.contains("onDemandPercent"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_request_the_crd_admits_keeps_a_writable_status_against_a_real_cluster() {
    let test = "the_largest_request_the_crd_admits_keeps_a_writable_status_against_a_real_cluster";
    let Some(path) = cluster::kubeconfig(test) else { return };
    let client = cluster::client(&path).await;
    cluster::apply_crds(&client).await;
    let ns = TestNamespace::create(&client, &path, "orb-e2e-bound").await;
    // Returned machines take ten minutes to terminate: all of them stay listed, still leaving.
    let env = [
        ("ORB_LOG", "warn"),
        ("ORB_PROVIDERS__DEFAULT__TYPE", "sim"),
        ("ORB_PROVIDERS__DEFAULT__PENDING_DELAY", "1s"),
        ("ORB_PROVIDERS__DEFAULT__TERMINATING_DELAY", "10m"),
    ];
    let _operator = Operator::start(&path, &ns.name, &env);
    let templates: Api<MachineTemplate> = Api::namespaced(client.clone(), &ns.name);
    let requests: Api<MachineRequest> = Api::namespaced(client.clone(), &ns.name);
    let mut template: MachineTemplate = cluster::example("sim/template.yaml");
    template.spec.instance_types = vec![InstanceTypeSpec { type_: "m5.large".into(), weight: 1, priority: None }];
    templates.create(&PostParams::default(), &template).await.unwrap();

    // Admission refuses one unit more, saying how to ask for more, and a name too long for the
    // Events about the request.
    let mut request: MachineRequest = cluster::example("sim/request.yaml");
    request.metadata.name = Some("r".repeat(MAX_NAME_LEN + 1));
    let error = requests.create(&PostParams::default(), &request).await.unwrap_err().to_string();
    assert!(error.contains("metadata.name must be at most 236 characters"), "{error}");
    let name = "r".repeat(MAX_NAME_LEN);
    request.metadata.name = Some(name.clone());
    request.spec.capacity = MAX_CAPACITY + 1;
    let error = requests.create(&PostParams::default(), &request).await.unwrap_err().to_string();
    assert!(error.contains("spec.capacity") && error.contains("several MachineRequests"), "{error}");

    request.spec.capacity = MAX_CAPACITY;
    requests.create(&PostParams::default(), &request).await.unwrap();
    let capacity = MAX_CAPACITY as usize;
    let mr = cluster::wait(&requests, &name, support::lifecycle::fulfilled_with(capacity), 300).await.unwrap();
    let first = support::lifecycle::running(&mr);

    // Every machine returned at unchanged capacity: as many replacements, the returned ones
    // still listed while they leave.
    let all: Vec<&String> = first.iter().collect();
    let patch = Patch::Merge(json!({"spec": {"returnMachines": all}}));
    requests.patch(&name, &PatchParams::default(), &patch).await.unwrap();
    let replaced = |mr: Option<&MachineRequest>| {
        support::lifecycle::fulfilled_with(capacity)(mr)
            && mr.is_some_and(|mr| support::lifecycle::running(mr).is_disjoint(&first))
    };
    let mr = cluster::wait(&requests, &name, replaced, 300).await.unwrap();
    let status = mr.status.as_ref().unwrap();
    assert_eq!(status.machines.len(), 2 * capacity, "the returned ones are still listed");
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    let ready = conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(ready.status, "True", "{ready:?}");
    let size = serde_json::to_vec(&mr).unwrap().len();
    eprintln!("the largest admitted request with {} machines listed: {size} bytes as served", status.machines.len());
    assert!(size < 1536 * 1024 * 4 / 5, "{size} bytes");
}
