//! The web app's static files (`--web-dir`, built from `web/`) and CORS for the REST API.
//!
//! Static files answer GET and HEAD on every path outside `/v1/`; `/v1/…` paths that match no route keep the JSON
//! 404. A path that names no file and has no extension gets `index.html` (the app routes on the client). Paths are
//! checked segment by segment (no `..`, no hidden names, no backslashes) and the resolved file must still lie inside
//! the canonical web folder, so neither `..` nor a symlink can reach outside it.
//!
//! Compression: the build writes `name.br` and `name.gz` next to each compressible file; a client that accepts
//! them (`Accept-Encoding`) gets the precompressed bytes with `Content-Encoding` (brotli first), and every answer
//! names `Vary: Accept-Encoding`. Nothing is compressed at request time.
//!
//! CORS: the app may talk to several nodes (failover to a node that did not serve the page), so `/v1/` answers
//! carry `Access-Control-Allow-Origin: *` and preflights are answered. Authentication is a bearer token in a
//! header, never a cookie, so a foreign origin gains nothing it could not do without a browser.

use std::path::{Path, PathBuf};

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::info;

use crate::error::json_error;

/// The canonical web folder, or `None` (with a log line) when it does not exist.
pub fn web_root(dir: &Path) -> Option<PathBuf> {
    match std::fs::canonicalize(dir) {
        Ok(root) if root.join("index.html").is_file() => {
            info!(web_dir = %root.display(), "serving the web app at /");
            Some(root)
        }
        _ => {
            info!(web_dir = %dir.display(), "no web app (folder or its index.html missing): not serving /");
            None
        }
    }
}

/// The relative file path a request path names, or `None` when it is not acceptable.
fn relative_path(path: &str) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        if segment.starts_with('.') || segment.contains('\\') || segment.contains('\0') {
            return None;
        }
        relative.push(segment);
    }
    Some(relative)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Whether an `Accept-Encoding` value accepts `coding` (listed, and not with `q=0`).
fn accepts(accept_encoding: &str, coding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        parts
            .next()
            .is_some_and(|name| name.eq_ignore_ascii_case(coding))
            && !parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
    })
}

/// The precompressed sibling of `file` the client accepts, if the build made one: (its bytes, the coding).
async fn precompressed(
    root: &Path,
    file: &Path,
    headers: &HeaderMap,
) -> Option<(Vec<u8>, &'static str)> {
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for (coding, suffix) in [("br", "br"), ("gzip", "gz")] {
        if !accepts(accept, coding) {
            continue;
        }
        let mut name = file.as_os_str().to_owned();
        name.push(".");
        name.push(suffix);
        // The sibling must resolve inside the web folder too.
        let Ok(sibling) = tokio::fs::canonicalize(PathBuf::from(name)).await else {
            continue;
        };
        if !sibling.starts_with(root) {
            continue;
        }
        if let Ok(bytes) = tokio::fs::read(&sibling).await {
            return Some((bytes, coding));
        }
    }
    None
}

/// The router's fallback: static files for GET/HEAD outside `/v1/`, the JSON 404 for everything else.
pub async fn fallback(
    root: Option<PathBuf>,
    method: Method,
    uri: axum::http::Uri,
    request_headers: HeaderMap,
) -> Response {
    let not_found = || json_error(StatusCode::NOT_FOUND, "not_found", "no such route");
    let path = uri.path();
    let (Some(root), true, false) = (
        root,
        method == Method::GET || method == Method::HEAD,
        path == "/v1" || path.starts_with("/v1/"),
    ) else {
        return not_found();
    };
    let Some(relative) = relative_path(path) else {
        return not_found();
    };
    let mut file = root.join(&relative);
    if relative.as_os_str().is_empty() || (!file.is_file() && relative.extension().is_none()) {
        file = root.join("index.html");
    }
    // Resolve symlinks and make sure the result is still inside the web folder.
    let Ok(file) = tokio::fs::canonicalize(&file).await else {
        return not_found();
    };
    if !file.starts_with(&root) {
        return not_found();
    }
    let (bytes, coding) = match precompressed(&root, &file, &request_headers).await {
        Some((bytes, coding)) => (bytes, Some(coding)),
        None => match tokio::fs::read(&file).await {
            Ok(bytes) => (bytes, None),
            Err(_) => return not_found(),
        },
    };
    // Vite puts content-hashed names under assets/: cache them for good; everything else is revalidated.
    let cache = if relative.starts_with("assets") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let headers = [
        (header::CONTENT_TYPE, content_type(&file)),
        (header::CACHE_CONTROL, cache),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::VARY, "Accept-Encoding"),
    ];
    let mut response = if method == Method::HEAD {
        (headers, [(header::CONTENT_LENGTH, bytes.len().to_string())]).into_response()
    } else {
        (headers, bytes).into_response()
    };
    if let Some(coding) = coding {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    response
}

/// Middleware: CORS for `/v1/` (see the module comment).
pub async fn cors(request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let mut response = if request.method() == Method::OPTIONS {
        let mut preflight = StatusCode::NO_CONTENT.into_response();
        let headers = preflight.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        preflight
    } else {
        next.run(request).await
    };
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_folder() {
        assert_eq!(relative_path("/"), Some(PathBuf::new()));
        assert_eq!(
            relative_path("/assets/app-1.js"),
            Some(PathBuf::from("assets/app-1.js"))
        );
        assert_eq!(relative_path("/../etc/passwd"), None);
        assert_eq!(relative_path("/assets/../../x"), None);
        assert_eq!(relative_path("/.git/config"), None);
        assert_eq!(relative_path("/a\\..\\b"), None);
    }

    #[tokio::test]
    async fn serves_files_index_and_json_404s() {
        let dir = std::env::temp_dir().join(format!("im-web-{}", rand::random::<u64>()));
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("index.html"), "<!doctype html>app").unwrap();
        std::fs::write(dir.join("assets/a.js"), "x").unwrap();
        std::fs::write(dir.with_extension("secret"), "no").unwrap();
        let root = web_root(&dir);
        assert!(root.is_some());
        let get = |path: &str| {
            fallback(
                root.clone(),
                Method::GET,
                path.parse().unwrap(),
                HeaderMap::new(),
            )
        };
        assert_eq!(get("/").await.status(), StatusCode::OK);
        let js = get("/assets/a.js").await;
        assert_eq!(
            js.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        // Client-side routes get the app; missing files with an extension and API paths do not.
        assert_eq!(get("/chats/3").await.status(), StatusCode::OK);
        assert_eq!(get("/missing.js").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(get("/v1/nothing").await.status(), StatusCode::NOT_FOUND);
        let name = dir.with_extension("secret");
        let escape = format!("/../{}", name.file_name().unwrap().to_string_lossy());
        assert_eq!(get(&escape).await.status(), StatusCode::NOT_FOUND);
        let post = fallback(
            root.clone(),
            Method::POST,
            "/".parse().unwrap(),
            HeaderMap::new(),
        )
        .await;
        assert_eq!(post.status(), StatusCode::NOT_FOUND);
        assert!(
            fallback(None, Method::GET, "/".parse().unwrap(), HeaderMap::new())
                .await
                .status()
                .is_client_error()
        );
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(name);
    }

    #[tokio::test]
    async fn precompressed_files_are_served_to_clients_that_accept_them() {
        let dir = std::env::temp_dir().join(format!("im-web-{}", rand::random::<u64>()));
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("index.html"), "<!doctype html>app").unwrap();
        std::fs::write(dir.join("assets/a.js"), "plain").unwrap();
        std::fs::write(dir.join("assets/a.js.gz"), "gzip bytes").unwrap();
        std::fs::write(dir.join("assets/a.js.br"), "brotli bytes").unwrap();
        let root = web_root(&dir);
        let get = |accept: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(accept));
            fallback(
                root.clone(),
                Method::GET,
                "/assets/a.js".parse().unwrap(),
                headers,
            )
        };
        let body = |response: Response| async {
            axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap()
        };
        let br = get("gzip, deflate, br").await;
        assert_eq!(br.headers()[header::CONTENT_ENCODING], "br");
        assert_eq!(br.headers()[header::VARY], "Accept-Encoding");
        assert_eq!(
            br.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(&body(br).await[..], b"brotli bytes");
        let gzip = get("gzip, br;q=0").await;
        assert_eq!(gzip.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(&body(gzip).await[..], b"gzip bytes");
        let plain = get("identity").await;
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(&body(plain).await[..], b"plain");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
