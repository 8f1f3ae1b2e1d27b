//! Operator configuration: `clusterId` and named `providers`, read from a YAML/JSON file and then
//! overridden by `ORB_*` environment variables (DESIGN §3, the seed's semantics).
//!
//! Environment keys: `ORB_` + path segments joined by `__`, each in SCREAMING_SNAKE form.
//! `ORB_CLUSTER_ID` sets `clusterId`; `ORB_PROVIDERS__DEFAULT__ENDPOINT_URL` sets
//! `providers.default.endpointUrl`. A segment matches an existing key ignoring case, `_` and `-`;
//! a new key is the segment in camelCase. Values starting with `[` or `{` are JSON; anything else
//! is a string. Only `ORB_CLUSTER_ID` and `ORB_PROVIDERS__*` are configuration: Kubernetes
//! injects `ORB_OPERATOR_PORT`, `ORB_OPERATOR_SERVICE_HOST`, ... into pods for a Service named
//! `orb-operator`, and those must not stop the operator (they are ignored, with a debug log).
//! Unknown keys and bad values are errors naming the variable (or file key). The built-in sim
//! `default` provider exists only when no provider is configured by any source.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The environment variables that are configuration: exactly these names and those below
/// `ORB_PROVIDERS__`.
const CONFIG_VARS: &[&str] = &["ORB_CLUSTER_ID", "ORB_PROVIDERS"];
const PROVIDER_VARS: &str = "ORB_PROVIDERS__";
const REDACTED: &str = "<redacted>";

/// The effective operator configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Tags every AWS resource (`orb.dev/cluster`) so several operators can share an account.
    pub cluster_id: String,
    pub providers: BTreeMap<String, ProviderConfig>,
}

/// One named provider.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
// One value per configured provider, built once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum ProviderConfig {
    Sim(SimSettings),
    Aws(AwsSettings),
}

/// The simulated cloud. Its state lives in the operator's memory and is lost on restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimSettings {
    /// How long a machine stays `pending` before it is `running` (duration, default `2s`).
    #[serde(default = "default_sim_pending", deserialize_with = "duration_text")]
    pub pending_delay: String,
    /// How long a machine stays `shutting-down` before it is `terminated` (default `1s`).
    #[serde(default = "default_sim_terminating", deserialize_with = "duration_text")]
    pub terminating_delay: String,
    /// Instance types that always fail with `InsufficientInstanceCapacity`.
    #[serde(default)]
    pub insufficient_capacity: Vec<String>,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            pending_delay: default_sim_pending(),
            terminating_delay: default_sim_terminating(),
            insufficient_capacity: vec![],
        }
    }
}

impl SimSettings {
    pub fn pending(&self) -> Duration {
        crate::api::duration::parse(&self.pending_delay).unwrap_or_default()
    }
    pub fn terminating(&self) -> Duration {
        crate::api::duration::parse(&self.terminating_delay).unwrap_or_default()
    }
}

fn default_sim_pending() -> String {
    "2s".into()
}
fn default_sim_terminating() -> String {
    "1s".into()
}

/// An AWS account and region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsSettings {
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Role to assume (STS AssumeRole) for every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// External id for AssumeRole; treated as a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Alternative endpoint for every AWS service (emulators such as moto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Attempts per AWS call by the SDK's standard retry mode (1-10, default 3).
    #[serde(default, deserialize_with = "lenient_u32", skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Instance profiles (names, or ARNs) templates of this provider may launch with; none
    /// when empty. The operator passes their roles to EC2 (`iam:PassRole`), so this list is
    /// what decides who may run code with which credentials. A list, or comma-separated text
    /// (`ORB_PROVIDERS__<NAME>__ALLOWED_INSTANCE_PROFILES=a,b`).
    #[serde(default, deserialize_with = "lenient_list", skip_serializing_if = "Vec::is_empty")]
    pub allowed_instance_profiles: Vec<String>,
    /// Describe calls per second the operator allows itself (default 16; EC2 refills 20/s).
    #[serde(default, deserialize_with = "lenient_u32", skip_serializing_if = "Option::is_none")]
    pub describe_rate: Option<u32>,
    /// Describe calls that may go out at once (default 80; EC2's bucket holds 100).
    #[serde(default, deserialize_with = "lenient_u32", skip_serializing_if = "Option::is_none")]
    pub describe_burst: Option<u32>,
    /// Mutating calls per second (default 4; EC2 refills 5/s).
    #[serde(default, deserialize_with = "lenient_u32", skip_serializing_if = "Option::is_none")]
    pub mutate_rate: Option<u32>,
    /// Mutating calls that may go out at once (default 40; EC2's bucket holds 50).
    #[serde(default, deserialize_with = "lenient_u32", skip_serializing_if = "Option::is_none")]
    pub mutate_burst: Option<u32>,
    /// How often the poller refreshes instances while any is changing state (default `2s`).
    #[serde(default = "default_poll_interval", deserialize_with = "duration_text")]
    pub poll_interval: String,
    /// How often it refreshes them when all are steady (default `60s`).
    #[serde(default = "default_steady_poll_interval", deserialize_with = "duration_text")]
    pub steady_poll_interval: String,
    /// How long an offering (instance type, zone, market) that failed for capacity is skipped
    /// by every request of this provider (default `3m`).
    #[serde(default = "default_capacity_error_ttl", deserialize_with = "duration_text")]
    pub capacity_error_ttl: String,
    /// How often the leak sweep looks for resources of requests that no longer exist (default
    /// `5m`; `0s` turns it off).
    #[serde(default = "default_sweep_interval", deserialize_with = "duration_text")]
    pub sweep_interval: String,
    /// How long a resource must have been seen orphaned before the sweep removes it (default `2m`).
    #[serde(default = "default_sweep_grace", deserialize_with = "duration_text")]
    pub sweep_grace: String,
    /// Only report leaked resources (log, metric), never remove them.
    #[serde(default, deserialize_with = "lenient_bool", skip_serializing_if = "std::ops::Not::not")]
    pub sweep_dry_run: bool,
    /// The SQS queue (URL, or name) EventBridge sends EC2's spot interruption warnings,
    /// rebalance recommendations, state changes and AWS Health scheduled changes to; unset,
    /// none are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption_queue: Option<String>,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            region: String::new(),
            profile: None,
            role_arn: None,
            external_id: None,
            endpoint_url: None,
            max_attempts: None,
            allowed_instance_profiles: vec![],
            describe_rate: None,
            describe_burst: None,
            mutate_rate: None,
            mutate_burst: None,
            poll_interval: default_poll_interval(),
            steady_poll_interval: default_steady_poll_interval(),
            capacity_error_ttl: default_capacity_error_ttl(),
            sweep_interval: default_sweep_interval(),
            sweep_grace: default_sweep_grace(),
            sweep_dry_run: false,
            interruption_queue: None,
        }
    }
}

fn default_poll_interval() -> String {
    "2s".into()
}
fn default_steady_poll_interval() -> String {
    "60s".into()
}
fn default_capacity_error_ttl() -> String {
    "3m".into()
}
fn default_sweep_interval() -> String {
    "5m".into()
}
fn default_sweep_grace() -> String {
    "2m".into()
}

fn duration_of(text: &str) -> Duration {
    crate::api::duration::parse(text).unwrap_or_default()
}

impl AwsSettings {
    /// The client-side rate limits, defaults filled in.
    pub fn rates(&self) -> crate::provider::aws::calls::limits::Rates {
        let d = crate::provider::aws::calls::limits::Rates::default();
        crate::provider::aws::calls::limits::Rates {
            describe_rate: self.describe_rate.unwrap_or(d.describe_rate),
            describe_burst: self.describe_burst.unwrap_or(d.describe_burst),
            mutate_rate: self.mutate_rate.unwrap_or(d.mutate_rate),
            mutate_burst: self.mutate_burst.unwrap_or(d.mutate_burst),
        }
    }
    pub fn poll(&self) -> Duration {
        duration_of(&self.poll_interval)
    }
    pub fn steady_poll(&self) -> Duration {
        duration_of(&self.steady_poll_interval)
    }
    pub fn capacity_ttl(&self) -> Duration {
        duration_of(&self.capacity_error_ttl)
    }
    pub fn sweep_every(&self) -> Duration {
        duration_of(&self.sweep_interval)
    }
    pub fn sweep_after(&self) -> Duration {
        duration_of(&self.sweep_grace)
    }
}

/// Why configuration could not be loaded. Every variant names the key.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    File { path: String, message: String },
    #[error("{key}: {message}")]
    Key { key: String, message: String },
}

fn key_error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key { key: key.into(), message: message.into() }
}

impl Config {
    /// Loads the file (if any) and applies the `ORB_*` variables from `env` on top.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut tree = match file {
            Some(path) => read_file(path)?,
            None => Value::Object(Map::new()),
        };
        if !tree.is_object() {
            return Err(key_error("<root>", "the config must be a mapping"));
        }
        let (mut vars, ignored): (Vec<_>, Vec<_>) =
            env.into_iter().filter(|(k, _)| k.starts_with("ORB_")).partition(|(k, _)| is_config_var(k));
        if !ignored.is_empty() {
            let names: Vec<&str> = ignored.iter().map(|(k, _)| k.as_str()).collect();
            tracing::debug!(variables = ?names, "ORB_* variables that are not configuration (ORB_CLUSTER_ID, ORB_PROVIDERS__*) ignored");
        }
        vars.sort();
        let mut sources = vec![];
        for (name, value) in vars {
            let path = apply_env(&mut tree, &name, &value)?;
            sources.push((path, name));
        }
        if let Some(root) = tree.as_object_mut()
            && root.get("providers").is_none_or(|p| p.as_object().is_some_and(Map::is_empty))
        {
            root.insert("providers".into(), serde_json::json!({"default": {"type": "sim"}}));
        }
        Self::from_tree(tree).map_err(|e| name_variable(e, &sources))
    }

    /// Loads from the process environment.
    pub fn from_process(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load(file, std::env::vars())
    }

    fn from_tree(tree: Value) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Raw {
            #[serde(default = "default_cluster_id")]
            cluster_id: String,
            providers: BTreeMap<String, Value>,
        }
        let raw: Raw = typed(tree, "")?;
        if !valid_cluster_id(&raw.cluster_id) {
            return Err(key_error(
                "clusterId",
                format!("`{}` must be 1-63 lowercase letters, digits or '-'", raw.cluster_id),
            ));
        }
        if raw.providers.is_empty() {
            return Err(key_error("providers", "at least one provider is required"));
        }
        let mut providers = BTreeMap::new();
        for (name, body) in raw.providers {
            let prefix = format!("providers.{name}");
            providers.insert(name, ProviderConfig::from_tree(body, &prefix)?);
        }
        Ok(Self { cluster_id: raw.cluster_id, providers })
    }

    /// The configuration as YAML with secrets replaced, for `config check`.
    pub fn redacted_yaml(&self) -> String {
        let mut shown = self.clone();
        for provider in shown.providers.values_mut() {
            if let ProviderConfig::Aws(aws) = provider
                && aws.external_id.is_some()
            {
                aws.external_id = Some(REDACTED.into());
            }
        }
        serde_yaml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

impl ProviderConfig {
    fn from_tree(body: Value, prefix: &str) -> Result<Self, ConfigError> {
        let mut body = match body {
            Value::Object(map) => map,
            _ => return Err(key_error(prefix, "a provider must be a mapping with a `type`")),
        };
        let kind = match body.remove("type") {
            Some(Value::String(kind)) => kind,
            Some(_) => return Err(key_error(format!("{prefix}.type"), "must be a string: aws or sim")),
            None => return Err(key_error(format!("{prefix}.type"), "missing; expected aws or sim")),
        };
        let body = Value::Object(body);
        match kind.as_str() {
            "sim" => Ok(Self::Sim(typed(body, prefix)?)),
            "aws" => {
                let aws: AwsSettings = typed(body, prefix)?;
                aws.check(prefix)?;
                Ok(Self::Aws(aws))
            }
            other => Err(key_error(
                format!("{prefix}.type"),
                format!("unknown provider type `{other}`; expected aws or sim"),
            )),
        }
    }
}

impl AwsSettings {
    fn check(&self, prefix: &str) -> Result<(), ConfigError> {
        if self.region.trim().is_empty() {
            return Err(key_error(format!("{prefix}.region"), "must not be empty"));
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(key_error(format!("{prefix}.endpointUrl"), format!("`{url}` is not an http(s) URL")));
        }
        if let Some(n) = self.max_attempts
            && !(1..=10).contains(&n)
        {
            return Err(key_error(format!("{prefix}.maxAttempts"), format!("{n} is outside 1-10")));
        }
        for (key, value) in [
            ("describeRate", self.describe_rate),
            ("describeBurst", self.describe_burst),
            ("mutateRate", self.mutate_rate),
            ("mutateBurst", self.mutate_burst),
        ] {
            if value == Some(0) {
                return Err(key_error(format!("{prefix}.{key}"), "must be at least 1"));
            }
        }
        for (key, value) in [("pollInterval", self.poll()), ("steadyPollInterval", self.steady_poll())] {
            if value < Duration::from_millis(100) {
                return Err(key_error(format!("{prefix}.{key}"), "must be at least 100ms"));
            }
        }
        Ok(())
    }
}

/// The `clusterId` of every installation that does not choose one: not unique, so the leak
/// sweep stays off under it (two clusters sharing an account and region would each take the
/// other's resources for leaks).
pub const DEFAULT_CLUSTER_ID: &str = "orb";

fn default_cluster_id() -> String {
    DEFAULT_CLUSTER_ID.into()
}

fn valid_cluster_id(id: &str) -> bool {
    (1..=63).contains(&id.len()) && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let file_error = |message: String| ConfigError::File { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    // YAML is a superset of JSON, so one parser reads both.
    serde_yaml::from_str(&text).map_err(|e| file_error(e.to_string()))
}

/// Deserializes `tree` into `T`, reporting the failing key as a dotted path under `prefix`.
fn typed<T: serde::de::DeserializeOwned>(tree: Value, prefix: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let inner = e.path().to_string();
        let key = match (prefix.is_empty(), inner.as_str()) {
            (true, _) => inner.clone(),
            (false, ".") => prefix.to_string(),
            (false, _) => format!("{prefix}.{inner}"),
        };
        key_error(key, e.into_inner().to_string())
    })
}

fn is_config_var(name: &str) -> bool {
    CONFIG_VARS.contains(&name) || name.starts_with(PROVIDER_VARS)
}

/// Puts the variable that set a failing key into the error: `ORB_PROVIDERS__DEFAULT__REGIONN
/// (providers.default.regionn): unknown field ...`. The variable whose path is the longest prefix
/// of the key (or that the key is a prefix of, for a missing field) is the one named.
fn name_variable(error: ConfigError, sources: &[(String, String)]) -> ConfigError {
    let ConfigError::Key { key, message } = error else { return error };
    let under = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}.")) || a.starts_with(&format!("{b}["));
    let var = sources
        .iter()
        .filter(|(path, _)| under(&key, path) || under(path, &key))
        .max_by_key(|(path, _)| path.len())
        .map(|(_, var)| var);
    match var {
        Some(var) if *var != key => ConfigError::Key { key: format!("{var} ({key})"), message },
        _ => ConfigError::Key { key, message },
    }
}

/// Applies one `ORB_A__B__C=value` variable to the tree; returns the dotted key it set.
fn apply_env(tree: &mut Value, name: &str, raw: &str) -> Result<String, ConfigError> {
    let segments: Vec<&str> = name["ORB_".len()..].split("__").collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(key_error(name, "empty path segment"));
    }
    let value = if raw.trim_start().starts_with(['[', '{']) {
        serde_json::from_str(raw).map_err(|e| key_error(name, format!("invalid JSON: {e}")))?
    } else {
        Value::String(raw.to_string())
    };
    let mut node = tree;
    let mut path: Vec<String> = vec![];
    for (i, segment) in segments.iter().enumerate() {
        let map = match node {
            Value::Object(map) => map,
            _ => return Err(key_error(name, format!("`{}` is not a mapping", segments[..i].join("__")))),
        };
        let key = map.keys().find(|k| same_key(k, segment)).cloned().unwrap_or_else(|| camel_case(segment));
        path.push(key.clone());
        if i + 1 == segments.len() {
            map.insert(key, value);
            break;
        }
        node = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(path.join("."))
}

fn normalise(key: &str) -> String {
    key.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect()
}

fn same_key(existing: &str, segment: &str) -> bool {
    normalise(existing) == normalise(segment)
}

/// `ENDPOINT_URL` -> `endpointUrl`.
fn camel_case(segment: &str) -> String {
    let mut out = String::new();
    for (i, word) in segment.split('_').filter(|w| !w.is_empty()).enumerate() {
        let lower = word.to_ascii_lowercase();
        if i == 0 {
            out.push_str(&lower);
        } else {
            let mut chars = lower.chars();
            if let Some(first) = chars.next() {
                out.push(first.to_ascii_uppercase());
                out.extend(chars);
            }
        }
    }
    out
}

/// Accepts a number or a numeric string (environment values are strings).
fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrText {
        Num(u32),
        Text(String),
    }
    match Option::<NumOrText>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrText::Num(n)) => Ok(Some(n)),
        Some(NumOrText::Text(t)) => {
            t.trim().parse().map(Some).map_err(|_| serde::de::Error::custom(format!("`{t}` is not a whole number")))
        }
    }
}

/// A list of strings, or one comma-separated string (as an environment variable gives it).
fn lenient_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Option::<ListOrText>::deserialize(d)? {
        None => vec![],
        Some(ListOrText::List(list)) => list,
        Some(ListOrText::Text(text)) => {
            text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
        }
    })
}

/// A duration string, checked with the same grammar as `fulfilmentTimeout`.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum BoolOrText {
        Bool(bool),
        Text(String),
    }
    match BoolOrText::deserialize(d)? {
        BoolOrText::Bool(b) => Ok(b),
        BoolOrText::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" | "" => Ok(false),
            _ => Err(serde::de::Error::custom(format!("`{t}` is not true or false"))),
        },
    }
}

fn duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    crate::api::duration::parse(&text).map_err(serde::de::Error::custom)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn err(result: Result<Config, ConfigError>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn no_config_at_all_gives_one_sim_provider_named_default() {
        let cfg = Config::load(None, env(&[])).unwrap();
        assert_eq!(cfg.cluster_id, "orb");
        assert_eq!(cfg.providers.len(), 1);
        assert_eq!(cfg.providers["default"], ProviderConfig::Sim(SimSettings::default()));
    }

    #[test]
    fn file_values_are_read_in_camel_case() {
        let f =
            file("clusterId: prod\nproviders:\n  east:\n    type: aws\n    region: us-east-1\n    maxAttempts: 5\n");
        let cfg = Config::load(Some(f.path()), env(&[])).unwrap();
        assert_eq!(cfg.cluster_id, "prod");
        let ProviderConfig::Aws(aws) = &cfg.providers["east"] else { panic!("not aws") };
        assert_eq!(aws.region, "us-east-1");
        assert_eq!(aws.max_attempts, Some(5));
        assert!(!cfg.providers.contains_key("default"), "a file with providers replaces the default");
    }

    #[test]
    fn json_files_are_accepted_too() {
        let f = file(r#"{"providers": {"default": {"type": "sim", "pendingDelay": "0s"}}}"#);
        let cfg = Config::load(Some(f.path()), env(&[])).unwrap();
        let ProviderConfig::Sim(sim) = &cfg.providers["default"] else { panic!("not sim") };
        assert_eq!(sim.pending(), Duration::ZERO);
    }

    #[test]
    fn environment_beats_file_and_maps_screaming_snake_to_camel_case() {
        let f = file("providers:\n  default:\n    type: aws\n    region: us-east-1\n");
        let cfg = Config::load(
            Some(f.path()),
            env(&[
                ("ORB_PROVIDERS__DEFAULT__REGION", "us-west-2"),
                ("ORB_PROVIDERS__DEFAULT__ENDPOINT_URL", "http://127.0.0.1:5000"),
                ("ORB_PROVIDERS__DEFAULT__MAX_ATTEMPTS", "7"),
                ("ORB_CLUSTER_ID", "blue"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.cluster_id, "blue");
        let ProviderConfig::Aws(aws) = &cfg.providers["default"] else { panic!("not aws") };
        assert_eq!(aws.region, "us-west-2");
        assert_eq!(aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(aws.max_attempts, Some(7));
    }

    #[test]
    fn environment_alone_can_define_a_provider() {
        let cfg = Config::load(
            None,
            env(&[("ORB_PROVIDERS__DEFAULT__TYPE", "aws"), ("ORB_PROVIDERS__DEFAULT__REGION", "eu-west-1")]),
        )
        .unwrap();
        assert!(matches!(&cfg.providers["default"], ProviderConfig::Aws(a) if a.region == "eu-west-1"));
    }

    #[test]
    fn json_values_set_lists_and_maps() {
        let cfg = Config::load(
            None,
            env(&[
                ("ORB_PROVIDERS__DEFAULT__TYPE", "sim"),
                ("ORB_PROVIDERS__DEFAULT__INSUFFICIENT_CAPACITY", r#"["m5.large","c5.xlarge"]"#),
                ("ORB_PROVIDERS__SPARE", r#"{"type":"sim","pendingDelay":"5s"}"#),
            ]),
        )
        .unwrap();
        let ProviderConfig::Sim(sim) = &cfg.providers["default"] else { panic!("not sim") };
        assert_eq!(sim.insufficient_capacity, ["m5.large", "c5.xlarge"]);
        assert!(matches!(&cfg.providers["spare"], ProviderConfig::Sim(s) if s.pending_delay == "5s"));
    }

    #[test]
    fn process_variables_are_not_config_keys() {
        let cfg = Config::load(None, env(&[("ORB_E2E_KUBECONFIG", "/x"), ("ORB_LOG", "debug"), ("PATH", "/bin")]));
        assert!(cfg.is_ok());
    }

    #[test]
    fn service_link_variables_kubernetes_injects_are_ignored() {
        // What a pod gets for a Service named orb-operator.
        let cfg = Config::load(
            None,
            env(&[
                ("ORB_OPERATOR_PORT", "tcp://10.0.0.1:8080"),
                ("ORB_OPERATOR_PORT_8080_TCP_ADDR", "10.0.0.1"),
                ("ORB_OPERATOR_SERVICE_HOST", "10.0.0.1"),
                ("ORB_OPERATOR_SERVICE_PORT", "8080"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg, Config::load(None, env(&[])).unwrap());
    }

    #[test]
    fn providers_from_the_environment_alone_replace_the_builtin_sim() {
        let cfg = Config::load(
            None,
            env(&[("ORB_PROVIDERS__PROD__TYPE", "aws"), ("ORB_PROVIDERS__PROD__REGION", "eu-west-1")]),
        )
        .unwrap();
        assert_eq!(cfg.providers.keys().collect::<Vec<_>>(), ["prod"], "no fake `default` beside a real provider");
    }

    #[test]
    fn errors_name_the_variable_that_set_the_key() {
        let msg = err(Config::load(
            None,
            env(&[
                ("ORB_PROVIDERS__DEFAULT__TYPE", "aws"),
                ("ORB_PROVIDERS__DEFAULT__REGION", "us-east-1"),
                ("ORB_PROVIDERS__DEFAULT__REGIONN", "us-east-2"),
            ]),
        ));
        assert!(msg.starts_with("ORB_PROVIDERS__DEFAULT__REGIONN (providers.default.regionn)"), "{msg}");
        let msg = err(Config::load(None, env(&[("ORB_PROVIDERS__DEFAULT__REGION", "us-east-1")])));
        assert!(msg.starts_with("providers.default.type"), "a provider without a type: {msg}");
    }

    #[test]
    fn allowed_instance_profiles_come_as_a_list_or_comma_separated_text() {
        let from_env = Config::load(
            None,
            env(&[
                ("ORB_PROVIDERS__DEFAULT__TYPE", "aws"),
                ("ORB_PROVIDERS__DEFAULT__REGION", "us-east-1"),
                ("ORB_PROVIDERS__DEFAULT__ALLOWED_INSTANCE_PROFILES", "grid-worker, batch"),
            ]),
        )
        .unwrap();
        let ProviderConfig::Aws(aws) = &from_env.providers["default"] else { panic!("aws") };
        assert_eq!(aws.allowed_instance_profiles, ["grid-worker", "batch"]);
        let f = file(
            "providers:\n  default:\n    type: aws\n    region: us-east-1\n    allowedInstanceProfiles: [grid-worker]\n",
        );
        let from_file = Config::load(Some(f.path()), env(&[])).unwrap();
        let ProviderConfig::Aws(aws) = &from_file.providers["default"] else { panic!("aws") };
        assert_eq!(aws.allowed_instance_profiles, ["grid-worker"]);
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let f = file("providers:\n  default:\n    type: aws\n    region: us-east-1\n    endpointUrll: http://x\n");
        let msg = err(Config::load(Some(f.path()), env(&[])));
        assert!(msg.starts_with("providers.default"), "{msg}");
        assert!(msg.contains("endpointUrll"), "{msg}");

        let msg = err(Config::load(
            None,
            env(&[("ORB_PROVIDERS__DEFAULT__TYPE", "sim"), ("ORB_PROVIDERS__DEFAULT__REGION", "us-east-1")]),
        ));
        assert!(msg.starts_with("ORB_PROVIDERS__DEFAULT__REGION (providers.default"), "sim has no region: {msg}");
    }

    #[test]
    fn bad_values_are_errors_that_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("ORB_PROVIDERS__DEFAULT__TYPE", "gcp")], "ORB_PROVIDERS__DEFAULT__TYPE (providers.default.type)"),
            (
                &[("ORB_PROVIDERS__DEFAULT__TYPE", "sim"), ("ORB_PROVIDERS__DEFAULT__PENDING_DELAY", "soon")],
                "ORB_PROVIDERS__DEFAULT__PENDING_DELAY (providers.default.pendingDelay)",
            ),
            (&[("ORB_CLUSTER_ID", "Has Spaces")], "ORB_CLUSTER_ID (clusterId)"),
            (&[("ORB_PROVIDERS__DEFAULT__TYPE", "aws")], "ORB_PROVIDERS__DEFAULT__TYPE (providers.default)"),
            (
                &[
                    ("ORB_PROVIDERS__DEFAULT__TYPE", "aws"),
                    ("ORB_PROVIDERS__DEFAULT__REGION", "r"),
                    ("ORB_PROVIDERS__DEFAULT__MAX_ATTEMPTS", "lots"),
                ],
                "ORB_PROVIDERS__DEFAULT__MAX_ATTEMPTS (providers.default.maxAttempts)",
            ),
            (
                &[
                    ("ORB_PROVIDERS__DEFAULT__TYPE", "aws"),
                    ("ORB_PROVIDERS__DEFAULT__REGION", "r"),
                    ("ORB_PROVIDERS__DEFAULT__ENDPOINT_URL", "localhost:5000"),
                ],
                "ORB_PROVIDERS__DEFAULT__ENDPOINT_URL (providers.default.endpointUrl)",
            ),
            (&[("ORB_PROVIDERS", "[1,2")], "ORB_PROVIDERS"),
        ];
        for (vars, key) in cases {
            let msg = err(Config::load(None, env(vars)));
            assert!(msg.starts_with(key), "expected an error naming {key}, got: {msg}");
        }
    }

    #[test]
    fn a_missing_file_is_an_error_naming_the_path() {
        let msg = err(Config::load(Some(Path::new("/nonexistent/orb.yaml")), env(&[])));
        assert!(msg.contains("/nonexistent/orb.yaml"), "{msg}");
    }

    #[test]
    fn secrets_are_redacted_in_the_printed_config() {
        let cfg = Config::load(
            None,
            env(&[
                ("ORB_PROVIDERS__DEFAULT__TYPE", "aws"),
                ("ORB_PROVIDERS__DEFAULT__REGION", "us-east-1"),
                ("ORB_PROVIDERS__DEFAULT__EXTERNAL_ID", "s3cr3t"),
            ]),
        )
        .unwrap();
        let yaml = cfg.redacted_yaml();
        assert!(!yaml.contains("s3cr3t"), "{yaml}");
        assert!(yaml.contains("externalId: <redacted>"), "{yaml}");
        assert!(yaml.contains("type: aws"), "{yaml}");
    }
}
