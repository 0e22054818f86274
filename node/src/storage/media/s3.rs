//! Media bytes in an S3-compatible object store (`--media-store s3`): the medium under `<prefix><hash>`, its
//! thumbnail under `<prefix><hash>.thumb.png`.
//!
//! Requests are signed by `rusty-s3` (SigV4 presigned URLs, valid for a few minutes) and sent with the node's hyper
//! client (HTTPS with the system's CA roots). A medium up to `--s3-part-bytes` is one `PUT`; a larger one is a
//! multipart upload sent part by part, so no more than one part is in memory, and aborted if anything fails before it
//! completes, so a key never names partial bytes. Downloads stream the object's body as it arrives. Every failure is
//! an `io::Error` (`NotFound` for a missing object); `MediaBytes` counts and logs them.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tokio::io::AsyncRead;

use super::{read_part, ByteStream};

/// Where and how to reach the bucket (from the `--s3-*` settings).
#[derive(Clone)]
pub struct S3Target {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub path_style: bool,
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub part_bytes: usize,
    pub timeout: Duration,
}

/// How long a signed request URL stays valid: long enough for a slow start, short enough to be useless if logged.
const SIGNED_FOR: Duration = Duration::from_secs(300);
/// Most bytes read of an error answer or a thumbnail.
const SMALL_BODY: usize = 4 * 1024 * 1024;
/// S3 allows at most this many parts in one multipart upload.
const MAX_PARTS: usize = 10_000;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Media in an S3-compatible bucket.
#[derive(Clone)]
pub struct S3Media {
    inner: Arc<Inner>,
}

struct Inner {
    bucket: Bucket,
    credentials: Credentials,
    client: Client<Connector, Full<Bytes>>,
    prefix: String,
    part_bytes: usize,
    timeout: Duration,
}

fn other(what: &str, error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("object store: {what}: {error}"))
}

impl S3Media {
    /// Checks the endpoint and builds the client; contacts nothing.
    pub fn new(settings: &S3Target) -> io::Result<Self> {
        let endpoint =
            url::Url::parse(&settings.endpoint).map_err(|error| other("--s3-endpoint", error))?;
        let style = if settings.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            settings.bucket.clone(),
            settings.region.clone(),
        )
        .map_err(|error| other("--s3-endpoint and --s3-bucket", format!("{error:?}")))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = if settings.endpoint.starts_with("https://") {
            builder
                .with_provider_and_native_roots(provider)
                .map_err(|error| other("loading the system's CA certificates", error))?
        } else {
            // Plain HTTP: the TLS configuration is never used.
            let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|error| other("TLS configuration", error))?
                .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder.with_tls_config(config)
        };
        let connector = builder.https_or_http().enable_http1().build();
        Ok(S3Media {
            inner: Arc::new(Inner {
                bucket,
                credentials: Credentials::new(
                    settings.access_key_id.clone(),
                    settings.secret_access_key.clone(),
                ),
                client: Client::builder(TokioExecutor::new()).build(connector),
                prefix: settings.prefix.clone(),
                part_bytes: settings.part_bytes,
                timeout: settings.timeout,
            }),
        })
    }

    fn key(&self, hash: &str, suffix: &str) -> String {
        format!("{}{hash}{suffix}", self.inner.prefix)
    }

    /// Sends one request; an answer that took longer than `--s3-timeout-ms` is an error.
    async fn send(
        &self,
        method: Method,
        url: url::Url,
        body: Bytes,
    ) -> io::Result<Response<Incoming>> {
        let request = Request::builder()
            .method(method)
            .uri(url.as_str())
            .body(Full::new(body))
            .map_err(|error| other("building a request", error))?;
        match tokio::time::timeout(self.inner.timeout, self.inner.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(other("request failed", error)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "object store: no answer within --s3-timeout-ms",
            )),
        }
    }

    /// The answer, if it is a success; `NotFound` for 404; any other status an error naming the store's code.
    async fn expect_success(
        response: Response<Incoming>,
        what: &str,
    ) -> io::Result<Response<Incoming>> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = small_body(response).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let code = text
            .split_once("<Code>")
            .and_then(|(_, rest)| rest.split_once("</Code>"))
            .map_or("", |(code, _)| code);
        if status == StatusCode::NOT_FOUND {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no stored bytes for this medium",
            ));
        }
        Err(other(what, format!("HTTP {status} {code}")))
    }

    async fn put_object(&self, key: &str, bytes: Bytes) -> io::Result<()> {
        let inner = &self.inner;
        let url = inner
            .bucket
            .put_object(Some(&inner.credentials), key)
            .sign(SIGNED_FOR);
        let response = self.send(Method::PUT, url, bytes).await?;
        let response = Self::expect_success(response, "PUT").await?;
        small_body(response).await.map(drop)
    }

    /// Stores what `reader` yields under the hash: one `PUT`, or a multipart upload if it is longer than a part.
    /// Nothing is stored if the reader fails (a multipart upload is aborted).
    pub async fn put<R: AsyncRead + Unpin + Send>(
        &self,
        hash: &str,
        mut reader: R,
    ) -> io::Result<()> {
        let key = self.key(hash, "");
        let part_bytes = self.inner.part_bytes;
        let first = read_part(&mut reader, part_bytes).await?;
        if first.len() < part_bytes {
            return self.put_object(&key, first).await;
        }
        let upload_id = self.create_multipart(&key).await?;
        let result = self
            .upload_parts(&key, &upload_id, first, &mut reader)
            .await;
        if result.is_err() {
            if let Err(error) = self.abort_multipart(&key, &upload_id).await {
                tracing::warn!(%error, key, "could not abort a multipart upload; the bucket's lifecycle rule removes it");
            }
        }
        result
    }

    async fn upload_parts<R: AsyncRead + Unpin + Send>(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        reader: &mut R,
    ) -> io::Result<()> {
        let inner = &self.inner;
        let mut etags: Vec<String> = Vec::new();
        let mut part = first;
        loop {
            if etags.len() >= MAX_PARTS {
                return Err(other("multipart upload", "more than 10000 parts"));
            }
            let number = u16::try_from(etags.len() + 1)
                .map_err(|_| other("multipart upload", "too many parts"))?;
            let url = inner
                .bucket
                .upload_part(Some(&inner.credentials), key, number, upload_id)
                .sign(SIGNED_FOR);
            let response = self.send(Method::PUT, url, part).await?;
            let response = Self::expect_success(response, "UploadPart").await?;
            let etag = response
                .headers()
                .get(hyper::header::ETAG)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| other("UploadPart", "no ETag in the answer"))?;
            small_body(response).await?;
            etags.push(etag);
            part = read_part(reader, inner.part_bytes).await?;
            if part.is_empty() {
                break;
            }
        }
        let action = inner.bucket.complete_multipart_upload(
            Some(&inner.credentials),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNED_FOR);
        let body = action.body();
        let response = self.send(Method::POST, url, body.into()).await?;
        let response = Self::expect_success(response, "CompleteMultipartUpload").await?;
        // S3 may answer 200 with an error document once the parts are assembled.
        let body = small_body(response).await?;
        if String::from_utf8_lossy(&body).contains("<Error>") {
            return Err(other(
                "CompleteMultipartUpload",
                "the store answered an error",
            ));
        }
        Ok(())
    }

    async fn create_multipart(&self, key: &str) -> io::Result<String> {
        let inner = &self.inner;
        let url = inner
            .bucket
            .create_multipart_upload(Some(&inner.credentials), key)
            .sign(SIGNED_FOR);
        let response = self.send(Method::POST, url, Bytes::new()).await?;
        let response = Self::expect_success(response, "CreateMultipartUpload").await?;
        let body = small_body(response).await?;
        let text = String::from_utf8_lossy(&body);
        let parsed = rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|error| other("CreateMultipartUpload answer", error))?;
        Ok(parsed.upload_id().to_string())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> io::Result<()> {
        let inner = &self.inner;
        let url = inner
            .bucket
            .abort_multipart_upload(Some(&inner.credentials), key, upload_id)
            .sign(SIGNED_FOR);
        let response = self.send(Method::DELETE, url, Bytes::new()).await?;
        let response = Self::expect_success(response, "AbortMultipartUpload").await?;
        small_body(response).await.map(drop)
    }

    pub async fn put_thumb(&self, hash: &str, bytes: &[u8]) -> io::Result<()> {
        self.put_object(&self.key(hash, ".thumb.png"), Bytes::copy_from_slice(bytes))
            .await
    }

    /// Whether the medium's bytes are stored (`HEAD`).
    pub async fn exists(&self, hash: &str) -> io::Result<bool> {
        let inner = &self.inner;
        let key = self.key(hash, "");
        let url = inner
            .bucket
            .head_object(Some(&inner.credentials), &key)
            .sign(SIGNED_FOR);
        let response = self.send(Method::HEAD, url, Bytes::new()).await?;
        match Self::expect_success(response, "HEAD").await {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn get(&self, key: &str) -> io::Result<Response<Incoming>> {
        let inner = &self.inner;
        let url = inner
            .bucket
            .get_object(Some(&inner.credentials), key)
            .sign(SIGNED_FOR);
        let response = self.send(Method::GET, url, Bytes::new()).await?;
        Self::expect_success(response, "GET").await
    }

    /// The object's body as it arrives from the store; a store silent for `--s3-timeout-ms` mid-body ends the
    /// stream with an error (the download is cut, not left hanging).
    pub async fn stream(&self, hash: &str) -> io::Result<ByteStream> {
        let response = self.get(&self.key(hash, "")).await?;
        let body = response
            .into_body()
            .into_data_stream()
            .map_err(|error| other("reading an object", error));
        let timeout = self.inner.timeout;
        let guarded = futures::stream::unfold(Some(body), move |body| async move {
            let mut body = body?;
            match tokio::time::timeout(timeout, body.try_next()).await {
                Ok(Ok(Some(chunk))) => Some((Ok(chunk), Some(body))),
                Ok(Ok(None)) => None,
                Ok(Err(error)) => Some((Err(error), None)),
                Err(_) => Some((
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "object store: the body stalled for --s3-timeout-ms",
                    )),
                    None,
                )),
            }
        });
        Ok(Box::pin(guarded))
    }

    pub async fn get_thumb(&self, hash: &str) -> io::Result<Vec<u8>> {
        let response = self.get(&self.key(hash, ".thumb.png")).await?;
        small_body(response).await.map(|bytes| bytes.to_vec())
    }
}

/// A whole answer body of at most `SMALL_BODY` bytes (error documents, XML answers, thumbnails).
async fn small_body(response: Response<Incoming>) -> io::Result<Bytes> {
    Limited::new(response.into_body(), SMALL_BODY)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|error| other("reading an answer", error))
}
