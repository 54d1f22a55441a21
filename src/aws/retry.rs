//! No blind retry of a create AWS cannot recognise as a repeat. The SDK retries an attempt whose
//! answer was lost (a timeout, a dropped connection, a 5xx), which is right for reads and for
//! creates that carry a client token or a unique name; but a `CreateVpc`, `CreateKey` or
//! `AllocateAddress` sent again makes a second resource, unknown to the operator until the next
//! inventory list. For those operations the SDK makes no further attempt after such an answer: the
//! error reaches the reconcile, which lists that kind again before planning and adopts what the lost
//! attempt made. Throttling answers (the request was not taken) are retried as before.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::retry::RetryConfig;

use super::interceptor::operation;

/// The creates that make a new resource each time they are sent: no idempotency token, no unique
/// name.
const UNTOKENED_CREATES: &[&str] = &[
    "ec2:CreateVpc",
    "ec2:CreateInternetGateway",
    "ec2:CreateSubnet",
    "ec2:AllocateAddress",
    "kms:CreateKey",
    "apigateway:CreateVpcLink",
];

/// The interceptor every client built by [`super::Aws`] carries beside the call counter.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBlindRetry;

impl Intercept for NoBlindRetry {
    fn name(&self) -> &'static str {
        "tinystacks-no-blind-retry"
    }

    // Runs after each attempt and before the retry strategy decides; a retry config stored in the
    // interceptor layer takes precedence over the client's for this call only.
    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let untokened = operation(cfg).is_some_and(|(service, op)| is_untokened_create(&service, &op));
        let status = context.response().map(|r| r.status().as_u16());
        if untokened && context.output_or_error().is_some_and(|o| o.is_err()) && may_have_taken_effect(status) {
            cfg.interceptor_state().store_put(RetryConfig::standard().with_max_attempts(1));
        }
        Ok(())
    }
}

/// `service` is IAM's prefix (`ec2`, `kms`, `apigateway`).
fn is_untokened_create(service: &str, operation: &str) -> bool {
    UNTOKENED_CREATES.contains(&format!("{service}:{operation}").as_str())
}

/// Whether a failed attempt with this HTTP status (`None`: no answer at all) may have been carried
/// out: a server error or a lost answer may; a 4xx (throttling, a refusal) was not.
fn may_have_taken_effect(status: Option<u16>) -> bool {
    status.is_none_or(|s| s >= 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_creates_without_a_token_or_a_name_are_held_back() {
        assert!(is_untokened_create("ec2", "CreateVpc"));
        assert!(is_untokened_create("kms", "CreateKey"));
        assert!(is_untokened_create("apigateway", "CreateVpcLink"));
        // A client token, a unique name, or not a create: the SDK's retry is safe.
        assert!(!is_untokened_create("ec2", "CreateNatGateway"));
        assert!(!is_untokened_create("ec2", "RunInstances"));
        assert!(!is_untokened_create("rds", "CreateDBInstance"));
        assert!(!is_untokened_create("ec2", "DescribeVpcs"));
    }

    #[test]
    fn a_lost_answer_or_a_server_error_may_have_made_the_resource_a_refusal_did_not() {
        assert!(may_have_taken_effect(None));
        assert!(may_have_taken_effect(Some(500)));
        assert!(may_have_taken_effect(Some(503)));
        assert!(!may_have_taken_effect(Some(400)));
        assert!(!may_have_taken_effect(Some(429)));
    }
}
