//! Honest reservations: each transfer kind, run for real against the
//! loopback S3 server under the counting allocator, never holds more heap
//! than the governor reserved for it (the footprint functions of
//! `transfer.rs`). The server runs in its own process; everything headroom
//! does, including its HTTP client and the blocking threads of file I/O, is
//! counted.
//!
//! One test function: measurements in one process must not overlap, and
//! the S3 credentials are set in the environment before any thread reads it.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use common::*;
use headroom::store::bucket::S3Config;
use headroom::store::{Location, Store};
use headroom::transfer::{Kind, TransferConfig, Transfers, footprint, kind_for};
use headroom_governor::{CountingAlloc, Governor};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::system();

const MIB: u64 = 1 << 20;

struct Case {
    name: &'static str,
    src_s3: bool,
    dst_s3: bool,
    size: u64,
    expect: fn(Kind) -> bool,
}

fn store(s3: bool, cfg: &S3Config, bucket: &str, local_root: &std::path::Path) -> Store {
    let location = if s3 {
        Location::Bucket {
            cloud: headroom::store::Cloud::S3,
            bucket: bucket.to_string(),
            prefix: String::new(),
            dir: true,
        }
    } else {
        Location::Local(local_root.to_path_buf())
    };
    Store::open_prefix(&location, cfg).expect("store")
}

#[test]
fn every_transfer_kind_stays_within_its_reservation() {
    let server = S3Server::start(Faults::default());
    // SAFETY: this binary's only test sets these before it starts any
    // thread that reads the environment.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    }
    let src_bucket = server.bucket("src");
    server.bucket("dst");
    let dir = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir_all(&src_dir).unwrap();
    std::fs::create_dir_all(&dst_dir).unwrap();

    let cases = [
        Case {
            name: "local -> local (kernel)",
            src_s3: false,
            dst_s3: false,
            size: 24 * MIB + 3,
            expect: |k| k == Kind::Kernel,
        },
        Case {
            name: "S3 -> local file",
            src_s3: true,
            dst_s3: false,
            size: 24 * MIB + 3,
            expect: |k| matches!(k, Kind::ToLocal { .. }),
        },
        Case {
            name: "local -> single PUT",
            src_s3: false,
            dst_s3: true,
            size: 4 * MIB + 5,
            expect: |k| k == Kind::SinglePut,
        },
        Case {
            name: "S3 -> single PUT",
            src_s3: true,
            dst_s3: true,
            size: 4 * MIB + 5,
            expect: |k| k == Kind::SinglePut,
        },
        Case {
            name: "local -> multipart",
            src_s3: false,
            dst_s3: true,
            size: 31 * MIB + 7,
            expect: |k| matches!(k, Kind::Multipart { .. }),
        },
        Case {
            name: "S3 -> multipart",
            src_s3: true,
            dst_s3: true,
            size: 31 * MIB + 7,
            expect: |k| matches!(k, Kind::Multipart { .. }),
        },
    ];

    let s3cfg = S3Config {
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        request_timeout: Duration::from_secs(60),
        request_retries: 2,
        max_idle_connections: 8,
        ..S3Config::default()
    };
    let cfg = TransferConfig {
        part_size: Some(5 * MIB),
        // The streamed kinds are measured; S3 -> S3 would be copied by S3.
        server_side: false,
        ..TransferConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut report = Vec::new();
    let mut results = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let key = format!("object-{i}.bin");
        let data = bytes(case.size as usize, i as u64 + 7);
        if case.src_s3 {
            std::fs::write(src_bucket.join(&key), &data).unwrap();
        } else {
            std::fs::write(src_dir.join(&key), &data).unwrap();
        }
        drop(data);

        let (peak_heap, peak_reserved, kind) = rt.block_on(async {
            // Fresh clients: connection set-up is part of what is measured.
            let src = store(case.src_s3, &s3cfg, "src", &src_dir);
            let dst = store(case.dst_s3, &s3cfg, "dst", &dst_dir);
            let entry = src.stat(&key).await.unwrap().expect("source object");
            // Budget room for every part the transfer may add.
            let gov = Governor::new(256 * MIB);
            let kind = kind_for(
                &src,
                &dst,
                src.read_overhead(),
                &entry,
                gov.working_budget(),
                &cfg,
            );
            assert!(
                (case.expect)(kind),
                "{}: unexpected kind {kind:?}",
                case.name
            );
            let bytes_done = Arc::new(AtomicU64::new(0));
            let (_keep, cancel) = tokio::sync::watch::channel(false);
            let transfers = Transfers {
                src: &src,
                dst: &dst,
                gov: &gov,
                cfg: &cfg,
                bytes_done: &bytes_done,
                cancel: &cancel,
            };
            let (result, peak_heap) = headroom_governor::alloc::measure_peak_async(async {
                let permit = gov
                    .acquire(
                        footprint(kind, entry.size, src.read_overhead()),
                        "copy.object",
                    )
                    .await;
                transfers.copy_object(&entry, kind, permit).await
            })
            .await;
            result.unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(gov.reserved(), 0, "{}: permits leaked", case.name);
            (peak_heap, gov.stats().peak_reserved, kind)
        });

        let copied = if case.dst_s3 {
            server.bucket("dst").join(&key)
        } else {
            dst_dir.join(&key)
        };
        let want = bytes(case.size as usize, i as u64 + 7);
        assert!(
            std::fs::read(&copied).unwrap() == want,
            "{}: the copy differs",
            case.name
        );
        report.push(format!(
            "{:<22} {:?}: peak heap {:>9} B, reserved {:>9} B ({:.0}%)",
            case.name,
            kind,
            peak_heap,
            peak_reserved,
            100.0 * peak_heap as f64 / peak_reserved as f64
        ));
        results.push((case.name, kind, peak_heap, peak_reserved));
    }
    eprintln!("{}", report.join("\n"));
    for (name, kind, peak_heap, peak_reserved) in results {
        if kind == Kind::Kernel {
            // 24 MiB copied: the bytes stayed in the kernel.
            assert!(
                peak_heap < 256 << 10,
                "{name}: peak heap {peak_heap} B: the bytes went through a buffer"
            );
        } else {
            assert!(
                peak_heap >= MIB,
                "{name}: peak heap {peak_heap} B is too small to have measured the transfer"
            );
        }
        assert!(
            peak_heap <= peak_reserved,
            "{name}: heap peaked at {peak_heap} B but only {peak_reserved} B were reserved"
        );
    }
}
