//! The web app's static files (`--web-dir`, built from `web/`) and CORS for the REST API.
//!
//! Static files answer GET and HEAD on every path outside `/v1/`; `/v1/…` paths that match no route keep the JSON
//! 404. A path that names no file and has no extension gets `index.html` (the app routes on the client). Paths are
//! checked segment by segment (no `..`, no hidden names, no backslashes) and the resolved file must still lie inside
//! the canonical web folder, so neither `..` nor a symlink can reach outside it.
//!
//! CORS: the app may talk to several nodes (failover to a node that did not serve the page), so `/v1/` answers
//! carry `Access-Control-Allow-Origin: *` and preflights are answered. Authentication is a bearer token in a
//! header, never a cookie, so a foreign origin gains nothing it could not do without a browser.

use std::path::{Path, PathBuf};

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
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

/// The router's fallback: static files for GET/HEAD outside `/v1/`, the JSON 404 for everything else.
pub async fn fallback(root: Option<PathBuf>, method: Method, uri: axum::http::Uri) -> Response {
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
    let Ok(bytes) = tokio::fs::read(&file).await else {
        return not_found();
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
    ];
    if method == Method::HEAD {
        return (headers, [(header::CONTENT_LENGTH, bytes.len().to_string())]).into_response();
    }
    (headers, bytes).into_response()
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
        let get = |path: &str| fallback(root.clone(), Method::GET, path.parse().unwrap());
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
        let post = fallback(root.clone(), Method::POST, "/".parse().unwrap()).await;
        assert_eq!(post.status(), StatusCode::NOT_FOUND);
        assert!(fallback(None, Method::GET, "/".parse().unwrap())
            .await
            .status()
            .is_client_error());
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(name);
    }
}
