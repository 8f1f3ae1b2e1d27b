//! End to end against a real Kubernetes API server (`ORB_E2E_KUBECONFIG`), with the operator
//! binary and its default simulated provider: the request lifecycle of `support::lifecycle`,
//! and an invalid template refused at admission. Skips with a message when no cluster is given.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use kube::Api;
use kube::api::PostParams;
use orb_operator::api::{MachineRequest, MachineTemplate};
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
