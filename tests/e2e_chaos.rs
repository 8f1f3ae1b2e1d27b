//! Chaos against a real Kubernetes API server (`ORB_E2E_KUBECONFIG`) with moto behind the
//! operator binary: 20 requests across the four handlers (RunInstances, EC2 Fleet, Spot Fleet,
//! Auto Scaling group) while the operator process is killed with SIGKILL at random moments and
//! started again. At the end every request is Fulfilled with exactly its capacity, no request
//! has more instances in the cloud than it asked for (no duplicate launch), and once they are
//! all deleted nothing tagged with the test's cluster id is left.
//! Skips with a message when no cluster is given.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use orb_operator::api::{MachineRequest, MachineTemplate};
use std::time::{Duration, Instant};
use support::cluster::{self, Operator, TestNamespace};
use support::lifecycle::fulfilled_with;

const CLUSTER_ID: &str = "orb-chaos";
const PER_HANDLER: usize = 5;
const CAPACITY: i32 = 2;
/// Kills before the operator is left to finish.
const KILLS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_survive_an_operator_killed_at_random_against_a_real_cluster() {
    let test = "requests_survive_an_operator_killed_at_random_against_a_real_cluster";
    let Some(path) = cluster::kubeconfig(test) else { return };
    let (moto, region, ec2, network) = support::moto::e2e_cloud(test).await;

    let client = cluster::client(&path).await;
    cluster::apply_crds(&client).await;
    let ns = TestNamespace::create(&client, &path, "orb-e2e-chaos").await;
    let env = support::moto::operator_env(moto, region, CLUSTER_ID);
    let templates: Api<MachineTemplate> = Api::namespaced(client.clone(), &ns.name);
    let requests: Api<MachineRequest> = Api::namespaced(client.clone(), &ns.name);
    let mut names = vec![];
    for example in [
        "aws/run-instances-on-demand.yaml",
        "aws/ec2-fleet-instant.yaml",
        "aws/spot-fleet-maintain.yaml",
        "aws/asg-on-demand.yaml",
    ] {
        let template = support::moto::example_template(example, &network);
        templates.create(&PostParams::default(), &template).await.unwrap();
        for i in 0..PER_HANDLER {
            let mut request: MachineRequest = cluster::example("aws/request.yaml");
            let name = format!("{}-{i}", template.name_any());
            request.metadata.name = Some(name.clone());
            request.spec.template_ref.name = template.name_any();
            request.spec.capacity = CAPACITY;
            requests.create(&PostParams::default(), &request).await.unwrap();
            names.push(name);
        }
    }

    // Kill the operator at random moments while it provisions. One process at a time, without
    // a lease: a killed leader's lease would hold its successor on standby for seconds, and
    // the kills would land on standbys.
    let no_lease = ["--leader-elect=false"];
    let started = Instant::now();
    for kill in 0..KILLS {
        let operator = Operator::start_with(&path, &ns.name, &env, &no_lease);
        let alive = Duration::from_millis(rand::random_range(300..3000));
        tokio::time::sleep(alive).await;
        drop(operator); // SIGKILL
        eprintln!("chaos: kill {} after {alive:?}", kill + 1);
    }
    let _operator = Operator::start_with(&path, &ns.name, &env, &no_lease);
    for name in &names {
        cluster::wait(&requests, name, fulfilled_with(CAPACITY as usize), 180).await.unwrap();
    }
    eprintln!("chaos: all {} requests Fulfilled {:?} after the first start", names.len(), started.elapsed());

    // Exactly the capacity in the cloud: nothing launched twice.
    for mr in requests.list(&ListParams::default()).await.unwrap() {
        let uid = mr.uid().unwrap();
        let live = support::moto::live_tagged(&ec2, &uid).await;
        let listed = mr.status.as_ref().unwrap().machines.iter().filter(|m| m.counts_as_live()).count();
        assert_eq!(listed, CAPACITY as usize, "{}: {:?}", mr.name_any(), mr.status);
        // Fleet and group members launched from the shared launch template carry no request
        // tag: at most the capacity carry it, never more.
        assert!(live <= CAPACITY as usize, "{}: {live} tagged instances for {CAPACITY}", mr.name_any());
    }

    // Delete them all; nothing tagged with the cluster id may be left.
    requests.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    for name in &names {
        cluster::wait(&requests, name, |mr: Option<&MachineRequest>| mr.is_none(), 120).await;
    }
    let left = support::moto::leftovers(moto, region, CLUSTER_ID).await;
    assert!(left.is_empty(), "left behind after deletion: {left:?}");
}
