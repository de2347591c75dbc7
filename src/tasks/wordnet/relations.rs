//! The further WordNet lists of the `morphology`, `semantics`, `world` and `associations`
//! families: verb and adjective forms (the regular spelling rules, or `verb.exc` /
//! `adj.exc`), derivationally related forms, adverb pertainyms, synonyms, hyponyms, parts
//! and wholes, the lexicographer categories, gloss examples and named instances; and the
//! qualities adjectives describe, the fields words are terms of, general verbs, verb kinds
//! and adjective clusters, whose tables and builder live in the child module
//! [`associations`](mod@associations).
//!
//! The word asked about is common ([`super::MIN_COUNT`]) where the list is long enough;
//! a word it is related to (an adverb, a part, a derived noun) need only be *known*: its
//! first sense tagged at least [`MIN_KNOWN`] time in WordNet's sense-tagged corpus.

use std::collections::{BTreeMap, BTreeSet};

use super::{noun_ancestors, Lexicon, Pos, Synset, SynsetId};

mod associations;

use associations::{associations, fits, NEAR_FIELDS, NEAR_QUALITIES};

/// Tag count of a word's first sense from which it counts as known.
pub const MIN_KNOWN: u32 = 1;

/// What [`build`] reads, already parsed by [`Lexicon::load`].
pub(super) struct Db<'a> {
    pub(super) index: &'a BTreeMap<(String, Pos), Vec<u32>>,
    pub(super) synsets: &'a BTreeMap<SynsetId, Synset>,
    pub(super) counts: &'a BTreeMap<(String, Pos), u32>,
    pub(super) verb_exc: &'a BTreeMap<String, Vec<String>>,
    pub(super) adj_exc: &'a BTreeMap<String, Vec<String>>,
}

/// Broad kinds of nouns, from WordNet's lexicographer files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    Animal,
    Plant,
    Food,
    BodyPart,
    Person,
    Place,
    Object,
}

impl Category {
    pub const ALL: [Category; 7] = [
        Category::Animal,
        Category::Plant,
        Category::Food,
        Category::BodyPart,
        Category::Person,
        Category::Place,
        Category::Object,
    ];

    /// With its article, as a choice reads: "an animal".
    pub fn name(self) -> &'static str {
        match self {
            Category::Animal => "an animal",
            Category::Plant => "a plant",
            Category::Food => "a food",
            Category::BodyPart => "a body part",
            Category::Person => "a person",
            Category::Place => "a place",
            Category::Object => "a man-made object",
        }
    }

    /// `noun.animal`, `noun.plant`, `noun.food`, `noun.body`, `noun.person`,
    /// `noun.location`, `noun.artifact`.
    fn from_lex_file(n: u8) -> Option<Category> {
        match n {
            5 => Some(Category::Animal),
            20 => Some(Category::Plant),
            13 => Some(Category::Food),
            8 => Some(Category::BodyPart),
            18 => Some(Category::Person),
            15 => Some(Category::Place),
            6 => Some(Category::Object),
            _ => None,
        }
    }
}

/// A verb's forms. `past` and `participle` are `None` where WordNet's data leave them in
/// doubt (an irregular form beside a regular one: `shown`/`showed`, `learnt`/`learned`).
pub struct VerbForms {
    pub verb: String,
    pub past: Option<String>,
    pub participle: Option<String>,
    pub ing: Option<String>,
    pub third: String,
}

/// The lists the further word tasks draw from; every list is sorted by its first word.
#[derive(Default)]
pub struct Relations {
    /// Common verbs with their forms.
    pub verbs: Vec<VerbForms>,
    /// (past tense, its verb), where the past tense is not itself a verb and names one verb.
    pub past_bases: Vec<(String, String)>,
    /// (common adjective, comparative, superlative): `-er`/`-est` by the spelling rules or
    /// `adj.exc`, or `more`/`most` for long adjectives.
    pub comparisons: Vec<(String, String, String)>,
    /// (adjective, adverb) where each is the other's only pertainym.
    pub adverbs: Vec<(String, String)>,
    /// (noun, the one verb it is derivationally related to).
    pub noun_verbs: Vec<(String, String)>,
    /// (common verb, its most frequent derivationally related noun).
    pub verb_nouns: Vec<(String, String)>,
    /// (adjective, its most frequent derivationally related noun).
    pub adjective_nouns: Vec<(String, String)>,
    /// (noun, its most frequent derivationally related adjective).
    pub noun_adjectives: Vec<(String, String)>,
    /// (known verb, its most frequent related noun that names a person and looks like an
    /// agent noun: "teach", "teacher").
    pub agents: Vec<(String, String)>,
    /// Common nouns that name a person (distractors for `agents`).
    pub people: Vec<String>,
    /// (common word, part of speech, the most frequent other word of its first sense).
    pub synonyms: Vec<(String, Pos, String)>,
    /// (noun, a noun it names a part of).
    pub wholes: Vec<(String, String)>,
    /// (noun, a noun that is part of it).
    pub parts: Vec<(String, String)>,
    /// (known noun, its category) where no other sense is in another category.
    pub categories: Vec<(String, Category)>,
    /// (common word, part of speech, an example sentence of its first sense with the word
    /// blanked as `___`).
    pub cloze: Vec<(String, Pos, String)>,
    /// Common words that are (`true`) or are never (`false`) a verb, and the same for nouns.
    pub is_verb: Vec<(String, bool)>,
    pub is_noun: Vec<(String, bool)>,
    /// (a named instance as written, "Danube", its kind, "river").
    pub instances: Vec<(String, String)>,
    /// Every kind of `instances`, once.
    pub instance_kinds: Vec<String>,
    /// (known adjective, the quality of [`QUALITIES`](associations::QUALITIES) its first
    /// sense describes: "heavy", "weight"), leaving out pairs of one stem ("careful",
    /// "carefulness").
    pub qualities: Vec<(String, String)>,
    /// The adjectives of `qualities` and every label of
    /// [`QUALITIES`](associations::QUALITIES), once each.
    pub quality_words: Vec<String>,
    pub quality_names: Vec<String>,
    /// (known word, the field of [`FIELDS`](associations::FIELDS) its first sense is a term
    /// of: "baste", "cooking"), leaving out words that share the field's stem ("chemist").
    pub fields: Vec<(String, String)>,
    /// The words of `fields` and every label of [`FIELDS`](associations::FIELDS), once each.
    pub field_words: Vec<String>,
    pub field_names: Vec<String>,
    /// (common verb, the common verb its first sense is a way of doing: "mumble", "talk").
    pub manners: Vec<(String, String)>,
    /// The verbs of `manners` and the general verbs they name, once each.
    pub manner_verbs: Vec<String>,
    pub general_verbs: Vec<String>,
    /// (common verb, the kind of [`VERB_KINDS`](associations::VERB_KINDS) its first sense
    /// belongs to), for verbs that leave at least three kinds for distractors.
    pub verb_kinds: Vec<(String, String)>,
    /// Every label of [`VERB_KINDS`](associations::VERB_KINDS), once.
    pub verb_kind_names: Vec<String>,
    /// (known adjective whose first sense is a satellite, the common head adjective of its
    /// cluster: "enraged", "angry").
    pub similar: Vec<(String, String)>,
    /// Every head adjective of `similar`, once.
    pub plain_adjectives: Vec<String>,
    quality_sets: BTreeMap<String, BTreeSet<&'static str>>,
    field_sets: BTreeMap<String, BTreeSet<&'static str>>,
    verb_kind_sets: BTreeMap<String, BTreeSet<&'static str>>,
    verb_ancestors: BTreeMap<String, BTreeSet<String>>,
    verb_parents: BTreeMap<String, BTreeSet<String>>,
    adjective_heads: BTreeMap<String, BTreeSet<String>>,
    related: BTreeMap<String, BTreeSet<String>>,
    part_links: BTreeSet<(String, String)>,
    senses: BTreeMap<(String, Pos), BTreeSet<u32>>,
    ancestors: BTreeMap<String, BTreeSet<String>>,
}

impl Relations {
    /// Whether `a` and `b` are derivationally related (`decide`, `decision`).
    pub fn related(&self, a: &str, b: &str) -> bool {
        a == b || self.related.get(a).is_some_and(|r| r.contains(b))
    }

    /// Whether WordNet links `a` and `b` as part and whole, either way, in any sense.
    pub fn part_linked(&self, a: &str, b: &str) -> bool {
        a == b
            || self.part_links.contains(&(a.to_string(), b.to_string()))
            || self.part_links.contains(&(b.to_string(), a.to_string()))
    }

    /// Whether the known words `a` and `b` share a sense in `pos`.
    pub fn share_a_sense(&self, a: &str, b: &str, pos: Pos) -> bool {
        let get = |w: &str| self.senses.get(&(w.to_string(), pos));
        match (get(a), get(b)) {
            (Some(x), Some(y)) => !x.is_disjoint(y),
            _ => a == b,
        }
    }

    /// Whether `kind` is a hypernym, at any depth, of any sense of the noun (or named
    /// instance) `word`.
    pub fn is_a(&self, word: &str, kind: &str) -> bool {
        self.ancestors.get(word).is_some_and(|a| a.contains(kind))
    }

    /// Whether some sense of the adjective `word` describes `quality` or a quality close to
    /// it ([`NEAR_QUALITIES`]): then `quality` is no fair distractor for it.
    pub fn describes(&self, word: &str, quality: &str) -> bool {
        fits(self.quality_sets.get(word), quality, NEAR_QUALITIES)
    }

    /// Whether some sense of `word` is a term of `field` or a field close to it
    /// ([`NEAR_FIELDS`]).
    pub fn in_field(&self, word: &str, field: &str) -> bool {
        fits(self.field_sets.get(word), field, NEAR_FIELDS)
    }

    /// Whether `general` is a hypernym, at any depth, of any sense of the verb `verb`.
    pub fn verb_is_a(&self, verb: &str, general: &str) -> bool {
        self.verb_ancestors
            .get(verb)
            .is_some_and(|a| a.contains(general))
    }

    /// Whether the common verbs `a` and `b` are too close for one to be a distractor where
    /// the other is right: the same, synonyms, one a kind of the other, or two kinds of
    /// one verb ("talk" and "utter", both ways to communicate).
    pub fn verbs_close(&self, a: &str, b: &str) -> bool {
        let parents = |x: &str| self.verb_parents.get(x);
        a == b
            || self.share_a_sense(a, b, Pos::Verb)
            || self.verb_is_a(a, b)
            || self.verb_is_a(b, a)
            || parents(a)
                .zip(parents(b))
                .is_some_and(|(x, y)| !x.is_disjoint(y))
    }

    /// Whether some sense of the common verb `verb` is of the kind `kind`.
    pub fn verb_kind_fits(&self, verb: &str, kind: &str) -> bool {
        self.verb_kind_sets
            .get(verb)
            .is_some_and(|k| k.contains(kind))
    }

    /// Whether some sense of one of the adjectives `a` and `b` is in the other's cluster
    /// (a satellite of it, or the same head).
    pub fn similar_to(&self, a: &str, b: &str) -> bool {
        let heads = |x: &str, y: &str| self.adjective_heads.get(x).is_some_and(|h| h.contains(y));
        a == b || heads(a, b) || heads(b, a)
    }
}

/// Kinds of named places asked about even when their name was never tagged in WordNet's
/// corpus (the corpus tags few proper nouns): cities, rivers, countries, ...
const PLACE_KINDS: &[&str] = &[
    "city",
    "river",
    "country",
    "state",
    "island",
    "mountain",
    "lake",
    "sea",
    "ocean",
    "desert",
    "planet",
    "port",
    "capital",
    "volcano",
    "peninsula",
    "continent",
];

/// Endings of nouns that name who does something ("teacher", "actor", "assistant").
const AGENT_SUFFIXES: &[&str] = &["er", "or", "ist", "ant", "ent", "ian", "ee", "ar"];

/// Verbs whose past participle is the verb itself, which `verb.exc` cannot say.
const PARTICIPLE_IS_BASE: &[&str] = &["come", "become", "overcome", "run", "outrun"];

pub(super) fn build(db: &Db, lex: &Lexicon) -> Relations {
    let plain = |w: &str| (3..=12).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase());
    let count = |w: &str, pos: Pos| db.counts.get(&(w.to_string(), pos)).copied().unwrap_or(0);
    let known = |w: &str, pos: Pos| plain(w) && count(w, pos) >= MIN_KNOWN;
    let common: BTreeMap<Pos, BTreeSet<&str>> = lex
        .common
        .iter()
        .map(|(pos, ws)| (*pos, ws.iter().map(String::as_str).collect()))
        .collect();
    let is_common = |w: &str, pos: Pos| common.get(&pos).is_some_and(|s| s.contains(w));
    let first = |w: &str, pos: Pos| {
        let offs = db.index.get(&(w.to_string(), pos))?;
        db.synsets.get(&(pos, *offs.first()?))
    };
    let mut rel = Relations::default();

    // Every sense of every known word, for distractors that must not be synonyms.
    for ((w, pos), offs) in db.index {
        if known(w, *pos) {
            rel.senses
                .insert((w.clone(), *pos), offs.iter().copied().collect());
        }
    }

    // Derivationally related forms (`+`, a lexical pointer), over every sense.
    let mut derived: BTreeMap<(String, Pos), BTreeSet<(String, Pos)>> = BTreeMap::new();
    // Verb -> nouns in `noun.person` the verb's senses link to ("teach" -> "teacher").
    let mut agents_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ((w, pos), offs) in db.index {
        if !known(w, *pos) {
            continue;
        }
        for off in offs {
            let Some(s) = db.synsets.get(&(*pos, *off)) else {
                continue;
            };
            for p in s.pointers.iter().filter(|p| p.symbol == "+") {
                let own = p.source_word.checked_sub(1).and_then(|i| s.words.get(i));
                let other = p
                    .target_word
                    .checked_sub(1)
                    .and_then(|i| db.synsets.get(&p.target)?.words.get(i));
                if let (Some(own), Some(other)) = (own, other) {
                    let person = db.synsets.get(&p.target).is_some_and(|t| t.lex_file == 18);
                    let agent = AGENT_SUFFIXES.iter().any(|x| other.ends_with(x))
                        && other.get(..3) == w.get(..3);
                    if own == w
                        && other != w
                        && *pos == Pos::Verb
                        && person
                        && agent
                        && plain(other)
                    {
                        agents_of
                            .entry(w.clone())
                            .or_default()
                            .insert(other.clone());
                    }
                    if own == w && other != w && known(other, p.target.0) {
                        derived
                            .entry((w.clone(), *pos))
                            .or_default()
                            .insert((other.clone(), p.target.0));
                        rel.related
                            .entry(w.clone())
                            .or_default()
                            .insert(other.clone());
                        rel.related
                            .entry(other.clone())
                            .or_default()
                            .insert(w.clone());
                    }
                }
            }
        }
    }
    let most_frequent = |ws: &mut dyn Iterator<Item = &String>, pos: Pos| {
        // Highest count first, then alphabetical: the same on every machine.
        ws.max_by(|a, b| count(a, pos).cmp(&count(b, pos)).then(b.cmp(a)))
            .cloned()
    };
    let is_person = |w: &str| first(w, Pos::Noun).is_some_and(|s| s.lex_file == 18);
    for ((w, pos), others) in &derived {
        let of = |q: Pos| others.iter().filter(move |(_, p)| *p == q).map(|(o, _)| o);
        match pos {
            Pos::Noun => {
                if let [v] = of(Pos::Verb).collect::<Vec<_>>()[..] {
                    if count(w, *pos) >= 2 {
                        rel.noun_verbs.push((w.clone(), v.clone()));
                    }
                }
                if let Some(a) = most_frequent(&mut of(Pos::Adjective), Pos::Adjective) {
                    rel.noun_adjectives.push((w.clone(), a));
                }
            }
            Pos::Verb => {
                // "straining" of "strain" is the verb again: a gerund is not its noun form.
                let mut nouns = of(Pos::Noun).filter(|n| !n.ends_with("ing"));
                if let Some(n) = most_frequent(&mut nouns, Pos::Noun) {
                    if is_common(w, *pos) {
                        rel.verb_nouns.push((w.clone(), n));
                    }
                }
            }
            Pos::Adjective => {
                if let Some(n) = most_frequent(&mut of(Pos::Noun), Pos::Noun) {
                    rel.adjective_nouns.push((w.clone(), n));
                }
            }
            _ => {}
        }
    }
    for (v, nouns) in &agents_of {
        if let Some(n) = most_frequent(&mut nouns.iter(), Pos::Noun) {
            rel.agents.push((v.clone(), n));
        }
    }
    rel.people = common[&Pos::Noun]
        .iter()
        .filter(|w| is_person(w))
        .map(|w| w.to_string())
        .collect();

    // Adverbs and the adjectives they pertain to (`\` from an adverb's first sense).
    let mut adverbs_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut adjectives_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ((w, pos), _) in db.index.iter().filter(|((_, p), _)| *p == Pos::Adverb) {
        let Some(s) = first(w, *pos).filter(|_| known(w, *pos)) else {
            continue;
        };
        for p in s.pointers.iter().filter(|p| p.symbol == "\\") {
            let own = p.source_word.checked_sub(1).and_then(|i| s.words.get(i));
            let adj = p
                .target_word
                .checked_sub(1)
                .and_then(|i| db.synsets.get(&p.target)?.words.get(i));
            if let (Some(own), Some(adj)) = (own, adj) {
                // "quickly" pertains to "speedy", "rapid" and "quick": keep the one it is
                // formed from.
                let stem = &adj[..adj.len().saturating_sub(1)];
                let formed = own == w && adj != w && w.starts_with(stem);
                if formed && p.target.0 == Pos::Adjective && known(adj, Pos::Adjective) {
                    adverbs_of.entry(adj.clone()).or_default().insert(w.clone());
                    adjectives_of
                        .entry(w.clone())
                        .or_default()
                        .insert(adj.clone());
                }
            }
        }
    }
    for (adj, advs) in &adverbs_of {
        if let [adv] = advs.iter().collect::<Vec<_>>()[..] {
            if adjectives_of[adv].len() == 1 {
                rel.adverbs.push((adj.clone(), adv.clone()));
            }
        }
    }

    // Verb forms.
    let mut pasts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for v in &common[&Pos::Verb] {
        let forms = verb_forms(v, db.verb_exc.get(*v).map(Vec::as_slice).unwrap_or(&[]));
        if let Some(p) = forms.past.as_ref().filter(|p| p.as_str() != *v) {
            pasts.entry(p.clone()).or_default().insert(v.to_string());
        }
        rel.verbs.push(forms);
    }
    for (past, verbs) in pasts {
        if let [v] = verbs.iter().collect::<Vec<_>>()[..] {
            if !db.index.contains_key(&(past.clone(), Pos::Verb)) {
                rel.past_bases.push((past, v.clone()));
            }
        }
    }

    // Adjective comparison, for gradable adjectives: those in `adj.exc`, and those whose
    // first sense, or the head of its cluster (`&`), names a degree of an attribute (`=`:
    // "large" of size). Numbers and relational adjectives ("nine", "internal") have none.
    let has_attribute = |s: &Synset| s.pointers.iter().any(|p| p.symbol == "=");
    let gradable = |a: &str| {
        first(a, Pos::Adjective).is_some_and(|s| {
            has_attribute(s)
                || s.pointers.iter().any(|p| {
                    p.symbol == "&" && db.synsets.get(&p.target).is_some_and(has_attribute)
                })
        })
    };
    for a in &common[&Pos::Adjective] {
        if db.adj_exc.contains_key(*a) || gradable(a) {
            let exc = db.adj_exc.get(*a).map(Vec::as_slice).unwrap_or(&[]);
            if let Some((c, s)) = comparison(a, exc) {
                rel.comparisons.push((a.to_string(), c, s));
            }
        }
    }

    // Synonyms, cloze sentences and part-of-speech checks, for common words.
    for (pos, words) in &common {
        for w in words {
            let Some(s) = first(w, *pos) else { continue };
            let others = s
                .words
                .iter()
                .filter(|o| o.as_str() != *w && known(o, *pos))
                .filter(|o| !o.contains(*w) && !w.contains(o.as_str()));
            if let Some(o) = most_frequent(&mut others.into_iter(), *pos) {
                rel.synonyms.push((w.to_string(), *pos, o));
            }
            if let Some(sentence) = blanked_example(&s.gloss, w) {
                rel.cloze.push((w.to_string(), *pos, sentence));
            }
        }
    }
    rel.synonyms.sort();
    rel.cloze.sort();
    let all_common: BTreeSet<&str> = common.values().flatten().copied().collect();
    for w in all_common {
        for (pos, out) in [(Pos::Verb, &mut rel.is_verb), (Pos::Noun, &mut rel.is_noun)] {
            if count(w, pos) >= MIN_KNOWN {
                out.push((w.to_string(), true));
            } else if !db.index.contains_key(&(w.to_string(), pos)) {
                out.push((w.to_string(), false));
            }
        }
    }

    // Nouns: parts and wholes, categories, ancestors.
    let first_word = |id: &SynsetId| {
        db.synsets
            .get(id)?
            .words
            .iter()
            .find(|x| known(x, Pos::Noun))
            .cloned()
    };
    let mut wholes_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ((w, pos), offs) in db.index.iter().filter(|((_, p), _)| *p == Pos::Noun) {
        if !known(w, *pos) {
            continue;
        }
        let Some(s) = first(w, *pos) else { continue };
        for p in &s.pointers {
            let Some(other) = first_word(&p.target).filter(|o| o != w) else {
                continue;
            };
            let link = match p.symbol.as_str() {
                "%p" => (w.clone(), other),
                "#p" => (other, w.clone()),
                _ => continue,
            };
            rel.part_links.insert(link);
        }
        let cats: BTreeSet<Category> = offs
            .iter()
            .filter_map(|o| Category::from_lex_file(db.synsets.get(&(*pos, *o))?.lex_file))
            .collect();
        // A proper noun ("Dallas", the genus "Thamnophis") is written capitalised.
        let lower = s.words.iter().any(|x| x == w);
        if let (Some(c), 1, true) = (Category::from_lex_file(s.lex_file), cats.len(), lower) {
            rel.categories.push((w.clone(), c));
        }
        if is_common(w, *pos) {
            rel.ancestors
                .insert(w.clone(), noun_ancestors(offs, db.synsets));
        }
    }
    for (whole, part) in &rel.part_links {
        wholes_of
            .entry(part.clone())
            .or_default()
            .insert(whole.clone());
        rel.parts.push((whole.clone(), part.clone()));
    }
    for (part, wholes) in &wholes_of {
        if let Some(w) = most_frequent(&mut wholes.iter(), Pos::Noun) {
            rel.wholes.push((part.clone(), w));
        }
    }

    // Named instances ("Danube": a river): nouns whose first sense is an instance.
    let mut kinds = BTreeSet::new();
    for ((w, pos), offs) in db.index.iter().filter(|((_, p), _)| *p == Pos::Noun) {
        let Some(s) = first(w, *pos) else { continue };
        let Some(kind) = s
            .pointers
            .iter()
            .find(|p| p.symbol == "@i")
            .and_then(|p| first_word(&p.target))
        else {
            continue;
        };
        let Some(name) = s.words.iter().find(|x| x.eq_ignore_ascii_case(w)) else {
            continue;
        };
        // "Amazon River" is a river: a name holding its kind gives the answer away.
        let unknown = count(w, *pos) < MIN_KNOWN && !PLACE_KINDS.contains(&kind.as_str());
        if unknown || name.to_lowercase().contains(kind.as_str()) {
            continue;
        }
        let name = name.replace('_', " ");
        let tidy = name
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == ' ' || c == '-');
        if tidy && (3..=24).contains(&name.len()) && name.starts_with(|c: char| c.is_uppercase()) {
            rel.ancestors
                .insert(name.clone(), noun_ancestors(offs, db.synsets));
            kinds.insert(kind.clone());
            rel.instances.push((name, kind));
        }
    }
    rel.instances.sort();
    rel.instance_kinds = kinds.into_iter().collect();
    associations(db, &common, &mut rel);
    rel
}

fn consonant_y(w: &str) -> bool {
    w.ends_with('y') && !w[..w.len() - 1].ends_with(['a', 'e', 'i', 'o', 'u'])
}

/// Whether `past` and `participle` differ only in one letter, `a` for `u` ("sang", "sung").
fn a_to_u(past: &str, participle: &str) -> bool {
    let diff: Vec<(char, char)> = past
        .chars()
        .zip(participle.chars())
        .filter(|(x, y)| x != y)
        .collect();
    past.len() == participle.len() && diff == [('a', 'u')]
}

/// A verb's forms: `verb.exc` where it lists them, else the regular spelling rules.
fn verb_forms(v: &str, exc: &[String]) -> VerbForms {
    let ing_exc: Vec<&String> = exc.iter().filter(|f| f.ends_with("ing")).collect();
    // Other `-s` forms ("has") are the third person, not a past.
    let past_exc: Vec<&String> = exc
        .iter()
        .filter(|f| !f.ends_with("ing") && !f.ends_with('s'))
        .collect();
    let (past, participle) = match past_exc[..] {
        [] => {
            let p = if v.ends_with('e') {
                format!("{v}d")
            } else if consonant_y(v) {
                format!("{}ied", &v[..v.len() - 1])
            } else {
                format!("{v}ed")
            };
            (Some(p.clone()), Some(p))
        }
        // "shown" beside the regular "showed"; "learnt" beside "learned".
        [f] if f.ends_with("wn")
            || f.ends_with("en")
            || *f == format!("{v}t")
            || *f == format!("{}t", &v[..v.len() - 1]) =>
        {
            (None, None)
        }
        [f] if PARTICIPLE_IS_BASE.contains(&v) => (Some(f.clone()), Some(v.to_string())),
        [f] => (Some(f.clone()), Some(f.clone())),
        [a, b] => match (a.ends_with('n'), b.ends_with('n')) {
            (false, true) => (Some(a.clone()), Some(b.clone())),
            (true, false) => (Some(b.clone()), Some(a.clone())),
            _ if a_to_u(a, b) => (Some(a.clone()), Some(b.clone())),
            _ if a_to_u(b, a) => (Some(b.clone()), Some(a.clone())),
            _ => (None, None),
        },
        _ => (None, None),
    };
    let ing = match ing_exc[..] {
        [f] => Some(f.clone()),
        [] if v.ends_with("ie") => Some(format!("{}ying", &v[..v.len() - 2])),
        [] if v.ends_with("ee") || v.ends_with("ye") || v.ends_with("oe") => {
            Some(format!("{v}ing"))
        }
        [] if v.ends_with('e') => Some(format!("{}ing", &v[..v.len() - 1])),
        [] => Some(format!("{v}ing")),
        _ => None,
    };
    let third = if v == "have" {
        "has".to_string()
    } else if ["s", "x", "z", "ch", "sh", "o"]
        .iter()
        .any(|e| v.ends_with(e))
    {
        format!("{v}es")
    } else if consonant_y(v) {
        format!("{}ies", &v[..v.len() - 1])
    } else {
        format!("{v}s")
    };
    VerbForms {
        verb: v.to_string(),
        past,
        participle,
        ing,
        third,
    }
}

/// Vowel groups, less a silent final `e`: "big" 1, "happy" 2, "beautiful" 3, "large" 1.
fn syllables(w: &str) -> usize {
    let mut n = 0;
    let mut in_vowel = false;
    for (i, c) in w.chars().enumerate() {
        let vowel = "aeiou".contains(c) || (c == 'y' && i > 0);
        if vowel && !in_vowel {
            n += 1;
        }
        in_vowel = vowel;
    }
    if n > 1 && w.ends_with('e') && !w.ends_with("le") && !w.ends_with("ee") {
        n -= 1;
    }
    n
}

/// Suffixes of adjectives compared with `more`/`most`.
const PERIPHRASTIC: &[&str] = &[
    "ed", "ing", "ful", "ous", "ive", "al", "ic", "ish", "less", "ent", "ant", "ible", "able",
    "ar", "ary", "ory", "ile", "ine",
];

/// (comparative, superlative): `adj.exc` ("better", "bigger"), the rules for one-syllable
/// adjectives and two-syllable ones in `-y`, or `more`/`most` for three syllables and
/// the suffixes of [`PERIPHRASTIC`]; `None` for the two-syllable adjectives that go either
/// way ("cleverer", "more clever") and for a one-syllable adjective whose final consonant
/// may double without `adj.exc` saying so.
fn comparison(a: &str, exc: &[String]) -> Option<(String, String)> {
    if !exc.is_empty() {
        let (sup, comp): (Vec<&String>, Vec<&String>) = exc.iter().partition(|f| f.ends_with("st"));
        return match (&comp[..], &sup[..]) {
            ([c], [s]) => Some((c.to_string(), s.to_string())),
            _ => None,
        };
    }
    let n = syllables(a);
    let vowel = |c: char| "aeiou".contains(c);
    let cs: Vec<char> = a.chars().collect();
    let cvc = cs.len() >= 3
        && !vowel(cs[cs.len() - 1])
        && !"wxy".contains(cs[cs.len() - 1])
        && vowel(cs[cs.len() - 2])
        && !vowel(cs[cs.len() - 3]);
    if n >= 2 && PERIPHRASTIC.iter().any(|s| a.ends_with(s)) || n >= 3 {
        Some((format!("more {a}"), format!("most {a}")))
    } else if n == 1 && a.ends_with('e') {
        Some((format!("{a}r"), format!("{a}st")))
    } else if (n == 1 || n == 2) && consonant_y(a) {
        let stem = &a[..a.len() - 1];
        Some((format!("{stem}ier"), format!("{stem}iest")))
    } else if n == 1 && !cvc && !a.ends_with("ed") {
        Some((format!("{a}er"), format!("{a}est")))
    } else {
        None
    }
}

/// The first quoted example of a gloss that holds `w` as a word exactly once, with it
/// blanked; 20 to 120 characters.
fn blanked_example(gloss: &str, w: &str) -> Option<String> {
    gloss.split(';').find_map(|part| {
        let ex = part.trim().strip_prefix('"')?.strip_suffix('"')?.trim();
        let is_w = |t: &str| t.trim_matches(|c: char| !c.is_ascii_alphabetic()) == w;
        let tokens: Vec<&str> = ex.split(' ').collect();
        let hits = tokens.iter().filter(|t| is_w(t)).count();
        if hits != 1 || !(20..=120).contains(&ex.len()) || ex.contains('_') {
            return None;
        }
        let blanked: Vec<String> = tokens
            .iter()
            .map(|t| {
                if is_w(t) {
                    t.replacen(w, "___", 1)
                } else {
                    t.to_string()
                }
            })
            .collect();
        Some(blanked.join(" "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(v: &str, exc: &[&str]) -> (Option<String>, Option<String>, Option<String>, String) {
        let exc: Vec<String> = exc.iter().map(|s| s.to_string()).collect();
        let f = verb_forms(v, &exc);
        (f.past, f.participle, f.ing, f.third)
    }

    #[test]
    fn verb_forms_follow_the_rules_and_the_exceptions() {
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            forms("walk", &[]),
            (s("walked"), s("walked"), s("walking"), "walks".into())
        );
        assert_eq!(
            forms("carry", &[]),
            (s("carried"), s("carried"), s("carrying"), "carries".into())
        );
        assert_eq!(forms("make", &[]).2, s("making"));
        assert_eq!(forms("die", &["dying"]).2, s("dying"));
        assert_eq!(forms("see", &["saw", "seen"]).0, s("saw"));
        assert_eq!(forms("see", &["saw", "seen"]).1, s("seen"));
        assert_eq!(forms("sing", &["sang", "sung"]).0, s("sang"));
        assert_eq!(forms("sing", &["sung", "sang"]).1, s("sung"));
        assert_eq!(
            forms("begin", &["began", "begun", "beginning"]).1,
            s("begun")
        );
        assert_eq!(
            forms("stop", &["stopped", "stopping"]),
            (s("stopped"), s("stopped"), s("stopping"), "stops".into())
        );
        assert_eq!(forms("come", &["came"]).1, s("come"));
        assert_eq!(forms("show", &["shown"]).0, None);
        assert_eq!(forms("learn", &["learnt"]).0, None);
        assert_eq!(forms("have", &["had", "has"]).0, s("had"));
        assert_eq!(forms("have", &["had", "has"]).3, "has");
        assert_eq!(forms("watch", &[]).3, "watches");
    }

    #[test]
    fn comparison_follows_the_rules_and_the_exceptions() {
        let c = |a: &str, exc: &[&str]| {
            let exc: Vec<String> = exc.iter().map(|s| s.to_string()).collect();
            comparison(a, &exc)
        };
        let p = |x: &str, y: &str| Some((x.to_string(), y.to_string()));
        assert_eq!(c("good", &["better", "best"]), p("better", "best"));
        assert_eq!(c("big", &["bigger", "biggest"]), p("bigger", "biggest"));
        assert_eq!(c("tall", &[]), p("taller", "tallest"));
        assert_eq!(c("large", &[]), p("larger", "largest"));
        assert_eq!(c("happy", &[]), p("happier", "happiest"));
        assert_eq!(c("beautiful", &[]), p("more beautiful", "most beautiful"));
        assert_eq!(c("careful", &[]), p("more careful", "most careful"));
        assert_eq!(c("clever", &[]), None);
        assert_eq!(c("thin", &[]), None);
    }

    #[test]
    fn an_example_is_blanked_once() {
        let gloss = "moving fast; \"a fast car\"; \"the car was fast and the road was fast\"";
        assert_eq!(blanked_example(gloss, "fast"), None);
        assert_eq!(
            blanked_example("a vehicle; \"he parked the car outside\"", "car"),
            Some("he parked the ___ outside".to_string())
        );
    }
}
