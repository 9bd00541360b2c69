//! A local directory tree (NFS and EFS included) as a store.
//!
//! Blocking filesystem calls run on tokio's blocking pool. Buffers are moved
//! into the blocking closure and back, never copied. Writes go to a hidden
//! temporary file beside the destination, renamed into place only once
//! complete: a crash or a failure never leaves a half-written object under
//! the real name.

use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use headroom_governor::channel;

use super::{Entry, ListError, Listed, StoreError};

/// Directory handles the walk keeps open; deeper trees buffer the rest of a
/// directory's entries (walkdir's documented behaviour), so this is set
/// high enough that real trees never do.
const MAX_OPEN_DIRS: usize = 128;

/// A local directory (or a single file: `only`).
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
    only: Option<String>,
}

impl LocalStore {
    /// A store rooted at directory `root`.
    pub fn dir(root: PathBuf) -> Self {
        LocalStore { root, only: None }
    }

    /// A source that is one file: its directory, listing only that file.
    pub fn single_file(path: &Path) -> Result<Self, StoreError> {
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            StoreError::permanent(path.display().to_string(), "file name is not valid UTF-8")
        })?;
        let root = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Ok(LocalStore {
            root,
            only: Some(name.to_string()),
        })
    }

    /// Whether this store is one file (a source named by its path).
    pub fn is_single(&self) -> bool {
        self.only.is_some()
    }

    /// The path of `key`.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// See [`Store::list`](super::Store::list).
    pub async fn list(
        &self,
        tx: channel::Sender<Listed>,
        range: Option<&super::KeyRange>,
    ) -> Result<(), StoreError> {
        if let Some(only) = &self.only {
            let entry = self.stat(only).await?.ok_or_else(|| {
                StoreError::permanent(self.path_of(only).display().to_string(), "no such file")
            })?;
            if range.is_none_or(|r| r.contains(&entry.key)) {
                let _ = tx.send(Ok(entry)).await;
            }
            return Ok(());
        }
        let root = self.root.clone();
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::permanent(
                    root.display().to_string(),
                    "not a directory",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::permanent(
                    root.display().to_string(),
                    "no such file or directory",
                ));
            }
            Err(e) => return Err(StoreError::io(root.display().to_string(), &e)),
        }
        let rt = tokio::runtime::Handle::current();
        let range = range.cloned();
        tokio::task::spawn_blocking(move || walk(&root, &rt, &tx, range.as_ref()))
            .await
            .map_err(|e| StoreError::permanent("directory walk", e))?;
        Ok(())
    }

    /// See [`Store::stat`](super::Store::stat).
    pub async fn stat(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let path = self.path_of(key);
        let key = key.to_string();
        blocking(move || match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(Entry {
                key,
                size: m.len(),
                mtime: m.modified().ok(),
                etag: None,
                mode: Some(m.permissions().mode() & 0o777),
                ..Entry::default()
            })),
            Ok(m) if m.is_dir() => Err(StoreError::permanent(
                path.display().to_string(),
                "is a directory",
            )),
            Ok(_) => Err(StoreError::permanent(
                path.display().to_string(),
                "is not a regular file",
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(path.display().to_string(), &e)),
        })
        .await
    }

    /// Opens `range` of `entry`'s file for reading; the last read of the
    /// range checks that the file still has the listed size and mtime.
    pub async fn open_range(
        &self,
        entry: &Entry,
        range: Range<u64>,
    ) -> Result<LocalRange, StoreError> {
        let path = self.path_of(&entry.key);
        let shown = path.display().to_string();
        let file = blocking(move || {
            File::open(&path).map_err(|e| StoreError::io(format!("open {}", path.display()), &e))
        })
        .await?;
        Ok(LocalRange {
            file: Arc::new(file),
            pos: range.start,
            end: range.end,
            listed: (entry.size, entry.mtime),
            path: shown,
        })
    }

    /// Deletes the files at `keys` (never a directory, never through a
    /// symlink: a symlink is removed itself). A key already gone is
    /// [`Deleted::Vanished`](super::Deleted::Vanished). A directory left
    /// empty is removed too, and its parents left empty, up to the root
    /// (which stays): in a store, directories are implied by the files
    /// below them, as with prefixes in a bucket.
    pub async fn delete(&self, keys: &[String]) -> Vec<super::Deleted> {
        let paths: Vec<PathBuf> = keys.iter().map(|k| self.path_of(k)).collect();
        let root = self.root.clone();
        let done = blocking(move || {
            Ok(paths
                .iter()
                .map(|p| match fs::remove_file(p) {
                    Ok(()) => {
                        remove_empty_parents(&root, p);
                        super::Deleted::Deleted
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => super::Deleted::Vanished,
                    Err(e) => super::Deleted::Failed(e.to_string()),
                })
                .collect())
        })
        .await;
        done.unwrap_or_else(|e| {
            keys.iter()
                .map(|_| super::Deleted::Failed(e.to_string()))
                .collect()
        })
    }

    /// Starts writing `key`; see [`LocalWriter`]. A key that would leave
    /// the destination directory or name no file (`..`, `.`, empty
    /// segments, NUL, a leading `/`) is refused: keys come from a remote
    /// listing and are not trusted.
    pub async fn create(&self, key: &str) -> Result<LocalWriter, StoreError> {
        let dest = self.path_of(key);
        if let Err(why) = safe_key(key) {
            return Err(StoreError::permanent(
                format!("{} (key {})", dest.display(), crate::telemetry::escape(key)),
                why,
            ));
        }
        blocking(move || LocalWriter::create(dest)).await
    }
}

/// Whether `key` names a file strictly below a directory.
fn safe_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() || key.starts_with('/') || key.contains('\0') {
        return Err("not a relative file name (empty, absolute or with NUL)");
    }
    if key
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("has an empty, `.` or `..` segment: it would not stay below the destination");
    }
    Ok(())
}

/// Whether `name` is one of headroom's own temporary files (current and
/// earlier naming): never a source, never taken for data.
pub fn is_partial_file(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    (name.starts_with(b".headroom-") && name.ends_with(b".partial"))
        || name.ends_with(b".headroom-partial")
}

/// Runs a blocking filesystem closure on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::permanent("blocking file operation", e))?
}

/// The walk, on a blocking thread; `send` blocks while the channel is full,
/// which is what pauses the walk when transfers are saturated.
///
/// With a `range`, each directory is sorted so that the walk yields keys
/// in S3's order (a directory `d` sorts as `d/`: `d-x` comes before
/// `d/x`), subtrees that cannot hold a key of the range are not entered,
/// and the first key past its end ends the walk.
fn walk(
    root: &Path,
    rt: &tokio::runtime::Handle,
    tx: &channel::Sender<Listed>,
    range: Option<&super::KeyRange>,
) {
    let mut walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .max_open(MAX_OPEN_DIRS)
        .min_depth(1);
    if range.is_some() {
        walker = walker.sort_by(|a, b| sort_name(a).cmp(&sort_name(b)));
    }
    let in_range = |e: &walkdir::DirEntry| {
        let Some(range) = range else { return true };
        match key_of(root, e.path()) {
            Ok(mut key) if e.file_type().is_dir() => {
                key.push('/');
                range.may_hold_prefix(&key)
            }
            Ok(key) => range.contains(&key) || range.is_past(&key),
            // Reported by the walk below.
            Err(_) => true,
        }
    };
    for item in walker.into_iter().filter_entry(in_range) {
        if let (Some(range), Ok(e)) = (range, &item)
            && let Ok(key) = key_of(root, e.path())
            && range.is_past(&key)
        {
            return;
        }
        let listed = match item {
            // An interrupted earlier run's temporary file is not data.
            Ok(e) if e.file_type().is_file() && is_partial_file(e.file_name()) => {
                tracing::debug!(path = %e.path().display(), "skipping a partial file");
                continue;
            }
            Ok(e) if e.file_type().is_file() => match key_of(root, e.path()) {
                Ok(key) => match e.metadata() {
                    Ok(m) => Ok(Entry {
                        key,
                        size: m.len(),
                        mtime: m.modified().ok(),
                        etag: None,
                        mode: Some(m.permissions().mode() & 0o777),
                        ..Entry::default()
                    }),
                    Err(err) => Err(ListError {
                        path: e.path().display().to_string(),
                        message: err.to_string(),
                        passed_over: false,
                    }),
                },
                Err(message) => Err(ListError {
                    path: e.path().display().to_string(),
                    message,
                    passed_over: false,
                }),
            },
            // Directories are implied by keys.
            Ok(e) if e.file_type().is_dir() => continue,
            // Symlinks are not followed (a link to a directory would copy
            // a tree twice or loop) and special files hold no data to
            // copy: both are counted and named, not silently dropped.
            Ok(e) => Err(ListError {
                path: e.path().display().to_string(),
                message: if e.path_is_symlink() {
                    "a symlink (not followed)".to_string()
                } else {
                    "a special file (socket, FIFO or device)".to_string()
                },
                passed_over: true,
            }),
            Err(err) => Err(ListError {
                path: err
                    .path()
                    .map_or_else(|| root.display().to_string(), |p| p.display().to_string()),
                message: err
                    .io_error()
                    .map_or_else(|| err.to_string(), |io| io.to_string()),
                passed_over: false,
            }),
        };
        if rt.block_on(tx.send(listed)).is_err() {
            return; // the consumer stopped
        }
    }
}

/// A directory entry's name as it sorts among keys: a directory's with the
/// `/` its keys carry after it.
fn sort_name(e: &walkdir::DirEntry) -> Vec<u8> {
    let mut name = e.file_name().as_encoded_bytes().to_vec();
    if e.file_type().is_dir() {
        name.push(b'/');
    }
    name
}

/// `/`-separated UTF-8 key of `path` below `root`.
fn key_of(root: &Path, path: &Path) -> Result<String, String> {
    let rel = path.strip_prefix(root).map_err(|e| e.to_string())?;
    let mut key = String::new();
    for part in rel.components() {
        let s = part.as_os_str().to_str().ok_or_else(|| {
            "file name is not valid UTF-8 and cannot be an object key".to_string()
        })?;
        if !key.is_empty() {
            key.push('/');
        }
        key.push_str(s);
    }
    Ok(key)
}

/// Sequential `pread`s over one byte range of a file.
pub struct LocalRange {
    file: Arc<File>,
    pos: u64,
    end: u64,
    /// Size and mtime the listing saw, checked when the range is done.
    listed: (u64, Option<SystemTime>),
    path: String,
}

/// Whether an open file still is what the listing saw.
fn check_unchanged(
    file: &File,
    listed: (u64, Option<SystemTime>),
    path: &str,
) -> Result<fs::Metadata, StoreError> {
    let m = file
        .metadata()
        .map_err(|e| StoreError::io(format!("stat {path}"), &e))?;
    let (size, mtime) = (m.len(), m.modified().ok());
    if size != listed.0 || (listed.1.is_some() && mtime != listed.1) {
        return Err(StoreError::permanent(
            path,
            format!(
                "source changed during the copy: listed with {} bytes{}, now {size} bytes{}",
                listed.0,
                if listed.1.is_some() {
                    " and its mtime"
                } else {
                    ""
                },
                if mtime != listed.1 {
                    ", modified since"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(m)
}

impl LocalRange {
    /// Reads into `buf[at..]`; see [`RangeReader::read`](super::RangeReader::read).
    pub async fn read(
        &mut self,
        mut buf: Vec<u8>,
        at: usize,
    ) -> (Vec<u8>, Result<usize, StoreError>) {
        let want = ((buf.len() - at) as u64).min(self.end - self.pos) as usize;
        if want == 0 {
            return (buf, Ok(0));
        }
        let (file, pos, end, listed) = (self.file.clone(), self.pos, self.end, self.listed);
        let path = self.path.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let r = file
                .read_at(&mut buf[at..at + want], pos)
                .map_err(|e| StoreError::io(format!("read {path} at offset {pos}"), &e))
                .and_then(|n| {
                    // The range is done: was it read from the listed file?
                    if pos + n as u64 >= end {
                        check_unchanged(&file, listed, &path)?;
                    }
                    Ok(n)
                });
            (buf, r)
        })
        .await;
        match joined {
            Ok((buf, r)) => {
                if let Ok(n) = r {
                    self.pos += n as u64;
                }
                (buf, r)
            }
            Err(e) => (Vec::new(), Err(StoreError::permanent("blocking read", e))),
        }
    }
}

/// A file being written under a temporary name; [`finish`](Self::finish)
/// renames it into place. Dropped unfinished, the temporary file is removed.
pub struct LocalWriter {
    file: Option<Arc<File>>,
    temp: PathBuf,
    dest: PathBuf,
}

impl LocalWriter {
    fn create(dest: PathBuf) -> Result<Self, StoreError> {
        let ctx = || format!("create {}", dest.display());
        let dir = dest
            .parent()
            .ok_or_else(|| StoreError::permanent(ctx(), "no parent directory"))?;
        // A fixed-length name (a long destination name plus a suffix could
        // exceed NAME_MAX), readable by the owner only until it is complete
        // and given its final mode.
        let temp = dir.join(format!(".headroom-{:016x}.partial", fastrand::u64(..)));
        let open = || {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)
        };
        // The directory usually exists (a tree's files share a few): make
        // it only when the file cannot be created without it, which saves
        // a mkdir and a stat per file.
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(|e| StoreError::io(ctx(), &e))?;
                open()
            }
            other => other,
        }
        .map_err(|e| StoreError::io(ctx(), &e))?;
        Ok(LocalWriter {
            file: Some(Arc::new(file)),
            temp,
            dest,
        })
    }

    /// Writes `buf[..len]` at `offset`; hands the buffer back for reuse.
    pub async fn write_at(
        &mut self,
        buf: Vec<u8>,
        len: usize,
        offset: u64,
    ) -> (Vec<u8>, Result<(), StoreError>) {
        let file = self.file.clone().expect("writer not finished");
        let dest = self.dest.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let r = file
                .write_all_at(&buf[..len], offset)
                .map_err(|e| StoreError::io(format!("write {}", dest.display()), &e));
            (buf, r)
        })
        .await;
        joined.unwrap_or_else(|e| (Vec::new(), Err(StoreError::permanent("blocking write", e))))
    }

    /// Sets the permission bits (`mode`, the source's, else what the umask
    /// gives a new file) and the modification time, and renames the file
    /// into place.
    pub async fn finish(
        self,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<(), StoreError> {
        blocking(move || self.finish_now(mtime, mode)).await
    }

    /// [`finish`](Self::finish), on the calling (blocking) thread.
    fn finish_now(
        mut self,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<(), StoreError> {
        let file = self.file.take().expect("writer not finished");
        let dest = &self.dest;
        let ctx = || format!("finish {}", dest.display());
        let mode = mode.unwrap_or_else(|| 0o666 & !umask()) & 0o777;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| StoreError::io(ctx(), &e))?;
        if let Some(t) = mtime {
            filetime::set_file_handle_times(
                &file,
                None,
                Some(filetime::FileTime::from_system_time(t)),
            )
            .map_err(|e| StoreError::io(ctx(), &e))?;
        }
        drop(file);
        // Dropped on failure, the writer removes the temporary file.
        fs::rename(&self.temp, dest).map_err(|e| StoreError::io(ctx(), &e))?;
        self.temp = PathBuf::new();
        Ok(())
    }
}

/// Bytes one `copy_file_range` call is asked for: between calls a kernel
/// copy counts its progress and looks for a cancel.
const KERNEL_STEP: u64 = 64 << 20;

/// The buffer of a kernel copy's fallback (a filesystem pair that cannot
/// `copy_file_range`): it fits in the object overhead a transfer is
/// charged besides its data buffers, so a kernel copy reserves no buffer.
pub const FALLBACK_BUFFER: usize = 64 << 10;

/// Whether reflinks (`FICLONE`) are worth trying: cleared for the process
/// at the first filesystem that refuses one, so a tree on ext4 pays for one
/// failed `ioctl`, not one per file.
static REFLINKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

impl LocalStore {
    /// Copies `entry`'s file into `dst` under the same key without its
    /// bytes entering user space: a reflink where the filesystem shares
    /// blocks (`FICLONE`: btrfs, XFS), else `copy_file_range` (the kernel
    /// copies, or a network filesystem copies server-side), else, between
    /// filesystems that cannot (older kernels across devices, special
    /// filesystems), `pread`/`pwrite` through one 64 KiB buffer. The new
    /// file appears whole, with the source's mode and mtime, or not at
    /// all; a source that changed size or mtime during the copy fails it.
    /// `copied` counts bytes as they go (taken back on failure by the
    /// caller); `cancel` is looked at between steps. With
    /// `unless_current`, a destination file of the listed size and mtime
    /// is left alone (`Ok(false)`).
    pub async fn copy_into(
        &self,
        entry: &Entry,
        dst: &LocalStore,
        copied: Arc<std::sync::atomic::AtomicU64>,
        cancel: tokio::sync::watch::Receiver<bool>,
        unless_current: bool,
    ) -> Result<bool, StoreError> {
        let (this, dst, entry) = (self.clone(), dst.clone(), entry.clone());
        blocking(move || this.copy_into_now(&entry, &dst, &copied, &cancel, unless_current)).await
    }

    /// [`copy_into`](Self::copy_into) on this thread, which blocks: for a
    /// caller already on a blocking thread.
    pub fn copy_into_now(
        &self,
        entry: &Entry,
        dst: &LocalStore,
        copied: &std::sync::atomic::AtomicU64,
        cancel: &tokio::sync::watch::Receiver<bool>,
        unless_current: bool,
    ) -> Result<bool, StoreError> {
        let src = self.path_of(&entry.key);
        let dest = dst.path_of(&entry.key);
        if let Err(why) = safe_key(&entry.key) {
            return Err(StoreError::permanent(
                format!(
                    "{} (key {})",
                    dest.display(),
                    crate::telemetry::escape(&entry.key)
                ),
                why,
            ));
        }
        let listed = (entry.size, entry.mtime);
        // What `copy` would find up to date, found in the same call (one
        // hand-off to the blocking pool per file, not two).
        if unless_current
            && let Ok(m) = std::fs::metadata(&dest)
            && m.is_file()
            && m.len() == listed.0
            && let (Ok(have), Some(want)) = (m.modified(), listed.1)
            && super::same_mtime(have, want)
        {
            return Ok(false);
        }
        let shown = src.display().to_string();
        let file = File::open(&src).map_err(|e| StoreError::io(format!("open {shown}"), &e))?;
        let meta = check_unchanged(&file, listed, &shown)?;
        let size = meta.len();
        let writer = LocalWriter::create(dest)?;
        let mut done = 0u64;
        let r = kernel_copy(&file, &writer, &shown, size, &mut done, copied, cancel);
        if r.is_err() {
            // Progress counted for a copy that did not happen.
            copied.fetch_sub(done, std::sync::atomic::Ordering::Relaxed);
        }
        r?;
        // Read to its listed size from the file the listing saw.
        check_unchanged(&file, listed, &shown)?;
        let mode = entry.mode.or(Some(meta.permissions().mode() & 0o777));
        writer.finish_now(meta.modified().ok(), mode).map(|()| true)
    }
}

/// Removes the directories above `file` (below `root`) that are empty,
/// from the nearest up; the first that is not (or cannot be removed) ends
/// it.
fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || fs::remove_dir(d).is_err() {
            return;
        }
        dir = d.parent();
    }
}

/// The copy of [`LocalStore::copy_into`] into `writer`'s temporary file.
fn kernel_copy(
    file: &File,
    writer: &LocalWriter,
    shown: &str,
    size: u64,
    done: &mut u64,
    copied: &std::sync::atomic::AtomicU64,
    cancel: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let out = writer.file.as_deref().expect("writer not finished");
    let ctx = || format!("copy {shown} to {}", writer.dest.display());
    let count = |n: u64, done: &mut u64| {
        *done += n;
        copied.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    };
    let done = &mut *done;
    if size > 0 && REFLINKS.load(std::sync::atomic::Ordering::Relaxed) {
        match rustix::fs::ioctl_ficlone(out, file) {
            Ok(()) => count(size, done),
            Err(_) => REFLINKS.store(false, std::sync::atomic::Ordering::Relaxed),
        }
    }
    let mut kernel = true;
    while *done < size {
        if *cancel.borrow() {
            return Err(StoreError::permanent(
                shown,
                "interrupted before it was complete",
            ));
        }
        let want = (size - *done).min(KERNEL_STEP);
        let n = if kernel {
            let (mut at_in, mut at_out) = (*done, *done);
            match rustix::fs::copy_file_range(
                file,
                Some(&mut at_in),
                out,
                Some(&mut at_out),
                want as usize,
            ) {
                Ok(n) => n as u64,
                // Not between these filesystems: copy through user
                // space instead, from where the kernel stopped.
                Err(
                    rustix::io::Errno::XDEV
                    | rustix::io::Errno::NOSYS
                    | rustix::io::Errno::OPNOTSUPP
                    | rustix::io::Errno::INVAL,
                ) => {
                    kernel = false;
                    continue;
                }
                Err(e) => return Err(StoreError::io(ctx(), &e.into())),
            }
        } else {
            let mut buf = vec![0u8; (want as usize).min(FALLBACK_BUFFER)];
            let at = *done;
            let n = file
                .read_at(&mut buf, at)
                .map_err(|e| StoreError::io(format!("read {shown} at offset {at}"), &e))?;
            out.write_all_at(&buf[..n], at)
                .map_err(|e| StoreError::io(ctx(), &e))?;
            n as u64
        };
        if n == 0 {
            return Err(StoreError::permanent(
                shown,
                format!("source changed during the copy: listed {size} bytes, read {done}"),
            ));
        }
        count(n, done);
    }
    Ok(())
}

/// The process's umask, from /proc (reading it with umask(2) would change
/// it for every thread for a moment); 022 where /proc does not say.
fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyRange;

    /// The keys a walk of `root` lists within `range`, in the order sent.
    async fn keys(root: &Path, range: Option<KeyRange>) -> Vec<String> {
        let (tx, mut rx) = channel::bounded::<Listed>(1 << 20, 1024);
        let store = LocalStore::dir(root.to_path_buf());
        let lister = tokio::spawn(async move { store.list(tx, range.as_ref()).await });
        let mut out = Vec::new();
        while let Some(l) = rx.recv().await {
            out.push(l.expect("readable").key);
        }
        lister.await.unwrap().unwrap();
        out
    }

    #[tokio::test]
    async fn a_ranged_walk_lists_in_s3_key_order_and_only_the_range() {
        let dir = tempfile::tempdir().unwrap();
        // `d-x` sorts before `d/...` ('-' < '/'), and `d0` after it.
        let names = ["b", "d/a", "d/z/1", "d-x", "d0", "a/b/c", "e/f"];
        for n in names {
            let p = dir.path().join(n);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, n).unwrap();
        }
        let mut sorted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        sorted.sort();
        assert_eq!(keys(dir.path(), Some(KeyRange::default())).await, sorted);
        let range = |a: Option<&str>, t: Option<&str>| KeyRange {
            after: a.map(Into::into),
            through: t.map(Into::into),
        };
        for (a, t) in [
            (Some("b"), Some("d/z/1")),
            (Some("a/b/c"), None),
            (None, Some("d-x")),
            (Some("d/a"), Some("d0")),
            (Some("d"), Some("d/")),
            (Some("e/f"), None),
        ] {
            let r = range(a, t);
            let want: Vec<String> = sorted.iter().filter(|k| r.contains(k)).cloned().collect();
            assert_eq!(keys(dir.path(), Some(r.clone())).await, want, "{r:?}");
        }
        // Without a range, every key (in the filesystem's order).
        let mut all = keys(dir.path(), None).await;
        all.sort();
        assert_eq!(all, sorted);
    }

    /// A kernel copy, within one filesystem (`copy_file_range`) and from
    /// tmpfs to the build directory's filesystem (where the kernel refuses
    /// across filesystem types and the 64 KiB fallback copies): the same
    /// bytes, mode and mtime, progress counted, no partial file left.
    #[tokio::test]
    async fn kernel_copies_keep_bytes_mode_and_mtime_within_and_across_filesystems() {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        // On the disk the build is on (tmpfs is the other filesystem).
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
        fs::create_dir_all(&target).unwrap();
        let here = tempfile::tempdir_in(&target).unwrap();
        let shm = std::path::Path::new("/dev/shm");
        let elsewhere = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let data: Vec<u8> = (0..(3 << 20) + 12_345u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for (src_root, dst_root) in [
            (here.path().join("a"), here.path().join("b")),
            (elsewhere.path().join("a"), here.path().join("c")),
        ] {
            fs::create_dir_all(src_root.join("d")).unwrap();
            let file = src_root.join("d/f.bin");
            fs::write(&file, &data).unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
            let mtime = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
            filetime::set_file_mtime(&file, filetime::FileTime::from_system_time(mtime)).unwrap();
            let entry = LocalStore::dir(src_root.clone())
                .stat("d/f.bin")
                .await
                .unwrap()
                .unwrap();
            let copied = Arc::new(AtomicU64::new(0));
            let (_keep, cancel) = tokio::sync::watch::channel(false);
            let (from, to) = (
                LocalStore::dir(src_root.clone()),
                LocalStore::dir(dst_root.clone()),
            );
            let copy = |cancel| from.copy_into(&entry, &to, copied.clone(), cancel, true);
            assert!(copy(cancel.clone()).await.unwrap(), "copied");
            let out = dst_root.join("d/f.bin");
            let first = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&out).unwrap());
            assert!(
                !copy(cancel).await.unwrap(),
                "the same size and mtime: left alone"
            );
            assert_eq!(
                std::os::unix::fs::MetadataExt::ino(&fs::metadata(&out).unwrap()),
                first,
                "not replaced"
            );
            assert!(fs::read(&out).unwrap() == data, "{}", out.display());
            let meta = fs::metadata(&out).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o640);
            assert_eq!(meta.modified().unwrap(), mtime);
            assert_eq!(copied.load(Ordering::Relaxed), data.len() as u64);
            let names: Vec<_> = fs::read_dir(dst_root.join("d")).unwrap().collect();
            assert_eq!(names.len(), 1, "no partial file left");
        }
    }

    /// A source that changed since it was listed is not copied, and leaves
    /// nothing behind.
    #[tokio::test]
    async fn a_kernel_copy_of_a_changed_source_fails_whole() {
        use std::sync::atomic::AtomicU64;
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("s"), dir.path().join("t"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), b"0123456789").unwrap();
        let entry = LocalStore::dir(src.clone())
            .stat("f")
            .await
            .unwrap()
            .unwrap();
        fs::write(src.join("f"), b"01234").unwrap();
        let (_keep, cancel) = tokio::sync::watch::channel(false);
        let e = LocalStore::dir(src)
            .copy_into(
                &entry,
                &LocalStore::dir(dst.clone()),
                Arc::new(AtomicU64::new(0)),
                cancel,
                true,
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("source changed"), "{e}");
        assert!(!dst.join("f").exists());
    }
}
