//! `deploy/iam-policy.json` grants exactly what the code calls. Every AWS operation the provider
//! code sends (`<client>.<operation>()` on the EC2, SSM, IAM, Auto Scaling and SQS clients in
//! `src/provider/aws/`) must be allowed, and every action the policy allows must be one the code
//! sends — or one AWS authorizes on the caller's behalf while it does (tags at creation, roles
//! passed, service-linked roles made on first use), each listed below with the call that needs it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// Actions no call names but AWS checks while the calls run.
const AUTHORIZED_ALONG: &[(&str, &str)] = &[
    ("ec2:CreateTags", "RunInstances, CreateFleet, RequestSpotFleet and CreateLaunchTemplate tag at creation"),
    ("autoscaling:CreateOrUpdateTags", "CreateAutoScalingGroup with tags"),
    ("iam:PassRole", "instance profiles in launches and launch templates; the Spot Fleet role"),
    ("iam:CreateServiceLinkedRole", "EC2 Fleet, Spot Fleet and Auto Scaling make their roles on first use"),
];

/// Batch calls IAM authorizes as the single call's action.
const BATCHED: &[(&str, &str)] = &[("sqs:DeleteMessageBatch", "sqs:DeleteMessage")];

/// `create_auto_scaling_group` -> `CreateAutoScalingGroup`.
fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Every `service:Action` the provider code calls.
fn called() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/provider/aws");
    let call = regex::Regex::new(r"\.(ec2|ssm|iam|autoscaling|sqs)\s*\.\s*([a-z_]+)\(").unwrap();
    let mut actions = BTreeSet::new();
    // The provider's own file and those of its folders (handlers, state, calls).
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            files.push(path);
        }
    }
    assert!(files.len() >= 20, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(path).unwrap();
        // Unit tests build requests offline; they call nothing.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for c in call.captures_iter(code) {
            let action = format!("{}:{}", &c[1], pascal(&c[2]));
            // A batch call is authorized as its single form.
            let action = BATCHED.iter().find(|(batch, _)| *batch == action).map_or(action, |(_, one)| one.to_string());
            actions.insert(action);
        }
    }
    actions
}

/// Every action the policy allows.
fn granted() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/iam-policy.json");
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut actions = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow");
        match &statement["Action"] {
            Value::String(a) => drop(actions.insert(a.clone())),
            Value::Array(list) => actions.extend(list.iter().map(|a| a.as_str().unwrap().to_string())),
            other => panic!("unexpected Action {other}"),
        }
    }
    actions
}

#[test]
fn the_policy_grants_every_call_the_code_makes_and_nothing_else() {
    let called = called();
    assert!(called.len() > 30, "the scan found the calls: {called:?}");
    let granted = granted();
    let along: BTreeSet<String> = AUTHORIZED_ALONG.iter().map(|(a, _)| a.to_string()).collect();
    let missing: Vec<&String> = called.difference(&granted).collect();
    assert!(missing.is_empty(), "the code calls what deploy/iam-policy.json does not grant: {missing:?}");
    let unused: Vec<&String> = granted.difference(&called).filter(|a| !along.contains(*a)).collect();
    assert!(unused.is_empty(), "deploy/iam-policy.json grants what the code never calls: {unused:?}");
    for action in &along {
        assert!(granted.contains(action), "{action} is needed along the calls but not granted");
    }
}

#[test]
fn roles_are_passed_only_to_ec2_and_spot_fleet_and_never_on_every_role() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/iam-policy.json");
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let passing: Vec<&Value> =
        policy["Statement"].as_array().unwrap().iter().filter(|s| s["Action"] == "iam:PassRole").collect();
    assert!(!passing.is_empty());
    for s in passing {
        let resources: Vec<&str> = match &s["Resource"] {
            Value::String(r) => vec![r.as_str()],
            Value::Array(list) => list.iter().map(|r| r.as_str().unwrap()).collect(),
            other => panic!("{other}"),
        };
        assert!(resources.iter().all(|r| *r != "*" && r.contains(":role/")), "{}: {resources:?}", s["Sid"]);
        let service = s["Condition"]["StringEquals"]["iam:PassedToService"].as_str().unwrap();
        assert!(["ec2.amazonaws.com", "spotfleet.amazonaws.com"].contains(&service), "{service}");
    }
}

#[test]
fn destructive_actions_are_limited_to_the_operators_resources() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/iam-policy.json");
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let destructive = regex::Regex::new(r":(Terminate|Delete|Cancel|Modify|Update)").unwrap();
    for statement in policy["Statement"].as_array().unwrap() {
        let actions: Vec<&str> = match &statement["Action"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(list) => list.iter().map(|a| a.as_str().unwrap()).collect(),
            _ => vec![],
        };
        if actions.iter().any(|a| destructive.is_match(a)) {
            // Deleting a message read from the interruption queue: that queue only.
            if actions.iter().all(|a| a.starts_with("sqs:")) {
                assert_eq!(statement["Resource"], "arn:aws:sqs:*:*:orb-operator-interruptions", "{}", statement["Sid"]);
                continue;
            }
            let condition = statement["Condition"]["StringLike"]["aws:ResourceTag/orb.dev/cluster"].as_str();
            assert_eq!(condition, Some("*"), "{} must be conditioned on the orb.dev/cluster tag", statement["Sid"]);
        }
    }
}
