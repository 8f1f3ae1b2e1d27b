//! The Auto Scaling group handler against moto, through the fault proxy, driven by the request
//! driver as the controller runs it. Each test has its own region; calls are counted at the
//! proxy and the group is read back from moto.
//!
//! moto gaps worked around here: it launches the launch template's instance type whatever the
//! overrides say (so these templates use weight 1), keeps no scaling activities, overwrites a
//! group created twice under one name (AWS answers `AlreadyExists`: the proxy answers so where a
//! test needs it), and answers TerminateInstanceInAutoScalingGroup for an unknown id with HTTP
//! 500 (the handler only sends it for members).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use orb_operator::api::*;
use orb_operator::provider::{Holdings, Provider};
use support::aws::{Aws, CLUSTER, aws, aws_sweeping_at_once};
use support::driver::{MemoryStatus, converge, edited, pass, quiet_passes, ready, request};
use support::fault_proxy::Fault;

fn asg_template(aws: &Aws, price_type: PriceType) -> MachineTemplate {
    let mut spec = aws.template(&[("m5.large", 1), ("m5a.large", 1)]);
    spec.api = Api::Asg;
    spec.price_type = price_type;
    ready(MachineTemplate::new("workers", spec))
}

fn live_ids(status: &MachineRequestStatus) -> Vec<String> {
    status.machines.iter().filter(|m| m.counts_as_live()).map(|m| m.instance_id.clone()).collect()
}

async fn autoscaling(aws: &Aws) -> aws_sdk_autoscaling::Client {
    aws_sdk_autoscaling::Client::new(&support::moto::sdk(aws.moto, aws.region).await)
}

async fn groups(client: &aws_sdk_autoscaling::Client) -> Vec<aws_sdk_autoscaling::types::AutoScalingGroup> {
    client.describe_auto_scaling_groups().send().await.unwrap().auto_scaling_groups().to_vec()
}

async fn release(aws: &Aws, mr: &MachineRequest, sink: &MemoryStatus) {
    let status = sink.current().unwrap();
    let known: Vec<String> = status.machines.iter().map(|m| m.instance_id.clone()).collect();
    let holdings =
        Holdings { known: &known, resources: &status.resources, launch_templates_in_use: &[], last_attempt: None };
    let owner = orb_operator::controller::request::owner_of(mr).unwrap();
    assert_eq!(
        support::aws::release(&aws.provider, &owner, holdings).await.unwrap(),
        orb_operator::provider::Released::Done
    );
}

#[tokio::test]
async fn the_group_is_created_once_as_specified_and_adopted_by_name() {
    let Some(aws) = aws("the_group_is_created_once_as_specified_and_adopted_by_name").await else { return };
    let client = autoscaling(&aws).await;
    let template = asg_template(&aws, PriceType::Heterogeneous);
    let (mut mr, sink) = (request("grp", 3), MemoryStatus::default());
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(status.phase, Some(Phase::Fulfilled), "{:?}", status.conditions);
    assert_eq!(live_ids(&status).len(), 3);
    assert_eq!(aws.proxy.calls("CreateAutoScalingGroup").len(), 1);
    assert_eq!(aws.proxy.calls("CreateLaunchTemplate").len(), 1, "one launch template per template generation");
    assert_eq!(aws.proxy.calls("CreateTags").len(), 0, "tags propagate at launch");

    let all = groups(&client).await;
    assert_eq!(all.len(), 1);
    let group = &all[0];
    let name = format!("orb-{CLUSTER}-{}", mr.metadata.uid.as_deref().unwrap());
    assert_eq!(group.auto_scaling_group_name(), Some(name.as_str()), "named from the request");
    assert_eq!(status.resources.asg_name.as_deref(), Some(name.as_str()));
    assert_eq!((group.min_size(), group.desired_capacity()), (Some(0), Some(3)));
    assert!(group.max_size().unwrap() >= 3);
    assert_eq!(group.vpc_zone_identifier(), Some(aws.subnets.join(",").as_str()));
    assert_eq!(group.new_instances_protected_from_scale_in(), Some(true));
    let policy = group.mixed_instances_policy().unwrap();
    let overrides: Vec<_> = policy
        .launch_template()
        .unwrap()
        .overrides()
        .iter()
        .map(|o| (o.instance_type().unwrap(), o.weighted_capacity().unwrap()))
        .collect();
    assert_eq!(overrides, [("m5.large", "1"), ("m5a.large", "1")]);
    let tag_keys: Vec<_> =
        group.tags().iter().filter(|t| t.propagate_at_launch() == Some(true)).map(|t| t.key().unwrap()).collect();
    assert!(tag_keys.contains(&"orb.dev/request-uid") && tag_keys.contains(&"team"), "{tag_keys:?}");
    let tagged = aws.live_of(&mr).await;
    assert_eq!(tagged.len(), 3, "members carry the request's uid");
    assert_eq!(quiet_passes(&mut mr, &template, &aws.provider, &sink).await, 0, "a settled request writes nothing");
    assert_eq!(aws.proxy.calls("CreateAutoScalingGroup").len(), 1, "later reconciles never create again");

    // A create whose answer was lost is replayed; AWS answers AlreadyExists and the group is
    // adopted by name, never doubled.
    // (The SDK's own retry sends the create again; AWS answers it AlreadyExists.)
    let (mut other, other_sink) = (request("lost", 2), MemoryStatus::default());
    let creates = aws.proxy.calls("CreateAutoScalingGroup").len();
    aws.proxy.inject("CreateAutoScalingGroup", None, 1, Fault::Lost);
    let already = Fault::Error {
        status: 400,
        code: "AlreadyExists".into(),
        message: "AutoScalingGroup by this name already exists (as AWS answers)".into(),
    };
    aws.proxy.inject("CreateAutoScalingGroup", None, 1, already);
    let (status, error) = converge(&mut other, &template, &aws.provider, &other_sink, 6).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(status.phase, Some(Phase::Fulfilled), "{:?}", status.conditions);
    assert_eq!(live_ids(&status).len(), 2);
    assert_eq!(aws.proxy.calls("CreateAutoScalingGroup").len() - creates, 2, "the lost create and its replay");
    assert_eq!(groups(&client).await.len(), 2, "one group per request, the lost one adopted");
    release(&aws, &mr, &sink).await;
    release(&aws, &other, &other_sink).await;
}

#[tokio::test]
async fn scale_up_down_and_return_exactly_the_named_machine() {
    let Some(aws) = aws("scale_up_down_and_return_exactly_the_named_machine").await else { return };
    let client = autoscaling(&aws).await;
    let template = asg_template(&aws, PriceType::OnDemand);
    let (mut mr, sink) = (request("scaled", 3), MemoryStatus::default());
    converge(&mut mr, &template, &aws.provider, &sink, 6).await;

    // Throttled Auto Scaling calls are retried by the SDK.
    aws.proxy.inject("UpdateAutoScalingGroup", None, 2, Fault::throttle());
    mr.spec.capacity = 5;
    edited(&mut mr);
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    assert_eq!(live_ids(&status).len(), 5);
    assert_eq!(groups(&client).await[0].desired_capacity(), Some(5));
    assert!(aws.proxy.calls("UpdateAutoScalingGroup").len() >= 3, "two throttled, then through");
    let five = live_ids(&status);

    // 5 -> 4 naming one: exactly it goes, the desired capacity drops by its weight.
    let victim = five[2].clone();
    mr.spec.capacity = 4;
    mr.spec.return_machines = vec![victim.clone()];
    edited(&mut mr);
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    assert!(error.is_none(), "{error:?}");
    let four = live_ids(&status);
    let expected: Vec<String> = five.iter().filter(|id| **id != victim).cloned().collect();
    assert_eq!(four, expected, "exactly the named machine left");
    assert_eq!(groups(&client).await[0].desired_capacity(), Some(4));
    let terminations = aws.proxy.calls("TerminateInstanceInAutoScalingGroup");
    assert_eq!(terminations.len(), 1);
    assert!(terminations[0].contains(&victim));
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    assert!(status.machines.iter().all(|m| m.result != Some(MachineResult::Fail)), "a return is not a loss");

    // Naming one at unchanged capacity replaces it.
    let bad = four[0].clone();
    mr.spec.return_machines = vec![victim.clone(), bad.clone()];
    edited(&mut mr);
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 8).await;
    assert!(error.is_none(), "{error:?}");
    let after = live_ids(&status);
    assert_eq!(after.len(), 4, "{after:?}");
    assert!(!after.contains(&bad));
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    assert_eq!(groups(&client).await[0].desired_capacity(), Some(4));
    assert_eq!(aws.proxy.calls("CreateAutoScalingGroup").len(), 1, "one group throughout");

    release(&aws, &mr, &sink).await;
    assert!(groups(&client).await.is_empty(), "no group left");
    let left = support::moto::leftovers(aws.moto, aws.region, CLUSTER).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    let lt = status.resources.launch_template_id.clone().unwrap();
    let found = aws.ec2.describe_launch_templates().launch_template_ids(&lt).send().await.unwrap();
    assert!(found.launch_templates().is_empty(), "the operator's launch template is deleted");
}

#[tokio::test]
async fn failed_scaling_activities_are_reported_and_the_shortfall_is_pending() {
    let Some(aws) = aws("failed_scaling_activities_are_reported_and_the_shortfall_is_pending").await else { return };
    let template = asg_template(&aws, PriceType::Spot);
    let (mut mr, sink) = (request("short", 3), MemoryStatus::default());
    let (status, _) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    let name = status.resources.asg_name.clone().unwrap();
    let members: String = live_ids(&status)
        .iter()
        .map(|id| format!("<member><InstanceId>{id}</InstanceId><LifecycleState>InService</LifecycleState><HealthStatus>Healthy</HealthStatus><ProtectedFromScaleIn>true</ProtectedFromScaleIn><WeightedCapacity>1</WeightedCapacity></member>"))
        .collect();

    // AWS: the group wants 4 units, holds its 3 members, and its last activity failed.
    mr.spec.capacity = 4;
    edited(&mut mr);
    let group = format!(
        r#"<DescribeAutoScalingGroupsResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><DescribeAutoScalingGroupsResult><AutoScalingGroups><member><AutoScalingGroupName>{name}</AutoScalingGroupName><MinSize>0</MinSize><MaxSize>5</MaxSize><DesiredCapacity>4</DesiredCapacity><DefaultCooldown>300</DefaultCooldown><HealthCheckType>EC2</HealthCheckType><CreatedTime>2026-11-26T17:00:00Z</CreatedTime><Instances>{members}</Instances></member></AutoScalingGroups></DescribeAutoScalingGroupsResult></DescribeAutoScalingGroupsResponse>"#
    );
    let activities = format!(
        r#"<DescribeScalingActivitiesResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><DescribeScalingActivitiesResult><Activities><member><ActivityId>a-1</ActivityId><AutoScalingGroupName>{name}</AutoScalingGroupName><Cause>an instance was started in response to a difference between desired and actual capacity</Cause><StartTime>2026-11-26T17:00:00Z</StartTime><StatusCode>Failed</StatusCode><StatusMessage>We currently do not have sufficient m5.large capacity in the Availability Zone you requested (injected).</StatusMessage><Progress>100</Progress></member></Activities></DescribeScalingActivitiesResult></DescribeScalingActivitiesResponse>"#
    );
    // The poller sees the group short in its next cycle (every cycle until the faults are
    // cleared), reads the activities once, and wakes the request.
    let mut changes = aws.changes();
    aws.proxy.inject("DescribeAutoScalingGroups", None, usize::MAX, Fault::Reply(group));
    aws.proxy.inject("DescribeScalingActivities", None, 1, Fault::Reply(activities));
    support::aws::changed(&mut changes, &mr).await;
    let (status, _) = pass(&mut mr, &template, &aws.provider, &sink, jiff::Timestamp::now(), false).await.unwrap();
    aws.proxy.clear("DescribeAutoScalingGroups");
    assert_eq!(aws.proxy.calls("DescribeScalingActivities").len(), 1, "read once while the group holds steady");
    let failure = status.failures.iter().find(|f| f.code == "ScalingActivityFailed").expect("recorded");
    assert!(failure.message.contains("sufficient m5.large capacity"), "{failure:?}");
    assert!(failure.message.contains("difference between desired and actual"), "the cause is kept: {failure:?}");
    assert_eq!(status.pending_capacity, 1, "what the group still works on is pending, not launched twice");
    assert_eq!(status.phase, Some(Phase::Provisioning));
    assert_eq!(aws.proxy.calls("UpdateAutoScalingGroup").len(), 0, "nothing more asked while the group works");
    release(&aws, &mr, &sink).await;
}

#[tokio::test]
async fn an_orphaned_group_marks_what_it_launches_later_and_keeps_its_launch_template() {
    let test = "an_orphaned_group_marks_what_it_launches_later_and_keeps_its_launch_template";
    let Some(aws) = aws_sweeping_at_once(test).await else { return };
    let client = autoscaling(&aws).await;
    let template = asg_template(&aws, PriceType::OnDemand);
    let (mut kept, kept_sink) = (request("kept", 1), MemoryStatus::default());
    converge(&mut kept, &template, &aws.provider, &kept_sink, 6).await;
    let status = kept_sink.current().unwrap();
    let (group, lt) =
        (status.resources.asg_name.clone().unwrap(), status.resources.launch_template_id.clone().unwrap());
    let known = live_ids(&status);
    let holdings =
        Holdings { known: &known, resources: &status.resources, launch_templates_in_use: &[], last_attempt: None };
    aws.provider.orphan(&orb_operator::controller::request::owner_of(&kept).unwrap(), holdings).await.unwrap();
    // The user scales the group they kept: what it launches now is theirs as well.
    client.set_desired_capacity().auto_scaling_group_name(&group).desired_capacity(2).send().await.unwrap();
    let instances = aws.live_of(&kept).await;
    assert_eq!(instances.len(), 2);
    for i in &instances {
        assert!(i.tags().iter().any(|t| t.key() == Some("orb.dev/orphaned")), "not marked: {:?}", i.instance_id());
    }
    // Another request of the template comes and goes, released by a restarted operator (nothing
    // in memory, nothing of the deleted request in the cache): the launch template the kept
    // group launches from stays.
    let (mut other, other_sink) = (request("other", 1), MemoryStatus::default());
    converge(&mut other, &template, &aws.provider, &other_sink, 6).await;
    let other_status = other_sink.current().unwrap();
    assert_eq!(other_status.resources.launch_template_id.as_ref(), Some(&lt), "one launch template per template");
    let other_known = live_ids(&other_status);
    let holdings = Holdings {
        known: &other_known,
        resources: &other_status.resources,
        launch_templates_in_use: &[],
        last_attempt: None,
    };
    let owner = orb_operator::controller::request::owner_of(&other).unwrap();
    let restarted = aws.restarted().await;
    assert_eq!(
        support::aws::release(&restarted, &owner, holdings).await.unwrap(),
        orb_operator::provider::Released::Done
    );
    let found = aws.ec2.describe_launch_templates().launch_template_ids(&lt).send().await.unwrap();
    assert_eq!(found.launch_templates().len(), 1, "the kept group's launch template was deleted");
    // The sweep takes none of it for a leak.
    let leaks = aws.provider.sweep(&orb_operator::provider::Live::default(), std::time::Instant::now()).await.unwrap();
    assert!(
        leaks.iter().all(|l| l.id != lt && !instances.iter().any(|i| i.instance_id() == Some(l.id.as_str()))),
        "{leaks:?}"
    );
    assert_eq!(aws.live_of(&kept).await.len(), 2);
}

#[tokio::test]
async fn a_group_adopted_after_a_lost_create_has_its_launch_template_recorded_and_deleted_at_release() {
    let test = "a_group_adopted_after_a_lost_create_has_its_launch_template_recorded_and_deleted_at_release";
    let Some(aws) = aws(test).await else { return };
    let template = asg_template(&aws, PriceType::OnDemand);
    let (mut mr, sink) = (request("lost", 2), MemoryStatus::default());
    // The create and the SDK's two retries all lose their answers: the group exists, the status
    // records neither it nor its launch template. Its members carry the request's tags, so
    // the next pass sees the capacity met and closes the attempt without a replay; the group
    // is then adopted as found.
    aws.proxy.inject("CreateAutoScalingGroup", None, 3, Fault::Lost);
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 8).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(status.phase, Some(Phase::Fulfilled), "{:?}", status.conditions);
    assert_eq!(aws.proxy.calls("CreateAutoScalingGroup").len(), 3, "closed without a replay");
    assert!(status.resources.asg_name.is_some(), "the group is adopted: {:?}", status.resources);
    let made = aws.launch_templates().await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(status.resources.launch_template_id.as_ref(), made.first(), "adopted with its launch template");

    release(&aws, &mr, &sink).await;
    assert!(groups(&autoscaling(&aws).await).await.is_empty());
    let left = aws.launch_templates().await;
    assert!(left.is_empty(), "the release deletes the launch template the group launched from: {left:?}");
}
