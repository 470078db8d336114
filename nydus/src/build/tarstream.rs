//! A streaming reader of layer tars at the header level: ustar/GNU headers (decoded by the `tar`
//! crate's `Header`), PAX extended headers and GNU long names applied to the entry they
//! precede, data handed out as a bounded reader.
//!
//! PAX records are parsed by their length prefix, so values holding any bytes (binary xattrs such
//! as `security.capability` often contain a newline) are read correctly.

use std::collections::BTreeMap;
use std::io::{self, Read};

/// Largest PAX header or GNU long name accepted.
const MAX_EXTENSION: u64 = 1 << 20;

/// One tar entry's header, with PAX and GNU extensions applied.
#[derive(Debug, Clone, Default)]
pub struct TarHeader {
    /// Entry type flag (`b'0'` regular, `b'5'` directory, ...).
    pub typeflag: u8,
    /// Path as stored.
    pub path: Vec<u8>,
    /// Link target (symlinks and hardlinks).
    pub link: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (u64, u32),
    /// Data size.
    pub size: u64,
    /// Device numbers.
    pub dev: (u32, u32),
    /// `SCHILY.xattr.*` records.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Parses PAX records (`"<len> <key>=<value>\n"`, `len` counting the whole record).
pub fn parse_pax(data: &[u8]) -> io::Result<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // Some writers pad the record area with NULs.
        if rest.iter().all(|b| *b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .take(20)
            .position(|b| *b == b' ')
            .ok_or_else(|| bad("PAX record without a length"))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("PAX record length is not a number"))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad("PAX record length does not match its contents"));
        }
        let record = &rest[sp + 1..len - 1];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| bad("PAX record without '='"))?;
        out.push((&record[..eq], &record[eq + 1..]));
        rest = &rest[len..];
    }
    Ok(out)
}

/// Parses a PAX time ("seconds[.fraction]") into seconds and nanoseconds (negative → 0).
pub fn pax_time(v: &[u8]) -> Option<(u64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut nsec = 0u32;
    for (i, c) in frac.bytes().take(9).enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        nsec += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
    }
    Some((sec.max(0) as u64, nsec))
}

fn pax_u64(v: &[u8], key: &str) -> io::Result<u64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("PAX {key} is not a number")))
}

/// A numeric header field; an empty one (all NUL or spaces, as some writers leave unused fields)
/// is 0, like Go's archive/tar reads it.
fn numeric(parsed: io::Result<u64>, raw: &[u8], what: &str) -> io::Result<u64> {
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(_) => Err(bad(format!("invalid {what} field"))),
    }
}

/// Reads entries from a tar stream.
pub struct TarStream<R: Read> {
    r: R,
    /// Data bytes (plus padding) of the current entry not read yet.
    left: u64,
    pad: u64,
}

impl<R: Read> TarStream<R> {
    /// A reader over `r`.
    pub fn new(r: R) -> Self {
        TarStream { r, left: 0, pad: 0 }
    }

    fn skip_rest(&mut self) -> io::Result<()> {
        let n = self.left + self.pad;
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        if copied != n {
            return Err(bad("tar stream ends inside an entry"));
        }
        self.left = 0;
        self.pad = 0;
        Ok(())
    }

    fn read_extension(&mut self, size: u64, what: &str) -> io::Result<Vec<u8>> {
        if size > MAX_EXTENSION {
            return Err(bad(format!(
                "{what} of {size} bytes (limit {MAX_EXTENSION})"
            )));
        }
        let mut buf = vec![0u8; size as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|_| bad("tar stream ends inside an extension header"))?;
        self.left = 0;
        // size <= MAX_EXTENSION: no overflow.
        self.pad = size.next_multiple_of(512) - size;
        self.skip_rest()?;
        Ok(buf)
    }

    /// The next entry's header, or `None` at the end of the archive. Data of the previous entry
    /// that was not read is skipped.
    pub fn next_header(&mut self) -> io::Result<Option<TarHeader>> {
        self.skip_rest()?;
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        // All extension headers in front of one entry together stay under MAX_EXTENSION.
        let mut extension_bytes = 0u64;
        loop {
            let mut block = [0u8; 512];
            let mut got = 0;
            while got < 512 {
                let n = self.r.read(&mut block[got..])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            if got == 0 {
                if pax.is_empty() && long_name.is_none() && long_link.is_none() {
                    return Ok(None);
                }
                return Err(bad("tar stream ends after an extension header"));
            }
            if got < 512 {
                return Err(bad("tar stream ends inside a header"));
            }
            if block.iter().all(|b| *b == 0) {
                return Ok(None);
            }
            let h = tar::Header::from_byte_slice(&block);
            let sum: u32 = block
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if (148..156).contains(&i) {
                        u32::from(b' ')
                    } else {
                        u32::from(*b)
                    }
                })
                .sum();
            if h.cksum()
                .map_err(|_| bad("invalid header checksum field"))?
                != sum
            {
                return Err(bad("tar header checksum mismatch"));
            }
            let size = numeric(h.entry_size(), &block[124..136], "size")?;
            let typeflag = block[156];
            if matches!(typeflag, b'x' | b'g' | b'L' | b'K') {
                extension_bytes = extension_bytes.saturating_add(size);
                if extension_bytes > MAX_EXTENSION {
                    return Err(bad(format!(
                        "extension headers of one entry come to more than {MAX_EXTENSION} bytes"
                    )));
                }
            }
            match typeflag {
                b'x' => {
                    let data = self.read_extension(size, "PAX header")?;
                    for (k, v) in parse_pax(&data)? {
                        pax.push((k.to_vec(), v.to_vec()));
                    }
                    continue;
                }
                b'g' => {
                    // Global defaults: nothing in them changes how layers are built.
                    let data = self.read_extension(size, "PAX global header")?;
                    parse_pax(&data)?;
                    continue;
                }
                b'L' => {
                    let mut name = self.read_extension(size, "GNU long name")?;
                    while name.last() == Some(&0) {
                        name.pop();
                    }
                    long_name = Some(name);
                    continue;
                }
                b'K' => {
                    let mut name = self.read_extension(size, "GNU long link name")?;
                    while name.last() == Some(&0) {
                        name.pop();
                    }
                    long_link = Some(name);
                    continue;
                }
                _ => {}
            }
            let mut e = TarHeader {
                typeflag,
                path: long_name
                    .take()
                    .unwrap_or_else(|| h.path_bytes().into_owned()),
                link: long_link
                    .take()
                    .or_else(|| h.link_name_bytes().map(|l| l.into_owned()))
                    .unwrap_or_default(),
                mode: numeric(h.mode().map(u64::from), &block[100..108], "mode")? as u32,
                uid: numeric(h.uid(), &block[108..116], "uid")?,
                gid: numeric(h.gid(), &block[116..124], "gid")?,
                mtime: (numeric(h.mtime(), &block[136..148], "mtime")?, 0),
                size,
                dev: (
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                ),
                xattrs: BTreeMap::new(),
            };
            for (k, v) in pax {
                match k.as_slice() {
                    b"path" => e.path = v,
                    b"linkpath" => e.link = v,
                    b"size" => e.size = pax_u64(&v, "size")?,
                    b"uid" => e.uid = pax_u64(&v, "uid")?,
                    b"gid" => e.gid = pax_u64(&v, "gid")?,
                    b"mtime" => {
                        e.mtime = pax_time(&v).ok_or_else(|| bad("PAX mtime is not a time"))?
                    }
                    k if k.starts_with(b"SCHILY.xattr.") => {
                        e.xattrs.insert(k[b"SCHILY.xattr.".len()..].to_vec(), v);
                    }
                    k if k.starts_with(b"GNU.sparse.") => {
                        return Err(bad("GNU sparse entries are not supported in layers"));
                    }
                    _ => {}
                }
            }
            // Only regular files (and old-style contiguous files) carry data that is content.
            self.left = match typeflag {
                b'1' | b'2' | b'3' | b'4' | b'5' | b'6' => 0,
                _ => e.size,
            };
            // Data blocks follow even when the size is meaningless for the type.
            let stored = if matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
                size
            } else {
                e.size
            };
            self.pad = stored
                .checked_next_multiple_of(512)
                .ok_or_else(|| bad(format!("entry size {stored} is too large")))?
                - self.left;
            return Ok(Some(e));
        }
    }

    /// Reader over the current entry's data.
    pub fn data(&mut self) -> impl Read + '_ {
        EntryData { s: self }
    }
}

struct EntryData<'a, R: Read> {
    s: &'a mut TarStream<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.s.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.s.left.min(usize::MAX as u64) as usize);
        let n = self.s.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(bad("tar stream ends inside a file's data"));
        }
        self.s.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(k: &str, v: &[u8]) -> Vec<u8> {
        let body = [k.as_bytes(), b"=", v, b"\n"].concat();
        let mut len = body.len() + 2;
        loop {
            let l = len.to_string().len() + 1 + body.len();
            if l == len {
                break;
            }
            len = l;
        }
        [format!("{len} ").as_bytes(), &body].concat()
    }

    #[test]
    fn pax_values_may_hold_newlines() {
        let data = [
            record("SCHILY.xattr.security.capability", b"\x01\n\x02"),
            record("path", b"a/b"),
        ]
        .concat();
        let recs = parse_pax(&data).unwrap();
        assert_eq!(recs[0].1, b"\x01\n\x02");
        assert_eq!(recs[1], (&b"path"[..], &b"a/b"[..]));
        assert!(parse_pax(b"5 a=b\n").is_err());
        assert!(parse_pax(b"99 a=b\n").is_err());
        assert!(parse_pax(b"x a=b\n").is_err());
        assert!(parse_pax(b"7 ab\nxx").is_err());
    }

    #[test]
    fn pax_times_parse_with_fractions() {
        assert_eq!(
            pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(pax_time(b"12"), Some((12, 0)));
        assert_eq!(pax_time(b"-5.1"), Some((0, 100_000_000)));
        assert_eq!(pax_time(b"x"), None);
    }

    #[test]
    fn entries_with_extensions_and_data_are_read_in_order() {
        let mut ar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o640);
        h.set_entry_type(tar::EntryType::Regular);
        ar.append_pax_extensions([("SCHILY.xattr.user.x", &b"a\nb"[..]), ("mtime", b"10.25")])
            .unwrap();
        ar.append_data(&mut h, "d/".to_string() + &"n".repeat(200), &b"hello"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        ar.append_link(&mut h, "l", "t".repeat(300)).unwrap();
        let bytes = ar.into_inner().unwrap();
        let mut s = TarStream::new(&bytes[..]);
        let e = s.next_header().unwrap().unwrap();
        assert_eq!(e.path.len(), 202);
        assert_eq!(e.xattrs[&b"user.x"[..]], b"a\nb");
        assert_eq!(e.mtime, (10, 250_000_000));
        assert_eq!(e.mode, 0o640);
        let mut d = Vec::new();
        s.data().read_to_end(&mut d).unwrap();
        assert_eq!(d, b"hello");
        let e = s.next_header().unwrap().unwrap();
        assert_eq!((e.typeflag, e.link.len()), (b'2', 300));
        assert!(s.next_header().unwrap().is_none());
    }

    #[test]
    fn truncated_or_corrupt_streams_are_errors() {
        let mut ar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1000);
        ar.append_data(&mut h, "f", &vec![1u8; 1000][..]).unwrap();
        let bytes = ar.into_inner().unwrap();
        let mut s = TarStream::new(&bytes[..700]);
        s.next_header().unwrap().unwrap();
        assert!(s.data().read_to_end(&mut Vec::new()).is_err());
        let mut bad_sum = bytes.clone();
        bad_sum[0] ^= 1;
        assert!(TarStream::new(&bad_sum[..]).next_header().is_err());
        assert!(TarStream::new(&bytes[..100]).next_header().is_err());
    }

    /// The error reading the first header of the archive `ar` built.
    fn first_header_error(ar: tar::Builder<Vec<u8>>) -> String {
        let bytes = ar.into_inner().unwrap();
        TarStream::new(&bytes[..])
            .next_header()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn extension_headers_of_one_entry_are_bounded_together() {
        let mut ar = tar::Builder::new(Vec::new());
        let big = vec![b'v'; 400 << 10];
        for k in [
            "SCHILY.xattr.user.a",
            "SCHILY.xattr.user.b",
            "SCHILY.xattr.user.c",
        ] {
            ar.append_pax_extensions([(k, &big[..])]).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        ar.append_data(&mut h, "f", &b""[..]).unwrap();
        let err = first_header_error(ar);
        assert!(err.contains("extension headers of one entry"), "{err}");
    }

    #[test]
    fn an_entry_size_near_u64_max_is_an_error() {
        let mut ar = tar::Builder::new(Vec::new());
        let size = format!("{}", u64::MAX - 10);
        ar.append_pax_extensions([("size", size.as_bytes())])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        ar.append_data(&mut h, "f", &b""[..]).unwrap();
        let err = first_header_error(ar);
        assert!(err.contains("too large"), "{err}");
    }
}
