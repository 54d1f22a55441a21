//! The Bastion against the real API server and moto, with the real operator binary: placement
//! (subnet tier, public IP) in both access modes and both patterns, the security group's exact
//! ingress, the role and instance profile, the generated key (a valid OpenSSH private key that is
//! never said anywhere), the Database admitting the bastion's group, the tunnel command, the TTL,
//! drift repair, deletion, and a crash after every mutating call.
//!
//! Each test gets a namespace and an AWS account of its own. The Stack and the AwsAccountLink are
//! fixtures (paused, their status written here over a network made here in moto), as in
//! `tests/database.rs`, so that these tests depend only on the Bastion's (and Database's) code.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_ec2::types::Filter;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tinystacks_operator::api::{AwsAccountLink, Bastion, Database, Stack};

use common::fault_proxy::FaultProxy;
use common::moto::{account_config, new_account_id, role_arn};
use common::*;

const READY: Duration = Duration::from_secs(90);
const FAILPOINT: &str = "TINYSTACKS_FAILPOINT_EXIT_AFTER_MUTATIONS";
const OWNER_UID: &str = "tinystacks.io/owner-uid";

struct World {
    client: Client,
    ns: TestNamespace,
    aws: SdkConfig,
    link: String,
    stack: String,
    net: Network,
    /// The moto account of this test.
    account: String,
}

/// What the operator made in the account: (live instances, key pairs, tagged security groups,
/// roles and instance profiles under /tinystacks/).
type Leftovers = (Vec<String>, Vec<String>, Vec<String>, Vec<String>, Vec<String>);

impl World {
    async fn new(pattern: &str) -> Self {
        let mut world = Self::linked().await;
        world.net = network(&world.aws, pattern).await;
        world.fixture_stack(&world.link, pattern).await;
        world
    }

    /// A namespace, an account and a fixture link, but no Stack yet.
    async fn linked() -> Self {
        let client = client().await;
        install_crds(&client).await;
        let ns = TestNamespace::new(&client, "bastion").await;
        let account = new_account_id();
        let aws = account_config(&account).await;
        let link = format!("bastion-link-{}", suffix());
        let world = Self { client, ns, aws, link, stack: "web".into(), net: Network::default(), account };
        world.fixture_link(&world.link, &world.account).await;
        world
    }

    fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.aws)
    }
    fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.aws)
    }
    fn bastions(&self) -> Api<Bastion> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }
    fn databases(&self) -> Api<Database> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    async fn fixture_link(&self, link: &str, account: &str) {
        let obj: AwsAccountLink = serde_json::from_value(json!({
            "apiVersion": "tinystacks.io/v1alpha1", "kind": "AwsAccountLink",
            "metadata": {"name": link, "annotations": {"tinystacks.io/paused": "true"}},
            "spec": {"accountId": account, "region": "us-east-1", "allowedNamespaces": [self.ns.name]},
        }))
        .expect("link");
        let api = Api::<AwsAccountLink>::all(self.client.clone());
        api.create(&PostParams::default(), &obj).await.expect("create link");
        let status = json!({"status": {
            "externalId": "tinystacks-tests-external-id-0123456789",
            "roleArn": role_arn(account),
            "conditions": [ready_condition()],
            "observedGeneration": 1,
        }});
        write_status(&api, link, &status).await;
    }

    async fn fixture_stack(&self, link: &str, pattern: &str) {
        let stack: Stack = serde_json::from_value(json!({
            "apiVersion": "tinystacks.io/v1alpha1", "kind": "Stack",
            "metadata": {"name": self.stack, "annotations": {"tinystacks.io/paused": "true"}},
            "spec": {"accountLinkRef": {"name": link}, "network": {"pattern": pattern}, "tags": {"team": "tests"}},
        }))
        .expect("stack");
        let api = Api::<Stack>::namespaced(self.client.clone(), &self.ns.name);
        api.create(&PostParams::default(), &stack).await.expect("create stack");
        let subnets = describe_subnets(&self.aws, &self.net.vpc).await;
        let status = json!({"status": {
            "vpcId": self.net.vpc,
            "subnets": subnets,
            "appSecurityGroupId": self.net.app_group,
            "kmsKeyArn": self.net.kms_key_arn,
            "conditions": [ready_condition()],
            "observedGeneration": 1,
        }});
        write_status(&api, &self.stack, &status).await;
    }

    async fn bastion(&self, name: &str, spec: Value) -> Bastion {
        let mut full = json!({"stackRef": {"name": self.stack}});
        if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            full.extend(extra.clone());
        }
        let b: Bastion = serde_json::from_value(json!({
            "apiVersion": "tinystacks.io/v1alpha1", "kind": "Bastion", "metadata": {"name": name}, "spec": full,
        }))
        .expect("bastion");
        self.bastions().create(&PostParams::default(), &b).await.expect("create bastion")
    }

    async fn database(&self, name: &str) {
        let db: Database = serde_json::from_value(json!({
            "apiVersion": "tinystacks.io/v1alpha1", "kind": "Database", "metadata": {"name": name},
            "spec": {"stackRef": {"name": self.stack}, "deletionPolicy": "Delete"},
        }))
        .expect("database");
        self.databases().create(&PostParams::default(), &db).await.expect("create database");
    }

    fn operator(&self, env: &[(&str, &str)]) -> Operator {
        let config = OperatorConfig {
            namespace: &self.ns.name,
            lease_name: "tinystacks-operator",
            resync: "2s",
            extra_args: vec![
                "--watch-namespace".into(),
                self.ns.name.clone(),
                "--leader-election".into(),
                "false".into(),
            ],
        };
        Operator::start_with_env(config, env)
    }

    async fn wait_ready(&self, name: &str) -> Bastion {
        wait_ready_within(&self.bastions(), name, READY).await
    }

    async fn wait_database_ready(&self, name: &str) -> Database {
        wait_ready_within(&self.databases(), name, READY).await
    }

    async fn wait_gone(&self, name: &str) {
        wait_gone_within(&self.bastions(), name, READY).await
    }

    async fn delete(&self, name: &str) {
        self.bastions().delete(name, &DeleteParams::default()).await.expect("delete bastion");
    }

    async fn instance(&self, id: &str) -> aws_sdk_ec2::types::Instance {
        let out = self.ec2().describe_instances().instance_ids(id).send().await.expect("describe instance");
        out.reservations().iter().flat_map(|r| r.instances()).next().cloned().expect("the instance")
    }

    fn state(instance: &aws_sdk_ec2::types::Instance) -> String {
        instance.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default()
    }

    async fn ingress(&self, group: &str) -> BTreeSet<(String, Option<i32>, Option<i32>, String)> {
        let out = self.ec2().describe_security_groups().group_ids(group).send().await.expect("describe group");
        let mut rules = BTreeSet::new();
        for p in out.security_groups().first().map(|g| g.ip_permissions()).unwrap_or_default() {
            let key =
                |source: String| (p.ip_protocol().unwrap_or_default().to_string(), p.from_port(), p.to_port(), source);
            rules.extend(p.user_id_group_pairs().iter().filter_map(|g| g.group_id()).map(|g| key(g.to_string())));
            rules.extend(p.ip_ranges().iter().filter_map(|r| r.cidr_ip()).map(|c| key(c.to_string())));
            rules.extend(p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()).map(|c| key(c.to_string())));
        }
        rules
    }

    /// Whether the database's group admits `group` on 5432.
    async fn database_admits(&self, db_group: &str, group: &str) -> bool {
        self.ingress(db_group).await.contains(&("tcp".to_string(), Some(5432), Some(5432), group.to_string()))
    }

    async fn leftovers(&self) -> Leftovers {
        let ec2 = self.ec2();
        let tagged = Filter::builder().name("tag-key").values(OWNER_UID).build();
        let instances = ec2.describe_instances().filters(tagged).send().await.expect("instances");
        let live = instances
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| Self::state(i) != "terminated")
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        let keys = ec2.describe_key_pairs().send().await.expect("key pairs");
        // The Database's group is tagged too: only the Bastions' count here.
        let owned = Filter::builder().name("tag-key").values("tinystacks.io/owner").build();
        let groups = ec2.describe_security_groups().filters(owned).send().await.expect("groups");
        let bastion_groups: Vec<String> = groups
            .security_groups()
            .iter()
            .filter(|g| {
                g.tags().iter().any(|t| {
                    t.key() == Some("tinystacks.io/owner") && t.value().is_some_and(|v| v.starts_with("Bastion/"))
                })
            })
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect();
        let iam = self.iam();
        let roles = iam.list_roles().path_prefix("/tinystacks/").send().await.expect("roles");
        let profiles = iam.list_instance_profiles().path_prefix("/tinystacks/").send().await.expect("profiles");
        (
            live,
            keys.key_pairs().iter().filter_map(|k| k.key_name().map(str::to_string)).collect(),
            bastion_groups,
            roles.roles().iter().map(|r| r.role_name().to_string()).collect(),
            profiles.instance_profiles().iter().map(|p| p.instance_profile_name().to_string()).collect(),
        )
    }

    async fn assert_nothing_left(&self) {
        let left = self.leftovers().await;
        assert!(
            left.0.is_empty() && left.1.is_empty() && left.2.is_empty() && left.3.is_empty() && left.4.is_empty(),
            "left behind: {left:?}"
        );
    }

    async fn event_notes(&self) -> Vec<(String, String, String)> {
        event_notes(&self.client, &self.ns.name).await
    }

    async fn wait_event(&self, type_: &str, reason: &str, contains: &str) -> String {
        wait_event_note(&self.client, &self.ns.name, (type_, reason, contains), READY).await
    }
}

fn groups_of(instance: &aws_sdk_ec2::types::Instance) -> BTreeSet<String> {
    instance
        .security_groups()
        .iter()
        .chain(instance.network_interfaces().iter().flat_map(|n| n.groups()))
        .filter_map(|g| g.group_id().map(str::to_string))
        .collect()
}

fn tag<'a>(instance: &'a aws_sdk_ec2::types::Instance, key: &str) -> Option<&'a str> {
    instance.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

#[tokio::test]
async fn ssm_on_public_private_is_private_without_inbound_rules_and_reaches_the_database() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    world.database("orders").await;
    world.bastion("ops", json!({})).await;
    let _operator = world.operator(&[]);

    let db = world.wait_database_ready("orders").await;
    let db_status = db.status.clone().expect("db status");
    let db_group = db_status.security_group_id.clone().expect("db group");
    let endpoint = db_status.endpoint.clone().expect("db endpoint").address;
    // Ready, with the tunnel command naming the database (the Bastion wakes when the Database
    // changes).
    let b = eventually("Ready with the database in the tunnel command", READY, || async {
        let b = world.wait_ready("ops").await;
        let command = b.status.as_ref().and_then(|s| s.tunnel_command.clone()).unwrap_or_default();
        if command.contains(&endpoint) { Ok(b) } else { Err(command) }
    })
    .await;
    let status = b.status.clone().expect("status");
    let id = status.instance_id.clone().expect("instanceId");
    let group = status.security_group_id.clone().expect("securityGroupId");

    // The instance: a private subnet, no public IP, only its own group, the profile, the tags, the
    // Amazon Linux arm64 image of the public parameter (t4g.nano is Graviton).
    let instance = world.instance(&id).await;
    assert_eq!(World::state(&instance), "running");
    assert!(world.net.private.contains(instance.subnet_id().unwrap_or_default()), "a private subnet");
    assert_eq!(instance.public_ip_address().filter(|ip| !ip.is_empty()), None, "no public IP");
    assert_eq!((status.public_ip.as_deref(), status.private_ip.as_deref()), (None, instance.private_ip_address()));
    assert_eq!(groups_of(&instance), BTreeSet::from([group.clone()]));
    assert_eq!(instance.key_name().filter(|k| !k.is_empty()), None, "no key pair with Ssm");
    assert_eq!(tag(&instance, OWNER_UID), b.uid().as_deref());
    assert_eq!(tag(&instance, "tinystacks.io/managed-by"), Some("tinystacks-operator"));
    assert_eq!(tag(&instance, "team"), Some("tests"), "the Stack's tags");
    let ssm = aws_sdk_ssm::Client::new(&world.aws);
    let parameter = ssm
        .get_parameter()
        .name("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64")
        .send()
        .await
        .expect("parameter");
    let image = parameter.parameter().and_then(|p| p.value()).expect("image").to_string();
    assert_eq!(instance.image_id(), Some(image.as_str()));
    assert_eq!(b.annotations().get("tinystacks.io/image"), Some(&format!("arm64:{image}")), "the image is pinned");

    // No inbound rule at all.
    assert!(world.ingress(&group).await.is_empty(), "no ingress on the Ssm bastion's group");

    // The role: under /tinystacks/, trusted by EC2 only, with the Session Manager policy, in the
    // instance's profile.
    let profile_arn = instance.iam_instance_profile().and_then(|p| p.arn()).expect("instance profile");
    let profile_name = profile_arn.rsplit('/').next().expect("profile name").to_string();
    let iam = world.iam();
    let profile = iam.get_instance_profile().instance_profile_name(&profile_name).send().await.expect("profile");
    let profile = profile.instance_profile().expect("profile");
    assert_eq!(profile.path(), "/tinystacks/");
    let role = &profile.roles()[0];
    assert_eq!(role.path(), "/tinystacks/");
    let trust = role.assume_role_policy_document().unwrap_or_default();
    let trust = url::form_urlencoded::parse(format!("x={trust}").as_bytes()).next().map(|(_, v)| v.to_string());
    assert!(trust.unwrap_or_default().contains("ec2.amazonaws.com"), "trusted by EC2");
    let policies = iam.list_role_policies().role_name(role.role_name()).send().await.expect("policies");
    assert_eq!(policies.policy_names(), ["SessionManagerAgent"]);
    let secrets = Api::<Secret>::namespaced(world.client.clone(), &world.ns.name);
    assert!(secrets.get_opt("ops-ssh-key").await.expect("get").is_none(), "no key Secret with Ssm");
    assert_eq!(status.key_secret_name, None);

    // The database admits the bastion's group on 5432; the tunnel command forwards to it.
    eventually("the database admits the bastion", READY, || async {
        if world.database_admits(&db_group, &group).await { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;
    assert_eq!(
        status.tunnel_command.as_deref(),
        Some(
            format!(
                "aws ssm start-session --target {id} --document-name AWS-StartPortForwardingSessionToRemoteHost --parameters host={endpoint},portNumber=5432,localPortNumber=5432 --region us-east-1"
            )
            .as_str()
        )
    );

    // Deletion: the instance terminated, the rest gone, the database's rule withdrawn.
    world.delete("ops").await;
    world.wait_gone("ops").await;
    assert_eq!(World::state(&world.instance(&id).await), "terminated");
    world.assert_nothing_left().await;
    eventually("the database's rule withdrawn", READY, || async {
        if world.database_admits(&db_group, &group).await { Err("still admitted".to_string()) } else { Ok(()) }
    })
    .await;
    world.databases().delete("orders", &DeleteParams::default()).await.expect("delete database");
}

#[tokio::test]
async fn ssh_on_public_private_is_public_with_22_from_the_cidrs_a_generated_key_and_repairs_drift() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    world
        .bastion("jump", json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24"], "instanceType": "t3.micro"}))
        .await;
    let operator = world.operator(&[]);

    let b = world.wait_ready("jump").await;
    let status = b.status.clone().expect("status");
    let id = status.instance_id.clone().expect("instanceId");
    let group = status.security_group_id.clone().expect("securityGroupId");
    let instance = world.instance(&id).await;
    assert!(world.net.public.contains(instance.subnet_id().unwrap_or_default()), "a public subnet");
    let public_ip = instance.public_ip_address().filter(|ip| !ip.is_empty()).expect("a public IP").to_string();
    assert_eq!(status.public_ip.as_deref(), Some(public_ip.as_str()));
    assert!(b.annotations().get("tinystacks.io/image").is_some_and(|i| i.starts_with("x86_64:ami-")), "t3 is x86");
    let ssh_only: BTreeSet<_> = [("tcp".to_string(), Some(22), Some(22), "203.0.113.0/24".to_string())].into();
    assert_eq!(world.ingress(&group).await, ssh_only);

    // The key: a valid OpenSSH ed25519 private key in the Secret, owned by the Bastion, its public
    // half imported as the instance's key pair.
    assert_eq!(status.key_secret_name.as_deref(), Some("jump-ssh-key"));
    let secrets = Api::<Secret>::namespaced(world.client.clone(), &world.ns.name);
    let secret = secrets.get("jump-ssh-key").await.expect("key Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/ssh-auth"));
    let owner = &secret.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.controller, Some(owner.uid.clone())), ("Bastion", Some(true), b.uid()));
    let data = secret.data.clone().unwrap_or_default();
    let private_pem = String::from_utf8(data["ssh-privatekey"].0.clone()).expect("UTF-8");
    let private = ssh_key::PrivateKey::from_openssh(&private_pem).expect("an OpenSSH private key");
    assert_eq!(private.algorithm(), ssh_key::Algorithm::Ed25519);
    assert!(!private.is_encrypted());
    let public = private.public_key().to_openssh().expect("public key");
    assert_eq!(String::from_utf8(data["ssh-publickey"].0.clone()).ok(), Some(public.clone()));
    let key_name = instance.key_name().expect("a key pair").to_string();
    let pairs = world.ec2().describe_key_pairs().key_names(&key_name).send().await.expect("key pair");
    assert_eq!(pairs.key_pairs().len(), 1, "the key pair exists in EC2");
    let expected = format!("ssh -i jump-ssh-key.pem -N -L 5432:<database-endpoint>:5432 ec2-user@{public_ip}");
    assert_eq!(status.tunnel_command.as_deref(), Some(expected.as_str()));
    let ready = condition(&serde_json::to_value(&b).expect("json"), "Ready").expect("Ready");
    assert!(ready["message"].as_str().is_some_and(|m| m.contains("<database-endpoint>")), "{ready}");

    // Drift: 22 from the whole internet is revoked with a Warning.
    let open = aws_sdk_ec2::types::IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(22)
        .to_port(22)
        .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    world.ec2().authorize_security_group_ingress().group_id(&group).ip_permissions(open).send().await.expect("open");
    world.wait_event("Warning", "DriftRepaired", "0.0.0.0/0").await;
    eventually("only 22 from the allowed CIDR again", READY, || async {
        let rules = world.ingress(&group).await;
        if rules == ssh_only { Ok(()) } else { Err(format!("{rules:?}")) }
    })
    .await;

    // Drift: the instance terminated behind the operator's back is replaced.
    world.ec2().terminate_instances().instance_ids(&id).send().await.expect("terminate");
    let replaced = eventually("a replacement instance", READY, || async {
        let b = world.wait_ready("jump").await;
        match b.status.as_ref().and_then(|s| s.instance_id.clone()) {
            Some(new) if new != id => Ok(new),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(World::state(&world.instance(&replaced).await), "running");
    assert_eq!(world.instance(&replaced).await.key_name(), Some(key_name.as_str()), "the same key");
    world.wait_event("Warning", "InstanceReplaced", "terminated outside the operator").await;
    assert_eq!(world.leftovers().await.0, [replaced], "one live instance");

    // Deletion leaves nothing: instance, key pair, group, profile, role; the Secret goes too.
    world.delete("jump").await;
    world.wait_gone("jump").await;
    world.assert_nothing_left().await;
    assert!(secrets.get_opt("jump-ssh-key").await.expect("get").is_none(), "the key Secret is gone");

    // The private key was never said: not in the log (at debug), an event or the status.
    let mut said = operator.logs();
    said.push_str(&format!("{:?}", world.event_notes().await));
    said.push_str(&serde_json::to_string(&b).unwrap_or_default());
    assert!(said.contains("GeneratedSshKey") || said.contains("generated an ed25519"), "the log and events were read");
    assert!(
        logged_change(&operator.logs(), "Bastion", "jump", "CreatedRole"),
        "the Bastion's changes are logged at info"
    );
    let body: String = private_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    for line in private_pem.lines().filter(|l| !l.starts_with("-----") && l.len() > 20) {
        assert!(!said.contains(line), "a line of the private key appears in a log line, event or status");
    }
    assert!(!said.contains(&body[..40]), "the private key appears somewhere");
    let encoded = serde_json::to_value(k8s_openapi::ByteString(private_pem.clone().into_bytes())).expect("base64");
    assert!(!said.contains(encoded.as_str().unwrap_or("-")), "the private key appears base64-encoded");
}

#[tokio::test]
async fn ssm_on_private_isolated_uses_the_private_subnets_and_ssh_there_stalls() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PrivateIsolated").await;
    world.bastion("ops", json!({"instanceType": "t4g.micro"})).await;
    let ssh = world.bastion("jump", json!({"access": "Ssh", "allowedCidrs": ["198.51.100.10/32"]})).await;
    let _operator = world.operator(&[]);

    let b = world.wait_ready("ops").await;
    let status = b.status.clone().expect("status");
    let instance = world.instance(status.instance_id.as_deref().expect("instanceId")).await;
    assert!(world.net.private.contains(instance.subnet_id().unwrap_or_default()), "a private subnet");
    assert_eq!(instance.public_ip_address().filter(|ip| !ip.is_empty()), None, "no public IP");
    assert!(world.ingress(status.security_group_id.as_deref().expect("group")).await.is_empty());
    assert!(status.tunnel_command.as_deref().is_some_and(|c| c.contains("host=<database-endpoint>")));

    let stalled = wait_condition(&world.bastions(), "jump", "Stalled", "True", "SshNeedsPublicSubnet").await;
    let message = condition(&stalled, "Stalled").map(|c| c["message"].to_string()).unwrap_or_default();
    assert!(message.contains("PrivateIsolated") && message.contains("Ssm"), "{message}");
    // Nothing was made for it.
    let uid = ssh.uid().expect("uid");
    let theirs = world
        .ec2()
        .describe_instances()
        .filters(Filter::builder().name(format!("tag:{OWNER_UID}")).values(&uid).build())
        .send()
        .await
        .expect("instances");
    assert!(theirs.reservations().is_empty(), "no instance for the stalled Bastion");
    let (_, _, groups, roles, _) = world.leftovers().await;
    assert_eq!((groups.len(), roles.len()), (1, 1), "only the Ssm bastion's group and role: {groups:?} {roles:?}");

    world.delete("jump").await;
    world.delete("ops").await;
    world.wait_gone("jump").await;
    world.wait_gone("ops").await;
    world.assert_nothing_left().await;
}

/// Ranges each narrow enough for admission (a /24 at most) but too wide together (512 addresses):
/// `Stalled` (`AllowedCidrsTooWide`) before any AWS call; the same 256 addresses in two halves are
/// an allow-list, and 22 opens to exactly those.
#[tokio::test]
async fn ssh_ranges_too_wide_together_stall_before_any_aws_call() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = FaultProxy::start(&moto).await;
    world.bastion("jump", json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24", "198.51.100.0/24"]})).await;
    let _operator = world.operator(&[("AWS_ENDPOINT_URL", proxy.url.as_str())]);

    let stalled = wait_condition(&world.bastions(), "jump", "Stalled", "True", "AllowedCidrsTooWide").await;
    let message = condition(&stalled, "Stalled").map(|c| c["message"].to_string()).unwrap_or_default();
    assert!(message.contains("spec.allowedCidrs") && message.contains("512 IPv4 addresses"), "{message}");
    let bastion_calls =
        ["CreateRole", "CreateSecurityGroup", "AuthorizeSecurityGroupIngress", "RunInstances", "ImportKeyPair"];
    for action in bastion_calls {
        assert_eq!(proxy.count(action), 0, "{action} was called for a Bastion whose ranges are too wide");
    }
    let (instances, keys, groups, roles, _) = world.leftovers().await;
    assert!(instances.is_empty() && keys.is_empty() && groups.is_empty() && roles.is_empty(), "nothing made");

    let halves = json!({"spec": {"allowedCidrs": ["203.0.113.0/25", "203.0.113.128/25"]}});
    world.bastions().patch("jump", &PatchParams::default(), &Patch::Merge(&halves)).await.expect("narrow the ranges");
    let b = world.wait_ready("jump").await;
    let group = b.status.as_ref().and_then(|s| s.security_group_id.clone()).expect("group");
    let ssh = |cidr: &str| ("tcp".to_string(), Some(22), Some(22), cidr.to_string());
    assert_eq!(world.ingress(&group).await, [ssh("203.0.113.0/25"), ssh("203.0.113.128/25")].into());
    common::invariants::assert_security_invariants(&world.account, &["203.0.113.0/25", "203.0.113.128/25"]).await;

    world.delete("jump").await;
    world.wait_gone("jump").await;
    world.assert_nothing_left().await;
}

#[tokio::test]
async fn admission_rejects_the_whole_internet_and_ssh_without_cidrs() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "bastion-cel").await;
    let api = Api::<Bastion>::namespaced(client.clone(), &ns.name);
    let create = |spec: Value| {
        let api = api.clone();
        async move {
            let b: Bastion = serde_json::from_value(json!({
                "apiVersion": "tinystacks.io/v1alpha1", "kind": "Bastion",
                "metadata": {"name": format!("b-{}", suffix())}, "spec": spec,
            }))
            .expect("bastion");
            api.create(&PostParams::default(), &b).await.map(|_| ()).map_err(|e| e.to_string())
        }
    };
    let stack = json!({"name": "web"});
    for cidr in ["0.0.0.0/0", "::/0"] {
        let err = create(json!({"stackRef": stack, "access": "Ssh", "allowedCidrs": ["203.0.113.0/24", cidr]}))
            .await
            .expect_err(cidr);
        assert!(err.contains("whole internet"), "{cidr}: {err}");
    }
    let err = create(json!({"stackRef": stack, "access": "Ssh"})).await.expect_err("Ssh without CIDRs");
    assert!(err.contains("allowedCidrs is required"), "{err}");
    let err = create(json!({"stackRef": stack, "access": "Ssh", "allowedCidrs": []})).await.expect_err("empty");
    assert!(err.contains("allowedCidrs is required"), "{err}");
    create(json!({"stackRef": stack, "access": "Ssh", "allowedCidrs": ["203.0.113.0/24"], "ttl": "20s"}))
        .await
        .expect("a valid Ssh bastion");
    create(json!({"stackRef": stack})).await.expect("Ssm needs no CIDRs");
}

#[tokio::test]
async fn a_short_ttl_terminates_the_instance_and_withdraws_database_access_and_a_new_ttl_starts_again() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    world.database("orders").await;
    world.bastion("brief", json!({"ttl": "20s"})).await;
    let _operator = world.operator(&[]);

    let db = world.wait_database_ready("orders").await;
    let db_group = db.status.and_then(|s| s.security_group_id).expect("db group");
    let b = world.wait_ready("brief").await;
    let status = b.status.clone().expect("status");
    let id = status.instance_id.clone().expect("instanceId");
    let group = status.security_group_id.clone().expect("group");
    let expires = status.expires_at.clone().expect("expiresAt");
    let created = b.metadata.creation_timestamp.clone().expect("created");
    let lifetime = expires.0.duration_since(created.0).as_secs();
    assert!((18..=25).contains(&lifetime), "expiresAt is about 20s after the period started: {lifetime}s");
    eventually("the database admits the bastion", READY, || async {
        if world.database_admits(&db_group, &group).await { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;

    let expired = wait_condition_for(&world.bastions(), "brief", "Ready", "False", "Expired", READY).await;
    assert_eq!(expired["status"]["instanceId"], Value::Null, "status no longer names an instance");
    assert_eq!(World::state(&world.instance(&id).await), "terminated");
    eventually("the database's rule withdrawn", READY, || async {
        if world.database_admits(&db_group, &group).await { Err("still admitted".to_string()) } else { Ok(()) }
    })
    .await;
    assert!(world.leftovers().await.0.is_empty(), "no live instance after expiry");

    // A new ttl starts a new period: a new instance, access again.
    let patch = json!({"spec": {"ttl": "1h"}});
    world.bastions().patch("brief", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("new ttl");
    let b = world.wait_ready("brief").await;
    let status = b.status.clone().expect("status");
    assert_ne!(status.instance_id.as_deref(), Some(id.as_str()));
    let left = status.expires_at.expect("expiresAt").0.duration_since(Timestamp::now()).as_secs();
    assert!((3500..=3600).contains(&left), "a new hour: {left}s");
    eventually("the database admits the bastion again", READY, || async {
        if world.database_admits(&db_group, &group).await { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;

    // No ttl any more: no expiry, the same instance, the period forgotten.
    let instance = status.instance_id.clone();
    let patch = json!({"spec": {"ttl": null}});
    world.bastions().patch("brief", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("no ttl");
    eventually("no expiry and no period", READY, || async {
        let b = world.wait_ready("brief").await;
        let s = b.status.clone().unwrap_or_default();
        let period = b.annotations().get("tinystacks.io/ttl-period").cloned();
        if s.expires_at.is_none() && period.is_none() { Ok(s) } else { Err(format!("{:?} {period:?}", s.expires_at)) }
    })
    .await;
    assert_eq!(world.bastions().get("brief").await.expect("get").status.and_then(|s| s.instance_id), instance);

    world.delete("brief").await;
    world.wait_gone("brief").await;
    world.assert_nothing_left().await;
    world.databases().delete("orders", &DeleteParams::default()).await.expect("delete database");
}

/// Runs operators armed to exit right after their first mutating AWS call until `done` holds;
/// returns how many of them crashed.
async fn crash_until<F, Fut>(world: &World, what: &str, done: F) -> usize
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    crash_until_done(|| world.operator(&[(FAILPOINT, "1")]), what, 40, READY, done).await
}

#[tokio::test]
async fn a_crash_after_every_mutating_call_converges_to_one_of_each() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    world.bastion("crashy", json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24"]})).await;
    let api = world.bastions();
    let ready = || async {
        api.get("crashy")
            .await
            .ok()
            .and_then(|b| serde_json::to_value(&b).ok())
            .and_then(|v| condition(&v, "Ready"))
            .is_some_and(|c| c["status"] == "True")
    };
    let crashes = crash_until(&world, "create", ready).await;
    // Role, its policy, profile, role into profile, group, ingress, key pair, instance.
    assert!(crashes >= 8, "a crash after each mutating call of create ({crashes})");
    let (instances, keys, groups, roles, profiles) = world.leftovers().await;
    assert_eq!(
        (instances.len(), keys.len(), groups.len(), roles.len(), profiles.len()),
        (1, 1, 1, 1, 1),
        "{instances:?} {keys:?} {groups:?} {roles:?} {profiles:?}"
    );
    let secret = Api::<Secret>::namespaced(world.client.clone(), &world.ns.name).get("crashy-ssh-key").await;
    let secret = secret.expect("the key Secret");
    let private = secret.data.as_ref().and_then(|d| d.get("ssh-privatekey")).expect("private key");
    let public = ssh_key::PrivateKey::from_openssh(&private.0).expect("OpenSSH").public_key().clone();
    let pair = world.ec2().describe_key_pairs().key_names(&keys[0]).include_public_key(true).send().await;
    let material = pair.ok().and_then(|p| p.key_pairs().first().and_then(|k| k.public_key().map(str::to_string)));
    if let Some(material) = material {
        let imported = ssh_key::PublicKey::from_openssh(material.trim()).expect("the key pair's public key");
        assert_eq!(imported.key_data(), public.key_data(), "the key pair holds the Secret's key");
    }

    world.delete("crashy").await;
    let gone = || async { matches!(api.get_opt("crashy").await, Ok(None)) };
    let crashes = crash_until(&world, "delete", gone).await;
    // Terminate, key pair, group, role out of profile, profile, policy, role.
    assert!(crashes >= 7, "a crash after each mutating call of delete ({crashes})");
    world.assert_nothing_left().await;
}

#[tokio::test]
async fn with_the_real_stack_and_no_nat_an_ssm_bastion_is_public_without_inbound_rules_and_the_stack_waits_for_it() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::linked().await;
    let stack: Stack = serde_json::from_value(json!({
        "apiVersion": "tinystacks.io/v1alpha1", "kind": "Stack", "metadata": {"name": world.stack},
        "spec": {"accountLinkRef": {"name": world.link},
            "network": {"pattern": "PublicPrivate", "natGateways": "None", "vpcLink": false}},
    }))
    .expect("stack");
    let stacks = Api::<Stack>::namespaced(world.client.clone(), &world.ns.name);
    stacks.create(&PostParams::default(), &stack).await.expect("create stack");
    world.bastion("ops", json!({})).await;
    let _operator = world.operator(&[]);

    let b = world.wait_ready("ops").await;
    let status = b.status.clone().expect("status");
    let stack_status = stacks.get(&world.stack).await.expect("stack").status.expect("stack status");
    let public: BTreeSet<String> = stack_status
        .subnets
        .iter()
        .filter(|s| s.tier == tinystacks_operator::api::SubnetTier::Public)
        .map(|s| s.id.clone())
        .collect();
    let instance = world.instance(status.instance_id.as_deref().expect("instanceId")).await;
    assert!(public.contains(instance.subnet_id().unwrap_or_default()), "no NAT: a public subnet");
    assert!(instance.public_ip_address().is_some_and(|ip| !ip.is_empty()), "with a public IP");
    assert_eq!(instance.vpc_id(), stack_status.vpc_id.as_deref());
    assert!(world.ingress(status.security_group_id.as_deref().expect("group")).await.is_empty(), "no inbound rule");

    // The Stack waits for its Bastion; then both go, and nothing of either is left.
    stacks.delete(&world.stack, &DeleteParams::default()).await.expect("delete stack");
    wait_condition_for(&stacks, &world.stack, "Ready", "False", "DependentsExist", READY).await;
    assert!(stacks.get_opt(&world.stack).await.expect("get").is_some(), "the Stack waits for its Bastion");
    world.delete("ops").await;
    world.wait_gone("ops").await;
    eventually("the Stack gone", READY, || async {
        match stacks.get_opt(&world.stack).await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|s| s.and_then(|s| s.status).map(|s| s.conditions)))),
        }
    })
    .await;
    world.assert_nothing_left().await;
}

/// Issue 25, point 4: while the Stack lacks what the Bastion needs (a Stack failing before its
/// subnets are made; likewise its link being deleted) the Bastion makes nothing new, but as long
/// as the link's role is verified its group keeps only the spec's rules (22 opened to the internet
/// is revoked) and the TTL still ends: the instance is terminated at `expiresAt`, reason `Expired`.
#[tokio::test]
async fn ttl_and_ingress_hold_while_the_stack_is_not_ready() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    world.bastion("guarded", json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24"], "ttl": "30s"})).await;
    let _operator = world.operator(&[]);
    let b = world.wait_ready("guarded").await;
    let status = b.status.clone().expect("status");
    let id = status.instance_id.clone().expect("instanceId");
    let group = status.security_group_id.clone().expect("securityGroupId");

    let stacks = Api::<Stack>::namespaced(world.client.clone(), &world.ns.name);
    let not_ready = json!({"type": "Ready", "status": "False", "reason": "Fixture", "message": "failing, as a test",
        "lastTransitionTime": Timestamp::now().to_string(), "observedGeneration": 1});
    write_status(&stacks, &world.stack, &json!({"status": {"subnets": null, "conditions": [not_ready]}})).await;
    wait_condition(&world.bastions(), "guarded", "Ready", "False", "WaitingForStack").await;

    let open = aws_sdk_ec2::types::IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(22)
        .to_port(22)
        .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    world.ec2().authorize_security_group_ingress().group_id(&group).ip_permissions(open).send().await.expect("open");
    world.wait_event("Warning", "DriftRepaired", "0.0.0.0/0").await;
    let ssh_only: BTreeSet<_> = [("tcp".to_string(), Some(22), Some(22), "203.0.113.0/24".to_string())].into();
    eventually("22 from allowedCidrs only", READY, || async {
        let rules = world.ingress(&group).await;
        if rules == ssh_only { Ok(()) } else { Err(format!("{rules:?}")) }
    })
    .await;
    let sts = aws_sdk_sts::Client::new(&world.aws);
    let account = sts.get_caller_identity().send().await.expect("identity").account().expect("account").to_string();
    common::invariants::assert_security_invariants(&account, &["203.0.113.0/24"]).await;

    let expired = wait_condition_for(&world.bastions(), "guarded", "Ready", "False", "Expired", READY).await;
    assert_eq!(expired["status"]["instanceId"], Value::Null, "status no longer names an instance");
    assert_eq!(World::state(&world.instance(&id).await), "terminated");
    assert!(world.leftovers().await.0.is_empty(), "no live instance after expiry");

    world.delete("guarded").await;
    world.wait_gone("guarded").await;
}

#[tokio::test]
async fn a_key_secret_it_does_not_own_is_never_used_written_nor_deleted() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    // The user's own Secret under the name the Bastion would give its key.
    let theirs: Secret = serde_json::from_value(json!({
        "metadata": {"name": "jump-ssh-key"}, "type": "kubernetes.io/ssh-auth",
        "stringData": {"ssh-privatekey": "the user's own key"},
    }))
    .expect("Secret");
    let secrets = Api::<Secret>::namespaced(world.client.clone(), &world.ns.name);
    let made = secrets.create(&PostParams::default(), &theirs).await.expect("the user's Secret");
    let version = made.resource_version().expect("resourceVersion");
    world.bastion("jump", json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24"]})).await;
    let _operator = world.operator(&[]);

    let stalled = wait_condition(&world.bastions(), "jump", "Stalled", "True", "SecretConflict").await;
    let message = condition(&stalled, "Stalled").map(|c| c["message"].to_string()).unwrap_or_default();
    assert!(message.contains("jump-ssh-key") && message.contains("not written by tinystacks-operator"), "{message}");
    common::invariants::assert_secrets_owned(&world.client, &world.ns.name, &[("jump-ssh-key", &version)]).await;
    let (_, key_pairs, _, _, _) = world.leftovers().await;
    assert!(key_pairs.is_empty(), "no key pair from the user's Secret: {key_pairs:?}");

    // Deleting the Bastion leaves the user's Secret as it was.
    world.delete("jump").await;
    world.wait_gone("jump").await;
    common::invariants::assert_secrets_owned(&world.client, &world.ns.name, &[("jump-ssh-key", &version)]).await;

    // Once the name is free, a Bastion writes its own key there, and takes it with it.
    secrets.delete("jump-ssh-key", &DeleteParams::default()).await.expect("delete the user's Secret");
    let b = world.bastion("jump", json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24"]})).await;
    world.wait_ready("jump").await;
    let key = secrets.get("jump-ssh-key").await.expect("the Bastion's key Secret");
    assert_eq!(key.owner_references().iter().map(|o| o.uid.clone()).collect::<Vec<_>>(), [b.uid().unwrap()]);
    common::invariants::assert_secrets_owned(&world.client, &world.ns.name, &[]).await;
    world.delete("jump").await;
    world.wait_gone("jump").await;
    assert!(secrets.get_opt("jump-ssh-key").await.expect("get").is_none(), "its own key Secret went with it");
    world.assert_nothing_left().await;
}

/// The operator's reads of the Bastion's instances: each pass makes one, so waiting for more of
/// them waits for passes (resyncs), not for a fixed time.
async fn wait_passes(proxy: &FaultProxy, passes: usize) {
    let start = proxy.count("DescribeInstances");
    eventually(&format!("{passes} more passes"), READY, || async {
        let now = proxy.count("DescribeInstances");
        if now >= start + passes { Ok(()) } else { Err(format!("{} of {passes}", now - start)) }
    })
    .await;
}

fn plan_of(b: &Bastion) -> tinystacks_operator::api::PlanStatus {
    b.status.as_ref().and_then(|s| s.plan.clone()).expect("status.plan")
}

/// Issue 18: a new Bastion with `changePolicy: Manual` shows its whole plan and makes no AWS
/// mutation (not one, counted at the proxy) until `approvedPlan` names that plan; an approval of
/// another id does nothing; once approved it converges to Ready, and its plan is then empty.
#[tokio::test]
async fn a_manual_bastion_changes_nothing_in_aws_until_its_plan_is_approved() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = FaultProxy::start(&moto).await;
    let spec = json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24"], "changePolicy": "Manual"});
    world.bastion("jump", spec).await;
    let _operator = world.operator(&[("AWS_ENDPOINT_URL", proxy.url.as_str())]);

    let held = wait_condition(&world.bastions(), "jump", "Ready", "False", "AwaitingApproval").await;
    let held: Bastion = serde_json::from_value(held).expect("Bastion");
    let plan = plan_of(&held);
    let keys: Vec<String> = plan.changes.iter().map(|c| format!("{:?} {} {}", c.action, c.resource, c.name)).collect();
    for expected in [
        "Create iam:Role role",
        "Create ec2:SecurityGroup security-group",
        "Create ec2:SecurityGroupIngress security-group/ingress",
        "Create ec2:KeyPair key-pair",
        "Create ec2:Instance instance",
    ] {
        assert!(keys.iter().any(|k| k == expected), "{expected} is not in the plan {keys:?}");
    }
    let ingress = plan.changes.iter().find(|c| c.resource == "ec2:SecurityGroupIngress").expect("ingress");
    assert_eq!(ingress.detail, "allow tcp/22 from 203.0.113.0/24");
    wait_passes(&proxy, 2).await;
    assert_eq!(proxy.mutations(), Default::default(), "an AWS mutation before approval");
    let secrets = Api::<Secret>::namespaced(world.client.clone(), &world.ns.name);
    assert!(secrets.get_opt("jump-ssh-key").await.expect("get").is_none(), "no key written before approval");

    // Approving an id that is not the plan's does nothing.
    let stale = json!({"spec": {"approvedPlan": "0123456789abcdef"}});
    world.bastions().patch("jump", &PatchParams::default(), &Patch::Merge(&stale)).await.expect("approve");
    eventually("the edit seen", READY, || async {
        let b = world.bastions().get("jump").await.map_err(|e| e.to_string())?;
        let p = plan_of(&b);
        if p.observed_generation == b.metadata.generation { Ok(()) } else { Err(format!("{p:?}")) }
    })
    .await;
    wait_passes(&proxy, 2).await;
    assert_eq!(proxy.mutations(), Default::default(), "an AWS mutation under an approval of another plan");
    let b = world.bastions().get("jump").await.expect("get");
    assert_eq!(plan_of(&b).id, plan.id, "approving edits the spec, not the plan");

    let approve = json!({"spec": {"approvedPlan": plan.id}});
    world.bastions().patch("jump", &PatchParams::default(), &Patch::Merge(&approve)).await.expect("approve");
    let b = world.wait_ready("jump").await;
    assert!(plan_of(&b).changes.is_empty(), "AWS matches: {:?}", plan_of(&b));
    let (instances, keys, groups, roles, profiles) = world.leftovers().await;
    assert_eq!((instances.len(), keys.len(), groups.len(), roles.len(), profiles.len()), (1, 1, 1, 1, 1));
    assert_eq!(proxy.count("RunInstances"), 1);

    // Deleting under Manual proceeds: deleting is the person's act.
    world.delete("jump").await;
    world.wait_gone("jump").await;
    world.assert_nothing_left().await;
}

/// Issue 18: `management: ObserveOnly` on a Ready Bastion whose group gets 22 from the whole
/// internet by hand: the plan lists the revocation, a `DriftDetected` Warning says so, Ready is
/// False (`Drifted`), and nothing is repaired: zero mutations over two resyncs. Deleting it leaves
/// its AWS resources, and an Event says what was left.
#[tokio::test]
async fn an_observe_only_bastion_reports_a_rule_opened_by_hand_and_changes_nothing() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = FaultProxy::start(&moto).await;
    world.bastion("jump", json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24"]})).await;
    let _operator = world.operator(&[("AWS_ENDPOINT_URL", proxy.url.as_str())]);
    let b = world.wait_ready("jump").await;
    let group = b.status.as_ref().and_then(|s| s.security_group_id.clone()).expect("group");
    let observe = json!({"spec": {"management": "ObserveOnly"}});
    world.bastions().patch("jump", &PatchParams::default(), &Patch::Merge(&observe)).await.expect("observe only");
    world.wait_ready("jump").await;
    let before = proxy.mutations();

    let open = aws_sdk_ec2::types::IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(22)
        .to_port(22)
        .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    world.ec2().authorize_security_group_ingress().group_id(&group).ip_permissions(open).send().await.expect("open");
    world.wait_event("Warning", "DriftDetected", "0.0.0.0/0").await;
    let drifted = wait_condition(&world.bastions(), "jump", "Ready", "False", "Drifted").await;
    let drifted: Bastion = serde_json::from_value(drifted).expect("Bastion");
    let plan = plan_of(&drifted);
    assert_eq!(plan.changes.len(), 1, "{plan:?}");
    let revoke = &plan.changes[0];
    assert_eq!((revoke.resource.as_str(), revoke.id.as_deref()), ("ec2:SecurityGroupIngress", Some(group.as_str())));
    assert_eq!(revoke.detail, "revoke tcp/22 from 0.0.0.0/0");

    wait_passes(&proxy, 2).await;
    assert_eq!(proxy.mutations(), before, "ObserveOnly made an AWS mutation");
    let open_rule = ("tcp".to_string(), Some(22), Some(22), "0.0.0.0/0".to_string());
    assert!(world.ingress(&group).await.contains(&open_rule), "the rule opened by hand is still there");
    assert!(!world.event_notes().await.iter().any(|(_, reason, _)| reason == "DriftRepaired"), "nothing was repaired");

    // Nor while the Stack lacks its subnets (where a Full Bastion still revokes such a rule).
    let stacks = Api::<Stack>::namespaced(world.client.clone(), &world.ns.name);
    let not_ready = json!({"type": "Ready", "status": "False", "reason": "Fixture", "message": "failing, as a test",
        "lastTransitionTime": Timestamp::now().to_string(), "observedGeneration": 1});
    write_status(&stacks, &world.stack, &json!({"status": {"subnets": null, "conditions": [not_ready]}})).await;
    eventually("the Bastion holding while its Stack lacks its subnets", READY, || async {
        let b = world.bastions().get("jump").await.map_err(|e| e.to_string())?;
        let ready = condition(&serde_json::to_value(&b).map_err(|e| e.to_string())?, "Ready");
        match ready {
            Some(c)
                if c["reason"] == "Drifted"
                    && c["message"].as_str().is_some_and(|m| m.contains("waiting for Stack")) =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    wait_passes(&proxy, 2).await;
    assert_eq!(proxy.mutations(), before, "ObserveOnly made an AWS mutation while the Stack lacked its subnets");
    assert!(world.ingress(&group).await.contains(&open_rule), "the rule opened by hand is still there");

    world.delete("jump").await;
    world.wait_gone("jump").await;
    let note = world.wait_event("Normal", "Retained", &group).await;
    assert!(note.contains("ec2:Instance") && note.contains("iam:Role"), "{note}");
    assert_eq!(proxy.mutations(), before, "deleting an ObserveOnly Bastion made an AWS mutation");
    let (instances, _, groups, roles, _) = world.leftovers().await;
    assert_eq!((instances.len(), groups.len(), roles.len()), (1, 1, 1), "its AWS resources are left");
}
