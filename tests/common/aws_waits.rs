//! AWS's waits, for the fault proxy: moto makes every resource usable the instant it is created,
//! AWS takes minutes for some. With [`crate::common::fault_proxy::FaultProxy::wait_like_aws`] the
//! proxy keeps each resource of the types in [`AWS_WAITS`] in its in-between state (a NAT gateway
//! `pending`, an RDS instance `creating`, ...) in the answers to its create call and to the reads
//! that list it, until the type's typical time, scaled by one factor, has passed since the create
//! call; then moto's answer goes through unchanged. Each wait is recorded ([`Wait`]): when it began
//! (the create call), when it ended, and when an answer first showed the resource done.

use std::time::{Duration, Instant};

/// One resource type that AWS makes in the background.
pub struct WaitType {
    /// `service:Resource`, as in plans.
    pub kind: &'static str,
    /// AWS's typical time from the create call to the resource being usable.
    pub typical: Duration,
    /// The create call (the action, or `METHOD /path` for REST APIs).
    create: &'static str,
    /// The reads whose answers show the resource's state.
    reads: &'static [&'static str],
    /// Only resources whose element contains this (interface endpoints, not gateway ones).
    only: Option<&'static str>,
    shape: Shape,
    /// The state while AWS works, and the state moto answers at once.
    between: &'static str,
    done: &'static str,
}

/// How an answer holds one resource.
enum Shape {
    /// XML: the resource is the `element` that directly holds `<id>…</id>`; its state is the
    /// text `done` directly in that element.
    Xml { element: &'static str, id: &'static str },
    /// JSON: the resource is the object whose `id` field is the ID; its state is `field`.
    Json { id: &'static str, field: &'static str },
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// AWS's typical figures (the operator's resource types that AWS does not make at once): a
/// CloudFormation stack of a few resources about a minute, a NAT gateway one to two minutes, an
/// interface endpoint about one, a VPC Link two to five, an RDS instance five to ten, an EC2
/// instance about twenty seconds to `running`. Everything else (VPC, subnets, groups, routes,
/// keys, secrets, gateway endpoints) is usable when its create call answers, in AWS as in moto.
pub const AWS_WAITS: &[WaitType] = &[
    WaitType {
        kind: "cloudformation:Stack",
        typical: secs(60),
        create: "CreateStack",
        reads: &["DescribeStacks"],
        only: None,
        shape: Shape::Xml { element: "member", id: "StackId" },
        between: "<StackStatus>CREATE_IN_PROGRESS</StackStatus>",
        done: "<StackStatus>CREATE_COMPLETE</StackStatus>",
    },
    WaitType {
        kind: "ec2:NatGateway",
        typical: secs(90),
        create: "CreateNatGateway",
        reads: &["DescribeNatGateways"],
        only: None,
        shape: Shape::Xml { element: "item", id: "natGatewayId" },
        between: "<state>pending</state>",
        done: "<state>available</state>",
    },
    WaitType {
        kind: "ec2:VpcEndpoint",
        typical: secs(60),
        create: "CreateVpcEndpoint",
        reads: &["DescribeVpcEndpoints"],
        only: Some("<vpcEndpointType>Interface</vpcEndpointType>"),
        shape: Shape::Xml { element: "item", id: "vpcEndpointId" },
        between: "<state>pending</state>",
        done: "<state>available</state>",
    },
    WaitType {
        kind: "apigateway:VpcLink",
        typical: secs(180),
        create: "POST /v2/vpclinks",
        reads: &["GET /v2/vpclinks"],
        only: None,
        shape: Shape::Json { id: "vpcLinkId", field: "vpcLinkStatus" },
        between: "PENDING",
        done: "AVAILABLE",
    },
    WaitType {
        kind: "rds:DBInstance",
        typical: secs(420),
        create: "CreateDBInstance",
        reads: &["DescribeDBInstances"],
        only: None,
        shape: Shape::Xml { element: "DBInstance", id: "DBInstanceIdentifier" },
        between: "<DBInstanceStatus>creating</DBInstanceStatus>",
        done: "<DBInstanceStatus>available</DBInstanceStatus>",
    },
    WaitType {
        kind: "ec2:Instance",
        typical: secs(20),
        create: "RunInstances",
        reads: &["DescribeInstances"],
        only: None,
        shape: Shape::Xml { element: "item", id: "instanceId" },
        between: "<instanceState><code>0</code><name>pending</name></instanceState>",
        done: "<instanceState><code>16</code><name>running</name></instanceState>",
    },
];

/// One resource's wait, as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Wait {
    pub kind: &'static str,
    pub id: String,
    /// When its create call reached the proxy.
    pub started: Instant,
    /// When AWS would be done with it: `started` + the type's typical time × the factor.
    pub ends: Instant,
    /// When an answer first showed it done (the operator could see it from then on).
    pub seen: Option<Instant>,
}

/// The waits of one proxy: the factor, and every resource waited for.
#[derive(Default)]
pub struct Waits {
    factor: Option<f64>,
    pub waits: Vec<Wait>,
}

impl Waits {
    pub fn enable(&mut self, factor: f64) {
        self.factor = Some(factor);
    }

    /// Rewrites the answer to `action` (received at `started`) as AWS would answer it now:
    /// a create call starts a wait for each resource it made; a read shows each resource still
    /// waited for in its in-between state.
    pub fn answer(&mut self, action: &str, started: Instant, body: Vec<u8>) -> Vec<u8> {
        let Some(factor) = self.factor else { return body };
        let now = Instant::now();
        let Ok(mut text) = String::from_utf8(body.clone()) else { return body };
        for kind in AWS_WAITS {
            if kind.create == action && kind.only.is_none_or(|o| text.contains(o)) {
                for id in ids(&text, &kind.shape) {
                    let ends = started + kind.typical.mul_f64(factor);
                    self.waits.push(Wait { kind: kind.kind, id, started, ends, seen: None });
                }
            }
            if kind.create != action && !kind.reads.contains(&action) {
                continue;
            }
            for wait in self.waits.iter_mut().filter(|w| w.kind == kind.kind) {
                if now < wait.ends {
                    text = in_between(&text, kind, &wait.id);
                } else if wait.seen.is_none() && text.contains(&wait.id) {
                    wait.seen = Some(now);
                }
            }
        }
        text.into_bytes()
    }
}

/// The IDs of the resources in a create call's answer.
fn ids(text: &str, shape: &Shape) -> Vec<String> {
    match shape {
        Shape::Xml { id, .. } => {
            let (open, close) = (format!("<{id}>"), format!("</{id}>"));
            text.match_indices(&open)
                .filter_map(|(at, _)| {
                    let rest = &text[at + open.len()..];
                    rest.find(&close).map(|end| rest[..end].to_string())
                })
                .collect()
        }
        Shape::Json { id, .. } => serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v[*id].as_str().map(str::to_string))
            .into_iter()
            .collect(),
    }
}

/// `text` with the resource `id` in its in-between state.
fn in_between(text: &str, kind: &WaitType, id: &str) -> String {
    match kind.shape {
        Shape::Xml { element, id: tag } => {
            let Some(at) = text.find(&format!("<{tag}>{id}</{tag}>")) else { return text.to_string() };
            let Some((start, end)) = enclosing(text, at, element) else { return text.to_string() };
            let span = &text[start..end];
            if kind.only.is_some_and(|o| !span.contains(o)) {
                return text.to_string();
            }
            let (open, close) = (format!("<{element}>"), format!("</{element}>"));
            // The state directly in the element, not in one nested in it.
            let own = span.match_indices(kind.done).map(|(i, _)| i).find(|&i| {
                let before = &span[open.len()..i];
                before.matches(&open).count() == before.matches(&close).count()
            });
            match own {
                Some(i) => format!("{}{}{}", &text[..start + i], kind.between, &text[start + i + kind.done.len()..]),
                None => text.to_string(),
            }
        }
        Shape::Json { id: key, field } => {
            let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) else { return text.to_string() };
            set_json(&mut value, key, id, field, kind.done, kind.between);
            value.to_string()
        }
    }
}

/// In every object whose `key` is `id`, `field` from `done` to `between`.
fn set_json(value: &mut serde_json::Value, key: &str, id: &str, field: &str, done: &str, between: &str) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get(key).and_then(|v| v.as_str()) == Some(id)
                && map.get(field).and_then(|v| v.as_str()) == Some(done)
            {
                map.insert(field.to_string(), between.into());
            }
            map.values_mut().for_each(|v| set_json(v, key, id, field, done, between));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| set_json(v, key, id, field, done, between)),
        _ => {}
    }
}

/// The span of the innermost `element` around position `at`.
fn enclosing(text: &str, at: usize, element: &str) -> Option<(usize, usize)> {
    let (open, close) = (format!("<{element}>"), format!("</{element}>"));
    let mut tags: Vec<(usize, bool)> = text.match_indices(&open).map(|(i, _)| (i, true)).collect();
    tags.extend(text.match_indices(&close).map(|(i, _)| (i, false)));
    tags.sort_unstable();
    let mut stack = Vec::new();
    let mut around: Option<(usize, usize)> = None;
    for (pos, is_open) in tags {
        if around.is_none() && pos > at {
            around = Some((*stack.last()?, stack.len()));
        }
        if is_open {
            stack.push(pos);
            continue;
        }
        if let Some((start, depth)) = around
            && stack.len() == depth
        {
            return Some((start, pos + close.len()));
        }
        stack.pop();
    }
    None
}

/// AWS's typical time for `kind` in [`AWS_WAITS`] (zero for a kind AWS makes at once).
pub fn typical(kind: &str) -> Duration {
    AWS_WAITS.iter().find(|w| w.kind == kind).map_or(Duration::ZERO, |w| w.typical)
}
