//! Twilio: the REST client, the wire types it shares with the simulator, and error classification.

pub mod accounts;
pub mod client;
pub mod error;
pub mod signature;
pub mod types;

pub use client::{BuyNumber, CreateMessage, MessageFilter, TwilioClient};
pub use error::{Disposition, SendFailure, TwilioError, codes};
