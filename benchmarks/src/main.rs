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
    println!("{:>10} {:>10} {:>12} {:>8}", "body_bytes", "plain", "zstd_l1", "ratio");
    let sample = "Hey! Are we still on for lunch tomorrow at noon? I can book the usual place near the office. ";
    for size in [16usize, 64, 100, 128, 192, 256, 384, 512, 1024, 2048, 4096] {
        let body: String = sample.chars().cycle().take(size).collect();
        let frame = ServerFrame::Msg(Msg {
            id: 123_456_789,
            conv: 4242,
            seq: 1_001,
            from: 77,
            cid: "c-0001".into(),
            kind: "text".into(),
            body,
            ts: 1_790_000_000_000,
        });
        let plain = common::encode(&frame, usize::MAX)?.len();
        let compressed = common::encode(&frame, 0)?.len();
        println!("{size:>10} {plain:>10} {compressed:>12} {:>8.2}", plain as f64 / compressed as f64);
    }
    Ok(())
}
