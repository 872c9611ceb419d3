//! Smart Encoding: replacing Unicode look-alikes (curly quotes, long dashes, non-breaking and other spaces,
//! ellipses, fullwidth forms…) with GSM-7 characters, so a body that only needed UCS-2 because of them costs a
//! third of the segments. The table is Twilio's published Smart Encoding character list, as Twilio's own segment
//! calculator applies it (TwilioDevEd/message-segment-calculator, `SmartEncodingMap`), quirks included: the
//! space-like characters become two spaces, a tab seven, and `‹`/`›` become `>`/`<`.

use super::body::{Encoding, count_segments, is_gsm7};

/// (character, replacement), sorted by character for binary search.
const MAP: &[(char, &str)] = &[
    ('\u{0000}', ""),
    ('\u{0003}', ""),
    ('\u{0004}', ""),
    ('\u{0009}', "       "),
    ('\u{0010}', ""),
    ('\u{0011}', ""),
    ('\u{0012}', ""),
    ('\u{0013}', ""),
    ('\u{0014}', ""),
    ('\u{0017}', ""),
    ('\u{0019}', ""),
    ('\u{0060}', "'"),
    ('\u{0080}', "  "),
    ('\u{008D}', "  "),
    ('\u{0090}', "  "),
    ('\u{009B}', "  "),
    ('\u{009F}', "  "),
    ('\u{00A0}', "  "),
    ('\u{00AB}', "\""),
    ('\u{00B4}', "'"),
    ('\u{00BB}', "\""),
    ('\u{00BC}', "1/4"),
    ('\u{00BD}', "1/2"),
    ('\u{00BE}', "3/4"),
    ('\u{00F7}', "/"),
    ('\u{01C3}', "!"),
    ('\u{0262}', "G"),
    ('\u{026A}', "I"),
    ('\u{0274}', "N"),
    ('\u{0280}', "R"),
    ('\u{028F}', "Y"),
    ('\u{0299}', "B"),
    ('\u{029C}', "H"),
    ('\u{029F}', "L"),
    ('\u{02B9}', "'"),
    ('\u{02BA}', "\""),
    ('\u{02BB}', "'"),
    ('\u{02BC}', "'"),
    ('\u{02BD}', "'"),
    ('\u{02C6}', "^"),
    ('\u{02C8}', "'"),
    ('\u{02CA}', "'"),
    ('\u{02CB}', "'"),
    ('\u{02D0}', ":"),
    ('\u{02D6}', "+"),
    ('\u{02DC}', "~"),
    ('\u{02EE}', "\""),
    ('\u{02F7}', "~"),
    ('\u{02F8}', ":"),
    ('\u{0302}', "^"),
    ('\u{0303}', "~"),
    ('\u{0313}', "'"),
    ('\u{0314}', "'"),
    ('\u{0326}', ","),
    ('\u{0330}', "~"),
    ('\u{0332}', "_"),
    ('\u{0334}', "~"),
    ('\u{0337}', "/"),
    ('\u{0338}', "/"),
    ('\u{0347}', "="),
    ('\u{1D00}', "A"),
    ('\u{1D04}', "C"),
    ('\u{1D05}', "D"),
    ('\u{1D07}', "E"),
    ('\u{1D0A}', "J"),
    ('\u{1D0B}', "K"),
    ('\u{1D0D}', "M"),
    ('\u{1D0F}', "O"),
    ('\u{1D18}', "P"),
    ('\u{1D1B}', "T"),
    ('\u{1D1C}', "U"),
    ('\u{1D20}', "V"),
    ('\u{1D21}', "W"),
    ('\u{1D22}', "Z"),
    ('\u{1DCD}', "^"),
    ('\u{2000}', "  "),
    ('\u{2001}', " "),
    ('\u{2002}', "  "),
    ('\u{2003}', "  "),
    ('\u{2004}', "  "),
    ('\u{2005}', "  "),
    ('\u{2006}', "  "),
    ('\u{2007}', "  "),
    ('\u{2008}', "  "),
    ('\u{2009}', "  "),
    ('\u{200A}', "  "),
    ('\u{200B}', ""),
    ('\u{2010}', "-"),
    ('\u{2013}', "-"),
    ('\u{2014}', "-"),
    ('\u{2015}', "-"),
    ('\u{2017}', "_"),
    ('\u{2018}', "'"),
    ('\u{2019}', "'"),
    ('\u{201A}', ","),
    ('\u{201B}', "'"),
    ('\u{201C}', "\""),
    ('\u{201D}', "\""),
    ('\u{201E}', "\""),
    ('\u{201F}', "\""),
    ('\u{2022}', "-"),
    ('\u{2026}', "..."),
    ('\u{2028}', " "),
    ('\u{2029}', " "),
    ('\u{202F}', "  "),
    ('\u{2039}', ">"),
    ('\u{203A}', "<"),
    ('\u{203C}', "!!"),
    ('\u{2043}', "-"),
    ('\u{2044}', "/"),
    ('\u{204E}', "*"),
    ('\u{204F}', ";"),
    ('\u{205F}', "  "),
    ('\u{2060}', ""),
    ('\u{20D2}', "|"),
    ('\u{20D3}', "|"),
    ('\u{20E5}', "\\"),
    ('\u{2215}', "/"),
    ('\u{2217}', "*"),
    ('\u{2223}', "|"),
    ('\u{223C}', "~"),
    ('\u{229B}', "*"),
    ('\u{239C}', "|"),
    ('\u{239F}', "|"),
    ('\u{23B8}', "|"),
    ('\u{23B9}', "|"),
    ('\u{23BC}', "-"),
    ('\u{23BD}', "-"),
    ('\u{23D0}', "|"),
    ('\u{2722}', "*"),
    ('\u{2723}', "*"),
    ('\u{2724}', "*"),
    ('\u{2725}', "*"),
    ('\u{2731}', "*"),
    ('\u{2732}', "*"),
    ('\u{2733}', "*"),
    ('\u{273A}', "*"),
    ('\u{273B}', "*"),
    ('\u{273C}', "*"),
    ('\u{273D}', "*"),
    ('\u{2743}', "*"),
    ('\u{2749}', "*"),
    ('\u{274A}', "*"),
    ('\u{274B}', "*"),
    ('\u{275B}', "'"),
    ('\u{275C}', "'"),
    ('\u{275D}', "\""),
    ('\u{275E}', "\""),
    ('\u{2768}', "("),
    ('\u{2769}', ")"),
    ('\u{276A}', "("),
    ('\u{276B}', ")"),
    ('\u{2774}', "{"),
    ('\u{2775}', "}"),
    ('\u{27EE}', "("),
    ('\u{27EF}', ")"),
    ('\u{2982}', ":"),
    ('\u{2985}', "("),
    ('\u{2986}', ")"),
    ('\u{29C6}', "*"),
    ('\u{29F5}', "\\"),
    ('\u{29F8}', "/"),
    ('\u{29F9}', "\\"),
    ('\u{3000}', "  "),
    ('\u{3001}', ","),
    ('\u{3002}', "."),
    ('\u{301D}', "\""),
    ('\u{301E}', "\""),
    ('\u{A730}', "F"),
    ('\u{A731}', "S"),
    ('\u{A789}', ":"),
    ('\u{A78A}', "="),
    ('\u{FE10}', "'"),
    ('\u{FE11}', "'"),
    ('\u{FE13}', ":"),
    ('\u{FE14}', ";"),
    ('\u{FE15}', "!"),
    ('\u{FE16}', "?"),
    ('\u{FE50}', ","),
    ('\u{FE51}', ","),
    ('\u{FE52}', "."),
    ('\u{FE54}', ";"),
    ('\u{FE56}', "?"),
    ('\u{FE57}', "!"),
    ('\u{FE59}', "("),
    ('\u{FE5A}', ")"),
    ('\u{FE5B}', "{"),
    ('\u{FE5C}', "}"),
    ('\u{FE5F}', "#"),
    ('\u{FE60}', "&"),
    ('\u{FE61}', "*"),
    ('\u{FE62}', "+"),
    ('\u{FE63}', "-"),
    ('\u{FE64}', "<"),
    ('\u{FE65}', ">"),
    ('\u{FE66}', "="),
    ('\u{FE68}', "\\"),
    ('\u{FE69}', "$"),
    ('\u{FE6A}', "%"),
    ('\u{FE6B}', "@"),
    ('\u{FEFF}', ""),
    ('\u{FF01}', "!"),
    ('\u{FF02}', "\""),
    ('\u{FF03}', "#"),
    ('\u{FF04}', "$"),
    ('\u{FF05}', "%"),
    ('\u{FF06}', "&"),
    ('\u{FF07}', "'"),
    ('\u{FF08}', "("),
    ('\u{FF09}', ")"),
    ('\u{FF0A}', "*"),
    ('\u{FF0B}', "+"),
    ('\u{FF0C}', ","),
    ('\u{FF0D}', "-"),
    ('\u{FF0E}', "."),
    ('\u{FF0F}', "/"),
    ('\u{FF10}', "0"),
    ('\u{FF11}', "1"),
    ('\u{FF12}', "2"),
    ('\u{FF13}', "3"),
    ('\u{FF14}', "4"),
    ('\u{FF15}', "5"),
    ('\u{FF16}', "6"),
    ('\u{FF17}', "7"),
    ('\u{FF18}', "8"),
    ('\u{FF19}', "9"),
    ('\u{FF1A}', ":"),
    ('\u{FF1B}', ";"),
    ('\u{FF1C}', "<"),
    ('\u{FF1D}', "="),
    ('\u{FF1E}', ">"),
    ('\u{FF1F}', "?"),
    ('\u{FF20}', "@"),
    ('\u{FF21}', "A"),
    ('\u{FF22}', "B"),
    ('\u{FF23}', "C"),
    ('\u{FF24}', "D"),
    ('\u{FF25}', "E"),
    ('\u{FF26}', "F"),
    ('\u{FF27}', "G"),
    ('\u{FF28}', "H"),
    ('\u{FF29}', "I"),
    ('\u{FF2A}', "J"),
    ('\u{FF2B}', "K"),
    ('\u{FF2C}', "L"),
    ('\u{FF2D}', "M"),
    ('\u{FF2E}', "N"),
    ('\u{FF2F}', "O"),
    ('\u{FF30}', "P"),
    ('\u{FF31}', "Q"),
    ('\u{FF32}', "R"),
    ('\u{FF33}', "S"),
    ('\u{FF34}', "T"),
    ('\u{FF35}', "U"),
    ('\u{FF36}', "V"),
    ('\u{FF37}', "W"),
    ('\u{FF38}', "X"),
    ('\u{FF39}', "Y"),
    ('\u{FF3A}', "Z"),
    ('\u{FF3B}', "["),
    ('\u{FF3C}', "\\"),
    ('\u{FF3D}', "]"),
    ('\u{FF3E}', "^"),
    ('\u{FF3F}', "_"),
    ('\u{FF5B}', "{"),
    ('\u{FF5C}', "|"),
    ('\u{FF5D}', "}"),
    ('\u{FF5E}', "~"),
    ('\u{FF61}', "."),
    ('\u{FF64}', ","),
];

/// The replacement Smart Encoding uses for `c`, if any.
pub fn replacement(c: char) -> Option<&'static str> {
    MAP.binary_search_by(|(k, _)| k.cmp(&c)).ok().map(|i| MAP[i].1)
}

/// `body` with every look-alike replaced, and the distinct characters that were replaced (in order of first use).
pub fn smart_encode(body: &str) -> (String, Vec<char>) {
    let mut out = String::with_capacity(body.len());
    let mut replaced: Vec<char> = Vec::new();
    for c in body.chars() {
        match replacement(c) {
            Some(r) => {
                out.push_str(r);
                if !replaced.contains(&c) {
                    replaced.push(c);
                }
            }
            None => out.push(c),
        }
    }
    (out, replaced)
}

/// The distinct characters of `body` that are outside GSM-7, i.e. that force the whole message into UCS-2 (in order
/// of first use).
pub fn ucs2_characters(body: &str) -> Vec<char> {
    let mut out: Vec<char> = Vec::new();
    for c in body.chars() {
        if !is_gsm7(c) && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// `U+2019 ’` — how a character is shown to people (control and space characters by code point only).
pub fn describe_char(c: char) -> String {
    if c.is_control() || c.is_whitespace() || (c as u32) < 0x20 {
        format!("U+{:04X}", c as u32)
    } else {
        format!("U+{:04X} {c}", c as u32)
    }
}

/// What Smart Encoding changes for a body: segments before and after, and what it replaced.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SmartEncoding {
    pub segments_before: u32,
    pub segments_after: u32,
    pub encoding_before: String,
    pub encoding_after: String,
    /// The characters replaced (`U+2019 ’`).
    pub replaced: Vec<String>,
}

impl SmartEncoding {
    pub fn of(original: &str, encoded: &str, replaced: &[char]) -> Self {
        let (b, a) = (count_segments(original), count_segments(encoded));
        let name = |e: Encoding| e.as_str().to_owned();
        Self {
            segments_before: b.segments,
            segments_after: a.segments,
            encoding_before: name(b.encoding),
            encoding_after: name(a.encoding),
            replaced: replaced.iter().map(|c| describe_char(*c)).collect(),
        }
    }

    /// Segments saved per message.
    pub fn saved(&self) -> u32 {
        self.segments_before.saturating_sub(self.segments_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_maps_only_to_gsm7() {
        assert!(MAP.windows(2).all(|w| w[0].0 < w[1].0), "MAP must be sorted for binary search");
        assert_eq!(MAP.len(), 270);
        for (c, r) in MAP {
            assert!(r.chars().all(is_gsm7), "{c:?} -> {r:?} is not GSM-7");
        }
    }

    #[test]
    fn curly_quotes_and_dashes_become_gsm7() {
        let body = "\u{201C}Water\u{201D} off \u{2014} it\u{2019}s 9\u{2013}11\u{2026}";
        let (out, replaced) = smart_encode(body);
        assert_eq!(out, "\"Water\" off - it's 9-11...");
        assert_eq!(replaced.len(), 6);
        assert_eq!(count_segments(&out).encoding, Encoding::Gsm7);
        assert_eq!(ucs2_characters(body).len(), 6);
        assert!(ucs2_characters(&out).is_empty());
    }

    #[test]
    fn a_160_character_curly_quoted_body_goes_from_3_segments_to_1() {
        let body = format!("\u{2018}{}\u{2019}", "a".repeat(158));
        assert_eq!(body.chars().count(), 160);
        let (out, replaced) = smart_encode(&body);
        let s = SmartEncoding::of(&body, &out, &replaced);
        assert_eq!((s.segments_before, s.segments_after, s.saved()), (3, 1, 2));
        assert_eq!(s.replaced, vec!["U+2018 \u{2018}", "U+2019 \u{2019}"]);
    }

    #[test]
    fn emoji_are_left_alone() {
        let (out, replaced) = smart_encode("hi \u{1F44D}");
        assert_eq!(out, "hi \u{1F44D}");
        assert!(replaced.is_empty());
    }
}
