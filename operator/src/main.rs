use std::sync::Arc;

use anyhow::Context as _;
use chat_operator::{Health, LogFormat, RunArgs};
use clap::{Parser, Subcommand};

/// Shardchat operator: reconciles ChatChannel resources onto the chat-node
/// ring and publishes ring and channel config to Redis.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ChatChannel CustomResourceDefinition as YAML.
    Crd,
    /// Run the operator (the default).
    Run,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", chat_operator::crd::crd_yaml());
        return Ok(());
    }
    let args = cli.run;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let client = kube::Client::try_default().await.context("kubernetes client configuration")?;
    let health = Arc::new(Health::default());
    let http = tokio::spawn(chat_operator::http::serve(args.metrics_listen, health.clone()));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let result = chat_operator::run(client, args, health, shutdown).await;
    http.abort();
    result
}
