//! The `itemlists` family (suite version 5): questions on a comma-separated list of words
//! or numbers that the `lists` family leaves out: the first and second items, the item
//! after or before another, an item's position, the sum and the smallest of the numbers,
//! how many words are long, the list without repeats, and the alphabetically last word.

use super::draw::*;
use super::strings::distinct_words;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "first_item",
        "itemlists",
        Scoring::Exact,
        Plain(gen_first_item),
    ),
    spec(
        "second_item",
        "itemlists",
        Scoring::Exact,
        Plain(gen_second_item),
    ),
    spec(
        "item_after",
        "itemlists",
        Scoring::Exact,
        Plain(gen_item_after),
    ),
    spec(
        "item_before",
        "itemlists",
        Scoring::Exact,
        Plain(gen_item_before),
    ),
    spec(
        "item_position",
        "itemlists",
        Scoring::Exact,
        Plain(gen_item_position),
    ),
    spec("sum_list", "itemlists", Scoring::Exact, Plain(gen_sum_list)),
    spec(
        "min_number",
        "itemlists",
        Scoring::Exact,
        Plain(gen_min_number),
    ),
    spec(
        "count_long_words",
        "itemlists",
        Scoring::Exact,
        Plain(gen_count_long_words),
    ),
    spec(
        "remove_duplicates",
        "itemlists",
        Scoring::Exact,
        Plain(gen_remove_duplicates),
    ),
    spec(
        "alphabetical_last",
        "itemlists",
        Scoring::Exact,
        Plain(gen_alphabetical_last),
    ),
];

/// `lo` to `hi` distinct words from the shared pool.
fn word_list(r: &mut Rng, lo: usize, hi: usize) -> Vec<&'static str> {
    let n = lo + r.below(hi - lo + 1);
    distinct_words(r, n)
}

fn gen_first_item(r: &mut Rng) -> Sample {
    let ws = word_list(r, 3, 5);
    let l = join(&ws);
    let p = match r.below(3) {
        0 => format!("What is the first item in this list: {l}?"),
        1 => format!("Which item comes first in: {l}?"),
        _ => format!("Here is a list: {l}. Name its first item."),
    };
    sample(l, p, ws[0])
}

fn gen_second_item(r: &mut Rng) -> Sample {
    let ws = word_list(r, 3, 5);
    let l = join(&ws);
    let p = match r.below(3) {
        0 => format!("What is the second item in this list: {l}?"),
        1 => format!("Which item comes second in: {l}?"),
        _ => format!("Here is a list: {l}. Name its 2nd item."),
    };
    sample(l, p, ws[1])
}

fn gen_item_after(r: &mut Rng) -> Sample {
    let ws = word_list(r, 4, 5);
    let i = r.below(ws.len() - 1);
    let (x, l) = (ws[i], join(&ws));
    let p = match r.below(3) {
        0 => format!("Which item comes right after '{x}' in this list: {l}?"),
        1 => format!("What follows \"{x}\" in the list {l}?"),
        _ => format!("Here is a list: {l}. Which item is just after '{x}'?"),
    };
    sample(format!("{l}:{i}"), p, ws[i + 1])
}

fn gen_item_before(r: &mut Rng) -> Sample {
    let ws = word_list(r, 4, 5);
    let i = 1 + r.below(ws.len() - 1);
    let (x, l) = (ws[i], join(&ws));
    let p = match r.below(3) {
        0 => format!("Which item comes right before '{x}' in this list: {l}?"),
        1 => format!("What comes just before \"{x}\" in the list {l}?"),
        _ => format!("Here is a list: {l}. Which item is just in front of '{x}'?"),
    };
    sample(format!("{l}:{i}"), p, ws[i - 1])
}

/// Counted from 1.
fn gen_item_position(r: &mut Rng) -> Sample {
    let ws = word_list(r, 3, 5);
    let i = r.below(ws.len());
    let (x, l) = (ws[i], join(&ws));
    let p = match r.below(3) {
        0 => format!("At which position is '{x}' in: {l}?"),
        1 => format!("What is the position of \"{x}\" in the list {l}? Count from one."),
        _ => format!("Counting from one, where does '{x}' appear in this list: {l}?"),
    };
    sample(format!("{l}:{i}"), p, i + 1)
}

/// 3 or 4 different numbers from 1 to 20.
fn gen_sum_list(r: &mut Rng) -> Sample {
    let n = 3 + r.below(2);
    let xs = numbers(r, n, 1, 20);
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("What is the sum of this list: {l}?"),
        1 => format!("Add up these numbers: {l}"),
        _ => format!("What do {l} add up to?"),
    };
    sample(l, p, xs.iter().sum::<i64>())
}

fn gen_min_number(r: &mut Rng) -> Sample {
    let n = 3 + r.below(3);
    let xs = numbers(r, n, 1, 99);
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("Which is the smallest number in this list: {l}?"),
        1 => format!("Find the minimum of {l}."),
        _ => format!("What is the lowest value among {l}?"),
    };
    sample(l, p, xs.iter().min().copied().unwrap_or_default())
}

/// Words of 5 letters or more, out of 4 to 6.
fn gen_count_long_words(r: &mut Rng) -> Sample {
    let ws = word_list(r, 4, 6);
    let l = join(&ws);
    let p = match r.below(3) {
        0 => format!("How many words in this list have more than 4 letters: {l}?"),
        1 => format!("Count the items longer than four letters in: {l}"),
        _ => format!("How many of these words have five or more letters? {l}"),
    };
    sample(l, p, ws.iter().filter(|w| w.len() > 4).count())
}

/// 3 or 4 different words with one or two of them repeated later in the list; the answer
/// keeps each word's first place (short enough to be a few tokens).
fn gen_remove_duplicates(r: &mut Rng) -> Sample {
    let ws = loop {
        let ws = word_list(r, 3, 4);
        if join(&ws).len() <= 24 {
            break ws;
        }
    };
    let mut list = ws.clone();
    for _ in 0..1 + r.below(2) {
        let w = *r.choose(&ws);
        let first = list.iter().position(|x| *x == w).unwrap_or(0);
        let at = first + 1 + r.below(list.len() - first);
        list.insert(at, w);
    }
    let l = join(&list);
    let p = match r.below(3) {
        0 => format!("Remove the repeated items from this list: {l}"),
        1 => format!("Write this list without duplicates: {l}"),
        _ => format!("Keep only the first copy of each item: {l}"),
    };
    sample(l, p, join(&ws))
}

/// 3 or 4 words with different first letters, so the answer does not hinge on later letters.
fn gen_alphabetical_last(r: &mut Rng) -> Sample {
    let ws = loop {
        let ws = word_list(r, 3, 4);
        let mut firsts: Vec<u8> = ws.iter().map(|w| w.as_bytes()[0]).collect();
        firsts.sort();
        firsts.dedup();
        if firsts.len() == ws.len() {
            break ws;
        }
    };
    let l = join(&ws);
    let p = match r.below(3) {
        0 => format!("Which word comes last in alphabetical order: {l}?"),
        1 => format!("Which of these words would a dictionary list last: {l}?"),
        _ => format!("Sort {l} alphabetically and give the last word."),
    };
    sample(l, p, ws.iter().max().copied().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{quoted, task};
    use super::super::Example;

    /// The longest run of letters-and-digits items with ", " between them: the prompt's list.
    fn list_in(s: &str) -> Vec<String> {
        let b = s.as_bytes();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_alphanumeric() {
                let start = i;
                while i < b.len() && b[i].is_ascii_alphanumeric() {
                    i += 1;
                }
                runs.push((start, i));
            } else {
                i += 1;
            }
        }
        let (mut best, mut cur): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for (k, &(start, end)) in runs.iter().enumerate() {
            if k == 0 || &s[runs[k - 1].1..start] != ", " {
                cur.clear();
            }
            cur.push(s[start..end].to_string());
            if cur.len() > best.len() {
                best = cur.clone();
            }
        }
        best
    }

    /// Every example of a task, both splits, with the list its prompt shows.
    fn each(name: &str, check: impl Fn(&[String], &Example)) {
        let t = task(name);
        assert_eq!(t.family, "itemlists");
        for ex in t.train.iter().chain(&t.test) {
            let l = list_in(&ex.prompt);
            assert!(l.len() >= 3, "{ex:?}");
            check(&l, ex);
        }
    }

    fn nums(l: &[String]) -> Vec<i64> {
        l.iter().map(|x| x.parse().unwrap()).collect()
    }

    /// The index in the list of the item the prompt quotes.
    fn quoted_at(l: &[String], ex: &Example) -> usize {
        let x = quoted(&ex.prompt).unwrap();
        let found: Vec<usize> = (0..l.len()).filter(|&i| l[i] == x).collect();
        assert_eq!(found.len(), 1, "{ex:?}");
        found[0]
    }

    #[test]
    fn helper_finds_the_list() {
        assert_eq!(
            list_in("Here is a list: cat, owl, dog. Which item is just after 'owl'?"),
            ["cat", "owl", "dog"]
        );
        assert_eq!(list_in("What do 3, 15, 7 add up to?"), ["3", "15", "7"]);
    }

    #[test]
    fn answers_follow_from_the_prompts() {
        each("first_item", |l, ex| assert_eq!(ex.answer, l[0], "{ex:?}"));
        each("second_item", |l, ex| assert_eq!(ex.answer, l[1], "{ex:?}"));
        each("item_after", |l, ex| {
            assert_eq!(ex.answer, l[quoted_at(l, ex) + 1], "{ex:?}");
        });
        each("item_before", |l, ex| {
            assert_eq!(ex.answer, l[quoted_at(l, ex) - 1], "{ex:?}");
        });
        each("item_position", |l, ex| {
            assert_eq!(ex.answer, (quoted_at(l, ex) + 1).to_string(), "{ex:?}");
        });
        each("sum_list", |l, ex| {
            let sum: i64 = nums(l).iter().sum();
            assert_eq!(ex.answer, sum.to_string(), "{ex:?}");
        });
        each("min_number", |l, ex| {
            let xs = nums(l);
            let min = xs.iter().copied().fold(i64::MAX, i64::min);
            assert_eq!(ex.answer, min.to_string(), "{ex:?}");
        });
        each("count_long_words", |l, ex| {
            let n = l.iter().filter(|w| w.chars().count() >= 5).count();
            assert_eq!(ex.answer, n.to_string(), "{ex:?}");
        });
        each("remove_duplicates", |l, ex| {
            let mut kept: Vec<&str> = Vec::new();
            for x in l {
                if !kept.contains(&x.as_str()) {
                    kept.push(x.as_str());
                }
            }
            assert!(kept.len() < l.len(), "no repeat: {ex:?}");
            assert_eq!(ex.answer, kept.join(", "), "{ex:?}");
        });
        each("alphabetical_last", |l, ex| {
            let mut sorted = l.to_vec();
            sorted.sort();
            assert_eq!(ex.answer, sorted[sorted.len() - 1], "{ex:?}");
        });
    }
}
