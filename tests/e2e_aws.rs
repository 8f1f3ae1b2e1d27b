//! End to end against a real Kubernetes API server (`ORB_E2E_KUBECONFIG`) with the operator
//! binary's aws provider pointed at moto: the request lifecycle of `support::lifecycle` (fulfil
//! 3, scale to 5, return one while shrinking to 4, replace one, delete) for a RunInstances, an
//! EC2 Fleet, a Spot Fleet and an Auto Scaling group example template; then nothing of the
//! operator is left in moto (no group, no active fleet or spot fleet request, no pending or
//! running instance, no launch template).
//! Skips with a message when no cluster is given.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use orb_operator::api::MachineRequest;
use support::cluster::{self, Operator, TestNamespace};

const CLUSTER_ID: &str = "orb-e2e";

/// Runs the lifecycle with the example template `example` against a fresh moto region and
/// checks that nothing is left behind.
async fn lifecycle_with(test: &str, example: &str) {
    let Some(path) = cluster::kubeconfig(test) else { return };
    let (moto, region, _, network) = support::moto::e2e_cloud(test).await;

    let client = cluster::client(&path).await;
    cluster::apply_crds(&client).await;
    let ns = TestNamespace::create(&client, &path, "orb-e2e-aws").await;
    let _operator = Operator::start(&path, &ns.name, &support::moto::operator_env(moto, region, CLUSTER_ID));

    // The lifecycle counts machines: one capacity unit each.
    let template = support::moto::example_template(example, &network);
    let mut request: MachineRequest = cluster::example("aws/request.yaml");
    request.spec.template_ref.name = template.metadata.name.clone().unwrap();
    request.spec.capacity = 3;
    let (_uid, seen) = support::lifecycle::exercise(&client, &ns.name, template, request).await;
    assert!(seen.len() >= 6, "5 machines at the peak plus one replacement: {seen:?}");

    let left = support::moto::leftovers(moto, region, CLUSTER_ID).await;
    assert!(left.is_empty(), "left behind after deletion: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_request_lifecycle_against_a_real_cluster_with_moto() {
    lifecycle_with("aws_request_lifecycle_against_a_real_cluster_with_moto", "aws/run-instances-on-demand.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_fleet_lifecycle_against_a_real_cluster_with_moto() {
    lifecycle_with("ec2_fleet_lifecycle_against_a_real_cluster_with_moto", "aws/ec2-fleet-instant.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_fleet_lifecycle_against_a_real_cluster_with_moto() {
    lifecycle_with("spot_fleet_lifecycle_against_a_real_cluster_with_moto", "aws/spot-fleet-maintain.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asg_lifecycle_against_a_real_cluster_with_moto() {
    lifecycle_with("asg_lifecycle_against_a_real_cluster_with_moto", "aws/asg-on-demand.yaml").await;
}

/// The operator binary reading an interruption queue (moto's SQS): a spot interruption warning
/// for one of a request's machines launches its replacement while the warned one still runs
/// (capacity + 1 at the peak, a Warning Event), and after EC2 takes it the request holds exactly
/// its capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_warning_is_replaced_before_the_loss_against_a_real_cluster_with_moto() {
    use kube::api::{Api, ListParams, PostParams};
    use kube::runtime::wait::conditions;
    let test = "a_spot_warning_is_replaced_before_the_loss_against_a_real_cluster_with_moto";
    let Some(path) = cluster::kubeconfig(test) else { return };
    let (moto, region, ec2, network) = support::moto::e2e_cloud(test).await;
    let (sqs, url) = support::eventbridge::queue(moto, region, "orb-operator-interruptions").await;

    let client = cluster::client(&path).await;
    cluster::apply_crds(&client).await;
    let ns = TestNamespace::create(&client, &path, "orb-e2e-spot").await;
    let mut env = support::moto::operator_env(moto, region, CLUSTER_ID).to_vec();
    env.push(("ORB_PROVIDERS__DEFAULT__INTERRUPTION_QUEUE", url.as_str()));
    let _operator = Operator::start(&path, &ns.name, &env);

    let template = support::moto::example_template("aws/run-instances-spot.yaml", &network);
    let mut request: MachineRequest = cluster::example("aws/request.yaml");
    request.spec.template_ref.name = template.metadata.name.clone().unwrap();
    request.spec.capacity = 3;
    let name = request.metadata.name.clone().unwrap();
    let templates: Api<orb_operator::api::MachineTemplate> = Api::namespaced(client.clone(), &ns.name);
    let requests: Api<MachineRequest> = Api::namespaced(client.clone(), &ns.name);
    templates.create(&PostParams::default(), &template).await.unwrap();
    requests.create(&PostParams::default(), &request).await.unwrap();
    let mr = cluster::wait(&requests, &name, support::lifecycle::fulfilled_with(3), 60).await.unwrap();
    let first = support::lifecycle::running(&mr);
    let victim = first.iter().next().unwrap().clone();

    support::eventbridge::send(&sqs, &url, &support::eventbridge::spot_warning(&victim, region)).await;
    let (warned, victim_) = (victim.clone(), victim.clone());
    let replaced = move |mr: Option<&MachineRequest>| {
        mr.and_then(|mr| mr.status.as_ref()).is_some_and(|s| {
            let running: Vec<_> = s.machines.iter().filter(|m| m.state == "running").collect();
            running.len() == 4
                && running.iter().any(|m| m.instance_id == warned && m.notice.as_ref().is_some_and(|n| n.replaced))
        })
    };
    let mr = cluster::wait(&requests, &name, replaced, 60).await.unwrap();
    let status = mr.status.as_ref().unwrap();
    assert_eq!((status.fulfilled_capacity, status.phase), (3, Some(orb_operator::api::Phase::Fulfilled)), "{status:?}");
    let uid = mr.metadata.uid.clone().unwrap();
    assert_eq!(support::moto::live_tagged(&ec2, &uid).await, 4, "capacity + 1 at the peak");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns.name);
    let reasons: Vec<String> =
        events.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|e| e.reason).collect();
    assert!(reasons.iter().any(|r| r == "SpotInterruption"), "{reasons:?}");

    // EC2 takes the warned machine: exactly capacity from then on.
    ec2.terminate_instances().instance_ids(&victim).send().await.unwrap();
    support::eventbridge::send(&sqs, &url, &support::eventbridge::state_change(&victim, region, "shutting-down")).await;
    let gone = move |mr: Option<&MachineRequest>| {
        mr.and_then(|mr| mr.status.as_ref()).is_some_and(|s| {
            s.machines.iter().any(|m| m.instance_id == victim_ && m.state != "running")
                && s.machines.iter().filter(|m| m.state == "running").count() == 3
        })
    };
    let mr = cluster::wait(&requests, &name, gone, 30).await.unwrap();
    assert_eq!(mr.status.as_ref().unwrap().phase, Some(orb_operator::api::Phase::Fulfilled));
    assert_eq!(support::moto::live_tagged(&ec2, &uid).await, 3, "exactly capacity after the loss");

    requests.delete(&name, &Default::default()).await.unwrap();
    cluster::wait(&requests, &name, conditions::is_deleted(&uid), 60).await;
    let left = support::moto::leftovers(moto, region, CLUSTER_ID).await;
    assert!(left.is_empty(), "left behind after deletion: {left:?}");
}
