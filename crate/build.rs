//! Embeds the sandbox script (`pyodide-loader/sandbox-worker.js`) without its comments and
//! indentation: every worker downloads it inside the core, so they would cost every volunteer
//! bytes. Lines inside template literals (the Python source the script carries) are kept as they
//! are.

use std::{env, fs, path::Path};

const SCRIPT: &str = "../pyodide-loader/sandbox-worker.js";

fn main() {
    println!("cargo:rerun-if-changed={SCRIPT}");
    println!("cargo:rerun-if-changed=../build-support/js_without_comments.rs");
    let source = fs::read_to_string(SCRIPT).unwrap_or_else(|error| panic!("reading {SCRIPT}: {error}"));
    let out_dir = env::var("OUT_DIR").unwrap_or_else(|error| panic!("OUT_DIR: {error}"));
    fs::write(
        Path::new(&out_dir).join("sandbox-worker.js"),
        js_without_comments(&source).unwrap_or_else(|error| panic!("{SCRIPT}: {error}")),
    )
    .unwrap_or_else(|error| panic!("writing the sandbox script: {error}"));
}

include!("../build-support/js_without_comments.rs");
