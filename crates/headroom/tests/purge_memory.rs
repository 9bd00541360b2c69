//! The memory claim of `headroom purge`, measured: a child process purging
//! 50,000 and 500,000 files, in one flat directory and in a deep tree,
//! peaks under the same small bound, and the memory per 1,000 files it
//! reports falls as the tree grows.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

const BOUND: u64 = 32 << 20;

/// `n` empty files, every other one 60 days old. Flat: one directory.
/// Deep: 10 x 10 x 10 directories four levels down, plus one chain 200
/// levels deep. Returns how many are old.
fn tree(root: &Path, n: usize, deep: bool) -> u64 {
    let old = SystemTime::now() - Duration::from_secs(60 * 86_400);
    let mut old_count = 0;
    let chain: std::path::PathBuf = (0..200).map(|i| format!("c{i}")).collect();
    for i in 0..n {
        let dir = if !deep {
            root.to_path_buf()
        } else if i % 100 == 0 {
            root.join(&chain)
        } else {
            root.join(format!("a{}/b{}/c{}/d", i % 10, i / 10 % 10, i / 100 % 10))
        };
        if i < 1000 || !dir.exists() {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let f = std::fs::File::create(dir.join(format!("file-{i}.log"))).unwrap();
        if i % 2 == 0 {
            f.set_modified(old).unwrap();
            old_count += 1;
        }
    }
    old_count
}

#[test]
fn peak_rss_is_the_same_small_bound_for_50k_and_500k_files_flat_and_deep() {
    let mut report = Vec::new();
    for deep in [false, true] {
        let mut per_1k = Vec::new();
        for n in [50_000, 500_000] {
            let dir = tempfile::tempdir().unwrap();
            let old = tree(dir.path(), n, deep);
            let run = headroom_measured(
                &[
                    "--memory",
                    "32MiB",
                    "--log-format",
                    "json",
                    "purge",
                    "--older-than",
                    "30d",
                    "--progress-interval",
                    "100ms",
                    dir.path().to_str().unwrap(),
                ],
                &[],
            );
            let shape = if deep { "deep" } else { "flat" };
            assert!(run.success, "{shape} {n}: {}\n{}", run.stdout, run.stderr);
            let summary: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
            assert_eq!(summary["files_deleted"].as_u64(), Some(old), "{summary}");
            assert_eq!(
                summary["files_scanned"].as_u64(),
                Some(n as u64),
                "{summary}"
            );
            let last = run
                .stderr
                .lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["type"] == "progress" && v["files_scanned"].as_u64() > Some(0))
                .unwrap_or_else(|| panic!("{shape} {n}: no progress record:\n{}", run.stderr));
            for key in [
                "files_scanned",
                "files_deleted",
                "bytes_freed",
                "files_per_second",
                "rss_mb",
            ] {
                assert!(last.get(key).is_some(), "{key} missing from {last}");
            }
            let mb_per_1k = last["mb_per_1k_files"].as_f64().unwrap();
            per_1k.push(mb_per_1k);
            report.push(format!(
                "{shape} {n:>7} files: peak RSS {:.1} MiB, last record {mb_per_1k:.4} MB per 1k files at {} scanned",
                run.peak_rss as f64 / 1048576.0,
                last["files_scanned"]
            ));
            eprintln!("{}", report.last().unwrap());
            assert!(
                run.peak_rss < BOUND,
                "{shape} {n}: peak RSS {} B is over {BOUND} B",
                run.peak_rss
            );
        }
        assert!(
            per_1k[1] < per_1k[0],
            "memory per 1k files must fall as the tree grows: {per_1k:?}"
        );
    }
}
