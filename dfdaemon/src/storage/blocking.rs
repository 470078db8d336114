//! File I/O of the store from async code. On the runtime's workers it goes to the blocking
//! pool (a slow disk must not stall other tasks); on a thread that already waits for the
//! result (a FUSE worker inside [`as_blocking_caller`]) it runs in place, saving two thread
//! hand-offs on every lazily loaded read.

use std::cell::Cell;

thread_local! {
    static BLOCKING_CALLER: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (which drives futures with `Handle::block_on` on this thread, outside the runtime)
/// with the store's file I/O done in place on this thread.
pub fn as_blocking_caller<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            BLOCKING_CALLER.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(BLOCKING_CALLER.with(|c| c.replace(true)));
    f()
}

/// Runs blocking `f`: in place inside [`as_blocking_caller`], else on the blocking pool.
pub async fn blocking<R, F>(f: F) -> std::io::Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if BLOCKING_CALLER.with(Cell::get) {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Reads `buf.len()` bytes of `file` at `off`: what the page cache holds in place, on this
/// thread (`preadv2` with `RWF_NOWAIT`: the bytes stay in this core's cache for the send that
/// follows), the rest, which may wait for the disk, through [`blocking`]. Gives the buffer back.
pub async fn read_exact_at(
    file: &std::sync::Arc<std::fs::File>,
    mut buf: Vec<u8>,
    off: u64,
) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let cached = read_cached(file, &mut buf, off);
    if cached == buf.len() {
        return Ok(buf);
    }
    let f = file.clone();
    let (buf, read) = blocking(move || {
        let r = f.read_exact_at(&mut buf[cached..], off + cached as u64);
        (buf, r)
    })
    .await?;
    read.map(|()| buf)
}

/// Reads into `buf` from `off` as much as the page cache holds without waiting for the disk;
/// the bytes read.
fn read_cached(file: &std::fs::File, buf: &mut [u8], off: u64) -> usize {
    let mut got = 0;
    while got < buf.len() {
        let mut slices = [std::io::IoSliceMut::new(&mut buf[got..])];
        match rustix::io::preadv2(
            file,
            &mut slices,
            off + got as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread() -> std::thread::ThreadId {
        std::thread::current().id()
    }

    #[test]
    fn runs_in_place_only_for_a_blocking_caller() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let here = thread();
        let inside = as_blocking_caller(|| rt.block_on(blocking(thread))).unwrap();
        assert_eq!(inside, here, "a blocking caller runs the I/O itself");
        let outside = rt.block_on(blocking(thread)).unwrap();
        assert_ne!(outside, here, "other callers hand it to the blocking pool");
        let spawned =
            as_blocking_caller(|| rt.block_on(async { tokio::spawn(blocking(thread)).await }))
                .unwrap()
                .unwrap();
        assert_ne!(
            spawned, here,
            "a task spawned from the caller runs on the runtime's threads"
        );
    }
}
