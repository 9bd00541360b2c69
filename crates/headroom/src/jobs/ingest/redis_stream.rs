//! The Redis side of `headroom ingest`: the target URL, and the writer that
//! appends batches to the stream.
//!
//! # Exactly once, in order, across Redis failures
//!
//! headroom assigns every entry's ID itself: `<ms>-<seq>`, increasing, as
//! Redis's own `*` would for opaque events; the event's own position for
//! the AT Protocol and Jetstream (`0-SEQ`, `MS-US`). Each batch is one
//! call of a Lua script ([`APPEND_SCRIPT`]), which Redis runs atomically,
//! and several batches are in flight at once on the connection
//! (`--pipeline`). The script first checks that every stream's
//! `last-generated-id` is where this writer left it after the batch
//! before; only then does it append. So:
//!
//! * a batch lands only after every earlier batch landed whole: if one is
//!   refused (OOM, a failover) or lost with its connection, each batch
//!   behind it finds the stream elsewhere and refuses itself;
//! * after a failure the writer waits for every answer in flight, reads
//!   the streams' `last-generated-id` (which trimming never lowers), and
//!   sends again, in order, exactly the events above it: those at or
//!   below it landed (a batch whose answer was lost), and, IDs being
//!   fixed, a replayed event is never added twice.
//!
//! This assumes headroom is the streams' only writer, as an ingester is.
//! If another client adds entries, the guard notices: opaque events go
//! after its entries; an event with its own ID must find the same event
//! already there, else the ingest stops rather than write out of order.
//!
//! # High water
//!
//! Every batch's answer is the streams' lengths, so the writer knows them
//! without an extra round trip. Before a batch, if a stream's length is at
//! or above `--high-water`, it waits for the answers in flight and then
//! polls `XLEN` (20 ms, doubling to 500 ms) until a consumer has trimmed
//! the stream below it; meanwhile nothing is written, the bounded queue
//! behind the writer fills, and the reader stops reading. A stream never
//! holds more than high-water + `--pipeline` batches of entries because
//! of headroom.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Value};

use super::{Event, IngestCounters};

/// Where events go: `redis://[USER:PASSWORD@]HOST[:PORT][/DB]/STREAM`.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// The connection URL without the stream: `redis://host:port/db`.
    connection: url::Url,
    /// The database number.
    pub db: u32,
    /// The stream key.
    pub stream: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Shows the target without its password.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.connection.host_str().unwrap_or("");
        let port = self.connection.port().unwrap_or(6379);
        write!(f, "redis://{host}:{port}/{}/{}", self.db, self.stream)
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let usage = "use redis://HOST[:PORT][/DB]/STREAM";
        // Messages quote the URL without its password.
        let shown = redact(raw);
        let s = shown.as_str();
        let url =
            url::Url::parse(raw).map_err(|e| format!("invalid Redis URL {s:?}: {e} ({usage})"))?;
        match url.scheme() {
            "redis" => {}
            "rediss" => {
                return Err(format!(
                    "{s:?}: TLS (rediss://) is not supported yet; {usage}"
                ));
            }
            other => return Err(format!("{s:?}: unsupported scheme {other}://; {usage}")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{s:?} names no host; {usage}"));
        }
        let segments: Vec<String> = url
            .path_segments()
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .map(|p| {
                percent_decode(p).ok_or_else(|| format!("{s:?}: invalid percent-encoding in {p:?}"))
            })
            .collect::<Result<_, _>>()?;
        let (db, stream) = match segments.as_slice() {
            [] => return Err(format!("{s:?} names no stream; {usage}")),
            [first, rest @ ..] if !rest.is_empty() && first.bytes().all(|b| b.is_ascii_digit()) => {
                let db = first
                    .parse::<u32>()
                    .map_err(|_| format!("{s:?}: database {first:?} is out of range"))?;
                (db, rest.join("/"))
            }
            all => (0, all.join("/")),
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{s:?}: query and fragment are not supported; {usage}"
            ));
        }
        let mut connection = url.clone();
        connection.set_path(&format!("/{db}"));
        Ok(Target {
            connection,
            db,
            stream,
        })
    }
}

/// `url` with the password of its user information (or the whole of it,
/// when it has no `:`) replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let Some(at) = url[start..authority_end].rfind('@').map(|i| start + i) else {
        return url.to_string();
    };
    let userinfo = &url[start..at];
    let kept = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{}{kept}{}", &url[..start], &url[at..])
}

impl Target {
    /// Uses `password` for Redis AUTH (from HEADROOM_REDIS_PASSWORD or
    /// --redis-password-file), unless the URL already has one.
    pub fn with_password(mut self, password: &str) -> Result<Self, String> {
        if self.connection.password().is_none() {
            self.connection
                .set_password(Some(password))
                .map_err(|()| format!("{self}: cannot carry a password"))?;
        }
        Ok(self)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// A stream entry ID, `<milliseconds>-<sequence>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Ok(StreamId {
            ms: ms.parse().map_err(|_| format!("bad stream ID {s:?}"))?,
            seq: seq.parse().map_err(|_| format!("bad stream ID {s:?}"))?,
        })
    }
}

impl StreamId {
    /// The next ID after `self` at wall-clock time `now_ms`, as Redis's
    /// `*` would choose it.
    pub fn next(self, now_ms: u64) -> StreamId {
        if now_ms > self.ms {
            StreamId { ms: now_ms, seq: 0 }
        } else if self.seq < u64::MAX {
            StreamId {
                ms: self.ms,
                seq: self.seq + 1,
            }
        } else {
            // At the very top Redis refuses whatever comes (and says so).
            StreamId {
                ms: self.ms.saturating_add(1),
                seq: if self.ms == u64::MAX { u64::MAX } else { 0 },
            }
        }
    }
}

/// Every batch is one call of this script, atomic in Redis. It first
/// checks that each stream's `last-generated-id` is where this writer left
/// it after the batch before; only then does it append the batch. So with
/// several batches in flight a batch can land only after every earlier
/// one landed whole: if one is refused (an OOM, a failover, a lost
/// connection), each later one finds the stream moved, refuses itself, and
/// they are all sent again in order. It returns each stream's length.
///
/// KEYS: the streams. ARGV: each stream's expected last ID, the event
/// field, `MAXLEN ~` ("" for none), then per event: its stream's index
/// (from 1), ID, data, `t` ("" for none) and `seq` ("" for none).
const APPEND_SCRIPT: &str = r"
local n = #KEYS
for i = 1, n do
  local top = '0-0'
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[i])
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then top = info[j + 1]; break end
    end
  end
  if top ~= ARGV[i] then
    return redis.error_reply('HEADROOM_MOVED ' .. (i - 1) .. ' ' .. top)
  end
end
local field, maxlen = ARGV[n + 1], ARGV[n + 2]
for j = n + 3, #ARGV, 5 do
  local cmd = {'XADD', KEYS[tonumber(ARGV[j])]}
  if maxlen ~= '' then
    cmd[#cmd + 1] = 'MAXLEN'; cmd[#cmd + 1] = '~'; cmd[#cmd + 1] = maxlen
  end
  cmd[#cmd + 1] = ARGV[j + 1]
  cmd[#cmd + 1] = field
  cmd[#cmd + 1] = ARGV[j + 2]
  if ARGV[j + 3] ~= '' then cmd[#cmd + 1] = 't'; cmd[#cmd + 1] = ARGV[j + 3] end
  if ARGV[j + 4] ~= '' then cmd[#cmd + 1] = 'seq'; cmd[#cmd + 1] = ARGV[j + 4] end
  redis.call(unpack(cmd))
end
local lengths = {}
for i = 1, n do lengths[i] = redis.call('XLEN', KEYS[i]) end
return lengths
";

/// What a failed batch means.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The script refused the batch before writing: a stream was not
    /// where this writer left it (an earlier batch did not land, or
    /// another client wrote). Nothing of it was applied.
    Moved,
    /// Refused before anything was written (OOM, a replica, loading).
    NotApplied,
    /// The batch may have been applied, whole or a prefix of it (a
    /// connection lost mid-way): the streams' last IDs tell.
    Unknown,
    /// Retrying cannot help (wrong key type, IDs Redis refuses).
    Fatal,
}

fn classify(e: &RedisError) -> Failure {
    let detail = e.detail().unwrap_or("");
    match e.code() {
        Some("HEADROOM_MOVED") => return Failure::Moved,
        Some("WRONGTYPE") => return Failure::Fatal,
        Some(
            "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "OOM" | "NOREPLICAS",
        ) => {
            return Failure::NotApplied;
        }
        _ => {}
    }
    // An error raised inside the script carries the command's own words.
    if detail.contains("WRONGTYPE")
        || detail.contains("The ID specified in XADD")
        || detail.contains("exhausted the last possible ID")
    {
        return Failure::Fatal;
    }
    if detail.contains("OOM command not allowed") {
        return Failure::NotApplied;
    }
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return Failure::Unknown;
    }
    match e.retry_method() {
        redis::RetryMethod::NoRetry
            if e.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
        {
            Failure::Fatal
        }
        _ => Failure::Unknown,
    }
}

/// One stream the writer appends to.
struct Stream {
    key: String,
    /// The last ID sent to this stream: the next batch's guard.
    sent: StreamId,
    /// The stream's length after the last acknowledged batch or poll.
    length: u64,
}

/// A batch sent and not yet answered.
struct InFlight {
    events: Vec<Event>,
    /// The ID each event was sent under.
    ids: Vec<StreamId>,
    bytes: u64,
    reply: futures::future::BoxFuture<'static, Result<Value, RedisError>>,
}

/// A batch whose outcome a failure left open, waiting to be sent again.
struct Unsettled {
    events: Vec<Event>,
    ids: Vec<StreamId>,
    failure: Failure,
}

/// Appends batches of events to one or more streams, several batches in
/// flight; see the [module docs](self).
pub struct StreamWriter {
    con: ConnectionManager,
    target: Target,
    streams: Vec<Stream>,
    field: String,
    maxlen: Option<String>,
    high_water: Option<u64>,
    retry_for: Duration,
    pipeline: usize,
    in_flight: VecDeque<InFlight>,
    /// Since when every attempt failed, and the pause before the next.
    failing_since: Option<Instant>,
    pause: Duration,
    counters: Arc<IngestCounters>,
}

/// How a writer is set up.
pub struct WriterOptions {
    pub field: String,
    pub maxlen: Option<u64>,
    pub high_water: Option<u64>,
    pub retry_for: Duration,
    /// Batches in flight at once, at least 1.
    pub pipeline: usize,
    /// Streams besides the target's, in the order events name them
    /// (`Event::stream` 1, 2, ...).
    pub routes: Vec<String>,
}

impl StreamWriter {
    /// Connects, checks that every key is a stream (or absent) and reads
    /// where the streams stand. Fails at once when Redis is unreachable.
    pub async fn connect(
        target: Target,
        options: WriterOptions,
        counters: Arc<IngestCounters>,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(target.connection.as_str())
            .with_context(|| format!("invalid Redis target {target}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let con = ConnectionManager::new_with_config(client, config)
            .await
            .with_context(|| format!("cannot connect to Redis at {target}"))?;
        let keys = std::iter::once(target.stream.clone()).chain(options.routes);
        let mut writer = StreamWriter {
            con,
            streams: keys
                .map(|key| Stream {
                    key,
                    sent: StreamId::default(),
                    length: 0,
                })
                .collect(),
            target,
            field: options.field,
            maxlen: options.maxlen.map(|n| n.to_string()),
            high_water: options.high_water,
            retry_for: options.retry_for,
            pipeline: options.pipeline.max(1),
            in_flight: VecDeque::new(),
            failing_since: None,
            pause: Duration::from_millis(50),
            counters,
        };
        for i in 0..writer.streams.len() {
            let key = writer.streams[i].key.clone();
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut writer.con)
                .await
                .with_context(|| {
                    format!("cannot read the type of key {key:?} at {}", writer.target)
                })?;
            if kind != "stream" && kind != "none" {
                bail!(
                    "Redis key {key:?} in database {} holds a {kind}, not a stream: choose another stream name or delete the key",
                    writer.target.db
                );
            }
        }
        writer
            .resync()
            .await
            .with_context(|| format!("cannot read stream {}", writer.target))?;
        Ok(writer)
    }

    /// Each stream's last generated ID when the writer connected, or after
    /// its last write, in the order of [`WriterOptions::routes`] (the
    /// target's stream first).
    pub fn last_ids(&self) -> Vec<StreamId> {
        self.streams.iter().map(|s| s.sent).collect()
    }

    /// The name of stream `i` (0: the target's).
    pub fn stream_key(&self, i: usize) -> &str {
        &self.streams[i].key
    }

    /// The target written to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    fn set_length(&mut self, i: usize, length: u64) {
        self.streams[i].length = length;
        // The summary shows the longest: the one high water waits for.
        let longest = self.streams.iter().map(|s| s.length).max().unwrap_or(0);
        self.counters
            .stream_length
            .store(longest, Ordering::Relaxed);
    }

    /// Reads every stream's last generated ID (the default ID for one
    /// that does not exist) and length into `sent` and `length`.
    async fn resync(&mut self) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        for s in &self.streams {
            pipe.cmd("TYPE")
                .arg(&s.key)
                .cmd("XINFO")
                .arg("STREAM")
                .arg(&s.key);
        }
        let replies: Vec<Value> = pipe.ignore_errors().query_async(&mut self.con).await?;
        for (i, pair) in replies.chunks(2).enumerate() {
            let [kind, info] = pair else { break };
            let kind: String = redis::from_redis_value_ref(kind)?;
            let (top, length) = if kind == "none" {
                (None, 0)
            } else {
                stream_info(info)?
            };
            self.streams[i].sent = top.unwrap_or_default();
            self.set_length(i, length);
        }
        Ok(())
    }

    /// Whether a stream held `--high-water` entries or more when last
    /// seen.
    fn at_high_water(&self) -> bool {
        self.high_water
            .is_some_and(|hw| self.streams.iter().any(|s| s.length >= hw))
    }

    /// Waits while a stream holds `--high-water` entries or more. What is
    /// in flight is settled first, so the lengths are current.
    async fn wait_below_high_water(&mut self) -> anyhow::Result<()> {
        let Some(high_water) = self.high_water else {
            return Ok(());
        };
        if !self.at_high_water() {
            return Ok(());
        }
        self.flush().await?;
        let mut poll = Duration::from_millis(20);
        let mut failing: Option<Instant> = None;
        loop {
            let mut pipe = redis::pipe();
            for s in &self.streams {
                pipe.cmd("XLEN").arg(&s.key);
            }
            match pipe.query_async::<Vec<u64>>(&mut self.con).await {
                Ok(lengths) => {
                    failing = None;
                    for (i, length) in lengths.into_iter().enumerate() {
                        self.set_length(i, length);
                    }
                    if !self.at_high_water() {
                        self.counters.end_backpressure();
                        return Ok(());
                    }
                    if self.counters.start_backpressure() {
                        let full: Vec<String> = self
                            .streams
                            .iter()
                            .filter(|s| s.length >= high_water)
                            .map(|s| format!("{} holds {}", s.key, s.length))
                            .collect();
                        tracing::info!(
                            "stream {} (high water {high_water}): pausing until a consumer trims it",
                            full.join(", stream ")
                        );
                    }
                }
                Err(e) => {
                    self.counters.redis_retries.fetch_add(1, Ordering::Relaxed);
                    let since = *failing.get_or_insert_with(Instant::now);
                    if since.elapsed() > self.retry_for {
                        bail!(
                            "Redis at {} has failed for {:?}: {e}",
                            self.target,
                            self.retry_for
                        );
                    }
                    tracing::warn!("reading the length of {}: {e}; retrying", self.target);
                }
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(500));
        }
    }

    /// Appends `batch` after every batch before it, exactly once and in
    /// order, retrying through Redis errors and restarts for up to
    /// `--redis-retry-for`. Returns once the batch is sent and at most
    /// `pipeline - 1` batches are unanswered; [`flush`](Self::flush) waits
    /// for the rest. Events are acknowledged (counted, their permits
    /// released) as their batches' answers arrive, in order.
    pub async fn write(&mut self, batch: Vec<Event>) -> anyhow::Result<()> {
        while self.in_flight.len() >= self.pipeline {
            self.settle_front().await?;
        }
        self.wait_below_high_water().await?;
        self.send(batch, false).await
    }

    /// Waits until every batch sent is acknowledged.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        while !self.in_flight.is_empty() {
            self.settle_front().await?;
        }
        Ok(())
    }

    /// Gives the events their IDs and sends them as one script call.
    /// Events that carry their own IDs (derived from the source's sequence
    /// numbers) at or below their stream's last ID are already in it (a
    /// replay, or a batch that landed before its answer was lost) and are
    /// not sent again, so an event can never enter a stream twice; after
    /// a `Moved` refusal (`check`) such an event is first checked to be
    /// the one the stream holds.
    async fn send(&mut self, batch: Vec<Event>, check: bool) -> anyhow::Result<()> {
        let mut events = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        let after: Vec<StreamId> = self.streams.iter().map(|s| s.sent).collect();
        let now = crate::telemetry::now_ms();
        for event in batch {
            let stream = usize::from(event.stream);
            let id = match event.id {
                Some(own) if own <= self.streams[stream].sent => {
                    if check {
                        self.check_present(stream, &event).await?;
                    }
                    self.counters
                        .replays_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(own) => own,
                // With one `now` for the batch, its IDs are consecutive
                // in one millisecond, as Redis's `*` would give them.
                None => self.streams[stream].sent.next(now),
            };
            self.streams[stream].sent = id;
            events.push(event);
            ids.push(id);
        }
        if events.is_empty() {
            return Ok(());
        }
        let bytes = events.iter().map(|e| e.data.len() as u64).sum();
        let cmd = self.script_call(&events, &ids, &after);
        let mut con = self.con.clone();
        let mut reply: futures::future::BoxFuture<'static, Result<Value, RedisError>> =
            Box::pin(async move {
                // A refusal comes back as a value; it is an error here.
                match con.send_packed_command(&cmd).await? {
                    Value::ServerError(e) => Err(e.into()),
                    v => Ok(v),
                }
            });
        // The first poll puts the call on the connection, so calls go out
        // in the order they are sent.
        if let std::task::Poll::Ready(r) = futures::poll!(reply.as_mut()) {
            reply = Box::pin(std::future::ready(r));
        }
        self.in_flight.push_back(InFlight {
            events,
            ids,
            bytes,
            reply,
        });
        Ok(())
    }

    /// The script call appending `events` under `ids` after `after`.
    /// The command is sized before it is filled, so building it copies each
    /// event once.
    fn script_call(&self, events: &[Event], ids: &[StreamId], after: &[StreamId]) -> redis::Cmd {
        let n = self.streams.len();
        let bytes: usize = events.iter().map(|e| e.data.len() + 96).sum::<usize>()
            + APPEND_SCRIPT.len()
            + self.streams.iter().map(|s| s.key.len() + 48).sum::<usize>()
            + self.field.len()
            + 32;
        let mut cmd = redis::Cmd::with_capacity(5 + 2 * n + 5 * events.len(), bytes);
        cmd.arg("EVAL").arg(APPEND_SCRIPT).arg(n);
        for s in &self.streams {
            cmd.arg(&s.key);
        }
        let mut id_buf = [0u8; 41];
        for a in after {
            cmd.arg(id_bytes(*a, &mut id_buf));
        }
        cmd.arg(&self.field)
            .arg(self.maxlen.as_deref().unwrap_or(""));
        let mut seq = itoa::Buffer::new();
        for (event, id) in events.iter().zip(ids) {
            cmd.arg(usize::from(event.stream) + 1)
                .arg(id_bytes(*id, &mut id_buf))
                .arg(&event.data[..])
                .arg(event.kind.as_deref().unwrap_or(""));
            match (event.seq, event.id) {
                (Some(s), Some(_)) => cmd.arg(seq.format(s)),
                _ => cmd.arg(""),
            };
        }
        cmd
    }

    /// Whether no batch is in flight.
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Resolves once the oldest batch in flight is answered (never, when
    /// none is); the answer is kept for [`settle_front`](Self::settle_front).
    /// Cancel-safe: dropped before that, nothing changes.
    pub async fn answered(&mut self) {
        match self.in_flight.front_mut() {
            Some(front) => {
                let reply = (&mut front.reply).await;
                front.reply = Box::pin(std::future::ready(reply));
            }
            None => std::future::pending().await,
        }
    }

    /// Waits for the oldest batch's answer: acknowledged, its events are
    /// counted and released; failed, see [`recover`](Self::recover).
    pub async fn settle_front(&mut self) -> anyhow::Result<()> {
        let Some(mut front) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let reply = (&mut front.reply).await;
        match reply.and_then(|v| self.lengths(v)) {
            Ok(lengths) => {
                self.applied(front.events, front.bytes, &lengths);
                Ok(())
            }
            Err(e) => self.recover(front, e).await,
        }
    }

    /// The streams' lengths from the script's answer.
    fn lengths(&self, reply: Value) -> Result<Vec<u64>, RedisError> {
        let lengths: Vec<u64> = redis::from_redis_value(reply)?;
        if lengths.len() != self.streams.len() {
            return Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "the append script answered",
                format!(
                    "{} lengths for {} streams",
                    lengths.len(),
                    self.streams.len()
                ),
            )));
        }
        Ok(lengths)
    }

    /// A batch Redis acknowledged.
    fn applied(&mut self, events: Vec<Event>, bytes: u64, lengths: &[u64]) {
        for (i, length) in lengths.iter().enumerate() {
            self.set_length(i, *length);
        }
        self.failing_since = None;
        self.pause = Duration::from_millis(50);
        self.acknowledge(events, bytes);
    }

    /// Counts `events` as written and releases them (and their permits).
    fn acknowledge(&self, events: Vec<Event>, bytes: u64) {
        if let Some(seq) = events.iter().rev().find_map(|e| e.seq) {
            self.counters
                .acked_seq_plus_one
                .store(seq + 1, Ordering::Release);
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_written
            .fetch_add(bytes, Ordering::AcqRel);
        self.counters
            .events_written
            .fetch_add(events.len() as u64, Ordering::AcqRel);
    }

    /// After the oldest batch failed: waits for the answers of the batches
    /// behind it, reads where the streams stand, and sends again, in
    /// order, whatever did not land. Only a prefix of the batches in
    /// flight can have landed (the script's guard), and within a batch
    /// only a prefix (IDs increase), so an event landed exactly when its
    /// ID is at or below its stream's last ID. This assumes headroom is
    /// the streams' only writer, as an ingester is; another writer's
    /// entries are noticed by the guard, and events go after them.
    async fn recover(&mut self, front: InFlight, error: RedisError) -> anyhow::Result<()> {
        let mut unsettled = Vec::with_capacity(self.in_flight.len() + 1);
        let mut reason = self.unsettled(front, error, &mut unsettled)?;
        while let Some(mut next) = self.in_flight.pop_front() {
            let reply = (&mut next.reply).await;
            match reply.and_then(|v| self.lengths(v)) {
                Ok(lengths) => {
                    // It landed after its guard saw every earlier batch's
                    // entries: those landed too, whatever their answers.
                    if unsettled
                        .iter()
                        .any(|u: &Unsettled| u.failure != Failure::Unknown)
                    {
                        bail!(
                            "a batch landed in {} after an earlier one was refused: another client is writing to the stream with headroom's IDs",
                            self.target
                        );
                    }
                    for u in unsettled.drain(..) {
                        let bytes = u.events.iter().map(|e| e.data.len() as u64).sum();
                        self.acknowledge(u.events, bytes);
                    }
                    self.applied(next.events, next.bytes, &lengths);
                }
                Err(e) => {
                    reason = self.unsettled(next, e, &mut unsettled)?;
                }
            }
        }
        let Some(first) = unsettled.first() else {
            return Ok(());
        };
        if first.failure == Failure::Moved {
            // Not a failure of Redis: counted, not paused for.
            self.counters.redis_retries.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed(&reason).await?;
        }
        while let Err(e) = self.resync().await {
            self.failed(&e.to_string()).await?;
        }
        if first.failure == Failure::Moved {
            tracing::warn!(
                "stream {} was not where headroom left it ({reason}): another client wrote to it or deleted it; {} batches go after its entries",
                self.target,
                unsettled.len()
            );
        }
        // Sending again moves `sent`: compare with the streams' tops.
        let tops = self.last_ids();
        for u in unsettled {
            let mut rest = Vec::with_capacity(u.events.len());
            let (mut landed, mut landed_bytes) = (Vec::new(), 0);
            for (event, id) in u.events.into_iter().zip(u.ids) {
                if u.failure == Failure::Unknown && id <= tops[usize::from(event.stream)] {
                    landed_bytes += event.data.len() as u64;
                    landed.push(event);
                } else {
                    rest.push(event);
                }
            }
            if !landed.is_empty() {
                tracing::info!(
                    "{} events were written before the connection failed; not sending them again",
                    landed.len()
                );
                self.acknowledge(landed, landed_bytes);
            }
            self.send(rest, u.failure == Failure::Moved).await?;
        }
        Ok(())
    }

    /// Adds a failed batch to `unsettled`; a fatal failure ends the job.
    /// Returns the failure's description.
    fn unsettled(
        &self,
        batch: InFlight,
        error: RedisError,
        unsettled: &mut Vec<Unsettled>,
    ) -> anyhow::Result<String> {
        let failure = classify(&error);
        if failure == Failure::Fatal {
            return Err(anyhow::Error::new(error)
                .context(format!("Redis refused to append to {}", self.target)));
        }
        unsettled.push(Unsettled {
            events: batch.events,
            ids: batch.ids,
            failure,
        });
        Ok(error.to_string())
    }

    /// Checks that stream `stream` holds `event` under its ID (same data).
    async fn check_present(&mut self, stream: usize, event: &Event) -> anyhow::Result<()> {
        let id = event.id.unwrap_or_default().to_string();
        let key = &self.streams[stream].key;
        let found: Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(&id)
            .arg(&id)
            .query_async(&mut self.con)
            .await
            .with_context(|| format!("reading entry {id} of stream {key}"))?;
        let same = match &found {
            Value::Array(entries) => entries.iter().any(|entry| {
                let Value::Array(pair) = entry else {
                    return false;
                };
                let Some(Value::Array(fields)) = pair.get(1) else {
                    return false;
                };
                fields.chunks(2).any(|kv| {
                    matches!(kv, [Value::BulkString(k), Value::BulkString(v)]
                        if k.as_slice() == self.field.as_bytes() && v.as_slice() == &event.data[..])
                })
            }),
            _ => false,
        };
        if !same {
            bail!(
                "stream {key} holds another entry at or above ID {id} (another writer?): the event cannot be added in order",
            );
        }
        Ok(())
    }

    /// Counts a failed attempt and sleeps before the next; gives up after
    /// `--redis-retry-for` of continuous failure.
    async fn failed(&mut self, e: &str) -> anyhow::Result<()> {
        self.counters.redis_retries.fetch_add(1, Ordering::Relaxed);
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.retry_for {
            bail!(
                "Redis at {} has refused writes for {}: {e}",
                self.target,
                humantime::format_duration(self.retry_for)
            );
        }
        tracing::warn!(
            "writing to {}: {e}; retrying in {:?}",
            self.target,
            self.pause
        );
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(2));
        Ok(())
    }
}

/// `id` as `MS-SEQ` in `buf`, without a String per event.
fn id_bytes(id: StreamId, buf: &mut [u8; 41]) -> &[u8] {
    let mut ms = itoa::Buffer::new();
    let mut seq = itoa::Buffer::new();
    let (ms, seq) = (ms.format(id.ms).as_bytes(), seq.format(id.seq).as_bytes());
    buf[..ms.len()].copy_from_slice(ms);
    buf[ms.len()] = b'-';
    buf[ms.len() + 1..ms.len() + 1 + seq.len()].copy_from_slice(seq);
    &buf[..ms.len() + 1 + seq.len()]
}

/// The last generated ID and length from an `XINFO STREAM` answer.
fn stream_info(info: &Value) -> Result<(Option<StreamId>, u64), RedisError> {
    let fields: Vec<&Value> = match info {
        Value::Array(v) => v.iter().collect(),
        Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::ServerError(e) => return Err(e.clone().into()),
        other => {
            return Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected XINFO STREAM reply",
                format!("{other:?}"),
            )));
        }
    };
    let mut top = None;
    let mut length = 0;
    for pair in fields.chunks(2) {
        let [k, v] = pair else { break };
        let key: String = redis::from_redis_value_ref(k).unwrap_or_default();
        match key.as_str() {
            "last-generated-id" => {
                let s: String = redis::from_redis_value_ref(v)?;
                top = s.parse().ok();
            }
            "length" => length = redis::from_redis_value_ref(v)?,
            _ => {}
        }
    }
    Ok((top, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_a_database() {
        let t: Target = "redis://127.0.0.1:6390/3/events".parse().unwrap();
        assert_eq!((t.db, t.stream.as_str()), (3, "events"));
        assert_eq!(t.connection.as_str(), "redis://127.0.0.1:6390/3");
        let t: Target = "redis://localhost/firehose".parse().unwrap();
        assert_eq!((t.db, t.stream.as_str()), (0, "firehose"));
        let t: Target = "redis://h/app/events%3Araw".parse().unwrap();
        assert_eq!((t.db, t.stream.as_str()), (0, "app/events:raw"));
        let t: Target = "redis://:secret@h:1/1/s".parse().unwrap();
        assert_eq!(t.to_string(), "redis://h:1/1/s", "no password shown");
    }

    #[test]
    fn bad_targets_say_what_is_wrong() {
        for (url, words) in [
            ("redis://127.0.0.1:6379", "names no stream"),
            ("redis://127.0.0.1:6379/", "names no stream"),
            ("http://h/s", "unsupported scheme"),
            ("rediss://h/s", "TLS"),
            ("not a url", "invalid Redis URL"),
            ("redis://h/99999999999/s", "out of range"),
        ] {
            let e = url.parse::<Target>().unwrap_err();
            assert!(e.contains(words), "{url}: {e}");
        }
    }

    #[test]
    fn ids_are_written_without_a_string() {
        let mut buf = [0u8; 41];
        assert_eq!(id_bytes(StreamId { ms: 0, seq: 7 }, &mut buf), b"0-7");
        let top = StreamId {
            ms: u64::MAX,
            seq: u64::MAX,
        };
        assert_eq!(id_bytes(top, &mut buf), top.to_string().as_bytes());
    }

    #[test]
    fn ids_increase_like_redis_star() {
        let id = StreamId { ms: 10, seq: 4 };
        assert_eq!(id.next(9), StreamId { ms: 10, seq: 5 }, "clock behind");
        assert_eq!(id.next(10), StreamId { ms: 10, seq: 5 });
        assert_eq!(id.next(11), StreamId { ms: 11, seq: 0 });
        assert_eq!(
            "5-7".parse::<StreamId>().unwrap(),
            StreamId { ms: 5, seq: 7 }
        );
        assert!(StreamId { ms: 5, seq: 7 } < StreamId { ms: 6, seq: 0 });
    }
}
