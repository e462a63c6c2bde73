//! Seed-compatible buckets: `md5(salt ‖ key)`, first 4 bytes big-endian, modulo the weight total.
//!
//! This is the same number an app computes with `parseInt(md5(id).substr(0, 8), 16) % total`,
//! so the proxy and the apps put a user in the same bucket.

use md5::{Digest, Md5};

/// An MD5 state that has already absorbed the service's salt, so a request only hashes its key.
#[derive(Clone)]
pub struct Hasher {
    salted: Md5,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    pub fn new(salt: &[u8]) -> Self {
        let mut salted = Md5::new();
        salted.update(salt);
        Hasher { salted }
    }

    /// `u32::from_be_bytes(md5(salt ‖ key)[0..4]) % total`; `total` must be > 0.
    #[inline]
    pub fn bucket(&self, key: &[u8], total: u32) -> u32 {
        let mut h = self.salted.clone();
        h.update(key);
        let digest = h.finalize();
        let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        n % total.max(1)
    }
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
