use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    shared::telemetry::init("warn");
    producer::cli::main(producer::cli::Cli::parse()).await
}
