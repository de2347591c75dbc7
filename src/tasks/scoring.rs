//! Scoring a model's output against an example: strict (the paper's protocol, invalid output
//! is wrong) and lenient (the right answer anywhere in the first sentence).

use super::{Example, Scoring};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
