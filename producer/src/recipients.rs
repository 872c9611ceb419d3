//! Reading recipient lists: one number per line, or CSV with a `phone` column, whose other columns are the
//! recipients' variables (merge fields such as `first_name`, `unit`; `tz` names a recipient's time zone).

use std::path::Path;

/// A recipient as written by the caller, with where it came from (for error messages).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawRecipient {
    /// Where it came from, used as the field name in errors: "line 17", "--to #3", "recipients[4]".
    pub origin: String,
    pub value: String,
    /// Its variables (name, value), as given.
    pub vars: Vec<(String, String)>,
}

impl RawRecipient {
    /// Line `n` of a file.
    pub fn line(n: usize, value: &str) -> Self {
        Self { origin: format!("line {n}"), value: value.to_owned(), vars: Vec::new() }
    }

    /// Item `i` of a JSON `recipients` array.
    pub fn json(i: usize, value: &str) -> Self {
        Self { origin: format!("recipients[{i}]"), value: value.to_owned(), vars: Vec::new() }
    }

    /// Where one of its variables is, for error messages: `recipients[3].vars.unit`, `line 4, column unit`.
    pub fn var_origin(&self, name: &str) -> String {
        if self.origin.starts_with("recipients[") {
            format!("{}.vars.{name}", self.origin)
        } else {
            format!("{}, column {name}", self.origin)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read recipients file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("recipients file {path}: {message}")]
    Format { path: String, message: String },
}

/// Reads a recipients file. If the first line is a CSV header with a column named `phone` (any case), that column
/// is the number and every other column a variable; otherwise every non-empty line is a number. Blank lines and
/// lines starting with `#` are skipped; line numbers in errors count every line of the file.
pub fn read_file(path: &Path) -> Result<Vec<RawRecipient>, ReadError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io { path: display.clone(), source })?;
    parse(&text).map_err(|message| ReadError::Format { path: display, message })
}

pub fn parse(text: &str) -> Result<Vec<RawRecipient>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let is_csv = first.contains(',') || first.trim().eq_ignore_ascii_case("phone");
    if is_csv {
        return parse_csv(text);
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| RawRecipient::line(i + 1, l.trim()))
        .collect())
}

fn parse_csv(text: &str) -> Result<Vec<RawRecipient>, String> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| format!("cannot read the CSV header: {e}"))?.clone();
    let col = headers.iter().position(|h| h.eq_ignore_ascii_case("phone")).ok_or_else(|| {
        format!("the CSV header has no `phone` column (columns: {})", headers.iter().collect::<Vec<_>>().join(", "))
    })?;
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| format!("bad CSV: {e}"))?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.iter().all(|f| f.is_empty()) {
            continue;
        }
        let vars = headers
            .iter()
            .enumerate()
            .filter(|(i, h)| *i != col && !h.is_empty())
            .map(|(i, h)| (h.to_owned(), record.get(i).unwrap_or("").to_owned()))
            .collect();
        out.push(RawRecipient {
            origin: format!("line {line}"),
            value: record.get(col).unwrap_or("").to_owned(),
            vars,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lists_keep_file_line_numbers() {
        let r = parse("+14155552671\n\n# comment\n+14155552672\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].origin, "line 4");
    }

    #[test]
    fn csv_uses_the_phone_column_and_the_others_are_variables() {
        let r = parse("name,Phone,unit\nAda,+14155552671,4B\n\"Lee, Jo\",+14155552672,5\n").unwrap();
        assert_eq!(r.iter().map(|r| r.value.as_str()).collect::<Vec<_>>(), ["+14155552671", "+14155552672"]);
        assert_eq!(r[1].origin, "line 3");
        assert_eq!(r[1].vars, [("name".to_owned(), "Lee, Jo".to_owned()), ("unit".to_owned(), "5".to_owned())]);
        assert_eq!(r[1].var_origin("unit"), "line 3, column unit");
    }

    #[test]
    fn csv_without_a_phone_column_is_an_error() {
        assert!(parse("name,number\nAda,+1\n").unwrap_err().contains("no `phone` column"));
    }
}
