//! The `semantics` family: meaning relations from WordNet 3.0 ([`super::wordnet`]):
//! synonyms, kinds, parts, broad categories, sentence gaps and yes/no checks.

use super::draw::*;
use super::lexical::{article, four_choices};
use super::wordnet::{Category, Lexicon, Pos};
use super::{spec, Draw::Lexical, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "synonym",
        "semantics",
        Scoring::Choice,
        Lexical(gen_synonym),
    ),
    spec(
        "hyponym",
        "semantics",
        Scoring::Choice,
        Lexical(gen_hyponym),
    ),
    spec(
        "more_general",
        "semantics",
        Scoring::Choice,
        Lexical(gen_more_general),
    ),
    spec(
        "has_part",
        "semantics",
        Scoring::Choice,
        Lexical(gen_has_part),
    ),
    spec(
        "part_of",
        "semantics",
        Scoring::Choice,
        Lexical(gen_part_of),
    ),
    spec(
        "category",
        "semantics",
        Scoring::Choice,
        Lexical(gen_category),
    ),
    spec(
        "odd_one_out",
        "semantics",
        Scoring::Choice,
        Lexical(gen_odd_one_out),
    ),
    spec("cloze", "semantics", Scoring::Choice, Lexical(gen_cloze)),
    spec(
        "is_a_check",
        "semantics",
        Scoring::Exact,
        Lexical(gen_is_a_check),
    ),
    spec(
        "synonym_check",
        "semantics",
        Scoring::Exact,
        Lexical(gen_synonym_check),
    ),
    spec(
        "antonym_check",
        "semantics",
        Scoring::Exact,
        Lexical(gen_antonym_check),
    ),
    spec(
        "can_be_verb",
        "semantics",
        Scoring::Exact,
        Lexical(gen_can_be_verb),
    ),
    spec(
        "can_be_noun",
        "semantics",
        Scoring::Exact,
        Lexical(gen_can_be_noun),
    ),
];

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn gen_synonym(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, pos, s) = r.choose(&lex.rel.synonyms);
    let pool = &lex.common[pos];
    let (choices, right) = four_choices(r, s, pool, |d| {
        !lex.rel.share_a_sense(w, d, *pos) && !lex.rel.share_a_sense(s, d, *pos) && d != w
    });
    let q = match r.below(3) {
        0 => format!("Which word means the same as '{w}'?"),
        1 => format!("Pick a synonym of \"{w}\"."),
        _ => format!("Which of these words is closest in meaning to {w}?"),
    };
    choice_sample(w.clone(), &q, choices, right, r)
}

fn gen_hyponym(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, kind) = r.choose(&lex.kinds);
    let pool = &lex.common[&Pos::Noun];
    let (choices, right) = four_choices(r, w, pool, |d| d != kind && !lex.rel.is_a(d, kind));
    let q = match r.below(3) {
        0 => format!("Which of these is a kind of {kind}?"),
        1 => format!("Which word names a type of \"{kind}\"?"),
        _ => format!("Pick the example of {} {kind}.", article(kind)),
    };
    choice_sample(w.clone(), &q, choices, right, r)
}

fn gen_more_general(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, kind) = r.choose(&lex.kinds);
    let mut choices = vec![w.clone(), kind.clone()];
    r.shuffle(&mut choices);
    let right = choices.iter().position(|c| c == kind).unwrap_or(0);
    let q = match r.below(3) {
        0 => format!(
            "Which word is more general: '{}' or '{}'?",
            choices[0], choices[1]
        ),
        1 => "Which of these two words names the wider class?".to_string(),
        _ => format!(
            "One of \"{}\" and \"{}\" is a kind of the other. Which is the broader word?",
            choices[0], choices[1]
        ),
    };
    choice_sample(w.clone(), &q, choices, right, r)
}

fn gen_has_part(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (whole, part) = r.choose(&lex.rel.parts);
    let pool = &lex.common[&Pos::Noun];
    let (choices, right) = four_choices(r, part, pool, |d| !lex.rel.part_linked(whole, d));
    let q = match r.below(3) {
        0 => format!("Which of these is a part of {} {whole}?", article(whole)),
        1 => format!(
            "What does {} \"{whole}\" have as one of its parts?",
            article(whole)
        ),
        _ => format!(
            "Pick the word that names a part of {} {whole}.",
            article(whole)
        ),
    };
    choice_sample(format!("{whole}>{part}"), &q, choices, right, r)
}

fn gen_part_of(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (part, whole) = r.choose(&lex.rel.wholes);
    let pool = &lex.common[&Pos::Noun];
    let (choices, right) = four_choices(r, whole, pool, |d| !lex.rel.part_linked(part, d));
    let q = match r.below(3) {
        0 => format!("{} {part} is part of what?", capitalise(article(part))),
        1 => format!("Which of these has \"{part}\" as one of its parts?"),
        _ => format!("What is {} {part} a part of?", article(part)),
    };
    choice_sample(part.clone(), &q, choices, right, r)
}

fn gen_category(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, cat) = r.choose(&lex.rel.categories);
    let mut cats = vec![*cat];
    while cats.len() < 4 {
        let c = *r.choose(&Category::ALL);
        if !cats.contains(&c) {
            cats.push(c);
        }
    }
    r.shuffle(&mut cats);
    let right = cats.iter().position(|c| c == cat).unwrap_or(0);
    let choices = cats.iter().map(|c| c.name().to_string()).collect();
    let q = match r.below(3) {
        0 => format!("What is {} {w}?", article(w)),
        1 => format!("Which kind of thing is \"{w}\"?"),
        _ => format!("The word '{w}' names what?"),
    };
    choice_sample(w.clone(), &q, choices, right, r)
}

fn gen_odd_one_out(r: &mut Rng, lex: &Lexicon) -> Sample {
    let cats = &lex.rel.categories;
    let (_, group) = r.choose(cats);
    let mut choices: Vec<String> = Vec::new();
    while choices.len() < 3 {
        let (w, c) = r.choose(cats);
        if c == group && !choices.contains(w) {
            choices.push(w.clone());
        }
    }
    let odd = loop {
        let (w, c) = r.choose(cats);
        if c != group {
            break w.clone();
        }
    };
    choices.push(odd.clone());
    r.shuffle(&mut choices);
    let right = choices.iter().position(|c| *c == odd).unwrap_or(0);
    let mut key = choices.clone();
    key.sort();
    let q = match r.below(3) {
        0 => "Which word is the odd one out?".to_string(),
        1 => "Three of these words belong together. Which one does not?".to_string(),
        _ => "Which word does not fit with the others?".to_string(),
    };
    choice_sample(key.join(","), &q, choices, right, r)
}

fn gen_cloze(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, pos, sentence) = r.choose(&lex.rel.cloze);
    let pool = &lex.common[pos];
    let (choices, right) = four_choices(r, w, pool, |d| !lex.rel.share_a_sense(w, d, *pos));
    let q = match r.below(3) {
        0 => format!("Which word fills the gap? \"{sentence}\""),
        1 => format!("Fill in the blank: {sentence}"),
        _ => format!("\"{sentence}\": which word goes in the blank?"),
    };
    choice_sample(w.clone(), &q, choices, right, r)
}

fn gen_is_a_check(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, kind) = r.choose(&lex.kinds);
    let yes = r.below(2) == 0;
    let kind = if yes {
        kind.clone()
    } else {
        loop {
            let k = r.choose(&lex.kind_words);
            if k != w && !lex.is_a(w, k) {
                break k.clone();
            }
        }
    };
    let p = match r.below(3) {
        0 => format!("Is {} {w} a kind of {kind}? Answer yes or no.", article(w)),
        1 => format!(
            "True or false, answering yes or no: every {w} is {} {kind}.",
            article(&kind)
        ),
        _ => format!("Does the word '{w}' name a type of {kind}? Yes or no?"),
    };
    sample(format!("{w}>{kind}"), p, yes_no(yes))
}

fn gen_synonym_check(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, pos, s) = r.choose(&lex.rel.synonyms);
    let yes = r.below(2) == 0;
    let other = if yes {
        s.clone()
    } else {
        loop {
            let d = r.choose(&lex.common[pos]);
            if d != w && !lex.rel.share_a_sense(w, d, *pos) {
                break d.clone();
            }
        }
    };
    let p = match r.below(3) {
        0 => format!("Do '{w}' and '{other}' mean the same thing? Answer yes or no."),
        1 => format!("Are \"{w}\" and \"{other}\" synonyms? Yes or no?"),
        _ => format!("Can '{other}' be used to mean '{w}'? Answer yes or no."),
    };
    sample(format!("{w}>{other}"), p, yes_no(yes))
}

fn gen_antonym_check(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, a) = r.choose(&lex.antonyms);
    let yes = r.below(2) == 0;
    let other = if yes {
        a.clone()
    } else {
        // A word of the same part of speech: a synonym where WordNet has one.
        let syn = lex.rel.synonyms.iter().find(|(x, _, _)| x == w);
        match (syn, r.below(2)) {
            (Some((_, _, s)), 0) => s.clone(),
            _ => loop {
                let pos = lex.common.keys().find(|p| lex.common[*p].contains(w));
                let d = r.choose(&lex.common[pos.unwrap_or(&Pos::Noun)]);
                if d != w && d != a {
                    break d.clone();
                }
            },
        }
    };
    let p = match r.below(3) {
        0 => format!("Are '{w}' and '{other}' opposites? Answer yes or no."),
        1 => format!("Is \"{other}\" the opposite of \"{w}\"? Yes or no?"),
        _ => format!("Do {w} and {other} have opposite meanings? Answer yes or no."),
    };
    sample(format!("{w}>{other}"), p, yes_no(yes))
}

/// A word that is (or is never) `pos`, half the questions each way.
fn pos_check<'a>(r: &mut Rng, list: &'a [(String, bool)]) -> (&'a str, bool) {
    let want = r.below(2) == 0;
    loop {
        let (w, is) = r.choose(list);
        if *is == want {
            return (w, *is);
        }
    }
}

fn gen_can_be_verb(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, is) = pos_check(r, &lex.rel.is_verb);
    let p = match r.below(3) {
        0 => format!("Can '{w}' be used as a verb? Answer yes or no."),
        1 => format!("Is \"{w}\" ever a verb? Yes or no?"),
        _ => format!("Yes or no: the word {w} can be a verb."),
    };
    sample(w.to_string(), p, yes_no(is))
}

fn gen_can_be_noun(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, is) = pos_check(r, &lex.rel.is_noun);
    let p = match r.below(3) {
        0 => format!("Can '{w}' be used as a noun? Answer yes or no."),
        1 => format!("Is \"{w}\" ever a noun? Yes or no?"),
        _ => format!("Yes or no: the word {w} can be a noun."),
    };
    sample(w.to_string(), p, yes_no(is))
}

#[cfg(test)]
mod tests {
    use super::super::{builtin_task, choice_index, wordnet::lexicon, SuiteConfig};
    use super::*;

    #[test]
    fn semantics_tasks_build_with_short_answers() {
        for s in SPECS {
            let t = builtin_task(&s.name, &SuiteConfig::default()).unwrap();
            assert_eq!((t.train.len(), t.test.len()), (240, 60), "{}", s.name);
            for ex in t.train.iter().chain(&t.test) {
                assert!(ex.answer.split_whitespace().count() <= 3, "{ex:?}");
                if s.scoring == Scoring::Exact {
                    assert!(["yes", "no"].contains(&ex.answer.as_str()), "{ex:?}");
                }
            }
        }
    }

    #[test]
    fn relations_are_right() {
        let lex = lexicon().unwrap();
        let rel = &lex.rel;
        let cat = |w: &str| rel.categories.iter().find(|(x, _)| x == w).map(|(_, c)| *c);
        assert_eq!(cat("falcon"), Some(Category::Animal));
        // A dog is also a person ("you lucky dog") and a food (a hot dog).
        assert_eq!(cat("dog"), None);
        assert_eq!(cat("teacher"), Some(Category::Person));
        assert!(rel
            .parts
            .contains(&("face".to_string(), "nose".to_string())));
        assert!(rel.is_verb.contains(&("run".to_string(), true)));
        assert!(rel.is_verb.contains(&("walk".to_string(), true)));
        // "table" is a verb in WordNet ("table a motion") but never tagged as one: not asked.
        assert!(!rel.is_verb.iter().any(|(w, _)| w == "table"));
        assert!(rel.is_verb.contains(&("happy".to_string(), false)));
        // Yes/no questions are balanced; a choice's right answer is the related word.
        let t = builtin_task("synonym_check", &SuiteConfig::default()).unwrap();
        let yes = t.train.iter().filter(|e| e.answer == "yes").count();
        assert!((80..=160).contains(&yes), "{yes} yes of 240");
        let t = builtin_task("hyponym", &SuiteConfig::default()).unwrap();
        for ex in &t.test {
            let right = &ex.choices[choice_index(&ex.answer).unwrap()];
            let kind = lex
                .kinds
                .iter()
                .find(|(w, _)| w == right)
                .map(|(_, k)| k)
                .unwrap();
            assert!(ex.prompt.contains(kind.as_str()), "{ex:?}");
        }
    }
}
