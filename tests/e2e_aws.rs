//! End to end against a real Kubernetes API server (`ORB_E2E_KUBECONFIG`) with the operator
//! binary's aws provider pointed at moto: the request lifecycle of `support::lifecycle` with the
//! RunInstances example template, then no instance carrying the request's uid is pending or
//! running in moto. Skips with a message when no cluster is given.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use aws_sdk_ec2::types::Filter;
use orb_operator::api::{MachineRequest, MachineTemplate};
use support::cluster::{self, Operator, TestNamespace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_request_lifecycle_against_a_real_cluster_with_moto() {
    let Some(path) = cluster::kubeconfig("aws_request_lifecycle_against_a_real_cluster_with_moto") else { return };
    let moto = support::moto::server("aws_request_lifecycle_against_a_real_cluster_with_moto")
        .expect("moto is required with a cluster");
    let region = support::moto::region();
    let ec2 = support::moto::ec2(moto, region);
    let network = support::moto::network(&ec2).await;

    let client = cluster::client(&path).await;
    cluster::apply_crds(&client).await;
    let ns = TestNamespace::create(&client, &path, "orb-e2e-aws").await;
    let _operator = Operator::start(
        &path,
        &ns.name,
        &[
            ("ORB_PROVIDERS__DEFAULT__TYPE", "aws"),
            ("ORB_PROVIDERS__DEFAULT__REGION", region),
            ("ORB_PROVIDERS__DEFAULT__ENDPOINT_URL", &moto.endpoint),
            ("ORB_CLUSTER_ID", "orb-e2e"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );

    let mut template: MachineTemplate = cluster::example("aws/run-instances-on-demand.yaml");
    template.spec.image_id = Some(network.image);
    template.spec.subnet_ids = network.subnets;
    template.spec.security_group_ids = vec![network.group];
    // The lifecycle counts machines: one capacity unit each.
    template.spec.instance_types.truncate(1);
    template.spec.instance_types[0].weight = 1;
    let mut request: MachineRequest = cluster::example("aws/request.yaml");
    request.spec.template_ref.name = template.metadata.name.clone().unwrap();
    request.spec.capacity = 3;
    let (uid, seen) = support::lifecycle::exercise(&client, &ns.name, template, request).await;
    assert!(seen.len() >= 6, "5 machines at the peak plus one replacement: {seen:?}");

    let filter = Filter::builder().name("tag:orb.dev/request-uid").values(&uid).build();
    let left = ec2.describe_instances().filters(filter).send().await.unwrap();
    let live: Vec<_> = left
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| matches!(i.state().and_then(|s| s.name()).map(|n| n.as_str()), Some("pending" | "running")))
        .map(|i| i.instance_id().unwrap().to_string())
        .collect();
    assert!(live.is_empty(), "instances left running after deletion: {live:?}");
}
