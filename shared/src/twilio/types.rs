//! Twilio's 2010-04-01 resources as they appear on the wire (snake_case JSON, RFC 2822 dates, numbers as strings).
//!
//! Every field is optional because the spec marks every property nullable; the client only relies on the few it
//! needs and keeps the rest for callers and for the simulator, which serialises the same types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `api.v2010.account.message`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub account_sid: Option<String>,
    pub api_version: Option<String>,
    pub body: Option<String>,
    #[serde(with = "rfc2822_opt", default)]
    pub date_created: Option<DateTime<Utc>>,
    #[serde(with = "rfc2822_opt", default)]
    pub date_sent: Option<DateTime<Utc>>,
    #[serde(with = "rfc2822_opt", default)]
    pub date_updated: Option<DateTime<Utc>>,
    pub direction: Option<String>,
    pub error_code: Option<i64>,
    pub error_message: Option<String>,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub num_media: Option<String>,
    pub num_segments: Option<String>,
    pub price: Option<String>,
    pub price_unit: Option<String>,
    pub sid: Option<String>,
    pub status: Option<String>,
    pub subresource_uris: Option<serde_json::Value>,
    pub to: Option<String>,
    pub uri: Option<String>,
}

/// The two fields of a created message the sender needs; reading only these skips parsing the rest (three RFC 2822
/// dates among them) on the hot path.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CreatedMessage {
    pub sid: Option<String>,
    pub status: Option<String>,
}

/// `api.v2010.account.incoming_phone_number`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IncomingPhoneNumber {
    pub account_sid: Option<String>,
    pub address_sid: Option<String>,
    pub address_requirements: Option<String>,
    pub api_version: Option<String>,
    pub beta: Option<bool>,
    pub capabilities: Option<Capabilities>,
    #[serde(with = "rfc2822_opt", default)]
    pub date_created: Option<DateTime<Utc>>,
    #[serde(with = "rfc2822_opt", default)]
    pub date_updated: Option<DateTime<Utc>>,
    pub friendly_name: Option<String>,
    pub identity_sid: Option<String>,
    pub phone_number: Option<String>,
    pub origin: Option<String>,
    pub sid: Option<String>,
    pub sms_application_sid: Option<String>,
    pub sms_fallback_method: Option<String>,
    pub sms_fallback_url: Option<String>,
    pub sms_method: Option<String>,
    pub sms_url: Option<String>,
    pub status_callback: Option<String>,
    pub status_callback_method: Option<String>,
    pub trunk_sid: Option<String>,
    pub uri: Option<String>,
    pub voice_receive_mode: Option<String>,
    pub voice_application_sid: Option<String>,
    pub voice_caller_id_lookup: Option<bool>,
    pub voice_fallback_method: Option<String>,
    pub voice_fallback_url: Option<String>,
    pub voice_method: Option<String>,
    pub voice_url: Option<String>,
    pub emergency_status: Option<String>,
    pub emergency_address_sid: Option<String>,
    pub emergency_address_status: Option<String>,
    pub bundle_sid: Option<String>,
    pub status: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// `api.v2010.account`: an account or subaccount. A parent account reading one of its subaccounts gets the
/// subaccount's `auth_token`, which is how Messenger verifies the webhooks Twilio signs for that subaccount.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub auth_token: Option<String>,
    #[serde(with = "rfc2822_opt", default)]
    pub date_created: Option<DateTime<Utc>>,
    #[serde(with = "rfc2822_opt", default)]
    pub date_updated: Option<DateTime<Utc>>,
    pub friendly_name: Option<String>,
    pub owner_account_sid: Option<String>,
    pub sid: Option<String>,
    /// `active`, `suspended` or `closed`.
    pub status: Option<String>,
    pub subresource_uris: Option<serde_json::Value>,
    /// `Trial` or `Full`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub uri: Option<String>,
}

/// Never prints the auth token.
impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("sid", &self.sid)
            .field("owner_account_sid", &self.owner_account_sid)
            .field("friendly_name", &self.friendly_name)
            .field("status", &self.status)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `available_phone_number_local`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AvailablePhoneNumber {
    pub friendly_name: Option<String>,
    pub phone_number: Option<String>,
    pub lata: Option<String>,
    pub locality: Option<String>,
    pub rate_center: Option<String>,
    pub latitude: Option<serde_json::Value>,
    pub longitude: Option<serde_json::Value>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    pub iso_country: Option<String>,
    pub address_requirements: Option<String>,
    pub beta: Option<bool>,
    pub capabilities: Option<Capabilities>,
}

/// Capabilities of a number. Twilio's payloads use both `sms` and `SMS` for the keys, so they are read
/// case-insensitively; they are written lowercase as in the spec's examples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub voice: bool,
    pub sms: bool,
    pub mms: bool,
    pub fax: bool,
}

impl Serialize for Capabilities {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("voice", &self.voice)?;
        m.serialize_entry("sms", &self.sms)?;
        m.serialize_entry("mms", &self.mms)?;
        m.serialize_entry("fax", &self.fax)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Capabilities {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map: serde_json::Map<String, serde_json::Value> = Deserialize::deserialize(d)?;
        let mut c = Capabilities::default();
        for (k, v) in map {
            let on = v.as_bool().unwrap_or(false);
            match k.to_ascii_lowercase().as_str() {
                "voice" => c.voice = on,
                "sms" => c.sms = on,
                "mms" => c.mms = on,
                "fax" => c.fax = on,
                _ => {}
            }
        }
        Ok(c)
    }
}

/// A page of a list resource. The records sit under a resource-specific key (`messages`, ...), which the
/// generic parameter names through [`ListKey`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    #[serde(flatten)]
    pub records: T,
    pub first_page_uri: Option<String>,
    pub next_page_uri: Option<String>,
    pub previous_page_uri: Option<String>,
    pub page: Option<u64>,
    pub page_size: Option<u64>,
    pub start: Option<u64>,
    pub end: Option<u64>,
    pub uri: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Messages {
    pub messages: Vec<Message>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IncomingPhoneNumbers {
    pub incoming_phone_numbers: Vec<IncomingPhoneNumber>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Accounts {
    pub accounts: Vec<Account>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AvailablePhoneNumbers {
    pub available_phone_numbers: Vec<AvailablePhoneNumber>,
}

/// A number in a Messaging Service's sender pool (`messaging.v1.service.phone_number`). The v1 APIs write dates
/// in ISO 8601 (`2015-07-30T20:12:31Z`), not RFC 2822; they are kept as strings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServicePhoneNumber {
    /// The IncomingPhoneNumber's `PN…` sid.
    pub sid: Option<String>,
    pub account_sid: Option<String>,
    pub service_sid: Option<String>,
    pub date_created: Option<String>,
    pub date_updated: Option<String>,
    pub phone_number: Option<String>,
    pub country_code: Option<String>,
    /// `["MMS", "SMS", "Voice"]`.
    pub capabilities: Option<Vec<String>>,
    pub url: Option<String>,
}

/// `messaging.v1.service` (the fields Messenger and the simulator use; the rest are kept as they came).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub sid: Option<String>,
    pub account_sid: Option<String>,
    pub friendly_name: Option<String>,
    pub date_created: Option<String>,
    pub date_updated: Option<String>,
    pub status_callback: Option<String>,
    pub sticky_sender: Option<bool>,
    pub smart_encoding: Option<bool>,
    pub us_app_to_person_registered: Option<bool>,
    pub links: Option<serde_json::Value>,
    pub url: Option<String>,
}

/// The paging block of the v1 APIs: `{"meta": {..., "key": "phone_numbers", "next_page_url": …}, "<key>": [...]}`
/// (absolute URLs, unlike the 2010 API's relative `*_uri` at the top level).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct V1Meta {
    pub page: Option<u64>,
    pub page_size: Option<u64>,
    pub first_page_url: Option<String>,
    pub previous_page_url: Option<String>,
    pub next_page_url: Option<String>,
    pub key: Option<String>,
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServicePhoneNumbers {
    pub meta: V1Meta,
    pub phone_numbers: Vec<ServicePhoneNumber>,
}

/// `lookups.v2.phone_number` (the fields Messenger uses).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LookupResult {
    pub phone_number: Option<String>,
    pub country_code: Option<String>,
    pub valid: Option<bool>,
    pub validation_errors: Option<Vec<String>>,
    pub line_type_intelligence: Option<LineTypeIntelligence>,
}

/// `line_type_intelligence` of a Lookup v2 answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LineTypeIntelligence {
    pub carrier_name: Option<String>,
    pub mobile_country_code: Option<String>,
    pub mobile_network_code: Option<String>,
    /// `mobile`, `landline`, `fixedVoip`, `nonFixedVoip`, `tollFree`, …
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub error_code: Option<i64>,
}

/// Twilio's legacy error body: `{"code", "message", "more_info", "status"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: Option<u32>,
    pub message: Option<String>,
    pub more_info: Option<String>,
    pub status: Option<u16>,
}

/// Formats a time the way Twilio does: `Thu, 30 Jul 2015 20:12:31 +0000`.
pub fn rfc2822(t: &DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

pub mod rfc2822_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_str(&super::rfc2822(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => DateTime::parse_from_rfc2822(&s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| serde::de::Error::custom(format!("date {s:?} is not RFC 2822: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `create` example of the official OpenAPI spec, as quoted in TWILIO.md.
    const SPEC_MESSAGE: &str = r#"{"account_sid":"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","api_version":"2010-04-01","body":"Hello! 👍",
      "date_created":"Thu, 24 Aug 2023 05:01:45 +0000","date_sent":"Thu, 24 Aug 2023 05:01:45 +0000",
      "date_updated":"Thu, 24 Aug 2023 05:01:45 +0000","direction":"outbound-api","error_code":null,
      "error_message":null,"from":"+14155552345","messaging_service_sid":"MGaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "num_media":"0","num_segments":"1","price":null,"price_unit":null,
      "sid":"SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","status":"queued",
      "subresource_uris":{"media":"/2010-04-01/Accounts/ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Messages/SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Media.json"},
      "to":"+14155552345","uri":"/2010-04-01/Accounts/ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Messages/SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.json"}"#;

    #[test]
    fn the_spec_example_message_parses_with_its_dates() {
        let m: Message = serde_json::from_str(SPEC_MESSAGE).unwrap();
        assert_eq!(m.sid.as_deref(), Some("SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
        assert_eq!(m.num_segments.as_deref(), Some("1"));
        assert_eq!(rfc2822(&m.date_created.unwrap()), "Thu, 24 Aug 2023 05:01:45 +0000");
        assert_eq!(m.error_code, None);
    }

    #[test]
    fn serialising_keeps_twilio_shapes() {
        let m: Message = serde_json::from_str(SPEC_MESSAGE).unwrap();
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["date_created"], "Thu, 24 Aug 2023 05:01:45 +0000");
        assert_eq!(v["num_media"], "0");
        assert!(v["price"].is_null());
    }

    #[test]
    fn capability_keys_are_case_insensitive() {
        let c: Capabilities = serde_json::from_str(r#"{"SMS": true, "MMS": false, "voice": true}"#).unwrap();
        assert!(c.sms && c.voice && !c.mms);
    }

    #[test]
    fn list_pages_find_their_records() {
        let body = r#"{"messages": [], "end": 0, "first_page_uri": "/x?Page=0", "next_page_uri": null,
            "page": 0, "page_size": 50, "previous_page_uri": null, "start": 0, "uri": "/x"}"#;
        let p: Page<Messages> = serde_json::from_str(body).unwrap();
        assert!(p.records.messages.is_empty());
        assert_eq!(p.next_page_uri, None);
        assert_eq!(p.page_size, Some(50));
    }

    #[test]
    fn iso_dates_are_rejected_as_not_rfc2822() {
        let r: Result<Message, _> = serde_json::from_str(r#"{"date_created": "2023-08-24T05:01:45Z"}"#);
        assert!(r.is_err());
    }
}
