//! The HostFactory plugin against a scripted API server (tower-test): a namespace of templates
//! and requests — a fulfilled request, one still provisioning, one past its fulfilmentTimeout
//! with a machine AWS reclaimed, one with a return under way — answered by every verb. Each
//! answer is compared with its golden file in `tests/fixtures/hostfactory/` (set
//! `ORB_UPDATE_GOLDEN=1` to rewrite them) and validated against HostFactory's shapes
//! (`schemas.json`). Every API call is recorded: bad input makes none, and no verb lists more than
//! it needs (label-selected lists, gets by name).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use orb_operator::hostfactory::{Plugin, Verb};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const NS: &str = "grid";
const RET: &str = "ret-0b0e0f00-0000-4000-8000-00000000000d";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostfactory").join(name)
}

fn ready(reason_ok: bool) -> Value {
    json!([{"type": "Ready", "status": if reason_ok { "True" } else { "False" }, "reason": if reason_ok { "Valid" } else { "InvalidSpec" },
        "message": if reason_ok { "template valid" } else { "spec.imageId: image ami-0000 does not exist (InvalidAMIID.NotFound)" },
        "observedGeneration": 1, "lastTransitionTime": "2026-11-26T10:00:00Z"}])
}

fn templates() -> Value {
    json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineTemplateList", "metadata": {"resourceVersion": "1"}, "items": [
        {"apiVersion": "orb.dev/v1alpha1", "kind": "MachineTemplate",
         "metadata": {"name": "workers", "namespace": NS, "generation": 1, "uid": "t-1"},
         "spec": {"api": "EC2Fleet", "imageId": "ami-0123456789abcdef0", "subnetIds": ["subnet-0123456789abcdef0"],
                  "instanceTypes": [{"type": "m5.large", "weight": 1}, {"type": "m5.xlarge", "weight": 2}],
                  "priceType": "spot", "maxSpotPrice": "0.08", "maxMachines": 10},
         "status": {"observedGeneration": 1, "conditions": ready(true), "machinesInUse": 4,
                    "instanceTypes": [{"type": "m5.large", "vcpus": 2, "memoryMiB": 8192, "architecture": "x86_64"},
                                      {"type": "m5.xlarge", "vcpus": 4, "memoryMiB": 16384, "architecture": "x86_64"}]}},
        {"apiVersion": "orb.dev/v1alpha1", "kind": "MachineTemplate",
         "metadata": {"name": "arm", "namespace": NS, "generation": 1, "uid": "t-2"},
         "spec": {"imageId": "ami-0123456789abcdef1", "instanceTypes": [{"type": "m6g.large", "weight": 1}]},
         "status": {"observedGeneration": 1, "conditions": ready(true), "machinesInUse": 0,
                    "instanceTypes": [{"type": "m6g.large", "vcpus": 2, "memoryMiB": 8192, "architecture": "arm64"}]}},
        {"apiVersion": "orb.dev/v1alpha1", "kind": "MachineTemplate",
         "metadata": {"name": "broken", "namespace": NS, "generation": 1, "uid": "t-3"},
         "spec": {"imageId": "ami-0000000000000dead", "instanceTypes": [{"type": "m5.large"}]},
         "status": {"observedGeneration": 1, "conditions": ready(false)}}
    ]})
}

/// The host name of machine `id` in these fixtures.
fn host(id: &str) -> String {
    format!("ip-10-0-0-{}.ec2.internal", u8::from_str_radix(&id[id.len() - 2..], 16).unwrap())
}

fn machine(id: &str, state: &str, result: &str, extra: Value) -> Value {
    let mut m = json!({"instanceId": id, "state": state,
        "result": result, "instanceType": "m5.large", "capacityType": "on-demand", "weight": 1, "zone": "us-east-1a",
        "privateIp": "10.0.0.7", "privateDnsName": host(id), "publicIp": null, "launchTime": "2026-11-26T10:01:40Z"});
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    m
}

fn request(
    name: &str,
    capacity: i32,
    phase: &str,
    machines: Vec<Value>,
    extra_meta: Value,
    returning: Vec<&str>,
) -> Value {
    let mut meta = json!({"name": name, "namespace": NS, "generation": 1, "uid": format!("uid-{name}"), "resourceVersion": "7",
        "labels": {"orb.dev/created-by": "hostfactory", "hostfactory.orb.dev/provider": "default"}});
    for (k, v) in extra_meta.as_object().unwrap() {
        for (k2, v2) in v.as_object().unwrap() {
            meta[k][k2] = v2.clone();
        }
    }
    json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineRequest", "metadata": meta,
        "spec": {"templateRef": {"name": "workers"}, "capacity": capacity, "fulfilmentTimeout": "15m", "returnMachines": returning},
        "status": {"phase": phase, "requestedCapacity": capacity, "machines": machines,
                   "conditions": [{"type": "Ready", "status": if phase == "Fulfilled" { "True" } else { "False" }, "reason": phase,
                                   "message": format!("{phase}: see machines"), "lastTransitionTime": "2026-11-26T10:05:00Z"}]}})
}

const A: &str = "req-0a0e0f00-0000-4000-8000-00000000000a";
const B: &str = "req-0b0e0f00-0000-4000-8000-00000000000b";
const C: &str = "req-0c0e0f00-0000-4000-8000-00000000000c";
const D: &str = "req-0d0e0f00-0000-4000-8000-00000000000d";
/// Another HostFactory provider instance's request, in the same namespace.
const E: &str = "req-0e0e0f00-0000-4000-8000-00000000000e";
/// A request whose return has been under way for far longer than `RETURN_TTL`.
const F: &str = "req-0f0e0f00-0000-4000-8000-00000000000f";
const RET_F: &str = "ret-0f0e0f00-0000-4000-8000-00000000000f";

fn requests() -> Vec<Value> {
    vec![
        request(
            A,
            2,
            "Fulfilled",
            vec![
                machine("i-0a00000000000001a", "running", "succeed", json!({})),
                machine(
                    "i-0a00000000000002a",
                    "running",
                    "succeed",
                    json!({"capacityType": "spot", "publicIp": "54.1.2.3"}),
                ),
            ],
            json!({}),
            vec![],
        ),
        request(
            B,
            2,
            "Provisioning",
            vec![
                machine("i-0b00000000000001b", "running", "succeed", json!({})),
                machine("i-0b00000000000002b", "pending", "executing", json!({"privateIp": null, "launchTime": null})),
            ],
            json!({}),
            vec![],
        ),
        // Past its fulfilmentTimeout, one machine reclaimed by AWS.
        request(
            C,
            2,
            "Partial",
            vec![
                machine("i-0c00000000000001c", "running", "succeed", json!({})),
                machine(
                    "i-0c00000000000002c",
                    "terminated",
                    "fail",
                    json!({"capacityType": "spot",
                "message": "terminated outside the operator: Server.SpotInstanceTermination: Spot instance termination"}),
                ),
            ],
            json!({}),
            vec![],
        ),
        // (C: made by this plugin, so a lost machine is reported, not replaced.)
        // A return under way: one machine shutting down, one already gone from the cloud.
        request(
            D,
            1,
            "Fulfilled",
            vec![
                machine("i-0d00000000000001d", "running", "succeed", json!({})),
                machine(
                    "i-0d00000000000002d",
                    "shutting-down",
                    "executing",
                    json!({"returning": true, "message": "returning: named in spec.returnMachines"}),
                ),
            ],
            json!({"labels": {format!("hostfactory.orb.dev/{RET}"): "return"},
                  "annotations": {format!("hostfactory.orb.dev/{RET}"): "i-0d00000000000002d,i-0d00000000000003d"}}),
            vec!["i-0d00000000000002d", "i-0d00000000000003d"],
        ),
        request(
            E,
            1,
            "Partial",
            vec![machine("i-0e00000000000001e", "terminated", "fail", json!({"message": "terminated outside the operator"}))],
            json!({"labels": {"hostfactory.orb.dev/provider": "other"}}),
            vec![],
        ),
        request(
            F,
            1,
            "Fulfilled",
            vec![
                machine("i-0f00000000000001f", "running", "succeed", json!({})),
                machine(
                    "i-0f00000000000002f",
                    "running",
                    "executing",
                    json!({"returning": true, "message": "returning: named in spec.returnMachines"}),
                ),
            ],
            json!({"labels": {format!("hostfactory.orb.dev/{RET_F}"): "return"},
                  "annotations": {format!("hostfactory.orb.dev/{RET_F}"): "1700000000;i-0f00000000000002f"}}),
            vec!["i-0f00000000000002f"],
        ),
    ]
    .into_iter()
    .map(|mut r| {
        if r["metadata"]["name"] == C {
            r["spec"]["lostMachines"] = json!("Report");
        }
        if r["metadata"]["name"] == F {
            r["status"]["failures"] = json!([{"code": "UnauthorizedOperation", "message": "not allowed to terminate i-0f00000000000002f", "count": 3, "lastSeen": "2026-11-26T10:30:00Z"}]);
        }
        r
    })
    .collect()
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineRequestList", "metadata": {"resourceVersion": "9"}, "items": items})
}

/// What the scripted API server saw: method, path and query of every call, and patch bodies.
#[derive(Default)]
struct Seen {
    calls: Vec<String>,
    bodies: Vec<Value>,
}

/// A plugin whose client talks to a scripted API server holding the namespace above.
fn plugin() -> (Plugin, Arc<Mutex<Seen>>) {
    plugin_with(route)
}

/// A plugin of provider instance `default` whose API server answers with `route`.
fn plugin_with(
    route: impl Fn(&Method, &str, &str, &Value) -> (u16, Value) + Send + 'static,
) -> (Plugin, Arc<Mutex<Seen>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (method, uri) = (req.method().clone(), req.uri().clone());
            let query = uri.query().unwrap_or_default().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            record.lock().unwrap().calls.push(format!("{method} {}?{query}", uri.path()));
            record.lock().unwrap().bodies.push(body.clone());
            let (status, answer) = route(&method, uri.path(), &query, &body);
            send.send_response(
                Response::builder().status(status).body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap(),
            );
        }
    });
    let plugin = Plugin {
        client: Client::new(service, NS),
        namespace: NS.into(),
        template_selector: None,
        provider: "default".into(),
    };
    (plugin, seen)
}

fn not_found(kind: &str, name: &str) -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
        "message": format!("{kind}.orb.dev \"{name}\" not found")}),
    )
}

fn route(method: &Method, path: &str, query: &str, body: &Value) -> (u16, Value) {
    let base = format!("/apis/orb.dev/v1alpha1/namespaces/{NS}/");
    let rest = path.strip_prefix(&base).unwrap_or_else(|| panic!("unexpected path {path}"));
    let query = urlencoding_decode(query);
    match (method.as_str(), rest.split_once('/')) {
        // A selector nothing matches: an empty namespace as HostFactory may meet it.
        ("GET", None) if rest == "machinetemplates" && query.contains("labelSelector=") => {
            (200, json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineTemplateList", "metadata": {}, "items": []}))
        }
        ("GET", None) if rest == "machinetemplates" => (200, templates()),
        ("GET", Some(("machinetemplates", name))) => templates()["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["metadata"]["name"] == name)
            .map_or_else(|| not_found("machinetemplates", name), |t| (200, t.clone())),
        ("GET", None) if rest == "machinerequests" => {
            let selected: Vec<Value> = requests()
                .into_iter()
                .filter(|r| {
                    let labels = &r["metadata"]["labels"];
                    let selector = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("labelSelector="))
                        .unwrap_or_else(|| panic!("an unselected list of every request: {query}"));
                    selector.split(',').all(|term| match term.split_once('=') {
                        Some((k, v)) => labels[k] == v,
                        None => !labels[term].is_null(),
                    })
                })
                .collect();
            (200, list(selected))
        }
        ("GET", Some(("machinerequests", name))) => requests()
            .into_iter()
            .find(|r| r["metadata"]["name"] == name)
            .map_or_else(|| not_found("machinerequests", name), |r| (200, r)),
        ("POST", None) if rest == "machinerequests" => {
            let mut created = body.clone();
            created["metadata"]["uid"] = json!("uid-new");
            created["metadata"]["resourceVersion"] = json!("1");
            (201, created)
        }
        ("PATCH", Some(("machinerequests", name))) if body.get("spec").is_none() => {
            // Annotations (`asked`) or labels (a return reported) only: no optimistic
            // concurrency needed.
            let mut current = requests().into_iter().find(|r| r["metadata"]["name"] == name).unwrap();
            for part in ["annotations", "labels"] {
                for (k, v) in body["metadata"][part].as_object().into_iter().flatten() {
                    current["metadata"][part][k] = v.clone();
                }
            }
            (200, current)
        }
        ("DELETE", Some(("machinerequests", _))) => (200, json!({"kind": "Status", "status": "Success"})),
        ("PATCH", Some(("machinerequests", name))) => {
            let mut current = requests().into_iter().find(|r| r["metadata"]["name"] == name).unwrap();
            assert_eq!(
                body["metadata"]["resourceVersion"], current["metadata"]["resourceVersion"],
                "optimistic concurrency"
            );
            current["spec"]["capacity"] = body["spec"]["capacity"].clone();
            current["spec"]["returnMachines"] = body["spec"]["returnMachines"].clone();
            (200, current)
        }
        _ => panic!("unexpected call {method} {path}?{query}"),
    }
}

fn urlencoding_decode(s: &str) -> String {
    s.replace("%2F", "/").replace("%3D", "=").replace("%2C", ",")
}

/// Replaces generated ids (`req-`/`ret-` + uuid) so a golden file can hold them.
fn stable(mut v: Value) -> Value {
    if let Some(id) = v.get("requestId").and_then(Value::as_str).map(str::to_string)
        && id.len() == 40
        && !id.contains("0000-4000-8000")
    {
        let placeholder = format!("{}-<uuid>", &id[..3]);
        if let Some(message) = v.get("message").and_then(Value::as_str).map(|m| m.replace(&id, &placeholder)) {
            v["message"] = json!(message);
        }
        v["requestId"] = json!(placeholder);
    }
    v
}

fn golden(name: &str, actual: &Value) {
    let path = fixture(&format!("{name}.json"));
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("ORB_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .unwrap();
    assert_eq!(actual, &expected, "{name} differs from {}; got:\n{text}", path.display());
}

/// Checks an answer against HostFactory's shape for `verb`.
fn shaped(verb: &str, answer: &Value) {
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(fixture("schemas.json")).unwrap()).unwrap();
    schema["$ref"] = json!(format!("#/{verb}"));
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> =
        validator.iter_errors(answer).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{verb} answer does not have HostFactory's shape: {errors:#?}\n{answer:#}");
}

#[tokio::test]
async fn get_available_templates_lists_the_ready_ones_with_their_attributes() {
    let (plugin, seen) = plugin();
    let answer = plugin.answer(Verb::GetAvailableTemplates, &json!({})).await.unwrap();
    shaped("getAvailableTemplates", &answer);
    golden("getAvailableTemplates", &answer);
    let ids: Vec<&str> =
        answer["templates"].as_array().unwrap().iter().map(|t| t["templateId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["arm", "workers"], "the template that is not Ready is left out");
    assert_eq!(seen.lock().unwrap().calls, ["GET /apis/orb.dev/v1alpha1/namespaces/grid/machinetemplates?"]);

    let (mut plugin, _) = self::plugin();
    plugin.template_selector = Some("orb.dev/hostfactory=offered".into());
    let empty = plugin.answer(Verb::GetAvailableTemplates, &json!({})).await.unwrap();
    shaped("getAvailableTemplates", &empty);
    golden("getAvailableTemplates.empty", &empty);
}

/// A template being edited (a generation not validated yet) or failing re-validation keeps
/// being listed while hosts from it run — with no room for more; one with no hosts is not.
#[tokio::test]
async fn a_template_with_hosts_stays_listed_while_it_is_edited_or_revalidated() {
    let (plugin, _) = plugin_with(|method, path, query, body| {
        let (status, mut answer) = route(method, path, query, body);
        if method == Method::GET && path.ends_with("/machinetemplates") {
            for t in answer["items"].as_array_mut().unwrap() {
                match t["metadata"]["name"].as_str().unwrap() {
                    // Edited: generation 2, the Ready condition still about generation 1.
                    "workers" => t["metadata"]["generation"] = json!(2),
                    // Re-validation failed (provider unhealthy), no machines from it.
                    _ => t["status"]["conditions"][0]["status"] = json!("False"),
                }
            }
        }
        (status, answer)
    });
    let answer = plugin.answer(Verb::GetAvailableTemplates, &json!({})).await.unwrap();
    shaped("getAvailableTemplates", &answer);
    let templates = answer["templates"].as_array().unwrap();
    let ids: Vec<&str> = templates.iter().map(|t| t["templateId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["workers"], "the edited template has 4 machines in use; arm has none: {answer}");
    assert_eq!((&templates[0]["maxNumber"], &templates[0]["availableNumber"]), (&json!(4), &json!(0)), "{answer}");
    assert_eq!(templates[0]["attributes"]["ncpus"], json!(["Numeric", "2"]), "what was learnt before: {answer}");
}

/// A template that describes its machines by attributes is offered with the types validation
/// resolved (as `vmTypes`, with their weights) and what every one of them has at least.
#[tokio::test]
async fn a_template_by_attributes_is_offered_with_its_resolved_types() {
    let (plugin, _) = plugin_with(|method, path, query, body| {
        let (status, mut answer) = route(method, path, query, body);
        if method == Method::GET && path.ends_with("/machinetemplates") {
            answer["items"].as_array_mut().unwrap().push(json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineTemplate",
                "metadata": {"name": "by-attributes", "namespace": NS, "generation": 1, "uid": "t-4"},
                "spec": {"imageId": "ami-0123456789abcdef0",
                         "instanceRequirements": {"vCpuCount": {"min": 4, "max": 8}, "memoryMiB": {"min": 8192}, "weightBy": "vcpu"}},
                "status": {"observedGeneration": 1, "conditions": ready(true), "machinesInUse": 0,
                           "instanceTypes": [{"type": "m6i.2xlarge", "vcpus": 8, "memoryMiB": 32768, "architecture": "x86_64", "weight": 8},
                                             {"type": "c6i.xlarge", "vcpus": 4, "memoryMiB": 8192, "architecture": "x86_64", "weight": 4}]}}));
        }
        (status, answer)
    });
    let answer = plugin.answer(Verb::GetAvailableTemplates, &json!({})).await.unwrap();
    shaped("getAvailableTemplates", &answer);
    let offered = answer["templates"].as_array().unwrap().iter().find(|t| t["templateId"] == "by-attributes").unwrap();
    assert_eq!(offered["vmTypes"], json!({"c6i.xlarge": 4, "m6i.2xlarge": 8}), "{offered}");
    assert_eq!(offered["attributes"]["ncpus"], json!(["Numeric", "4"]), "{offered}");
    assert_eq!(offered["attributes"]["nram"], json!(["Numeric", "8192"]), "{offered}");
}

#[tokio::test]
async fn request_machines_creates_one_labelled_request_in_capacity_units() {
    let (plugin, seen) = plugin();
    for input in [
        json!({"template": {"templateId": "workers", "machineCount": 3}}),
        json!({"templateId": "workers", "machineCount": 3}),
    ] {
        let answer = plugin.answer(Verb::RequestMachines, &input).await.unwrap();
        shaped("requestMachines", &answer);
        golden("requestMachines", &stable(answer));
    }
    let seen = seen.lock().unwrap();
    let created: Vec<&Value> = seen.bodies.iter().filter(|b| b["kind"] == "MachineRequest").collect();
    assert_eq!(created.len(), 2, "one per call");
    assert_eq!(created[0]["spec"]["capacity"], 3);
    assert_eq!(created[0]["spec"]["templateRef"]["name"], "workers");
    assert_eq!(created[0]["spec"]["lostMachines"], "Report", "HostFactory replaces lost hosts itself");
    assert_eq!(created[0]["metadata"]["labels"]["orb.dev/created-by"], "hostfactory");
    assert_eq!(created[0]["metadata"]["labels"]["hostfactory.orb.dev/provider"], "default");
    assert!(created[0]["metadata"]["name"].as_str().unwrap().starts_with("req-"));
}

#[tokio::test]
async fn a_retried_create_whose_first_answer_was_lost_yields_one_request_and_its_id() {
    // The API server makes the object but the answer is lost (a 504 from a proxy); the read-back
    // finds it. Then: a create answered 409 because the object already exists (its first answer
    // was lost too) finds its own object.
    for lost_with in [504u16, 409] {
        let made: Arc<Mutex<Vec<Value>>> = Arc::default();
        let store = made.clone();
        let (plugin, seen) = plugin_with(move |method, path, query, body| {
            let name = path.rsplit('/').next().unwrap_or_default();
            match method.as_str() {
                "POST" => {
                    let mut created = body.clone();
                    created["metadata"]["uid"] = json!("uid-new");
                    store.lock().unwrap().push(created);
                    let status = if lost_with == 409 { "AlreadyExists" } else { "Timeout" };
                    (
                        lost_with,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": status, "code": lost_with, "message": "the answer was lost"}),
                    )
                }
                "GET" if path.contains("/machinerequests/") => {
                    match store.lock().unwrap().iter().find(|r| r["metadata"]["name"] == name) {
                        Some(r) => (200, r.clone()),
                        None => not_found("machinerequests", name),
                    }
                }
                _ => route(method, path, query, body),
            }
        });
        let answer =
            plugin.answer(Verb::RequestMachines, &json!({"templateId": "workers", "machineCount": 2})).await.unwrap();
        let made = made.lock().unwrap();
        assert_eq!(made.len(), 1, "{lost_with}: one MachineRequest");
        assert_eq!(answer["requestId"], made[0]["metadata"]["name"], "{lost_with}: the id of the one made");
        let posts = seen.lock().unwrap().calls.iter().filter(|c| c.starts_with("POST")).count();
        assert_eq!(posts, 1, "{lost_with}: found by reading back, not created again");
    }
}

#[tokio::test]
async fn bad_input_names_the_problem_and_creates_nothing() {
    let (plugin, seen) = plugin();
    let error =
        plugin.answer(Verb::RequestMachines, &json!({"template": {"templateId": "workers"}})).await.unwrap_err();
    assert!(error.to_string().contains("machineCount"), "{error}");
    let error = plugin
        .answer(Verb::RequestMachines, &json!({"template": {"templateId": "nope", "machineCount": 1}}))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no MachineTemplate nope"), "{error}");
    let error = plugin
        .answer(Verb::RequestMachines, &json!({"template": {"templateId": "broken", "machineCount": 1}}))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not Ready") && error.to_string().contains("InvalidAMIID"), "{error}");
    // A machine no request of this provider lists: gone already, nothing to return.
    let answer = plugin
        .answer(
            Verb::RequestReturnMachines,
            &json!({"machines": [{"name": "host", "machineId": "i-0999999999999999f"}, {"machineId": "i-0e00000000000001e"}]}),
        )
        .await
        .unwrap();
    assert!(answer["message"].as_str().unwrap().contains("2 no longer exist"), "{answer}");
    let seen = seen.lock().unwrap();
    assert!(seen.calls.iter().all(|c| c.starts_with("GET")), "nothing created or changed: {:?}", seen.calls);
}

#[tokio::test]
async fn get_request_status_maps_phases_machines_returns_and_unknown_ids() {
    let (plugin, seen) = plugin();
    let input = json!({"requests": [{"requestId": A}, {"requestId": B}, {"requestId": C}, {"requestId": RET}, {"requestId": "req-unknown"}]});
    let answer = plugin.answer(Verb::GetRequestStatus, &input).await.unwrap();
    shaped("getRequestStatus", &answer);
    golden("getRequestStatus", &answer);
    let statuses: Vec<&str> =
        answer["requests"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["complete", "running", "complete_with_error", "running", "complete_with_error"]);
    let names: Vec<&str> =
        answer["requests"][0]["machines"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, [host("i-0a00000000000001a"), host("i-0a00000000000002a")], "machines are named by host name");
    // The single-object form answers the same.
    let one = plugin.answer(Verb::GetRequestStatus, &json!({"requests": {"requestId": A}})).await.unwrap();
    assert_eq!(one["requests"][0], answer["requests"][0]);
    let seen = seen.lock().unwrap();
    assert!(seen.calls.iter().any(|c| c.contains(&format!("hostfactory.orb.dev%2F{RET}"))), "{:?}", seen.calls);
    // Asked about: each request is marked once, so it is never taken for one HostFactory lost.
    let asked: Vec<&String> = seen.calls.iter().filter(|c| c.starts_with("PATCH")).collect();
    assert_eq!(asked.len(), 4, "A, B, C, and A again (the fixture never keeps it): {asked:?}");
    assert!(seen.bodies.iter().any(|b| b["metadata"]["annotations"]["hostfactory.orb.dev/asked"].is_string()));
}

#[tokio::test]
async fn one_malformed_or_foreign_id_affects_only_its_own_entry() {
    let (plugin, _) = plugin();
    let input = json!({"requests": [{"requestId": 7}, {"id": "x"}, {"requestId": E}, {"requestId": A}]});
    let answer = plugin.answer(Verb::GetRequestStatus, &input).await.unwrap();
    shaped("getRequestStatus", &answer);
    let entries = answer["requests"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert!(entries[0]["message"].as_str().unwrap().contains("must be a string"), "{answer}");
    assert!(entries[1]["message"].as_str().unwrap().contains("requests[1].requestId is missing"), "{answer}");
    assert_eq!(entries[2]["status"], "complete_with_error", "another provider instance's request is not ours");
    assert_eq!((entries[3]["requestId"].as_str(), entries[3]["status"].as_str()), (Some(A), Some("complete")));
}

#[tokio::test]
async fn a_wrong_namespace_fails_the_call_instead_of_failing_every_request() {
    let (plugin, seen) = plugin_with(|method, path, _, _| match (method.as_str(), path.rsplit('/').next().unwrap()) {
        ("GET", "machinetemplates") => {
            (200, json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineTemplateList", "metadata": {}, "items": []}))
        }
        (_, name) => not_found("machinerequests", name),
    });
    let error = plugin.answer(Verb::GetRequestStatus, &json!({"requests": [{"requestId": A}, {"requestId": B}]})).await;
    let error = error.unwrap_err().to_string();
    assert!(error.contains("namespace grid holds no MachineTemplate"), "{error}");
    assert_eq!(seen.lock().unwrap().calls.iter().filter(|c| c.contains("machinetemplates")).count(), 1, "checked once");
}

#[tokio::test]
async fn a_return_that_does_not_finish_is_reported_failed_with_the_reason() {
    let (plugin, _) = plugin();
    let answer = plugin.answer(Verb::GetRequestStatus, &json!({"requestId": RET_F})).await.unwrap();
    shaped("getRequestStatus", &answer);
    let entry = &answer["requests"][0];
    assert_eq!(entry["status"], "complete_with_error", "{answer}");
    assert_eq!(entry["machines"][0]["result"], "fail");
    let message = entry["machines"][0]["message"].as_str().unwrap();
    assert!(message.contains("UnauthorizedOperation") && message.contains("15 min"), "{message}");
}

#[tokio::test]
async fn request_return_machines_lowers_capacity_and_records_the_return_in_the_cluster() {
    let (plugin, seen) = plugin();
    // One machine named by its host name and id, one by id only, one by host name only.
    let input = json!({"machines": [
        {"name": host("i-0a00000000000002a"), "machineId": "i-0a00000000000002a"},
        {"machineId": "i-0b00000000000001b"},
        {"name": host("i-0d00000000000001d")},
    ]});
    let answer = plugin.answer(Verb::RequestReturnMachines, &input).await.unwrap();
    shaped("requestReturnMachines", &answer);
    golden("requestReturnMachines", &stable(answer.clone()));
    let ret = answer["requestId"].as_str().unwrap();
    let seen = seen.lock().unwrap();
    let patches: Vec<&Value> = seen.bodies.iter().filter(|b| b.get("spec").is_some()).collect();
    assert_eq!(patches.len(), 3, "one patch per owning request");
    let a = patches.iter().find(|p| p["spec"]["returnMachines"] == json!(["i-0a00000000000002a"])).expect("A's patch");
    assert_eq!(a["spec"]["capacity"], 1, "capacity lowered by the machine's weight");
    assert_eq!(a["metadata"]["labels"][format!("hostfactory.orb.dev/{ret}")], "return");
    let recorded = a["metadata"]["annotations"][format!("hostfactory.orb.dev/{ret}")].as_str().unwrap();
    assert!(recorded.ends_with(";i-0a00000000000002a"), "the time of the return and the ids: {recorded}");
    assert_eq!(a["metadata"]["resourceVersion"], "7", "optimistic concurrency");
    assert!(
        patches.iter().any(|p| p["spec"]["returnMachines"].as_array().unwrap().contains(&json!("i-0d00000000000001d")))
    );
    // Owners found in one list of this provider instance's requests.
    assert!(
        seen.calls.iter().any(|c| c
            .contains("labelSelector=orb.dev%2Fcreated-by%3Dhostfactory%2Chostfactory.orb.dev%2Fprovider%3Ddefault")),
        "{:?}",
        seen.calls
    );
}

#[tokio::test]
async fn get_return_requests_lists_what_the_provider_reclaims_and_not_hostfactorys_own_returns() {
    let (plugin, seen) = plugin();
    // HostFactory knows C's reclaimed host, and one no request lists any more.
    let input = json!({"machines": [
        {"name": host("i-0c00000000000002c"), "machineId": "i-0c00000000000002c"},
        {"name": "ip-10-9-9-9.ec2.internal", "machineId": "i-0999999999999999f"},
    ]});
    let answer = plugin.answer(Verb::GetReturnRequests, &input).await.unwrap();
    shaped("getReturnRequests", &answer);
    golden("getReturnRequests", &answer);
    let listed: Vec<(&str, &str, i64)> = answer["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["machine"].as_str().unwrap(), r["machineId"].as_str().unwrap(), r["gracePeriod"].as_i64().unwrap()))
        .collect();
    let reclaimed = host("i-0c00000000000002c");
    assert_eq!(
        listed,
        [(reclaimed.as_str(), "i-0c00000000000002c", 0), ("ip-10-9-9-9.ec2.internal", "i-0999999999999999f", 0)],
        "the lost host and the vanished one; not D's or F's returns (HostFactory's own), not E's (another provider's)"
    );
    let empty = plugin.answer(Verb::GetReturnRequests, &json!({})).await.unwrap();
    shaped("getReturnRequests", &empty);
    assert!(seen.lock().unwrap().calls.iter().all(|c| !c.starts_with("DELETE")), "no request was left unasked long");
}

/// A spot machine under an interruption warning is a host the provider will reclaim: listed
/// with the seconds left, so HostFactory drains it first. A rebalance recommendation is not.
#[tokio::test]
async fn a_warned_machine_is_listed_with_the_seconds_left_as_its_grace_period() {
    let deadline = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 100).unwrap().to_string();
    let (plugin, _) = plugin_with(move |method, path, query, body| {
        let (status, mut answer) = route(method, path, query, body);
        if method == Method::GET && path.ends_with("/machinerequests") {
            for item in answer["items"].as_array_mut().unwrap() {
                if item["metadata"]["name"] == A {
                    let machines = item["status"]["machines"].as_array_mut().unwrap();
                    machines[1]["notice"] = json!({"kind": "SpotInterruption", "deadline": deadline});
                    machines[0]["notice"] = json!({"kind": "RebalanceRecommendation"});
                }
            }
        }
        (status, answer)
    });
    let answer = plugin.answer(Verb::GetReturnRequests, &json!({})).await.unwrap();
    shaped("getReturnRequests", &answer);
    let warned: Vec<&Value> = answer["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["machineId"].as_str().unwrap().starts_with("i-0a"))
        .collect();
    assert_eq!(warned.len(), 1, "{answer}");
    assert_eq!(warned[0]["machineId"], "i-0a00000000000002a");
    assert_eq!(warned[0]["machine"], host("i-0a00000000000002a"));
    let grace = warned[0]["gracePeriod"].as_i64().unwrap();
    assert!((90..=100).contains(&grace), "the seconds left: {grace}");
}

#[tokio::test]
async fn a_request_hostfactory_never_asked_about_is_deleted_after_a_while() {
    let (plugin, seen) = plugin_with(|method, path, query, body| {
        let (status, mut answer) = route(method, path, query, body);
        if method == Method::GET && path.ends_with("/machinerequests") {
            for item in answer["items"].as_array_mut().unwrap() {
                let old = item["metadata"]["name"] == B;
                item["metadata"]["creationTimestamp"] =
                    json!(if old { "2026-01-01T00:00:00Z" } else { "2099-01-01T00:00:00Z" });
                if item["metadata"]["name"] == A {
                    item["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                    item["metadata"]["annotations"] = json!({"hostfactory.orb.dev/asked": "2026-01-01T00:00:05Z"});
                }
            }
        }
        (status, answer)
    });
    plugin.answer(Verb::GetReturnRequests, &json!({})).await.unwrap();
    let deleted: Vec<String> = seen.lock().unwrap().calls.iter().filter(|c| c.starts_with("DELETE")).cloned().collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert!(deleted[0].contains(B), "B was never asked about; A was: {deleted:?}");
}

/// A request HostFactory is done with (capacity 0, every machine terminated, returned and its
/// return reported) is deleted by the next `getReturnRequests`; one that is not quite done is
/// kept — its return not yet answered, or a lost machine HostFactory has not returned.
#[tokio::test]
async fn a_finished_request_is_deleted_so_the_calls_cost_stays_flat() {
    const DONE: &str = "req-1a0e0f00-0000-4000-8000-00000000001a";
    const UNREPORTED: &str = "req-1b0e0f00-0000-4000-8000-00000000001b";
    const LOST: &str = "req-1c0e0f00-0000-4000-8000-00000000001c";
    let finished = |name: &str, reported: &str, returned: Vec<&str>| {
        let gone = machine(&format!("i-{}0000000001", &name[4..12]), "terminated", "succeed", json!({}));
        let ret = format!("hostfactory.orb.dev/ret-{}", &name[4..]);
        request(name, 0, "Fulfilled", vec![gone], json!({"labels": {ret: reported}}), returned)
    };
    let extra = move || {
        vec![
            finished(DONE, "reported", vec!["i-1a0e0f000000000001"]),
            finished(UNREPORTED, "return", vec!["i-1b0e0f000000000001"]),
            finished(LOST, "reported", vec![]),
        ]
    };
    let (plugin, seen) = plugin_with(move |method, path, query, body| {
        let (status, mut answer) = route(method, path, query, body);
        if method == Method::GET && path.ends_with("/machinerequests") {
            answer["items"].as_array_mut().unwrap().extend(extra());
        }
        (status, answer)
    });
    plugin.answer(Verb::GetReturnRequests, &json!({})).await.unwrap();
    let deleted: Vec<String> = seen.lock().unwrap().calls.iter().filter(|c| c.starts_with("DELETE")).cloned().collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert!(deleted[0].contains(DONE), "{deleted:?}");
}

/// A backlog of finished requests is deleted a bounded number per call: no call misses
/// HostFactory's script timeout however long the grid's history.
#[tokio::test]
async fn a_backlog_of_finished_requests_is_deleted_a_bounded_number_per_call() {
    let (plugin, seen) = plugin_with(move |method, path, query, body| {
        let (status, mut answer) = route(method, path, query, body);
        if method == Method::GET && path.ends_with("/machinerequests") {
            let finished = (0..150).map(|i| {
                let name = format!("req-2{i:07x}-0000-4000-8000-000000000000");
                request(&name, 0, "Fulfilled", vec![], json!({}), vec![])
            });
            answer["items"].as_array_mut().unwrap().extend(finished);
        }
        (status, answer)
    });
    plugin.answer(Verb::GetReturnRequests, &json!({})).await.unwrap();
    let deleted = seen.lock().unwrap().calls.iter().filter(|c| c.starts_with("DELETE")).count();
    assert_eq!(deleted, orb_operator::hostfactory::DELETES_PER_CALL);
}

/// A return answered `complete` is marked reported on its request (what `finished` waits for);
/// one still running is not.
#[tokio::test]
async fn a_return_answered_complete_is_marked_reported() {
    let (plugin, seen) = plugin_with(|method, path, query, body| {
        let (status, mut answer) = route(method, path, query, body);
        if method == Method::GET && path.ends_with("/machinerequests") {
            for item in answer["items"].as_array_mut().unwrap() {
                for m in item["status"]["machines"].as_array_mut().unwrap() {
                    if m["instanceId"] == "i-0d00000000000002d" {
                        m["state"] = json!("terminated");
                    }
                }
            }
        }
        (status, answer)
    });
    let answer = plugin.answer(Verb::GetRequestStatus, &json!({"requests": [{"requestId": RET}]})).await.unwrap();
    assert_eq!(answer["requests"][0]["status"], "complete", "{answer}");
    let key = format!("hostfactory.orb.dev/{RET}");
    {
        let seen = seen.lock().unwrap();
        let marked: Vec<&Value> = seen.bodies.iter().filter(|b| b["metadata"]["labels"][&key] == "reported").collect();
        assert_eq!(marked.len(), 1, "{:?}", seen.calls);
    }
    let (running, seen) = self::plugin();
    running.answer(Verb::GetRequestStatus, &json!({"requests": [{"requestId": RET}]})).await.unwrap();
    assert!(seen.lock().unwrap().calls.iter().all(|c| !c.starts_with("PATCH")), "still running: not reported");
}

#[test]
fn the_shapes_refuse_what_hostfactory_would_refuse() {
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(fixture("schemas.json")).unwrap()).unwrap();
    schema["$ref"] = json!("#/getRequestStatus");
    let validator = jsonschema::validator_for(&schema).unwrap();
    let good = json!({"requests": [{"requestId": "req-1", "status": "running", "message": "", "machines": []}]});
    assert!(validator.is_valid(&good));
    for bad in [
        json!({"requests": [{"requestId": "req-1", "status": "done", "message": "", "machines": []}]}),
        json!({"requests": [{"requestId": "req-1", "status": "running", "message": ""}]}),
        json!({"requests": [{"requestId": "req-1", "status": "running", "message": "", "machines": [{"machineId": "i-1", "name": "h", "result": "fail", "status": "terminated", "privateIpAddress": null, "publicIpAddress": null, "launchtime": 0, "message": "", "cloudHostId": "i-1"}]}]}),
    ] {
        assert!(!validator.is_valid(&bad), "{bad}");
    }
}

#[tokio::test]
async fn returning_a_machine_twice_or_one_already_leaving_lowers_capacity_once_at_most() {
    let (plugin, seen) = plugin();
    // A's machine named twice (by host name, by id); D's machine already being returned; C's
    // machine that AWS reclaimed (not replaced: giving it back lowers capacity for it, once).
    let input = json!({"machines": [
        {"name": host("i-0a00000000000001a")},
        {"machineId": "i-0a00000000000001a"},
        {"name": host("i-0d00000000000002d"), "machineId": "i-0d00000000000002d"},
        {"name": host("i-0c00000000000002c"), "machineId": "i-0c00000000000002c"},
    ]});
    let answer = plugin.answer(Verb::RequestReturnMachines, &input).await.unwrap();
    assert!(answer["message"].as_str().unwrap().starts_with("3 machine(s)"), "{answer}");
    let seen = seen.lock().unwrap();
    let capacity = |name: &str| {
        let path = format!("machinerequests/{name}");
        let i = seen.calls.iter().position(|c| c.starts_with("PATCH") && c.contains(&path)).unwrap();
        seen.bodies[i]["spec"]["capacity"].clone()
    };
    assert_eq!(capacity(A), 1, "2 - the one machine's weight, once");
    assert_eq!(capacity(D), 1, "already leaving: not counted again");
    assert_eq!(capacity(C), 1, "lost and not replaced: the return lowers capacity for it");
}

#[tokio::test]
async fn a_return_id_that_cannot_be_a_label_is_simply_unknown() {
    let (plugin, seen) = plugin();
    let answer = plugin.answer(Verb::GetRequestStatus, &json!({"requestId": "ret-not/a label"})).await.unwrap();
    assert_eq!(answer["requests"][0]["status"], "complete_with_error");
    assert!(seen.lock().unwrap().calls.is_empty(), "no call with an invalid label selector");
}
