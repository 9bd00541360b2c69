//! A loopback AT Protocol event stream for benchmarks (the one the tests
//! use, `tests/common/atproto.rs`): `TOTAL` `#commit` frames of about
//! `SIZE` bytes, all in its window from the start, sent as fast as the
//! client reads. Prints its URL, then serves until standard input closes.
//!
//!   cargo run --release --example atproto_firehose -- TOTAL SIZE

#[path = "../tests/common/atproto.rs"]
mod atproto;

fn main() {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    // A frame's header, fields and CIDs take about 250 bytes.
    let server = atproto::AtprotoServer::start(atproto::AtprotoOptions {
        total,
        initial: total,
        blocks: size.saturating_sub(250),
        ..atproto::AtprotoOptions::default()
    });
    println!("{}", server.url());
    let frame = atproto::commit_frame(1, size.saturating_sub(250));
    eprintln!("{total} frames of {} bytes", frame.len());
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
}
