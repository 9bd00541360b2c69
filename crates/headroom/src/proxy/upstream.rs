//! Requests to the upstream S3 server: signed by object_store's SigV4
//! signer (`AwsAuthorizer`, with `UNSIGNED-PAYLOAD`), sent by reqwest with
//! streaming bodies of a length known in advance.
//!
//! object_store's own upload calls take a whole payload in memory; the
//! proxy must send a part as it encrypts it, frame by frame, so it signs
//! and sends the requests itself. Credentials, endpoint, region and
//! addressing come from the same settings (and AWS environment) as `copy`.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use s3s::{S3Error, S3ErrorCode};

use crate::store::bucket::S3Config;

/// The largest upstream answer read into memory (an XML listing of 1,000
/// keys of S3's 1,024-byte maximum is well under it).
pub const MAX_XML_BYTES: usize = 4 << 20;

/// A body to send: a stream of exactly `len` bytes.
pub struct Body {
    pub stream: reqwest::Body,
    pub len: u64,
}

/// The upstream server.
pub struct Upstream {
    base: url::Url,
    region: String,
    virtual_hosted: bool,
    credentials: AwsCredentialProvider,
    http: reqwest::Client,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base.as_str())
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// S3's URI encoding of a key: everything but unreserved characters and
/// `/` percent-encoded.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Upstream {
    /// The upstream at `cfg`'s endpoint (AWS when none), with its
    /// credentials.
    pub fn new(cfg: &S3Config) -> anyhow::Result<Self> {
        let region = cfg.region_name();
        let endpoint = cfg
            .endpoint()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let base: url::Url = endpoint
            .parse()
            .map_err(|e| anyhow::anyhow!("upstream endpoint {endpoint:?}: {e}"))?;
        // object_store resolves credentials (environment, profile-less
        // web identity, instance metadata); its provider is reused here.
        let credentials = cfg
            .s3_client("headroom-proxy")
            .map_err(|e| anyhow::anyhow!("upstream: {e}"))?
            .credentials()
            .clone();
        // A silence limit, not a deadline: a request may stream for as long
        // as a slow client takes, as long as the upstream keeps answering.
        let http = reqwest::Client::builder()
            .read_timeout(cfg.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(cfg.max_idle_connections.max(1))
            .build()?;
        Ok(Upstream {
            base,
            region,
            virtual_hosted: cfg.virtual_hosted,
            credentials,
            http,
        })
    }

    /// The URL of `bucket` (and `key`), with `query`.
    fn url(&self, bucket: Option<&str>, key: Option<&str>, query: &[(&str, String)]) -> url::Url {
        let mut url = self.base.clone();
        let mut path = String::from("/");
        if let Some(b) = bucket {
            if self.virtual_hosted {
                let host = format!("{b}.{}", url.host_str().unwrap_or_default());
                let _ = url.set_host(Some(&host));
            } else {
                path.push_str(b);
                path.push('/');
            }
        }
        if let Some(k) = key {
            path.push_str(&encode_key(k));
        }
        url.set_path(&path);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        url
    }

    /// Sends a signed request; an upstream error answer becomes the S3
    /// error it names (its code, message and status).
    pub async fn send(
        &self,
        method: Method,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &[(&str, String)],
        headers: HeaderMap,
        body: Option<Body>,
    ) -> Result<reqwest::Response, S3Error> {
        let url = self.url(bucket, key, query);
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| upstream_error(format!("credentials: {e}")))?;
        let mut signed = http::Request::builder()
            .method(method.clone())
            .uri(url.as_str())
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| upstream_error(format!("request: {e}")))?;
        *signed.headers_mut() = headers;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .with_sign_payload(false)
            .try_authorize(&mut signed, None)
            .map_err(|e| upstream_error(format!("signing: {e}")))?;
        let mut request = self
            .http
            .request(method, url)
            .headers(signed.headers().clone());
        if let Some(b) = body {
            request = request
                .header(http::header::CONTENT_LENGTH, b.len)
                .body(b.stream);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                upstream_error(format!(
                    "the upstream was silent for longer than --upstream-timeout: {e}"
                ))
            } else {
                upstream_error(format!("the upstream did not answer: {e}"))
            }
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        if response.status() == StatusCode::NOT_MODIFIED {
            // A 304 names the object's ETag (as the client knows it) and
            // time, as S3's does.
            let mut e = S3Error::with_message(S3ErrorCode::NotModified, "Not Modified");
            e.set_status_code(StatusCode::NOT_MODIFIED);
            let mut h = HeaderMap::new();
            if let Some(etag) = response.headers().get(http::header::ETAG) {
                let client = super::service::client_etag(etag.to_str().unwrap_or_default());
                if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", client.value())) {
                    h.insert(http::header::ETAG, v);
                }
            }
            if let Some(t) = response.headers().get(http::header::LAST_MODIFIED) {
                h.insert(http::header::LAST_MODIFIED, t.clone());
            }
            e.set_headers(h);
            return Err(e);
        }
        Err(error_from(response).await)
    }

    /// The segment header at ciphertext offset `at` of an object, with the
    /// answer's headers (the first one, at 0, also gives the object's
    /// length, ETag and metadata). `headers` may pin the version
    /// (`If-Match`).
    pub async fn segment_header(
        &self,
        bucket: &str,
        key: &str,
        at: u64,
        mut headers: HeaderMap,
    ) -> Result<
        (
            reqwest::header::HeaderMap,
            [u8; super::envelope::HEADER as usize],
        ),
        S3Error,
    > {
        use super::envelope::HEADER;
        set_header(
            &mut headers,
            "range",
            &format!("bytes={at}-{}", at + HEADER - 1),
        )?;
        let r = self
            .send(Method::GET, Some(bucket), Some(key), &[], headers, None)
            .await?;
        let kept = r.headers().clone();
        let bytes = read_bounded(r, HEADER as usize).await?;
        let header = bytes.try_into().map_err(|_| {
            S3Error::with_message(
                S3ErrorCode::InvalidObjectState,
                "the stored object is shorter than a segment header",
            )
        })?;
        Ok((kept, header))
    }

    /// Sends a request without a body and reads its XML answer, bounded.
    pub async fn xml(
        &self,
        method: Method,
        bucket: Option<&str>,
        query: &[(&str, String)],
    ) -> Result<Vec<u8>, S3Error> {
        let response = self
            .send(method, bucket, None, query, HeaderMap::new(), None)
            .await?;
        read_bounded(response, MAX_XML_BYTES).await
    }
}

/// A 502-style failure talking to the upstream (a 500 `InternalError` to
/// clients, which they retry).
pub fn upstream_error(message: String) -> S3Error {
    tracing::warn!("upstream: {message}");
    let mut e = S3Error::with_message(S3ErrorCode::InternalError, message);
    e.set_status_code(StatusCode::BAD_GATEWAY);
    e
}

/// Reads an answer's body, at most `max` bytes.
pub async fn read_bounded(response: reqwest::Response, max: usize) -> Result<Vec<u8>, S3Error> {
    use futures::StreamExt;
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| upstream_error(format!("reading the answer: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(upstream_error(format!(
                "the upstream's answer is larger than {max} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The S3 error an upstream error answer names.
async fn error_from(response: reqwest::Response) -> S3Error {
    let status = response.status();
    let body = read_bounded(response, 64 << 10).await.unwrap_or_default();
    let code = super::xml::text(&body, "Code");
    let message = super::xml::text(&body, "Message");
    let code = match code.as_deref() {
        Some(c) => S3ErrorCode::from_bytes(c.as_bytes())
            .unwrap_or_else(|| S3ErrorCode::Custom(c.to_string().into())),
        None => match status {
            StatusCode::NOT_FOUND => S3ErrorCode::NoSuchKey,
            StatusCode::FORBIDDEN => S3ErrorCode::AccessDenied,
            StatusCode::PRECONDITION_FAILED => S3ErrorCode::PreconditionFailed,
            StatusCode::CONFLICT => S3ErrorCode::BucketNotEmpty,
            StatusCode::SERVICE_UNAVAILABLE => S3ErrorCode::SlowDown,
            _ => S3ErrorCode::InternalError,
        },
    };
    let mut e = match message {
        Some(m) => S3Error::with_message(code, m),
        None => S3Error::new(code),
    };
    e.set_status_code(status);
    e
}

/// Sets header `name` to `value`; an error naming the header when the
/// value cannot be one.
pub fn set_header(h: &mut HeaderMap, name: &'static str, value: &str) -> Result<(), S3Error> {
    let v = HeaderValue::from_str(value).map_err(|_| {
        S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("{name}: not a valid header value"),
        )
    })?;
    h.insert(HeaderName::from_static(name), v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_as_s3_signs_them() {
        assert_eq!(encode_key("a/b c+d%é"), "a/b%20c%2Bd%25%C3%A9");
        assert_eq!(encode_key("plain-key_1.txt~"), "plain-key_1.txt~");
    }
}
