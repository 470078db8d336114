//! `Range` request header parsing (single byte range).

/// A parsed `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (b inclusive) or `bytes=a-` (b = None).
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// Why a Range header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("invalid Range header {0:?}: expected bytes=<start>-<end>, bytes=<start>- or bytes=-<length>")]
    Malformed(String),
    #[error("multiple ranges are not supported: {0:?}")]
    Multiple(String),
    #[error("range {0:?} is not satisfiable for {1} bytes")]
    Unsatisfiable(String, u64),
}

/// Parses a `Range` header value.
pub fn parse(v: &str) -> Result<ByteRange, RangeError> {
    let bad = || RangeError::Malformed(v.to_string());
    let spec = v.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(RangeError::Multiple(v.to_string()));
    }
    let (a, b) = spec.trim().split_once('-').ok_or_else(bad)?;
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Result<u64, RangeError> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    if a.is_empty() {
        return Ok(ByteRange::Suffix(num(b)?));
    }
    let start = num(a)?;
    if b.is_empty() {
        return Ok(ByteRange::From { start, end: None });
    }
    let end = num(b)?;
    if end < start {
        return Err(bad());
    }
    Ok(ByteRange::From {
        start,
        end: Some(end),
    })
}

impl ByteRange {
    /// Resolves to `[start, end)` within `len` bytes.
    pub fn resolve(&self, len: u64, raw: &str) -> Result<(u64, u64), RangeError> {
        let unsat = || RangeError::Unsatisfiable(raw.to_string(), len);
        match *self {
            ByteRange::From { start, end } => {
                if start >= len {
                    return Err(unsat());
                }
                let end = end.map(|e| e.min(len - 1)).unwrap_or(len - 1);
                Ok((start, end + 1))
            }
            ByteRange::Suffix(n) => {
                if n == 0 || len == 0 {
                    return Err(unsat());
                }
                Ok((len - n.min(len), len))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        let r = |s: &str, len| parse(s).and_then(|r| r.resolve(len, s));
        assert_eq!(r("bytes=0-0", 10), Ok((0, 1)));
        assert_eq!(r("bytes=2-", 10), Ok((2, 10)));
        assert_eq!(r("bytes=-3", 10), Ok((7, 10)));
        assert_eq!(r("bytes=-30", 10), Ok((0, 10)));
        assert_eq!(r("bytes=5-100", 10), Ok((5, 10)));
        assert!(matches!(
            r("bytes=10-", 10),
            Err(RangeError::Unsatisfiable(..))
        ));
        assert!(matches!(
            r("bytes=-0", 10),
            Err(RangeError::Unsatisfiable(..))
        ));
        assert!(matches!(r("bytes=5-2", 10), Err(RangeError::Malformed(_))));
        assert!(matches!(r("bytes=a-b", 10), Err(RangeError::Malformed(_))));
        assert!(matches!(r("items=0-1", 10), Err(RangeError::Malformed(_))));
        assert!(matches!(r("bytes=+1-2", 10), Err(RangeError::Malformed(_))));
        assert!(matches!(
            r("bytes=0-1,3-4", 10),
            Err(RangeError::Multiple(_))
        ));
        assert!(matches!(
            r("bytes=99999999999999999999-", 10),
            Err(RangeError::Malformed(_))
        ));
    }
}
