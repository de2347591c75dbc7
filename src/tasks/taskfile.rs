//! Tasks as JSONL files, so that users can bring their own tasks to collection and
//! evaluation, and the built-in suite can be exported and inspected.
//!
//! One task per file. The first line is the header, every further non-blank line one
//! example:
//!
//! ```text
//! {"task": "parity", "scoring": "choice"}
//! {"prompt": "Is 7 even or odd?\nA) even\nB) odd", "answer": "B", "choices": ["even", "odd"], "split": "train"}
//! {"prompt": "Is 12 even or odd?\nA) even\nB) odd", "answer": "A", "choices": ["even", "odd"]}
//! ```
//!
//! `choices` is only for `choice` scoring (the answer is then the letter of one of them);
//! `split` is `train` or `test` and defaults to `test`. Unknown fields are an error, so a
//! misspelt field name does not silently lose data. Errors name the file and line.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{Example, Scoring, Split, Task};

/// Family given to tasks read from files.
pub const EXTERNAL_FAMILY: &str = "external";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    task: String,
    scoring: Scoring,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    prompt: String,
    answer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    choices: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    split: Option<Split>,
}

/// Reads one task file; the task is validated ([`Task::validate`]).
pub fn read_task_file(path: &Path) -> Result<Task> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening task file {}", path.display()))?;
    parse_task(BufReader::new(file), &path.display().to_string())
}

/// Parses a task from JSONL text; `origin` names the source in errors.
pub fn parse_task(reader: impl BufRead, origin: &str) -> Result<Task> {
    let mut header: Option<Header> = None;
    let mut train = Vec::new();
    let mut test = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{origin}:{n}: cannot read line"))?;
        if line.trim().is_empty() {
            continue;
        }
        match &header {
            None => {
                let h: Header = serde_json::from_str(&line).with_context(|| {
                    format!(
                        "{origin}:{n}: the first line must be {{\"task\": NAME, \"scoring\": \"exact\" | \"choice\"}}"
                    )
                })?;
                header = Some(h);
            }
            Some(h) => {
                let l: Line = serde_json::from_str(&line).with_context(|| {
                    format!(
                        "{origin}:{n}: an example must be {{\"prompt\": ..., \"answer\": ..., \"choices\": [...], \"split\": \"train\" | \"test\"}}"
                    )
                })?;
                if h.scoring == Scoring::Exact && !l.choices.is_empty() {
                    bail!("{origin}:{n}: \"choices\" given but the task is scored \"exact\"");
                }
                if h.scoring == Scoring::Choice {
                    let ok = super::choice_index(&l.answer).is_some_and(|i| i < l.choices.len());
                    if l.choices.len() < 2 || !ok {
                        bail!(
                            "{origin}:{n}: a choice example needs at least two \"choices\" and an \"answer\" that is the letter of one (A, B, ...), got {:?} with {} choices",
                            l.answer,
                            l.choices.len()
                        );
                    }
                }
                if l.prompt.trim().is_empty() || l.answer.trim().is_empty() {
                    bail!("{origin}:{n}: empty prompt or answer");
                }
                let ex = Example {
                    prompt: l.prompt,
                    answer: l.answer,
                    choices: l.choices,
                };
                match l.split.unwrap_or(Split::Test) {
                    Split::Train => train.push(ex),
                    Split::Test => test.push(ex),
                }
            }
        }
    }
    let Some(h) = header else {
        bail!("{origin}: empty task file (no header line)");
    };
    if train.is_empty() && test.is_empty() {
        bail!("{origin}: task {:?} has no examples", h.task);
    }
    let task = Task {
        name: h.task,
        family: EXTERNAL_FAMILY.to_string(),
        scoring: h.scoring,
        train,
        test,
    };
    task.validate()
        .with_context(|| format!("{origin}: invalid task"))?;
    Ok(task)
}

/// The JSONL text of a task: header, then its train examples, then its test examples.
pub fn task_to_jsonl(task: &Task) -> Result<String> {
    let mut out = serde_json::to_string(&Header {
        task: task.name.clone(),
        scoring: task.scoring,
    })?;
    out.push('\n');
    for (split, examples) in [(Split::Train, &task.train), (Split::Test, &task.test)] {
        for ex in examples {
            out.push_str(&serde_json::to_string(&Line {
                prompt: ex.prompt.clone(),
                answer: ex.answer.clone(),
                choices: ex.choices.clone(),
                split: Some(split),
            })?);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Writes a task file (via a temp file and a rename, so a reader never sees half of it).
pub fn write_task_file(task: &Task, path: &Path) -> Result<()> {
    crate::format::fsio::write_atomic(path, task_to_jsonl(task)?.as_bytes())
}

/// Writes every task of a suite as `DIR/NAME.jsonl`.
pub fn export_suite(tasks: &[Task], dir: &Path) -> Result<()> {
    for t in tasks {
        write_task_file(t, &dir.join(format!("{}.jsonl", t.name)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{builtin_suite, SuiteConfig};

    fn parse(text: &str) -> Result<Task> {
        parse_task(text.as_bytes(), "t.jsonl")
    }

    #[test]
    fn round_trips_the_builtin_suite() {
        let cfg = SuiteConfig {
            seed: 3,
            train: 8,
            test: 4,
            ..SuiteConfig::default()
        };
        let suite = builtin_suite(&cfg).unwrap();
        let dir = tempfile::tempdir().unwrap();
        export_suite(&suite, dir.path()).unwrap();
        for t in &suite {
            let back = read_task_file(&dir.path().join(format!("{}.jsonl", t.name))).unwrap();
            assert_eq!(back.name, t.name);
            assert_eq!(back.scoring, t.scoring);
            assert_eq!(back.train, t.train);
            assert_eq!(back.test, t.test);
            assert_eq!(back.family, EXTERNAL_FAMILY);
        }
    }

    #[test]
    fn split_defaults_to_test_and_blank_lines_are_skipped() {
        let t = parse(
            "{\"task\": \"cap\", \"scoring\": \"exact\"}\n\n{\"prompt\": \"Capital of France?\", \"answer\": \"Paris\"}\n{\"prompt\": \"Capital of Peru?\", \"answer\": \"Lima\", \"split\": \"train\"}\n",
        )
        .unwrap();
        assert_eq!(t.test.len(), 1);
        assert_eq!(t.train.len(), 1);
        assert_eq!(t.train[0].answer, "Lima");
    }

    #[test]
    fn errors_name_the_line() {
        let head = "{\"task\": \"p\", \"scoring\": \"choice\"}\n";
        let cases = [
            ("", "empty task file"),
            ("{\"task\": \"p\"}\n", "t.jsonl:1"),
            (
                "{\"task\": \"p\", \"scoring\": \"fuzzy\"}\n",
                "t.jsonl:1",
            ),
            (
                &format!("{head}{{\"prompt\": \"x\", \"answer\": \"A\", \"choices\": [\"a\", \"b\"]}}\nnot json\n"),
                "t.jsonl:3",
            ),
            (
                &format!("{head}{{\"prompt\": \"x\", \"answer\": \"C\", \"choices\": [\"a\", \"b\"]}}\n"),
                "t.jsonl:2: a choice example",
            ),
            (
                &format!("{head}{{\"prompt\": \"x\", \"answer\": \"A\", \"choices\": [\"a\", \"b\"], \"spilt\": \"train\"}}\n"),
                "t.jsonl:2",
            ),
            (
                "{\"task\": \"e\", \"scoring\": \"exact\"}\n{\"prompt\": \"x\", \"answer\": \"y\", \"choices\": [\"a\"]}\n",
                "t.jsonl:2: \"choices\" given",
            ),
            (
                "{\"task\": \"e\", \"scoring\": \"exact\"}\n{\"prompt\": \"x\", \"answer\": \"y\", \"split\": \"dev\"}\n",
                "t.jsonl:2",
            ),
            ("{\"task\": \"e\", \"scoring\": \"exact\"}\n", "no examples"),
            (
                "{\"task\": \"a/b\", \"scoring\": \"exact\"}\n{\"prompt\": \"x\", \"answer\": \"y\"}\n",
                "task name",
            ),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(
                err.contains(want),
                "{text:?}: error {err:?} should mention {want:?}"
            );
        }
    }
}
