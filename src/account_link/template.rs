//! The CloudFormation template that creates an `AwsAccountLink`'s IAM role in the customer's account.
//! Everything here is a pure function of the link and of const tables, so the same link always renders
//! the same bytes: the operator can tell a stale stack from a current one, and tests can hold the grants.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::api::Permissions;

// The tag keys live with the ownership judgement every kind shares.
pub use crate::aws::ownership::{MANAGED_BY_TAG, MANAGED_BY_VALUE, OWNER_TAG, OWNER_UID_TAG};

/// Logical ID of the role, fixed because the `RoleArn` output and any later stack update refer to it.
pub const ROLE_LOGICAL_ID: &str = "Role";
/// Output the operator reads after `CREATE_COMPLETE` to learn which role to assume.
pub const ROLE_ARN_OUTPUT: &str = "RoleArn";
/// Logical ID of the `Scoped` permissions boundary for the roles the operator makes for bastions.
pub const BOUNDARY_LOGICAL_ID: &str = "BastionBoundary";
/// Output carrying the boundary's ARN, so the bastion code can pass it without rebuilding the ARN.
pub const BOUNDARY_ARN_OUTPUT: &str = "BastionPermissionsBoundaryArn";
/// IAM path of every role, instance profile and policy the operator owns; `Scoped` IAM grants stop there.
pub const IAM_PATH: &str = "/tinystacks/";

/// One hour: assumed-role credentials are refreshed before they expire, so longer sessions only widen
/// the window in which leaked credentials stay useful.
pub const MAX_SESSION_DURATION_SECONDS: u32 = 3600;
/// IAM's quota on the sum of a role's inline policies, whitespace not counted.
pub const INLINE_POLICY_AGGREGATE_LIMIT: usize = 10_240;
/// IAM's quota on one managed policy document, whitespace not counted; used when inline does not fit.
pub const MANAGED_POLICY_LIMIT: usize = 6_144;
/// IAM's default quota of managed policies attached to one role; the fallback must not need a raise.
pub const MANAGED_POLICIES_PER_ROLE: usize = 10;
/// IAM's default quota on a role's trust policy, which a long external ID could otherwise exceed.
pub const TRUST_POLICY_LIMIT: usize = 2_048;

/// Policy language version; the older one lacks policy variables and is rejected by newer features.
const POLICY_VERSION: &str = "2012-10-17";
/// The `Resource` that means "any": only read-only calls and calls bounded by conditions may use it.
const ANY: &[&str] = &["*"];

/// What the template needs to know about a link. Kept free of Kubernetes types so that the CLI
/// (`account-template`), the ConfigMap writer and the CloudFormation deployer render the same thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateInput {
    /// The `AwsAccountLink`'s name, shown in descriptions so the stack can be traced to its link.
    pub link_name: String,
    /// The IAM role's name (`spec.roleName`); immutable, because the ARN is what the operator assumes.
    pub role_name: String,
    /// The one principal the trust policy admits: the operator's own IAM identity (a role ARN, not an
    /// `assumed-role` session ARN, which IAM does not accept as a principal).
    pub trusted_principal_arn: String,
    /// The `sts:ExternalId` the operator must present, so a leaked role ARN alone is useless.
    pub external_id: String,
    /// Which permission set the role carries.
    pub permissions: Permissions,
    /// Tags for the role; a `BTreeMap` so that the rendered order never depends on insertion order.
    pub tags: BTreeMap<String, String>,
}

impl TemplateInput {
    /// Builds the input with the standard ownership tags, so callers cannot forget or misspell them.
    pub fn new(
        link_name: impl Into<String>,
        link_uid: &str,
        role_name: impl Into<String>,
        trusted_principal_arn: impl Into<String>,
        external_id: impl Into<String>,
        permissions: Permissions,
    ) -> Self {
        let link_name = link_name.into();
        let tags = link_tags(&link_name, link_uid);
        Self {
            link_name,
            role_name: role_name.into(),
            trusted_principal_arn: trusted_principal_arn.into(),
            external_id: external_id.into(),
            permissions,
            tags,
        }
    }
}

/// The ownership tags of a link's role. `AwsAccountLink` is cluster-scoped, hence the empty namespace
/// between the two slashes of the owner tag (`<kind>/<namespace>/<name>`, the format every resource uses).
pub fn link_tags(link_name: &str, link_uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_TAG.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (OWNER_TAG.to_owned(), format!("AwsAccountLink//{link_name}")),
        (OWNER_UID_TAG.to_owned(), link_uid.to_owned()),
    ])
}

/// Name of the permissions boundary policy; derived from the role name so that two links to the same
/// account, with different role names, do not fight over one policy.
pub fn bastion_boundary_policy_name(role_name: &str) -> String {
    format!("{role_name}-BastionBoundary")
}

// ---------------------------------------------------------------------------------------------------
// Full: the seed's list
// ---------------------------------------------------------------------------------------------------

/// Wording used for the seed's "full access to the following services" items, which name no actions.
pub const FULL_ACCESS: &str = "full access";

/// One phrase of the seed's permission list and the real IAM actions it stands for, kept side by side
/// so that a reviewer (and a test) can check each translation against the seed's own words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedItem {
    /// The service exactly as the seed spells it (including its quirks, e.g. "Elastic Container Repository").
    pub service: &'static str,
    /// The seed's phrase, or [`FULL_ACCESS`] for the services it grants outright.
    pub wording: &'static str,
    /// The IAM actions the phrase maps to.
    pub actions: &'static [&'static str],
}

/// Shorthand that keeps the seed table one line per phrase, easy to read against the seed.
const fn seed(service: &'static str, wording: &'static str, actions: &'static [&'static str]) -> SeedItem {
    SeedItem { service, wording, actions }
}

/// TinyStacks' role, item by item, as the seed lists it; `Permissions::Full` grants exactly this.
/// Where the seed's wording is not an IAM action name, the comment says how it was mapped.
pub const SEED_PERMISSIONS: &[SeedItem] = &[
    seed("API Gateway", FULL_ACCESS, &["apigateway:*"]),
    seed("Application Autoscaling", FULL_ACCESS, &["application-autoscaling:*"]),
    seed("Cloudwatch", FULL_ACCESS, &["cloudwatch:*"]),
    seed("CodeBuild", FULL_ACCESS, &["codebuild:*"]),
    seed("CodePipeline", FULL_ACCESS, &["codepipeline:*"]),
    seed("Amazon Elastic Container Service (ECS)", FULL_ACCESS, &["ecs:*"]),
    seed("Amazon EC2", FULL_ACCESS, &["ec2:*"]),
    seed("Elastic Load Balancer", FULL_ACCESS, &["elasticloadbalancing:*"]),
    seed("Key Management Service", FULL_ACCESS, &["kms:*"]),
    seed("AWS Lambda", FULL_ACCESS, &["lambda:*"]),
    // Route 53 proper; domain registration (`route53domains`) and Resolver are separate services.
    seed("Amazon Route 53", FULL_ACCESS, &["route53:*"]),
    seed("Amazon Simple Notification Service (SNS)", FULL_ACCESS, &["sns:*"]),
    seed("Amazon S3", FULL_ACCESS, &["s3:*"]),
    seed("IAM", "Create role", &["iam:CreateRole"]),
    // Assuming a role is an STS action, whatever heading the seed put it under.
    seed("IAM", "assume role", &["sts:AssumeRole"]),
    seed("Cloudfront", "Create/get distribution", &["cloudfront:CreateDistribution", "cloudfront:GetDistribution"]),
    seed("Cloudfront", "tag resource", &["cloudfront:TagResource"]),
    // CloudFront has no event selectors: `PutEventSelectors` is CloudTrail's (which trail events to
    // record, e.g. for CloudFront logging). The seed lists it here, so it stays here, as CloudTrail's.
    seed("Cloudfront", "put event selectors", &["cloudtrail:PutEventSelectors"]),
    seed("Cloudtrail", "Create trail", &["cloudtrail:CreateTrail"]),
    seed("Cloudtrail", "delete trail", &["cloudtrail:DeleteTrail"]),
    seed("Amazon Elastic Container Repository (ECR)", "Get lifecycle policy", &["ecr:GetLifecyclePolicy"]),
    seed("Amazon Elastic Container Repository (ECR)", "create repository", &["ecr:CreateRepository"]),
    // ECR's only tag-listing action.
    seed("Amazon Elastic Container Repository (ECR)", "list tags", &["ecr:ListTagsForResource"]),
    seed("Amazon Elastic Container Repository (ECR)", "get repository policy", &["ecr:GetRepositoryPolicy"]),
    // There is no "describe repository policy" action; ECR's describe call is `DescribeRepositories`
    // (the policy itself is read with `GetRepositoryPolicy`, the phrase before).
    seed("Amazon Elastic Container Repository (ECR)", "describe repository policy", &["ecr:DescribeRepositories"]),
    seed("Amazon EventBridge", "Delete rule", &["events:DeleteRule"]),
    seed("Amazon EventBridge", "put targets", &["events:PutTargets"]),
    seed("Amazon EventBridge", "remove targets", &["events:RemoveTargets"]),
    seed("Amazon EventBridge", "put rule", &["events:PutRule"]),
    seed("Amazon EventBridge", "describe rule", &["events:DescribeRule"]),
    seed("Cloudwatch Logs", "Delete log delivery", &["logs:DeleteLogDelivery"]),
    seed("Cloudwatch Logs", "list log deliveries", &["logs:ListLogDeliveries"]),
    seed("Cloudwatch Logs", "create log delivery", &["logs:CreateLogDelivery"]),
    // "Group" in CloudWatch Logs is a log group.
    seed("Cloudwatch Logs", "create group", &["logs:CreateLogGroup"]),
    seed("Cloudwatch Logs", "describe log groups & streams", &["logs:DescribeLogGroups", "logs:DescribeLogStreams"]),
    seed("Cloudwatch Logs", "put retention policy", &["logs:PutRetentionPolicy"]),
    seed("Amazon RDS", "Create/delete DB subnet group", &["rds:CreateDBSubnetGroup", "rds:DeleteDBSubnetGroup"]),
    seed("Amazon RDS", "create/delete instance", &["rds:CreateDBInstance", "rds:DeleteDBInstance"]),
    seed("Amazon RDS", "describe instances", &["rds:DescribeDBInstances"]),
    seed("Amazon RDS", "describe subnet groups", &["rds:DescribeDBSubnetGroups"]),
    seed(
        "AWS Service Discovery",
        "Get/create/delete service",
        &["servicediscovery:GetService", "servicediscovery:CreateService", "servicediscovery:DeleteService"],
    ),
    seed("AWS Service Discovery", "get operation", &["servicediscovery:GetOperation"]),
    // Only creation is namespace-type specific: reading and deleting a private DNS namespace use the
    // generic `GetNamespace` and `DeleteNamespace`.
    seed(
        "AWS Service Discovery",
        "get/create/delete private DNS namespace",
        &[
            "servicediscovery:GetNamespace",
            "servicediscovery:CreatePrivateDnsNamespace",
            "servicediscovery:DeleteNamespace",
        ],
    ),
    seed(
        "AWS Secrets Manager",
        "Get/put secret value",
        &["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"],
    ),
    seed(
        "AWS Secrets Manager",
        "create/delete secret",
        &["secretsmanager:CreateSecret", "secretsmanager:DeleteSecret"],
    ),
    seed("AWS Secrets Manager", "get random password", &["secretsmanager:GetRandomPassword"]),
    // Secrets Manager has no quota call of its own; quotas are read through Service Quotas.
    seed("AWS Secrets Manager", "get service quota", &["servicequotas:GetServiceQuota"]),
    // "Create" a parameter is `PutParameter` (there is no CreateParameter); "get parameters" covers
    // both the single and the batch read.
    seed(
        "AWS Systems Manager",
        "Get/create/put parameters",
        &["ssm:GetParameter", "ssm:GetParameters", "ssm:PutParameter"],
    ),
];

// ---------------------------------------------------------------------------------------------------
// Scoped: only what the operator calls
// ---------------------------------------------------------------------------------------------------

/// How a `Scoped` grant is limited. The split follows what IAM can check: a resource being created can
/// only be judged by the tags in the request, an existing one by its own tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Creates a resource: allowed only when the request tags it `managed-by=tinystacks-operator`
    /// (`aws:RequestTag`), so everything the operator makes is marked as its own from the first second.
    Create,
    /// Changes, deletes or uses an existing resource: allowed only on resources tagged
    /// `managed-by=tinystacks-operator` (`aws:ResourceTag`), so the operator cannot touch anyone else's.
    Mutate,
    /// Read-only, or a call that names no resource: allowed without a tag condition (on `*` unless the
    /// rule narrows it), because tags cannot limit it and reading does no harm.
    Read,
    /// A call that tags cannot govern (Amazon-owned AMIs, aliases, service-linked roles, `PassRole`);
    /// limited instead by resource ARNs and/or other condition keys, never left open.
    Bounded,
}

/// The value side of an extra condition. `BastionBoundaryArn` exists because the boundary policy's ARN
/// is only known inside the stack (a `Ref`), not when the table is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CondValue {
    /// A single string.
    One(&'static str),
    /// Any of several strings (IAM matches a list with OR).
    AnyOf(&'static [&'static str]),
    /// The ARN of this stack's bastion permissions boundary.
    BastionBoundaryArn,
}

/// A condition a rule needs beyond its kind's tag condition, e.g. `iam:PassedToService`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cond {
    /// The condition operator, e.g. `StringEquals`.
    pub test: &'static str,
    /// The condition key, e.g. `iam:PassedToService`.
    pub key: &'static str,
    /// What the key must match.
    pub value: CondValue,
}

/// One grant of the `Scoped` policy. An action may appear in several rules when AWS authorizes it
/// against several resources at once (a subnet being created *and* the VPC it goes into).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The IAM action, `service:Action`.
    pub action: &'static str,
    /// How the grant is limited.
    pub kind: Kind,
    /// The resources the grant covers; `*` unless the service lets a name or path narrow it.
    pub resources: &'static [&'static str],
    /// Conditions in addition to the kind's tag condition.
    pub conditions: &'static [Cond],
    /// Whether the operator's own code makes this call. `false` marks actions AWS checks on the
    /// operator's behalf during another call (tag-on-create, `PassRole`, Secrets Manager using KMS),
    /// which a scan of the source for SDK calls will not find.
    pub called: bool,
}

impl Rule {
    /// Common constructor: `*`, no extra condition, a direct call; the builders below narrow it.
    const fn new(action: &'static str, kind: Kind) -> Self {
        Self { action, kind, resources: ANY, conditions: &[], called: true }
    }
    /// A [`Kind::Create`] grant.
    const fn create(action: &'static str) -> Self {
        Self::new(action, Kind::Create)
    }
    /// A [`Kind::Mutate`] grant.
    const fn mutate(action: &'static str) -> Self {
        Self::new(action, Kind::Mutate)
    }
    /// A [`Kind::Read`] grant.
    const fn read(action: &'static str) -> Self {
        Self::new(action, Kind::Read)
    }
    /// A [`Kind::Bounded`] grant; it must be narrowed by [`Rule::on`] and/or [`Rule::when`].
    const fn bounded(action: &'static str) -> Self {
        Self::new(action, Kind::Bounded)
    }
    /// Narrows the grant to these resource ARNs.
    const fn on(self, resources: &'static [&'static str]) -> Self {
        Self { resources, ..self }
    }
    /// Adds conditions to the grant.
    const fn when(self, conditions: &'static [Cond]) -> Self {
        Self { conditions, ..self }
    }
    /// Marks the action as checked by AWS on the operator's behalf rather than called by it.
    const fn implied(self) -> Self {
        Self { called: false, ..self }
    }
}

/// The rules of one AWS service; grouping by service keeps the rendered statements readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceRules {
    /// The service's name for people.
    pub service: &'static str,
    /// Prefix of the statement IDs (alphanumeric, as IAM requires).
    pub sid: &'static str,
    /// The grants.
    pub rules: &'static [Rule],
}

/// EC2 calls that create resources with `TagSpecifications`. EC2 authorizes `ec2:CreateTags` for
/// tag-on-create separately; `ec2:CreateAction` lets that grant work at creation time only, so the
/// operator cannot stamp its tag on someone else's resource and take it over.
pub const EC2_TAG_ON_CREATE_ACTIONS: &[&str] = &[
    "CreateVpc",
    "CreateSubnet",
    "CreateRouteTable",
    "CreateInternetGateway",
    "AllocateAddress",
    "CreateNatGateway",
    "CreateSecurityGroup",
    "AuthorizeSecurityGroupIngress",
    "AuthorizeSecurityGroupEgress",
    "CreateVpcEndpoint",
    "RunInstances",
    "ImportKeyPair",
];

/// See [`EC2_TAG_ON_CREATE_ACTIONS`].
const EC2_AT_CREATION: &[Cond] =
    &[Cond { test: "StringEquals", key: "ec2:CreateAction", value: CondValue::AnyOf(EC2_TAG_ON_CREATE_ACTIONS) }];
/// Bastions boot Amazon Linux; restricting the AMI owner keeps arbitrary community images out.
const AMAZON_OWNED: &[Cond] = &[Cond { test: "StringEquals", key: "ec2:Owner", value: CondValue::One("amazon") }];
/// Only requests an AWS service makes on the operator's behalf (forward access), never direct calls.
const VIA_AWS_SERVICE: &[Cond] = &[Cond { test: "Bool", key: "aws:ViaAWSService", value: CondValue::One("true") }];
/// A role the operator creates or edits must carry the bastion boundary. Without it, `PutRolePolicy` on
/// a `/tinystacks/` role plus `PassRole` to an instance would let the operator grant itself anything.
const WITH_BOUNDARY: &[Cond] =
    &[Cond { test: "StringEquals", key: "iam:PermissionsBoundary", value: CondValue::BastionBoundaryArn }];
/// Bastion roles are only ever handed to EC2 (through the instance profile).
const PASSED_TO_EC2: &[Cond] =
    &[Cond { test: "StringEquals", key: "iam:PassedToService", value: CondValue::One("ec2.amazonaws.com") }];
/// The services whose service-linked role the operator's calls may cause to be created on first use:
/// API Gateway for VPC links, RDS for the first DB instance in an account.
const LINKED_SERVICES: &[Cond] = &[Cond {
    test: "StringEquals",
    key: "iam:AWSServiceName",
    value: CondValue::AnyOf(&["ops.apigateway.amazonaws.com", "rds.amazonaws.com"]),
}];

/// AWS-service endpoints (S3, Secrets Manager, ...) are owned by AWS and cannot carry our tag.
const VPC_ENDPOINT_SERVICES: &[&str] = &["arn:aws:ec2:*:*:vpc-endpoint-service/*"];
/// Public AMIs have no account in their ARN.
const EC2_IMAGES: &[&str] = &["arn:aws:ec2:*::image/*"];
/// API Gateway (v2) VPC links, and the tagging endpoint used to tag them.
const APIGATEWAY_VPC_LINKS: &[&str] =
    &["arn:aws:apigateway:*::/vpclinks", "arn:aws:apigateway:*::/vpclinks/*", "arn:aws:apigateway:*::/tags/*"];
/// Aliases cannot be tagged, but the operator names them `alias/tinystacks/<namespace>/<stack>`.
const KMS_ALIASES: &[&str] = &["arn:aws:kms:*:*:alias/tinystacks/*"];
/// Default parameter and option groups are AWS's, untagged, and referenced by every new instance.
const RDS_DEFAULT_GROUPS: &[&str] = &["arn:aws:rds:*:*:pg:default.*", "arn:aws:rds:*:*:og:default:*"];
/// A restore reads a DB snapshot of the account, whoever made it, and AWS's default groups.
const RDS_SNAPSHOTS_AND_DEFAULT_GROUPS: &[&str] =
    &["arn:aws:rds:*:*:snapshot:*", "arn:aws:rds:*:*:pg:default.*", "arn:aws:rds:*:*:og:default:*"];
/// The operator names its secrets `tinystacks/<namespace>/<stack>/<database>` (Secrets Manager adds a
/// random suffix), so the name bounds them in addition to the tag.
const SECRETS: &[&str] = &["arn:aws:secretsmanager:*:*:secret:tinystacks/*"];
/// The public Amazon Linux AMI parameters. The account field is `*`, not empty, because `*` also matches
/// an empty field, and accounts cannot create parameters under the reserved `/aws/` prefix anyway.
const AMI_PARAMETERS: &[&str] = &["arn:aws:ssm:*:*:parameter/aws/service/ami-amazon-linux-latest/*"];
/// Roles and instance profiles under [`IAM_PATH`].
const IAM_PATHS: &[&str] = &["arn:aws:iam::*:role/tinystacks/*", "arn:aws:iam::*:instance-profile/tinystacks/*"];
/// What the bastion's role and instance profile are looked up as. IAM authorizes a read of a role or
/// instance profile that does not exist (yet, or any more) against `role/<name>`, without the path it
/// cannot know, so the reads are also granted on the operator's bastion names (see
/// `bastion::plan::NAME_PREFIX`) at the root path. Reads only: every change stays under [`IAM_PATH`].
const IAM_LOOKUPS: &[&str] = &[
    "arn:aws:iam::*:role/tinystacks/*",
    "arn:aws:iam::*:instance-profile/tinystacks/*",
    "arn:aws:iam::*:role/bastion-*",
    "arn:aws:iam::*:instance-profile/bastion-*",
];
/// Roles under [`IAM_PATH`].
const IAM_ROLES: &[&str] = &["arn:aws:iam::*:role/tinystacks/*"];
/// Where service-linked roles live.
const SERVICE_LINKED_ROLES: &[&str] = &["arn:aws:iam::*:role/aws-service-role/*"];
/// The audit trail's bucket, its log files, and the trail: only under the operator's name prefix
/// (`account_link::audit::plan::NAME_PREFIX`). S3 bucket calls take no tag conditions.
const TRAIL_BUCKETS: &[&str] = &["arn:aws:s3:::tinystacks-trail-*"];
const TRAIL_LOG_FILES: &[&str] = &["arn:aws:s3:::tinystacks-trail-*/*"];
const TRAILS: &[&str] = &["arn:aws:cloudtrail:*:*:trail/tinystacks-trail-*"];

/// Every call the operator makes, and the grant that allows it. Later features add rows here; the
/// unit tests check the rendered policy against this table, and a source scan checks the table against
/// the SDK calls. Rules that share kind, resources and conditions become one statement.
pub const SCOPED_ACTIONS: &[ServiceRules] = &[
    ServiceRules {
        service: "AWS STS",
        sid: "Sts",
        // Verifying the link: the account behind the assumed role must be the link's account.
        rules: &[Rule::read("sts:GetCallerIdentity")],
    },
    ServiceRules {
        service: "Amazon EC2",
        sid: "Ec2",
        rules: &[
            // Observing the network (drift detection reads everything every resync).
            Rule::read("ec2:DescribeVpcs"),
            Rule::read("ec2:DescribeSubnets"),
            Rule::read("ec2:DescribeRouteTables"),
            Rule::read("ec2:DescribeInternetGateways"),
            Rule::read("ec2:DescribeNatGateways"),
            Rule::read("ec2:DescribeAddresses"),
            Rule::read("ec2:DescribeSecurityGroups"),
            Rule::read("ec2:DescribeSecurityGroupRules"),
            Rule::read("ec2:DescribeVpcEndpoints"),
            Rule::read("ec2:DescribeAvailabilityZones"),
            Rule::read("ec2:DescribeInstances"),
            Rule::read("ec2:DescribeKeyPairs"),
            Rule::read("ec2:DescribeImages"),
            Rule::read("ec2:DescribeNetworkInterfaces"),
            // DNS support and hostnames of the VPC (interface endpoints need both).
            Rule::read("ec2:DescribeVpcAttribute"),
            // VPC.
            Rule::create("ec2:CreateVpc"),
            Rule::mutate("ec2:ModifyVpcAttribute"),
            Rule::mutate("ec2:DeleteVpc"),
            // Subnets: EC2 also authorizes the VPC they go into, which must be ours.
            Rule::create("ec2:CreateSubnet"),
            Rule::mutate("ec2:CreateSubnet"),
            Rule::mutate("ec2:DeleteSubnet"),
            // Route tables and routes (routes are not resources; their table and target are).
            Rule::create("ec2:CreateRouteTable"),
            Rule::mutate("ec2:CreateRouteTable"),
            Rule::mutate("ec2:DeleteRouteTable"),
            Rule::mutate("ec2:CreateRoute"),
            Rule::mutate("ec2:ReplaceRoute"),
            Rule::mutate("ec2:DeleteRoute"),
            Rule::mutate("ec2:AssociateRouteTable"),
            Rule::mutate("ec2:DisassociateRouteTable"),
            // Internet gateway.
            Rule::create("ec2:CreateInternetGateway"),
            Rule::mutate("ec2:AttachInternetGateway"),
            Rule::mutate("ec2:DetachInternetGateway"),
            Rule::mutate("ec2:DeleteInternetGateway"),
            // Elastic IPs and NAT gateways (a NAT gateway also names a subnet and an Elastic IP of ours).
            Rule::create("ec2:AllocateAddress"),
            Rule::mutate("ec2:ReleaseAddress"),
            Rule::create("ec2:CreateNatGateway"),
            Rule::mutate("ec2:CreateNatGateway"),
            Rule::mutate("ec2:DeleteNatGateway"),
            // Security groups; new rules are tagged too (security-group-rule resources).
            Rule::create("ec2:CreateSecurityGroup"),
            Rule::mutate("ec2:CreateSecurityGroup"),
            Rule::mutate("ec2:DeleteSecurityGroup"),
            Rule::create("ec2:AuthorizeSecurityGroupIngress"),
            Rule::mutate("ec2:AuthorizeSecurityGroupIngress"),
            Rule::mutate("ec2:RevokeSecurityGroupIngress"),
            Rule::create("ec2:AuthorizeSecurityGroupEgress"),
            Rule::mutate("ec2:AuthorizeSecurityGroupEgress"),
            Rule::mutate("ec2:RevokeSecurityGroupEgress"),
            // VPC endpoints (PrivateIsolated): ours, in our VPC, subnets, route tables and groups, to an
            // AWS-owned endpoint service.
            Rule::create("ec2:CreateVpcEndpoint"),
            Rule::mutate("ec2:CreateVpcEndpoint"),
            Rule::bounded("ec2:CreateVpcEndpoint").on(VPC_ENDPOINT_SERVICES),
            Rule::mutate("ec2:ModifyVpcEndpoint"),
            Rule::mutate("ec2:DeleteVpcEndpoints"),
            // Tags: at creation only through the create calls above; afterwards only on our resources
            // (drift repair of user tags).
            Rule::create("ec2:CreateTags").when(EC2_AT_CREATION),
            Rule::mutate("ec2:CreateTags"),
            Rule::mutate("ec2:DeleteTags"),
            // Bastion and NAT instances: the instance, its volumes and network interface are created tagged; its
            // subnet, security group and key pair are ours; its AMI is Amazon's.
            Rule::create("ec2:RunInstances"),
            Rule::mutate("ec2:RunInstances"),
            Rule::bounded("ec2:RunInstances").on(EC2_IMAGES).when(AMAZON_OWNED),
            Rule::mutate("ec2:TerminateInstances"),
            // NAT instances (a Stack's `natType: Instance`): their source/destination check turned off,
            // and their Elastic IP put on their interface; both the instance and the address are ours.
            Rule::mutate("ec2:ModifyInstanceAttribute"),
            Rule::mutate("ec2:AssociateAddress"),
            Rule::create("ec2:ImportKeyPair"),
            Rule::mutate("ec2:DeleteKeyPair"),
            // VPC links place network interfaces in our subnets; should API Gateway do so with the
            // caller's identity rather than its service-linked role, only that path is allowed.
            Rule::bounded("ec2:CreateNetworkInterface").when(VIA_AWS_SERVICE).implied(),
            Rule::bounded("ec2:DeleteNetworkInterface").when(VIA_AWS_SERVICE).implied(),
        ],
    },
    ServiceRules {
        service: "Amazon API Gateway",
        sid: "ApiGateway",
        // API Gateway's IAM actions are HTTP verbs on resource paths: POST /vpclinks creates a VPC link,
        // POST /tags/{arn} tags one; PATCH and DELETE change and remove it.
        rules: &[
            Rule::create("apigateway:POST").on(APIGATEWAY_VPC_LINKS),
            Rule::read("apigateway:GET").on(APIGATEWAY_VPC_LINKS),
            Rule::mutate("apigateway:PATCH").on(APIGATEWAY_VPC_LINKS),
            Rule::mutate("apigateway:DELETE").on(APIGATEWAY_VPC_LINKS),
        ],
    },
    ServiceRules {
        service: "AWS KMS",
        sid: "Kms",
        rules: &[
            // The stack's key for its secrets.
            Rule::create("kms:CreateKey"),
            // KMS checks TagResource when CreateKey carries tags, against no particular key, hence
            // the request-tag grant; later tag changes need the key to be ours already.
            Rule::create("kms:TagResource"),
            Rule::mutate("kms:TagResource"),
            Rule::mutate("kms:UntagResource"),
            // Aliases are checked on the alias (by name) and on the key (by tag).
            Rule::mutate("kms:CreateAlias"),
            Rule::bounded("kms:CreateAlias").on(KMS_ALIASES),
            Rule::mutate("kms:DeleteAlias"),
            Rule::bounded("kms:DeleteAlias").on(KMS_ALIASES),
            Rule::read("kms:DescribeKey"),
            Rule::read("kms:ListAliases"),
            Rule::read("kms:ListResourceTags"),
            Rule::mutate("kms:ScheduleKeyDeletion"),
            // Secrets Manager encrypts and decrypts with the stack's key using the caller's identity.
            Rule::mutate("kms:Encrypt").implied(),
            Rule::mutate("kms:Decrypt").implied(),
            Rule::mutate("kms:GenerateDataKey").implied(),
        ],
    },
    ServiceRules {
        service: "Amazon RDS",
        sid: "Rds",
        rules: &[
            Rule::create("rds:CreateDBSubnetGroup"),
            Rule::mutate("rds:ModifyDBSubnetGroup"),
            Rule::mutate("rds:DeleteDBSubnetGroup"),
            Rule::read("rds:DescribeDBSubnetGroups"),
            // A new instance names our subnet group and AWS's default parameter and option groups.
            Rule::create("rds:CreateDBInstance"),
            Rule::mutate("rds:CreateDBInstance"),
            Rule::bounded("rds:CreateDBInstance").on(RDS_DEFAULT_GROUPS),
            // Engine upgrades switch to the new version's default parameter group.
            Rule::mutate("rds:ModifyDBInstance"),
            Rule::bounded("rds:ModifyDBInstance").on(RDS_DEFAULT_GROUPS),
            Rule::mutate("rds:DeleteDBInstance"),
            // `spec.restoreFromSnapshot`: a new instance with the request's tags, in our subnet
            // group, from a snapshot a person may have made (untagged), with AWS's default groups.
            Rule::create("rds:RestoreDBInstanceFromDBSnapshot"),
            Rule::mutate("rds:RestoreDBInstanceFromDBSnapshot"),
            Rule::bounded("rds:RestoreDBInstanceFromDBSnapshot").on(RDS_SNAPSHOTS_AND_DEFAULT_GROUPS),
            Rule::read("rds:DescribeDBInstances"),
            Rule::read("rds:DescribeDBSnapshots"),
            Rule::read("rds:ListTagsForResource"),
            // RDS authorizes AddTagsToResource for tags given at creation, with the request's tags.
            Rule::create("rds:AddTagsToResource"),
            Rule::mutate("rds:AddTagsToResource"),
        ],
    },
    ServiceRules {
        service: "AWS Secrets Manager",
        sid: "SecretsManager",
        rules: &[
            // Generating the master password names no resource.
            Rule::read("secretsmanager:GetRandomPassword"),
            Rule::read("secretsmanager:ListSecrets"),
            Rule::read("secretsmanager:DescribeSecret").on(SECRETS),
            Rule::create("secretsmanager:CreateSecret").on(SECRETS),
            // CreateSecret with tags also needs TagResource, checked with the request's tags.
            Rule::create("secretsmanager:TagResource").on(SECRETS),
            Rule::mutate("secretsmanager:TagResource").on(SECRETS),
            Rule::mutate("secretsmanager:PutSecretValue").on(SECRETS),
            // Repairing a secret's KMS key or description, and undoing a deletion someone scheduled.
            Rule::mutate("secretsmanager:UpdateSecret").on(SECRETS),
            Rule::mutate("secretsmanager:RestoreSecret").on(SECRETS),
            // Reading a secret's value is not harmless, so it is limited like a change.
            Rule::mutate("secretsmanager:GetSecretValue").on(SECRETS),
            Rule::mutate("secretsmanager:DeleteSecret").on(SECRETS),
        ],
    },
    ServiceRules {
        service: "AWS Systems Manager",
        sid: "Ssm",
        // Finding the current Amazon Linux AMI for bastions.
        rules: &[Rule::read("ssm:GetParameter").on(AMI_PARAMETERS)],
    },
    ServiceRules {
        service: "AWS IAM",
        sid: "Iam",
        // The bastion's role and instance profile, only under /tinystacks/, only with the boundary.
        rules: &[
            Rule::create("iam:CreateRole").on(IAM_PATHS).when(WITH_BOUNDARY),
            Rule::create("iam:TagRole").on(IAM_PATHS),
            Rule::mutate("iam:TagRole").on(IAM_PATHS),
            Rule::read("iam:GetRole").on(IAM_LOOKUPS),
            Rule::mutate("iam:DeleteRole").on(IAM_PATHS),
            Rule::mutate("iam:PutRolePolicy").on(IAM_PATHS).when(WITH_BOUNDARY),
            Rule::mutate("iam:DeleteRolePolicy").on(IAM_PATHS),
            // What must go before DeleteRole succeeds: the role's inline and attached policies.
            Rule::read("iam:ListRolePolicies").on(IAM_LOOKUPS),
            Rule::read("iam:ListAttachedRolePolicies").on(IAM_LOOKUPS),
            Rule::mutate("iam:AttachRolePolicy").on(IAM_PATHS).when(WITH_BOUNDARY),
            Rule::mutate("iam:DetachRolePolicy").on(IAM_PATHS),
            Rule::create("iam:CreateInstanceProfile").on(IAM_PATHS),
            Rule::create("iam:TagInstanceProfile").on(IAM_PATHS),
            Rule::mutate("iam:TagInstanceProfile").on(IAM_PATHS),
            Rule::read("iam:GetInstanceProfile").on(IAM_LOOKUPS),
            Rule::mutate("iam:DeleteInstanceProfile").on(IAM_PATHS),
            Rule::mutate("iam:AddRoleToInstanceProfile").on(IAM_PATHS),
            Rule::mutate("iam:RemoveRoleFromInstanceProfile").on(IAM_PATHS),
            // RunInstances with the instance profile passes its role to EC2.
            Rule::bounded("iam:PassRole").on(IAM_ROLES).when(PASSED_TO_EC2).implied(),
            // First VPC link / first DB instance in an account creates the service's linked role.
            Rule::bounded("iam:CreateServiceLinkedRole").on(SERVICE_LINKED_ROLES).when(LINKED_SERVICES).implied(),
        ],
    },
    ServiceRules {
        service: "AWS CloudTrail",
        sid: "CloudTrail",
        // The link's audit trail (`spec.audit.cloudTrail`), by name.
        rules: &[
            Rule::bounded("cloudtrail:CreateTrail").on(TRAILS),
            // CreateTrail with tags is also authorized as AddTags.
            Rule::bounded("cloudtrail:AddTags").on(TRAILS).implied(),
            Rule::read("cloudtrail:GetTrail").on(TRAILS),
            Rule::read("cloudtrail:GetTrailStatus").on(TRAILS),
            Rule::read("cloudtrail:ListTags").on(TRAILS),
            Rule::bounded("cloudtrail:UpdateTrail").on(TRAILS),
            Rule::bounded("cloudtrail:StartLogging").on(TRAILS),
            Rule::bounded("cloudtrail:DeleteTrail").on(TRAILS),
        ],
    },
    ServiceRules {
        service: "Amazon S3",
        sid: "S3",
        // The audit trail's bucket, by name: made private, encrypted and expiring; emptied and
        // deleted only when the link is deleted with deletionPolicy Delete.
        rules: &[
            Rule::bounded("s3:CreateBucket").on(TRAIL_BUCKETS),
            // HeadBucket and ListObjectsV2.
            Rule::read("s3:ListBucket").on(TRAIL_BUCKETS),
            Rule::read("s3:GetBucketTagging").on(TRAIL_BUCKETS),
            Rule::read("s3:GetBucketOwnershipControls").on(TRAIL_BUCKETS),
            Rule::read("s3:GetBucketPublicAccessBlock").on(TRAIL_BUCKETS),
            Rule::read("s3:GetEncryptionConfiguration").on(TRAIL_BUCKETS),
            Rule::read("s3:GetBucketPolicy").on(TRAIL_BUCKETS),
            Rule::read("s3:GetLifecycleConfiguration").on(TRAIL_BUCKETS),
            Rule::bounded("s3:PutBucketTagging").on(TRAIL_BUCKETS),
            Rule::bounded("s3:PutBucketOwnershipControls").on(TRAIL_BUCKETS),
            Rule::bounded("s3:PutBucketPublicAccessBlock").on(TRAIL_BUCKETS),
            Rule::bounded("s3:PutEncryptionConfiguration").on(TRAIL_BUCKETS),
            Rule::bounded("s3:PutBucketPolicy").on(TRAIL_BUCKETS),
            Rule::bounded("s3:PutLifecycleConfiguration").on(TRAIL_BUCKETS),
            Rule::bounded("s3:DeleteBucketPolicy").on(TRAIL_BUCKETS),
            Rule::bounded("s3:DeleteObject").on(TRAIL_LOG_FILES),
            Rule::bounded("s3:DeleteBucket").on(TRAIL_BUCKETS),
        ],
    },
    ServiceRules {
        service: "AWS Resource Groups Tagging",
        sid: "Tagging",
        // Finding everything carrying a stack's tags, e.g. leftovers after an interrupted delete.
        rules: &[Rule::read("tag:GetResources")],
    },
];

/// What a bastion instance's role may ever do, whatever policy the operator puts on it: the Session
/// Manager agent's calls (the actions of `AmazonSSMManagedInstanceCore`) and nothing else.
pub const BASTION_BOUNDARY_ACTIONS: &[&str] = &[
    "ssm:DescribeAssociation",
    "ssm:GetDeployablePatchSnapshotForInstance",
    "ssm:GetDocument",
    "ssm:DescribeDocument",
    "ssm:GetManifest",
    "ssm:GetParameter",
    "ssm:GetParameters",
    "ssm:ListAssociations",
    "ssm:ListInstanceAssociations",
    "ssm:PutInventory",
    "ssm:PutComplianceItems",
    "ssm:PutConfigurePackageResult",
    "ssm:UpdateAssociationStatus",
    "ssm:UpdateInstanceAssociationStatus",
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
];

/// Every `service:Action` the `Scoped` role grants, each once, in table order; the source-scanning
/// test compares this with the SDK calls it finds.
pub fn scoped_actions() -> impl Iterator<Item = &'static str> {
    let mut seen = BTreeSet::new();
    SCOPED_ACTIONS
        .iter()
        .flat_map(|service| service.rules.iter())
        .map(|rule| rule.action)
        .filter(move |a| seen.insert(*a))
}

/// The subset of [`scoped_actions`] the operator's code calls itself (see [`Rule::called`]), which is
/// what a scan of the source can be expected to find.
pub fn scoped_called_actions() -> impl Iterator<Item = &'static str> {
    let called: BTreeSet<&str> = SCOPED_ACTIONS
        .iter()
        .flat_map(|service| service.rules.iter())
        .filter(|rule| rule.called)
        .map(|rule| rule.action)
        .collect();
    scoped_actions().filter(move |a| called.contains(a))
}

// ---------------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------------

/// The CloudFormation template for a link's role, as JSON; CloudFormation accepts JSON as it is, and a
/// `Value` lets callers and tests inspect it without parsing text.
pub fn render(input: &TemplateInput) -> Value {
    let mode = permissions_name(input.permissions);
    let mut resources = Map::new();
    let mut role = Map::new();
    role.insert("RoleName".into(), json!(input.role_name));
    role.insert(
        "Description".into(),
        json!(format!("Assumed by tinystacks-operator for AwsAccountLink {} ({mode} permissions)", input.link_name)),
    );
    role.insert("AssumeRolePolicyDocument".into(), trust_policy(input));
    role.insert("MaxSessionDuration".into(), json!(MAX_SESSION_DURATION_SECONDS));
    let tags: Vec<Value> = input.tags.iter().map(|(key, value)| json!({"Key": key, "Value": value})).collect();
    role.insert("Tags".into(), Value::Array(tags));

    let policy_name = format!("TinyStacksOperator{mode}");
    match attach(permission_statements(input.permissions), &policy_name, &input.role_name) {
        Attachment::Inline(document) => {
            role.insert("Policies".into(), json!([{"PolicyName": policy_name, "PolicyDocument": document}]));
        }
        Attachment::Managed(documents) => {
            let mut arns = Vec::new();
            for (index, document) in documents.into_iter().enumerate() {
                let id = format!("OperatorPolicy{}", index + 1);
                resources.insert(
                    id.clone(),
                    json!({
                        "Type": "AWS::IAM::ManagedPolicy",
                        "Properties": {
                            "Description": format!(
                                "Part {} of the {mode} permissions of tinystacks-operator for AwsAccountLink {}",
                                index + 1,
                                input.link_name
                            ),
                            "Path": IAM_PATH,
                            "PolicyDocument": document,
                        },
                    }),
                );
                arns.push(json!({"Ref": id}));
            }
            role.insert("ManagedPolicyArns".into(), Value::Array(arns));
        }
    }
    resources.insert(ROLE_LOGICAL_ID.into(), json!({"Type": "AWS::IAM::Role", "Properties": role}));

    let mut outputs = Map::new();
    outputs.insert(
        ROLE_ARN_OUTPUT.into(),
        json!({
            "Description": "The role tinystacks-operator assumes, with the link's external ID",
            "Value": {"Fn::GetAtt": [ROLE_LOGICAL_ID, "Arn"]},
        }),
    );
    if input.permissions == Permissions::Scoped {
        resources.insert(BOUNDARY_LOGICAL_ID.into(), bastion_boundary(input));
        outputs.insert(
            BOUNDARY_ARN_OUTPUT.into(),
            json!({
                "Description": "Permissions boundary every bastion role the operator creates must carry",
                "Value": {"Ref": BOUNDARY_LOGICAL_ID},
            }),
        );
    }

    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "tinystacks-operator: IAM role {} for AwsAccountLink {} ({mode} permissions). \
             Deleting this stack revokes the operator's access to the account.",
            input.role_name, input.link_name
        ),
        "Resources": resources,
        "Outputs": outputs,
    })
}

/// The template as pretty JSON text, for the CLI, the ConfigMap and `CreateStack`. `Value`'s map is
/// ordered by key, so equal inputs give equal bytes and a changed template is a real change.
pub fn render_string(input: &TemplateInput) -> String {
    format!("{:#}\n", render(input))
}

/// `Full`/`Scoped` as text, for names and descriptions (the API type has no `Display`).
fn permissions_name(permissions: Permissions) -> &'static str {
    match permissions {
        Permissions::Full => "Full",
        Permissions::Scoped => "Scoped",
    }
}

/// Exactly one principal, one action and the external-ID condition: the confused-deputy protection
/// TinyStacks' role lacked. No wildcard, no account root, no second statement.
fn trust_policy(input: &TemplateInput) -> Value {
    json!({
        "Version": POLICY_VERSION,
        "Statement": [{
            "Sid": "TinyStacksOperatorWithExternalId",
            "Effect": "Allow",
            "Principal": {"AWS": input.trusted_principal_arn},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": input.external_id}},
        }],
    })
}

/// The permissions boundary for bastion roles; part of the `Scoped` stack so it exists before the
/// operator needs it and disappears with the link.
fn bastion_boundary(input: &TemplateInput) -> Value {
    json!({
        "Type": "AWS::IAM::ManagedPolicy",
        "Properties": {
            "ManagedPolicyName": bastion_boundary_policy_name(&input.role_name),
            "Path": IAM_PATH,
            "Description": format!(
                "Upper bound of the bastion roles tinystacks-operator creates for AwsAccountLink {}",
                input.link_name
            ),
            "PolicyDocument": {
                "Version": POLICY_VERSION,
                "Statement": [{
                    "Sid": "SessionManagerAgent",
                    "Effect": "Allow",
                    "Action": BASTION_BOUNDARY_ACTIONS,
                    "Resource": "*",
                }],
            },
        },
    })
}

/// The statements of the chosen permission set, before they are packed into documents.
fn permission_statements(permissions: Permissions) -> Vec<Value> {
    match permissions {
        Permissions::Full => full_statements(),
        Permissions::Scoped => scoped_statements(),
    }
}

/// One statement per seed service, named after it, so the rendered policy reads like the seed's list.
fn full_statements() -> Vec<Value> {
    let mut services: Vec<(&str, Vec<&str>)> = Vec::new();
    for item in SEED_PERMISSIONS {
        let index = match services.iter().position(|(service, _)| *service == item.service) {
            Some(index) => index,
            None => {
                services.push((item.service, Vec::new()));
                services.len() - 1
            }
        };
        let actions = &mut services[index].1;
        for action in item.actions {
            if !actions.contains(action) {
                actions.push(action);
            }
        }
    }
    services
        .into_iter()
        .map(|(service, actions)| {
            let sid: String = service.chars().filter(char::is_ascii_alphanumeric).collect();
            json!({"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": "*"})
        })
        .collect()
}

/// Merges rules that share kind, resources and conditions into one statement per service, in table
/// order, which keeps the policy small enough for IAM and its statement IDs stable.
fn scoped_statements() -> Vec<Value> {
    let mut statements = Vec::new();
    for service in SCOPED_ACTIONS {
        let mut groups: Vec<(Rule, Vec<&str>)> = Vec::new();
        for rule in service.rules {
            let same = |(group, _): &&mut (Rule, Vec<&str>)| {
                group.kind == rule.kind && group.resources == rule.resources && group.conditions == rule.conditions
            };
            match groups.iter_mut().find(same) {
                Some((_, actions)) if actions.contains(&rule.action) => {}
                Some((_, actions)) => actions.push(rule.action),
                None => groups.push((*rule, vec![rule.action])),
            }
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (rule, actions) in groups {
            let kind = kind_name(rule.kind);
            let count = seen.entry(kind).or_insert(0);
            *count += 1;
            let sid = match *count {
                1 => format!("{}{kind}", service.sid),
                n => format!("{}{kind}{n}", service.sid),
            };
            let mut statement = Map::new();
            statement.insert("Sid".into(), json!(sid));
            statement.insert("Effect".into(), json!("Allow"));
            statement.insert("Action".into(), json!(actions));
            statement.insert("Resource".into(), resource_value(rule.resources));
            let condition = condition_block(&rule);
            if !condition.is_empty() {
                statement.insert("Condition".into(), Value::Object(condition));
            }
            statements.push(Value::Object(statement));
        }
    }
    statements
}

/// Kind names double as statement-ID parts, so a reader of the policy sees why a statement exists.
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Create => "Create",
        Kind::Mutate => "Mutate",
        Kind::Read => "Read",
        Kind::Bounded => "Bounded",
    }
}

/// `"*"` as a plain string, as IAM's own examples write it; a list otherwise.
fn resource_value(resources: &[&str]) -> Value {
    match resources {
        [single] => json!(single),
        many => json!(many),
    }
}

/// The kind's tag condition plus the rule's own conditions, merged under their operators (IAM ANDs
/// the keys of one block).
fn condition_block(rule: &Rule) -> Map<String, Value> {
    let mut block = Map::new();
    let tag_key = match rule.kind {
        Kind::Create => Some(format!("aws:RequestTag/{MANAGED_BY_TAG}")),
        Kind::Mutate => Some(format!("aws:ResourceTag/{MANAGED_BY_TAG}")),
        Kind::Read | Kind::Bounded => None,
    };
    if let Some(key) = tag_key {
        add_condition(&mut block, "StringEquals", &key, json!(MANAGED_BY_VALUE));
    }
    for cond in rule.conditions {
        let value = match cond.value {
            CondValue::One(value) => json!(value),
            CondValue::AnyOf(values) => json!(values),
            CondValue::BastionBoundaryArn => json!({"Ref": BOUNDARY_LOGICAL_ID}),
        };
        add_condition(&mut block, cond.test, cond.key, value);
    }
    block
}

/// Puts `key: value` under `test`, creating the operator's block on first use.
fn add_condition(block: &mut Map<String, Value>, test: &str, key: &str, value: Value) {
    let entry = block.entry(test.to_owned()).or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(keys) = entry {
        keys.insert(key.to_owned(), value);
    }
}

/// Where the permissions end up on the role.
#[derive(Debug, PartialEq)]
enum Attachment {
    /// One inline policy: the simplest form, deleted with the role, used whenever it fits.
    Inline(Value),
    /// Managed policies, each within [`MANAGED_POLICY_LIMIT`], for permission sets whose total exceeds
    /// IAM's inline aggregate (splitting into more inline policies would not help: the quota is a sum).
    Managed(Vec<Value>),
}

/// Chooses inline when the whole set fits IAM's aggregate quota, managed policies otherwise.
fn attach(statements: Vec<Value>, policy_name: &str, role_name: &str) -> Attachment {
    let document = policy_document(statements.clone());
    if policy_name.len() + policy_size(&document, role_name) <= INLINE_POLICY_AGGREGATE_LIMIT {
        Attachment::Inline(document)
    } else {
        Attachment::Managed(pack(statements, MANAGED_POLICY_LIMIT, role_name))
    }
}

/// Greedy, order-preserving packing of statements into documents of at most `limit` characters, so the
/// split is stable from one render to the next and statements never move between policies needlessly.
fn pack(statements: Vec<Value>, limit: usize, role_name: &str) -> Vec<Value> {
    let mut documents = Vec::new();
    let mut current: Vec<Value> = Vec::new();
    for statement in statements {
        let mut candidate = current.clone();
        candidate.push(statement.clone());
        if !current.is_empty() && policy_size(&policy_document(candidate.clone()), role_name) > limit {
            documents.push(policy_document(std::mem::take(&mut current)));
            current.push(statement);
        } else {
            current = candidate;
        }
    }
    if !current.is_empty() {
        documents.push(policy_document(current));
    }
    documents
}

/// A policy document around the statements.
fn policy_document(statements: Vec<Value>) -> Value {
    let mut document = Map::new();
    document.insert("Version".into(), json!(POLICY_VERSION));
    document.insert("Statement".into(), Value::Array(statements));
    Value::Object(document)
}

/// The size IAM will count: compact JSON (IAM ignores whitespace) after CloudFormation has replaced the
/// boundary `Ref` with an ARN, assumed as long as it can get (GovCloud partition, this role name).
fn policy_size(document: &Value, role_name: &str) -> usize {
    let arn = format!("arn:aws-us-gov:iam::123456789012:policy{IAM_PATH}{}", bastion_boundary_policy_name(role_name));
    resolve_boundary(document, &arn).to_string().len()
}

/// Replaces every `{"Ref": BastionBoundary}` with `arn`.
fn resolve_boundary(value: &Value, arn: &str) -> Value {
    match value {
        Value::Object(map) if map.len() == 1 && map.get("Ref") == Some(&json!(BOUNDARY_LOGICAL_ID)) => json!(arn),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), resolve_boundary(v, arn))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(|v| resolve_boundary(v, arn)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    //! The template's promises, checked on the rendered JSON rather than on the tables alone.

    use super::*;

    /// The seed's two permission lists, verbatim (from `seed/000_15d51bcfdb133388.txt`), so the table
    /// can be checked against the seed's own words without reading files outside the crate.
    const SEED_EXCERPT: &str = "\
* **API Gateway**
* **Application Autoscaling**
* **Cloudwatch**
* **CodeBuild**
* **CodePipeline**
* **Amazon Elastic Container Service (ECS)**
* **Amazon EC2**
* **Elastic Load Balancer**
* **Key Management Service**
* **AWS Lambda**
* **Amazon Route 53**
* **Amazon Simple Notification Service (SNS)**
* **Amazon S3**

The role also gives Tinystacks the following access to your AWS account: 

* **IAM**: Create role, assume role
* **Cloudfront**: Create/get distribution, tag resource, put event selectors
* **Cloudtrail**: Create trail, delete trail
* **Amazon Elastic Container Repository (ECR)**: Get lifecycle policy, create repository, list tags, get repository policy, describe repository policy
* **Amazon EventBridge**: Delete rule, put targets, remove targets, put rule, describe rule
* **Cloudwatch Logs**: Delete log delivery, list log deliveries, create log delivery, create group, describe log groups & streams, put retention policy
* **Amazon RDS**: Create/delete DB subnet group, create/delete instance, describe instances, describe subnet groups
* **AWS Service Discovery**: Get/create/delete service, get operation, get/create/delete private DNS namespace
* **AWS Secrets Manager**: Get/put secret value, create/delete secret, get random password, get service quota
* **AWS Systems Manager**: Get/create/put parameters
";

    /// A realistic external ID, long enough to be unguessable.
    const EXTERNAL_ID: &str = "k3J9vQ2xW7mP4tR8yZ1cB6nD5fH0gL2s";
    /// The operator's identity as the trust policy should name it.
    const PRINCIPAL: &str = "arn:aws:iam::111122223333:role/tinystacks-operator";

    /// A link input for the given permission set.
    fn input(permissions: Permissions) -> TemplateInput {
        TemplateInput::new(
            "prod",
            "0b6a4c8e-1f2d-4e5a-9b7c-3d2e1f0a9b8c",
            "TinyStacksRole",
            PRINCIPAL,
            EXTERNAL_ID,
            permissions,
        )
    }

    /// The role resource's properties.
    fn role_properties(template: &Value) -> &Value {
        &template["Resources"][ROLE_LOGICAL_ID]["Properties"]
    }

    /// Every permission document of the role, inline or managed, so tests hold whichever form `render`
    /// chose.
    fn permission_documents(template: &Value) -> Vec<Value> {
        let mut documents = Vec::new();
        if let Some(policies) = role_properties(template)["Policies"].as_array() {
            documents.extend(policies.iter().map(|p| p["PolicyDocument"].clone()));
        }
        if let Some(arns) = role_properties(template)["ManagedPolicyArns"].as_array() {
            for arn in arns {
                let id = arn["Ref"].as_str().expect("managed policy ARNs are Refs");
                documents.push(template["Resources"][id]["Properties"]["PolicyDocument"].clone());
            }
        }
        documents
    }

    /// Every statement of the role's permissions.
    fn statements(template: &Value) -> Vec<Value> {
        permission_documents(template)
            .iter()
            .flat_map(|d| d["Statement"].as_array().expect("Statement is a list").clone())
            .collect()
    }

    /// A statement's actions as strings.
    fn actions(statement: &Value) -> Vec<String> {
        match &statement["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().map(|v| v.as_str().expect("action is a string").to_owned()).collect(),
            other => panic!("unexpected Action {other}"),
        }
    }

    /// All granted actions.
    fn granted(template: &Value) -> BTreeSet<String> {
        statements(template).iter().flat_map(actions).collect()
    }

    /// The seed's (service, phrase) pairs, parsed from the excerpt.
    fn seed_items() -> BTreeSet<(String, String)> {
        let mut items = BTreeSet::new();
        for line in SEED_EXCERPT.lines().filter_map(|l| l.trim().strip_prefix("* **")) {
            let (service, rest) = line.split_once("**").expect("bold service name");
            match rest.strip_prefix(':') {
                Some(phrases) => {
                    for phrase in phrases.split(',') {
                        items.insert((service.to_owned(), phrase.trim().to_owned()));
                    }
                }
                None => {
                    items.insert((service.to_owned(), FULL_ACCESS.to_owned()));
                }
            }
        }
        items
    }

    /// The trust policy admits one principal, one action, under the external ID: nothing else.
    #[test]
    fn trust_policy_allows_exactly_one_principal_with_the_external_id() {
        for permissions in [Permissions::Full, Permissions::Scoped] {
            let template = render(&input(permissions));
            let trust = &role_properties(&template)["AssumeRolePolicyDocument"];
            assert_eq!(trust["Version"], "2012-10-17");
            let statements = trust["Statement"].as_array().expect("statements");
            assert_eq!(statements.len(), 1);
            let statement = &statements[0];
            assert_eq!(statement["Effect"], "Allow");
            assert_eq!(statement["Principal"], json!({"AWS": PRINCIPAL}));
            assert_eq!(statement["Action"], "sts:AssumeRole");
            assert_eq!(statement["Condition"], json!({"StringEquals": {"sts:ExternalId": EXTERNAL_ID}}));
            assert!(statement.get("NotPrincipal").is_none() && statement.get("NotAction").is_none());
            assert_eq!(role_properties(&template)["MaxSessionDuration"], 3600);
        }
    }

    /// Every item of the seed's list has exactly one row in the table, in the seed's own words.
    #[test]
    fn full_table_matches_the_seed_item_by_item() {
        let table: Vec<(String, String)> =
            SEED_PERMISSIONS.iter().map(|i| (i.service.to_owned(), i.wording.to_owned())).collect();
        let unique: BTreeSet<_> = table.iter().cloned().collect();
        assert_eq!(unique.len(), table.len(), "a seed phrase appears twice in the table");
        assert_eq!(unique, seed_items());
        for item in SEED_PERMISSIONS {
            assert!(!item.actions.is_empty(), "{} / {} maps to no action", item.service, item.wording);
        }
    }

    /// `Full` grants every action of the table, in its service's statement, and nothing else.
    #[test]
    fn full_policy_grants_exactly_the_seed_table() {
        let template = render(&input(Permissions::Full));
        let expected: BTreeSet<String> =
            SEED_PERMISSIONS.iter().flat_map(|i| i.actions.iter().map(|a| (*a).to_owned())).collect();
        assert_eq!(granted(&template), expected);
        let statements = statements(&template);
        for item in SEED_PERMISSIONS {
            let sid: String = item.service.chars().filter(char::is_ascii_alphanumeric).collect();
            let statement = statements.iter().find(|s| s["Sid"] == sid.as_str()).expect("statement per service");
            for action in item.actions {
                assert!(actions(statement).iter().any(|a| a == action), "{action} not under {sid}");
            }
        }
        for statement in &statements {
            assert_eq!(statement["Effect"], "Allow");
            assert_eq!(statement["Resource"], "*");
            assert!(statement.get("Condition").is_none());
        }
        assert!(template["Resources"].get(BOUNDARY_LOGICAL_ID).is_none(), "Full is the seed's role, nothing more");
    }

    /// `Scoped` grants every action of its table and nothing else.
    #[test]
    fn scoped_policy_grants_exactly_the_table() {
        let template = render(&input(Permissions::Scoped));
        let expected: BTreeSet<String> = scoped_actions().map(str::to_owned).collect();
        assert_eq!(granted(&template), expected);
    }

    /// No `Scoped` action is a wildcard, not even a read-only one.
    #[test]
    fn scoped_policy_has_no_wildcard_actions() {
        let template = render(&input(Permissions::Scoped));
        for action in granted(&template) {
            assert!(!action.contains('*') && !action.contains('?'), "wildcard action {action}");
        }
    }

    /// Every statement is what its kind promises: creates need the request tag, changes need the
    /// resource tag, unconditioned statements are read-only, bounded ones are narrowed.
    #[test]
    fn scoped_statements_carry_their_kind_s_limits() {
        let template = render(&input(Permissions::Scoped));
        let request_tag = format!("aws:RequestTag/{MANAGED_BY_TAG}");
        let resource_tag = format!("aws:ResourceTag/{MANAGED_BY_TAG}");
        let statements = statements(&template);
        assert!(!statements.is_empty());
        for statement in &statements {
            let sid = statement["Sid"].as_str().expect("Sid");
            assert!(sid.chars().all(|c| c.is_ascii_alphanumeric()), "Sid {sid} is not alphanumeric");
            let equals = &statement["Condition"]["StringEquals"];
            if sid.contains("Create") {
                assert_eq!(equals[&request_tag], MANAGED_BY_VALUE, "{sid} lacks the request-tag condition");
            } else if sid.contains("Mutate") {
                assert_eq!(equals[&resource_tag], MANAGED_BY_VALUE, "{sid} lacks the resource-tag condition");
            } else if sid.contains("Read") {
                assert!(statement.get("Condition").is_none(), "{sid}");
                for action in actions(statement) {
                    let (_, name) = action.split_once(':').expect("service:Action");
                    let read_only = ["Describe", "List", "Get"].iter().any(|p| name.starts_with(p)) || name == "GET";
                    assert!(read_only, "{action} in {sid} is not read-only");
                }
            } else if sid.contains("Bounded") {
                assert!(statement["Resource"] != "*" || statement.get("Condition").is_some(), "{sid} is unbounded");
            } else {
                panic!("statement {sid} has no kind");
            }
        }
        let sids: BTreeSet<&str> = statements.iter().filter_map(|s| s["Sid"].as_str()).collect();
        assert_eq!(sids.len(), statements.len(), "statement IDs repeat");
    }

    /// The table itself classifies every mutation: read rules are read-only names, bounded rules are
    /// narrowed, and no rule appears twice with the same grant.
    #[test]
    fn scoped_table_is_consistent() {
        let mut seen = BTreeSet::new();
        for service in SCOPED_ACTIONS {
            for rule in service.rules {
                assert!(rule.action.split_once(':').is_some(), "{} is not service:Action", rule.action);
                assert!(seen.insert((rule.action, kind_name(rule.kind), rule.resources, rule.conditions.len())));
                if rule.kind == Kind::Bounded {
                    assert!(rule.resources != ANY || !rule.conditions.is_empty(), "{} is unbounded", rule.action);
                }
            }
        }
        let all: Vec<&str> = scoped_actions().collect();
        let unique: BTreeSet<&str> = all.iter().copied().collect();
        assert_eq!(all.len(), unique.len(), "scoped_actions repeats an action");
        let called: BTreeSet<&str> = scoped_called_actions().collect();
        for implied in ["iam:PassRole", "kms:Decrypt", "ec2:CreateNetworkInterface", "iam:CreateServiceLinkedRole"] {
            assert!(unique.contains(implied) && !called.contains(implied), "{implied}");
        }
        for direct in ["ec2:CreateVpc", "ec2:CreateTags", "sts:GetCallerIdentity", "rds:CreateDBInstance"] {
            assert!(called.contains(direct), "{direct}");
        }
    }

    /// The operator's listed calls are all in the table (the brief's list; later features add more).
    #[test]
    fn scoped_table_covers_the_operators_calls() {
        let actions: BTreeSet<&str> = scoped_actions().collect();
        let expected = "\
            sts:GetCallerIdentity ec2:DescribeVpcs ec2:DescribeSubnets ec2:DescribeRouteTables
            ec2:DescribeInternetGateways ec2:DescribeNatGateways ec2:DescribeAddresses
            ec2:DescribeSecurityGroups ec2:DescribeSecurityGroupRules ec2:DescribeVpcEndpoints
            ec2:DescribeAvailabilityZones ec2:DescribeInstances ec2:DescribeKeyPairs ec2:DescribeImages
            ec2:DescribeNetworkInterfaces ec2:CreateVpc ec2:ModifyVpcAttribute ec2:DeleteVpc
            ec2:CreateSubnet ec2:DeleteSubnet ec2:CreateRouteTable ec2:DeleteRouteTable ec2:CreateRoute
            ec2:ReplaceRoute ec2:DeleteRoute ec2:AssociateRouteTable ec2:DisassociateRouteTable
            ec2:CreateInternetGateway ec2:AttachInternetGateway ec2:DetachInternetGateway
            ec2:DeleteInternetGateway ec2:AllocateAddress ec2:ReleaseAddress ec2:CreateNatGateway
            ec2:DeleteNatGateway ec2:CreateSecurityGroup ec2:DeleteSecurityGroup
            ec2:AuthorizeSecurityGroupIngress ec2:RevokeSecurityGroupIngress
            ec2:AuthorizeSecurityGroupEgress ec2:RevokeSecurityGroupEgress ec2:CreateVpcEndpoint
            ec2:ModifyVpcEndpoint ec2:DeleteVpcEndpoints ec2:CreateTags ec2:DeleteTags ec2:RunInstances
            ec2:TerminateInstances ec2:ModifyInstanceAttribute ec2:AssociateAddress ec2:ImportKeyPair
            ec2:DeleteKeyPair ec2:CreateNetworkInterface ec2:DeleteNetworkInterface apigateway:POST apigateway:GET apigateway:DELETE apigateway:PATCH
            kms:CreateKey kms:CreateAlias kms:DeleteAlias kms:DescribeKey kms:ListAliases
            kms:ScheduleKeyDeletion kms:TagResource kms:UntagResource kms:Encrypt kms:Decrypt
            kms:GenerateDataKey kms:ListResourceTags rds:CreateDBSubnetGroup rds:DeleteDBSubnetGroup
            rds:ModifyDBSubnetGroup rds:DescribeDBSubnetGroups rds:CreateDBInstance rds:ModifyDBInstance
            rds:DeleteDBInstance rds:RestoreDBInstanceFromDBSnapshot rds:DescribeDBInstances
            rds:DescribeDBSnapshots rds:AddTagsToResource
            rds:ListTagsForResource secretsmanager:GetRandomPassword secretsmanager:CreateSecret
            secretsmanager:PutSecretValue secretsmanager:GetSecretValue secretsmanager:DescribeSecret
            secretsmanager:DeleteSecret secretsmanager:TagResource secretsmanager:ListSecrets iam:CreateRole
            iam:DeleteRole iam:GetRole iam:PutRolePolicy iam:DeleteRolePolicy iam:AttachRolePolicy
            iam:DetachRolePolicy iam:CreateInstanceProfile iam:DeleteInstanceProfile iam:GetInstanceProfile
            iam:AddRoleToInstanceProfile iam:RemoveRoleFromInstanceProfile iam:TagRole
            iam:TagInstanceProfile iam:PassRole ssm:GetParameter tag:GetResources";
        for action in expected.split_whitespace() {
            assert!(actions.contains(action), "{action} missing from SCOPED_ACTIONS");
        }
    }

    /// EC2's tag-on-create grant names exactly the EC2 calls the table lets create tagged resources.
    #[test]
    fn ec2_tag_on_create_list_matches_the_ec2_creates() {
        let creates: BTreeSet<&str> = SCOPED_ACTIONS
            .iter()
            .flat_map(|s| s.rules.iter())
            .filter(|r| r.kind == Kind::Create && r.action.starts_with("ec2:") && r.action != "ec2:CreateTags")
            .filter_map(|r| r.action.strip_prefix("ec2:"))
            .collect();
        let listed: BTreeSet<&str> = EC2_TAG_ON_CREATE_ACTIONS.iter().copied().collect();
        assert_eq!(creates, listed);
    }

    /// IAM writes are confined to `/tinystacks/`, and a role can only be created or given policies with
    /// the boundary, which the `Scoped` stack creates and exports.
    #[test]
    fn scoped_iam_writes_are_bounded() {
        use crate::bastion::NAME_PREFIX;
        const LOOKUPS: &[&str] =
            &["iam:GetRole", "iam:GetInstanceProfile", "iam:ListRolePolicies", "iam:ListAttachedRolePolicies"];
        let template = render(&input(Permissions::Scoped));
        // The lookups of a role or profile that does not exist yet are granted by name.
        let lookups = statements(&template)
            .into_iter()
            .find(|s| actions(s).iter().any(|a| a == "iam:GetRole"))
            .expect("a statement grants iam:GetRole");
        for resource in
            [format!("arn:aws:iam::*:role/{NAME_PREFIX}*"), format!("arn:aws:iam::*:instance-profile/{NAME_PREFIX}*")]
        {
            assert!(lookups["Resource"].as_array().is_some_and(|r| r.contains(&json!(resource))), "{lookups}");
        }
        let boundary = json!({"Ref": BOUNDARY_LOGICAL_ID});
        for statement in statements(&template) {
            let acts = actions(&statement);
            if acts.iter().any(|a| a == "iam:CreateRole" || a == "iam:PutRolePolicy" || a == "iam:AttachRolePolicy") {
                assert_eq!(statement["Condition"]["StringEquals"]["iam:PermissionsBoundary"], boundary);
            }
            if acts.iter().any(|a| a.starts_with("iam:") && a != "iam:CreateServiceLinkedRole") {
                // Lookups may also name a bastion's role or profile at the root path; nothing else.
                let lookups_only = acts.iter().all(|a| LOOKUPS.contains(&a.as_str()));
                let resources =
                    statement["Resource"].as_array().cloned().unwrap_or_else(|| vec![statement["Resource"].clone()]);
                for resource in resources {
                    let resource = resource.as_str().expect("resource string");
                    let bastion_name = [format!(":role/{NAME_PREFIX}*"), format!(":instance-profile/{NAME_PREFIX}*")]
                        .iter()
                        .any(|n| resource.ends_with(n.as_str()));
                    assert!(
                        resource.contains(IAM_PATH) || (lookups_only && bastion_name),
                        "{resource} is outside {IAM_PATH} for {acts:?}"
                    );
                }
            }
            if acts.iter().any(|a| a == "iam:PassRole") {
                assert_eq!(statement["Condition"]["StringEquals"]["iam:PassedToService"], "ec2.amazonaws.com");
            }
        }
        let policy = &template["Resources"][BOUNDARY_LOGICAL_ID];
        assert_eq!(policy["Type"], "AWS::IAM::ManagedPolicy");
        assert_eq!(policy["Properties"]["ManagedPolicyName"], "TinyStacksRole-BastionBoundary");
        assert_eq!(policy["Properties"]["Path"], IAM_PATH);
        assert_eq!(template["Outputs"][BOUNDARY_ARN_OUTPUT]["Value"], boundary);
    }

    /// Same input, same bytes; and a different permission set is a different template.
    #[test]
    fn rendering_is_deterministic() {
        for permissions in [Permissions::Full, Permissions::Scoped] {
            let first = render_string(&input(permissions));
            let mut reordered = input(permissions);
            reordered.tags = reordered.tags.into_iter().rev().collect();
            assert_eq!(first, render_string(&input(permissions)));
            assert_eq!(first, render_string(&reordered));
            assert!(first.ends_with("}\n"));
        }
        assert_ne!(render_string(&input(Permissions::Full)), render_string(&input(Permissions::Scoped)));
    }

    /// Every document stays within IAM's quotas even with the longest role name and external ID the
    /// API admits, counted the way IAM counts (no whitespace, `Ref`s resolved).
    #[test]
    fn policy_documents_are_within_iam_limits() {
        let role_name = "R".repeat(64);
        for permissions in [Permissions::Full, Permissions::Scoped] {
            let mut long = input(permissions);
            long.role_name = role_name.clone();
            long.external_id = "x".repeat(1224);
            long.trusted_principal_arn =
                format!("arn:aws-us-gov:iam::111122223333:role/{}/{}", "p".repeat(400), "n".repeat(64));
            let template = render(&long);
            let trust = &role_properties(&template)["AssumeRolePolicyDocument"];
            assert!(trust.to_string().len() <= TRUST_POLICY_LIMIT, "trust policy {}", trust.to_string().len());

            let properties = role_properties(&template);
            if let Some(policies) = properties["Policies"].as_array() {
                assert!(properties.get("ManagedPolicyArns").is_none());
                let total: usize = policies
                    .iter()
                    .map(|p| {
                        p["PolicyName"].as_str().map_or(0, str::len) + policy_size(&p["PolicyDocument"], &role_name)
                    })
                    .sum();
                assert!(total <= INLINE_POLICY_AGGREGATE_LIMIT, "{permissions:?}: inline total {total}");
            } else {
                let documents = permission_documents(&template);
                assert!(!documents.is_empty() && documents.len() <= MANAGED_POLICIES_PER_ROLE);
                for document in &documents {
                    let size = policy_size(document, &role_name);
                    assert!(size <= MANAGED_POLICY_LIMIT, "{permissions:?}: managed policy {size}");
                }
            }
            let boundary = &template["Resources"][BOUNDARY_LOGICAL_ID]["Properties"]["PolicyDocument"];
            if !boundary.is_null() {
                assert!(boundary.to_string().len() <= MANAGED_POLICY_LIMIT);
            }
            let description = template["Description"].as_str().expect("description");
            assert!(description.len() <= 1024);
            let role_description = properties["Description"].as_str().expect("role description");
            assert!(role_description.len() <= 1000);
        }
    }

    /// Past the inline quota, permissions move to managed policies that each fit, in order, attached by
    /// `Ref`; the same statements are granted either way.
    #[test]
    fn oversized_permission_sets_move_to_managed_policies() {
        let statement = |n: usize| {
            let action = format!("svc:Action{n:0>200}");
            json!({"Sid": format!("S{n}"), "Effect": "Allow", "Action": [action], "Resource": "*"})
        };
        let statements: Vec<Value> = (0..80).map(statement).collect();
        let Attachment::Managed(documents) = attach(statements.clone(), "P", "TinyStacksRole") else {
            panic!("80 large statements cannot be inline");
        };
        assert!(documents.len() > 1);
        for document in &documents {
            assert!(policy_size(document, "TinyStacksRole") <= MANAGED_POLICY_LIMIT);
        }
        let repacked: Vec<Value> =
            documents.iter().flat_map(|d| d["Statement"].as_array().cloned().unwrap_or_default()).collect();
        assert_eq!(repacked, statements);
        assert!(matches!(attach(statements[..2].to_vec(), "P", "TinyStacksRole"), Attachment::Inline(_)));
    }

    /// A valid CloudFormation template: the format version, the role, its tags and the `RoleArn` output.
    #[test]
    fn template_is_valid_cloudformation_json() {
        for permissions in [Permissions::Full, Permissions::Scoped] {
            let text = render_string(&input(permissions));
            let template: Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(template["AWSTemplateFormatVersion"], "2010-09-09");
            let description = template["Description"].as_str().expect("description");
            assert!(description.contains("tinystacks-operator") && description.contains("AwsAccountLink prod"));
            assert_eq!(template["Resources"][ROLE_LOGICAL_ID]["Type"], "AWS::IAM::Role");
            assert_eq!(role_properties(&template)["RoleName"], "TinyStacksRole");
            assert_eq!(template["Outputs"][ROLE_ARN_OUTPUT]["Value"], json!({"Fn::GetAtt": ["Role", "Arn"]}));
            let tags = role_properties(&template)["Tags"].as_array().cloned().expect("tags");
            assert!(tags.contains(&json!({"Key": MANAGED_BY_TAG, "Value": MANAGED_BY_VALUE})));
            assert!(tags.contains(&json!({"Key": OWNER_TAG, "Value": "AwsAccountLink//prod"})));
            assert!(tags.contains(&json!({"Key": OWNER_UID_TAG, "Value": "0b6a4c8e-1f2d-4e5a-9b7c-3d2e1f0a9b8c"})));
            for (id, resource) in template["Resources"].as_object().expect("resources") {
                assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "logical ID {id}");
                assert!(resource["Type"].as_str().is_some_and(|t| t.starts_with("AWS::IAM::")));
            }
            for document in permission_documents(&template) {
                assert_eq!(document["Version"], "2012-10-17");
            }
        }
    }
}
