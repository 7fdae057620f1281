//! `huddle`: the command line. Thin: parse, wire the crates together, print.

use clap::{Parser, Subcommand};

mod bench;
mod config;
mod launch;

#[cfg(feature = "lm")]
mod bench_generate;
#[cfg(feature = "lm")]
mod chat;
#[cfg(feature = "lm")]
mod generate;

#[derive(Parser)]
#[command(
    name = "huddle",
    version,
    about = "Run and fine-tune LLMs across several machines"
)]
struct Cli {
    /// More detail on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command as the ranks of a job, here or on the hosts of a hostfile.
    Launch(launch::LaunchArgs),
    /// Benchmarks that print numbers (`bench comm`: the collectives).
    Bench(bench::BenchArgs),
    /// Survey hosts over ssh (addresses, links, speed) and write a hostfile.
    Config(config::ConfigArgs),
    #[command(hide = true)]
    ProbeServe(config::ProbeServeArgs),
    #[command(hide = true)]
    ProbeClient(config::ProbeClientArgs),
    /// Generate text from a prompt (streams it, then prints speed and memory).
    #[cfg(feature = "lm")]
    Generate(generate::GenerateArgs),
    /// Chat with a model, one message a line; the KV cache carries over turns.
    #[cfg(feature = "lm")]
    Chat(chat::ChatArgs),
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result: anyhow::Result<i32> = match cli.command {
        Command::Launch(args) => launch::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Config(args) => config::run(args),
        Command::ProbeServe(args) => config::serve(args),
        Command::ProbeClient(args) => config::client(args),
        #[cfg(feature = "lm")]
        Command::Generate(args) => generate::run(args),
        #[cfg(feature = "lm")]
        Command::Chat(args) => chat::run(args, cli.verbose),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("huddle: error: {err:#}");
            std::process::exit(1);
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUDDLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
