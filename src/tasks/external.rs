//! The external evaluation set: six tasks from BSD quiz files that the suite does not read,
//! written as task files by `tasks --export-external DIR` and never trained on. They stand
//! in for a tenant's own task, which no generator has seen, in `eval --tasks DIR/*.jsonl`:
//!
//! | task | quiz file | question -> answer |
//! |---|---|---|
//! | `collective_noun` | `collectives` | a group of crows -> `murder` |
//! | `young_animal` | `babies` | a young goose -> `gosling` |
//! | `female_form` | `sexes` | abbot -> `abbess` |
//! | `opposite_word` | `posneg` | inside -> `outside` |
//! | `area_code_state` | `areas` | area code 201 -> `NJ` |
//! | `president_after` | `pres` | after John Adams -> `Thomas Jefferson` |
//!
//! A quiz line is `question:answer[:...]` in the quiz game's pattern syntax (read by
//! [`super::facts`]); every alternative of the question field is its own question, the
//! answer is the answer field's first spelling, and a question asked twice with different
//! answers is dropped. Each question gets one of two or three phrasings (seeded), and the
//! questions are shuffled (seeded, per task) into a training split of a third, at most 32
//! (what the generator reads and the no-harm check scores), and a test split of the rest,
//! so that no question is in both.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};

use super::facts::{alternatives, canonical, tidy};
use super::{Example, Scoring, Task};
use crate::assets::{Assets, BSD_QUIZ};
use crate::format::rng::Rng;

/// The family every external task is in (as for tasks read from files).
const FAMILY: &str = super::taskfile::EXTERNAL_FAMILY;

/// Training examples at most; a third of the questions when there are fewer than 96.
const MAX_TRAIN: usize = 32;

/// One task: its name, its quiz file, how a line becomes (question key, answer) pairs, and
/// the phrasings of a key.
struct Spec {
    name: &'static str,
    file: &'static str,
    pairs: fn(&[&str]) -> Vec<(String, String)>,
    phrasings: fn(&str) -> Vec<String>,
}

const SPECS: &[Spec] = &[
    Spec {
        name: "collective_noun",
        file: "collectives",
        pairs: |f| each_question(f[0], canonical(f[1])),
        phrasings: |x| {
            vec![
                format!("What is a group of {x} called?"),
                format!("Give the collective noun for {x}."),
                format!("A group of {x} is called a what?"),
            ]
        },
    },
    Spec {
        name: "young_animal",
        file: "babies",
        pairs: |f| each_question(f[1], canonical(f[0])),
        phrasings: |x| {
            vec![
                format!("What is a young {x} called?"),
                format!("What do you call a baby {x}?"),
                format!("A baby {x} is called a what?"),
            ]
        },
    },
    Spec {
        name: "female_form",
        file: "sexes",
        pairs: |f| each_question(f[0], canonical(f[1])),
        phrasings: |x| {
            vec![
                format!("What is the female counterpart of \"{x}\"?"),
                format!("Give the female form of the word {x}."),
            ]
        },
    },
    Spec {
        name: "opposite_word",
        file: "posneg",
        pairs: |f| each_question(f[0], canonical(f[1])),
        phrasings: |x| {
            vec![
                format!("What is the opposite of \"{x}\"?"),
                format!("Give the opposite of {x}."),
            ]
        },
    },
    Spec {
        name: "area_code_state",
        file: "areas",
        // The state field holds the two-letter code as one alternative, when it has one.
        pairs: |f| {
            let code = alternatives(f[1])
                .into_iter()
                .find(|a| a.len() == 2 && a.chars().all(|c| c.is_ascii_uppercase()));
            match code {
                Some(code) if f[0].chars().all(|c| c.is_ascii_digit()) => {
                    vec![(f[0].to_string(), code)]
                }
                _ => Vec::new(),
            }
        },
        phrasings: |x| {
            vec![
                format!("Telephone area code {x} belongs to which US state or Canadian province? Answer with its two-letter code."),
                format!("Give the two-letter state or province code for area code {x}."),
            ]
        },
    },
    Spec {
        name: "president_after",
        file: "pres",
        pairs: |f| match f.get(3) {
            Some(next) => each_question(f[0], canonical(next)),
            None => Vec::new(),
        },
        phrasings: |x| {
            vec![
                format!("Who was the US president after {x}?"),
                format!("Which US president succeeded {x}?"),
            ]
        },
    },
];

/// Every tidy alternative of a question pattern, each with `answer` (if tidy).
fn each_question(pattern: &str, answer: String) -> Vec<(String, String)> {
    if !tidy(&answer) {
        return Vec::new();
    }
    alternatives(pattern)
        .into_iter()
        .filter(|q| tidy(q) && q.len() >= 2)
        .map(|q| (q, answer.clone()))
        .collect()
}

/// The quiz file's lines, with `\`-continued lines joined.
fn lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
    }
    out
}

/// The six tasks (see the module documentation), the quiz files fetched on first use.
pub fn external_tasks(seed: u64) -> Result<Vec<Task>> {
    let assets = Assets::new(crate::assets::default_root());
    let quiz = assets.ensure_deb(&BSD_QUIZ)?;
    SPECS.iter().map(|s| build(s, &quiz, seed)).collect()
}

fn build(spec: &Spec, quiz: &Path, seed: u64) -> Result<Task> {
    let path = quiz.join(spec.file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // key -> answer; None once a key has two different answers.
    let mut answers: BTreeMap<String, Option<String>> = BTreeMap::new();
    for line in lines(&text) {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 2 {
            continue;
        }
        for (key, answer) in (spec.pairs)(&fields) {
            let slot = answers.entry(key).or_insert_with(|| Some(answer.clone()));
            if slot.as_deref() != Some(answer.as_str()) {
                *slot = None;
            }
        }
    }
    let mut pairs: Vec<(String, String)> = answers
        .into_iter()
        .filter_map(|(k, a)| Some((k, a?)))
        .collect();
    ensure!(
        pairs.len() >= 12,
        "{}: only {} questions; is the file complete?",
        path.display(),
        pairs.len()
    );
    let mut rng = Rng::derive(seed, spec.name);
    rng.shuffle(&mut pairs);
    let examples: Vec<Example> = pairs
        .iter()
        .map(|(key, answer)| {
            let phrasings = (spec.phrasings)(key);
            Example {
                prompt: rng.choose(&phrasings).clone(),
                answer: answer.clone(),
                choices: Vec::new(),
            }
        })
        .collect();
    let n_train = (examples.len() / 3).min(MAX_TRAIN);
    let task = Task {
        name: spec.name.to_string(),
        family: FAMILY.to_string(),
        scoring: Scoring::Exact,
        train: examples[..n_train].to_vec(),
        test: examples[n_train..].to_vec(),
    };
    task.validate()?;
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiz_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn continued_lines_are_joined() {
        assert_eq!(
            lines("a:b\\\nc:d\n\ne:f\n"),
            vec!["a:bc:d".to_string(), "e:f".to_string()]
        );
    }

    #[test]
    fn each_alternative_is_a_question_and_ambiguous_ones_are_dropped() {
        let babies = (0..14)
            .map(|i| {
                let c = (b'a' + i) as char;
                format!("young{c}:animal{c}x|animal{c}y\n")
            })
            .collect::<String>()
            + "cub:lion|bear\nkit:bear\n";
        let dir = quiz_dir(&[("babies", &babies)]);
        let spec = SPECS.iter().find(|s| s.name == "young_animal").unwrap();
        let task = build(spec, dir.path(), 1).unwrap();
        let all: Vec<&Example> = task.train.iter().chain(&task.test).collect();
        // 14 lines of two animals, lion; bear has two answers and is left out.
        assert_eq!(all.len(), 29);
        assert!(all
            .iter()
            .any(|e| e.prompt.contains("lion") && e.answer == "cub"));
        assert!(!all.iter().any(|e| e.prompt.contains("bear")));
        assert_eq!(task.train.len(), 9);
        // No question in both splits, and the split is the same for the same seed.
        for t in &task.test {
            assert!(!task.train.iter().any(|e| e.prompt == t.prompt));
        }
        assert_eq!(build(spec, dir.path(), 1).unwrap(), task);
    }

    #[test]
    fn area_codes_answer_with_the_two_letter_code() {
        let areas = (0..13)
            .map(|i| format!("2{i:02}:somewhere|S{}:city\n", (b'A' + i as u8) as char))
            .collect::<String>()
            + "202:washington d c|DC:\n999:nowhere:\n";
        let dir = quiz_dir(&[("areas", &areas)]);
        let spec = SPECS.iter().find(|s| s.name == "area_code_state").unwrap();
        let task = build(spec, dir.path(), 3).unwrap();
        let all: Vec<&Example> = task.train.iter().chain(&task.test).collect();
        assert_eq!(all.len(), 12, "202 has two answers, 999 none");
        assert!(all
            .iter()
            .all(|e| e.answer.len() == 2 && e.prompt.contains("area code 2")));
    }
}
