//! The `text` family: operations on common English words (case, letters, joining, order).

use super::draw::*;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec("uppercase", "text", Scoring::Exact, Plain(gen_uppercase)),
    spec(
        "first_letter",
        "text",
        Scoring::Exact,
        Plain(gen_first_letter),
    ),
    spec(
        "count_letters",
        "text",
        Scoring::Exact,
        Plain(gen_count_letters),
    ),
    spec("join_words", "text", Scoring::Exact, Plain(gen_join_words)),
    spec(
        "repeat_word",
        "text",
        Scoring::Exact,
        Plain(gen_repeat_word),
    ),
    spec("swap_words", "text", Scoring::Exact, Plain(gen_swap_words)),
];

fn gen_uppercase(r: &mut Rng) -> Sample {
    let (a, b) = (pick_word(r), pick_word(r));
    let p = match r.below(3) {
        0 => format!("Write '{a} {b}' in capital letters."),
        1 => format!("Convert \"{a} {b}\" to uppercase."),
        _ => format!("Make this all caps: {a} {b}"),
    };
    sample(format!("{a} {b}"), p, format!("{a} {b}").to_uppercase())
}

fn gen_first_letter(r: &mut Rng) -> Sample {
    let w = pick_word(r);
    let p = match r.below(3) {
        0 => format!("What is the first letter of the word '{w}'?"),
        1 => format!("Which letter does \"{w}\" start with?"),
        _ => format!("Tell me the initial letter of {w}."),
    };
    sample(w.to_string(), p, &w[..1])
}

fn gen_count_letters(r: &mut Rng) -> Sample {
    let w = pick_word(r);
    let p = match r.below(3) {
        0 => format!("How many letters are in the word '{w}'?"),
        1 => format!("Count the letters in \"{w}\"."),
        _ => format!("How long is the word {w}, in letters?"),
    };
    sample(w.to_string(), p, w.len())
}

fn gen_join_words(r: &mut Rng) -> Sample {
    // Three words whose joined form stays a short answer.
    let ws = loop {
        let ws = [pick_word(r), pick_word(r), pick_word(r)];
        if ws.iter().map(|w| w.len()).sum::<usize>() <= 20 && ws[0] != ws[1] && ws[1] != ws[2] {
            break ws;
        }
    };
    let (sep, name) = match r.below(2) {
        0 => ("-", "hyphens"),
        _ => ("_", "underscores"),
    };
    let [a, b, c] = ws;
    let p = match r.below(3) {
        0 => format!("Join the words {a}, {b} and {c} with {name}."),
        1 => format!("Put {name} between these words: {a} {b} {c}"),
        _ => format!("Connect \"{a}\", \"{b}\" and \"{c}\" into one string using {name}."),
    };
    sample(format!("{a} {b} {c} {sep}"), p, ws.join(sep))
}

fn gen_repeat_word(r: &mut Rng) -> Sample {
    let (w, n) = loop {
        let (w, n) = (pick_word(r), 2 + r.below(3));
        if (w.len() + 1) * n <= 25 {
            break (w, n);
        }
    };
    let times = ["", "", "twice", "three times", "four times"][n];
    let p = match r.below(3) {
        0 => format!("Write the word '{w}' {times}, separated by spaces."),
        1 => format!("Repeat \"{w}\" {times}."),
        _ => format!("Say {w} {times} in a row."),
    };
    sample(format!("{w} {n}"), p, vec![w; n].join(" "))
}

fn gen_swap_words(r: &mut Rng) -> Sample {
    let (a, b) = loop {
        let (a, b) = (pick_word(r), pick_word(r));
        if a != b {
            break (a, b);
        }
    };
    let p = match r.below(3) {
        0 => format!("Swap the two words in '{a} {b}'."),
        1 => format!("Put the words of \"{a} {b}\" in the opposite order."),
        _ => format!("Switch the order of {a} and {b}: write them as a pair."),
    };
    sample(format!("{a} {b}"), p, format!("{b} {a}"))
}
