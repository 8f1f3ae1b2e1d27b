//! Installing as the README says, against a real Kubernetes API server (`ORB_E2E_KUBECONFIG`):
//! `kubectl apply -f crds/` and `kubectl apply -k deploy/` are accepted exactly as committed
//! (the API server compiles every `pattern` with Go's RE2 and costs every CEL rule, which no
//! offline check fully reproduces), and admission then refuses a malformed `imageId` naming the
//! field. `helm install` of the chart is `e2e_chart`'s. Skips with a message when no cluster is
//! given.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use kube::Api;
use kube::api::PostParams;
use orb_operator::api::MachineTemplate;
use serde::Deserialize;
use std::path::Path;
use std::process::{Command, Output};
use support::cluster::{self, TestNamespace};

fn kubectl(kubeconfig: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl on PATH (the end-to-end tests use it as users do)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn succeeds(kubeconfig: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(kubeconfig, args, stdin);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubectl {}: {stdout}{stderr}", args.join(" "));
    stdout.into_owned()
}

/// deploy/'s objects other than the CRDs (other tests use them) and the namespace (a bare API
/// server has no controller to finish deleting one), as one YAML stream.
fn deploy_objects_to_remove(kubeconfig: &str) -> String {
    let rendered = succeeds(kubeconfig, &["kustomize", "deploy/"], None);
    serde_yaml::Deserializer::from_str(&rendered)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|o| !matches!(o["kind"].as_str(), Some("CustomResourceDefinition" | "Namespace")))
        .map(|o| serde_yaml::to_string(&o).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_of_crds_and_deploy_is_accepted_against_a_real_cluster() {
    let Some(path) = cluster::kubeconfig("kubectl_apply_of_crds_and_deploy_is_accepted_against_a_real_cluster") else {
        return;
    };
    let applied = succeeds(&path, &["apply", "-f", "crds/"], None);
    assert!(applied.contains("machinetemplates.orb.dev") && applied.contains("machinerequests.orb.dev"), "{applied}");
    succeeds(
        &path,
        &[
            "wait",
            "--for",
            "condition=Established",
            "--timeout",
            "60s",
            "crd/machinetemplates.orb.dev",
            "crd/machinerequests.orb.dev",
        ],
        None,
    );

    let applied = succeeds(&path, &["apply", "-k", "deploy/"], None);
    let remove = deploy_objects_to_remove(&path);
    let deleted = kubectl(&path, &["delete", "--ignore-not-found", "--wait=false", "-f", "-"], Some(&remove));
    for kind in
        ["customresourcedefinition", "clusterrole.rbac", "deployment.apps/orb-operator", "configmap/orb-operator"]
    {
        assert!(applied.contains(kind), "`kubectl apply -k deploy/` did not apply {kind}: {applied}");
    }
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));

    // Admission, with the CRDs as kubectl applied them, still refuses a malformed imageId by name.
    let client = cluster::client(&path).await;
    let ns = TestNamespace::create(&client, &path, "orb-e2e-install").await;
    let templates: Api<MachineTemplate> = Api::namespaced(client.clone(), &ns.name);
    let mut template: MachineTemplate = cluster::example("sim/template.yaml");
    for (name, image) in [
        ("short-ami", "ami-123".to_string()),
        ("long-parameter", format!("resolve:ssm:/{}", "a".repeat(2036))),
        ("not-an-image", "ubuntu-22.04".to_string()),
    ] {
        template.metadata.name = Some(name.into());
        template.spec.image_id = Some(image.clone());
        let error = templates.create(&PostParams::default(), &template).await.unwrap_err().to_string();
        assert!(error.contains("spec.imageId"), "{image:.40}: {error}");
    }
    // And admits both forms it documents.
    for (name, image) in
        [("ami", "ami-0123456789abcdef0"), ("ssm", "resolve:ssm:/aws/service/ami-amazon-linux-latest/x")]
    {
        template.metadata.name = Some(name.into());
        template.spec.image_id = Some(image.into());
        templates.create(&PostParams::default(), &template).await.unwrap_or_else(|e| panic!("{image}: {e}"));
    }
}
