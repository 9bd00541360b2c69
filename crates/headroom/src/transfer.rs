//! Streaming copy of one object, paid for by governor permits.
//!
//! Three kinds, chosen by the destination and the size:
//!
//! | kind | buffers held | footprint function |
//! |---|---|---|
//! | [`Kind::Kernel`] | none (the kernel copies) | [`OBJECT_OVERHEAD`] |
//! | [`Kind::ServerSide`] | none (S3 copies) | [`OBJECT_OVERHEAD`] |
//! | [`Kind::ToLocal`] | one chunk, refilled | [`to_local_footprint`] |
//! | [`Kind::SinglePut`] | the object (at most one part) | [`single_put_footprint`] |
//! | [`Kind::Multipart`] | one part per permit, 1..=`part_concurrency` | [`part_footprint`] |
//! | [`Kind::Streamed`] | one chunk or part, refilled | [`part_footprint`] |
//!
//! No object is ever read whole unless it fits in one part. Every retry
//! re-reads from the source (a local range or a ranged GET), so streaming
//! never costs retry-ability. Integrity is checked end to end where the
//! protocol allows: the MD5 of what was read is compared with the ETag the
//! server computed for each PUT and each part, and what was read is hashed
//! against the source's MD5 when the source knows it (an S3 ETag that is a
//! plain MD5, a Drive file's `md5Checksum`): a download or a single PUT as
//! it goes, a multipart upload by hashing its parts in order (a part that
//! finishes before the one ahead of it waits, holding its permit, so the
//! hash never needs a byte the permits did not pay for).
//!
//! An object whose size is not known before it is read (a Google Doc's
//! export) is [`Kind::Streamed`]: read to its end through one buffer, as a
//! file, one PUT, or a multipart upload of as many parts as it fills. It
//! cannot be resumed mid-way, so a failure starts it again from byte 0
//! (removing the partial file, aborting the upload).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use headroom_governor::{Governor, Permit};
use md5::{Digest, Md5};
use tokio::sync::watch;

pub use crate::store::bucket::HTTP_READ_BUFFER;
use crate::store::retry::{Backoff, Retry, with_retries};
use crate::store::{Entry, PartId, RangeReader, Store, StoreError, WriteMode, hex, is_md5_hex};

/// Heap an object's transfer (or one part of it) holds besides its data
/// buffers: the task, keys and paths, a file handle, request headers and
/// signing state, the MD5 state, and response parsing. Measured at about
/// 50 KiB a PUT or part by `tests/reservations.rs`; twice that is charged.
pub const OBJECT_OVERHEAD: u64 = 128 << 10;

/// S3's limits on multipart uploads.
pub const MIN_PART: u64 = 5 << 20;
/// The largest part S3 accepts.
pub const MAX_PART: u64 = 5 << 30;
/// The most parts one upload may have.
pub const MAX_PARTS: u64 = 10_000;

/// How one object is moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Local to local: the kernel copies (a reflink, `copy_file_range`),
    /// no buffer of headroom's holds the bytes.
    Kernel,
    /// S3 to S3 on one endpoint: S3 copies (`CopyObject`; above the copy
    /// cutoff `UploadPartCopy` in parts of this size), no byte passes
    /// through headroom.
    ServerSide {
        /// Part size of a multipart copy; `None`: one `CopyObject`.
        part: Option<u64>,
    },
    /// Stream into a local file in chunks of this size.
    ToLocal {
        /// Buffer size.
        chunk: u64,
    },
    /// One PUT of the whole object (it fits in a part).
    SinglePut,
    /// A multipart upload in parts of this size.
    Multipart {
        /// Part size.
        part: u64,
    },
    /// An object of unknown length, read to its end through one buffer of
    /// this size: a chunk into a file, or a part of an upload.
    Streamed {
        /// Buffer size.
        buffer: u64,
    },
}

/// Knobs of a transfer.
#[derive(Clone, Debug)]
pub struct TransferConfig {
    /// Buffer size for writes to local files.
    pub chunk_size: u64,
    /// Fixed part size; `None` picks one per object (see [`part_size_for`]).
    pub part_size: Option<u64>,
    /// Parts of one object in flight at most (more only when the budget has
    /// room to spare; see [`Kind::Multipart`]).
    pub part_concurrency: usize,
    /// How each request is retried.
    pub retry: Retry,
    /// S3 to S3 copies are made by S3 (off: streamed through headroom, to
    /// cross accounts or re-encrypt through a proxy).
    pub server_side: bool,
    /// Server-side copies larger than this are multipart (`CopyObject`
    /// takes at most 5 GiB).
    pub copy_cutoff: u64,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            chunk_size: 1 << 20,
            part_size: None,
            part_concurrency: 4,
            retry: Retry::default(),
            server_side: true,
            copy_cutoff: DEFAULT_COPY_CUTOFF,
        }
    }
}

/// The default copy cutoff: what rclone uses, under `CopyObject`'s 5 GiB.
pub const DEFAULT_COPY_CUTOFF: u64 = 4_939_212_390;

/// The part size of a server-side multipart copy: `fixed`, else 512 MiB
/// (no buffer holds a part), within S3's limits and 10,000 parts.
pub fn copy_part_size(size: u64, fixed: Option<u64>) -> u64 {
    let needed = size.div_ceil(MAX_PARTS);
    fixed
        .unwrap_or(512 << 20)
        .max(needed)
        .clamp(MIN_PART, MAX_PART)
}

/// The automatic part size: 8 MiB, larger only when an object would
/// otherwise need more than 10,000 parts, rounded up to a MiB; never more
/// than a quarter of the budget unless S3's 5 MiB minimum requires it.
pub fn part_size_for(size: u64, budget: u64, fixed: Option<u64>) -> u64 {
    if let Some(p) = fixed {
        return p.clamp(MIN_PART, MAX_PART);
    }
    let needed = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    let preferred = (8u64 << 20).min(budget / 4).max(MIN_PART);
    preferred.max(needed).min(MAX_PART)
}

/// The smallest chunk a download into a local file is read in; a budget
/// that cannot pay for it is too small to copy anything.
pub const MIN_CHUNK: u64 = 64 << 10;

/// Chooses the kind of transfer for an object of `size` going to `dst`
/// (by its [`WriteMode`]) from a source whose reads cost `read_overhead`
/// ([`Store::read_overhead`]), with buffers sized so that its [`footprint`]
/// fits in `working` (the most one request can be granted) where that is
/// possible at all; where it is not (an object that needs parts larger
/// than the budget), the footprint says so and the caller fails that
/// object.
pub fn kind_for(
    src: &Store,
    dst: &Store,
    read_overhead: u64,
    entry: &Entry,
    working: u64,
    cfg: &TransferConfig,
) -> Kind {
    let size = entry.size;
    if src.copies_in_kernel_to(dst) && !entry.size_unknown {
        return Kind::Kernel;
    }
    if cfg.server_side && src.copies_server_side_to(dst) && !entry.size_unknown {
        return Kind::ServerSide {
            part: (size > cfg.copy_cutoff).then(|| copy_part_size(size, cfg.part_size)),
        };
    }
    match dst.write_mode() {
        WriteMode::Positional => {
            let room = working.saturating_sub(OBJECT_OVERHEAD + read_overhead);
            let chunk = cfg.chunk_size.min(room).max(MIN_CHUNK);
            if entry.size_unknown {
                Kind::Streamed { buffer: chunk }
            } else {
                Kind::ToLocal { chunk }
            }
        }
        WriteMode::Upload => {
            let part = part_size_for(size, working, cfg.part_size);
            if entry.size_unknown {
                Kind::Streamed { buffer: part }
            } else if size <= part {
                Kind::SinglePut
            } else {
                Kind::Multipart { part }
            }
        }
    }
}

/// The least working budget with which every object can be copied to
/// `dst`: one minimal chunk into a file, or one minimal part (or the fixed
/// `--part-size`) to an upload, whose single PUTs hold up to a part.
pub fn least_footprint(dst: &Store, read_overhead: u64, cfg: &TransferConfig) -> u64 {
    match dst.write_mode() {
        WriteMode::Positional => to_local_footprint(MIN_CHUNK, MIN_CHUNK, read_overhead),
        WriteMode::Upload => part_footprint(
            cfg.part_size.unwrap_or(MIN_PART).clamp(MIN_PART, MAX_PART),
            read_overhead,
        ),
    }
}

/// Footprint of streaming an object of `size` into a file.
pub fn to_local_footprint(size: u64, chunk: u64, read_overhead: u64) -> u64 {
    size.min(chunk) + OBJECT_OVERHEAD + read_overhead
}

/// Footprint of uploading an object of `size` in one PUT.
pub fn single_put_footprint(size: u64, read_overhead: u64) -> u64 {
    size + OBJECT_OVERHEAD + read_overhead
}

/// Footprint of one part in flight.
pub fn part_footprint(part: u64, read_overhead: u64) -> u64 {
    part + OBJECT_OVERHEAD + read_overhead
}

/// What must be reserved before an object's transfer may start, from a
/// source whose reads cost `read_overhead`.
pub fn footprint(kind: Kind, size: u64, read_overhead: u64) -> u64 {
    match kind {
        Kind::Kernel | Kind::ServerSide { .. } => OBJECT_OVERHEAD,
        Kind::ToLocal { chunk } => to_local_footprint(size, chunk, read_overhead),
        Kind::SinglePut => single_put_footprint(size, read_overhead),
        Kind::Multipart { part } | Kind::Streamed { buffer: part } => {
            part_footprint(part, read_overhead)
        }
    }
}

/// Live byte counter shared with progress reporting.
pub type BytesDone = Arc<AtomicU64>;

/// What every transfer of a job shares.
pub struct Transfers<'a> {
    /// Where objects come from.
    pub src: &'a Store,
    /// Where they go.
    pub dst: &'a Store,
    /// The governor extra parts are asked of.
    pub gov: &'a Governor,
    /// Retry and part settings.
    pub cfg: &'a TransferConfig,
    /// Bytes moved, for progress.
    pub bytes_done: &'a BytesDone,
    /// Becomes `true` to stop: a transfer in progress stops at its next
    /// chunk or part and cleans up (partial file removed, upload aborted).
    pub cancel: &'a watch::Receiver<bool>,
}

impl Transfers<'_> {
    /// Copies `entry` from `src` to `dst` under the same key. `permit` pays
    /// for the first buffer (see [`footprint`]); a multipart upload may add
    /// parts with permits it can get without waiting.
    pub async fn copy_object(
        &self,
        entry: &Entry,
        kind: Kind,
        permit: Permit,
    ) -> Result<(), StoreError> {
        let (src, dst, cfg) = (self.src, self.dst, self.cfg);
        if *self.cancel.borrow() {
            return Err(interrupted(src, entry));
        }
        // A cancel drops a download or a single PUT where it is: dropping
        // the local writer removes its partial file, and a PUT that never
        // completed leaves nothing. A multipart upload watches the cancel
        // itself, to abort the upload.
        let mut cancel = self.cancel.clone();
        let stopped = crate::cancel::until_set(&mut cancel);
        match kind {
            // Looks at the cancel itself, between steps; the permit pays
            // for its file handles and the fallback's small buffer.
            Kind::Kernel => {
                let r = src
                    .copy_in_kernel(
                        entry,
                        dst,
                        self.bytes_done.clone(),
                        self.cancel.clone(),
                        false,
                    )
                    .await;
                drop(permit);
                r.map(|_| ())
            }
            Kind::ServerSide { part } => {
                let r = self.server_side(entry, part).await;
                drop(permit);
                r
            }
            Kind::ToLocal { chunk } => tokio::select! {
                r = self.to_local(entry, chunk, permit) => r,
                _ = stopped => Err(interrupted(src, entry)),
            },
            Kind::SinglePut => tokio::select! {
                r = single_put(src, dst, entry, permit, cfg, self.bytes_done) => r,
                _ = stopped => Err(interrupted(src, entry)),
            },
            Kind::Multipart { part } => self.multipart(entry, part, permit).await,
            Kind::Streamed { buffer } => self.streamed(entry, buffer, permit).await,
        }
    }
}

async fn open_with_retries(
    src: &Store,
    entry: &Entry,
    range: std::ops::Range<u64>,
    cfg: &TransferConfig,
) -> Result<RangeReader, StoreError> {
    with_retries(&cfg.retry, || src.open_range(entry, range.clone())).await
}

/// The error of a transfer stopped by a cancel (a signal, or a task
/// cancelled in `serve`): its partial file is removed, its upload aborted.
pub(crate) fn interrupted(src: &Store, entry: &Entry) -> StoreError {
    StoreError::permanent(
        src.display_key(&entry.key),
        "interrupted before it was complete",
    )
}

fn changed_size(src: &Store, entry: &Entry, got: u64) -> StoreError {
    StoreError::permanent(
        src.display_key(&entry.key),
        format!(
            "source changed during the copy: listed {} bytes, read {got}",
            entry.size
        ),
    )
}

impl Transfers<'_> {
    /// Streams the object into a local file through one chunk buffer. A broken
    /// read resumes from the last byte written. The bytes counted as it
    /// goes are taken back if it fails.
    async fn to_local(&self, entry: &Entry, chunk: u64, permit: Permit) -> Result<(), StoreError> {
        let mut sent = 0u64;
        let r = self.to_local_counted(entry, chunk, permit, &mut sent).await;
        if r.is_err() {
            self.bytes_done.fetch_sub(sent, Ordering::Relaxed);
        }
        r
    }

    async fn to_local_counted(
        &self,
        entry: &Entry,
        chunk: u64,
        _permit: Permit,
        sent: &mut u64,
    ) -> Result<(), StoreError> {
        let (src, cfg, bytes_done) = (self.src, self.cfg, self.bytes_done);
        let size = entry.size;
        let mut writer = self.dst.create(&entry.key).await?;
        let mut buf = vec![0u8; size.min(chunk) as usize];
        let mut hasher = entry.md5_etag().map(|_| Md5::new());
        let mut offset = 0u64;
        let mut reader = open_with_retries(src, entry, 0..size, cfg).await?;
        let mut backoff = Backoff::new(&cfg.retry);
        while offset < size {
            let (b, r) = reader.read(buf, 0).await;
            buf = b;
            let n = match r {
                Ok(0) => return Err(changed_size(src, entry, offset)),
                Ok(n) => n,
                Err(e) if backoff.retry(&e).await => {
                    reader = open_with_retries(src, entry, offset..size, cfg).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            let (b, w) = writer.write_at(buf, n, offset).await;
            buf = b;
            w?;
            offset += n as u64;
            bytes_done.fetch_add(n as u64, Ordering::Relaxed);
            *sent += n as u64;
        }
        drop(buf);
        if let Some(h) = hasher {
            check_source_md5(src, entry, &h.finalize())?;
        }
        let mtime = source_mtime(src, entry, reader.mtime(), cfg).await?;
        writer.finish(mtime, entry.mode.or(reader.mode())).await
    }
}

impl Transfers<'_> {
    /// Has S3 copy the object: one `CopyObject`, or a multipart upload of
    /// `UploadPartCopy` parts, `part_concurrency` at a time, each retried
    /// on its own, the upload aborted on failure. The source's mtime and
    /// mode (from a HEAD: a listing does not show its metadata) go with
    /// it; a copy whose ETag is an MD5 is checked against the source's.
    async fn server_side(&self, entry: &Entry, part: Option<u64>) -> Result<(), StoreError> {
        let (src, dst, cfg) = (self.src, self.dst, self.cfg);
        let head = with_retries(&cfg.retry, || src.stat(&entry.key))
            .await?
            .ok_or_else(|| {
                StoreError::permanent(src.display_key(&entry.key), "vanished since it was listed")
            })?;
        if head.size != entry.size {
            return Err(changed_size(src, entry, head.size));
        }
        let meta = (head.mtime, head.mode);
        let Some(part) = part else {
            let etag =
                with_retries(&cfg.retry, || src.copy_server_side(dst, entry, meta, None)).await?;
            // A single-part source's ETag is its MD5, and so is the copy's.
            if let Some(want) = entry.md5_etag()
                && is_md5_hex(&etag)
                && !etag.eq_ignore_ascii_case(want)
            {
                return Err(StoreError {
                    context: dst.display_key(&entry.key),
                    message: format!(
                        "integrity check failed: the copy's ETag {etag}, the source's {want}"
                    ),
                    retryable: true,
                });
            }
            self.bytes_done.fetch_add(entry.size, Ordering::Relaxed);
            return Ok(());
        };
        let upload_id =
            with_retries(&cfg.retry, || dst.create_upload(&entry.key, meta.0, meta.1)).await?;
        let mut sent = 0u64;
        let parts = self
            .copy_parts(entry, &upload_id, part, meta, &mut sent)
            .await;
        let outcome = match parts {
            Ok(parts) => {
                with_retries(&cfg.retry, || {
                    dst.complete_upload(&entry.key, &upload_id, parts.clone(), meta.0, meta.1)
                })
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &outcome {
            self.bytes_done.fetch_sub(sent, Ordering::Relaxed);
            abort_upload(dst, entry, &upload_id, e, cfg).await;
        }
        outcome
    }

    /// The `UploadPartCopy` parts of a multipart copy, in order.
    async fn copy_parts(
        &self,
        entry: &Entry,
        upload_id: &str,
        part: u64,
        meta: (Option<SystemTime>, Option<u32>),
        sent: &mut u64,
    ) -> Result<Vec<PartId>, StoreError> {
        let (src, dst, cfg) = (self.src, self.dst, self.cfg);
        let size = entry.size;
        let count = size.div_ceil(part) as usize;
        let mut cancel = self.cancel.clone();
        let copy_part = |index: usize| {
            let start = index as u64 * part;
            let range = start..(start + part).min(size);
            async move {
                let etag = with_retries(&cfg.retry, || {
                    src.copy_server_side(dst, entry, meta, Some((upload_id, index, range.clone())))
                })
                .await?;
                Ok::<_, StoreError>((index, range.end - range.start, etag))
            }
        };
        let mut done: Vec<Option<PartId>> = vec![None; count];
        let mut in_flight = FuturesUnordered::new();
        let mut next = 0;
        while next < count || !in_flight.is_empty() {
            while next < count && in_flight.len() < cfg.part_concurrency.max(1) {
                in_flight.push(copy_part(next));
                next += 1;
            }
            let finished = tokio::select! {
                f = in_flight.next() => f,
                _ = crate::cancel::until_set(&mut cancel) => return Err(interrupted(src, entry)),
            };
            if let Some(r) = finished {
                let (index, len, etag) = r?;
                self.bytes_done.fetch_add(len, Ordering::Relaxed);
                *sent += len;
                done[index] = Some(PartId { content_id: etag });
            }
        }
        Ok(done
            .into_iter()
            .map(|p| p.expect("every part copied"))
            .collect())
    }
}

/// Aborts upload `upload_id` of `entry` after `error`: an incomplete
/// upload (and its stored parts) is never left behind; an abort that fails
/// too is logged with the upload's id.
async fn abort_upload(
    dst: &Store,
    entry: &Entry,
    upload_id: &str,
    error: &StoreError,
    cfg: &TransferConfig,
) {
    let aborted = with_retries(&cfg.retry, || dst.abort_upload(&entry.key, upload_id)).await;
    if let Err(abort) = aborted {
        tracing::error!(
            upload_id = %upload_id,
            "could not abort the multipart upload of {} after: {error}: {abort}",
            dst.display_key(&entry.key)
        );
    }
}

/// The modification time to record at the destination: what a read of
/// the source already returned, else what the source store knows of it
/// ([`Store::source_mtime`]).
async fn source_mtime(
    src: &Store,
    entry: &Entry,
    read: Option<SystemTime>,
    cfg: &TransferConfig,
) -> Result<Option<SystemTime>, StoreError> {
    match read {
        Some(t) => Ok(Some(t)),
        None => src.source_mtime(entry, &cfg.retry).await,
    }
}

/// Reads `range` of the source into `buf` (its length is the range's),
/// retrying with a fresh reader; returns the buffer.
async fn read_range(
    src: &Store,
    entry: &Entry,
    range: std::ops::Range<u64>,
    mut buf: Vec<u8>,
    cfg: &TransferConfig,
) -> Result<(Vec<u8>, Option<SystemTime>), StoreError> {
    let mut backoff = Backoff::new(&cfg.retry);
    loop {
        let mut reader = open_with_retries(src, entry, range.clone(), cfg).await?;
        let (b, r) = reader.read_full(buf).await;
        buf = b;
        match r {
            Ok(n) if n == buf.len() => return Ok((buf, reader.mtime())),
            Ok(n) => return Err(changed_size(src, entry, range.start + n as u64)),
            Err(e) if backoff.retry(&e).await => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Checks the MD5 of everything read from `entry` against the source's
/// own, when it has one: a mismatch is a corrupted read (retried) or a
/// source that changed since it was listed.
fn check_source_md5(src: &Store, entry: &Entry, digest: &[u8]) -> Result<(), StoreError> {
    let Some(want) = entry.md5_etag() else {
        return Ok(());
    };
    let got = hex(digest);
    if got.eq_ignore_ascii_case(want) {
        return Ok(());
    }
    Err(StoreError {
        context: src.display_key(&entry.key),
        message: format!(
            "integrity check failed: the content read hashes to {got}, the source's MD5 is {want} (a corrupted read, or the source changed since it was listed)"
        ),
        retryable: true,
    })
}

/// Checks a server-computed ETag against the MD5 of what was sent. ETags
/// that are not plain MD5s (KMS encryption) cannot be checked.
fn check_etag(what: &str, etag: Option<&str>, data: &[u8]) -> Result<(), StoreError> {
    let Some(etag) = etag.map(|e| e.trim_matches('"')).filter(|e| is_md5_hex(e)) else {
        return Ok(());
    };
    let ours = hex(&Md5::digest(data));
    if ours.eq_ignore_ascii_case(etag) {
        Ok(())
    } else {
        Err(StoreError {
            context: what.to_string(),
            message: format!("integrity check failed: server ETag {etag}, content MD5 {ours}"),
            retryable: true,
        })
    }
}

async fn single_put(
    src: &Store,
    dst: &Store,
    entry: &Entry,
    _permit: Permit,
    cfg: &TransferConfig,
    bytes_done: &BytesDone,
) -> Result<(), StoreError> {
    let (buf, mtime) = read_range(
        src,
        entry,
        0..entry.size,
        vec![0u8; entry.size as usize],
        cfg,
    )
    .await?;
    check_source_md5(src, entry, &Md5::digest(&buf))?;
    let mtime = source_mtime(src, entry, mtime, cfg).await?;
    let data = Bytes::from(buf);
    with_retries(&cfg.retry, || async {
        let etag = dst.put(&entry.key, data.clone(), mtime, entry.mode).await?;
        check_etag(&dst.display_key(&entry.key), etag.as_deref(), &data)
    })
    .await?;
    bytes_done.fetch_add(entry.size, Ordering::Relaxed);
    Ok(())
}

/// One part of a multipart upload.
struct Part<'a> {
    dst: &'a Store,
    entry: &'a Entry,
    upload_id: &'a str,
    index: usize,
    range: std::ops::Range<u64>,
}

/// Uploads one part from its source range, retrying the part alone.
async fn upload_part(
    src: &Store,
    p: Part<'_>,
    permit: Permit,
    cfg: &TransferConfig,
) -> Result<PartDone, StoreError> {
    let Part {
        dst,
        entry,
        upload_id,
        index,
        range,
    } = p;
    let len = (range.end - range.start) as usize;
    let mut backoff = Backoff::new(&cfg.retry);
    loop {
        // Re-read on every attempt: the buffer exists only while it is sent.
        let (buf, _) = read_range(src, entry, range.clone(), vec![0u8; len], cfg).await?;
        let data = Bytes::from(buf);
        match put_checked_part(dst, entry, upload_id, index, data.clone()).await {
            Ok(part) => {
                return Ok(PartDone {
                    index,
                    part,
                    permit,
                    data,
                });
            }
            Err(e) if backoff.retry(&e).await => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A part uploaded, with the permit that paid for it and its bytes (kept
/// for the in-order hash of the whole object, else dropped at once).
struct PartDone {
    index: usize,
    part: PartId,
    permit: Permit,
    data: Bytes,
}

/// Uploads part `index` once and checks the server's ETag against the
/// MD5 of `data`.
async fn put_checked_part(
    dst: &Store,
    entry: &Entry,
    upload_id: &str,
    index: usize,
    data: Bytes,
) -> Result<PartId, StoreError> {
    let md5 = hex(&Md5::digest(&data));
    let part = dst.put_part(&entry.key, upload_id, index, data).await?;
    if let Some(etag) = dst.part_etag(&part)
        && is_md5_hex(etag)
        && !etag.eq_ignore_ascii_case(&md5)
    {
        return Err(StoreError {
            context: format!(
                "upload part {} of {}",
                index + 1,
                dst.display_key(&entry.key)
            ),
            message: format!("integrity check failed: server ETag {etag}, part MD5 {md5}"),
            retryable: true,
        });
    }
    Ok(part)
}

/// The MD5 of an object uploaded in parts that finish in any order: each
/// part's bytes wait (with their permit) until the parts before it are
/// hashed.
#[derive(Default)]
struct OrderedMd5 {
    hasher: Md5,
    next: usize,
    waiting: std::collections::BTreeMap<usize, (Bytes, Permit)>,
}

impl OrderedMd5 {
    /// Takes part `index`; the permits of the parts now hashed.
    fn offer(&mut self, index: usize, data: Bytes, permit: Permit) -> Vec<Permit> {
        self.waiting.insert(index, (data, permit));
        let mut hashed = Vec::new();
        while let Some((data, permit)) = self.waiting.remove(&self.next) {
            self.hasher.update(&data);
            self.next += 1;
            hashed.push(permit);
        }
        hashed
    }
}

impl Transfers<'_> {
    async fn multipart(&self, entry: &Entry, part: u64, first: Permit) -> Result<(), StoreError> {
        let (src, dst, cfg) = (self.src, self.dst, self.cfg);
        let size = entry.size;
        let count = size.div_ceil(part) as usize;
        let mtime = source_mtime(src, entry, None, cfg).await?;
        let upload_id = with_retries(&cfg.retry, || {
            dst.create_upload(&entry.key, mtime, entry.mode)
        })
        .await?;
        // Bytes this upload added to the progress counter: taken back if it
        // fails, so the totals count only objects that arrived.
        let mut sent = 0u64;
        let result = self
            .upload_parts(entry, &upload_id, part, count, first, &mut sent)
            .await;
        let outcome = match result {
            Ok(parts) => {
                let completed = with_retries(&cfg.retry, || {
                    dst.complete_upload(&entry.key, &upload_id, parts.clone(), mtime, entry.mode)
                })
                .await;
                match completed {
                    Err(e) if completed_anyway(dst, entry, &parts, cfg).await => {
                        tracing::debug!("{e}: but the object is complete");
                        Ok(())
                    }
                    other => other,
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &outcome {
            self.bytes_done.fetch_sub(sent, Ordering::Relaxed);
            abort_upload(dst, entry, &upload_id, e, cfg).await;
        }
        outcome
    }

    async fn upload_parts(
        &self,
        entry: &Entry,
        upload_id: &str,
        part: u64,
        count: usize,
        first: Permit,
        sent: &mut u64,
    ) -> Result<Vec<PartId>, StoreError> {
        let (src, dst, gov, cfg, bytes_done) =
            (self.src, self.dst, self.gov, self.cfg, self.bytes_done);
        let mut cancel = self.cancel.clone();
        let size = entry.size;
        let mut done: Vec<Option<PartId>> = vec![None; count];
        let mut hashing = entry.md5_etag().map(|_| OrderedMd5::default());
        let mut spare = Some(first);
        let mut next = 0usize;
        let mut in_flight = FuturesUnordered::new();
        let tag = spare.as_ref().map_or("copy.part", |p| p.tag());
        let want = spare.as_ref().map_or(0, |p| p.bytes());
        while next < count || !in_flight.is_empty() {
            // Start parts while permits are at hand: the one this object was
            // admitted with, then extras only if the governor has room right
            // now. Never wait for bytes while holding some (no hold-and-wait).
            while next < count && in_flight.len() < cfg.part_concurrency.max(1) {
                let permit = match spare.take() {
                    Some(p) => p,
                    // Holding nothing, waiting is safe (and normally a finished
                    // part has handed its permit on instead).
                    None if in_flight.is_empty() => gov.acquire(want, tag).await,
                    None => match gov.try_acquire(want, tag) {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let start = next as u64 * part;
                let range = start..(start + part).min(size);
                let p = Part {
                    dst,
                    entry,
                    upload_id,
                    index: next,
                    range,
                };
                in_flight.push(upload_part(src, p, permit, cfg));
                next += 1;
            }
            let finished = tokio::select! {
                f = in_flight.next() => f,
                // Dropping the parts in flight cancels their requests; the
                // caller aborts the upload.
                _ = crate::cancel::until_set(&mut cancel) => return Err(interrupted(src, entry)),
            };
            match finished {
                Some(Ok(PartDone {
                    index,
                    part: id,
                    permit,
                    data,
                })) => {
                    let len = part.min(size - index as u64 * part);
                    bytes_done.fetch_add(len, Ordering::Relaxed);
                    *sent += len;
                    done[index] = Some(id);
                    let freed = match hashing.as_mut() {
                        Some(h) => h.offer(index, data, permit),
                        None => vec![permit],
                    };
                    // Keep one permit for the next part; release extras.
                    for permit in freed {
                        if spare.is_none() && next < count {
                            spare = Some(permit);
                        }
                    }
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        if let Some(h) = hashing {
            check_source_md5(src, entry, &h.hasher.finalize())?;
        }
        Ok(done
            .into_iter()
            .map(|p| p.expect("every part uploaded"))
            .collect())
    }

    /// Copies an object of unknown length (see [`Kind::Streamed`]),
    /// starting again from byte 0 after a retryable failure.
    async fn streamed(
        &self,
        entry: &Entry,
        buffer: u64,
        _permit: Permit,
    ) -> Result<(), StoreError> {
        let mut backoff = Backoff::new(&self.cfg.retry);
        loop {
            let mut cancel = self.cancel.clone();
            let stopped = crate::cancel::until_set(&mut cancel);
            let attempt = async {
                match self.dst.write_mode() {
                    WriteMode::Positional => self.stream_to_file(entry, buffer).await,
                    WriteMode::Upload => self.stream_to_upload(entry, buffer).await,
                }
            };
            // Dropping an attempt removes its partial file; an upload
            // watches the cancel itself, to abort.
            let r = tokio::select! {
                r = attempt => r,
                _ = stopped, if self.dst.write_mode() == WriteMode::Positional => {
                    Err(interrupted(self.src, entry))
                }
            };
            match r {
                Ok(n) => {
                    self.bytes_done.fetch_add(n, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if *self.cancel.borrow() => return Err(e),
                Err(e) if backoff.retry(&e).await => {
                    tracing::info!("{e}: reading it again from its start");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt of a streamed copy into a file; the bytes copied.
    async fn stream_to_file(&self, entry: &Entry, buffer: u64) -> Result<u64, StoreError> {
        let mut writer = self.dst.create(&entry.key).await?;
        let mut reader = self.src.open_range(entry, 0..u64::MAX).await?;
        let mut buf = vec![0u8; buffer as usize];
        let mut offset = 0u64;
        loop {
            let (b, r) = reader.read(buf, 0).await;
            buf = b;
            let n = r?;
            if n == 0 {
                break;
            }
            let (b, w) = writer.write_at(buf, n, offset).await;
            buf = b;
            w?;
            offset += n as u64;
        }
        drop(buf);
        writer.finish(entry.mtime, entry.mode).await?;
        Ok(offset)
    }

    /// One attempt of a streamed copy into an upload: one PUT if it ends
    /// within the first buffer, else a multipart upload of the buffers as
    /// they fill, one at a time; the bytes copied.
    async fn stream_to_upload(&self, entry: &Entry, buffer: u64) -> Result<u64, StoreError> {
        let (src, dst, cfg) = (self.src, self.dst, self.cfg);
        let mut reader = src.open_range(entry, 0..u64::MAX).await?;
        let (mut buf, r) = reader.read_full(vec![0u8; buffer as usize]).await;
        let filled = r?;
        if filled < buf.len() {
            buf.truncate(filled);
            let data = Bytes::from(buf);
            with_retries(&cfg.retry, || async {
                let etag = dst
                    .put(&entry.key, data.clone(), entry.mtime, entry.mode)
                    .await?;
                check_etag(&dst.display_key(&entry.key), etag.as_deref(), &data)
            })
            .await?;
            return Ok(filled as u64);
        }
        let upload_id = with_retries(&cfg.retry, || {
            dst.create_upload(&entry.key, entry.mtime, entry.mode)
        })
        .await?;
        let mut cancel = self.cancel.clone();
        let parts = tokio::select! {
            r = self.stream_parts(entry, &mut reader, buf, &upload_id) => r,
            _ = crate::cancel::until_set(&mut cancel) => Err(interrupted(src, entry)),
        };
        let outcome = match parts {
            Ok((parts, total)) => with_retries(&cfg.retry, || {
                dst.complete_upload(
                    &entry.key,
                    &upload_id,
                    parts.clone(),
                    entry.mtime,
                    entry.mode,
                )
            })
            .await
            .map(|()| total),
            Err(e) => Err(e),
        };
        if let Err(e) = &outcome {
            abort_upload(dst, entry, &upload_id, e, cfg).await;
        }
        outcome
    }

    /// Uploads `first` (a full buffer) and then every buffer the reader
    /// fills, as parts; the parts and the bytes sent.
    async fn stream_parts(
        &self,
        entry: &Entry,
        reader: &mut RangeReader,
        first: Vec<u8>,
        upload_id: &str,
    ) -> Result<(Vec<PartId>, u64), StoreError> {
        let (dst, cfg) = (self.dst, self.cfg);
        let buffer = first.len();
        let mut parts = Vec::new();
        let mut total = 0u64;
        let mut buf = first;
        let mut filled = buffer;
        loop {
            if parts.len() as u64 >= MAX_PARTS {
                return Err(StoreError::permanent(
                    dst.display_key(&entry.key),
                    format!(
                        "larger than {MAX_PARTS} parts of {}: give a larger --part-size",
                        headroom_governor::ByteSize(buffer as u64)
                    ),
                ));
            }
            buf.truncate(filled);
            let data = Bytes::from(buf);
            let index = parts.len();
            let part = with_retries(&cfg.retry, || {
                put_checked_part(dst, entry, upload_id, index, data.clone())
            })
            .await?;
            parts.push(part);
            total += filled as u64;
            // The part's buffer is freed before the next one is filled.
            drop(data);
            if filled < buffer {
                return Ok((parts, total));
            }
            let (b, r) = reader.read_full(vec![0u8; buffer]).await;
            buf = b;
            filled = r?;
            if filled == 0 {
                return Ok((parts, total));
            }
        }
    }
}

/// The ETag S3 gives an object assembled from parts with these ETags:
/// the MD5 of their binary MD5s, then `-` and the count. `None` when a
/// part's ETag is not a plain MD5.
fn multipart_etag(parts: &[&str]) -> Option<String> {
    let mut all = Md5::new();
    for etag in parts {
        if !is_md5_hex(etag) {
            return None;
        }
        let mut digest = [0u8; 16];
        for (i, d) in digest.iter_mut().enumerate() {
            *d = u8::from_str_radix(&etag[2 * i..2 * i + 2], 16).ok()?;
        }
        all.update(digest);
    }
    Some(format!("{}-{}", hex(&all.finalize()), parts.len()))
}

/// Whether a completion that reported failure happened anyway: when its
/// answer is lost (a timeout, a reset), the retry finds the upload already
/// gone and fails, though the object is in place or still being assembled
/// by the server. It is accepted only once the destination holds exactly
/// the object these parts make; the wait for that follows the retry policy.
async fn completed_anyway(
    dst: &Store,
    entry: &Entry,
    parts: &[PartId],
    cfg: &TransferConfig,
) -> bool {
    let Some(want) = parts
        .iter()
        .map(|p| dst.part_etag(p))
        .collect::<Option<Vec<_>>>()
        .and_then(|etags| multipart_etag(&etags))
    else {
        return false;
    };
    let check = || async {
        match dst.stat(&entry.key).await? {
            Some(found)
                if found.size == entry.size
                    && found
                        .etag
                        .as_deref()
                        .is_some_and(|e| e.trim_matches('"').eq_ignore_ascii_case(&want)) =>
            {
                Ok(())
            }
            _ => Err(StoreError {
                context: dst.display_key(&entry.key),
                message: format!("no object with ETag {want} (yet)"),
                retryable: true,
            }),
        }
    };
    with_retries(&cfg.retry, check).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etag_is_the_md5_of_the_part_md5s_and_the_count() {
        let parts = [
            "5d41402abc4b2a76b9719d911017c592",
            "7d793037a0760186574b0282f2f435e7",
        ];
        assert_eq!(
            multipart_etag(&parts).as_deref(),
            Some("065947336a2f2a95ba8899f3675c3be6-2")
        );
        assert_eq!(multipart_etag(&["not-an-md5"]), None);
    }

    #[test]
    fn part_size_respects_s3_limits_and_the_budget() {
        const MIB: u64 = 1 << 20;
        assert_eq!(part_size_for(100 * MIB, 1 << 30, None), 8 * MIB);
        assert_eq!(
            part_size_for(100 * MIB, 24 * MIB, None),
            6 * MIB,
            "a quarter of a small budget"
        );
        assert_eq!(
            part_size_for(100 * MIB, 8 * MIB, None),
            MIN_PART,
            "never below S3's minimum"
        );
        // 1 TiB needs parts > 100 MiB to stay within 10,000 parts.
        let p = part_size_for(1 << 40, 1 << 30, None);
        assert!(
            p.is_multiple_of(MIB) && (1u64 << 40).div_ceil(p) <= MAX_PARTS,
            "{p}"
        );
        assert_eq!(part_size_for(10, 1 << 30, Some(MIB)), MIN_PART);
        assert_eq!(part_size_for(10, 1 << 30, Some(6 << 30)), MAX_PART);
    }

    #[test]
    fn footprints_name_their_buffers() {
        assert_eq!(to_local_footprint(10, 1 << 20, 0), 10 + OBJECT_OVERHEAD);
        assert_eq!(
            to_local_footprint(5 << 20, 1 << 20, HTTP_READ_BUFFER),
            (1 << 20) + OBJECT_OVERHEAD + HTTP_READ_BUFFER
        );
        assert_eq!(single_put_footprint(1000, 0), 1000 + OBJECT_OVERHEAD);
        assert_eq!(
            part_footprint(8 << 20, HTTP_READ_BUFFER),
            (8 << 20) + OBJECT_OVERHEAD + HTTP_READ_BUFFER
        );
    }

    #[test]
    fn etags_that_are_md5s_are_checked() {
        let md5 = hex(&Md5::digest(b"hello"));
        assert!(check_etag("x", Some(&format!("\"{md5}\"")), b"hello").is_ok());
        let e = check_etag("x", Some(&md5), b"jello").unwrap_err();
        assert!(e.retryable && e.message.contains("integrity check failed"));
        assert!(
            check_etag("x", Some("abc-2"), b"anything").is_ok(),
            "multipart ETags are not MD5s"
        );
        assert!(check_etag("x", None, b"anything").is_ok());
    }
}
