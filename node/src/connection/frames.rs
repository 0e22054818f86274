//! Reading WebSocket frames with no buffer held while a connection is idle.
//!
//! fastwebsockets' reader keeps an 8 KiB buffer per connection for the connection's whole life, and most chat
//! connections are idle most of the time, so that buffer was the largest part of an idle connection's memory. This
//! reader makes the same checks (RFC 6455 5.2: reserved bits, known opcodes, unfragmented control frames of at most
//! 125 bytes, 64-bit lengths with the top bit clear, client frames masked) from a buffer that only exists while a
//! frame is partly received: a read lands in a buffer on the stack of the poll, and only the bytes not consumed
//! yet are kept on the heap. A frame's length is checked against the cap before any of its payload is buffered.
//! fastwebsockets still does the handshake and writes frames; what a frame means is `inbound::Assembler`'s job.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Bytes one read may take from the socket into the stack buffer.
const STACK_READ: usize = 4096;
/// A drained buffer larger than this is freed rather than kept for the next frame.
const KEEP_BYTES: usize = 256;

pub struct FrameReader<R> {
    io: R,
    /// Received bytes not yet returned as frames (usually empty, and then unallocated).
    pending: Vec<u8>,
    /// Largest payload one frame may declare.
    max_frame: usize,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: OpCode,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, max_frame: usize) -> Self {
        FrameReader {
            io,
            pending: Vec::new(),
            max_frame,
        }
    }

    /// The next frame, unmasked. Cancel-safe: bytes read stay buffered until their frame is complete.
    pub async fn read_frame(&mut self) -> Result<Frame<'static>, WebSocketError> {
        loop {
            if let Some(header) = self.header()? {
                let total = header.header_len + header.payload_len;
                if self.pending.len() >= total {
                    return Ok(self.take(header));
                }
                // Room for the rest of the frame, so its payload is read straight into place.
                self.pending.reserve(total - self.pending.len());
            }
            if self.fill().await? == 0 {
                return Err(WebSocketError::UnexpectedEOF);
            }
        }
    }

    /// Parses the header at the start of the buffer, if it is all there.
    fn header(&self) -> Result<Option<Header>, WebSocketError> {
        let buf = &self.pending;
        let [first, second, ..] = buf[..] else {
            return Ok(None);
        };
        if first & 0x70 != 0 {
            return Err(WebSocketError::ReservedBitsNotZero);
        }
        let fin = first & 0x80 != 0;
        let opcode = OpCode::try_from(first & 0x0f)?;
        let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if control && !fin {
            return Err(WebSocketError::ControlFrameFragmented);
        }
        // RFC 6455 5.1: a server must fail a connection whose client sends an unmasked frame.
        if second & 0x80 == 0 {
            return Err(WebSocketError::InvalidValue);
        }
        let (extra, short) = match second & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(usize::from(n))),
        };
        let header_len = 2 + extra + 4;
        if buf.len() < header_len {
            return Ok(None);
        }
        let payload_len = match (short, extra) {
            (Some(n), _) => n,
            (None, 2) => usize::from(u16::from_be_bytes([buf[2], buf[3]])),
            (None, _) => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&buf[2..10]);
                let declared = u64::from_be_bytes(bytes);
                if declared >> 63 != 0 {
                    return Err(WebSocketError::InvalidValue);
                }
                usize::try_from(declared).map_err(|_| WebSocketError::FrameTooLarge)?
            }
        };
        if control && payload_len > 125 {
            return Err(WebSocketError::PingFrameTooLarge);
        }
        if payload_len > self.max_frame {
            return Err(WebSocketError::FrameTooLarge);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[header_len - 4..header_len]);
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            header_len,
            payload_len,
        }))
    }

    /// Removes a complete frame from the buffer.
    fn take(&mut self, header: Header) -> Frame<'static> {
        let end = header.header_len + header.payload_len;
        let mut payload = self.pending[header.header_len..end].to_vec();
        fastwebsockets::unmask(&mut payload, header.mask);
        if end == self.pending.len() {
            if self.pending.capacity() > KEEP_BYTES {
                self.pending = Vec::new();
            } else {
                self.pending.clear();
            }
        } else {
            self.pending.drain(..end);
        }
        Frame::new(header.fin, header.opcode, None, Payload::Owned(payload))
    }

    /// Reads what the socket has; returns the byte count (0 at end of input).
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.pending.capacity() - self.pending.len() >= STACK_READ {
            // A large frame is on its way and has room reserved: read into it directly.
            return self.io.read_buf(&mut self.pending).await;
        }
        let FrameReader { io, pending, .. } = self;
        poll_fn(|cx| {
            // On the stack of this poll only: an idle connection waiting here holds no buffer.
            let mut stack = [0u8; STACK_READ];
            let mut buf = ReadBuf::new(&mut stack);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    pending.extend_from_slice(buf.filled());
                    Poll::Ready(Ok(buf.filled().len()))
                }
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<(bool, u8, Vec<u8>), String>> {
        let mut reader = FrameReader::new(&bytes[..], max);
        let mut out = Vec::new();
        loop {
            match reader.read_frame().await {
                Ok(frame) => out.push(Ok((frame.fin, frame.opcode as u8, frame.payload.to_vec()))),
                Err(WebSocketError::UnexpectedEOF) => return out,
                Err(error) => {
                    out.push(Err(error.to_string()));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn frames_of_every_length_form_are_read_and_unmasked() {
        let big = vec![7u8; 70_000];
        let mid = vec![9u8; 300];
        let mut wire = client_frame(0x82, b"hello");
        wire.extend(client_frame(0x01, &mid));
        wire.extend(client_frame(0x89, b"ping"));
        wire.extend(client_frame(0x80, &big));
        let frames = read_all(wire, 100_000).await;
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0], Ok((true, 0x2, b"hello".to_vec())));
        assert_eq!(frames[1], Ok((false, 0x1, mid)));
        assert_eq!(frames[2], Ok((true, 0x9, b"ping".to_vec())));
        assert_eq!(frames[3], Ok((true, 0x0, big)));
    }

    #[tokio::test]
    async fn protocol_violations_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (client_frame(0xc2, b"x"), "Reserved bits"),
            (client_frame(0x83, b"x"), "Invalid value"),
            (client_frame(0x09, b"x"), "Control frame"),
            (client_frame(0x89, &[0; 126]), "Ping frame too large"),
            (vec![0x82, 0x01, b'x'], "Invalid value"),
            (client_frame(0x82, &[0; 11]), "Frame too large"),
        ];
        for (wire, expected) in cases {
            let frames = read_all(wire, 10).await;
            match frames.last() {
                Some(Err(message)) => {
                    assert!(message.contains(expected), "{message} vs {expected}")
                }
                other => panic!("expected {expected}, got {other:?}"),
            }
        }
        // A 64-bit length with the top bit set, refused before anything is buffered.
        let mut wire = vec![0x82, 0x80 | 127];
        wire.extend_from_slice(&u64::MAX.to_be_bytes());
        wire.extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(
            read_all(wire, usize::MAX).await.last(),
            Some(Err(_))
        ));
    }

    #[tokio::test]
    async fn a_frame_split_across_reads_is_assembled_and_the_buffer_freed() {
        let payload = vec![3u8; 10_000];
        let wire = client_frame(0x82, &payload);
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in wire.chunks(1000) {
                client.write_all(chunk).await.ok();
                tokio::task::yield_now().await;
            }
            client
        });
        let mut reader = FrameReader::new(server, 20_000);
        let frame = reader.read_frame().await.ok();
        assert_eq!(frame.map(|f| f.payload.to_vec()), Some(payload));
        assert_eq!(reader.pending.capacity(), 0, "the drained buffer is freed");
        drop(writer.await);
    }
}
