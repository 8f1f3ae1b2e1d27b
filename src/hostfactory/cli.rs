//! `orb-operator hostfactory <verb> -f <file>` as HostFactory runs it: the input file read and
//! checked before anything else (bad input touches nothing), the namespace from `--namespace`,
//! the plugin config (this provider instance's own) or `ORB_HF_NAMESPACE` (shared by all
//! instances), the cluster from `KUBECONFIG` or in-cluster config, the answer on stdout. A
//! failure prints `{"message": ...}` on stdout and exits non-zero; every call leaves a line in
//! the log directory. Directories as IBM documents them: `HF_PROVIDER_CONFDIR`, else
//! `$HF_CONFDIR/providers/<HF_PROVIDER_NAME>/`; `HF_PROVIDER_LOGDIR`, else `$HF_LOGDIR/`. Every
//! call ends within `CALL_DEADLINE`, well inside HostFactory's script timeout.

use super::{HfError, Plugin, Verb, protocol};
use serde_json::{Value, json};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The plugin config HostFactory's provider directory holds (`HF_PROVIDER_CONFDIR`).
pub const CONFIG_FILE: &str = "orb-operator.json";
/// The log file in the log directory.
pub const LOG_FILE: &str = "orb-operator-hostfactory.log";
/// The longest a call takes: an answer or a failure naming what did not answer.
pub const CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest one Kubernetes API call waits for an answer.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the command line says.
pub struct Options {
    pub verb: Verb,
    pub file: Option<PathBuf>,
    pub namespace: Option<String>,
    pub template_selector: Option<String>,
}

/// The plugin config file's content. An unknown key is logged, not a failure of every call.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PluginConfig {
    namespace: Option<String>,
    template_selector: Option<String>,
    #[serde(flatten)]
    unknown: std::collections::BTreeMap<String, Value>,
}

/// This provider instance's name (`HF_PROVIDER_NAME`, always set by HostFactory).
fn provider_name() -> String {
    std::env::var("HF_PROVIDER_NAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into())
}

/// `specific` if set, else `shared` joined with `under` (IBM's defaults).
fn directory(specific: &str, shared: &str, under: &[&str]) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(specific).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let mut dir = PathBuf::from(std::env::var_os(shared).filter(|d| !d.is_empty())?);
    dir.extend(under);
    Some(dir)
}

/// The plugin config directory: `HF_PROVIDER_CONFDIR`, else `$HF_CONFDIR/providers/<name>/`.
fn config_dir() -> Option<PathBuf> {
    directory("HF_PROVIDER_CONFDIR", "HF_CONFDIR", &["providers", &provider_name()])
}

/// The log directory: `HF_PROVIDER_LOGDIR`, else `$HF_LOGDIR/`.
fn log_dir() -> Option<PathBuf> {
    directory("HF_PROVIDER_LOGDIR", "HF_LOGDIR", &[])
}

/// Runs one call; the exit code tells HostFactory whether it worked.
pub async fn run(options: Options) -> ExitCode {
    let started = std::time::Instant::now();
    let verb = options.verb;
    let result = answer(options).await;
    let elapsed = started.elapsed().as_millis();
    match result {
        Ok(output) => {
            log(&format!("{verb:?} ok in {elapsed} ms"));
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            log(&format!("{verb:?} failed in {elapsed} ms: {message}"));
            println!("{}", json!({"message": message}));
            ExitCode::FAILURE
        }
    }
}

async fn answer(options: Options) -> Result<Value, String> {
    let input = read_input(options.file.as_deref())?;
    check(options.verb, &input).map_err(|e| e.to_string())?;
    let (namespace, config_selector) = namespace(options.namespace)?;
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| format!("no Kubernetes client configuration (KUBECONFIG or in-cluster): {e}"))?;
    config.read_timeout = Some(READ_TIMEOUT);
    config.connect_timeout = Some(READ_TIMEOUT);
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| format!("Kubernetes client for {server}: {e}"))?;
    let provider = super::provider_label_value(&provider_name());
    let plugin = Plugin {
        client,
        namespace: namespace.clone(),
        template_selector: options.template_selector.or(config_selector),
        provider,
    };
    let where_ = || {
        let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_else(|_| "in-cluster or ~/.kube/config".into());
        format!("Kubernetes API at {server} (kubeconfig {kubeconfig}, namespace {namespace})")
    };
    match tokio::time::timeout(CALL_DEADLINE, plugin.answer(options.verb, &input)).await {
        Ok(answer) => answer.map_err(|e| match e {
            HfError::Kube(kube::Error::Api(api)) if api.code == 403 => {
                format!("the {} refused the call ({}): {}", where_(), api.reason, api.message)
            }
            HfError::Kube(other) => format!("{}: {other}", where_()),
            other => other.to_string(),
        }),
        Err(_) => Err(format!("no answer within {} s from the {}", CALL_DEADLINE.as_secs(), where_())),
    }
}

/// The input JSON; `{}` when HostFactory passes no file (getAvailableTemplates).
fn read_input(file: Option<&Path>) -> Result<Value, String> {
    let Some(file) = file else { return Ok(json!({})) };
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read input file {}: {e}", file.display()))?;
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(&text).map_err(|e| format!("input file {} is not JSON: {e}", file.display()))
}

/// Checks the input of `verb` without touching the cluster.
fn check(verb: Verb, input: &Value) -> Result<(), protocol::BadInput> {
    match verb {
        Verb::GetAvailableTemplates => Ok(()),
        Verb::RequestMachines => protocol::machines_wanted(input).map(drop),
        Verb::GetRequestStatus => protocol::request_entries(input).map(drop),
        Verb::RequestReturnMachines => protocol::machines("requestReturnMachines", input, true).map(drop),
        Verb::GetReturnRequests => protocol::machines("getReturnRequests", input, false).map(drop),
    }
}

/// The namespace (and template selector) to use: `--namespace`, else the plugin config (this
/// provider instance's), else `ORB_HF_NAMESPACE` (shared by every instance on the host).
fn namespace(given: Option<String>) -> Result<(String, Option<String>), String> {
    let config = match config_dir() {
        Some(dir) => {
            let path = dir.join(CONFIG_FILE);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let config = serde_json::from_str::<PluginConfig>(&text)
                        .map_err(|e| format!("plugin config {}: {e}", path.display()))?;
                    if !config.unknown.is_empty() {
                        let keys: Vec<&String> = config.unknown.keys().collect();
                        log(&format!("plugin config {}: unknown keys {keys:?} ignored", path.display()));
                    }
                    config
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => PluginConfig::default(),
                Err(e) => return Err(format!("cannot read plugin config {}: {e}", path.display())),
            }
        }
        None => PluginConfig::default(),
    };
    let namespace = given
        .or(config.namespace)
        .or_else(|| std::env::var("ORB_HF_NAMESPACE").ok().filter(|s| !s.is_empty()))
        .ok_or_else(|| {
            format!("no namespace: pass --namespace, put {{\"namespace\": ...}} in the plugin config {CONFIG_FILE} (HF_PROVIDER_CONFDIR, else $HF_CONFDIR/providers/<HF_PROVIDER_NAME>/), or set ORB_HF_NAMESPACE")
        })?;
    Ok((namespace, config.template_selector))
}

/// Appends a line to the log in the log directory (nothing when there is none).
fn log(line: &str) {
    let Some(dir) = log_dir() else { return };
    let path = Path::new(&dir).join(LOG_FILE);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{} {line}", jiff::Timestamp::now()));
    if let Err(e) = written {
        eprintln!("cannot write {}: {e}", path.display());
    }
}
