//! The node crate's one error type, `Error`, tagged by where an error comes from (`Source`), and the one place
//! errors become answers: `Error::frame` for the socket, `IntoResponse` for REST, `Error::log` for the log.
//!
//! - **Client**: a request refused by a rule (`Refusal`) or a configuration the operator got wrong. Answered with a
//!   stable code, never logged as an error (a client's bad input is not the operator's problem).
//! - **Infrastructure**: Postgres, Redis or the filesystem could not answer. Answered as retryable
//!   (`store_unavailable`, HTTP 503), logged at WARN.
//! - **Internal**: a bug. Answered `internal` (HTTP 500), logged at ERROR: an operator must act.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::frame::ErrorFrame;
use common::ErrorCode;
use router::RouterError;
use tracing::{error, warn};

use crate::storage::StoreError;

/// Where an error comes from; it picks the log level and whether the client may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Infrastructure,
    Internal,
}

/// Every error of the node crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client's request refused by a rule.
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// A setting the operator got wrong (found before any port is bound).
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Redis(#[from] RouterError),
    /// A filesystem or socket operation of the node itself (binding, reading certificates, media files).
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A step of start-up that failed, with what it was doing.
    #[error("{what}: {source}")]
    Startup { what: String, source: Box<Error> },
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn source_kind(&self) -> Source {
        match self {
            Error::Refused(_) | Error::Config(_) => Source::Client,
            Error::Store(_) | Error::Redis(_) | Error::Io { .. } => Source::Infrastructure,
            Error::Startup { source, .. } => source.source_kind(),
            Error::Internal(_) => Source::Internal,
        }
    }

    /// The socket answer (without `cid`/`rid`; the caller adds the one it answers).
    pub fn frame(&self) -> ErrorFrame {
        match self {
            Error::Refused(refusal) => refusal.clone().frame(),
            _ => match self.source_kind() {
                Source::Internal => ErrorFrame::new(ErrorCode::Internal, "server fault; retry"),
                _ => Refusal::unavailable().frame(),
            },
        }
    }

    /// Logs the error at the level its source calls for: infrastructure at WARN, internal at ERROR; a client's
    /// error is not logged (it is answered and counted).
    pub fn log(&self, context: &str) {
        match self.source_kind() {
            Source::Client => {}
            Source::Infrastructure => warn!(error = %self, "{context}"),
            Source::Internal => error!(error = %self, "{context}"),
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        Error::Refused(refusal)
    }
}

/// Names the start-up step an error happened in.
pub trait During<T> {
    fn during(self, what: &str) -> Result<T, Error>;
}

impl<T, E: Into<Error>> During<T> for Result<T, E> {
    fn during(self, what: &str) -> Result<T, Error> {
        self.map_err(|source| Error::Startup {
            what: what.to_string(),
            source: Box::new(source.into()),
        })
    }
}

/// The HTTP status and JSON code of a refusal's wire code.
fn http_status(code: ErrorCode) -> (StatusCode, &'static str) {
    match code {
        ErrorCode::NotMember => (StatusCode::NOT_FOUND, "not_found"),
        ErrorCode::Forbidden | ErrorCode::NotFriends | ErrorCode::Blocked => {
            (StatusCode::FORBIDDEN, code.as_str())
        }
        ErrorCode::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        ErrorCode::StoreUnavailable | ErrorCode::Draining => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        ErrorCode::UnknownUser | ErrorCode::UnknownMedia => {
            (StatusCode::BAD_REQUEST, code.as_str())
        }
        ErrorCode::BadFrame
        | ErrorCode::UnknownFrame
        | ErrorCode::LimitExceeded
        | ErrorCode::InvalidRequest => (StatusCode::BAD_REQUEST, "bad_request"),
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Error::Refused(refusal) => {
                let (status, code) = http_status(refusal.code);
                json_error(status, code, &refusal.message)
            }
            _ => {
                self.log("request failed");
                match self.source_kind() {
                    Source::Internal => json_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "server fault; retry",
                    ),
                    _ => json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "store unavailable; retry",
                    ),
                }
            }
        }
    }
}

/// A request the chat rules refuse, as the client is told: a stable code and a message naming what was wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// Postgres or Redis could not answer: retryable.
    pub fn unavailable() -> Self {
        Refusal::new(
            ErrorCode::StoreUnavailable,
            "message store unavailable; retry",
        )
    }

    pub fn not_member() -> Self {
        Refusal::new(ErrorCode::NotMember, "not a member of this conversation")
    }

    pub fn frame(self) -> ErrorFrame {
        ErrorFrame::new(self.code, self.message)
    }
}

/// A JSON error answer: `{"error": code, "message": message}` with its status. Every REST refusal goes through here.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": code, "message": message })),
    )
        .into_response()
}
