//! Which Pyodide packages the scheduler can serve, and which ones a Python job needs.
//!
//! The index is read from the official `pyodide-lock.json` in the vendored distribution; a package
//! counts as available only when its file is actually present (the vendoring step verified it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Deserialize)]
struct Lock {
    packages: BTreeMap<String, LockPackage>,
}

#[derive(Deserialize)]
struct LockPackage {
    file_name: String,
    #[serde(default)]
    imports: Vec<String>,
    #[serde(default)]
    package_type: String,
}

/// Available packages and the import names each provides.
#[derive(Debug, Default)]
pub struct PackageIndex {
    /// Package name → import names.
    packages: BTreeMap<String, Vec<String>>,
    /// Import name → package name.
    by_import: BTreeMap<String, String>,
}

impl PackageIndex {
    /// Reads `pyodide-lock.json` from the distribution folder; an absent distribution gives an
    /// empty index (map-basic jobs still work; Python jobs that need packages are refused).
    pub fn load(distribution: &Path) -> PackageIndex {
        let Ok(text) = std::fs::read_to_string(distribution.join("pyodide-lock.json")) else {
            tracing::warn!(
                path = %distribution.display(),
                "no Pyodide distribution here: Python jobs cannot run (scripts/bootstrap vendors it; --pyodide DIR points elsewhere)"
            );
            return PackageIndex::default();
        };
        let Ok(lock) = serde_json::from_str::<Lock>(&text) else {
            tracing::error!(path = %distribution.display(), "pyodide-lock.json is unreadable");
            return PackageIndex::default();
        };
        let mut index = PackageIndex::default();
        for (name, package) in lock.packages {
            if package.package_type == "cpython_module" || !distribution.join(&package.file_name).is_file() {
                continue;
            }
            for import in &package.imports {
                index.by_import.insert(import.clone(), name.clone());
            }
            index.packages.insert(name, package.imports);
        }
        index
    }

    /// Names of every package that can be loaded.
    pub fn available(&self) -> Vec<String> {
        self.packages.keys().cloned().collect()
    }

    /// The declared packages (each must exist) plus those whose imports appear in the program.
    pub fn resolve(&self, declared: &[String], program: &str) -> Result<Vec<String>> {
        let mut needed = BTreeSet::new();
        for name in declared {
            let key = name.trim().to_ascii_lowercase();
            if !self.packages.contains_key(&key) {
                let available = self.available();
                let list = if available.is_empty() {
                    "none (the Pyodide distribution is not installed; run scripts/bootstrap)".to_string()
                } else {
                    available.join(", ")
                };
                return Err(Error::invalid("packages", format!("unknown package `{name}`; available: {list}")));
            }
            needed.insert(key);
        }
        for module in imported_modules(program) {
            if let Some(package) = self.by_import.get(&module) {
                needed.insert(package.clone());
            }
        }
        Ok(needed.into_iter().collect())
    }
}

/// Top-level module names of `import` and `from … import` statements (a line-based scan, the
/// same heuristic Pyodide's `find_imports` approximates; unknown names are simply ignored).
pub fn imported_modules(program: &str) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    for line in program.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("import ") {
            for part in rest.split(',') {
                if let Some(name) = part.split_whitespace().next() {
                    modules.insert(top_level(name));
                }
            }
        } else if let Some(rest) = line.strip_prefix("from ") {
            if let Some(name) = rest.split_whitespace().next() {
                if !name.starts_with('.') {
                    modules.insert(top_level(name));
                }
            }
        }
    }
    modules
}

fn top_level(dotted: &str) -> String {
    dotted.split('.').next().unwrap_or(dotted).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> PackageIndex {
        let mut index = PackageIndex::default();
        for (name, imports) in [("numpy", vec!["numpy"]), ("scikit-learn", vec!["sklearn"]), ("pandas", vec!["pandas"])]
        {
            for import in &imports {
                index.by_import.insert(import.to_string(), name.to_string());
            }
            index.packages.insert(name.to_string(), imports.into_iter().map(String::from).collect());
        }
        index
    }

    #[test]
    fn finds_imports() {
        let modules = imported_modules(
            "import os, numpy as np\nfrom sklearn.linear_model import X\n  import pandas\nfrom . import local\n",
        );
        assert!(modules.contains("numpy") && modules.contains("sklearn") && modules.contains("pandas"));
        assert!(!modules.contains("."));
    }

    #[test]
    fn resolves_declared_and_detected_packages() {
        let packages =
            index().resolve(&["pandas".into()], "import numpy\nfrom sklearn import svm\nimport mymodule\n").unwrap();
        assert_eq!(packages, vec!["numpy", "pandas", "scikit-learn"]);
    }

    #[test]
    fn unknown_package_lists_what_is_available() {
        let err = index().resolve(&["tensorflow".into()], "").unwrap_err().to_string();
        assert!(err.contains("tensorflow") && err.contains("numpy"), "{err}");
    }
}
