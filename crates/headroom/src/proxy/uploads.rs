//! Multipart upload ids as clients see them: the upstream's id with the
//! upload's wrapped data key, object id and KEK id, authenticated.
//!
//! S3 does not return an upload's metadata before it is complete, so a part
//! upload could not otherwise learn the data key its frames are sealed
//! under. Instead of keeping state, the proxy hands the client
//!
//! ```text
//! hr1.<KEK id>.<wrapped data key>.<object id>.<MAC>.<upstream upload id>
//! ```
//!
//! (base64url parts), and every UploadPart, Complete, Abort and ListParts
//! brings it back. The MAC (HMAC-SHA256 under a key derived from the KEK,
//! truncated to 128 bits) binds the data key and object id to that very
//! upstream upload, so a client cannot move one upload's key to another.
//! An upstream id alone (as ListMultipartUploads shows it) can still be
//! aborted or listed, not written to.

use aws_lc_rs::hmac;
use base64::Engine;

use super::envelope::{self, OBJECT_ID};
use super::keys::Keys;

const PREFIX: &str = "hr1";
const MAC_BYTES: usize = 16;

/// What a client's upload id carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadId {
    /// The upstream's id.
    pub upstream: String,
    /// The KEK the data key is wrapped under.
    pub kid: String,
    /// The wrapped data key.
    pub wrapped: Vec<u8>,
    /// The object id.
    pub object: [u8; OBJECT_ID],
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn mac(kek: &[u8; 32], id: &UploadId) -> Vec<u8> {
    use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
    let mut mac_key = [0u8; 32];
    Salt::new(HKDF_SHA256, b"headroom proxy v1")
        .extract(kek)
        .expand(&[b"upload id mac".as_slice()], HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut mac_key))
        .expect("HKDF gives 32 bytes");
    let key = hmac::Key::new(hmac::HMAC_SHA256, &mac_key);
    let mut ctx = hmac::Context::with_key(&key);
    for part in [
        id.upstream.as_bytes(),
        id.kid.as_bytes(),
        &id.wrapped,
        &id.object,
    ] {
        ctx.update(&(part.len() as u32).to_be_bytes());
        ctx.update(part);
    }
    ctx.sign().as_ref()[..MAC_BYTES].to_vec()
}

impl UploadId {
    /// The client's form, authenticated under the KEK `kid` names.
    pub fn encode(&self, keys: &Keys) -> String {
        let kek = keys
            .kek(&self.kid)
            .expect("the upload's KEK is in the key file");
        format!(
            "{PREFIX}.{}.{}.{}.{}.{}",
            b64().encode(&self.kid),
            b64().encode(&self.wrapped),
            b64().encode(self.object),
            b64().encode(mac(kek, self)),
            self.upstream
        )
    }

    /// Reads a client's upload id; `Ok(None)` for a plain upstream id,
    /// an error for one that is ours but altered or under an unknown KEK.
    pub fn decode(s: &str, keys: &Keys) -> Result<Option<Self>, String> {
        let Some(rest) = s.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('.')) else {
            return Ok(None);
        };
        let fields: Vec<&str> = rest.splitn(5, '.').collect();
        let [kid, wrapped, object, tag, upstream] = fields[..] else {
            return Err("a malformed upload id".into());
        };
        let dec = |f: &str| {
            b64()
                .decode(f)
                .map_err(|_| "a malformed upload id".to_string())
        };
        let kid = String::from_utf8(dec(kid)?).map_err(|_| "a malformed upload id")?;
        let id = UploadId {
            upstream: upstream.to_string(),
            wrapped: dec(wrapped)?,
            object: dec(object)?
                .try_into()
                .map_err(|_| "a malformed upload id".to_string())?,
            kid,
        };
        let kek = keys
            .kek(&id.kid)
            .ok_or_else(|| format!("the upload's KEK {:?} is not in the key file", id.kid))?;
        let want = mac(kek, &id);
        if aws_lc_rs::constant_time::verify_slices_are_equal(&want, &dec(tag)?).is_err() {
            return Err("the upload id was altered".into());
        }
        Ok(Some(id))
    }

    /// The upload's data key.
    pub fn data_key(&self, keys: &Keys) -> Result<[u8; 32], String> {
        let kek = keys
            .kek(&self.kid)
            .ok_or_else(|| format!("KEK {:?} is not in the key file", self.kid))?;
        envelope::unwrap_key(kek, &self.wrapped).map_err(|e| e.to_string())
    }
}

/// The upstream id a client's upload id stands for (its own, if it is a
/// plain one).
pub fn upstream_of(s: &str, keys: &Keys) -> Result<String, String> {
    Ok(match UploadId::decode(s, keys)? {
        Some(id) => id.upstream,
        None => s.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::keys::KeyFile;

    #[test]
    fn upload_ids_round_trip_and_refuse_tampering() {
        let keys = KeyFile::generate("a", "a-secret-of-enough-length")
            .unwrap()
            .check()
            .unwrap();
        let (kid, kek) = keys.current();
        let data_key = [3u8; 32];
        let id = UploadId {
            upstream: "abc.def-123_x".into(),
            kid: kid.to_string(),
            wrapped: envelope::wrap_key(kek, &data_key),
            object: [5; OBJECT_ID],
        };
        let s = id.encode(&keys);
        let back = UploadId::decode(&s, &keys).unwrap().unwrap();
        assert_eq!(back, id);
        assert_eq!(back.data_key(&keys).unwrap(), data_key);
        assert_eq!(upstream_of(&s, &keys).unwrap(), "abc.def-123_x");
        assert_eq!(UploadId::decode("plain-upstream-id", &keys), Ok(None));
        // Another upstream id with this key: the MAC no longer matches.
        let moved = s.replace("abc.def-123_x", "other-upload");
        assert!(UploadId::decode(&moved, &keys).is_err());
    }
}
