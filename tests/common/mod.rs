//! Shared harness of the integration tests: a client for the local control plane started by
//! `hack/testenv.sh up`, the CRDs installed from the Rust types, a fresh namespace per test,
//! and the real operator binary run as a child process.
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// A client for the test control plane; fails with the command to run when it is not up.
pub async fn client() -> Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run the tests with `make test`, or `source \"$(hack/testenv.sh up)\"` first"
    );
    Client::try_default().await.expect("a client for the test control plane")
}

/// Installs (server-side apply) the CRDs generated from the types and waits until each is
/// Established.
pub async fn install_crds(client: &Client) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in tinystacks_operator::api::crds() {
        let name = crd.name_any();
        api.patch(&name, &PatchParams::apply("tinystacks-tests").force(), &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("CRD {name} was not accepted: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} did not become Established"))
        .expect("watching the CRD");
    }
}

/// A random lowercase suffix for names that must not collide between tests and runs.
pub fn suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..6).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect()
}

/// A namespace of its own for one test, deleted when the test ends.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", suffix());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // kubectl, not the client: the client's connection lives on the test's runtime, which
        // cannot be blocked on from here. The namespace controller finishes the job.
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The operator binary running against the test control plane, killed when dropped.
pub struct Operator {
    child: Child,
    /// The watch recording the generated secrets while the operator runs (`secrets.rs`).
    recorder: Option<tokio::task::AbortHandle>,
    pub metrics_port: u16,
    pub identity: String,
    pub log: PathBuf,
}

pub struct OperatorConfig<'a> {
    pub namespace: &'a str,
    pub lease_name: &'a str,
    pub resync: &'a str,
    pub extra_args: Vec<String>,
}

impl Operator {
    pub fn start(config: OperatorConfig<'_>) -> Self {
        Self::start_with_env(config, &[])
    }

    /// Like `start`, with extra environment variables, e.g. a `KUBECONFIG` holding another
    /// identity's token (the chart test runs the operator as the chart's ServiceAccount).
    pub fn start_with_env(config: OperatorConfig<'_>, env: &[(&str, &str)]) -> Self {
        let metrics_port = free_port();
        let identity = format!("test-operator-{}", suffix());
        let log = secrets::log_dir().join(format!("{identity}.log"));
        let file = std::fs::File::create(&log).expect("operator log file");
        // `TINYSTACKS_OPERATOR_BIN` names a copy of the binary: with a target directory shared by
        // several checkouts, another build may replace the one cargo built for these tests.
        let binary = std::env::var("TINYSTACKS_OPERATOR_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tinystacks-operator").into());
        let child = Command::new(binary)
            .arg("run")
            .args(["--namespace", config.namespace])
            .args(["--lease-name", config.lease_name])
            .args(["--lease-duration", "6s"])
            .args(["--resync-period", config.resync])
            .args(["--max-backoff", "5s"])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--identity", &identity])
            .args(&config.extra_args)
            .env("RUST_LOG", "debug,hyper=info,tower=info,rustls=info,kube_client=info")
            .env("TINYSTACKS_LOG_FORMAT", "json")
            // The tests keep each link's bootstrap Secret in the test's own namespace, which is not
            // always the operator's; the default (the operator's namespace only) is tested with
            // `env` overriding this (tests/operator.rs).
            .env("TINYSTACKS_BOOTSTRAP_SECRET_NAMESPACES", "*")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the operator");
        let recorder = secrets::watch_generated_secrets();
        Self { child, recorder, metrics_port, identity, log }
    }

    /// An operator without leader election that watches `namespace` only and keeps its Lease and
    /// ConfigMaps there.
    pub fn in_namespace(namespace: &str, resync: &str, env: &[(&str, &str)]) -> Self {
        let config = OperatorConfig {
            namespace,
            lease_name: "tinystacks-operator",
            resync,
            extra_args: vec!["--watch-namespace".into(), namespace.into(), "--leader-election".into(), "false".into()],
        };
        Self::start_with_env(config, env)
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The exit code if the process has ended (`-1` for a signal), without waiting.
    pub fn exited(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().map(|s| s.code().unwrap_or(-1))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the operator's HTTP endpoint; returns (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_port, path)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(recorder) = self.recorder.take() {
            recorder.abort();
        }
        secrets::save_cluster_said(&self.identity);
        if std::thread::panicking() {
            eprintln!("--- operator log ({}) ---\n{}", self.log.display(), self.logs());
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A minimal HTTP/1.1 GET, enough for /metrics, /healthz and /readyz.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// Polls `probe` until it returns `Some`, or panics with `what` and the last observation.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(observed) => observed,
        };
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The condition `type_` of a dynamic object, as JSON.
pub fn condition(obj: &Value, type_: &str) -> Option<Value> {
    obj.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == type_).cloned()
}

/// Waits (30 s) until the object's condition has the given status and reason.
pub async fn wait_condition<K>(api: &Api<K>, name: &str, type_: &str, status: &str, reason: &str) -> Value
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    wait_condition_for(api, name, type_, status, reason, Duration::from_secs(30)).await
}

/// Serializes the tests that run an operator: each operator watches the whole cluster, so two at
/// once would both reconcile the other test's objects.
pub static OPERATOR_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The reasons of the Events about the object `name` in `namespace`.
pub async fn event_reasons(client: &Client, namespace: &str, name: &str) -> Vec<(String, String)> {
    use k8s_openapi::api::events::v1::Event;
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    events
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect()
}

/// Whether the operator's JSON log has the change `reason` made to `kind` `name` at info, as every
/// change is logged (and made an Event).
pub fn logged_change(log: &str, kind: &str, name: &str, reason: &str) -> bool {
    log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|l| {
        l["level"] == "INFO" && l["kind"] == kind && l["name"] == name && l["reason"] == reason && l["note"].is_string()
    })
}

/// A link that verifies: CloudFormation mode in a fresh moto account, whose credentials are the
/// bootstrap Secret in `ns`.
pub async fn verified_link_spec(client: &Client, ns: &str, allowed: &[&str]) -> Value {
    use aws_credential_types::provider::ProvideCredentials;
    let account = moto::new_account_id();
    let config = moto::account_config(&account).await;
    let provider = config.credentials_provider().expect("a credentials provider");
    let creds = provider.provide_credentials().await.expect("credentials");
    let mut data = serde_json::Map::new();
    data.insert("AWS_ACCESS_KEY_ID".into(), json!(creds.access_key_id()));
    data.insert("AWS_SECRET_ACCESS_KEY".into(), json!(creds.secret_access_key()));
    if let Some(token) = creds.session_token() {
        data.insert("AWS_SESSION_TOKEN".into(), json!(token));
    }
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(json!({"metadata": {"name": "bootstrap"}, "stringData": data})).expect("Secret");
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns);
    secrets.create(&PostParams::default(), &secret).await.expect("bootstrap Secret");
    json!({"accountId": account, "region": "us-east-1", "allowedNamespaces": allowed,
           "bootstrap": {"mode": "CloudFormation", "credentialsSecretRef": {"namespace": ns, "name": "bootstrap"}}})
}

pub mod aws_waits;
pub mod fault_proxy;
pub mod fixtures;
pub mod invariants;
pub mod moto;
pub mod secrets;

pub use fixtures::*;
