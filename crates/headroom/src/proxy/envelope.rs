//! The encrypted format the proxy writes upstream: envelope encryption in
//! fixed frames.
//!
//! * Every object (every multipart upload) gets a random 256-bit **data
//!   key** and a random 128-bit **object id**. The data key is wrapped with
//!   AES-KWP (RFC 5649) under a key-encryption key from the key file; the
//!   wrapped key, the KEK's id and the object id are the object's metadata.
//! * The ciphertext of a single PUT, and of every part of a multipart
//!   upload, is a **segment**: a 32-byte header, then frames.
//!   ```text
//!   header: "HRE1" | log2(frame size) | 0 0 0 | plaintext length (u64) | part number (u32) | salt (12 random bytes)
//!   frame:  AES-256-GCM(plaintext of FRAME bytes, the last one shorter) | tag (16)
//!   ```
//! * Each segment's frames are sealed under their own key,
//!   `HKDF-SHA256(salt, data key, "headroom proxy v1 segment" | object id |
//!   part number | plaintext length)` (so the length in the header is
//!   authenticated too: a changed one gives another key, and every frame
//!   fails), with nonce `0u32 | frame index (u64, big-endian)` and
//!   associated data `"HRE1" | object id | part number | frame index |
//!   final flag`. So a frame cannot move to another index (nonce and AAD),
//!   another part (key and AAD) or another object (data key and AAD); the
//!   last frame says it is last, so a cut-off segment fails; and a part sent
//!   again gets a fresh salt, hence a fresh key: a nonce is never used twice
//!   under one key, whatever the client re-sends.
//! * A reader finds the segments of a multipart object from their
//!   headers alone: each says how long it is and which part it is (both
//!   authenticated through the key), and the parts must come in
//!   increasing order.
//! * A segment of `n` plaintext bytes has `max(1, ceil(n / FRAME))` frames
//!   (an empty one has one empty final frame), so its length is known before
//!   a byte is read: [`segment_len`]. The inverse, [`plaintext_len`], gives
//!   the sizes a listing shows without a request per object.
//!
//! Decryption releases a frame's plaintext only after its tag verified: a
//! tampered frame is an error, never altered plaintext.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};

/// Plaintext bytes per frame. 64 KiB: the AES-GCM tag and per-frame
/// set-up cost 0.02 % in size and are lost in the noise in time (see
/// `scripts/bench-proxy-frames.sh`), while a frame is small enough that a
/// request in flight holds one or two of them.
pub const FRAME: u64 = 64 << 10;
/// The AES-GCM tag after every frame.
pub const TAG: u64 = 16;
/// The segment header.
pub const HEADER: u64 = 32;
const MAGIC: &[u8; 4] = b"HRE1";
/// Bytes of a random object id.
pub const OBJECT_ID: usize = 16;

/// Why decryption or unwrapping failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError(pub String);

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EnvelopeError {}

fn err(msg: impl Into<String>) -> EnvelopeError {
    EnvelopeError(msg.into())
}

/// Frames of a segment of `n` plaintext bytes.
pub fn frames(n: u64) -> u64 {
    n.div_ceil(FRAME).max(1)
}

/// Ciphertext length of a segment of `n` plaintext bytes.
pub fn segment_len(n: u64) -> u64 {
    HEADER + n + TAG * frames(n)
}

/// Plaintext length of an object whose ciphertext is `ct` bytes in
/// `segments` segments (1 for a single PUT; the part count of a multipart
/// object, as its ETag's `-N` says), every segment but the last holding a
/// whole number of frames. `None` when no such object has that length.
pub fn plaintext_len(ct: u64, segments: u64) -> Option<u64> {
    let body = ct.checked_sub(HEADER * segments.max(1))?;
    let slot = FRAME + TAG;
    let (full, rem) = (body / slot, body % slot);
    match rem {
        0 if full > 0 => Some(full * FRAME),
        r if r > TAG || (r == TAG && full == 0) => Some(full * FRAME + r - TAG),
        _ => None,
    }
}

/// Wraps a data key under a KEK (AES-KWP).
pub fn wrap_key(kek: &[u8; 32], data_key: &[u8; 32]) -> Vec<u8> {
    let kek = AesKek::new(&AES_256, kek).expect("a 32-byte AES-256 key");
    let mut out = vec![0u8; 32 + 16];
    let n = kek
        .wrap_with_padding(data_key, &mut out)
        .expect("a 32-byte key wraps into 40 bytes")
        .len();
    out.truncate(n);
    out
}

/// Unwraps a data key; an error when the KEK is not the one it was wrapped
/// under or the wrapped key was altered.
pub fn unwrap_key(kek: &[u8; 32], wrapped: &[u8]) -> Result<[u8; 32], EnvelopeError> {
    let kek = AesKek::new(&AES_256, kek).expect("a 32-byte AES-256 key");
    let mut out = [0u8; 48];
    let key = kek.unwrap_with_padding(wrapped, &mut out).map_err(|_| {
        err("the data key does not unwrap under its KEK (wrong key file, or altered metadata)")
    })?;
    key.try_into()
        .map_err(|_| err("the unwrapped data key is not 32 bytes"))
}

/// What a segment's frames are bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentId {
    /// The object's random id.
    pub object: [u8; OBJECT_ID],
    /// 0 for a single PUT, else the part number (1..=10000).
    pub part: u32,
}

fn segment_key(data_key: &[u8; 32], salt: &[u8], id: SegmentId, len: u64) -> LessSafeKey {
    use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
    let mut info = Vec::with_capacity(32 + OBJECT_ID + 4 + 8);
    info.extend_from_slice(b"headroom proxy v1 segment");
    info.extend_from_slice(&id.object);
    info.extend_from_slice(&id.part.to_be_bytes());
    info.extend_from_slice(&len.to_be_bytes());
    let prk = Salt::new(HKDF_SHA256, salt).extract(data_key);
    let mut key = [0u8; 32];
    let info = [info.as_slice()];
    prk.expand(&info, &AES_256_GCM)
        .and_then(|okm| okm.fill(&mut key))
        .expect("HKDF gives 32 bytes");
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte key"))
}

fn nonce(index: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(id: SegmentId, index: u64, last: bool) -> [u8; 4 + OBJECT_ID + 4 + 8 + 1] {
    let mut a = [0u8; 4 + OBJECT_ID + 4 + 8 + 1];
    a[..4].copy_from_slice(MAGIC);
    a[4..4 + OBJECT_ID].copy_from_slice(&id.object);
    a[20..24].copy_from_slice(&id.part.to_be_bytes());
    a[24..32].copy_from_slice(&index.to_be_bytes());
    a[32] = u8::from(last);
    a
}

/// Encrypts one segment of a known plaintext length, a frame at a time.
pub struct Sealer {
    key: LessSafeKey,
    id: SegmentId,
    /// Plaintext still to come.
    remaining: u64,
    index: u64,
    header: Option<[u8; HEADER as usize]>,
}

impl Sealer {
    /// A segment of `len` plaintext bytes, with a fresh random salt.
    pub fn new(data_key: &[u8; 32], id: SegmentId, len: u64) -> Self {
        let mut header = [0u8; HEADER as usize];
        header[..4].copy_from_slice(MAGIC);
        header[4] = FRAME.trailing_zeros() as u8;
        header[8..16].copy_from_slice(&len.to_be_bytes());
        header[16..20].copy_from_slice(&id.part.to_be_bytes());
        aws_lc_rs::rand::fill(&mut header[20..]).expect("random bytes");
        Sealer {
            key: segment_key(data_key, &header[20..], id, len),
            id,
            remaining: len,
            index: 0,
            header: Some(header),
        }
    }

    /// The header, once: it goes first.
    pub fn take_header(&mut self) -> Option<[u8; HEADER as usize]> {
        self.header.take()
    }

    /// How many plaintext bytes the next frame takes (0: the segment is
    /// done, or its one empty frame is next).
    pub fn next_frame_len(&self) -> usize {
        self.remaining.min(FRAME) as usize
    }

    /// Plaintext bytes still to be sealed.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Whether every frame has been sealed.
    pub fn done(&self) -> bool {
        self.remaining == 0 && self.index > 0
    }

    /// Seals `frame` (exactly [`next_frame_len`](Self::next_frame_len)
    /// bytes) in place, appending its tag.
    pub fn seal(&mut self, frame: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        if frame.len() != self.next_frame_len() || self.done() {
            return Err(err("internal error: a frame of the wrong length"));
        }
        self.remaining -= frame.len() as u64;
        let last = self.remaining == 0;
        self.key
            .seal_in_place_append_tag(
                nonce(self.index),
                Aad::from(aad(self.id, self.index, last)),
                frame,
            )
            .map_err(|_| err("encryption failed"))?;
        self.index += 1;
        Ok(())
    }
}

/// Decrypts frames of one segment, from a given frame on.
pub struct Opener {
    key: LessSafeKey,
    id: SegmentId,
    plaintext: u64,
    /// Frames in the segment.
    frames: u64,
    index: u64,
}

impl Opener {
    /// From a segment's `header` in object `object`, opening from frame
    /// `first` on.
    pub fn new(
        data_key: &[u8; 32],
        object: [u8; OBJECT_ID],
        header: &[u8],
        first: u64,
    ) -> Result<Self, EnvelopeError> {
        let (plaintext, part) = read_header(header)?;
        let id = SegmentId { object, part };
        Ok(Opener {
            key: segment_key(data_key, &header[20..], id, plaintext),
            id,
            plaintext,
            frames: frames(plaintext),
            index: first,
        })
    }

    /// The segment's plaintext length, as its header says.
    pub fn plaintext(&self) -> u64 {
        self.plaintext
    }

    /// The part the segment is (0: a single PUT).
    pub fn part(&self) -> u32 {
        self.id.part
    }

    /// Ciphertext bytes of the next frame.
    pub fn next_frame_len(&self) -> usize {
        if self.index + 1 < self.frames {
            (FRAME + TAG) as usize
        } else {
            (self.plaintext - (self.frames - 1) * FRAME + TAG) as usize
        }
    }

    /// Whether every frame has been opened.
    pub fn done(&self) -> bool {
        self.index >= self.frames
    }

    /// Opens the next frame in place; the plaintext is `frame`'s first
    /// bytes (its length is returned). An error, and nothing released, if
    /// the frame was altered, moved or cut.
    pub fn open(&mut self, frame: &mut [u8]) -> Result<usize, EnvelopeError> {
        if self.done() {
            return Err(err("more ciphertext than the segment holds"));
        }
        let last = self.index + 1 == self.frames;
        let plain = self
            .key
            .open_in_place(
                nonce(self.index),
                Aad::from(aad(self.id, self.index, last)),
                frame,
            )
            .map_err(|_| {
                err(format!(
                    "frame {} of part {} does not authenticate: the stored object was altered",
                    self.index, self.id.part
                ))
            })?;
        self.index += 1;
        Ok(plain.len())
    }
}

/// The plaintext length and part number a segment header states (not yet
/// authenticated: the frames are, under a key derived from both).
pub fn read_header(header: &[u8]) -> Result<(u64, u32), EnvelopeError> {
    if header.len() != HEADER as usize || &header[..4] != MAGIC {
        return Err(err("not a headroom-encrypted segment (bad header)"));
    }
    // Not covered by the key derivation: checked here, so that no bit of
    // a header can change unnoticed.
    if header[5..8] != [0, 0, 0] {
        return Err(err("a segment header whose reserved bytes are not zero"));
    }
    if u64::from(header[4]) != u64::from(FRAME.trailing_zeros()) {
        return Err(err(format!(
            "the segment uses frames of 2^{} bytes; this headroom reads 2^{}",
            header[4],
            FRAME.trailing_zeros()
        )));
    }
    Ok((
        u64::from_be_bytes(header[8..16].try_into().expect("8 bytes")),
        u32::from_be_bytes(header[16..20].try_into().expect("4 bytes")),
    ))
}

/// Which frames and ciphertext bytes of a segment of `plaintext` bytes a
/// plaintext `range` needs: `(first frame, ciphertext byte range, bytes to
/// skip in the first frame's plaintext)`.
pub fn frames_for(plaintext: u64, range: std::ops::Range<u64>) -> (u64, std::ops::Range<u64>, u64) {
    let first = range.start / FRAME;
    let end_frame = range
        .end
        .div_ceil(FRAME)
        .max(first + 1)
        .min(frames(plaintext));
    let slot = FRAME + TAG;
    let start = HEADER + first * slot;
    let end = (HEADER + end_frame * slot).min(segment_len(plaintext));
    (first, start..end, range.start - first * FRAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: SegmentId = SegmentId {
        object: [7; OBJECT_ID],
        part: 3,
    };

    fn seal_all(key: &[u8; 32], id: SegmentId, data: &[u8]) -> Vec<u8> {
        let mut s = Sealer::new(key, id, data.len() as u64);
        let mut out = s.take_header().unwrap().to_vec();
        let mut at = 0;
        while !s.done() {
            let n = s.next_frame_len();
            let mut frame = data[at..at + n].to_vec();
            s.seal(&mut frame).unwrap();
            out.extend_from_slice(&frame);
            at += n;
        }
        assert_eq!(out.len() as u64, segment_len(data.len() as u64));
        out
    }

    fn open_all(key: &[u8; 32], id: SegmentId, ct: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut o = Opener::new(key, id.object, &ct[..HEADER as usize], 0)?;
        if segment_len(o.plaintext()) != ct.len() as u64 || o.part() != id.part {
            return Err(err("bad length"));
        }
        let mut at = HEADER as usize;
        let mut out = Vec::new();
        while !o.done() {
            let len = o.next_frame_len();
            let mut frame = ct[at..at + len].to_vec();
            let p = o.open(&mut frame)?;
            out.extend_from_slice(&frame[..p]);
            at += len;
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn lengths_invert(n in 0u64..(1 << 24), parts in 1u64..5) {
            // Every segment but the last a whole number of frames.
            let whole = (parts - 1) * 80 * FRAME;
            let ct = (parts - 1) * segment_len(80 * FRAME) + segment_len(n);
            prop_assert_eq!(plaintext_len(ct, parts), Some(whole + n));
        }

        #[test]
        fn round_trips_and_any_flipped_bit_fails(len in 0usize..200_000, flip in any::<prop::sample::Index>()) {
            let key = [9u8; 32];
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let ct = seal_all(&key, ID, &data);
            prop_assert_eq!(&open_all(&key, ID, &ct).unwrap(), &data);
            let mut bad = ct.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 0x20;
            prop_assert!(open_all(&key, ID, &bad).is_err());
        }
    }

    /// Every bit of the header counts: the reserved bytes, which no key
    /// derivation covers, were once accepted changed (found by the
    /// property test below, flipping byte 5 of a 574-byte object).
    #[test]
    fn a_flipped_bit_anywhere_in_the_header_fails() {
        let key = [9u8; 32];
        let ct = seal_all(&key, ID, &[7u8; 574]);
        for i in 0..HEADER as usize {
            for bit in 0..8 {
                let mut bad = ct.clone();
                bad[i] ^= 1 << bit;
                assert!(open_all(&key, ID, &bad).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn frames_cannot_move_between_indexes_parts_objects_or_resends() {
        let key = [1u8; 32];
        let data = vec![5u8; 3 * FRAME as usize];
        let ct = seal_all(&key, ID, &data);
        let slot = (FRAME + TAG) as usize;
        let h = HEADER as usize;
        // Two frames swapped.
        let mut swapped = ct.clone();
        swapped[h..h + 2 * slot]
            .copy_from_slice(&[&ct[h + slot..h + 2 * slot], &ct[h..h + slot]].concat());
        assert!(open_all(&key, ID, &swapped).is_err());
        // The last frame cut off: the new last one does not say it is last.
        let cut = &ct[..h + 2 * slot];
        assert!(open_all(&key, ID, cut).is_err());
        // The same bytes read as another part, another object, another key.
        assert!(open_all(&key, SegmentId { part: 4, ..ID }, &ct).is_err());
        assert!(
            open_all(
                &key,
                SegmentId {
                    object: [8; OBJECT_ID],
                    ..ID
                },
                &ct
            )
            .is_err()
        );
        assert!(open_all(&[2u8; 32], ID, &ct).is_err());
        // A part sent again: a fresh salt, so a fresh key and no nonce
        // reuse; its frames do not open under the first one's header.
        let again = seal_all(&key, ID, &data);
        assert_ne!(ct[20..h], again[20..h], "a fresh salt per segment");
        // A header claiming another part: another key, nothing opens.
        let mut moved = ct.clone();
        moved[19] ^= 1;
        assert!(open_all(&key, SegmentId { part: 2, ..ID }, &moved).is_err());
        // A header claiming another length: another key, nothing opens.
        let mut longer = ct.clone();
        longer[15] ^= 1;
        assert!(open_all(&key, ID, &longer).is_err());
        let mut mixed = again.clone();
        mixed[..h].copy_from_slice(&ct[..h]);
        assert!(open_all(&key, ID, &mixed).is_err());
    }

    #[test]
    fn a_wrapped_key_unwraps_only_under_its_kek() {
        let (kek, other, data_key) = ([3u8; 32], [4u8; 32], [5u8; 32]);
        let wrapped = wrap_key(&kek, &data_key);
        assert_eq!(wrapped.len(), 40);
        assert_eq!(unwrap_key(&kek, &wrapped).unwrap(), data_key);
        assert!(unwrap_key(&other, &wrapped).is_err());
        let mut altered = wrapped.clone();
        altered[10] ^= 1;
        assert!(unwrap_key(&kek, &altered).is_err());
    }

    #[test]
    fn a_range_needs_only_the_frames_it_touches() {
        let n = 10 * FRAME + 100;
        let (first, bytes, skip) = frames_for(n, 3 * FRAME + 5..3 * FRAME + 10);
        assert_eq!((first, skip), (3, 5));
        assert_eq!(
            bytes,
            HEADER + 3 * (FRAME + TAG)..HEADER + 4 * (FRAME + TAG)
        );
        let (first, bytes, _) = frames_for(n, n - 1..n);
        assert_eq!(first, 10);
        assert_eq!(bytes.end, segment_len(n));
        assert_eq!(bytes.end - bytes.start, 100 + TAG);
    }
}
