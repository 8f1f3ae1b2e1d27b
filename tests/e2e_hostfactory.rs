//! End to end against a real Kubernetes API server (`ORB_E2E_KUBECONFIG`): the five HostFactory
//! provider scripts, run as HostFactory runs them (`HF_PROVIDER_NAME`, `HF_CONFDIR` and
//! `HF_LOGDIR` set, the plugin config found under `$HF_CONFDIR/providers/<name>/`), against the
//! operator binary with its aws provider on moto — templates -> request 3 -> status until complete
//! (machines named by host name) -> return one -> status of the return until complete -> the
//! MachineRequest shows capacity 2 -> a machine terminated outside the operator is listed once by
//! getReturnRequests, not replaced, and gone from the answer once returned -> the last host
//! returned: the finished request is deleted. Another provider instance in the same namespace
//! sees none of it. Waits watch the objects. Skips with a message
//! when no cluster is given.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use kube::Api;
use kube::api::PostParams;
use orb_operator::api::{MachineRequest, MachineResult, MachineTemplate, Phase};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use support::cluster::{self, Operator, TestNamespace};

/// HostFactory's directories for provider instance `provider` under `dir`, with its plugin
/// config naming `namespace`, as IBM lays them out.
fn hostfactory_home(dir: &Path, provider: &str, namespace: &str) {
    let conf = dir.join("conf/providers").join(provider);
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("orb-operator.json"), json!({"namespace": namespace}).to_string()).unwrap();
    std::fs::create_dir_all(dir.join("log")).unwrap();
}

/// Runs `<verb>.sh -f <input>` as HostFactory would, as provider instance `provider`, and
/// returns its JSON answer.
fn call(verb: &str, input: Value, kubeconfig: &str, provider: &str, dir: &Path) -> Value {
    let file = dir.join(format!("{verb}.json"));
    std::fs::write(&file, input.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hostfactory/scripts").join(format!("{verb}.sh"));
    let started = std::time::Instant::now();
    let output = Command::new(script)
        .arg("-f")
        .arg(&file)
        .env("ORB_OPERATOR_BIN", cluster::operator_binary())
        .env("KUBECONFIG", kubeconfig)
        .env("HF_PROVIDER_NAME", provider)
        .env("HF_CONFDIR", dir.join("conf"))
        .env("HF_LOGDIR", dir.join("log"))
        .env_remove("ORB_HF_NAMESPACE")
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
    let (moto, region, ec2, network) =
        support::moto::e2e_cloud("hostfactory_scripts_drive_a_request_and_a_return_against_a_real_cluster").await;
    let client = cluster::client(&path).await;
    cluster::apply_crds(&client).await;
    let ns = TestNamespace::create(&client, &path, "orb-e2e-hf").await;
    let _operator = Operator::start(&path, &ns.name, &support::moto::operator_env(moto, region, "orb-e2e-hf"));
    let dir = tempfile::tempdir().unwrap();
    let (home, other) = (dir.path().join("grid"), dir.path().join("other"));
    hostfactory_home(&home, "aws-grid", &ns.name);
    hostfactory_home(&other, "aws-other", &ns.name);
    let call = |verb: &str, input: Value, _: &str, _: &str, _: &Path| call(verb, input, &path, "aws-grid", &home);

    let template = support::moto::example_template("aws/run-instances-on-demand.yaml", &network);
    let template_id = template.metadata.name.clone().unwrap();
    let templates: Api<MachineTemplate> = Api::namespaced(client.clone(), &ns.name);
    templates.create(&PostParams::default(), &template).await.unwrap();
    cluster::wait(&templates, &template_id, cluster::template_ready, 60).await;

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
    for m in machines {
        let name = m["name"].as_str().unwrap();
        assert!(name.starts_with("ip-") && name.ends_with(".internal"), "named by host name: {m}");
    }

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

    // Another provider instance sharing the namespace sees none of it.
    let foreign = self::call("getRequestStatus", json!({"requestId": request_id}), &path, "aws-other", &other);
    assert_eq!(foreign["requests"][0]["status"], "complete_with_error", "{foreign}");
    let listed = status["requests"][0]["machines"].as_array().unwrap().clone();
    let known: Vec<Value> = listed.iter().map(|m| json!({"name": m["name"], "machineId": m["machineId"]})).collect();
    let foreign_returns = self::call("getReturnRequests", json!({"machines": []}), &path, "aws-other", &other);
    assert_eq!(foreign_returns["requests"], json!([]), "{foreign_returns}");

    // A machine terminated outside the operator (a spot reclaim, the console): listed once by
    // getReturnRequests, never replaced, gone from the answer once HostFactory returned it.
    let lost = listed[0].clone();
    let lost_id = lost["machineId"].as_str().unwrap().to_string();
    ec2.terminate_instances().instance_ids(&lost_id).send().await.unwrap();
    let seen_lost = {
        let lost_id = lost_id.clone();
        move |mr: Option<&MachineRequest>| {
            mr.and_then(|mr| mr.status.as_ref()).is_some_and(|s| {
                s.machines.iter().any(|m| m.instance_id == lost_id && m.result == Some(MachineResult::Fail))
            })
        }
    };
    let mr = cluster::wait(&requests, &request_id, seen_lost, 90).await.unwrap();
    assert_eq!(mr.status.as_ref().unwrap().phase, Some(Phase::Partial), "reported, not replaced");
    let returns = call("getReturnRequests", json!({"machines": known}), &path, &ns.name, dir.path());
    let reclaimed: Vec<&Value> = returns["requests"].as_array().unwrap().iter().collect();
    assert_eq!(reclaimed.len(), 1, "{returns}");
    assert_eq!((&reclaimed[0]["machine"], &reclaimed[0]["machineId"]), (&lost["name"], &lost["machineId"]));
    let live = support::moto::live_tagged(&ec2, mr.metadata.uid.as_deref().unwrap()).await;
    assert_eq!(live, 1, "no replacement was launched");
    let lost_return = call(
        "requestReturnMachines",
        json!({"machines": [{"name": lost["name"], "machineId": lost["machineId"]}]}),
        &path,
        &ns.name,
        dir.path(),
    );
    let settled = |mr: Option<&MachineRequest>| {
        mr.is_some_and(|mr| mr.spec.capacity == 1)
            && mr.and_then(|mr| mr.status.as_ref()).is_some_and(|s| s.phase == Some(Phase::Fulfilled))
    };
    cluster::wait(&requests, &request_id, settled, 90).await.unwrap();
    let returns = call("getReturnRequests", json!({"machines": known}), &path, &ns.name, dir.path());
    let still: Vec<&Value> =
        returns["requests"].as_array().unwrap().iter().filter(|r| r["machineId"] == lost["machineId"]).collect();
    assert!(still.is_empty(), "returned: no longer listed: {returns}");

    // HostFactory returns the last host and learns both returns are complete: the request is
    // finished and the next getReturnRequests deletes it (flat cost over months).
    let status = call("getRequestStatus", json!({"requestId": lost_return["requestId"]}), &path, &ns.name, dir.path());
    assert_eq!(status["requests"][0]["status"], "complete", "{status}");
    let last = listed[1].clone();
    let last_return = call(
        "requestReturnMachines",
        json!({"machines": [{"name": last["name"], "machineId": last["machineId"]}]}),
        &path,
        &ns.name,
        dir.path(),
    );
    let last_id = last["machineId"].as_str().unwrap().to_string();
    let all_gone = move |mr: Option<&MachineRequest>| {
        mr.and_then(|mr| mr.status.as_ref())
            .is_some_and(|s| s.machines.iter().any(|m| m.instance_id == last_id && m.state == "terminated"))
    };
    let mr = cluster::wait(&requests, &request_id, all_gone, 90).await.unwrap();
    assert_eq!(mr.spec.capacity, 0, "every machine returned");
    let status = call("getRequestStatus", json!({"requestId": last_return["requestId"]}), &path, &ns.name, dir.path());
    assert_eq!(status["requests"][0]["status"], "complete", "{status}");
    let returns = call("getReturnRequests", json!({"machines": []}), &path, &ns.name, dir.path());
    assert_eq!(returns["requests"], json!([]), "{returns}");
    cluster::wait(&requests, &request_id, |mr: Option<&MachineRequest>| mr.is_none(), 60).await;
}
