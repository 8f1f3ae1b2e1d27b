//! Two replicas against a real Kubernetes API server (`ORB_E2E_KUBECONFIG`), the AWS provider
//! pointed at moto behind them (one cloud both replicas see): exactly one holds the Lease `orb-operator` and reconciles; killing it
//! (SIGKILL, no release) hands the lease to the other within 15 s, which then carries the
//! request on without launching anything twice.
//! Skips with a message when no cluster is given.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use orb_operator::api::{MachineRequest, MachineTemplate};
use std::time::{Duration, Instant};
use support::cluster::{self, Operator, TestNamespace};
use support::lifecycle::{fulfilled_with, running};

/// The lease's holder, once there is one.
async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt("orb-operator").await.unwrap().and_then(|l| l.spec?.holder_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_and_a_fast_handover_against_a_real_cluster() {
    let test = "two_replicas_one_leader_and_a_fast_handover_against_a_real_cluster";
    let Some(path) = cluster::kubeconfig(test) else { return };
    let (moto, region, ec2, network) = support::moto::e2e_cloud(test).await;
    let client = cluster::client(&path).await;
    cluster::apply_crds(&client).await;
    let ns = TestNamespace::create(&client, &path, "orb-e2e-ha").await;
    let aws_env = support::moto::operator_env(moto, region, "orb-e2e-ha");
    let env = |pod: &'static str| {
        let mut env = vec![("POD_NAME", pod)];
        env.extend(aws_env);
        env
    };
    let mut replicas = vec![("replica-a", Some(Operator::start(&path, &ns.name, &env("replica-a"))))];
    replicas.push(("replica-b", Some(Operator::start(&path, &ns.name, &env("replica-b")))));

    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let leader = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(h) = holder(&leases).await {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a replica takes the lease");
    let (leader_name, standby_name) =
        if leader.starts_with("replica-a") { ("replica-a", "replica-b") } else { ("replica-b", "replica-a") };

    let templates: Api<MachineTemplate> = Api::namespaced(client.clone(), &ns.name);
    let requests: Api<MachineRequest> = Api::namespaced(client.clone(), &ns.name);
    let template = support::moto::example_template("aws/run-instances-on-demand.yaml", &network);
    let mut request: MachineRequest = cluster::example("aws/request.yaml");
    request.spec.template_ref.name = template.name_any();
    request.spec.capacity = 2;
    let name = request.name_any();
    templates.create(&PostParams::default(), &template).await.unwrap();
    requests.create(&PostParams::default(), &request).await.unwrap();
    let mr = cluster::wait(&requests, &name, fulfilled_with(2), 60).await.unwrap();
    let before = running(&mr);
    assert_eq!(holder(&leases).await.as_deref(), Some(leader.as_str()), "one leader throughout");

    // Kill the leader: no release, the lease must lapse.
    let killed = Instant::now();
    for (replica, process) in &mut replicas {
        if *replica == leader_name {
            drop(process.take());
        }
    }
    let new_leader = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match holder(&leases).await {
                Some(h) if h.starts_with(standby_name) => return h,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .expect("the standby takes the lease");
    let handover = killed.elapsed();
    eprintln!("lease handed from {leader} to {new_leader} in {handover:?}");
    assert!(handover <= Duration::from_secs(15), "handover took {handover:?}");

    // The new leader carries on: scaled up, exactly the new capacity, the old machines kept.
    requests
        .patch(&name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"capacity": 4}})))
        .await
        .unwrap();
    let mr = cluster::wait(&requests, &name, fulfilled_with(4), 60).await.unwrap();
    let after = running(&mr);
    assert!(before.is_subset(&after), "the first machines stay: {before:?} -> {after:?}");
    assert_eq!(mr.status.as_ref().unwrap().machines.iter().filter(|m| m.counts_as_live()).count(), 4);
    // Nothing launched twice: the cloud holds exactly the four.
    let live = support::moto::live_tagged(&ec2, &mr.uid().unwrap()).await;
    assert_eq!(live, 4);
    // Deleted while the new leader runs: released, nothing left.
    requests.delete(&name, &kube::api::DeleteParams::default()).await.unwrap();
    cluster::wait(&requests, &name, |mr: Option<&MachineRequest>| mr.is_none(), 60).await;
}
