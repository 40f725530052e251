//! The browser chat page at `/` and the SDK it runs on, `/sdk/shardchat.js`:
//! static files compiled into the binary. The SDK is the committed browser
//! build of `clients/typescript` (its tests fail when that build drifts from
//! the TypeScript sources), so the node needs no build step.

use axum::http::header;
use axum::response::{Html, IntoResponse};

static INDEX: &str = include_str!("../../static/index.html");
static SDK: &str = include_str!("../../../clients/typescript/dist/shardchat.js");

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

pub async fn sdk() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], SDK)
}
