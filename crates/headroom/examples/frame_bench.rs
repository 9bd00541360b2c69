//! Throughput of AES-256-GCM sealing and opening in place, by frame size:
//! what `proxy::envelope::FRAME` was chosen from. Run it with
//! `scripts/bench-proxy-frames.sh` (release build).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use std::time::Instant;

fn main() {
    let total: usize = 512 << 20;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    println!("frame_bytes,seal_gb_s,open_gb_s,size_overhead_pct");
    for frame in [4usize << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20] {
        let frames = total / frame;
        let mut buf = vec![0x5au8; frame];
        let mut sealed = Vec::with_capacity(frame + 16);
        let t = Instant::now();
        for i in 0..frames {
            sealed.clear();
            sealed.extend_from_slice(&buf);
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&(i as u64).to_be_bytes());
            key.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(b"aad"),
                &mut sealed,
            )
            .unwrap();
        }
        let seal = total as f64 / t.elapsed().as_secs_f64() / 1e9;
        let t = Instant::now();
        for _ in 0..frames {
            buf.clear();
            buf.extend_from_slice(&sealed);
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&((frames - 1) as u64).to_be_bytes());
            key.open_in_place(Nonce::assume_unique_for_key(n), Aad::from(b"aad"), &mut buf)
                .unwrap();
        }
        let open = total as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!(
            "{frame},{seal:.2},{open:.2},{:.3}",
            16.0 * 100.0 / frame as f64
        );
    }
}
