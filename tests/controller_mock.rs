//! The MachineRequest reconciler against a scripted API server (tower-test): every HTTP request
//! the reconciler makes is checked in order — finalizer first, then the attempt written to
//! status before the launch, then the launch result, then the Event; and on deletion the
//! release followed by the finalizer's removal. The simulated provider is the cloud.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use orb_operator::api::*;
use orb_operator::controller::{Context, FINALIZER, request};
use orb_operator::provider::AnyProvider;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::objects::{EVENTS_PATH, MR_PATH, NS, UID, context_with, ready_template, request_object};
use tower_test::mock::{Handle, SendResponse};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn context(client: Client) -> Arc<Context> {
    context_with(client, ready_template())
}

fn sim(ctx: &Context) -> &orb_operator::provider::sim::SimProvider {
    sim_named(ctx, "default")
}

fn sim_named<'a>(ctx: &'a Context, name: &str) -> &'a orb_operator::provider::sim::SimProvider {
    match ctx.registry.get(name) {
        Some(AnyProvider::Sim(s)) => s,
        _ => panic!("no sim provider"),
    }
}

/// Launches `units` machines for the test request straight through provider `name`.
async fn launch_in(ctx: &Context, name: &str, units: u32) -> Vec<orb_operator::provider::ObservedMachine> {
    launch_with_token(ctx, name, units, "fixture").await
}

/// `launch_in` with client token `token` (the simulated cloud answers a repeated token with the
/// first launch).
async fn launch_with_token(
    ctx: &Context,
    name: &str,
    units: u32,
    token: &str,
) -> Vec<orb_operator::provider::ObservedMachine> {
    let owner = request::owner_of(&request_object(true, false)).unwrap();
    let template = ready_template();
    let launch = orb_operator::provider::ProvisionRequest {
        owner: &owner,
        template: &template.spec,
        mix: orb_operator::provider::MarketMix { on_demand: units, spot: 0 },
        client_token: token,
        resources: &Default::default(),
        target_units: units,
        replay: false,
        left_out: &[],
    };
    orb_operator::provider::Provider::provision(sim_named(ctx, name), &launch).await.unwrap().launched
}

/// Waits for the next request, checks its method and path, and returns its JSON body.
async fn expect(handle: &mut ApiHandle, method: Method, path: &str) -> (Value, SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
        .expect("service not called");
    assert_eq!(request.method(), method, "unexpected method for {}", request.uri());
    assert_eq!(request.uri().path(), path);
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (body, send)
}

fn not_found(send: SendResponse<Response<Body>>, name: &str) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
        "message": format!("machinetemplates.orb.dev \"{name}\" not found")});
    send.send_response(Response::builder().status(404).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap());
}

fn respond(send: SendResponse<Response<Body>>, object: &impl serde::Serialize) {
    send.send_response(Response::builder().body(Body::from(serde_json::to_vec(object).unwrap())).unwrap());
}

/// The next calls release a request whose release finishes at once: the `Released` Event, then
/// the finalizer's removal (no `Deleting` write: the request goes at once); answered with `echo`.
async fn expect_released(handle: &mut ApiHandle, echo: &MachineRequest) {
    let (event, send) = expect(handle, Method::POST, EVENTS_PATH).await;
    assert_eq!(event["reason"], "Released");
    respond(send, &event);
    expect_finalizer_removed(handle, echo).await;
}

/// The next call removes the finalizer; answered with `echo`.
async fn expect_finalizer_removed(handle: &mut ApiHandle, echo: &MachineRequest) {
    let (patch, send) = expect(handle, Method::PATCH, MR_PATH).await;
    let ops = patch.as_array().unwrap();
    assert!(ops.iter().any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"), "{patch}");
    respond(send, echo);
}

#[tokio::test]
async fn a_new_request_first_gets_its_finalizer_and_nothing_else() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    let mr = request_object(false, false);
    let server = tokio::spawn(async move {
        let (patch, send) = expect(&mut handle, Method::PATCH, MR_PATH).await;
        let ops = patch.as_array().expect("a JSON patch");
        assert!(ops.iter().any(|op| op["op"] == "add" && op["value"] == json!([FINALIZER])), "{patch}");
        respond(send, &request_object(true, false));
        handle
    });
    let action = request::reconcile(Arc::new(DeserializeGuard(Ok(mr))), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    let mut handle = server.await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await.is_err(), "no further calls");
    assert_eq!(sim(&ctx).live_count(UID), 0, "nothing is launched before the finalizer is in place");
}

#[tokio::test]
async fn a_finalized_request_records_its_attempt_then_launches_then_reports() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    let mr = request_object(true, false);
    let echo = mr.clone();
    let server = tokio::spawn(async move {
        // 1. The attempt and its client token are written before the cloud is called.
        let (before, send) = expect(&mut handle, Method::PATCH, &format!("{MR_PATH}/status")).await;
        assert_eq!(before["status"]["attempt"]["number"], 1);
        assert_eq!(before["status"]["attempt"]["completed"], false);
        assert!(before["status"]["attempt"]["clientToken"].as_str().unwrap().starts_with("orb-1-"));
        assert_eq!(before["status"]["machines"], json!([]));
        assert_eq!(before["status"]["phase"], "Provisioning");
        respond(send, &echo);
        // 2. The launch result.
        let (after, send) = expect(&mut handle, Method::PATCH, &format!("{MR_PATH}/status")).await;
        assert_eq!(after["status"]["attempt"]["completed"], true);
        let machines = after["status"]["machines"].as_array().unwrap();
        assert_eq!(machines.len(), 3);
        let mut ids: Vec<&str> = machines.iter().map(|m| m["instanceId"].as_str().unwrap()).collect();
        assert!(ids.iter().all(|id| id.len() == 19 && id.starts_with("i-")), "{ids:?}");
        let sorted = {
            let mut s = ids.clone();
            s.sort();
            s
        };
        assert_eq!(ids, sorted, "machines are sorted");
        ids.dedup();
        assert_eq!(ids.len(), 3, "ids are unique");
        // The simulator's pending delay is zero here, so the machines already run.
        assert_eq!(after["status"]["phase"], "Fulfilled");
        assert_eq!(after["status"]["fulfilledCapacity"], 3);
        respond(send, &echo);
        // 3. An Event for the phase transition.
        let (event, send) = expect(&mut handle, Method::POST, EVENTS_PATH).await;
        assert_eq!(event["reason"], "Fulfilled");
        assert_eq!(event["regarding"]["name"], "batch");
        respond(send, &event);
        handle
    });
    let action = request::reconcile(Arc::new(DeserializeGuard(Ok(mr))), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(ctx.timing.soon));
    server.await.unwrap();
    assert_eq!(sim(&ctx).live_count(UID), 3);
}

#[tokio::test]
async fn deletion_releases_every_machine_then_removes_the_finalizer() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    // Machines exist in the cloud for this request.
    launch_in(&ctx, "default", 2).await;
    assert_eq!(sim(&ctx).live_count(UID), 2);

    let mut mr = request_object(true, true);
    mr.status = Some(MachineRequestStatus {
        provider: Some("default".into()),
        phase: Some(Phase::Fulfilled),
        ..Default::default()
    });
    let echo = mr.clone();
    let server = tokio::spawn(async move {
        expect_released(&mut handle, &echo).await;
    });
    let action = request::reconcile(Arc::new(DeserializeGuard(Ok(mr))), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    server.await.unwrap();
    assert_eq!(sim(&ctx).live_count(UID), 0, "every machine was released");
}

#[tokio::test]
async fn a_released_request_the_watch_brings_back_is_not_released_again() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    launch_in(&ctx, "default", 2).await;
    let mut mr = request_object(true, true);
    mr.status = Some(MachineRequestStatus {
        provider: Some("default".into()),
        phase: Some(Phase::Fulfilled),
        ..Default::default()
    });
    let echo = mr.clone();
    let server = tokio::spawn(async move {
        expect_released(&mut handle, &echo).await;
        // The same object again, as a watch event queued before the finalizer's removal
        // delivers it: only the finalizer's removal is sent again — no Deleting write, no
        // second "Released" Event.
        expect_finalizer_removed(&mut handle, &echo).await;
    });
    let object = Arc::new(DeserializeGuard(Ok(mr)));
    assert_eq!(request::reconcile(object.clone(), ctx.clone()).await.unwrap(), Action::await_change());
    assert_eq!(sim(&ctx).live_count(UID), 0);
    // A machine tagged with the request appears after its release: a second release would
    // take it (the leak sweep's job, not a release's), so its survival shows none was made.
    launch_with_token(&ctx, "default", 1, "after-release").await;
    assert_eq!(sim(&ctx).live_count(UID), 1);
    assert_eq!(request::reconcile(object, ctx.clone()).await.unwrap(), Action::await_change());
    server.await.unwrap();
    assert_eq!(sim(&ctx).live_count(UID), 1, "no second release");
}

#[tokio::test]
async fn a_request_whose_template_is_missing_waits_and_launches_nothing() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    let mut mr = request_object(true, false);
    mr.spec.template_ref.name = "nope".into();
    let echo = mr.clone();
    let server = tokio::spawn(async move {
        // Not in the cache: the API server is asked before concluding it is missing.
        let (_, send) =
            expect(&mut handle, Method::GET, "/apis/orb.dev/v1alpha1/namespaces/grid/machinetemplates/nope").await;
        not_found(send, "nope");
        let (status, send) = expect(&mut handle, Method::PATCH, &format!("{MR_PATH}/status")).await;
        assert_eq!(status["status"]["phase"], "Pending");
        let ready =
            status["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "TemplateNotFound");
        assert!(ready["message"].as_str().unwrap().contains("nope"));
        respond(send, &echo);
        let (event, send) = expect(&mut handle, Method::POST, EVENTS_PATH).await;
        assert_eq!(event["reason"], "Pending");
        respond(send, &event);
    });
    request::reconcile(Arc::new(DeserializeGuard(Ok(mr))), ctx.clone()).await.unwrap();
    server.await.unwrap();
    assert_eq!(sim(&ctx).live_count(UID), 0);
}

#[tokio::test]
async fn a_stale_cache_does_not_hold_back_a_template_the_api_server_says_is_ready() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    // The cache still has the template as it was before validation.
    let mut unvalidated = ready_template();
    unvalidated.status = None;
    let ctx = context_with(Client::new(service, NS), unvalidated);
    let mr = request_object(true, false);
    let echo = mr.clone();
    let server = tokio::spawn(async move {
        let (_, send) =
            expect(&mut handle, Method::GET, "/apis/orb.dev/v1alpha1/namespaces/grid/machinetemplates/workers").await;
        respond(send, &ready_template());
        let (before, send) = expect(&mut handle, Method::PATCH, &format!("{MR_PATH}/status")).await;
        assert_eq!(before["status"]["attempt"]["number"], 1, "launching, not held");
        respond(send, &echo);
        let (_, send) = expect(&mut handle, Method::PATCH, &format!("{MR_PATH}/status")).await;
        respond(send, &echo);
        let (event, send) = expect(&mut handle, Method::POST, EVENTS_PATH).await;
        respond(send, &event);
    });
    request::reconcile(Arc::new(DeserializeGuard(Ok(mr))), ctx.clone()).await.unwrap();
    server.await.unwrap();
    assert_eq!(sim(&ctx).live_count(UID), 3);
}

#[tokio::test]
async fn machines_stay_with_the_provider_that_launched_them_when_the_template_changes_provider() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    let machines = launch_in(&ctx, "old", 2)
        .await
        .iter()
        .map(|m| Machine {
            instance_id: m.instance_id.clone(),
            state: "running".into(),
            weight: 1,
            launch_time: m.launch_time.map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
            ..Default::default()
        })
        .collect();
    // The request (capacity 3) has 2 machines from provider `old`; the template now says `default`.
    let mut mr = request_object(true, false);
    mr.status = Some(MachineRequestStatus { provider: Some("old".into()), machines, ..Default::default() });
    let echo = mr.clone();
    let server = tokio::spawn(async move {
        let (status, send) = expect(&mut handle, Method::PATCH, &format!("{MR_PATH}/status")).await;
        assert_eq!(status["status"]["provider"], "old");
        assert!(status["status"].get("attempt").is_none(), "nothing launched: {status}");
        let ready =
            status["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
        assert_eq!(ready["reason"], "ProviderChanged");
        respond(send, &echo);
        let (event, send) = expect(&mut handle, Method::POST, EVENTS_PATH).await;
        respond(send, &event);
    });
    request::reconcile(Arc::new(DeserializeGuard(Ok(mr))), ctx.clone()).await.unwrap();
    server.await.unwrap();
    assert_eq!(sim_named(&ctx, "old").live_count(UID), 2, "the old machines are untouched");
    assert_eq!(sim(&ctx).live_count(UID), 0, "nothing launched through the new provider");
}

#[tokio::test]
async fn a_request_deleted_mid_reconcile_is_not_a_warning_and_publishes_nothing() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    let mr = request_object(true, false);
    let server = tokio::spawn(async move {
        // The status write finds the request gone (deleted and its finalizer removed meanwhile).
        let (_, send) = expect(&mut handle, Method::PATCH, &format!("{MR_PATH}/status")).await;
        not_found(send, "batch");
        handle
    });
    let action = request::reconcile(Arc::new(DeserializeGuard(Ok(mr))), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    let mut handle = server.await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await.is_err(),
        "no Warning Event for a request that is simply gone"
    );
}

/// What a real API server answers when a JSON patch's `test` operation fails.
fn test_failed(send: SendResponse<Response<Body>>) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
        "message": "the server rejected our request due to an error in our request"});
    send.send_response(Response::builder().status(422).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap());
}

#[tokio::test]
async fn a_finalizer_already_added_by_an_earlier_reconcile_is_not_a_warning() {
    // Seen on kube-apiserver 1.26 and 1.36: a reconcile woken by a template change reads the
    // request from a cache that has not yet seen the finalizer another reconcile added; the
    // finalizer patch's `test` fails with 422. Before, that was a failed reconcile, a WARN log
    // and a Warning Event for every new request.
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    let mr = request_object(false, false);
    let server = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::PATCH, MR_PATH).await;
        test_failed(send);
        handle
    });
    let action = request::reconcile(Arc::new(DeserializeGuard(Ok(mr))), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    let mut handle = server.await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await.is_err(),
        "no Warning Event for a cache that was merely behind"
    );
    assert_eq!(sim(&ctx).live_count(UID), 0);
}

#[tokio::test]
async fn an_orphaned_request_lets_go_even_when_the_cloud_cannot_be_reached() {
    // Broken credentials: the orb.dev/orphaned mark cannot be written. Before, the finalizer
    // stayed and the request (and its namespace) could never be deleted.
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    let launched = launch_in(&ctx, "default", 2).await;
    sim(&ctx).set_unreachable(true);
    let mut mr = request_object(true, true);
    mr.spec.deletion_policy = DeletionPolicy::Orphan;
    mr.status = Some(MachineRequestStatus {
        provider: Some("default".into()),
        phase: Some(Phase::Fulfilled),
        machines: launched
            .iter()
            .map(|m| Machine { instance_id: m.instance_id.clone(), ..Default::default() })
            .collect(),
        ..Default::default()
    });
    let echo = mr.clone();
    let first = launched[0].instance_id.clone();
    let server = tokio::spawn(async move {
        let (event, send) = expect(&mut handle, Method::POST, EVENTS_PATH).await;
        assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("OrphanedUnmarked")));
        let note = event["note"].as_str().unwrap();
        assert!(
            note.contains("AuthFailure") && note.contains(&first) && note.contains("orb.dev/orphaned=true"),
            "{note}"
        );
        respond(send, &event);
        expect_finalizer_removed(&mut handle, &echo).await;
    });
    let action = request::reconcile(Arc::new(DeserializeGuard(Ok(mr))), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    server.await.unwrap();
    assert_eq!(sim(&ctx).live_count(UID), 2, "orphaned machines keep running");
}

#[tokio::test]
async fn a_release_that_fails_says_why_in_the_ready_condition() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    launch_in(&ctx, "default", 1).await;
    sim(&ctx).set_unreachable(true);
    let mut mr = request_object(true, true);
    mr.status = Some(MachineRequestStatus {
        provider: Some("default".into()),
        phase: Some(Phase::Fulfilled),
        ..Default::default()
    });
    let echo = mr.clone();
    let server = tokio::spawn(async move {
        // The person on call reads the AWS error in `kubectl describe mr`, not only in an Event.
        let (status, send) = expect(&mut handle, Method::PATCH, &format!("{MR_PATH}/status")).await;
        assert_eq!(status["status"]["phase"], "Deleting");
        let ready = status["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["reason"], "ReleaseFailed", "{ready}");
        assert!(ready["message"].as_str().unwrap().contains("AuthFailure"), "{ready}");
        respond(send, &echo);
        let (event, send) = expect(&mut handle, Method::POST, EVENTS_PATH).await;
        assert_eq!(event["reason"], "Deleting", "the phase's Event");
        respond(send, &event);
        let (event, send) = expect(&mut handle, Method::POST, EVENTS_PATH).await;
        assert_eq!(event["type"], "Warning");
        respond(send, &event);
    });
    let result = request::reconcile(Arc::new(DeserializeGuard(Ok(mr))), ctx.clone()).await;
    assert!(result.is_err(), "the finalizer stays until the release succeeds");
    server.await.unwrap();
    assert_eq!(sim(&ctx).live_count(UID), 1);
}
