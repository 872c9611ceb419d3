//! The `/v1` routes: the same validation and enqueue path as the CLI, behind bearer tokens.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use shared::batches::{self, BatchStatus, SubmitError};
use shared::customers::{self, Customer, PoolReport};
use shared::domain::{AccountSid, BatchId, CustomerId, ServiceSid};
use shared::twilio::accounts::{TokenError, check_subaccount};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ErrorBody, too_large};
use crate::enqueue::{self, BulkError};
use crate::recipients::RawRecipient;
use crate::validate::BulkRequest;

/// `PUT /v1/customers/{id}` body. Omitted fields keep their current value (or the default for a new customer).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerRequest {
    /// Twilio subaccount that owns this customer's numbers (`AC` + 32 hex); default: the main account.
    pub account_sid: Option<String>,
    /// Area code to buy numbers in (3 digits); default: any US local number.
    pub area_code: Option<String>,
    /// Most numbers this customer may own; default: `MESSENGER_MAX_NUMBERS`.
    #[schema(minimum = 1)]
    pub max_numbers: Option<u32>,
    /// Messaging Service (`MG` + 32 hex, A2P 10DLC) every number of this customer is attached to before it sends.
    pub messaging_service_sid: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerResponse {
    pub id: String,
    pub account_sid: Option<String>,
    pub area_code: Option<String>,
    pub max_numbers: u32,
    pub messaging_service_sid: Option<String>,
    /// True if this request created the customer.
    pub created: bool,
}

/// `POST /v1/customers/{id}/bulk-texts` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkTextRequest {
    /// The text, 1 to 1,600 characters.
    pub body: String,
    /// E.164 numbers, at most 100,000; duplicates are removed and counted.
    pub recipients: Vec<String>,
    /// Makes the request safe to resubmit: the same key returns (and completes) the same batch.
    pub idempotency_key: Option<String>,
    /// Validate and estimate only (recipients, encoding, segments, numbers to buy, cost); nothing is written.
    #[serde(default)]
    pub dry_run: bool,
    /// Replace Unicode look-alikes with GSM-7 characters (Twilio's Smart Encoding list) before sending.
    #[serde(default)]
    pub smart_encoding: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkTextAccepted {
    pub batch_id: String,
    pub accepted: usize,
    pub duplicates: usize,
    /// True if the idempotency key named an existing batch.
    pub existing: bool,
    /// What Smart Encoding changed, when it was asked for.
    pub smart_encoding: Option<shared::domain::smart::SmartEncoding>,
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
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageAccepted {
    pub batch_id: String,
}

fn customer_id(raw: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).field("id"))
}

/// Creates or updates a customer (admin tokens only).
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
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CustomerRequest>,
) -> Result<(StatusCode, Json<CustomerResponse>), ApiError> {
    caller.require_admin()?;
    let id = customer_id(&id)?;
    let account_sid = req
        .account_sid
        .map(|a| AccountSid::parse(&a))
        .transpose()
        .map_err(|e| ApiError::unprocessable(e.to_string()).field("account_sid"))?;
    let area_code = req
        .area_code
        .map(|a| customers::parse_area_code(&a))
        .transpose()
        .map_err(|e| ApiError::unprocessable(e).field("area_code"))?;
    let messaging_service = req
        .messaging_service_sid
        .map(|s| ServiceSid::parse(&s))
        .transpose()
        .map_err(|e| ApiError::unprocessable(e.to_string()).field("messaging_service_sid"))?;
    if messaging_service.is_some() && (account_sid.is_some()) {
        return Err(ApiError::unprocessable(
            "a Messaging Service for a customer on a subaccount is not supported yet (Messenger manages services \
             with the main account's credentials)",
        )
        .field("messaging_service_sid"));
    }
    if let (Some(service), Some(twilio)) = (&messaging_service, &s.twilio) {
        match twilio.fetch_service(service.as_str()).await {
            Ok(_) => {}
            Err(shared::twilio::TwilioError::Api { status: 404, .. }) => {
                return Err(ApiError::unprocessable(format!("Twilio has no Messaging Service {service}"))
                    .field("messaging_service_sid"));
            }
            Err(e) => tracing::warn!(error.message = %e, "messaging service not checked"),
        }
    }
    if req.max_numbers == Some(0) {
        return Err(ApiError::unprocessable("max_numbers must be at least 1").field("max_numbers"));
    }
    if let (Some(account), Some(twilio)) = (&account_sid, &s.twilio) {
        match check_subaccount(twilio, account).await {
            Ok(_) => {}
            Err(TokenError::NotOurs(_)) => {
                return Err(ApiError::unprocessable(format!(
                    "{account} is not an active subaccount of the main Twilio account"
                ))
                .field("account_sid"));
            }
            // Twilio could not be asked: store it; webhooks for it are verified once its token can be read.
            Err(e) => tracing::warn!(error.message = %e, "subaccount not checked"),
        }
    }
    let mut conn = s.conn.clone();
    let existing = customers::get(&mut conn, &id).await.map_err(|e| ApiError::redis(&e))?;
    let c = Customer {
        id: id.clone(),
        account_sid: account_sid.or_else(|| existing.as_ref().and_then(|e| e.account_sid.clone())),
        area_code: area_code.or_else(|| existing.as_ref().and_then(|e| e.area_code.clone())),
        max_numbers: req
            .max_numbers
            .or(existing.as_ref().map(|e| e.max_numbers))
            .unwrap_or(s.settings.default_max_numbers),
        messaging_service: messaging_service.or_else(|| existing.as_ref().and_then(|e| e.messaging_service.clone())),
    };
    customers::upsert(&mut conn, &c).await.map_err(|e| ApiError::redis(&e))?;
    let created = existing.is_none();
    let body = CustomerResponse {
        id: id.to_string(),
        account_sid: c.account_sid.map(|a| a.to_string()),
        area_code: c.area_code,
        max_numbers: c.max_numbers,
        messaging_service_sid: c.messaging_service.map(|m| m.to_string()),
        created,
    };
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(body)))
}

/// Accepts a bulk text: validated whole (any invalid part rejects it, naming the part), then one job per distinct
/// recipient.
#[utoipa::path(post, path = "/v1/customers/{id}/bulk-texts", tag = "texts",
    params(("id" = String, Path, description = "Customer id")),
    request_body = BulkTextRequest,
    responses(
        (status = 202, description = "Accepted: the batch will be sent", body = BulkTextAccepted),
        (status = 200, description = "Dry run: what the batch would do and cost; nothing written", body = crate::estimate::Estimate),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "Unknown customer", body = ErrorBody),
        (status = 409, description = "Idempotency key reused for a different request", body = ErrorBody),
        (status = 413, description = "Body or recipient list too large", body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, description = "Invalid body, recipient or key", body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_bulk(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<BulkTextRequest>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    if req.recipients.len() > s.limits.max_recipients {
        let mut e = too_large();
        e.detail.message =
            format!("{} recipients; one request may carry at most {}", req.recipients.len(), s.limits.max_recipients);
        return Err(e.field("recipients"));
    }
    let recipients = req
        .recipients
        .into_iter()
        .enumerate()
        .map(|(i, value)| RawRecipient { origin: format!("recipients[{i}]"), value })
        .collect();
    let bulk = BulkRequest {
        customer: id.to_string(),
        body: req.body,
        recipients,
        idempotency_key: req.idempotency_key,
        smart_encoding: req.smart_encoding,
    };
    let smart = bulk.smart_report();
    if req.dry_run {
        let batch = prepare(bulk, false).await?;
        let e =
            crate::estimate::estimate(&mut s.conn.clone(), &batch, smart, &s.settings).await.map_err(|e| match e {
                crate::estimate::EstimateError::UnknownCustomer(c) => {
                    ApiError::not_found(format!("unknown customer {c}"))
                }
                crate::estimate::EstimateError::Redis(r) => ApiError::redis(&r),
            })?;
        return Ok((StatusCode::OK, Json(e)).into_response());
    }
    let receipt = submit(&s, bulk, false).await?;
    s.metrics.recipients_accepted.inc_by(receipt.accepted as u64);
    let body = BulkTextAccepted {
        batch_id: receipt.batch_id,
        accepted: receipt.accepted,
        duplicates: receipt.duplicates,
        existing: receipt.existing,
        smart_encoding: smart,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
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
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<MessageRequest>,
) -> Result<(StatusCode, Json<MessageAccepted>), ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    let bulk = BulkRequest {
        customer: id.to_string(),
        body: req.body,
        recipients: vec![RawRecipient { origin: "to".into(), value: req.to }],
        idempotency_key: req.idempotency_key,
        smart_encoding: false,
    };
    let receipt = submit(&s, bulk, true).await?;
    s.metrics.recipients_accepted.inc();
    Ok((StatusCode::ACCEPTED, Json(MessageAccepted { batch_id: receipt.batch_id })))
}

/// Validates off the async workers (100,000 numbers take a few hundred milliseconds of CPU).
async fn prepare(bulk: BulkRequest, priority: bool) -> Result<shared::batches::NewBatch, ApiError> {
    tokio::task::spawn_blocking(move || enqueue::prepare(&bulk, priority))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(bulk_error)
}

async fn submit(s: &AppState, bulk: BulkRequest, priority: bool) -> Result<batches::Receipt, ApiError> {
    let batch = prepare(bulk, priority).await?;
    let mut conn = s.acked.clone().unwrap_or_else(|| s.conn.clone());
    enqueue::enqueue(&mut conn, batch, s.settings.batch_retention, 1_000, None, s.settings.redis.acks)
        .await
        .map_err(bulk_error)
}

fn bulk_error(e: BulkError) -> ApiError {
    match e {
        BulkError::Invalid(invalid) => ApiError::invalid(invalid.problems, invalid.total),
        BulkError::Submit(SubmitError::UnknownCustomer(c)) => ApiError::not_found(format!("unknown customer {c}")),
        BulkError::Submit(e @ SubmitError::KeyReused { .. }) => {
            ApiError::conflict(e.to_string()).field("idempotency_key")
        }
        BulkError::Submit(SubmitError::Redis(r)) => ApiError::redis(&r),
        BulkError::Submit(e @ SubmitError::NotDurable { .. }) => ApiError::unavailable(e.to_string()),
    }
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
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BatchStatus>, ApiError> {
    let id = BatchId::parse(&id).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).field("id"))?;
    caller.require_customer(id.customer())?;
    match batches::status(&mut s.conn.clone(), &id).await.map_err(|e| ApiError::redis(&e))? {
        Some(status) => Ok(Json(status)),
        None => Err(ApiError::not_found(format!("unknown batch {id} (never created, or expired)"))),
    }
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
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PoolReport>, ApiError> {
    let id = customer_id(&id)?;
    caller.require_customer(&id)?;
    match customers::pool(&mut s.conn.clone(), &id, &s.settings.quota).await.map_err(|e| ApiError::redis(&e))? {
        Some(p) => Ok(Json(p.with_cost(s.settings.pricing.number_monthly))),
        None => Err(ApiError::not_found(format!("unknown customer {id}"))),
    }
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

/// Releases the customer's idle numbers (admin tokens only), keeping what its backlog and its numbers' sticky
/// recipients need; or, with `dry_run`, reports which it would release and changes nothing.
#[utoipa::path(post, path = "/v1/customers/{id}/pool/release-idle", tag = "customers",
    params(("id" = String, Path, description = "Customer id")),
    request_body = ReleaseIdleRequest,
    responses(
        (status = 200, body = shared::release::ReleaseReport),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_release_idle(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ReleaseIdleRequest>,
) -> Result<Json<shared::release::ReleaseReport>, ApiError> {
    caller.require_admin()?;
    let id = customer_id(&id)?;
    let days = req.idle_days.unwrap_or(30.0);
    if !(0.0..=3650.0).contains(&days) {
        return Err(ApiError::unprocessable("idle_days must be between 0 and 3650").field("idle_days"));
    }
    if s.twilio.is_none() && !req.dry_run {
        return Err(ApiError::unavailable("releasing numbers needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"));
    }
    release_idle(&s, &id, days, req.dry_run).await.map(Json)
}

/// Runs a release (or a dry run) for `id`; shared with the dashboard.
pub async fn release_idle(
    s: &AppState,
    id: &CustomerId,
    days: f64,
    dry_run: bool,
) -> Result<shared::release::ReleaseReport, ApiError> {
    let mut conn = s.conn.clone();
    let customer = customers::get(&mut conn, id)
        .await
        .map_err(|e| ApiError::redis(&e))?
        .ok_or_else(|| ApiError::not_found(format!("unknown customer {id}")))?;
    let idle = std::time::Duration::from_secs_f64(days * 86_400.0);
    let ttl = std::time::Duration::from_secs(10);
    let options = shared::release::ReleaseOptions { idle, dry_run, lock_ttl: ttl, acks: s.settings.redis.acks };
    shared::release::release_idle(&mut conn, s.twilio.as_ref(), &customer, &s.settings.quota, options).await.map_err(
        |e| match e {
            shared::release::ReleaseError::Busy(_) => ApiError::conflict(e.to_string()),
            shared::release::ReleaseError::Redis(e) => ApiError::redis(&e),
        },
    )
}
