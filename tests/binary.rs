//! The `orb-operator` binary as users run it: a process, configured from the environment, talking
//! to an API server over HTTPS. The API server here is a small TLS endpoint of the test's own
//! (certificates in `tests/fixtures/tls`, signed by a test CA the kubeconfig trusts) that knows no
//! CRDs: the operator must say so clearly and exit, never panic. On a real cluster, rustls once
//! could not choose a crypto provider and every start panicked; nothing else in the suite builds
//! a client for an HTTPS endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

/// An HTTPS endpoint that answers `/version` like an API server and 404 to everything else.
/// Returns its URL and a counter of the requests it served.
async fn https_api_server() -> (String, Arc<AtomicUsize>) {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("server.pem")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(fixture("server-key.pem")).unwrap();
    let config =
        tokio_rustls::rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move { Ok::<_, hyper::Error>(answer(req.uri().path())) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    (url, served)
}

fn answer(path: &str) -> Response<Full<Bytes>> {
    let (status, body) = if path == "/version" {
        (
            200,
            serde_json::json!({"major": "1", "minor": "26", "gitVersion": "v1.26.4", "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64"}),
        )
    } else {
        (
            404,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"}),
        )
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A kubeconfig for `server` that trusts the test CA.
fn kubeconfig(server: &str, dir: &Path) -> PathBuf {
    let ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(fixture("ca.pem")).unwrap());
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: test\n  user:\n    token: test-token\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\n"
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

/// The operator binary with a clean environment: only what is given (and PATH/HOME).
fn operator(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orb-operator"));
    cmd.args(args).env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for key in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the command to completion in a blocking thread, failing after `secs`.
async fn finish(mut cmd: Command, secs: u64) -> Output {
    let child = cmd.spawn().expect("operator started");
    let id = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    match tokio::time::timeout(Duration::from_secs(secs), waiting).await {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
            panic!("the operator did not exit within {secs}s");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_against_an_https_api_server_without_crds_exits_with_a_clear_error_not_a_panic() {
    let (url, served) = https_api_server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(&url, dir.path());
    let args = ["run", "--http-addr", "127.0.0.1:0"];
    let output = finish(operator(&args, &[("KUBECONFIG", config.to_str().unwrap())]), 60).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "the operator panicked:\n{stderr}");
    assert!(!output.status.success(), "without CRDs the operator cannot run:\n{stderr}");
    assert!(
        stderr.contains("cannot list MachineTemplate objects") && stderr.contains("orb-operator crd | kubectl apply"),
        "the error says what is wrong and how to fix it:\n{stderr}"
    );
    assert!(served.load(Ordering::SeqCst) > 0, "the operator reached the server over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_e2e_support_client_talks_to_an_https_api_server() {
    let (url, served) = https_api_server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(&url, dir.path());
    let client = support::cluster::client(config.to_str().unwrap()).await;
    let version = client.apiserver_version().await.expect("a TLS request through the test support's client");
    assert_eq!(version.git_version, "v1.26.4");
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn config_check_ignores_the_service_link_variables_kubernetes_injects() {
    let env = [
        ("ORB_OPERATOR_PORT", "tcp://10.0.0.1:8080"),
        ("ORB_OPERATOR_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
        ("ORB_OPERATOR_SERVICE_HOST", "10.0.0.1"),
        ("ORB_OPERATOR_SERVICE_PORT", "8080"),
    ];
    let output = finish(operator(&["config", "check"], &env), 30).await;
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("type: sim") && !stdout.contains("operator"), "{stdout}");
}

#[tokio::test]
async fn config_check_names_a_mistyped_variable() {
    let env = [
        ("ORB_PROVIDERS__DEFAULT__TYPE", "aws"),
        ("ORB_PROVIDERS__DEFAULT__REGION", "us-east-1"),
        ("ORB_PROVIDERS__DEFAULT__REGIONN", "us-east-2"),
    ];
    let output = finish(operator(&["config", "check"], &env), 30).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("ORB_PROVIDERS__DEFAULT__REGIONN (providers.default.regionn)"), "{stderr}");
}

/// A HostFactory provider script run as HostFactory runs it (`<verb>.sh -f <input>` with the
/// HF_* variables), with the built binary behind it.
fn hostfactory_script(verb: &str, input: &Path, env: &[(&str, &str)]) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hostfactory/scripts").join(format!("{verb}.sh"));
    let mut cmd = Command::new(script);
    cmd.arg("-f").arg(input).env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd.env("ORB_OPERATOR_BIN", env!("CARGO_BIN_EXE_orb-operator"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// stdout must be exactly one JSON document: HostFactory parses it.
fn json_answer(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{stdout}"))
}

#[tokio::test]
async fn a_hostfactory_call_with_bad_input_answers_a_json_message_and_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"template": {"templateId": "workers"}}"#).unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let env = [("HF_PROVIDER_LOGDIR", logs.to_str().unwrap()), ("HF_LOGLEVEL", "DEBUG"), ("ORB_HF_NAMESPACE", "grid")];
    let output = finish(hostfactory_script("requestMachines", &input, &env), 30).await;
    assert!(!output.status.success(), "a failed call exits non-zero");
    let answer = json_answer(&output);
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("machineCount is missing"), "{message}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("stack backtrace"), "{stderr}");
    let log = std::fs::read_to_string(logs.join("orb-operator-hostfactory.log")).unwrap();
    assert!(log.contains("RequestMachines failed") && log.contains("machineCount is missing"), "{log}");
    assert!(log.contains("requestMachines input: {\"template\""), "DEBUG logs the input: {log}");

    std::fs::write(&input, "not json").unwrap();
    let output = finish(hostfactory_script("getRequestStatus", &input, &env), 30).await;
    assert!(json_answer(&output)["message"].as_str().unwrap().contains("is not JSON"));

    // Symphony's own level names; a log directory that is not there never costs the answer.
    let env = [("HF_PROVIDER_LOGDIR", "/nonexistent/logs"), ("HF_LOGLEVEL", "LOG_DEBUG"), ("ORB_HF_NAMESPACE", "grid")];
    let output = finish(hostfactory_script("getRequestStatus", &input, &env), 30).await;
    assert!(json_answer(&output)["message"].as_str().unwrap().contains("is not JSON"));

    // A command line HostFactory should never send still answers in JSON.
    let output = finish(operator(&["hostfactory", "getEverything", "-f", "x.json"], &[]), 30).await;
    assert!(!output.status.success());
    assert!(json_answer(&output)["message"].as_str().unwrap().contains("getEverything"));
}

#[tokio::test]
async fn a_hostfactory_call_without_a_namespace_says_where_to_set_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(&input, "{}").unwrap();
    let output = finish(hostfactory_script("getAvailableTemplates", &input, &[]), 30).await;
    assert!(!output.status.success());
    let message = json_answer(&output)["message"].as_str().unwrap().to_string();
    assert!(message.contains("--namespace") && message.contains("ORB_HF_NAMESPACE"), "{message}");
    // The plugin config in HF_PROVIDER_CONFDIR names it (and a kubeconfig beside it is used).
    std::fs::write(dir.path().join("orb-operator.json"), r#"{"namespace": "grid", "templateSelector": "a=b"}"#)
        .unwrap();
    let (url, served) = https_api_server().await;
    kubeconfig(&url, dir.path());
    let env = [("HF_PROVIDER_CONFDIR", dir.path().to_str().unwrap())];
    let output = finish(hostfactory_script("getAvailableTemplates", &input, &env), 30).await;
    let message = json_answer(&output)["message"].as_str().unwrap().to_string();
    assert!(!output.status.success(), "the test API server knows no CRDs");
    assert!(message.contains("Kubernetes API") && message.contains("could not find"), "{message}");
    assert_eq!(served.load(Ordering::SeqCst), 1, "one list call, over TLS, with the config's kubeconfig");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_json_lines() {
    let (url, _) = https_api_server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(&url, dir.path());
    let args = ["run", "--http-addr", "127.0.0.1:0", "--log-format", "json"];
    let output = finish(operator(&args, &[("KUBECONFIG", config.to_str().unwrap())]), 60).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|l| l.contains("configuration loaded")).unwrap_or_else(|| panic!("{stdout}"));
    let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(parsed["fields"]["message"], "configuration loaded", "{parsed}");
}

#[tokio::test]
async fn a_hostfactory_call_uses_ibms_directory_defaults_and_its_own_config_over_the_shared_namespace() {
    // HF_PROVIDER_CONFDIR and HF_PROVIDER_LOGDIR unset: $HF_CONFDIR/providers/<name>/ and
    // $HF_LOGDIR, as IBM documents. The instance's config names the namespace (it wins over
    // ORB_HF_NAMESPACE, shared by every instance) and has a key this version does not know.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf/providers/grid-a");
    let logs = dir.path().join("log");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(conf.join("orb-operator.json"), r#"{"namespace": "from-file", "someFutureKey": 1}"#).unwrap();
    let (url, _) = https_api_server().await;
    let kubeconfig = kubeconfig(&url, &conf);
    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"requests": [{"requestId": "req-x"}]}"#).unwrap();
    let confdir = dir.path().join("conf");
    let env = [
        ("HF_PROVIDER_NAME", "grid-a"),
        ("HF_CONFDIR", confdir.to_str().unwrap()),
        ("HF_LOGDIR", logs.to_str().unwrap()),
        ("ORB_HF_NAMESPACE", "shared"),
    ];
    let output = finish(hostfactory_script("getRequestStatus", &input, &env), 30).await;
    assert!(!output.status.success(), "the test API server knows no CRDs");
    let message = json_answer(&output)["message"].as_str().unwrap().to_string();
    assert!(message.contains("namespace from-file") && message.contains(&url), "{message}");
    assert!(message.contains(kubeconfig.to_str().unwrap()), "names the kubeconfig used: {message}");
    let log = std::fs::read_to_string(logs.join("orb-operator-hostfactory.log")).unwrap();
    assert!(log.contains("someFutureKey") && log.contains("ignored"), "an unknown key is a warning: {log}");
}

#[tokio::test]
async fn a_hostfactory_call_to_an_api_server_that_never_answers_ends_in_time_naming_it() {
    // Accepts connections and never answers: the call must end well inside HostFactory's script
    // timeout, saying which API server did not answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(&url, dir.path());
    let input = dir.path().join("input.json");
    std::fs::write(&input, "{}").unwrap();
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap()), ("ORB_HF_NAMESPACE", "grid")];
    let started = std::time::Instant::now();
    let output = finish(hostfactory_script("getAvailableTemplates", &input, &env), 60).await;
    let took = started.elapsed();
    assert!(!output.status.success());
    let message = json_answer(&output)["message"].as_str().unwrap().to_string();
    assert!(message.contains(&url) && message.contains("namespace grid"), "{message}");
    assert!(took < std::time::Duration::from_secs(35), "took {took:?}");
}
