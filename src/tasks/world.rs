//! The `world` family: reference facts: capitals and chemical elements (the BSD quiz
//! game's data), ISO country, currency and language codes and regions ([`super::facts`]),
//! and WordNet's named instances.

use super::draw::*;
use super::facts::Facts;
use super::lexical::four_choices;
use super::wordnet::Lexicon;
use super::{
    spec,
    Draw::{Facts as Fact, Lexical},
    Scoring, Spec,
};
use crate::format::rng::Rng;

pub(super) const SPECS: &[Spec] = &[
    spec("capital", "world", Scoring::Exact, Fact(gen_capital)),
    spec(
        "chemical_element",
        "world",
        Scoring::Exact,
        Fact(gen_chemical_element),
    ),
    spec(
        "country_code",
        "world",
        Scoring::Exact,
        Fact(gen_country_code),
    ),
    spec(
        "country_code3",
        "world",
        Scoring::Exact,
        Fact(gen_country_code3),
    ),
    spec("iso_code", "world", Scoring::Exact, Fact(gen_iso_code)),
    spec(
        "region_country",
        "world",
        Scoring::Choice,
        Fact(gen_region_country),
    ),
    spec(
        "instance_of",
        "world",
        Scoring::Choice,
        Lexical(gen_instance_of),
    ),
];

/// Each fact is asked both ways ("the capital of France?", "Paris is the capital of?"):
/// different questions, so the key holds the direction.
fn gen_capital(r: &mut Rng, f: &Facts) -> Sample {
    let c = r.choose(&f.capitals);
    let (place, kind, capital) = (&c.place, c.kind, &c.capital);
    if c.reversible && r.below(2) == 0 {
        let p = match r.below(3) {
            0 => format!("{capital} is the capital of which {kind}?"),
            1 => format!("Which {kind} has {capital} as its capital?"),
            _ => format!("Of which {kind} is \"{capital}\" the capital?"),
        };
        return sample(format!("{capital}>place"), p, place);
    }
    let p = match r.below(3) {
        0 => format!("What is the capital of {place}?"),
        1 => format!("Name the capital city of the {kind} {place}."),
        _ => format!("{place}'s capital is which city?"),
    };
    sample(format!("{place}>capital"), p, capital)
}

fn gen_chemical_element(r: &mut Rng, f: &Facts) -> Sample {
    let e = r.choose(&f.elements);
    let (sym, name, n) = (&e.symbol, &e.name, e.number);
    match r.below(4) {
        0 => {
            let p = match r.below(2) {
                0 => format!("What is the chemical symbol of {name}?"),
                _ => format!("Which element symbol stands for {name}?"),
            };
            sample(format!("{name}>symbol"), p, sym)
        }
        1 => {
            let p = match r.below(2) {
                0 => format!("Which chemical element has the symbol {sym}?"),
                _ => format!("The element symbol '{sym}' stands for which element?"),
            };
            sample(format!("{sym}>name"), p, name)
        }
        2 => {
            let p = match r.below(2) {
                0 => format!("What is the atomic number of {name}?"),
                _ => format!("How many protons does an atom of {name} have?"),
            };
            sample(format!("{name}>number"), p, n)
        }
        _ => {
            let p = match r.below(2) {
                0 => format!("Which chemical element has atomic number {n}?"),
                _ => format!("Name the element with {n} protons."),
            };
            sample(format!("{n}>name"), p, name)
        }
    }
}

fn gen_country_code(r: &mut Rng, f: &Facts) -> Sample {
    let c = r.choose(&f.countries);
    if r.below(2) == 0 {
        let p = match r.below(3) {
            0 => format!("What is the two-letter ISO country code of {}?", c.name),
            1 => format!("Give the ISO 3166-1 alpha-2 code for {}.", c.name),
            _ => format!("{}: what is its two-letter country code?", c.name),
        };
        sample(format!("{}>code", c.name), p, &c.alpha2)
    } else {
        let p = match r.below(3) {
            0 => format!("Which country has the two-letter ISO code {}?", c.alpha2),
            1 => format!(
                "The ISO 3166-1 alpha-2 code {} stands for which country?",
                c.alpha2
            ),
            _ => format!("Name the country whose two-letter code is {}.", c.alpha2),
        };
        sample(format!("{}>country", c.alpha2), p, &c.name)
    }
}

fn gen_country_code3(r: &mut Rng, f: &Facts) -> Sample {
    let c = r.choose(&f.countries);
    if r.below(2) == 0 {
        let p = match r.below(3) {
            0 => format!("What is the three-letter ISO country code of {}?", c.name),
            1 => format!("Give the ISO 3166-1 alpha-3 code for {}.", c.name),
            _ => format!("{}: what is its three-letter country code?", c.name),
        };
        sample(format!("{}>code", c.name), p, &c.alpha3)
    } else {
        let p = match r.below(3) {
            0 => format!("Which country has the three-letter ISO code {}?", c.alpha3),
            1 => format!(
                "The ISO 3166-1 alpha-3 code {} stands for which country?",
                c.alpha3
            ),
            _ => format!("Name the country whose three-letter code is {}.", c.alpha3),
        };
        sample(format!("{}>country", c.alpha3), p, &c.name)
    }
}

/// Currency (ISO 4217) and language (ISO 639-1) codes, each asked both ways: the two
/// tables are too short for a task each.
fn gen_iso_code(r: &mut Rng, f: &Facts) -> Sample {
    let currency = r.below(2) == 0;
    let (code, name) = r.choose(if currency {
        &f.currencies
    } else {
        &f.languages
    });
    let what = if currency { "currency" } else { "language" };
    if r.below(2) == 0 {
        let p = match (currency, r.below(2)) {
            (true, 0) => format!("What is the ISO 4217 code of the currency {name}?"),
            (true, _) => format!("Which three-letter currency code stands for the {name}?"),
            (false, 0) => format!("What is the two-letter ISO 639-1 code of {name}?"),
            (false, _) => format!("Which two-letter language code stands for {name}?"),
        };
        sample(format!("{what}:{name}>code"), p, code)
    } else {
        let p = match r.below(2) {
            0 => format!("Which {what} has the ISO code {code}?"),
            _ => format!("The {what} code '{code}' stands for which {what}?"),
        };
        sample(format!("{what}:{code}>name"), p, name)
    }
}

fn gen_region_country(r: &mut Rng, f: &Facts) -> Sample {
    let (region, country) = r.choose(&f.regions);
    let mut choices = vec![country.clone()];
    while choices.len() < 4 {
        let c = &r.choose(&f.countries).name;
        if !choices.contains(c) {
            choices.push(c.clone());
        }
    }
    r.shuffle(&mut choices);
    let right = choices.iter().position(|c| c == country).unwrap_or(0);
    let q = match r.below(3) {
        0 => format!("In which country is the region {region}?"),
        1 => format!("{region} is a region of which country?"),
        _ => format!("Which country has a province, state or region called \"{region}\"?"),
    };
    choice_sample(region.clone(), &q, choices, right, r)
}

fn gen_instance_of(r: &mut Rng, lex: &Lexicon) -> Sample {
    let (name, kind) = r.choose(&lex.rel.instances);
    let kinds = &lex.rel.instance_kinds;
    let (choices, right) = four_choices(r, kind, kinds, |d| !lex.rel.is_a(name, d));
    let q = match r.below(3) {
        0 => format!("What is {name}?"),
        1 => format!("{name} is best described as what?"),
        _ => format!("Which word describes \"{name}\"?"),
    };
    choice_sample(name.clone(), &q, choices, right, r)
}

#[cfg(test)]
mod tests {
    use super::super::{builtin_task, facts::facts, SuiteConfig};
    use super::*;

    #[test]
    fn world_tasks_build_with_short_answers() {
        for s in SPECS {
            let t = builtin_task(&s.name, &SuiteConfig::default()).unwrap();
            assert_eq!((t.train.len(), t.test.len()), (240, 60), "{}", s.name);
            for ex in t.train.iter().chain(&t.test) {
                assert!(ex.answer.split_whitespace().count() <= 5, "{ex:?}");
            }
        }
    }

    #[test]
    fn facts_are_right() {
        let f = facts().unwrap();
        let capital = |p: &str| {
            f.capitals
                .iter()
                .find(|c| c.place == p)
                .map(|c| c.capital.as_str())
        };
        assert_eq!(capital("France"), Some("Paris"));
        assert_eq!(capital("Japan"), Some("Tokyo"));
        assert_eq!(capital("Madagascar"), Some("Antananarivo"));
        assert_eq!(capital("Colombia"), Some("Bogota"));
        assert_eq!(capital("Ohio"), Some("Columbus"));
        // Both a country and a US state: left out.
        assert_eq!(capital("Georgia"), None);
        let element = |s: &str| {
            f.elements
                .iter()
                .find(|e| e.symbol == s)
                .map(|e| (e.number, e.name.as_str()))
        };
        assert_eq!(element("H"), Some((1, "Hydrogen")));
        assert_eq!(element("Fe"), Some((26, "Iron")));
        assert_eq!(element("Au"), Some((79, "Gold")));
        assert_eq!(element("Na"), Some((11, "Sodium")));
        assert_eq!(element("Lw"), None);
        let country = |n: &str| {
            f.countries
                .iter()
                .find(|c| c.name == n)
                .map(|c| (c.alpha2.as_str(), c.alpha3.as_str()))
        };
        assert_eq!(country("Japan"), Some(("JP", "JPN")));
        assert_eq!(country("Germany"), Some(("DE", "DEU")));
        assert!(f.currencies.contains(&("EUR".into(), "Euro".into())));
        assert!(f.languages.contains(&("fr".into(), "French".into())));
        assert!(f
            .regions
            .contains(&("Texas".into(), "United States".into())));
        // The task's answers agree with the tables.
        let t = builtin_task("chemical_element", &SuiteConfig::default()).unwrap();
        for ex in t.train.iter().chain(&t.test) {
            let e = f.elements.iter().find(|e| {
                ex.prompt.contains(&format!(" {}?", e.name))
                    || ex.prompt.contains(&format!(" {} ", e.name))
            });
            if let Some(e) = e.filter(|_| {
                ex.prompt.contains("symbol stands for") || ex.prompt.contains("chemical symbol of")
            }) {
                assert_eq!(ex.answer, e.symbol, "{ex:?}");
            }
        }
    }
}
