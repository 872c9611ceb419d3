//! `twilio-sim`: the Twilio simulator as a standalone server (demo, docker-compose, load tests).

use clap::Parser;
use twilio_sim::{self as sim, Faults, SimConfig};

/// Imitates Twilio's 2010-04-01 REST API (Messages, IncomingPhoneNumbers, AvailablePhoneNumbers) on a local port.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free one (the chosen address is printed on stdout).
    #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:8099")]
    listen: String,
    #[arg(long, env = "TWILIO_ACCOUNT_SID", default_value = sim::DEFAULT_ACCOUNT_SID)]
    account_sid: String,
    #[arg(long, env = "TWILIO_AUTH_TOKEN", default_value = sim::DEFAULT_AUTH_TOKEN, hide_env_values = true)]
    auth_token: String,
    /// Delay before answering a send.
    #[arg(long, env = "SIM_SEND_LATENCY_MS", default_value_t = 0)]
    send_latency_ms: u64,
    /// Delay before answering a purchase.
    #[arg(long, env = "SIM_PURCHASE_LATENCY_MS", default_value_t = 0)]
    purchase_latency_ms: u64,
    /// Fault rates for sends: 500s, 429s, dropped connections, accept-then-timeout (each 0..1).
    #[arg(long, env = "SIM_SEND_500", default_value_t = 0.0)]
    send_500: f64,
    #[arg(long, env = "SIM_SEND_429", default_value_t = 0.0)]
    send_429: f64,
    #[arg(long, env = "SIM_SEND_DROP", default_value_t = 0.0)]
    send_drop: f64,
    #[arg(long, env = "SIM_SEND_ACCEPT_TIMEOUT", default_value_t = 0.0)]
    send_accept_then_timeout: f64,
    /// Fault rates for purchases, as for sends.
    #[arg(long, env = "SIM_PURCHASE_500", default_value_t = 0.0)]
    purchase_500: f64,
    #[arg(long, env = "SIM_PURCHASE_429", default_value_t = 0.0)]
    purchase_429: f64,
    #[arg(long, env = "SIM_PURCHASE_DROP", default_value_t = 0.0)]
    purchase_drop: f64,
    #[arg(long, env = "SIM_PURCHASE_ACCEPT_TIMEOUT", default_value_t = 0.0)]
    purchase_accept_then_timeout: f64,
    /// How long an "accept then time out" request is held open, ms.
    #[arg(long, env = "SIM_HANG_MS", default_value_t = 120_000)]
    hang_ms: u64,
    /// `Retry-After` seconds sent with injected 429s.
    #[arg(long, env = "SIM_RETRY_AFTER_SECS", default_value_t = 1)]
    retry_after_secs: u64,
    /// Report every accepted message delivered this many ms later, through its `StatusCallback` (off by default).
    #[arg(long, env = "SIM_DELIVER_AFTER_MS")]
    deliver_after_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init("info");
    let a = Args::parse();
    let config = SimConfig {
        account_sid: a.account_sid,
        auth_token: a.auth_token,
        send_latency_ms: a.send_latency_ms,
        purchase_latency_ms: a.purchase_latency_ms,
        send_faults: Faults {
            error_500: a.send_500,
            error_429: a.send_429,
            drop: a.send_drop,
            accept_then_timeout: a.send_accept_then_timeout,
            retry_after_secs: a.retry_after_secs,
        },
        purchase_faults: Faults {
            error_500: a.purchase_500,
            error_429: a.purchase_429,
            drop: a.purchase_drop,
            accept_then_timeout: a.purchase_accept_then_timeout,
            retry_after_secs: a.retry_after_secs,
        },
        hang_ms: a.hang_ms,
        deliver_after_ms: a.deliver_after_ms,
        ..SimConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(&a.listen).await?;
    let addr = listener.local_addr()?;
    println!("twilio-sim listening on http://{addr}");
    tracing::info!(%addr, "twilio-sim listening");
    sim::serve(listener, sim::Sim::new(config), shared::telemetry::shutdown_signal()).await;
    Ok(())
}
