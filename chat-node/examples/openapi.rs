//! Prints the OpenAPI description of the REST API, as committed in
//! `docs/openapi.json`:
//!
//! ```text
//! cargo run -p chat-node --example openapi > docs/openapi.json
//! ```

fn main() {
    print!("{}", chat_node::http::openapi::document());
}
