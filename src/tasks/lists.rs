//! The `lists` family: sorting, maxima, counting and reordering comma-separated lists.

use super::draw::*;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "sort_numbers",
        "lists",
        Scoring::Exact,
        Plain(gen_sort_numbers),
    ),
    spec("max_number", "lists", Scoring::Exact, Plain(gen_max_number)),
    spec(
        "count_items",
        "lists",
        Scoring::Exact,
        Plain(gen_count_items),
    ),
    spec("last_item", "lists", Scoring::Exact, Plain(gen_last_item)),
    spec(
        "reverse_list",
        "lists",
        Scoring::Exact,
        Plain(gen_reverse_list),
    ),
];

fn gen_sort_numbers(r: &mut Rng) -> Sample {
    let n = 3 + r.below(2);
    let xs = numbers(r, n, 1, 99);
    let mut sorted = xs.clone();
    sorted.sort();
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("Sort these numbers from smallest to largest: {l}"),
        1 => format!("Put {l} in ascending order."),
        _ => format!("Arrange in increasing order: {l}"),
    };
    sample(l, p, join(&sorted))
}

fn gen_max_number(r: &mut Rng) -> Sample {
    let n = 3 + r.below(3);
    let xs = numbers(r, n, 1, 99);
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("Which is the largest number in this list: {l}?"),
        1 => format!("Find the maximum of {l}."),
        _ => format!("What is the biggest value among {l}?"),
    };
    sample(l, p, xs.iter().max().copied().unwrap_or_default())
}

const OBJECTS: &[&str] = &[
    "apple", "pen", "cup", "hat", "lamp", "book", "chair", "spoon", "sock", "key", "ball", "phone",
    "clock", "shoe", "plate", "bag", "ring", "coin", "map", "card", "brush", "bottle", "kite",
    "drum", "box", "candle", "fork", "glove", "scarf", "rope",
];

fn objects(r: &mut Rng, n: usize) -> Vec<&'static str> {
    let mut out: Vec<&str> = Vec::with_capacity(n);
    while out.len() < n {
        let x = *r.choose(OBJECTS);
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn gen_count_items(r: &mut Rng) -> Sample {
    let n = 2 + r.below(7);
    let xs = objects(r, n);
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("How many items are in this list: {l}?"),
        1 => format!("Count the things I packed: {l}."),
        _ => format!("I bought {l}. How many things did I buy?"),
    };
    sample(l, p, n)
}

fn gen_last_item(r: &mut Rng) -> Sample {
    let n = 3 + r.below(4);
    let xs = objects(r, n);
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("What is the last item in the list: {l}?"),
        1 => format!("Which word comes last in: {l}?"),
        _ => format!("Name the final entry of this list: {l}"),
    };
    sample(l, p, xs[n - 1])
}

fn gen_reverse_list(r: &mut Rng) -> Sample {
    let xs = loop {
        let xs = objects(r, 3);
        if join(&xs).len() <= 24 {
            break xs;
        }
    };
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("Reverse the order of this list: {l}"),
        1 => format!("Write {l} backwards, last item first."),
        _ => format!("List these from last to first: {l}"),
    };
    let mut rev = xs.clone();
    rev.reverse();
    sample(l, p, join(&rev))
}
