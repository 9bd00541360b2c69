//! A `headroom serve` child process on an ephemeral loopback port, its
//! task database (a SQLite file, or a fresh PostgreSQL database), and a
//! small HTTP client for its API.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where a service keeps its tasks.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Backend {
    /// A new SQLite file in `dir`.
    pub fn sqlite(dir: &std::path::Path) -> Self {
        Backend::Sqlite(dir.join("tasks.db"))
    }

    /// A new, empty database on the PostgreSQL server that
    /// `scripts/services.sh` started (its URL in HEADROOM_TEST_POSTGRES).
    pub fn postgres() -> Self {
        let base = std::env::var("HEADROOM_TEST_POSTGRES").expect(
            "HEADROOM_TEST_POSTGRES is not set: run scripts/test.sh, which installs and starts PostgreSQL",
        );
        let name = format!("headroom_test_{:x}", fastrand::u64(..));
        let out = Command::new("psql")
            .arg(&base)
            .args(["-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("CREATE DATABASE {name}"))
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "create database: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut url = url::Url::parse(&base).expect("HEADROOM_TEST_POSTGRES is a URL");
        url.set_path(&name);
        Backend::Postgres(url.to_string())
    }

    pub fn arg(&self) -> String {
        match self {
            Backend::Sqlite(p) => p.display().to_string(),
            Backend::Postgres(u) => u.clone(),
        }
    }
}

/// A running `headroom serve`.
pub struct Service {
    child: Option<Child>,
    pub base: String,
    pub backend: Backend,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// The service's standard error, for failure messages.
    pub log: PathBuf,
    /// The API token the service was given (a file in its log directory),
    /// unless the test passes its own `--token-file` or HEADROOM_TOKEN.
    pub token: String,
    /// Pass `--allow-path` with the temporary directory (the default).
    allow_temp: bool,
    _logdir: tempfile::TempDir,
}

impl Service {
    pub fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[], &[])
    }

    pub fn start_with(backend: Backend, extra: &[&str], env: &[(&str, String)]) -> Self {
        let logdir = tempfile::tempdir().expect("temp dir");
        let mut s = Service {
            child: None,
            base: String::new(),
            backend,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            log: logdir.path().join("serve.log"),
            token: format!("test-token-{:016x}", fastrand::u64(..)),
            allow_temp: !extra.contains(&"--allow-path"),
            _logdir: logdir,
        };
        s.spawn();
        s
    }

    /// A service started without `--allow-path`: S3 tasks only.
    pub fn start_s3_only(backend: Backend) -> Self {
        let logdir = tempfile::tempdir().expect("temp dir");
        let mut s = Service {
            child: None,
            base: String::new(),
            backend,
            extra: Vec::new(),
            env: Vec::new(),
            log: logdir.path().join("serve.log"),
            token: format!("test-token-{:016x}", fastrand::u64(..)),
            allow_temp: false,
            _logdir: logdir,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(self.backend.arg())
            .args(&self.extra);
        let own = |flag: &str| self.extra.iter().any(|a| a == flag);
        if !own("--token-file") && !self.env.iter().any(|(k, _)| k == "HEADROOM_TOKEN") {
            let file = self.log.with_file_name("token");
            std::fs::write(&file, &self.token).unwrap();
            cmd.arg("--token-file").arg(file);
        }
        // The tests' trees live under the temporary directory.
        if self.allow_temp {
            cmd.arg("--allow-path").arg(std::env::temp_dir());
        }
        cmd.env_remove("HEADROOM_MEMORY")
            .env_remove("HEADROOM_TOKEN")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start headroom serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            panic!(
                "headroom serve did not start: {line:?}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        };
        self.base = base.to_string();
        // Keep draining stdout so the service never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        self.child = Some(child);
    }

    /// SIGTERM, and waits (at most `limit`) for the service to exit;
    /// whether it exited 0.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "the service did not stop within {limit:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts again after [`terminate`](Self::terminate) or a kill.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// `kill -9`: no shutdown, no last write.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same database (a new port).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client that sends this service's token.
    pub fn api(&self) -> Api {
        Api {
            token: Some(self.token.clone()),
            ..Api::default()
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking JSON client (reqwest on a small runtime of its own).
pub struct Api {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    pub token: Option<String>,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            // Idle connections are dropped before the service closes them
            // (it does after its 10 s header timeout): a request sent on
            // one the service is closing fails with an incomplete message.
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client"),
            token: None,
        }
    }
}

impl Api {
    /// Sends a request; the status and the body (JSON, or a string).
    pub fn call(&self, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
        self.rt.block_on(async {
            let mut req = self
                .http
                .request(method.parse().unwrap(), url)
                .timeout(Duration::from_secs(30));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, v)
        })
    }

    pub fn get(&self, url: &str) -> (u16, Value) {
        self.call("GET", url, None)
    }

    pub fn post(&self, url: &str, body: Value) -> (u16, Value) {
        self.call("POST", url, Some(body))
    }

    /// Polls a task until `done` says so; panics with the service log
    /// after `limit`.
    pub fn wait_task(
        &self,
        svc: &Service,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let (status, task) = self.get(&svc.url(&format!("/api/tasks/{id}")));
            if status == 200 && done(&task) {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not get there: {task}\n{}",
                svc.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Sends `GET path` to `base` over a plain socket with exactly `headers`
/// (an HTTP client would set Host itself); the response's status.
pub fn raw_get(base: &str, path: &str, headers: &[(String, String)]) -> u16 {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).unwrap();
    let text = String::from_utf8_lossy(&head);
    text[9..12]
        .parse()
        .unwrap_or_else(|_| panic!("not an HTTP answer: {text}"))
}

/// Whether a task has ended.
pub fn ended(t: &Value) -> bool {
    matches!(
        t["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}
