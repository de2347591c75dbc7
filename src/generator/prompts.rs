//! Prompt lists: parsing a prompts file and fitting a list to the generator's N.
//!
//! A prompts file is either plain text (one prompt per line) or JSON Lines whose objects
//! have a string `prompt` field (chosen when the first non-blank line is a JSON object).
//! Blank lines are skipped and each prompt is trimmed. An empty file, non-UTF-8 bytes or a
//! JSONL line without `prompt` is an error that names the problem and the line.
//!
//! The decoder takes exactly N prompts. [`fit_to_n`] cycles a shorter list (p0, p1, ...,
//! p0, p1, ...) and keeps the first N of a longer one, and says what it did. Order matters:
//! the decoder convolves along the prompt axis, so the same prompts in another order give
//! another adapter (see the generator module doc).

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

/// Parses the bytes of a prompts file (text lines or JSONL with a `prompt` field).
pub fn parse_prompts(bytes: &[u8]) -> Result<Vec<String>> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => bail!(
            "prompts are not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let jsonl = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .is_some_and(|l| l.starts_with('{'));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let prompt = if jsonl {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("line {}: not a JSON object", i + 1))?;
            match v.get("prompt") {
                Some(serde_json::Value::String(s)) => s.trim().to_string(),
                _ => bail!(
                    "line {}: JSONL object has no string field \"prompt\"",
                    i + 1
                ),
            }
        } else {
            line.to_string()
        };
        ensure!(!prompt.is_empty(), "line {}: the prompt is empty", i + 1);
        out.push(prompt);
    }
    ensure!(!out.is_empty(), "no prompts: the input is empty");
    Ok(out)
}

/// Reads and parses a prompts file.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading prompts file {}", path.display()))?;
    parse_prompts(&bytes).with_context(|| format!("prompts file {}", path.display()))
}

/// Exactly `n` prompts: a shorter list is repeated in order, a longer one is cut to its first
/// `n`. Returns the prompts and a note when the list was changed.
pub fn fit_to_n(prompts: &[String], n: usize) -> Result<(Vec<String>, Option<String>)> {
    ensure!(!prompts.is_empty(), "no prompts given");
    for (i, p) in prompts.iter().enumerate() {
        ensure!(!p.trim().is_empty(), "prompt {} is empty", i + 1);
    }
    let k = prompts.len();
    let fitted: Vec<String> = prompts.iter().cycle().take(n).cloned().collect();
    let note = match k.cmp(&n) {
        std::cmp::Ordering::Less => Some(format!(
            "repeated {k} prompt{} in order to fill N={n}",
            if k == 1 { "" } else { "s" }
        )),
        std::cmp::Ordering::Greater => Some(format!(
            "used the first {n} of {k} prompts (the generator takes N={n})"
        )),
        std::cmp::Ordering::Equal => None,
    };
    Ok((fitted, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_jsonl() {
        let p = parse_prompts(b"\xef\xbb\xbfWhat is 2+2?\r\n\n  Name a colour.  \n").unwrap();
        assert_eq!(p, vec!["What is 2+2?", "Name a colour."]);
        let p =
            parse_prompts(b"{\"prompt\": \"a\", \"answer\": 1}\n\n{\"prompt\":\"b\"}\n").unwrap();
        assert_eq!(p, vec!["a", "b"]);
    }

    #[test]
    fn bad_inputs() {
        let e = parse_prompts(b"").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = parse_prompts(b" \n\n").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = parse_prompts(b"ok\n\xff\xfe bad\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("UTF-8") && e.contains("offset 3"), "{e}");
        let e = parse_prompts(b"{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("prompt"), "{e}");
        let e = parse_prompts(b"{\"prompt\": \"a\"}\nplain\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
        let e = read_prompts(Path::new("/nonexistent/prompts.txt")).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/prompts.txt"));
    }

    #[test]
    fn fitting() {
        let p: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let (f, note) = fit_to_n(&p, 7).unwrap();
        assert_eq!(f, ["a", "b", "c", "a", "b", "c", "a"]);
        assert_eq!(note.unwrap(), "repeated 3 prompts in order to fill N=7");
        let (f, note) = fit_to_n(&p, 2).unwrap();
        assert_eq!(f, ["a", "b"]);
        assert!(note.unwrap().contains("first 2 of 3"));
        let (f, note) = fit_to_n(&p, 3).unwrap();
        assert_eq!((f.len(), note), (3, None));
        assert!(fit_to_n(&[], 3).is_err());
        assert!(fit_to_n(&["x".into(), " ".into()], 3)
            .unwrap_err()
            .to_string()
            .contains("prompt 2 is empty"));
    }
}
