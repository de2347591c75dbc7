//! The `encoding` family (suite version 2): numbers written in binary and hexadecimal, and
//! digits spelt out as words.

use super::draw::*;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "binary_to_decimal",
        "encoding",
        Scoring::Exact,
        Plain(gen_binary_to_decimal),
    ),
    spec(
        "decimal_to_binary",
        "encoding",
        Scoring::Exact,
        Plain(gen_decimal_to_binary),
    ),
    spec(
        "hex_to_decimal",
        "encoding",
        Scoring::Exact,
        Plain(gen_hex_to_decimal),
    ),
    spec(
        "decimal_to_hex",
        "encoding",
        Scoring::Exact,
        Plain(gen_decimal_to_hex),
    ),
    spec(
        "count_ones",
        "encoding",
        Scoring::Exact,
        Plain(gen_count_ones),
    ),
    spec(
        "digits_to_words",
        "encoding",
        Scoring::Exact,
        Plain(gen_digits_to_words),
    ),
    spec(
        "next_binary",
        "encoding",
        Scoring::Exact,
        Plain(gen_next_binary),
    ),
];

const DIGITS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

fn gen_binary_to_decimal(r: &mut Rng) -> Sample {
    let n = r.range(2, 511);
    let q = match r.below(3) {
        0 => format!("Convert binary {n:b} to decimal."),
        1 => format!("What is the binary number {n:b} in decimal?"),
        _ => format!("{n:b} is written in base 2. What is it in base 10?"),
    };
    sample(format!("{n}"), q, n)
}

fn gen_decimal_to_binary(r: &mut Rng) -> Sample {
    let n = r.range(2, 511);
    let q = match r.below(3) {
        0 => format!("Convert {n} to binary."),
        1 => format!("What is {n} written in binary?"),
        _ => format!("Write the number {n} in base 2."),
    };
    sample(format!("{n}"), q, format!("{n:b}"))
}

fn gen_hex_to_decimal(r: &mut Rng) -> Sample {
    let n = r.range(16, 1023);
    let q = match r.below(3) {
        0 => format!("Convert hexadecimal {n:X} to decimal."),
        1 => format!("What is 0x{n:X} in decimal?"),
        _ => format!("The hex number {n:X} is what in base 10?"),
    };
    sample(format!("{n}"), q, n)
}

fn gen_decimal_to_hex(r: &mut Rng) -> Sample {
    let n = r.range(16, 1023);
    let q = match r.below(3) {
        0 => format!("Convert {n} to hexadecimal."),
        1 => format!("What is {n} in hex? Use capital letters."),
        _ => format!("Write {n} in base 16."),
    };
    sample(format!("{n}"), q, format!("{n:X}"))
}

fn gen_count_ones(r: &mut Rng) -> Sample {
    let n = r.range(2, 1023);
    let q = match r.below(3) {
        0 => format!("How many 1s are in the binary number {n:b}?"),
        1 => format!("Count the ones in {n:b}."),
        _ => format!("How many digits of {n:b} are 1?"),
    };
    sample(format!("{n}"), q, n.count_ones())
}

fn gen_digits_to_words(r: &mut Rng) -> Sample {
    let len = 3 + r.below(2);
    let digits: Vec<usize> = (0..len).map(|_| r.below(10)).collect();
    let shown: String = digits.iter().map(|d| d.to_string()).collect();
    let q = match r.below(3) {
        0 => format!("Read the digits {shown} out as words, one word per digit."),
        1 => format!("Spell out each digit of {shown} as a word."),
        _ => format!("Write the code {shown} digit by digit in words."),
    };
    let words: Vec<&str> = digits.iter().map(|&d| DIGITS[d]).collect();
    sample(shown, q, words.join(" "))
}

fn gen_next_binary(r: &mut Rng) -> Sample {
    let n = r.range(1, 510);
    let q = match r.below(3) {
        0 => format!("Counting in binary, what comes after {n:b}?"),
        1 => format!("What is binary {n:b} plus one, in binary?"),
        _ => format!("Add 1 to the binary number {n:b}. Answer in binary."),
    };
    sample(format!("{n}"), q, format!("{:b}", n + 1))
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{numbers_in, task};
    use super::DIGITS;

    /// Each answer read back: binary and hex parse to the question's number, digits spell it.
    #[test]
    fn answers_encode_the_question() {
        // The binary number is the question's last number ("Add 1 to 101").
        let binary = |p: &str| {
            let b = *numbers_in(p).last().unwrap();
            i64::from_str_radix(&b.to_string(), 2).unwrap()
        };
        let hex = |p: &str| {
            p.split_whitespace()
                .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric()))
                .map(|w| w.strip_prefix("0x").unwrap_or(w))
                .find(|w| {
                    w.chars()
                        .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
                })
                .map(|w| i64::from_str_radix(w, 16).unwrap())
                .unwrap()
        };
        let parse = |a: &str, radix| i64::from_str_radix(a, radix).unwrap();
        let both = |name: &str| {
            let t = task(name);
            t.train.into_iter().chain(t.test).collect::<Vec<_>>()
        };
        for ex in both("binary_to_decimal").iter() {
            let first = numbers_in(&ex.prompt)[0];
            assert_eq!(
                ex.answer,
                parse(&first.to_string(), 2).to_string(),
                "{}",
                ex.prompt
            );
        }
        for ex in both("decimal_to_binary").iter() {
            assert_eq!(
                parse(&ex.answer, 2),
                numbers_in(&ex.prompt)[0],
                "{}",
                ex.prompt
            );
        }
        for ex in both("hex_to_decimal").iter() {
            assert_eq!(ex.answer, hex(&ex.prompt).to_string(), "{}", ex.prompt);
        }
        for ex in both("decimal_to_hex").iter() {
            assert_eq!(
                parse(&ex.answer, 16),
                numbers_in(&ex.prompt)[0],
                "{}",
                ex.prompt
            );
            assert_eq!(ex.answer, ex.answer.to_uppercase());
        }
        for ex in both("count_ones").iter() {
            let b = numbers_in(&ex.prompt).into_iter().find(|&n| n > 1).unwrap();
            let ones = b.to_string().chars().filter(|&c| c == '1').count();
            assert_eq!(ex.answer, ones.to_string(), "{}", ex.prompt);
        }
        for ex in both("next_binary").iter() {
            assert_eq!(
                parse(&ex.answer, 2),
                binary(&ex.prompt) + 1,
                "{}",
                ex.prompt
            );
        }
        for ex in both("digits_to_words").iter() {
            let spelt: String = ex
                .answer
                .split(' ')
                .map(|w| DIGITS.iter().position(|d| *d == w).unwrap().to_string())
                .collect();
            assert!(ex.prompt.contains(&format!(" {spelt} ")), "{}", ex.prompt);
        }
    }
}
