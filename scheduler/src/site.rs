//! The static site served at `/`: the contribute page, the embed script, the bench page and the
//! built worker core under `/pkg/`. It is embedded in the binary at build time (`build.rs`), so an
//! installed `tessera` serves everything from any directory; `tessera serve --www DIR` serves a
//! folder instead, for working on the page without rebuilding.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

include!(concat!(env!("OUT_DIR"), "/site_files.rs"));

/// One embedded file, with what its answers need.
struct SiteFile {
    bytes: &'static [u8],
    content_type: &'static str,
    /// A strong validator, so a browser's revalidation (`Cache-Control: no-cache`) costs a 304.
    etag: HeaderValue,
}

/// The embedded site, indexed by URL path.
pub struct EmbeddedSite {
    files: HashMap<&'static str, SiteFile>,
}

impl Default for EmbeddedSite {
    fn default() -> Self {
        EmbeddedSite::new()
    }
}

impl EmbeddedSite {
    /// Indexes the files embedded at build time, hashing each once.
    pub fn new() -> EmbeddedSite {
        let files = SITE_FILES
            .iter()
            .map(|&(path, bytes)| {
                let digest = hex::encode(&Sha256::digest(bytes)[..12]);
                let etag = HeaderValue::from_str(&format!("\"{digest}\"")).unwrap_or(HeaderValue::from_static("\"\""));
                (path, SiteFile { bytes, content_type: content_type(path), etag })
            })
            .collect();
        EmbeddedSite { files }
    }

    /// The URL paths of the embedded files, sorted.
    pub fn paths(&self) -> Vec<&'static str> {
        let mut paths: Vec<_> = self.files.keys().copied().collect();
        paths.sort_unstable();
        paths
    }

    /// The answer to `method path`: the file (or 304 when `If-None-Match` has its tag), a
    /// redirect from a folder without its slash to the folder, 404, or 405 for a method other
    /// than GET and HEAD.
    pub fn response(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response {
        if method != Method::GET && method != Method::HEAD {
            return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET, HEAD")]).into_response();
        }
        let wanted = if path.ends_with('/') { format!("{path}index.html") } else { path.to_string() };
        let Some(file) = self.files.get(wanted.as_str()) else {
            if self.files.contains_key(format!("{path}/index.html").as_str()) {
                let location = format!("{path}/");
                return (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response();
            }
            return (StatusCode::NOT_FOUND, "not found").into_response();
        };
        let revalidated = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|tag| tag.trim() == "*" || tag.trim().trim_start_matches("W/") == file.etag);
        let validators = [(header::ETAG, file.etag.clone())];
        if revalidated {
            return (StatusCode::NOT_MODIFIED, validators).into_response();
        }
        let content_type = [(header::CONTENT_TYPE, HeaderValue::from_static(file.content_type))];
        (validators, content_type, file.bytes).into_response()
    }
}

/// The media type for a file name, as `tower_http::services::ServeDir` would send it.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html",
        Some("js" | "mjs") => "text/javascript",
        Some("css") => "text/css",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(site: &EmbeddedSite, path: &str, headers: &HeaderMap) -> Response {
        site.response(&Method::GET, path, headers)
    }

    #[test]
    fn the_page_and_the_worker_core_are_embedded() {
        let site = EmbeddedSite::new();
        for path in ["/index.html", "/contribute.js", "/tessera.js", "/embed.js", "/pkg/tessera_worker_bg.wasm"] {
            assert!(site.paths().contains(&path), "{path} is embedded: {:?}", site.paths());
        }
        let page = get(&site, "/", &HeaderMap::new());
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[header::CONTENT_TYPE], "text/html");
        let core = get(&site, "/pkg/tessera_worker_bg.wasm", &HeaderMap::new());
        assert_eq!(core.headers()[header::CONTENT_TYPE], "application/wasm");
    }

    #[test]
    fn a_known_tag_is_answered_not_modified() {
        let site = EmbeddedSite::new();
        let first = get(&site, "/contribute.js", &HeaderMap::new());
        let tag = first.headers()[header::ETAG].clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(get(&site, "/contribute.js", &headers).status(), StatusCode::NOT_MODIFIED);
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(get(&site, "/contribute.js", &headers).status(), StatusCode::OK);
    }

    #[test]
    fn folders_unknown_paths_and_other_methods() {
        let site = EmbeddedSite::new();
        let folder = get(&site, "/bench", &HeaderMap::new());
        assert_eq!(folder.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(folder.headers()[header::LOCATION], "/bench/");
        assert_eq!(get(&site, "/bench/", &HeaderMap::new()).status(), StatusCode::OK);
        assert_eq!(get(&site, "/no-such-file.js", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
        assert_eq!(get(&site, "/../Cargo.toml", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
        let posted = site.response(&Method::POST, "/index.html", &HeaderMap::new());
        assert_eq!(posted.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
