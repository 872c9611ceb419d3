//! Reading a tenant's reply for a revocation of consent, in the tenant's own words.
//!
//! Since 2025-04-11 the FCC's rule (47 CFR 64.1200(a)(10)) lets a tenant revoke consent by any reasonable means:
//! "stop", "quit", "end", "revoke", "opt out", "cancel" and "unsubscribe" revoke by definition, and other wording
//! revokes when a reasonable person would read it so. Twilio blocks only replies that are exactly one of its keywords;
//! for anything else Messenger is the last line. So every reply is read here and classified as a revocation, a
//! suspected revocation (a person decides), or an ordinary message.
//!
//! The rules are data, not a model: `shared/data/revocation-phrases.txt` (keywords, courtesy words, phrases, words
//! used in another sense, suspect words, per language), documented there and reviewed like code, with the replies
//! they are for in `shared/data/revocation-examples.txt` (the test below reads every one). A customer may add its
//! own phrases. Twilio's exact keywords keep their own path ([`crate::ledger::Keyword`]): Twilio confirms those
//! itself.

use std::collections::HashSet;
use std::sync::LazyLock;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// How a reply reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// A clear request to stop texting (or a wrong number: no consent at all): honoured at once.
    Revocation,
    /// The words appear but the reply may mean something else: held for a person to confirm or dismiss.
    Suspected,
    Ordinary,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Revocation => "revocation",
            Class::Suspected => "suspected",
            Class::Ordinary => "ordinary",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revocation" => Some(Class::Revocation),
            "suspected" => Some(Class::Suspected),
            "ordinary" => Some(Class::Ordinary),
            _ => None,
        }
    }
}

/// How a reply was read, and which rule decided it (`keyword: opt out`, `phrase: stop texting`, `suspect: cancel`,
/// `customer: no mas avisos`), for the tenant's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    pub class: Class,
    pub rule: Option<String>,
}

/// A run of words.
type Run = Vec<String>;

/// The rules of one table.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    keywords: HashSet<Run>,
    /// Longest first, so "thank you" is taken off before "you".
    courtesy: Vec<Run>,
    not: Vec<Run>,
    phrases: Vec<Run>,
    suspects: Vec<Run>,
}

/// The project's table, `shared/data/revocation-phrases.txt`.
pub static STANDARD: LazyLock<Rules> = LazyLock::new(|| {
    Rules::parse(include_str!("../../data/revocation-phrases.txt")).expect("revocation-phrases.txt parses")
});

/// The words of `text` as the rules see them: lower case, without accents or apostrophes, every other character that
/// is not a letter or a digit a space, and a word said again right after itself counted once.
pub fn normalise(text: &str) -> Vec<String> {
    let mut flat = String::with_capacity(text.len());
    for c in text.nfd() {
        if is_combining_mark(c) || matches!(c, '\'' | '’' | '‘' | '`' | '´') {
            continue;
        }
        if c.is_alphanumeric() {
            flat.extend(c.to_lowercase());
        } else {
            flat.push(' ');
        }
    }
    let mut words: Vec<String> = Vec::new();
    for w in flat.split_whitespace() {
        if words.last().map(String::as_str) != Some(w) {
            words.push(w.to_owned());
        }
    }
    words
}

/// Where `run` first occurs in `words`, if it does.
fn find(words: &[String], run: &[String]) -> Option<usize> {
    if run.is_empty() || run.len() > words.len() {
        return None;
    }
    words.windows(run.len()).position(|w| w == run)
}

impl Rules {
    /// Parses a table (the format is documented at the top of `revocation-phrases.txt`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut r = Rules::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(3, ' ');
            let (Some(rule), Some(_language), Some(words)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("line {}: expected <rule> <language> <words>", i + 1));
            };
            let run = normalise(words);
            if run.is_empty() {
                return Err(format!("line {}: no words", i + 1));
            }
            match rule {
                "keyword" => {
                    r.keywords.insert(run);
                }
                "courtesy" => r.courtesy.push(run),
                "not" => r.not.push(run),
                "phrase" => r.phrases.push(run),
                "suspect" => r.suspects.push(run),
                other => return Err(format!("line {}: unknown rule {other:?}", i + 1)),
            }
        }
        r.courtesy.sort_by_key(|run| std::cmp::Reverse(run.len()));
        Ok(r)
    }

    /// Reads `reply`; `extra` are a customer's own phrases (revocations wherever they appear).
    pub fn classify(&self, reply: &str, extra: &[String]) -> Reading {
        let words = normalise(reply);
        // 1. The whole reply, less courtesy words at its ends, is a keyword.
        let mut core: &[String] = &words;
        loop {
            let before = core.len();
            for run in &self.courtesy {
                if core.starts_with(run) {
                    core = &core[run.len()..];
                }
                if core.ends_with(run) {
                    core = &core[..core.len() - run.len()];
                }
            }
            if core.len() == before {
                break;
            }
        }
        if core.is_empty() {
            return Reading { class: Class::Ordinary, rule: None };
        }
        if self.keywords.contains(core) {
            return Reading { class: Class::Revocation, rule: Some(format!("keyword: {}", core.join(" "))) };
        }
        // 2. Words used in another sense are taken out (a marker keeps what was on either side apart).
        let mut masked = words.clone();
        for run in &self.not {
            while let Some(at) = find(&masked, run) {
                masked.splice(at..at + run.len(), [String::from("|")]);
            }
        }
        // 3. Phrases: the customer's own first, then the table's.
        for p in extra {
            let run = normalise(p);
            if find(&masked, &run).is_some() {
                return Reading { class: Class::Revocation, rule: Some(format!("customer: {}", run.join(" "))) };
            }
        }
        if let Some(run) = self.phrases.iter().find(|run| find(&masked, run).is_some()) {
            return Reading { class: Class::Revocation, rule: Some(format!("phrase: {}", run.join(" "))) };
        }
        // 4. Suspect words.
        if let Some(run) = self.suspects.iter().find(|run| find(&masked, run).is_some()) {
            return Reading { class: Class::Suspected, rule: Some(format!("suspect: {}", run.join(" "))) };
        }
        Reading { class: Class::Ordinary, rule: None }
    }
}

/// A suspected revocation's deadline: 10 business days from its receipt (`received_ms`), the time of day kept.
/// Weekends are skipped; public holidays are not, so the deadline is never later than the rule's.
pub fn review_deadline(received_ms: i64) -> i64 {
    use chrono::{Datelike, Weekday};
    let Some(mut t) = chrono::DateTime::from_timestamp_millis(received_ms) else { return received_ms };
    let mut days = 0;
    while days < 10 {
        t += chrono::Duration::days(1);
        if !matches!(t.weekday(), Weekday::Sat | Weekday::Sun) {
            days += 1;
        }
    }
    t.timestamp_millis()
}

/// A customer's own opt-out phrases: comma-separated, each 1 to 64 characters of words, at most 50.
pub fn parse_customer_words(v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for raw in v.split(',') {
        let p = raw.trim();
        if p.is_empty() {
            continue;
        }
        if p.chars().count() > 64 {
            return Err(format!("{p:?} is longer than 64 characters"));
        }
        if p.chars().any(char::is_control) {
            return Err("a phrase may not contain control characters".into());
        }
        let words = normalise(p);
        if words.is_empty() {
            return Err(format!("{p:?} has no words (letters or digits)"));
        }
        if !out.contains(&words.join(" ")) {
            out.push(words.join(" "));
        }
    }
    if out.len() > 50 {
        return Err(format!("at most 50 phrases, not {}", out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Acceptance 1 of the consent issue: every example reply of `revocation-examples.txt` (English and Spanish, at
    /// least 80) is read as its line says; printed as counts per class and every reply that disagrees.
    #[test]
    fn the_examples() {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut disagree = Vec::new();
        let mut total = 0;
        for line in include_str!("../../data/revocation-examples.txt").lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (class, reply) = line.split_once(" | ").expect("<class> | <reply>");
            let want = Class::parse(class).expect("a class");
            let got = STANDARD.classify(reply, &[]);
            total += 1;
            *counts.entry(want.as_str()).or_default() += 1;
            if got.class != want {
                disagree.push(format!(
                    "{reply:?}: expected {}, read {} ({:?})",
                    want.as_str(),
                    got.class.as_str(),
                    got.rule
                ));
            }
        }
        println!("{total} example replies: {counts:?}; disagreeing: {}", disagree.len());
        for d in &disagree {
            println!("  {d}");
        }
        assert!(total >= 80, "only {total} examples");
        assert!(disagree.is_empty(), "{} replies read wrongly:\n{}", disagree.len(), disagree.join("\n"));
    }

    #[test]
    fn replies_are_normalised_before_they_are_read() {
        assert_eq!(
            normalise("  OPT-OUT!!  Don't   stop STOP stop 🙏 Número "),
            ["opt", "out", "dont", "stop", "numero"]
        );
        let r = STANDARD.classify("Opt.Out", &[]);
        assert_eq!((r.class, r.rule.as_deref()), (Class::Revocation, Some("keyword: opt out")));
    }

    #[test]
    fn a_customers_own_words_revoke() {
        let words = parse_customer_words("no más avisos, Dejen de molestar ,").unwrap();
        assert_eq!(words, ["no mas avisos", "dejen de molestar"]);
        let r = STANDARD.classify("Por favor: NO MAS AVISOS", &words);
        assert_eq!((r.class, r.rule.as_deref()), (Class::Revocation, Some("customer: no mas avisos")));
        assert_eq!(STANDARD.classify("Por favor: NO MAS AVISOS", &[]).class, Class::Ordinary);
        assert!(parse_customer_words(&"x".repeat(65)).is_err());
        assert!(parse_customer_words("!!!").unwrap_err().contains("no words"));
    }

    #[test]
    fn a_reviews_deadline_is_ten_weekdays_later() {
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
        // Monday 2026-12-07 → two weeks later, Monday 2026-12-21; Saturday 2026-12-12 → Friday 2026-12-25.
        assert_eq!(review_deadline(at("2026-12-07T15:00:00Z")), at("2026-12-21T15:00:00Z"));
        assert_eq!(review_deadline(at("2026-12-12T09:30:00Z")), at("2026-12-25T09:30:00Z"));
    }

    #[test]
    fn a_bad_table_is_named_by_line() {
        assert!(Rules::parse("keyword en stop\nwhatever en x\n").unwrap_err().starts_with("line 2: unknown rule"));
        assert!(Rules::parse("phrase en\n").unwrap_err().starts_with("line 1:"));
    }
}
