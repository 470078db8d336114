//! The sections at the end of a data blob, their reverse tar headers and the table of contents
//! (Nydus `builder/src/core/context.rs::write_tar_header`, `storage/src/meta/toc.rs`).
//!
//! With inline metadata or a TOC, each section is *followed* by a 512-byte GNU tar header giving
//! its name and size, so a blob can be written as a stream and read backwards from its end:
//!
//! ```text
//! chunk data | hdr "image.blob" | blob.meta | hdr "blob.meta" | chunk digests | hdr "blob.digest"
//!   | bootstrap | hdr "image.boot" | TOC entries | hdr "rafs.blob.toc"
//! ```
//!
//! Which sections exist depends on the build: `image.blob` is absent for ZRAN/tar-ref blobs
//! (the data lives elsewhere), `blob.digest` and the TOC come with the TOC feature, `image.boot`
//! with inline metadata. The TOC is an array of 128-byte [`TocEntry`]s describing the sections
//! (plus `blob.meta.header`, the last 4096 bytes of the `blob.meta` section); the blob table
//! records `blob_toc_size = len(entries) + 512` and `blob_toc_digest = sha256(entries ‖ header)`.
//!
//! Entry digests are sha256 of the uncompressed section, except that Nydus's `image.blob` digest
//! covers the chunk data *and* the `image.blob` tar header after it (its running blob hash has
//! already taken the header in when the entry is made). Its `uncompressed_size` is the blob's
//! uncompressed address space, not a size of stored bytes.

use std::str;

use sha2::{Digest as _, Sha256};

use crate::le::{array, fixed, put, put_u32, put_u64, u32_at, u64_at};
use crate::{Compressor, FormatError};

/// Size of a tar header.
pub const TAR_HEADER_SIZE: usize = 512;
/// Section name of the chunk data.
pub const TOC_ENTRY_BLOB_RAW: &str = "image.blob";
/// Section name of the bootstrap.
pub const TOC_ENTRY_BOOTSTRAP: &str = "image.boot";
/// Section name of the stored CI array plus its header (see [`crate::blobmeta`]).
pub const TOC_ENTRY_BLOB_META: &str = "blob.meta";
/// TOC entry name of the blob.meta header alone (not a tar section).
pub const TOC_ENTRY_BLOB_META_HEADER: &str = "blob.meta.header";
/// Section name of the chunk digest array.
pub const TOC_ENTRY_BLOB_DIGEST: &str = "blob.digest";
/// Section name of the TOC itself.
pub const TOC_ENTRY_BLOB_TOC: &str = "rafs.blob.toc";
/// How many bytes from the end of a blob a reader fetches to find the TOC.
pub const TOC_TAIL_SIZE: usize = 0x1000;
/// Largest TOC, entries plus tar header (Nydus `TocLocation::validate`).
pub const TOC_MAX_SIZE: usize = 0x1_0000;

/// The tar sections in blob order.
const SECTION_ORDER: [&str; 5] = [
    TOC_ENTRY_BLOB_RAW,
    TOC_ENTRY_BLOB_META,
    TOC_ENTRY_BLOB_DIGEST,
    TOC_ENTRY_BOOTSTRAP,
    TOC_ENTRY_BLOB_TOC,
];

const TAR: &str = "tar header";
/// GNU magic and version (`"ustar "`, `" \0"`) at 257.
const GNU_MAGIC: &[u8; 8] = b"ustar  \0";
/// Largest size the 11 octal digits of the size field hold; above it GNU base-256 is used.
const OCTAL_SIZE_LIMIT: u64 = 1 << 33;

/// The 512-byte GNU tar header written after a section of `size` bytes named `name`.
///
/// Byte for byte what Nydus writes with the `tar` crate (`Header::new_gnu`, `set_path`,
/// `set_entry_type(Regular)`, `set_size`, `set_cksum`): the name NUL-padded at 0; mode, uid and
/// gid all NUL; the size as 11 octal digits and a NUL at 124 (GNU base-256 from 8 GiB);
/// mtime `"00000000000\0"` at 136; the checksum as 7 octal digits and a NUL at 148; typeflag
/// `'0'` at 156; `"ustar  \0"` at 257.
///
/// `name` must be 1 to 100 bytes without NUL or `/` and not `.` or `..` (names the `tar` crate
/// would rewrite).
pub fn tar_header(name: &str, size: u64) -> Result<[u8; TAR_HEADER_SIZE], FormatError> {
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes.len() > 100
        || bytes.contains(&0)
        || bytes.contains(&b'/')
        || name == "."
        || name == ".."
    {
        return Err(FormatError::Invalid {
            what: TAR,
            reason: format!(
                "section name {name:?} must be 1..=100 bytes without NUL or '/', not . or .."
            ),
        });
    }
    let mut h = [0u8; TAR_HEADER_SIZE];
    put(&mut h, 0, bytes);
    if size < OCTAL_SIZE_LIMIT {
        put_octal(&mut h[124..136], size);
    } else {
        h[124] = 0x80;
        put(&mut h, 128, &size.to_be_bytes());
    }
    put_octal(&mut h[136..148], 0);
    h[156] = b'0';
    put(&mut h, 257, GNU_MAGIC);
    let sum = checksum(&h).0;
    put_octal(&mut h[148..156], sum.into());
    Ok(h)
}

/// Writes `value` as octal digits filling `field` except its last byte, which is NUL.
fn put_octal(field: &mut [u8], mut value: u64) {
    let (last, digits) = field
        .split_last_mut()
        .expect("numeric fields are not empty");
    *last = 0;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (value & 7) as u8;
        value >>= 3;
    }
}

/// The header checksum with the checksum field counted as spaces: (unsigned, signed) byte sums.
fn checksum(h: &[u8; TAR_HEADER_SIZE]) -> (u32, i32) {
    let mut unsigned = 0u32;
    let mut signed = 0i32;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    (unsigned, signed)
}

/// An octal number field: digits up to the first NUL, surrounded by optional spaces.
fn parse_octal(field: &[u8], name: &'static str, offset: usize) -> Result<u64, FormatError> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let digits = field[..end].trim_ascii();
    let bad = || FormatError::field(TAR, name, offset, 0u8, "is not an octal number");
    if digits.is_empty() {
        return Err(bad());
    }
    // At most 12 digits: 36 bits, no overflow.
    digits.iter().try_fold(0u64, |acc, &d| match d {
        b'0'..=b'7' => Ok(acc << 3 | u64::from(d - b'0')),
        _ => Err(bad()),
    })
}

/// Parses the tar header in the first 512 bytes of `bytes`: a GNU header (magic `"ustar  \0"`)
/// with a correct checksum (unsigned or, as old tars wrote it, signed byte sum), a regular-file
/// typeflag (`'0'` or NUL) and a UTF-8 name. The size may be octal or GNU base-256 (positive,
/// at most 2^64 - 1). Returns the name and the size.
pub fn parse_tar_header(bytes: &[u8]) -> Result<(&str, u64), FormatError> {
    let h = fixed::<TAR_HEADER_SIZE>(bytes, TAR)?;
    if h[257..265] != GNU_MAGIC[..] {
        return Err(FormatError::field(
            TAR,
            "magic",
            257,
            u64::from_be_bytes(array(h, 257)),
            "not a GNU tar header (\"ustar  \\0\")",
        ));
    }
    let stored = parse_octal(&h[148..156], "chksum", 148)?;
    let (unsigned, signed) = checksum(h);
    if stored != u64::from(unsigned) && i64::try_from(stored).ok() != Some(signed.into()) {
        return Err(FormatError::field(
            TAR,
            "chksum",
            148,
            stored,
            format!("header checksum is {unsigned}"),
        ));
    }
    let typeflag = h[156];
    if typeflag != b'0' && typeflag != 0 {
        return Err(FormatError::field(
            TAR,
            "typeflag",
            156,
            typeflag,
            "not a regular file",
        ));
    }
    let size = if h[124] & 0x80 != 0 {
        if h[124] != 0x80 || h[125..128] != [0; 3] {
            return Err(FormatError::field(
                TAR,
                "size",
                124,
                h[124],
                "base-256 size is negative or larger than 2^64 - 1",
            ));
        }
        u64::from_be_bytes(array(h, 128))
    } else {
        parse_octal(&h[124..136], "size", 124)?
    };
    let name_len = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
    let name = str::from_utf8(&h[..name_len])
        .map_err(|_| FormatError::field(TAR, "name", 0, 0u8, "is not UTF-8"))?;
    if name.is_empty() {
        return Err(FormatError::field(TAR, "name", 0, 0u8, "is empty"));
    }
    Ok((name, size))
}

/// One TOC entry (Nydus `TocEntry`, 128 bytes).
///
/// The reserved fields at 4 and 80 are written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TocEntry {
    /// @0 `flags`: how the section is stored: 0x1 raw, 0x2 zstd, 0x4 LZ4 block.
    pub flags: u32,
    /// @8 `name`: the section name, NUL-padded.
    pub name: [u8; 16],
    /// @24 `uncompressed_digest`: sha256 of the uncompressed section (for `image.blob`: of the
    /// chunk data followed by its tar header).
    pub uncompressed_digest: [u8; 32],
    /// @56 `compressed_offset`: offset of the stored section in the blob.
    pub compressed_offset: u64,
    /// @64 `compressed_size`: size of the stored section.
    pub compressed_size: u64,
    /// @72 `uncompressed_size`: size of the section once decompressed.
    pub uncompressed_size: u64,
}

/// TOC entry flag: stored raw.
pub const TOC_FLAG_COMPRESSION_NONE: u32 = 0x1;
/// TOC entry flag: stored as a zstd frame.
pub const TOC_FLAG_COMPRESSION_ZSTD: u32 = 0x2;
/// TOC entry flag: stored as a raw LZ4 block.
pub const TOC_FLAG_COMPRESSION_LZ4_BLOCK: u32 = 0x4;

impl TocEntry {
    /// Encoded size.
    pub const SIZE: usize = 128;
    const WHAT: &'static str = "TocEntry";

    /// An entry for a section; fails if `name` is empty, longer than 16 bytes or contains NUL,
    /// or the compressor has no TOC flag (gzip).
    pub fn new(
        name: &str,
        compressor: Compressor,
        uncompressed_digest: [u8; 32],
        compressed_offset: u64,
        compressed_size: u64,
        uncompressed_size: u64,
    ) -> Result<Self, FormatError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() > 16 || bytes.contains(&0) {
            return Err(FormatError::Invalid {
                what: Self::WHAT,
                reason: format!("name {name:?} must be 1..=16 bytes without NUL"),
            });
        }
        let flags = match compressor {
            Compressor::None => TOC_FLAG_COMPRESSION_NONE,
            Compressor::Zstd => TOC_FLAG_COMPRESSION_ZSTD,
            Compressor::Lz4Block => TOC_FLAG_COMPRESSION_LZ4_BLOCK,
            Compressor::GZip => {
                return Err(FormatError::Invalid {
                    what: Self::WHAT,
                    reason: "gzip has no TOC compression flag".into(),
                })
            }
        };
        let mut raw = [0u8; 16];
        raw[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            flags,
            name: raw,
            uncompressed_digest,
            compressed_offset,
            compressed_size,
            uncompressed_size,
        })
    }

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, Self::WHAT)?;
        Ok(Self {
            flags: u32_at(b, 0),
            name: array(b, 8),
            uncompressed_digest: array(b, 24),
            compressed_offset: u64_at(b, 56),
            compressed_size: u64_at(b, 64),
            uncompressed_size: u64_at(b, 72),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u32(&mut b, 0, self.flags);
        put(&mut b, 8, &self.name);
        put(&mut b, 24, &self.uncompressed_digest);
        put_u64(&mut b, 56, self.compressed_offset);
        put_u64(&mut b, 64, self.compressed_size);
        put_u64(&mut b, 72, self.uncompressed_size);
        b
    }

    /// The name: the bytes before the first NUL, which must be UTF-8 and followed only by NULs.
    pub fn name(&self) -> Result<&str, FormatError> {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        if self.name[len..].iter().any(|&b| b != 0) {
            return Err(FormatError::field(
                Self::WHAT,
                "name",
                8,
                0u8,
                "has bytes after its NUL terminator",
            ));
        }
        let name = str::from_utf8(&self.name[..len])
            .map_err(|_| FormatError::field(Self::WHAT, "name", 8, 0u8, "is not UTF-8"))?;
        if name.is_empty() {
            return Err(FormatError::field(Self::WHAT, "name", 8, 0u8, "is empty"));
        }
        Ok(name)
    }

    /// How the section is stored: exactly one of the three compression flags.
    pub fn compressor(&self) -> Result<Compressor, FormatError> {
        match self.flags {
            TOC_FLAG_COMPRESSION_NONE => Ok(Compressor::None),
            TOC_FLAG_COMPRESSION_ZSTD => Ok(Compressor::Zstd),
            TOC_FLAG_COMPRESSION_LZ4_BLOCK => Ok(Compressor::Lz4Block),
            v => Err(FormatError::field(
                Self::WHAT,
                "flags",
                0,
                v,
                "must be exactly one of 0x1 (none), 0x2 (zstd), 0x4 (lz4_block)",
            )),
        }
    }

    /// Checks the name, the flags and that the stored range does not overflow.
    ///
    /// A raw section's two sizes may differ: the `image.blob` entry's `uncompressed_size` is the
    /// blob's uncompressed address space (Nydus only requires equal sizes for the raw
    /// `image.boot` and `blob.digest` it extracts).
    pub fn validate(&self) -> Result<(), FormatError> {
        self.name()?;
        self.compressor()?;
        if self
            .compressed_offset
            .checked_add(self.compressed_size)
            .is_none()
        {
            return Err(FormatError::field(
                Self::WHAT,
                "compressed_offset",
                56,
                self.compressed_offset,
                "the section ends beyond 2^64",
            ));
        }
        Ok(())
    }
}

/// `blob_toc_digest`: sha256 of the encoded TOC (entries and their tar header).
pub fn blob_toc_digest(toc: &[u8]) -> [u8; 32] {
    Sha256::digest(toc).into()
}

/// A parsed table of contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    entries: Vec<TocEntry>,
    digest: [u8; 32],
    size: u32,
}

impl Toc {
    const WHAT: &'static str = "Toc";

    /// Parses the TOC at the end of `tail`, the last bytes of a blob (readers fetch
    /// [`TOC_TAIL_SIZE`], or the whole blob if shorter; more is fine).
    ///
    /// The last 512 bytes must be the tar header of [`TOC_ENTRY_BLOB_TOC`] (see
    /// [`parse_tar_header`]); its size must be a multiple of 128, fit in `tail` before the
    /// header and keep the TOC within [`TOC_MAX_SIZE`]. Every entry is validated and names
    /// must be unique.
    pub fn parse_from_tail(tail: &[u8]) -> Result<Self, FormatError> {
        let header_at = tail
            .len()
            .checked_sub(TAR_HEADER_SIZE)
            .ok_or(FormatError::Truncated {
                what: Self::WHAT,
                need: TAR_HEADER_SIZE,
                have: tail.len(),
            })?;
        let (name, size) = parse_tar_header(&tail[header_at..])?;
        if name != TOC_ENTRY_BLOB_TOC {
            return Err(FormatError::Invalid {
                what: Self::WHAT,
                reason: format!("last tar header is {name:?}, not {TOC_ENTRY_BLOB_TOC:?}"),
            });
        }
        let max = (TOC_MAX_SIZE - TAR_HEADER_SIZE) as u64;
        let bad_size = |reason: String| FormatError::field(TAR, "size", 124, size, reason);
        if size % TocEntry::SIZE as u64 != 0 {
            return Err(bad_size("TOC size is not a multiple of 128".into()));
        }
        if size > max {
            return Err(bad_size(format!("TOC entries exceed {max} bytes")));
        }
        if size > header_at as u64 {
            return Err(bad_size(format!(
                "TOC entries extend before the {header_at} bytes given"
            )));
        }
        let start = header_at - size as usize;
        let toc = &tail[start..];
        let mut entries: Vec<TocEntry> = Vec::with_capacity(size as usize / TocEntry::SIZE);
        for (i, raw) in toc[..size as usize]
            .chunks_exact(TocEntry::SIZE)
            .enumerate()
        {
            let entry = TocEntry::decode(raw)?;
            let in_toc = |e: FormatError| match e {
                FormatError::BadField {
                    what,
                    field,
                    offset,
                    value,
                    reason,
                } => FormatError::BadField {
                    what,
                    field,
                    offset: i * TocEntry::SIZE + offset,
                    value,
                    reason: format!("entry {i}: {reason}"),
                },
                other => other,
            };
            entry.validate().map_err(in_toc)?;
            if entries.iter().any(|e| e.name == entry.name) {
                return Err(in_toc(FormatError::field(
                    TocEntry::WHAT,
                    "name",
                    8,
                    0u8,
                    format!("duplicate entry {:?}", entry.name()?),
                )));
            }
            entries.push(entry);
        }
        Ok(Self {
            entries,
            digest: blob_toc_digest(toc),
            // At most TOC_MAX_SIZE.
            size: toc.len() as u32,
        })
    }

    /// Encodes a TOC: the entries, then the tar header of [`TOC_ENTRY_BLOB_TOC`]. Every entry
    /// must validate, names must be unique and the result fit in [`TOC_MAX_SIZE`].
    pub fn encode(entries: &[TocEntry]) -> Result<Vec<u8>, FormatError> {
        let size = entries.len() * TocEntry::SIZE;
        if size + TAR_HEADER_SIZE > TOC_MAX_SIZE {
            return Err(FormatError::Invalid {
                what: Self::WHAT,
                reason: format!("{} entries exceed {TOC_MAX_SIZE} bytes", entries.len()),
            });
        }
        let mut out = Vec::with_capacity(size + TAR_HEADER_SIZE);
        for (i, e) in entries.iter().enumerate() {
            e.validate()?;
            if entries[..i].iter().any(|p| p.name == e.name) {
                return Err(FormatError::Invalid {
                    what: Self::WHAT,
                    reason: format!("duplicate entry {:?}", e.name()?),
                });
            }
            out.extend_from_slice(&e.to_bytes());
        }
        out.extend_from_slice(&tar_header(TOC_ENTRY_BLOB_TOC, size as u64)?);
        Ok(out)
    }

    /// The entries, in on-disk order.
    pub fn entries(&self) -> &[TocEntry] {
        &self.entries
    }

    /// The entry named `name`.
    pub fn find(&self, name: &str) -> Option<&TocEntry> {
        self.entries
            .iter()
            .find(|e| e.name().is_ok_and(|n| n == name))
    }

    /// `blob_toc_digest`: sha256 of the entries and their tar header.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// `blob_toc_size`: size of the entries plus their tar header.
    pub fn size(&self) -> u32 {
        self.size
    }
}

/// One section of a blob found by [`locate_sections`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Section {
    /// Section name: one of [`TOC_ENTRY_BLOB_RAW`], [`TOC_ENTRY_BLOB_META`],
    /// [`TOC_ENTRY_BLOB_DIGEST`], [`TOC_ENTRY_BOOTSTRAP`], [`TOC_ENTRY_BLOB_TOC`].
    pub name: &'static str,
    /// Offset of the section data in the blob.
    pub offset: u64,
    /// Size of the section data; its tar header follows at `offset + size`.
    pub size: u64,
}

/// Finds the sections of a blob by walking its reverse tar headers from the end.
///
/// Each header describes the `size` bytes before it. Names must be known and appear in blob
/// order (`image.blob`, `blob.meta`, `blob.digest`, `image.boot`, `rafs.blob.toc`, each at most
/// once, any of them absent), and the walk must account for every byte down to offset 0. The
/// sections are returned in blob order. A blob without tar headers (built with neither inline
/// metadata nor a TOC) is an error.
pub fn locate_sections(blob: &[u8]) -> Result<Vec<Section>, FormatError> {
    const WHAT: &str = "blob sections";
    let mut sections = Vec::with_capacity(SECTION_ORDER.len());
    let mut end = blob.len();
    // Sections still allowed: those before the last one found.
    let mut allowed = SECTION_ORDER.len();
    while end > 0 {
        let header_at = end
            .checked_sub(TAR_HEADER_SIZE)
            .ok_or_else(|| FormatError::Invalid {
                what: WHAT,
                reason: format!("{end} bytes at the start of the blob are not a section"),
            })?;
        let (name, size) =
            parse_tar_header(&blob[header_at..end]).map_err(|e| FormatError::Invalid {
                what: WHAT,
                reason: format!("no tar header before offset {end:#x}: {e}"),
            })?;
        let position = SECTION_ORDER[..allowed]
            .iter()
            .position(|&n| n == name)
            .ok_or_else(|| FormatError::Invalid {
                what: WHAT,
                reason: format!(
                    "tar header at {header_at:#x} names {name:?}, expected one of {:?}",
                    &SECTION_ORDER[..allowed]
                ),
            })?;
        if size > header_at as u64 {
            return Err(FormatError::Invalid {
                what: WHAT,
                reason: format!(
                    "section {name:?} of {size} bytes starts before the blob (header at \
                     {header_at:#x})"
                ),
            });
        }
        let offset = header_at - size as usize;
        sections.push(Section {
            name: SECTION_ORDER[position],
            offset: offset as u64,
            size,
        });
        allowed = position;
        end = offset;
    }
    if sections.is_empty() {
        return Err(FormatError::Invalid {
            what: WHAT,
            reason: "the blob is empty".into(),
        });
    }
    sections.reverse();
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What Nydus writes, through the `tar` crate.
    fn tar_crate_header(name: &str, size: u64) -> [u8; 512] {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        h.set_cksum();
        let mut out = [0u8; 512];
        out.copy_from_slice(h.as_bytes());
        out
    }

    fn field_of<T: std::fmt::Debug>(r: Result<T, FormatError>) -> &'static str {
        r.unwrap_err().field_name().expect("a field error")
    }

    /// Recomputes the checksum of a header edited by a test.
    fn reseal(h: &mut [u8; 512]) {
        let sum = checksum(h).0;
        put_octal(&mut h[148..156], sum.into());
    }

    fn entry(name: &str, off: u64, len: u64) -> TocEntry {
        TocEntry::new(
            name,
            Compressor::None,
            [name.len() as u8; 32],
            off,
            len,
            len,
        )
        .unwrap()
    }

    #[test]
    fn tar_header_matches_hand_computed_bytes() {
        let mut expected = [0u8; 512];
        expected[..13].copy_from_slice(b"rafs.blob.toc");
        // mode, uid, gid (100..124) stay NUL: Header::new_gnu never sets them.
        expected[124..136].copy_from_slice(b"00000000600\0"); // 384 = 0o600
        expected[136..148].copy_from_slice(b"00000000000\0"); // mtime 0
                                                              // Sum of all bytes with the checksum field as 8 spaces:
                                                              // name 1261 + size 534 + mtime 528 + spaces 256 + '0' 48 + "ustar " 591 + " \0" 32
                                                              // = 3250 = 0o6262, written as 7 digits and a NUL.
        expected[148..156].copy_from_slice(b"0006262\0");
        expected[156] = b'0';
        expected[257..265].copy_from_slice(b"ustar  \0");
        let h = tar_header(TOC_ENTRY_BLOB_TOC, 384).unwrap();
        assert_eq!(h, expected);
        assert_eq!(h, tar_crate_header(TOC_ENTRY_BLOB_TOC, 384));
        assert_eq!(parse_tar_header(&h), Ok((TOC_ENTRY_BLOB_TOC, 384)));
    }

    #[test]
    fn sizes_from_8_gib_use_gnu_base_256() {
        let below = tar_header("image.blob", (1 << 33) - 1).unwrap();
        assert_eq!(&below[124..136], b"77777777777\0");
        assert_eq!(below, tar_crate_header("image.blob", (1 << 33) - 1));
        let size = 0x0123_4567_89ab_cdef;
        let h = tar_header("image.blob", size).unwrap();
        assert_eq!(
            &h[124..136],
            &[0x80, 0, 0, 0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
        );
        assert_eq!(h, tar_crate_header("image.blob", size));
        assert_eq!(parse_tar_header(&h), Ok(("image.blob", size)));
        let max = tar_header("x", u64::MAX).unwrap();
        assert_eq!(parse_tar_header(&max), Ok(("x", u64::MAX)));
    }

    #[test]
    fn tar_header_refuses_names_tar_would_rewrite() {
        for bad in ["", ".", "..", "a/b", "/a", "a\0b", &"n".repeat(101)] {
            assert!(tar_header(bad, 0).is_err(), "{bad:?}");
        }
        let long = "n".repeat(100);
        let h = tar_header(&long, 1).unwrap();
        assert_eq!(h, tar_crate_header(&long, 1));
        assert_eq!(parse_tar_header(&h), Ok((long.as_str(), 1)));
    }

    #[test]
    fn parse_tar_header_accepts_what_other_tars_write() {
        let good = tar_header("image.boot", 1016).unwrap();
        // Typeflag NUL (old tars) is a regular file too.
        let mut h = good;
        h[156] = 0;
        reseal(&mut h);
        assert_eq!(parse_tar_header(&h), Ok(("image.boot", 1016)));
        // GNU tar writes 6 digits, NUL, space.
        let mut h = good;
        let sum = checksum(&h).0;
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert_eq!(parse_tar_header(&h), Ok(("image.boot", 1016)));
        // Space-padded octal size.
        let mut h = good;
        h[124..136].copy_from_slice(b"     1770 \0\0");
        reseal(&mut h);
        assert_eq!(parse_tar_header(&h), Ok(("image.boot", 1016)));
        // A signed checksum (old tars) differs for bytes >= 0x80, e.g. a UTF-8 name.
        let mut h = tar_header("é", 5).unwrap();
        let (unsigned, signed) = checksum(&h);
        assert_ne!(i64::from(unsigned), i64::from(signed));
        put_octal(&mut h[148..156], signed as u64);
        assert_eq!(parse_tar_header(&h), Ok(("é", 5)));
        // Trailing bytes are not looked at.
        let mut longer = good.to_vec();
        longer.extend_from_slice(&[0xff; 10]);
        assert_eq!(parse_tar_header(&longer), Ok(("image.boot", 1016)));
    }

    #[test]
    fn parse_tar_header_rejections_name_the_field() {
        let good = tar_header("image.boot", 1016).unwrap();
        type Case = (&'static str, fn(&mut [u8; 512]), bool);
        let cases: [Case; 9] = [
            (
                "magic",
                |h| h[257..265].copy_from_slice(b"ustar\x0000"),
                true,
            ),
            ("chksum", |h| h[0] = b'J', false),
            (
                "chksum",
                |h| h[148..156].copy_from_slice(b"0009999\0"),
                false,
            ),
            (
                "chksum",
                |h| h[148..156].copy_from_slice(b"\0\0\0\0\0\0\0\0"),
                false,
            ),
            ("typeflag", |h| h[156] = b'5', true),
            (
                "size",
                |h| h[124..136].copy_from_slice(b"0000000x000\0"),
                true,
            ),
            ("size", |h| h[124..136].copy_from_slice(&[0xff; 12]), true),
            ("name", |h| h[0] = 0xff, true),
            ("name", |h| h[..100].fill(0), true),
        ];
        for (i, (field, edit, seal)) in cases.into_iter().enumerate() {
            let mut h = good;
            edit(&mut h);
            if seal {
                reseal(&mut h);
            }
            assert_eq!(field_of(parse_tar_header(&h)), field, "case {i}");
        }
        let mut h = good;
        h[124..136].copy_from_slice(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        reseal(&mut h);
        assert_eq!(field_of(parse_tar_header(&h)), "size", "beyond 2^64");
        assert!(matches!(
            parse_tar_header(&good[..511]),
            Err(FormatError::Truncated {
                need: 512,
                have: 511,
                ..
            })
        ));
    }

    #[test]
    fn toc_entry_fields_sit_at_reference_offsets() {
        let mut b = [0xeeu8; 128];
        b[0..4].copy_from_slice(&[2, 0, 0, 0]);
        b[8..24].copy_from_slice(b"image.boot\0\0\0\0\0\0");
        b[24..56].copy_from_slice(&[0x11; 32]);
        b[56..64].copy_from_slice(&0x152dau64.to_le_bytes());
        b[64..72].copy_from_slice(&0x3f8u64.to_le_bytes());
        b[72..80].copy_from_slice(&0x5000u64.to_le_bytes());
        let e = TocEntry::decode(&b).unwrap();
        assert_eq!(e.flags, TOC_FLAG_COMPRESSION_ZSTD);
        assert_eq!(e.name(), Ok(TOC_ENTRY_BOOTSTRAP));
        assert_eq!(e.compressor(), Ok(Compressor::Zstd));
        assert_eq!(e.uncompressed_digest, [0x11; 32]);
        assert_eq!(
            (e.compressed_offset, e.compressed_size, e.uncompressed_size),
            (0x152da, 0x3f8, 0x5000)
        );
        e.validate().unwrap();
        let out = e.to_bytes();
        assert_eq!(&out[..4], &b[..4]);
        assert_eq!(&out[8..80], &b[8..80]);
        assert_eq!(&out[4..8], &[0; 4], "reserved1 written as zero");
        assert!(
            out[80..].iter().all(|&x| x == 0),
            "reserved2 written as zero"
        );
        assert_eq!(
            TocEntry::new(
                TOC_ENTRY_BOOTSTRAP,
                Compressor::Zstd,
                [0x11; 32],
                0x152da,
                0x3f8,
                0x5000
            ),
            Ok(e)
        );
        assert!(TocEntry::decode(&b[..127]).is_err());
    }

    #[test]
    fn toc_entry_rules() {
        for bad in ["", "seventeen-bytes!!", "a\0"] {
            assert!(
                TocEntry::new(bad, Compressor::None, [0; 32], 0, 0, 0).is_err(),
                "{bad:?}"
            );
        }
        assert!(TocEntry::new("x", Compressor::GZip, [0; 32], 0, 0, 0).is_err());
        let lz4 =
            TocEntry::new("sixteen-bytes-ok", Compressor::Lz4Block, [0; 32], 0, 1, 2).unwrap();
        assert_eq!(lz4.flags, 0x4);
        assert_eq!(lz4.name(), Ok("sixteen-bytes-ok"));
        let good = entry("blob.digest", 10, 20);
        for flags in [0, 3, 8, 0x10] {
            let e = TocEntry { flags, ..good };
            assert_eq!(field_of(e.validate()), "flags", "{flags:#x}");
        }
        let mut e = good;
        e.name[13] = b'x';
        assert_eq!(field_of(e.validate()), "name", "bytes after the NUL");
        e.name = [0; 16];
        assert_eq!(field_of(e.validate()), "name", "empty");
        e.name = [0xff; 16];
        assert_eq!(field_of(e.validate()), "name", "not UTF-8");
        let e = TocEntry {
            compressed_offset: u64::MAX,
            ..good
        };
        assert_eq!(field_of(e.validate()), "compressed_offset");
        // Raw entries may record a different uncompressed size (image.blob does).
        let e = TocEntry {
            uncompressed_size: 0x51000,
            ..good
        };
        e.validate().unwrap();
    }

    #[test]
    fn toc_round_trips_with_digest_and_size() {
        let entries = [
            entry(TOC_ENTRY_BLOB_RAW, 0, 100),
            entry(TOC_ENTRY_BLOB_META, 612, 200),
            entry(TOC_ENTRY_BLOB_META_HEADER, 812, 4096),
        ];
        let bytes = Toc::encode(&entries).unwrap();
        assert_eq!(bytes.len(), 3 * 128 + 512);
        assert_eq!(&bytes[128..256], &entries[1].to_bytes());
        assert_eq!(&bytes[384..], &tar_header(TOC_ENTRY_BLOB_TOC, 384).unwrap());
        let toc = Toc::parse_from_tail(&bytes).unwrap();
        assert_eq!(toc.entries(), &entries);
        assert_eq!(toc.size(), 896);
        assert_eq!(toc.digest(), blob_toc_digest(&bytes));
        assert_eq!(toc.digest(), <[u8; 32]>::from(Sha256::digest(&bytes)));
        assert_eq!(toc.find(TOC_ENTRY_BLOB_META), Some(&entries[1]));
        assert_eq!(toc.find(TOC_ENTRY_BOOTSTRAP), None);
        // A longer tail (the last 4096 bytes of a blob) gives the same TOC.
        let mut tail = vec![0xabu8; 4096 - bytes.len()];
        tail.extend_from_slice(&bytes);
        assert_eq!(Toc::parse_from_tail(&tail), Ok(toc));
        // An empty TOC is just its header.
        let empty = Toc::encode(&[]).unwrap();
        assert_eq!(Toc::parse_from_tail(&empty).unwrap().entries(), &[]);
    }

    #[test]
    fn toc_parse_rejections() {
        let entries = [
            entry(TOC_ENTRY_BLOB_RAW, 0, 100),
            entry(TOC_ENTRY_BLOB_DIGEST, 612, 64),
        ];
        let bytes = Toc::encode(&entries).unwrap();
        let with_header = |entries: &[u8], name: &str, size: u64| {
            let mut out = entries.to_vec();
            out.extend_from_slice(&tar_header(name, size).unwrap());
            out
        };
        assert!(matches!(
            Toc::parse_from_tail(&bytes[..511]),
            Err(FormatError::Truncated { .. })
        ));
        assert!(matches!(
            Toc::parse_from_tail(&with_header(&bytes[..256], TOC_ENTRY_BOOTSTRAP, 256)),
            Err(FormatError::Invalid { what: "Toc", .. })
        ));
        assert_eq!(
            field_of(Toc::parse_from_tail(&with_header(
                &bytes[..256],
                TOC_ENTRY_BLOB_TOC,
                200
            ))),
            "size"
        );
        assert_eq!(
            field_of(Toc::parse_from_tail(&with_header(
                &bytes[..256],
                TOC_ENTRY_BLOB_TOC,
                384
            ))),
            "size"
        );
        let huge = vec![0u8; TOC_MAX_SIZE];
        assert_eq!(
            field_of(Toc::parse_from_tail(&with_header(
                &huge,
                TOC_ENTRY_BLOB_TOC,
                TOC_MAX_SIZE as u64
            ))),
            "size"
        );
        let mut corrupt = bytes.clone();
        corrupt[128] = 9; // entry 1's flags
        let err = Toc::parse_from_tail(&corrupt).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::BadField {
                    field: "flags",
                    offset: 128,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("entry 1:"), "{err}");
        let dup = [entries[0], entries[0]];
        let mut raw: Vec<u8> = dup.iter().flat_map(|e| e.to_bytes()).collect();
        raw = with_header(&raw, TOC_ENTRY_BLOB_TOC, 256);
        let err = Toc::parse_from_tail(&raw).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::BadField {
                    field: "name",
                    offset: 136,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(Toc::encode(&dup).is_err());
        let too_many = vec![entries[0]; TOC_MAX_SIZE / 128];
        assert!(Toc::encode(&too_many).is_err());
        let bad = TocEntry {
            flags: 0,
            ..entries[0]
        };
        assert!(Toc::encode(&[bad]).is_err());
    }

    /// A blob laid out the way nydus-image writes one with inline meta and a TOC.
    fn full_blob() -> (Vec<u8>, Vec<Section>) {
        let mut blob = Vec::new();
        let mut sections = Vec::new();
        for (name, len) in [
            (TOC_ENTRY_BLOB_RAW, 1000usize),
            (TOC_ENTRY_BLOB_META, 4096 + 70),
            (TOC_ENTRY_BLOB_DIGEST, 64),
            (TOC_ENTRY_BOOTSTRAP, 0),
            (TOC_ENTRY_BLOB_TOC, 256),
        ] {
            sections.push(Section {
                name,
                offset: blob.len() as u64,
                size: len as u64,
            });
            blob.extend(std::iter::repeat_n(name.len() as u8, len));
            blob.extend_from_slice(&tar_header(name, len as u64).unwrap());
        }
        (blob, sections)
    }

    #[test]
    fn sections_are_found_from_the_end() {
        let (blob, sections) = full_blob();
        assert_eq!(locate_sections(&blob), Ok(sections.clone()));
        // Without image.blob (ZRAN meta blob) and without TOC/digests (inline meta only).
        let zran_start = sections[1].offset as usize;
        let found = locate_sections(&blob[zran_start..]).unwrap();
        assert_eq!(found.len(), 4);
        assert_eq!(found[0].name, TOC_ENTRY_BLOB_META);
        assert_eq!(found[0].offset, 0);
        let inline_end = (sections[3].offset + 512) as usize;
        let names: Vec<&str> = locate_sections(&blob[..inline_end])
            .unwrap()
            .iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                TOC_ENTRY_BLOB_RAW,
                TOC_ENTRY_BLOB_META,
                TOC_ENTRY_BLOB_DIGEST,
                TOC_ENTRY_BOOTSTRAP
            ]
        );
    }

    #[test]
    fn section_walk_rejections() {
        let (blob, sections) = full_blob();
        let invalid = |b: &[u8]| matches!(locate_sections(b), Err(FormatError::Invalid { .. }));
        assert!(invalid(&[]), "empty blob");
        assert!(invalid(&blob[..blob.len() - 1]), "no header at the end");
        // Bytes before the first section.
        let mut prefixed = vec![0u8; 10];
        prefixed.extend_from_slice(&blob);
        assert!(invalid(&prefixed));
        let mut prefixed = vec![0u8; 600];
        prefixed.extend_from_slice(&blob);
        assert!(invalid(&prefixed));
        // A section repeated or out of order.
        let mut twice = blob.clone();
        twice.extend_from_slice(&tar_header(TOC_ENTRY_BLOB_TOC, 0).unwrap());
        assert!(invalid(&twice));
        let mut swapped = blob[..sections[2].offset as usize].to_vec();
        swapped.extend_from_slice(&tar_header(TOC_ENTRY_BLOB_RAW, 0).unwrap());
        assert!(invalid(&swapped));
        // Unknown name, size larger than what precedes.
        let mut unknown = blob.clone();
        unknown.extend_from_slice(&tar_header("other", 0).unwrap());
        assert!(invalid(&unknown));
        let mut oversize = blob.clone();
        oversize.extend_from_slice(&tar_header(TOC_ENTRY_BLOB_TOC, blob.len() as u64 + 1).unwrap());
        assert!(invalid(&oversize));
        let mut max = blob.clone();
        max.extend_from_slice(&tar_header(TOC_ENTRY_BLOB_TOC, u64::MAX).unwrap());
        assert!(invalid(&max));
    }

    /// The headers and TOC of the blobs Nydus 2.4.4 made (tests/fixtures) are byte for byte
    /// what this module writes.
    #[test]
    fn matches_blobs_written_by_nydus_2_4_4() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nydus-2.4.4");
        let mut seen = 0;
        for dir in std::fs::read_dir(root).unwrap() {
            let dir = dir.unwrap().path();
            if !dir.to_string_lossy().ends_with("-inline") {
                continue;
            }
            let blob = std::fs::read(dir.join("blob")).unwrap();
            let sections = locate_sections(&blob).unwrap();
            let names: Vec<&str> = sections.iter().map(|s| s.name).collect();
            assert_eq!(names, SECTION_ORDER);
            for s in &sections {
                let at = (s.offset + s.size) as usize;
                assert_eq!(
                    &blob[at..at + 512],
                    &tar_header(s.name, s.size).unwrap(),
                    "{dir:?} {}",
                    s.name
                );
            }
            let toc = Toc::parse_from_tail(&blob[blob.len() - TOC_TAIL_SIZE..]).unwrap();
            let toc_section = sections[4];
            assert_eq!(u64::from(toc.size()), toc_section.size + 512);
            assert_eq!(
                toc.digest(),
                blob_toc_digest(&blob[toc_section.offset as usize..])
            );
            let names: Vec<&str> = toc.entries().iter().map(|e| e.name().unwrap()).collect();
            assert_eq!(
                names,
                [
                    TOC_ENTRY_BLOB_RAW,
                    TOC_ENTRY_BLOB_META,
                    TOC_ENTRY_BLOB_META_HEADER,
                    TOC_ENTRY_BLOB_DIGEST,
                    TOC_ENTRY_BOOTSTRAP
                ]
            );
            // Re-encoding the parsed entries gives the blob's TOC bytes.
            assert_eq!(
                Toc::encode(toc.entries()).unwrap(),
                &blob[toc_section.offset as usize..]
            );
            for s in &sections[..4] {
                let e = toc.find(s.name).unwrap();
                assert_eq!(e.compressed_offset, s.offset, "{}", s.name);
                let stored = if s.name == TOC_ENTRY_BLOB_META {
                    s.size - 4096
                } else {
                    s.size
                };
                assert_eq!(e.compressed_size, stored, "{}", s.name);
            }
            // Nydus hashes the chunk data *and* its tar header for `image.blob`.
            let raw = toc.find(TOC_ENTRY_BLOB_RAW).unwrap();
            let data = &blob[..raw.compressed_size as usize];
            assert_ne!(raw.uncompressed_digest, blob_toc_digest(data));
            let with_header = &blob[..raw.compressed_size as usize + 512];
            assert_eq!(raw.uncompressed_digest, blob_toc_digest(with_header));
            let digests = toc.find(TOC_ENTRY_BLOB_DIGEST).unwrap();
            let at = digests.compressed_offset as usize;
            assert_eq!(
                digests.uncompressed_digest,
                blob_toc_digest(&blob[at..at + digests.compressed_size as usize])
            );
            let header = toc.find(TOC_ENTRY_BLOB_META_HEADER).unwrap();
            let at = header.compressed_offset as usize;
            assert_eq!(header.compressed_size, 4096);
            assert_eq!(
                header.uncompressed_digest,
                blob_toc_digest(&blob[at..at + 4096])
            );
            seen += 1;
        }
        assert_eq!(seen, 4);
    }

    fn section_name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._-]{1,100}".prop_filter("tar rewrites . and ..", |n| n != "." && n != "..")
    }

    fn any_size() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..1 << 20, (1u64 << 33) - 2..(1 << 33) + 2, any::<u64>()]
    }

    proptest! {
        #[test]
        fn tar_header_is_what_the_tar_crate_writes(name in section_name(), size in any_size()) {
            let h = tar_header(&name, size).unwrap();
            prop_assert_eq!(h, tar_crate_header(&name, size));
            prop_assert_eq!(parse_tar_header(&h), Ok((name.as_str(), size)));
        }

        #[test]
        fn parse_tar_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_tar_header(&bytes);
        }

        #[test]
        fn edited_headers_never_panic(at in 0usize..512, byte in any::<u8>(), seal in any::<bool>()) {
            let mut h = tar_header("image.boot", 1234).unwrap();
            h[at] = byte;
            if seal {
                reseal(&mut h);
            }
            let _ = parse_tar_header(&h);
        }

        #[test]
        fn toc_entries_round_trip(
            name in "[a-z.]{1,16}",
            flags in prop_oneof![Just(Compressor::None), Just(Compressor::Zstd), Just(Compressor::Lz4Block)],
            digest in any::<[u8; 32]>(),
            nums in any::<[u64; 3]>(),
        ) {
            let e = TocEntry::new(&name, flags, digest, nums[0], nums[1], nums[2]).unwrap();
            prop_assert_eq!(TocEntry::decode(&e.to_bytes()), Ok(e));
            prop_assert_eq!(e.name(), Ok(name.as_str()));
            prop_assert_eq!(e.compressor(), Ok(flags));
        }

        #[test]
        fn toc_encode_then_parse_is_identity(
            names in proptest::collection::btree_set("[a-z.]{1,16}", 0..20),
            offset in 0u64..1 << 40,
            pad in 0usize..300,
        ) {
            let entries: Vec<TocEntry> = names
                .iter()
                .enumerate()
                .map(|(i, n)| entry(n, offset + i as u64, i as u64))
                .collect();
            let bytes = Toc::encode(&entries).unwrap();
            let mut tail = vec![7u8; pad];
            tail.extend_from_slice(&bytes);
            let toc = Toc::parse_from_tail(&tail).unwrap();
            prop_assert_eq!(toc.entries(), entries.as_slice());
            prop_assert_eq!(toc.size() as usize, bytes.len());
            prop_assert_eq!(toc.digest(), blob_toc_digest(&bytes));
            for n in &names {
                prop_assert!(toc.find(n).is_some());
            }
        }

        #[test]
        fn toc_and_section_parsers_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            name in prop_oneof![Just(TOC_ENTRY_BLOB_TOC), Just(TOC_ENTRY_BOOTSTRAP), Just(TOC_ENTRY_BLOB_RAW)],
            size in prop_oneof![0u64..2000, any::<u64>()],
        ) {
            let _ = Toc::parse_from_tail(&bytes);
            let _ = locate_sections(&bytes);
            let mut with_header = bytes.clone();
            with_header.extend_from_slice(&tar_header(name, size).unwrap());
            let _ = Toc::parse_from_tail(&with_header);
            let _ = locate_sections(&with_header);
        }

        #[test]
        fn sections_round_trip(present in any::<[bool; 5]>(), sizes in any::<[u16; 5]>()) {
            let mut blob = Vec::new();
            let mut expected = Vec::new();
            for i in 0..5 {
                if !present[i] {
                    continue;
                }
                let size = usize::from(sizes[i]);
                expected.push(Section {
                    name: SECTION_ORDER[i],
                    offset: blob.len() as u64,
                    size: size as u64,
                });
                blob.resize(blob.len() + size, i as u8);
                blob.extend_from_slice(&tar_header(SECTION_ORDER[i], size as u64).unwrap());
            }
            let found = locate_sections(&blob);
            if expected.is_empty() {
                prop_assert!(found.is_err());
            } else {
                prop_assert_eq!(found, Ok(expected));
            }
        }
    }
}
