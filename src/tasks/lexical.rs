//! The `lexical` family: real text from WordNet 3.0 ([`super::wordnet`]): antonyms, parts of
//! speech, plurals, definitions and hypernyms.

use super::draw::*;
use super::wordnet::{Lexicon, Pos};
use super::{spec, Draw::Lexical, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec("antonym", "lexical", Scoring::Exact, Lexical(gen_antonym)),
    spec(
        "part_of_speech",
        "lexical",
        Scoring::Exact,
        Lexical(gen_part_of_speech),
    ),
    spec("plural", "lexical", Scoring::Exact, Lexical(gen_plural)),
    spec(
        "definition",
        "lexical",
        Scoring::Choice,
        Lexical(gen_definition),
    ),
    spec("kind_of", "lexical", Scoring::Choice, Lexical(gen_kind_of)),
];

// --- lexical (WordNet)

/// `a` or `an` before a word, by its first letter.
pub(super) fn article(w: &str) -> &'static str {
    if w.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// A four-way choice: `right` and three distinct words from `pool` that `fair` accepts,
/// in random order.
pub(super) fn four_choices(
    r: &mut Rng,
    right: &str,
    pool: &[String],
    fair: impl Fn(&str) -> bool,
) -> (Vec<String>, usize) {
    let mut choices = vec![right.to_string()];
    while choices.len() < 4 {
        let d = r.choose(pool);
        if !choices.contains(d) && fair(d) {
            choices.push(d.clone());
        }
    }
    r.shuffle(&mut choices);
    let at = choices.iter().position(|c| c == right).unwrap_or(0);
    (choices, at)
}

fn gen_antonym(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, a) = r.choose(&lex.antonyms);
    let p = match r.below(3) {
        0 => format!("What is the opposite of '{w}'?"),
        1 => format!("Give an antonym of the word \"{w}\"."),
        _ => format!("Which word means the opposite of {w}?"),
    };
    sample(w.clone(), p, a)
}

fn gen_part_of_speech(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, pos) = r.choose(&lex.parts_of_speech);
    let p = match r.below(3) {
        0 => format!("What part of speech is the word '{w}'?"),
        1 => format!("Is \"{w}\" a noun, a verb, an adjective or an adverb?"),
        _ => format!("Name the word class of '{w}'."),
    };
    sample(w.clone(), p, pos.name())
}

fn gen_plural(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, p) = r.choose(&lex.plurals);
    let q = match r.below(3) {
        0 => format!("What is the plural of '{w}'?"),
        1 => format!("How do you write \"{w}\" in the plural?"),
        _ => format!("One {w}, two what?"),
    };
    sample(w.clone(), q, p)
}

fn gen_definition(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, def) = r.choose(&lex.definitions);
    let pool = &lex.common[&Pos::Noun];
    let (choices, right) = four_choices(r, w, pool, |d| !lex.share_a_sense(w, d, Pos::Noun));
    let q = match r.below(3) {
        0 => format!("Which word matches this definition: \"{def}\"?"),
        1 => format!("\"{def}\": which word is this?"),
        _ => format!("Which word is defined as \"{def}\"?"),
    };
    choice_sample(w.clone(), &q, choices, right, r)
}

fn gen_kind_of(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, kind) = r.choose(&lex.kinds);
    let (choices, right) = four_choices(r, kind, &lex.kind_words, |d| d != w && !lex.is_a(w, d));
    let q = match r.below(3) {
        0 => match article(w) {
            "an" => format!("An {w} is a kind of what?"),
            _ => format!("A {w} is a kind of what?"),
        },
        1 => format!("What is {} {w} a type of?", article(w)),
        _ => format!("Which category does the word '{w}' belong to?"),
    };
    choice_sample(w.clone(), &q, choices, right, r)
}
