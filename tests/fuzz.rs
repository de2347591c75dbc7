//! Bad input, fuzzed (issue 15): seeded random inputs to the code that judges what clients
//! send, each checked against the rules as written out again here. Task ids from a header,
//! a body field and `user`, in every source order, in open and keys mode
//! ([`find_task_id`], [`keyed_task_id`]); chat and completion bodies ([`check_body`]: the
//! model, the bounds, the stock request type, the engine's text); adapters as an upload's two files, with one
//! fault or none ([`parse_adapter`]). No input may panic; every refusal is a 4xx `ApiError`
//! whose `param` or message names what is wrong; exactly the inputs the rules allow are
//! accepted.
//!
//! Deterministic: case `i` of a seed is the same everywhere, and a failure names both.
//! `DND_FUZZ_SEED` (default 15) picks the seed, `DND_FUZZ_CASES` (default 2000) the cases
//! per family (adapters: a tenth of them); see README, "Run the tests".

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use candle_core::{DType, Device, Tensor};
use mistralrs_dnd::format::peft::tensor_name;
use mistralrs_dnd::format::rng::Rng;
use mistralrs_dnd::format::Module;
use mistralrs_dnd::server::admin::parse_adapter;
use mistralrs_dnd::server::config::{PluginConfig, TaskSource};
use mistralrs_dnd::server::error::ApiError;
use mistralrs_dnd::server::request::{check_body, Fields};
use mistralrs_dnd::server::tagging::{find_task_id, keyed_task_id};
use mistralrs_dnd::testing::{random_adapter, tiny_dims};
use serde_json::{json, Map, Value};

fn seed() -> u64 {
    std::env::var("DND_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

/// Cases of a family: `DND_FUZZ_CASES` (default 2000), divided by `scale`, at least 1.
fn cases(scale: usize) -> usize {
    let n = std::env::var("DND_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000usize);
    (n / scale).max(1)
}

/// Runs `check` on `n` inputs made by `make`, case `i` from its own random stream (so that
/// it can be rerun alone); a panic, in the code under test or a failed check, fails the
/// test with the case, the seed and the input.
fn fuzz<T: fmt::Debug>(family: &str, n: usize, make: impl Fn(&mut Rng) -> T, check: impl Fn(&T)) {
    let seed = seed();
    for i in 0..n {
        let input = make(&mut Rng::derive(seed, &format!("{family}/{i}")));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{family}: case {i} of DND_FUZZ_SEED={seed} failed: {why}\ninput: {input:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Task ids

const ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
const BAD_CHARS: &[char] = &[
    ' ', '/', '\\', '%', ':', '@', '+', '"', '\t', '\n', '\0', '\u{7f}', 'é', '€', '😀',
];
const TENANT: &str = "acme";
const HEADER: &str = "x-task-id";

fn word(rng: &mut Rng, len: usize) -> String {
    (0..len).map(|_| *rng.choose(ID_CHARS) as char).collect()
}

/// A string that may or may not be a task id: mostly well-formed ones, and each way of
/// being wrong (length, a character, a leading dot, empty).
fn random_id(rng: &mut Rng) -> String {
    match rng.below(9) {
        0..=2 => {
            let len = 1 + rng.below(24);
            word(rng, len)
        }
        3 => {
            // Around the limit of 128.
            let len = 126 + rng.below(5);
            word(rng, len)
        }
        4 => {
            let len = 1 + rng.below(20);
            let mut chars: Vec<char> = word(rng, len).chars().collect();
            let at = rng.below(chars.len() + 1);
            chars.insert(at, *rng.choose(BAD_CHARS));
            chars.into_iter().collect()
        }
        5 => {
            let len = rng.below(12);
            format!(".{}", word(rng, len))
        }
        6 => String::new(),
        _ => rng.choose(&[TENANT, "globex", "acme.", "ACME"]).to_string(),
    }
}

/// A value for a body field that may carry a task id: absent (`None`), null, a string, or
/// another JSON type.
fn random_field(rng: &mut Rng) -> Option<Value> {
    match rng.below(9) {
        0 | 1 => None,
        2 => Some(Value::Null),
        3..=5 => Some(Value::String(random_id(rng))),
        6 => Some(
            rng.choose(&[json!(5), json!(true), json!(1.5), json!(-1)])
                .clone(),
        ),
        7 => Some(json!([random_id(rng)])),
        _ => Some(json!({ "id": random_id(rng) })),
    }
}

struct Tagging {
    sources: Vec<TaskSource>,
    /// The `X-Task-Id` value's bytes, when one is sent (only values HTTP can carry).
    header: Option<Vec<u8>>,
    task_id: Option<Value>,
    user: Option<Value>,
    /// An `X-Task-Idx` header, which must not be read.
    decoy: bool,
}

impl fmt::Debug for Tagging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = self
            .header
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned());
        write!(
            f,
            "sources {:?}, header {:?} (bytes {:?}), task_id {:?}, user {:?}, decoy {}",
            self.sources, header, self.header, self.task_id, self.user, self.decoy
        )
    }
}

fn random_tagging(rng: &mut Rng) -> Tagging {
    let mut sources = vec![TaskSource::Header, TaskSource::Body, TaskSource::User];
    rng.shuffle(&mut sources);
    sources.truncate(1 + rng.below(3));
    let header = (rng.below(3) > 0)
        .then(|| {
            let mut bytes = random_id(rng).into_bytes();
            if rng.below(8) == 0 {
                // obs-text: bytes HTTP carries that are not ASCII.
                let at = rng.below(bytes.len() + 1);
                bytes.insert(at, 0x80 + rng.below(128) as u8);
            }
            bytes
        })
        .filter(|b| HeaderValue::from_bytes(b).is_ok());
    Tagging {
        sources,
        header,
        task_id: random_field(rng),
        user: random_field(rng),
        decoy: rng.below(4) == 0,
    }
}

/// What a request's task sources must give.
#[derive(Debug, PartialEq)]
enum Want {
    Untagged,
    Task(String),
    /// 400, with this `param`.
    Bad(Option<&'static str>),
    /// 403 `tenant_mismatch`, with this `param`.
    Mismatch(Option<&'static str>),
}

/// The task id rule: `[A-Za-z0-9._-]`, 1 to 128 characters, not starting with `.`.
fn valid_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What one source says: nothing (`None`), a task, or a 400.
fn from_source(source: TaskSource, t: &Tagging) -> Option<Want> {
    let judge = |s: &str, param| {
        if valid_id(s) {
            Want::Task(s.to_string())
        } else {
            Want::Bad(param)
        }
    };
    match source {
        TaskSource::Header => t.header.as_ref().map(|b| {
            // Header values are read as visible ASCII (and tab) only.
            if b.iter().all(|&c| c == b'\t' || (32..127).contains(&c)) {
                judge(std::str::from_utf8(b).unwrap(), None)
            } else {
                Want::Bad(None)
            }
        }),
        TaskSource::Body | TaskSource::User => {
            let (key, value) = if source == TaskSource::Body {
                ("task_id", &t.task_id)
            } else {
                ("user", &t.user)
            };
            match value {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(judge(s.as_str(), Some(key))),
                Some(_) => Some(Want::Bad(Some(key))),
            }
        }
    }
}

fn want_open(t: &Tagging) -> Want {
    t.sources
        .iter()
        .find_map(|s| from_source(*s, t))
        .unwrap_or(Want::Untagged)
}

/// Keys mode: the header, then `task_id`; a well-formed id naming another task is a 403,
/// the tenant itself passes; `user` is not read.
fn want_keyed(t: &Tagging) -> Want {
    for (source, param) in [
        (TaskSource::Header, None),
        (TaskSource::Body, Some("task_id")),
    ] {
        match from_source(source, t) {
            Some(Want::Bad(p)) => return Want::Bad(p),
            Some(Want::Task(named)) if named != TENANT => return Want::Mismatch(param),
            _ => {}
        }
    }
    Want::Task(TENANT.to_string())
}

/// Compares an answer with what the rules want.
fn check_against(want: Want, got: Result<Option<String>, ApiError>) {
    match (want, got) {
        (Want::Untagged, Ok(None)) => {}
        (Want::Task(w), Ok(Some(g))) => assert_eq!(g, w),
        (Want::Bad(param), Err(e)) => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
            assert_eq!((e.param, e.code), (param, None), "{e:?}");
            let names_it =
                e.message.contains("task id") || param.is_some_and(|p| e.message.contains(p));
            assert!(names_it, "the message does not say what is wrong: {e:?}");
        }
        (Want::Mismatch(param), Err(e)) => {
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{e:?}");
            assert_eq!((e.param, e.code), (param, Some("tenant_mismatch")), "{e:?}");
            assert!(e.message.contains(TENANT), "{e:?}");
        }
        (want, got) => panic!("want {want:?}, got {got:?}"),
    }
}

fn request_parts(t: &Tagging) -> (HeaderMap, Map<String, Value>) {
    let mut headers = HeaderMap::new();
    if let Some(b) = &t.header {
        headers.insert(
            HeaderName::from_static(HEADER),
            HeaderValue::from_bytes(b).unwrap(),
        );
    }
    if t.decoy {
        headers.insert(
            HeaderName::from_static("x-task-idx"),
            HeaderValue::from_static("decoy"),
        );
    }
    let mut body = Map::new();
    body.insert(
        "messages".into(),
        json!([{"role": "user", "content": "hi"}]),
    );
    for (key, value) in [("task_id", &t.task_id), ("user", &t.user)] {
        if let Some(v) = value {
            body.insert(key.into(), v.clone());
        }
    }
    (headers, body)
}

/// Task ids, open and keys mode: the answer is the one the rules give, and every refusal
/// a 400 (or a 403 naming the key's tenant) that names its field or says "task id".
#[test]
fn task_ids_from_random_headers_and_bodies() {
    fuzz("task_ids", cases(1), random_tagging, |t| {
        let (headers, body) = request_parts(t);
        let text = serde_json::to_vec(&body).unwrap();
        let body = Fields::parse(&text).unwrap();
        check_against(
            want_open(t),
            find_task_id(&t.sources, HEADER, &headers, &body),
        );
        let keyed = keyed_task_id(TENANT, HEADER, &headers, &body).map(Some);
        check_against(want_keyed(t), keyed);
    });
}

// ---------------------------------------------------------------------------------------
// Chat and completion bodies

const CHAT: &str = "/v1/chat/completions";
const COMPLETION: &str = "/v1/completions";
const BASE_DIR: &str = "/models/base";

fn plugin_config() -> PluginConfig {
    PluginConfig {
        default_max_tokens: 7,
        max_tokens_limit: 50,
        max_n: 2,
        max_messages: 4,
        max_input_bytes: 64,
        ..PluginConfig::default()
    }
}

/// A body and the fields the rules find wrong in it (empty: it must be accepted).
struct Body {
    path: &'static str,
    body: Map<String, Value>,
    bad: Vec<&'static str>,
    /// Its `model` is an engine model id (a 404).
    engine_id: bool,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (wrong: {:?})",
            self.path,
            Value::Object(self.body.clone()),
            self.bad
        )
    }
}

/// Bytes of all the strings in a value: what `max_input_bytes` bounds.
fn text_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(text_bytes).sum(),
        Value::Object(o) => o.values().map(text_bytes).sum(),
        _ => 0,
    }
}

fn random_text(rng: &mut Rng, max: usize) -> String {
    let len = rng.below(max + 1);
    (0..len)
        .map(|_| match rng.below(10) {
            0 => ' ',
            1 => 'é',
            _ => *rng.choose(ID_CHARS) as char,
        })
        .collect()
}

/// A message the stock request type reads.
fn good_message(rng: &mut Rng) -> Value {
    let mut m = json!({ "role": rng.choose(&["user", "assistant", "system"]) });
    match rng.below(4) {
        0 => {}
        1 => m["content"] = Value::Null,
        2 => m["content"] = json!([{"type": "text", "text": random_text(rng, 12)}]),
        _ => m["content"] = json!(random_text(rng, 12)),
    }
    if rng.below(5) == 0 {
        m["name"] = json!("bob");
    }
    m
}

/// A message it does not read.
fn bad_message(rng: &mut Rng) -> Value {
    match rng.below(4) {
        0 => json!({"role": 5, "content": "x"}),
        1 => json!({"content": "x"}),
        2 => json!({"role": "user", "content": 5}),
        _ => json!({"role": "user", "content": [5]}),
    }
}

/// `messages`, and whether the rules find it wrong.
fn random_messages(rng: &mut Rng, pc: &PluginConfig) -> (Option<Value>, bool) {
    let list =
        |rng: &mut Rng, n: usize| -> Vec<Value> { (0..n).map(|_| good_message(rng)).collect() };
    let (v, wrong) = match rng.below(8) {
        0..=3 => {
            let n = rng.below(pc.max_messages + 1);
            (Value::Array(list(rng, n)), false)
        }
        4 => {
            let n = pc.max_messages + 1 + rng.below(3);
            (Value::Array(list(rng, n)), true)
        }
        5 => (json!(random_text(rng, 80)), false),
        6 => {
            let n = rng.below(pc.max_messages);
            let mut ms = list(rng, n);
            let at = rng.below(ms.len() + 1);
            ms.insert(at, bad_message(rng));
            (Value::Array(ms), true)
        }
        _ => match rng.below(4) {
            0 => return (None, true),
            1 => (Value::Null, true),
            2 => (json!(5), true),
            _ => (json!({"role": "user", "content": "hi"}), true),
        },
    };
    let too_long = text_bytes(&v) > pc.max_input_bytes;
    (Some(v), wrong || too_long)
}

/// A bound (`max_tokens`, `n`, ...) up to `limit`: absent, null and 1..=limit are fine.
fn random_bound(rng: &mut Rng, limit: usize) -> (Option<Value>, bool) {
    match rng.below(10) {
        0..=2 => (None, false),
        3 => (Some(Value::Null), false),
        4..=6 => (Some(json!(1 + rng.below(limit))), false),
        _ => {
            let bad = [
                json!(0),
                json!(limit + 1),
                json!(-1),
                json!(2.5),
                json!("9"),
                json!(true),
                json!(u64::MAX),
                json!(i64::MIN),
                json!([1]),
            ];
            (Some(rng.choose(&bad).clone()), true)
        }
    }
}

/// A field whose good and wrong values are given.
fn pick(rng: &mut Rng, good: &[Value], wrong: &[Value]) -> (Option<Value>, bool) {
    match rng.below(good.len() + wrong.len() + 1) {
        0 => (None, false),
        i if i <= good.len() => (Some(good[i - 1].clone()), false),
        i => (Some(wrong[i - 1 - good.len()].clone()), true),
    }
}

fn random_body(rng: &mut Rng) -> Body {
    let pc = plugin_config();
    let path = if rng.below(2) == 0 { CHAT } else { COMPLETION };
    let mut b = Body {
        path,
        body: Map::new(),
        bad: Vec::new(),
        engine_id: false,
    };
    let set = |b: &mut Body, key: &'static str, (value, wrong): (Option<Value>, bool)| {
        if let Some(v) = value {
            b.body.insert(key.to_string(), v);
        }
        if wrong {
            b.bad.push(key);
        }
    };
    // The model: any string is a public name; an engine id is a 404.
    match rng.below(8) {
        0 | 1 => {}
        2 => set(&mut b, "model", (Some(Value::Null), false)),
        3 | 4 => {
            let name = rng.choose(&["default", "gpt-4o", "my-model"]).to_string();
            set(&mut b, "model", (Some(json!(name)), false));
        }
        5 => set(
            &mut b,
            "model",
            (
                Some(rng.choose(&[json!(3), json!(true), json!(["x"])]).clone()),
                true,
            ),
        ),
        _ => {
            let id = rng.choose(&["dnd:other@0a1b2c", BASE_DIR]).to_string();
            set(&mut b, "model", (Some(json!(id)), true));
            b.engine_id = true;
        }
    }
    if path == CHAT {
        let messages = random_messages(rng, &pc);
        set(&mut b, "messages", messages);
        // A chat's `user` is not the stock request's: any value passes here.
        if rng.below(4) == 0 {
            let user = random_field(rng);
            set(&mut b, "user", (user, false));
        }
    } else {
        let prompt = match rng.below(6) {
            0..=2 => {
                let p = random_text(rng, 80);
                let long = p.len() > pc.max_input_bytes;
                (Some(json!(p)), long)
            }
            3 => (None, true),
            _ => (
                Some(rng.choose(&[json!(5), Value::Null, json!(["a"])]).clone()),
                true,
            ),
        };
        set(&mut b, "prompt", prompt);
        let best_of = random_bound(rng, pc.max_n);
        set(&mut b, "best_of", best_of);
        let user = pick(rng, &[json!("u-1"), Value::Null], &[json!(5), json!({})]);
        set(&mut b, "user", user);
        let echo = pick(rng, &[json!(true), json!(false)], &[json!("no")]);
        set(&mut b, "echo", echo);
    }
    // One name for max_tokens at most: both is the client's own conflict.
    let tokens_key = *rng.choose(&["max_tokens", "max_completion_tokens"]);
    let tokens = random_bound(rng, pc.max_tokens_limit);
    set(&mut b, tokens_key, tokens);
    let n = random_bound(rng, pc.max_n);
    set(&mut b, "n", n);
    let temperature = pick(
        rng,
        &[Value::Null, json!(0.5), json!(1)],
        &[json!("hot"), json!(true)],
    );
    set(&mut b, "temperature", temperature);
    let stream = pick(
        rng,
        &[Value::Null, json!(true), json!(false)],
        &[json!("yes"), json!(1)],
    );
    set(&mut b, "stream", stream);
    // Fields neither the plugin nor the stock request reads.
    if rng.below(3) == 0 {
        let noise = random_field(rng);
        set(&mut b, "task_id", (noise, false));
        b.body
            .insert("x_extra".into(), json!({"any": [1, "thing"]}));
    }
    b
}

/// Bodies: accepted exactly when no field is wrong; a refusal names a wrong field as its
/// `param` (a 404 `model_not_found` for an engine id, a 400 otherwise).
#[test]
fn chat_and_completion_bodies_with_random_fields() {
    let pc = plugin_config();
    let dirs = vec![BASE_DIR.to_string()];
    fuzz("bodies", cases(1), random_body, |b| {
        let text = serde_json::to_vec(&b.body).unwrap();
        match check_body(&pc, &dirs, b.path, &text) {
            Ok(checked) => {
                let public = checked.public;
                let body: Map<String, Value> = serde_json::from_slice(checked.body.text())
                    .expect("the engine's text is a JSON object");
                assert!(b.bad.is_empty(), "accepted, with {:?} wrong", b.bad);
                let asked = b
                    .body
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                assert_eq!(public, asked);
                assert_eq!(body["model"], json!(asked));
                let named = ["max_tokens", "max_completion_tokens"]
                    .iter()
                    .any(|k| b.body.get(*k).is_some_and(|v| !v.is_null()));
                if !named {
                    assert_eq!(body["max_tokens"], json!(pc.default_max_tokens), "{body:?}");
                }
                // The rest is the client's, less what the plugin takes out (the model and
                // the default max_tokens are checked above).
                let checked_above = |k: &str| k == "model" || (k == "max_tokens" && !named);
                for (key, v) in b.body.iter().filter(|(k, _)| !checked_above(k)) {
                    let taken = key == "task_id"
                        || (v.is_null()
                            && ["max_tokens", "max_completion_tokens", "n", "best_of"]
                                .contains(&key.as_str()));
                    assert_eq!(body.get(key), (!taken).then_some(v), "{key}: {body:?}");
                }
            }
            Err(e) => {
                assert!(!b.bad.is_empty(), "refused a good body: {e:?}");
                let param = e.param.unwrap_or_else(|| panic!("no param: {e:?}"));
                assert!(b.bad.contains(&param), "{param} is not wrong: {e:?}");
                assert!(!e.message.is_empty());
                if e.status == StatusCode::NOT_FOUND {
                    assert!(b.engine_id && param == "model", "{e:?}");
                    assert_eq!(e.code, Some("model_not_found"));
                } else {
                    assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// Adapters

/// What validation must say of an upload.
#[derive(Debug)]
enum Verdict {
    /// Accepted, with all its tensors and its rank.
    Accept,
    /// A 400 whose message contains these words.
    Refuse(&'static str),
    /// Either; a refusal is a 400 with a reason.
    Either,
}

/// An upload's two files and what validation must say of them.
struct Upload {
    what: String,
    config: Vec<u8>,
    weights: Vec<u8>,
    want: Verdict,
    tensors: usize,
    rank: usize,
}

impl fmt::Debug for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (config {}, {} weight bytes)",
            self.what,
            String::from_utf8_lossy(&self.config),
            self.weights.len()
        )
    }
}

fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>, dtype: DType) -> Vec<u8> {
    let data: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(dtype).unwrap().contiguous().unwrap()))
        .collect();
    let views: Vec<(&str, &Tensor)> = data.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::serialize(views, None).unwrap()
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
}

fn random_upload(rng: &mut Rng) -> Upload {
    let dims = tiny_dims();
    let mut modules: Vec<Module> = Module::ALL.to_vec();
    rng.shuffle(&mut modules);
    modules.truncate(1 + rng.below(Module::ALL.len()));
    modules.sort();
    let rank = 1 + rng.below(8);
    let adapter = random_adapter(&dims, &modules, rank, rng.next_u64(), 0.5, 0.5).unwrap();
    let dtype = *rng.choose(&[DType::F32, DType::F16, DType::BF16, DType::F64]);
    let mut config = serde_json::to_value(&adapter.config).unwrap();
    let mut tensors = adapter.tensors.clone();
    // Variants every reader of PEFT files must take.
    if rng.below(3) == 0 {
        config["peft_type"] = json!("lora");
        config["task_type"] = json!("CAUSAL_LM");
        config["lora_dropout"] = json!(0.05);
        config["rank_pattern"] = json!({});
        config["modules_to_save"] = Value::Null;
        let dotted: Vec<String> = modules
            .iter()
            .map(|m| format!("model.layers.0.{}.{}", m.block(), m.name()))
            .collect();
        config["target_modules"] = json!(dotted);
    }
    let names: Vec<String> = tensors.keys().cloned().collect();
    let some_name = rng.choose(&names).clone();
    let mut raw_config: Option<Vec<u8>> = None;
    let mut weights: Option<Vec<u8>> = None;
    let (what, want) = match rng.below(22) {
        0 => {
            config["peft_type"] = json!(rng.choose(&["PREFIX_TUNING", "IA3", "", "LORA2"]));
            ("peft_type", Verdict::Refuse("peft_type must be LORA"))
        }
        1 => {
            config["r"] = json!(rng.choose(&[0, 257, 1 << 20]));
            (
                "rank out of range",
                Verdict::Refuse("rank r must be in 1..=256"),
            )
        }
        2 => {
            config["r"] = json!(rank + 1);
            (
                "rank of the config, not of the tensors",
                Verdict::Refuse("has shape"),
            )
        }
        3 => {
            config["lora_alpha"] = json!(rng.choose(&[0.0, -1.0, -0.5]));
            (
                "lora_alpha",
                Verdict::Refuse("lora_alpha must be a positive number"),
            )
        }
        4 => {
            config["use_rslora"] = json!(true);
            ("rsLoRA", Verdict::Refuse("rsLoRA"))
        }
        5 => {
            config["use_dora"] = json!(true);
            ("DoRA", Verdict::Refuse("DoRA"))
        }
        6 => {
            config["rank_pattern"] = json!({"q_proj": 4});
            (
                "rank_pattern",
                Verdict::Refuse("rank_pattern is not supported"),
            )
        }
        7 => {
            config["modules_to_save"] = json!(["lm_head"]);
            (
                "modules_to_save",
                Verdict::Refuse("modules_to_save is not supported"),
            )
        }
        8 => {
            let target = config["target_modules"].as_array_mut().unwrap();
            let at = rng.below(target.len() + 1);
            target.insert(
                at,
                json!(rng.choose(&["lm_head", "embed_tokens", "qkv_proj", ""])),
            );
            (
                "an unknown target module",
                Verdict::Refuse("unsupported target module"),
            )
        }
        9 => {
            config["target_modules"] = json!([]);
            (
                "no target modules",
                Verdict::Refuse("target_modules is empty"),
            )
        }
        10 => {
            let bad = [
                "{",
                "",
                "null",
                "[]",
                "{\"lora_alpha\": 16, \"target_modules\": [\"q_proj\"]}",
                "{\"r\": \"8\", \"lora_alpha\": 16, \"target_modules\": [\"q_proj\"]}",
                "{\"r\": 8, \"lora_alpha\": 1e999, \"target_modules\": [\"q_proj\"]}",
                "{\"r\": 8, \"lora_alpha\": 16, \"target_modules\": \"q_proj\"}",
            ];
            raw_config = Some(rng.choose(&bad).as_bytes().to_vec());
            (
                "a config that is not one",
                Verdict::Refuse("is not a valid LoRA config"),
            )
        }
        11 => {
            tensors.remove(&some_name);
            ("a missing tensor", Verdict::Refuse("missing tensor"))
        }
        12 => {
            let absent: Vec<Module> = Module::ALL
                .into_iter()
                .filter(|m| !modules.contains(m))
                .collect();
            let (name, shape) = match rng.below(3) {
                0 if !absent.is_empty() => {
                    let m = *rng.choose(&absent);
                    (tensor_name(0, m, false), vec![rank, m.dims(&dims).0])
                }
                1 => {
                    let m = modules[0];
                    let layer = dims.num_hidden_layers;
                    (tensor_name(layer, m, true), vec![m.dims(&dims).1, rank])
                }
                _ => (
                    "base_model.model.lm_head.lora_A.weight".to_string(),
                    vec![rank, 64],
                ),
            };
            tensors.insert(name, zeros(&shape));
            ("an extra tensor", Verdict::Refuse("unexpected tensor"))
        }
        13 => {
            let mut shape = tensors[&some_name].dims().to_vec();
            let d = rng.below(shape.len());
            shape[d] += 1 + rng.below(3);
            if rng.below(2) == 0 {
                shape.reverse();
            }
            tensors.insert(some_name.clone(), zeros(&shape));
            ("a tensor of the wrong shape", Verdict::Refuse("has shape"))
        }
        14 => {
            let t = &tensors[&some_name];
            let mut v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let at = rng.below(v.len());
            v[at] = *rng.choose(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
            let bad = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
            tensors.insert(some_name.clone(), bad);
            ("a NaN or infinity", Verdict::Refuse("non-finite values"))
        }
        15 => {
            let len = rng.below(200);
            weights = Some((0..len).map(|_| rng.below(256) as u8).collect());
            (
                "weights that are random bytes",
                Verdict::Refuse("is not a valid safetensors file"),
            )
        }
        16 => {
            let full = safetensors_bytes(&tensors, dtype);
            let cut = rng.below(full.len());
            weights = Some(full[..cut].to_vec());
            (
                "truncated weights",
                Verdict::Refuse("is not a valid safetensors file"),
            )
        }
        17 => {
            // One byte of the safetensors header changed: refused or, if still a valid
            // adapter (a digit of a value that was not read), accepted; never a panic.
            let mut full = safetensors_bytes(&tensors, dtype);
            let header = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
            let at = 8 + rng.below(header);
            full[at] = rng.below(256) as u8;
            weights = Some(full);
            ("a changed header byte", Verdict::Either)
        }
        _ => ("none", Verdict::Accept),
    };
    let config = raw_config.unwrap_or_else(|| serde_json::to_vec(&config).unwrap());
    let weights = weights.unwrap_or_else(|| safetensors_bytes(&tensors, dtype));
    Upload {
        what: format!("rank {rank}, modules {modules:?}, {dtype:?}, fault: {what} ({some_name})"),
        config,
        weights,
        want,
        tensors: tensors.len(),
        rank,
    }
}

/// Adapters: one fault (or none) per upload; a faulty one is a 400 whose message names the
/// fault, a sound one is accepted whole, and nothing panics.
#[test]
fn adapters_with_random_configs_and_tensors() {
    let dims = tiny_dims();
    fuzz("adapters", cases(10), random_upload, |u| {
        let got = parse_adapter(&u.config, &u.weights, &dims);
        match (&u.want, got) {
            (Verdict::Accept, Ok(a)) => {
                assert_eq!((a.tensors.len(), a.config.r), (u.tensors, u.rank));
            }
            (Verdict::Accept, Err(e)) => panic!("a sound adapter was refused: {e:?}"),
            (Verdict::Refuse(words), Ok(_)) => panic!("accepted, but wanted {words:?}"),
            (Verdict::Refuse(words), Err(e)) => {
                assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
                assert!(e.message.contains(words), "wanted {words:?}: {e:?}");
            }
            (Verdict::Either, Ok(a)) => a.validate(&dims).unwrap(),
            (Verdict::Either, Err(e)) => {
                assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
                assert!(!e.message.is_empty());
            }
        }
    });
}
