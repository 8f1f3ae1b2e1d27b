//! The operator's one HTTP listener (`--http-addr`): `/healthz` (the process serves), `/readyz`
//! (the controllers' caches are synced), `/metrics` (Prometheus text).

use crate::api::MachineRequest;
use crate::metrics::Metrics;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the listener answers from.
#[derive(Clone)]
pub struct State {
    pub metrics: Arc<Metrics>,
    /// Set once the caches are synced.
    pub ready: Arc<AtomicBool>,
    /// The request cache the machine gauges are read from (none before the controllers start).
    pub requests: Option<Store<DeserializeGuard<MachineRequest>>>,
    /// What works only in part (`Registry::degraded`): `/readyz` answers 503 naming it.
    pub degraded: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
}

/// Serves until the process ends; each connection on its own task.
pub async fn serve(listener: tokio::net::TcpListener, state: State) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(req.uri().path(), &state)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn answer(path: &str, state: &State) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/healthz" => (200, "text/plain", "ok".to_string()),
        "/readyz" if state.ready.load(Ordering::SeqCst) => match (state.degraded)() {
            problems if problems.is_empty() => (200, "text/plain", "ready".to_string()),
            problems => (503, "text/plain", format!("degraded: {}", problems.join("; "))),
        },
        "/readyz" => (503, "text/plain", "caches not synced yet".to_string()),
        "/metrics" => {
            let cached = state.requests.as_ref().map(Store::state).unwrap_or_default();
            let requests = cached.iter().filter_map(|r| r.0.as_ref().ok());
            (200, "application/openmetrics-text; version=1.0.0; charset=utf-8", state.metrics.render(requests))
        }
        _ => (404, "text/plain", "not found".to_string()),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"internal error"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
        let request = format!("GET {path} HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("write: {e}"));
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap_or_else(|e| panic!("read: {e}"));
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, text)
    }

    #[tokio::test]
    async fn health_readiness_and_metrics_on_one_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let problems = Arc::new(std::sync::Mutex::new(vec![]));
        let degraded = problems.clone();
        let state = State {
            metrics: Arc::default(),
            ready: Arc::default(),
            requests: None,
            degraded: Arc::new(move || degraded.lock().unwrap().clone()),
        };
        state.metrics.reconciled("request", std::time::Duration::from_millis(5), None);
        tokio::spawn(serve(listener, state.clone()));
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503, "not ready before the caches sync");
        state.ready.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        problems.lock().unwrap().push("provider `aws`: interruption queue q: AccessDenied".to_string());
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.ends_with("degraded: provider `aws`: interruption queue q: AccessDenied"), "{body}");
        problems.lock().unwrap().clear();
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains(r#"orb_reconciles_total{controller="request",result="ok"} 1"#), "{body}");
        assert_eq!(get(addr, "/nothing").await.0, 404);
    }
}
