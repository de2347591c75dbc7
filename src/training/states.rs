//! The base model's own states as the generator's condition (`train --read-states K`).
//!
//! Each text (one labelled example, `"{prompt}\nAnswer: {answer}"`) is tokenised raw and run
//! through the first K blocks of the frozen base model; the condition is the residual
//! stream entering block K at the text's **last** L tokens, each row scaled to unit RMS,
//! **right-aligned**: a text of n < L tokens fills rows L-n..L and rows 0..L-n are zero
//! (mask 0). Output (N, L, hidden), the mask (N, L).
//!
//! Why: the MiniLM-reading generator reads a rule's family from a task's examples, and with
//! hundreds of values an unseen value a little (README, "343 values"), but the value has to
//! reach SmolLM2's weights through a map learnt value by value from MiniLM's space. In the
//! base model's own states the value (the tokens of `summerbad`'s `bad`) already lies in
//! the space the adapter acts on. Right-aligned, because the answer ends the text: its last
//! tokens sit at the same rows for every example whatever the prompt's length. Unit RMS,
//! because the residual stream's scale grows with depth and varies by token (the first
//! token's is far larger); a zero row stays zero. Why here, not beside MiniLM in
//! `generator`: it runs the trainer's llama. `eval --nll` and the server read such a
//! generator ([`StateEncoder::reader`], `Generator::load_reading` and `load_sharing`);
//! `Generator::load` refuses its encoder's width.

use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, D};

use crate::format::LlamaDims;
use crate::generator::encoder::ConditionEncoder;
use crate::generator::{ConditionReader, DecoderConfig};
use crate::training::llama::{chat::ChatTokenizer, Llama};

/// Texts run through the model at once.
const BATCH: usize = 32;

/// The frozen base model read at the input of one block.
pub struct StateEncoder {
    model: Llama,
    tokenizer: ChatTokenizer,
    layer: usize,
}

impl StateEncoder {
    /// Loads the base model folder's first `layer` + 1 blocks and reads the input of the
    /// last.
    pub fn load(base_dir: &Path, layer: usize) -> Result<Self> {
        let blocks = LlamaDims::from_config_file(&base_dir.join("config.json"))?.num_hidden_layers;
        ensure!(
            layer < blocks,
            "--read-states {layer}: the base model has blocks 0..{blocks}"
        );
        let model = Llama::load_first(base_dir, layer + 1, &Device::Cpu)?;
        Ok(Self {
            tokenizer: ChatTokenizer::load(base_dir)?,
            model,
            layer,
        })
    }

    /// The name a generator's `decoder.json` records for this encoder.
    pub fn name(&self) -> String {
        format!("{} block {} input", self.model.name, self.layer)
    }

    /// What a generator of `cfg` reads its condition with, when it reads the states of the
    /// base model in `base_dir` (`None`: it reads MiniLM). Errors when it reads another
    /// model's states.
    pub fn for_generator(cfg: &DecoderConfig, base_dir: &Path) -> Result<Option<Self>> {
        let Some(layer) = cfg
            .encoder
            .strip_suffix(" input")
            .and_then(|s| s.rsplit_once(" block "))
            .and_then(|(_, k)| k.parse::<usize>().ok())
        else {
            return Ok(None);
        };
        let states = Self::load(base_dir, layer)?;
        ensure!(
            states.name() == cfg.encoder,
            "the generator reads {:?}, the base model {} gives {:?}",
            cfg.encoder,
            base_dir.display(),
            states.name()
        );
        Ok(Some(states))
    }

    /// [`StateEncoder::for_generator`] of the generator folder `generator_dir`, as what a
    /// [`Generator`](crate::generator::Generator) loads it with (`None`: MiniLM): the one
    /// way `eval` and the server find out what a generator reads.
    pub fn reader(generator_dir: &Path, base_dir: &Path) -> Result<Option<ConditionReader>> {
        let cfg = DecoderConfig::load(generator_dir)
            .with_context(|| format!("loading generator {}", generator_dir.display()))?;
        Ok(Self::for_generator(&cfg, base_dir)
            .with_context(|| {
                format!(
                    "generator {} reads the base model's states",
                    generator_dir.display()
                )
            })?
            .map(|s| Arc::new(s) as ConditionReader))
    }

    fn encode_batch(&self, texts: &[String], l: usize) -> Result<(Tensor, Tensor)> {
        let ids = texts
            .iter()
            .map(|t| self.tokenizer.encode(t))
            .collect::<Result<Vec<_>>>()?;
        ensure!(
            ids.iter().all(|i| !i.is_empty()),
            "an empty text has no states"
        );
        let s = ids.iter().map(Vec::len).max().unwrap_or(0);
        // Right padding: the causal mask keeps it out of every real row.
        let flat: Vec<u32> = ids
            .iter()
            .flat_map(|i| i.iter().copied().chain(std::iter::repeat_n(0, s - i.len())))
            .collect();
        let dev = self.model.device();
        let x = self
            .model
            .block_input(&Tensor::from_vec(flat, (ids.len(), s), dev)?, self.layer)?;
        let x = x.broadcast_div(&(x.sqr()?.mean_keepdim(D::Minus1)?.sqrt()? + 1e-6)?)?;
        let hidden = self.model.dims.hidden_size;
        let (mut rows, mut mask) = (Vec::new(), Vec::new());
        for (i, seq) in ids.iter().enumerate() {
            let n = seq.len().min(l);
            let kept = x.get(i)?.narrow(0, seq.len() - n, n)?;
            rows.push(match n < l {
                true => Tensor::cat(
                    &[&Tensor::zeros((l - n, hidden), DType::F32, dev)?, &kept],
                    0,
                )?,
                false => kept,
            });
            mask.extend((0..l).map(|j| f32::from(u8::from(j >= l - n))));
        }
        Ok((
            Tensor::stack(&rows, 0)?,
            Tensor::from_vec(mask, (ids.len(), l), dev)?,
        ))
    }
}

impl ConditionEncoder for StateEncoder {
    fn encode(&self, texts: &[String], l: usize) -> Result<(Tensor, Tensor)> {
        ensure!(!texts.is_empty(), "no texts to encode");
        ensure!(l >= 1, "L must be at least 1");
        let (mut x, mut m) = (Vec::new(), Vec::new());
        for chunk in texts.chunks(BATCH) {
            let (a, b) = self.encode_batch(chunk, l)?;
            x.push(a);
            m.push(b);
        }
        Ok((Tensor::cat(&x, 0)?, Tensor::cat(&m, 0)?))
    }

    fn hidden_size(&self) -> usize {
        self.model.dims.hidden_size
    }

    fn cache_tag(&self) -> Option<String> {
        Some(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_model_dir;

    fn encoder(layer: usize) -> StateEncoder {
        StateEncoder::load(tiny_model_dir().path(), layer).unwrap()
    }

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2().unwrap()
    }

    /// Block input K is the embedding (K = 0) or the state after block K-1, as
    /// `layer_states` gives it, whatever else shares the batch.
    #[test]
    fn a_text_reads_the_same_alone_and_beside_a_longer_one_right_aligned() {
        let dir = tiny_model_dir();
        let model = Llama::load(dir.path(), &Device::Cpu).unwrap();
        let tok = ChatTokenizer::load(dir.path()).unwrap();
        for layer in [0, 1] {
            let enc = StateEncoder::load(dir.path(), layer).unwrap();
            assert_eq!(enc.model.dims.num_hidden_layers, layer + 1, "blocks kept");
            let short = "reverse cat\nAnswer: tac".to_string();
            let long = "reverse the long word elephant please\nAnswer: tnahpele".to_string();
            let n = tok.encode(&short).unwrap().len();
            let l = n + 3;
            let (alone, mask) = enc.encode(std::slice::from_ref(&short), l).unwrap();
            let (pair, _) = enc.encode(&[long.clone(), short.clone()], l).unwrap();
            let alone = alone.get(0).unwrap();
            assert_eq!(rows(&alone), rows(&pair.get(1).unwrap()));
            assert_eq!(
                mask.get(0).unwrap().to_vec1::<f32>().unwrap(),
                [vec![0.0; 3], vec![1.0; n]].concat()
            );
            assert!(rows(&alone.narrow(0, 0, 3).unwrap())
                .iter()
                .flatten()
                .all(|v| *v == 0.0));
            // The real rows: the model's own states, at unit RMS.
            let ids = tok.encode(&short).unwrap();
            let all: Vec<u32> = (0..n as u32).collect();
            let want = match layer {
                0 => model
                    .block_input(
                        &Tensor::new(ids.as_slice(), &Device::Cpu)
                            .unwrap()
                            .unsqueeze(0)
                            .unwrap(),
                        0,
                    )
                    .unwrap()
                    .get(0)
                    .unwrap(),
                k => model.layer_states(&ids, &all).unwrap()[k - 1].clone(),
            };
            let want = want
                .broadcast_div(
                    &(want
                        .sqr()
                        .unwrap()
                        .mean_keepdim(D::Minus1)
                        .unwrap()
                        .sqrt()
                        .unwrap()
                        + 1e-6)
                        .unwrap(),
                )
                .unwrap();
            let got = alone.narrow(0, 3, n).unwrap();
            let diff = crate::testing::max_abs_diff(&got, &want);
            assert!(diff < 1e-4, "layer {layer}");
        }
    }

    /// A generator that reads the states generates from them as its decoder does on the
    /// encoder's output; a generator of another model's states is refused.
    #[test]
    fn a_generator_reads_the_states_it_was_trained_on() {
        use crate::generator::decoder::tests::tiny_config;
        use crate::generator::{Decoder, Generator};
        let dir = tiny_model_dir();
        let enc = StateEncoder::load(dir.path(), 1).unwrap();
        let cfg = tiny_config()
            .with_encoder(&enc.name(), enc.hidden_size())
            .unwrap();
        let gen_dir = tempfile::tempdir().unwrap();
        crate::generator::write_random_generator(&cfg, 3, gen_dir.path()).unwrap();
        let states = StateEncoder::for_generator(&cfg, dir.path())
            .unwrap()
            .unwrap();
        let minilm = crate::testing::real_assets().minilm();
        let g = Generator::load_reading(
            gen_dir.path(),
            &minilm,
            Some(Arc::new(states)),
            &Device::Cpu,
        )
        .unwrap();
        let texts: Vec<String> = [
            "a\nAnswer: b",
            "longer text\nAnswer: c d",
            "x\nAnswer: y",
            "z",
        ]
        .map(String::from)
        .to_vec();
        let got = g.generate(&texts).unwrap().adapter;
        let (cond, _) = enc.encode(&texts, cfg.prompt_tokens).unwrap();
        let (dec, _) = Decoder::load(gen_dir.path(), &Device::Cpu).unwrap();
        let want = cfg
            .layout()
            .unwrap()
            .detokenize(&dec.forward(&cond).unwrap(), cfg.lora_alpha, "tiny")
            .unwrap();
        for (name, t) in &want.tensors {
            let diff = crate::testing::max_abs_diff(t, &got.tensors[name]);
            assert!(diff < 1e-5, "{name}: {diff}");
        }
        // MiniLM's generators read MiniLM; another model's states are refused.
        assert!(StateEncoder::for_generator(&tiny_config(), dir.path())
            .unwrap()
            .is_none());
        let other = tiny_config()
            .with_encoder("other block 1 input", 64)
            .unwrap();
        let e = StateEncoder::for_generator(&other, dir.path())
            .err()
            .unwrap();
        assert!(e.to_string().contains("the generator reads"), "{e}");
    }

    /// A text over L tokens keeps its last L (the answer's end).
    #[test]
    fn a_long_text_keeps_its_last_rows() {
        let enc = encoder(1);
        let text = "one two three four five six seven\nAnswer: eight".to_string();
        let (full, _) = enc.encode(std::slice::from_ref(&text), 40).unwrap();
        let (cut, mask) = enc.encode(std::slice::from_ref(&text), 4).unwrap();
        assert_eq!(mask.to_vec2::<f32>().unwrap(), vec![vec![1.0; 4]]);
        assert_eq!(
            rows(&cut.get(0).unwrap()),
            rows(&full.get(0).unwrap().narrow(0, 36, 4).unwrap())
        );
        assert_eq!(enc.hidden_size(), full.dim(2).unwrap());
        assert!(enc.cache_tag().unwrap().ends_with("block 1 input"));
        assert!(StateEncoder::load(tiny_model_dir().path(), 99).is_err());
    }
}
