//! Message bodies: Twilio's 1,600-character limit and SMS segment counting.
//!
//! Segment counting follows Twilio's own calculator (TwilioDevEd/message-segment-calculator): a segment is 140
//! octets; a multi-part message spends 6 of them on a user-data header. GSM-7 therefore fits 160 septets in one
//! segment and 153 per part; UCS-2 (used as soon as one character is outside GSM-7) fits 70 UTF-16 code units, or
//! 67 per part. Two-septet GSM-7 extension characters and grapheme clusters are never split across parts.

use std::fmt;

use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

/// Twilio rejects longer bodies with error 21617.
pub const MAX_BODY_CHARS: usize = 1600;

/// A non-empty message body of at most 1,600 characters.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageBody(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("message body is empty")]
    Empty,
    #[error("message body has {0} characters; Twilio accepts at most 1600")]
    TooLong(usize),
    #[error("message body contains a NUL character")]
    Nul,
}

impl MessageBody {
    pub fn parse(s: &str) -> Result<Self, BodyError> {
        if s.trim().is_empty() {
            return Err(BodyError::Empty);
        }
        let n = s.chars().count();
        if n > MAX_BODY_CHARS {
            return Err(BodyError::TooLong(n));
        }
        if s.contains('\0') {
            return Err(BodyError::Nul);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn segments(&self) -> Segments {
        count_segments(&self.0)
    }
}

/// Never print a body in logs: Debug shows only its size.
impl fmt::Debug for MessageBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageBody({} chars)", self.0.chars().count())
    }
}

impl TryFrom<String> for MessageBody {
    type Error = BodyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<MessageBody> for String {
    fn from(value: MessageBody) -> Self {
        value.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }
}

/// How a body is billed: its encoding and number of segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segments {
    pub encoding: Encoding,
    pub segments: u32,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: u32,
}

const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM7_EXTENSION: &str = "\u{000C}^{}\\[~]|€";

/// Whether `c` can be sent in GSM-7 (basic table or extension table).
pub fn is_gsm7(c: char) -> bool {
    gsm7_septets(c).is_some()
}

/// Septets a character costs in GSM-7, or `None` if it is outside GSM-7.
fn gsm7_septets(c: char) -> Option<u32> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Counts segments the way Twilio bills them.
pub fn count_segments(body: &str) -> Segments {
    let gsm: Option<Vec<u32>> = body.chars().map(gsm7_septets).collect();
    match gsm {
        Some(costs) => {
            let units: u32 = costs.iter().sum();
            Segments { encoding: Encoding::Gsm7, segments: pack(costs.into_iter(), units, 160, 153), units }
        }
        None => {
            let costs: Vec<u32> = body.graphemes(true).map(|g| g.encode_utf16().count() as u32).collect();
            let units: u32 = costs.iter().sum();
            Segments { encoding: Encoding::Ucs2, segments: pack(costs.into_iter(), units, 70, 67), units }
        }
    }
}

/// Greedily packs indivisible items into segments of `per_part` units (after a single segment of `single` units
/// overflowed). An item larger than a whole part (a very long grapheme cluster) spills over several parts.
fn pack(costs: impl Iterator<Item = u32>, total: u32, single: u32, per_part: u32) -> u32 {
    if total == 0 {
        return 0;
    }
    if total <= single {
        return 1;
    }
    let mut segments = 1;
    let mut used = 0;
    for mut cost in costs {
        while cost > per_part {
            // Only grapheme clusters of dozens of code points get here; split them at the part boundary.
            let room = per_part - used;
            cost -= room;
            segments += 1;
            used = 0;
        }
        if used + cost > per_part {
            segments += 1;
            used = 0;
        }
        used += cost;
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_overlong_bodies_are_rejected() {
        assert_eq!(MessageBody::parse("   "), Err(BodyError::Empty));
        assert_eq!(MessageBody::parse(&"a".repeat(1601)), Err(BodyError::TooLong(1601)));
        assert!(MessageBody::parse(&"a".repeat(1600)).is_ok());
        // The limit is in characters, not bytes.
        assert!(MessageBody::parse(&"é".repeat(1600)).is_ok());
    }

    #[test]
    fn gsm7_fits_160_in_one_segment_and_153_per_part() {
        assert_eq!(count_segments(&"a".repeat(160)).segments, 1);
        assert_eq!(count_segments(&"a".repeat(161)).segments, 2);
        assert_eq!(count_segments(&"a".repeat(306)).segments, 2);
        assert_eq!(count_segments(&"a".repeat(307)).segments, 3);
        assert_eq!(count_segments("hello").encoding, Encoding::Gsm7);
    }

    #[test]
    fn extension_characters_cost_two_septets_and_are_not_split() {
        let s = count_segments(&"€".repeat(80));
        assert_eq!((s.encoding, s.units, s.segments), (Encoding::Gsm7, 160, 1));
        // 152 plain septets then an extension char: it would straddle the part boundary, so it moves to part 2.
        let body = format!("{}{}{}", "a".repeat(152), "{", "a".repeat(10));
        let s = count_segments(&body);
        assert_eq!((s.units, s.segments), (164, 2));
        let body = format!("{}{}{}", "a".repeat(152), "{", "a".repeat(152));
        assert_eq!(count_segments(&body).segments, 3);
    }

    #[test]
    fn one_non_gsm_character_switches_the_whole_message_to_ucs2() {
        let s = count_segments(&format!("{}✓", "a".repeat(69)));
        assert_eq!((s.encoding, s.units, s.segments), (Encoding::Ucs2, 70, 1));
        let s = count_segments(&format!("{}✓", "a".repeat(70)));
        assert_eq!((s.encoding, s.segments), (Encoding::Ucs2, 2));
        assert_eq!(count_segments(&"✓".repeat(134)).segments, 2);
        assert_eq!(count_segments(&"✓".repeat(135)).segments, 3);
    }

    #[test]
    fn emoji_count_two_units_and_stay_whole() {
        let s = count_segments("Hello! 👍");
        assert_eq!((s.encoding, s.units, s.segments), (Encoding::Ucs2, 9, 1));
        // 66 units then a surrogate pair: the pair does not fit in part 1's remaining unit.
        let body = format!("{}👍{}", "✓".repeat(66), "✓".repeat(10));
        assert_eq!(count_segments(&body).segments, 2);
        let body = format!("{}👍{}", "✓".repeat(66), "✓".repeat(66));
        assert_eq!(count_segments(&body).segments, 3);
    }

    #[test]
    fn debug_never_shows_the_text() {
        let b = MessageBody::parse("secret rent reminder").unwrap();
        assert!(!format!("{b:?}").contains("secret"));
    }
}
