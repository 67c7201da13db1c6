//! The soaks' iterations and random instants (tests/soak.rs, tests/self_update.rs):
//! `SOAK_ITERATIONS` (default 3) iterations per loop, `SOAK_SEED` the seed (printed by every
//! loop, so a failure can be replayed), a small deterministic generator.

pub fn soak_iterations() -> usize {
    match std::env::var("SOAK_ITERATIONS") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SOAK_ITERATIONS={s:?} is not a number")),
        Err(_) => 3,
    }
}

/// The seed of this run: `SOAK_SEED` (decimal or 0x-hex) or the clock.
pub fn soak_seed() -> u64 {
    match std::env::var("SOAK_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("SOAK_SEED={s:?} is not a number"))
        }
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// xorshift64: small, deterministic, good enough to spread kill points.
pub struct Rng(u64);

impl Rng {
    /// One generator per loop: the same `SOAK_SEED` replays every loop.
    pub fn for_loop(name: &str) -> (Rng, u64) {
        let seed = soak_seed();
        eprintln!("soak {name}: seed {seed} (replay with SOAK_SEED={seed})");
        let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
        for b in name.bytes() {
            x = (x ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
        (Rng(x | 1), seed)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
