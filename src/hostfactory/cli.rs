//! `orb-operator hostfactory <verb> -f <file>` as HostFactory runs it: the input file read and
//! checked before anything else (bad input touches nothing), the namespace from `--namespace`,
//! `ORB_HF_NAMESPACE` or the plugin config in `HF_PROVIDER_CONFDIR`, the cluster from
//! `KUBECONFIG` or in-cluster config, the answer on stdout. A failure prints `{"message": ...}`
//! on stdout and exits non-zero; every call leaves a line in `HF_PROVIDER_LOGDIR`.

use super::{HfError, Plugin, Verb, protocol};
use serde_json::{Value, json};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The plugin config HostFactory's provider directory holds (`HF_PROVIDER_CONFDIR`).
pub const CONFIG_FILE: &str = "orb-operator.json";
/// The log file in `HF_PROVIDER_LOGDIR`.
pub const LOG_FILE: &str = "orb-operator-hostfactory.log";

/// What the command line says.
pub struct Options {
    pub verb: Verb,
    pub file: Option<PathBuf>,
    pub namespace: Option<String>,
    pub template_selector: Option<String>,
}

/// The plugin config file's content.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PluginConfig {
    namespace: Option<String>,
    template_selector: Option<String>,
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
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes client configuration (KUBECONFIG or in-cluster): {e}"))?;
    let plugin = Plugin { client, namespace, template_selector: options.template_selector.or(config_selector) };
    plugin.answer(options.verb, &input).await.map_err(|e| match e {
        HfError::Kube(kube::Error::Api(api)) if api.code == 403 => {
            format!("the Kubernetes API refused the call ({}): {}", api.reason, api.message)
        }
        other => other.to_string(),
    })
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
        Verb::GetRequestStatus => protocol::request_ids(input).map(drop),
        Verb::RequestReturnMachines => protocol::machines("requestReturnMachines", input, true).map(drop),
        Verb::GetReturnRequests => protocol::machines("getReturnRequests", input, false).map(drop),
    }
}

/// The namespace (and template selector) to use: `--namespace`, else `ORB_HF_NAMESPACE`, else
/// the plugin config in `HF_PROVIDER_CONFDIR`.
fn namespace(given: Option<String>) -> Result<(String, Option<String>), String> {
    let config = match std::env::var_os("HF_PROVIDER_CONFDIR") {
        Some(dir) => {
            let path = Path::new(&dir).join(CONFIG_FILE);
            match std::fs::read_to_string(&path) {
                Ok(text) => serde_json::from_str::<PluginConfig>(&text)
                    .map_err(|e| format!("plugin config {}: {e}", path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => PluginConfig::default(),
                Err(e) => return Err(format!("cannot read plugin config {}: {e}", path.display())),
            }
        }
        None => PluginConfig::default(),
    };
    let namespace = given
        .or_else(|| std::env::var("ORB_HF_NAMESPACE").ok().filter(|s| !s.is_empty()))
        .or(config.namespace)
        .ok_or_else(|| {
            format!("no namespace: pass --namespace, set ORB_HF_NAMESPACE, or put {{\"namespace\": ...}} in $HF_PROVIDER_CONFDIR/{CONFIG_FILE}")
        })?;
    Ok((namespace, config.template_selector))
}

/// Appends a line to the log in `HF_PROVIDER_LOGDIR` (nothing when it is not set).
fn log(line: &str) {
    let Some(dir) = std::env::var_os("HF_PROVIDER_LOGDIR") else { return };
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
