//! TLS to Postgres: the connection string's `sslmode`, libpq's words, mapped onto what tokio-postgres knows
//! (`disable`, `prefer`, `require`) and how much of the server's certificate `backend_tls` checks.
//!
//! | `sslmode` | TLS | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers it, else plain | chain only if a CA file is set, else nothing |
//! | `require` | always (a server without TLS is refused) | chain only if a CA file is set, else nothing |
//! | `verify-ca` | always | chain to the CA file (or the system's trust store) |
//! | `verify-full` | always | chain and host name |
//!
//! `prefer` and `require` without a CA file keep a passive listener out but not a man in the middle; production
//! uses `verify-full`. tokio-postgres does not parse `verify-ca`/`verify-full`, so they are rewritten to
//! `require` before it parses the string, and the checks are ours.

use tokio_postgres_rustls::MakeRustlsConnect;

use crate::backend_tls::{self, TlsFiles, Verify};

use super::StoreError;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The parsed connection settings and the TLS connector for them (`None` with `sslmode=disable`).
pub fn settings(
    url: &str,
    files: &TlsFiles,
) -> Result<(tokio_postgres::Config, SslMode, Option<MakeRustlsConnect>), StoreError> {
    let (rewritten, verify_mode) = rewrite_verify_modes(url);
    let config: tokio_postgres::Config = rewritten.parse()?;
    let mode = verify_mode.unwrap_or(match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => SslMode::Disable,
        tokio_postgres::config::SslMode::Require => SslMode::Require,
        _ => SslMode::Prefer,
    });
    let verify = match mode {
        SslMode::Disable => return Ok((config, mode, None)),
        SslMode::Prefer | SslMode::Require if files.ca.is_none() => Verify::Nothing,
        SslMode::Prefer | SslMode::Require | SslMode::VerifyCa => Verify::Chain,
        SslMode::VerifyFull => Verify::Full,
    };
    let tls = backend_tls::client_config("postgres", files, verify).map_err(StoreError::Invalid)?;
    Ok((config, mode, Some(MakeRustlsConnect::new(tls))))
}

/// Replaces `sslmode=verify-ca` / `verify-full` (key=value form, quoted or not, or a URL's query parameter) with
/// `require` and says which it was.
fn rewrite_verify_modes(url: &str) -> (String, Option<SslMode>) {
    for (value, mode) in [
        ("verify-full", SslMode::VerifyFull),
        ("verify-ca", SslMode::VerifyCa),
    ] {
        let mut search = 0;
        while let Some(found) = url[search..].find("sslmode") {
            let start = search + found;
            search = start + "sslmode".len();
            // A key begins the string or follows a separator (space, `?`, `&`).
            let at_key_start = url[..start]
                .chars()
                .next_back()
                .is_none_or(|c| c.is_whitespace() || c == '?' || c == '&');
            if !at_key_start {
                continue;
            }
            let rest = url[search..].trim_start();
            let Some(rest) = rest.strip_prefix('=') else {
                continue;
            };
            let rest = rest.trim_start();
            let quoted = rest.starts_with('\'');
            let rest = if quoted { &rest[1..] } else { rest };
            if let Some(tail) = rest.strip_prefix(value) {
                let ends = tail
                    .chars()
                    .next()
                    .is_none_or(|c| c.is_whitespace() || c == '&' || (quoted && c == '\''));
                if ends {
                    let value_start = url.len() - rest.len();
                    let rewritten = format!(
                        "{}require{}",
                        &url[..value_start],
                        &url[value_start + value.len()..]
                    );
                    return (rewritten, Some(mode));
                }
            }
        }
    }
    (url.to_string(), None)
}

/// Whether a Postgres error is a failed TLS handshake (a refused certificate, or a server without TLS under
/// `require`): retrying cannot help, so start-up stops at once with this reason.
pub fn tls_failure(error: &StoreError) -> Option<String> {
    let postgres = match error {
        StoreError::Postgres(error) => error,
        StoreError::Pool(deadpool_postgres::PoolError::Backend(error)) => error,
        _ => return None,
    };
    if let Some(reason) = backend_tls::tls_failure(postgres) {
        return Some(reason);
    }
    // "error performing TLS handshake: server does not support TLS" (`require` against a server without TLS).
    let text = postgres.to_string();
    if !text.starts_with("error performing TLS handshake") {
        return None;
    }
    match std::error::Error::source(postgres) {
        Some(cause) => Some(format!("{text}: {cause}")),
        None => Some(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_are_rewritten_in_both_forms() {
        let (url, mode) = rewrite_verify_modes("host=db user=im sslmode=verify-full dbname=im");
        assert_eq!(url, "host=db user=im sslmode=require dbname=im");
        assert_eq!(mode, Some(SslMode::VerifyFull));
        let (url, mode) = rewrite_verify_modes("host=db sslmode = 'verify-ca'");
        assert_eq!(url, "host=db sslmode = 'require'");
        assert_eq!(mode, Some(SslMode::VerifyCa));
        let (url, mode) = rewrite_verify_modes("postgres://im@db:5432/im?sslmode=verify-full&x=1");
        assert_eq!(url, "postgres://im@db:5432/im?sslmode=require&x=1");
        assert_eq!(mode, Some(SslMode::VerifyFull));
        // Not a key of its own, or another value: untouched.
        for untouched in [
            "host=db application_name=xsslmode=verify-full",
            "host=db sslmode=verify-fuller",
            "host=db sslmode=require",
        ] {
            assert_eq!(
                rewrite_verify_modes(untouched),
                (untouched.to_string(), None)
            );
        }
    }

    #[test]
    fn modes_map_to_connectors() {
        let files = TlsFiles::default();
        let (_, mode, tls) = settings("host=db sslmode=disable", &files).unwrap();
        assert_eq!(mode, SslMode::Disable);
        assert!(tls.is_none());
        let (config, mode, _) = settings("host=db sslmode=require", &files).unwrap();
        assert_eq!(mode, SslMode::Require);
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let (_, mode, _) = settings("host=db", &files).unwrap();
        assert_eq!(mode, SslMode::Prefer);
        assert!(settings("host=db sslmode=bogus", &files).is_err());
        let missing = TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        assert!(settings("host=db sslmode=verify-full", &missing).is_err());
    }
}
