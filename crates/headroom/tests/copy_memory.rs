//! The memory claim of `headroom copy`, measured: a child process copying
//! three 300 MiB files and thousands of small ones to S3 and back peaks at
//! no more than its budget above the RSS of a run that copies nothing (the
//! documented base), for a 64 MiB and a 32 MiB budget alike. The file
//! sizes do not show in the peak.

mod common;

use common::*;

const MIB: u64 = 1 << 20;
const BIG: u64 = 300 * MIB;
const SMALL_FILES: usize = 3000;

fn dataset(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..3 {
        // Sparse: reading still moves every byte through headroom's buffers.
        let f = std::fs::File::create(dir.join(format!("big-{i}.bin"))).unwrap();
        f.set_len(BIG + i).unwrap();
    }
    for i in 0..SMALL_FILES {
        let sub = dir.join(format!("small/{:02}", i % 30));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            sub.join(format!("f{i}.txt")),
            bytes(1 + (i * 37) % 8000, i as u64),
        )
        .unwrap();
    }
}

fn sizes(dir: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    visible_files(dir)
        .map(|(rel, e)| (rel, e.metadata().unwrap().len()))
        .collect()
}

#[test]
fn peak_rss_stays_within_the_budget_whatever_the_file_sizes() {
    let s3 = S3Server::start(Faults::default());
    let bucket = s3.bucket("mem");
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    dataset(&src);
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let want = sizes(&src);

    let mut report = Vec::new();
    for budget in ["64MiB", "32MiB"] {
        let budget_bytes = headroom_governor::parse_size(budget).unwrap();
        // What the process needs before it moves a byte: runtime, client,
        // code pages. The budget is for everything above that.
        let base = headroom_measured(
            &[
                "--memory",
                budget,
                "copy",
                empty.to_str().unwrap(),
                &format!("s3://mem/base-{budget}"),
            ],
            &env,
        );
        assert!(base.success, "{}", base.stderr);
        // wait4's peak RSS includes this process's RSS when the child was
        // spawned (the kernel keeps the pre-exec high-water mark), so it is
        // the child's own only while this process stays smaller.
        let (_, own_peak) = headroom_governor::probe::process_memory(std::process::id());
        let own_peak = own_peak.expect("VmHWM of the test process");
        assert!(
            own_peak < base.peak_rss,
            "the test process ({own_peak} B) must stay below the child's base RSS ({} B)",
            base.peak_rss
        );
        let run = headroom_measured(
            &[
                "--memory",
                budget,
                "--log-format",
                "json",
                "copy",
                "--progress-interval",
                "500ms",
                src.to_str().unwrap(),
                &format!("s3://mem/{budget}"),
            ],
            &env,
        );
        assert!(
            run.success,
            "stdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        assert_eq!(
            sizes(&bucket.join(budget)),
            want,
            "{budget}: every object arrives whole"
        );
        assert!(s3.incomplete_uploads().is_empty());
        report.push(format!(
            "--memory {budget}: base RSS {:.1} MiB, peak RSS {:.1} MiB, above base {:.1} MiB",
            base.peak_rss as f64 / MIB as f64,
            run.peak_rss as f64 / MIB as f64,
            run.peak_rss.saturating_sub(base.peak_rss) as f64 / MIB as f64,
        ));
        eprintln!("{}", report.last().unwrap());
        assert!(
            run.peak_rss <= base.peak_rss + budget_bytes,
            "--memory {budget}: peak RSS {} B exceeds base {} B + budget {budget_bytes} B",
            run.peak_rss,
            base.peak_rss
        );
        // Progress records carry the memory telemetry, every interval.
        let records: Vec<serde_json::Value> = run
            .stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "progress")
            .collect();
        assert!(
            records.len() >= 2,
            "{budget}: progress records:\n{}",
            run.stderr
        );
        for r in &records {
            for field in [
                "files_done",
                "bytes_done",
                "files_per_second",
                "bytes_per_second",
                "rss_mb",
                "heap_mb",
                "reserved_mb",
                "budget_mb",
                "in_flight",
                "mb_per_1k_files",
            ] {
                assert!(r.get(field).is_some(), "{budget}: {field} missing from {r}");
            }
            let (reserved, limit) = (r["reserved_mb"].as_f64(), r["budget_mb"].as_f64());
            assert!(reserved <= limit, "{budget}: reserved above budget in {r}");
        }
        assert!(records.iter().any(|r| r["bytes_done"].as_u64() > Some(0)));
        // The run did real work within that: big files went in parts.
        assert!(
            run.peak_rss > base.peak_rss + 5 * MIB,
            "{}",
            report.last().unwrap()
        );

        // And back: S3 -> local under the same budget.
        let back = dir.path().join(format!("back-{budget}"));
        let down = headroom_measured(
            &[
                "--memory",
                budget,
                "copy",
                &format!("s3://mem/{budget}"),
                back.to_str().unwrap(),
            ],
            &env,
        );
        assert!(
            down.success,
            "stdout:\n{}\nstderr:\n{}",
            down.stdout, down.stderr
        );
        assert_eq!(
            sizes(&back),
            want,
            "{budget}: every object comes back whole"
        );
        report.push(format!(
            "--memory {budget}: S3 -> local peak RSS {:.1} MiB, above base {:.1} MiB",
            down.peak_rss as f64 / MIB as f64,
            down.peak_rss.saturating_sub(base.peak_rss) as f64 / MIB as f64,
        ));
        eprintln!("{}", report.last().unwrap());
        assert!(
            down.peak_rss <= base.peak_rss + budget_bytes,
            "--memory {budget}: download peak RSS {} B exceeds base {} B + budget {budget_bytes} B",
            down.peak_rss,
            base.peak_rss
        );
        std::fs::remove_dir_all(&back).unwrap();
    }
}
