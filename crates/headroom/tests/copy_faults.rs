//! `headroom copy` through a server that fails: transient faults are
//! retried to a byte-identical result; a destination broken for good ends
//! in a non-zero exit that names every failed object and leaves no
//! multipart upload behind. Unreadable source files are failures too,
//! reported while the rest of the copy completes.

mod common;

use std::time::Duration;

use common::*;

const MIB: usize = 1 << 20;

fn dataset() -> Vec<(&'static str, usize)> {
    vec![
        ("empty", 0),
        ("small/a.txt", 1),
        ("small/b.txt", 3000),
        ("small/c.txt", 70_000),
        ("one-chunk.bin", MIB),
        ("single-put.bin", 4 * MIB + 17),
        ("multi/two-parts.bin", 5 * MIB + 1),
        ("multi/four-parts.bin", 3 * 5 * MIB + 999),
        ("ümlaut dir/ö.txt", 10),
    ]
}

fn copy(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut all = vec![
        "copy",
        "--part-size",
        "5MiB",
        "--memory",
        "64MiB",
        "--s3-timeout",
        "1s",
    ];
    all.extend_from_slice(args);
    headroom(&all, env)
}

#[test]
fn transient_500s_503s_resets_and_stalls_are_retried_to_an_identical_copy() {
    let faults = Faults {
        every: 4,
        kinds: vec![
            Fault::Status500,
            Fault::Status503,
            Fault::Reset,
            Fault::Stall(Duration::from_secs(3)),
        ],
        ..Faults::default()
    };
    let s3 = S3Server::start(faults);
    let bucket = s3.bucket("flaky");
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src, &dataset());
    let want = tree(&src);

    let o = copy(
        &["--retries", "8", src.to_str().unwrap(), "s3://flaky/up"],
        &env,
    );
    assert_ok(&o);
    assert_eq!(tree(&bucket.join("up")), want);
    assert!(
        s3.incomplete_uploads().is_empty(),
        "{:?}",
        s3.incomplete_uploads()
    );

    let back = dir.path().join("back");
    let o = copy(
        &["--retries", "8", "s3://flaky/up", back.to_str().unwrap()],
        &env,
    );
    assert_ok(&o);
    assert_eq!(tree(&back), want);

    let o = copy(
        &["--retries", "8", "s3://flaky/up", "s3://flaky/again"],
        &env,
    );
    assert_ok(&o);
    assert_eq!(tree(&bucket.join("again")), want);

    let injected = s3.faults_injected();
    assert!(injected >= 10, "only {injected} faults were injected");
}

#[test]
fn a_completed_upload_whose_answer_was_lost_is_recognised_not_failed() {
    let s3 = S3Server::start(Faults {
        lose_completions: 1,
        ..Faults::default()
    });
    let bucket = s3.bucket("lossy");
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src, &[("big.bin", 3 * 5 * MIB + 5)]);

    let o = copy(&[src.to_str().unwrap(), "s3://lossy"], &env);
    assert_ok(&o);
    assert!(summary(&o).contains("copied 1 objects"), "{}", summary(&o));
    assert_eq!(tree(&bucket), tree(&src));
    assert!(s3.incomplete_uploads().is_empty());
    assert_eq!(s3.faults_injected(), 1);
}

#[test]
fn a_destination_that_always_fails_exits_nonzero_lists_failures_and_aborts_uploads() {
    let s3 = S3Server::start(Faults {
        uploads_always_fail: true,
        ..Faults::default()
    });
    let bucket = s3.bucket("broken");
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let files = dataset();
    write_tree(&src, &files);

    let o = copy(
        &["--retries", "1", src.to_str().unwrap(), "s3://broken/x"],
        &env,
    );
    assert!(
        !o.status.success(),
        "a broken destination must fail the run"
    );
    let out = summary(&o);
    assert!(
        out.contains(&format!("failed {}", files.len())),
        "summary should count every object as failed: {out}"
    );
    assert!(out.contains("failed objects:"), "{out}");
    for (name, _) in &files {
        assert!(
            out.contains(&format!("s3://broken/x/{name}")),
            "{name} is not listed among the failures:\n{out}"
        );
    }
    assert!(
        out.contains("500"),
        "the reason should carry the server's answer: {out}"
    );
    assert!(
        s3.incomplete_uploads().is_empty(),
        "multipart uploads left behind: {:?}",
        s3.incomplete_uploads()
    );
    assert!(
        tree(&bucket).is_empty(),
        "nothing may be written: {:?}",
        tree(&bucket)
    );
}

/// Runs the child as `nobody` so that a mode-000 file is unreadable even
/// when the tests run as root (CI containers do).
#[test]
fn unreadable_files_fail_alone_and_the_rest_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[("ok/a.txt", 10), ("ok/b.txt", 20), ("secret.txt", 30)],
    );
    let dst = dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        src.join("secret.txt"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    // nobody must be able to reach the temp dirs and write the destination.
    open_to_nobody(&[dir.path(), &src, &src.join("ok")], &dst);

    let o = headroom_unprivileged()
        .args(["copy", "--memory", "32MiB"])
        .arg(&src)
        .arg(&dst)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run headroom");
    let out = summary(&o);
    assert!(
        !o.status.success(),
        "an unreadable file must fail the run: {out}"
    );
    assert!(out.contains("copied 2 objects"), "{out}");
    assert!(out.contains("failed 1"), "{out}");
    assert!(out.contains("secret.txt"), "{out}");
    assert!(out.to_lowercase().contains("permission denied"), "{out}");
    let got: Vec<String> = tree(&dst).into_keys().collect();
    assert_eq!(got, vec!["ok/a.txt", "ok/b.txt"]);
    let files = walkdir::WalkDir::new(&dst)
        .into_iter()
        .filter(|e| e.as_ref().unwrap().file_type().is_file())
        .count();
    assert_eq!(files, 2, "no partial or temporary file may be left");
}
