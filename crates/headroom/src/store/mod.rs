//! Object stores behind one interface: a local directory tree, a bucket
//! prefix of S3 (or an S3-compatible server), Google Cloud Storage or Azure
//! Blob Storage, or (as a source only) a Google Drive folder.
//!
//! A store is rooted at a [`Location`]; every object in it is named by a
//! *key* relative to that root, `/`-separated, valid UTF-8 (what S3 can
//! name). The seam is deliberately narrow, in the spirit of ripgrep's
//! `Sink`: a store can
//!
//! * [`list`](Store::list) its objects into a byte-bounded channel (a
//!   listing never sits in memory whole; a full channel pauses the lister),
//! * [`stat`](Store::stat) one key,
//! * [`open_range`](Store::open_range) a key's byte range for sequential
//!   reads into caller-owned buffers (so a retry can re-read any range),
//! * take new objects the way its [`WriteMode`] says: positional writes
//!   into a file that appears whole at the end ([`create`](Store::create)),
//!   or whole-object PUTs and multipart uploads ([`put`](Store::put),
//!   [`create_upload`](Store::create_upload), ...),
//! * [`delete`](Store::delete) a batch of keys,
//! * and say what differs between backends when asked: how it is written,
//!   what a read costs besides its buffer ([`read_overhead`](Store::read_overhead)),
//!   whether a listing knows the MD5 or the source's mtime
//!   ([`content_md5`](Store::content_md5), [`source_mtime`](Store::source_mtime)).
//!
//! This file is the only place that knows which backend a store is: jobs
//! and transfers use the methods above and never match on the variant. A
//! new backend is a new file here (its client, listing, reads and writes),
//! a variant of [`Store`] and of [`Location`], and its arms in the methods
//! below.

pub mod bucket;
pub mod gdrive;
pub mod local;
pub mod location;
pub mod retry;
mod s3_list;

use std::ops::Range;
use std::time::SystemTime;

use headroom_governor::channel;

/// The writer of stores that write positionally ([`WriteMode::Positional`]).
pub use local::LocalWriter as FileWriter;
pub use location::{Cloud, Location};
/// A part of a multipart upload, as its store acknowledged it.
pub use object_store::multipart::PartId;

/// One object found by a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Key relative to the store's root, `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time: the file's mtime, or for S3 the source mtime
    /// headroom stored in the object's metadata, else its LastModified.
    pub mtime: Option<SystemTime>,
    /// S3 ETag without quotes; `None` for local files.
    pub etag: Option<String>,
    /// Permission bits (`0o777` at most): a local file's, or those an S3
    /// object's `mode` metadata records (known after a HEAD or GET).
    pub mode: Option<u32>,
    /// What the source store reads the object by when its key is not its
    /// name there: a Drive file's id, or a Google Doc's export link.
    pub handle: Option<String>,
    /// The size is not known before the content is read (a Google Doc's
    /// export): `size` is 0, and the transfer streams to the end.
    pub size_unknown: bool,
}

/// Bytes an entry holds while it waits in a listing channel.
impl channel::Footprint for Entry {
    fn footprint(&self) -> u64 {
        let text = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len());
        (std::mem::size_of::<Entry>() + self.key.len() + text(&self.etag) + text(&self.handle))
            as u64
    }
}

/// Bytes a listing error holds while it waits in a listing channel.
impl channel::Footprint for ListError {
    fn footprint(&self) -> u64 {
        (std::mem::size_of::<ListError>() + self.path.len() + self.message.len()) as u64
    }
}

impl Entry {
    /// Whether the ETag is a plain MD5 of the content (32 hex digits), the
    /// case for single-part uploads without KMS encryption.
    pub fn md5_etag(&self) -> Option<&str> {
        self.etag.as_deref().filter(|e| is_md5_hex(e))
    }
}

/// Whether two modification times are the same to the precision both
/// sides keep (a whole second when either has no sub-second part).
pub fn same_mtime(a: SystemTime, b: SystemTime) -> bool {
    let diff = a.duration_since(b).unwrap_or_else(|e| e.duration());
    let coarse = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .is_ok_and(|d| d.subsec_nanos() == 0)
    };
    let window = if coarse(a) || coarse(b) {
        std::time::Duration::from_secs(1)
    } else {
        std::time::Duration::from_millis(1)
    };
    diff < window
}

/// Lowercase hexadecimal of `bytes` (digests, in messages and ETags).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Whether `s` is 32 hexadecimal digits.
pub fn is_md5_hex(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A part of a store's key space in key order (UTF-8 bytes, as S3 orders
/// keys): the keys after `after` up to and including `through`; `None` is
/// the start, or the end. What a shard of a copy covers, and what a resumed
/// listing starts after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    /// Keys after this one (exclusive); `None`: from the first.
    pub after: Option<String>,
    /// Keys up to this one (inclusive); `None`: to the last.
    pub through: Option<String>,
}

impl KeyRange {
    /// Whether `key` is in the range.
    pub fn contains(&self, key: &str) -> bool {
        self.after.as_deref().is_none_or(|a| key > a)
            && self.through.as_deref().is_none_or(|t| key <= t)
    }

    /// Whether `key` is past the end (every later key in key order is too).
    pub fn is_past(&self, key: &str) -> bool {
        self.through.as_deref().is_some_and(|t| key > t)
    }

    /// Whether a subtree whose keys all start with `prefix` (a directory:
    /// `dir/`) may hold keys in the range.
    pub fn may_hold_prefix(&self, prefix: &str) -> bool {
        let before = self
            .after
            .as_deref()
            .is_some_and(|a| !a.starts_with(prefix) && prefix < a);
        let beyond = self
            .through
            .as_deref()
            .is_some_and(|t| !t.starts_with(prefix) && prefix > t);
        !before && !beyond
    }

    /// The range resumed after `checkpoint` (a key of the range whose
    /// listing before it is done).
    pub fn resumed_after(&self, checkpoint: Option<&str>) -> KeyRange {
        match checkpoint {
            Some(c) if self.contains(c) => KeyRange {
                after: Some(c.to_string()),
                through: self.through.clone(),
            },
            _ => self.clone(),
        }
    }
}

/// Something a listing could not read, or passed over; the listing goes
/// on.
#[derive(Debug)]
pub struct ListError {
    /// Where (a path or key).
    pub path: String,
    /// What went wrong, or what it is.
    pub message: String,
    /// Not a failure: a symlink or special file, which is never followed
    /// or copied, only counted and reported.
    pub passed_over: bool,
}

/// A listing streams entries and per-entry errors.
pub type Listed = Result<Entry, ListError>;

/// Why a store operation failed, and whether trying again may help.
#[derive(Debug)]
pub struct StoreError {
    /// What was being done, e.g. "upload part 3 of s3://b/k".
    pub context: String,
    /// The underlying error, rendered.
    pub message: String,
    /// Worth retrying (5xx, timeouts, resets), as opposed to permanent
    /// (permission denied, no such bucket, invalid name).
    pub retryable: bool,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.context, self.message)
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// A permanent error.
    pub fn permanent(context: impl Into<String>, message: impl std::fmt::Display) -> Self {
        StoreError {
            context: context.into(),
            message: message.to_string(),
            retryable: false,
        }
    }

    /// A failure worth another attempt (a request that got no answer, an
    /// answer cut short).
    pub fn transient(context: impl Into<String>, message: impl std::fmt::Display) -> Self {
        StoreError {
            context: context.into(),
            message: message.to_string(),
            retryable: true,
        }
    }

    /// From a local I/O error; interruptions and timeouts are retryable.
    pub fn io(context: impl Into<String>, e: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        StoreError {
            context: context.into(),
            message: e.to_string(),
            retryable: matches!(e.kind(), Interrupted | TimedOut | WouldBlock),
        }
    }
}

/// How a store takes new objects; the transfer picks its buffers by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Positional writes into a hidden partial file that is renamed into
    /// place when complete (a local tree): any chunk size, one chunk
    /// buffer at a time.
    Positional,
    /// Whole-object PUTs, or multipart uploads in parts of S3's sizes (5
    /// MiB to 5 GiB, at most 10,000 of them): a part is the buffer.
    Upload,
}

/// What a batch delete did to one key.
#[derive(Debug)]
pub enum Deleted {
    /// It is gone.
    Deleted,
    /// It was gone already.
    Vanished,
    /// It could not be deleted: why.
    Failed(String),
}

/// A store rooted at a [`Location`].
#[derive(Clone, Debug)]
pub enum Store {
    /// A local directory tree (or one file).
    Local(local::LocalStore),
    /// A bucket prefix of S3, GCS or Azure (or one object).
    Bucket(bucket::BucketStore),
    /// A Google Drive folder tree (or one file); a source only.
    GDrive(gdrive::DriveStore),
}

impl Store {
    /// Opens a copy's source: a directory or prefix, or a single file or
    /// object (copied into the destination as a directory would be).
    pub async fn open_source(
        loc: &Location,
        s3: &bucket::S3Config,
        gdrive: &gdrive::DriveConfig,
    ) -> anyhow::Result<Store> {
        use anyhow::{Context, bail};
        match loc {
            Location::Local(path) => match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => Ok(Store::Local(local::LocalStore::dir(path.clone()))),
                Ok(m) if m.is_file() => Ok(Store::Local(local::LocalStore::single_file(path)?)),
                Ok(_) => bail!(
                    "source {} is neither a file nor a directory",
                    path.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    bail!("source {} does not exist", path.display())
                }
                Err(e) => Err(e).with_context(|| format!("cannot read source {}", path.display())),
            },
            Location::Bucket {
                cloud,
                bucket,
                prefix,
                dir,
            } => {
                let client = s3.client(*cloud, bucket)?;
                Ok(Store::Bucket(
                    bucket::BucketStore::source(client, bucket.clone(), prefix.clone(), *dir)
                        .await?,
                ))
            }
            Location::GDrive(d) => Ok(Store::GDrive(
                gdrive::DriveStore::open(d, gdrive)
                    .await
                    .map_err(|e| anyhow::anyhow!("source {loc}: {e}"))?,
            )),
        }
    }

    /// Opens a directory or prefix to write into, or to purge. A local one
    /// must not be a file; a bucket must answer one listing request, so
    /// a missing or forbidden bucket fails here, before thousands of
    /// requests each fail on their own.
    pub async fn open_destination(loc: &Location, s3: &bucket::S3Config) -> anyhow::Result<Store> {
        if let Location::Local(path) = loc
            && path.is_file()
        {
            anyhow::bail!(
                "destination {} is a file; it must be a directory",
                path.display()
            );
        }
        let store = Store::open_prefix(loc, s3)?;
        if let Store::Bucket(s) = &store {
            retry::with_retries(&retry::Retry::default(), || s.check_access())
                .await
                .map_err(|e| anyhow::anyhow!("destination {loc}: {}", e.message))?;
        }
        Ok(store)
    }

    /// A directory or prefix as it is named, unchecked: whether it exists
    /// shows when it is first listed or written.
    pub fn open_prefix(loc: &Location, s3: &bucket::S3Config) -> Result<Store, StoreError> {
        Ok(match loc {
            Location::Local(path) => Store::Local(local::LocalStore::dir(path.clone())),
            Location::Bucket {
                cloud,
                bucket,
                prefix,
                ..
            } => {
                let client = s3.client(*cloud, bucket)?;
                Store::Bucket(bucket::BucketStore::new(
                    client,
                    bucket.clone(),
                    prefix.clone(),
                ))
            }
            Location::GDrive(_) => {
                return Err(StoreError::permanent(
                    loc.to_string(),
                    "Google Drive is a source only: copy from it to a local path or a bucket",
                ));
            }
        })
    }

    /// How this store takes new objects.
    pub fn write_mode(&self) -> WriteMode {
        match self {
            Store::Local(_) => WriteMode::Positional,
            Store::Bucket(_) | Store::GDrive(_) => WriteMode::Upload,
        }
    }

    /// Heap a read from this store holds besides the caller's buffer: for
    /// a bucket the HTTP client's read buffers ([`bucket::HTTP_READ_BUFFER`]); none
    /// for a local file.
    pub fn read_overhead(&self) -> u64 {
        match self {
            Store::Local(_) => 0,
            Store::Bucket(_) | Store::GDrive(_) => bucket::HTTP_READ_BUFFER,
        }
    }

    /// What a job should say about this store when it ends, if anything:
    /// for Google Drive, how many requests were sent and how Google paced
    /// them.
    pub fn remark(&self) -> Option<String> {
        match self {
            Store::Local(_) | Store::Bucket(_) => None,
            Store::GDrive(s) => {
                let p = s.pacer_stats();
                Some(format!(
                    "Google Drive: {} requests, {} refused for rate ({:.1} %), requests spaced {} ms apart at the slowest, {} ms at the end",
                    p.requests,
                    p.pushbacks,
                    p.pushbacks as f64 * 100.0 / p.requests.max(1) as f64,
                    p.slowest.as_millis(),
                    p.interval.as_millis()
                ))
            }
        }
    }

    /// Keys one [`delete`](Store::delete) call takes at most.
    pub fn delete_batch_keys(&self) -> usize {
        match self {
            Store::Local(_) | Store::GDrive(_) => 1,
            Store::Bucket(_) => bucket::DELETE_BATCH_KEYS,
        }
    }

    /// Human name of `key` in this store (`/data/a.txt`, `s3://b/p/a.txt`).
    pub fn display_key(&self, key: &str) -> String {
        match self {
            Store::Local(s) => s.path_of(key).display().to_string(),
            Store::Bucket(s) => s.url_of(key),
            Store::GDrive(s) => s.url_of(key),
        }
    }

    /// Streams every object below the root into `tx`, pausing while `tx`
    /// is full. Returns when the listing is done or the receiver is gone. A
    /// failure to start (no such directory, no such bucket) is an error;
    /// unreadable entries along the way are sent as [`ListError`]s and the
    /// listing continues. A failed S3 page is retried under `retry`,
    /// resuming after the last key listed.
    ///
    /// Without a `range`, objects come in no particular order (a local
    /// walk streams each directory as the filesystem returns it). With
    /// one, only the keys in it come, in key order: S3 lists so, a local
    /// walk sorts each directory (holding one directory's names at a time)
    /// and skips subtrees outside the range. A Drive walk has no key order:
    /// it lists everything, and refuses a range with an end.
    pub async fn list(
        &self,
        tx: channel::Sender<Listed>,
        retry: &retry::Retry,
        range: Option<&KeyRange>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => s.list(tx, range).await,
            Store::Bucket(s) => s.list(tx, retry, range).await,
            Store::GDrive(s) => {
                if range.is_some_and(|r| r.through.is_some()) {
                    return Err(StoreError::permanent(
                        s.url_of(""),
                        "a Google Drive walk has no key order: it cannot list a range of keys",
                    ));
                }
                s.list(tx, retry).await
            }
        }
    }

    /// The object at `key`, `None` if there is none.
    pub async fn stat(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        match self {
            Store::Local(s) => s.stat(key).await,
            Store::Bucket(s) => s.stat(key).await,
            Store::GDrive(_) => Err(self.not_written_so(key, "lookups by key")),
        }
    }

    /// Opens `range` of `entry` for sequential reads, of the version that
    /// was listed: a read of an S3 object that changed since fails
    /// (`If-Match` on its ETag), and so does one of a local file whose size
    /// or modification time is no longer the listed one when the range has
    /// been read. Exit 0 never means a mix of two versions.
    pub async fn open_range(
        &self,
        entry: &Entry,
        range: Range<u64>,
    ) -> Result<RangeReader, StoreError> {
        match self {
            Store::Local(s) => s.open_range(entry, range).await.map(RangeReader::Local),
            Store::Bucket(s) => Ok(RangeReader::Bucket(s.open_range(
                &entry.key,
                entry.etag.as_deref(),
                range,
            ))),
            Store::GDrive(s) => Ok(RangeReader::GDrive(s.open_range(entry, range))),
        }
    }

    /// The lowercase hex MD5 of `entry`'s content where it is cheap and
    /// honest to know: the ETag of a single-part S3 object (a listing has
    /// it; `None` for multipart or KMS objects), or a local file read
    /// through `buf`.
    pub async fn content_md5(
        &self,
        entry: &Entry,
        buf: Vec<u8>,
    ) -> Result<Option<String>, StoreError> {
        use md5::{Digest, Md5};
        match self {
            Store::Bucket(_) | Store::GDrive(_) => {
                Ok(entry.md5_etag().map(str::to_ascii_lowercase))
            }
            Store::Local(_) => {
                let mut hasher = Md5::new();
                let mut reader = self.open_range(entry, 0..entry.size).await?;
                let mut buf = buf;
                loop {
                    let (b, r) = reader.read(buf, 0).await;
                    buf = b;
                    match r? {
                        0 => break,
                        n => hasher.update(&buf[..n]),
                    }
                }
                Ok(Some(hex(&hasher.finalize())))
            }
        }
    }

    /// The modification time of the source `entry` stands for, to record
    /// at a destination or to compare with one. A local listing has the
    /// file's own; an S3 listing knows only LastModified (the upload time),
    /// so the mtime headroom stored in the object's metadata takes a HEAD,
    /// retried under `retry` (LastModified where there is none).
    pub async fn source_mtime(
        &self,
        entry: &Entry,
        retry: &retry::Retry,
    ) -> Result<Option<SystemTime>, StoreError> {
        match self {
            Store::Local(_) | Store::GDrive(_) => Ok(entry.mtime),
            Store::Bucket(s) => Ok(retry::with_retries(retry, || s.stat(&entry.key))
                .await?
                .and_then(|e| e.mtime)
                .or(entry.mtime)),
        }
    }

    /// Whether this store is a single file or object (a source named by
    /// its path or key), not a directory or prefix.
    pub fn is_single(&self) -> bool {
        match self {
            Store::Local(s) => s.is_single(),
            Store::Bucket(s) => s.is_single(),
            Store::GDrive(_) => false,
        }
    }

    /// Whether S3 can copy an object of this store into `dst` itself:
    /// both S3, reached through the same endpoint and credentials (one
    /// copy's stores always are).
    pub fn copies_server_side_to(&self, dst: &Store) -> bool {
        matches!((self, dst), (Store::Bucket(a), Store::Bucket(b))
            if a.cloud() == Cloud::S3 && b.cloud() == Cloud::S3)
    }

    /// Has S3 copy `entry` into `dst` (`CopyObject` with `meta` as its
    /// mtime and mode; with `part`, one `UploadPartCopy` of that upload,
    /// index and range), pinned to the ETag listed. Returns the new ETag.
    pub async fn copy_server_side(
        &self,
        dst: &Store,
        entry: &Entry,
        meta: (Option<SystemTime>, Option<u32>),
        part: Option<(&str, usize, Range<u64>)>,
    ) -> Result<String, StoreError> {
        match (self, dst) {
            (Store::Bucket(a), Store::Bucket(b)) => {
                b.copy_from(a, &entry.key, entry.etag.as_deref(), meta, part)
                    .await
            }
            _ => Err(self.not_written_so(&entry.key, "server-side copies")),
        }
    }

    /// Whether an object of this store is copied into `dst` inside the
    /// kernel ([`copy_in_kernel`](Self::copy_in_kernel)): both local.
    pub fn copies_in_kernel_to(&self, dst: &Store) -> bool {
        matches!((self, dst), (Store::Local(_), Store::Local(_)))
    }

    /// Copies `entry` into `dst` without its bytes passing through a
    /// buffer of headroom's (see [`local::LocalStore::copy_into`]);
    /// `copied` counts bytes as they go, `cancel` stops it between steps.
    /// With `unless_current`, a destination file of the listed size and
    /// modification time is left alone. Whether it copied.
    pub async fn copy_in_kernel(
        &self,
        entry: &Entry,
        dst: &Store,
        copied: std::sync::Arc<std::sync::atomic::AtomicU64>,
        cancel: tokio::sync::watch::Receiver<bool>,
        unless_current: bool,
    ) -> Result<bool, StoreError> {
        match (self, dst) {
            (Store::Local(a), Store::Local(b)) => {
                a.copy_into(entry, b, copied, cancel, unless_current).await
            }
            _ => Err(self.not_written_so(&entry.key, "kernel copies")),
        }
    }

    /// [`copy_in_kernel`](Self::copy_in_kernel) on this thread, which
    /// blocks: for a caller already on a blocking thread.
    pub fn copy_in_kernel_now(
        &self,
        entry: &Entry,
        dst: &Store,
        copied: &std::sync::atomic::AtomicU64,
        cancel: &tokio::sync::watch::Receiver<bool>,
        unless_current: bool,
    ) -> Result<bool, StoreError> {
        match (self, dst) {
            (Store::Local(a), Store::Local(b)) => {
                a.copy_into_now(entry, b, copied, cancel, unless_current)
            }
            _ => Err(self.not_written_so(&entry.key, "kernel copies")),
        }
    }

    /// A store that writes positionally ([`WriteMode::Positional`]): a
    /// hidden partial file for `key`, renamed into place by
    /// [`FileWriter::finish`] and removed if dropped before.
    pub async fn create(&self, key: &str) -> Result<FileWriter, StoreError> {
        match self {
            Store::Local(s) => s.create(key).await,
            Store::Bucket(_) | Store::GDrive(_) => {
                Err(self.not_written_so(key, "positional writes"))
            }
        }
    }

    /// A store that takes uploads ([`WriteMode::Upload`]): `data` as the
    /// whole object at `key`, with its source's `mtime` and `mode`. Returns
    /// the ETag the server computed, to check against what was sent.
    pub async fn put(
        &self,
        key: &str,
        data: bytes::Bytes,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<Option<String>, StoreError> {
        match self {
            Store::Bucket(s) => s.put(key, data, mtime, mode).await,
            Store::Local(_) | Store::GDrive(_) => Err(self.not_written_so(key, "uploads")),
        }
    }

    /// Starts a multipart upload of `key`; returns its id.
    pub async fn create_upload(
        &self,
        key: &str,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<String, StoreError> {
        match self {
            Store::Bucket(s) => s.create_multipart(key, mtime, mode).await,
            Store::Local(_) | Store::GDrive(_) => Err(self.not_written_so(key, "uploads")),
        }
    }

    /// Uploads part `index` (0-based) of upload `id`.
    pub async fn put_part(
        &self,
        key: &str,
        id: &str,
        index: usize,
        data: bytes::Bytes,
    ) -> Result<PartId, StoreError> {
        match self {
            Store::Bucket(s) => s.put_part(key, id, index, data).await,
            Store::Local(_) | Store::GDrive(_) => Err(self.not_written_so(key, "uploads")),
        }
    }

    /// The ETag the server gave `part`, where a part's id is one (S3,
    /// GCS; an Azure block id is headroom's own name for the block).
    pub fn part_etag<'a>(&self, part: &'a PartId) -> Option<&'a str> {
        match self {
            Store::Bucket(s) if s.parts_have_etags() => Some(part.content_id.trim_matches('"')),
            _ => None,
        }
    }

    /// Completes upload `id` from its parts in order. `mtime` and `mode`
    /// are those [`create_upload`](Self::create_upload) was given (Azure
    /// records them only now).
    pub async fn complete_upload(
        &self,
        key: &str,
        id: &str,
        parts: Vec<PartId>,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Bucket(s) => s.complete_multipart(key, id, parts, mtime, mode).await,
            Store::Local(_) | Store::GDrive(_) => Err(self.not_written_so(key, "uploads")),
        }
    }

    /// Aborts upload `id`, so no incomplete upload (and its stored parts)
    /// is left behind.
    pub async fn abort_upload(&self, key: &str, id: &str) -> Result<(), StoreError> {
        match self {
            Store::Bucket(s) => s.abort_multipart(key, id).await,
            Store::Local(_) | Store::GDrive(_) => Err(self.not_written_so(key, "uploads")),
        }
    }

    /// Deletes `keys` (at most [`delete_batch_keys`](Store::delete_batch_keys)),
    /// in one request where the backend has one; what happened to each, in
    /// order.
    pub async fn delete(&self, keys: &[String]) -> Result<Vec<Deleted>, StoreError> {
        match self {
            Store::Bucket(s) => s.delete(keys).await,
            Store::Local(s) => Ok(s.delete(keys).await),
            Store::GDrive(_) => {
                Err(self.not_written_so(keys.first().map_or("", |k| k.as_str()), "deletes"))
            }
        }
    }

    fn not_written_so(&self, key: &str, how: &str) -> StoreError {
        StoreError::permanent(
            self.display_key(key),
            format!("this store does not take {how} (see Store::write_mode)"),
        )
    }
}

/// Moves what fits of a ranged read's unread network chunk into `buf`,
/// advancing `pos`; the bytes moved.
fn drain(pending: &mut bytes::Bytes, buf: &mut [u8], pos: &mut u64) -> usize {
    let n = buf.len().min(pending.len());
    buf[..n].copy_from_slice(&pending.split_to(n));
    *pos += n as u64;
    n
}

/// The error of a ranged read whose response ended `missing` bytes short:
/// retryable, the reader resumes from where it stopped.
fn ended_early(context: String, missing: u64) -> StoreError {
    StoreError {
        context,
        message: format!("stream ended {missing} bytes early"),
        retryable: true,
    }
}

/// Sequential reads of one byte range into caller-owned buffers.
pub enum RangeReader {
    /// `pread` on a local file, on the blocking pool.
    Local(local::LocalRange),
    /// A ranged GET; a broken stream resumes with a new ranged GET.
    Bucket(bucket::BucketRange),
    /// A ranged `alt=media` GET of a Drive file, or an export.
    GDrive(gdrive::DriveRange),
}

impl RangeReader {
    /// Reads into `buf[at..]`. The buffer is moved in and handed back,
    /// also on failure, so blocking reads need no copy and a retry reuses
    /// the same (paid-for) buffer. `Ok(0)` means the range is exhausted.
    pub async fn read(&mut self, buf: Vec<u8>, at: usize) -> (Vec<u8>, Result<usize, StoreError>) {
        match self {
            RangeReader::Local(r) => r.read(buf, at).await,
            RangeReader::Bucket(r) => r.read(buf, at).await,
            RangeReader::GDrive(r) => r.read(buf, at).await,
        }
    }

    /// Reads until `buf` is full or the range ends; returns the buffer and
    /// the bytes read.
    pub async fn read_full(&mut self, mut buf: Vec<u8>) -> (Vec<u8>, Result<usize, StoreError>) {
        let mut filled = 0;
        while filled < buf.len() {
            let (b, r) = self.read(buf, filled).await;
            buf = b;
            match r {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return (buf, Err(e)),
            }
        }
        (buf, Ok(filled))
    }

    /// The source's modification time, if the read learned it (S3 reads
    /// carry the stored mtime metadata).
    pub fn mtime(&self) -> Option<std::time::SystemTime> {
        match self {
            RangeReader::Local(_) | RangeReader::GDrive(_) => None,
            RangeReader::Bucket(r) => r.mtime(),
        }
    }

    /// The source's permission bits, if the read learned them (S3 reads
    /// carry the `mode` metadata headroom stores).
    pub fn mode(&self) -> Option<u32> {
        match self {
            RangeReader::Local(_) | RangeReader::GDrive(_) => None,
            RangeReader::Bucket(r) => r.mode(),
        }
    }
}
