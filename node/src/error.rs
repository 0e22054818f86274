//! The errors of the node crate, tagged by where they come from.
//!
//! A `Refusal` is the client's: its request is answered with a stable code (an error frame or a JSON error), never
//! logged as an error. Infrastructure failures (`StoreError`, `RouterError`) become a retryable refusal at the edge
//! and a WARN line; an internal error is a bug.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::frame::ErrorFrame;
use common::ErrorCode;

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
