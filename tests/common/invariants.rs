//! The security invariants that must hold in an account whatever happened to the operator (faults,
//! crashes, restarts), checked against what moto holds rather than against the operator's status.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Filter, IpPermission, SecurityGroup};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tinystacks_operator::api::{SSH_MAX_ADDRESSES_V4, SSH_MAX_ADDRESSES_V6};

use super::moto::account_config;

/// How many IPv4 and IPv6 addresses `ranges` admit together, each address counted once.
fn union_sizes(ranges: &[&str]) -> (u128, u128) {
    let nets: Vec<IpNet> = ranges.iter().filter_map(|r| r.parse().ok()).collect();
    let v4: Vec<Ipv4Net> = nets.iter().filter_map(|n| if let IpNet::V4(n) = n { Some(*n) } else { None }).collect();
    let v6: Vec<Ipv6Net> = nets.iter().filter_map(|n| if let IpNet::V6(n) = n { Some(*n) } else { None }).collect();
    let size = |bits: u32, prefix: u8| 1u128.checked_shl(bits - u32::from(prefix)).unwrap_or(u128::MAX);
    let v4 = Ipv4Net::aggregate(&v4).iter().map(|n| size(32, n.prefix_len())).fold(0, u128::saturating_add);
    let v6 = Ipv6Net::aggregate(&v6).iter().map(|n| size(128, n.prefix_len())).fold(0, u128::saturating_add);
    (v4, v6)
}

const OWNER_UID_TAG: &str = "tinystacks.io/owner-uid";
const OWNER_TAG: &str = "tinystacks.io/owner";
const COMPONENT_TAG: &str = "tinystacks.io/component";

/// Asserts, for everything the operator made in moto's `account` (region from the environment):
/// - no RDS instance is publicly accessible or unencrypted;
/// - every security group of an RDS instance admits only security groups (a Stack's `sg/app`
///   group or a Bastion's group), never an address range;
/// - port 22 is admitted from an address range only by a Bastion's group, and only from one of
///   `ssh_cidrs` (the `allowedCidrs` of the account's SSH Bastions; empty when there are none),
///   and the ranges one group admits to 22 together hold at most 256 IPv4 addresses and one /56
///   of IPv6 (`SSH_MAX_ADDRESSES_V4`, `SSH_MAX_ADDRESSES_V6`), however they are split;
/// - a Stack's NAT instance group (`sg/nat-instance`) admits only its Stack's private subnets'
///   CIDRs (the traffic it forwards; this is no SSH from outside), nothing else; every NAT instance
///   has no key pair, requires IMDSv2 and is only in such groups;
/// - the route tables of isolated subnets (`subnet/isolated/*`) have no route out: only the local
///   route and gateway endpoints' routes, nothing to an internet or NAT gateway;
/// - no KMS key that encrypts a DB instance, a DB snapshot or a Secrets Manager secret is scheduled
///   for deletion (once deleted, KMS cannot bring it back, and what it encrypts is lost).
///
/// Panics with every violation found, so a test calls it after each fault run, crash or restart.
pub async fn assert_security_invariants(account: &str, ssh_cidrs: &[&str]) {
    let config = account_config(account).await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let rds = aws_sdk_rds::Client::new(&config);
    let mut violations = Vec::new();

    let groups: Vec<SecurityGroup> = ec2
        .describe_security_groups()
        .filters(Filter::builder().name("tag-key").values(OWNER_UID_TAG).build())
        .send()
        .await
        .expect("describe security groups")
        .security_groups()
        .to_vec();
    let by_id: BTreeMap<&str, &SecurityGroup> = groups.iter().filter_map(|g| Some((g.group_id()?, g))).collect();
    let tag = |g: &SecurityGroup, key: &str| -> Option<String> {
        g.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value()).map(str::to_string)
    };
    let is_bastion = |g: &SecurityGroup| tag(g, OWNER_TAG).is_some_and(|o| o.starts_with("Bastion/"));
    let is_app = |g: &SecurityGroup| tag(g, COMPONENT_TAG).as_deref() == Some("sg/app");
    let subnets = ec2
        .describe_subnets()
        .filters(Filter::builder().name("tag-key").values(OWNER_UID_TAG).build())
        .send()
        .await
        .expect("describe subnets");
    let private = private_cidrs(subnets.subnets());
    // What a NAT instance group may admit: its own Stack's private subnets, and only those.
    let nat_admits = |g: &SecurityGroup, range: &str| {
        tag(g, COMPONENT_TAG).as_deref() == Some(NAT_GROUP)
            && tag(g, OWNER_UID_TAG).and_then(|uid| private.get(&uid)).is_some_and(|c| c.contains(range))
    };
    violations.extend(nat_instance_violations(&ec2, &groups, &nat_admits).await);

    let instances = rds.describe_db_instances().send().await.expect("describe DB instances");
    for i in instances.db_instances() {
        let name = i.db_instance_identifier().unwrap_or_default();
        if i.publicly_accessible() != Some(false) {
            violations.push(format!("DB instance {name} is publicly accessible ({:?})", i.publicly_accessible()));
        }
        if i.storage_encrypted() != Some(true) {
            violations.push(format!("DB instance {name} is not encrypted ({:?})", i.storage_encrypted()));
        }
        for membership in i.vpc_security_groups() {
            let id = membership.vpc_security_group_id().unwrap_or_default();
            let Some(group) = by_id.get(id) else {
                violations
                    .push(format!("DB instance {name} has the security group {id}, which the operator did not make"));
                continue;
            };
            for p in group.ip_permissions() {
                if !p.ip_ranges().is_empty() || !p.ipv6_ranges().is_empty() || !p.prefix_list_ids().is_empty() {
                    violations.push(format!("DB group {id} of {name} admits address ranges: {p:?}"));
                }
                for pair in p.user_id_group_pairs() {
                    let source = pair.group_id().unwrap_or_default();
                    let allowed = by_id.get(source).is_some_and(|s| is_app(s) || is_bastion(s));
                    if !allowed {
                        violations
                            .push(format!("DB group {id} of {name} admits {source}, not an app or Bastion group"));
                    }
                }
            }
        }
    }

    let covers_ssh = |p: &IpPermission| {
        p.ip_protocol() == Some("-1")
            || (p.ip_protocol() == Some("tcp")
                && p.from_port().unwrap_or(0) <= 22
                && p.to_port().unwrap_or(65535) >= 22)
    };
    for g in &groups {
        let id = g.group_id().unwrap_or_default();
        for p in g.ip_permissions().iter().filter(|p| covers_ssh(p)) {
            let ranges: Vec<&str> = p
                .ip_ranges()
                .iter()
                .filter_map(|r| r.cidr_ip())
                .chain(p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()))
                .collect();
            for range in ranges.iter().filter(|r| !nat_admits(g, r)) {
                if !is_bastion(g) || !ssh_cidrs.contains(range) {
                    violations.push(format!("group {id} admits SSH from {range} ({:?})", tag(g, OWNER_TAG)));
                }
            }
        }
        let ssh_ranges: Vec<&str> = g
            .ip_permissions()
            .iter()
            .filter(|p| covers_ssh(p))
            .flat_map(|p| {
                p.ip_ranges()
                    .iter()
                    .filter_map(|r| r.cidr_ip())
                    .chain(p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()))
            })
            .filter(|r| !nat_admits(g, r))
            .collect();
        let (v4, v6) = union_sizes(&ssh_ranges);
        if v4 > SSH_MAX_ADDRESSES_V4 || v6 > SSH_MAX_ADDRESSES_V6 {
            violations.push(format!("group {id} admits SSH from {v4} IPv4 and {v6} IPv6 addresses: {ssh_ranges:?}"));
        }
    }

    let isolated: Vec<&str> = subnets
        .subnets()
        .iter()
        .filter(|s| {
            s.tags()
                .iter()
                .any(|t| t.key() == Some(COMPONENT_TAG) && t.value().is_some_and(|v| v.starts_with("subnet/isolated/")))
        })
        .filter_map(|s| s.subnet_id())
        .collect();
    if !isolated.is_empty() {
        let tables = ec2
            .describe_route_tables()
            .filters(Filter::builder().name("tag-key").values(OWNER_UID_TAG).build())
            .send()
            .await
            .expect("describe route tables");
        for t in tables.route_tables() {
            let serves_isolated = t.associations().iter().any(|a| a.subnet_id().is_some_and(|s| isolated.contains(&s)));
            if !serves_isolated {
                continue;
            }
            for r in t.routes() {
                let gateway = r.gateway_id().unwrap_or_default();
                let local = gateway == "local";
                let endpoint = gateway.starts_with("vpce-");
                if !local && !endpoint {
                    violations.push(format!(
                        "route table {} of an isolated subnet has a route out: {:?} to {:?}",
                        t.route_table_id().unwrap_or_default(),
                        r.destination_cidr_block().or(r.destination_prefix_list_id()),
                        r.gateway_id().or(r.nat_gateway_id()).or(r.instance_id()).or(r.transit_gateway_id())
                    ));
                }
            }
        }
    }

    violations.extend(keys_in_use_pending_deletion(&config).await);
    assert!(violations.is_empty(), "security invariants violated in account {account}:\n{}", violations.join("\n"));
}

const NAT_GROUP: &str = "sg/nat-instance";

/// The private subnets' CIDRs of each Stack, by its owner UID.
fn private_cidrs(subnets: &[aws_sdk_ec2::types::Subnet]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in subnets {
        let tag = |key: &str| s.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value());
        if let (Some(uid), Some(cidr)) = (tag(OWNER_UID_TAG), s.cidr_block())
            && tag(COMPONENT_TAG).is_some_and(|c| c.starts_with("subnet/private/"))
        {
            out.entry(uid.to_string()).or_default().insert(cidr.to_string());
        }
    }
    out
}

/// What is wrong with the NAT instance groups (anything admitted beyond `nat_admits`) and the NAT
/// instances (a key pair, IMDSv1, a group that is not a NAT instance group).
async fn nat_instance_violations(
    ec2: &aws_sdk_ec2::Client,
    groups: &[SecurityGroup],
    nat_admits: &dyn Fn(&SecurityGroup, &str) -> bool,
) -> Vec<String> {
    let mut violations = Vec::new();
    let component = |tags: &[aws_sdk_ec2::types::Tag]| {
        tags.iter().find(|t| t.key() == Some(COMPONENT_TAG)).and_then(|t| t.value()).map(str::to_string)
    };
    let nat_groups: Vec<&SecurityGroup> =
        groups.iter().filter(|g| component(g.tags()).as_deref() == Some(NAT_GROUP)).collect();
    for g in &nat_groups {
        let id = g.group_id().unwrap_or_default();
        for p in g.ip_permissions() {
            if !p.ipv6_ranges().is_empty() || !p.user_id_group_pairs().is_empty() || !p.prefix_list_ids().is_empty() {
                violations.push(format!("NAT instance group {id} admits more than address ranges: {p:?}"));
            }
            for range in p.ip_ranges().iter().filter_map(|r| r.cidr_ip()) {
                if !nat_admits(g, range) {
                    violations
                        .push(format!("NAT instance group {id} admits {range}, not a private subnet of its Stack"));
                }
            }
        }
    }
    let nat_group_ids: Vec<&str> = nat_groups.iter().filter_map(|g| g.group_id()).collect();
    let listed = ec2
        .describe_instances()
        .filters(Filter::builder().name("tag-key").values(OWNER_UID_TAG).build())
        .send()
        .await
        .expect("describe instances");
    let instances = listed.reservations().iter().flat_map(|r| r.instances());
    let nat_instances = instances
        .filter(|i| component(i.tags()).is_some_and(|c| c.starts_with("nat-instance/")))
        .filter(|i| i.state().and_then(|s| s.name()).is_none_or(|n| n.as_str() != "terminated"));
    for i in nat_instances {
        let id = i.instance_id().unwrap_or_default();
        if let Some(key) = i.key_name().filter(|k| !k.is_empty()) {
            violations.push(format!("NAT instance {id} has the key pair {key}"));
        }
        let tokens = i.metadata_options().and_then(|m| m.http_tokens()).map(|t| t.as_str().to_string());
        if tokens.as_deref() != Some("required") {
            violations.push(format!("NAT instance {id} does not require IMDSv2 ({tokens:?})"));
        }
        let in_groups = i.network_interfaces().iter().flat_map(|n| n.groups()).filter_map(|g| g.group_id());
        for g in in_groups.filter(|g| !nat_group_ids.contains(g)) {
            violations.push(format!("NAT instance {id} is in group {g}, not a NAT instance group"));
        }
    }
    violations
}

/// The keys scheduled for deletion while a DB instance, a DB snapshot or a secret still uses them.
async fn keys_in_use_pending_deletion(config: &aws_config::SdkConfig) -> Vec<String> {
    let rds = aws_sdk_rds::Client::new(config);
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let instances = rds.describe_db_instances().send().await.expect("describe DB instances");
    for i in instances.db_instances() {
        if let Some(key) = i.kms_key_id() {
            let what = format!("DB instance {}", i.db_instance_identifier().unwrap_or_default());
            users.entry(key.to_string()).or_default().push(what);
        }
    }
    let snapshots = rds.describe_db_snapshots().send().await.expect("describe DB snapshots");
    for s in snapshots.db_snapshots() {
        if let Some(key) = s.kms_key_id() {
            let what = format!("DB snapshot {}", s.db_snapshot_identifier().unwrap_or_default());
            users.entry(key.to_string()).or_default().push(what);
        }
    }
    let secrets = aws_sdk_secretsmanager::Client::new(config);
    for s in secrets.list_secrets().send().await.expect("list secrets").secret_list() {
        if let Some(key) = s.kms_key_id() {
            users.entry(key.to_string()).or_default().push(format!("secret {}", s.name().unwrap_or_default()));
        }
    }
    let kms = aws_sdk_kms::Client::new(config);
    let mut violations = Vec::new();
    for (key, what) in users {
        let Ok(described) = kms.describe_key().key_id(&key).send().await else { continue };
        let state = described.key_metadata().and_then(|m| m.key_state()).map(|s| s.as_str().to_string());
        if state.as_deref() == Some("PendingDeletion") {
            violations.push(format!("KMS key {key} is scheduled for deletion but encrypts {}", what.join(", ")));
        }
    }
    violations
}

/// The label on every Secret the operator writes.
const MANAGED: (&str, &str) = ("app.kubernetes.io/managed-by", "tinystacks-operator");

/// Asserts, for the Secrets of `namespace`, that the operator wrote none it does not own:
/// - every Secret with the operator's label has one controller, a Database or Bastion of the
///   namespace that exists with that UID, and carries the name that object writes
///   (`spec.connectionSecret.name` or `<name>-connection`; `<name>-ssh-key`);
/// - every Secret named in `foreign` (the test's own, made before the operator ran) still has
///   the resourceVersion it had then: never written, never deleted.
///
/// Panics with every violation found.
pub async fn assert_secrets_owned(client: &kube::Client, namespace: &str, foreign: &[(&str, &str)]) {
    use k8s_openapi::api::core::v1::Secret;
    use kube::{Api, ResourceExt};
    use tinystacks_operator::api::{Bastion, Database};

    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let list = secrets.list(&Default::default()).await.expect("list Secrets");
    let databases = Api::<Database>::namespaced(client.clone(), namespace).list(&Default::default()).await;
    let bastions = Api::<Bastion>::namespaced(client.clone(), namespace).list(&Default::default()).await;
    let (databases, bastions) = (databases.expect("Databases").items, bastions.expect("Bastions").items);
    let mut violations = Vec::new();
    for s in &list.items {
        let name = s.name_any();
        if s.labels().get(MANAGED.0).map(String::as_str) != Some(MANAGED.1) {
            continue;
        }
        let controllers: Vec<_> = s.owner_references().iter().filter(|o| o.controller == Some(true)).collect();
        let [c] = controllers.as_slice() else {
            violations.push(format!("Secret {name} has the operator's label and {} controllers", controllers.len()));
            continue;
        };
        let wanted = match c.kind.as_str() {
            "Database" => databases.iter().find(|d| d.uid().as_deref() == Some(c.uid.as_str())).map(|d| {
                d.spec.connection_secret.name.clone().unwrap_or_else(|| format!("{}-connection", d.name_any()))
            }),
            "Bastion" => bastions
                .iter()
                .find(|b| b.uid().as_deref() == Some(c.uid.as_str()))
                .map(|b| format!("{}-ssh-key", b.name_any())),
            _ => None,
        };
        match wanted {
            Some(w) if w == name => {}
            Some(w) => {
                violations.push(format!("Secret {name} is controlled by {} {}, which writes {w}", c.kind, c.name))
            }
            None => violations.push(format!(
                "Secret {name} is controlled by {} {} (uid {}), which does not exist",
                c.kind, c.name, c.uid
            )),
        }
    }
    for (name, version) in foreign {
        match list.items.iter().find(|s| s.name_any() == *name) {
            None => violations.push(format!("the Secret {name}, not the operator's, was deleted")),
            Some(s) if s.resource_version().as_deref() != Some(*version) => {
                violations.push(format!("the Secret {name}, not the operator's, was written"))
            }
            Some(_) => {}
        }
    }
    assert!(violations.is_empty(), "Secrets of namespace {namespace}:\n{}", violations.join("\n"));
}

/// The prefix of the audit trails' buckets (`account_link::audit::plan::NAME_PREFIX`).
const TRAIL_BUCKET_PREFIX: &str = "tinystacks-trail-";

/// Asserts, for every audit trail bucket in moto's `account`: all four public access block
/// settings are on, and its policy allows nobody but the CloudTrail service, and that only under
/// an `aws:SourceArn` condition (a `*` principal may appear only in a Deny).
pub async fn assert_trail_buckets_private(account: &str) {
    let config = account_config(account).await;
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build());
    let buckets = s3.list_buckets().send().await.expect("list buckets");
    let mut violations = Vec::new();
    for name in buckets.buckets().iter().filter_map(|b| b.name()).filter(|n| n.starts_with(TRAIL_BUCKET_PREFIX)) {
        let block = s3.get_public_access_block().bucket(name).send().await.ok();
        let c = block.as_ref().and_then(|b| b.public_access_block_configuration());
        let all_on = c.is_some_and(|c| {
            [c.block_public_acls(), c.ignore_public_acls(), c.block_public_policy(), c.restrict_public_buckets()]
                .iter()
                .all(|v| *v == Some(true))
        });
        if !all_on {
            violations.push(format!("bucket {name}: public access block not fully on: {c:?}"));
        }
        let policy = s3.get_bucket_policy().bucket(name).send().await.ok();
        let policy: serde_json::Value =
            policy.and_then(|p| p.policy().and_then(|p| serde_json::from_str(p).ok())).unwrap_or_default();
        for statement in policy["Statement"].as_array().into_iter().flatten() {
            if statement["Effect"] != "Allow" {
                continue;
            }
            let principal = &statement["Principal"];
            let cloudtrail_only = *principal == serde_json::json!({"Service": "cloudtrail.amazonaws.com"});
            let conditioned = statement["Condition"]["StringEquals"]["aws:SourceArn"].is_string();
            if !cloudtrail_only || !conditioned {
                violations.push(format!(
                    "bucket {name}: a statement allows {principal} (conditions {})",
                    statement["Condition"]
                ));
            }
        }
    }
    assert!(violations.is_empty(), "trail bucket invariants violated:\n{}", violations.join("\n"));
}
