//! The request lifecycle every end-to-end variant proves against a real API server: fulfil 3,
//! scale 3 -> 5 by the scale subresource, 5 -> 4 naming the machine that goes, replace one
//! machine at unchanged capacity, delete. Conditions are waited on; nothing sleeps.

use super::cluster;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::conditions;
use kube::{Api, Client, ResourceExt};
use orb_operator::api::{MachineRequest, MachineTemplate, Phase};
use serde_json::json;
use std::collections::BTreeSet;

pub fn running(mr: &MachineRequest) -> BTreeSet<String> {
    mr.status
        .iter()
        .flat_map(|s| s.machines.iter())
        .filter(|m| m.state == "running" && !m.returning)
        .map(|m| m.instance_id.clone())
        .collect()
}

/// Fulfilled, at the current generation, with exactly `n` running machines.
pub fn fulfilled_with(n: usize) -> impl Fn(Option<&MachineRequest>) -> bool {
    move |mr| {
        mr.is_some_and(|mr| {
            let s = mr.status.as_ref();
            s.is_some_and(|s| s.phase == Some(Phase::Fulfilled) && s.observed_generation == mr.metadata.generation)
                && running(mr).len() == n
        })
    }
}

/// Runs the lifecycle in `namespace`; returns the request's uid and every instance id it had.
pub async fn exercise(
    client: &Client,
    namespace: &str,
    template: MachineTemplate,
    request: MachineRequest,
) -> (String, BTreeSet<String>) {
    let templates: Api<MachineTemplate> = Api::namespaced(client.clone(), namespace);
    let requests: Api<MachineRequest> = Api::namespaced(client.clone(), namespace);
    templates.create(&PostParams::default(), &template).await.unwrap();
    let name = request.name_any();
    let started = std::time::Instant::now();
    requests.create(&PostParams::default(), &request).await.unwrap();

    let mr = cluster::wait(&requests, &name, fulfilled_with(3), 60).await.unwrap();
    eprintln!("fulfilled 3 in {:?}", started.elapsed());
    assert_eq!(mr.status.as_ref().unwrap().fulfilled_capacity, 3);
    assert!(mr.finalizers().contains(&"orb.dev/cleanup".to_string()));
    let mut seen = running(&mr);

    let pp = PatchParams::default();
    requests.patch_scale(&name, &pp, &Patch::Merge(json!({"spec": {"replicas": 5}}))).await.unwrap();
    let mr = cluster::wait(&requests, &name, fulfilled_with(5), 60).await.unwrap();
    let five = running(&mr);
    seen.extend(five.iter().cloned());
    assert_eq!(
        requests.get_scale(&name).await.unwrap().status.unwrap().replicas,
        5,
        "scale status = fulfilled capacity"
    );

    let victim = five.iter().next().unwrap().clone();
    requests
        .patch(&name, &pp, &Patch::Merge(json!({"spec": {"capacity": 4, "returnMachines": [victim]}})))
        .await
        .unwrap();
    let mr = cluster::wait(&requests, &name, fulfilled_with(4), 60).await.unwrap();
    let four = running(&mr);
    let mut expected = five.clone();
    expected.remove(&victim);
    assert_eq!(four, expected, "exactly the named machine left");
    // A deliberate return is not a loss: what `kubectl describe mr` shows.
    let status = mr.status.as_ref().unwrap();
    let degraded = orb_operator::api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.status, "False", "{degraded:?}");
    for m in &status.machines {
        assert_ne!(m.result, Some(orb_operator::api::MachineResult::Fail), "{m:?}");
        assert!(!m.message.as_deref().unwrap_or_default().contains("outside the operator"), "{m:?}");
    }

    let bad_host = four.iter().next().unwrap().clone();
    requests.patch(&name, &pp, &Patch::Merge(json!({"spec": {"returnMachines": [victim, bad_host]}}))).await.unwrap();
    let replaced =
        |mr: Option<&MachineRequest>| fulfilled_with(4)(mr) && mr.is_some_and(|mr| !running(mr).contains(&bad_host));
    let mr = cluster::wait(&requests, &name, replaced, 60).await.unwrap();
    let after = running(&mr);
    assert_eq!(after.difference(&four).count(), 1, "one new machine replaced the returned one");
    seen.extend(after);

    let uid = mr.uid().unwrap();
    requests.delete(&name, &Default::default()).await.unwrap();
    cluster::wait(&requests, &name, conditions::is_deleted(&uid), 60).await;
    (uid, seen)
}
