//! ARNs: the principal a trust policy may name for the operator's own identity, the partition of a
//! region, and the account of an ARN. Pure, so the odd cases are unit-tested here.

/// The principal a trust policy can name for the identity `sts:GetCallerIdentity` returned.
///
/// An `assumed-role` session ARN is not a valid principal, so it becomes the role's ARN. STS drops
/// a role's path from session ARNs, so for a role with a path the result is wrong and
/// `--service-role-arn` must name the role instead; the message of a failed AssumeRole says so.
pub fn principal_from_caller_arn(arn: &str) -> Result<String, String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, _region, account, resource] = parts[..] else {
        return Err(format!("{arn:?} is not an ARN"));
    };
    if prefix != "arn" || partition.is_empty() || account.is_empty() {
        return Err(format!("{arn:?} is not an ARN"));
    }
    match (service, resource.split_once('/')) {
        ("sts", Some(("assumed-role", rest))) => {
            let role =
                rest.split('/').next().filter(|r| !r.is_empty()).ok_or_else(|| format!("{arn:?} names no role"))?;
            Ok(format!("arn:{partition}:iam::{account}:role/{role}"))
        }
        // Some emulators report users under sts; IAM names them under iam.
        ("sts" | "iam", Some(("user", name))) => Ok(format!("arn:{partition}:iam::{account}:user/{name}")),
        ("iam", Some(("role", _))) => Ok(arn.to_string()),
        ("iam", None) if resource == "root" => Ok(arn.to_string()),
        _ => Err(format!(
            "{arn:?} cannot be named as a principal in a trust policy; set --service-role-arn to the operator's role"
        )),
    }
}

/// The AWS partition a region belongs to.
pub fn partition_for_region(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else {
        "aws"
    }
}

/// The ARN of role `role_name` in `account_id`, in the partition of `region`.
pub fn role_arn(account_id: &str, role_name: &str, region: &str) -> String {
    format!("arn:{}:iam::{account_id}:role/{role_name}", partition_for_region(region))
}

/// The account field of an ARN, if it has one.
pub fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assumed_role_sessions_become_their_role() {
        assert_eq!(
            principal_from_caller_arn("arn:aws:sts::111122223333:assumed-role/tinystacks-operator/i-0abc").unwrap(),
            "arn:aws:iam::111122223333:role/tinystacks-operator"
        );
        assert_eq!(
            principal_from_caller_arn("arn:aws-cn:sts::111122223333:assumed-role/op/botocore-session-1").unwrap(),
            "arn:aws-cn:iam::111122223333:role/op"
        );
    }

    #[test]
    fn users_and_roles_stay_as_they_are() {
        assert_eq!(
            principal_from_caller_arn("arn:aws:iam::111122223333:user/ci").unwrap(),
            "arn:aws:iam::111122223333:user/ci"
        );
        assert_eq!(
            principal_from_caller_arn("arn:aws:sts::123456789012:user/moto").unwrap(),
            "arn:aws:iam::123456789012:user/moto"
        );
        assert_eq!(
            principal_from_caller_arn("arn:aws:iam::111122223333:role/path/op").unwrap(),
            "arn:aws:iam::111122223333:role/path/op"
        );
    }

    #[test]
    fn other_identities_are_refused_with_the_fix() {
        let err = principal_from_caller_arn("arn:aws:sts::111122223333:federated-user/bob").unwrap_err();
        assert!(err.contains("--service-role-arn"), "{err}");
        assert!(principal_from_caller_arn("not-an-arn").is_err());
        assert!(principal_from_caller_arn("arn:aws:sts::111122223333:assumed-role/").is_err());
    }

    #[test]
    fn partitions_and_role_arns() {
        assert_eq!(
            role_arn("111122223333", "TinyStacksRole", "eu-west-1"),
            "arn:aws:iam::111122223333:role/TinyStacksRole"
        );
        assert_eq!(role_arn("111122223333", "R", "cn-north-1"), "arn:aws-cn:iam::111122223333:role/R");
        assert_eq!(partition_for_region("us-gov-west-1"), "aws-us-gov");
        assert_eq!(account_of("arn:aws:sts::111122223333:assumed-role/R/s"), Some("111122223333"));
        assert_eq!(account_of("arn:aws:s3:::bucket"), None);
    }
}
