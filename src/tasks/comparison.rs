//! The `comparison` family: multiple-choice questions (parity, larger number, alphabetical order).

use super::draw::*;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec("parity", "comparison", Scoring::Choice, Plain(gen_parity)),
    spec(
        "larger_number",
        "comparison",
        Scoring::Choice,
        Plain(gen_larger_number),
    ),
    spec(
        "alphabetical_first",
        "comparison",
        Scoring::Choice,
        Plain(gen_alphabetical_first),
    ),
];

// --- comparison (choice)

fn gen_parity(r: &mut Rng) -> Sample {
    let x = r.range(1, 999);
    let choices: Vec<String> = if r.below(2) == 0 {
        vec!["even".into(), "odd".into()]
    } else {
        vec!["odd".into(), "even".into()]
    };
    let want = if x % 2 == 0 { "even" } else { "odd" };
    let right = choices.iter().position(|c| c == want).unwrap_or(0);
    let q = match r.below(2) {
        0 => format!("Is {x} even or odd?"),
        _ => format!("Is the number {x} odd or even?"),
    };
    choice_sample(format!("{x}{}", choices[0]), &q, choices, right, r)
}

fn gen_larger_number(r: &mut Rng) -> Sample {
    let n = 2 + r.below(2);
    let xs = numbers(r, n, 1, 999);
    let right = (0..n).max_by_key(|&i| xs[i]).unwrap_or(0);
    let q = match r.below(2) {
        0 => "Which number is larger?",
        _ => "Pick the biggest number.",
    };
    let choices = xs.iter().map(ToString::to_string).collect();
    choice_sample(join(&xs), q, choices, right, r)
}

fn gen_alphabetical_first(r: &mut Rng) -> Sample {
    let n = 3;
    let mut xs: Vec<&str> = Vec::with_capacity(n);
    while xs.len() < n {
        let w = pick_word(r);
        if !xs.iter().any(|x| x.as_bytes()[0] == w.as_bytes()[0]) {
            xs.push(w);
        }
    }
    let right = (0..n).min_by_key(|&i| xs[i]).unwrap_or(0);
    let q = match r.below(2) {
        0 => "Which word comes first in alphabetical order?",
        _ => "Which of these would appear first in a dictionary?",
    };
    choice_sample(
        join(&xs),
        q,
        xs.iter().map(|s| s.to_string()).collect(),
        right,
        r,
    )
}
