//! `spec.audit.cloudTrail`: an account-wide, multi-region CloudTrail trail into an S3 bucket the
//! operator makes and keeps private, made and repaired through the link's role after each
//! verification. Observe → pure plan (`plan.rs`) → one call per change (`aws.rs`), the view updated
//! from each change, so one pass converges. Names are recorded in status before anything is
//! created, so a crash at any point leaves nothing the link does not know of.

mod aws;
pub mod plan;

use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use self::aws::Clients;
use self::plan::{Change, Desired};
use crate::api::{AwsAccountLink, AwsAccountLinkStatus, DeletionPolicy};
use crate::aws::credentials::LinkRole;
use crate::aws::ownership;
use crate::error::{Error, Result};
use crate::runtime::context::Context;

/// The most changes one pass makes (a whole set-up is nine).
const MAX_CHANGES: usize = 16;

/// What a pass did to the audit trail.
pub enum Outcome {
    /// The names were recorded in status; write it before anything is created.
    Recorded(String),
    /// AWS matches the spec; what to say in the Ready message, if anything.
    Done(Option<String>),
}

/// What the link wants of its trail (names depend only on the link). The trail's home region is
/// the one its recorded ARN names: a trail covers every region, so a later change of
/// `spec.region` does not move it (nor make a second one); a trail not recorded yet goes into
/// `spec.region`.
fn desired(link: &AwsAccountLink) -> Result<Desired> {
    let uid = ownership::owner_uid(link)?;
    let trail = &link.spec.audit.cloud_trail;
    let recorded = link.status.as_ref().and_then(|s| s.trail_arn.as_deref());
    let region = recorded.and_then(|arn| arn.split(':').nth(3)).filter(|r| !r.is_empty());
    let region = region.unwrap_or(&link.spec.region);
    Ok(Desired::new(&link.name_any(), &uid, &link.spec.account_id, region, trail.retention_days))
}

async fn connect(ctx: &Context, link: &AwsAccountLink, role: &LinkRole, d: &Desired) -> Result<Clients> {
    let config = ctx.aws.role_config(role, &d.region).await?;
    Ok(Clients::new(ctx, &config, role.role_arn.clone(), link.spec.account_id.clone()))
}

/// Brings the trail to the spec after the link's role was verified. `drift`: the link was Ready
/// for this generation before, so any change repairs drift (a Warning `DriftRepaired`).
pub async fn reconcile(
    ctx: &Context,
    link: &AwsAccountLink,
    role: &LinkRole,
    status: &mut AwsAccountLinkStatus,
    drift: bool,
) -> Result<Outcome> {
    let d = desired(link)?;
    if !link.spec.audit.cloud_trail.enabled {
        if status.trail_arn.is_none() {
            return Ok(Outcome::Done(None));
        }
        let clients = connect(ctx, link, role, &d).await?;
        teardown(ctx, link, &clients, &d, false).await?;
        status.trail_arn = None;
        return Ok(Outcome::Done(None));
    }
    if status.trail_bucket.as_deref() != Some(d.bucket.as_str()) || status.trail_arn.as_deref() != Some(&d.trail_arn) {
        status.trail_bucket = Some(d.bucket.clone());
        status.trail_arn = Some(d.trail_arn.clone());
        return Ok(Outcome::Recorded(format!("creating audit trail {} into S3 bucket {}", d.trail, d.bucket)));
    }
    let clients = connect(ctx, link, role, &d).await?;
    let mut observed = clients.observe(ctx, &d, false).await?;
    let reference = link.object_ref(&());
    for _ in 0..MAX_CHANGES {
        let Some(change) = plan::plan(&d, &observed)?.into_iter().next() else {
            return Ok(Outcome::Done(Some(format!(
                "audit trail {} logs every region into S3 bucket {} (kept {} days)",
                d.trail, d.bucket, d.retention_days
            ))));
        };
        clients.apply(ctx, &d, &change).await?;
        observed.apply(&change, &d);
        let (type_, reason) =
            if drift { (EventType::Warning, "DriftRepaired") } else { (EventType::Normal, change.reason()) };
        ctx.event(&reference, type_, reason, change.describe(&d)).await;
    }
    Err(Error::AwsUnavailable {
        action: "cloudtrail:GetTrail".into(),
        detail: format!("the audit trail did not settle after {MAX_CHANGES} changes; looking again"),
    })
}

/// Deletes the trail and, when `delete_bucket`, empties and deletes its bucket; else says the
/// bucket was kept. Returns once AWS shows the teardown done.
async fn teardown(
    ctx: &Context,
    link: &AwsAccountLink,
    clients: &Clients,
    d: &Desired,
    delete_bucket: bool,
) -> Result<()> {
    let reference = link.object_ref(&());
    let mut observed = clients.observe(ctx, d, delete_bucket).await?;
    for _ in 0..MAX_CHANGES {
        let Some(change) = plan::teardown(d, &observed, delete_bucket)? else {
            if observed.bucket.is_some() && !delete_bucket {
                let note = format!(
                    "kept S3 bucket {} with the audit logs; they expire after {} days",
                    d.bucket, d.retention_days
                );
                ctx.event(&reference, EventType::Normal, "Retained", note).await;
            }
            return Ok(());
        };
        clients.apply(ctx, d, &change).await?;
        ctx.event(&reference, EventType::Normal, change.reason(), change.describe(d)).await;
        // A page of objects may not have been the last: look again after emptying.
        match change {
            Change::EmptyBucket => observed = clients.observe(ctx, d, true).await?,
            other => observed.apply(&other, d),
        }
    }
    Err(Error::AwsUnavailable {
        action: "s3:DeleteObject".into(),
        detail: format!("the audit trail's bucket {} is still being emptied", d.bucket),
    })
}

/// At the link's deletion: the trail goes; the bucket goes with `deletionPolicy: Delete`, else is
/// kept (Event `Retained`). Nothing is called when the link never recorded a trail or bucket.
pub async fn cleanup(ctx: &Context, link: &AwsAccountLink) -> Result<()> {
    let recorded = link.status.as_ref().is_some_and(|s| s.trail_arn.is_some() || s.trail_bucket.is_some());
    let Some(role) = crate::aws::link_role(link).filter(|_| recorded) else { return Ok(()) };
    let d = desired(link)?;
    let clients = connect(ctx, link, &role, &d).await?;
    teardown(ctx, link, &clients, &d, link.spec.deletion_policy == DeletionPolicy::Delete).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_trail_keeps_its_home_region_when_the_link_s_region_changes() {
        let spec = serde_json::from_value(serde_json::json!({"accountId": "123456789012", "region": "us-east-1"}));
        let mut link = AwsAccountLink::new("l", spec.unwrap());
        link.metadata.uid = Some("uid-1".into());
        assert_eq!(desired(&link).unwrap().region, "us-east-1");
        let made_in_ireland = Desired::new("l", "uid-1", "123456789012", "eu-west-1", 365);
        link.status = Some(AwsAccountLinkStatus {
            trail_arn: Some(made_in_ireland.trail_arn.clone()),
            trail_bucket: Some(made_in_ireland.bucket.clone()),
            ..Default::default()
        });
        assert_eq!(desired(&link).unwrap(), made_in_ireland);
    }
}
