//! What `headroom purge` refuses or stays out of: bind mounts, system
//! trees, users' home directories whatever `$HOME` says, a whole bucket,
//! and directories it did not empty itself.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;

fn make_old(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"old").unwrap();
    let t = SystemTime::now() - Duration::from_secs(40 * 86_400);
    filetime::set_file_mtime(p, filetime::FileTime::from_system_time(t)).unwrap();
}

#[test]
fn a_bind_mount_inside_the_target_is_not_entered() {
    let dir = tempfile::tempdir().unwrap();
    let (target, outside) = (dir.path().join("target"), dir.path().join("outside"));
    make_old(&target.join("old.log"));
    make_old(&outside.join("precious.db"));
    std::fs::create_dir_all(target.join("mnt")).unwrap();
    // A private mount namespace (as root, or mapped to root): the bind
    // mount exists for this command only and is the same filesystem, so
    // the device number alone cannot tell it from the target.
    let script = format!(
        "mount --bind '{}' '{}' && exec '{}' purge '{}' --older-than 30d",
        outside.display(),
        target.join("mnt").display(),
        env!("CARGO_BIN_EXE_headroom"),
        target.display()
    );
    let o = Command::new("unshare")
        .args(["--mount", "--map-root-user", "sh", "-c", &script])
        .env("RUST_LOG", "warn")
        .output()
        .expect("unshare (util-linux)");
    assert_ok(&o);
    assert!(
        !target.join("old.log").exists(),
        "the target's own old file went"
    );
    assert!(
        outside.join("precious.db").exists(),
        "the bind-mounted tree was entered"
    );
    assert!(
        text(&o.stdout).contains("did not enter 1 directories"),
        "{}",
        text(&o.stdout)
    );
}

fn purge_dry(target: &str, env: &[(&str, String)]) -> std::process::Output {
    headroom(
        &["purge", target, "--older-than", "3650d", "--dry-run"],
        env,
    )
}

#[test]
fn system_trees_and_the_root_are_refused_without_force() {
    for t in ["/", "/etc", "/usr", "/var", "/home", "/var/log", "/root"] {
        let o = purge_dry(t, &[]);
        let err = text(&o.stderr);
        assert!(
            !o.status.success() && err.contains("without --force"),
            "{t}: {err}"
        );
    }
}

#[test]
fn any_users_home_is_refused_whatever_home_says() {
    // A home directory from the password database that exists and is not
    // a system tree (PostgreSQL's, installed by scripts/services.sh, or
    // any other).
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let home = passwd
        .lines()
        .filter_map(|l| l.split(':').nth(5))
        .filter(|h| h.starts_with('/') && *h != "/" && Path::new(h).is_dir())
        // Three levels deep (`/var/lib/postgresql`): below every system
        // tree, which is refused for being one.
        .find(|h| Path::new(h).components().count() >= 4)
        .expect("some user with an existing home directory")
        .to_string();
    let elsewhere = tempfile::tempdir().unwrap();
    // As under sudo, cron or systemd: HOME is not that user's home.
    let o = purge_dry(&home, &[("HOME", elsewhere.path().display().to_string())]);
    let err = text(&o.stderr);
    assert!(
        !o.status.success() && err.contains("home directory of"),
        "{home}: {err}"
    );
}

#[test]
fn a_whole_bucket_needs_force() {
    let server = S3Server::start(Faults::default());
    let bucket = server.bucket("everything");
    make_old(&bucket.join("a/b.log"));
    let o = headroom(
        &["purge", "s3://everything", "--older-than", "30d"],
        &server.env(),
    );
    assert!(
        !o.status.success() && text(&o.stderr).contains("whole bucket"),
        "{}",
        text(&o.stderr)
    );
    assert!(bucket.join("a/b.log").exists());
    let o = headroom(
        &[
            "purge",
            "s3://everything/",
            "--older-than",
            "30d",
            "--force",
        ],
        &server.env(),
    );
    assert_ok(&o);
    assert!(!bucket.join("a/b.log").exists());
}

#[test]
fn only_directories_this_purge_emptied_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    make_old(&t.join("gone/x/old.log"));
    std::fs::create_dir_all(t.join("empty-before/inner")).unwrap();
    make_old(&t.join("keep/sub/old.log"));
    std::fs::create_dir_all(t.join("keep/empty")).unwrap();
    let o = headroom(
        &[
            "purge",
            t.to_str().unwrap(),
            "--older-than",
            "30d",
            "--remove-empty-dirs",
            "--exclude",
            "keep/**",
        ],
        &[],
    );
    assert_ok(&o);
    assert!(!t.join("gone").exists(), "emptied by the purge: removed");
    assert!(t.join("empty-before/inner").is_dir(), "empty before: kept");
    assert!(t.join("keep/sub/old.log").exists(), "excluded: kept");
    assert!(
        t.join("keep/empty").is_dir(),
        "inside an excluded tree: kept"
    );
}
