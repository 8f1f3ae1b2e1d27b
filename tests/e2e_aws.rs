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
