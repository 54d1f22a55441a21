//! The `tinystacks-operator` command line: `run`, `crds`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tinystacks_operator::runtime::{self, context::Settings};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "tinystacks-operator", version, about = "Secure AWS stacks declared as Kubernetes resources")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers against the cluster of the current kubeconfig (or in-cluster).
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
}

#[derive(clap::Args)]
struct RunArgs {
    /// How often each object is re-checked against AWS (drift repair, re-verification).
    #[arg(long, env = "TINYSTACKS_RESYNC_PERIOD", default_value = "5m", value_parser = humantime::parse_duration)]
    resync_period: Duration,
    /// Upper bound of the per-object retry backoff.
    #[arg(long, env = "TINYSTACKS_MAX_BACKOFF", default_value = "5m", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
    /// How many objects of each kind are reconciled at once.
    #[arg(long, env = "TINYSTACKS_CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// Watch Stacks, Databases and Bastions in this namespace only (default: all namespaces).
    #[arg(long, env = "TINYSTACKS_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// The operator's own namespace: its leader Lease and template ConfigMaps live there.
    #[arg(long, env = "TINYSTACKS_NAMESPACE", default_value = "tinystacks-system")]
    namespace: String,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "TINYSTACKS_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease so that several replicas can run.
    #[arg(long, env = "TINYSTACKS_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "TINYSTACKS_LEASE_NAME", default_value = "tinystacks-operator")]
    lease_name: String,
    /// How long a leader's lease lasts without renewal.
    #[arg(long, env = "TINYSTACKS_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// This replica's identity in the Lease and in Events (default: POD_NAME, else host and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "TINYSTACKS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match tinystacks_operator::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(&format!("cannot render the CRDs: {error}")),
        },
        Command::Run(args) => {
            init_logging(args.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
            };
            match runtime.block_on(runtime::run(options(args))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error.to_string()),
            }
        }
    }
}

fn options(args: RunArgs) -> runtime::Options {
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    runtime::Options {
        settings: Settings {
            resync_period: args.resync_period,
            max_backoff: args.max_backoff,
            namespace: args.namespace,
        },
        concurrency: args.concurrency,
        watch_namespace: args.watch_namespace,
        metrics_addr: args.metrics_addr,
        leader_election: args.leader_election,
        lease_name: args.lease_name,
        lease_duration: args.lease_duration,
        identity,
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
