//! The `numbers` family: digits, rounding, halving, ordinals and numbers written in words.

use super::draw::*;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "tens_digit",
        "numbers",
        Scoring::Exact,
        Plain(gen_tens_digit),
    ),
    spec(
        "last_digit",
        "numbers",
        Scoring::Exact,
        Plain(gen_last_digit),
    ),
    spec(
        "round_to_ten",
        "numbers",
        Scoring::Exact,
        Plain(gen_round_to_ten),
    ),
    spec("halve", "numbers", Scoring::Exact, Plain(gen_halve)),
    spec(
        "words_to_number",
        "numbers",
        Scoring::Exact,
        Plain(gen_words_to_number),
    ),
    spec("times_ten", "numbers", Scoring::Exact, Plain(gen_times_ten)),
    spec("ten_more", "numbers", Scoring::Exact, Plain(gen_ten_more)),
    spec("digit_sum", "numbers", Scoring::Exact, Plain(gen_digit_sum)),
    spec(
        "ordinal_number",
        "numbers",
        Scoring::Exact,
        Plain(gen_ordinal_number),
    ),
    spec(
        "thousands_separator",
        "numbers",
        Scoring::Exact,
        Plain(gen_thousands_separator),
    ),
];

/// `1st`, `2nd`, `3rd`, `4th`, ..., `11th`, `12th`, `13th`, ..., `21st`.
pub(super) fn ordinal(n: i64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];

const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

/// A number in `1..=999` in English words, American style: `three hundred forty-seven`.
pub(super) fn number_words(n: i64) -> String {
    let n = n as usize;
    let below_100 = |x: usize| match x {
        0..=19 => ONES[x].to_string(),
        _ if x.is_multiple_of(10) => TENS[x / 10].to_string(),
        _ => format!("{}-{}", TENS[x / 10], ONES[x % 10]),
    };
    match (n / 100, n % 100) {
        (0, r) => below_100(r),
        (h, 0) => format!("{} hundred", ONES[h]),
        (h, r) => format!("{} hundred {}", ONES[h], below_100(r)),
    }
}

fn gen_tens_digit(r: &mut Rng) -> Sample {
    let x = r.range(100, 99999);
    let p = match r.below(3) {
        0 => format!("What is the tens digit of {x}?"),
        1 => format!("Which digit is in the tens place of {x}?"),
        _ => format!("In the number {x}, what digit stands for the tens?"),
    };
    sample(x.to_string(), p, x / 10 % 10)
}

fn gen_last_digit(r: &mut Rng) -> Sample {
    let x = r.range(100, 99999);
    let p = match r.below(3) {
        0 => format!("What is the last digit of {x}?"),
        1 => format!("Which digit is in the ones place of {x}?"),
        _ => format!("What digit does the number {x} end with?"),
    };
    sample(x.to_string(), p, x % 10)
}

fn gen_round_to_ten(r: &mut Rng) -> Sample {
    // Numbers ending in 5 are left out: rounding them up is only one convention.
    let x = loop {
        let x = r.range(11, 999);
        if x % 10 != 5 && x % 10 != 0 {
            break x;
        }
    };
    let p = match r.below(3) {
        0 => format!("Round {x} to the nearest ten."),
        1 => format!("What is {x} rounded to the nearest 10?"),
        _ => format!("Round the number {x} to the closest multiple of ten."),
    };
    sample(x.to_string(), p, (x + 5) / 10 * 10)
}

fn gen_halve(r: &mut Rng) -> Sample {
    let x = 2 * r.range(6, 499);
    let p = match r.below(3) {
        0 => format!("What is half of {x}?"),
        1 => format!("Divide {x} by two."),
        _ => format!("What do you get when you halve {x}?"),
    };
    sample(x.to_string(), p, x / 2)
}

fn gen_words_to_number(r: &mut Rng) -> Sample {
    let x = r.range(1, 999);
    let w = number_words(x);
    let p = match r.below(3) {
        0 => format!("Write '{w}' as a number."),
        1 => format!("What is \"{w}\" in digits?"),
        _ => format!("Convert to digits: {w}"),
    };
    sample(x.to_string(), p, x)
}

fn gen_times_ten(r: &mut Rng) -> Sample {
    let f = *r.choose(&[10i64, 100]);
    let x = r.range(2, 999);
    let p = match r.below(3) {
        0 => format!("What is {x} times {f}?"),
        1 => format!("Multiply {x} by {f}."),
        _ => format!("What is {f} x {x}?"),
    };
    sample(format!("{x}*{f}"), p, x * f)
}

fn gen_ten_more(r: &mut Rng) -> Sample {
    let x = r.range(1, 989);
    let p = match r.below(3) {
        0 => format!("What is 10 more than {x}?"),
        1 => format!("Add ten to {x}."),
        _ => format!("Which number is ten greater than {x}?"),
    };
    sample(x.to_string(), p, x + 10)
}

fn gen_digit_sum(r: &mut Rng) -> Sample {
    let x = r.range(100, 999);
    let p = match r.below(3) {
        0 => format!("What is the sum of the digits of {x}?"),
        1 => format!("Add up the digits of {x}."),
        _ => format!("What do the digits of {x} add up to?"),
    };
    sample(x.to_string(), p, x / 100 + x / 10 % 10 + x % 10)
}

fn gen_ordinal_number(r: &mut Rng) -> Sample {
    let x = r.range(1, 999);
    let p = match r.below(3) {
        0 => format!("Write {x} as an ordinal number, like 4th."),
        1 => format!("What is the ordinal form of {x}?"),
        _ => format!("Turn {x} into an ordinal (1st, 2nd, ...)."),
    };
    sample(x.to_string(), p, ordinal(x))
}

/// A number with commas between groups of three digits: `4,827,193`.
pub(super) fn with_commas(x: i64) -> String {
    let s = x.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn gen_thousands_separator(r: &mut Rng) -> Sample {
    let d = 4 + r.below(4) as u32;
    let x = r.range(10i64.pow(d - 1), 10i64.pow(d) - 1);
    let p = match r.below(3) {
        0 => format!("Write {x} with commas between the thousands."),
        1 => format!("Add thousands separators to {x}."),
        _ => format!("Format the number {x} with commas."),
    };
    sample(x.to_string(), p, with_commas(x))
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{numbers_in, quoted, task};
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(ordinal(1), "1st");
        assert_eq!(ordinal(12), "12th");
        assert_eq!(ordinal(22), "22nd");
        assert_eq!(ordinal(113), "113th");
        assert_eq!(ordinal(103), "103rd");
        assert_eq!(number_words(7), "seven");
        assert_eq!(number_words(40), "forty");
        assert_eq!(number_words(347), "three hundred forty-seven");
        assert_eq!(number_words(900), "nine hundred");
        assert_eq!(number_words(915), "nine hundred fifteen");
        assert_eq!(with_commas(1234), "1,234");
        assert_eq!(with_commas(4827193), "4,827,193");
        assert_eq!(with_commas(123456), "123,456");
    }

    #[test]
    fn answers_follow_from_the_prompts() {
        for ex in task("tens_digit").train.iter() {
            let x = numbers_in(&ex.prompt)[0].to_string();
            let want = &x[x.len() - 2..x.len() - 1];
            assert_eq!(ex.answer, want, "{ex:?}");
        }
        for ex in task("round_to_ten").train.iter() {
            let x = numbers_in(&ex.prompt)[0];
            let (down, up) = (x - x % 10, x - x % 10 + 10);
            let want = if x - down < up - x { down } else { up };
            assert_eq!(ex.answer, want.to_string(), "{ex:?}");
        }
        for ex in task("words_to_number").train.iter() {
            let w = quoted(&ex.prompt)
                .unwrap_or_else(|| ex.prompt.trim_start_matches("Convert to digits: ").into());
            let x: i64 = ex.answer.parse().unwrap();
            assert_eq!(number_words(x), w, "{ex:?}");
        }
        for ex in task("thousands_separator").train.iter() {
            let x = numbers_in(&ex.prompt)[0];
            let back: String = ex.answer.chars().filter(|c| *c != ',').collect();
            assert_eq!(back, x.to_string(), "{ex:?}");
            assert!(ex.answer.split(',').skip(1).all(|g| g.len() == 3), "{ex:?}");
        }
        for ex in task("digit_sum").train.iter() {
            let x = numbers_in(&ex.prompt)[0].to_string();
            let s: u32 = x.chars().map(|c| c.to_digit(10).unwrap()).sum();
            assert_eq!(ex.answer, s.to_string(), "{ex:?}");
        }
    }
}
