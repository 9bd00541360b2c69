//! `headroom copy` end to end, against a real S3 server on loopback.

mod common;

use common::*;

const MIB: usize = 1 << 20;
const PART: usize = 5 * MIB;

/// Sizes around the edges that matter: empty, one byte, chunk and part
/// boundaries, several parts; names with spaces and non-ASCII characters.
fn edge_dataset() -> Vec<(&'static str, usize)> {
    vec![
        ("empty", 0),
        ("one-byte", 1),
        ("dir/chunk-exact.bin", MIB),
        ("dir/chunk-plus-one.bin", MIB + 1),
        ("dir/sub/part-minus-one.bin", PART - 1),
        ("dir/sub/part-exact.bin", PART),
        ("dir/sub/part-plus-one.bin", PART + 1),
        ("multi/three-parts.bin", 2 * PART + 12345),
        ("with space/ñame é ü.txt", 100),
        ("日本語/ファイル.dat", 4097),
    ]
}

fn copy(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut all = vec!["copy", "--part-size", "5MiB", "--memory", "64MiB"];
    all.extend_from_slice(args);
    headroom(&all, env)
}

#[test]
fn local_to_local_is_byte_identical_then_skips_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    write_tree(&src, &edge_dataset());
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());

    let o = copy(&[s, d], &[]);
    assert_ok(&o);
    assert_eq!(tree(&src), tree(&dst));
    assert!(summary(&o).contains("copied 10 objects"), "{}", summary(&o));

    let again = copy(&[s, d], &[]);
    assert_ok(&again);
    assert!(
        summary(&again).contains("copied 0 objects"),
        "{}",
        summary(&again)
    );
    assert!(
        summary(&again).contains("skipped 10 up to date"),
        "{}",
        summary(&again)
    );

    // A changed file is copied again, the rest skipped.
    std::fs::write(src.join("one-byte"), b"Z").unwrap();
    let changed = copy(&[s, d], &[]);
    assert_ok(&changed);
    assert!(
        summary(&changed).contains("copied 1 objects"),
        "{}",
        summary(&changed)
    );
    assert_eq!(tree(&src), tree(&dst));
}

/// Local to local, small files are copied in batches on one thread: a
/// file that fails inside a batch fails alone, files too big to batch go
/// between them, and every other file arrives whole, counted once.
#[test]
fn a_file_failing_among_many_small_ones_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let names: Vec<String> = (0..600)
        .map(|i| format!("d{}/f{i:04}.bin", i % 3))
        .collect();
    let mut files: Vec<(&str, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), 1 + i * 37 % 8192))
        .collect();
    // Larger than a batch takes, among the small ones.
    files.push(("d1/f0300-big.bin", 3 * MIB));
    files.push(("d2/f0101-big.bin", 3 * MIB));
    write_tree(&src, &files);
    // Two destinations that cannot be written: directories in the way.
    const BLOCKED: [&str; 2] = ["d0/f0150.bin", "d2/f0452.bin"];
    for blocked in BLOCKED {
        std::fs::create_dir_all(dst.join(blocked).join("x")).unwrap();
    }
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());

    let o = copy(&[s, d], &[]);
    assert!(!o.status.success(), "{}", summary(&o));
    let out = summary(&o);
    assert!(out.contains("copied 600 objects"), "{out}");
    assert!(out.contains("failed 2"), "{out}");
    let failures = text(&o.stderr);
    for blocked in BLOCKED {
        assert!(failures.contains(blocked), "{failures}");
    }
    let (want, got) = (tree(&src), tree(&dst));
    for (key, sum) in &want {
        if !BLOCKED.contains(&key.as_str()) {
            assert_eq!(got.get(key), Some(sum), "{key}");
        }
    }

    for blocked in BLOCKED {
        std::fs::remove_dir_all(dst.join(blocked)).unwrap();
    }
    let again = copy(&[s, d], &[]);
    assert_ok(&again);
    let out = summary(&again);
    assert!(out.contains("copied 2 objects"), "{out}");
    assert!(out.contains("skipped 600 up to date"), "{out}");
    assert_eq!(tree(&src), tree(&dst));
}

#[test]
fn dry_run_writes_nothing_and_reports_totals() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    write_tree(&src, &[("a", 10), ("b/c", 20)]);
    let o = copy(
        &["--dry-run", src.to_str().unwrap(), dst.to_str().unwrap()],
        &[],
    );
    assert_ok(&o);
    assert!(!dst.exists(), "a dry run creates nothing");
    let out = summary(&o);
    assert!(out.contains("would copy 2 objects (30 B)"), "{out}");
    assert!(out.contains("b/c"), "each object is listed: {out}");
}

#[test]
fn single_file_source_lands_in_the_destination_directory() {
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path(), &[("in/report.csv", 1234)]);
    let dst = dir.path().join("out");
    let o = copy(
        &[
            dir.path().join("in/report.csv").to_str().unwrap(),
            dst.to_str().unwrap(),
        ],
        &[],
    );
    assert_ok(&o);
    assert_eq!(
        std::fs::read(dst.join("report.csv")).unwrap(),
        bytes(1234, 1)
    );
}

#[test]
fn include_and_exclude_select_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    write_tree(
        &src,
        &[
            ("a.txt", 1),
            ("deep/b.txt", 1),
            ("deep/c.bin", 1),
            ("deep/skip.txt", 1),
        ],
    );
    let o = copy(
        &[
            "--include",
            "*.txt",
            "--exclude",
            "skip*",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
        ],
        &[],
    );
    assert_ok(&o);
    let got: Vec<String> = tree(&dst).into_keys().collect();
    assert_eq!(got, vec!["a.txt", "deep/b.txt"]);
}

#[test]
fn local_s3_local_and_s3_s3_round_trips_are_byte_identical() {
    let s3 = S3Server::start(Faults::default());
    let up = s3.bucket("up-bucket");
    let other = s3.bucket("other-bucket");
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src, &edge_dataset());
    let want = tree(&src);

    // local -> S3 (under a prefix)
    let o = copy(&[src.to_str().unwrap(), "s3://up-bucket/some/prefix"], &env);
    assert_ok(&o);
    assert_eq!(tree(&up.join("some/prefix")), want);
    assert!(s3.incomplete_uploads().is_empty());

    // S3 -> local
    let back = dir.path().join("back");
    let o = copy(
        &["s3://up-bucket/some/prefix", back.to_str().unwrap()],
        &env,
    );
    assert_ok(&o);
    assert_eq!(tree(&back), want);

    // S3 -> S3
    let o = copy(&["s3://up-bucket/some/prefix/", "s3://other-bucket"], &env);
    assert_ok(&o);
    assert_eq!(tree(&other), want);

    // Re-running any of them copies nothing.
    for (from, to) in [
        (src.to_str().unwrap(), "s3://up-bucket/some/prefix"),
        ("s3://up-bucket/some/prefix", back.to_str().unwrap()),
        ("s3://up-bucket/some/prefix", "s3://other-bucket"),
    ] {
        let o = copy(&[from, to], &env);
        assert_ok(&o);
        assert!(
            summary(&o).contains("copied 0 objects"),
            "{from} -> {to}: {}",
            summary(&o)
        );
        assert!(
            summary(&o).contains("skipped 10 up to date"),
            "{from} -> {to}: {}",
            summary(&o)
        );
    }

    // A dry run to S3 writes nothing.
    let o = copy(
        &["--dry-run", src.to_str().unwrap(), "s3://other-bucket/dry"],
        &env,
    );
    assert_ok(&o);
    assert!(!other.join("dry").exists());

    // One object by its key.
    let single = dir.path().join("single");
    let o = copy(
        &[
            "s3://up-bucket/some/prefix/multi/three-parts.bin",
            single.to_str().unwrap(),
        ],
        &env,
    );
    assert_ok(&o);
    assert_eq!(
        tree(&single).get("three-parts.bin"),
        want.get("multi/three-parts.bin")
    );
}

#[test]
fn bad_input_is_one_clear_line_and_a_nonzero_exit() {
    let s3 = S3Server::start(Faults::default());
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![format!("{d}/missing"), format!("{d}/x")],
            "does not exist",
        ),
        (
            vec!["hdfs://bucket/x".into(), d.into()],
            "unknown scheme \"hdfs\"",
        ),
        (
            vec![d.into(), "s3://no-such-bucket/x".into()],
            "no-such-bucket",
        ),
        (
            vec!["s3://no-such-bucket/x".into(), format!("{d}/y")],
            "no-such-bucket",
        ),
        (
            vec!["--memory".into(), "lots".into(), d.into(), format!("{d}/z")],
            "invalid size",
        ),
        (
            vec![
                "--part-size".into(),
                "1MiB".into(),
                d.into(),
                "s3://b-x/y".into(),
            ],
            "part-size",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["copy"];
        all.extend(args.iter().map(String::as_str));
        let o = headroom(&all, &env);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
