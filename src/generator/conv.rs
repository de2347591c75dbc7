//! The decoder's k x k "same" convolution, computed as im2col followed by one matmul.
//!
//! [`conv_same`] equals `x.conv2d(kernel, k / 2, 1, 1, 1)` (tested) and is differentiable.
//! It exists because candle's CPU conv2d, and above all its backward pass (a naive
//! transposed convolution), run at a few GFLOP/s on the project's 2-core machine, which
//! made a decoder training step several times slower than its matmuls. On the CPU the
//! im2col step is a custom op ([`Im2Col`], row copies; backward [`Col2Im`], row adds); on
//! other devices it is one `index_select` (backward: `index_add`).

use anyhow::{ensure, Result};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// A k x k convolution with "same" zero padding, stride 1 and no bias:
/// (B, C_in, P, Q) with kernel (C_out, C_in, k, k) -> (B, C_out, P, Q).
pub fn conv_same(x: &Tensor, kernel: &Tensor, padding: usize) -> Result<Tensor> {
    let (b, c_in, p, q) = x.dims4()?;
    let (c_out, kc_in, kh, kw) = kernel.dims4()?;
    ensure!(
        kc_in == c_in && kh == kw && kh == 2 * padding + 1,
        "conv_same: input has {c_in} channels, kernel is ({c_out}, {kc_in}, {kh}, {kw}), padding {padding}"
    );
    let k = kh;
    let cols = if k == 1 {
        x.reshape((b, c_in, p * q))?
    } else if x.device().is_cpu() {
        x.contiguous()?.apply_op1(Im2Col { k, padding })?
    } else {
        im2col_index_select(x, k, padding)?
    };
    // (C_out, C_in*k*k) x (B, C_in*k*k, P*Q): rows of `cols` are ordered like the kernel's
    // (C_in, kh, kw).
    let y = kernel
        .reshape((c_out, c_in * k * k))?
        .broadcast_matmul(&cols)?;
    Ok(y.reshape((b, c_out, p, q))?)
}

/// im2col from generic ops: zero-pad, flatten the plane, gather the k*k shifted windows.
fn im2col_index_select(x: &Tensor, k: usize, padding: usize) -> Result<Tensor> {
    let (b, c, p, q) = x.dims4()?;
    let (pp, qp) = (p + 2 * padding, q + 2 * padding);
    let xp = x
        .pad_with_zeros(2, padding, padding)?
        .pad_with_zeros(3, padding, padding)?
        .reshape((b, c, pp * qp))?;
    let mut idx = Vec::with_capacity(k * k * p * q);
    for dy in 0..k {
        for dx in 0..k {
            for i in 0..p {
                for j in 0..q {
                    idx.push(((i + dy) * qp + j + dx) as u32);
                }
            }
        }
    }
    let idx = Tensor::from_vec(idx, k * k * p * q, x.device())?;
    Ok(xp.index_select(&idx, 2)?.reshape((b, c * k * k, p * q))?)
}

/// For output column j and kernel offset d: the input column is j + d - padding; the valid
/// j form the returned range.
fn valid(d: usize, padding: usize, len: usize) -> std::ops::Range<usize> {
    let lo = padding.saturating_sub(d);
    let hi = (len + padding).saturating_sub(d).min(len);
    lo..hi.max(lo)
}

fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: only F32 is supported")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// (B, C, P, Q) -> (B, C*k*k, P*Q), zero outside the plane.
#[derive(Debug, Clone, Copy)]
pub struct Im2Col {
    pub k: usize,
    pub padding: usize,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "dnd-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let (b, c, p, q) = l.shape().dims4()?;
        let (k, pad) = (self.k, self.padding);
        let mut out = vec![0f32; b * c * k * k * p * q];
        for bc in 0..b * c {
            let src = &x[bc * p * q..][..p * q];
            for dy in 0..k {
                let rows = valid(dy, pad, p);
                for dx in 0..k {
                    let cols = valid(dx, pad, q);
                    let base = ((bc * k + dy) * k + dx) * p * q;
                    for i in rows.clone() {
                        let si = (i + dy - pad) * q;
                        let (a, z) = (cols.start, cols.end);
                        let s0 = si + a + dx - pad;
                        out[base + i * q + a..base + i * q + z]
                            .copy_from_slice(&src[s0..s0 + (z - a)]);
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c * k * k, p * q))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (_, _, p, q) = arg.dims4()?;
        let g = grad.contiguous()?.apply_op1_no_bwd(&Col2Im {
            k: self.k,
            padding: self.padding,
            p,
            q,
        })?;
        Ok(Some(g))
    }
}

/// The adjoint of [`Im2Col`]: (B, C*k*k, P*Q) -> (B, C, P, Q), summing overlapping windows.
#[derive(Debug, Clone, Copy)]
pub struct Col2Im {
    pub k: usize,
    pub padding: usize,
    pub p: usize,
    pub q: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "dnd-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_data(s, l, self.name())?;
        let (b, ckk, pq) = l.shape().dims3()?;
        let (k, pad, p, q) = (self.k, self.padding, self.p, self.q);
        if pq != p * q || ckk % (k * k) != 0 {
            candle_core::bail!("dnd-col2im: bad shape ({b}, {ckk}, {pq})")
        }
        let c = ckk / (k * k);
        let mut out = vec![0f32; b * c * p * q];
        for bc in 0..b * c {
            let dst = &mut out[bc * p * q..][..p * q];
            for dy in 0..k {
                let rows = valid(dy, pad, p);
                for dx in 0..k {
                    let cols = valid(dx, pad, q);
                    let base = ((bc * k + dy) * k + dx) * p * q;
                    for i in rows.clone() {
                        let (a, z) = (cols.start, cols.end);
                        let d0 = (i + dy - pad) * q + a + dx - pad;
                        let src = &g[base + i * q + a..base + i * q + z];
                        for (d, s) in dst[d0..d0 + (z - a)].iter_mut().zip(src) {
                            *d += s;
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, p, q))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn conv_same_equals_candle_conv2d() {
        let dev = Device::Cpu;
        for (k, pad) in [(1, 0), (3, 1), (5, 2)] {
            let x = Tensor::randn(0f32, 1.0, (2, 5, 7, 4), &dev).unwrap();
            // A permuted (non-contiguous) input, as the decoder gives it.
            let x = x.permute((0, 1, 3, 2)).unwrap();
            let w = Tensor::randn(0f32, 1.0, (3, 5, k, k), &dev).unwrap();
            let ours = conv_same(&x, &w, pad).unwrap();
            let theirs = x.contiguous().unwrap().conv2d(&w, pad, 1, 1, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-4, "k = {k}");
        }
        let x = Tensor::zeros((1, 5, 4, 4), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 4, 3, 3), DType::F32, &dev).unwrap();
        assert!(conv_same(&x, &w, 1).is_err());
    }

    #[test]
    fn custom_im2col_matches_index_select_forward_and_backward() {
        let dev = Device::Cpu;
        for (k, pad, p, q) in [(3, 1, 6, 5), (5, 2, 3, 7), (3, 1, 1, 1)] {
            let x = Var::randn(0f32, 1.0, (2, 3, p, q), &dev).unwrap();
            let a = x.as_tensor().apply_op1(Im2Col { k, padding: pad }).unwrap();
            let b = im2col_index_select(x.as_tensor(), k, pad).unwrap();
            let d = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
            let w = Tensor::randn(0f32, 1.0, a.dims(), &dev).unwrap();
            let ga = (&a * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&b * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (
                ga.get(x.as_tensor()).unwrap(),
                gb.get(x.as_tensor()).unwrap(),
            );
            let d = (ga - gb).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5, "k {k} p {p} q {q}");
        }
    }
}
