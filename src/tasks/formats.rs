//! The `formats` family (suite version 5): writing names, words and numbers in a requested
//! format: identifier styles (camelCase to snake_case and back, camelCase to words), leading
//! zeros, fixed decimal places, brackets, file extensions, a word's first letters, and
//! people's names as initials.

use super::draw::*;
use super::numbers::number_words;
use super::strings::{distinct_words, pick_wide_word};
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "camel_to_snake",
        "formats",
        Scoring::Exact,
        Plain(gen_camel_to_snake),
    ),
    spec(
        "camel_to_words",
        "formats",
        Scoring::Exact,
        Plain(gen_camel_to_words),
    ),
    spec(
        "snake_to_camel",
        "formats",
        Scoring::Exact,
        Plain(gen_snake_to_camel),
    ),
    spec("zero_pad", "formats", Scoring::Exact, Plain(gen_zero_pad)),
    spec(
        "fixed_decimals",
        "formats",
        Scoring::Exact,
        Plain(gen_fixed_decimals),
    ),
    spec(
        "bracket_word",
        "formats",
        Scoring::Exact,
        Plain(gen_bracket_word),
    ),
    spec(
        "add_extension",
        "formats",
        Scoring::Exact,
        Plain(gen_add_extension),
    ),
    spec(
        "first_letters",
        "formats",
        Scoring::Exact,
        Plain(gen_first_letters),
    ),
    spec("initials", "formats", Scoring::Exact, Plain(gen_initials)),
];

/// Given names, short, with varied first letters.
const FIRST_NAMES: [&str; 50] = [
    "Mary", "Ann", "John", "Paul", "Anna", "Emma", "Liam", "Noah", "Olivia", "Sophia", "Lucas",
    "Ella", "Jack", "Grace", "Henry", "Alice", "Oscar", "Ruby", "Leo", "Clara", "Maya", "Ethan",
    "Isaac", "Lily", "Peter", "Sarah", "David", "Laura", "Nina", "Omar", "Rosa", "Victor", "Zoe",
    "Hugo", "Iris", "Kevin", "Tara", "Uma", "Walter", "Yara", "Frank", "Diana", "Ben", "George",
    "Helen", "Julia", "Karl", "Mark", "Quinn", "Eric",
];

/// Family names, at most 8 letters.
const SURNAMES: [&str; 50] = [
    "Smith", "Brown", "Jones", "Miller", "Davis", "Garcia", "Wilson", "Taylor", "Moore", "Clark",
    "Lewis", "Walker", "Hall", "Young", "King", "Wright", "Scott", "Green", "Baker", "Adams",
    "Nelson", "Hill", "Campbell", "Mitchell", "Roberts", "Carter", "Evans", "Turner", "Parker",
    "Collins", "Edwards", "Stewart", "Morris", "Murphy", "Cook", "Rogers", "Morgan", "Cooper",
    "Reed", "Bailey", "Bell", "Kelly", "Howard", "Ward", "Cox", "Diaz", "Russell", "Price",
    "Ortiz", "Irwin",
];

/// 2 or 3 distinct words whose snake_case form fits a short answer.
fn identifier_words(r: &mut Rng) -> Vec<&'static str> {
    loop {
        let n = 2 + r.below(2);
        let ws = distinct_words(r, n);
        if ws.iter().map(|w| w.len() + 1).sum::<usize>() <= 22 {
            return ws;
        }
    }
}

/// `greenAppleTree` from `green apple tree`.
fn camel(ws: &[&str]) -> String {
    let mut out = ws[0].to_string();
    for w in &ws[1..] {
        out.push_str(&capitalise(w));
    }
    out
}

fn gen_camel_to_snake(r: &mut Rng) -> Sample {
    let ws = identifier_words(r);
    let c = camel(&ws);
    let p = match r.below(3) {
        0 => format!("Convert the camelCase name '{c}' to snake_case."),
        1 => format!("Write the variable \"{c}\" in snake_case."),
        _ => format!("Rename this camelCase identifier in snake_case: {c}"),
    };
    sample(c, p, ws.join("_"))
}

fn gen_camel_to_words(r: &mut Rng) -> Sample {
    let ws = identifier_words(r);
    let c = camel(&ws);
    let p = match r.below(3) {
        0 => format!("Split the camelCase name '{c}' into separate lowercase words."),
        1 => format!("Which words make up the identifier \"{c}\"? Write them with spaces."),
        _ => format!("Write this camelCase name as plain words: {c}"),
    };
    sample(c, p, ws.join(" "))
}

fn gen_snake_to_camel(r: &mut Rng) -> Sample {
    let ws = identifier_words(r);
    let s = ws.join("_");
    let p = match r.below(3) {
        0 => format!("Convert the snake_case name '{s}' to camelCase."),
        1 => format!("Write the variable \"{s}\" in camelCase."),
        _ => format!("Rename this snake_case identifier in camelCase: {s}"),
    };
    sample(s, p, camel(&ws))
}

/// A number of `1..width` digits, so that padding it to `width` digits adds zeros.
fn gen_zero_pad(r: &mut Rng) -> Sample {
    let width = 2 + r.below(5);
    let digits = 1 + r.below(width - 1) as u32;
    let n = r.range(10i64.pow(digits - 1), 10i64.pow(digits) - 1);
    let p = match r.below(3) {
        0 => format!(
            "Write {n} with {} digits, adding leading zeros.",
            number_words(width as i64)
        ),
        1 => format!("Pad {n} with leading zeros to {width} digits."),
        _ => format!("Format the number {n} as a {width}-digit number with leading zeros."),
    };
    sample(format!("{n}:{width}"), p, format!("{n:0width$}"))
}

/// A whole number or one with one decimal, written with more decimal places than it has.
fn gen_fixed_decimals(r: &mut Rng) -> Sample {
    let whole = r.range(1, 999);
    let (x, places) = match r.below(2) {
        0 => (whole.to_string(), 1 + r.below(3)),
        _ => (format!("{whole}.{}", r.range(1, 9)), 2 + r.below(2)),
    };
    let answer = match x.split_once('.') {
        Some((a, b)) => format!("{a}.{b:0<places$}"),
        None => format!("{x}.{}", "0".repeat(places)),
    };
    let (word, s) = (
        number_words(places as i64),
        if places == 1 { "" } else { "s" },
    );
    let p = match r.below(3) {
        0 => format!("Write {x} with {word} decimal place{s}."),
        1 => format!("Show {x} with exactly {places} digit{s} after the decimal point."),
        _ => format!("Format the number {x} to {places} decimal place{s}, keeping the zeros."),
    };
    sample(format!("{x}:{places}"), p, answer)
}

const BRACKETS: [(&str, char, char); 4] = [
    ("parentheses", '(', ')'),
    ("square brackets", '[', ']'),
    ("curly braces", '{', '}'),
    ("angle brackets", '<', '>'),
];

fn gen_bracket_word(r: &mut Rng) -> Sample {
    let w = pick_wide_word(r);
    let b = r.below(BRACKETS.len());
    let (name, open, close) = BRACKETS[b];
    let p = match r.below(3) {
        0 => format!("Put the word '{w}' in {name}."),
        1 => format!("Wrap \"{w}\" in {name}."),
        _ => format!("Enclose this word in {name}: {w}"),
    };
    sample(format!("{w}:{b}"), p, format!("{open}{w}{close}"))
}

const EXTENSIONS: [&str; 10] = [
    "txt", "pdf", "csv", "png", "jpg", "doc", "mp3", "zip", "html", "json",
];

fn gen_add_extension(r: &mut Rng) -> Sample {
    let w = pick_wide_word(r);
    let e = *r.choose(&EXTENSIONS);
    let p = match r.below(3) {
        0 => format!("Add the file extension .{e} to the name '{w}'."),
        1 => format!("What is the file name \"{w}\" with the extension .{e} added?"),
        _ => format!("Append the extension .{e} to this file name: {w}"),
    };
    sample(format!("{w}.{e}"), p, format!("{w}.{e}"))
}

fn gen_first_letters(r: &mut Rng) -> Sample {
    let n = 2 + r.below(3);
    let w = loop {
        let w = pick_wide_word(r);
        if w.len() >= n + 2 {
            break w;
        }
    };
    let word = number_words(n as i64);
    let p = match r.below(3) {
        0 => format!("Abbreviate '{w}' to its first {word} letters."),
        1 => format!("What are the first {n} letters of \"{w}\"?"),
        _ => format!("Write only the first {word} letters of this word: {w}"),
    };
    sample(format!("{w}:{n}"), p, &w[..n])
}

/// A person's name: a given name, sometimes a second one, and a family name.
fn person(r: &mut Rng, middle: bool) -> Vec<&'static str> {
    let first = *r.choose(&FIRST_NAMES);
    let mut name = vec![first];
    if middle {
        let second = loop {
            let m = *r.choose(&FIRST_NAMES);
            if m != first {
                break m;
            }
        };
        name.push(second);
    }
    name.push(*r.choose(&SURNAMES));
    name
}

fn gen_initials(r: &mut Rng) -> Sample {
    let middle = r.below(2) == 0;
    let name = person(r, middle).join(" ");
    let answer: String = name.split(' ').map(|w| format!("{}.", &w[..1])).collect();
    let p = match r.below(3) {
        0 => format!("Give the initials of '{name}', with a dot after each letter."),
        1 => format!("What are the initials of \"{name}\"? Write them with dots, like J.R."),
        _ => format!("Write this name as initials with dots: {name}"),
    };
    sample(name, p, answer)
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{examples, numbers_in, quoted};

    /// The text a prompt works on: quoted, or else after its last colon.
    fn content(prompt: &str) -> String {
        quoted(prompt).unwrap_or_else(|| prompt.rsplit(": ").next().unwrap().to_string())
    }

    /// `green apple tree` from `greenAppleTree`, read letter by letter.
    fn split_camel(c: &str) -> String {
        let mut out = String::new();
        for ch in c.chars() {
            if ch.is_ascii_uppercase() {
                out.push(' ');
            }
            out.push(ch.to_ascii_lowercase());
        }
        out
    }

    /// A number written as a word, `one` to `six`, if the prompt has one.
    fn small_number_word(prompt: &str) -> Option<usize> {
        let words = ["one", "two", "three", "four", "five", "six"];
        prompt
            .split(|c: char| !c.is_ascii_alphabetic())
            .find_map(|w| words.iter().position(|x| *x == w).map(|i| i + 1))
    }

    #[test]
    fn identifier_styles_follow_from_the_prompts() {
        for ex in examples("camel_to_snake") {
            let words = split_camel(&content(&ex.prompt));
            assert!(words.contains(' '), "{ex:?}");
            assert_eq!(ex.answer, words.replace(' ', "_"), "{ex:?}");
        }
        for ex in examples("camel_to_words") {
            let c = content(&ex.prompt);
            assert!(c.chars().all(|ch| ch.is_ascii_alphabetic()), "{ex:?}");
            assert_eq!(ex.answer, split_camel(&c), "{ex:?}");
        }
        for ex in examples("snake_to_camel") {
            let s = content(&ex.prompt);
            assert!(s.contains('_'), "{ex:?}");
            assert_eq!(split_camel(&ex.answer), s.replace('_', " "), "{ex:?}");
            assert!(ex.answer.starts_with(|c: char| c.is_ascii_lowercase()));
        }
    }

    #[test]
    fn numbers_are_padded_as_asked() {
        for ex in examples("zero_pad") {
            let xs = numbers_in(&ex.prompt);
            let n = xs[0];
            let width = match xs.get(1) {
                Some(&w) => w as usize,
                None => small_number_word(&ex.prompt).unwrap(),
            };
            assert!(n.to_string().len() < width, "{ex:?}");
            assert_eq!(ex.answer.len(), width, "{ex:?}");
            assert_eq!(ex.answer.trim_start_matches('0'), n.to_string(), "{ex:?}");
        }
        for ex in examples("fixed_decimals") {
            let x = ex
                .prompt
                .split_whitespace()
                .map(|t| t.trim_end_matches(['.', ',']))
                .find(|t| t.starts_with(|c: char| c.is_ascii_digit()))
                .unwrap();
            let places = small_number_word(&ex.prompt)
                .unwrap_or_else(|| *numbers_in(&ex.prompt).last().unwrap() as usize);
            let value: f64 = x.parse().unwrap();
            assert_eq!(ex.answer, format!("{value:.places$}"), "{ex:?}");
            assert!(ex.answer.len() > x.len(), "{ex:?}");
        }
    }

    #[test]
    fn words_are_wrapped_extended_and_cut_as_asked() {
        let pairs = [
            ("in parentheses", "(", ")"),
            ("in square brackets", "[", "]"),
            ("in curly braces", "{", "}"),
            ("in angle brackets", "<", ">"),
        ];
        for ex in examples("bracket_word") {
            let w = content(&ex.prompt);
            let (_, open, close) = pairs
                .iter()
                .find(|(name, _, _)| ex.prompt.contains(name))
                .unwrap();
            assert_eq!(ex.answer, format!("{open}{w}{close}"), "{ex:?}");
        }
        for ex in examples("add_extension") {
            let ext = ex
                .prompt
                .split_whitespace()
                .find(|t| t.starts_with('.'))
                .unwrap();
            let w = content(&ex.prompt);
            assert_eq!(ex.answer, format!("{w}{ext}"), "{ex:?}");
        }
        for ex in examples("first_letters") {
            let w = content(&ex.prompt);
            let n =
                small_number_word(&ex.prompt).unwrap_or_else(|| numbers_in(&ex.prompt)[0] as usize);
            assert!(w.len() > n, "{ex:?}");
            assert_eq!(ex.answer, w.chars().take(n).collect::<String>(), "{ex:?}");
        }
    }

    #[test]
    fn names_are_shortened_as_asked() {
        for ex in examples("initials") {
            let name = content(&ex.prompt);
            let want: String = name
                .split_whitespace()
                .map(|w| format!("{}.", w.chars().next().unwrap()))
                .collect();
            assert_eq!(ex.answer, want, "{ex:?}");
        }
    }
}
