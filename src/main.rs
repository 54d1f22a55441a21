//! The `tinystacks-operator` command line: `run`, `crds`, `account-template`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tinystacks_operator::aws::AwsOptions;
use tinystacks_operator::runtime;
use tinystacks_operator::runtime::context::{SecretNamespaces, Settings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

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
    /// Print the CloudFormation template of an AwsAccountLink, to deploy by hand in Manual mode.
    AccountTemplate(AccountTemplateArgs),
}

#[derive(clap::Args)]
struct AccountTemplateArgs {
    /// Name of the AwsAccountLink.
    link: String,
    /// The principal the role trusts (the operator's role); default: the one the operator recorded
    /// in the link's template ConfigMap.
    #[arg(long, env = "TINYSTACKS_SERVICE_ROLE_ARN")]
    service_role_arn: Option<String>,
    /// The operator's namespace, where the template ConfigMaps live.
    #[arg(long, env = "TINYSTACKS_NAMESPACE", default_value = "tinystacks-system")]
    namespace: String,
}

#[derive(clap::Args)]
struct RunArgs {
    /// How often each object is re-checked against AWS (drift repair, re-verification).
    #[arg(long, env = "TINYSTACKS_RESYNC_PERIOD", default_value = "5m", value_parser = humantime::parse_duration)]
    resync_period: Duration,
    /// Upper bound of the per-object retry backoff.
    #[arg(long, env = "TINYSTACKS_MAX_BACKOFF", default_value = "5m", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
    /// How often an object waiting for AWS (a resource in an in-between state) looks again.
    #[arg(long, env = "TINYSTACKS_AWS_POLL_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    aws_poll_interval: Duration,
    /// How many objects of each kind are reconciled at once.
    #[arg(long, env = "TINYSTACKS_CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// Watch Stacks, Databases and Bastions in this namespace only (default: all namespaces).
    #[arg(long, env = "TINYSTACKS_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// The operator's own namespace: its leader Lease and template ConfigMaps live there.
    #[arg(long, env = "TINYSTACKS_NAMESPACE", default_value = "tinystacks-system")]
    namespace: String,
    /// Namespaces an AwsAccountLink's bootstrap Secret may be in: a comma-separated list, or `*`
    /// for any (default: the operator's own namespace).
    #[arg(long, env = "TINYSTACKS_BOOTSTRAP_SECRET_NAMESPACES", default_value = "")]
    bootstrap_secret_namespaces: String,
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
    /// The IAM principal link roles trust (the operator's service role). Default: the operator's
    /// own identity from sts:GetCallerIdentity (an assumed-role session becomes its role's ARN;
    /// set this flag when that role has a path).
    #[arg(long, env = "TINYSTACKS_SERVICE_ROLE_ARN")]
    service_role_arn: Option<String>,
    /// How long after its CloudFormation stack changed a role that refuses AssumeRole is taken for
    /// IAM still propagating, rather than for a wrong trust policy.
    #[arg(long, env = "TINYSTACKS_ROLE_PROPAGATION_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    role_propagation_grace: Duration,
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
        Command::AccountTemplate(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
            };
            let rendered = runtime.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| format!("cannot load Kubernetes client configuration: {e}"))?;
                tinystacks_operator::account_link::template_for(
                    &client,
                    &args.namespace,
                    &args.link,
                    args.service_role_arn.as_deref(),
                )
                .await
            });
            match rendered {
                Ok(template) => {
                    print!("{template}");
                    ExitCode::SUCCESS
                }
                Err(error) => fail(&error),
            }
        }
        Command::Run(args) => {
            let format = args.log_format;
            init_logging(format);
            give_back_free_memory();
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(error) => return fail_in(format, &format!("cannot start the async runtime: {error}")),
            };
            match runtime.block_on(runtime::run(options(args))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail_in(format, &error.to_string()),
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
            aws_poll: args.aws_poll_interval,
            bootstrap_secret_namespaces: SecretNamespaces::parse(&args.bootstrap_secret_namespaces, &args.namespace),
            claim: format!("{}/{}", args.namespace, args.lease_name),
            namespace: args.namespace,
        },
        concurrency: args.concurrency,
        watch_namespace: args.watch_namespace,
        metrics_addr: args.metrics_addr,
        leader_election: args.leader_election,
        lease_name: args.lease_name,
        lease_duration: args.lease_duration,
        identity,
        aws: AwsOptions {
            service_role_arn: args.service_role_arn,
            role_propagation_grace: args.role_propagation_grace,
        },
    }
}

/// Targets whose debug or trace output holds credential values: the SDK's orchestrator prints the
/// resolved identity (access key ID included) at debug, signed requests and AssumeRole responses at
/// trace; kube's client a Secret's data at trace. A ceiling over whatever RUST_LOG asks for
/// (secrets stay out of logs at every level), never a floor (`RUST_LOG=off` stays silent).
const CREDENTIAL_BEARING_TARGETS: &[(&str, LevelFilter)] = &[
    ("aws_smithy_runtime", LevelFilter::INFO),
    ("aws_smithy_runtime_api", LevelFilter::INFO),
    ("aws_smithy_http_client", LevelFilter::INFO),
    ("aws_sigv4", LevelFilter::INFO),
    ("aws_runtime", LevelFilter::INFO),
    ("aws_config", LevelFilter::INFO),
    ("aws_credential_types", LevelFilter::INFO),
    ("hyper", LevelFilter::INFO),
    ("hyper_util", LevelFilter::INFO),
    ("h2", LevelFilter::INFO),
    ("kube_client", LevelFilter::DEBUG),
];

/// JSON: one flat object per line (`timestamp`, `level`, `target`, `message` and the event's own
/// fields side by side; no span fields, which repeated the object under other names). Text: colour
/// only on a terminal (and never with `NO_COLOR`), so a log written to a file has no escape codes.
fn init_logging(format: LogFormat) {
    let wanted = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ceiling =
        Targets::new().with_default(LevelFilter::TRACE).with_targets(CREDENTIAL_BEARING_TARGETS.iter().copied());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Json => {
            let layer = layer.json().flatten_event(true).with_current_span(false).with_span_list(false);
            registry.with(layer.with_filter(wanted).with_filter(ceiling)).init()
        }
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            registry.with(layer.with_ansi(colour).with_filter(wanted).with_filter(ceiling)).init()
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// A fatal error of `run`, in the log's format: in JSON mode one JSON line like every other (a log
/// pipeline parsing JSON would drop a plain line), written whatever RUST_LOG says.
fn fail_in(format: LogFormat, message: &str) -> ExitCode {
    match format {
        LogFormat::Text => fail(message),
        LogFormat::Json => {
            eprintln!("{}", fatal_line(message, &k8s_openapi::jiff::Timestamp::now().to_string()));
            ExitCode::FAILURE
        }
    }
}

fn fatal_line(message: &str, timestamp: &str) -> String {
    serde_json::json!({
        "timestamp": timestamp,
        "level": "ERROR",
        "target": env!("CARGO_CRATE_NAME"),
        "message": format!("error: {message}"),
    })
    .to_string()
}

/// Every 10 s, has glibc's allocator give the system back the pages that nothing uses any more.
///
/// A convergence handles large AWS answers (one list of thousands of subnets is megabytes of XML
/// and of parsed resources), next to the long-lived small allocations of the view and the caches.
/// glibc returns freed memory to the system only from the top of each heap, so the pages of those
/// answers stayed resident, and the process held its convergence peak for good (docs/BENCHMARKS.md:
/// 171 MiB at 1,000 Stacks with Databases). `malloc_trim` releases free pages anywhere in the
/// heaps. It takes a few milliseconds; nothing else runs on this thread.
///
/// Before that, glibc is held to two arenas (`M_ARENA_MAX`). By default it gives each thread that
/// meets a locked arena a new one, up to eight per core, and each arena keeps its own free pages
/// and fragments: at 1,000 Stacks two arenas held 81.6 MiB where the default held 92.3 MiB. The
/// runtime has two worker threads on two cores, and the operator's threads spend their time
/// waiting on the network, so they rarely meet on an arena's lock.
fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointer and only sets the allocator's own parameters; it is called
    // here before the runtime's threads exist.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) } == 0 {
        tracing::warn!("cannot limit the allocator's arenas; memory use may be higher");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let spawned = std::thread::Builder::new().name("malloc-trim".into()).stack_size(64 * 1024).spawn(|| {
        loop {
            std::thread::sleep(Duration::from_secs(10));
            // SAFETY: malloc_trim takes no pointer and only works on the allocator's own state,
            // under the allocator's locks; it is safe to call from any thread at any time.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the thread that gives free memory back to the system");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fatal_error_in_json_mode_is_one_flat_json_line() {
        let line = super::fatal_line("cannot reach the Kubernetes API server: refused", "2026-01-01T00:00:00Z");
        assert_eq!(line.lines().count(), 1);
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(value["level"], "ERROR");
        assert_eq!(value["message"], "error: cannot reach the Kubernetes API server: refused");
        assert!(value.get("fields").is_none());
    }
}
