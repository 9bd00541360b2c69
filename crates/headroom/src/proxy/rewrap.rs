//! `headroom proxy rewrap`: key rotation. Every object the proxy wrote
//! whose data key is wrapped under a KEK other than the key file's
//! `current` gets its data key unwrapped and wrapped again under
//! `current`, by a server-side copy of the object onto itself with the new
//! metadata: the ciphertext is never read or changed.
//!
//! A single-segment object is copied with CopyObject. A multipart object
//! keeps its parts (a listing reads its part count from its ETag): it is
//! copied part by part with UploadPartCopy, the part boundaries read from
//! its segment headers. Both copies are conditional on the ETag that was
//! read, so an object overwritten meanwhile is left alone and reported.
//! Objects are walked a listing page at a time: memory does not grow with
//! the bucket.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use futures::StreamExt;
use http::{HeaderMap, Method};

use super::envelope;
use super::keys::Keys;
use super::service::{meta_header, segments_of};
use super::upstream::{MAX_XML_BYTES, Upstream, read_bounded, set_header};
use super::xml;
use crate::store::bucket::S3Config;
use crate::telemetry::Failures;

/// Objects rewrapped at once.
const CONCURRENCY: usize = 8;

/// What `rewrap` is asked to do.
#[derive(Clone, Debug, Default)]
pub struct RewrapOptions {
    /// The upstream.
    pub upstream: S3Config,
    /// The key file.
    pub keys: std::path::PathBuf,
    /// Only these buckets (none: every bucket the credentials list).
    pub buckets: Vec<String>,
    /// Report what would be rewrapped; change nothing.
    pub dry_run: bool,
}

/// What `rewrap` did.
#[derive(Debug, Default)]
pub struct RewrapCounters {
    /// Objects looked at.
    pub scanned: AtomicU64,
    /// Rewrapped (or, in a dry run, to be).
    pub rewrapped: AtomicU64,
    /// Already under the current KEK.
    pub current: AtomicU64,
    /// Not written by the proxy.
    pub not_ours: AtomicU64,
    /// Could not be rewrapped.
    pub failures: Failures,
}

/// Runs a rewrap; the counters say how it went.
pub async fn run(options: &RewrapOptions) -> anyhow::Result<RewrapCounters> {
    let keys = Keys::load(&options.keys)?;
    let up = Upstream::new(&options.upstream.for_concurrency(CONCURRENCY))?;
    let buckets = if options.buckets.is_empty() {
        let body = up
            .xml(Method::GET, None, &[])
            .await
            .map_err(|e| anyhow::anyhow!("listing buckets: {e}"))?;
        xml::records(&body, "Buckets")
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .flatten()
            .filter(|(k, _)| k == "Name")
            .map(|(_, v)| v)
            .collect()
    } else {
        options.buckets.clone()
    };
    let counters = RewrapCounters::default();
    for bucket in &buckets {
        let mut token: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> = vec![("list-type", "2".into())];
            if let Some(t) = &token {
                q.push(("continuation-token", t.clone()));
            }
            let body = up
                .xml(Method::GET, Some(bucket), &q)
                .await
                .map_err(|e| anyhow::anyhow!("listing s3://{bucket}: {e}"))?;
            let keys_in_page: Vec<String> = xml::records(&body, "Contents")
                .map_err(anyhow::Error::msg)?
                .iter()
                .filter_map(|r| xml::field(r, "Key").map(str::to_string))
                .collect();
            let job = Rewrap {
                up: &up,
                keys: &keys,
                bucket,
                dry_run: options.dry_run,
                counters: &counters,
            };
            futures::stream::iter(keys_in_page)
                .for_each_concurrent(CONCURRENCY, |key| {
                    let job = &job;
                    async move {
                        job.counters.scanned.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = job.one(&key).await {
                            job.counters
                                .failures
                                .record(format!("s3://{bucket}/{key}"), e);
                        }
                    }
                })
                .await;
            match xml::text(&body, "NextContinuationToken") {
                Some(t) if xml::text(&body, "IsTruncated").as_deref() == Some("true") => {
                    token = Some(t)
                }
                _ => break,
            }
        }
    }
    Ok(counters)
}

struct Rewrap<'a> {
    up: &'a Upstream,
    keys: &'a Keys,
    bucket: &'a str,
    dry_run: bool,
    counters: &'a RewrapCounters,
}

impl Rewrap<'_> {
    async fn one(&self, key: &str) -> Result<(), String> {
        let head = self
            .up
            .send(
                Method::HEAD,
                Some(self.bucket),
                Some(key),
                &[],
                HeaderMap::new(),
                None,
            )
            .await
            .map_err(|e| format!("HEAD: {e}"))?;
        let h = head.headers();
        if meta_header(h, "headroom-enc") != Some("1") {
            self.counters.not_ours.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let kid = meta_header(h, "headroom-kid").ok_or("no KEK id in the metadata")?;
        let (current_id, current) = self.keys.current();
        if kid == current_id {
            self.counters.current.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let old = self.keys.kek(kid).ok_or_else(|| {
            format!("wrapped under KEK {kid:?}, which the key file does not hold")
        })?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let wrapped = meta_header(h, "headroom-key")
            .and_then(|k| b64.decode(k).ok())
            .ok_or("no wrapped key in the metadata")?;
        let data_key = envelope::unwrap_key(old, &wrapped).map_err(|e| e.to_string())?;
        if self.dry_run {
            self.counters.rewrapped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // The object's metadata with the new wrapped key and KEK id.
        let mut headers = HeaderMap::new();
        for (name, value) in h {
            let n = name.as_str();
            if n.starts_with("x-amz-meta-") || n == "content-type" {
                headers.insert(name.clone(), value.clone());
            }
        }
        set(&mut headers, "x-amz-meta-headroom-kid", current_id)?;
        set(
            &mut headers,
            "x-amz-meta-headroom-key",
            &b64.encode(envelope::wrap_key(current, &data_key)),
        )?;
        let etag = h
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let ct: u64 = h
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let source = format!("/{}/{}", self.bucket, super::upstream::encode_key(key));
        if segments_of(&etag) <= 1 {
            set(&mut headers, "x-amz-copy-source", &source)?;
            set(&mut headers, "x-amz-metadata-directive", "REPLACE")?;
            set(&mut headers, "x-amz-copy-source-if-match", &etag)?;
            let r = self
                .up
                .send(
                    Method::PUT,
                    Some(self.bucket),
                    Some(key),
                    &[],
                    headers,
                    None,
                )
                .await
                .map_err(|e| format!("copy onto itself: {e}"))?;
            failed_in_body(r).await?;
        } else {
            self.copy_parts(key, headers, &source, &etag, ct).await?;
        }
        self.counters.rewrapped.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A multipart object copied onto itself part by part, its segment
    /// boundaries read from the segment headers, so it keeps its parts.
    async fn copy_parts(
        &self,
        key: &str,
        headers: HeaderMap,
        source: &str,
        etag: &str,
        ct: u64,
    ) -> Result<(), String> {
        let r = self
            .up
            .send(
                Method::POST,
                Some(self.bucket),
                Some(key),
                &[("uploads", String::new())],
                headers,
                None,
            )
            .await
            .map_err(|e| format!("start the copy: {e}"))?;
        let answer = read_bounded(r, 64 << 10).await.map_err(|e| e.to_string())?;
        let upload = xml::text(&answer, "UploadId").ok_or("no UploadId in the answer")?;
        let copied = self.copy_segments(key, source, etag, ct, &upload).await;
        let complete = match copied {
            Ok(body) => {
                let len = body.len() as u64;
                self.up
                    .send(
                        Method::POST,
                        Some(self.bucket),
                        Some(key),
                        &[("uploadId", upload.clone())],
                        HeaderMap::new(),
                        Some(super::upstream::Body {
                            stream: reqwest::Body::from(body),
                            len,
                        }),
                    )
                    .await
                    .map_err(|e| format!("complete the copy: {e}"))
            }
            Err(e) => Err(e),
        };
        let result = match complete {
            Ok(r) => failed_in_body(r).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = self
                .up
                .send(
                    Method::DELETE,
                    Some(self.bucket),
                    Some(key),
                    &[("uploadId", upload)],
                    HeaderMap::new(),
                    None,
                )
                .await;
        }
        result
    }

    /// Copies each segment as a part; the Complete body.
    async fn copy_segments(
        &self,
        key: &str,
        source: &str,
        etag: &str,
        ct: u64,
        upload: &str,
    ) -> Result<String, String> {
        let mut xml_body = String::from("<CompleteMultipartUpload>");
        let mut at = 0u64;
        let mut number = 0u32;
        while at < ct {
            let mut pin = HeaderMap::new();
            set(&mut pin, "if-match", etag)?;
            let (_, header) = self
                .up
                .segment_header(self.bucket, key, at, pin)
                .await
                .map_err(|e| format!("read a segment header: {e}"))?;
            let (n, part) = envelope::read_header(&header).map_err(|e| e.to_string())?;
            let end = at + envelope::segment_len(n);
            if end > ct || part <= number {
                return Err("the object's segments do not add up to it".into());
            }
            number = part;
            let mut h = HeaderMap::new();
            set(&mut h, "x-amz-copy-source", source)?;
            set(
                &mut h,
                "x-amz-copy-source-range",
                &format!("bytes={at}-{}", end - 1),
            )?;
            set(&mut h, "x-amz-copy-source-if-match", etag)?;
            let r = self
                .up
                .send(
                    Method::PUT,
                    Some(self.bucket),
                    Some(key),
                    &[
                        ("partNumber", part.to_string()),
                        ("uploadId", upload.to_string()),
                    ],
                    h,
                    None,
                )
                .await
                .map_err(|e| format!("copy part {part}: {e}"))?;
            let answer = read_bounded(r, 64 << 10).await.map_err(|e| e.to_string())?;
            let part_etag = xml::text(&answer, "ETag").ok_or("no ETag for a copied part")?;
            xml_body.push_str(&format!(
                "<Part><PartNumber>{part}</PartNumber><ETag>{}</ETag></Part>",
                quick_xml::escape::escape(part_etag.as_str())
            ));
            at = end;
        }
        xml_body.push_str("</CompleteMultipartUpload>");
        Ok(xml_body)
    }
}

/// Sets a header; the error as rewrap reports it.
fn set(h: &mut HeaderMap, name: &'static str, value: &str) -> Result<(), String> {
    set_header(h, name, value).map_err(|e| e.to_string())
}

/// S3 may answer a copy or a Complete 200 and still fail, in its body.
async fn failed_in_body(r: reqwest::Response) -> Result<(), String> {
    let body = read_bounded(r, MAX_XML_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    match xml::text(&body, "Code") {
        Some(code) => Err(format!(
            "{code}: {}",
            xml::text(&body, "Message").unwrap_or_default()
        )),
        None => Ok(()),
    }
}
