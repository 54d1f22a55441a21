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
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tinystacks_operator::api::{AwsAccountLink, Stack};
use tinystacks_operator::aws::{Aws, AwsOptions};
use tinystacks_operator::runtime::metrics::Metrics;

use common::fault_proxy::FaultProxy;
use common::{Operator, OperatorConfig, TestNamespace, client, condition, eventually, install_crds, suffix};

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
    // A loaded machine can time the scrape out: ask again rather than read an empty body as zero.
    let body = (0..5)
        .find_map(|_| match operator.get("/metrics") {
            (200, body) => Some(body),
            _ => {
                std::thread::sleep(Duration::from_millis(500));
                None
            }
        })
        .expect("the operator's /metrics answers");
    body.lines()
        .filter(|l| l.starts_with("tinystacks_aws_requests_total{") && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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
    // Two resync periods: the Stack has been reconciled again meanwhile.
    tokio::time::sleep(Duration::from_secs(6)).await;
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

    // Stalled is not a crash loop: the operator runs on and answers.
    tokio::time::sleep(Duration::from_secs(4)).await;
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

impl EnforcingMoto {
    /// Starts moto with enforcement deferred (a count it never reaches during set-up); `enforce`
    /// switches it on through moto's own `/moto-api/reset-auth`.
    fn start() -> Self {
        let server = std::env::var("TINYSTACKS_MOTO_SERVER").unwrap_or_else(|_| {
            let cache = std::env::var("XDG_CACHE_HOME")
                .unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap_or_default()));
            format!("{cache}/tinystacks-operator/moto-5.2.5/bin/moto_server")
        });
        let port = common::free_port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "1000000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {server}: {e}"));
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

#[tokio::test]
async fn scoped_role_passes_enforced_iam_and_stalls_naming_a_removed_action_or_a_foreign_external_id() {
    let _serial = common::OPERATOR_LOCK.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let system = TestNamespace::new(&client, "link-system").await;
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
    // for values with spaces, such as a CloudFormation template, so CreateStack cannot pass its
    // signature check here. The operator's own calls pass. The link is in the operator's own
    // account: moto checks a trust policy (principal and sts:ExternalId) only within an account.
    let _guard = create_link(
        &client,
        &name,
        json!({"accountId": "123456789012", "region": "us-east-1", "permissions": "Scoped"}),
    )
    .await;
    let env = [
        ("AWS_ENDPOINT_URL", moto.url.as_str()),
        ("AWS_ACCESS_KEY_ID", operator_creds.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", operator_creds.secret_access_key.as_str()),
    ];
    let op = operator(&system.name, &env, &[]);
    let admin = aws_sdk_iam::Client::new(&sdk(&bootstrap, &moto.url).await);

    // Deploy what the rendered template holds: the role with its trust policy and its Scoped
    // policy, exactly as rendered (the boundary policy's Ref resolved to its ARN).
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
    let inline = role["Policies"][0].clone();
    let policy_name = inline["PolicyName"].as_str().expect("the Scoped permissions are one inline policy").to_string();
    let boundary = "arn:aws:iam::123456789012:policy/tinystacks/TinyStacksRole-BastionBoundary";
    let document: Value = serde_json::from_str(
        &inline["PolicyDocument"].to_string().replace(r#"{"Ref":"BastionBoundary"}"#, &format!("{boundary:?}")),
    )
    .expect("policy");
    admin
        .create_role()
        .role_name("TinyStacksRole")
        .assume_role_policy_document(trust.to_string())
        .send()
        .await
        .expect("create the role");
    put_role_policy(&admin, &policy_name, &document).await;
    let policies = vec![(policy_name.clone(), document.clone())];
    let ready = wait_link(&client, &name, "Ready", "True", "Verified", Duration::from_secs(60)).await;
    let identity = ready["status"]["verifiedIdentity"].as_str().unwrap_or_default().to_string();
    assert!(identity.starts_with("arn:aws:sts::123456789012:assumed-role/TinyStacksRole/"), "{identity}");
    assert!(aws_requests(&op, "operation=\"AssumeRole\",outcome=\"success\"") >= 1.0);
    assert!(aws_requests(&op, "operation=\"DescribeAvailabilityZones\",outcome=\"success\"") >= 1.0);

    // Take one needed action out of the role's policy: Stalled, naming the action.
    let removed = "ec2:DescribeAvailabilityZones";
    for (policy, document) in &policies {
        let mut reduced = document.clone();
        for statement in reduced["Statement"].as_array_mut().into_iter().flatten() {
            if let Some(actions) = statement["Action"].as_array_mut() {
                actions.retain(|a| a != removed);
            }
        }
        put_role_policy(&admin, policy, &reduced).await;
    }
    let stalled = wait_link(&client, &name, "Stalled", "True", "AccessDenied", Duration::from_secs(30)).await;
    let message =
        condition(&stalled, "Stalled").and_then(|c| c["message"].as_str().map(str::to_string)).unwrap_or_default();
    assert!(message.contains(removed), "{message}");
    assert!(aws_requests(&op, "operation=\"DescribeAvailabilityZones\",outcome=\"denied\"") >= 1.0);

    // Put it back: Ready again at the next resync, no restart needed.
    for (policy, document) in &policies {
        put_role_policy(&admin, policy, document).await;
    }
    wait_link(&client, &name, "Ready", "True", "Verified", Duration::from_secs(30)).await;

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
    let denied = wait_link(&client, &name, "Stalled", "True", "AssumeRoleDenied", Duration::from_secs(30)).await;
    let message =
        condition(&denied, "Stalled").and_then(|c| c["message"].as_str().map(str::to_string)).unwrap_or_default();
    assert!(
        message.contains("arn:aws:iam::123456789012:role/TinyStacksRole") && message.contains("sts:ExternalId"),
        "{message}"
    );

    // The operator's own keys stay out of its log as well.
    let secrets: Vec<String> = operator_creds.values().into_iter().chain(bootstrap.values()).collect();
    assert_no_secret("the operator's log", &op.logs(), &secrets);
    for (_, _, note) in event_notes(&client, &["default"]).await {
        assert_no_secret("an Event", &note, &secrets);
    }
    delete_and_wait_gone(&client, &name, Duration::from_secs(30)).await;
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
