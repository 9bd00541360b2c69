//! Test peers for `headroom ingest`: a real `redis-server` on a loopback
//! port (killable and restartable on the same port and data), and a
//! WebSocket firehose that emits numbered JSON events as fast as the
//! socket takes them and records how long its sends block.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A `redis-server` of the test's own, on a free loopback port.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// An in-memory server.
    pub fn start() -> Self {
        Self::start_with(&["--appendonly", "no"])
    }

    /// A server that fsyncs every write before acknowledging it, so that a
    /// `kill -9` loses nothing it acknowledged.
    pub fn start_durable() -> Self {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// A server started with extra `redis-server` flags.
    pub fn start_with(extra: &[&str]) -> Self {
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server not found: scripts/test.sh installs it (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = self.try_connection() {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query(&mut c);
                // A server with --requirepass answers, asking for AUTH.
                if pong.is_ok() || pong.is_err_and(|e| e.code() == Some("NOAUTH")) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?
            .get_connection_with_timeout(Duration::from_secs(2))
    }

    /// A connection for the test's own commands.
    pub fn connection(&self) -> redis::Connection {
        self.try_connection()
            .expect("connect to the test redis-server")
    }

    /// `redis://127.0.0.1:PORT/STREAM`.
    pub fn url(&self, stream: &str) -> String {
        format!("redis://127.0.0.1:{}/{stream}", self.port)
    }

    /// SIGKILL, no shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The data directory (for the AOF).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A page of XRANGE: (ID, [(field, value)]).
pub type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// Every entry of `stream` in order, with all its fields, read in pages.
pub fn entries(c: &mut redis::Connection, stream: &str) -> Entries {
    let mut out = Vec::new();
    let mut start = "-".to_string();
    loop {
        let page: Entries = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query(c)
            .expect("XRANGE");
        let Some(last) = page.last() else { break };
        start = format!("({}", last.0);
        out.extend(page);
    }
    out
}

/// Every entry of `stream` in order, as (ID, the `data` field).
pub fn stream_entries(c: &mut redis::Connection, stream: &str) -> Vec<(String, Vec<u8>)> {
    entries(c, stream)
        .into_iter()
        .map(|(id, fields)| {
            let data = fields
                .into_iter()
                .find(|(k, _)| k == "data")
                .map(|(_, v)| v)
                .expect("a data field");
            (id, data)
        })
        .collect()
}

/// The ID of `stream`'s last entry ("" when it has none).
pub fn last_id(c: &mut redis::Connection, stream: &str) -> String {
    let top: Entries = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(c)
        .expect("XREVRANGE");
    top.first().map(|e| e.0.clone()).unwrap_or_default()
}

/// The `seq` of a firehose event.
pub fn seq_of(event: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(event).expect("a JSON event");
    v["seq"].as_u64().expect("a seq field")
}

/// Asserts `events` are exactly the firehose's 1..=n, in order.
#[track_caller]
pub fn assert_exactly_in_order(events: &[(String, Vec<u8>)], n: u64) {
    let mut expected = 1;
    for (id, data) in events {
        let seq = seq_of(data);
        assert_eq!(
            seq, expected,
            "entry {id}: expected event {expected}, found {seq}"
        );
        expected += 1;
    }
    assert_eq!(expected - 1, n, "events in the stream");
}

/// How the firehose behaves.
#[derive(Clone, Debug)]
pub struct FirehoseOptions {
    /// Events in all: 1..=total, then a normal close.
    pub total: u64,
    /// Bytes of padding per event.
    pub padding: usize,
    /// Drop the TCP connection (no close frame) after this many events on
    /// each connection.
    pub drop_every: Option<u64>,
}

/// What the firehose saw.
#[derive(Debug, Default)]
pub struct FirehoseStats {
    /// The highest sequence number sent.
    pub sent: AtomicU64,
    pub connections: AtomicU64,
    /// The cursor query parameter of each connection, in order.
    pub cursors: Mutex<Vec<Option<u64>>>,
    /// The longest any single send has waited for the socket (ms).
    longest_send_ms: AtomicU64,
    /// When the send now waiting began (ms since start; 0: none).
    send_started_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl FirehoseStats {
    fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
    }

    /// The longest a send has been blocked, the one waiting now included.
    pub fn longest_blocked_send(&self) -> Duration {
        let started = self.send_started_ms.load(Ordering::Acquire);
        let current = if started == 0 {
            0
        } else {
            self.now_ms().saturating_sub(started)
        };
        Duration::from_millis(current.max(self.longest_send_ms.load(Ordering::Acquire)))
    }
}

/// A WebSocket server emitting `{"seq":N,"pad":"..."}` events.
pub struct Firehose {
    pub port: u16,
    pub stats: Arc<FirehoseStats>,
    _runtime: tokio::runtime::Runtime,
}

impl Firehose {
    pub fn start(options: FirehoseOptions) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let stats = Arc::new(FirehoseStats::default());
        stats.now_ms();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().unwrap().port();
        let s = stats.clone();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, options.clone(), s.clone()));
            }
        });
        Firehose {
            port,
            stats,
            _runtime: runtime,
        }
    }

    /// `ws://127.0.0.1:PORT/firehose`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/firehose", self.port)
    }
}

async fn serve(tcp: tokio::net::TcpStream, o: FirehoseOptions, stats: Arc<FirehoseStats>) {
    let cursor = Arc::new(Mutex::new(None));
    let c = cursor.clone();
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let callback = move |req: &Request, resp: Response| {
        let parsed = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("cursor="))
                .and_then(|v| v.parse::<u64>().ok())
        });
        *c.lock().unwrap() = parsed;
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    let cursor = *cursor.lock().unwrap();
    stats.connections.fetch_add(1, Ordering::Relaxed);
    stats.cursors.lock().unwrap().push(cursor);
    let pad = "x".repeat(o.padding);
    for (sent_here, seq) in (cursor.map_or(1, |c| c + 1)..=o.total).enumerate() {
        let event = format!(r#"{{"seq":{seq},"pad":"{pad}"}}"#);
        let started = stats.now_ms();
        stats.send_started_ms.store(started, Ordering::Release);
        // `feed` writes to the socket whenever the write buffer is full, so
        // it waits exactly when the peer stops reading.
        let sent = ws.feed(Message::text(event)).await;
        stats.send_started_ms.store(0, Ordering::Release);
        stats
            .longest_send_ms
            .fetch_max(stats.now_ms() - started, Ordering::AcqRel);
        if sent.is_err() {
            return;
        }
        stats.sent.fetch_max(seq, Ordering::AcqRel);
        if o.drop_every.is_some_and(|n| sent_here as u64 + 1 >= n) && seq < o.total {
            // Abruptly: flush what was sent, then drop the socket.
            let _ = ws.flush().await;
            return;
        }
    }
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "end of firehose".into(),
        }))
        .await;
    // Wait for the client's close so nothing sent is lost in a reset.
    use futures::StreamExt;
    while let Some(Ok(_)) = ws.next().await {}
}

/// The resident set of a running process, from /proc.
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
