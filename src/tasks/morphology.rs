//! The `morphology` family: word forms from WordNet 3.0 ([`super::wordnet`]): verb tenses,
//! comparison of adjectives, adverbs, singulars and derivationally related words.

use super::draw::*;
use super::lexical::four_choices;
use super::wordnet::{Lexicon, Pos, VerbForms};
use super::{spec, Draw::Lexical, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "past_tense",
        "morphology",
        Scoring::Exact,
        Lexical(gen_past_tense),
    ),
    spec(
        "past_participle",
        "morphology",
        Scoring::Exact,
        Lexical(gen_past_participle),
    ),
    spec(
        "ing_form",
        "morphology",
        Scoring::Exact,
        Lexical(gen_ing_form),
    ),
    spec(
        "third_person",
        "morphology",
        Scoring::Exact,
        Lexical(gen_third_person),
    ),
    spec(
        "base_verb",
        "morphology",
        Scoring::Exact,
        Lexical(gen_base_verb),
    ),
    spec(
        "comparative",
        "morphology",
        Scoring::Exact,
        Lexical(gen_comparative),
    ),
    spec(
        "superlative",
        "morphology",
        Scoring::Exact,
        Lexical(gen_superlative),
    ),
    spec(
        "adverb_form",
        "morphology",
        Scoring::Exact,
        Lexical(gen_adverb_form),
    ),
    spec(
        "adjective_of_adverb",
        "morphology",
        Scoring::Exact,
        Lexical(gen_adjective_of_adverb),
    ),
    spec(
        "singular",
        "morphology",
        Scoring::Exact,
        Lexical(gen_singular),
    ),
    spec(
        "verb_of_noun",
        "morphology",
        Scoring::Exact,
        Lexical(gen_verb_of_noun),
    ),
    spec(
        "noun_of_verb",
        "morphology",
        Scoring::Choice,
        Lexical(gen_noun_of_verb),
    ),
    spec(
        "noun_of_adjective",
        "morphology",
        Scoring::Choice,
        Lexical(gen_noun_of_adjective),
    ),
    spec(
        "adjective_of_noun",
        "morphology",
        Scoring::Choice,
        Lexical(gen_adjective_of_noun),
    ),
    spec(
        "agent_noun",
        "morphology",
        Scoring::Choice,
        Lexical(gen_agent_noun),
    ),
];

/// A verb with the form `get` gives, drawn until it has one.
fn verb_with<'a>(
    r: &mut Rng,
    lex: &'a Lexicon,
    get: impl Fn(&'a VerbForms) -> Option<&'a String>,
) -> (&'a str, &'a str) {
    loop {
        let v = r.choose(&lex.rel.verbs);
        if let Some(f) = get(v) {
            return (&v.verb, f);
        }
    }
}

fn gen_past_tense(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (v, past) = verb_with(r, lex, |v| v.past.as_ref());
    let p = match r.below(3) {
        0 => format!("What is the past tense of '{v}'?"),
        1 => format!("Give the simple past form of the verb \"{v}\"."),
        _ => format!("Today I {v}; yesterday I ...? Give the verb."),
    };
    sample(v.to_string(), p, past)
}

fn gen_past_participle(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (v, pp) = verb_with(r, lex, |v| v.participle.as_ref());
    let p = match r.below(3) {
        0 => format!("What is the past participle of '{v}'?"),
        1 => format!("Complete with the right form of \"{v}\": I have ___."),
        _ => format!("Give the past participle of the verb {v}."),
    };
    sample(v.to_string(), p, pp)
}

fn gen_ing_form(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (v, ing) = verb_with(r, lex, |v| v.ing.as_ref());
    let p = match r.below(3) {
        0 => format!("What is the -ing form of '{v}'?"),
        1 => format!("Write the present participle of the verb \"{v}\"."),
        _ => format!("Add -ing to '{v}' with the right spelling."),
    };
    sample(v.to_string(), p, ing)
}

fn gen_third_person(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (v, s) = verb_with(r, lex, |v| Some(&v.third));
    let p = match r.below(3) {
        0 => format!("What is the third-person singular present of '{v}'?"),
        1 => format!("Complete with the right form of \"{v}\": she ___ every day."),
        _ => format!("How do you write '{v}' after 'he' in the present tense?"),
    };
    sample(v.to_string(), p, s)
}

fn gen_base_verb(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (past, v) = r.choose(&lex.rel.past_bases);
    let p = match r.below(3) {
        0 => format!("'{past}' is the past tense of which verb?"),
        1 => format!("What is the base form of the verb \"{past}\"?"),
        _ => format!("Give the infinitive of '{past}' (without 'to')."),
    };
    sample(past.clone(), p, v)
}

fn gen_comparative(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (a, comp, _) = r.choose(&lex.rel.comparisons);
    let p = match r.below(3) {
        0 => format!("What is the comparative of '{a}'?"),
        1 => format!("Complete: this one is ___ than that one (\"{a}\")."),
        _ => format!("Give the comparative form of the adjective {a}."),
    };
    sample(a.clone(), p, comp)
}

fn gen_superlative(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (a, _, sup) = r.choose(&lex.rel.comparisons);
    let p = match r.below(3) {
        0 => format!("What is the superlative of '{a}'?"),
        1 => format!("Complete: it is the ___ of them all (\"{a}\")."),
        _ => format!("Give the superlative form of the adjective {a}."),
    };
    sample(a.clone(), p, sup)
}

fn gen_adverb_form(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (a, adv) = r.choose(&lex.rel.adverbs);
    let p = match r.below(3) {
        0 => format!("What is the adverb form of '{a}'?"),
        1 => format!("Turn the adjective \"{a}\" into an adverb."),
        _ => format!("Which adverb comes from the adjective {a}?"),
    };
    sample(a.clone(), p, adv)
}

fn gen_adjective_of_adverb(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (a, adv) = r.choose(&lex.rel.adverbs);
    let p = match r.below(3) {
        0 => format!("Which adjective does the adverb '{adv}' come from?"),
        1 => format!("What is the adjective form of \"{adv}\"?"),
        _ => format!("Give the adjective behind the adverb {adv}."),
    };
    sample(adv.clone(), p, a)
}

fn gen_singular(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (w, pl) = r.choose(&lex.plurals);
    let p = match r.below(3) {
        0 => format!("What is the singular of '{pl}'?"),
        1 => format!("Write \"{pl}\" in the singular."),
        _ => format!("Two {pl}, one what?"),
    };
    sample(pl.clone(), p, w)
}

fn gen_verb_of_noun(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (n, v) = r.choose(&lex.rel.noun_verbs);
    let p = match r.below(3) {
        0 => format!("What is the verb form of '{n}'?"),
        1 => format!("Which verb is the noun \"{n}\" derived from or related to?"),
        _ => format!("Give the verb that goes with the noun {n}."),
    };
    sample(n.clone(), p, v)
}

fn gen_noun_of_verb(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (v, n) = r.choose(&lex.rel.verb_nouns);
    let pool = &lex.common[&Pos::Noun];
    let (choices, right) = four_choices(r, n, pool, |d| !lex.rel.related(v, d));
    let q = match r.below(3) {
        0 => format!("Which noun is formed from the verb '{v}'?"),
        1 => format!("Which word is the noun form of \"{v}\"?"),
        _ => format!("Pick the noun related to the verb {v}."),
    };
    choice_sample(v.clone(), &q, choices, right, r)
}

fn gen_noun_of_adjective(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (a, n) = r.choose(&lex.rel.adjective_nouns);
    let pool = &lex.common[&Pos::Noun];
    let (choices, right) = four_choices(r, n, pool, |d| !lex.rel.related(a, d));
    let q = match r.below(3) {
        0 => format!("Which noun is formed from the adjective '{a}'?"),
        1 => format!("Which word is the noun form of \"{a}\"?"),
        _ => format!("Pick the noun related to the adjective {a}."),
    };
    choice_sample(a.clone(), &q, choices, right, r)
}

fn gen_adjective_of_noun(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (n, a) = r.choose(&lex.rel.noun_adjectives);
    let pool = &lex.common[&Pos::Adjective];
    let (choices, right) = four_choices(r, a, pool, |d| !lex.rel.related(n, d));
    let q = match r.below(3) {
        0 => format!("Which adjective is formed from the noun '{n}'?"),
        1 => format!("Which word is the adjective form of \"{n}\"?"),
        _ => format!("Pick the adjective related to the noun {n}."),
    };
    choice_sample(n.clone(), &q, choices, right, r)
}

fn gen_agent_noun(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (v, n) = r.choose(&lex.rel.agents);
    let (choices, right) = four_choices(r, n, &lex.rel.people, |d| !lex.rel.related(v, d));
    let q = match r.below(3) {
        0 => format!("Which word names a person linked to the verb '{v}'?"),
        1 => format!("Who is it that does this: \"{v}\"? Pick the word."),
        _ => format!("Pick the person noun that comes from the verb {v}."),
    };
    choice_sample(v.clone(), &q, choices, right, r)
}

#[cfg(test)]
mod tests {
    use super::super::{builtin_task, wordnet::lexicon, SuiteConfig};
    use super::*;

    #[test]
    fn morphology_tasks_build_with_short_answers() {
        for s in SPECS {
            let t = builtin_task(&s.name, &SuiteConfig::default()).unwrap();
            assert_eq!((t.train.len(), t.test.len()), (240, 60), "{}", s.name);
            for ex in t.train.iter().chain(&t.test) {
                assert!(ex.answer.split_whitespace().count() <= 2, "{ex:?}");
            }
        }
    }

    #[test]
    fn word_forms_are_right() {
        let rel = &lexicon().unwrap().rel;
        let verb = |v: &str| {
            let f = rel.verbs.iter().find(|f| f.verb == v).unwrap();
            (
                f.past.as_deref(),
                f.participle.as_deref(),
                f.ing.as_deref(),
                f.third.as_str(),
            )
        };
        assert_eq!(
            verb("eat"),
            (Some("ate"), Some("eaten"), Some("eating"), "eats")
        );
        assert_eq!(
            verb("write"),
            (Some("wrote"), Some("written"), Some("writing"), "writes")
        );
        assert_eq!(
            verb("sing"),
            (Some("sang"), Some("sung"), Some("singing"), "sings")
        );
        assert_eq!(
            verb("run"),
            (Some("ran"), Some("run"), Some("running"), "runs")
        );
        assert_eq!(
            verb("stop"),
            (Some("stopped"), Some("stopped"), Some("stopping"), "stops")
        );
        assert_eq!(
            verb("carry"),
            (
                Some("carried"),
                Some("carried"),
                Some("carrying"),
                "carries"
            )
        );
        assert_eq!(
            verb("have"),
            (Some("had"), Some("had"), Some("having"), "has")
        );
        assert_eq!(verb("watch").3, "watches");
        let compare = |a: &str| {
            let c = rel.comparisons.iter().find(|c| c.0 == a);
            c.map(|(_, c, s)| (c.as_str(), s.as_str()))
        };
        assert_eq!(compare("good"), Some(("better", "best")));
        assert_eq!(compare("big"), Some(("bigger", "biggest")));
        assert_eq!(compare("happy"), Some(("happier", "happiest")));
        assert_eq!(
            compare("beautiful"),
            Some(("more beautiful", "most beautiful"))
        );
        assert_eq!(compare("nine"), None);
        let pair = |list: &[(String, String)], a: &str| {
            list.iter().find(|(x, _)| x == a).map(|(_, y)| y.clone())
        };
        assert_eq!(pair(&rel.adverbs, "careful").as_deref(), Some("carefully"));
        assert_eq!(pair(&rel.noun_verbs, "decision").as_deref(), Some("decide"));
        assert_eq!(pair(&rel.past_bases, "wrote").as_deref(), Some("write"));
        assert_eq!(pair(&rel.agents, "teach").as_deref(), Some("teacher"));
    }
}
