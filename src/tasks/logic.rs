//! The `logic` family: yes/no and true/false judgements on numbers and words, and picking the smaller.

use super::draw::*;
use super::strings::distinct_words;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec("is_greater", "logic", Scoring::Exact, Plain(gen_is_greater)),
    spec("in_list", "logic", Scoring::Exact, Plain(gen_in_list)),
    spec(
        "compare_true_false",
        "logic",
        Scoring::Exact,
        Plain(gen_compare_true_false),
    ),
    spec(
        "smaller_of_two",
        "logic",
        Scoring::Exact,
        Plain(gen_smaller_of_two),
    ),
    spec(
        "same_first_letter",
        "logic",
        Scoring::Exact,
        Plain(gen_same_first_letter),
    ),
    spec(
        "divisible_by",
        "logic",
        Scoring::Exact,
        Plain(gen_divisible_by),
    ),
    spec(
        "between_numbers",
        "logic",
        Scoring::Exact,
        Plain(gen_between_numbers),
    ),
];

pub(super) fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn gen_is_greater(r: &mut Rng) -> Sample {
    let (a, b) = two_numbers(r, 1, 999);
    let p = match r.below(3) {
        0 => format!("Is {a} greater than {b}? Answer yes or no."),
        1 => format!("Is {a} bigger than {b}? Yes or no?"),
        _ => format!("Yes or no: {a} is more than {b}."),
    };
    sample(format!("{a}>{b}"), p, yes_no(a > b))
}

fn gen_in_list(r: &mut Rng) -> Sample {
    let n = 3 + r.below(3);
    let ws = distinct_words(r, n + 1);
    let (list, extra) = ws.split_at(n);
    let w = if r.below(2) == 0 {
        *r.choose(list)
    } else {
        extra[0]
    };
    let l = join(list);
    let p = match r.below(3) {
        0 => format!("Is '{w}' in this list: {l}? Answer yes or no."),
        1 => format!("Does the list {l} contain \"{w}\"? Yes or no?"),
        _ => format!("Yes or no: {w} appears in {l}."),
    };
    sample(format!("{w}:{l}"), p, yes_no(list.contains(&w)))
}

fn gen_compare_true_false(r: &mut Rng) -> Sample {
    let (a, b) = two_numbers(r, 1, 99);
    let less = r.below(2) == 0;
    let op = if less { "<" } else { ">" };
    let p = match r.below(3) {
        0 => format!("True or false: {a} {op} {b}"),
        1 => format!("Is the statement {a} {op} {b} true or false?"),
        _ => format!("{a} {op} {b}. True or false?"),
    };
    let holds = if less { a < b } else { a > b };
    sample(
        format!("{a}{op}{b}"),
        p,
        if holds { "true" } else { "false" },
    )
}

fn gen_smaller_of_two(r: &mut Rng) -> Sample {
    let (a, b) = two_numbers(r, 1, 999);
    let p = match r.below(3) {
        0 => format!("Which is smaller, {a} or {b}?"),
        1 => format!("What is the minimum of {a} and {b}?"),
        _ => format!("Of {a} and {b}, which number is less?"),
    };
    sample(format!("{a} {b}"), p, a.min(b))
}

fn gen_same_first_letter(r: &mut Rng) -> Sample {
    let same = r.below(2) == 0;
    let (a, b) = loop {
        let (a, b) = (pick_word(r), pick_word(r));
        if a != b && (a.as_bytes()[0] == b.as_bytes()[0]) == same {
            break (a, b);
        }
    };
    let p = match r.below(3) {
        0 => format!("Do '{a}' and '{b}' start with the same letter? Answer yes or no."),
        1 => format!("Do the words \"{a}\" and \"{b}\" begin with the same letter? Yes or no?"),
        _ => format!("Yes or no: {a} and {b} have the same first letter."),
    };
    sample(format!("{a} {b}"), p, yes_no(same))
}

fn gen_divisible_by(r: &mut Rng) -> Sample {
    let d = *r.choose(&[2i64, 5, 10]);
    let want = r.below(2) == 0;
    let x = loop {
        let x = r.range(10, 999);
        if (x % d == 0) == want {
            break x;
        }
    };
    let p = match r.below(3) {
        0 => format!("Is {x} divisible by {d}? Answer yes or no."),
        1 => format!("Can {x} be divided evenly by {d}? Yes or no?"),
        _ => format!("Yes or no: {x} is a multiple of {d}."),
    };
    sample(format!("{x}/{d}"), p, yes_no(want))
}

fn gen_between_numbers(r: &mut Rng) -> Sample {
    let (lo, hi) = loop {
        let (lo, hi) = (r.range(1, 90), r.range(1, 99));
        if hi - lo >= 5 {
            break (lo, hi);
        }
    };
    let inside = r.below(2) == 0;
    let x = loop {
        let x = r.range(1, 99);
        if x != lo && x != hi && (lo < x && x < hi) == inside {
            break x;
        }
    };
    let p = match r.below(3) {
        0 => format!("Is {x} between {lo} and {hi}? Answer yes or no."),
        1 => format!("Does {x} lie between {lo} and {hi}? Yes or no?"),
        _ => format!("Yes or no: {x} is between {lo} and {hi}."),
    };
    sample(format!("{x}:{lo}-{hi}"), p, yes_no(inside))
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{numbers_in, task};

    #[test]
    fn answers_follow_from_the_prompts() {
        let yn = |b: bool| if b { "yes" } else { "no" };
        for ex in task("is_greater").train.iter() {
            let xs = numbers_in(&ex.prompt);
            assert_eq!(ex.answer, yn(xs[0] > xs[1]), "{ex:?}");
        }
        for ex in task("compare_true_false").train.iter() {
            let xs = numbers_in(&ex.prompt);
            let holds = if ex.prompt.contains('<') {
                xs[0] < xs[1]
            } else {
                xs[0] > xs[1]
            };
            assert_eq!(ex.answer, if holds { "true" } else { "false" }, "{ex:?}");
        }
        for ex in task("divisible_by").train.iter() {
            let xs = numbers_in(&ex.prompt);
            assert_eq!(ex.answer, yn(xs[0] % xs[1] == 0), "{ex:?}");
        }
        for ex in task("between_numbers").train.iter() {
            let xs = numbers_in(&ex.prompt);
            assert_eq!(ex.answer, yn(xs[1] < xs[0] && xs[0] < xs[2]), "{ex:?}");
        }
        for ex in task("smaller_of_two").train.iter() {
            let xs = numbers_in(&ex.prompt);
            assert_eq!(ex.answer, xs[0].min(xs[1]).to_string(), "{ex:?}");
        }
    }
}
