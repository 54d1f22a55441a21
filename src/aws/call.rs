//! The one way every AWS call of a reconcile is made: through the shared rate limiter (mutations
//! draw from their service's bucket, every call follows the adaptive limit), with a failure turned
//! into the operator's error for the call's action (`service:Operation`, the name metrics and
//! messages use), except for the error codes the caller names: those mean "already done" (a retry
//! after a crash, a resource someone else removed) or "not there", and come back as answers.
//! Knows no kind: any kind builds a `Calls` from its limiter, account and caller.

use std::future::Future;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::errors::{Caller, aws_error};
use super::limiter::{Limiter, Service};
use crate::error::{Error, Result};

/// In a list of codes: any "not found" (`InvalidVpcID.NotFound`, `InvalidGroup.NotFound`,
/// `NotFoundException`, ...), which a deletion takes for done.
pub const NOT_FOUND: &str = "*.NotFound";

/// Whether `code` says that the resource a call named does not exist.
pub fn is_not_found(code: &str) -> bool {
    code.ends_with(".NotFound") || code.ends_with("NotFound") || code == "NotFoundException"
}

/// Whether `code` is one of `codes` (with `NOT_FOUND` standing for every not-found code).
fn listed(codes: &[&str], code: &str) -> bool {
    codes.contains(&code) || (codes.contains(&NOT_FOUND) && is_not_found(code))
}

/// The calls of one reconcile, for one account, with one caller's credentials.
#[derive(Clone, Copy)]
pub struct Calls<'a> {
    pub limiter: &'a Limiter,
    pub account: &'a str,
    pub caller: &'a Caller,
}

impl Calls<'_> {
    /// The mutation `call`; an error whose code is in `done` means the work was already done
    /// (`Ok(None)`).
    pub async fn mutate<T, E, F, Fut>(
        &self,
        service: Service,
        action: &str,
        done: &[&str],
        call: F,
    ) -> Result<Option<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.mutate_with(service, action, |e| e.code().is_some_and(|c| listed(done, c)), call).await
    }

    /// `mutate`, where `done` tells from the whole error that the work was already done: some
    /// services say so only in the message (CloudFormation's "No updates are to be performed").
    pub async fn mutate_with<T, E, F, Fut>(
        &self,
        service: Service,
        action: &str,
        done: impl Fn(&SdkError<E, HttpResponse>) -> bool,
        call: F,
    ) -> Result<Option<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let result = self.limiter.mutate(self.account, service, call).await;
        self.unless(action, done, result)
    }

    /// The mutation `call`; an error whose code is in `codes` is the answer `Ok(Err(code))`, for
    /// the caller to tell apart (already there, still in use, ...).
    pub async fn mutate_or<T, E, F, Fut>(
        &self,
        service: Service,
        action: &str,
        codes: &[&str],
        call: F,
    ) -> Result<Result<T, String>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match self.limiter.mutate(self.account, service, call).await {
            Ok(out) => Ok(Ok(out)),
            Err(e) => match e.code() {
                Some(code) if listed(codes, code) => Ok(Err(code.to_string())),
                _ => Err(self.fail(action, e)),
            },
        }
    }

    /// The read `call`.
    pub async fn read<T, E, F, Fut>(&self, service: Service, action: &str, call: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.limiter.read(self.account, service, call).await.map_err(|e| self.fail(action, e))
    }

    /// The read `call` of something that may not exist: an error whose code is in `absent` is
    /// `Ok(None)`.
    pub async fn find<T, E, F, Fut>(
        &self,
        service: Service,
        action: &str,
        absent: &[&str],
        call: F,
    ) -> Result<Option<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.find_with(service, action, |e| e.code().is_some_and(|c| listed(absent, c)), call).await
    }

    /// `find`, where `absent` tells from the whole error that there is nothing: CloudFormation
    /// answers a stack that does not exist with a `ValidationError` that says so in its message.
    pub async fn find_with<T, E, F, Fut>(
        &self,
        service: Service,
        action: &str,
        absent: impl Fn(&SdkError<E, HttpResponse>) -> bool,
        call: F,
    ) -> Result<Option<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let result = self.limiter.read(self.account, service, call).await;
        self.unless(action, absent, result)
    }

    /// The answer, `None` for an error that `expected` takes for one.
    fn unless<T, E>(
        &self,
        action: &str,
        expected: impl Fn(&SdkError<E, HttpResponse>) -> bool,
        result: Result<T, SdkError<E, HttpResponse>>,
    ) -> Result<Option<T>>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match result {
            Ok(out) => Ok(Some(out)),
            Err(e) if expected(&e) => Ok(None),
            Err(e) => Err(self.fail(action, e)),
        }
    }

    fn fail<E>(&self, action: &str, e: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        aws_error(action, self.caller, e)
    }
}

/// A call of the operator's own identity that no account's limiter can pace: its own
/// `sts:GetCallerIdentity` belongs to no link's account, and `sts:AssumeRole` also runs inside the
/// SDK's credential refresh, which has no `Context`. Its error is mapped as every other call's.
pub async fn outside_limiter<T, E, Fut>(caller: &Caller, action: &str, call: Fut) -> Result<T>
where
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    call.await.map_err(|e| aws_error(action, caller, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_stands_for_every_not_found_code() {
        let gone = [NOT_FOUND];
        for code in ["InvalidVpcID.NotFound", "InvalidGroup.NotFound", "NatGatewayNotFound", "NotFoundException"] {
            assert!(listed(&gone, code), "{code}");
        }
        assert!(!listed(&gone, "DependencyViolation"));
        assert!(!listed(&["RouteAlreadyExists"], "InvalidRoute.NotFound"));
        assert!(listed(&["RouteAlreadyExists"], "RouteAlreadyExists"));
    }
}
