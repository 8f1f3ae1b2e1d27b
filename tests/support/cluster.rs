//! End-to-end support against a real Kubernetes API server named by `ORB_E2E_KUBECONFIG`:
//! a client, CRDs applied and established, a unique namespace removed on drop, the operator
//! binary started for that namespace and stopped on drop, and condition waits (no sleeps).

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::{Api, Client, CustomResourceExt, Resource};
use orb_operator::api::{MachineRequest, MachineTemplate};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The kubeconfig path, or `None` after printing why the test is skipped.
pub fn kubeconfig(test: &str) -> Option<String> {
    match std::env::var("ORB_E2E_KUBECONFIG") {
        Ok(path) if !path.is_empty() => Some(path),
        _ => {
            eprintln!(
                "SKIPPED {test}: set ORB_E2E_KUBECONFIG to a kubeconfig of a real cluster (Kubernetes 1.26 or newer) to run it"
            );
            None
        }
    }
}

pub async fn client(path: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("usable kubeconfig");
    Client::try_from(config).expect("client")
}

/// Applies both CRDs and waits until the API server serves them.
pub async fn apply_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply("orb-e2e").force();
    for crd in [MachineTemplate::crd(), MachineRequest::crd()] {
        let name = crd.meta().name.clone().unwrap();
        crds.patch(&name, &pp, &Patch::Apply(&crd)).await.expect("CRD applied");
        wait(&crds, &name, conditions::is_crd_established(), 30).await;
    }
}

/// A namespace that is deleted (with everything in it) when dropped, also when the test fails.
pub struct TestNamespace {
    pub name: String,
    kubeconfig: String,
}

impl TestNamespace {
    pub async fn create(client: &Client, kubeconfig: &str, prefix: &str) -> Self {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("namespace created");
        Self { name, kubeconfig: kubeconfig.to_string() }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (kubeconfig, name) = (self.kubeconfig.clone(), self.name.clone());
        // Its own thread, runtime and client: the test's client is driven by the test's runtime,
        // which this drop may be blocking. Best effort; a failure leaves a namespace to delete.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Runtime::new() else { return };
            runtime.block_on(async move {
                let client = self::client(&kubeconfig).await;
                // A failed test may leave requests whose finalizer no operator will remove any
                // more; drop those finalizers so the namespace does not hang in Terminating.
                let requests: Api<MachineRequest> = Api::namespaced(client.clone(), &name);
                let no_finalizers = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
                for mr in requests.list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
                    let _ = requests
                        .patch(&mr.metadata.name.unwrap_or_default(), &PatchParams::default(), &no_finalizers)
                        .await;
                }
                if let Err(e) = Api::<Namespace>::all(client).delete(&name, &DeleteParams::default()).await {
                    eprintln!("could not delete test namespace {name}: {e}");
                }
            })
        })
        .join();
    }
}

/// The operator binary the end-to-end tests run: the release build, as users run it, when
/// `ORB_E2E_OPERATOR` names it (`tests/e2e/with-apiserver` builds it and sets it), else the
/// test build.
pub fn operator_binary() -> String {
    match std::env::var("ORB_E2E_OPERATOR") {
        Ok(path) => {
            assert!(std::path::Path::new(&path).is_file(), "ORB_E2E_OPERATOR={path}: no such binary");
            path
        }
        Err(_) => env!("CARGO_BIN_EXE_orb-operator").to_string(),
    }
}

/// The operator binary, watching one namespace (its lease there too); killed when dropped.
pub struct Operator {
    child: Child,
    /// Where it serves `/healthz`, `/readyz` and `/metrics` (127.0.0.1).
    pub port: u16,
}

impl Operator {
    pub fn start(kubeconfig: &str, namespace: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with(kubeconfig, namespace, env, &[])
    }

    /// `start` with further command-line arguments.
    pub fn start_with(kubeconfig: &str, namespace: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        // Several operators may run at once (one per test): each listens on a port of its own.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new(operator_binary());
        cmd.args(["run", "--namespace", namespace, "--lease-namespace", namespace])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("ORB_LOG", "info,orb_operator=debug,kube=warn")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self { child: cmd.spawn().expect("operator started"), port }
    }

    /// The process id (for its /proc figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET path` on the operator's listener: the status code and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.expect("the operator listens");
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (code, body)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A condition: the template's Ready condition is True (the operator validated it).
pub fn template_ready(template: Option<&orb_operator::api::MachineTemplate>) -> bool {
    template
        .and_then(|t| t.status.as_ref())
        .and_then(|s| orb_operator::api::conditions::find(&s.conditions, "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Waits up to `secs` for `condition` on the named object.
pub async fn wait<K>(api: &Api<K>, name: &str, condition: impl Condition<K>, secs: u64) -> Option<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    tokio::time::timeout(Duration::from_secs(secs), await_condition(api.clone(), name, condition))
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s waiting on {name}"))
        .expect("watch failed")
}

/// Reads a YAML manifest from `examples/`.
pub fn example<T: serde::de::DeserializeOwned>(path: &str) -> T {
    let text =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(path)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// Creates `n` requests from example `example` (`sim/request.yaml`, say), named `r00000` on,
/// of `capacity`, for template `template`: 32 at a time, as one `kubectl apply` of many does.
pub async fn create_requests(
    requests: &Api<MachineRequest>,
    example_path: &str,
    template: &str,
    n: usize,
    capacity: i32,
) {
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| async move {
            let mut mr: MachineRequest = example(example_path);
            mr.metadata.name = Some(format!("r{i:05}"));
            mr.spec.template_ref.name = template.to_string();
            mr.spec.capacity = capacity;
            requests.create(&PostParams::default(), &mr).await.unwrap();
        })
        .await;
}

/// The peak resident memory (VmHWM) of process `pid` (`self`: this one), in KiB.
pub fn peak_memory_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
