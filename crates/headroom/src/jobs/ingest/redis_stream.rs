//! The Redis side of `headroom ingest`: the target URL, and the writer that
//! appends batches to the stream.
//!
//! # Exactly once, in order, across Redis failures
//!
//! A pipelined batch whose connection drops may have been applied in full,
//! in part, or not at all, and the client cannot tell which. Retrying it
//! blindly would duplicate events; skipping it would lose them. So:
//!
//! * Each batch is one `MULTI` … `EXEC` transaction: Redis applies all of
//!   it or none of it.
//! * headroom assigns the entry IDs itself (`<ms>-<seq>`, increasing, as
//!   Redis's own `*` would), so a batch's last ID says whether it landed.
//! * After a failure whose outcome is unknown, the writer asks the stream
//!   for its `last-generated-id` (which trimming never lowers): if it is at
//!   or past the batch's last ID, the batch was applied; otherwise the same
//!   batch, with the same IDs, is sent again.
//!
//! This assumes headroom is the stream's only writer, as an ingester is.
//! If another writer adds entries with higher IDs, headroom notices the
//! conflict, takes IDs above the new top and goes on.
//!
//! # High water
//!
//! Every transaction ends with `XLEN`, so the writer knows the stream's
//! length after each batch without an extra round trip. Before a batch, if
//! that length is at or above `--high-water`, it polls `XLEN` (20 ms,
//! doubling to 500 ms) until a consumer has trimmed the stream below it;
//! meanwhile nothing is written, the bounded queue behind the writer fills,
//! and the reader stops reading. The stream never holds more than
//! high-water + one batch entries because of headroom.

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

/// Reads the replies of one transaction of `n` XADDs and an XLEN: the
/// stream's length, how many were added, and the first refusal. Within one
/// EXEC nobody else writes, so only an ID at or below the top (another
/// writer's entries) fails, and such failures come first.
fn tally(results: Vec<Value>, n: usize) -> (Option<u64>, usize, Option<redis::ServerError>) {
    let mut length = None;
    let mut added = 0;
    let mut refused = None;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Value::Int(len) if i == n => length = Some(len as u64),
            Value::ServerError(e) => {
                refused.get_or_insert(e);
            }
            _ => added += 1,
        }
    }
    (length, added, refused)
}

/// What a failed write means for the batch.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// Nothing was applied; send the batch again after a pause.
    NotApplied,
    /// The batch may have been applied: ask the stream before resending.
    Unknown,
    /// Retrying cannot help (wrong key type, bad configuration).
    Fatal,
}

/// Whether a refused XADD only lost a race with another writer's higher
/// IDs (`ERR The ID specified in XADD is equal or smaller than the target
/// stream top item`), which sending after them fixes.
fn is_id_conflict(e: &redis::ServerError) -> bool {
    e.details().is_some_and(|d| d.contains("equal or smaller"))
}

fn classify(e: &RedisError) -> Failure {
    let detail = e.detail().unwrap_or("");
    match e.code() {
        Some("WRONGTYPE") => return Failure::Fatal,
        Some("EXECABORT") if detail.contains("WRONGTYPE") => return Failure::Fatal,
        // Refused at queue time (e.g. OOM): the transaction was discarded.
        Some("EXECABORT") => return Failure::NotApplied,
        Some(
            "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "OOM" | "NOREPLICAS",
        ) => {
            return Failure::NotApplied;
        }
        _ => {}
    }
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return Failure::Unknown;
    }
    match e.retry_method() {
        redis::RetryMethod::NoRetry => Failure::Fatal,
        _ => Failure::Unknown,
    }
}

/// Appends batches of events to one stream; see the [module docs](self).
pub struct StreamWriter {
    con: ConnectionManager,
    target: Target,
    field: String,
    maxlen: Option<u64>,
    high_water: Option<u64>,
    retry_for: Duration,
    /// The last ID assigned (and, once its batch is acknowledged, written).
    last_id: StreamId,
    /// The stream's length after our last write or poll; consumers only
    /// lower it.
    length: u64,
    counters: Arc<IngestCounters>,
}

/// How a writer is set up.
pub struct WriterOptions {
    pub field: String,
    pub maxlen: Option<u64>,
    pub high_water: Option<u64>,
    pub retry_for: Duration,
}

impl StreamWriter {
    /// Connects, checks that the key is a stream (or absent) and reads
    /// where the stream stands. Fails at once when Redis is unreachable.
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
        let mut con = ConnectionManager::new_with_config(client, config)
            .await
            .with_context(|| format!("cannot connect to Redis at {target}"))?;
        let kind: String = redis::cmd("TYPE")
            .arg(&target.stream)
            .query_async(&mut con)
            .await
            .with_context(|| {
                format!(
                    "cannot read the type of key {:?} at {target}",
                    target.stream
                )
            })?;
        if kind != "stream" && kind != "none" {
            bail!(
                "Redis key {:?} in database {} holds a {kind}, not a stream: choose another stream name or delete the key",
                target.stream,
                target.db
            );
        }
        let mut writer = StreamWriter {
            con,
            target,
            field: options.field,
            maxlen: options.maxlen,
            high_water: options.high_water,
            retry_for: options.retry_for,
            last_id: StreamId::default(),
            length: 0,
            counters,
        };
        let (top, length) = writer
            .stream_state()
            .await
            .with_context(|| format!("cannot read stream {}", writer.target))?;
        writer.last_id = top.unwrap_or_default();
        writer.set_length(length);
        Ok(writer)
    }

    /// The stream's last generated ID when the writer connected, or after
    /// its last write.
    pub fn last_id(&self) -> StreamId {
        self.last_id
    }

    /// The target written to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    fn set_length(&mut self, length: u64) {
        self.length = length;
        self.counters.stream_length.store(length, Ordering::Relaxed);
    }

    /// The stream's last generated ID (`None` if it does not exist) and
    /// its length.
    async fn stream_state(&mut self) -> Result<(Option<StreamId>, u64), RedisError> {
        let (kind, info): (String, Value) = redis::pipe()
            .cmd("TYPE")
            .arg(&self.target.stream)
            .cmd("XINFO")
            .arg("STREAM")
            .arg(&self.target.stream)
            .ignore_errors()
            .query_async(&mut self.con)
            .await?;
        if kind == "none" {
            return Ok((None, 0));
        }
        let fields = match info {
            Value::Array(v) => v,
            Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            Value::ServerError(e) => return Err(e.into()),
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

    /// Waits while the stream holds `--high-water` entries or more.
    pub async fn wait_below_high_water(&mut self) -> anyhow::Result<()> {
        let Some(high_water) = self.high_water else {
            return Ok(());
        };
        if self.length < high_water {
            return Ok(());
        }
        let mut poll = Duration::from_millis(20);
        let mut failing: Option<(Instant, RedisError)> = None;
        loop {
            match redis::cmd("XLEN")
                .arg(&self.target.stream)
                .query_async::<u64>(&mut self.con)
                .await
            {
                Ok(length) => {
                    failing = None;
                    self.set_length(length);
                    if length < high_water {
                        self.counters.end_backpressure();
                        return Ok(());
                    }
                    if self.counters.start_backpressure() {
                        tracing::info!(
                            "stream {} holds {length} entries (high water {high_water}): pausing until a consumer trims it",
                            self.target
                        );
                    }
                }
                Err(e) => {
                    self.counters.redis_retries.fetch_add(1, Ordering::Relaxed);
                    let since = failing.as_ref().map_or_else(Instant::now, |f| f.0);
                    if since.elapsed() > self.retry_for {
                        bail!(
                            "Redis at {} has failed for {:?}: {e}",
                            self.target,
                            self.retry_for
                        );
                    }
                    tracing::warn!("reading the length of {}: {e}; retrying", self.target);
                    failing = Some((since, e));
                }
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(500));
        }
    }

    /// Appends `batch` exactly once and in order, retrying through Redis
    /// errors and restarts for up to `--redis-retry-for`. Events that carry
    /// their own IDs (derived from the source's sequence numbers) go by
    /// [`write_keyed`](Self::write_keyed).
    pub async fn write(&mut self, batch: &[Event]) -> anyhow::Result<()> {
        if batch.first().is_some_and(|e| e.id.is_some()) {
            return self.write_keyed(batch).await;
        }
        // `batch[done..end]` is still to be written, with IDs from `first`
        // on (`end` is short of the batch only after an ID conflict).
        let mut done = 0;
        let mut end = batch.len();
        let mut first = self.last_id.next(crate::telemetry::now_ms());
        let mut maybe_applied = false;
        let mut failing_since: Option<Instant> = None;
        let mut pause = Duration::from_millis(50);
        while done < end {
            let rest = &batch[done..end];
            if maybe_applied {
                // The script runs whole or not at all, but a connection
                // lost mid-way leaves us not knowing which: the stream's
                // last-generated-id says how much of `rest` landed.
                match self.stream_state().await {
                    Ok((top, length)) => {
                        maybe_applied = false;
                        let landed = applied_prefix(first, rest.len(), top);
                        if landed > 0 {
                            tracing::info!(
                                "{landed} events were written before the connection failed; not sending them again"
                            );
                            self.set_length(length);
                            self.landed(&mut first, &mut done, landed);
                            continue;
                        }
                    }
                    Err(e) => {
                        self.failed(&e.to_string(), &mut failing_since, &mut pause)
                            .await?;
                        continue;
                    }
                }
            }
            let reply = self
                .transaction(rest, first)
                .query_async::<Vec<Value>>(&mut self.con)
                .await;
            match reply {
                Ok(results) => {
                    let (length, added, refused) = tally(results, rest.len());
                    if let Some(length) = length {
                        self.set_length(length);
                    }
                    match refused {
                        None => self.landed(&mut first, &mut done, rest.len()),
                        Some(e) if e.code() == "WRONGTYPE" => {
                            bail!("appending to {} failed: {e:?}", self.target);
                        }
                        // Anything but another writer's higher IDs (a
                        // stream at the largest ID, say) cannot be helped
                        // by sending again.
                        Some(e) if !is_id_conflict(&e) => {
                            bail!("Redis refused to append to {}: {e:?}", self.target);
                        }
                        Some(e) => {
                            // The refused ones are the first of `rest`;
                            // the rest landed. Resend the refused ones after
                            // the other writer's entries.
                            let refused = rest.len() - added;
                            if added > 0 {
                                self.last_id = nth_id(first, rest.len() - 1);
                            }
                            end = done + refused;
                            let (top, _) = self.stream_state().await.unwrap_or_default();
                            first = top
                                .unwrap_or_default()
                                .max(self.last_id)
                                .next(crate::telemetry::now_ms());
                            tracing::warn!(
                                "stream {} has entries from another client above headroom's IDs; {refused} events go after them ({e:?})",
                                self.target,
                            );
                            if added == 0 {
                                // No progress: pause, and count it against
                                // --redis-retry-for, like any refusal.
                                self.failed(&format!("{e:?}"), &mut failing_since, &mut pause)
                                    .await?;
                            } else {
                                self.counters.redis_retries.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Err(e) => {
                    maybe_applied |= self
                        .transaction_failed(e, &mut failing_since, &mut pause)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Appends events whose IDs are their own (`Event::id`, increasing):
    /// those at or below the stream's last ID are already in it (a replay,
    /// or a batch that landed before its answer was lost) and are not sent
    /// again, so an event can never enter the stream twice. An ID refused
    /// because the stream is past it is checked: the entry there must be
    /// the same event, else another writer is in the way and nothing is
    /// written out of order.
    async fn write_keyed(&mut self, batch: &[Event]) -> anyhow::Result<()> {
        let mut failing_since: Option<Instant> = None;
        let mut pause = Duration::from_millis(50);
        let mut maybe_applied = false;
        let mut from = 0;
        loop {
            if maybe_applied {
                match self.stream_state().await {
                    Ok((top, length)) => {
                        maybe_applied = false;
                        self.set_length(length);
                        self.last_id = self.last_id.max(top.unwrap_or_default());
                    }
                    Err(e) => {
                        self.failed(&e.to_string(), &mut failing_since, &mut pause)
                            .await?;
                        continue;
                    }
                }
            }
            while batch
                .get(from)
                .is_some_and(|e| e.id.unwrap_or_default() <= self.last_id)
            {
                self.counters
                    .replays_dropped
                    .fetch_add(1, Ordering::Relaxed);
                from += 1;
            }
            let rest = &batch[from..];
            if rest.is_empty() {
                return Ok(());
            }
            let reply = self
                .transaction(rest, StreamId::default())
                .query_async::<Vec<Value>>(&mut self.con)
                .await;
            match reply {
                Ok(results) => {
                    let (length, added, refused) = tally(results, rest.len());
                    if let Some(length) = length {
                        self.set_length(length);
                    }
                    match refused {
                        None => {
                            self.last_id = rest[rest.len() - 1].id.unwrap_or_default();
                            return Ok(());
                        }
                        Some(e) if !is_id_conflict(&e) => {
                            bail!("Redis refused to append to {}: {e:?}", self.target);
                        }
                        Some(e) => {
                            // The refused ones come first: the stream is
                            // past them. They must be these very events.
                            let refused = rest.len() - added;
                            for event in &rest[..refused] {
                                self.check_present(event).await.with_context(|| {
                                    format!("appending to {} failed ({e:?})", self.target)
                                })?;
                            }
                            if added > 0 {
                                self.last_id = rest[rest.len() - 1].id.unwrap_or_default();
                                return Ok(());
                            }
                            self.last_id =
                                self.last_id.max(rest[refused - 1].id.unwrap_or_default());
                            from += refused;
                        }
                    }
                }
                Err(e) => {
                    maybe_applied |= self
                        .transaction_failed(e, &mut failing_since, &mut pause)
                        .await?;
                }
            }
        }
    }

    /// Checks that the stream holds `event` under its ID (same data).
    async fn check_present(&mut self, event: &Event) -> anyhow::Result<()> {
        let id = event.id.unwrap_or_default().to_string();
        let found: Value = redis::cmd("XRANGE")
            .arg(&self.target.stream)
            .arg(&id)
            .arg(&id)
            .query_async(&mut self.con)
            .await?;
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
                "stream {} holds another entry at or above ID {id} (another writer?): the event cannot be added in order",
                self.target
            );
        }
        self.counters
            .replays_dropped
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Records that `n` events from ID `first` on were written.
    fn landed(&mut self, first: &mut StreamId, done: &mut usize, n: usize) {
        if n > 0 {
            self.last_id = nth_id(*first, n - 1);
            *first = nth_id(*first, n);
            *done += n;
        }
    }

    /// After a transaction's error: a fatal one ends the job; else the
    /// attempt is counted and paused for. Whether the transaction may have
    /// been applied (the connection was lost mid-way).
    async fn transaction_failed(
        &self,
        e: RedisError,
        failing_since: &mut Option<Instant>,
        pause: &mut Duration,
    ) -> anyhow::Result<bool> {
        let maybe_applied = match classify(&e) {
            Failure::Fatal => {
                return Err(
                    anyhow::Error::new(e).context(format!("appending to {} failed", self.target))
                );
            }
            Failure::NotApplied => false,
            Failure::Unknown => true,
        };
        self.failed(&e.to_string(), failing_since, pause).await?;
        Ok(maybe_applied)
    }

    /// Counts a failed attempt and sleeps before the next; gives up after
    /// `--redis-retry-for` of continuous failure.
    async fn failed(
        &self,
        e: &str,
        failing_since: &mut Option<Instant>,
        pause: &mut Duration,
    ) -> anyhow::Result<()> {
        self.counters.redis_retries.fetch_add(1, Ordering::Relaxed);
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.retry_for {
            bail!(
                "Redis at {} has refused writes for {}: {e}",
                self.target,
                humantime::format_duration(self.retry_for)
            );
        }
        tracing::warn!("writing to {}: {e}; retrying in {pause:?}", self.target);
        tokio::time::sleep(*pause).await;
        *pause = (*pause * 2).min(Duration::from_secs(2));
        Ok(())
    }

    /// `MULTI`, an `XADD` per event with IDs from `first` on, `XLEN`,
    /// `EXEC`. Each command is sized before it is filled, so building a
    /// batch copies each event once.
    fn transaction(&self, events: &[Event], first: StreamId) -> redis::Pipeline {
        let mut pipe = redis::Pipeline::with_capacity(events.len() + 1);
        // Per-command errors come back as values, so a partly refused
        // batch can be told from a failed one.
        pipe.atomic().ignore_errors();
        let mut ms = itoa::Buffer::new();
        let ms = ms.format(first.ms).as_bytes();
        let mut seq = itoa::Buffer::new();
        let mut id = [0u8; 41];
        id[..ms.len()].copy_from_slice(ms);
        id[ms.len()] = b'-';
        let maxlen = self.maxlen.map(|n| n.to_string());
        for (i, event) in events.iter().enumerate() {
            let mut cmd = redis::Cmd::with_capacity(
                13,
                96 + self.target.stream.len() + self.field.len() + event.data.len(),
            );
            cmd.arg("XADD").arg(&self.target.stream);
            if let Some(n) = &maxlen {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            match event.id {
                // Its own ID.
                Some(own) => {
                    cmd.arg(own.to_string());
                }
                // "<ms>-<seq>" without a String per event.
                None => {
                    let sq = seq.format(first.seq.saturating_add(i as u64)).as_bytes();
                    let id_len = ms.len() + 1 + sq.len();
                    id[ms.len() + 1..id_len].copy_from_slice(sq);
                    cmd.arg(&id[..id_len]);
                }
            }
            cmd.arg(&self.field).arg(&event.data[..]);
            if let Some(t) = &event.kind {
                cmd.arg("t").arg(&t[..]);
            }
            if let (Some(s), Some(_)) = (event.seq, event.id) {
                cmd.arg("seq").arg(s);
            }
            pipe.add_command(cmd);
        }
        pipe.cmd("XLEN").arg(&self.target.stream);
        pipe
    }
}

/// The `n`-th ID from `first` (IDs of one batch share `first.ms`).
fn nth_id(first: StreamId, n: usize) -> StreamId {
    StreamId {
        ms: first.ms,
        seq: first.seq.saturating_add(n as u64),
    }
}

/// How many of `len` events with IDs from `first` on are in a stream whose
/// last generated ID is `top`.
fn applied_prefix(first: StreamId, len: usize, top: Option<StreamId>) -> usize {
    match top {
        Some(top) if top >= first => {
            if top.ms > first.ms {
                len
            } else {
                ((top.seq - first.seq + 1) as usize).min(len)
            }
        }
        _ => 0,
    }
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
    fn the_applied_prefix_follows_the_last_generated_id() {
        let first = StreamId { ms: 100, seq: 5 };
        assert_eq!(applied_prefix(first, 10, None), 0, "no stream");
        assert_eq!(
            applied_prefix(first, 10, Some(StreamId { ms: 100, seq: 4 })),
            0
        );
        assert_eq!(applied_prefix(first, 10, Some(first)), 1);
        assert_eq!(
            applied_prefix(first, 10, Some(StreamId { ms: 100, seq: 11 })),
            7
        );
        assert_eq!(
            applied_prefix(first, 10, Some(StreamId { ms: 100, seq: 99 })),
            10
        );
        assert_eq!(
            applied_prefix(first, 10, Some(StreamId { ms: 101, seq: 0 })),
            10
        );
        assert_eq!(nth_id(first, 3), StreamId { ms: 100, seq: 8 });
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
