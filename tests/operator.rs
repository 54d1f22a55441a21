//! The operator binary against the real API server: finalizers, conditions, observed
//! generation, events, ordering between kinds, pause, deletion order, skipped status writes,
//! leader election, endpoints, start-up errors and clean shutdown.

mod common;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tinystacks_operator::api::{AwsAccountLink, Bastion, Database, FINALIZER, Stack};

use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn start(ns: &TestNamespace) -> Operator {
    Operator::start(OperatorConfig {
        namespace: &ns.name,
        lease_name: "tinystacks-operator",
        resync: "2s",
        extra_args: vec![],
    })
}

/// Creates an object of kind `K` with the given spec.
async fn create<K>(api: &Api<K>, name: &str, spec: serde_json::Value)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()), "metadata": {"name": name}, "spec": spec,
    }))
    .expect("a valid object");
    api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("create {} {name}: {e}", K::kind(&())));
}

async fn link(client: &Client, allowed: &[&str]) -> String {
    let name = format!("link-{}", suffix());
    // Its bootstrap Secret never exists, so the link is never verified and these tests stay on the
    // Kubernetes side: no AWS resource is made (tests/stack.rs and others cover that side).
    let spec = json!({
        "accountId": "123456789012", "region": "us-east-1", "allowedNamespaces": allowed,
        "bootstrap": {"mode": "CloudFormation", "credentialsSecretRef": {"namespace": "default", "name": "no-such-secret"}},
    });
    create(&Api::<AwsAccountLink>::all(client.clone()), &name, spec).await;
    name
}

async fn stack(client: &Client, ns: &str, name: &str, link: &str) {
    create(&Api::<Stack>::namespaced(client.clone(), ns), name, json!({"accountLinkRef": {"name": link}})).await;
}

async fn database(client: &Client, ns: &str, name: &str, stack: &str) {
    let spec = json!({"stackRef": {"name": stack}, "deletionPolicy": "Delete"});
    create(&Api::<Database>::namespaced(client.clone(), ns), name, spec).await;
}

async fn bastion(client: &Client, ns: &str, name: &str, stack: &str) {
    create(&Api::<Bastion>::namespaced(client.clone(), ns), name, json!({"stackRef": {"name": stack}})).await;
}

#[tokio::test]
async fn dependents_wait_for_their_parents_and_deletion_goes_children_first() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "op-order").await;
    let operator = start(&ns);
    let link = link(&client, &[&ns.name]).await;
    stack(&client, &ns.name, "web", &link).await;
    database(&client, &ns.name, "orders", "web").await;
    bastion(&client, &ns.name, "ops", "web").await;

    let stacks = Api::<Stack>::namespaced(client.clone(), &ns.name);
    let databases = Api::<Database>::namespaced(client.clone(), &ns.name);
    let bastions = Api::<Bastion>::namespaced(client.clone(), &ns.name);
    let links = Api::<AwsAccountLink>::all(client.clone());

    // Every kind holds the finalizer and says what it waits for, for the current generation.
    let s = wait_condition(&stacks, "web", "Ready", "False", "WaitingForAccountLink").await;
    assert_eq!(common::condition(&s, "Reconciling").unwrap()["status"], "True");
    assert_eq!(common::condition(&s, "Stalled").unwrap()["status"], "False");
    assert_eq!(s["status"]["observedGeneration"], s["metadata"]["generation"]);
    let d = wait_condition(&databases, "orders", "Ready", "False", "WaitingForStack").await;
    assert!(common::condition(&d, "Ready").unwrap()["message"].as_str().unwrap().contains("\"web\""));
    wait_condition(&bastions, "ops", "Ready", "False", "WaitingForStack").await;
    wait_condition(&links, &link, "Stalled", "True", "BootstrapSecretMissing").await;
    for (what, finalizers) in [
        ("stack", stacks.get("web").await.unwrap().finalizers().to_vec()),
        ("database", databases.get("orders").await.unwrap().finalizers().to_vec()),
        ("bastion", bastions.get("ops").await.unwrap().finalizers().to_vec()),
        ("link", links.get(&link).await.unwrap().finalizers().to_vec()),
    ] {
        assert_eq!(finalizers, vec![FINALIZER.to_string()], "the {what}'s finalizers");
    }
    let generated = links.get(&link).await.unwrap().status.and_then(|s| s.external_id).expect("generated external ID");
    assert!(generated.len() >= 32, "external ID {generated:?} is too short");

    // A change of the spec moves observedGeneration along.
    stacks
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"tags": {"team": "a"}}})))
        .await
        .expect("patch tags");
    eventually("observedGeneration 2", WAIT, || async {
        let s = stacks.get("web").await.map_err(|e| e.to_string())?;
        let status = s.status.unwrap_or_default();
        let all = status.conditions.iter().all(|c| c.observed_generation == Some(2));
        (status.observed_generation == Some(2) && all).then_some(()).ok_or(format!("{:?}", status.observed_generation))
    })
    .await;

    // The progress is announced as Events.
    let events = event_reasons(&client, &ns.name, "orders").await;
    assert!(events.iter().any(|(t, r)| t == "Normal" && r == "WaitingForStack"), "events: {events:?}");

    // The Stack waits for its Database and Bastion; the link for its Stack.
    stacks.delete("web", &DeleteParams::default()).await.expect("delete stack");
    links.delete(&link, &DeleteParams::default()).await.expect("delete link");
    wait_condition(&stacks, "web", "Ready", "False", "DependentsExist").await;
    wait_condition(&links, &link, "Ready", "False", "DependentsExist").await;
    let message = common::condition(&serde_json::to_value(stacks.get("web").await.unwrap()).unwrap(), "Ready").unwrap();
    assert!(message["message"].as_str().unwrap().contains("Database/orders"), "{message}");
    databases.delete("orders", &DeleteParams::default()).await.expect("delete database");
    bastions.delete("ops", &DeleteParams::default()).await.expect("delete bastion");
    wait_gone(&databases, "orders").await;
    wait_gone(&bastions, "ops").await;
    wait_gone(&stacks, "web").await;
    wait_gone(&links, &link).await;
    drop(operator);
}

#[tokio::test]
async fn a_namespace_the_link_does_not_allow_stalls_until_it_is_allowed() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "op-allowed").await;
    let _operator = start(&ns);
    let link = link(&client, &["someone-else"]).await;
    stack(&client, &ns.name, "web", &link).await;
    let stacks = Api::<Stack>::namespaced(client.clone(), &ns.name);

    let s = wait_condition(&stacks, "web", "Stalled", "True", "AccountLinkNotAllowed").await;
    let message = common::condition(&s, "Stalled").unwrap()["message"].as_str().unwrap().to_string();
    assert!(message.contains(&ns.name) && message.contains("allowedNamespaces"), "{message}");
    assert_eq!(common::condition(&s, "Reconciling").unwrap()["status"], "False");
    let events = event_reasons(&client, &ns.name, "web").await;
    assert!(events.iter().any(|(t, r)| t == "Warning" && r == "AccountLinkNotAllowed"), "events: {events:?}");

    // A Stack that was never allowed made nothing in AWS: it can be deleted while still denied.
    stack(&client, &ns.name, "denied", &link).await;
    wait_condition(&stacks, "denied", "Stalled", "True", "AccountLinkNotAllowed").await;
    stacks.delete("denied", &DeleteParams::default()).await.expect("delete stack");
    wait_gone(&stacks, "denied").await;

    // Allowing the namespace wakes the Stack through the link's watch, without a spec change.
    let links = Api::<AwsAccountLink>::all(client.clone());
    links
        .patch(&link, &PatchParams::default(), &Patch::Merge(json!({"spec": {"allowedNamespaces": [ns.name]}})))
        .await
        .expect("allow namespace");
    wait_condition(&stacks, "web", "Stalled", "False", "NotStalled").await;
    stacks.delete("web", &DeleteParams::default()).await.expect("delete stack");
    wait_gone(&stacks, "web").await;
    links.delete(&link, &DeleteParams::default()).await.expect("delete link");
    wait_gone(&links, &link).await;
}

#[tokio::test]
async fn a_missing_stack_stalls_and_recovers_when_created_and_pause_is_honoured() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "op-missing").await;
    let operator = start(&ns);
    database(&client, &ns.name, "orders", "later").await;
    let databases = Api::<Database>::namespaced(client.clone(), &ns.name);
    let d = wait_condition(&databases, "orders", "Stalled", "True", "StackNotFound").await;
    assert!(common::condition(&d, "Stalled").unwrap()["message"].as_str().unwrap().contains("spec.stackRef.name"));

    let link = link(&client, &[&ns.name]).await;
    stack(&client, &ns.name, "later", &link).await;
    wait_condition(&databases, "orders", "Ready", "False", "WaitingForStack").await;

    // Paused: Ready keeps its status with reason Paused, nothing is reconciling.
    databases
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"tinystacks.io/paused": "true"}}})),
        )
        .await
        .expect("pause");
    let d = wait_condition(&databases, "orders", "Ready", "False", "Paused").await;
    assert_eq!(common::condition(&d, "Reconciling").unwrap()["status"], "False");
    databases
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"tinystacks.io/paused": null}}})),
        )
        .await
        .expect("resume");
    wait_condition(&databases, "orders", "Ready", "False", "WaitingForStack").await;

    // A status that would not change is not written: the resourceVersion holds across resyncs.
    let before = databases.get("orders").await.unwrap().resource_version();
    wait_reconciles(&operator, "Database", 2.0).await;
    let after = databases.get("orders").await.unwrap().resource_version();
    assert_eq!(before, after, "the status was rewritten although nothing changed");

    for name in ["orders"] {
        databases.delete(name, &DeleteParams::default()).await.expect("delete");
    }
    Api::<Stack>::namespaced(client.clone(), &ns.name).delete("later", &DeleteParams::default()).await.expect("delete");
    wait_gone(&Api::<Stack>::namespaced(client.clone(), &ns.name), "later").await;
    Api::<AwsAccountLink>::all(client.clone()).delete(&link, &DeleteParams::default()).await.expect("delete link");
}

#[tokio::test]
async fn objects_paused_then_deleted_are_cleaned_up_and_go() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "op-paused-delete").await;
    let _operator = start(&ns);
    let link = link(&client, &[&ns.name]).await;
    stack(&client, &ns.name, "web", &link).await;
    database(&client, &ns.name, "orders", "web").await;
    bastion(&client, &ns.name, "ops", "web").await;
    let stacks = Api::<Stack>::namespaced(client.clone(), &ns.name);
    let databases = Api::<Database>::namespaced(client.clone(), &ns.name);
    let bastions = Api::<Bastion>::namespaced(client.clone(), &ns.name);
    // Each holds the finalizer (and this install's claim) before it is paused.
    wait_condition(&stacks, "web", "Ready", "False", "WaitingForAccountLink").await;
    wait_condition(&databases, "orders", "Ready", "False", "WaitingForStack").await;
    wait_condition(&bastions, "ops", "Ready", "False", "WaitingForStack").await;
    let claim = format!("{}/tinystacks-operator", ns.name);
    let web = stacks.get("web").await.expect("stack");
    assert_eq!(web.annotations().get("tinystacks.io/claimed-by"), Some(&claim), "claimed with the finalizer");

    let pause = Patch::Merge(json!({"metadata": {"annotations": {"tinystacks.io/paused": "true"}}}));
    stacks.patch("web", &PatchParams::default(), &pause).await.expect("pause");
    databases.patch("orders", &PatchParams::default(), &pause).await.expect("pause");
    bastions.patch("ops", &PatchParams::default(), &pause).await.expect("pause");
    wait_condition(&stacks, "web", "Ready", "False", "Paused").await;
    wait_condition(&databases, "orders", "Ready", "False", "Paused").await;
    wait_condition(&bastions, "ops", "Ready", "False", "Paused").await;

    // Deleted while paused: the pause holds convergence, not a deletion; each goes, in order.
    stacks.delete("web", &DeleteParams::default()).await.expect("delete stack");
    wait_condition(&stacks, "web", "Ready", "False", "DependentsExist").await;
    databases.delete("orders", &DeleteParams::default()).await.expect("delete database");
    bastions.delete("ops", &DeleteParams::default()).await.expect("delete bastion");
    wait_gone(&databases, "orders").await;
    wait_gone(&bastions, "ops").await;
    wait_gone(&stacks, "web").await;
    Api::<AwsAccountLink>::all(client.clone()).delete(&link, &DeleteParams::default()).await.expect("delete link");
}

#[tokio::test]
async fn endpoints_leader_lease_standby_and_clean_shutdown() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "op-lease").await;
    let mut leader = start(&ns);
    let leases = Api::<Lease>::namespaced(client.clone(), &ns.name);
    let holder = |leases: Api<Lease>| async move {
        leases.get_opt("tinystacks-operator").await.ok().flatten().and_then(|l| l.spec?.holder_identity)
    };
    eventually("the first replica to hold the lease", WAIT, || async {
        (holder(leases.clone()).await.as_deref() == Some(leader.identity.as_str()))
            .then_some(())
            .ok_or("not yet".to_string())
    })
    .await;

    // Endpoints.
    eventually("/readyz", WAIT, || async {
        (leader.get("/readyz").0 == 200).then_some(()).ok_or("not ready".to_string())
    })
    .await;
    assert_eq!(leader.get("/healthz").0, 200);
    let link = link(&client, &[&ns.name]).await;
    stack(&client, &ns.name, "web", &link).await;
    let stacks = Api::<Stack>::namespaced(client.clone(), &ns.name);
    wait_condition(&stacks, "web", "Ready", "False", "WaitingForAccountLink").await;
    let (code, metrics) = leader.get("/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("tinystacks_reconciles_total{kind=\"Stack\"}"), "{metrics}");
    assert!(metrics.contains("tinystacks_reconcile_duration_seconds_bucket"), "{metrics}");

    // A second replica stands by while the first holds the lease, and takes over when it stops.
    let standby = start(&ns);
    eventually("the standby to find the lease held", WAIT, || async {
        standby.logs().contains("another replica leads; standing by").then_some(()).ok_or(standby.logs())
    })
    .await;
    assert_eq!(holder(leases.clone()).await.as_deref(), Some(leader.identity.as_str()));
    assert_eq!(standby.get("/readyz").0, 200, "a standby replica is healthy");
    let standby_metrics = standby.get("/metrics").1;
    assert!(standby_metrics.contains("tinystacks_leader 0"), "{standby_metrics}");
    let reconciled = standby_metrics.lines().filter(|l| l.starts_with("tinystacks_reconciles_total{"));
    assert!(reconciled.clone().count() == 4 && reconciled.clone().all(|l| l.ends_with(" 0")), "the standby reconciled");

    assert!(leader.terminate(), "SIGTERM ends the operator with exit code 0");
    assert!(leader.logs().contains("stopped"), "clean shutdown is logged");
    eventually("the standby to take over", WAIT, || async {
        (holder(leases.clone()).await.as_deref() == Some(standby.identity.as_str()))
            .then_some(())
            .ok_or("not yet".to_string())
    })
    .await;
    stacks.delete("web", &DeleteParams::default()).await.expect("delete stack");
    wait_gone(&stacks, "web").await;
    Api::<AwsAccountLink>::all(client.clone()).delete(&link, &DeleteParams::default()).await.expect("delete link");
    drop(standby);
}

#[test]
fn an_unreachable_api_server_is_one_clear_line_and_a_failure() {
    let dir = std::env::temp_dir().join(format!("tinystacks-kubeconfig-{}", suffix()));
    std::fs::write(
        &dir,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n",
            free_port()
        ),
    )
    .expect("kubeconfig");
    let output = Command::new(env!("CARGO_BIN_EXE_tinystacks-operator"))
        .args(["run", "--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .env("KUBECONFIG", &dir)
        .env("RUST_LOG", "off")
        .output()
        .expect("run the operator");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("cannot reach the Kubernetes API server"), "{stderr}");
}

#[test]
fn missing_crds_are_one_clear_line_and_a_failure() {
    // A second, empty control plane: the shared one has the CRDs installed.
    let state = std::env::temp_dir().join(format!("tinystacks-empty-{}", suffix()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/testenv.sh");
    let up =
        Command::new(script).arg("up").env("TINYSTACKS_STATE", &state).output().expect("start a second control plane");
    assert!(up.status.success(), "second control plane: {}", String::from_utf8_lossy(&up.stderr));
    let output = Command::new(env!("CARGO_BIN_EXE_tinystacks-operator"))
        .args(["run", "--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .env("KUBECONFIG", state.join("kubeconfig"))
        .env("RUST_LOG", "off")
        .output()
        .expect("run the operator");
    let _ = Command::new(script).arg("down").env("TINYSTACKS_STATE", &state).output();
    let _ = std::fs::remove_dir_all(&state);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("CRD for AwsAccountLink") && stderr.contains("crds"), "{stderr}");
}

/// (status, message) of a live object as a GitOps tool judges it: `kstatus` (the real kstatus
/// library, hack/kstatus, as Flux uses it) or the chart's Argo CD health check in Lua 5.1.
fn gitops_health(tool: &str, object: &serde_json::Value) -> (String, String) {
    use std::io::Write;
    let repo = env!("CARGO_MANIFEST_DIR");
    let mut cmd = match tool {
        "kstatus" => Command::new("kstatus"),
        _ => {
            let mut cmd = Command::new("lupa-python");
            cmd.arg(format!("{repo}/hack/argocd_health.py"))
                .arg(format!("{repo}/charts/tinystacks-operator/docs/argocd-health.lua"));
            cmd
        }
    };
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}; source the env file of `hack/testenv.sh up`"));
    child.stdin.take().expect("stdin").write_all(object.to_string().as_bytes()).expect("write the object");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from the helper");
    (result["status"].as_str().unwrap_or_default().into(), result["message"].as_str().unwrap_or_default().into())
}

async fn live_link(client: &Client, name: &str) -> serde_json::Value {
    serde_json::to_value(Api::<AwsAccountLink>::all(client.clone()).get(name).await.expect("get link")).expect("JSON")
}

/// Waits (up to 90 s: the link deploys its CloudFormation stack in moto) for the link's Ready=True.
async fn wait_verified(client: &Client, name: &str) -> serde_json::Value {
    eventually(&format!("{name}: Ready=True"), Duration::from_secs(90), || async {
        let link = live_link(client, name).await;
        match common::condition(&link, "Ready") {
            Some(c) if c["status"] == "True" && c["observedGeneration"] == link["metadata"]["generation"] => Ok(link),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Every line of an operator's JSON log is one flat object: no nested `fields`, no `span` or
/// `spans`; an object is named by `kind`, `namespace` and `name`, never by a per-kind key.
fn assert_log_shape(log: &str) {
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        lines += 1;
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let object = value.as_object().unwrap_or_else(|| panic!("not an object: {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(object.get(key).is_some_and(|v| v.is_string()), "no {key}: {line}");
        }
        assert!(object.get("message").is_none_or(|m| m.is_string()), "message not flat: {line}");
        for key in ["fields", "span", "spans", "stack", "link", "database", "bastion"] {
            assert!(!object.contains_key(key), "`{key}` in: {line}");
        }
        let ours = ["AwsAccountLink", "Stack", "Database", "Bastion"];
        if object.get("kind").and_then(|k| k.as_str()).is_some_and(|k| ours.contains(&k)) {
            assert!(object.get("name").is_some_and(|n| n.is_string()), "an object without its name: {line}");
        }
    }
    assert!(lines > 10, "the log has {lines} lines");
}

#[tokio::test]
async fn a_spec_change_while_paused_is_neither_current_for_kstatus_nor_healthy_for_argocd() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "op-paused").await;
    let operator = start(&ns);
    let links = Api::<AwsAccountLink>::all(client.clone());
    let name = format!("paused-{}", suffix());
    let spec = verified_link_spec(&client, &ns.name, &[&ns.name]).await;
    create(&links, &name, spec).await;
    let ready = wait_verified(&client, &name).await;
    assert_eq!(gitops_health("kstatus", &ready).0, "Current", "{ready}");
    assert_eq!(gitops_health("argocd", &ready).0, "Healthy", "{ready}");
    let applied = ready["metadata"]["generation"].as_i64().expect("generation");

    // Paused and changed in one edit: the change is not applied, and no tool may call it done.
    let change = json!({"metadata": {"annotations": {"tinystacks.io/paused": "true"}},
                        "spec": {"allowedNamespaces": [ns.name, "another"]}});
    links.patch(&name, &PatchParams::default(), &Patch::Merge(&change)).await.expect("pause and change");
    wait_condition(&links, &name, "Ready", "True", "Paused").await;
    let paused = live_link(&client, &name).await;
    assert_eq!(paused["metadata"]["generation"], applied + 1);
    assert_eq!(paused["status"]["observedGeneration"], applied, "the unapplied generation is not observed");
    let ready = common::condition(&paused, "Ready").expect("Ready");
    assert_eq!(ready["observedGeneration"], applied);
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("generation {} is not applied", applied + 1)), "{message}");
    let (status, _) = gitops_health("kstatus", &paused);
    assert_eq!(status, "InProgress", "kstatus on a paused, changed link: {paused}");
    let (status, message) = gitops_health("argocd", &paused);
    assert_eq!(status, "Suspended", "Argo CD on a paused, changed link: {paused}");
    assert!(message.contains("not applied"), "{message}");

    // Resumed: the change is applied, and the tools say so.
    let resume = json!({"metadata": {"annotations": {"tinystacks.io/paused": null}}});
    links.patch(&name, &PatchParams::default(), &Patch::Merge(&resume)).await.expect("resume");
    let resumed = wait_verified(&client, &name).await;
    assert_eq!(resumed["status"]["observedGeneration"], applied + 1);
    assert_eq!(gitops_health("kstatus", &resumed).0, "Current", "{resumed}");
    assert_eq!(gitops_health("argocd", &resumed).0, "Healthy", "{resumed}");

    links.delete(&name, &DeleteParams::default()).await.expect("delete link");
    eventually("the link deleted", Duration::from_secs(90), || async {
        match links.get_opt(&name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|l| l.map(|l| l.finalizers().to_vec())))),
        }
    })
    .await;
    assert_log_shape(&operator.logs());
}

#[tokio::test]
async fn a_link_goes_on_within_seconds_of_its_bootstrap_secret_and_other_namespaces_are_refused() {
    use k8s_openapi::api::core::v1::Secret;
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let system = TestNamespace::new(&client, "op-system").await;
    let team = TestNamespace::new(&client, "op-team").await;
    // A resync far longer than the test: only the watch of Secrets can wake the link.
    let config = OperatorConfig {
        namespace: &system.name,
        lease_name: "tinystacks-operator",
        resync: "10m",
        extra_args: vec!["--leader-election".into(), "false".into()],
    };
    // The default: bootstrap Secrets in the operator's namespace only.
    let operator = Operator::start_with_env(config, &[("TINYSTACKS_BOOTSTRAP_SECRET_NAMESPACES", "")]);
    let links = Api::<AwsAccountLink>::all(client.clone());

    // A link whose Secret is in a team's namespace: refused, though the Secret is there.
    let elsewhere = format!("elsewhere-{}", suffix());
    let team_spec = verified_link_spec(&client, &team.name, &[&team.name]).await;
    create(&links, &elsewhere, team_spec.clone()).await;
    let refused = wait_condition(&links, &elsewhere, "Stalled", "True", "BootstrapSecretNamespaceNotAllowed").await;
    let message =
        common::condition(&refused, "Stalled").expect("Stalled")["message"].as_str().unwrap_or("").to_string();
    assert!(message.contains(&format!("{}/bootstrap", team.name)), "{message}");
    assert!(message.contains(&system.name) && message.contains("--bootstrap-secret-namespaces"), "{message}");

    // A link whose Secret (in the operator's namespace) does not exist yet.
    let waiting = format!("waiting-{}", suffix());
    let mut spec = team_spec;
    spec["bootstrap"]["credentialsSecretRef"] = json!({"namespace": system.name, "name": "bootstrap"});
    create(&links, &waiting, spec).await;
    wait_condition(&links, &waiting, "Stalled", "True", "BootstrapSecretMissing").await;

    // The Secret its message asks for: the link goes on at once, not at the next resync.
    let data = Api::<Secret>::namespaced(client.clone(), &team.name).get("bootstrap").await.expect("Secret").data;
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some("bootstrap".into()), ..Default::default() },
        data,
        ..Default::default()
    };
    let created = std::time::Instant::now();
    Api::<Secret>::namespaced(client.clone(), &system.name)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the bootstrap Secret");
    eventually("the link to leave BootstrapSecretMissing", Duration::from_secs(15), || async {
        let link = live_link(&client, &waiting).await;
        match common::condition(&link, "Ready") {
            Some(c) if c["reason"] != "BootstrapSecretMissing" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let woken = created.elapsed();
    wait_verified(&client, &waiting).await;
    eprintln!(
        "the link left BootstrapSecretMissing {woken:?} after its Secret was created; Ready after {:?}",
        created.elapsed()
    );

    for name in [&elsewhere, &waiting] {
        links.delete(name, &DeleteParams::default()).await.expect("delete link");
    }
    for name in [&elsewhere, &waiting] {
        eventually(&format!("{name} deleted"), Duration::from_secs(90), || async {
            match links.get_opt(name).await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|l| l.map(|l| l.finalizers().to_vec())))),
            }
        })
        .await;
    }
    assert_log_shape(&operator.logs());
}

/// The Secrets the operator writes are watched: deleted by hand, the Database's connection Secret
/// and the Bastion's key Secret are written again within seconds, with a resync of ten minutes.
#[tokio::test]
async fn a_deleted_connection_or_key_secret_is_written_again_within_seconds() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "op-owned").await;
    let config =
        OperatorConfig { namespace: &ns.name, lease_name: "tinystacks-operator", resync: "10m", extra_args: vec![] };
    let operator = Operator::start(config);
    let links = Api::<AwsAccountLink>::all(client.clone());
    let stacks = Api::<Stack>::namespaced(client.clone(), &ns.name);
    let databases = Api::<Database>::namespaced(client.clone(), &ns.name);
    let bastions = Api::<Bastion>::namespaced(client.clone(), &ns.name);
    let link = format!("owned-{}", suffix());
    create(&links, &link, verified_link_spec(&client, &ns.name, &[&ns.name]).await).await;
    let network = json!({"cidr": "10.20.0.0/16", "natGateways": "None", "vpcLink": false});
    create(&stacks, "web", json!({"accountLinkRef": {"name": link}, "network": network})).await;
    create(&databases, "orders", json!({"stackRef": {"name": "web"}, "deletionPolicy": "Delete"})).await;
    let ssh = json!({"stackRef": {"name": "web"}, "access": "Ssh", "allowedCidrs": ["203.0.113.0/24"]});
    create(&bastions, "ops", ssh).await;
    wait_condition(&links, &link, "Ready", "True", "Verified").await;
    wait_condition(&stacks, "web", "Ready", "True", "Converged").await;
    wait_condition(&databases, "orders", "Ready", "True", "Available").await;
    wait_condition(&bastions, "ops", "Ready", "True", "Running").await;

    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns.name);
    for name in ["orders-connection", "ops-ssh-key"] {
        let before = secrets.get(name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let deleted = std::time::Instant::now();
        secrets.delete(name, &DeleteParams::default()).await.expect("delete the Secret");
        eventually(&format!("{name} written again"), WAIT, || async {
            match secrets.get_opt(name).await {
                Ok(Some(s)) if s.uid() != before.uid() && s.data.as_ref().is_some_and(|d| !d.is_empty()) => Ok(()),
                other => Err(format!("{:?}", other.map(|s| s.map(|s| s.uid())))),
            }
        })
        .await;
        eprintln!("{name} written again {:?} after its deletion", deleted.elapsed());
    }
    wait_condition(&databases, "orders", "Ready", "True", "Available").await;
    wait_condition(&bastions, "ops", "Ready", "True", "Running").await;

    databases.delete("orders", &DeleteParams::default()).await.expect("delete database");
    bastions.delete("ops", &DeleteParams::default()).await.expect("delete bastion");
    stacks.delete("web", &DeleteParams::default()).await.expect("delete stack");
    wait_gone(&databases, "orders").await;
    wait_gone(&bastions, "ops").await;
    wait_gone(&stacks, "web").await;
    links.delete(&link, &DeleteParams::default()).await.expect("delete link");
    wait_gone(&links, &link).await;
    assert_log_shape(&operator.logs());
}

/// The names of the samples a scrape's `# TYPE` families serve: counters as `_total`, histograms
/// as `_bucket`, `_sum` and `_count`.
fn served_names(scrape: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}"))),
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The operator's metric names (`tinystacks_*`, `process_*`) in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else if !word.is_empty() {
            let taken = std::mem::take(&mut word);
            if taken.starts_with("tinystacks_") || taken.starts_with("process_") {
                names.push(taken);
            }
        }
    }
    names
}

/// Every `expr` of the dashboard and the queries of its variables.
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_first_scrape_has_series_and_the_alerts_and_dashboard_name_only_served_metrics() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "op-metrics").await;
    let operator = start(&ns);
    eventually("/readyz", WAIT, || async {
        (operator.get("/readyz").0 == 200).then_some(()).ok_or("not ready".to_string())
    })
    .await;
    // The first scrape, before this operator's first reconcile could have ended.
    let (code, first) = operator.get("/metrics");
    assert_eq!(code, 200);
    let version = env!("CARGO_PKG_VERSION");
    for series in [
        format!("tinystacks_build_info{{version=\"{version}\"}} 1"),
        "tinystacks_reconciles_in_flight{kind=\"Database\"}".to_string(),
        "tinystacks_reconcile_queue_depth{kind=\"Bastion\"} 0".to_string(),
        "tinystacks_managed_objects{kind=\"Bastion\",ready=\"false\"}".to_string(),
        "tinystacks_leader ".to_string(),
        "process_resident_memory_bytes ".to_string(),
        "process_cpu_seconds_total ".to_string(),
        "process_open_fds ".to_string(),
        "process_start_time_seconds ".to_string(),
    ] {
        assert!(first.contains(&series), "the first scrape lacks {series}:\n{first}");
    }

    // An object reconciled: the leader gauge, the client's requests.
    let link = link(&client, &[&ns.name]).await;
    let links = Api::<AwsAccountLink>::all(client.clone());
    wait_condition(&links, &link, "Stalled", "True", "BootstrapSecretMissing").await;
    let (_, scrape) = operator.get("/metrics");
    assert!(scrape.contains("tinystacks_leader 1"), "{scrape}");
    assert!(scrape.contains("tinystacks_kubernetes_requests_total{method=\"WATCH\",code=\"200\"}"), "{scrape}");
    assert!(scrape.contains("tinystacks_kubernetes_requests_total{method=\"PATCH\",code=\"200\"}"), "{scrape}");
    let served = served_names(&scrape);

    let repo = env!("CARGO_MANIFEST_DIR");
    let rules = std::fs::read_to_string(format!("{repo}/charts/tinystacks-operator/files/prometheus-rules.yaml"))
        .expect("the rules");
    let rules: serde_json::Value = serde_yaml::from_str(&rules).expect("the rules are YAML");
    let mut exprs: Vec<(String, String)> = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or_default();
            exprs.push((format!("rule {name}"), rule["expr"].as_str().expect("expr").to_string()));
        }
    }
    let dashboard = std::fs::read_to_string(format!("{repo}/charts/tinystacks-operator/files/grafana-dashboard.json"))
        .expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_exprs(&dashboard, &mut queries);
    assert!(queries.len() > 15, "{queries:?}");
    exprs.extend(queries.into_iter().map(|q| ("the dashboard".to_string(), q)));
    let mut unknown = Vec::new();
    for (whose, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{whose} names no metric of the operator: {expr}");
        unknown.extend(names.into_iter().filter(|n| !served.contains(n)).map(|n| format!("{whose}: {n}")));
    }
    assert!(unknown.is_empty(), "not served by the operator: {unknown:?}\nserved: {served:?}");
    links.delete(&link, &DeleteParams::default()).await.expect("delete link");
    wait_gone(&links, &link).await;
    assert_log_shape(&operator.logs());
}

/// An AWS endpoint that accepts connections and never answers, until dropped: a reconcile that
/// calls AWS waits on it (the operator's SDK attempt timeout is 30 s).
struct SilentEndpoint {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentEndpoint {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            // Dropping the connections and the listener: the calls under way fail, later ones are
            // refused.
        });
        Self { port, stop, thread: Some(thread) }
    }

    fn close(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SilentEndpoint {
    fn drop(&mut self) {
        self.close();
    }
}

/// The value of the series `series` (name and labels, as served) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// With one worker (`--concurrency 1`) held by a reconcile waiting on AWS, the other links that are
/// due wait in the queue: `tinystacks_reconcile_queue_depth` counts them, next to the one in flight,
/// and goes back to 0 once AWS answers (here: refuses) and nothing is due.
#[tokio::test]
async fn the_queue_depth_counts_the_objects_waiting_behind_a_busy_worker() {
    let _serial = OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "op-queue").await;
    let mut aws = SilentEndpoint::start();
    let endpoint = format!("http://127.0.0.1:{}", aws.port);
    let links = Api::<AwsAccountLink>::all(client.clone());
    // Manual links: their second pass asks STS who the operator is, on the silent endpoint.
    let names: Vec<String> = (0..3).map(|i| format!("queue-{i}-{}", suffix())).collect();
    for name in &names {
        create(&links, name, json!({"accountId": "123456789012", "region": "us-east-1"})).await;
    }
    let config = OperatorConfig {
        namespace: &ns.name,
        lease_name: "tinystacks-operator",
        resync: "1m",
        extra_args: vec!["--concurrency".into(), "1".into()],
    };
    let operator = Operator::start_with_env(config, &[("AWS_ENDPOINT_URL", endpoint.as_str())]);
    let in_flight = "tinystacks_reconciles_in_flight{kind=\"AwsAccountLink\"}";
    let depth = "tinystacks_reconcile_queue_depth{kind=\"AwsAccountLink\"}";
    eventually("one link reconciling and the others waiting", WAIT, || async {
        let (_, scrape) = operator.get("/metrics");
        let existing = links.list_metadata(&Default::default()).await.map_err(|e| e.to_string())?.items.len();
        match (sample(&scrape, in_flight), sample(&scrape, depth)) {
            // Our three links at least, one of them running; never more than the links there are.
            (Some(running), Some(queued)) if running == 1.0 && queued >= 2.0 && queued < existing as f64 => Ok(()),
            other => Err(format!("in flight and queued: {other:?} of {existing} links")),
        }
    })
    .await;
    // AWS refuses from now on: each link fails fast and is requeued with a backoff, not due now.
    aws.close();
    eventually("the queue to empty", WAIT, || async {
        let (_, scrape) = operator.get("/metrics");
        match sample(&scrape, depth) {
            Some(0.0) => Ok(()),
            other => Err(format!("queued: {other:?}")),
        }
    })
    .await;
    for name in &names {
        links.delete(name, &DeleteParams::default()).await.expect("delete link");
    }
    for name in &names {
        wait_gone(&links, name).await;
    }
    assert_log_shape(&operator.logs());
}

/// promtool (built by `hack/testenv.sh` from the Go module proxy, pinned) checks the chart's rule
/// file and runs its unit tests (hack/prometheus-rules.test.yaml).
#[test]
fn the_shipped_alert_rules_pass_promtool() {
    let repo = env!("CARGO_MANIFEST_DIR");
    for args in [
        vec![
            "check".to_string(),
            "rules".into(),
            format!("{repo}/charts/tinystacks-operator/files/prometheus-rules.yaml"),
        ],
        vec!["test".to_string(), "rules".into(), format!("{repo}/hack/prometheus-rules.test.yaml")],
    ] {
        let out = Command::new("promtool").args(&args).output().unwrap_or_else(|e| {
            panic!("cannot run promtool: {e}; `hack/testenv.sh up` builds it and its env file puts it on PATH")
        });
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A fatal start-up error in JSON mode is a JSON line like the others; a text log written to a
/// file (not a terminal) holds no colour codes.
#[test]
fn start_up_errors_follow_the_log_format_and_files_get_no_colour() {
    let kubeconfig = std::env::temp_dir().join(format!("tinystacks-kubeconfig-{}", suffix()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n",
            free_port()
        ),
    )
    .expect("kubeconfig");
    let run = |format: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_tinystacks-operator"))
            .args(["run", "--metrics-addr", &format!("127.0.0.1:{}", free_port())])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .env("TINYSTACKS_LOG_FORMAT", format)
            .env_remove("NO_COLOR")
            .output()
            .expect("run the operator");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let json = run("json");
    for line in json.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{json}"));
        assert!(value.get("fields").is_none(), "{line}");
    }
    let last: serde_json::Value = serde_json::from_str(json.lines().last().expect("a line")).expect("JSON");
    assert_eq!(last["level"], "ERROR", "{json}");
    assert!(last["message"].as_str().is_some_and(|m| m.contains("cannot reach the Kubernetes API server")), "{json}");
    let text = run("text");
    assert!(!text.contains('\u{1b}'), "colour codes in a log that is not a terminal: {text:?}");
    assert!(text.lines().last().is_some_and(|l| l.starts_with("error: cannot reach")), "{text}");
}
