//! Byte-level edits shared by the stable fuzzers (`common/tests/fuzz_decode.rs` and `node/tests/fuzz_rest.rs`, which
//! includes this file by path). Each fuzzer draws its own edits (its own inserted pieces and sizes).

/// One edit of an input.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Replace the byte at a position (modulo the length).
    Set(usize, u8),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
    /// Remove up to `n` bytes from a position.
    Remove(usize, usize),
    /// Copy a range of the input to another position (repeats structures).
    Splice(usize, usize, usize),
    /// Truncate to a length.
    Truncate(usize),
}

/// A position in `0..=len` drawn from any number.
pub fn position(i: usize, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        i % (len + 1)
    }
}

pub fn apply_edit(bytes: &mut Vec<u8>, edit: &Edit) {
    match edit {
        Edit::Set(i, b) => {
            if !bytes.is_empty() {
                let len = bytes.len();
                bytes[i % len] = *b;
            }
        }
        Edit::Insert(i, more) => {
            let p = position(*i, bytes.len());
            bytes.splice(p..p, more.iter().copied());
        }
        Edit::Remove(i, n) => {
            let p = position(*i, bytes.len());
            let end = (p + n).min(bytes.len());
            bytes.drain(p..end);
        }
        Edit::Splice(from, to, n) => {
            if !bytes.is_empty() {
                let f = from % bytes.len();
                let chunk: Vec<u8> = bytes[f..(f + n).min(bytes.len())].to_vec();
                let p = position(*to, bytes.len());
                bytes.splice(p..p, chunk);
            }
        }
        Edit::Truncate(n) => {
            let keep = position(*n, bytes.len());
            bytes.truncate(keep);
        }
    }
}
