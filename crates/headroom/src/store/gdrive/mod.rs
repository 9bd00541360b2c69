//! Google Drive (API v3) as a source store.
//!
//! Locations (see [`DriveLocation`]): `gdrive://root/PATH` (the
//! authorised user's My Drive), `gdrive://shared/DRIVE/PATH` (a shared
//! drive, by id or name), `gdrive://id/ID/PATH` (a folder or file by id)
//! and `gdrive://shared-with-me/PATH`.
//!
//! * **Listing** is a depth-first walk of `files.list` pages (`q` on
//!   parents, trashed files excluded, the fields a copy needs, 1,000 items
//!   a page, `orderBy=name,createdTime`). Files go to the listing channel
//!   as soon as their page is read; what the walk holds is, per level of
//!   the tree, the subfolders of one page and that page's token: memory
//!   depends on the depth and the page size, never on the number of files.
//! * **Binary files** are read with `alt=media` and HTTP `Range`, so a
//!   part is read (and re-read after a failure) alone; each is checked
//!   against its `md5Checksum` (the entry's ETag).
//! * **Google Docs, Sheets, Slides and Drawings** are exported through
//!   their `exportLinks` (which, unlike `files.export`, have no 10 MB
//!   limit). An export has no size, no MD5 and no Range: its entry says
//!   [`size_unknown`](crate::store::Entry::size_unknown), and the transfer
//!   streams it into an upload of unknown length, restarting from byte 0
//!   when it fails.
//! * **Names** become keys as [`names`] says.
//! * Every request goes through one [`api::Pacer`] per store.

pub mod api;
pub mod auth;
pub mod names;

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use headroom_governor::channel;
use serde::Deserialize;

use super::retry::{Retry, with_retries};
use super::{Entry, ListError, Listed, StoreError};
use api::{BodyStream, DriveApi};
pub use auth::CredentialsConfig;

/// The API's base URL unless told otherwise.
pub const GOOGLE_API: &str = "https://www.googleapis.com";

/// Items per `files.list` page (the API's maximum).
pub const PAGE_SIZE: u32 = 1000;

/// Where in Drive a location starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriveRoot {
    /// The authorised user's My Drive.
    MyDrive,
    /// A shared drive, by id or name.
    Shared(String),
    /// A folder or file by id.
    Id(String),
    /// What others shared with the user.
    SharedWithMe,
}

/// A `gdrive://` location: a root and a path of Drive names below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveLocation {
    /// Where it starts.
    pub root: DriveRoot,
    /// Names of the folders (and perhaps a file, last) below the root.
    pub path: Vec<String>,
}

impl DriveLocation {
    /// Parses what follows `gdrive://`.
    pub fn parse(rest: &str) -> Result<DriveLocation, String> {
        let mut parts = rest.split('/').filter(|p| !p.is_empty());
        let form = parts.next().unwrap_or_default();
        let root = match form {
            "root" => DriveRoot::MyDrive,
            "shared-with-me" => DriveRoot::SharedWithMe,
            "shared" | "id" => {
                let Some(name) = parts.next() else {
                    return Err(format!(
                        "gdrive://{form}/ needs {} after it",
                        if form == "id" {
                            "a folder or file id"
                        } else {
                            "a shared drive's id or name"
                        }
                    ));
                };
                if form == "id" {
                    DriveRoot::Id(name.to_string())
                } else {
                    DriveRoot::Shared(name.to_string())
                }
            }
            _ => {
                return Err(format!(
                    "gdrive://{form}: a Drive location starts with root/ (My Drive), shared/DRIVE/, id/ID/ or shared-with-me/"
                ));
            }
        };
        Ok(DriveLocation {
            root,
            path: parts.map(str::to_string).collect(),
        })
    }
}

impl fmt::Display for DriveLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            DriveRoot::MyDrive => write!(f, "gdrive://root")?,
            DriveRoot::Shared(d) => write!(f, "gdrive://shared/{d}")?,
            DriveRoot::Id(id) => write!(f, "gdrive://id/{id}")?,
            DriveRoot::SharedWithMe => write!(f, "gdrive://shared-with-me")?,
        }
        for p in &self.path {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

/// How Drive is reached and what is made of Google's own files.
#[derive(Clone, Debug, Default)]
pub struct DriveConfig {
    /// `--gdrive-endpoint`, else `HEADROOM_GDRIVE_ENDPOINT`, else Google's.
    pub endpoint: Option<String>,
    /// Where the credentials come from.
    pub credentials: CredentialsConfig,
    /// Export formats by preference, as extensions (empty:
    /// [`names::DEFAULT_EXPORTS`]).
    pub exports: Vec<String>,
    /// Pass shortcuts over instead of copying what they point to.
    pub skip_shortcuts: bool,
}

impl DriveConfig {
    /// The API base URL.
    pub fn endpoint(&self) -> String {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("HEADROOM_GDRIVE_ENDPOINT").ok())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| GOOGLE_API.to_string())
    }

    fn exports(&self) -> Vec<String> {
        if self.exports.is_empty() {
            names::DEFAULT_EXPORTS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            self.exports.clone()
        }
    }
}

/// The metadata fields of a file that a copy reads.
const FILE_FIELDS: &str = "id,name,mimeType,size,md5Checksum,modifiedTime,createdTime,driveId,shortcutDetails(targetId,targetMimeType),exportLinks";

/// One `files` resource, as far as headroom reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    mime_type: String,
    /// int64 in a JSON string, as Google sends it.
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    md5_checksum: Option<String>,
    #[serde(default)]
    modified_time: Option<String>,
    #[serde(default)]
    drive_id: Option<String>,
    #[serde(default)]
    shortcut_details: Option<ShortcutDetails>,
    #[serde(default)]
    export_links: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShortcutDetails {
    target_id: String,
    #[serde(default)]
    target_mime_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileList {
    #[serde(default)]
    next_page_token: Option<String>,
    #[serde(default)]
    files: Vec<File>,
}

#[derive(Debug, Deserialize)]
struct Drive {
    id: String,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DriveList {
    #[serde(default)]
    next_page_token: Option<String>,
    #[serde(default)]
    drives: Vec<Drive>,
}

/// Quotes `s` for a `q` string literal.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn parse_time(t: Option<&str>) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(t?)
        .ok()
        .map(|d| SystemTime::from(d.with_timezone(&chrono::Utc)))
}

/// Where a walk starts.
#[derive(Clone, Debug)]
enum Start {
    /// A folder by id (`root` for My Drive, a shared drive's id for its root).
    Folder(String),
    /// The shared-with-me collection.
    SharedWithMe,
    /// One file: a copy of it alone.
    File(Entry),
}

#[derive(Debug)]
struct Inner {
    api: DriveApi,
    shown: String,
    start: Start,
    /// The shared drive every request is about, if any.
    drive_id: Option<String>,
    exports: Vec<String>,
    skip_shortcuts: bool,
}

/// A Drive folder tree (or one file) as a source.
#[derive(Clone, Debug)]
pub struct DriveStore {
    inner: Arc<Inner>,
}

/// One level of the walk: a folder being paged through.
struct Level {
    /// The folder's id; `None` for shared-with-me.
    id: Option<String>,
    /// Key prefix of its items (`""` or ending in `/`).
    prefix: String,
    /// The next page's token; `None` before the first page and after the last.
    token: Option<String>,
    started: bool,
    /// Subfolders of the last page not yet walked: id and key prefix.
    pending: VecDeque<(String, String)>,
    dedupe: names::Dedupe,
}

impl Level {
    fn new(id: Option<String>, prefix: String) -> Level {
        Level {
            id,
            prefix,
            token: None,
            started: false,
            pending: VecDeque::new(),
            dedupe: names::Dedupe::default(),
        }
    }
}

/// What one listed item becomes.
enum Item {
    Folder(String),
    Entry(Entry),
    Skip(String),
}

impl DriveStore {
    /// Opens `loc` as a source: resolves its root and path (so a missing
    /// folder, a wrong id or refused credentials fail here, once).
    pub async fn open(loc: &DriveLocation, config: &DriveConfig) -> Result<DriveStore, StoreError> {
        names::check_exports(&config.exports)
            .map_err(|e| StoreError::permanent("--gdrive-export", e))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| StoreError::permanent("Google Drive HTTP client", e))?;
        let tokens = auth::TokenSource::from_config(&config.credentials, http.clone())?;
        let api = DriveApi::new(http, &config.endpoint(), tokens);
        let mut inner = Inner {
            api,
            shown: loc.to_string(),
            start: Start::SharedWithMe,
            drive_id: None,
            exports: config.exports(),
            skip_shortcuts: config.skip_shortcuts,
        };
        let retry = Retry::default();
        let mut current = match &loc.root {
            DriveRoot::MyDrive => Start::Folder("root".into()),
            DriveRoot::SharedWithMe => Start::SharedWithMe,
            DriveRoot::Shared(d) => {
                let id = with_retries(&retry, || inner.shared_drive(d)).await?;
                inner.drive_id = Some(id.clone());
                Start::Folder(id)
            }
            DriveRoot::Id(id) => {
                let shown = format!("gdrive://id/{id}");
                let f = with_retries(&retry, || inner.file(id, &shown)).await?;
                inner.drive_id = f.drive_id.clone();
                inner.start_of(f, &shown).await?
            }
        };
        let mut shown = match &loc.root {
            DriveRoot::Id(id) => format!("gdrive://id/{id}"),
            _ => DriveLocation {
                root: loc.root.clone(),
                path: vec![],
            }
            .to_string(),
        };
        for name in &loc.path {
            if let Start::File(_) = current {
                return Err(StoreError::permanent(
                    shown,
                    format!("is a file, not a folder: there is no {name:?} in it"),
                ));
            }
            let f = with_retries(&retry, || inner.child(&current, name, &shown)).await?;
            shown = format!("{shown}/{name}");
            current = inner.start_of(f, &shown).await?;
        }
        inner.start = current;
        Ok(DriveStore {
            inner: Arc::new(inner),
        })
    }

    /// `gdrive://.../key`.
    pub fn url_of(&self, key: &str) -> String {
        match &self.inner.start {
            Start::File(_) => self.inner.shown.clone(),
            _ => format!("{}/{key}", self.inner.shown.trim_end_matches('/')),
        }
    }

    /// How many requests were sent and how often Google pushed back.
    pub fn pacer_stats(&self) -> api::PacerStats {
        self.inner.api.pacer_stats()
    }

    /// Streams every file below the root into `tx` (see the module
    /// documentation); a page that fails is retried under `retry`, and a
    /// folder that cannot be listed is reported and passed.
    pub async fn list(&self, tx: channel::Sender<Listed>, retry: &Retry) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut stack = match &inner.start {
            Start::File(e) => {
                let _ = tx.send(Ok(e.clone())).await;
                return Ok(());
            }
            Start::Folder(id) => vec![Level::new(Some(id.clone()), String::new())],
            Start::SharedWithMe => vec![Level::new(None, String::new())],
        };
        while let Some(top) = stack.last_mut() {
            if let Some((id, prefix)) = top.pending.pop_front() {
                let looped = stack.iter().any(|l| l.id.as_deref() == Some(id.as_str()));
                if looped {
                    let e = ListError {
                        path: self.url_of(prefix.trim_end_matches('/')),
                        message: "a shortcut to a folder this walk copies already (one that contains it, or one beside such a folder): not followed".into(),
                        passed_over: true,
                    };
                    if tx.send(Err(e)).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                stack.push(Level::new(Some(id), prefix));
                continue;
            }
            if top.started && top.token.is_none() {
                stack.pop();
                continue;
            }
            let page = with_retries(retry, || {
                inner.page(top.id.as_deref(), top.token.as_deref())
            })
            .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    let e = ListError {
                        path: self.url_of(top.prefix.trim_end_matches('/')),
                        message: format!("cannot list this folder: {}", e.message),
                        passed_over: false,
                    };
                    stack.pop();
                    if tx.send(Err(e)).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            };
            top.started = true;
            top.token = page.next_page_token.filter(|t| !t.is_empty());
            for f in page.files {
                let name = f.name.clone();
                let id = f.id.clone();
                let item = inner.item(f, retry).await;
                let top = stack.last_mut().expect("the level paged");
                let listed = match item {
                    Item::Folder(target) => {
                        let seg = top.dedupe.name(&name, names::segment(&name), &id);
                        top.pending
                            .push_back((target, format!("{}{seg}/", top.prefix)));
                        continue;
                    }
                    Item::Entry(mut e) => {
                        let seg = top.dedupe.name(&name, std::mem::take(&mut e.key), &id);
                        e.key = format!("{}{seg}", top.prefix);
                        Ok(e)
                    }
                    Item::Skip(why) => Err(ListError {
                        path: self.url_of(&format!("{}{}", top.prefix, names::segment(&name))),
                        message: why,
                        passed_over: true,
                    }),
                };
                if tx.send(listed).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A lazily opened read of `range` of `entry` (an export: all of it).
    pub fn open_range(&self, entry: &Entry, range: Range<u64>) -> DriveRange {
        DriveRange {
            store: self.clone(),
            key: entry.key.clone(),
            handle: entry.handle.clone().unwrap_or_default(),
            export: entry.size_unknown,
            pos: range.start,
            end: if entry.size_unknown {
                u64::MAX
            } else {
                range.end
            },
            stream: None,
            pending: Bytes::new(),
        }
    }
}

impl Inner {
    fn list_query(&self) -> Vec<(&'static str, String)> {
        let mut q = vec![
            ("supportsAllDrives", "true".to_string()),
            ("includeItemsFromAllDrives", "true".to_string()),
        ];
        if let Some(d) = &self.drive_id {
            q.push(("corpora", "drive".into()));
            q.push(("driveId", d.clone()));
        }
        q
    }

    /// One page of a folder (or of shared-with-me).
    async fn page(
        &self,
        folder: Option<&str>,
        token: Option<&str>,
    ) -> Result<FileList, StoreError> {
        let q = match folder {
            Some(id) => format!("{} in parents and trashed = false", quoted(id)),
            None => "sharedWithMe = true and trashed = false".to_string(),
        };
        let mut query = self.list_query();
        query.push(("q", q));
        query.push(("pageSize", PAGE_SIZE.to_string()));
        query.push(("orderBy", "name,createdTime".into()));
        query.push(("fields", format!("nextPageToken,files({FILE_FIELDS})")));
        if let Some(t) = token {
            query.push(("pageToken", t.to_string()));
        }
        let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = self.api.url("/drive/v3/files", &pairs);
        let what = || format!("list {}", self.shown);
        self.api.json(&url, &what).await
    }

    /// A file's metadata by id.
    async fn file(&self, id: &str, shown: &str) -> Result<File, StoreError> {
        let url = self.api.url(
            &format!("/drive/v3/files/{}", urlencode(id)),
            &[("supportsAllDrives", "true"), ("fields", FILE_FIELDS)],
        );
        self.api.json(&url, &|| format!("look up {shown}")).await
    }

    /// A shared drive's id, from its id or its name.
    async fn shared_drive(&self, d: &str) -> Result<String, StoreError> {
        let shown = format!("gdrive://shared/{d}");
        let id_like = d
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if id_like {
            let url = self.api.url(
                &format!("/drive/v3/drives/{}", urlencode(d)),
                &[("fields", "id,name")],
            );
            match self
                .api
                .json::<Drive>(&url, &|| format!("look up {shown}"))
                .await
            {
                Ok(drive) => return Ok(drive.id),
                Err(e) if e.message.starts_with("404") => {}
                Err(e) => return Err(e),
            }
        }
        let mut token: Option<String> = None;
        let mut found: Vec<String> = Vec::new();
        loop {
            let q = format!("name = {}", quoted(d));
            let mut query = vec![
                ("q", q.as_str()),
                ("pageSize", "100"),
                ("fields", "nextPageToken,drives(id,name)"),
            ];
            if let Some(t) = &token {
                query.push(("pageToken", t));
            }
            let url = self.api.url("/drive/v3/drives", &query);
            let list: DriveList = self
                .api
                .json(&url, &|| format!("find the shared drive {d:?}"))
                .await?;
            found.extend(
                list.drives
                    .into_iter()
                    .filter(|x| x.name == d)
                    .map(|x| x.id),
            );
            // Ten are enough to say the name is ambiguous.
            found.truncate(10);
            match list.next_page_token {
                Some(t) if !t.is_empty() && found.len() < 10 => token = Some(t),
                _ => break,
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(StoreError::permanent(
                shown,
                format!(
                    "no shared drive with this id or name is visible to the credentials {}",
                    self.api.credentials()
                ),
            )),
            _ => Err(StoreError::permanent(
                shown,
                format!(
                    "several shared drives have this name; name one by id: {}",
                    found
                        .iter()
                        .map(|id| format!("gdrive://shared/{id}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// The item named `name` in `parent`; the error says when there is
    /// none, or more than one.
    async fn child(&self, parent: &Start, name: &str, shown: &str) -> Result<File, StoreError> {
        let q = match parent {
            Start::Folder(id) => format!(
                "{} in parents and name = {} and trashed = false",
                quoted(id),
                quoted(name)
            ),
            _ => format!(
                "sharedWithMe = true and name = {} and trashed = false",
                quoted(name)
            ),
        };
        let mut query = self.list_query();
        query.push(("q", q));
        query.push(("pageSize", "10".into()));
        query.push(("fields", format!("files({FILE_FIELDS})")));
        let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = self.api.url("/drive/v3/files", &pairs);
        let mut list: FileList = self
            .api
            .json(&url, &|| format!("look up {name:?} in {shown}"))
            .await?;
        match list.files.len() {
            1 => Ok(list.files.remove(0)),
            0 => Err(StoreError::permanent(
                format!("{shown}/{name}"),
                format!(
                    "no such file or folder (or it is not shared with the credentials {})",
                    self.api.credentials()
                ),
            )),
            _ => Err(StoreError::permanent(
                format!("{shown}/{name}"),
                format!(
                    "{} items have this name; name the one to copy by id: {}",
                    list.files.len(),
                    list.files
                        .iter()
                        .map(|f| format!("gdrive://id/{}", f.id))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Where a walk starts at `f`: its folder, or it alone (a shortcut is
    /// its target).
    async fn start_of(&self, f: File, shown: &str) -> Result<Start, StoreError> {
        if f.mime_type == names::FOLDER {
            return Ok(Start::Folder(f.id));
        }
        let name = f.name.clone();
        match self.item(f, &Retry::default()).await {
            Item::Folder(id) => Ok(Start::Folder(id)),
            Item::Entry(e) => Ok(Start::File(e)),
            Item::Skip(why) => Err(StoreError::permanent(
                shown.to_string(),
                format!("{name:?} cannot be copied: {why}"),
            )),
        }
    }

    /// What a listed file is: a folder to walk, an entry (its key is the
    /// mapped name alone), or something passed over and why.
    async fn item(&self, f: File, retry: &Retry) -> Item {
        if f.mime_type == names::FOLDER {
            return Item::Folder(f.id);
        }
        if f.mime_type == names::SHORTCUT {
            if self.skip_shortcuts {
                return Item::Skip("a shortcut: passed over (--gdrive-skip-shortcuts)".into());
            }
            let Some(target) = f.shortcut_details else {
                return Item::Skip("a shortcut without a target".into());
            };
            if target.target_mime_type == names::FOLDER {
                return Item::Folder(target.target_id);
            }
            let shown = format!("the target {} of a shortcut", target.target_id);
            return match with_retries(retry, || self.file(&target.target_id, &shown)).await {
                Ok(t) if t.mime_type == names::SHORTCUT || t.mime_type == names::FOLDER => {
                    Item::Skip("a shortcut to a shortcut: not followed".into())
                }
                Ok(t) => self.content(t, &f.name),
                Err(e) => Item::Skip(format!("a shortcut whose target cannot be read: {e}")),
            };
        }
        let name = f.name.clone();
        self.content(f, &name)
    }

    /// The entry of a file with content, named `name`.
    fn content(&self, f: File, name: &str) -> Item {
        let mtime = parse_time(f.modified_time.as_deref());
        if names::is_google_type(&f.mime_type) {
            let links = f.export_links.unwrap_or_default();
            let Some((ext, mime)) = names::pick_export(&self.exports, |m| links.contains_key(m))
            else {
                let kind = f
                    .mime_type
                    .trim_start_matches("application/vnd.google-apps.");
                return Item::Skip(format!(
                    "a Google {kind} file, which cannot be exported as {} (--gdrive-export)",
                    self.exports.join(", ")
                ));
            };
            return Item::Entry(Entry {
                key: format!("{}.{ext}", names::segment(name)),
                size: 0,
                size_unknown: true,
                mtime,
                handle: links.get(mime).cloned(),
                ..Entry::default()
            });
        }
        let Some(size) = f.size.as_deref().and_then(|s| s.parse::<u64>().ok()) else {
            return Item::Skip(format!("a {} file without a size", f.mime_type));
        };
        Item::Entry(Entry {
            key: names::segment(name),
            size,
            mtime,
            etag: f
                .md5_checksum
                .filter(|m| super::is_md5_hex(m))
                .map(|m| m.to_ascii_lowercase()),
            handle: Some(f.id),
            ..Entry::default()
        })
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Sequential reads of a binary file's range (`alt=media` with `Range`),
/// or of an export from its start.
pub struct DriveRange {
    store: DriveStore,
    key: String,
    /// The file id, or for an export its link.
    handle: String,
    export: bool,
    pos: u64,
    end: u64,
    stream: Option<BodyStream>,
    pending: Bytes,
}

impl DriveRange {
    /// Reads into `buf[at..]`; see [`RangeReader::read`](super::RangeReader::read).
    pub async fn read(
        &mut self,
        mut buf: Vec<u8>,
        at: usize,
    ) -> (Vec<u8>, Result<usize, StoreError>) {
        let r = self.fill(&mut buf[at..]).await;
        (buf, r)
    }

    fn what(&self) -> String {
        format!(
            "{} {}",
            if self.export { "export" } else { "download" },
            self.store.url_of(&self.key)
        )
    }

    async fn open(&mut self) -> Result<(), StoreError> {
        let api = &self.store.inner.api;
        let shown = self.what();
        let what = || shown.clone();
        let r = if self.export {
            if self.pos > 0 {
                return Err(StoreError::permanent(
                    what(),
                    "an export cannot be resumed mid-way: it is read again from its start",
                ));
            }
            api.get(&self.handle, None, &what).await?
        } else {
            let url = api.url(
                &format!("/drive/v3/files/{}", urlencode(&self.handle)),
                &[("alt", "media"), ("supportsAllDrives", "true")],
            );
            let r = api.get(&url, Some(self.pos..self.end), &what).await?;
            // A server may answer a range from 0 with the whole file.
            if r.status().as_u16() != 206 && !(r.status().as_u16() == 200 && self.pos == 0) {
                return Err(StoreError {
                    context: what(),
                    message: format!("{} to a ranged read", r.status()),
                    retryable: true,
                });
            }
            r
        };
        self.stream = Some(api::body_stream(r));
        Ok(())
    }

    async fn fill(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        let room = buf
            .len()
            .min((self.end - self.pos).min(usize::MAX as u64) as usize);
        if room == 0 {
            return Ok(0);
        }
        while self.pending.is_empty() {
            if self.stream.is_none() {
                self.open().await?;
            }
            let stream = self.stream.as_mut().expect("opened");
            match stream.next().await {
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(e)) => {
                    self.stream = None;
                    return Err(StoreError {
                        context: self.what(),
                        message: api::reqwest_message(&e),
                        retryable: true,
                    });
                }
                None if self.export => {
                    self.stream = None;
                    self.end = self.pos;
                    return Ok(0);
                }
                None => {
                    self.stream = None;
                    return Err(super::ended_early(self.what(), self.end - self.pos));
                }
            }
        }
        Ok(super::drain(
            &mut self.pending,
            &mut buf[..room],
            &mut self.pos,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_locations_parse_and_print() {
        let p = |s: &str| DriveLocation::parse(s);
        assert_eq!(
            p("root/Team/Q3").unwrap(),
            DriveLocation {
                root: DriveRoot::MyDrive,
                path: vec!["Team".into(), "Q3".into()]
            }
        );
        assert_eq!(p("root").unwrap().path, Vec::<String>::new());
        assert_eq!(
            p("shared/Eng/docs").unwrap().root,
            DriveRoot::Shared("Eng".into())
        );
        assert_eq!(p("id/1AbC").unwrap().root, DriveRoot::Id("1AbC".into()));
        assert_eq!(p("shared-with-me/x").unwrap().root, DriveRoot::SharedWithMe);
        assert!(p("id").unwrap_err().contains("needs a folder or file id"));
        assert!(p("mydrive/x").unwrap_err().contains("starts with root/"));
        assert_eq!(
            p("shared/Eng/a b").unwrap().to_string(),
            "gdrive://shared/Eng/a b"
        );
    }

    #[test]
    fn query_literals_are_escaped() {
        assert_eq!(quoted(r"it's a\b"), r"'it\'s a\\b'");
    }
}
