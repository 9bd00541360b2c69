//! Frames of the AT Protocol event stream (`com.atproto.sync.subscribeRepos`,
//! <https://atproto.com/specs/event-stream>), decoded with
//! `serde_ipld_dagcbor`.
//!
//! A frame is one binary WebSocket message holding two DAG-CBOR objects
//! back to back: a header `{op, t}` and a body. `op` 1 is a message whose
//! type `t` is `#commit`, `#identity`, `#account`, `#sync`, `#info`, ...;
//! `op` -1 is an error `{error, message}` after which the server closes.
//! A message's `seq` is in its body. Only what ingest needs is read: the
//! header, and of the body `seq` and a commit's operations' paths (for
//! `--route`; borrowed from the frame), or an `#info`'s or error's
//! `name`, `error` and `message`; every other value is skipped by its
//! length, never built, so a commit's CAR blocks are not copied.

use std::borrow::Cow;

use serde::Deserialize;

/// What a frame is to ingest.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message with a sequence number: stored. `paths` are a commit's
    /// operations' repository paths (`collection/rkey`).
    Message {
        t: String,
        seq: u64,
        paths: Vec<Cow<'a, str>>,
    },
    /// `#info`: `OutdatedCursor` and the like; not stored.
    Info {
        name: String,
        message: Option<String>,
    },
    /// An error frame; the server closes after it.
    Error {
        error: String,
        message: Option<String>,
    },
    /// An unknown `op`, or a message without a `seq`: skipped (the spec
    /// asks clients to ignore what they do not know).
    Skipped { why: String },
}

#[derive(Deserialize)]
struct Header {
    op: i64,
    #[serde(default)]
    t: Option<String>,
}

#[derive(Deserialize, Default)]
struct Body<'a> {
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default, borrow)]
    ops: Option<Vec<Op<'a>>>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A commit's operation; only its path is read.
#[derive(Deserialize)]
struct Op<'a> {
    #[serde(default, borrow)]
    path: Option<Cow<'a, str>>,
}

/// Decodes `frame`; an error when it is not two DAG-CBOR objects (the spec
/// says to drop the connection then).
pub fn decode(frame: &[u8]) -> Result<Frame<'_>, String> {
    let mut de = serde_ipld_dagcbor::de::Deserializer::from_slice(frame);
    let header = Header::deserialize(&mut de).map_err(|e| format!("frame header: {e}"))?;
    let body = Body::deserialize(&mut de).map_err(|e| format!("frame body: {e}"))?;
    de.end()
        .map_err(|e| format!("after the frame's body: {e}"))?;
    Ok(match (header.op, header.t) {
        (-1, _) => Frame::Error {
            error: body.error.unwrap_or_else(|| "(no error name)".into()),
            message: body.message,
        },
        (1, Some(t)) if t == "#info" => Frame::Info {
            name: body.name.unwrap_or_else(|| "(no name)".into()),
            message: body.message,
        },
        (1, Some(t)) => match body.seq {
            Some(seq) if seq > 0 => Frame::Message {
                t,
                seq: seq as u64,
                paths: body
                    .ops
                    .into_iter()
                    .flatten()
                    .filter_map(|op| op.path)
                    .collect(),
            },
            Some(seq) => Frame::Skipped {
                why: format!("a {t} message with seq {seq}"),
            },
            None => Frame::Skipped {
                why: format!("a {t} message without a seq"),
            },
        },
        (1, None) => Frame::Skipped {
            why: "a message without a type".into(),
        },
        (op, _) => Frame::Skipped {
            why: format!("op {op}"),
        },
    })
}

/// The body of `frame` as JSON in the AT Protocol's JSON form (bytes as
/// `{"$bytes": BASE64}`, links as `{"$link": CID}`).
pub fn body_json(frame: &[u8]) -> Result<Vec<u8>, String> {
    let mut de = serde_ipld_dagcbor::de::Deserializer::from_slice(frame);
    serde::de::IgnoredAny::deserialize(&mut de).map_err(|e| format!("frame header: {e}"))?;
    let body =
        ipld_core::ipld::Ipld::deserialize(&mut de).map_err(|e| format!("frame body: {e}"))?;
    serde_json::to_vec(&to_json(body)).map_err(|e| e.to_string())
}

fn to_json(v: ipld_core::ipld::Ipld) -> serde_json::Value {
    use base64::Engine;
    use ipld_core::ipld::Ipld;
    use serde_json::Value;
    match v {
        Ipld::Null => Value::Null,
        Ipld::Bool(b) => Value::Bool(b),
        Ipld::Integer(i) => i64::try_from(i)
            .map(Value::from)
            .or_else(|_| u64::try_from(i).map(Value::from))
            .unwrap_or_else(|_| Value::String(i.to_string())),
        Ipld::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Ipld::String(s) => Value::String(s),
        Ipld::Bytes(b) => serde_json::json!({
            "$bytes": base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)
        }),
        Ipld::List(l) => Value::Array(l.into_iter().map(to_json).collect()),
        Ipld::Map(m) => Value::Object(m.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        Ipld::Link(cid) => serde_json::json!({ "$link": cid.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    fn frame(header: &impl Serialize, body: &impl Serialize) -> Vec<u8> {
        let mut f = serde_ipld_dagcbor::to_vec(header).unwrap();
        f.extend(serde_ipld_dagcbor::to_vec(body).unwrap());
        f
    }

    #[derive(Serialize)]
    struct H<'a> {
        op: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        t: Option<&'a str>,
    }

    #[test]
    fn frames_are_told_apart_by_header_and_body() {
        use ipld_core::ipld::Ipld;
        let body = Ipld::Map(
            [
                ("seq".to_string(), Ipld::Integer(42)),
                ("repo".to_string(), Ipld::String("did:plc:x".into())),
                ("blocks".to_string(), Ipld::Bytes(vec![7; 1000])),
                (
                    "ops".to_string(),
                    Ipld::List(vec![Ipld::Map(
                        [
                            ("action".to_string(), Ipld::String("create".into())),
                            (
                                "path".to_string(),
                                Ipld::String("app.bsky.feed.post/3k2a".into()),
                            ),
                        ]
                        .into_iter()
                        .collect(),
                    )]),
                ),
            ]
            .into_iter()
            .collect(),
        );
        let commit = frame(
            &H {
                op: 1,
                t: Some("#commit"),
            },
            &body,
        );
        assert_eq!(
            decode(&commit),
            Ok(Frame::Message {
                t: "#commit".into(),
                seq: 42,
                paths: vec!["app.bsky.feed.post/3k2a".into()]
            })
        );
        let json: serde_json::Value = serde_json::from_slice(&body_json(&commit).unwrap()).unwrap();
        assert_eq!(json["seq"], 42);
        assert_eq!(json["repo"], "did:plc:x");
        assert!(
            json["blocks"]["$bytes"]
                .as_str()
                .unwrap()
                .starts_with("BwcH")
        );

        let info = frame(
            &H {
                op: 1,
                t: Some("#info"),
            },
            &serde_json::json!({"name": "OutdatedCursor", "message": "too old"}),
        );
        assert_eq!(
            decode(&info),
            Ok(Frame::Info {
                name: "OutdatedCursor".into(),
                message: Some("too old".into())
            })
        );
        let error = frame(
            &H { op: -1, t: None },
            &serde_json::json!({"error": "FutureCursor", "message": "Cursor in the future."}),
        );
        assert_eq!(
            decode(&error),
            Ok(Frame::Error {
                error: "FutureCursor".into(),
                message: Some("Cursor in the future.".into())
            })
        );
        let unknown = frame(
            &H {
                op: 2,
                t: Some("#x"),
            },
            &serde_json::json!({"seq": 1}),
        );
        assert!(matches!(decode(&unknown), Ok(Frame::Skipped { .. })));
        let no_seq = frame(
            &H {
                op: 1,
                t: Some("#new"),
            },
            &serde_json::json!({"a": 1}),
        );
        assert!(matches!(decode(&no_seq), Ok(Frame::Skipped { .. })));
    }

    #[test]
    fn undecodable_frames_are_errors() {
        for bad in [
            &b""[..],
            &b"\xa2\x62op\x01"[..],
            // A header, and a body cut short.
            &frame(
                &H {
                    op: 1,
                    t: Some("#commit"),
                },
                &serde_json::json!({"seq": 5}),
            )[..9],
            b"{\"op\": 1}",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        let mut trailing = frame(
            &H {
                op: 1,
                t: Some("#commit"),
            },
            &serde_json::json!({"seq": 5}),
        );
        trailing.push(0);
        assert!(decode(&trailing).is_err());
    }
}
