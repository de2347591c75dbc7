//! The `dates` family: calendar dates, years, centuries and clock times in their usual formats.

use super::arithmetic::MONTHS;
use super::draw::*;
use super::numbers::ordinal;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec("next_date", "dates", Scoring::Exact, Plain(gen_next_date)),
    spec(
        "century_of_year",
        "dates",
        Scoring::Exact,
        Plain(gen_century_of_year),
    ),
    spec(
        "decade_of_year",
        "dates",
        Scoring::Exact,
        Plain(gen_decade_of_year),
    ),
    spec(
        "years_later",
        "dates",
        Scoring::Exact,
        Plain(gen_years_later),
    ),
    spec("hour_later", "dates", Scoring::Exact, Plain(gen_hour_later)),
    spec(
        "time_24_to_12",
        "dates",
        Scoring::Exact,
        Plain(gen_time_24_to_12),
    ),
    spec(
        "time_12_to_24",
        "dates",
        Scoring::Exact,
        Plain(gen_time_12_to_24),
    ),
    spec(
        "iso_date_to_words",
        "dates",
        Scoring::Exact,
        Plain(gen_iso_date_to_words),
    ),
    spec(
        "words_to_iso_date",
        "dates",
        Scoring::Exact,
        Plain(gen_words_to_iso_date),
    ),
];

/// Days in each month of a common (non-leap) year.
pub(super) const DAYS_IN_MONTH: [usize; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// A day of a common year: month index and day of the month (1-based).
pub(super) fn day_of_year(r: &mut Rng) -> (usize, usize) {
    let m = r.below(12);
    (m, 1 + r.below(DAYS_IN_MONTH[m]))
}

/// `2021-07-15` (month index `m`, 0-based).
pub(super) fn iso(y: i64, m: usize, d: usize) -> String {
    format!("{y}-{:02}-{d:02}", m + 1)
}

/// `July 15, 2021` (month index `m`, 0-based).
pub(super) fn in_words(y: i64, m: usize, d: usize) -> String {
    format!("{} {d}, {y}", MONTHS[m])
}

fn gen_next_date(r: &mut Rng) -> Sample {
    // February 28 forwards and March 1 backwards depend on the year: not asked.
    let (m, d, forward) = loop {
        let (m, d) = day_of_year(r);
        let forward = r.below(2) == 0;
        let leap_dependent = if forward {
            (m, d) == (1, 28)
        } else {
            (m, d) == (2, 1)
        };
        if !leap_dependent {
            break (m, d, forward);
        }
    };
    let date = format!("{} {d}", MONTHS[m]);
    let (p, (am, ad)) = if forward {
        let p = match r.below(2) {
            0 => format!("What date comes right after {date}?"),
            _ => format!("If today is {date}, what is the date tomorrow?"),
        };
        let next = if d == DAYS_IN_MONTH[m] {
            ((m + 1) % 12, 1)
        } else {
            (m, d + 1)
        };
        (p, next)
    } else {
        let p = match r.below(2) {
            0 => format!("What date comes right before {date}?"),
            _ => format!("If today is {date}, what was the date yesterday?"),
        };
        let prev = if d == 1 {
            let pm = (m + 11) % 12;
            (pm, DAYS_IN_MONTH[pm])
        } else {
            (m, d - 1)
        };
        (p, prev)
    };
    let key = format!("{m}-{d}{}", if forward { "+" } else { "-" });
    sample(key, p, format!("{} {ad}", MONTHS[am]))
}

fn gen_century_of_year(r: &mut Rng) -> Sample {
    // Years ending in 00 are left out: which century they belong to is disputed.
    let y = loop {
        let y = r.range(1001, 2099);
        if y % 100 != 0 {
            break y;
        }
    };
    let p = match r.below(3) {
        0 => format!("Which century is the year {y} in?"),
        1 => format!("The year {y} belongs to which century?"),
        _ => format!("In what century was {y}?"),
    };
    sample(y.to_string(), p, ordinal(y / 100 + 1))
}

fn gen_decade_of_year(r: &mut Rng) -> Sample {
    let y = r.range(1500, 2099);
    let p = match r.below(3) {
        0 => format!("Which decade is the year {y} in?"),
        1 => format!("Name the decade of the year {y}, like 1950s."),
        _ => format!("{y} falls in which decade?"),
    };
    sample(y.to_string(), p, format!("{}s", y / 10 * 10))
}

fn gen_years_later(r: &mut Rng) -> Sample {
    let (y, n) = (r.range(1900, 2090), r.range(2, 9));
    let p = match r.below(3) {
        0 => format!("What year is {n} years after {y}?"),
        1 => format!("It is {y}. Which year will it be in {n} years?"),
        _ => format!("Add {n} years to the year {y}."),
    };
    sample(format!("{y}+{n}"), p, y + n)
}

/// `h:mm` on the 12-hour clock face (`h` in 1..=12).
fn clock(h: usize, m: usize) -> String {
    format!("{h}:{m:02}")
}

fn gen_hour_later(r: &mut Rng) -> Sample {
    let (h, m) = (1 + r.below(12), r.below(60));
    let forward = r.below(2) == 0;
    let t = clock(h, m);
    let (p, ah) = if forward {
        let p = match r.below(2) {
            0 => format!("It is {t}. What time will it be in one hour?"),
            _ => format!("What time is it one hour after {t}?"),
        };
        (p, h % 12 + 1)
    } else {
        let p = match r.below(2) {
            0 => format!("It is {t}. What time was it one hour ago?"),
            _ => format!("What time is it one hour before {t}?"),
        };
        (p, (h + 10) % 12 + 1)
    };
    let key = format!("{t}{}", if forward { "+" } else { "-" });
    sample(key, p, clock(ah, m))
}

/// `h:mm am` / `h:mm pm` for a time of day in 24-hour form.
pub(super) fn twelve_hour(h: usize, m: usize) -> String {
    let half = if h < 12 { "am" } else { "pm" };
    let h12 = if h.is_multiple_of(12) { 12 } else { h % 12 };
    format!("{} {half}", clock(h12, m))
}

fn gen_time_24_to_12(r: &mut Rng) -> Sample {
    let (h, m) = (r.below(24), r.below(60));
    let t = format!("{h:02}:{m:02}");
    let p = match r.below(3) {
        0 => format!("Convert {t} to 12-hour time with am or pm."),
        1 => format!("What is {t} on a 12-hour clock (am/pm)?"),
        _ => format!("Write the 24-hour time {t} in 12-hour format."),
    };
    sample(t, p, twelve_hour(h, m))
}

fn gen_time_12_to_24(r: &mut Rng) -> Sample {
    let (h, m) = (r.below(24), r.below(60));
    let t = twelve_hour(h, m);
    let p = match r.below(3) {
        0 => format!("Convert {t} to 24-hour time."),
        1 => format!("What is {t} on a 24-hour clock?"),
        _ => format!("Write {t} in 24-hour format (hh:mm)."),
    };
    sample(t, p, format!("{h:02}:{m:02}"))
}

fn gen_iso_date_to_words(r: &mut Rng) -> Sample {
    let (y, (m, d)) = (r.range(1950, 2049), day_of_year(r));
    let iso = iso(y, m, d);
    let p = match r.below(3) {
        0 => format!("Write the date {iso} in words, like March 5, 2020."),
        1 => format!("What is {iso} written as month, day and year?"),
        _ => format!("Turn the date {iso} into the form Month Day, Year."),
    };
    sample(iso, p, in_words(y, m, d))
}

fn gen_words_to_iso_date(r: &mut Rng) -> Sample {
    let (y, (m, d)) = (r.range(1950, 2049), day_of_year(r));
    let words = in_words(y, m, d);
    let p = match r.below(3) {
        0 => format!("Write {words} in the format YYYY-MM-DD."),
        1 => format!("What is {words} as an ISO date?"),
        _ => format!("Convert the date {words} to YYYY-MM-DD."),
    };
    sample(words, p, iso(y, m, d))
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{numbers_in, task};
    use super::MONTHS;

    #[test]
    fn answers_follow_from_the_prompts() {
        for ex in task("decade_of_year").train.iter() {
            let y = numbers_in(&ex.prompt)[0];
            assert_eq!(ex.answer, format!("{}s", y - y % 10), "{ex:?}");
        }
        for ex in task("century_of_year").train.iter() {
            let y = numbers_in(&ex.prompt)[0];
            let c = (y + 99) / 100;
            assert!(ex.answer.starts_with(&c.to_string()), "{ex:?}");
        }
        for ex in task("time_12_to_24").train.iter() {
            let xs = numbers_in(&ex.prompt);
            let (mut h, m) = (xs[0] % 12, xs[1]);
            if ex.prompt.contains(" pm") {
                h += 12;
            }
            assert_eq!(ex.answer, format!("{h:02}:{m:02}"), "{ex:?}");
        }
        for ex in task("words_to_iso_date").train.iter() {
            let xs = numbers_in(&ex.prompt);
            let m = 1 + MONTHS.iter().position(|m| ex.prompt.contains(m)).unwrap();
            assert_eq!(
                ex.answer,
                format!("{}-{m:02}-{:02}", xs[1], xs[0]),
                "{ex:?}"
            );
        }
        for ex in task("next_date").train.iter() {
            let (a, b) = (&ex.prompt, &ex.answer);
            let d: i64 = numbers_in(a)[0];
            let e: i64 = numbers_in(b)[0];
            let same = MONTHS
                .iter()
                .any(|m| a.contains(&format!("{m} ")) && b.starts_with(m));
            if same {
                assert_eq!((d - e).abs(), 1, "{ex:?}");
            } else {
                assert!(e == 1 || d == 1, "{ex:?}");
            }
        }
    }
}
