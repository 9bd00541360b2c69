//! Honest reservations of the proxy: for each operation, the proxy (run in
//! this process, under the counting allocator) never holds more heap than
//! its governor reserved at the peak. The upstream S3 server and the client
//! (`headroom copy`, which makes the PUTs, multipart uploads, GETs and
//! listings, and aws-cli, which copies server-side) are other processes, so
//! only the proxy is counted.
//!
//! One test function: measurements in one process must not overlap.

mod common;

use std::sync::Arc;

use common::*;
use headroom::proxy::keys::KeyFile;
use headroom::store::bucket::S3Config;
use headroom_governor::{CountingAlloc, Governor, MemoryProbe};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::system();

const KEY: &str = "reservations";
const SECRET: &str = "reservations-secret-0123";

#[test]
fn every_proxy_operation_stays_within_its_reservation() {
    let upstream = S3Server::start(Faults::default());
    upstream.bucket("vault");
    // SAFETY: set before any thread of this process reads the environment.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    }
    let keys = Arc::new(KeyFile::generate(KEY, SECRET).unwrap().check().unwrap());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_tree(&src, &[("small.bin", 3 << 20), ("big.bin", 20 << 20)]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_env = |proxy: &str| {
        vec![
            ("AWS_ACCESS_KEY_ID", KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_ENDPOINT_URL", proxy.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    };
    let mut report = Vec::new();
    // Each operation against a fresh proxy, so that its governor's peak is
    // this operation's alone.
    let (src_arg, back) = (src.to_string_lossy().into_owned(), work.path().join("back"));
    let back_arg = back.to_string_lossy().into_owned();
    let copies = work.path().join("copies");
    let copies_arg = copies.to_string_lossy().into_owned();
    let dst = "s3://vault/data".to_string();
    let copy = |extra: &[&str], from: &str, to: &str| -> Vec<String> {
        let mut a = vec!["copy".to_string()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(from.to_string());
        a.push(to.to_string());
        a
    };
    for (name, args) in [
        (
            "PUT (single PUTs)",
            copy(&["--include", "small.bin"], &src_arg, &dst),
        ),
        (
            "multipart upload",
            copy(&["--include", "big.bin"], &src_arg, &dst),
        ),
        ("GET and listing", copy(&[], &dst, &back_arg)),
        // aws-cli copies within S3 server-side: CopyObject for the small
        // object, UploadPartCopy in 8 MiB ranges for the big one.
        (
            "CopyObject and UploadPartCopy",
            [
                "aws",
                "s3",
                "cp",
                "--recursive",
                "s3://vault/data",
                "s3://vault/copied",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "GET of the copies",
            copy(&[], "s3://vault/copied", &copies_arg),
        ),
        (
            "HeadObject",
            [
                "aws",
                "s3api",
                "head-object",
                "--bucket",
                "vault",
                "--key",
                "data/small.bin",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "DeleteObjects",
            [
                "aws",
                "s3api",
                "delete-objects",
                "--bucket",
                "vault",
                "--delete",
                r#"{"Objects":[{"Key":"copied/small.bin"},{"Key":"copied/big.bin"}]}"#,
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "ListObjectsV2 and DeleteObject",
            ["aws", "s3", "rm", "--recursive", "s3://vault/data"]
                .map(String::from)
                .to_vec(),
        ),
    ] {
        let (measured, reserved) = rt.block_on(async {
            let gov = Governor::new(256 << 20);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let up = headroom::proxy::upstream::Upstream::new(&S3Config {
                endpoint: Some(upstream.endpoint.clone()),
                region: Some("us-east-1".into()),
                ..S3Config::default()
            })
            .unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(headroom::proxy::serve(
                listener,
                64,
                up,
                keys.clone(),
                gov.clone(),
                MemoryProbe::detect(),
                async {
                    let _ = stopped.await;
                },
            ));
            let base = headroom_governor::alloc::heap_bytes().unwrap();
            headroom_governor::alloc::reset_peak();
            let env = client_env(&url);
            let out = tokio::task::spawn_blocking(move || {
                if args[0] == "aws" {
                    aws_cli(&args[1..], &env)
                } else {
                    let a: Vec<&str> = args.iter().map(String::as_str).collect();
                    headroom(&a, &env)
                }
            })
            .await
            .unwrap();
            assert_ok(&out);
            let peak = headroom_governor::alloc::peak_bytes();
            let _ = stop.send(());
            let _ = server.await;
            (peak.saturating_sub(base), gov.stats().peak_reserved)
        });
        report.push(format!(
            "{name}: heap peak {:.2} MiB, reserved peak {:.2} MiB",
            measured as f64 / 1048576.0,
            reserved as f64 / 1048576.0
        ));
        assert!(
            measured <= reserved,
            "{name}: the proxy held {measured} bytes of heap, more than the {reserved} it reserved"
        );
    }
    eprintln!("{}", report.join("\n"));
    // The round trip is whole, and so are the server-side copies.
    assert_eq!(tree(&src), tree(&back));
    assert_eq!(tree(&src), tree(&copies));
}

/// aws-cli (installed by scripts/services.sh) aimed at the proxy.
fn aws_cli(args: &[String], env: &[(&str, String)]) -> std::process::Output {
    let bin = std::env::var_os("HEADROOM_TEST_PYCLIENTS")
        .map(std::path::PathBuf::from)
        .expect("HEADROOM_TEST_PYCLIENTS is not set: run scripts/test.sh, which installs aws-cli");
    let endpoint = env
        .iter()
        .find(|(k, _)| *k == "AWS_ENDPOINT_URL")
        .map(|(_, v)| v.clone())
        .unwrap();
    let mut c = std::process::Command::new(bin.join("aws"));
    c.args(["--endpoint-url", &endpoint])
        .args(args)
        .env_remove("AWS_CA_BUNDLE")
        .env("AWS_DEFAULT_REGION", "us-east-1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run aws")
}
