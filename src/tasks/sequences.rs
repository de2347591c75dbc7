//! The `sequences` family: continuing, filling in and describing simple number and word patterns.

use super::draw::*;
use super::strings::distinct_words;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "next_in_sequence",
        "sequences",
        Scoring::Exact,
        Plain(gen_next_in_sequence),
    ),
    spec(
        "countdown_sequence",
        "sequences",
        Scoring::Exact,
        Plain(gen_countdown_sequence),
    ),
    spec(
        "missing_number",
        "sequences",
        Scoring::Exact,
        Plain(gen_missing_number),
    ),
    spec(
        "common_difference",
        "sequences",
        Scoring::Exact,
        Plain(gen_common_difference),
    ),
    spec(
        "pattern_next",
        "sequences",
        Scoring::Exact,
        Plain(gen_pattern_next),
    ),
    spec(
        "next_multiple",
        "sequences",
        Scoring::Exact,
        Plain(gen_next_multiple),
    ),
    spec(
        "previous_number",
        "sequences",
        Scoring::Exact,
        Plain(gen_previous_number),
    ),
];

/// `n` terms from `start`, `step` apart.
fn terms(start: i64, step: i64, n: usize) -> Vec<i64> {
    (0..n as i64).map(|i| start + i * step).collect()
}

fn gen_next_in_sequence(r: &mut Rng) -> Sample {
    let (start, step, n) = (r.range(1, 40), r.range(1, 10), 3 + r.below(3));
    let l = join(&terms(start, step, n));
    let p = match r.below(3) {
        0 => format!("What number comes next: {l}, ?"),
        1 => format!("Continue the sequence {l} with one more number."),
        _ => format!("What is the next term of {l}?"),
    };
    sample(l, p, start + n as i64 * step)
}

fn gen_countdown_sequence(r: &mut Rng) -> Sample {
    let (step, n) = (r.range(2, 9), 3 + r.below(3));
    let start = r.range(step * n as i64, 99);
    let l = join(&terms(start, -step, n));
    let p = match r.below(3) {
        0 => format!("What number comes next: {l}, ?"),
        1 => format!("The numbers go down: {l}. What comes after them?"),
        _ => format!("Continue this countdown by one number: {l}"),
    };
    sample(l, p, start - n as i64 * step)
}

fn gen_missing_number(r: &mut Rng) -> Sample {
    let (start, step, at) = (r.range(1, 50), r.range(2, 10), 1 + r.below(3));
    let xs = terms(start, step, 5);
    let shown: Vec<String> = xs
        .iter()
        .enumerate()
        .map(|(i, x)| if i == at { "?".into() } else { x.to_string() })
        .collect();
    let l = shown.join(", ");
    let p = match r.below(3) {
        0 => format!("Which number is missing: {l}"),
        1 => format!("Fill in the ? in the sequence {l}."),
        _ => format!("What number should replace the question mark in {l}?"),
    };
    sample(l, p, xs[at])
}

fn gen_common_difference(r: &mut Rng) -> Sample {
    let (start, step, n) = (r.range(1, 60), r.range(2, 12), 4 + r.below(2));
    let l = join(&terms(start, step, n));
    let p = match r.below(3) {
        0 => format!("By how much does each number increase in {l}?"),
        1 => format!("What is the step between the numbers {l}?"),
        _ => format!("What is the common difference of the sequence {l}?"),
    };
    sample(l, p, step)
}

fn gen_pattern_next(r: &mut Rng) -> Sample {
    let period = 2 + r.below(2);
    let ws = distinct_words(r, period);
    let n = period * 2 + r.below(period);
    let xs: Vec<&str> = (0..n).map(|i| ws[i % period]).collect();
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("What comes next in the pattern: {l}, ?"),
        1 => format!("Continue the pattern {l} with one more word."),
        _ => format!("Which word follows in this repeating list: {l}?"),
    };
    sample(l, p, ws[n % period])
}

fn gen_next_multiple(r: &mut Rng) -> Sample {
    let m = *r.choose(&[2i64, 5, 10]);
    let x = r.range(1, 999);
    let p = match r.below(3) {
        0 => format!("What is the next multiple of {m} after {x}?"),
        1 => format!("Which is the first number greater than {x} that is divisible by {m}?"),
        _ => format!("Counting in {m}s, which number comes just after {x}?"),
    };
    sample(format!("{m}:{x}"), p, (x / m + 1) * m)
}

fn gen_previous_number(r: &mut Rng) -> Sample {
    let a = r.range(10, 999);
    let p = match r.below(3) {
        0 => format!("Which number comes right before {a}?"),
        1 => format!("Count back by one from {a}: what is next?"),
        _ => format!("What is the predecessor of {a}?"),
    };
    sample(a.to_string(), p, a - 1)
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{numbers_in, task};

    #[test]
    fn answers_follow_from_the_prompts() {
        for ex in task("next_in_sequence").train.iter() {
            let xs = numbers_in(&ex.prompt);
            let n = xs.len();
            assert_eq!(ex.answer, (2 * xs[n - 1] - xs[n - 2]).to_string(), "{ex:?}");
        }
        for ex in task("missing_number").train.iter() {
            let xs = numbers_in(&ex.prompt);
            // Four of five terms are shown: the step is the smallest gap.
            let step = xs.windows(2).map(|w| w[1] - w[0]).min().unwrap();
            let gap = xs.windows(2).position(|w| w[1] - w[0] != step).unwrap();
            assert_eq!(ex.answer, (xs[gap] + step).to_string(), "{ex:?}");
        }
        for ex in task("next_multiple").train.iter() {
            let xs = numbers_in(&ex.prompt);
            let (m, x) = if ex.prompt.starts_with("Which is the first") {
                (xs[1], xs[0])
            } else {
                (xs[0], xs[1])
            };
            let want = (x + 1..).find(|y| y % m == 0).unwrap();
            assert_eq!(ex.answer, want.to_string(), "{ex:?}");
        }
        for ex in task("pattern_next").train.iter() {
            // The list: the last word before the first comma, the words between commas, the
            // first word after the last one.
            let parts: Vec<&str> = ex.prompt.split(", ").collect();
            let n = parts.len();
            let alpha = |s: &str| s.chars().all(|c| c.is_ascii_alphabetic()) && !s.is_empty();
            let mut xs = vec![parts[0].rsplit(' ').next().unwrap()];
            xs.extend(&parts[1..n - 1]);
            let last = parts[n - 1].split([' ', '?']).next().unwrap();
            if alpha(last) {
                xs.push(last);
            }
            let period = (2..=3)
                .find(|&p| (0..xs.len()).all(|i| xs[i] == xs[i % p]))
                .unwrap();
            assert_eq!(ex.answer, xs[xs.len() % period], "{ex:?}");
        }
    }
}
