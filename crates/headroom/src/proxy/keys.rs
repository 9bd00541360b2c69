//! The proxy's key file: the client credentials it accepts and the
//! key-encryption keys (KEKs) that wrap every object's data key.
//!
//! ```json
//! {
//!   "version": 1,
//!   "credentials": [
//!     {"access_key": "backup", "secret_key": "…"}
//!   ],
//!   "keks": [
//!     {"id": "k20261201a", "key": "<32 bytes, base64>"},
//!     {"id": "k20250601", "key": "<32 bytes, base64>"}
//!   ],
//!   "current": "k20261201a"
//! }
//! ```
//!
//! * `credentials`: every access key / secret key pair a client may sign
//!   requests with (SigV4), at least one.
//! * `keks`: AES-256 key-encryption keys, each with an id that is stored
//!   in the metadata of every object whose data key it wraps. Old KEKs stay
//!   in the file for as long as objects wrapped under them exist; `headroom
//!   proxy rewrap` moves every object to `current`.
//! * `current`: the KEK new objects (and rewrapped ones) use.
//!
//! The file holds secrets: it is refused unless only its owner can read it
//! (mode 0600 or stricter), as ssh refuses a readable private key.

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The largest key file read: a file this size holds thousands of keys.
const MAX_KEY_FILE: u64 = 1 << 20;

/// What a key file holds, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// The format's version: 1.
    pub version: u32,
    /// Client credentials.
    pub credentials: Vec<Credential>,
    /// Key-encryption keys.
    pub keks: Vec<KekEntry>,
    /// The id of the KEK new data keys are wrapped under.
    pub current: String,
}

/// One client credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The access key id clients sign with.
    pub access_key: String,
    /// Its secret.
    pub secret_key: String,
}

/// One key-encryption key, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekEntry {
    /// Stored in each object's metadata: which KEK wraps its data key.
    pub id: String,
    /// 32 bytes, standard base64.
    pub key: String,
}

/// A loaded, checked key file.
#[derive(Clone)]
pub struct Keys {
    /// Client credentials, by access key.
    pub credentials: Vec<Credential>,
    keks: Vec<(String, [u8; 32])>,
    current: usize,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("credentials", &self.credentials.len())
            .field(
                "keks",
                &self.keks.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .field("current", &self.current_id())
            .finish()
    }
}

/// A fresh random KEK id: `k` and 12 hex digits.
fn new_kek_id() -> anyhow::Result<String> {
    let mut raw = [0u8; 6];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| anyhow::anyhow!("no random bytes"))?;
    Ok(format!("k{}", crate::store::hex(&raw)))
}

/// 32 random bytes.
pub fn random_key() -> anyhow::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| anyhow::anyhow!("no random bytes"))?;
    Ok(key)
}

impl KeyFile {
    /// A new key file with one credential and one fresh KEK.
    pub fn generate(access_key: &str, secret_key: &str) -> anyhow::Result<Self> {
        let id = new_kek_id()?;
        let file = KeyFile {
            version: 1,
            credentials: vec![Credential {
                access_key: access_key.to_string(),
                secret_key: secret_key.to_string(),
            }],
            keks: vec![KekEntry {
                id: id.clone(),
                key: base64::engine::general_purpose::STANDARD.encode(random_key()?),
            }],
            current: id,
        };
        file.check()?;
        Ok(file)
    }

    /// Checks the file's contents; the error says what is wrong.
    pub fn check(&self) -> anyhow::Result<Keys> {
        if self.version != 1 {
            bail!(
                "version {} is not one this headroom reads (1)",
                self.version
            );
        }
        if self.credentials.is_empty() {
            bail!("no credentials: clients could not sign any request");
        }
        for (i, c) in self.credentials.iter().enumerate() {
            if c.access_key.is_empty() || c.access_key.contains(['/', ' ', '\n']) {
                bail!("credentials[{i}]: the access key must be non-empty, without '/' or spaces");
            }
            if c.secret_key.len() < 16 {
                bail!(
                    "credentials[{i}] ({}): the secret key is shorter than 16 characters",
                    c.access_key
                );
            }
            if self.credentials[..i]
                .iter()
                .any(|o| o.access_key == c.access_key)
            {
                bail!(
                    "credentials[{i}]: access key {} appears twice",
                    c.access_key
                );
            }
        }
        let mut keks = Vec::with_capacity(self.keks.len());
        for (i, k) in self.keks.iter().enumerate() {
            if k.id.is_empty() || k.id.len() > 64 || !k.id.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("keks[{i}]: an id is 1 to 64 printable ASCII characters");
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(k.key.trim())
                .with_context(|| format!("keks[{i}] ({}): the key is not base64", k.id))?;
            let key: [u8; 32] = raw.try_into().map_err(|raw: Vec<u8>| {
                anyhow::anyhow!(
                    "keks[{i}] ({}): the key is {} bytes; an AES-256 key is 32",
                    k.id,
                    raw.len()
                )
            })?;
            if keks.iter().any(|(id, _)| id == &k.id) {
                bail!("keks[{i}]: id {} appears twice", k.id);
            }
            keks.push((k.id.clone(), key));
        }
        let current = keks
            .iter()
            .position(|(id, _)| *id == self.current)
            .with_context(|| format!("current: no KEK has the id {:?}", self.current))?;
        Ok(Keys {
            credentials: self.credentials.clone(),
            keks,
            current,
        })
    }

    /// Adds a fresh KEK and makes it current; returns its id. The old ones
    /// stay, to unwrap what they wrapped until `rewrap` has moved it.
    pub fn rotate(&mut self) -> anyhow::Result<String> {
        let id = new_kek_id()?;
        self.keks.push(KekEntry {
            id: id.clone(),
            key: base64::engine::general_purpose::STANDARD.encode(random_key()?),
        });
        self.current = id.clone();
        Ok(id)
    }

    /// The file as written: pretty JSON and a newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a key file serialises");
        s.push('\n');
        s
    }
}

impl Keys {
    /// Reads and checks a key file that only its owner may read.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let ctx = || format!("key file {}", path.display());
        let file = std::fs::File::open(path).with_context(ctx)?;
        let meta = file.metadata().with_context(ctx)?;
        if meta.mode() & 0o077 != 0 {
            bail!(
                "key file {} can be read by others (mode {:o}): it holds secrets; chmod 600 it",
                path.display(),
                meta.mode() & 0o777
            );
        }
        if meta.len() > MAX_KEY_FILE {
            bail!("key file {} is larger than 1 MiB", path.display());
        }
        let mut text = String::new();
        file.take(MAX_KEY_FILE)
            .read_to_string(&mut text)
            .with_context(ctx)?;
        let parsed: KeyFile = serde_json::from_str(&text).with_context(ctx)?;
        parsed.check().with_context(ctx)
    }

    /// The id and key new data keys are wrapped under.
    pub fn current(&self) -> (&str, &[u8; 32]) {
        let (id, key) = &self.keks[self.current];
        (id, key)
    }

    /// The current KEK's id.
    pub fn current_id(&self) -> &str {
        &self.keks[self.current].0
    }

    /// The KEK with `id`, if the file has it.
    pub fn kek(&self, id: &str) -> Option<&[u8; 32]> {
        self.keks.iter().find(|(i, _)| i == id).map(|(_, k)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_file_reads_back_and_rotation_keeps_old_keys() {
        let mut file = KeyFile::generate("backup", "a-secret-of-enough-length").unwrap();
        let keys = file.check().unwrap();
        let first = keys.current_id().to_string();
        let parsed: KeyFile = serde_json::from_str(&file.to_json()).unwrap();
        assert_eq!(parsed.check().unwrap().current().1, keys.current().1);
        let second = file.rotate().unwrap();
        let keys = file.check().unwrap();
        assert_eq!(keys.current_id(), second);
        assert!(keys.kek(&first).is_some(), "the old KEK stays");
        assert_ne!(keys.kek(&first), keys.kek(&second));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let good = KeyFile::generate("backup", "a-secret-of-enough-length").unwrap();
        let mut short = good.clone();
        short.credentials[0].secret_key = "short".into();
        let mut no_current = good.clone();
        no_current.current = "nope".into();
        let mut bad_key = good.clone();
        bad_key.keks[0].key = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
        let mut none = good.clone();
        none.credentials.clear();
        for (file, words) in [
            (short, "shorter than 16"),
            (no_current, "no KEK has the id"),
            (bad_key, "16 bytes"),
            (none, "no credentials"),
        ] {
            let e = file.check().unwrap_err().to_string();
            assert!(e.contains(words), "{e}");
        }
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let file = KeyFile::generate("backup", "a-secret-of-enough-length").unwrap();
        std::fs::write(&path, file.to_json()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keys::load(&path).unwrap_err().to_string();
        assert!(e.contains("can be read by others"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Keys::load(&path).is_ok());
    }
}
