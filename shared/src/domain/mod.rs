//! Domain types that parse: a value of one of these types is valid by construction.

mod body;
mod bounds;
mod clock;
mod ids;
mod phone;
pub mod revocation;
pub mod smart;
pub mod template;

pub use body::{BodyError, Encoding, MAX_BODY_CHARS, MessageBody, Segments, count_segments, is_gsm7};
pub use bounds::{AreaCode, BoundError, IdleDays, MaxNumbers};
pub use clock::{QuietHours, QuietSetting, TimeZone};
pub use ids::{AccountSid, BatchId, CustomerId, IdError, IdempotencyKey, ServiceSid};
pub use phone::{Masked, PhoneError, PhoneNumber};
pub use template::Template;
