//! The `/v1` routes: JSON in and out over [`crate::ops`], behind bearer tokens. Each handler checks who may call
//! it, turns the JSON into the operation's input, and answers what the operation returns.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};
use shared::batches::{BatchStatus, CancelOutcome, PauseOutcome};
use shared::customers::{Change, Customer, PoolReport};
use shared::domain::{BatchId, CustomerId};
use shared::release::ReleaseReport;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody, too_large};
use super::metrics::Metrics;
use super::recipients::Recipients;
use crate::ops::consent::{self, ConsentChange, ExportRow, ImportReport, OptOutRecord, Review};
use crate::ops::customers::{self as customer_ops, CustomerInput};
use crate::ops::desk::{self, BatchPage, InboxPage, MarkedRead, RecipientPage, ResendOutcome, Thread};
use crate::ops::events::{self, DeadLetter, EventPage};
use crate::ops::texts::{self, Accepted, Enqueue};
use crate::ops::{Deps, batches, pools};
use crate::recipients::RawRecipient;
use crate::validate::{BulkRequest, Expiry};

/// Documented request limits: the API's, and the webhooks' body size.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Recipients in one `POST …/bulk-texts`.
    pub max_recipients: usize,
    /// Bytes of a `/v1` request body.
    pub max_body_bytes: usize,
    /// Bytes of a webhook body (Twilio's are a few kilobytes).
    pub max_webhook_bytes: usize,
    /// Bulk texts (and their dry runs) handled at once by one server: each may hold its body and its recipients in
    /// memory, so this bounds the server's memory. Others wait up to `heavy_wait`, then get 503 with `Retry-After`.
    pub heavy_requests: usize,
    pub heavy_wait: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_recipients: super::recipients::KEPT_MAX,
            max_body_bytes: 8 * 1024 * 1024,
            max_webhook_bytes: 64 * 1024,
            heavy_requests: 2,
            heavy_wait: std::time::Duration::from_secs(1),
        }
    }
}

/// A JSON field that may be absent (keep the stored value), `null` (clear it) or a value (set it).
fn change<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Change<T>, D::Error> {
    Option::<T>::deserialize(d).map(|v| v.map_or(Change::Clear, Change::Set))
}

/// `PUT /v1/customers/{id}` body. A field left out keeps its stored value (a new customer: the default); `null`
/// clears it back to the default.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerRequest {
    /// Twilio subaccount that owns this customer's numbers (`AC` + 32 hex); `null` = the main account (default).
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub account_sid: Change<String>,
    /// Area code to buy numbers in (3 digits); `null` = any US local number (default).
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub area_code: Change<String>,
    /// Most numbers this customer may own, 1 to 10,000; `null` = `MESSENGER_MAX_NUMBERS` (default).
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<u32>, nullable, minimum = 1, maximum = 10000)]
    pub max_numbers: Change<u32>,
    /// Messaging Service (`MG` + 32 hex, A2P 10DLC) every number of this customer is attached to before it sends;
    /// `null` = none (default).
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub messaging_service_sid: Change<String>,
    /// Quiet hours in the recipient's local time (`20:00-09:00`), or `off`; `null` = the fleet's (default).
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub quiet_hours: Change<String>,
    /// Where the customer's tenants live when their number does not say (IANA, `America/New_York`); quiet hours
    /// apply there too. `null` = none (default).
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub time_zone: Change<String>,
    /// Look recipients' lines up (Twilio Lookup) before texting them; `null` = off (default). Always on while a
    /// T-Mobile or AT&T cap is set.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<bool>, nullable)]
    pub lookup: Change<bool>,
    /// The brand's T-Mobile segments per day (1 to 200,000; the day ends at midnight Pacific); `null` = no cap.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<i64>, nullable)]
    pub tmobile_daily_cap: Change<i64>,
    /// The campaign's AT&T messages per minute (1 to 4,500); `null` = no cap.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<i64>, nullable)]
    pub att_per_minute: Change<i64>,
    /// The campaign's messages per second (1 to 2,000); `null` = no cap.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<i64>, nullable)]
    pub per_second: Change<i64>,
    /// What the customer may spend a month, in dollars (a number such as `6.00`, or the same as a string):
    /// texts, numbers bought and lookups at the fleet's prices, in the customer's time zone's month; `null` or
    /// `"none"` = no limit. Texts that would pass it wait (`spend limit`) until it is raised or the month ends.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<f64>, nullable)]
    pub monthly_spend_limit: Change<serde_json::Value>,
    /// Deliverability pause: delivery reports a batch needs before the rule looks (1 to 100,000); `null` = 50.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<i64>, nullable)]
    pub pause_after_reports: Change<i64>,
    /// Deliverability pause: percent of those reports with a filtering code that pauses the batch (0 to 100;
    /// 0 = never); `null` = 10.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<i64>, nullable)]
    pub pause_threshold_pct: Change<i64>,
    /// Deliverability pause: the Twilio error codes that count as carrier filtering; `null` = 30007 and 30034.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<Vec<i64>>, nullable)]
    pub pause_codes: Change<Vec<i64>>,
    /// At most this many texts to one tenant per window across batches, `"3/24h"` (urgent batches exempt): texts
    /// over it wait for the window; `null` = no cap.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub max_texts_per_tenant: Change<String>,
    /// Record events for `GET /v1/customers/{id}/events` (batches created from now on); `null` = off.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<bool>, nullable)]
    pub events: Change<bool>,
    /// The answer to a tenant's HELP or INFO (1 to 320 characters); `null` = none.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub help_text: Change<String>,
    /// Deliver events to this https URL (public addresses only), signed per Standard Webhooks; `null` = stop.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub events_url: Change<String>,
    /// `whsec_…`; without one a secret is generated and returned once, in this response.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub events_secret: Change<String>,
    /// The customer's own phrases that revoke consent in a reply, comma-separated (at most 50 of 64 characters);
    /// `null` = none.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub opt_out_words: Change<String>,
    /// `hold` (default) or `send`: what a suspected revocation does to the tenant's texts until a person decides.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub review_hold: Change<String>,
    /// Text only tenants with an opt-in on record (`POST …/opt-ins`, or their own START); `null` = off.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<bool>, nullable)]
    pub require_consent: Change<bool>,
    /// The one text confirming a revocation in words (1 to 320 characters; `{name}` = `sender_name`); `null` = the
    /// default ("You won't get more texts from {name}. Reply START to resubscribe.").
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub confirmation_text: Change<String>,
    /// Who the tenant is told has stopped texting them (1 to 60 characters); `null` = the customer's id.
    #[serde(default, deserialize_with = "change")]
    #[schema(value_type = Option<String>, nullable)]
    pub sender_name: Change<String>,
}

/// A customer's settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerResponse {
    pub id: String,
    pub account_sid: Option<String>,
    pub area_code: Option<String>,
    pub max_numbers: u32,
    pub messaging_service_sid: Option<String>,
    /// The customer's quiet hours (`20:00-09:00` or `off`); `null`: the fleet's.
    pub quiet_hours: Option<String>,
    pub time_zone: Option<String>,
    /// Recipients' lines are looked up (asked for, or needed by a carrier cap).
    pub lookup: bool,
    pub tmobile_daily_cap: Option<u32>,
    pub att_per_minute: Option<u32>,
    pub per_second: Option<u32>,
    /// The monthly spend limit in dollars; `null` = none.
    pub monthly_spend_limit: Option<f64>,
    /// The deliverability pause's settings (`null`: the defaults, 50 reports, 10 %, 30007 and 30034).
    pub pause_after_reports: Option<u32>,
    pub pause_threshold_pct: Option<u32>,
    pub pause_codes: Option<Vec<u32>>,
    /// `3/24h`, or `null`: no frequency cap per tenant.
    pub max_texts_per_tenant: Option<String>,
    /// Events are recorded (`GET …/events`).
    pub events: bool,
    pub help_text: Option<String>,
    pub events_url: Option<String>,
    /// Why delivery stopped (the endpoint answered 410 Gone); saving the URL again resumes it.
    pub events_disabled: Option<String>,
    pub opt_out_words: Vec<String>,
    /// `hold` or `send`.
    pub review_hold: String,
    pub require_consent: bool,
    pub confirmation_text: Option<String>,
    pub sender_name: Option<String>,
    /// `PUT` only, once: the signing secret Messenger generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_secret: Option<String>,
    /// `PUT` only: true if the request created the customer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// `PUT` only: what could not be checked with Twilio (the change was saved anyway).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl From<Customer> for CustomerResponse {
    fn from(c: Customer) -> Self {
        let lookup = c.looks_up();
        Self {
            id: c.id.to_string(),
            account_sid: c.account_sid.map(|a| a.to_string()),
            area_code: c.area_code.map(|a| a.to_string()),
            max_numbers: c.max_numbers,
            messaging_service_sid: c.messaging_service.map(|m| m.to_string()),
            quiet_hours: c.quiet_hours.map(|q| q.to_string()),
            time_zone: c.time_zone.map(|z| z.to_string()),
            lookup,
            tmobile_daily_cap: c.caps.tmobile_daily,
            att_per_minute: c.caps.att_per_minute,
            per_second: c.caps.per_second,
            monthly_spend_limit: c.monthly_spend_limit.map(|u| u.dollars()),
            pause_after_reports: c.pause.pause_after_reports,
            pause_threshold_pct: c.pause.pause_threshold_pct,
            pause_codes: c.pause.pause_codes,
            max_texts_per_tenant: c.max_texts_per_tenant.map(|f| f.to_string()),
            events: c.events,
            help_text: c.help_text,
            events_url: c.events_url,
            events_disabled: c.events_disabled,
            opt_out_words: c.consent.opt_out_words,
            review_hold: c.consent.review_hold.as_str().to_owned(),
            require_consent: c.consent.require_consent,
            confirmation_text: c.consent.confirmation_text,
            sender_name: c.consent.sender_name,
            events_secret: None,
            created: None,
            warnings: Vec::new(),
        }
    }
}

/// A recipient: an E.164 number, or a number with its merge-field variables. (The OpenAPI document's shape; requests
/// are read by [`super::recipients::Recipients`], within bounds.)
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Recipient {
    Number(String),
    Personal(PersonalRecipient),
}

/// A recipient with variables: `{"to": "+14155550123", "vars": {"first_name": "Ana", "unit": "4B"}}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonalRecipient {
    pub to: String,
    /// Values for the body's merge fields (strings or numbers; at most 50, each single-line and at most 1,600
    /// characters); `tz` names the recipient's time zone (IANA).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vars: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `POST /v1/customers/{id}/bulk-texts` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkTextRequest {
    /// The text: a template with merge fields (`Hi {{first_name|there}}`); each rendered text 1 to 1,600
    /// characters.
    pub body: String,
    /// At most 100,000 numbers, each an E.164 string or `{"to", "vars"}`; duplicates are removed and counted.
    #[schema(value_type = Vec<Recipient>)]
    pub recipients: Recipients,
    /// Not before this: RFC 3339 with an offset, from now to 35 days ahead.
    pub send_at: Option<String>,
    /// Texts not sent by then end `expired` (RFC 3339 with an offset); Twilio is told the time left.
    pub expires_at: Option<String>,
    /// Ignore quiet hours (a burst pipe at 2 a.m.).
    #[serde(default)]
    pub urgent: bool,
    /// Makes the request safe to resubmit: the same key returns (and completes) the same batch.
    pub idempotency_key: Option<String>,
    /// Validate and estimate only (recipients, encoding, segments, numbers to buy, cost); nothing is written.
    #[serde(default)]
    pub dry_run: bool,
    /// Replace Unicode look-alikes with GSM-7 characters (Twilio's Smart Encoding list) before sending.
    #[serde(default)]
    pub smart_encoding: bool,
    /// A name people find the batch by ("Water shut-off, building 4"): one line, at most 200 characters.
    #[schema(max_length = 200)]
    pub label: Option<String>,
}

/// `POST /v1/customers/{id}/messages` body: one message, queued ahead of the customer's bulk texts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// E.164 number.
    pub to: String,
    /// The text, 1 to 1,600 characters.
    pub body: String,
    /// Accepted for compatibility with the old Messenger API. Single messages already go to the front of the
    /// customer's queue; no flag can make a number exceed its quota (that is what keeps numbers off carriers'
    /// spam lists), so this changes nothing else.
    pub ignore_sending_limit: Option<bool>,
    /// As for bulk texts.
    pub idempotency_key: Option<String>,
    /// As for bulk texts.
    pub send_at: Option<String>,
    /// As for bulk texts.
    pub expires_at: Option<String>,
    /// As for bulk texts.
    #[serde(default)]
    pub urgent: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageAccepted {
    pub batch_id: String,
}

/// `POST /v1/customers/{id}/pool/release-idle` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseIdleRequest {
    /// Days without a send (fractions allowed); default 30.
    #[schema(minimum = 0, maximum = 3650)]
    pub idle_days: Option<f64>,
    /// Only report what would be released.
    #[serde(default)]
    pub dry_run: bool,
}

/// 202 Accepted, with the new batch's address in `Location`.
fn accepted_at(batch_id: &str, body: impl IntoResponse) -> Response {
    let location = format!("/v1/batches/{batch_id}");
    (StatusCode::ACCEPTED, [(axum::http::header::LOCATION, location)], body).into_response()
}

fn customer_id(raw: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).field("id"))
}

fn batch_id(raw: &str) -> Result<BatchId, ApiError> {
    BatchId::parse(raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).field("id"))
}

/// Every customer (admin tokens only).
#[utoipa::path(get, path = "/v1/customers", tag = "customers",
    responses(
        (status = 200, body = Vec<CustomerResponse>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_customers(State(ops): State<Deps>, caller: Caller) -> Result<Json<Vec<CustomerResponse>>, ApiError> {
    caller.require_admin()?;
    let all = customer_ops::list(&ops).await?;
    Ok(Json(all.into_iter().map(CustomerResponse::from).collect()))
}

/// One customer's settings.
#[utoipa::path(get, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "Customer id: 1-32 of [A-Za-z0-9_-]")),
    responses(
        (status = 200, body = CustomerResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_customer(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CustomerResponse>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    Ok(Json(customer_ops::get(&ops, &id).await?.into()))
}

/// Creates a customer, or changes the settings the body gives (admin tokens only).
#[utoipa::path(put, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "Customer id: 1-32 of [A-Za-z0-9_-]")),
    request_body = CustomerRequest,
    responses(
        (status = 201, description = "Created", body = CustomerResponse),
        (status = 200, description = "Updated", body = CustomerResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_customer(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CustomerRequest>,
) -> Result<(StatusCode, Json<CustomerResponse>), ApiError> {
    caller.require_admin()?;
    let id = customer_id(&id)?;
    let input = CustomerInput {
        account_sid: req.account_sid,
        area_code: req.area_code,
        max_numbers: req.max_numbers,
        messaging_service_sid: req.messaging_service_sid,
        quiet_hours: req.quiet_hours,
        time_zone: req.time_zone,
        lookup: req.lookup,
        tmobile_daily_cap: req.tmobile_daily_cap.map(|n| n.to_string()),
        att_per_minute: req.att_per_minute.map(|n| n.to_string()),
        per_second: req.per_second.map(|n| n.to_string()),
        monthly_spend_limit: match req.monthly_spend_limit {
            Change::Set(serde_json::Value::String(s)) if s.trim().eq_ignore_ascii_case("none") => Change::Clear,
            Change::Set(serde_json::Value::String(s)) => Change::Set(s),
            other => other.map(|v| v.to_string()),
        },
        pause_after_reports: req.pause_after_reports.map(|n| n.to_string()),
        pause_threshold_pct: req.pause_threshold_pct.map(|n| n.to_string()),
        pause_codes: req.pause_codes.map(|c| c.iter().map(i64::to_string).collect::<Vec<_>>().join(",")),
        max_texts_per_tenant: req.max_texts_per_tenant,
        events: req.events,
        help_text: req.help_text,
        events_url: req.events_url,
        events_secret: req.events_secret,
        opt_out_words: req.opt_out_words,
        review_hold: req.review_hold,
        require_consent: req.require_consent,
        confirmation_text: req.confirmation_text,
        sender_name: req.sender_name,
    };
    let saved = customer_ops::save(&ops, &id, input).await?;
    for w in &saved.warnings {
        tracing::warn!(customer = %id, warning = %w, "customer saved with a warning");
    }
    let mut body = CustomerResponse::from(saved.customer);
    body.created = Some(saved.created);
    body.events_secret = saved.generated_secret.map(|s| s.to_string());
    body.warnings = saved.warnings;
    Ok((if saved.created { StatusCode::CREATED } else { StatusCode::OK }, Json(body)))
}

/// Accepts a bulk text: validated whole (any invalid part rejects it, naming the part), then one job per distinct
/// recipient.
#[utoipa::path(post, path = "/v1/customers/{id}/bulk-texts", tag = "texts",
    params(("id" = String, Path, description = "Customer id")),
    request_body = BulkTextRequest,
    responses(
        (status = 202, description = "Accepted: the batch will be sent", body = Accepted),
        (status = 200, description = "Dry run: what the batch would do and cost, and when; nothing written", body = texts::Estimate),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "Unknown customer", body = ErrorBody),
        (status = 409, description = "Idempotency key reused for a different request", body = ErrorBody),
        (status = 413, description = "Body or recipient list too large", body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, description = "Invalid body, recipient or key", body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_bulk(
    State(ops): State<Deps>,
    State(limits): State<Limits>,
    State(metrics): State<std::sync::Arc<Metrics>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<BulkTextRequest>,
) -> Result<Response, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    let Recipients { kept: recipients, total } = req.recipients;
    let most = limits.max_recipients.min(super::recipients::KEPT_MAX);
    if total > most {
        let mut e = too_large();
        e.detail.message = format!("{total} recipients; one request may carry at most {most}");
        return Err(e.field("recipients"));
    }
    let bulk = BulkRequest {
        customer: id.to_string(),
        body: req.body,
        recipients,
        columns: Vec::new(),
        idempotency_key: req.idempotency_key,
        smart_encoding: req.smart_encoding,
        send_at: req.send_at,
        expiry: req.expires_at.map(Expiry::At),
        urgent: req.urgent,
        label: req.label,
    };
    let prepared = texts::prepare_blocking(bulk).await?;
    if req.dry_run {
        return Ok((StatusCode::OK, Json(texts::estimate(&ops, &prepared).await?)).into_response());
    }
    let accepted = texts::enqueue(&ops, prepared, Enqueue::BULK, None).await?;
    metrics.recipients_accepted.inc_by(accepted.accepted as u64);
    Ok(accepted_at(&accepted.batch_id.clone(), Json(accepted)))
}

/// Accepts one message, queued ahead of the customer's bulk texts.
#[utoipa::path(post, path = "/v1/customers/{id}/messages", tag = "texts",
    params(("id" = String, Path, description = "Customer id")),
    request_body = MessageRequest,
    responses(
        (status = 202, description = "Accepted", body = MessageAccepted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_message(
    State(ops): State<Deps>,
    State(metrics): State<std::sync::Arc<Metrics>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<MessageRequest>,
) -> Result<Response, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    let bulk = BulkRequest {
        customer: id.to_string(),
        body: req.body,
        recipients: vec![RawRecipient { origin: "to".into(), value: req.to, vars: Vec::new() }],
        columns: Vec::new(),
        idempotency_key: req.idempotency_key,
        smart_encoding: false,
        send_at: req.send_at,
        expiry: req.expires_at.map(Expiry::At),
        urgent: req.urgent,
        label: None,
    };
    let accepted = texts::enqueue(&ops, texts::prepare(&bulk)?, Enqueue::SINGLE, None).await?;
    metrics.recipients_accepted.inc();
    Ok(accepted_at(&accepted.batch_id.clone(), Json(MessageAccepted { batch_id: accepted.batch_id })))
}

/// A batch's counts per state (the same as `producer status --json`).
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "texts",
    params(("id" = String, Path, description = "Batch id, `<customer>.<id>`")),
    responses(
        (status = 200, body = BatchStatus),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_batch(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BatchStatus>, ApiError> {
    let id = batch_id(&id)?;
    caller.require_customer(id.customer())?;
    Ok(Json(batches::status(&ops, &id).await?))
}

/// Cancels a batch: queued and parked texts end as cancelled, sends already under way finish.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "texts",
    params(("id" = String, Path, description = "Batch id, `<customer>.<id>`")),
    responses(
        (status = 200, description = "`cancelled` (with how many parked texts ended now) or `already_complete`",
            body = CancelOutcome),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_cancel(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CancelOutcome>, ApiError> {
    let id = batch_id(&id)?;
    caller.require_customer(id.customer())?;
    let outcome = batches::cancel(&ops, &id).await?;
    tracing::info!(batch = %id, "batch cancelled through the API");
    Ok(Json(outcome))
}

/// Pauses a batch: its texts wait (none is sent, no number is bought for it, none moves to another number) until it is
/// resumed; sends already under way finish. A batch also pauses itself when carriers filter its texts (see
/// `pause_reason` in its status).
#[utoipa::path(post, path = "/v1/batches/{id}/pause", tag = "texts",
    params(("id" = String, Path, description = "Batch id, `<customer>.<id>`")),
    responses(
        (status = 200, description = "`paused`, `already` (with its state) or `already_complete`", body = PauseOutcome),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_pause(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PauseOutcome>, ApiError> {
    let id = batch_id(&id)?;
    caller.require_customer(id.customer())?;
    let outcome = batches::pause(&ops, &id, false, "api").await?;
    tracing::info!(batch = %id, "batch paused through the API");
    Ok(Json(outcome))
}

/// Resumes a paused batch: the texts the pause held go at once, and the automatic pause counts delivery reports
/// afresh from here.
#[utoipa::path(post, path = "/v1/batches/{id}/resume", tag = "texts",
    params(("id" = String, Path, description = "Batch id, `<customer>.<id>`")),
    responses(
        (status = 200, description = "`resumed` (with how many held texts go now), `already` or `already_complete`",
            body = PauseOutcome),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_resume(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PauseOutcome>, ApiError> {
    let id = batch_id(&id)?;
    caller.require_customer(id.customer())?;
    let outcome = batches::pause(&ops, &id, true, "api").await?;
    tracing::info!(batch = %id, "batch resumed through the API");
    Ok(Json(outcome))
}

/// A customer's numbers with their use of the current window.
#[utoipa::path(get, path = "/v1/customers/{id}/pool", tag = "customers",
    params(("id" = String, Path, description = "Customer id")),
    responses(
        (status = 200, body = PoolReport),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_pool(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PoolReport>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    Ok(Json(pools::pool(&ops, &id).await?))
}

/// The customer's events after a cursor, oldest first: every event once, in order, without gaps (ids are stable;
/// pass `next` as `after` to continue, across restarts of any server).
#[utoipa::path(get, path = "/v1/customers/{id}/events", tag = "events",
    params(("id" = String, Path, description = "Customer id"),
           ("after" = Option<String>, Query, description = "An event id (`next` of the previous page); none: the oldest kept"),
           ("limit" = Option<u32>, Query, description = "At most this many events (1 to 1,000; 100)")),
    responses(
        (status = 200, body = EventPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_events(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<EventPage>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    let q: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|_| ApiError::bad_request("invalid_query", "the query string could not be read"))?;
    let param = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    Ok(Json(events::list(&ops, &id, param("after"), param("limit")).await?))
}

/// The customer's events given up after every delivery attempt, oldest first (at most 1,000).
#[utoipa::path(get, path = "/v1/customers/{id}/events/dead", tag = "events",
    params(("id" = String, Path, description = "Customer id")),
    responses(
        (status = 200, body = Vec<DeadLetter>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_dead_letters(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    Ok(Json(events::dead_letters(&ops, &id).await?))
}

/// `POST …/events/dead/replay` body: the dead letters to send once more (none: all, oldest first, up to 1,000).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayQueued {
    /// Dead letters queued for one more delivery.
    pub queued: u64,
}

/// Sends dead-lettered events once more (each out of its original order); one that fails again is a dead letter
/// again.
#[utoipa::path(post, path = "/v1/customers/{id}/events/dead/replay", tag = "events",
    params(("id" = String, Path, description = "Customer id")),
    request_body = ReplayRequest,
    responses(
        (status = 202, body = ReplayQueued),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_replay(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ReplayRequest>,
) -> Result<(StatusCode, Json<ReplayQueued>), ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    let queued = events::replay_dead(&ops, &id, req.ids.as_deref()).await?;
    tracing::info!(customer = %id, queued, "dead-lettered events queued for replay");
    Ok((StatusCode::ACCEPTED, Json(ReplayQueued { queued })))
}

/// A tenant's consent record: whether they are opted out, have an opt-in on record or a reply under review, and
/// every change (how it came, the words, the number, when; the texts sent just before and after it) — the evidence
/// in a dispute.
#[utoipa::path(get, path = "/v1/customers/{id}/opt-outs/{phone}", tag = "consent",
    params(("id" = String, Path, description = "Customer id"), ("phone" = String, Path, description = "E.164")),
    responses(
        (status = 200, body = OptOutRecord),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_opt_out(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath((id, phone)): ApiPath<(String, String)>,
) -> Result<Json<OptOutRecord>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    Ok(Json(consent::record(&ops, &id, &phone).await?))
}

/// `POST /v1/customers/{id}/opt-outs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptOutRequest {
    /// The tenant, E.164.
    pub phone: String,
    /// How they asked (1 to 200 characters): "phone call to the office", "email to the manager".
    pub source: String,
    /// Anything staff want kept with it (up to 1,000 characters).
    pub note: Option<String>,
    /// When they asked (RFC 3339 with an offset, not in the future); now when absent.
    pub at: Option<String>,
}

/// Records an opt-out that came through another channel (a call to the office, an email): the tenant is texted
/// nothing more from any of the customer's numbers, including batches already queued. Answered once it is as
/// durable as a send.
#[utoipa::path(post, path = "/v1/customers/{id}/opt-outs", tag = "consent",
    params(("id" = String, Path, description = "Customer id")),
    request_body = OptOutRequest,
    responses(
        (status = 200, body = ConsentChange),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_opt_out(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<OptOutRequest>,
) -> Result<Json<ConsentChange>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    let input = consent::OptOutInput { phone: req.phone, source: req.source, note: req.note, at: req.at };
    Ok(Json(consent::opt_out(&ops, &id, input, consent::Via::Api).await?))
}

/// `POST /v1/customers/{id}/opt-ins` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptInRequest {
    /// The tenant, E.164.
    pub phone: String,
    /// Where consent was given (1 to 200 characters): "lease signed", "portal checkbox".
    pub source: String,
    /// What shows it (a document id, a URL; up to 1,000 characters). Required for a tenant who opted out.
    pub evidence: Option<String>,
    /// When consent was given (RFC 3339 with an offset, not in the future).
    pub at: String,
}

/// Puts a tenant's opt-in on record (what a customer with `require_consent` needs before texting them). A tenant who
/// opted out is opted back in only with evidence (409 otherwise): their own START is the other way back.
#[utoipa::path(post, path = "/v1/customers/{id}/opt-ins", tag = "consent",
    params(("id" = String, Path, description = "Customer id")),
    request_body = OptInRequest,
    responses(
        (status = 200, body = ConsentChange),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_opt_in(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<OptInRequest>,
) -> Result<Json<ConsentChange>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    let input = consent::OptInInput { phone: req.phone, source: req.source, evidence: req.evidence, at: req.at };
    Ok(Json(consent::opt_in(&ops, &id, input, consent::Via::Api).await?))
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Where the list came from (kept with every opt-out): "suppression list of the old system, 2026-11".
    pub source: String,
}

/// Loads a suppression list (the body, `text/csv`: one number per line, or CSV with a `phone` column and optional
/// `note` and `at` columns; at most 8 MiB). Every row is checked first and every bad one named (422); nothing is
/// applied unless all are good. Idempotent: a re-import changes nothing.
#[utoipa::path(post, path = "/v1/customers/{id}/opt-outs/import", tag = "consent",
    params(("id" = String, Path, description = "Customer id"), ImportQuery),
    request_body(content = String, content_type = "text/csv"),
    responses(
        (status = 200, body = ImportReport),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_import(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    body: axum::body::Bytes,
) -> Result<Json<ImportReport>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    let body = std::str::from_utf8(&body).map_err(|e| {
        ApiError::unprocessable(format!("the list is not UTF-8 text (byte {})", e.valid_up_to() + 1)).field("list")
    })?;
    let report = consent::import(&ops, &id, body, &q.source).await?;
    tracing::info!(customer = %id, rows = report.rows, opted_out_now = report.opted_out_now, "suppression list imported");
    Ok(Json(report))
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// Every consent record of the customer, for an audit: one row per change of each tenant, with the tenant's state.
#[utoipa::path(get, path = "/v1/customers/{id}/opt-outs", tag = "consent",
    params(("id" = String, Path, description = "Customer id"), ExportQuery),
    responses(
        (status = 200, body = Vec<ExportRow>, description = "JSON, or CSV with `format=csv`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_export(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::unprocessable(format!("format: must be json or csv, not {other:?}")).field("format"));
        }
    };
    let rows = consent::export(&ops, &id).await?;
    if csv {
        let headers = [
            (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (axum::http::header::CONTENT_DISPOSITION, format!("attachment; filename=\"consent-{id}.csv\"")),
        ];
        return Ok((headers, consent::export_csv(&rows)).into_response());
    }
    Ok(Json(rows).into_response())
}

/// Replies that may revoke consent, waiting for a person (the nearest deadline first: 10 business days from
/// receipt). While one waits, the tenant's texts are held (the customer's `review_hold`).
#[utoipa::path(get, path = "/v1/customers/{id}/reviews", tag = "consent",
    params(("id" = String, Path, description = "Customer id")),
    responses(
        (status = 200, body = Vec<Review>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_reviews(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<Review>>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    Ok(Json(consent::reviews(&ops, &id).await?))
}

/// `POST /v1/customers/{id}/reviews/{phone}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// `confirm` (it was a revocation: opted out, as of when they wrote) or `dismiss` (it was not: held texts go).
    pub decision: String,
    /// Why (kept; required to dismiss; up to 1,000 characters).
    #[serde(default)]
    pub note: String,
}

/// Decides a suspected revocation.
#[utoipa::path(post, path = "/v1/customers/{id}/reviews/{phone}", tag = "consent",
    params(("id" = String, Path, description = "Customer id"), ("phone" = String, Path, description = "E.164")),
    request_body = DecisionRequest,
    responses(
        (status = 200, body = ConsentChange),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_decision(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath((id, phone)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<DecisionRequest>,
) -> Result<Json<ConsentChange>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    Ok(Json(consent::decide(&ops, &id, &phone, &req.decision, &req.note, &caller.name).await?))
}

/// A tenant's thread: the texts sent to them (each with its delivery status, and why when it failed), the texts
/// that could not be sent and why, and their replies; oldest first (the last 50, kept 30 days after the last
/// message). An answer to the tenant (`POST …/messages`) goes out from the number they last wrote to or were texted
/// from.
#[utoipa::path(get, path = "/v1/customers/{id}/conversations/{phone}", tag = "desk",
    params(("id" = String, Path, description = "Customer id"), ("phone" = String, Path, description = "E.164")),
    responses(
        (status = 200, body = Thread),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_conversation(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath((id, phone)): ApiPath<(String, String)>,
) -> Result<Json<Thread>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    Ok(Json(desk::thread(&ops, &id, &phone).await?))
}

/// `GET /v1/customers/{id}/conversations` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InboxParams {
    /// Only threads with replies not read yet.
    #[serde(default)]
    pub unread: bool,
    /// Only tenants who replied to this batch.
    pub batch: Option<String>,
    /// `next` of the previous page.
    pub after: Option<String>,
    /// Threads per page, 1 to 200 (50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
}

/// The support desk's inbox: tenants' threads, newest reply first, with the last message, unread replies and the
/// tenant's merge fields from the batch they answered; texts from numbers Messenger never texted included.
#[utoipa::path(get, path = "/v1/customers/{id}/conversations", tag = "desk",
    params(("id" = String, Path, description = "Customer id"), InboxParams),
    responses(
        (status = 200, body = InboxPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_inbox(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<InboxParams>,
) -> Result<Json<InboxPage>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    let q = desk::InboxQuery { unread: q.unread, batch: q.batch, after: q.after, limit: q.limit };
    Ok(Json(desk::inbox(&ops, &id, &q).await?))
}

/// Marks a tenant's replies read.
#[utoipa::path(post, path = "/v1/customers/{id}/conversations/{phone}/read", tag = "desk",
    params(("id" = String, Path, description = "Customer id"), ("phone" = String, Path, description = "E.164")),
    responses(
        (status = 200, body = MarkedRead),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_read(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath((id, phone)): ApiPath<(String, String)>,
) -> Result<Json<MarkedRead>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    Ok(Json(desk::mark_read(&ops, &id, &phone).await?))
}

/// `GET /v1/customers/{id}/batches` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BatchListParams {
    /// `bulk`, `answer` (single messages) or `resend`.
    pub kind: Option<String>,
    /// `next` of the previous page.
    pub after: Option<String>,
    /// Batches per page, 1 to 200 (50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
}

/// A customer's batches, newest first, with label, text preview, counts and state.
#[utoipa::path(get, path = "/v1/customers/{id}/batches", tag = "desk",
    params(("id" = String, Path, description = "Customer id"), BatchListParams),
    responses(
        (status = 200, body = BatchPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_batches(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<BatchListParams>,
) -> Result<Json<BatchPage>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    Ok(Json(desk::batches(&ops, &id, q.kind.as_deref(), q.after.as_deref(), q.limit).await?))
}

/// `GET /v1/batches/{id}/recipients` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecipientParams {
    /// Comma-separated: `failed` (refused before or by Twilio), `undelivered` (the carrier did not deliver it);
    /// both when absent.
    pub state: Option<String>,
    /// `next` of the previous page (a phone number).
    pub after: Option<String>,
    /// Recipients per page, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// A batch's recipients by state, by phone number: reason, Twilio code and its meaning, and merge fields.
#[utoipa::path(get, path = "/v1/batches/{id}/recipients", tag = "desk",
    params(("id" = String, Path, description = "Batch id, `<customer>.<id>`"), RecipientParams),
    responses(
        (status = 200, body = RecipientPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_recipients(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RecipientParams>,
) -> Result<Json<RecipientPage>, ApiError> {
    let id = batch_id(&id)?;
    caller.require_customer(id.customer())?;
    let states = desk::parse_states("state", &q.state.into_iter().collect::<Vec<_>>())?;
    Ok(Json(desk::recipients(&ops, &id, &states, q.after.as_deref(), q.limit).await?))
}

/// `POST /v1/batches/{id}/resend` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendRequest {
    /// Whom to text again: `failed`, `undelivered`, or both.
    pub which: Vec<String>,
    /// A new text over the batch's merge fields; the batch's own text when absent.
    pub body: Option<String>,
    /// The new batch's label ("Resend of <the first batch's label>" when absent); at most 200 characters.
    #[schema(max_length = 200)]
    pub label: Option<String>,
    /// As for bulk texts; by default one resend per batch and states.
    pub idempotency_key: Option<String>,
    /// Count whom it would text and skip; nothing written.
    #[serde(default)]
    pub dry_run: bool,
}

/// Texts a finished batch's failed and/or undelivered recipients again, as a new batch linked to it (`resend_of`),
/// with the same text and values unless a body is given. Recipients that cannot succeed (opted out, landline,
/// invalid number, no consent) are skipped and counted by reason. Each state of a batch is resent once.
#[utoipa::path(post, path = "/v1/batches/{id}/resend", tag = "desk",
    params(("id" = String, Path, description = "Batch id, `<customer>.<id>`")),
    request_body = ResendRequest,
    responses(
        (status = 202, description = "Accepted: the new batch will be sent (`Location` names it)", body = ResendOutcome),
        (status = 200, description = "Dry run: whom it would text and skip", body = ResendOutcome),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The batch is still sending, or these recipients were already resent", body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_resend(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ResendRequest>,
) -> Result<Response, ApiError> {
    let id = batch_id(&id)?;
    caller.require_customer(id.customer())?;
    let r = desk::Resend {
        which: req.which,
        body: req.body,
        label: req.label,
        idempotency_key: req.idempotency_key,
        dry_run: req.dry_run,
    };
    let out = desk::resend(&ops, &id, &r).await?;
    Ok(match out.batch_id.clone() {
        Some(b) => accepted_at(&b, Json(out)),
        None => (StatusCode::OK, Json(out)).into_response(),
    })
}

/// Releases the customer's idle numbers (admin tokens only), keeping what its backlog and its numbers' sticky
/// recipients need; or, with `dry_run`, reports which it would release and changes nothing.
#[utoipa::path(post, path = "/v1/customers/{id}/pool/release-idle", tag = "customers",
    params(("id" = String, Path, description = "Customer id")),
    request_body = ReleaseIdleRequest,
    responses(
        (status = 200, body = ReleaseReport),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_release_idle(
    State(ops): State<Deps>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ReleaseIdleRequest>,
) -> Result<Json<ReleaseReport>, ApiError> {
    caller.require_admin()?;
    let id = customer_id(&id)?;
    Ok(Json(pools::release_idle(&ops, &id, req.idle_days, req.dry_run).await?))
}

/// Signs every dashboard session out, on every server (admin tokens only): after a token leaked, or a person left.
/// Sessions signed in afterwards are not affected.
#[utoipa::path(post, path = "/v1/sessions/revoke-all", tag = "customers",
    responses(
        (status = 200, body = crate::ops::sessions::Revoked),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_revoke_sessions(
    State(ops): State<Deps>,
    caller: Caller,
) -> Result<Json<crate::ops::sessions::Revoked>, ApiError> {
    caller.require_admin()?;
    Ok(Json(crate::ops::sessions::revoke_all(&ops).await?))
}
