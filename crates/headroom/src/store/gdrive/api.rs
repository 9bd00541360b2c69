//! The Drive v3 requests headroom makes, through one pacer.
//!
//! Every request waits for its turn at the [`Pacer`], carries a bearer
//! token from the [`TokenSource`] and is
//! classified by its answer:
//!
//! * 2xx: the pacer speeds up a little;
//! * 401: the token is dropped and the request sent once more with a new one;
//! * 403 `userRateLimitExceeded`/`rateLimitExceeded`/`sharingRateLimitExceeded`
//!   and 429: Google pushes back. The pacer slows every request down and
//!   this one is sent again after an exponential backoff with jitter (0.5 s,
//!   1 s, 2 s ... up to 8 s, plus up to half a second: Google advises
//!   exponential backoff; a longer ceiling only lengthens the tail of a job
//!   while the pacer already slows the rest), up to [`RATE_LIMIT_ATTEMPTS`]
//!   times: being slowed down is not a failure;
//! * 5xx and broken connections: a retryable [`StoreError`], which the
//!   caller's retry loop redoes (re-reading a range from where it broke);
//! * any other 4xx: a permanent error quoting Google's `reason` and message.
//!
//! ## The pacer
//!
//! One per store, shared by the listing and every transfer. Requests start
//! at least `interval` apart. The interval starts at [`MIN_INTERVAL`] (5 ms,
//! 200 requests a second: the Drive API's default quota of 12,000 queries a
//! minute per user); each rate-limit answer doubles it (to at least 10 ms,
//! at most [`MAX_INTERVAL`]; at most once per interval, so a burst of
//! refusals of requests already in flight counts once, as TCP halves its
//! window once per round trip) and each success shrinks it by 30 %. This is
//! rclone's drive pacer (`pacer.NewDefault`: double on a retry, decay on
//! success, 2 s ceiling) with two changes. Its floor is 5 ms, not 100 ms:
//! rclone's 10 requests a second take 20 minutes to list and copy 10,000
//! small files, below what the quota allows. Its decay is faster (30 %, not
//! rclone's 25 %): so the interval falls while fewer than about one request
//! in three is refused, and climbs when more are, instead of climbing to
//! the ceiling under any steady share of refusals.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::auth::TokenSource;
use crate::store::StoreError;

/// The least time between two requests' starts.
pub const MIN_INTERVAL: Duration = Duration::from_millis(5);
/// The most.
pub const MAX_INTERVAL: Duration = Duration::from_secs(2);
/// Sends of one request while Google answers that it is rate limited.
pub const RATE_LIMIT_ATTEMPTS: u32 = 16;
/// The first wait before a rate-limited request is sent again; doubled
/// per refusal, up to [`MAX_RATE_LIMIT_BACKOFF`], plus up to 500 ms.
pub const RATE_LIMIT_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two sends of a rate-limited request.
pub const MAX_RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(8);
/// The largest JSON answer read (a page of 1,000 files with their export
/// links is about 1.5 MiB).
pub const MAX_JSON_BYTES: usize = 8 << 20;

/// Spaces requests out, slower while Google pushes back.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    interval: Duration,
    next: Instant,
    requests: u64,
    pushbacks: u64,
    slowest: Duration,
    /// When the interval was last doubled.
    raised: Option<Instant>,
}

/// What a pacer has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacerStats {
    /// Requests sent.
    pub requests: u64,
    /// Rate-limit answers.
    pub pushbacks: u64,
    /// The interval now.
    pub interval: Duration,
    /// The longest interval it reached.
    pub slowest: Duration,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            state: Mutex::new(PacerState {
                interval: MIN_INTERVAL,
                next: Instant::now(),
                requests: 0,
                pushbacks: 0,
                slowest: MIN_INTERVAL,
                raised: None,
            }),
        }
    }
}

impl Pacer {
    fn lock(&self) -> std::sync::MutexGuard<'_, PacerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for this request's turn.
    pub async fn turn(&self) {
        let at = {
            let mut s = self.lock();
            let now = Instant::now();
            let at = s.next.max(now);
            s.next = at + s.interval;
            s.requests += 1;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }

    /// A request succeeded: shrink the interval by 30 %.
    pub fn success(&self) {
        let mut s = self.lock();
        s.interval = s.interval.mul_f64(0.7).max(MIN_INTERVAL);
    }

    /// Google pushed back: double the interval, once per round of
    /// requests (the refusals of requests already in flight when it was
    /// raised say nothing about the new rate).
    pub fn pushback(&self) {
        let mut s = self.lock();
        s.pushbacks += 1;
        let now = Instant::now();
        let window = s.interval.max(Duration::from_millis(100));
        if s.raised.is_some_and(|at| now.duration_since(at) < window) {
            return;
        }
        s.raised = Some(now);
        s.interval = (s.interval * 2)
            .max(Duration::from_millis(10))
            .min(MAX_INTERVAL);
        if s.interval > s.slowest {
            s.slowest = s.interval;
            tracing::info!(
                interval_ms = s.interval.as_millis() as u64,
                "Google Drive is rate limiting: slowing down to one request every {} ms",
                s.interval.as_millis()
            );
        }
    }

    /// What it has seen so far.
    pub fn stats(&self) -> PacerStats {
        let s = self.lock();
        PacerStats {
            requests: s.requests,
            pushbacks: s.pushbacks,
            interval: s.interval,
            slowest: s.slowest,
        }
    }
}

/// A Drive API client: the endpoint, its tokens and its pacer.
#[derive(Debug)]
pub struct DriveApi {
    http: reqwest::Client,
    /// The API base, without a trailing `/` (`https://www.googleapis.com`).
    base: String,
    tokens: TokenSource,
    pacer: Pacer,
}

/// Google's error body: `{"error": {"code", "message", "errors": [{"reason"}]}}`.
#[derive(Debug, Default)]
pub struct ApiError {
    /// `errors[0].reason`, e.g. `userRateLimitExceeded`, `notFound`.
    pub reason: String,
    /// `error.message`.
    pub message: String,
}

impl ApiError {
    fn parse(body: &[u8]) -> ApiError {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let error = &json["error"];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        ApiError {
            reason: text(&error["errors"][0]["reason"]),
            message: match error["message"].as_str() {
                Some(m) => m.to_string(),
                // The token endpoint's and some proxies' shape.
                None => text(&json["error_description"]),
            },
        }
    }

    fn is_rate_limit(&self) -> bool {
        matches!(
            self.reason.as_str(),
            "userRateLimitExceeded" | "rateLimitExceeded" | "sharingRateLimitExceeded"
        )
    }
}

/// A reqwest error as a message, with its cause (reqwest's own Display
/// hides why a connection failed).
pub fn reqwest_message(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// Reads a small answer (an error or a token), at most 64 KiB of it.
pub async fn read_small(r: reqwest::Response) -> Result<Vec<u8>, String> {
    read_bounded(r, 64 << 10).await
}

async fn read_bounded(r: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| reqwest_message(&e))?;
        if body.len() + chunk.len() > limit {
            return Err(format!("an answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl DriveApi {
    /// A client of the API at `base`.
    pub fn new(http: reqwest::Client, base: &str, tokens: TokenSource) -> DriveApi {
        DriveApi {
            http,
            base: base.trim_end_matches('/').to_string(),
            tokens,
            pacer: Pacer::default(),
        }
    }

    /// The URL of `path` (`/drive/v3/files`) with `query`.
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut url = format!("{}{path}", self.base);
        if !query.is_empty() {
            url.push('?');
            url.push_str(
                &url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(query)
                    .finish(),
            );
        }
        url
    }

    /// The pacer's counts.
    pub fn pacer_stats(&self) -> PacerStats {
        self.pacer.stats()
    }

    /// Where the credentials came from.
    pub fn credentials(&self) -> &str {
        self.tokens.origin()
    }

    /// Sends a GET of `url` (with `range`, if any) until it is answered
    /// with a success, as the module documentation says; `what` names it
    /// in errors.
    pub async fn get(
        &self,
        url: &str,
        range: Option<std::ops::Range<u64>>,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<reqwest::Response, StoreError> {
        let mut rate_limited = 0u32;
        let mut refreshed = false;
        loop {
            let token = self.tokens.token().await?;
            self.pacer.turn().await;
            let mut request = self.http.get(url).bearer_auth(&token);
            if let Some(r) = &range {
                request = request.header("range", format!("bytes={}-{}", r.start, r.end - 1));
            }
            let r = request.send().await.map_err(|e| StoreError {
                context: what(),
                message: reqwest_message(&e),
                retryable: true,
            })?;
            let status = r.status();
            if status.is_success() {
                self.pacer.success();
                return Ok(r);
            }
            let body = read_small(r).await.unwrap_or_default();
            let error = ApiError::parse(&body);
            if status.as_u16() == 429 || (status.as_u16() == 403 && error.is_rate_limit()) {
                self.pacer.pushback();
                rate_limited += 1;
                if rate_limited < RATE_LIMIT_ATTEMPTS {
                    let wait = RATE_LIMIT_BACKOFF
                        .saturating_mul(1 << (rate_limited - 1).min(4))
                        .min(MAX_RATE_LIMIT_BACKOFF)
                        + Duration::from_millis(fastrand::u64(0..500));
                    tracing::debug!(
                        wait_ms = wait.as_millis() as u64,
                        "{}: rate limited ({}), sending again",
                        what(),
                        error.reason
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            if status.as_u16() == 401 && !refreshed && self.tokens.refused(&token).await {
                refreshed = true;
                continue;
            }
            return Err(self.error(what(), status, &error));
        }
    }

    fn error(&self, context: String, status: reqwest::StatusCode, e: &ApiError) -> StoreError {
        let meaning = match (status.as_u16(), e.reason.as_str()) {
            (401, _) => format!(
                "the access token was refused (expired or revoked); credentials: {}",
                self.tokens.origin()
            ),
            (404, _) => {
                "not found, or not shared with these credentials (Drive answers 404 for both)"
                    .to_string()
            }
            (403, "insufficientFilePermissions" | "forbidden" | "insufficientPermissions") => {
                format!(
                    "no permission with the credentials {}",
                    self.tokens.origin()
                )
            }
            (403, "downloadQuotaExceeded") => {
                "the file's download quota is exceeded; try again in 24 hours".to_string()
            }
            (403, "cannotDownloadAbusiveFile") => {
                "Drive flagged the file as malware or spam and will not serve it".to_string()
            }
            (403, "dailyLimitExceeded") => "the project's daily API quota is used up".to_string(),
            (403 | 429, _) if e.is_rate_limit() || status.as_u16() == 429 => {
                format!("still rate limited after {RATE_LIMIT_ATTEMPTS} attempts")
            }
            _ => String::new(),
        };
        let mut message = status.to_string();
        for part in [e.reason.as_str(), e.message.as_str(), meaning.as_str()] {
            if !part.is_empty() {
                message.push_str(": ");
                message.push_str(part);
            }
        }
        StoreError {
            context,
            message,
            retryable: status.is_server_error() || status.as_u16() == 429 || e.is_rate_limit(),
        }
    }

    /// GETs `url` and parses its JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        url: &str,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<T, StoreError> {
        let r = self.get(url, None, what).await?;
        let body = read_bounded(r, MAX_JSON_BYTES)
            .await
            .map_err(|e| StoreError {
                context: what(),
                message: e,
                retryable: true,
            })?;
        serde_json::from_slice(&body).map_err(|e| StoreError {
            context: what(),
            message: format!("an answer that is not the expected JSON: {e}"),
            retryable: true,
        })
    }
}

/// A response body as a stream of chunks.
pub type BodyStream = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The body of `r` as a stream.
pub fn body_stream(r: reqwest::Response) -> BodyStream {
    Box::pin(r.bytes_stream())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_error_bodies_are_read() {
        let body = br#"{"error":{"code":403,"message":"User Rate Limit Exceeded","errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"User Rate Limit Exceeded"}]}}"#;
        let e = ApiError::parse(body);
        assert_eq!(e.reason, "userRateLimitExceeded");
        assert!(e.is_rate_limit());
        let e = ApiError::parse(b"<html>bad gateway</html>");
        assert_eq!(e.reason, "");
    }

    #[test]
    fn the_pacer_slows_on_pushback_and_recovers_on_success() {
        let p = Pacer::default();
        p.pushback();
        assert_eq!(p.stats().interval, Duration::from_millis(10));
        for _ in 0..20 {
            p.pushback();
        }
        assert_eq!(
            p.stats().interval,
            Duration::from_millis(10),
            "a burst of refusals counts once"
        );
        for _ in 0..20 {
            p.lock().raised = None;
            p.pushback();
        }
        assert_eq!(p.stats().interval, MAX_INTERVAL);
        for _ in 0..40 {
            p.success();
        }
        assert_eq!(p.stats().interval, MIN_INTERVAL);
        assert_eq!(p.stats().slowest, MAX_INTERVAL);
        // Three successes outweigh one refusal: 2 * 0.7^3 < 1.
        let p = Pacer::default();
        for _ in 0..100 {
            p.lock().raised = None;
            p.pushback();
            p.success();
            p.success();
            p.success();
        }
        assert!(
            p.stats().interval < Duration::from_millis(20),
            "{:?}",
            p.stats()
        );
    }
}
