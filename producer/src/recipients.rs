//! Reading recipient lists: one number per line, or CSV with a `phone` column.

use std::path::Path;

/// A recipient as written by the caller, with where it came from (for error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecipient {
    /// Where it came from, used as the field name in errors: "line 17", "--to #3", "recipients[4]".
    pub origin: String,
    pub value: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read recipients file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("recipients file {path}: {message}")]
    Format { path: String, message: String },
}

/// Reads a recipients file. If the first line is a CSV header with a column named `phone` (any case), that column
/// is used; otherwise every non-empty line is a number. Blank lines and lines starting with `#` are skipped; line
/// numbers in errors count every line of the file.
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
        .map(|(i, l)| RawRecipient { origin: format!("line {}", i + 1), value: l.trim().to_owned() })
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
        let value = record.get(col).unwrap_or("").to_owned();
        if record.iter().all(|f| f.is_empty()) {
            continue;
        }
        out.push(RawRecipient { origin: format!("line {line}"), value });
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
    fn csv_uses_the_phone_column() {
        let r = parse("name,Phone,unit\nAda,+14155552671,4B\n\"Lee, Jo\",+14155552672,5\n").unwrap();
        assert_eq!(r.iter().map(|r| r.value.as_str()).collect::<Vec<_>>(), ["+14155552671", "+14155552672"]);
        assert_eq!(r[1].origin, "line 3");
    }

    #[test]
    fn csv_without_a_phone_column_is_an_error() {
        assert!(parse("name,number\nAda,+1\n").unwrap_err().contains("no `phone` column"));
    }
}
