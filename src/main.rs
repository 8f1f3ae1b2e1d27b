//! The `orb-operator` binary: `run` the controllers, print the `crd`s, or `config check`.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use orb_operator::{api, config::Config, controller, hostfactory, provider::Registry};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "orb-operator", version, about = "Turns MachineRequests into machines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the controllers against the current kubeconfig or in-cluster config.
    Run {
        /// Operator config file (YAML or JSON); ORB_* variables override it.
        #[arg(long, env = "ORB_CONFIG")]
        config: Option<PathBuf>,
        /// Log format: `text`, or `json` lines (for log collectors).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// The same as `--log-format json` (kept for existing manifests).
        #[arg(long, hide = true)]
        log_json: bool,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long)]
        namespace: Option<String>,
        /// Where `/healthz`, `/readyz` and `/metrics` are served ("off" for nowhere).
        #[arg(long, default_value = "0.0.0.0:8080")]
        http_addr: String,
        /// Reconcile only while holding the Lease `orb-operator` (`--leader-elect=false` for
        /// one replica without a lease).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_elect: bool,
        /// Namespace of the lease (default: the pod's, from POD_NAMESPACE, else `default`).
        #[arg(long)]
        lease_namespace: Option<String>,
    },
    /// Print both CRDs as one multi-document YAML (or write one file per CRD into --dir).
    Crd {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Work with the operator configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Answer one IBM Spectrum Symphony HostFactory provider call (JSON in, JSON on stdout).
    Hostfactory {
        /// The HostFactory call.
        verb: hostfactory::Verb,
        /// The input JSON file HostFactory passes.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Namespace of the templates and requests (else ORB_HF_NAMESPACE, else the plugin config).
        #[arg(long)]
        namespace: Option<String>,
        /// Only templates matching this label selector are offered.
        #[arg(long)]
        template_selector: Option<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective config, secrets redacted.
    Check {
        #[arg(long, env = "ORB_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // HostFactory reads a JSON message on stdout, even for a bad command line.
        Err(e) if std::env::args().nth(1).as_deref() == Some("hostfactory") && e.use_stderr() => {
            println!("{}", serde_json::json!({"message": e.to_string().trim()}));
            return std::process::ExitCode::FAILURE;
        }
        Err(e) => e.exit(),
    };
    // A HostFactory call is one short exchange: a single-threaded runtime starts fastest.
    let runtime = match &cli.command {
        Command::Hostfactory { .. } => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Command::Hostfactory { verb, file, namespace, template_selector } = cli.command {
        // HostFactory reads stdout: only the answer goes there.
        let options = hostfactory::cli::Options { verb, file, namespace, template_selector };
        return runtime.block_on(hostfactory::cli::run(options));
    }
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain, not a backtrace: this is what an operator reads at 3 a.m.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Crd { dir: None } => print!("{}", api::crds_yaml()?),
        Command::Crd { dir: Some(dir) } => {
            for (file, yaml) in api::crd_files()? {
                let path = dir.join(file);
                std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        Command::Config { command: ConfigCommand::Check { config } } => {
            let cfg = Config::from_process(config.as_deref())?;
            print!("{}", cfg.redacted_yaml());
        }
        Command::Hostfactory { .. } => anyhow::bail!("hostfactory calls are answered by hostfactory::cli::run"),
        Command::Run { config, log_format, log_json, namespace, http_addr, leader_elect, lease_namespace } => {
            init_logging(log_json || log_format == LogFormat::Json);
            let cfg = Config::from_process(config.as_deref())?;
            tracing::info!(cluster_id = %cfg.cluster_id, providers = ?cfg.providers.keys().collect::<Vec<_>>(), "configuration loaded");
            let client = kube::Client::try_default()
                .await
                .context("no Kubernetes client configuration (kubeconfig or in-cluster)")?;
            let metrics = std::sync::Arc::new(orb_operator::metrics::Metrics::default());
            let registry = Registry::from_config(&cfg, &metrics).await;
            let listener = match http_addr.as_str() {
                "off" => None,
                addr => Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen on --http-addr {addr}"))?,
                ),
            };
            let election = leader_elect
                .then(|| controller::leader::Election::from_env(lease_namespace, |key| std::env::var(key).ok()));
            controller::run(client, registry, namespace.as_deref(), listener, metrics, election).await?;
        }
    }
    Ok(())
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ORB_LOG").unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json { builder.json().init() } else { builder.init() }
}
