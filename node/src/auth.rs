//! Passwords and session tokens.
//!
//! Passwords are hashed with Argon2id on the blocking pool (a hash costs tens of milliseconds of CPU; a semaphore
//! bounds how many run at once so a login flood cannot starve the sessions). Tokens are `v1.<user>.<exp>.<sig>`
//! with `sig = base64url(HMAC-SHA256(secret, "v1.<user>.<exp>"))`: any node verifies one without a database round
//! trip, and the signature check is constant-time.

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
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

/// Signs and verifies tokens, hashes and checks passwords.
pub struct Authenticator {
    secret: Vec<u8>,
    token_ttl: Duration,
    params: Params,
    hashing: Arc<Semaphore>,
}

impl Authenticator {
    pub fn new(
        secret: &str,
        token_ttl: Duration,
        memory_kib: u32,
        iterations: u32,
    ) -> Result<Self, String> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| format!("argon2 parameters: {e}"))?;
        let parallel = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Ok(Authenticator {
            secret: secret.as_bytes().to_vec(),
            token_ttl,
            params,
            hashing: Arc::new(Semaphore::new(parallel)),
        })
    }

    /// Issues a token for `user`; returns it with its expiry (Unix seconds).
    pub fn issue(&self, user: UserId) -> (String, u64) {
        let expires = unix_now() + self.token_ttl.as_secs();
        let claims = format!("v1.{user}.{expires}");
        (
            format!("{claims}.{}", URL_SAFE_NO_PAD.encode(self.sign(&claims))),
            expires,
        )
    }

    /// Verifies a token and returns its user.
    pub fn verify(&self, token: &str) -> Result<UserId, TokenError> {
        let (claims, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(claims.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let mut parts = claims.split('.');
        let (Some("v1"), Some(user), Some(expires), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let user: UserId = user.parse().map_err(|_| TokenError::Malformed)?;
        let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        if expires <= unix_now() {
            return Err(TokenError::Expired);
        }
        Ok(user)
    }

    /// Hashes a password (Argon2id, random salt) off the async threads.
    pub async fn hash_password(&self, password: String) -> Result<String, String> {
        let _permit = self.hashing.acquire().await.map_err(|e| e.to_string())?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone());
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
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

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail; the fallback keeps the no-panic rule.
        HmacSha256::new_from_slice(&self.secret)
            .unwrap_or_else(|_| HmacSha256::new(&Default::default()))
    }

    fn sign(&self, claims: &str) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(claims.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
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
        let (token, _) = a.issue(42);
        assert_eq!(a.verify(&token), Ok(42));
        let tampered = token.replacen("v1.42.", "v1.43.", 1);
        assert_eq!(a.verify(&tampered), Err(TokenError::BadSignature));
        assert_eq!(a.verify("nonsense"), Err(TokenError::Malformed));
        let other = Authenticator::new(&"x".repeat(32), Duration::from_secs(60), 64, 1).unwrap();
        assert_eq!(other.verify(&token), Err(TokenError::BadSignature));
        let expired = auth(0).issue(42).0;
        assert_eq!(auth(0).verify(&expired), Err(TokenError::Expired));
    }

    #[tokio::test]
    async fn passwords_hash_and_check() {
        let a = auth(60);
        let hash = a.hash_password("correct horse".into()).await.unwrap();
        assert!(a.check_password("correct horse".into(), hash.clone()).await);
        assert!(!a.check_password("wrong".into(), hash).await);
    }
}
