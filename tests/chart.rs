//! The Helm chart, and how the operator fits GitOps tools:
//! - the chart's CRDs are the generated ones, `helm lint` is clean, and it renders a restricted,
//!   highly available, least-privilege install whose settings reach flags the binary knows;
//! - installed into the real API server, its ServiceAccount's token (TokenRequest API) runs the
//!   operator out of cluster through every kind's lifecycle with no RBAC denial, and a rule taken
//!   away is reported with its verb and resource;
//! - over live objects, the real kstatus library (Flux, `kubectl wait`), the Argo CD health check
//!   in Lua, and `kubectl wait --for=condition=Ready` say what the conditions mean.
//!
//! Needs the environment of `hack/testenv.sh up` (`helm`, `kubectl`, `kstatus`, `lupa-python`
//! on PATH through its env file).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tinystacks_operator::api::{
    AwsAccountLink, Bastion, ChangePolicy, Database, FINALIZER, Management, PAUSED_ANNOTATION, Stack,
};
use tinystacks_operator::runtime::plan;

use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/tinystacks-operator");
/// The oldest Kubernetes the chart supports (README, `checkKubeVersion` in `_helpers.tpl`):
/// rendering for it proves that no newer API is used.
const MIN_KUBE_VERSION: &str = "1.31.0";
const WAIT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------------------------------
// Tools

/// Runs `cmd`, optionally feeding `stdin`; panics with the command's output if it cannot start.
fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e}; source the env file of `hack/testenv.sh up` (it puts the tools on PATH)")
    });
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for the command")
}

/// Runs `cmd` and returns its stdout; panics with both outputs unless it succeeds.
fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd, None);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn helm() -> Command {
    Command::new("helm")
}

fn kubectl() -> Command {
    Command::new("kubectl")
}

/// `helm template` of the chart with `--set` values; the documents, or helm's error.
fn render(sets: &[&str]) -> Result<Vec<Value>, String> {
    render_yaml(&["t", "--namespace", "tinystacks-system", "--kube-version", MIN_KUBE_VERSION], sets)
        .and_then(|text| parse_documents(&text))
}

/// `helm template` with `args` (release name, flags) and `--set` values: the YAML, or helm's error.
fn render_yaml(args: &[&str], sets: &[&str]) -> Result<String, String> {
    let mut cmd = helm();
    cmd.arg("template").args(args).arg(CHART);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = run(&mut cmd, None);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(doc).map_err(|e| format!("rendered YAML: {e}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn rendered(sets: &[&str]) -> Vec<Value> {
    render(sets).unwrap_or_else(|e| panic!("helm template with {sets:?} failed: {e}"))
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().filter_map(|d| d["kind"].as_str().map(String::from)).collect()
}

fn container(docs: &[Value]) -> &Value {
    &find(docs, "Deployment").expect("a Deployment")["spec"]["template"]["spec"]["containers"][0]
}

/// The container's environment as (name, value or valueFrom).
fn env_of(docs: &[Value]) -> Vec<(String, Value)> {
    container(docs)["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.get("value").or(e.get("valueFrom")).cloned().unwrap()))
        .collect()
}

fn env_value(docs: &[Value], name: &str) -> Option<Value> {
    env_of(docs).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

// ------------------------------------------------------------------------------------------------
// The chart on its own

#[test]
fn the_charts_crds_are_the_generated_ones_byte_for_byte() {
    let committed = std::fs::read(format!("{REPO}/crds/tinystacks.io.yaml")).expect("crds/tinystacks.io.yaml");
    let chart = std::fs::read(format!("{CHART}/crds/tinystacks.io.yaml")).expect("the chart's crds/");
    assert!(committed == chart, "charts/tinystacks-operator/crds/ differs from crds/: run `make crds`");
    let generated = tinystacks_operator::api::crds_yaml().expect("render the CRDs");
    assert!(chart == generated.as_bytes(), "the chart's CRDs differ from the Rust types: run `make crds`");
}

#[test]
fn helm_lint_is_clean() {
    let out = run(helm().args(["lint", CHART, "--strict", "--kube-version", MIN_KUBE_VERSION]), None);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "helm lint failed:\n{text}");
    assert!(!text.contains("[WARNING]") && !text.contains("[ERROR]"), "helm lint is not clean:\n{text}");
    // With every optional object on, too.
    let all_on = [
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "metrics.grafanaDashboard.enabled=true",
        "networkPolicy.enabled=true",
        "networkPolicy.egress.enabled=true",
        "serviceAccount.roleArn=arn:aws:iam::123456789012:role/tinystacks-operator",
    ];
    let mut cmd = helm();
    cmd.args(["lint", CHART, "--strict", "--kube-version", MIN_KUBE_VERSION]);
    for set in all_on {
        cmd.args(["--set", set]);
    }
    let out = run(&mut cmd, None);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("[WARNING]"), "helm lint with {all_on:?}:\n{text}");
}

#[test]
fn the_default_install_is_highly_available_restricted_and_probed() {
    let docs = rendered(&[]);
    let expected: BTreeSet<String> = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds(&docs), expected, "the optional ServiceMonitor and NetworkPolicy are off by default");

    let deployment = find(&docs, "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = container(&docs);
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(c["resources"][kind][resource].is_string(), "resources.{kind}.{resource} is set");
        }
    }
    assert_eq!(c["livenessProbe"]["httpGet"], json!({"path": "/healthz", "port": "metrics"}));
    assert_eq!(c["readinessProbe"]["httpGet"], json!({"path": "/readyz", "port": "metrics"}));
    assert_eq!(c["ports"][0], json!({"name": "metrics", "containerPort": 8080, "protocol": "TCP"}));
    assert_eq!(c["args"], json!(["run"]));
    assert_eq!(c["image"], "tinystacks-operator:0.1.0", "the default tag is the appVersion");

    // Each replica's identity and the operator's namespace come from the downward API.
    assert_eq!(env_value(&docs, "POD_NAME").unwrap(), json!({"fieldRef": {"fieldPath": "metadata.name"}}));
    assert_eq!(
        env_value(&docs, "TINYSTACKS_NAMESPACE").unwrap(),
        json!({"fieldRef": {"fieldPath": "metadata.namespace"}})
    );
    assert_eq!(env_value(&docs, "TINYSTACKS_LEADER_ELECTION").unwrap(), "true");
    assert_eq!(env_value(&docs, "TINYSTACKS_METRICS_ADDR").unwrap(), "0.0.0.0:8080");

    let pdb = find(&docs, "PodDisruptionBudget").unwrap();
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], deployment["spec"]["selector"]);
    let service = find(&docs, "Service").unwrap();
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(&service["spec"]["selector"], &deployment["spec"]["selector"]["matchLabels"]);

    // One replica: no PDB, which would block every node drain.
    assert!(find(&rendered(&["replicaCount=1"]), "PodDisruptionBudget").is_none());
}

#[test]
fn values_reach_the_operator_as_flags_it_knows() {
    let docs = rendered(&[
        "aws.region=eu-west-1",
        "aws.endpointUrl=http://127.0.0.1:5000",
        "aws.serviceRoleArn=arn:aws:iam::123456789012:role/ops/tinystacks",
        "operator.resyncPeriod=2m",
        "operator.maxBackoff=1m",
        "operator.awsPollInterval=5s",
        "operator.concurrency=8",
        "operator.logFormat=text",
        "operator.logLevel=debug",
        "operator.watchNamespace=team-a",
        "operator.leaderElection.leaseName=my-lease",
        "operator.leaderElection.leaseDuration=20s",
        "metrics.port=9090",
        "image.repository=registry.example/tinystacks-operator",
        "image.tag=1.2.3",
    ]);
    for (name, value) in [
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        ("TINYSTACKS_SERVICE_ROLE_ARN", "arn:aws:iam::123456789012:role/ops/tinystacks"),
        ("TINYSTACKS_RESYNC_PERIOD", "2m"),
        ("TINYSTACKS_MAX_BACKOFF", "1m"),
        ("TINYSTACKS_AWS_POLL_INTERVAL", "5s"),
        ("TINYSTACKS_CONCURRENCY", "8"),
        ("TINYSTACKS_LOG_FORMAT", "text"),
        ("RUST_LOG", "debug"),
        ("TINYSTACKS_WATCH_NAMESPACE", "team-a"),
        ("TINYSTACKS_LEASE_NAME", "my-lease"),
        ("TINYSTACKS_LEASE_DURATION", "20s"),
        ("TINYSTACKS_METRICS_ADDR", "0.0.0.0:9090"),
    ] {
        assert_eq!(env_value(&docs, name), Some(json!(value)), "{name}");
    }
    assert_eq!(container(&docs)["image"], "registry.example/tinystacks-operator:1.2.3");
    assert_eq!(container(&docs)["ports"][0]["containerPort"], 9090);
    let role = find(&docs, "Role").unwrap();
    assert!(role["rules"].as_array().unwrap().iter().any(|r| r["resourceNames"] == json!(["my-lease"])));
    let digest = format!("sha256:{}", "a".repeat(64));
    let pinned = rendered(&[&format!("image.digest={digest}")]);
    assert_eq!(container(&pinned)["image"], format!("tinystacks-operator@{digest}"));

    // Every TINYSTACKS_* variable the chart sets is one `tinystacks-operator run` reads.
    let help = run_ok(Command::new(env!("CARGO_BIN_EXE_tinystacks-operator")).args(["run", "--help"]));
    for (name, _) in env_of(&docs) {
        if name.starts_with("TINYSTACKS_") || name == "POD_NAME" {
            assert!(help.contains(&format!("env: {name}")), "`run --help` does not know {name}:\n{help}");
        }
    }
}

#[test]
fn optional_objects_and_the_irsa_annotation() {
    let docs = rendered(&[
        "serviceAccount.roleArn=arn:aws:iam::123456789012:role/tinystacks-operator",
        "serviceAccount.annotations.team=platform",
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prometheus",
        "networkPolicy.enabled=true",
        "networkPolicy.egress.enabled=true",
    ]);
    let sa = find(&docs, "ServiceAccount").unwrap();
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/tinystacks-operator"
    );
    assert_eq!(sa["metadata"]["annotations"]["team"], "platform");
    assert!(find(&rendered(&[]), "ServiceAccount").unwrap()["metadata"].get("annotations").is_none());

    let monitor = find(&docs, "ServiceMonitor").expect("a ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["selector"]["matchLabels"], find(&docs, "Service").unwrap()["spec"]["selector"]);

    let policy = find(&docs, "NetworkPolicy").expect("a NetworkPolicy");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], "metrics");
    let egress_ports: Vec<&Value> =
        policy["spec"]["egress"].as_array().unwrap().iter().flat_map(|r| r["ports"].as_array().unwrap()).collect();
    assert!(egress_ports.iter().any(|p| p["port"] == 53 && p["protocol"] == "UDP"), "DNS");
    assert!(egress_ports.iter().any(|p| p["port"] == 443), "AWS");
    let ingress_only = rendered(&["networkPolicy.enabled=true"]);
    assert_eq!(find(&ingress_only, "NetworkPolicy").unwrap()["spec"]["policyTypes"], json!(["Ingress"]));
}

#[test]
fn the_schema_and_the_templates_reject_mistakes_with_a_clear_message() {
    for (set, expected) in [
        ("operator.logFormat=xml", "/operator/logFormat"),
        ("operator.concurrency=0", "/operator/concurrency"),
        ("operator.resyncPeriod=soon", "/operator/resyncPeriod"),
        ("replicaCount=0", "/replicaCount"),
        ("serviceAccount.roleArn=my-role", "/serviceAccount/roleArn"),
        ("aws.endpointUrl=moto:5000", "/aws/endpointUrl"),
        ("image.digest=latest", "/image/digest"),
        ("reslurces.limits.cpu=1", "reslurces"),
    ] {
        let error = render(&[set]).expect_err(set);
        assert!(error.contains(expected), "{set}: {error}");
    }
    let error = render(&["operator.leaderElection.enabled=false"]).expect_err("two replicas without a Lease");
    assert!(error.contains("leaderElection.enabled must be true"), "{error}");
    render(&["operator.leaderElection.enabled=false", "replicaCount=1"]).expect("one replica needs no Lease");
    let error = render(&["metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"]).expect_err("monitor");
    assert!(error.contains("metrics.service.enabled"), "{error}");
}

#[test]
fn helm_template_with_no_flags_renders() {
    // No --kube-version: Helm renders for its built-in default version (v1.20 in a build without
    // the version flags), which a `kubeVersion` constraint in Chart.yaml refused.
    let text = render_yaml(&["t"], &[]).unwrap_or_else(|e| panic!("helm template with no flags: {e}"));
    let docs = parse_documents(&text).expect("YAML");
    assert!(find(&docs, "Deployment").is_some(), "{text}");
    let chart = std::fs::read_to_string(format!("{CHART}/Chart.yaml")).expect("Chart.yaml");
    assert!(!chart.lines().any(|l| l.starts_with("kubeVersion:")), "a kubeVersion constraint is back in Chart.yaml");
}

/// Where each CEL function the CRDs may call entered the API server's base CEL environment
/// (k8s.io/apiserver pkg/cel/environment/base.go, `IntroducedVersion`); 0 for what CRD rules
/// always had. An API server compiles new rules for its previous minor version, so the floor is
/// one minor above the newest library used.
const CEL_FUNCTIONS: &[(&str, u32)] = &[
    // The CEL standard library, the strings extension (version 0), lists, regex, URLs.
    ("size", 0),
    ("matches", 0),
    ("startsWith", 0),
    ("endsWith", 0),
    ("contains", 0),
    ("has", 0),
    ("all", 0),
    ("exists", 0),
    ("exists_one", 0),
    ("map", 0),
    ("filter", 0),
    ("int", 0),
    ("uint", 0),
    ("double", 0),
    ("string", 0),
    ("bool", 0),
    ("bytes", 0),
    ("duration", 0),
    ("timestamp", 0),
    ("dyn", 0),
    ("type", 0),
    ("charAt", 0),
    ("indexOf", 0),
    ("lastIndexOf", 0),
    ("lowerAscii", 0),
    ("upperAscii", 0),
    ("replace", 0),
    ("split", 0),
    ("substring", 0),
    ("trim", 0),
    ("join", 0),
    ("isSorted", 0),
    ("sum", 0),
    ("min", 0),
    ("max", 0),
    ("find", 0),
    ("findAll", 0),
    ("url", 0),
    ("isURL", 0),
    ("getScheme", 0),
    ("getHost", 0),
    ("getHostname", 0),
    ("getPort", 0),
    ("getEscapedPath", 0),
    ("getQuery", 0),
    // 1.28: optional types and quantities.
    ("optional.of", 28),
    ("optional.ofNonZeroValue", 28),
    ("optional.none", 28),
    ("orValue", 28),
    ("hasValue", 28),
    ("value", 28),
    ("quantity", 28),
    ("isQuantity", 28),
    // 1.29: strings extension version 2, sets.
    ("format", 29),
    ("quote", 29),
    ("sets.contains", 29),
    ("sets.equivalent", 29),
    ("sets.intersects", 29),
    // 1.30: the IP and CIDR libraries.
    ("ip", 30),
    ("isIP", 30),
    ("cidr", 30),
    ("isCIDR", 30),
    ("family", 30),
    ("isUnspecified", 30),
    ("isLoopback", 30),
    ("isLinkLocalMulticast", 30),
    ("isLinkLocalUnicast", 30),
    ("isGlobalUnicast", 30),
    ("isCanonical", 30),
    ("containsIP", 30),
    ("containsCIDR", 30),
    ("masked", 30),
    ("prefixLength", 30),
    // 1.31: the format library; 1.32: two-variable comprehensions; 1.33: semver; 1.34: lists v3.
    ("validate", 31),
    ("transformList", 32),
    ("transformMap", 32),
    ("transformMapEntry", 32),
    ("semver", 33),
    ("isSemver", 33),
    ("distinct", 34),
    ("flatten", 34),
    ("range", 34),
    ("sort", 34),
    ("sortBy", 34),
    ("reverse", 34),
    ("first", 34),
    ("last", 34),
];

/// The CEL rules of every `x-kubernetes-validations` in `value`.
fn cel_rules(value: &Value, rules: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(validations)) = map.get("x-kubernetes-validations") {
                rules.extend(validations.iter().filter_map(|v| v["rule"].as_str().map(String::from)));
            }
            map.values().for_each(|v| cel_rules(v, rules));
        }
        Value::Array(items) => items.iter().for_each(|v| cel_rules(v, rules)),
        _ => {}
    }
}

/// The functions a CEL rule calls (`sets.contains`, `format.named`, else the name after the last
/// dot), and whether a comprehension takes two variables (`all(k, v, ...)`).
fn cel_calls(rule: &str) -> Vec<String> {
    let chars: Vec<char> = rule.chars().collect();
    let mut calls = Vec::new();
    let (mut i, mut quote) = (0, None);
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == '\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                i += 1;
            }
            if chars.get(i) == Some(&'(') {
                let path: String = chars[start..i].iter().collect();
                let parts: Vec<&str> = path.split('.').collect();
                let name = match parts[0] {
                    "sets" | "optional" | "format" if parts.len() > 1 => format!("{}.{}", parts[0], parts[1]),
                    _ => parts[parts.len() - 1].to_string(),
                };
                if matches!(name.as_str(), "all" | "exists" | "exists_one") && top_level_commas(&chars[i..]) == 2 {
                    calls.push("transformList".into()); // a two-variable comprehension: 1.32
                }
                calls.push(name);
            }
            continue;
        }
        i += 1;
    }
    calls
}

/// The commas at the top level of the argument list that `args` opens.
fn top_level_commas(args: &[char]) -> usize {
    let (mut depth, mut commas, mut quote) = (0, 0, None);
    for &c in args {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            (None, ',') if depth == 1 => commas += 1,
            _ => {}
        }
    }
    commas
}

#[test]
fn the_kubernetes_floor_is_the_oldest_whose_cel_compiles_the_crds_rules() {
    let text = std::fs::read_to_string(format!("{REPO}/crds/tinystacks.io.yaml")).expect("crds/");
    let mut rules = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let crd: Value = serde::Deserialize::deserialize(doc).expect("CRD YAML");
        cel_rules(&crd, &mut rules);
    }
    assert!(rules.len() > 10, "the CRDs' rules: {rules:?}");
    let mut newest = (0, String::new());
    for rule in &rules {
        for call in cel_calls(rule) {
            let Some(&(_, minor)) = CEL_FUNCTIONS.iter().find(|(name, _)| *name == call) else {
                panic!("{call}() in `{rule}`: add the Kubernetes version its CEL library came in to CEL_FUNCTIONS");
            };
            if minor > newest.0 {
                newest = (minor, call);
            }
        }
    }
    let floor = format!("1.{}", newest.0 + 1);
    assert_eq!(format!("{floor}.0"), MIN_KUBE_VERSION, "the newest CEL function the CRDs call is {}()", newest.1);
    // The chart's check and the README say the same floor.
    let helpers = std::fs::read_to_string(format!("{CHART}/templates/_helpers.tpl")).expect("_helpers.tpl");
    assert!(helpers.contains(&format!("semverCompare \"<{floor}.0-0\"")), "checkKubeVersion is not at {floor}");
    let readme = std::fs::read_to_string(format!("{REPO}/README.md")).expect("README.md");
    assert!(readme.contains(&format!("Kubernetes {floor} or later")), "the README does not name {floor}");
    // The table itself: a rule of each era is dated as base.go dates it.
    assert_eq!(
        cel_calls("self.all(c, isCIDR(c)) && cidr(self[0]).prefixLength() > 0"),
        ["all", "isCIDR", "cidr", "prefixLength"]
    );
    assert_eq!(cel_calls("self.all(k, v, size(v) < 3)"), ["transformList", "all", "size"]);
    assert_eq!(cel_calls("sets.contains(self, ['a(']) && 'x.size(' != ''"), ["sets.contains"]);
}

/// A second kube-apiserver over the test environment's etcd (a key prefix of its own), emulating
/// `version` (`--emulated-version`: its APIs, features and CEL environment are that version's);
/// stopped when dropped.
struct EmulatedApiServer {
    child: std::process::Child,
    server: String,
}

impl EmulatedApiServer {
    fn start(version: &str) -> Self {
        let state = PathBuf::from(std::env::var("TINYSTACKS_STATE").expect("TINYSTACKS_STATE of hack/testenv.sh"));
        let ports = std::fs::read_to_string(state.join("ports")).expect("the environment's ports");
        let etcd = ports.lines().find_map(|l| l.strip_prefix("ETCD_PORT=")).expect("ETCD_PORT").trim().to_string();
        let (pki, port, dir) = (state.join("pki"), free_port(), state.join(format!("emulated-{}", suffix())));
        let file = |name: &str| pki.join(name).to_str().expect("path").to_string();
        let log = std::fs::File::create(format!("{}.log", dir.display())).expect("log file");
        let child = Command::new("kube-apiserver")
            .arg(format!("--emulated-version=kube={version}"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd}"))
            .arg(format!("--etcd-prefix=/{}", dir.file_name().unwrap().to_str().unwrap()))
            .arg(format!("--cert-dir={}", dir.display()))
            .arg(format!("--tls-cert-file={}", file("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", file("apiserver.key")))
            .arg(format!("--client-ca-file={}", file("ca.crt")))
            .arg(format!("--service-account-key-file={}", file("sa.pub")))
            .arg(format!("--service-account-signing-key-file={}", file("sa.key")))
            .arg(format!("--secure-port={port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--authorization-mode=RBAC"])
            .args(["--service-cluster-ip-range=10.0.0.0/24", "--endpoint-reconciler-type=none"])
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kube-apiserver (on PATH through the env file)");
        let server = Self { child, server: format!("https://127.0.0.1:{port}") };
        let deadline = Instant::now() + WAIT;
        while !run(kubectl().args(["--server", &server.server, "get", "--raw", "/readyz"]), None).status.success() {
            assert!(
                Instant::now() < deadline,
                "the API server emulating {version} did not start: {}.log",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        server
    }

    /// `kubectl apply --server-side` of `yaml` to this server.
    fn apply(&self, yaml: &str) -> Output {
        run(
            kubectl().args(["--server", &self.server, "apply", "--server-side", "--dry-run=server", "-f", "-"]),
            Some(yaml),
        )
    }
}

impl Drop for EmulatedApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CRD with one CEL rule over a map.
fn probe_crd(rule: &str) -> String {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "probes.floor.tinystacks.io"},
        "spec": {"group": "floor.tinystacks.io", "scope": "Namespaced",
            "names": {"kind": "Probe", "plural": "probes"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "properties": {"spec": {"type": "object", "properties": {"m": {
                    "type": "object", "maxProperties": 4, "additionalProperties": {"type": "string", "maxLength": 9},
                    "x-kubernetes-validations": [{"rule": rule}]}}}}}}}]}})
    .to_string()
}

#[test]
fn an_api_server_emulating_the_floor_accepts_the_crds() {
    // 1.31, the oldest --emulated-version a 1.34 API server takes, is the chart's floor.
    let server = EmulatedApiServer::start("1.31");
    let crds = std::fs::read_to_string(format!("{REPO}/crds/tinystacks.io.yaml")).expect("crds/");
    let out = server.apply(&crds);
    assert!(out.status.success(), "the CRDs at 1.31: {}", String::from_utf8_lossy(&out.stderr));
    // The emulation holds: a rule of 1.32's CEL (a two-variable comprehension) is refused, the
    // IP and CIDR libraries the CRDs use are not.
    let out = server.apply(&probe_crd("self.all(k, v, size(v) < 3)"));
    assert!(!out.status.success(), "a 1.32 CEL rule accepted: the server does not emulate 1.31");
    assert!(server.apply(&probe_crd("self.all(k, isCIDR(self[k]))")).status.success(), "the CIDR library");
}

#[test]
fn an_extra_env_entry_replaces_the_charts_variable() {
    let docs = rendered(&[
        "operator.extraEnv[0].name=RUST_LOG",
        "operator.extraEnv[0].value=trace",
        "operator.extraEnv[1].name=HTTPS_PROXY",
        "operator.extraEnv[1].value=http://proxy:3128",
    ]);
    let env = env_of(&docs);
    let rust_log: Vec<&(String, Value)> = env.iter().filter(|(n, _)| n == "RUST_LOG").collect();
    assert_eq!(rust_log, [&("RUST_LOG".to_string(), json!("trace"))], "one entry, the user's: {env:?}");
    assert_eq!(env_value(&docs, "HTTPS_PROXY"), Some(json!("http://proxy:3128")));
    assert_eq!(env_value(&docs, "TINYSTACKS_LOG_FORMAT"), Some(json!("json")), "the chart's others stay");
    let names: BTreeSet<&String> = env.iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), env.len(), "no name twice: {env:?}");
    // A downward-API variable too, replaced by a plain value.
    let docs = rendered(&["operator.extraEnv[0].name=POD_NAME", "operator.extraEnv[0].value=fixed"]);
    assert_eq!(env_of(&docs).iter().filter(|(n, _)| n == "POD_NAME").count(), 1);
    assert_eq!(env_value(&docs, "POD_NAME"), Some(json!("fixed")));
    let error = render(&["operator.extraEnv[0].value=nameless"]).expect_err("an entry without a name");
    assert!(error.contains("/operator/extraEnv/0") && error.contains("name"), "{error}");
}

/// The values users expect from an operator's chart, each with the settings the test sets.
const USER_VALUES: &[&str] = &[
    "commonLabels.team=platform",
    "deploymentAnnotations.owner=platform",
    "revisionHistoryLimit=3",
    "terminationGracePeriodSeconds=90",
    "strategy.type=Recreate",
    "strategy.rollingUpdate=null",
    "automountServiceAccountToken=false",
    "serviceAccount.automount=false",
    "serviceAccount.labels.tier=ops",
    "podDisruptionBudget.maxUnavailable=1",
    "operator.envFrom[0].configMapRef.name=proxy",
    "extraVolumes[0].name=token",
    "extraVolumes[0].projected.sources[0].serviceAccountToken.path=token",
    "extraVolumes[0].projected.sources[0].serviceAccountToken.expirationSeconds=3600",
    "extraVolumeMounts[0].name=token",
    "extraVolumeMounts[0].mountPath=/var/run/secrets/kubernetes.io/serviceaccount",
    "extraVolumeMounts[0].readOnly=true",
    "metrics.serviceMonitor.honorLabels=true",
    "metrics.serviceMonitor.relabelings[0].action=replace",
    "metrics.serviceMonitor.relabelings[0].sourceLabels[0]=__meta_kubernetes_pod_node_name",
    "metrics.serviceMonitor.relabelings[0].targetLabel=node",
    "metrics.serviceMonitor.metricRelabelings[0].action=drop",
    "metrics.serviceMonitor.metricRelabelings[0].regex=go_.*",
    "metrics.serviceMonitor.metricRelabelings[0].sourceLabels[0]=__name__",
    "metrics.podMonitor.honorLabels=true",
    "metrics.podMonitor.labels.release=prometheus",
    "metrics.podMonitor.relabelings[0].action=replace",
    "metrics.podMonitor.relabelings[0].sourceLabels[0]=__meta_kubernetes_pod_node_name",
    "metrics.podMonitor.relabelings[0].targetLabel=node",
];

#[test]
fn the_values_users_expect_render_and_the_schema_checks_them() {
    let mut sets = USER_VALUES.to_vec();
    sets.push("metrics.serviceMonitor.enabled=true");
    let docs = rendered(&sets);
    for doc in &docs {
        assert_eq!(doc["metadata"]["labels"]["team"], "platform", "commonLabels on {}", doc["kind"]);
    }
    let deployment = find(&docs, "Deployment").unwrap();
    assert_eq!(deployment["metadata"]["annotations"]["owner"], "platform");
    assert_eq!(deployment["spec"]["revisionHistoryLimit"], 3);
    assert_eq!(deployment["spec"]["strategy"], json!({"type": "Recreate"}));
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 90);
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(pod["spec"]["volumes"][0]["name"], "token");
    let c = container(&docs);
    assert_eq!(c["envFrom"], json!([{"configMapRef": {"name": "proxy"}}]));
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/var/run/secrets/kubernetes.io/serviceaccount");
    let sa = find(&docs, "ServiceAccount").unwrap();
    assert_eq!(sa["metadata"]["labels"]["tier"], "ops");
    assert_eq!(sa["automountServiceAccountToken"], false);
    let pdb = &find(&docs, "PodDisruptionBudget").unwrap()["spec"];
    assert_eq!((pdb["maxUnavailable"].clone(), pdb.get("minAvailable")), (json!(1), None), "one of the two");
    let endpoint = &find(&docs, "ServiceMonitor").unwrap()["spec"]["endpoints"][0];
    assert_eq!(endpoint["honorLabels"], true);
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "node");
    assert_eq!(endpoint["metricRelabelings"][0]["action"], "drop");

    // The PodMonitor instead: the pods' metrics port, no Service needed.
    let docs = rendered(&["metrics.podMonitor.enabled=true", "metrics.service.enabled=false"]);
    let monitor = find(&docs, "PodMonitor").expect("a PodMonitor");
    assert!(find(&docs, "Service").is_none());
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        find(&docs, "Deployment").unwrap()["spec"]["selector"]["matchLabels"]
    );
    let error = render(&["metrics.podMonitor.enabled=true", "metrics.serviceMonitor.enabled=true"]).expect_err("both");
    assert!(error.contains("choose one"), "{error}");

    // The defaults: what the chart did before these values existed, the SA's token off.
    let docs = rendered(&[]);
    let deployment = find(&docs, "Deployment").unwrap();
    assert_eq!(
        deployment["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    assert_eq!(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 30);
    assert_eq!(deployment["spec"]["template"]["spec"]["automountServiceAccountToken"], true);
    assert_eq!(find(&docs, "ServiceAccount").unwrap()["automountServiceAccountToken"], false);
    assert_eq!(find(&docs, "PodDisruptionBudget").unwrap()["spec"]["minAvailable"], 1);

    // rbac.create=false: no RBAC object at all.
    let kinds = kinds(&rendered(&["rbac.create=false"]));
    assert!(!kinds.iter().any(|k| k.contains("Role")), "{kinds:?}");

    // The schema refuses what the API server or the templates would trip on.
    for (set, expected) in [
        ("revisionHistoryLimit=-1", "/revisionHistoryLimit"),
        ("terminationGracePeriodSeconds=soon", "/terminationGracePeriodSeconds"),
        ("strategy.type=Sideways", "/strategy/type"),
        ("rbac.create=maybe", "/rbac/create"),
        ("commonLabels.team=1", "/commonLabels/team"),
        ("extraVolumeMounts[0].name=token", "/extraVolumeMounts/0"),
        ("serviceAccount.automount=yes", "/serviceAccount/automount"),
        ("metrics.podMonitor.honorLabels=yes", "/metrics/podMonitor/honorLabels"),
        ("metrics.serviceMonitor.relabelings=drop", "/metrics/serviceMonitor/relabelings"),
        ("podDisruptionBudget.maxUnavailable=true", "/podDisruptionBudget/maxUnavailable"),
        ("operator.watchNamespace=Team_A", "/operator/watchNamespace"),
    ] {
        let error = render(&[set]).expect_err(set);
        assert!(error.contains(expected), "{set}: {error}");
    }
}

/// The chart's alerts, as a PrometheusRule, are the rules promtool checks and unit-tests: the
/// rendered object's `spec` passes `promtool check rules` and `promtool test rules` with the tests
/// of hack/prometheus-rules.test.yaml pointed at it. The dashboard ConfigMap carries the dashboard
/// JSON unchanged, with the label Grafana's sidecar selects. Both only when enabled.
#[test]
fn the_alerts_and_the_dashboard_render_from_the_charts_files_when_enabled() {
    let docs = rendered(&[]);
    assert!(find(&docs, "PrometheusRule").is_none() && find(&docs, "ConfigMap").is_none(), "off by default");

    let docs = rendered(&[
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=kube-prometheus-stack",
        "metrics.grafanaDashboard.enabled=true",
        "metrics.grafanaDashboard.namespace=monitoring",
        "metrics.grafanaDashboard.annotations.grafana_folder=Operators",
        "commonLabels.team=platform",
    ]);
    let rule = find(&docs, "PrometheusRule").expect("a PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "tinystacks-system");
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(rule["metadata"]["labels"]["team"], "platform");
    let file = std::fs::read_to_string(format!("{CHART}/files/prometheus-rules.yaml")).expect("the rules file");
    let file: Value = serde_yaml::from_str(&file).expect("the rules file is YAML");
    assert_eq!(rule["spec"], file, "the PrometheusRule's spec is the rules file as it is");
    let alerts = rule["spec"]["groups"][0]["rules"].as_array().expect("rules");
    assert!(alerts.len() >= 10 && alerts.iter().all(|r| r["alert"].is_string() && r["expr"].is_string()));
    // Prometheus' own templates in the annotations reach it untouched by Helm's.
    assert!(rule.to_string().contains("{{ $labels.kind }}"), "{rule}");
    promtool_checks_the_rendered_rules(&rule["spec"]);

    let dashboard = find(&docs, "ConfigMap").expect("the dashboard ConfigMap");
    let meta = &dashboard["metadata"];
    assert_eq!(meta["name"], "t-tinystacks-operator-dashboard");
    assert_eq!(meta["namespace"], "monitoring");
    assert_eq!(meta["labels"]["grafana_dashboard"], "1", "the label Grafana's sidecar selects by default");
    assert_eq!(meta["labels"]["team"], "platform");
    assert_eq!(meta["annotations"]["grafana_folder"], "Operators");
    let data = dashboard["data"].as_object().expect("data");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["tinystacks-operator.json"]);
    let served: Value = serde_json::from_str(data["tinystacks-operator.json"].as_str().expect("a string"))
        .expect("the dashboard in the ConfigMap is JSON");
    let file = std::fs::read_to_string(format!("{CHART}/files/grafana-dashboard.json")).expect("the dashboard");
    assert_eq!(served, serde_json::from_str::<Value>(&file).expect("JSON"), "the dashboard file as it is");
    // Without a namespace of its own, the release's; the sidecar's label can be another.
    let docs = rendered(&[
        "metrics.grafanaDashboard.enabled=true",
        "metrics.grafanaDashboard.labels.grafana_dashboard=null",
        "metrics.grafanaDashboard.labels.dashboards=tinystacks",
    ]);
    let meta = &find(&docs, "ConfigMap").expect("the dashboard ConfigMap")["metadata"];
    assert_eq!(meta["namespace"], "tinystacks-system");
    assert_eq!((meta["labels"].get("grafana_dashboard"), &meta["labels"]["dashboards"]), (None, &json!("tinystacks")));

    for (set, expected) in [
        ("metrics.prometheusRule.enabled=yes", "/metrics/prometheusRule/enabled"),
        ("metrics.prometheusRule.labels.release=1", "/metrics/prometheusRule/labels/release"),
        ("metrics.grafanaDashboard.namespace=Monitoring_Tools", "/metrics/grafanaDashboard/namespace"),
        ("metrics.grafanaDashboard.folder=Operators", "folder"),
    ] {
        let error = render(&[set]).expect_err(set);
        assert!(error.contains(expected), "{set}: {error}");
    }
}

/// `promtool check rules` and `promtool test rules` over `spec` (a rendered PrometheusRule's), with
/// the unit tests of hack/prometheus-rules.test.yaml, which name the chart's rules file, pointed at
/// it instead.
fn promtool_checks_the_rendered_rules(spec: &Value) {
    let dir = std::env::temp_dir().join(format!("tinystacks-rendered-rules-{}", suffix()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, serde_yaml::to_string(spec).expect("YAML")).expect("write the rules");
    let tests = std::fs::read_to_string(format!("{REPO}/hack/prometheus-rules.test.yaml")).expect("the rule tests");
    let mut tests: Value = serde_yaml::from_str(&tests).expect("the rule tests are YAML");
    assert_eq!(
        tests["rule_files"],
        json!(["../charts/tinystacks-operator/files/prometheus-rules.yaml"]),
        "promtool's tests are the chart's rules' tests"
    );
    tests["rule_files"] = json!(["rules.yaml"]);
    let test_file = dir.join("rules.test.yaml");
    std::fs::write(&test_file, serde_yaml::to_string(&tests).expect("YAML")).expect("write the rule tests");
    let check = run_ok(Command::new("promtool").args(["check", "rules"]).arg(&rules));
    assert!(check.contains("SUCCESS"), "{check}");
    run_ok(Command::new("promtool").args(["test", "rules"]).arg(&test_file));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Least privilege, checked on the rendered rules; the installed test proves they are enough.
#[test]
fn the_roles_grant_no_wildcard_write_all_or_escalation() {
    let docs = rendered(&[]);
    for kind in ["ClusterRole", "Role"] {
        let role = find(&docs, kind).unwrap();
        for rule in role["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs"] {
                assert!(!rule[field].as_array().unwrap().contains(&json!("*")), "{kind} has a wildcard: {rule}");
            }
            for verb in ["deletecollection", "escalate", "bind", "impersonate", "use", "approve"] {
                assert!(!rule["verbs"].as_array().unwrap().contains(&json!(verb)), "{kind} grants {verb}: {rule}");
            }
        }
    }
    let cluster = &find(&docs, "ClusterRole").unwrap()["rules"];
    let rule_for = |resource: &str| {
        cluster
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resources"].as_array().unwrap().contains(&json!(resource)))
            .cloned()
    };
    let written = json!(["get", "list", "watch", "create", "patch", "delete"]);
    let secrets = rule_for("secrets").expect("a rule for Secrets");
    assert_eq!(secrets["verbs"], written, "no update");
    // The bootstrap Secrets: read only, in the operator's own namespace.
    let own = find(&docs, "Role").unwrap();
    let bootstrap: Vec<&Value> =
        own["rules"].as_array().unwrap().iter().filter(|r| r["resources"] == json!(["secrets"])).collect();
    assert_eq!(bootstrap, [&json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]})]);
    assert_eq!(rule_for("namespaces").unwrap()["resourceNames"], json!(["tinystacks-system"]));
    assert!(rule_for("leases").is_none() && rule_for("configmaps").is_none(), "those stay in the Role");
    let kinds = rule_for("stacks").unwrap();
    assert_eq!(
        kinds["verbs"],
        json!(["get", "list", "watch", "patch"]),
        "no create, update or delete of users' objects"
    );

    // With watchNamespace: no Secret right at cluster scope; the same rights, in that namespace.
    let docs = rendered(&["operator.watchNamespace=team-a"]);
    let cluster = find(&docs, "ClusterRole").unwrap();
    assert!(
        !cluster["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"].as_array().unwrap().contains(&json!("secrets"))),
        "cluster-wide Secret rights with watchNamespace: {cluster}"
    );
    let roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Role").collect();
    let team = roles.iter().find(|r| r["metadata"]["namespace"] == "team-a").expect("a Role in team-a");
    assert_eq!(team["rules"], json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": written}]));
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == "team-a")
        .expect("a RoleBinding in team-a");
    assert_eq!(binding["roleRef"]["name"], team["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], "tinystacks-system");
}

// ------------------------------------------------------------------------------------------------
// Installed into the test control plane

/// A release of the chart in a namespace of its own, and a kubeconfig holding a token of its
/// ServiceAccount; uninstalled (its cluster-scoped RBAC with it) when dropped.
struct Release {
    name: String,
    service_account: String,
    kubeconfig: PathBuf,
    client: Client,
    /// `operator.watchNamespace`, which the operator is then started with.
    watch_namespace: Option<String>,
    // Dropped after `drop` uninstalled the release.
    namespace: TestNamespace,
}

impl Release {
    async fn install(client: &Client, prefix: &str) -> Self {
        Self::install_watching(client, prefix, None).await
    }

    /// A release with `operator.watchNamespace` set to `watch_namespace`, if any.
    async fn install_watching(client: &Client, prefix: &str, watch_namespace: Option<&str>) -> Self {
        install_crds(client).await;
        let namespace = TestNamespace::new(client, prefix).await;
        let name = format!("ts-{}", suffix());
        // Everything optional that the API server can hold is on: the NetworkPolicy, the IRSA
        // annotation. No pod runs here (no kubelet); the operator runs out of cluster below.
        let mut install = helm();
        install.args([
            "install",
            &name,
            CHART,
            "--namespace",
            &namespace.name,
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "networkPolicy.egress.enabled=true",
            "--set",
            "serviceAccount.roleArn=arn:aws:iam::123456789012:role/tinystacks-operator",
        ]);
        if let Some(ns) = watch_namespace {
            install.args(["--set", &format!("operator.watchNamespace={ns}")]);
        }
        run_ok(&mut install);
        let service_account = format!("{name}-tinystacks-operator");
        let kubeconfig = service_account_token_kubeconfig(&service_account, &namespace.name);
        let watch_namespace = watch_namespace.map(String::from);
        Self { name, service_account, kubeconfig, client: client.clone(), watch_namespace, namespace }
    }

    fn operator(&self) -> Operator {
        let mut extra_args = vec![];
        if let Some(ns) = &self.watch_namespace {
            extra_args = vec!["--watch-namespace".to_string(), ns.clone()];
        }
        let config = OperatorConfig {
            namespace: &self.namespace.name,
            lease_name: "tinystacks-operator",
            resync: "2s",
            extra_args,
        };
        Operator::start_with_env(
            config,
            // The chart's Roles read bootstrap Secrets in the operator's namespace only: the
            // operator's default (empty), not the harness's `*`.
            &[("KUBECONFIG", self.kubeconfig.to_str().unwrap()), ("TINYSTACKS_BOOTSTRAP_SECRET_NAMESPACES", "")],
        )
    }

    /// A client that authenticates with the ServiceAccount's token, as the operator does.
    async fn service_account_client(&self) -> Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("the token's kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("config");
        Client::try_from(config).expect("a client with the ServiceAccount's token")
    }

    fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace.name, self.service_account)
    }

    /// The release's ClusterRole rules, edited by `edit` (as an administrator would by hand).
    async fn edit_cluster_role(&self, edit: impl FnOnce(&mut Vec<PolicyRule>)) {
        let api = Api::<ClusterRole>::all(self.client.clone());
        let mut role = api.get(&self.fullname()).await.expect("the ClusterRole");
        edit(role.rules.get_or_insert_with(Vec::new));
        role.metadata.managed_fields = None;
        api.replace(&self.fullname(), &PostParams::default(), &role).await.expect("replace the ClusterRole");
    }

    async fn edit_role(&self, edit: impl FnOnce(&mut Vec<PolicyRule>)) {
        let api = Api::<Role>::namespaced(self.client.clone(), &self.namespace.name);
        let mut role = api.get(&self.fullname()).await.expect("the Role");
        edit(role.rules.get_or_insert_with(Vec::new));
        role.metadata.managed_fields = None;
        api.replace(&self.fullname(), &PostParams::default(), &role).await.expect("replace the Role");
    }

    /// Puts the chart's rules back.
    fn restore_rules(&self) {
        run_ok(helm().args(["upgrade", &self.name, CHART, "--namespace", &self.namespace.name, "--reuse-values"]));
    }

    fn fullname(&self) -> String {
        format!("{}-tinystacks-operator", self.name)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Command::new("helm")
            .args(["uninstall", &self.name, "--namespace", &self.namespace.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// A kubeconfig file holding a token of the ServiceAccount (the TokenRequest API: short-lived,
/// bound to the ServiceAccount).
fn service_account_token_kubeconfig(service_account: &str, namespace: &str) -> PathBuf {
    let token =
        run_ok(kubectl().args(["create", "token", service_account, "--namespace", namespace, "--duration", "2h"]));
    let kubeconfig = std::env::temp_dir().join(format!("tinystacks-{namespace}-{service_account}.kubeconfig"));
    std::fs::write(&kubeconfig, service_account_kubeconfig(token.trim())).expect("write the kubeconfig");
    kubeconfig
}

/// A kubeconfig for `token`, with the server and CA of the admin kubeconfig of the test env.
fn service_account_kubeconfig(token: &str) -> String {
    let admin = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(&admin).expect("read KUBECONFIG")).expect("YAML");
    let cluster = &admin["clusters"][0]["cluster"];
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": {
            "server": cluster["server"],
            "certificate-authority-data": cluster["certificate-authority-data"],
        }}],
        "users": [{"name": "chart-service-account", "user": {"token": token}}],
        "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": "chart-service-account"}}],
        "current-context": "testenv",
    });
    serde_json::to_string_pretty(&config).expect("kubeconfig")
}

async fn create<K>(api: &Api<K>, name: &str, annotations: Value, spec: Value)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()),
        "metadata": {"name": name, "annotations": annotations}, "spec": spec,
    }))
    .expect("a valid object");
    api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("create {} {name}: {e}", K::kind(&())));
}

fn link_spec(allowed: &[&str]) -> Value {
    json!({"accountId": "123456789012", "region": "us-east-1", "allowedNamespaces": allowed})
}

/// Waits until the object holds the finalizer and a `Ready` condition for its generation.
async fn wait_reconciled<K>(api: &Api<K>, name: &str) -> Value
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    eventually(&format!("{name} to be reconciled"), WAIT, || async {
        let obj = api.get(name).await.map_err(|e| e.to_string())?;
        let value = serde_json::to_value(&obj).map_err(|e| e.to_string())?;
        let ready = common::condition(&value, "Ready");
        let current = ready.as_ref().is_some_and(|c| c["observedGeneration"] == value["metadata"]["generation"]);
        if current && obj.finalizers().iter().any(|f| f == FINALIZER) {
            Ok(value)
        } else {
            Err(format!("finalizers {:?}, Ready {ready:?}", obj.finalizers()))
        }
    })
    .await
}

/// The operator's JSON log lines at WARN or ERROR whose text, with quotes and escapes removed,
/// contains every one of `needles`.
fn warnings_with(log: &str, needles: &[&str]) -> Vec<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| matches!(line["level"].as_str(), Some("WARN" | "ERROR")))
        .map(|line| line.to_string().replace(['\\', '"'], ""))
        .filter(|text| needles.iter().all(|n| text.contains(n)))
        .collect()
}

/// Fails with the lines if RBAC denied the operator anything. RBAC's message is `... is
/// forbidden: User "..." cannot <verb> resource ...`; other 403s (an Event into a namespace
/// being deleted) are not about the chart.
fn assert_no_rbac_denial(log: &str) {
    let denied: Vec<&str> = log.lines().filter(|l| l.contains("forbidden: User")).take(5).collect();
    assert!(denied.is_empty(), "the chart's RBAC denied the operator:\n{}", denied.join("\n"));
}

/// The `# TYPE` families of a scrape, as the names of their samples (counters end in `_total`).
fn scraped_metrics(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (name, kind) = (parts.next()?, parts.next()?);
            Some(if kind == "counter" { format!("{name}_total") } else { name.to_string() })
        })
        .collect()
}

/// The metric names listed in the README's "Metrics" section.
fn documented_metrics() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(format!("{REPO}/README.md")).expect("README.md");
    let section = readme.split("\n## Metrics").nth(1).expect("a `## Metrics` section in README.md");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| l.starts_with("| `tinystacks_") || l.starts_with("| `process_"))
        .filter_map(|l| l.split('`').nth(1).map(String::from))
        .collect()
}

#[tokio::test]
async fn the_charts_service_account_runs_every_kind_through_its_lifecycle_without_rbac_denial() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    clear_leftovers();
    // The narrowest install: Secret rights in the team's namespace (operator.watchNamespace) and,
    // for the bootstrap Secret, read in the operator's own.
    let team = TestNamespace::new(&client, "chart-team").await;
    let release = Release::install_watching(&client, "chart-rbac", Some(&team.name)).await;
    let operator = release.operator();

    let links = Api::<AwsAccountLink>::all(client.clone());
    let stacks = Api::<Stack>::namespaced(client.clone(), &team.name);
    let databases = Api::<Database>::namespaced(client.clone(), &team.name);
    let bastions = Api::<Bastion>::namespaced(client.clone(), &team.name);
    let (link, denying) = (format!("chart-{}", suffix()), format!("chart-deny-{}", suffix()));
    // A link that verifies, so that every kind goes through its whole AWS side (the connection
    // Secret, the SSH key Secret, the template ConfigMap) under the chart's RBAC.
    // Its bootstrap Secret in the operator's namespace, where the chart lets the operator read it.
    create(&links, &link, json!({}), verified_link_spec(&client, &release.namespace.name, &[&team.name]).await).await;
    create(&links, &denying, json!({}), link_spec(&["nobody"])).await;
    let network = json!({"cidr": "10.20.0.0/16", "natGateways": "None", "vpcLink": false});
    create(&stacks, "web", json!({}), json!({"accountLinkRef": {"name": link}, "network": network})).await;
    create(&stacks, "lost", json!({}), json!({"accountLinkRef": {"name": denying}})).await;
    create(&databases, "orders", json!({}), json!({"stackRef": {"name": "web"}, "deletionPolicy": "Delete"})).await;
    let ssh = json!({"stackRef": {"name": "web"}, "access": "Ssh", "allowedCidrs": ["203.0.113.0/24"]});
    create(&bastions, "ops", json!({}), ssh).await;
    for (what, ready) in [
        ("link", wait_ready(&links, &link).await),
        ("stack", wait_ready(&stacks, "web").await),
        ("database", wait_ready(&databases, "orders").await),
        ("bastion", wait_ready(&bastions, "ops").await),
    ] {
        assert_eq!(ready["status"]["observedGeneration"], ready["metadata"]["generation"], "{what}");
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), &team.name);
    assert!(secrets.get_opt("orders-connection").await.expect("get").is_some(), "the connection Secret");
    assert!(secrets.get_opt("ops-ssh-key").await.expect("get").is_some(), "the SSH key Secret");
    assert_secrets_out_of_scope_are_unreadable(&client, &release, &team.name).await;

    // Every kind got its finalizer (a patch) and its conditions (status patch) from the operator
    // running as the chart's ServiceAccount.
    let l = wait_reconciled(&links, &link).await;
    wait_reconciled(&links, &denying).await;
    wait_reconciled(&stacks, "web").await;
    wait_reconciled(&databases, "orders").await;
    wait_reconciled(&bastions, "ops").await;
    wait_condition(&stacks, "lost", "Stalled", "True", "AccountLinkNotAllowed").await;

    // The other writes of the chart's rules: Events (the Stall is a Warning), the Lease in the
    // release's namespace, and the link's template ConfigMap where the link has written one.
    let events = event_reasons(&client, &team.name, "lost").await;
    assert!(events.iter().any(|(t, r)| t == "Warning" && r == "AccountLinkNotAllowed"), "events: {events:?}");
    let lease = Api::<Lease>::namespaced(client.clone(), &release.namespace.name).get("tinystacks-operator").await;
    assert_eq!(lease.expect("the Lease").spec.and_then(|s| s.holder_identity), Some(operator.identity.clone()));
    if let Some(config_map) = l["status"]["templateConfigMap"].as_str() {
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &release.namespace.name);
        assert!(cms.get_opt(config_map).await.expect("get ConfigMap").is_some(), "ConfigMap {config_map}");
    }

    // Metrics: every family is documented in the README, every documented one is served. The
    // scrape is kept as the README's sample.
    let (code, scrape) = operator.get("/metrics");
    assert_eq!(code, 200);
    let sample = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("metrics-sample.txt");
    std::fs::write(&sample, &scrape).expect("write the sample scrape");
    assert!(scrape.contains("tinystacks_reconciles_total{kind=\"Stack\"}"), "{scrape}");
    // A family is served once it has a sample (a unit test checks the README names all of them).
    let undocumented: Vec<String> = scraped_metrics(&scrape).difference(&documented_metrics()).cloned().collect();
    assert!(undocumented.is_empty(), "served but not in the README: {undocumented:?} (scrape in {})", sample.display());

    // Deletion: the Stacks with their Database and Bastion at once (the Stack waits for them),
    // then the links. The links go last because a Stack tears its network down through its
    // link, which must still be Ready then.
    for name in ["web", "lost"] {
        stacks.delete(name, &DeleteParams::default()).await.expect("delete stack");
    }
    databases.delete("orders", &DeleteParams::default()).await.expect("delete database");
    bastions.delete("ops", &DeleteParams::default()).await.expect("delete bastion");
    wait_gone(&databases, "orders").await;
    wait_gone(&bastions, "ops").await;
    wait_gone(&stacks, "web").await;
    wait_gone(&stacks, "lost").await;
    for name in [&link, &denying] {
        links.delete(name, &DeleteParams::default()).await.expect("delete link");
    }
    wait_gone(&links, &link).await;
    wait_gone(&links, &denying).await;

    assert_no_rbac_denial(&operator.logs());
}

/// Lets go every object of the four kinds left in the cluster by an earlier test that failed
/// before its cleanup: their finalizers removed, then deleted. No operator acts on them while
/// the caller holds `OPERATOR_LOCK` (test binaries run one after another), and left alone, a
/// link whose bootstrap Secret is in a namespace the narrowed RBAC does not cover reads as a
/// denial, and an object with a finalizer keeps its CRD from being deleted.
fn clear_leftovers() {
    for kind in ["bastions", "databases", "stacks", "awsaccountlinks"] {
        let resource = format!("{kind}.tinystacks.io");
        let out = run(kubectl().args(["get", &resource, "--all-namespaces", "-o", "json"]), None);
        let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) else { continue };
        for object in list["items"].as_array().into_iter().flatten() {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let mut target = vec![resource.as_str(), name];
            if let Some(ns) = object["metadata"]["namespace"].as_str() {
                target.extend(["--namespace", ns]);
            }
            let unfinalize = r#"{"metadata":{"finalizers":null}}"#;
            run(kubectl().arg("patch").args(&target).args(["--type=merge", "-p", unfinalize]), None);
            run(kubectl().arg("delete").args(&target).args(["--ignore-not-found", "--wait=false"]), None);
        }
    }
}

/// With the ServiceAccount's token: the Secrets of the watched namespace and the bootstrap
/// Secret can be read, a Secret of any other namespace cannot, nor Secrets cluster-wide.
async fn assert_secrets_out_of_scope_are_unreadable(client: &Client, release: &Release, team: &str) {
    let outside = TestNamespace::new(client, "chart-outside").await;
    let victim: Secret =
        serde_json::from_value(json!({"metadata": {"name": "victim"}, "stringData": {"k": "v"}})).expect("a Secret");
    Api::<Secret>::namespaced(client.clone(), &outside.name)
        .create(&PostParams::default(), &victim)
        .await
        .expect("create the Secret outside the operator's scope");
    let token = release.service_account_client().await;
    let forbidden = |result: kube::Result<Secret>, what: &str| match result {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    };
    forbidden(Api::<Secret>::namespaced(token.clone(), &outside.name).get("victim").await, "get outside");
    for ns in [outside.name.as_str(), "default", "kube-system"] {
        match Api::<Secret>::namespaced(token.clone(), ns).list(&Default::default()).await {
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            other => panic!("list Secrets in {ns}: expected 403 Forbidden, got {:?}", other.map(|l| l.items.len())),
        }
    }
    match Api::<Secret>::all(token.clone()).list(&Default::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("list Secrets cluster-wide: expected 403 Forbidden, got {:?}", other.map(|l| l.items.len())),
    }
    Api::<Secret>::namespaced(token.clone(), team).get("orders-connection").await.expect("the team's Secret");
    Api::<Secret>::namespaced(token, &release.namespace.name).get("bootstrap").await.expect("the bootstrap Secret");
}

#[tokio::test]
async fn a_rule_taken_away_is_reported_with_its_verb_and_resource() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    let release = Release::install(&client, "chart-deny").await;
    let team = TestNamespace::new(&client, "chart-deny-team").await;
    let links = Api::<AwsAccountLink>::all(client.clone());
    let stacks = Api::<Stack>::namespaced(client.clone(), &team.name);
    let denying = format!("chart-deny-{}", suffix());
    create(&links, &denying, json!({}), link_spec(&["nobody"])).await;
    let user = release.user();

    // No status subresource: every status write fails with a warning that names the verb and
    // the subresource, retried with backoff.
    release
        .edit_cluster_role(|rules| rules.retain(|r| !r.resources.iter().flatten().any(|x| x.ends_with("/status"))))
        .await;
    let operator = release.operator();
    create(&stacks, "web", json!({}), json!({"accountLinkRef": {"name": denying}})).await;
    let denied =
        ["status write failed", "cannot patch resource stacks/status in API group tinystacks.io", user.as_str()];
    eventually("a warning about the status subresource", WAIT, || async {
        let lines = warnings_with(&operator.logs(), &denied);
        (!lines.is_empty()).then_some(()).ok_or("not yet".to_string())
    })
    .await;
    assert!(stacks.get("web").await.unwrap().status.is_none(), "no status could be written");
    drop(operator);

    // No Events: the reconcile goes on (the Stall is in the conditions), each lost Event is a
    // warning naming the verb, the resource and its group.
    release.restore_rules();
    release
        .edit_cluster_role(|rules| rules.retain(|r| !r.api_groups.iter().flatten().any(|g| g == "events.k8s.io")))
        .await;
    let operator = release.operator();
    wait_condition(&stacks, "web", "Stalled", "True", "AccountLinkNotAllowed").await;
    let denied = ["could not publish event", "cannot create resource events in API group events.k8s.io"];
    eventually("a warning about Events", WAIT, || async {
        (!warnings_with(&operator.logs(), &denied).is_empty()).then_some(()).ok_or("not yet".to_string())
    })
    .await;
    drop(operator);

    // No watch on the kinds: the watcher warns, naming the verb and each kind.
    release.restore_rules();
    release
        .edit_cluster_role(|rules| {
            for rule in rules.iter_mut().filter(|r| r.resources.iter().flatten().any(|x| x == "stacks")) {
                rule.verbs.retain(|v| v != "watch");
            }
        })
        .await;
    let operator = release.operator();
    eventually("a warning about the watch", WAIT, || async {
        let log = operator.logs();
        let all = ["stacks", "databases", "bastions", "awsaccountlinks"].iter().all(|kind| {
            !warnings_with(&log, &[&format!("cannot watch resource {kind} in API group tinystacks.io")]).is_empty()
        });
        all.then_some(()).ok_or("not yet".to_string())
    })
    .await;
    drop(operator);

    // No Lease: leader election warns on every attempt, naming the verb and the resource.
    release.restore_rules();
    release.edit_role(|rules| rules.retain(|r| !r.resources.iter().flatten().any(|x| x == "leases"))).await;
    let operator = release.operator();
    let denied = ["leader election attempt failed", "cannot get resource leases in API group coordination.k8s.io"];
    eventually("a warning about the Lease", WAIT, || async {
        (!warnings_with(&operator.logs(), &denied).is_empty()).then_some(()).ok_or("not yet".to_string())
    })
    .await;
    drop(operator);

    // No access to its own namespace: the start-up check fails with one line.
    release.restore_rules();
    release.edit_cluster_role(|rules| rules.retain(|r| !r.resources.iter().flatten().any(|x| x == "namespaces"))).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinystacks-operator"))
        .args(["run", "--namespace", &release.namespace.name, "--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .env("KUBECONFIG", &release.kubeconfig)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the operator");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the operator did not exit without access to its namespace");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("output");
    assert!(!output.status.success());
    // The exit message is the one `error:` line (RUST_LOG=off does not silence every target).
    let stderr = String::from_utf8_lossy(&output.stderr).replace(['\\', '"'], "");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].contains("cannot get resource namespaces"), "{stderr}");

    // With the rules back, the operator lets the objects go.
    release.restore_rules();
    let operator = release.operator();
    stacks.delete("web", &DeleteParams::default()).await.expect("delete stack");
    wait_gone(&stacks, "web").await;
    links.delete(&denying, &DeleteParams::default()).await.expect("delete link");
    wait_gone(&links, &denying).await;
    assert_no_rbac_denial(&operator.logs());
}

// ------------------------------------------------------------------------------------------------
// GitOps health over live objects

/// The object as GitOps tools read it: `kubectl get -o json`.
fn live(resource: &str, namespace: Option<&str>) -> String {
    let mut cmd = kubectl();
    cmd.args(["get", resource, "-o", "json"]);
    if let Some(ns) = namespace {
        cmd.args(["--namespace", ns]);
    }
    run_ok(&mut cmd)
}

/// (status, message) as computed by a helper program (JSON on stdin, JSON on stdout).
fn health(cmd: &mut Command, object: &str) -> (String, String) {
    let out = run(cmd, Some(object));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).expect("JSON from the helper");
    (result["status"].as_str().unwrap_or_default().into(), result["message"].as_str().unwrap_or_default().into())
}

/// The real kstatus library (hack/kstatus), as Flux and `kubectl wait`-style tools use it.
fn kstatus(object: &str) -> (String, String) {
    health(&mut Command::new("kstatus"), object)
}

/// The chart's Argo CD health check, in Lua 5.1 as Argo CD runs it.
fn argocd(object: &str) -> (String, String) {
    health(
        Command::new("lupa-python")
            .args([&format!("{REPO}/hack/argocd_health.py"), &format!("{CHART}/docs/argocd-health.lua")]),
        object,
    )
}

fn kubectl_wait(condition: &str, resource: &str, namespace: Option<&str>, timeout: &str) -> Output {
    let mut cmd = kubectl();
    cmd.args(["wait", &format!("--for=condition={condition}"), &format!("--timeout={timeout}"), resource]);
    if let Some(ns) = namespace {
        cmd.args(["--namespace", ns]);
    }
    run(&mut cmd, None)
}

/// Writes `Ready=True` (and `Reconciling`/`Stalled` False) for the object's generation into its
/// status, as an administrator could: no Stack, Database or Bastion reaches Ready against moto yet.
async fn write_ready<K>(api: &Api<K>, name: &str)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let generation = api.get(name).await.expect("get").meta().generation;
    let now = "2026-01-01T00:00:00Z";
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "observedGeneration": generation, "lastTransitionTime": now})
    };
    let status = json!({"status": {"observedGeneration": generation, "conditions": [
        condition("Ready", "True", "Provisioned", "written by the test"),
        condition("Reconciling", "False", "Idle", ""),
        condition("Stalled", "False", "NotStalled", ""),
    ]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("write the status");
}

/// Writes what the operator's first pass writes: `Ready=False`, `Reconciling=True`.
async fn write_reconciling<K>(api: &Api<K>, name: &str)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let generation = api.get(name).await.expect("get").meta().generation;
    let condition = |type_: &str, status: &str, reason: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": "written by the test",
               "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"})
    };
    let status = json!({"status": {"observedGeneration": generation, "conditions": [
        condition("Ready", "False", "Creating"),
        condition("Reconciling", "True", "Creating"),
        condition("Stalled", "False", "NotStalled"),
    ]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("write the status");
}

#[tokio::test]
async fn gitops_health_follows_kstatus_argocd_and_kubectl_wait_over_live_objects() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    let release = Release::install(&client, "chart-gitops").await;
    let team = TestNamespace::new(&client, "gitops-team").await;
    let ns = Some(team.name.as_str());
    let mut operator = release.operator();
    let links = Api::<AwsAccountLink>::all(client.clone());
    let stacks = Api::<Stack>::namespaced(client.clone(), &team.name);
    let databases = Api::<Database>::namespaced(client.clone(), &team.name);
    let bastions = Api::<Bastion>::namespaced(client.clone(), &team.name);
    let paused = json!({PAUSED_ANNOTATION: "true"});

    // A Stack waiting for its (paused) link: InProgress, Progressing, not Ready.
    let (link, denying) = (format!("gitops-{}", suffix()), format!("gitops-deny-{}", suffix()));
    create(&links, &link, paused.clone(), link_spec(&[&team.name])).await;
    create(&links, &denying, json!({}), link_spec(&["nobody"])).await;
    create(&stacks, "waiting", json!({}), json!({"accountLinkRef": {"name": link}})).await;
    wait_condition(&stacks, "waiting", "Ready", "False", "WaitingForAccountLink").await;
    let waiting = live("stacks.tinystacks.io/waiting", ns);
    assert_eq!(kstatus(&waiting).0, "InProgress", "{waiting}");
    let (status, message) = argocd(&waiting);
    assert_eq!(status, "Progressing");
    assert!(message.starts_with("WaitingForAccountLink"), "{message}");
    let out = kubectl_wait("Ready", "stacks.tinystacks.io/waiting", ns, "2s");
    assert!(!out.status.success(), "kubectl wait returned for a Stack that is not Ready");
    // The paused link itself: Ready is Unknown, so kstatus says InProgress; Argo CD, Suspended.
    wait_condition(&links, &link, "Ready", "Unknown", "Paused").await;
    let link_resource = format!("awsaccountlinks.tinystacks.io/{link}");
    let paused_link = live(&link_resource, None);
    assert_eq!(kstatus(&paused_link).0, "InProgress");
    assert_eq!(argocd(&paused_link).0, "Suspended");

    // A Stalled Stack (its link does not allow the namespace): Failed, Degraded.
    create(&stacks, "stalled", json!({}), json!({"accountLinkRef": {"name": denying}})).await;
    wait_condition(&stacks, "stalled", "Stalled", "True", "AccountLinkNotAllowed").await;
    let stalled = live("stacks.tinystacks.io/stalled", ns);
    let (status, message) = kstatus(&stalled);
    assert_eq!(status, "Failed");
    assert!(message.contains("allowedNamespaces"), "{message}");
    let (status, message) = argocd(&stalled);
    assert_eq!(status, "Degraded");
    assert!(message.starts_with("AccountLinkNotAllowed: ") && message.contains("allowedNamespaces"), "{message}");
    let out = kubectl_wait("Stalled", "stacks.tinystacks.io/stalled", ns, "20s");
    assert!(out.status.success(), "kubectl wait --for=condition=Stalled: {}", String::from_utf8_lossy(&out.stderr));

    // Resumed, the link verifies its role (moto) and becomes Ready: InProgress, then Current;
    // Suspended, then Healthy; `kubectl wait --for=condition=Ready` returns.
    let resume = json!({"metadata": {"annotations": {PAUSED_ANNOTATION: null}}});
    links.patch(&link, &PatchParams::default(), &Patch::Merge(&resume)).await.expect("resume the link");
    let out = kubectl_wait("Ready", &link_resource, None, "60s");
    assert!(out.status.success(), "kubectl wait {link_resource}: {}", String::from_utf8_lossy(&out.stderr));
    let ready_link = live(&link_resource, None);
    assert_eq!(kstatus(&ready_link), ("Current".to_string(), "Resource is Ready".to_string()), "{ready_link}");
    assert_eq!(argocd(&ready_link).0, "Healthy", "{ready_link}");

    // Ready=True for the other kinds. None reaches Ready against moto yet, so these are paused
    // objects whose status is written by hand; the operator keeps Ready=True (reason Paused).
    create(&stacks, "done", paused.clone(), json!({"accountLinkRef": {"name": link}})).await;
    create(&databases, "done", paused.clone(), json!({"stackRef": {"name": "done"}})).await;
    create(&bastions, "done", paused.clone(), json!({"stackRef": {"name": "done"}})).await;
    wait_condition(&stacks, "done", "Ready", "Unknown", "Paused").await;
    wait_condition(&databases, "done", "Ready", "Unknown", "Paused").await;
    wait_condition(&bastions, "done", "Ready", "Unknown", "Paused").await;
    write_ready(&stacks, "done").await;
    write_ready(&databases, "done").await;
    write_ready(&bastions, "done").await;
    wait_condition(&stacks, "done", "Ready", "True", "Paused").await;
    wait_condition(&databases, "done", "Ready", "True", "Paused").await;
    wait_condition(&bastions, "done", "Ready", "True", "Paused").await;
    for (resource, namespace) in [
        ("stacks.tinystacks.io/done".to_string(), ns),
        ("databases.tinystacks.io/done".to_string(), ns),
        ("bastions.tinystacks.io/done".to_string(), ns),
    ] {
        let out = kubectl_wait("Ready", &resource, namespace, "20s");
        assert!(out.status.success(), "kubectl wait {resource}: {}", String::from_utf8_lossy(&out.stderr));
        let object = live(&resource, namespace);
        assert_eq!(kstatus(&object).0, "Current", "{resource}: {object}");
        assert_eq!(argocd(&object).0, "Suspended", "{resource}");
    }

    // Healthy, Current: with the operator stopped, the waiting Stack's status says Ready=True.
    assert!(operator.terminate(), "the operator stops cleanly");
    write_ready(&stacks, "waiting").await;
    let ready = live("stacks.tinystacks.io/waiting", ns);
    assert_eq!(kstatus(&ready), ("Current".to_string(), "Resource is Ready".to_string()));
    assert_eq!(argocd(&ready), ("Healthy".to_string(), "Provisioned: written by the test".to_string()));
    let out = kubectl_wait("Ready", "stacks.tinystacks.io/waiting", ns, "20s");
    assert!(out.status.success(), "kubectl wait: {}", String::from_utf8_lossy(&out.stderr));
    // A spec change not yet observed is InProgress again; a deletion in progress is Terminating.
    stacks
        .patch("waiting", &PatchParams::default(), &Patch::Merge(json!({"spec": {"tags": {"team": "a"}}})))
        .await
        .expect("change the spec");
    let changed = live("stacks.tinystacks.io/waiting", ns);
    assert_eq!(kstatus(&changed).0, "InProgress", "{changed}");
    assert_eq!(argocd(&changed).0, "Progressing");
    stacks.delete("waiting", &DeleteParams::default()).await.expect("delete");
    let deleting = live("stacks.tinystacks.io/waiting", ns);
    assert_eq!(kstatus(&deleting).0, "Terminating");
    assert_eq!(argocd(&deleting).0, "Progressing");

    // The operator lets everything go (paused objects never got the finalizer), the links last.
    operator = release.operator();
    for name in ["done", "stalled"] {
        stacks.delete(name, &DeleteParams::default()).await.expect("delete stack");
    }
    databases.delete("done", &DeleteParams::default()).await.expect("delete database");
    bastions.delete("done", &DeleteParams::default()).await.expect("delete bastion");
    wait_gone(&databases, "done").await;
    wait_gone(&bastions, "done").await;
    for name in ["waiting", "stalled", "done"] {
        wait_gone(&stacks, name).await;
    }
    for name in [&link, &denying] {
        links.delete(name, &DeleteParams::default()).await.expect("delete link");
    }
    wait_gone(&links, &link).await;
    wait_gone(&links, &denying).await;
    assert_no_rbac_denial(&operator.logs());
}

// ------------------------------------------------------------------------------------------------
// The chart's objects, the README's procedures and the GitOps examples against the API server

/// A Stack held by its plan, as the operator writes it: the plan and the `Ready` condition from the
/// shared gate (`runtime::plan::gate`) and the condition rules (`runtime::conditions::compute`),
/// written by hand with no operator running (the serial lock keeps this binary's other operators
/// away), then read by the real kstatus, the chart's Argo CD check in Lua 5.1 and `kubectl wait`.
async fn write_held(stacks: &Api<Stack>, name: &str, governance: plan::Governance<'_>) -> String {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use tinystacks_operator::api::{ChangeAction, PlannedChange};
    use tinystacks_operator::runtime::conditions::{Health, compute};
    let generation = stacks.get(name).await.expect("get").metadata.generation;
    let changes = vec![PlannedChange {
        action: ChangeAction::Create,
        resource: "ec2:Vpc".into(),
        name: "vpc".into(),
        id: None,
        detail: "10.0.0.0/16".into(),
    }];
    let (plan, gate) = plan::gate(governance, generation, changes, None);
    let plan::Gate::Hold(health @ Health::Held { .. }) = gate else { panic!("the plan is held: {gate:?}") };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions = compute(&[], &health, generation, &now);
    let status = json!({"status": {"observedGeneration": generation, "plan": plan, "conditions": conditions}});
    stacks.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("write the status");
    plan.id
}

#[tokio::test]
async fn a_plan_awaiting_approval_is_suspended_and_drift_degraded_for_argocd_in_progress_for_kstatus() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let team = TestNamespace::new(&client, "held").await;
    let ns = Some(team.name.as_str());
    let stacks = Api::<Stack>::namespaced(client.clone(), &team.name);

    // changePolicy Manual, nothing approved: a person has to act, nothing is wrong.
    let manual = json!({"accountLinkRef": {"name": "sandbox"}, "changePolicy": "Manual"});
    create(&stacks, "manual", json!({}), manual).await;
    let governance = plan::Governance { change_policy: ChangePolicy::Manual, ..Default::default() };
    let id = write_held(&stacks, "manual", governance).await;
    let held = live("stacks.tinystacks.io/manual", ns);
    let (status, message) = argocd(&held);
    assert_eq!(status, "Suspended", "{held}");
    assert!(message.starts_with("AwaitingApproval: ") && message.contains(&id), "{message}");
    let (status, message) = kstatus(&held);
    assert_eq!(status, "InProgress", "{held}");
    assert!(message.contains(&id) && message.contains("spec.approvedPlan"), "{message}");
    // The README's commands read the plan; `kubectl wait` for Ready waits on, the README's wait
    // for the reason returns.
    let ours = |script: String| {
        script
            .replace("stack web -n team-a", &format!("stack manual -n {}", team.name))
            .replace("stack/web -n team-a", &format!("stack/manual -n {}", team.name))
    };
    let read = run_script(&ours(readme_commands("Reviewing and approving plans")), Duration::from_secs(30));
    let mut lines = read.lines();
    assert_eq!(lines.next(), Some(id.as_str()), "{read}");
    assert_eq!(lines.next(), Some("Create\tec2:Vpc\tvpc\t10.0.0.0/16"), "{read}");
    assert!(read.contains("Plan:") && read.contains("AwaitingApproval"), "kubectl describe: {read}");
    assert!(!kubectl_wait("Ready", "stacks.tinystacks.io/manual", ns, "2s").status.success());
    run_script(&ours(readme_commands("How tools read `AwaitingApproval` and `Drifted`")), Duration::from_secs(30));

    // management ObserveOnly with AWS differing: Degraded, with what differs.
    let observe = json!({"accountLinkRef": {"name": "sandbox"}, "management": "ObserveOnly"});
    create(&stacks, "observed", json!({}), observe).await;
    let governance = plan::Governance { management: Management::ObserveOnly, ..Default::default() };
    let id = write_held(&stacks, "observed", governance).await;
    let drifted = live("stacks.tinystacks.io/observed", ns);
    let (status, message) = argocd(&drifted);
    assert_eq!(status, "Degraded", "{drifted}");
    assert!(message.starts_with("Drifted: ") && message.contains(&id) && message.contains("ObserveOnly"), "{message}");
    assert_eq!(kstatus(&drifted).0, "InProgress", "{drifted}");
    assert!(!kubectl_wait("Ready", "stacks.tinystacks.io/observed", ns, "2s").status.success());
    let out = kubectl_wait("Stalled=False", "stacks.tinystacks.io/observed", ns, "20s");
    assert!(out.status.success(), "neither Stalled: {}", String::from_utf8_lossy(&out.stderr));

    for name in ["manual", "observed"] {
        stacks.delete(name, &DeleteParams::default()).await.expect("delete");
        wait_gone(&stacks, name).await;
    }
}

/// Installs the pinned CRDs of Flux, Argo CD and prometheus-operator (hack/gitops-crds.sh: the
/// projects' published CRDs, from the Go module proxy) and waits until they are Established.
fn install_gitops_crds() {
    let dir = run_ok(&mut Command::new(format!("{REPO}/hack/gitops-crds.sh")));
    let dir = dir.trim();
    run_ok(kubectl().args(["apply", "--server-side", "--force-conflicts", "-f", dir]));
    run_ok(kubectl().args(["wait", "--for=condition=Established", "--timeout=60s", "-f", dir]));
}

/// `kubectl apply --server-side --dry-run=server` of `yaml` into `namespace`: the API server
/// validates and admits every object without storing it. Returns kubectl's output or error.
fn server_dry_run(yaml: &str, namespace: &str) -> Result<String, String> {
    let out = run(
        kubectl().args(["apply", "--server-side", "--dry-run=server", "--namespace", namespace, "-f", "-"]),
        Some(yaml),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() { Ok(stdout) } else { Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr))) }
}

#[tokio::test]
async fn a_release_with_helms_longest_name_installs() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let namespace = TestNamespace::new(&client, "chart-long").await;
    // Helm refuses release names over 53 characters; the full name adds "-tinystacks-operator".
    let name = format!("a-release-name-as-long-as-helm-will-take-it-here-{}", suffix());
    let name = &name[..53];
    let out = run(helm().args(["install", name, CHART, "--namespace", &namespace.name]), None);
    let uninstall = || run(helm().args(["uninstall", name, "--namespace", &namespace.name]), None);
    assert!(out.status.success(), "helm install {name}: {}", String::from_utf8_lossy(&out.stderr));
    let services = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &namespace.name)
        .list(&Default::default())
        .await
        .expect("list Services");
    let names: Vec<String> = services.items.iter().map(|s| s.name_any()).collect();
    uninstall();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].len() <= 63 && names[0].ends_with("-metrics"), "{names:?}");
    assert!(names[0].starts_with(name), "the release name is kept whole: {names:?}");
}

#[tokio::test]
async fn the_values_users_expect_are_accepted_by_the_api_server() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    install_gitops_crds();
    let namespace = TestNamespace::new(&client, "chart-values").await;
    let watch = format!("operator.watchNamespace={}", namespace.name);
    for monitor in ["metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true"] {
        let mut sets = USER_VALUES.to_vec();
        let alerts = ["metrics.prometheusRule.enabled=true", "metrics.grafanaDashboard.enabled=true"];
        sets.extend([monitor, watch.as_str()]);
        sets.extend(alerts);
        let yaml = render_yaml(&["t", "--namespace", &namespace.name], &sets).expect("helm template");
        let applied = server_dry_run(&yaml, &namespace.name).unwrap_or_else(|e| panic!("{monitor}: {e}\n{yaml}"));
        let kind = if monitor.contains("pod") { "podmonitor" } else { "servicemonitor" };
        for object in [
            "deployment.apps/t-tinystacks-operator",
            "poddisruptionbudget.policy/",
            kind,
            "role.rbac",
            "prometheusrule.monitoring.coreos.com/t-tinystacks-operator",
            "configmap/t-tinystacks-operator-dashboard",
        ] {
            assert!(applied.contains(object), "{object} not applied: {applied}");
        }
    }
}

/// The first ```sh block of the README's section `section`.
fn readme_commands(section: &str) -> String {
    let readme = std::fs::read_to_string(format!("{REPO}/README.md")).expect("README.md");
    let start = [format!("\n## {section}\n"), format!("\n### {section}\n")]
        .iter()
        .find_map(|heading| readme.find(heading))
        .unwrap_or_else(|| panic!("no section `{section}` in README.md"));
    let text = &readme[start..];
    let block = text.split("```sh\n").nth(1).unwrap_or_else(|| panic!("no sh block under `### {section}`"));
    block.split("```").next().expect("a closed block").to_string()
}

/// Runs `script` with bash from the repository's root (where the README's commands run), within
/// `timeout`; panics with its output unless it succeeds.
fn run_script(script: &str, timeout: Duration) -> String {
    run_ok(
        Command::new("timeout")
            .args([&timeout.as_secs().to_string(), "bash", "-euo", "pipefail", "-c", script])
            .current_dir(REPO),
    )
}

/// Puts the generated CRDs back however the test ends, for the tests that follow (with a client
/// of its own: the test's runtime may be gone).
struct CrdsBack;

impl Drop for CrdsBack {
    fn drop(&mut self) {
        let _ = std::thread::spawn(|| {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime");
            runtime.block_on(async { install_crds(&client().await).await });
        })
        .join();
    }
}

const CRD_NAMES: [&str; 4] =
    ["awsaccountlinks.tinystacks.io", "stacks.tinystacks.io", "databases.tinystacks.io", "bastions.tinystacks.io"];

#[tokio::test]
async fn the_readmes_upgrade_and_uninstall_procedures_work_as_written_after_a_helm_install() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    let _crds_back = CrdsBack;
    // The previous version of the chart: this one with a CRD that differs (a description), as
    // every release's CRDs differ from the last. Helm creates CRDs only where there are none.
    let older = std::env::temp_dir().join(format!("tinystacks-older-chart-{}", suffix()));
    run_ok(Command::new("cp").args(["-r", CHART, older.to_str().unwrap()]));
    let crds = older.join("crds/tinystacks.io.yaml");
    let text = std::fs::read_to_string(&crds).expect("the chart's CRDs");
    std::fs::write(&crds, text.replacen("description: ", "description: (the previous release) ", 1)).expect("write");
    clear_leftovers();
    let mut delete_crds = kubectl();
    delete_crds.args(["delete", "crd", "--ignore-not-found", "--wait", "--timeout=120s"]).args(CRD_NAMES);
    run_ok(&mut delete_crds);

    // The README's install, with the older chart.
    let install =
        readme_commands("Installing into a cluster").replace("charts/tinystacks-operator", older.to_str().unwrap());
    assert!(install.contains("helm install tinystacks-operator"), "{install}");
    run_script(&install, Duration::from_secs(120));
    let crd_api = Api::<CustomResourceDefinition>::all(client.clone());
    let managers = |crd: CustomResourceDefinition| -> Vec<String> {
        crd.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|f| f.manager).collect()
    };
    let first = crd_api.get(CRD_NAMES[0]).await.expect("the CRD Helm created");
    assert!(managers(first).contains(&"helm".to_string()), "Helm manages the CRDs it created");

    // What the README said before: refused, a conflict with helm.
    let out = run(kubectl().args(["apply", "--server-side", "-f", "crds/"]).current_dir(REPO), None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("conflict") && stderr.contains("helm"), "{stderr}");

    // The README's upgrade, as written: the CRDs are this version's, the release upgraded.
    let upgrade = readme_commands("Upgrading");
    run_script(&upgrade, Duration::from_secs(120));
    let applied = crd_api.get(CRD_NAMES[0]).await.expect("the CRD");
    let description = serde_json::to_string(&applied.spec.versions).expect("JSON");
    assert!(!description.contains("(the previous release)"), "the CRD was not upgraded");
    let status =
        run_ok(helm().args(["status", "tinystacks-operator", "--namespace", "tinystacks-system", "-o", "json"]));
    let status: Value = serde_json::from_str(&status).expect("helm status JSON");
    assert_eq!(status["version"], 2, "one upgrade: {status}");
    assert_eq!(status["config"]["serviceAccount"]["roleArn"], "arn:aws:iam::111122223333:role/tinystacks-operator");
    std::fs::remove_dir_all(&older).expect("remove the older chart");

    // Objects of every state an uninstall meets: a link, a Stack waiting for it, a Stalled Stack.
    let kubeconfig = service_account_token_kubeconfig("tinystacks-operator", "tinystacks-system");
    let config = OperatorConfig {
        namespace: "tinystacks-system",
        lease_name: "tinystacks-operator",
        resync: "2s",
        extra_args: vec![],
    };
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap()), ("TINYSTACKS_BOOTSTRAP_SECRET_NAMESPACES", "")];
    let operator = Operator::start_with_env(config, &env);
    let team = TestNamespace::new(&client, "chart-uninstall").await;
    let links = Api::<AwsAccountLink>::all(client.clone());
    let stacks = Api::<Stack>::namespaced(client.clone(), &team.name);
    let (link, denying) = (format!("uninstall-{}", suffix()), format!("uninstall-deny-{}", suffix()));
    create(&links, &link, json!({}), link_spec(&[&team.name])).await;
    create(&links, &denying, json!({}), link_spec(&["nobody"])).await;
    create(&stacks, "waiting", json!({}), json!({"accountLinkRef": {"name": link}})).await;
    create(&stacks, "stalled", json!({}), json!({"accountLinkRef": {"name": denying}})).await;
    wait_reconciled(&stacks, "waiting").await;
    wait_condition(&stacks, "stalled", "Stalled", "True", "AccountLinkNotAllowed").await;
    wait_reconciled(&links, &link).await;

    // The README's uninstall, as written: nothing of the release, the kinds or the namespace left.
    // `helm uninstall` would stop the operator's pods; this one runs out of cluster, so it is
    // stopped at that line, once it has let every object go.
    let uninstall = readme_commands("Uninstalling");
    let (objects, rest) = uninstall.split_once("helm uninstall").expect("a `helm uninstall` line");
    run_script(objects, Duration::from_secs(300));
    assert_no_rbac_denial(&operator.logs());
    drop(operator);
    run_script(&format!("helm uninstall{rest}"), Duration::from_secs(300));
    for name in CRD_NAMES {
        assert!(crd_api.get_opt(name).await.expect("get CRD").is_none(), "{name} is still there");
    }
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    assert!(namespaces.get_opt("tinystacks-system").await.expect("get namespace").is_none());
    let roles = Api::<ClusterRole>::all(client.clone());
    assert!(roles.get_opt("tinystacks-operator").await.expect("get ClusterRole").is_none(), "the ClusterRole");
    let out = run(helm().args(["status", "tinystacks-operator", "--namespace", "tinystacks-system"]), None);
    assert!(!out.status.success(), "the release is gone");
    let _ = std::fs::remove_file(kubeconfig);
}

/// The YAML blocks of a Markdown file.
fn yaml_blocks(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split("```yaml\n").skip(1).filter_map(|b| b.split("```").next().map(String::from)).collect()
}

#[tokio::test]
async fn the_gitops_examples_are_accepted_and_their_health_checks_run_over_live_objects() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    install_gitops_crds();
    for namespace in ["flux-system", "argocd"] {
        let out = run(kubectl().args(["create", "namespace", namespace]), None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() || stderr.contains("AlreadyExists"), "{stderr}");
    }
    // Every object of examples/gitops/, checked by the API server against the tools' CRDs.
    let examples = format!("{REPO}/examples/gitops");
    let out = run_ok(kubectl().args(["apply", "--server-side", "--dry-run=server", "--recursive", "-f", &examples]));
    for object in [
        "gitrepository.source.toolkit.fluxcd.io/tinystacks-operator",
        "helmrelease.helm.toolkit.fluxcd.io/tinystacks-operator",
        "kustomization.kustomize.toolkit.fluxcd.io/team-a",
        "application.argoproj.io/tinystacks-operator",
        "application.argoproj.io/team-a",
        "configmap/argocd-cm",
    ] {
        assert!(out.contains(object), "{object} not applied: {out}");
    }

    // The ConfigMaps of the chart's docs are accepted; the key the docs used to give is not.
    let docs = format!("{CHART}/docs/README.md");
    let config_maps: Vec<String> = yaml_blocks(&docs).into_iter().filter(|b| b.contains("kind: ConfigMap")).collect();
    assert_eq!(config_maps.len(), 2, "the per-kind keys and the group's wildcard");
    for block in &config_maps {
        server_dry_run(block, "argocd").unwrap_or_else(|e| panic!("{e}\n{block}"));
    }
    let wildcard_key = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-cm"},
        "data": {"resource.customizations.health.tinystacks.io_*": "return {}"}});
    let error = server_dry_run(&wildcard_key.to_string(), "argocd").expect_err("a `*` in a ConfigMap key");
    assert!(error.contains("a valid config key"), "{error}");

    // The example's argocd-cm holds the chart's script for each kind.
    let script = std::fs::read_to_string(format!("{CHART}/docs/argocd-health.lua")).expect("argocd-health.lua");
    let cm: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{examples}/argocd/argocd-cm.yaml")).expect("argocd-cm.yaml"),
    )
    .expect("YAML");
    let kinds = ["AwsAccountLink", "Stack", "Database", "Bastion"];
    for kind in kinds {
        let key = format!("resource.customizations.health.tinystacks.io_{kind}");
        assert_eq!(cm["data"][&key].as_str(), Some(script.as_str()), "{key}");
    }
    assert_eq!(cm["data"].as_object().unwrap().len(), kinds.len());

    // The Flux Kustomization's health checks (kstatus) and the Argo CD checks of argocd-cm over
    // the objects they name, live: in progress before the operator reports, then Ready.
    let flux = std::fs::read_to_string(format!("{examples}/flux/operator.yaml")).expect("operator.yaml");
    let kustomization = parse_documents(&flux)
        .expect("YAML")
        .into_iter()
        .find(|d| d["kind"] == "Kustomization")
        .expect("a Kustomization");
    let checks = kustomization["spec"]["healthChecks"].as_array().expect("healthChecks").clone();
    assert!(checks.len() >= 2, "{checks:?}");
    let team = TestNamespace::new(&client, "gitops-examples").await;
    let lua = std::env::temp_dir().join(format!("tinystacks-argocd-cm-{}.lua", suffix()));
    for check in &checks {
        assert_eq!(check["apiVersion"], "tinystacks.io/v1alpha1", "{check}");
        let (kind, name) = (check["kind"].as_str().expect("kind"), check["name"].as_str().expect("name"));
        let resource = format!("{}.tinystacks.io/{name}", kind.to_lowercase());
        match kind {
            "Stack" => {
                let api = Api::<Stack>::namespaced(client.clone(), &team.name);
                create(&api, name, json!({}), json!({"accountLinkRef": {"name": "sandbox"}})).await;
            }
            "Database" => {
                let api = Api::<Database>::namespaced(client.clone(), &team.name);
                create(&api, name, json!({}), json!({"stackRef": {"name": "web"}})).await;
            }
            other => panic!("a health check on {other}: extend this test"),
        }
        let key = format!("resource.customizations.health.tinystacks.io_{kind}");
        std::fs::write(&lua, cm["data"][&key].as_str().expect("the kind's script")).expect("write the script");
        let argocd_cm = |object: &str| {
            health(
                Command::new("lupa-python").args([&format!("{REPO}/hack/argocd_health.py"), lua.to_str().unwrap()]),
                object,
            )
        };
        // Before the operator's first status, Argo CD waits; kstatus reads an object without
        // conditions as Current (its rule for kinds it knows nothing of), so it is checked once
        // the operator has said Reconciling, as its first pass does.
        let fresh = live(&resource, Some(&team.name));
        assert_eq!(argocd_cm(&fresh).0, "Progressing", "{resource}");
        match kind {
            "Stack" => write_reconciling(&Api::<Stack>::namespaced(client.clone(), &team.name), name).await,
            _ => write_reconciling(&Api::<Database>::namespaced(client.clone(), &team.name), name).await,
        }
        let reconciling = live(&resource, Some(&team.name));
        assert_eq!(kstatus(&reconciling).0, "InProgress", "{resource}: {reconciling}");
        assert_eq!(argocd_cm(&reconciling).0, "Progressing", "{resource}");
        match kind {
            "Stack" => write_ready(&Api::<Stack>::namespaced(client.clone(), &team.name), name).await,
            _ => write_ready(&Api::<Database>::namespaced(client.clone(), &team.name), name).await,
        }
        let ready = live(&resource, Some(&team.name));
        assert_eq!(kstatus(&ready).0, "Current", "{resource}: {ready}");
        assert_eq!(argocd_cm(&ready).0, "Healthy", "{resource}");
    }
    let _ = std::fs::remove_file(&lua);
}
