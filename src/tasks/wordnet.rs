//! Real text for the `lexical` task family: word lists drawn from WordNet 3.0 (Debian's
//! `wordnet-base`, fetched by [`crate::assets::Assets::ensure_deb`]).
//!
//! Only common words are used, so that a question is one a user could ask and a 135M
//! model could know: a word counts as common in a part of speech when its first sense was
//! tagged at least [`MIN_COUNT`] times in WordNet's sense-tagged corpus (`cntlist.rev`),
//! and it is 3 to 12 lower-case letters. Every list is sorted, so a task drawn from it is
//! the same for a seed on every machine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

mod relations;
pub use relations::{Category, Relations, VerbForms};

/// Tag count of a word's first sense from which it counts as common.
pub const MIN_COUNT: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pos {
    Noun,
    Verb,
    Adjective,
    Adverb,
}

impl Pos {
    const ALL: [Pos; 4] = [Pos::Noun, Pos::Verb, Pos::Adjective, Pos::Adverb];

    pub fn name(self) -> &'static str {
        match self {
            Pos::Noun => "noun",
            Pos::Verb => "verb",
            Pos::Adjective => "adjective",
            Pos::Adverb => "adverb",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Pos::Noun => "noun",
            Pos::Verb => "verb",
            Pos::Adjective => "adj",
            Pos::Adverb => "adv",
        }
    }

    /// From a data file's pointer part of speech (`s`, a satellite adjective, is `a`).
    fn from_letter(c: &str) -> Option<Pos> {
        match c {
            "n" => Some(Pos::Noun),
            "v" => Some(Pos::Verb),
            "a" | "s" => Some(Pos::Adjective),
            "r" => Some(Pos::Adverb),
            _ => None,
        }
    }

    /// From a sense key's synset type digit.
    fn from_digit(c: char) -> Option<Pos> {
        match c {
            '1' => Some(Pos::Noun),
            '2' => Some(Pos::Verb),
            '3' | '5' => Some(Pos::Adjective),
            '4' => Some(Pos::Adverb),
            _ => None,
        }
    }
}

type SynsetId = (Pos, u32);

struct Pointer {
    symbol: String,
    target: SynsetId,
    /// 1-based word numbers for a lexical pointer (antonyms); 0 for a semantic one.
    source_word: usize,
    target_word: usize,
}

struct Synset {
    /// As written (case kept: a capital marks a proper noun).
    words: Vec<String>,
    pointers: Vec<Pointer>,
    gloss: String,
    /// Lexicographer file number (`lexnames`: 5 is `noun.animal`, 13 `noun.food`, ...).
    lex_file: u8,
}

/// The word lists the lexical tasks draw from.
pub struct Lexicon {
    /// (word, its antonym), any part of speech.
    pub antonyms: Vec<(String, String)>,
    /// (countable noun, its plural): the regular spelling rules, or `noun.exc` for the
    /// everyday irregular nouns of [`IRREGULAR_PLURALS`].
    pub plurals: Vec<(String, String)>,
    /// (noun, the definition of its first sense up to the first `;`).
    pub definitions: Vec<(String, String)>,
    /// Words that WordNet lists under one part of speech only.
    pub parts_of_speech: Vec<(String, Pos)>,
    /// (noun, the first word of its first sense's hypernym).
    pub kinds: Vec<(String, String)>,
    /// Every hypernym word of `kinds`, once (distractors for `kind_of`).
    pub kind_words: Vec<String>,
    /// Common words by part of speech (distractors for choice questions).
    pub common: BTreeMap<Pos, Vec<String>>,
    /// Every synset of every common word, to keep a distractor from being a synonym.
    senses: BTreeMap<(String, Pos), BTreeSet<u32>>,
    /// Every hypernym word (any depth, any sense) of a common noun in `kinds`.
    ancestors: BTreeMap<String, BTreeSet<String>>,
    /// The further relations and inflections of [`relations`].
    pub rel: Relations,
}

impl Lexicon {
    /// Reads WordNet's `index.*`, `data.*`, `*.exc` and `cntlist.rev` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let counts = read_counts(&dir.join("cntlist.rev"))?;
        let irregular = read_exceptions(&dir.join("noun.exc"))?;
        let mut index: BTreeMap<(String, Pos), Vec<u32>> = BTreeMap::new();
        let mut synsets: BTreeMap<SynsetId, Synset> = BTreeMap::new();
        for pos in Pos::ALL {
            read_index(&dir.join(format!("index.{}", pos.file())), pos, &mut index)?;
            read_data(&dir.join(format!("data.{}", pos.file())), pos, &mut synsets)?;
        }
        let common = |w: &str, pos: Pos| {
            counts.get(&(w.to_string(), pos)).copied().unwrap_or(0) >= MIN_COUNT
                && (3..=12).contains(&w.len())
                && w.bytes().all(|b| b.is_ascii_lowercase())
        };
        // Each common word with all its senses and its first (most frequent) one.
        let firsts: Vec<(&String, Pos, &[u32], &Synset)> = index
            .iter()
            .filter(|((w, pos), _)| common(w, *pos))
            .filter_map(|((w, pos), offs)| {
                let first = synsets.get(&(*pos, *offs.first()?))?;
                Some((w, *pos, offs.as_slice(), first))
            })
            .collect();
        let mut lex = Lexicon {
            antonyms: Vec::new(),
            plurals: Vec::new(),
            definitions: Vec::new(),
            parts_of_speech: Vec::new(),
            kinds: Vec::new(),
            kind_words: Vec::new(),
            common: BTreeMap::new(),
            senses: BTreeMap::new(),
            ancestors: BTreeMap::new(),
            rel: Relations::default(),
        };
        // Words whose first sense is not a proper noun ("cleveland", "march" the month): a
        // proper noun makes a confusing question or a giveaway distractor.
        let mut plain = BTreeSet::new();
        for &(w, pos, offs, s) in &firsts {
            lex.senses
                .insert((w.clone(), pos), offs.iter().copied().collect());
            if s.words
                .iter()
                .any(|x| x.bytes().any(|b| b.is_ascii_uppercase()))
            {
                continue;
            }
            plain.insert((w.as_str(), pos));
            lex.common.entry(pos).or_default().push(w.clone());
            let antonym = s.pointers.iter().find_map(|p| {
                let own = s.words.get(p.source_word.checked_sub(1)?)?;
                let other = synsets
                    .get(&p.target)?
                    .words
                    .get(p.target_word.checked_sub(1)?)?;
                (p.symbol == "!" && own.eq_ignore_ascii_case(w) && common(other, p.target.0))
                    .then(|| other.clone())
            });
            if let Some(a) = antonym {
                lex.antonyms.push((w.clone(), a));
            }
            if pos == Pos::Noun {
                if let Some(p) = plural(w, &offs[..1], &synsets, &irregular) {
                    lex.plurals.push((w.clone(), p));
                }
                let def = s.gloss.split(';').next().unwrap_or("").trim();
                if (10..=100).contains(&def.len()) && !def.to_lowercase().contains(w.as_str()) {
                    lex.definitions.push((w.clone(), def.to_string()));
                }
                let hyper = s.pointers.iter().find(|p| p.symbol == "@");
                if let Some(h) = hyper.and_then(|p| synsets.get(&p.target)?.words.first()) {
                    if h != w && common(h, Pos::Noun) {
                        lex.kinds.push((w.clone(), h.clone()));
                        let ancestors = noun_ancestors(offs, &synsets);
                        lex.ancestors.insert(w.clone(), ancestors);
                    }
                }
            }
        }
        let kind_words: BTreeSet<&String> = lex.kinds.iter().map(|(_, k)| k).collect();
        lex.kind_words = kind_words.into_iter().cloned().collect();
        let mut pos_of: BTreeMap<&str, Vec<Pos>> = BTreeMap::new();
        for (w, pos) in index.keys() {
            pos_of.entry(w.as_str()).or_default().push(*pos);
        }
        lex.parts_of_speech = pos_of
            .into_iter()
            .filter_map(|(w, ps)| match ps[..] {
                [pos] if plain.contains(&(w, pos)) => Some((w.to_string(), pos)),
                _ => None,
            })
            .collect();
        let db = relations::Db {
            index: &index,
            synsets: &synsets,
            counts: &counts,
            verb_exc: &read_exceptions(&dir.join("verb.exc"))?,
            adj_exc: &read_exceptions(&dir.join("adj.exc"))?,
        };
        lex.rel = relations::build(&db, &lex);
        for (what, n) in [
            ("antonym pairs", lex.antonyms.len()),
            ("countable nouns", lex.plurals.len()),
            ("definitions", lex.definitions.len()),
            ("single-part-of-speech words", lex.parts_of_speech.len()),
            ("hypernym pairs", lex.kinds.len()),
        ] {
            if n < 100 {
                bail!(
                    "WordNet in {} gave only {n} {what}: is it complete?",
                    dir.display()
                );
            }
        }
        Ok(lex)
    }

    /// Whether `a` and `b` share a sense in `pos` (then neither is a fair distractor).
    pub fn share_a_sense(&self, a: &str, b: &str, pos: Pos) -> bool {
        let get = |w: &str| self.senses.get(&(w.to_string(), pos));
        match (get(a), get(b)) {
            (Some(x), Some(y)) => !x.is_disjoint(y),
            _ => a == b,
        }
    }

    /// Whether `kind` is a hypernym, at any depth, of any sense of the noun `word`.
    pub fn is_a(&self, word: &str, kind: &str) -> bool {
        self.ancestors.get(word).is_some_and(|a| a.contains(kind))
    }
}

/// Everyday nouns with an irregular plural. The plural itself comes from WordNet's
/// `noun.exc`; the list only picks the ones a user would ask about, because `noun.exc` also
/// holds rare and archaic forms (`camerae`, `brethren`, `beeves`) of nouns whose usual plural
/// is regular.
pub const IRREGULAR_PLURALS: &[&str] = &[
    "analysis",
    "calf",
    "child",
    "crisis",
    "foot",
    "goose",
    "half",
    "hero",
    "knife",
    "leaf",
    "life",
    "loaf",
    "man",
    "mouse",
    "nucleus",
    "ox",
    "phenomenon",
    "potato",
    "shelf",
    "thief",
    "tomato",
    "tooth",
    "wife",
    "wolf",
];

/// The plural of a noun whose first sense is a countable thing (a whole object: an
/// artifact, a living thing, a body part), or `None` when it may be a mass noun, has an
/// exception WordNet lists, or ends in a way the regular rules get wrong (`-o`, `-s`, and
/// `-man`, whose `-men` WordNet derives by rule instead of listing it).
fn plural(
    w: &str,
    first_sense: &[u32],
    synsets: &BTreeMap<SynsetId, Synset>,
    irregular: &BTreeMap<String, Vec<String>>,
) -> Option<String> {
    if IRREGULAR_PLURALS.contains(&w) {
        return match irregular.get(w)?.as_slice() {
            [p] => Some(p.clone()),
            _ => None,
        };
    }
    if irregular.contains_key(w)
        || w.ends_with('o')
        || w.ends_with("man")
        || (w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us"))
        || !noun_ancestors(first_sense, synsets).contains("whole")
    {
        return None;
    }
    let consonant_y = w.ends_with('y') && !w[..w.len() - 1].ends_with(['a', 'e', 'i', 'o', 'u']);
    Some(
        if ["s", "x", "z", "ch", "sh"].iter().any(|e| w.ends_with(e)) {
            format!("{w}es")
        } else if consonant_y {
            format!("{}ies", &w[..w.len() - 1])
        } else {
            format!("{w}s")
        },
    )
}

/// Words of every hypernym synset above the given noun synsets.
fn noun_ancestors(start: &[u32], synsets: &BTreeMap<SynsetId, Synset>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut words = BTreeSet::new();
    let mut todo: Vec<SynsetId> = start.iter().map(|o| (Pos::Noun, *o)).collect();
    while let Some(id) = todo.pop() {
        let Some(s) = synsets.get(&id) else { continue };
        for p in s
            .pointers
            .iter()
            .filter(|p| p.symbol == "@" || p.symbol == "@i")
        {
            if seen.insert(p.target) {
                if let Some(h) = synsets.get(&p.target) {
                    words.extend(h.words.iter().map(|w| w.to_lowercase()));
                }
                todo.push(p.target);
            }
        }
    }
    words
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `noun.exc`, `verb.exc`, `adj.exc`: `inflected_form base_form...`; each base form with
/// its inflected forms.
fn read_exceptions(path: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, line) in read(path)?.lines().enumerate() {
        let mut f = line.split_whitespace();
        let Some(inflected) = f.next() else {
            bail!("{}:{}: not an exception line", path.display(), i + 1);
        };
        for base in f {
            out.entry(base.to_string())
                .or_default()
                .push(inflected.to_string());
        }
    }
    Ok(out)
}

/// `cntlist.rev`: `sense_key sense_number tag_count`; the counts of first senses.
fn read_counts(path: &Path) -> Result<BTreeMap<(String, Pos), u32>> {
    let mut counts = BTreeMap::new();
    for (i, line) in read(path)?.lines().enumerate() {
        let bad = || format!("{}:{}: not a cntlist line", path.display(), i + 1);
        let mut f = line.split_whitespace();
        let (Some(key), Some(sense), Some(n)) = (f.next(), f.next(), f.next()) else {
            bail!(bad());
        };
        if sense != "1" {
            continue;
        }
        let (lemma, rest) = key.split_once('%').with_context(bad)?;
        let pos = rest
            .chars()
            .next()
            .and_then(Pos::from_digit)
            .with_context(bad)?;
        *counts.entry((lemma.to_string(), pos)).or_insert(0) +=
            n.parse::<u32>().with_context(bad)?;
    }
    Ok(counts)
}

/// `index.POS`: `lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt
/// synset_offset...` (lines starting with a space are the licence).
fn read_index(path: &Path, pos: Pos, out: &mut BTreeMap<(String, Pos), Vec<u32>>) -> Result<()> {
    for (i, line) in read(path)?.lines().enumerate() {
        if line.starts_with(' ') {
            continue;
        }
        let bad = || format!("{}:{}: not an index line", path.display(), i + 1);
        let f: Vec<&str> = line.split_whitespace().collect();
        let n: usize = f.get(2).and_then(|x| x.parse().ok()).with_context(bad)?;
        let offsets = f
            .get(f.len().saturating_sub(n)..)
            .filter(|_| f.len() >= n + 4)
            .with_context(bad)?
            .iter()
            .map(|o| o.parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(bad)?;
        out.insert((f[0].to_string(), pos), offsets);
    }
    Ok(())
}

/// `data.POS`: `offset lex_filenum ss_type w_cnt (word lex_id)... p_cnt (symbol offset pos
/// source/target)... [frames] | gloss`.
fn read_data(path: &Path, pos: Pos, out: &mut BTreeMap<SynsetId, Synset>) -> Result<()> {
    for (i, line) in read(path)?.lines().enumerate() {
        if line.starts_with(' ') {
            continue;
        }
        let bad = || format!("{}:{}: not a data line", path.display(), i + 1);
        let (head, gloss) = line.split_once(" | ").unwrap_or((line, ""));
        let f: Vec<&str> = head.split_whitespace().collect();
        let field = |k: usize| f.get(k).copied().with_context(bad);
        let offset: u32 = field(0)?.parse().with_context(bad)?;
        let lex_file: u8 = field(1)?.parse().with_context(bad)?;
        let n_words = usize::from_str_radix(field(3)?, 16).with_context(bad)?;
        let words = (0..n_words)
            .map(|k| {
                // Adjective markers such as `(p)` are not part of the word.
                let w = field(4 + 2 * k)?;
                Ok(w.split('(').next().unwrap_or(w).to_string())
            })
            .collect::<Result<Vec<_>>>()?;
        let at = 4 + 2 * n_words;
        let n_ptrs: usize = field(at)?.parse().with_context(bad)?;
        let pointers = (0..n_ptrs)
            .map(|k| {
                let base = at + 1 + 4 * k;
                let st = field(base + 3)?;
                let hex = |s: &str| usize::from_str_radix(s, 16).with_context(bad);
                Ok(Pointer {
                    symbol: field(base)?.to_string(),
                    target: (
                        Pos::from_letter(field(base + 2)?).with_context(bad)?,
                        field(base + 1)?.parse().with_context(bad)?,
                    ),
                    source_word: hex(st.get(..2).with_context(bad)?)?,
                    target_word: hex(st.get(2..).with_context(bad)?)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.insert(
            (pos, offset),
            Synset {
                words,
                pointers,
                gloss: gloss.trim().to_string(),
                lex_file,
            },
        );
    }
    Ok(())
}

/// The lexicon from the default asset root, fetched and read once per process.
pub fn lexicon() -> Result<&'static Lexicon> {
    static LEXICON: std::sync::Mutex<Option<&'static Lexicon>> = std::sync::Mutex::new(None);
    let mut slot = LEXICON.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(lex) = *slot {
        return Ok(lex);
    }
    let assets = crate::assets::Assets::new(crate::assets::default_root());
    let dir = assets.ensure_deb(&crate::assets::WORDNET)?;
    let lex: &'static Lexicon = Box::leak(Box::new(Lexicon::load(&dir)?));
    *slot = Some(lex);
    Ok(lex)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of WordNet 3.0's data.adj, shortened: "good", with an antonym pointer from
    /// its word 1 to word 1 of synset 01125429, and a similar-to pointer.
    const GOOD: &str = "01123148 00 a 01 good 0 002 ! 01125429 a 0101 & 01123879 a 0000 | having desirable or positive qualities";

    #[test]
    fn reads_a_data_line_with_its_pointers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.adj");
        std::fs::write(&path, format!("  1 licence text\n{GOOD}\n")).unwrap();
        let mut out = BTreeMap::new();
        read_data(&path, Pos::Adjective, &mut out).unwrap();
        let s = &out[&(Pos::Adjective, 1123148)];
        assert_eq!(s.words, ["good"]);
        assert_eq!(s.gloss, "having desirable or positive qualities");
        let ant = &s.pointers[0];
        assert_eq!(ant.symbol, "!");
        assert_eq!(ant.target, (Pos::Adjective, 1125429));
        assert_eq!((ant.source_word, ant.target_word), (1, 1));
        assert_eq!(s.pointers[1].source_word, 0);
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.adj");
        // The pointer count says 3 but only 2 pointers follow.
        let bad = GOOD.replace(" 002 ", " 003 ");
        std::fs::write(&path, format!("{GOOD}\n{bad}\n")).unwrap();
        let err = read_data(&path, Pos::Adjective, &mut BTreeMap::new()).unwrap_err();
        assert!(format!("{err:#}").contains("data.adj:2"), "{err:#}");
    }
}
