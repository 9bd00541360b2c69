//! `headroom purge` end to end: exactly the old files go, dry runs change
//! nothing and count the same, globs, symlinks, unreadable directories,
//! S3 prefixes, and bad input.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use filetime::FileTime;

const DAY: u64 = 86_400;

/// A tree of `n` files whose ages spread over 0..=90 days (plus an hour,
/// so none sits on the 30-day cut-off). Returns the paths older than 30d.
fn aged_tree(root: &Path, n: usize) -> BTreeSet<String> {
    let now = SystemTime::now();
    let mut old = BTreeSet::new();
    for i in 0..n {
        let rel = match i % 4 {
            0 => format!("f{i}.log"),
            1 => format!("a/f{i}.dat"),
            2 => format!("a/b/c/f{i}.log"),
            _ => format!("d{}/e/f{i}.tmp", i % 7),
        };
        let p = root.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![b'x'; i % 100]).unwrap();
        let days = (i * 37 % 91) as u64;
        let t = now - Duration::from_secs(days * DAY + 3600);
        filetime::set_file_mtime(&p, FileTime::from_system_time(t)).unwrap();
        if days >= 30 {
            old.insert(rel);
        }
    }
    old
}

fn files(root: &Path) -> BTreeSet<String> {
    entries_below(root).map(|(rel, _)| rel).collect()
}

fn purge(args: &[&str]) -> std::process::Output {
    let mut all = vec!["--log-format", "json", "purge"];
    all.extend_from_slice(args);
    headroom(&all, &[])
}

fn summary_json(o: &std::process::Output) -> serde_json::Value {
    let out = text(&o.stdout);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("summary {out:?}: {e}"))
}

#[test]
fn exactly_the_old_files_go_and_a_dry_run_counts_the_same_without_deleting() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    let old = aged_tree(&root, 2000);
    let before = files(&root);
    assert!(old.len() > 1000 && old.len() < before.len());

    let dry = purge(&["--dry-run", "--older-than", "30d", root.to_str().unwrap()]);
    assert_ok(&dry);
    assert_eq!(files(&root), before, "a dry run deletes nothing");
    let dry = summary_json(&dry);

    let real = purge(&["--older-than", "30d", root.to_str().unwrap()]);
    assert_ok(&real);
    let real = summary_json(&real);
    let after = files(&root);
    let expected: BTreeSet<String> = before.difference(&old).cloned().collect();
    assert_eq!(
        after, expected,
        "exactly the files older than 30 days are gone"
    );

    for key in [
        "files_deleted",
        "bytes_freed",
        "files_scanned",
        "files_kept",
    ] {
        assert_eq!(dry[key], real[key], "{key}: dry run {dry} vs real {real}");
    }
    assert_eq!(real["files_deleted"].as_u64(), Some(old.len() as u64));
    assert_eq!(real["failed"].as_u64(), Some(0));
    assert!(dry["estimated_s"].as_f64().is_some(), "{dry}");
    assert!(dry["oldest_matched"].as_str().is_some(), "{dry}");
    // A second run finds nothing more to delete.
    let again = summary_json(&purge(&["--older-than", "30d", root.to_str().unwrap()]));
    assert_eq!(again["files_deleted"].as_u64(), Some(0));
}

#[test]
fn include_exclude_and_empty_directories() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    let mut old = aged_tree(&root, 400);
    // A directory holding only an old log: emptied, then removed.
    let lonely = root.join("emptied/deeper");
    std::fs::create_dir_all(&lonely).unwrap();
    std::fs::write(lonely.join("x.log"), b"x").unwrap();
    filetime::set_file_mtime(
        lonely.join("x.log"),
        FileTime::from_system_time(SystemTime::now() - Duration::from_secs(45 * DAY)),
    )
    .unwrap();
    old.insert("emptied/deeper/x.log".into());
    let before = files(&root);
    let o = purge(&[
        "--older-than",
        "30d",
        "--include",
        "*.log",
        "--include",
        "d*/**",
        "--exclude",
        "a/b/**",
        "--remove-empty-dirs",
        root.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let gone: BTreeSet<String> = before.difference(&files(&root)).cloned().collect();
    let want: BTreeSet<String> = old
        .iter()
        .filter(|p| (p.ends_with(".log") || p.starts_with('d')) && !p.starts_with("a/b/"))
        .cloned()
        .collect();
    assert_eq!(gone, want);
    // Directories emptied by the purge are gone, parents too; the target
    // stays.
    assert!(
        !root.join("emptied").exists(),
        "emptied directories are removed"
    );
    assert!(root.exists());
    assert!(summary_json(&o)["dirs_removed"].as_u64() >= Some(2));
    for d in ["d0/e", "d1/e", "d6/e"] {
        let p = root.join(d);
        if p.exists() {
            assert!(
                std::fs::read_dir(&p).unwrap().next().is_some(),
                "{d} is empty but kept"
            );
        }
    }
}

#[test]
fn symlinks_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let long_ago = FileTime::from_system_time(SystemTime::now() - Duration::from_secs(60 * DAY));
    for p in [outside.join("precious.txt"), root.join("sub/old.txt")] {
        std::fs::write(&p, b"data").unwrap();
        filetime::set_file_mtime(&p, long_ago).unwrap();
    }
    // A link out of the tree, a loop, and a link to a file outside.
    std::os::unix::fs::symlink(&outside, root.join("to-outside")).unwrap();
    std::os::unix::fs::symlink("..", root.join("sub/loop")).unwrap();
    std::os::unix::fs::symlink(outside.join("precious.txt"), root.join("file-link")).unwrap();
    filetime::set_symlink_file_times(root.join("file-link"), long_ago, long_ago).unwrap();

    let o = purge(&["--older-than", "30d", root.to_str().unwrap()]);
    assert_ok(&o);
    assert!(
        outside.join("precious.txt").exists(),
        "a link's target is never touched"
    );
    assert!(!root.join("sub/old.txt").exists());
    assert!(
        std::fs::symlink_metadata(root.join("file-link")).is_err(),
        "an old symlink is deleted itself"
    );
    // The young links stay, and nothing went through them.
    assert!(std::fs::symlink_metadata(root.join("to-outside")).is_ok());
    assert_eq!(summary_json(&o)["files_deleted"].as_u64(), Some(2));
}

/// As `nobody`, so that mode 000 is unreadable even for a root test run.
#[test]
fn unreadable_directories_are_reported_and_the_rest_is_purged() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    let old = aged_tree(&root, 100);
    let locked = root.join("locked");
    std::fs::create_dir(&locked).unwrap();
    let secret = locked.join("old-secret.txt");
    std::fs::write(&secret, b"s").unwrap();
    filetime::set_file_mtime(
        &secret,
        FileTime::from_system_time(SystemTime::now() - Duration::from_secs(60 * DAY)),
    )
    .unwrap();
    // nobody may write everywhere but in `locked`, which it cannot read.
    for e in walkdir::WalkDir::new(dir.path()) {
        let e = e.unwrap();
        let mode = if e.file_type().is_dir() { 0o777 } else { 0o666 };
        std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();

    let o = headroom_unprivileged()
        .args(["purge", "--older-than", "30d"])
        .arg(&root)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = text(&o.stdout);
    assert!(
        !o.status.success(),
        "a failure must show in the exit code: {out}"
    );
    assert!(out.contains("locked/"), "{out}");
    assert!(out.contains("permission denied"), "{out}");
    assert!(secret.exists());
    let left = files(&root);
    assert!(old.iter().all(|p| !left.contains(p)), "the rest was purged");
}

#[test]
fn s3_prefixes_are_purged_by_last_modified() {
    let s3 = S3Server::start(Faults::default());
    let bucket = s3.bucket("logs");
    // s3s-fs reports a file's mtime as the object's LastModified.
    let old = aged_tree(&bucket.join("app"), 1500);
    std::fs::write(bucket.join("other.log"), b"not under the prefix").unwrap();
    filetime::set_file_mtime(
        bucket.join("other.log"),
        FileTime::from_system_time(SystemTime::now() - Duration::from_secs(80 * DAY)),
    )
    .unwrap();
    let before = files(&bucket.join("app"));

    let mut args = vec![
        "--log-format",
        "json",
        "purge",
        "--dry-run",
        "--older-than",
        "30d",
        "s3://logs/app",
    ];
    let dry = headroom(&args, &s3.env());
    assert_ok(&dry);
    assert_eq!(files(&bucket.join("app")), before);
    args.retain(|a| *a != "--dry-run");
    let real = headroom(&args, &s3.env());
    assert_ok(&real);
    let expected: BTreeSet<String> = before.difference(&old).cloned().collect();
    assert_eq!(files(&bucket.join("app")), expected);
    assert!(bucket.join("other.log").exists(), "outside the prefix");
    let (dry, real) = (summary_json(&dry), summary_json(&real));
    assert_eq!(dry["files_deleted"], real["files_deleted"]);
    assert_eq!(real["files_deleted"].as_u64(), Some(old.len() as u64));
}

#[test]
fn bad_input_is_a_clear_error_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file.txt");
    std::fs::write(&file, b"x").unwrap();
    filetime::set_file_mtime(
        &file,
        FileTime::from_system_time(SystemTime::now() - Duration::from_secs(90 * DAY)),
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    let missing = format!("{d}/missing");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--older-than", "30d", &missing], "does not exist"),
        (
            vec!["--older-than", "30d", file.to_str().unwrap()],
            "is a file, not a directory",
        ),
        (vec!["--older-than", "thirty days", d], "invalid duration"),
        (vec!["--older-than", "0s", d], "more than zero"),
        (vec!["--older-than", "30d", "/"], "refusing to purge /"),
        (vec![d], "--older-than"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["purge"];
        all.extend(&args);
        let o = headroom(&all, &[]);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(file.exists(), "nothing was deleted");
}
