//! SDK errors turned into the operator's error kinds: throttling, 5xx and network trouble retry;
//! a denied action stalls and names the action; nothing a message carries may hold a credential.

use std::fmt::Debug;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::error::Error;

/// Error codes AWS services use for "slow down" (STS and IAM `Throttling`, most JSON services
/// `ThrottlingException`, EC2 `RequestLimitExceeded`, API Gateway `TooManyRequestsException`).
pub const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "PriorRequestNotComplete",
];

/// Error codes for "this identity may not do that".
pub const DENIED_CODES: &[&str] =
    &["AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess", "AuthorizationError"];

/// Error codes for credentials AWS does not accept at all (wrong, deleted or expired keys).
pub const REJECTED_CREDENTIAL_CODES: &[&str] = &[
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidAccessKeyId",
    "AuthFailure",
    "IncompleteSignature",
    "InvalidToken",
];

/// Error codes for "this request can never succeed as it is": a value AWS refuses (a name's shape
/// or length, an engine version or instance class RDS does not offer: RDS answers
/// `InvalidParameterCombination` "Cannot find version 16.99 for postgres"), or values that do not
/// go together. The request is built from the object's spec and name, so only a change of the
/// object can make it pass; retrying never does.
pub const INVALID_REQUEST_CODES: &[&str] = &[
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "InvalidParameter",
    "InvalidParameterException",
    "InvalidParameterValueException",
    "ValidationException",
    "ValidationError",
];

/// What kind of failure an AWS error code and HTTP status describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Throttled,
    Denied,
    CredentialsRejected,
    ServerError,
    /// A request AWS refuses as invalid (`INVALID_REQUEST_CODES`): the user's to fix.
    Invalid,
    ClientError,
}

/// Classifies a service error by its code, then by its HTTP status.
pub fn classify(code: Option<&str>, status: Option<u16>) -> Failure {
    match code {
        Some(c) if THROTTLING_CODES.contains(&c) => return Failure::Throttled,
        Some(c) if DENIED_CODES.contains(&c) => return Failure::Denied,
        Some(c) if REJECTED_CREDENTIAL_CODES.contains(&c) => return Failure::CredentialsRejected,
        Some(c) if INVALID_REQUEST_CODES.contains(&c) => return Failure::Invalid,
        _ => {}
    }
    match status {
        Some(429) => Failure::Throttled,
        Some(s) if s >= 500 => Failure::ServerError,
        _ => Failure::ClientError,
    }
}

/// Whose credentials a call used, for messages that must say which ones to fix.
#[derive(Clone, Debug)]
pub enum Caller {
    /// The operator's own identity (its service role).
    Operator,
    /// The bootstrap credentials from a Secret.
    Bootstrap { secret: String },
    /// The link's assumed role.
    LinkRole { role_arn: String },
}

impl Caller {
    fn describe(&self) -> String {
        match self {
            Caller::Operator => "of the operator".into(),
            Caller::Bootstrap { secret } => format!("from the bootstrap Secret {secret}"),
            Caller::LinkRole { role_arn } => format!("of the role {role_arn}"),
        }
    }

    fn remedy(&self) -> String {
        match self {
            Caller::Operator => {
                "check the operator's AWS credentials (environment, web identity or instance profile)".into()
            }
            Caller::Bootstrap { secret } => format!("put valid, unexpired credentials into the Secret {secret}"),
            Caller::LinkRole { .. } => {
                "the role's session was rejected; it is assumed again at the next attempt".into()
            }
        }
    }
}

/// The operator's error for a failed SDK call of `action` (`service:Operation`, as IAM names it),
/// made with `caller`'s credentials.
pub fn aws_error<E>(action: &str, caller: &Caller, error: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let action = action.to_string();
    match &error {
        SdkError::TimeoutError(_) => Error::AwsUnavailable { action, detail: "the request timed out".into() },
        SdkError::DispatchFailure(failure) => {
            let detail = if failure.is_timeout() {
                "the connection timed out".to_string()
            } else {
                format!("the request could not be sent ({})", scrub(&source_chain(&error)))
            };
            Error::AwsUnavailable { action, detail }
        }
        SdkError::ResponseError(_) => {
            let status = error.raw_response().map(|r| r.status().as_u16());
            let detail = match status {
                Some(s) => format!("an unreadable response with HTTP status {s}"),
                None => "an unreadable response".into(),
            };
            Error::AwsUnavailable { action, detail }
        }
        SdkError::ConstructionFailure(_) => Error::AwsUnavailable {
            action,
            detail: format!("the request could not be built ({})", scrub(&source_chain(&error))),
        },
        SdkError::ServiceError(service) => {
            // The body is read again when the SDK could not parse it (an error format of the wrong
            // protocol, as some emulators send): the code decides what happens next.
            let raw = service.raw();
            let body = raw.body().bytes().unwrap_or_default();
            let code = service
                .err()
                .code()
                .map(str::to_string)
                .or_else(|| error_code(raw.headers().get("x-amzn-errortype"), body));
            let message =
                scrub(&service.err().message().map(str::to_string).or_else(|| error_message(body)).unwrap_or_default());
            let status = raw.status().as_u16();
            match classify(code.as_deref(), Some(status)) {
                Failure::Throttled => Error::AwsThrottled { action },
                Failure::ServerError => Error::AwsUnavailable {
                    action,
                    detail: format!("HTTP {status} {}: {message}", code.as_deref().unwrap_or("error")),
                },
                Failure::Denied => Error::AccessDenied {
                    message: if message.is_empty() {
                        format!("the credentials {} lack it", caller.describe())
                    } else {
                        format!("{message} (credentials {})", caller.describe())
                    },
                    action,
                },
                Failure::CredentialsRejected => Error::AwsCredentialsRejected {
                    action,
                    code: code.unwrap_or_default(),
                    whose: caller.describe(),
                    remedy: caller.remedy(),
                },
                // CloudFormation also answers `ValidationError` for a stack's state, which passes
                // (an update while another is in progress): it stays a retried client error.
                Failure::Invalid if action.starts_with("cloudformation:") => {
                    Error::AwsRequestFailed { action, code: code.unwrap_or_default(), message }
                }
                Failure::Invalid => Error::AwsRejectedValue {
                    action,
                    code: code.unwrap_or_default(),
                    message,
                    remedy: "the request is built from this object's name and spec: change them (the operator does not retry until the object changes)".into(),
                },
                Failure::ClientError => {
                    Error::AwsRequestFailed { action, code: code.unwrap_or_else(|| format!("HTTP {status}")), message }
                }
            }
        }
        _ => Error::AwsUnavailable { action, detail: scrub(&source_chain(&error)) },
    }
}

/// The error and its sources on one line.
fn source_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Removes anything that looks like an AWS access key ID (`AKIA…`, `ASIA…`): AWS messages do not
/// echo secret keys, but some echo the key ID, and key IDs from a Secret stay out of conditions.
pub fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let chars: Vec<char> = message.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        let prefixed = rest.len() >= 20
            && ["AKIA", "ASIA", "AIDA", "AROA"].iter().any(|p| rest.iter().take(4).copied().eq(p.chars()));
        let boundary = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        if prefixed && boundary {
            let len = rest.iter().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit()).count();
            if (16..=128).contains(&len) {
                out.extend(rest.iter().take(4));
                out.push_str("…(redacted)");
                i += len;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The IAM action for an SDK operation: IAM's service prefix and the operation's name.
pub fn iam_action(sdk_service: &str, operation: &str) -> String {
    format!("{}:{operation}", iam_prefix(sdk_service))
}

/// IAM's prefix for a service as the SDK names it in its operation metadata (`STS`, `EC2`,
/// `CloudFormation`, `Secrets Manager`, ...).
pub fn iam_prefix(sdk_service: &str) -> String {
    let compact: String = sdk_service.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase();
    match compact.as_str() {
        "apigatewayv2" | "apigateway" => "apigateway".into(),
        "resourcegroupstaggingapi" => "tag".into(),
        "elasticloadbalancingv2" => "elasticloadbalancing".into(),
        _ => compact,
    }
}

/// The metric outcome of one attempt whose response carried `code` and `status`.
pub fn outcome(code: Option<&str>, status: u16) -> &'static str {
    if (200..300).contains(&status) {
        return "success";
    }
    match classify(code, Some(status)) {
        Failure::Throttled => "throttled",
        Failure::Denied | Failure::CredentialsRejected => "denied",
        Failure::ServerError => "server_error",
        Failure::Invalid | Failure::ClientError => "client_error",
    }
}

/// The error code of a raw error response, for the metrics: the `x-amzn-ErrorType` header (JSON
/// protocols), else `<Code>` (query and XML protocols), else `"__type"` (JSON bodies).
pub fn error_code(header: Option<&str>, body: &[u8]) -> Option<String> {
    if let Some(h) = header {
        let code = h.split([':', '#']).find(|s| !s.is_empty() && !s.contains('.') && !s.contains('/'));
        if let Some(code) = code.or(Some(h)) {
            return Some(code.to_string());
        }
    }
    let body = std::str::from_utf8(body).ok()?;
    if let Some(start) = body.find("<Code>") {
        let rest = &body[start + 6..];
        return rest.find("</Code>").map(|end| rest[..end].trim().to_string());
    }
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let raw = value.get("__type").or_else(|| value.get("code"))?.as_str()?;
    Some(raw.rsplit('#').next().unwrap_or(raw).to_string())
}

/// The message of a raw error response: `<Message>` (query and XML protocols), else `"message"`
/// (JSON bodies).
pub fn error_message(body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    if let Some(start) = body.find("<Message>") {
        let rest = &body[start + 9..];
        return rest.find("</Message>").map(|end| rest[..end].trim().to_string());
    }
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(value.get("message").or_else(|| value.get("Message"))?.as_str()?.to_string())
}

/// Debug output that never shows the wrapped value, for types that hold credentials.
pub struct Redacted;

impl Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("** redacted **")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_are_transient_denials_are_not() {
        for code in ["Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"] {
            assert_eq!(classify(Some(code), Some(400)), Failure::Throttled, "{code}");
        }
        assert_eq!(classify(None, Some(429)), Failure::Throttled);
        assert_eq!(classify(Some("InternalError"), Some(500)), Failure::ServerError);
        assert_eq!(classify(None, Some(503)), Failure::ServerError);
        for code in ["AccessDenied", "AccessDeniedException", "UnauthorizedOperation"] {
            assert_eq!(classify(Some(code), Some(403)), Failure::Denied, "{code}");
        }
        assert_eq!(classify(Some("InvalidClientTokenId"), Some(403)), Failure::CredentialsRejected);
        assert_eq!(classify(Some("DBInstanceNotFound"), Some(404)), Failure::ClientError);
        for code in ["InvalidParameterCombination", "InvalidParameterValue", "ValidationException", "ValidationError"] {
            assert_eq!(classify(Some(code), Some(400)), Failure::Invalid, "{code}");
        }
        assert_eq!(outcome(Some("InvalidParameterCombination"), 400), "client_error");
    }

    #[test]
    fn access_key_ids_are_scrubbed() {
        let m = scrub("The key AKIAIOSFODNN7EXAMPLE is bad, so is ASIA1234567890ABCDEF.");
        assert!(!m.contains("IOSFODNN7EXAMPLE") && !m.contains("1234567890ABCDEF"), "{m}");
        assert!(m.starts_with("The key AKIA…(redacted) is bad"), "{m}");
        assert_eq!(
            scrub("arn:aws:iam::123456789012:role/TinyStacksRole"),
            "arn:aws:iam::123456789012:role/TinyStacksRole"
        );
        assert_eq!(scrub("MASIAXX"), "MASIAXX");
    }

    #[test]
    fn iam_prefixes_follow_iam_not_the_sdk() {
        assert_eq!(iam_action("STS", "AssumeRole"), "sts:AssumeRole");
        assert_eq!(iam_action("CloudFormation", "DescribeStacks"), "cloudformation:DescribeStacks");
        assert_eq!(iam_action("EC2", "DescribeAvailabilityZones"), "ec2:DescribeAvailabilityZones");
        assert_eq!(iam_prefix("Secrets Manager"), "secretsmanager");
        assert_eq!(iam_prefix("ApiGatewayV2"), "apigateway");
        assert_eq!(iam_prefix("Resource Groups Tagging API"), "tag");
    }

    #[test]
    fn error_codes_are_found_in_every_protocol() {
        let xml = b"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>";
        assert_eq!(error_code(None, xml).as_deref(), Some("AccessDenied"));
        let ec2 = b"<Response><Errors><Error><Code>UnauthorizedOperation</Code></Error></Errors></Response>";
        assert_eq!(error_code(None, ec2).as_deref(), Some("UnauthorizedOperation"));
        let json = br#"{"__type":"com.amazonaws.kms#AccessDeniedException","message":"no"}"#;
        assert_eq!(error_code(None, json).as_deref(), Some("AccessDeniedException"));
        assert_eq!(
            error_code(Some("ThrottlingException:http://internal.amazon.com/"), b"").as_deref(),
            Some("ThrottlingException")
        );
        assert_eq!(error_code(None, b"oops"), None);
        assert_eq!(error_message(xml).as_deref(), Some("no"));
        assert_eq!(error_message(json).as_deref(), Some("no"));
        assert_eq!(outcome(Some("AccessDenied"), 403), "denied");
        assert_eq!(outcome(None, 200), "success");
        assert_eq!(outcome(Some("Throttling"), 400), "throttled");
    }

    #[test]
    fn redacted_debug_shows_nothing() {
        assert_eq!(format!("{:?}", Redacted), "** redacted **");
    }
}
