//! A small deterministic random number generator (SplitMix64) for everything that must be
//! reproducible from a seed: task generation, example order, LoRA init, and the frozen LoRA
//! A that collections and generators share ([`super::frozen_a`]), and the bootstrap
//! intervals of the benches and evaluations ([`bootstrap_95`]).
//!
//! It is written out here rather than taken from `rand` because `rand`'s `StdRng` makes no
//! promise of giving the same stream across versions, and the task suite and the collected
//! checkpoints must not change when a dependency is bumped.

/// The 95 % interval (2.5th and 97.5th percentiles) of `statistic` over `draws` bootstrap
/// resamples of `n` units: each draw passes `n` unit indices drawn with replacement. Units
/// that belong together (a bench round of both routers, a task under several adapters) are
/// drawn together, so that what they share cancels in a paired statistic. Deterministic
/// from `seed`; `(NaN, NaN)` when there is nothing to draw.
pub fn bootstrap_95(
    n: usize,
    draws: usize,
    seed: u64,
    statistic: impl Fn(&[usize]) -> f64,
) -> (f64, f64) {
    if n == 0 || draws == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = Rng::new(seed);
    let mut pick = vec![0; n];
    let mut values: Vec<f64> = (0..draws)
        .map(|_| {
            pick.iter_mut().for_each(|i| *i = rng.below(n));
            statistic(&pick)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((draws - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

/// SplitMix64 (Steele, Lea, Flood 2014): 64 bits of state, passes BigCrush, trivially
/// seedable.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for a named sub-stream of `seed` (e.g. one task), independent of the
    /// order in which sub-streams are created.
    pub fn derive(seed: u64, name: &str) -> Self {
        // FNV-1a over the name, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let mut r = Rng(seed ^ h.rotate_left(17));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by the multiply-high method (bias below 2^-32 for the
    /// small `n` used here).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        assert!(lo <= hi, "Rng::range: empty range {lo}..={hi}");
        lo + self.below((hi - lo + 1) as usize) as i64
    }

    /// Uniform in `[0, 1)` with 24 bits of precision.
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interval of a mean brackets the mean, narrows with more units, is a point when
    /// every unit agrees, and is the same for the same seed.
    #[test]
    fn bootstrap_intervals_bracket_and_narrow() {
        let mean = |v: &[f64]| {
            let v = v.to_vec();
            move |pick: &[usize]| pick.iter().map(|&i| v[i]).sum::<f64>() / pick.len() as f64
        };
        let few: Vec<f64> = (0..10).map(|i| (i % 2) as f64).collect();
        let many: Vec<f64> = (0..1000).map(|i| (i % 2) as f64).collect();
        let (lo, hi) = bootstrap_95(few.len(), 2000, 3, mean(&few));
        assert!(lo < 0.5 && 0.5 < hi, "{lo} {hi}");
        let (mlo, mhi) = bootstrap_95(many.len(), 2000, 3, mean(&many));
        assert!(
            lo < mlo && mlo < 0.5 && 0.5 < mhi && mhi < hi,
            "{mlo} {mhi}"
        );
        assert!((mhi - mlo - 2.0 * 1.96 * (0.25f64 / 1000.0).sqrt()).abs() < 0.01);
        assert_eq!(bootstrap_95(4, 100, 1, mean(&[2.0; 4])), (2.0, 2.0));
        assert_eq!(
            bootstrap_95(few.len(), 500, 9, mean(&few)),
            bootstrap_95(few.len(), 500, 9, mean(&few))
        );
        assert!(bootstrap_95(0, 100, 1, |_| 1.0).0.is_nan());
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        // Known first output of SplitMix64 for seed 0 pins the algorithm.
        assert_eq!(Rng::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        let mut r = Rng::derive(1, "add");
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
            let x = r.range(-3, 3);
            assert!((-3..=3).contains(&x));
            let u = r.unit_f32();
            assert!((0.0..1.0).contains(&u));
        }
        assert_ne!(
            Rng::derive(1, "add").next_u64(),
            Rng::derive(1, "sub").next_u64()
        );
    }
}
