//! `headroom proxy`: an S3 endpoint that encrypts objects on their way to
//! an upstream S3-compatible bucket and decrypts them on the way back.
//!
//! * [`keys`]: the key file (client credentials, key-encryption keys).
//! * [`envelope`]: the encrypted format (data keys wrapped with AES-KWP,
//!   AES-256-GCM frames bound to object, part, index and end).
//! * [`service`]: the S3 operations, each admitted by the governor.
//! * [`upstream`]: signed, streaming requests to the upstream.
//! * [`metrics`]: what `/metrics` shows.
//!
//! `GET /healthz` and `GET /metrics` without a signature are the proxy's
//! own; a signed request to those paths is S3's (a bucket may be called
//! `metrics`).

pub mod envelope;
pub mod keys;
pub mod metrics;
pub mod rewrap;
pub mod service;
pub mod uploads;
pub mod upstream;
mod xml;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::response::IntoResponse;
use headroom_governor::Governor;

use crate::store::bucket::S3Config;

/// How the proxy runs: what `headroom proxy`'s flags turn into.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// The upstream's endpoint and settings (credentials from the AWS
    /// environment, as `copy` takes them).
    pub upstream: S3Config,
    /// The key file.
    pub keys: std::path::PathBuf,
    /// Connections open at once at most; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            upstream: S3Config::default(),
            keys: "headroom-keys.json".into(),
            max_connections: 512,
        }
    }
}

struct State {
    s3: s3s::service::S3Service,
    stats: Arc<metrics::Stats>,
    gov: Governor,
    probe: headroom_governor::MemoryProbe,
    /// Requests by operation and status: a few dozen series at most.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Requests so far, for request ids.
    served: std::sync::atomic::AtomicU64,
    /// This process's start (seconds), the first half of every request id.
    started: u64,
}

/// The operation a request is, for metrics, from its method and shape.
fn operation(method: &http::Method, path: &str, query: &str) -> &'static str {
    let has_key = path
        .trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(_, k)| !k.is_empty());
    let q = |name: &str| {
        query
            .split('&')
            .any(|p| p == name || p.starts_with(&format!("{name}=")))
    };
    match (method.as_str(), path == "/", has_key) {
        ("GET", true, _) => "ListBuckets",
        ("GET", false, false) => "ListObjects",
        ("PUT", false, false) => "CreateBucket",
        ("HEAD", false, false) => "HeadBucket",
        ("DELETE", false, false) => "DeleteBucket",
        ("POST", false, false) if q("delete") => "DeleteObjects",
        ("GET", _, true) => "GetObject",
        ("HEAD", _, true) => "HeadObject",
        ("PUT", _, true) if q("partNumber") => "UploadPart",
        ("PUT", _, true) => "PutObject",
        ("DELETE", _, true) => "DeleteObject",
        ("POST", _, true) => "MultipartUpload",
        _ => "Other",
    }
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let unsigned = !req.headers().contains_key(http::header::AUTHORIZATION)
        && req.uri().query().is_none()
        && req.method() == http::Method::GET;
    match req.uri().path() {
        "/healthz" if unsigned => return (http::StatusCode::OK, "ok\n").into_response(),
        "/metrics" if unsigned => return render_metrics(&state).into_response(),
        _ => {}
    }
    let op = operation(
        req.method(),
        req.uri().path(),
        req.uri().query().unwrap_or(""),
    );
    // Every answer names its request (x-amz-request-id, as S3's do), and
    // the log line for it carries the same id.
    let n = state
        .served
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let request_id = format!("{:08X}{n:08X}", state.started as u32);
    let started = std::time::Instant::now();
    let req = req.map(s3s::Body::http_body_unsync);
    let mut response = match state.s3.call(req).await {
        Ok(r) => r.map(axum::body::Body::new),
        Err(e) => {
            tracing::error!(request_id, "proxy: {e:?}");
            (http::StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    };
    if let Ok(v) = http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amz-request-id", v);
    }
    let status = response.status().as_u16();
    let took_ms = started.elapsed().as_millis() as u64;
    // Refused credentials are worth an operator's eye; the rest is the
    // access log, at debug.
    if status == 403 {
        tracing::warn!(
            request_id,
            operation = op,
            status,
            took_ms,
            "request refused"
        );
    } else {
        tracing::debug!(request_id, operation = op, status, took_ms, "request");
    }
    *state
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((op, status))
        .or_default() += 1;
    response
}

fn render_metrics(state: &State) -> ([(http::HeaderName, &'static str); 1], String) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    let g = state.gov.stats();
    let s = &state.stats;
    let _ = writeln!(out, "# TYPE headroom_proxy_requests_total counter");
    for ((op, status), n) in state
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "headroom_proxy_requests_total{{operation=\"{op}\",status=\"{status}\"}} {n}"
        );
    }
    for (name, kind, value) in [
        (
            "headroom_proxy_bytes_in_total",
            "counter",
            s.bytes_in.load(Relaxed),
        ),
        (
            "headroom_proxy_bytes_out_total",
            "counter",
            s.bytes_out.load(Relaxed),
        ),
        (
            "headroom_proxy_slow_downs_total",
            "counter",
            s.slow_downs.load(Relaxed),
        ),
        (
            "headroom_proxy_rejected_bytes_total",
            "counter",
            s.rejected_bytes.load(Relaxed),
        ),
        (
            "headroom_proxy_tampered_frames_total",
            "counter",
            s.tampered_frames.load(Relaxed),
        ),
        ("headroom_memory_budget_bytes", "gauge", g.budget),
        ("headroom_memory_reserved_bytes", "gauge", g.reserved),
        (
            "headroom_memory_peak_reserved_bytes",
            "gauge",
            g.peak_reserved,
        ),
        (
            "headroom_rss_bytes",
            "gauge",
            state.probe.sample().rss.unwrap_or(0),
        ),
    ] {
        let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
    }
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
}

/// Runs the proxy until SIGINT or SIGTERM, within `memory` (`None`: from
/// the container's limit).
pub async fn run(
    options: &ProxyOptions,
    memory: Option<headroom_governor::ByteSize>,
) -> anyhow::Result<()> {
    if options.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    let keys = Arc::new(keys::Keys::load(&options.keys)?);
    let plan = crate::memory::MemoryPlan::start(memory);
    // A budget that cannot hold one connection and its largest request is
    // refused here: below it a request would be admitted for less than it
    // holds (the governor clamps what exceeds the budget).
    let needed = service::footprint::LARGEST + crate::serve::api::CONNECTION_BYTES;
    if plan.governor.working_budget() < needed {
        use headroom_governor::ByteSize;
        anyhow::bail!(
            "the memory budget is too small for the proxy: one connection and its largest \
             request (a listing) hold {}, and the budget leaves {}. Give it --memory {} or more",
            ByteSize(needed),
            ByteSize(plan.governor.working_budget()),
            ByteSize(crate::memory::budget_for_reservable(needed))
        );
    }
    let upstream = upstream::Upstream::new(&options.upstream)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find an ephemeral port.
    println!("listening on http://{addr}");
    tracing::info!(
        "proxying http://{addr} to {} with {} client credentials, KEK {}, budget {}",
        options.upstream.endpoint().unwrap_or_else(|| "AWS".into()),
        keys.credentials.len(),
        keys.current_id(),
        headroom_governor::ByteSize(plan.governor.budget())
    );
    serve(
        listener,
        options.max_connections,
        upstream,
        keys,
        plan.governor.clone(),
        plan.probe.clone(),
        async {
            crate::cancel::signalled().await;
            tracing::info!("stopping");
        },
    )
    .await;
    Ok(())
}

/// Serves the proxy on `listener` within `gov` until `shutdown` resolves
/// (`run` is this with a key file, a memory plan and signals).
pub async fn serve(
    listener: tokio::net::TcpListener,
    max_connections: usize,
    upstream: upstream::Upstream,
    keys: Arc<keys::Keys>,
    gov: Governor,
    probe: headroom_governor::MemoryProbe,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // Connections are charged while open; as many as leave the largest
    // request its bytes beside their charges may be open at once, so that
    // idle connections can never hold the budget every request needs
    // (more wait to be accepted, holding nothing).
    let room = gov
        .working_budget()
        .saturating_sub(service::footprint::LARGEST)
        / crate::serve::api::CONNECTION_BYTES;
    let max_connections = max_connections.min((room as usize).max(1));
    let proxy = service::Proxy::new(upstream, keys.clone(), gov.clone());
    let stats = proxy.stats.clone();
    let mut auth = s3s::auth::SimpleAuth::new();
    for c in &keys.credentials {
        auth.register(c.access_key.clone(), c.secret_key.clone().into());
    }
    let mut builder = s3s::service::S3ServiceBuilder::new(proxy);
    builder.set_auth(auth);
    let state = Arc::new(State {
        s3: builder.build(),
        stats,
        gov: gov.clone(),
        probe,
        requests: Mutex::default(),
        served: Default::default(),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    let app = axum::Router::new().fallback(handle).with_state(state);
    crate::serve::api::serve_charged(listener, app, max_connections, Some(gov), shutdown).await;
}
