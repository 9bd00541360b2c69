//! Access tokens for the Drive API, and their refresh.
//!
//! Three sources, in the order they are looked for:
//!
//! 1. a credentials file named by `--gdrive-credentials` (or a `serve`
//!    service's named credentials), else `GOOGLE_APPLICATION_CREDENTIALS`
//!    when `GOOGLE_OAUTH_ACCESS_TOKEN` is not set. The file is one of
//!    * a **service-account key** (`"type": "service_account"`): a JWT
//!      signed with its RS256 key is exchanged at the key file's own
//!      `token_uri` (RFC 7523), optionally with `sub` set to a user to
//!      impersonate (domain-wide delegation);
//!    * an **authorized user** (`"type": "authorized_user"`, what `gcloud
//!      auth application-default login` writes): its refresh token is
//!      exchanged at `token_uri` (RFC 6749 section 6);
//!    * an **rclone token** (`{"access_token", "refresh_token", "expiry"}`):
//!      the same refresh, with the OAuth client given by
//!      `--gdrive-client-id`/`--gdrive-client-secret`;
//! 2. a ready access token in `GOOGLE_OAUTH_ACCESS_TOKEN` (the variable
//!    Terraform's Google provider reads), for short jobs: it cannot be
//!    refreshed, so a job that outlives it fails with a message saying so.
//!
//! A token is refreshed before it expires (when less than a quarter of its
//! lifetime, at most five minutes, is left), by one request however many
//! transfers ask at once: the cached token sits behind an async mutex, so
//! the first caller refreshes and the others wait for its answer. A 401
//! from the API (a token revoked early) drops the cached token once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::store::StoreError;

/// The scope headroom asks for: it only reads.
pub const SCOPE: &str = "https://www.googleapis.com/auth/drive.readonly";

/// Google's token endpoint, when a credentials file names none.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// How a token is obtained.
#[derive(Clone)]
enum Grant {
    /// A ready token from the environment; never refreshed.
    Ready(String),
    /// RFC 7523: a signed JWT exchanged for a token.
    ServiceAccount {
        email: String,
        key_id: Option<String>,
        key: Arc<RsaKeyPair>,
        token_uri: String,
        subject: Option<String>,
    },
    /// RFC 6749 section 6: a refresh token exchanged for a token.
    Refresh {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
    },
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        match self {
            Grant::Ready(_) => f.write_str("Ready(..)"),
            Grant::ServiceAccount { email, .. } => write!(f, "ServiceAccount({email})"),
            Grant::Refresh { client_id, .. } => write!(f, "Refresh({client_id})"),
        }
    }
}

/// Where credentials come from, as the job was told.
#[derive(Clone, Debug, Default)]
pub struct CredentialsConfig {
    /// A credentials file (service-account key, authorized user, or rclone
    /// token); else `GOOGLE_OAUTH_ACCESS_TOKEN`, else
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    pub file: Option<PathBuf>,
    /// The user a service account acts as (domain-wide delegation).
    pub impersonate: Option<String>,
    /// The OAuth client of an rclone token (rclone's own is not headroom's
    /// to use).
    pub client_id: Option<String>,
    /// Its secret.
    pub client_secret: Option<String>,
}

/// A cached token and when to refresh it.
struct Cached {
    token: String,
    refresh_at: Option<Instant>,
}

/// Tokens for every request of one store, refreshed before they expire.
pub struct TokenSource {
    grant: Grant,
    /// Where the credentials came from, for messages.
    origin: String,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("grant", &self.grant)
            .field("origin", &self.origin)
            .finish()
    }
}

fn bad_file(path: &Path, why: impl std::fmt::Display) -> StoreError {
    StoreError::permanent(format!("Google credentials file {}", path.display()), why)
}

/// The value of a string field of a credentials file.
fn field(json: &serde_json::Value, name: &str, path: &Path) -> Result<String, StoreError> {
    match json.get(name).and_then(|v| v.as_str()) {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(bad_file(path, format!("it has no \"{name}\""))),
    }
}

/// The DER inside a PEM block (`-----BEGIN PRIVATE KEY-----`).
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN ")?;
    let body_start = start + pem[start..].find('\n')? + 1;
    let end = body_start + pem[body_start..].find("-----END ")?;
    let b64: String = pem[body_start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

impl TokenSource {
    /// The token source `config` and the environment name; the error says
    /// what is missing or unreadable.
    pub fn from_config(
        config: &CredentialsConfig,
        http: reqwest::Client,
    ) -> Result<TokenSource, StoreError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (grant, origin) = if let Some(file) = &config.file {
            (
                Self::grant_of_file(file, config)?,
                file.display().to_string(),
            )
        } else if let Some(token) = env("GOOGLE_OAUTH_ACCESS_TOKEN") {
            (Grant::Ready(token), "GOOGLE_OAUTH_ACCESS_TOKEN".to_string())
        } else if let Some(file) = env("GOOGLE_APPLICATION_CREDENTIALS") {
            let file = PathBuf::from(file);
            (
                Self::grant_of_file(&file, config)?,
                format!("{} (GOOGLE_APPLICATION_CREDENTIALS)", file.display()),
            )
        } else {
            return Err(StoreError::permanent(
                "Google Drive",
                "no credentials: give --gdrive-credentials FILE (a service-account key, an authorized-user file or an rclone token), or set GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_OAUTH_ACCESS_TOKEN",
            ));
        };
        if config.impersonate.is_some() && !matches!(grant, Grant::ServiceAccount { .. }) {
            return Err(StoreError::permanent(
                format!("Google credentials {origin}"),
                "--gdrive-impersonate needs a service-account key (domain-wide delegation); these credentials are a user's own",
            ));
        }
        Ok(TokenSource {
            grant,
            origin,
            http,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    fn grant_of_file(path: &Path, config: &CredentialsConfig) -> Result<Grant, StoreError> {
        // A key file is a few KiB; anything larger than 1 MiB is not one,
        // and is never read further than that.
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| bad_file(path, e))?;
        let mut text = String::new();
        file.take((1 << 20) + 1)
            .read_to_string(&mut text)
            .map_err(|e| bad_file(path, e))?;
        if text.len() > 1 << 20 {
            return Err(bad_file(
                path,
                "it is larger than 1 MiB: not a credentials file",
            ));
        }
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad_file(path, format!("it is not JSON: {e}")))?;
        let token_uri = json
            .get("token_uri")
            .and_then(|v| v.as_str())
            .unwrap_or(GOOGLE_TOKEN_URI)
            .to_string();
        match json.get("type").and_then(|v| v.as_str()) {
            Some("service_account") => {
                let pem = field(&json, "private_key", path)?;
                let der = pem_der(&pem)
                    .ok_or_else(|| bad_file(path, "its private_key is not a PEM block"))?;
                let key = RsaKeyPair::from_pkcs8(&der).map_err(|e| {
                    bad_file(
                        path,
                        format!("its private_key is not a PKCS#8 RSA key: {e}"),
                    )
                })?;
                Ok(Grant::ServiceAccount {
                    email: field(&json, "client_email", path)?,
                    key_id: json
                        .get("private_key_id")
                        .and_then(|v| v.as_str())
                        .map(str::to_string),
                    key: Arc::new(key),
                    token_uri,
                    subject: config.impersonate.clone(),
                })
            }
            Some("authorized_user") => Ok(Grant::Refresh {
                client_id: field(&json, "client_id", path)?,
                client_secret: field(&json, "client_secret", path)?,
                refresh_token: field(&json, "refresh_token", path)?,
                token_uri,
            }),
            Some(other) => Err(bad_file(
                path,
                format!(
                    "its type {other:?} is neither \"service_account\" nor \"authorized_user\""
                ),
            )),
            None if json.get("refresh_token").is_some() => {
                let (Some(client_id), Some(client_secret)) =
                    (config.client_id.clone(), config.client_secret.clone())
                else {
                    return Err(bad_file(
                        path,
                        "it is an OAuth token (as rclone keeps it), which refreshes only with the OAuth client it was issued to: give --gdrive-client-id and --gdrive-client-secret",
                    ));
                };
                Ok(Grant::Refresh {
                    client_id,
                    client_secret,
                    refresh_token: field(&json, "refresh_token", path)?,
                    token_uri,
                })
            }
            None => Err(bad_file(
                path,
                "it is neither a service-account key, an authorized-user file nor an OAuth token (no \"type\", no \"refresh_token\")",
            )),
        }
    }

    /// Where the credentials came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A token to send, refreshed first if it is due.
    pub async fn token(&self) -> Result<String, StoreError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets `token` after the API refused it (401), so the next call
    /// fetches a new one; `false` when it cannot be replaced (a ready
    /// token from the environment).
    pub async fn refused(&self, token: &str) -> bool {
        if matches!(self.grant, Grant::Ready(_)) {
            return false;
        }
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.token == token) {
            *cached = None;
        }
        true
    }

    async fn fetch(&self) -> Result<Cached, StoreError> {
        let (token_uri, form) = match &self.grant {
            Grant::Ready(token) => {
                return Ok(Cached {
                    token: token.clone(),
                    refresh_at: None,
                });
            }
            Grant::ServiceAccount {
                email,
                key_id,
                key,
                token_uri,
                subject,
            } => {
                let jwt = signed_jwt(email, key_id.as_deref(), key, token_uri, subject.as_deref())
                    .map_err(|e| {
                        StoreError::permanent(format!("Google credentials {}", self.origin), e)
                    })?;
                let form = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
                    .append_pair("assertion", &jwt)
                    .finish();
                (token_uri, form)
            }
            Grant::Refresh {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => {
                let form = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("client_id", client_id)
                    .append_pair("client_secret", client_secret)
                    .append_pair("refresh_token", refresh_token)
                    .finish();
                (token_uri, form)
            }
        };
        let context = || {
            format!(
                "get a Google access token from {token_uri} for {}",
                self.origin
            )
        };
        let started = Instant::now();
        let mut backoff = crate::store::retry::Backoff::new(&crate::store::retry::Retry::default());
        loop {
            let sent = self
                .http
                .post(token_uri.as_str())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form.clone())
                .send()
                .await;
            let r = match sent {
                Ok(r) => token_answer(r)
                    .await
                    .map_err(|(message, retryable)| StoreError {
                        context: context(),
                        message,
                        retryable,
                    }),
                Err(e) => Err(StoreError {
                    context: context(),
                    message: super::api::reqwest_message(&e),
                    retryable: true,
                }),
            };
            match r {
                Ok((token, lifetime)) => {
                    // Refresh with a quarter of the lifetime (at most five
                    // minutes) left, counted from when it was asked for.
                    let margin = (lifetime / 4).min(Duration::from_secs(300));
                    return Ok(Cached {
                        token,
                        refresh_at: Some(started + lifetime.saturating_sub(margin)),
                    });
                }
                Err(e) if backoff.retry(&e).await => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads a token endpoint's answer: the token and its lifetime, or the
/// error (RFC 6749 section 5.2) and whether it is worth retrying.
async fn token_answer(r: reqwest::Response) -> Result<(String, Duration), (String, bool)> {
    let status = r.status();
    let body = super::api::read_small(r).await.map_err(|e| (e, true))?;
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let text = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    if !status.is_success() {
        let retryable = status.is_server_error() || status.as_u16() == 429;
        let error = text("error").unwrap_or_default();
        let description = text("error_description").unwrap_or_default();
        let meaning = match error.as_str() {
            "invalid_grant" => {
                "the grant was refused: the refresh token is expired or revoked, the key was deleted, or the clock is off"
            }
            "invalid_client" => "the OAuth client or service account is unknown or disabled",
            "unauthorized_client" => {
                "this client may not use this grant (for impersonation: domain-wide delegation is not set up for the scope)"
            }
            "invalid_scope" => "the Drive scope was refused",
            _ => "",
        };
        let mut message = format!("{status}");
        for part in [error.as_str(), description.as_str(), meaning] {
            if !part.is_empty() {
                message.push_str(": ");
                message.push_str(part);
            }
        }
        return Err((message, retryable));
    }
    let token = text("access_token").ok_or(("an answer without access_token".to_string(), true))?;
    let lifetime = json
        .as_ref()
        .and_then(|j| j.get("expires_in"))
        .and_then(|v| v.as_u64())
        .unwrap_or(3600);
    Ok((token, Duration::from_secs(lifetime.max(1))))
}

/// The JWT a service account exchanges for a token (RFC 7523), valid for
/// an hour from now.
fn signed_jwt(
    email: &str,
    key_id: Option<&str>,
    key: &RsaKeyPair,
    token_uri: &str,
    subject: Option<&str>,
) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_string())?
        .as_secs();
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = key_id {
        header["kid"] = kid.into();
    }
    let mut claims = serde_json::json!({
        "iss": email,
        "scope": SCOPE,
        "aud": token_uri,
        "iat": now,
        "exp": now + 3600,
    });
    if let Some(sub) = subject {
        claims["sub"] = sub.into();
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0u8; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| "cannot sign the token request with the private_key".to_string())?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;

    #[test]
    fn a_service_account_jwt_verifies_with_its_public_key() {
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = key.as_der().unwrap();
        let key = RsaKeyPair::from_pkcs8(der.as_ref()).unwrap();
        let jwt = signed_jwt("sa@p.iam", Some("k1"), &key, "http://t/token", Some("u@x")).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            aws_lc_rs::signature::KeyPair::public_key(&key).as_ref(),
        );
        let input = format!("{}.{}", parts[0], parts[1]);
        public
            .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "http://t/token");
        assert_eq!(claims["sub"], "u@x");
        assert_eq!(claims["scope"], SCOPE);
    }

    #[test]
    fn pem_blocks_decode() {
        let pem = "-----BEGIN PRIVATE KEY-----\nAAEC\nAw==\n-----END PRIVATE KEY-----\n";
        assert_eq!(pem_der(pem), Some(vec![0, 1, 2, 3]));
        assert_eq!(pem_der("not a pem"), None);
    }
}
