//! Counter-based random numbers: every draw is a function of (seed, key, index), so a run is
//! reproducible and any part of it can be drawn without the rest (dropout masks, directions,
//! epoch orders, augmentation).

/// Counter-based random 64-bit words (splitmix64 of a hash of (seed, key) plus the index), so a
/// run is reproducible from (seed, key) and any part of it can be drawn without the rest.
pub fn random_words(seed: u64, key: &str, n: usize) -> Vec<u64> {
    let mut h: u64 = seed ^ 0x9E37_79B9_7F4A_7C15;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01B3);
    }
    (0..n as u64)
        .map(|i| {
            let mut z = h.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
        .collect()
}

/// Counter-based uniform [0, 1) noise, reproducible from (seed, key).
pub fn uniform(seed: u64, key: &str, n: usize) -> Vec<f32> {
    random_words(seed, key, n).into_iter().map(|z| (z >> 40) as f32 / (1u64 << 24) as f32).collect()
}

/// ±1 with equal probability, from (seed, step, q, parameter).
pub fn rademacher(seed: u64, step: u64, q: usize, param: &str, n: usize) -> Vec<f32> {
    rademacher_signs(seed, step, q, param, n).into_iter().map(|s| if s { 1.0 } else { -1.0 }).collect()
}

/// The same directions as the step graph's bool inputs take them (true = +1): one splitmix64
/// output gives 64 signs.
pub fn rademacher_signs(seed: u64, step: u64, q: usize, param: &str, n: usize) -> Vec<bool> {
    let words = random_words(seed, &format!("fd_z/{step}/{q}/{param}"), n.div_ceil(64));
    (0..n).map(|i| (words[i / 64] >> (i % 64)) & 1 == 1).collect()
}
