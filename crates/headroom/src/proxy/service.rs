//! The S3 operations the proxy serves (s3s checks every request's SigV4
//! signature, aws-chunked bodies included, against the key file's
//! credentials before any of this runs). Every operation not written here
//! answers s3s's `NotImplemented`: nothing passes through unencrypted.
//!
//! Each request is admitted by the governor for the bytes it holds (see
//! [`footprint`]) before it touches the upstream; when the budget is taken
//! for longer than [`ADMISSION_WAIT`], it is answered `503 SlowDown` with
//! `Retry-After`, which every S3 client retries.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use headroom_governor::{Governor, Permit};
use http::{HeaderMap, Method};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::envelope::{self, FRAME, HEADER, Opener, Sealer, SegmentId, TAG};
use super::keys::Keys;
use super::uploads::UploadId;
use super::upstream::{Body, Upstream, set_header, upstream_error};
use super::xml;

/// S3's smallest part but the last.
const MIN_PART: u64 = 5 << 20;

/// Splits a permit into one of `first` bytes and the rest.
fn split_permit(mut permit: Permit, first: u64) -> (Permit, Permit) {
    let rest = permit.split(permit.bytes() - first);
    (permit, rest)
}

fn body_len(content_length: Option<i64>) -> S3Result<u64> {
    content_length
        .and_then(|l| u64::try_from(l).ok())
        .ok_or_else(|| S3Error::new(S3ErrorCode::MissingContentLength))
}

/// How long a request waits for its bytes before it is told to slow down:
/// long enough for a request in flight to finish a frame or two and hand
/// its bytes on (a burst is absorbed), short enough that a client is never
/// held without an answer while the proxy is full.
pub const ADMISSION_WAIT: Duration = Duration::from_millis(500);

/// What the proxy answers in `Retry-After` with a SlowDown.
const RETRY_AFTER_SECS: u64 = 1;

/// Metadata keys (after `x-amz-meta-`) of an encrypted object.
const META_ENC: &str = "headroom-enc";
const META_KID: &str = "headroom-kid";
const META_KEY: &str = "headroom-key";
const META_OID: &str = "headroom-oid";

/// Bytes every request holds besides its data: the request's parsing and
/// signature check, the upstream request's headers and signing, the
/// response's headers, the task.
pub const REQUEST_OVERHEAD: u64 = 128 << 10;
/// What a body in flight holds in the HTTP stack on its way in or out
/// (hyper's read buffer, a chunk not yet consumed): as `copy` measured for
/// S3 reads.
pub const HTTP_BUFFER: u64 = crate::store::bucket::HTTP_READ_BUFFER;

/// What one operation holds at most, by kind.
pub mod footprint {
    use super::*;

    /// A PUT: the client body's HTTP buffer, the frame being filled, the
    /// sealed frame on its way upstream, and the upstream request's
    /// buffers.
    pub const PUT: u64 = REQUEST_OVERHEAD + 2 * HTTP_BUFFER + 2 * (FRAME + TAG);
    /// A GET: the upstream body's HTTP buffer, the frame being opened, the
    /// plaintext on its way to the client, and the client response's
    /// buffers.
    pub const GET: u64 = REQUEST_OVERHEAD + 2 * HTTP_BUFFER + 2 * (FRAME + TAG);
    /// A listing: the upstream's XML answer (bounded), its parsed entries
    /// and the XML written back.
    pub const LIST: u64 = REQUEST_OVERHEAD + 3 * super::super::upstream::MAX_XML_BYTES as u64;
    /// Anything else: a HEAD, a DELETE, a bucket operation.
    pub const SMALL: u64 = REQUEST_OVERHEAD;
    /// The most one request holds: a listing, or a copy (a GET feeding a
    /// PUT). The budget must hold it beside the connections' charges, or
    /// a request would be clamped to less than it holds.
    pub const LARGEST: u64 = if LIST > GET + PUT { LIST } else { GET + PUT };
}

/// The proxy's S3 service.
pub struct Proxy {
    up: Upstream,
    keys: Arc<Keys>,
    gov: Governor,
    pub(crate) stats: Arc<super::metrics::Stats>,
}

impl Proxy {
    /// A proxy in front of `up`, encrypting under `keys`, within `gov`.
    pub fn new(up: Upstream, keys: Arc<Keys>, gov: Governor) -> Self {
        Proxy {
            up,
            keys,
            gov,
            stats: Arc::default(),
        }
    }

    /// Admits a request of `bytes`, or answers SlowDown.
    async fn admit(&self, bytes: u64, tag: &'static str) -> S3Result<Permit> {
        match tokio::time::timeout(ADMISSION_WAIT, self.gov.acquire(bytes, tag)).await {
            Ok(p) => Ok(p),
            Err(_) => {
                self.stats.slow_down(bytes);
                let mut e = S3Error::with_message(
                    S3ErrorCode::SlowDown,
                    "the proxy's memory budget is in use; retry shortly",
                );
                e.set_status_code(http::StatusCode::SERVICE_UNAVAILABLE);
                let mut h = HeaderMap::new();
                h.insert(http::header::RETRY_AFTER, RETRY_AFTER_SECS.into());
                e.set_headers(h);
                Err(e)
            }
        }
    }
}

fn bad(code: S3ErrorCode, msg: impl Into<String>) -> S3Error {
    S3Error::with_message(code, msg.into())
}

/// The ETag clients see for an upstream ETag: the ciphertext's, marked so
/// that no client takes it for the MD5 of the plaintext (a single PUT's
/// `-0`; multipart ETags already carry their part count).
pub(super) fn client_etag(upstream: &str) -> ETag {
    let e = upstream.trim_matches('"');
    ETag::Strong(if e.contains('-') {
        e.to_string()
    } else {
        format!("{e}-0")
    })
}

/// The upstream ETag a client's ETag stands for.
fn upstream_etag(client: &ETag) -> String {
    let v = client.value();
    v.strip_suffix("-0").unwrap_or(v).to_string()
}

/// A conditional header for the upstream, translated.
fn condition(c: &ETagCondition) -> String {
    match c {
        ETagCondition::Any => "*".to_string(),
        ETagCondition::ETag(e) => format!("\"{}\"", upstream_etag(e)),
    }
}

/// `If-Match` / `If-None-Match` for the upstream, translated.
fn conditions(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<HeaderMap> {
    let mut h = HeaderMap::new();
    for (name, c) in [("if-match", if_match), ("if-none-match", if_none_match)] {
        if let Some(c) = c {
            set_header(&mut h, name, &condition(c))?;
        }
    }
    Ok(h)
}

/// A read's conditions: the ETag ones translated, the time ones as given
/// (the upstream's Last-Modified is the object's).
fn read_conditions(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<HeaderMap> {
    let mut h = conditions(if_match, if_none_match)?;
    for (name, t) in [
        ("if-modified-since", if_modified_since),
        ("if-unmodified-since", if_unmodified_since),
    ] {
        if let Some(t) = t {
            set_header(&mut h, name, &http_date(t)?)?;
        }
    }
    Ok(h)
}

/// Segments of an upstream object: its ETag's part count, else 1.
pub(super) fn segments_of(etag: &str) -> u64 {
    etag.trim_matches('"')
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1)
}

/// What an encrypted object's metadata says about its envelope.
struct EnvelopeMeta {
    data_key: [u8; 32],
    object: [u8; envelope::OBJECT_ID],
}

/// The `x-amz-meta-NAME` header of an upstream answer.
pub(super) fn meta_header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(format!("x-amz-meta-{name}"))
        .and_then(|v| v.to_str().ok())
}

/// An upstream read set up for a GET.
struct Read {
    response: reqwest::Response,
    /// The object's plaintext length.
    plaintext: u64,
    /// The plaintext range asked for, if one was.
    range: Option<std::ops::Range<u64>>,
    /// The header of the segment the response starts inside of, and the
    /// frame it starts at; `None` when the response starts at a header.
    opener: Option<([u8; HEADER as usize], u64)>,
    /// Plaintext bytes to drop from the first frame.
    skip: usize,
}

/// One part of a multipart upload, as [`Proxy::part_target`] found it.
struct PartTarget {
    data_key: [u8; 32],
    segment: SegmentId,
    query: [(&'static str, String); 2],
}

/// What [`Proxy::open_plaintext`] found: the upstream answer's headers
/// (of the first request, which carry the metadata), the object's ETag and
/// plaintext length, the range served and its length.
struct Opened {
    headers: reqwest::header::HeaderMap,
    etag: String,
    plaintext: u64,
    range: Option<std::ops::Range<u64>>,
    len: u64,
}

impl Proxy {
    /// Sets up a ranged GET: the first header (and the object's length and
    /// metadata), the segment the range starts in (walking the headers of
    /// a multipart object), then the ciphertext from the first frame
    /// needed, of the very version the first header came from.
    async fn ranged(
        &self,
        bucket: &str,
        key: &str,
        headers: HeaderMap,
        range: &Range,
    ) -> S3Result<Read> {
        let (first, mut segment) = self.up.segment_header(bucket, key, 0, headers).await?;
        let etag = etag_header(&first).unwrap_or_default();
        let ct = range_total(&first)
            .or_else(|| content_length(&first))
            .unwrap_or(0);
        let plaintext = object_plaintext(ct, &etag)?;
        let wanted = range
            .check(plaintext)
            .map_err(|_| S3Error::new(S3ErrorCode::InvalidRange))?;
        let mut pin = HeaderMap::new();
        set_header(&mut pin, "if-match", &format!("\"{etag}\""))?;
        let (mut segment_at, mut segment_start) = (0u64, 0u64);
        if let Some((at, start, header)) = self
            .equal_parts_jump(
                bucket,
                key,
                &pin,
                &segment,
                segments_of(&etag),
                ct,
                wanted.start,
            )
            .await
        {
            (segment_at, segment_start, segment) = (at, start, header);
        }
        loop {
            let (n, _) = envelope::read_header(&segment)
                .map_err(|e| bad(S3ErrorCode::InvalidObjectState, e.to_string()))?;
            if wanted.start < segment_start + n || segment_at + envelope::segment_len(n) >= ct {
                let local = wanted.start - segment_start..(wanted.end - segment_start).min(n);
                let (frame, bytes, skip) = envelope::frames_for(n, local);
                let end = if wanted.end - segment_start <= n {
                    segment_at + bytes.end
                } else {
                    ct
                };
                let mut h = pin.clone();
                set_header(
                    &mut h,
                    "range",
                    &format!("bytes={}-{}", segment_at + bytes.start, end - 1),
                )?;
                let r = self
                    .up
                    .send(Method::GET, Some(bucket), Some(key), &[], h, None)
                    .await?;
                // The envelope metadata is read from the first answer's
                // headers, the same version (If-Match).
                let mut response = r;
                *response.headers_mut() = first;
                return Ok(Read {
                    response,
                    plaintext,
                    range: Some(wanted),
                    opener: Some((segment, frame)),
                    skip: skip as usize,
                });
            }
            segment_at += envelope::segment_len(n);
            segment_start += n;
            segment = self
                .up
                .segment_header(bucket, key, segment_at, pin.clone())
                .await?
                .1;
        }
    }

    /// Opens an object's plaintext (all of it, or `range`) for reading, as
    /// a stream that decrypts frame by frame and holds `permit` until it
    /// ends. `headers` are the read's conditions.
    async fn open_plaintext(
        &self,
        bucket: &str,
        key: &str,
        headers: HeaderMap,
        range: Option<&Range>,
        permit: Permit,
    ) -> S3Result<(OpenStream, Opened)> {
        let read = match range {
            None => {
                let r = self
                    .up
                    .send(Method::GET, Some(bucket), Some(key), &[], headers, None)
                    .await?;
                let etag = etag_header(r.headers()).unwrap_or_default();
                let ct = content_length(r.headers()).unwrap_or(0);
                let plaintext = object_plaintext(ct, &etag)?;
                Read {
                    response: r,
                    plaintext,
                    range: None,
                    opener: None,
                    skip: 0,
                }
            }
            Some(range) => self.ranged(bucket, key, headers, range).await?,
        };
        let h = read.response.headers().clone();
        let env = self.envelope_of(&h)?;
        let len = read
            .range
            .as_ref()
            .map_or(read.plaintext, |r| r.end - r.start);
        let opener = match read.opener {
            // The first header, read before the data key was known.
            Some(header) => Some(
                Opener::new(&env.data_key, env.object, &header.0, header.1)
                    .map_err(|e| bad(S3ErrorCode::InvalidObjectState, e.to_string()))?,
            ),
            None => None,
        };
        let stream = OpenStream {
            upstream: Box::pin(read.response.bytes_stream()),
            data_key: env.data_key,
            object: env.object,
            last_part: opener.as_ref().map(Opener::part),
            opener,
            skip: read.skip,
            left: len,
            buf: BytesMut::new(),
            stats: self.stats.clone(),
            _permit: permit,
        };
        let opened = Opened {
            etag: etag_header(&h).unwrap_or_default(),
            headers: h,
            plaintext: read.plaintext,
            range: read.range,
            len,
        };
        Ok((stream, opened))
    }

    /// Where a ranged read into a multipart object can start without
    /// walking every segment header before it: most uploads have equal
    /// parts, so segment `k = start / n1` (n1 the first part's plaintext
    /// length) is guessed at ciphertext `k * segment_len(n1)`, and taken
    /// only if the header there is part `k + 1`. That proves it: every part
    /// but the last holds whole 64 KiB frames (Complete enforces it), so a
    /// real header at that offset after `j` segments has
    /// `32 (k - j) = 65552 m` for an integer `m`, i.e. `k - j` a multiple
    /// of 4097; part numbers ascend from 1, so `j <= k`, and `k < 4097`
    /// leaves `j = k` and the `k` parts before it of exactly `n1` bytes.
    /// (Bytes inside a frame that looked like a header would derive a
    /// wrong key and fail to authenticate, never give other plaintext.)
    /// Returns the segment's ciphertext and plaintext offsets and header,
    /// or `None` to walk from the start.
    #[allow(clippy::too_many_arguments)]
    async fn equal_parts_jump(
        &self,
        bucket: &str,
        key: &str,
        pin: &HeaderMap,
        first: &[u8; HEADER as usize],
        segments: u64,
        ct: u64,
        start: u64,
    ) -> Option<(u64, u64, [u8; HEADER as usize])> {
        let (n1, _) = envelope::read_header(first).ok()?;
        if segments < 2 || n1 == 0 || start < n1 {
            return None;
        }
        let k = start / n1;
        let at = k.checked_mul(envelope::segment_len(n1))?;
        if k >= 4097 || k >= segments || at >= ct {
            return None;
        }
        let (_, header) = self
            .up
            .segment_header(bucket, key, at, pin.clone())
            .await
            .ok()?;
        let (_, part) = envelope::read_header(&header).ok()?;
        (u64::from(part) == k + 1).then_some((at, k * n1, header))
    }

    /// The part `part_number` of upload `upload_id`: where it goes upstream
    /// and the key and segment it is sealed as. An id this proxy did not
    /// hand out, or a part number S3 would refuse, is the client's error.
    fn part_target(&self, upload_id: &str, part_number: i32) -> S3Result<PartTarget> {
        if !(1..=10_000).contains(&part_number) {
            return Err(bad(
                S3ErrorCode::InvalidArgument,
                "a part number is 1 to 10,000",
            ));
        }
        let id = self.upload_id(upload_id)?.ok_or_else(|| {
            bad(
                S3ErrorCode::NoSuchUpload,
                "this upload id has no key: it was not started through this proxy",
            )
        })?;
        let data_key = id
            .data_key(&self.keys)
            .map_err(|e| bad(S3ErrorCode::InvalidObjectState, e))?;
        let part = part_number as u32;
        Ok(PartTarget {
            data_key,
            segment: SegmentId {
                object: id.object,
                part,
            },
            query: [("partNumber", part.to_string()), ("uploadId", id.upstream)],
        })
    }

    /// Seals `body` (`len` plaintext bytes) upstream as part `target`,
    /// holding `permit`; the client's ETag of the stored part.
    async fn send_part(
        &self,
        bucket: &str,
        key: &str,
        target: PartTarget,
        body: (StreamingBlob, u64),
        permit: Permit,
    ) -> S3Result<Option<ETag>> {
        let response = self
            .send_sealed(
                bucket,
                key,
                &target.query,
                HeaderMap::new(),
                body,
                (&target.data_key, target.segment),
                permit,
            )
            .await?;
        Ok(etag_header(response.headers()).map(|e| client_etag(&e)))
    }

    /// Reads a client's upload id.
    fn upload_id(&self, s: &str) -> S3Result<Option<UploadId>> {
        UploadId::decode(s, &self.keys).map_err(|e| bad(S3ErrorCode::NoSuchUpload, e))
    }

    /// Sends `body` (of `len` plaintext bytes) upstream sealed as
    /// `segment`, frame by frame, holding `permit` until the body is sent.
    /// A client body that fails (its signature, its length) is the error,
    /// and the upstream request never completes.
    #[allow(clippy::too_many_arguments)]
    async fn send_sealed(
        &self,
        bucket: &str,
        key: &str,
        query: &[(&str, String)],
        headers: HeaderMap,
        (body, len): (StreamingBlob, u64),
        (data_key, segment): (&[u8; 32], SegmentId),
        permit: Permit,
    ) -> S3Result<reqwest::Response> {
        let sealer = Sealer::new(data_key, segment, len);
        let failure: BodyError = Arc::default();
        let stream = SealStream {
            body,
            frame: Vec::with_capacity(sealer.next_frame_len() + TAG as usize),
            sealer,
            pending: Bytes::new(),
            failure: failure.clone(),
            finished: false,
            _permit: permit,
        };
        let sent = self
            .up
            .send(
                Method::PUT,
                Some(bucket),
                Some(key),
                query,
                headers,
                Some(Body {
                    stream: reqwest::Body::wrap_stream(stream),
                    len: envelope::segment_len(len),
                }),
            )
            .await;
        if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        let response = sent?;
        self.stats.bytes_in(len);
        Ok(response)
    }

    /// Checks a Complete's part list against the upload's parts, as S3
    /// does, and more: the parts ascend (`InvalidPartOrder`), each exists
    /// with the ETag given (`InvalidPart`), and every part but the last
    /// holds a whole number of frames (`InvalidPart`: a listing could not
    /// tell the object's plaintext size otherwise). The upload's parts come
    /// from the upstream's ListParts, a page at a time.
    async fn check_parts(
        &self,
        bucket: &str,
        key: &str,
        upstream: &str,
        parts: &[CompletedPart],
    ) -> S3Result<()> {
        let numbers: Vec<i32> = parts.iter().map(|p| p.part_number.unwrap_or(0)).collect();
        if numbers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(
                S3ErrorCode::InvalidPartOrder,
                "the parts are not in ascending order",
            ));
        }
        let last = *numbers.last().unwrap_or(&0);
        let mut found = 0usize;
        let mut marker: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> = vec![("uploadId", upstream.to_string())];
            push(&mut q, "part-number-marker", marker.as_ref());
            let r = self
                .up
                .send(
                    Method::GET,
                    Some(bucket),
                    Some(key),
                    &q,
                    HeaderMap::new(),
                    None,
                )
                .await?;
            let answer = super::upstream::read_bounded(r, super::upstream::MAX_XML_BYTES).await?;
            for r in xml::records(&answer, "Part").map_err(upstream_error)? {
                let number: i32 = xml::field(&r, "PartNumber")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let Ok(i) = numbers.binary_search(&number) else {
                    continue;
                };
                found += 1;
                let stored = xml::field(&r, "ETag").unwrap_or_default().trim_matches('"');
                if parts[i].e_tag.as_ref().map(upstream_etag).as_deref() != Some(stored) {
                    return Err(bad(
                        S3ErrorCode::InvalidPart,
                        format!("part {number}: the ETag given is not that of the part uploaded"),
                    ));
                }
                if number == last {
                    continue;
                }
                let ct: u64 = xml::field(&r, "Size")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                match envelope::plaintext_len(ct, 1) {
                    Some(n) if n < MIN_PART => {
                        return Err(bad(
                            S3ErrorCode::EntityTooSmall,
                            format!(
                                "part {number} holds {n} bytes: every part but the last is at least 5 MiB"
                            ),
                        ));
                    }
                    Some(n) if n % FRAME == 0 => {}
                    n => {
                        return Err(bad(
                            S3ErrorCode::InvalidPart,
                            format!(
                                "part {number} holds {} bytes: through this proxy every part but the last must be a multiple of {} KiB (as 5 MiB and 8 MiB parts are)",
                                n.unwrap_or(ct),
                                FRAME >> 10
                            ),
                        ));
                    }
                }
            }
            match xml::text(&answer, "NextPartNumberMarker") {
                Some(m) if xml::text(&answer, "IsTruncated").as_deref() == Some("true") => {
                    marker = Some(m)
                }
                _ => break,
            }
        }
        if found < numbers.len() {
            return Err(bad(
                S3ErrorCode::InvalidPart,
                "one or more of the parts given was not uploaded",
            ));
        }
        Ok(())
    }

    /// The ETag of the object at `key` if upload `id` completed it (with
    /// `parts` parts): its envelope has the upload's object id.
    async fn completed_by(
        &self,
        bucket: &str,
        key: &str,
        id: &UploadId,
        parts: usize,
    ) -> Option<String> {
        let r = self
            .up
            .send(
                Method::HEAD,
                Some(bucket),
                Some(key),
                &[],
                HeaderMap::new(),
                None,
            )
            .await
            .ok()?;
        let etag = etag_header(r.headers())?;
        let env = self.envelope_of(r.headers()).ok()?;
        (env.object == id.object && segments_of(&etag) == parts as u64).then_some(etag)
    }

    /// A HEAD of an object this proxy wrote: the answer, its upstream ETag
    /// and the plaintext length.
    async fn head(
        &self,
        bucket: &str,
        key: &str,
        headers: HeaderMap,
    ) -> S3Result<(reqwest::Response, String, u64)> {
        let r = self
            .small(Method::HEAD, bucket, Some(key), headers, "proxy.head")
            .await?;
        self.envelope_of(r.headers())?;
        let etag = etag_header(r.headers()).unwrap_or_default();
        let plaintext = object_plaintext(content_length(r.headers()).unwrap_or(0), &etag)?;
        Ok((r, etag, plaintext))
    }

    /// A bodiless request that holds no data (a HEAD, a DELETE, a bucket
    /// operation), admitted as such.
    async fn small(
        &self,
        method: Method,
        bucket: &str,
        key: Option<&str>,
        headers: HeaderMap,
        tag: &'static str,
    ) -> S3Result<reqwest::Response> {
        let _p = self.admit(footprint::SMALL, tag).await?;
        self.up
            .send(method, Some(bucket), key, &[], headers, None)
            .await
    }

    /// Unwraps an upstream object's data key from its metadata; an object
    /// this proxy did not write is an error, never served as it is.
    fn envelope_of(&self, h: &reqwest::header::HeaderMap) -> S3Result<EnvelopeMeta> {
        let not_ours = || {
            bad(
                S3ErrorCode::InvalidObjectState,
                "the stored object was not written through headroom proxy (no envelope metadata); it is not served",
            )
        };
        if meta_header(h, META_ENC) != Some("1") {
            return Err(not_ours());
        }
        let kid = meta_header(h, META_KID).ok_or_else(not_ours)?;
        let kek = self.keys.kek(kid).ok_or_else(|| {
            bad(
                S3ErrorCode::InvalidObjectState,
                format!("the object's data key is wrapped under KEK {kid:?}, which the key file does not hold"),
            )
        })?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let wrapped = meta_header(h, META_KEY)
            .and_then(|k| b64.decode(k).ok())
            .ok_or_else(not_ours)?;
        let object: [u8; envelope::OBJECT_ID] = meta_header(h, META_OID)
            .and_then(|o| b64.decode(o).ok())
            .and_then(|o| o.try_into().ok())
            .ok_or_else(not_ours)?;
        let data_key = envelope::unwrap_key(kek, &wrapped)
            .map_err(|e| bad(S3ErrorCode::InvalidObjectState, e.to_string()))?;
        Ok(EnvelopeMeta { data_key, object })
    }

    /// Headers for a new encrypted object: the envelope metadata (a fresh
    /// data key wrapped under the current KEK), the client's metadata and
    /// content headers. Returns them with the data key and object id.
    fn new_object_headers(
        &self,
        metadata: Option<&Metadata>,
        content: &ContentHeaders,
    ) -> S3Result<(HeaderMap, EnvelopeMeta)> {
        let data_key = super::keys::random_key()
            .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string()))?;
        let mut object = [0u8; envelope::OBJECT_ID];
        aws_lc_rs::rand::fill(&mut object).map_err(|_| S3Error::new(S3ErrorCode::InternalError))?;
        let (kid, kek) = self.keys.current();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut h = HeaderMap::new();
        for (name, value) in [
            (META_ENC, "1".to_string()),
            (META_KID, kid.to_string()),
            (META_KEY, b64.encode(envelope::wrap_key(kek, &data_key))),
            (META_OID, b64.encode(object)),
        ] {
            h.insert(
                http::HeaderName::try_from(format!("x-amz-meta-{name}")).expect("a valid name"),
                http::HeaderValue::try_from(value).expect("ASCII"),
            );
        }
        for (k, v) in metadata.into_iter().flatten() {
            if k.to_ascii_lowercase().starts_with("headroom-") {
                return Err(bad(
                    S3ErrorCode::InvalidArgument,
                    format!("metadata key {k:?}: the headroom- prefix is the proxy's own"),
                ));
            }
            let name = http::HeaderName::try_from(format!("x-amz-meta-{k}"))
                .map_err(|_| bad(S3ErrorCode::InvalidArgument, format!("metadata key {k:?}")))?;
            let value = http::HeaderValue::try_from(v.as_str()).map_err(|_| {
                bad(
                    S3ErrorCode::InvalidArgument,
                    format!("metadata value of {k:?}"),
                )
            })?;
            h.insert(name, value);
        }
        content.set_on(&mut h)?;
        Ok((h, EnvelopeMeta { data_key, object }))
    }
}

/// An object's content headers, which S3 stores beside its metadata and
/// answers on GET and HEAD. They describe the plaintext and are stored as
/// they are (they are not secret; the metadata is not either).
#[derive(Debug, Default, Clone)]
struct ContentHeaders {
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    expires: Option<Timestamp>,
}

/// The content headers of a request that writes an object.
macro_rules! content_headers_of {
    ($i:expr) => {
        ContentHeaders {
            content_type: $i.content_type.clone(),
            cache_control: $i.cache_control.clone(),
            content_disposition: $i.content_disposition.clone(),
            content_encoding: stored_encoding($i.content_encoding.as_deref()),
            content_language: $i.content_language.clone(),
            expires: $i.expires.clone(),
        }
    };
}

/// The Content-Encoding an object keeps: the client's without
/// `aws-chunked`, which describes the request's framing, not the object (S3
/// drops it too).
fn stored_encoding(given: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = given?
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

impl ContentHeaders {
    /// The content headers of an upstream answer.
    fn from_upstream(h: &reqwest::header::HeaderMap) -> Self {
        let text = |name: http::HeaderName| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        ContentHeaders {
            content_type: text(http::header::CONTENT_TYPE),
            cache_control: text(http::header::CACHE_CONTROL),
            content_disposition: text(http::header::CONTENT_DISPOSITION),
            content_encoding: text(http::header::CONTENT_ENCODING),
            content_language: text(http::header::CONTENT_LANGUAGE),
            expires: text(http::header::EXPIRES)
                .and_then(|t| Timestamp::parse(TimestampFormat::HttpDate, &t).ok()),
        }
    }

    /// Sets them on an upstream request.
    fn set_on(&self, h: &mut HeaderMap) -> S3Result<()> {
        for (name, value) in [
            ("content-type", &self.content_type),
            ("cache-control", &self.cache_control),
            ("content-disposition", &self.content_disposition),
            ("content-encoding", &self.content_encoding),
            ("content-language", &self.content_language),
        ] {
            if let Some(v) = value {
                set_header(h, name, v)?;
            }
        }
        if let Some(t) = &self.expires {
            set_header(h, "expires", &http_date(t)?)?;
        }
        Ok(())
    }
}

/// A time as an HTTP date (`Expires`, `If-Modified-Since`).
fn http_date(t: &Timestamp) -> S3Result<String> {
    let mut out = Vec::new();
    t.format(TimestampFormat::HttpDate, &mut out)
        .map_err(|_| bad(S3ErrorCode::InvalidArgument, "a time that has no HTTP date"))?;
    String::from_utf8(out).map_err(|_| S3Error::new(S3ErrorCode::InternalError))
}

/// The client's metadata of an upstream object: its `x-amz-meta-*`
/// headers without the envelope's.
fn user_metadata(h: &reqwest::header::HeaderMap) -> Option<Metadata> {
    let m: Metadata = h
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("x-amz-meta-")?;
            if name.starts_with("headroom-") {
                return None;
            }
            Some((name.to_string(), v.to_str().ok()?.to_string()))
        })
        .collect();
    (!m.is_empty()).then_some(m)
}

fn last_modified(h: &reqwest::header::HeaderMap) -> Option<Timestamp> {
    let v = h.get(http::header::LAST_MODIFIED)?.to_str().ok()?;
    Timestamp::parse(TimestampFormat::HttpDate, v).ok()
}

fn content_length(h: &reqwest::header::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn etag_header(h: &reqwest::header::HeaderMap) -> Option<String> {
    Some(
        h.get(http::header::ETAG)?
            .to_str()
            .ok()?
            .trim_matches('"')
            .to_string(),
    )
}

/// The total length of a ranged answer (`Content-Range: bytes a-b/TOTAL`).
fn range_total(h: &reqwest::header::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_RANGE)?
        .to_str()
        .ok()?
        .rsplit_once('/')?
        .1
        .parse()
        .ok()
}

/// The plaintext length of an upstream object of `ct` bytes with `etag`
/// (whose `-N` says how many segments it has).
fn object_plaintext(ct: u64, etag: &str) -> S3Result<u64> {
    envelope::plaintext_len(ct, segments_of(etag)).ok_or_else(|| {
        bad(
            S3ErrorCode::InvalidObjectState,
            format!("the stored object's length ({ct}) is not that of an encrypted object"),
        )
    })
}

/// An error of the client's body, kept to be told instead of the upstream
/// failure it causes.
type BodyError = Arc<Mutex<Option<S3Error>>>;

/// The error of a client body that failed: s3s's own (a payload hash or
/// chunk signature that does not match) where it is one.
fn body_check_failed(e: &(dyn std::error::Error + Send + Sync + 'static)) -> S3Error {
    if let Some(s3) = e.downcast_ref::<S3Error>() {
        let mut out = S3Error::with_message(
            s3.code().clone(),
            s3.message()
                .unwrap_or("the request body failed its check")
                .to_string(),
        );
        if let Some(status) = s3.status_code() {
            out.set_status_code(status);
        }
        return out;
    }
    let mut out = bad(
        S3ErrorCode::BadDigest,
        format!("the request body failed: {e}"),
    );
    out.set_status_code(http::StatusCode::BAD_REQUEST);
    out
}

/// The ciphertext of a PUT, sealed frame by frame from the client's body.
/// The last frame is handed on only after the client's body has ended
/// cleanly (its signature checked, no extra bytes), so a body that fails
/// its check never completes the upstream request: nothing is published.
struct SealStream {
    body: StreamingBlob,
    sealer: Sealer,
    pending: Bytes,
    /// The frame being filled, with room for its tag: sealed in place and
    /// handed on as it is.
    frame: Vec<u8>,
    failure: BodyError,
    finished: bool,
    _permit: Permit,
}

impl SealStream {
    fn fail(&mut self, e: S3Error) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        let msg = e.message().unwrap_or("the request body failed").to_string();
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        self.finished = true;
        Poll::Ready(Some(Err(std::io::Error::other(msg))))
    }
}

impl Stream for SealStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(h) = this.sealer.take_header() {
            return Poll::Ready(Some(Ok(Bytes::copy_from_slice(&h))));
        }
        let want = this.sealer.next_frame_len();
        while this.frame.len() < want {
            if this.pending.is_empty() {
                match this.body.poll_next_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(b))) => this.pending = b,
                    Poll::Ready(Some(Err(e))) => return this.fail(body_check_failed(&*e)),
                    Poll::Ready(None) => {
                        return this.fail(bad(
                            S3ErrorCode::IncompleteBody,
                            "the body ended before Content-Length bytes",
                        ));
                    }
                }
            }
            let take = (want - this.frame.len()).min(this.pending.len());
            let chunk = this.pending.split_to(take);
            this.frame.extend_from_slice(&chunk);
        }
        // The body must end exactly here before the final frame goes.
        let is_final = this.sealer.remaining() == want as u64;
        if is_final {
            if !this.pending.is_empty() {
                return this.fail(bad(
                    S3ErrorCode::InvalidRequest,
                    "the body is longer than its Content-Length",
                ));
            }
            match this.body.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {}
                Poll::Ready(Some(Ok(b))) if b.is_empty() => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(_))) => {
                    return this.fail(bad(
                        S3ErrorCode::InvalidRequest,
                        "the body is longer than its Content-Length",
                    ));
                }
                Poll::Ready(Some(Err(e))) => return this.fail(body_check_failed(&*e)),
            }
        }
        let mut frame = std::mem::take(&mut this.frame);
        if let Err(e) = this.sealer.seal(&mut frame) {
            return this.fail(bad(S3ErrorCode::InternalError, e.to_string()));
        }
        if this.sealer.done() {
            this.finished = true;
        } else {
            this.frame = Vec::with_capacity(this.sealer.next_frame_len() + TAG as usize);
        }
        Poll::Ready(Some(Ok(Bytes::from(frame))))
    }
}

/// The plaintext of a GET, opened frame by frame from the upstream's
/// ciphertext: a frame is released only once its tag verified. A
/// multipart object is a run of segments; each segment's header says its
/// length and part, and the parts must increase.
struct OpenStream {
    upstream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send + Sync>>,
    data_key: [u8; 32],
    object: [u8; envelope::OBJECT_ID],
    /// The segment being read; `None` when a header comes next.
    opener: Option<Opener>,
    /// The part of the last segment begun.
    last_part: Option<u32>,
    /// Plaintext bytes to drop from the first frame, and to send in all.
    skip: usize,
    left: u64,
    buf: BytesMut,
    stats: Arc<super::metrics::Stats>,
    _permit: Permit,
}

impl OpenStream {
    /// Reads into `buf` until it holds `n` bytes.
    fn fill(&mut self, cx: &mut Context<'_>, n: usize) -> Poll<Result<(), std::io::Error>> {
        while self.buf.len() < n {
            match self.upstream.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(b))) => self.buf.extend_from_slice(&b),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(std::io::Error::other(format!(
                        "reading the stored object: {e}"
                    ))));
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Err(std::io::Error::other(
                        "the stored object ended early",
                    )));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn failed(&mut self, e: impl std::fmt::Display) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        tracing::error!("{e}");
        self.stats.tampered();
        self.left = 0;
        Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))))
    }
}

impl Stream for OpenStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.left == 0 {
            return Poll::Ready(None);
        }
        if this.opener.as_ref().is_none_or(Opener::done) {
            match this.fill(cx, HEADER as usize) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(())) => {}
            }
            let header = this.buf.split_to(HEADER as usize);
            match Opener::new(&this.data_key, this.object, &header, 0) {
                Ok(o)
                    if this.last_part.is_some_and(|p| o.part() <= p)
                        || (o.part() == 0 && this.last_part.is_some()) =>
                {
                    return this.failed(format!(
                        "part {} follows part {:?}: the stored object's parts were reordered",
                        o.part(),
                        this.last_part
                    ));
                }
                Ok(o) => {
                    this.last_part = Some(o.part());
                    this.opener = Some(o);
                }
                Err(e) => return this.failed(e),
            }
        }
        let want = this.opener.as_ref().expect("set above").next_frame_len();
        match this.fill(cx, want) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {}
        }
        let mut frame = this.buf.split_to(want);
        match this.opener.as_mut().expect("set above").open(&mut frame) {
            Ok(n) => {
                frame.truncate(n);
                let _ = frame.split_to(this.skip.min(n));
                this.skip = 0;
                frame.truncate(this.left.min(frame.len() as u64) as usize);
                this.left -= frame.len() as u64;
                this.stats.bytes_out(frame.len() as u64);
                Poll::Ready(Some(Ok(frame.freeze())))
            }
            Err(e) => this.failed(e),
        }
    }
}

#[async_trait::async_trait]
impl S3 for Proxy {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let _p = self.admit(footprint::LIST, "proxy.list").await?;
        let body = self.up.xml(Method::GET, None, &[]).await?;
        let buckets = xml::records(&body, "Buckets")
            .map_err(upstream_error)?
            .into_iter()
            .flat_map(|r| {
                // <Buckets><Bucket><Name/><CreationDate/></Bucket>...: each
                // Name starts a bucket.
                let mut out: Vec<Bucket> = Vec::new();
                for (k, v) in r {
                    match k.as_str() {
                        "Name" => out.push(Bucket {
                            name: Some(v),
                            ..Default::default()
                        }),
                        "CreationDate" => {
                            if let Some(b) = out.last_mut() {
                                b.creation_date =
                                    Timestamp::parse(TimestampFormat::DateTime, &v).ok();
                            }
                        }
                        _ => {}
                    }
                }
                out
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let i = &req.input;
        if i.object_lock_enabled_for_bucket == Some(true) {
            return Err(bad(
                S3ErrorCode::NotImplemented,
                "object lock is not served by this proxy (it needs versioning, which is not either)",
            ));
        }
        let _p = self.admit(footprint::SMALL, "proxy.bucket").await?;
        // The region asked for, as S3 takes it.
        let body = i
            .create_bucket_configuration
            .as_ref()
            .and_then(|c| c.location_constraint.as_ref())
            .map(|l| {
                let xml = format!(
                    "<CreateBucketConfiguration><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                    quick_xml::escape::escape(l.as_str())
                );
                let len = xml.len() as u64;
                Body {
                    stream: reqwest::Body::from(xml),
                    len,
                }
            });
        self.up
            .send(
                Method::PUT,
                Some(&i.bucket),
                None,
                &[],
                HeaderMap::new(),
                body,
            )
            .await?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.small(
            Method::HEAD,
            &req.input.bucket,
            None,
            HeaderMap::new(),
            "proxy.bucket",
        )
        .await
        .map_err(|e| not_found_as(e, S3ErrorCode::NoSuchBucket))?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let _p = self.admit(footprint::SMALL, "proxy.bucket").await?;
        let body = self
            .up
            .xml(
                Method::GET,
                Some(&req.input.bucket),
                &[("location", String::new())],
            )
            .await?;
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: xml::text(&body, "LocationConstraint")
                .filter(|l| !l.is_empty())
                .map(BucketLocationConstraint::from),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.small(
            Method::DELETE,
            &req.input.bucket,
            None,
            HeaderMap::new(),
            "proxy.bucket",
        )
        .await?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let len = body_len(input.content_length)?;
        if len > 5 << 30 {
            return Err(bad(
                S3ErrorCode::EntityTooLarge,
                "a single PUT is at most 5 GiB; use a multipart upload",
            ));
        }
        let body = input
            .body
            .ok_or_else(|| S3Error::new(S3ErrorCode::IncompleteBody))?;
        let permit = self.admit(footprint::PUT, "proxy.put").await?;
        let (mut headers, env) =
            self.new_object_headers(input.metadata.as_ref(), &content_headers_of!(input))?;
        headers.extend(conditions(
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
        )?);
        let segment = SegmentId {
            object: env.object,
            part: 0,
        };
        let response = self
            .send_sealed(
                &input.bucket,
                &input.key,
                &[],
                headers,
                (body, len),
                (&env.data_key, segment),
                permit,
            )
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: etag_header(response.headers()).map(|e| client_etag(&e)),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        let _p = self.admit(footprint::SMALL, "proxy.upload").await?;
        let (headers, env) =
            self.new_object_headers(input.metadata.as_ref(), &content_headers_of!(input))?;
        let r = self
            .up
            .send(
                Method::POST,
                Some(&input.bucket),
                Some(&input.key),
                &[("uploads", String::new())],
                headers,
                None,
            )
            .await?;
        let answer = super::upstream::read_bounded(r, 64 << 10).await?;
        let upstream = xml::text(&answer, "UploadId")
            .ok_or_else(|| upstream_error("no UploadId in the upstream's answer".into()))?;
        let (kid, kek) = self.keys.current();
        let id = UploadId {
            upstream,
            kid: kid.to_string(),
            wrapped: envelope::wrap_key(kek, &env.data_key),
            object: env.object,
        };
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id.encode(&self.keys)),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        let len = body_len(input.content_length)?;
        let target = self.part_target(&input.upload_id, input.part_number)?;
        let body = input
            .body
            .ok_or_else(|| S3Error::new(S3ErrorCode::IncompleteBody))?;
        let permit = self.admit(footprint::PUT, "proxy.part").await?;
        let e_tag = self
            .send_part(&input.bucket, &input.key, target, (body, len), permit)
            .await?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag,
            ..Default::default()
        }))
    }

    /// A part copied from (a range of) another object: its plaintext is
    /// read and sealed again as this upload's part, as a client's part is;
    /// the upstream never copies ciphertext between objects.
    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        let target = self.part_target(&input.upload_id, input.part_number)?;
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            version_id,
        } = &input.copy_source
        else {
            return Err(bad(
                S3ErrorCode::NotImplemented,
                "copies from access points are not served by this proxy",
            ));
        };
        only_null_version(version_id.as_deref())?;
        let range = input
            .copy_source_range
            .as_deref()
            .map(|r| {
                Range::parse(r).map_err(|_| {
                    bad(
                        S3ErrorCode::InvalidArgument,
                        "x-amz-copy-source-range: the range is bytes=first-last",
                    )
                })
            })
            .transpose()?;
        let permit = self
            .admit(footprint::GET + footprint::PUT, "proxy.part")
            .await?;
        let headers = read_conditions(
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
        )?;
        let (plain_permit, put_permit) = split_permit(permit, footprint::GET);
        let (decrypted, source) = self
            .open_plaintext(src_bucket, src_key, headers, range.as_ref(), plain_permit)
            .await
            .map_err(copy_precondition)?;
        if source.len > 5 << 30 {
            return Err(bad(S3ErrorCode::EntityTooLarge, "a part is at most 5 GiB"));
        }
        let e_tag = self
            .send_part(
                &input.bucket,
                &input.key,
                target,
                (StreamingBlob::wrap(decrypted), source.len),
                put_permit,
            )
            .await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag,
                last_modified: Some(Timestamp::from(std::time::SystemTime::now())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let _p = self.admit(footprint::LIST, "proxy.complete").await?;
        // Every part of an upload is sealed with the key its id carries:
        // an id without one names no upload this proxy could complete.
        let id = self.upload_id(&input.upload_id)?.ok_or_else(|| {
            let mut e = bad(
                S3ErrorCode::NoSuchUpload,
                "no such upload through this proxy",
            );
            e.set_status_code(http::StatusCode::NOT_FOUND);
            e
        })?;
        let upstream = id.upstream.clone();
        let parts = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if parts.is_empty() {
            return Err(bad(
                S3ErrorCode::MalformedXML,
                "a Complete names at least one part",
            ));
        }
        if let Err(e) = self
            .check_parts(&input.bucket, &input.key, &upstream, &parts)
            .await
        {
            // S3 answers a Complete repeated after success with the object
            // again; the object this upload made carries its object id.
            if *e.code() == S3ErrorCode::NoSuchUpload
                && let Some(etag) = self
                    .completed_by(&input.bucket, &input.key, &id, parts.len())
                    .await
            {
                return Ok(S3Response::new(CompleteMultipartUploadOutput {
                    bucket: Some(input.bucket),
                    key: Some(input.key),
                    e_tag: Some(client_etag(&etag)),
                    ..Default::default()
                }));
            }
            return Err(e);
        }
        let mut xml_body = String::from("<CompleteMultipartUpload>");
        for p in &parts {
            xml_body.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>\"{}\"</ETag></Part>",
                p.part_number.unwrap_or(0),
                quick_xml::escape::escape(
                    p.e_tag
                        .as_ref()
                        .map(upstream_etag)
                        .unwrap_or_default()
                        .as_str()
                )
            ));
        }
        xml_body.push_str("</CompleteMultipartUpload>");
        let body = Bytes::from(xml_body);
        let len = body.len() as u64;
        let r = self
            .up
            .send(
                Method::POST,
                Some(&input.bucket),
                Some(&input.key),
                &[("uploadId", upstream)],
                HeaderMap::new(),
                Some(Body {
                    stream: reqwest::Body::from(body),
                    len,
                }),
            )
            .await?;
        let answer = super::upstream::read_bounded(r, 64 << 10).await?;
        // S3 may answer 200 and still fail, with an <Error> body.
        if let Some(code) = xml::text(&answer, "Code") {
            let message = xml::text(&answer, "Message").unwrap_or_default();
            let code =
                S3ErrorCode::from_bytes(code.as_bytes()).unwrap_or(S3ErrorCode::InternalError);
            return Err(S3Error::with_message(code, message));
        }
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: xml::text(&answer, "ETag").map(|e| client_etag(&e)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        let upstream = super::uploads::upstream_of(&input.upload_id, &self.keys)
            .map_err(|e| bad(S3ErrorCode::NoSuchUpload, e))?;
        let _p = self.admit(footprint::SMALL, "proxy.upload").await?;
        self.up
            .send(
                Method::DELETE,
                Some(&input.bucket),
                Some(&input.key),
                &[("uploadId", upstream)],
                HeaderMap::new(),
                None,
            )
            .await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let upstream = super::uploads::upstream_of(&input.upload_id, &self.keys)
            .map_err(|e| bad(S3ErrorCode::NoSuchUpload, e))?;
        let _p = self.admit(footprint::LIST, "proxy.list").await?;
        let mut q: Vec<(&str, String)> = vec![("uploadId", upstream)];
        push(
            &mut q,
            "max-parts",
            input.max_parts.map(|m| m.to_string()).as_ref(),
        );
        push(
            &mut q,
            "part-number-marker",
            input.part_number_marker.map(|m| m.to_string()).as_ref(),
        );
        let r = self
            .up
            .send(
                Method::GET,
                Some(&input.bucket),
                Some(&input.key),
                &q,
                HeaderMap::new(),
                None,
            )
            .await?;
        let answer = super::upstream::read_bounded(r, super::upstream::MAX_XML_BYTES).await?;
        let parts = xml::records(&answer, "Part")
            .map_err(upstream_error)?
            .iter()
            .map(|r| {
                let ct: u64 = xml::field(r, "Size")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                Part {
                    part_number: xml::field(r, "PartNumber").and_then(|n| n.parse().ok()),
                    e_tag: xml::field(r, "ETag").map(client_etag),
                    size: Some(envelope::plaintext_len(ct, 1).unwrap_or(ct) as i64),
                    last_modified: xml::field(r, "LastModified")
                        .and_then(|t| Timestamp::parse(TimestampFormat::DateTime, t).ok()),
                    ..Default::default()
                }
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            is_truncated: Some(xml::text(&answer, "IsTruncated").as_deref() == Some("true")),
            next_part_number_marker: xml::text(&answer, "NextPartNumberMarker")
                .and_then(|m| m.parse().ok()),
            part_number_marker: input.part_number_marker,
            max_parts: input.max_parts,
            parts: Some(parts),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let i = req.input;
        let _p = self.admit(footprint::LIST, "proxy.list").await?;
        let mut q: Vec<(&str, String)> = vec![("uploads", String::new())];
        push(&mut q, "prefix", i.prefix.as_ref());
        // An empty delimiter is none (some servers list nothing for it).
        push(
            &mut q,
            "delimiter",
            i.delimiter.as_ref().filter(|d| !d.is_empty()),
        );
        push(&mut q, "key-marker", i.key_marker.as_ref());
        push(&mut q, "upload-id-marker", i.upload_id_marker.as_ref());
        push(
            &mut q,
            "max-uploads",
            i.max_uploads.map(|m| m.to_string()).as_ref(),
        );
        let body = self.up.xml(Method::GET, Some(&i.bucket), &q).await?;
        let uploads = xml::records(&body, "Upload")
            .map_err(upstream_error)?
            .iter()
            .map(|r| MultipartUpload {
                key: xml::field(r, "Key").map(str::to_string),
                // The upstream's id: enough to abort or list, not to write
                // (it carries no key).
                upload_id: xml::field(r, "UploadId").map(str::to_string),
                initiated: xml::field(r, "Initiated")
                    .and_then(|t| Timestamp::parse(TimestampFormat::DateTime, t).ok()),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(i.bucket),
            prefix: i.prefix,
            delimiter: i.delimiter,
            key_marker: i.key_marker,
            upload_id_marker: i.upload_id_marker,
            max_uploads: i.max_uploads,
            is_truncated: Some(xml::text(&body, "IsTruncated").as_deref() == Some("true")),
            next_key_marker: xml::text(&body, "NextKeyMarker"),
            next_upload_id_marker: xml::text(&body, "NextUploadIdMarker"),
            uploads: Some(uploads),
            common_prefixes: Some(common_prefixes(&body)?),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        only_null_version(input.version_id.as_deref())?;
        let headers = read_conditions(
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let (r, etag, plaintext) = self.head(&input.bucket, &input.key, headers).await?;
        let h = r.headers();
        let content = ContentHeaders::from_upstream(h);
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(plaintext as i64),
            e_tag: Some(client_etag(&etag)),
            last_modified: last_modified(h),
            metadata: user_metadata(h),
            content_type: content.content_type,
            cache_control: content.cache_control,
            content_disposition: content.content_disposition,
            content_encoding: content.content_encoding,
            content_language: content.content_language,
            expires: content.expires,
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        }))
    }

    /// An object's attributes, from one HEAD: the client's ETag, the
    /// plaintext size, the storage class and, for a multipart object, its
    /// part count (the parts' own sizes are not kept after Complete, and
    /// no checksums are stored).
    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        let input = req.input;
        only_null_version(input.version_id.as_deref())?;
        let (r, etag, plaintext) = self
            .head(&input.bucket, &input.key, HeaderMap::new())
            .await?;
        let h = r.headers();
        // One header, `ETag,ObjectSize,…`, which may arrive as one item.
        let wants = |a: &str| {
            input
                .object_attributes
                .iter()
                .flat_map(|x| x.as_str().split(','))
                .any(|x| x.trim() == a)
        };
        let segments = segments_of(&etag);
        Ok(S3Response::new(GetObjectAttributesOutput {
            e_tag: wants("ETag").then(|| client_etag(&etag)),
            object_size: wants("ObjectSize").then_some(plaintext as i64),
            storage_class: wants("StorageClass").then(|| {
                StorageClass::from(
                    h.get("x-amz-storage-class")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("STANDARD")
                        .to_string(),
                )
            }),
            object_parts: (wants("ObjectParts") && etag.contains('-')).then(|| {
                GetObjectAttributesParts {
                    total_parts_count: Some(segments as i32),
                    ..Default::default()
                }
            }),
            last_modified: last_modified(h),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        only_null_version(input.version_id.as_deref())?;
        if input.part_number.is_some() {
            return Err(bad(
                S3ErrorCode::NotImplemented,
                "GET by partNumber is not served by this proxy version",
            ));
        }
        let permit = self.admit(footprint::GET, "proxy.get").await?;
        let headers = read_conditions(
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let (stream, o) = self
            .open_plaintext(
                &input.bucket,
                &input.key,
                headers,
                input.range.as_ref(),
                permit,
            )
            .await?;
        let (h, etag, plaintext, len) = (o.headers, o.etag, o.plaintext, o.len);
        let content = ContentHeaders::from_upstream(&h);
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(stream)),
            content_length: Some(len as i64),
            content_range: o
                .range
                .as_ref()
                .map(|r| format!("bytes {}-{}/{plaintext}", r.start, r.end - 1)),
            e_tag: Some(client_etag(&etag)),
            last_modified: last_modified(&h),
            metadata: user_metadata(&h),
            content_type: content.content_type,
            cache_control: content.cache_control,
            content_disposition: content.content_disposition,
            content_encoding: content.content_encoding,
            content_language: content.content_language,
            expires: content.expires,
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            version_id,
        } = &input.copy_source
        else {
            return Err(bad(
                S3ErrorCode::NotImplemented,
                "copies from access points are not served by this proxy",
            ));
        };
        only_null_version(version_id.as_deref())?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == "REPLACE");
        if !replace && **src_bucket == *input.bucket && **src_key == *input.key {
            return Err(bad(
                S3ErrorCode::InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
            ));
        }
        // Read, decrypt and encrypt again under a new data key: the
        // upstream never copies ciphertext from one object to another,
        // whose frames would not open under the new object's id.
        let permit = self
            .admit(footprint::GET + footprint::PUT, "proxy.copy")
            .await?;
        let headers = read_conditions(
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
        )?;
        let (plain_permit, put_permit) = split_permit(permit, footprint::GET);
        let (decrypted, source) = self
            .open_plaintext(src_bucket, src_key, headers, None, plain_permit)
            .await
            .map_err(copy_precondition)?;
        let plaintext = source.plaintext;
        if plaintext > 5 << 30 {
            return Err(bad(
                S3ErrorCode::InvalidRequest,
                "a copy is at most 5 GiB (S3's limit for CopyObject)",
            ));
        }
        let h = &source.headers;
        let (metadata, content) = if replace {
            (input.metadata.clone(), content_headers_of!(input))
        } else {
            (user_metadata(h), ContentHeaders::from_upstream(h))
        };
        let (headers, env) = self.new_object_headers(metadata.as_ref(), &content)?;
        let segment = SegmentId {
            object: env.object,
            part: 0,
        };
        let response = self
            .send_sealed(
                &input.bucket,
                &input.key,
                &[],
                headers,
                (StreamingBlob::wrap(decrypted), plaintext),
                (&env.data_key, segment),
                put_permit,
            )
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: etag_header(response.headers()).map(|e| client_etag(&e)),
                last_modified: Some(Timestamp::from(std::time::SystemTime::now())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        only_null_version(req.input.version_id.as_deref())?;
        self.small(
            Method::DELETE,
            &req.input.bucket,
            Some(&req.input.key),
            HeaderMap::new(),
            "proxy.delete",
        )
        .await?;
        self.up
            .send(
                Method::DELETE,
                Some(&req.input.bucket),
                Some(&req.input.key),
                &[],
                HeaderMap::new(),
                None,
            )
            .await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        use base64::Engine;
        use md5::Digest;
        let i = req.input;
        if i.delete.objects.len() > 1000 {
            return Err(bad(
                S3ErrorCode::MalformedXML,
                "a DeleteObjects request names at most 1,000 keys",
            ));
        }
        let _p = self.admit(footprint::LIST, "proxy.delete").await?;
        let mut xml_body = String::from("<Delete>");
        if i.delete.quiet == Some(true) {
            xml_body.push_str("<Quiet>true</Quiet>");
        }
        let mut refused = Vec::new();
        for o in &i.delete.objects {
            if let Err(e) = only_null_version(o.version_id.as_deref()) {
                refused.push(Error {
                    key: Some(o.key.clone()),
                    version_id: o.version_id.clone(),
                    code: Some("NotImplemented".into()),
                    message: e.message().map(str::to_string),
                });
                continue;
            }
            xml_body.push_str("<Object><Key>");
            xml_body.push_str(&quick_xml::escape::escape(o.key.as_str()));
            xml_body.push_str("</Key></Object>");
        }
        xml_body.push_str("</Delete>");
        let body = Bytes::from(xml_body);
        let mut h = HeaderMap::new();
        let b64 = base64::engine::general_purpose::STANDARD;
        set_header(&mut h, "content-md5", &b64.encode(md5::Md5::digest(&body)))?;
        let len = body.len() as u64;
        let r = self
            .up
            .send(
                Method::POST,
                Some(&i.bucket),
                None,
                &[("delete", String::new())],
                h,
                Some(Body {
                    stream: reqwest::Body::from(body),
                    len,
                }),
            )
            .await?;
        let answer = super::upstream::read_bounded(r, super::upstream::MAX_XML_BYTES).await?;
        let deleted = xml::records(&answer, "Deleted")
            .map_err(upstream_error)?
            .iter()
            .map(|r| DeletedObject {
                key: xml::field(r, "Key").map(str::to_string),
                ..Default::default()
            })
            .collect();
        let mut errors: Vec<Error> = xml::records(&answer, "Error")
            .map_err(upstream_error)?
            .iter()
            .map(|r| Error {
                key: xml::field(r, "Key").map(str::to_string),
                code: xml::field(r, "Code").map(str::to_string),
                message: xml::field(r, "Message").map(str::to_string),
                ..Default::default()
            })
            .collect();
        errors.extend(refused);
        Ok(S3Response::new(DeleteObjectsOutput {
            // A quiet delete answers only what failed.
            deleted: (i.delete.quiet != Some(true)).then_some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let i = req.input;
        let _p = self.admit(footprint::LIST, "proxy.list").await?;
        let mut q = listing_query(
            i.prefix.as_ref(),
            i.delimiter.as_ref(),
            i.max_keys,
            i.encoding_type.as_ref(),
        );
        q.push(("list-type", "2".into()));
        push(&mut q, "continuation-token", i.continuation_token.as_ref());
        push(&mut q, "start-after", i.start_after.as_ref());
        if i.fetch_owner == Some(true) {
            q.push(("fetch-owner", "true".into()));
        }
        let body = self.up.xml(Method::GET, Some(&i.bucket), &q).await?;
        let contents = objects(&body)?;
        let prefixes = common_prefixes(&body)?;
        let key_count = (contents.len() + prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: i.prefix,
            delimiter: given_delimiter(i.delimiter),
            encoding_type: answered_encoding(&body),
            max_keys: Some(i.max_keys.unwrap_or(1000)),
            key_count: Some(key_count),
            continuation_token: i.continuation_token,
            start_after: i.start_after,
            is_truncated: Some(xml::text(&body, "IsTruncated").as_deref() == Some("true")),
            next_continuation_token: xml::text(&body, "NextContinuationToken"),
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let i = req.input;
        let _p = self.admit(footprint::LIST, "proxy.list").await?;
        let mut q = listing_query(
            i.prefix.as_ref(),
            i.delimiter.as_ref(),
            i.max_keys,
            i.encoding_type.as_ref(),
        );
        push(&mut q, "marker", i.marker.as_ref());
        let body = self.up.xml(Method::GET, Some(&i.bucket), &q).await?;
        let contents = objects(&body)?;
        let prefixes = common_prefixes(&body)?;
        let truncated = xml::text(&body, "IsTruncated").as_deref() == Some("true");
        // V1 names the next marker only with a delimiter; without one it is
        // the last key, as S3's documentation tells clients.
        let next_marker = xml::text(&body, "NextMarker").or_else(|| {
            truncated
                .then(|| contents.last().and_then(|o| o.key.clone()))
                .flatten()
        });
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket),
            prefix: i.prefix,
            delimiter: given_delimiter(i.delimiter),
            encoding_type: answered_encoding(&body),
            marker: i.marker,
            max_keys: Some(i.max_keys.unwrap_or(1000)),
            is_truncated: Some(truncated),
            next_marker,
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            ..Default::default()
        }))
    }

    /// The versions of a bucket's objects. Through the proxy a bucket is
    /// unversioned, so this is mostly the objects as version `null` (what
    /// clients that clean up by versions, like the Ceph s3-tests, list),
    /// with plaintext sizes as in every listing.
    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let i = req.input;
        let _p = self.admit(footprint::LIST, "proxy.list").await?;
        let mut q = listing_query(
            i.prefix.as_ref(),
            i.delimiter.as_ref(),
            i.max_keys,
            i.encoding_type.as_ref(),
        );
        q.push(("versions", String::new()));
        push(&mut q, "key-marker", i.key_marker.as_ref());
        push(&mut q, "version-id-marker", i.version_id_marker.as_ref());
        let body = self.up.xml(Method::GET, Some(&i.bucket), &q).await?;
        let versions = xml::records(&body, "Version")
            .map_err(upstream_error)?
            .iter()
            .map(|r| {
                let o = listed(r);
                ObjectVersion {
                    key: o.key,
                    size: o.size,
                    e_tag: o.e_tag,
                    last_modified: o.last_modified,
                    owner: o.owner,
                    version_id: xml::field(r, "VersionId").map(str::to_string),
                    is_latest: xml::field(r, "IsLatest").map(|v| v == "true"),
                    storage_class: xml::field(r, "StorageClass").map(|s| s.to_string().into()),
                    ..Default::default()
                }
            })
            .collect();
        let delete_markers = xml::records(&body, "DeleteMarker")
            .map_err(upstream_error)?
            .iter()
            .map(|r| DeleteMarkerEntry {
                key: xml::field(r, "Key").map(str::to_string),
                version_id: xml::field(r, "VersionId").map(str::to_string),
                is_latest: xml::field(r, "IsLatest").map(|v| v == "true"),
                last_modified: xml::field(r, "LastModified")
                    .and_then(|t| Timestamp::parse(TimestampFormat::DateTime, t).ok()),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(i.bucket),
            prefix: i.prefix,
            delimiter: given_delimiter(i.delimiter),
            encoding_type: answered_encoding(&body),
            key_marker: i.key_marker,
            version_id_marker: i.version_id_marker,
            max_keys: Some(i.max_keys.unwrap_or(1000)),
            is_truncated: Some(xml::text(&body, "IsTruncated").as_deref() == Some("true")),
            next_key_marker: xml::text(&body, "NextKeyMarker"),
            next_version_id_marker: xml::text(&body, "NextVersionIdMarker"),
            versions: Some(versions),
            delete_markers: Some(delete_markers),
            common_prefixes: Some(common_prefixes(&body)?),
            ..Default::default()
        }))
    }
}

/// The query of a listing: its prefix, delimiter and page size. An empty
/// delimiter is none (rclone sends one, and s3s-fs lists nothing for it).
fn listing_query(
    prefix: Option<&String>,
    delimiter: Option<&String>,
    max_keys: Option<i32>,
    encoding_type: Option<&EncodingType>,
) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    push(&mut q, "prefix", prefix);
    push(&mut q, "delimiter", delimiter.filter(|d| !d.is_empty()));
    push(&mut q, "max-keys", max_keys.map(|m| m.to_string()).as_ref());
    // With `url` the upstream encodes the keys it lists, and they are
    // passed on as it wrote them.
    push(
        &mut q,
        "encoding-type",
        encoding_type.map(|e| e.as_str().to_string()).as_ref(),
    );
    q
}

/// The encoding the upstream's listing says its keys are in: keys are
/// passed on as the upstream wrote them, so they are marked encoded only
/// when it says they are (not every server encodes every listing).
fn answered_encoding(body: &[u8]) -> Option<EncodingType> {
    xml::text(body, "EncodingType").map(EncodingType::from)
}

/// A listing answers the delimiter it was given, and none for an empty one
/// (as S3 does).
fn given_delimiter(d: Option<String>) -> Option<String> {
    d.filter(|d| !d.is_empty())
}

fn push<'a>(q: &mut Vec<(&'a str, String)>, name: &'a str, value: Option<&String>) {
    if let Some(v) = value {
        q.push((name, v.clone()));
    }
}

/// The `<Contents>` of a listing, with plaintext sizes and client ETags.
fn objects(body: &[u8]) -> S3Result<Vec<Object>> {
    Ok(xml::records(body, "Contents")
        .map_err(upstream_error)?
        .iter()
        .map(|r| Object {
            storage_class: xml::field(r, "StorageClass").map(|s| s.to_string().into()),
            ..listed(r)
        })
        .collect())
}

/// One listed object (a `<Contents>` or a `<Version>`): its key, plaintext
/// size, client ETag and time.
fn listed(r: &xml::Record) -> Object {
    let etag = xml::field(r, "ETag").unwrap_or_default().trim_matches('"');
    let ct: u64 = xml::field(r, "Size")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Object {
        key: xml::field(r, "Key").map(str::to_string),
        // An object this proxy did not write shows its own size.
        size: Some(envelope::plaintext_len(ct, segments_of(etag)).unwrap_or(ct) as i64),
        e_tag: Some(client_etag(etag)),
        last_modified: xml::field(r, "LastModified")
            .and_then(|t| Timestamp::parse(TimestampFormat::DateTime, t).ok()),
        owner: xml::field(r, "ID").map(|id| Owner {
            id: Some(id.to_string()),
            display_name: xml::field(r, "DisplayName").map(str::to_string),
        }),
        ..Default::default()
    }
}

fn common_prefixes(body: &[u8]) -> S3Result<Vec<CommonPrefix>> {
    Ok(xml::records(body, "CommonPrefixes")
        .map_err(upstream_error)?
        .iter()
        .map(|r| CommonPrefix {
            prefix: xml::field(r, "Prefix").map(str::to_string),
        })
        .collect())
}

/// Buckets behind the proxy are unversioned (PutBucketVersioning is not
/// served), so the only version a client may name is `null`, the object
/// itself; any other id is refused rather than answered with another
/// version's bytes.
fn only_null_version(version_id: Option<&str>) -> S3Result<()> {
    match version_id {
        None | Some("null") => Ok(()),
        Some(_) => Err(bad(
            S3ErrorCode::NotImplemented,
            "object versions other than null are not served by this proxy",
        )),
    }
}

/// A copy's source condition that fails is a failed precondition, even
/// the If-None-Match / If-Modified-Since that answer a GET with 304.
fn copy_precondition(e: S3Error) -> S3Error {
    if e.status_code() == Some(http::StatusCode::NOT_MODIFIED) {
        let mut p = S3Error::new(S3ErrorCode::PreconditionFailed);
        p.set_status_code(http::StatusCode::PRECONDITION_FAILED);
        p
    } else {
        e
    }
}

/// A 404 from a HEAD (which has no body to name its error) as `code`.
fn not_found_as(e: S3Error, code: S3ErrorCode) -> S3Error {
    if e.status_code() == Some(http::StatusCode::NOT_FOUND) {
        let mut n = S3Error::new(code);
        n.set_status_code(http::StatusCode::NOT_FOUND);
        n
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_chunked_is_not_an_objects_encoding() {
        assert_eq!(stored_encoding(Some("aws-chunked")), None);
        assert_eq!(
            stored_encoding(Some("aws-chunked,gzip")).as_deref(),
            Some("gzip")
        );
        assert_eq!(stored_encoding(Some("gzip")).as_deref(), Some("gzip"));
        assert_eq!(stored_encoding(None), None);
    }

    #[test]
    fn etags_are_marked_and_map_back() {
        let e = client_etag("\"0123456789abcdef0123456789abcdef\"");
        assert_eq!(e.value(), "0123456789abcdef0123456789abcdef-0");
        assert_eq!(upstream_etag(&e), "0123456789abcdef0123456789abcdef");
        assert_eq!(client_etag("abc-3").value(), "abc-3");
        assert_eq!(segments_of("\"abc-3\""), 3);
        assert_eq!(segments_of("abc"), 1);
    }
}
