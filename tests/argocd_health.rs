//! The Argo CD health checks in `deploy/argocd/` run in Lua 5.1 (Argo CD's gopher-lua speaks
//! 5.1) against sample objects as the operator writes them: each phase and condition maps to the
//! health Argo CD should show, and a status of an older generation is never Healthy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use mlua::{Lua, LuaSerdeExt, Table};
use serde_json::{Value, json};
use std::path::Path;

/// Runs a health check on `obj`: (status, message).
fn health(script: &str, obj: &Value) -> (String, String) {
    let code =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd").join(script)).unwrap();
    let lua = Lua::new();
    lua.globals().set("obj", lua.to_value(obj).unwrap()).unwrap();
    let hs: Table = lua.load(&code).set_name(script).eval().unwrap();
    (hs.get::<String>("status").unwrap(), hs.get::<Option<String>>("message").unwrap().unwrap_or_default())
}

fn cond(kind: &str, status: &str, message: &str, generation: i64) -> Value {
    json!({"type": kind, "status": status, "reason": "R", "message": message, "observedGeneration": generation})
}

fn request(phase: Option<&str>, observed: i64, conditions: Vec<Value>) -> Value {
    let mut obj =
        json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineRequest", "metadata": {"name": "r", "generation": 2}});
    if let Some(phase) = phase {
        obj["status"] = json!({"phase": phase, "observedGeneration": observed, "conditions": conditions});
    }
    obj
}

#[test]
fn machine_requests_are_healthy_only_when_fulfilled_at_their_generation() {
    let h = |obj: Value| health("machinerequest-health.lua", &obj);
    assert_eq!(h(request(None, 0, vec![])).0, "Progressing", "no status yet");
    let fulfilled = vec![cond("Ready", "True", "3/3 capacity units running", 2)];
    assert_eq!(
        h(request(Some("Fulfilled"), 2, fulfilled.clone())),
        ("Healthy".into(), "3/3 capacity units running".into())
    );
    assert_eq!(h(request(Some("Fulfilled"), 1, fulfilled)).0, "Progressing", "an older generation's verdict");
    let provisioning = vec![cond("Ready", "False", "1/3 running", 2), cond("Stalled", "False", "making progress", 2)];
    assert_eq!(h(request(Some("Provisioning"), 2, provisioning)).0, "Progressing");
    let partial = vec![cond("Ready", "False", "2/3 running; fulfilmentTimeout 15m passed", 2)];
    assert_eq!(
        h(request(Some("Partial"), 2, partial)),
        ("Degraded".into(), "2/3 running; fulfilmentTimeout 15m passed".into())
    );
    assert_eq!(h(request(Some("Failed"), 2, vec![])).0, "Degraded");
    let stalled = vec![cond("Ready", "False", "0/3", 2), cond("Stalled", "True", "MachineTemplate w not found", 2)];
    assert_eq!(h(request(Some("Pending"), 2, stalled)), ("Degraded".into(), "MachineTemplate w not found".into()));
    assert_eq!(h(request(Some("Deleting"), 2, vec![])).0, "Progressing");
}

#[test]
fn machine_templates_are_healthy_once_validated_and_degraded_when_only_an_edit_helps() {
    let h = |conditions: Vec<Value>| {
        let obj = json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineTemplate", "metadata": {"name": "t", "generation": 3},
                         "status": {"conditions": conditions}});
        health("machinetemplate-health.lua", &obj)
    };
    assert_eq!(h(vec![]).0, "Progressing", "not validated yet");
    assert_eq!(h(vec![cond("Ready", "True", "template valid", 3)]), ("Healthy".into(), "template valid".into()));
    assert_eq!(h(vec![cond("Ready", "True", "template valid", 2)]).0, "Progressing", "validated an older generation");
    let invalid = vec![cond("Ready", "False", "spec.imageId: no such image", 3), cond("Stalled", "True", "x", 3)];
    assert_eq!(h(invalid), ("Degraded".into(), "spec.imageId: no such image".into()));
    let throttled = vec![cond("Ready", "False", "ValidationUnavailable", 3), cond("Stalled", "False", "x", 3)];
    assert_eq!(h(throttled).0, "Progressing", "a check that could not run yet is retried, not a failure");
}

#[test]
fn the_checks_are_what_the_kustomization_installs() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/kustomization.yaml"))
        .unwrap();
    for (key, file) in [
        ("resource.customizations.health.orb.dev_MachineRequest", "machinerequest-health.lua"),
        ("resource.customizations.health.orb.dev_MachineTemplate", "machinetemplate-health.lua"),
    ] {
        assert!(text.contains(&format!("{key}={file}")), "{key} -> {file}");
    }
}
