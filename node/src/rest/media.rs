//! Uploads and downloads of media.
//!
//! `POST /v1/media` takes the raw bytes with their `Content-Type`, spooled to a temporary file as they arrive
//! (`spool.rs`), never whole in memory (images excepted: the thumbnail decoder needs all of it). The SHA-256 of the
//! bytes names the medium: a second upload of the same bytes stores nothing. `GET /v1/media/{hash}/info` describes a
//! medium the caller may use. Info and downloads (`/v1/media/{hash}`, `/thumb`) are allowed to the uploader and
//! to members of a conversation where the medium was sent.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::warn;

use super::{bad_request, not_found, unavailable, AuthUser};
use crate::error::json_error;
use crate::rest::input::ApiPath;
use crate::rest::spool::{SpoolError, Spooled};
use crate::state::NodeState;
use crate::storage::media::thumbnail;
use crate::storage::media_meta::{self, MediumInfo};
use crate::storage::StoreError;

pub async fn upload(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
    let mime = match crate::rest::input::upload_media_type(content_type) {
        Ok(mime) => mime,
        Err(rejected) => {
            ::metrics::counter!("im_media_rejected_total", "why" => "type").increment(1);
            return rejected.into_response();
        }
    };
    // The body goes to a temporary file as it arrives (hashed on the way), never whole into memory.
    let spooled = match Spooled::from_body(body, state.config.max_media_bytes).await {
        Ok(spooled) => spooled,
        Err(SpoolError::TooLarge) => {
            ::metrics::counter!("im_media_rejected_total", "why" => "too_large").increment(1);
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "larger than the upload limit",
            );
        }
        Err(SpoolError::Body) => return bad_request("bad_body", "the upload's body broke off"),
        Err(SpoolError::Io(error)) => {
            warn!(%error, "could not spool an upload to the temporary directory");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "media storage unavailable",
            );
        }
    };
    if spooled.size == 0 {
        return bad_request("empty", "an upload needs a body");
    }
    let hash = spooled.hash.clone();
    // Decoding may take up to the decoder's allocation cap (256 MiB) and seconds of CPU: no database connection is
    // held meanwhile, and at most `--thumbnail-concurrency` decodes run at once, so a burst of crafted images can
    // neither exhaust memory nor starve the pool. It runs for every upload, stored before or not: the declared type
    // is checked against the bytes every time, and the answer cannot tell whether someone else uploaded them.
    // Images are the one kind read whole into memory: decoding needs all of it.
    let thumb = if mime.starts_with("image/") {
        let Ok(_permit) = state.thumbnail_permits.acquire().await else {
            return unavailable(StoreError::Invalid("thumbnailing stopped".into()));
        };
        let bytes = match spooled.bytes().await {
            Ok(bytes) => bytes,
            Err(error) => return unavailable(StoreError::Invalid(error.to_string())),
        };
        let started = std::time::Instant::now();
        let thumb = tokio::task::spawn_blocking(move || thumbnail(&bytes))
            .await
            .ok()
            .flatten();
        ::metrics::histogram!("im_media_thumbnail_seconds").record(started.elapsed().as_secs_f64());
        thumb
    } else {
        None
    };
    if mime.starts_with("image/") && thumb.is_none() {
        ::metrics::counter!("im_media_rejected_total", "why" => "undecodable").increment(1);
        return bad_request(
            "bad_image",
            "the bytes are not a decodable image of the declared type",
        );
    }
    let existing = match media_meta::medium_info(&state.pool, &hash).await {
        Ok(existing) => existing,
        Err(error) => return unavailable(error),
    };
    if let Some(known) = existing {
        if let Err(error) = media_meta::record_upload(&state.pool, &hash, me).await {
            return unavailable(error);
        }
        ::metrics::counter!("im_media_uploads_total", "result" => "deduplicated").increment(1);
        return uploaded(&hash, known.size, &known.mime, known.has_thumb);
    }
    // The store reads the file part by part, and counts and logs its failures.
    let stored = match spooled.reader().await {
        Ok(reader) => state.media.put(&hash, reader).await.is_ok(),
        Err(error) => {
            warn!(%error, "could not reopen a spooled upload");
            false
        }
    };
    if !stored {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "media storage unavailable",
        );
    }
    if let Some(thumb) = &thumb {
        // A failed thumbnail is logged by the store; the medium is stored without one.
        let _ = state.media.put_thumb(&hash, thumb).await;
    }
    let info = MediumInfo {
        size: spooled.size as i64,
        mime: mime.to_string(),
        has_thumb: thumb.is_some(),
    };
    if let Err(error) = media_meta::record_medium(&state.pool, &hash, &info, me).await {
        return unavailable(error);
    }
    ::metrics::counter!("im_media_uploads_total", "result" => "stored").increment(1);
    ::metrics::counter!("im_media_bytes_total").increment(spooled.size);
    uploaded(&hash, info.size, &info.mime, info.has_thumb)
}

/// The answer to an upload, the same whether or not the bytes were stored before (so it confirms nothing about
/// other users' files).
fn uploaded(hash: &str, size: i64, mime: &str, thumbnail: bool) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({ "hash": hash, "size": size, "mime": mime, "thumbnail": thumbnail })),
    )
        .into_response()
}

/// `GET /v1/media/{hash}/info`: size and type of a medium the caller may use (uploaded it, or it was sent in one of
/// their conversations). Anything else, existing or not, gets the same 404 as a download: answering for every hash
/// would let anyone confirm that some file (a known document, say) was uploaded by someone.
pub async fn info(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(hash): ApiPath<String>,
) -> Response {
    if let Err(rejected) = crate::rest::input::media_hash(&hash) {
        return rejected.into_response();
    }
    match media_meta::accessible_media(&state.pool, &hash, me).await {
        Ok(Some(_)) => {}
        Ok(None) => return no_such_medium(),
        Err(error) => return unavailable(error),
    }
    match media_meta::medium_info(&state.pool, &hash).await {
        Ok(Some(info)) => Json(
            json!({ "hash": hash, "size": info.size, "mime": info.mime, "thumbnail": info.has_thumb }),
        )
        .into_response(),
        Ok(None) => no_such_medium(),
        Err(error) => unavailable(error),
    }
}

/// Raster images a browser may show in place; anything else (PDFs, SVG, HTML, archives) is offered as a download,
/// so a medium can never run as a page of the node's origin.
fn content_disposition(hash: &str, mime: &str) -> String {
    let (inline, extension) = match mime {
        "image/png" => (true, "png"),
        "image/jpeg" => (true, "jpg"),
        "image/gif" => (true, "gif"),
        "image/webp" => (true, "webp"),
        "application/pdf" => (false, "pdf"),
        "text/plain" => (false, "txt"),
        _ => (false, "bin"),
    };
    let kind = if inline { "inline" } else { "attachment" };
    format!("{kind}; filename=\"{hash}.{extension}\"")
}

/// Unknown and not shared with the caller look the same, so hashes cannot be probed.
fn no_such_medium() -> Response {
    not_found("no such medium, or not shared with you")
}

async fn download(state: &NodeState, me: i64, hash: &str, thumb: bool) -> Response {
    if let Err(rejected) = crate::rest::input::media_hash(hash) {
        return rejected.into_response();
    }
    let access = media_meta::accessible_media(&state.pool, hash, me).await;
    let mime = match access {
        Ok(Some((_, mime))) => mime,
        Ok(None) => return no_such_medium(),
        Err(error) => return unavailable(error),
    };
    let bytes = if thumb {
        state
            .media
            .get_thumb(hash)
            .await
            .map(axum::body::Body::from)
    } else {
        state
            .media
            .stream(hash)
            .await
            .map(axum::body::Body::from_stream)
    };
    match bytes {
        Ok(bytes) => {
            let content_type = if thumb { "image/png".to_string() } else { mime };
            ::metrics::counter!("im_media_downloads_total").increment(1);
            let disposition = content_disposition(hash, &content_type);
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (
                        header::CACHE_CONTROL,
                        "private, max-age=31536000, immutable".into(),
                    ),
                    // The browser must not guess another type than the one the upload was checked against.
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                bytes,
            )
                .into_response()
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            not_found("no stored bytes for this medium")
        }
        Err(error) => unavailable(StoreError::Invalid(error.to_string())),
    }
}

pub async fn get(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(hash): ApiPath<String>,
) -> Response {
    download(&state, me, &hash, false).await
}

pub async fn get_thumb(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(hash): ApiPath<String>,
) -> Response {
    download(&state, me, &hash, true).await
}
