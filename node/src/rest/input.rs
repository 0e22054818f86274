//! Pure parsers of untrusted REST and upgrade input: headers, query strings, path segments and JSON bodies.
//!
//! Every function here takes bytes or text a client chose and returns a value or a `Rejected` (HTTP status, code,
//! reason), with no I/O, so the fuzzers (`node/tests/fuzz_rest.rs`, `fuzz/fuzz_targets/rest.rs`) can run them
//! without a server. The extractors `ApiQuery` and `ApiPath` put them in front of the handlers, so a malformed
//! query string or path id is answered with the same JSON error shape as everything else (axum's own rejections
//! are plain text).

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::ids::{is_valid_device_id, UserId};
use serde::de::DeserializeOwned;

use crate::error::json_error;
use crate::storage::media::ALLOWED_TYPES;

/// Why a piece of input was refused: the HTTP answer, JSON `{"error": code, "message": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Rejected {
    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Rejected {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        ::metrics::counter!("im_http_input_rejected_total", "code" => self.code).increment(1);
        json_error(self.status, self.code, &self.message)
    }
}

/// The token of an `Authorization: Bearer <token>` header value; `None` when missing or of another scheme.
pub fn bearer_token(authorization: Option<&[u8]>) -> Option<&str> {
    let value = std::str::from_utf8(authorization?).ok()?;
    value.strip_prefix("Bearer ").filter(|t| !t.is_empty())
}

/// The `device` of a WebSocket upgrade: 1-64 characters of `[A-Za-z0-9_.-]`.
pub fn device_id(raw: Option<&str>) -> Result<&str, Rejected> {
    match raw {
        Some(device) if is_valid_device_id(device) => Ok(device),
        _ => Err(Rejected::bad_request(
            "bad_device",
            "query parameter `device` must be 1-64 characters of [A-Za-z0-9_.-]",
        )),
    }
}

/// The `platform` of a WebSocket upgrade: one of `common::ids::PLATFORMS`; `other` when absent.
pub fn platform(raw: Option<&str>) -> Result<&'static str, Rejected> {
    let Some(raw) = raw else {
        return Ok("other");
    };
    common::ids::PLATFORMS
        .iter()
        .find(|p| **p == raw)
        .copied()
        .ok_or_else(|| {
            Rejected::bad_request(
                "bad_platform",
                format!(
                    "query parameter `platform` must be one of {}",
                    common::ids::PLATFORMS.join(", ")
                ),
            )
        })
}

/// The media type of an upload from its `Content-Type` (parameters dropped, case folded), if it is one we accept.
pub fn upload_media_type(content_type: Option<&[u8]>) -> Result<&'static str, Rejected> {
    let declared = content_type
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    ALLOWED_TYPES
        .iter()
        .find(|allowed| allowed.eq_ignore_ascii_case(declared))
        .copied()
        .ok_or_else(|| Rejected {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_type",
            message: format!("Content-Type must be one of {}", ALLOWED_TYPES.join(", ")),
        })
}

/// A medium's name in a path: 64 lowercase hex digits (SHA-256).
pub fn media_hash(raw: &str) -> Result<&str, Rejected> {
    if raw.len() == 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(raw)
    } else {
        Err(Rejected::bad_request(
            "bad_hash",
            "a hash is 64 lowercase hex digits",
        ))
    }
}

/// A group title: 1-64 characters, no control or bidirectional-override characters.
pub fn group_title(title: &str) -> Result<&str, Rejected> {
    let count = title.chars().count();
    if (1..=64).contains(&count) && crate::chat::content::is_displayable_name(title) {
        Ok(title)
    } else {
        Err(Rejected::bad_request(
            "bad_title",
            "titles are 1-64 characters",
        ))
    }
}

/// The user ids of a comma-separated list (`?users=1,2`), at most `max`, skipping anything that is not an id.
pub fn user_list(raw: &str, max: usize) -> Vec<UserId> {
    raw.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .take(max)
        .collect()
}

/// A query string into `T` (the parser axum's `Query` uses).
pub fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, Rejected> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(value)| value)
        .map_err(|rejection| Rejected::bad_request("bad_query", rejection.body_text()))
}

/// A JSON body into `T` (the parser axum's `Json` uses, without the `Content-Type` check).
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Rejected> {
    Json::<T>::from_bytes(bytes)
        .map(|Json(value)| value)
        .map_err(|rejection| Rejected::bad_request("bad_request", rejection.body_text()))
}

/// `Query<T>` with a JSON rejection.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Rejected;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        query(&parts.uri).map(ApiQuery)
    }
}

/// `Path<T>` with a JSON rejection (`/v1/groups/abc/members` is a 400 `bad_path`, not a plain-text answer).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Rejected;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|rejection| Rejected::bad_request("bad_path", rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_are_from_the_list() {
        assert_eq!(platform(None), Ok("other"));
        assert_eq!(platform(Some("android")), Ok("android"));
        assert_eq!(platform(Some("web")), Ok("web"));
        for bad in ["", "Android", "toaster", "web ", "ios\0"] {
            assert_eq!(platform(Some(bad)).map_err(|r| r.code), Err("bad_platform"));
        }
    }

    #[test]
    fn headers_and_segments() {
        assert_eq!(bearer_token(Some(b"Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some(b"Bearer ")), None);
        assert_eq!(bearer_token(Some(b"Basic abc")), None);
        assert_eq!(bearer_token(Some(b"Bearer \xff")), None);
        assert_eq!(bearer_token(None), None);
        assert_eq!(
            upload_media_type(Some(b"Image/PNG; charset=x")),
            Ok("image/png")
        );
        assert_eq!(
            upload_media_type(Some(b"image/svg+xml")).map_err(|r| r.status),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert!(media_hash(&"a".repeat(64)).is_ok());
        assert!(media_hash(&"A".repeat(64)).is_err());
        // Multi-byte characters must not slip past the length check.
        assert!(media_hash(&"é".repeat(32)).is_err());
        assert!(group_title("Dinner").is_ok());
        assert!(group_title("").is_err());
        assert!(group_title("a\u{7}b").is_err());
        assert_eq!(user_list("1, 2,x,,3", 2), vec![1, 2]);
        assert!(device_id(Some("phone-1")).is_ok());
        assert_eq!(device_id(None).map_err(|r| r.code), Err("bad_device"));
    }

    #[test]
    fn query_strings_and_bodies() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Page {
            limit: i64,
        }
        let uri: Uri = "/x?limit=5".parse().unwrap();
        assert_eq!(query::<Page>(&uri), Ok(Page { limit: 5 }));
        let uri: Uri = "/x?limit=five".parse().unwrap();
        assert_eq!(query::<Page>(&uri).map_err(|r| r.code), Err("bad_query"));
        assert_eq!(json::<Page>(br#"{"limit": 3}"#), Ok(Page { limit: 3 }));
        assert_eq!(json::<Page>(b"{").map_err(|r| r.code), Err("bad_request"));
    }
}
