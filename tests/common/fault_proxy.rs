//! A fault-injecting HTTP proxy between the operator and moto: it forwards every request, counts
//! AWS actions, and rewrites chosen answers for a number of calls, so that tests see what moto
//! does not do (an RDS instance that stays `creating` for minutes). With [`Faults`] it also
//! answers some requests as a throttled, failing or unavailable AWS would (each service's own
//! error codes and protocol), delays answers, and drops connections after the request took
//! effect, so that the answer is lost but the change is made. With
//! [`FaultProxy::wait_like_aws`] it keeps resources in their in-between states for as long as AWS
//! would (`aws_waits.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::aws_waits::{Wait, Waits};
use tokio::net::{TcpListener, TcpStream};

/// A rewrite of `from` into `to` in the responses to `action`, for the next `times` responses
/// that contain `from`.
struct Rewrite {
    action: String,
    from: String,
    to: String,
    times: usize,
}

/// What fraction of requests gets which fault. Decided per request, from a seeded generator;
/// with `throttle` above zero, the first request to each service is throttled, so that every
/// service's throttling answer is exercised whatever the order of the calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Answered with the service's throttling error (`RequestLimitExceeded`, `Throttling`,
    /// `ThrottlingException`, `TooManyRequestsException`), not forwarded.
    pub throttle: f64,
    /// Answered with 500 `InternalError`, not forwarded.
    pub server_error: f64,
    /// Answered with 503 `ServiceUnavailable`, not forwarded.
    pub unavailable: f64,
    /// Forwarded (so it takes effect), then the connection is closed without an answer.
    pub drop_after: f64,
    /// Added before every answer.
    pub latency: std::time::Duration,
}

/// How the faults went: requests seen and faults injected, and when each request arrived.
#[derive(Clone, Debug, Default)]
pub struct FaultCounts {
    pub requests: usize,
    pub throttled: usize,
    pub server_errors: usize,
    pub unavailable: usize,
    pub dropped: usize,
    /// The throttling answers by error code (each service's own).
    pub throttle_codes: std::collections::BTreeMap<String, usize>,
}

/// An answer AWS gives to a request moto accepts: requests for `action` whose body contains
/// `needle` are answered with HTTP 400 and AWS's `code` and `message`, never forwarded.
struct Refusal {
    action: String,
    needle: String,
    code: String,
    message: String,
}

#[derive(Default)]
struct State {
    refusals: Vec<Refusal>,
    counts: HashMap<String, usize>,
    rewrites: Vec<Rewrite>,
    rewritten: HashMap<String, usize>,
    /// Every request as text (head and body), for questions such as "did any call name account X".
    requests: Vec<String>,
    faults: Faults,
    fault_counts: FaultCounts,
    rng: Option<rand::rngs::StdRng>,
    /// The services whose first request was throttled.
    throttled_services: std::collections::HashSet<String>,
    /// Every call's action, when it was sent and how long moto took to answer (the benchmark's
    /// critical path).
    timings: Vec<Timing>,
    /// The answers to requests that carried an idempotency token (`ClientToken=`), by action and
    /// token: AWS answers a retry with the same token as the first call rather than acting again,
    /// which moto does not do; the proxy does it for moto.
    idempotent: HashMap<(String, String), Vec<u8>>,
    /// AWS's waits, once [`FaultProxy::wait_like_aws`] is called.
    waits: Waits,
}

/// One call through the proxy: its action (or `METHOD /path` for REST APIs), when the proxy
/// received it, and the time until moto's answer was read.
#[derive(Clone, Debug)]
pub struct Timing {
    pub action: String,
    pub start: std::time::Instant,
    pub latency: std::time::Duration,
}

/// The proxy; its listener runs on the test's runtime until the proxy is dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, for the operator's `AWS_ENDPOINT_URL`.
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(serve(client, upstream.clone(), state.clone()));
                }
            }
        });
        Self { url, state, task }
    }

    /// Rewrites `from` into `to` in the next `times` answers to `action` that contain `from`.
    pub fn rewrite(&self, action: &str, from: &str, to: &str, times: usize) {
        let rewrite = Rewrite { action: action.into(), from: from.into(), to: to.into(), times };
        self.state.lock().unwrap().rewrites.push(rewrite);
    }

    /// Ends every rewrite of the answers to `action` (a resource held in its in-between state
    /// until the test has seen what it wanted is let go).
    pub fn release(&self, action: &str) {
        self.state.lock().unwrap().rewrites.iter_mut().filter(|r| r.action == action).for_each(|r| r.times = 0);
    }

    /// Waits like AWS from now on: each resource of the types in
    /// [`super::aws_waits::AWS_WAITS`] stays in its in-between state for its type's typical time
    /// × `factor` after its create call (a NAT gateway `pending` for 90 s × `factor`, ...).
    pub fn wait_like_aws(&self, factor: f64) {
        self.state.lock().unwrap().waits.enable(factor);
    }

    /// The waits so far, in the order of their create calls.
    pub fn waits(&self) -> Vec<Wait> {
        self.state.lock().unwrap().waits.waits.clone()
    }

    /// Answers every `CreateDBInstance` with the instance `creating`, as RDS does (moto answers
    /// `available`, so an operator that believed the answer would never look again).
    pub fn answer_db_creates_as_creating(&self) {
        let (available, creating) =
            ("<DBInstanceStatus>available</DBInstanceStatus>", "<DBInstanceStatus>creating</DBInstanceStatus>");
        self.rewrite("CreateDBInstance", available, creating, usize::MAX);
    }

    /// Keeps slow resources in their in-between states for the next `polls` answers that show them
    /// done, as real AWS does for minutes where moto is done at once: NAT gateways and VPC
    /// endpoints `pending` (their creates answered so too, as AWS does), RDS instances `creating`
    /// (likewise), on the way
    /// up; NAT gateways `deleting` on the way down.
    pub fn hold_in_between_states(&self, polls: usize) {
        self.answer_db_creates_as_creating();
        let (available, pending) = ("<state>available</state>", "<state>pending</state>");
        self.rewrite("CreateNatGateway", available, pending, usize::MAX);
        self.rewrite("CreateVpcEndpoint", available, pending, usize::MAX);
        self.rewrite("DescribeNatGateways", "<state>available</state>", "<state>pending</state>", polls);
        self.rewrite("DescribeNatGateways", "<state>deleted</state>", "<state>deleting</state>", polls);
        self.rewrite("DescribeVpcEndpoints", "<state>available</state>", "<state>pending</state>", polls);
        let available = "<DBInstanceStatus>available</DBInstanceStatus>";
        self.rewrite("DescribeDBInstances", available, "<DBInstanceStatus>creating</DBInstanceStatus>", polls);
    }

    /// Answers every request for `action` whose body contains `needle` as AWS refuses an invalid
    /// one (HTTP 400 with `code` and `message`, in the service's protocol), without forwarding it:
    /// for values real AWS refuses and moto accepts (an engine version RDS does not offer).
    pub fn refuse(&self, action: &str, needle: &str, code: &str, message: &str) {
        let refusal =
            Refusal { action: action.into(), needle: needle.into(), code: code.into(), message: message.into() };
        self.state.lock().unwrap().refusals.push(refusal);
    }

    /// How many requests for `action` (`CreateDBInstance`, `GetSecretValue`, ...) went through.
    pub fn count(&self, action: &str) -> usize {
        self.state.lock().unwrap().counts.get(action).copied().unwrap_or(0)
    }

    /// The calls that change something in AWS (every action but `Describe*`, `Get*`, `List*`, API
    /// Gateway's `GET` and STS's `AssumeRole`), by action: what a plan held for approval or
    /// `ObserveOnly` must keep at zero.
    pub fn mutations(&self) -> std::collections::BTreeMap<String, usize> {
        let reads = ["Describe", "Get", "List", "GET "];
        let state = self.state.lock().unwrap();
        let counts = state.counts.iter().filter(|(a, _)| a.as_str() != "AssumeRole");
        counts.filter(|(a, _)| !reads.iter().any(|r| a.starts_with(r))).map(|(a, n)| (a.clone(), *n)).collect()
    }

    /// How many calls so far changed something in AWS ([`FaultProxy::mutations`], summed).
    pub fn mutation_count(&self) -> usize {
        self.mutations().values().sum()
    }

    /// How many requests contain `needle` in their head or body (URL-encoded or not).
    pub fn requests_mentioning(&self, needle: &str) -> usize {
        self.state.lock().unwrap().requests.iter().filter(|r| r.contains(needle)).count()
    }

    /// Injects `faults` from now on (seeded, so a run can be repeated).
    pub fn set_faults(&self, faults: Faults, seed: u64) {
        use rand::SeedableRng;
        let mut state = self.state.lock().unwrap();
        state.faults = faults;
        state.rng = Some(rand::rngs::StdRng::seed_from_u64(seed));
    }

    /// The faults injected so far.
    pub fn fault_counts(&self) -> FaultCounts {
        self.state.lock().unwrap().fault_counts.clone()
    }

    /// Every call so far, in the order they were answered.
    pub fn timings(&self) -> Vec<Timing> {
        self.state.lock().unwrap().timings.clone()
    }

    /// How many answers to `action` were rewritten.
    pub fn rewritten(&self, action: &str) -> usize {
        self.state.lock().unwrap().rewritten.get(action).copied().unwrap_or(0)
    }
}

/// One client connection: requests one after the other (keep-alive), each forwarded on a fresh
/// upstream connection that moto closes after answering.
async fn serve(mut client: TcpStream, upstream: String, state: Arc<Mutex<State>>) {
    loop {
        let Some((head, body)) = read_message(&mut client, true).await else { return };
        let action = action_of(&head, &body);
        let start = std::time::Instant::now();
        let (fault, latency) = {
            let mut state = state.lock().unwrap();
            // REST APIs (API Gateway) name no action: counted as `METHOD /path`.
            let counted = if action == "unknown" { request_line(&head) } else { action.clone() };
            *state.counts.entry(counted).or_default() += 1;
            let text = String::from_utf8_lossy(&head).into_owned() + &String::from_utf8_lossy(&body);
            state.requests.push(text);
            state.fault_counts.requests += 1;
            let fault = choose_fault(&mut state, &service_of(&String::from_utf8_lossy(&head)));
            (fault, state.faults.latency)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let refused = {
            let state = state.lock().unwrap();
            let text = String::from_utf8_lossy(&body);
            state
                .refusals
                .iter()
                .find(|r| r.action == action && text.contains(&r.needle))
                .map(|r| error_response(&head, 400, &r.code, &r.message))
        };
        if let Some(answer) = refused {
            if client.write_all(&answer).await.is_err() {
                return;
            }
            continue;
        }
        if let Some((code, answer)) = fault.and_then(|f| error_answer(f, &head)) {
            if fault == Some(Fault::Throttle) {
                *state.lock().unwrap().fault_counts.throttle_codes.entry(code.to_string()).or_default() += 1;
            }
            if client.write_all(&answer).await.is_err() {
                return;
            }
            continue;
        }
        let token = client_token(&body).map(|t| (action.clone(), t));
        let replay = token.as_ref().and_then(|t| state.lock().unwrap().idempotent.get(t).cloned());
        if let Some(answer) = replay {
            if client.write_all(&answer).await.is_err() {
                return;
            }
            continue;
        }
        let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
        let mut request = rewrite_header(&head, "connection", Some("close"));
        request.extend_from_slice(&body);
        if server.write_all(&request).await.is_err() {
            return;
        }
        let Some((head, mut body)) = read_message(&mut server, false).await else { return };
        if let Some(token) = token.filter(|_| head.starts_with(b"HTTP/1.1 2")) {
            state.lock().unwrap().idempotent.insert(token, answer_of(&head, &body));
        }
        if fault == Some(Fault::DropAfter) {
            // The request took effect; its answer is lost with the connection.
            return;
        }
        {
            let mut state = state.lock().unwrap();
            let latency = start.elapsed();
            let timed = if action == "unknown" { request_line(&request) } else { action.clone() };
            body = state.waits.answer(&timed, start, body);
            state.timings.push(Timing { action: timed, start, latency });
            let text = String::from_utf8_lossy(&body).to_string();
            let found = state.rewrites.iter_mut().find(|r| r.action == action && r.times > 0 && text.contains(&r.from));
            if let Some(rewrite) = found {
                rewrite.times -= 1;
                body = text.replace(&rewrite.from, &rewrite.to).into_bytes();
                *state.rewritten.entry(action.clone()).or_default() += 1;
            }
        }
        if client.write_all(&answer_of(&head, &body)).await.is_err() {
            return;
        }
    }
}

/// A whole answer to the client: moto's head, made to keep the connection, and the body.
fn answer_of(head: &[u8], body: &[u8]) -> Vec<u8> {
    let head = rewrite_header(head, "transfer-encoding", None);
    let head = rewrite_header(&head, "content-length", Some(&body.len().to_string()));
    let mut answer = rewrite_header(&head, "connection", Some("keep-alive"));
    answer.extend_from_slice(body);
    answer
}

/// Reads one HTTP/1.1 message: its head (up to and including the blank line) and its body, with a
/// chunked body decoded. A response without a length is read to the end of the connection.
async fn read_message<S: AsyncRead + Unpin>(stream: &mut S, request: bool) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = buf[..end].to_vec();
    let mut body = buf[end..].to_vec();
    let text = String::from_utf8_lossy(&head).to_lowercase();
    let header =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string()));
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        stream.read_to_end(&mut body).await.ok()?;
        body = dechunk(&body);
    } else if !request {
        stream.read_to_end(&mut body).await.ok()?;
    }
    Some((head, body))
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = raw.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&raw[..i]).split(';').next().unwrap_or("0").trim(), 16)
                .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = i + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

/// The head with header `name` removed, then set to `value` if given; ends with the blank line.
fn rewrite_header(head: &[u8], name: &str, value: Option<&str>) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut lines: Vec<String> = text
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .filter(|l| !l.to_lowercase().starts_with(&format!("{name}:")))
        .map(str::to_string)
        .collect();
    if let Some(value) = value {
        lines.push(format!("{name}: {value}"));
    }
    format!("{}\r\n\r\n", lines.join("\r\n")).into_bytes()
}

/// The `ClientToken` of a query-protocol request (EC2), if it carries one.
fn client_token(body: &[u8]) -> Option<String> {
    let body = String::from_utf8_lossy(body);
    body.split('&').find_map(|kv| kv.strip_prefix("ClientToken=")).filter(|t| !t.is_empty()).map(str::to_string)
}

/// `METHOD /path` of a request, for the REST APIs (API Gateway) that name no action.
fn request_line(head: &[u8]) -> String {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    format!("{method} {}", path.split('?').next().unwrap_or_default())
}

/// The AWS action of a request: `X-Amz-Target` (JSON protocols) or `Action=` (query protocols).
fn action_of(head: &[u8], body: &[u8]) -> String {
    let head = String::from_utf8_lossy(head);
    if let Some(target) =
        head.lines().find_map(|l| l.to_lowercase().starts_with("x-amz-target:").then(|| l[13..].trim().to_string()))
    {
        return target.rsplit('.').next().unwrap_or_default().to_string();
    }
    let body = String::from_utf8_lossy(body);
    body.split('&').find_map(|kv| kv.strip_prefix("Action=")).unwrap_or("unknown").to_string()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Throttle,
    ServerError,
    Unavailable,
    DropAfter,
}

/// Draws the fault for one request, counting it.
fn choose_fault(state: &mut State, service: &str) -> Option<Fault> {
    use rand::Rng;
    let faults = state.faults;
    let rng = state.rng.as_mut()?;
    let mut x: f64 = rng.random();
    if faults.throttle > 0.0 && state.throttled_services.insert(service.to_string()) {
        x = 0.0;
    }
    let mut edge = 0.0;
    for (fault, p) in [
        (Fault::Throttle, faults.throttle),
        (Fault::ServerError, faults.server_error),
        (Fault::Unavailable, faults.unavailable),
        (Fault::DropAfter, faults.drop_after),
    ] {
        edge += p;
        if x < edge {
            let counts = &mut state.fault_counts;
            match fault {
                Fault::Throttle => counts.throttled += 1,
                Fault::ServerError => counts.server_errors += 1,
                Fault::Unavailable => counts.unavailable += 1,
                Fault::DropAfter => counts.dropped += 1,
            }
            return Some(fault);
        }
    }
    None
}

/// The signing service of a request (`ec2`, `rds`, `kms`, ...), from its credential scope.
fn service_of(head: &str) -> String {
    head.split("Credential=").nth(1).and_then(|c| c.split('/').nth(3)).unwrap_or_default().to_string()
}

/// The error code and the whole HTTP answer for `fault` in the protocol of the request's service;
/// `None` for a drop.
fn error_answer(fault: Fault, head: &[u8]) -> Option<(&'static str, Vec<u8>)> {
    let head = String::from_utf8_lossy(head);
    let json = head.lines().any(|l| l.to_lowercase().starts_with("x-amz-target:"));
    let service = service_of(&head);
    let (status, code, message) = match fault {
        Fault::DropAfter => return None,
        Fault::Throttle => match service.as_str() {
            "ec2" => (503, "RequestLimitExceeded", "Request limit exceeded."),
            "apigateway" => (429, "TooManyRequestsException", "Too Many Requests"),
            _ if json => (400, "ThrottlingException", "Rate exceeded"),
            _ => (400, "Throttling", "Rate exceeded"),
        },
        Fault::ServerError => {
            (500, if json { "InternalFailure" } else { "InternalError" }, "We encountered an internal error.")
        }
        Fault::Unavailable => (503, "ServiceUnavailable", "Service is unavailable. Try again later."),
    };
    Some((code, error_response(head.as_bytes(), status, code, message)))
}

/// A whole HTTP error answer with `status`, `code` and `message`, in the protocol of the request's
/// service (EC2's XML, the query protocols' XML, or JSON).
fn error_response(head: &[u8], status: u16, code: &str, message: &str) -> Vec<u8> {
    let head = String::from_utf8_lossy(head);
    let json = head.lines().any(|l| l.to_lowercase().starts_with("x-amz-target:"));
    let service = service_of(&head);
    let (content_type, body) = if service == "ec2" {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
        );
        ("text/xml", body)
    } else if json || service == "apigateway" {
        ("application/x-amz-json-1.1", format!("{{\"__type\":\"{code}\",\"message\":\"{message}\"}}"))
    } else {
        let body = format!(
            "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
        );
        ("text/xml", body)
    };
    let reason = match status {
        400 => "Bad Request",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\nx-amzn-errortype: {code}\r\ncontent-length: {}\r\nconnection: keep-alive\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body.as_bytes());
    answer
}
