//! The OpenAPI 3 document, generated from the `#[utoipa::path]` annotations on the handlers and the `ToSchema`
//! derives on the request and response types, so it cannot drift from the code.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::api;
use super::error::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(title = "Messenger", description = "Bulk texts through Twilio for property-management apps."),
    paths(
        api::list_customers, api::get_customer, api::put_customer, api::post_bulk, api::post_message, api::get_batch,
        api::post_cancel, api::post_pause, api::post_resume, api::get_pool, api::post_release_idle, api::get_events, api::get_opt_out,
        api::get_dead_letters, api::post_replay, api::get_conversation, api::post_revoke_sessions,
        api::post_opt_out, api::post_opt_in, api::post_import, api::get_export, api::get_reviews, api::post_decision,
        api::get_inbox, api::post_read, api::get_batches, api::get_recipients, api::post_resend
    ),
    components(schemas(
        api::CustomerRequest, api::CustomerResponse, api::BulkTextRequest, api::Recipient, api::PersonalRecipient,
        crate::ops::texts::Accepted, crate::ops::estimate::Timeline, crate::ops::estimate::QuietGroup,
        shared::batches::QuietWait, shared::carriers::CapUse, shared::carriers::Caps,
        crate::ops::estimate::CarrierForecast,
        api::MessageRequest, api::MessageAccepted, ErrorBody, ErrorDetail, crate::validate::Problem,
        shared::batches::BatchStatus, shared::batches::CancelOutcome, shared::batches::PauseOutcome,
        shared::customers::PoolReport,
        shared::customers::NumberUsage, api::ReleaseIdleRequest, shared::release::ReleaseReport,
        shared::release::Releasable, crate::ops::texts::Estimate, shared::domain::smart::SmartEncoding,
        crate::ops::events::Event, crate::ops::events::EventPage, crate::ops::consent::OptOutRecord,
        crate::ops::consent::OptOutEntry, crate::ops::consent::TextRef, crate::ops::consent::Review,
        crate::ops::consent::ConsentChange, crate::ops::consent::ImportReport, crate::ops::consent::ExportRow,
        api::OptOutRequest, api::OptInRequest, api::DecisionRequest, crate::ops::events::DeadLetter, api::ReplayRequest, api::ReplayQueued,
        crate::ops::desk::Thread, crate::ops::desk::Message, crate::ops::sessions::Revoked,
        crate::ops::desk::InboxPage, crate::ops::desk::ThreadSummary, crate::ops::desk::MarkedRead,
        crate::ops::desk::BatchPage, crate::ops::desk::BatchSummary, crate::ops::desk::RecipientPage,
        crate::ops::desk::RecipientRow, crate::ops::desk::ResendOutcome, api::ResendRequest
    )),
    modifiers(&Bearer),
    tags((name = "texts", description = "Bulk texts, single messages and their status"),
         (name = "customers", description = "Customers and their number pools"),
         (name = "events", description = "What happened: message outcomes, replies, opt-outs"),
         (name = "desk", description = "The support desk: the inbox of tenants' replies, threads, a customer's batches, failed and undelivered recipients, resends"),
         (name = "consent", description = "Tenants' consent: opt-outs from every channel, opt-ins on record, reviews of suspected revocations, the record for an audit"))
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The HTTP API's reference in Markdown, rendered from the same document (`producer openapi --markdown`, kept in
/// `docs/API-REFERENCE.md`): the routes by tag, each with its parameters, body and answers, then every schema's
/// fields. Keys are sorted, so the page is the same whatever order the document holds them in.
pub fn markdown() -> String {
    use std::fmt::Write;
    let doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    let mut out = String::new();
    let _ = write!(
        out,
        "# HTTP API reference\n\n\
         Every `producer serve` serves this API's OpenAPI 3 document at `/openapi.json`. This page is rendered\n\
         from that document by `producer openapi --markdown`, and a test keeps the two equal: change the route\n\
         annotations in `producer/src/server/api.rs`, not this page. The guide to the API is [API.md](API.md).\n\n\
         Every route needs `Authorization: Bearer <token>`. A token sees only its own customers. Every error has\n\
         one shape, [`ErrorBody`](#errorbody).\n\n"
    );
    let empty = serde_json::Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    let mut routes: Vec<(&String, &str, &serde_json::Value)> = Vec::new();
    for (path, item) in paths {
        for method in ["get", "put", "post", "patch", "delete"] {
            if let Some(op) = item.get(method) {
                routes.push((path, method, op));
            }
        }
    }
    routes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for tag in doc["tags"].as_array().into_iter().flatten() {
        let name = tag["name"].as_str().unwrap_or_default();
        let _ = write!(out, "## {name}\n\n{}\n\n", tag["description"].as_str().unwrap_or_default());
        let mine = routes
            .iter()
            .filter(|(_, _, op)| op["tags"].as_array().is_some_and(|t| t.iter().any(|x| x.as_str() == Some(name))));
        for (path, method, op) in mine {
            let _ = write!(out, "### `{} {path}`\n\n", method.to_uppercase());
            for text in [&op["summary"], &op["description"]].into_iter().filter_map(|v| v.as_str()) {
                let _ = write!(out, "{}\n\n", text.trim());
            }
            let params = op["parameters"].as_array().filter(|p| !p.is_empty());
            if let Some(params) = params {
                out.push_str("| parameter | in | required | type | description |\n|---|---|---|---|---|\n");
                for p in params {
                    let _ = writeln!(
                        out,
                        "| `{}` | {} | {} | {} | {} |",
                        p["name"].as_str().unwrap_or_default(),
                        p["in"].as_str().unwrap_or_default(),
                        if p["required"].as_bool() == Some(true) { "yes" } else { "no" },
                        type_of(&p["schema"]),
                        cell(p["description"].as_str().unwrap_or_default())
                    );
                }
                out.push('\n');
            }
            if let Some(body) = op["requestBody"]["content"].as_object().and_then(|c| c.iter().next()) {
                let _ = write!(out, "Request body ({}): {}\n\n", body.0, type_of(&body.1["schema"]));
            }
            if let Some(answers) = op["responses"].as_object() {
                out.push_str("| status | meaning | body |\n|---|---|---|\n");
                let mut answers: Vec<_> = answers.iter().collect();
                answers.sort_by(|a, b| a.0.cmp(b.0));
                for (status, r) in answers {
                    let body = r["content"]
                        .as_object()
                        .and_then(|c| c.values().next())
                        .map(|c| type_of(&c["schema"]))
                        .unwrap_or_default();
                    let said = cell(r["description"].as_str().unwrap_or_default());
                    let meaning = if said.is_empty() { usual_meaning(status).to_owned() } else { said };
                    let _ = writeln!(out, "| {status} | {meaning} | {body} |");
                }
                out.push('\n');
            }
        }
    }
    out.push_str("## Schemas\n\n");
    let schemas = doc["components"]["schemas"].as_object().unwrap_or(&empty);
    let mut names: Vec<&String> = schemas.keys().collect();
    names.sort();
    for name in names {
        let s = &schemas[name.as_str()];
        let _ = write!(out, "### {name}\n\n");
        if let Some(d) = s["description"].as_str() {
            let _ = write!(out, "{}\n\n", d.trim());
        }
        match s["properties"].as_object() {
            Some(props) => {
                let required: Vec<&str> =
                    s["required"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
                out.push_str("| field | type | required | description |\n|---|---|---|---|\n");
                let mut fields: Vec<_> = props.iter().collect();
                fields.sort_by(|a, b| a.0.cmp(b.0));
                for (field, p) in fields {
                    let _ = writeln!(
                        out,
                        "| `{field}` | {} | {} | {} |",
                        type_of(p),
                        if required.contains(&field.as_str()) { "yes" } else { "no" },
                        cell(p["description"].as_str().unwrap_or_default())
                    );
                }
                out.push('\n');
            }
            None => {
                let _ = write!(out, "{}\n\n", type_of(s));
            }
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

/// A schema as a short type: a link to a named schema, `array of …`, alternatives joined by `or`, a format.
fn type_of(s: &serde_json::Value) -> String {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("[`{name}`](#{})", name.to_lowercase());
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(alts) = s[key].as_array() {
            let parts: Vec<String> = alts.iter().map(type_of).collect();
            return parts.join(if key == "allOf" { " and " } else { " or " });
        }
    }
    if let Some(values) = s["enum"].as_array() {
        let v: Vec<String> =
            values.iter().map(|v| format!("`{}`", v.as_str().map_or(v.to_string(), str::to_owned))).collect();
        return format!("one of {}", v.join(", "));
    }
    let types: Vec<&str> = match &s["type"] {
        serde_json::Value::String(t) => vec![t.as_str()],
        serde_json::Value::Array(t) => t.iter().filter_map(|x| x.as_str()).collect(),
        _ => Vec::new(),
    };
    let nullable = types.contains(&"null");
    let base = match types.iter().find(|t| **t != "null") {
        Some(&"array") => format!("array of {}", type_of(&s["items"])),
        Some(&"object") if s["additionalProperties"].is_object() => {
            format!("map of {}", type_of(&s["additionalProperties"]))
        }
        Some(t) => match s["format"].as_str() {
            Some(f) => format!("{t} ({f})"),
            None => (*t).to_owned(),
        },
        None if nullable => "null".to_owned(),
        None => "any".to_owned(),
    };
    if nullable && base != "null" { format!("{base} or null") } else { base }
}

/// What an answer the document does not describe means on every route (`error.rs` maps errors to these).
fn usual_meaning(status: &str) -> &'static str {
    match status {
        "200" => "done",
        "202" => "accepted: the work goes on after the answer",
        "400" => "the request could not be read",
        "401" => "no token, or a token the server does not know",
        "403" => "the token may not act for this customer",
        "404" => "no such customer, batch or record",
        "409" => "the state does not allow it now",
        "413" => "the request is too large",
        "422" => "invalid input: the error names each field",
        "429" => "too many requests: retry after `Retry-After`",
        "503" => "Redis is unreachable or the server is busy: retry",
        _ => "",
    }
}

/// Text fit for one table cell.
fn cell(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/API-REFERENCE.md` is the page [`markdown`] renders: a route or schema changed without the page fails
    /// here, with the command that renders it again.
    #[test]
    fn the_api_reference_page_is_the_one_the_document_renders() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/API-REFERENCE.md");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        let rendered = markdown();
        assert!(rendered.matches("\n### `").count() >= 25, "a route per heading");
        assert!(
            on_disk == rendered,
            "docs/API-REFERENCE.md is not what the OpenAPI document renders: run \
             `cargo run -q --bin producer -- openapi --markdown > docs/API-REFERENCE.md`"
        );
    }

    #[test]
    fn types_read_as_words() {
        let t = |v: serde_json::Value| type_of(&v);
        assert_eq!(t(serde_json::json!({"$ref": "#/components/schemas/BatchStatus"})), "[`BatchStatus`](#batchstatus)");
        assert_eq!(t(serde_json::json!({"type": ["integer", "null"], "format": "int64"})), "integer (int64) or null");
        assert_eq!(t(serde_json::json!({"type": "array", "items": {"type": "string"}})), "array of string");
        assert_eq!(
            t(serde_json::json!({"type": "string", "enum": ["failed", "undelivered"]})),
            "one of `failed`, `undelivered`"
        );
        assert_eq!(cell("a |\n b"), "a \\| b");
    }
}
