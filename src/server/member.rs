//! Top-level members of a JSON object found in its text, and the text rewritten with some
//! of them replaced or left out, every other byte as it was.
//!
//! Why it exists: the plugin edits a few top-level members of every chat and completion
//! request (its `model`, `task_id`, bounds) and answer (the engine's model id, which is the
//! base folder's path or `dnd:TASK@HASH`, another tenant's, replaced with the client's public
//! name: [`super::tagging`]). Parsing a body for that, even one level deep with raw values,
//! makes serde validate every nested byte: under callgrind the answer's parse was the
//! layer's largest single cost, 14.7 k of its 63 k instructions a request on `bench
//! overhead`'s answers. This only tracks what it needs to find where each top-level member
//! begins and ends: strings (with their escapes) and nesting. It trusts the text inside
//! those bounds, which a serializer wrote or a parse has already checked.
//!
//! The contract:
//! - `json` must be one object (whitespace around it allowed), each member a string key,
//!   `:`, a value, members separated by `,`; anything else is `None`, and the caller sends
//!   the text unchanged or refuses it.
//! - Keys are compared after unescaping; nested members and strings that merely contain
//!   `"key"` are never touched.
//! - [`with_member`]`(json, key, value)`: every top-level member named `key` gets `value`,
//!   written as a JSON string; every other byte is copied (numbers keep their text,
//!   whitespace its place); no member named `key` is `None`.
//! - [`copy_members`]`(json, keep, out)`: the text of each member (key to the end of its
//!   value) for which `keep` holds, each followed by `,`, appended to `out`: the caller
//!   opens the object before and closes it after with members of its own.
//!
//! Tested against serde's parse of generated objects.

/// A top-level member as found in the text: its key (raw, between the quotes) and the
/// spans of the whole member and of its value.
struct Member {
    start: usize,
    key: (usize, usize),
    value: (usize, usize),
}

/// Calls `each` on every top-level member of the object `json`, in order; `None` when
/// `json` is not one object (module doc).
fn for_members(json: &[u8], mut each: impl FnMut(Member)) -> Option<()> {
    let mut s = Scan { b: json, i: 0 };
    s.skip_ws();
    s.expect(b'{')?;
    s.skip_ws();
    if s.peek()? != b'}' {
        loop {
            s.skip_ws();
            let start = s.i;
            let key = s.string()?;
            s.skip_ws();
            s.expect(b':')?;
            s.skip_ws();
            let value = s.value()?;
            each(Member { start, key, value });
            s.skip_ws();
            match s.peek()? {
                b',' => s.i += 1,
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.i += 1;
    s.skip_ws();
    (s.i == json.len()).then_some(())
}

/// `json` with the value of every top-level member named `key` replaced by the string
/// `value`; `None` when `json` is not an object or has no such member (module doc).
pub fn with_member(json: &[u8], key: &str, value: &str) -> Option<Vec<u8>> {
    let mut spans = Vec::new();
    for_members(json, |m| {
        if key_is(&json[m.key.0..m.key.1], key) {
            spans.push(m.value);
        }
    })?;
    if spans.is_empty() {
        return None;
    }
    let new = serde_json::to_vec(value).ok()?;
    let mut out = Vec::with_capacity(json.len() + new.len());
    let mut at = 0;
    for (start, end) in spans {
        out.extend_from_slice(&json[at..start]);
        out.extend_from_slice(&new);
        at = end;
    }
    out.extend_from_slice(&json[at..]);
    Some(out)
}

/// A member's key, as [`copy_members`] shows it to its caller.
pub struct Key<'a>(&'a [u8]);

impl Key<'_> {
    /// Whether the key (unescaped) is `name`.
    pub fn is(&self, name: &str) -> bool {
        key_is(self.0, name)
    }
}

/// Appends to `out` the text of each top-level member of `json` for which `keep(key,
/// value text)` holds, each followed by `,`; `None` (and `out` as it was) when `json` is
/// not one object (module doc).
pub fn copy_members(
    json: &[u8],
    mut keep: impl FnMut(Key<'_>, &[u8]) -> bool,
    out: &mut Vec<u8>,
) -> Option<()> {
    let len = out.len();
    let scanned = for_members(json, |m| {
        if keep(Key(&json[m.key.0..m.key.1]), &json[m.value.0..m.value.1]) {
            out.extend_from_slice(&json[m.start..m.value.1]);
            out.push(b',');
        }
    });
    if scanned.is_none() {
        out.truncate(len);
    }
    scanned
}

/// Whether a key's raw text (between its quotes) names `key`; unescaped only when it has
/// an escape, which a serializer writes for none of the ASCII letters of a plain key.
fn key_is(raw: &[u8], key: &str) -> bool {
    if !raw.contains(&b'\\') {
        return raw == key.as_bytes();
    }
    let quoted = [&b"\""[..], raw, b"\""].concat();
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == key)
}

/// A cursor over the text.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// A string at the cursor: the span of its contents; the cursor after its closing quote.
    fn string(&mut self) -> Option<(usize, usize)> {
        self.expect(b'"')?;
        let start = self.i;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
        let end = self.i;
        self.i += 1;
        Some((start, end))
    }

    /// One value at the cursor: its span; the cursor after it.
    fn value(&mut self) -> Option<(usize, usize)> {
        let start = self.i;
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            // A number, `true`, `false` or `null`: up to what ends a value.
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
                if self.i == start {
                    return None;
                }
            }
        }
        Some((start, self.i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::rng::Rng;
    use serde_json::{json, Value};

    /// The meaning of the rewrite, as serde has it: the whole object parsed, the member's
    /// value replaced (the reference the parse this replaced was tested against too).
    fn reference(json: &[u8], key: &str, value: &str) -> Option<Value> {
        let members: serde_json::Map<String, Value> = serde_json::from_slice(json).ok()?;
        let mut members = members;
        *members.get_mut(key)? = Value::String(value.into());
        Some(Value::Object(members))
    }

    fn check(json: &[u8], value: &str) {
        let got = with_member(json, "model", value).map(|out| {
            serde_json::from_slice::<Value>(&out)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
        });
        assert_eq!(
            got,
            reference(json, "model", value),
            "{}",
            String::from_utf8_lossy(json)
        );
    }

    #[test]
    fn it_agrees_with_the_serde_rewrite() {
        for json in [
            &br#"{"id":"x","model":"/models/base","choices":[{"message":{"content":"\"model\": 1","model":"inner"}}],"usage":null}"#[..],
            br#" { "model" : 3 , "a\u0041" : [1, 2.50, {"model": "m"}] } "#,
            br#"{"choices":[],"model":"dnd:t@1"}"#,
            br#"{"mod\u0065l":"escaped key","x":"\\"}"#,
            br#"{"x":"a\\\"}b","model":true}"#,
            br#"{"model":{"model":[{}]},"y":[[],[[]]]}"#,
            br#"{}"#,
            br#"{"id":1}"#,
        ] {
            check(json, "default \"quoted\"");
        }
        // Generated answers: nested objects and arrays, strings with quotes, backslashes,
        // braces and non-ASCII text, keys that contain "model", compact and pretty.
        let mut rng = Rng::new(7);
        for _ in 0..300 {
            let v = generated(&mut rng, 0);
            let mut top = json!({"id": "chatcmpl-1", "object": "chat.completion"});
            top["choices"] = v;
            top["model"] = json!("/abs/base path");
            if rng.below(2) == 0 {
                top["usage"] = json!({"model": "nested", "n": 1.5e-3});
            }
            check(&serde_json::to_vec(&top).unwrap(), "default");
            check(&serde_json::to_vec_pretty(&top).unwrap(), "public \\ name");
            check_copy(&serde_json::to_vec(&top).unwrap());
            check_copy(&serde_json::to_vec_pretty(&top).unwrap());
        }
    }

    /// `copy_members` leaving out `model` and `usage`, then closed with a member of the
    /// caller's, means what serde's map means with those removed and that one inserted.
    fn check_copy(json: &[u8]) {
        let mut out = b"{".to_vec();
        copy_members(json, |k, _| !(k.is("model") || k.is("usage")), &mut out).unwrap();
        out.extend_from_slice(br#""end":1}"#);
        let got: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
        let mut want: serde_json::Map<String, Value> = serde_json::from_slice(json).unwrap();
        want.remove("model");
        want.remove("usage");
        want.insert("end".into(), json!(1));
        assert_eq!(
            got,
            Value::Object(want),
            "{}",
            String::from_utf8_lossy(json)
        );
    }

    #[test]
    fn copied_members_keep_their_text_and_values_are_seen() {
        let json = br#" {"task_id":"t", "n" : null,"mod\u0065l":"x","m":[1, {"n":null}]} "#;
        let mut out = b"{".to_vec();
        let mut seen = Vec::new();
        copy_members(
            json,
            |k, v| {
                seen.push(String::from_utf8_lossy(v).into_owned());
                !(k.is("task_id") || k.is("model") || (k.is("n") && v == b"null"))
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out, br#"{"m":[1, {"n":null}],"#);
        assert_eq!(seen, [r#""t""#, "null", r#""x""#, r#"[1, {"n":null}]"#]);
        let mut out = b"{".to_vec();
        assert!(copy_members(b"{\"a\":1", |_, _| true, &mut out).is_none());
        assert_eq!(
            out, b"{",
            "nothing appended from a text that is not an object"
        );
    }

    #[test]
    fn other_bytes_are_copied_and_bad_text_is_refused() {
        // Numbers keep their text (no round trip through f64), whitespace its place.
        assert_eq!(
            with_member(br#"{"model":"a", "t":2.50}"#, "model", "b").unwrap(),
            br#"{"model":"b", "t":2.50}"#
        );
        assert_eq!(
            with_member(br#"{"model":1,"model":2}"#, "model", "c").unwrap(),
            br#"{"model":"c","model":"c"}"#
        );
        for not in [
            &b"[1]"[..],
            b"{\"id\":1}",
            b"{bad",
            b"\"model\"",
            b"{\"model\":1",
            b"{\"model\":1}x",
            b"{\"model\":}",
            b"{\"model\" 1}",
            b"{\"model\":\"unterminated}",
            b"",
        ] {
            assert_eq!(
                with_member(not, "model", "b"),
                None,
                "{}",
                String::from_utf8_lossy(not)
            );
        }
    }

    fn generated(rng: &mut Rng, depth: usize) -> Value {
        const STRINGS: [&str; 6] = [
            "plain",
            "\"model\": \"x\"",
            "back\\slash }] {[",
            "caf\u{e9} \u{1F600}",
            "line\nbreak\t\"",
            "",
        ];
        let pick = rng.below(if depth >= 3 { 4 } else { 6 });
        match pick {
            0 => Value::String(STRINGS[rng.below(6)].into()),
            1 => json!(rng.below(1 << 31) as f64 / 7.0),
            2 => json!(null),
            3 => json!(rng.below(2) == 0),
            4 => Value::Array(
                (0..rng.below(4))
                    .map(|_| generated(rng, depth + 1))
                    .collect(),
            ),
            _ => {
                let mut o = serde_json::Map::new();
                for k in 0..rng.below(4) {
                    let key = ["model", "content", "x\"model\"", "role"][k];
                    o.insert(key.into(), generated(rng, depth + 1));
                }
                Value::Object(o)
            }
        }
    }
}
