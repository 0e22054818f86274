//! libFuzzer target: `common::decode` on arbitrary bytes, under default and tight limits. It must never panic, and a
//! frame it accepts must survive an encode/decode round trip.
#![no_main]

use common::{decode, encode, ClientFrame, Limits, ServerFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tight = Limits {
        max_message_bytes: 256,
        max_decompressed_bytes: 256,
        max_depth: 3,
        max_collection_len: 4,
    };
    for limits in [Limits::default(), tight] {
        if let Ok(frame) = decode::<ClientFrame>(data, &limits) {
            let bytes = encode(&frame, 0).expect("a decoded frame encodes");
            assert_eq!(decode::<ClientFrame>(&bytes, &Limits::default()).ok(), Some(frame));
        }
        let _ = decode::<ServerFrame>(data, &limits);
    }
});
