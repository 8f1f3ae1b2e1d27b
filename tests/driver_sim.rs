//! The request driver (observe -> plan -> act -> report) against the simulated cloud, the way the
//! controller runs it: passes from a cache one write behind, passes after convergence, machines
//! the tag listing loses, and the heterogeneous split in whole machines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use kube::Resource;
use orb_operator::api::*;
use orb_operator::config::SimSettings;
use orb_operator::provider::AnyProvider;
use orb_operator::provider::sim::SimProvider;
use support::driver::{MemoryStatus, converge, edited, pass, quiet_passes, ready, request};

fn sim() -> AnyProvider {
    AnyProvider::Sim(SimProvider::new(SimSettings {
        pending_delay: "0s".into(),
        terminating_delay: "0s".into(),
        ..Default::default()
    }))
}

fn the_sim(provider: &AnyProvider) -> &SimProvider {
    match provider {
        AnyProvider::Sim(s) => s,
        AnyProvider::Aws(_) => unreachable!(),
    }
}

fn template(types: &[(&str, i32)]) -> MachineTemplate {
    ready(MachineTemplate::new(
        "workers",
        MachineTemplateSpec {
            image_id: Some("ami-0123456789abcdef0".into()),
            instance_types: types
                .iter()
                .map(|(t, w)| InstanceTypeSpec { type_: t.to_string(), weight: *w, priority: None })
                .collect(),
            ..Default::default()
        },
    ))
}

fn uid(mr: &MachineRequest) -> String {
    mr.meta().uid.clone().unwrap()
}

#[tokio::test]
async fn a_cache_one_write_behind_never_launches_twice_and_settles_quietly() {
    let (provider, template) = (sim(), template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("stale", 5), MemoryStatus::default());
    for _ in 0..6 {
        pass(&mut mr, &template, &provider, &sink, jiff::Timestamp::now(), true).await.unwrap();
    }
    assert_eq!(the_sim(&provider).live_count(&uid(&mr)), 5);
    let status = sink.current().unwrap();
    assert_eq!((status.phase, status.attempt.unwrap().number), (Some(Phase::Fulfilled), 1));

    // 5 -> 4 naming one, then a replacement at unchanged capacity, each from a stale cache too.
    let victim = status.machines[2].instance_id.clone();
    mr.spec.capacity = 4;
    mr.spec.return_machines = vec![victim.clone()];
    edited(&mut mr);
    for _ in 0..6 {
        pass(&mut mr, &template, &provider, &sink, jiff::Timestamp::now(), true).await.unwrap();
    }
    let status = sink.current().unwrap();
    assert_eq!(the_sim(&provider).live_count(&uid(&mr)), 4);
    let returned = status.machines.iter().find(|m| m.instance_id == victim).unwrap();
    assert_eq!(returned.result, Some(MachineResult::Succeed));
    let degraded = conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.status, "False", "{degraded:?}");
    assert_eq!(quiet_passes(&mut mr, &template, &provider, &sink).await, 0);

    let bad = status.machines.iter().find(|m| m.counts_as_live()).unwrap().instance_id.clone();
    mr.spec.return_machines.push(bad.clone());
    edited(&mut mr);
    for _ in 0..6 {
        pass(&mut mr, &template, &provider, &sink, jiff::Timestamp::now(), true).await.unwrap();
    }
    let status = sink.current().unwrap();
    assert_eq!(the_sim(&provider).live_count(&uid(&mr)), 4, "replaced, not added");
    assert!(status.machines.iter().all(|m| m.result != Some(MachineResult::Fail)), "{:?}", status.machines);
    assert_eq!(quiet_passes(&mut mr, &template, &provider, &sink).await, 0);
}

#[tokio::test]
async fn a_status_the_api_server_refuses_for_its_size_says_so_in_a_condition_and_launches_nothing_more() {
    let (provider, template) = (sim(), template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("huge", 20), MemoryStatus::default());
    // Room for the attempt, not for twenty machines.
    sink.refuse_larger_than(3000);
    let mut errors = vec![];
    for _ in 0..6 {
        if let Err(e) = pass(&mut mr, &template, &provider, &sink, jiff::Timestamp::now(), false).await {
            errors.push(e);
        }
    }
    assert_eq!(the_sim(&provider).live_count(&uid(&mr)), 20, "launched once, never again");
    let last = errors.last().expect("the oversized writes fail the pass");
    assert_eq!(last.reason(), "StatusTooLarge");
    let text = last.to_string();
    assert!(text.contains("20 machine(s)") && text.contains("split the request"), "{text}");
    let status = sink.current().unwrap();
    let ready = conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "StatusTooLarge"));
    assert!(ready.message.contains("request is too large"), "{ready:?}");
    assert_eq!(conditions::find(&status.conditions, "Degraded").unwrap().reason, "StatusTooLarge");

    // Once it fits (a bigger limit here; a smaller request in life), the request settles.
    sink.refuse_larger_than(usize::MAX);
    let (status, error) = converge(&mut mr, &template, &provider, &sink, 5).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!((status.phase, status.machines.len()), (Some(Phase::Fulfilled), 20));
    assert_eq!(conditions::find(&status.conditions, "Ready").unwrap().status, "True");
}

#[tokio::test]
async fn a_machine_missing_from_the_tag_listing_is_looked_up_by_id_and_kept() {
    let (provider, template) = (sim(), template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("untagged", 2), MemoryStatus::default());
    converge(&mut mr, &template, &provider, &sink, 5).await;
    let kept = sink.current().unwrap().machines[0].instance_id.clone();
    assert!(the_sim(&provider).untag(&kept));
    // Past the listing's grace period, the machine is looked up by id rather than dropped.
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(5);
    for _ in 0..3 {
        pass(&mut mr, &template, &provider, &sink, later, false).await.unwrap();
    }
    let status = sink.current().unwrap();
    let machine = status.machines.iter().find(|m| m.instance_id == kept).expect("still tracked");
    assert!(machine.message.as_deref().unwrap().contains("tracked by instance id"), "{machine:?}");
    assert_eq!(the_sim(&provider).live_count(&uid(&mr)), 2, "nothing relaunched in its place");
}

#[tokio::test]
async fn heterogeneous_capacity_overshoots_by_less_than_one_machine() {
    let mut template = template(&[("m5.xlarge", 4)]);
    template.spec.price_type = PriceType::Heterogeneous;
    template.spec.on_demand_percent = Some(10);
    let provider = sim();
    let (mut mr, sink) = (request("mixed", 6), MemoryStatus::default());
    let (status, _) = converge(&mut mr, &template, &provider, &sink, 5).await;
    assert_eq!(status.machines.len(), 2, "8 units for 6: {:?}", status.machines);
    let markets: Vec<_> = status.machines.iter().map(|m| m.capacity_type.clone().unwrap()).collect();
    assert!(markets.contains(&"on-demand".to_string()) && markets.contains(&"spot".to_string()), "{markets:?}");
    assert_eq!(quiet_passes(&mut mr, &template, &provider, &sink).await, 0, "and nothing is returned afterwards");
}
