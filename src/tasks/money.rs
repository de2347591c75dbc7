//! The `money` family (suite version 2): everyday sums with prices, pay and change, each
//! answered with a whole number of dollars or cents.

use super::draw::*;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec("total_cost", "money", Scoring::Exact, Plain(gen_total_cost)),
    spec(
        "change_from",
        "money",
        Scoring::Exact,
        Plain(gen_change_from),
    ),
    spec("unit_price", "money", Scoring::Exact, Plain(gen_unit_price)),
    spec("tip_amount", "money", Scoring::Exact, Plain(gen_tip_amount)),
    spec("hourly_pay", "money", Scoring::Exact, Plain(gen_hourly_pay)),
    spec("profit", "money", Scoring::Exact, Plain(gen_profit)),
    spec(
        "weeks_to_save",
        "money",
        Scoring::Exact,
        Plain(gen_weeks_to_save),
    ),
    spec(
        "coins_value",
        "money",
        Scoring::Exact,
        Plain(gen_coins_value),
    ),
    spec("sale_price", "money", Scoring::Exact, Plain(gen_sale_price)),
];

const ITEMS: &[&str] = &[
    "pencils",
    "notebooks",
    "apples",
    "tickets",
    "mugs",
    "candles",
    "books",
    "scarves",
    "plants",
    "batteries",
];

const NAMES: &[&str] = &["Sam", "Maria", "Omar", "Lena", "Ken", "Priya", "Tom", "Ana"];

fn gen_total_cost(r: &mut Rng) -> Sample {
    let (n, p, item) = (r.range(2, 12), r.range(1, 50), r.choose(ITEMS));
    let q = match r.below(3) {
        0 => format!("{n} {item} cost ${p} each. How many dollars do they cost in total?"),
        1 => format!("One of the {item} costs ${p}. What do {n} of them cost, in dollars?"),
        _ => format!("How many dollars for {n} {item} at ${p} apiece?"),
    };
    sample(format!("{n}x{p}"), q, n * p)
}

fn gen_change_from(r: &mut Rng) -> Sample {
    let paid = *r.choose(&[20, 50, 100, 200]);
    let cost = r.range(1, paid - 1);
    let q = match r.below(3) {
        0 => format!("Something costs ${cost} and you pay with ${paid}. How many dollars of change do you get?"),
        1 => format!("You hand over ${paid} for a ${cost} purchase. What is your change in dollars?"),
        _ => format!("How much change, in dollars, from ${paid} for an item priced ${cost}?"),
    };
    sample(format!("{paid}-{cost}"), q, paid - cost)
}

fn gen_unit_price(r: &mut Rng) -> Sample {
    let (n, p, item) = (r.range(2, 12), r.range(1, 50), r.choose(ITEMS));
    let total = n * p;
    let q = match r.below(3) {
        0 => format!("{n} {item} cost ${total} together. How many dollars does one cost?"),
        1 => format!("If {n} {item} cost ${total} in all, what is the price of one, in dollars?"),
        _ => format!("${total} buys {n} {item}. What does each one cost, in dollars?"),
    };
    sample(format!("{total}/{n}"), q, p)
}

fn gen_tip_amount(r: &mut Rng) -> Sample {
    let pct = *r.choose(&[10, 15, 20, 25, 50]);
    let bill = 20 * r.range(1, 100);
    let q = match r.below(3) {
        0 => format!("What is a {pct}% tip on a ${bill} bill, in dollars?"),
        1 => format!("The bill is ${bill}. How many dollars is a {pct} percent tip?"),
        _ => format!("How many dollars do you tip if you leave {pct}% of ${bill}?"),
    };
    sample(format!("{pct}%{bill}"), q, bill * pct / 100)
}

fn gen_hourly_pay(r: &mut Rng) -> Sample {
    let (w, h, name) = (r.range(5, 40), r.range(2, 12), r.choose(NAMES));
    let q = match r.below(3) {
        0 => format!("{name} earns ${w} an hour. How many dollars for {h} hours of work?"),
        1 => format!("At ${w} per hour, what does {name} earn in {h} hours, in dollars?"),
        _ => format!("How many dollars does {name} make working {h} hours at ${w} an hour?"),
    };
    sample(format!("{w}*{h}"), q, w * h)
}

fn gen_profit(r: &mut Rng) -> Sample {
    let bought = r.range(1, 200);
    let sold = bought + r.range(1, 100);
    let q = match r.below(3) {
        0 => format!("Bought for ${bought} and sold for ${sold}. What is the profit in dollars?"),
        1 => format!(
            "A bike bought at ${bought} sells for ${sold}. How many dollars of profit is that?"
        ),
        _ => format!("How many dollars are gained buying at ${bought} and selling at ${sold}?"),
    };
    sample(format!("{bought}>{sold}"), q, sold - bought)
}

fn gen_weeks_to_save(r: &mut Rng) -> Sample {
    let (s, n, name) = (r.range(2, 50), r.range(2, 20), r.choose(NAMES));
    let goal = s * n;
    let q = match r.below(3) {
        0 => format!("{name} saves ${s} a week. How many weeks until {name} has ${goal}?"),
        1 => format!("Saving ${s} every week, how many weeks does it take to save ${goal}?"),
        _ => format!("How many weeks of putting aside ${s} a week make ${goal}?"),
    };
    sample(format!("{goal}/{s}"), q, n)
}

fn gen_coins_value(r: &mut Rng) -> Sample {
    let (q, d, n) = (r.range(0, 9), r.range(0, 9), r.range(0, 9));
    // The coins there are, "1 quarter" in the singular: at least two kinds, so the
    // question is never one multiplication.
    let kinds: Vec<String> = [(q, "quarter"), (d, "dime"), (n, "nickel")]
        .iter()
        .filter(|(k, _)| *k > 0)
        .map(|(k, name)| format!("{k} {name}{}", if *k == 1 { "" } else { "s" }))
        .collect();
    let coins = match kinds.as_slice() {
        [a, b] => format!("{a} and {b}"),
        [a, b, c] => format!("{a}, {b} and {c}"),
        _ => return gen_coins_value(r),
    };
    let p = match r.below(3) {
        0 => format!("How many cents are {coins} worth?"),
        1 => format!("What is the value in cents of {coins}?"),
        _ => format!("You have {coins}. How many cents is that?"),
    };
    sample(format!("{q}q{d}d{n}n"), p, 25 * q + 10 * d + 5 * n)
}

fn gen_sale_price(r: &mut Rng) -> Sample {
    let off = *r.choose(&[10, 20, 25, 30, 40, 50, 75]);
    let price = 20 * r.range(1, 50);
    let q = match r.below(3) {
        0 => format!("A ${price} jacket is {off}% off. How many dollars does it cost now?"),
        1 => {
            format!("What is the sale price, in dollars, of a ${price} item at {off} percent off?")
        }
        _ => format!("Take {off}% off ${price}. How many dollars is left to pay?"),
    };
    sample(format!("{price}-{off}%"), q, price * (100 - off) / 100)
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{numbers_in, task};

    /// The number after each `$` in a question, in order.
    fn dollars(p: &str) -> Vec<i64> {
        p.split('$').skip(1).map(|s| numbers_in(s)[0]).collect()
    }

    /// Every answer is the sum its question asks for, read back from the question: the
    /// dollar amounts, and the other numbers (counts, hours, percentages).
    #[test]
    fn answers_follow_from_the_questions() {
        type Rule = fn(&[i64], &[i64]) -> i64;
        let others = |p: &str| {
            let d = dollars(p);
            let mut n = numbers_in(p);
            for x in &d {
                let i = n.iter().position(|y| y == x).unwrap();
                n.remove(i);
            }
            n
        };
        let rules: [(&str, Rule); 8] = [
            ("total_cost", |d, n| d[0] * n[0]),
            ("hourly_pay", |d, n| d[0] * n[0]),
            ("change_from", |d, _| (d[0] - d[1]).abs()),
            ("profit", |d, _| (d[0] - d[1]).abs()),
            ("unit_price", |d, n| d[0] / n[0]),
            ("weeks_to_save", |d, _| d[0].max(d[1]) / d[0].min(d[1])),
            ("tip_amount", |d, n| d[0] * n[0] / 100),
            ("sale_price", |d, n| d[0] * (100 - n[0]) / 100),
        ];
        for (name, rule) in rules {
            let t = task(name);
            for ex in t.train.iter().chain(&t.test) {
                let (d, n) = (dollars(&ex.prompt), others(&ex.prompt));
                assert_eq!(ex.answer, rule(&d, &n).to_string(), "{name}: {}", ex.prompt);
            }
        }
        let t = task("coins_value");
        for ex in t.train.iter().chain(&t.test) {
            let value: i64 = ["quarter", "dime", "nickel"]
                .iter()
                .zip([25, 10, 5])
                .filter_map(|(coin, cents)| {
                    let at = ex.prompt.find(coin)?;
                    Some(cents * numbers_in(&ex.prompt[..at]).last().unwrap())
                })
                .sum();
            assert_eq!(ex.answer, value.to_string(), "{}", ex.prompt);
            assert!(!ex.prompt.contains(" 1 dimes") && !ex.prompt.contains(" 0 "));
        }
    }
}
