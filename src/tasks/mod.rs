//! The task suite: small question-answering tasks whose LoRA fine-tunes are the generator's
//! training data (DnD paper, section 5: one LoRA trajectory per dataset), and the tasks
//! held-out evaluation scores adapters on.
//!
//! Every built-in task is generated from a seeded random stream, procedurally or by
//! drawing from pinned data ([`wordnet`]: WordNet 3.0; [`facts`]: Debian's bsdgames quiz
//! files and iso-codes), so the suite exists offline and is the same for a given seed on
//! every machine. A task is one distinctive kind of request a user would really send ("What
//! is 37 + 48?", "What is the opposite of 'cheap'?") with several phrasings, and a short
//! answer (a few tokens: the base model is SmolLM2-135M and training runs on a CPU). Tasks
//! are grouped in families, a file each, so that held-out evaluation can leave a task out
//! of a family that the generator otherwise knows (section 4, held-out protocol):
//! procedural [`arithmetic`], [`text`], [`lists`], [`comparison`], [`strings`],
//! [`counting`], [`sequences`], [`dates`], [`logic`], [`cipher`], [`units`], [`numbers`],
//! [`multiple_choice`]; from WordNet [`lexical`], [`morphology`], [`semantics`]; and
//! [`world`] (capitals, elements, ISO codes). [`taskfile`] reads and writes tasks as JSONL, so users can bring
//! their own.
//!
//! Versions ([`SuiteConfig::version`]): a version only appends families, so every task of
//! an older version keeps its questions, and an older version's commands (held-out splits
//! by `holdout_every`, pools of "every task but ...") still select what they did when they
//! name it. Version 1: the 130 tasks above (2026-12-01). Version 2 adds [`money`] and
//! [`encoding`], 16 tasks. Version 3 ([`DEFAULT_SUITE`]) adds [`phrases`] and [`picks`], 15
//! word-level and letter-choice tasks (2026-12-03: most of version 2's new tasks fail the
//! suite filter, which left the held-out split short of 20 tasks that pass it). Version 4
//! (2026-12-04; opt-in) adds the [`rules`] families, 89 tasks whose rule shows only in
//! their examples, 13 families of one rule each. Version 5 (2026-12-05;
//! opt-in) adds [`formats`], [`calendar`], [`math`], [`itemlists`] and, from WordNet,
//! [`associations`]: 49 tasks with the instruction in the prompt, more training tasks for
//! the generator (issue 14's lever). Version 6 (2026-12-07; opt-in) adds one rule family of
//! 40 values, `rule_ending`, and version 7 ([`LATEST_SUITE`], 2026-12-07; opt-in) one of 400,
//! `rule_coda` (see [`rules`]).
//!
//! Splits: each example has a *key* (its content without the phrasing, e.g. `(37, 48)` for
//! an addition). Keys are unique inside a task and each key lands in exactly one split, so a
//! test question is never a rephrased training question.
//!
//! Scoring ([`Scoring`]): `exact` compares the start of the output with the answer after
//! normalisation; `choice` reads a choice letter at the start of the output. Both are strict
//! (the paper's protocol: invalid output is wrong). [`score_lenient`] accepts the right
//! answer anywhere in the first sentence when no wrong choice is named there.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

use crate::format::rng::Rng;
use draw::Sample;
use wordnet::Lexicon;

mod arithmetic;
mod associations;
mod calendar;
mod comparison;
mod draw;
mod lexical;
mod lists;
mod text;

mod cipher;
mod counting;
mod dates;
mod encoding;
pub mod external;
mod facts;
mod formats;
mod itemlists;
mod logic;
mod math;
mod money;
mod morphology;
mod multiple_choice;
pub mod nearest;
mod numbers;
mod phrases;
mod picks;
mod rules;
mod semantics;
mod sequences;
mod strings;
#[cfg(test)]
mod tests_support;
mod units;
mod world;

pub mod scoring;
pub mod taskfile;
pub mod wordnet;

pub use scoring::{choice_index, choice_letter, normalise, score_lenient, score_strict};

/// How a task's outputs are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    /// The output starts with the answer (normalised: case, whitespace, final punctuation).
    Exact,
    /// The answer is a choice letter (`A`, `B`, ...); the output starts with that letter.
    Choice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

/// One question: the user's prompt, the expected answer, and for choice tasks the choice
/// texts in letter order (the prompt already lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub prompt: String,
    pub answer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub name: String,
    /// Family for held-out protocols; `external` for tasks read from files.
    pub family: String,
    pub scoring: Scoring,
    pub train: Vec<Example>,
    pub test: Vec<Example>,
}

impl Task {
    pub fn split(&self, split: Split) -> &[Example] {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }

    /// Checks the invariants every consumer relies on: a usable name, non-empty answers,
    /// choice answers that are letters of listed choices, and no prompt in both splits.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!(
                "task name {:?} must be non-empty ASCII letters, digits, '_' or '-' (it names folders)",
                self.name
            );
        }
        for (split, examples) in [("train", &self.train), ("test", &self.test)] {
            for (i, ex) in examples.iter().enumerate() {
                if ex.prompt.trim().is_empty() || ex.answer.trim().is_empty() {
                    bail!(
                        "task {}: {split} example {i} has an empty prompt or answer",
                        self.name
                    );
                }
                match self.scoring {
                    Scoring::Choice => {
                        let idx = choice_index(&ex.answer);
                        if ex.choices.len() < 2 || idx.is_none_or(|i| i >= ex.choices.len()) {
                            bail!(
                                "task {}: {split} example {i}: a choice answer must be the letter of one of at least two choices, got {:?} with {} choices",
                                self.name,
                                ex.answer,
                                ex.choices.len()
                            );
                        }
                    }
                    Scoring::Exact => {
                        if !ex.choices.is_empty() {
                            bail!("task {}: {split} example {i} has choices but the task is scored exact", self.name);
                        }
                    }
                }
            }
        }
        let train: BTreeSet<&str> = self.train.iter().map(|e| e.prompt.as_str()).collect();
        if let Some(p) = self.test.iter().find(|e| train.contains(e.prompt.as_str())) {
            bail!(
                "task {}: prompt {:?} is in both splits",
                self.name,
                p.prompt
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The built-in suite

/// The newest version of the built-in suite (the module doc lists what each added).
pub const LATEST_SUITE: u32 = 7;

/// The version commands use when none is given: versions 4 and 5 are experiments (README,
/// k-fold) until their tasks are shown to help held-out tasks, and every recorded run since
/// 2026-12-03 used version 3.
pub const DEFAULT_SUITE: u32 = 3;

/// Sizes, seed and version of the built-in suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteConfig {
    pub seed: u64,
    pub train: usize,
    pub test: usize,
    /// Which tasks: version 1 the first 130, each later one appends families.
    pub version: u32,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        Self {
            seed: 1234,
            train: 240,
            test: 60,
            version: DEFAULT_SUITE,
        }
    }
}

/// How a task draws a question: from the random stream alone, from WordNet's word lists,
/// from the reference facts of [`facts`], or as one parameter value of a [`rules`] family
/// (rule, value).
#[derive(Clone, Copy)]
enum Draw {
    Plain(fn(&mut Rng) -> Sample),
    Lexical(fn(&mut Rng, &Lexicon) -> Sample),
    Facts(fn(&mut Rng, &facts::Facts) -> Sample),
    Rule(usize, usize),
}

#[derive(Clone)]
struct Spec {
    /// Owned for the [`rules`] tasks, named after their parameter.
    name: Cow<'static, str>,
    family: &'static str,
    scoring: Scoring,
    draw: Draw,
}

/// Every family of the built-in suite in suite order, each with the suite version that
/// added it.
const FAMILIES: &[(u32, &[Spec])] = &[
    (1, arithmetic::SPECS),
    (1, text::SPECS),
    (1, lists::SPECS),
    (1, comparison::SPECS),
    (1, lexical::SPECS),
    // Procedural families added for a wider suite (the generator's training data).
    (1, strings::SPECS),
    (1, counting::SPECS),
    (1, sequences::SPECS),
    (1, dates::SPECS),
    (1, logic::SPECS),
    (1, cipher::SPECS),
    (1, units::SPECS),
    (1, numbers::SPECS),
    (1, multiple_choice::SPECS),
    (1, morphology::SPECS),
    (1, semantics::SPECS),
    (1, world::SPECS),
    (2, money::SPECS),
    (2, encoding::SPECS),
    (3, phrases::SPECS),
    (3, picks::SPECS),
    (5, formats::SPECS),
    (5, calendar::SPECS),
    (5, math::SPECS),
    (5, itemlists::SPECS),
    (5, associations::SPECS),
];

/// Every built-in task of a suite version, in suite order: family by family, version 4's
/// [`rules`] families (a task per parameter value, built at run time) last.
fn specs(version: u32) -> impl Iterator<Item = Spec> {
    let fixed = FAMILIES
        .iter()
        .filter(move |(since, _)| *since <= version)
        .flat_map(|(_, family)| family.iter().cloned());
    // Each rule family says which version added it (from 4 on).
    fixed.chain(rules::specs(version))
}

const fn spec(name: &'static str, family: &'static str, scoring: Scoring, draw: Draw) -> Spec {
    Spec {
        name: Cow::Borrowed(name),
        family,
        scoring,
        draw,
    }
}

/// The whole built-in suite for a config. Each task draws from its own random stream
/// (`seed`, task name), so adding a task does not change the others.
pub fn builtin_suite(cfg: &SuiteConfig) -> Result<Vec<Task>> {
    check_version(cfg)?;
    specs(cfg.version).map(|s| build(&s, cfg)).collect()
}

fn check_version(cfg: &SuiteConfig) -> Result<()> {
    ensure!(
        (1..=LATEST_SUITE).contains(&cfg.version),
        "suite version {} does not exist (1 to {LATEST_SUITE})",
        cfg.version
    );
    Ok(())
}

/// One built-in task by name.
pub fn builtin_task(name: &str, cfg: &SuiteConfig) -> Result<Task> {
    check_version(cfg)?;
    match specs(cfg.version).find(|s| s.name == name) {
        Some(s) => build(&s, cfg),
        None => bail!(
            "no built-in task {name:?} in suite version {}; known: {}",
            cfg.version,
            specs(cfg.version)
                .map(|s| s.name.into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `builtin` (generated with `cfg`) or task files, restricted to `only` when it is not empty.
pub fn suite(names: &[String], only: &[String], cfg: &SuiteConfig) -> Result<Vec<Task>> {
    let mut tasks = if names == ["builtin"] {
        builtin_suite(cfg)?
    } else {
        names
            .iter()
            .map(|f| taskfile::read_task_file(f.as_ref()))
            .collect::<Result<Vec<_>>>()?
    };
    if !only.is_empty() {
        for name in only {
            if !tasks.iter().any(|t| &t.name == name) {
                bail!("--only: no task {name:?} in the suite");
            }
        }
        tasks.retain(|t| only.contains(&t.name));
    }
    Ok(tasks)
}

/// `tasks` without those named in `names` (`--except`); a name that is no task is an error.
pub fn without(mut tasks: Vec<Task>, names: &[String]) -> Result<Vec<Task>> {
    for name in names {
        ensure!(
            tasks.iter().any(|t| &t.name == name),
            "--except: no task {name:?} in the suite"
        );
    }
    tasks.retain(|t| !names.contains(&t.name));
    Ok(tasks)
}

/// A held-out split that covers every family without choosing tasks by hand: in each
/// family (tasks in suite order), the 2nd task and every `k`-th after it. `k = 7` holds
/// out 22 of suite version 1's 130 tasks, 25 of version 2's 146 and 28 of version 3's 161,
/// at least one of each family.
///
/// `fold` (0 to `k - 1`) shifts the split by that many tasks per family, so that the `k`
/// folds hold out every task exactly once (k-fold evaluation); fold 0 is the split above.
pub fn holdout_every(tasks: &[Task], k: usize, fold: usize) -> Result<Vec<String>> {
    ensure!(k >= 2, "hold out every k-th task with k >= 2");
    ensure!(fold < k, "fold {fold} of {k}: folds are 0 to {}", k - 1);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for t in tasks {
        let i = seen.entry(t.family.as_str()).or_default();
        if *i % k == (1 + fold) % k {
            out.push(t.name.clone());
        }
        *i += 1;
    }
    Ok(out)
}

/// One task made of several tasks' examples (train and test splits each concatenated in
/// order, choices dropped), for training one multi-task LoRA on them (`collect --pool`).
/// Its scoring is `exact`: it is for training, not for scoring.
pub fn pooled(name: &str, tasks: &[Task]) -> Result<Task> {
    if tasks.is_empty() {
        bail!("--pool needs at least one task");
    }
    let strip = |examples: &[Example]| -> Vec<Example> {
        examples
            .iter()
            .map(|e| Example {
                choices: Vec::new(),
                ..e.clone()
            })
            .collect()
    };
    let task = Task {
        name: name.to_string(),
        family: "pooled".to_string(),
        scoring: Scoring::Exact,
        train: tasks.iter().flat_map(|t| strip(&t.train)).collect(),
        test: tasks.iter().flat_map(|t| strip(&t.test)).collect(),
    };
    task.validate()?;
    Ok(task)
}

fn build(spec: &Spec, cfg: &SuiteConfig) -> Result<Task> {
    let mut rng = Rng::derive(cfg.seed, &spec.name);
    let draw: Box<dyn Fn(&mut Rng) -> Sample> = match spec.draw {
        Draw::Plain(g) => Box::new(g),
        Draw::Lexical(g) => {
            let lexicon = wordnet::lexicon()?;
            Box::new(move |r| g(r, lexicon))
        }
        Draw::Facts(g) => {
            let facts = facts::facts()?;
            Box::new(move |r| g(r, facts))
        }
        Draw::Rule(rule, value) => Box::new(move |r| rules::draw(r, rule, value)),
    };
    let want = cfg.train + cfg.test;
    let mut keys = BTreeSet::new();
    let mut samples = Vec::with_capacity(want);
    let mut attempts = 0usize;
    while samples.len() < want {
        attempts += 1;
        if attempts > 200 * want + 1000 {
            bail!(
                "task {}: only {} distinct questions found, {} wanted (train {} + test {})",
                spec.name,
                samples.len(),
                want,
                cfg.train,
                cfg.test
            );
        }
        let s = draw(&mut rng);
        if keys.insert(s.key.clone()) {
            samples.push(s);
        }
    }
    let mut examples: Vec<Example> = samples
        .into_iter()
        .map(|s| Example {
            prompt: s.prompt,
            answer: s.answer,
            choices: s.choices,
        })
        .collect();
    let test = examples.split_off(cfg.train);
    let task = Task {
        name: spec.name.to_string(),
        family: spec.family.to_string(),
        scoring: spec.scoring,
        train: examples,
        test,
    };
    task.validate()?;
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::draw::words;
    use super::*;

    fn small() -> SuiteConfig {
        SuiteConfig {
            seed: 5,
            train: 40,
            test: 10,
            ..SuiteConfig::default()
        }
    }

    /// Version 1 is the 130 tasks its recorded runs used, with their held-out split; each
    /// later version starts with the one before, question for question, and holds out more.
    #[test]
    fn a_newer_suite_version_only_appends() {
        let version = |v| {
            builtin_suite(&SuiteConfig {
                version: v,
                ..small()
            })
            .unwrap()
        };
        let (v1, v2, latest) = (version(1), version(2), builtin_suite(&small()).unwrap());
        assert_eq!((v1.len(), v2.len(), latest.len()), (130, 146, 161));
        assert_eq!(v1[..], v2[..130]);
        assert_eq!(v2[..], latest[..146]);
        // Version 4 appends the rule tasks and leaves every older split where it was.
        let v4 = version(4);
        assert_eq!(v4.len(), 161 + 89);
        assert_eq!(latest[..], v4[..161]);
        assert!(v4[161..].iter().all(|t| t.name.starts_with("rule_")));
        let held_v4 = holdout_every(&v4, 7, 1).unwrap();
        let (rule, older): (Vec<String>, Vec<String>) =
            held_v4.into_iter().partition(|n| n.starts_with("rule_"));
        assert_eq!(older, holdout_every(&latest, 7, 1).unwrap());
        assert_eq!(
            rule.len(),
            14,
            "the 3rd of each rule family, and add's 10th: {rule:?}"
        );
        assert!(rule.contains(&"rule_add_4".to_string()), "{rule:?}");
        // Version 6 appends one rule family of 40 values to version 5.
        let (v5, v6) = (version(5), version(6));
        assert_eq!(v6.len(), v5.len() + 40);
        assert_eq!(v6[..v5.len()], v5[..]);
        assert!(v6[v5.len()..].iter().all(|t| t.family == "rule_ending"));
        // Version 7 appends one of 400.
        let v7 = version(7);
        assert_eq!(v7.len(), v6.len() + 400);
        assert_eq!(v7[..v6.len()], v6[..]);
        assert!(v7[v6.len()..].iter().all(|t| t.family == "rule_coda"));
        let held = holdout_every(&v1, 7, 0).unwrap();
        assert_eq!(held.len(), 22);
        assert_eq!(held.first().map(String::as_str), Some("month_shift"));
        let held_latest = holdout_every(&latest, 7, 0).unwrap();
        assert_eq!(held_latest[..22], held[..]);
        assert_eq!(
            held_latest[22..],
            [
                "change_from",
                "sale_price",
                "decimal_to_binary",
                "title_case",
                "reverse_words",
                "pick_odd"
            ]
        );
        let v1_cfg = SuiteConfig {
            version: 1,
            ..small()
        };
        let err = builtin_task("total_cost", &v1_cfg).unwrap_err();
        assert!(err.to_string().contains("suite version 1"), "{err}");
        assert!(builtin_suite(&SuiteConfig {
            version: 0,
            ..small()
        })
        .is_err());
    }

    /// Over the newest version: every task of every version has its 300 questions.
    #[test]
    fn suite_has_enough_tasks_and_families() {
        let suite = builtin_suite(&SuiteConfig {
            version: LATEST_SUITE,
            ..SuiteConfig::default()
        })
        .unwrap();
        assert!(suite.len() >= 16, "{} tasks", suite.len());
        let families: BTreeSet<&str> = suite.iter().map(|t| t.family.as_str()).collect();
        assert!(families.len() >= 4, "{families:?}");
        let names: BTreeSet<&str> = suite.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), suite.len(), "task names are unique");
        for t in &suite {
            assert_eq!(t.train.len(), 240, "{}", t.name);
            assert_eq!(t.test.len(), 60, "{}", t.name);
            t.validate().unwrap();
        }
        assert!(
            words().len() >= 380,
            "word list has {} words",
            words().len()
        );
    }

    #[test]
    fn holdout_every_takes_the_second_and_every_kth_after_it_per_family_and_without_drops() {
        let task = |name: &str, family: &str| Task {
            name: name.into(),
            family: family.into(),
            scoring: Scoring::Exact,
            train: vec![],
            test: vec![],
        };
        let mut tasks: Vec<Task> = (0..9).map(|i| task(&format!("a{i}"), "a")).collect();
        tasks.insert(3, task("b0", "b"));
        tasks.insert(4, task("b1", "b"));
        assert_eq!(holdout_every(&tasks, 7, 0).unwrap(), ["a1", "b1", "a8"]);
        assert_eq!(
            holdout_every(&tasks, 3, 0).unwrap(),
            ["a1", "b1", "a4", "a7"]
        );
        assert!(holdout_every(&tasks, 1, 0).is_err());
        assert!(holdout_every(&tasks, 3, 3).is_err());
        // The folds hold out every task once.
        let mut all: Vec<String> = (0..3)
            .flat_map(|f| holdout_every(&tasks, 3, f).unwrap())
            .collect();
        all.sort();
        let mut names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
        names.sort();
        assert_eq!(all, names);
        assert_eq!(
            holdout_every(&tasks, 3, 2).unwrap(),
            ["a0", "b0", "a3", "a6"]
        );
        let kept = without(tasks.clone(), &["a1".into(), "b0".into()]).unwrap();
        assert_eq!(kept.len(), tasks.len() - 2);
        assert!(kept.iter().all(|t| t.name != "a1" && t.name != "b0"));
        let err = without(tasks.clone(), &["nope".into()]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let suite = builtin_suite(&small()).unwrap();
        let held = holdout_every(&suite, 7, 0).unwrap();
        let families = |names: &mut dyn Iterator<Item = &Task>| {
            names.map(|t| t.family.clone()).collect::<BTreeSet<_>>()
        };
        let held_families = families(&mut suite.iter().filter(|t| held.contains(&t.name)));
        assert_eq!(held_families, families(&mut suite.iter()));
    }

    #[test]
    fn pooled_tasks_concatenate_splits_without_choices() {
        let suite = builtin_suite(&small()).unwrap();
        let two: Vec<Task> = suite
            .into_iter()
            .filter(|t| t.name == "add" || t.name == "parity")
            .collect();
        let pool = pooled("pool", &two).unwrap();
        assert_eq!(pool.train.len(), 80);
        assert_eq!(pool.test.len(), 20);
        assert_eq!(pool.train[0], two[0].train[0]);
        assert_eq!(pool.train[40].prompt, two[1].train[0].prompt);
        assert!(pool.train.iter().all(|e| e.choices.is_empty()));
        assert!(pooled("pool", &[]).is_err());
    }

    #[test]
    fn suite_is_deterministic_and_seed_dependent() {
        let a = builtin_suite(&small()).unwrap();
        let b = builtin_suite(&small()).unwrap();
        assert_eq!(a, b);
        let c = builtin_suite(&SuiteConfig { seed: 6, ..small() }).unwrap();
        assert_ne!(a[0].train, c[0].train);
        // A task is the same whether built alone or in the suite.
        let parity = a.iter().find(|t| t.name == "parity").unwrap();
        assert_eq!(&builtin_task("parity", &small()).unwrap(), parity);
    }

    /// Over the newest version, so that every task of every version is checked.
    #[test]
    fn answers_are_right_and_short() {
        let suite = builtin_suite(&SuiteConfig {
            version: LATEST_SUITE,
            ..small()
        })
        .unwrap();
        let get = |n: &str| suite.iter().find(|t| t.name == n).unwrap();
        for ex in &get("add").train {
            let nums: Vec<i64> = ex
                .prompt
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            assert_eq!(ex.answer, (nums[0] + nums[1]).to_string(), "{}", ex.prompt);
        }
        for ex in &get("part_of_speech").test {
            assert!(["noun", "verb", "adjective", "adverb"].contains(&ex.answer.as_str()));
        }
        for ex in &get("antonym").test {
            assert!(!ex.prompt.contains(&format!("'{}'", ex.answer)), "{ex:?}");
        }
        let lex = crate::tasks::wordnet::lexicon().unwrap();
        let plural_of = |w: &str| {
            let found = lex.plurals.iter().find(|(s, _)| s == w);
            found.map(|(_, p)| p.as_str())
        };
        assert_eq!(plural_of("child"), Some("children"));
        assert_eq!(plural_of("knife"), Some("knives"));
        assert_eq!(plural_of("box"), Some("boxes"));
        assert_eq!(plural_of("baby"), Some("babies"));
        assert_eq!(plural_of("boy"), Some("boys"));
        // noun.exc's archaic "camerae" is not the plural a user expects: left out.
        assert_eq!(plural_of("camera"), None);
        for name in ["definition", "kind_of"] {
            for ex in &get(name).train {
                assert_eq!(ex.choices.len(), 4, "{name}: {ex:?}");
                let distinct: BTreeSet<&String> = ex.choices.iter().collect();
                assert_eq!(distinct.len(), 4, "{name}: {ex:?}");
            }
        }
        for t in &suite {
            for ex in t.train.iter().chain(&t.test) {
                assert!(
                    ex.answer.len() <= 24,
                    "{}: long answer {:?}",
                    t.name,
                    ex.answer
                );
                assert!(
                    ex.prompt.len() <= 240,
                    "{}: long prompt {:?}",
                    t.name,
                    ex.prompt
                );
                assert!(
                    score_strict(t.scoring, ex, &ex.answer),
                    "{}: {:?}",
                    t.name,
                    ex
                );
                assert!(
                    score_lenient(t.scoring, ex, &ex.answer),
                    "{}: {:?}",
                    t.name,
                    ex
                );
            }
        }
        let ex = &get("larger_number").train[0];
        let right = choice_index(&ex.answer).unwrap();
        let max = ex
            .choices
            .iter()
            .map(|c| c.parse::<i64>().unwrap())
            .max()
            .unwrap();
        assert_eq!(ex.choices[right], max.to_string());
        assert!(ex.prompt.contains("\nA) "), "{}", ex.prompt);
    }

    #[test]
    fn splits_share_no_content() {
        let suite = builtin_suite(&SuiteConfig::default()).unwrap();
        let t = suite.iter().find(|t| t.name == "add").unwrap();
        let key = |p: &str| {
            p.split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("+")
        };
        let train: BTreeSet<String> = t.train.iter().map(|e| key(&e.prompt)).collect();
        assert!(t.test.iter().all(|e| !train.contains(&key(&e.prompt))));
        let mut bad = t.clone();
        bad.test.push(bad.train[0].clone());
        assert!(bad.validate().is_err());
    }
}
