//! Seed-compatible buckets: `md5(salt ‖ key)`, first 4 bytes big-endian, modulo the weight total.
//!
//! This is the same number an app computes with `parseInt(md5(id).substr(0, 8), 16) % total`,
//! so the proxy and the apps put a user in the same bucket.

use md5::block_api::compress;
use md5::{Digest, Md5};

/// MD5's initial state (RFC 1321 §3.3), as the four little-endian words.
const MD5_INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The salt's MD5 state, precomputed so a request hashes only its key: the state after the
/// salt's whole 64-byte blocks, and the salt's remaining bytes already placed at the front of
/// the next block.
#[derive(Clone)]
pub struct Hasher {
    state: [u32; 4],
    /// The remaining salt bytes, then zeros.
    head: [u8; 64],
    head_len: usize,
    /// Salt length in bytes (MD5 pads with the message length).
    salt_len: u64,
    /// The whole salt, for keys too long for the one- or two-block fast path.
    salted: Md5,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    pub fn new(salt: &[u8]) -> Self {
        let mut state = MD5_INIT;
        let (blocks, rest) = salt.as_chunks::<64>();
        compress(&mut state, blocks);
        let mut head = [0u8; 64];
        head[..rest.len()].copy_from_slice(rest);
        let mut salted = Md5::new();
        salted.update(salt);
        Hasher {
            state,
            head,
            head_len: rest.len(),
            salt_len: salt.len() as u64,
            salted,
        }
    }

    /// `u32::from_be_bytes(md5(salt ‖ key)[0..4]) % total`; `total` must be > 0.
    #[inline]
    pub fn bucket(&self, key: &[u8], total: u32) -> u32 {
        self.first_word(key) % total.max(1)
    }

    /// `u32::from_be_bytes(md5(salt ‖ key)[0..4])`.
    #[inline]
    fn first_word(&self, key: &[u8]) -> u32 {
        // The last block(s) are built on the stack and compressed directly: cloning and
        // finalizing a buffered `Md5` costs about as much as the compression itself.
        let end = self.head_len + key.len();
        // Room for the 0x80 marker and the 8-byte length: one block up to 55 bytes, two up
        // to 119 (a UUID after a salt of up to 83 bytes).
        let n_blocks = match end {
            0..=55 => 1,
            56..=119 => 2,
            _ => return self.first_word_slow(key),
        };
        let mut blocks = [self.head, [0u8; 64]];
        let flat = blocks.as_flattened_mut();
        let len_at = n_blocks * 64 - 8;
        let bits = self.salt_len.wrapping_add(key.len() as u64).wrapping_mul(8);
        // In bounds: `end <= 119` and `len_at + 8` is 64 or 128, within the two blocks.
        flat[self.head_len..end].copy_from_slice(key);
        flat[end] = 0x80;
        flat[len_at..len_at + 8].copy_from_slice(&bits.to_le_bytes());
        let mut state = self.state;
        if n_blocks == 2 {
            compress(&mut state, &blocks[..1]);
        }
        // The digest starts with the first state word, in little-endian order.
        last_block_first_word(&state, &blocks[n_blocks - 1]).swap_bytes()
    }

    #[cold]
    fn first_word_slow(&self, key: &[u8]) -> u32 {
        let mut h = self.salted.clone();
        h.update(key);
        let digest = h.finalize();
        u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
    }
}

/// RFC 1321's round constants, `floor(abs(sin(i + 1)) * 2^32)`, in step order.
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// The first state word after MD5-compressing the message's last block: RFC 1321's
/// compression, minus its last three steps, which only update the other three words. The
/// steps are written out and arranged for a short dependency chain through `b` (a routing
/// decision hashes one block, so its latency is the chain's).
#[allow(clippy::unreadable_literal)]
fn last_block_first_word(state: &[u32; 4], block: &[u8; 64]) -> u32 {
    let (words, _) = block.as_chunks::<4>();
    let mut m = [0u32; 16];
    for (w, bytes) in m.iter_mut().zip(words) {
        *w = u32::from_le_bytes(*bytes);
    }
    // Read through an opaque reference: with the constants visible, LLVM adds `k` after
    // `f(b, c, d)` (it moves constants last), one more add on the chain at every step.
    let k = std::hint::black_box(&K);
    let [mut a, mut b, mut c, mut d] = *state;
    a = ff(a, b, c, d, m[0], k[0], 7);
    d = ff(d, a, b, c, m[1], k[1], 12);
    c = ff(c, d, a, b, m[2], k[2], 17);
    b = ff(b, c, d, a, m[3], k[3], 22);
    a = ff(a, b, c, d, m[4], k[4], 7);
    d = ff(d, a, b, c, m[5], k[5], 12);
    c = ff(c, d, a, b, m[6], k[6], 17);
    b = ff(b, c, d, a, m[7], k[7], 22);
    a = ff(a, b, c, d, m[8], k[8], 7);
    d = ff(d, a, b, c, m[9], k[9], 12);
    c = ff(c, d, a, b, m[10], k[10], 17);
    b = ff(b, c, d, a, m[11], k[11], 22);
    a = ff(a, b, c, d, m[12], k[12], 7);
    d = ff(d, a, b, c, m[13], k[13], 12);
    c = ff(c, d, a, b, m[14], k[14], 17);
    b = ff(b, c, d, a, m[15], k[15], 22);
    a = gg(a, b, c, d, m[1], k[16], 5);
    d = gg(d, a, b, c, m[6], k[17], 9);
    c = gg(c, d, a, b, m[11], k[18], 14);
    b = gg(b, c, d, a, m[0], k[19], 20);
    a = gg(a, b, c, d, m[5], k[20], 5);
    d = gg(d, a, b, c, m[10], k[21], 9);
    c = gg(c, d, a, b, m[15], k[22], 14);
    b = gg(b, c, d, a, m[4], k[23], 20);
    a = gg(a, b, c, d, m[9], k[24], 5);
    d = gg(d, a, b, c, m[14], k[25], 9);
    c = gg(c, d, a, b, m[3], k[26], 14);
    b = gg(b, c, d, a, m[8], k[27], 20);
    a = gg(a, b, c, d, m[13], k[28], 5);
    d = gg(d, a, b, c, m[2], k[29], 9);
    c = gg(c, d, a, b, m[7], k[30], 14);
    b = gg(b, c, d, a, m[12], k[31], 20);
    a = hh(a, b, c, d, m[5], k[32], 4);
    d = hh(d, a, b, c, m[8], k[33], 11);
    c = hh(c, d, a, b, m[11], k[34], 16);
    b = hh(b, c, d, a, m[14], k[35], 23);
    a = hh(a, b, c, d, m[1], k[36], 4);
    d = hh(d, a, b, c, m[4], k[37], 11);
    c = hh(c, d, a, b, m[7], k[38], 16);
    b = hh(b, c, d, a, m[10], k[39], 23);
    a = hh(a, b, c, d, m[13], k[40], 4);
    d = hh(d, a, b, c, m[0], k[41], 11);
    c = hh(c, d, a, b, m[3], k[42], 16);
    b = hh(b, c, d, a, m[6], k[43], 23);
    a = hh(a, b, c, d, m[9], k[44], 4);
    d = hh(d, a, b, c, m[12], k[45], 11);
    c = hh(c, d, a, b, m[15], k[46], 16);
    b = hh(b, c, d, a, m[2], k[47], 23);
    a = ii(a, b, c, d, m[0], k[48], 6);
    d = ii(d, a, b, c, m[7], k[49], 10);
    c = ii(c, d, a, b, m[14], k[50], 15);
    b = ii(b, c, d, a, m[5], k[51], 21);
    a = ii(a, b, c, d, m[12], k[52], 6);
    d = ii(d, a, b, c, m[3], k[53], 10);
    c = ii(c, d, a, b, m[10], k[54], 15);
    b = ii(b, c, d, a, m[1], k[55], 21);
    a = ii(a, b, c, d, m[8], k[56], 6);
    d = ii(d, a, b, c, m[15], k[57], 10);
    c = ii(c, d, a, b, m[6], k[58], 15);
    b = ii(b, c, d, a, m[13], k[59], 21);
    a = ii(a, b, c, d, m[4], k[60], 6);
    state[0].wrapping_add(a)
}

// One MD5 step each: `a + f(b, c, d) + m + k`, rotated, plus `b`. The message word and the
// constant are added first (they do not wait for `b`); `gg` adds its two disjoint halves
// separately so only `b & d` waits for `b`.
#[inline(always)]
fn ff(a: u32, b: u32, c: u32, d: u32, m: u32, k: u32, s: u32) -> u32 {
    let t = a.wrapping_add(m).wrapping_add(k);
    t.wrapping_add(((c ^ d) & b) ^ d)
        .rotate_left(s)
        .wrapping_add(b)
}

#[inline(always)]
fn gg(a: u32, b: u32, c: u32, d: u32, m: u32, k: u32, s: u32) -> u32 {
    let t = a.wrapping_add(m).wrapping_add(k).wrapping_add(c & !d);
    t.wrapping_add(b & d).rotate_left(s).wrapping_add(b)
}

#[inline(always)]
fn hh(a: u32, b: u32, c: u32, d: u32, m: u32, k: u32, s: u32) -> u32 {
    let t = a.wrapping_add(m).wrapping_add(k);
    t.wrapping_add((c ^ d) ^ b).rotate_left(s).wrapping_add(b)
}

#[inline(always)]
fn ii(a: u32, b: u32, c: u32, d: u32, m: u32, k: u32, s: u32) -> u32 {
    let t = a.wrapping_add(m).wrapping_add(k);
    t.wrapping_add(c ^ (b | !d)).rotate_left(s).wrapping_add(b)
}

/// Bucket ranges: pools own consecutive ranges in the order their weights are written.
/// `ends[i]` is the exclusive end of range `i`, owned by `pools[i]`; zero weights own nothing.
#[derive(Debug, Clone, Default)]
pub struct Ranges {
    ends: Vec<u32>,
    pools: Vec<usize>,
    total: u32,
}

impl Ranges {
    /// `weights`: (pool index, weight) in the written order.
    pub fn new(weights: impl IntoIterator<Item = (usize, u32)>) -> Self {
        let mut r = Ranges::default();
        for (pool, w) in weights {
            if w == 0 {
                continue;
            }
            r.total = r.total.saturating_add(w);
            r.ends.push(r.total);
            r.pools.push(pool);
        }
        r
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    /// The pool owning `bucket` (which must be `< total`); `None` only for an empty table.
    #[inline]
    pub fn pool_of(&self, bucket: u32) -> Option<usize> {
        // A handful of pools at most: a linear scan beats a binary search here.
        self.ends
            .iter()
            .position(|&end| bucket < end)
            .and_then(|i| self.pools.get(i).copied())
    }
}
