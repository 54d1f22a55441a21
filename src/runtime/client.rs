//! The operator's Kubernetes client, with every request counted in the metrics: method (`WATCH`
//! for a watch), status code, and the time until the response's headers.

use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use http::{Request, Response};
use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};
use tower::{Layer, Service};

use super::metrics::Metrics;

/// A client for the configuration in the environment (KUBECONFIG or in-cluster), counted.
pub async fn counted(metrics: &Metrics) -> Result<Client, String> {
    let config = Config::infer().await.map_err(|e| e.to_string())?;
    let builder = ClientBuilder::try_from(config).map_err(|e| e.to_string())?;
    Ok(builder.with_layer(&Counted(metrics.clone())).build())
}

struct Counted(Metrics);

impl<S> Layer<S> for Counted {
    type Service = CountedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountedService { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct CountedService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> Service<Request<Body>> for CountedService<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let method = method_of(&request);
        let metrics = self.metrics.clone();
        let started = Instant::now();
        self.inner
            .call(request)
            .map(move |result| {
                let code = result.as_ref().ok().map(|r| r.status().as_u16());
                metrics.kube_request(method, code, started.elapsed());
                result
            })
            .boxed()
    }
}

/// The HTTP method, with a GET that watches (`?watch=true`, or `watch=1`) told apart: a watch's
/// answer comes at once and lasts minutes, unlike a read's.
fn method_of<T>(request: &Request<T>) -> &'static str {
    let watching = request.uri().query().is_some_and(|q| q.split('&').any(|p| matches!(p, "watch=true" | "watch=1")));
    match request.method().as_str() {
        "GET" if watching => "WATCH",
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::method_of;
    use http::Request;

    #[test]
    fn watches_are_told_from_reads_and_methods_stay_few() {
        let get = |uri: &str| Request::get(uri).body(()).expect("request");
        assert_eq!(method_of(&get("/apis/tinystacks.io/v1alpha1/stacks?watch=true&resourceVersion=1")), "WATCH");
        assert_eq!(method_of(&get("/api/v1/namespaces/a/secrets/b")), "GET");
        assert_eq!(method_of(&get("/api/v1/secrets?labelSelector=watch%3Dtrue")), "GET");
        let patch = Request::patch("/apis/tinystacks.io/v1alpha1/stacks/web/status").body(()).expect("request");
        assert_eq!(method_of(&patch), "PATCH");
        let odd = Request::builder().method("PROPFIND").uri("/").body(()).expect("request");
        assert_eq!(method_of(&odd), "OTHER");
    }
}
