//! Reading recipient lists: one number per line, or CSV with a `phone` column, whose other columns are the
//! recipients' variables (merge fields such as `first_name`, `unit`; `tz` names a recipient's time zone).
//!
//! # A file cannot lie about its rows
//! Every physical line is one row, parsed on its own. CSV (RFC 4180) lets a quoted field run over line ends, and the
//! `csv` crate follows it: one unclosed quote then swallows the following rows into one value, so the first tenant
//! is texted the next tenants' numbers and names and they are never texted. Merge values are single-line by rule,
//! so a quote still open at the end of its line is refused, naming the line where it opened. A row with more or
//! fewer values than the header has columns is refused too (an unquoted comma inside a value shifts every column
//! after it). After reading, the lines are accounted for: header + rows + blank lines + comments = lines read.
//!
//! # Bounded
//! The file is read as a stream, line by line, and stops at the first bound reached, naming it: its size
//! ([`FileLimits::max_bytes`], `MESSENGER_MAX_RECIPIENTS_FILE_MB`), a line's length, the rows
//! ([`crate::validate::MAX_RECIPIENTS`]) and the columns. Only the columns the caller asks for are kept in memory
//! (a spreadsheet export may carry forty columns; a text uses two), so memory follows what will be sent.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::validate::{MAX_RECIPIENTS, MAX_VARIABLES};

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

/// The bounds a recipients file is read within.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLimits {
    /// Bytes of the whole file.
    pub max_bytes: u64,
    /// Bytes of one line (its end excluded).
    pub max_line_bytes: usize,
    /// Recipient rows.
    pub max_rows: usize,
}

impl FileLimits {
    /// The default size bound in MB: a million rows of a phone number and a few merge fields, with room to spare.
    pub const DEFAULT_MB: u64 = 256;
    /// A line of a hundred columns of ordinary values fits many times over; `/dev/zero` does not.
    pub const MAX_LINE_BYTES: usize = 64 * 1024;

    /// The defaults, with the file bound at `mb` megabytes.
    pub fn with_mb(mb: u64) -> Self {
        Self {
            max_bytes: mb.saturating_mul(1024 * 1024),
            max_line_bytes: Self::MAX_LINE_BYTES,
            max_rows: MAX_RECIPIENTS,
        }
    }
}

impl Default for FileLimits {
    fn default() -> Self {
        Self::with_mb(Self::DEFAULT_MB)
    }
}

/// Which CSV columns to keep as variables.
#[derive(Clone, Debug, Default)]
pub enum Columns {
    /// Every column (tests, and callers that do not know the template).
    #[default]
    All,
    /// Only these (the body's merge fields and `tz`); the others are read, checked for shape, and dropped.
    Only(HashSet<String>),
}

impl Columns {
    fn keeps(&self, name: &str) -> bool {
        match self {
            Columns::All => true,
            Columns::Only(names) => names.contains(name),
        }
    }
}

/// What a file held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecipientsFile {
    pub rows: Vec<RawRecipient>,
    /// The CSV header's variable columns (all of them, kept or not); empty for a plain list.
    pub columns: Vec<String>,
    /// Lines read, and of those the blank lines and `#` comments skipped.
    pub lines: usize,
    pub skipped: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read recipients file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("recipients file {path}: {message}; nothing was sent")]
    Format { path: String, message: String },
}

/// Reads a recipients file within `limits`, keeping the variable columns `columns` asks for. If the first line
/// that is not blank or a `#` comment is a CSV header with a column named `phone` (any case), that column is the
/// number and every other column a variable; otherwise every non-empty line is a number. Line numbers in errors
/// count every line of the file.
pub fn read_file(path: &Path, limits: FileLimits, columns: &Columns) -> Result<RecipientsFile, ReadError> {
    let display = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ReadError::Io { path: display.clone(), source })?;
    read(file, limits, columns).map_err(|e| match e {
        Failed::Io(source) => ReadError::Io { path: display, source },
        Failed::Format(message) => ReadError::Format { path: display, message },
    })
}

/// Reads a list held in memory (an uploaded suppression list) within `limits`; the error names the line.
pub fn read_text(text: &str, limits: FileLimits, columns: &Columns) -> Result<RecipientsFile, String> {
    match read(text.as_bytes(), limits, columns) {
        Ok(f) => Ok(f),
        Err(Failed::Format(m)) => Err(m),
        Err(Failed::Io(e)) => Err(e.to_string()),
    }
}

/// Parses a list held in memory, every column kept (tests and small inputs).
pub fn parse(text: &str) -> Result<Vec<RawRecipient>, String> {
    match read(text.as_bytes(), FileLimits::default(), &Columns::All) {
        Ok(f) => Ok(f.rows),
        Err(Failed::Format(m)) => Err(m),
        Err(Failed::Io(e)) => Err(e.to_string()),
    }
}

enum Failed {
    Io(std::io::Error),
    Format(String),
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Self {
        Failed::Io(e)
    }
}

/// What the first meaningful line said the file is.
enum Shape {
    Plain,
    Csv { phone: usize, names: Vec<String>, kept: Vec<bool> },
}

fn read(source: impl Read, limits: FileLimits, columns: &Columns) -> Result<RecipientsFile, Failed> {
    let mut reader = BufReader::with_capacity(64 * 1024, source);
    let mut buf = Vec::with_capacity(256);
    let mut out = RecipientsFile::default();
    let mut shape: Option<Shape> = None;
    let mut header_lines = 0;
    let mut bytes: u64 = 0;
    loop {
        buf.clear();
        // One more byte than a line may hold, to tell a line at the bound from one past it.
        let cap = limits.max_line_bytes as u64 + 2;
        let n = (&mut reader).take(cap).read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        out.lines += 1;
        let line_no = out.lines;
        if bytes > limits.max_bytes {
            return Err(Failed::Format(format!(
                "larger than {} MB (MESSENGER_MAX_RECIPIENTS_FILE_MB); stopped at line {line_no}",
                limits.max_bytes / (1024 * 1024)
            )));
        }
        let ended = buf.last() == Some(&b'\n');
        if ended {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        if buf.len() > limits.max_line_bytes || (!ended && n as u64 == cap) {
            return Err(Failed::Format(format!(
                "line {line_no} is longer than {} bytes (is this a recipients file?)",
                limits.max_line_bytes
            )));
        }
        let mut line = std::str::from_utf8(&buf)
            .map_err(|e| Failed::Format(format!("line {line_no} is not UTF-8 text (byte {})", e.valid_up_to() + 1)))?;
        if line_no == 1 {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if let Some((at, c)) = line.char_indices().find(|(_, c)| breaks_a_line(*c)) {
            return Err(Failed::Format(format!(
                "line {line_no} contains a control character (U+{:04X}) at byte {}: values are single-line text",
                c as u32,
                at + 1
            )));
        }
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            out.skipped += 1;
            continue;
        }
        let Some(shape) = &shape else {
            let first = line.trim();
            if first.contains(',') || first.eq_ignore_ascii_case("phone") {
                let names = split_line(line).map_err(|m| Failed::Format(format!("line {line_no}: {m}")))?;
                shape = Some(header(&names, columns, line_no).map_err(Failed::Format)?);
                out.columns = names.into_iter().filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case("phone")).collect();
                header_lines = 1;
                continue;
            }
            shape = Some(Shape::Plain);
            push(&mut out.rows, RawRecipient::line(line_no, first), limits, line_no)?;
            continue;
        };
        let row = match shape {
            Shape::Plain => RawRecipient::line(line_no, line.trim()),
            Shape::Csv { phone, names, kept } => {
                let values = split_line(line).map_err(|m| Failed::Format(format!("line {line_no}: {m}")))?;
                if values.iter().all(String::is_empty) {
                    out.skipped += 1;
                    continue;
                }
                if values.len() != names.len() {
                    return Err(Failed::Format(format!(
                        "line {line_no} has {} values but the header has {} columns{}",
                        values.len(),
                        names.len(),
                        if values.len() > names.len() {
                            " (a value with a comma must be in double quotes)"
                        } else {
                            ""
                        }
                    )));
                }
                let mut r = RawRecipient { origin: format!("line {line_no}"), value: String::new(), vars: Vec::new() };
                for (i, v) in values.into_iter().enumerate() {
                    if i == *phone {
                        r.value = v;
                    } else if kept[i] {
                        r.vars.push((names[i].clone(), v));
                    }
                }
                r
            }
        };
        push(&mut out.rows, row, limits, line_no)?;
    }
    // Every line is accounted for: a row, the header, a blank line or a comment. A disagreement is a bug here, and
    // a file is refused rather than sent on a guess.
    if header_lines + out.rows.len() + out.skipped != out.lines {
        return Err(Failed::Format(format!(
            "{} lines read but {} rows, {} header and {} blank or comment lines found",
            out.lines,
            out.rows.len(),
            header_lines,
            out.skipped
        )));
    }
    Ok(out)
}

/// A character a single line of text may not hold: controls but the tab, and Unicode's own line and paragraph
/// separators (which some phones and spreadsheets show as line breaks).
pub fn breaks_a_line(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}'
}

fn push(rows: &mut Vec<RawRecipient>, r: RawRecipient, limits: FileLimits, line_no: usize) -> Result<(), Failed> {
    if rows.len() >= limits.max_rows {
        return Err(Failed::Format(format!(
            "more than {} recipients (one request's bound); stopped at line {line_no}",
            limits.max_rows
        )));
    }
    rows.push(r);
    Ok(())
}

/// The CSV header: where `phone` is, every column's name, and which are kept.
fn header(names: &[String], columns: &Columns, line_no: usize) -> Result<Shape, String> {
    let phone = names.iter().position(|h| h.eq_ignore_ascii_case("phone")).ok_or_else(|| {
        format!("the CSV header (line {line_no}) has no `phone` column (columns: {})", names.join(", "))
    })?;
    let named: Vec<&String> = names.iter().filter(|n| !n.is_empty()).collect();
    if named.len() > MAX_VARIABLES + 1 {
        return Err(format!(
            "the CSV header (line {line_no}) has {} columns; at most {} (the phone and {MAX_VARIABLES} variables)",
            named.len(),
            MAX_VARIABLES + 1
        ));
    }
    let mut seen = HashSet::new();
    for n in &named {
        if !seen.insert(n.to_ascii_lowercase()) {
            return Err(format!("the CSV header (line {line_no}) names the column `{n}` twice"));
        }
    }
    let kept = names.iter().enumerate().map(|(i, n)| i != phone && !n.is_empty() && columns.keeps(n)).collect();
    Ok(Shape::Csv { phone, names: names.to_vec(), kept })
}

/// Splits one line of CSV into its values, trimmed of surrounding spaces. A value may be in double quotes (`""`
/// inside is one quote, commas inside are kept); the closing quote must come before the end of the line. A quote
/// inside an unquoted value is an ordinary character, as spreadsheets write them.
pub fn split_line(line: &str) -> Result<Vec<String>, String> {
    let mut values = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        // One value: skip leading blanks, then quoted or plain.
        while chars.next_if(|(_, c)| *c == ' ' || *c == '\t').is_some() {}
        let mut value = String::new();
        if let Some((opened, _)) = chars.next_if(|(_, c)| *c == '"') {
            loop {
                match chars.next() {
                    None => {
                        return Err(format!(
                            "a quoted value opens at column {} of this line and is not closed on it \
                             (values cannot span lines; is a closing quote missing?)",
                            line[..opened].chars().count() + 1
                        ));
                    }
                    Some((_, '"')) if chars.next_if(|(_, c)| *c == '"').is_some() => value.push('"'),
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                }
            }
            while chars.next_if(|(_, c)| *c == ' ' || *c == '\t').is_some() {}
            match chars.next() {
                None => {
                    values.push(value);
                    return Ok(values);
                }
                Some((_, ',')) => values.push(value),
                Some((at, _)) => {
                    return Err(format!(
                        "text after the closing quote of a value at column {} (put the whole value in the quotes)",
                        line[..at].chars().count() + 1
                    ));
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        values.push(value.trim_end().to_owned());
                        return Ok(values);
                    }
                    Some((_, ',')) => break,
                    Some((_, c)) => value.push(c),
                }
            }
            values.push(value.trim_end().to_owned());
        }
    }
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

    /// The attack: an unclosed quote on line 2 would have merged lines 3-5 into line 2's `name`.
    #[test]
    fn an_unclosed_quote_is_refused_naming_its_line_not_merged_into_the_next_rows() {
        let file = "phone,name\n+14155552681,\"Ann\n+14155552682,Bob\n+14155552683,Cy\n+14155552684,Di\n";
        let e = parse(file).unwrap_err();
        assert!(e.starts_with("line 2: a quoted value opens at column 14"), "{e}");
        // Closed on the same line, the same file is four tenants with their own names.
        let ok = parse(&file.replace("\"Ann", "\"Ann\"")).unwrap();
        assert_eq!(ok.len(), 4);
        assert_eq!(ok[0].vars, [("name".to_owned(), "Ann".to_owned())]);
    }

    #[test]
    fn rows_must_have_as_many_values_as_the_header_has_columns() {
        let e = parse("phone,name\n+14155552681,Smith, John\n").unwrap_err();
        assert!(e.contains("line 2 has 3 values but the header has 2 columns (a value with a comma"), "{e}");
        let e = parse("phone,name,unit\n+14155552681,Ann\n").unwrap_err();
        assert!(e.contains("line 2 has 2 values but the header has 3"), "{e}");
    }

    #[test]
    fn quotes_bom_crlf_blank_lines_and_comments() {
        let r = parse("\u{feff}phone,note\r\n\r\n+14155552681, \"say \"\"hi\"\", ok\" \r\n# done\r\n,\r\n").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].vars, [("note".to_owned(), "say \"hi\", ok".to_owned())]);
        assert!(parse("phone,note\n+14155552681,\"a\"b\n").unwrap_err().contains("text after the closing quote"));
        // A quote inside a plain value is a character.
        assert_eq!(parse("phone,h\n+14155552681,5'3\"\n").unwrap()[0].vars[0].1, "5'3\"");
    }

    #[test]
    fn control_characters_and_bad_encodings_are_named() {
        assert!(
            parse("phone,name\n+14155552681,A\rB\n")
                .unwrap_err()
                .contains("line 2 contains a control character (U+000D)")
        );
        assert!(parse("+14155552681\n\0\n").unwrap_err().contains("line 2 contains a control character (U+0000)"));
        assert!(parse("phone,n\n+14155552681,a\u{2028}b\n").unwrap_err().contains("(U+2028)"));
        let e = read(&b"+14155552681\n\xff\xfe\n"[..], FileLimits::default(), &Columns::All).err().unwrap();
        assert!(matches!(e, Failed::Format(m) if m.contains("line 2 is not UTF-8")));
    }

    #[test]
    fn duplicate_columns_and_too_many_columns_are_refused() {
        assert!(parse("phone,unit,Unit\n").unwrap_err().contains("names the column `Unit` twice"));
        let wide: Vec<String> = (0..=MAX_VARIABLES).map(|i| format!("c{i}")).collect();
        assert!(parse(&format!("phone,{}\n", wide.join(","))).unwrap_err().contains("columns; at most"));
    }

    #[test]
    fn reading_stops_at_the_first_bound() {
        let limits = FileLimits { max_bytes: 1024, max_line_bytes: 64, max_rows: 3 };
        let long = format!("+14155552681,{}\n", "x".repeat(100));
        let r = |s: &str| match read(s.as_bytes(), limits, &Columns::All) {
            Err(Failed::Format(m)) => m,
            _ => panic!("accepted"),
        };
        assert!(r(&format!("phone,n\n{long}")).contains("line 2 is longer than 64 bytes"));
        assert!(r("1\n2\n3\n4\n").contains("more than 3 recipients"));
        assert!(r(&"#\n".repeat(600)).contains("larger than 0 MB"));
        // An endless line without a newline (/dev/zero) stops after one line's bound.
        let zeros = std::io::repeat(0).take(1 << 30);
        assert!(matches!(read(zeros, limits, &Columns::All), Err(Failed::Format(m)) if m.contains("line 1 is longer")));
    }

    #[test]
    fn only_the_columns_asked_for_are_kept_but_all_are_listed() {
        let keep = Columns::Only(["unit".to_owned()].into());
        let f = read("phone,name,unit,notes\n+14155552681,Ann,4B,x\n".as_bytes(), FileLimits::default(), &keep)
            .ok()
            .unwrap();
        assert_eq!(f.rows[0].vars, [("unit".to_owned(), "4B".to_owned())]);
        assert_eq!(f.columns, ["name", "unit", "notes"]);
        assert_eq!((f.lines, f.skipped), (2, 0));
    }

    mod generated {
        use proptest::prelude::*;

        use super::super::*;

        /// A value as a spreadsheet might hold it: letters, digits, spaces, commas, quotes, accents.
        fn value() -> impl Strategy<Value = String> {
            proptest::string::string_regex("[a-zA-Z0-9 ,\"'éß-]{0,12}").unwrap()
        }

        /// How one value is written: quoted when it must be (a comma, a quote, spaces at either end that must stay),
        /// or always.
        fn encode(v: &str, always_quote: bool) -> String {
            if always_quote || v.contains([',', '"']) || v != v.trim() {
                format!("\"{}\"", v.replace('"', "\"\""))
            } else {
                v.to_owned()
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Well-formed files, with a BOM or not, CRLF or LF, blank lines between rows: every row is read back
            /// as exactly its own values, in order.
            #[test]
            fn well_formed_files_are_read_back_exactly(
                rows in proptest::collection::vec((0u32..10_000, value(), value(), any::<bool>(), any::<bool>()), 1..20),
                bom in any::<bool>(), crlf in any::<bool>(),
            ) {
                let nl = if crlf { "\r\n" } else { "\n" };
                let mut file = String::from(if bom { "\u{feff}phone,name,unit" } else { "phone,name,unit" });
                file.push_str(nl);
                let mut expected = Vec::new();
                for (n, name, unit, quote, blank_after) in &rows {
                    let phone = format!("+1415555{n:04}");
                    file.push_str(&format!("{},{},{}{nl}", encode(&phone, *quote), encode(name, *quote), encode(unit, false)));
                    if *blank_after {
                        file.push_str(nl);
                    }
                    expected.push((phone, name.clone(), unit.clone()));
                }
                let got = parse(&file).map_err(|e| TestCaseError::fail(format!("{e}\n{file:?}")))?;
                let got: Vec<(String, String, String)> =
                    got.into_iter().map(|r| (r.value, r.vars[0].1.clone(), r.vars[1].1.clone())).collect();
                prop_assert_eq!(got, expected);
            }

            /// Any file built from lines of CSV-ish characters (quotes, commas, line ends of both kinds, blanks):
            /// refused with a line named, or every accepted row came from its own line alone, and every line is a
            /// row, the header, blank or a comment.
            #[test]
            fn any_file_is_refused_by_line_or_read_row_by_row(
                lines in proptest::collection::vec(proptest::string::string_regex("[a1+, \"#\r]{0,10}").unwrap(), 1..12),
                crlf in any::<bool>(),
            ) {
                let nl = if crlf { "\r\n" } else { "\n" };
                let file = format!("phone,v{nl}{}", lines.join(nl));
                match parse(&file) {
                    Err(e) => prop_assert!(e.starts_with("line ") && e.contains(|c: char| c.is_ascii_digit()), "{}", e),
                    Ok(rows) => {
                        // The reader takes one CR off a line's end (CRLF); the oracle does the same.
                        let physical: Vec<&str> =
                            file.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
                        for r in &rows {
                            let n: usize = r.origin.trim_start_matches("line ").parse().unwrap();
                            let own = split_line(physical[n - 1]).unwrap();
                            prop_assert_eq!(&own[0], &r.value);
                            prop_assert_eq!(&own[1], &r.vars[0].1);
                        }
                        let data = physical[1..].iter().filter(|l| {
                            let t = l.trim();
                            !t.is_empty() && !t.starts_with('#') && split_line(l).is_ok_and(|v| v.iter().any(|x| !x.is_empty()))
                        });
                        prop_assert_eq!(data.count(), rows.len());
                    }
                }
            }
        }
    }
}
