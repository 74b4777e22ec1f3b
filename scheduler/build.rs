//! Embeds the static site (`www/`: the contribute page, the embed script and the built worker
//! core under `www/pkg/`) into the `tessera` binary, so an installed binary serves everything from
//! any directory. Writes `$OUT_DIR/site_files.rs`: one `EmbeddedFile` (`site.rs`) per file, its
//! `brotli` being the file compressed once here at brotli's best quality (the worker core is
//! 17 % smaller than the scheduler's on-the-fly brotli makes it), or `None` where that gains
//! nothing. JavaScript and CSS are embedded without their comments and indentation
//! (`build-support/js_without_comments.rs`): every volunteer downloads them. So is the sandbox
//! host page (`src/sandbox_host.rs`), with the sandbox worker's script written into it, compressed
//! here too.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

/// Files the worker page cannot run without: the core that `make wasm` builds.
const REQUIRED: [&str; 2] = ["pkg/tessera_worker.js", "pkg/tessera_worker_bg.wasm"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let www = manifest.join("../www");
    println!("cargo:rerun-if-changed={}", www.display());
    println!("cargo:rerun-if-changed={}", manifest.join("../build-support/js_without_comments.rs").display());
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
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut source = String::from("/// The site's files, embedded at build time.\n");
    source.push_str("static SITE_FILES: &[EmbeddedFile] = &[\n");
    for (index, (url_path, file)) in files.iter().enumerate() {
        let mut bytes = fs::read(file).unwrap_or_else(|error| panic!("reading {}: {error}", file.display()));
        let mut embedded = file.clone();
        // CSS too: its comments are `/* … */` blocks, and it has no line that starts with `//`.
        if url_path.ends_with(".js") || url_path.ends_with(".css") {
            let source = String::from_utf8(bytes).unwrap_or_else(|_| panic!("{} is not UTF-8", file.display()));
            bytes =
                js_without_comments(&source).unwrap_or_else(|error| panic!("{}: {error}", file.display())).into_bytes();
            embedded = out_dir.join(format!("site-{index}.text"));
            fs::write(&embedded, &bytes).unwrap_or_else(|error| panic!("writing {}: {error}", embedded.display()));
        }
        let compressed = brotli(&bytes);
        let brotli = if compressed.len() + compressed.len() / 20 < bytes.len() {
            let path = out_dir.join(format!("site-{index}.br"));
            fs::write(&path, compressed).unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
            format!("Some(include_bytes!({:?}))", path.display().to_string())
        } else {
            "None".to_string()
        };
        let _ = writeln!(
            source,
            "    EmbeddedFile {{ path: {url_path:?}, bytes: include_bytes!({:?}), brotli: {brotli} }},",
            embedded.display().to_string()
        );
    }
    source.push_str("];\n");
    let out = out_dir.join("site_files.rs");
    fs::write(&out, source).unwrap_or_else(|error| panic!("writing {}: {error}", out.display()));
    embed_sandbox_page(
        &manifest.join("../pyodide-loader/sandbox.html"),
        &manifest.join("../pyodide-loader/sandbox-worker.js"),
        &out_dir,
    );
}

/// The sandbox host page (`src/sandbox_host.rs`) without its script's comments and indentation,
/// with the sandbox worker's script (`pyodide-loader/sandbox-worker.js`, also without comments)
/// written into it as a string, and compressed once at brotli's best quality: every sandbox frame
/// of every volunteer loads it.
fn embed_sandbox_page(page: &Path, worker_script: &Path, out_dir: &Path) {
    println!("cargo:rerun-if-changed={}", page.display());
    println!("cargo:rerun-if-changed={}", worker_script.display());
    let read = |path: &Path| {
        let source = fs::read_to_string(path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
        js_without_comments(&source).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    };
    let (page_text, script) = (read(page), read(worker_script));
    if page_text.matches(WORKER_SCRIPT_PLACEHOLDER).count() != 1 {
        panic!("{}: it must hold {WORKER_SCRIPT_PLACEHOLDER} exactly once", page.display());
    }
    let served = page_text.replace(WORKER_SCRIPT_PLACEHOLDER, &js_string_literal(&script));
    fs::write(out_dir.join("sandbox.html"), &served).unwrap_or_else(|error| panic!("writing sandbox.html: {error}"));
    fs::write(out_dir.join("sandbox.html.br"), brotli(served.as_bytes()))
        .unwrap_or_else(|error| panic!("writing sandbox.html.br: {error}"));
}

/// Where the sandbox host page's script takes the worker's script text.
const WORKER_SCRIPT_PLACEHOLDER: &str = "'@SANDBOX_WORKER_SCRIPT@'";

/// `text` as a double-quoted JavaScript string that can sit inside an HTML `<script>` element:
/// every `<` escaped, so no `</script>` or `<!--` in the text can end or change the element.
fn js_string_literal(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + text.len() / 8);
    literal.push('"');
    for character in text.chars() {
        match character {
            '"' => literal.push_str("\\\""),
            '\\' => literal.push_str("\\\\"),
            '\n' => literal.push_str("\\n"),
            '<' => literal.push_str("\\x3c"),
            // Line separators end a line in older JavaScript; controls are escaped to be seen.
            escaped if escaped.is_control() || escaped == '\u{2028}' || escaped == '\u{2029}' => {
                let _ = write!(literal, "\\u{:04x}", u32::from(escaped));
            }
            other => literal.push(other),
        }
    }
    literal.push('"');
    literal
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

/// `bytes` compressed with brotli at its best quality (11) and a 4 MiB window (22): slow, but
/// done once per build rather than for every visitor.
fn brotli(bytes: &[u8]) -> Vec<u8> {
    let mut compressed = Vec::new();
    {
        let mut writer = brotli::CompressorWriter::new(&mut compressed, 64 * 1024, 11, 22);
        writer.write_all(bytes).unwrap_or_else(|error| panic!("brotli: {error}"));
    }
    compressed
}

include!("../build-support/js_without_comments.rs");
