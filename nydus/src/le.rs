//! Little-endian field access for fixed-size on-disk structures.
//!
//! Decoders first turn the input into a `&[u8; N]` with [`fixed`] (the only place that looks at
//! the input length); the accessors then read fields at constant offsets inside that array.

use crate::FormatError;

/// The first `N` bytes of `bytes`, or [`FormatError::Truncated`] naming `what`.
pub(crate) fn fixed<'a, const N: usize>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<&'a [u8; N], FormatError> {
    bytes
        .get(..N)
        .and_then(|b| <&[u8; N]>::try_from(b).ok())
        .ok_or(FormatError::Truncated {
            what,
            need: N,
            have: bytes.len(),
        })
}

/// `M` bytes at `off`.
pub(crate) fn array<const M: usize>(b: &[u8], off: usize) -> [u8; M] {
    let mut a = [0u8; M];
    a.copy_from_slice(&b[off..off + M]);
    a
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(array(b, off))
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(array(b, off))
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(array(b, off))
}

pub(crate) fn put(out: &mut [u8], off: usize, bytes: &[u8]) {
    out[off..off + bytes.len()].copy_from_slice(bytes);
}

pub(crate) fn put_u16(out: &mut [u8], off: usize, v: u16) {
    put(out, off, &v.to_le_bytes());
}

pub(crate) fn put_u32(out: &mut [u8], off: usize, v: u32) {
    put(out, off, &v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut [u8], off: usize, v: u64) {
    put(out, off, &v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_checks_length_and_ignores_the_rest() {
        let bytes = [1u8, 2, 3, 4, 5];
        assert_eq!(fixed::<4>(&bytes, "x").unwrap(), &[1, 2, 3, 4]);
        assert_eq!(
            fixed::<8>(&bytes, "x"),
            Err(FormatError::Truncated {
                what: "x",
                need: 8,
                have: 5
            })
        );
    }

    #[test]
    fn reads_and_writes_little_endian() {
        let mut b = [0u8; 14];
        put_u16(&mut b, 0, 0x0102);
        put_u32(&mut b, 2, 0x0304_0506);
        put_u64(&mut b, 6, 0x0708_090a_0b0c_0d0e);
        assert_eq!(b, [2, 1, 6, 5, 4, 3, 0xe, 0xd, 0xc, 0xb, 0xa, 9, 8, 7]);
        assert_eq!(u16_at(&b, 0), 0x0102);
        assert_eq!(u32_at(&b, 2), 0x0304_0506);
        assert_eq!(u64_at(&b, 6), 0x0708_090a_0b0c_0d0e);
    }
}
