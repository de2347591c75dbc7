//! Helpers for the procedural families' tests: a task by name, and the text a prompt quotes.

use std::collections::BTreeSet;

use super::{builtin_task, Example, SuiteConfig, Task, LATEST_SUITE};

/// The families added with the procedural tasks that these helpers' tests cover.
pub(super) const FAMILIES: [&str; 17] = [
    "strings",
    "counting",
    "sequences",
    "dates",
    "logic",
    "cipher",
    "units",
    "numbers",
    "multiple_choice",
    "money",
    "encoding",
    "phrases",
    "picks",
    "formats",
    "calendar",
    "math",
    "itemlists",
];

/// The newest suite version (an older version's tasks are the same in it).
fn newest() -> SuiteConfig {
    SuiteConfig {
        seed: 7,
        version: LATEST_SUITE,
        ..SuiteConfig::default()
    }
}

/// A task of the newest suite version.
pub(super) fn task(name: &str) -> Task {
    builtin_task(name, &newest()).unwrap()
}

/// Every example of a task of the newest suite version, train then test.
pub(super) fn examples(name: &str) -> Vec<Example> {
    let t = task(name);
    t.train.into_iter().chain(t.test).collect()
}

/// The first text in single or double quotes, if any.
pub(super) fn quoted(s: &str) -> Option<String> {
    let start = s.find(['\'', '"'])?;
    let q = s[start..].chars().next()?;
    let rest = &s[start + 1..];
    let end = rest.find(q)?;
    Some(rest[..end].to_string())
}

/// Every number in a text, in order (digits only: no signs, no decimals).
pub(super) fn numbers_in(s: &str) -> Vec<i64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn procedural_families_are_wide_and_their_answers_short() {
    let suite = super::builtin_suite(&newest()).unwrap();
    let ours: Vec<&Task> = suite
        .iter()
        .filter(|t| FAMILIES.contains(&t.family.as_str()))
        .collect();
    assert!(ours.len() >= 60, "{} procedural tasks", ours.len());
    for f in FAMILIES {
        let n = ours.iter().filter(|t| t.family == f).count();
        assert!(n >= 6, "family {f} has {n} tasks");
    }
    for t in &ours {
        let answers: BTreeSet<&str> = t.train.iter().map(|e| e.answer.as_str()).collect();
        assert!(answers.len() >= 2, "{}: one answer for everything", t.name);
        for ex in t.train.iter().chain(&t.test) {
            assert!(
                ex.answer.split_whitespace().count() <= 6 && ex.answer.len() <= 24,
                "{}: long answer {:?}",
                t.name,
                ex.answer
            );
            assert!(ex.prompt.is_ascii(), "{}: {:?}", t.name, ex.prompt);
        }
    }
}

/// Yes/no and true/false tasks are balanced, so that always answering one way is not enough.
#[test]
fn binary_answers_are_balanced() {
    let suite = super::builtin_suite(&newest()).unwrap();
    for t in suite
        .iter()
        .filter(|t| FAMILIES.contains(&t.family.as_str()))
    {
        let all: Vec<&str> = t.train.iter().map(|e| e.answer.as_str()).collect();
        for (a, b) in [("yes", "no"), ("true", "false")] {
            if all.iter().all(|x| *x == a || *x == b) {
                let n = all.iter().filter(|x| **x == a).count();
                assert!(
                    (80..=160).contains(&n),
                    "{}: {n} of {} are {a}",
                    t.name,
                    all.len()
                );
            }
        }
    }
}
