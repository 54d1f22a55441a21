//! AwsAccountLink against the real API server and moto, with the real operator binary: the
//! CloudFormation bootstrap in two accounts side by side, deletion, `allowedNamespaces` without
//! any AWS call, bad input that stalls without leaking a credential, and the `Scoped` role under
//! a moto that enforces IAM policies action by action.
//!
//! moto keeps one state per account and picks the account of a request by its access key; keys
//! from `sts:AssumeRole` into `arn:aws:iam::<account>:role/...` act in that account (the role need
//! not exist). So each test takes fresh random accounts and works there.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tinystacks_operator::api::{AwsAccountLink, Bastion, Database, Stack};
use tinystacks_operator::aws::{Aws, AwsOptions};
use tinystacks_operator::runtime::metrics::Metrics;

use common::fault_proxy::FaultProxy;
use common::{
    Operator, OperatorConfig, TestNamespace, client, condition, eventually, install_crds, metric_sum, scrape, suffix,
    wait_event_repeats,
};

/// Credentials for one account of moto.
#[derive(Clone)]
struct Creds {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl Creds {
    fn from_env() -> Self {
        Self {
            access_key_id: std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "testing".into()),
            secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testing".into()),
            session_token: None,
        }
    }

    /// The values that must never show up in a log line or an Event.
    fn values(&self) -> Vec<String> {
        let mut v = vec![self.access_key_id.clone(), self.secret_access_key.clone()];
        v.extend(self.session_token.clone());
        v
    }
}

fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL (source the test environment's env file)")
}

async fn sdk(creds: &Creds, endpoint: &str) -> SdkConfig {
    let credentials =
        Credentials::new(&creds.access_key_id, &creds.secret_access_key, creds.session_token.clone(), None, "tests");
    aws_config::defaults(BehaviorVersion::latest())
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .load()
        .await
}

/// A fresh 12-digit account that no other test uses.
fn random_account() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    format!("4{:011}", rng.random_range(0..100_000_000_000u64))
}

/// Credentials that act in `account` on the shared moto.
async fn account_credentials(account: &str) -> Creds {
    let sts = aws_sdk_sts::Client::new(&sdk(&Creds::from_env(), &endpoint()).await);
    let out = sts
        .assume_role()
        .role_arn(format!("arn:aws:iam::{account}:role/tinystacks-test-bootstrap"))
        .role_session_name("tinystacks-tests")
        .send()
        .await
        .expect("assume a role in the test account");
    let c = out.credentials().expect("credentials");
    Creds {
        access_key_id: c.access_key_id().into(),
        secret_access_key: c.secret_access_key().into(),
        session_token: Some(c.session_token().into()),
    }
}

async fn put_secret(client: &Client, ns: &str, name: &str, entries: &[(&str, &str)]) {
    let data: BTreeMap<String, ByteString> =
        entries.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(data),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("tinystacks-tests").force(), &Patch::Apply(&secret))
        .await
        .expect("bootstrap Secret");
}

fn bootstrap_entries(creds: &Creds) -> Vec<(&str, &str)> {
    let mut e = vec![
        ("AWS_ACCESS_KEY_ID", creds.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", creds.secret_access_key.as_str()),
    ];
    if let Some(token) = &creds.session_token {
        e.push(("AWS_SESSION_TOKEN", token.as_str()));
    }
    e
}

/// A link that is force-deleted (finalizer removed) when the test ends, so that a failed test
/// leaves nothing for the next operator to reconcile.
struct LinkGuard(String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let name = format!("awsaccountlinks.tinystacks.io/{}", self.0);
        let _ = Command::new("kubectl")
            .args(["patch", &name, "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("kubectl")
            .args(["delete", &name, "--wait=false", "--ignore-not-found"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn create_link(client: &Client, name: &str, spec: Value) -> LinkGuard {
    let link: AwsAccountLink =
        serde_json::from_value(json!({"apiVersion": "tinystacks.io/v1alpha1", "kind": "AwsAccountLink", "metadata": {"name": name}, "spec": spec}))
            .expect("link");
    Api::<AwsAccountLink>::all(client.clone()).create(&PostParams::default(), &link).await.expect("create link");
    LinkGuard(name.to_string())
}

/// Waits for a condition with its reason; returns the object as JSON.
async fn wait_link(client: &Client, name: &str, type_: &str, status: &str, reason: &str, timeout: Duration) -> Value {
    let api = Api::<AwsAccountLink>::all(client.clone());
    eventually(&format!("{name}: {type_}={status} ({reason})"), timeout, || async {
        let obj = api.get(name).await.map_err(|e| e.to_string())?;
        let value = serde_json::to_value(&obj).map_err(|e| e.to_string())?;
        match condition(&value, type_) {
            Some(c) if c["status"] == status && c["reason"] == reason => Ok(value),
            _ => Err(format!("{:?}", value.pointer("/status/conditions"))),
        }
    })
    .await
}

async fn delete_and_wait_gone(client: &Client, name: &str, timeout: Duration) {
    let api = Api::<AwsAccountLink>::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    eventually(&format!("{name} to be gone"), timeout, || async {
        match api.get_opt(name).await {
            Ok(None) => Ok(()),
            Ok(Some(l)) => Err(format!("{:?}", l.status.map(|s| s.conditions))),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

/// The stack named `name` in the account of `creds`, if it exists.
async fn stack_status(creds: &Creds, endpoint: &str, name: &str) -> Option<String> {
    let cfn = aws_sdk_cloudformation::Client::new(&sdk(creds, endpoint).await);
    match cfn.describe_stacks().stack_name(name).send().await {
        Ok(out) => out.stacks().first().and_then(|s| s.stack_status()).map(|s| s.as_str().to_string()),
        Err(_) => None,
    }
}

/// IAM hands policy documents back URL-encoded.
fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn policy_json(document: &str) -> Value {
    serde_json::from_str(document).or_else(|_| serde_json::from_str(&url_decode(document))).expect("policy JSON")
}

/// The sum of `tinystacks_aws_requests_total` over every label set whose line contains `filter`.
fn aws_requests(operator: &Operator, filter: &str) -> f64 {
    metric_sum(&scrape(operator), "tinystacks_aws_requests_total{", filter)
}

/// Every Event note about the objects, in the namespaces where their Events go.
async fn event_notes(client: &Client, namespaces: &[&str]) -> Vec<(String, String, String)> {
    let mut notes = Vec::new();
    for ns in namespaces {
        let events = Api::<Event>::namespaced(client.clone(), ns).list(&Default::default()).await.expect("events");
        for e in events.items {
            notes.push((
                e.regarding.and_then(|r| r.name).unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            ));
        }
    }
    notes
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(!text.contains(secret.as_str()), "a bootstrap credential value appears in {what}");
    }
}

fn operator(ns: &str, env: &[(&str, &str)], extra: &[&str]) -> Operator {
    Operator::start_with_env(
        OperatorConfig {
            namespace: ns,
            lease_name: &format!("link-test-{}", suffix()),
            resync: "3s",
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        },
        env,
    )
}

#[tokio::test]
async fn cloudformation_links_in_two_accounts_become_ready_stay_apart_and_clean_up() {
    let _serial = common::OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let system = TestNamespace::new(&client, "link-system").await;
    let team = TestNamespace::new(&client, "link-team").await;
    let endpoint = endpoint();
    let (account_a, account_b) = (random_account(), random_account());
    let (creds_a, creds_b) = (account_credentials(&account_a).await, account_credentials(&account_b).await);
    put_secret(&client, &team.name, "bootstrap-a", &bootstrap_entries(&creds_a)).await;
    put_secret(&client, &team.name, "bootstrap-b", &bootstrap_entries(&creds_b)).await;
    let (name_a, name_b) = (format!("link-a-{}", suffix()), format!("link-b-{}", suffix()));
    let _guard_a = create_link(
        &client,
        &name_a,
        json!({"accountId": account_a, "region": "us-east-1", "allowedNamespaces": [team.name],
               "bootstrap": {"mode": "CloudFormation", "credentialsSecretRef": {"namespace": team.name, "name": "bootstrap-a"}}}),
    )
    .await;
    let _guard_b = create_link(
        &client,
        &name_b,
        json!({"accountId": account_b, "region": "us-east-1", "permissions": "Full", "deletionPolicy": "Retain",
               "bootstrap": {"mode": "CloudFormation", "credentialsSecretRef": {"namespace": team.name, "name": "bootstrap-b"}}}),
    )
    .await;

    let started = Instant::now();
    let op = operator(&system.name, &[], &[]);
    let a = wait_link(&client, &name_a, "Ready", "True", "Verified", Duration::from_secs(90)).await;
    let b = wait_link(&client, &name_b, "Ready", "True", "Verified", Duration::from_secs(90)).await;
    eprintln!("both links Ready {:?} after the operator started", started.elapsed());

    // Status: the role in the link's own account, verified as itself, the template's ConfigMap.
    let operator_arn = {
        let sts = aws_sdk_sts::Client::new(&sdk(&Creds::from_env(), &endpoint).await);
        let arn = sts.get_caller_identity().send().await.expect("identity").arn().unwrap_or_default().to_string();
        tinystacks_operator::aws::identity::principal_from_caller_arn(&arn).expect("principal")
    };
    for (link, account, name) in [(&a, &account_a, &name_a), (&b, &account_b, &name_b)] {
        let status = &link["status"];
        assert_eq!(status["roleArn"], format!("arn:aws:iam::{account}:role/TinyStacksRole"), "{name}");
        let identity = status["verifiedIdentity"].as_str().expect("verifiedIdentity");
        assert!(identity.starts_with(&format!("arn:aws:sts::{account}:assumed-role/TinyStacksRole/")), "{identity}");
        assert_eq!(status["externalId"].as_str().map(str::len), Some(40), "{name}: a generated external ID");
        assert_eq!(status["templateConfigMap"], format!("tinystacks-link-{name}"));
        assert!(status["cloudFormationStackId"].as_str().is_some_and(|id| id.contains(account.as_str())), "{status}");
        assert!(status["lastVerifiedTime"].is_string());
    }
    assert_ne!(a["status"]["externalId"], b["status"]["externalId"]);

    // AWS: each account has its own stack, created with the tags, and a role whose trust policy
    // names exactly the operator, with the link's external ID.
    for (creds, link, name, mode) in [(&creds_a, &a, &name_a, "Scoped"), (&creds_b, &b, &name_b, "Full")] {
        let config = sdk(creds, &endpoint).await;
        let cfn = aws_sdk_cloudformation::Client::new(&config);
        let stacks = cfn.describe_stacks().stack_name("TinyStacksRole").send().await.expect("stacks");
        assert_eq!(stacks.stacks().len(), 1, "{name}: the stack is in the link's account");
        let stack = &stacks.stacks()[0];
        assert_eq!(stack.stack_name(), Some("TinyStacksRole"));
        assert_eq!(stack.stack_status().map(|s| s.as_str()), Some("CREATE_COMPLETE"));
        let tags: BTreeMap<&str, &str> = stack.tags().iter().filter_map(|t| Some((t.key()?, t.value()?))).collect();
        assert_eq!(tags.get("tinystacks.io/managed-by"), Some(&"tinystacks-operator"));
        assert_eq!(tags.get("tinystacks.io/owner"), Some(&format!("AwsAccountLink//{name}").as_str()));
        assert_eq!(tags.get("tinystacks.io/owner-uid").copied(), link["metadata"]["uid"].as_str());
        let iam = aws_sdk_iam::Client::new(&config);
        let role = iam.get_role().role_name("TinyStacksRole").send().await.expect("role exists");
        let role = role.role().expect("role");
        let trust = policy_json(role.assume_role_policy_document().expect("trust policy"));
        let statements = trust["Statement"].as_array().expect("statements");
        assert_eq!(statements.len(), 1, "{trust}");
        assert_eq!(statements[0]["Principal"]["AWS"], operator_arn.as_str());
        assert_eq!(statements[0]["Condition"]["StringEquals"]["sts:ExternalId"], link["status"]["externalId"]);
        let policies = iam.list_role_policies().role_name("TinyStacksRole").send().await.expect("policies");
        let attached = iam.list_attached_role_policies().role_name("TinyStacksRole").send().await.expect("attached");
        assert!(
            policies.policy_names().iter().any(|p| p.contains(mode)) || !attached.attached_policies().is_empty(),
            "{name}: the {mode} permissions are on the role"
        );
    }

    // The ConfigMap holds the template the stack was created from, and `account-template` prints it.
    let cm_name = format!("tinystacks-link-{name_a}");
    let cm =
        Api::<ConfigMap>::namespaced(client.clone(), &system.name).get(&cm_name).await.expect("template ConfigMap");
    let template = cm.data.as_ref().and_then(|d| d.get("template.json")).cloned().expect("template.json");
    assert!(cm.owner_references().iter().any(|o| o.kind == "AwsAccountLink" && o.name == name_a));
    let printed = Command::new(env!("CARGO_BIN_EXE_tinystacks-operator"))
        .args(["account-template", &name_a, "--namespace", &system.name])
        .output()
        .expect("account-template");
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    assert_eq!(String::from_utf8_lossy(&printed.stdout), template);
    let deployed = aws_sdk_cloudformation::Client::new(&sdk(&creds_a, &endpoint).await)
        .get_template()
        .stack_name("TinyStacksRole")
        .send()
        .await
        .expect("deployed template");
    assert_eq!(policy_json(deployed.template_body().unwrap_or_default()), policy_json(&template));

    // Other kinds get their clients for a link from one place; each acts in its link's account.
    let links = Api::<AwsAccountLink>::all(client.clone());
    let (link_a, link_b) = (links.get(&name_a).await.expect("a"), links.get(&name_b).await.expect("b"));
    let aws = Aws::new(AwsOptions::default(), Metrics::default());
    let ec2_a: aws_sdk_ec2::Client = aws.client(&aws.for_link(&link_a, "us-east-1").await.expect("link A config"));
    let ec2_b: aws_sdk_ec2::Client = aws.client(&aws.for_link(&link_b, "us-east-1").await.expect("link B config"));
    let vpc = ec2_a.create_vpc().cidr_block("10.42.0.0/16").send().await.expect("vpc through link A");
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc id").to_string();
    let ids = |out: aws_sdk_ec2::operation::describe_vpcs::DescribeVpcsOutput| -> Vec<String> {
        out.vpcs().iter().filter_map(|v| v.vpc_id().map(str::to_string)).collect()
    };
    assert!(ids(ec2_a.describe_vpcs().send().await.expect("vpcs A")).contains(&vpc_id));
    assert!(!ids(ec2_b.describe_vpcs().send().await.expect("vpcs B")).contains(&vpc_id), "link B sees link A's VPC");
    assert_eq!(aws.cached_sessions(), 2, "one cached session per link");
    ec2_a.delete_vpc().vpc_id(&vpc_id).send().await.expect("delete vpc");

    // A switch of permissions changes the template: the stack is updated to it, and the link is
    // verified again.
    links
        .patch(&name_b, &PatchParams::default(), &Patch::Merge(json!({"spec": {"permissions": "Scoped"}})))
        .await
        .expect("switch link B to Scoped");
    let updated = eventually("link B Ready for its new generation", Duration::from_secs(60), || async {
        let l =
            serde_json::to_value(links.get(&name_b).await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        match condition(&l, "Ready") {
            Some(c) if c["status"] == "True" && c["observedGeneration"] == l["metadata"]["generation"] => Ok(l),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(updated["status"]["roleArn"], b["status"]["roleArn"]);
    let cm_b = Api::<ConfigMap>::namespaced(client.clone(), &system.name)
        .get(&format!("tinystacks-link-{name_b}"))
        .await
        .expect("template ConfigMap of link B");
    let template_b = cm_b.data.and_then(|d| d.get("template.json").cloned()).expect("template.json");
    assert!(template_b.contains("TinyStacksOperatorScoped"), "the ConfigMap holds the Scoped template");
    let deployed_b = aws_sdk_cloudformation::Client::new(&sdk(&creds_b, &endpoint).await)
        .get_template()
        .stack_name("TinyStacksRole")
        .send()
        .await
        .expect("deployed template of link B");
    assert_eq!(policy_json(deployed_b.template_body().unwrap_or_default()), policy_json(&template_b));

    // A Stack on link A, Ready; then the link and the Stack deleted at once. The link waits for
    // the Stack, and the Stack tears its network down through the link while the link is being
    // deleted; then the link removes its CloudFormation stack.
    let stacks = Api::<Stack>::namespaced(client.clone(), &team.name);
    let stack: Stack = serde_json::from_value(json!({
        "apiVersion": "tinystacks.io/v1alpha1", "kind": "Stack", "metadata": {"name": "net"},
        "spec": {"accountLinkRef": {"name": name_a}, "network": {"cidr": "10.43.0.0/16", "natGateways": "None", "vpcLink": false}},
    }))
    .expect("stack");
    stacks.create(&PostParams::default(), &stack).await.expect("create stack");
    let net = eventually("Stack net Ready", Duration::from_secs(120), || async {
        let s = stacks.get("net").await.map_err(|e| e.to_string())?;
        let v = serde_json::to_value(&s).map_err(|e| e.to_string())?;
        match condition(&v, "Ready") {
            Some(c) if c["status"] == "True" => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let net_vpc = net.status.and_then(|s| s.vpc_id).expect("the Stack's VPC");
    let deleting = Instant::now();
    links.delete(&name_a, &DeleteParams::default()).await.expect("delete link A");
    stacks.delete("net", &DeleteParams::default()).await.expect("delete stack");
    eventually("Stack net gone", Duration::from_secs(120), || async {
        match stacks.get_opt("net").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(s) => Err(format!("{:?}", s.status.map(|s| s.conditions))),
        }
    })
    .await;
    let vpcs = ec2_a.describe_vpcs().vpc_ids(&net_vpc).send().await;
    assert!(vpcs.map(|v| v.vpcs().is_empty()).unwrap_or(true), "the Stack's VPC {net_vpc} is deleted");

    // Deletion: Delete removes the stack (and so the role), Retain leaves it.
    delete_and_wait_gone(&client, &name_a, Duration::from_secs(60)).await;
    eprintln!("link A deleted at once with its Stack in {:?}", deleting.elapsed());
    assert_eq!(stack_status(&creds_a, &endpoint, "TinyStacksRole").await, None, "link A's stack is gone");
    delete_and_wait_gone(&client, &name_b, Duration::from_secs(60)).await;
    assert_eq!(
        stack_status(&creds_b, &endpoint, "TinyStacksRole").await.as_deref(),
        Some("UPDATE_COMPLETE"),
        "Retain kept it"
    );

    let notes = event_notes(&client, &["default"]).await;
    let reasons =
        |name: &str| -> Vec<String> { notes.iter().filter(|(n, _, _)| n == name).map(|(_, r, _)| r.clone()).collect() };
    assert!(reasons(&name_a).contains(&"CreatedCloudFormationStack".to_string()), "{:?}", reasons(&name_a));
    assert!(reasons(&name_a).contains(&"DeletedCloudFormationStack".to_string()), "{:?}", reasons(&name_a));
    assert!(reasons(&name_b).contains(&"CreatedCloudFormationStack".to_string()));
    assert!(reasons(&name_b).contains(&"UpdatedCloudFormationStack".to_string()), "{:?}", reasons(&name_b));
    assert!(!reasons(&name_b).contains(&"DeletedCloudFormationStack".to_string()), "Retain deleted the stack");
    let secrets: Vec<String> = creds_a.values().into_iter().chain(creds_b.values()).collect();
    assert_no_secret("the operator's log", &op.logs(), &secrets);
    for (_, _, note) in &notes {
        assert_no_secret("an Event", note, &secrets);
    }
}

#[tokio::test]
async fn a_stack_in_a_namespace_the_link_does_not_allow_stalls_without_any_aws_call() {
    let _serial = common::OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let system = TestNamespace::new(&client, "link-system").await;
    let allowed = TestNamespace::new(&client, "link-allowed").await;
    let other = TestNamespace::new(&client, "link-other").await;
    // Every request of this operator goes through the proxy, which keeps them. The cluster is
    // shared, so the operator also reconciles other tests' links: the evidence is that no request
    // names the account of this test's link. The link is not verified yet (its Secret comes
    // later), so nothing is cached for it: any call for its account would have to assume its role,
    // naming the account.
    let proxy = FaultProxy::start(&endpoint()).await;
    let account = random_account();
    let name = format!("link-ns-{}", suffix());
    let _guard = create_link(
        &client,
        &name,
        json!({"accountId": account, "region": "us-east-1", "allowedNamespaces": [allowed.name],
               "bootstrap": {"mode": "CloudFormation", "credentialsSecretRef": {"namespace": allowed.name, "name": "bootstrap"}}}),
    )
    .await;
    let op = operator(&system.name, &[("AWS_ENDPOINT_URL", proxy.url.as_str())], &[]);
    wait_link(&client, &name, "Stalled", "True", "BootstrapSecretMissing", Duration::from_secs(30)).await;

    let stacks = Api::<Stack>::namespaced(client.clone(), &other.name);
    let stack: Stack = serde_json::from_value(json!({"apiVersion": "tinystacks.io/v1alpha1", "kind": "Stack",
        "metadata": {"name": "web"}, "spec": {"accountLinkRef": {"name": name}}}))
    .expect("stack");
    stacks.create(&PostParams::default(), &stack).await.expect("create stack");
    let stalled = eventually("Stack Stalled with AccountLinkNotAllowed", Duration::from_secs(30), || async {
        let s = serde_json::to_value(stacks.get("web").await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        match condition(&s, "Stalled") {
            Some(c) if c["status"] == "True" && c["reason"] == "AccountLinkNotAllowed" => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(stalled["message"].as_str().is_some_and(|m| m.contains(&other.name) && m.contains("allowedNamespaces")));
    // Two more passes over the link (it waits for its Secret, looked at again every resync).
    wait_event_repeats(&client, "default", &name, "BootstrapSecretMissing", 2).await;
    let (_, metrics) = op.get("/metrics");
    assert!(metrics.contains("tinystacks_reconciles_total{kind=\"Stack\"}"), "the Stack was reconciled");
    assert!(aws_requests(&op, "") > 0.0, "the operator's calls are counted");
    assert_eq!(proxy.requests_mentioning(&account), 0, "a request named the link's account");

    // The detector works: once the link can proceed, its calls for the account show up.
    let creds = account_credentials(&account).await;
    put_secret(&client, &allowed.name, "bootstrap", &bootstrap_entries(&creds)).await;
    wait_link(&client, &name, "Ready", "True", "Verified", Duration::from_secs(60)).await;
    assert!(proxy.requests_mentioning(&account) > 0, "the link's AssumeRole names its account");

    // The Stack never reached AWS, so nothing of it needs cleaning up; its finalizer is lifted by
    // hand rather than left to the Stack's cleanup, which is not what this test is about.
    stacks.delete("web", &DeleteParams::default()).await.expect("delete stack");
    let _ =
        stacks.patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await;
    eventually("the Stack to be gone", Duration::from_secs(30), || async {
        match stacks.get_opt("web").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|s| s.map(|s| s.name_any())))),
        }
    })
    .await;
    delete_and_wait_gone(&client, &name, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn bad_bootstrap_input_stalls_with_a_clear_message_and_no_credential_in_logs_or_events() {
    let _serial = common::OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let system = TestNamespace::new(&client, "link-system").await;
    let team = TestNamespace::new(&client, "link-team").await;
    let endpoint = endpoint();
    let op_account = random_account();
    let creds_c = account_credentials(&op_account).await;
    let missing = format!("link-missing-{}", suffix());
    let wrong = format!("link-wrong-{}", suffix());
    let _g1 = create_link(
        &client,
        &missing,
        json!({"accountId": random_account(), "region": "us-east-1",
               "bootstrap": {"mode": "CloudFormation", "credentialsSecretRef": {"namespace": team.name, "name": "not-there"}}}),
    )
    .await;
    put_secret(&client, &team.name, "account-c", &bootstrap_entries(&creds_c)).await;
    let claimed_account = random_account();
    let _g2 = create_link(
        &client,
        &wrong,
        json!({"accountId": claimed_account, "region": "us-east-1",
               "bootstrap": {"mode": "CloudFormation", "credentialsSecretRef": {"namespace": team.name, "name": "account-c"}}}),
    )
    .await;
    let op = operator(&system.name, &[], &[]);

    // A missing Secret, then a Secret without the secret key: each names the Secret and the key.
    let l = wait_link(&client, &missing, "Stalled", "True", "BootstrapSecretMissing", Duration::from_secs(30)).await;
    let message = condition(&l, "Stalled").and_then(|c| c["message"].as_str().map(str::to_string)).unwrap_or_default();
    assert!(message.contains(&format!("{}/not-there", team.name)), "{message}");
    let partial = ("AWS_ACCESS_KEY_ID", "AKIAPARTIALSECRET123");
    put_secret(&client, &team.name, "not-there", &[partial]).await;
    let l = wait_link(&client, &missing, "Stalled", "True", "BootstrapSecretInvalid", Duration::from_secs(30)).await;
    let message = condition(&l, "Stalled").and_then(|c| c["message"].as_str().map(str::to_string)).unwrap_or_default();
    assert!(message.contains("AWS_SECRET_ACCESS_KEY") && message.contains("not-there"), "{message}");

    // Credentials of another account than spec.accountId: stalled before any stack is created.
    let l = wait_link(&client, &wrong, "Stalled", "True", "AccountMismatch", Duration::from_secs(30)).await;
    let message = condition(&l, "Stalled").and_then(|c| c["message"].as_str().map(str::to_string)).unwrap_or_default();
    assert!(message.contains(&op_account) && message.contains(&claimed_account), "{message}");
    assert_eq!(
        stack_status(&creds_c, &endpoint, "TinyStacksRole").await,
        None,
        "a stack was created in the wrong account"
    );

    // Stalled is not a crash loop: the operator looks at the link again each resync and answers.
    wait_event_repeats(&client, "default", &wrong, "AccountMismatch", 2).await;
    assert_eq!(op.get("/healthz").0, 200, "the operator no longer answers");

    let secrets: Vec<String> = creds_c.values().into_iter().chain([partial.1.to_string()]).collect();
    assert_no_secret("the operator's log", &op.logs(), &secrets);
    for (_, _, note) in event_notes(&client, &["default", &team.name]).await {
        assert_no_secret("an Event", &note, &secrets);
    }
    for link in [&missing, &wrong] {
        let value = serde_json::to_value(Api::<AwsAccountLink>::all(client.clone()).get(link).await.expect("link"))
            .expect("json");
        assert_no_secret("the link's status", &value.to_string(), &secrets);
    }
    drop(op);
}

/// A moto of its own that enforces IAM policies once set up (`INITIAL_NO_AUTH_ACTION_COUNT`),
/// stopped when dropped.
struct EnforcingMoto {
    child: Child,
    url: String,
}

impl Drop for EnforcingMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's server with three fixes. Two are to its signature check, which otherwise refuses
/// correctly signed requests of the operator's (its IAM action check is left as it is):
/// - a GET or DELETE of a REST-JSON service (API Gateway's `GetVpcLinks`, `DeleteVpcLink`, ...)
///   has no body, and moto then signs `self.data`, which for those services holds the request's
///   headers, where the client signed an empty payload: the empty body is signed instead;
/// - a form-encoded body (EC2, RDS, ...) is gone by the time moto checks it, so moto signs the
///   parsed form encoded again, with `+` for a space where the Rust SDK sent `%20` (e.g. a
///   security group's description): when the `+` form does not match, the `%20` one is tried.
///
/// The signature is still checked, with the secret of the key the request names.
///
/// The third is the resource an IAM request is authorized against. moto uses the ARN of the role
/// the request names if it exists, and `*` otherwise (and always for instance profiles), which no
/// path-scoped statement matches. IAM uses the ARN of the entity: for a `Create*`, under the
/// `Path` the request gives; for any other call on one that does not exist, at the root path
/// (it cannot know another); and for a call naming an instance profile, the profile's.
const MOTO_FIXES: &str = r#"
import sys
from urllib.parse import quote, urlencode
from moto.iam import access_control as ac
original = ac.IAMRequestBase._create_aws_request
def create_aws_request(self):
    request = original(self)
    if not self._body and self._method in ("GET", "HEAD", "DELETE"):
        request.data = b""
    elif getattr(self, "percent_encoded", False):
        pairs = [(k, v) for k, vs in self._data.items() for v in (vs if isinstance(vs, list) else [vs])]
        request.data = urlencode(pairs, quote_via=quote).encode()
    return request
def check_signature(self):
    given = self._get_string_between("Signature=", ",", self._headers["Authorization"])
    if self._calculate_signature() == given:
        return
    if not self._body and self._method == "POST":
        self.percent_encoded = True
        if self._calculate_signature() == given:
            return
    self._raise_signature_does_not_match()
ac.IAMRequestBase._create_aws_request = create_aws_request
ac.IAMRequestBase.check_signature = check_signature
from moto.iam.exceptions import NotFoundException
from moto.iam.responses import IamResponse
def determine_resource(self):
    path = self.data.get("Path", ["/"])[0] if self._get_action().startswith("Create") else "/"
    for key, kind, find in (("InstanceProfileName", "instance-profile", self.backend.get_instance_profile),
                            ("RoleName", "role", self.backend.get_role)):
        if key in self.data:
            name = self.data[key][0]
            try:
                return find(name).arn
            except NotFoundException:
                return f"arn:aws:iam::{self.current_account}:{kind}{path}{name}"
    return "*"
IamResponse._determine_resource = determine_resource
from moto.server import main
sys.exit(main(sys.argv[1:]))
"#;

impl EnforcingMoto {
    /// Starts moto with enforcement deferred (a count it never reaches during set-up); `enforce`
    /// switches it on through moto's own `/moto-api/reset-auth`.
    fn start() -> Self {
        let server = std::env::var("TINYSTACKS_MOTO_SERVER").unwrap_or_else(|_| {
            let cache = std::env::var("XDG_CACHE_HOME")
                .unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap_or_default()));
            format!("{cache}/tinystacks-operator/moto-5.2.5/bin/moto_server")
        });
        // The virtualenv's interpreter, next to its `moto_server` script.
        let python = std::path::Path::new(&server).with_file_name("python3");
        let port = common::free_port();
        let child = Command::new(&python)
            .args(["-c", MOTO_FIXES, "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "1000000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start moto with {}: {e}", python.display()));
        let moto = Self { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while common::http_get(port, "/moto-api/").0 != 200 {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        moto
    }

    fn enforce(&self) {
        let port: u16 = self.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("moto");
        use std::io::{Read, Write};
        let request =
            "POST /moto-api/reset-auth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\n0";
        stream.write_all(request.as_bytes()).expect("reset-auth");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        assert!(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"), "{response}");
    }
}

/// An IAM user with one inline policy and an access key, made before enforcement starts.
async fn iam_user(iam: &aws_sdk_iam::Client, name: &str, actions: Value) -> Creds {
    iam.create_user().user_name(name).send().await.expect("user");
    let policy =
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]});
    iam.put_user_policy()
        .user_name(name)
        .policy_name("p")
        .policy_document(policy.to_string())
        .send()
        .await
        .expect("policy");
    let key = iam.create_access_key().user_name(name).send().await.expect("key");
    let key = key.access_key().expect("access key");
    Creds {
        access_key_id: key.access_key_id().into(),
        secret_access_key: key.secret_access_key().into(),
        session_token: None,
    }
}

async fn put_role_policy(iam: &aws_sdk_iam::Client, name: &str, document: &Value) {
    iam.put_role_policy()
        .role_name("TinyStacksRole")
        .policy_name(name)
        .policy_document(document.to_string())
        .send()
        .await
        .expect("put role policy");
}

/// The `Scoped` role in an IAM-enforcing moto of its own, an operator that reaches that moto only
/// by assuming the role, and a link to it, Ready.
struct ScopedLink {
    op: Operator,
    /// IAM as the administrator who deployed the role (may do anything).
    admin: aws_sdk_iam::Client,
    /// The administrator's SDK configuration, to look at what the operator left in moto.
    admin_sdk: SdkConfig,
    name: String,
    /// The role's policies as deployed: name and document.
    policies: Vec<(String, Value)>,
    /// The `Scoped` policy as rendered, before `as_moto_checks`.
    rendered: Value,
    /// Every credential value the test knows, none of which may show up anywhere.
    secrets: Vec<String>,
    _system: TestNamespace,
    _guard: LinkGuard,
    _moto: EnforcingMoto,
}

impl ScopedLink {
    async fn start(client: &Client, allowed_namespaces: &[&str]) -> Self {
        let system = TestNamespace::new(client, "link-system").await;
        let moto = EnforcingMoto::start();
        let setup = sdk(&Creds::from_env(), &moto.url).await;
        let iam = aws_sdk_iam::Client::new(&setup);
        // The operator may only assume roles; the administrator, who deploys the role, anything.
        let operator_creds = iam_user(&iam, "tinystacks-operator", json!(["sts:AssumeRole"])).await;
        let bootstrap = iam_user(&iam, "administrator", json!("*")).await;
        moto.enforce();
        let unknown = aws_sdk_iam::Client::new(&setup).list_users().send().await;
        assert!(unknown.is_err(), "moto does not enforce IAM: an unknown key was accepted");

        let name = format!("link-scoped-{}", suffix());
        // Manual mode, the person deploying the role being the bootstrap administrator: moto
        // re-encodes a signed request's form body to check its signature and gets a different body
        // for values with spaces, such as a CloudFormation template, so an unpatched moto refuses
        // CreateStack's signature (see `MOTO_FIXES`); deploying the role by hand keeps this
        // to the operator's own calls. The link is in the operator's own account: moto checks a
        // trust policy (principal and sts:ExternalId) only within an account.
        let guard = create_link(
            client,
            &name,
            json!({"accountId": "123456789012", "region": "us-east-1", "permissions": "Scoped",
                   "allowedNamespaces": allowed_namespaces}),
        )
        .await;
        let env = [
            ("AWS_ENDPOINT_URL", moto.url.as_str()),
            ("AWS_ACCESS_KEY_ID", operator_creds.access_key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", operator_creds.secret_access_key.as_str()),
        ];
        let op = operator(&system.name, &env, &[]);
        let admin_sdk = sdk(&bootstrap, &moto.url).await;
        let admin = aws_sdk_iam::Client::new(&admin_sdk);

        // Deploy what the rendered template holds: the role with its trust policy and its Scoped
        // policy, as rendered (the boundary policy's Ref resolved to its ARN) and read the way moto
        // reads policies (see `as_moto_checks`).
        let cm_name = format!("tinystacks-link-{name}");
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &system.name);
        let template: Value = eventually("the template ConfigMap", Duration::from_secs(30), || async {
            let cm = cms.get_opt(&cm_name).await.map_err(|e| e.to_string())?.ok_or("no ConfigMap yet")?;
            let text = cm.data.and_then(|d| d.get("template.json").cloned()).ok_or("no template")?;
            serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())
        })
        .await;
        let role = &template["Resources"]["Role"]["Properties"];
        let trust = role["AssumeRolePolicyDocument"].clone();
        assert_eq!(trust["Statement"][0]["Principal"]["AWS"], "arn:aws:iam::123456789012:user/tinystacks-operator");
        // The external ID in the first template a person could deploy is the one the link keeps:
        // a pass that read the link from before its own status write must not make a second one.
        let first_id = trust["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"].clone();
        let links = Api::<AwsAccountLink>::all(client.clone());
        let kept = eventually("the link's status to name the template", Duration::from_secs(30), || async {
            let link = links.get(&name).await.map_err(|e| e.to_string())?;
            let status = link.status.ok_or("no status yet")?;
            status.template_config_map.as_ref().ok_or("no template ConfigMap in status yet")?;
            status.external_id.ok_or_else(|| "no external ID in status".to_string())
        })
        .await;
        assert_eq!(json!(kept), first_id, "the external ID changed after the template was written");
        let inline = role["Policies"][0].clone();
        let policy_name =
            inline["PolicyName"].as_str().expect("the Scoped permissions are one inline policy").to_string();
        let boundary = "arn:aws:iam::123456789012:policy/tinystacks/TinyStacksRole-BastionBoundary";
        let rendered: Value = serde_json::from_str(
            &inline["PolicyDocument"].to_string().replace(r#"{"Ref":"BastionBoundary"}"#, &format!("{boundary:?}")),
        )
        .expect("policy");
        let document = as_moto_checks(&rendered);
        // The permissions boundary the stack creates for the bastions' roles.
        let boundary_policy = &template["Resources"]["BastionBoundary"]["Properties"];
        admin
            .create_policy()
            .policy_name(boundary_policy["ManagedPolicyName"].as_str().expect("boundary name"))
            .path(boundary_policy["Path"].as_str().expect("boundary path"))
            .policy_document(boundary_policy["PolicyDocument"].to_string())
            .send()
            .await
            .expect("create the boundary policy");
        admin
            .create_role()
            .role_name("TinyStacksRole")
            .assume_role_policy_document(trust.to_string())
            .send()
            .await
            .expect("create the role");
        put_role_policy(&admin, &policy_name, &document).await;
        let policies = vec![(policy_name.clone(), document.clone())];
        let ready = wait_link(client, &name, "Ready", "True", "Verified", Duration::from_secs(60)).await;
        let identity = ready["status"]["verifiedIdentity"].as_str().unwrap_or_default().to_string();
        assert!(identity.starts_with("arn:aws:sts::123456789012:assumed-role/TinyStacksRole/"), "{identity}");
        assert!(aws_requests(&op, "operation=\"AssumeRole\",outcome=\"success\"") >= 1.0);
        assert!(aws_requests(&op, "operation=\"DescribeAvailabilityZones\",outcome=\"success\"") >= 1.0);
        let secrets = operator_creds.values().into_iter().chain(bootstrap.values()).collect();
        Self { op, admin, admin_sdk, name, policies, rendered, secrets, _system: system, _guard: guard, _moto: moto }
    }

    /// Puts the role's policies back as deployed, less `without` if given.
    async fn put_policies(&self, without: Option<&str>) {
        for (policy, document) in &self.policies {
            let mut reduced = document.clone();
            for statement in reduced["Statement"].as_array_mut().into_iter().flatten() {
                if let Some(actions) = statement["Action"].as_array_mut() {
                    actions.retain(|a| Some(a.as_str().unwrap_or_default()) != without);
                }
            }
            put_role_policy(&self.admin, policy, &reduced).await;
        }
    }

    /// Every AWS call the operator had refused, with how often: `tinystacks_aws_requests_total`
    /// lines with `outcome="denied"` (an AccessDenied, or a signature moto rejected).
    fn denied(&self) -> Vec<String> {
        let body = self.op.get("/metrics").1;
        body.lines()
            .filter(|l| l.starts_with("tinystacks_aws_requests_total{") && l.contains("outcome=\"denied\""))
            .map(str::to_string)
            .collect()
    }
}

/// The rendered policy restated in the terms moto 5.2.5 checks, which differ from IAM's in three
/// ways. Each rewrite grants moto's name of a call only where the statement already grants IAM's
/// name of the same call, so nothing the rendered policy lacks is granted here.
///
/// - moto knows the resource of a request only for IAM, STS and SQS; every other request is
///   checked against `*`, which a statement narrowed to ARNs (`secret:tinystacks/*`,
///   `/vpclinks/*`) never matches. Such statements get `Resource: "*"`: moto cannot check the
///   ARNs; the lifecycle test matches them against the real names (`allows_on`).
/// - moto names an API Gateway request after its operation (`apigateway:CreateVpcLink`); IAM
///   after its HTTP verb (`apigateway:POST`). Each verb the policy grants also grants the VPC-link
///   operations IAM authorizes with that verb.
/// - moto names a Resource Groups Tagging request after the signing name, `tagging:`, where IAM
///   has `tag:`.
///
/// Conditions stay as rendered, and moto passes them all: for an identity policy it has no
/// request context to compare a condition key with (`_check_conditions` with no incoming
/// values), so the `tinystacks.io/managed-by` tag conditions, `ec2:CreateAction`,
/// `iam:PermissionsBoundary` and `iam:PassedToService` are not checked by this test either. Nor
/// are the actions AWS authorizes besides the one called: tagging at creation
/// (`ec2:CreateTags`, `kms:TagResource`, `secretsmanager:TagResource`,
/// `rds:AddTagsToResource`), Secrets Manager's use of the key (`kms:GenerateDataKey`,
/// `kms:Decrypt`), `iam:CreateServiceLinkedRole`.
fn as_moto_checks(policy: &Value) -> Value {
    const APIGATEWAY_VERBS: &[(&str, &[&str])] = &[
        ("apigateway:POST", &["apigateway:CreateVpcLink", "apigateway:TagResource"]),
        ("apigateway:GET", &["apigateway:GetVpcLinks", "apigateway:GetVpcLink", "apigateway:GetTags"]),
        ("apigateway:PATCH", &["apigateway:UpdateVpcLink"]),
        ("apigateway:DELETE", &["apigateway:DeleteVpcLink", "apigateway:UntagResource"]),
    ];
    let mut policy = policy.clone();
    for statement in policy["Statement"].as_array_mut().into_iter().flatten() {
        let actions: Vec<String> = match &statement["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().filter_map(|a| a.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        let moto_knows_resources = actions.iter().all(|a| ["iam:", "sts:", "sqs:"].iter().any(|p| a.starts_with(p)));
        if !moto_knows_resources {
            statement["Resource"] = json!("*");
        }
        let mut translated = actions.clone();
        for action in &actions {
            if let Some((_, operations)) = APIGATEWAY_VERBS.iter().find(|(verb, _)| verb == action) {
                translated.extend(operations.iter().map(|o| o.to_string()));
            }
            if let Some(rest) = action.strip_prefix("tag:") {
                translated.push(format!("tagging:{rest}"));
            }
        }
        statement["Action"] = json!(translated);
    }
    policy
}

/// Whether a policy allows `action` on `arn`, judging actions and resources only: the check of
/// the rendered ARNs that moto cannot make (see `as_moto_checks`).
fn allows_on(policy: &Value, action: &str, arn: &str) -> bool {
    let strings = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        }
    };
    policy["Statement"].as_array().into_iter().flatten().any(|statement| {
        statement["Effect"] == "Allow"
            && strings(&statement["Action"]).iter().any(|a| glob(a, action))
            && strings(&statement["Resource"]).iter().any(|r| glob(r, arn))
    })
}

/// IAM's wildcard match: `*` for any run of characters, `?` for one.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[tokio::test]
async fn scoped_role_passes_enforced_iam_and_stalls_naming_a_removed_action_or_a_foreign_external_id() {
    let _serial = common::OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let link = ScopedLink::start(&client, &[]).await;
    let (name, op, admin) = (&link.name, &link.op, &link.admin);

    // Take one needed action out of the role's policy: Stalled, naming the action.
    let removed = "ec2:DescribeAvailabilityZones";
    link.put_policies(Some(removed)).await;
    let stalled = wait_link(&client, name, "Stalled", "True", "AccessDenied", Duration::from_secs(30)).await;
    let message =
        condition(&stalled, "Stalled").and_then(|c| c["message"].as_str().map(str::to_string)).unwrap_or_default();
    assert!(message.contains(removed), "{message}");
    assert!(aws_requests(op, "operation=\"DescribeAvailabilityZones\",outcome=\"denied\"") >= 1.0);

    // Put it back: Ready again at the next resync, no restart needed.
    link.put_policies(None).await;
    wait_link(&client, name, "Ready", "True", "Verified", Duration::from_secs(30)).await;

    // A trust policy that expects another external ID refuses the operator: Stalled, and the
    // message says what the trust policy must contain.
    let role = admin.get_role().role_name("TinyStacksRole").send().await.expect("role");
    let mut trust = policy_json(role.role().and_then(|r| r.assume_role_policy_document()).expect("trust"));
    trust["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"] = json!("an-external-id-of-someone-else");
    admin
        .update_assume_role_policy()
        .role_name("TinyStacksRole")
        .policy_document(trust.to_string())
        .send()
        .await
        .expect("update trust policy");
    let denied = wait_link(&client, name, "Stalled", "True", "AssumeRoleDenied", Duration::from_secs(30)).await;
    let message =
        condition(&denied, "Stalled").and_then(|c| c["message"].as_str().map(str::to_string)).unwrap_or_default();
    assert!(
        message.contains("arn:aws:iam::123456789012:role/TinyStacksRole") && message.contains("sts:ExternalId"),
        "{message}"
    );

    // The operator's own keys stay out of its log as well.
    let secrets = &link.secrets;
    assert_no_secret("the operator's log", &op.logs(), secrets);
    for (_, _, note) in event_notes(&client, &["default"]).await {
        assert_no_secret("an Event", &note, secrets);
    }
    delete_and_wait_gone(&client, name, Duration::from_secs(30)).await;
}

/// One object of a lifecycle run through the `Scoped` role: kind, name and spec. Any kind with a
/// `Ready` condition fits, so a new kind joins the run as one more entry of the list.
struct Workload {
    resource: ApiResource,
    name: &'static str,
    spec: Value,
}

impl Workload {
    fn of<K: kube::Resource<DynamicType = ()>>(name: &'static str, spec: Value) -> Self {
        Self { resource: ApiResource::erase::<K>(&()), name, spec }
    }

    fn what(&self) -> String {
        format!("{} {}", self.resource.kind, self.name)
    }

    fn api(&self, client: &Client, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), ns, &self.resource)
    }

    async fn create(&self, client: &Client, ns: &str) {
        let object = DynamicObject::new(self.name, &self.resource).data(json!({"spec": self.spec}));
        self.api(client, ns)
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("create {}: {e}", self.what()));
    }

    /// Waits until `Ready=True` describes the current generation; returns the object's UID. The
    /// operator's denied calls, if any, are what a timeout reports besides the condition.
    async fn wait_ready(&self, client: &Client, ns: &str, link: &ScopedLink, timeout: Duration) -> String {
        let api = self.api(client, ns);
        eventually(&format!("{} Ready", self.what()), timeout, || async {
            let object = api.get(self.name).await.map_err(|e| e.to_string())?;
            let value = serde_json::to_value(&object).map_err(|e| e.to_string())?;
            match condition(&value, "Ready") {
                Some(c) if c["status"] == "True" && c["observedGeneration"] == value["metadata"]["generation"] => {
                    Ok(object.uid().expect("uid"))
                }
                other => Err(format!("{other:?}; denied: {:?}", link.denied())),
            }
        })
        .await
    }

    /// Waits until the object is `Stalled` on a denied call; returns the condition's message.
    async fn wait_access_denied(&self, client: &Client, ns: &str, timeout: Duration) -> String {
        let api = self.api(client, ns);
        eventually(&format!("{} Stalled (AccessDenied)", self.what()), timeout, || async {
            let object = api.get(self.name).await.map_err(|e| e.to_string())?;
            let value = serde_json::to_value(&object).map_err(|e| e.to_string())?;
            match condition(&value, "Stalled") {
                Some(c) if c["status"] == "True" && c["reason"] == "AccessDenied" => {
                    Ok(c["message"].as_str().unwrap_or_default().to_string())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    async fn delete(&self, client: &Client, ns: &str) {
        self.api(client, ns)
            .delete(self.name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete {}: {e}", self.what()));
    }

    async fn wait_gone(&self, client: &Client, ns: &str, link: &ScopedLink, timeout: Duration) {
        let api = self.api(client, ns);
        eventually(&format!("{} gone", self.what()), timeout, || async {
            match api.get_opt(self.name).await {
                Ok(None) => Ok(()),
                Ok(Some(o)) => Err(format!("{:?}; denied: {:?}", o.data.pointer("/status/conditions"), link.denied())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }
}

/// Everything in moto's account that carries one of `uids` in its owner-UID tag, as
/// (kind, ID, tags); deleted NAT gateways and VPC endpoints, and KMS keys pending deletion (the
/// most a key can be deleted), left out.
async fn owned_resources(aws: &SdkConfig, uids: &[String]) -> Vec<(&'static str, String, BTreeMap<String, String>)> {
    use aws_sdk_ec2::types::Filter;
    const UID_TAG: &str = "tinystacks.io/owner-uid";
    let ec2 = aws_sdk_ec2::Client::new(aws);
    let f = || Filter::builder().name(format!("tag:{UID_TAG}")).set_values(Some(uids.to_vec())).build();
    let ec2_tags = |tags: &[aws_sdk_ec2::types::Tag]| -> BTreeMap<String, String> {
        tags.iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect()
    };
    let mut found = Vec::new();
    for v in ec2.describe_vpcs().filters(f()).send().await.expect("vpcs").vpcs() {
        found.push(("vpc", v.vpc_id().unwrap_or_default().to_string(), ec2_tags(v.tags())));
    }
    for s in ec2.describe_subnets().filters(f()).send().await.expect("subnets").subnets() {
        found.push(("subnet", s.subnet_id().unwrap_or_default().to_string(), ec2_tags(s.tags())));
    }
    for t in ec2.describe_route_tables().filters(f()).send().await.expect("route tables").route_tables() {
        found.push(("route table", t.route_table_id().unwrap_or_default().to_string(), ec2_tags(t.tags())));
    }
    for g in ec2.describe_internet_gateways().filters(f()).send().await.expect("igws").internet_gateways() {
        found.push(("internet gateway", g.internet_gateway_id().unwrap_or_default().to_string(), ec2_tags(g.tags())));
    }
    for a in ec2.describe_addresses().filters(f()).send().await.expect("eips").addresses() {
        found.push(("elastic ip", a.allocation_id().unwrap_or_default().to_string(), ec2_tags(a.tags())));
    }
    for g in ec2.describe_security_groups().filters(f()).send().await.expect("sgs").security_groups() {
        found.push(("security group", g.group_id().unwrap_or_default().to_string(), ec2_tags(g.tags())));
    }
    // moto ignores filters on NAT gateways.
    for n in ec2.describe_nat_gateways().send().await.expect("nats").nat_gateways() {
        let tags = ec2_tags(n.tags());
        if tags.get(UID_TAG).is_some_and(|u| uids.contains(u)) && n.state().is_none_or(|s| s.as_str() != "deleted") {
            found.push(("nat gateway", n.nat_gateway_id().unwrap_or_default().to_string(), tags));
        }
    }
    for e in ec2.describe_vpc_endpoints().filters(f()).send().await.expect("endpoints").vpc_endpoints() {
        if e.state().is_none_or(|s| !s.as_str().eq_ignore_ascii_case("deleted")) {
            found.push(("vpc endpoint", e.vpc_endpoint_id().unwrap_or_default().to_string(), ec2_tags(e.tags())));
        }
    }
    for r in ec2.describe_instances().filters(f()).send().await.expect("instances").reservations() {
        for i in r.instances() {
            if i.state().and_then(|s| s.name()).is_none_or(|s| s.as_str() != "terminated") {
                found.push(("instance", i.instance_id().unwrap_or_default().to_string(), ec2_tags(i.tags())));
            }
        }
    }
    for k in ec2.describe_key_pairs().filters(f()).send().await.expect("key pairs").key_pairs() {
        found.push(("key pair", k.key_name().unwrap_or_default().to_string(), ec2_tags(k.tags())));
    }
    let iam = aws_sdk_iam::Client::new(aws);
    let iam_tags = |tags: &[aws_sdk_iam::types::Tag]| -> BTreeMap<String, String> {
        tags.iter().map(|t| (t.key().to_string(), t.value().to_string())).collect()
    };
    for r in iam.list_roles().send().await.expect("roles").roles() {
        let role = iam.get_role().role_name(r.role_name()).send().await.expect("role");
        let tags = iam_tags(role.role().map(|r| r.tags()).unwrap_or_default());
        if tags.get(UID_TAG).is_some_and(|u| uids.contains(u)) {
            found.push(("iam role", r.role_name().to_string(), tags));
        }
    }
    for p in iam.list_instance_profiles().send().await.expect("instance profiles").instance_profiles() {
        let tags = iam_tags(p.tags());
        if tags.get(UID_TAG).is_some_and(|u| uids.contains(u)) {
            found.push(("instance profile", p.instance_profile_name().to_string(), tags));
        }
    }
    let apigw = aws_sdk_apigatewayv2::Client::new(aws);
    for l in apigw.get_vpc_links().send().await.expect("vpc links").items() {
        let tags: BTreeMap<String, String> = l.tags().cloned().unwrap_or_default().into_iter().collect();
        if tags.get(UID_TAG).is_some_and(|u| uids.contains(u)) {
            found.push(("vpc link", l.vpc_link_id().unwrap_or_default().to_string(), tags));
        }
    }
    let rds = aws_sdk_rds::Client::new(aws);
    let rds_tags = |tags: &[aws_sdk_rds::types::Tag]| -> BTreeMap<String, String> {
        tags.iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect()
    };
    for i in rds.describe_db_instances().send().await.expect("db instances").db_instances() {
        let tags = rds_tags(i.tag_list());
        if tags.get(UID_TAG).is_some_and(|u| uids.contains(u)) {
            found.push(("db instance", i.db_instance_identifier().unwrap_or_default().to_string(), tags));
        }
    }
    for g in rds.describe_db_subnet_groups().send().await.expect("db subnet groups").db_subnet_groups() {
        let arn = g.db_subnet_group_arn().unwrap_or_default();
        let listed = rds.list_tags_for_resource().resource_name(arn).send().await.expect("subnet group tags");
        let tags = rds_tags(listed.tag_list());
        if tags.get(UID_TAG).is_some_and(|u| uids.contains(u)) {
            found.push(("db subnet group", g.db_subnet_group_name().unwrap_or_default().to_string(), tags));
        }
    }
    let secrets = aws_sdk_secretsmanager::Client::new(aws);
    for s in secrets.list_secrets().send().await.expect("secrets").secret_list() {
        let tags: BTreeMap<String, String> =
            s.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect();
        if tags.get(UID_TAG).is_some_and(|u| uids.contains(u)) {
            found.push(("secret", s.name().unwrap_or_default().to_string(), tags));
        }
    }
    let kms = aws_sdk_kms::Client::new(aws);
    for k in kms.list_keys().send().await.expect("keys").keys() {
        let id = k.key_id().unwrap_or_default();
        let meta = kms.describe_key().key_id(id).send().await.expect("describe key");
        if meta.key_metadata().and_then(|m| m.key_state()).is_some_and(|s| s.as_str() == "PendingDeletion") {
            continue;
        }
        let listed = kms.list_resource_tags().key_id(id).send().await.expect("key tags");
        let tags: BTreeMap<String, String> =
            listed.tags().iter().map(|t| (t.tag_key().to_string(), t.tag_value().to_string())).collect();
        if tags.get(UID_TAG).is_some_and(|u| uids.contains(u)) {
            found.push(("kms key", id.to_string(), tags));
        }
    }
    found
}

#[tokio::test]
async fn scoped_role_runs_every_kinds_lifecycle_with_nothing_denied() {
    let _serial = common::OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let team = TestNamespace::new(&client, "scoped-team").await;
    let link = ScopedLink::start(&client, &[&team.name]).await;
    let ns = team.name.as_str();
    let link_ref = json!({"name": link.name});
    // Everything the operator manages, in dependency order: each network pattern with the most
    // AWS operations it has (NAT, VPC link; VPC endpoints), a Database with its secret and key
    // on each, and a Bastion of each access mode (role, instance profile, group, instance; the
    // SSH one with its imported key pair).
    let workloads = [
        Workload::of::<Stack>(
            "web",
            json!({"accountLinkRef": link_ref, "network": {"pattern": "PublicPrivate", "cidr": "10.20.0.0/16",
                   "natGateways": "Single", "vpcLink": true}}),
        ),
        Workload::of::<Stack>(
            "isolated",
            json!({"accountLinkRef": link_ref, "network": {"pattern": "PrivateIsolated", "cidr": "10.30.0.0/16",
                   "vpcLink": true}}),
        ),
        Workload::of::<Database>("orders", json!({"stackRef": {"name": "web"}, "deletionPolicy": "Delete"})),
        Workload::of::<Database>("ledger", json!({"stackRef": {"name": "isolated"}, "deletionPolicy": "Delete"})),
        Workload::of::<Bastion>("ops", json!({"stackRef": {"name": "isolated"}, "access": "Ssm"})),
        Workload::of::<Bastion>(
            "jump",
            json!({"stackRef": {"name": "web"}, "access": "Ssh", "allowedCidrs": ["203.0.113.0/24"]}),
        ),
    ];

    // Created together (a Database waits for its Stack), all Ready, with nothing denied.
    let started = Instant::now();
    for w in &workloads {
        w.create(&client, ns).await;
    }
    let mut uids = Vec::new();
    for w in &workloads {
        uids.push(w.wait_ready(&client, ns, &link, Duration::from_secs(120)).await);
    }
    eprintln!("all Ready {:?} after creation", started.elapsed());
    assert_eq!(link.denied(), Vec::<String>::new(), "denied on the way to Ready");
    // The calls went through the role and succeeded: one of each service's creations.
    for operation in [
        "CreateVpc",
        "CreateSubnet",
        "CreateInternetGateway",
        "AllocateAddress",
        "CreateNatGateway",
        "CreateVpcEndpoint",
        "CreateSecurityGroup",
        "AuthorizeSecurityGroupIngress",
        "CreateVpcLink",
        "CreateKey",
        "CreateAlias",
        "CreateDBSubnetGroup",
        "CreateDBInstance",
        "GetRandomPassword",
        "CreateSecret",
        "CreateRole",
        "PutRolePolicy",
        "CreateInstanceProfile",
        "AddRoleToInstanceProfile",
        "ImportKeyPair",
        "RunInstances",
    ] {
        let filter = format!("operation=\"{operation}\",outcome=\"success\"");
        assert!(aws_requests(&link.op, &filter) >= 1.0, "no successful {operation}");
    }
    // What IAM's conditions would check and moto does not (see `as_moto_checks`): everything
    // the run made carries the operator's tag, which the `Scoped` grants hinge on.
    let made = owned_resources(&link.admin_sdk, &uids).await;
    for kind in ["db instance", "instance", "iam role", "instance profile", "key pair"] {
        assert!(made.iter().any(|(k, _, _)| *k == kind), "no {kind} made: {made:?}");
    }
    for (kind, id, tags) in &made {
        assert_eq!(
            tags.get("tinystacks.io/managed-by").map(String::as_str),
            Some("tinystacks-operator"),
            "{kind} {id}: {tags:?}"
        );
    }

    // The resource ARNs moto cannot check, checked here against the policy as rendered: the
    // names the operator gave its secrets, key aliases, VPC links and the RDS default groups its
    // instances name fall within the statements that grant the calls on them.
    let aws = &link.admin_sdk;
    let mut arns: Vec<(&str, String)> = Vec::new();
    let secrets = aws_sdk_secretsmanager::Client::new(aws).list_secrets().send().await.expect("secrets");
    for arn in secrets.secret_list().iter().filter_map(|s| s.arn()) {
        for action in
            ["CreateSecret", "TagResource", "DescribeSecret", "PutSecretValue", "GetSecretValue", "DeleteSecret"]
        {
            arns.push((action, arn.to_string()));
        }
    }
    let aliases = aws_sdk_kms::Client::new(aws).list_aliases().send().await.expect("aliases");
    for arn in aliases.aliases().iter().filter(|a| a.target_key_id().is_some()).filter_map(|a| a.alias_arn()) {
        if !arn.contains(":alias/aws/") {
            arns.extend([("kms:CreateAlias", arn.to_string()), ("kms:DeleteAlias", arn.to_string())]);
        }
    }
    let links = aws_sdk_apigatewayv2::Client::new(aws).get_vpc_links().send().await.expect("vpc links");
    for id in links.items().iter().filter_map(|l| l.vpc_link_id()) {
        let arn = format!("arn:aws:apigateway:us-east-1::/vpclinks/{id}");
        arns.push(("apigateway:POST", "arn:aws:apigateway:us-east-1::/vpclinks".to_string()));
        arns.push(("apigateway:POST", format!("arn:aws:apigateway:us-east-1::/tags/{}", arn.replace('/', "%2F"))));
        arns.extend([("apigateway:GET", arn.clone()), ("apigateway:DELETE", arn)]);
    }
    let instances = aws_sdk_rds::Client::new(aws).describe_db_instances().send().await.expect("instances");
    for i in instances.db_instances() {
        for g in i.db_parameter_groups().iter().filter_map(|g| g.db_parameter_group_name()) {
            arns.push(("rds:CreateDBInstance", format!("arn:aws:rds:us-east-1:123456789012:pg:{g}")));
        }
        for g in i.option_group_memberships().iter().filter_map(|g| g.option_group_name()) {
            arns.push(("rds:CreateDBInstance", format!("arn:aws:rds:us-east-1:123456789012:og:{g}")));
        }
    }
    for kind in ["secret", "alias", "vpclinks", ":pg:"] {
        assert!(arns.iter().any(|(_, arn)| arn.contains(kind)), "no {kind} ARN to check: {arns:?}");
    }
    for (action, arn) in &arns {
        let action = if action.contains(':') { action.to_string() } else { format!("secretsmanager:{action}") };
        assert!(allows_on(&link.rendered, &action, arn), "the rendered policy does not allow {action} on {arn}");
    }

    // Deleted together (a Stack waits for the Databases on it), with one action the way out
    // needs taken out of the policy: the Database stalls naming it, the rest waits. Put back, all
    // go, with nothing else denied, and nothing of theirs is left in the account.
    let removed = "rds:DeleteDBInstance";
    link.put_policies(Some(removed)).await;
    let deleting = Instant::now();
    for w in workloads.iter().rev() {
        w.delete(&client, ns).await;
    }
    let database = workloads.iter().find(|w| w.resource.kind == "Database").expect("a Database");
    let message = database.wait_access_denied(&client, ns, Duration::from_secs(60)).await;
    assert!(message.contains(removed), "{message}");
    link.put_policies(None).await;
    for w in workloads.iter().rev() {
        w.wait_gone(&client, ns, &link, Duration::from_secs(120)).await;
    }
    eprintln!("all gone {:?} after deletion", deleting.elapsed());
    let denied = link.denied();
    assert!(denied.iter().any(|l| l.contains("operation=\"DeleteDBInstance\"")), "{denied:?}");
    let other: Vec<&String> = denied.iter().filter(|l| !l.contains("operation=\"DeleteDBInstance\"")).collect();
    assert!(other.is_empty(), "denied on the way out: {other:?}");
    for operation in [
        "DeleteDBInstance",
        "DeleteDBSubnetGroup",
        "DeleteSecret",
        "DeleteVpcLink",
        "DeleteVpcEndpoints",
        "DeleteNatGateway",
        "ReleaseAddress",
        "DetachInternetGateway",
        "DeleteSubnet",
        "DeleteSecurityGroup",
        "ScheduleKeyDeletion",
        "DeleteVpc",
        "TerminateInstances",
        "DeleteKeyPair",
        "RemoveRoleFromInstanceProfile",
        "DeleteInstanceProfile",
        "DeleteRolePolicy",
        "DeleteRole",
    ] {
        let filter = format!("operation=\"{operation}\",outcome=\"success\"");
        assert!(aws_requests(&link.op, &filter) >= 1.0, "no successful {operation}");
    }
    let left = owned_resources(&link.admin_sdk, &uids).await;
    assert!(left.is_empty(), "left in the account: {left:?}");

    assert_no_secret("the operator's log", &link.op.logs(), &link.secrets);
    for (_, _, note) in event_notes(&client, &[ns, "default"]).await {
        assert_no_secret("an Event", &note, &link.secrets);
    }
    delete_and_wait_gone(&client, &link.name, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_failed_cloudformation_stack_stalls_with_cloudformations_own_reason() {
    let _serial = common::OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let system = TestNamespace::new(&client, "link-system").await;
    let team = TestNamespace::new(&client, "link-team").await;
    let account = random_account();
    let creds = account_credentials(&account).await;
    put_secret(&client, &team.name, "bootstrap", &bootstrap_entries(&creds)).await;
    // moto creates every stack at once and never fails one; the proxy between the operator and
    // moto makes the stack look rolled back, with the events CloudFormation would record.
    let proxy = FaultProxy::start(&endpoint()).await;
    let cause = "Resource handler returned message: User is not authorized to perform: iam:CreateRole (HandlerErrorCode: AccessDenied)";
    proxy.rewrite(
        "DescribeStacks",
        "<StackStatus>CREATE_COMPLETE</StackStatus>",
        "<StackStatus>ROLLBACK_COMPLETE</StackStatus><StackStatusReason>The following resource(s) failed to create: [Role]. Rollback requested by user.</StackStatusReason>",
        10_000,
    );
    // A resource event of its own, spliced in after the stack's last event.
    proxy.rewrite(
        "DescribeStackEvents",
        "<ResourceStatus>CREATE_COMPLETE</ResourceStatus>",
        &format!(
            "<ResourceStatus>ROLLBACK_COMPLETE</ResourceStatus></member><member><LogicalResourceId>Role</LogicalResourceId><ResourceType>AWS::IAM::Role</ResourceType><ResourceStatus>CREATE_FAILED</ResourceStatus><ResourceStatusReason>{cause}</ResourceStatusReason>"
        ),
        10_000,
    );
    let name = format!("link-failed-{}", suffix());
    let _guard = create_link(
        &client,
        &name,
        json!({"accountId": account, "region": "us-east-1",
               "bootstrap": {"mode": "CloudFormation", "credentialsSecretRef": {"namespace": team.name, "name": "bootstrap"}}}),
    )
    .await;
    // A long resync, so that the empty rolled-back stack is not retried while the test looks.
    let op = Operator::start_with_env(
        OperatorConfig {
            namespace: &system.name,
            lease_name: &format!("link-test-{}", suffix()),
            resync: "120s",
            extra_args: Vec::new(),
        },
        &[("AWS_ENDPOINT_URL", proxy.url.as_str())],
    );
    let stalled =
        wait_link(&client, &name, "Stalled", "True", "CloudFormationStackFailed", Duration::from_secs(60)).await;
    let message =
        condition(&stalled, "Stalled").and_then(|c| c["message"].as_str().map(str::to_string)).unwrap_or_default();
    assert!(message.contains("ROLLBACK_COMPLETE"), "{message}");
    assert!(message.contains(cause), "CloudFormation's own reason is in the message: {message}");
    assert!(message.contains("Role (AWS::IAM::Role)"), "{message}");
    assert!(proxy.rewritten("DescribeStackEvents") >= 1);
    let ready = condition(&stalled, "Ready").expect("Ready");
    assert_eq!(ready["status"], "False");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(op.get("/healthz").0, 200, "the operator no longer answers");
    let notes = event_notes(&client, &["default"]).await;
    assert!(
        notes.iter().any(|(n, r, _)| n == &name && r == "CloudFormationStackFailed"),
        "a Warning event carries the failure"
    );
    assert_no_secret("the operator's log", &op.logs(), &creds.values());
    // Deleting the link removes the rolled-back stack too.
    delete_and_wait_gone(&client, &name, Duration::from_secs(60)).await;
    assert_eq!(stack_status(&creds, &endpoint(), "TinyStacksRole").await, None);
}
