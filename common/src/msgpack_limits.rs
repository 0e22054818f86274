//! A structural pass over MessagePack bytes that enforces nesting depth and collection length before serde sees
//! them.
//!
//! rmp-serde trusts the lengths it reads, so a 5-byte `array32` header claiming four billion elements, or a frame
//! nested ten thousand levels deep, would cost memory or stack before any field is checked. This walk is iterative
//! (no recursion, so no stack overflow), allocates one small counter per open level, and proves that the bytes are
//! exactly one complete value.

use crate::codec::CodecError;

/// Checks that `bytes` hold exactly one MessagePack value within the limits.
pub(crate) fn check(
    bytes: &[u8],
    max_depth: usize,
    max_collection_len: usize,
) -> Result<(), CodecError> {
    let mut pos = 0usize;
    // Remaining item counts of the open collections, innermost last. A value is read while `pending` says
    // something is still expected; the top level expects exactly one value.
    let mut pending: Vec<u64> = Vec::with_capacity(8);
    let mut expected_at_top: u64 = 1;

    loop {
        // Pop finished collections and decide whether another value is expected.
        while let Some(&0) = pending.last() {
            pending.pop();
        }
        match pending.last_mut() {
            Some(remaining) => *remaining -= 1,
            None if expected_at_top == 1 => expected_at_top = 0,
            None => break,
        }

        let marker = take(bytes, &mut pos, 1)?[0];
        let collection: Option<u64> = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => None,
            0x80..=0x8f => Some(2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => Some(u64::from(marker & 0x0f)),
            0xa0..=0xbf => {
                skip(bytes, &mut pos, usize::from(marker & 0x1f))?;
                None
            }
            0xc1 => {
                return Err(CodecError::Malformed(
                    "reserved MessagePack marker 0xc1".into(),
                ))
            }
            // bin8/16/32 and str8/16/32: a length, then that many bytes.
            0xc4 | 0xd9 => skip_sized(bytes, &mut pos, 1, 0)?,
            0xc5 | 0xda => skip_sized(bytes, &mut pos, 2, 0)?,
            0xc6 | 0xdb => skip_sized(bytes, &mut pos, 4, 0)?,
            // ext8/16/32: a length, a type byte, then the data.
            0xc7 => skip_sized(bytes, &mut pos, 1, 1)?,
            0xc8 => skip_sized(bytes, &mut pos, 2, 1)?,
            0xc9 => skip_sized(bytes, &mut pos, 4, 1)?,
            0xca => skip(bytes, &mut pos, 4)?,
            0xcb => skip(bytes, &mut pos, 8)?,
            0xcc | 0xd0 => skip(bytes, &mut pos, 1)?,
            0xcd | 0xd1 => skip(bytes, &mut pos, 2)?,
            0xce | 0xd2 => skip(bytes, &mut pos, 4)?,
            0xcf | 0xd3 => skip(bytes, &mut pos, 8)?,
            // fixext 1/2/4/8/16: a type byte and fixed data.
            0xd4 => skip(bytes, &mut pos, 2)?,
            0xd5 => skip(bytes, &mut pos, 3)?,
            0xd6 => skip(bytes, &mut pos, 5)?,
            0xd7 => skip(bytes, &mut pos, 9)?,
            0xd8 => skip(bytes, &mut pos, 17)?,
            0xdc => Some(read_len(bytes, &mut pos, 2)?),
            0xdd => Some(read_len(bytes, &mut pos, 4)?),
            0xde => Some(2 * read_len(bytes, &mut pos, 2)?),
            0xdf => Some(2 * read_len(bytes, &mut pos, 4)?),
        };

        if let Some(items) = collection {
            let is_map = matches!(marker, 0x80..=0x8f | 0xde | 0xdf);
            let entries = if is_map { items / 2 } else { items };
            if entries > max_collection_len as u64 {
                return Err(CodecError::LimitExceeded(format!(
                    "collection of {entries} entries exceeds the limit of {max_collection_len}"
                )));
            }
            // Every item takes at least one byte, so a length larger than what is left is a truncated frame;
            // saying so now keeps the walk linear in the input size.
            if items > (bytes.len() - pos) as u64 {
                return Err(CodecError::Malformed(
                    "truncated: collection longer than the frame".into(),
                ));
            }
            if items > 0 {
                if pending.len() >= max_depth {
                    return Err(CodecError::LimitExceeded(format!(
                        "nesting deeper than the limit of {max_depth}"
                    )));
                }
                pending.push(items);
            }
        }
    }

    if pos != bytes.len() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the frame",
            bytes.len() - pos
        )));
    }
    Ok(())
}

fn take<'a>(bytes: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], CodecError> {
    let end = pos
        .checked_add(n)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| CodecError::Malformed("truncated MessagePack".into()))?;
    let slice = &bytes[*pos..end];
    *pos = end;
    Ok(slice)
}

fn skip(bytes: &[u8], pos: &mut usize, n: usize) -> Result<Option<u64>, CodecError> {
    take(bytes, pos, n)?;
    Ok(None)
}

fn read_len(bytes: &[u8], pos: &mut usize, width: usize) -> Result<u64, CodecError> {
    let raw = take(bytes, pos, width)?;
    Ok(raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

fn skip_sized(
    bytes: &[u8],
    pos: &mut usize,
    width: usize,
    extra: usize,
) -> Result<Option<u64>, CodecError> {
    let len = read_len(bytes, pos, width)?;
    let len = usize::try_from(len).map_err(|_| CodecError::Malformed("length overflows".into()))?;
    skip(bytes, pos, len.saturating_add(extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_scalars_and_nested() {
        check(&[0x01], 4, 4).unwrap();
        // {"a": [1, 2]}
        check(&[0x81, 0xa1, b'a', 0x92, 0x01, 0x02], 4, 4).unwrap();
        // Empty map and array.
        check(&[0x80], 1, 1).unwrap();
        check(&[0x90], 0, 0).unwrap();
    }

    #[test]
    fn rejects_truncation_trailing_and_reserved() {
        assert!(matches!(check(&[], 4, 4), Err(CodecError::Malformed(_))));
        assert!(matches!(
            check(&[0x92, 0x01], 4, 4),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            check(&[0x01, 0x02], 4, 4),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            check(&[0xc1], 4, 4),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            check(&[0xdb, 0xff, 0xff, 0xff, 0xff], 4, 4),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn enforces_depth_and_length() {
        // [[[1]]] is three levels deep.
        let nested = [0x91, 0x91, 0x91, 0x01];
        check(&nested, 3, 4).unwrap();
        assert!(matches!(
            check(&nested, 2, 4),
            Err(CodecError::LimitExceeded(_))
        ));
        // array32 claiming 2^32-1 elements with 5 bytes of input.
        let huge = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            check(&huge, 8, 1000),
            Err(CodecError::LimitExceeded(_))
        ));
        let three = [0x93, 1, 2, 3];
        assert!(matches!(
            check(&three, 8, 2),
            Err(CodecError::LimitExceeded(_))
        ));
    }
}
