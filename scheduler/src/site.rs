//! The static site served at `/`: the contribute page, the embed script, the bench page and the
//! built worker core under `/pkg/`. It is embedded in the binary at build time (`build.rs`), so an
//! installed `tessera` serves everything from any directory; `tessera serve --www DIR` serves a
//! folder instead, for working on the page without rebuilding.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// A file of `www/` as `build.rs` embeds it.
struct EmbeddedFile {
    /// Its URL path (`/pkg/tessera_worker_bg.wasm`).
    path: &'static str,
    bytes: &'static [u8],
    /// Compressed with brotli's best quality, unless that gains nothing.
    brotli: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/site_files.rs"));

/// One embedded file, with what its answers need.
struct SiteFile {
    bytes: &'static [u8],
    /// The same bytes compressed with brotli's best quality at build time (`build.rs`), sent to
    /// a browser that accepts `br`: the worker core is ≈ 17 % smaller than brotli on the fly
    /// makes it. `None` where compressing gains nothing.
    brotli: Option<&'static [u8]>,
    content_type: &'static str,
    /// A strong validator, so a browser's revalidation (`Cache-Control: no-cache`) costs a 304.
    etag: HeaderValue,
    /// The brotli bytes' own validator (another representation, another tag).
    brotli_etag: HeaderValue,
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
            .map(|&EmbeddedFile { path, bytes, brotli }| {
                let digest = hex::encode(&Sha256::digest(bytes)[..12]);
                let tag = |suffix: &str| {
                    HeaderValue::from_str(&format!("\"{digest}{suffix}\"")).unwrap_or(HeaderValue::from_static("\"\""))
                };
                let file = SiteFile {
                    bytes,
                    brotli,
                    content_type: content_type(path),
                    etag: tag(""),
                    brotli_etag: tag("-br"),
                };
                (path, file)
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

    /// The answer to `method path`: the file (brotli-compressed when `Accept-Encoding` allows
    /// it; or 304 when `If-None-Match` has the tag of the copy it would send), a redirect from a
    /// folder without its slash to the folder, 404, or 405 for a method other than GET and HEAD.
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
        let brotli = file.brotli.filter(|_| accepts_brotli(headers));
        let etag = if brotli.is_some() { &file.brotli_etag } else { &file.etag };
        let validators = [(header::ETAG, etag.clone())];
        let content_type = [(header::CONTENT_TYPE, HeaderValue::from_static(file.content_type))];
        // 304 only for the copy this request would get: the other encoding's tag is not current.
        let mut response = if names_a_current_tag(headers, &[etag]) {
            (StatusCode::NOT_MODIFIED, validators).into_response()
        } else {
            match brotli {
                Some(compressed) => {
                    let encoding = [(header::CONTENT_ENCODING, HeaderValue::from_static("br"))];
                    (validators, content_type, encoding, compressed).into_response()
                }
                None => (validators, content_type, file.bytes).into_response(),
            }
        };
        // A file with a brotli copy varies with `Accept-Encoding`, in every answer about it.
        if file.brotli.is_some() {
            response.headers_mut().insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        response
    }
}

/// Whether the request's `If-None-Match` names one of `tags` (or `*`): the copy the browser
/// holds is current, and a 304 answers it.
pub fn names_a_current_tag(request: &HeaderMap, tags: &[&HeaderValue]) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tags.iter().any(|current| *current == tag))
}

/// Whether `Accept-Encoding` names `br` with a quality above 0 (`br`, `br;q=0.5`; not `br;q=0`).
pub fn accepts_brotli(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let named = parts.next().is_some_and(|name| name.eq_ignore_ascii_case("br"));
            let quality = parts
                .find_map(|parameter| parameter.strip_prefix("q=").or_else(|| parameter.strip_prefix("Q=")))
                .map_or(Some(1.0), |quality| quality.trim().parse::<f32>().ok());
            named && quality.is_some_and(|quality| quality > 0.0)
        })
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

    fn accepting(encodings: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(encodings));
        headers
    }

    #[test]
    fn a_browser_that_accepts_brotli_gets_the_core_compressed_at_build_time() {
        let site = EmbeddedSite::new();
        let core = get(&site, "/pkg/tessera_worker_bg.wasm", &accepting("gzip, deflate, br, zstd"));
        assert_eq!(core.headers()[header::CONTENT_ENCODING], "br");
        assert_eq!(core.headers()[header::VARY], "accept-encoding");
        assert_eq!(core.headers()[header::CONTENT_TYPE], "application/wasm");
        let file = &site.files["/pkg/tessera_worker_bg.wasm"];
        let compressed = file.brotli.expect("the core is compressed at build time");
        let mut decoded = Vec::new();
        brotli_decompressor::BrotliDecompress(&mut &compressed[..], &mut decoded).unwrap();
        assert_eq!(decoded, file.bytes, "the brotli bytes are the file");
        assert!(compressed.len() * 2 < file.bytes.len(), "{} of {} bytes", compressed.len(), file.bytes.len());
        // Its own tag: revalidating with it costs a 304.
        let tag = core.headers()[header::ETAG].clone();
        assert_ne!(tag, file.etag);
        let mut headers = accepting("br");
        headers.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(get(&site, "/pkg/tessera_worker_bg.wasm", &headers).status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn a_tag_of_the_other_encoding_is_not_current_and_every_answer_varies() {
        let site = EmbeddedSite::new();
        let file = &site.files["/pkg/tessera_worker_bg.wasm"];
        let revalidating = |encodings: &'static str, tag: &HeaderValue| {
            let mut headers = accepting(encodings);
            headers.insert(header::IF_NONE_MATCH, tag.clone());
            get(&site, "/pkg/tessera_worker_bg.wasm", &headers)
        };
        // The brotli copy's tag, from a browser that no longer takes brotli: the file as it is.
        let plain = revalidating("gzip", &file.brotli_etag);
        assert_eq!(plain.status(), StatusCode::OK);
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(plain.headers()[header::ETAG], file.etag);
        // The plain copy's tag, from one that takes brotli: the brotli copy.
        let compressed = revalidating("br", &file.etag);
        assert_eq!(compressed.status(), StatusCode::OK);
        assert_eq!(compressed.headers()[header::CONTENT_ENCODING], "br");
        // Every answer about a file with a brotli copy says it varies, the 304 and the plain one too.
        for answer in [plain, compressed, revalidating("gzip", &file.etag), revalidating("br", &file.brotli_etag)] {
            assert_eq!(answer.headers()[header::VARY], "accept-encoding", "{:?}", answer.status());
        }
    }

    #[test]
    fn without_brotli_in_accept_encoding_the_file_goes_as_it_is() {
        let site = EmbeddedSite::new();
        for refusing in ["gzip, deflate", "br;q=0, gzip", "brotli", "identity"] {
            let core = get(&site, "/pkg/tessera_worker_bg.wasm", &accepting(refusing));
            assert!(core.headers().get(header::CONTENT_ENCODING).is_none(), "{refusing}");
            assert_eq!(core.headers()[header::ETAG], site.files["/pkg/tessera_worker_bg.wasm"].etag);
        }
        assert!(get(&site, "/index.html", &HeaderMap::new()).headers().get(header::CONTENT_ENCODING).is_none());
        for accepting_br in ["br", "gzip;q=1.0, br;q=0.5", "BR"] {
            assert!(accepts_brotli(&accepting(accepting_br)), "{accepting_br}");
        }
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
