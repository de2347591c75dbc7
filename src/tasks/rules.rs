//! The `rule_*` families (suite version 4): tasks whose rule shows only in their examples.
//!
//! Every other task says what it wants ("What is 37 + 48?"), so a generator can answer
//! an unseen one from the request's wording and what it learnt of similar wording; held out,
//! that is what it did (README, k-fold: another task's examples do as well as the task's
//! own). Here the prompt is only the input ("Input: 37"), and the task's parameter (add 4,
//! wrap in brackets, answer "on"/"off" for even/odd, ...) is visible only in the answers of
//! its examples. A family is one rule with a task per parameter value, so that held out
//! (`holdout_every` takes tasks inside each family) a task is an unseen value of a rule the
//! generator was trained on: an adapter can only get it right by reading the examples.
//!
//! Families are named `rule_<rule>` and tasks `rule_<rule>_<value>` (`rule_add_4`,
//! `rule_wrap_square`); the prompt is the input alone or with a fixed, rule-free phrasing.
//!
//! Version 6 adds one family of many values, `rule_ending` (a word with one of 40 made-up
//! endings): a generator trained on 7 values of a rule learns those 7 and reads none it has
//! not seen (README, "More values of one rule"); this family asks whether 34 values teach
//! it to read a new one. Version 7 adds `rule_coda`, the same rule with 400 made-up
//! three-letter endings (consonant, vowel, consonant): with the end-to-end objective a task
//! costs no collection, so this asks whether hundreds of values of one rule, each seen a few
//! times, teach what 34 seen many times did not.

use std::borrow::Cow;

use super::draw::{sample, Sample};
use super::strings::{distinct_words, pick_wide_word};
use super::{Draw, Scoring, Spec};
use crate::format::rng::Rng;

/// One rule: a task per parameter value.
struct Rule {
    family: &'static str,
    /// The suite version that added it.
    since: u32,
    /// Each task's name suffix, in parameter order: for a numeric rule the number itself,
    /// so that a task's name and what it does cannot drift apart.
    values: &'static [&'static str],
    /// An input and its answer under one value (numeric rules read [`Value::number`], the
    /// others index their table with [`Value::index`]).
    apply: fn(&mut Rng, Value) -> (String, String),
}

/// One parameter value of a rule: its place in `values` and its name.
#[derive(Clone, Copy)]
struct Value {
    index: usize,
    name: &'static str,
}

impl Value {
    /// The value of a numeric rule (`rule_add_4`: 4).
    fn number(self) -> i64 {
        self.name
            .parse()
            .unwrap_or_else(|_| panic!("rule value {:?} is not a number", self.name))
    }

    /// The value as a count or position (`rule_word_3`: 3).
    fn count(self) -> usize {
        self.number() as usize
    }
}

const RULES: &[Rule] = &[
    Rule {
        since: 4,
        family: "rule_add",
        values: &[
            "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13",
        ],
        apply: |r, v| {
            let n = r.range(1, 999);
            (n.to_string(), (n + v.number()).to_string())
        },
    },
    Rule {
        since: 4,
        family: "rule_subtract",
        values: &["2", "3", "4", "5", "6", "7", "8", "9"],
        apply: |r, v| {
            let n = r.range(20, 999);
            (n.to_string(), (n - v.number()).to_string())
        },
    },
    Rule {
        since: 4,
        family: "rule_multiply",
        values: &["2", "3", "4", "5", "6", "7", "8", "9"],
        apply: |r, v| {
            let n = r.range(2, 499);
            (n.to_string(), (n * v.number()).to_string())
        },
    },
    Rule {
        since: 4,
        family: "rule_remainder",
        values: &["3", "4", "5", "6", "7", "8", "9"],
        apply: |r, v| {
            let n = r.range(10, 999);
            (n.to_string(), (n % v.number()).to_string())
        },
    },
    Rule {
        since: 4,
        family: "rule_above",
        values: &["200", "300", "400", "500", "600", "700", "800"],
        apply: |r, v| {
            // Half the answers each way, whatever the threshold.
            let t = v.number();
            let yes = r.below(2) == 0;
            let n = if yes {
                r.range(t + 1, 999)
            } else {
                r.range(1, t)
            };
            (n.to_string(), if yes { "yes" } else { "no" }.to_string())
        },
    },
    Rule {
        since: 4,
        family: "rule_parity",
        values: &["yes_no", "true_false", "even_odd", "1_0", "on_off", "a_b"],
        apply: |r, v| {
            const LABELS: [(&str, &str); 6] = [
                ("yes", "no"),
                ("true", "false"),
                ("even", "odd"),
                ("1", "0"),
                ("on", "off"),
                ("A", "B"),
            ];
            let n = r.range(1, 999);
            let (even, odd) = LABELS[v.index];
            (
                n.to_string(),
                if n % 2 == 0 { even } else { odd }.to_string(),
            )
        },
    },
    Rule {
        since: 4,
        family: "rule_word",
        values: &["1", "2", "3", "4", "5"],
        apply: |r, v| {
            let ws = distinct_words(r, 5);
            (ws.join(" "), ws[v.count() - 1].to_string())
        },
    },
    Rule {
        since: 4,
        family: "rule_letter",
        values: &["1", "2", "3", "4"],
        apply: |r, v| {
            let k = v.count();
            let w = longer_than(r, k);
            (w.to_string(), w[k - 1..k].to_string())
        },
    },
    Rule {
        since: 4,
        family: "rule_prefix",
        values: &["2", "3", "4", "5"],
        apply: |r, v| {
            let k = v.count();
            let w = longer_than(r, k);
            (w.to_string(), w[..k].to_string())
        },
    },
    Rule {
        since: 4,
        family: "rule_suffix",
        values: &["2", "3", "4", "5"],
        apply: |r, v| {
            let k = v.count();
            let w = longer_than(r, k);
            (w.to_string(), w[w.len() - k..].to_string())
        },
    },
    Rule {
        since: 4,
        family: "rule_wrap",
        values: &[
            "paren", "square", "angle", "curly", "hash", "plus", "tilde", "bar",
        ],
        apply: |r, v| {
            // No quotes or stars: scoring's normalisation strips those.
            const PAIRS: [(&str, &str); 8] = [
                ("(", ")"),
                ("[", "]"),
                ("<", ">"),
                ("{", "}"),
                ("#", "#"),
                ("+", "+"),
                ("~", "~"),
                ("|", "|"),
            ];
            let w = pick_wide_word(r);
            let (open, close) = PAIRS[v.index];
            (w.to_string(), format!("{open}{w}{close}"))
        },
    },
    Rule {
        since: 4,
        family: "rule_join",
        values: &[
            "dash",
            "plus",
            "slash",
            "underscore",
            "bar",
            "tilde",
            "equals",
            "and",
        ],
        apply: |r, v| {
            const SEPARATORS: [&str; 8] = ["-", "+", "/", "_", "|", "~", "=", "&"];
            // Short words: three and two separators stay a short answer.
            let ws = loop {
                let ws = distinct_words(r, 3);
                if ws.iter().all(|w| w.len() <= 6) {
                    break ws;
                }
            };
            (ws.join(" "), ws.join(SEPARATORS[v.index]))
        },
    },
    Rule {
        since: 4,
        family: "rule_append",
        values: &SUFFIXES,
        apply: appended,
    },
    Rule {
        since: 6,
        family: "rule_ending",
        values: &ENDINGS,
        apply: appended,
    },
    Rule {
        since: 7,
        family: "rule_coda",
        values: &CODAS,
        apply: appended,
    },
];

/// A word and the word with the value's name after it (`append`, `ending` and `coda`).
fn appended(r: &mut Rng, v: Value) -> (String, String) {
    let w = pick_wide_word(r);
    (w.to_string(), format!("{w}{}", v.name))
}

/// What the `ending` rule's tasks add to a word (their names): 40 made-up endings, 20 of
/// two letters and 20 of three, none of them `append`'s.
const ENDINGS: [&str; 40] = [
    "ab", "ek", "ot", "ul", "im", "az", "ep", "og", "uv", "ix", "ar", "en", "os", "ud", "if", "ak",
    "em", "ow", "un", "ib", "ata", "elo", "iru", "oka", "umi", "ane", "esh", "ilk", "orp", "ust",
    "arb", "eng", "ind", "olt", "umb", "ave", "eta", "ito", "ova", "uze",
];

/// What the `coda` rule's tasks add to a word: every consonant, vowel, consonant ending of
/// these letters, the final consonant varying fastest. Why 8 finals: `holdout_every(.., 7,
/// ..)` takes every 7th task of a family, and 8 is prime to 7, so the held-out codas have
/// every final, vowel and first letter (a count sharing a factor with 7 would hold out one
/// final only).
static CODAS: [&str; CODA_COUNT] = coda_names(&CODA_BYTES);
const CODA_COUNT: usize = CODA_FIRST.len() * CODA_VOWEL.len() * CODA_LAST.len();
const CODA_FIRST: [u8; 10] = *b"bdfgklmnpr";
const CODA_VOWEL: [u8; 5] = *b"aeiou";
const CODA_LAST: [u8; 8] = *b"bdgkmptx";
static CODA_BYTES: [[u8; 3]; CODA_COUNT] = {
    let mut out = [[0; 3]; CODA_COUNT];
    let (v, l) = (CODA_VOWEL.len(), CODA_LAST.len());
    let mut i = 0;
    while i < out.len() {
        out[i] = [
            CODA_FIRST[i / (v * l)],
            CODA_VOWEL[i / l % v],
            CODA_LAST[i % l],
        ];
        i += 1;
    }
    out
};

/// The codas' bytes as names (a `const fn`, so that `CODAS` is a plain static slice like
/// every other rule's values).
const fn coda_names<const N: usize>(bytes: &'static [[u8; 3]; N]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = match std::str::from_utf8(&bytes[i]) {
            Ok(s) => s,
            Err(_) => panic!("codas are ASCII"),
        };
        i += 1;
    }
    out
}

/// What the `append` rule's tasks add to a word (their names).
const SUFFIXES: [&str; 8] = ["zy", "ox", "ette", "ish", "ly", "ful", "ster", "oo"];

/// A word of the wide pool with more than `n` letters.
fn longer_than(r: &mut Rng, n: usize) -> &'static str {
    loop {
        let w = pick_wide_word(r);
        if w.len() > n {
            return w;
        }
    }
}

/// The input as the user's whole message, or with a phrasing that names no rule.
fn phrased(r: &mut Rng, input: &str) -> String {
    match r.below(4) {
        0 => input.to_string(),
        1 => format!("Input: {input}"),
        2 => format!("Apply the rule to: {input}"),
        _ => format!("{input} ->"),
    }
}

/// A question of rule `rule`'s `value`-th task (what [`Draw::Rule`] calls).
pub(super) fn draw(r: &mut Rng, rule: usize, value: usize) -> Sample {
    let rule = &RULES[rule];
    let value = Value {
        index: value,
        name: rule.values[value],
    };
    let (input, answer) = (rule.apply)(r, value);
    let prompt = phrased(r, &input);
    sample(input, prompt, answer)
}

/// Every task of the rule families of suite `version`, family by family.
pub(super) fn specs(version: u32) -> impl Iterator<Item = Spec> {
    let rules = RULES.iter().enumerate();
    rules
        .filter(move |(_, rule)| rule.since <= version)
        .flat_map(|(i, rule)| {
            rule.values
                .iter()
                .enumerate()
                .map(move |(value, suffix)| Spec {
                    name: Cow::Owned(format!("{}_{suffix}", rule.family)),
                    family: rule.family,
                    scoring: Scoring::Exact,
                    draw: Draw::Rule(i, value),
                })
        })
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::task;
    use super::super::{score_strict, Scoring};

    /// The answer follows from the input and the task's parameter alone, and the prompt
    /// holds the input but no word of the rule.
    #[test]
    fn answers_follow_the_rule_and_prompts_do_not_name_it() {
        let check = |name: &str, rule: &dyn Fn(&str) -> String| {
            let t = task(name);
            for ex in t.train.iter().chain(&t.test) {
                let input = ["Input: ", "Apply the rule to: "]
                    .iter()
                    .find_map(|p| ex.prompt.strip_prefix(p))
                    .or_else(|| ex.prompt.strip_suffix(" ->"))
                    .unwrap_or(&ex.prompt);
                assert_eq!(ex.answer, rule(input), "{name}: {ex:?}");
            }
        };
        let n = |s: &str| s.parse::<i64>().unwrap();
        check("rule_add_4", &|s| (n(s) + 4).to_string());
        check("rule_subtract_9", &|s| (n(s) - 9).to_string());
        check("rule_multiply_7", &|s| (n(s) * 7).to_string());
        check("rule_remainder_5", &|s| (n(s) % 5).to_string());
        check("rule_above_300", &|s| {
            if n(s) > 300 { "yes" } else { "no" }.into()
        });
        check("rule_parity_on_off", &|s| {
            if n(s) % 2 == 0 { "on" } else { "off" }.into()
        });
        check("rule_word_3", &|s| s.split(' ').nth(2).unwrap().into());
        check("rule_letter_2", &|s| s[1..2].into());
        check("rule_prefix_4", &|s| s[..4].into());
        check("rule_suffix_3", &|s| s[s.len() - 3..].into());
        check("rule_wrap_curly", &|s| format!("{{{s}}}"));
        check("rule_join_slash", &|s| s.replace(' ', "/"));
        check("rule_append_ish", &|s| format!("{s}ish"));
        check("rule_ending_orp", &|s| format!("{s}orp"));
        check("rule_coda_bab", &|s| format!("{s}bab"));
        check("rule_coda_rux", &|s| format!("{s}rux"));
    }

    /// Scoring's normalisation keeps what tells one rule task from another (that every
    /// rule task builds and scores its own answers is `tasks::tests`, over the whole suite).
    #[test]
    fn a_wrapped_word_is_not_the_bare_word() {
        let wrapped = &task("rule_wrap_hash").test[0];
        let bare = wrapped.answer.trim_matches('#');
        assert!(!score_strict(Scoring::Exact, wrapped, bare), "{wrapped:?}");
    }

    /// The codas are 400 distinct endings that no other rule adds, and the held-out split
    /// takes codas of every final, vowel and first letter (see [`super::CODAS`]).
    #[test]
    fn codas_are_new_endings_and_every_kind_is_held_out() {
        use super::super::{builtin_suite, holdout_every, SuiteConfig};
        use super::{CODAS, ENDINGS, SUFFIXES};
        use std::collections::BTreeSet;
        let codas: BTreeSet<&str> = CODAS.iter().copied().collect();
        assert_eq!((codas.len(), CODAS[0], CODAS[399]), (400, "bab", "rux"));
        assert!(codas.iter().all(|c| c.len() == 3));
        for other in ENDINGS.iter().chain(&SUFFIXES) {
            assert!(!codas.contains(other), "{other}");
        }
        let cfg = SuiteConfig {
            seed: 7,
            train: 4,
            test: 2,
            version: 7,
        };
        let suite = builtin_suite(&cfg).unwrap();
        let family: Vec<_> = suite
            .into_iter()
            .filter(|t| t.family == "rule_coda")
            .collect();
        let held = holdout_every(&family, 7, 0).unwrap();
        assert_eq!(held.len(), 57);
        for place in 0..3 {
            let kinds: BTreeSet<u8> = held
                .iter()
                .map(|n| n.strip_prefix("rule_coda_").unwrap().as_bytes()[place])
                .collect();
            assert_eq!(kinds.len(), [10, 5, 8][place], "letter {place}: {kinds:?}");
        }
    }

    /// Thresholds and labels that could make one answer dominate are drawn half each way.
    #[test]
    fn label_answers_are_balanced() {
        for name in ["rule_above_200", "rule_above_800", "rule_parity_a_b"] {
            let t = task(name);
            let first = t.train[0].answer.clone();
            let same = t.train.iter().filter(|e| e.answer == first).count();
            assert!((80..=160).contains(&same), "{name}: {same} of 240");
        }
    }
}
