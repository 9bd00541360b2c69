//! Where events come from: a WebSocket (one event per message) or standard
//! input (one event per line).
//!
//! A reader pays for what it reads before it reads it. Its fixed
//! reservation (`ingest.reader`) covers its read buffer and one event of
//! `--max-event-size` being assembled; each event it hands on gets its own
//! permit (`ingest.events`) for its bytes, released only after Redis
//! acknowledged its batch. When the governor or the queue to the writer is
//! full, the reader waits, and while it waits it does not read: the
//! WebSocket's TCP receive window closes and the sender's writes block; a
//! pipe on standard input fills and its writer blocks.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use headroom_governor::{Governor, channel};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{self, Message, protocol::WebSocketConfig};

use super::atproto::{self, Frame};
use super::{EVENT_OVERHEAD, Event, IngestCounters, StreamId};

/// Bytes read from standard input at a time.
pub const STDIN_BUFFER: usize = 256 << 10;
/// tungstenite's read buffer.
pub const WS_READ_BUFFER: usize = 128 << 10;
/// tungstenite's write buffer (pongs and the close frame).
pub const WS_WRITE_BUFFER: usize = 16 << 10;

/// Where events come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `-`: standard input, one event per line.
    Stdin,
    /// `ws://` or `wss://`: one event per message.
    WebSocket(url::Url),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Stdin => write!(f, "standard input"),
            Source::WebSocket(u) => write!(f, "{u}"),
        }
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "-" {
            return Ok(Source::Stdin);
        }
        let usage = "use ws://HOST[:PORT]/PATH, wss://... or - for standard input";
        let url = url::Url::parse(s).map_err(|e| format!("invalid source {s:?}: {e} ({usage})"))?;
        match url.scheme() {
            "ws" | "wss" if url.host_str().is_some_and(|h| !h.is_empty()) => {
                Ok(Source::WebSocket(url))
            }
            "ws" | "wss" => Err(format!("{s:?} names no host; {usage}")),
            other => Err(format!("{s:?}: unsupported scheme {other}://; {usage}")),
        }
    }
}

impl Source {
    /// The reader's fixed reservation: its buffers and one event being
    /// assembled.
    pub fn reader_footprint(&self, max_event: u64) -> u64 {
        match self {
            Source::Stdin => STDIN_BUFFER as u64 + max_event,
            Source::WebSocket(_) => (WS_READ_BUFFER + WS_WRITE_BUFFER) as u64 + max_event,
        }
    }
}

/// What the events are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Opaque: a line of standard input or a WebSocket message each;
    /// with `--cursor-param`, the sequence number is read from JSON.
    #[default]
    Lines,
    /// The AT Protocol event stream (`com.atproto.sync.subscribeRepos`):
    /// DAG-CBOR frames; stream IDs `0-SEQ`; the cursor is `cursor`, read
    /// back from the stream at start.
    Atproto,
    /// Jetstream: JSON events with a `time_us` cursor (microseconds);
    /// stream IDs `MS-US` (its milliseconds and the microseconds within
    /// them), the cursor read back from the stream at start.
    Jetstream,
}

impl Format {
    /// Whether events carry their own position in the source, from which
    /// their stream IDs are derived and the cursor is read back.
    pub fn keyed(self) -> bool {
        !matches!(self, Format::Lines)
    }

    /// The stream ID of the event at source position `seq`.
    pub fn id_of(self, seq: u64) -> Option<StreamId> {
        match self {
            Format::Lines => None,
            Format::Atproto => Some(StreamId { ms: 0, seq }),
            Format::Jetstream => Some(StreamId {
                ms: seq / 1000,
                seq: seq % 1000,
            }),
        }
    }

    /// The source position of the event stored under `id`; `None` when no
    /// event of this format has that ID (another writer's).
    pub fn seq_of(self, id: StreamId) -> Option<u64> {
        match self {
            Format::Lines => None,
            Format::Atproto => (id.ms == 0).then_some(id.seq),
            Format::Jetstream => (id.seq < 1000)
                .then(|| {
                    id.ms
                        .checked_mul(1000)
                        .and_then(|us| us.checked_add(id.seq))
                })
                .flatten(),
        }
    }
}

/// What an AT Protocol frame is stored as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AtprotoStore {
    /// The frame as received (header and body, DAG-CBOR).
    #[default]
    Frame,
    /// The body as JSON (bytes as `{"$bytes": ...}`, links as
    /// `{"$link": CID}`).
    Json,
}

/// What every reader shares.
pub struct ReaderContext {
    pub gov: Governor,
    pub tx: channel::Sender<Event>,
    pub counters: Arc<IngestCounters>,
    pub max_event: usize,
    /// `--cursor-param`, and with it sequence tracking.
    pub cursor_param: Option<String>,
    pub sequence_field: String,
    pub reconnect_for: Duration,
    /// Becomes `true` when the job should stop reading (a signal).
    pub stop: watch::Receiver<bool>,
    /// The highest sequence number read so far (for replays).
    last_read: Option<u64>,
    pub format: Format,
    pub atproto_store: AtprotoStore,
    /// `--route`: which stream each event goes to.
    pub router: super::route::Router,
}

/// An event's bytes as the reader has them.
enum Payload<'a> {
    /// In the reader's buffer.
    Borrowed(&'a [u8]),
    /// Already an allocation of its own.
    Owned(Bytes),
}

impl Payload<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Owned(b) => b,
        }
    }

    /// The event's own allocation of exactly its length, which is what
    /// its permit pays for. A WebSocket message is copied too: tungstenite
    /// hands out buffers with spare capacity (or slices of larger ones)
    /// that would otherwise stay allocated, unpaid, until the event's
    /// batch is acknowledged.
    fn into_bytes(self) -> Bytes {
        match self {
            Payload::Borrowed(b) => Bytes::copy_from_slice(b),
            Payload::Owned(b) => Bytes::copy_from_slice(&b),
        }
    }
}

/// Why a reader stopped handing on events.
enum Halt {
    /// The writer is gone (it failed); its error is the job's.
    WriterGone,
}

impl ReaderContext {
    pub fn new(
        gov: Governor,
        tx: channel::Sender<Event>,
        counters: Arc<IngestCounters>,
        args: &super::IngestOptions,
        stop: watch::Receiver<bool>,
        resume_after: Option<u64>,
        router: super::route::Router,
    ) -> Self {
        // The AT Protocol's and Jetstream's cursor parameter is `cursor`.
        let cursor_param = match args.format {
            Format::Atproto | Format::Jetstream => {
                Some(args.cursor_param.clone().unwrap_or_else(|| "cursor".into()))
            }
            Format::Lines => args.cursor_param.clone(),
        };
        ReaderContext {
            gov,
            tx,
            counters,
            max_event: args.max_event_size.0 as usize,
            cursor_param,
            sequence_field: args.sequence_field.clone(),
            reconnect_for: args.reconnect_for,
            stop,
            last_read: resume_after,
            format: args.format,
            atproto_store: args.atproto_store,
            router,
        }
    }

    /// Pays for one event and hands it to the writer. A borrowed payload
    /// (a line in the read buffer) is copied only after its permit is
    /// granted; until then, and for an owned one (a WebSocket message),
    /// the reader's own reservation pays for it.
    async fn emit(&mut self, data: Payload<'_>) -> Result<(), Halt> {
        let seq = if self.cursor_param.is_some() {
            sequence_of(data.as_slice(), &self.sequence_field)
        } else {
            None
        };
        self.emit_with(data, seq, None, 0).await
    }

    /// [`emit`](Self::emit) with the sequence number and type known; with
    /// the AT Protocol the event's stream ID is derived from `seq`.
    async fn emit_with(
        &mut self,
        data: Payload<'_>,
        seq: Option<u64>,
        kind: Option<Box<str>>,
        stream: u16,
    ) -> Result<(), Halt> {
        if let (Some(s), Some(last)) = (seq, self.last_read)
            && s <= last
        {
            // Replayed after a reconnect: already held or written.
            self.counters
                .replays_dropped
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let len = data.as_slice().len() as u64;
        let permit = self
            .gov
            .acquire(len + EVENT_OVERHEAD, "ingest.events")
            .await;
        let id = seq.and_then(|s| self.format.id_of(s));
        let event = Event {
            data: data.into_bytes(),
            seq,
            id,
            kind,
            stream,
            _permit: permit,
        };
        self.counters.events_read.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_read.fetch_add(len, Ordering::Relaxed);
        if self.tx.send(event).await.is_err() {
            return Err(Halt::WriterGone);
        }
        if seq.is_some() {
            self.last_read = seq;
        }
        Ok(())
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Reads `source` until it ends, the job is stopped or the writer fails.
/// Returns an error only for what the source did wrong.
pub async fn read(source: &Source, mut cx: ReaderContext) -> anyhow::Result<()> {
    match source {
        Source::Stdin => read_stdin(&mut cx).await,
        Source::WebSocket(url) => read_websocket(url, &mut cx).await,
    }
}

async fn read_stdin(cx: &mut ReaderContext) -> anyhow::Result<()> {
    let mut input = tokio::io::BufReader::with_capacity(STDIN_BUFFER, tokio::io::stdin());
    // A line that spans reads is assembled here, up to --max-event-size.
    let mut partial = BytesMut::new();
    let mut line_no: u64 = 0;
    let mut stop = cx.stop.clone();
    loop {
        let buf = tokio::select! {
            biased;
            _ = crate::cancel::until_set(&mut stop) => return Ok(()),
            r = input.fill_buf() => r.context("reading standard input")?,
        };
        if buf.is_empty() {
            if !partial.is_empty() {
                let line = trim_cr(&partial).to_vec();
                if cx.emit(Payload::Borrowed(&line)).await.is_err() {
                    return Ok(());
                }
            }
            return Ok(());
        }
        match memchr::memchr(b'\n', buf) {
            Some(i) => {
                line_no += 1;
                let halted = if partial.is_empty() {
                    let line = trim_cr(&buf[..i]);
                    check_line(line.len(), cx.max_event, line_no)?;
                    !line.is_empty() && cx.emit(Payload::Borrowed(line)).await.is_err()
                } else {
                    check_line(partial.len() + i, cx.max_event, line_no)?;
                    partial.extend_from_slice(&buf[..i]);
                    let line = trim_cr(&partial);
                    let halted =
                        !line.is_empty() && cx.emit(Payload::Borrowed(line)).await.is_err();
                    partial.clear();
                    if partial.capacity() > STDIN_BUFFER {
                        partial = BytesMut::new();
                    }
                    halted
                };
                if halted {
                    return Ok(());
                }
                input.consume(i + 1);
            }
            None => {
                let n = buf.len();
                check_line(partial.len() + n, cx.max_event, line_no + 1)?;
                partial.extend_from_slice(buf);
                input.consume(n);
            }
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn check_line(len: usize, max: usize, line_no: u64) -> anyhow::Result<()> {
    if len > max {
        bail!(
            "line {line_no} of standard input is longer than --max-event-size ({}); nothing after line {} was read",
            headroom_governor::ByteSize(max as u64),
            line_no - 1
        );
    }
    Ok(())
}

/// The URL to connect to: the source's, with the cursor parameter set to
/// the last sequence number Redis acknowledged.
fn with_cursor(base: &url::Url, param: Option<&str>, acked: Option<u64>) -> url::Url {
    let (Some(param), Some(acked)) = (param, acked) else {
        return base.clone();
    };
    let mut url = base.clone();
    let kept: Vec<(String, String)> = base
        .query_pairs()
        .filter(|(k, _)| k != param)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(param, &acked.to_string());
    url
}

async fn read_websocket(base: &url::Url, cx: &mut ReaderContext) -> anyhow::Result<()> {
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(Some(cx.max_event))
        .max_frame_size(Some(cx.max_event));
    let mut stop = cx.stop.clone();
    let mut connected_once = false;
    let mut backoff = Reconnect::default();
    loop {
        if cx.stopping() {
            return Ok(());
        }
        let url = with_cursor(
            base,
            cx.cursor_param.as_deref(),
            cx.counters.last_acked_seq(),
        );
        let connect =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
        let connected = tokio::select! {
            biased;
            _ = crate::cancel::until_set(&mut stop) => return Ok(()),
            r = connect => r,
        };
        let mut ws = match connected {
            Ok((ws, _)) => ws,
            Err(e) if !connected_once => {
                bail!("cannot connect to {url}: {e}");
            }
            Err(e) => {
                let why = format!("reconnecting to {url} failed: {e}");
                if !backoff
                    .wait(base, &why, cx.reconnect_for, &mut stop)
                    .await?
                {
                    return Ok(());
                }
                continue;
            }
        };
        if connected_once {
            cx.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!("reconnected to {url}");
        } else {
            tracing::info!("connected to {url}");
        }
        connected_once = true;
        let why = loop {
            let next = tokio::select! {
                biased;
                _ = crate::cancel::until_set(&mut stop) => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                m = ws.next() => m,
            };
            let message = match next {
                None => break "the connection closed".to_string(),
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    bail!(
                        "{base} sent a message larger than --max-event-size ({}): {e}",
                        headroom_governor::ByteSize(cx.max_event as u64)
                    );
                }
                Some(Err(e)) => break e.to_string(),
                Some(Ok(m)) => m,
            };
            let (data, text) = match message {
                Message::Binary(b) => (b, false),
                Message::Text(t) => (Bytes::from(t), true),
                Message::Close(frame) => {
                    let normal = frame.as_ref().is_some_and(|f| {
                        f.code == tungstenite::protocol::frame::coding::CloseCode::Normal
                    });
                    if normal {
                        tracing::info!("{base} closed the stream (normal closure): done");
                        let _ = ws.flush().await;
                        return Ok(());
                    }
                    break match frame {
                        Some(f) => {
                            format!("the server closed the connection ({} {})", f.code, f.reason)
                        }
                        None => "the server closed the connection".to_string(),
                    };
                }
                // Pings are answered by tungstenite on the next read.
                _ => continue,
            };
            if cx.format == Format::Jetstream {
                match cx.jetstream(data, text).await {
                    Step::Next => continue,
                    Step::Event => backoff = Reconnect::default(),
                    Step::Stop => return Ok(()),
                    Step::Drop(why) => break why,
                }
                continue;
            }
            if cx.format == Format::Atproto {
                match cx.frame(base, data, text).await? {
                    Step::Next => {}
                    Step::Event => backoff = Reconnect::default(),
                    Step::Stop => return Ok(()),
                    Step::Drop(why) => break why,
                }
                continue;
            }
            // A healthy connection resets the reconnect backoff.
            backoff = Reconnect::default();
            if cx.emit(Payload::Owned(data)).await.is_err() {
                return Ok(());
            }
        };
        // A connection that ended before delivering an event counts as
        // down time, like one that failed to open.
        if !backoff
            .wait(base, &format!("{base}: {why}"), cx.reconnect_for, &mut stop)
            .await?
        {
            return Ok(());
        }
    }
}

/// What to do after an AT Protocol frame.
enum Step {
    /// Read the next frame.
    Next,
    /// An event was handed on (the connection is healthy).
    Event,
    /// The writer is gone: stop.
    Stop,
    /// Drop the connection and reconnect from the cursor, for this reason.
    Drop(String),
}

impl ReaderContext {
    /// Handles one Jetstream message: a JSON event whose `time_us` is its
    /// cursor and whose `kind` its type; one without a `time_us` is
    /// skipped.
    async fn jetstream(&mut self, data: Bytes, text: bool) -> Step {
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(default)]
            time_us: Option<u64>,
            #[serde(default)]
            kind: Option<String>,
            #[serde(default)]
            commit: Option<Commit>,
        }
        #[derive(serde::Deserialize)]
        struct Commit {
            #[serde(default)]
            collection: Option<String>,
        }
        if !text {
            return Step::Drop(
                "a binary Jetstream message (zstd compression, compress=true, is not supported: subscribe without it)"
                    .into(),
            );
        }
        match serde_json::from_slice::<Head>(&data) {
            Ok(Head {
                time_us: Some(t),
                kind,
                commit,
            }) if t > 0 => {
                let collection = commit.and_then(|c| c.collection);
                let stream = self
                    .router
                    .stream_for(kind.as_deref(), collection.as_deref().into_iter());
                if self
                    .emit_with(Payload::Owned(data), Some(t), kind.map(Into::into), stream)
                    .await
                    .is_err()
                {
                    return Step::Stop;
                }
                Step::Event
            }
            Ok(_) => {
                self.counters.frames_skipped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("skipping a Jetstream message without a time_us");
                Step::Next
            }
            Err(e) => {
                self.counters
                    .frames_undecodable
                    .fetch_add(1, Ordering::Relaxed);
                Step::Drop(format!(
                    "a Jetstream message that is not a JSON object ({e})"
                ))
            }
        }
    }

    /// Handles one AT Protocol frame as the spec says: a message is an
    /// event; `#info` `OutdatedCursor` is a gap, logged and counted;
    /// `ConsumerTooSlow` and undecodable frames drop the connection (the
    /// reconnect resumes from the cursor); `FutureCursor` stops the ingest
    /// with an error; unknown types and ops are skipped.
    async fn frame(&mut self, base: &url::Url, data: Bytes, text: bool) -> anyhow::Result<Step> {
        if text {
            return Ok(Step::Drop(
                "a text message on an AT Protocol event stream (frames are binary DAG-CBOR)".into(),
            ));
        }
        let frame = match atproto::decode(&data) {
            Ok(f) => f,
            Err(e) => {
                self.counters
                    .frames_undecodable
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(Step::Drop(format!("an undecodable frame ({e})")));
            }
        };
        match frame {
            Frame::Message { t, seq, paths } => {
                let stream = self.router.stream_for(
                    Some(&t),
                    paths.iter().map(|p| super::route::collection_of(p)),
                );
                drop(paths);
                let payload = match self.atproto_store {
                    AtprotoStore::Frame => Payload::Owned(data),
                    AtprotoStore::Json => match atproto::body_json(&data) {
                        Ok(json) => Payload::Owned(Bytes::from(json)),
                        Err(e) => {
                            self.counters
                                .frames_undecodable
                                .fetch_add(1, Ordering::Relaxed);
                            return Ok(Step::Drop(format!("an undecodable frame ({e})")));
                        }
                    },
                };
                if self
                    .emit_with(payload, Some(seq), Some(t.into()), stream)
                    .await
                    .is_err()
                {
                    return Ok(Step::Stop);
                }
                Ok(Step::Event)
            }
            Frame::Info { name, message } => {
                let message = message.unwrap_or_default();
                if name == "OutdatedCursor" {
                    self.counters.cursor_gaps.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "{base}: OutdatedCursor ({message}): the cursor {} is older than the server's window; events between it and the window's start are lost to this stream (a gap), the window follows",
                        self.counters
                            .last_acked_seq()
                            .map_or_else(|| "(none)".to_string(), |s| s.to_string())
                    );
                } else {
                    tracing::info!("{base}: #info {name}: {message}");
                }
                Ok(Step::Next)
            }
            Frame::Error { error, message } => {
                let message = message.unwrap_or_default();
                match error.as_str() {
                    "FutureCursor" => bail!(
                        "{base} refused the cursor {} as in the future (FutureCursor: {message}): this stream holds events the server never sent (another server's stream, or a server that lost its history); ingest into a new stream, or delete this one to start live",
                        self.counters
                            .last_acked_seq()
                            .map_or_else(|| "(none)".to_string(), |s| s.to_string())
                    ),
                    "ConsumerTooSlow" => {
                        self.counters.too_slow.fetch_add(1, Ordering::Relaxed);
                        Ok(Step::Drop(format!(
                            "the server dropped this consumer as too slow (ConsumerTooSlow: {message})"
                        )))
                    }
                    other => Ok(Step::Drop(format!(
                        "the server sent error {other}: {message}"
                    ))),
                }
            }
            Frame::Skipped { why } => {
                self.counters.frames_skipped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("{base}: skipping {why}");
                Ok(Step::Next)
            }
        }
    }
}

/// Down time and backoff between WebSocket connections: 100 ms doubling to
/// 5 s after every failed or fruitless connection, reset by an event. The
/// down time counts from the first failure after the last event, so a
/// server that accepts and drops is given up on after `--reconnect-for`
/// and never gets a tight loop of connections.
#[derive(Debug)]
struct Reconnect {
    down_since: Option<Instant>,
    pause: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            down_since: None,
            pause: Duration::from_millis(100),
        }
    }
}

impl Reconnect {
    /// Waits the next pause; `false` if `stop` was set meanwhile, an error
    /// once the source has been down for `limit`.
    async fn wait(
        &mut self,
        base: &url::Url,
        why: &str,
        limit: Duration,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let since = *self.down_since.get_or_insert_with(Instant::now);
        if since.elapsed() > limit {
            bail!(
                "{base} has delivered no event for {}: {why}",
                humantime::format_duration(limit)
            );
        }
        tracing::warn!("{why}; reconnecting in {:?}", self.pause);
        tokio::select! {
            _ = crate::cancel::until_set(stop) => return Ok(false),
            _ = tokio::time::sleep(self.pause) => {}
        }
        self.pause = (self.pause * 2).min(Duration::from_secs(5));
        Ok(true)
    }
}

/// The unsigned integer in `field` of a JSON object, read without building
/// the object; `None` if `data` is not such an object.
pub fn sequence_of(data: &[u8], field: &str) -> Option<u64> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Seek<'a>(&'a str);

    impl<'de> DeserializeSeed<'de> for Seek<'_> {
        type Value = Option<u64>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Seek<'_> {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if found.is_none() && key == self.0 {
                    found = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::Number(n) => n.as_u64(),
                        serde_json::Value::String(s) => s.parse().ok(),
                        _ => None,
                    };
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(data);
    Seek(field).deserialize(&mut de).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_or_say_why_not() {
        assert_eq!("-".parse::<Source>().unwrap(), Source::Stdin);
        assert!(matches!(
            "wss://relay.example/subscribe?x=1"
                .parse::<Source>()
                .unwrap(),
            Source::WebSocket(_)
        ));
        for (s, words) in [
            ("http://example/", "unsupported scheme"),
            ("ws://", "invalid source"),
            ("firehose", "invalid source"),
        ] {
            let e = s.parse::<Source>().unwrap_err();
            assert!(e.contains(words), "{s}: {e}");
        }
    }

    #[test]
    fn the_cursor_replaces_any_earlier_one() {
        let base = url::Url::parse("ws://h/sub?cursor=5&x=1").unwrap();
        assert_eq!(with_cursor(&base, Some("cursor"), None), base);
        assert_eq!(
            with_cursor(&base, Some("cursor"), Some(42)).as_str(),
            "ws://h/sub?x=1&cursor=42"
        );
        assert_eq!(with_cursor(&base, None, Some(42)), base);
    }

    #[test]
    fn sequence_numbers_are_read_from_json_events() {
        assert_eq!(sequence_of(br#"{"seq":17,"data":"x"}"#, "seq"), Some(17));
        assert_eq!(
            sequence_of(br#"{"data":{"seq":1},"seq":"18"}"#, "seq"),
            Some(18)
        );
        assert_eq!(sequence_of(br#"{"data":"x"}"#, "seq"), None);
        assert_eq!(sequence_of(br#"[1,2]"#, "seq"), None);
        assert_eq!(sequence_of(b"not json", "seq"), None);
        assert_eq!(sequence_of(br#"{"seq":-1}"#, "seq"), None);
    }
}
