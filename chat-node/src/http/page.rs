//! The browser chat page at `/`: one static file compiled into the binary.

use axum::response::Html;

static INDEX: &str = include_str!("../../static/index.html");

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}
