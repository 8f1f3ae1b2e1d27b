//! The generated CRDs, checked offline: committed files are up to date, the schemas are
//! structural, every CEL rule compiles and is bounded, and the rules admit and refuse what the
//! API server would (evaluated with kube's client-side CEL validator, defaults applied first).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use kube::core::cel::{Validator, compile_schema, estimate_rule_cost};
use orb_operator::api::{crd_files, crds_yaml};
use serde_json::{Value, json};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn crd(file: &str) -> Value {
    let text = std::fs::read_to_string(root().join("crds").join(file)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn schema_of(file: &str) -> Value {
    crd(file)["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn template_schema() -> Value {
    schema_of("orb.dev_machinetemplates.yaml")
}
fn request_schema() -> Value {
    schema_of("orb.dev_machinerequests.yaml")
}

#[test]
fn committed_crds_equal_the_generated_ones() {
    for (file, generated) in crd_files().unwrap() {
        let committed = std::fs::read_to_string(root().join("crds").join(file)).unwrap_or_default();
        assert!(committed == generated, "crds/{file} is stale: run `make crds` and commit the result");
    }
    // The chart carries them (Helm installs its crds/ first).
    for (file, generated) in crd_files().unwrap() {
        let committed = std::fs::read_to_string(root().join("charts/orb-operator/crds").join(file)).unwrap_or_default();
        assert!(committed == generated, "charts/orb-operator/crds/{file} is stale: run `make crds`");
    }
    // The kustomize base carries them too (kustomize loads nothing outside its directory).
    let committed = std::fs::read_to_string(root().join("deploy/crds.yaml")).unwrap_or_default();
    assert!(committed == crds_yaml().unwrap(), "deploy/crds.yaml is stale: run `make crds` and commit the result");
}

#[test]
fn the_crd_command_prints_exactly_the_committed_files() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orb-operator")).arg("crd").output().unwrap();
    assert!(out.status.success());
    let committed: String = ["orb.dev_machinetemplates.yaml", "orb.dev_machinerequests.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(root().join("crds").join(f)).unwrap())
        .collect();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
    assert_eq!(crds_yaml().unwrap(), committed);
}

/// Walks every schema node, calling `visit(path, node)`.
fn walk(path: &str, node: &Value, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk(&format!("{path}.{k}"), v, visit);
        }
    }
    if let Some(items) = node.get("items") {
        walk(&format!("{path}[]"), items, visit);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(&format!("{path}{{}}"), extra, visit);
    }
}

#[test]
fn schemas_are_structural() {
    for schema in [template_schema(), request_schema()] {
        let mut problems = vec![];
        walk("", &schema, &mut |path, node| {
            if node.get("type").and_then(Value::as_str).is_none() {
                problems.push(format!("{path}: no type"));
            }
            for forbidden in ["anyOf", "oneOf", "allOf", "not", "$ref", "x-kubernetes-preserve-unknown-fields"] {
                if node.get(forbidden).is_some() {
                    problems.push(format!("{path}: has {forbidden}"));
                }
            }
            if node.get("type") == Some(&json!("object"))
                && node.get("properties").is_some()
                && node.get("additionalProperties").is_some()
            {
                problems.push(format!("{path}: both properties and additionalProperties"));
            }
        });
        assert!(problems.is_empty(), "structural violations: {problems:#?}");
    }
}

/// Every `pattern` under `schema` with its field path (`spec.imageId`, `spec.subnetIds[]`).
fn patterns_of(schema: &Value) -> Vec<Value> {
    let mut found = vec![];
    walk("", schema, &mut |path, node| {
        if let Some(pattern) = node.get("pattern").and_then(Value::as_str) {
            found.push(json!({"field": path.trim_start_matches('.'), "pattern": pattern}));
        }
    });
    found
}

/// The Python of `make test`'s virtualenv with google-re2, or `None` outside CI.
fn python_with_re2() -> Option<std::path::PathBuf> {
    let candidates =
        [std::env::var_os("ORB_TEST_PYTHON").map(std::path::PathBuf::from), Some(root().join(".venv/bin/python"))];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|p| std::process::Command::new(p).args(["-c", "import re2"]).output().is_ok_and(|o| o.status.success()));
    assert!(found.is_some() || std::env::var_os("CI").is_none(), "google-re2 not installed; `make venv` installs it");
    found
}

/// The patterns RE2 refuses, as `field: error` lines, compiled by tests/crd/re2_patterns.py.
fn refused_by_re2(python: &Path, patterns: &[Value]) -> Vec<String> {
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .arg(root().join("tests/crd/re2_patterns.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped()) // RE2 logs each refusal there too
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&serde_json::to_vec(patterns).unwrap()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "re2_patterns.py failed: {}", String::from_utf8_lossy(&output.stderr));
    let refused: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    refused.iter().map(|r| format!("{}: {}", r["field"].as_str().unwrap(), r["error"].as_str().unwrap())).collect()
}

#[test]
fn every_pattern_in_every_generated_crd_compiles_under_re2_as_the_api_server_does() {
    let Some(python) = python_with_re2() else {
        eprintln!("SKIPPED every_pattern_in_every_generated_crd_compiles_under_re2: run `make venv` or `make test`");
        return;
    };
    let mut files = vec![];
    for dir in ["crds", "charts/orb-operator/crds"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = format!("{dir}/{}", path.file_name().unwrap().to_string_lossy());
            files.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    files.push(("deploy/crds.yaml".into(), std::fs::read_to_string(root().join("deploy/crds.yaml")).unwrap()));
    let mut checked = 0;
    for (file, text) in files {
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let crd: Value = serde::Deserialize::deserialize(doc).unwrap();
            for version in crd["spec"]["versions"].as_array().unwrap() {
                let patterns = patterns_of(&version["schema"]["openAPIV3Schema"]);
                checked += patterns.len();
                let refused = refused_by_re2(&python, &patterns);
                assert!(refused.is_empty(), "{file}: the API server would refuse these patterns: {refused:#?}");
            }
        }
    }
    assert!(checked >= 3 * 12, "only {checked} patterns found: is the walk still reaching them?");
}

#[test]
fn the_re2_check_refuses_a_repeat_count_over_1000_and_names_the_field() {
    let Some(python) = python_with_re2() else {
        eprintln!("SKIPPED the_re2_check_refuses_a_repeat_count_over_1000: run `make venv` or `make test`");
        return;
    };
    // The pattern every API server refused (issue 17): a repeat count of 2036.
    let mut schema = template_schema();
    schema["properties"]["spec"]["properties"]["imageId"]["pattern"] =
        json!(r"^(ami-[0-9a-f]{8}([0-9a-f]{9})?|resolve:ssm:[a-zA-Z0-9_.:\-/]{1,2036})$");
    let refused = refused_by_re2(&python, &patterns_of(&schema));
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(refused[0].starts_with("spec.imageId: "), "{refused:#?}");
    assert!(refused[0].contains("repetition"), "{refused:#?}");
    // What Go refuses beyond the cap, RE2 refuses too: lookaround and backreferences.
    for (pattern, field) in [(r"^(?=a)", "a"), (r"^(a)\1$", "b")] {
        let refused = refused_by_re2(&python, &[json!({"field": field, "pattern": pattern})]);
        assert_eq!(refused.len(), 1, "{pattern}: {refused:#?}");
    }
}

#[test]
fn every_value_a_cel_rule_can_reach_is_bounded() {
    for schema in [template_schema(), request_schema()] {
        let mut unbounded = vec![];
        let mut rules = 0;
        walk("", &schema, &mut |path, node| {
            if node.get("x-kubernetes-validations").is_none() {
                return;
            }
            // A rule on the whole object may only read the metadata the API server bounds
            // itself (a name is at most 253 characters); spec rules sit on the spec.
            if path.is_empty() {
                for rule in node["x-kubernetes-validations"].as_array().unwrap() {
                    let text = rule["rule"].as_str().unwrap();
                    assert!(
                        text.starts_with("self.metadata.name") && !text.contains("self.spec"),
                        "root rule `{text}`"
                    );
                }
            }
            let reach = if path.is_empty() { &json!({}) } else { node };
            walk(path, reach, &mut |inner, n| match n.get("type").and_then(Value::as_str) {
                Some("string")
                    if n.get("maxLength").is_none() && n.get("enum").is_none() && n.get("format").is_none() =>
                {
                    unbounded.push(format!("{inner}: string without maxLength"))
                }
                Some("array") if n.get("maxItems").is_none() => {
                    unbounded.push(format!("{inner}: list without maxItems"))
                }
                Some("object") if n.get("additionalProperties").is_some() && n.get("maxProperties").is_none() => {
                    unbounded.push(format!("{inner}: map without maxProperties"))
                }
                _ => {}
            });
            let compiled = compile_schema(node);
            for rule in node["x-kubernetes-validations"].as_array().unwrap() {
                rules += 1;
                let text = rule["rule"].as_str().unwrap();
                let warnings = estimate_rule_cost(text, &compiled);
                assert!(warnings.is_empty(), "{path}: rule `{text}`: {warnings:?}");
                assert!(
                    rule["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{path}: rule `{text}` has no message"
                );
            }
        });
        assert!(rules > 0);
        unbounded.sort();
        unbounded.dedup();
        assert!(unbounded.is_empty(), "unbounded values under CEL rules: {unbounded:#?}");
    }
}

#[test]
fn every_cel_rule_compiles() {
    let mut count = 0;
    for schema in [template_schema(), request_schema()] {
        walk("", &schema, &mut |path, node| {
            let compiled = compile_schema(
                &json!({"type": node["type"], "x-kubernetes-validations": node.get("x-kubernetes-validations").cloned().unwrap_or(json!([]))}),
            );
            let errors: Vec<_> = compiled.compilation_errors().iter().map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{path}: {errors:?}");
            count += compiled.validations.len();
        });
    }
    assert_eq!(count, 24, "a rule was added or lost: update this count deliberately");
}

fn template(spec: Value) -> Value {
    json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineTemplate", "metadata": {"name": "t"}, "spec": spec})
}

fn request(spec: Value) -> Value {
    json!({"apiVersion": "orb.dev/v1alpha1", "kind": "MachineRequest", "metadata": {"name": "r"}, "spec": spec})
}

fn admission_errors(schema: &Value, object: &Value) -> Vec<String> {
    match Validator::new().validate(schema, object, None) {
        Ok(()) => vec![],
        Err(errors) => errors.into_vec().into_iter().map(|e| format!("{}: {}", e.field_path, e.message)).collect(),
    }
}

/// A valid template with the fields of `patch` replaced.
fn with(patch: Value) -> Value {
    let mut spec = valid_template();
    for (k, v) in patch.as_object().unwrap() {
        spec[k] = v.clone();
    }
    template(spec)
}

fn valid_template() -> Value {
    json!({"imageId": "ami-0123456789abcdef0", "instanceTypes": [{"type": "m5.large"}]})
}

#[test]
fn the_examples_are_admitted() {
    for dir in std::fs::read_dir(root().join("examples")).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let object: Value = serde::Deserialize::deserialize(doc).unwrap();
                let schema = match object["kind"].as_str() {
                    Some("MachineTemplate") => template_schema(),
                    Some("MachineRequest") => request_schema(),
                    other => panic!("{}: unexpected kind {other:?}", path.display()),
                };
                let errors = all_admission_errors(&schema, &object);
                assert!(errors.is_empty(), "{} refused: {errors:?}", path.display());
            }
        }
    }
}

#[test]
fn admission_refuses_bad_templates_naming_the_field() {
    let cases = [
        (with(json!({"onDemandPercent": 150})), "onDemandPercent"),
        (with(json!({"onDemandPercent": -1})), "onDemandPercent"),
        (with(json!({"instanceTypes": [{"type": "m5.large", "weight": 0}]})), "weight"),
        (with(json!({"instanceTypes": []})), "instanceTypes"),
        (template(json!({"instanceTypes": [{"type": "m5.large"}]})), "imageId"),
        (with(json!({"fleetType": "instant"})), "fleetType"),
        (with(json!({"api": "EC2Fleet", "spotFleetRole": "arn:aws:iam::1:role/x"})), "spotFleetRole"),
        (with(json!({"api": "SpotFleet", "fleetType": "instant"})), "fleetType instant"),
        (with(json!({"tags": {"orb.dev/request": "mine"}})), "orb.dev/"),
        (with(json!({"launchTemplate": {"id": "lt-1", "name": "both"}})), "launchTemplate"),
        (with(json!({"instanceRequirements": {"vCpuCount": {"min": 4}, "memoryMiB": {}}})), "not both"),
        (requirements(json!({"vCpuCount": {"min": 8, "max": 4}, "memoryMiB": {}})), "vCpuCount"),
        (requirements(json!({"vCpuCount": {"min": -1}, "memoryMiB": {}})), "vCpuCount"),
        (requirements(json!({"vCpuCount": {}, "memoryMiB": {"min": 4096, "max": 1024}})), "memoryMiB"),
        (
            requirements(json!({"vCpuCount": {}, "memoryMiB": {}, "memoryGiBPerVCpu": {"min": 8, "max": 2}})),
            "memoryGiBPerVCpu",
        ),
        (requirements(json!({"vCpuCount": {}, "memoryMiB": {}, "architectures": ["sparc"]})), "architectures"),
        (
            requirements(
                json!({"vCpuCount": {}, "memoryMiB": {}, "allowedInstanceTypes": ["m5.*"], "excludedInstanceTypes": ["t3*"]}),
            ),
            "excludedInstanceTypes",
        ),
        (
            requirements(json!({"vCpuCount": {}, "memoryMiB": {}, "allowedInstanceTypes": ["M5 large"]})),
            "allowedInstanceTypes",
        ),
        (requirements(json!({"vCpuCount": {}, "memoryMiB": {}, "weightBy": "gpu"})), "weightBy"),
        (requirements(json!({"memoryMiB": {}})), "vCpuCount"),
    ];
    for (object, field) in cases {
        let errors = all_admission_errors(&template_schema(), &object);
        assert!(errors.iter().any(|e| e.contains(field)), "{object}: expected an error naming {field}, got {errors:?}");
    }
}

/// A template that describes its machines by `requirements` instead of listing types.
fn requirements(requirements: Value) -> Value {
    template(json!({"imageId": "ami-1", "instanceRequirements": requirements}))
}

#[test]
fn admission_accepts_what_the_rules_allow() {
    let ok = [
        requirements(
            json!({"vCpuCount": {"min": 4, "max": 8}, "memoryMiB": {"min": 16384}, "memoryGiBPerVCpu": {"min": 2.5},
            "architectures": ["x86_64"], "cpuManufacturers": ["intel", "amd"], "instanceGenerations": ["current"],
            "burstablePerformance": "excluded", "bareMetal": "excluded", "localStorage": "included",
            "acceleratorCount": {"max": 0}, "excludedInstanceTypes": ["t3*", "*.metal"], "weightBy": "vcpu"}),
        ),
        requirements(json!({"vCpuCount": {}, "memoryMiB": {}})),
        template(valid_template()),
        template(json!({"launchTemplate": {"name": "base"}})),
        template(
            json!({"api": "EC2Fleet", "fleetType": "maintain", "imageId": "resolve:ssm:/aws/x", "instanceTypes": [{"type": "m5.large", "weight": 4}]}),
        ),
        template(
            json!({"api": "SpotFleet", "fleetType": "request", "spotFleetRole": "arn:aws:iam::1:role/x", "imageId": "ami-1", "instanceTypes": [{"type": "c5.large"}], "priceType": "heterogeneous", "onDemandPercent": 100}),
        ),
        template(
            json!({"imageId": "ami-1", "instanceTypes": [{"type": "c5.large"}], "tags": {"team": "grid", "orb.devx": "fine"}}),
        ),
    ];
    for object in ok {
        let errors = admission_errors(&template_schema(), &object);
        assert!(errors.is_empty(), "{object} refused: {errors:?}");
    }
}

#[test]
fn admission_checks_requests() {
    let base = || json!({"templateRef": {"name": "t"}, "capacity": 3});
    let mut bad_capacity = base();
    bad_capacity["capacity"] = json!(-1);
    let mut bad_ids = base();
    bad_ids["returnMachines"] = json!(["i-0123456789abcdef0", "web-1"]);
    let mut bad_timeout = base();
    bad_timeout["fulfilmentTimeout"] = json!("10 minutes");
    let mut too_big = base();
    too_big["capacity"] = json!(1001);
    for (spec, field) in [
        (bad_capacity, "capacity"),
        (too_big, "capacity must be at most 1000"),
        (bad_ids, "returnMachines"),
        (bad_timeout, "fulfilmentTimeout"),
    ] {
        let errors = admission_errors(&request_schema(), &request(spec.clone()));
        assert!(errors.iter().any(|e| e.contains(field)), "{spec}: expected an error naming {field}, got {errors:?}");
    }
    let mut good = base();
    good["capacity"] = json!(0);
    good["returnMachines"] = json!(["i-0123456789abcdef0", "i-01234567"]);
    good["fulfilmentTimeout"] = json!("1h30m");
    assert!(admission_errors(&request_schema(), &request(good.clone())).is_empty());
    good["capacity"] = json!(1000);
    let mut longest = request(good);
    longest["metadata"]["name"] = json!("r".repeat(236));
    assert!(admission_errors(&request_schema(), &longest).is_empty());
    // One character more and the Events about it could not be named after it.
    longest["metadata"]["name"] = json!("r".repeat(237));
    let errors = admission_errors(&request_schema(), &longest);
    assert!(errors.iter().any(|e| e.contains("metadata.name must be at most 236")), "{errors:?}");
}

#[test]
fn the_scale_subresource_and_columns_are_declared() {
    let mr = crd("orb.dev_machinerequests.yaml");
    let version = &mr["spec"]["versions"][0];
    assert_eq!(version["subresources"]["scale"]["specReplicasPath"], ".spec.capacity");
    assert_eq!(version["subresources"]["scale"]["statusReplicasPath"], ".status.fulfilledCapacity");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> =
        version["additionalPrinterColumns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Template", "API", "Capacity", "Fulfilled", "Phase", "Age"]);
    assert_eq!(mr["spec"]["names"]["shortNames"], json!(["mr"]));
    assert_eq!(mr["spec"]["names"]["categories"], json!(["orb"]));
    let mt = crd("orb.dev_machinetemplates.yaml");
    assert_eq!(mt["spec"]["names"]["shortNames"], json!(["mt"]));
}

/// What Kubernetes 1.26, the oldest supported version, does not know in a CRD: rule fields added
/// later (`messageExpression` 1.27, `reason` and `fieldPath` 1.28, `optionalOldSelf` 1.30) and
/// CEL libraries added later. The API server refuses the whole CRD over one of them.
#[test]
fn the_crds_use_nothing_newer_than_kubernetes_1_26() {
    const RULE_FIELDS_OF_1_26: &[&str] = &["rule", "message"];
    const NEWER_CEL: &[&str] = &[
        "isQuantity(",
        "quantity(",
        "ip(",
        "cidr(",
        "isIP(",
        "isCIDR(",
        "format.",
        "semver(",
        "sets.",
        ".?",
        "optional.",
    ];
    let mut problems = vec![];
    for schema in [template_schema(), request_schema()] {
        walk("", &schema, &mut |path, node| {
            for rule in node.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
                for key in rule.as_object().unwrap().keys() {
                    if !RULE_FIELDS_OF_1_26.contains(&key.as_str()) {
                        problems.push(format!("{path}: x-kubernetes-validations field `{key}` is newer than 1.26"));
                    }
                }
                let text = rule["rule"].as_str().unwrap();
                for newer in NEWER_CEL {
                    if text.contains(newer) {
                        problems.push(format!("{path}: rule `{text}` uses `{newer}`, newer than 1.26"));
                    }
                }
            }
        });
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Errors the API server's OpenAPI schema validation gives (types, patterns, lengths, ranges,
/// enums), checked with a JSON-schema validator over the CRD's schema.
fn schema_errors(schema: &Value, object: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).expect("the CRD schema is a valid JSON schema");
    validator.iter_errors(object).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

/// Everything admission says about `object`: schema errors and CEL rule errors.
fn all_admission_errors(schema: &Value, object: &Value) -> Vec<String> {
    let mut errors = schema_errors(schema, object);
    errors.extend(admission_errors(schema, object));
    errors
}

#[test]
fn admission_refuses_what_aws_would_refuse_naming_the_field() {
    let cases = [
        (with(json!({"maxSpotPrice": "cheap"})), "maxSpotPrice"),
        (with(json!({"tags": {"aws:cloudformation:stack-name": "x"}})), "tags"),
        (with(json!({"tags": {"AWS:x": "x"}})), "tags"),
        (
            with(json!({"tags": (0..46).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()})),
            "tags",
        ),
        (with(json!({"imageId": "ubuntu-22.04"})), "imageId"),
        (with(json!({"subnetIds": ["subnet-0123abcd", "subnet-nope"]})), "subnetIds/1"),
        (with(json!({"securityGroupIds": ["default"]})), "securityGroupIds/0"),
        (with(json!({"instanceTypes": [{"type": "large"}]})), "instanceTypes/0/type"),
        (with(json!({"rootVolume": {"type": "gp9"}})), "rootVolume/type"),
        (with(json!({"rootVolume": {"iops": 5}})), "rootVolume/iops"),
        (with(json!({"launchTemplate": {"name": "base", "version": "latest"}})), "launchTemplate/version"),
        (with(json!({"allocationStrategy": "cheapest"})), "allocationStrategy"),
        (with(json!({"userData": "x".repeat(16385)})), "userData"),
    ];
    for (object, field) in cases {
        let errors = all_admission_errors(&template_schema(), &object);
        assert!(errors.iter().any(|e| e.contains(field)), "{field}: expected an error naming it, got {errors:?}");
    }
    assert!(all_admission_errors(&template_schema(), &template(valid_template())).is_empty());
}

#[test]
fn fulfilment_timeouts_are_bounded_at_admission() {
    for (timeout, ok) in [
        ("30s", true),
        ("15m", true),
        ("168h", true),
        ("0s", false),
        ("29s", false),
        ("169h", false),
        ("9999999999h", false),
    ] {
        let object = request(json!({"templateRef": {"name": "t"}, "capacity": 1, "fulfilmentTimeout": timeout}));
        let errors = all_admission_errors(&request_schema(), &object);
        assert_eq!(errors.is_empty(), ok, "{timeout}: {errors:?}");
        if !ok {
            assert!(errors.iter().any(|e| e.contains("fulfilmentTimeout")), "{errors:?}");
        }
    }
}

mod invalid_templates {
    //! Property: a template with any one field AWS would refuse is refused at admission naming
    //! the field, is held by validation (`Ready=False` naming `spec.<field>`), and launches
    //! nothing when a request uses it.
    use super::*;
    use orb_operator::api::conditions::{self, Cond};
    use orb_operator::api::{MachineTemplate, MachineTemplateSpec, MachineTemplateStatus};
    use orb_operator::config::SimSettings;
    use orb_operator::controller::template::readiness;
    use orb_operator::provider::sim::SimProvider;
    use orb_operator::provider::{AnyProvider, Registry};
    use proptest::prelude::*;
    use support::driver::{MemoryStatus, converge, request};

    fn base() -> Value {
        json!({"imageId": "ami-0123456789abcdef0", "instanceTypes": [{"type": "m5.large", "weight": 1}],
               "subnetIds": ["subnet-0123abcd"], "securityGroupIds": ["sg-0123abcd"]})
    }

    /// One invalid field: (its camelCase name, the patch that breaks it).
    fn one_bad_field() -> impl Strategy<Value = (&'static str, Value)> {
        let word = "[a-z]{1,10}";
        prop_oneof![
            word.prop_map(|w| ("maxSpotPrice", json!({"maxSpotPrice": w}))),
            "[a-z]{3,12}".prop_map(|w| ("imageId", json!({"imageId": w}))),
            "[g-z]{3,8}".prop_map(|w| ("subnetIds", json!({"subnetIds": [format!("subnet-{w}")]}))),
            word.prop_map(|w| ("securityGroupIds", json!({"securityGroupIds": [w]}))),
            ("(aws|AWS|Aws):[a-z]{1,10}", word).prop_map(|(k, v)| ("tags", json!({"tags": {k: v}}))),
            word.prop_map(|k| ("tags", json!({"tags": {format!("orb.dev/{k}"): "x"}}))),
            (46usize..60).prop_map(|n| (
                "tags",
                json!({"tags": (0..n).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()})
            )),
            "[a-z]{2,10}".prop_map(|t| ("instanceTypes", json!({"instanceTypes": [{"type": t}]}))),
            (-5i32..1).prop_map(|w| ("instanceTypes", json!({"instanceTypes": [{"type": "m5.large", "weight": w}]}))),
            (0i32..100).prop_map(|iops| ("rootVolume", json!({"rootVolume": {"iops": iops}}))),
            "[a-z]{4,6}".prop_map(|t| ("rootVolume", json!({"rootVolume": {"type": t}}))),
            "[a-z]{1,8}".prop_map(|v| ("launchTemplate", json!({"launchTemplate": {"name": "base", "version": v}}))),
            (101i32..1000).prop_map(|p| ("onDemandPercent", json!({"onDemandPercent": p}))),
            word.prop_map(|s| ("allocationStrategy", json!({"allocationStrategy": format!("{s}Price")}))),
            (16385usize..17000).prop_map(|n| ("userData", json!({"userData": "x".repeat(n)}))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]
        #[test]
        fn invalid_templates_are_refused_or_held_and_launch_nothing((field, patch) in one_bad_field()) {
            let mut spec = base();
            for (k, v) in patch.as_object().unwrap() {
                spec[k] = v.clone();
            }
            let errors = all_admission_errors(&template_schema(), &template(spec.clone()));
            prop_assert!(errors.iter().any(|e| e.contains(field)), "admission let {patch} through: {errors:?}");

            // Validation holds it even if it reached the cluster past admission.
            let spec: MachineTemplateSpec = serde_json::from_value(spec).unwrap();
            let sim = || AnyProvider::Sim(SimProvider::new(SimSettings { pending_delay: "0s".into(), ..Default::default() }));
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (verdict, launched) = runtime.block_on(async {
                let registry = Registry::with([("default".to_string(), sim())]);
                let mut template = MachineTemplate::new("workers", spec);
                template.metadata.generation = Some(1);
                template.metadata.namespace = Some("grid".into());
                let verdict = readiness(&template, &registry).await;
                let mut status = MachineTemplateStatus::default();
                let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
                conditions::upsert(&mut status.conditions, verdict.clone(), Some(1), &now);
                template.status = Some(status);
                let provider = registry.get("default").unwrap();
                let (mut mr, sink) = (request("bad", 2), MemoryStatus::default());
                let (status, _) = converge(&mut mr, &template, provider, &sink, 3).await;
                (verdict, status.machines.len())
            });
            let Cond { status, message, .. } = verdict;
            prop_assert!(!status, "validation passed {patch}");
            prop_assert!(message.contains(&format!("spec.{field}")), "validation of {patch} does not name spec.{field}: {message}");
            prop_assert_eq!(launched, 0);
        }
    }
}

#[test]
fn the_kustomize_base_lists_the_crds_and_the_operator() {
    let read = |path: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
    };
    let resources = |v: &serde_yaml::Value| -> Vec<String> {
        v["resources"].as_sequence().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(resources(&read("deploy/kustomization.yaml")), ["crds.yaml", "operator.yaml"]);
}
