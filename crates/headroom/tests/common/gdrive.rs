//! A Google Drive API v3 server on a loopback port, in the test process,
//! written from Google's reference documentation (developers.google.com
//! /drive/api/reference/rest/v3), not from what headroom sends:
//!
//! * `GET /drive/v3/files`: `q` (the documented grammar: `'ID' in parents`,
//!   `name = '...'`, `mimeType`, `trashed`, `sharedWithMe`, `and`/`or`/
//!   `not`, parentheses, `\'` escapes; anything else is a 400), `pageSize`
//!   1..=1000 (default 100), `pageToken` (opaque; a wrong one is a 400),
//!   `orderBy` (`name`, `name_natural`, `createdTime`, `modifiedTime`,
//!   `folder`, each with `desc`), `fields` (partial responses, nested
//!   selectors; without it, the documented default `kind,id,name,mimeType`),
//!   `supportsAllDrives`, `includeItemsFromAllDrives`, `corpora`, `driveId`.
//!   Shared-drive items appear only with `includeItemsFromAllDrives=true`.
//! * `GET /drive/v3/files/{id}`: metadata (`fields`), or `alt=media` with
//!   `Range` (206 with `Content-Range`, 416 past the end); a Google Doc
//!   refuses `alt=media` with 403 `fileNotDownloadable`.
//! * `GET /drive/v3/files/{id}/export?mimeType=`: 403
//!   `exportSizeLimitExceeded` over 10 MB; the `exportLinks` URLs
//!   (`/feeds/download/...`) have no limit, no length and no Range.
//! * `GET /drive/v3/drives/{id}` and `GET /drive/v3/drives?q=name = '...'`.
//! * `POST /token`: the RS256 JWT grant (RFC 7523: signature checked with
//!   the service account's public key, `iss`, `aud` = this URL, `scope`,
//!   `iat`/`exp` at most an hour apart and not expired, `sub` a known user)
//!   and the refresh-token grant (RFC 6749 6: client id and secret, a
//!   revoked token is 400 `invalid_grant`, a wrong client 401
//!   `invalid_client`). Access tokens expire after a set lifetime, and
//!   the API answers 401 `authError` to an expired or unknown one.
//! * Errors in Google's JSON shape (`{"error": {"code", "message",
//!   "errors": [{"domain", "reason", "message"}]}}`); no permission on a
//!   file is a 404, as Drive answers it.
//! * Faults for a share of API requests: 403 `userRateLimitExceeded`, 500
//!   `backendError`, and downloads cut off mid-body.

// Handlers answer with a Response by value, as axum's own do.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use md5::{Digest, Md5};
use serde_json::{Value, json};

pub const FOLDER: &str = "application/vnd.google-apps.folder";
pub const DOC: &str = "application/vnd.google-apps.document";
pub const SHEET: &str = "application/vnd.google-apps.spreadsheet";
pub const DRAWING: &str = "application/vnd.google-apps.drawing";
pub const FORM: &str = "application/vnd.google-apps.form";
pub const SHORTCUT: &str = "application/vnd.google-apps.shortcut";
pub const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
pub const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
pub const PDF: &str = "application/pdf";

/// The user the tests act as.
pub const ALICE: &str = "alice@example.com";
/// files.export's documented limit.
pub const EXPORT_LIMIT: u64 = 10_000_000;

/// What a file holds.
#[derive(Clone, Debug)]
pub enum Content {
    /// A folder, a shortcut, a form: nothing to download.
    None,
    /// Bytes.
    Bytes(Arc<Vec<u8>>),
    /// `len` bytes from [`generated`] with `seed`, never held whole.
    Generated { len: u64, seed: u64 },
    /// A Google Doc: each export is [`generated`] bytes of this length.
    Exports { len: u64 },
}

#[derive(Clone, Debug)]
pub struct FakeFile {
    pub id: String,
    pub name: String,
    pub mime: String,
    pub parents: Vec<String>,
    pub content: Content,
    pub md5: Option<String>,
    pub created: u64,
    pub modified: u64,
    pub trashed: bool,
    pub drive_id: Option<String>,
    /// Users it is shared with directly.
    pub readers: Vec<String>,
    pub owner: String,
    pub shortcut: Option<(String, String)>,
}

/// A 1 MiB block of pseudo-random bytes; block `i` of a generated file is
/// this block with `seed` and `i` written over its first 16 bytes.
fn block() -> &'static [u8] {
    static BLOCK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BLOCK.get_or_init(|| super::bytes(1 << 20, 4242))
}

/// Bytes `range` of the generated content with `seed`, appended to `out`.
pub fn generated(seed: u64, range: std::ops::Range<u64>, out: &mut Vec<u8>) {
    let block = block();
    let mut pos = range.start;
    while pos < range.end {
        let i = pos >> 20;
        let off = (pos & ((1 << 20) - 1)) as usize;
        let take = ((1u64 << 20) - off as u64).min(range.end - pos) as usize;
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&seed.to_le_bytes());
        head[8..].copy_from_slice(&i.to_le_bytes());
        let at = out.len();
        out.extend_from_slice(&block[off..off + take]);
        for k in off..(off + take).min(16) {
            out[at + k - off] = head[k];
        }
        pos += take as u64;
    }
}

/// MD5 (hex) of generated content.
pub fn generated_md5(seed: u64, len: u64) -> String {
    let mut h = Md5::new();
    let mut buf = Vec::with_capacity(1 << 20);
    let mut pos = 0;
    while pos < len {
        let end = (pos + (1 << 20)).min(len);
        buf.clear();
        generated(seed, pos..end, &mut buf);
        h.update(&buf);
        pos = end;
    }
    hex(&h.finalize())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The seed of a Doc's export in `mime`.
pub fn export_seed(id: &str, mime: &str) -> u64 {
    let d = Md5::digest(format!("{id}|{mime}").as_bytes());
    u64::from_le_bytes(d[..8].try_into().unwrap())
}

/// The bytes a Doc exports to in `mime` (tests compare with these).
pub fn export_bytes(id: &str, mime: &str, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    generated(export_seed(id, mime), 0..len, &mut out);
    out
}

/// Faults injected into API requests (not the token endpoint), in percent.
#[derive(Default)]
pub struct DriveFaults {
    pub rate_limit_percent: AtomicU32,
    pub server_error_percent: AtomicU32,
    /// Downloads and exports cut off half-way.
    pub drop_percent: AtomicU32,
    /// Every download starts this late.
    pub download_delay_ms: AtomicU64,
    /// Requests answered per second at most, as a Google quota is
    /// enforced: more in the last second are refused for rate (0: none).
    pub quota_per_second: AtomicU32,
}

/// Counts of what the server answered.
#[derive(Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
    pub server_errors: AtomicU64,
    pub dropped: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub unauthorized: AtomicU64,
}

struct Client {
    secret: String,
}

struct ServiceAccount {
    email: String,
    public_key: Vec<u8>,
}

struct Token {
    user: String,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    files: HashMap<String, FakeFile>,
    children: HashMap<String, Vec<String>>,
    drives: Vec<(String, String, Vec<String>)>,
    roots: HashMap<String, String>,
    clients: HashMap<String, Client>,
    refresh_tokens: HashMap<String, (String, bool)>,
    service_accounts: Vec<ServiceAccount>,
    tokens: HashMap<String, Token>,
    next_id: u64,
    clock: u64,
    /// Per second since start: (answered, refused for rate).
    timeline: Vec<(u64, u64)>,
    /// alt=media GETs and exports per file id.
    downloads: HashMap<String, u64>,
    /// When the requests answered in the last second were.
    recent: std::collections::VecDeque<Instant>,
}

/// The server's shared state.
pub struct Drive {
    inner: Mutex<Inner>,
    pub faults: DriveFaults,
    pub counts: Counts,
    pub token_lifetime: AtomicU64,
    started: Instant,
    base: Mutex<String>,
}

/// A running server; stops when dropped.
pub struct DriveServer {
    pub url: String,
    pub drive: Arc<Drive>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DriveServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn google_error(status: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"error": {
        "code": status.as_u16(),
        "message": message,
        "errors": [{"domain": if reason == "userRateLimitExceeded" {"usageLimits"} else {"global"}, "reason": reason, "message": message}],
    }});
    (
        status,
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn invalid(location: &str, message: &str) -> Response {
    let body = json!({"error": {
        "code": 400,
        "message": message,
        "errors": [{"domain": "global", "reason": "invalid", "message": message, "locationType": "parameter", "location": location}],
    }});
    (StatusCode::BAD_REQUEST, body.to_string()).into_response()
}

fn rfc3339(secs: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from(UNIX_EPOCH + Duration::from_secs(secs))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

impl DriveServer {
    /// Starts a server with an empty My Drive for [`ALICE`].
    pub fn start() -> DriveServer {
        let drive = Arc::new(Drive {
            inner: Mutex::new(Inner {
                clock: 1_700_000_000,
                ..Default::default()
            }),
            faults: DriveFaults::default(),
            counts: Counts::default(),
            token_lifetime: AtomicU64::new(3600),
            started: Instant::now(),
            base: Mutex::new(String::new()),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let d = drive.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr: SocketAddr = listener.local_addr().unwrap();
                tx.send(addr).unwrap();
                let app = axum::Router::new()
                    .route("/token", post(token))
                    .route("/drive/v3/files", get(list))
                    .route("/drive/v3/files/{id}", get(file))
                    .route("/drive/v3/files/{id}/export", get(export))
                    .route("/drive/v3/drives", get(drives))
                    .route("/drive/v3/drives/{id}", get(drive_get))
                    .route("/feeds/download/{kind}/export/Export", get(export_link))
                    .with_state(d);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        let url = format!("http://{addr}");
        *drive.base.lock().unwrap() = url.clone();
        drive.add_user(ALICE);
        DriveServer {
            url,
            drive,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The token endpoint's URL.
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.url)
    }

    /// A service-account key file in `dir` whose account may act as any
    /// known user; registers its public key.
    pub fn service_account_key(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = key.as_der().unwrap();
        let public = aws_lc_rs::signature::KeyPair::public_key(&key)
            .as_ref()
            .to_vec();
        let email = "migrator@project.iam.gserviceaccount.com".to_string();
        self.drive
            .inner
            .lock()
            .unwrap()
            .service_accounts
            .push(ServiceAccount {
                email: email.clone(),
                public_key: public,
            });
        let b64 = STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        let file = json!({
            "type": "service_account",
            "project_id": "project",
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": email,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri(),
        });
        let path = dir.join("service-account.json");
        std::fs::write(&path, file.to_string()).unwrap();
        path
    }

    /// An authorized-user file (what gcloud writes) for [`ALICE`].
    pub fn authorized_user(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let mut inner = self.drive.inner.lock().unwrap();
        inner.clients.insert(
            "client-1.apps.googleusercontent.com".into(),
            Client {
                secret: "client-secret".into(),
            },
        );
        inner
            .refresh_tokens
            .insert("1//refresh-alice".into(), (ALICE.into(), false));
        let file = json!({
            "type": "authorized_user",
            "client_id": "client-1.apps.googleusercontent.com",
            "client_secret": "client-secret",
            "refresh_token": "1//refresh-alice",
            "token_uri": self.token_uri(),
        });
        let path = dir.join("authorized-user.json");
        std::fs::write(&path, file.to_string()).unwrap();
        path
    }

    /// Revokes every refresh token.
    pub fn revoke_refresh_tokens(&self) {
        for (_, (_, revoked)) in self.drive.inner.lock().unwrap().refresh_tokens.iter_mut() {
            *revoked = true;
        }
    }

    /// A ready access token for `user`, as GOOGLE_OAUTH_ACCESS_TOKEN holds.
    pub fn access_token(&self, user: &str) -> String {
        let token = format!("ya29.ready-{}", fastrand::u64(..));
        let lifetime = Duration::from_secs(self.drive.token_lifetime.load(Ordering::Relaxed));
        self.drive.inner.lock().unwrap().tokens.insert(
            token.clone(),
            Token {
                user: user.into(),
                expires: Instant::now() + lifetime,
            },
        );
        token
    }

    /// Per second: requests answered, and refused for rate.
    pub fn timeline(&self) -> Vec<(u64, u64)> {
        self.drive.inner.lock().unwrap().timeline.clone()
    }

    /// Downloads (alt=media and exports) of file `id` so far.
    pub fn downloads_of(&self, id: &str) -> u64 {
        *self
            .drive
            .inner
            .lock()
            .unwrap()
            .downloads
            .get(id)
            .unwrap_or(&0)
    }

    /// Downloads of every file so far.
    pub fn downloads(&self) -> u64 {
        self.drive.inner.lock().unwrap().downloads.values().sum()
    }
}

impl Drive {
    fn add_user(&self, user: &str) {
        let mut inner = self.inner.lock().unwrap();
        let id = inner.new_id();
        inner.clock += 1;
        let f = FakeFile {
            id: id.clone(),
            name: "My Drive".into(),
            mime: FOLDER.into(),
            parents: vec![],
            content: Content::None,
            md5: None,
            created: inner.clock,
            modified: inner.clock,
            trashed: false,
            drive_id: None,
            readers: vec![],
            owner: user.into(),
            shortcut: None,
        };
        inner.files.insert(id.clone(), f);
        inner.roots.insert(user.into(), id);
    }

    /// The id of `user`'s My Drive.
    pub fn root(&self, user: &str) -> String {
        self.inner.lock().unwrap().roots[user].clone()
    }

    /// Adds an item below `parent`; its id.
    pub fn add(&self, parent: &str, name: &str, mime: &str, content: Content) -> String {
        let mut inner = self.inner.lock().unwrap();
        let id = inner.new_id();
        inner.clock += 1;
        let (owner, drive_id) = {
            let p = &inner.files[parent];
            (p.owner.clone(), p.drive_id.clone())
        };
        let md5 = match &content {
            Content::Bytes(b) => Some(hex(&Md5::digest(b.as_slice()))),
            Content::Generated { len, seed } => Some(generated_md5(*seed, *len)),
            _ => None,
        };
        let f = FakeFile {
            id: id.clone(),
            name: name.into(),
            mime: mime.into(),
            parents: vec![parent.into()],
            content,
            md5,
            created: inner.clock,
            modified: inner.clock,
            trashed: false,
            drive_id,
            readers: vec![],
            owner,
            shortcut: None,
        };
        inner.files.insert(id.clone(), f);
        inner
            .children
            .entry(parent.into())
            .or_default()
            .push(id.clone());
        id
    }

    pub fn folder(&self, parent: &str, name: &str) -> String {
        self.add(parent, name, FOLDER, Content::None)
    }

    pub fn file(&self, parent: &str, name: &str, data: Vec<u8>) -> String {
        self.add(
            parent,
            name,
            "application/octet-stream",
            Content::Bytes(Arc::new(data)),
        )
    }

    pub fn shortcut(&self, parent: &str, name: &str, target: &str) -> String {
        let id = self.add(parent, name, SHORTCUT, Content::None);
        let mut inner = self.inner.lock().unwrap();
        let mime = inner.files[target].mime.clone();
        inner.files.get_mut(&id).unwrap().shortcut = Some((target.into(), mime));
        id
    }

    /// Changes a file: its bytes and its modifiedTime.
    pub fn edit(&self, id: &str, data: Vec<u8>) {
        let mut inner = self.inner.lock().unwrap();
        inner.clock += 1;
        let clock = inner.clock;
        let f = inner.files.get_mut(id).unwrap();
        f.md5 = Some(hex(&Md5::digest(&data)));
        f.content = Content::Bytes(Arc::new(data));
        f.modified = clock;
    }

    /// Makes Drive report `md5` for `id`, whatever its bytes.
    pub fn set_md5(&self, id: &str, md5: &str) {
        self.inner.lock().unwrap().files.get_mut(id).unwrap().md5 = Some(md5.into());
    }

    pub fn trash(&self, id: &str) {
        self.inner
            .lock()
            .unwrap()
            .files
            .get_mut(id)
            .unwrap()
            .trashed = true;
    }

    /// Shares `id` with `user` directly.
    pub fn share(&self, id: &str, user: &str) {
        self.inner
            .lock()
            .unwrap()
            .files
            .get_mut(id)
            .unwrap()
            .readers
            .push(user.into());
    }

    /// Adds a user with an empty My Drive.
    pub fn user(&self, user: &str) {
        self.add_user(user);
    }

    /// A shared drive with `members`; its id (also its root folder's).
    pub fn shared_drive(&self, name: &str, members: &[&str]) -> String {
        let mut inner = self.inner.lock().unwrap();
        let id = format!("0A{}", &inner.new_id()[2..]);
        inner.clock += 1;
        let f = FakeFile {
            id: id.clone(),
            name: name.into(),
            mime: FOLDER.into(),
            parents: vec![],
            content: Content::None,
            md5: None,
            created: inner.clock,
            modified: inner.clock,
            trashed: false,
            drive_id: Some(id.clone()),
            readers: vec![],
            owner: String::new(),
            shortcut: None,
        };
        inner.files.insert(id.clone(), f);
        inner.drives.push((
            id.clone(),
            name.into(),
            members.iter().map(|m| m.to_string()).collect(),
        ));
        id
    }

    pub fn get(&self, id: &str) -> FakeFile {
        self.inner.lock().unwrap().files[id].clone()
    }
}

impl Inner {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        let d = Md5::digest(self.next_id.to_le_bytes());
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut id = String::from("1");
        for b in d.iter().chain(Md5::digest(d).iter()).take(32) {
            id.push(alphabet[(*b & 63) as usize] as char);
        }
        id
    }

    /// Whether `user` may see `f`: a member of its shared drive, its
    /// owner, or a reader of it or of a folder above it.
    fn visible(&self, f: &FakeFile, user: &str) -> bool {
        if let Some(d) = &f.drive_id {
            return self
                .drives
                .iter()
                .any(|(id, _, members)| id == d && members.iter().any(|m| m == user));
        }
        let mut cur = Some(f);
        let mut depth = 0;
        while let Some(c) = cur {
            if c.owner == user || c.readers.iter().any(|r| r == user) {
                return true;
            }
            depth += 1;
            if depth > 64 {
                return false;
            }
            cur = c.parents.first().and_then(|p| self.files.get(p));
        }
        false
    }

    fn resource(&self, f: &FakeFile, base: &str) -> Value {
        let mut v = json!({
            "kind": "drive#file",
            "id": f.id,
            "name": f.name,
            "mimeType": f.mime,
            "parents": f.parents,
            "trashed": f.trashed,
            "createdTime": rfc3339(f.created),
            "modifiedTime": rfc3339(f.modified),
        });
        if let Some(d) = &f.drive_id {
            v["driveId"] = d.clone().into();
        }
        match &f.content {
            Content::Bytes(b) => v["size"] = b.len().to_string().into(),
            Content::Generated { len, .. } => v["size"] = len.to_string().into(),
            _ => {}
        }
        if let Some(m) = &f.md5 {
            v["md5Checksum"] = m.clone().into();
        }
        if let Some((target, mime)) = &f.shortcut {
            v["shortcutDetails"] = json!({"targetId": target, "targetMimeType": mime});
        }
        if let Content::Exports { .. } = f.content {
            let (kind, formats): (&str, &[(&str, &str)]) = match f.mime.as_str() {
                DOC => (
                    "documents",
                    &[(DOCX, "docx"), (PDF, "pdf"), ("text/plain", "txt")],
                ),
                SHEET => (
                    "spreadsheets",
                    &[(XLSX, "xlsx"), (PDF, "pdf"), ("text/csv", "csv")],
                ),
                _ => ("drawings", &[(PDF, "pdf"), ("image/png", "png")]),
            };
            let links: serde_json::Map<String, Value> = formats
                .iter()
                .map(|(mime, ext)| {
                    (
                        mime.to_string(),
                        format!(
                            "{base}/feeds/download/{kind}/export/Export?id={}&exportFormat={ext}",
                            f.id
                        )
                        .into(),
                    )
                })
                .collect();
            v["exportLinks"] = Value::Object(links);
        }
        v
    }
}

/// A parsed `fields` selector: name -> sub-selector (None: all of it).
#[derive(Debug, Default)]
struct Fields(BTreeMap<String, Option<Fields>>);

impl std::ops::Deref for Fields {
    type Target = BTreeMap<String, Option<Fields>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Fields {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

fn parse_fields(s: &str) -> Result<Fields, String> {
    fn level(chars: &[char], pos: &mut usize) -> Result<Fields, String> {
        let mut out = Fields::default();
        let mut name = String::new();
        while *pos < chars.len() {
            let c = chars[*pos];
            *pos += 1;
            match c {
                ',' => {
                    if !name.trim().is_empty() {
                        out.insert(name.trim().to_string(), None);
                    }
                    name.clear();
                }
                '(' => {
                    let sub = level(chars, pos)?;
                    out.insert(name.trim().to_string(), Some(sub));
                    name.clear();
                    // Skip a following comma.
                    if *pos < chars.len() && chars[*pos] == ',' {
                        *pos += 1;
                    }
                }
                ')' => {
                    if !name.trim().is_empty() {
                        out.insert(name.trim().to_string(), None);
                    }
                    return Ok(out);
                }
                c => name.push(c),
            }
        }
        if !name.trim().is_empty() {
            out.insert(name.trim().to_string(), None);
        }
        Ok(out)
    }
    let chars: Vec<char> = s.chars().collect();
    level(&chars, &mut 0)
}

fn select(v: &Value, fields: &Fields) -> Value {
    if fields.contains_key("*") {
        return v.clone();
    }
    match v {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, sub) in fields.iter() {
                if let Some(x) = map.get(k) {
                    out.insert(
                        k.clone(),
                        match sub {
                            Some(s) => select(x, s),
                            None => x.clone(),
                        },
                    );
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| select(i, fields)).collect()),
        other => other.clone(),
    }
}

/// The `q` language, as far as the reference documents it for files.
#[derive(Debug)]
enum Q {
    And(Box<Q>, Box<Q>),
    Or(Box<Q>, Box<Q>),
    Not(Box<Q>),
    InParents(String),
    Cmp(String, String, Value),
}

#[derive(Debug, PartialEq)]
enum Tok {
    Str(String),
    Word(String),
    Op(String),
    Open,
    Close,
}

fn tokens(s: &str) -> Result<Vec<Tok>, String> {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < c.len() {
        match c[i] {
            ' ' | '\t' | '\n' => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1
            }
            ')' => {
                out.push(Tok::Close);
                i += 1
            }
            '\'' => {
                i += 1;
                let mut lit = String::new();
                loop {
                    match c.get(i) {
                        None => return Err("unterminated string".into()),
                        Some('\\') => {
                            lit.push(*c.get(i + 1).ok_or("dangling escape")?);
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(x) => {
                            lit.push(*x);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(lit));
            }
            '=' | '!' | '<' | '>' => {
                let mut op = c[i].to_string();
                i += 1;
                if c.get(i) == Some(&'=') {
                    op.push('=');
                    i += 1;
                }
                if op == "!" {
                    return Err("bad operator".into());
                }
                out.push(Tok::Op(op));
            }
            x if x.is_alphanumeric() => {
                let mut w = String::new();
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    w.push(c[i]);
                    i += 1;
                }
                out.push(Tok::Word(w));
            }
            x => return Err(format!("unexpected {x:?}")),
        }
    }
    Ok(out)
}

fn parse_q(s: &str) -> Result<Q, String> {
    let toks = tokens(s)?;
    let mut pos = 0;
    let q = or_expr(&toks, &mut pos)?;
    if pos != toks.len() {
        return Err("trailing input".into());
    }
    Ok(q)
}

fn or_expr(t: &[Tok], p: &mut usize) -> Result<Q, String> {
    let mut left = and_expr(t, p)?;
    while t.get(*p) == Some(&Tok::Word("or".into())) {
        *p += 1;
        left = Q::Or(Box::new(left), Box::new(and_expr(t, p)?));
    }
    Ok(left)
}

fn and_expr(t: &[Tok], p: &mut usize) -> Result<Q, String> {
    let mut left = unary(t, p)?;
    while t.get(*p) == Some(&Tok::Word("and".into())) {
        *p += 1;
        left = Q::And(Box::new(left), Box::new(unary(t, p)?));
    }
    Ok(left)
}

fn unary(t: &[Tok], p: &mut usize) -> Result<Q, String> {
    match t.get(*p) {
        Some(Tok::Word(w)) if w == "not" => {
            *p += 1;
            Ok(Q::Not(Box::new(unary(t, p)?)))
        }
        Some(Tok::Open) => {
            *p += 1;
            let q = or_expr(t, p)?;
            if t.get(*p) != Some(&Tok::Close) {
                return Err("missing )".into());
            }
            *p += 1;
            Ok(q)
        }
        Some(Tok::Str(s)) => {
            let s = s.clone();
            *p += 1;
            match (t.get(*p), t.get(*p + 1)) {
                (Some(Tok::Word(w)), Some(Tok::Word(field))) if w == "in" && field == "parents" => {
                    *p += 2;
                    Ok(Q::InParents(s))
                }
                _ => Err("expected `in parents`".into()),
            }
        }
        Some(Tok::Word(field)) => {
            let field = field.clone();
            *p += 1;
            let op = match t.get(*p) {
                Some(Tok::Op(o)) => o.clone(),
                Some(Tok::Word(w)) if w == "contains" => "contains".into(),
                _ => return Err(format!("expected an operator after {field}")),
            };
            *p += 1;
            let value = match t.get(*p) {
                Some(Tok::Str(s)) => Value::String(s.clone()),
                Some(Tok::Word(w)) if w == "true" => Value::Bool(true),
                Some(Tok::Word(w)) if w == "false" => Value::Bool(false),
                _ => return Err(format!("expected a value for {field}")),
            };
            *p += 1;
            let known = matches!(
                (field.as_str(), &value),
                (
                    "name" | "mimeType" | "modifiedTime" | "createdTime",
                    Value::String(_)
                ) | ("trashed" | "sharedWithMe" | "starred", Value::Bool(_))
            );
            if !known {
                return Err(format!("{field} {op} {value} is not a valid query term"));
            }
            Ok(Q::Cmp(field, op, value))
        }
        _ => Err("expected a term".into()),
    }
}

/// `q` with `'root' in parents` naming `root`, the user's My Drive.
fn with_root(q: Q, root: &str) -> Q {
    match q {
        Q::And(a, b) => Q::And(Box::new(with_root(*a, root)), Box::new(with_root(*b, root))),
        Q::Or(a, b) => Q::Or(Box::new(with_root(*a, root)), Box::new(with_root(*b, root))),
        Q::Not(a) => Q::Not(Box::new(with_root(*a, root))),
        Q::InParents(p) if p == "root" => Q::InParents(root.to_string()),
        other => other,
    }
}

/// The parents a query is restricted to (`in parents` terms joined by
/// `or`, under an `and` at its top), to look at their children only.
fn parents_of(q: &Q) -> Option<Vec<&str>> {
    match q {
        Q::InParents(p) => Some(vec![p]),
        Q::Or(a, b) => {
            let mut all = parents_of(a)?;
            all.extend(parents_of(b)?);
            Some(all)
        }
        Q::And(a, b) => parents_of(a).or_else(|| parents_of(b)),
        _ => None,
    }
}

fn matches(q: &Q, f: &FakeFile, user: &str) -> bool {
    match q {
        Q::And(a, b) => matches(a, f, user) && matches(b, f, user),
        Q::Or(a, b) => matches(a, f, user) || matches(b, f, user),
        Q::Not(a) => !matches(a, f, user),
        Q::InParents(p) => f.parents.iter().any(|x| x == p),
        Q::Cmp(field, op, value) => {
            let actual = match field.as_str() {
                "name" => Value::String(f.name.clone()),
                "mimeType" => Value::String(f.mime.clone()),
                "modifiedTime" => Value::String(rfc3339(f.modified)),
                "createdTime" => Value::String(rfc3339(f.created)),
                "trashed" => Value::Bool(f.trashed),
                "sharedWithMe" => {
                    Value::Bool(f.owner != user && f.readers.iter().any(|r| r == user))
                }
                _ => Value::Bool(false),
            };
            match op.as_str() {
                "=" => actual == *value,
                "!=" => actual != *value,
                "contains" => actual
                    .as_str()
                    .zip(value.as_str())
                    .is_some_and(|(a, v)| a.contains(v)),
                "<" | "<=" | ">" | ">=" => {
                    let (a, v) = (actual.as_str().unwrap_or(""), value.as_str().unwrap_or(""));
                    match op.as_str() {
                        "<" => a < v,
                        "<=" => a <= v,
                        ">" => a > v,
                        _ => a >= v,
                    }
                }
                _ => false,
            }
        }
    }
}

type Params = Query<HashMap<String, String>>;

impl Drive {
    /// The user a request's bearer token stands for, or the 401.
    fn authorize(&self, headers: &HeaderMap) -> Result<String, Response> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let inner = self.inner.lock().unwrap();
        match token.and_then(|t| inner.tokens.get(t)) {
            Some(t) if t.expires > Instant::now() => Ok(t.user.clone()),
            _ => {
                self.counts.unauthorized.fetch_add(1, Ordering::Relaxed);
                let body = json!({"error": {
                    "code": 401,
                    "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
                    "errors": [{"message": "Invalid Credentials", "domain": "global", "reason": "authError", "location": "Authorization", "locationType": "header"}],
                    "status": "UNAUTHENTICATED",
                }});
                Err((StatusCode::UNAUTHORIZED, body.to_string()).into_response())
            }
        }
    }

    /// An API request's way in: its user (or the 401), then its fault,
    /// if one is due.
    fn enter(&self, headers: &HeaderMap) -> Result<String, Response> {
        let user = self.authorize(headers)?;
        self.admit()?;
        Ok(user)
    }

    /// Counts the request and injects a fault into it, if one is due.
    fn admit(&self) -> Result<(), Response> {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        let second = self.started.elapsed().as_secs() as usize;
        let roll = fastrand::u32(0..100);
        let rate = self.faults.rate_limit_percent.load(Ordering::Relaxed);
        let errors = self.faults.server_error_percent.load(Ordering::Relaxed);
        let quota = self.faults.quota_per_second.load(Ordering::Relaxed) as usize;
        let mut refused = roll < rate;
        {
            let mut inner = self.inner.lock().unwrap();
            if quota > 0 {
                let now = Instant::now();
                while inner
                    .recent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
                {
                    inner.recent.pop_front();
                }
                if inner.recent.len() >= quota {
                    refused = true;
                } else {
                    inner.recent.push_back(now);
                }
            }
            if inner.timeline.len() <= second {
                inner.timeline.resize(second + 1, (0, 0));
            }
            if refused {
                inner.timeline[second].1 += 1;
            } else {
                inner.timeline[second].0 += 1;
            }
        }
        if refused {
            self.counts.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(google_error(
                StatusCode::FORBIDDEN,
                "userRateLimitExceeded",
                "User Rate Limit Exceeded. Rate of requests for user exceed configured project quota. You may consider re-evaluating expected per-user traffic to the API and adjust project quota limits accordingly.",
            ));
        }
        if roll < rate + errors {
            self.counts.server_errors.fetch_add(1, Ordering::Relaxed);
            return Err(google_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backendError",
                "Backend Error",
            ));
        }
        Ok(())
    }

    fn not_found(id: &str) -> Response {
        let body = json!({"error": {
            "code": 404,
            "message": format!("File not found: {id}."),
            "errors": [{"domain": "global", "reason": "notFound", "message": format!("File not found: {id}."), "locationType": "parameter", "location": "fileId"}],
        }});
        (StatusCode::NOT_FOUND, body.to_string()).into_response()
    }

    /// The file `id` as `user` may see it (`root` is their My Drive).
    fn visible_file(&self, id: &str, user: &str, all_drives: bool) -> Result<FakeFile, Response> {
        let inner = self.inner.lock().unwrap();
        let id = if id == "root" {
            inner.roots.get(user).cloned().unwrap_or_default()
        } else {
            id.to_string()
        };
        match inner.files.get(&id) {
            Some(f) if inner.visible(f, user) && (f.drive_id.is_none() || all_drives) => {
                Ok(f.clone())
            }
            _ => Err(Self::not_found(&id)),
        }
    }
}

fn flag(p: &HashMap<String, String>, name: &str) -> bool {
    p.get(name).is_some_and(|v| v == "true")
}

async fn list(State(d): State<Arc<Drive>>, headers: HeaderMap, Query(p): Params) -> Response {
    let user = match d.enter(&headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let page_size: usize = match p.get("pageSize").map(|s| s.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return invalid("pageSize", "Invalid value for pageSize"),
    };
    let q = match p.get("q").map(|q| parse_q(q)).transpose() {
        Ok(q) => q,
        Err(e) => return invalid("q", &format!("Invalid Value: {e}")),
    };
    let include_drives = flag(&p, "includeItemsFromAllDrives");
    if include_drives && !flag(&p, "supportsAllDrives") {
        return invalid(
            "includeItemsFromAllDrives",
            "The includeItemsFromAllDrives parameter can only be set to true when supportsAllDrives is also set to true.",
        );
    }
    let corpora = p.get("corpora").map(String::as_str).unwrap_or("user");
    let drive_id = p.get("driveId");
    if corpora == "drive" && (drive_id.is_none() || !include_drives) {
        return invalid(
            "driveId",
            "The driveId parameter must be specified if and only if corpora is set to drive, and includeItemsFromAllDrives must be true.",
        );
    }
    let order = p.get("orderBy").cloned().unwrap_or_default();
    let fields = match p.get("fields") {
        Some(f) => parse_fields(f).unwrap(),
        None => parse_fields("kind,incompleteSearch,nextPageToken,files(kind,id,name,mimeType)")
            .unwrap(),
    };
    let base = d.base.lock().unwrap().clone();
    let inner = d.inner.lock().unwrap();
    let root = inner.roots.get(&user).cloned().unwrap_or_default();
    let q = q.map(|q| with_root(q, &root));
    // Candidates: the children of the parents the query names, if it names them.
    let candidates: Box<dyn Iterator<Item = &FakeFile>> = match q.as_ref().and_then(parents_of) {
        Some(parents) => Box::new(
            parents
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .flat_map(|p| inner.children.get(p).into_iter().flatten())
                .filter_map(|id| inner.files.get(id)),
        ),
        None => Box::new(inner.files.values()),
    };
    let mut found: Vec<&FakeFile> = candidates
        .filter(|f| !f.parents.is_empty())
        .filter(|f| inner.visible(f, &user))
        .filter(|f| match &f.drive_id {
            None => corpora != "drive",
            Some(id) => include_drives && (corpora != "drive" || Some(id) == drive_id),
        })
        .filter(|f| q.as_ref().is_none_or(|q| matches(q, f, &user)))
        .collect();
    let mut keys: Vec<(String, bool)> = Vec::new();
    for k in order.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let (name, desc) = match k.strip_suffix(" desc") {
            Some(n) => (n.trim(), true),
            None => (k, false),
        };
        if ![
            "name",
            "name_natural",
            "createdTime",
            "modifiedTime",
            "folder",
        ]
        .contains(&name)
        {
            return invalid("orderBy", &format!("Invalid sort field: {name}"));
        }
        keys.push((name.to_string(), desc));
    }
    found.sort_by(|a, b| {
        for (k, desc) in &keys {
            let o = match k.as_str() {
                "name" | "name_natural" => a
                    .name
                    .to_lowercase()
                    .cmp(&b.name.to_lowercase())
                    .then(a.name.cmp(&b.name)),
                "createdTime" => a.created.cmp(&b.created),
                "modifiedTime" => a.modified.cmp(&b.modified),
                _ => (b.mime == FOLDER).cmp(&(a.mime == FOLDER)),
            };
            let o = if *desc { o.reverse() } else { o };
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        a.id.cmp(&b.id)
    });
    // The token carries the offset and a digest of the query it belongs to.
    let digest = hex(&Md5::digest(
        format!("{:?}{order}{corpora}{drive_id:?}", p.get("q")).as_bytes(),
    ))[..8]
        .to_string();
    let start = match p.get("pageToken") {
        None => 0,
        Some(t) => match URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                let (dg, off) = s.split_once(':')?;
                (dg == digest).then(|| off.parse::<usize>().ok()).flatten()
            }) {
            Some(o) => o,
            None => return invalid("pageToken", "Invalid Value"),
        },
    };
    let end = (start + page_size).min(found.len());
    let files: Vec<Value> = found[start.min(end)..end]
        .iter()
        .map(|f| inner.resource(f, &base))
        .collect();
    let mut body = json!({
        "kind": "drive#fileList",
        "incompleteSearch": false,
        "files": files,
    });
    if end < found.len() {
        body["nextPageToken"] = URL_SAFE_NO_PAD.encode(format!("{digest}:{end}")).into();
    }
    let body = select(&body, &fields);
    drop(inner);
    (
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

/// A body of `range` of a file's content, cut off half-way if `drop`.
fn content_body(content: Content, range: std::ops::Range<u64>, drop: bool) -> Body {
    let cut = if drop {
        range.start + (range.end - range.start) / 2
    } else {
        u64::MAX
    };
    let stream = futures::stream::unfold(range.start, move |pos| {
        let content = content.clone();
        async move {
            if pos >= range.end {
                return None;
            }
            if pos >= cut {
                return Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "dropped",
                    )),
                    u64::MAX,
                ));
            }
            let end = (pos + (64 << 10)).min(range.end).min(cut.max(pos + 1));
            let mut chunk = Vec::with_capacity((end - pos) as usize);
            match &content {
                Content::Bytes(b) => chunk.extend_from_slice(&b[pos as usize..end as usize]),
                Content::Generated { seed, .. } => generated(*seed, pos..end, &mut chunk),
                _ => {}
            }
            Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), end))
        }
    });
    Body::from_stream(stream)
}

fn content_len(c: &Content) -> u64 {
    match c {
        Content::Bytes(b) => b.len() as u64,
        Content::Generated { len, .. } => *len,
        _ => 0,
    }
}

async fn file(
    State(d): State<Arc<Drive>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    Query(p): Params,
) -> Response {
    let user = match d.enter(&headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let f = match d.visible_file(&id, &user, flag(&p, "supportsAllDrives")) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if p.get("alt").map(String::as_str) != Some("media") {
        let base = d.base.lock().unwrap().clone();
        let v = d.inner.lock().unwrap().resource(&f, &base);
        let fields = parse_fields(p.get("fields").map_or("kind,id,name,mimeType", |s| s)).unwrap();
        return select(&v, &fields).to_string().into_response();
    }
    if f.mime.starts_with("application/vnd.google-apps.") {
        return google_error(
            StatusCode::FORBIDDEN,
            "fileNotDownloadable",
            "Only files with binary content can be downloaded. Use Export with Docs Editors files.",
        );
    }
    *d.inner
        .lock()
        .unwrap()
        .downloads
        .entry(f.id.clone())
        .or_default() += 1;
    let delay = d.faults.download_delay_ms.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let len = content_len(&f.content);
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            let a: u64 = a.parse().unwrap_or(0);
            let b: u64 = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                b.parse().unwrap_or(0)
            };
            (a, b.min(len.saturating_sub(1)))
        });
    let drop = fastrand::u32(0..100) < d.faults.drop_percent.load(Ordering::Relaxed);
    if drop {
        d.counts.dropped.fetch_add(1, Ordering::Relaxed);
    }
    match range {
        Some((a, _)) if a >= len => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [("content-range", format!("bytes */{len}"))],
        )
            .into_response(),
        Some((a, b)) => Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header("content-range", format!("bytes {a}-{b}/{len}"))
            .header("content-length", (b + 1 - a).to_string())
            .body(content_body(f.content.clone(), a..b + 1, drop))
            .unwrap(),
        None => Response::builder()
            .header("content-length", len.to_string())
            .body(content_body(f.content.clone(), 0..len, drop))
            .unwrap(),
    }
}

fn export_response(d: &Drive, f: &FakeFile, mime: &str, limited: bool) -> Response {
    let Content::Exports { len } = f.content else {
        return google_error(
            StatusCode::FORBIDDEN,
            "fileNotExportable",
            "Export only supports Docs Editors files.",
        );
    };
    if limited && len > EXPORT_LIMIT {
        return google_error(
            StatusCode::FORBIDDEN,
            "exportSizeLimitExceeded",
            "This file is too large to be exported.",
        );
    }
    *d.inner
        .lock()
        .unwrap()
        .downloads
        .entry(f.id.clone())
        .or_default() += 1;
    let drop = fastrand::u32(0..100) < d.faults.drop_percent.load(Ordering::Relaxed);
    if drop {
        d.counts.dropped.fetch_add(1, Ordering::Relaxed);
    }
    let content = Content::Generated {
        len,
        seed: export_seed(&f.id, mime),
    };
    // Chunked: an export's length is not known in advance.
    Response::builder()
        .header("content-type", mime)
        .body(content_body(content, 0..len, drop))
        .unwrap()
}

async fn export(
    State(d): State<Arc<Drive>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    Query(p): Params,
) -> Response {
    let user = match d.enter(&headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let f = match d.visible_file(&id, &user, true) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(mime) = p.get("mimeType") else {
        return invalid("mimeType", "Required parameter: mimeType");
    };
    export_response(&d, &f, mime, true)
}

async fn export_link(
    State(d): State<Arc<Drive>>,
    UrlPath(_kind): UrlPath<String>,
    headers: HeaderMap,
    Query(p): Params,
) -> Response {
    let user = match d.enter(&headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let (Some(id), Some(ext)) = (p.get("id"), p.get("exportFormat")) else {
        return (StatusCode::BAD_REQUEST, "missing id or exportFormat").into_response();
    };
    let f = match d.visible_file(id, &user, true) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mime = match ext.as_str() {
        "docx" => DOCX,
        "xlsx" => XLSX,
        "pdf" => PDF,
        "txt" => "text/plain",
        "csv" => "text/csv",
        "png" => "image/png",
        _ => return (StatusCode::BAD_REQUEST, "unknown exportFormat").into_response(),
    };
    export_response(&d, &f, mime, false)
}

async fn drive_get(
    State(d): State<Arc<Drive>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let user = match d.enter(&headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let inner = d.inner.lock().unwrap();
    match inner
        .drives
        .iter()
        .find(|(i, _, m)| *i == id && m.contains(&user))
    {
        Some((i, name, _)) => json!({"kind": "drive#drive", "id": i, "name": name})
            .to_string()
            .into_response(),
        None => google_error(
            StatusCode::NOT_FOUND,
            "notFound",
            &format!("Shared drive not found: {id}"),
        ),
    }
}

async fn drives(State(d): State<Arc<Drive>>, headers: HeaderMap, Query(p): Params) -> Response {
    let user = match d.enter(&headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let wanted = match p.get("q").map(|q| parse_q(q)).transpose() {
        Ok(q) => q,
        Err(e) => return invalid("q", &format!("Invalid Value: {e}")),
    };
    let inner = d.inner.lock().unwrap();
    let list: Vec<Value> = inner
        .drives
        .iter()
        .filter(|(_, _, m)| m.contains(&user))
        .filter(|(_, name, _)| match &wanted {
            Some(Q::Cmp(f, op, Value::String(v))) if f == "name" && op == "=" => name == v,
            Some(_) => false,
            None => true,
        })
        .map(|(id, name, _)| json!({"kind": "drive#drive", "id": id, "name": name}))
        .collect();
    json!({"kind": "drive#driveList", "drives": list})
        .to_string()
        .into_response()
}

fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response()
}

async fn token(State(d): State<Arc<Drive>>, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token_uri = format!("{}/token", d.base.lock().unwrap());
    let user = match form.get("grant_type").map(String::as_str) {
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let Some(jwt) = form.get("assertion") else {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Missing assertion.",
                );
            };
            let parts: Vec<&str> = jwt.split('.').collect();
            if parts.len() != 3 {
                return token_error(StatusCode::BAD_REQUEST, "invalid_grant", "Invalid JWT.");
            }
            let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).ok();
            let (Some(h), Some(c), Some(sig)) =
                (decode(parts[0]), decode(parts[1]), decode(parts[2]))
            else {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid JWT encoding.",
                );
            };
            let header: Value = serde_json::from_slice(&h).unwrap_or_default();
            let claims: Value = serde_json::from_slice(&c).unwrap_or_default();
            if header["alg"] != "RS256" {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid JWT: alg must be RS256.",
                );
            }
            let inner = d.inner.lock().unwrap();
            let Some(sa) = inner
                .service_accounts
                .iter()
                .find(|s| claims["iss"].as_str() == Some(s.email.as_str()))
            else {
                return token_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "The OAuth client was not found.",
                );
            };
            let key = aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                &sa.public_key,
            );
            if key
                .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
                .is_err()
            {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid JWT Signature.",
                );
            }
            if claims["aud"].as_str() != Some(token_uri.as_str()) {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid JWT: aud is not the token endpoint.",
                );
            }
            let (iat, exp) = (
                claims["iat"].as_u64().unwrap_or(0),
                claims["exp"].as_u64().unwrap_or(0),
            );
            if exp <= now || iat > now + 300 || exp < iat || exp - iat > 3600 {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
                );
            }
            let scope = claims["scope"].as_str().unwrap_or("");
            if !scope
                .split(' ')
                .any(|s| s.starts_with("https://www.googleapis.com/auth/drive"))
            {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "Invalid OAuth scope or ID token audience provided.",
                );
            }
            match claims["sub"].as_str() {
                Some(sub) if inner.roots.contains_key(sub) => sub.to_string(),
                Some(_) => {
                    return token_error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized_client",
                        "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.",
                    );
                }
                None => sa.email.clone(),
            }
        }
        Some("refresh_token") => {
            let inner = d.inner.lock().unwrap();
            let client = form.get("client_id").and_then(|c| inner.clients.get(c));
            if client.is_none_or(|c| Some(&c.secret) != form.get("client_secret")) {
                return token_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "The OAuth client was not found.",
                );
            }
            match form
                .get("refresh_token")
                .and_then(|t| inner.refresh_tokens.get(t))
            {
                Some((user, false)) => user.clone(),
                _ => {
                    return token_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "Token has been expired or revoked.",
                    );
                }
            }
        }
        _ => {
            return token_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Invalid grant_type.",
            );
        }
    };
    if !d.inner.lock().unwrap().roots.contains_key(&user) {
        d.add_user(&user);
    }
    let lifetime = d.token_lifetime.load(Ordering::Relaxed);
    let token = format!("ya29.{}", fastrand::u64(..));
    d.inner.lock().unwrap().tokens.insert(
        token.clone(),
        Token {
            user,
            expires: Instant::now() + Duration::from_secs(lifetime),
        },
    );
    d.counts.tokens_issued.fetch_add(1, Ordering::Relaxed);
    json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"})
        .to_string()
        .into_response()
}
