//! Turning the frames a peer sends into whole messages and control events, under our own limits.
//!
//! Shared by the protocol session and the conformance echo, so what Autobahn checks on the echo route is the code
//! that guards real connections. `frames::FrameReader` checks each frame on its own (reserved bits, opcodes,
//! fragmented or oversized control frames, masking, the frame length); this adds what spans frames: the cap on a
//! reassembled message, the order of fragments, UTF-8 of text (across fragments, failing as soon as a fragment makes
//! the text invalid, not at the end), and the status code and reason of a close frame.

use bytes::Bytes;
use common::close_code;
use fastwebsockets::{Frame, OpCode};

/// RFC 6455 7.4.1: data inconsistent with the message type (invalid UTF-8 in text).
pub const INVALID_PAYLOAD: u16 = 1007;

/// What one frame amounted to.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A complete message (text is valid UTF-8).
    Message {
        text: bool,
        payload: Vec<u8>,
    },
    /// A ping to answer with this payload.
    Ping(Bytes),
    Pong,
    /// The peer closes; answer with this code.
    Close {
        code: u16,
    },
    /// A fragment of a message still being assembled.
    Pending,
}

/// Why the connection must be failed: the close code and reason to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
}

fn refuse(code: u16, reason: &'static str) -> Result<Inbound, Refusal> {
    Err(Refusal { code, reason })
}

/// Reassembles one connection's messages.
pub struct Assembler {
    max_message: usize,
    accept_text: bool,
    /// The opcode of the message being assembled, if any.
    kind: Option<OpCode>,
    buffer: Vec<u8>,
    /// For text: the prefix of `buffer` already known to be valid UTF-8 (checked incrementally, so many small
    /// fragments cost linear time).
    valid_utf8: usize,
}

impl Assembler {
    /// `accept_text = false` refuses text messages at their first frame (1003).
    pub fn new(max_message: usize, accept_text: bool) -> Self {
        Assembler {
            max_message,
            accept_text,
            kind: None,
            buffer: Vec::new(),
            valid_utf8: 0,
        }
    }

    /// Takes one frame as read by fastwebsockets.
    pub fn accept(&mut self, frame: &Frame<'_>) -> Result<Inbound, Refusal> {
        let payload: &[u8] = &frame.payload;
        match frame.opcode {
            OpCode::Close | OpCode::Ping | OpCode::Pong if payload.len() > 125 => refuse(
                close_code::PROTOCOL_ERROR,
                "control frame longer than 125 bytes",
            ),
            OpCode::Close => close_frame(payload),
            OpCode::Ping => Ok(Inbound::Ping(Bytes::copy_from_slice(payload))),
            OpCode::Pong => Ok(Inbound::Pong),
            OpCode::Text | OpCode::Binary if self.kind.is_some() => refuse(
                close_code::PROTOCOL_ERROR,
                "a new message began before the previous one ended",
            ),
            OpCode::Text if !self.accept_text => {
                refuse(close_code::UNSUPPORTED_DATA, "binary frames only")
            }
            OpCode::Text | OpCode::Binary => {
                self.kind = Some(frame.opcode);
                self.buffer.clear();
                self.valid_utf8 = 0;
                self.append(payload, frame.fin)
            }
            OpCode::Continuation if self.kind.is_none() => {
                refuse(close_code::PROTOCOL_ERROR, "continuation without a message")
            }
            OpCode::Continuation => self.append(payload, frame.fin),
        }
    }

    fn append(&mut self, payload: &[u8], fin: bool) -> Result<Inbound, Refusal> {
        if self.buffer.len() + payload.len() > self.max_message {
            return refuse(close_code::MESSAGE_TOO_BIG, "message too big");
        }
        self.buffer.extend_from_slice(payload);
        let text = self.kind == Some(OpCode::Text);
        if text {
            match std::str::from_utf8(&self.buffer[self.valid_utf8..]) {
                Ok(_) => self.valid_utf8 = self.buffer.len(),
                // An invalid sequence fails at once; an incomplete one at the end may be finished by the next
                // fragment, but not after the last.
                Err(error) if error.error_len().is_some() || fin => {
                    return refuse(INVALID_PAYLOAD, "text is not valid UTF-8")
                }
                Err(error) => self.valid_utf8 += error.valid_up_to(),
            }
        }
        if !fin {
            return Ok(Inbound::Pending);
        }
        self.kind = None;
        self.valid_utf8 = 0;
        Ok(Inbound::Message {
            text,
            payload: std::mem::take(&mut self.buffer),
        })
    }
}

/// A close frame: no body, or a code a peer may send plus a UTF-8 reason (RFC 6455 5.5.1, 7.4).
fn close_frame(payload: &[u8]) -> Result<Inbound, Refusal> {
    let (code, reason) = match payload {
        [] => {
            return Ok(Inbound::Close {
                code: close_code::NORMAL,
            })
        }
        [_] => return refuse(close_code::PROTOCOL_ERROR, "close frame with a 1-byte body"),
        [high, low, reason @ ..] => (u16::from_be_bytes([*high, *low]), reason),
    };
    if !matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999) {
        return refuse(close_code::PROTOCOL_ERROR, "close code a peer may not send");
    }
    if std::str::from_utf8(reason).is_err() {
        return refuse(INVALID_PAYLOAD, "close reason is not valid UTF-8");
    }
    Ok(Inbound::Close { code })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::Payload;

    fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Frame<'static> {
        Frame::new(fin, opcode, None, Payload::Owned(payload.to_vec()))
    }

    #[test]
    fn fragments_are_joined_under_the_cap() {
        let mut assembler = Assembler::new(8, false);
        assert_eq!(
            assembler.accept(&frame(false, OpCode::Binary, b"abc")),
            Ok(Inbound::Pending)
        );
        assert_eq!(
            assembler.accept(&frame(true, OpCode::Continuation, b"de")),
            Ok(Inbound::Message {
                text: false,
                payload: b"abcde".to_vec()
            })
        );
        assembler
            .accept(&frame(false, OpCode::Binary, b"abcde"))
            .unwrap();
        assert_eq!(
            assembler
                .accept(&frame(true, OpCode::Continuation, b"fghi"))
                .unwrap_err()
                .code,
            close_code::MESSAGE_TOO_BIG
        );
    }

    #[test]
    fn fragment_order_and_control_frames_are_checked() {
        let mut assembler = Assembler::new(64, true);
        assert!(assembler
            .accept(&frame(true, OpCode::Continuation, b"x"))
            .is_err());
        assembler.accept(&frame(false, OpCode::Text, b"a")).unwrap();
        assert_eq!(
            assembler.accept(&frame(true, OpCode::Ping, b"p")),
            Ok(Inbound::Ping(Bytes::from_static(b"p")))
        );
        assert!(assembler.accept(&frame(true, OpCode::Text, b"b")).is_err());
        assert!(assembler
            .accept(&frame(true, OpCode::Pong, &[0; 126]))
            .is_err());
        assert!(assembler.accept(&frame(true, OpCode::Close, &[3])).is_err());
        assert!(assembler
            .accept(&frame(true, OpCode::Close, &[0x03, 0xed]))
            .is_err());
        assert_eq!(
            assembler.accept(&frame(true, OpCode::Close, &[0x03, 0xe8, b'o', b'k'])),
            Ok(Inbound::Close { code: 1000 })
        );
        assert_eq!(
            assembler
                .accept(&frame(true, OpCode::Close, &[0x03, 0xe8, 0xff]))
                .unwrap_err()
                .code,
            INVALID_PAYLOAD
        );
    }

    /// Random frame sequences (a cheap fuzzer): no panic; every message is within the cap; text is valid UTF-8.
    #[test]
    fn random_frame_sequences_keep_the_invariants() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let opcodes = [
            OpCode::Continuation,
            OpCode::Text,
            OpCode::Binary,
            OpCode::Close,
            OpCode::Ping,
            OpCode::Pong,
        ];
        let alphabet: &[u8] = &[
            b'a', 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, 0xff, 0x03, 0xe8,
        ];
        for _ in 0..20_000 {
            let mut assembler = Assembler::new(32, rng.gen_bool(0.5));
            for _ in 0..rng.gen_range(1..12) {
                let len = rng.gen_range(0..24);
                let payload: Vec<u8> = (0..len)
                    .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                    .collect();
                let opcode = opcodes[rng.gen_range(0..opcodes.len())];
                match assembler.accept(&frame(rng.gen_bool(0.6), opcode, &payload)) {
                    Ok(Inbound::Message { text, payload }) => {
                        assert!(payload.len() <= 32);
                        assert!(!text || std::str::from_utf8(&payload).is_ok());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn utf8_fails_fast_and_may_span_fragments() {
        let mut assembler = Assembler::new(64, true);
        let euro = "€".as_bytes();
        assembler
            .accept(&frame(false, OpCode::Text, &euro[..1]))
            .unwrap();
        assert_eq!(
            assembler.accept(&frame(true, OpCode::Continuation, &euro[1..])),
            Ok(Inbound::Message {
                text: true,
                payload: euro.to_vec()
            })
        );
        assembler
            .accept(&frame(false, OpCode::Text, b"ok"))
            .unwrap();
        assert_eq!(
            assembler
                .accept(&frame(false, OpCode::Continuation, &[0xff]))
                .unwrap_err()
                .code,
            INVALID_PAYLOAD
        );
        let mut assembler = Assembler::new(64, true);
        assert!(assembler
            .accept(&frame(true, OpCode::Text, &euro[..2]))
            .is_err());
        let mut binary_only = Assembler::new(64, false);
        assert_eq!(
            binary_only
                .accept(&frame(false, OpCode::Text, b"a"))
                .unwrap_err()
                .code,
            close_code::UNSUPPORTED_DATA
        );
    }
}
