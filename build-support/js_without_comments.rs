// Shared by the build scripts of the worker core (`crate/build.rs`, for the sandbox script it
// embeds) and the scheduler (`scheduler/build.rs`, for the site's JavaScript): both ship
// JavaScript to every volunteer's browser, where its comments would only cost bytes. Included
// with `include!`, so it has no crate of its own.

/// `source` without its whole-line comments (`// …`, and `/* … */` blocks that start a line:
/// code after a block's `*/` on the same line is kept), its blank lines and its lines' leading
/// indentation, outside template literals (whose lines, such as the Python source the sandbox
/// script carries, are kept as they are). A comment after code on the same line stays.
pub fn js_without_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut in_template = false;
    let mut in_block_comment = false;
    for line in source.lines() {
        if in_template {
            out.push_str(line);
            out.push('\n');
            if line.matches('`').count() % 2 == 1 {
                in_template = false;
            }
            continue;
        }
        let mut code = line.trim_start();
        if in_block_comment {
            match code.find("*/") {
                Some(end) => {
                    in_block_comment = false;
                    code = code[end + 2..].trim_start();
                }
                None => continue,
            }
        }
        while code.starts_with("/*") {
            match code.find("*/") {
                Some(end) => code = code[end + 2..].trim_start(),
                None => {
                    in_block_comment = true;
                    code = "";
                }
            }
        }
        if code.is_empty() || code.starts_with("//") {
            continue;
        }
        out.push_str(code);
        out.push('\n');
        if code.matches('`').count() % 2 == 1 {
            in_template = true;
        }
    }
    out
}
