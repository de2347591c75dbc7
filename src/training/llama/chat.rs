//! The chat format of the training data: the model's chat template (ChatML), and
//! prompt/answer pairs tokenized the way the server sees them.
//!
//! A prompt is wrapped in the model's chat template exactly as the server renders a single
//! user message with the generation prompt (for SmolLM2 this includes its default system
//! prompt), and the answer follows with the end-of-turn token. Prompt and answer are
//! tokenized separately, as at inference time the prompt is tokenized and the answer
//! generated token by token.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tokenizers::Tokenizer;

/// The model's chat template, reduced to what training needs: how one user message with
/// the generation prompt renders. Only ChatML templates (`<|im_start|>role\n...<|im_end|>\n`)
/// are supported; a template that adds a default system prompt when the first message is
/// not a system message (SmolLM2's) has it extracted verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    pub default_system: Option<String>,
}

impl ChatTemplate {
    /// Reads `chat_template` from a `tokenizer_config.json` value.
    pub fn from_tokenizer_config(cfg: &serde_json::Value) -> Result<Self> {
        let Some(t) = cfg.get("chat_template").and_then(|v| v.as_str()) else {
            bail!("tokenizer_config.json has no string \"chat_template\"");
        };
        Self::parse(t)
    }

    /// Recognises a ChatML Jinja template. The template must emit each message as
    /// `'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'`
    /// and the generation prompt `<|im_start|>assistant\n`.
    pub fn parse(template: &str) -> Result<Self> {
        let compact: String = template.chars().filter(|c| !c.is_whitespace()).collect();
        let message = "'<|im_start|>'+message['role']+'\\n'+message['content']+'<|im_end|>'+'\\n'";
        let message_nl = message.replace("\\n", "");
        let has_message = compact.contains(message) || compact.contains(&message_nl);
        let has_gen = compact.contains("<|im_start|>assistant");
        if !has_message || !has_gen {
            bail!("unsupported chat template (only ChatML templates are supported): {template:?}");
        }
        const START: &str = "<|im_start|>system";
        let default_system = match template.find(START) {
            Some(i) if template.contains("!= 'system'") || template.contains("!='system'") => {
                let rest = &template[i + START.len()..];
                let rest = rest
                    .strip_prefix('\n')
                    .or_else(|| rest.strip_prefix("\\n"))
                    .context("chat template: no newline after the system role")?;
                let end = rest
                    .find("<|im_end|>")
                    .context("chat template: default system prompt has no <|im_end|>")?;
                Some(rest[..end].to_string())
            }
            _ => None,
        };
        Ok(Self { default_system })
    }

    /// `messages = [{"role": "user", "content": prompt}]`, `add_generation_prompt = true`.
    pub fn render_user(&self, prompt: &str) -> String {
        let mut s = String::new();
        if let Some(sys) = &self.default_system {
            s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
        }
        s.push_str(&format!(
            "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        ));
        s
    }
}

/// The text that, put before a user message's content, renders as these earlier
/// (user, assistant) turns: it closes the user turn early, so that the model reads each
/// pair as a turn of its own and the message as the last user turn. ChatML, as
/// [`ChatTemplate`]; the tokenizer reads the markers as its special tokens. This is how
/// the evaluation gives a prompt in-context examples through the serving path, whose
/// requests carry a single user message.
pub fn earlier_turns<'a>(turns: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    turns
        .into_iter()
        .map(|(user, assistant)| {
            format!("{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n<|im_start|>user\n")
        })
        .collect()
}

/// Labelled `examples` as earlier chat turns before a prompt ([`earlier_turns`]): how the
/// evaluation and the trainer show a task's examples.
pub fn demonstration_turns<'a>(
    examples: impl IntoIterator<Item = &'a crate::tasks::Example>,
) -> String {
    earlier_turns(
        examples
            .into_iter()
            .map(|e| (e.prompt.as_str(), e.answer.as_str())),
    )
}

/// A tokenized example: `ids` = prompt tokens then answer tokens (ending with the
/// end-of-turn token); the loss covers `ids[prompt_len..]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

/// The model's tokenizer with its chat template.
pub struct ChatTokenizer {
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// `<|im_end|>`: ends the answer.
    pub end_of_turn: u32,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTokenizer")
            .field("template", &self.template)
            .field("end_of_turn", &self.end_of_turn)
            .finish()
    }
}

impl ChatTokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` from a Hugging Face folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| {
            anyhow::anyhow!("loading {}: {e}", dir.join("tokenizer.json").display())
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("reading {}", cfg_path.display()))?,
        )
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
        let template = ChatTemplate::from_tokenizer_config(&cfg)?;
        let end_of_turn = tokenizer
            .token_to_id("<|im_end|>")
            .context("tokenizer has no <|im_end|> token")?;
        Ok(Self {
            tokenizer,
            template,
            end_of_turn,
        })
    }

    /// Raw text, tokenized as it stands (no chat template, no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// The prompt as the server sends it to the model (chat template applied), tokenized.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.encode(&self.template.render_user(prompt))
    }

    pub fn encode_example(&self, prompt: &str, answer: &str) -> Result<Encoded> {
        let mut ids = self.encode_prompt(prompt)?;
        let prompt_len = ids.len();
        ids.extend(self.encode(answer)?);
        ids.push(self.end_of_turn);
        Ok(Encoded { ids, prompt_len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SMOLLM2_TEMPLATE;

    #[test]
    fn smollm2_template_renders_like_jinja() {
        let t = ChatTemplate::parse(SMOLLM2_TEMPLATE).unwrap();
        assert_eq!(
            t.render_user("Hi"),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let plain = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        assert_eq!(ChatTemplate::parse(plain).unwrap().default_system, None);
        assert!(ChatTemplate::parse("{{ bos_token }}[INST] {{ m }} [/INST]").is_err());
    }

    #[test]
    fn earlier_turns_render_as_the_conversation_would() {
        let t = ChatTemplate::parse(SMOLLM2_TEMPLATE).unwrap();
        let prompt = earlier_turns([("2 + 2?", "4"), ("3 + 3?", "6")]) + "1 + 1?";
        // The Jinja template's rendering of the five messages.
        let conversation = [
            ("user", "2 + 2?"),
            ("assistant", "4"),
            ("user", "3 + 3?"),
            ("assistant", "6"),
            ("user", "1 + 1?"),
        ];
        let mut want = format!(
            "<|im_start|>system\n{}<|im_end|>\n",
            t.default_system.as_deref().unwrap()
        );
        for (role, content) in conversation {
            want.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        }
        want.push_str("<|im_start|>assistant\n");
        assert_eq!(t.render_user(&prompt), want);
        assert_eq!(earlier_turns([]), "");
    }

    #[test]
    fn real_model_template_when_present() {
        // The converted SmolLM2 folder appears once the asset step has run.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/smollm2");
        if !dir.join("tokenizer_config.json").exists() {
            return;
        }
        let tok = ChatTokenizer::load(&dir).unwrap();
        assert_eq!(
            tok.template.default_system.as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(tok.end_of_turn, 2);
        let e = tok.encode_example("What is 2 + 3?", "5").unwrap();
        assert_eq!(e.ids[0], 1, "starts with <|im_start|>");
        assert_eq!(*e.ids.last().unwrap(), 2);
        // The markers of earlier turns are read as the special tokens, not as text.
        let two_turns = earlier_turns([("Hi", "Hello")]) + "What is 2 + 3?";
        let ids = tok.encode_prompt(&two_turns).unwrap();
        let ends = ids.iter().filter(|&&id| id == tok.end_of_turn).count();
        assert_eq!(
            ends, 4,
            "the system turn, the earlier two and the last user turn"
        );
    }
}
