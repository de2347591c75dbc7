//! A chat or completion request body: what the plugin reads of it, the checks that can
//! refuse it, and the text the engine gets.
//!
//! The body is read in one typed pass ([`Fields`]): the members the plugin uses borrowed
//! from the text, the messages and prompt only tallied (their count and text bytes), every
//! other member skipped (checked as JSON, nothing kept). Why: the body used to be parsed
//! into a JSON map, checked against the stock request type from that map and written out
//! again, about half of the tagging layer's own time (README, "Where the time goes").
//!
//! [`check_body`] takes a body to the engine's text, in this order; a refusal comes before
//! anything of the request is kept and changes nothing:
//! 1. [`Fields::parse`]: one JSON object, no member twice among those read, else 400;
//! 2. [`public_model_name`]: the client's `model` (default `default`), 404 for an engine
//!    model id;
//! 3. [`check_bounds`]: `max_tokens` / `max_completion_tokens`, `n`, `best_of`, the message
//!    count and the input bytes against the plugin config, 400 naming the field;
//! 4. [`EngineBody::new`]: the members as sent, less `task_id` (the plugin's own), `model`
//!    and any bound sent as `null` (no bound; the stock type takes no `null` `n`), then
//!    `max_tokens` (the default, when neither of its names is sent) and `model` (the public
//!    name), last so that the engine's model id can replace it without copying the rest
//!    ([`EngineBody::set_model`]);
//! 5. [`check_fields`]: that text parsed as the stock handler's request type, which it will
//!    be parsed into: a field of the wrong type or a missing one is a 400 naming the field,
//!    instead of the stock handler's plain-text 422 once the request has been routed. The
//!    parsed request is kept: the specialiser's prompt text is read from it
//!    ([`StockRequest::prompt_text`]), not from the body a second time.

use std::borrow::Cow;
use std::fmt;

use either::Either;
use mistralrs_server_core::openai::{ChatCompletionRequest, CompletionRequest};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::config::PluginConfig;
use super::error::ApiError;
use super::member;
use crate::adapters::ADAPTER_MODEL_PREFIX;

/// The members of a body the plugin reads (module doc). A member sent as `null` is absent.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct Fields<'a> {
    #[serde(borrow)]
    pub model: Option<Text<'a>>,
    pub max_tokens: Option<Value>,
    pub max_completion_tokens: Option<Value>,
    pub n: Option<Value>,
    pub best_of: Option<Value>,
    pub messages: Option<Tally>,
    pub prompt: Option<Tally>,
    #[serde(borrow)]
    pub task_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub user: Option<Text<'a>>,
}

impl<'a> Fields<'a> {
    /// Reads `body`, which must be one JSON object (400 otherwise).
    pub fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        let not_object = |why: &dyn fmt::Display| {
            ApiError::bad_request(format!("request body is not a JSON object: {why}"))
        };
        // A derived struct would also take an array (its members by position).
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(not_object(&"it does not start with '{'"));
        }
        serde_json::from_slice(body).map_err(|e| not_object(&e))
    }

    /// Whether the client set a completion limit, under either of its names.
    fn names_max_tokens(&self) -> bool {
        self.max_tokens.is_some() || self.max_completion_tokens.is_some()
    }
}

/// A member read as a string: the text, or something else sent where a string belongs.
#[derive(Debug, PartialEq)]
pub enum Text<'a> {
    Str(Cow<'a, str>),
    NotString,
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text::Str(Cow::Owned(s.to_string())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Text<'de>, E> {
                Ok(Text::NotString)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Text<'de>, E> {
                Ok(Text::NotString)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Text<'de>, E> {
                Ok(Text::NotString)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Text<'de>, E> {
                Ok(Text::NotString)
            }
            fn visit_unit<E>(self) -> Result<Text<'de>, E> {
                Ok(Text::NotString)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Text::NotString)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Text::NotString)
            }
        }
        d.deserialize_any(V)
    }
}

/// What the bounds need of `messages` or `prompt`: the item count when it is an array, and
/// the bytes of all its strings (message contents, roles and names alike; not keys),
/// tallied while it is read.
#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    pub items: Option<usize>,
    pub bytes: usize,
}

impl<'de> Deserialize<'de> for Tally {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut tally = Tally::default();
        d.deserialize_any(Strings {
            bytes: &mut tally.bytes,
            items: Some(&mut tally.items),
        })?;
        Ok(tally)
    }
}

/// Adds the bytes of every string in a value to `bytes`; counts the items into `items`
/// when the value is an array (the top level of a [`Tally`]).
struct Strings<'t> {
    bytes: &'t mut usize,
    items: Option<&'t mut Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for Strings<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strings<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        *self.bytes += s.len();
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0;
        while seq
            .next_element_seed(Strings {
                bytes: &mut *self.bytes,
                items: None,
            })?
            .is_some()
        {
            n += 1;
        }
        if let Some(items) = self.items {
            *items = Some(n);
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Strings {
                bytes: &mut *self.bytes,
                items: None,
            })?;
        }
        Ok(())
    }
}

/// A body that passed every check, with what the route needs of it.
pub struct Checked<'a> {
    pub fields: Fields<'a>,
    /// The client's model name, shown in the answer instead of the engine's.
    pub public: String,
    pub body: EngineBody,
    /// The engine's text as the stock handler will read it.
    pub stock: StockRequest,
}

/// Checks a chat (`path` `/v1/chat/completions`) or completion body and makes the engine's
/// text of it (module doc, steps 1 to 5).
pub fn check_body<'a>(
    pc: &PluginConfig,
    base_dirs: &[String],
    path: &str,
    body: &'a [u8],
) -> Result<Checked<'a>, ApiError> {
    let fields = Fields::parse(body)?;
    let public = public_model_name(&fields, base_dirs)?;
    check_bounds(pc, &fields)?;
    let engine = EngineBody::new(pc, body, &fields, &public)?;
    let stock = check_fields(path, engine.text())?;
    Ok(Checked {
        fields,
        public,
        body: engine,
        stock,
    })
}

/// The public model name of a request (its `model`, default `default`). Engine model ids
/// are not public: an adapter model (`dnd:TASK@HASH`, another tenant's) or the base
/// folder path is a 404, as for an unknown model.
pub fn public_model_name(fields: &Fields, base_dirs: &[String]) -> Result<String, ApiError> {
    let name = match &fields.model {
        None => return Ok("default".into()),
        Some(Text::Str(s)) => s,
        Some(Text::NotString) => {
            return Err(
                ApiError::bad_request("body field model must be a string").with_param("model")
            )
        }
    };
    if name.starts_with(ADAPTER_MODEL_PREFIX) || base_dirs.iter().any(|d| d == name) {
        return Err(ApiError::not_found(format!(
            "The model `{name}` does not exist or you do not have access to it."
        ))
        .with_param("model")
        .with_code("model_not_found"));
    }
    Ok(name.to_string())
}

/// Checks the request bounds of the plugin config: `max_tokens` (under either name), `n`,
/// `best_of`, the message count and the input text, each against its ceiling (400 with the
/// field at fault, worded as OpenAI words it).
pub fn check_bounds(pc: &PluginConfig, fields: &Fields) -> Result<(), ApiError> {
    for (key, v) in [
        ("max_tokens", &fields.max_tokens),
        ("max_completion_tokens", &fields.max_completion_tokens),
    ] {
        let Some(v) = v else { continue };
        let n = positive_integer(key, v)?;
        if n > pc.max_tokens_limit as u64 {
            return Err(ApiError::bad_request(format!(
                "{key} is too large: {n}. This model supports at most {} completion tokens, whereas you provided {n}.",
                pc.max_tokens_limit
            ))
            .with_param(key));
        }
    }
    for (key, v) in [("n", &fields.n), ("best_of", &fields.best_of)] {
        let Some(v) = v else { continue };
        let n = positive_integer(key, v)?;
        if n > pc.max_n as u64 {
            return Err(ApiError::bad_request(format!(
                "{n} is greater than the maximum of {} - '{key}'",
                pc.max_n
            ))
            .with_param(key));
        }
    }
    if let Some(count) = fields.messages.as_ref().and_then(|m| m.items) {
        if count > pc.max_messages {
            return Err(ApiError::bad_request(format!(
                "{count} messages is more than the maximum of {} - 'messages'",
                pc.max_messages
            ))
            .with_param("messages"));
        }
    }
    for (key, tally) in [("messages", &fields.messages), ("prompt", &fields.prompt)] {
        let bytes = tally.as_ref().map_or(0, |t| t.bytes);
        if bytes > pc.max_input_bytes {
            return Err(ApiError::bad_request(format!(
                "the {key} hold {bytes} bytes of text, more than the maximum of {} (plugin.max_input_bytes)",
                pc.max_input_bytes
            ))
            .with_param(key));
        }
    }
    Ok(())
}

fn positive_integer(key: &'static str, v: &Value) -> Result<u64, ApiError> {
    match v.as_u64() {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "{v} is not a valid value for '{key}': a positive integer is expected"
        ))
        .with_param(key)),
    }
}

/// The body's text as the engine gets it (module doc, step 4): an object whose last member
/// is `model`.
pub struct EngineBody {
    text: Vec<u8>,
    /// Where the `model` member begins.
    model_at: usize,
}

impl EngineBody {
    /// The engine's text of `body`, whose `fields` have been read, with `model` set to
    /// `model`.
    pub fn new(
        pc: &PluginConfig,
        body: &[u8],
        fields: &Fields,
        model: &str,
    ) -> Result<Self, ApiError> {
        let mut text = Vec::with_capacity(body.len() + 48);
        text.push(b'{');
        member::copy_members(
            body,
            |key, value| {
                let null_bound = value == b"null"
                    && ["max_tokens", "max_completion_tokens", "n", "best_of"]
                        .iter()
                        .any(|b| key.is(b));
                !(null_bound || key.is("task_id") || key.is("model"))
            },
            &mut text,
        )
        // Not reached after `Fields::parse`, which reads only objects.
        .ok_or_else(|| ApiError::bad_request("request body is not a JSON object"))?;
        if !fields.names_max_tokens() {
            text.extend_from_slice(format!("\"max_tokens\":{},", pc.default_max_tokens).as_bytes());
        }
        let mut engine = EngineBody {
            model_at: text.len(),
            text,
        };
        engine.set_model(model);
        Ok(engine)
    }

    /// Sets the `model` member, the last: the text after the other members is written again.
    pub fn set_model(&mut self, model: &str) {
        self.text.truncate(self.model_at);
        self.text.extend_from_slice(b"\"model\":");
        serde_json::to_writer(&mut self.text, model).expect("writing to a Vec cannot fail");
        self.text.push(b'}');
    }

    /// Inserts `turns`, (user, assistant) pairs, as messages after the leading system (or
    /// developer) messages of a chat body's `messages` array (a task's examples shown,
    /// where the no-harm check routed them); `false`, changing nothing, when `messages` is
    /// not an array, has no other message to come after them, or the body with them would
    /// be longer than `max_bytes` (not counting its `model` member). Parses the body: only
    /// for the tasks that are shown examples. The turns are not counted against
    /// `max_messages` and `max_input_bytes`, which bound what clients send.
    pub fn show<'t>(
        &mut self,
        turns: impl IntoIterator<Item = (&'t str, &'t str)>,
        max_bytes: usize,
    ) -> bool {
        let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&self.text) else {
            return false;
        };
        let model = body.remove("model");
        let Some(Value::Array(messages)) = body.get_mut("messages") else {
            return false;
        };
        let role = |m: &Value| m.get("role").and_then(Value::as_str).map(str::to_owned);
        let leading = |m: &&Value| matches!(role(m).as_deref(), Some("system" | "developer"));
        let at = messages.iter().take_while(leading).count();
        if at == messages.len() {
            return false;
        }
        messages.splice(at..at, crate::engine::turn_messages(turns));
        let mut text = serde_json::to_vec(&body).expect("writing to a Vec cannot fail");
        if text.len() > max_bytes {
            return false;
        }
        // `{...}` less its `}`, and `model` last again (`messages` is a member before it).
        text.pop();
        text.push(b',');
        self.model_at = text.len();
        self.text = text;
        self.set_model(model.as_ref().and_then(Value::as_str).unwrap_or_default());
        true
    }

    pub fn text(&self) -> &[u8] {
        &self.text
    }

    pub fn into_text(self) -> Vec<u8> {
        self.text
    }
}

/// The top-level fields of the stock chat and completion requests (mistral.rs 0.8.1's
/// `ChatCompletionRequest` and `CompletionRequest`), as `param` of an error naming one.
const REQUEST_FIELDS: &[&str] = &[
    "messages",
    "prompt",
    "model",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "best_of",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stream",
    "stop",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "tools",
    "tool_choice",
    "response_format",
    "web_search_options",
    "grammar",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "dry_sequence_breakers",
    "enable_thinking",
    "reasoning_effort",
    "truncate_sequence",
    "echo",
    "suffix",
    "user",
];

/// Checks the engine's text of a chat (`path` `/v1/chat/completions`) or completion body
/// against the stock handler's request type (module doc, step 5).
pub fn check_fields(path: &str, text: &[u8]) -> Result<StockRequest, ApiError> {
    let parsed = if path == "/v1/chat/completions" {
        parse(text).map(|r| StockRequest::Chat(Box::new(r)))
    } else {
        parse(text).map(|r| StockRequest::Completion(Box::new(r)))
    };
    let e = match parsed {
        Ok(request) => return Ok(request),
        Err(e) => e,
    };
    // The place is in the engine's text, not the client's: left out.
    let inner = e.inner();
    let place = format!(" at line {} column {}", inner.line(), inner.column());
    let message = inner.to_string();
    let message = message.strip_suffix(&place).unwrap_or(&message);
    // The top-level field at fault: where the error is, or the one missing.
    let field = match e.path().iter().next() {
        Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
        _ => message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string),
    };
    let param = field.and_then(|f| REQUEST_FIELDS.iter().copied().find(|k| *k == f));
    let anywhere = e
        .path()
        .iter()
        .all(|s| matches!(s, serde_path_to_error::Segment::Unknown));
    let mut err = ApiError::bad_request(if anywhere {
        format!("invalid request body: {message}")
    } else {
        format!("invalid request body: {}: {message}", e.path())
    });
    if let Some(p) = param {
        err = err.with_param(p);
    }
    Err(err)
}

/// `text` as a `T`, or where it fails to parse as one. The plain parse first: the one that
/// tracks the path costs more and is only wanted for the error.
fn parse<T: serde::de::DeserializeOwned>(
    text: &[u8],
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    if let Ok(t) = serde_json::from_slice(text) {
        return Ok(t);
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut de)
}

/// A request as the stock handler reads it.
#[derive(Debug)]
pub enum StockRequest {
    Chat(Box<ChatCompletionRequest>),
    Completion(Box<CompletionRequest>),
}

impl StockRequest {
    /// The prompt text: the user turns of a chat (a string `messages` whole), or the
    /// completion prompt; what the specialiser keeps of a task's requests.
    pub fn prompt_text(&self) -> Option<String> {
        let messages = match self {
            StockRequest::Completion(r) => return Some(r.prompt.clone()),
            StockRequest::Chat(r) => match &r.messages {
                Either::Right(text) => return Some(text.clone()),
                Either::Left(messages) => messages,
            },
        };
        let users: Vec<String> = messages
            .iter()
            .filter(|m| m.role == "user")
            .filter_map(|m| m.content.as_ref())
            .map(|c| match &**c {
                Either::Left(text) => text.clone(),
                Either::Right(parts) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(|t| t.as_ref().left()))
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join("\n"),
            })
            .filter(|s| !s.is_empty())
            .collect();
        (!users.is_empty()).then(|| users.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use serde_json::json;

    const CHAT: &str = "/v1/chat/completions";
    const COMPLETION: &str = "/v1/completions";

    fn text(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    /// The bounds checked, then the engine's text of the body (steps 1, 3 and 4), as a map.
    fn bounded(v: Value) -> Result<serde_json::Map<String, Value>, ApiError> {
        let pc = PluginConfig::default();
        let body = text(v);
        let fields = Fields::parse(&body)?;
        check_bounds(&pc, &fields)?;
        let engine = EngineBody::new(&pc, &body, &fields, "m")?;
        Ok(serde_json::from_slice(engine.text()).unwrap())
    }

    #[test]
    fn shown_turns_go_after_the_system_messages_and_model_stays_settable() {
        let pc = PluginConfig::default();
        let engine = |v: Value| {
            let body = text(v);
            let fields = Fields::parse(&body).unwrap();
            EngineBody::new(&pc, &body, &fields, "m").unwrap()
        };
        let msg = |role: &str, content: &str| json!({"role": role, "content": content});
        let mut body = engine(json!({
            "messages": [msg("system", "Be brief."), msg("user", "3 + 3?")],
            "temperature": 0.5,
        }));
        assert!(body.show([("1 + 1?", "2"), ("2 + 2?", "4")], usize::MAX));
        body.set_model("dnd:x");
        let v: Value = serde_json::from_slice(body.text()).unwrap();
        let expected = [
            msg("system", "Be brief."),
            msg("user", "1 + 1?"),
            msg("assistant", "2"),
            msg("user", "2 + 2?"),
            msg("assistant", "4"),
            msg("user", "3 + 3?"),
        ];
        assert_eq!(v["messages"], json!(expected));
        assert_eq!(
            (&v["model"], &v["temperature"]),
            (&json!("dnd:x"), &json!(0.5))
        );
        assert!(body.text().ends_with(br#""model":"dnd:x"}"#), "model last");
        assert!(
            check_fields(CHAT, body.text()).is_ok(),
            "still a stock request"
        );

        // Without system messages they come first; a string `messages`, or one with nothing
        // after its system messages, is left alone.
        let mut body = engine(json!({"messages": [msg("user", "3 + 3?")]}));
        assert!(body.show([("1 + 1?", "2")], usize::MAX));
        let v: Value = serde_json::from_slice(body.text()).unwrap();
        assert_eq!(v["messages"][0], msg("user", "1 + 1?"));
        assert_eq!(v["messages"][2], msg("user", "3 + 3?"));
        for messages in [json!("3 + 3?"), json!([msg("system", "Be brief.")])] {
            let mut body = engine(json!({ "messages": messages }));
            let before = body.text().to_vec();
            assert!(!body.show([("1 + 1?", "2")], usize::MAX), "{messages}");
            assert_eq!(body.text(), before);
        }

        // Nor a body that would be longer than the bound with them.
        let mut body = engine(json!({"messages": [msg("user", "3 + 3?")]}));
        let before = body.text().to_vec();
        let with = before.len() + serde_json::to_vec(&msg("user", "1 + 1?")).unwrap().len() + 40;
        assert!(!body.show([("1 + 1?", "2")], before.len() + 10));
        assert_eq!(body.text(), before);
        assert!(body.show([("1 + 1?", "2")], with));
    }

    #[test]
    fn max_tokens_gets_the_default_and_a_ceiling() {
        let pc = PluginConfig::default();
        let b = bounded(json!({"messages": []})).unwrap();
        assert_eq!(b["max_tokens"], json!(pc.default_max_tokens));
        let b = bounded(json!({"max_tokens": 7})).unwrap();
        assert_eq!(b["max_tokens"], json!(7));
        let b = bounded(json!({"max_completion_tokens": 7})).unwrap();
        assert!(
            !b.contains_key("max_tokens"),
            "the client's own limit is kept"
        );
        assert_eq!(b["max_completion_tokens"], json!(7));
        for key in ["max_tokens", "max_completion_tokens"] {
            let e = bounded(json!({ key: pc.max_tokens_limit + 1 })).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.param, Some(key));
            assert!(
                e.message.contains(&pc.max_tokens_limit.to_string()),
                "{}",
                e.message
            );
            for bad in [json!(0), json!(-1), json!(2.5), json!("9")] {
                assert_eq!(bounded(json!({ key: bad })).unwrap_err().param, Some(key));
            }
        }
        assert!(bounded(json!({"max_tokens": pc.max_tokens_limit})).is_ok());
        // A null bound is no bound (and never two names for max_tokens reach the engine).
        let b =
            bounded(json!({"max_completion_tokens": null, "n": null, "best_of": null})).unwrap();
        assert_eq!(b["max_tokens"], json!(pc.default_max_tokens));
        for key in ["max_completion_tokens", "n", "best_of"] {
            assert!(!b.contains_key(key), "{key}: {b:?}");
        }
    }

    #[test]
    fn n_messages_and_input_are_bounded() {
        let pc = PluginConfig::default();
        for key in ["n", "best_of"] {
            assert!(bounded(json!({ key: pc.max_n })).is_ok());
            let e = bounded(json!({ key: 100_000 })).unwrap_err();
            assert_eq!((e.status, e.param), (StatusCode::BAD_REQUEST, Some(key)));
            assert_eq!(bounded(json!({ key: 0 })).unwrap_err().param, Some(key));
        }
        let msg = json!({"role": "user", "content": "hi"});
        let many = vec![msg.clone(); pc.max_messages + 1];
        let e = bounded(json!({ "messages": many })).unwrap_err();
        assert_eq!(e.param, Some("messages"));
        assert!(bounded(json!({ "messages": vec![msg; pc.max_messages] })).is_ok());
        let long = "x".repeat(pc.max_input_bytes + 1);
        let parts = json!([{"role": "user", "content": [{"type": "text", "text": long}]}]);
        assert_eq!(
            bounded(json!({ "messages": parts })).unwrap_err().param,
            Some("messages")
        );
        assert_eq!(
            bounded(json!({ "prompt": long })).unwrap_err().param,
            Some("prompt")
        );
        assert!(bounded(json!({ "prompt": &long[1..] })).is_ok());
    }

    /// The tally is what the old map walk counted: every string's unescaped bytes, keys
    /// left out, and the item count of an array only.
    #[test]
    fn a_tally_counts_the_strings_of_any_value() {
        let tally = |v: Value| serde_json::from_slice::<Tally>(&text(v)).unwrap();
        let msgs = json!([
            {"role": "user", "content": "h\u{e9}\"llo"},
            {"role": "assistant", "content": [{"type": "text", "text": "ab"}], "n": [1, null, true]}
        ]);
        assert_eq!(
            tally(msgs),
            Tally {
                items: Some(2),
                bytes: 4 + 7 + 9 + 4 + 2
            }
        );
        assert_eq!(
            tally(json!("\u{1F600}")),
            Tally {
                items: None,
                bytes: 4
            }
        );
        assert_eq!(tally(json!([[["a"]], "b"])).items, Some(2));
        assert_eq!(tally(json!(5)), Tally::default());
    }

    /// The whole check of a body: a `null` or absent model is `default`, the engine's text
    /// has the public name (until the route sets the engine's) and no `task_id`, and what
    /// the stock handler could not parse is a 400.
    #[test]
    fn a_body_is_checked_whole_before_use() {
        let pc = PluginConfig::default();
        let dirs = vec!["/models/smollm2".to_string()];
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let check = |v: Value| {
            let body = text(v);
            check_body(&pc, &dirs, CHAT, &body).map(|c| {
                let engine: Value = serde_json::from_slice(c.body.text()).unwrap();
                (c.public, engine)
            })
        };
        for (model, public) in [(json!(null), "default"), (json!("gpt-4o"), "gpt-4o")] {
            let (name, b) =
                check(json!({"model": model, "messages": msgs, "task_id": "t"})).unwrap();
            assert_eq!(name, public);
            assert_eq!(b["model"], json!(public));
            assert_eq!(b["max_tokens"], json!(pc.default_max_tokens));
            assert_eq!(b["messages"], msgs);
            assert!(b.get("task_id").is_none(), "{b}");
        }
        assert_eq!(check(json!({"messages": msgs})).unwrap().0, "default");
        let e = check(json!({"model": "/models/smollm2", "messages": msgs})).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, Some("model_not_found"))
        );
        assert!(
            check(json!({"messages": msgs, "n": null, "max_completion_tokens": null})).is_ok(),
            "nulls are absent"
        );
        let e = check(json!({"messages": msgs, "top_p": "high"})).unwrap_err();
        assert_eq!(
            (e.status, e.param),
            (StatusCode::BAD_REQUEST, Some("top_p"))
        );
        for bad in [&b"[1]"[..], b"{", b"{\"messages\":[]} x", b"", b"\"model\""] {
            let e = check_body(&pc, &dirs, CHAT, bad).err().unwrap();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains("not a JSON object"), "{}", e.message);
        }
        // A member the plugin reads, sent twice, has no one meaning.
        let twice = br#"{"messages":[],"model":"a","model":"dnd:x@1"}"#;
        assert_eq!(
            check_body(&pc, &dirs, CHAT, twice).err().unwrap().status,
            StatusCode::BAD_REQUEST
        );
    }

    /// The engine's model id replaces the public name; the rest of the text stays.
    #[test]
    fn the_engine_model_is_set_last_and_again() {
        let pc = PluginConfig::default();
        let body = br#"{ "messages" : [ {"role":"user","content":"x"} ], "max_tokens": 3, "model": "gpt"}"#;
        let fields = Fields::parse(body).unwrap();
        let mut engine = EngineBody::new(&pc, body, &fields, "gpt").unwrap();
        engine.set_model("dnd:t@1 \"q\"");
        assert_eq!(
            engine.text(),
            br#"{"messages" : [ {"role":"user","content":"x"} ],"max_tokens": 3,"model":"dnd:t@1 \"q\""}"#
        );
    }

    /// Bodies the stock handler could not parse are refused before anything else, naming
    /// the field at fault; fields the stock request does not know (`task_id`, a chat's
    /// `user`) pass. The message does not point into the engine's text.
    #[test]
    fn bodies_that_do_not_fit_the_stock_request_name_the_field() {
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let ok = json!({"messages": msgs, "task_id": "t", "user": "u", "max_tokens": 3});
        assert!(check_fields(CHAT, &text(ok)).is_ok());
        assert!(check_fields(CHAT, &text(json!({"messages": "hi"}))).is_ok());
        assert!(check_fields(COMPLETION, &text(json!({"prompt": "hi", "user": "u"}))).is_ok());
        for (path, b, param) in [
            (CHAT, json!({}), "messages"),
            (CHAT, json!({"messages": 5}), "messages"),
            (
                CHAT,
                json!({"messages": [{"role": 5, "content": "x"}]}),
                "messages",
            ),
            (
                CHAT,
                json!({"messages": msgs, "temperature": "hot"}),
                "temperature",
            ),
            (CHAT, json!({"messages": msgs, "stream": "yes"}), "stream"),
            (CHAT, json!({"messages": msgs, "logprobs": 3}), "logprobs"),
            (COMPLETION, json!({}), "prompt"),
            (COMPLETION, json!({"prompt": 5}), "prompt"),
            (COMPLETION, json!({"prompt": "x", "echo": "no"}), "echo"),
        ] {
            let e = check_fields(path, &text(b.clone())).unwrap_err();
            assert_eq!(
                (e.status, e.param),
                (StatusCode::BAD_REQUEST, Some(param)),
                "{path} {b}: {}",
                e.message
            );
            assert!(e.message.contains(param), "{}", e.message);
            assert!(!e.message.contains(" at line "), "{}", e.message);
        }
    }

    #[test]
    fn engine_model_ids_are_not_public() {
        let dirs = vec!["/models/smollm2".to_string()];
        let name = |v: Value| {
            let body = text(v);
            public_model_name(&Fields::parse(&body).unwrap(), &dirs)
        };
        assert_eq!(name(json!({})).unwrap(), "default");
        assert_eq!(name(json!({"model": "gpt-4o"})).unwrap(), "gpt-4o");
        for id in ["dnd:other@0123", "/models/smollm2"] {
            let e = name(json!({ "model": id })).unwrap_err();
            assert_eq!(e.status, StatusCode::NOT_FOUND);
            assert_eq!((e.param, e.code), (Some("model"), Some("model_not_found")));
        }
        assert_eq!(name(json!({"model": 3})).unwrap_err().param, Some("model"));
    }

    #[test]
    fn the_prompt_is_the_user_turns_or_the_completion_prompt() {
        let prompt = |path: &str, v: Value| check_fields(path, &text(v)).unwrap().prompt_text();
        let chat = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "no"},
            {"role": "user", "content": null},
            {"role": "user", "content": [
                {"type": "text", "text": "two"},
                {"type": "image_url", "image_url": {"url": "data:,"}},
                {"type": "text", "text": "three"}
            ]},
        ]});
        assert_eq!(prompt(CHAT, chat).as_deref(), Some("one\ntwo\nthree"));
        assert_eq!(
            prompt(CHAT, json!({"messages": "raw"})).as_deref(),
            Some("raw")
        );
        assert_eq!(prompt(CHAT, json!({"messages": []})), None);
        let system_only = json!({"messages": [{"role": "system", "content": "s"}]});
        assert_eq!(prompt(CHAT, system_only), None);
        assert_eq!(
            prompt(COMPLETION, json!({"prompt": "first"})).as_deref(),
            Some("first")
        );
    }
}
