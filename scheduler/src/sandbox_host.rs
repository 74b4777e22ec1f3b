//! The sandbox host page, `/sandbox.html`: where the worker core's sandboxes live, in an opaque
//! origin (the core loads it as `<iframe sandbox="allow-scripts">`), under a
//! Content-Security-Policy with no network source at all. The page's only script is allowed by
//! its hash, computed here from the embedded page, so editing the page cannot desynchronise them.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::site::{accepts_brotli, names_a_current_tag};

/// The page, embedded at build time from `pyodide-loader/sandbox.html` without its script's
/// comments and indentation, the sandbox worker's script written into it (`build.rs`).
pub const SANDBOX_HTML: &str = include_str!(concat!(env!("OUT_DIR"), "/sandbox.html"));

/// The same page compressed at brotli's best quality, at build time: for browsers that accept
/// `br` (all of them). With the sandbox script in it, ≈ 10.4 KB of ≈ 38 KB.
const SANDBOX_HTML_BROTLI: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sandbox.html.br"));

/// The policy for `html`: its one inline script by hash, Blob-URL scripts and workers (the
/// sandbox worker and the Pyodide files the core hands in as bytes), WebAssembly compilation —
/// never `'unsafe-eval'` (guest `eval` could otherwise build an `import()`), never a URL.
pub fn content_security_policy(html: &str) -> Result<String> {
    let script = inline_script(html)?;
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script.as_bytes()));
    Ok(format!(
        "default-src 'none'; script-src 'sha256-{hash}' blob: 'wasm-unsafe-eval'; worker-src blob:; \
         base-uri 'none'; form-action 'none'"
    ))
}

/// The text between the page's only `<script>` and `</script>`, which is what the hash covers.
fn inline_script(html: &str) -> Result<&str> {
    let invalid = |why: &str| Error::SandboxHost(format!("pyodide-loader/sandbox.html: {why}"));
    let open = html.find("<script>").ok_or_else(|| invalid("no <script> element"))?;
    let body = &html[open + "<script>".len()..];
    let close = body.find("</script>").ok_or_else(|| invalid("the <script> element is not closed"))?;
    if body[close..].contains("<script") {
        return Err(invalid("more than one <script> element; the policy allows exactly one"));
    }
    Ok(&body[..close])
}

/// The page with its headers: the policy, cross-origin embedding (the core's page may be on
/// another origin) and cross-origin isolation, so the sandbox can share an interrupt buffer.
#[derive(Clone)]
pub struct SandboxHostPage {
    policy: HeaderValue,
    /// A strong validator: every sandbox frame loads the page, and after the first a
    /// revalidation (`Cache-Control: no-cache`) costs a 304 instead of the page again.
    etag: HeaderValue,
    /// The brotli bytes' own validator (another representation, another tag).
    brotli_etag: HeaderValue,
}

impl SandboxHostPage {
    /// Computes the policy once, at start-up.
    pub fn new() -> Result<SandboxHostPage> {
        let policy = content_security_policy(SANDBOX_HTML)?;
        let policy = HeaderValue::from_str(&policy).map_err(|error| Error::SandboxHost(format!("policy: {error}")))?;
        let digest = hex::encode(&Sha256::digest(SANDBOX_HTML.as_bytes())[..12]);
        let tag = |suffix: &str| {
            HeaderValue::from_str(&format!("\"{digest}{suffix}\""))
                .map_err(|error| Error::SandboxHost(format!("etag: {error}")))
        };
        Ok(SandboxHostPage { policy, etag: tag("")?, brotli_etag: tag("-br")? })
    }

    /// The response for `GET /sandbox.html`: brotli-compressed when `Accept-Encoding` allows it
    /// (other browsers get the page as it is, which the route's compression layer may gzip), 304
    /// when `If-None-Match` has the tag of the copy that would be sent.
    pub fn response(&self, request: &HeaderMap) -> Response {
        let brotli = accepts_brotli(request);
        let etag = if brotli { &self.brotli_etag } else { &self.etag };
        let vary = (header::VARY, HeaderValue::from_static("accept-encoding"));
        if names_a_current_tag(request, &[etag]) {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag.clone()), vary]).into_response();
        }
        let (encoding, body) = match brotli {
            true => (Some([(header::CONTENT_ENCODING, HeaderValue::from_static("br"))]), SANDBOX_HTML_BROTLI),
            false => (None, SANDBOX_HTML.as_bytes()),
        };
        (
            encoding,
            [
                vary,
                (header::ETAG, etag.clone()),
                (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
                (header::CONTENT_SECURITY_POLICY, self.policy.clone()),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (HeaderName::from_static("cross-origin-embedder-policy"), HeaderValue::from_static("require-corp")),
                (HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("cross-origin")),
                (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            ],
            body,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_embedded_script_by_hash_and_no_network() {
        let policy = content_security_policy(SANDBOX_HTML).unwrap();
        let script = inline_script(SANDBOX_HTML).unwrap();
        assert!(script.contains("tessera-sandbox-ready"));
        let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script.as_bytes()));
        assert!(policy.contains(&format!("'sha256-{expected}'")), "{policy}");
        assert!(policy.starts_with("default-src 'none';"), "{policy}");
        assert!(policy.contains("'wasm-unsafe-eval'"), "Pyodide compiles WebAssembly: {policy}");
        assert!(!policy.contains(" 'unsafe-eval'"), "{policy}");
        assert!(!policy.contains("http"), "no network source: {policy}");
        assert!(!policy.contains("'self'"), "{policy}");
    }

    #[test]
    fn the_page_is_revalidated_by_its_tag() {
        let page = SandboxHostPage::new().unwrap();
        let first = page.response(&HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        assert!(first.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, first.headers()[header::ETAG].clone());
        assert_eq!(page.response(&request).status(), StatusCode::NOT_MODIFIED);
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"another page\""));
        assert_eq!(page.response(&request).status(), StatusCode::OK);
    }

    #[test]
    fn the_page_goes_compressed_to_a_browser_that_accepts_brotli_and_without_comments() {
        assert!(!SANDBOX_HTML.lines().any(|line| line.trim_start().starts_with("//")), "comments are left out");
        let page = SandboxHostPage::new().unwrap();
        let mut request = HeaderMap::new();
        request.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, deflate, br, zstd"));
        let compressed = page.response(&request);
        assert_eq!(compressed.headers()[header::CONTENT_ENCODING], "br");
        assert_eq!(compressed.headers()[header::VARY], "accept-encoding");
        assert!(compressed.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let mut decoded = Vec::new();
        brotli_decompressor::BrotliDecompress(&mut &SANDBOX_HTML_BROTLI[..], &mut decoded).unwrap();
        assert_eq!(decoded, SANDBOX_HTML.as_bytes());
        let plain = page.response(&HeaderMap::new());
        assert!(!plain.headers().contains_key(header::CONTENT_ENCODING));
        assert_ne!(plain.headers()[header::ETAG], compressed.headers()[header::ETAG], "one tag per representation");
        assert_eq!(plain.headers()[header::VARY], "accept-encoding");
        // A 304 only for the tag of the copy that would be sent.
        request.insert(header::IF_NONE_MATCH, compressed.headers()[header::ETAG].clone());
        assert_eq!(page.response(&request).status(), StatusCode::NOT_MODIFIED);
        request.insert(header::IF_NONE_MATCH, plain.headers()[header::ETAG].clone());
        assert_eq!(page.response(&request).status(), StatusCode::OK);
        let mut plain_request = HeaderMap::new();
        plain_request.insert(header::IF_NONE_MATCH, compressed.headers()[header::ETAG].clone());
        assert_eq!(page.response(&plain_request).status(), StatusCode::OK);
        plain_request.insert(header::IF_NONE_MATCH, plain.headers()[header::ETAG].clone());
        let not_modified = page.response(&plain_request);
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(not_modified.headers()[header::VARY], "accept-encoding");
    }

    #[test]
    fn a_page_with_two_scripts_or_none_is_refused() {
        assert!(content_security_policy("<p>no script</p>").is_err());
        assert!(content_security_policy("<script>a</script><script>b</script>").is_err());
        assert!(content_security_policy("<script>a").is_err());
    }
}
