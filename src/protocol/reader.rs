//! Reads whole protocol frames off a byte stream without copying them:
//! each frame is split off the read buffer as its own `BytesMut`, or, on
//! the hot path of server answers, looked at in the lent-out buffer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncRead;

/// Initial read buffer; grows to fit a large frame, then is reused.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("message of type {tag:?} claims length {len}, over the limit of {limit} bytes")]
    TooLarge { tag: char, len: usize, limit: usize },
    #[error("message of type {tag:?} has invalid length {len}")]
    BadLength { tag: char, len: i64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The length of the frame at the start of `buf`, if it is all there
/// (making room for it if not), or why it is invalid.
pub fn frame_len(buf: &mut BytesMut, max_frame: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len: len as i64,
        });
    }
    let total = len as usize + 1;
    if total > max_frame {
        return Err(FrameError::TooLarge {
            tag: tag as char,
            len: len as usize,
            limit: max_frame,
        });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some(total))
}

pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame: usize) -> Self {
        Self::with_buffer(inner, BytesMut::with_capacity(READ_CHUNK), max_frame)
    }

    /// Continue reading from `inner` with bytes already read (for example
    /// what followed a startup packet in the same segment).
    pub fn with_buffer(inner: R, buf: BytesMut, max_frame: usize) -> Self {
        FrameReader {
            inner,
            buf,
            max_frame,
        }
    }

    /// The next complete frame already in the buffer, if any. Never does I/O.
    pub fn try_frame(&mut self) -> Result<Option<BytesMut>, FrameError> {
        Ok(frame_len(&mut self.buf, self.max_frame)?.map(|total| self.buf.split_to(total)))
    }

    /// Lend out the read buffer, to look at frames in place (see
    /// [`frame_len`]) rather than split off a shared buffer per frame.
    /// Give it back with [`FrameReader::restore_buffer`] before reading
    /// again.
    pub fn take_buffer(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    pub fn restore_buffer(&mut self, buf: BytesMut) {
        self.buf = buf;
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// True when a complete frame is buffered (so the caller can defer a flush).
    pub fn has_frame(&self) -> bool {
        if self.buf.len() < 5 {
            return false;
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        len >= 4 && self.buf.len() > len as usize
    }

    /// The next frame, reading as needed. Cancel-safe: partial reads stay in
    /// the buffer, so this can be raced in `select!`.
    pub async fn next(&mut self) -> Result<BytesMut, FrameError> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Read once more into the buffer. Cancel-safe. Returns an error at end
    /// of stream (`Closed` between frames, `Truncated` inside one).
    pub async fn fill(&mut self) -> Result<usize, FrameError> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// [`FrameReader::fill`] as a poll, for callers that wait on several
    /// streams in one hand-written future.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, FrameError>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = match tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.buf) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => return Poll::Pending,
        };
        if n == 0 {
            return Poll::Ready(Err(if self.buf.is_empty() {
                FrameError::Closed
            } else {
                FrameError::Truncated
            }));
        }
        Poll::Ready(Ok(n))
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Bytes read but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The bytes read but not yet returned as frames, to look ahead at.
    pub fn peek(&self) -> &[u8] {
        &self.buf
    }

    /// Drop the first `n` bytes, whole frames the caller took via `peek`.
    pub fn consume(&mut self, n: usize) {
        self.buf.advance(n.min(self.buf.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_frames_across_reads() {
        let data: &[u8] = b"Q\0\0\0\x09abcd\0S\0\0\0\x04";
        let mut r = FrameReader::new(data, 1024);
        let f = r.next().await.unwrap();
        assert_eq!(&f[..], b"Q\0\0\0\x09abcd\0");
        assert!(r.has_frame());
        let f = r.next().await.unwrap();
        assert_eq!(f[0], b'S');
        assert!(matches!(r.next().await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn rejects_bad_lengths() {
        let mut r = FrameReader::new(&b"Q\0\0\0\x02"[..], 1024);
        assert!(matches!(r.next().await, Err(FrameError::BadLength { .. })));
        let mut r = FrameReader::new(&b"Q\x7f\0\0\x02"[..], 1024);
        assert!(matches!(r.next().await, Err(FrameError::TooLarge { .. })));
        let mut r = FrameReader::new(&b"Q\0\0\0\x09ab"[..], 1024);
        assert!(matches!(r.next().await, Err(FrameError::Truncated)));
    }
}
