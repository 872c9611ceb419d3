//! Pass/fail criteria for a load-test run: `loadtest … --threshold 'sends_per_sec>=5000' --threshold 'p99_ms<=100'`.
//!
//! A threshold names a figure of the run's report (the same report `--json` prints), a comparison and a number.
//! The figure is a field's dotted path (`enqueue_to_twilio.p99_ms`) or its bare name (`p99_ms`): a bare name takes
//! the shallowest field of that name, the first in the report's order among equals — the headline figure, which
//! the verdict line then prints by its full path so that nobody has to guess which one was judged. Thresholds are
//! checked against the report's shape before the run starts, so a misspelt figure costs no run.

use std::fmt;

use serde_json::Value;

/// How a figure is compared with the threshold's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl Cmp {
    fn holds(self, figure: f64, limit: f64) -> bool {
        match self {
            Cmp::Lt => figure < limit,
            Cmp::Le => figure <= limit,
            Cmp::Gt => figure > limit,
            Cmp::Ge => figure >= limit,
            Cmp::Eq => figure == limit,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Eq => "==",
        }
    }
}

/// One `--threshold`: a figure of the report, a comparison, a number.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub figure: String,
    pub cmp: Cmp,
    pub limit: f64,
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.figure, self.cmp.as_str(), self.limit)
    }
}

/// Longest threshold expression accepted (a figure's path is a few dozen characters).
const MAX_LEN: usize = 200;

impl std::str::FromStr for Threshold {
    type Err = String;

    /// `figure OP number`, OP one of `<`, `<=`, `>`, `>=`, `==`; spaces around the parts are allowed.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() > MAX_LEN {
            return Err(format!("a threshold is at most {MAX_LEN} characters, not {}", s.len()));
        }
        let at = s
            .find(['<', '>', '='])
            .ok_or_else(|| format!("\"{s}\" has no comparison: write it as figure<=number (or <, >, >=, ==)"))?;
        let (figure, rest) = (s[..at].trim(), &s[at..]);
        let (cmp, number) = [("<=", Cmp::Le), (">=", Cmp::Ge), ("==", Cmp::Eq), ("<", Cmp::Lt), (">", Cmp::Gt)]
            .into_iter()
            .find_map(|(op, cmp)| rest.strip_prefix(op).map(|n| (cmp, n.trim())))
            .ok_or_else(|| format!("\"{s}\": \"=\" alone is not a comparison; use ==, <=, >=, < or >"))?;
        let valid_name = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if figure.is_empty() || !figure.split('.').all(valid_name) {
            return Err(format!(
                "\"{s}\": \"{figure}\" is not a figure's name (letters, digits and _, dotted for a nested figure, \
                 such as sends_per_sec or enqueue_to_twilio.p99_ms)"
            ));
        }
        let limit: f64 = number.parse().map_err(|_| format!("\"{s}\": \"{number}\" is not a number"))?;
        if !limit.is_finite() {
            return Err(format!("\"{s}\": the number must be finite"));
        }
        Ok(Threshold { figure: figure.to_owned(), cmp, limit })
    }
}

/// What one threshold found in a report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verdict {
    pub threshold: String,
    /// The figure's full dotted path in the report.
    pub path: String,
    pub value: f64,
    pub met: bool,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.path == self.threshold.split(['<', '>', '=']).next().unwrap_or_default().trim() {
            String::new()
        } else {
            format!(" ({})", self.path)
        };
        let word = if self.met { "met" } else { "MISSED" };
        write!(f, "threshold {}{shown}: {} — {word}", self.threshold, trim_number(self.value))
    }
}

fn trim_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.3}") }
}

/// Every numeric field of `report` with its dotted path, shallowest first, in the report's order within a depth.
/// Arrays are not entered: their figures have no stable name.
fn figures(report: &Value) -> Vec<(String, f64, usize)> {
    let mut out = Vec::new();
    let mut level: Vec<(String, &Value)> = vec![(String::new(), report)];
    let mut depth = 0;
    while !level.is_empty() {
        let mut next = Vec::new();
        for (path, v) in level {
            if let Value::Object(map) = v {
                for (k, child) in map {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    match child {
                        Value::Number(n) => out.push((p, n.as_f64().unwrap_or(f64::NAN), depth)),
                        // A figure this run did not measure (such as round trips without --count-commands).
                        Value::Null => out.push((p, f64::NAN, depth)),
                        Value::Object(_) => next.push((p, child)),
                        _ => {}
                    }
                }
            }
        }
        level = next;
        depth += 1;
    }
    out
}

/// The path and value of the figure a threshold names in `report`, or why there is none.
fn resolve(report: &Value, figure: &str) -> Result<(String, f64), String> {
    let all = figures(report);
    let found = if figure.contains('.') {
        all.iter().find(|(p, _, _)| p == figure)
    } else {
        all.iter().find(|(p, _, _)| p.rsplit('.').next() == Some(figure))
    };
    found.map(|(p, v, _)| (p.clone(), *v)).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|(p, _, _)| p.as_str()).collect();
        format!("this report has no figure named \"{figure}\"; it has: {}", names.join(", "))
    })
}

/// Checks that every threshold names a figure of a report shaped like `skeleton` (the report with its figures at
/// zero), before a run is spent on a misspelt name.
pub fn check_names(thresholds: &[Threshold], skeleton: &Value) -> Result<(), String> {
    thresholds.iter().try_for_each(|t| resolve(skeleton, &t.figure).map(|_| ()))
}

/// Judges `report` by every threshold.
pub fn judge(thresholds: &[Threshold], report: &Value) -> Result<Vec<Verdict>, String> {
    thresholds
        .iter()
        .map(|t| {
            let (path, value) = resolve(report, &t.figure)?;
            if value.is_nan() {
                return Err(format!(
                    "{path} was not measured in this run (see `loadtest --help` for what measures it)"
                ));
            }
            Ok(Verdict { threshold: t.to_string(), path, value, met: t.cmp.holds(value, t.limit) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> Threshold {
        s.parse().unwrap()
    }

    #[test]
    fn expressions_parse_with_every_comparison_and_spaces() {
        assert_eq!(t("sends_per_sec>=5000"), Threshold { figure: "sends_per_sec".into(), cmp: Cmp::Ge, limit: 5000.0 });
        assert_eq!(t(" p99_ms <= 100 ").cmp, Cmp::Le);
        assert_eq!(t("a<1").cmp, Cmp::Lt);
        assert_eq!(t("a>1.5").limit, 1.5);
        assert_eq!(t("enqueue_to_twilio.p99_9_ms==0").figure, "enqueue_to_twilio.p99_9_ms");
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Threshold>().unwrap_err();
        assert!(err("sends_per_sec").contains("no comparison"), "{}", err("sends_per_sec"));
        assert!(err("sends_per_sec=5").contains("\"=\" alone"));
        assert!(err("sends per sec>=5").contains("not a figure's name"));
        assert!(err(">=5").contains("not a figure's name"));
        assert!(err("a..b>=5").contains("not a figure's name"));
        assert!(err("a>=fast").contains("\"fast\" is not a number"));
        assert!(err("a>=inf").contains("finite"));
        assert!(err(&format!("{}>=1", "a".repeat(300))).contains("at most 200"));
    }

    #[test]
    fn a_bare_name_takes_the_shallowest_first_field_and_a_path_its_own() {
        let r = json!({
            "sends_per_sec": 6000.5,
            "enqueue_to_twilio": { "p99_ms": 80.0, "p99_9_ms": 120.0 },
            "purchase_gap": { "p99_ms": 900.0 },
            "label": "x",
            "rounds": [{ "p99_ms": 1.0 }],
        });
        let v = judge(&[t("p99_ms<=100"), t("purchase_gap.p99_ms<=100"), t("sends_per_sec>=5000")], &r).unwrap();
        assert_eq!((v[0].path.as_str(), v[0].value, v[0].met), ("enqueue_to_twilio.p99_ms", 80.0, true));
        assert_eq!((v[1].path.as_str(), v[1].met), ("purchase_gap.p99_ms", false));
        assert!(v[2].met);
        assert_eq!(v[1].to_string(), "threshold purchase_gap.p99_ms<=100: 900 — MISSED");
        assert_eq!(v[0].to_string(), "threshold p99_ms<=100 (enqueue_to_twilio.p99_ms): 80 — met");
    }

    #[test]
    fn an_unknown_figure_is_refused_with_the_names_there_are() {
        let r = json!({ "sends_per_sec": 0, "enqueue_to_twilio": { "p99_ms": 0 } });
        let e = check_names(&[t("send_per_sec>=1")], &r).unwrap_err();
        assert!(e.contains("no figure named \"send_per_sec\""), "{e}");
        assert!(e.contains("sends_per_sec, enqueue_to_twilio.p99_ms"), "{e}");
        assert!(check_names(&[t("p99_ms<1"), t("enqueue_to_twilio.p99_ms<1")], &r).is_ok());
        // A non-numeric field is not a figure; one this run did not measure is named, and judging it is an error.
        assert!(check_names(&[t("label>1")], &json!({ "label": "x" })).is_err());
        let unmeasured = json!({ "round_trips_per_message": null });
        assert!(check_names(&[t("round_trips_per_message<1")], &unmeasured).is_ok());
        let e = judge(&[t("round_trips_per_message<1")], &unmeasured).unwrap_err();
        assert!(e.contains("was not measured"), "{e}");
    }
}
