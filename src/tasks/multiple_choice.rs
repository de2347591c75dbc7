//! The `multiple_choice` family: pick the one choice that fits (even, smallest, longest, an animal).

use super::draw::*;
use super::strings::words_of_distinct_lengths;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "pick_even",
        "multiple_choice",
        Scoring::Choice,
        Plain(gen_pick_even),
    ),
    spec(
        "smallest_number",
        "multiple_choice",
        Scoring::Choice,
        Plain(gen_smallest_number),
    ),
    spec(
        "longest_word",
        "multiple_choice",
        Scoring::Choice,
        Plain(gen_longest_word),
    ),
    spec(
        "starts_with_vowel",
        "multiple_choice",
        Scoring::Choice,
        Plain(gen_starts_with_vowel),
    ),
    spec(
        "category_member",
        "multiple_choice",
        Scoring::Choice,
        Plain(gen_category_member),
    ),
    spec(
        "multiple_of_five",
        "multiple_choice",
        Scoring::Choice,
        Plain(gen_multiple_of_five),
    ),
    spec(
        "closest_number",
        "multiple_choice",
        Scoring::Choice,
        Plain(gen_closest_number),
    ),
    spec(
        "sum_choice",
        "multiple_choice",
        Scoring::Choice,
        Plain(gen_sum_choice),
    ),
    spec(
        "contains_letter",
        "multiple_choice",
        Scoring::Choice,
        Plain(gen_contains_letter),
    ),
];

/// A choice question from one right choice and wrong ones, in random order.
pub(super) fn shuffled(
    r: &mut Rng,
    key: &str,
    q: &str,
    right: String,
    wrong: Vec<String>,
) -> Sample {
    let mut choices = wrong;
    choices.push(right.clone());
    r.shuffle(&mut choices);
    let at = choices.iter().position(|c| *c == right).unwrap_or(0);
    choice_sample(format!("{key}:{}", join(&choices)), q, choices, at, r)
}

/// One number `lo..=hi` that `good` accepts and `n - 1` distinct ones it rejects.
pub(super) fn one_good(
    r: &mut Rng,
    n: usize,
    lo: i64,
    hi: i64,
    good: impl Fn(i64) -> bool,
) -> (String, Vec<String>) {
    let right = loop {
        let x = r.range(lo, hi);
        if good(x) {
            break x;
        }
    };
    let mut wrong: Vec<i64> = Vec::with_capacity(n - 1);
    while wrong.len() < n - 1 {
        let x = r.range(lo, hi);
        if !good(x) && !wrong.contains(&x) {
            wrong.push(x);
        }
    }
    (
        right.to_string(),
        wrong.iter().map(ToString::to_string).collect(),
    )
}

fn gen_pick_even(r: &mut Rng) -> Sample {
    let n = 3 + r.below(2);
    let (right, wrong) = one_good(r, n, 1, 999, |x| x % 2 == 0);
    let q = match r.below(3) {
        0 => "Which number is even?",
        1 => "Which of these numbers is divisible by 2?",
        _ => "Pick the even number.",
    };
    shuffled(r, "", q, right, wrong)
}

fn gen_multiple_of_five(r: &mut Rng) -> Sample {
    let n = 3 + r.below(2);
    let (right, wrong) = one_good(r, n, 10, 999, |x| x % 5 == 0);
    let q = match r.below(3) {
        0 => "Which number is a multiple of 5?",
        1 => "Which of these numbers can be divided by 5 with no remainder?",
        _ => "Pick the number that is divisible by five.",
    };
    shuffled(r, "", q, right, wrong)
}

fn gen_smallest_number(r: &mut Rng) -> Sample {
    let q = [
        "Which number is the smallest?",
        "Pick the lowest number.",
        "Which of these numbers is the least?",
    ];
    extreme_number(r, q, |xs| (0..xs.len()).min_by_key(|&i| xs[i]))
}

/// 3 or 4 distinct numbers and one of the 3 phrasings; the right choice is the index `pick`
/// returns (the smallest, the largest, ...).
pub(super) fn extreme_number(
    r: &mut Rng,
    phrasings: [&str; 3],
    pick: fn(&[i64]) -> Option<usize>,
) -> Sample {
    let n = 3 + r.below(2);
    let xs = numbers(r, n, 1, 999);
    let right = pick(&xs).unwrap_or(0);
    let q = phrasings[r.below(3)];
    let choices = xs.iter().map(ToString::to_string).collect();
    choice_sample(join(&xs), q, choices, right, r)
}

fn gen_longest_word(r: &mut Rng) -> Sample {
    let n = 3;
    let ws = words_of_distinct_lengths(r, n);
    let right = (0..n).max_by_key(|&i| ws[i].len()).unwrap_or(0);
    let q = match r.below(3) {
        0 => "Which word is the longest?",
        1 => "Which of these words has the most letters?",
        _ => "Pick the longest word.",
    };
    let choices = ws.iter().map(|w| w.to_string()).collect();
    choice_sample(join(&ws), q, choices, right, r)
}

fn gen_starts_with_vowel(r: &mut Rng) -> Sample {
    let n = 3 + r.below(2);
    let starts_vowel = |w: &str| w.starts_with(['a', 'e', 'i', 'o', 'u']);
    let right = loop {
        let w = pick_word(r);
        if starts_vowel(w) {
            break w;
        }
    };
    let mut wrong: Vec<String> = Vec::with_capacity(n - 1);
    while wrong.len() < n - 1 {
        let w = pick_word(r);
        if !starts_vowel(w) && !wrong.iter().any(|x| x == w) {
            wrong.push(w.to_string());
        }
    }
    let q = match r.below(3) {
        0 => "Which word starts with a vowel?",
        1 => "Which of these words begins with a, e, i, o or u?",
        _ => "Pick the word whose first letter is a vowel.",
    };
    shuffled(r, "", q, right.to_string(), wrong)
}

/// Everyday categories with members that belong to no other category here.
const CATEGORIES: [(&str, &[&str]); 7] = [
    (
        "an animal",
        &[
            "lion", "tiger", "horse", "rabbit", "monkey", "zebra", "whale", "eagle", "frog",
            "sheep", "goat", "wolf", "fox", "duck", "owl", "snake", "turtle", "parrot", "squirrel",
            "panda", "mouse", "bear", "camel", "donkey", "deer",
        ],
    ),
    (
        "a fruit",
        &[
            "apple", "banana", "cherry", "lemon", "orange", "peach", "grape", "mango", "pear",
            "plum", "melon", "kiwi", "apricot", "coconut", "lime",
        ],
    ),
    (
        "a color",
        &[
            "red", "blue", "green", "yellow", "purple", "pink", "brown", "black", "white", "gray",
        ],
    ),
    (
        "a musical instrument",
        &[
            "piano", "violin", "guitar", "drum", "trumpet", "flute", "harp", "cello", "banjo",
            "clarinet",
        ],
    ),
    (
        "a vehicle",
        &[
            "car",
            "bus",
            "truck",
            "bicycle",
            "taxi",
            "tractor",
            "van",
            "scooter",
            "motorcycle",
            "train",
        ],
    ),
    (
        "a body part",
        &[
            "hand", "foot", "knee", "nose", "elbow", "finger", "shoulder", "ankle", "ear", "tongue",
        ],
    ),
    (
        "a piece of furniture",
        &[
            "chair", "table", "sofa", "bed", "desk", "shelf", "stool", "cabinet", "wardrobe",
            "bench",
        ],
    ),
];

fn gen_category_member(r: &mut Rng) -> Sample {
    let c = r.below(CATEGORIES.len());
    let (name, members) = CATEGORIES[c];
    let right = *r.choose(members);
    let mut wrong: Vec<String> = Vec::with_capacity(3);
    while wrong.len() < 3 {
        let d = r.below(CATEGORIES.len());
        let w = *r.choose(CATEGORIES[d].1);
        if d != c && !wrong.iter().any(|x| x == w) {
            wrong.push(w.to_string());
        }
    }
    let q = match r.below(3) {
        0 => format!("Which of these is {name}?"),
        1 => format!("Pick {name}."),
        _ => format!("Which word names {name}?"),
    };
    shuffled(r, &c.to_string(), &q, right.to_string(), wrong)
}

fn gen_closest_number(r: &mut Rng) -> Sample {
    let t = 10 * r.range(2, 9);
    let xs = loop {
        let xs = numbers(r, 3, 1, 99);
        let mut ds: Vec<i64> = xs.iter().map(|x| (x - t).abs()).collect();
        ds.sort();
        ds.dedup();
        if ds.len() == 3 && ds[0] > 0 {
            break xs;
        }
    };
    let right = (0..3).min_by_key(|&i| (xs[i] - t).abs()).unwrap_or(0);
    let q = match r.below(3) {
        0 => format!("Which number is closest to {t}?"),
        1 => format!("Which of these is nearest to {t}?"),
        _ => format!("Pick the number closest in value to {t}."),
    };
    let choices = xs.iter().map(ToString::to_string).collect();
    choice_sample(format!("{t}:{}", join(&xs)), &q, choices, right, r)
}

fn gen_sum_choice(r: &mut Rng) -> Sample {
    let (a, b) = (r.range(2, 30), r.range(2, 30));
    let s = a + b;
    // Four consecutive numbers around the sum, the sum at a random place among them.
    let first = s - r.below(4) as i64;
    let choices: Vec<String> = (first..first + 4).map(|x| x.to_string()).collect();
    let right = (s - first) as usize;
    let q = match r.below(3) {
        0 => format!("What is {a} + {b}?"),
        1 => format!("How much is {a} plus {b}?"),
        _ => format!("Add {a} and {b}. Which is the sum?"),
    };
    choice_sample(format!("{a}+{b}"), &q, choices, right, r)
}

fn gen_contains_letter(r: &mut Rng) -> Sample {
    let right = pick_word(r);
    let chars: Vec<char> = right.chars().collect();
    let l = *r.choose(&chars);
    let mut wrong: Vec<String> = Vec::with_capacity(2);
    while wrong.len() < 2 {
        let w = pick_word(r);
        if !w.contains(l) && !wrong.iter().any(|x| x == w) {
            wrong.push(w.to_string());
        }
    }
    let q = match r.below(3) {
        0 => format!("Which word contains the letter {l}?"),
        1 => format!("Which of these words has the letter '{l}' in it?"),
        _ => format!("Pick the word that has the letter {l}."),
    };
    shuffled(r, &l.to_string(), &q, right.to_string(), wrong)
}

#[cfg(test)]
mod tests {
    use super::super::choice_index;
    use super::super::tests_support::{numbers_in, task};
    use super::CATEGORIES;

    #[test]
    fn categories_do_not_overlap() {
        let all: Vec<&str> = CATEGORIES
            .iter()
            .flat_map(|(_, m)| m.iter().copied())
            .collect();
        let mut set = all.clone();
        set.sort();
        set.dedup();
        assert_eq!(set.len(), all.len());
    }

    #[test]
    fn answers_follow_from_the_prompts() {
        for ex in task("pick_even").train.iter() {
            let i = choice_index(&ex.answer).unwrap();
            for (j, c) in ex.choices.iter().enumerate() {
                assert_eq!(c.parse::<i64>().unwrap() % 2 == 0, i == j, "{ex:?}");
            }
        }
        for ex in task("closest_number").train.iter() {
            let t = numbers_in(&ex.prompt)[0];
            let d = |c: &String| (c.parse::<i64>().unwrap() - t).abs();
            let i = choice_index(&ex.answer).unwrap();
            assert!(
                ex.choices.iter().all(|c| d(c) >= d(&ex.choices[i])),
                "{ex:?}"
            );
        }
        for ex in task("sum_choice").train.iter() {
            let xs = numbers_in(&ex.prompt);
            let i = choice_index(&ex.answer).unwrap();
            assert_eq!(ex.choices[i], (xs[0] + xs[1]).to_string(), "{ex:?}");
        }
        for ex in task("contains_letter").train.iter() {
            let i = choice_index(&ex.answer).unwrap();
            let l = ex
                .prompt
                .lines()
                .next()
                .unwrap()
                .split(|c: char| !c.is_ascii_alphabetic())
                .find(|w| w.len() == 1)
                .unwrap();
            for (j, c) in ex.choices.iter().enumerate() {
                assert_eq!(c.contains(l), i == j, "{ex:?}");
            }
        }
        for ex in task("category_member").train.iter() {
            let i = choice_index(&ex.answer).unwrap();
            let (_, members) = CATEGORIES
                .iter()
                .find(|(name, _)| ex.prompt.lines().next().unwrap().contains(name))
                .unwrap();
            for (j, c) in ex.choices.iter().enumerate() {
                assert_eq!(members.contains(&c.as_str()), i == j, "{ex:?}");
            }
        }
    }
}
