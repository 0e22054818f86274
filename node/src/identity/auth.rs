//! Passwords and session tokens.
//!
//! Passwords are hashed with Argon2id on the blocking pool (a hash costs tens of milliseconds of CPU; a semaphore
//! bounds how many run at once so a login flood cannot starve the sessions). Tokens are
//! `v3.<key id>.<user>.<issued ms>.<expires>.<token id>.<sig>` with `sig = base64url(HMAC-SHA256(key, everything
//! before it))`: any node verifies one without a database round trip, and the signature check is constant-time.
//!
//! Keys have ids (`--token-keys id:secret,…`): the first signs, every listed key verifies, so a key is rotated by
//! adding the new one first, waiting out the token lifetime, then dropping the old one — nobody is logged out.
//! `v2` tokens (issued before key ids) are verified against every listed key.

use crate::error::Error;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::ids::UserId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Semaphore;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token format no longer accepted (it cannot be revoked); log in again")]
    Unsupported,
}

/// What a verified token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub user: UserId,
    /// When the token was issued, in Unix milliseconds (compared with the user's "not before").
    pub issued_ms: u64,
    /// When the token expires, in Unix seconds.
    pub expires: u64,
    /// The token's id, 128 random bits (what `POST /v1/auth/logout` revokes).
    pub id: u128,
}

impl Claims {
    /// Seconds until the token expires (0 once it has): how long a revocation of it must be remembered.
    pub fn remaining_secs(&self) -> u64 {
        self.expires.saturating_sub(unix_now())
    }
}

/// A token signing key and its id.
#[derive(Clone)]
pub struct TokenKey {
    pub id: String,
    secret: Vec<u8>,
}

/// Shows the id only: a key's secret never reaches a log or an error.
impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    pub fn new(id: &str, secret: &str) -> Self {
        TokenKey {
            id: id.to_string(),
            secret: secret.as_bytes().to_vec(),
        }
    }
}

/// The shortest accepted key secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Parses `id:secret,id:secret` (the first signs). Ids are 1-32 of `[A-Za-z0-9_-]`, unique; secrets at least
/// `MIN_SECRET_BYTES` long. The error names the problem but never a secret.
pub fn parse_token_keys(list: &str) -> Result<Vec<TokenKey>, String> {
    let mut keys: Vec<TokenKey> = Vec::new();
    for (index, entry) in list.split(',').map(str::trim).enumerate() {
        let Some((id, secret)) = entry.split_once(':') else {
            return Err(format!("--token-keys entry {} is not id:secret", index + 1));
        };
        let valid_id = (1..=32).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_id {
            return Err(format!(
                "--token-keys entry {}: ids are 1-32 of [A-Za-z0-9_-]",
                index + 1
            ));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "--token-keys key {id}: secrets are at least {MIN_SECRET_BYTES} bytes"
            ));
        }
        if keys.iter().any(|k| k.id == id) {
            return Err(format!("--token-keys: key id {id} appears twice"));
        }
        keys.push(TokenKey::new(id, secret));
    }
    Ok(keys)
}

/// Signs and verifies tokens, hashes and checks passwords.
pub struct Authenticator {
    /// The first signs; all verify.
    keys: Vec<TokenKey>,
    token_ttl: Duration,
    params: Params,
    hashing: Arc<Semaphore>,
}

impl Authenticator {
    /// One key (id `default`): `--token-secret` alone.
    pub fn new(
        secret: &str,
        token_ttl: Duration,
        memory_kib: u32,
        iterations: u32,
    ) -> Result<Self, Error> {
        Self::with_keys(
            vec![TokenKey::new("default", secret)],
            token_ttl,
            memory_kib,
            iterations,
        )
    }

    /// Several keys: the first signs, every one verifies.
    pub fn with_keys(
        keys: Vec<TokenKey>,
        token_ttl: Duration,
        memory_kib: u32,
        iterations: u32,
    ) -> Result<Self, Error> {
        if keys.is_empty() {
            return Err(Error::Config("no token key".into()));
        }
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| Error::Config(format!("argon2 parameters: {e}")))?;
        let parallel = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Ok(Authenticator {
            keys,
            token_ttl,
            params,
            hashing: Arc::new(Semaphore::new(parallel)),
        })
    }

    /// How long a token lives.
    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }

    /// Issues a token for `user`; returns it with its expiry (Unix seconds).
    pub fn issue(&self, user: UserId) -> (String, u64) {
        let expires = unix_now() + self.token_ttl.as_secs();
        let id: u128 = rand::random();
        let key = &self.keys[0];
        let claims = format!("v3.{}.{user}.{}.{expires}.{id:032x}", key.id, unix_now_ms());
        (
            format!("{claims}.{}", URL_SAFE_NO_PAD.encode(sign(key, &claims))),
            expires,
        )
    }

    /// The id of the key that signs new tokens.
    pub fn signing_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Verifies a token's signature, format and expiry and returns its claims. Whether it was revoked is
    /// `revocation::Revocations::check`'s question.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let (claims, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut parts = claims.split('.');
        let verified = match parts.next() {
            Some("v3") => {
                let id = parts.next().ok_or(TokenError::Malformed)?;
                self.keys
                    .iter()
                    .find(|key| key.id == id)
                    .is_some_and(|key| verify(key, claims, &signature))
            }
            // Issued before key ids: any listed key may have signed it.
            Some("v2") => self.keys.iter().any(|key| verify(key, claims, &signature)),
            _ => self.keys.iter().any(|key| verify(key, claims, &signature)),
        };
        if !verified {
            return Err(TokenError::BadSignature);
        }
        match claims.split('.').next() {
            Some("v2" | "v3") => {}
            // Genuine (the signature held) but without an id: such a token cannot be checked for revocation.
            Some("v1") => return Err(TokenError::Unsupported),
            _ => return Err(TokenError::Malformed),
        }
        let (Some(user), Some(issued_ms), Some(expires), Some(id), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let claims = Claims {
            user: user.parse().map_err(|_| TokenError::Malformed)?,
            issued_ms: issued_ms.parse().map_err(|_| TokenError::Malformed)?,
            expires: expires.parse().map_err(|_| TokenError::Malformed)?,
            id: parse_token_id(id).ok_or(TokenError::Malformed)?,
        };
        if claims.expires <= unix_now() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// Hashes a password (Argon2id, random salt) off the async threads.
    pub async fn hash_password(&self, password: String) -> Result<String, Error> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone());
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::Internal(format!("hashing a password: {e}")))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// Checks a password against a stored hash (whose own parameters are used).
    pub async fn check_password(&self, password: String, stored: String) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&stored)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }
}

fn mac(key: &TokenKey) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail; the fallback keeps the no-panic rule.
    HmacSha256::new_from_slice(&key.secret).unwrap_or_else(|_| HmacSha256::new(&Default::default()))
}

fn sign(key: &TokenKey, claims: &str) -> Vec<u8> {
    let mut mac = mac(key);
    mac.update(claims.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Constant-time check of `signature` over `claims` with `key`.
fn verify(key: &TokenKey, claims: &str, signature: &[u8]) -> bool {
    let mut mac = mac(key);
    mac.update(claims.as_bytes());
    mac.verify_slice(signature).is_ok()
}

/// A token id is exactly 32 lower-case hex digits.
fn parse_token_id(text: &str) -> Option<u128> {
    if text.len() != 32 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(text, 16).ok()
}

/// The wire form of a token id (bus messages, Redis keys).
pub fn token_id_hex(id: u128) -> String {
    format!("{id:032x}")
}

/// Parses the wire form of a token id.
pub fn token_id_from_hex(text: &str) -> Option<u128> {
    parse_token_id(text)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(ttl: u64) -> Authenticator {
        Authenticator::new(&"k".repeat(32), Duration::from_secs(ttl), 64, 1).unwrap()
    }

    #[test]
    fn tokens_verify_and_reject_tampering() {
        let a = auth(60);
        let (token, expires) = a.issue(42);
        let claims = a.verify(&token).unwrap();
        assert_eq!((claims.user, claims.expires), (42, expires));
        assert_ne!(a.verify(&a.issue(42).0).unwrap().id, claims.id);
        assert!(token.starts_with("v3.default.42."), "{token}");
        let tampered = token.replacen("v3.default.42.", "v3.default.43.", 1);
        assert_eq!(a.verify(&tampered), Err(TokenError::BadSignature));
        // A genuinely signed v1 token has no id: refused as unsupported, not as forged.
        let old = format!("v1.42.{expires}");
        let old = format!("{old}.{}", URL_SAFE_NO_PAD.encode(sign(&a.keys[0], &old)));
        assert_eq!(a.verify(&old), Err(TokenError::Unsupported));
        assert_eq!(a.verify("nonsense"), Err(TokenError::Malformed));
        let other = Authenticator::new(&"x".repeat(32), Duration::from_secs(60), 64, 1).unwrap();
        assert_eq!(other.verify(&token), Err(TokenError::BadSignature));
        let expired = auth(0).issue(42).0;
        assert_eq!(auth(0).verify(&expired), Err(TokenError::Expired));
    }

    #[test]
    fn keys_rotate_without_logging_anyone_out() {
        let (old_secret, new_secret) = ("o".repeat(32), "n".repeat(32));
        let before = Authenticator::new(&old_secret, Duration::from_secs(60), 64, 1).unwrap();
        let issued_before = before.issue(7).0;
        // A v2 token of the old single-key format still verifies with the key listed.
        let v2 = format!("v2.7.{}.{}.{:032x}", unix_now_ms(), unix_now() + 60, 5u128);
        let v2 = format!(
            "{v2}.{}",
            URL_SAFE_NO_PAD.encode(sign(&before.keys[0], &v2))
        );
        let keys = parse_token_keys(&format!("k2:{new_secret},default:{old_secret}")).unwrap();
        let during = Authenticator::with_keys(keys, Duration::from_secs(60), 64, 1).unwrap();
        assert_eq!(during.signing_key_id(), "k2");
        assert!(during.verify(&issued_before).is_ok());
        assert!(during.verify(&v2).is_ok());
        let issued_during = during.issue(7).0;
        assert!(issued_during.starts_with("v3.k2.7."));
        let keys = parse_token_keys(&format!("k2:{new_secret}")).unwrap();
        let after = Authenticator::with_keys(keys, Duration::from_secs(60), 64, 1).unwrap();
        assert!(after.verify(&issued_during).is_ok());
        assert_eq!(after.verify(&issued_before), Err(TokenError::BadSignature));
        assert!(parse_token_keys("k1:short").is_err());
        assert!(parse_token_keys(&format!("k.1:{new_secret}")).is_err());
        assert!(parse_token_keys(&format!("a:{new_secret},a:{old_secret}")).is_err());
        let message = parse_token_keys(&format!("k1:{}", "s".repeat(5))).unwrap_err();
        assert!(!message.contains("sssss"), "errors never show a secret");
    }

    #[tokio::test]
    async fn passwords_hash_and_check() {
        let a = auth(60);
        let hash = a.hash_password("correct horse".into()).await.unwrap();
        assert!(a.check_password("correct horse".into(), hash.clone()).await);
        assert!(!a.check_password("wrong".into(), hash).await);
    }
}
