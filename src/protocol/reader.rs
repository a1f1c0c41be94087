//! Reads whole protocol frames off a byte stream without copying them:
//! each frame is split off the read buffer as its own `BytesMut`.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

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
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let tag = self.buf[0];
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if len < 4 {
            return Err(FrameError::BadLength {
                tag: tag as char,
                len: len as i64,
            });
        }
        let total = len as usize + 1;
        if total > self.max_frame {
            return Err(FrameError::TooLarge {
                tag: tag as char,
                len: len as usize,
                limit: self.max_frame,
            });
        }
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(total)))
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
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = self.inner.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(if self.buf.is_empty() {
                FrameError::Closed
            } else {
                FrameError::Truncated
            });
        }
        Ok(n)
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
