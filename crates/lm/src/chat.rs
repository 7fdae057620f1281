//! A multi-turn chat that reuses the model's KV cache between turns.
//!
//! Each turn renders the whole conversation with the chat template, but
//! feeds the model only the tokens after the longest common prefix of what
//! the cache already holds: earlier turns are never recomputed. Re-encoding
//! the assistant's text can give other ids than the ones sampled, so the
//! prefix is compared token by token rather than assumed.

use std::ops::ControlFlow;

use crate::chat_template::{ChatTemplate, Message};
use crate::generate::{GenerateError, GenerateOptions, Generation, Generator, encode_chat};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// A conversation with one model.
pub struct ChatSession {
    template: ChatTemplate,
    system: Option<String>,
    messages: Vec<Message>,
    generator: Generator,
    /// Exactly the tokens in the model's KV cache, in order.
    cached: Vec<u32>,
    /// The full prompt of the last turn, and the part of it fed.
    last_prompt: Vec<u32>,
    last_fed_from: usize,
}

impl ChatSession {
    /// `system` (if any) opens every conversation, also after a reset.
    pub fn new(
        template: ChatTemplate,
        system: Option<String>,
        options: GenerateOptions,
    ) -> Result<Self, GenerateError> {
        let mut session = ChatSession {
            template,
            system,
            messages: Vec::new(),
            generator: Generator::new(options)?,
            cached: Vec::new(),
            last_prompt: Vec::new(),
            last_fed_from: 0,
        };
        session.start_conversation();
        Ok(session)
    }

    fn start_conversation(&mut self) {
        self.messages.clear();
        if let Some(system) = &self.system {
            self.messages.push(Message::system(system.clone()));
        }
    }

    /// Sends a user message and generates the reply, streaming its text to
    /// `on_text`. The reply joins the conversation.
    pub fn send(
        &mut self,
        model: &mut Model,
        tokenizer: &Tokenizer,
        user: &str,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, GenerateError> {
        self.messages.push(Message::user(user));
        let prompt = match encode_chat(tokenizer, &self.template, &self.messages) {
            Ok(prompt) => prompt,
            Err(e) => {
                self.messages.pop();
                return Err(e);
            }
        };
        // The cache must mirror `cached`; if anyone else moved the model,
        // trust only what both agree on.
        self.cached.truncate(model.kv_len());
        let mut reuse = common_prefix(&self.cached, &prompt);
        // At least one token must be fed to get logits for the next one.
        if reuse == prompt.len() {
            reuse -= 1;
        }
        model.truncate_kv(reuse);
        self.cached.truncate(reuse);
        self.last_prompt = prompt;
        self.last_fed_from = reuse;

        let result = self
            .generator
            .run(model, tokenizer, &self.last_prompt[reuse..], on_text);
        let generation = match result {
            Ok(g) => g,
            Err(e) => {
                self.messages.pop();
                // The cache may hold part of a failed pass: forget it all.
                model.truncate_kv(0);
                self.cached.clear();
                return Err(e);
            }
        };
        self.cached.extend_from_slice(&self.last_prompt[reuse..]);
        let generated_in_cache = model.kv_len().saturating_sub(self.cached.len());
        self.cached.extend_from_slice(
            &generation.tokens[..generated_in_cache.min(generation.tokens.len())],
        );
        self.messages
            .push(Message::assistant(generation.text.clone()));
        Ok(generation)
    }

    /// Starts over: forgets the conversation and empties the cache.
    pub fn reset(&mut self, model: &mut Model) {
        self.start_conversation();
        model.truncate_kv(0);
        self.cached.clear();
        self.last_prompt.clear();
        self.last_fed_from = 0;
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The tokens the model's KV cache holds.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// The whole prompt of the last turn (all turns so far, rendered).
    pub fn last_prompt(&self) -> &[u32] {
        &self.last_prompt
    }

    /// The tokens the last turn actually fed (its prompt after the reused
    /// prefix).
    pub fn last_fed(&self) -> &[u32] {
        &self.last_prompt[self.last_fed_from..]
    }

    /// How many prompt tokens the last turn took from the cache.
    pub fn last_reused(&self) -> usize {
        self.last_fed_from
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_stops_at_first_difference() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
    }
}
