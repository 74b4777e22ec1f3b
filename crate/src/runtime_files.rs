//! Which files a sandbox may ask the core for. Sandboxes have no network; the core fetches the
//! Pyodide files they need (bytes in, `web::assets`). A sandbox must not be able to make the core
//! fetch an address of its choosing, so a request names a plain file directly inside the
//! Pyodide folder, or it is refused.

/// The file name `url` names inside `base` (the Pyodide folder, ending in `/`), if it is a plain
/// file directly inside it: no sub-folder, no query, no fragment, no dot file.
pub fn runtime_file_name<'a>(base: &str, url: &'a str) -> Result<&'a str, String> {
    let name = url.strip_prefix(base).ok_or_else(|| format!("{url} is not a Pyodide file (outside {base})"))?;
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b'+'));
    if plain {
        Ok(name)
    } else {
        Err(format!("{url} is not a Pyodide file name"))
    }
}

#[cfg(test)]
mod tests {
    use super::runtime_file_name;

    const BASE: &str = "http://127.0.0.1:8080/pyodide/";

    #[test]
    fn files_of_the_pyodide_folder_are_allowed() {
        for name in ["pyodide.asm.wasm", "pyodide-lock.json", "numpy-2.0.2-cp312-cp312-pyodide_2024_0_wasm32.whl"] {
            assert_eq!(runtime_file_name(BASE, &format!("{BASE}{name}")), Ok(name));
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for url in [
            "http://127.0.0.1:9/pyodide/pyodide.asm.wasm",
            "http://127.0.0.1:8080/v1/jobs",
            "http://127.0.0.1:8080/pyodide/../v1/jobs",
            "http://127.0.0.1:8080/pyodide/a/b.whl",
            "http://127.0.0.1:8080/pyodide/pyodide.mjs?secret=1",
            "http://127.0.0.1:8080/pyodide/pyodide.mjs#x",
            "http://127.0.0.1:8080/pyodide/",
            "http://127.0.0.1:8080/pyodide/.hidden",
            "http://127.0.0.1:8080/pyodide/%2e%2e",
        ] {
            assert!(runtime_file_name(BASE, url).is_err(), "{url} was allowed");
        }
    }
}
