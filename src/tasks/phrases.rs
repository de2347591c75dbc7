//! The `phrases` family (suite version 3): whole words moved, picked and re-cased in short
//! phrases (the word-level counterpart of `strings`, whose tasks work on letters).

use super::draw::*;
use super::strings::distinct_words;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec("lowercase", "phrases", Scoring::Exact, Plain(gen_lowercase)),
    spec(
        "title_case",
        "phrases",
        Scoring::Exact,
        Plain(gen_title_case),
    ),
    spec(
        "first_word",
        "phrases",
        Scoring::Exact,
        Plain(gen_first_word),
    ),
    spec("last_word", "phrases", Scoring::Exact, Plain(gen_last_word)),
    spec(
        "middle_word",
        "phrases",
        Scoring::Exact,
        Plain(gen_middle_word),
    ),
    spec(
        "comma_list",
        "phrases",
        Scoring::Exact,
        Plain(gen_comma_list),
    ),
    spec(
        "word_after",
        "phrases",
        Scoring::Exact,
        Plain(gen_word_after),
    ),
    spec(
        "drop_first_word",
        "phrases",
        Scoring::Exact,
        Plain(gen_drop_first_word),
    ),
    spec(
        "reverse_words",
        "phrases",
        Scoring::Exact,
        Plain(gen_reverse_words),
    ),
];

/// `n` distinct words as a phrase, and the words; short enough that an answer made of the
/// phrase's words with commas between stays a few tokens.
fn phrase(r: &mut Rng, n: usize) -> (String, Vec<&'static str>) {
    loop {
        let ws = distinct_words(r, n);
        let p = ws.join(" ");
        if p.len() <= 22 {
            return (p, ws);
        }
    }
}

fn gen_lowercase(r: &mut Rng) -> Sample {
    let (p, _) = phrase(r, 2);
    let loud = p.to_uppercase();
    let q = match r.below(3) {
        0 => format!("Write '{loud}' in small letters."),
        1 => format!("Convert \"{loud}\" to lowercase."),
        _ => format!("Make this all lowercase: {loud}"),
    };
    sample(p.clone(), q, p)
}

fn gen_title_case(r: &mut Rng) -> Sample {
    let n = 2 + r.below(2);
    let (p, ws) = phrase(r, n);
    let title: Vec<String> = ws.iter().map(|w| capitalise(w)).collect();
    let q = match r.below(3) {
        0 => format!("Write '{p}' in title case."),
        1 => format!("Capitalise every word of \"{p}\"."),
        _ => format!("Start each word with a capital letter: {p}"),
    };
    sample(p, q, title.join(" "))
}

fn gen_first_word(r: &mut Rng) -> Sample {
    let n = 3 + r.below(2);
    let (p, ws) = phrase(r, n);
    let q = match r.below(3) {
        0 => format!("What is the first word of '{p}'?"),
        1 => format!("Which word comes first in \"{p}\"?"),
        _ => format!("Give the opening word of this phrase: {p}"),
    };
    sample(p, q, ws[0])
}

fn gen_last_word(r: &mut Rng) -> Sample {
    let n = 3 + r.below(2);
    let (p, ws) = phrase(r, n);
    let q = match r.below(3) {
        0 => format!("What is the last word of '{p}'?"),
        1 => format!("Which word comes last in \"{p}\"?"),
        _ => format!("Give the final word of this phrase: {p}"),
    };
    sample(p, q, ws[ws.len() - 1])
}

fn gen_middle_word(r: &mut Rng) -> Sample {
    let (p, ws) = phrase(r, 3);
    let q = match r.below(3) {
        0 => format!("What is the middle word of '{p}'?"),
        1 => format!("Which word is in the middle of \"{p}\"?"),
        _ => format!("Of the three words {p}, which one is in the middle?"),
    };
    sample(p, q, ws[1])
}

fn gen_comma_list(r: &mut Rng) -> Sample {
    let (p, ws) = phrase(r, 3);
    let q = match r.below(3) {
        0 => format!("Separate the words of '{p}' with commas."),
        1 => format!("Write \"{p}\" as a comma-separated list."),
        _ => format!("Put a comma after each word but the last: {p}"),
    };
    sample(p, q, ws.join(", "))
}

fn gen_word_after(r: &mut Rng) -> Sample {
    let (p, ws) = phrase(r, 4);
    let i = r.below(3);
    let w = ws[i];
    let q = match r.below(3) {
        0 => format!("In '{p}', which word comes right after '{w}'?"),
        1 => format!("Which word follows \"{w}\" in \"{p}\"?"),
        _ => format!("Here is a phrase: {p}. What word is next after {w}?"),
    };
    sample(format!("{p}:{i}"), q, ws[i + 1])
}

fn gen_drop_first_word(r: &mut Rng) -> Sample {
    let (p, ws) = phrase(r, 3);
    let q = match r.below(3) {
        0 => format!("Remove the first word from '{p}'."),
        1 => format!("Write \"{p}\" without its first word."),
        _ => format!("Drop the opening word of this phrase: {p}"),
    };
    sample(p, q, ws[1..].join(" "))
}

fn gen_reverse_words(r: &mut Rng) -> Sample {
    let (p, ws) = phrase(r, 3);
    let back: Vec<&str> = ws.iter().rev().copied().collect();
    let q = match r.below(3) {
        0 => format!("Write the words of '{p}' in reverse order."),
        1 => format!("Reverse the order of the words in \"{p}\"."),
        _ => format!("Say these words backwards, last word first: {p}"),
    };
    sample(p, q, back.join(" "))
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{quoted, task};

    /// The words of the phrase a prompt quotes (the phrasings without quotes are skipped).
    fn quoted_words(prompt: &str) -> Option<Vec<String>> {
        quoted(prompt).map(|p| p.split(' ').map(str::to_string).collect())
    }

    /// Each answer read back from the phrase the prompt quotes.
    #[test]
    fn answers_come_from_the_quoted_phrase() {
        let quoted_examples = |name: &str| {
            task(name)
                .train
                .into_iter()
                .filter_map(|ex| quoted_words(&ex.prompt).map(|ws| (ws, ex)))
                .collect::<Vec<_>>()
        };
        for (ws, ex) in quoted_examples("lowercase") {
            assert_eq!(ex.answer, ws.join(" ").to_lowercase(), "{}", ex.prompt);
            assert_ne!(ex.answer, ws.join(" "), "{}", ex.prompt);
        }
        for (ws, ex) in quoted_examples("title_case") {
            let title: Vec<String> = ws.iter().map(|w| super::capitalise(w)).collect();
            assert_eq!(ex.answer, title.join(" "), "{}", ex.prompt);
        }
        for (ws, ex) in quoted_examples("middle_word") {
            assert_eq!(ex.answer, ws[1], "{}", ex.prompt);
        }
        for (ws, ex) in quoted_examples("comma_list") {
            assert_eq!(ex.answer, ws.join(", "), "{}", ex.prompt);
        }
        for (ws, ex) in quoted_examples("drop_first_word") {
            assert_eq!(ex.answer, ws[1..].join(" "), "{}", ex.prompt);
        }
        for (mut ws, ex) in quoted_examples("reverse_words") {
            ws.reverse();
            assert_eq!(ex.answer, ws.join(" "), "{}", ex.prompt);
        }
        // "In 'a b c d', which word comes right after 'b'?": the phrase is quoted first.
        for (ws, ex) in quoted_examples("word_after") {
            if ws.len() != 4 {
                continue; // the phrasing that quotes the word first
            }
            let i = ws.iter().position(|w| *w == ex.answer).unwrap();
            let before = format!("after '{}'", ws[i - 1]);
            assert!(ex.prompt.contains(&before), "{}", ex.prompt);
        }
    }
}
