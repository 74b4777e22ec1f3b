//! Runtime snapshots: a memory snapshot of a freshly started Pyodide, made once in this browser
//! and restored by every later Pyodide sandbox — its interpreter ready in a fraction of the time a
//! fresh start takes (docs/ARCHITECTURE.md, "Runtime snapshots").
//!
//! The first Pyodide sandbox that finds none loads Pyodide afresh and snapshots it at once, before
//! any job's files or code are in it, and hands the bytes to the core, which keeps them for the
//! page and in the page origin's Cache Storage for later visits. A snapshot is never taken from
//! anywhere else (not from the scheduler, not from another volunteer). A sandbox that cannot
//! restore it (another Pyodide build, a damaged copy) loads afresh, says why, and makes a new one,
//! which replaces the old. Which sandbox does what is decided by [`SnapshotBook`] (plain Rust,
//! tested natively); this module holds the bytes and the storage.
//!
//! Package snapshots (the `packageSnapshots` option, on by default) are a second layer: a
//! snapshot taken once a job's packages are loaded and imported, before anything of the job is in
//! the sandbox. The page keeps one, for the packages its last Python job loaded, and a sandbox
//! started for a job with the same packages (or for a job not known yet) restores it instead of
//! the plain one, which stays its fallback (`sandbox-worker.js` says how a restore works).

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use futures::future::{FutureExt, LocalBoxFuture, Shared};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::sandbox::describe;
use crate::snapshot_book::{same_packages, SnapshotBook, SnapshotPlan};

/// The Cache Storage cache holding snapshots, one entry per Pyodide folder and layer.
const CACHE_NAME: &str = "tessera-runtime-snapshots";

/// The response header naming the packages a stored snapshot holds (comma-separated).
const PACKAGES_HEADER: &str = "x-tessera-packages";

/// A snapshot's bytes and the packages loaded in it (none in the plain runtime snapshot).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub blob: web_sys::Blob,
    pub packages: Vec<String>,
}

type Lookup = Shared<LocalBoxFuture<'static, Option<Snapshot>>>;

/// What a new Pyodide sandbox is told: restore these bytes, and/or make a snapshot.
pub struct SnapshotOrder {
    pub restore: Option<Snapshot>,
    pub make: bool,
    /// Identifies this order when its sandbox reports back.
    pub ticket: u64,
}

/// The page's runtime snapshot (or package snapshot): looked up once, handed to sandboxes,
/// replaced when rejected.
pub struct RuntimeSnapshots {
    /// Cache Storage key: the Pyodide folder's URL and the layer (a snapshot only fits the build
    /// it came from).
    key: String,
    enabled: bool,
    /// The stored snapshot, looked up once per page (by the first sandbox's order).
    lookup: OnceCell<Lookup>,
    book: RefCell<SnapshotBook<Snapshot>>,
}

impl RuntimeSnapshots {
    /// Snapshots for the Pyodide folder `pyodide_url`; `enabled: false` makes every sandbox load
    /// Pyodide afresh (the `runtimeSnapshots: false` option).
    pub fn new(pyodide_url: &str, enabled: bool) -> Rc<RuntimeSnapshots> {
        Self::layer(storage_key(pyodide_url), enabled)
    }

    /// The package snapshot for the Pyodide folder `pyodide_url` (the `packageSnapshots` option).
    pub fn for_packages(pyodide_url: &str) -> Rc<RuntimeSnapshots> {
        Self::layer(packages_storage_key(pyodide_url), true)
    }

    fn layer(key: String, enabled: bool) -> Rc<RuntimeSnapshots> {
        Rc::new(RuntimeSnapshots {
            key,
            enabled,
            lookup: OnceCell::new(),
            book: RefCell::new(SnapshotBook::new(enabled)),
        })
    }

    /// What the next Pyodide sandbox should do (waits for the stored snapshot's lookup, once).
    pub async fn order(&self) -> SnapshotOrder {
        self.order_where(&|_| true, true).await
    }

    /// What the next Pyodide sandbox should do about the package snapshot, for a job loading
    /// `packages`: the snapshot holding exactly those, or making it. `None`: the job is not known
    /// yet, so any package snapshot serves, and the one it makes holds whatever packages its job
    /// turns out to load. A job loading no packages needs none.
    pub async fn order_for(&self, packages: Option<&[String]>) -> SnapshotOrder {
        match packages {
            None => self.order().await,
            Some(packages) => {
                let fits = |snapshot: &Snapshot| same_packages(&snapshot.packages, packages);
                self.order_where(&fits, !packages.is_empty()).await
            }
        }
    }

    /// The order for a sandbox that will not make a snapshot of this layer (it restores another).
    pub async fn order_restore_only(&self) -> SnapshotOrder {
        self.order_where(&|_| true, false).await
    }

    async fn order_where(&self, fits: &dyn Fn(&Snapshot) -> bool, can_make: bool) -> SnapshotOrder {
        if self.enabled {
            let lookup = self.lookup.get_or_init(|| {
                let key = self.key.clone();
                async move { stored(&key).await.ok().flatten() }.boxed_local().shared()
            });
            let stored = lookup.clone().await;
            self.book.borrow_mut().looked_up(stored);
        }
        let SnapshotPlan { restore, make, ticket } = self.book.borrow_mut().plan_where(fits, can_make);
        SnapshotOrder { restore, make, ticket }
    }

    /// A sandbox made a snapshot (before anything of a job was in it) holding `packages`: keep it
    /// for this page and store it for later visits. Returns false when it was not asked of that
    /// sandbox.
    pub fn made(&self, ticket: u64, blob: web_sys::Blob, packages: Vec<String>) -> bool {
        let snapshot = Snapshot { blob, packages };
        if !self.book.borrow_mut().made(ticket, snapshot.clone()) {
            return false;
        }
        let key = self.key.clone();
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(error) = store(&key, &snapshot).await {
                web_sys::console::warn_1(&format!("[tessera] the runtime snapshot was not stored: {error}").into());
            }
        });
        true
    }

    /// A sandbox could not restore the snapshot it was given: forget it here and in storage.
    pub fn rejected(&self, ticket: u64) {
        if self.book.borrow_mut().rejected(ticket) {
            let key = self.key.clone();
            wasm_bindgen_futures::spawn_local(async move {
                let _ = forget(&key).await;
            });
        }
    }

    /// A sandbox asked to make a snapshot did not (it failed, or went away first).
    pub fn not_made(&self, ticket: u64, lasting: bool) {
        self.book.borrow_mut().not_made(ticket, lasting);
    }
}

/// The Cache Storage key of the snapshot for the Pyodide folder `pyodide_url` (a URL is needed;
/// nothing is ever fetched from it).
fn storage_key(pyodide_url: &str) -> String {
    format!("{pyodide_url}tessera-runtime.snapshot")
}

/// The Cache Storage key of the package snapshot for the Pyodide folder `pyodide_url`.
fn packages_storage_key(pyodide_url: &str) -> String {
    format!("{pyodide_url}tessera-packages.snapshot")
}

async fn cache() -> Result<web_sys::Cache, String> {
    let window = web_sys::window().ok_or("no window")?;
    // Cache Storage exists only in secure contexts (https, or a loopback address).
    let caches = window.caches().map_err(|error| describe(&error))?;
    let cache = JsFuture::from(caches.open(CACHE_NAME)).await.map_err(|error| describe(&error))?;
    cache.dyn_into::<web_sys::Cache>().map_err(|_| "Cache Storage gave no cache".to_string())
}

/// The snapshot stored by an earlier visit, if any.
async fn stored(key: &str) -> Result<Option<Snapshot>, String> {
    let cache = cache().await?;
    let found = JsFuture::from(cache.match_with_str(key)).await.map_err(|error| describe(&error))?;
    let Ok(response) = found.dyn_into::<web_sys::Response>() else { return Ok(None) };
    let packages = response.headers().get(PACKAGES_HEADER).ok().flatten().unwrap_or_default();
    let packages = packages.split(',').filter(|name| !name.is_empty()).map(String::from).collect();
    let blob = JsFuture::from(response.blob().map_err(|error| describe(&error))?).await.map_err(|e| describe(&e))?;
    let blob = blob.dyn_into::<web_sys::Blob>().ok().filter(|blob| blob.size() > 0.0);
    Ok(blob.map(|blob| Snapshot { blob, packages }))
}

async fn store(key: &str, snapshot: &Snapshot) -> Result<(), String> {
    let cache = cache().await?;
    let init = web_sys::ResponseInit::new();
    let headers = web_sys::Headers::new().map_err(|error| describe(&error))?;
    // Joined as `&str`s: the core's one `join` (a `join` of `String`s is a second copy in the wasm).
    let packages: Vec<&str> = snapshot.packages.iter().map(String::as_str).collect();
    headers.set(PACKAGES_HEADER, &packages.join(",")).map_err(|error| describe(&error))?;
    init.set_headers(&headers);
    let response =
        web_sys::Response::new_with_opt_blob_and_init(Some(&snapshot.blob), &init).map_err(|error| describe(&error))?;
    JsFuture::from(cache.put_with_str(key, &response)).await.map_err(|error| describe(&error))?;
    Ok(())
}

async fn forget(key: &str) -> Result<(), String> {
    let cache = cache().await?;
    JsFuture::from(cache.delete_with_str(key)).await.map_err(|error| describe(&error))?;
    Ok(())
}

/// Removes every stored snapshot of this origin (tests, and a volunteer clearing up).
pub async fn forget_stored() -> Result<(), String> {
    let window = web_sys::window().ok_or("no window")?;
    let caches = window.caches().map_err(|error| describe(&error))?;
    JsFuture::from(caches.delete(CACHE_NAME)).await.map_err(|error| describe(&error))?;
    Ok(())
}

/// Stores `snapshot` as if an earlier visit had made it for `pyodide_url` (tests: a damaged or
/// foreign snapshot must be refused and replaced).
pub async fn store_for(pyodide_url: &str, snapshot: &web_sys::Blob) -> Result<(), String> {
    store(&storage_key(pyodide_url), &Snapshot { blob: snapshot.clone(), packages: vec![] }).await
}

/// The snapshot stored for `pyodide_url`, if any (tests).
pub async fn stored_for(pyodide_url: &str) -> Result<Option<web_sys::Blob>, String> {
    Ok(stored(&storage_key(pyodide_url)).await?.map(|snapshot| snapshot.blob))
}

/// Stores `snapshot` as the package snapshot holding `packages` for `pyodide_url` (tests).
pub async fn store_packages_for(pyodide_url: &str, snapshot: &web_sys::Blob, packages: &[&str]) -> Result<(), String> {
    let packages = packages.iter().map(|name| name.to_string()).collect();
    store(&packages_storage_key(pyodide_url), &Snapshot { blob: snapshot.clone(), packages }).await
}

/// The package snapshot stored for `pyodide_url`, if any, with its packages (tests).
pub async fn stored_packages_for(pyodide_url: &str) -> Result<Option<Snapshot>, String> {
    stored(&packages_storage_key(pyodide_url)).await
}
