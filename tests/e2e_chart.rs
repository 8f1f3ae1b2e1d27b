//! The Helm chart against a real Kubernetes API server (`ORB_E2E_KUBECONFIG`): `helm install`
//! (Helm's own code, helm-python-sdk) creates the CRDs, RBAC, config, Deployment and the rest;
//! then the operator binary runs out of cluster with a token of the chart's ServiceAccount —
//! exactly the RBAC the chart grants — and carries a request through its lifecycle (so the
//! RBAC suffices), is refused what the chart does not grant, and serves `/readyz` and `/metrics`
//! with real values. The pods the Deployment creates need not run (a cluster may have no
//! nodes): only the objects must be accepted.
//! Skips with a message when no cluster is given.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::Api;
use kube::api::{ListParams, PostParams};
use orb_operator::api::{MachineRequest, MachineTemplate};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::cluster::{self, Operator, TestNamespace};

/// Runs tests/chart/helm_release.py (Helm's own code) with `args`.
fn helm_output(args: &[&str]) -> std::process::Output {
    let python = std::env::var_os("ORB_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart/helm_release.py");
    Command::new(python).arg(script).args(args).output().expect("python runs")
}

fn helm(args: &[&str]) {
    let output = helm_output(args);
    assert!(
        output.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A kubeconfig like `admin` (same cluster, same CA; file paths made absolute by kube's
/// loader) whose current user is only `token`.
fn token_kubeconfig(admin: &str, token: &str, dir: &Path) -> String {
    let mut config = kube::config::Kubeconfig::read_from(admin).expect("readable kubeconfig");
    let context = config.current_context.clone().expect("a current context");
    let user = config
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref()?.user.clone())
        .expect("the current context's user");
    for entry in &mut config.auth_infos {
        if entry.name == user {
            entry.auth_info =
                Some(kube::config::AuthInfo { token: Some(token.to_string().into()), ..Default::default() });
        }
    }
    let path = dir.join("service-account.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

/// Uninstalls the release when dropped, also when the test fails: its ClusterRole and
/// ClusterRoleBinding outlive the namespace.
struct Installed<'a> {
    kubeconfig: &'a str,
    namespace: &'a str,
    release: &'a str,
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        let output = helm_output(&["uninstall", self.kubeconfig, self.namespace, self.release]);
        if !output.status.success() {
            eprintln!("helm uninstall {}: {}", self.release, String::from_utf8_lossy(&output.stderr));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_and_the_charts_rbac_run_the_operator_against_a_real_cluster() {
    let test = "helm_install_and_the_charts_rbac_run_the_operator_against_a_real_cluster";
    let Some(path) = cluster::kubeconfig(test) else { return };
    let client = cluster::client(&path).await;
    let ns = TestNamespace::create(&client, &path, "orb-e2e-helm").await;
    let release = format!("orb-{}", &ns.name[ns.name.len() - 8..]);
    // No replica: where the image can run, the chart's own pod would compete for the lease
    // with the operator this test starts.
    helm(&["install", &path, &ns.name, &release, r#"{"replicas": 0}"#]);
    let _installed = Installed { kubeconfig: &path, namespace: &ns.name, release: &release };

    // Every object is accepted.
    let full = format!("{release}-orb-operator");
    Api::<Deployment>::namespaced(client.clone(), &ns.name).get(&full).await.expect("the Deployment");
    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns.name).get(&full).await.expect("the config");
    // With clusterId left empty, the chart gives one unique to this cluster (from kube-system's
    // UID), so that two clusters sharing an AWS account never sweep each other.
    let config: serde_yaml::Value = serde_yaml::from_str(&config.data.unwrap()["config.yaml"]).unwrap();
    let kube_system = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()).get("kube-system").await;
    let uid = kube_system.unwrap().metadata.uid.unwrap();
    assert_eq!(config["clusterId"].as_str(), Some(format!("orb-{}", &uid[..12]).as_str()), "{config:?}");
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name).get(&full).await.expect("the ServiceAccount");
    Api::<ClusterRole>::all(client.clone()).get(&full).await.expect("the ClusterRole");
    Api::<Role>::namespaced(client.clone(), &ns.name).get(&format!("{full}-lease")).await.expect("the lease Role");
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name).list(&ListParams::default()).await;
    assert!(pdbs.unwrap().items.is_empty(), "no replica: no PodDisruptionBudget");
    // The chart's CRDs serve (installed by the chart, or already there).
    cluster::wait(
        &Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(
            client.clone(),
        ),
        "machinerequests.orb.dev",
        kube::runtime::wait::conditions::is_crd_established(),
        30,
    )
    .await;

    // The operator with the ServiceAccount's token: the chart's RBAC and nothing else.
    let request = TokenRequest {
        spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(3600), ..Default::default() },
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create_token_request(&full, &PostParams::default(), &request)
        .await
        .expect("a token for the chart's ServiceAccount")
        .status
        .unwrap()
        .token;
    let dir = tempfile::tempdir().unwrap();
    let limited = token_kubeconfig(&path, &token, dir.path());
    let as_operator = cluster::client(&limited).await;
    let secrets = Api::<Secret>::namespaced(as_operator.clone(), &ns.name).list(&ListParams::default()).await;
    assert!(
        matches!(secrets, Err(kube::Error::Api(ref s)) if s.code == 403),
        "secrets are not the operator's: {secrets:?}"
    );
    let config = ConfigMap {
        metadata: kube::api::ObjectMeta { name: Some("x".into()), ..Default::default() },
        ..Default::default()
    };
    let created =
        Api::<ConfigMap>::namespaced(as_operator.clone(), &ns.name).create(&PostParams::default(), &config).await;
    assert!(matches!(created, Err(kube::Error::Api(ref s)) if s.code == 403), "nor writing ConfigMaps: {created:?}");

    // The API server may take a moment to apply the RBAC just created.
    let ready = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mine = Api::<MachineRequest>::namespaced(as_operator.clone(), &ns.name);
        while mine.list(&ListParams::default().limit(1)).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "the chart's RBAC lets its ServiceAccount list MachineRequests");
    let env = [("ORB_PROVIDERS__DEFAULT__TYPE", "sim"), ("ORB_PROVIDERS__DEFAULT__PENDING_DELAY", "1s")];
    let operator = Operator::start(&limited, &ns.name, &env);
    let template: MachineTemplate = cluster::example("sim/template.yaml");
    let request: MachineRequest = cluster::example("sim/request.yaml");
    let (_uid, seen) = support::lifecycle::exercise(&client, &ns.name, template, request).await;
    assert!(seen.len() >= 6, "the lifecycle ran with the chart's RBAC: {seen:?}");

    // Ready, and /metrics says what happened.
    assert_eq!(operator.get("/readyz").await.0, 200);
    let (code, metrics) = operator.get("/metrics").await;
    assert_eq!(code, 200);
    for family in [
        r#"orb_reconciles_total{controller="request",result="ok"}"#,
        r#"orb_reconciles_total{controller="template",result="ok"}"#,
        "orb_reconcile_duration_seconds_count",
        "orb_request_time_to_fulfilled_seconds_count",
    ] {
        let value = metrics
            .lines()
            .find(|l| l.starts_with(family))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        assert!(value.is_some_and(|v| v > 0.0), "{family} has a real value:\n{metrics}");
    }
    drop(operator);
}
