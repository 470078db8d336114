//! Vortex frames from other peers (requests on the server, replies on the client).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut r = data;
        let _ = dfdaemon::vortex::read_frame(&mut r, dfdaemon::vortex::MAX_METADATA_VALUE).await;
    });
    let _ = dfdaemon::vortex::decode_frame(&bytes::Bytes::copy_from_slice(data));
});
