//! `headroom check` and `headroom sync`, as a user checks them: `check`
//! finds a one-byte change, a missing file and an extra one, and exits 1;
//! `sync` deletes exactly the extra objects (locally and in S3), deletes
//! nothing on `--dry-run`, past `--max-delete`, or when the source could
//! not be listed whole; both hold flat memory over 500,000 entries.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

fn write(root: &Path, key: &str, data: &[u8]) {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// A source tree whose keys sort in S3's order differently from path
/// order (`d-x` < `d/…` < `d0`).
fn source(root: &Path) {
    for (key, data) in [
        ("a.txt", &b"alpha"[..]),
        ("d/one", b"one"),
        ("d/two", b"two two"),
        ("d-x/three", b"three"),
        ("d0/four", b"four!"),
        ("z/deep/er/five", b"five"),
    ] {
        write(root, key, data);
    }
}

/// The lines of a run's standard output that report differences.
fn differences(o: &std::process::Output) -> Vec<String> {
    text(&o.stdout)
        .lines()
        .filter(|l| ["- ", "+ ", "* ", "! "].iter().any(|p| l.starts_with(p)))
        .map(str::to_string)
        .collect()
}

#[test]
fn check_finds_a_one_byte_change_a_missing_file_and_an_extra_one() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    source(&src);
    assert_ok(&headroom(
        &["copy", src.to_str().unwrap(), dst.to_str().unwrap()],
        &[],
    ));
    let check = |extra: &[&str]| {
        let mut args = vec!["check"];
        args.extend(extra);
        args.extend([src.to_str().unwrap(), dst.to_str().unwrap()]);
        headroom(&args, &[])
    };
    let same = check(&[]);
    assert_ok(&same);
    assert_eq!(differences(&same), Vec::<String>::new());

    // One byte changed, size and mtime kept: only content tells.
    let file = dst.join("d/two");
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, b"two twO").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::remove_file(dst.join("d0/four")).unwrap();
    write(&dst, "d-x/extra", b"not in the source");
    let by_time = check(&[]);
    assert_eq!(by_time.status.code(), Some(1), "{}", text(&by_time.stderr));
    assert_eq!(differences(&by_time), ["+ d-x/extra", "- d0/four"]);
    let by_content = check(&["--checksum"]);
    assert_eq!(by_content.status.code(), Some(1));
    assert_eq!(
        differences(&by_content),
        ["+ d-x/extra", "* d/two", "- d0/four"],
        "in key order"
    );
    // A one-byte change that moved the mtime is found by size and mtime.
    std::fs::write(dst.join("a.txt"), b"alphA").unwrap();
    let file = dst.join("a.txt");
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        differences(&check(&[])),
        ["* a.txt", "+ d-x/extra", "- d0/four"]
    );
}

#[test]
fn sync_deletes_exactly_the_extra_files_and_nothing_on_dry_run_or_past_max_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    source(&src);
    source(&dst);
    write(&dst, "d/extra-1", b"x");
    write(&dst, "d-x/extra-2", b"x");
    write(&dst, "e/extra-3", b"x");
    write(&dst, "zz", b"x");
    write(&dst, "gone/deep/extra-5", b"x");
    std::fs::write(dst.join("d/one"), b"stale").unwrap();
    let before = tree(&dst);
    let sync = |extra: &[&str]| {
        let mut args = vec!["sync"];
        args.extend(extra);
        args.extend([src.to_str().unwrap(), dst.to_str().unwrap()]);
        headroom(&args, &[])
    };

    let dry = sync(&["--dry-run"]);
    assert_ok(&dry);
    assert_eq!(tree(&dst), before, "a dry run changes nothing");
    let said = text(&dry.stdout);
    for key in [
        "d/extra-1",
        "d-x/extra-2",
        "e/extra-3",
        "gone/deep/extra-5",
        "zz",
    ] {
        assert!(
            said.contains(&format!("would delete {}", dst.join(key).display())),
            "{said}"
        );
    }

    let limited = sync(&["--max-delete", "4"]);
    assert_eq!(limited.status.code(), Some(1), "{}", text(&limited.stderr));
    assert!(text(&limited.stderr).contains("more than --max-delete 4"));
    assert!(dst.join("zz").exists(), "nothing deleted past --max-delete");
    assert_eq!(
        std::fs::read(dst.join("d/one")).unwrap(),
        b"one",
        "but copied"
    );

    assert_ok(&sync(&["--max-delete", "5"]));
    assert_eq!(tree(&dst), tree(&src), "the destination is the source");
    // Directories whose files were all extra go with them; the others,
    // and the root, stay.
    for gone in ["e", "gone"] {
        assert!(!dst.join(gone).exists(), "{gone} was emptied and removed");
    }
    assert!(dst.join("d-x").is_dir() && dst.join("d").is_dir());
}

#[test]
fn sync_to_s3_deletes_exactly_the_extra_objects() {
    let server = S3Server::start(Faults::default());
    let env = server.env();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source(&src);
    // The bucket holds the source, extras, and a key outside the prefix.
    let bucket = server.bucket("bkt");
    source(&bucket.join("p"));
    write(&bucket, "p/d/extra", b"x");
    write(&bucket, "p/d-x/extra", b"x");
    write(&bucket, "p0/outside", b"x");
    let out = headroom(&["sync", src.to_str().unwrap(), "s3://bkt/p"], &env);
    assert_ok(&out);
    assert_eq!(tree(&bucket.join("p")), tree(&src));
    assert!(bucket.join("p0/outside").exists(), "outside the prefix");
    let check = headroom(&["check", src.to_str().unwrap(), "s3://bkt/p"], &env);
    assert_ok(&check);
    // Objects headroom uploaded carry the source's mtime in metadata,
    // which a listing does not show: check reads it, as copy does.
    let fresh = dir.path().join("fresh");
    source(&fresh);
    assert_ok(&headroom(
        &["copy", fresh.to_str().unwrap(), "s3://bkt/q"],
        &env,
    ));
    assert_ok(&headroom(
        &["check", fresh.to_str().unwrap(), "s3://bkt/q"],
        &env,
    ));
}

#[test]
fn sync_deletes_nothing_when_the_source_cannot_be_listed_whole() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    source(&src);
    write(&src, "locked/kept", b"only root reads this");
    source(&dst);
    write(&dst, "locked/kept", b"only root reads this");
    write(&dst, "zz-extra", b"x");
    open_to_nobody(&[dir.path(), &src, &src.join("d")], &dst);
    // headroom runs as nobody: `locked` cannot be listed.
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    for entry in walkdir::WalkDir::new(&dst).min_depth(1) {
        let entry = entry.unwrap();
        let mode = if entry.file_type().is_dir() {
            0o777
        } else {
            0o666
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let out = headroom_unprivileged()
        .args(["sync", src.to_str().unwrap(), dst.to_str().unwrap()])
        .env_remove("HEADROOM_MEMORY")
        .output()
        .unwrap();
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        dst.join("locked/kept").exists(),
        "a key the listing missed is not deleted"
    );
    assert!(dst.join("zz-extra").exists(), "nothing is deleted");
    assert!(
        text(&out.stderr).contains("nothing is deleted"),
        "{}",
        text(&out.stderr)
    );
}

/// `n` empty files in directories of 1,000, all with one mtime.
fn empty_tree(root: &Path, n: usize) {
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for i in 0..n {
        let dir = root.join(format!("{:04}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::File::create(dir.join(format!("f{i}")))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
}

#[test]
fn check_and_sync_hold_flat_memory_from_5000_to_500000_entries() {
    let mut peaks = Vec::new();
    for n in [5_000, 500_000] {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        empty_tree(&src, n);
        empty_tree(&dst, n);
        for i in 0..n / 100 {
            write(&dst, &format!("{:04}/extra-{i}", i % (n / 1000)), b"");
        }
        let check = headroom_measured(
            &[
                "--memory",
                "64MiB",
                "--log-format",
                "json",
                "check",
                src.to_str().unwrap(),
                dst.to_str().unwrap(),
            ],
            &[],
        );
        assert!(!check.success, "the extras differ");
        let summary: serde_json::Value =
            serde_json::from_str(check.stdout.lines().last().unwrap()).unwrap();
        assert_eq!(summary["same"].as_u64(), Some(n as u64), "{summary}");
        assert_eq!(summary["extra"].as_u64(), Some(n as u64 / 100), "{summary}");
        let sync = headroom_measured(
            &[
                "--memory",
                "64MiB",
                "sync",
                src.to_str().unwrap(),
                dst.to_str().unwrap(),
            ],
            &[],
        );
        assert!(sync.success, "{}", sync.stderr);
        let left = walkdir::WalkDir::new(&dst)
            .into_iter()
            .filter(|e| e.as_ref().unwrap().file_type().is_file())
            .count();
        assert_eq!(left, n, "exactly the extras deleted");
        eprintln!(
            "{n:>7} entries: check peak RSS {:.1} MiB, sync {:.1} MiB",
            check.peak_rss as f64 / 1048576.0,
            sync.peak_rss as f64 / 1048576.0
        );
        peaks.push((check.peak_rss, sync.peak_rss));
    }
    let grew = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1048576.0;
    assert!(
        grew(peaks[0].0, peaks[1].0) < 4.0 && grew(peaks[0].1, peaks[1].1) < 4.0,
        "memory grew with the listing: {peaks:?}"
    );
}

#[test]
fn a_single_file_source_is_refused_before_anything_is_copied_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    source(&src);
    write(&dst, "other", b"kept");
    for job in ["sync", "check"] {
        let out = headroom(
            &[
                job,
                src.join("a.txt").to_str().unwrap(),
                dst.to_str().unwrap(),
            ],
            &[],
        );
        assert!(!out.status.success(), "{job}");
        assert!(
            text(&out.stderr).contains("is a single file or object"),
            "{job}: {}",
            text(&out.stderr)
        );
    }
    assert!(dst.join("other").exists());
    assert!(!dst.join("a.txt").exists(), "nothing copied");
}
