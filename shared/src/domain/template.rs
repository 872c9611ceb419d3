//! Merge fields: a body with `{{name}}` placeholders, filled in per recipient ("Hi {{first_name}}, water is off in
//! unit {{unit}} Tuesday 9–11am"). `{{name|fallback}}` gives a default for recipients without a value.
//!
//! A template is stored once per batch; each job carries only its values, in the order of the batch's variable
//! names, joined by [`VALUE_SEPARATOR`] (see [`Template::render_encoded`]).

use std::fmt;

/// Separates a job's values in its queue entry. A control character, so no text value can contain it.
pub const VALUE_SEPARATOR: char = '\u{1f}';

/// The longest template accepted (its rendered texts are limited to 1,600 characters each).
pub const MAX_TEMPLATE_CHARS: usize = 3_200;

/// Variable names: a letter or `_`, then letters, digits or `_`, at most 32 characters.
pub fn is_variable_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 32
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field { name: String, fallback: Option<String> },
}

/// A parsed body template.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`{{{{` at character {0} is not closed by `}}}}`")]
    Unclosed(usize),
    #[error("{{{{{0}}}}} is not a variable name (a letter or _, then letters, digits or _, at most 32)")]
    BadName(String),
    #[error("the template has {0} characters; at most {MAX_TEMPLATE_CHARS}")]
    TooLong(usize),
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let n = source.chars().count();
        if n > MAX_TEMPLATE_CHARS {
            return Err(TemplateError::TooLong(n));
        }
        let mut parts = Vec::new();
        let mut rest = source;
        let mut consumed = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return Err(TemplateError::Unclosed(source[..consumed + open].chars().count() + 1));
            };
            let inner = &after[..close];
            let (name, fallback) = match inner.split_once('|') {
                Some((n, f)) => (n.trim(), Some(f.to_owned())),
                None => (inner.trim(), None),
            };
            if !is_variable_name(name) {
                return Err(TemplateError::BadName(name.to_owned()));
            }
            parts.push(Part::Field { name: name.to_owned(), fallback });
            consumed += open + 2 + close + 2;
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { source: source.to_owned(), parts })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the body has placeholders (is personalised).
    pub fn has_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field { .. }))
    }

    /// Each placeholder's name (in order of first appearance) and whether it has a fallback everywhere it appears.
    pub fn fields(&self) -> Vec<(&str, bool)> {
        let mut out: Vec<(&str, bool)> = Vec::new();
        for p in &self.parts {
            if let Part::Field { name, fallback } = p {
                match out.iter_mut().find(|(n, _)| n == name) {
                    Some(seen) => seen.1 &= fallback.is_some(),
                    None => out.push((name, fallback.is_some())),
                }
            }
        }
        out
    }

    /// The text for one recipient: `value(name)` gives its value (`None` or empty: the placeholder's fallback).
    /// `Err(name)`: a placeholder without a value or fallback.
    pub fn render<'a>(&self, value: impl Fn(&str) -> Option<&'a str>) -> Result<String, String> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field { name, fallback } => match (value(name).filter(|v| !v.is_empty()), fallback) {
                    (Some(v), _) => out.push_str(v),
                    (None, Some(f)) => out.push_str(f),
                    (None, None) => return Err(name.clone()),
                },
            }
        }
        Ok(out)
    }

    /// The text for a job whose values are `encoded` (see [`encode_values`]) for the variables `names`.
    pub fn render_encoded(&self, names: &[String], encoded: Option<&str>) -> Result<String, String> {
        let values: Vec<&str> = encoded.map(|e| e.split(VALUE_SEPARATOR).collect()).unwrap_or_default();
        self.render(|name| names.iter().position(|n| n == name).and_then(|i| values.get(i).copied()))
    }
}

/// A job's values for the batch's variables `names`, as stored with the job (`None` when there are no variables).
pub fn encode_values(names: &[String], value: impl Fn(&str) -> Option<String>) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push(VALUE_SEPARATOR);
        }
        if let Some(v) = value(n) {
            out.push_str(&v);
        }
    }
    Some(out)
}

/// Never print a template's text in logs: Debug shows its size and placeholders.
impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.fields().into_iter().map(|(n, _)| n).collect();
        write!(f, "Template({} chars, fields {names:?})", self.source.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_with_values_or_fallbacks() {
        let t = Template::parse("Hi {{first_name|there}}, water is off in unit {{ unit }} Tuesday.").unwrap();
        assert!(t.has_fields());
        assert_eq!(t.fields(), vec![("first_name", true), ("unit", false)]);
        let names = vec!["first_name".to_owned(), "unit".to_owned()];
        let one = encode_values(&names, |n| Some(if n == "unit" { "4B".into() } else { "Ana".into() }));
        assert_eq!(t.render_encoded(&names, one.as_deref()).unwrap(), "Hi Ana, water is off in unit 4B Tuesday.");
        let no_name = encode_values(&names, |n| (n == "unit").then(|| "7".to_owned()));
        assert_eq!(t.render_encoded(&names, no_name.as_deref()).unwrap(), "Hi there, water is off in unit 7 Tuesday.");
        assert_eq!(t.render_encoded(&names, None).unwrap_err(), "unit");
    }

    #[test]
    fn a_body_without_placeholders_renders_as_itself() {
        let t = Template::parse("Water is off {Tuesday} 9-11am }}").unwrap();
        assert!(!t.has_fields());
        assert_eq!(t.render(|_| None).unwrap(), "Water is off {Tuesday} 9-11am }}");
    }

    #[test]
    fn bad_templates_are_named() {
        assert_eq!(Template::parse("Hi {{name").unwrap_err(), TemplateError::Unclosed(4));
        assert!(matches!(Template::parse("Hi {{first name}}").unwrap_err(), TemplateError::BadName(_)));
        assert!(matches!(Template::parse("{{}}").unwrap_err(), TemplateError::BadName(_)));
        assert!(Template::parse(&"x".repeat(3_201)).is_err());
    }
}
