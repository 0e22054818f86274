//! What the settings must satisfy, checked before any port is bound, and the values derived from them (token keys,
//! migration timeouts). Every error names the flag and never a secret value.

use std::time::Duration;

use super::Config;

impl Config {
    /// Checks the settings `node migrate` uses.
    pub fn validate_migrate(&self) -> Result<(), String> {
        self.backend_tls.problems()?;
        if self.migration_lock_timeout_secs == 0 || self.migration_statement_timeout_secs == 0 {
            return Err(
                "--migration-lock-timeout-secs and --migration-statement-timeout-secs must be positive"
                    .into(),
            );
        }
        Ok(())
    }

    /// Checks the settings of the media store (the node's and `node media import`'s).
    pub fn validate_media(&self) -> Result<(), String> {
        if self.max_media_bytes == 0 || self.media_chunk_bytes < 1024 {
            return Err(
                "--max-media-bytes must be positive and --media-chunk-bytes at least 1024".into(),
            );
        }
        if self.media_store == super::MediaStoreKind::S3 {
            self.s3.problems()?;
        }
        Ok(())
    }

    /// The timeouts every migration transaction runs under.
    pub fn migration_timeouts(&self) -> crate::storage::schema::MigrationTimeouts {
        crate::storage::schema::MigrationTimeouts {
            lock: Duration::from_secs(self.migration_lock_timeout_secs),
            statement: Duration::from_secs(self.migration_statement_timeout_secs),
        }
    }

    /// Checks relations between settings; the error names the flag.
    pub fn validate(&self) -> Result<(), crate::error::Error> {
        self.problems().map_err(crate::error::Error::Config)
    }

    /// The token keys: `--token-keys`, or `--token-secret` as the one key `default`.
    pub fn token_key_list(&self) -> Result<Vec<crate::identity::auth::TokenKey>, String> {
        use crate::identity::auth::{parse_token_keys, TokenKey, MIN_SECRET_BYTES};
        if !self.token_keys.is_empty() {
            return parse_token_keys(&self.token_keys);
        }
        if self.token_secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "--token-secret (or --token-keys) is required, at least {MIN_SECRET_BYTES} bytes"
            ));
        }
        Ok(vec![TokenKey::new("default", &self.token_secret)])
    }

    /// The first setting that is out of its rules, described for the operator.
    fn problems(&self) -> Result<(), String> {
        self.validate_migrate()?;
        self.token_key_list()?;
        if self.node_name.is_empty() || !common::ids::is_valid_device_id(&self.node_name) {
            return Err("--node-name must be 1-64 characters of [A-Za-z0-9_.-]".into());
        }
        if let Some(bad) = self
            .one_session_platforms
            .iter()
            .find(|p| !p.is_empty() && !common::ids::PLATFORMS.contains(&p.as_str()))
        {
            return Err(format!(
                "--one-session-platforms: unknown platform {bad:?} (known: {})",
                common::ids::PLATFORMS.join(", ")
            ));
        }
        if self.lease_ttl_ms < 1_000 {
            return Err("--lease-ttl-ms must be at least 1000".into());
        }
        if self.max_message_bytes < 64 || self.max_decompressed_bytes < self.max_body_bytes {
            return Err("--max-message-bytes must be >= 64 and --max-decompressed-bytes >= --max-body-bytes".into());
        }
        if self.max_depth < 2 || self.max_collection_len < 16 {
            return Err("--max-depth must be >= 2 and --max-collection-len >= 16".into());
        }
        if self.writers == 0 || self.postgres_pool < self.writers + 2 {
            return Err(
                "--writers must be at least 1 and --postgres-pool at least --writers + 2".into(),
            );
        }
        if self.outbound_queue == 0 || self.writer_queue == 0 || self.writer_batch_rows == 0 {
            return Err("queue sizes and --writer-batch-rows must be positive".into());
        }
        if self.ping_interval_secs == 0 || self.idle_timeout_secs <= self.ping_interval_secs {
            return Err(
                "--idle-timeout-secs must be greater than --ping-interval-secs (> 0)".into(),
            );
        }
        if self.send_rate <= 0.0 || self.send_burst < 1.0 {
            return Err("--send-rate must be > 0 and --send-burst >= 1".into());
        }
        if self.send_strikes == 0 || self.send_strike_window_secs == 0 {
            return Err("--send-strikes and --send-strike-window-secs must be positive".into());
        }
        if !self.push_webhook_url.is_empty()
            && !self.push_webhook_url.starts_with("http://")
            && !self.push_webhook_url.starts_with("https://")
        {
            return Err("--push-webhook-url must be an https:// (or http://) URL".into());
        }
        let redis_tls = self.redis_url.starts_with("rediss://")
            || self.redis_url.starts_with("rediss-cluster://");
        let redis_files = &self.backend_tls;
        if !redis_tls
            && (redis_files.redis_ca_file.is_some() || redis_files.redis_client_cert.is_some())
        {
            return Err(
                "--redis-ca-file / --redis-client-cert need a rediss:// (or rediss-cluster://) --redis-url"
                    .into(),
            );
        }
        if self.drain_spread_secs > 0 && self.drain_spread_secs >= self.drain_grace_secs {
            return Err(
                "--drain-spread-secs must be below --drain-grace-secs (the writer flushes in the rest), or 0".into(),
            );
        }
        if self.push_batch == 0 || self.thumbnail_concurrency == 0 {
            return Err("--push-batch and --thumbnail-concurrency must be positive".into());
        }
        if self.max_sync_limit == 0 || self.hello_conversations <= 0 || self.postgres_pool < 2 {
            return Err(
                "--max-sync-limit and --hello-conversations must be positive, --postgres-pool >= 2"
                    .into(),
            );
        }
        if self.login_max_failures_per_user < 1
            || self.login_max_failures_per_ip < 1
            || self.login_failure_window_secs == 0
        {
            return Err(
                "--login-max-failures-* and --login-failure-window-secs must be positive".into(),
            );
        }
        if self.handshake_timeout_secs == 0 || self.max_header_bytes < 1024 {
            return Err(
                "--handshake-timeout-secs must be positive and --max-header-bytes >= 1024".into(),
            );
        }
        if self.max_conns_per_user == 0 || self.max_connections == 0 {
            return Err("--max-conns-per-user and --max-connections must be positive".into());
        }
        if self.revocation_recheck_secs == 0 {
            return Err("--revocation-recheck-secs must be positive".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key go together".into());
        }
        if self.admin_listen == self.listen {
            return Err("--admin-listen must differ from --listen".into());
        }
        self.validate_media()?;
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(
                "--proxy-protocol needs --trusted-proxies (the peers that send the header)".into(),
            );
        }
        Ok(())
    }

    /// Whether a WebSocket upgrade with this `Origin` may proceed: no `Origin` (native clients), the node's own
    /// origin (a page this node served, judged by the request's `Host`), or a listed one.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(origin) => {
                let same_origin = host.is_some_and(|host| {
                    origin
                        .strip_prefix("http://")
                        .or_else(|| origin.strip_prefix("https://"))
                        .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
                });
                same_origin
                    || self
                        .allowed_origins
                        .iter()
                        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
            }
        }
    }

    pub fn limits(&self) -> common::Limits {
        common::Limits {
            max_message_bytes: self.max_message_bytes,
            max_decompressed_bytes: self.max_decompressed_bytes,
            max_depth: self.max_depth,
            max_collection_len: self.max_collection_len,
        }
    }

    /// Whether a platform keeps one login per user, given the user's own choice (`None`: this server's setting;
    /// `Some(true)`: every platform but `web`, whose tabs come and go; `Some(false)`: none).
    pub fn one_session_on(&self, platform: &str, user_choice: Option<bool>) -> bool {
        match user_choice {
            None => self.one_session_platforms.iter().any(|p| p == platform),
            Some(true) => platform != "web",
            Some(false) => false,
        }
    }

    /// The size limits clients are told in `hello`.
    pub fn client_limits(&self) -> common::frame::ClientLimits {
        common::frame::ClientLimits {
            message_bytes: self.max_message_bytes as u64,
            body_bytes: self.max_body_bytes as u64,
            caption_bytes: crate::chat::content::MAX_CAPTION_BYTES as u64,
            emoji_bytes: crate::chat::content::MAX_EMOJI_BYTES as u64,
            media_bytes: self.max_media_bytes as u64,
        }
    }

    pub fn send_limits(&self) -> crate::chat::rate_limit::SendLimits {
        crate::chat::rate_limit::SendLimits {
            rate: self.send_rate,
            burst: self.send_burst,
            strikes: self.send_strikes,
            strike_window: Duration::from_secs(self.send_strike_window_secs),
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn defaults_are_valid_and_secret_is_checked() {
        let config = Config::parse_from(["node", "--token-secret", &"s".repeat(32)]);
        assert!(config.validate().is_ok());
        let short = Config::parse_from(["node", "--token-secret", "short"]);
        assert!(short.validate().is_err());
    }

    #[test]
    fn migrate_needs_no_token_secret_and_serving_does() {
        let config = Config::parse_from(["node", "migrate"]);
        assert_eq!(config.command, Some(Command::Migrate));
        assert_eq!(config.validate_migrate(), Ok(()));
        assert!(config.validate().is_err());
        let stuck = Config::parse_from(["node", "--migration-lock-timeout-secs", "0", "migrate"]);
        assert!(stuck.validate_migrate().is_err());
    }

    #[test]
    fn backend_tls_settings_are_checked() {
        let secret = "s".repeat(32);
        let with = |extra: &[&str]| {
            let mut args = vec!["node", "--token-secret", &secret];
            args.extend_from_slice(extra);
            Config::parse_from(args).validate()
        };
        assert!(with(&["--push-webhook-url", "https://push.example/hook"]).is_ok());
        assert!(with(&["--push-webhook-url", "ftp://push.example/hook"]).is_err());
        assert!(
            with(&["--redis-ca-file", "ca.pem"]).is_err(),
            "CA file with redis://"
        );
        assert!(with(&[
            "--redis-url",
            "rediss://r:6379",
            "--redis-ca-file",
            "ca.pem"
        ])
        .is_ok());
        assert!(
            with(&["--postgres-client-cert", "c.pem"]).is_err(),
            "cert without key"
        );
    }

    #[test]
    fn origins_are_checked_only_when_sent() {
        let secret = "s".repeat(32);
        let closed = Config::parse_from(["node", "--token-secret", &secret]);
        assert!(closed.origin_allowed(None, Some("node.example:7001")));
        assert!(!closed.origin_allowed(Some("https://evil.example"), Some("node.example:7001")));
        // A page the node served itself.
        assert!(closed.origin_allowed(Some("http://node.example:7001"), Some("node.example:7001")));
        assert!(!closed.origin_allowed(Some("http://node.example:7002"), Some("node.example:7001")));
        let listed = Config::parse_from([
            "node",
            "--token-secret",
            &secret,
            "--allowed-origins",
            "https://chat.example,https://app.example",
        ]);
        assert!(listed.origin_allowed(Some("https://APP.example"), None));
        assert!(!listed.origin_allowed(Some("https://chat.example.evil"), None));
    }

    #[test]
    fn proxy_and_admin_settings_are_checked() {
        let with = |extra: &str| {
            let args = format!("node --token-secret {} {extra}", "s".repeat(32));
            Config::try_parse_from(args.split_whitespace())
        };
        let behind = with("--trusted-proxies 10.0.0.0/8,192.0.2.7 --proxy-protocol true").unwrap();
        assert!(behind.validate().is_ok());
        assert!(behind.trusted_proxies.contains([192, 0, 2, 7].into()));
        assert!(with("--proxy-protocol true").unwrap().validate().is_err());
        assert!(with("--trusted-proxies 10.0.0.0/40").is_err());
        assert!(with("--admin-listen 127.0.0.1:7001")
            .unwrap()
            .validate()
            .is_err());
    }
}
