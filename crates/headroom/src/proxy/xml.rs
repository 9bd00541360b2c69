//! Reading the upstream's XML answers (listings, errors): the text of
//! named elements, and records of repeated elements with their children's
//! text. Enough for S3's flat answers; no DTDs, no entities beyond XML's
//! own.

/// The unescaped text of the first `<tag>` anywhere in `xml`.
pub fn text(xml: &[u8], tag: &str) -> Option<String> {
    let mut found = None;
    walk(xml, |path, name, value| {
        if found.is_none() && name == tag && path.len() <= 2 {
            found = Some(value.to_string());
        }
    })
    .ok()?;
    found
}

/// One repeated element: its children's names and texts, in order.
pub type Record = Vec<(String, String)>;

/// Every `<tag>` that is a direct child of the root, as a record of its
/// children (nested elements flattened: `Owner/ID` is `ID`).
pub fn records(xml: &[u8], tag: &str) -> Result<Vec<Record>, String> {
    let mut out: Vec<Record> = Vec::new();
    let mut open = false;
    walk(xml, |path, name, value| {
        if path.len() == 1 && name == tag {
            // The record itself ends: its children came before.
            open = false;
        } else if path.len() >= 2 && path[1] == tag {
            if !open {
                out.push(Vec::new());
                open = true;
            }
            if let Some(r) = out.last_mut() {
                r.push((name.to_string(), value.to_string()));
            }
        }
    })?;
    Ok(out)
}

/// Calls `leaf(path of open elements above it, name, unescaped text)` at
/// the end of every element. quick-xml hands text and references
/// (`&amp;`, `&#x7;`) over as separate events: they are joined first.
fn walk(xml: &[u8], mut leaf: impl FnMut(&[String], &str, &str)) -> Result<(), String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut path: Vec<String> = Vec::new();
    let mut raw: Vec<u8> = Vec::new();
    let mut buf = Vec::new();
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| {
            format!(
                "bad XML from the upstream at byte {}: {e}",
                reader.buffer_position()
            )
        })?;
        match event {
            Event::Start(e) => {
                path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                raw.clear();
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                leaf(&path, &name, "");
            }
            Event::Text(t) => raw.extend_from_slice(t.as_ref()),
            Event::GeneralRef(r) => {
                raw.push(b'&');
                raw.extend_from_slice(r.as_ref());
                raw.push(b';');
            }
            Event::End(_) => {
                let name = path.pop().unwrap_or_default();
                let text = String::from_utf8_lossy(&raw);
                let value = quick_xml::escape::unescape(&text)
                    .map_or_else(|_| text.to_string(), |c| c.into_owned());
                leaf(&path, &name, value.trim_matches(|c| c == '\n' || c == '\r'));
                raw.clear();
            }
            Event::Eof => return Ok(()),
            _ => {}
        }
        buf.clear();
    }
}

/// The value of `name` in `record`.
pub fn field<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_texts_are_read() {
        let xml = br#"<?xml version="1.0"?><ListBucketResult><IsTruncated>false</IsTruncated>
            <Contents><Key>a&amp;b</Key><Size>10</Size><Owner><ID>x</ID></Owner></Contents>
            <Contents><Key>c</Key><Size>0</Size></Contents>
            <CommonPrefixes><Prefix>d/</Prefix></CommonPrefixes></ListBucketResult>"#;
        assert_eq!(text(xml, "IsTruncated").as_deref(), Some("false"));
        let c = records(xml, "Contents").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(field(&c[0], "Key"), Some("a&b"));
        assert_eq!(field(&c[0], "ID"), Some("x"));
        assert_eq!(field(&c[1], "Size"), Some("0"));
        let p = records(xml, "CommonPrefixes").unwrap();
        assert_eq!(field(&p[0], "Prefix"), Some("d/"));
        assert_eq!(
            text(b"<Error><Code>NoSuchKey</Code></Error>", "Code").as_deref(),
            Some("NoSuchKey")
        );
    }
}
