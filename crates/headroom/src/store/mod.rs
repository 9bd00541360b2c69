//! Object stores behind one interface: a local directory tree or an
//! S3-compatible bucket prefix.
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
//! * and write through a store's own writer (a [`local::LocalWriter`], or
//!   S3 PUTs and multipart uploads) chosen by the transfer.

pub mod local;
pub mod location;
pub mod retry;
pub mod s3;
mod s3_list;

use std::ops::Range;
use std::time::SystemTime;

use headroom_governor::channel;

pub use location::Location;

/// One object found by a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// Bytes an entry holds while it waits in a listing channel.
impl channel::Footprint for Entry {
    fn footprint(&self) -> u64 {
        (std::mem::size_of::<Entry>() + self.key.len() + self.etag.as_ref().map_or(0, |e| e.len()))
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

/// Whether `s` is 32 hexadecimal digits.
pub fn is_md5_hex(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
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

/// A store rooted at a [`Location`].
#[derive(Clone, Debug)]
pub enum Store {
    /// A local directory tree (or one file).
    Local(local::LocalStore),
    /// An S3 bucket prefix (or one object).
    S3(s3::S3Store),
}

impl Store {
    /// Human name of `key` in this store (`/data/a.txt`, `s3://b/p/a.txt`).
    pub fn display_key(&self, key: &str) -> String {
        match self {
            Store::Local(s) => s.path_of(key).display().to_string(),
            Store::S3(s) => s.url_of(key),
        }
    }

    /// Streams every object below the root into `tx`, in no particular
    /// order, pausing while `tx` is full. Returns when the listing is done or
    /// the receiver is gone. A failure to start (no such directory, no such
    /// bucket) is an error; unreadable entries along the way are sent as
    /// [`ListError`]s and the listing continues. A failed S3 page is
    /// retried under `retry`, resuming after the last key listed.
    ///
    /// `start_after` resumes an S3 listing after that key (S3 lists in
    /// key order); a local walk has no order to resume in and ignores it.
    pub async fn list(
        &self,
        tx: channel::Sender<Listed>,
        retry: &retry::Retry,
        start_after: Option<&str>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => s.list(tx).await,
            Store::S3(s) => s.list(tx, retry, start_after).await,
        }
    }

    /// The object at `key`, `None` if there is none.
    pub async fn stat(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        match self {
            Store::Local(s) => s.stat(key).await,
            Store::S3(s) => s.stat(key).await,
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
            Store::S3(s) => Ok(RangeReader::S3(s.open_range(
                &entry.key,
                entry.etag.as_deref(),
                range,
            ))),
        }
    }
}

/// Sequential reads of one byte range into caller-owned buffers.
pub enum RangeReader {
    /// `pread` on a local file, on the blocking pool.
    Local(local::LocalRange),
    /// A ranged GET; a broken stream resumes with a new ranged GET.
    S3(s3::S3Range),
}

impl RangeReader {
    /// Reads into `buf[at..]`. The buffer is moved in and handed back,
    /// also on failure, so blocking reads need no copy and a retry reuses
    /// the same (paid-for) buffer. `Ok(0)` means the range is exhausted.
    pub async fn read(&mut self, buf: Vec<u8>, at: usize) -> (Vec<u8>, Result<usize, StoreError>) {
        match self {
            RangeReader::Local(r) => r.read(buf, at).await,
            RangeReader::S3(r) => r.read(buf, at).await,
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
            RangeReader::Local(_) => None,
            RangeReader::S3(r) => r.mtime(),
        }
    }

    /// The source's permission bits, if the read learned them (S3 reads
    /// carry the `mode` metadata headroom stores).
    pub fn mode(&self) -> Option<u32> {
        match self {
            RangeReader::Local(_) => None,
            RangeReader::S3(r) => r.mode(),
        }
    }
}
