//! A fault-injecting HTTP proxy between the AWS SDK and moto. It records every call (action
//! and body) and how long moto took to answer it (a call whose client gave up included), and
//! can answer chosen calls with an AWS error (e.g. `InsufficientInstanceCapacity`,
//! `RequestLimitExceeded`), an HTTP 500, or a delay before forwarding.
//!
//! moto ignores `ClientToken`; with `honour_client_tokens` the proxy does what EC2 does: a
//! RunInstances, CreateFleet, RequestSpotFleet or CreateLaunchTemplate call repeating a token
//! gets the first call's answer (nothing new is made), and one repeating a token with other
//! parameters gets `IdempotentParameterMismatch`. An HTTP 5xx from moto is repeated for
//! `SERVER_ERROR_KEPT` (the SDK's own retries see it, so the operator meets an unknown
//! outcome) and then forgotten: the operator's later replay is forwarded, as EC2 would either
//! answer it with what the first call made (the operator adopts that by its tags before
//! replaying) or make it now.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this AWS error in EC2's XML shape.
    Error { status: u16, code: String, message: String },
    /// Wait, then forward.
    Delay(Duration),
    /// Answer 200 with this body instead of forwarding (e.g. a listing that lags behind).
    Reply(String),
    /// Forward (so the call takes effect), then answer HTTP 500 as if the answer was lost.
    Lost,
}

impl Fault {
    pub fn capacity() -> Self {
        Self::Error {
            status: 400,
            code: "InsufficientInstanceCapacity".into(),
            message: "We currently do not have sufficient capacity (injected).".into(),
        }
    }
    pub fn throttle() -> Self {
        Self::Error {
            status: 503,
            code: "RequestLimitExceeded".into(),
            message: "Request limit exceeded (injected).".into(),
        }
    }
    /// A DescribeInstances answer listing nothing: EC2's eventually consistent listing lagging
    /// behind a launch.
    pub fn empty_listing() -> Self {
        Self::Reply(
            r#"<?xml version="1.0" encoding="UTF-8"?><DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>lag</requestId><reservationSet/></DescribeInstancesResponse>"#.into(),
        )
    }
    pub fn server_error() -> Self {
        Self::Error {
            status: 500,
            code: "InternalError".into(),
            message: "An internal error has occurred (injected).".into(),
        }
    }
}

struct Rule {
    action: String,
    body_contains: Option<String>,
    remaining: usize,
    fault: Fault,
}

/// The first call made with a client token: its body and, once moto answered, the answer and
/// when it came.
type TokenEntry = (String, Arc<tokio::sync::OnceCell<(u16, Bytes, std::time::Instant)>>);

/// How long a 5xx answer under a client token is repeated before the token is forgotten.
const SERVER_ERROR_KEPT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    calls: Vec<(String, String)>,
    /// When each call forwarded to moto was sent and answered: the emulator's share of a run.
    upstream: Vec<(std::time::Instant, std::time::Instant, String)>,
    idempotent: bool,
    tokens: std::collections::HashMap<String, TokenEntry>,
}

#[derive(Clone)]
pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

/// The action of an AWS request: `Action=` in a query-protocol body, or the JSON target header.
fn action_of(headers: &http::HeaderMap, body: &str) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return target.rsplit('.').next().unwrap_or(target).to_string();
    }
    body.split('&').find_map(|kv| kv.strip_prefix("Action=")).unwrap_or("").to_string()
}

/// An AWS error in the shape of the service called: EC2's, or the query protocol's
/// `ErrorResponse` of the other services (Auto Scaling, IAM) — the SDK reads the code from it.
fn error_body(request: &str, code: &str, message: &str) -> String {
    if request.contains("Version=2016-11-15") || request.is_empty() {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
        )
    } else {
        format!(
            "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
        )
    }
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let (upstream, shared) = (upstream.to_string(), state.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (client, upstream, state) = (client.clone(), upstream.clone(), shared.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (client, upstream, state) = (client.clone(), upstream.clone(), state.clone());
                        // Its own task: a call whose client gave up (an attempt timeout) still
                        // runs to moto's answer, and its time is recorded.
                        let call = tokio::spawn(async move { handle(req, &client, &upstream, &state).await });
                        async move { Ok::<_, hyper::Error>(call.await.expect("the proxy's handler panicked")) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { endpoint, state }
    }

    /// Answers the next `times` calls of `action` whose body contains `body_contains` with `fault`.
    pub fn inject(&self, action: &str, body_contains: Option<&str>, times: usize, fault: Fault) {
        self.state.lock().unwrap().rules.push(Rule {
            action: action.into(),
            body_contains: body_contains.map(str::to_string),
            remaining: times,
            fault,
        });
    }

    /// Drops every fault still waiting to be injected into calls of `action`.
    pub fn clear(&self, action: &str) {
        self.state.lock().unwrap().rules.retain(|r| r.action != action);
    }

    /// From now on, the create calls honour `ClientToken` as EC2 does.
    pub fn honour_client_tokens(&self) {
        self.state.lock().unwrap().idempotent = true;
    }

    /// Every call seen so far, by action.
    pub fn all_calls(&self) -> std::collections::BTreeMap<String, usize> {
        let mut by_action = std::collections::BTreeMap::new();
        for (action, _) in &self.state.lock().unwrap().calls {
            *by_action.entry(action.clone()).or_default() += 1;
        }
        by_action
    }

    /// Calls made since `before` (an earlier `all_calls`), by action; none left out.
    pub fn spent_since(
        &self,
        before: &std::collections::BTreeMap<String, usize>,
    ) -> std::collections::BTreeMap<String, usize> {
        self.all_calls()
            .into_iter()
            .map(|(action, n)| {
                let spent = n - before.get(&action).copied().unwrap_or(0);
                (action, spent)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The time moto spent answering the calls forwarded since `since`: summed by action, and
    /// the span during which at least one was in flight.
    pub fn upstream_time_since(
        &self,
        since: std::time::Instant,
    ) -> (std::collections::BTreeMap<String, Duration>, Duration) {
        let state = self.state.lock().unwrap();
        let mut spans: Vec<_> = state.upstream.iter().filter(|(at, ..)| *at >= since).collect();
        spans.sort_by_key(|(from, ..)| *from);
        let mut by_action = std::collections::BTreeMap::<String, Duration>::new();
        let mut busy = Duration::ZERO;
        let mut open: Option<(std::time::Instant, std::time::Instant)> = None;
        for &&(from, to, ref action) in &spans {
            *by_action.entry(action.clone()).or_default() += to - from;
            open = match open {
                Some((a, b)) if from <= b => Some((a, b.max(to))),
                Some((a, b)) => {
                    busy += b - a;
                    Some((from, to))
                }
                None => Some((from, to)),
            };
        }
        busy += open.map_or(Duration::ZERO, |(a, b)| b - a);
        (by_action, busy)
    }

    /// Bodies of the calls of `action` seen so far (faulted ones included).
    pub fn calls(&self, action: &str) -> Vec<String> {
        self.state.lock().unwrap().calls.iter().filter(|(a, _)| a == action).map(|(_, b)| b.clone()).collect()
    }
}

async fn handle(
    req: Request<Incoming>,
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    upstream: &str,
    state: &Mutex<State>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).to_string();
    let action = action_of(&parts.headers, &text);
    let fault = {
        let mut state = state.lock().unwrap();
        state.calls.push((action.clone(), text.clone()));
        state
            .rules
            .iter_mut()
            .find(|r| {
                r.remaining > 0
                    && r.action == action
                    && r.body_contains.as_ref().is_none_or(|s| text.contains(s.as_str()))
            })
            .map(|r| {
                r.remaining -= 1;
                r.fault.clone()
            })
    };
    match fault {
        // The JSON protocol (SQS): the error's type names the code.
        Some(Fault::Error { status, code, message }) if parts.headers.contains_key("x-amz-target") => {
            let body = serde_json::json!({"__type": format!("com.amazonaws.sqs#{code}"), "message": message});
            return Response::builder()
                .status(status)
                .header("content-type", "application/x-amz-json-1.0")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
        }
        Some(Fault::Error { status, code, message }) => {
            return Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(error_body(&text, &code, &message))))
                .unwrap();
        }
        Some(Fault::Reply(body)) => return Response::builder().status(200).body(Full::new(Bytes::from(body))).unwrap(),
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Lost) => {
            let lost = error_body(&text, "InternalError", "the answer was lost (injected)");
            let _ = pass_on(parts, bytes, text, client, upstream, state).await;
            return Response::builder().status(500).body(Full::new(Bytes::from(lost))).unwrap();
        }
        None => {}
    }
    pass_on(parts, bytes, text, client, upstream, state).await
}

/// Forwards to moto, honouring client tokens when asked to.
async fn pass_on(
    parts: http::request::Parts,
    bytes: Bytes,
    text: String,
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    upstream: &str,
    state: &Mutex<State>,
) -> Response<Full<Bytes>> {
    let action = action_of(&parts.headers, &text);
    // The create calls EC2 makes idempotent (the token is `ClientToken`, or
    // `SpotFleetRequestConfig.ClientToken`); tokens are kept per action.
    let token = matches!(action.as_str(), "RunInstances" | "CreateFleet" | "RequestSpotFleet" | "CreateLaunchTemplate")
        .then(|| {
            text.split('&').find_map(|kv| {
                kv.split_once('=').filter(|(k, _)| k.ends_with("ClientToken")).map(|(_, v)| v.to_string())
            })
        })
        .flatten()
        .map(|token| format!("{action}/{token}"))
        .filter(|_| state.lock().unwrap().idempotent);
    let Some(token) = token else { return forward(parts, bytes, client, upstream, state).await };
    let (first_body, answer) = {
        let mut state = state.lock().unwrap();
        let failed_a_while_ago = state
            .tokens
            .get(&token)
            .and_then(|(_, answer)| answer.get())
            .is_some_and(|(status, _, at)| *status >= 500 && at.elapsed() > SERVER_ERROR_KEPT);
        if failed_a_while_ago {
            state.tokens.remove(&token);
        }
        state.tokens.entry(token).or_insert_with(|| (text.clone(), Default::default())).clone()
    };
    if first_body != text {
        let message = "The client token you have provided is associated with a resource that is already deleted or the parameters differ (proxy).";
        return Response::builder()
            .status(400)
            .body(Full::new(Bytes::from(error_body(&text, "IdempotentParameterMismatch", message))))
            .unwrap();
    }
    let (status, body, _) = answer
        .get_or_init(|| async {
            let response = forward(parts, bytes, client, upstream, state).await;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            (status, body, std::time::Instant::now())
        })
        .await
        .clone();
    Response::builder().status(status).body(Full::new(body)).unwrap()
}

async fn forward(
    parts: http::request::Parts,
    bytes: Bytes,
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    upstream: &str,
    state: &Mutex<State>,
) -> Response<Full<Bytes>> {
    let action = action_of(&parts.headers, &String::from_utf8_lossy(&bytes));
    let sent = std::time::Instant::now();
    let response = send(parts, bytes, client, upstream).await;
    state.lock().unwrap().upstream.push((sent, std::time::Instant::now(), action.clone()));
    if response.status().is_server_error() {
        // What moto (or the way to it) answered: the SDK shows such an answer as "Unknown".
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        eprintln!("fault proxy: {action} answered {}: {}", parts.status, text.chars().take(600).collect::<String>());
        return Response::from_parts(parts, Full::new(bytes));
    }
    response
}

async fn send(
    parts: http::request::Parts,
    bytes: Bytes,
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    upstream: &str,
) -> Response<Full<Bytes>> {
    let uri = format!("{upstream}{}", parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    let mut forward = Request::builder().method(parts.method).uri(uri);
    for (name, value) in &parts.headers {
        if name != http::header::HOST {
            forward = forward.header(name, value);
        }
    }
    match client.request(forward.body(Full::new(bytes)).unwrap()).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Response::from_parts(parts, Full::new(bytes))
        }
        Err(e) => Response::builder().status(502).body(Full::new(Bytes::from(format!("proxy: {e}")))).unwrap(),
    }
}
