use clap::Parser;
use tracing_subscriber::EnvFilter;

use chat_node::config::{Config, LogFormat};
use chat_node::{Node, server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing(config.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(e) => {
            // A configuration mistake, not a crash: one clear line, no backtrace.
            tracing::error!("cannot start: {e}");
            eprintln!("chat-node: cannot start: {e}");
            std::process::exit(2);
        }
    };
    let addr = listener.local_addr()?;
    tracing::info!(node_id = %node.node_id, %addr, mode = node.mode(), "chat-node listening; open http://{addr}/");
    if node.config.admin_token.is_none() && node.auth.is_dev_mode() {
        tracing::info!(
            "no --admin-token: server-side publishing (POST /v1/channels/{{channel}}/messages) is disabled"
        );
    }
    if node.auth.is_dev_mode() {
        tracing::warn!(
            "DEV MODE (--dev-mode): no JWT key is configured, so clients identify with ?user=<id> \
             and are TRUSTED. Anyone can impersonate anyone. Do not expose this node publicly."
        );
    } else {
        tracing::info!("clients must present a JWT (Authorization: Bearer or ?token=)");
    }
    server::serve(node, listener, server::termination_signal()).await;
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
