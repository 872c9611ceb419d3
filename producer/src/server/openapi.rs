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
