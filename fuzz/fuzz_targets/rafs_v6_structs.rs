//! RAFS v6 bootstrap structures decoded and validated from untrusted bytes
//! (a bootstrap fetched from a registry): superblocks at their file offsets,
//! a blob table entry, an inode, a dirent, a chunk address, a chunk info entry
//! and the prefetch table. None may panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nydus::v6::{
    prefetch_nids, BlobEntry, ChunkAddr, Dirent, Inode, SuperBlock, SuperBlockExt,
};
use nydus::ChunkInfo;

fuzz_target!(|bytes: &[u8]| {
    let size = bytes.len() as u64;
    let at = |off: usize| bytes.get(off..).unwrap_or_default();
    if let Ok(sb) = SuperBlock::decode(at(1024)) {
        let _ = sb.validate(size);
        if let Ok(ext) = SuperBlockExt::decode(at(1152)) {
            let _ = ext.validate(&sb, size);
            if let Ok(blob) = BlobEntry::decode(bytes) {
                let _ = blob.validate(0, 1 << 20, ext.flags);
            }
        }
    }
    let _ = Inode::decode(bytes);
    let _ = Dirent::decode(bytes);
    let _ = ChunkAddr::decode(bytes);
    let _ = ChunkInfo::decode(bytes);
    if let Ok(nids) = prefetch_nids(bytes) {
        for _ in nids {}
    }
});
