//! The `calendar` family (suite version 5): weekdays, months, seasons, quarters, leap years
//! and durations: the weekday some days before or after another, month names to numbers and
//! back, days in a month of a given year, US and European date order, and converting
//! minutes, hours, days and weeks.

use super::arithmetic::MONTHS;
use super::dates::{day_of_year, in_words, iso, DAYS_IN_MONTH};
use super::draw::*;
use super::logic::yes_no;
use super::{spec, Draw::Plain, Scoring, Spec};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec(
        "weekday_shift",
        "calendar",
        Scoring::Exact,
        Plain(gen_weekday_shift),
    ),
    spec(
        "month_numbers",
        "calendar",
        Scoring::Exact,
        Plain(gen_month_numbers),
    ),
    spec(
        "month_from_date",
        "calendar",
        Scoring::Exact,
        Plain(gen_month_from_date),
    ),
    spec(
        "days_in_month",
        "calendar",
        Scoring::Exact,
        Plain(gen_days_in_month),
    ),
    spec(
        "season_of_date",
        "calendar",
        Scoring::Exact,
        Plain(gen_season_of_date),
    ),
    spec(
        "quarter_of_date",
        "calendar",
        Scoring::Exact,
        Plain(gen_quarter_of_date),
    ),
    spec(
        "minutes_to_hours",
        "calendar",
        Scoring::Exact,
        Plain(gen_minutes_to_hours),
    ),
    spec(
        "hours_to_minutes",
        "calendar",
        Scoring::Exact,
        Plain(gen_hours_to_minutes),
    ),
    spec(
        "duration_convert",
        "calendar",
        Scoring::Exact,
        Plain(gen_duration_convert),
    ),
    spec(
        "leap_year",
        "calendar",
        Scoring::Exact,
        Plain(gen_leap_year),
    ),
    spec(
        "us_eu_date",
        "calendar",
        Scoring::Exact,
        Plain(gen_us_eu_date),
    ),
];

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// `n` with `unit` in the singular or plural: `1 day`, `3 days`.
fn count(n: usize, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// A date of a year in `lo..=hi`: year, month index, day of the month. February stops at
/// the 28th, so every date exists in every year.
fn date(r: &mut Rng, lo: i64, hi: i64) -> (i64, usize, usize) {
    let y = r.range(lo, hi);
    let (m, d) = day_of_year(r);
    (y, m, d)
}

fn gen_weekday_shift(r: &mut Rng) -> Sample {
    let day = r.below(7);
    let n = 1 + r.below(60);
    let forward = r.below(2) == 0;
    let (w, days) = (WEEKDAYS[day], count(n, "day"));
    let (p, answer) = if forward {
        let p = match r.below(3) {
            0 => format!("What day of the week is {days} after {w}?"),
            1 => format!("If today is {w}, what day will it be in {days}?"),
            _ => format!("Today is {w}. Which weekday will it be {days} from now?"),
        };
        (p, WEEKDAYS[(day + n) % 7])
    } else {
        let p = match r.below(3) {
            0 => format!("What day of the week is {days} before {w}?"),
            1 => format!("If today is {w}, what day was it {days} ago?"),
            _ => format!("Today is {w}. Which weekday was it {days} earlier?"),
        };
        (p, WEEKDAYS[(day + 7 * 9 - n) % 7])
    };
    let key = format!("{day}{}{n}", if forward { "+" } else { "-" });
    sample(key, p, answer)
}

fn gen_month_numbers(r: &mut Rng) -> Sample {
    let k = 2 + r.below(2);
    let mut ms: Vec<usize> = Vec::with_capacity(k);
    while ms.len() < k {
        let m = r.below(12);
        if !ms.contains(&m) {
            ms.push(m);
        }
    }
    let names: Vec<&str> = ms.iter().map(|&m| MONTHS[m]).collect();
    let listed = names.join(", ");
    let spoken = format!("{} and {}", names[..k - 1].join(", "), names[k - 1]);
    let p = match r.below(3) {
        0 => format!("Write these months as numbers: {listed}"),
        1 => format!("What are the month numbers of {spoken}?"),
        _ => format!("Give the number of each month, counting from 1: {listed}"),
    };
    let numbers: Vec<usize> = ms.iter().map(|m| m + 1).collect();
    sample(listed, p, join(&numbers))
}

fn gen_month_from_date(r: &mut Rng) -> Sample {
    let (y, m, d) = date(r, 1950, 2049);
    let (mm, form) = (m + 1, r.below(3));
    let p = match form {
        0 => format!("Which month is the date {} in?", iso(y, m, d)),
        1 => format!("The date {d:02}/{mm:02}/{y} is written day/month/year. Which month is it?"),
        _ => format!("In the US date {mm:02}/{d:02}/{y} (month/day/year), what is the month?"),
    };
    sample(format!("{form}:{}", iso(y, m, d)), p, MONTHS[m])
}

fn gen_days_in_month(r: &mut Rng) -> Sample {
    // February a quarter of the time, so that leap years come up; years of 1901..=2099 are
    // leap years exactly when divisible by 4.
    let m = if r.below(4) == 0 { 1 } else { r.below(12) };
    let y = r.range(1901, 2099);
    let days = if m == 1 && y % 4 == 0 {
        29
    } else {
        DAYS_IN_MONTH[m]
    };
    let month = MONTHS[m];
    let p = match r.below(3) {
        0 => format!("How many days are in {month} {y}?"),
        1 => format!("How many days does {month} {y} have?"),
        _ => format!("What is the number of days in {month} of the year {y}?"),
    };
    sample(format!("{m}:{y}"), p, days)
}

fn gen_season_of_date(r: &mut Rng) -> Sample {
    const SEASONS: [&str; 4] = ["winter", "spring", "summer", "autumn"];
    let (y, m, d) = date(r, 2000, 2039);
    let when = in_words(y, m, d);
    let p = match r.below(3) {
        0 => format!(
            "In the northern hemisphere, is {when} in winter, spring, summer or autumn? \
             (Spring is March to May.)"
        ),
        1 => format!(
            "Which meteorological season (winter, spring, summer, autumn) is {when} in, \
             in the northern hemisphere?"
        ),
        _ => format!(
            "Northern hemisphere, counting whole months: {when} falls in which season \
             (winter, spring, summer or autumn)?"
        ),
    };
    sample(iso(y, m, d), p, SEASONS[(m + 1) % 12 / 3])
}

fn gen_quarter_of_date(r: &mut Rng) -> Sample {
    let (y, m, d) = date(r, 2000, 2039);
    let p = match r.below(3) {
        0 => format!(
            "Which quarter of the year is {} in? Answer Q1, Q2, Q3 or Q4.",
            iso(y, m, d)
        ),
        1 => format!(
            "In which calendar quarter (Q1 to Q4) does {} fall?",
            in_words(y, m, d)
        ),
        _ => format!("Name the quarter (Q1-Q4) of the date {}.", iso(y, m, d)),
    };
    sample(iso(y, m, d), p, format!("Q{}", m / 3 + 1))
}

fn gen_minutes_to_hours(r: &mut Rng) -> Sample {
    let total = loop {
        let t = r.range(61, 719) as usize;
        if !t.is_multiple_of(60) {
            break t;
        }
    };
    let p = match r.below(3) {
        0 => format!("Write {total} minutes in hours and minutes."),
        1 => format!("How many hours and minutes are {total} minutes?"),
        _ => format!("Convert {total} minutes to hours and minutes, like 1 hour 20 minutes."),
    };
    let answer = format!(
        "{} {}",
        count(total / 60, "hour"),
        count(total % 60, "minute")
    );
    sample(total.to_string(), p, answer)
}

fn gen_hours_to_minutes(r: &mut Rng) -> Sample {
    let (h, m) = (1 + r.below(12), 1 + r.below(59));
    let (hours, minutes) = (count(h, "hour"), count(m, "minute"));
    let p = match r.below(3) {
        0 => format!("How many minutes are in {hours} {minutes}?"),
        1 => format!("Convert {hours} and {minutes} to minutes."),
        _ => format!("{hours} {minutes} is how many minutes in total?"),
    };
    sample(format!("{h}:{m}"), p, 60 * h + m)
}

fn gen_duration_convert(r: &mut Rng) -> Sample {
    const UNITS: [(&str, &str, usize); 4] = [
        ("weeks", "days", 7),
        ("days", "hours", 24),
        ("minutes", "seconds", 60),
        ("years", "months", 12),
    ];
    let u = r.below(UNITS.len());
    let (from, to, f) = UNITS[u];
    let n = 2 + r.below(149);
    let p = match r.below(3) {
        0 => format!("How many {to} are in {n} {from}?"),
        1 => format!("Convert {n} {from} to {to}."),
        _ => format!("{n} {from} is how many {to}?"),
    };
    sample(format!("{u}:{n}"), p, n * f)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn gen_leap_year(r: &mut Rng) -> Sample {
    // The answer first, then a year that fits: half the questions are about leap years.
    let leap = r.below(2) == 0;
    let y = loop {
        let y = r.range(1601, 2999);
        if is_leap(y) == leap {
            break y;
        }
    };
    let p = match r.below(3) {
        0 => format!("Is {y} a leap year? Answer yes or no."),
        1 => format!("Yes or no: {y} is a leap year."),
        _ => format!("Does the year {y} have a February 29? Yes or no?"),
    };
    sample(y.to_string(), p, yes_no(leap))
}

fn gen_us_eu_date(r: &mut Rng) -> Sample {
    let (y, m, d) = date(r, 1950, 2049);
    let mm = m + 1;
    let to_eu = r.below(2) == 0;
    let (p, answer) = if to_eu {
        let us = format!("{mm:02}/{d:02}/{y}");
        let p = match r.below(3) {
            0 => format!("Rewrite the US date {us} as day/month/year."),
            1 => format!("Convert {us} (month/day/year) to the European day/month/year format."),
            _ => format!("A US date reads {us}. Write it as DD/MM/YYYY."),
        };
        (p, format!("{d:02}/{mm:02}/{y}"))
    } else {
        let eu = format!("{d:02}/{mm:02}/{y}");
        let p = match r.below(3) {
            0 => format!("Rewrite the European date {eu} as month/day/year."),
            1 => format!("Convert {eu} (day/month/year) to the US month/day/year format."),
            _ => format!("A European date reads {eu}. Write it as MM/DD/YYYY."),
        };
        (p, format!("{mm:02}/{d:02}/{y}"))
    };
    let key = format!("{}{}", if to_eu { "eu:" } else { "us:" }, iso(y, m, d));
    sample(key, p, answer)
}

#[cfg(test)]
mod tests {
    use super::super::arithmetic::MONTHS;
    use super::super::tests_support::{examples, numbers_in};
    use super::WEEKDAYS;

    /// Thirty days hath September, April, June and November; February 28 or 29.
    fn days_in(month: usize, year: i64) -> i64 {
        match month {
            4 | 6 | 9 | 11 => 30,
            2 if year % 400 == 0 || (year % 4 == 0 && year % 100 != 0) => 29,
            2 => 28,
            _ => 31,
        }
    }

    /// The date a prompt names, as (year, month 1..=12, day): `2021-07-15` or `July 15, 2021`.
    fn date_in(prompt: &str) -> (i64, usize, i64) {
        for t in prompt.split_whitespace() {
            let t = t.trim_end_matches(['.', ',', '?']);
            let parts: Vec<&str> = t.split('-').collect();
            if parts.len() == 3 && parts[0].len() == 4 {
                if let (Ok(y), Ok(m), Ok(d)) =
                    (parts[0].parse(), parts[1].parse(), parts[2].parse())
                {
                    return (y, m, d);
                }
            }
        }
        let (m, _) = MONTHS
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let at = prompt.find(&format!("{name} "))?;
                let next = prompt[at + name.len() + 1..].chars().next()?;
                next.is_ascii_digit().then_some((i + 1, at))
            })
            .next()
            .unwrap();
        let at = prompt.find(&format!("{} ", MONTHS[m - 1])).unwrap();
        let xs = numbers_in(&prompt[at..]);
        (xs[1], m, xs[0])
    }

    #[test]
    fn weekdays_and_months_follow_from_the_prompts() {
        for ex in examples("weekday_shift") {
            let n = numbers_in(&ex.prompt)[0];
            let from = WEEKDAYS.iter().position(|w| ex.prompt.contains(w)).unwrap() as i64;
            let back = ex.prompt.contains("before")
                || ex.prompt.contains("ago")
                || ex.prompt.contains("earlier");
            let to = if back { from - n } else { from + n }.rem_euclid(7);
            assert_eq!(ex.answer, WEEKDAYS[to as usize], "{ex:?}");
        }
        for ex in examples("month_numbers") {
            let mut found: Vec<(usize, usize)> = MONTHS
                .iter()
                .enumerate()
                .filter_map(|(i, m)| ex.prompt.find(m).map(|at| (at, i + 1)))
                .collect();
            found.sort();
            let want: Vec<String> = found.iter().map(|(_, m)| m.to_string()).collect();
            assert!(want.len() >= 2, "{ex:?}");
            assert_eq!(ex.answer, want.join(", "), "{ex:?}");
        }
        for ex in examples("month_from_date") {
            let m = if ex.prompt.contains("day/month/year") {
                numbers_in(&ex.prompt)[1]
            } else if ex.prompt.contains("month/day/year") {
                numbers_in(&ex.prompt)[0]
            } else {
                date_in(&ex.prompt).1 as i64
            };
            assert_eq!(ex.answer, MONTHS[m as usize - 1], "{ex:?}");
        }
        for ex in examples("days_in_month") {
            let m = 1 + MONTHS.iter().position(|m| ex.prompt.contains(m)).unwrap();
            let y = numbers_in(&ex.prompt)[0];
            assert_eq!(ex.answer, days_in(m, y).to_string(), "{ex:?}");
        }
        for ex in examples("season_of_date") {
            let (y, m, d) = date_in(&ex.prompt);
            assert!(d <= days_in(m, y), "{ex:?}");
            let want = match m {
                12 | 1 | 2 => "winter",
                3..=5 => "spring",
                6..=8 => "summer",
                _ => "autumn",
            };
            assert_eq!(ex.answer, want, "{ex:?}");
        }
        for ex in examples("quarter_of_date") {
            let (y, m, d) = date_in(&ex.prompt);
            assert!(d <= days_in(m, y), "{ex:?}");
            let want = match m {
                1..=3 => "Q1",
                4..=6 => "Q2",
                7..=9 => "Q3",
                _ => "Q4",
            };
            assert_eq!(ex.answer, want, "{ex:?}");
        }
    }

    #[test]
    fn years_dates_and_durations_follow_from_the_prompts() {
        for ex in examples("leap_year") {
            let y = numbers_in(&ex.prompt)[0];
            let leap = days_in(2, y) == 29;
            assert_eq!(ex.answer, if leap { "yes" } else { "no" }, "{ex:?}");
        }
        for ex in examples("us_eu_date") {
            let xs = numbers_in(&ex.prompt);
            let (day, month) = if ex.prompt.contains("US date") || ex.prompt.contains("(month/") {
                (xs[1], xs[0])
            } else {
                (xs[0], xs[1])
            };
            assert!((1..=12).contains(&month), "{ex:?}");
            assert!(day >= 1 && day <= days_in(month as usize, xs[2]), "{ex:?}");
            assert_eq!(
                ex.answer,
                format!("{:02}/{:02}/{}", xs[1], xs[0], xs[2]),
                "{ex:?}"
            );
        }
        for ex in examples("minutes_to_hours") {
            let total = numbers_in(&ex.prompt)[0];
            let got = numbers_in(&ex.answer);
            assert_eq!(got, vec![total / 60, total % 60], "{ex:?}");
            let hour = if total / 60 == 1 { "hour " } else { "hours " };
            let minute = if total % 60 == 1 { "minute" } else { "minutes" };
            assert!(
                ex.answer.contains(hour) && ex.answer.ends_with(minute),
                "{ex:?}"
            );
        }
        for ex in examples("hours_to_minutes") {
            let xs = numbers_in(&ex.prompt);
            assert_eq!(ex.answer, (xs[0] * 60 + xs[1]).to_string(), "{ex:?}");
        }
        for ex in examples("duration_convert") {
            let n = numbers_in(&ex.prompt)[0];
            let factor = [("weeks", 7), ("days", 24), ("minutes", 60), ("years", 12)]
                .iter()
                .find(|(from, _)| ex.prompt.contains(&format!("{n} {from}")))
                .unwrap()
                .1;
            assert_eq!(ex.answer, (n * factor).to_string(), "{ex:?}");
        }
    }
}
