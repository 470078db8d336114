//! A whole RAFS v6 bootstrap from untrusted bytes: parse it, walk every path
//! and call each accessor on what the walk finds. Nothing may panic or loop.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nydus::v6::Bootstrap;
use nydus::FormatError;

fuzz_target!(|bytes: &[u8]| {
    let Ok(b) = Bootstrap::parse(bytes) else { return };
    let _ = b.walk(|e| -> Result<(), FormatError> {
        let _ = b.xattrs(e.inode);
        let _ = b.read_dir(e.inode);
        let _ = b.read_link(e.inode);
        let _ = b.chunks(e.inode);
        Ok(())
    });
    let _ = b.lookup(b"a/b/../c");
    // What merge, unpack and check build from a bootstrap.
    let _ = b.to_tree();
    for i in 0..b.chunk_info_count().min(16) {
        let _ = b.chunk_info(i);
    }
});
