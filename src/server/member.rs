//! One top-level member of a JSON object replaced, the rest of the text left as it is.
//!
//! Why it exists: every chat and completion answer carries the engine's own model id (the
//! base folder's path, or `dnd:TASK@HASH`, another tenant's), which the plugin replaces
//! with the client's public name ([`super::tagging`]). Parsing the answer for that, even
//! one level deep with raw values, makes serde validate every nested byte: under callgrind
//! that was the layer's largest single cost, 14.7 k of its 63 k instructions a request on
//! `bench overhead`'s answers. This only tracks what it needs to find where each top-level
//! member begins and ends: strings (with their escapes) and nesting. It trusts the text
//! inside those bounds, which the engine's serializer wrote.
//!
//! The contract, [`with_member`]`(json, key, value)`:
//! - `json` must be one object (whitespace around it allowed), each member a string key,
//!   `:`, a value, members separated by `,`; anything else, or no member named `key`, is
//!   `None`, and the caller sends the text unchanged.
//! - Every top-level member named `key` (keys compared after unescaping) gets `value`,
//!   written as a JSON string; nested members and strings that merely contain `"key"` are
//!   not touched.
//! - Every other byte is copied: numbers keep their text, whitespace stays where it was.
//!
//! Tested against the serde rewrite it replaced, on generated objects.

/// `json` with the value of every top-level member named `key` replaced by the string
/// `value`; `None` when `json` is not an object or has no such member (module doc).
pub fn with_member(json: &[u8], key: &str, value: &str) -> Option<Vec<u8>> {
    let mut s = Scan { b: json, i: 0 };
    s.skip_ws();
    s.expect(b'{')?;
    let mut spans = Vec::new();
    s.skip_ws();
    if s.peek()? != b'}' {
        loop {
            s.skip_ws();
            let (ks, ke) = s.string()?;
            s.skip_ws();
            s.expect(b':')?;
            s.skip_ws();
            let span = s.value()?;
            if key_is(&json[ks..ke], key) {
                spans.push(span);
            }
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
    if s.i != json.len() || spans.is_empty() {
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
        }
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
