//! What both trainers (the LoRA trainer, [`super::lora`], and the generator trainer,
//! [`super::generator`]) optimise with, written once: AdamW with moments that can be saved
//! and restored, the linear warm-up + cosine learning-rate schedule, global-norm gradient
//! clipping, the resume state (variables and moments) and the progress bar with its
//! optional step budget.

use std::collections::{BTreeMap, HashMap};

use anyhow::{ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// AdamW's constants and its decoupled weight decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWParams {
    /// The usual betas (0.9, 0.999) and eps (1e-8) with this weight decay.
    pub fn with_weight_decay(weight_decay: f64) -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

/// AdamW (Loshchilov & Hutter) over a list of variables. At step `t` (1-based), for each
/// variable with a gradient `g`:
///
/// ```text
/// m = m b1 + g (1 - b1)            v = v b2 + g^2 (1 - b2)
/// theta = theta (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
/// ```
///
/// in F32, op for op what candle-nn's `AdamW` computes (a test checks the bits), but with
/// the moments and step count readable and settable, which an exact resume needs and
/// candle-nn keeps private.
#[derive(Debug)]
pub struct AdamW {
    params: AdamWParams,
    vars: Vec<Var>,
    /// First and second moments, one pair per variable.
    moments: Vec<(Tensor, Tensor)>,
    steps: usize,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|v| Ok((v.as_tensor().zeros_like()?, v.as_tensor().zeros_like()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            vars,
            moments,
            steps: 0,
        })
    }

    /// One update at learning rate `lr` with gradients already clipped. Variables without
    /// a gradient are left as they are.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let AdamWParams {
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay,
        } = self.params;
        let t = self.steps as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (var, (m, v)) in self.vars.iter().zip(&mut self.moments) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // A variable's gradient can still carry its backward graph (candle detaches
            // only inner nodes' gradients): a variable used as it is by a matmul gets one
            // that points at the step's activations. Kept in the moments, that graph and
            // every earlier step's moments would stay alive, a leak as large as the
            // variable every step.
            let g = &g.detach();
            *m = ((&*m * b1)? + (g * (1.0 - b1))?)?;
            *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&*m / c1)? / ((&*v / c2)?.sqrt()? + eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Updates taken so far.
    pub fn steps_done(&self) -> usize {
        self.steps
    }

    /// First and second moments of every variable, in the order the variables were given.
    pub fn moments(&self) -> &[(Tensor, Tensor)] {
        &self.moments
    }

    /// Continues a run saved after `steps_done` updates with these moments (one pair per
    /// variable, in order; each the shape of its variable).
    pub fn restore(&mut self, steps_done: usize, moments: Vec<(Tensor, Tensor)>) -> Result<()> {
        ensure!(
            moments.len() == self.vars.len(),
            "{} moment pairs for {} variables",
            moments.len(),
            self.vars.len()
        );
        for (var, (m, v)) in self.vars.iter().zip(&moments) {
            ensure!(
                m.shape() == var.shape() && v.shape() == var.shape(),
                "moments of shape {:?} and {:?} for a variable of shape {:?}",
                m.shape(),
                v.shape(),
                var.shape()
            );
        }
        self.moments = moments;
        self.steps = steps_done;
        Ok(())
    }
}

/// The file a trainer's [`resume_state`] is saved in, inside its resume folder.
pub const RESUME_STATE_FILE: &str = "state.safetensors";

/// What continues a run exactly: each named variable's value (`w.NAME`) and its AdamW
/// moments (`m.NAME`, `v.NAME`); `vars` in the order `adam` was given them.
pub fn resume_state(vars: &[(String, Var)], adam: &AdamW) -> BTreeMap<String, Tensor> {
    let mut state = BTreeMap::new();
    for ((name, var), (m, v)) in vars.iter().zip(adam.moments()) {
        state.insert(format!("w.{name}"), var.as_tensor().clone());
        state.insert(format!("m.{name}"), m.clone());
        state.insert(format!("v.{name}"), v.clone());
    }
    state
}

/// Puts a [`resume_state`] back after `steps_done` updates: the variables' values and the
/// optimiser's moments.
pub fn restore_resume_state(
    vars: &[(String, Var)],
    adam: &mut AdamW,
    mut state: HashMap<String, Tensor>,
    steps_done: usize,
) -> Result<()> {
    let mut moments = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let mut take = |key: String| {
            state
                .remove(&key)
                .with_context(|| format!("resume state has no {key}"))
        };
        var.set(&take(format!("w.{name}"))?)?;
        moments.push((take(format!("m.{name}"))?, take(format!("v.{name}"))?));
    }
    adam.restore(steps_done, moments)
}

/// The bytes of a safetensors file of these tensors.
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let views: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Ok(safetensors::serialize(views, None)?)
}

/// Linear warm-up to `peak` over the first `warmup` steps, then cosine decay to
/// `peak * floor`, reached at step `end` (0-based steps).
///
/// The two trainers differ in where the decay ends: the LoRA trainer reaches its floor
/// (a tenth) at its last step (`end = steps - 1`), the generator trainer decays to 0 one
/// step after its last (`end = steps`). Each keeps its own so that runs reproduce.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    pub peak: f64,
    pub warmup: usize,
    pub end: usize,
    /// Final learning rate as a fraction of `peak`.
    pub floor: f64,
}

impl WarmupCosine {
    /// Learning rate of optimiser step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.end.saturating_sub(self.warmup).max(1);
        let p = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let min = self.peak * self.floor;
        min + (self.peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

/// Global L2 norm of the gradients of `vars`, and the gradients scaled so that it is at
/// most `clip` (unchanged when `clip <= 0` or the norm is below it).
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], clip: f64) -> Result<f32> {
    let mut sum = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sum += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = sum.sqrt();
    if clip > 0.0 && norm > clip {
        let s = clip / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * s)?);
            }
        }
    }
    Ok(norm as f32)
}

/// A progress bar over `steps` steps, labelled `label`; hidden when `quiet`.
pub fn progress_bar(steps: usize, quiet: bool, label: &str) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// Prints a line above the bar; a hidden bar (no terminal) drops `println`, so then the
/// line is printed directly.
pub fn print_above(bar: &ProgressBar, text: String) {
    match bar.is_hidden() {
        true => println!("{text}"),
        false => bar.println(text),
    }
}

/// An optional limit on optimiser steps, to stop a run as if it were killed (tests of
/// resumption).
#[derive(Debug, Clone, Copy, Default)]
pub struct StepBudget(Option<usize>);

impl StepBudget {
    /// `None`: no limit.
    pub fn new(limit: Option<usize>) -> Self {
        Self(limit)
    }

    /// Takes one step from the budget; false when it is spent.
    pub fn take(&mut self) -> bool {
        match &mut self.0 {
            Some(0) => false,
            Some(b) => {
                *b -= 1;
                true
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::Optimizer;

    /// Three variables, a few steps of fixed pseudo-random gradients; the third variable
    /// gets no gradient at the second step.
    fn run(steps: usize, mut update: impl FnMut(&[Var], &GradStore, f64)) -> Vec<Vec<f32>> {
        let dev = Device::Cpu;
        let vars: Vec<Var> = [(3usize, 4usize), (5, 2), (7, 1)]
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let t = Tensor::arange(0f32, (s.0 * s.1) as f32, &dev).unwrap();
                let t = ((t * (0.37 + i as f64)).unwrap().sin().unwrap() * 0.5).unwrap();
                Var::from_tensor(&t.reshape(s).unwrap()).unwrap()
            })
            .collect();
        for step in 0..steps {
            // The gradient of sum(w * x^2) is 2 w x: a different function each step.
            let mut loss = Tensor::zeros((), candle_core::DType::F32, &dev).unwrap();
            for (i, v) in vars.iter().enumerate() {
                if step == 1 && i == 2 {
                    continue;
                }
                let w = (v.as_tensor().ones_like().unwrap() * (1.0 + (step * 3 + i) as f64 * 0.13))
                    .unwrap();
                let term = (v.as_tensor().sqr().unwrap() * w)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                loss = (loss + term).unwrap();
            }
            let grads = loss.backward().unwrap();
            update(&vars, &grads, 1e-2 * (step + 1) as f64);
        }
        vars.iter()
            .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    #[test]
    fn adamw_equals_candle_nn_bit_for_bit() {
        for wd in [0.0, 0.1] {
            let mut ours: Option<AdamW> = None;
            let a = run(4, |vars, grads, lr| {
                let opt = ours.get_or_insert_with(|| {
                    AdamW::new(vars.to_vec(), AdamWParams::with_weight_decay(wd)).unwrap()
                });
                opt.step(grads, lr).unwrap();
            });
            let mut theirs: Option<candle_nn::AdamW> = None;
            let b = run(4, |vars, grads, lr| {
                let opt = theirs.get_or_insert_with(|| {
                    let p = candle_nn::ParamsAdamW {
                        lr,
                        weight_decay: wd,
                        ..Default::default()
                    };
                    candle_nn::AdamW::new(vars.to_vec(), p).unwrap()
                });
                opt.set_learning_rate(lr);
                opt.step(grads).unwrap();
            });
            assert_eq!(a, b, "weight decay {wd}");
            let before = run(0, |_, _, _| {});
            assert_ne!(a, before, "the steps moved the variables");
        }
    }

    #[test]
    fn moments_keep_no_graph() {
        // w used as it is by a matmul: its gradient x^T g points at x's graph.
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::ones((3, 2), DType::F32, &dev).unwrap()).unwrap();
        let x = Var::from_tensor(&Tensor::ones((1, 3), DType::F32, &dev).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![w.clone()], AdamWParams::with_weight_decay(0.0)).unwrap();
        for _ in 0..2 {
            let y = (x.as_tensor() * 2.0)
                .unwrap()
                .matmul(w.as_tensor())
                .unwrap();
            let grads = y.sum_all().unwrap().backward().unwrap();
            assert!(grads.get(w.as_tensor()).unwrap().track_op());
            opt.step(&grads, 1e-2).unwrap();
        }
        let (m, v) = &opt.moments[0];
        assert!(!m.track_op() && !v.track_op());
    }

    #[test]
    fn adamw_restored_from_its_moments_continues_the_same_run() {
        let wd = 0.1;
        let mut whole: Option<AdamW> = None;
        let a = run(4, |vars, grads, lr| {
            whole
                .get_or_insert_with(|| {
                    AdamW::new(vars.to_vec(), AdamWParams::with_weight_decay(wd)).unwrap()
                })
                .step(grads, lr)
                .unwrap();
        });
        // The same run, with the optimiser replaced by a restored copy after two steps.
        let mut parts: Option<AdamW> = None;
        let mut n = 0;
        let b = run(4, |vars, grads, lr| {
            if n == 2 {
                let old = parts.take().unwrap();
                let mut new =
                    AdamW::new(vars.to_vec(), AdamWParams::with_weight_decay(wd)).unwrap();
                new.restore(old.steps_done(), old.moments().to_vec())
                    .unwrap();
                parts = Some(new);
            }
            n += 1;
            parts
                .get_or_insert_with(|| {
                    AdamW::new(vars.to_vec(), AdamWParams::with_weight_decay(wd)).unwrap()
                })
                .step(grads, lr)
                .unwrap();
        });
        assert_eq!(a, b);
    }

    #[test]
    fn schedule_floor_and_end_are_parameters() {
        // The generator trainer's flavour: to 0, reached one step after the last.
        let s = WarmupCosine {
            peak: 1.0,
            warmup: 2,
            end: 10,
            floor: 0.0,
        };
        assert!((s.lr_at(0) - 0.5).abs() < 1e-12);
        assert!((s.lr_at(2) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(6) - 0.5).abs() < 1e-12);
        assert!(s.lr_at(9) > 0.0);
        assert_eq!(s.lr_at(10), 0.0);
        let floored = WarmupCosine { floor: 0.1, ..s };
        assert!((floored.lr_at(10) - 0.1).abs() < 1e-12);
        assert!((floored.lr_at(6) - 0.55).abs() < 1e-12);
    }

    #[test]
    fn the_step_budget_runs_out() {
        let mut b = StepBudget::new(Some(2));
        assert!(b.take() && b.take());
        assert!(!b.take() && !b.take());
        let mut free = StepBudget::new(None);
        assert!((0..100).all(|_| free.take()));
    }
}
