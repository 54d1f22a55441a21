//! What the operator is about to change in AWS, shown before it changes it, and the two spec
//! fields that govern it (shared by Stack, Database and Bastion; see the README's "Reviewing and
//! approving plans").

use serde::{Deserialize, Serialize};

/// When the changes of a plan are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ChangePolicy {
    /// Every plan is applied as soon as it is computed.
    #[default]
    Automatic,
    /// A plan is applied only once `spec.approvedPlan` equals its `status.plan.id`; until then
    /// nothing in AWS changes and `Ready=False`, reason `AwaitingApproval`.
    Manual,
}

/// How much the operator may do in AWS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Management {
    /// Create, repair and (by `deletionPolicy`) delete.
    #[default]
    Full,
    /// Read and report only: drift shows in `status.plan` and as `DriftDetected` Events; deleting
    /// the object leaves every AWS resource in place.
    ObserveOnly,
}

/// The spec fields that govern a kind's plans, the same in every kind (flattened into its spec:
/// `spec.changePolicy`, `spec.approvedPlan`, `spec.management`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanControls {
    /// `Automatic` (default) applies every plan as soon as it is computed; `Manual` changes
    /// nothing in AWS until `approvedPlan` names the plan in `status.plan.id`.
    #[serde(default)]
    pub change_policy: ChangePolicy,

    /// The id of the plan (`status.plan.id`) a person approved, with `changePolicy: Manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub approved_plan: Option<String>,

    /// `Full` (default), or `ObserveOnly`: read AWS and report drift, never change or delete
    /// anything there (deleting the object leaves AWS as it is).
    #[serde(default)]
    pub management: Management,
}

impl PlanControls {
    /// Whether the operator only reads AWS and reports.
    pub fn observe_only(&self) -> bool {
        self.management == Management::ObserveOnly
    }
}

/// What one change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ChangeAction {
    Create,
    Update,
    Delete,
}

/// One change the operator would make, in the order it would make it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    pub action: ChangeAction,
    /// The AWS resource type, as `service:Type` (`ec2:Vpc`, `rds:DBInstance`).
    pub resource: String,
    /// The component of the object it is (`vpc`, `subnet/private/1`, `instance`).
    pub name: String,
    /// The resource's ID, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What differs, or what will be made; never a secret value.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The plan: the changes that would bring AWS to the spec. Empty when AWS matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanStatus {
    /// A hash of the changes and the generation: what `spec.approvedPlan` names.
    pub id: String,
    /// The generation the plan was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The changes, in order.
    #[serde(default)]
    pub changes: Vec<PlannedChange>,
    /// The approved plan being applied (`changePolicy: Manual`): its id and the changes it named
    /// (`<action> <resource> <name>`). The changes still to make stay within these; anything else
    /// (a spec edit, new drift) needs a new approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applying: Option<ApprovedPlan>,
}

/// An approved plan under way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovedPlan {
    pub id: String,
    pub changes: Vec<String>,
}
