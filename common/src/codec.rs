//! Frame bytes on the wire: one header byte, then a MessagePack body, optionally zstd-compressed.
//!
//! ```text
//! byte 0     bit 0 (0x01): the body is a zstd frame; bits 1..7: reserved, must be 0
//! bytes 1..  the MessagePack map of the frame (after zstd decompression when bit 0 is set)
//! ```
//!
//! Decoding checks every limit before it allocates in proportion to a claimed size: the WebSocket message size is
//! checked by the caller, the decompressed size here (from the zstd frame header and again while inflating), then
//! depth and collection lengths by `msgpack_limits`, and only then does serde build the frame.

use std::cell::RefCell;
use std::io::Read;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ErrorCode;

/// Header bit: the body is zstd-compressed.
pub const FLAG_ZSTD: u8 = 0x01;
/// zstd level used by the server: level 1 is within a few percent of level 3 on chat traffic at half the cost.
const ZSTD_LEVEL: i32 = 1;

/// Hard limits every inbound frame meets. All are configurable on the node; `Default` holds the safe defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket message accepted (header byte + body as sent).
    pub max_message_bytes: usize,
    /// Largest MessagePack body after zstd decompression.
    pub max_decompressed_bytes: usize,
    /// Deepest nesting of arrays and maps.
    pub max_depth: usize,
    /// Most entries in one array or map.
    pub max_collection_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_decompressed_bytes: 256 * 1024,
            max_depth: 16,
            max_collection_len: 1024,
        }
    }
}

/// Why a frame could not be decoded or encoded. Each maps to a stable `ErrorCode`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("empty message: a frame needs at least its header byte")]
    Empty,
    #[error("reserved header bits set: {0:#04x}")]
    ReservedBits(u8),
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("decompressed body exceeds the limit of {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("invalid zstd data: {0}")]
    Decompress(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("malformed MessagePack: {0}")]
    Malformed(String),
    #[error("unknown frame type: {0}")]
    UnknownFrame(String),
    #[error("invalid frame: {0}")]
    InvalidFrame(String),
    #[error("could not encode frame: {0}")]
    Encode(String),
}

impl CodecError {
    /// The error code a server answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            CodecError::TooLarge { .. }
            | CodecError::DecompressedTooLarge { .. }
            | CodecError::LimitExceeded(_) => ErrorCode::LimitExceeded,
            CodecError::UnknownFrame(_) => ErrorCode::UnknownFrame,
            CodecError::Encode(_) => ErrorCode::Internal,
            CodecError::Empty
            | CodecError::ReservedBits(_)
            | CodecError::Decompress(_)
            | CodecError::Malformed(_)
            | CodecError::InvalidFrame(_) => ErrorCode::BadFrame,
        }
    }
}

thread_local! {
    // Contexts are reused per thread: making one costs 12-18 µs, more than compressing a chat message.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Encodes a frame; bodies of at least `compress_threshold` bytes are zstd-compressed when that makes them
/// smaller. A threshold of `usize::MAX` disables compression.
pub fn encode<T: Serialize>(frame: &T, compress_threshold: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(128);
    out.push(0);
    rmp_serde::encode::write_named(&mut out, frame)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let body_len = out.len() - 1;
    if body_len < compress_threshold {
        return Ok(out);
    }
    let compressed = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Compressor::new(ZSTD_LEVEL)
                    .map_err(|e| CodecError::Encode(e.to_string()))?,
            );
        }
        match slot.as_mut() {
            Some(compressor) => compressor
                .compress(&out[1..])
                .map_err(|e| CodecError::Encode(e.to_string())),
            None => Err(CodecError::Encode("no zstd context".into())),
        }
    })?;
    if compressed.len() >= body_len {
        return Ok(out);
    }
    let mut framed = Vec::with_capacity(compressed.len() + 1);
    framed.push(FLAG_ZSTD);
    framed.extend_from_slice(&compressed);
    Ok(framed)
}

/// For a zstd-compressed frame, the size of the frame once inflated (header byte included) as its zstd header
/// declares it; `None` for a plain frame or one that declares no size. Nothing is decompressed: metrics use it to
/// report the compression ratio at the cost of a header parse.
pub fn declared_plain_size(message: &[u8]) -> Option<u64> {
    let (&header, body) = message.split_first()?;
    if header & FLAG_ZSTD == 0 {
        return None;
    }
    match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(size)) => Some(size + 1),
        _ => None,
    }
}

/// Decodes one frame under `limits`. Never panics on any input.
pub fn decode<T: DeserializeOwned>(message: &[u8], limits: &Limits) -> Result<T, CodecError> {
    if message.len() > limits.max_message_bytes {
        return Err(CodecError::TooLarge {
            size: message.len(),
            limit: limits.max_message_bytes,
        });
    }
    let (&header, body) = message.split_first().ok_or(CodecError::Empty)?;
    if header & !FLAG_ZSTD != 0 {
        return Err(CodecError::ReservedBits(header));
    }
    if header & FLAG_ZSTD != 0 {
        let plain = decompress(body, limits.max_decompressed_bytes)?;
        decode_body(&plain, limits)
    } else {
        decode_body(body, limits)
    }
}

fn decode_body<T: DeserializeOwned>(body: &[u8], limits: &Limits) -> Result<T, CodecError> {
    if body.len() > limits.max_decompressed_bytes {
        return Err(CodecError::DecompressedTooLarge {
            limit: limits.max_decompressed_bytes,
        });
    }
    crate::msgpack_limits::check(body, limits.max_depth, limits.max_collection_len)?;
    rmp_serde::from_slice(body).map_err(|e| {
        let text = e.to_string();
        if text.contains("unknown variant") {
            CodecError::UnknownFrame(text)
        } else {
            CodecError::InvalidFrame(text)
        }
    })
}

/// Inflates a zstd frame, refusing to produce more than `cap` bytes.
fn decompress(data: &[u8], cap: usize) -> Result<Vec<u8>, CodecError> {
    match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(size)) => {
            // The header states the size: refuse before allocating, then inflate into exactly that much.
            if size > cap as u64 {
                return Err(CodecError::DecompressedTooLarge { limit: cap });
            }
            DECOMPRESSOR.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = Some(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| CodecError::Decompress(e.to_string()))?,
                    );
                }
                match slot.as_mut() {
                    // `size <= cap` was checked above, so the capacity is bounded by the limit.
                    Some(decompressor) => decompressor
                        .decompress(data, size as usize)
                        .map_err(|e| CodecError::Decompress(e.to_string())),
                    None => Err(CodecError::Decompress("no zstd context".into())),
                }
            })
        }
        // No declared size (streamed frames): inflate incrementally and stop one byte past the cap.
        Ok(None) => {
            let decoder = zstd::stream::read::Decoder::new(data)
                .map_err(|e| CodecError::Decompress(e.to_string()))?;
            let mut out = Vec::new();
            decoder
                .take(cap as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| CodecError::Decompress(e.to_string()))?;
            if out.len() > cap {
                return Err(CodecError::DecompressedTooLarge { limit: cap });
            }
            Ok(out)
        }
        Err(_) => Err(CodecError::Decompress("not a zstd frame".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::*;

    fn send(body: &str) -> ClientFrame {
        ClientFrame::Send(Send {
            cid: "c1".into(),
            to: Some(42),
            conv: None,
            attrs: None,
            kind: "text".into(),
            body: body.into(),
        })
    }

    #[test]
    fn round_trip_plain_and_compressed() {
        let limits = Limits::default();
        let small = send("hello");
        let bytes = encode(&small, 512).unwrap();
        assert_eq!(bytes[0], 0);
        assert_eq!(decode::<ClientFrame>(&bytes, &limits).unwrap(), small);

        let big = send(&"chat ".repeat(400));
        let bytes = encode(&big, 512).unwrap();
        assert_eq!(bytes[0], FLAG_ZSTD);
        assert!(bytes.len() < 1000);
        assert_eq!(decode::<ClientFrame>(&bytes, &limits).unwrap(), big);
    }

    #[test]
    fn declared_plain_size_reads_the_zstd_header() {
        let big = send(&"chat ".repeat(400));
        let plain = encode(&big, usize::MAX).unwrap();
        let compressed = encode(&big, 512).unwrap();
        assert_eq!(declared_plain_size(&compressed), Some(plain.len() as u64));
        assert_eq!(declared_plain_size(&plain), None);
        assert_eq!(declared_plain_size(&[]), None);
        assert_eq!(declared_plain_size(&[FLAG_ZSTD, 1, 2]), None);
    }

    #[test]
    fn header_errors() {
        let limits = Limits::default();
        assert_eq!(decode::<ClientFrame>(&[], &limits), Err(CodecError::Empty));
        let mut bytes = encode(&send("x"), usize::MAX).unwrap();
        bytes[0] = 0x02;
        assert_eq!(
            decode::<ClientFrame>(&bytes, &limits),
            Err(CodecError::ReservedBits(0x02))
        );
        bytes[0] = FLAG_ZSTD;
        assert!(matches!(
            decode::<ClientFrame>(&bytes, &limits),
            Err(CodecError::Decompress(_))
        ));
    }

    #[test]
    fn zstd_bomb_is_refused() {
        let limits = Limits::default();
        // 64 MiB of zeros compresses to a few KiB; both the declared-size and the streamed paths must refuse it.
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let declared = zstd::bulk::compress(&zeros, 1).unwrap();
        let mut message = vec![FLAG_ZSTD];
        message.extend_from_slice(&declared);
        assert!(message.len() < limits.max_message_bytes);
        assert_eq!(
            decode::<ClientFrame>(&message, &limits),
            Err(CodecError::DecompressedTooLarge {
                limit: limits.max_decompressed_bytes
            })
        );

        let mut streamed = Vec::new();
        {
            let mut encoder = zstd::stream::write::Encoder::new(&mut streamed, 19).unwrap();
            encoder.include_contentsize(false).unwrap();
            std::io::Write::write_all(&mut encoder, &zeros[..8 * 1024 * 1024]).unwrap();
            encoder.finish().unwrap();
        }
        let mut message = vec![FLAG_ZSTD];
        message.extend_from_slice(&streamed);
        assert_eq!(
            decode::<ClientFrame>(&message, &limits),
            Err(CodecError::DecompressedTooLarge {
                limit: limits.max_decompressed_bytes
            })
        );
    }

    #[test]
    fn wrong_types_and_unknown_frames() {
        let limits = Limits::default();
        #[derive(Serialize)]
        struct Odd {
            t: &'static str,
            cid: u32,
        }
        let wrong_type = encode(&Odd { t: "send", cid: 5 }, usize::MAX).unwrap();
        assert!(matches!(
            decode::<ClientFrame>(&wrong_type, &limits),
            Err(CodecError::InvalidFrame(_))
        ));
        let unknown = encode(
            &Odd {
                t: "teleport",
                cid: 5,
            },
            usize::MAX,
        )
        .unwrap();
        assert!(matches!(
            decode::<ClientFrame>(&unknown, &limits),
            Err(CodecError::UnknownFrame(_))
        ));
        let not_a_map = encode(&7u8, usize::MAX).unwrap();
        assert!(matches!(
            decode::<ClientFrame>(&not_a_map, &limits),
            Err(CodecError::InvalidFrame(_))
        ));
    }

    #[test]
    fn oversize_message() {
        let limits = Limits {
            max_message_bytes: 10,
            ..Limits::default()
        };
        let bytes = encode(&send("longer than ten bytes"), usize::MAX).unwrap();
        assert!(matches!(
            decode::<ClientFrame>(&bytes, &limits),
            Err(CodecError::TooLarge { .. })
        ));
    }
}

#[cfg(test)]
mod wire_examples {
    //! The hex examples in `docs/protocol.md` are these exact bytes: if the encoding changes, this test fails and
    //! the document must change with it.
    use super::*;
    use crate::frame::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn documented_send_frame() {
        let frame = ClientFrame::Send(Send {
            cid: "c1".into(),
            to: Some(42),
            conv: None,
            attrs: None,
            kind: "text".into(),
            body: "hi".into(),
        });
        let bytes = encode(&frame, usize::MAX).unwrap();
        assert_eq!(
            hex(&bytes),
            "00 85 a1 74 a4 73 65 6e 64 a3 63 69 64 a2 63 31 a2 74 6f 2a a4 6b 69 6e 64 a4 74 65 78 74 a4 62 6f 64 79 a2 68 69"
        );
    }

    #[test]
    fn documented_ack_frame() {
        let frame = ServerFrame::Ack(Ack {
            cid: "c1".into(),
            id: 7,
            conv: 3,
            seq: 1,
            ts: 1_700_000_000_000,
        });
        let bytes = encode(&frame, usize::MAX).unwrap();
        assert_eq!(
            hex(&bytes),
            "00 86 a1 74 a3 61 63 6b a3 63 69 64 a2 63 31 a2 69 64 07 a4 63 6f 6e 76 03 a3 73 65 71 01 a2 74 73 cf 00 00 01 8b cf e5 68 00"
        );
    }
}
