//! Streaming text (UTF-8 and stop strings across token boundaries) and
//! greedy generation with the real SmolLM2 model.

mod common;

use std::ops::ControlFlow;

use huddle_lm::generate::{FinishReason, GenerateOptions, encode_chat, stop_token_ids};
use huddle_lm::stream::TextStream;
use huddle_lm::{ChatTemplate, LoadOptions, Message, Model, Tokenizer, generate};

/// Pushes byte chunks; returns what was shown after each push and at the end.
fn stream_all(stops: &[&str], chunks: &[&[u8]]) -> (Vec<String>, String, Option<usize>) {
    let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
    let mut stream = TextStream::new(&stops);
    let mut shown = Vec::new();
    let mut stop = None;
    for chunk in chunks {
        let emitted = stream.push(chunk);
        shown.push(emitted.text.to_string());
        if emitted.stop.is_some() {
            stop = emitted.stop;
            break;
        }
    }
    let rest = stream.finish().text.to_string();
    (shown, rest, stop)
}

#[test]
fn multibyte_characters_split_across_tokens_stream_whole() {
    let crab = "🦀".as_bytes(); // 4 bytes
    let e = "é".as_bytes(); // 2 bytes
    let (shown, rest, _) = stream_all(
        &[],
        &[
            b"a",
            &crab[..1],
            &crab[1..3],
            &crab[3..],
            &e[..1],
            &e[1..],
            b"!",
        ],
    );
    assert_eq!(shown, vec!["a", "", "", "🦀", "", "é", "!"]);
    assert_eq!(rest, "");
}

#[test]
fn stop_string_split_across_tokens_is_never_shown() {
    let (shown, rest, stop) = stream_all(&["</end>"], &[b"Hello <", b"/e", b"nd> more"]);
    assert_eq!(shown, vec!["Hello ", "", ""]);
    assert_eq!(stop, Some(0));
    assert_eq!(rest, "");
}

#[test]
fn held_back_prefix_is_released_when_it_stops_matching() {
    let (shown, rest, stop) = stream_all(&["STOP"], &[b"a ST", b"OP", b"x"]);
    assert_eq!(stop, Some(0));
    assert_eq!(shown.concat() + &rest, "a ");

    let (shown, rest, stop) = stream_all(&["STOP"], &[b"a ST", b"AR", b"T"]);
    assert_eq!(stop, None);
    assert_eq!(shown, vec!["a ", "STAR", "T"]);
    assert_eq!(rest, "");
}

#[test]
fn held_back_prefix_is_shown_at_the_end() {
    let (shown, rest, stop) = stream_all(&["\nUser:"], &[b"Paris.", b"\nUs"]);
    assert_eq!(stop, None);
    assert_eq!(shown, vec!["Paris.", ""]);
    assert_eq!(rest, "\nUs");
}

#[test]
fn stop_string_inside_one_token_cuts_the_text() {
    let (shown, _, stop) = stream_all(&["x", "world"], &[b"hello world!"]);
    assert_eq!(stop, Some(1));
    assert_eq!(shown, vec!["hello "]);
}

#[test]
fn stop_string_spanning_a_multibyte_character() {
    let stop = "é!";
    let e = "é".as_bytes();
    let (shown, rest, hit) = stream_all(&[stop], &[b"caf", &e[..1], &e[1..], b"!"]);
    assert_eq!(hit, Some(0));
    assert_eq!(shown.concat() + &rest, "caf");
}

/// A system message under which SmolLM2-135M answers factual questions in English.
const SYSTEM: &str = "You are a helpful assistant.";

struct Loaded {
    model: Model,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

fn load_smollm2() -> Loaded {
    let path = common::smollm2();
    let tokenizer = Tokenizer::from_gguf(&path).expect("tokenizer loads");
    let model = Model::load(&path, &LoadOptions::default()).expect("model loads");
    let template = ChatTemplate::for_tokenizer(&tokenizer).expect("template compiles");
    Loaded {
        model,
        tokenizer,
        template,
    }
}

#[test]
fn greedy_smollm2_knows_the_capital_of_france() {
    let mut m = load_smollm2();
    // With no system message SmolLM2's template inserts its own ("You are
    // a helpful AI assistant named SmolLM..."), after which this Q4_1 file
    // greedily answers in French; llama.cpp's logits for that prompt agree.
    let messages = [
        Message::system(SYSTEM),
        Message::user("What is the capital of France?"),
    ];
    let prompt = encode_chat(&m.tokenizer, &m.template, &messages).expect("prompt encodes");
    let options = GenerateOptions {
        max_tokens: 40,
        eos_token_ids: stop_token_ids(m.model.info(), &m.tokenizer, Some(&m.template)),
        ..Default::default()
    };
    let mut streamed = String::new();
    let generation = generate(&mut m.model, &m.tokenizer, &prompt, &options, &mut |text| {
        streamed.push_str(text);
        ControlFlow::Continue(())
    })
    .expect("generates");
    assert!(
        generation.text.contains("Paris"),
        "answer: {:?}",
        generation.text
    );
    assert_eq!(streamed, generation.text);
    // The streamed text is the detokenized tokens.
    assert_eq!(
        generation.text,
        m.tokenizer
            .decode(&generation.tokens, true)
            .expect("decodes")
    );
    assert_eq!(generation.stats.prompt_tokens, prompt.len());
    assert!(matches!(
        generation.finish,
        FinishReason::Eos | FinishReason::MaxTokens
    ));
}

#[test]
fn greedy_generation_is_deterministic_and_respects_max_tokens() {
    let mut m = load_smollm2();
    let prompt = m
        .tokenizer
        .encode("Once upon a time", false)
        .expect("encodes");
    let options = GenerateOptions {
        max_tokens: 5,
        ..Default::default()
    };
    let run = |model: &mut Model| {
        model.truncate_kv(0);
        generate(model, &m.tokenizer, &prompt, &options, &mut |_| {
            ControlFlow::Continue(())
        })
        .expect("generates")
    };
    let first = run(&mut m.model);
    let second = run(&mut m.model);
    assert_eq!(first.tokens, second.tokens);
    assert_eq!(first.tokens.len(), 5);
    assert_eq!(first.finish, FinishReason::MaxTokens);
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error() {
    let mut m = load_smollm2();
    let context = m.model.info().context_length;
    let prompt = vec![504u32; context + 1];
    let err = generate(
        &mut m.model,
        &m.tokenizer,
        &prompt,
        &GenerateOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .expect_err("too long");
    assert!(err.to_string().contains("context"), "{err}");
}
