//! A small seedable random number generator (xoshiro256**) and parameter
//! initialisation: everything random in the library takes one, so runs repeat exactly.

/// xoshiro256** seeded through SplitMix64: fast, small state, good statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose stream is fixed by `seed`.
    pub fn seed(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [low, high).
    pub fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// Uniform over 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.uniform() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Fisher-Yates.
    pub fn shuffle<X>(&mut self, items: &mut [X]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// How a cell's parameters are drawn.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// U(low, high).
    #[allow(missing_docs)]
    Uniform { low: f64, high: f64 },
    /// N(mean, std²).
    #[allow(missing_docs)]
    Normal { mean: f64, std: f64 },
    /// Every parameter the same value.
    Constant(f64),
}

impl Init {
    /// PyTorch's default for recurrent layers: U(-1/√H, 1/√H).
    pub fn pytorch_default(hidden_size: usize) -> Init {
        let bound = if hidden_size == 0 {
            0.0
        } else {
            1.0 / (hidden_size as f64).sqrt()
        };
        Init::Uniform {
            low: -bound,
            high: bound,
        }
    }

    /// One value.
    pub fn draw<T: crate::Scalar>(&self, rng: &mut Rng) -> T {
        T::of(match *self {
            Init::Uniform { low, high } => rng.range(low, high),
            Init::Normal { mean, std } => mean + std * rng.normal(),
            Init::Constant(value) => value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_uniform_in_range() {
        let (mut a, mut b) = (Rng::seed(3), Rng::seed(3));
        for _ in 0..1000 {
            let x = a.uniform();
            assert_eq!(x, b.uniform());
            assert!((0.0..1.0).contains(&x));
        }
        let mean: f64 = (0..20_000).map(|_| a.range(-1.0, 1.0)).sum::<f64>() / 20_000.0;
        assert!(mean.abs() < 0.02, "{mean}");
        assert_ne!(Rng::seed(3).next_u64(), Rng::seed(4).next_u64());
    }
}
