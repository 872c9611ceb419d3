//! Simulator control, not Twilio: `GET /_sim/state` (everything it holds) and `GET`/`POST /_sim/config`
//! (settings, changed by partial JSON).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::{Sim, SimConfig, SimState};

#[derive(Deserialize)]
pub(crate) struct StateQuery {
    messages: Option<bool>,
}

pub(crate) async fn sim_state(State(sim): State<Sim>, Query(q): Query<StateQuery>) -> Json<SimState> {
    Json(sim.state(q.messages.unwrap_or(true)))
}

pub(crate) async fn sim_config(State(sim): State<Sim>) -> Json<SimConfig> {
    Json(sim.config())
}

/// Merges a partial JSON object into the settings.
pub(crate) async fn set_sim_config(State(sim): State<Sim>, Json(patch): Json<serde_json::Value>) -> Response {
    let mut current = serde_json::to_value(sim.config()).unwrap();
    merge(&mut current, patch);
    match serde_json::from_value::<SimConfig>(current) {
        Ok(c) => {
            sim.set_config(c.clone());
            Json(c).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("bad simulator config: {e}")).into_response(),
    }
}

pub(crate) fn merge(into: &mut serde_json::Value, patch: serde_json::Value) {
    match (into, patch) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}
