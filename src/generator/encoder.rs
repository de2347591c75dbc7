//! Prompt encoder: the frozen Sentence-BERT all-MiniLM-L6-v2 (DnD method, section 1).
//!
//! The DnD condition is the encoder's last hidden state at *every* token position, not a
//! pooled vector: N prompts, each padded or truncated to L tokens, give (N, L, 384). Padding
//! positions are part of the condition, but the model is given the attention mask so that
//! real tokens never attend to padding. Truncation keeps `[CLS] ... [SEP]` (the tokenizer
//! adds the special tokens after truncating). L is at most 512 (MiniLM's positions), so the
//! reference's rule for texts over 512 tokens (encode in pieces, concatenate) never applies.
//!
//! The folder holds `config.json`, `tokenizer.json` and `model.safetensors` (the project's
//! `assets/minilm`). Its `tokenizer.json` pads every input to 128 tokens; this module sets
//! padding and truncation itself for every call.
//!
//! [`PromptEncoder::sentence_embeddings`] gives the usual sentence vectors (masked mean
//! pooling, L2 norm): similar prompts should have a high cosine. They are also the pooled
//! condition, L = 1 (a token-state condition has at least `[CLS] [SEP]`, so L = 1 has no
//! other meaning): (N, 1, 384), one vector per text. Why: `bench condition` found that
//! these vectors tell tasks (and a rule's values) apart from a few examples, while the
//! decoder reading token states learnt little from them; one vector per text is the
//! smallest input that keeps what they tell. Measured (README, fold 1): the decoder does
//! worse on it than on token states, so no shipped generator uses it.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// What a generator's decoder reads a task's texts through: N texts -> (N, L, width) and
/// the mask (N, L) (1 = a real token). MiniLM is the method's; `train --read-states`
/// reads the base model's own states instead (`crate::training::states`).
pub trait ConditionEncoder {
    fn encode(&self, texts: &[String], l: usize) -> Result<(Tensor, Tensor)>;
    /// Width of a token's vector (W of the decoder's first shape).
    fn hidden_size(&self) -> usize;
    /// Said in the key of every cached encoding, so that two encoders never share one;
    /// `None` for MiniLM (the keys its caches were written under).
    fn cache_tag(&self) -> Option<String>;
}

impl ConditionEncoder for PromptEncoder {
    fn encode(&self, texts: &[String], l: usize) -> Result<(Tensor, Tensor)> {
        PromptEncoder::encode(self, texts, l)
    }

    fn hidden_size(&self) -> usize {
        self.hidden
    }

    fn cache_tag(&self) -> Option<String> {
        None
    }
}

/// MiniLM's position limit.
pub const MAX_TOKENS: usize = 512;
/// Truncation for sentence vectors (sentence-transformers' `max_seq_length`).
const SENTENCE_MAX_TOKENS: usize = 256;

/// The frozen MiniLM encoder with its tokenizer.
pub struct PromptEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    hidden: usize,
    device: Device,
}

impl std::fmt::Debug for PromptEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptEncoder")
            .field("hidden", &self.hidden)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl PromptEncoder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        ensure!(
            dir.is_dir(),
            "prompt encoder folder {} does not exist (run `mistralrs-dnd assets` to fetch all-MiniLM-L6-v2)",
            dir.display()
        );
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?;
        let config: Config = serde_json::from_str(&text)
            .with_context(|| format!("parsing BERT config {}", cfg_path.display()))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("loading tokenizer {}", tok_path.display()))?;
        let weights = dir.join("model.safetensors");
        ensure!(
            weights.is_file(),
            "missing encoder weights {}",
            weights.display()
        );
        // SAFETY: the weights file is only read; it is not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device)? };
        let model = BertModel::load(vb, &config)
            .with_context(|| format!("loading BERT weights {}", weights.display()))?;
        Ok(Self {
            model,
            tokenizer,
            hidden: config.hidden_size,
            device: device.clone(),
        })
    }

    /// Width of the hidden states (384 for MiniLM-L6).
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token ids and attention mask (both (N, len), u32) with the given padding.
    fn tokenize(
        &self,
        texts: &[String],
        pad: PaddingStrategy,
        max: usize,
    ) -> Result<(Tensor, Tensor)> {
        ensure!(!texts.is_empty(), "no texts to encode");
        let mut tok = self.tokenizer.clone();
        let pad_id = tok.token_to_id("[PAD]").unwrap_or(0);
        tok.with_padding(Some(PaddingParams {
            strategy: pad,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: "[PAD]".into(),
        }));
        tok.with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: max,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(anyhow::Error::msg)?;
        let enc = tok
            .encode_batch(texts.to_vec(), true)
            .map_err(anyhow::Error::msg)
            .context("tokenizing prompts")?;
        let n = enc.len();
        let len = enc[0].get_ids().len();
        let ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().to_vec()).collect();
        let mask: Vec<u32> = enc
            .iter()
            .flat_map(|e| e.get_attention_mask().to_vec())
            .collect();
        ensure!(ids.len() == n * len, "tokenizer returned ragged batch");
        Ok((
            Tensor::from_vec(ids, (n, len), &self.device)?,
            Tensor::from_vec(mask, (n, len), &self.device)?,
        ))
    }

    fn hidden_states(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let types = ids.zeros_like()?;
        Ok(self.model.forward(ids, &types, Some(mask))?)
    }

    /// The DnD condition: last hidden states of N prompts, each padded or truncated to `l`
    /// tokens, shape (N, l, 384), F32, padding positions included. Also returns the
    /// attention mask (N, l) as F32 (1 = real token). With `l` = 1 the pooled condition:
    /// each prompt's sentence vector, (N, 1, 384), mask all ones.
    pub fn encode(&self, prompts: &[String], l: usize) -> Result<(Tensor, Tensor)> {
        ensure!(
            (1..=MAX_TOKENS).contains(&l),
            "prompt length L must be in 1..={MAX_TOKENS}, got {l}"
        );
        if l == 1 {
            let v = self.sentence_embeddings(prompts)?.unsqueeze(1)?;
            let mask = Tensor::ones((prompts.len(), 1), DType::F32, &self.device)?;
            return Ok((v, mask));
        }
        let (ids, mask) = self.tokenize(prompts, PaddingStrategy::Fixed(l), l)?;
        let h = self.hidden_states(&ids, &mask)?;
        Ok((h, mask.to_dtype(DType::F32)?))
    }

    /// Sentence vectors (N, 384): masked mean of the last hidden states, L2-normalised.
    pub fn sentence_embeddings(&self, texts: &[String]) -> Result<Tensor> {
        let (ids, mask) =
            self.tokenize(texts, PaddingStrategy::BatchLongest, SENTENCE_MAX_TOKENS)?;
        let h = self.hidden_states(&ids, &mask)?;
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = h.broadcast_mul(&m)?.sum(1)?;
        let mean = summed.broadcast_div(&m.sum(1)?)?;
        let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        Ok(mean.broadcast_div(&norm)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real MiniLM asset (fetched when missing).
    pub(crate) fn minilm() -> Option<PromptEncoder> {
        let dir = crate::testing::real_assets().minilm();
        Some(PromptEncoder::load(&dir, &Device::Cpu).unwrap())
    }

    fn cos(a: &Tensor, i: usize, j: usize) -> f32 {
        (a.get(i).unwrap() * a.get(j).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn minilm_cosine_check_values() {
        let Some(enc) = minilm() else { return };
        let texts: Vec<String> = [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The new movie is awesome.",
        ]
        .map(String::from)
        .to_vec();
        let e = enc.sentence_embeddings(&texts).unwrap();
        assert_eq!(e.dims(), &[3, 384]);
        let (c1, c2) = (cos(&e, 0, 1), cos(&e, 0, 2));
        assert!((c1 - 0.755).abs() < 0.005, "cos(food, bread) = {c1}");
        assert!((c2 - -0.05).abs() < 0.01, "cos(food, movie) = {c2}");
    }

    #[test]
    fn minilm_condition_shape_and_mask() {
        let Some(enc) = minilm() else { return };
        let long = "word ".repeat(100);
        let texts = vec!["Short prompt.".to_string(), long];
        let (h, mask) = enc.encode(&texts, 16).unwrap();
        assert_eq!(h.dims(), &[2, 16, 384]);
        let m = mask.to_vec2::<f32>().unwrap();
        // "[CLS] short prompt . [SEP]" = 5 real tokens, then padding; the long one is cut.
        assert_eq!(m[0].iter().sum::<f32>(), 5.0);
        assert_eq!(m[1].iter().sum::<f32>(), 16.0);
        // Padding does not leak into real tokens: the same prompt alone, padded less, gives
        // the same states at its real positions.
        let (h8, _) = enc.encode(&texts[..1], 8).unwrap();
        let a = h.get(0).unwrap().narrow(0, 0, 5).unwrap();
        let b = h8.get(0).unwrap().narrow(0, 0, 5).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
        assert!(enc.encode(&texts, 0).is_err());
        assert!(enc.encode(&[], 8).is_err());
    }

    #[test]
    fn minilm_pooled_condition_is_the_sentence_vectors() {
        let Some(enc) = minilm() else { return };
        let texts = vec!["Input: 37\nAnswer: 41".to_string(), "37 -> 42".to_string()];
        let (h, mask) = enc.encode(&texts, 1).unwrap();
        assert_eq!(h.dims(), &[2, 1, 384]);
        assert_eq!(mask.to_vec2::<f32>().unwrap(), vec![vec![1.0], vec![1.0]]);
        let e = enc.sentence_embeddings(&texts).unwrap();
        let diff = (h.squeeze(1).unwrap() - e)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
        // Each text alone gives its own vector (no batch effect through padding).
        let (one, _) = enc.encode(&texts[1..], 1).unwrap();
        let diff = (h.get(1).unwrap() - one.get(0).unwrap())
            .unwrap()
            .abs()
            .unwrap();
        assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-4);
    }
}
