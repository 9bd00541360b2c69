//! `headroom ingest` keeps to its own limits when the other side keeps
//! refusing: a Redis that refuses every append, a WebSocket server that
//! accepts and drops; and it keeps the Redis password out of messages and
//! off the command line.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::ingest::RedisServer;
use common::text;

fn ingest(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom"));
    cmd.arg("ingest")
        .args(args)
        .env_remove("HEADROOM_MEMORY")
        .env_remove("HEADROOM_REDIS_PASSWORD")
        .env("RUST_LOG", "info");
    cmd
}

/// Waits for `child` at most `limit`; kills it and fails if it is still
/// running then. Its exit status and standard error.
fn finish_within(mut child: std::process::Child, limit: Duration) -> (bool, String) {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (out.status.success(), text(&out.stderr));
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` with `n` lines (`{"seq":I}`) on its standard input, then
/// end of input; whether it succeeded within 30 s, and its stderr.
fn ingest_lines(mut cmd: Command, n: usize) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for i in 0..n {
            writeln!(stdin, "{{\"seq\":{i}}}").unwrap();
        }
    }
    finish_within(child, Duration::from_secs(30))
}

#[test]
fn a_stream_that_refuses_every_append_ends_the_job_instead_of_a_busy_loop() {
    let redis = RedisServer::start();
    let mut c = redis.connection();
    // The largest ID there is: no entry can ever follow it.
    let _: String = redis::cmd("XADD")
        .arg("full")
        .arg("18446744073709551615-18446744073709551615")
        .arg("data")
        .arg("x")
        .query(&mut c)
        .unwrap();
    let (ok, err) = ingest_lines(
        ingest(&[
            "--from",
            "-",
            "--to",
            &redis.url("full"),
            "--redis-retry-for",
            "3s",
        ]),
        100,
    );
    assert!(!ok, "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let len: u64 = redis::cmd("XLEN").arg("full").query(&mut c).unwrap();
    assert_eq!(len, 1, "nothing was appended");
}

/// A WebSocket server that completes every handshake and closes the
/// connection at once (abnormally); counts the connections.
fn accept_and_drop() -> (String, Arc<AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/firehose", listener.local_addr().unwrap());
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            if let Ok(ws) = tungstenite_accept(stream) {
                drop(ws); // no close frame: an abnormal end
            }
        }
    });
    (url, count)
}

fn tungstenite_accept(
    stream: std::net::TcpStream,
) -> Result<std::net::TcpStream, Box<dyn std::error::Error>> {
    // The handshake by hand: a 101 with the accept key, as RFC 6455 says.
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut key = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("sec-websocket-key")
        {
            key = Some(value.trim().to_string());
        }
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
        key.ok_or("no key")?.as_bytes(),
    );
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )?;
    Ok(stream)
}

#[test]
fn a_server_that_accepts_and_drops_is_given_up_on_after_reconnect_for_with_backoff() {
    let redis = RedisServer::start();
    let (url, connections) = accept_and_drop();
    let child = ingest(&[
        "--from",
        &url,
        "--to",
        &redis.url("s"),
        "--reconnect-for",
        "4s",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let (ok, err) = finish_within(child, Duration::from_secs(40));
    assert!(!ok, "{err}");
    assert!(err.contains("has delivered no event for 4s"), "{err}");
    // Backoff from 100 ms doubling: a handful of connections in 4 s, not
    // thousands.
    let n = connections.load(Ordering::SeqCst);
    assert!((2..=20).contains(&n), "{n} connections");
}

#[test]
fn the_redis_password_comes_from_the_environment_and_is_never_echoed() {
    let redis = RedisServer::start_with(&["--appendonly", "no", "--requirepass", "hunter2-secret"]);
    // In the URL, it is not repeated by an error.
    let out = ingest(&["--from", "-", "--to", "redis://:hunter2-secret@127.0.0.1:1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("names no stream"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let mut cmd = ingest(&["--from", "-", "--to", &redis.url("s")]);
    cmd.env("HEADROOM_REDIS_PASSWORD", "hunter2-secret");
    let (ok, err) = ingest_lines(cmd, 10);
    assert!(ok, "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let mut c = redis::Client::open(format!("redis://:hunter2-secret@127.0.0.1:{}/", redis.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let len: u64 = redis::cmd("XLEN").arg("s").query(&mut c).unwrap();
    assert_eq!(len, 10);

    // From a file, too; a wrong one fails without echoing it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "wrong-secret\n").unwrap();
    let out = ingest(&[
        "--from",
        "-",
        "--to",
        &redis.url("s"),
        "--redis-password-file",
        file.to_str().unwrap(),
    ])
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("wrong-secret"), "{err}");
}
