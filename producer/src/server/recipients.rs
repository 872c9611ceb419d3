//! A bulk text's `recipients` array, read from JSON straight into [`RawRecipient`]s, within bounds.
//!
//! serde's derived reading of `Vec<Recipient>` (an untagged enum with a map of `serde_json::Value`s) buffered every
//! recipient as a tree of values, then copied it into the request: a 6 MB body of 700 variables per recipient
//! took 120 MB. Here each element is read once into its final shape, a recipient with more than
//! [`MAX_VARIABLES`] variables is refused while it is read (naming it), and a value must be a string, a number, a
//! boolean or null. What remains of a request in memory is its numbers and values, about the size of the body.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::recipients::RawRecipient;
use crate::validate::MAX_VARIABLES;

/// Most recipients kept from one request; the rest are counted, not kept (the handler refuses the request, naming
/// the count). The API's default bound.
pub const KEPT_MAX: usize = 100_000;

/// The recipients of a bulk text, in order: the first [`KEPT_MAX`], and how many the array held.
#[derive(Debug, Default)]
pub struct Recipients {
    pub kept: Vec<RawRecipient>,
    pub total: usize,
}

impl<'de> de::Deserialize<'de> for Recipients {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(ListVisitor)
    }
}

struct ListVisitor;

impl<'de> Visitor<'de> for ListVisitor {
    type Value = Recipients;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of recipients")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Recipients, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4_096));
        // Errors name no place: the JSON extractor names it (`recipients[3].vars.unit: …`).
        while out.len() < KEPT_MAX {
            match seq.next_element_seed(One(out.len()))? {
                Some(r) => out.push(r),
                None => return Ok(Recipients { total: out.len(), kept: out }),
            }
        }
        let mut total = out.len();
        while seq.next_element::<de::IgnoredAny>()?.is_some() {
            total += 1;
        }
        Ok(Recipients { kept: out, total })
    }
}

/// Item `i` of the array.
struct One(usize);

impl<'de> de::DeserializeSeed<'de> for One {
    type Value = RawRecipient;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawRecipient, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for One {
    type Value = RawRecipient;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an E.164 number or {\"to\", \"vars\"}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRecipient, E> {
        Ok(RawRecipient::json(self.0, v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRecipient, A::Error> {
        let mut r = RawRecipient::json(self.0, "");
        let (mut to, mut vars) = (false, false);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "to" if !to => {
                    r.value = map.next_value()?;
                    to = true;
                }
                "vars" if !vars => {
                    r.vars = map.next_value::<Vars>()?.0;
                    vars = true;
                }
                "to" | "vars" => return Err(de::Error::custom(format!("`{key}` is given twice"))),
                other => return Err(de::Error::unknown_field(other, &["to", "vars"])),
            }
        }
        if !to {
            return Err(de::Error::missing_field("to"));
        }
        Ok(r)
    }
}

/// A recipient's variables: at most [`MAX_VARIABLES`], each a string, number, boolean or null (empty).
struct Vars(Vec<(String, String)>);

impl<'de> de::Deserialize<'de> for Vars {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(VarsVisitor)
    }
}

struct VarsVisitor;

impl<'de> Visitor<'de> for VarsVisitor {
    type Value = Vars;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of variables")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vars, A::Error> {
        let mut vars = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            if vars.len() == MAX_VARIABLES {
                return Err(de::Error::custom(format!("more than {MAX_VARIABLES} variables")));
            }
            if vars.iter().any(|(n, _)| *n == name) {
                return Err(de::Error::custom(format!("the variable `{name}` is given twice")));
            }
            let value = map.next_value::<Value>()?;
            vars.push((name, value.0));
        }
        Ok(Vars(vars))
    }
}

/// One variable's value, as text.
struct Value(String);

impl<'de> de::Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a number")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value(serde_json::Number::from_f64(v).map_or_else(|| v.to_string(), |n| n.to_string())))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value(String::new()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value(String::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read as the API reads it: errors name where they are.
    fn read(json: &str) -> Result<Vec<RawRecipient>, String> {
        let mut d = serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize::<_, Recipients>(&mut d).map(|r| r.kept).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_and_personal_recipients_become_raw_recipients_in_order() {
        let r = read(
            r#"["+14155550001", {"to": "+14155550002", "vars": {"unit": "4B", "floor": 3, "vip": true, "x": null}}]"#,
        )
        .unwrap();
        assert_eq!(r[0], RawRecipient::json(0, "+14155550001"));
        assert_eq!(r[1].origin, "recipients[1]");
        assert_eq!(r[1].value, "+14155550002");
        let vars: Vec<(&str, &str)> = r[1].vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(vars, [("unit", "4B"), ("floor", "3"), ("vip", "true"), ("x", "")]);
    }

    #[test]
    fn bad_shapes_are_named_by_recipient() {
        let e = read(r#"["+14155550001", {"to": "+14155550002", "vars": {"a": [1]}}]"#).unwrap_err();
        assert!(e.starts_with("[1].vars.a: invalid type: sequence, expected a string or a number"), "{e}");
        let e = read(r#"[{"vars": {}}]"#).unwrap_err();
        assert!(e.contains("[0]: missing field `to`"), "{e}");
        let e = read(r#"[{"to": "+1", "name": "x"}]"#).unwrap_err();
        assert!(e.contains("[0]: unknown field `name`"), "{e}");
        let e = read(r#"[{"to": "+1", "vars": {}, "vars": {"a": 1}}]"#).unwrap_err();
        assert!(e.contains("`vars` is given twice"), "{e}");
        let e = read(r#"[{"to": "+1", "vars": {"a": 1, "a": 2}}]"#).unwrap_err();
        assert!(e.contains("the variable `a` is given twice"), "{e}");
        let e = read("[7]").unwrap_err();
        assert!(e.contains("[0]: invalid type: integer `7`"), "{e}");
    }

    #[test]
    fn past_the_bound_recipients_are_counted_not_kept() {
        let json = serde_json::to_string(&vec!["+14155550001"; KEPT_MAX + 5]).unwrap();
        let r: Recipients = serde_json::from_str(&json).unwrap();
        assert_eq!((r.kept.len(), r.total), (KEPT_MAX, KEPT_MAX + 5));
    }

    #[test]
    fn a_recipient_with_too_many_variables_is_refused_while_it_is_read() {
        let vars: Vec<String> = (0..=MAX_VARIABLES).map(|i| format!("\"v{i}\": \"x\"")).collect();
        let e = read(&format!(r#"[{{"to": "+1", "vars": {{{}}}}}]"#, vars.join(","))).unwrap_err();
        assert!(e.starts_with("[0].vars: more than 50 variables"), "{e}");
    }
}
