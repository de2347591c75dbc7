//! The `associations` family (suite version 5): what a word is associated with in WordNet
//! 3.0 ([`super::wordnet`]), through relations no older task asks about: the quality an
//! adjective describes (attribute pointers, `=`), the field a word is a term of (topic
//! domains, `;c`), the general verb a verb is a way of doing (verb hypernyms, `@`), the
//! kind of a verb (its lexicographer file) and the plain adjective at the head of an
//! adjective's cluster (similar-to, `&`). Every task is a four-way choice whose distractors
//! WordNet does not link to the word in any sense.

use super::draw::*;
use super::lexical::four_choices;
use super::wordnet::{Lexicon, Pos};
use super::{spec, Draw::Lexical, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "quality_of",
        "associations",
        Scoring::Choice,
        Lexical(gen_quality_of),
    ),
    spec(
        "describes_quality",
        "associations",
        Scoring::Choice,
        Lexical(gen_describes_quality),
    ),
    spec(
        "field_of",
        "associations",
        Scoring::Choice,
        Lexical(gen_field_of),
    ),
    spec(
        "field_term",
        "associations",
        Scoring::Choice,
        Lexical(gen_field_term),
    ),
    spec(
        "manner_of",
        "associations",
        Scoring::Choice,
        Lexical(gen_manner_of),
    ),
    spec(
        "way_to",
        "associations",
        Scoring::Choice,
        Lexical(gen_way_to),
    ),
    spec(
        "verb_type",
        "associations",
        Scoring::Choice,
        Lexical(gen_verb_type),
    ),
    spec(
        "simpler_word",
        "associations",
        Scoring::Choice,
        Lexical(gen_simpler_word),
    ),
];

fn gen_quality_of(r: &mut Rng, lex: &Lexicon) -> Sample {
    let rel = &lex.rel;
    let (w, q) = r.choose(&rel.qualities);
    let (choices, right) = four_choices(r, q, &rel.quality_names, |d| !rel.describes(w, d));
    let p = match r.below(3) {
        0 => format!("Which quality does the adjective '{w}' describe?"),
        1 => format!("\"{w}\" tells you about which property?"),
        _ => format!("What attribute is the word '{w}' about?"),
    };
    choice_sample(w.clone(), &p, choices, right, r)
}

fn gen_describes_quality(r: &mut Rng, lex: &Lexicon) -> Sample {
    let rel = &lex.rel;
    let (w, q) = r.choose(&rel.qualities);
    let (choices, right) = four_choices(r, w, &rel.quality_words, |d| !rel.describes(d, q));
    let p = match r.below(3) {
        0 => format!("Which of these adjectives describes {q}?"),
        1 => format!("Pick the word that tells you about {q}."),
        _ => format!("You want a word for the {q} of something. Which one fits?"),
    };
    choice_sample(format!("{q}>{w}"), &p, choices, right, r)
}

fn gen_field_of(r: &mut Rng, lex: &Lexicon) -> Sample {
    let rel = &lex.rel;
    let (w, f) = r.choose(&rel.fields);
    let (choices, right) = four_choices(r, f, &rel.field_names, |d| !rel.in_field(w, d));
    let p = match r.below(3) {
        0 => format!("In which field is '{w}' a special term?"),
        1 => format!("The word \"{w}\" belongs to the vocabulary of which subject?"),
        _ => format!("Which subject area does the term '{w}' come from?"),
    };
    choice_sample(w.clone(), &p, choices, right, r)
}

fn gen_field_term(r: &mut Rng, lex: &Lexicon) -> Sample {
    let rel = &lex.rel;
    let (w, f) = r.choose(&rel.fields);
    let (choices, right) = four_choices(r, w, &rel.field_words, |d| !rel.in_field(d, f));
    let p = match r.below(3) {
        0 => format!("Which of these words is a term from {f}?"),
        1 => format!("Pick the word that belongs to the vocabulary of {f}."),
        _ => format!("Which word would you most expect to hear in {f}?"),
    };
    choice_sample(format!("{f}>{w}"), &p, choices, right, r)
}

fn gen_manner_of(r: &mut Rng, lex: &Lexicon) -> Sample {
    let rel = &lex.rel;
    let (v, g) = r.choose(&rel.manners);
    let (choices, right) = four_choices(r, g, &rel.general_verbs, |d| {
        !rel.verb_is_a(v, d) && !rel.verbs_close(v, d) && !rel.verbs_close(g, d)
    });
    let p = match r.below(3) {
        0 => format!("To '{v}' is a particular way to do what?"),
        1 => format!("\"{v}\" is a special way to ___. Which verb fills the gap?"),
        _ => format!("Which more general verb covers the action '{v}'?"),
    };
    choice_sample(v.clone(), &p, choices, right, r)
}

fn gen_way_to(r: &mut Rng, lex: &Lexicon) -> Sample {
    let rel = &lex.rel;
    let (v, g) = r.choose(&rel.manners);
    let (choices, right) = four_choices(r, v, &rel.manner_verbs, |d| {
        !rel.verb_is_a(d, g) && !rel.verbs_close(g, d) && !rel.verbs_close(v, d)
    });
    let p = match r.below(3) {
        0 => format!("Which of these verbs is a particular way to {g}?"),
        1 => format!("Pick the verb that names a special way to {g}."),
        _ => format!("Which word describes one manner of doing '{g}'?"),
    };
    choice_sample(format!("{g}>{v}"), &p, choices, right, r)
}

fn gen_verb_type(r: &mut Rng, lex: &Lexicon) -> Sample {
    let rel = &lex.rel;
    let (v, k) = r.choose(&rel.verb_kinds);
    let (choices, right) = four_choices(r, k, &rel.verb_kind_names, |d| !rel.verb_kind_fits(v, d));
    let p = match r.below(3) {
        0 => format!("'{v}' is a verb of what kind?"),
        1 => format!("What kind of action or state does the verb \"{v}\" name?"),
        _ => format!("Which group of verbs does '{v}' belong to?"),
    };
    choice_sample(v.clone(), &p, choices, right, r)
}

fn gen_simpler_word(r: &mut Rng, lex: &Lexicon) -> Sample {
    let rel = &lex.rel;
    let (w, h) = r.choose(&rel.similar);
    let (choices, right) = four_choices(r, h, &rel.plain_adjectives, |d| {
        !rel.similar_to(w, d)
            && !rel.similar_to(h, d)
            && !rel.share_a_sense(w, d, Pos::Adjective)
            && !rel.share_a_sense(h, d, Pos::Adjective)
    });
    let p = match r.below(3) {
        0 => format!("Which simpler word is closest in meaning to '{w}'?"),
        1 => format!("Give a plainer adjective for \"{w}\"."),
        _ => format!("Which everyday adjective means nearly the same as '{w}'?"),
    };
    choice_sample(w.clone(), &p, choices, right, r)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::tests_support::{examples, quoted, task};
    use super::super::{choice_index, wordnet::lexicon, Example};
    use super::*;

    /// The choice an example's answer names, and the other three.
    fn right_and_wrong(ex: &Example) -> (&str, Vec<&str>) {
        let at = choice_index(&ex.answer).unwrap();
        let wrong = ex
            .choices
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .map(|(_, c)| c.as_str())
            .collect();
        (ex.choices[at].as_str(), wrong)
    }

    fn pair<'a>(list: &'a [(String, String)], w: &str) -> Option<&'a str> {
        list.iter().find(|(x, _)| x == w).map(|(_, y)| y.as_str())
    }

    /// The label of `names` that the question (the prompt's first line) names and that
    /// `ok` accepts.
    fn named<'a>(ex: &Example, names: &'a [String], ok: impl Fn(&str) -> bool) -> Option<&'a str> {
        let line = ex.prompt.lines().next().unwrap();
        let words: Vec<&str> = line
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|s| !s.is_empty())
            .collect();
        let text = format!(" {} ", words.join(" "));
        names
            .iter()
            .map(String::as_str)
            .filter(|n| text.contains(&format!(" {n} ")))
            .find(|n| ok(n))
    }

    #[test]
    fn every_task_builds_with_short_ascii_questions_and_four_choices() {
        for s in SPECS {
            let t = task(&s.name);
            assert_eq!((t.train.len(), t.test.len()), (240, 60), "{}", s.name);
            let answers: BTreeSet<&str> = t.train.iter().map(|e| e.answer.as_str()).collect();
            assert!(answers.len() >= 2, "{}", s.name);
            for ex in t.train.iter().chain(&t.test) {
                assert!(ex.prompt.is_ascii(), "{ex:?}");
                assert_eq!(ex.choices.len(), 4, "{ex:?}");
                let distinct: BTreeSet<&String> = ex.choices.iter().collect();
                assert_eq!(distinct.len(), 4, "{ex:?}");
                assert!(ex.choices.iter().all(|c| c.len() <= 24), "{ex:?}");
            }
        }
    }

    #[test]
    fn the_lists_are_long_enough_and_hold_known_pairs() {
        let rel = &lexicon().unwrap().rel;
        for (name, n) in [
            ("qualities", rel.qualities.len()),
            ("fields", rel.fields.len()),
            ("manners", rel.manners.len()),
            ("verb kinds", rel.verb_kinds.len()),
            ("similar adjectives", rel.similar.len()),
        ] {
            assert!(n >= 500, "{name}: {n}");
        }
        assert_eq!(pair(&rel.qualities, "heavy"), Some("weight"));
        assert_eq!(pair(&rel.qualities, "crimson"), Some("color"));
        // "careful" and "carefulness" are one stem: the noun form is morphology's question.
        assert_eq!(pair(&rel.qualities, "careful"), None);
        assert_eq!(pair(&rel.fields, "baste"), Some("cooking"));
        assert_eq!(pair(&rel.fields, "attorney"), Some("law"));
        assert_eq!(pair(&rel.manners, "mumble"), Some("talk"));
        assert_eq!(pair(&rel.verb_kinds, "whisper"), Some("communication"));
        assert_eq!(pair(&rel.similar, "enormous"), Some("large"));
        assert!(rel.describes("light", "weight") && rel.describes("light", "brightness"));
        assert_eq!(pair(&rel.fields, "virus"), Some("biology"));
        assert!(
            rel.in_field("virus", "medicine"),
            "biology is near medicine"
        );
        assert!(!rel.in_field("virus", "cooking"));
        assert!(rel.verb_is_a("mumble", "talk") && rel.verb_is_a("mumble", "communicate"));
        assert!(!rel.verb_is_a("mumble", "walk"));
        assert!(rel.verbs_close("talk", "speak") && !rel.verbs_close("talk", "walk"));
        assert!(rel.similar_to("enormous", "large") && rel.similar_to("large", "enormous"));
    }

    #[test]
    fn quality_answers_are_right() {
        let rel = &lexicon().unwrap().rel;
        for ex in &examples("quality_of") {
            let w = quoted(&ex.prompt).unwrap();
            let (right, wrong) = right_and_wrong(ex);
            assert_eq!(pair(&rel.qualities, &w), Some(right), "{ex:?}");
            assert!(wrong.iter().all(|d| !rel.describes(&w, d)), "{ex:?}");
        }
        for ex in &examples("describes_quality") {
            let (right, wrong) = right_and_wrong(ex);
            let fair = |q: &str| {
                rel.qualities.contains(&(right.to_string(), q.to_string()))
                    && wrong.iter().all(|d| !rel.describes(d, q))
            };
            assert!(named(ex, &rel.quality_names, fair).is_some(), "{ex:?}");
        }
    }

    #[test]
    fn field_answers_are_right() {
        let rel = &lexicon().unwrap().rel;
        for ex in &examples("field_of") {
            let w = quoted(&ex.prompt).unwrap();
            let (right, wrong) = right_and_wrong(ex);
            assert_eq!(pair(&rel.fields, &w), Some(right), "{ex:?}");
            assert!(wrong.iter().all(|d| !rel.in_field(&w, d)), "{ex:?}");
        }
        for ex in &examples("field_term") {
            let (right, wrong) = right_and_wrong(ex);
            let fair = |f: &str| {
                rel.fields.contains(&(right.to_string(), f.to_string()))
                    && wrong.iter().all(|d| !rel.in_field(d, f))
            };
            assert!(named(ex, &rel.field_names, fair).is_some(), "{ex:?}");
        }
    }

    #[test]
    fn verb_answers_are_right() {
        let rel = &lexicon().unwrap().rel;
        for ex in &examples("manner_of") {
            let v = quoted(&ex.prompt).unwrap();
            let (right, wrong) = right_and_wrong(ex);
            assert_eq!(pair(&rel.manners, &v), Some(right), "{ex:?}");
            assert!(rel.verb_is_a(&v, right), "{ex:?}");
            let fair = |d: &&str| !rel.verb_is_a(&v, d) && !rel.verbs_close(right, d);
            assert!(wrong.iter().all(fair), "{ex:?}");
        }
        for ex in &examples("way_to") {
            let (right, wrong) = right_and_wrong(ex);
            let g = pair(&rel.manners, right).unwrap();
            let general = [g.to_string()];
            assert_eq!(named(ex, &general, |_| true), Some(g), "{ex:?}");
            let fair = |d: &&str| !rel.verb_is_a(d, g) && !rel.verbs_close(g, d);
            assert!(wrong.iter().all(fair), "{ex:?}");
        }
        for ex in &examples("verb_type") {
            let v = quoted(&ex.prompt).unwrap();
            let (right, wrong) = right_and_wrong(ex);
            assert_eq!(pair(&rel.verb_kinds, &v), Some(right), "{ex:?}");
            assert!(wrong.iter().all(|d| !rel.verb_kind_fits(&v, d)), "{ex:?}");
        }
    }

    #[test]
    fn simpler_word_answers_are_right() {
        let rel = &lexicon().unwrap().rel;
        for ex in &examples("simpler_word") {
            let w = quoted(&ex.prompt).unwrap();
            let (right, wrong) = right_and_wrong(ex);
            assert_eq!(pair(&rel.similar, &w), Some(right), "{ex:?}");
            assert!(rel.similar_to(&w, right), "{ex:?}");
            assert!(wrong.iter().all(|d| !rel.similar_to(&w, d)), "{ex:?}");
        }
    }
}
