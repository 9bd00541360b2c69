//! A real S3 server (s3s-fs) on a loopback port, with fault injection, for
//! headroom's tests. It runs as its own process so that a test measuring
//! headroom's memory measures headroom, not the server.
//!
//! ```text
//! s3_test_server --root DIR [--every N --kinds 500,503,reset,stall:MS]
//!                [--uploads-always-fail] [--lose-completions N]
//!                [--extra-key BUCKET/KEY]... [--gcs]
//! ```
//!
//! `--gcs` serves Google Cloud Storage's XML API instead, which is S3's
//! with `x-goog-` header names, to requests that carry no signature (what
//! object_store's GCS client sends with OAuth disabled): `x-goog-meta-*`
//! headers are renamed to `x-amz-meta-*` on the way in and back on the way
//! out, and a bearer token is not checked. The GCS emulator on PyPI (gcp-storage-emulator) serves the JSON
//! API; the XML API's listing, multipart uploads and custom metadata,
//! which object_store uses, it does not.
//!
//! `--extra-key b/p/dir/` lists a zero-byte object `p/dir/` in bucket `b`
//! in every ListObjectsV2 answer whose prefix it falls under: a folder
//! marker (what S3 consoles create for an empty folder), or a key s3s-fs
//! cannot hold as a file (`..`, control characters).
//!
//! ListObjectsV2 entries carry the object's ETag, as S3's do (s3s-fs
//! leaves it out): a multipart object's `"MD5-N"`, a single PUT's MD5.
//! ListParts entries carry each part's ETag (its MD5) likewise.
//!
//! `If-Match` on a GET is checked as S3 does (412 when the object's ETag
//! differs; s3s-fs itself ignores it), and so is
//! `x-amz-copy-source-if-match` on an UploadPartCopy (s3s-fs checks it on
//! a CopyObject only). A file at `DIR/.next/BUCKET/KEY`
//! replaces object KEY right after the first GET of it has been answered
//! (the answer streams the old content): a source that changes between
//! two ranged reads. One at `DIR/.next-after-head/BUCKET/KEY` replaces it
//! right after the first HEAD: a source that changes between the HEAD and
//! the CopyObject of a server-side copy.
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
    /// `bucket/key`s added to listings.
    extra_keys: Vec<String>,
    /// Speak GCS's XML dialect, unsigned.
    gcs: bool,
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
            "--extra-key" => faults.extra_keys.push(value()?),
            "--gcs" => faults.gcs = true,
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
    if !faults.gcs {
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    }
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
                let handler = service_fn(move |req| answer(state.clone(), req));
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

/// [`handle`], in GCS's dialect with `--gcs`.
async fn answer(state: Arc<State>, mut req: http::Request<Incoming>) -> Result<Response, BoxError> {
    if !state.faults.gcs {
        return handle(state, req).await;
    }
    // An OAuth bearer token (empty with OAuth disabled) is not checked.
    if req
        .headers()
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"Bearer"))
    {
        req.headers_mut().remove(http::header::AUTHORIZATION);
    }
    rename_headers(req.headers_mut(), "x-goog-meta-", "x-amz-meta-");
    let mut resp = handle(state, req).await?;
    rename_headers(resp.headers_mut(), "x-amz-meta-", "x-goog-meta-");
    Ok(resp)
}

/// Renames every header starting with `from` to start with `to`.
fn rename_headers(headers: &mut http::HeaderMap, from: &str, to: &str) {
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(from))
        .cloned()
        .collect();
    for name in names {
        let renamed = format!("{to}{}", &name.as_str()[from.len()..]);
        let Ok(renamed) = http::HeaderName::from_bytes(renamed.as_bytes()) else {
            continue;
        };
        let values: Vec<_> = headers.get_all(&name).iter().cloned().collect();
        headers.remove(&name);
        for value in values {
            headers.append(renamed.clone(), value);
        }
    }
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

/// The object file a path-style GET names, if it is one.
fn object_file(root: &std::path::Path, req: &http::Request<Incoming>) -> Option<PathBuf> {
    if req.method() != http::Method::GET || req.uri().query().is_some_and(|q| !q.is_empty()) {
        return None;
    }
    let path = percent_decode(req.uri().path().trim_start_matches('/'))?;
    let (bucket, key) = path.split_once('/')?;
    (!key.is_empty()).then(|| root.join(bucket).join(key))
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The bucket and prefix of a ListObjectsV2 request.
fn list_prefix(req: &http::Request<Incoming>) -> Option<(String, String)> {
    let q = req.uri().query()?;
    if req.method() != http::Method::GET || !q.contains("list-type=2") {
        return None;
    }
    let bucket = req.uri().path().trim_matches('/').to_string();
    let prefix = q
        .split('&')
        .find_map(|kv| kv.strip_prefix("prefix="))
        .and_then(percent_decode)
        .unwrap_or_default();
    Some((bucket, prefix))
}

/// Adds each entry's ETag and `markers` (`bucket/key/`) to a
/// ListObjectsV2 answer.
async fn add_to_listing(
    resp: Response,
    root: &std::path::Path,
    bucket: &str,
    markers: &[&String],
) -> Result<Response, BoxError> {
    let (parts, mut body) = resp.into_parts();
    let xml = body.store_all_limited(16 << 20).await?;
    let xml = String::from_utf8(xml.to_vec())?;
    let mut xml = with_etags(&xml, root, bucket);
    let mut extra = String::new();
    for m in markers {
        let key = xml_escape(m.strip_prefix(&format!("{bucket}/")).unwrap_or(m));
        extra.push_str(&format!(
            "<Contents><Key>{key}</Key><LastModified>2020-01-01T00:00:00.000Z</LastModified><ETag>\"d41d8cd98f00b204e9800998ecf8427e\"</ETag><Size>0</Size><StorageClass>STANDARD</StorageClass></Contents>"
        ));
    }
    // Listings are in key order; a marker sorts right before its contents,
    // so put it first (the test listings are small).
    let at = xml
        .find("<Contents>")
        .or_else(|| xml.find("</ListBucketResult>"))
        .ok_or("not a listing")?;
    xml.insert_str(at, &extra);
    let mut parts = parts;
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Ok(http::Response::from_parts(parts, s3s::Body::from(xml)))
}

/// The upload id of a ListParts request.
fn list_parts_upload(req: &http::Request<Incoming>) -> Option<String> {
    if req.method() != http::Method::GET {
        return None;
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("uploadId="))
        .and_then(percent_decode)
}

/// `xml` (a ListParts answer) with an `<ETag>` in every `<Part>`: the MD5
/// of the part's file.
fn with_part_etags(xml: &str, root: &std::path::Path, upload: &str) -> String {
    fill_etags(xml, "Part", "PartNumber", |n| {
        file_etag(&root.join(format!(".upload_id-{upload}.part-{n}")))
    })
}

/// `xml` with an `<ETag>` in every `<Contents>` that has none.
fn with_etags(xml: &str, root: &std::path::Path, bucket: &str) -> String {
    fill_etags(xml, "Contents", "Key", |k| {
        let key = quick_xml::escape::unescape(k).ok()?;
        object_etag(root, &root.join(bucket).join(key.as_ref()))
    })
}

/// `xml` with an `<ETag>` added to every `<entry>` that has none, from
/// `etag_of` the text of its `<field>`.
fn fill_etags(
    xml: &str,
    entry: &str,
    field: &str,
    etag_of: impl Fn(&str) -> Option<String>,
) -> String {
    let (open, close) = (format!("<{entry}>"), format!("</{entry}>"));
    let (fopen, fclose) = (format!("<{field}>"), format!("</{field}>"));
    let mut out = String::with_capacity(xml.len() + xml.len() / 2);
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let Some(len) = rest[start..].find(&close) else {
            break;
        };
        let item = &rest[start..start + len];
        out.push_str(&rest[..start + len]);
        if !item.contains("<ETag>")
            && let Some((value, _)) = item
                .split_once(&fopen)
                .and_then(|(_, v)| v.split_once(&fclose))
            && let Some(etag) = etag_of(value)
        {
            out.push_str(&format!("<ETag>&quot;{etag}&quot;</ETag>"));
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

/// `s` as XML text: markup characters and control characters as
/// references, as S3 writes them.
fn xml_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            c if c.is_control() => format!("&#x{:x};", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// base64url without padding, as s3s-fs names its metadata files.
fn base64url(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The ETag s3s-fs gives an object: the one it stored at upload (a
/// multipart ETag), else the MD5 of its content.
fn object_etag(root: &std::path::Path, file: &std::path::Path) -> Option<String> {
    let rel = file.strip_prefix(root).ok()?.to_str()?;
    let (bucket, key) = rel.split_once('/')?;
    let info = root.join(format!(
        ".bucket-{}.object-{}.internal.json",
        base64url(bucket),
        base64url(key)
    ));
    if let Ok(text) = std::fs::read_to_string(info)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(e) = v.get("e_tag").and_then(|e| e.as_str())
    {
        return Some(e.trim_matches('"').to_string());
    }
    file_etag(file)
}

/// The MD5 of a file's content, in hex.
fn file_etag(path: &std::path::Path) -> Option<String> {
    use md5::Digest;
    let mut hasher = md5::Md5::new();
    let mut file = std::fs::File::open(path).ok()?;
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

async fn handle(state: Arc<State>, req: http::Request<Incoming>) -> Result<Response, BoxError> {
    let faults = &state.faults;
    // S3 has no object where s3s-fs has a directory (keys below it).
    if req.method() == http::Method::HEAD
        && let Some(path) = percent_decode(req.uri().path().trim_start_matches('/'))
        && path.split_once('/').is_some_and(|(_, k)| !k.is_empty())
        && state.root.join(&path).is_dir()
    {
        return Ok(http::Response::builder()
            .status(404)
            .body(s3s::Body::empty())
            .unwrap());
    }
    let object = object_file(&state.root, &req);
    let headed = (req.method() == http::Method::HEAD)
        .then(|| percent_decode(req.uri().path().trim_start_matches('/')))
        .flatten();
    if let (Some(file), Some(want)) = (&object, req.headers().get("if-match")) {
        let want = want.to_str().unwrap_or("").trim_matches('"');
        if file.is_file() && want != "*" && object_etag(&state.root, file).as_deref() != Some(want)
        {
            return Ok(error_response(412, "PreconditionFailed"));
        }
    }
    if req.uri().query().is_some_and(|q| q.contains("partNumber="))
        && let (Some(source), Some(want)) = (
            req.headers().get("x-amz-copy-source"),
            req.headers().get("x-amz-copy-source-if-match"),
        )
    {
        let source = percent_decode(source.to_str().unwrap_or("").trim_start_matches('/'));
        let want = want.to_str().unwrap_or("").trim_matches('"');
        let file = source.map(|s| state.root.join(s));
        if file.is_some_and(|f| object_etag(&state.root, &f).as_deref() != Some(want)) {
            return Ok(error_response(412, "PreconditionFailed"));
        }
    }
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
    let listing = list_prefix(&req);
    let parts_of = list_parts_upload(&req);
    let answer = hyper::service::Service::call(&state.service, req)
        .await
        .map_err(|e| BoxError::from(format!("{e:?}")));
    if let (Some(upload), Ok(resp)) = (parts_of, &answer)
        && resp.status().is_success()
    {
        let (parts, mut body) = answer?.into_parts();
        let xml = String::from_utf8(body.store_all_limited(16 << 20).await?.to_vec())?;
        let xml = with_part_etags(&xml, &state.root, &upload);
        let mut parts = parts;
        parts.headers.remove(http::header::CONTENT_LENGTH);
        return Ok(http::Response::from_parts(parts, s3s::Body::from(xml)));
    }
    if let (Some((bucket, prefix)), Ok(resp)) = (listing, &answer)
        && resp.status().is_success()
    {
        let markers: Vec<&String> = state
            .faults
            .extra_keys
            .iter()
            .filter(|m| m.starts_with(&format!("{bucket}/{prefix}")))
            .collect();
        return add_to_listing(answer?, &state.root, &bucket, &markers).await;
    }
    if let Some(rel) = headed {
        let next = state.root.join(".next-after-head").join(&rel);
        if next.is_file() && std::fs::rename(&next, state.root.join(&rel)).is_ok() {
            state.injected();
        }
    }
    if let Some(file) = object
        && let Ok(rel) = file.strip_prefix(&state.root)
    {
        // The answer holds the old file open; later GETs see the new one.
        let next = state.root.join(".next").join(rel);
        if next.is_file() && std::fs::rename(&next, &file).is_ok() {
            state.injected();
        }
    }
    answer
}
