//! Job bundles: a tar.gz of files unpacked into a sandbox's in-memory filesystem.
//!
//! The same validation runs at deploy (the scheduler refuses a bad bundle with the entry named)
//! and in the worker core before anything reaches a sandbox, so a bundle that slipped past one
//! check is still refused by the other.

use std::cell::Cell;
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
    /// The decompressed stream went past [`stream_cap`]: a gzip bomb, or a tar whose headers,
    /// long names or PAX records claim more than the bundle may hold. Refused while reading.
    #[error("bundle decompresses to more than {limit} bytes (tar headers included); refused while reading")]
    Inflated { limit: u64 },
    #[error("bundle is not a readable tar.gz: {reason}")]
    Unreadable { reason: String },
}

/// The content address of a bundle: lowercase hex sha256 of its bytes.
pub fn content_address(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks a tar.gz against `limits` and returns its entries, or the first problem found.
///
/// Hostile input costs little: the decompressed stream is capped while it is read (see
/// [`stream_cap`]), so a gzip bomb or a tar whose GNU long-name or PAX record claims gigabytes is
/// refused after at most the cap has been inflated, and no allocation is ever sized from a header.
#[cfg(feature = "gzip")]
pub fn unpack(tar_gz: &[u8], limits: &BundleLimits) -> Result<Vec<BundleEntry>, BundleError> {
    check_compressed_size(tar_gz, limits)?;
    unpack_tar(flate2::read::GzDecoder::new(tar_gz), limits)
}

/// Refuses a tar.gz over [`BundleLimits::max_compressed_bytes`], before anything is inflated.
pub fn check_compressed_size(tar_gz: &[u8], limits: &BundleLimits) -> Result<(), BundleError> {
    if tar_gz.len() > limits.max_compressed_bytes {
        return Err(BundleError::TooLarge { size: tar_gz.len() as u64, limit: limits.max_compressed_bytes as u64 });
    }
    Ok(())
}

/// The tar inside a tar.gz, inflated up to one byte past [`stream_cap`] (so that
/// [`unpack_tar`] refuses a bomb as [`BundleError::Inflated`]): what the worker core gets from
/// the browser's `DecompressionStream`, done in Rust for tests and native callers.
#[cfg(feature = "gzip")]
pub fn inflate(tar_gz: &[u8], limits: &BundleLimits) -> Result<Vec<u8>, BundleError> {
    check_compressed_size(tar_gz, limits)?;
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(tar_gz)
        .take(stream_cap(limits).saturating_add(1))
        .read_to_end(&mut tar)
        .map_err(|error| BundleError::Unreadable { reason: error.to_string() })?;
    Ok(tar)
}

/// Most bytes of decompressed tar stream read for a bundle: the unpacked limit plus room for
/// headers, block padding and modest long-name/PAX records of every allowed entry. The `tar`
/// crate buffers long names and PAX records whole, so capping the stream it reads from is what
/// bounds that buffering (and the inflation of a gzip bomb).
pub fn stream_cap(limits: &BundleLimits) -> u64 {
    const BASE_SLACK: u64 = 64 * 1024;
    const PER_ENTRY_SLACK: u64 = 3 * 1024;
    limits.max_unpacked_bytes.saturating_add(BASE_SLACK).saturating_add(PER_ENTRY_SLACK * limits.max_entries as u64)
}

/// A reader that fails once more than `remaining` bytes were asked of it, and says so in `tripped`
/// (the error itself is wrapped by `tar` and cannot be recognised reliably).
struct CappedReader<'a, R> {
    inner: R,
    remaining: u64,
    tripped: &'a Cell<bool>,
}

impl<R: Read> Read for CappedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            // One probe byte tells a stream that ends exactly at the cap from one that goes on.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.tripped.set(true);
                    Err(std::io::Error::other("bundle stream over its size cap"))
                }
            };
        }
        let most = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..most])?;
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// Checks a decompressed tar stream against `limits` and returns its entries, or the first
/// problem found. Reads at most [`stream_cap`] bytes (and one to tell that more follow).
pub fn unpack_tar(stream: impl Read, limits: &BundleLimits) -> Result<Vec<BundleEntry>, BundleError> {
    let cap = stream_cap(limits);
    let tripped = Cell::new(false);
    let capped = CappedReader { inner: stream, remaining: cap, tripped: &tripped };
    let unreadable = |error: std::io::Error| {
        if tripped.get() {
            BundleError::Inflated { limit: cap }
        } else {
            BundleError::Unreadable { reason: error.to_string() }
        }
    };
    let mut archive = tar::Archive::new(capped);
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
        // The header's size (or a PAX `size`) is a claim: it refuses early but sizes nothing.
        let claimed = entry.size();
        if unpacked.saturating_add(claimed) > limits.max_unpacked_bytes {
            return Err(BundleError::TooLarge {
                size: unpacked.saturating_add(claimed),
                limit: limits.max_unpacked_bytes,
            });
        }
        // Read at most one byte past what is left of the budget; the vector grows as data arrives.
        let budget = limits.max_unpacked_bytes - unpacked;
        let mut bytes = Vec::new();
        (&mut entry).take(budget.saturating_add(1)).read_to_end(&mut bytes).map_err(unreadable)?;
        unpacked = unpacked.saturating_add(bytes.len() as u64);
        if unpacked > limits.max_unpacked_bytes {
            return Err(BundleError::TooLarge { size: unpacked, limit: limits.max_unpacked_bytes });
        }
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
#[cfg(feature = "gzip")]
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
#[cfg(all(feature = "gzip", any(test, feature = "testing")))]
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

    /// A tar.gz whose first record is a GNU long name (`EntryType::GNULongName`) or a PAX record
    /// (`EntryType::XHeader`) claiming `len` bytes of `fill`: a bomb that inflates to `len` bytes
    /// from a few KiB per MiB. Streamed through the encoder, so making it costs no `len` of memory.
    pub fn metadata_bomb(kind: EntryType, len: u64, fill: u8) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        if let Some(gnu) = header.as_gnu_mut() {
            gnu.name[..13].copy_from_slice(b"././@LongLink");
        }
        header.set_entry_type(kind);
        header.set_size(len);
        header.set_mode(0o644);
        header.set_cksum();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = std::io::Write::write_all(&mut encoder, header.as_bytes());
        let mut left = len;
        if kind == EntryType::XHeader {
            let record = format!("{len} path=");
            let _ = std::io::Write::write_all(&mut encoder, record.as_bytes());
            left = left.saturating_sub(record.len() as u64);
        }
        let chunk = vec![fill; 1024 * 1024];
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            let _ = std::io::Write::write_all(&mut encoder, &chunk[..n]);
            left -= n as u64;
        }
        encoder.finish().unwrap_or_default()
    }
}

#[cfg(all(test, feature = "gzip"))]
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

    /// A tar header of `kind` claiming `size` bytes of data.
    fn header(kind: EntryType, size: u64) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_cksum();
        header.as_bytes().to_vec()
    }

    /// An endless decompressed tar stream: `prefix`, then `fill` forever; counts what was read.
    struct Endless {
        prefix: Vec<u8>,
        fill: u8,
        read: u64,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let at = self.read as usize;
            let n = if at < self.prefix.len() {
                let n = buf.len().min(self.prefix.len() - at);
                buf[..n].copy_from_slice(&self.prefix[at..at + n]);
                n
            } else {
                buf.fill(self.fill);
                buf.len()
            };
            self.read += n as u64;
            Ok(n)
        }
    }

    fn small() -> BundleLimits {
        BundleLimits { max_compressed_bytes: 1024 * 1024, max_unpacked_bytes: 256 * 1024, max_entries: 16 }
    }

    #[test]
    fn a_gzip_bomb_is_refused_while_inflating() {
        // A long-name record claiming 10 MiB of zeros: ~10 KiB compressed.
        let bomb = super::testing::metadata_bomb(EntryType::GNULongName, 10 * 1024 * 1024, 0);
        assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
        let err = unpack(&bomb, &small()).unwrap_err();
        assert_eq!(err, BundleError::Inflated { limit: stream_cap(&small()) });
        assert!(err.to_string().contains("decompresses to more than"), "{err}");
    }

    #[test]
    fn inflating_apart_refuses_what_unpack_refuses() {
        let bomb = super::testing::metadata_bomb(EntryType::GNULongName, 10 * 1024 * 1024, 0);
        let inflated = inflate(&bomb, &small()).unwrap();
        assert_eq!(inflated.len() as u64, stream_cap(&small()) + 1, "inflating stops one byte past the cap");
        assert_eq!(unpack_tar(&inflated[..], &small()), Err(BundleError::Inflated { limit: stream_cap(&small()) }));
        let bundle = pack(&[file("pkg/a.py", "A = 1\n"), file("b.txt", "b")]).unwrap();
        let entries = unpack_tar(&inflate(&bundle, &small()).unwrap()[..], &small()).unwrap();
        assert_eq!(entries, unpack(&bundle, &small()).unwrap());
        let tight = BundleLimits { max_compressed_bytes: bundle.len() - 1, ..small() };
        assert!(matches!(inflate(&bundle, &tight), Err(BundleError::TooLarge { .. })));
        assert!(matches!(inflate(b"not gzip", &small()), Err(BundleError::Unreadable { .. })));
    }

    #[test]
    fn a_huge_gnu_long_name_is_refused_after_reading_at_most_the_cap() {
        let mut stream = Endless { prefix: header(EntryType::GNULongName, 100_000_000), fill: b'a', read: 0 };
        let err = unpack_tar(&mut stream, &small()).unwrap_err();
        assert_eq!(err, BundleError::Inflated { limit: stream_cap(&small()) });
        assert!(stream.read <= stream_cap(&small()) + 1, "read {} bytes", stream.read);
    }

    #[test]
    fn a_huge_pax_record_is_refused_after_reading_at_most_the_cap() {
        let mut prefix = header(EntryType::XHeader, 100_000_000);
        prefix.extend_from_slice(b"100000000 path=");
        let mut stream = Endless { prefix, fill: b'a', read: 0 };
        let err = unpack_tar(&mut stream, &small()).unwrap_err();
        assert_eq!(err, BundleError::Inflated { limit: stream_cap(&small()) });
        assert!(stream.read <= stream_cap(&small()) + 1, "read {} bytes", stream.read);
    }

    #[test]
    fn a_file_header_claiming_too_much_is_refused_before_its_data_is_read() {
        let mut prefix = header(EntryType::Regular, 100_000_000);
        prefix[..8].copy_from_slice(b"big.txt\0");
        let mut raw = tar::Header::from_byte_slice(&prefix).clone();
        raw.set_cksum();
        let mut stream = Endless { prefix: raw.as_bytes().to_vec(), fill: b'x', read: 0 };
        let err = unpack_tar(&mut stream, &small()).unwrap_err();
        assert_eq!(err, BundleError::TooLarge { size: 100_000_000, limit: small().max_unpacked_bytes });
        assert!(stream.read < 64 * 1024, "read {} bytes", stream.read);
    }

    #[test]
    fn a_stream_ending_exactly_at_the_cap_is_not_refused_for_size() {
        let limits = small();
        let mut bytes = Vec::new();
        let mut capped = CappedReader { inner: &[7u8; 10][..], remaining: 10, tripped: &Cell::new(false) };
        capped.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len(), 10);
        let tripped = Cell::new(false);
        let mut over = CappedReader { inner: &[7u8; 11][..], remaining: 10, tripped: &tripped };
        assert!(over.read_to_end(&mut Vec::new()).is_err() && tripped.get());
        // A legitimate bundle right at the unpacked limit still unpacks.
        let exact = pack(&[file("exact.txt", &"y".repeat(limits.max_unpacked_bytes as usize))]).unwrap();
        assert_eq!(unpack(&exact, &limits).unwrap().len(), 1);
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(unpack(b"not a tarball", &BundleLimits::default()), Err(BundleError::Unreadable { .. })));
    }
}
