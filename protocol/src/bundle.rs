//! Job bundles: a tar.gz of files unpacked into a sandbox's in-memory filesystem.
//!
//! The same validation runs at deploy (the scheduler refuses a bad bundle with the entry named)
//! and in the worker core before anything reaches a sandbox, so a bundle that slipped past one
//! check is still refused by the other.

use std::io::Read;
use std::path::{Component, Path};

use sha2::{Digest, Sha256};

/// Bounds on what a bundle may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BundleLimits {
    /// Size of the tar.gz itself.
    pub max_compressed_bytes: usize,
    /// Sum of all unpacked file sizes.
    pub max_unpacked_bytes: u64,
    /// Number of entries.
    pub max_entries: usize,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits {
            max_compressed_bytes: 64 * 1024 * 1024,
            max_unpacked_bytes: 256 * 1024 * 1024,
            max_entries: 10_000,
        }
    }
}

/// One validated entry: a relative path made only of normal components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BundleEntry {
    Directory { path: String },
    File { path: String, bytes: Vec<u8> },
}

impl BundleEntry {
    /// The entry's relative path, with `/` separators.
    pub fn path(&self) -> &str {
        match self {
            BundleEntry::Directory { path } | BundleEntry::File { path, .. } => path,
        }
    }
}

/// Why a bundle was refused. Every variant names the entry at fault where there is one.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("bundle is {size} bytes, over the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("bundle has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("bundle entry `{entry}` is an absolute path")]
    AbsolutePath { entry: String },
    #[error("bundle entry `{entry}` leaves the bundle root (`..`)")]
    ParentDirectory { entry: String },
    #[error("bundle entry `{entry}` is a {kind}; only regular files and directories are allowed")]
    ForbiddenKind { entry: String, kind: &'static str },
    #[error("bundle entry `{entry}` has a path that is not UTF-8 or is empty")]
    BadPath { entry: String },
    #[error("bundle is not a readable tar.gz: {reason}")]
    Unreadable { reason: String },
}

/// The content address of a bundle: lowercase hex sha256 of its bytes.
pub fn content_address(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks a tar.gz against `limits` and returns its entries, or the first problem found.
pub fn unpack(tar_gz: &[u8], limits: &BundleLimits) -> Result<Vec<BundleEntry>, BundleError> {
    if tar_gz.len() > limits.max_compressed_bytes {
        return Err(BundleError::TooLarge { size: tar_gz.len() as u64, limit: limits.max_compressed_bytes as u64 });
    }
    let unreadable = |error: std::io::Error| BundleError::Unreadable { reason: error.to_string() };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tar_gz));
    let mut entries = Vec::new();
    let mut unpacked: u64 = 0;
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        if entries.len() >= limits.max_entries {
            return Err(BundleError::TooManyEntries { limit: limits.max_entries });
        }
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = normalise(&raw_path)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            if !path.is_empty() {
                entries.push(BundleEntry::Directory { path });
            }
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(BundleError::ForbiddenKind { entry: raw_path, kind: kind_name(kind) });
        }
        if path.is_empty() {
            return Err(BundleError::BadPath { entry: raw_path });
        }
        let size = entry.header().size().map_err(unreadable)?;
        unpacked = unpacked.saturating_add(size);
        if unpacked > limits.max_unpacked_bytes {
            return Err(BundleError::TooLarge { size: unpacked, limit: limits.max_unpacked_bytes });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut bytes).map_err(unreadable)?;
        entries.push(BundleEntry::File { path, bytes });
    }
    Ok(entries)
}

/// Turns an archive path into a clean relative path, refusing anything that could escape the root.
fn normalise(raw: &str) -> Result<String, BundleError> {
    if raw.starts_with('/') || raw.starts_with('\\') || Path::new(raw).is_absolute() {
        return Err(BundleError::AbsolutePath { entry: raw.to_string() });
    }
    let mut parts = Vec::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(part) => match part.to_str() {
                Some(part) => parts.push(part),
                None => return Err(BundleError::BadPath { entry: raw.to_string() }),
            },
            Component::CurDir => {}
            Component::ParentDir => return Err(BundleError::ParentDirectory { entry: raw.to_string() }),
            Component::RootDir | Component::Prefix(_) => {
                return Err(BundleError::AbsolutePath { entry: raw.to_string() })
            }
        }
    }
    Ok(parts.join("/"))
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "fifo",
        _ => "special entry",
    }
}

/// Builds tar.gz bytes from entries; used by `tessera deploy --bundle DIR` and by tests.
pub fn pack(entries: &[BundleEntry]) -> Result<Vec<u8>, BundleError> {
    let unwritable = |error: std::io::Error| BundleError::Unreadable { reason: error.to_string() };
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        match entry {
            BundleEntry::Directory { path } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, path, std::io::empty()).map_err(unwritable)?;
            }
            BundleEntry::File { path, bytes } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(bytes.len() as u64);
                builder.append_data(&mut header, path, bytes.as_slice()).map_err(unwritable)?;
            }
        }
    }
    builder.into_inner().and_then(|encoder| encoder.finish()).map_err(unwritable)
}

/// Archives that `tar::Builder` refuses to make (escaping paths, links, devices), for the tests
/// of every crate that must refuse them. Enabled by the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    pub use tar::EntryType;

    /// A tar.gz holding one empty entry with a raw header: `path` and `kind` exactly as given.
    pub fn raw_archive(path: &str, kind: EntryType) -> Vec<u8> {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_size(0);
        header.set_mode(0o644);
        if kind == EntryType::Symlink || kind == EntryType::Link {
            let _ = header.set_link_name("/etc");
        }
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend_from_slice(&[0u8; 1024]);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = std::io::Write::write_all(&mut encoder, &tar);
        encoder.finish().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{raw_archive, EntryType};
    use super::*;

    fn file(path: &str, text: &str) -> BundleEntry {
        BundleEntry::File { path: path.into(), bytes: text.as_bytes().to_vec() }
    }

    #[test]
    fn packs_and_unpacks_files_and_directories() {
        let entries = vec![
            BundleEntry::Directory { path: "pkg".into() },
            file("pkg/__init__.py", ""),
            file("pkg/helpers.py", "def f(): return 1\n"),
        ];
        let bytes = pack(&entries).unwrap();
        assert_eq!(unpack(&bytes, &BundleLimits::default()).unwrap(), entries);
        assert_eq!(content_address(&bytes).len(), 64);
    }

    #[test]
    fn refuses_escaping_paths() {
        let bytes = raw_archive("../evil.py", EntryType::Regular);
        assert_eq!(
            unpack(&bytes, &BundleLimits::default()),
            Err(BundleError::ParentDirectory { entry: "../evil.py".into() })
        );
        let bytes = raw_archive("/etc/passwd", EntryType::Regular);
        assert_eq!(
            unpack(&bytes, &BundleLimits::default()),
            Err(BundleError::AbsolutePath { entry: "/etc/passwd".into() })
        );
    }

    #[test]
    fn refuses_links_and_devices() {
        let bytes = raw_archive("link", EntryType::Symlink);
        let err = unpack(&bytes, &BundleLimits::default()).unwrap_err();
        assert_eq!(err, BundleError::ForbiddenKind { entry: "link".into(), kind: "symbolic link" });
        assert!(err.to_string().contains("`link`"));
        let bytes = raw_archive("dev", EntryType::Char);
        assert!(matches!(unpack(&bytes, &BundleLimits::default()), Err(BundleError::ForbiddenKind { .. })));
    }

    #[test]
    fn refuses_oversized_bundles() {
        let bytes = pack(&[file("big.txt", &"x".repeat(10_000))]).unwrap();
        let limits = BundleLimits { max_unpacked_bytes: 1_000, ..BundleLimits::default() };
        assert!(matches!(unpack(&bytes, &limits), Err(BundleError::TooLarge { .. })));
        let limits = BundleLimits { max_compressed_bytes: 10, ..BundleLimits::default() };
        assert!(matches!(unpack(&bytes, &limits), Err(BundleError::TooLarge { .. })));
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(unpack(b"not a tarball", &BundleLimits::default()), Err(BundleError::Unreadable { .. })));
    }
}
