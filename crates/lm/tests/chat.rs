//! Chat templates render what the model expects; a chat session reuses
//! the KV cache and feeds later turns only their new tokens.

mod common;

use std::ops::ControlFlow;

use huddle_lm::generate::{GenerateOptions, stop_token_ids};
use huddle_lm::{ChatSession, ChatTemplate, LoadOptions, Message, Model, Tokenizer};

fn two_turns() -> Vec<Message> {
    vec![
        Message::user("Hi!"),
        Message::assistant("Hello! How can I help?"),
        Message::user("Tell me a joke."),
    ]
}

#[test]
fn smollm2_template_renders_two_turns_as_chatml() {
    let tokenizer = Tokenizer::from_gguf(&common::smollm2()).expect("tokenizer loads");
    let template = ChatTemplate::for_tokenizer(&tokenizer).expect("template compiles");
    assert!(!template.is_fallback());
    let text = template.render(&two_turns(), true).expect("renders");
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi!<|im_end|>\n\
         <|im_start|>assistant\nHello! How can I help?<|im_end|>\n\
         <|im_start|>user\nTell me a joke.<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

/// Qwen2's template: a default system message, `tojson`-free ChatML, and
/// Jinja whitespace control that depends on trim_blocks/lstrip_blocks.
const QWEN_LIKE: &str = "{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role != 'system' %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content.strip() + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
";

#[test]
fn qwen_style_template_renders_system_and_two_turns() {
    let template = ChatTemplate::new(QWEN_LIKE, "", "<|im_end|>").expect("compiles");
    let mut messages = vec![Message::system("Be terse.")];
    messages.extend(two_turns());
    assert_eq!(
        template.render(&messages, false).expect("renders"),
        "<|im_start|>system\nBe terse.<|im_end|>\n\
         <|im_start|>user\nHi!<|im_end|>\n\
         <|im_start|>assistant\nHello! How can I help?<|im_end|>\n\
         <|im_start|>user\nTell me a joke.<|im_end|>\n"
    );
}

#[test]
fn trim_and_lstrip_blocks_match_transformers() {
    // transformers renders with trim_blocks and lstrip_blocks: a block tag
    // alone on its line leaves no blank line or indentation behind.
    let template = ChatTemplate::new(
        "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content }}]\n  {% endif %}\n{% endfor %}",
        "",
        "",
    )
    .expect("compiles");
    assert_eq!(
        template
            .render(&[Message::user("a"), Message::user("b")], false)
            .expect("renders"),
        "[a]\n[b]\n"
    );
}

#[test]
fn fixture_template_renders_bos_and_eos_variables() {
    let template = ChatTemplate::new(
        "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
        "<s>",
        "</s>",
    )
    .expect("compiles");
    assert_eq!(
        template
            .render(&[Message::user("x")], false)
            .expect("renders"),
        "<s>x</s>"
    );
}

#[test]
fn template_end_of_turn_token_stops_generation() {
    let tokenizer = Tokenizer::from_gguf(&common::smollm2()).expect("tokenizer loads");
    let template = ChatTemplate::for_tokenizer(&tokenizer).expect("template compiles");
    let im_end = tokenizer.token_to_id("<|im_end|>").expect("in vocab");
    assert_eq!(template.end_of_turn_ids(&tokenizer), vec![im_end]);
}

#[test]
fn second_turn_feeds_only_new_tokens_after_the_first_turn() {
    let path = common::smollm2();
    let tokenizer = Tokenizer::from_gguf(&path).expect("tokenizer loads");
    let mut model = Model::load(&path, &LoadOptions::default()).expect("model loads");
    let template = ChatTemplate::for_tokenizer(&tokenizer).expect("template compiles");
    let options = GenerateOptions {
        max_tokens: 24,
        eos_token_ids: stop_token_ids(model.info(), &tokenizer, Some(&template)),
        ..Default::default()
    };
    let mut session = ChatSession::new(template, None, options).expect("session");
    let mut ignore = |_: &str| ControlFlow::Continue(());

    let first = session
        .send(
            &mut model,
            &tokenizer,
            "What is the capital of France?",
            &mut ignore,
        )
        .expect("first turn");
    let first_prompt = session.last_prompt().to_vec();
    assert_eq!(session.last_reused(), 0);
    assert_eq!(session.last_fed(), &first_prompt[..]);
    assert_eq!(model.kv_len(), session.cached_tokens().len());

    session
        .send(&mut model, &tokenizer, "And of Germany?", &mut ignore)
        .expect("second turn");
    let second_prompt = session.last_prompt().to_vec();
    // The second prompt holds the whole first turn: question and answer.
    assert!(second_prompt.starts_with(&first_prompt));
    let answer_ids = tokenizer.encode(&first.text, false).expect("encodes");
    assert!(
        second_prompt
            .windows(answer_ids.len())
            .any(|w| w == &answer_ids[..]),
        "first answer {:?} not in the second prompt",
        first.text
    );
    // Only what follows the cached prefix was fed.
    assert!(session.last_reused() >= first_prompt.len());
    assert_eq!(session.last_fed(), &second_prompt[session.last_reused()..]);
    assert!(session.last_fed().len() < second_prompt.len());
    assert_eq!(session.messages().len(), 4);
    assert_eq!(model.kv_len(), session.cached_tokens().len());

    session.reset(&mut model);
    assert_eq!(model.kv_len(), 0);
    assert!(session.messages().is_empty());
}
