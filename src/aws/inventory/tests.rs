//! The inventory's cache: creations kept until a list shows them, changes made during a refresh
//! applied again over its lists, the pause after a failed refresh; and the SDK conversions.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::IpPermission;

use super::state::{State, passing};
use super::view::Listed;
use super::*;
use crate::error::Error;

#[test]
fn permissions_split_into_one_rule_per_source_and_back() {
    use aws_sdk_ec2::types::{IpRange, UserIdGroupPair};
    let grouped = IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(443)
        .to_port(443)
        .ip_ranges(IpRange::builder().cidr_ip("10.0.0.0/16").build())
        .user_id_group_pairs(UserIdGroupPair::builder().group_id("sg-1").build())
        .build();
    let all = IpPermission::builder()
        .ip_protocol("-1")
        .from_port(-1)
        .to_port(-1)
        .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    let rules = rules_of(&[grouped, all]);
    assert_eq!(rules.len(), 3);
    let everything = Rule { protocol: "-1".into(), from: None, to: None, source: Source::Cidr("0.0.0.0/0".into()) };
    assert!(rules.contains(&everything), "ports of all-protocol rules are ignored: {rules:?}");
    for rule in &rules {
        assert_eq!(rules_of(&[permission_of(rule)]), BTreeSet::from([rule.clone()]));
    }
}

#[test]
fn routes_are_read_with_their_targets() {
    use aws_sdk_ec2::types::{Route as Ec2Route, RouteTableAssociation};
    let table = aws_sdk_ec2::types::RouteTable::builder()
        .route_table_id("rtb-1")
        .vpc_id("vpc-1")
        .routes(Ec2Route::builder().destination_cidr_block("10.0.0.0/16").gateway_id("local").build())
        .routes(Ec2Route::builder().destination_cidr_block("0.0.0.0/0").nat_gateway_id("nat-1").build())
        .routes(Ec2Route::builder().destination_prefix_list_id("pl-1").gateway_id("vpce-1").build())
        // A route through an instance's interface names both; a peering's names neither.
        .routes(
            Ec2Route::builder()
                .destination_cidr_block("10.1.0.0/16")
                .network_interface_id("eni-1")
                .instance_id("i-1")
                .build(),
        )
        .routes(Ec2Route::builder().destination_cidr_block("10.2.0.0/16").vpc_peering_connection_id("pcx-1").build())
        .associations(RouteTableAssociation::builder().route_table_association_id("a-1").subnet_id("s-1").build())
        .associations(RouteTableAssociation::builder().route_table_association_id("a-0").main(true).build())
        .build();
    let t = route_table_of(&table).unwrap();
    assert_eq!(
        t.routes.iter().map(|r| (r.destination.as_str(), r.target.clone())).collect::<Vec<_>>(),
        vec![
            ("10.0.0.0/16", RouteTarget::Local),
            ("0.0.0.0/0", RouteTarget::Nat("nat-1".into())),
            ("pl-1", RouteTarget::Gateway("vpce-1".into())),
            ("10.1.0.0/16", RouteTarget::Interface("eni-1".into())),
            ("10.2.0.0/16", RouteTarget::Other("pcx-1".into())),
        ]
    );
    assert_eq!(t.associations, vec![Association { id: "a-1".into(), subnet_id: Some("s-1".into()) }]);
}

#[test]
fn creations_survive_a_list_that_does_not_show_them_yet() {
    let mut state = State::default();
    let vpc = Vpc {
        id: "vpc-1".into(),
        cidr: "10.0.0.0/16".into(),
        tags: Tags::new(),
        dns_support: None,
        dns_hostnames: None,
    };
    let now = Instant::now();
    state.pending.push((now, Created::Vpc(vpc.clone())));
    state.merge_pending(&[]);
    assert_eq!(state.snapshot.vpcs.len(), 1);
    // Other records merge again: it is not taken for shown by a list because it is in the view.
    state.merge_pending(&[]);
    assert_eq!(state.pending.len(), 1);
    // A list that began before it was made and ends after does not hide it...
    state.apply(Listed::Vpcs(vec![]));
    state.list_began.insert(Kind::Vpcs, now - Duration::from_secs(1));
    state.merge_pending(&[Kind::Vpcs]);
    assert_eq!(state.snapshot.vpcs.len(), 1);
    // ...nor does one begun after it that lags (eventual consistency), within the grace...
    state.apply(Listed::Vpcs(vec![]));
    state.list_began.insert(Kind::Vpcs, now + Duration::from_secs(1));
    state.merge_pending(&[Kind::Vpcs]);
    assert_eq!(state.snapshot.vpcs.len(), 1);
    // ...a list begun after it that shows it makes the entry redundant...
    state.apply(Listed::Vpcs(vec![vpc]));
    state.merge_pending(&[Kind::Vpcs]);
    assert!(state.pending.is_empty());
    assert_eq!(state.snapshot.vpcs.len(), 1);
    // ...and a creation that a list begun more than the grace after it does not show is gone,
    // however long ago the last list was.
    let subnet = Created::Subnet(Subnet {
        id: "s".into(),
        vpc_id: "vpc-1".into(),
        cidr: String::new(),
        zone: String::new(),
        tags: Tags::new(),
    });
    state.pending.push((now, subnet));
    state.merge_pending(&[]);
    assert_eq!(state.snapshot.subnets.len(), 1);
    state.apply(Listed::Subnets(vec![]));
    state.list_began.insert(Kind::Subnets, now + CREATE_GRACE + Duration::from_secs(1));
    state.merge_pending(&[Kind::Subnets]);
    assert!(state.pending.is_empty());
    assert!(state.snapshot.subnets.is_empty());
    assert!(state.pending.is_empty());
}

#[test]
fn the_reconciles_after_a_failed_refresh_share_its_outcome_for_a_while() {
    let mut state = State::default();
    let start = Instant::now();
    let timed_out = || Error::AwsUnavailable { action: "ec2:DescribeSubnets".into(), detail: "timed out".into() };
    // A refresh that timed out after 30 s: for 90 s no list is tried again.
    state.failed = Some((start, Duration::from_secs(30), timed_out()));
    let never_listed = state.stale(Duration::from_secs(30), start);
    match state.after_failure(&never_listed, start + Duration::from_secs(60)) {
        Some(Err(Error::AwsUnavailable { action, .. })) => assert_eq!(action, "ec2:DescribeSubnets"),
        other => panic!("a reconcile that needs a kind never listed gets the refresh's error, got {other:?}"),
    }
    assert!(state.after_failure(&never_listed, start + Duration::from_secs(91)).is_none(), "then a list again");

    // A reconcile that may work from the view gets the view.
    for kind in Kind::ALL {
        state.listed.insert(kind, (start, false));
    }
    let old = state.stale(Duration::ZERO, start + Duration::from_secs(1));
    assert!(matches!(state.after_failure(&old, start + Duration::from_secs(1)), Some(Ok(_))));

    // A quick failure (throttled) pauses for a second; an error that does not pass by itself
    // (here: denied) is not shared: each reconcile meets it itself.
    state.failed = Some((start, Duration::from_millis(50), Error::AwsThrottled { action: "x".into() }));
    assert!(state.after_failure(&old, start + Duration::from_millis(900)).is_some());
    assert!(state.after_failure(&old, start + Duration::from_millis(1100)).is_none());
    let denied = Error::AccessDenied { action: "ec2:DescribeSubnets".into(), message: "no".into() };
    assert!(passing(&denied).is_none());
}

#[test]
fn a_slow_refresh_spaces_the_next_and_changes_made_during_its_lists_survive_them() {
    let mut state = State::default();
    let start = Instant::now();
    assert_eq!(state.stale(Duration::from_secs(30), start).len(), Kind::ALL.len(), "never listed");
    for kind in Kind::ALL {
        state.listed.insert(kind, (start, false));
    }
    // A refresh that took 20 s: the next comes 60 s after it ended, not 30 s.
    state.last_refresh = Duration::from_secs(20);
    assert!(state.stale(Duration::from_secs(30), start + Duration::from_secs(45)).is_empty());
    assert_eq!(state.stale(Duration::from_secs(30), start + Duration::from_secs(61)).len(), Kind::ALL.len());
    // A kind a record says is out of date is listed again at once.
    state.mark_changed(Kind::KmsAliases);
    assert_eq!(state.stale(Duration::from_secs(30), start), vec![Kind::KmsAliases]);

    // Lists that began before a route was set and a subnet deleted show them as they were; the
    // journal's records are applied over them again.
    let table = RouteTable {
        id: "rtb-1".into(),
        vpc_id: "vpc-1".into(),
        routes: vec![],
        associations: vec![],
        tags: Tags::new(),
    };
    let subnet = Subnet {
        id: "subnet-1".into(),
        vpc_id: "vpc-1".into(),
        cidr: "10.0.0.0/24".into(),
        zone: "us-east-1a".into(),
        tags: Tags::new(),
    };
    state.apply(Listed::RouteTables(vec![table.clone()]));
    state.apply(Listed::Subnets(vec![subnet.clone()]));
    let route = Recorded::Route {
        route_table_id: "rtb-1".into(),
        destination: "0.0.0.0/0".into(),
        target: Some(RouteTarget::Gateway("igw-1".into())),
    };
    let deleted = Recorded::Deleted(Kind::Subnets, "subnet-1".into());
    state.record(route.clone());
    state.record(deleted.clone());
    state.apply(Listed::RouteTables(vec![table]));
    state.apply(Listed::Subnets(vec![subnet]));
    state.replay(route);
    state.replay(deleted);
    assert_eq!(state.snapshot.route_tables[0].routes.len(), 1);
    assert!(state.snapshot.subnets.is_empty());
}

#[test]
fn details_asked_without_the_lock_do_not_undo_a_change_recorded_meanwhile() {
    let mut state = State::default();
    let vpc = Vpc {
        id: "vpc-1".into(),
        cidr: "10.0.0.0/16".into(),
        tags: Tags::new(),
        dns_support: None,
        dns_hostnames: None,
    };
    let lists = vec![Listed::Vpcs(vec![vpc])];
    let (vpcs, keys) = state.missing_details(&lists);
    assert_eq!((vpcs, keys), (vec!["vpc-1".to_string()], vec![]));
    // While DescribeVpcAttribute runs (the lock released), a reconcile turns DNS hostnames on.
    state.record(Recorded::VpcDns { vpc_id: "vpc-1".into(), support: None, hostnames: Some(true) });
    for listed in lists {
        state.apply(listed);
    }
    let mut asked = super::state::Details::default();
    asked.vpc_dns.insert("vpc-1".into(), (true, false));
    state.fill_details(asked);
    let vpc = &state.snapshot.vpcs[0];
    assert_eq!((vpc.dns_support, vpc.dns_hostnames), (None, Some(true)), "the recorded change wins");
    // Known from now on: the next refresh asks nothing.
    assert_eq!(state.missing_details(&[Listed::Vpcs(vec![Vpc::clone(vpc)])]).0, Vec::<String>::new());
}

#[test]
fn a_change_to_a_creation_no_list_shows_yet_is_kept_with_it() {
    let mut state = State::default();
    let table = RouteTable {
        id: "rtb-1".into(),
        vpc_id: "vpc-1".into(),
        routes: vec![],
        associations: vec![],
        tags: Tags::new(),
    };
    state.record(Recorded::Created(Created::RouteTable(table)));
    state.record(Recorded::Route {
        route_table_id: "rtb-1".into(),
        destination: "0.0.0.0/0".into(),
        target: Some(RouteTarget::Gateway("igw-1".into())),
    });
    // A list begun before the creation does not show it: the creation comes back with its route.
    state.apply(Listed::RouteTables(vec![]));
    state.merge_pending(&[]);
    assert_eq!(state.snapshot.route_tables[0].routes.len(), 1);
}

#[test]
fn the_view_changes_as_the_records_say() {
    let mut view = Snapshot::default();
    let endpoint = VpcEndpoint {
        id: "vpce-1".into(),
        vpc_id: "vpc-1".into(),
        service: "com.amazonaws.us-east-1.s3".into(),
        gateway: true,
        state: EndpointState::Available,
        subnet_ids: BTreeSet::new(),
        route_table_ids: BTreeSet::from(["rtb-1".to_string()]),
        group_ids: BTreeSet::new(),
        tags: Tags::new(),
    };
    let table = RouteTable {
        id: "rtb-1".into(),
        vpc_id: "vpc-1".into(),
        routes: vec![Route { destination: "pl-1".into(), target: RouteTarget::Gateway("vpce-1".into()) }],
        associations: vec![Association { id: "rtbassoc-1".into(), subnet_id: Some("subnet-1".into()) }],
        tags: Tags::new(),
    };
    view.apply(&Recorded::Created(Created::VpcEndpoint(endpoint.clone())));
    view.apply(&Recorded::Created(Created::VpcEndpoint(endpoint)));
    view.apply(&Recorded::Created(Created::RouteTable(table)));
    assert_eq!(view.vpc_endpoints.len(), 1, "a creation recorded twice is one entry");
    let add = Tags::from([("team", "a")]);
    view.apply(&Recorded::retagged(Kind::of_ec2_id("rtb-1"), "rtb-1", &add, &["old".into()]));
    assert_eq!(view.route_tables[0].tags.get("team"), Some("a"));
    view.apply(&Recorded::Disassociated { association_id: "rtbassoc-1".into() });
    assert!(view.route_tables[0].associations.is_empty());
    // A gateway endpoint's routes go with it.
    view.apply(&Recorded::Deleted(Kind::VpcEndpoints, "vpce-1".into()));
    assert!(view.vpc_endpoints.is_empty() && view.route_tables[0].routes.is_empty());
    // A secret is deleted by its ARN as well as by its name.
    let secret = SecretInfo {
        name: "s".into(),
        arn: "arn:aws:secretsmanager:us-east-1:1:secret:s-abc".into(),
        kms_key_id: None,
        current_version: None,
        scheduled_for_deletion: false,
        tags: Tags::new(),
    };
    view.apply(&Recorded::Created(Created::Secret(secret)));
    view.apply(&Recorded::Deleted(Kind::Secrets, "arn:aws:secretsmanager:us-east-1:1:secret:s-abc".into()));
    assert!(view.secrets.is_empty());
}

#[test]
fn states_are_parsed_whatever_their_case_and_new_ones_count_as_present() {
    // EC2 answers VPC endpoint states in lowercase where the SDK's model has `Available`.
    let endpoint: EndpointState = parse_state("available", EndpointState::values());
    assert_eq!(endpoint, EndpointState::Available);
    let gone: EndpointState = parse_state("deleted", EndpointState::values());
    assert!(gone.is_gone() && gone.is_going());
    let link: VpcLinkStatus = parse_state("deleting", VpcLinkStatus::values());
    assert_eq!(link, VpcLinkStatus::Deleting);
    // A state newer than the SDK is kept as it is worded, and holds what it sits in.
    let new: NatGatewayState = parse_state("hibernating", NatGatewayState::values());
    assert_eq!(new.as_str(), "hibernating");
    assert!(!new.is_going());
    let unknown_link = VpcLink {
        id: "vl-1".into(),
        name: "l".into(),
        subnet_ids: BTreeSet::new(),
        group_ids: BTreeSet::new(),
        status: parse_state("", VpcLinkStatus::values()),
        tags: Tags::new(),
    };
    assert!(unknown_link.is_alive());
}
