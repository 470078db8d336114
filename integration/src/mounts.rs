//! Mount-table helpers, so nothing a test mounted outlives it (and `remove_dir_all` never walks
//! into a live overlay mount).

use std::path::{Path, PathBuf};

use rustix::mount::{unmount, UnmountFlags};

/// Mount points at or below `dir`, deepest first, from /proc/self/mountinfo.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = parse_mount_points(&info)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    // Deepest first, so nested mounts go before their parents.
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmounts everything at or below `dir` (lazily if a plain unmount fails). Returns the mount
/// points that could not be unmounted at all.
pub(crate) fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    let mut stuck = Vec::new();
    // A path can be mounted over several times; repeat until the table is clean or stuck.
    for _ in 0..4 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return Vec::new();
        }
        stuck.clear();
        for m in mounts {
            if unmount(&m, UnmountFlags::empty()).is_err()
                && unmount(&m, UnmountFlags::DETACH).is_err()
            {
                stuck.push(m);
            }
        }
    }
    stuck
}

/// The mount points (field 5) of a mountinfo text, with its octal escapes undone.
fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .collect()
}

/// Undoes mountinfo's `\040`-style escapes (space, tab, newline, backslash).
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_points_with_escapes() {
        let info = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /tmp/x/overlay rw - overlay overlay rw,lowerdir=/a\n";
        assert_eq!(
            parse_mount_points(info),
            vec![
                PathBuf::from("/mnt/with space"),
                PathBuf::from("/tmp/x/overlay")
            ]
        );
        assert_eq!(unescape_octal("a\\134b"), "a\\b");
        assert_eq!(unescape_octal("trailing\\"), "trailing\\");
    }
}
