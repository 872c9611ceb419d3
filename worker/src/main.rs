use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    shared::telemetry::init("info");
    let settings = match worker::WorkerArgs::parse().settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("worker: {e}");
            return ExitCode::from(2);
        }
    };
    match worker::run(settings, shared::telemetry::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error.message = %e, "worker cannot run");
            eprintln!("worker: {e}");
            ExitCode::from(2)
        }
    }
}
