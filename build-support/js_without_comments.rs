// Used by the scheduler's build script (`scheduler/build.rs`) for the site's JavaScript and CSS,
// the sandbox host page and the sandbox script written into it: all of it goes to every
// volunteer's browser, where comments would only cost bytes. Included with `include!`, so the
// build script needs no crate for it.

/// `source` without its whole-line comments (`// …`, and `/* … */` blocks that start a line:
/// code after a block's `*/` on the same line is kept), its blank lines and its lines' leading
/// indentation, outside template literals (whose lines, such as the Python source the sandbox
/// script carries, are kept as they are). A comment after code on the same line stays.
///
/// Lines are judged one by one, not parsed: a line that opens a template literal after a quote
/// or a `//` (where the backtick may sit in a string or a comment) is refused with its line
/// number rather than guessed at, since a wrong guess would strip the template's indentation.
pub fn js_without_comments(source: &str) -> Result<String, String> {
    let mut out = String::with_capacity(source.len());
    let mut in_template = false;
    let mut in_block_comment = false;
    // Backticks that delimit a template (not escaped ones inside it).
    let delimiters = |line: &str| line.matches('`').count() - line.matches("\\`").count();
    for (number, line) in source.lines().enumerate() {
        if in_template {
            out.push_str(line);
            out.push('\n');
            if delimiters(line) % 2 == 1 {
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
        if delimiters(code) % 2 == 1 {
            let before = &code[..code.find('`').unwrap_or(code.len())];
            let odd = |quote: char| before.matches(quote).count() % 2 == 1;
            if odd('\'') || odd('"') || before.contains("//") {
                return Err(format!(
                    "line {}: a template literal opens after a quote or `//`, so whether it is one is \
                     unclear to the comment stripper (build-support/js_without_comments.rs): move the \
                     backtick to a line of its own, or the comment above the code",
                    number + 1
                ));
            }
            in_template = true;
        }
    }
    Ok(out)
}
