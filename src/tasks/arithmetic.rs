//! The `arithmetic` family: sums, doubling, counting on, months and metric units.

use super::draw::*;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
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
];

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

// --- time and units

pub(super) const MONTHS: [&str; 12] = [
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
