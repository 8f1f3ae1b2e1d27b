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
    InstanceTypeSpec, IntRange, MAX_CAPACITY, MAX_NAME_LEN, MachineRequest, MachineTemplate, Phase, conditions,
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

/// A template that describes its machines by attributes: resolved by the operator into the
/// simulator's types (in `status.instanceTypes`, with their vCPUs as weights), a request's
/// capacity fulfilled in vCPUs from those types; one that matches nothing held `Ready=False`
/// naming the field, its request launching nothing; one with both lists refused at admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_by_attributes_resolve_and_launch_against_a_real_cluster() {
    let test = "templates_by_attributes_resolve_and_launch_against_a_real_cluster";
    let Some(path) = cluster::kubeconfig(test) else { return };
    let client = cluster::client(&path).await;
    cluster::apply_crds(&client).await;
    let ns = TestNamespace::create(&client, &path, "orb-e2e-abis").await;
    let env = [("ORB_PROVIDERS__DEFAULT__TYPE", "sim"), ("ORB_PROVIDERS__DEFAULT__PENDING_DELAY", "1s")];
    let _operator = Operator::start(&path, &ns.name, &env);
    let templates: Api<MachineTemplate> = Api::namespaced(client.clone(), &ns.name);
    let requests: Api<MachineRequest> = Api::namespaced(client.clone(), &ns.name);

    let template: MachineTemplate = cluster::example("sim/template-by-attributes.yaml");
    let name = template.metadata.name.clone().unwrap();
    templates.create(&PostParams::default(), &template).await.unwrap();
    let template = cluster::wait(&templates, &name, cluster::template_ready, 60).await.unwrap();
    let status = template.status.unwrap();
    let resolved = status.instance_types;
    assert!(!resolved.is_empty(), "resolved types in the status");
    let types = status.types.expect("the Types column of kubectl get");
    assert!(types.starts_with(&resolved[0].type_), "{types}");
    for t in &resolved {
        assert!((2..=8).contains(&t.vcpus) && t.memory_mib >= 8192, "{t:?}");
        assert_eq!(t.weight, Some(t.vcpus), "weighted by vCPUs: {t:?}");
    }

    let mut request: MachineRequest = cluster::example("sim/request.yaml");
    request.spec.template_ref.name = name.clone();
    request.spec.capacity = 16;
    let request_name = request.metadata.name.clone().unwrap();
    requests.create(&PostParams::default(), &request).await.unwrap();
    let fulfilled = |mr: Option<&MachineRequest>| {
        mr.and_then(|mr| mr.status.as_ref()).is_some_and(|s| s.phase == Some(Phase::Fulfilled))
    };
    let mr = cluster::wait(&requests, &request_name, fulfilled, 90).await.unwrap();
    let status = mr.status.unwrap();
    let vcpus: i32 = status
        .machines
        .iter()
        .filter(|m| m.counts_as_live())
        .map(|m| resolved.iter().find(|t| Some(&t.type_) == m.instance_type.as_ref()).expect("a resolved type").vcpus)
        .sum();
    assert!((16..16 + 8).contains(&vcpus), "16 vCPUs asked, {vcpus} launched");

    // Nothing matches: held, naming the field; its request launches nothing.
    let mut nothing: MachineTemplate = cluster::example("sim/template-by-attributes.yaml");
    nothing.metadata.name = Some("nothing".into());
    nothing.spec.instance_requirements.as_mut().unwrap().v_cpu_count = IntRange { min: Some(512), max: None };
    templates.create(&PostParams::default(), &nothing).await.unwrap();
    let held = |t: Option<&MachineTemplate>| {
        t.and_then(|t| t.status.as_ref())
            .and_then(|s| conditions::find(&s.conditions, "Ready"))
            .is_some_and(|c| c.status == "False" && c.reason == "InvalidSpec")
    };
    let held = cluster::wait(&templates, "nothing", held, 60).await.unwrap();
    let message = &conditions::find(&held.status.as_ref().unwrap().conditions, "Ready").unwrap().message;
    assert!(message.contains("spec.instanceRequirements") && message.contains("NoMatchingInstanceTypes"), "{message}");
    let mut waiting: MachineRequest = cluster::example("sim/request.yaml");
    waiting.metadata.name = Some("waiting".into());
    waiting.spec.template_ref.name = "nothing".into();
    requests.create(&PostParams::default(), &waiting).await.unwrap();
    let pending = |mr: Option<&MachineRequest>| {
        mr.and_then(|mr| mr.status.as_ref())
            .and_then(|s| conditions::find(&s.conditions, "Ready"))
            .is_some_and(|c| c.reason == "TemplateNotReady")
    };
    let waiting = cluster::wait(&requests, "waiting", pending, 60).await.unwrap();
    assert!(waiting.status.unwrap().machines.is_empty(), "nothing launched");

    // Both a list and requirements: refused at admission.
    let mut both: MachineTemplate = cluster::example("sim/template-by-attributes.yaml");
    both.metadata.name = Some("both".into());
    both.spec.instance_types = vec![InstanceTypeSpec { type_: "m5.large".into(), weight: 1, priority: None }];
    let error = templates.create(&PostParams::default(), &both).await.unwrap_err().to_string();
    assert!(error.contains("not both"), "{error}");
}
