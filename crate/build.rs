//! Embeds the sandbox script (`pyodide-loader/sandbox-worker.js`) without its comments: every
//! worker downloads it inside the core, so the comments would cost every volunteer bytes. Lines
//! inside template literals (the Python source the script carries) are kept as they are.

use std::{env, fs, path::Path};

const SCRIPT: &str = "../pyodide-loader/sandbox-worker.js";

fn main() {
    println!("cargo:rerun-if-changed={SCRIPT}");
    let source = fs::read_to_string(SCRIPT).unwrap_or_else(|error| panic!("reading {SCRIPT}: {error}"));
    let out_dir = env::var("OUT_DIR").unwrap_or_else(|error| panic!("OUT_DIR: {error}"));
    fs::write(Path::new(&out_dir).join("sandbox-worker.js"), without_comments(&source))
        .unwrap_or_else(|error| panic!("writing the sandbox script: {error}"));
}

/// `source` without its whole-line comments (`// …`, and `/** … */` blocks that start a line) and
/// blank lines, outside template literals.
fn without_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut in_template = false;
    let mut in_block_comment = false;
    for line in source.lines() {
        let trimmed = line.trim_start();
        if in_template {
            out.push_str(line);
            out.push('\n');
        } else if in_block_comment {
            in_block_comment = !trimmed.contains("*/");
            continue;
        } else if trimmed.starts_with("//") || trimmed.is_empty() {
            continue;
        } else if trimmed.starts_with("/*") {
            in_block_comment = !trimmed.contains("*/");
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
        if line.matches('`').count() % 2 == 1 {
            in_template = !in_template;
        }
    }
    out
}
