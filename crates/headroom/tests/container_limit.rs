//! Inside a real memory cgroup and with no `--memory` flag, headroom reads
//! the container's limit, sizes its budget from it, and runs copies and
//! purges to the end: no OOM kill, no hang. The test makes its own cgroup
//! (v1 memory controller, or v2 where this process's cgroup delegates the
//! memory controller), sets its limit, and removes it afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;

const MIB: u64 = 1 << 20;

/// A memory cgroup of our own, removed when dropped.
struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    fn new(limit: u64) -> Cgroup {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let name = format!("headroom-test-{:x}", fastrand::u64(..));
        let v1 = cgroups
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
            .map(|p| Path::new("/sys/fs/cgroup/memory").join(p.trim_start_matches('/')));
        if let Some(parent) = v1.filter(|p| p.join("memory.limit_in_bytes").exists()) {
            let dir = parent.join(name);
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
            return Cgroup { dir, v2: false };
        }
        let v2 = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| Path::new("/sys/fs/cgroup").join(p.trim_start_matches('/')))
            .expect("neither a cgroup v1 memory controller nor cgroup v2 is mounted");
        let dir = v2.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        std::fs::write(dir.join("memory.max"), limit.to_string()).unwrap_or_else(|e| {
            panic!(
                "{}: the memory controller is not delegated here: {e}",
                dir.display()
            )
        });
        Cgroup { dir, v2: true }
    }

    /// OOM kills in this cgroup so far.
    fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .map_or(0, |n| n.trim().parse().unwrap())
    }

    /// Runs headroom inside this cgroup (moved in before it execs), killed
    /// after `limit`; whether it succeeded, and its output.
    fn run(&self, args: &[&str], env: &[(&str, String)], limit: Duration) -> (bool, String) {
        let procs = self.dir.join("cgroup.procs");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("echo $$ > '{}' && exec \"$@\"", procs.display()))
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_headroom"))
            .args(args)
            .env_remove("HEADROOM_MEMORY")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "headroom {args:?} hung in the cgroup:\n{}",
                    text(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            format!("{}{}", text(&out.stdout), text(&out.stderr)),
        )
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty by now (the child exited); charges move to the parent.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn copies_and_purges_in_a_128_mib_container_without_flags_finish_without_oom() {
    let cg = Cgroup::new(128 * MIB);
    let server = S3Server::start(Faults::default());
    server.bucket("dst");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // Objects larger than a part and more small files than the listing
    // queue holds, but written data well under the limit: the page cache of
    // what the copies write is charged to the cgroup too, and a busy disk
    // (other tests) would otherwise throttle them for minutes.
    let mut files: Vec<(String, usize)> = (0..3)
        .map(|i| (format!("big/{i}.bin"), 12 * MIB as usize))
        .collect();
    files.extend((0..1000).map(|i| (format!("small/{}/{i}.txt", i % 20), 2000 + i)));
    let refs: Vec<(&str, usize)> = files.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    write_tree(&src, &refs);

    let (ok, out) = cg.run(
        &["copy", src.to_str().unwrap(), "s3://dst/p"],
        &server.env(),
        Duration::from_secs(300),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("from the cgroup"),
        "the budget comes from the limit: {out}"
    );
    assert_eq!(cg.oom_kills(), 0, "{out}");
    let restored = dir.path().join("restored");
    let (ok, out) = cg.run(
        &["copy", "s3://dst/p/", restored.to_str().unwrap()],
        &server.env(),
        Duration::from_secs(300),
    );
    assert!(ok, "{out}");
    assert_eq!(tree(&src), tree(&restored));
    assert_eq!(cg.oom_kills(), 0, "{out}");

    // Make every small file old, then purge them.
    let old =
        filetime::FileTime::from_system_time(SystemTime::now() - Duration::from_secs(40 * 86_400));
    for (rel, _) in visible_files(&restored.join("small")) {
        filetime::set_file_mtime(restored.join("small").join(rel), old).unwrap();
    }
    let (ok, out) = cg.run(
        &[
            "purge",
            restored.join("small").to_str().unwrap(),
            "--older-than",
            "30d",
        ],
        &[],
        Duration::from_secs(300),
    );
    assert!(ok, "{out}");
    assert_eq!(visible_files(&restored.join("small")).count(), 0, "{out}");
    assert_eq!(cg.oom_kills(), 0, "{out}");
}

#[test]
fn an_s3_purge_in_a_40_mib_container_without_flags_runs() {
    let cg = Cgroup::new(40 * MIB);
    let server = S3Server::start(Faults::default());
    let bucket = server.bucket("logs");
    let old =
        filetime::FileTime::from_system_time(SystemTime::now() - Duration::from_secs(40 * 86_400));
    for i in 0..1500 {
        let p = bucket.join(format!("app/{}/{i}.log", i % 10));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"log line").unwrap();
        filetime::set_file_mtime(&p, old).unwrap();
    }
    let (ok, out) = cg.run(
        &["purge", "s3://logs/app", "--older-than", "30d"],
        &server.env(),
        Duration::from_secs(120),
    );
    assert!(ok, "{out}");
    assert_eq!(visible_files(&bucket).count(), 0, "{out}");
    assert_eq!(cg.oom_kills(), 0, "{out}");
}
