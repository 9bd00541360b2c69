//! `headroom ingest --format atproto` against a loopback AT Protocol event
//! stream that follows the spec's cursor rules (`tests/common/atproto.rs`)
//! and a real redis-server: every frame once and in order under IDs
//! `0-SEQ`, resumed from the stream after `kill -9`, through
//! `ConsumerTooSlow`, an undecodable frame and a duplicated replay; a
//! `FutureCursor` stops with an error; an `OutdatedCursor` is a counted gap.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::atproto::{AtprotoOptions, AtprotoServer, collection_of, commit_frame};
use common::ingest::{RedisServer, entries, last_id};
use common::text;

fn ingest(server: &AtprotoServer, redis: &RedisServer, stream: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom"));
    cmd.args([
        "--log-format",
        "json",
        "ingest",
        "--format",
        "atproto",
        "--from",
    ])
    .arg(server.url())
    .arg("--to")
    .arg(redis.url(stream))
    .args(["--reconnect-for", "20s"])
    .args(extra)
    .env_remove("HEADROOM_MEMORY")
    .env("RUST_LOG", "info");
    cmd
}

fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &fields
        .iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no field {name}"))
        .1
}

/// Checks that `stream` holds exactly the frames `seqs`, in order, each
/// under ID `0-SEQ` with its `t` and `seq` fields and the frame itself.
#[track_caller]
fn assert_frames(
    c: &mut redis::Connection,
    stream: &str,
    seqs: impl IntoIterator<Item = u64>,
    blocks: usize,
) {
    let got = entries(c, stream);
    let want: Vec<u64> = seqs.into_iter().collect();
    assert_eq!(got.len(), want.len(), "entries in {stream}");
    for ((id, fields), seq) in got.iter().zip(&want) {
        assert_eq!(id, &format!("0-{seq}"));
        assert_eq!(field(fields, "t"), b"#commit");
        assert_eq!(field(fields, "seq"), seq.to_string().as_bytes());
        assert!(
            field(fields, "data") == commit_frame(*seq, blocks),
            "frame {seq} differs"
        );
    }
}

fn summary(stdout: &str) -> serde_json::Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {stdout:?}"))
}

fn xlen(c: &mut redis::Connection, stream: &str) -> u64 {
    redis::cmd("XLEN").arg(stream).query(c).expect("XLEN")
}

#[test]
fn every_frame_lands_once_in_order_through_too_slow_garbage_a_duplicate_and_a_kill() {
    const TOTAL: u64 = 6_000;
    let server = AtprotoServer::start(AtprotoOptions {
        total: TOTAL,
        initial: 500,
        rate: 1_000,
        too_slow_after: Some(800),
        garbage_after: Some(1_500),
        resend_cursor: true,
        ..AtprotoOptions::default()
    });
    let redis = RedisServer::start();
    let mut c = redis.connection();
    let mut child = ingest(&server, &redis, "firehose", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // No cursor at first: live, from frame 500 on. Kill -9 mid-stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    while xlen(&mut c, "firehose") < 2_500 {
        assert!(Instant::now() < deadline, "ingest stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let first = child.wait_with_output().unwrap();
    let before: Vec<String> = entries(&mut c, "firehose")
        .into_iter()
        .map(|e| e.0)
        .collect();
    let last_before: u64 = before.last().unwrap()[2..].parse().unwrap();
    eprintln!(
        "killed with {} entries, the last 0-{last_before}",
        before.len()
    );

    // The restart resumes from the stream's last seq; the server repeats
    // the frame at the cursor, which is dropped.
    let child = ingest(&server, &redis, "firehose", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while last_id(&mut c, "firehose") != format!("0-{TOTAL}") {
        assert!(
            Instant::now() < deadline,
            "ingest stalled after the restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{stderr}\nfirst run: {}",
        text(&first.stderr)
    );
    // Live from where the first connection joined, then every frame.
    let live_from: u64 = before[0][2..].parse().unwrap();
    assert!(live_from > 500, "live, not replayed: {live_from}");
    assert_frames(&mut c, "firehose", live_from..=TOTAL, 256);
    let cursors = server.stats.cursors.lock().unwrap().clone();
    eprintln!("cursors: {cursors:?}");
    assert_eq!(cursors[0], None, "the first connection is live");
    assert!(
        cursors.contains(&Some(last_before)),
        "the restart resumed from the stream: {cursors:?}"
    );
    assert!(cursors[1..].iter().all(|c| c.is_some()), "{cursors:?}");
    let s = summary(&stdout);
    eprintln!("second run: {s}");
    assert!(
        s["replays_dropped"].as_u64().unwrap() >= 1,
        "the duplicate at the cursor: {s}"
    );
    let first_log = text(&first.stderr);
    assert!(first_log.contains("ConsumerTooSlow"), "{first_log}");
    assert!(first_log.contains("undecodable frame"), "{first_log}");
}

#[test]
fn a_future_cursor_stops_the_ingest_with_an_error() {
    let server = AtprotoServer::start(AtprotoOptions {
        total: 100,
        initial: 100,
        ..AtprotoOptions::default()
    });
    let redis = RedisServer::start();
    let mut c = redis.connection();
    // A stream ahead of this server (another relay's, say).
    let _: String = redis::cmd("XADD")
        .arg("ahead")
        .arg("0-5000")
        .arg("data")
        .arg("x")
        .query(&mut c)
        .unwrap();
    let out = ingest(&server, &redis, "ahead", &[]).output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("FutureCursor"), "{stderr}");
    assert!(stderr.contains("5000"), "names the cursor: {stderr}");
    assert_eq!(
        server.stats.cursors.lock().unwrap().clone(),
        vec![Some(5000)],
        "no retry loop"
    );
    assert_eq!(xlen(&mut c, "ahead"), 1);

    // A stream another writer filled is refused before connecting.
    let _: String = redis::cmd("XADD")
        .arg("other")
        .arg("*")
        .arg("data")
        .arg("x")
        .query(&mut c)
        .unwrap();
    let out = ingest(&server, &redis, "other", &[]).output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not written by an AT Protocol ingest"),
        "{stderr}"
    );
}

#[test]
fn an_outdated_cursor_is_a_counted_gap_and_the_window_follows() {
    // The server keeps the newest 500 of 2,000 frames.
    let server = AtprotoServer::start(AtprotoOptions {
        total: 2_000,
        initial: 2_000,
        window: 500,
        ..AtprotoOptions::default()
    });
    let redis = RedisServer::start();
    let mut c = redis.connection();
    let _: String = redis::cmd("XADD")
        .arg("behind")
        .arg("0-10")
        .arg("data")
        .arg(commit_frame(10, 256))
        .arg("t")
        .arg("#commit")
        .arg("seq")
        .arg(10)
        .query(&mut c)
        .unwrap();
    let child = ingest(&server, &redis, "behind", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while xlen(&mut c, "behind") < 501 {
        assert!(Instant::now() < deadline, "ingest stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = summary(&text(&out.stdout));
    assert_eq!(s["cursor_gaps"], 1, "{s}");
    assert!(text(&out.stderr).contains("OutdatedCursor"));
    assert_frames(
        &mut c,
        "behind",
        std::iter::once(10).chain(1_501..=2_000),
        256,
    );
}

#[test]
fn frames_can_be_stored_as_json_bodies() {
    let server = AtprotoServer::start(AtprotoOptions {
        total: 50,
        initial: 50,
        ..AtprotoOptions::default()
    });
    let redis = RedisServer::start();
    let mut c = redis.connection();
    // From the start: cursor 0 replays the whole window.
    let child = ingest(
        &server,
        &redis,
        "json",
        &["--atproto-store", "json", "--start-cursor", "0"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while xlen(&mut c, "json") < 50 {
        assert!(Instant::now() < deadline, "ingest stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait_with_output().unwrap().status.success());
    let got = entries(&mut c, "json");
    assert_eq!(got.len(), 50);
    for (i, (id, fields)) in got.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(id, &format!("0-{seq}"));
        let body: serde_json::Value = serde_json::from_slice(field(fields, "data")).unwrap();
        assert_eq!(body["seq"], seq);
        assert_eq!(body["repo"], format!("did:plc:test{}", seq % 7));
        assert!(
            body["commit"]["$link"]
                .as_str()
                .unwrap()
                .starts_with("bafyrei"),
            "{body}"
        );
        assert!(body["blocks"]["$bytes"].is_string(), "{body}");
    }
}

#[test]
fn an_event_stream_needs_a_websocket_and_its_own_fields() {
    let redis = RedisServer::start();
    for (from, field, says) in [
        ("-", "data", "not standard input"),
        (
            "ws://127.0.0.1:9/x",
            "seq",
            "`t` and `seq` are the entry's own fields",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_headroom"))
            .args([
                "ingest", "--format", "atproto", "--from", from, "--field", field, "--to",
            ])
            .arg(redis.url("s"))
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn a_30_second_pause_at_high_water_loses_no_frame_and_memory_stays_flat() {
    const TOTAL: u64 = 20_000;
    const BLOCKS: usize = 4096;
    let server = AtprotoServer::start(AtprotoOptions {
        total: TOTAL,
        initial: 0,
        rate: 2_000,
        blocks: BLOCKS,
        ..AtprotoOptions::default()
    });
    let redis = RedisServer::start();
    let mut c = redis.connection();
    let child = ingest(
        &server,
        &redis,
        "paused",
        &[
            "--high-water",
            "1000",
            "--pipeline",
            "2",
            "--max-in-flight",
            "2000",
            "--progress-interval",
            "1s",
        ],
    )
    .arg("--memory")
    .arg("64MiB")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = child.id();
    // Nobody reads for 30 s: the stream sits at high water, and the server
    // goes on producing into a socket headroom has stopped reading.
    let deadline = Instant::now() + Duration::from_secs(30);
    while xlen(&mut c, "paused") < 1000 {
        assert!(Instant::now() < deadline, "ingest stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let paused = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let early = common::ingest::rss_of(pid);
    std::thread::sleep(Duration::from_secs(24));
    let late = common::ingest::rss_of(pid);
    let held = xlen(&mut c, "paused");
    eprintln!(
        "paused {:.0} s at {held} entries; rss {:.1} MiB after 5 s, {:.1} MiB after 29 s; the server produced {}",
        paused.elapsed().as_secs_f64(),
        early as f64 / 1048576.0,
        late as f64 / 1048576.0,
        server.head()
    );
    assert!(held < 1000 + 500, "the pause held: {held}");
    assert!(
        late < early + (2 << 20),
        "rss grew from {early} to {late} while paused"
    );
    // A consumer now reads and trims: every frame arrives, once, in order.
    let mut seen: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.last() != Some(&TOTAL) {
        assert!(
            Instant::now() < deadline,
            "stalled after the pause at {:?}",
            seen.last()
        );
        let page = entries(&mut c, "paused");
        let Some(last) = page.last() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        for (id, fields) in &page {
            let seq: u64 = id[2..].parse().unwrap();
            assert!(
                field(fields, "data") == commit_frame(seq, BLOCKS),
                "frame {seq}"
            );
            seen.push(seq);
        }
        let next = format!("0-{}", last.0[2..].parse::<u64>().unwrap() + 1);
        let _: u64 = redis::cmd("XTRIM")
            .arg("paused")
            .arg("MINID")
            .arg(&next)
            .query(&mut c)
            .unwrap();
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = seen[0];
    assert_eq!(
        seen,
        (first..=TOTAL).collect::<Vec<_>>(),
        "every frame once, in order"
    );
}

#[test]
fn a_redis_killed_mid_stream_loses_and_duplicates_no_frame() {
    const TOTAL: u64 = 8_000;
    let server = AtprotoServer::start(AtprotoOptions {
        total: TOTAL,
        initial: 0,
        rate: 2_000,
        ..AtprotoOptions::default()
    });
    let mut redis = RedisServer::start_durable();
    let mut c = redis.connection();
    let child = ingest(&server, &redis, "durable", &["--batch-size", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while xlen(&mut c, "durable") < 2_000 {
        assert!(Instant::now() < deadline, "ingest stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.kill();
    std::thread::sleep(Duration::from_millis(1500));
    redis.restart();
    let mut c = redis.connection();
    let deadline = Instant::now() + Duration::from_secs(60);
    while last_id(&mut c, "durable") != format!("0-{TOTAL}") {
        assert!(Instant::now() < deadline, "stalled after the Redis restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = summary(&text(&out.stdout));
    assert!(
        s["redis_retries"].as_u64().unwrap() > 0,
        "Redis never failed: {s}"
    );
    let got = entries(&mut c, "durable");
    let first: u64 = got[0].0[2..].parse().unwrap();
    assert_frames(&mut c, "durable", first..=TOTAL, 256);
}

#[test]
fn jetstream_events_land_once_in_order_under_their_time_and_resume_after_a_kill() {
    use common::atproto::{jetstream_event, time_us_of};
    const TOTAL: u64 = 4_000;
    let server = AtprotoServer::start(AtprotoOptions {
        total: TOTAL,
        initial: 200,
        rate: 1_000,
        jetstream: true,
        ..AtprotoOptions::default()
    });
    let redis = RedisServer::start();
    let mut c = redis.connection();
    let jetstream = |c: &mut Command| {
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut n = Command::new(env!("CARGO_BIN_EXE_headroom"));
        n.args(
            args.iter()
                .map(|a| if a == "atproto" { "jetstream" } else { a }),
        )
        .env_remove("HEADROOM_MEMORY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        n
    };
    let mut child = jetstream(&mut ingest(&server, &redis, "jet", &[]))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while xlen(&mut c, "jet") < 1_000 {
        assert!(Instant::now() < deadline, "ingest stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = entries(&mut c, "jet");
    let child = jetstream(&mut ingest(&server, &redis, "jet", &[]))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let last_jet = {
        let t = time_us_of(TOTAL);
        format!("{}-{}", t / 1000, t % 1000)
    };
    loop {
        if last_id(&mut c, "jet") == last_jet {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ingest stalled after the restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = entries(&mut c, "jet");
    // A Jetstream entry's ID is its time_us as MS-US.
    let us_of = |id: &str| -> u64 {
        let (ms, us) = id.split_once('-').unwrap();
        ms.parse::<u64>().unwrap() * 1000 + us.parse::<u64>().unwrap()
    };
    let first_seq = (us_of(&before[0].0) - time_us_of(0)) / 137;
    assert!(first_seq > 200, "live, not replayed: {first_seq}");
    assert_eq!(got.len() as u64, TOTAL - first_seq + 1, "every event once");
    for ((id, fields), seq) in got.iter().zip(first_seq..) {
        let t = time_us_of(seq);
        assert_eq!(id, &format!("{}-{}", t / 1000, t % 1000));
        assert!(field(fields, "data") == jetstream_event(seq), "event {seq}");
        assert_eq!(
            field(fields, "t"),
            ["commit", "identity", "account"][(seq % 3) as usize].as_bytes()
        );
        assert_eq!(field(fields, "seq"), t.to_string().as_bytes());
    }
    let cursors = server.stats.cursors.lock().unwrap().clone();
    let resumed = us_of(&before.last().unwrap().0);
    assert_eq!(
        cursors,
        vec![None, Some(resumed)],
        "resumed from the stream's last time_us"
    );
}

/// Every stream's entries' IDs, as `0-SEQ` sequence numbers.
fn seqs(c: &mut redis::Connection, stream: &str) -> Vec<u64> {
    entries(c, stream)
        .iter()
        .map(|(id, _)| id.strip_prefix("0-").unwrap().parse().unwrap())
        .collect()
}

/// `--route` sends posts to one stream, follows to another and the rest
/// (likes) to `--to`'s, with four batches in flight; `kill -9` mid-stream
/// and a restart that resumes after the highest seq any stream holds.
/// Every frame is then in exactly its collection's stream, once, in order.
#[test]
fn routed_frames_land_in_their_streams_once_in_order_through_a_kill() {
    const TOTAL: u64 = 6_000;
    let server = AtprotoServer::start(AtprotoOptions {
        total: TOTAL,
        initial: 0,
        rate: 2_000,
        resend_cursor: true,
        ..AtprotoOptions::default()
    });
    let redis = RedisServer::start();
    let mut c = redis.connection();
    let routed = [
        "--start-cursor",
        "0",
        "--route",
        "#commit:app.bsky.feed.post=posts",
        "--route",
        "#commit:app.bsky.graph.*=graph",
        "--batch-size",
        "100",
        "--pipeline",
        "4",
    ];
    let held = |c: &mut redis::Connection| {
        ["posts", "graph", "rest"]
            .iter()
            .map(|s| xlen(c, s))
            .sum::<u64>()
    };
    let mut child = ingest(&server, &redis, "rest", &routed)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while held(&mut c) < 2_500 {
        assert!(Instant::now() < deadline, "ingest stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let tops: Vec<u64> = ["posts", "graph", "rest"]
        .iter()
        .map(|s| seqs(&mut c, s).last().copied().unwrap_or(0))
        .collect();
    let resume = *tops.iter().max().unwrap();
    eprintln!("killed with the streams' last seqs at {tops:?}");

    let child = ingest(&server, &redis, "rest", &routed)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while held(&mut c) < TOTAL {
        assert!(
            Instant::now() < deadline,
            "ingest stalled after the restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        server
            .stats
            .cursors
            .lock()
            .unwrap()
            .last()
            .copied()
            .flatten(),
        Some(resume),
        "the restart resumed after the highest seq any stream held"
    );
    for (stream, collection) in [
        ("posts", "app.bsky.feed.post"),
        ("graph", "app.bsky.graph.follow"),
        ("rest", "app.bsky.feed.like"),
    ] {
        assert_frames(
            &mut c,
            stream,
            (1..=TOTAL).filter(|s| collection_of(*s) == collection),
            256,
        );
    }
    assert_eq!(held(&mut c), TOTAL, "every frame once");
}

#[test]
fn routes_need_an_event_stream_and_say_what_is_wrong() {
    let redis = RedisServer::start();
    for (args, says) in [
        (
            vec!["--from", "-", "--route", "#commit=x"],
            "--route needs --format atproto or jetstream",
        ),
        (
            vec![
                "--format",
                "atproto",
                "--from",
                "ws://127.0.0.1:9/x",
                "--route",
                "#commit:app..post=x",
            ],
            "is not a collection",
        ),
        (
            vec![
                "--format",
                "atproto",
                "--from",
                "ws://127.0.0.1:9/x",
                "--route",
                "#commit",
            ],
            "names no stream",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_headroom"))
            .arg("ingest")
            .args(&args)
            .arg("--to")
            .arg(redis.url("s"))
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// Jetstream routed by type and by a commit's collection: identity and
/// account events to one stream, post commits to another, the rest
/// (likes and follows) to `--to`'s.
#[test]
fn jetstream_events_are_routed_by_kind_and_collection() {
    use common::atproto::{jetstream_event, time_us_of};
    const TOTAL: u64 = 900;
    let server = AtprotoServer::start(AtprotoOptions {
        total: TOTAL,
        initial: TOTAL,
        jetstream: true,
        ..AtprotoOptions::default()
    });
    let redis = RedisServer::start();
    let mut c = redis.connection();
    let mut child = Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["ingest", "--format", "jetstream", "--from"])
        .arg(server.url())
        .arg("--to")
        .arg(redis.url("jet"))
        .args([
            "--start-cursor",
            "0",
            "--route",
            "identity=accounts",
            "--route",
            "account=accounts",
            "--route",
            "commit:app.bsky.feed.post=posts",
        ])
        .env_remove("HEADROOM_MEMORY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ["jet", "accounts", "posts"]
        .iter()
        .map(|s| xlen(&mut c, s))
        .sum::<u64>()
        < TOTAL
    {
        assert!(Instant::now() < deadline, "ingest stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let stream_of = |seq: u64| match seq % 3 {
        1 | 2 => "accounts",
        _ if common::atproto::collection_of(seq / 3) == "app.bsky.feed.post" => "posts",
        _ => "jet",
    };
    for stream in ["jet", "accounts", "posts"] {
        let want: Vec<u64> = (1..=TOTAL).filter(|s| stream_of(*s) == stream).collect();
        let got = entries(&mut c, stream);
        assert_eq!(got.len(), want.len(), "entries in {stream}");
        for ((id, fields), seq) in got.iter().zip(want) {
            let t = time_us_of(seq);
            assert_eq!(id, &format!("{}-{}", t / 1000, t % 1000), "{stream}");
            assert!(field(fields, "data") == jetstream_event(seq), "event {seq}");
        }
    }
}
