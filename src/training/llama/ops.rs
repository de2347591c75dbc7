//! The trainer's custom-gradient ops: candle's fast kernels forward, the analytic gradient
//! backward ([`CustomGrad`]), and a frozen linear whose backward skips the weight gradient.
//!
//! candle 0.10's fused kernels (`softmax_last_dim`, `rms_norm`, `rope`) have no backward
//! pass: used in a training graph they silently cut it. Their slow composite versions
//! (`softmax` over a dim, `rms_norm_slow`, `rope_slow`) are differentiable but, differentiated
//! op by op, also compute gradients of every constant (norm weights, rotary tables, masks).
//! Each op here takes `fused: bool`; `false` selects the slow version (tests check that both
//! give the same values and gradients).

use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, D};

// ---------------------------------------------------------------------------------------
// Frozen linear without weight gradient

/// `x W^T` for a frozen `W` (out, in) and a 2-D `x` (n, in), whose backward pass returns
/// only the input gradient `g W`. On devices other than the CPU it falls back to `matmul`.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.rank() == 2 && w.rank() == 2 && x.dtype() == w.dtype() {
        Ok(x.apply_op1(FrozenLinear { w: w.clone() })?)
    } else {
        Ok(x.broadcast_matmul(&w.t()?)?)
    }
}

struct FrozenLinear {
    w: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = x_l.shape().dims2()?;
        let (n, k_w) = self.w.dims2()?;
        if k != k_w {
            candle_core::bail!("frozen-linear: input has {k} features, weight expects {k_w}");
        }
        let (w, w_l) = self.w.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*w else {
            candle_core::bail!("frozen-linear: weight is not on the CPU");
        };
        let wt_l = w_l.transpose(0, 1)?;
        let out = x.matmul(w, (1, m, n, k), x_l, &wt_l)?;
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

// ---------------------------------------------------------------------------------------
// Fused ops with an explicit backward pass

type FwdFn = dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync;
type BwdFn = dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync;

/// A unary op on the CPU whose forward pass is any graph-free computation (typically one
/// of candle's fused kernels) and whose backward pass is given explicitly as
/// `bwd(x, y, grad_y) -> grad_x`. candle's autograd otherwise differentiates the slow
/// composite versions op by op, also computing gradients of constants (norm weights,
/// rotary tables, masks) that are thrown away.
struct CustomGrad {
    name: &'static str,
    fwd: Box<FwdFn>,
    bwd: Box<BwdFn>,
}

impl CustomOp1 for CustomGrad {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: input must be contiguous", self.name);
        };
        let x = Tensor::from_slice(&x.as_slice::<f32>()?[start..end], l.shape(), &Device::Cpu)?;
        let y = (self.fwd)(&x)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some((self.bwd)(&x.detach(), &y.detach(), grad)?))
    }
}

fn fused_ok(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// RMSNorm over the last dimension: fused forward, backward
/// `g_x = r (g a - x r^2 mean(g a x))` with `r = 1 / sqrt(mean(x^2) + eps)`.
pub fn rms_norm(x: &Tensor, alpha: &Tensor, eps: f32, fused: bool) -> Result<Tensor> {
    if !fused || !fused_ok(x) {
        return Ok(candle_nn::ops::rms_norm_slow(x, alpha, eps)?);
    }
    let (a1, a2) = (alpha.clone(), alpha.clone());
    let op = CustomGrad {
        name: "rms-norm-grad",
        fwd: Box::new(move |x| candle_nn::ops::rms_norm(x, &a1, eps)),
        bwd: Box::new(move |x, _y, g| {
            let ga = g.broadcast_mul(&a2)?;
            let r = (x.sqr()?.mean_keepdim(D::Minus1)? + f64::from(eps))?
                .sqrt()?
                .recip()?;
            let dot = (&ga * x)?.mean_keepdim(D::Minus1)?;
            let inner = (ga - x.broadcast_mul(&(dot * r.sqr()?)?)?)?;
            inner.broadcast_mul(&r)
        }),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// Rotary embedding, Hugging Face half-split layout, on (b, h, t, d) with tables (t, d/2):
/// fused forward; the backward pass is the inverse rotation (the same op with `-sin`).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, fused: bool) -> Result<Tensor> {
    if !fused || !fused_ok(x) {
        return Ok(candle_nn::rotary_emb::rope_slow(x, cos, sin)?);
    }
    let (c1, s1) = (cos.contiguous()?, sin.contiguous()?);
    let (c2, s2) = (c1.clone(), s1.neg()?);
    let op = CustomGrad {
        name: "rope-grad",
        fwd: Box::new(move |x| candle_nn::rotary_emb::rope(x, &c1, &s1)),
        bwd: Box::new(move |_x, _y, g| candle_nn::rotary_emb::rope(&g.contiguous()?, &c2, &s2)),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// `softmax(x * scale + mask)` over the last dimension (mask broadcast from its shape):
/// fused forward, backward `scale * y (g - sum(g y))`.
pub fn masked_softmax(x: &Tensor, scale: f64, mask: &Tensor, fused: bool) -> Result<Tensor> {
    if !fused || !fused_ok(x) {
        let att = (x * scale)?.broadcast_add(mask)?;
        return Ok(candle_nn::ops::softmax(&att, D::Minus1)?);
    }
    let m = mask.clone();
    let op = CustomGrad {
        name: "masked-softmax-grad",
        fwd: Box::new(move |x| candle_nn::ops::softmax_last_dim(&(x * scale)?.broadcast_add(&m)?)),
        bwd: Box::new(move |_x, y, g| {
            let dot = (g * y)?.sum_keepdim(D::Minus1)?;
            (y * g.broadcast_sub(&dot)?)? * scale
        }),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::rng::Rng;
    use crate::training::llama::tests::max_diff;
    use candle_core::Var;

    #[test]
    fn frozen_linear_matches_matmul_and_its_input_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (5, 7), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1., (3, 7), &dev).unwrap();
        let y1 = frozen_linear(x.as_tensor(), &w).unwrap();
        let y2 = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let diff = (&y1 - &y2).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        let g1 = y1.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = y2.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let d = (g1.get(x.as_tensor()).unwrap() - g2.get(x.as_tensor()).unwrap()).unwrap();
        assert!(
            d.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                < 1e-4
        );
    }

    fn rand_t(shape: &[usize], seed: u64) -> Tensor {
        let mut r = Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| 2.0 * r.unit_f32() - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Value and input gradient (of sum(y * w) for a fixed random w) of a unary op.
    fn value_and_grad(x: &Tensor, f: &dyn Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
        let v = Var::from_tensor(x).unwrap();
        let y = f(v.as_tensor());
        let w = rand_t(y.dims(), 99);
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (y, g.get(v.as_tensor()).unwrap().clone())
    }

    #[test]
    fn fused_ops_match_slow_ops_in_value_and_gradient() {
        let x = rand_t(&[2, 3, 5, 8], 1);
        let alpha = (rand_t(&[8], 2) + 1.0).unwrap();
        let (cos, sin) = {
            let f = rand_t(&[5, 4], 3);
            (f.cos().unwrap(), f.sin().unwrap())
        };
        let mask = Tensor::from_vec(
            (0..25)
                .map(|i| {
                    if i % 5 <= i / 5 {
                        0f32
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect(),
            (5, 5),
            &Device::Cpu,
        )
        .unwrap();
        let xm = rand_t(&[2, 3, 5, 5], 4);
        type Op<'a> = Box<dyn Fn(&Tensor, bool) -> Tensor + 'a>;
        let cases: Vec<(&str, &Tensor, Op)> = vec![
            (
                "rms_norm",
                &x,
                Box::new(|x, f| rms_norm(x, &alpha, 1e-5, f).unwrap()),
            ),
            ("rope", &x, Box::new(|x, f| rope(x, &cos, &sin, f).unwrap())),
            (
                "masked_softmax",
                &xm,
                Box::new(|x, f| masked_softmax(x, 0.7, &mask, f).unwrap()),
            ),
        ];
        for (name, input, op) in cases {
            let (y1, g1) = value_and_grad(input, &|x| op(x, true));
            let (y2, g2) = value_and_grad(input, &|x| op(x, false));
            assert!(max_diff(&y1, &y2) < 1e-5, "{name}: values differ");
            assert!(
                max_diff(&g1, &g2) < 1e-4,
                "{name}: gradients differ by {}",
                max_diff(&g1, &g2)
            );
        }
    }
}
