//! Bytes in: the Pyodide files a sandbox needs, fetched by the core and kept in memory.
//!
//! A sandbox has no network (its host page's policy allows no URL at all), so the files its
//! runtime loads — `pyodide.mjs`, `pyodide.asm.js`/`.wasm`, the standard library, the lock file,
//! the wheels of the job's packages — are fetched here, from the Pyodide folder only, once per
//! page: a respawned sandbox costs no network. They are kept as `Blob`s, which cross to a sandbox
//! without a copy and live outside the core's wasm memory.

use std::cell::RefCell;
use std::rc::Rc;

use futures::future::{FutureExt, LocalBoxFuture, Shared};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::http::{get, DOWNLOAD_DEADLINE_MS};
use crate::runtime_files::runtime_file_name;
use crate::small_map::SmallMap;

type Fetching = Shared<LocalBoxFuture<'static, Result<web_sys::Blob, String>>>;

/// The Pyodide files fetched so far, by URL (and the fetches under way, shared by every asker).
pub struct RuntimeFiles {
    /// The Pyodide folder (ending in `/`); nothing outside it is ever fetched.
    base: String,
    files: RefCell<SmallMap<String, Fetching>>,
}

impl RuntimeFiles {
    pub fn new(base: &str) -> Rc<RuntimeFiles> {
        let base = if base.ends_with('/') { base.to_string() } else { format!("{base}/") };
        Rc::new(RuntimeFiles { base, files: RefCell::new(SmallMap::new()) })
    }

    /// The folder the files come from (what sandboxes use as Pyodide's `indexURL`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bytes of `url`, a file directly inside the Pyodide folder; anything else is refused,
    /// so a sandbox cannot make the core fetch an address of its choosing.
    pub async fn get(self: &Rc<Self>, url: &str) -> Result<web_sys::Blob, String> {
        let name = runtime_file_name(&self.base, url)?;
        let fetching = self.files.borrow().get(url).cloned();
        let fetching = match fetching {
            Some(fetching) => fetching,
            None => {
                let target = format!("{}{name}", self.base);
                let fetching = async move { fetch_blob(&target).await }.boxed_local().shared();
                self.files.borrow_mut().insert(url.to_string(), fetching.clone());
                fetching
            }
        };
        let result = fetching.await;
        if result.is_err() {
            // A failed fetch is not remembered: the next sandbox tries again.
            self.files.borrow_mut().remove(url);
        }
        result
    }
}

async fn fetch_blob(url: &str) -> Result<web_sys::Blob, String> {
    let response = get(url, DOWNLOAD_DEADLINE_MS).await.map_err(|error| format!("{url}: {error}"))?;
    let blob = response.blob().map_err(|error| format!("{url}: {}", super::sandbox::describe(&error)))?;
    JsFuture::from(blob)
        .await
        .map_err(|error| format!("{url}: {}", super::sandbox::describe(&error)))?
        .dyn_into::<web_sys::Blob>()
        .map_err(|_| format!("{url}: the response is not a blob"))
}
