//! The lists behind the `associations` task family: the qualities adjectives describe
//! ([`QUALITIES`]), the fields words are terms of ([`FIELDS`]), general verbs and verb
//! kinds ([`VERB_KINDS`]), and adjective clusters, built into [`Relations`] by
//! [`associations()`].
//!
//! The tables are curated rather than taken whole from WordNet: each label is one a user
//! would ask about, and labels close enough that both could be right ([`NEAR_QUALITIES`],
//! [`NEAR_FIELDS`]) are kept apart, so that no distractor is also a right answer.

use std::collections::{BTreeMap, BTreeSet};

use super::{Db, Relations, MIN_KNOWN};
use crate::tasks::wordnet::{Pos, Synset, SynsetId};

/// Whether `label`, or a label `near` pairs with it, is in `set`.
pub(super) fn fits(
    set: Option<&BTreeSet<&'static str>>,
    label: &str,
    near: &[(&str, &str)],
) -> bool {
    set.is_some_and(|s| {
        s.iter()
            .any(|x| *x == label || near.contains(&(*x, label)) || near.contains(&(label, *x)))
    })
}

/// The qualities an adjective may be asked about: a label, and the attribute synsets
/// (WordNet's `=` pointers from an adjective, or from the head of its cluster) it stands
/// for, each named by its first two words as written. Attributes too vague to ask about
/// ("quality", "degree", "timing") are not listed.
pub(super) const QUALITIES: &[(&str, &[&str])] = &[
    ("size", &["size", "magnitude"]),
    (
        "color",
        &["hue,chromaticity", "color,colour", "complexion,skin_color"],
    ),
    ("age", &["age", "maturity,matureness"]),
    ("distance", &["distance"]),
    ("weight", &["body_weight", "weight"]),
    ("wetness", &["wetness"]),
    ("strength", &["strength"]),
    ("temperature", &["temperature"]),
    ("fullness", &["fullness"]),
    ("health", &["health,wellness"]),
    ("fear", &["fear,fearfulness", "alarm,dismay"]),
    ("brightness", &["luminosity,brightness", "light,lightness"]),
    ("cleanliness", &["cleanness"]),
    ("duration", &["duration,length", "permanence,permanency"]),
    ("speed", &["speed,swiftness"]),
    ("beauty", &["beauty", "attractiveness"]),
    (
        "amount",
        &["quantity", "measure,quantity", "sufficiency,adequacy"],
    ),
    ("importance", &["importance", "significance"]),
    ("difficulty", &["difficulty,difficultness", "ease,easiness"]),
    ("shape", &["shape,form"]),
    ("width", &["width,breadth"]),
    ("depth", &["depth,deepness"]),
    ("thickness", &["thickness"]),
    ("loudness", &["volume,loudness", "audibility,audibleness"]),
    (
        "happiness",
        &["happiness", "happiness,felicity", "cheerfulness,cheer"],
    ),
    ("interest", &["interest,interestingness", "dullness"]),
    ("complexity", &["complexity,complexness"]),
    ("life", &["animation,life", "animateness,aliveness"]),
    ("pride", &["pride"]),
    ("courage", &["courage,courageousness", "boldness,daring"]),
    ("kindness", &["kindness", "humaneness"]),
    ("texture", &["texture"]),
    ("hardness", &["hardness"]),
    ("height", &["stature,height", "height,tallness"]),
    ("length", &["length"]),
    ("pitch", &["pitch"]),
    ("truth", &["truth,the_true"]),
    ("wealth", &["financial_condition"]),
    ("freedom", &["freedom"]),
    ("legality", &["legality", "lawfulness"]),
    ("perfection", &["perfection,flawlessness"]),
    ("success", &["success"]),
    ("necessity", &["necessity"]),
    ("clarity", &["clarity,lucidity"]),
    ("fertility", &["fertility,fecundity"]),
    ("seriousness", &["seriousness,earnestness"]),
    ("temperament", &["nature", "disposition,temperament"]),
    ("attention", &["attention"]),
    ("intention", &["intentionality"]),
    ("obviousness", &["obviousness,noticeability"]),
    ("originality", &["originality"]),
    ("availability", &["handiness,accessibility"]),
    ("carefulness", &["carefulness"]),
    ("excitement", &["excitement,excitation"]),
    ("certainty", &["certainty"]),
    ("formality", &["formality,formalness"]),
    ("completeness", &["completeness", "integrity,unity"]),
    ("possibility", &["possibility,possibleness"]),
    ("reputation", &["repute,reputation"]),
    ("presence", &["presence"]),
    ("fairness", &["fairness,equity"]),
    ("believability", &["credibility,credibleness"]),
    ("fragility", &["breakableness"]),
    ("usefulness", &["utility,usefulness"]),
    ("power", &["power,powerfulness"]),
    ("playfulness", &["playfulness,fun"]),
    ("practicality", &["practicality"]),
    ("purity", &["purity,pureness"]),
    ("readiness", &["readiness,preparedness"]),
    ("confidence", &["confidence"]),
    ("creativity", &["creativity,creativeness"]),
    ("curliness", &["curliness,waviness"]),
    ("sensitivity", &["sensitivity,sensitiveness"]),
    ("obedience", &["obedience"]),
    ("regularity", &["regularity"]),
    ("familiarity", &["familiarity"]),
    ("state of matter", &["state_of_matter,state"]),
    ("intelligence", &["intelligence"]),
    ("honesty", &["honesty,honestness"]),
    ("loyalty", &["loyalty,trueness", "fidelity,faithfulness"]),
    (
        "politeness",
        &["politeness,niceness", "courtesy,good_manners", "civility"],
    ),
    ("generosity", &["generosity,generousness"]),
    ("modesty", &["modesty,modestness", "humility,humbleness"]),
    (
        "friendliness",
        &["friendliness", "sociability,sociableness"],
    ),
    ("taste", &["taste_property"]),
    ("smell", &["olfactory_property,smell"]),
    ("sharpness", &["sharpness,keenness"]),
    ("freshness", &["freshness"]),
    ("wildness", &["wildness", "tameness,domestication"]),
    ("holiness", &["holiness,sanctity", "piety,piousness"]),
    ("popularity", &["popularity"]),
    ("comfort", &["comfort,comfortableness"]),
    ("convenience", &["convenience"]),
    ("solidity", &["solidity"]),
    (
        "similarity",
        &["similarity", "likeness,alikeness", "difference"],
    ),
    ("morality", &["morality", "evil,evilness"]),
    ("value", &["value", "worthiness"]),
    ("normality", &["normality,normalcy"]),
    ("reality", &["reality,realness"]),
    ("correctness", &["correctness,rightness", "rightness"]),
    ("equality", &["equality"]),
    ("independence", &["independence,independency"]),
    ("stability", &["constancy,stability"]),
];

/// Qualities close enough that an adjective of one may pass for the other ("tall": height,
/// size), so that neither is a distractor where the other is right.
pub(super) const NEAR_QUALITIES: &[(&str, &str)] = &[
    ("size", "height"),
    ("size", "width"),
    ("size", "length"),
    ("size", "thickness"),
    ("size", "depth"),
    ("size", "weight"),
    ("size", "amount"),
    ("height", "length"),
    ("width", "thickness"),
    ("duration", "length"),
    ("distance", "length"),
    ("color", "brightness"),
    ("loudness", "pitch"),
    ("strength", "power"),
    ("strength", "hardness"),
    ("strength", "fragility"),
    ("strength", "stability"),
    ("hardness", "texture"),
    ("hardness", "fragility"),
    ("hardness", "solidity"),
    ("importance", "necessity"),
    ("importance", "seriousness"),
    ("importance", "value"),
    ("difficulty", "complexity"),
    ("truth", "believability"),
    ("truth", "reality"),
    ("truth", "correctness"),
    ("truth", "honesty"),
    ("reality", "believability"),
    ("health", "life"),
    ("obviousness", "clarity"),
    ("completeness", "fullness"),
    ("amount", "fullness"),
    ("carefulness", "attention"),
    ("interest", "excitement"),
    ("pride", "confidence"),
    ("pride", "modesty"),
    ("courage", "confidence"),
    ("courage", "fear"),
    ("kindness", "fairness"),
    ("kindness", "friendliness"),
    ("kindness", "generosity"),
    ("kindness", "politeness"),
    ("kindness", "morality"),
    ("friendliness", "politeness"),
    ("formality", "politeness"),
    ("usefulness", "practicality"),
    ("usefulness", "value"),
    ("usefulness", "convenience"),
    ("possibility", "certainty"),
    ("readiness", "availability"),
    ("availability", "convenience"),
    ("availability", "presence"),
    ("originality", "creativity"),
    ("happiness", "excitement"),
    ("happiness", "comfort"),
    ("happiness", "playfulness"),
    ("happiness", "temperament"),
    ("friendliness", "temperament"),
    ("freshness", "age"),
    ("normality", "regularity"),
    ("normality", "familiarity"),
    ("legality", "fairness"),
    ("legality", "morality"),
    ("morality", "honesty"),
    ("morality", "holiness"),
    ("purity", "cleanliness"),
    ("loyalty", "honesty"),
    ("wildness", "freedom"),
    ("wildness", "obedience"),
    ("solidity", "state of matter"),
    ("solidity", "thickness"),
    ("sharpness", "intelligence"),
    ("equality", "fairness"),
    ("equality", "similarity"),
    ("independence", "freedom"),
    ("success", "wealth"),
    ("popularity", "reputation"),
];

/// Fields a word may be a term of: a label, and the topic domains (WordNet's `;c`
/// pointers) it stands for, each named by its first word as written.
pub(super) const FIELDS: &[(&str, &[&str])] = &[
    (
        "law",
        &[
            "law",
            "crime",
            "criminal_law",
            "contract",
            "civil_law",
            "contract_law",
            "case_law",
            "Roman_law",
            "legislation",
        ],
    ),
    ("the military", &["military", "navy", "war"]),
    (
        "sport",
        &[
            "sport",
            "baseball",
            "golf",
            "American_football",
            "football",
            "riding",
            "tennis",
            "boxing",
            "basketball",
            "softball",
            "squash",
            "badminton",
            "ice_hockey",
            "cricket",
            "water_sport",
            "bowling",
            "fencing",
            "table_tennis",
            "rugby",
            "field_hockey",
            "gymnastics",
            "lacrosse",
            "horse_racing",
            "polo",
            "soccer",
            "tenpins",
            "professional_basketball",
            "auto_racing",
            "racing",
        ],
    ),
    (
        "games",
        &[
            "chess",
            "card_game",
            "bridge",
            "checkers",
            "poker",
            "board_game",
        ],
    ),
    (
        "chemistry",
        &["chemistry", "physical_chemistry", "biochemistry"],
    ),
    (
        "physics",
        &[
            "physics",
            "electronics",
            "electricity",
            "particle_physics",
            "thermodynamics",
            "mechanics",
            "acoustics",
            "optics",
            "nuclear_physics",
            "relativity",
        ],
    ),
    (
        "computing",
        &[
            "computer_science",
            "computer",
            "programming",
            "computer_technology",
        ],
    ),
    (
        "mathematics",
        &[
            "mathematics",
            "statistics",
            "arithmetic",
            "geometry",
            "numeration_system",
        ],
    ),
    (
        "medicine",
        &[
            "medicine",
            "pathology",
            "dentistry",
            "surgery",
            "immunology",
            "obstetrics",
            "epidemiology",
            "veterinary_medicine",
        ],
    ),
    (
        "biology",
        &[
            "biology",
            "botany",
            "genetics",
            "zoology",
            "anatomy",
            "physiology",
            "ecology",
            "microbiology",
            "histology",
            "molecular_biology",
            "cytology",
            "bacteriology",
            "embryology",
            "virology",
        ],
    ),
    (
        "music",
        &[
            "music",
            "singing",
            "counterpoint",
            "jazz",
            "a_cappella_singing",
            "concert",
        ],
    ),
    ("cooking", &["cooking"]),
    ("art", &["art", "fine_arts"]),
    ("photography", &["photography"]),
    (
        "language",
        &[
            "linguistics",
            "grammar",
            "phonetics",
            "language",
            "historical_linguistics",
            "descriptive_linguistics",
            "rhetoric",
        ],
    ),
    (
        "business",
        &[
            "commerce",
            "commercial_enterprise",
            "economics",
            "finance",
            "tax",
            "investment",
            "investing",
            "accounting",
            "corporate_finance",
            "banking",
            "trade",
            "business",
            "auction",
            "corporation",
        ],
    ),
    (
        "psychology",
        &["psychology", "psychoanalysis", "psychiatry"],
    ),
    ("astronomy", &["astronomy", "cosmology"]),
    ("theater", &["performing_arts", "dramaturgy", "drama"]),
    (
        "religion",
        &[
            "religion",
            "theology",
            "Christianity",
            "church_service",
            "Roman_Catholic",
            "Anglican_Church",
            "Hinduism",
            "Judaism",
            "Christian_theology",
            "Buddhism",
            "New_Testament",
            "Orthodox_Church",
            "Episcopal_Church",
            "Islam",
            "Gnosticism",
        ],
    ),
    ("philosophy", &["philosophy", "logic"]),
    (
        "literature",
        &["literature", "poetry", "writing", "prosody"],
    ),
    (
        "farming",
        &["farming", "animal_husbandry", "gardening", "forestry"],
    ),
    (
        "politics",
        &["politics", "government", "election", "diplomacy"],
    ),
    (
        "architecture",
        &["architecture", "construction", "masonry", "carpentry"],
    ),
    ("geology", &["geology", "mineralogy"]),
    (
        "sailing",
        &["navigation", "ship", "seafaring", "boat", "sailing"],
    ),
    (
        "aviation",
        &["air_travel", "airplane", "aircraft", "aeronautics"],
    ),
    ("printing", &["printing"]),
    ("weather", &["meteorology"]),
    ("driving", &["driving", "car", "motor_vehicle"]),
    (
        "history",
        &["history", "archeology", "antiquity", "Middle_Ages"],
    ),
    ("dance", &["dancing", "ballet", "dance"]),
];

/// Fields that share terms, so that neither is a distractor where the other is right.
pub(super) const NEAR_FIELDS: &[(&str, &str)] = &[
    ("biology", "medicine"),
    ("chemistry", "physics"),
    ("chemistry", "biology"),
    ("physics", "astronomy"),
    ("physics", "mathematics"),
    ("mathematics", "computing"),
    ("psychology", "medicine"),
    ("law", "politics"),
    ("law", "business"),
    ("sport", "games"),
    ("art", "photography"),
    ("theater", "literature"),
    ("theater", "dance"),
    ("music", "dance"),
    ("music", "theater"),
    ("religion", "philosophy"),
    ("history", "politics"),
    ("sailing", "the military"),
    ("aviation", "the military"),
    ("driving", "sport"),
    ("architecture", "art"),
    ("farming", "biology"),
    ("geology", "chemistry"),
    ("geology", "astronomy"),
    ("weather", "geology"),
    ("physics", "computing"),
    ("literature", "language"),
    ("philosophy", "psychology"),
    ("history", "religion"),
    ("art", "theater"),
    ("music", "literature"),
    ("printing", "literature"),
    ("business", "politics"),
];

/// Kinds of verbs, from WordNet's verb lexicographer files (`verb.body` is 29, ...,
/// `verb.possession` 40); `verb.social`, `verb.stative` and `verb.weather` are too vague
/// or too small to ask about.
pub(super) const VERB_KINDS: &[(u8, &str)] = &[
    (29, "the body"),
    (30, "change"),
    (31, "thought"),
    (32, "communication"),
    (33, "competition"),
    (34, "consumption"),
    (35, "contact"),
    (36, "creation"),
    (37, "emotion"),
    (38, "motion"),
    (39, "perception"),
    (40, "possession"),
];

/// Prefixes that negate an adjective ("unhappy"), stripped before comparing stems.
const NEGATIONS: &[&str] = &["un", "in", "im", "il", "ir", "non", "dis"];

/// Whether `w` and `x` look like one stem: one starts with the other, or they share their
/// first four letters, with or without a negating prefix on `w` ("unhappy", "happiness").
fn looks_alike(w: &str, x: &str) -> bool {
    let head = |s: &str| s.get(..s.len().min(4)).unwrap_or(s).to_string();
    let stems = std::iter::once(w).chain(NEGATIONS.iter().filter_map(|n| w.strip_prefix(n)));
    w.starts_with(x) || x.starts_with(w) || stems.map(head).any(|s| s == head(x))
}

/// Words of every hypernym synset above the given verb synsets.
fn verb_ancestors(start: &[u32], synsets: &BTreeMap<SynsetId, Synset>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut words = BTreeSet::new();
    let mut todo: Vec<SynsetId> = start.iter().map(|o| (Pos::Verb, *o)).collect();
    while let Some(id) = todo.pop() {
        let Some(s) = synsets.get(&id) else { continue };
        for p in s.pointers.iter().filter(|p| p.symbol == "@") {
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

/// The head of an adjective cluster that `s` is a satellite of: its one similar-to (`&`)
/// pointer, to a synset with an antonym, where `s` has none.
fn satellite_head<'a>(s: &Synset, synsets: &'a BTreeMap<SynsetId, Synset>) -> Option<&'a Synset> {
    let mut heads = s.pointers.iter().filter(|p| p.symbol == "&");
    let (Some(h), None) = (heads.next(), heads.next()) else {
        return None;
    };
    let head = synsets.get(&h.target)?;
    let antonym = |x: &Synset| x.pointers.iter().any(|p| p.symbol == "!");
    (!antonym(s) && antonym(head)).then_some(head)
}

/// The lists of the `associations` family: qualities, fields, general verbs, verb kinds
/// and adjective clusters.
pub(super) fn associations(db: &Db, common: &BTreeMap<Pos, BTreeSet<&str>>, rel: &mut Relations) {
    let plain = |w: &str| (3..=12).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase());
    let count = |w: &str, pos: Pos| db.counts.get(&(w.to_string(), pos)).copied().unwrap_or(0);
    let known = |w: &str, pos: Pos| plain(w) && count(w, pos) >= MIN_KNOWN;
    // Highest count first, then alphabetical: the same on every machine.
    let most_frequent = |ws: Vec<&String>, pos: Pos| {
        ws.into_iter()
            .max_by(|a, b| count(a, pos).cmp(&count(b, pos)).then(b.cmp(a)))
            .cloned()
    };
    let synset = |pos: Pos, off: &u32| db.synsets.get(&(pos, *off));
    let entries = |pos: Pos| db.index.iter().filter(move |((_, p), _)| *p == pos);
    let is_common = |w: &str, pos: Pos| common.get(&pos).is_some_and(|s| s.contains(w));
    let common_verb = |w: &str| is_common(w, Pos::Verb);
    let common_adjective = |w: &str| is_common(w, Pos::Adjective);

    // Qualities: an adjective sense's own attributes (`=`), else those of its cluster's head.
    let quality_of: BTreeMap<&str, &'static str> = QUALITIES
        .iter()
        .flat_map(|(label, keys)| keys.iter().map(move |k| (*k, *label)))
        .collect();
    let qualities_of = |s: &Synset| qualities_of(s, db.synsets, &quality_of);
    for ((w, pos), offs) in entries(Pos::Adjective) {
        if !known(w, *pos) {
            continue;
        }
        let all: BTreeSet<&'static str> = offs
            .iter()
            .filter_map(|o| synset(*pos, o))
            .flat_map(|s| qualities_of(s).into_iter().map(|(q, _)| q))
            .collect();
        if all.is_empty() {
            continue;
        }
        rel.quality_sets.insert(w.clone(), all);
        let Some(first) = offs.first().and_then(|o| synset(*pos, o)) else {
            continue;
        };
        let firsts = qualities_of(first);
        let labels: BTreeSet<&str> = firsts.iter().map(|(q, _)| *q).collect();
        let [label] = labels.into_iter().collect::<Vec<_>>()[..] else {
            continue;
        };
        let mut stems: Vec<&str> = label.split(' ').collect();
        stems.extend(
            firsts
                .iter()
                .flat_map(|(_, a)| a.words.iter().map(String::as_str)),
        );
        if stems.iter().any(|x| rel.related(w, x) || looks_alike(w, x)) {
            continue;
        }
        rel.qualities.push((w.clone(), label.to_string()));
    }

    // Fields: topic domains (`;c`) of every sense where the word is written as asked.
    let field_of: BTreeMap<&str, &'static str> = FIELDS
        .iter()
        .flat_map(|(label, keys)| keys.iter().map(move |k| (*k, *label)))
        .collect();
    let fields_of = |s: &Synset| -> Vec<&'static str> {
        s.pointers
            .iter()
            .filter(|p| p.symbol == ";c")
            .filter_map(|p| field_of.get(db.synsets.get(&p.target)?.words.first()?.as_str()))
            .copied()
            .collect()
    };
    let mut first_field: BTreeMap<&str, &'static str> = BTreeMap::new();
    for ((w, pos), offs) in db.index {
        if !known(w, *pos) {
            continue;
        }
        for (i, s) in offs.iter().filter_map(|o| synset(*pos, o)).enumerate() {
            if !s.words.iter().any(|x| x == w) {
                continue;
            }
            let fs = fields_of(s);
            if i == 0 {
                if let Some(f) = fs.first() {
                    first_field.entry(w.as_str()).or_insert(*f);
                }
            }
            if !fs.is_empty() {
                rel.field_sets.entry(w.clone()).or_default().extend(fs);
            }
        }
    }
    for (w, f) in first_field {
        let stems = f.split(' ').chain(std::iter::once(f));
        if !stems.into_iter().any(|x| looks_alike(w, x)) {
            rel.fields.push((w.to_string(), f.to_string()));
        }
    }

    // General verbs (`@` of a verb's first sense) and verb kinds (its lexicographer file).
    let kind_of: BTreeMap<u8, &'static str> = VERB_KINDS.iter().copied().collect();
    let mut general = BTreeSet::new();
    for ((w, pos), offs) in entries(Pos::Verb) {
        if !common_verb(w) {
            continue;
        }
        rel.verb_ancestors
            .insert(w.clone(), verb_ancestors(offs, db.synsets));
        let parents = offs
            .iter()
            .filter_map(|o| synset(*pos, o))
            .flat_map(|s| s.pointers.iter().filter(|p| p.symbol == "@"))
            .filter_map(|p| db.synsets.get(&p.target))
            .flat_map(|h| h.words.iter().map(|x| x.to_lowercase()))
            .collect();
        rel.verb_parents.insert(w.clone(), parents);
        let Some(first) = offs.first().and_then(|o| synset(*pos, o)) else {
            continue;
        };
        let hyper = first
            .pointers
            .iter()
            .find(|p| p.symbol == "@")
            .and_then(|p| db.synsets.get(&p.target));
        if let Some(h) = hyper {
            let others = h
                .words
                .iter()
                .filter(|x| x.as_str() != w && common_verb(x))
                .collect();
            if let Some(g) = most_frequent(others, *pos) {
                if !g.contains(w.as_str()) && !w.contains(g.as_str()) {
                    general.insert(g.clone());
                    rel.manners.push((w.clone(), g));
                }
            }
        }
        let kinds: BTreeSet<&'static str> = offs
            .iter()
            .filter_map(|o| kind_of.get(&synset(*pos, o)?.lex_file).copied())
            .collect();
        if let Some(k) = kind_of.get(&first.lex_file) {
            if VERB_KINDS.len() >= kinds.len() + 3 {
                rel.verb_kinds.push((w.clone(), k.to_string()));
            }
        }
        rel.verb_kind_sets.insert(w.clone(), kinds);
    }
    rel.manner_verbs = rel.manners.iter().map(|(v, _)| v.clone()).collect();
    rel.general_verbs = general.into_iter().collect();

    // Adjective clusters: a satellite's head, and every sense's cluster head.
    let mut heads = BTreeSet::new();
    for ((w, pos), offs) in entries(Pos::Adjective) {
        if !known(w, *pos) {
            continue;
        }
        let cluster: BTreeSet<String> = offs
            .iter()
            .filter_map(|o| synset(*pos, o))
            .flat_map(|s| {
                satellite_head(s, db.synsets)
                    .unwrap_or(s)
                    .words
                    .iter()
                    .cloned()
            })
            .collect();
        rel.adjective_heads.insert(w.clone(), cluster);
        let Some(first) = offs.first().and_then(|o| synset(*pos, o)) else {
            continue;
        };
        if !first.words.iter().any(|x| x == w) {
            continue;
        }
        let Some(head) = satellite_head(first, db.synsets) else {
            continue;
        };
        let others = head
            .words
            .iter()
            .filter(|x| x.as_str() != w && common_adjective(x))
            .collect();
        if let Some(h) = most_frequent(others, *pos) {
            if !rel.related(w, &h)
                && !looks_alike(w, &h)
                && !h.contains(w.as_str())
                && !w.contains(h.as_str())
            {
                heads.insert(h.clone());
                rel.similar.push((w.clone(), h));
            }
        }
    }
    rel.plain_adjectives = heads.into_iter().collect();

    let words = |list: &[(String, String)]| -> Vec<String> {
        let set: BTreeSet<&String> = list.iter().map(|(w, _)| w).collect();
        set.into_iter().cloned().collect()
    };
    rel.quality_words = words(&rel.qualities);
    rel.field_words = words(&rel.fields);
    rel.quality_names = QUALITIES.iter().map(|(q, _)| q.to_string()).collect();
    rel.field_names = FIELDS.iter().map(|(f, _)| f.to_string()).collect();
    rel.verb_kind_names = VERB_KINDS.iter().map(|(_, k)| k.to_string()).collect();
}

/// The qualities of [`QUALITIES`] an adjective sense describes, each with its attribute
/// synset: the sense's own attributes (`=`), else those of its cluster's head (`&`).
fn qualities_of<'a>(
    s: &Synset,
    synsets: &'a BTreeMap<SynsetId, Synset>,
    labels: &BTreeMap<&str, &'static str>,
) -> Vec<(&'static str, &'a Synset)> {
    let attributes = |x: &Synset| -> Vec<SynsetId> {
        x.pointers
            .iter()
            .filter(|p| p.symbol == "=")
            .map(|p| p.target)
            .collect()
    };
    let mut targets = attributes(s);
    if targets.is_empty() {
        for p in s.pointers.iter().filter(|p| p.symbol == "&") {
            if let Some(h) = synsets.get(&p.target) {
                targets.extend(attributes(h));
            }
        }
    }
    targets
        .iter()
        .filter_map(|t| {
            let a = synsets.get(t)?;
            let key = a
                .words
                .iter()
                .take(2)
                .cloned()
                .collect::<Vec<_>>()
                .join(",");
            Some((*labels.get(key.as_str())?, a))
        })
        .collect()
}
