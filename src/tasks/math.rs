//! The `math` family (suite version 5): one-step arithmetic on small whole numbers that
//! the earlier families leave out: subtraction, multiplying by a digit, exact division,
//! remainders, the average and the difference of two numbers, a round percentage, the odd
//! number before a number, a hundred more, ten less and rounding to the nearest hundred.

use super::draw::*;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec("subtract", "math", Scoring::Exact, Plain(gen_subtract)),
    spec(
        "multiply_by_digit",
        "math",
        Scoring::Exact,
        Plain(gen_multiply_by_digit),
    ),
    spec("divide", "math", Scoring::Exact, Plain(gen_divide)),
    spec("remainder", "math", Scoring::Exact, Plain(gen_remainder)),
    spec(
        "average_of_two",
        "math",
        Scoring::Exact,
        Plain(gen_average_of_two),
    ),
    spec(
        "difference_between",
        "math",
        Scoring::Exact,
        Plain(gen_difference_between),
    ),
    spec("percent_of", "math", Scoring::Exact, Plain(gen_percent_of)),
    spec(
        "previous_odd",
        "math",
        Scoring::Exact,
        Plain(gen_previous_odd),
    ),
    spec(
        "hundred_more",
        "math",
        Scoring::Exact,
        Plain(gen_hundred_more),
    ),
    spec("ten_less", "math", Scoring::Exact, Plain(gen_ten_less)),
    spec(
        "round_to_hundred",
        "math",
        Scoring::Exact,
        Plain(gen_round_to_hundred),
    ),
];

/// Two-digit numbers, the larger first: about 3,900 pairs.
fn gen_subtract(r: &mut Rng) -> Sample {
    let a = r.range(11, 99);
    let b = r.range(10, a - 1);
    let p = match r.below(3) {
        0 => format!("What is {a} - {b}?"),
        1 => format!("Subtract {b} from {a}."),
        _ => format!("Calculate {a} minus {b}."),
    };
    sample(format!("{a}-{b}"), p, a - b)
}

/// A two-digit number times a digit from 2 to 9: 712 products.
fn gen_multiply_by_digit(r: &mut Rng) -> Sample {
    let (a, b) = (r.range(11, 99), r.range(2, 9));
    let p = match r.below(3) {
        0 => format!("What is {a} x {b}?"),
        1 => format!("Multiply {a} by {b}."),
        _ => format!("What is {b} times {a}?"),
    };
    sample(format!("{a}*{b}"), p, a * b)
}

/// A division with no remainder: a digit from 2 to 9 into a multiple of it (784 pairs).
fn gen_divide(r: &mut Rng) -> Sample {
    let (d, q) = (r.range(2, 9), r.range(2, 99));
    let a = d * q;
    let p = match r.below(3) {
        0 => format!("What is {a} divided by {d}?"),
        1 => format!("Divide {a} by {d}."),
        _ => format!("How many times does {d} go into {a}?"),
    };
    sample(format!("{a}/{d}"), p, q)
}

/// 10 to 199 divided by 3 to 9: 1,330 pairs, the remainder 0 included.
fn gen_remainder(r: &mut Rng) -> Sample {
    let (a, d) = (r.range(10, 199), r.range(3, 9));
    let p = match r.below(3) {
        0 => format!("What is the remainder of {a} divided by {d}?"),
        1 => format!("What is left over when {a} is divided by {d}?"),
        _ => format!("What is {a} mod {d}?"),
    };
    sample(format!("{a}%{d}"), p, a % d)
}

/// Two different two-digit numbers with an even sum, so the average is whole.
fn gen_average_of_two(r: &mut Rng) -> Sample {
    let (a, b) = loop {
        let (a, b) = (r.range(10, 99), r.range(10, 99));
        if a != b && (a + b) % 2 == 0 {
            break (a, b);
        }
    };
    let p = match r.below(3) {
        0 => format!("What is the average of {a} and {b}?"),
        1 => format!("Find the mean of {a} and {b}."),
        _ => format!("What number is exactly halfway between {a} and {b}?"),
    };
    sample(format!("{a},{b}"), p, (a + b) / 2)
}

/// Two different two-digit numbers in either order; the answer is never negative.
fn gen_difference_between(r: &mut Rng) -> Sample {
    let (a, b) = two_numbers(r, 10, 99);
    let p = match r.below(3) {
        0 => format!("What is the difference between {a} and {b}?"),
        1 => format!("How far apart are the numbers {a} and {b}?"),
        _ => format!("By how much do {a} and {b} differ?"),
    };
    sample(format!("{a},{b}"), p, (a - b).abs())
}

/// 10, 20, 25 or 50 percent of a number it divides into a whole: about 1,000 questions.
fn gen_percent_of(r: &mut Rng) -> Sample {
    // (percent, step): every multiple of `step` has a whole `percent` share.
    const PCTS: [(i64, i64); 4] = [(10, 10), (20, 5), (25, 4), (50, 2)];
    let (pct, step) = *r.choose(&PCTS);
    let m = step * r.range(1, 999 / step);
    let p = match r.below(3) {
        0 => format!("What is {pct}% of {m}?"),
        1 => format!("Calculate {pct} percent of {m}."),
        _ => format!("How much is {pct}% of {m}?"),
    };
    sample(format!("{pct}%{m}"), p, m * pct / 100)
}

fn gen_previous_odd(r: &mut Rng) -> Sample {
    let n = r.range(10, 999);
    let p = match r.below(3) {
        0 => format!("What is the largest odd number less than {n}?"),
        1 => format!("Which odd number comes just before {n}?"),
        _ => format!("Counting down from {n}, what is the first odd number you reach?"),
    };
    let want = if n % 2 == 1 { n - 2 } else { n - 1 };
    sample(n.to_string(), p, want)
}

fn gen_hundred_more(r: &mut Rng) -> Sample {
    let n = r.range(1, 899);
    let p = match r.below(3) {
        0 => format!("What is 100 more than {n}?"),
        1 => format!("Add one hundred to {n}."),
        _ => format!("Which number is a hundred greater than {n}?"),
    };
    sample(n.to_string(), p, n + 100)
}

fn gen_ten_less(r: &mut Rng) -> Sample {
    let n = r.range(11, 999);
    let p = match r.below(3) {
        0 => format!("What is 10 less than {n}?"),
        1 => format!("Subtract ten from {n}."),
        _ => format!("Which number is ten smaller than {n}?"),
    };
    sample(n.to_string(), p, n - 10)
}

fn gen_round_to_hundred(r: &mut Rng) -> Sample {
    // Numbers ending in 50 are left out: rounding them up is only one convention.
    let n = loop {
        let n = r.range(101, 9999);
        if n % 100 != 50 && n % 100 != 0 {
            break n;
        }
    };
    let p = match r.below(3) {
        0 => format!("Round {n} to the nearest hundred."),
        1 => format!("What is {n} rounded to the nearest 100?"),
        _ => format!("Round the number {n} to the closest multiple of one hundred."),
    };
    sample(n.to_string(), p, (n + 50) / 100 * 100)
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{numbers_in, task};
    use super::super::Example;

    /// Every example of a task, both splits, with the numbers of its prompt.
    fn each(name: &str, check: impl Fn(&[i64], &Example)) {
        let t = task(name);
        assert_eq!(t.family, "math");
        for ex in t.train.iter().chain(&t.test) {
            check(&numbers_in(&ex.prompt), ex);
        }
    }

    fn is(ex: &Example, want: i64) {
        assert_eq!(ex.answer, want.to_string(), "{ex:?}");
    }

    #[test]
    fn answers_follow_from_the_prompts() {
        // Both numbers in the prompt, in either order; the larger is the one subtracted from.
        each("subtract", |x, ex| {
            assert_eq!(x.len(), 2, "{ex:?}");
            is(ex, x[0].max(x[1]) - x[0].min(x[1]));
        });
        each("multiply_by_digit", |x, ex| is(ex, x[0] * x[1]));
        each("divide", |x, ex| {
            let (a, d) = (x[0].max(x[1]), x[0].min(x[1]));
            assert_eq!(a % d, 0, "{ex:?}");
            is(ex, a / d);
        });
        each("remainder", |x, ex| {
            let (a, d) = (x[0], x[1]);
            let mut left = a;
            while left >= d {
                left -= d;
            }
            is(ex, left);
        });
        each("average_of_two", |x, ex| {
            let avg: i64 = ex.answer.parse().unwrap();
            assert_eq!(2 * avg, x[0] + x[1], "{ex:?}");
        });
        each("difference_between", |x, ex| {
            is(ex, x[0].max(x[1]) - x[0].min(x[1]));
        });
        each("percent_of", |x, ex| {
            let (pct, m) = (x[0], x[1]);
            assert_eq!(pct * m % 100, 0, "{ex:?}");
            is(ex, pct * m / 100);
        });
        each("previous_odd", |x, ex| {
            let mut y = x[0] - 1;
            while y % 2 == 0 {
                y -= 1;
            }
            is(ex, y);
        });
        each("hundred_more", |x, ex| is(ex, x[x.len() - 1] + 100));
        each("ten_less", |x, ex| is(ex, x[x.len() - 1] - 10));
        each("round_to_hundred", |x, ex| {
            let n = x[0];
            let (down, up) = (n - n % 100, n - n % 100 + 100);
            is(ex, if n - down < up - n { down } else { up });
        });
    }
}
