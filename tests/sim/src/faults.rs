//! Injected failures: a request answered 500 or 429 without acting, a connection dropped without an answer, or
//! a request that acts and then never answers ("accept then time out"), each with a configured probability.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::Response;
use rand::Rng;
use tokio::sync::Notify;

use crate::Faults;
use crate::wire::twilio_error;

#[derive(Clone)]
pub(crate) struct ConnKill(pub(crate) Arc<Notify>);

pub(crate) enum Fault {
    None,
    E500,
    E429(u64),
    Drop,
    AcceptThenTimeout,
}

pub(crate) fn roll(f: &Faults) -> Fault {
    let x: f64 = rand::rng().random();
    let mut edge = f.error_500;
    if x < edge {
        return Fault::E500;
    }
    edge += f.error_429;
    if x < edge {
        return Fault::E429(f.retry_after_secs);
    }
    edge += f.drop;
    if x < edge {
        return Fault::Drop;
    }
    edge += f.accept_then_timeout;
    if x < edge {
        return Fault::AcceptThenTimeout;
    }
    Fault::None
}

pub(crate) fn fault_response(f: &Fault) -> Option<Response> {
    match f {
        Fault::E500 => Some(twilio_error(500, 20500, "An internal server error has occurred")),
        Fault::E429(secs) => {
            let mut r = twilio_error(429, 20429, "Too Many Requests");
            r.headers_mut().insert("retry-after", HeaderValue::from_str(&secs.to_string()).unwrap());
            Some(r)
        }
        _ => None,
    }
}

/// Never answers: closes the connection now (`Drop`) or after `hang` (`AcceptThenTimeout`).
pub(crate) async fn vanish(kill: &ConnKill, hang: Duration) -> Response {
    tokio::time::sleep(hang).await;
    kill.0.notify_one();
    std::future::pending::<()>().await;
    unreachable!()
}
