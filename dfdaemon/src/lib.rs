//! Node agent library: config, piece store, back-to-source engine, registry
//! mirror / proxy, download API, GC and telemetry.

pub mod backend;
pub mod config;
pub mod daemon;
pub mod dfget;
pub mod dfinit;
pub mod download;
pub mod dynconfig;
pub mod gc;
pub mod grpc;
pub mod lazy;
pub mod metrics;
pub mod p2p;
pub mod parent;
pub mod proxy;
pub mod rate_limit;
pub mod registry_auth;
pub mod runtime;
pub mod scheduler_client;
pub mod storage;
pub mod transport;
pub mod vortex;

/// glibc raises its mmap threshold to the size of a freed large block, after which large zeroed
/// allocations come from the heap and are written whole. Every FUSE worker of an image mount
/// allocates a 16 MiB request buffer of which requests touch a page or two: with the moving
/// threshold 20 mounts cost about 450 MB resident, with a fixed one about 30 MB
/// (hack/bench/lazy.sh). A fixed threshold keeps large blocks mmapped: 4 MiB, above the
/// buffers of the data path (the HTTP client's read buffers, up to a few hundred KiB each,
/// one per received chunk), which come from the heap and are reused: mmapped, each would
/// cost page faults and zeroing on every chunk (a fifth of a cold fetch's CPU time). A fixed
/// threshold also fixes the trim threshold, which is raised to 32 MiB so that freed heap at
/// the top is not handed back and faulted in again chunk after chunk. Call it first thing in
/// `main`, before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn fix_mmap_threshold() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only sets allocator tunables; it runs once, first thing in main,
    // before any other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        mallopt(M_TRIM_THRESHOLD, 32 * 1024 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn fix_mmap_threshold() {}
