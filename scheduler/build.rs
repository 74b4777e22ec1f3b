//! Embeds the static site (`www/`: the contribute page, the embed script and the built worker
//! core under `www/pkg/`) into the `tessera` binary, so an installed binary serves everything from
//! any directory. Writes `$OUT_DIR/site_files.rs`: one `(path, bytes)` entry per file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

/// Files the worker page cannot run without: the core that `make wasm` builds.
const REQUIRED: [&str; 2] = ["pkg/tessera_worker.js", "pkg/tessera_worker_bg.wasm"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let www = manifest.join("../www");
    println!("cargo:rerun-if-changed={}", www.display());
    for required in REQUIRED {
        if !www.join(required).is_file() {
            panic!(
                "\n\nwww/{required} is missing: the scheduler embeds the built worker core.\n\
                 Build it first with `make wasm` (or `make build`), then build the scheduler.\n\n"
            );
        }
    }
    let mut files = Vec::new();
    collect(&www, &www, &mut files);
    files.sort();
    let mut source = String::from("/// The site's files, embedded at build time: (URL path, bytes).\n");
    source.push_str("pub static SITE_FILES: &[(&str, &[u8])] = &[\n");
    for (url_path, file) in &files {
        let _ = writeln!(source, "    ({url_path:?}, include_bytes!({:?})),", file.display().to_string());
    }
    source.push_str("];\n");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("site_files.rs");
    fs::write(&out, source).unwrap_or_else(|error| panic!("writing {}: {error}", out.display()));
}

/// Every regular file under `dir`, as (`/relative/path`, absolute path). Hidden files are left out.
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()));
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, files);
        } else if path.is_file() {
            let relative = path.strip_prefix(root).expect("a file under the root");
            let url_path = format!("/{}", relative.to_string_lossy().replace('\\', "/"));
            let absolute = fs::canonicalize(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            files.push((url_path, absolute));
        }
    }
}
