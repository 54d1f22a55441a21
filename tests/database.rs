//! The Database against the real API server and moto, with the real operator binary: placement and
//! guarantees in RDS and EC2, both secrets, `envFrom`, the password kept out of every log line,
//! event and status, drift repair, in-place changes, the three deletion policies, a crash after
//! every mutating call, an instance that RDS (through a fault-injecting proxy) keeps `creating`,
//! and a Database made while its real Stack still waits for its NAT gateway.
//!
//! Each test gets a namespace and an AWS account of its own. The Stack and the AwsAccountLink are
//! fixtures: paused (the operator makes no AWS call for them and keeps their `Ready`), with the
//! network made here in moto and their status written here, so that these tests depend only on
//! the Database's code.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use aws_config::SdkConfig;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tinystacks_operator::api::{AwsAccountLink, Bastion, Database, Stack};

use common::fault_proxy::FaultProxy;
use common::moto::{account_config, new_account_id, role_arn};
use common::secrets::base64;
use common::*;

const READY: Duration = Duration::from_secs(90);
const FAILPOINT: &str = "TINYSTACKS_FAILPOINT_EXIT_AFTER_MUTATIONS";

/// One test's world: its namespace, AWS account, fixture network, link and Stack.
struct World {
    client: Client,
    ns: TestNamespace,
    aws: SdkConfig,
    link: String,
    stack: String,
    net: Network,
    account: String,
}

impl World {
    async fn new(pattern: &str) -> Self {
        let mut world = Self::linked().await;
        world.net = network(&world.aws, pattern).await;
        world.fixture_stack(pattern).await;
        world
    }

    /// A namespace, an account and a fixture link, but no Stack yet (its network is empty).
    async fn linked() -> Self {
        let client = client().await;
        install_crds(&client).await;
        let ns = TestNamespace::new(&client, "db").await;
        let account = new_account_id();
        let aws = account_config(&account).await;
        let link = format!("db-link-{}", suffix());
        let stack = "web".to_string();
        let world = Self { client, ns, aws, link, stack, net: Network::default(), account: account.clone() };
        world.fixture_link(&account).await;
        world
    }

    fn rds(&self) -> aws_sdk_rds::Client {
        aws_sdk_rds::Client::new(&self.aws)
    }
    fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.aws)
    }
    fn secrets(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.aws)
    }
    fn databases(&self) -> Api<Database> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    async fn fixture_link(&self, account: &str) {
        let link: AwsAccountLink = serde_json::from_value(json!({
            "apiVersion": "tinystacks.io/v1alpha1", "kind": "AwsAccountLink",
            "metadata": {"name": self.link, "annotations": {"tinystacks.io/paused": "true"}},
            "spec": {"accountId": account, "region": "us-east-1", "allowedNamespaces": [self.ns.name]},
        }))
        .expect("link");
        let api = Api::<AwsAccountLink>::all(self.client.clone());
        api.create(&PostParams::default(), &link).await.expect("create link");
        let status = json!({"status": {
            "externalId": "tinystacks-tests-external-id-0123456789",
            "roleArn": role_arn(account),
            "conditions": [ready_condition()],
            "observedGeneration": 1,
        }});
        write_status(&api, &self.link, &status).await;
    }

    async fn fixture_stack(&self, pattern: &str) {
        let stack: Stack = serde_json::from_value(json!({
            "apiVersion": "tinystacks.io/v1alpha1", "kind": "Stack",
            "metadata": {"name": self.stack, "annotations": {"tinystacks.io/paused": "true"}},
            "spec": {"accountLinkRef": {"name": self.link}, "network": {"pattern": pattern}, "tags": {"team": "tests"}},
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

    async fn database(&self, name: &str, spec: Value) {
        let mut full = json!({"stackRef": {"name": self.stack}});
        if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            full.extend(extra.clone());
        }
        let db: Database = serde_json::from_value(json!({
            "apiVersion": "tinystacks.io/v1alpha1", "kind": "Database", "metadata": {"name": name}, "spec": full,
        }))
        .expect("database");
        self.databases().create(&PostParams::default(), &db).await.expect("create database");
    }

    /// A paused Bastion of the Stack whose status names `group`, as the Bastion's own reconcile
    /// would.
    async fn bastion(&self, name: &str, group: &str) {
        let bastion: Bastion = serde_json::from_value(json!({
            "apiVersion": "tinystacks.io/v1alpha1", "kind": "Bastion",
            "metadata": {"name": name, "annotations": {"tinystacks.io/paused": "true"}},
            "spec": {"stackRef": {"name": self.stack}},
        }))
        .expect("bastion");
        let api = Api::<Bastion>::namespaced(self.client.clone(), &self.ns.name);
        api.create(&PostParams::default(), &bastion).await.expect("create bastion");
        let status = json!({"status": {"securityGroupId": group}});
        write_status(&api, name, &status).await;
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

    async fn wait_ready(&self, name: &str) -> Database {
        wait_ready_within(&self.databases(), name, READY).await
    }

    async fn wait_gone(&self, name: &str) {
        wait_gone_within(&self.databases(), name, READY).await
    }

    async fn delete(&self, name: &str) {
        self.databases().delete(name, &DeleteParams::default()).await.expect("delete database");
    }

    async fn instance(&self, id: &str) -> Option<aws_sdk_rds::types::DbInstance> {
        self.rds()
            .describe_db_instances()
            .db_instance_identifier(id)
            .send()
            .await
            .ok()
            .and_then(|o| o.db_instances().first().cloned())
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

    async fn secret_json(&self, id: &str) -> Value {
        let out = self.secrets().get_secret_value().secret_id(id).send().await.expect("secret value");
        serde_json::from_str(out.secret_string().expect("a string secret")).expect("secret JSON")
    }

    async fn event_notes(&self) -> Vec<(String, String, String)> {
        event_notes(&self.client, &self.ns.name).await
    }

    async fn wait_event(&self, type_: &str, reason: &str, contains: &str) -> String {
        wait_event_note(&self.client, &self.ns.name, (type_, reason, contains), READY).await
    }

    async fn event_count(&self, type_: &str, reason: &str) -> i32 {
        event_count(&self.client, &self.ns.name, type_, reason).await
    }

    /// Waits until the event was reported more than `before` times.
    async fn wait_event_count(&self, type_: &str, reason: &str, before: i32) {
        eventually(&format!("another {type_} event {reason}"), READY, || async {
            let now = self.event_count(type_, reason).await;
            if now > before { Ok(()) } else { Err(format!("{now} reported")) }
        })
        .await;
    }

    /// The resources the operator made in the account: (instances, secrets, subnet groups, the
    /// security groups it tagged).
    async fn inventory(&self) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
        let rds = self.rds();
        let instances = rds.describe_db_instances().send().await.expect("instances");
        let groups = rds.describe_db_subnet_groups().send().await.expect("subnet groups");
        let secrets = self.secrets().list_secrets().send().await.expect("secrets");
        let sgs = self
            .ec2()
            .describe_security_groups()
            .filters(aws_sdk_ec2::types::Filter::builder().name("tag-key").values("tinystacks.io/owner-uid").build())
            .send()
            .await
            .expect("security groups");
        (
            instances.db_instances().iter().filter_map(|i| i.db_instance_identifier().map(str::to_string)).collect(),
            secrets.secret_list().iter().filter_map(|s| s.name().map(str::to_string)).collect(),
            groups.db_subnet_groups().iter().filter_map(|g| g.db_subnet_group_name().map(str::to_string)).collect(),
            sgs.security_groups().iter().filter_map(|g| g.group_id().map(str::to_string)).collect(),
        )
    }
}

/// Everything the operator said about the namespace's objects: its log, the events, the objects.
async fn everything_said(world: &World, operator: &Operator) -> String {
    let mut all = operator.logs();
    all.push_str(&format!("{:?}", world.event_notes().await));
    let dbs = world.databases().list(&Default::default()).await.expect("databases");
    all.push_str(&serde_json::to_string(&dbs).unwrap_or_default());
    all
}

#[tokio::test]
async fn ready_database_is_private_encrypted_and_reachable_through_env_from() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    let bastion_group = group(&world.aws, &world.net.vpc, "bastion").await;
    world.bastion("ops", &bastion_group).await;
    world.database("orders", json!({"deletionPolicy": "Delete"})).await;
    let operator = world.operator(&[]);

    let db = world.wait_ready("orders").await;
    let status = db.status.clone().expect("status");
    let id = status.db_instance_identifier.clone().expect("identifier");
    assert!(id.starts_with(&format!("{}-web-orders-", world.ns.name)) && id.len() <= 63, "{id}");

    // The instance: private, encrypted with the stack's key, protected, in its own group.
    let instance = world.instance(&id).await.expect("the instance in RDS");
    assert_eq!(instance.publicly_accessible(), Some(false));
    assert_eq!(instance.storage_encrypted(), Some(true));
    assert_eq!(instance.kms_key_id(), Some(world.net.kms_key_arn.as_str()));
    assert_eq!(instance.deletion_protection(), Some(true));
    assert_eq!(instance.engine(), Some("postgres"));
    let db_group = status.security_group_id.clone().expect("securityGroupId");
    let groups: Vec<&str> = instance.vpc_security_groups().iter().filter_map(|g| g.vpc_security_group_id()).collect();
    assert_eq!(groups, [db_group.as_str()]);
    let subnet_group = instance.db_subnet_group().expect("subnet group");
    assert_eq!(subnet_group.db_subnet_group_name(), status.subnet_group_name.as_deref());
    let subnets: BTreeSet<String> =
        subnet_group.subnets().iter().filter_map(|s| s.subnet_identifier().map(str::to_string)).collect();
    assert_eq!(subnets, world.net.database_subnets, "exactly the stack's private subnets");
    let tags: Vec<(String, String)> = instance
        .tag_list()
        .iter()
        .map(|t| (t.key().unwrap_or_default().to_string(), t.value().unwrap_or_default().to_string()))
        .collect();
    for (k, v) in [
        ("tinystacks.io/managed-by", "tinystacks-operator".to_string()),
        ("tinystacks.io/owner", format!("Database/{}/orders", world.ns.name)),
        ("tinystacks.io/owner-uid", db.uid().unwrap_or_default()),
        ("team", "tests".to_string()),
    ] {
        assert!(tags.contains(&(k.to_string(), v.clone())), "tag {k}={v} in {tags:?}");
    }

    // The dedicated group admits 5432 from the app and bastion groups and nothing else.
    let expected: BTreeSet<_> = [&world.net.app_group, &bastion_group]
        .into_iter()
        .map(|g| ("tcp".to_string(), Some(5432), Some(5432), g.clone()))
        .collect();
    assert_eq!(world.ingress(&db_group).await, expected);

    // The Secrets Manager secret matches the instance and is encrypted with the stack's key.
    let secret_name = format!("tinystacks/{}/web/orders", world.ns.name);
    let described = world.secrets().describe_secret().secret_id(&secret_name).send().await.expect("secret");
    assert_eq!(described.kms_key_id(), Some(world.net.kms_key_arn.as_str()));
    assert_eq!(status.secret_arn.as_deref(), described.arn());
    let doc = world.secret_json(&secret_name).await;
    let endpoint = instance.endpoint().expect("endpoint");
    assert_eq!(doc["engine"], "postgres");
    assert_eq!(doc["host"], endpoint.address().unwrap_or_default());
    assert_eq!(doc["port"], endpoint.port().unwrap_or_default());
    assert_eq!(doc["username"], "app");
    assert_eq!(doc["dbname"], "app");
    assert_eq!(doc["dbInstanceIdentifier"], id.as_str());
    let password = doc["password"].as_str().expect("password").to_string();
    assert!(password.len() >= 32 && password.chars().all(|c| c.is_ascii_alphanumeric()), "URL- and shell-safe");
    let endpoint_status = status.endpoint.clone().expect("status.endpoint");
    assert_eq!(Some(endpoint_status.address.as_str()), endpoint.address());

    // The connection Secret: owned by the Database, every key, a URL that parses.
    let secrets = Api::<Secret>::namespaced(world.client.clone(), &world.ns.name);
    let k8s = secrets.get("orders-connection").await.expect("connection Secret");
    let owner = &k8s.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("Database", Some(true)));
    let data = k8s.data.clone().unwrap_or_default();
    let get = |k: &str| String::from_utf8(data.get(k).map(|v| v.0.clone()).unwrap_or_default()).unwrap_or_default();
    assert_eq!(get("PG_HOST"), endpoint.address().unwrap_or_default());
    assert_eq!(get("PG_PORT"), "5432");
    assert_eq!(get("PG_DATABASE"), "app");
    assert_eq!(get("PG_USER"), "app");
    assert_eq!(get("PG_PASSWORD"), password);
    assert_eq!(Some(get("PG_CREDENTIALS_SECRET").as_str()), described.arn());
    let url = url::Url::parse(&get("DATABASE_URL")).expect("DATABASE_URL parses");
    assert_eq!(url.scheme(), "postgres");
    assert_eq!((url.username(), url.password()), ("app", Some(password.as_str())));
    assert_eq!(url.host_str(), endpoint.address());
    assert_eq!(url.port(), Some(5432));
    assert_eq!(url.path(), "/app");
    assert_eq!(url.query(), Some("sslmode=require"));

    // A Pod taking the Secret with envFrom is accepted by the API server.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orders-api"},
        "spec": {"automountServiceAccountToken": false, "containers": [{"name": "api", "image": "example/orders-api:1",
            "envFrom": [{"secretRef": {"name": "orders-connection"}}]}]},
    }))
    .expect("pod");
    let pods = Api::<Pod>::namespaced(world.client.clone(), &world.ns.name);
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    eventually("the Pod to be accepted (server-side dry run)", Duration::from_secs(30), || async {
        pods.create(&dry_run, &pod).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;

    // Deletion (policy Delete) leaves nothing behind, and the password was never said anywhere.
    world.delete("orders").await;
    world.wait_gone("orders").await;
    let (instances, secrets_left, subnet_groups, sgs) = world.inventory().await;
    assert!(
        instances.is_empty() && secrets_left.is_empty() && subnet_groups.is_empty() && sgs.is_empty(),
        "left behind: {instances:?} {secrets_left:?} {subnet_groups:?} {sgs:?}"
    );
    let said = everything_said(&world, &operator).await;
    assert!(said.contains("DeletingDbInstance"), "the log and events were scanned");
    for reason in ["CreatedSecurityGroup", "CreatingDbInstance", "WroteConnectionSecret", "DeletingDbInstance"] {
        assert!(logged_change(&operator.logs(), "Database", "orders", reason), "{reason} is not logged at info");
    }
    assert!(!said.contains(&password), "the password appears in a log line, event or status");
    assert!(!said.contains(&base64(password.as_bytes())), "the password appears base64-encoded");
}

#[tokio::test]
async fn isolated_stack_puts_the_database_in_isolated_subnets_and_snapshot_keeps_a_final_snapshot() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PrivateIsolated").await;
    world.database("ledger", json!({"connectionSecret": {"name": "ledger-pg"}})).await;
    let _operator = world.operator(&[]);
    let db = world.wait_ready("ledger").await;
    let id = db.status.as_ref().and_then(|s| s.db_instance_identifier.clone()).expect("identifier");
    let instance = world.instance(&id).await.expect("instance");
    let subnets: BTreeSet<String> = instance
        .db_subnet_group()
        .map(|g| g.subnets().iter().filter_map(|s| s.subnet_identifier().map(str::to_string)).collect())
        .unwrap_or_default();
    assert_eq!(subnets, world.net.database_subnets, "exactly the stack's isolated subnets");
    let secrets = Api::<Secret>::namespaced(world.client.clone(), &world.ns.name);
    assert!(secrets.get_opt("ledger-pg").await.expect("get").is_some(), "connectionSecret.name is honoured");

    world.delete("ledger").await;
    let note = world.wait_event("Normal", "DeletingDbInstance", "final snapshot").await;
    world.wait_gone("ledger").await;
    let snapshot = note.rsplit(' ').next().expect("the snapshot's name ends the event").to_string();
    let snapshots = world.rds().describe_db_snapshots().db_snapshot_identifier(&snapshot).send().await;
    let found = snapshots.map(|s| s.db_snapshots().len()).unwrap_or(0);
    assert_eq!(found, 1, "final snapshot {snapshot} exists");
    let (instances, secrets_left, subnet_groups, sgs) = world.inventory().await;
    assert!(instances.is_empty() && secrets_left.is_empty() && subnet_groups.is_empty() && sgs.is_empty());
}

#[tokio::test]
async fn retain_leaves_the_instance_and_its_secret() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    world.database("keep", json!({"deletionPolicy": "Retain"})).await;
    let _operator = world.operator(&[]);
    let db = world.wait_ready("keep").await;
    let id = db.status.as_ref().and_then(|s| s.db_instance_identifier.clone()).expect("identifier");
    world.delete("keep").await;
    world.wait_gone("keep").await;
    let instance = world.instance(&id).await.expect("the instance is retained");
    assert_eq!(instance.deletion_protection(), Some(true), "still protected");
    let (_, secrets, _, _) = world.inventory().await;
    assert_eq!(secrets, [format!("tinystacks/{}/web/keep", world.ns.name)]);
}

#[tokio::test]
async fn drift_is_repaired_and_bastions_come_and_go() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    world.database("drifty", json!({"deletionPolicy": "Delete"})).await;
    let _operator = world.operator(&[]);
    let db = world.wait_ready("drifty").await;
    let status = db.status.clone().expect("status");
    let id = status.db_instance_identifier.clone().expect("identifier");
    let db_group = status.security_group_id.clone().expect("group");
    let rds = world.rds();

    // PubliclyAccessible turned on by hand.
    rds.modify_db_instance()
        .db_instance_identifier(&id)
        .publicly_accessible(true)
        .apply_immediately(true)
        .send()
        .await
        .expect("modify");
    world.wait_event("Warning", "DriftRepaired", "PubliclyAccessible").await;
    let repaired = world.event_count("Warning", "DriftRepaired").await;
    eventually("PubliclyAccessible=false again", READY, || async {
        let public = world.instance(&id).await.and_then(|i| i.publicly_accessible());
        if public == Some(false) { Ok(()) } else { Err(format!("{public:?}")) }
    })
    .await;

    // The security group swapped for an open one.
    let rogue = group(&world.aws, &world.net.vpc, "rogue").await;
    rds.modify_db_instance()
        .db_instance_identifier(&id)
        .vpc_security_group_ids(&rogue)
        .apply_immediately(true)
        .send()
        .await
        .expect("swap");
    world.wait_event_count("Warning", "DriftRepaired", repaired).await;
    let repaired = world.event_count("Warning", "DriftRepaired").await;
    eventually("only the database's group again", READY, || async {
        let groups: Vec<String> = world
            .instance(&id)
            .await
            .map(|i| {
                i.vpc_security_groups().iter().filter_map(|g| g.vpc_security_group_id().map(str::to_string)).collect()
            })
            .unwrap_or_default();
        if groups == [db_group.clone()] { Ok(()) } else { Err(format!("{groups:?}")) }
    })
    .await;

    // 5432 opened to the world on the database's group.
    let open = aws_sdk_ec2::types::IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(5432)
        .to_port(5432)
        .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    world.ec2().authorize_security_group_ingress().group_id(&db_group).ip_permissions(open).send().await.expect("open");
    world.wait_event_count("Warning", "DriftRepaired", repaired).await;
    let only_app: BTreeSet<_> = [("tcp".to_string(), Some(5432), Some(5432), world.net.app_group.clone())].into();
    eventually("only 5432 from the app group again", READY, || async {
        let rules = world.ingress(&db_group).await;
        if rules == only_app { Ok(()) } else { Err(format!("{rules:?}")) }
    })
    .await;

    // A Bastion of the Stack gets 5432; once it goes, its rule goes too.
    let bastion_group = group(&world.aws, &world.net.vpc, "bastion").await;
    world.bastion("ops", &bastion_group).await;
    let mut with_bastion = only_app.clone();
    with_bastion.insert(("tcp".to_string(), Some(5432), Some(5432), bastion_group.clone()));
    eventually("5432 from the bastion's group", READY, || async {
        let rules = world.ingress(&db_group).await;
        if rules == with_bastion { Ok(()) } else { Err(format!("{rules:?}")) }
    })
    .await;
    Api::<Bastion>::namespaced(world.client.clone(), &world.ns.name)
        .delete("ops", &DeleteParams::default())
        .await
        .expect("delete bastion");
    eventually("the bastion's rule revoked", READY, || async {
        let rules = world.ingress(&db_group).await;
        if rules == only_app { Ok(()) } else { Err(format!("{rules:?}")) }
    })
    .await;

    // The connection Secret deleted by hand comes back.
    let secrets = Api::<Secret>::namespaced(world.client.clone(), &world.ns.name);
    secrets.delete("drifty-connection", &DeleteParams::default()).await.expect("delete Secret");
    eventually("the connection Secret back", READY, || async {
        match secrets.get_opt("drifty-connection").await {
            Ok(Some(s)) if s.data.as_ref().is_some_and(|d| d.contains_key("DATABASE_URL")) => Ok(()),
            other => Err(format!("{:?}", other.map(|s| s.map(|s| s.name_any())))),
        }
    })
    .await;
    world.wait_ready("drifty").await;

    world.delete("drifty").await;
    world.wait_gone("drifty").await;
}

#[tokio::test]
async fn in_place_changes_reach_rds() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    world.database("grow", json!({"deletionPolicy": "Delete"})).await;
    let _operator = world.operator(&[]);
    let db = world.wait_ready("grow").await;
    let id = db.status.as_ref().and_then(|s| s.db_instance_identifier.clone()).expect("identifier");

    let spec = json!({"spec": {"instanceClass": "db.t4g.small", "allocatedStorageGiB": 30, "multiAz": true,
        "backupRetentionDays": 3, "engineVersion": "17"}});
    world.databases().patch("grow", &PatchParams::default(), &Patch::Merge(&spec)).await.expect("change spec");
    world.wait_event("Normal", "ModifyingDbInstance", "db.t4g.small").await;
    eventually("every change in RDS", READY, || async {
        let i = world.instance(&id).await.ok_or("no instance")?;
        let got = (
            i.db_instance_class(),
            i.allocated_storage(),
            i.multi_az(),
            i.backup_retention_period(),
            i.engine_version(),
        );
        if got == (Some("db.t4g.small"), Some(30), Some(true), Some(3), Some("17")) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    world.wait_ready("grow").await;

    world.delete("grow").await;
    world.wait_gone("grow").await;
}

/// Runs operators armed to exit right after their first mutating AWS call until `done` holds;
/// returns how many of them crashed.
async fn crash_until<F, Fut>(world: &World, what: &str, done: F) -> usize
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    crash_until_done(|| world.operator(&[(FAILPOINT, "1")]), what, 30, READY, done).await
}

#[tokio::test]
async fn a_crash_after_every_mutating_call_converges_to_one_of_each() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    world.database("crashy", json!({"deletionPolicy": "Delete"})).await;

    let api = world.databases();
    let ready = || async {
        api.get("crashy")
            .await
            .ok()
            .and_then(|d| serde_json::to_value(&d).ok())
            .and_then(|v| condition(&v, "Ready"))
            .is_some_and(|c| c["status"] == "True")
    };
    let crashes = crash_until(&world, "create", ready).await;
    // Security group, its ingress, subnet group, secret, instance, the secret's endpoint.
    assert!(crashes >= 6, "a crash after each mutating call of create ({crashes})");
    let (instances, secrets, subnet_groups, sgs) = world.inventory().await;
    assert_eq!(
        (instances.len(), secrets.len(), subnet_groups.len(), sgs.len()),
        (1, 1, 1, 1),
        "{instances:?} {secrets:?} {subnet_groups:?} {sgs:?}"
    );
    // One password, ever: every version of the secret holds the same one.
    let name = &secrets[0];
    let versions = world.secrets().list_secret_version_ids().secret_id(name).send().await.expect("versions");
    let mut passwords = BTreeSet::new();
    for v in versions.versions() {
        let value = world
            .secrets()
            .get_secret_value()
            .secret_id(name)
            .version_id(v.version_id().unwrap_or_default())
            .send()
            .await
            .expect("value");
        let doc: Value = serde_json::from_str(value.secret_string().unwrap_or_default()).expect("JSON");
        passwords.insert(doc["password"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(passwords.len(), 1, "one password across {} versions", versions.versions().len());

    world.delete("crashy").await;
    let gone = || async { matches!(api.get_opt("crashy").await, Ok(None)) };
    let crashes = crash_until(&world, "delete", gone).await;
    // Deletion protection, instance, security group, subnet group, secret.
    assert!(crashes >= 5, "a crash after each mutating call of delete ({crashes})");
    let (instances, secrets, subnet_groups, sgs) = world.inventory().await;
    assert!(
        instances.is_empty() && secrets.is_empty() && subnet_groups.is_empty() && sgs.is_empty(),
        "left behind: {instances:?} {secrets:?} {subnet_groups:?} {sgs:?}"
    );
}

#[tokio::test]
async fn an_instance_rds_keeps_creating_shows_reconciling_then_ready_without_a_second_create() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = FaultProxy::start(&moto).await;
    proxy.rewrite(
        "DescribeDBInstances",
        "<DBInstanceStatus>available</DBInstanceStatus>",
        "<DBInstanceStatus>creating</DBInstanceStatus>",
        4,
    );
    proxy.answer_db_creates_as_creating();
    world.database("slow", json!({"deletionPolicy": "Delete"})).await;
    let _operator = world.operator(&[("AWS_ENDPOINT_URL", proxy.url.as_str())]);

    let api = world.databases();
    let reconciling = eventually("Reconciling with RDS's status", READY, || async {
        let value =
            serde_json::to_value(api.get("slow").await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        match condition(&value, "Reconciling") {
            Some(c) if c["status"] == "True" && c["message"].as_str().is_some_and(|m| m.contains("creating")) => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(reconciling["reason"], "InstanceNotAvailable");
    world.wait_ready("slow").await;
    assert_eq!(proxy.rewritten("DescribeDBInstances"), 4, "RDS said creating four times");
    assert_eq!(proxy.count("CreateDBInstance"), 1, "no repeated create");

    world.delete("slow").await;
    world.wait_gone("slow").await;
}

/// Waits for `Stalled=True` with `reason`, and a message holding every one of `words`.
async fn wait_stalled(world: &World, name: &str, reason: &str, words: &[&str]) -> Value {
    let api = world.databases();
    eventually(&format!("Database {name} Stalled ({reason})"), READY, || async {
        let value = serde_json::to_value(api.get(name).await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        match condition(&value, "Stalled") {
            Some(c)
                if c["status"] == "True"
                    && c["reason"] == reason
                    && words.iter().all(|w| c["message"].as_str().is_some_and(|m| m.contains(w))) =>
            {
                Ok(c)
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// An engine version or instance class RDS does not offer can never pass: `Stalled`, the spec
/// field named, no retry until the spec changes. moto accepts any version and class; the proxy
/// answers as RDS does (its API reference lists `InvalidParameterCombination`, HTTP 400, among the
/// common errors): CreateDBInstance with an unknown version gets "Cannot find version 16.99 for
/// postgres", and a class the engine version is not offered on gets "RDS does not support creating
/// a DB instance with the following combination: DBInstanceClass=..., Engine=postgres, ...".
#[tokio::test]
async fn an_engine_version_or_class_rds_does_not_offer_stalls_naming_the_field_until_the_spec_changes() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = FaultProxy::start(&moto).await;
    proxy.refuse(
        "CreateDBInstance",
        "EngineVersion=16.99",
        "InvalidParameterCombination",
        "Cannot find version 16.99 for postgres",
    );
    proxy.refuse(
        "ModifyDBInstance",
        "DBInstanceClass=db.t4g.nope",
        "InvalidParameterCombination",
        "RDS does not support creating a DB instance with the following combination: DBInstanceClass=db.t4g.nope, Engine=postgres, EngineVersion=16.4, LicenseModel=postgresql-license. For supported combinations of instance class and database engine version, see the documentation.",
    );
    world.database("faulty", json!({"engineVersion": "16.99", "deletionPolicy": "Delete"})).await;
    let operator = world.operator(&[("AWS_ENDPOINT_URL", proxy.url.as_str())]);

    let stalled =
        wait_stalled(&world, "faulty", "AwsRejectedValue", &["Cannot find version 16.99", "set spec.engineVersion"])
            .await;
    let ready =
        condition(&serde_json::to_value(world.databases().get("faulty").await.expect("get")).expect("json"), "Ready");
    assert_eq!(ready.map(|c| c["status"].clone()), Some(json!("False")), "{stalled}");
    // Sent once: the passes the watches wake afterwards (the Stalled status write itself, the
    // Stack it references) send nothing for the same spec; nor in three resync periods (2 s) and
    // more than a transient error's first backoff steps (1, 2, 4 s). A stalled object waits for a
    // change, so the clock is the paused fixture Stack, which the operator reconciles once per
    // resync.
    wait_reconciles(&operator, "Stack", 2.0).await;
    let creates = proxy.count("CreateDBInstance");
    assert_eq!(creates, 1, "CreateDBInstance was sent again for the spec RDS refused");
    wait_reconciles(&operator, "Stack", 4.0).await;
    assert_eq!(proxy.count("CreateDBInstance"), creates, "CreateDBInstance was tried again with the same spec");

    // A version RDS offers: created, Ready.
    let spec = json!({"spec": {"engineVersion": "16.4"}});
    world.databases().patch("faulty", &PatchParams::default(), &Patch::Merge(&spec)).await.expect("change spec");
    world.wait_ready("faulty").await;

    // A class the version is not offered on: ModifyDBInstance refused, the class named.
    let spec = json!({"spec": {"instanceClass": "db.t4g.nope"}});
    world.databases().patch("faulty", &PatchParams::default(), &Patch::Merge(&spec)).await.expect("change spec");
    wait_stalled(&world, "faulty", "AwsRejectedValue", &["DBInstanceClass=db.t4g.nope", "set spec.instanceClass"])
        .await;
    let spec = json!({"spec": {"instanceClass": "db.t4g.micro"}});
    world.databases().patch("faulty", &PatchParams::default(), &Patch::Merge(&spec)).await.expect("change spec");
    world.wait_ready("faulty").await;

    world.delete("faulty").await;
    world.wait_gone("faulty").await;
}

#[tokio::test]
async fn with_the_real_stack_the_database_lands_in_its_private_side_and_the_stack_waits_for_it() {
    let _lock = OPERATOR_LOCK.lock().await;
    let mut world = World::linked().await;
    let stack: Stack = serde_json::from_value(json!({
        "apiVersion": "tinystacks.io/v1alpha1", "kind": "Stack", "metadata": {"name": world.stack},
        "spec": {"accountLinkRef": {"name": world.link}, "network": {"pattern": "PublicPrivate", "natGateways": "None", "vpcLink": false}},
    }))
    .expect("stack");
    let stacks = Api::<Stack>::namespaced(world.client.clone(), &world.ns.name);
    stacks.create(&PostParams::default(), &stack).await.expect("create stack");
    world.database("orders", json!({"deletionPolicy": "Delete"})).await;
    let _operator = world.operator(&[]);

    let db = world.wait_ready("orders").await;
    let stack = stacks.get(&world.stack).await.expect("stack");
    let stack_status = stack.status.clone().expect("stack status");
    world.net.database_subnets = stack_status
        .subnets
        .iter()
        .filter(|s| s.tier == tinystacks_operator::api::SubnetTier::Private)
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(world.net.database_subnets.len(), 2);
    let id = db.status.as_ref().and_then(|s| s.db_instance_identifier.clone()).expect("identifier");
    let instance = world.instance(&id).await.expect("instance");
    let subnets: BTreeSet<String> = instance
        .db_subnet_group()
        .map(|g| g.subnets().iter().filter_map(|s| s.subnet_identifier().map(str::to_string)).collect())
        .unwrap_or_default();
    assert_eq!(subnets, world.net.database_subnets, "the Stack's private subnets");
    assert_eq!(instance.kms_key_id(), stack_status.kms_key_arn.as_deref(), "the Stack's key");
    let db_group = db.status.as_ref().and_then(|s| s.security_group_id.clone()).expect("group");
    let app = stack_status.app_security_group_id.clone().expect("app group");
    assert_eq!(world.ingress(&db_group).await, [("tcp".to_string(), Some(5432), Some(5432), app)].into());

    // The Stack waits for its Database; then both go, and nothing of either is left.
    stacks.delete(&world.stack, &DeleteParams::default()).await.expect("delete stack");
    wait_condition_for(&stacks, &world.stack, "Ready", "False", "DependentsExist", READY).await;
    assert!(stacks.get_opt(&world.stack).await.expect("get").is_some(), "the Stack waits for its Database");
    world.delete("orders").await;
    world.wait_gone("orders").await;
    eventually("the Stack gone", READY, || async {
        match stacks.get_opt(&world.stack).await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|s| s.and_then(|s| s.status).map(|s| s.conditions)))),
        }
    })
    .await;
    let (instances, secrets, subnet_groups, sgs) = world.inventory().await;
    assert!(
        instances.is_empty() && secrets.is_empty() && subnet_groups.is_empty() && sgs.is_empty(),
        "left behind: {instances:?} {secrets:?} {subnet_groups:?} {sgs:?}"
    );
}

/// API.md "Order and references": a Database (and a Bastion) starts on what it needs of its
/// Stack, not on the whole Stack being Ready. With the proxy holding the Stack's NAT gateway
/// `pending` (the Stack waits for it to route the private side), the Database's instance is made
/// in RDS and the Database and the Bastion reach Ready while the Stack is still `Ready=False`,
/// reason `WaitingForAws`.
#[tokio::test]
async fn the_database_and_bastion_start_on_the_stack_parts_they_need_not_its_nat_gateway() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::linked().await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = FaultProxy::start(&moto).await;
    let pending = ("<state>pending</state>", "<state>available</state>");
    proxy.rewrite("CreateNatGateway", pending.1, pending.0, usize::MAX);
    proxy.rewrite("DescribeNatGateways", pending.1, pending.0, usize::MAX);
    let stack: Stack = serde_json::from_value(json!({
        "apiVersion": "tinystacks.io/v1alpha1", "kind": "Stack", "metadata": {"name": world.stack},
        "spec": {"accountLinkRef": {"name": world.link}, "network": {"pattern": "PublicPrivate", "natGateways": "Single", "vpcLink": false}},
    }))
    .expect("stack");
    let stacks = Api::<Stack>::namespaced(world.client.clone(), &world.ns.name);
    stacks.create(&PostParams::default(), &stack).await.expect("create stack");
    world.database("orders", json!({"deletionPolicy": "Delete"})).await;
    let bastion: Bastion = serde_json::from_value(json!({
        "apiVersion": "tinystacks.io/v1alpha1", "kind": "Bastion", "metadata": {"name": "ops"},
        "spec": {"stackRef": {"name": world.stack}},
    }))
    .expect("bastion");
    let bastions = Api::<Bastion>::namespaced(world.client.clone(), &world.ns.name);
    bastions.create(&PostParams::default(), &bastion).await.expect("create bastion");
    let _operator = world.operator(&[("AWS_ENDPOINT_URL", proxy.url.as_str())]);

    let db = world.wait_ready("orders").await;
    let ops = wait_ready_within(&bastions, "ops", READY).await;
    // Observed, not timed: the NAT gateway is still held, so the Stack cannot be Ready.
    let waiting =
        condition(&serde_json::to_value(stacks.get(&world.stack).await.expect("stack")).expect("json"), "Ready")
            .expect("the Stack's Ready");
    assert_eq!((waiting["status"].as_str(), waiting["reason"].as_str()), (Some("False"), Some("WaitingForAws")));
    assert!(waiting["message"].as_str().is_some_and(|m| m.contains("nat")), "{waiting}");
    let id = db.status.as_ref().and_then(|s| s.db_instance_identifier.clone()).expect("identifier");
    let instance = world.instance(&id).await.expect("the instance in RDS");
    let stack_status = stacks.get(&world.stack).await.expect("stack").status.expect("stack status");
    assert!(stack_status.nat_gateway_ids.len() == 1, "{stack_status:?}");
    assert_eq!(instance.kms_key_id(), stack_status.kms_key_arn.as_deref(), "the Stack's key");
    let instance_id = ops.status.as_ref().and_then(|s| s.instance_id.clone()).expect("the Bastion's instance");
    let private: BTreeSet<&str> = stack_status
        .subnets
        .iter()
        .filter(|s| s.tier == tinystacks_operator::api::SubnetTier::Private)
        .map(|s| s.id.as_str())
        .collect();
    let reservations =
        world.ec2().describe_instances().instance_ids(&instance_id).send().await.expect("the Bastion's instance");
    let subnet = reservations.reservations().iter().flat_map(|r| r.instances()).find_map(|i| i.subnet_id());
    assert!(subnet.is_some_and(|s| private.contains(s)), "{subnet:?} is not one of {private:?}");

    // Once the NAT gateway is available, the Stack is Ready too; then everything goes.
    proxy.release("DescribeNatGateways");
    wait_ready_within(&stacks, &world.stack, READY).await;
    world.delete("orders").await;
    bastions.delete("ops", &DeleteParams::default()).await.expect("delete bastion");
    world.wait_gone("orders").await;
    wait_gone_within(&bastions, "ops", READY).await;
    stacks.delete(&world.stack, &DeleteParams::default()).await.expect("delete stack");
    wait_gone_within(&stacks, &world.stack, READY).await;
}

/// The schedule against a double that waits like AWS (`common/aws_waits.rs`: each resource in its
/// in-between state for AWS's typical time, scaled by 1/20), proven by the order and overlap of the
/// waits the proxy recorded, not by how long anything took: the Database's instance is created
/// while the Stack's NAT gateway and VPC Link are still being made, and the Stack waits for those
/// two at once (the second was created before the first was done). Every wait's end is noticed.
#[tokio::test]
async fn against_aws_like_waits_the_database_starts_while_the_stack_waits_and_the_stack_waits_for_all_at_once() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::linked().await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = FaultProxy::start(&moto).await;
    proxy.wait_like_aws(1.0 / 20.0);
    let stack: Stack = serde_json::from_value(json!({
        "apiVersion": "tinystacks.io/v1alpha1", "kind": "Stack", "metadata": {"name": world.stack},
        "spec": {"accountLinkRef": {"name": world.link}, "network": {"pattern": "PublicPrivate", "natGateways": "Single", "vpcLink": true}},
    }))
    .expect("stack");
    let stacks = Api::<Stack>::namespaced(world.client.clone(), &world.ns.name);
    stacks.create(&PostParams::default(), &stack).await.expect("create stack");
    world.database("orders", json!({"deletionPolicy": "Delete"})).await;
    let _operator = world.operator(&[("AWS_ENDPOINT_URL", proxy.url.as_str())]);

    world.wait_ready("orders").await;
    wait_ready_within(&stacks, &world.stack, READY).await;
    let waits = proxy.waits();
    let one = |kind: &str| {
        let of: Vec<_> = waits.iter().filter(|w| w.kind == kind).collect();
        assert_eq!(of.len(), 1, "one {kind} wait: {waits:?}");
        of[0].clone()
    };
    let (nat, link, rds) = (one("ec2:NatGateway"), one("apigateway:VpcLink"), one("rds:DBInstance"));
    assert!(rds.started < nat.ends, "the DB instance was created after the NAT gateway was done: {waits:?}");
    assert!(rds.started < link.ends, "the DB instance was created after the VPC Link was done: {waits:?}");
    assert!(
        nat.started < link.ends && link.started < nat.ends,
        "the Stack waited for its NAT gateway and VPC Link one after the other: {waits:?}"
    );
    assert!(waits.iter().all(|w| w.seen.is_some()), "a wait's end was never seen: {waits:?}");

    world.delete("orders").await;
    world.wait_gone("orders").await;
    stacks.delete(&world.stack, &DeleteParams::default()).await.expect("delete stack");
    wait_gone_within(&stacks, &world.stack, READY).await;
}

/// Throttling, 500s, 503s, answers lost after the change was made, latency, and an instance RDS
/// keeps `creating`: one instance, one secret, one subnet group, one security group; the security
/// invariants hold; nothing is left after deletion.
#[tokio::test]
async fn mixed_aws_faults_make_one_of_each_and_leave_nothing() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    // The fixture's app group, tagged as a Stack tags its own, for the invariants.
    world
        .ec2()
        .create_tags()
        .resources(&world.net.app_group)
        .tags(aws_sdk_ec2::types::Tag::builder().key("tinystacks.io/owner-uid").value("fixture-stack").build())
        .tags(aws_sdk_ec2::types::Tag::builder().key("tinystacks.io/component").value("sg/app").build())
        .send()
        .await
        .expect("tag the app group");
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = FaultProxy::start(&moto).await;
    let faults = common::fault_proxy::Faults {
        throttle: 0.10,
        server_error: 0.08,
        unavailable: 0.08,
        drop_after: 0.08,
        latency: Duration::from_millis(10),
    };
    proxy.set_faults(faults, 3);
    proxy.hold_in_between_states(3);
    world.database("faulty", json!({"deletionPolicy": "Delete"})).await;
    let _operator = world.operator(&[("AWS_ENDPOINT_URL", proxy.url.as_str())]);

    world.wait_ready("faulty").await;
    let (instances, secrets, subnet_groups, mut sgs) = world.inventory().await;
    sgs.retain(|g| *g != world.net.app_group);
    assert_eq!(
        (instances.len(), secrets.len(), subnet_groups.len(), sgs.len()),
        (1, 1, 1, 1),
        "one of each under faults: {instances:?} {secrets:?} {subnet_groups:?} {sgs:?}"
    );
    assert!(proxy.rewritten("DescribeDBInstances") > 0, "RDS said creating");
    common::invariants::assert_security_invariants(&world.account, &[]).await;

    world.delete("faulty").await;
    world.wait_gone("faulty").await;
    let (instances, secrets, subnet_groups, mut sgs) = world.inventory().await;
    sgs.retain(|g| *g != world.net.app_group);
    assert!(
        instances.is_empty() && secrets.is_empty() && subnet_groups.is_empty() && sgs.is_empty(),
        "left behind under faults: {instances:?} {secrets:?} {subnet_groups:?} {sgs:?}"
    );
    common::invariants::assert_security_invariants(&world.account, &[]).await;
    let counts = proxy.fault_counts();
    eprintln!("faults injected: {counts:?}");
    assert!(counts.throttled > 0 && counts.server_errors > 0 && counts.unavailable > 0 && counts.dropped > 0);
}

/// Tags the fixture's app group as a Stack tags its own, so that the invariants know it.
async fn tag_app_group(world: &World) {
    world
        .ec2()
        .create_tags()
        .resources(&world.net.app_group)
        .tags(aws_sdk_ec2::types::Tag::builder().key("tinystacks.io/owner-uid").value("fixture-stack").build())
        .tags(aws_sdk_ec2::types::Tag::builder().key("tinystacks.io/component").value("sg/app").build())
        .send()
        .await
        .expect("tag the app group");
}

/// Issue 25, point 4: while the Stack lacks what the Database needs (a Stack failing before its key
/// is made; likewise its link being deleted) the Database makes nothing new, but its guarantees
/// hold as long as the link's role is verified: an instance made public and 5432 opened to the
/// internet are both closed again, and the Database stays `Ready=False`, reason `WaitingForStack`.
#[tokio::test]
async fn guarantees_hold_while_the_stack_is_not_ready() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    world.database("guarded", json!({"deletionPolicy": "Delete"})).await;
    let _operator = world.operator(&[]);
    let db = world.wait_ready("guarded").await;
    let status = db.status.clone().expect("status");
    let id = status.db_instance_identifier.clone().expect("identifier");
    let db_group = status.security_group_id.clone().expect("group");

    let stacks = Api::<Stack>::namespaced(world.client.clone(), &world.ns.name);
    let not_ready = json!({"type": "Ready", "status": "False", "reason": "Fixture", "message": "failing, as a test",
        "lastTransitionTime": Timestamp::now().to_string(), "observedGeneration": 1});
    write_status(&stacks, &world.stack, &json!({"status": {"kmsKeyArn": null, "conditions": [not_ready]}})).await;
    wait_condition(&world.databases(), "guarded", "Ready", "False", "WaitingForStack").await;

    world
        .rds()
        .modify_db_instance()
        .db_instance_identifier(&id)
        .publicly_accessible(true)
        .apply_immediately(true)
        .send()
        .await
        .expect("made public");
    let open = aws_sdk_ec2::types::IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(5432)
        .to_port(5432)
        .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    world.ec2().authorize_security_group_ingress().group_id(&db_group).ip_permissions(open).send().await.expect("open");

    world.wait_event("Warning", "DriftRepaired", "PubliclyAccessible").await;
    world.wait_event("Warning", "DriftRepaired", "0.0.0.0/0").await;
    eventually("private and 5432 from the app group only", READY, || async {
        let public = world.instance(&id).await.and_then(|i| i.publicly_accessible());
        let rules = world.ingress(&db_group).await;
        let only_app: BTreeSet<_> = [("tcp".to_string(), Some(5432), Some(5432), world.net.app_group.clone())].into();
        if public == Some(false) && rules == only_app { Ok(()) } else { Err(format!("{public:?} {rules:?}")) }
    })
    .await;
    tag_app_group(&world).await;
    common::invariants::assert_security_invariants(&world.account, &[]).await;
    let db = serde_json::to_value(world.databases().get("guarded").await.expect("get")).expect("json");
    let ready = condition(&db, "Ready").expect("Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("WaitingForStack")));

    world.delete("guarded").await;
    world.wait_gone("guarded").await;
}

/// Issue 25, point 9: a Database deleted (default `Snapshot` policy) and created again under the
/// same name (what `kubectl replace --force` does) gets a new, empty instance: an Event names the
/// final snapshot the earlier one left. `spec.restoreFromSnapshot` makes the instance from that
/// snapshot instead, placed and locked down as a created one, with the master password set to the
/// generated secret's (a restored instance keeps its snapshot's: RestoreDBInstanceFromDBSnapshot
/// takes no password). The field is immutable, and a snapshot that does not exist stalls.
#[tokio::test]
async fn a_recreated_database_names_the_earlier_final_snapshot_and_can_be_restored_from_it() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    world.database("orders", json!({})).await;
    let _operator = world.operator(&[]);
    let db = world.wait_ready("orders").await;
    let id = db.status.as_ref().and_then(|s| s.db_instance_identifier.clone()).expect("identifier");
    world.delete("orders").await;
    let note = world.wait_event("Normal", "DeletingDbInstance", "final snapshot").await;
    let snapshot = note.rsplit(' ').next().expect("the snapshot's name ends the event").to_string();
    world.wait_gone("orders").await;

    // Created again, empty: the Event names the snapshot and the field to restore from it.
    world.database("orders", json!({"deletionPolicy": "Delete"})).await;
    world.wait_ready("orders").await;
    let said = world.wait_event("Warning", "EarlierSnapshotExists", &snapshot).await;
    assert!(said.contains("spec.restoreFromSnapshot"), "{said}");
    world.delete("orders").await;
    world.wait_gone("orders").await;

    // Created again from the snapshot.
    world.database("orders", json!({"deletionPolicy": "Delete", "restoreFromSnapshot": snapshot})).await;
    let db = world.wait_ready("orders").await;
    world.wait_event("Normal", "RestoringDbInstance", &snapshot).await;
    world.wait_event("Normal", "SetMasterPassword", &id).await;
    let instance = world.instance(&id).await.expect("the restored instance");
    let tag =
        |k: &str| instance.tag_list().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(str::to_string);
    assert_eq!(tag("tinystacks.io/master-password").as_deref(), Some("secret"), "the secret's password was set");
    assert_eq!(tag("tinystacks.io/owner-uid"), db.uid(), "tagged as the new Database's");
    assert_eq!(instance.publicly_accessible(), Some(false));
    assert_eq!(instance.storage_encrypted(), Some(true));
    assert_eq!(instance.kms_key_id(), Some(world.net.kms_key_arn.as_str()), "the Stack's key");
    let status = db.status.clone().expect("status");
    let groups: Vec<&str> = instance.vpc_security_groups().iter().filter_map(|g| g.vpc_security_group_id()).collect();
    assert_eq!(groups, [status.security_group_id.as_deref().unwrap_or_default()]);
    assert_eq!(instance.db_subnet_group().and_then(|g| g.db_subnet_group_name()), status.subnet_group_name.as_deref());
    tag_app_group(&world).await;
    common::invariants::assert_security_invariants(&world.account, &[]).await;

    // Immutable: neither changed nor removed.
    for spec in [json!({"spec": {"restoreFromSnapshot": "another"}}), json!({"spec": {"restoreFromSnapshot": null}})] {
        let refused = world.databases().patch("orders", &PatchParams::default(), &Patch::Merge(&spec)).await;
        let message = refused.expect_err("restoreFromSnapshot is immutable").to_string();
        assert!(message.contains("restoreFromSnapshot is immutable"), "{message}");
    }

    // A snapshot that does not exist: Stalled, the field named, no instance.
    world.database("ghost", json!({"deletionPolicy": "Delete", "restoreFromSnapshot": "no-such-snapshot"})).await;
    let ghost = wait_condition(&world.databases(), "ghost", "Stalled", "True", "RestoreSnapshotUnusable").await;
    let message = condition(&ghost, "Stalled").map(|c| c["message"].to_string()).unwrap_or_default();
    assert!(message.contains("spec.restoreFromSnapshot") && message.contains("no-such-snapshot"), "{message}");
    let (instances, _, _, _) = world.inventory().await;
    assert_eq!(instances, [id.as_str()], "no instance for the stalled Database");

    for name in ["orders", "ghost"] {
        world.delete(name).await;
        world.wait_gone(name).await;
    }
}

/// Issue 25, point 2: a Stack deleted after a Database it hosted was deleted with `Retain` (and
/// another with the default `Snapshot`) keeps what they still need and deletes the rest: the KMS
/// key (it encrypts the retained instance, its secret and the final snapshot: once deleted, KMS
/// cannot bring it back and all of them are unreadable), the VPC and the subnets of the retained
/// instance's subnet group, and the app security group its own group admits. It says so in a
/// Warning Event per kept resource and finishes. Moto lets subnets and VPCs with an instance in
/// them be deleted; AWS does not: "You must terminate all running instances in the subnet before
/// you can delete the subnet" (EC2 API Reference, DeleteSubnet), a VPC can be deleted only once
/// "all gateways and resources that are associated with the VPC" are gone (DeleteVpc), and a
/// security group "referenced by another security group in the same VPC" cannot be deleted
/// (DeleteSecurityGroup): each fails with `DependencyViolation`, so the old teardown looped there.
#[tokio::test]
async fn a_stack_keeps_what_a_retained_database_and_a_final_snapshot_need() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::linked().await;
    let stack: Stack = serde_json::from_value(json!({
        "apiVersion": "tinystacks.io/v1alpha1", "kind": "Stack", "metadata": {"name": world.stack},
        "spec": {"accountLinkRef": {"name": world.link}, "network": {"pattern": "PublicPrivate", "natGateways": "None", "vpcLink": false}},
    }))
    .expect("stack");
    let stacks = Api::<Stack>::namespaced(world.client.clone(), &world.ns.name);
    stacks.create(&PostParams::default(), &stack).await.expect("create stack");
    world.database("kept", json!({"deletionPolicy": "Retain"})).await;
    world.database("snap", json!({})).await;
    let _operator = world.operator(&[]);
    let kept = world.wait_ready("kept").await;
    world.wait_ready("snap").await;
    let kept_id = kept.status.as_ref().and_then(|s| s.db_instance_identifier.clone()).expect("identifier");
    let stack = stacks.get(&world.stack).await.expect("stack");
    let uid = stack.uid().expect("uid");
    let status = stack.status.clone().expect("stack status");
    let vpc = status.vpc_id.clone().expect("vpc");
    let key_arn = status.kms_key_arn.clone().expect("key");
    let app = status.app_security_group_id.clone().expect("app group");
    let tier = |t: tinystacks_operator::api::SubnetTier| -> BTreeSet<String> {
        status.subnets.iter().filter(|s| s.tier == t).map(|s| s.id.clone()).collect()
    };
    let (private, public) =
        (tier(tinystacks_operator::api::SubnetTier::Private), tier(tinystacks_operator::api::SubnetTier::Public));

    world.delete("kept").await;
    world.delete("snap").await;
    world.wait_gone("kept").await;
    world.wait_gone("snap").await;
    stacks.delete(&world.stack, &DeleteParams::default()).await.expect("delete stack");
    eventually("the Stack gone", READY, || async {
        match stacks.get_opt(&world.stack).await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|s| s.and_then(|s| s.status).map(|s| s.conditions)))),
        }
    })
    .await;

    // Kept: the key (enabled, not scheduled for deletion), the VPC, the private subnets, the app group.
    let kms = aws_sdk_kms::Client::new(&world.aws);
    let key = kms.describe_key().key_id(&key_arn).send().await.expect("the key");
    let state = key.key_metadata().and_then(|m| m.key_state()).map(|s| s.as_str().to_string());
    assert_eq!(state.as_deref(), Some("Enabled"), "the key the retained instance needs is kept");
    let key_id = key.key_metadata().map(|m| m.key_id().to_string()).unwrap_or_default();
    let ec2 = world.ec2();
    let owned = aws_sdk_ec2::types::Filter::builder().name("tag:tinystacks.io/owner-uid").values(&uid).build();
    let vpcs = ec2.describe_vpcs().filters(owned.clone()).send().await.expect("vpcs");
    assert_eq!(vpcs.vpcs().iter().filter_map(|v| v.vpc_id()).collect::<Vec<_>>(), [vpc.as_str()]);
    let subnets = ec2.describe_subnets().filters(owned.clone()).send().await.expect("subnets");
    let left: BTreeSet<String> = subnets.subnets().iter().filter_map(|s| s.subnet_id().map(str::to_string)).collect();
    assert_eq!(left, private, "the subnets of the retained instance's subnet group, and only those");
    assert!(left.is_disjoint(&public));
    let groups = ec2.describe_security_groups().filters(owned.clone()).send().await.expect("groups");
    assert_eq!(groups.security_groups().iter().filter_map(|g| g.group_id()).collect::<Vec<_>>(), [app.as_str()]);
    // Deleted: what costs money or nothing needs.
    let gateways = ec2.describe_internet_gateways().filters(owned.clone()).send().await.expect("gateways");
    assert!(gateways.internet_gateways().is_empty(), "the internet gateway is deleted");
    let tables = ec2.describe_route_tables().filters(owned).send().await.expect("route tables");
    assert!(tables.route_tables().is_empty(), "the route tables are deleted");
    assert!(world.instance(&kept_id).await.is_some(), "the retained instance is untouched");

    // Said: a Warning per kept resource, naming what needs it.
    let events = world.event_notes().await;
    let kept_notes: Vec<&String> =
        events.iter().filter(|(t, r, _)| t == "Warning" && r == "KeptInUse").map(|(_, _, n)| n).collect();
    let about = |what: &str| kept_notes.iter().find(|n| n.contains(what)).map(|n| n.to_string()).unwrap_or_default();
    let key_note = about(&format!("KMS key {key_id}"));
    assert!(key_note.contains(&format!("DB instance {kept_id}")) && key_note.contains("DB snapshot"), "{kept_notes:?}");
    assert!(key_note.contains("Secrets Manager secret"), "the retained secret is encrypted with it: {key_note}");
    assert!(about(&format!("VPC {vpc}")).contains(&kept_id), "{kept_notes:?}");
    assert!(about(&format!("security group {app}")).contains(&kept_id), "{kept_notes:?}");
    common::invariants::assert_security_invariants(&world.account, &[]).await;
}

/// A Secret of the namespace, made here (not by the operator); returns its resourceVersion.
async fn foreign_secret(world: &World, name: &str) -> String {
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"keep": "me"}})).expect("Secret");
    let secrets = Api::<Secret>::namespaced(world.client.clone(), &world.ns.name);
    let made = secrets.create(&PostParams::default(), &secret).await.expect("create the Secret");
    made.resource_version().expect("resourceVersion")
}

/// The `Stalled` condition's message once it is True with `reason`.
async fn stalled_message<K>(api: &Api<K>, name: &str, reason: &str) -> String
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    stalled_message_within(api, name, reason, READY).await
}

async fn stalled_message_within<K>(api: &Api<K>, name: &str, reason: &str, timeout: Duration) -> String
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let value = eventually(&format!("{name}: Stalled ({reason})"), timeout, || async {
        let value = serde_json::to_value(api.get(name).await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        match condition(&value, "Stalled") {
            Some(c) if c["status"] == "True" && c["reason"] == reason => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    value["message"].as_str().unwrap_or_default().to_string()
}

/// The value of `key` in the Secret `name`, as text.
async fn secret_key(world: &World, name: &str, key: &str) -> Option<String> {
    let secrets = Api::<Secret>::namespaced(world.client.clone(), &world.ns.name);
    let secret = secrets.get_opt(name).await.ok()??;
    secret.data?.get(key).map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

#[tokio::test]
async fn a_connection_secret_it_does_not_own_is_never_written_nor_deleted() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    let victim = foreign_secret(&world, "victim").await;
    world.database("taker", json!({"deletionPolicy": "Delete", "connectionSecret": {"name": "victim"}})).await;
    world.database("first", json!({"deletionPolicy": "Delete", "connectionSecret": {"name": "shared"}})).await;
    let _operator = world.operator(&[]);

    // The user's Secret: the Database stalls, naming it; the Secret is untouched.
    let message = stalled_message(&world.databases(), "taker", "SecretConflict").await;
    assert!(message.contains("victim") && message.contains("not written by tinystacks-operator"), "{message}");
    common::invariants::assert_secrets_owned(&world.client, &world.ns.name, &[("victim", &victim)]).await;

    // Two Databases naming one Secret: the one that made it keeps it, the other stalls naming it.
    let first = world.wait_ready("first").await;
    world.database("second", json!({"deletionPolicy": "Delete", "connectionSecret": {"name": "shared"}})).await;
    let message = stalled_message(&world.databases(), "second", "SecretConflict").await;
    assert!(message.contains("shared") && message.contains("Database first"), "{message}");
    let first_password = secret_key(&world, "shared", "PG_PASSWORD").await.expect("shared's password");
    let first_secret = world.secret_json(&format!("tinystacks/{}/web/first", world.ns.name)).await;
    assert_eq!(first_secret["password"].as_str(), Some(first_password.as_str()), "still first's credentials");
    let secrets = Api::<Secret>::namespaced(world.client.clone(), &world.ns.name);
    let shared = secrets.get("shared").await.expect("shared");
    assert_eq!(shared.owner_references().iter().map(|o| o.uid.clone()).collect::<Vec<_>>(), [first.uid().unwrap()]);

    // The first renames its Secret: its old one goes (it was its own), and the second, looking
    // again, takes the free name.
    let rename = json!({"spec": {"connectionSecret": {"name": "first-pg"}}});
    world.databases().patch("first", &PatchParams::default(), &Patch::Merge(&rename)).await.expect("rename");
    world.wait_ready("first").await;
    let second = world.wait_ready("second").await;
    let shared = secrets.get("shared").await.expect("shared, now the second's");
    assert_eq!(shared.owner_references().iter().map(|o| o.uid.clone()).collect::<Vec<_>>(), [second.uid().unwrap()]);
    assert!(secrets.get_opt("first-pg").await.expect("get").is_some());
    common::invariants::assert_secrets_owned(&world.client, &world.ns.name, &[("victim", &victim)]).await;

    // Deleting the Database that named the user's Secret leaves that Secret as it was.
    for name in ["taker", "first", "second"] {
        world.delete(name).await;
    }
    for name in ["taker", "first", "second"] {
        world.wait_gone(name).await;
    }
    common::invariants::assert_secrets_owned(&world.client, &world.ns.name, &[("victim", &victim)]).await;
}

#[tokio::test]
async fn the_connection_secret_follows_the_real_credentials_and_the_password_rotates_on_demand() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = FaultProxy::start(&moto).await;
    world.database("creds", json!({"deletionPolicy": "Delete"})).await;
    let operator = world.operator(&[("AWS_ENDPOINT_URL", proxy.url.as_str())]);
    let db = world.wait_ready("creds").await;
    let host = db.status.and_then(|s| s.endpoint).map(|e| e.address).expect("endpoint");
    let secret_name = format!("tinystacks/{}/web/creds", world.ns.name);
    let secrets = Api::<Secret>::namespaced(world.client.clone(), &world.ns.name);
    let current =
        || async { world.secret_json(&secret_name).await["password"].as_str().unwrap_or_default().to_string() };
    // The connection Secret holds `password`, in both keys, and the real host.
    let holds = |password: String| {
        let host = host.clone();
        let world = &world;
        async move {
            let got = secret_key(world, "creds-connection", "PG_PASSWORD").await;
            let url = secret_key(world, "creds-connection", "DATABASE_URL").await.unwrap_or_default();
            let url = url::Url::parse(&url).map_err(|e| e.to_string())?;
            let good = got.as_deref() == Some(password.as_str())
                && url.password() == Some(password.as_str())
                && url.host_str() == Some(host.as_str());
            if good { Ok(()) } else { Err(format!("not yet (host in the URL: {:?})", url.host_str())) }
        }
    };
    let mut passwords = vec![current().await];

    // 1. Both password keys edited by hand (the URL to another host): written again.
    let edit = json!({"stringData": {"PG_PASSWORD": "edited-by-hand",
        "DATABASE_URL": "postgres://app:edited-by-hand@attacker.example:5432/app?sslmode=require"}});
    secrets.patch("creds-connection", &PatchParams::default(), &Patch::Merge(&edit)).await.expect("edit");
    world.wait_event("Warning", "DriftRepaired", "creds-connection").await;
    eventually("the connection Secret repaired", READY, || holds(passwords[0].clone())).await;

    // Steady state reads no secret value: several passes (resync 2 s), no GetSecretValue.
    let reads = proxy.count("GetSecretValue");
    wait_reconciles(&operator, "Database", 3.0).await;
    assert_eq!(proxy.count("GetSecretValue"), reads, "a steady pass read a secret value");

    // 2. A password changed in Secrets Manager by hand (a new AWSCURRENT version): RDS is given
    // it (ModifyDBInstance MasterUserPassword, as AWS documents for changing the master
    // password), then the connection Secret follows.
    let mut doc = world.secret_json(&secret_name).await;
    doc["password"] = json!(format!("HandMade{}", suffix()));
    let by_hand = doc["password"].as_str().unwrap_or_default().to_string();
    world
        .secrets()
        .put_secret_value()
        .secret_id(&secret_name)
        .secret_string(doc.to_string())
        .send()
        .await
        .expect("put");
    passwords.push(by_hand.clone());
    eventually("the hand-made password in the connection Secret", READY, || holds(by_hand.clone())).await;
    let sent = |password: &str| proxy.requests_mentioning(&format!("MasterUserPassword={password}"));
    assert!(sent(&by_hand) >= 1, "RDS was given the hand-made password before the connection Secret");
    world.wait_ready("creds").await;

    // 3. A rotation on demand: a new password in Secrets Manager, RDS, then the Secret; once.
    let rotate = json!({"metadata": {"annotations": {"tinystacks.io/rotate-password": "first"}}});
    world.databases().patch("creds", &PatchParams::default(), &Patch::Merge(&rotate)).await.expect("annotate");
    let rotated = eventually("a new password", READY, || async {
        let now = current().await;
        if now != by_hand { Ok(now) } else { Err("the hand-made one still".to_string()) }
    })
    .await;
    passwords.push(rotated.clone());
    assert!(rotated.len() >= 32 && rotated.chars().all(|c| c.is_ascii_alphanumeric()));
    eventually("the rotated password in the connection Secret", READY, || holds(rotated.clone())).await;
    assert!(sent(&rotated) >= 1, "RDS was given the rotated password");
    world.wait_ready("creds").await;
    assert_eq!(world.event_count("Normal", "RotatedPassword").await, 1, "one rotation per annotation value");
    assert_eq!(current().await, rotated);

    // 4. The secret lost while the instance lives: the Database says how to reset, and a new
    // annotation value makes a new secret, which RDS and the connection Secret follow.
    world
        .secrets()
        .delete_secret()
        .secret_id(&secret_name)
        .force_delete_without_recovery(true)
        .send()
        .await
        .expect("delete the secret");
    // The inventory keeps a resource the operator just read for up to two minutes unless a list
    // shows it (AWS's lists lag behind its changes), so the loss may take that long to be seen.
    let message = stalled_message_within(&world.databases(), "creds", "SecretUnusable", Duration::from_secs(180)).await;
    assert!(message.contains("tinystacks.io/rotate-password"), "{message}");
    let reset = json!({"metadata": {"annotations": {"tinystacks.io/rotate-password": "after-loss"}}});
    world.databases().patch("creds", &PatchParams::default(), &Patch::Merge(&reset)).await.expect("annotate");
    world.wait_ready("creds").await;
    let restored = current().await;
    passwords.push(restored.clone());
    assert!(!passwords[..3].contains(&restored), "a new password");
    eventually("the new password in the connection Secret", READY, || holds(restored.clone())).await;
    assert!(sent(&restored) >= 1, "RDS was given the new password");

    // No password was said anywhere.
    let said = everything_said(&world, &operator).await;
    assert!(said.contains("RotatedPassword"), "the log and events were scanned");
    for password in &passwords {
        assert!(!said.contains(password.as_str()), "a password appears in a log line, event or status");
        assert!(!said.contains(&base64(password.as_bytes())), "a password appears base64-encoded");
    }
    world.delete("creds").await;
    world.wait_gone("creds").await;
}

#[tokio::test]
async fn resources_of_its_names_that_carry_another_uid_are_neither_used_nor_deleted() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    let ns = world.ns.name.clone();
    let operator_tags = |name: &str, uid: &str| {
        [
            ("tinystacks.io/managed-by", "tinystacks-operator".to_string()),
            ("tinystacks.io/owner", format!("Database/{ns}/{name}")),
            ("tinystacks.io/owner-uid", uid.to_string()),
        ]
    };
    // A secret under the Database's name, with the operator's tags and another object's UID (what
    // a Database deleted with Retain leaves, or a copy): its password must not reach RDS.
    let secret_name = format!("tinystacks/{ns}/web/heir");
    let previous = json!({"engine": "postgres", "host": "", "port": 5432, "username": "app",
        "password": "PreviousOwnersPassword1", "dbname": "app", "dbInstanceIdentifier": "x"});
    let mut create = world.secrets().create_secret().name(&secret_name).secret_string(previous.to_string());
    for (k, v) in operator_tags("heir", "uid-of-a-previous-object") {
        create = create.tags(aws_sdk_secretsmanager::types::Tag::builder().key(k).value(v).build());
    }
    create.send().await.expect("the previous secret");
    // A DB subnet group under the other Database's name, not the operator's at all.
    let squatted = tinystacks_operator::database::instance_identifier(&ns, "web", "squat");
    let two: Vec<String> = world.net.database_subnets.iter().take(2).cloned().collect();
    world
        .rds()
        .create_db_subnet_group()
        .db_subnet_group_name(&squatted)
        .db_subnet_group_description("someone else's")
        .set_subnet_ids(Some(two.clone()))
        .tags(aws_sdk_rds::types::Tag::builder().key("team").value("other").build())
        .send()
        .await
        .expect("the other subnet group");
    world.database("heir", json!({"deletionPolicy": "Delete"})).await;
    world.database("squat", json!({"deletionPolicy": "Delete"})).await;
    let _operator = world.operator(&[]);

    let message = stalled_message(&world.databases(), "heir", "OwnershipConflict").await;
    assert!(message.contains(&secret_name) && message.contains("uid-of-a-previous-object"), "{message}");
    let message = stalled_message(&world.databases(), "squat", "OwnershipConflict").await;
    assert!(message.contains(&squatted) && message.contains("not created by tinystacks-operator"), "{message}");
    let heir_id = tinystacks_operator::database::instance_identifier(&ns, "web", "heir");
    assert!(world.instance(&heir_id).await.is_none(), "no instance with the previous secret's password");
    assert!(world.instance(&squatted).await.is_none(), "no instance in the other subnet group");
    assert_eq!(world.secret_json(&secret_name).await, previous, "the previous secret is untouched");

    // Deleting both leaves what was not theirs.
    world.delete("heir").await;
    world.delete("squat").await;
    world.wait_gone("heir").await;
    world.wait_gone("squat").await;
    assert_eq!(world.secret_json(&secret_name).await, previous, "the previous secret is still there");
    let groups = world.rds().describe_db_subnet_groups().db_subnet_group_name(&squatted).send().await;
    let subnets: BTreeSet<String> = groups
        .expect("the other subnet group is still there")
        .db_subnet_groups()
        .iter()
        .flat_map(|g| g.subnets().iter().filter_map(|s| s.subnet_identifier().map(str::to_string)))
        .collect();
    assert_eq!(subnets, two.into_iter().collect(), "its subnets were not changed");
}

/// The Database's `status.plan`, once it was computed for the object's current generation.
async fn current_plan(world: &World, name: &str) -> Value {
    let api = world.databases();
    eventually(&format!("Database {name}: status.plan for its generation"), READY, || async {
        let db = api.get(name).await.map_err(|e| e.to_string())?;
        let value = serde_json::to_value(&db).map_err(|e| e.to_string())?;
        let plan = value.pointer("/status/plan").cloned().unwrap_or(Value::Null);
        if plan["observedGeneration"].as_i64().is_some()
            && plan["observedGeneration"].as_i64() == db.metadata.generation
        {
            Ok(plan)
        } else {
            Err(format!("{plan}"))
        }
    })
    .await
}

async fn approve(world: &World, name: &str, plan: &Value) {
    let patch = json!({"spec": {"approvedPlan": plan["id"]}});
    world.databases().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("approve the plan");
}

/// `changePolicy: Manual`: a new Database makes nothing in AWS (counted at the proxy) until its
/// plan is approved, then converges; an `instanceClass` edit shows in `status.plan` as the exact
/// change, is not made until approved, and is made then.
#[tokio::test]
async fn a_manual_database_changes_nothing_in_aws_until_its_plan_is_approved() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = FaultProxy::start(&moto).await;
    world.database("gated", json!({"deletionPolicy": "Delete", "changePolicy": "Manual"})).await;
    let operator = world.operator(&[("AWS_ENDPOINT_URL", proxy.url.as_str())]);

    let held = wait_condition(&world.databases(), "gated", "Ready", "False", "AwaitingApproval").await;
    let plan = current_plan(&world, "gated").await;
    let shown: Vec<String> = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| format!("{} {}", c["action"].as_str().unwrap_or(""), c["resource"].as_str().unwrap_or("")))
        .collect();
    for expected in [
        "Create ec2:SecurityGroup",
        "Create ec2:SecurityGroupIngress",
        "Create rds:DBSubnetGroup",
        "Create secretsmanager:Secret",
        "Create rds:DBInstance",
    ] {
        assert!(shown.iter().any(|s| s == expected), "{expected} missing from {shown:?}");
    }
    let plan_id = plan["id"].as_str().expect("plan id").to_string();
    assert!(held.to_string().contains(&plan_id), "Ready names the plan to approve: {held}");
    wait_reconciles(&operator, "Database", 2.0).await;
    assert_eq!(proxy.mutations(), Default::default(), "nothing changed in AWS before approval");
    let (instances, secrets, subnet_groups, _) = world.inventory().await;
    assert!(instances.is_empty() && secrets.is_empty() && subnet_groups.is_empty(), "nothing made in AWS");

    approve(&world, "gated", &plan).await;
    let db = world.wait_ready("gated").await;
    let id = db.status.as_ref().and_then(|s| s.db_instance_identifier.clone()).expect("identifier");
    assert_eq!(proxy.count("CreateDBInstance"), 1);
    let plan = current_plan(&world, "gated").await;
    assert_eq!(plan["changes"], json!([]), "AWS matches: {plan}");

    let edit = json!({"spec": {"instanceClass": "db.t4g.small"}});
    world.databases().patch("gated", &PatchParams::default(), &Patch::Merge(&edit)).await.expect("edit");
    wait_condition(&world.databases(), "gated", "Ready", "False", "AwaitingApproval").await;
    let plan = current_plan(&world, "gated").await;
    assert_eq!(plan["changes"].as_array().map(Vec::len), Some(1), "{plan}");
    let change = &plan["changes"][0];
    assert_eq!((change["action"].as_str(), change["resource"].as_str()), (Some("Update"), Some("rds:DBInstance")));
    assert_eq!(change["detail"], "instanceClass db.t4g.micro → db.t4g.small");
    wait_reconciles(&operator, "Database", 2.0).await;
    assert_eq!(proxy.count("ModifyDBInstance"), 0, "not made before approval");
    let class = world.instance(&id).await.and_then(|i| i.db_instance_class().map(str::to_string));
    assert_eq!(class.as_deref(), Some("db.t4g.micro"));

    approve(&world, "gated", &plan).await;
    world.wait_event("Normal", "ModifyingDbInstance", "db.t4g.small").await;
    eventually("the class changed in RDS", READY, || async {
        let class = world.instance(&id).await.and_then(|i| i.db_instance_class().map(str::to_string));
        if class.as_deref() == Some("db.t4g.small") { Ok(()) } else { Err(format!("{class:?}")) }
    })
    .await;
    world.wait_ready("gated").await;
    assert_eq!(proxy.count("ModifyDBInstance"), 1);
    let said = everything_said(&world, &operator).await;
    let password = world.secret_json(&format!("tinystacks/{}/{}/gated", world.ns.name, world.stack)).await;
    let password = password["password"].as_str().expect("password").to_string();
    assert!(!said.contains(&password), "the password is in a log, Event or status");

    // Deleting is the person's act: it needs no approval.
    world.delete("gated").await;
    world.wait_gone("gated").await;
}

/// `management: ObserveOnly`: an instance made public by hand is reported (`DriftDetected`,
/// `Ready=False` reason `Drifted`, the repair in `status.plan`) and not repaired, with no AWS
/// mutation over two resyncs; deleting the Database leaves everything in AWS.
#[tokio::test]
async fn an_observe_only_database_reports_drift_and_changes_nothing() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = FaultProxy::start(&moto).await;
    world.database("watched", json!({"deletionPolicy": "Delete"})).await;
    let operator = world.operator(&[("AWS_ENDPOINT_URL", proxy.url.as_str())]);
    let db = world.wait_ready("watched").await;
    let id = db.status.as_ref().and_then(|s| s.db_instance_identifier.clone()).expect("identifier");
    let observe = json!({"spec": {"management": "ObserveOnly"}});
    world.databases().patch("watched", &PatchParams::default(), &Patch::Merge(&observe)).await.expect("observe only");
    world.wait_ready("watched").await;
    let before = proxy.mutations();

    // Made public by hand (straight to moto, not through the operator's proxy).
    world
        .rds()
        .modify_db_instance()
        .db_instance_identifier(&id)
        .publicly_accessible(true)
        .apply_immediately(true)
        .send()
        .await
        .expect("modify");
    world.wait_event("Warning", "DriftDetected", "PubliclyAccessible").await;
    wait_condition(&world.databases(), "watched", "Ready", "False", "Drifted").await;
    let plan = current_plan(&world, "watched").await;
    assert!(plan["changes"][0]["detail"].as_str().is_some_and(|d| d.contains("PubliclyAccessible")), "{plan}");
    wait_reconciles(&operator, "Database", 2.0).await;
    assert_eq!(proxy.mutations(), before, "no AWS mutation under ObserveOnly");
    let public = world.instance(&id).await.and_then(|i| i.publicly_accessible());
    assert_eq!(public, Some(true), "reported, not repaired");
    assert_eq!(world.event_count("Warning", "DriftRepaired").await, 0);

    world.delete("watched").await;
    world.wait_gone("watched").await;
    world.wait_event("Normal", "Retained", "ObserveOnly").await;
    assert_eq!(proxy.mutations(), before, "deleting an ObserveOnly Database changes nothing in AWS");
    let (instances, secrets, subnet_groups, groups) = world.inventory().await;
    assert_eq!((instances, secrets.len(), subnet_groups.len()), (vec![id], 1, 1), "all left in AWS");
    let group = db.status.as_ref().and_then(|s| s.security_group_id.clone()).expect("group");
    assert!(groups.contains(&group), "the security group is left: {groups:?}");
}

/// The guarded wait goes through the same gate: with the Stack lacking its key and the Database
/// `ObserveOnly`, an instance made public is reported (`Drifted`) and left alone, with no AWS
/// mutation over two resyncs; back to `Full`, it is repaired while the Stack still waits.
#[tokio::test]
async fn the_guarded_wait_repairs_nothing_under_observe_only() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("PublicPrivate").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = FaultProxy::start(&moto).await;
    world.database("hands-off", json!({"deletionPolicy": "Delete", "management": "ObserveOnly"})).await;
    let operator = world.operator(&[("AWS_ENDPOINT_URL", proxy.url.as_str())]);
    // A new ObserveOnly Database makes nothing: everything is drift to report.
    wait_condition(&world.databases(), "hands-off", "Ready", "False", "Drifted").await;
    assert_eq!(proxy.mutations(), Default::default());
    let full = json!({"spec": {"management": "Full"}});
    world.databases().patch("hands-off", &PatchParams::default(), &Patch::Merge(&full)).await.expect("full");
    let db = world.wait_ready("hands-off").await;
    let id = db.status.as_ref().and_then(|s| s.db_instance_identifier.clone()).expect("identifier");
    let observe = json!({"spec": {"management": "ObserveOnly"}});
    world.databases().patch("hands-off", &PatchParams::default(), &Patch::Merge(&observe)).await.expect("observe");
    world.wait_ready("hands-off").await;

    let stacks = Api::<Stack>::namespaced(world.client.clone(), &world.ns.name);
    let not_ready = json!({"type": "Ready", "status": "False", "reason": "Fixture", "message": "failing, as a test",
        "lastTransitionTime": Timestamp::now().to_string(), "observedGeneration": 1});
    write_status(&stacks, &world.stack, &json!({"status": {"kmsKeyArn": null, "conditions": [not_ready]}})).await;
    wait_condition(&world.databases(), "hands-off", "Ready", "False", "WaitingForStack").await;
    let before = proxy.mutations();
    world
        .rds()
        .modify_db_instance()
        .db_instance_identifier(&id)
        .publicly_accessible(true)
        .apply_immediately(true)
        .send()
        .await
        .expect("made public");
    wait_condition(&world.databases(), "hands-off", "Ready", "False", "Drifted").await;
    world.wait_event("Warning", "DriftDetected", "PubliclyAccessible").await;
    wait_reconciles(&operator, "Database", 2.0).await;
    assert_eq!(proxy.mutations(), before, "nothing repaired under ObserveOnly");
    assert_eq!(world.instance(&id).await.and_then(|i| i.publicly_accessible()), Some(true));

    world.databases().patch("hands-off", &PatchParams::default(), &Patch::Merge(&full)).await.expect("full");
    world.wait_event("Warning", "DriftRepaired", "PubliclyAccessible").await;
    eventually("private again", READY, || async {
        let public = world.instance(&id).await.and_then(|i| i.publicly_accessible());
        if public == Some(false) { Ok(()) } else { Err(format!("{public:?}")) }
    })
    .await;
    wait_condition(&world.databases(), "hands-off", "Ready", "False", "WaitingForStack").await;

    world.delete("hands-off").await;
    world.wait_gone("hands-off").await;
}
