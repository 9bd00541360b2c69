//! Shared test support: a real S3 server (s3s-fs) on a loopback port, with
//! optional fault injection, and helpers to run the `headroom` binary and
//! compare trees.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use md5::{Digest, Md5};

pub const ACCESS_KEY: &str = "headroom-test-key";
pub const SECRET_KEY: &str = "headroom-test-secret";

/// Faults the server injects into a share of requests.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Every `every`-th request (counting all requests) gets the next
    /// fault of `kinds`, in turn. 0 = never.
    pub every: u64,
    pub kinds: Vec<Fault>,
    /// Fail every data upload (PUT of an object or a part) with a 500, but
    /// let uploads be created and aborted: a destination that is broken for
    /// good.
    pub uploads_always_fail: bool,
    /// Carry out this many CompleteMultipartUpload requests, then drop the
    /// connection instead of answering: the client cannot know it worked.
    pub lose_completions: u64,
}

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// 500 InternalError.
    Status500,
    /// 503 SlowDown.
    Status503,
    /// Drop the connection without a response.
    Reset,
    /// Answer only after this long.
    Stall(Duration),
}

/// A running s3s-fs server; stops when dropped.
pub struct S3Server {
    pub endpoint: String,
    pub root: tempfile::TempDir,
    pub requests: Arc<AtomicU64>,
    pub faults_injected: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl S3Server {
    pub fn start(faults: Faults) -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // The server is not headroom: a test measuring headroom's heap
            // with the counting allocator must not see the server's.
            .on_thread_start(headroom_governor::alloc::exclude_current_thread)
            .enable_all()
            .build()
            .expect("server runtime");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs root");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let injected = Arc::new(AtomicU64::new(0));
        let faults = Arc::new((faults, AtomicU64::new(0)));
        let (req_count, inj_count) = (requests.clone(), injected.clone());
        runtime.spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let (service, faults, requests, injected) = (
                    service.clone(),
                    faults.clone(),
                    req_count.clone(),
                    inj_count.clone(),
                );
                tokio::spawn(async move {
                    let handler = service_fn(move |req: http::Request<Incoming>| {
                        let (service, faults, requests, injected) = (
                            service.clone(),
                            faults.clone(),
                            requests.clone(),
                            injected.clone(),
                        );
                        handle(service, faults, requests, injected, req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), handler)
                        .await;
                });
            }
        });
        S3Server {
            endpoint: format!("http://{addr}"),
            root,
            requests,
            faults_injected: injected,
            runtime: Some(runtime),
        }
    }

    /// Creates a bucket (a directory of the server's root).
    pub fn bucket(&self, name: &str) -> PathBuf {
        let p = self.root.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn incomplete_uploads(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.starts_with(".upload_id-")
                    || (n.contains(".upload-") && n.ends_with(".metadata.json"))
            })
            .collect()
    }

    /// Environment for a child process to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
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

async fn handle(
    service: s3s::service::S3Service,
    faults_and_lost: Arc<(Faults, AtomicU64)>,
    requests: Arc<AtomicU64>,
    injected: Arc<AtomicU64>,
    req: http::Request<Incoming>,
) -> Result<Response, BoxError> {
    let (faults, lost) = (&faults_and_lost.0, &faults_and_lost.1);
    let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
    if is_completion(&req) && lost.fetch_add(1, Ordering::SeqCst) < faults.lose_completions {
        injected.fetch_add(1, Ordering::SeqCst);
        let done = hyper::service::Service::call(&service, req).await;
        drop(done);
        return Err(BoxError::from(String::from(
            "injected: completed, answer lost",
        )));
    }
    if faults.uploads_always_fail && is_data_upload(&req) {
        injected.fetch_add(1, Ordering::SeqCst);
        return Ok(error_response(500, "InternalError"));
    }
    if faults.every > 0 && n.is_multiple_of(faults.every) && !faults.kinds.is_empty() {
        injected.fetch_add(1, Ordering::SeqCst);
        let kind = faults.kinds[((n / faults.every) as usize) % faults.kinds.len()];
        match kind {
            Fault::Status500 => return Ok(error_response(500, "InternalError")),
            Fault::Status503 => return Ok(error_response(503, "SlowDown")),
            Fault::Reset => return Err(BoxError::from(String::from("injected connection reset"))),
            Fault::Stall(d) => tokio::time::sleep(d).await,
        }
    }
    match hyper::service::Service::call(&service, req).await {
        Ok(r) => Ok(r),
        Err(e) => Err(BoxError::from(format!("{e:?}"))),
    }
}

/// Runs `headroom` with `args` and extra environment.
pub fn headroom(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom"));
    cmd.args(args)
        .env_remove("HEADROOM_MEMORY")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run headroom")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success, showing the child's output otherwise.
#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "headroom failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// Every regular file below `dir` (skipping hidden names, which are the
/// server's metadata), by relative path, with its size and MD5.
pub fn tree(dir: &Path) -> BTreeMap<String, (u64, String)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1) {
        let e = e.unwrap();
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel.split('/').any(|part| part.starts_with('.')) {
            continue;
        }
        let data = std::fs::read(e.path()).unwrap();
        let md5: String = Md5::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.insert(rel, (data.len() as u64, md5));
    }
    out
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `files` (relative path, size) below `dir`.
pub fn write_tree(dir: &Path, files: &[(&str, usize)]) {
    for (i, (name, size)) in files.iter().enumerate() {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes(*size, i as u64 + 1)).unwrap();
    }
}

/// The summary line of a text-format run.
pub fn summary(o: &Output) -> String {
    text(&o.stdout)
}
