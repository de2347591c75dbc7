//! The `cipher` family: simple letter codes (shift by one, A=1 numbering), spelling out and reversing.

use super::counting::is_vowel;
use super::draw::*;
use super::strings::{letter, pick_wide_word};
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "shift_letters",
        "cipher",
        Scoring::Exact,
        Plain(gen_shift_letters),
    ),
    spec(
        "letters_to_numbers",
        "cipher",
        Scoring::Exact,
        Plain(gen_letters_to_numbers),
    ),
    spec(
        "numbers_to_letters",
        "cipher",
        Scoring::Exact,
        Plain(gen_numbers_to_letters),
    ),
    spec(
        "spell_with_dashes",
        "cipher",
        Scoring::Exact,
        Plain(gen_spell_with_dashes),
    ),
    spec(
        "letters_to_word",
        "cipher",
        Scoring::Exact,
        Plain(gen_letters_to_word),
    ),
    spec(
        "reverse_digits",
        "cipher",
        Scoring::Exact,
        Plain(gen_reverse_digits),
    ),
    spec(
        "remove_vowels",
        "cipher",
        Scoring::Exact,
        Plain(gen_remove_vowels),
    ),
];

/// `n` random letter indices (`0` for `a`) below `top`.
fn letter_indices(r: &mut Rng, n: usize, top: usize) -> Vec<usize> {
    (0..n).map(|_| r.below(top)).collect()
}

fn spaced(ls: &[usize]) -> String {
    ls.iter()
        .map(|&i| letter(i).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn gen_shift_letters(r: &mut Rng) -> Sample {
    // No `z`: whether it wraps round to `a` is left unsaid.
    let n = 3 + r.below(2);
    let ls = letter_indices(r, n, 25);
    let s = spaced(&ls);
    let p = match r.below(3) {
        0 => format!("Shift each letter one place forward in the alphabet: {s}"),
        1 => format!("Replace every letter of '{s}' with the letter after it."),
        _ => format!("Encode \"{s}\" by moving each letter up by one (a becomes b)."),
    };
    let shifted: Vec<usize> = ls.iter().map(|i| i + 1).collect();
    sample(s, p, spaced(&shifted))
}

fn gen_letters_to_numbers(r: &mut Rng) -> Sample {
    let n = 2 + r.below(2);
    let ls = letter_indices(r, n, 26);
    let up: Vec<String> = ls
        .iter()
        .map(|&i| letter(i).to_ascii_uppercase().to_string())
        .collect();
    let l = up.join(", ");
    let p = match r.below(3) {
        0 => format!("With A=1, B=2, ..., Z=26, turn these letters into numbers: {l}"),
        1 => format!("Using the code A=1, B=2 and so on, encode {l}."),
        _ => format!("What are the alphabet positions of the letters {l}?"),
    };
    let nums: Vec<usize> = ls.iter().map(|i| i + 1).collect();
    sample(l, p, join(&nums))
}

fn gen_numbers_to_letters(r: &mut Rng) -> Sample {
    let n = 2 + r.below(2);
    let ls = letter_indices(r, n, 26);
    let nums: Vec<usize> = ls.iter().map(|i| i + 1).collect();
    let l = join(&nums);
    let p = match r.below(3) {
        0 => format!("With A=1, B=2, ..., Z=26, which letters are {l}?"),
        1 => format!("Decode {l} using the code A=1, B=2 and so on."),
        _ => format!("Which letters of the alphabet are at positions {l}?"),
    };
    let up: Vec<String> = ls
        .iter()
        .map(|&i| letter(i).to_ascii_uppercase().to_string())
        .collect();
    sample(l, p, up.join(", "))
}

fn gen_spell_with_dashes(r: &mut Rng) -> Sample {
    let w = pick_wide_word(r);
    let p = match r.below(3) {
        0 => format!("Spell the word '{w}' with dashes between the letters."),
        1 => format!("Write \"{w}\" letter by letter, joined by hyphens."),
        _ => format!("Put a dash between each letter of {w}."),
    };
    let spelt: Vec<String> = w.chars().map(|c| c.to_string()).collect();
    sample(w.to_string(), p, spelt.join("-"))
}

fn gen_letters_to_word(r: &mut Rng) -> Sample {
    let w = pick_wide_word(r);
    let l = join(&w.chars().collect::<Vec<_>>());
    let p = match r.below(3) {
        0 => format!("Join the letters {l} into one word."),
        1 => format!("What word do these letters spell: {l}?"),
        _ => format!("Put the letters {l} together, in order, to make a word."),
    };
    sample(w.to_string(), p, w)
}

fn gen_reverse_digits(r: &mut Rng) -> Sample {
    let d = 3 + r.below(3) as u32;
    let x = loop {
        let x = r.range(10i64.pow(d - 1), 10i64.pow(d) - 1);
        if x % 10 != 0 {
            break x;
        }
    };
    let p = match r.below(3) {
        0 => format!("Reverse the digits of {x}."),
        1 => format!("Write the number {x} backwards."),
        _ => format!("What number do you get by reading {x} from right to left?"),
    };
    sample(
        x.to_string(),
        p,
        x.to_string().chars().rev().collect::<String>(),
    )
}

fn gen_remove_vowels(r: &mut Rng) -> Sample {
    // Words with a `y` are left out: whether it counts as a vowel is ambiguous.
    let w = loop {
        let w = pick_wide_word(r);
        if !w.contains('y') {
            break w;
        }
    };
    let p = match r.below(3) {
        0 => format!("Remove the vowels from the word '{w}'."),
        1 => format!("Write \"{w}\" without its vowels (a, e, i, o, u)."),
        _ => format!("Delete every vowel in {w}."),
    };
    let rest: String = w.chars().filter(|&c| !is_vowel(c)).collect();
    sample(w.to_string(), p, rest)
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{numbers_in, task};

    #[test]
    fn answers_follow_from_the_prompts() {
        for ex in task("numbers_to_letters").train.iter() {
            // The listed numbers, without the code's own "A=1, B=2".
            let p = &ex.prompt;
            let list = if let Some((_, rest)) = p.split_once("Decode ") {
                rest.split(" using").next().unwrap()
            } else if let Some((_, rest)) = p.rsplit_once("positions ") {
                rest
            } else {
                p.rsplit_once("are ").unwrap().1
            };
            let want: Vec<String> = numbers_in(list)
                .into_iter()
                .map(|n| ((b'A' + n as u8 - 1) as char).to_string())
                .collect();
            assert_eq!(ex.answer, want.join(", "), "{ex:?}");
        }
        for ex in task("reverse_digits").train.iter() {
            let x = numbers_in(&ex.prompt)[0].to_string();
            assert_eq!(ex.answer, x.chars().rev().collect::<String>(), "{ex:?}");
        }
        for ex in task("shift_letters").train.iter() {
            let body = ex.prompt.rsplit(": ").next().unwrap();
            let src: Vec<char> = if ex.prompt.contains(": ") {
                body.split(' ').map(|s| s.chars().next().unwrap()).collect()
            } else {
                let q = super::super::tests_support::quoted(&ex.prompt).unwrap();
                q.split(' ').map(|s| s.chars().next().unwrap()).collect()
            };
            let want: Vec<String> = src
                .iter()
                .map(|&c| ((c as u8 + 1) as char).to_string())
                .collect();
            assert_eq!(ex.answer, want.join(" "), "{ex:?}");
        }
    }
}
