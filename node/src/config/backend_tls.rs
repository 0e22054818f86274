//! The settings of TLS from the node to Postgres, Redis and the push webhook (flattened into `Config`).
//!
//! Whether TLS is used at all is said by each URL: Postgres' `sslmode`, Redis' `rediss://` scheme, the webhook's
//! `https://`. These settings say whom to trust and what to present.

use std::path::PathBuf;

use crate::backend_tls::TlsFiles;

/// CA bundles and client certificates for the node's own connections.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BackendTlsArgs {
    /// PEM file of the CA certificates that sign Postgres' server certificate (used with `sslmode=verify-ca` or
    /// `verify-full`; with `prefer`/`require` it makes the node check the chain too). Unset: the system's trust
    /// store.
    #[arg(long, env = "IM_POSTGRES_CA_FILE")]
    pub postgres_ca_file: Option<PathBuf>,

    /// PEM client certificate chain presented to Postgres (for `clientcert=verify-full` / `cert` authentication),
    /// with `--postgres-client-key`.
    #[arg(long, env = "IM_POSTGRES_CLIENT_CERT")]
    pub postgres_client_cert: Option<PathBuf>,

    /// PEM private key of `--postgres-client-cert`.
    #[arg(long, env = "IM_POSTGRES_CLIENT_KEY")]
    pub postgres_client_key: Option<PathBuf>,

    /// PEM file of the CA certificates that sign Redis' server certificate(s), for a `rediss://` (or
    /// `rediss-cluster://`) URL; the chain and the host name are always checked. Unset: the system's trust store.
    #[arg(long, env = "IM_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate chain presented to Redis (`tls-auth-clients yes`), with `--redis-client-key`.
    #[arg(long, env = "IM_REDIS_CLIENT_CERT")]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of `--redis-client-cert`.
    #[arg(long, env = "IM_REDIS_CLIENT_KEY")]
    pub redis_client_key: Option<PathBuf>,

    /// PEM file of the CA certificates that sign an `https://` push webhook's certificate. Unset: the system's
    /// trust store.
    #[arg(long, env = "IM_PUSH_CA_FILE")]
    pub push_ca_file: Option<PathBuf>,
}

impl BackendTlsArgs {
    pub fn postgres(&self) -> TlsFiles {
        TlsFiles {
            ca: self.postgres_ca_file.clone(),
            cert: self.postgres_client_cert.clone(),
            key: self.postgres_client_key.clone(),
        }
    }

    pub fn redis(&self) -> TlsFiles {
        TlsFiles {
            ca: self.redis_ca_file.clone(),
            cert: self.redis_client_cert.clone(),
            key: self.redis_client_key.clone(),
        }
    }

    pub fn push(&self) -> TlsFiles {
        TlsFiles {
            ca: self.push_ca_file.clone(),
            ..TlsFiles::default()
        }
    }

    /// The settings' own rules (whether a URL uses TLS is checked by `Config::validate`).
    pub fn problems(&self) -> Result<(), String> {
        if self.postgres_client_cert.is_some() != self.postgres_client_key.is_some() {
            return Err("--postgres-client-cert and --postgres-client-key go together".into());
        }
        if self.redis_client_cert.is_some() != self.redis_client_key.is_some() {
            return Err("--redis-client-cert and --redis-client-key go together".into());
        }
        Ok(())
    }
}
