//! Batches of tokenized examples for the trainer: right-padded, sharing the prefix all
//! their sequences start with, and an endless shuffled stream of them.
//!
//! The loss is the mean cross-entropy over the answer tokens only; with a causal mask
//! padding never influences real tokens.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};

use super::chat::Encoded;
use crate::format::rng::Rng;

/// A padded batch: the prefix all its sequences share, the rest of each sequence (b, s),
/// and for every answer token the row of [`super::Llama::forward`] that
/// predicts it and the token itself.
#[derive(Debug)]
pub struct Batch {
    pub prefix: Vec<u32>,
    pub ids: Tensor,
    pub rows: Tensor,
    pub targets: Tensor,
    /// Number of positions the forward pass runs over (prefix + b * s).
    pub positions: usize,
}

impl Batch {
    /// A batch sharing the longest common prefix of its sequences (within the prompts).
    pub fn new(items: &[&Encoded], pad: u32, device: &Device) -> Result<Self> {
        Self::build(items, pad, device, true)
    }

    /// `share_prefix = false` runs every sequence in full (the reference in tests).
    pub fn build(
        items: &[&Encoded],
        pad: u32,
        device: &Device,
        share_prefix: bool,
    ) -> Result<Self> {
        ensure!(!items.is_empty(), "empty batch");
        for e in items {
            ensure!(
                e.prompt_len >= 1 && e.prompt_len < e.ids.len(),
                "example has no prompt or no answer tokens"
            );
        }
        // Longest common prefix, ending before the first position that predicts an answer.
        let mut p = if share_prefix {
            items.iter().map(|e| e.prompt_len - 1).min().unwrap_or(0)
        } else {
            0
        };
        for e in &items[1..] {
            p = p.min(
                items[0]
                    .ids
                    .iter()
                    .zip(&e.ids)
                    .take_while(|(a, b)| a == b)
                    .count(),
            );
        }
        let s = items.iter().map(|e| e.ids.len() - p).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(items.len() * s);
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (i, e) in items.iter().enumerate() {
            ids.extend(&e.ids[p..]);
            ids.extend(std::iter::repeat_n(pad, s - (e.ids.len() - p)));
            for j in e.prompt_len..e.ids.len() {
                rows.push((p + i * s + (j - 1 - p)) as u32);
                targets.push(e.ids[j]);
            }
        }
        let n = rows.len();
        Ok(Self {
            prefix: items[0].ids[..p].to_vec(),
            ids: Tensor::from_vec(ids, (items.len(), s), device)?,
            rows: Tensor::from_vec(rows, n, device)?,
            targets: Tensor::from_vec(targets, n, device)?,
            positions: p + items.len() * s,
        })
    }
}

/// Endless deterministic stream of batches over a set of examples: shuffled every epoch
/// from the seed.
#[derive(Debug)]
pub struct BatchStream {
    items: Vec<Encoded>,
    order: Vec<usize>,
    pos: usize,
    rng: Rng,
    batch_size: usize,
    pad: u32,
}

impl BatchStream {
    pub fn new(items: Vec<Encoded>, batch_size: usize, pad: u32, seed: u64) -> Result<Self> {
        ensure!(!items.is_empty(), "no training examples");
        ensure!(batch_size >= 1, "batch size must be at least 1");
        let order: Vec<usize> = (0..items.len()).collect();
        Ok(Self {
            items,
            order,
            pos: usize::MAX,
            rng: Rng::derive(seed, "batch-order"),
            batch_size,
            pad,
        })
    }

    pub fn next_batch(&mut self, device: &Device) -> Result<Batch> {
        let picked: Vec<usize> = (0..self.batch_size).map(|_| self.next_index()).collect();
        let items: Vec<&Encoded> = picked.iter().map(|&i| &self.items[i]).collect();
        Batch::new(&items, self.pad, device)
    }

    /// Moves past `batches` batches without building them (a resumed run's position).
    pub fn skip(&mut self, batches: usize) {
        for _ in 0..batches * self.batch_size {
            self.next_index();
        }
    }

    fn next_index(&mut self) -> usize {
        if self.pos >= self.order.len() {
            self.rng.shuffle(&mut self.order);
            self.pos = 0;
        }
        self.pos += 1;
        self.order[self.pos - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_model_dir;
    use crate::training::llama::tests::load_tiny;

    #[test]
    fn batch_targets_are_the_answer_tokens() {
        let dir = tiny_model_dir();
        let (_, tok) = load_tiny(dir.path());
        let a = tok.encode_example("what is 2 plus 3 ?", "5").unwrap();
        let b = tok
            .encode_example("reverse the word cat please now", "tac")
            .unwrap();
        for share in [true, false] {
            let bt = Batch::build(&[&a, &b], 0, &Device::Cpu, share).unwrap();
            let p = bt.prefix.len();
            if share {
                // The system prompt and "<|im_start|>user\n" are shared.
                assert!(p > 10, "shared prefix of {p} tokens");
                assert_eq!(&a.ids[..p], &b.ids[..p]);
            } else {
                assert_eq!(p, 0);
            }
            let ids = bt.ids.to_vec2::<u32>().unwrap();
            let s = ids[0].len();
            let full: Vec<Vec<u32>> = ids
                .iter()
                .map(|r| [bt.prefix.clone(), r.clone()].concat())
                .collect();
            let rows = bt.rows.to_vec1::<u32>().unwrap();
            let targets = bt.targets.to_vec1::<u32>().unwrap();
            let answers = (a.ids.len() - a.prompt_len) + (b.ids.len() - b.prompt_len);
            assert_eq!(targets.len(), answers, "both answers and their end of turn");
            for (r, tg) in rows.iter().zip(&targets) {
                let r = *r as usize - p;
                let (seq, pos) = (r / s, r % s + p);
                assert_eq!(full[seq][pos + 1], *tg);
            }
            assert_eq!(*targets.last().unwrap(), tok.end_of_turn);
            assert_eq!(bt.positions, p + 2 * s);
        }
    }
}
