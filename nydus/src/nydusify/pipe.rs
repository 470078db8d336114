//! Bridges between the async registry streams and the blocking RAFS builder: a `Read` fed by a
//! channel of source bytes and a `Write` that hands the blob to an upload stream in bounded
//! batches, so a layer flows registry → builder → registry with a few MiB in memory.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use oci_client::errors::OciDistributionError;
use tokio::sync::mpsc;

/// Size of the pieces handed to the upload (one PATCH each).
pub const UPLOAD_BATCH: usize = 4 << 20;

/// A blocking reader of byte chunks sent over a channel (from an async task).
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
    done: bool,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            cur: Bytes::new(),
            done: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// Sends `stream` into `tx`, counting bytes; stops at the first error (which is forwarded).
pub async fn pump<S>(stream: S, tx: mpsc::Sender<io::Result<Bytes>>, counter: Arc<AtomicU64>)
where
    S: futures_util::Stream<Item = io::Result<Bytes>>,
{
    use futures_util::StreamExt;
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let end = item.is_err();
        if let Ok(b) = &item {
            counter.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        if tx.send(item).await.is_err() || end {
            break;
        }
    }
}

/// A blocking writer whose bytes become the items of an upload stream. Dropping it without
/// [`UploadWriter::finish`] ends the stream with an error, so the upload is never committed.
pub struct UploadWriter {
    tx: Option<mpsc::Sender<Result<Bytes, OciDistributionError>>>,
    buf: BytesMut,
    written: Arc<AtomicU64>,
}

impl UploadWriter {
    pub fn new(
        tx: mpsc::Sender<Result<Bytes, OciDistributionError>>,
        written: Arc<AtomicU64>,
    ) -> Self {
        UploadWriter {
            tx: Some(tx),
            buf: BytesMut::with_capacity(UPLOAD_BATCH),
            written,
        }
    }

    fn send(&mut self, item: Result<Bytes, OciDistributionError>) -> io::Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("upload already ended"))?;
        tx.blocking_send(item)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = self.buf.split().freeze();
        self.buf.reserve(UPLOAD_BATCH);
        self.send(Ok(b))
    }

    /// Sends what is buffered and ends the stream normally (the upload is then committed).
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buf()?;
        self.tx = None;
        Ok(())
    }

    /// Ends the stream with an error: the upload is abandoned.
    pub fn abort(mut self, msg: String) {
        let _ = self.send(Err(OciDistributionError::GenericError(Some(msg))));
        self.tx = None;
    }
}

impl Write for UploadWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = UPLOAD_BATCH - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        if self.buf.len() == UPLOAD_BATCH {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for UploadWriter {
    fn drop(&mut self) {
        if self.tx.is_some() {
            let _ = self.send(Err(OciDistributionError::GenericError(Some(
                "the layer build failed".into(),
            ))));
        }
    }
}
