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

fn machine(id: &str, state: &str, result: &str, extra: Value) -> Value {
    let mut m = json!({"instanceId": id, "state": state,
        "result": result, "instanceType": "m5.large", "capacityType": "on-demand", "weight": 1, "zone": "us-east-1a",
        "privateIp": "10.0.0.7", "publicIp": null, "launchTime": "2026-11-26T10:01:40Z"});
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
        "labels": {"orb.dev/created-by": "hostfactory"}});
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
    ]
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
    (Plugin { client: Client::new(service, NS), namespace: NS.into(), template_selector: None }, seen)
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
                    match query.split('&').find_map(|kv| kv.strip_prefix("labelSelector=")) {
                        Some(selector) if selector.contains('=') => {
                            let (k, v) = selector.split_once('=').unwrap();
                            labels[k] == v
                        }
                        Some(selector) => !labels[selector].is_null(),
                        None => panic!("an unselected list of every request: {query}"),
                    }
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
    assert_eq!(created[0]["metadata"]["labels"]["orb.dev/created-by"], "hostfactory");
    assert!(created[0]["metadata"]["name"].as_str().unwrap().starts_with("req-"));
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
    let error = plugin
        .answer(
            Verb::RequestReturnMachines,
            &json!({"machines": [{"name": "host", "machineId": "i-0999999999999999f"}]}),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("belongs to no MachineRequest"), "{error}");
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
    // The single-object form answers the same.
    let one = plugin.answer(Verb::GetRequestStatus, &json!({"requests": {"requestId": A}})).await.unwrap();
    assert_eq!(one["requests"][0], answer["requests"][0]);
    let calls = seen.lock().unwrap().calls.clone();
    assert!(calls.iter().any(|c| c.contains(&format!("labelSelector=hostfactory.orb.dev%2F{RET}"))), "{calls:?}");
}

#[tokio::test]
async fn request_return_machines_lowers_capacity_and_records_the_return_in_the_cluster() {
    let (plugin, seen) = plugin();
    // One machine named as HostFactory knows it, one by id only.
    let input = json!({"machines": [
        {"name": format!("{A}-0a00000000000002a"), "machineId": "i-0a00000000000002a"},
        {"machineId": "i-0b00000000000001b"},
    ]});
    let answer = plugin.answer(Verb::RequestReturnMachines, &input).await.unwrap();
    shaped("requestReturnMachines", &answer);
    golden("requestReturnMachines", &stable(answer.clone()));
    let ret = answer["requestId"].as_str().unwrap();
    let seen = seen.lock().unwrap();
    let patches: Vec<&Value> = seen.bodies.iter().filter(|b| b.get("spec").is_some()).collect();
    assert_eq!(patches.len(), 2, "one patch per owning request");
    let a = patches.iter().find(|p| p["spec"]["returnMachines"] == json!(["i-0a00000000000002a"])).expect("A's patch");
    assert_eq!(a["spec"]["capacity"], 1, "capacity lowered by the machine's weight");
    assert_eq!(a["metadata"]["labels"][format!("hostfactory.orb.dev/{ret}")], "return");
    assert_eq!(a["metadata"]["annotations"][format!("hostfactory.orb.dev/{ret}")], "i-0a00000000000002a");
    assert_eq!(a["metadata"]["resourceVersion"], "7", "optimistic concurrency");
    // The owner by name was a get; the one by id only needed the label-selected list.
    assert!(seen.calls.iter().any(|c| c.contains(&format!("machinerequests/{A}"))));
    assert!(
        seen.calls.iter().any(|c| c.contains("labelSelector=orb.dev%2Fcreated-by%3Dhostfactory")),
        "{:?}",
        seen.calls
    );
}

#[tokio::test]
async fn get_return_requests_reports_machines_aws_took_back_and_returns_under_way() {
    let (plugin, _) = plugin();
    let input = json!({"machines": [{"name": "hf-host-7", "machineId": "i-0c00000000000002c"}]});
    let answer = plugin.answer(Verb::GetReturnRequests, &input).await.unwrap();
    shaped("getReturnRequests", &answer);
    golden("getReturnRequests", &answer);
    let listed: Vec<(&str, i64)> = answer["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["machine"].as_str().unwrap(), r["gracePeriod"].as_i64().unwrap()))
        .collect();
    assert!(listed.contains(&("hf-host-7", 0)), "the reclaimed machine, by HostFactory's own name: {listed:?}");
    assert!(listed.iter().any(|(name, grace)| name.ends_with("0d00000000000002d") && *grace == 300), "{listed:?}");
    assert_eq!(listed.len(), 2);
    let empty = plugin.answer(Verb::GetReturnRequests, &json!({})).await.unwrap();
    shaped("getReturnRequests", &empty);
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
    // A's machine named twice (by name, by id); D's machine already being returned; C's machine
    // that AWS reclaimed (the operator replaces it: giving it back acknowledges, lowers nothing).
    let input = json!({"machines": [
        {"name": format!("{A}-0a00000000000001a")},
        {"machineId": "i-0a00000000000001a"},
        {"name": format!("{D}-0d00000000000002d"), "machineId": "i-0d00000000000002d"},
        {"name": format!("{C}-0c00000000000002c"), "machineId": "i-0c00000000000002c"},
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
    assert_eq!(capacity(C), 2, "lost and replaced: acknowledged, not counted");
}

#[tokio::test]
async fn a_return_id_that_cannot_be_a_label_is_simply_unknown() {
    let (plugin, seen) = plugin();
    let answer = plugin.answer(Verb::GetRequestStatus, &json!({"requestId": "ret-not/a label"})).await.unwrap();
    assert_eq!(answer["requests"][0]["status"], "complete_with_error");
    assert!(seen.lock().unwrap().calls.is_empty(), "no call with an invalid label selector");
}
