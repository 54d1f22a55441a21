//! The benchmark behind `make bench` (hack/bench.sh): the operator's memory, AWS calls, CPU per
//! reconcile, start-up and time to Ready against the real API server and moto, written to
//! `docs/BENCHMARKS.md`. Not a test: it is `#[ignore]`d, and does nothing unless
//! `TINYSTACKS_BENCH_OUT` names the file to write (hack/bench.sh sets it).
//!
//! Settings (environment): `TINYSTACKS_BENCH_OPERATOR` the operator binary to measure (default:
//! this build's), `TINYSTACKS_BENCH_PROFILE` its cargo profile, `TINYSTACKS_BENCH_SIZES` the
//! numbers of Stacks (default `1,100,1000`), `TINYSTACKS_BENCH_REPEATS` the runs per figure,
//! `TINYSTACKS_BENCH_DEADLINE` a Unix time by which the scale runs must end (a size that would
//! not converge and be measured before it is skipped, and the document says so),
//! `TINYSTACKS_BENCH_RESYNC` the resync period of the scale runs, `TINYSTACKS_BENCH_TRACE` (any
//! value) to print every AWS call and wait of each full-stack run, in order, with its start and
//! latency, `TINYSTACKS_BENCH_WAIT_SCALE` the factor on AWS's typical waits (default `1/30`) for
//! the time to Ready against them, `TINYSTACKS_BENCH_ONLY=waits` (`make bench-waits`) to measure
//! only that and splice it into the document.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use tinystacks_operator::api::AwsAccountLink;

use common::aws_waits::{Wait, typical};
use common::fault_proxy::{FaultProxy, Timing};
use common::moto::{new_account_id, role_arn};
use common::*;

// ------------------------------------------------------------------------------------------------
// Measuring a process

/// VmRSS and VmHWM of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `after` starts at field 3.
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok();
    out.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

/// The sum of every sample of a metric family (`name{...} value` lines).
fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The AWS calls by operation (`service:Operation`).
fn calls_by_operation(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("tinystacks_aws_requests_total{")) {
        let label = |k: &str| line.split(&format!("{k}=\"")).nth(1).and_then(|s| s.split('"').next()).unwrap_or("?");
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry(format!("{}:{}", label("service"), label("operation"))).or_default() += value;
    }
    out
}

/// The AWS calls by service (`tinystacks_aws_requests_total{service=...}`).
fn calls_by_service(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("tinystacks_aws_requests_total{")) {
        let service = line.split("service=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("?");
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry(service.to_string()).or_default() += value;
    }
    out
}

// ------------------------------------------------------------------------------------------------
// The operator under test

struct Bench {
    binary: String,
}

/// The operator as it runs in production (info logs, the default concurrency), with its metrics
/// on a port of its own; killed when dropped.
struct Op {
    child: Child,
    port: u16,
    started: Instant,
}

impl Op {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metrics(&self) -> String {
        http_get(self.port, "/metrics").1
    }

    fn ready(&self) -> bool {
        http_get(self.port, "/readyz").0 == 200
    }

    async fn wait_ready(&self) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.ready() {
            assert!(Instant::now() < deadline, "the operator did not become ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.started.elapsed()
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bench {
    fn operator(&self, ns: &str, watch: Option<&str>, resync: &str, env: &[(&str, &str)]) -> Op {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("tinystacks-bench-{}.log", suffix()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("run")
            .args(["--namespace", ns])
            .args(["--leader-election", "false"])
            .args(["--resync-period", resync])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--identity", "bench"])
            // The bench's links keep their bootstrap Secret beside the objects they serve, in
            // namespaces made per run; the operator reads only its own namespace's by default.
            .args(["--bootstrap-secret-namespaces", "*"]);
        if let Some(w) = watch {
            cmd.args(["--watch-namespace", w]);
        }
        let started = Instant::now();
        let child = cmd
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the operator");
        Op { child, port, started }
    }
}

// ------------------------------------------------------------------------------------------------
// Objects

fn gvk(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("tinystacks.io", "v1alpha1", kind))
}

fn is_ready(obj: &Value) -> bool {
    condition(obj, "Ready").is_some_and(|c| c["status"] == "True" && c["reason"] != "Paused")
}

/// A verified link, paused (no AWS call for it), as the Stack tests use.
async fn fixture_link(client: &Client, name: &str, account: &str, namespaces: &[&str]) {
    let link: AwsAccountLink = serde_json::from_value(json!({
        "apiVersion": "tinystacks.io/v1alpha1", "kind": "AwsAccountLink",
        "metadata": {"name": name, "annotations": {"tinystacks.io/paused": "true"}},
        "spec": {"accountId": account, "region": "us-east-1", "allowedNamespaces": namespaces},
    }))
    .expect("link");
    let api = Api::<AwsAccountLink>::all(client.clone());
    api.create(&PostParams::default(), &link).await.expect("create link");
    let status = json!({"status": {
        "externalId": "tinystacks-bench-external-id-0123456789",
        "roleArn": role_arn(account),
        "conditions": [{"type": "Ready", "status": "True", "reason": "Fixture", "message": "written by the benchmark",
            "lastTransitionTime": Timestamp::now().to_string(), "observedGeneration": 1}],
        "observedGeneration": 1,
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("link status");
}

async fn create(client: &Client, ns: Option<&str>, kind: &str, name: &str, spec: Value) {
    let ar = gvk(kind);
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tinystacks.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec,
    }))
    .expect("object");
    api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("create {kind} {name}: {e}"));
}

/// How many objects of `kind` in `ns` are Ready.
async fn ready_count(client: &Client, ns: &str, kind: &str) -> usize {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &gvk(kind));
    let list = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    list.iter().filter(|o| serde_json::to_value(o).map(|v| is_ready(&v)).unwrap_or(false)).count()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ------------------------------------------------------------------------------------------------
// Results

#[derive(Default)]
struct Results {
    machine: Vec<(String, String)>,
    repeats: usize,
    crds: usize,
    apiserver_before: Option<(f64, f64)>,
    apiserver_after: Option<(f64, f64)>,
    apiserver_end: Option<(usize, f64)>,
    idle: Option<(f64, f64)>,
    startup_ready: Vec<f64>,
    startup_first: Vec<f64>,
    full: Vec<FullRun>,
    /// The same full stacks against AWS's waits (the proxy's `wait_like_aws`).
    waits: Vec<FullRun>,
    wait_factor: f64,
    scale: Vec<ScaleRun>,
    scale_resync: String,
    skipped: Vec<String>,
    /// The release build measured afterwards, when the main run used another profile:
    /// idle VmRSS, and VmRSS, calls per resync and CPU per reconcile at the largest size.
    release: Option<ReleaseRun>,
}

struct ReleaseRun {
    idle_rss: f64,
    stacks: usize,
    rss: f64,
    hwm: f64,
    calls: f64,
    cpu_per_reconcile: f64,
}

struct FullRun {
    pattern: &'static str,
    to_ready: f64,
    link_at: f64,
    stack_at: f64,
    db_at: f64,
    bastion_at: f64,
    calls: usize,
    by_service: BTreeMap<String, f64>,
    critical: f64,
    mutations: usize,
    busy: f64,
    /// Against AWS's waits: the critical path of each object, and how the waits went.
    waits: Option<WaitRun>,
}

/// A full stack against AWS's waits (scaled): the longest chain of dependent waits before each
/// object can be Ready, and the latest any wait's end was noticed.
struct WaitRun {
    link: f64,
    stack: f64,
    db: f64,
    bastion: f64,
    /// The longest of the four.
    all: f64,
    /// The latest, over the run's waits, from a wait's end to an answer showing it done.
    late: f64,
    count: usize,
}

/// The Stack's own waits: made at once, so the Stack waits for the slowest.
const STACK_WAITS: &[&str] = &["ec2:NatGateway", "ec2:VpcEndpoint", "apigateway:VpcLink"];

/// The longest chain of dependent waits in AWS's table (`common/aws_waits.rs`) for each object
/// of a full stack, over the resource types the run made, scaled by `factor`: the link waits for
/// its CloudFormation stack; everything else waits for the link; the Stack then for the slowest
/// of its own waits (they run at once), the Database for its instance, the Bastion for its
/// instance. The Database and the Bastion need nothing of the Stack that AWS makes slowly.
fn critical_paths(waits: &[Wait], factor: f64) -> WaitRun {
    let made = |kind: &str| waits.iter().any(|w| w.kind == kind);
    let scaled = |kind: &str| if made(kind) { typical(kind).as_secs_f64() * factor } else { 0.0 };
    let link = scaled("cloudformation:Stack");
    let stack = link + STACK_WAITS.iter().map(|k| scaled(k)).fold(0.0, f64::max);
    let (db, bastion) = (link + scaled("rds:DBInstance"), link + scaled("ec2:Instance"));
    let late = waits
        .iter()
        .filter_map(|w| w.seen.map(|s| s.saturating_duration_since(w.ends).as_secs_f64()))
        .fold(0.0, f64::max);
    WaitRun { link, stack, db, bastion, all: link.max(stack).max(db).max(bastion), late, count: waits.len() }
}

struct ScaleRun {
    stacks: usize,
    converge: f64,
    rss: Vec<f64>,
    hwm: f64,
    calls_per_resync: Vec<f64>,
    cpu_per_reconcile: Vec<f64>,
    reconciles_per_resync: Vec<f64>,
    /// The calls of the last window, by operation.
    operations: BTreeMap<String, f64>,
}

/// Actions that change something in AWS; each waits for an earlier one's result (the VPC before
/// its subnets, the subnets before their route tables, the Stack before the Database's subnet
/// group, ...), so their latencies add up on the critical path.
fn mutating(action: &str) -> bool {
    const VERBS: &[&str] = &[
        "Create",
        "Allocate",
        "Associate",
        "Attach",
        "Authorize",
        "Put",
        "Modify",
        "Replace",
        "Enable",
        "Tag",
        "Update",
        "AssumeRole",
        "Schedule",
        "Run",
        "Import",
        "Add",
        "POST ",
        "PUT ",
        "PATCH ",
    ];
    VERBS.iter().any(|v| action.starts_with(v))
}

/// The time in which at least one call was in flight.
fn busy_time(timings: &[&Timing]) -> f64 {
    let mut spans: Vec<(Instant, Instant)> = timings.iter().map(|t| (t.start, t.start + t.latency)).collect();
    spans.sort();
    let mut total = Duration::ZERO;
    let mut current: Option<(Instant, Instant)> = None;
    for (s, e) in spans {
        current = match current {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    if let Some((cs, ce)) = current {
        total += ce - cs;
    }
    total.as_secs_f64()
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

impl Results {
    fn render(&self, notes: &str) -> String {
        let mut d = String::new();
        let w = &mut d;
        let _ = writeln!(w, "# Benchmarks\n");
        let _ = writeln!(
            w,
            "Generated by `make bench` (`hack/bench.sh`, driver `tests/bench.rs`) against the real control \
             plane (etcd, kube-apiserver built from source) and moto, on this machine. Every figure is a median; \
             the number of runs or samples behind it is given with it. Do not edit the generated sections by hand; \
             the section \"Analysis\" at the end is kept across runs. `make bench-waits` runs only the time to \
             Ready against AWS's waits (a few minutes) and replaces only that section and its summary rows.\n"
        );
        let _ = writeln!(w, "## Machine\n\n| | |\n|---|---|");
        for (k, v) in &self.machine {
            let _ = writeln!(w, "| {k} | {v} |");
        }

        let _ = writeln!(w, "\n## Summary against the targets\n");
        let _ = writeln!(w, "| Target | Measured | |\n|---|---|---|");
        if let Some((rss, _)) = self.idle {
            let _ =
                writeln!(w, "| ≤ 30 MB resident idle | {:.1} MiB VmRSS | {} |", mib(rss), verdict(mib(rss) <= 30.0));
        }
        match self.scale.iter().find(|s| s.stacks >= 1000) {
            Some(s) => {
                let rss = mib(median(s.rss.clone()));
                let _ = writeln!(
                    w,
                    "| ≤ 100 MB resident at 1,000 Stacks with Databases | {rss:.1} MiB VmRSS (peak {:.1} MiB) | {} |",
                    mib(s.hwm),
                    verdict(rss <= 100.0)
                );
            }
            None => {
                let largest = self.scale.iter().map(|s| s.stacks).max().unwrap_or(0);
                let at = self.scale.iter().find(|s| s.stacks == largest);
                let figure = at.map_or("—".to_string(), |s| {
                    format!("{:.1} MiB VmRSS at {largest} (peak {:.1} MiB)", mib(median(s.rss.clone())), mib(s.hwm))
                });
                let _ = writeln!(
                    w,
                    "| ≤ 100 MB resident at 1,000 Stacks with Databases | **1,000 not measured** (see below); {figure} | not measured |"
                );
            }
        }
        if self.scale.len() < 2 {
            let _ = writeln!(
                w,
                "| AWS calls per steady-state resync do not grow with the number of objects | measured at one size only ({}) | not measured |",
                self.scale.first().map_or("none".into(), |s| format!(
                    "{:.0} at {}",
                    median(s.calls_per_resync.clone()),
                    s.stacks
                ))
            );
        }
        if self.scale.len() >= 2 {
            let first = median(self.scale[0].calls_per_resync.clone());
            let last = self.scale.last().map(|s| median(s.calls_per_resync.clone())).unwrap_or(f64::NAN);
            let flat = last <= first * 1.5 + 3.0;
            let sizes: Vec<String> = self
                .scale
                .iter()
                .map(|s| format!("{:.0} at {}", median(s.calls_per_resync.clone()), s.stacks))
                .collect();
            let _ = writeln!(
                w,
                "| AWS calls per steady-state resync do not grow with the number of objects | {} | {} |",
                sizes.join(", "),
                verdict(flat)
            );
        }
        for row in self.waits_rows() {
            let _ = writeln!(w, "{row}");
        }

        let _ = writeln!(w, "\n## Operator memory and steady state\n");
        let _ = writeln!(
            w,
            "Resident memory is `VmRSS` from `/proc/<pid>/status`, sampled every 5 s over the steady-state \
             windows (median of the samples); the peak is `VmHWM` at the end of the size's windows (a process \
             high-water mark, so it includes the convergence that came before). Each size adds Stacks \
             (`network: {{pattern: PublicPrivate, natGateways: None, vpcLink: false}}`: no NAT gateway and no VPC \
             Link, so that many of them fit in the time; the same resource types are listed at resync) each with a \
             Database, in one namespace and one AWS account, to the same operator process (resync period {}, \
             default concurrency 4, `TINYSTACKS_AWS_MUTATION_RATE_SCALE=25` so that moto is not held to AWS's \
             request rates while converging). \"Calls per resync\" are the `tinystacks_aws_requests_total` \
             counted over one resync period after everything is Ready, one figure per window; \"CPU per \
             reconcile\" is the process's utime+stime over the window divided by the reconciles counted in \
             `tinystacks_reconciles_total` in it (all of them find nothing to do).\n",
            self.scale_resync
        );
        if let Some((rss, hwm)) = self.idle {
            let _ = writeln!(
                w,
                "Idle (no object of ours in the cluster, CRDs installed, runs: {}): **{:.1} MiB** VmRSS, {:.1} MiB VmHWM.\n",
                self.repeats,
                mib(rss),
                mib(hwm)
            );
        }
        if !self.scale.is_empty() {
            let _ = writeln!(
                w,
                "| Stacks (+ Databases) | Converged in | VmRSS | VmHWM | AWS calls per resync | Reconciles per resync | CPU per no-op reconcile | Windows |"
            );
            let _ = writeln!(w, "|---|---|---|---|---|---|---|---|");
            for s in &self.scale {
                let _ = writeln!(
                    w,
                    "| {} (+{}) | {:.0} s | {:.1} MiB | {:.1} MiB | {:.1} | {:.0} | {:.2} ms | {} |",
                    s.stacks,
                    s.stacks,
                    s.converge,
                    mib(median(s.rss.clone())),
                    mib(s.hwm),
                    median(s.calls_per_resync.clone()),
                    median(s.reconciles_per_resync.clone()),
                    median(s.cpu_per_reconcile.clone()) * 1000.0,
                    s.calls_per_resync.len()
                );
            }
            let _ = writeln!(w, "\nThe AWS calls of the last steady-state window, by operation:\n");
            let _ = writeln!(w, "| Stacks | Calls in one resync, by operation |\n|---|---|");
            for s in &self.scale {
                let ops: Vec<String> = s.operations.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
                let _ = writeln!(w, "| {} | {} |", s.stacks, ops.join(", "));
            }
            let _ = writeln!(w);
        }
        for s in &self.skipped {
            let _ = writeln!(w, "- **Not measured:** {s}");
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(w);
        }

        if let Some(rel) = &self.release {
            let _ = writeln!(
                w,
                "**Release build**, measured after the run above with the same objects in place (the release build \
                 of the AWS SDK did not finish before the run had to start): idle (the paused AwsAccountLinks of the \
                 run in the cluster, no Stack or Database watched) **{:.1} MiB** VmRSS (median of 3 processes); with \
                 the {} Stacks and {} Databases, after one resync period to settle, **{:.1} MiB** VmRSS (median of the \
                 samples over one resync window; VmHWM {:.1} MiB, which includes re-listing everything at start-up), \
                 {:.0} AWS calls in that resync, {:.2} ms CPU per no-op reconcile.\n",
                mib(rel.idle_rss),
                rel.stacks,
                rel.stacks,
                mib(rel.rss),
                mib(rel.hwm),
                rel.calls,
                rel.cpu_per_reconcile * 1000.0
            );
        }
        let waits = self.render_waits();
        if !waits.is_empty() {
            let _ = writeln!(w, "{waits}");
        }
        let _ = writeln!(w, "## One full stack: calls to converge and time to Ready\n");
        let _ = writeln!(
            w,
            "Each run: a fresh AWS account in moto and a fresh operator process (default AWS rate limits, as in \
             production), then at once an `AwsAccountLink` in `CloudFormation` bootstrap mode, a `Stack` and a \
             `Database` and a `Bastion` (SSM access, the defaults) on it; timed from the create requests to all \
             four `Ready=True` (polled every 100 ms). \
             The operator talks to moto through a proxy (`tests/common/fault_proxy.rs`) that records every AWS \
             call and its latency (from the request reaching the proxy to moto's whole answer). The \
             **critical-path lower bound** is the sum of the latencies of the mutating calls (create, allocate, \
             attach, associate, authorize, put, modify, tag, AssumeRole; API Gateway's POSTs) made between the \
             apply and Ready: each of them needs the result of an earlier one (the CloudFormation stack before the \
             role can be assumed, the VPC before its subnets, the subnets before their routes and the Database's \
             subnet group, the key before the instance), so no schedule does them faster than one after another. \
             Reads are left out, though some are needed (the final reads that see the stack complete and the \
             instance available); subnets in different zones could in principle be made in parallel, which would \
             shorten this bound by a little. \"AWS busy\" is the time in which at least one call was in flight.\n"
        );
        let _ = writeln!(
            w,
            "| Pattern | Runs | Time to all Ready | Link Ready at | Stack Ready at | Database Ready at | Bastion Ready at | Critical path (mutations) | Time to Ready / critical path | AWS busy | AWS calls to converge (link + stack + database + bastion) |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|");
        for pattern in ["PublicPrivate", "PrivateIsolated"] {
            let runs: Vec<&FullRun> = self.full.iter().filter(|r| r.pattern == pattern).collect();
            if runs.is_empty() {
                continue;
            }
            let m = |f: &dyn Fn(&FullRun) -> f64| median(runs.iter().map(|r| f(r)).collect());
            let label =
                if pattern == "PublicPrivate" { "PublicPrivate, NAT Single, VPC Link" } else { "PrivateIsolated" };
            let _ = writeln!(
                w,
                "| {label} | {} | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.2} s ({:.0} calls) | {:.1}× | {:.2} s | {:.0} |",
                runs.len(),
                m(&|r| r.to_ready),
                m(&|r| r.link_at),
                m(&|r| r.stack_at),
                m(&|r| r.db_at),
                m(&|r| r.bastion_at),
                m(&|r| r.critical),
                m(&|r| r.mutations as f64),
                m(&|r| r.to_ready / r.critical.max(f64::EPSILON)),
                m(&|r| r.busy),
                m(&|r| r.calls as f64),
            );
        }
        let _ = writeln!(w, "\nAWS calls to converge by service (median of the runs, from the operator's metrics):\n");
        let _ = writeln!(w, "| Pattern | Calls by service |\n|---|---|");
        for pattern in ["PublicPrivate", "PrivateIsolated"] {
            let runs: Vec<&FullRun> = self.full.iter().filter(|r| r.pattern == pattern).collect();
            if runs.is_empty() {
                continue;
            }
            let services: std::collections::BTreeSet<&String> = runs.iter().flat_map(|r| r.by_service.keys()).collect();
            let text: Vec<String> = services
                .iter()
                .map(|s| {
                    format!(
                        "{s} {:.0}",
                        median(runs.iter().map(|r| r.by_service.get(*s).copied().unwrap_or(0.0)).collect())
                    )
                })
                .collect();
            let _ = writeln!(w, "| {pattern} | {} |", text.join(", "));
        }

        let _ = writeln!(w, "\n## Start-up and the API server\n");
        if !self.startup_first.is_empty() {
            let _ = writeln!(
                w,
                "- Start-up, from spawning the process to the first reconcile counted in `/metrics` (one paused \
                 AwsAccountLink in the cluster, leader election off): **{:.0} ms**; to `/readyz` answering 200: {:.0} \
                 ms (runs: {}).",
                median(self.startup_first.clone()) * 1000.0,
                median(self.startup_ready.clone()) * 1000.0,
                self.startup_first.len()
            );
        }
        let _ = writeln!(w, "- CRDs installed: **{}**.", self.crds);
        if let (Some((b, bh)), Some((a, ah))) = (self.apiserver_before, self.apiserver_after) {
            let _ = writeln!(
                w,
                "- kube-apiserver VmRSS before installing them: **{:.1} MiB** (VmHWM {:.1} MiB); 20 s after: **{:.1} MiB** \
                 (VmHWM {:.1} MiB); difference {:+.1} MiB (median of 5 samples each, 2 s apart; a Go heap, so a few \
                 MiB either way are garbage-collector noise).",
                mib(b),
                mib(bh),
                mib(a),
                mib(ah),
                mib(a - b)
            );
        }
        if let Some((n, rss)) = self.apiserver_end {
            let _ = writeln!(
                w,
                "- kube-apiserver VmRSS at the end, with {n} Stacks and {n} Databases stored: {:.1} MiB.",
                mib(rss)
            );
        }

        let _ = writeln!(w, "\n## Peers\n");
        let _ = writeln!(
            w,
            "| | Memory | CRDs |\n|---|---|---|\n\
             | AWS Controllers for Kubernetes (ACK) | 64 MiB requested per service controller (EC2, RDS, KMS, Secrets Manager, API Gateway v2: five controllers for what this operator covers, 320 MiB requested) | one per resource type of each service |\n\
             | Crossplane AWS provider | about 1.1 GB on average, 3 GB peak | thousands (one per resource type), each one loading the API server |\n\
             | tinystacks-operator (this run) | {} idle; {} | {} |",
            self.idle.map_or("—".into(), |(r, _)| format!("{:.1} MiB", mib(r))),
            self.scale.last().map_or("—".into(), |s| format!(
                "{:.1} MiB with {} Stacks + Databases",
                mib(median(s.rss.clone())),
                s.stacks
            )),
            self.crds
        );
        let _ = writeln!(w, "\nThe peers' figures are the ones quoted in issue 9, not measured here.\n");
        let _ = writeln!(w, "{}", notes.trim_end());
        d
    }
}

const WAITS_SECTION: &str = "## Time to Ready against AWS's waits";
const WAITS_ROW: &str = "| Time to all Ready ≤ 1.1 × critical path of AWS's waits";

impl Results {
    /// The runs of one pattern against AWS's waits, with the waits each recorded.
    fn wait_runs(&self, pattern: &str) -> Vec<(&FullRun, &WaitRun)> {
        self.waits.iter().filter(|r| r.pattern == pattern).filter_map(|r| Some((r, r.waits.as_ref()?))).collect()
    }

    /// The summary's rows for time to Ready against AWS's waits, one per pattern measured.
    fn waits_rows(&self) -> Vec<String> {
        let mut rows = Vec::new();
        for pattern in ["PublicPrivate", "PrivateIsolated"] {
            let runs = self.wait_runs(pattern);
            if runs.is_empty() {
                continue;
            }
            let ready = median(runs.iter().map(|(r, _)| r.to_ready).collect());
            let critical = median(runs.iter().map(|(_, w)| w.all).collect());
            let ratio = median(runs.iter().map(|(r, w)| r.to_ready / w.all.max(f64::EPSILON)).collect());
            rows.push(format!(
                "{WAITS_ROW} ({pattern}) | {ready:.1} s against {critical:.1} s ({ratio:.2}×, waits scaled by {}) | {} |",
                scale_text(self.wait_factor),
                verdict(ratio <= 1.1)
            ));
        }
        rows
    }

    /// The section on time to Ready against AWS's waits (empty when none was measured).
    fn render_waits(&self) -> String {
        let mut d = String::new();
        if self.waits.is_empty() {
            return d;
        }
        let w = &mut d;
        let machine = |k: &str| self.machine.iter().find(|(key, _)| key == k).map_or("?", |(_, v)| v.as_str());
        let _ = writeln!(w, "{WAITS_SECTION}\n");
        let _ = writeln!(
            w,
            "Each run: as below (a fresh account and operator; an `AwsAccountLink` in `CloudFormation` mode, a \
             `Stack`, a `Database` and an Ssm `Bastion` applied at once; Ready polled every 100 ms), but the proxy \
             waits like AWS (`tests/common/aws_waits.rs`): each CloudFormation stack, NAT gateway, interface \
             endpoint, VPC Link, RDS instance and EC2 instance stays in its in-between state for AWS's typical time \
             for its type (60, 90, 60, 180, 420 and 20 s) × {f} after its create call, and the operator's \
             `--aws-poll-interval` (2 s) is scaled by the same factor: AWS's schedule in miniature. Only the round \
             trips to moto and the API server are not scaled, so the ratio is an upper bound of the one at AWS's \
             durations. The **critical path** is the longest chain of dependent waits in that table, scaled: the \
             link's CloudFormation stack, then (each after the link) the slowest of the Stack's own waits (made at \
             once), the Database's instance, the Bastion's instance. \"Noticed\" is the latest, over a run's \
             waits, from a wait's end to the first answer that showed it done (at AWS's durations: that ÷ the \
             factor). Measured {date} UTC, commit {commit}, {profile} build (`make bench`, or on its own \
             `make bench-waits`).\n",
            f = scale_text(self.wait_factor),
            date = machine("Date (UTC)"),
            commit = machine("Commit"),
            profile = machine("Operator build profile"),
        );
        let _ = writeln!(
            w,
            "| Pattern | Runs | Link Ready (path) | Stack Ready (path) | Database Ready (path) | Bastion Ready (path) | \
             All Ready | Critical path | All Ready / critical path | Noticed (at AWS's durations) | Waits |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|");
        for pattern in ["PublicPrivate", "PrivateIsolated"] {
            let runs = self.wait_runs(pattern);
            if runs.is_empty() {
                continue;
            }
            let m = |f: &dyn Fn(&FullRun, &WaitRun) -> f64| median(runs.iter().map(|(r, w)| f(r, w)).collect());
            let label =
                if pattern == "PublicPrivate" { "PublicPrivate, NAT Single, VPC Link" } else { "PrivateIsolated" };
            let late = m(&|_, w| w.late);
            let _ = writeln!(
                w,
                "| {label} | {} | {:.1} s ({:.1}) | {:.1} s ({:.1}) | {:.1} s ({:.1}) | {:.1} s ({:.1}) | {:.1} s | {:.1} s | \
                 **{:.2}×** | {:.2} s ({:.1} s) | {:.0} |",
                runs.len(),
                m(&|r, _| r.link_at),
                m(&|_, w| w.link),
                m(&|r, _| r.stack_at),
                m(&|_, w| w.stack),
                m(&|r, _| r.db_at),
                m(&|_, w| w.db),
                m(&|r, _| r.bastion_at),
                m(&|_, w| w.bastion),
                m(&|r, _| r.to_ready),
                m(&|_, w| w.all),
                m(&|r, w| r.to_ready / w.all.max(f64::EPSILON)),
                late,
                late / self.wait_factor,
                m(&|_, w| w.count as f64),
            );
        }
        d
    }
}

/// A factor as the document states it: `1/30` rather than `0.0333`.
fn scale_text(factor: f64) -> String {
    let inverse = 1.0 / factor;
    if (inverse - inverse.round()).abs() < 1e-6 { format!("1/{inverse:.0}") } else { format!("{factor}") }
}

/// A factor from `TINYSTACKS_BENCH_WAIT_SCALE`: `1/30` or `0.0333`.
fn parse_scale(text: &str) -> f64 {
    let value = match text.split_once('/') {
        Some((a, b)) => a.trim().parse::<f64>().unwrap_or(f64::NAN) / b.trim().parse::<f64>().unwrap_or(f64::NAN),
        None => text.trim().parse().unwrap_or(f64::NAN),
    };
    assert!(value > 0.0 && value <= 1.0, "TINYSTACKS_BENCH_WAIT_SCALE {text:?}: a factor in (0, 1], e.g. 1/30");
    value
}

/// `old` (the document of an earlier `make bench`) with its section on AWS's waits and its summary
/// rows for them replaced by `r`'s, the rest kept: what `make bench-waits` writes.
fn splice_waits(old: &str, r: &Results) -> String {
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| !l.starts_with(WAITS_ROW) && !l.starts_with("| Time to Ready ≤ 1.3 × critical path"))
        .map(str::to_string)
        .collect();
    // The summary rows go at the end of the summary's table.
    if let Some(start) = lines.iter().position(|l| l.starts_with("## Summary against the targets")) {
        let table = lines[start..].iter().position(|l| l.starts_with('|')).map(|i| start + i);
        if let Some(table) = table {
            let end = lines[table..].iter().position(|l| !l.starts_with('|')).map_or(lines.len(), |i| table + i);
            lines.splice(end..end, r.waits_rows());
        }
    }
    let mut text = lines.join("\n") + "\n";
    let section = r.render_waits();
    match text.find(WAITS_SECTION) {
        Some(at) => {
            let end =
                text[at + WAITS_SECTION.len()..].find("\n## ").map_or(text.len(), |i| at + WAITS_SECTION.len() + i + 1);
            text.replace_range(at..end, &section);
        }
        None => {
            let at = text.find("## One full stack").or_else(|| text.find("## Start-up")).unwrap_or(text.len());
            text.insert_str(at, &format!("{section}\n"));
        }
    }
    text
}

const NOTES_MARKER: &str = "## Analysis";

/// The hand-written analysis of the previous document, kept across runs.
fn kept_notes(path: &str) -> String {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    match old.find(&format!("\n{NOTES_MARKER}")) {
        Some(i) => old[i + 1..].to_string(),
        None => format!("{NOTES_MARKER}\n\n(Written by hand after a run: why a target was missed.)\n"),
    }
}

fn machine(profile: &str) -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()))
        .map_or("unknown".into(), |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0));
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_default();
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let kernel = run("uname", &["-r"]);
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| "unknown".into());
    vec![
        ("Date (UTC)".into(), run("date", &["-u", "+%Y-%m-%d %H:%M"])),
        ("Commit".into(), run("git", &["rev-parse", "--short", "HEAD"])),
        ("CPU".into(), model),
        ("Cores".into(), cores.to_string()),
        ("Memory".into(), mem),
        ("OS".into(), format!("{os}, Linux {kernel}")),
        ("rustc".into(), run("rustc", &["-V"])),
        ("Operator build profile".into(), profile.to_string()),
        ("Kubernetes (kube-apiserver, etcd)".into(), format!("{}, etcd {}", env("K8S_VERSION"), env("ETCD_VERSION"))),
        ("moto".into(), env("MOTO_VERSION")),
    ]
}

// ------------------------------------------------------------------------------------------------
// The benchmark

#[tokio::test]
#[ignore = "the benchmark: run with `make bench`"]
async fn bench() {
    let Ok(out) = std::env::var("TINYSTACKS_BENCH_OUT") else {
        eprintln!("TINYSTACKS_BENCH_OUT is not set: run `make bench`; nothing done");
        return;
    };
    let _lock = OPERATOR_LOCK.lock().await;
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let bench = Bench { binary: env("TINYSTACKS_BENCH_OPERATOR", env!("CARGO_BIN_EXE_tinystacks-operator")) };
    let profile = env("TINYSTACKS_BENCH_PROFILE", "debug");
    let repeats: usize = env("TINYSTACKS_BENCH_REPEATS", "3").parse().expect("repeats");
    let sizes: Vec<usize> =
        env("TINYSTACKS_BENCH_SIZES", "1,100,1000").split(',').map(|s| s.trim().parse().expect("size")).collect();
    let deadline: u64 = env("TINYSTACKS_BENCH_DEADLINE", "0").parse().unwrap_or(0);
    let resync_text = env("TINYSTACKS_BENCH_RESYNC", "30s");
    let resync = humantime::parse_duration(&resync_text).expect("resync");
    let state = env("TINYSTACKS_STATE", "");
    let notes = kept_notes(&out);
    let wait_factor = parse_scale(&env("TINYSTACKS_BENCH_WAIT_SCALE", "1/30"));
    let mut r = Results {
        machine: machine(&profile),
        repeats,
        scale_resync: resync_text.clone(),
        wait_factor,
        ..Default::default()
    };
    let client = client().await;
    if env("TINYSTACKS_BENCH_ONLY", "") == "waits" {
        // `make bench-waits`: only time to Ready against AWS's waits, spliced into the document.
        install_crds(&client).await;
        let system = TestNamespace::new(&client, "bench-system").await;
        let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
        r.waits = wait_runs(&bench, &client, &moto, &system.name, repeats, wait_factor).await;
        let old = std::fs::read_to_string(&out).unwrap_or_default();
        std::fs::write(&out, splice_waits(&old, &r)).expect("write the benchmark document");
        eprintln!("[bench] wrote {out}");
        return;
    }
    let write = |r: &Results| {
        std::fs::write(&out, r.render(&notes)).expect("write the benchmark document");
    };
    let apiserver: Option<u32> =
        std::fs::read_to_string(format!("{state}/pids/kube-apiserver.pid")).ok().and_then(|p| p.trim().parse().ok());

    // 1. The API server before and after the CRDs.
    r.crds = tinystacks_operator::api::crds().len();
    let sample_apiserver = |pid: u32| async move {
        let mut rss = Vec::new();
        let mut hwm = Vec::new();
        for _ in 0..5 {
            let (a, b) = memory_kib(pid);
            rss.push(a as f64);
            hwm.push(b as f64);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        (median(rss), median(hwm))
    };
    if let Some(pid) = apiserver {
        r.apiserver_before = Some(sample_apiserver(pid).await);
    }
    install_crds(&client).await;
    if let Some(pid) = apiserver {
        tokio::time::sleep(Duration::from_secs(20)).await;
        r.apiserver_after = Some(sample_apiserver(pid).await);
    }
    eprintln!("[bench] API server: {:?} -> {:?}", r.apiserver_before, r.apiserver_after);
    write(&r);

    // 2. Idle memory, then start-up to the first reconcile (with one paused link to reconcile).
    let system = TestNamespace::new(&client, "bench-system").await;
    let mut idle_rss = Vec::new();
    let mut idle_hwm = Vec::new();
    for _ in 0..repeats {
        let op = bench.operator(&system.name, None, "5m", &[]);
        op.wait_ready().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (rss, hwm) = memory_kib(op.pid());
        idle_rss.push(rss as f64);
        idle_hwm.push(hwm as f64);
    }
    r.idle = Some((median(idle_rss), median(idle_hwm)));
    eprintln!("[bench] idle: {:?}", r.idle);
    let startup_link = format!("bench-startup-{}", suffix());
    fixture_link(&client, &startup_link, &new_account_id(), &[]).await;
    for _ in 0..repeats {
        let op = bench.operator(&system.name, None, "5m", &[]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ready = None;
        let first = loop {
            assert!(Instant::now() < deadline, "no reconcile within 60 s of start-up");
            if ready.is_none() && op.ready() {
                ready = Some(op.started.elapsed());
            }
            if metric(&op.metrics(), "tinystacks_reconciles_total") >= 1.0 {
                break op.started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let ready = match ready {
            Some(d) => d,
            None => op.wait_ready().await,
        };
        r.startup_first.push(first.as_secs_f64());
        r.startup_ready.push(ready.as_secs_f64());
    }
    eprintln!("[bench] start-up: {:?} / ready {:?}", r.startup_first, r.startup_ready);
    write(&r);

    // 3. One full stack of each pattern, link to Database, through the timing proxy.
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    for pattern in ["PublicPrivate", "PrivateIsolated"] {
        for _ in 0..repeats {
            let run = full_stack(&bench, &client, &moto, &system.name, pattern, None).await;
            eprintln!(
                "[bench] {pattern}: Ready in {:.1}s (link {:.1}, stack {:.1}, db {:.1}, bastion {:.1}), {} calls, critical {:.2}s",
                run.to_ready, run.link_at, run.stack_at, run.db_at, run.bastion_at, run.calls, run.critical
            );
            r.full.push(run);
            write(&r);
        }
    }
    // 3b. The same against AWS's waits.
    r.waits = wait_runs(&bench, &client, &moto, &system.name, repeats, r.wait_factor).await;
    write(&r);

    // 4. Scale: Stacks with Databases added to one operator, measured at each size.
    let ns = TestNamespace::new(&client, "bench-scale").await;
    let link = format!("bench-scale-{}", suffix());
    fixture_link(&client, &link, &new_account_id(), &[&ns.name]).await;
    let op =
        bench.operator(&system.name, Some(&ns.name), &resync_text, &[("TINYSTACKS_AWS_MUTATION_RATE_SCALE", "25")]);
    op.wait_ready().await;
    let windows = 3usize;
    let mut created = 0usize;
    let mut rate: Option<f64> = None; // seconds per Stack + Database to converge
    let overhead = resync.as_secs_f64() * (windows + 1) as f64 + 30.0;
    for (i, &wanted) in sizes.iter().enumerate() {
        // The time this size needs: its convergence (at the rate seen so far) and its windows.
        let mut target = wanted;
        let needed = rate.map_or(0.0, |s| s * (target - created) as f64) + overhead;
        let left = deadline.saturating_sub(unix_now()) as f64;
        if let (true, Some(rate)) = (deadline > 0 && needed > left, rate) {
            // The largest hundred that still fits, measured instead, and said so.
            let fits = created + (((left - overhead) / rate).max(0.0) as usize) * 8 / 10;
            let fits = fits / 100 * 100;
            if fits > created && fits >= 200 {
                r.skipped.push(format!(
                    "{wanted} Stacks with Databases: at the convergence rate measured at the previous size ({rate:.2} s \
                     per Stack + Database on this 2-core machine, operator, API server and moto sharing it), reaching \
                     and measuring them needed about {:.0} min, and the benchmark had {:.0} min left before its \
                     deadline; {fits} were measured instead. No figure is extrapolated to {wanted}.",
                    needed / 60.0,
                    left / 60.0
                ));
                target = fits;
            }
        }
        let needed = rate.map_or(0.0, |s| s * (target - created) as f64) + overhead;
        if deadline > 0 && needed > left {
            let reason = format!(
                "{target} Stacks with Databases: at the convergence rate measured at the previous size ({:.2} s per \
                 Stack + Database on this 2-core machine, operator, API server and moto sharing it), reaching and \
                 measuring them needed about {:.0} min, and the benchmark had {:.0} min left before its deadline. \
                 No figure is extrapolated for it.",
                rate.unwrap_or(0.0),
                needed / 60.0,
                left / 60.0
            );
            eprintln!("[bench] skipped: {reason}");
            r.skipped.push(reason);
            for later in &sizes[i + 1..] {
                r.skipped.push(format!("{later} Stacks with Databases: not reached, as above."));
            }
            break;
        }
        let started = Instant::now();
        let stack_spec = |link: &str| {
            json!({"accountLinkRef": {"name": link},
                   "network": {"pattern": "PublicPrivate", "cidr": "10.60.0.0/16", "natGateways": "None", "vpcLink": false}})
        };
        let names: Vec<usize> = (created..target).collect();
        for chunk in names.chunks(20) {
            let creates = chunk.iter().map(|n| {
                let client = client.clone();
                let ns = ns.name.clone();
                let spec = stack_spec(&link);
                async move {
                    let name = format!("s{n:04}");
                    create(&client, Some(&ns), "Stack", &name, spec).await;
                    create(
                        &client,
                        Some(&ns),
                        "Database",
                        &format!("d{n:04}"),
                        json!({"stackRef": {"name": name}, "deletionPolicy": "Delete"}),
                    )
                    .await;
                }
            });
            futures::future::join_all(creates).await;
        }
        let mut reached = true;
        loop {
            let stacks = ready_count(&client, &ns.name, "Stack").await;
            let dbs = ready_count(&client, &ns.name, "Database").await;
            if stacks >= target && dbs >= target {
                break;
            }
            if deadline > 0 && unix_now() + (resync.as_secs() * (windows as u64 + 1)) + 30 > deadline {
                reached = false;
                let reason = format!(
                    "{target} Stacks with Databases: only {stacks} Stacks and {dbs} Databases were Ready {:.0} s after \
                     creating them when the benchmark's deadline came; no figure is given for this size.",
                    started.elapsed().as_secs_f64()
                );
                eprintln!("[bench] {reason}");
                r.skipped.push(reason);
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if !reached {
            for later in &sizes[i + 1..] {
                r.skipped.push(format!("{later} Stacks with Databases: not reached, as above."));
            }
            break;
        }
        let converge = started.elapsed().as_secs_f64();
        if target > created {
            rate = Some(converge / (target - created) as f64);
        }
        created = target;
        eprintln!("[bench] {target}: converged in {converge:.0}s");
        // Let the convergence's own follow-up calls pass, then measure over `windows` resyncs.
        tokio::time::sleep(resync + Duration::from_secs(5)).await;
        let mut run = ScaleRun {
            stacks: target,
            converge,
            rss: vec![],
            hwm: 0.0,
            calls_per_resync: vec![],
            cpu_per_reconcile: vec![],
            reconciles_per_resync: vec![],
            operations: BTreeMap::new(),
        };
        for _ in 0..windows {
            let body = op.metrics();
            let ops0 = calls_by_operation(&body);
            let (calls0, rec0, cpu0) = (
                metric(&body, "tinystacks_aws_requests_total"),
                metric(&body, "tinystacks_reconciles_total"),
                cpu_seconds(op.pid()),
            );
            let end = Instant::now() + resync;
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_secs(5).min(end - Instant::now())).await;
                run.rss.push(memory_kib(op.pid()).0 as f64);
            }
            let body = op.metrics();
            let (calls1, rec1, cpu1) = (
                metric(&body, "tinystacks_aws_requests_total"),
                metric(&body, "tinystacks_reconciles_total"),
                cpu_seconds(op.pid()),
            );
            run.operations = calls_by_operation(&body)
                .into_iter()
                .map(|(k, v)| (k.clone(), v - ops0.get(&k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect();
            run.calls_per_resync.push(calls1 - calls0);
            run.reconciles_per_resync.push(rec1 - rec0);
            if rec1 > rec0 {
                run.cpu_per_reconcile.push((cpu1 - cpu0) / (rec1 - rec0));
            }
        }
        run.hwm = memory_kib(op.pid()).1 as f64;
        eprintln!(
            "[bench] {target}: rss {:.1} MiB, calls/resync {:?}, reconciles {:?}, cpu/rec {:?}",
            mib(median(run.rss.clone())),
            run.calls_per_resync,
            run.reconciles_per_resync,
            run.cpu_per_reconcile
        );
        r.scale.push(run);
        if let Some(pid) = apiserver {
            r.apiserver_end = Some((created, memory_kib(pid).0 as f64));
        }
        write(&r);
    }
    write(&r);

    // 5. The release build, when the run measured another one and it exists.
    let release = env("TINYSTACKS_BENCH_RELEASE_OPERATOR", "");
    if profile != "release" && !release.is_empty() && std::path::Path::new(&release).exists() {
        drop(op);
        let rel_bench = Bench { binary: release };
        let empty = TestNamespace::new(&client, "bench-empty").await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            let op = rel_bench.operator(&system.name, Some(&empty.name), "5m", &[]);
            op.wait_ready().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            idle.push(memory_kib(op.pid()).0 as f64);
        }
        let op = rel_bench.operator(
            &system.name,
            Some(&ns.name),
            &resync_text,
            &[("TINYSTACKS_AWS_MUTATION_RATE_SCALE", "25")],
        );
        op.wait_ready().await;
        tokio::time::sleep(resync + Duration::from_secs(10)).await;
        let body = op.metrics();
        let (calls0, rec0, cpu0) = (
            metric(&body, "tinystacks_aws_requests_total"),
            metric(&body, "tinystacks_reconciles_total"),
            cpu_seconds(op.pid()),
        );
        let mut rss = Vec::new();
        let end = Instant::now() + resync;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(5).min(end - Instant::now())).await;
            rss.push(memory_kib(op.pid()).0 as f64);
        }
        let body = op.metrics();
        let (calls1, rec1, cpu1) = (
            metric(&body, "tinystacks_aws_requests_total"),
            metric(&body, "tinystacks_reconciles_total"),
            cpu_seconds(op.pid()),
        );
        r.release = Some(ReleaseRun {
            idle_rss: median(idle),
            stacks: created,
            rss: median(rss),
            hwm: memory_kib(op.pid()).1 as f64,
            calls: calls1 - calls0,
            cpu_per_reconcile: if rec1 > rec0 { (cpu1 - cpu0) / (rec1 - rec0) } else { f64::NAN },
        });
        eprintln!("[bench] release measured");
        write(&r);
    }
    eprintln!("[bench] wrote {out}");
}

/// `repeats` full stacks of each pattern against AWS's waits scaled by `factor`.
async fn wait_runs(
    bench: &Bench,
    client: &Client,
    moto: &str,
    system: &str,
    repeats: usize,
    factor: f64,
) -> Vec<FullRun> {
    let mut runs = Vec::new();
    for pattern in ["PublicPrivate", "PrivateIsolated"] {
        for _ in 0..repeats {
            let run = full_stack(bench, client, moto, system, pattern, Some(factor)).await;
            if let Some(w) = &run.waits {
                eprintln!(
                    "[bench] {pattern} against AWS's waits × {}: all Ready in {:.1}s against a critical path of {:.1}s \
                     (link {:.1}/{:.1}, stack {:.1}/{:.1}, db {:.1}/{:.1}, bastion {:.1}/{:.1}), noticed within {:.2}s",
                    scale_text(factor),
                    run.to_ready,
                    w.all,
                    run.link_at,
                    w.link,
                    run.stack_at,
                    w.stack,
                    run.db_at,
                    w.db,
                    run.bastion_at,
                    w.bastion,
                    w.late
                );
            }
            runs.push(run);
        }
    }
    runs
}

/// One full stack: link (CloudFormation bootstrap), Stack, Database and Bastion applied at once.
/// With `waits`, against AWS's waits scaled by that factor, the operator's poll interval for
/// waits (`--aws-poll-interval`, 2 s) scaled by it too.
async fn full_stack(
    bench: &Bench,
    client: &Client,
    moto: &str,
    system: &str,
    pattern: &'static str,
    waits: Option<f64>,
) -> FullRun {
    let ns = TestNamespace::new(client, "bench-full").await;
    let account = new_account_id();
    let creds = bootstrap_credentials(moto, &account).await;
    let data: BTreeMap<String, k8s_openapi::ByteString> =
        creds.iter().map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.as_bytes().to_vec()))).collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some("bootstrap".into()), ..Default::default() },
        data: Some(data),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .expect("bootstrap secret");
    let proxy = FaultProxy::start(moto).await;
    let mut env = vec![("AWS_ENDPOINT_URL", proxy.url.clone())];
    if let Some(factor) = waits {
        proxy.wait_like_aws(factor);
        let poll = Duration::from_secs(2).mul_f64(factor).max(Duration::from_millis(10));
        env.push(("TINYSTACKS_AWS_POLL_INTERVAL", format!("{}ms", poll.as_millis())));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let op = bench.operator(system, Some(&ns.name), "5m", &env);
    op.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls_before = calls_by_service(&op.metrics());

    let link = format!("bench-full-{}", suffix());
    let network = if pattern == "PublicPrivate" {
        json!({"pattern": "PublicPrivate", "cidr": "10.20.0.0/16", "natGateways": "Single", "vpcLink": true})
    } else {
        json!({"pattern": "PrivateIsolated", "cidr": "10.30.0.0/16"})
    };
    let t0 = Instant::now();
    create(
        client,
        None,
        "AwsAccountLink",
        &link,
        json!({"accountId": account, "region": "us-east-1", "allowedNamespaces": [ns.name],
               "bootstrap": {"mode": "CloudFormation", "credentialsSecretRef": {"namespace": ns.name, "name": "bootstrap"}}}),
    )
    .await;
    create(client, Some(&ns.name), "Stack", "web", json!({"accountLinkRef": {"name": link}, "network": network})).await;
    create(
        client,
        Some(&ns.name),
        "Database",
        "orders",
        json!({"stackRef": {"name": "web"}, "deletionPolicy": "Delete"}),
    )
    .await;
    create(client, Some(&ns.name), "Bastion", "ops", json!({"stackRef": {"name": "web"}})).await;
    let links: Api<DynamicObject> = Api::all_with(client.clone(), &gvk("AwsAccountLink"));
    let stacks: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &gvk("Stack"));
    let dbs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &gvk("Database"));
    let bastions: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &gvk("Bastion"));
    let (mut link_at, mut stack_at, mut db_at, mut bastion_at) = (None, None, None, None);
    let ready = |o: Result<DynamicObject, kube::Error>| {
        o.ok().and_then(|o| serde_json::to_value(o).ok()).is_some_and(|v| is_ready(&v))
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while link_at.is_none() || stack_at.is_none() || db_at.is_none() || bastion_at.is_none() {
        assert!(Instant::now() < deadline, "{pattern}: not all Ready within 10 min");
        if link_at.is_none() && ready(links.get(&link).await) {
            link_at = Some(t0.elapsed());
        }
        if stack_at.is_none() && ready(stacks.get("web").await) {
            stack_at = Some(t0.elapsed());
        }
        if db_at.is_none() && ready(dbs.get("orders").await) {
            db_at = Some(t0.elapsed());
        }
        if bastion_at.is_none() && ready(bastions.get("ops").await) {
            bastion_at = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let to_ready = t0.elapsed();
    let t_end = t0 + to_ready;
    let calls_after = calls_by_service(&op.metrics());
    let by_service: BTreeMap<String, f64> = calls_after
        .iter()
        .map(|(k, v)| (k.clone(), v - calls_before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let timings = proxy.timings();
    let during: Vec<&Timing> = timings.iter().filter(|t| t.start >= t0 && t.start <= t_end).collect();
    let muts: Vec<&&Timing> = during.iter().filter(|t| mutating(&t.action)).collect();
    let critical: f64 = muts.iter().map(|t| t.latency.as_secs_f64()).sum();
    let recorded = proxy.waits();
    if std::env::var_os("TINYSTACKS_BENCH_TRACE").is_some() {
        for w in &recorded {
            let at = |i: Instant| i.saturating_duration_since(t0).as_secs_f64();
            let seen = w.seen.map_or("never".into(), |s| format!("{:.3}s", at(s)));
            eprintln!(
                "[trace] {pattern} wait {} {}: {:.3}s to {:.3}s, seen done at {seen}",
                w.kind,
                w.id,
                at(w.started),
                at(w.ends)
            );
        }
        // Every AWS call of the run in order: when it began after the apply, and how long it took.
        for t in &during {
            let mark = if mutating(&t.action) { "*" } else { " " };
            eprintln!(
                "[trace] {pattern} {:7.3}s +{:5.1}ms {mark} {}",
                (t.start - t0).as_secs_f64(),
                t.latency.as_secs_f64() * 1e3,
                t.action
            );
        }
    }
    // Leave the link alone from now on: later operators watch every link.
    links
        .patch(
            &link,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"tinystacks.io/paused": "true"}}})),
        )
        .await
        .expect("pause the link");
    drop(op);
    // The namespace stays: deleting it would wait on finalizers no operator removes any more.
    std::mem::forget(ns);
    FullRun {
        pattern,
        to_ready: to_ready.as_secs_f64(),
        link_at: link_at.unwrap_or_default().as_secs_f64(),
        stack_at: stack_at.unwrap_or_default().as_secs_f64(),
        db_at: db_at.unwrap_or_default().as_secs_f64(),
        bastion_at: bastion_at.unwrap_or_default().as_secs_f64(),
        calls: by_service.values().sum::<f64>() as usize,
        by_service,
        critical,
        mutations: muts.len(),
        busy: busy_time(&during),
        waits: waits.map(|factor| critical_paths(&recorded, factor)),
    }
}

/// Credentials acting in `account` on moto (as a bootstrap administrator would have).
async fn bootstrap_credentials(moto: &str, account: &str) -> Vec<(&'static str, String)> {
    use aws_config::BehaviorVersion;
    let base = aws_config::defaults(BehaviorVersion::latest()).endpoint_url(moto).load().await;
    let out = aws_sdk_sts::Client::new(&base)
        .assume_role()
        .role_arn(format!("arn:aws:iam::{account}:role/tinystacks-bench-bootstrap"))
        .role_session_name("tinystacks-bench")
        .send()
        .await
        .expect("assume a role in the benchmark's account");
    let c = out.credentials().expect("credentials");
    vec![
        ("AWS_ACCESS_KEY_ID", c.access_key_id().to_string()),
        ("AWS_SECRET_ACCESS_KEY", c.secret_access_key().to_string()),
        ("AWS_SESSION_TOKEN", c.session_token().to_string()),
    ]
}

#[test]
fn medians_and_busy_time() {
    assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    let t0 = Instant::now();
    let t = |s: u64, l: u64| Timing {
        action: "X".into(),
        start: t0 + Duration::from_millis(s),
        latency: Duration::from_millis(l),
    };
    let (a, b, c) = (t(0, 100), t(50, 100), t(300, 10));
    assert!((busy_time(&[&a, &b, &c]) - 0.16).abs() < 1e-9);
    assert!(mutating("CreateVpc") && mutating("POST /v2/vpclinks") && !mutating("DescribeVpcs"));
    assert!(mutating("RunInstances") && mutating("AddRoleToInstanceProfile") && !mutating("DescribeInstances"));
}

#[test]
fn the_critical_path_is_the_longest_chain_of_dependent_waits() {
    let t0 = Instant::now();
    let wait = |kind: &'static str| Wait { kind, id: kind.into(), started: t0, ends: t0, seen: Some(t0) };
    let made: Vec<Wait> =
        ["cloudformation:Stack", "ec2:NatGateway", "apigateway:VpcLink", "rds:DBInstance", "ec2:Instance"]
            .map(wait)
            .into();
    let c = critical_paths(&made, 1.0 / 30.0);
    // 60 s, then the VPC Link's 180 beside the NAT gateway's 90, the instance's 420, the Bastion's 20.
    assert!((c.link - 2.0).abs() < 1e-9 && (c.stack - 8.0).abs() < 1e-9, "{} {}", c.link, c.stack);
    assert!((c.db - 16.0).abs() < 1e-9 && (c.bastion - 2.0 - 20.0 / 30.0).abs() < 1e-9);
    assert!((c.all - 16.0).abs() < 1e-9);
    assert_eq!((parse_scale("1/30") * 30.0).round(), 1.0);
    assert_eq!(scale_text(parse_scale("1/30")), "1/30");
    let old = "# B\n\n## Summary against the targets\n\n| T | M | |\n|---|---|---|\n| ≤ 30 MB | 20 | met |\n| Time to Ready ≤ 1.3 × critical path (X) | 1 | missed |\n\n## One full stack: x\n\ny\n";
    let r = Results { wait_factor: 1.0 / 30.0, ..Default::default() };
    let spliced = splice_waits(old, &r);
    assert!(!spliced.contains("1.3 ×") && spliced.contains("## One full stack: x"), "{spliced}");
}
