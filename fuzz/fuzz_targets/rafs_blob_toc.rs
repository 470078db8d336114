//! The end of a data blob from untrusted bytes: a reverse tar header, the TOC read from the
//! tail, single TOC entries and the backwards walk over all sections. None may panic or loop.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nydus::toc::{locate_sections, parse_tar_header, Toc, TocEntry};

fuzz_target!(|bytes: &[u8]| {
    let _ = parse_tar_header(bytes);
    if let Some(tail) = bytes.len().checked_sub(512).map(|at| &bytes[at..]) {
        let _ = parse_tar_header(tail);
    }
    if let Ok(e) = TocEntry::decode(bytes) {
        let _ = e.validate();
        let _ = e.name();
        let _ = e.compressor();
    }
    if let Ok(toc) = Toc::parse_from_tail(bytes) {
        for e in toc.entries() {
            let _ = toc.find(e.name().unwrap_or_default());
        }
        let _ = (toc.digest(), toc.size());
    }
    if let Ok(sections) = locate_sections(bytes) {
        for s in sections {
            let end = s.offset + s.size + 512;
            assert!(end <= bytes.len() as u64, "section {s:?} outside the blob");
        }
    }
});
