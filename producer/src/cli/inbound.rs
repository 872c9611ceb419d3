//! `producer inbound`: credit a message received on one of a customer's numbers.

use std::process::ExitCode;

use shared::config::Settings;
use shared::domain::{CustomerId, PhoneNumber};

use super::{Failure, connect, parse_id};
use crate::ops::pools;

#[derive(clap::Args, Debug)]
pub struct InboundArgs {
    #[arg(long)]
    pub customer: String,
    /// The customer's number that received the message.
    #[arg(long)]
    pub number: String,
    /// The inbound message's sid (repeats are counted once).
    #[arg(long)]
    pub sid: Option<String>,
}

pub async fn run(settings: Settings, args: InboundArgs) -> Result<ExitCode, Failure> {
    let id = parse_id(CustomerId::parse, &args.customer)?;
    let number = PhoneNumber::from_trusted(&args.number).map_err(|e| Failure::Usage(format!("--number: {e}")))?;
    let sid = args.sid.unwrap_or_else(|| format!("SM{}", ulid::Ulid::new().to_string().to_ascii_lowercase()));
    let received = pools::record_inbound(&connect(settings).await?, &id, &number, &sid).await?;
    println!("{} received {received} messages in the current window", number.masked());
    Ok(ExitCode::SUCCESS)
}
