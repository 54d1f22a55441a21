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

async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} to be deleted"), WAIT, || async {
        match api.get_opt(name).await {
            Ok(None) => Ok(()),
            Ok(Some(o)) => Err(format!("still there, finalizers {:?}", o.finalizers())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
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
    let _operator = start(&ns);
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
    tokio::time::sleep(Duration::from_secs(5)).await;
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
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(leases.clone()).await.as_deref(), Some(leader.identity.as_str()));
    assert_eq!(standby.get("/readyz").0, 200, "a standby replica is healthy");
    assert!(!standby.get("/metrics").1.contains("tinystacks_reconciles_total{"), "the standby reconciled");

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
