//! The Bastion's decisions, without AWS: every step of the plan from nothing to Ready, drift, the
//! TTL, the guarded wait, deletion order, and no secret in any detail.

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::account_link::template::{MANAGED_BY_TAG, MANAGED_BY_VALUE, OWNER_TAG, OWNER_UID_TAG};
use crate::api::{BastionSpec, SubnetTier};
use crate::aws::inventory::{Source, new_security_group};

const UID: &str = "0b6a4c8e-1f2d";
const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGeneratedPublicHalf bastion";

fn spec_of(json: serde_json::Value) -> BastionSpec {
    let mut full = serde_json::json!({"stackRef": {"name": "web"}});
    full.as_object_mut().unwrap().extend(json.as_object().unwrap().clone());
    serde_json::from_value(full).unwrap()
}

fn ssh() -> BastionSpec {
    spec_of(serde_json::json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24"], "instanceType": "t3.micro"}))
}

fn names() -> Names {
    Names::new("team", "web", "jump", UID)
}

fn placement() -> Placement {
    Placement {
        vpc_id: "vpc-1".into(),
        subnet_id: "subnet-pub-a".into(),
        tier_subnets: BTreeSet::from(["subnet-pub-a".to_string(), "subnet-pub-b".to_string()]),
        tier: SubnetTier::Public,
        public_ip: true,
    }
}

fn our_tags() -> Tags {
    [(MANAGED_BY_TAG, MANAGED_BY_VALUE), (OWNER_TAG, "Bastion/team/jump"), (OWNER_UID_TAG, UID)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn desired<'a>(spec: &'a BastionSpec, names: &'a Names, placement: &'a Placement) -> Desired<'a> {
    Desired {
        spec,
        names,
        uid: UID,
        placement,
        known_instance: Some("i-1"),
        expires: None,
        now: t("2026-01-01T00:00:00Z"),
    }
}

fn ssh_rule(cidr: &str) -> Rule {
    Rule { protocol: "tcp".into(), from: Some(22), to: Some(22), source: Source::Cidr(cidr.into()) }
}

/// Everything an `Ssh` Bastion with a generated key has once it is Ready.
fn converged(names: &Names) -> Observed {
    let mut group = new_security_group("sg-1", "vpc-1", &names.base, our_tags());
    group.ingress.insert(ssh_rule("203.0.113.0/24"));
    let key_pair = names.key_pair(PUBLIC_KEY);
    Observed {
        role: Some(ObservedRole {
            tags: our_tags(),
            policies: BTreeSet::from([ROLE_POLICY_NAME.to_string()]),
            ..Default::default()
        }),
        profile: Some(ObservedProfile {
            arn: format!("arn:aws:iam::1:instance-profile/tinystacks/{}", names.base),
            tags: our_tags(),
            roles: vec![names.base.clone()],
        }),
        group: Some(group),
        key_pairs: vec![ObservedKeyPair { name: key_pair.clone(), tags: our_tags() }],
        generated_key: Some(PUBLIC_KEY.into()),
        instances: vec![ObservedInstance {
            id: "i-1".into(),
            state: InstanceStateName::Running,
            subnet_id: Some("subnet-pub-b".into()),
            public_ip: Some("198.51.100.7".into()),
            key_name: Some(key_pair),
            instance_type: "t3.micro".into(),
            security_groups: BTreeSet::from(["sg-1".to_string()]),
            profile_arn: Some(format!("arn:aws:iam::1:instance-profile/tinystacks/{}", names.base)),
            ..ObservedInstance::launched("i-1".into())
        }],
    }
}

fn keys(spec: &BastionSpec, names: &Names, o: &Observed, changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| {
            let p = c.planned(names, spec, Some(&placement()), o);
            format!("{:?} {} {}", p.action, p.resource, p.name)
        })
        .collect()
}

#[test]
fn a_new_bastion_plans_every_step_in_order() {
    let (spec, names, placement) = (ssh(), names(), placement());
    let empty = Observed::default();
    let plan = plan(&desired(&spec, &names, &placement), &empty).unwrap();
    assert_eq!(plan.expired, None);
    assert_eq!(
        keys(&spec, &names, &empty, &plan.changes),
        [
            "Create iam:Role role",
            "Update iam:RolePolicy role/policy",
            "Create iam:InstanceProfile instance-profile",
            "Update iam:InstanceProfile instance-profile/role",
            "Create ec2:SecurityGroup security-group",
            "Create ec2:SecurityGroupIngress security-group/ingress",
            "Create ec2:KeyPair key-pair",
            "Create ec2:Instance instance",
        ]
    );
    assert_eq!(plan.changes[5], Change::AuthorizeIngress(vec![ssh_rule("203.0.113.0/24")]));
    assert_eq!(plan.changes[6], Change::GenerateKey, "the key Secret is written before the import");
    let launch = plan.changes[7].planned(&names, &spec, Some(&placement), &empty);
    assert!(launch.detail.contains("t3.micro in subnet subnet-pub-a (Public, with a public IP)"), "{}", launch.detail);
}

#[test]
fn each_step_done_leaves_the_rest_and_a_converged_bastion_plans_nothing() {
    let (spec, names, placement) = (ssh(), names(), placement());
    let d = desired(&spec, &names, &placement);
    let full = converged(&names);
    assert_eq!(plan(&d, &full).unwrap(), Plan::default(), "AWS matches: an empty plan");

    let no_policy = Observed { role: Some(ObservedRole { tags: our_tags(), ..Default::default() }), ..full.clone() };
    assert_eq!(plan(&d, &no_policy).unwrap().changes, [Change::PutRolePolicy]);
    let mut profile_empty = full.clone();
    profile_empty.profile.as_mut().unwrap().roles.clear();
    assert_eq!(plan(&d, &profile_empty).unwrap().changes, [Change::AddRoleToInstanceProfile]);
    // The key Secret exists, its key pair not yet: import that very public key.
    let no_pair = Observed { key_pairs: vec![], ..full.clone() };
    assert_eq!(
        plan(&d, &no_pair).unwrap().changes,
        [Change::ImportKeyPair { name: names.key_pair(PUBLIC_KEY), public_key: PUBLIC_KEY.into() }]
    );
    // Ssm: no key, no ingress; the group's SSH rule goes.
    let ssm = spec_ssm();
    let d_ssm = desired(&ssm, &names, &placement);
    let changes = plan(&d_ssm, &full).unwrap().changes;
    assert_eq!(changes[0], Change::RevokeIngress(vec![ssh_rule("203.0.113.0/24")]));
    assert!(
        matches!(&changes[1], Change::Terminate { reason: Termination::Replace(why), .. } if why.contains("key pair"))
    );
    assert_eq!(changes[2], Change::Launch { key_name: None });
    assert_eq!(changes[3], Change::DeleteKeyPair(names.key_pair(PUBLIC_KEY)), "the unused key pair goes last");
}

fn spec_ssm() -> BastionSpec {
    spec_of(serde_json::json!({"access": "Ssm", "instanceType": "t3.micro"}))
}

#[test]
fn a_rule_opened_by_hand_is_revoked_and_allowed_cidrs_edits_are_exact() {
    let (spec, names, placement) = (ssh(), names(), placement());
    let d = desired(&spec, &names, &placement);
    let mut drifted = converged(&names);
    drifted.group.as_mut().unwrap().ingress.insert(ssh_rule("0.0.0.0/0"));
    let changes = plan(&d, &drifted).unwrap().changes;
    assert_eq!(changes, [Change::RevokeIngress(vec![ssh_rule("0.0.0.0/0")])]);
    let shown = changes[0].planned(&names, &spec, Some(&placement), &drifted);
    assert_eq!(
        (shown.action, shown.resource.as_str(), shown.id.as_deref()),
        (ChangeAction::Delete, "ec2:SecurityGroupIngress", Some("sg-1"))
    );
    assert_eq!(shown.detail, "revoke tcp/22 from 0.0.0.0/0");

    let moved =
        spec_of(serde_json::json!({"access": "Ssh", "allowedCidrs": ["198.51.100.0/24"], "instanceType": "t3.micro"}));
    let changes = plan(&desired(&moved, &names, &placement), &converged(&names)).unwrap().changes;
    assert_eq!(
        changes,
        [
            Change::RevokeIngress(vec![ssh_rule("203.0.113.0/24")]),
            Change::AuthorizeIngress(vec![ssh_rule("198.51.100.0/24")])
        ]
    );
}

#[test]
fn instances_are_launched_replaced_and_deduplicated() {
    let (spec, names, placement) = (ssh(), names(), placement());
    let d = desired(&spec, &names, &placement);
    let key_name = Some(names.key_pair(PUBLIC_KEY));
    // Terminated behind the operator's back: a new one.
    let mut gone = converged(&names);
    gone.instances[0].state = InstanceStateName::Terminated;
    assert_eq!(plan(&d, &gone).unwrap().changes, [Change::Launch { key_name: key_name.clone() }]);
    // Another type asked for: terminate, then launch.
    let bigger =
        spec_of(serde_json::json!({"access": "Ssh", "allowedCidrs": ["203.0.113.0/24"], "instanceType": "t3.large"}));
    let changes = plan(&desired(&bigger, &names, &placement), &converged(&names)).unwrap().changes;
    assert!(
        matches!(&changes[0], Change::Terminate { ids, reason: Termination::Replace(why) } if ids == &["i-1"] && why.contains("t3.large"))
    );
    assert_eq!(changes[1], Change::Launch { key_name: key_name.clone() });
    // Two running: the one status names stays.
    let mut two = converged(&names);
    two.instances.push(ObservedInstance { id: "i-0".into(), launch_time: Some(0), ..two.instances[0].clone() });
    let changes = plan(&d, &two).unwrap().changes;
    assert_eq!(changes, [Change::Terminate { ids: vec!["i-0".into()], reason: Termination::Duplicate }]);
}

#[test]
fn past_the_ttl_only_the_instances_are_terminated_then_nothing() {
    let (spec, names, placement) = (ssh(), names(), placement());
    let at = t("2025-12-31T23:00:00Z");
    let d = Desired { expires: Some(at), ..desired(&spec, &names, &placement) };
    let mut drifted = converged(&names);
    drifted.group.as_mut().unwrap().ingress.insert(ssh_rule("0.0.0.0/0"));
    let expired = plan(&d, &drifted).unwrap();
    assert_eq!(expired.expired, Some(at));
    assert_eq!(expired.changes, [Change::Terminate { ids: vec!["i-1".into()], reason: Termination::Expired(at) }]);
    assert!(expired.changes[0].planned(&names, &spec, None, &drifted).detail.contains("the ttl ended"));
    drifted.instances[0].state = InstanceStateName::ShuttingDown;
    assert_eq!(plan(&d, &drifted).unwrap(), Plan { changes: vec![], expired: Some(at) });
    // Before expiry the TTL changes nothing.
    let later = Desired { expires: Some(t("2026-01-01T08:00:00Z")), ..d };
    assert_eq!(plan(&later, &converged(&names)).unwrap(), Plan::default());
}

#[test]
fn while_the_stack_is_not_ready_only_the_ttl_and_revocations_are_planned() {
    let (spec, names, placement) = (ssh(), names(), placement());
    let d = desired(&spec, &names, &placement);
    let mut drifted = converged(&names);
    drifted.group.as_mut().unwrap().ingress.insert(ssh_rule("0.0.0.0/0"));
    drifted.instances[0].instance_type = "t3.large".into();
    assert_eq!(guarded(&d, &drifted).changes, [Change::RevokeIngress(vec![ssh_rule("0.0.0.0/0")])]);
    assert_eq!(guarded(&d, &Observed::default()), Plan::default(), "nothing is created");
    let mut theirs = drifted.clone();
    theirs.group.as_mut().unwrap().tags = Tags::default();
    assert_eq!(guarded(&d, &theirs), Plan::default(), "a group that is not the Bastion's is left alone");
    let at = t("2025-12-31T00:00:00Z");
    let expired = guarded(&Desired { expires: Some(at), ..d }, &drifted);
    assert_eq!(expired.changes, [Change::Terminate { ids: vec!["i-1".into()], reason: Termination::Expired(at) }]);
}

#[test]
fn resources_of_another_owner_are_refused_not_changed() {
    let (spec, names, placement) = (ssh(), names(), placement());
    let mut theirs = converged(&names);
    theirs.group.as_mut().unwrap().tags = Tags::default();
    let error = plan(&desired(&spec, &names, &placement), &theirs).expect_err("NameTaken");
    assert_eq!(error.reason(), "NameTaken");
}

#[test]
fn deletion_goes_instance_first_then_key_pairs_group_profile_role() {
    let names = names();
    let mut o = converged(&names);
    o.role.as_mut().unwrap().attached.insert("arn:aws:iam::aws:policy/Extra".into());
    o.key_pairs.push(ObservedKeyPair { name: "someone-elses".into(), tags: Tags::default() });
    let order = teardown(UID, &o);
    assert_eq!(
        order.changes,
        [
            Change::Terminate { ids: vec!["i-1".into()], reason: Termination::Deleting },
            Change::DeleteKeyPair(names.key_pair(PUBLIC_KEY)),
            Change::DeleteSecurityGroup("sg-1".into()),
            Change::RemoveRoleFromInstanceProfile(names.base.clone()),
            Change::DeleteInstanceProfile,
            Change::DeleteRolePolicy(ROLE_POLICY_NAME.into()),
            Change::DetachRolePolicy("arn:aws:iam::aws:policy/Extra".into()),
            Change::DeleteRole,
        ]
    );
    assert_eq!(order.waiting.as_deref(), Some("i-1 (running)"));
    o.instances[0].state = InstanceStateName::ShuttingDown;
    let order = teardown(UID, &o);
    assert_eq!(order.changes[0], Change::DeleteKeyPair(names.key_pair(PUBLIC_KEY)));
    assert_eq!(order.waiting.as_deref(), Some("i-1 (shutting-down)"), "nothing else goes before it is terminated");
    o.instances[0].state = InstanceStateName::Terminated;
    assert_eq!(teardown(UID, &o).waiting, None);
    assert_eq!(teardown(UID, &Observed::default()), Teardown::default());
}

#[test]
fn no_detail_of_any_plan_holds_a_private_key() {
    let (spec, names, placement) = (ssh(), names(), placement());
    let private = crate::bastion::keys::GeneratedKey::generate("test").expect("a key");
    let private_text = String::from_utf8(private.private_bytes()).expect("UTF-8");
    let mut o = converged(&names);
    o.generated_key = Some(private.public_openssh.clone());
    o.key_pairs.clear();
    o.group.as_mut().unwrap().ingress.insert(ssh_rule("0.0.0.0/0"));
    let mut changes = plan(&desired(&spec, &names, &placement), &o).unwrap().changes;
    changes.extend(plan(&desired(&spec, &names, &placement), &Observed::default()).unwrap().changes);
    changes.extend(teardown(UID, &converged(&names)).changes);
    let shown = serde_json::to_string(
        &changes.iter().map(|c| c.planned(&names, &spec, Some(&placement), &o)).collect::<Vec<_>>(),
    )
    .unwrap();
    for line in private_text.lines().filter(|l| !l.starts_with("-----") && l.len() > 20) {
        assert!(!shown.contains(line), "a line of the private key is in the plan");
    }
    assert!(shown.contains("key-pair"), "the plan was rendered: {shown}");
}
