//! A real S3 server (s3s-fs) on a loopback port, with fault injection, for
//! headroom's tests. It runs as its own process so that a test measuring
//! headroom's memory measures headroom, not the server.
//!
//! ```text
//! s3_test_server --root DIR [--every N --kinds 500,503,reset,stall:MS]
//!                [--uploads-always-fail] [--lose-completions N]
//! ```
//!
//! Prints its endpoint (`http://127.0.0.1:PORT`) on the first line of
//! standard output, keeps the number of faults injected in
//! `DIR/.faults-injected`, and exits when standard input closes (so it
//! never outlives the test that started it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;

/// Credentials the server accepts.
const ACCESS_KEY: &str = "headroom-test-key";
const SECRET_KEY: &str = "headroom-test-secret";

#[derive(Clone, Copy, Debug)]
enum Fault {
    Status500,
    Status503,
    Reset,
    Stall(Duration),
}

#[derive(Debug, Default)]
struct Faults {
    /// Every `every`-th request gets the next fault of `kinds`. 0 = never.
    every: u64,
    kinds: Vec<Fault>,
    /// Fail every PUT of an object or a part with a 500.
    uploads_always_fail: bool,
    /// Carry out this many CompleteMultipartUpload requests, then drop the
    /// connection instead of answering.
    lose_completions: u64,
}

struct State {
    service: s3s::service::S3Service,
    faults: Faults,
    root: PathBuf,
    requests: AtomicU64,
    completions: AtomicU64,
    injected: AtomicU64,
}

impl State {
    fn injected(&self) {
        let n = self.injected.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = std::fs::write(self.root.join(".faults-injected"), n.to_string());
    }
}

fn parse_args() -> Result<(PathBuf, Faults), String> {
    let mut root = None;
    let mut faults = Faults::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--root" => root = Some(PathBuf::from(value()?)),
            "--every" => faults.every = value()?.parse().map_err(|e| format!("--every: {e}"))?,
            "--kinds" => {
                for k in value()?.split(',') {
                    faults.kinds.push(match k {
                        "500" => Fault::Status500,
                        "503" => Fault::Status503,
                        "reset" => Fault::Reset,
                        s if s.starts_with("stall:") => Fault::Stall(Duration::from_millis(
                            s[6..].parse().map_err(|e| format!("{s}: {e}"))?,
                        )),
                        other => return Err(format!("unknown fault {other:?}")),
                    });
                }
            }
            "--uploads-always-fail" => faults.uploads_always_fail = true,
            "--lose-completions" => {
                faults.lose_completions = value()?
                    .parse()
                    .map_err(|e| format!("--lose-completions: {e}"))?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((root.ok_or("--root DIR is required")?, faults))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (root, faults) = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("s3_test_server: {e}");
            std::process::exit(2);
        }
    };
    let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs root");
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let state = Arc::new(State {
        service: builder.build(),
        faults,
        root,
        requests: AtomicU64::new(0),
        completions: AtomicU64::new(0),
        injected: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().unwrap();
    println!("http://{addr}");

    let serve = async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let handler = service_fn(move |req| handle(state.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), handler)
                    .await;
            });
        }
    };
    let stdin_closed = async {
        let mut sink = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        () = serve => {}
        () = stdin_closed => {}
    }
}

type Response = http::Response<s3s::Body>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn error_response(status: u16, code: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
    );
    http::Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(s3s::Body::from(body))
        .unwrap()
}

fn is_data_upload(req: &http::Request<Incoming>) -> bool {
    let q = req.uri().query().unwrap_or("");
    req.method() == http::Method::PUT
        && !req.headers().contains_key("x-amz-copy-source")
        && (q.is_empty() || q.contains("partNumber="))
}

fn is_completion(req: &http::Request<Incoming>) -> bool {
    req.method() == http::Method::POST && req.uri().query().unwrap_or("").contains("uploadId=")
}

async fn handle(state: Arc<State>, req: http::Request<Incoming>) -> Result<Response, BoxError> {
    let faults = &state.faults;
    let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if is_completion(&req)
        && state.completions.fetch_add(1, Ordering::SeqCst) < faults.lose_completions
    {
        state.injected();
        let done = hyper::service::Service::call(&state.service, req).await;
        drop(done);
        return Err(BoxError::from("injected: completed, answer lost"));
    }
    if faults.uploads_always_fail && is_data_upload(&req) {
        state.injected();
        return Ok(error_response(500, "InternalError"));
    }
    if faults.every > 0 && n.is_multiple_of(faults.every) && !faults.kinds.is_empty() {
        state.injected();
        let kind = faults.kinds[((n / faults.every) as usize) % faults.kinds.len()];
        match kind {
            Fault::Status500 => return Ok(error_response(500, "InternalError")),
            Fault::Status503 => return Ok(error_response(503, "SlowDown")),
            Fault::Reset => return Err(BoxError::from("injected connection reset")),
            Fault::Stall(d) => tokio::time::sleep(d).await,
        }
    }
    hyper::service::Service::call(&state.service, req)
        .await
        .map_err(|e| BoxError::from(format!("{e:?}")))
}
