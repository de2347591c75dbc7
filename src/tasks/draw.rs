//! The building blocks every task family draws its questions with: a sample with its key,
//! choice questions, and the word and number pools several families share.

use std::collections::BTreeSet;

use super::choice_letter;
use crate::format::rng::Rng;

/// One generated question before phrasing is fixed: `key` identifies its content.
pub(super) struct Sample {
    pub(super) key: String,
    pub(super) prompt: String,
    pub(super) answer: String,
    pub(super) choices: Vec<String>,
}

pub(super) fn sample(key: String, prompt: String, answer: impl ToString) -> Sample {
    Sample {
        key,
        prompt,
        answer: answer.to_string(),
        choices: Vec::new(),
    }
}

/// A choice question: the choices are listed under the question, one letter each.
pub(super) fn choice_sample(
    key: String,
    question: &str,
    choices: Vec<String>,
    right: usize,
    rng: &mut Rng,
) -> Sample {
    let mut prompt = question.to_string();
    for (i, c) in choices.iter().enumerate() {
        prompt.push_str(&format!("\n{}) {c}", choice_letter(i)));
    }
    let letters: Vec<String> = (0..choices.len())
        .map(|i| choice_letter(i).to_string())
        .collect();
    let tail = match rng.below(2) {
        0 => format!("\nAnswer with {}.", or_list(&letters)),
        _ => String::new(),
    };
    prompt.push_str(&tail);
    Sample {
        key,
        prompt,
        answer: choice_letter(right).to_string(),
        choices,
    }
}

fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Common English words, 3 to 9 letters, for the text and comparison tasks.
const WORDS: &str = "able acid aged also area army away baby back ball band bank base bath bear \
beat bell belt bird blue boat body bone book boot born boss both bowl bread brick bridge \
bright brother brown brush build burn busy cake call calm camp card care carpet carry case \
castle cattle cave chair chalk cheap cheese chest chicken child circle city class clean clock \
cloud coast coat coffee cold color comb cook cool copper corn cotton cousin cover crowd \
cream cup curtain dance dark daughter deep desk dinner doctor dollar door dream dress drink \
driver drum duck dust eagle early earth east edge engine evening face fact farm farmer \
father feather fence field finger fire fish flag floor flour flower fly fog food foot forest \
fork fox friend frog fruit garden gate gift girl glass glove goat gold grass green ground \
guitar hair hammer hand happy harbor hat heart heavy hill holiday honey horse hotel house \
hunter ice island jacket jelly jewel juice kettle key king kitchen kite knee knife ladder \
lake lamp leaf lemon letter library lion lip list lizard lock lunch machine magnet market \
meadow metal milk minute mirror money monkey moon morning mother mountain mouse mouth music \
nail needle nest net night noise north nose number ocean office onion orange oven owl paint \
palace paper parent park party pencil pepper piano picture pillow pilot pirate planet plant \
plate pocket poem potato powder prince puzzle queen rabbit radio rain river road robot rock \
roof room rope rose salt sand school sea season seed shadow sheep shelf ship shirt shoe \
shop silver singer sister sky sleep smile snake snow soap sock soldier song soup south \
spoon spring square stamp star station stone storm story street sugar summer sun supper \
table tail teacher tent thread throat thunder ticket tiger toast tomato tongue tooth towel \
tower town toy train tree truck tunnel turtle uncle valley village violin voice wagon wall \
water wave weather whale wheel whistle wind window winter wolf woman wood wool world yard \
yellow zebra anchor apple arrow badge banana basket beach berry blanket bottle button \
camera candle canoe carrot cereal cherry cloth collar crayon diamond dragon eraser fountain \
gravel helmet insect lantern marble napkin necklace orchard panda parrot peach pebble \
pepper pumpkin puppet rocket saddle sailor scarf shovel skate sponge squirrel statue sweater \
tractor trumpet umbrella vase walnut wallet wizard";

pub(super) fn words() -> Vec<&'static str> {
    let set: BTreeSet<&str> = WORDS.split_whitespace().collect();
    set.into_iter().collect()
}

pub(super) fn pick_word(r: &mut Rng) -> &'static str {
    thread_local! {
        static WORDS_SORTED: Vec<&'static str> = words();
    }
    WORDS_SORTED.with(|w| *r.choose(w))
}

/// Two different numbers in `lo..=hi` (as [`Rng::range`] draws them), in the order drawn.
pub(super) fn two_numbers(r: &mut Rng, lo: i64, hi: i64) -> (i64, i64) {
    loop {
        let (a, b) = (r.range(lo, hi), r.range(lo, hi));
        if a != b {
            return (a, b);
        }
    }
}

pub(super) fn numbers(r: &mut Rng, n: usize, lo: i64, hi: i64) -> Vec<i64> {
    let mut out: Vec<i64> = Vec::with_capacity(n);
    while out.len() < n {
        let x = r.range(lo, hi);
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// `s` with its first letter in upper case.
pub(super) fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

pub(super) fn join<T: ToString>(xs: &[T]) -> String {
    xs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
