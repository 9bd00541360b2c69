//! Exit 0 means the bytes are right: what `headroom copy` does with a
//! source that changes under it, with locations that overlap or are
//! ambiguous, with a signal in the middle, with debris of an earlier run,
//! with long names and with file modes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

fn copy(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut all = vec!["--memory", "64MiB", "copy", "--part-size", "5MiB"];
    all.extend_from_slice(args);
    headroom(&all, env)
}

#[track_caller]
fn assert_failed_with(o: &std::process::Output, needle: &str) {
    let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        !o.status.success() && all.contains(needle),
        "expected a failure mentioning {needle:?}, got {:?}:\n{all}",
        o.status
    );
}

/// Appends to `path` until the returned flag is set.
fn keep_appending(path: &Path) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, path) = (stop.clone(), path.to_path_buf());
    let handle = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        while !flag.load(Ordering::Relaxed) {
            f.write_all(&[7u8; 4096]).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    (stop, handle)
}

#[test]
fn a_local_file_that_grows_during_the_copy_fails_instead_of_being_truncated() {
    let server = S3Server::start(Faults::default());
    let bucket = server.bucket("dst");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src, &[("growing.log", 12 * MIB), ("steady.txt", 100)]);
    let (stop, appender) = keep_appending(&src.join("growing.log"));
    std::thread::sleep(Duration::from_millis(20));

    let to_s3 = copy(&[src.to_str().unwrap(), "s3://dst/p"], &server.env());
    let local_dst = dir.path().join("dst");
    let to_local = copy(&[src.to_str().unwrap(), local_dst.to_str().unwrap()], &[]);
    stop.store(true, Ordering::Relaxed);
    appender.join().unwrap();

    assert_failed_with(&to_s3, "source changed during the copy");
    assert!(
        !bucket.join("p/growing.log").exists(),
        "a truncated object was stored"
    );
    assert!(bucket.join("p/steady.txt").exists(), "the rest is copied");
    assert!(
        server.incomplete_uploads().is_empty(),
        "{:?}",
        server.incomplete_uploads()
    );
    assert_failed_with(&to_local, "source changed during the copy");
    let left: Vec<String> = entries_below(&local_dst).map(|(rel, _)| rel).collect();
    assert_eq!(
        left,
        vec!["steady.txt".to_string()],
        "no truncated file, no partial file"
    );
}

#[test]
fn an_s3_object_replaced_between_its_parts_fails_instead_of_mixing_versions() {
    let server = S3Server::start(Faults::default());
    let src = server.bucket("src");
    server.bucket("dst");
    write_tree(&src, &[("big.bin", 12 * MIB)]);
    // Version B replaces version A right after the first ranged GET.
    let next = server.root.path().join(".next/src");
    std::fs::create_dir_all(&next).unwrap();
    std::fs::write(next.join("big.bin"), bytes(12 * MIB, 99)).unwrap();

    // A budget for one part in flight at a time, so parts are read one
    // after the other (concurrent ones could all read version A, which
    // would be right). Streamed: a server-side copy reads nothing.
    let o = headroom(
        &[
            "--memory",
            "12MiB",
            "copy",
            "--no-server-side",
            "--part-size",
            "5MiB",
            "s3://src/big.bin",
            "s3://dst/copy",
        ],
        &server.env(),
    );
    assert!(server.faults_injected() >= 1, "the object was replaced");
    assert_failed_with(&o, "source changed during the copy");
    assert!(!server.root.path().join("dst/copy/big.bin").exists());
    assert!(
        server.incomplete_uploads().is_empty(),
        "{:?}",
        server.incomplete_uploads()
    );
}

#[test]
fn a_trailing_slash_means_the_prefix_and_without_one_an_object_wins_with_a_warning() {
    let server = S3Server::start(Faults::default());
    let src = server.bucket("src");
    // s3s-fs keeps objects as files, so an object `logs` and a prefix
    // `logs/` cannot both exist there; what it does have is a HEAD of
    // `logs` that answers for the directory, which is how a trailing
    // slash that was dropped turned the prefix into one object.
    write_tree(
        &src,
        &[("logs/a.txt", 10), ("logs/b/c.txt", 20), ("logs.txt", 5)],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = copy(&["s3://src/logs/", out.to_str().unwrap()], &server.env());
    assert_ok(&o);
    let got: Vec<String> = tree(&out).into_keys().collect();
    assert_eq!(got, vec!["a.txt".to_string(), "b/c.txt".to_string()]);

    let one = dir.path().join("one");
    let o = copy(&["s3://src/logs.txt", one.to_str().unwrap()], &server.env());
    assert_ok(&o);
    let got: Vec<String> = visible_files(&one).map(|(r, _)| r).collect();
    assert_eq!(got, vec!["logs.txt".to_string()]);
}

#[test]
fn overlapping_sources_and_destinations_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("data");
    write_tree(&src, &[("a.txt", 10), ("sub/b.txt", 10)]);
    let before = tree(&src);
    let inside = src.join("backup");
    let o = copy(&[src.to_str().unwrap(), inside.to_str().unwrap()], &[]);
    assert_failed_with(&o, "inside the source");
    let o = copy(
        &[src.join("sub").to_str().unwrap(), src.to_str().unwrap()],
        &[],
    );
    assert_failed_with(&o, "inside the destination");
    assert_eq!(tree(&src), before, "nothing was written");

    let server = S3Server::start(Faults::default());
    let bucket = server.bucket("bkt");
    write_tree(&bucket, &[("logs/a.txt", 10)]);
    let o = copy(&["s3://bkt/logs/", "s3://bkt/logs/again"], &server.env());
    assert_failed_with(&o, "overlap");
    assert_eq!(visible_files(&bucket).count(), 1);
}

/// Starts `headroom` with `args`, sends `signal` once `ready` says so
/// (or after 20 s), and returns the finished output.
fn interrupt(
    args: &[&str],
    env: &[(&str, String)],
    signal: i32,
    ready: impl Fn() -> bool,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom"));
    cmd.args(args)
        .env_remove("HEADROOM_MEMORY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let started = Instant::now();
    while !ready() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    child.wait_with_output().unwrap()
}

fn partial_files(dir: &Path) -> Vec<String> {
    entries_below(dir)
        .map(|(rel, _)| rel)
        .filter(|r| r.contains("partial"))
        .collect()
}

#[test]
fn sigint_during_a_download_removes_partial_files_and_exits_nonzero() {
    // Every GET stalls, so the copy is caught with partial files open.
    let server = S3Server::start(Faults {
        every: 1,
        kinds: vec![Fault::Stall(Duration::from_millis(1500))],
        ..Faults::default()
    });
    let src = server.bucket("src");
    write_tree(
        &src,
        &[("a.bin", 2 * MIB), ("b.bin", 3 * MIB), ("c/d.bin", MIB)],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = interrupt(
        &[
            "--memory",
            "64MiB",
            "copy",
            "s3://src/",
            out.to_str().unwrap(),
        ],
        &server.env(),
        libc::SIGINT,
        || out.exists() && !partial_files(&out).is_empty(),
    );
    assert_failed_with(&o, "interrupted by a signal");
    assert!(partial_files(&out).is_empty(), "{:?}", partial_files(&out));
}

#[test]
fn sigterm_during_a_multipart_upload_aborts_it_and_exits_nonzero() {
    let server = S3Server::start(Faults {
        every: 2,
        kinds: vec![Fault::Stall(Duration::from_millis(1500))],
        ..Faults::default()
    });
    server.bucket("dst");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src, &[("big.bin", 30 * MIB)]);
    let o = interrupt(
        &[
            "--memory",
            "64MiB",
            "copy",
            "--part-size",
            "5MiB",
            src.to_str().unwrap(),
            "s3://dst/p",
        ],
        &server.env(),
        libc::SIGTERM,
        || !server.incomplete_uploads().is_empty(),
    );
    assert_failed_with(&o, "interrupted by a signal");
    assert!(
        server.incomplete_uploads().is_empty(),
        "{:?}",
        server.incomplete_uploads()
    );
    assert!(!server.root.path().join("dst/p/big.bin").exists());
}

#[test]
fn partial_files_of_an_interrupted_run_are_never_copied_as_data() {
    let server = S3Server::start(Faults::default());
    let bucket = server.bucket("dst");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            ("real.txt", 10),
            ("d/.headroom-0123456789abcdef.partial", 10),
            ("d/.real.txt.89abcdef.headroom-partial", 10),
        ],
    );
    let o = copy(&[src.to_str().unwrap(), "s3://dst/p"], &server.env());
    assert_ok(&o);
    let got: Vec<String> = entries_below(&bucket)
        .map(|(r, _)| r)
        .filter(|r| !r.starts_with('.'))
        .collect();
    assert_eq!(got, vec!["p/real.txt".to_string()]);
}

#[test]
fn names_up_to_255_bytes_are_copied_and_restored() {
    let server = S3Server::start(Faults::default());
    let bucket = server.bucket("src");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let long = "n".repeat(251) + ".txt";
    write_tree(&src, &[(long.as_str(), 1000)]);
    let local = dir.path().join("local");
    assert_ok(&copy(
        &[src.to_str().unwrap(), local.to_str().unwrap()],
        &[],
    ));
    assert_eq!(tree(&src), tree(&local));
    // s3s-fs cannot take an upload of such a name (its own temporary
    // names are longer), but it serves one placed in its bucket.
    write_tree(&bucket.join("p"), &[(long.as_str(), 1000)]);
    let restored = dir.path().join("restored");
    assert_ok(&copy(
        &["s3://src/p/", restored.to_str().unwrap()],
        &server.env(),
    ));
    assert_eq!(tree(&bucket.join("p")), tree(&restored));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn file_modes_are_kept_locally_and_through_s3_and_never_widened() {
    let server = S3Server::start(Faults::default());
    server.bucket("dst");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            ("secret.key", 100),
            ("script.sh", 100),
            ("big-secret.bin", 7 * MIB),
        ],
    );
    let set = |name: &str, m: u32| {
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(m)).unwrap()
    };
    set("secret.key", 0o600);
    set("script.sh", 0o750);
    set("big-secret.bin", 0o600);
    let local = dir.path().join("local");
    assert_ok(&copy(
        &[src.to_str().unwrap(), local.to_str().unwrap()],
        &[],
    ));
    assert_ok(&copy(&[src.to_str().unwrap(), "s3://dst/p"], &server.env()));
    let restored = dir.path().join("restored");
    assert_ok(&copy(
        &["s3://dst/p/", restored.to_str().unwrap()],
        &server.env(),
    ));
    for out in [&local, &restored] {
        assert_eq!(mode(&out.join("secret.key")), 0o600, "{}", out.display());
        assert_eq!(mode(&out.join("script.sh")), 0o750, "{}", out.display());
        assert_eq!(
            mode(&out.join("big-secret.bin")),
            0o600,
            "{}",
            out.display()
        );
    }
}

#[test]
fn folder_markers_are_not_copied_as_files() {
    let server = S3Server::start(Faults {
        extra_keys: vec!["src/p/dir/".into(), "src/p/empty/".into()],
        ..Faults::default()
    });
    let src = server.bucket("src");
    write_tree(
        &src.join("p"),
        &[("dir/a.txt", 10), ("dir/b/c.txt", 20), ("zero", 0)],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = copy(&["s3://src/p/", out.to_str().unwrap()], &server.env());
    assert_ok(&o);
    let got: Vec<String> = entries_below(&out).map(|(r, _)| r).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        tree(&src.join("p")),
        tree(&out),
        "a real empty object is still copied"
    );
}

#[test]
fn symlinks_and_special_files_are_counted_and_control_characters_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src, &[("real.txt", 10)]);
    std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
    let fifo = std::ffi::CString::new(src.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // A name that would drive the terminal, in a file that fails.
    let evil = "evil\u{1b}[2J\u{7}.txt";
    write_tree(&src, &[(evil, 10)]);
    std::fs::set_permissions(src.join(evil), std::fs::Permissions::from_mode(0o000)).unwrap();
    let dst = dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    open_to_nobody(&[dir.path(), &src], &dst);
    let o = headroom_unprivileged()
        .args(["copy", "--memory", "32MiB"])
        .arg(&src)
        .arg(&dst)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(!o.status.success(), "the unreadable file fails the run");
    assert!(
        out.contains("passed over 2 entries with nothing to copy"),
        "{out}"
    );
    assert!(out.contains("evil\\u{1b}[2J\\u{7}.txt"), "escaped: {out}");
    for text in [&out, &err] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "raw control characters: {text:?}"
        );
    }
    let copied: Vec<String> = entries_below(&dst).map(|(r, _)| r).collect();
    assert_eq!(copied, vec!["real.txt".to_string()]);
}

#[test]
fn a_hostile_key_is_reported_and_skipped_and_the_listing_goes_on() {
    let server = S3Server::start(Faults {
        extra_keys: vec![
            "src/p/a/../../escape".into(),
            "src/p/bell\u{7}\u{1b}[2J.txt".into(),
            "src/p/double//slash".into(),
        ],
        ..Faults::default()
    });
    let src = server.bucket("src");
    write_tree(
        &src.join("p"),
        &[("a/one.txt", 10), ("b/two.txt", 20), ("z.txt", 30)],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = copy(&["s3://src/p/", out.to_str().unwrap()], &server.env());
    let summary = text(&o.stdout);
    assert!(!o.status.success(), "skipped keys fail the run: {summary}");
    assert!(
        summary.contains("copied 3 objects") && summary.contains("failed 3"),
        "{summary}"
    );
    assert!(summary.contains("a/../../escape"), "{summary}");
    assert!(
        summary.contains("bell\\u{7}\\u{1b}[2J.txt"),
        "escaped: {summary}"
    );
    assert!(!summary.contains('\u{1b}'), "{summary:?}");
    assert_eq!(tree(&src.join("p")), tree(&out));
    assert!(!dir.path().join("escape").exists());
}
