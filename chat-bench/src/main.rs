//! `chat-bench`: load generator and delivery checker for Shardchat.
//! See `chat-bench --help` for the CLI and the JSON schema.

use std::process::ExitCode;

use chat_bench::args::Args;
use chat_bench::plan::Plan;
use chat_bench::{fdlimit, report, run};
use clap::Parser;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Bad arguments or a setup error (clap uses 2 for usage errors too).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    let plan = match Plan::from_args(&args) {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    if let Err(e) = fdlimit::check(plan.connections, fdlimit::soft_limit()) {
        return usage_error(&e);
    }
    if let Some(t) = &args.token
        && HeaderValue::from_str(&format!("Bearer {t}")).is_err()
    {
        return usage_error("--token contains characters not allowed in an HTTP header");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return usage_error(&format!("cannot start the runtime: {e}")),
    };
    let opts = run::Options {
        token: args.token.clone(),
        connect_concurrency: args.connect_concurrency,
        connect_rate: args.connect_rate,
        connect_timeout: args.connect_timeout,
        allow_loss: args.allow_loss,
        quiet: args.quiet,
        flooders: args.flooders,
        reconnect: args.reconnect,
        retry_publishes: args.retry_publishes,
    };
    let summary = match runtime.block_on(run::run(plan, opts)) {
        Ok(s) => s,
        Err(e) => return usage_error(&format!("{e:#}")),
    };
    // Connection tasks are all finished; don't wait for stray I/O.
    runtime.shutdown_background();
    if args.json {
        println!("{}", report::json(&summary));
    } else {
        print!("{}", report::table(&summary));
    }
    if summary.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("chat-bench: {msg}");
    ExitCode::from(EXIT_USAGE)
}
