//! `bench condition`: how well each candidate condition of the generator tells tasks apart.
//!
//! A generator can only give two tasks different adapters if their conditions differ, and
//! it can only do so from a few examples if the condition of one batch of a task is nearer
//! to another batch of the same task than to any other task's. This measures that, with
//! nothing trained: for each task two disjoint batches of its first `2k` training examples,
//! one vector per batch and condition, centred over all batches and compared by cosine.
//!
//! Conditions:
//! - `minilm prompts`, `minilm examples`, `minilm answers`: the mean of MiniLM sentence
//!   vectors of the batch's prompts (the method's condition), of prompt and answer in one
//!   text ([`Condition::text`], what the example-reading generator reads) or of the answers
//!   alone;
//! - `smollm2 layer N`: the frozen base model read as an in-context learner. The batch is
//!   one text `Q: {prompt}\nA: {answer}\n\n` per example, and the vector is the mean of the
//!   residual stream after block N at the `A:` of examples 2..k (each has seen at least one
//!   worked example before it): where a model that has inferred the task from its context
//!   says so, mid-way through (Hendel et al. 2023, "In-context learning creates task
//!   vectors"; Todd et al. 2024, "Function vectors").
//!
//! Scores, batch B of each task against batch A of every task: `top-1` (the nearest is the
//! task itself), `family` (the nearest is of the task's family) and `in family` (among the
//! family's own tasks, the nearest is the task: what telling `add 4` from `add 5` needs),
//! over the rule tasks (family `rule_*`, whose prompts do not say the rule) and the others
//! apart.
//!
//! Then, per rule family of at least 3 tasks, what a generator could know of an *unseen*
//! value from the values it saw. A task's signal is what its two batches agree on: with u
//! and v their deviations (batch A and B) from the other tasks' mean, the noise of the two
//! batches is independent, so <u, v> estimates the signal's energy free of it. `span` is
//! the share of that energy inside the span of the other tasks' deviations (batch A), leave
//! one out, <P u, v> / <u, v> with P the projection, summed over the family's tasks before
//! the ratio: a map linear in the condition, trained on the other values, can respond only
//! to that part of an unseen value. Beside it `agree`, the mean squared cosine of u and v
//! (how much of one batch is the task's signal at all), and the share a random direction
//! would have, (tasks - 2) / dim, at most 1; `span` is left out where `agree` is under
//! 0.1 (no signal to place). Why: trained on 34 values of `rule_ending` the generator read
//! none it had not seen (README, "More values of one rule"); if an unseen value's signal
//! lies mostly outside the seen values' span, no training of a decoder linear in this
//! condition on those values can read it (the generator reads token states through
//! convolutions: for it a guide, not a proof), and more values are the lever.
//! `--minilm-only` leaves the SmolLM2 rows out (they take most of the time).

use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor, D};

use super::print_machine;
use crate::generator::decoder::Condition;
use crate::generator::PromptEncoder;
use crate::tasks::{Example, Task};
use crate::training::llama::{chat::ChatTokenizer, Llama};

/// One vector per task and batch: `a[t]`, `b[t]`.
struct Vectors {
    name: String,
    a: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
}

/// Prints the setup and the table of scores, one row per condition.
pub fn run(
    tasks: &[Task],
    k: usize,
    layers: &[usize],
    minilm: &Path,
    smollm2: &Path,
) -> Result<()> {
    ensure!(k >= 2, "--examples must be at least 2");
    for t in tasks {
        ensure!(
            t.train.len() >= 2 * k,
            "task {} has {} training examples, fewer than 2 x {k}",
            t.name,
            t.train.len()
        );
    }
    let device = Device::Cpu;
    println!("== bench condition ==");
    print_machine();
    let rules = tasks.iter().filter(|t| is_rule(t)).count();
    let fams = families(tasks);
    println!(
        "{} tasks ({rules} rule tasks), {} families; two batches of {k} training examples each",
        tasks.len(),
        fams.len()
    );

    let started = std::time::Instant::now();
    let encoder = PromptEncoder::load(minilm, &device)?;
    let mut rows = Vec::new();
    type Text = fn(&Example) -> String;
    let texts: [(&str, Text); 3] = [
        ("minilm prompts", |e| e.prompt.clone()),
        ("minilm examples", |e| {
            Condition::Examples.text(&e.prompt, &e.answer)
        }),
        ("minilm answers", |e| e.answer.clone()),
    ];
    for (name, text) in texts {
        let mean = |batch: &[Example]| -> Result<Vec<f32>> {
            let texts: Vec<String> = batch.iter().map(text).collect();
            Ok(encoder
                .sentence_embeddings(&texts)?
                .mean(0)?
                .to_vec1::<f32>()?)
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for t in tasks {
            let (x, y) = halves(t, k);
            a.push(mean(x)?);
            b.push(mean(y)?);
        }
        rows.push(Vectors {
            name: name.to_string(),
            a,
            b,
        });
    }
    println!("MiniLM: {:.1} s", started.elapsed().as_secs_f64());

    // `--minilm-only`: no layers, no SmolLM2 run.
    if !layers.is_empty() {
        let started = std::time::Instant::now();
        let model = Llama::load(smollm2, &device)?;
        let tokenizer = ChatTokenizer::load(smollm2)?;
        let n_layers = model.dims.num_hidden_layers;
        for &l in layers {
            ensure!(
                (1..=n_layers).contains(&l),
                "layer {l} is not in 1..={n_layers}"
            );
        }
        let mut a = vec![Vec::new(); layers.len()];
        let mut b = vec![Vec::new(); layers.len()];
        for t in tasks {
            let (x, y) = halves(t, k);
            for (batch, out) in [(x, &mut a), (y, &mut b)] {
                let states = in_context_states(&model, &tokenizer, batch)?;
                for (i, &l) in layers.iter().enumerate() {
                    out[i].push(states[l - 1].mean(0)?.to_vec1::<f32>()?);
                }
            }
        }
        for ((l, a), b) in layers.iter().zip(a).zip(b) {
            rows.push(Vectors {
                name: format!("smollm2 layer {l}/{n_layers}"),
                a,
                b,
            });
        }
        println!("SmolLM2: {:.1} s", started.elapsed().as_secs_f64());
    }

    let rule: Vec<bool> = tasks.iter().map(is_rule).collect();
    let family: Vec<&str> = tasks.iter().map(|t| t.family.as_str()).collect();
    println!();
    println!("| condition | rule: top-1 | rule: family | rule: in family | others: top-1 | others: family | others: in family |");
    println!("|---|---|---|---|---|---|---|");
    for v in &rows {
        let s = scores(&v.a, &v.b, &family)?;
        let pct = |want: bool, f: fn(&Score) -> bool| {
            let (n, hit) = s
                .iter()
                .zip(&rule)
                .filter(|(_, &r)| r == want)
                .fold((0, 0), |(n, h), (sc, _)| (n + 1, h + f(sc) as usize));
            format!("{:.1}", 100.0 * hit as f64 / n.max(1) as f64)
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            v.name,
            pct(true, |s| s.top1),
            pct(true, |s| s.family),
            pct(true, |s| s.in_family),
            pct(false, |s| s.top1),
            pct(false, |s| s.family),
            pct(false, |s| s.in_family),
        );
    }
    let chance = |want: bool| {
        let (n, sum) = tasks
            .iter()
            .filter(|t| is_rule(t) == want)
            .fold((0, 0.0), |(n, s), t| {
                (n + 1, s + 1.0 / fams[&t.family] as f64)
            });
        100.0 * sum / n.max(1) as f64
    };
    println!(
        "chance: top-1 {:.1}, in family {:.1} (rule) / {:.1} (others)",
        100.0 / tasks.len() as f64,
        chance(true),
        chance(false)
    );

    let mut rule_families: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, t) in tasks.iter().enumerate().filter(|(_, t)| is_rule(t)) {
        match rule_families.iter_mut().find(|(f, _)| *f == t.family) {
            Some((_, members)) => members.push(i),
            None => rule_families.push((&t.family, vec![i])),
        }
    }
    rule_families.retain(|(_, m)| m.len() >= 3);
    if !rule_families.is_empty() {
        println!();
        println!("An unseen value from the seen ones (leave one out; at most {SPAN_TASKS} tasks a family scored):");
        println!("| condition | family (tasks) | agree | span | random direction |");
        println!("|---|---|---|---|---|");
        for v in &rows {
            for (family, members) in &rule_families {
                let (agree, span) = span_fractions(&v.a, &v.b, members);
                let random = ((members.len() - 2) as f64 / v.a[0].len() as f64).min(1.0);
                // Where two batches barely agree there is no signal to place: the ratio
                // of two sums near zero is noise (it came out at -1.1 and 10.0).
                let span = match agree >= MIN_AGREE {
                    true => format!("{span:.3}"),
                    false => "-".to_string(),
                };
                println!(
                    "| {} | {family} ({}) | {agree:.3} | {span} | {random:.3} |",
                    v.name,
                    members.len(),
                );
            }
        }
    }
    Ok(())
}

/// The least `agree` whose `span` is printed.
const MIN_AGREE: f64 = 0.1;

/// Families larger than this have this many of their tasks scored, evenly spaced (each
/// score is a Gram-Schmidt over the other tasks: 400 of them 400 times is minutes).
const SPAN_TASKS: usize = 40;

/// `agree` and `span` of a family (`members`, at least 3; module doc).
fn span_fractions(a: &[Vec<f32>], b: &[Vec<f32>], members: &[usize]) -> (f64, f64) {
    let n = SPAN_TASKS.min(members.len());
    let (agree, inside, signal) = (0..n)
        .map(|i| {
            let t = members[i * members.len() / n];
            let others: Vec<usize> = members.iter().copied().filter(|&s| s != t).collect();
            span_of(a, b, t, &others)
        })
        .fold((0.0, 0.0, 0.0), |(g, p, q), x| {
            (g + x.agree, p + x.inside, q + x.signal)
        });
    (agree / n as f64, inside / signal)
}

/// One task's terms of [`span_fractions`].
struct Span {
    /// cos²(u, v).
    agree: f64,
    /// <P u, v>.
    inside: f64,
    /// <u, v>.
    signal: f64,
}

/// Task `t`'s signal against `others` (module doc).
fn span_of(a: &[Vec<f32>], b: &[Vec<f32>], t: usize, others: &[usize]) -> Span {
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
    let dim = a[t].len();
    let mean: Vec<f64> = (0..dim)
        .map(|j| others.iter().map(|&s| f64::from(a[s][j])).sum::<f64>() / others.len() as f64)
        .collect();
    let deviation = |x: &[f32]| -> Vec<f64> {
        x.iter()
            .zip(&mean)
            .map(|(&p, m)| f64::from(p) - m)
            .collect()
    };
    let (u, v) = (deviation(&a[t]), deviation(&b[t]));
    // Modified Gram-Schmidt over the others' deviations (they sum to zero, so one of them
    // adds nothing: the tolerance drops it).
    let mut basis: Vec<Vec<f64>> = Vec::new();
    for &s in others {
        let mut d = deviation(&a[s]);
        let norm0 = dot(&d, &d).sqrt();
        for e in &basis {
            let c = dot(&d, e);
            d.iter_mut().zip(e).for_each(|(x, y)| *x -= c * y);
        }
        let norm = dot(&d, &d).sqrt();
        if norm > 1e-6 * norm0 {
            basis.push(d.iter().map(|x| x / norm).collect());
        }
    }
    let signal = dot(&u, &v);
    Span {
        agree: signal.powi(2) / (dot(&u, &u) * dot(&v, &v)),
        inside: basis.iter().map(|e| dot(&u, e) * dot(&v, e)).sum(),
        signal,
    }
}

/// A task's two batches: its first `k` training examples and the `k` after them.
fn halves(t: &Task, k: usize) -> (&[Example], &[Example]) {
    (&t.train[..k], &t.train[k..2 * k])
}

fn is_rule(t: &Task) -> bool {
    t.family.starts_with("rule_")
}

fn families(tasks: &[Task]) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for t in tasks {
        *m.entry(t.family.clone()).or_insert(0) += 1;
    }
    m
}

/// The base model's residual stream after every block, at the `A:` of examples 2..k of the
/// batch written as one few-shot text: one (k - 1, hidden) tensor per layer.
fn in_context_states(
    model: &Llama,
    tokenizer: &ChatTokenizer,
    batch: &[Example],
) -> Result<Vec<Tensor>> {
    let (mut ids, mut rows) = (Vec::new(), Vec::new());
    for (i, e) in batch.iter().enumerate() {
        ids.extend(tokenizer.encode(&format!("Q: {}\nA:", e.prompt))?);
        if i > 0 {
            rows.push(ids.len() as u32 - 1);
        }
        ids.extend(tokenizer.encode(&format!(" {}\n\n", e.answer))?);
    }
    model
        .layer_states(&ids, &rows)
        .context("running the base model on a batch")
}

struct Score {
    top1: bool,
    family: bool,
    in_family: bool,
}

/// For each task, batch B against batch A of every task, after centring all vectors on
/// their mean (what every task shares says nothing about which task it is).
fn scores(a: &[Vec<f32>], b: &[Vec<f32>], family: &[&str]) -> Result<Vec<Score>> {
    let n = a.len();
    let dim = a[0].len();
    let all: Vec<f32> = a.iter().chain(b).flatten().copied().collect();
    let all = Tensor::from_vec(all, (2 * n, dim), &Device::Cpu)?;
    let centred = all.broadcast_sub(&all.mean_keepdim(0)?)?;
    let unit = centred.broadcast_div(&centred.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?;
    let (ua, ub) = (unit.narrow(0, 0, n)?, unit.narrow(0, n, n)?);
    let cos = ub.matmul(&ua.t()?)?.to_vec2::<f32>()?;
    let best = |row: &[f32], keep: &dyn Fn(usize) -> bool| {
        (0..n)
            .filter(|&j| keep(j))
            .max_by(|&i, &j| row[i].total_cmp(&row[j]))
            .expect("the task itself is always kept")
    };
    Ok((0..n)
        .map(|i| {
            let nearest = best(&cos[i], &|_| true);
            Score {
                top1: nearest == i,
                family: family[nearest] == family[i],
                in_family: best(&cos[i], &|j| family[j] == family[i]) == i,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_find_the_nearest_batch_after_centring() {
        // Tasks 0 and 1 share a family and differ only in a small direction that the
        // shared offset would drown without centring; task 2 is another family.
        let a = vec![
            vec![10.0, 1.0, 0.0],
            vec![10.0, -1.0, 0.0],
            vec![10.0, 0.0, 1.0],
        ];
        let b = vec![
            vec![10.0, 0.9, 0.1],
            vec![10.0, 0.2, 0.9],
            vec![10.0, 0.1, 0.8],
        ];
        let s = scores(&a, &b, &["x", "x", "y"]).unwrap();
        assert!(s[0].top1 && s[0].family && s[0].in_family);
        // Task 1's batch B is nearest to task 2 overall, but within its family to itself.
        assert!(!s[1].top1 && !s[1].family && s[1].in_family);
        assert!(s[2].top1 && s[2].family && s[2].in_family);
    }

    /// A value that is a mix of the others lies wholly in their span, one along a direction
    /// none of them has wholly outside it, and what only one batch shows (noise) counts
    /// for neither.
    #[test]
    fn span_is_the_share_of_an_unseen_values_signal_that_the_seen_values_span() {
        // Four tasks in the (x, y) plane around (5, 5), no three on a line: left out, each
        // is in the plane the other three span.
        let mut a = vec![
            vec![6.0, 5.0, 5.0, 5.0],
            vec![5.0, 6.0, 5.0, 5.0],
            vec![4.0, 4.0, 5.0, 5.0],
            vec![5.5, 6.5, 5.0, 5.0],
        ];
        let (agree, span) = span_fractions(&a, &a, &[0, 1, 2, 3]);
        assert!(
            (agree - 1.0).abs() < 1e-9 && (span - 1.0).abs() < 1e-9,
            "{agree} {span}"
        );
        // A fifth along z alone: nothing of it in the others' (x, y) span.
        a.push(vec![5.0, 5.0, 9.0, 5.0]);
        let s = span_of(&a, &a, 4, &[0, 1, 2]);
        assert!(
            (s.agree - 1.0).abs() < 1e-9 && s.inside.abs() < 1e-9,
            "{}",
            s.inside
        );
        // As far along x as along z, and its batch B with noise along w that batch A does
        // not have: half of the signal in the span, the noise in neither term.
        a[4] = vec![6.0, 5.0, 6.0, 5.0];
        let mut b = a.clone();
        b[4] = vec![6.0, 5.0, 6.0, 6.0];
        let s = span_of(&a, &b, 4, &[0, 1, 2]);
        assert_eq!((s.inside, s.signal), (1.0, 2.0));
        assert!((s.agree - 2.0 / 3.0).abs() < 1e-9, "{}", s.agree);
    }
}
