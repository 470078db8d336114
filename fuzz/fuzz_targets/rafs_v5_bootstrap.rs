//! A whole RAFS v5 bootstrap from untrusted bytes: parse it, walk every path
//! and call each accessor on what the walk finds. Nothing may panic or loop.
//!
//! A v5 bootstrap starts with an 8 KiB superblock, longer than libFuzzer's
//! default `-max_len` (4096). So each input is also tried with its first 80
//! bytes as the superblock fields, zeros up to 8192 and the rest after that.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nydus::v5::BootstrapV5;
use nydus::FormatError;

fn check(bytes: &[u8]) {
    let Ok(b) = BootstrapV5::parse(bytes) else { return };
    let _ = b.prefetch_inos().count();
    let _ = b.walk(|e| -> Result<(), FormatError> {
        let _ = b.xattrs(e.inode);
        let _ = b.read_dir(e.inode);
        let _ = b.read_link(e.inode);
        let _ = b.chunks(e.inode);
        Ok(())
    });
    let _ = b.lookup(b"a/b/../c");
    for ino in 0..b.max_ino().min(16) + 2 {
        if let Ok(i) = b.inode(ino) {
            let _ = b.xattrs(&i);
            let _ = b.read_dir(&i);
            let _ = b.chunks(&i);
        }
    }
    // What conversion and inspection build from a bootstrap.
    let _ = b.to_tree();
}

fuzz_target!(|bytes: &[u8]| {
    check(bytes);
    let head = bytes.len().min(80);
    let mut img = bytes[..head].to_vec();
    img.resize(8192, 0);
    img.extend_from_slice(&bytes[head..]);
    check(&img);
});
