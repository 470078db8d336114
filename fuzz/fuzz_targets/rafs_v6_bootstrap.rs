//! A whole RAFS v6 bootstrap from untrusted bytes: parse it, walk every path
//! and call each accessor on what the walk finds. Nothing may panic or loop.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nydus::v6::{write_bootstrap, Bootstrap, WriteOptions};
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
    // What merge, unpack and check build from a bootstrap, and what merge writes back.
    if let Ok(tree) = b.to_tree() {
        let _ = tree.walk().count();
        let opts = WriteOptions {
            chunk_size: b.ext_superblock().chunk_size,
            flags: b.ext_superblock().flags,
            prefetch: vec![b"/a".to_vec()],
            share_xattrs: bytes.len() % 2 == 0,
        };
        if let Ok(out) = write_bootstrap(&tree, b.blobs(), &opts) {
            let again = Bootstrap::parse(&out).and_then(|b| b.to_tree());
            assert!(again.is_ok(), "written bootstrap does not parse: {again:?}");
        }
    }
    for i in 0..b.chunk_info_count().min(16) {
        let _ = b.chunk_info(i);
    }
});
