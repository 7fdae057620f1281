//! `huddle chat`: a multi-turn conversation on stdin/stdout. One message a
//! line; `/reset` starts over, `/exit` or end of input quits. The KV cache
//! carries over between turns, so each turn computes only its new tokens.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use clap::Args;
use huddle_lm::ChatSession;

use crate::generate::{
    ModelArgs, SamplingArgs, chat_template, follow_if_not_leader, generate_options,
    leader_tokenizer, load, print_stats, stdout_sink,
};

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message that opens the conversation (and every reset).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(args: ChatArgs, verbose: u8) -> anyhow::Result<i32> {
    let mut loaded = load(&args.model)?;
    if let Some(done) = follow_if_not_leader(&mut loaded) {
        return done;
    }
    let template = chat_template(leader_tokenizer(&loaded.tokenizer)?, &args.model.model)?;
    let options = generate_options(&args.sampling, &loaded, Some(&template));
    let mut session = ChatSession::new(template, args.system.clone(), options)?;

    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "Chatting with {}. /reset starts over, /exit or Ctrl-D quits.",
            args.model.model.display()
        );
    }
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    let mut sink = stdout_sink();
    loop {
        if interactive {
            print!(">> ");
            std::io::stdout().flush().context("writing to stdout")?;
        }
        line.clear();
        if stdin.read_line(&mut line).context("reading stdin")? == 0 {
            break;
        }
        let message = line.trim_end_matches(['\n', '\r']);
        match message.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                session.reset(&mut loaded.model);
                if interactive {
                    eprintln!("(conversation reset)");
                }
                continue;
            }
            _ => {}
        }
        match session.send(
            &mut loaded.model,
            leader_tokenizer(&loaded.tokenizer)?,
            message,
            &mut sink,
        ) {
            Ok(generation) => {
                let _ = writeln!(std::io::stdout());
                if verbose > 0 {
                    tracing::info!(
                        reused = session.last_reused(),
                        fed = session.last_fed().len(),
                        finish = ?generation.finish,
                        "turn done"
                    );
                    print_stats(&generation);
                }
            }
            // At a terminal the user can go on (e.g. after /reset when the
            // context is full); in a pipe nobody can react, so stop.
            Err(e) if interactive => eprintln!("huddle: error: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(0)
}
