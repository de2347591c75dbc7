//! Reference facts for the `world` family: capitals and chemical elements from the BSD
//! `quiz` game's data (Debian's `bsdgames`), and country, subdivision, currency and
//! language codes from Debian's `iso-codes`; both pinned and fetched by
//! [`crate::assets::Assets::ensure_deb`].
//!
//! A quiz file line is `question:answer[:...]`, each field a pattern: `a|b` alternatives,
//! `{x}` an optional part, `[a|b]` alternatives inside a word (also how the files spell
//! accents: `Bogot['a|a'|a]`). [`canonical`] reads one spelling of a pattern.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::assets::{Assets, BSD_QUIZ, ISO_CODES};

/// A place and its capital; `reversible` when no other place here has that capital.
pub struct Capital {
    pub place: String,
    /// "country", "US state" or "Canadian province".
    pub kind: &'static str,
    pub capital: String,
    pub reversible: bool,
}

pub struct Element {
    pub symbol: String,
    pub number: u32,
    pub name: String,
}

pub struct Country {
    pub name: String,
    pub alpha2: String,
    pub alpha3: String,
}

/// The lists the `world` family draws from.
pub struct Facts {
    pub capitals: Vec<Capital>,
    pub elements: Vec<Element>,
    pub countries: Vec<Country>,
    /// (ISO 4217 code, currency name).
    pub currencies: Vec<(String, String)>,
    /// (ISO 639-1 code, language name).
    pub languages: Vec<(String, String)>,
    /// (ISO 3166-2 subdivision name, its country's name), for names in one country only.
    pub regions: Vec<(String, String)>,
}

/// Quiz files of capitals, with the kind of place each asks about.
const CAPITAL_FILES: &[(&str, &str)] = &[
    ("africa", "country"),
    ("america", "country"),
    ("asia", "country"),
    ("europe", "country"),
    ("state", "US state"),
    ("province", "Canadian province"),
];

/// Subdivision types of ISO 3166-2 kept for `region_country`: the first-level regions a
/// user would name, not districts or municipalities.
const REGION_TYPES: &[&str] = &[
    "State",
    "Province",
    "Region",
    "Prefecture",
    "Canton",
    "Land",
    "Autonomous community",
    "Autonomous region",
    "Emirate",
    "Territory",
    "Federal district",
];

/// A name a question can hold: ASCII letters, spaces, `-`, `.`, `'`, at most 24
/// characters, starting with a letter.
pub(super) fn tidy(s: &str) -> bool {
    s.len() <= 24
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphabetic() || " -.'".contains(c))
}

/// Every alternative of a quiz pattern, optional parts included, and inside `[...]` the
/// first alternative spelt with letters, spaces and hyphens only.
pub(super) fn alternatives(pattern: &str) -> Vec<String> {
    fn expand(chars: &[char], i: &mut usize, close: Option<char>) -> Vec<String> {
        let mut alts = vec![String::new()];
        while *i < chars.len() {
            let c = chars[*i];
            *i += 1;
            let last = alts.last_mut().expect("never empty");
            match c {
                '|' => alts.push(String::new()),
                '{' => last.push_str(&expand(chars, i, Some('}'))[0]),
                '[' => {
                    let inner = expand(chars, i, Some(']'));
                    let plain =
                        |a: &&String| a.chars().all(|c| c.is_alphabetic() || " -".contains(c));
                    last.push_str(inner.iter().find(plain).unwrap_or(&inner[0]));
                }
                '\\' => {
                    if let Some(n) = chars.get(*i) {
                        last.push(*n);
                        *i += 1;
                    }
                }
                c if Some(c) == close => return alts,
                c => last.push(c),
            }
        }
        alts
    }
    let chars: Vec<char> = pattern.chars().collect();
    expand(&chars, &mut 0, None)
        .into_iter()
        .map(|a| a.trim().to_string())
        .collect()
}

/// The first spelling of a quiz pattern.
pub(super) fn canonical(pattern: &str) -> String {
    alternatives(pattern).swap_remove(0)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn read_json(path: &Path, table: &str) -> Result<Vec<serde_json::Value>> {
    let v: serde_json::Value = serde_json::from_str(&read(path)?)
        .with_context(|| format!("parsing {}", path.display()))?;
    match v.get(table).and_then(|t| t.as_array()) {
        Some(rows) => Ok(rows.clone()),
        None => bail!("{} has no {table:?} table", path.display()),
    }
}

fn field<'a>(row: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    row.get(name)?.as_str()
}

impl Facts {
    /// Reads the quiz files from `quiz` and the ISO tables from `iso`.
    pub fn load(quiz: &Path, iso: &Path) -> Result<Self> {
        let countries_json = read_json(&iso.join("iso_3166-1.json"), "3166-1")?;
        let mut countries = Vec::new();
        let mut iso_names = BTreeSet::new();
        let mut by_alpha2 = BTreeMap::new();
        for row in &countries_json {
            let (Some(name), Some(a2), Some(a3)) = (
                field(row, "common_name").or(field(row, "name")),
                field(row, "alpha_2"),
                field(row, "alpha_3"),
            ) else {
                bail!("iso_3166-1.json: a country without name or codes: {row}");
            };
            iso_names.insert(name.to_string());
            if let Some(n) = field(row, "name") {
                iso_names.insert(n.to_string());
            }
            if tidy(name) {
                by_alpha2.insert(a2.to_string(), name.to_string());
                countries.push(Country {
                    name: name.to_string(),
                    alpha2: a2.to_string(),
                    alpha3: a3.to_string(),
                });
            }
        }

        // Capitals: a place named twice with different capitals (Georgia, the country and
        // the US state) is left out.
        let mut capital_of: BTreeMap<String, (&'static str, BTreeSet<String>)> = BTreeMap::new();
        for (file, kind) in CAPITAL_FILES {
            let path = quiz.join(file);
            for (i, line) in read(&path)?.lines().enumerate() {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 2 {
                    bail!("{}:{}: not a quiz line", path.display(), i + 1);
                }
                // A country by its ISO name where the quiz also spells it so ("Malagasy
                // Republic|Madagascar" is Madagascar).
                let alts = alternatives(f[0]);
                let place = alts
                    .iter()
                    .find(|a| iso_names.contains(*a))
                    .unwrap_or(&alts[0])
                    .clone();
                let capital = canonical(f[1]);
                if tidy(&place) && tidy(&capital) {
                    let entry = capital_of.entry(place).or_insert((kind, BTreeSet::new()));
                    entry.1.insert(capital);
                }
            }
        }
        let mut places_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut capitals: Vec<Capital> = capital_of
            .into_iter()
            .filter_map(|(place, (kind, caps))| match caps.len() {
                1 => Some(Capital {
                    place,
                    kind,
                    capital: caps.into_iter().next()?,
                    reversible: false,
                }),
                _ => None,
            })
            .collect();
        for c in &capitals {
            *places_of.entry(c.capital.clone()).or_default() += 1;
        }
        for c in &mut capitals {
            c.reversible = places_of[&c.capital] == 1;
        }

        let path = quiz.join("elements");
        let mut elements = Vec::new();
        for (i, line) in read(&path)?.lines().enumerate() {
            let f: Vec<&str> = line.split(':').collect();
            let bad = || format!("{}:{}: not an element line", path.display(), i + 1);
            if f.len() != 4 {
                bail!(bad());
            }
            let number: u32 = f[1].parse().with_context(bad)?;
            let (symbol, name) = (canonical(f[0]), canonical(f[3]));
            // Lawrencium's symbol is Lr since 1963; the quiz still has Lw.
            if symbol != "Lw" && tidy(&name) {
                elements.push(Element {
                    symbol,
                    number,
                    name,
                });
            }
        }

        let plain_name = |n: &str| tidy(n) && !n.contains('.');
        let mut currencies = Vec::new();
        for row in read_json(&iso.join("iso_4217.json"), "4217")? {
            if let (Some(code), Some(name)) = (field(&row, "alpha_3"), field(&row, "name")) {
                // X codes are precious metals, funds and testing codes, not currencies.
                if !code.starts_with('X') && plain_name(name) {
                    currencies.push((code.to_string(), name.to_string()));
                }
            }
        }
        let mut languages = Vec::new();
        for row in read_json(&iso.join("iso_639-2.json"), "639-2")? {
            if let (Some(code), Some(name)) = (field(&row, "alpha_2"), field(&row, "name")) {
                if plain_name(name) {
                    languages.push((code.to_string(), name.to_string()));
                }
            }
        }

        let mut countries_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in read_json(&iso.join("iso_3166-2.json"), "3166-2")? {
            let (Some(code), Some(name), Some(kind)) = (
                field(&row, "code"),
                field(&row, "name"),
                field(&row, "type"),
            ) else {
                continue;
            };
            let country = code.split('-').next().and_then(|a2| by_alpha2.get(a2));
            if let Some(country) = country.filter(|_| REGION_TYPES.contains(&kind)) {
                if plain_name(name) && !iso_names.contains(name) && name != country {
                    countries_of
                        .entry(name.to_string())
                        .or_default()
                        .insert(country.clone());
                }
            }
        }
        let regions: Vec<(String, String)> = countries_of
            .into_iter()
            .filter_map(|(r, cs)| match cs.len() {
                1 => Some((r, cs.into_iter().next()?)),
                _ => None,
            })
            .collect();

        for (what, n, want) in [
            ("capitals", capitals.len(), 200),
            ("elements", elements.len(), 100),
            ("countries", countries.len(), 200),
            ("currencies", currencies.len(), 100),
            ("languages", languages.len(), 100),
            ("regions", regions.len(), 1000),
        ] {
            if n < want {
                bail!(
                    "only {n} {what} in {} and {}: are the files complete?",
                    quiz.display(),
                    iso.display()
                );
            }
        }
        Ok(Facts {
            capitals,
            elements,
            countries,
            currencies,
            languages,
            regions,
        })
    }
}

/// The facts from the default asset root, fetched and read once per process.
pub fn facts() -> Result<&'static Facts> {
    static FACTS: std::sync::Mutex<Option<&'static Facts>> = std::sync::Mutex::new(None);
    let mut slot = FACTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = *slot {
        return Ok(f);
    }
    let assets = Assets::new(crate::assets::default_root());
    let quiz = assets.ensure_deb(&BSD_QUIZ)?;
    let iso = assets.ensure_deb(&ISO_CODES)?;
    let f: &'static Facts = Box::leak(Box::new(Facts::load(&quiz, &iso)?));
    *slot = Some(f);
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiz_patterns_read_as_one_spelling() {
        assert_eq!(canonical("Brussel{s}|Bruxelles"), "Brussels");
        assert_eq!(canonical("Bogot['a|a'|a]"), "Bogota");
        assert_eq!(canonical("Andorra la V[ell|iej]a"), "Andorra la Vella");
        assert_eq!(
            canonical("Central Africa{n Rep{ublic}}"),
            "Central African Republic"
        );
        assert_eq!(canonical("Port[-| ]au[-| ]Prince"), "Port-au-Prince");
        assert_eq!(canonical("Chi[,s|s,|s]inau|Kishinev"), "Chisinau");
        assert_eq!(
            alternatives("Malagasy{ Rep{ublic}}|Madagascar"),
            ["Malagasy Republic", "Madagascar"]
        );
    }
}
