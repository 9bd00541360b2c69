//! A loopback AT Protocol event stream (`com.atproto.sync.subscribeRepos`)
//! with the spec's cursor rules, for ingest tests: frames are a DAG-CBOR
//! header and body, `#commit` messages numbered from 1, produced at a
//! steady rate into a window of the most recent ones.
//!
//! * no cursor: live (frames produced from now on);
//! * a cursor past the newest frame: an error frame `FutureCursor`, then
//!   the close;
//! * a cursor older than the window: `#info OutdatedCursor`, then the
//!   whole window, then live;
//! * any other cursor: the frames after it (and, with `resend_cursor`,
//!   the frame at it too, as the spec's "from" allows), then live.
//!
//! Faults: `ConsumerTooSlow` after a number of frames on one connection,
//! an undecodable frame once.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ipld_core::cid::Cid;
use ipld_core::cid::multihash::Multihash;
use ipld_core::ipld::Ipld;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// How the stream behaves.
#[derive(Clone, Debug)]
pub struct AtprotoOptions {
    /// Frames produced in all (seq 1..=total), then production stops.
    pub total: u64,
    /// Frames produced at start, before any connection.
    pub initial: u64,
    /// Frames produced per second after that.
    pub rate: u64,
    /// Frames the server keeps for replay (older ones are gone).
    pub window: usize,
    /// Bytes of `blocks` in each commit.
    pub blocks: usize,
    /// On the first connection that has sent this many frames: an error
    /// frame `ConsumerTooSlow`, then the close.
    pub too_slow_after: Option<u64>,
    /// Once, after this many frames on a connection: a frame that is not
    /// DAG-CBOR.
    pub garbage_after: Option<u64>,
    /// Replays start with the frame at the cursor (a duplicate).
    pub resend_cursor: bool,
    /// Jetstream instead: JSON text events whose cursor is `time_us`
    /// (see [`jetstream_event`]), replayed from the cursor inclusive.
    pub jetstream: bool,
}

impl Default for AtprotoOptions {
    fn default() -> Self {
        AtprotoOptions {
            total: 1000,
            initial: 1000,
            rate: 0,
            window: 1_000_000,
            blocks: 256,
            too_slow_after: None,
            garbage_after: None,
            resend_cursor: false,
            jetstream: false,
        }
    }
}

/// What the stream saw and sent.
#[derive(Default)]
pub struct AtprotoStats {
    /// The cursor of each connection, in order.
    pub cursors: Mutex<Vec<Option<u64>>>,
    pub connections: AtomicU64,
    /// The newest frame produced.
    pub head: AtomicU64,
    too_slow_sent: AtomicBool,
    garbage_sent: AtomicBool,
}

struct Log {
    /// The window: (seq, frame), oldest first.
    frames: VecDeque<(u64, Vec<u8>)>,
}

/// The running stream; stops when dropped.
pub struct AtprotoServer {
    pub port: u16,
    pub stats: Arc<AtprotoStats>,
    log: Arc<Mutex<Log>>,
    _runtime: tokio::runtime::Runtime,
}

/// The collection commit `seq` writes to: posts, likes and follows in turn.
pub fn collection_of(seq: u64) -> &'static str {
    [
        "app.bsky.feed.post",
        "app.bsky.feed.like",
        "app.bsky.graph.follow",
    ][(seq % 3) as usize]
}

/// The frame of `seq`, as the server sends it: a `#commit` of a few
/// repositories, with a CID link and `blocks` bytes, creating a record in
/// [`collection_of`]`(seq)`.
pub fn commit_frame(seq: u64, blocks: usize) -> Vec<u8> {
    let header = Ipld::Map(BTreeMap::from([
        ("op".to_string(), Ipld::Integer(1)),
        ("t".to_string(), Ipld::String("#commit".into())),
    ]));
    let digest: Vec<u8> = (0..32).map(|i| (seq as u8).wrapping_add(i)).collect();
    let cid = Cid::new_v1(0x71, Multihash::<64>::wrap(0x12, &digest).unwrap());
    let op = Ipld::Map(BTreeMap::from([
        ("action".to_string(), Ipld::String("create".into())),
        (
            "path".to_string(),
            Ipld::String(format!("{}/{seq:013}", collection_of(seq))),
        ),
        ("cid".to_string(), Ipld::Link(cid)),
    ]));
    let body = Ipld::Map(BTreeMap::from([
        ("seq".to_string(), Ipld::Integer(seq as i128)),
        (
            "repo".to_string(),
            Ipld::String(format!("did:plc:test{}", seq % 7)),
        ),
        ("rev".to_string(), Ipld::String(format!("3l{seq:011}"))),
        (
            "time".to_string(),
            Ipld::String("2026-12-02T00:00:00.000Z".into()),
        ),
        ("commit".to_string(), Ipld::Link(cid)),
        (
            "blocks".to_string(),
            Ipld::Bytes(vec![(seq % 251) as u8; blocks]),
        ),
        ("ops".to_string(), Ipld::List(vec![op])),
        ("tooBig".to_string(), Ipld::Bool(false)),
    ]));
    frame(&header, &body)
}

/// Jetstream's `time_us` of event `seq`.
pub fn time_us_of(seq: u64) -> u64 {
    1_764_633_600_000_000 + seq * 137
}

/// The Jetstream event `seq`: a commit, identity or account event.
pub fn jetstream_event(seq: u64) -> Vec<u8> {
    let kind = ["commit", "identity", "account"][(seq % 3) as usize];
    let mut v = serde_json::json!({
        "did": format!("did:plc:test{}", seq % 7),
        "time_us": time_us_of(seq),
        "kind": kind,
    });
    if kind == "commit" {
        v["commit"] = serde_json::json!({"rev": format!("3l{seq:011}"), "operation": "create",
            "collection": collection_of(seq / 3), "rkey": format!("{seq:013}"),
            "record": {"$type": collection_of(seq / 3), "text": "x".repeat(64)}});
    }
    serde_json::to_vec(&v).unwrap()
}

/// A frame: the header's DAG-CBOR, then the body's.
fn frame(header: &Ipld, body: &Ipld) -> Vec<u8> {
    let mut frame = serde_ipld_dagcbor::to_vec(header).unwrap();
    frame.extend(serde_ipld_dagcbor::to_vec(body).unwrap());
    frame
}

fn error_frame(error: &str, message: &str) -> Vec<u8> {
    let header = Ipld::Map(BTreeMap::from([("op".to_string(), Ipld::Integer(-1))]));
    let body = Ipld::Map(BTreeMap::from([
        ("error".to_string(), Ipld::String(error.into())),
        ("message".to_string(), Ipld::String(message.into())),
    ]));
    frame(&header, &body)
}

fn info_frame(name: &str, message: &str) -> Vec<u8> {
    let header = Ipld::Map(BTreeMap::from([
        ("op".to_string(), Ipld::Integer(1)),
        ("t".to_string(), Ipld::String("#info".into())),
    ]));
    let body = Ipld::Map(BTreeMap::from([
        ("name".to_string(), Ipld::String(name.into())),
        ("message".to_string(), Ipld::String(message.into())),
    ]));
    frame(&header, &body)
}

impl AtprotoServer {
    pub fn start(options: AtprotoOptions) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let stats = Arc::new(AtprotoStats::default());
        let log = Arc::new(Mutex::new(Log {
            frames: VecDeque::new(),
        }));
        let produce = |log: &Mutex<Log>, stats: &AtprotoStats, o: &AtprotoOptions| {
            let seq = stats.head.load(Ordering::Acquire) + 1;
            let mut l = log.lock().unwrap();
            let frame = if o.jetstream {
                jetstream_event(seq)
            } else {
                commit_frame(seq, o.blocks)
            };
            l.frames.push_back((seq, frame));
            while l.frames.len() > o.window {
                l.frames.pop_front();
            }
            stats.head.store(seq, Ordering::Release);
        };
        for _ in 0..options.initial.min(options.total) {
            produce(&log, &stats, &options);
        }
        if options.rate > 0 {
            let (log, stats, o) = (log.clone(), stats.clone(), options.clone());
            runtime.spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_micros(1_000_000 / o.rate.max(1)));
                while stats.head.load(Ordering::Acquire) < o.total {
                    tick.tick().await;
                    produce(&log, &stats, &o);
                }
            });
        }
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().unwrap().port();
        let (l, s) = (log.clone(), stats.clone());
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, options.clone(), l.clone(), s.clone()));
            }
        });
        AtprotoServer {
            port,
            stats,
            log,
            _runtime: runtime,
        }
    }

    /// `ws://127.0.0.1:PORT/xrpc/com.atproto.sync.subscribeRepos`.
    pub fn url(&self) -> String {
        format!(
            "ws://127.0.0.1:{}/xrpc/com.atproto.sync.subscribeRepos",
            self.port
        )
    }

    /// The newest frame produced.
    pub fn head(&self) -> u64 {
        self.stats.head.load(Ordering::Acquire)
    }
}

/// The frames after `after` in the window (with the one at it when
/// `include` is set); whether the window starts after `after + 1`.
fn frames_after(log: &Mutex<Log>, after: u64, include: bool) -> (Vec<(u64, Vec<u8>)>, bool) {
    let l = log.lock().unwrap();
    let oldest = l.frames.front().map_or(after + 1, |f| f.0);
    let frames = l
        .frames
        .iter()
        .filter(|(s, _)| *s > after || (include && *s == after))
        .cloned()
        .collect();
    (frames, oldest > after + 1)
}

/// Jetstream's rules: no cursor is live; a cursor replays the events at
/// and after its `time_us` (a cursor in the future waits for them).
async fn jetstream(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    cursor: Option<u64>,
    log: &Mutex<Log>,
    stats: &AtprotoStats,
    o: &AtprotoOptions,
) {
    let mut next = match cursor {
        None => stats.head.load(Ordering::Acquire),
        // The first event at or after the cursor is seq (c - base) / 137
        // rounded up; replay after the one before it.
        Some(c) => c
            .saturating_sub(time_us_of(0))
            .div_ceil(137)
            .saturating_sub(1),
    };
    loop {
        let (frames, _) = frames_after(log, next, false);
        for (seq, frame) in frames {
            let text = String::from_utf8(frame).unwrap();
            if ws.feed(Message::text(text)).await.is_err() {
                return;
            }
            next = next.max(seq);
        }
        if ws.flush().await.is_err() {
            return;
        }
        if stats.head.load(Ordering::Acquire) >= o.total && next >= o.total {
            while let Some(Ok(_)) = ws.next().await {}
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    o: AtprotoOptions,
    log: Arc<Mutex<Log>>,
    stats: Arc<AtprotoStats>,
) {
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
    if o.jetstream {
        jetstream(ws, cursor, &log, &stats, &o).await;
        return;
    }
    let head = stats.head.load(Ordering::Acquire);
    let mut next = match cursor {
        None => head,
        Some(c) if c > head => {
            let _ = ws
                .send(Message::binary(error_frame(
                    "FutureCursor",
                    "Cursor in the future.",
                )))
                .await;
            let _ = ws.close(None).await;
            return;
        }
        Some(c) => c,
    };
    let mut include = o.resend_cursor && cursor.is_some();
    let mut sent = 0u64;
    let mut first = true;
    loop {
        let (frames, outdated) = frames_after(&log, next, include);
        include = false;
        if first && outdated && cursor.is_some() {
            let _ = ws
                .send(Message::binary(info_frame(
                    "OutdatedCursor",
                    "Requested cursor exceeded limit. Possibly missing events",
                )))
                .await;
        }
        first = false;
        for (seq, frame) in frames {
            if ws.feed(Message::binary(frame)).await.is_err() {
                return;
            }
            next = next.max(seq);
            sent += 1;
            if o.garbage_after == Some(sent) && !stats.garbage_sent.swap(true, Ordering::AcqRel) {
                let _ = ws.send(Message::binary(vec![0xff, 0x00, 0x13])).await;
            }
            if o.too_slow_after == Some(sent) && !stats.too_slow_sent.swap(true, Ordering::AcqRel) {
                let _ = ws
                    .send(Message::binary(error_frame(
                        "ConsumerTooSlow",
                        "Stream consumer too slow",
                    )))
                    .await;
                let _ = ws.close(None).await;
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
        if stats.head.load(Ordering::Acquire) >= o.total && next >= o.total {
            // Everything was sent: keep the connection open (a live
            // stream does not end) until the client goes.
            while let Some(Ok(_)) = ws.next().await {}
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
