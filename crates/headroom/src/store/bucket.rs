//! A bucket prefix of an object store as a store: S3 (and S3-compatible
//! servers), Google Cloud Storage or Azure Blob Storage, through
//! `object_store`.
//!
//! Signing, credentials and the HTTP clients are object_store's (each
//! cloud's configured from its usual environment: `AWS_*`, `GOOGLE_*`,
//! `AZURE_*`). headroom adds what a memory-capped copier needs on top: lazy
//! paginated listing into a byte-bounded channel, ranged reads that resume
//! where a broken stream stopped, and explicit multipart uploads (one part
//! per permit, each part retried on its own).
//!
//! The three differ in a few places, all here: S3 pages are fetched and
//! parsed by `s3_list` (a hostile key fails alone, not its page), the
//! others' through object_store's paginated listing; only S3 copies
//! server-side ([`BucketStore::copy_from`]); an Azure upload's metadata
//! goes with its block list (object_store's `MultipartStore` for Azure
//! takes none), and its parts are named by block ids, not ETags.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use headroom_governor::channel;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorage, GoogleCloudStorageBuilder};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, GetRange, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};

use super::location::Cloud;
use super::retry::{Backoff, Retry, with_retries};
use super::{Entry, ListError, Listed, StoreError};

/// Metadata key holding the source's modification time (seconds.nanos
/// since the epoch), as rclone does, so a re-run can tell what is current.
pub const MTIME_METADATA: &str = "mtime";
/// Metadata key holding the source file's permission bits in octal, as
/// rclone's metadata does, so a restore never widens them.
pub const MODE_METADATA: &str = "mode";

/// What a response body in flight holds in the HTTP client: hyper's read
/// buffer grows to about 408 KiB on a fast download, and a chunk not yet
/// consumed keeps an earlier buffer alive while hyper fills a new one.
/// `tests/reservations.rs` measured up to 1.1 MiB on a loaded machine.
/// Charged to every transfer that reads from S3.
pub const HTTP_READ_BUFFER: u64 = 3 << 19;

/// The largest answer to a server-side copy accepted.
const COPY_ANSWER_BYTES: usize = 64 << 10;

/// Keys per DeleteObjects request (S3's maximum).
pub const DELETE_BATCH_KEYS: usize = 1000;

/// Connection and retry settings, from flags and the environment. The
/// timeouts, retries and connection pool apply to every cloud; endpoint,
/// region and addressing are S3's (GCS and Azure take theirs from
/// object_store's `GOOGLE_*` and `AZURE_*` variables: `GOOGLE_BASE_URL`,
/// `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_USE_EMULATOR`, ...).
#[derive(Clone, Debug)]
pub struct S3Config {
    /// `--s3-endpoint`, else `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// `--s3-region`, else `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1.
    pub region: Option<String>,
    /// Virtual-hosted-style addressing (`bucket.host`) instead of path style.
    pub virtual_hosted: bool,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Retries inside one request (object_store's own, for transient errors).
    pub request_retries: usize,
    /// Idle connections kept per host; bounds the memory of the pool.
    pub max_idle_connections: usize,
}

/// The timeout of one S3 request unless told otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: None,
            virtual_hosted: false,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            request_retries: 2,
            max_idle_connections: 64,
        }
    }
}

impl S3Config {
    /// These settings with a connection pool sized for `concurrency`
    /// requests at once (at most 64 idle connections are kept).
    pub fn for_concurrency(&self, concurrency: usize) -> Self {
        S3Config {
            max_idle_connections: concurrency.clamp(1, 64),
            ..self.clone()
        }
    }

    /// The endpoint URL: the setting, else `AWS_ENDPOINT_URL_S3` /
    /// `AWS_ENDPOINT_URL`; `None` for AWS itself.
    pub fn endpoint(&self) -> Option<String> {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .filter(|e| !e.is_empty())
    }

    /// The region: the setting, else `AWS_REGION` / `AWS_DEFAULT_REGION`,
    /// else us-east-1.
    pub fn region_name(&self) -> String {
        self.region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_string())
    }

    /// The HTTP settings every cloud's client gets.
    fn client_options(&self) -> ClientOptions {
        ClientOptions::new()
            .with_timeout(self.request_timeout)
            .with_connect_timeout(Duration::from_secs(10))
            .with_pool_max_idle_per_host(self.max_idle_connections.max(1))
            .with_pool_idle_timeout(Duration::from_secs(30))
    }

    fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            max_retries: self.request_retries,
            retry_timeout: Duration::from_secs(120),
            ..Default::default()
        }
    }

    /// Builds a client for `bucket` of `cloud`.
    pub fn client(&self, cloud: Cloud, bucket: &str) -> Result<Client, StoreError> {
        let ctx = || format!("configure the {cloud:?} client for {bucket}");
        Ok(match cloud {
            Cloud::S3 => Client::S3(Arc::new(self.s3_client(bucket)?)),
            Cloud::Gcs => {
                // A base URL of plain http (an emulator) must be allowed
                // explicitly; Google's own is https.
                let builder = GoogleCloudStorageBuilder::from_env();
                let plain = |u: &str| u.starts_with("http://");
                let http = std::env::var("GOOGLE_BASE_URL").is_ok_and(|u| plain(&u))
                    || std::env::var("GOOGLE_SERVICE_ACCOUNT_KEY")
                        .ok()
                        .and_then(|k| serde_json::from_str::<serde_json::Value>(&k).ok())
                        .is_some_and(|k| k["gcs_base_url"].as_str().is_some_and(plain));
                let gcs = builder
                    .with_bucket_name(bucket)
                    .with_retry(self.retry_config())
                    .with_client_options(self.client_options().with_allow_http(http))
                    .build()
                    .map_err(|e| StoreError::permanent(ctx(), e))?;
                Client::Gcs(Arc::new(gcs))
            }
            Cloud::Azure => {
                let azure = MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .with_retry(self.retry_config())
                    .with_client_options(self.client_options())
                    .build()
                    .map_err(|e| StoreError::permanent(ctx(), e))?;
                Client::Azure(Arc::new(azure))
            }
        })
    }

    /// Builds an S3 client for `bucket`.
    pub fn s3_client(&self, bucket: &str) -> Result<AmazonS3, StoreError> {
        let ctx = || format!("configure S3 client for bucket {bucket}");
        let mut options = self.client_options();
        let endpoint = self.endpoint();
        let http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        if let Some(e) = &endpoint
            && !http
            && !e.starts_with("https://")
        {
            return Err(StoreError::permanent(
                ctx(),
                format!("endpoint {e:?} must start with http:// or https://"),
            ));
        }
        // The client options carry allow_http; setting it on the builder and then
        // replacing the options would lose it.
        options = options.with_allow_http(http);
        // AWS_CA_BUNDLE adds trust roots for https; plain http ignores it.
        if !http && let Ok(bundle) = std::env::var("AWS_CA_BUNDLE") {
            let pem = std::fs::read(&bundle).map_err(|e| {
                StoreError::permanent(ctx(), format!("read AWS_CA_BUNDLE {bundle}: {e}"))
            })?;
            let certs = object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
                StoreError::permanent(ctx(), format!("parse AWS_CA_BUNDLE {bundle}: {e}"))
            })?;
            for cert in certs {
                options = options.with_root_certificate(cert);
            }
        }
        let region = self.region_name();
        let retry = self.retry_config();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(region)
            .with_virtual_hosted_style_request(self.virtual_hosted)
            .with_retry(retry)
            .with_client_options(options);
        if let Some(e) = endpoint {
            builder = builder.with_endpoint(e);
        }
        builder.build().map_err(|e| StoreError::permanent(ctx(), e))
    }
}

/// Maps an object_store error: typed failures (not found, denied, invalid
/// path) are permanent; the generic kind (5xx, resets, timeouts, after
/// object_store's own retries) is worth another attempt.
pub fn store_error(context: impl Into<String>, e: object_store::Error) -> StoreError {
    let retryable = matches!(e, object_store::Error::Generic { .. });
    let message = match &e {
        object_store::Error::NotFound { .. } => "not found (no such key or bucket)".to_string(),
        object_store::Error::Precondition { .. } => {
            "source changed during the copy: its ETag is no longer the one listed".to_string()
        }
        other => other.to_string(),
    };
    StoreError {
        context: context.into(),
        message,
        retryable,
    }
}

/// One cloud's client for one bucket.
#[derive(Clone, Debug)]
pub enum Client {
    /// Amazon S3 or an S3-compatible server.
    S3(Arc<AmazonS3>),
    /// Google Cloud Storage (its XML API, which object_store speaks).
    Gcs(Arc<GoogleCloudStorage>),
    /// Azure Blob Storage.
    Azure(Arc<MicrosoftAzure>),
}

impl Client {
    fn objects(&self) -> &dyn ObjectStore {
        match self {
            Client::S3(c) => c.as_ref(),
            Client::Gcs(c) => c.as_ref(),
            Client::Azure(c) => c.as_ref(),
        }
    }

    fn uploads(&self) -> &dyn MultipartStore {
        match self {
            Client::S3(c) => c.as_ref(),
            Client::Gcs(c) => c.as_ref(),
            Client::Azure(c) => c.as_ref(),
        }
    }

    fn cloud(&self) -> Cloud {
        match self {
            Client::S3(_) => Cloud::S3,
            Client::Gcs(_) => Cloud::Gcs,
            Client::Azure(_) => Cloud::Azure,
        }
    }
}

/// A bucket prefix (or a single object: `only`).
#[derive(Clone, Debug)]
pub struct BucketStore {
    client: Client,
    /// For S3 listings (see `s3_list`), server-side copies and Azure block
    /// lists: requests signed by `client`.
    http: reqwest::Client,
    bucket: String,
    /// Key prefix without surrounding `/`; empty for the whole bucket.
    prefix: String,
    only: Option<String>,
}

impl BucketStore {
    /// A store over `prefix` (a "directory") of `bucket`.
    pub fn new(client: Client, bucket: String, prefix: String) -> Self {
        BucketStore {
            client,
            http: listing_client(),
            bucket,
            prefix,
            only: None,
        }
    }

    /// Resolves a source location: a `dir` location (written with a
    /// trailing `/`) is the prefix; otherwise, if `prefix` names an object,
    /// a store of just that object (as rclone does; a warning says so when
    /// objects below `prefix/` exist too), else the prefix as a directory.
    pub async fn source(
        client: Client,
        bucket: String,
        prefix: String,
        dir: bool,
    ) -> Result<Self, StoreError> {
        if !prefix.is_empty() && !dir {
            let path = parse_path(&prefix)?;
            match client.objects().head(&path).await {
                Ok(_) => {
                    let below = client.objects().list(Some(&path)).next().await;
                    if matches!(below, Some(Ok(_))) {
                        let scheme = client.cloud().scheme();
                        tracing::warn!(
                            "{scheme}://{bucket}/{prefix} is an object and also a prefix with objects below it; copying the object only (write {scheme}://{bucket}/{prefix}/ for the objects below)"
                        );
                    }
                    let (dir, name) = prefix.rsplit_once('/').unwrap_or(("", &prefix));
                    return Ok(BucketStore {
                        client,
                        http: listing_client(),
                        bucket,
                        prefix: dir.to_string(),
                        only: Some(name.to_string()),
                    });
                }
                // Not an object (some servers answer a "directory" key with an
                // error rather than 404): treat it as a prefix. A real problem,
                // such as a missing bucket, surfaces when the listing starts.
                Err(e) => tracing::debug!(
                    "{}://{bucket}/{prefix} is not a single object: {e}",
                    client.cloud().scheme()
                ),
            }
        }
        Ok(BucketStore::new(client, bucket, prefix))
    }

    /// Whether this store is one object (a source named by its key).
    pub fn is_single(&self) -> bool {
        self.only.is_some()
    }

    /// Which cloud the bucket is in.
    pub fn cloud(&self) -> Cloud {
        self.client.cloud()
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// The object_store path of `key`; keys S3 cannot hold are errors.
    pub fn path_of(&self, key: &str) -> Result<Path, StoreError> {
        parse_path(&self.full_key(key))
    }

    /// `s3://bucket/prefix/key` (`gs://`, `az://`).
    pub fn url_of(&self, key: &str) -> String {
        format!(
            "{}://{}/{}",
            self.cloud().scheme(),
            self.bucket,
            self.full_key(key)
        )
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Fails when the bucket cannot be listed (no such bucket, denied):
    /// one page request, whatever the keys in it are.
    pub async fn check_access(&self) -> Result<(), StoreError> {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        self.fetch_page(&prefix, None, None).await.map(|_| ())
    }

    /// One page of keys under `prefix` (with its trailing `/`, or empty):
    /// the one `token` names, else the first after `start_after` (a full
    /// key), else the first. At most 1,000 keys.
    async fn fetch_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        start_after: Option<&str>,
    ) -> Result<super::s3_list::Page, StoreError> {
        let lister: &dyn PaginatedListStore = match &self.client {
            Client::S3(c) => {
                return super::s3_list::fetch(c, &self.http, prefix, token, start_after).await;
            }
            Client::Gcs(c) => c.as_ref(),
            Client::Azure(c) => c.as_ref(),
        };
        let options = PaginatedListOptions {
            offset: start_after.map(str::to_string),
            max_keys: Some(1000),
            page_token: token.map(str::to_string),
            ..Default::default()
        };
        let page = lister
            .list_paginated((!prefix.is_empty()).then_some(prefix), options)
            .await
            .map_err(|e| store_error(format!("list {}", self.url_of(prefix)), e))?;
        Ok(super::s3_list::Page {
            items: page
                .result
                .objects
                .into_iter()
                .map(|o| super::s3_list::Listed::Object {
                    key: o.location.to_string(),
                    size: o.size,
                    last_modified: Some(SystemTime::from(o.last_modified)),
                    etag: o.e_tag.map(|e| e.trim_matches('"').to_string()),
                })
                .collect(),
            truncated: page.page_token.is_some(),
            next_token: page.page_token,
        })
    }

    /// See [`Store::list`](super::Store::list).
    pub async fn list(
        &self,
        tx: channel::Sender<Listed>,
        retry: &Retry,
        range: Option<&super::KeyRange>,
    ) -> Result<(), StoreError> {
        let range = range.cloned().unwrap_or_default();
        if let Some(only) = &self.only {
            let entry = with_retries(retry, || self.stat(only))
                .await?
                .ok_or_else(|| StoreError::permanent(self.url_of(only), "no such object"))?;
            if range.contains(&entry.key) {
                let _ = tx.send(Ok(entry)).await;
            }
            return Ok(());
        }
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        // Start after the range's first key; then page by continuation
        // token, and a failed page is asked for again with the same token,
        // so a retry neither repeats nor skips an object. One token, not a
        // set of keys: memory stays constant. S3 lists in key order, so
        // the first key past the range's end ends the listing.
        let start_after = range.after.as_ref().map(|k| format!("{strip}{k}"));
        let mut token: Option<String> = None;
        let mut listed_any = false;
        let mut backoff = Backoff::new(retry);
        loop {
            let fetched = self
                .fetch_page(&strip, token.as_deref(), start_after.as_deref())
                .await;
            let page = match fetched {
                Ok(page) => page,
                Err(e) if backoff.retry(&e).await => continue,
                // Nothing listed yet (no such bucket, bad credentials): the
                // listing cannot start at all.
                Err(e) if !listed_any => {
                    return Err(StoreError {
                        context: format!("list {}", self.url_of("")),
                        ..e
                    });
                }
                Err(e) => {
                    let listed = Err(ListError {
                        path: self.url_of(""),
                        message: format!("listing stopped early: {}", e.message),
                        passed_over: false,
                    });
                    let _ = tx.send(listed).await;
                    return Ok(());
                }
            };
            listed_any = true;
            for item in page.items {
                let Some(listed) = self.entry_of(item, &strip) else {
                    continue;
                };
                if let Ok(e) = &listed {
                    if range.is_past(&e.key) {
                        return Ok(());
                    }
                    // Azure starts a listing at its offset, not after it.
                    if !range.contains(&e.key) {
                        continue;
                    }
                }
                if tx.send(listed).await.is_err() {
                    return Ok(());
                }
            }
            match page.next_token {
                Some(next) if page.truncated => token = Some(next),
                _ => return Ok(()),
            }
        }
    }

    /// What one listed key is to a copy: an entry relative to the prefix,
    /// an error for a key this client cannot name (the listing goes on),
    /// or nothing for a folder marker (`dir/`, what consoles create for an
    /// empty folder: directories are implied by keys).
    fn entry_of(&self, item: super::s3_list::Listed, strip: &str) -> Option<Listed> {
        match item {
            super::s3_list::Listed::Object {
                key,
                size,
                last_modified,
                etag,
            } => {
                let rel = key.strip_prefix(strip)?;
                if rel.is_empty() || rel.ends_with('/') {
                    return None;
                }
                Some(match Path::parse(&key) {
                    Ok(_) => Ok(Entry {
                        key: rel.to_string(),
                        size,
                        mtime: last_modified,
                        etag,
                        mode: None,
                        ..Entry::default()
                    }),
                    // `..`, `.`, empty segments, control characters.
                    Err(_) => Err(ListError {
                        path: format!("{}://{}/{key}", self.cloud().scheme(), self.bucket),
                        message: "a key with a `.`, `..` or empty segment or a control character, which this client cannot read or write: skipped".into(),
                        passed_over: false,
                    }),
                })
            }
            super::s3_list::Listed::Unreadable { shown, why } => Some(Err(ListError {
                path: format!("{}://{}/{shown}", self.cloud().scheme(), self.bucket),
                message: format!("an unreadable key ({why}): skipped"),
                passed_over: false,
            })),
        }
    }

    /// See [`Store::stat`](super::Store::stat). Reads the stored source
    /// mtime from the object's metadata (a HEAD request).
    pub async fn stat(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let path = self.path_of(key)?;
        let options = GetOptions {
            head: true,
            ..Default::default()
        };
        match self.client.objects().get_opts(&path, options).await {
            Ok(r) => Ok(Some(entry_of(
                key.to_string(),
                &r.meta,
                Some(&r.attributes),
            ))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(format!("stat {}", self.url_of(key)), e)),
        }
    }

    /// A lazily opened ranged read of `key`, pinned to the version with
    /// `etag` (the listed one) when it is known: every GET of the range,
    /// the first and any resumed one, carries `If-Match`, so a read never
    /// mixes two versions of an object.
    pub fn open_range(&self, key: &str, etag: Option<&str>, range: Range<u64>) -> BucketRange {
        BucketRange {
            store: self.clone(),
            key: key.to_string(),
            etag: etag.map(|e| format!("\"{e}\"")),
            pos: range.start,
            end: range.end,
            stream: None,
            pending: Bytes::new(),
            mtime: None,
            mode: None,
        }
    }

    /// Uploads `data` as the whole object in one PUT, recording `mtime`.
    /// Returns the ETag the server computed.
    pub async fn put(
        &self,
        key: &str,
        data: Bytes,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<Option<String>, StoreError> {
        let path = self.path_of(key)?;
        let options = PutOptions {
            attributes: metadata_attributes(mtime, mode),
            ..Default::default()
        };
        self.client
            .objects()
            .put_opts(&path, PutPayload::from(data), options)
            .await
            .map(|r| r.e_tag.map(|e| e.trim_matches('"').to_string()))
            .map_err(|e| store_error(format!("upload {}", self.url_of(key)), e))
    }

    /// Starts a multipart upload; returns its id. The metadata goes with
    /// the start, except on Azure, where it goes with the block list
    /// ([`complete_multipart`](Self::complete_multipart)).
    pub async fn create_multipart(
        &self,
        key: &str,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<String, StoreError> {
        let path = self.path_of(key)?;
        let attributes = match self.client {
            Client::Azure(_) => Attributes::new(),
            Client::S3(_) | Client::Gcs(_) => metadata_attributes(mtime, mode),
        };
        let options = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        self.client
            .uploads()
            .create_multipart_opts(&path, options)
            .await
            .map_err(|e| store_error(format!("start multipart upload of {}", self.url_of(key)), e))
    }

    /// Uploads part `index` (0-based) of upload `id`.
    pub async fn put_part(
        &self,
        key: &str,
        id: &str,
        index: usize,
        data: Bytes,
    ) -> Result<PartId, StoreError> {
        let path = self.path_of(key)?;
        self.client
            .uploads()
            .put_part(&path, &id.to_string(), index, PutPayload::from(data))
            .await
            .map_err(|e| {
                store_error(
                    format!("upload part {} of {}", index + 1, self.url_of(key)),
                    e,
                )
            })
    }

    /// Whether a part's id is the ETag its server computed (S3, GCS: the
    /// MD5 of a part), not a name of headroom's (an Azure block id).
    pub fn parts_have_etags(&self) -> bool {
        !matches!(self.client, Client::Azure(_))
    }

    /// Completes upload `id` from its parts in order; on Azure the block
    /// list carries `mtime` and `mode` (elsewhere the start did).
    pub async fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        parts: Vec<PartId>,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        if let Client::Azure(azure) = &self.client {
            return self
                .put_block_list(azure, key, &path, parts, mtime, mode)
                .await;
        }
        self.client
            .uploads()
            .complete_multipart(&path, &id.to_string(), parts)
            .await
            .map(|_| ())
            .map_err(|e| {
                store_error(
                    format!("complete multipart upload of {}", self.url_of(key)),
                    e,
                )
            })
    }

    /// Commits an Azure blob from its blocks with its metadata: Put Block
    /// List through a SAS URL object_store signs (a SAS authorizes the
    /// blob, so the `comp` parameter and the `x-ms-meta-*` headers go
    /// unsigned). With credentials that cannot sign a SAS, the blocks are
    /// committed by object_store without the metadata, and the blob's
    /// mtime is its Last-Modified.
    async fn put_block_list(
        &self,
        azure: &MicrosoftAzure,
        key: &str,
        path: &Path,
        parts: Vec<PartId>,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<(), StoreError> {
        use base64::Engine;
        let what = || format!("complete the block list of {}", self.url_of(key));
        let mut url = match azure
            .signed_url(http::Method::PUT, path, Duration::from_secs(900))
            .await
        {
            Ok(url) => url,
            Err(e) => {
                tracing::debug!("{}: no SAS ({e}); committing without metadata", what());
                return azure
                    .complete_multipart(path, &String::new(), parts)
                    .await
                    .map(|_| ())
                    .map_err(|e| store_error(what(), e));
            }
        };
        url.query_pairs_mut().append_pair("comp", "blocklist");
        let mut body = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for part in &parts {
            let id = base64::engine::general_purpose::STANDARD.encode(&part.content_id);
            body.push_str(&format!("<Latest>{id}</Latest>"));
        }
        body.push_str("</BlockList>");
        let mut request = self
            .http
            .put(url)
            .timeout(Duration::from_secs(300))
            .header("x-ms-version", "2021-08-06")
            .header("content-type", "application/xml")
            .body(body);
        for (name, value) in metadata_attributes(mtime, mode).iter() {
            if let Attribute::Metadata(name) = name {
                request = request.header(format!("x-ms-meta-{name}"), value.to_string());
            }
        }
        let response = request
            .send()
            .await
            .map_err(|e| StoreError::transient(what(), e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let answer = super::s3_list::read_bounded(response, COPY_ANSWER_BYTES)
            .await
            .unwrap_or_default();
        let code = super::s3_list::tag_text(&answer, "Code").unwrap_or_default();
        Err(StoreError {
            context: what(),
            message: format!("{status}: {code}"),
            retryable: status.is_server_error() || status.as_u16() == 429,
        })
    }

    /// Copies `key` of `src` (another prefix or bucket on the same
    /// endpoint) into this store's `key` inside S3: `CopyObject`, or with
    /// `part` `Some((upload id, part index, range))` one `UploadPartCopy`.
    /// `etag` pins the version listed (`x-amz-copy-source-if-match`); a
    /// whole-object copy replaces the metadata with `mtime` and `mode`.
    /// Returns the ETag S3 computed.
    pub async fn copy_from(
        &self,
        src: &BucketStore,
        key: &str,
        etag: Option<&str>,
        meta: (Option<SystemTime>, Option<u32>),
        part: Option<(&str, usize, Range<u64>)>,
    ) -> Result<String, StoreError> {
        use http::{HeaderName, HeaderValue};
        let what = || match &part {
            Some((_, i, _)) => format!(
                "copy part {} of {} to {} (server-side)",
                i + 1,
                src.url_of(key),
                self.url_of(key)
            ),
            None => format!(
                "copy {} to {} (server-side)",
                src.url_of(key),
                self.url_of(key)
            ),
        };
        let bad = |e: String| StoreError::permanent(what(), e);
        let header = |v: String| HeaderValue::from_str(&v).map_err(|e| bad(e.to_string()));
        let source = format!("/{}/{}", src.bucket, uri_encode(&src.full_key(key)));
        let mut options = SignedUrlOptions::default().with_signed_header(
            HeaderName::from_static("x-amz-copy-source"),
            header(source)?,
        );
        if let Some(etag) = etag {
            options = options.with_signed_header(
                HeaderName::from_static("x-amz-copy-source-if-match"),
                header(format!("\"{etag}\""))?,
            );
        }
        match &part {
            Some((id, index, range)) => {
                options = options
                    .with_query([
                        ("partNumber", (index + 1).to_string()),
                        ("uploadId", id.to_string()),
                    ])
                    .with_signed_header(
                        HeaderName::from_static("x-amz-copy-source-range"),
                        header(format!("bytes={}-{}", range.start, range.end - 1))?,
                    );
            }
            None => {
                options = options.with_signed_header(
                    HeaderName::from_static("x-amz-metadata-directive"),
                    HeaderValue::from_static("REPLACE"),
                );
                for (name, value) in metadata_headers(meta.0, meta.1) {
                    options = options.with_signed_header(name, header(value)?);
                }
            }
        }
        let path = self.path_of(key)?;
        let (Client::S3(client), Client::S3(_)) = (&self.client, &src.client) else {
            return Err(bad("only S3 copies server-side".into()));
        };
        let url = client
            .signed_url_opts(http::Method::PUT, &path, Duration::from_secs(900), &options)
            .await
            .map_err(|e| bad(e.to_string()))?;
        // S3 answers a large copy only once it is done (sending spaces
        // meanwhile): longer than a listing page, as long as the URL holds.
        let mut request = self.http.put(url).timeout(Duration::from_secs(900));
        for (name, value) in &options.signed_headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| StoreError::transient(what(), e))?;
        let status = response.status();
        // A CopyObjectResult or an Error: a few hundred bytes, within the
        // object overhead the transfer's permit pays.
        let body = super::s3_list::read_bounded(response, COPY_ANSWER_BYTES)
            .await
            .map_err(|message| StoreError::transient(what(), message))?;
        // A copy can fail after its 200 has been sent: the body says so.
        let code = super::s3_list::tag_text(&body, "Code");
        if !status.is_success() || body.windows(7).any(|w| w == b"<Error>") {
            let code = code.unwrap_or_default();
            return Err(StoreError {
                context: what(),
                message: match code.as_str() {
                    "PreconditionFailed" => {
                        "source changed during the copy: its ETag is no longer the one listed"
                            .to_string()
                    }
                    _ => format!("{status}: {code}"),
                },
                retryable: status.is_server_error()
                    || status.as_u16() == 429
                    || ["InternalError", "SlowDown", "ServiceUnavailable"].contains(&code.as_str()),
            });
        }
        super::s3_list::tag_text(&body, "ETag")
            .map(|e| e.replace("&quot;", "").trim_matches('"').to_string())
            .ok_or_else(|| bad("the answer has no ETag".into()))
    }

    /// Deletes up to [`DELETE_BATCH_KEYS`] keys with one DeleteObjects
    /// request (object_store sends them in one); what happened to each.
    pub async fn delete(&self, keys: &[String]) -> Result<Vec<super::Deleted>, StoreError> {
        use super::Deleted;
        if keys.len() > DELETE_BATCH_KEYS {
            return Err(StoreError::permanent(
                format!("delete from {}", self.url_of("")),
                format!(
                    "{} keys in one batch, more than {DELETE_BATCH_KEYS}",
                    keys.len()
                ),
            ));
        }
        let mut out: Vec<Option<Deleted>> = Vec::with_capacity(keys.len());
        let mut paths = Vec::with_capacity(keys.len());
        for key in keys {
            match self.path_of(key) {
                Ok(p) => {
                    paths.push(Ok(p));
                    out.push(None);
                }
                Err(e) => out.push(Some(Deleted::Failed(e.message))),
            }
        }
        let results: Vec<_> = self
            .client
            .objects()
            .delete_stream(futures::stream::iter(paths).boxed())
            .collect()
            .await;
        let mut results = results.into_iter();
        Ok(out
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| match results.next() {
                    Some(Ok(_)) => Deleted::Deleted,
                    Some(Err(object_store::Error::NotFound { .. })) => Deleted::Vanished,
                    Some(Err(e)) => Deleted::Failed(format!("delete: {e}")),
                    None => Deleted::Failed("delete: no answer for this key".into()),
                })
            })
            .collect())
    }

    /// Aborts upload `id`, so no incomplete upload (and its storage) is
    /// left behind.
    pub async fn abort_multipart(&self, key: &str, id: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        self.client
            .uploads()
            .abort_multipart(&path, &id.to_string())
            .await
            .map_err(|e| store_error(format!("abort multipart upload of {}", self.url_of(key)), e))
    }
}

/// The HTTP client listings are fetched with: the timeouts and trust
/// roots (`AWS_CA_BUNDLE`) that object_store's client has.
fn listing_client() -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(2);
    if let Ok(bundle) = std::env::var("AWS_CA_BUNDLE")
        && let Ok(pem) = std::fs::read(&bundle)
        && let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem)
    {
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().unwrap_or_default()
}

fn parse_path(key: &str) -> Result<Path, StoreError> {
    Path::parse(key).map_err(|e| StoreError::permanent(format!("key {key:?}"), e))
}

fn entry_of(key: String, meta: &ObjectMeta, attributes: Option<&Attributes>) -> Entry {
    let stored =
        |name: &'static str| attributes.and_then(|a| a.get(&Attribute::Metadata(name.into())));
    let mtime = stored(MTIME_METADATA)
        .and_then(|v| parse_mtime(v.as_ref()))
        .or_else(|| Some(SystemTime::from(meta.last_modified)));
    let mode = stored(MODE_METADATA)
        .and_then(|v| u32::from_str_radix(v.as_ref(), 8).ok())
        .map(|m| m & 0o777);
    Entry {
        key,
        size: meta.size,
        mtime,
        etag: meta.e_tag.as_ref().map(|e| e.trim_matches('"').to_string()),
        mode,
        ..Entry::default()
    }
}

/// The `x-amz-meta-*` headers [`metadata_attributes`] becomes.
fn metadata_headers(
    mtime: Option<SystemTime>,
    mode: Option<u32>,
) -> Vec<(http::HeaderName, String)> {
    metadata_attributes(mtime, mode)
        .iter()
        .filter_map(|(k, v)| match k {
            Attribute::Metadata(name) => {
                http::HeaderName::from_bytes(format!("x-amz-meta-{name}").as_bytes())
                    .ok()
                    .map(|h| (h, v.to_string()))
            }
            _ => None,
        })
        .collect()
}

/// `key` percent-encoded for `x-amz-copy-source`, `/` kept.
fn uri_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn metadata_attributes(mtime: Option<SystemTime>, mode: Option<u32>) -> Attributes {
    let mut a = mtime_attributes(mtime);
    if let Some(m) = mode {
        a.insert(
            Attribute::Metadata(MODE_METADATA.into()),
            AttributeValue::from(format!("{:o}", m & 0o777)),
        );
    }
    a
}

fn mtime_attributes(mtime: Option<SystemTime>) -> Attributes {
    let mut a = Attributes::new();
    if let Some(t) = mtime.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        a.insert(
            Attribute::Metadata(MTIME_METADATA.into()),
            AttributeValue::from(format!("{}.{:09}", t.as_secs(), t.subsec_nanos())),
        );
    }
    a
}

/// Parses `secs[.fraction]`.
pub fn parse_mtime(s: &str) -> Option<SystemTime> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        format!("{digits:0<9}").parse().ok()?
    };
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Sequential reads over a ranged GET. A broken stream is dropped and the
/// next read issues a new ranged GET from where it stopped.
pub struct BucketRange {
    store: BucketStore,
    key: String,
    /// `If-Match` for every GET, quoted.
    etag: Option<String>,
    pos: u64,
    end: u64,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    /// The unread tail of the last network chunk.
    pending: Bytes,
    mtime: Option<SystemTime>,
    mode: Option<u32>,
}

impl BucketRange {
    /// The source's modification time as stored in its metadata (or its
    /// LastModified), known once the first read has opened the GET.
    pub fn mtime(&self) -> Option<SystemTime> {
        self.mtime
    }

    /// The source's permission bits as stored in its metadata, known once
    /// the first read has opened the GET.
    pub fn mode(&self) -> Option<u32> {
        self.mode
    }

    /// Reads into `buf[at..]`; see [`RangeReader::read`](super::RangeReader::read).
    pub async fn read(
        &mut self,
        mut buf: Vec<u8>,
        at: usize,
    ) -> (Vec<u8>, Result<usize, StoreError>) {
        let r = self.fill(&mut buf[at..]).await;
        (buf, r)
    }

    async fn fill(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        let room = buf.len();
        if room == 0 {
            return Ok(0);
        }
        while self.pending.is_empty() {
            if self.pos >= self.end {
                return Ok(0);
            }
            if self.stream.is_none() {
                self.open().await?;
            }
            let stream = self.stream.as_mut().expect("opened");
            match stream.next().await {
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(e)) => {
                    self.stream = None;
                    return Err(store_error(
                        format!("download {}", self.store.url_of(&self.key)),
                        e,
                    ));
                }
                None => {
                    self.stream = None;
                    return Err(super::ended_early(
                        format!("download {}", self.store.url_of(&self.key)),
                        self.end - self.pos,
                    ));
                }
            }
        }
        Ok(super::drain(&mut self.pending, buf, &mut self.pos))
    }

    async fn open(&mut self) -> Result<(), StoreError> {
        let path = self.store.path_of(&self.key)?;
        let options = GetOptions {
            range: Some(GetRange::Bounded(self.pos..self.end)),
            if_match: self.etag.clone(),
            ..Default::default()
        };
        let r = self
            .store
            .client
            .objects()
            .get_opts(&path, options)
            .await
            .map_err(|e| store_error(format!("download {}", self.store.url_of(&self.key)), e))?;
        if self.mtime.is_none() {
            let stored = entry_of(String::new(), &r.meta, Some(&r.attributes));
            (self.mtime, self.mode) = (stored.mtime, stored.mode);
        }
        self.stream = Some(r.into_stream());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtime_metadata_round_trips_to_the_nanosecond() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let attrs = mtime_attributes(Some(t));
        let v = attrs
            .get(&Attribute::Metadata(MTIME_METADATA.into()))
            .unwrap();
        assert_eq!(v.as_ref(), "1700000000.123456789");
        assert_eq!(parse_mtime(v.as_ref()), Some(t));
        assert_eq!(
            parse_mtime("1700000000.5"),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000))
        );
        assert_eq!(
            parse_mtime("1700000000"),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 0))
        );
        assert_eq!(parse_mtime("soon"), None);
    }
}
