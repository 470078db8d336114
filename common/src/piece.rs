//! Dragonfly's piece-length rule and piece arithmetic.

/// Smallest piece Dragonfly uses (4 MiB).
pub const MIN_PIECE_LENGTH: u64 = 4 * 1024 * 1024;
/// Largest computed piece (64 MiB).
pub const MAX_PIECE_LENGTH: u64 = 64 * 1024 * 1024;
/// Largest piece length a user may ask for (Vortex carries pieces up to 1 GiB).
pub const MAX_USER_PIECE_LENGTH: u64 = 1024 * 1024 * 1024;
/// Target upper bound on the number of pieces of a task.
pub const MAX_PIECE_COUNT: u64 = 500;

/// Piece length for a task of `content_length` bytes: the next power of two of
/// `content_length / 500`, clamped to 4 MiB..=64 MiB.
pub fn piece_length_for(content_length: u64) -> u64 {
    let raw = content_length / MAX_PIECE_COUNT;
    let pow2 = raw.checked_next_power_of_two().unwrap_or(MAX_PIECE_LENGTH);
    pow2.clamp(MIN_PIECE_LENGTH, MAX_PIECE_LENGTH)
}

/// Whether a user-supplied piece length is acceptable (4 MiB..=1 GiB).
pub fn valid_user_piece_length(n: u64) -> bool {
    (MIN_PIECE_LENGTH..=MAX_USER_PIECE_LENGTH).contains(&n)
}

/// Number of pieces of a task (`ceil(content_length / piece_length)`); 0 for an empty task.
pub fn piece_count(content_length: u64, piece_length: u64) -> u32 {
    if piece_length == 0 {
        return 0;
    }
    u32::try_from(content_length.div_ceil(piece_length)).unwrap_or(u32::MAX)
}

/// Offset and length of piece `number`.
pub fn piece_range(number: u32, content_length: u64, piece_length: u64) -> (u64, u64) {
    let offset = u64::from(number) * piece_length;
    let len = content_length.saturating_sub(offset).min(piece_length);
    (offset, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn piece_length_follows_dragonfly_rule() {
        assert_eq!(piece_length_for(0), 4 * MIB);
        assert_eq!(piece_length_for(100 * MIB), 4 * MIB);
        assert_eq!(piece_length_for(2000 * MIB), 4 * MIB);
        // 3 GiB / 500 = 6.1 MiB -> 8 MiB
        assert_eq!(piece_length_for(3 * 1024 * MIB), 8 * MIB);
        assert_eq!(piece_length_for(40 * 1024 * MIB), 64 * MIB);
        assert_eq!(piece_length_for(u64::MAX), 64 * MIB);
    }

    #[test]
    fn piece_count_and_range() {
        assert_eq!(piece_count(0, 4 * MIB), 0);
        assert_eq!(piece_count(1, 4 * MIB), 1);
        assert_eq!(piece_count(4 * MIB, 4 * MIB), 1);
        assert_eq!(piece_count(4 * MIB + 1, 4 * MIB), 2);
        assert_eq!(piece_range(1, 4 * MIB + 1, 4 * MIB), (4 * MIB, 1));
        assert_eq!(piece_range(0, 10, 4 * MIB), (0, 10));
    }
}
