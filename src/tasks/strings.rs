//! The `strings` family: letters and words inside short strings (last letter, second word, acronyms).

use std::collections::BTreeSet;

use super::draw::*;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "last_letter",
        "strings",
        Scoring::Exact,
        Plain(gen_last_letter),
    ),
    spec(
        "second_letter",
        "strings",
        Scoring::Exact,
        Plain(gen_second_letter),
    ),
    spec(
        "second_word",
        "strings",
        Scoring::Exact,
        Plain(gen_second_word),
    ),
    spec(
        "remove_spaces",
        "strings",
        Scoring::Exact,
        Plain(gen_remove_spaces),
    ),
    spec("acronym", "strings", Scoring::Exact, Plain(gen_acronym)),
    spec(
        "ends_with_letter",
        "strings",
        Scoring::Exact,
        Plain(gen_ends_with_letter),
    ),
    spec(
        "longer_word",
        "strings",
        Scoring::Exact,
        Plain(gen_longer_word),
    ),
    spec(
        "sort_letters",
        "strings",
        Scoring::Exact,
        Plain(gen_sort_letters),
    ),
];

/// `n` distinct words from the pool.
pub(super) fn distinct_words(r: &mut Rng, n: usize) -> Vec<&'static str> {
    let mut out: Vec<&str> = Vec::with_capacity(n);
    while out.len() < n {
        let w = pick_word(r);
        if !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

/// `n` distinct words whose lengths all differ.
pub(super) fn words_of_distinct_lengths(r: &mut Rng, n: usize) -> Vec<&'static str> {
    loop {
        let ws = distinct_words(r, n);
        let mut lens: Vec<usize> = ws.iter().map(|w| w.len()).collect();
        lens.sort();
        lens.dedup();
        if lens.len() == n {
            return ws;
        }
    }
}

/// More everyday words (3 to 9 letters) for the single-word tasks of the procedural families:
/// with the shared pool about 700, so each such task has room well beyond its 300 questions.
const MORE_WORDS: &str =
    "acorn actor adult agent alarm album alley angel angle ankle apron arch arena armor attic \
autumn avenue bacon badger bakery balcony bamboo bandage barn barrel basin batch beard \
beaver beetle bench bicycle biscuit blade blender blossom bonnet border bottom boulder \
bracket branch brass breeze bubble bucket buffalo bundle burger butter cabin cabinet cactus \
camel canal canvas captain carbon cargo carnival cart cellar cement chain chapter charcoal \
chimney chin chocolate cinema circus clay cliff climate closet clover coconut coin comet \
compass concert cookie corner costume cottage couch cradle crane crater cricket crown \
crystal cushion custard daisy dancer dentist desert dessert diary dolphin donkey dough \
dragonfly drawer drill dune elbow elephant elevator emerald envelope fabric falcon feast \
ferry fiddle figure film flame flask fleet flute folder forehead fossil frame freezer fringe \
frost funnel galaxy garage garlic gazelle giant ginger giraffe glacier globe glue goose gown \
grape grocer guard gulf hallway hamster handle harvest hawk hedge heron hinge hook hose hut \
igloo ink iron ivory jaguar jar jeans jet jigsaw journal jungle kangaroo kayak kennel kernel \
kitten knot koala label lace lamb laptop lava lawn leather lecture legend lens lettuce lily \
linen lobster locket lumber magician mango mansion maple mask melon menu merchant meteor \
mitten moth motor muffin mule museum mustard nephew niece noodle notebook novel nugget oak \
oar oasis olive orbit otter paddle page pail palm pancake panther parade parcel pasta pastry \
patch peanut pearl pelican penguin pickle pier pigeon pine pizza plank plum pond poster \
pottery prairie pretzel pudding pupil purse quilt raccoon raft rail raisin ranch raven \
recipe reef ribbon riddle ring robin rug ruler saucer sausage scale scooter sheet shell \
shield shrimp silk sketch sled slipper snail sofa spider spinach stable stove straw stream \
string sunset swan sword syrup tablet tape teapot temple thumb tile timber toad toffee tomb \
torch tulip turkey tutor vest violet vulture waffle walrus wand wheat wig willow wing wire \
yacht yarn yogurt";

/// The shared word pool and [`MORE_WORDS`], sorted, without repeats.
pub(super) fn wide_words() -> Vec<&'static str> {
    let mut set: BTreeSet<&str> = words().into_iter().collect();
    set.extend(MORE_WORDS.split_whitespace());
    set.into_iter().collect()
}

/// A word from [`wide_words`].
pub(super) fn pick_wide_word(r: &mut Rng) -> &'static str {
    thread_local! {
        static WIDE: Vec<&'static str> = wide_words();
    }
    WIDE.with(|w| *r.choose(w))
}

/// A lower-case letter, `0` for `a`.
pub(super) fn letter(i: usize) -> char {
    (b'a' + i as u8) as char
}

fn gen_last_letter(r: &mut Rng) -> Sample {
    let w = pick_wide_word(r);
    let p = match r.below(3) {
        0 => format!("What is the last letter of the word '{w}'?"),
        1 => format!("Which letter does \"{w}\" end with?"),
        _ => format!("Tell me the final letter of {w}."),
    };
    sample(w.to_string(), p, &w[w.len() - 1..])
}

fn gen_second_letter(r: &mut Rng) -> Sample {
    let w = pick_wide_word(r);
    let p = match r.below(3) {
        0 => format!("What is the second letter of the word '{w}'?"),
        1 => format!("Which letter comes second in \"{w}\"?"),
        _ => format!("Tell me the 2nd letter of {w}."),
    };
    sample(w.to_string(), p, &w[1..2])
}

fn gen_second_word(r: &mut Rng) -> Sample {
    let n = 3 + r.below(3);
    let ws = distinct_words(r, n);
    let s = ws.join(" ");
    let p = match r.below(3) {
        0 => format!("What is the second word in '{s}'?"),
        1 => format!("Which word comes second in \"{s}\"?"),
        _ => format!("Name the 2nd word of this phrase: {s}"),
    };
    sample(s.clone(), p, ws[1])
}

fn gen_remove_spaces(r: &mut Rng) -> Sample {
    let ws = loop {
        let n = 2 + r.below(2);
        let ws = distinct_words(r, n);
        if ws.iter().map(|w| w.len()).sum::<usize>() <= 20 {
            break ws;
        }
    };
    let s = ws.join(" ");
    let p = match r.below(3) {
        0 => format!("Remove the spaces from '{s}'."),
        1 => format!("Write \"{s}\" without any spaces."),
        _ => format!("Delete the spaces in this text: {s}"),
    };
    sample(s.clone(), p, ws.concat())
}

fn gen_acronym(r: &mut Rng) -> Sample {
    let n = 3 + r.below(2);
    let ws = distinct_words(r, n);
    let s = ws.join(" ");
    let initials: String = ws
        .iter()
        .map(|w| &w[..1])
        .collect::<String>()
        .to_uppercase();
    let p = match r.below(3) {
        0 => format!("What is the acronym of '{s}'?"),
        1 => format!("Make an acronym from the first letters of \"{s}\"."),
        _ => format!("Write the initials of these words: {s}"),
    };
    sample(s.clone(), p, initials)
}

fn gen_ends_with_letter(r: &mut Rng) -> Sample {
    let w = pick_word(r);
    let last = w.as_bytes()[w.len() - 1] as char;
    // Half the questions name the word's own last letter.
    let l = if r.below(2) == 0 {
        last
    } else {
        loop {
            let l = letter(r.below(26));
            if l != last {
                break l;
            }
        }
    };
    let p = match r.below(3) {
        0 => format!("Does the word '{w}' end with the letter {l}? Answer yes or no."),
        1 => format!("Is the last letter of \"{w}\" '{l}'? Yes or no?"),
        _ => format!("Yes or no: {w} ends in {l}."),
    };
    let ans = if l == last { "yes" } else { "no" };
    sample(format!("{w}:{l}"), p, ans)
}

fn gen_longer_word(r: &mut Rng) -> Sample {
    let (a, b) = loop {
        let (a, b) = (pick_word(r), pick_word(r));
        if a.len() != b.len() {
            break (a, b);
        }
    };
    let p = match r.below(3) {
        0 => format!("Which word is longer, '{a}' or '{b}'?"),
        1 => format!("Which has more letters: \"{a}\" or \"{b}\"?"),
        _ => format!("Of {a} and {b}, which is the longer word?"),
    };
    let ans = if a.len() > b.len() { a } else { b };
    sample(format!("{a} {b}"), p, ans)
}

fn gen_sort_letters(r: &mut Rng) -> Sample {
    let n = 3 + r.below(2);
    let mut ls: Vec<char> = Vec::with_capacity(n);
    while ls.len() < n {
        let l = letter(r.below(26));
        if !ls.contains(&l) {
            ls.push(l);
        }
    }
    let l = join(&ls);
    let p = match r.below(3) {
        0 => format!("Put these letters in alphabetical order: {l}"),
        1 => format!("Sort the letters {l} from A to Z."),
        _ => format!("Arrange alphabetically: {l}"),
    };
    let mut sorted = ls.clone();
    sorted.sort();
    sample(l, p, join(&sorted))
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{quoted, task};

    #[test]
    fn wide_pool_is_lowercase_words_of_3_to_9_letters() {
        let ws = super::wide_words();
        assert!(ws.len() >= 650, "{} words", ws.len());
        for w in ws {
            assert!((3..=9).contains(&w.len()), "{w}");
            assert!(w.chars().all(|c| c.is_ascii_lowercase()), "{w}");
        }
    }

    #[test]
    fn answers_follow_from_the_prompts() {
        for ex in task("last_letter").train.iter() {
            let w = quoted(&ex.prompt).unwrap_or_else(|| {
                let s = ex.prompt.trim_end_matches('.');
                s.rsplit(' ').next().unwrap().to_string()
            });
            assert_eq!(ex.answer, w.chars().last().unwrap().to_string(), "{ex:?}");
        }
        for ex in task("acronym").train.iter() {
            let s = quoted(&ex.prompt)
                .unwrap_or_else(|| ex.prompt.rsplit(": ").next().unwrap().to_string());
            let want: String = s.split(' ').map(|w| &w[..1]).collect();
            assert_eq!(ex.answer, want.to_uppercase(), "{ex:?}");
        }
        for ex in task("sort_letters").train.iter() {
            let mut ls: Vec<char> = ex
                .prompt
                .split(|c: char| !c.is_ascii_alphabetic())
                .filter(|s| s.len() == 1 && *s != "A" && *s != "Z")
                .map(|s| s.chars().next().unwrap())
                .collect();
            ls.sort();
            let want: Vec<String> = ls.iter().map(|c| c.to_string()).collect();
            assert_eq!(ex.answer, want.join(", "), "{ex:?}");
        }
    }
}
