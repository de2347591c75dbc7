//! The `counting` family: how many words, digits, vowels, repeats or matching numbers.

use super::draw::*;
use super::strings::{distinct_words, pick_wide_word};
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "count_words",
        "counting",
        Scoring::Exact,
        Plain(gen_count_words),
    ),
    spec(
        "count_occurrences",
        "counting",
        Scoring::Exact,
        Plain(gen_count_occurrences),
    ),
    spec(
        "count_vowels",
        "counting",
        Scoring::Exact,
        Plain(gen_count_vowels),
    ),
    spec(
        "count_digits",
        "counting",
        Scoring::Exact,
        Plain(gen_count_digits),
    ),
    spec(
        "count_letter",
        "counting",
        Scoring::Exact,
        Plain(gen_count_letter),
    ),
    spec(
        "count_even",
        "counting",
        Scoring::Exact,
        Plain(gen_count_even),
    ),
    spec(
        "count_greater",
        "counting",
        Scoring::Exact,
        Plain(gen_count_greater),
    ),
];

pub(super) fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

fn gen_count_words(r: &mut Rng) -> Sample {
    let n = 2 + r.below(7);
    let ws: Vec<&str> = (0..n).map(|_| pick_word(r)).collect();
    let s = ws.join(" ");
    let p = match r.below(3) {
        0 => format!("How many words are in '{s}'?"),
        1 => format!("Count the words in this text: {s}"),
        _ => format!("How many words does \"{s}\" have?"),
    };
    sample(s, p, n)
}

fn gen_count_occurrences(r: &mut Rng) -> Sample {
    let k = 2 + r.below(2);
    let kinds = distinct_words(r, k);
    let n = 5 + r.below(4);
    let xs: Vec<&str> = (0..n).map(|_| *r.choose(&kinds)).collect();
    let target = kinds[0];
    let count = xs.iter().filter(|x| **x == target).count();
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("How many times does '{target}' appear in this list: {l}?"),
        1 => format!("Count how often \"{target}\" occurs in: {l}"),
        _ => format!("In the list {l}, how many times is {target} mentioned?"),
    };
    sample(format!("{target}:{l}"), p, count)
}

fn gen_count_vowels(r: &mut Rng) -> Sample {
    // Words with a `y` are left out: whether it counts as a vowel is ambiguous.
    let w = loop {
        let w = pick_wide_word(r);
        if !w.contains('y') {
            break w;
        }
    };
    let p = match r.below(3) {
        0 => format!("How many vowels are in the word '{w}'?"),
        1 => format!("Count the vowels (a, e, i, o, u) in \"{w}\"."),
        _ => format!("How many vowels does {w} have?"),
    };
    sample(w.to_string(), p, w.chars().filter(|&c| is_vowel(c)).count())
}

fn gen_count_digits(r: &mut Rng) -> Sample {
    let d = 2 + r.below(8) as u32;
    let x = r.range(10i64.pow(d - 1), 10i64.pow(d) - 1);
    let p = match r.below(3) {
        0 => format!("How many digits does the number {x} have?"),
        1 => format!("Count the digits in {x}."),
        _ => format!("How many digits are there in {x}?"),
    };
    sample(x.to_string(), p, d)
}

fn gen_count_letter(r: &mut Rng) -> Sample {
    // A letter the word lacks (answer 0) one time in five, a letter it repeats two in five,
    // so that no one count is the answer most of the time.
    let kind = r.below(5);
    let (w, l) = loop {
        let w = pick_wide_word(r);
        let letters: Vec<char> = match kind {
            0 => ('a'..='z').filter(|&l| !w.contains(l)).collect(),
            1 | 2 => w.chars().filter(|&l| w.matches(l).count() >= 2).collect(),
            _ => w.chars().collect(),
        };
        if !letters.is_empty() {
            break (w, *r.choose(&letters));
        }
    };
    let p = match r.below(3) {
        0 => format!("How many times does the letter {l} appear in '{w}'?"),
        1 => format!("Count the letter '{l}' in the word \"{w}\"."),
        _ => format!("How many {l}'s are in {w}?"),
    };
    sample(format!("{w}:{l}"), p, w.matches(l).count())
}

fn gen_count_even(r: &mut Rng) -> Sample {
    let n = 4 + r.below(3);
    let xs = numbers(r, n, 1, 60);
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("How many even numbers are in this list: {l}?"),
        1 => format!("Count the even numbers among {l}."),
        _ => format!("How many of {l} are even?"),
    };
    sample(l, p, xs.iter().filter(|x| *x % 2 == 0).count())
}

fn gen_count_greater(r: &mut Rng) -> Sample {
    let t = 10 * r.range(2, 8);
    let n = 4 + r.below(3);
    let xs = loop {
        let xs = numbers(r, n, 1, 99);
        if !xs.contains(&t) {
            break xs;
        }
    };
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("How many numbers in {l} are greater than {t}?"),
        1 => format!("Count the numbers bigger than {t} in this list: {l}"),
        _ => format!("Of {l}, how many are more than {t}?"),
    };
    sample(format!("{t}:{l}"), p, xs.iter().filter(|x| **x > t).count())
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{numbers_in, quoted, task};
    use super::is_vowel;

    #[test]
    fn answers_follow_from_the_prompts() {
        for ex in task("count_digits").train.iter() {
            let x = numbers_in(&ex.prompt)[0];
            assert_eq!(ex.answer, x.to_string().len().to_string(), "{ex:?}");
        }
        for ex in task("count_greater").train.iter() {
            let xs = numbers_in(&ex.prompt);
            // The threshold is the number after "than".
            let t: i64 = numbers_in(ex.prompt.split("than ").nth(1).unwrap())[0];
            let n = xs.iter().filter(|&&x| x > t).count();
            assert_eq!(ex.answer, n.to_string(), "{ex:?}");
        }
        for ex in task("count_vowels").train.iter() {
            let w = quoted(&ex.prompt).unwrap_or_else(|| {
                ex.prompt
                    .trim_start_matches("How many vowels does ")
                    .trim_end_matches(" have?")
                    .to_string()
            });
            let n = w.chars().filter(|&c| is_vowel(c)).count();
            assert_eq!(ex.answer, n.to_string(), "{ex:?}");
        }
        for ex in task("count_even").train.iter() {
            let n = numbers_in(&ex.prompt)
                .iter()
                .filter(|x| *x % 2 == 0)
                .count();
            assert_eq!(ex.answer, n.to_string(), "{ex:?}");
        }
    }
}
