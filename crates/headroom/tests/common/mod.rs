//! Shared test support: a real S3 server (s3s-fs, in its own process) on a
//! loopback port, with optional fault injection, and helpers to run the `headroom` binary and
//! compare trees.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use md5::{Digest, Md5};

pub mod atproto;
pub mod azurite;
pub mod gdrive;
pub mod ingest;
pub mod moto;
pub mod serve;

pub const ACCESS_KEY: &str = "headroom-test-key";
pub const SECRET_KEY: &str = "headroom-test-secret";

/// Faults the server injects into a share of requests.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Every `every`-th request (counting all requests) gets the next
    /// fault of `kinds`, in turn. 0 = never.
    pub every: u64,
    pub kinds: Vec<Fault>,
    /// Fail every data upload (PUT of an object or a part) with a 500, but
    /// let uploads be created and aborted: a destination that is broken for
    /// good.
    pub uploads_always_fail: bool,
    /// Carry out this many CompleteMultipartUpload requests, then drop the
    /// connection instead of answering: the client cannot know it worked.
    pub lose_completions: u64,
    /// Zero-byte objects (`bucket/key`) listed beside the real ones: folder
    /// markers (`b/p/dir/`), keys no file can be named (`b/p/../x`).
    pub extra_keys: Vec<String>,
    /// Serve Google Cloud Storage's XML API (S3's with `x-goog-` headers),
    /// unsigned: see [`S3Server::gcs_env`].
    pub gcs: bool,
}

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// 500 InternalError.
    Status500,
    /// 503 SlowDown.
    Status503,
    /// Drop the connection without a response.
    Reset,
    /// Answer only after this long.
    Stall(Duration),
}

impl Faults {
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--every".to_string(), self.every.to_string()];
        if !self.kinds.is_empty() {
            let kinds: Vec<String> = self
                .kinds
                .iter()
                .map(|k| match k {
                    Fault::Status500 => "500".to_string(),
                    Fault::Status503 => "503".to_string(),
                    Fault::Reset => "reset".to_string(),
                    Fault::Stall(d) => format!("stall:{}", d.as_millis()),
                })
                .collect();
            args.extend(["--kinds".to_string(), kinds.join(",")]);
        }
        if self.uploads_always_fail {
            args.push("--uploads-always-fail".into());
        }
        args.extend([
            "--lose-completions".into(),
            self.lose_completions.to_string(),
        ]);
        for k in &self.extra_keys {
            args.extend(["--extra-key".into(), k.clone()]);
        }
        if self.gcs {
            args.push("--gcs".into());
        }
        args
    }
}

/// A running S3 server (the `s3_test_server` example: s3s-fs with fault
/// injection) in its own process; stops when dropped.
pub struct S3Server {
    pub endpoint: String,
    pub root: tempfile::TempDir,
    child: std::process::Child,
}

/// The example binary, built next to the test binaries by `cargo test` and
/// `cargo nextest run`.
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("examples").join("s3_test_server");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p headroom --examples` \
         (cargo test and cargo nextest run build it)",
        bin.display()
    );
    bin
}

impl S3Server {
    pub fn start(faults: Faults) -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(server_binary())
            .arg("--root")
            .arg(root.path())
            .args(faults.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start s3_test_server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the server's endpoint");
        assert!(line.starts_with("http://"), "s3_test_server said {line:?}");
        S3Server {
            endpoint: line.trim().to_string(),
            root,
            child,
        }
    }

    /// A server that answers every `every`-th request only after `delay`:
    /// slow enough that a task is caught running, and latency-bound.
    pub fn stalling(every: u64, delay: Duration) -> Self {
        Self::start(Faults {
            every,
            kinds: vec![Fault::Stall(delay)],
            ..Faults::default()
        })
    }

    /// Faults injected so far.
    pub fn faults_injected(&self) -> u64 {
        std::fs::read_to_string(self.root.path().join(".faults-injected"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Creates a bucket (a directory of the server's root).
    pub fn bucket(&self, name: &str) -> PathBuf {
        let p = self.root.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn incomplete_uploads(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.starts_with(".upload_id-")
                    || (n.contains(".upload-") && n.ends_with(".metadata.json"))
            })
            .collect()
    }

    /// Environment for a child process to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl S3Server {
    /// Environment for a child process to reach this server as Google
    /// Cloud Storage (started with [`Faults::gcs`]): object_store's GCS
    /// client pointed at it, OAuth off.
    pub fn gcs_env(&self) -> Vec<(&'static str, String)> {
        let key = serde_json::json!({
            "disable_oauth": true,
            "gcs_base_url": self.endpoint,
            "client_email": "",
            "private_key": "",
            "private_key_id": "",
        });
        vec![("GOOGLE_SERVICE_ACCOUNT_KEY", key.to_string())]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `headroom` with `args` and extra environment.
pub fn headroom(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom"));
    cmd.args(args)
        .env_remove("HEADROOM_MEMORY")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run headroom")
}

/// A `headroom` command that runs as `nobody` when the tests run as root
/// (CI containers do), so that file modes deny access as they would for a
/// user.
pub fn headroom_unprivileged() -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_headroom"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_headroom"))
    }
}

/// Lets [`headroom_unprivileged`] reach `dirs` (0755) and write `dst`
/// (0777), whatever the temporary directories' modes are.
pub fn open_to_nobody(dirs: &[&Path], dst: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for d in dirs.iter().copied().chain([dst]) {
        let mode = if d == dst { 0o777 } else { 0o755 };
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success, showing the child's output otherwise.
#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "headroom failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// Every entry below `dir` that is not a directory (files, symlinks), by
/// path relative to `dir`.
pub fn entries_below(dir: &Path) -> impl Iterator<Item = (String, walkdir::DirEntry)> + '_ {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_type().is_dir())
        .map(move |e| {
            let rel = e
                .path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, e)
        })
}

/// Regular files below `dir`, skipping hidden names (the S3 server's
/// metadata), by relative path.
pub fn visible_files(dir: &Path) -> impl Iterator<Item = (String, walkdir::DirEntry)> + '_ {
    entries_below(dir).filter(|(rel, e)| {
        e.file_type().is_file() && !rel.split('/').any(|part| part.starts_with('.'))
    })
}

/// Every visible regular file below `dir`, with its size and MD5 (read in
/// a stream, not whole).
pub fn tree(dir: &Path) -> BTreeMap<String, (u64, String)> {
    visible_files(dir)
        .map(|(rel, e)| {
            let mut hasher = Md5::new();
            let mut file = std::fs::File::open(e.path()).unwrap();
            let len = std::io::copy(&mut file, &mut hasher).unwrap();
            let md5: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (rel, (len, md5))
        })
        .collect()
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `n` files `f0000.bin`... of `size` deterministic bytes (from
/// `seed`) into `dir`; their names and contents.
pub fn write_numbered(dir: &Path, n: usize, size: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let name = format!("f{i:04}.bin");
            let data = bytes(size, seed * 10_000 + i as u64 + 1);
            std::fs::write(dir.join(&name), &data).unwrap();
            (name, data)
        })
        .collect()
}

/// Writes `files` (relative path, size) below `dir`.
pub fn write_tree(dir: &Path, files: &[(&str, usize)]) {
    for (i, (name, size)) in files.iter().enumerate() {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes(*size, i as u64 + 1)).unwrap();
    }
}

/// The summary line of a text-format run.
pub fn summary(o: &Output) -> String {
    text(&o.stdout)
}

/// A finished child run with its peak resident set.
pub struct Measured {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    /// Peak RSS of the child (`ru_maxrss` from `wait4`), in bytes.
    pub peak_rss: u64,
}

/// Runs `headroom` with `args` and waits with `wait4`, which reports the
/// child's own peak RSS (not this process's).
pub fn headroom_measured(args: &[&str], env: &[(&str, String)]) -> Measured {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (out_dir.path().join("out"), out_dir.path().join("err"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom"));
    cmd.args(args)
        .env_remove("HEADROOM_MEMORY")
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("run headroom");
    let (success, peak_rss) = wait_measured(child);
    Measured {
        success,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        peak_rss,
    }
}

/// Waits for `child` with `wait4`: whether it exited 0, and its own peak
/// RSS in bytes.
pub fn wait_measured(child: std::process::Child) -> (bool, u64) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; both out-pointers are
    // valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child); // already reaped
    (
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        usage.ru_maxrss as u64 * 1024,
    )
}
