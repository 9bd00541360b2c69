//! Every budget either runs a job or refuses it at start: never a hang.
//!
//! A job holds fixed buffers (a listing queue, batches, threads) and then
//! asks for per-object buffers; at small budgets that used to wait forever
//! for its own fixed reservation. These properties run the real binary
//! over budgets from 0 to 64 MiB and random concurrencies, for copy and
//! purge, local and S3, and require, within a time bound, either success
//! with the right result or a refusal that names the budget it needs.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
/// Far more than any of these small jobs needs; reaching it is a hang.
const HANG: Duration = Duration::from_secs(60);

/// Files around the sizes that matter: empty, small, a chunk, more than
/// one S3 part at the smallest part size.
fn dataset() -> Vec<(&'static str, usize)> {
    vec![
        ("empty", 0),
        ("a/small.txt", 1000),
        ("a/b/one-mib.bin", MIB as usize),
        ("c/six-mib.bin", 6 * MIB as usize),
    ]
}

/// How a run ended.
#[derive(Debug)]
enum Outcome {
    Completed,
    Refused(String),
}

/// Runs headroom, killing it after [`HANG`]; a success, or a failure whose
/// message says which budget it needs (or contains one of `refusals`).
/// Anything else fails the property.
fn run(
    args: &[String],
    env: &[(&str, String)],
    refusals: &[&str],
) -> Result<Outcome, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom"));
    cmd.args(args)
        .env_remove("HEADROOM_MEMORY")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TestCaseError::fail(format!(
                "headroom {args:?} hung for {HANG:?}; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    if status.success() {
        return Ok(Outcome::Completed);
    }
    let named = (stderr.contains("too small") && stderr.contains("--memory"))
        || refusals.iter().any(|r| stderr.contains(r));
    prop_assert!(
        named,
        "headroom {args:?} failed without naming the budget it needs ({status:?}):\n{stderr}\nstdout:\n{}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    prop_assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(Outcome::Refused(stderr))
}

fn budget() -> impl Strategy<Value = u64> {
    // Mostly the small budgets where fixed buffers crowd out the rest.
    prop_oneof![0..2 * MIB, 0..12 * MIB, 0..64 * MIB]
}

fn copy_args(src: &str, dst: &str, budget: u64, concurrency: Option<usize>) -> Vec<String> {
    let mut a: Vec<String> = ["--memory", &budget.to_string(), "copy", src, dst]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(c) = concurrency {
        a.extend(["--concurrency".into(), c.to_string()]);
    }
    a
}

/// Checks a copy's outcome: a completed one is byte-identical; and from
/// 16 MiB up, every one of these copies must complete.
fn check_copy(outcome: Outcome, budget: u64, src: &Path, dst: &Path) -> Result<(), TestCaseError> {
    match outcome {
        Outcome::Completed => prop_assert_eq!(tree(src), tree(dst)),
        Outcome::Refused(why) => prop_assert!(
            budget < 16 * MIB,
            "refused at {budget} bytes, enough for any of these copies: {why}"
        ),
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 10,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn local_copies_complete_or_refuse(budget in budget(), concurrency in proptest::option::of(1usize..200)) {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        write_tree(&src, &dataset());
        let args = copy_args(src.to_str().unwrap(), dst.to_str().unwrap(), budget, concurrency);
        let outcome = run(&args, &[], &[])?;
        check_copy(outcome, budget, &src, &dst)?;
    }

    #[test]
    fn s3_copies_complete_or_refuse(
        budget in budget(),
        concurrency in proptest::option::of(1usize..200),
        direction in 0..3u8,
    ) {
        let server = S3Server::start(Faults::default());
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("local");
        let restored = dir.path().join("restored");
        let src_bucket = server.bucket("src");
        server.bucket("dst");
        let (args, src_tree, dst_tree) = match direction {
            // local -> S3
            0 => {
                write_tree(&local, &dataset());
                (copy_args(local.to_str().unwrap(), "s3://dst/p", budget, concurrency), local.clone(), server.root.path().join("dst/p"))
            }
            // S3 -> local
            1 => {
                write_tree(&src_bucket.join("p"), &dataset());
                (copy_args("s3://src/p/", restored.to_str().unwrap(), budget, concurrency), src_bucket.join("p"), restored.clone())
            }
            // S3 -> S3
            _ => {
                write_tree(&src_bucket.join("p"), &dataset());
                (copy_args("s3://src/p/", "s3://dst/q", budget, concurrency), src_bucket.join("p"), server.root.path().join("dst/q"))
            }
        };
        let outcome = run(&args, &server.env(), &[])?;
        check_copy(outcome, budget, &src_tree, &dst_tree)?;
        prop_assert!(server.incomplete_uploads().is_empty(), "{:?}", server.incomplete_uploads());
    }

    #[test]
    fn local_purges_complete_or_refuse(
        budget in budget(),
        concurrency in proptest::option::of(prop_oneof![1usize..64, 900usize..3000]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(10 * 86400);
        for i in 0..300 {
            let p = dir.path().join(format!("d{}/e{}/f{i}", i % 7, i % 3));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"old").unwrap();
            filetime::set_file_mtime(&p, filetime::FileTime::from_system_time(old)).unwrap();
        }
        std::fs::write(dir.path().join("new"), b"new").unwrap();
        let mut args: Vec<String> = ["--memory", &budget.to_string(), "purge", dir.path().to_str().unwrap(), "--older-than", "1d"]
            .iter().map(|s| s.to_string()).collect();
        if let Some(c) = concurrency {
            args.extend(["--concurrency".into(), c.to_string()]);
        }
        // Too many threads is refused by its own flag.
        let too_many = concurrency.is_some_and(|c| c > 1024);
        let refusals: &[&str] = if too_many { &["metadata threads a purge runs at most"] } else { &[] };
        match run(&args, &[], refusals)? {
            Outcome::Completed => {
                prop_assert!(!too_many, "{concurrency:?} threads were started");
                let left: Vec<_> = visible_files(dir.path()).map(|(rel, _)| rel).collect();
                prop_assert_eq!(left, vec!["new".to_string()]);
            }
            Outcome::Refused(why) => prop_assert!(
                budget < 16 * MIB || concurrency.is_some_and(|c| c > 64),
                "refused with the default concurrency at {budget} bytes: {why}"
            ),
        }
    }

    #[test]
    fn s3_purges_complete_or_refuse(budget in budget(), concurrency in proptest::option::of(1usize..64)) {
        let server = S3Server::start(Faults::default());
        let bucket = server.bucket("logs");
        let old = SystemTime::now() - Duration::from_secs(10 * 86400);
        for i in 0..120 {
            let p = bucket.join(format!("p/{}/k{i}", i % 5));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"old").unwrap();
            filetime::set_file_mtime(&p, filetime::FileTime::from_system_time(old)).unwrap();
        }
        let mut args: Vec<String> = ["--memory", &budget.to_string(), "purge", "s3://logs/p", "--older-than", "1d"]
            .iter().map(|s| s.to_string()).collect();
        if let Some(c) = concurrency {
            args.extend(["--concurrency".into(), c.to_string()]);
        }
        match run(&args, &server.env(), &[])? {
            Outcome::Completed => {
                prop_assert_eq!(visible_files(&bucket).count(), 0);
            }
            Outcome::Refused(why) => prop_assert!(budget < 16 * MIB, "refused at {budget} bytes: {why}"),
        }
    }
}
