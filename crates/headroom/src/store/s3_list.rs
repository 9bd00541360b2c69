//! ListObjectsV2 pages, requested and parsed here rather than through
//! object_store.
//!
//! object_store turns every key of a page into its `Path` type and fails
//! the whole page when one key cannot be one (`..` or `.` segments, empty
//! segments, control characters): a single hostile key would stop a
//! listing of millions. Here a page is parsed key by key, a key that cannot
//! be named is reported on its own, and the listing goes on after it. The
//! request is signed by object_store (a presigned URL with the query
//! parameters folded into the signature), so credentials, regions and
//! addressing style stay object_store's.
//!
//! A page is at most 1,000 keys (S3's limit, and the `max-keys` asked
//! for); its body is read into one buffer of at most [`MAX_PAGE_BYTES`].

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};

use super::StoreError;

/// The largest page body accepted: 1,000 keys of S3's 1,024-byte maximum
/// with their XML is well under it.
pub const MAX_PAGE_BYTES: usize = 4 << 20;

/// Keys per page asked for.
const MAX_KEYS: &str = "1000";

/// One `<Contents>` of a page.
#[derive(Debug, PartialEq, Eq)]
pub enum Listed {
    /// A key that is valid UTF-8, with its metadata.
    Object {
        key: String,
        size: u64,
        last_modified: Option<SystemTime>,
        etag: Option<String>,
    },
    /// A key that could not be read (invalid UTF-8, a bad XML escape): the
    /// lossy text of it and why.
    Unreadable { shown: String, why: String },
}

/// A parsed page.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Listed>,
    /// More keys follow (`IsTruncated`).
    pub truncated: bool,
    /// Where the next page starts (`NextContinuationToken`).
    pub next_token: Option<String>,
}

/// Fetches the page of keys under `prefix` (with its trailing `/`, or
/// empty) that `token` (a previous page's continuation token) names, else
/// the first after `start_after` (a full key), else the first.
pub async fn fetch(
    client: &AmazonS3,
    http: &reqwest::Client,
    prefix: &str,
    token: Option<&str>,
    start_after: Option<&str>,
) -> Result<Page, StoreError> {
    let what = || format!("list objects under {prefix:?}");
    let mut query = vec![
        ("list-type".to_string(), "2".to_string()),
        ("max-keys".to_string(), MAX_KEYS.to_string()),
    ];
    if !prefix.is_empty() {
        query.push(("prefix".to_string(), prefix.to_string()));
    }
    match (token, start_after) {
        (Some(t), _) => query.push(("continuation-token".to_string(), t.to_string())),
        (None, Some(after)) => query.push(("start-after".to_string(), after.to_string())),
        (None, None) => {}
    }
    let options = SignedUrlOptions::default().with_query(query);
    let url = client
        .signed_url_opts(
            http::Method::GET,
            &Path::default(),
            Duration::from_secs(900),
            &options,
        )
        .await
        .map_err(|e| StoreError::permanent(what(), e))?;
    let response = http.get(url).send().await.map_err(|e| StoreError {
        context: what(),
        message: e.to_string(),
        retryable: true,
    })?;
    let status = response.status();
    let body = read_bounded(response, MAX_PAGE_BYTES)
        .await
        .map_err(|message| StoreError {
            context: what(),
            message,
            retryable: true,
        })?;
    if !status.is_success() {
        let code = tag_text(&body, "Code").unwrap_or_default();
        return Err(StoreError {
            context: what(),
            message: format!(
                "{status}{}{}",
                if code.is_empty() { "" } else { ": " },
                code
            ),
            retryable: status.is_server_error() || status.as_u16() == 429,
        });
    }
    parse(&body).map_err(|e| StoreError {
        context: what(),
        message: format!("unreadable answer: {e}"),
        retryable: true,
    })
}

/// A response body of at most `limit` bytes (a larger one is an error,
/// never read whole).
pub(super) async fn read_bounded(
    response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if body.len() + chunk.len() > limit {
            return Err(format!("an answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The text of the first `<tag>` in `xml`, unescaped (for error codes).
pub(super) fn tag_text(xml: &[u8], tag: &str) -> Option<String> {
    let text = String::from_utf8_lossy(xml);
    let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(text[start..end].to_string())
}

/// Parses a ListObjectsV2 answer; a key that cannot be read becomes an
/// [`Listed::Unreadable`] item, never an error of the page.
pub fn parse(xml: &[u8]) -> Result<Page, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut page = Page::default();
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut key: Option<Result<String, (String, String)>> = None;
    let (mut size, mut modified, mut etag) = (0u64, None, None);
    let mut buf = Vec::new();
    // An element's text as it stands in the XML, references included:
    // quick-xml hands text and references (`&amp;`, `&#x7;`) over as
    // separate events.
    let mut raw: Vec<u8> = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("XML at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_vec();
                if name == b"Contents" {
                    key = None;
                    (size, modified, etag) = (0, None, None);
                }
                path.push(name);
                raw.clear();
            }
            Event::Text(t) => raw.extend_from_slice(t.as_ref()),
            Event::GeneralRef(r) => {
                raw.push(b'&');
                raw.extend_from_slice(r.as_ref());
                raw.push(b';');
            }
            Event::End(e) => {
                let name = e.local_name();
                let name = name.as_ref();
                let in_contents = path.len() >= 2 && path[path.len() - 2] == b"Contents";
                match (in_contents, name) {
                    (true, b"Key") => key = Some(text_of(&raw)),
                    (true, b"Size") => {
                        size = std::str::from_utf8(&raw)
                            .ok()
                            .and_then(|s| s.trim().parse().ok())
                            .ok_or("a Size that is not a number")?;
                    }
                    (true, b"LastModified") => {
                        modified = std::str::from_utf8(&raw)
                            .ok()
                            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s.trim()).ok())
                            .map(SystemTime::from);
                    }
                    (true, b"ETag") => {
                        etag = text_of(&raw).ok().map(|e| e.trim_matches('"').to_string());
                    }
                    (false, b"IsTruncated") => page.truncated = raw.trim_ascii() == b"true",
                    (false, b"NextContinuationToken") => page.next_token = text_of(&raw).ok(),
                    (_, b"Contents") => page.items.push(match key.take() {
                        Some(Ok(key)) => Listed::Object {
                            key,
                            size,
                            last_modified: modified,
                            etag: etag.take(),
                        },
                        Some(Err((shown, why))) => Listed::Unreadable { shown, why },
                        None => Listed::Unreadable {
                            shown: String::new(),
                            why: "an entry without a key".into(),
                        },
                    }),
                    _ => {}
                }
                path.pop();
                raw.clear();
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(page)
}

/// The unescaped UTF-8 text of an element, or its lossy form and why not.
fn text_of(raw: &[u8]) -> Result<String, (String, String)> {
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    let text = std::str::from_utf8(raw).map_err(|_| (lossy(), "not valid UTF-8".to_string()))?;
    quick_xml::escape::unescape(text)
        .map(|t| t.into_owned())
        .map_err(|e| (lossy(), format!("a bad XML escape ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_key_is_one_item_and_the_rest_of_the_page_is_read() {
        let mut xml = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>b</Name>\
            <IsTruncated>true</IsTruncated><NextContinuationToken>t&amp;2</NextContinuationToken>\
            <Contents><Key>p/a.txt</Key><LastModified>2024-05-01T10:00:00.000Z</LastModified><ETag>&quot;abc&quot;</ETag><Size>12</Size></Contents>\
            <Contents><Key>p/../escape</Key><Size>3</Size></Contents>\
            <Contents><Key>p/bell&#x7;.txt</Key><Size>4</Size></Contents>\
            <Contents><Key>p/"
            .to_vec();
        xml.extend_from_slice(b"bad\xff.bin</Key><Size>5</Size></Contents>");
        xml.extend_from_slice(
            b"<Contents><Key>p/z</Key><Size>6</Size></Contents></ListBucketResult>",
        );
        let page = parse(&xml).unwrap();
        assert!(page.truncated);
        assert_eq!(page.next_token.as_deref(), Some("t&2"));
        let keys: Vec<String> = page
            .items
            .iter()
            .map(|i| match i {
                Listed::Object { key, .. } => key.clone(),
                Listed::Unreadable { why, .. } => format!("unreadable: {why}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "p/a.txt",
                "p/../escape",
                "p/bell\u{7}.txt",
                "unreadable: not valid UTF-8",
                "p/z"
            ]
        );
        match &page.items[0] {
            Listed::Object {
                size,
                etag,
                last_modified,
                ..
            } => {
                assert_eq!((*size, etag.as_deref()), (12, Some("abc")));
                assert!(last_modified.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_codes_are_read_from_error_answers() {
        let xml = b"<Error><Code>NoSuchBucket</Code><Message>x</Message></Error>";
        assert_eq!(tag_text(xml, "Code").as_deref(), Some("NoSuchBucket"));
    }
}
