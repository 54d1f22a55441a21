use std::collections::BTreeSet;

use super::*;
use crate::aws::inventory::Source;
use crate::database::plan::tags;

const UID: &str = "uid-1";

fn spec() -> DatabaseSpec {
    serde_json::from_value(serde_json::json!({"stackRef": {"name": "web"}})).unwrap()
}

fn names() -> Names {
    Names::new("ns", "web", "db", UID, &spec())
}

fn placement() -> Placement {
    Placement {
        vpc_id: "vpc-1".into(),
        subnet_ids: BTreeSet::from(["subnet-a".to_string(), "subnet-b".to_string()]),
        app_security_group: "sg-app".into(),
        kms_key_arn: "arn:aws:kms:us-east-1:1:key/k1".into(),
    }
}

fn ours() -> Tags {
    tags("ns", "db", UID, "ns/web/db").into_iter().collect()
}

fn group_rule(group: &str) -> Rule {
    Rule { protocol: "tcp".into(), from: Some(5432), to: Some(5432), source: Source::Group(group.into()) }
}

/// Everything exists, matches, and RDS has the secret's password: nothing to do.
fn converged() -> View {
    let instance = ObservedInstance {
        identifier: names().instance,
        status: "available".into(),
        endpoint: Some(("db.example".into(), 5432)),
        security_groups: vec!["sg-db".into()],
        deletion_protection: true,
        storage_encrypted: true,
        kms_key_id: Some("k1".into()),
        subnet_group: Some(names().instance),
        class: "db.t4g.micro".into(),
        storage_gib: 20,
        backup_days: 7,
        engine_version: "16.4".into(),
        tags: ours(),
        ..Default::default()
    };
    let mut secret_tags = ours();
    secret_tags.insert(RDS_VERSION_TAG, "v1");
    View {
        group: Some(SecurityGroup {
            id: "sg-db".into(),
            vpc_id: "vpc-1".into(),
            name: names().instance,
            ingress: BTreeSet::from([group_rule("sg-app")]),
            egress: BTreeSet::new(),
            tags: ours(),
        }),
        subnet_group: Some(ObservedSubnetGroup { subnet_ids: placement().subnet_ids, tags: None }),
        secret: Some(SecretInfo {
            name: names().secret,
            arn: "arn:secret".into(),
            kms_key_id: Some(placement().kms_key_arn),
            current_version: Some("v1".into()),
            scheduled_for_deletion: false,
            tags: secret_tags,
        }),
        instance: Some(instance),
        endpoint_recorded: true,
        endpoint_in_secret: true,
        ..Default::default()
    }
}

fn plan_of(spec: &DatabaseSpec, view: &View) -> Result<Plan> {
    let (names, placement) = (names(), placement());
    plan(&Desired { spec, names: &names, uid: UID, placement: &placement }, view)
}

fn shown(spec: &DatabaseSpec, view: &View) -> Vec<PlannedChange> {
    let (names, placement) = (names(), placement());
    let d = Desired { spec, names: &names, uid: UID, placement: &placement };
    plan(&d, view).unwrap().changes.iter().map(|c| c.planned(&d, view)).collect()
}

#[test]
fn a_converged_database_plans_nothing() {
    assert_eq!(plan_of(&spec(), &converged()).unwrap(), Plan::default());
}

#[test]
fn a_new_database_plans_every_resource_in_order() {
    let p = plan_of(&spec(), &View::default()).unwrap();
    assert_eq!(
        p.changes,
        vec![
            Change::CreateSecurityGroup,
            Change::AuthorizeIngress { rules: vec![group_rule("sg-app")] },
            Change::CreateSubnetGroup,
            Change::CreateSecret { rotation: None },
            Change::CreateInstance,
            Change::WriteEndpoint { endpoint: None },
        ]
    );
    assert_eq!(p.next(), Some(&Change::CreateSecurityGroup));
    let shown = shown(&spec(), &View::default());
    let keys: Vec<String> = shown.iter().map(|c| format!("{:?} {}", c.action, c.resource)).collect();
    assert_eq!(
        keys,
        [
            "Create ec2:SecurityGroup",
            "Create ec2:SecurityGroupIngress",
            "Create rds:DBSubnetGroup",
            "Create secretsmanager:Secret",
            "Create rds:DBInstance",
            "Update secretsmanager:Secret"
        ]
    );
    assert!(shown[4].detail.contains("db.t4g.micro") && shown[4].detail.contains("not public"), "{:?}", shown[4]);
}

#[test]
fn a_spec_edit_shows_the_exact_change() {
    let mut edited = spec();
    edited.instance_class = "db.t4g.small".into();
    let shown = shown(&edited, &converged());
    assert_eq!(shown.len(), 1);
    assert_eq!((shown[0].action, shown[0].resource.as_str()), (ChangeAction::Update, "rds:DBInstance"));
    assert_eq!(shown[0].detail, "instanceClass db.t4g.micro → db.t4g.small");
    assert_eq!(shown[0].id.as_deref(), Some(names().instance.as_str()));
}

#[test]
fn drift_is_planned_as_repairs() {
    let mut view = converged();
    if let Some(i) = view.instance.as_mut() {
        i.publicly_accessible = true;
    }
    let open = Rule { source: Source::Cidr("0.0.0.0/0".into()), ..group_rule("") };
    if let Some(g) = view.group.as_mut() {
        g.ingress.insert(open.clone());
    }
    if let Some(g) = view.subnet_group.as_mut() {
        g.subnet_ids = BTreeSet::from(["subnet-x".to_string(), "subnet-b".to_string()]);
    }
    if let Some(s) = view.secret.as_mut() {
        s.scheduled_for_deletion = true;
        s.kms_key_id = Some("arn:other".into());
    }
    let p = plan_of(&spec(), &view).unwrap();
    assert!(matches!(p.changes[0], Change::RevokeIngress { ref rules } if rules == &vec![open]));
    assert!(matches!(p.changes[1], Change::SetSubnets { .. }));
    assert_eq!(p.changes[2], Change::RestoreSecret);
    assert!(matches!(p.changes[3], Change::SetSecretKey { ref from } if from == "arn:other"));
    assert!(matches!(&p.changes[4], Change::ModifyInstance(c) if c.publicly_accessible == Some(false)));
    let shown = shown(&spec(), &view);
    assert_eq!(shown[0].detail, "tcp/5432 from 0.0.0.0/0");
    assert_eq!(shown[1].detail, "subnets subnet-b, subnet-x → subnet-a, subnet-b");
}

#[test]
fn bastions_gain_and_lose_access() {
    let mut view = converged();
    view.bastion_groups = BTreeSet::from(["sg-b1".to_string()]);
    if let Some(g) = view.group.as_mut() {
        g.ingress.insert(group_rule("sg-b0"));
    }
    let p = plan_of(&spec(), &view).unwrap();
    assert_eq!(
        p.changes,
        vec![
            Change::RevokeIngress { rules: vec![group_rule("sg-b0")] },
            Change::AuthorizeIngress { rules: vec![group_rule("sg-b1")] }
        ]
    );
}

#[test]
fn a_busy_instance_waits_and_lists_what_follows_its_create() {
    let mut view = converged();
    view.endpoint_recorded = false;
    if let Some(i) = view.instance.as_mut() {
        i.status = "creating".into();
        i.endpoint = None;
    }
    let p = plan_of(&spec(), &view).unwrap();
    assert_eq!(p.changes, vec![Change::WriteEndpoint { endpoint: None }]);
    assert_eq!(p.wait.as_ref().map(|w| (w.at, w.reason)), Some((0, "InstanceNotAvailable")));
    assert_eq!(p.next(), None, "nothing is made while RDS works");
    // A repair before the instance is made at once.
    if let Some(g) = view.group.as_mut() {
        g.ingress.clear();
    }
    assert!(matches!(plan_of(&spec(), &view).unwrap().next(), Some(Change::AuthorizeIngress { .. })));
}

#[test]
fn the_password_follows_the_secret_and_rotates_on_request() {
    let mut view = converged();
    if let Some(s) = view.secret.as_mut() {
        s.current_version = Some("v2".into());
    }
    assert_eq!(plan_of(&spec(), &view).unwrap().changes, vec![Change::FollowSecretPassword]);
    let mut view = converged();
    view.rotation = Some("token".into());
    assert_eq!(
        plan_of(&spec(), &view).unwrap().changes,
        vec![Change::RotatePassword { token: "token".into() }, Change::FollowSecretPassword]
    );
    let mut view = converged();
    view.endpoint_in_secret = false;
    assert_eq!(
        plan_of(&spec(), &view).unwrap().changes,
        vec![Change::WriteEndpoint { endpoint: Some(("db.example".into(), 5432)) }]
    );
}

#[test]
fn a_lost_secret_is_made_again_only_when_asked() {
    let mut view = converged();
    view.secret = None;
    assert!(matches!(plan_of(&spec(), &view), Err(Error::SecretUnusable { .. })));
    view.rotation = Some("token".into());
    assert_eq!(
        plan_of(&spec(), &view).unwrap().changes,
        vec![
            Change::CreateSecret { rotation: Some("token".into()) },
            Change::RotatePassword { token: "token".into() },
            Change::FollowSecretPassword
        ]
    );
}

#[test]
fn a_restore_is_judged_before_anything_is_made() {
    let mut restore = spec();
    restore.restore_from_snapshot = Some("snap".into());
    assert!(matches!(plan_of(&restore, &View::default()), Err(Error::RestoreSnapshotUnusable { .. })));
    let mut view = View {
        restore_snapshot: Some(SnapshotInfo {
            available: false,
            status: "creating".into(),
            engine: "postgres".into(),
            encrypted: true,
            kms_key_id: Some("k1".into()),
        }),
        ..View::default()
    };
    let p = plan_of(&restore, &view).unwrap();
    assert_eq!(p.changes[4], Change::RestoreInstance { snapshot: "snap".into() });
    assert_eq!(p.changes[5], Change::SetRestoredPassword);
    assert_eq!(p.wait.as_ref().map(|w| w.at), Some(4), "the snapshot is not available yet");
    if let Some(s) = view.restore_snapshot.as_mut() {
        s.kms_key_id = Some("other".into());
    }
    assert!(matches!(plan_of(&restore, &view), Err(Error::RestoreSnapshotUnusable { .. })));
    // A restored instance gets the secret's password before anything else.
    let mut view = converged();
    if let Some(i) = view.instance.as_mut() {
        i.tags.insert(PASSWORD_TAG, PASSWORD_FROM_SNAPSHOT);
    }
    assert_eq!(plan_of(&spec(), &view).unwrap().changes[0], Change::SetRestoredPassword);
}

#[test]
fn what_is_not_this_objects_stops_the_plan() {
    let mut view = converged();
    if let Some(s) = view.secret.as_mut() {
        s.tags = tags("ns", "db", "uid-2", "x").into_iter().collect();
    }
    assert!(matches!(plan_of(&spec(), &view), Err(Error::ResourceNotOwned { .. })));
    let mut view = converged();
    if let Some(i) = view.instance.as_mut() {
        i.status = "storage-full".into();
    }
    assert!(matches!(plan_of(&spec(), &view), Err(Error::DbInstanceUnhealthy { .. })));
    let mut old = spec();
    old.engine_version = "15".into();
    assert!(matches!(plan_of(&old, &converged()), Err(Error::InvalidSpec(_))));
}

#[test]
fn while_waiting_only_the_guarantees_are_repaired() {
    let mut view = converged();
    assert_eq!(guarded_plan(&view), Plan::default());
    let open = Rule { source: Source::Cidr("0.0.0.0/0".into()), ..group_rule("") };
    if let Some(g) = view.group.as_mut() {
        g.ingress = BTreeSet::from([open.clone(), group_rule("sg-stale")]);
    }
    if let Some(i) = view.instance.as_mut() {
        i.publicly_accessible = true;
        i.class = "db.other".into();
    }
    let p = guarded_plan(&view);
    assert_eq!(p.changes[0], Change::RevokeIngress { rules: vec![open] });
    let Change::ModifyInstance(c) = &p.changes[1] else { panic!("{p:?}") };
    assert_eq!((c.publicly_accessible, c.class.as_ref()), (Some(false), None));
}

#[test]
fn deletion_goes_instance_then_groups_then_secret() {
    let view = converged();
    let p = teardown(&view, Some("final"));
    assert_eq!(
        p.changes,
        vec![
            Removal::LiftDeletionProtection,
            Removal::DeleteInstance { final_snapshot: Some("final".into()) },
            Removal::DeleteSecurityGroup { id: "sg-db".into() },
            Removal::DeleteSubnetGroup,
            Removal::DeleteSecret { arn: "arn:secret".into() },
        ]
    );
    let mut deleting = view.clone();
    if let Some(i) = deleting.instance.as_mut() {
        i.status = "deleting".into();
    }
    assert_eq!(teardown(&deleting, None).next(), None, "RDS is deleting it: wait");
    let mut gone = view;
    gone.instance = None;
    if let Some(s) = gone.secret.as_mut() {
        s.scheduled_for_deletion = true;
    }
    assert_eq!(
        teardown(&gone, None).changes,
        vec![Removal::DeleteSecurityGroup { id: "sg-db".into() }, Removal::DeleteSubnetGroup]
    );
}

/// The view holds a secret's metadata only (no value), so a plan cannot carry a password; what it
/// does hold that a person should not need (the rotation's version token) is not shown either.
#[test]
fn no_planned_change_shows_the_rotation_token() {
    let token = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    for mut view in [View::default(), converged()] {
        view.rotation = Some(token.into());
        if view.instance.is_some() {
            view.secret = None;
        }
        for change in shown(&spec(), &view) {
            let text = serde_json::to_string(&change).unwrap();
            assert!(!text.contains(token), "{text}");
        }
    }
}
