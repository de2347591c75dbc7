//! The `picks` family (suite version 3): letter-choice questions on numbers and words
//! (largest, odd, shortest, first in the alphabet, a double letter, a number word).

use super::draw::*;
use super::multiple_choice::{extreme_number, one_good, shuffled};
use super::strings::{distinct_words, words_of_distinct_lengths};
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "largest_number",
        "picks",
        Scoring::Choice,
        Plain(gen_largest_number),
    ),
    spec("pick_odd", "picks", Scoring::Choice, Plain(gen_pick_odd)),
    spec(
        "shortest_word",
        "picks",
        Scoring::Choice,
        Plain(gen_shortest_word),
    ),
    spec(
        "alphabetical_choice",
        "picks",
        Scoring::Choice,
        Plain(gen_alphabetical_choice),
    ),
    spec(
        "double_letter",
        "picks",
        Scoring::Choice,
        Plain(gen_double_letter),
    ),
    spec(
        "number_word",
        "picks",
        Scoring::Choice,
        Plain(gen_number_word),
    ),
];

const NUMBER_WORDS: [&str; 12] = [
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "eleven", "twelve", "twenty",
    "hundred",
];

fn gen_largest_number(r: &mut Rng) -> Sample {
    let q = [
        "Which number is the largest?",
        "Pick the highest number.",
        "Which of these numbers is the greatest?",
    ];
    extreme_number(r, q, |xs| (0..xs.len()).max_by_key(|&i| xs[i]))
}

fn gen_pick_odd(r: &mut Rng) -> Sample {
    let n = 3 + r.below(2);
    let (right, wrong) = one_good(r, n, 1, 999, |x| x % 2 == 1);
    let q = match r.below(3) {
        0 => "Which number is odd?",
        1 => "Which of these numbers is not divisible by 2?",
        _ => "Pick the odd number.",
    };
    shuffled(r, "", q, right, wrong)
}

fn gen_shortest_word(r: &mut Rng) -> Sample {
    let ws = words_of_distinct_lengths(r, 3);
    let right = (0..3).min_by_key(|&i| ws[i].len()).unwrap_or(0);
    let q = match r.below(3) {
        0 => "Which word is the shortest?",
        1 => "Which of these words has the fewest letters?",
        _ => "Pick the shortest word.",
    };
    let choices = ws.iter().map(|w| w.to_string()).collect();
    choice_sample(join(&ws), q, choices, right, r)
}

fn gen_alphabetical_choice(r: &mut Rng) -> Sample {
    // Different first letters, so the answer does not hinge on later letters.
    let ws = loop {
        let n = 3 + r.below(2);
        let ws = distinct_words(r, n);
        let mut firsts: Vec<u8> = ws.iter().map(|w| w.as_bytes()[0]).collect();
        firsts.sort();
        firsts.dedup();
        if firsts.len() == ws.len() {
            break ws;
        }
    };
    let right = (0..ws.len()).min_by_key(|&i| ws[i]).unwrap_or(0);
    let q = match r.below(3) {
        0 => "Which word comes first in alphabetical order?",
        1 => "Which of these words would a dictionary list first?",
        _ => "Pick the word that is first alphabetically.",
    };
    let choices = ws.iter().map(|w| w.to_string()).collect();
    choice_sample(join(&ws), q, choices, right, r)
}

fn has_double_letter(w: &str) -> bool {
    w.as_bytes().windows(2).any(|p| p[0] == p[1])
}

fn gen_double_letter(r: &mut Rng) -> Sample {
    let right = loop {
        let w = pick_word(r);
        if has_double_letter(w) {
            break w;
        }
    };
    let mut wrong: Vec<String> = Vec::with_capacity(2);
    while wrong.len() < 2 {
        let w = pick_word(r);
        if !has_double_letter(w) && !wrong.iter().any(|x| x == w) {
            wrong.push(w.to_string());
        }
    }
    let q = match r.below(3) {
        0 => "Which word has the same letter twice in a row?",
        1 => "Which of these words contains a double letter?",
        _ => "Pick the word with two identical letters next to each other.",
    };
    shuffled(r, "", q, right.to_string(), wrong)
}

fn gen_number_word(r: &mut Rng) -> Sample {
    let right = *r.choose(&NUMBER_WORDS);
    let wrong: Vec<String> = distinct_words(r, 3).iter().map(|w| w.to_string()).collect();
    let q = match r.below(3) {
        0 => "Which of these words is a number?",
        1 => "Which word names a number?",
        _ => "Pick the number word.",
    };
    shuffled(r, "", q, right.to_string(), wrong)
}

#[cfg(test)]
mod tests {
    use super::super::choice_index;
    use super::super::tests_support::task;

    /// The answer letter names the one choice the question asks for.
    #[test]
    fn the_answer_is_the_only_fitting_choice() {
        let check = |name: &str, fits: &dyn Fn(&[String], &str) -> bool| {
            for ex in task(name).train.iter().chain(&task(name).test) {
                let i = choice_index(&ex.answer).unwrap();
                for (j, c) in ex.choices.iter().enumerate() {
                    assert_eq!(fits(&ex.choices, c), i == j, "{name}: {ex:?}");
                }
            }
        };
        let num = |c: &str| c.parse::<i64>().unwrap();
        check("largest_number", &|cs, c| {
            cs.iter().all(|d| num(d) <= num(c))
        });
        check("pick_odd", &|_, c| num(c) % 2 == 1);
        check("shortest_word", &|cs, c| {
            cs.iter().all(|d| d.len() >= c.len())
        });
        check("alphabetical_choice", &|cs, c| {
            cs.iter().all(|d| d.as_str() >= c)
        });
        check("double_letter", &|_, c| super::has_double_letter(c));
        check("number_word", &|_, c| super::NUMBER_WORDS.contains(&c));
    }
}
