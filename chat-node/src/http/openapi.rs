//! The OpenAPI 3.1 description of the REST API, generated from the
//! handlers' `#[utoipa::path]` attributes and the `ToSchema` derives of the
//! request and response types, and served at `GET /v1/openapi.json`.
//!
//! `docs/openapi.json` is the committed copy; a test fails when the two
//! drift apart. Regenerate it with
//!
//! ```text
//! cargo run -p chat-node --example openapi > docs/openapi.json
//! ```

use std::sync::{Arc, OnceLock};

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{rest, users, ws};
use crate::node::Node;

/// Security scheme: a JWT signed by the game backend (`sub`, `exp`, `roles`).
pub const JWT: &str = "bearer_jwt";
/// Security scheme: the node's `--admin-token`.
pub const ADMIN_TOKEN: &str = "admin_token";
/// Security scheme: the JWT in the `token` query parameter (WebSocket only).
pub const TOKEN_QUERY: &str = "token_query";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Shardchat chat-node REST API",
        description = "The HTTP surface of a Shardchat node: channel history, members and the channel \
list, server-side publishing, system messages to one player, health, readiness and metrics. \
The real-time client protocol runs over the WebSocket at `/v1/ws` (described in docs/protocol.md, \
not here). Every error is `{\"error\":{\"code\":...,\"message\":...}}` with a stable `code`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "channels", description = "Reading channels (history, members, channel list)."),
        (name = "publishing", description = "Server-side messages; need the admin token or a JWT with role `admin`."),
        (name = "websocket", description = "The client protocol's WebSocket upgrade."),
        (name = "operations", description = "Health, readiness, metrics and this description."),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            JWT,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "`Authorization: Bearer <JWT>`: a token from the game backend (HS256, RS256 or \
                         ES256 by the node's key) with `sub` (user id), `exp` and optional `roles`. On \
                         reads it is optional: without it the caller has no roles; a bad token is 401, \
                         never anonymous. On server-side publishing it must carry the role `admin`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <admin token>`: the node's `--admin-token` (at least \
                         32 characters).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            TOKEN_QUERY,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The JWT as `?token=` on the WebSocket upgrade: a last resort, since query strings end \
                 up in proxies' access logs. Browsers send it as the subprotocol `bearer.<JWT>` next to \
                 `shardchat.v1` instead.",
            ))),
        );
    }
}

/// The documented routes, each registered together with its description
/// (so no route can be served undocumented or documented unserved).
pub(super) fn documented() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(rest::list_channels))
        .routes(routes!(rest::history))
        .routes(routes!(rest::members))
        .routes(routes!(rest::publish))
        .routes(routes!(users::send))
        .routes(routes!(ws::upgrade))
        .routes(routes!(rest::healthz))
        .routes(routes!(rest::readyz))
        .routes(routes!(rest::metrics))
        .routes(routes!(openapi_json))
}

/// The OpenAPI description of this node's REST API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().into_openapi()
}

/// The description as committed in `docs/openapi.json`: pretty-printed
/// JSON with a trailing newline.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        // A tree of strings, maps and numbers: serializing it cannot fail.
        let mut json = openapi().to_pretty_json().expect("the OpenAPI document serializes to JSON");
        json.push('\n');
        json
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi_description",
    tag = "operations",
    responses((status = 200, description = "This OpenAPI 3.1 description", content_type = "application/json")),
)]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use shardchat_common::protocol::ErrorCode;

    use super::*;

    #[test]
    fn the_committed_description_is_up_to_date() {
        let committed = include_str!("../../../docs/openapi.json");
        assert!(
            committed == document(),
            "docs/openapi.json is out of date with the REST handlers in chat-node/src/http/; \
             regenerate it with\n\n    cargo run -p chat-node --example openapi > docs/openapi.json\n"
        );
    }

    fn doc() -> Value {
        serde_json::from_str(document()).expect("the document is JSON")
    }

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                ops.push((path.clone(), method.clone(), op));
            }
        }
        ops
    }

    #[test]
    fn it_is_openapi_3_1_with_every_route_of_the_api() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut routes: Vec<String> =
            operations(&doc).into_iter().map(|(path, method, _)| format!("{method} {path}")).collect();
        routes.sort();
        assert_eq!(
            routes,
            [
                "get /healthz",
                "get /metrics",
                "get /readyz",
                "get /v1/channels",
                "get /v1/channels/{channel}/history",
                "get /v1/channels/{channel}/members",
                "get /v1/openapi.json",
                "get /v1/ws",
                "post /v1/channels/{channel}/messages",
                "post /v1/users/{user}/messages",
            ]
        );
    }

    #[test]
    fn every_security_requirement_names_a_declared_scheme() {
        let doc = doc();
        let schemes = doc["components"]["securitySchemes"].as_object().expect("security schemes");
        for name in [JWT, ADMIN_TOKEN, TOKEN_QUERY] {
            assert!(schemes.contains_key(name), "{name} is not declared");
        }
        for (path, method, op) in operations(&doc) {
            for requirement in op["security"].as_array().into_iter().flatten() {
                for name in requirement.as_object().expect("requirement").keys() {
                    assert!(schemes.contains_key(name), "{method} {path}: unknown scheme {name}");
                }
            }
        }
    }

    /// Each documented error names its code first (`` `code`: ... ``); the
    /// status must be the one the node sends for that code.
    #[test]
    fn documented_error_statuses_match_the_codes() {
        let doc = doc();
        let mut checked = 0;
        for (path, method, op) in operations(&doc) {
            for (status, response) in op["responses"].as_object().expect("responses") {
                let description = response["description"].as_str().expect("description");
                let Some(code) = description.strip_prefix('`').and_then(|d| d.split('`').next()) else {
                    continue;
                };
                let code = ErrorCode::ALL
                    .into_iter()
                    .find(|c| c.as_str() == code)
                    .unwrap_or_else(|| panic!("{method} {path} {status}: unknown error code {code:?}"));
                assert_eq!(
                    status,
                    super::super::status_of(code).as_str(),
                    "{method} {path}: `{}` is documented with the wrong status",
                    code.as_str()
                );
                checked += 1;
            }
        }
        assert!(checked >= 30, "only {checked} documented errors were found");
    }

    #[test]
    fn every_reference_resolves() {
        let doc = doc();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(refs.len() > 20, "too few references: {refs:?}");
        for r in refs {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("external reference {r}"));
            assert!(doc.pointer(pointer).is_some(), "dangling reference {r}");
        }
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                map.values().for_each(|v| collect_refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
