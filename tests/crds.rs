//! The CRDs against the real API server: they install, accept valid objects with their
//! defaults, and reject every invalid or immutable-field change with a message naming the field.

mod common;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};
use tinystacks_operator::api::{AwsAccountLink, Bastion, Database, Stack};

use common::{TestNamespace, client, install_crds, suffix};

#[test]
fn committed_crds_match_the_types() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/tinystacks.io.yaml"))
        .expect("crds/tinystacks.io.yaml");
    let generated = tinystacks_operator::api::crds_yaml().expect("render CRDs");
    assert!(
        committed == generated,
        "crds/ is stale: run `cargo run -- crds > crds/tinystacks.io.yaml` and commit the result"
    );
}

#[derive(Clone, Copy)]
enum Kind {
    Link,
    Stack,
    Database,
    Bastion,
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Kind::Link => ApiResource::erase::<AwsAccountLink>(&()),
            Kind::Stack => ApiResource::erase::<Stack>(&()),
            Kind::Database => ApiResource::erase::<Database>(&()),
            Kind::Bastion => ApiResource::erase::<Bastion>(&()),
        }
    }

    fn api(self, client: &Client, ns: &str) -> Api<DynamicObject> {
        let ar = self.resource();
        match self {
            Kind::Link => Api::all_with(client.clone(), &ar),
            _ => Api::namespaced_with(client.clone(), ns, &ar),
        }
    }

    /// A minimal valid spec.
    fn spec(self) -> Value {
        match self {
            Kind::Link => json!({"accountId": "123456789012", "region": "eu-west-1"}),
            Kind::Stack => json!({"accountLinkRef": {"name": "link"}}),
            Kind::Database => json!({"stackRef": {"name": "web"}}),
            Kind::Bastion => json!({"stackRef": {"name": "web"}}),
        }
    }

    fn object(self, name: &str, spec: Value) -> DynamicObject {
        let ar = self.resource();
        serde_json::from_value(json!({
            "apiVersion": ar.api_version, "kind": ar.kind,
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("object")
    }
}

/// Deep-merges `patch` into `base` (null removes a key).
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

async fn create(client: &Client, ns: &str, kind: Kind, name: &str, spec: Value) -> Result<DynamicObject, kube::Error> {
    kind.api(client, ns).create(&PostParams::default(), &kind.object(name, spec)).await
}

fn rejection(result: Result<DynamicObject, kube::Error>) -> String {
    match result {
        Ok(obj) => panic!("accepted: {}", serde_json::to_string(&obj.data).unwrap_or_default()),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "rejected as invalid, got {status:?}");
            status.message.clone()
        }
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn valid_objects_are_accepted_with_their_defaults() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "crd-valid").await;
    let link_name = format!("valid-{}", suffix());

    let link = create(&client, &ns.name, Kind::Link, &link_name, Kind::Link.spec()).await.expect("link accepted");
    let spec = &link.data["spec"];
    assert_eq!(spec["roleName"], "TinyStacksRole");
    assert_eq!(spec["bootstrap"]["mode"], "Manual");
    assert_eq!(spec["bootstrap"]["stackName"], "TinyStacksRole");
    assert_eq!(spec["permissions"], "Scoped");
    assert_eq!(spec["deletionPolicy"], "Delete");
    assert_eq!(spec["allowedNamespaces"], json!([]));

    let stack = create(&client, &ns.name, Kind::Stack, "web", Kind::Stack.spec()).await.expect("stack accepted");
    let network = &stack.data["spec"]["network"];
    assert_eq!(network["pattern"], "PublicPrivate");
    assert_eq!(network["cidr"], "10.0.0.0/16");
    assert_eq!(network["vpcLink"], true);
    assert_eq!(stack.data["spec"]["deletionPolicy"], "Delete");

    let full_stack = json!({
        "accountLinkRef": {"name": "link"}, "region": "eu-west-1",
        "network": {"pattern": "PrivateIsolated", "cidr": "10.8.0.0/22",
                    "availabilityZones": ["eu-west-1a", "eu-west-1b", "eu-west-1c"], "natGateways": "None", "vpcLink": false},
        "tags": {"team": "a"}, "deletionPolicy": "Retain",
    });
    create(&client, &ns.name, Kind::Stack, "isolated", full_stack).await.expect("full stack accepted");
    let nat_instances = json!({"accountLinkRef": {"name": "link"},
        "network": {"natGateways": "PerAz", "natType": "Instance", "natInstanceType": "c7gn.medium"}});
    create(&client, &ns.name, Kind::Stack, "nat-instances", nat_instances).await.expect("NAT instance stack accepted");

    let db =
        create(&client, &ns.name, Kind::Database, "orders", Kind::Database.spec()).await.expect("database accepted");
    let spec = &db.data["spec"];
    assert_eq!(spec["engine"], "postgres");
    assert_eq!(spec["engineVersion"], "16");
    assert_eq!(spec["instanceClass"], "db.t4g.micro");
    assert_eq!(spec["allocatedStorageGiB"], 20);
    assert_eq!(spec["databaseName"], "app");
    assert_eq!(spec["masterUsername"], "app");
    assert_eq!(spec["multiAz"], false);
    assert_eq!(spec["backupRetentionDays"], 7);
    assert_eq!(spec["deletionPolicy"], "Snapshot");
    assert_eq!(spec["connectionSecret"]["enabled"], true);

    let bastion =
        create(&client, &ns.name, Kind::Bastion, "ops", Kind::Bastion.spec()).await.expect("bastion accepted");
    assert_eq!(bastion.data["spec"]["access"], "Ssm");
    assert_eq!(bastion.data["spec"]["instanceType"], "t4g.nano");
    let ssh = json!({"stackRef": {"name": "web"}, "access": "Ssh", "allowedCidrs": ["203.0.113.0/24", "2001:db8::/56"],
                     "sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxl7b3Vh0example me@laptop", "ttl": "1h30m"});
    create(&client, &ns.name, Kind::Bastion, "ssh", ssh).await.expect("ssh bastion accepted");

    Kind::Link.api(&client, "").delete(&link_name, &DeleteParams::default()).await.expect("delete link");
}

/// (kind, change to the minimal valid spec, field path the message must name, words it must say)
fn invalid_cases() -> Vec<(Kind, Value, &'static str, &'static str)> {
    vec![
        (Kind::Link, json!({"accountId": "12345"}), "spec.accountId", "accountId must be exactly 12 digits"),
        (Kind::Link, json!({"accountId": "12345678901a"}), "spec.accountId", "accountId must be exactly 12 digits"),
        (Kind::Link, json!({"region": "Mars"}), "spec.region", "region must be an AWS region name"),
        (Kind::Link, json!({"roleName": "bad role!"}), "spec.roleName", "roleName must be a valid IAM role name"),
        (Kind::Link, json!({"externalId": "has spaces in it"}), "spec.externalId", "externalId may hold only"),
        (
            Kind::Link,
            json!({"bootstrap": {"mode": "CloudFormation"}}),
            "spec.bootstrap.credentialsSecretRef",
            "credentialsSecretRef is required",
        ),
        (Kind::Link, json!({"permissions": "Everything"}), "spec.permissions", "Unsupported value"),
        (
            Kind::Link,
            json!({"allowedNamespaces": ["Team_A"]}),
            "spec.allowedNamespaces",
            "allowedNamespaces holds namespace names",
        ),
        (Kind::Link, json!({"deletionPolicy": "Snapshot"}), "spec.deletionPolicy", "Unsupported value"),
        (Kind::Link, json!({"accountId": null}), "spec.accountId", "Required value"),
        (Kind::Stack, json!({"network": {"cidr": "10.0.0.0/8"}}), "spec.network.cidr", "between /16 and /22"),
        (Kind::Stack, json!({"network": {"cidr": "10.0.0.0/24"}}), "spec.network.cidr", "between /16 and /22"),
        (Kind::Stack, json!({"network": {"cidr": "10.0.0.1/16"}}), "spec.network.cidr", "no host bits set"),
        (Kind::Stack, json!({"network": {"cidr": "not-a-cidr"}}), "spec.network.cidr", "must be an IPv4 CIDR"),
        (Kind::Stack, json!({"network": {"cidr": "fd00::/48"}}), "spec.network.cidr", "must be an IPv4 CIDR"),
        (Kind::Stack, json!({"network": {"pattern": "Flat"}}), "spec.network.pattern", "Unsupported value"),
        (
            Kind::Stack,
            json!({"network": {"pattern": "PrivateIsolated", "natGateways": "Single"}}),
            "spec.network.natGateways",
            "natGateways applies only to the PublicPrivate pattern",
        ),
        (
            Kind::Stack,
            json!({"network": {"pattern": "PrivateIsolated", "natType": "Instance"}}),
            "spec.network.natType",
            "natType Instance applies only to the PublicPrivate pattern",
        ),
        (Kind::Stack, json!({"network": {"natType": "Box"}}), "spec.network.natType", "Unsupported value"),
        (
            Kind::Stack,
            json!({"network": {"natType": "Instance", "natInstanceType": "t4g nano"}}),
            "spec.network.natInstanceType",
            "natInstanceType must be an EC2 instance type",
        ),
        (
            Kind::Stack,
            json!({"network": {"availabilityZones": ["eu-west-1a", "eu-west-1b"]}}),
            "spec.network.availabilityZones",
            "at least 3 items",
        ),
        (
            Kind::Stack,
            json!({"network": {"availabilityZones": ["eu-west-1a", "eu-west-1a", "eu-west-1b"]}}),
            "spec.network.availabilityZones",
            "must be distinct",
        ),
        (Kind::Stack, json!({"tags": {"aws:cloudformation:stack-name": "x"}}), "spec.tags", "reserved keys"),
        (Kind::Stack, json!({"tags": {"tinystacks.io/owner": "me"}}), "spec.tags", "reserved keys"),
        (
            Kind::Stack,
            json!({"accountLinkRef": {"name": "Not_A_Name"}}),
            "spec.accountLinkRef.name",
            "valid Kubernetes object name",
        ),
        (Kind::Stack, json!({"region": "moon-1"}), "spec.region", "region must be an AWS region name"),
        (Kind::Database, json!({"allocatedStorageGiB": 10}), "spec.allocatedStorageGiB", "greater than or equal to 20"),
        (Kind::Database, json!({"backupRetentionDays": 40}), "spec.backupRetentionDays", "less than or equal to 35"),
        (Kind::Database, json!({"engine": "mysql"}), "spec.engine", "Unsupported value"),
        (Kind::Database, json!({"masterUsername": "rdsadmin"}), "spec.masterUsername", "reserves"),
        (
            Kind::Database,
            json!({"databaseName": "1orders"}),
            "spec.databaseName",
            "databaseName must start with a letter",
        ),
        (
            Kind::Database,
            json!({"instanceClass": "m5.large"}),
            "spec.instanceClass",
            "instanceClass must be an RDS instance class",
        ),
        (Kind::Database, json!({"engineVersion": "latest"}), "spec.engineVersion", "engineVersion must look like"),
        (Kind::Database, json!({"stackRef": {"name": "x".repeat(300)}}), "spec.stackRef.name", "Too long"),
        (Kind::Bastion, json!({"access": "Ssh"}), "spec.allowedCidrs", "allowedCidrs is required"),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["0.0.0.0/0"]}),
            "spec.allowedCidrs",
            "must not admit the whole internet",
        ),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["::/0"]}),
            "spec.allowedCidrs",
            "must not admit the whole internet",
        ),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["203.0.113.7"]}),
            "spec.allowedCidrs",
            "must hold CIDRs",
        ),
        (Kind::Bastion, json!({"sshPublicKey": "ssh-ed25519 AAAAC3Nza"}), "spec.sshPublicKey", "applies only to Ssh"),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24"], "sshPublicKey": "-----BEGIN PRIVATE KEY-----"}),
            "spec.sshPublicKey",
            "must be an OpenSSH public key",
        ),
        (Kind::Bastion, json!({"ttl": "forever"}), "spec.ttl", "ttl must be a positive duration"),
        (Kind::Bastion, json!({"ttl": "0s"}), "spec.ttl", "ttl must be a positive duration"),
        (Kind::Bastion, json!({"access": "Telnet"}), "spec.access", "Unsupported value"),
        (Kind::Bastion, json!({"instanceType": 5}), "spec.instanceType", "must be of type string"),
        // Wrong types.
        (Kind::Link, json!({"accountId": 123456789012_u64}), "spec.accountId", "must be of type string"),
        (Kind::Link, json!({"allowedNamespaces": "team-a"}), "spec.allowedNamespaces", "must be of type array"),
        (Kind::Stack, json!({"network": "10.0.0.0/16"}), "spec.network", "must be of type object"),
        (Kind::Stack, json!({"tags": ["team"]}), "spec.tags", "must be of type object"),
        (Kind::Stack, json!({"network": {"vpcLink": "yes"}}), "spec.network.vpcLink", "must be of type boolean"),
        (
            Kind::Database,
            json!({"allocatedStorageGiB": "twenty"}),
            "spec.allocatedStorageGiB",
            "must be of type integer",
        ),
        (Kind::Database, json!({"multiAz": 1}), "spec.multiAz", "must be of type boolean"),
        (Kind::Database, json!({"stackRef": "web"}), "spec.stackRef", "must be of type object"),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": "203.0.113.0/24"}),
            "spec.allowedCidrs",
            "must be of type array",
        ),
        // Very long strings: AWS's limits, checked before anything reaches AWS.
        (Kind::Stack, json!({"tags": {"team": "x".repeat(257)}}), "spec.tags", "values at most 256"),
        (Kind::Stack, json!({"tags": {"k".repeat(129): "x"}}), "spec.tags", "tag keys are 1-128 characters"),
        (Kind::Link, json!({"roleName": "r".repeat(65)}), "spec.roleName", "Too long"),
        (Kind::Link, json!({"externalId": "e".repeat(1225)}), "spec.externalId", "Too long"),
        (Kind::Database, json!({"databaseName": "d".repeat(64)}), "spec.databaseName", "Too long"),
        (Kind::Database, json!({"masterUsername": "u".repeat(64)}), "spec.masterUsername", "Too long"),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24"], "sshPublicKey": format!("ssh-ed25519 {}", "A".repeat(20_000))}),
            "spec.sshPublicKey",
            "Too long",
        ),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": vec!["203.0.113.0/24"; 21]}),
            "spec.allowedCidrs",
            "Too many",
        ),
        // Invalid CIDRs.
        (Kind::Stack, json!({"network": {"cidr": "10.300.0.0/16"}}), "spec.network.cidr", "must be an IPv4 CIDR"),
        (Kind::Stack, json!({"network": {"cidr": "10.0.0.0/33"}}), "spec.network.cidr", "must be an IPv4 CIDR"),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["203.0.300.0/24"]}),
            "spec.allowedCidrs",
            "must hold CIDRs",
        ),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24", "10.0.0.0/8 "]}),
            "spec.allowedCidrs",
            "must hold CIDRs",
        ),
        // SSH from everywhere, hidden among other CIDRs or spelled otherwise.
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24", "0.0.0.0/0"]}),
            "spec.allowedCidrs",
            "must not admit the whole internet",
        ),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["0::/0"]}),
            "spec.allowedCidrs",
            "must not admit the whole internet",
        ),
        // The whole internet in two halves, and ranges too wide to be an allow-list: each entry is
        // at most a /24 (IPv4) or a /56 (IPv6). All of these were admitted before.
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["0.0.0.0/1", "128.0.0.0/1"]}),
            "spec.allowedCidrs",
            "must be /24 or narrower (IPv4) and /56 or narrower (IPv6)",
        ),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["::/1", "8000::/1"]}),
            "spec.allowedCidrs",
            "must be /24 or narrower",
        ),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["198.51.100.10/32", "203.0.112.0/23"]}),
            "spec.allowedCidrs",
            "must be /24 or narrower",
        ),
        (
            Kind::Bastion,
            json!({"access": "Ssh", "allowedCidrs": ["2001:db8::/32"]}),
            "spec.allowedCidrs",
            "/56 or narrower (IPv6)",
        ),
    ]
}

/// Names the operator could never build its AWS and Kubernetes names from (every one of these was
/// admitted before, and stayed `Reconciling` for ever): (kind, name, words the refusal says).
/// The limits come from the names each kind builds (`tinystacks_operator::api::MAX_*_NAME`).
fn invalid_names() -> Vec<(Kind, String, &'static str)> {
    vec![
        // The KMS alias alias/tinystacks/<namespace>/<name> refuses '.'.
        (Kind::Stack, "web.v2".into(), "may hold only lowercase letters, digits and '-'"),
        // The VPC Link tinystacks-<namespace>-<name>: 128 at most.
        (Kind::Stack, "s".repeat(54), "at most 53 characters"),
        (Kind::Stack, "s".repeat(253), "at most 53 characters"),
        // The label tinystacks.io/database=<name> on the connection Secret: 63 at most.
        (Kind::Database, "d".repeat(64), "at most 63 characters"),
        (Kind::Database, format!("{}.{}", "d".repeat(126), "d".repeat(126)), "at most 63 characters"),
        (Kind::Bastion, "b".repeat(64), "at most 63 characters"),
        (Kind::Link, "l".repeat(64), "at most 63 characters"),
    ]
}

#[tokio::test]
async fn names_too_long_or_of_the_wrong_shape_for_what_the_operator_builds_are_refused() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "crd-names").await;
    let mut failures = Vec::new();
    for (i, (kind, name, words)) in invalid_names().into_iter().enumerate() {
        let result = create(&client, &ns.name, kind, &name, kind.spec()).await;
        if result.is_ok() {
            failures.push(format!("case {i} ({name}) was accepted"));
            let _ = kind.api(&client, &ns.name).delete(&name, &DeleteParams::default()).await;
            continue;
        }
        let message = rejection(result);
        if !message.contains("metadata.name") || !message.contains(words) {
            failures.push(format!("case {i} ({name}): expected metadata.name and {words:?} in: {message}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The longest names that fit, and the shapes that every derived name takes, are admitted.
    let link = format!("l{}", suffix()) + &"l".repeat(56);
    assert_eq!(link.len(), 63);
    for (kind, name) in [
        (Kind::Stack, "s".repeat(53)),
        (Kind::Stack, "web-v2".to_string()),
        (Kind::Database, "d".repeat(63)),
        (Kind::Database, "orders.v2".to_string()),
        (Kind::Bastion, "b".repeat(63)),
        (Kind::Bastion, "ops.v2".to_string()),
        (Kind::Link, link.clone()),
    ] {
        create(&client, &ns.name, kind, &name, kind.spec()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // A later update is not refused by the name rule (it is checked at creation only, so that
    // objects made before it existed can still be changed and deleted).
    let patch = json!({"metadata": {"labels": {"team": "a"}}});
    Kind::Stack
        .api(&client, &ns.name)
        .patch(&"s".repeat(53), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("update");
    Kind::Link.api(&client, "").delete(&link, &DeleteParams::default()).await.expect("delete link");
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_message_naming_the_field() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "crd-invalid").await;
    let cases = invalid_cases();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (i, (kind, change, field, words)) in cases.into_iter().enumerate() {
        let mut spec = kind.spec();
        merge(&mut spec, &change);
        let name = format!("invalid-{i}-{}", suffix());
        let result = create(&client, &ns.name, kind, &name, spec).await;
        if let Ok(obj) = &result {
            failures.push(format!("case {i} ({change}) was accepted"));
            if let Some(n) = &obj.metadata.name {
                let _ = kind.api(&client, &ns.name).delete(n, &DeleteParams::default()).await;
            }
            continue;
        }
        let message = rejection(result);
        if !message.contains(field) || !message.contains(words) {
            failures.push(format!("case {i} ({change}): expected {field:?} and {words:?} in: {message}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// (kind, change applied as an update, field path, words)
fn immutable_cases() -> Vec<(Kind, Value, Value, &'static str, &'static str)> {
    vec![
        (Kind::Link, json!({}), json!({"accountId": "210987654321"}), "spec.accountId", "accountId is immutable"),
        (Kind::Link, json!({}), json!({"roleName": "OtherRole"}), "spec.roleName", "roleName is immutable"),
        (
            Kind::Link,
            json!({"externalId": "first-id-1234"}),
            json!({"externalId": "second-id-1234"}),
            "spec.externalId",
            "externalId cannot be changed",
        ),
        (
            Kind::Link,
            json!({"externalId": "first-id-1234"}),
            json!({"externalId": null}),
            "spec.externalId",
            "externalId cannot be changed",
        ),
        (
            Kind::Stack,
            json!({}),
            json!({"accountLinkRef": {"name": "other"}}),
            "spec.accountLinkRef",
            "accountLinkRef is immutable",
        ),
        (Kind::Stack, json!({}), json!({"region": "us-west-2"}), "spec.region", "region is immutable"),
        (
            Kind::Stack,
            json!({"region": "us-east-1"}),
            json!({"region": "us-west-2"}),
            "spec.region",
            "region is immutable",
        ),
        (
            Kind::Stack,
            json!({}),
            json!({"network": {"pattern": "PrivateIsolated"}}),
            "spec.network.pattern",
            "network.pattern is immutable",
        ),
        (
            Kind::Stack,
            json!({}),
            json!({"network": {"cidr": "10.1.0.0/16"}}),
            "spec.network.cidr",
            "network.cidr is immutable",
        ),
        (
            Kind::Stack,
            json!({"network": {"availabilityZones": ["eu-west-1a", "eu-west-1b", "eu-west-1c"]}}),
            json!({"network": {"availabilityZones": ["eu-west-1a", "eu-west-1b", "eu-west-1d"]}}),
            "spec.network.availabilityZones",
            "immutable",
        ),
        (Kind::Database, json!({}), json!({"stackRef": {"name": "other"}}), "spec.stackRef", "stackRef is immutable"),
        (Kind::Database, json!({}), json!({"databaseName": "other"}), "spec.databaseName", "databaseName is immutable"),
        (
            Kind::Database,
            json!({}),
            json!({"masterUsername": "other"}),
            "spec.masterUsername",
            "masterUsername is immutable",
        ),
        (
            Kind::Database,
            json!({"allocatedStorageGiB": 50}),
            json!({"allocatedStorageGiB": 40}),
            "spec.allocatedStorageGiB",
            "may only grow",
        ),
        (Kind::Bastion, json!({}), json!({"stackRef": {"name": "other"}}), "spec.stackRef", "stackRef is immutable"),
    ]
}

#[tokio::test]
async fn immutable_fields_cannot_change_and_storage_only_grows() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "crd-immutable").await;
    let mut failures = Vec::new();
    for (i, (kind, initial, change, field, words)) in immutable_cases().into_iter().enumerate() {
        let mut spec = kind.spec();
        merge(&mut spec, &initial);
        let name = format!("immutable-{i}-{}", suffix());
        create(&client, &ns.name, kind, &name, spec).await.unwrap_or_else(|e| panic!("case {i}: {e}"));
        // A merge patch, not a replace: a running operator adding its finalizer must not turn
        // the expected rejection into a conflict.
        let patch = Patch::Merge(json!({ "spec": change }));
        let result = kind.api(&client, &ns.name).patch(&name, &PatchParams::default(), &patch).await;
        match result {
            Ok(_) => failures.push(format!("case {i} ({change}) was accepted")),
            Err(_) => {
                let message = rejection(result);
                if !message.contains(field) || !message.contains(words) {
                    failures.push(format!("case {i} ({change}): expected {field:?} and {words:?} in: {message}"));
                }
            }
        }
        if matches!(kind, Kind::Link) {
            let _ = kind.api(&client, "").delete(&name, &DeleteParams::default()).await;
        }
    }

    // Growth and the mutable fields are accepted.
    create(&client, &ns.name, Kind::Database, "grows", Kind::Database.spec()).await.expect("database");
    let grown = json!({"spec": {"allocatedStorageGiB": 100, "instanceClass": "db.t4g.small", "multiAz": true, "engineVersion": "17"}});
    Kind::Database
        .api(&client, &ns.name)
        .patch("grows", &PatchParams::default(), &Patch::Merge(grown))
        .await
        .expect("growth accepted");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_kind_has_status_printer_columns_short_names_and_category() {
    for crd in tinystacks_operator::api::crds() {
        let names = &crd.spec.names;
        assert_eq!(names.categories.as_deref(), Some(&["tinystacks".to_string()][..]), "{}", names.kind);
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{} status", names.kind);
        let columns: Vec<_> = version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        for column in ["Ready", "Reason", "Age"] {
            assert!(columns.contains(&column), "{} lacks column {column}", names.kind);
        }
        if names.kind != Bastion::kind(&()) {
            assert!(names.short_names.as_ref().is_some_and(|s| !s.is_empty()), "{} short name", names.kind);
        }
    }
}

/// References name objects in the referrer's own namespace; a `namespace` in one is not part of
/// the schema, so kubectl (strict field validation) refuses the manifest instead of the operator
/// quietly using the object's own namespace. Cross-namespace use of a link is `allowedNamespaces`'
/// business (tests/operator.rs, tests/account_link.rs).
#[tokio::test]
async fn a_reference_into_another_namespace_is_refused_as_an_unknown_field() {
    use std::io::Write;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "crd-crossref").await;
    let cases = [
        (Kind::Database, json!({"stackRef": {"name": "web", "namespace": "kube-system"}}), "spec.stackRef.namespace"),
        (Kind::Bastion, json!({"stackRef": {"name": "web", "namespace": "default"}}), "spec.stackRef.namespace"),
        (
            Kind::Stack,
            json!({"accountLinkRef": {"name": "link", "namespace": "other"}}),
            "spec.accountLinkRef.namespace",
        ),
    ];
    for (kind, spec, field) in cases {
        let manifest = serde_json::to_string(&kind.object(&format!("crossref-{}", suffix()), spec)).expect("JSON");
        let mut child = std::process::Command::new("kubectl")
            .args(["create", "--validate=strict", "-n", &ns.name, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl");
        child.stdin.take().expect("stdin").write_all(manifest.as_bytes()).expect("write the manifest");
        let out = child.wait_with_output().expect("kubectl ran");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {manifest}");
        assert!(stderr.contains("unknown field") && stderr.contains(field), "{field} named in: {stderr}");
    }
}

/// `kubectl get bastions -o wide` shows a Bastion's expiry as a time. A `date` column shows an age,
/// and kubectl prints a time still to come, which every expiry is, as `<invalid>`.
#[tokio::test]
async fn the_bastion_expiry_column_shows_the_time_to_come() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "crd-expires").await;
    let name = format!("jump-{}", suffix());
    create(&client, &ns.name, Kind::Bastion, &name, json!({"stackRef": {"name": "web"}})).await.expect("created");
    let expires = "2099-01-01T00:00:00Z";
    let status = json!({"status": {"expiresAt": expires}});
    let api = Api::<Bastion>::namespaced(client.clone(), &ns.name);
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("write the status");
    let out = std::process::Command::new("kubectl")
        .args(["get", "bastions.tinystacks.io", &name, "-n", &ns.name, "-o", "wide"])
        .output()
        .expect("kubectl");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.lines().next().is_some_and(|h| h.contains("EXPIRES")), "{table}");
    assert!(table.contains(expires) && !table.contains("<invalid>"), "{table}");
}
