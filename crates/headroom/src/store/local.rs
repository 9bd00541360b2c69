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
use std::os::unix::fs::FileExt;
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

    /// The path of `key`.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// See [`Store::list`](super::Store::list).
    pub async fn list(&self, tx: channel::Sender<Listed>) -> Result<(), StoreError> {
        if let Some(only) = &self.only {
            let entry = self.stat(only).await?.ok_or_else(|| {
                StoreError::permanent(self.path_of(only).display().to_string(), "no such file")
            })?;
            let bytes = entry.footprint();
            let _ = tx.send(Ok(entry), bytes).await;
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
        tokio::task::spawn_blocking(move || walk(&root, &rt, &tx))
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

    /// Opens `range` of `key` for reading.
    pub async fn open_range(&self, key: &str, range: Range<u64>) -> Result<LocalRange, StoreError> {
        let path = self.path_of(key);
        let file = blocking(move || {
            File::open(&path).map_err(|e| StoreError::io(format!("open {}", path.display()), &e))
        })
        .await?;
        Ok(LocalRange {
            file: Arc::new(file),
            pos: range.start,
            end: range.end,
        })
    }

    /// Starts writing `key`; see [`LocalWriter`].
    pub async fn create(&self, key: &str) -> Result<LocalWriter, StoreError> {
        let dest = self.path_of(key);
        blocking(move || LocalWriter::create(dest)).await
    }
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
fn walk(root: &Path, rt: &tokio::runtime::Handle, tx: &channel::Sender<Listed>) {
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .max_open(MAX_OPEN_DIRS)
        .min_depth(1);
    for item in walker {
        let listed = match item {
            Ok(e) if e.file_type().is_file() => match key_of(root, e.path()) {
                Ok(key) => match e.metadata() {
                    Ok(m) => Ok(Entry {
                        key,
                        size: m.len(),
                        mtime: m.modified().ok(),
                        etag: None,
                    }),
                    Err(err) => Err(ListError {
                        path: e.path().display().to_string(),
                        message: err.to_string(),
                    }),
                },
                Err(message) => Err(ListError {
                    path: e.path().display().to_string(),
                    message,
                }),
            },
            // Directories are implied by keys; symlinks are not followed
            // (a link to a directory would copy a tree twice or loop).
            Ok(e) => {
                if e.path_is_symlink() {
                    tracing::debug!(path = %e.path().display(), "skipping symlink");
                }
                continue;
            }
            Err(err) => Err(ListError {
                path: err
                    .path()
                    .map_or_else(|| root.display().to_string(), |p| p.display().to_string()),
                message: err
                    .io_error()
                    .map_or_else(|| err.to_string(), |io| io.to_string()),
            }),
        };
        let bytes = match &listed {
            Ok(e) => e.footprint(),
            Err(e) => (e.path.len() + e.message.len()) as u64,
        };
        if rt.block_on(tx.send(listed, bytes)).is_err() {
            return; // the consumer stopped
        }
    }
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
        let (file, pos) = (self.file.clone(), self.pos);
        let joined = tokio::task::spawn_blocking(move || {
            let r = file
                .read_at(&mut buf[at..at + want], pos)
                .map_err(|e| StoreError::io(format!("read at offset {pos}"), &e));
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
        fs::create_dir_all(dir).map_err(|e| StoreError::io(ctx(), &e))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let temp = dir.join(format!(
            ".{name}.{:08x}.headroom-partial",
            fastrand::u32(..)
        ));
        let file = File::create(&temp).map_err(|e| StoreError::io(ctx(), &e))?;
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

    /// Sets the modification time and renames the file into place.
    pub async fn finish(mut self, mtime: Option<SystemTime>) -> Result<(), StoreError> {
        let file = self.file.take().expect("writer not finished");
        let (temp, dest) = (self.temp.clone(), self.dest.clone());
        blocking(move || {
            let ctx = || format!("finish {}", dest.display());
            if let Some(t) = mtime {
                filetime::set_file_handle_times(
                    &file,
                    None,
                    Some(filetime::FileTime::from_system_time(t)),
                )
                .map_err(|e| StoreError::io(ctx(), &e))?;
            }
            drop(file);
            fs::rename(&temp, &dest).map_err(|e| StoreError::io(ctx(), &e))
        })
        .await
        .inspect_err(|_| {
            let _ = fs::remove_file(&self.temp);
        })?;
        self.temp = PathBuf::new();
        Ok(())
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}
