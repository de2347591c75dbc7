//! Which of a task's labelled examples read most like a prompt: the demonstrations to show
//! before it, when a task has more examples than it shows (in-context example selection by
//! similarity, as KATE, arXiv 2101.06804, does with sentence vectors).
//!
//! Similarity is lexical, so that it costs microseconds in the request path and needs no
//! model: a text's features are its lowercased words (runs of letters and digits) and the
//! pairs of adjacent words; two texts score `|A ∩ B| / sqrt(|A| |B|)` (the cosine of their
//! feature sets). A task's phrasings share their template words, so a prompt's nearest
//! examples are those asked the same way or about the same things.

use std::collections::BTreeSet;

/// A pool of examples' prompts, their features computed once.
#[derive(Debug, Clone)]
pub struct Nearest {
    pool: Vec<BTreeSet<String>>,
}

impl Nearest {
    pub fn new<'a>(prompts: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            pool: prompts.into_iter().map(features).collect(),
        }
    }

    /// The indices of the `k` pool prompts most like `prompt`, least alike first (so that
    /// the nearest sits next to the prompt it is shown before); ties go to the earlier.
    pub fn pick(&self, prompt: &str, k: usize) -> Vec<usize> {
        let query = features(prompt);
        let mut scored: Vec<(f64, usize)> = self
            .pool
            .iter()
            .enumerate()
            .map(|(i, f)| (cosine(&query, f), i))
            .collect();
        // Highest score first, then the earlier example.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut picked: Vec<usize> = scored.into_iter().take(k).map(|(_, i)| i).collect();
        picked.reverse();
        picked
    }
}

fn features(text: &str) -> BTreeSet<String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let pairs = words.windows(2).map(|w| format!("{} {}", w[0], w[1]));
    pairs.chain(words.iter().cloned()).collect()
}

fn cosine(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let shared = a.intersection(b).count() as f64;
    shared / ((a.len() * b.len()) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_phrasing_and_content_come_first() {
        let pool = Nearest::new([
            "What is 3 + 4?",
            "Add 12 and 9.",
            "What is 12 + 9?",
            "Compute the sum of 5 and 6.",
        ]);
        // Most alike last: the other "What is ... + ...?" questions, the nearer one last.
        assert_eq!(pool.pick("What is 12 + 30?", 2), vec![0, 2]);
        assert_eq!(pool.pick("Add 7 and 8.", 1), vec![1]);
        // Shared numbers count too: "5 and 6" outweighs "Add".
        assert_eq!(pool.pick("Add 5 and 6.", 1), vec![3]);
        assert_eq!(pool.pick("Add 5 and 6.", 9).len(), 4);
    }

    #[test]
    fn ties_and_nothing_shared_keep_the_pool_order() {
        let pool = Nearest::new(["alpha", "beta", "gamma"]);
        assert_eq!(pool.pick("delta", 2), vec![1, 0]);
        assert_eq!(pool.pick("", 5), vec![2, 1, 0]);
    }
}
