//! imbench: load generator for the IM cluster. (Scenarios arrive with the benchmarks issue; for now it measures
//! the codec's compression threshold.)

use clap::Parser;
use common::frame::Msg;
use common::ServerFrame;

#[derive(Parser)]
#[command(name = "imbench", about = "Benchmarks for the IM cluster")]
enum Command {
    /// Prints the encoded size of a `msg` frame with and without zstd for a range of body sizes, to choose the
    /// node's --compress-threshold.
    CodecSizes,
}

fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::CodecSizes => codec_sizes(),
    }
}

fn codec_sizes() -> anyhow::Result<()> {
    println!(
        "{:>10} {:>10} {:>12} {:>8}",
        "body_bytes", "plain", "zstd_l1", "ratio"
    );
    // Chat-like text: words drawn from a small vocabulary by a fixed-seed generator, so runs are reproducible and
    // the text does not repeat verbatim (a repeated sentence would flatter zstd).
    const WORDS: &[&str] = &[
        "hey", "are", "we", "still", "on", "for", "lunch", "tomorrow", "at", "noon", "I", "can",
        "book", "the", "usual", "place", "near", "office", "sounds", "good", "see", "you", "there",
        "running", "late", "sorry", "meeting", "moved", "to", "3pm", "did", "get", "my", "message",
        "about", "report", "thanks", "ok", "👍", "call", "me", "when", "free", "weekend", "plans",
        "coffee", "later", "?", "!", "haha",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next_word = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        WORDS[(state % WORDS.len() as u64) as usize]
    };
    for size in [16usize, 64, 100, 128, 192, 256, 384, 512, 1024, 2048, 4096] {
        let mut body = String::new();
        while body.len() < size {
            body.push_str(next_word());
            body.push(' ');
        }
        let frame = ServerFrame::Msg(Msg {
            id: 123_456_789,
            conv: 4242,
            seq: 1_001,
            from: 77,
            cid: "c-0001".into(),
            kind: "text".into(),
            body,
            ts: 1_790_000_000_000,
            attrs: None,
            recalled: false,
        });
        let plain = common::encode(&frame, usize::MAX)?.len();
        let compressed = common::encode(&frame, 0)?.len();
        println!(
            "{size:>10} {plain:>10} {compressed:>12} {:>8.2}",
            plain as f64 / compressed as f64
        );
    }
    Ok(())
}
