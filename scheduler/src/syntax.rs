//! Deploy-time syntax check of Python sources with the local `python3`.
//!
//! A job whose program cannot even be compiled would otherwise be handed to workers, fail in
//! every sandbox and only fail once a second worker confirms it. Compiling the program and the
//! bundle's `.py` files here refuses it at deploy with the file, line and error instead.
//!
//! Workers run Pyodide's Python 3.12; the local interpreter may be older (Debian 12 has 3.11).
//! When it is, an error on a line using syntax that 3.12 accepts and 3.11 does not (PEP 701
//! f-strings, PEP 695 type parameters) is not refused: the workers' second-opinion rule still
//! catches a real error. Without `python3` on PATH the check is skipped (logged once).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The interpreter that compiles the sources.
const PYTHON: &str = "python3";

/// Longest the check may take before it is skipped.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Compiles each `[name, source]` pair read as JSON from stdin; prints the version and the first
/// error as JSON.
const SCRIPT: &str = r#"
import json, sys
files = json.load(sys.stdin)
out = {"version": list(sys.version_info[:2])}
for name, source in files:
    try:
        compile(source, name, "exec", dont_inherit=True)
    except SyntaxError as e:
        out["error"] = {"file": name, "line": e.lineno, "kind": type(e).__name__, "msg": e.msg, "text": e.text}
        break
    except ValueError as e:
        out["error"] = {"file": name, "line": None, "kind": "ValueError", "msg": str(e), "text": None}
        break
print(json.dumps(out))
"#;

/// A Python source to check.
#[derive(Clone, Debug)]
pub struct PythonFile {
    /// The name the error names (the program name, or the path inside the bundle).
    pub name: String,
    pub source: String,
    /// Whether it is the job's program (field `program`) or a bundle file (field `bundle`).
    pub is_program: bool,
}

/// A syntax error that refuses the deploy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxProblem {
    /// `program` or `bundle`.
    pub field: &'static str,
    /// File, line and the error, e.g. "broken.py, line 3: SyntaxError: expected ':'".
    pub message: String,
}

#[derive(Deserialize)]
struct Answer {
    version: (u32, u32),
    error: Option<Reported>,
}

#[derive(Deserialize)]
struct Reported {
    file: String,
    line: Option<u64>,
    kind: String,
    msg: String,
    text: Option<String>,
}

static MISSING_LOGGED: AtomicBool = AtomicBool::new(false);

/// Compiles `files` with the local `python3` (blocking; run it on the blocking pool). `None` when
/// they compile, when python3 is missing or too slow, or when the error may be newer syntax.
pub fn check_python(files: &[PythonFile]) -> Option<SyntaxProblem> {
    let payload: Vec<(&str, &str)> = files.iter().map(|f| (f.name.as_str(), f.source.as_str())).collect();
    let input = serde_json::to_vec(&payload).ok()?;
    let mut child = match Command::new(PYTHON)
        .args(["-I", "-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => {
            if !MISSING_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!(%error, "no usable python3 on PATH: Python programs are not syntax-checked at deploy");
            }
            return None;
        }
    };
    let mut stdin = child.stdin.take()?;
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < CHECK_TIMEOUT => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!("python3 took too long to compile a program; deploying it unchecked");
                return None;
            }
        }
    }
    let _ = writer.join();
    let mut output = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut output).ok()?;
    let answer: Answer = serde_json::from_str(output.trim()).ok()?;
    let reported = answer.error?;
    let file = files.iter().find(|f| f.name == reported.file)?;
    let line_text = reported
        .line
        .and_then(|line| file.source.lines().nth(line.saturating_sub(1) as usize))
        .map(str::to_string)
        .or(reported.text.clone())
        .unwrap_or_default();
    if answer.version < (3, 12) && uses_newer_syntax(&line_text) {
        tracing::info!(file = %reported.file, "python3 {}.{} cannot judge this line; leaving it to the workers",
            answer.version.0, answer.version.1);
        return None;
    }
    let place = match reported.line {
        Some(line) => format!("{}, line {line}", reported.file),
        None => reported.file.clone(),
    };
    let mut message = format!("{place}: {}: {}", reported.kind, reported.msg);
    let shown = line_text.trim_end();
    if !shown.trim().is_empty() {
        message.push_str(&format!("\n    {}", shown.trim_start()));
    }
    Some(SyntaxProblem { field: if file.is_program { "program" } else { "bundle" }, message })
}

/// Whether a line uses syntax Python 3.12 accepts that older versions may reject: an f-string
/// (PEP 701 relaxed their grammar) or a PEP 695 type parameter list or `type` alias.
pub fn uses_newer_syntax(line: &str) -> bool {
    let trimmed = line.trim_start();
    let identifier = |text: &str| text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').count();
    if let Some(rest) = trimmed.strip_prefix("type ") {
        let rest = rest.trim_start();
        let name = identifier(rest);
        if name > 0 && matches!(rest[name..].trim_start().chars().next(), Some('=') | Some('[')) {
            return true;
        }
    }
    for keyword in ["def ", "class ", "async def "] {
        if let Some(rest) = trimmed.strip_prefix(keyword) {
            let rest = rest.trim_start();
            let name = identifier(rest);
            if name > 0 && rest[name..].trim_start().starts_with('[') {
                return true;
            }
        }
    }
    has_f_string(line)
}

/// Whether `line` contains a string literal with an `f` prefix (`f"`, `rf'`, `F"""`, …).
fn has_f_string(line: &str) -> bool {
    let chars: Vec<char> = line.chars().collect();
    for (position, &c) in chars.iter().enumerate() {
        if c != '"' && c != '\'' {
            continue;
        }
        let mut start = position;
        while start > 0 && position - start < 2 && "rRfFbBuU".contains(chars[start - 1]) {
            start -= 1;
        }
        let prefix = &chars[start..position];
        let standalone = start == 0 || !(chars[start - 1].is_alphanumeric() || chars[start - 1] == '_');
        if standalone && prefix.iter().any(|c| *c == 'f' || *c == 'F') {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(source: &str) -> Vec<PythonFile> {
        vec![PythonFile { name: "broken.py".into(), source: source.into(), is_program: true }]
    }

    #[test]
    fn recognises_newer_syntax() {
        assert!(uses_newer_syntax("print(f\"{x!r:>{width}}\")"));
        assert!(uses_newer_syntax("    s = rf'{a}'"));
        assert!(uses_newer_syntax("type Point = tuple[float, float]"));
        assert!(uses_newer_syntax("def first[T](xs: list[T]) -> T:"));
        assert!(uses_newer_syntax("class Box[T]:"));
        assert!(!uses_newer_syntax("def handler(x)"));
        assert!(!uses_newer_syntax("elif'x' == y"));
        assert!(!uses_newer_syntax("type = 3 +"));
    }

    #[test]
    fn refuses_a_syntax_error_with_file_and_line() {
        if Command::new(PYTHON).arg("--version").output().is_err() {
            eprintln!("python3 is not installed; skipping");
            return;
        }
        let problem = check_python(&program("import dcp\n\ndef handler(x)\n    return x\n")).expect("refused");
        assert_eq!(problem.field, "program");
        assert!(problem.message.starts_with("broken.py, line 3: SyntaxError: "), "{}", problem.message);
        assert!(problem.message.contains("def handler(x)"), "{}", problem.message);
        let bundle = vec![
            PythonFile { name: "main.py".into(), source: "import helper\n".into(), is_program: true },
            PythonFile { name: "pkg/helper.py".into(), source: "def f():\nreturn 1\n".into(), is_program: false },
        ];
        let problem = check_python(&bundle).expect("refused");
        assert_eq!(problem.field, "bundle");
        assert!(problem.message.contains("pkg/helper.py, line 2: IndentationError"), "{}", problem.message);
        assert_eq!(check_python(&program("import dcp\ndcp.set_slice_handler(lambda x: x)\n")), None);
        // Valid in 3.12 (PEP 701), an error in 3.11: never refused.
        assert_eq!(check_python(&program("x = 1\nprint(f\"{\"nested\"}\")\n")), None);
    }
}
