//! Counts every attempt of every AWS call in `tinystacks_aws_requests_total`, so the volume of calls
//! and claims such as "no AWS call for this object" can be checked from outside.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use super::errors::{error_code, iam_prefix, outcome};
use crate::runtime::metrics::Metrics;

/// The interceptor every client built by [`super::Aws`] carries.
#[derive(Clone)]
pub struct CallCounter {
    metrics: Metrics,
}

impl std::fmt::Debug for CallCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallCounter")
    }
}

/// The IAM service prefix and the operation of the call an interceptor sees.
pub(super) fn operation(cfg: &ConfigBag) -> Option<(String, String)> {
    cfg.load::<Metadata>().map(|m| (iam_prefix(m.service()), m.name().to_string()))
}

impl CallCounter {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "tinystacks-call-counter"
    }

    // Per attempt rather than per execution: each retry is one more request against AWS's rate
    // limits, which is what the counter is for.
    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, operation) = operation(cfg).unwrap_or_else(|| ("unknown".into(), "unknown".into()));
        let result = match context.response() {
            Some(response) => {
                let status = response.status().as_u16();
                let code = if (200..300).contains(&status) {
                    None
                } else {
                    let header = response.headers().get("x-amzn-errortype");
                    error_code(header, response.body().bytes().unwrap_or_default())
                };
                outcome(code.as_deref(), status)
            }
            None => match context.output_or_error() {
                Some(Err(e)) if e.is_timeout_error() => "timeout",
                Some(Err(e)) if e.is_connector_error() => "transport_error",
                _ => "not_sent",
            },
        };
        self.metrics.aws_request(&service, &operation, result);
        Ok(())
    }
}
