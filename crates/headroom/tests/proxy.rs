//! `headroom proxy` against a real S3 server (s3s-fs) upstream, driven by
//! a real S3 client (object_store's), checking what a user of an
//! encrypting proxy checks: round trips are byte-identical, ranges are
//! right, what lands upstream is ciphertext, tampering is an error and
//! never altered plaintext, a body that fails its signature is never
//! stored, and what is not supported says so.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::moto::{Moto, S3TESTS_USERS, run_s3tests};
use common::*;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

const CLIENT_KEY: &str = "proxy-client";
const CLIENT_SECRET: &str = "proxy-client-secret-0123456789";

struct Proxy {
    url: String,
    child: Child,
    _keys: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3 server the proxy sits in front of: s3s-fs (the test server) or
/// moto_server.
trait Upstream {
    fn env(&self) -> Vec<(&'static str, String)>;
}

impl Upstream for S3Server {
    fn env(&self) -> Vec<(&'static str, String)> {
        S3Server::env(self)
    }
}

impl Upstream for Moto {
    fn env(&self) -> Vec<(&'static str, String)> {
        Moto::env(self)
    }
}

fn start_proxy(upstream: &dyn Upstream, memory: &str) -> Proxy {
    start_proxy_with(upstream, memory, &[])
}

/// A proxy with a fresh key file and `extra` arguments.
fn start_proxy_with(upstream: &dyn Upstream, memory: &str, extra: &[&str]) -> Proxy {
    let keys = tempfile::tempdir().unwrap();
    let file = keys.path().join("keys.json");
    write_key_file(&file);
    let mut proxy = start_proxy_with_keys(upstream, memory, &file, extra);
    proxy._keys = keys;
    proxy
}

/// A key file from `headroom proxy keygen`, mode 0600.
fn write_key_file(file: &std::path::Path) {
    let out = headroom(
        &[
            "proxy",
            "keygen",
            "--access-key",
            CLIENT_KEY,
            "--secret-key",
            CLIENT_SECRET,
        ],
        &[],
    );
    assert_ok(&out);
    std::fs::write(file, &out.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn start_proxy_with_keys(
    upstream: &dyn Upstream,
    memory: &str,
    file: &std::path::Path,
    extra: &[&str],
) -> Proxy {
    let env = upstream.env();
    let endpoint = env
        .iter()
        .find(|(k, _)| *k == "AWS_ENDPOINT_URL")
        .map(|(_, v)| v.clone())
        .expect("an endpoint");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom"));
    cmd.args(["proxy", "--listen", "127.0.0.1:0", "--memory", memory])
        .arg("--upstream")
        .arg(&endpoint)
        .arg("--keys")
        .arg(file)
        .args(extra)
        .env_remove("HEADROOM_MEMORY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped());
    for (k, v) in env {
        if k != "AWS_ENDPOINT_URL" {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.spawn().expect("start the proxy");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the proxy said {line:?}"))
        .to_string();
    Proxy {
        url,
        child,
        _keys: tempfile::tempdir().unwrap(),
    }
}

/// A client of the proxy that does not retry: every answer is seen.
fn client(proxy: &Proxy, bucket: &str, secret: &str) -> Arc<AmazonS3> {
    client_with(
        proxy,
        bucket,
        secret,
        object_store::RetryConfig {
            max_retries: 0,
            ..Default::default()
        },
    )
}

/// A client of the proxy that retries as S3 clients do (SlowDown, 5xx).
fn retrying_client(proxy: &Proxy) -> Arc<AmazonS3> {
    client_with(proxy, "vault", CLIENT_SECRET, Default::default())
}

fn client_with(
    proxy: &Proxy,
    bucket: &str,
    secret: &str,
    retry: object_store::RetryConfig,
) -> Arc<AmazonS3> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(&proxy.url)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .with_access_key_id(CLIENT_KEY)
            .with_secret_access_key(secret)
            .with_retry(retry)
            .build()
            .unwrap(),
    )
}

/// The client credential of the key file, for requests the tests sign.
fn client_credential() -> object_store::aws::AwsCredential {
    object_store::aws::AwsCredential {
        key_id: CLIENT_KEY.into(),
        secret_key: CLIENT_SECRET.into(),
        token: None,
    }
}

/// A multipart upload of `data` to `key` in parts of `part` bytes.
async fn upload_in_parts(s3: &AmazonS3, key: &str, data: &[u8], part: usize) {
    let mut upload = s3.put_multipart(&StorePath::from(key)).await.unwrap();
    for chunk in data.chunks(part) {
        upload.put_part(chunk.to_vec().into()).await.unwrap();
    }
    upload.complete().await.unwrap();
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Every file the upstream server holds, with its bytes.
fn stored(root: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
        .collect()
}

#[test]
fn objects_round_trip_through_the_proxy_and_only_ciphertext_lands_upstream() {
    let upstream = S3Server::start(Faults::default());
    upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let s3 = client(&proxy, "vault", CLIENT_SECRET);
    let frame = 64 << 10;
    let sizes = [
        0usize,
        1,
        100,
        frame - 1,
        frame,
        frame + 1,
        3 * frame + 17,
        5 << 20,
    ];
    let objects: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("dir/object-{i}.bin"), bytes(n, i as u64 + 1)))
        .collect();
    rt().block_on(async {
        for (key, data) in &objects {
            s3.put(&StorePath::from(key.as_str()), data.clone().into())
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e}"));
        }
        for (key, data) in &objects {
            let path = StorePath::from(key.as_str());
            let got = s3.get(&path).await.unwrap().bytes().await.unwrap();
            assert!(
                got == data.as_slice(),
                "{key}: the round trip changed the bytes"
            );
            let head = s3.head(&path).await.unwrap();
            assert_eq!(
                head.size,
                data.len() as u64,
                "{key}: HEAD shows the plaintext size"
            );
            let n = data.len() as u64;
            for range in [0..1, n / 3..n / 2 + 1, n.saturating_sub(5)..n, 0..n] {
                if range.start >= range.end || range.end > n {
                    continue;
                }
                let got = s3.get_range(&path, range.clone()).await.unwrap();
                assert!(
                    got == data[range.start as usize..range.end as usize],
                    "{key} {range:?}: wrong bytes"
                );
            }
        }
        // The ETag a client is shown is the one it can send back: If-Match
        // with it reads, with another one is refused.
        let path = StorePath::from(objects[3].0.as_str());
        let etag = s3.head(&path).await.unwrap().e_tag.unwrap();
        let pinned = object_store::GetOptions {
            if_match: Some(etag.clone()),
            ..Default::default()
        };
        let got = s3
            .get_opts(&path, pinned)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(got == objects[3].1.as_slice());
        let stale = object_store::GetOptions {
            if_match: Some("\"0123456789abcdef0123456789abcdef-0\"".into()),
            ..Default::default()
        };
        assert!(matches!(
            s3.get_opts(&path, stale).await,
            Err(object_store::Error::Precondition { .. })
        ));
        // The listing shows plaintext sizes, from one request.
        use futures::TryStreamExt;
        let listed: Vec<_> = s3
            .list(Some(&StorePath::from("dir")))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed.len(), objects.len());
        for meta in &listed {
            let (_, data) = objects
                .iter()
                .find(|(k, _)| *k == meta.location.as_ref())
                .unwrap();
            assert_eq!(meta.size, data.len() as u64, "{}", meta.location);
        }
    });
    // Upstream: no run of 32 plaintext bytes anywhere.
    let files = stored(upstream.root.path());
    for (key, data) in &objects {
        for start in (0..data.len().saturating_sub(32)).step_by(4099) {
            let window = &data[start..start + 32];
            for (path, content) in &files {
                assert!(
                    memchr::memmem::find(content, window).is_none(),
                    "{key}: plaintext at offset {start} is stored in {}",
                    path.display()
                );
            }
        }
    }
    rt().block_on(async {
        let path = StorePath::from(objects[1].0.as_str());
        s3.delete(&path).await.unwrap();
        assert!(matches!(
            s3.head(&path).await,
            Err(object_store::Error::NotFound { .. })
        ));
    });
}

#[test]
fn a_tampered_frame_is_an_error_and_never_altered_plaintext() {
    let upstream = S3Server::start(Faults::default());
    let bucket = upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let s3 = client(&proxy, "vault", CLIENT_SECRET);
    let data = bytes(300_000, 9);
    let path = StorePath::from("victim.bin");
    rt().block_on(async {
        s3.put(&path, data.clone().into()).await.unwrap();
    });
    let file = bucket.join("victim.bin");
    let mut stored = std::fs::read(&file).unwrap();
    // A byte of the third frame.
    let at = 32 + 2 * (65536 + 16) + 100;
    stored[at] ^= 0x01;
    std::fs::write(&file, &stored).unwrap();
    rt().block_on(async {
        let whole = match s3.get(&path).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        assert!(whole.is_err(), "a whole GET of a tampered object must fail");
        // A range inside an untouched frame still reads; one over the
        // tampered frame fails.
        let fine = s3.get_range(&path, 10..1000).await.unwrap();
        assert!(fine == data[10..1000]);
        let bad = s3.get_range(&path, 2 * 65536..2 * 65536 + 500).await;
        assert!(bad.is_err(), "a range over the tampered frame must fail");
    });
}

#[test]
fn bad_credentials_and_unsupported_operations_are_refused() {
    let upstream = S3Server::start(Faults::default());
    upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let wrong = client(&proxy, "vault", "not-the-right-secret-at-all");
    rt().block_on(async {
        let e = wrong
            .put(&StorePath::from("x"), vec![1u8; 10].into())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SignatureDoesNotMatch") || e.contains("403"),
            "{e}"
        );
        // Operations the proxy does not serve say so, S3's way; nothing
        // passes through to the upstream.
        let mut ids = Vec::new();
        for (method, path) in [
            ("GET", "/vault?acl"),
            ("GET", "/vault/x?tagging"),
            ("GET", "/vault?versioning"),
        ] {
            let r = signed(&proxy, method, path, Vec::new()).await;
            let status = r.status();
            let id = r
                .headers()
                .get("x-amz-request-id")
                .map(|v| v.to_str().unwrap().to_string());
            let body = r.text().await.unwrap();
            assert!(
                status == 501 && body.contains("NotImplemented"),
                "{method} {path}: {status} {body}"
            );
            // Every answer names its request, for the operator's log.
            ids.push(id.unwrap_or_else(|| panic!("{method} {path}: no x-amz-request-id")));
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3, "request ids are not distinct: {ids:?}");
    });
    for (path, _) in stored(upstream.root.path()) {
        assert!(
            !path.to_string_lossy().contains("vault/x"),
            "{} was stored",
            path.display()
        );
    }
}

#[test]
fn a_body_that_fails_its_signature_is_never_stored() {
    let upstream = S3Server::start(Faults::default());
    upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let credential = client_credential();
    let body = bytes(200_000, 3);
    // The signature covers the SHA-256 of other bytes than those sent.
    let claimed = sha256(b"some other body");
    let url = format!("{}/vault/forged.bin", proxy.url);
    let mut req = http::Request::builder()
        .method("PUT")
        .uri(&url)
        .body(object_store::client::HttpRequestBody::empty())
        .unwrap();
    object_store::aws::AwsAuthorizer::new(&credential, "s3", "us-east-1")
        .try_authorize(&mut req, Some(&claimed))
        .unwrap();
    let status = rt().block_on(async {
        let r = reqwest::Client::new()
            .put(&url)
            .headers(req.headers().clone())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        r.status()
    });
    assert!(status.is_client_error(), "answered {status}");
    assert!(
        !upstream.root.path().join("vault/forged.bin").exists(),
        "a body that failed its check was published upstream"
    );
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

#[test]
fn multipart_uploads_round_trip_and_odd_parts_are_refused_at_complete() {
    let upstream = S3Server::start(Faults::default());
    upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let s3 = client(&proxy, "vault", CLIENT_SECRET);
    const MIB: usize = 1 << 20;
    let data = bytes(11 * MIB + 7, 21);
    let path = StorePath::from("multi/big.bin");
    rt().block_on(async {
        upload_in_parts(&s3, "multi/big.bin", &data, 5 * MIB).await;
        let got = s3.get(&path).await.unwrap().bytes().await.unwrap();
        assert!(
            got == data.as_slice(),
            "the multipart round trip changed the bytes"
        );
        assert_eq!(s3.head(&path).await.unwrap().size, data.len() as u64);
        let n = data.len() as u64;
        let m = MIB as u64;
        for range in [0..10, 5 * m - 3..5 * m + 3, 3 * m..10 * m + 5, n - 2..n] {
            let got = s3.get_range(&path, range.clone()).await.unwrap();
            assert!(
                got == data[range.start as usize..range.end as usize],
                "{range:?}: wrong bytes"
            );
        }
        use futures::TryStreamExt;
        let listed: Vec<_> = s3
            .list(Some(&StorePath::from("multi")))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed[0].size, n, "the listing shows the plaintext size");

        // A first part that is not a whole number of 64 KiB frames: the
        // listing could not tell the size, so Complete refuses it.
        let odd = StorePath::from("multi/odd.bin");
        let mut upload = s3.put_multipart(&odd).await.unwrap();
        upload
            .put_part(data[..5 * MIB + 1].to_vec().into())
            .await
            .unwrap();
        upload
            .put_part(data[5 * MIB + 1..].to_vec().into())
            .await
            .unwrap();
        let e = upload.complete().await.unwrap_err().to_string();
        assert!(e.contains("InvalidPart") && e.contains("64 KiB"), "{e}");
        upload.abort().await.unwrap();
        assert!(matches!(
            s3.head(&odd).await,
            Err(object_store::Error::NotFound { .. })
        ));
    });
    assert!(
        upstream.incomplete_uploads().is_empty(),
        "{:?}",
        upstream.incomplete_uploads()
    );
}

/// A line of `/proc/PID/status`, in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn memory_holds_under_32_parallel_clients_and_a_slow_reader() {
    let (idle, peak, _) = under_load("64MiB", 32, Faults::default());
    assert!(
        peak <= idle + (64 << 20),
        "peak RSS {peak} exceeds the idle {idle} plus the 64 MiB budget"
    );
}

#[test]
fn a_full_proxy_says_slow_down_and_retried_clients_succeed() {
    // Near the least budget the proxy takes (one listing beside a
    // connection): room for a few requests at a time, so most of 24
    // clients are told to slow down, and every one of them ends with its
    // object.
    let clients = 24;
    // Every other upstream request answers after 100 ms, so requests
    // overlap whatever the machine's speed: without it, on a busy machine
    // clients could arrive one after another and never find it full.
    let slow_upstream = Faults {
        every: 2,
        kinds: vec![Fault::Stall(std::time::Duration::from_millis(100))],
        ..Faults::default()
    };
    let (idle, peak, slow_downs) = under_load("16MiB", clients, slow_upstream);
    assert!(slow_downs > 0, "no SlowDown at a budget this small");
    // The tight bound (idle + budget) is the 64 MiB test's; at a budget
    // this small the allocator's retained pages alone are a good part of
    // it, so this test only guards against growth beyond the budget's
    // order.
    assert!(
        peak <= idle + 2 * (16 << 20),
        "peak RSS {peak} exceeds the idle {idle} plus twice the 16 MiB budget"
    );
}

#[test]
fn a_budget_smaller_than_one_request_is_refused_at_start() {
    // At --memory 1MiB a PUT (3.3 MiB) would be admitted clamped to the
    // budget, holding more than it reserved: the proxy refuses to start.
    let upstream = S3Server::start(Faults::default());
    let keys = tempfile::tempdir().unwrap();
    let file = keys.path().join("keys.json");
    write_key_file(&file);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom"));
    cmd.args(["--memory", "1MiB", "proxy", "--listen", "127.0.0.1:0"])
        .args(["--upstream", &upstream.endpoint])
        .arg("--keys")
        .arg(&file)
        .env_remove("HEADROOM_MEMORY");
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "the proxy started at 1 MiB");
    let err = text(&out.stderr);
    assert!(
        err.contains("too small for the proxy") && err.contains("--memory"),
        "{err}"
    );
    assert!(!text(&out.stdout).contains("listening"));
}

/// `clients` parallel uploads, then as many downloads (whole and ranged)
/// beside a slow reader, through a proxy with `memory`: the proxy's idle
/// and peak RSS and its SlowDowns. Every client must succeed, retried.
fn under_load(memory: &str, clients: usize, upstream_faults: Faults) -> (u64, u64, u64) {
    const SIZE: usize = 4 << 20;
    let upstream = S3Server::start(upstream_faults);
    upstream.bucket("vault");
    let proxy = start_proxy(&upstream, memory);
    let pid = proxy.child.id();
    // Retries as clients have them: a SlowDown is tried again.
    let s3 = retrying_client(&proxy);
    let rt = rt();
    // A first request, so that the baseline includes a warmed-up process.
    rt.block_on(async {
        s3.put(&StorePath::from("warm"), vec![0u8; 10].into())
            .await
            .unwrap();
    });
    let idle = proc_status_bytes(pid, "VmRSS:");
    let data: Vec<Vec<u8>> = (0..clients).map(|i| bytes(SIZE, 100 + i as u64)).collect();
    let data = Arc::new(data);
    rt.block_on(async {
        let uploads: Vec<_> = (0..clients)
            .map(|i| {
                let (s3, data) = (s3.clone(), data.clone());
                tokio::spawn(async move {
                    s3.put(
                        &StorePath::from(format!("load/{i}")),
                        data[i].clone().into(),
                    )
                    .await
                })
            })
            .collect();
        for (i, u) in uploads.into_iter().enumerate() {
            u.await
                .unwrap()
                .unwrap_or_else(|e| panic!("upload {i} did not succeed, even retried: {e}"));
        }
        // A slow reader beside 32 fast ones: its frames wait in TCP, not in
        // the proxy.
        let slow = {
            let (s3, data) = (s3.clone(), data.clone());
            tokio::spawn(async move {
                use futures::StreamExt;
                let mut got = Vec::new();
                let mut stream = s3
                    .get(&StorePath::from("load/0"))
                    .await
                    .unwrap()
                    .into_stream();
                while let Some(chunk) = stream.next().await {
                    got.extend_from_slice(&chunk.unwrap());
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                assert!(got == data[0], "the slow reader got other bytes");
            })
        };
        let downloads: Vec<_> = (0..clients)
            .map(|i| {
                let (s3, data) = (s3.clone(), data.clone());
                tokio::spawn(async move {
                    let path = StorePath::from(format!("load/{i}"));
                    let whole = s3.get(&path).await?.bytes().await?;
                    assert!(whole == data[i], "download {i} got other bytes");
                    let r = (i as u64 * 4099)..(i as u64 * 4099 + 300_000);
                    let part = s3.get_range(&path, r.clone()).await?;
                    assert!(part == data[i][r.start as usize..r.end as usize]);
                    Ok::<_, object_store::Error>(())
                })
            })
            .collect();
        for (i, d) in downloads.into_iter().enumerate() {
            d.await
                .unwrap()
                .unwrap_or_else(|e| panic!("download {i} did not succeed, even retried: {e}"));
        }
        slow.await.unwrap();
    });
    let peak = proc_status_bytes(pid, "VmHWM:");
    let metrics = rt.block_on(async {
        let health = reqwest::get(format!("{}/healthz", proxy.url))
            .await
            .unwrap();
        assert!(health.status().is_success());
        reqwest::get(format!("{}/metrics", proxy.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let metric = |name: &str| metric(&metrics, name);
    eprintln!(
        "proxy RSS: idle {:.1} MiB, peak {:.1} MiB with --memory {memory}; {} SlowDowns, peak reserved {:.1} MiB",
        idle as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        metric("headroom_proxy_slow_downs_total"),
        metric("headroom_memory_peak_reserved_bytes") as f64 / 1048576.0
    );
    assert!(
        metrics.contains("operation=\"PutObject\",status=\"200\""),
        "{metrics}"
    );
    // Nothing half-written upstream: every object is whole.
    for i in 0..clients {
        let stored =
            std::fs::metadata(upstream.root.path().join(format!("vault/load/{i}"))).unwrap();
        assert_eq!(
            stored.len(),
            headroom::proxy::envelope::segment_len(SIZE as u64)
        );
    }
    (idle, peak, metric("headroom_proxy_slow_downs_total"))
}

/// The value of an unlabelled series in the proxy's `/metrics` text.
fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{name} missing from {metrics}"))
}

#[test]
fn rewrap_moves_every_data_key_to_the_current_kek_without_touching_the_data() {
    use headroom::proxy::keys::KeyFile;
    let upstream = S3Server::start(Faults::default());
    upstream.bucket("vault");
    let mut proxy = start_proxy(&upstream, "64MiB");
    // The key file outlives this first proxy.
    let key_dir = std::mem::replace(&mut proxy._keys, tempfile::tempdir().unwrap());
    let file = key_dir.path().join("keys.json");
    let s3 = client(&proxy, "vault", CLIENT_SECRET);
    const MIB: usize = 1 << 20;
    let small = bytes(100_000, 31);
    let big = bytes(10 * MIB + 3, 32);
    rt().block_on(async {
        s3.put(&StorePath::from("small"), small.clone().into())
            .await
            .unwrap();
        upload_in_parts(&s3, "big", &big, 5 * MIB).await;
    });
    let stored_before: Vec<u8> = std::fs::read(upstream.root.path().join("vault/big")).unwrap();
    // A new KEK becomes current; rewrap moves both objects to it.
    let mut keys: KeyFile = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let old = keys.current.clone();
    keys.rotate().unwrap();
    std::fs::write(&file, keys.to_json()).unwrap();
    let env: Vec<(&str, String)> = upstream.env();
    let rewrap = |extra: &[&str]| {
        let mut args = vec!["proxy", "rewrap", "--keys", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        headroom(&args, &env)
    };
    let out = rewrap(&["--dry-run"]);
    assert_ok(&out);
    assert!(
        text(&out.stdout).starts_with("would rewrap 2 objects"),
        "{}",
        text(&out.stdout)
    );
    let out = rewrap(&[]);
    assert_ok(&out);
    assert!(
        text(&out.stdout).starts_with("rewrapped 2 objects"),
        "{}",
        text(&out.stdout)
    );
    let out = rewrap(&[]);
    assert_ok(&out);
    assert!(
        text(&out.stdout).contains("rewrapped 0 objects; 2 already under the current KEK"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read(upstream.root.path().join("vault/big")).unwrap(),
        stored_before,
        "the ciphertext is the same bytes"
    );
    // Without the old KEK, a new proxy still reads both, and the multipart
    // object kept its parts (its listed size is right).
    keys.keks.retain(|k| k.id != old);
    std::fs::write(&file, keys.to_json()).unwrap();
    drop(proxy);
    let proxy = start_proxy_with_keys(&upstream, "64MiB", &file, &[]);
    let s3 = client(&proxy, "vault", CLIENT_SECRET);
    rt().block_on(async {
        let got = s3
            .get(&StorePath::from("small"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(got == small.as_slice());
        let got = s3
            .get(&StorePath::from("big"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(got == big.as_slice());
        use futures::TryStreamExt;
        let listed: Vec<_> = s3.list(None).try_collect().await.unwrap();
        let size = |k: &str| {
            listed
                .iter()
                .find(|m| m.location.as_ref() == k)
                .unwrap()
                .size
        };
        assert_eq!(size("big"), big.len() as u64);
        assert_eq!(size("small"), small.len() as u64);
    });
}

/// A request to the proxy signed with the client credential (the body's
/// SHA-256 in the signature), as any S3 SDK signs it.
async fn signed(
    proxy: &Proxy,
    method: &str,
    path_and_query: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    let credential = client_credential();
    let url = format!("{}{path_and_query}", proxy.url);
    let mut req = http::Request::builder()
        .method(method)
        .uri(&url)
        .body(object_store::client::HttpRequestBody::empty())
        .unwrap();
    object_store::aws::AwsAuthorizer::new(&credential, "s3", "us-east-1")
        .try_authorize(&mut req, Some(&sha256(&body)))
        .unwrap();
    reqwest::Client::new()
        .request(method.parse().unwrap(), &url)
        .headers(req.headers().clone())
        .body(body)
        .send()
        .await
        .unwrap()
}

#[test]
fn a_part_sent_again_with_other_bytes_is_the_one_completed() {
    let upstream = S3Server::start(Faults::default());
    upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let (first, second) = (bytes(200_000, 41), bytes(200_000, 42));
    rt().block_on(async {
        let r = signed(&proxy, "POST", "/vault/resent?uploads", Vec::new()).await;
        assert!(r.status().is_success());
        let xml = r.text().await.unwrap();
        let id = xml
            .split_once("<UploadId>")
            .and_then(|(_, r)| r.split_once("</UploadId>"))
            .unwrap()
            .0
            .to_string();
        let q = |id: &str| url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>();
        let part = format!("/vault/resent?partNumber=1&uploadId={}", q(&id));
        let etag = |r: &reqwest::Response| {
            r.headers()["etag"].to_str().unwrap().to_string()
        };
        let a = signed(&proxy, "PUT", &part, first.clone()).await;
        assert!(a.status().is_success());
        let b = signed(&proxy, "PUT", &part, second.clone()).await;
        assert!(b.status().is_success());
        let (a, b) = (etag(&a), etag(&b));
        assert_ne!(a, b, "other bytes, other ciphertext");
        let complete = |e: &str| {
            format!("<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{e}</ETag></Part></CompleteMultipartUpload>")
        };
        let done_path = format!("/vault/resent?uploadId={}", q(&id));
        // The first send was replaced: completing with it is S3's InvalidPart.
        let stale = signed(&proxy, "POST", &done_path, complete(&a).into_bytes()).await;
        let stale_status = stale.status();
        let stale_body = stale.text().await.unwrap();
        assert!(
            stale_status.is_client_error() && stale_body.contains("InvalidPart"),
            "{stale_status} {stale_body}"
        );
        let done = signed(&proxy, "POST", &done_path, complete(&b).into_bytes()).await;
        assert!(done.status().is_success(), "{}", done.text().await.unwrap());
        let got = signed(&proxy, "GET", "/vault/resent", Vec::new()).await;
        assert!(got.status().is_success());
        assert!(got.bytes().await.unwrap() == second, "the object is the second send");
        // An unknown upload id is S3's NoSuchUpload, never a 200.
        let unknown = signed(
            &proxy,
            "POST",
            "/vault/resent?uploadId=no-such-upload",
            complete(&b).into_bytes(),
        )
        .await;
        let status = unknown.status();
        assert!(
            status.is_client_error() && unknown.text().await.unwrap().contains("NoSuchUpload"),
            "{status}"
        );
    });
}

#[test]
fn a_client_that_disconnects_mid_upload_leaves_nothing_and_holds_nothing() {
    use std::io::Write;
    let upstream = S3Server::start(Faults::default());
    upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let credential = client_credential();
    let url = format!("{}/vault/cut.bin", proxy.url);
    let mut req = http::Request::builder()
        .method("PUT")
        .uri(&url)
        .header("content-length", "1048576")
        .body(object_store::client::HttpRequestBody::empty())
        .unwrap();
    object_store::aws::AwsAuthorizer::new(&credential, "s3", "us-east-1")
        .with_sign_payload(false)
        .try_authorize(&mut req, None)
        .unwrap();
    let addr = proxy.url.trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!("PUT /vault/cut.bin HTTP/1.1\r\nhost: {addr}\r\n");
    for (k, v) in req.headers() {
        if k != "host" {
            head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
        }
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).unwrap();
    socket.write_all(&bytes(300_000, 5)).unwrap();
    drop(socket);
    // The proxy stays up, stores nothing and hands the request's bytes
    // back: all that stays reserved is the connection asking for metrics.
    let reserved = |m: &str| metric(m, "headroom_memory_reserved_bytes");
    rt().block_on(async {
        // One client, so one kept-alive connection asks every time.
        let http = reqwest::Client::new();
        let mut last = String::new();
        for _ in 0..100 {
            let m = http
                .get(format!("{}/metrics", proxy.url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if reserved(&m) <= headroom::serve::api::CONNECTION_BYTES {
                return;
            }
            last = m;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the cut request's reservation was never given back: {last}");
    });
    assert!(!upstream.root.path().join("vault/cut.bin").exists());
}

#[test]
fn upstream_failures_are_retried_by_clients_and_round_trips_stay_exact() {
    let upstream = S3Server::start(Faults {
        every: 4,
        kinds: vec![Fault::Status500, Fault::Reset],
        ..Faults::default()
    });
    upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let s3 = retrying_client(&proxy);
    let objects: Vec<Vec<u8>> = (0..8)
        .map(|i| bytes(150_000 + i * 1000, 60 + i as u64))
        .collect();
    rt().block_on(async {
        for (i, data) in objects.iter().enumerate() {
            s3.put(&StorePath::from(format!("f/{i}")), data.clone().into())
                .await
                .unwrap_or_else(|e| panic!("put {i}: {e}"));
        }
        for (i, data) in objects.iter().enumerate() {
            let got = s3
                .get(&StorePath::from(format!("f/{i}")))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert!(got == data.as_slice(), "object {i}");
        }
    });
    assert!(upstream.faults_injected() > 0, "no fault was injected");
}

#[test]
fn an_upstream_that_stalls_mid_part_times_out_and_retried_parts_complete() {
    // Every third upstream request stalls before the upstream reads its
    // body: the part's frames back up into TCP (not into the proxy) until
    // --upstream-timeout cuts the request, the client is answered 502 and
    // sends the part again.
    let upstream = S3Server::start(Faults {
        every: 3,
        kinds: vec![Fault::Stall(std::time::Duration::from_secs(20))],
        ..Faults::default()
    });
    upstream.bucket("vault");
    let proxy = start_proxy_with(&upstream, "64MiB", &["--upstream-timeout", "3s"]);
    let s3 = retrying_client(&proxy);
    const MIB: usize = 1 << 20;
    let data = bytes(16 * MIB + 7, 77);
    rt().block_on(async {
        upload_in_parts(&s3, "stalled", &data, 5 * MIB).await;
        let got = s3
            .get(&StorePath::from("stalled"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            got == data.as_slice(),
            "the stalled upload came back other bytes"
        );
    });
    assert!(upstream.faults_injected() > 0, "no stall was injected");
    assert!(
        upstream.incomplete_uploads().is_empty(),
        "uploads left upstream: {:?}",
        upstream.incomplete_uploads()
    );
    // What the cut requests held came back: only open connections' 64 KiB
    // charges remain reserved, no request's frames.
    let metrics = rt().block_on(async {
        reqwest::get(format!("{}/metrics", proxy.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let reserved = metric(&metrics, "headroom_memory_reserved_bytes");
    assert!(
        reserved < (1 << 20),
        "{reserved} bytes still reserved after the uploads ended"
    );
}

#[test]
fn a_get_that_outlasts_the_upstream_timeout_streams_to_a_slow_client() {
    // --upstream-timeout bounds the upstream's silences, not a transfer: a
    // client reading steadily for longer than it gets the whole object.
    let upstream = S3Server::start(Faults::default());
    upstream.bucket("vault");
    let proxy = start_proxy_with(&upstream, "64MiB", &["--upstream-timeout", "1s"]);
    let s3 = client(&proxy, "vault", CLIENT_SECRET);
    // Larger than the loopback sockets' buffers, so that the proxy's reads
    // of the upstream wait on this client.
    let data = bytes(32 << 20, 78);
    rt().block_on(async {
        use futures::StreamExt;
        s3.put(&StorePath::from("slow"), data.clone().into())
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut stream = s3
            .get(&StorePath::from("slow"))
            .await
            .unwrap()
            .into_stream();
        let mut got = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("the slow GET was cut");
            got.extend_from_slice(&chunk);
            // About 12 MiB/s: 5 ms per 64 KiB.
            let pause = 5 * (chunk.len() as u64).div_ceil(64 << 10);
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        }
        assert!(got == data, "the slow reader got other bytes");
        assert!(
            started.elapsed() > std::time::Duration::from_secs(2),
            "the read was not slower than the timeout ({:?}): the test proves nothing",
            started.elapsed()
        );
    });
}

#[test]
fn ranged_reads_into_multipart_objects_are_exact_whatever_the_part_sizes() {
    // Equal parts let a range jump to its part; unequal ones (a smaller or
    // larger first part, one odd part in the middle) must not be misplaced
    // by that guess and are walked instead.
    let upstream = S3Server::start(Faults::default());
    upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let s3 = client(&proxy, "vault", CLIENT_SECRET);
    const MIB: usize = 1 << 20;
    let layouts: [(&str, &[usize]); 4] = [
        (
            "equal",
            &[5 * MIB, 5 * MIB, 5 * MIB, 5 * MIB, 5 * MIB, 777_777],
        ),
        ("big-first", &[10 * MIB, 5 * MIB, 5 * MIB, 7 * MIB, 3 * MIB]),
        ("small-first", &[5 * MIB, 10 * MIB, 5 * MIB, 5 * MIB, 1]),
        (
            "odd-middle",
            &[5 * MIB, 5 * MIB, 6 * MIB, 5 * MIB, 5 * MIB, 100],
        ),
    ];
    rt().block_on(async {
        for (name, parts) in layouts {
            let total: usize = parts.iter().sum();
            let data = bytes(total, 90 + parts.len() as u64);
            let mut upload = s3.put_multipart(&StorePath::from(name)).await.unwrap();
            let mut at = 0;
            for &n in parts {
                upload
                    .put_part(data[at..at + n].to_vec().into())
                    .await
                    .unwrap();
                at += n;
            }
            upload.complete().await.unwrap();
            // Around every part boundary, and across two of them.
            let mut starts = vec![0, total - 1, total / 2];
            let mut boundary = 0;
            for &n in parts {
                boundary += n;
                starts.extend([boundary.saturating_sub(1), boundary, boundary + 4097]);
            }
            for start in starts.into_iter().filter(|&s| s < total) {
                let end = (start + 70_000).min(total);
                let got = s3
                    .get_range(&StorePath::from(name), start as u64..end as u64)
                    .await
                    .unwrap_or_else(|e| panic!("{name} {start}..{end}: {e}"));
                assert!(
                    got == data[start..end],
                    "{name}: the range {start}..{end} came back other bytes"
                );
            }
            let long = 3 * MIB..(total - 2);
            let got = s3
                .get_range(&StorePath::from(name), long.start as u64..long.end as u64)
                .await
                .unwrap();
            assert!(got == data[long], "{name}: a range over several parts");
        }
    });
}

#[test]
fn presigned_urls_put_and_get_through_the_proxy() {
    use object_store::signer::Signer;
    let upstream = S3Server::start(Faults::default());
    upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let s3 = client(&proxy, "vault", CLIENT_SECRET);
    let data = bytes(150_000, 77);
    let path = StorePath::from("shared/presigned.bin");
    rt().block_on(async {
        let ttl = std::time::Duration::from_secs(300);
        let put = s3.signed_url(http::Method::PUT, &path, ttl).await.unwrap();
        let r = reqwest::Client::new()
            .put(put)
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let get = s3.signed_url(http::Method::GET, &path, ttl).await.unwrap();
        let got = reqwest::get(get.clone()).await.unwrap();
        assert!(got.status().is_success());
        assert!(
            got.bytes().await.unwrap() == data,
            "a presigned GET decrypts"
        );
        // A presigned URL whose signature was altered is refused.
        let mut bad = get.clone();
        let q: Vec<(String, String)> = get
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "X-Amz-Signature" {
                    v.chars().rev().collect()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        bad.query_pairs_mut().clear().extend_pairs(q);
        let refused = reqwest::get(bad).await.unwrap();
        assert_eq!(refused.status(), 403);
    });
}

/// Where scripts/services.sh installed aws-cli and boto3.
fn pyclients() -> std::path::PathBuf {
    std::env::var_os("HEADROOM_TEST_PYCLIENTS")
        .map(std::path::PathBuf::from)
        .expect("HEADROOM_TEST_PYCLIENTS is not set: run scripts/test.sh, which installs aws-cli, boto3 and rclone")
}

/// A client command aimed at the proxy with the client credential.
fn client_command(program: impl AsRef<std::ffi::OsStr>, proxy: &Proxy) -> Command {
    let mut c = Command::new(program);
    c.env("AWS_ACCESS_KEY_ID", CLIENT_KEY)
        .env("AWS_SECRET_ACCESS_KEY", CLIENT_SECRET)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("HEADROOM_PROXY", &proxy.url)
        // A CA bundle is for https; rclone refuses one for plain http.
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG_PX_TYPE", "s3")
        .env("RCLONE_CONFIG_PX_PROVIDER", "Other")
        .env("RCLONE_CONFIG_PX_ENDPOINT", &proxy.url)
        .env("RCLONE_CONFIG_PX_ACCESS_KEY_ID", CLIENT_KEY)
        .env("RCLONE_CONFIG_PX_SECRET_ACCESS_KEY", CLIENT_SECRET)
        .env("RCLONE_CONFIG_PX_FORCE_PATH_STYLE", "true")
        .env("RCLONE_CONFIG_PX_REGION", "us-east-1");
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("run a client");
    assert!(
        out.status.success(),
        "{c:?} failed: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn aws_cli_boto3_and_rclone_round_trip_through_the_proxy() {
    let upstream = S3Server::start(Faults::default());
    let bucket = upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let work = tempfile::tempdir().unwrap();
    let data = real_clients_round_trip(&proxy, work.path());
    assert_only_ciphertext(&stored(&bucket), &data);
}

#[test]
fn aws_cli_boto3_and_rclone_round_trip_through_the_proxy_to_moto() {
    let upstream = Moto::start();
    let proxy = start_proxy(&upstream, "64MiB");
    let work = tempfile::tempdir().unwrap();
    let aws_moto = || {
        let mut c = Command::new(pyclients().join("aws"));
        c.envs(upstream.env())
            .env_remove("AWS_CA_BUNDLE")
            .args(["--endpoint-url", &upstream.endpoint]);
        c
    };
    run_ok(aws_moto().args(["s3", "mb", "s3://vault"]));
    let data = real_clients_round_trip(&proxy, work.path());
    // What moto holds, read past the proxy.
    let raw = work.path().join("raw");
    run_ok(aws_moto().args(["s3", "sync", "s3://vault"]).arg(&raw));
    let held = stored(&raw);
    assert!(held.len() >= 8, "moto holds {} objects", held.len());
    assert_only_ciphertext(&held, &data);
}

/// No 32-byte run of `data` in any of `stored`.
fn assert_only_ciphertext(stored: &[(PathBuf, Vec<u8>)], data: &[u8]) {
    for start in (0..data.len() - 32).step_by(1_000_003) {
        let window = &data[start..start + 32];
        for (path, content) in stored {
            assert!(
                memchr::memmem::find(content, window).is_none(),
                "plaintext in {}",
                path.display()
            );
        }
    }
}

/// aws-cli, boto3 and rclone through `proxy` to its bucket `vault`: every
/// round trip byte-identical. Returns the 20 MB file's bytes, for a look
/// at what landed upstream.
fn real_clients_round_trip(proxy: &Proxy, work: &std::path::Path) -> Vec<u8> {
    let bin = pyclients();
    let aws = || {
        let mut c = client_command(bin.join("aws"), proxy);
        c.args(["--endpoint-url", &proxy.url]);
        c
    };
    // aws-cli: a 20 MB file goes up as an 8 MiB-part multipart upload and
    // comes down in parallel ranged GETs.
    let big = work.join("big.bin");
    let data = bytes(20_000_000, 91);
    std::fs::write(&big, &data).unwrap();
    run_ok(
        aws()
            .args(["s3", "cp"])
            .arg(&big)
            .arg("s3://vault/aws/big.bin"),
    );
    let back = work.join("back.bin");
    run_ok(
        aws()
            .args(["s3", "cp", "s3://vault/aws/big.bin"])
            .arg(&back),
    );
    assert!(
        std::fs::read(&back).unwrap() == data,
        "aws s3 cp changed the bytes"
    );
    let listed = run_ok(aws().args(["s3", "ls", "s3://vault/aws/"]));
    assert!(listed.contains(" 20000000 big.bin"), "{listed}");
    let part = work.join("part.bin");
    run_ok(
        aws()
            .args([
                "s3api",
                "get-object",
                "--bucket",
                "vault",
                "--key",
                "aws/big.bin",
            ])
            .args(["--range", "bytes=9000000-9000099"])
            .arg(&part),
    );
    assert!(std::fs::read(&part).unwrap() == data[9_000_000..9_000_100]);
    // aws s3 sync: a tree, then nothing left to copy.
    let tree = work.join("tree");
    write_tree(
        &tree,
        &[("a.txt", 10), ("d/b.bin", 300_000), ("d/e/c.bin", 70_000)],
    );
    // sync uploads a file newer than its copy, and servers keep whole
    // seconds (moto does): files a minute old compare as they should.
    let a_minute_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for f in ["a.txt", "d/b.bin", "d/e/c.bin"] {
        std::fs::File::options()
            .write(true)
            .open(tree.join(f))
            .unwrap()
            .set_modified(a_minute_ago)
            .unwrap();
    }
    run_ok(aws().args(["s3", "sync"]).arg(&tree).arg("s3://vault/tree"));
    let again = run_ok(aws().args(["s3", "sync"]).arg(&tree).arg("s3://vault/tree"));
    assert!(
        !again.contains("upload:"),
        "a second sync copied again: {again}"
    );

    // boto3: put, ranged get, managed upload and download.
    let script = r#"
import boto3, os, sys
s3 = boto3.client("s3", endpoint_url=os.environ["HEADROOM_PROXY"],
                  config=boto3.session.Config(s3={"addressing_style": "path"}))
body = bytes(range(256)) * 400
s3.put_object(Bucket="vault", Key="boto/x", Body=body, Metadata={"owner": "ops"})
r = s3.get_object(Bucket="vault", Key="boto/x", Range="bytes=1000-1099")
assert r["Body"].read() == body[1000:1100], "range"
h = s3.head_object(Bucket="vault", Key="boto/x")
assert h["ContentLength"] == len(body), h["ContentLength"]
assert h["Metadata"] == {"owner": "ops"}, h["Metadata"]
s3.upload_file(sys.argv[1], "vault", "boto/big.bin")
s3.download_file("vault", "boto/big.bin", sys.argv[2])
print("boto3 ok")
"#;
    let boto_back = work.join("boto-back.bin");
    let out = run_ok(
        client_command(bin.join("python"), proxy)
            .args(["-c", script])
            .arg(&big)
            .arg(&boto_back),
    );
    assert!(out.contains("boto3 ok"), "{out}");
    assert!(
        std::fs::read(&boto_back).unwrap() == data,
        "boto3 changed the bytes"
    );

    // rclone: copy, check, and cat with an offset.
    let rclone = || {
        let mut c = client_command("rclone", proxy);
        c.arg("--config").arg(work.join("no-rclone.conf"));
        c
    };
    run_ok(rclone().arg("copy").arg(&tree).arg("px:vault/rclone"));
    run_ok(rclone().arg("check").arg(&tree).arg("px:vault/rclone"));
    let listed = run_ok(rclone().args(["ls", "px:vault/rclone"]));
    assert!(listed.contains("300000 d/b.bin"), "{listed}");
    let cat = rclone()
        .args([
            "cat",
            "px:vault/aws/big.bin",
            "--offset",
            "5000000",
            "--count",
            "1000",
        ])
        .output()
        .unwrap();
    assert!(cat.status.success(), "{}", text(&cat.stderr));
    assert!(
        cat.stdout == data[5_000_000..5_001_000],
        "rclone cat --offset"
    );
    data
}

#[test]
fn copies_are_decrypted_and_encrypted_again_under_a_new_key() {
    let upstream = S3Server::start(Faults::default());
    let bucket = upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let s3 = client(&proxy, "vault", CLIENT_SECRET);
    const MIB: usize = 1 << 20;
    let small = bytes(300_000, 51);
    let big = bytes(10 * MIB + 5, 52);
    rt().block_on(async {
        s3.put(&StorePath::from("src/small"), small.clone().into())
            .await
            .unwrap();
        upload_in_parts(&s3, "src/big", &big, 5 * MIB).await;
        for (from, to, data) in [
            ("src/small", "dst/small", &small),
            ("src/big", "dst/big", &big),
        ] {
            s3.copy(&StorePath::from(from), &StorePath::from(to))
                .await
                .unwrap_or_else(|e| panic!("copy {from}: {e}"));
            let got = s3
                .get(&StorePath::from(to))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert!(got == data.as_slice(), "{to}: the copy changed the bytes");
            assert_eq!(
                s3.head(&StorePath::from(to)).await.unwrap().size,
                data.len() as u64
            );
        }
    });
    // The copy is its own ciphertext: another data key, another object id.
    let a = std::fs::read(bucket.join("src/small")).unwrap();
    let b = std::fs::read(bucket.join("dst/small")).unwrap();
    assert_eq!(a.len(), b.len());
    assert!(
        a[32..1000] != b[32..1000],
        "the copy reuses the source's ciphertext"
    );
}

/// An `aws-chunked` (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) PUT of `data` in
/// chunks of `chunk`, signed as SigV4 says: the seed signature over the
/// headers, then each chunk's signature chained from the previous one.
/// `corrupt` alters the second chunk's bytes after signing.
fn aws_chunked_put(proxy: &Proxy, path: &str, data: &[u8], chunk: usize, corrupt: bool) -> u16 {
    use aws_lc_rs::hmac;
    let hexs = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let sha = |b: &[u8]| hexs(&sha256(b));
    let mac = |k: &[u8], m: &[u8]| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k), m)
            .as_ref()
            .to_vec()
    };
    let now = chrono::Utc::now();
    let (date, day) = (
        now.format("%Y%m%dT%H%M%SZ").to_string(),
        now.format("%Y%m%d").to_string(),
    );
    let scope = format!("{day}/us-east-1/s3/aws4_request");
    let key = [day.as_str(), "us-east-1", "s3", "aws4_request"]
        .iter()
        .fold(format!("AWS4{CLIENT_SECRET}").into_bytes(), |k, part| {
            mac(&k, part.as_bytes())
        });
    let host = proxy.url.trim_start_matches("http://").to_string();
    // The encoded body's length: every chunk's framing and signature.
    let mut sizes: Vec<usize> = data.chunks(chunk).map(<[u8]>::len).collect();
    sizes.push(0);
    let encoded: usize = sizes
        .iter()
        .map(|n| format!("{n:x}").len() + ";chunk-signature=".len() + 64 + 2 + n + 2)
        .sum();
    let headers = [
        ("content-encoding", "aws-chunked".to_string()),
        ("content-length", encoded.to_string()),
        ("host", host.clone()),
        (
            "x-amz-content-sha256",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD".into(),
        ),
        ("x-amz-date", date.clone()),
        ("x-amz-decoded-content-length", data.len().to_string()),
    ];
    let signed_headers = headers
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "PUT\n{path}\n\n{}\n{signed_headers}\nSTREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        headers
            .iter()
            .map(|(k, v)| format!("{k}:{v}\n"))
            .collect::<String>()
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        sha(canonical.as_bytes())
    );
    let mut previous = hexs(&mac(&key, to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={CLIENT_KEY}/{scope}, SignedHeaders={signed_headers}, Signature={previous}"
    );
    let mut body = Vec::with_capacity(encoded);
    let pieces: Vec<&[u8]> = data.chunks(chunk).chain([&[][..]]).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let to_sign = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{date}\n{scope}\n{previous}\n{}\n{}",
            sha(b""),
            sha(piece)
        );
        previous = hexs(&mac(&key, to_sign.as_bytes()));
        body.extend_from_slice(
            format!("{:x};chunk-signature={previous}\r\n", piece.len()).as_bytes(),
        );
        let at = body.len();
        body.extend_from_slice(piece);
        if corrupt && i == 1 {
            body[at] ^= 0xff;
        }
        body.extend_from_slice(b"\r\n");
    }
    assert_eq!(body.len(), encoded);
    let mut request = reqwest::Client::new()
        .put(format!("{}{path}", proxy.url))
        .header("authorization", authorization);
    for (k, v) in &headers {
        if *k != "host" && *k != "content-length" {
            request = request.header(*k, v);
        }
    }
    rt().block_on(async { request.body(body).send().await.unwrap().status().as_u16() })
}

#[test]
fn aws_chunked_uploads_are_checked_chunk_by_chunk() {
    let upstream = S3Server::start(Faults::default());
    let bucket = upstream.bucket("vault");
    let proxy = start_proxy(&upstream, "64MiB");
    let data = bytes(300_000, 81);
    assert_eq!(
        aws_chunked_put(&proxy, "/vault/chunked.bin", &data, 65536, false),
        200
    );
    let s3 = client(&proxy, "vault", CLIENT_SECRET);
    let got = rt().block_on(async {
        s3.get(&StorePath::from("chunked.bin"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    assert!(got == data, "an aws-chunked upload round trips");
    // The request's framing is not the object's encoding.
    let encoding = rt().block_on(async {
        signed(&proxy, "HEAD", "/vault/chunked.bin", Vec::new())
            .await
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string())
    });
    assert_eq!(encoding, None, "the object kept the aws-chunked encoding");
    // A chunk whose bytes do not match its signature: refused, and nothing
    // is published.
    let status = aws_chunked_put(&proxy, "/vault/forged-chunk.bin", &data, 65536, true);
    assert!((400..500).contains(&status), "answered {status}");
    assert!(!bucket.join("forged-chunk.bin").exists());
}

/// A fixed subset of the Ceph s3-tests (vendored, unmodified), one or more
/// tests per operation the proxy serves: listings, reads and writes,
/// metadata, ranges, conditions, multipart (UploadPartCopy included),
/// copies and deletes. The full applicable run, and what differs from
/// moto directly and why, is `scripts/s3-tests.sh`.
const S3TESTS_SUBSET: &[&str] = &[
    "test_headers.py::test_object_create_bad_md5_none",
    "test_headers.py::test_object_create_bad_expect_mismatch",
    "test_headers.py::test_object_create_bad_contenttype_invalid",
    "test_headers.py::test_bucket_create_bad_expect_mismatch",
    "test_s3.py::test_bucket_list_empty",
    "test_s3.py::test_bucket_list_distinct",
    "test_s3.py::test_bucket_list_many",
    "test_s3.py::test_bucket_listv2_many",
    "test_s3.py::test_bucket_list_delimiter_basic",
    "test_s3.py::test_bucket_listv2_delimiter_prefix",
    "test_s3.py::test_bucket_list_delimiter_empty",
    "test_s3.py::test_bucket_listv2_encoding_basic",
    "test_s3.py::test_bucket_listv2_fetchowner_notempty",
    "test_s3.py::test_bucket_list_prefix_delimiter_basic",
    "test_s3.py::test_bucket_list_maxkeys_one",
    "test_s3.py::test_bucket_listv2_startafter_after_list",
    "test_s3.py::test_bucket_list_special_prefix",
    "test_s3.py::test_bucket_create_delete",
    "test_s3.py::test_bucket_delete_nonempty",
    "test_s3.py::test_bucket_head_notexist",
    "test_s3.py::test_bucket_notexist",
    "test_s3.py::test_object_read_not_exist",
    "test_s3.py::test_object_write_to_nonexist_bucket",
    "test_s3.py::test_object_write_file",
    "test_s3.py::test_object_set_get_metadata_none_to_good",
    "test_s3.py::test_object_metadata_replaced_on_put",
    "test_s3.py::test_object_raw_response_headers",
    "test_s3.py::test_object_raw_authenticated_object_gone",
    "test_s3.py::test_ranged_request_response_code",
    "test_s3.py::test_ranged_big_request_response_code",
    "test_s3.py::test_ranged_request_skip_leading_bytes_response_code",
    "test_s3.py::test_ranged_request_return_trailing_bytes_response_code",
    "test_s3.py::test_ranged_request_invalid_range",
    "test_s3.py::test_ranged_request_empty_object",
    "test_s3.py::test_get_object_ifmatch_failed",
    "test_s3.py::test_get_object_ifnonematch_good",
    "test_s3.py::test_get_object_ifmodifiedsince_failed",
    "test_s3.py::test_get_object_ifunmodifiedsince_good",
    "test_s3.py::test_put_object_ifmatch_failed",
    "test_s3.py::test_multi_object_delete",
    "test_s3.py::test_multi_objectv2_delete",
    "test_s3.py::test_multipart_upload",
    "test_s3.py::test_multipart_upload_small",
    "test_s3.py::test_multipart_upload_contents",
    "test_s3.py::test_multipart_upload_incorrect_etag",
    "test_s3.py::test_multipart_upload_missing_part",
    "test_s3.py::test_multipart_upload_size_too_small",
    "test_s3.py::test_multipart_upload_overwrite_existing_object",
    "test_s3.py::test_abort_multipart_upload",
    "test_s3.py::test_abort_multipart_upload_not_found",
    "test_s3.py::test_multipart_copy_small",
    "test_s3.py::test_multipart_copy_multiple_sizes",
    "test_s3.py::test_multipart_copy_special_names",
    "test_s3.py::test_object_copy_same_bucket",
    "test_s3.py::test_object_copy_diff_bucket",
    "test_s3.py::test_object_copy_to_itself",
    "test_s3.py::test_object_copy_replacing_metadata",
    "test_s3.py::test_object_copy_retaining_metadata",
    "test_s3.py::test_object_copy_key_not_found",
    "test_s3.py::test_object_copy_zero_size",
    "test_s3.py::test_atomic_dual_write_4mb",
    "test_s3.py::test_object_write_cache_control",
    "test_s3.py::test_object_write_expires",
    "test_s3.py::test_object_head_zero_bytes",
    "test_s3.py::test_object_write_read_update_read_delete",
    "test_s3.py::test_bucket_get_location",
    "test_s3.py::test_multipart_copy_without_range",
    "test_s3.py::test_object_presigned_put_object_with_acl",
];

/// The s3-tests' three users as the proxy's client credentials.
fn s3tests_key_file(file: &std::path::Path) {
    write_key_file(file);
    let mut keys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    keys["credentials"] = S3TESTS_USERS
        .iter()
        .map(|(_, key, secret)| serde_json::json!({"access_key": key, "secret_key": secret}))
        .collect();
    std::fs::write(file, serde_json::to_vec(&keys).unwrap()).unwrap();
}

#[test]
fn a_subset_of_the_ceph_s3_tests_passes_through_the_proxy_as_directly_against_moto() {
    let work = tempfile::tempdir().unwrap();
    // Directly: the subset is what moto itself passes.
    let direct = Moto::start();
    let run = run_s3tests(&direct.endpoint, S3TESTS_SUBSET, work.path());
    assert_eq!(
        run.passed.len(),
        S3TESTS_SUBSET.len(),
        "directly against moto:\n{}",
        run.output
    );
    drop(direct);
    // Through the proxy, to a fresh moto.
    let upstream = Moto::start();
    let file = work.path().join("keys.json");
    s3tests_key_file(&file);
    let proxy = start_proxy_with_keys(&upstream, "64MiB", &file, &[]);
    let run = run_s3tests(&proxy.url, S3TESTS_SUBSET, work.path());
    let failed: Vec<&&str> = S3TESTS_SUBSET
        .iter()
        .filter(|t| !run.passed.iter().any(|p| p == **t))
        .collect();
    assert!(
        failed.is_empty(),
        "through the proxy, {} of {} failed: {failed:?}\n{}",
        failed.len(),
        S3TESTS_SUBSET.len(),
        run.output
    );
}
