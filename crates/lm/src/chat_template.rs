//! Chat templates: the model's own Jinja template turns messages into the
//! prompt text it was trained on.
//!
//! Templates are written for Python's Jinja2 as transformers sets it up
//! (`trim_blocks`, `lstrip_blocks`, `raise_exception`, Python string
//! methods such as `.strip()`), so the environment here is made to match:
//! minijinja with minijinja-contrib's pycompat methods.

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind};

use crate::tokenizer::Tokenizer;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template does not parse: {0}")]
    Syntax(String),
    #[error("chat template failed: {0}")]
    Render(String),
}

/// A plain format for models without a template: readable, and the
/// `\nUser:` stop string ([`FALLBACK_STOP`]) ends the assistant's turn.
const FALLBACK_TEMPLATE: &str = "{% for m in messages %}\
{% if m.role == 'system' %}{{ m.content }}\n\n\
{% elif m.role == 'user' %}User: {{ m.content }}\n\
{% else %}Assistant: {{ m.content }}\n{% endif %}\
{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}";

/// The stop string that ends a turn of the fallback format.
pub const FALLBACK_STOP: &str = "\nUser:";

/// Tokens that end a turn in common templates; one counts for a model when
/// it is a special token of its tokenizer and its template writes it.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_turn|>",
    "<|END_OF_TURN_TOKEN|>",
];

/// A compiled chat template with the special-token texts it may use.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    is_fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("is_fallback", &self.is_fallback)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts the
    /// template sees under those names.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        Self::build(source, bos_token, eos_token, false)
    }

    /// The tokenizer's template, or the plain fallback when it has none.
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Result<Self, TemplateError> {
        let bos = tokenizer.bos_token().map_or("", |t| t.text.as_str());
        let eos = tokenizer.eos_token().map_or("", |t| t.text.as_str());
        match tokenizer.chat_template() {
            Some(source) => Self::new(source, bos, eos),
            None => Self::build(FALLBACK_TEMPLATE, bos, eos, true),
        }
    }

    /// The plain fallback format.
    pub fn fallback() -> Result<Self, TemplateError> {
        Self::build(FALLBACK_TEMPLATE, "", "", true)
    }

    fn build(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        is_fallback: bool,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::Syntax(format!("{e:#}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TemplateError::Syntax(format!("{e:#}")))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            is_fallback,
        })
    }

    /// Whether this is the plain fallback (the model brought no template).
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; `add_generation_prompt` appends the start of the
    /// assistant's turn.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let ctx = Value::from_pairs([
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(self.bos_token.as_str())),
            ("eos_token", Value::from(self.eos_token.as_str())),
        ]);
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Render(format!("{e:#}")))?;
        template
            .render(ctx)
            .map_err(|e| TemplateError::Render(format!("{e:#}")))
    }

    /// Ids of the special tokens this template ends a turn with (such as
    /// `<|im_end|>`): generation must stop on them even when the model's
    /// configured EOS is another token.
    pub fn end_of_turn_ids(&self, tokenizer: &Tokenizer) -> Vec<u32> {
        END_OF_TURN_TOKENS
            .iter()
            .filter(|text| self.source.contains(*text))
            .filter_map(|text| tokenizer.token_to_id(text))
            .filter(|&id| tokenizer.is_special(id))
            .collect()
    }

    /// Stop strings the format itself needs (only the fallback has one).
    pub fn stop_strings(&self) -> Vec<String> {
        if self.is_fallback {
            vec![FALLBACK_STOP.to_string()]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_renders_a_generation_prompt() {
        let text = ChatTemplate::fallback()
            .expect("fallback compiles")
            .render(&[Message::system("Be brief."), Message::user("Hi")], true)
            .expect("fallback renders");
        assert_eq!(text, "Be brief.\n\nUser: Hi\nAssistant:");
    }

    #[test]
    fn raise_exception_fails_the_render() {
        let t =
            ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").expect("parses");
        let err = t.render(&[], false).expect_err("raises");
        assert!(err.to_string().contains("no system role"), "{err}");
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m.content.strip() }}{% if m.role.startswith('us') %}!{% endif %}{% endfor %}",
            "",
            "",
        )
        .expect("parses");
        assert_eq!(
            t.render(&[Message::user("  hi  ")], false)
                .expect("renders"),
            "hi!"
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(matches!(
            ChatTemplate::new("{% if %}", "", ""),
            Err(TemplateError::Syntax(_))
        ));
    }
}
