//! The RBAC the operator is granted is exactly what its code calls. The operator runs against a
//! scripted API server that answers every call and records it as RBAC sees it (verb, API group,
//! resource, namespace): the whole `controller::run` (CRD check, leader election, both
//! controllers' lists and watches), then each reconciler path (finalizer, status writes, a lagging
//! cache read, Events and a repeated Event, a missing template, release). The calls must equal
//! the rules of `deploy/operator.yaml` — the ClusterRole for the two kinds and Events, the Role
//! for the lease in the lease namespace only — which `tests/chart.rs` holds equal to the chart's.
//! A permission the code stops using, or a call the RBAC lacks, fails here. The same scripted
//! server holds the leader's first lists back to show that `/readyz` waits for the caches.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use http::{Method, Request, Response, Uri};
use kube::Client;
use kube::client::Body;
use kube::core::DeserializeGuard;
use orb_operator::api::MachineTemplate;
use orb_operator::controller::{self, leader::Election, request, template};
use orb_operator::provider::Registry;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::objects::{NS, context_with, ready_template, request_object, sim_provider};
use tower_test::mock::{Handle, SendResponse};

const LEASE_NS: &str = "orb-system";

/// One API call as RBAC authorizes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    group: String,
    resource: String,
    verb: String,
    namespace: Option<String>,
}

fn call_of(method: &Method, uri: &Uri) -> Call {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => panic!("not a Kubernetes API path: {uri}"),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("unexpected path {uri}"),
    };
    let watch = uri.query().is_some_and(|q| q.split('&').any(|p| p == "watch=true"));
    let verb = match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => panic!("unexpected method {other}"),
    };
    Call { group, resource, verb: verb.into(), namespace }
}

/// The scripted API server: answers every call plausibly, holds watches open, keeps the one
/// Lease the election creates, and records every call. With `hold_lists_once_leading`, lists
/// made after the lease is taken (the caches' first lists) wait for `release_lists`.
#[derive(Default)]
struct Answers {
    calls: Vec<Call>,
    lease: Option<Value>,
    held: Vec<SendResponse<Response<Body>>>,
    hold_lists_once_leading: bool,
    held_lists: Vec<SendResponse<Response<Body>>>,
}

const EMPTY_LIST: &str = r#"{"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}"#;

fn release_lists(answers: &Arc<Mutex<Answers>>) {
    let mut state = answers.lock().unwrap();
    state.hold_lists_once_leading = false;
    for send in state.held_lists.drain(..) {
        send.send_response(Response::builder().body(Body::from(EMPTY_LIST.as_bytes().to_vec())).unwrap());
    }
}

fn answer(answers: &Arc<Mutex<Answers>>, handle: Handle<Request<Body>, Response<Body>>) {
    let answers = answers.clone();
    tokio::spawn(async move {
        let mut handle = handle;
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            let call = call_of(&parts.method, &parts.uri);
            let mut state = answers.lock().unwrap();
            state.calls.push(call.clone());
            let reply = match (call.resource.as_str(), call.verb.as_str()) {
                (_, "watch") => {
                    state.held.push(send);
                    continue;
                }
                (_, "list") if state.hold_lists_once_leading && state.lease.is_some() => {
                    state.held_lists.push(send);
                    continue;
                }
                (_, "list") => serde_json::from_str(EMPTY_LIST).unwrap(),
                ("leases", "get") => match &state.lease {
                    Some(lease) => lease.clone(),
                    None => {
                        send.send_response(status(404, "NotFound"));
                        continue;
                    }
                },
                ("leases", "create") => {
                    let mut lease = body;
                    lease["metadata"]["namespace"] = json!(LEASE_NS);
                    lease["metadata"]["resourceVersion"] = json!("1");
                    state.lease = Some(lease.clone());
                    lease
                }
                ("leases", "patch") => {
                    let lease = state.lease.as_mut().expect("patched before created");
                    if !lease["spec"].is_object() {
                        lease["spec"] = json!({});
                    }
                    let spec = lease["spec"].as_object_mut().unwrap();
                    for (key, value) in body["spec"].as_object().unwrap() {
                        match value {
                            Value::Null => spec.remove(key),
                            v => spec.insert(key.clone(), v.clone()),
                        };
                    }
                    lease.clone()
                }
                ("events", _) => body,
                ("machinetemplates", "get") => {
                    send.send_response(status(404, "NotFound"));
                    continue;
                }
                ("machinetemplates/status", "patch") => {
                    let mut t = serde_json::to_value(ready_template()).unwrap();
                    t["status"] = body["status"].clone();
                    t
                }
                // The request as it was, with whatever status was written (a GET of the status
                // answers the stored object: no status).
                ("machinerequests/status", "patch") => {
                    let mut mr = serde_json::to_value(request_object(true, false)).unwrap();
                    mr["status"] = body["status"].clone();
                    mr
                }
                ("machinerequests" | "machinerequests/status", _) => {
                    serde_json::to_value(request_object(true, false)).unwrap()
                }
                _ => panic!("no answer scripted for {call:?}"),
            };
            send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap());
        }
    });
}

fn status(code: u16, reason: &str) -> Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
        "message": reason});
    Response::builder().status(code).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap()
}

/// Waits (polling, bounded) until the recorded calls satisfy `done`.
async fn until(answers: &Arc<Mutex<Answers>>, what: &str, done: impl Fn(&[Call]) -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !done(&answers.lock().unwrap().calls) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}: {:#?}", answers.lock().unwrap().calls);
}

fn made(calls: &[Call], resource: &str, verb: &str) -> bool {
    calls.iter().any(|c| c.resource == resource && c.verb == verb)
}

/// (apiGroup, resource, verb) granted by the rules of the `kind` named `name` in deploy/.
fn granted(kind: &str, name: &str) -> BTreeSet<(String, String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/operator.yaml")).unwrap();
    let role = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .find(|doc: &Value| doc["kind"] == kind && doc["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/operator.yaml"));
    let strings = |v: &Value| v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect::<Vec<_>>();
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

fn diff(used: &BTreeSet<(String, String, String)>, granted: &BTreeSet<(String, String, String)>) -> String {
    format!(
        "called but not granted: {:?}\ngranted but never called: {:?}",
        used.difference(granted).collect::<Vec<_>>(),
        granted.difference(used).collect::<Vec<_>>()
    )
}

#[tokio::test]
async fn the_rbac_granted_is_exactly_what_the_operator_calls() {
    let answers = Arc::new(Mutex::new(Answers::default()));

    // 1. The operator as `run` starts it, over every namespace, with leader election.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    answer(&answers, handle);
    let registry = Registry::with([("default".to_string(), sim_provider())]);
    let election = Election { namespace: LEASE_NS.into(), identity: "rbac-test".into() };
    let operator = tokio::spawn(controller::run(
        Client::new(service, "default"),
        registry,
        None,
        None,
        Default::default(),
        Some(election),
    ));
    until(&answers, "leadership and both controllers watching", |calls| {
        made(calls, "leases", "patch")
            && made(calls, "machinerequests", "watch")
            && made(calls, "machinetemplates", "watch")
    })
    .await;
    operator.abort();

    // 2. Each reconciler path.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    answer(&answers, handle);
    let mut unvalidated = ready_template();
    unvalidated.status = None;
    let ctx = context_with(Client::new(service, NS), ready_template());
    let guard = |t: MachineTemplate| Arc::new(DeserializeGuard(Ok(t)));
    template::reconcile(guard(unvalidated), ctx.clone()).await.unwrap();
    let request = |finalized, deleting| Arc::new(DeserializeGuard(Ok(request_object(finalized, deleting))));
    request::reconcile(request(false, false), ctx.clone()).await.unwrap(); // the finalizer
    request::reconcile(request(true, false), ctx.clone()).await.unwrap(); // launch, status, Event
    // The cache still holds the request without the status just written: the status is read
    // from the API server, which has lost it here, so the Event for the phase repeats (a patch).
    request::reconcile(request(true, false), ctx.clone()).await.unwrap();
    let mut missing = request_object(true, false);
    missing.spec.template_ref.name = "nope".into();
    request::reconcile(Arc::new(DeserializeGuard(Ok(missing))), ctx.clone()).await.unwrap();
    request::reconcile(request(true, true), ctx.clone()).await.unwrap(); // release, finalizer off

    let calls = answers.lock().unwrap().calls.clone();
    let triple = |c: &Call| (c.group.clone(), c.resource.clone(), c.verb.clone());
    let (lease_calls, other_calls): (Vec<&Call>, Vec<&Call>) = calls.iter().partition(|c| c.resource == "leases");
    assert!(lease_calls.iter().all(|c| c.namespace.as_deref() == Some(LEASE_NS)), "{lease_calls:#?}");
    let used_leases: BTreeSet<_> = lease_calls.into_iter().map(triple).collect();
    let lease_role = granted("Role", "orb-operator-lease");
    assert_eq!(used_leases, lease_role, "the lease Role: {}", diff(&used_leases, &lease_role));
    let used: BTreeSet<_> = other_calls.into_iter().map(triple).collect();
    let cluster_role = granted("ClusterRole", "orb-operator");
    assert_eq!(used, cluster_role, "the ClusterRole: {}", diff(&used, &cluster_role));
}

/// `GET path` on 127.0.0.1:`port`: the status code.
async fn status_of(port: u16, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    reply.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn readyz_turns_ready_only_once_the_leaders_caches_have_synced() {
    let answers = Arc::new(Mutex::new(Answers { hold_lists_once_leading: true, ..Default::default() }));
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    answer(&answers, handle);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let registry = Registry::with([("default".to_string(), sim_provider())]);
    let election = Election { namespace: LEASE_NS.into(), identity: "readyz-test".into() };
    let operator = tokio::spawn(controller::run(
        Client::new(service, "default"),
        registry,
        None,
        Some(listener),
        Default::default(),
        Some(election),
    ));
    // Leading, and both caches' first lists unanswered.
    let listed = tokio::time::timeout(Duration::from_secs(30), async {
        while answers.lock().unwrap().held_lists.len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(listed.is_ok(), "the leader's caches list both kinds");
    assert_eq!(status_of(port, "/healthz").await, 200, "live meanwhile");
    assert_eq!(status_of(port, "/readyz").await, 503, "not ready before the caches sync");
    release_lists(&answers);
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        while status_of(port, "/readyz").await != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "ready once the caches synced");
    operator.abort();
}
