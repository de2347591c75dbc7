//! The task suite: small question-answering tasks whose LoRA fine-tunes are the generator's
//! training data (DnD paper, section 5: one LoRA trajectory per dataset).
//!
//! Every built-in task is generated from a seeded random stream, procedurally or by
//! drawing from WordNet's word lists ([`super::wordnet`], the `lexical` family), so the
//! suite exists offline and is the same for a given seed on every machine. A task is one
//! distinctive kind of request a user would really send ("What is 37 + 48?", "What is the
//! opposite of 'cheap'?") with several phrasings, and a short answer (a few tokens: the base model is SmolLM2-135M and training
//! runs on a CPU). Tasks are grouped in families (arithmetic, text, lists, comparison,
//! lexical) so that held-out evaluation can leave a task out of a family that the
//! generator otherwise knows (section 4, held-out protocol).
//!
//! Splits: each example has a *key* (its content without the phrasing, e.g. `(37, 48)` for
//! an addition). Keys are unique inside a task and each key lands in exactly one split, so a
//! test question is never a rephrased training question.
//!
//! Scoring ([`Scoring`]): `exact` compares the start of the output with the answer after
//! normalisation; `choice` reads a choice letter at the start of the output. Both are strict
//! (the paper's protocol: invalid output is wrong). [`score_lenient`] accepts the right
//! answer anywhere in the first sentence when no wrong choice is named there.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::wordnet::{Lexicon, Pos};
use crate::format::rng::Rng;

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

/// The letter of choice `i` (`A` for 0).
pub fn choice_letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

/// The index of a choice answer (`"B"` -> 1).
pub fn choice_index(answer: &str) -> Option<usize> {
    let a = answer.trim();
    let mut chars = a.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_uppercase() => Some((c as u8 - b'A') as usize),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Scoring

/// Lower case, whitespace collapsed, no spaces around commas, no surrounding quotes or
/// final punctuation.
pub fn normalise(s: &str) -> String {
    let s = s.trim().to_lowercase();
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let s = s.replace(" ,", ",").replace(", ", ",");
    s.trim_end_matches(['.', '!', '?', ';', ':', '"', '\'', '`', '*'])
        .trim_start_matches(['"', '\'', '`', '*'])
        .trim()
        .to_string()
}

/// Strict score: `exact` takes the first line of the output and accepts it when it is the
/// answer, or the answer followed by sentence punctuation and more text (`"85. So..."`);
/// `choice` accepts the right letter as the first character (optionally inside `(`, `*`),
/// followed by nothing or a non-alphanumeric character.
pub fn score_strict(scoring: Scoring, ex: &Example, output: &str) -> bool {
    match scoring {
        Scoring::Exact => {
            let line = output.trim_start().lines().next().unwrap_or("");
            let got = normalise(line);
            let want = normalise(&ex.answer);
            if got == want {
                return true;
            }
            // "85. The sum is ..." : the answer, sentence punctuation, then whitespace.
            let raw = line.trim().to_lowercase();
            let raw = raw.split_whitespace().collect::<Vec<_>>().join(" ");
            let raw = raw.replace(" ,", ",").replace(", ", ",");
            let raw = raw.trim_start_matches(['"', '\'', '`', '*']);
            match raw.strip_prefix(want.as_str()) {
                Some(rest) => {
                    let rest = rest.trim_start_matches(['"', '\'', '`', '*']);
                    let after = rest.trim_start_matches(['.', '!', '?', ';', ':']);
                    after.len() < rest.len() && after.starts_with(char::is_whitespace)
                }
                None => false,
            }
        }
        Scoring::Choice => leading_choice(output, ex.choices.len()) == choice_index(&ex.answer),
    }
}

/// The choice letter the output starts with, if any.
fn leading_choice(output: &str, n_choices: usize) -> Option<usize> {
    let s = output.trim_start().trim_start_matches(['(', '*', '[']);
    let mut chars = s.chars();
    let c = chars.next()?;
    if !c.is_ascii_uppercase() {
        return None;
    }
    if chars.next().is_some_and(|n| n.is_alphanumeric()) {
        return None;
    }
    let i = (c as u8 - b'A') as usize;
    (i < n_choices).then_some(i)
}

/// The first sentence of an output: up to the first line break or a `.`/`!`/`?` followed
/// by whitespace (so `3.5` stays whole).
fn first_sentence(output: &str) -> &str {
    let s = output.trim_start();
    let line = s.lines().next().unwrap_or("");
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(b, b'.' | b'!' | b'?')
            && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace())
        {
            return &line[..i];
        }
    }
    line
}

/// Whether `needle` occurs in `hay` with no alphanumeric character right before or after.
fn contains_word(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let mut start = 0;
    while let Some(pos) = hay[start..].find(needle) {
        let at = start + pos;
        let before = hay[..at].chars().next_back();
        let after = hay[at + needle.len()..].chars().next();
        if !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric) {
            return true;
        }
        start = at + needle.len().max(1);
        while !hay.is_char_boundary(start) {
            start += 1;
        }
    }
    false
}

/// Lenient score: the right answer appears as a whole word in the first sentence (for a
/// choice task: its letter, upper case, or its text), and no wrong choice does.
pub fn score_lenient(scoring: Scoring, ex: &Example, output: &str) -> bool {
    let sentence = first_sentence(output);
    match scoring {
        Scoring::Exact => {
            let norm = |s: &str| {
                s.to_lowercase()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .replace(" ,", ",")
                    .replace(", ", ",")
            };
            contains_word(&norm(sentence), &normalise(&ex.answer))
        }
        Scoring::Choice => {
            let Some(right) = choice_index(&ex.answer) else {
                return false;
            };
            let lower = sentence.to_lowercase();
            let named = |i: usize| {
                let letter = choice_letter(i).to_string();
                contains_word(sentence, &letter)
                    || contains_word(&lower, &ex.choices[i].trim().to_lowercase())
            };
            named(right) && (0..ex.choices.len()).all(|i| i == right || !named(i))
        }
    }
}

// ---------------------------------------------------------------------------------------
// The built-in suite

/// Sizes and seed of the built-in suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteConfig {
    pub seed: u64,
    pub train: usize,
    pub test: usize,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        Self {
            seed: 1234,
            train: 240,
            test: 60,
        }
    }
}

/// One generated question before phrasing is fixed: `key` identifies its content.
struct Sample {
    key: String,
    prompt: String,
    answer: String,
    choices: Vec<String>,
}

/// How a task draws a question: from the random stream alone, or from WordNet's word lists.
#[derive(Clone, Copy)]
enum Generator {
    Plain(fn(&mut Rng) -> Sample),
    Lexical(fn(&mut Rng, &Lexicon) -> Sample),
}
use Generator::{Lexical, Plain};

struct Spec {
    name: &'static str,
    family: &'static str,
    scoring: Scoring,
    gen: Generator,
}

const SPECS: &[Spec] = &[
    // arithmetic: numbers, units and months
    spec("add", "arithmetic", Scoring::Exact, Plain(gen_add)),
    spec(
        "month_shift",
        "arithmetic",
        Scoring::Exact,
        Plain(gen_month_shift),
    ),
    spec(
        "metric_convert",
        "arithmetic",
        Scoring::Exact,
        Plain(gen_metric_convert),
    ),
    spec("double", "arithmetic", Scoring::Exact, Plain(gen_double)),
    spec(
        "next_number",
        "arithmetic",
        Scoring::Exact,
        Plain(gen_next_number),
    ),
    // text
    spec("uppercase", "text", Scoring::Exact, Plain(gen_uppercase)),
    spec(
        "first_letter",
        "text",
        Scoring::Exact,
        Plain(gen_first_letter),
    ),
    spec(
        "count_letters",
        "text",
        Scoring::Exact,
        Plain(gen_count_letters),
    ),
    spec("join_words", "text", Scoring::Exact, Plain(gen_join_words)),
    spec(
        "repeat_word",
        "text",
        Scoring::Exact,
        Plain(gen_repeat_word),
    ),
    spec("swap_words", "text", Scoring::Exact, Plain(gen_swap_words)),
    // lists
    spec(
        "sort_numbers",
        "lists",
        Scoring::Exact,
        Plain(gen_sort_numbers),
    ),
    spec("max_number", "lists", Scoring::Exact, Plain(gen_max_number)),
    spec(
        "count_items",
        "lists",
        Scoring::Exact,
        Plain(gen_count_items),
    ),
    spec("last_item", "lists", Scoring::Exact, Plain(gen_last_item)),
    spec(
        "reverse_list",
        "lists",
        Scoring::Exact,
        Plain(gen_reverse_list),
    ),
    // comparison (multiple choice)
    spec("parity", "comparison", Scoring::Choice, Plain(gen_parity)),
    spec(
        "larger_number",
        "comparison",
        Scoring::Choice,
        Plain(gen_larger_number),
    ),
    spec(
        "alphabetical_first",
        "comparison",
        Scoring::Choice,
        Plain(gen_alphabetical_first),
    ),
    // lexical: real text from WordNet 3.0
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

const fn spec(name: &'static str, family: &'static str, scoring: Scoring, gen: Generator) -> Spec {
    Spec {
        name,
        family,
        scoring,
        gen,
    }
}

/// Names of the built-in tasks, in suite order.
pub fn builtin_names() -> Vec<&'static str> {
    SPECS.iter().map(|s| s.name).collect()
}

/// The whole built-in suite for a config. Each task draws from its own random stream
/// (`seed`, task name), so adding a task does not change the others.
pub fn builtin_suite(cfg: &SuiteConfig) -> Result<Vec<Task>> {
    SPECS.iter().map(|s| build(s, cfg)).collect()
}

/// One built-in task by name.
pub fn builtin_task(name: &str, cfg: &SuiteConfig) -> Result<Task> {
    match SPECS.iter().find(|s| s.name == name) {
        Some(s) => build(s, cfg),
        None => bail!(
            "no built-in task {name:?}; known: {}",
            builtin_names().join(", ")
        ),
    }
}

fn build(spec: &Spec, cfg: &SuiteConfig) -> Result<Task> {
    let mut rng = Rng::derive(cfg.seed, spec.name);
    let draw: Box<dyn Fn(&mut Rng) -> Sample> = match spec.gen {
        Plain(g) => Box::new(g),
        Lexical(g) => {
            let lexicon = super::wordnet::lexicon()?;
            Box::new(move |r| g(r, lexicon))
        }
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

fn sample(key: String, prompt: String, answer: impl ToString) -> Sample {
    Sample {
        key,
        prompt,
        answer: answer.to_string(),
        choices: Vec::new(),
    }
}

/// A choice question: the choices are listed under the question, one letter each.
fn choice_sample(
    key: String,
    question: &str,
    choices: Vec<String>,
    right: usize,
    rng: &mut Rng,
) -> Sample {
    let mut prompt = question.to_string();
    for (i, c) in choices.iter().enumerate() {
        prompt.push_str(&format!("\n{}) {c}", choice_letter(i)));
    }
    let letters: Vec<String> = (0..choices.len())
        .map(|i| choice_letter(i).to_string())
        .collect();
    let tail = match rng.below(2) {
        0 => format!("\nAnswer with {}.", or_list(&letters)),
        _ => String::new(),
    };
    prompt.push_str(&tail);
    Sample {
        key,
        prompt,
        answer: choice_letter(right).to_string(),
        choices,
    }
}

fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

// --- arithmetic

fn gen_add(r: &mut Rng) -> Sample {
    let (a, b) = (r.range(10, 99), r.range(10, 99));
    let p = match r.below(3) {
        0 => format!("What is {a} + {b}?"),
        1 => format!("Add {a} and {b}."),
        _ => format!("Calculate {a} plus {b}."),
    };
    sample(format!("{a}+{b}"), p, a + b)
}

fn gen_double(r: &mut Rng) -> Sample {
    let a = r.range(11, 499);
    let p = match r.below(3) {
        0 => format!("What is double {a}?"),
        1 => format!("Multiply {a} by two."),
        _ => format!("What do you get when you double {a}?"),
    };
    sample(a.to_string(), p, 2 * a)
}

fn gen_next_number(r: &mut Rng) -> Sample {
    let a = r.range(100, 999);
    let p = match r.below(3) {
        0 => format!("Which number comes right after {a}?"),
        1 => format!("Count on by one from {a}: what is next?"),
        _ => format!("What is the successor of {a}?"),
    };
    sample(a.to_string(), p, a + 1)
}

// --- text

/// Common English words, 3 to 9 letters, for the text and comparison tasks.
const WORDS: &str = "able acid aged also area army away baby back ball band bank base bath bear \
beat bell belt bird blue boat body bone book boot born boss both bowl bread brick bridge \
bright brother brown brush build burn busy cake call calm camp card care carpet carry case \
castle cattle cave chair chalk cheap cheese chest chicken child circle city class clean clock \
cloud coast coat coffee cold color comb cook cool copper corn cotton cousin cover crowd \
cream cup curtain dance dark daughter deep desk dinner doctor dollar door dream dress drink \
driver drum duck dust eagle early earth east edge engine evening face fact farm farmer \
father feather fence field finger fire fish flag floor flour flower fly fog food foot forest \
fork fox friend frog fruit garden gate gift girl glass glove goat gold grass green ground \
guitar hair hammer hand happy harbor hat heart heavy hill holiday honey horse hotel house \
hunter ice island jacket jelly jewel juice kettle key king kitchen kite knee knife ladder \
lake lamp leaf lemon letter library lion lip list lizard lock lunch machine magnet market \
meadow metal milk minute mirror money monkey moon morning mother mountain mouse mouth music \
nail needle nest net night noise north nose number ocean office onion orange oven owl paint \
palace paper parent park party pencil pepper piano picture pillow pilot pirate planet plant \
plate pocket poem potato powder prince puzzle queen rabbit radio rain river road robot rock \
roof room rope rose salt sand school sea season seed shadow sheep shelf ship shirt shoe \
shop silver singer sister sky sleep smile snake snow soap sock soldier song soup south \
spoon spring square stamp star station stone storm story street sugar summer sun supper \
table tail teacher tent thread throat thunder ticket tiger toast tomato tongue tooth towel \
tower town toy train tree truck tunnel turtle uncle valley village violin voice wagon wall \
water wave weather whale wheel whistle wind window winter wolf woman wood wool world yard \
yellow zebra anchor apple arrow badge banana basket beach berry blanket bottle button \
camera candle canoe carrot cereal cherry cloth collar crayon diamond dragon eraser fountain \
gravel helmet insect lantern marble napkin necklace orchard panda parrot peach pebble \
pepper pumpkin puppet rocket saddle sailor scarf shovel skate sponge squirrel statue sweater \
tractor trumpet umbrella vase walnut wallet wizard";

fn words() -> Vec<&'static str> {
    let set: BTreeSet<&str> = WORDS.split_whitespace().collect();
    set.into_iter().collect()
}

fn pick_word(r: &mut Rng) -> &'static str {
    thread_local! {
        static WORDS_SORTED: Vec<&'static str> = words();
    }
    WORDS_SORTED.with(|w| *r.choose(w))
}

fn gen_uppercase(r: &mut Rng) -> Sample {
    let (a, b) = (pick_word(r), pick_word(r));
    let p = match r.below(3) {
        0 => format!("Write '{a} {b}' in capital letters."),
        1 => format!("Convert \"{a} {b}\" to uppercase."),
        _ => format!("Make this all caps: {a} {b}"),
    };
    sample(format!("{a} {b}"), p, format!("{a} {b}").to_uppercase())
}

fn gen_first_letter(r: &mut Rng) -> Sample {
    let w = pick_word(r);
    let p = match r.below(3) {
        0 => format!("What is the first letter of the word '{w}'?"),
        1 => format!("Which letter does \"{w}\" start with?"),
        _ => format!("Tell me the initial letter of {w}."),
    };
    sample(w.to_string(), p, &w[..1])
}

fn gen_count_letters(r: &mut Rng) -> Sample {
    let w = pick_word(r);
    let p = match r.below(3) {
        0 => format!("How many letters are in the word '{w}'?"),
        1 => format!("Count the letters in \"{w}\"."),
        _ => format!("How long is the word {w}, in letters?"),
    };
    sample(w.to_string(), p, w.len())
}

fn gen_join_words(r: &mut Rng) -> Sample {
    // Three words whose joined form stays a short answer.
    let ws = loop {
        let ws = [pick_word(r), pick_word(r), pick_word(r)];
        if ws.iter().map(|w| w.len()).sum::<usize>() <= 20 && ws[0] != ws[1] && ws[1] != ws[2] {
            break ws;
        }
    };
    let (sep, name) = match r.below(2) {
        0 => ("-", "hyphens"),
        _ => ("_", "underscores"),
    };
    let [a, b, c] = ws;
    let p = match r.below(3) {
        0 => format!("Join the words {a}, {b} and {c} with {name}."),
        1 => format!("Put {name} between these words: {a} {b} {c}"),
        _ => format!("Connect \"{a}\", \"{b}\" and \"{c}\" into one string using {name}."),
    };
    sample(format!("{a} {b} {c} {sep}"), p, ws.join(sep))
}

fn gen_repeat_word(r: &mut Rng) -> Sample {
    let (w, n) = loop {
        let (w, n) = (pick_word(r), 2 + r.below(3));
        if (w.len() + 1) * n <= 25 {
            break (w, n);
        }
    };
    let times = ["", "", "twice", "three times", "four times"][n];
    let p = match r.below(3) {
        0 => format!("Write the word '{w}' {times}, separated by spaces."),
        1 => format!("Repeat \"{w}\" {times}."),
        _ => format!("Say {w} {times} in a row."),
    };
    sample(format!("{w} {n}"), p, vec![w; n].join(" "))
}

fn gen_swap_words(r: &mut Rng) -> Sample {
    let (a, b) = loop {
        let (a, b) = (pick_word(r), pick_word(r));
        if a != b {
            break (a, b);
        }
    };
    let p = match r.below(3) {
        0 => format!("Swap the two words in '{a} {b}'."),
        1 => format!("Put the words of \"{a} {b}\" in the opposite order."),
        _ => format!("Switch the order of {a} and {b}: write them as a pair."),
    };
    sample(format!("{a} {b}"), p, format!("{b} {a}"))
}

// --- lists

fn numbers(r: &mut Rng, n: usize, lo: i64, hi: i64) -> Vec<i64> {
    let mut out: Vec<i64> = Vec::with_capacity(n);
    while out.len() < n {
        let x = r.range(lo, hi);
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn join<T: ToString>(xs: &[T]) -> String {
    xs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn gen_sort_numbers(r: &mut Rng) -> Sample {
    let n = 3 + r.below(2);
    let xs = numbers(r, n, 1, 99);
    let mut sorted = xs.clone();
    sorted.sort();
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("Sort these numbers from smallest to largest: {l}"),
        1 => format!("Put {l} in ascending order."),
        _ => format!("Arrange in increasing order: {l}"),
    };
    sample(l, p, join(&sorted))
}

fn gen_max_number(r: &mut Rng) -> Sample {
    let n = 3 + r.below(3);
    let xs = numbers(r, n, 1, 99);
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("Which is the largest number in this list: {l}?"),
        1 => format!("Find the maximum of {l}."),
        _ => format!("What is the biggest value among {l}?"),
    };
    sample(l, p, xs.iter().max().copied().unwrap_or_default())
}

const OBJECTS: &[&str] = &[
    "apple", "pen", "cup", "hat", "lamp", "book", "chair", "spoon", "sock", "key", "ball", "phone",
    "clock", "shoe", "plate", "bag", "ring", "coin", "map", "card", "brush", "bottle", "kite",
    "drum", "box", "candle", "fork", "glove", "scarf", "rope",
];

fn objects(r: &mut Rng, n: usize) -> Vec<&'static str> {
    let mut out: Vec<&str> = Vec::with_capacity(n);
    while out.len() < n {
        let x = *r.choose(OBJECTS);
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn gen_count_items(r: &mut Rng) -> Sample {
    let n = 2 + r.below(7);
    let xs = objects(r, n);
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("How many items are in this list: {l}?"),
        1 => format!("Count the things I packed: {l}."),
        _ => format!("I bought {l}. How many things did I buy?"),
    };
    sample(l, p, n)
}

fn gen_last_item(r: &mut Rng) -> Sample {
    let n = 3 + r.below(4);
    let xs = objects(r, n);
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("What is the last item in the list: {l}?"),
        1 => format!("Which word comes last in: {l}?"),
        _ => format!("Name the final entry of this list: {l}"),
    };
    sample(l, p, xs[n - 1])
}

fn gen_reverse_list(r: &mut Rng) -> Sample {
    let xs = loop {
        let xs = objects(r, 3);
        if join(&xs).len() <= 24 {
            break xs;
        }
    };
    let l = join(&xs);
    let p = match r.below(3) {
        0 => format!("Reverse the order of this list: {l}"),
        1 => format!("Write {l} backwards, last item first."),
        _ => format!("List these from last to first: {l}"),
    };
    let mut rev = xs.clone();
    rev.reverse();
    sample(l, p, join(&rev))
}

// --- time and units

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn gen_month_shift(r: &mut Rng) -> Sample {
    let m = r.below(12);
    let n = r.range(1, 24) as usize;
    let month = MONTHS[m];
    let (p, ans, key) = if r.below(2) == 0 {
        let p = match r.below(2) {
            0 => format!("What month comes {n} months after {month}?"),
            _ => format!("It is {month} now. Which month will it be in {n} months?"),
        };
        (p, MONTHS[(m + n) % 12], format!("{m}+{n}"))
    } else {
        let p = match r.below(2) {
            0 => format!("What month was it {n} months before {month}?"),
            _ => format!("It is {month} now. Which month was it {n} months ago?"),
        };
        (p, MONTHS[(m + 12 * 2 - n) % 12], format!("{m}-{n}"))
    };
    sample(key, p, ans)
}

fn gen_metric_convert(r: &mut Rng) -> Sample {
    const UNITS: [(&str, &str, i64); 5] = [
        ("kilometers", "meters", 1000),
        ("kilograms", "grams", 1000),
        ("liters", "milliliters", 1000),
        ("meters", "centimeters", 100),
        ("centimeters", "millimeters", 10),
    ];
    let u = r.below(UNITS.len());
    let (from, to, f) = UNITS[u];
    let x = r.range(2, 150);
    let p = match r.below(3) {
        0 => format!("Convert {x} {from} to {to}."),
        1 => format!("How many {to} are in {x} {from}?"),
        _ => format!("{x} {from} is how many {to}?"),
    };
    sample(format!("{u}:{x}"), p, x * f)
}

// --- comparison (choice)

fn gen_parity(r: &mut Rng) -> Sample {
    let x = r.range(1, 999);
    let choices: Vec<String> = if r.below(2) == 0 {
        vec!["even".into(), "odd".into()]
    } else {
        vec!["odd".into(), "even".into()]
    };
    let want = if x % 2 == 0 { "even" } else { "odd" };
    let right = choices.iter().position(|c| c == want).unwrap_or(0);
    let q = match r.below(2) {
        0 => format!("Is {x} even or odd?"),
        _ => format!("Is the number {x} odd or even?"),
    };
    choice_sample(format!("{x}{}", choices[0]), &q, choices, right, r)
}

fn gen_larger_number(r: &mut Rng) -> Sample {
    let n = 2 + r.below(2);
    let xs = numbers(r, n, 1, 999);
    let right = (0..n).max_by_key(|&i| xs[i]).unwrap_or(0);
    let q = match r.below(2) {
        0 => "Which number is larger?",
        _ => "Pick the biggest number.",
    };
    let choices = xs.iter().map(ToString::to_string).collect();
    choice_sample(join(&xs), q, choices, right, r)
}

fn gen_alphabetical_first(r: &mut Rng) -> Sample {
    let n = 3;
    let mut xs: Vec<&str> = Vec::with_capacity(n);
    while xs.len() < n {
        let w = pick_word(r);
        if !xs.iter().any(|x| x.as_bytes()[0] == w.as_bytes()[0]) {
            xs.push(w);
        }
    }
    let right = (0..n).min_by_key(|&i| xs[i]).unwrap_or(0);
    let q = match r.below(2) {
        0 => "Which word comes first in alphabetical order?",
        _ => "Which of these would appear first in a dictionary?",
    };
    choice_sample(
        join(&xs),
        q,
        xs.iter().map(|s| s.to_string()).collect(),
        right,
        r,
    )
}

// --- lexical (WordNet)

/// `a` or `an` before a word, by its first letter.
fn article(w: &str) -> &'static str {
    if w.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// A four-way choice: `right` and three distinct words from `pool` that `fair` accepts,
/// in random order.
fn four_choices(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SuiteConfig {
        SuiteConfig {
            seed: 5,
            train: 40,
            test: 10,
        }
    }

    #[test]
    fn suite_has_enough_tasks_and_families() {
        let suite = builtin_suite(&SuiteConfig::default()).unwrap();
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

    #[test]
    fn answers_are_right_and_short() {
        let suite = builtin_suite(&small()).unwrap();
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
        let lex = crate::training::wordnet::lexicon().unwrap();
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
    fn exact_scoring_is_strict_at_the_start() {
        let ex = Example {
            prompt: "What is 40 + 45?".into(),
            answer: "85".into(),
            choices: vec![],
        };
        for ok in ["85", " 85.", "85\nbecause", "85. The sum is 85.", "\"85\""] {
            assert!(score_strict(Scoring::Exact, &ex, ok), "{ok:?}");
        }
        for bad in ["The answer is 85.", "85 apples", "850", "8.5", "", "85.5"] {
            assert!(!score_strict(Scoring::Exact, &ex, bad), "{bad:?}");
        }
        assert!(score_lenient(Scoring::Exact, &ex, "The answer is 85."));
        assert!(score_lenient(Scoring::Exact, &ex, "85 apples"));
        assert!(!score_lenient(Scoring::Exact, &ex, "It is 850."));
        assert!(!score_lenient(Scoring::Exact, &ex, "It is 84. Or 85."));
        let list = Example {
            prompt: "Sort: 9, 2, 5".into(),
            answer: "2, 5, 9".into(),
            choices: vec![],
        };
        assert!(score_strict(Scoring::Exact, &list, "2,5,9"));
        assert!(!score_strict(Scoring::Exact, &list, "2, 5, 9, 10"));
        let word = Example {
            prompt: "Uppercase".into(),
            answer: "RED HAT".into(),
            choices: vec![],
        };
        assert!(score_strict(Scoring::Exact, &word, "red   hat!"));
    }

    #[test]
    fn choice_scoring_reads_the_leading_letter() {
        let ex = Example {
            prompt: "Is 7 even or odd?\nA) even\nB) odd".into(),
            answer: "B".into(),
            choices: vec!["even".into(), "odd".into()],
        };
        for ok in ["B", "B) odd", "(B)", "B.", " **B**"] {
            assert!(score_strict(Scoring::Choice, &ex, ok), "{ok:?}");
        }
        for bad in ["A", "Both", "b", "The answer is B", "C", ""] {
            assert!(!score_strict(Scoring::Choice, &ex, bad), "{bad:?}");
        }
        assert!(score_lenient(Scoring::Choice, &ex, "The answer is B."));
        assert!(score_lenient(Scoring::Choice, &ex, "It is odd."));
        assert!(!score_lenient(Scoring::Choice, &ex, "A or B"));
        assert!(!score_lenient(Scoring::Choice, &ex, "It is even, not odd."));
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
