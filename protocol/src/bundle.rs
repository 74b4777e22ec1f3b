//! Job bundles: a tar.gz of files unpacked into a sandbox's in-memory filesystem.
//!
//! The same validation runs at deploy (the scheduler refuses a bad bundle with the entry named)
//! and in the worker core before anything reaches a sandbox, so a bundle that slipped past one
//! check is still refused by the other.

#[cfg(feature = "gzip")]
use std::io::Read;

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
/// Hostile input costs little: inflating stops one byte past [`stream_cap`], so a gzip bomb or a
/// tar whose GNU long name or PAX record claims gigabytes is refused after at most the cap has
/// been inflated, and no allocation is ever sized from a header.
#[cfg(feature = "gzip")]
pub fn unpack(tar_gz: &[u8], limits: &BundleLimits) -> Result<Vec<BundleEntry>, BundleError> {
    unpack_tar(&inflate(tar_gz, limits)?, limits)
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
/// headers, block padding and modest long-name/PAX records of every allowed entry. Inflating stops
/// one byte past it, so a gzip bomb costs at most this much memory.
pub fn stream_cap(limits: &BundleLimits) -> u64 {
    const BASE_SLACK: u64 = 64 * 1024;
    const PER_ENTRY_SLACK: u64 = 3 * 1024;
    limits.max_unpacked_bytes.saturating_add(BASE_SLACK).saturating_add(PER_ENTRY_SLACK * limits.max_entries as u64)
}

/// Longest GNU long name or PAX record accepted: far more than any real path, far less than a
/// bomb (which is refused with the entry's offset instead of being held).
const MAX_METADATA_BYTES: u64 = 64 * 1024;

/// A tar's block: headers and the padding of every entry's data.
const BLOCK: usize = 512;

/// Checks a decompressed tar against `limits` and returns its entries, or the first problem
/// found. A tar longer than [`stream_cap`] (the tar of a gzip bomb, which inflating cut one byte
/// past the cap) is [`BundleError::Inflated`], whatever it holds.
///
/// The reader is our own, not the `tar` crate: bundles hold regular files and directories, named
/// by a header (ustar prefix included), a GNU long name or a PAX `path`, sized by the header
/// (octal or base-256) or a PAX `size`; every checksum is verified; a PAX global header (which
/// `git archive` writes) is skipped; links, devices, fifos and sparse files are refused. Nothing is
/// sized from a header before the bytes are there, and long names and PAX records are bounded.
pub fn unpack_tar(tar: &[u8], limits: &BundleLimits) -> Result<Vec<BundleEntry>, BundleError> {
    let mut entries = Vec::new();
    walk_tar(tar, limits, |path, data| {
        entries.push(match data {
            Some(bytes) => BundleEntry::File { path, bytes: bytes.to_vec() },
            None => BundleEntry::Directory { path },
        })
    })?;
    Ok(entries)
}

/// Checks a tar.gz as [`unpack`] does, without copying out what its files hold: the check of a
/// bundle upload, whose peak memory is then the inflated tar alone.
#[cfg(feature = "gzip")]
pub fn check(tar_gz: &[u8], limits: &BundleLimits) -> Result<(), BundleError> {
    walk_tar(&inflate(tar_gz, limits)?, limits, |_, _| {})
}

/// Reads and checks a decompressed tar (see [`unpack_tar`]), handing each entry to `each`: a
/// directory's clean path with `None`, a file's with `Some` of its bytes.
fn walk_tar<'a>(
    tar: &'a [u8],
    limits: &BundleLimits,
    mut each: impl FnMut(String, Option<&'a [u8]>),
) -> Result<(), BundleError> {
    if tar.len() as u64 > stream_cap(limits) {
        return Err(BundleError::Inflated { limit: stream_cap(limits) });
    }
    let mut reader = TarReader { tar, at: 0 };
    let mut count = 0;
    let mut unpacked: u64 = 0;
    // What the PAX record or GNU long name before a header says about the entry it describes.
    let mut long_name: Option<Vec<u8>> = None;
    let mut pax_path: Option<Vec<u8>> = None;
    let mut pax_size: Option<u64> = None;
    while let Some(header) = reader.header()? {
        let at = reader.at - BLOCK;
        let kind = header[156];
        let size = pax_size.take().map_or_else(|| header_number(&header[124..136], "size", at), Ok)?;
        if let Some(what) = metadata_name(kind) {
            if size > MAX_METADATA_BYTES {
                return Err(unreadable(format!(
                    "the {what} at byte {at} claims {size} bytes, over the {MAX_METADATA_BYTES} allowed"
                )));
            }
            let data = reader.data(size, at)?;
            match kind {
                b'L' => long_name = Some(trim_nuls(data).to_vec()),
                b'x' => (pax_path, pax_size) = pax_record(data, at)?,
                // A global header (`git archive` writes the commit in one) and a GNU long link
                // name describe nothing a bundle keeps.
                _ => {}
            }
            continue;
        }
        let raw_path = match pax_path.take().or(long_name.take()) {
            Some(path) => path,
            None => header_path(header),
        };
        let raw_path = String::from_utf8(raw_path)
            .map_err(|error| BundleError::BadPath { entry: String::from_utf8_lossy(error.as_bytes()).into_owned() })?;
        if count >= limits.max_entries {
            return Err(BundleError::TooManyEntries { limit: limits.max_entries });
        }
        let path = normalise(&raw_path)?;
        match kind {
            b'5' => {
                reader.data(size, at)?;
                if !path.is_empty() {
                    count += 1;
                    each(path, None);
                }
            }
            b'0' | b'\0' | b'7' => {
                if path.is_empty() {
                    return Err(BundleError::BadPath { entry: raw_path });
                }
                // The header's size (or a PAX `size`) is a claim: it refuses early but sizes nothing.
                if unpacked.saturating_add(size) > limits.max_unpacked_bytes {
                    return Err(BundleError::TooLarge {
                        size: unpacked.saturating_add(size),
                        limit: limits.max_unpacked_bytes,
                    });
                }
                let bytes = reader.data(size, at)?;
                unpacked += size;
                count += 1;
                each(path, Some(bytes));
            }
            other => return Err(BundleError::ForbiddenKind { entry: raw_path, kind: kind_name(other) }),
        }
    }
    Ok(())
}

/// A decompressed tar in memory, read block by block from `at`.
struct TarReader<'a> {
    tar: &'a [u8],
    at: usize,
}

impl<'a> TarReader<'a> {
    /// The next header with its checksum verified, or `None` at the end of the archive (a zero
    /// block, or no bytes left where a header would start).
    fn header(&mut self) -> Result<Option<&'a [u8]>, BundleError> {
        if self.at == self.tar.len() {
            return Ok(None);
        }
        let at = self.at;
        let header = self.take(BLOCK as u64, || format!("the header at byte {at} is cut short"))?;
        if header.iter().all(|&byte| byte == 0) {
            return Ok(None);
        }
        let stored = header_number(&header[148..156], "checksum", at)?;
        let computed: u64 = header
            .iter()
            .enumerate()
            .map(|(index, &byte)| if (148..156).contains(&index) { u64::from(b' ') } else { u64::from(byte) })
            .sum();
        if stored != computed {
            return Err(unreadable(format!("the header at byte {at} has a wrong checksum")));
        }
        Ok(Some(header))
    }

    /// An entry's `size` bytes of data, and past the padding that fills its last block.
    fn data(&mut self, size: u64, header_at: usize) -> Result<&'a [u8], BundleError> {
        let data =
            self.take(size, || format!("the entry at byte {header_at} claims {size} bytes; the archive ends before"))?;
        let padding = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.take(padding as u64, || format!("the entry at byte {header_at} is not padded to a whole block"))?;
        Ok(data)
    }

    fn take(&mut self, len: u64, cut_short: impl FnOnce() -> String) -> Result<&'a [u8], BundleError> {
        let left = self.tar.len() - self.at;
        match usize::try_from(len) {
            Ok(len) if len <= left => {
                let bytes = &self.tar[self.at..self.at + len];
                self.at += len;
                Ok(bytes)
            }
            _ => Err(unreadable(cut_short())),
        }
    }
}

fn unreadable(reason: String) -> BundleError {
    BundleError::Unreadable { reason }
}

/// A header's numeric field: octal digits between optional spaces and NULs, or base-256 (the
/// first byte's high bit set), as GNU tar writes sizes over 8 GiB.
fn header_number(field: &[u8], name: &str, header_at: usize) -> Result<u64, BundleError> {
    let wrong = || unreadable(format!("the header at byte {header_at} has a {name} that is not a number"));
    if field[0] & 0x80 != 0 {
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &byte in &field[1..] {
            value = value.checked_mul(256).and_then(|value| value.checked_add(u64::from(byte))).ok_or_else(wrong)?;
        }
        return Ok(value);
    }
    let digits = until_nul(field.trim_ascii_start()).trim_ascii_end();
    if digits.is_empty() {
        return Err(wrong());
    }
    digits.iter().try_fold(0u64, |value, &digit| match digit {
        b'0'..=b'7' => value.checked_mul(8).map(|value| value + u64::from(digit - b'0')).ok_or_else(wrong),
        _ => Err(wrong()),
    })
}

/// The path a header itself holds: its name, after the ustar prefix when there is one (GNU
/// headers use those bytes for other things).
fn header_path(header: &[u8]) -> Vec<u8> {
    let name = until_nul(&header[..100]);
    let prefix = if &header[257..263] == b"ustar\0" { until_nul(&header[345..500]) } else { &[] };
    if prefix.is_empty() {
        name.to_vec()
    } else {
        [prefix, b"/", name].concat()
    }
}

/// A PAX extended header's `path` and `size` (records `LENGTH KEY=VALUE\n`; others are ignored).
fn pax_record(data: &[u8], header_at: usize) -> Result<(Option<Vec<u8>>, Option<u64>), BundleError> {
    let wrong = || unreadable(format!("the PAX record at byte {header_at} is malformed"));
    let (mut path, mut size) = (None, None);
    let mut rest = trim_nuls(data);
    while !rest.is_empty() {
        let space = rest.iter().position(|&byte| byte == b' ').ok_or_else(wrong)?;
        let length: usize =
            std::str::from_utf8(&rest[..space]).ok().and_then(|text| text.parse().ok()).ok_or_else(wrong)?;
        if length <= space + 1 || length > rest.len() || rest[length - 1] != b'\n' {
            return Err(wrong());
        }
        let record = &rest[space + 1..length - 1];
        let equals = record.iter().position(|&byte| byte == b'=').ok_or_else(wrong)?;
        let (key, value) = (&record[..equals], &record[equals + 1..]);
        match key {
            b"path" => path = Some(value.to_vec()),
            b"size" => {
                let text = std::str::from_utf8(value).map_err(|_| wrong())?;
                size = Some(text.parse().map_err(|_| wrong())?);
            }
            _ => {}
        }
        rest = &rest[length..];
    }
    Ok((path, size))
}

fn until_nul(field: &[u8]) -> &[u8] {
    field.iter().position(|&byte| byte == 0).map_or(field, |end| &field[..end])
}

fn trim_nuls(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
    &bytes[..end]
}

/// What a header of `kind` is when it describes other entries rather than being one.
fn metadata_name(kind: u8) -> Option<&'static str> {
    match kind {
        b'L' => Some("GNU long name"),
        b'K' => Some("GNU long link name"),
        b'g' => Some("PAX global header"),
        b'x' => Some("PAX record"),
        _ => None,
    }
}

/// Turns an archive path into a clean relative path, refusing anything that could escape the root.
fn normalise(raw: &str) -> Result<String, BundleError> {
    if raw.starts_with('/') || raw.starts_with('\\') {
        return Err(BundleError::AbsolutePath { entry: raw.to_string() });
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(BundleError::ParentDirectory { entry: raw.to_string() }),
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        b'2' => "symbolic link",
        b'1' => "hard link",
        b'3' => "character device",
        b'4' => "block device",
        b'6' => "fifo",
        b'S' => "sparse file",
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
        assert_eq!(unpack_tar(&inflated, &small()), Err(BundleError::Inflated { limit: stream_cap(&small()) }));
        let bundle = pack(&[file("pkg/a.py", "A = 1\n"), file("b.txt", "b")]).unwrap();
        let entries = unpack_tar(&inflate(&bundle, &small()).unwrap(), &small()).unwrap();
        assert_eq!(entries, unpack(&bundle, &small()).unwrap());
        // The upload's check, which copies nothing out, refuses and accepts the same.
        assert_eq!(check(&bomb, &small()), Err(BundleError::Inflated { limit: stream_cap(&small()) }));
        assert_eq!(check(&bundle, &small()), Ok(()));
        let two = BundleLimits { max_entries: 1, ..small() };
        assert_eq!(check(&bundle, &two), Err(BundleError::TooManyEntries { limit: 1 }));
        let tight = BundleLimits { max_compressed_bytes: bundle.len() - 1, ..small() };
        assert!(matches!(inflate(&bundle, &tight), Err(BundleError::TooLarge { .. })));
        assert!(matches!(inflate(b"not gzip", &small()), Err(BundleError::Unreadable { .. })));
    }

    #[test]
    fn long_names_and_pax_records_claiming_too_much_are_refused_without_reading_them() {
        for (kind, what) in [(EntryType::GNULongName, "GNU long name"), (EntryType::XHeader, "PAX record")] {
            // Only the header: the claim alone is refused, before any data is looked for.
            let err = unpack_tar(&header(kind, 100_000_000), &small()).unwrap_err();
            let BundleError::Unreadable { reason } = &err else { panic!("{err:?}") };
            assert!(reason.contains(what) && reason.contains("100000000"), "{reason}");
        }
    }

    #[test]
    fn a_file_header_claiming_too_much_is_refused_before_its_data_is_read() {
        let mut raw = tar::Header::from_byte_slice(&header(EntryType::Regular, 100_000_000)).clone();
        raw.as_gnu_mut().unwrap().name[..14].copy_from_slice(b"big.txt\0\0\0\0\0\0\0");
        raw.set_cksum();
        let err = unpack_tar(raw.as_bytes(), &small()).unwrap_err();
        assert_eq!(err, BundleError::TooLarge { size: 100_000_000, limit: small().max_unpacked_bytes });
    }

    #[test]
    fn a_tar_of_exactly_the_cap_is_read_and_one_byte_more_is_refused() {
        let limits = small();
        let cap = stream_cap(&limits) as usize;
        let exact = pack(&[file("exact.txt", &"y".repeat(limits.max_unpacked_bytes as usize))]).unwrap();
        let mut tar = inflate(&exact, &limits).unwrap();
        assert!(tar.len() <= cap);
        tar.resize(cap, 0);
        assert_eq!(unpack_tar(&tar, &limits).unwrap().len(), 1, "a file right at the unpacked limit");
        tar.push(0);
        assert_eq!(unpack_tar(&tar, &limits), Err(BundleError::Inflated { limit: stream_cap(&limits) }));
    }

    /// The tar inside `pack`'s tar.gz, or any archive `build` writes with the `tar` crate.
    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().unwrap()
    }

    fn append(builder: &mut tar::Builder<Vec<u8>>, mut header: tar::Header, path: &str, bytes: &[u8]) {
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, bytes).unwrap();
    }

    #[test]
    fn reads_what_other_tars_write_long_names_ustar_prefixes_and_pax_records_included() {
        let deep = format!("{}/{}.py", "d".repeat(120), "m".repeat(40));
        let prefixed = format!("{}/{}.py", "p".repeat(90), "n".repeat(60));
        let sizes = [0usize, 1, 511, 512, 513, 1024, 5000];
        let tar = tar_of(|builder| {
            for size in sizes {
                append(builder, tar::Header::new_gnu(), &format!("gnu/{size}.bin"), &vec![size as u8; size]);
            }
            // A GNU long name record ('L') before the header.
            append(builder, tar::Header::new_gnu(), &deep, b"deep = 1\n");
            // A ustar header whose path is split into prefix and name.
            append(builder, tar::Header::new_ustar(), &prefixed, b"prefixed = 1\n");
            // PAX: a global header (as `git archive` writes), then a path and a size for the next entry.
            builder.append_pax_extensions([("comment", &b"commit 0123"[..])]).unwrap();
            let mut global = tar::Header::new_ustar();
            global.set_entry_type(tar::EntryType::XGlobalHeader);
            global.set_size(18);
            builder.append_data(&mut global, "pax_global_header", &b"18 comment=abcdef\n"[..]).unwrap();
            builder.append_pax_extensions([("path", &b"pax/\xc3\xa9t\xc3\xa9.txt"[..]), ("size", &b"3"[..])]).unwrap();
            append(builder, tar::Header::new_ustar(), "short-name", b"\xc3\xa9t\xc3\xa9");
            let mut dir = tar::Header::new_gnu();
            dir.set_entry_type(tar::EntryType::Directory);
            append(builder, dir, "./pkg/", b"");
        });
        let entries = unpack_tar(&tar, &BundleLimits::default()).unwrap();
        let mut expected: Vec<BundleEntry> = sizes
            .iter()
            .map(|&size| BundleEntry::File { path: format!("gnu/{size}.bin"), bytes: vec![size as u8; size] })
            .collect();
        expected.push(file(&deep, "deep = 1\n"));
        expected.push(file(&prefixed, "prefixed = 1\n"));
        // The PAX size (3) wins over the header's (4): the fourth byte is the data's padding.
        expected.push(BundleEntry::File { path: "pax/été.txt".into(), bytes: b"\xc3\xa9t".to_vec() });
        expected.push(BundleEntry::Directory { path: "pkg".into() });
        assert_eq!(entries, expected);
    }

    #[test]
    fn a_wrong_checksum_a_cut_archive_and_a_non_numeric_size_are_refused_by_offset() {
        let tar = tar_of(|builder| {
            append(builder, tar::Header::new_gnu(), "a.txt", b"a");
            append(builder, tar::Header::new_gnu(), "b.txt", &[b'b'; 700]);
        });
        let reason = |tar: &[u8]| match unpack_tar(tar, &BundleLimits::default()) {
            Err(BundleError::Unreadable { reason }) => reason,
            other => panic!("{other:?}"),
        };
        let mut corrupt = tar.clone();
        corrupt[1024 + 10] ^= 1;
        assert_eq!(reason(&corrupt), "the header at byte 1024 has a wrong checksum");
        assert_eq!(
            reason(&tar[..1024 + 512 + 600]),
            "the entry at byte 1024 claims 700 bytes; the archive ends before"
        );
        assert_eq!(reason(&tar[..1024 + 200]), "the header at byte 1024 is cut short");
        let mut not_a_number = tar::Header::new_gnu();
        not_a_number.as_mut_bytes()[124..136].copy_from_slice(b"12x4567\0\0\0\0\0");
        not_a_number.set_cksum();
        assert_eq!(reason(not_a_number.as_bytes()), "the header at byte 0 has a size that is not a number");
        // Without the zero blocks that end an archive, the last entry still ends it.
        let unended = &tar[..1024 + 512 + 1024];
        assert_eq!(unpack_tar(unended, &BundleLimits::default()).unwrap().len(), 2);
    }

    #[test]
    fn sizes_in_base_256_and_paths_that_are_not_utf8() {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..5].copy_from_slice(b"x.bin");
        header.set_mode(0o644);
        // GNU's base-256: the high bit of the first byte, then the size big-endian.
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[11] = 3;
        header.as_mut_bytes()[124..136].copy_from_slice(&field);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend_from_slice(b"xyz");
        tar.resize(1024, 0);
        assert_eq!(unpack_tar(&tar, &BundleLimits::default()).unwrap(), vec![file("x.bin", "xyz")]);
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..4].copy_from_slice(b"\xffa.b");
        header.set_size(0);
        header.set_cksum();
        assert_eq!(
            unpack_tar(header.as_bytes(), &BundleLimits::default()),
            Err(BundleError::BadPath { entry: "\u{fffd}a.b".into() })
        );
    }

    #[test]
    fn refuses_sparse_files_and_too_many_entries() {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..6].copy_from_slice(b"sparse");
        header.set_entry_type(tar::EntryType::GNUSparse);
        header.set_size(0);
        header.set_cksum();
        assert_eq!(
            unpack_tar(header.as_bytes(), &BundleLimits::default()),
            Err(BundleError::ForbiddenKind { entry: "sparse".into(), kind: "sparse file" })
        );
        let tar = tar_of(|builder| {
            for index in 0..3 {
                append(builder, tar::Header::new_gnu(), &format!("{index}.txt"), b"");
            }
        });
        let two = BundleLimits { max_entries: 2, ..BundleLimits::default() };
        assert_eq!(unpack_tar(&tar, &two), Err(BundleError::TooManyEntries { limit: 2 }));
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(unpack(b"not a tarball", &BundleLimits::default()), Err(BundleError::Unreadable { .. })));
    }
}
