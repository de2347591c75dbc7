//! The engine's CPU decode attention (vendor patch 0001) against a naive attention.
//!
//! `Sdpa::run_attention` is the dispatch every model's attention goes through; on the CPU
//! with q_len == 1 it runs `flash_attn_cpu_single_q`, which in the unpatched 0.8.1 gives
//! every row of a decode batch the last row's attention. The reference is
//! softmax(q k^T * scale) v in f64 loops over the very values the kernel reads (inputs
//! rounded to the kernel's dtype first), per batch row and head.

use candle_core::{DType, Device, Tensor};
use mistralrs_core::kernel_test::SdpaParams;
use mistralrs_core::layers::Sdpa;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// KV positions per tile job in `attention/backends/cpu.rs` (`TILE_KV`).
const TILE_KV: usize = 16;

/// (q heads, kv heads, head dim): SmolLM2-135M's GQA shape, a 4:1 one, and plain MHA.
const HEADS: [(usize, usize, usize); 3] = [(9, 3, 64), (4, 1, 32), (2, 2, 16)];

/// One KV position, one tile, a tile plus one, and several tiles with a ragged end.
const KV_LENS: [usize; 5] = [1, TILE_KV, TILE_KV + 1, 3 * TILE_KV + 5, 8 * TILE_KV + 3];

fn random(rng: &mut StdRng, shape: &[usize], range: f32) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-range..range)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The sizes of one case: q (b, h, 1, d), k and v (b, kvh, l, d).
struct Dims {
    b: usize,
    h: usize,
    kvh: usize,
    l: usize,
    d: usize,
}

/// softmax(q k^T * scale) v per row and head, from contiguous f32 values; (b, h, 1, d)
/// flattened.
fn naive(q: &[f32], k: &[f32], v: &[f32], n: &Dims, scale: f64) -> Vec<f32> {
    let Dims { b, h, kvh, l, d } = *n;
    let mut out = vec![0f32; b * h * d];
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi / (h / kvh);
            let qrow = &q[(bi * h + hi) * d..][..d];
            let kv_row = |t: &[f32], pos: usize| -> Vec<f64> {
                t[((bi * kvh + kh) * l + pos) * d..][..d]
                    .iter()
                    .map(|&x| x as f64)
                    .collect()
            };
            let logits: Vec<f64> = (0..l)
                .map(|pos| {
                    let krow = kv_row(k, pos);
                    qrow.iter()
                        .zip(&krow)
                        .map(|(&a, b)| a as f64 * b)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = logits.iter().map(|x| (x - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for (pos, w) in weights.iter().enumerate() {
                for (o, x) in out[(bi * h + hi) * d..][..d].iter_mut().zip(kv_row(v, pos)) {
                    *o += (w / total * x) as f32;
                }
            }
        }
    }
    out
}

#[test]
fn cpu_decode_attention_matches_naive_attention() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut failures = Vec::new();
    let mut cases = 0;
    // The kernel works in f32 and rounds its output to the dtype once: F16 is off by its
    // rounding of values within [-1, 1] (2^-11 relative), F32 only by summation order.
    for (dtype, tol) in [(DType::F32, 1e-5f32), (DType::F16, 2e-3)] {
        for (h, kvh, d) in HEADS {
            for l in KV_LENS {
                for b in 1..=4 {
                    cases += 1;
                    let scale = 1.0 / (d as f64).sqrt();
                    let q = random(&mut rng, &[b, h, 1, d], 2.0)
                        .to_dtype(dtype)
                        .unwrap();
                    // K and V as the KV cache hands them over: a view of the first `l`
                    // positions of a longer buffer (strided, not contiguous).
                    let cap = l + 7;
                    let k_buf = random(&mut rng, &[b, kvh, cap, d], 2.0)
                        .to_dtype(dtype)
                        .unwrap();
                    let v_buf = random(&mut rng, &[b, kvh, cap, d], 1.0)
                        .to_dtype(dtype)
                        .unwrap();
                    let k = k_buf.narrow(2, 0, l).unwrap();
                    let v = v_buf.narrow(2, 0, l).unwrap();
                    let params = SdpaParams {
                        n_kv_groups: h / kvh,
                        softcap: None,
                        softmax_scale: scale as f32,
                        sliding_window: None,
                        sinks: None,
                    };
                    let got = Sdpa.run_attention(&q, &k, &v, None, None, &params).unwrap();
                    assert_eq!(got.dims(), &[b, h, 1, d]);
                    assert_eq!(got.dtype(), dtype);
                    let want = naive(
                        &values(&q),
                        &values(&k.contiguous().unwrap()),
                        &values(&v.contiguous().unwrap()),
                        &Dims { b, h, kvh, l, d },
                        scale,
                    );
                    let err = values(&got)
                        .iter()
                        .zip(&want)
                        .map(|(g, w)| (g - w).abs())
                        .fold(0f32, f32::max);
                    if err.is_nan() || err > tol {
                        failures.push(format!(
                            "{dtype:?} batch {b} kv_len {l} heads {h}/{kvh} dim {d}: max error {err}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ from the naive attention:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
