//! End to end against a real Kubernetes API server (`ORB_E2E_KUBECONFIG`): the five HostFactory
//! provider scripts, run as HostFactory runs them, against the operator binary with its simulated
//! provider — templates -> request 3 -> status until complete -> return one -> status of the
//! return until complete -> the MachineRequest shows capacity 2. Waits watch the objects; the
//! scripts are then asked what HostFactory would see. Skips with a message when no cluster is
//! given.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use kube::Api;
use kube::api::PostParams;
use orb_operator::api::{MachineRequest, MachineTemplate, Phase};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use support::cluster::{self, Operator, TestNamespace};

/// Runs `<verb>.sh -f <input>` as HostFactory would and returns its JSON answer.
fn call(verb: &str, input: Value, kubeconfig: &str, namespace: &str, dir: &Path) -> Value {
    let file = dir.join(format!("{verb}.json"));
    std::fs::write(&file, input.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hostfactory/scripts").join(format!("{verb}.sh"));
    let started = std::time::Instant::now();
    let output = Command::new(script)
        .arg("-f")
        .arg(&file)
        .env("ORB_OPERATOR_BIN", env!("CARGO_BIN_EXE_orb-operator"))
        .env("KUBECONFIG", kubeconfig)
        .env("ORB_HF_NAMESPACE", namespace)
        .env("HF_PROVIDER_LOGDIR", dir)
        .output()
        .unwrap();
    eprintln!("{verb} answered in {:?}", started.elapsed());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{verb} failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{verb}: not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostfactory_scripts_drive_a_request_and_a_return_against_a_real_cluster() {
    let Some(path) = cluster::kubeconfig("hostfactory_scripts_drive_a_request_and_a_return_against_a_real_cluster")
    else {
        return;
    };
    let client = cluster::client(&path).await;
    cluster::apply_crds(&client).await;
    let ns = TestNamespace::create(&client, &path, "orb-e2e-hf").await;
    let _operator = Operator::start(&path, &ns.name, &[]);
    let dir = tempfile::tempdir().unwrap();

    let template: MachineTemplate = cluster::example("sim/template.yaml");
    let template_id = template.metadata.name.clone().unwrap();
    let templates: Api<MachineTemplate> = Api::namespaced(client.clone(), &ns.name);
    templates.create(&PostParams::default(), &template).await.unwrap();
    let ready = |t: Option<&MachineTemplate>| {
        t.and_then(|t| t.status.as_ref())
            .and_then(|s| orb_operator::api::conditions::find(&s.conditions, "Ready"))
            .is_some_and(|c| c.status == "True")
    };
    cluster::wait(&templates, &template_id, ready, 60).await;

    let offered = call("getAvailableTemplates", json!({}), &path, &ns.name, dir.path());
    let entry = offered["templates"].as_array().unwrap().iter().find(|t| t["templateId"] == template_id.as_str());
    let entry = entry.unwrap_or_else(|| panic!("{template_id} not offered: {offered}"));
    assert_ne!(entry["attributes"]["ncpus"][1], "0", "{entry}");

    let asked = call(
        "requestMachines",
        json!({"template": {"templateId": template_id, "machineCount": 3}}),
        &path,
        &ns.name,
        dir.path(),
    );
    let request_id = asked["requestId"].as_str().unwrap().to_string();
    let requests: Api<MachineRequest> = Api::namespaced(client.clone(), &ns.name);
    let fulfilled = |mr: Option<&MachineRequest>| {
        mr.and_then(|mr| mr.status.as_ref()).is_some_and(|s| s.phase == Some(Phase::Fulfilled))
    };
    cluster::wait(&requests, &request_id, fulfilled, 90).await;
    let status =
        call("getRequestStatus", json!({"requests": [{"requestId": request_id}]}), &path, &ns.name, dir.path());
    let answer = &status["requests"][0];
    assert_eq!(answer["status"], "complete", "{status}");
    let machines = answer["machines"].as_array().unwrap();
    assert_eq!(machines.len(), 3, "{status}");
    assert!(machines.iter().all(|m| m["result"] == "succeed"), "{status}");

    let victim = machines[0].clone();
    let returned = call(
        "requestReturnMachines",
        json!({"machines": [{"name": victim["name"], "machineId": victim["machineId"]}]}),
        &path,
        &ns.name,
        dir.path(),
    );
    let return_id = returned["requestId"].as_str().unwrap().to_string();
    let victim_id = victim["machineId"].as_str().unwrap().to_string();
    let gone = move |mr: Option<&MachineRequest>| {
        mr.and_then(|mr| mr.status.as_ref()).is_some_and(|s| {
            s.machines.iter().all(|m| m.instance_id != victim_id || m.state == "terminated")
                && s.phase == Some(Phase::Fulfilled)
        })
    };
    let mr = cluster::wait(&requests, &request_id, gone, 90).await.unwrap();
    assert_eq!(mr.spec.capacity, 2, "the request shows capacity 2");
    let status = call("getRequestStatus", json!({"requests": [{"requestId": return_id}]}), &path, &ns.name, dir.path());
    assert_eq!(status["requests"][0]["status"], "complete", "{status}");
    assert_eq!(status["requests"][0]["machines"][0]["result"], "succeed", "{status}");
    let status = call("getRequestStatus", json!({"requestId": request_id}), &path, &ns.name, dir.path());
    assert_eq!(status["requests"][0]["machines"].as_array().unwrap().len(), 2, "{status}");
    let returns = call("getReturnRequests", json!({"machines": []}), &path, &ns.name, dir.path());
    assert_eq!(returns["requests"], json!([]), "nothing lost, nothing pending: {returns}");
}
