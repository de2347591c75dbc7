//! Retrieval: a task's adapter as the mean of the stored LoRAs of the `k` tasks whose
//! examples read most like its own, by MiniLM sentence vectors.
//!
//! It exists as the baseline a generator that reads its input must beat: DnD's held-out
//! adapters score like the training LoRAs averaged into one whatever prompts they are fed
//! (README, "The 144-task point across folds"), and retrieval is the simplest map from a
//! task's text to weights that does use the text. No training, one parameter (`k`, fixed
//! before any evaluation; not tuned on held-out tasks).
//!
//! A task is one vector: the mean of its texts' sentence vectors (each L2-normalised, as
//! [`PromptEncoder::sentence_embeddings`] gives them); similarity is the cosine of two such
//! vectors after subtracting the library's mean vector, as `bench condition` compares
//! batches (MiniLM's vectors of one suite share a large common part). The `k` nearest
//! library tasks' adapters are averaged with equal weights, tensor by tensor
//! ([`mean_adapter`]). With the collection's shared frozen A (`format::frozen_a`) every A
//! is the same, so that averages the B matrices and with them the weight updates;
//! otherwise it averages A and B separately, which is not the mean update (the training
//! LoRAs' average has the same caveat).
//!
//! [`on_top`] moves another adapter (e.g. the multi-task LoRA of the same tasks, which
//! per-task LoRAs averaged do not reach) by what the neighbours have that the library as a
//! whole has not: its B plus the neighbours' mean B minus the library's mean B (task
//! arithmetic, at weight 1: nothing to tune). Every A must be the same.

use std::borrow::Borrow;

use anyhow::{ensure, Context, Result};
use candle_core::{Tensor, D};

use super::PromptEncoder;
use crate::format::peft::LoraAdapter;

/// Stored tasks: names, one centred unit vector each (T, 384), the mean they are centred
/// on, their adapters and the mean of those.
pub struct Library {
    names: Vec<String>,
    vectors: Tensor,
    centre: Tensor,
    adapters: Vec<LoraAdapter>,
    mean: LoraAdapter,
}

/// What [`Library::nearest`] picked.
#[derive(Clone)]
pub struct Retrieved {
    /// The mean of the neighbours' adapters.
    pub adapter: LoraAdapter,
    /// The neighbours, nearest first, with their cosine to the query.
    pub neighbours: Vec<(String, f32)>,
}

impl Library {
    /// `tasks`: per stored task its name, texts (in the form queries will come in, e.g.
    /// the generator's condition text of its examples) and adapter.
    pub fn new(
        encoder: &PromptEncoder,
        tasks: Vec<(String, Vec<String>, LoraAdapter)>,
    ) -> Result<Self> {
        ensure!(!tasks.is_empty(), "an empty library");
        let mut names = Vec::new();
        let mut vectors = Vec::new();
        let mut adapters = Vec::new();
        for (name, texts, adapter) in tasks {
            vectors.push(
                task_vector(encoder, &texts)
                    .with_context(|| format!("task {name}"))?
                    .squeeze(0)?,
            );
            names.push(name);
            adapters.push(adapter);
        }
        let vectors = Tensor::stack(&vectors, 0)?;
        let centre = vectors.mean_keepdim(0)?;
        Ok(Self {
            names,
            vectors: unit(&vectors.broadcast_sub(&centre)?)?,
            centre,
            mean: mean_adapter(&adapters)?,
            adapters,
        })
    }

    /// The stored tasks' names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The mean of every stored adapter.
    pub fn mean(&self) -> &LoraAdapter {
        &self.mean
    }

    /// A stored task's adapter.
    pub fn adapter(&self, name: &str) -> Option<&LoraAdapter> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(&self.adapters[i])
    }

    /// The mean adapter of the `k` stored tasks nearest to `texts` (all when fewer);
    /// ties keep library order.
    pub fn nearest(
        &self,
        encoder: &PromptEncoder,
        texts: &[String],
        k: usize,
    ) -> Result<Retrieved> {
        ensure!(k >= 1, "retrieval needs k >= 1");
        let query = unit(&task_vector(encoder, texts)?.broadcast_sub(&self.centre)?)?;
        let cos = self
            .vectors
            .matmul(&query.t()?)?
            .squeeze(1)?
            .to_vec1::<f32>()?;
        let mut order: Vec<usize> = (0..cos.len()).collect();
        order.sort_by(|&a, &b| cos[b].total_cmp(&cos[a]));
        order.truncate(k);
        let picked: Vec<&LoraAdapter> = order.iter().map(|&i| &self.adapters[i]).collect();
        Ok(Retrieved {
            adapter: mean_adapter(&picked)?,
            neighbours: order
                .iter()
                .map(|&i| (self.names[i].clone(), cos[i]))
                .collect(),
        })
    }
}

/// `base` moved by what `retrieved` has that `mean` has not: every B is `base`'s plus
/// `retrieved`'s minus `mean`'s; every A must be the same in all three (to 1e-6).
pub fn on_top(
    base: &LoraAdapter,
    retrieved: &LoraAdapter,
    mean: &LoraAdapter,
) -> Result<LoraAdapter> {
    ensure!(
        base.config.r == retrieved.config.r
            && base.config.lora_alpha == retrieved.config.lora_alpha,
        "the adapters have different ranks or alphas"
    );
    let mut tensors = std::collections::BTreeMap::new();
    for (name, b) in &base.tensors {
        let get = |a: &LoraAdapter| -> Result<Tensor> {
            let t = a.tensors.get(name);
            Ok(t.with_context(|| format!("an adapter lacks {name}"))?
                .clone())
        };
        let (r, m) = (get(retrieved)?, get(mean)?);
        let t = if name.contains("lora_B") {
            ((b + r)? - m)?
        } else {
            for other in [&r, &m] {
                let diff = (other - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                ensure!(
                    diff <= 1e-6,
                    "{name} differs by {diff}: the adapters do not share A"
                );
            }
            b.clone()
        };
        tensors.insert(name.clone(), t);
    }
    Ok(LoraAdapter {
        config: base.config.clone(),
        tensors,
    })
}

/// One task's vector (1, 384): the mean of its texts' sentence vectors.
fn task_vector(encoder: &PromptEncoder, texts: &[String]) -> Result<Tensor> {
    ensure!(!texts.is_empty(), "no texts to embed");
    Ok(encoder.sentence_embeddings(texts)?.mean_keepdim(0)?)
}

/// Rows scaled to unit length (a zero row, e.g. a one-task library centred, stays zero).
fn unit(rows: &Tensor) -> Result<Tensor> {
    let norm = rows
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f32::MAX)?;
    Ok(rows.broadcast_div(&norm)?)
}

/// The adapters' tensors averaged one by one (the first adapter's config).
pub fn mean_adapter<A: Borrow<LoraAdapter>>(adapters: &[A]) -> Result<LoraAdapter> {
    let first = adapters.first().context("no adapters to average")?.borrow();
    let mut tensors = std::collections::BTreeMap::new();
    for name in first.tensors.keys() {
        let parts = adapters
            .iter()
            .map(|a| {
                a.borrow()
                    .tensors
                    .get(name)
                    .with_context(|| format!("an adapter lacks {name}"))
            })
            .collect::<Result<Vec<_>>>()?;
        tensors.insert(name.clone(), Tensor::stack(&parts, 0)?.mean(0)?);
    }
    Ok(LoraAdapter {
        config: first.config.clone(),
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::peft::PeftConfig;
    use candle_core::Device;

    fn adapter(value: f32) -> LoraAdapter {
        let t = Tensor::full(value, (2, 3), &Device::Cpu).unwrap();
        LoraAdapter {
            config: PeftConfig::new(1, 2.0, &[], "test"),
            tensors: [("w".to_string(), t)].into(),
        }
    }

    fn value(a: &LoraAdapter) -> f32 {
        a.tensors["w"].mean_all().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn the_mean_adapter_averages_every_tensor() {
        let (a, b) = (adapter(1.0), adapter(4.0));
        assert_eq!(value(&mean_adapter(&[&a, &b]).unwrap()), 2.5);
        let mut c = adapter(1.0);
        c.tensors.clear();
        assert!(
            mean_adapter(&[&a, &c]).is_err(),
            "a missing tensor is an error"
        );
    }

    #[test]
    fn on_top_moves_b_and_keeps_a_shared() {
        let with = |a: f32, b: f32| LoraAdapter {
            config: PeftConfig::new(1, 2.0, &[], "test"),
            tensors: [
                (
                    "x.lora_A.weight".to_string(),
                    Tensor::full(a, (1, 2), &Device::Cpu).unwrap(),
                ),
                (
                    "x.lora_B.weight".to_string(),
                    Tensor::full(b, (2, 1), &Device::Cpu).unwrap(),
                ),
            ]
            .into(),
        };
        let got = on_top(&with(1.0, 5.0), &with(1.0, 3.0), &with(1.0, 2.0)).unwrap();
        let mean = |n: &str| {
            got.tensors[n]
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(
            (mean("x.lora_A.weight"), mean("x.lora_B.weight")),
            (1.0, 6.0)
        );
        let err = on_top(&with(1.0, 5.0), &with(0.5, 3.0), &with(1.0, 2.0)).unwrap_err();
        assert!(err.to_string().contains("do not share A"), "{err}");
    }

    /// With the real MiniLM (fetched when missing): a query about capitals retrieves the
    /// capitals task first, and the adapter returned is the mean of exactly the neighbours'.
    #[test]
    fn retrieval_picks_the_task_that_reads_alike() {
        let dir = crate::testing::real_assets().minilm();
        let encoder = PromptEncoder::load(&dir, &Device::Cpu).unwrap();
        let texts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let library = Library::new(
            &encoder,
            vec![
                (
                    "capitals".into(),
                    texts(&["What is the capital of France?", "Capital of Peru?"]),
                    adapter(1.0),
                ),
                (
                    "reverse".into(),
                    texts(&["Reverse the word: apple", "Reverse: stone"]),
                    adapter(2.0),
                ),
                (
                    "sums".into(),
                    texts(&["What is 17 + 25?", "Add 3 and 9."]),
                    adapter(4.0),
                ),
            ],
        )
        .unwrap();
        let got = library
            .nearest(&encoder, &texts(&["What is the capital of Japan?"]), 1)
            .unwrap();
        assert_eq!(got.neighbours[0].0, "capitals");
        assert_eq!(value(&got.adapter), 1.0);
        let two = library
            .nearest(&encoder, &texts(&["Reverse the word: table"]), 2)
            .unwrap();
        assert_eq!(two.neighbours[0].0, "reverse");
        assert!(two.neighbours[0].1 > two.neighbours[1].1);
        let expect =
            (2.0 + if two.neighbours[1].0 == "sums" {
                4.0
            } else {
                1.0
            }) / 2.0;
        assert_eq!(value(&two.adapter), expect);
    }
}
