//! `huddle`: the command line. Thin: parse, wire the crates together, print.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "huddle", version, about = "Run and fine-tune LLMs across several machines")]
struct Cli {
    /// More detail on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result: anyhow::Result<i32> = match cli.command {};
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
        .init();
}
