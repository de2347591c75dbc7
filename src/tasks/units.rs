//! The `units` family: Roman numerals, money, percentages and metric units into the larger unit.

use super::draw::*;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "metric_to_larger",
        "units",
        Scoring::Exact,
        Plain(gen_metric_to_larger),
    ),
    spec(
        "roman_to_number",
        "units",
        Scoring::Exact,
        Plain(gen_roman_to_number),
    ),
    spec(
        "number_to_roman",
        "units",
        Scoring::Exact,
        Plain(gen_number_to_roman),
    ),
    spec(
        "dollars_to_cents",
        "units",
        Scoring::Exact,
        Plain(gen_dollars_to_cents),
    ),
    spec(
        "cents_to_dollars",
        "units",
        Scoring::Exact,
        Plain(gen_cents_to_dollars),
    ),
    spec(
        "percent_to_decimal",
        "units",
        Scoring::Exact,
        Plain(gen_percent_to_decimal),
    ),
    spec(
        "compare_units",
        "units",
        Scoring::Choice,
        Plain(gen_compare_units),
    ),
];

/// `x / f` for a power of ten `f`, in plain decimal form without trailing zeros: `2.35`, `0.5`, `7`.
pub(super) fn decimal(x: i64, f: i64) -> String {
    let places = f.to_string().len() - 1;
    let s = format!("{}.{:0width$}", x / f, x % f, width = places);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A number in `1..=3999` in Roman numerals.
pub(super) fn roman(mut n: i64) -> String {
    const TABLE: [(i64, &str); 13] = [
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    ];
    let mut out = String::new();
    for (v, s) in TABLE {
        while n >= v {
            out.push_str(s);
            n -= v;
        }
    }
    out
}

fn gen_metric_to_larger(r: &mut Rng) -> Sample {
    const UNITS: [(&str, &str, i64); 4] = [
        ("centimeters", "meters", 100),
        ("grams", "kilograms", 1000),
        ("meters", "kilometers", 1000),
        ("milliliters", "liters", 1000),
    ];
    let u = r.below(UNITS.len());
    let (from, to, f) = UNITS[u];
    // Whole multiples of 10 (of 50 for thousands) keep the answer to two decimals.
    let x = if f == 100 {
        10 * r.range(1, 150)
    } else {
        50 * r.range(1, 120)
    };
    let p = match r.below(3) {
        0 => format!("Convert {x} {from} to {to}."),
        1 => format!("How many {to} are in {x} {from}?"),
        _ => format!("{x} {from} is how many {to}?"),
    };
    sample(format!("{u}:{x}"), p, decimal(x, f))
}

fn gen_roman_to_number(r: &mut Rng) -> Sample {
    let x = r.range(1, 999);
    let s = roman(x);
    let p = match r.below(3) {
        0 => format!("What number is the Roman numeral {s}?"),
        1 => format!("Convert the Roman numeral {s} to an ordinary number."),
        _ => format!("Write {s} in Arabic numerals."),
    };
    sample(x.to_string(), p, x)
}

fn gen_number_to_roman(r: &mut Rng) -> Sample {
    let x = r.range(1, 999);
    let p = match r.below(3) {
        0 => format!("Write {x} in Roman numerals."),
        1 => format!("What is {x} as a Roman numeral?"),
        _ => format!("Convert the number {x} to Roman numerals."),
    };
    sample(x.to_string(), p, roman(x))
}

fn gen_dollars_to_cents(r: &mut Rng) -> Sample {
    let c = r.range(101, 9999);
    let d = format!("${}.{:02}", c / 100, c % 100);
    let p = match r.below(3) {
        0 => format!("How many cents are in {d}?"),
        1 => format!("Convert {d} to cents."),
        _ => format!("{d} is how many cents?"),
    };
    sample(c.to_string(), p, c)
}

fn gen_cents_to_dollars(r: &mut Rng) -> Sample {
    let c = r.range(101, 9999);
    let p = match r.below(3) {
        0 => format!("Write {c} cents in dollars, like $1.25."),
        1 => format!("How much is {c} cents in dollars and cents ($0.00)?"),
        _ => format!("Convert {c} cents to dollars, written with a $ sign."),
    };
    sample(c.to_string(), p, format!("${}.{:02}", c / 100, c % 100))
}

fn gen_percent_to_decimal(r: &mut Rng) -> Sample {
    let x = r.range(1, 999);
    let p = match r.below(3) {
        0 => format!("Write {x}% as a decimal."),
        1 => format!("What is {x} percent as a decimal number?"),
        _ => format!("Convert {x}% to a decimal."),
    };
    sample(x.to_string(), p, decimal(x, 100))
}

fn gen_compare_units(r: &mut Rng) -> Sample {
    let (big, small, f, q) = match r.below(2) {
        0 => ("meters", "centimeters", 100, "Which is longer?"),
        _ => ("kilograms", "grams", 1000, "Which is heavier?"),
    };
    let a = r.range(1, 9);
    let b = loop {
        let b = f / 10 * r.range(1, 99);
        if b != a * f {
            break b;
        }
    };
    let mut choices = vec![format!("{a} {big}"), format!("{b} {small}")];
    let mut right = if a * f > b { 0 } else { 1 };
    if r.below(2) == 0 {
        choices.swap(0, 1);
        right = 1 - right;
    }
    let q = match r.below(2) {
        0 => q.to_string(),
        _ => format!("{q} Pick one."),
    };
    choice_sample(join(&choices), &q, choices, right, r)
}

#[cfg(test)]
mod tests {
    use super::super::choice_index;
    use super::super::tests_support::{numbers_in, task};
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(decimal(235, 100), "2.35");
        assert_eq!(decimal(250, 100), "2.5");
        assert_eq!(decimal(700, 100), "7");
        assert_eq!(decimal(5, 100), "0.05");
        assert_eq!(decimal(1050, 1000), "1.05");
        assert_eq!(roman(4), "IV");
        assert_eq!(roman(14), "XIV");
        assert_eq!(roman(499), "CDXCIX");
        assert_eq!(roman(944), "CMXLIV");
    }

    /// A Roman numeral read without the table that writes them.
    fn read_roman(s: &str) -> i64 {
        let v = |c: char| match c {
            'I' => 1,
            'V' => 5,
            'X' => 10,
            'L' => 50,
            'C' => 100,
            'D' => 500,
            'M' => 1000,
            _ => panic!("{c}"),
        };
        let xs: Vec<i64> = s.chars().map(v).collect();
        (0..xs.len())
            .map(|i| match xs.get(i + 1) {
                Some(&n) if n > xs[i] => -xs[i],
                _ => xs[i],
            })
            .sum()
    }

    #[test]
    fn answers_follow_from_the_prompts() {
        for ex in task("number_to_roman").train.iter() {
            let x = numbers_in(&ex.prompt)[0];
            assert_eq!(read_roman(&ex.answer), x, "{ex:?}");
        }
        for ex in task("roman_to_number").train.iter() {
            let s = ex
                .prompt
                .split(|c: char| !c.is_ascii_alphabetic())
                .find(|w| !w.is_empty() && w.chars().all(|c| "IVXLCDM".contains(c)))
                .unwrap();
            assert_eq!(ex.answer, read_roman(s).to_string(), "{ex:?}");
        }
        for ex in task("dollars_to_cents").train.iter() {
            let xs = numbers_in(&ex.prompt);
            assert_eq!(ex.answer, (xs[0] * 100 + xs[1]).to_string(), "{ex:?}");
        }
        for ex in task("compare_units").train.iter() {
            let size = |c: &str| {
                let n = numbers_in(c)[0];
                if c.ends_with(" meters") {
                    n * 100
                } else if c.ends_with(" kilograms") {
                    n * 1000
                } else {
                    n
                }
            };
            let right = choice_index(&ex.answer).unwrap();
            let other = 1 - right;
            assert!(
                size(&ex.choices[right]) > size(&ex.choices[other]),
                "{ex:?}"
            );
        }
    }
}
