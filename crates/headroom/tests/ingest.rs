//! `headroom ingest` against a real redis-server and a WebSocket firehose:
//! order and completeness, backpressure that reaches the sender while
//! memory stays flat, Redis restarts and WebSocket drops, standard input,
//! and bad input.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::ingest::{
    Firehose, FirehoseOptions, RedisServer, assert_exactly_in_order, rss_of, stream_entries,
};
use common::{text, wait_measured};

const MIB: u64 = 1 << 20;

fn ingest_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom"));
    cmd.args(args)
        .env_remove("HEADROOM_MEMORY")
        .env("RUST_LOG", "info");
    cmd
}

fn xlen(c: &mut redis::Connection, stream: &str) -> u64 {
    redis::cmd("XLEN").arg(stream).query(c).expect("XLEN")
}

/// Waits until `cond` holds, polling; panics with `what` after `limit`.
#[track_caller]
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The JSON progress records a child wrote to `stderr`.
fn progress_records(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "progress")
        .collect()
}

fn summary_json(stdout: &str) -> serde_json::Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no JSON summary in {stdout:?}"))
}

#[test]
fn every_websocket_event_arrives_in_order_and_none_is_missing() {
    let redis = RedisServer::start();
    let firehose = Firehose::start(FirehoseOptions {
        total: 100_000,
        padding: 64,
        drop_every: None,
    });
    let out = ingest_command(&[
        "--log-format",
        "json",
        "ingest",
        "--from",
        &firehose.url(),
        "--to",
        &redis.url("events"),
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = summary_json(&text(&out.stdout));
    assert_eq!(summary["events_written"], 100_000, "{summary}");
    assert_eq!(summary["events_unwritten"], 0);
    let events = stream_entries(&mut redis.connection(), "events");
    assert_exactly_in_order(&events, 100_000);
}

#[test]
fn high_water_stops_the_socket_memory_stays_flat_and_a_consumer_resumes_it() {
    const HIGH_WATER: u64 = 1000;
    const BATCH: u64 = 100;
    const PIPELINE: u64 = 3;
    const MAX_IN_FLIGHT: u64 = 2000;
    const TOTAL: u64 = 60_000;
    let redis = RedisServer::start();
    let firehose = Firehose::start(FirehoseOptions {
        total: TOTAL,
        padding: 1000,
        drop_every: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let child = ingest_command(&[
        "--memory",
        "32MiB",
        "--log-format",
        "json",
        "ingest",
        "--from",
        &firehose.url(),
        "--to",
        &redis.url("paused"),
        "--high-water",
        &HIGH_WATER.to_string(),
        "--batch-size",
        &BATCH.to_string(),
        "--pipeline",
        &PIPELINE.to_string(),
        "--max-in-flight",
        &MAX_IN_FLIGHT.to_string(),
        "--progress-interval",
        "1s",
    ])
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&err_path).unwrap())
    .spawn()
    .unwrap();
    let pid = child.id();
    let mut c = redis.connection();

    // No consumer: the stream fills to high water and everything stops.
    wait_until(
        Duration::from_secs(30),
        "the stream to reach high water",
        || xlen(&mut c, "paused") >= HIGH_WATER,
    );
    std::thread::sleep(Duration::from_secs(3));
    let sent_at_start = firehose.stats.sent.load(Ordering::Acquire);
    let mut rss = Vec::new();
    let paused_from = Instant::now();
    while paused_from.elapsed() < Duration::from_secs(20) {
        let len = xlen(&mut c, "paused");
        // Each batch in flight may land after the one that reached it.
        assert!(
            len <= HIGH_WATER + PIPELINE * BATCH,
            "stream length {len} > high water + the batches in flight"
        );
        rss.push(rss_of(pid));
        std::thread::sleep(Duration::from_secs(2));
    }
    let sent_at_end = firehose.stats.sent.load(Ordering::Acquire);
    let blocked = firehose.stats.longest_blocked_send();
    let (lo, hi) = (*rss.iter().min().unwrap(), *rss.iter().max().unwrap());
    eprintln!(
        "paused 20 s: firehose sent {sent_at_end} of {TOTAL}, longest blocked send {blocked:?}, rss {:.1}..{:.1} MiB over {} samples",
        lo as f64 / MIB as f64,
        hi as f64 / MIB as f64,
        rss.len()
    );
    assert!(sent_at_end < TOTAL / 2, "the firehose was not held back");
    assert_eq!(
        sent_at_start, sent_at_end,
        "the firehose kept sending while ingestion was paused"
    );
    assert!(
        blocked >= Duration::from_secs(15),
        "the firehose's sends did not block ({blocked:?})"
    );
    assert!(lo > 0 && hi < 32 * MIB, "rss {hi} over the 32 MiB budget");
    assert!(
        hi - lo <= 2 * MIB,
        "rss moved by {} KiB while paused: {rss:?}",
        (hi - lo) / 1024
    );

    // A consumer trims what it has read: ingestion resumes, and every event
    // still arrives, in order.
    let mut next = 1;
    let mut last_id = "0".to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    while next <= TOTAL {
        assert!(
            Instant::now() < deadline,
            "only {} of {TOTAL} arrived",
            next - 1
        );
        let page: common::ingest::Entries = redis::cmd("XRANGE")
            .arg("paused")
            .arg(format!("({last_id}"))
            .arg("+")
            .arg("COUNT")
            .arg(500)
            .query(&mut c)
            .unwrap();
        if page.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        for (id, fields) in &page {
            let seq = common::ingest::seq_of(&fields[0].1);
            assert_eq!(seq, next, "after trimming resumed, at {id}");
            next += 1;
            last_id.clone_from(id);
        }
        let _: u64 = redis::cmd("XTRIM")
            .arg("paused")
            .arg("MINID")
            .arg(bump(&last_id))
            .query(&mut c)
            .unwrap();
    }
    let (ok, peak) = wait_measured(child);
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(ok, "{stderr}");
    let records = progress_records(&stderr);
    let paused: Vec<_> = records
        .iter()
        .filter(|r| r["backpressure"] == true)
        .collect();
    assert!(
        paused.len() >= 15,
        "backpressure in {} records",
        paused.len()
    );
    for r in &records {
        let in_flight = r["events_in_flight"].as_u64().unwrap();
        assert!(
            in_flight <= MAX_IN_FLIGHT,
            "{in_flight} events in flight: {r}"
        );
    }
    eprintln!("peak rss {:.1} MiB", peak as f64 / MIB as f64);
    assert!(peak < 32 * MIB, "peak rss {peak}");
}

/// The smallest stream ID above `id`.
fn bump(id: &str) -> String {
    let (ms, seq) = id.split_once('-').unwrap();
    format!("{ms}-{}", seq.parse::<u64>().unwrap() + 1)
}

#[test]
fn a_redis_restart_mid_run_loses_and_duplicates_nothing() {
    const TOTAL: u64 = 150_000;
    let mut redis = RedisServer::start_durable();
    let firehose = Firehose::start(FirehoseOptions {
        total: TOTAL,
        padding: 32,
        drop_every: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let child = ingest_command(&[
        "--log-format",
        "json",
        "ingest",
        "--from",
        &firehose.url(),
        "--to",
        &redis.url("durable"),
        "--batch-size",
        "200",
    ])
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&err_path).unwrap())
    .spawn()
    .unwrap();
    let mut c = redis.connection();
    wait_until(
        Duration::from_secs(60),
        "20,000 events in the stream",
        || xlen(&mut c, "durable") >= 20_000,
    );
    redis.kill();
    std::thread::sleep(Duration::from_millis(1500));
    redis.restart();
    let out = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(out.status.success(), "{stderr}");
    let summary = summary_json(&text(&out.stdout));
    assert!(
        summary["redis_retries"].as_u64().unwrap() > 0,
        "Redis never failed: {summary}"
    );
    assert_eq!(summary["events_written"], TOTAL, "{summary}");
    let events = stream_entries(&mut redis.connection(), "durable");
    assert_exactly_in_order(&events, TOTAL);
}

#[test]
fn a_dropped_websocket_reconnects_from_the_acknowledged_cursor() {
    const TOTAL: u64 = 100_000;
    let redis = RedisServer::start();
    let firehose = Firehose::start(FirehoseOptions {
        total: TOTAL,
        padding: 64,
        drop_every: Some(30_000),
    });
    let out = ingest_command(&[
        "--log-format",
        "json",
        "ingest",
        "--from",
        &firehose.url(),
        "--to",
        &redis.url("reconnects"),
        "--cursor-param",
        "cursor",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = summary_json(&text(&out.stdout));
    assert!(summary["reconnects"].as_u64().unwrap() >= 3, "{summary}");
    let cursors = firehose.stats.cursors.lock().unwrap().clone();
    assert_eq!(cursors[0], None, "the first connection has no cursor");
    assert!(cursors.len() >= 4, "connections: {cursors:?}");
    assert!(
        cursors[1..].iter().all(|c| c.is_some()),
        "every reconnection carries a cursor: {cursors:?}"
    );
    let events = stream_entries(&mut redis.connection(), "reconnects");
    assert_exactly_in_order(&events, TOTAL);
}

#[test]
fn a_gigabyte_on_standard_input_behind_a_full_stream_keeps_memory_bounded() {
    const LINE: usize = 4096;
    const LINES: u64 = (1 << 30) / LINE as u64;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let mut child = ingest_command(&[
        "--memory",
        "32MiB",
        "--log-format",
        "json",
        "ingest",
        "--from",
        "-",
        "--to",
        &redis.url("stdin"),
        "--high-water",
        "1000",
        "--batch-size",
        "100",
        "--max-in-flight",
        "1000",
        "--progress-interval",
        "1s",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&err_path).unwrap())
    .spawn()
    .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let fed = Arc::new(AtomicU64::new(0));
    let feeder = {
        let fed = fed.clone();
        std::thread::spawn(move || {
            let pad = "y".repeat(LINE);
            for seq in 1..=LINES {
                let mut line = format!(r#"{{"seq":{seq},"pad":""#);
                line.push_str(&pad[..LINE - 3 - line.len()]);
                line.push_str("\"}\n");
                assert_eq!(line.len(), LINE);
                if stdin.write_all(line.as_bytes()).is_err() {
                    return;
                }
                fed.fetch_add(LINE as u64, Ordering::Release);
            }
        })
    };
    let mut c = redis.connection();
    wait_until(
        Duration::from_secs(30),
        "the stream to reach high water",
        || xlen(&mut c, "stdin") >= 1000,
    );
    std::thread::sleep(Duration::from_secs(2));
    let fed_at_start = fed.load(Ordering::Acquire);
    let mut rss = Vec::new();
    for _ in 0..6 {
        rss.push(rss_of(pid));
        std::thread::sleep(Duration::from_secs(1));
    }
    let fed_at_end = fed.load(Ordering::Acquire);
    let (lo, hi) = (*rss.iter().min().unwrap(), *rss.iter().max().unwrap());
    eprintln!(
        "paused: {:.1} MiB of 1 GiB fed, rss {:.1}..{:.1} MiB",
        fed_at_end as f64 / MIB as f64,
        lo as f64 / MIB as f64,
        hi as f64 / MIB as f64
    );
    assert_eq!(
        fed_at_start, fed_at_end,
        "the pipe kept draining while paused"
    );
    assert!(
        fed_at_end < 64 * MIB,
        "{fed_at_end} bytes taken while paused"
    );
    assert!(
        hi < 32 * MIB && hi - lo <= 2 * MIB,
        "rss while paused: {rss:?}"
    );

    // Trim everything as it arrives: the whole gigabyte goes through.
    let trimmer_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trimmer = {
        let stop = trimmer_stop.clone();
        let mut c = redis.connection();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let _: u64 = redis::cmd("XTRIM")
                    .arg("stdin")
                    .arg("MAXLEN")
                    .arg(0)
                    .query(&mut c)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut samples = Vec::new();
    while !feeder.is_finished() {
        samples.push(rss_of(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    feeder.join().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (ok, peak) = wait_measured(child);
    trimmer_stop.store(true, Ordering::Release);
    trimmer.join().unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(ok, "{stderr}");
    let out = std::io::read_to_string(stdout).unwrap();
    let summary = summary_json(&out);
    assert_eq!(summary["events_written"], LINES, "{summary}");
    let info: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg("stdin")
        .query(&mut c)
        .unwrap();
    let added = info
        .chunks(2)
        .find(|kv| redis::from_redis_value_ref::<String>(&kv[0]).unwrap() == "entries-added")
        .map(|kv| redis::from_redis_value_ref::<u64>(&kv[1]).unwrap())
        .unwrap();
    assert_eq!(added, LINES, "entries added to the stream");
    eprintln!(
        "1 GiB through: peak rss {:.1} MiB, samples up to {:.1} MiB",
        peak as f64 / MIB as f64,
        *samples.iter().max().unwrap_or(&0) as f64 / MIB as f64
    );
    assert!(peak < 32 * MIB, "peak rss {peak}");
}

#[test]
fn bad_input_gets_a_clear_error_and_a_failing_exit() {
    let redis = RedisServer::start();
    let mut c = redis.connection();
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg("x")
        .query(&mut c)
        .unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let unreachable = format!("redis://127.0.0.1:{closed}/s");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--from".into(),
                "-".into(),
                "--to".into(),
                unreachable.clone(),
            ],
            "cannot connect to Redis at",
        ),
        (
            vec![
                "--from".into(),
                "-".into(),
                "--to".into(),
                redis.url("plain"),
            ],
            "holds a string, not a stream",
        ),
        (
            vec![
                "--from".into(),
                "-".into(),
                "--to".into(),
                "redis://127.0.0.1:1".into(),
            ],
            "names no stream",
        ),
        (
            vec![
                "--from".into(),
                "-".into(),
                "--to".into(),
                "http://h/s".into(),
            ],
            "unsupported scheme http://",
        ),
        (
            vec![
                "--from".into(),
                "tcp://h:1".into(),
                "--to".into(),
                redis.url("s"),
            ],
            "unsupported scheme tcp://",
        ),
        (
            vec![
                "--from".into(),
                "ws://".into(),
                "--to".into(),
                redis.url("s"),
            ],
            "invalid source",
        ),
        (
            vec![
                "--from".into(),
                format!("ws://127.0.0.1:{closed}/x"),
                "--to".into(),
                redis.url("s"),
            ],
            "cannot connect to ws://127.0.0.1",
        ),
        (
            vec![
                "--from".into(),
                "-".into(),
                "--to".into(),
                redis.url("s"),
                "--batch-size".into(),
                "600".into(),
                "--max-in-flight".into(),
                "1000".into(),
            ],
            "must be at least (--pipeline + 1) x --batch-size",
        ),
    ];
    for (args, words) in cases {
        let out = ingest_command(&["ingest"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(words),
            "{args:?}: expected {words:?} in:\n{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(xlen(&mut c, "s"), 0, "nothing was written");
}

#[test]
fn a_line_longer_than_the_largest_event_fails_after_writing_the_lines_before_it() {
    let redis = RedisServer::start();
    let mut child = ingest_command(&[
        "ingest",
        "--from",
        "-",
        "--to",
        &redis.url("long"),
        "--max-event-size",
        "1KiB",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(b"{\"seq\":1}\n{\"seq\":2}\r\n\n");
        let _ = stdin.write_all(&vec![b'z'; 5000]);
        let _ = stdin.write_all(b"\n{\"seq\":3}\n");
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("line 4 of standard input is longer than --max-event-size (1.0 KiB)"),
        "{err}"
    );
    let events = stream_entries(&mut redis.connection(), "long");
    let data: Vec<&[u8]> = events.iter().map(|(_, d)| d.as_slice()).collect();
    assert_eq!(
        data,
        [&b"{\"seq\":1}"[..], b"{\"seq\":2}"],
        "blank line skipped, CR stripped"
    );
}

#[test]
fn another_writer_with_higher_ids_does_not_lose_events() {
    let redis = RedisServer::start();
    let mut child = ingest_command(&[
        "ingest",
        "--from",
        "-",
        "--to",
        &redis.url("shared"),
        "--flush-interval",
        "1ms",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut c = redis.connection();
    for seq in 1..=100 {
        writeln!(stdin, "{{\"seq\":{seq}}}").unwrap();
    }
    stdin.flush().unwrap();
    wait_until(Duration::from_secs(20), "the first 100 events", || {
        xlen(&mut c, "shared") >= 100
    });
    // Another client appends an entry an hour ahead of the clock.
    let ahead = format!(
        "{}-0",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            + 3_600_000
    );
    let _: String = redis::cmd("XADD")
        .arg("shared")
        .arg(&ahead)
        .arg("data")
        .arg(r#"{"seq":0}"#)
        .query(&mut c)
        .unwrap();
    for seq in 101..=200 {
        writeln!(stdin, "{{\"seq\":{seq}}}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let seqs: Vec<u64> = stream_entries(&mut c, "shared")
        .iter()
        .map(|(_, d)| common::ingest::seq_of(d))
        .collect();
    let mut expected: Vec<u64> = (1..=100).collect();
    expected.push(0);
    expected.extend(101..=200);
    assert_eq!(seqs, expected, "ours, theirs, then ours after theirs");
    assert!(
        text(&out.stderr).contains("another client"),
        "{}",
        text(&out.stderr)
    );
}

/// Redis refuses writes (OOM) on and off while eight batches are in
/// flight: a batch refused in the middle of the pipeline must not let the
/// ones behind it land first. Without the append script's guard, the
/// batches after a refused one landed and the refused one went after them.
#[test]
fn batches_refused_mid_pipeline_land_again_in_order() {
    const TOTAL: u64 = 10_000;
    let redis = RedisServer::start();
    let firehose = Firehose::start(FirehoseOptions {
        total: TOTAL,
        padding: 2048,
        drop_every: None,
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refusals = {
        let (stop, mut c) = (stop.clone(), redis.connection());
        std::thread::spawn(move || {
            // maxmemory 1: every write is refused with OOM (2 ms); 0: no
            // limit (8 ms); until the ingest ends. Batches of 40 KiB take
            // Redis several reads each, so a flip falls between two
            // batches in flight.
            let mut flips = 0u64;
            while !stop.load(Ordering::Acquire) {
                for (limit, ms) in [("1", 2), ("0", 8)] {
                    let _: () = redis::cmd("CONFIG")
                        .arg("SET")
                        .arg("maxmemory")
                        .arg(limit)
                        .query(&mut c)
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(ms));
                }
                flips += 1;
            }
            flips
        })
    };
    let out = ingest_command(&[
        "--log-format",
        "json",
        "ingest",
        "--from",
        &firehose.url(),
        "--to",
        &redis.url("flaky"),
        "--batch-size",
        "20",
        "--pipeline",
        "8",
    ])
    .output()
    .unwrap();
    stop.store(true, Ordering::Release);
    let flips = refusals.join().unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut redis.connection())
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = summary_json(&text(&out.stdout));
    eprintln!("{flips} refusal windows; {summary}");
    assert!(
        summary["redis_retries"].as_u64().unwrap() >= 3,
        "Redis hardly refused: {summary}"
    );
    assert_eq!(summary["events_written"], TOTAL, "{summary}");
    let events = stream_entries(&mut redis.connection(), "flaky");
    assert_exactly_in_order(&events, TOTAL);
}
