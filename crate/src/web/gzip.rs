//! Bundles inflated by the browser (`DecompressionStream`), so the core carries no inflater of
//! its own: the same contract as [`tessera_protocol::bundle::inflate`], which the native tests use.

use js_sys::Uint8Array;
use tessera_protocol::bundle::{check_compressed_size, stream_cap};
use tessera_protocol::{BundleError, BundleLimits};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::web::sandbox::describe;

#[wasm_bindgen]
extern "C" {
    /// The browser's inflater (web-sys has it only behind `web_sys_unstable_apis`).
    type DecompressionStream;
    #[wasm_bindgen(constructor, catch)]
    fn new(format: &str) -> Result<DecompressionStream, JsValue>;
    #[wasm_bindgen(method, getter)]
    fn readable(this: &DecompressionStream) -> web_sys::ReadableStream;
    #[wasm_bindgen(method, getter)]
    fn writable(this: &DecompressionStream) -> web_sys::WritableStream;
}

/// The tar inside `tar_gz`: refused if the tar.gz is over `limits.max_compressed_bytes`, and
/// read one byte past [`stream_cap`] at most, so that a gzip bomb stops inflating there (and
/// [`tessera_protocol::bundle::unpack_tar`] refuses it).
pub async fn inflate(tar_gz: &[u8], limits: &BundleLimits) -> Result<Vec<u8>, BundleError> {
    check_compressed_size(tar_gz, limits)?;
    let unreadable = |error: JsValue| BundleError::Unreadable { reason: describe(&error) };
    let parts = js_sys::Array::of1(&Uint8Array::from(tar_gz));
    let compressed = web_sys::Blob::new_with_u8_array_sequence(&parts).map_err(unreadable)?;
    let gunzip = DecompressionStream::new("gzip").map_err(unreadable)?;
    let pipe = web_sys::ReadableWritablePair::new(&gunzip.readable(), &gunzip.writable());
    let reader =
        compressed.stream().pipe_through(&pipe).get_reader().unchecked_into::<web_sys::ReadableStreamDefaultReader>();
    let most = usize::try_from(stream_cap(limits).saturating_add(1)).unwrap_or(usize::MAX);
    let mut tar = Vec::new();
    while tar.len() < most {
        let read = JsFuture::from(reader.read()).await.map_err(unreadable)?;
        let read = read.unchecked_into::<web_sys::ReadableStreamReadResult>();
        if read.get_done().unwrap_or(true) {
            return Ok(tar);
        }
        let Ok(chunk) = read.get_value().dyn_into::<Uint8Array>() else {
            return Err(BundleError::Unreadable {
                reason: "the browser's gzip stream gave something else than bytes".into(),
            });
        };
        let take = (chunk.length() as usize).min(most - tar.len());
        let start = tar.len();
        tar.resize(start + take, 0);
        chunk.subarray(0, take as u32).copy_to(&mut tar[start..]);
    }
    // Past the cap: the rest is never inflated.
    let _ = reader.cancel();
    Ok(tar)
}
