//! Fast path. A GET of a whole task through the store is answered straight from the content
//! file through one reused buffer, without the HTTP library: a complete task at once, a task
//! being downloaded piece by piece as the pieces land (the download is started here, as
//! hyper's path would). Any other request (and everything after
//! it on that connection) is handed to hyper with the bytes already read, together with the
//! answer when the fast path already knows it (an origin error, a response it cannot cache).

use super::{content_headers, Body, Plan, Proxy, Served, StoreStart};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How long an idle connection may wait for its next request head.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_HEADERS: usize = 100;

/// A response the fast path sends.
struct Fast {
    head: Vec<u8>,
    task: crate::storage::TaskUse,
    start: u64,
    end: u64,
    keep_alive: bool,
    /// The task was complete when the request came (else pieces are sent as they land).
    cached: bool,
}

/// What the fast path does with a request.
enum FastPlan {
    Send(Fast),
    /// Hyper serves it (with this answer to the first request, if any).
    Hyper(Option<First>),
}

/// The answer to the request the fast path read, for hyper to send.
pub(super) enum First {
    Respond(http::Response<Body>),
    Forward(url::Url),
}

/// Serves one connection: fast-path requests here, the rest through hyper.
pub(super) async fn serve(proxy: Arc<Proxy>, mut stream: TcpStream, peer: std::net::SocketAddr) {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        let head_len = loop {
            if let Some(n) = head_end(&buf) {
                break Some(n);
            }
            if buf.len() >= proxy.max_head {
                break None;
            }
            buf.reserve(8192);
            match tokio::time::timeout(IDLE_TIMEOUT, stream.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    if buf.is_empty() {
                        return;
                    }
                    break None;
                }
                Ok(Ok(_)) => {}
                Err(_) => return,
            }
        };
        let plan = match head_len {
            Some(n) => proxy.fast_plan(&buf[..n]).await,
            None => FastPlan::Hyper(None),
        };
        let fast = match plan {
            FastPlan::Send(f) => f,
            FastPlan::Hyper(first) => {
                proxy
                    .serve_hyper(Rewind::new(buf.freeze(), stream), peer, first)
                    .await;
                return;
            }
        };
        buf.advance(head_len.unwrap_or(0));
        if let Err(e) = send(&proxy, &mut stream, &fast).await {
            tracing::debug!(%peer, error = %e, "fast path send failed");
            return;
        }
        if !fast.keep_alive {
            return;
        }
    }
}

async fn send(proxy: &Proxy, stream: &mut TcpStream, f: &Fast) -> io::Result<()> {
    stream.write_all(&f.head).await?;
    let file = f
        .task
        .open_file()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut buf = Vec::new();
    if f.cached {
        return send_range(proxy, stream, &file, f.start, f.end, true, &mut buf).await;
    }
    // Piece by piece as they land (the last one of a digest task once verified).
    let pl = f.task.piece_length().max(1);
    let mut off = f.start;
    while off < f.end {
        let number = (off / pl) as u32;
        f.task
            .wait_piece(number)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let piece_end = ((u64::from(number) + 1) * pl).min(f.end);
        send_range(proxy, stream, &file, off, piece_end, false, &mut buf).await?;
        off = piece_end;
    }
    Ok(())
}

/// Sends bytes `start..end` of `file`, read into `buf` (`storage.readBufferSize` at a time)
/// and written to the socket; `cached` counts them as served from the cache. A copy through
/// one reused buffer, not `sendfile(2)`: measured on loopback against the registry (which
/// uses sendfile), 256 KiB sendfile calls served a cached blob at 0.75-1.05x the registry's
/// rate, larger ones slower still, 1 MiB copies read in place at 1.05-1.4x
/// (docs/performance.md).
async fn send_range(
    proxy: &Proxy,
    stream: &mut TcpStream,
    file: &Arc<std::fs::File>,
    start: u64,
    end: u64,
    cached: bool,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let metrics = proxy.engine.metrics();
    let size = proxy.read_buffer.max(64 * 1024);
    let mut off = start;
    while off < end {
        let n = ((end - off) as usize).min(size);
        buf.resize(n, 0);
        *buf = crate::storage::blocking::read_exact_at(file, std::mem::take(buf), off).await?;
        stream.write_all(&buf[..n]).await?;
        off += n as u64;
        if cached {
            metrics.traffic("local_cache", n as u64);
        }
    }
    Ok(())
}

/// Offset just past `\r\n\r\n`, if the head is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

impl Proxy {
    /// What to do with a request head: a GET of a complete task (with a satisfiable range)
    /// or of a whole task through the store is sent from here; the rest goes to hyper.
    async fn fast_plan(&self, head: &[u8]) -> FastPlan {
        let Some((map, p, version)) = self.fast_request(head) else {
            return FastPlan::Hyper(None);
        };
        let complete = self
            .engine
            .store()
            .get(&p.task_id)
            .filter(|t| t.is_complete());
        let (task, cached) = match complete {
            Some(t) => (t, true),
            // Ranges of a task not complete are range reads or waits: hyper's path.
            None if p.range.is_some() => return FastPlan::Hyper(None),
            None => match self.start_store(Self::store_request(&map, &p)).await {
                StoreStart::Task { task, cached } => (task, cached),
                StoreStart::Respond(resp) => return FastPlan::Hyper(Some(First::Respond(resp))),
                StoreStart::Forward => return FastPlan::Hyper(Some(First::Forward(p.url))),
            },
        };
        match self.fast_response(&map, &p, version, task, cached) {
            Some(f) => FastPlan::Send(f),
            None => FastPlan::Hyper(None),
        }
    }

    /// The headers, store plan and HTTP minor version of a GET served through the store.
    fn fast_request(&self, head: &[u8]) -> Option<(HeaderMap, super::StorePlan, u8)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
            return None;
        }
        if req.method? != "GET" {
            return None;
        }
        let version = req.version?;
        let uri: http::Uri = req.path?.parse().ok()?;
        let mut map = HeaderMap::new();
        for h in req.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            map.append(name, HeaderValue::from_bytes(h.value).ok()?);
        }
        if map.contains_key(http::header::TRANSFER_ENCODING)
            || map
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0")
        {
            return None;
        }
        let Plan::Store(p) = self.plan(&Method::GET, &uri, &map) else {
            return None;
        };
        Some((map, p, version))
    }

    /// The response to send for `task` (`cached`: complete when asked), `None` if its range
    /// cannot be satisfied (hyper answers that).
    fn fast_response(
        &self,
        map: &HeaderMap,
        p: &super::StorePlan,
        version: u8,
        task: Arc<crate::storage::Task>,
        cached: bool,
    ) -> Option<Fast> {
        let task = task.use_task();
        let meta = task.meta();
        let len = meta.content_length;
        let (start, end, partial) = match &p.range {
            None => (0, len, false),
            Some((r, raw)) => {
                let (a, b) = r.resolve(len, raw).ok()?;
                (a, b, true)
            }
        };
        let conn = map
            .get(http::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.to_ascii_lowercase())
            .unwrap_or_default();
        let keep_alive = if version >= 1 {
            !conn.contains("close")
        } else {
            conn.contains("keep-alive")
        };
        let status = if partial {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let mut h = content_headers(&Served {
            meta: &meta,
            start,
            end,
            partial,
            digest: p.digest.as_ref(),
            task_id: &p.task_id,
            cached,
        });
        if !keep_alive {
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let mut head = format!(
            "HTTP/1.{} {} {}\r\n",
            version.min(1),
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .into_bytes();
        for (k, v) in &h {
            head.extend_from_slice(k.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        if cached {
            self.engine.store().touch(&task);
        }
        self.engine.metrics().proxy_outcome(if cached {
            "cache_hit"
        } else {
            "back_to_source"
        });
        Some(Fast {
            head,
            task,
            start,
            end,
            keep_alive,
            cached,
        })
    }
}

/// A stream that first yields bytes already read from it.
pub(super) struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    fn new(prefix: Bytes, inner: TcpStream) -> Rewind {
        Rewind { prefix, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
