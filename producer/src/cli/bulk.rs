//! `producer bulk`: validate a bulk text and enqueue it, or estimate it (`--dry-run`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use shared::config::Settings;

use super::{Failure, connect, format_ms, print_json};
use crate::ops::estimate::{CarrierForecast, Estimate, Timeline};
use crate::ops::texts::{self, Accepted, Enqueue};
use crate::recipients::{self, Columns, FileLimits, RawRecipient};
use crate::validate::{BulkRequest, Expiry};

#[derive(clap::Args, Debug)]
pub struct BulkArgs {
    #[arg(long)]
    pub customer: String,
    /// The message text (up to 1,600 characters).
    #[arg(long, required_unless_present = "body_file")]
    pub body: Option<String>,
    /// Read the message text from a file.
    #[arg(long, conflicts_with = "body")]
    pub body_file: Option<PathBuf>,
    /// A recipient in E.164 form; repeat for several.
    #[arg(long = "to", required_unless_present = "recipients")]
    pub to: Vec<String>,
    /// A file with one number per line, or CSV with a `phone` column; the CSV's other columns are variables for the
    /// body's merge fields (`Hi {{first_name|there}}, unit {{unit}}`), and a `tz` column names a recipient's zone.
    #[arg(long, conflicts_with = "to")]
    pub recipients: Option<PathBuf>,
    /// Makes the request safe to resubmit: the same key returns (and completes) the same batch.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[arg(long)]
    pub json: bool,
    /// Validate and estimate only: recipients after de-duplication and opt-outs, encoding and segments, numbers to
    /// buy, and the cost. Writes nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace Unicode look-alikes (curly quotes, long dashes, non-breaking spaces, …) with GSM-7 characters, as
    /// Twilio's Smart Encoding does, and report the segments saved.
    #[arg(long)]
    pub smart_encoding: bool,
    /// Send at this time, not now: RFC 3339 with an offset (`2026-12-04T09:00:00-05:00`), up to 35 days ahead.
    #[arg(long)]
    pub send_at: Option<String>,
    /// Texts not sent within this long (`90s`, `20m`, `2h`, `1d`) end `expired`; Twilio is told the time left.
    #[arg(long)]
    pub expires_in: Option<String>,
    /// Send whatever the hour in the recipients' zones (a burst pipe at 2 a.m.): quiet hours do not apply.
    #[arg(long)]
    pub urgent: bool,
    /// A name people find the batch by ("Water shut-off, building 4"): one line, at most 200 characters.
    #[arg(long)]
    pub label: Option<String>,
    /// The largest recipients file read, in MB; reading stops at the first bound reached (this, a line of 64 KiB,
    /// 1,000,000 rows, 51 columns), naming it.
    #[arg(long, env = "MESSENGER_MAX_RECIPIENTS_FILE_MB", default_value_t = FileLimits::DEFAULT_MB)]
    pub max_recipients_file_mb: u64,
    /// Jobs per Redis round trip while enqueuing.
    #[arg(long, default_value_t = 1_000, hide = true)]
    pub chunk_size: usize,
}

/// The request as the flags and files give it.
fn request(args: &BulkArgs) -> Result<BulkRequest, Failure> {
    let body = match (&args.body, &args.body_file) {
        (Some(b), _) => b.clone(),
        (None, Some(p)) => read_body(p)?,
        (None, None) => return Err(Failure::Usage("--body or --body-file is required".into())),
    };
    let (recipients, columns) = match &args.recipients {
        Some(path) => {
            let limits = FileLimits::with_mb(args.max_recipients_file_mb);
            let file = recipients::read_file(path, limits, &used_columns(&body, args.smart_encoding))
                .map_err(|e| Failure::Usage(e.to_string()))?;
            if !args.json && !args.dry_run {
                eprintln!(
                    "read {} recipient rows from the {} lines of {} (the others: header, blank lines, comments)",
                    file.rows.len(),
                    file.lines,
                    path.display(),
                );
            }
            (file.rows, file.columns)
        }
        None => (
            args.to
                .iter()
                .enumerate()
                .map(|(i, v)| RawRecipient { origin: format!("--to #{}", i + 1), value: v.clone(), vars: Vec::new() })
                .collect(),
            Vec::new(),
        ),
    };
    Ok(BulkRequest {
        customer: args.customer.clone(),
        body,
        recipients,
        columns,
        idempotency_key: args.idempotency_key.clone(),
        smart_encoding: args.smart_encoding,
        send_at: args.send_at.clone(),
        expiry: args.expires_in.clone().map(Expiry::In),
        urgent: args.urgent,
        label: args.label.clone(),
    })
}

/// The variables worth keeping from a file: the body's merge fields and the recipient's zone. A body that does
/// not parse keeps every column (validation then names what is wrong with the body).
fn used_columns(body: &str, smart: bool) -> Columns {
    let body = if smart { shared::domain::smart::smart_encode(body).0 } else { body.to_owned() };
    match shared::domain::Template::parse(&body) {
        Ok(t) => {
            let mut names: std::collections::HashSet<String> =
                t.fields().into_iter().map(|(n, _)| n.to_owned()).collect();
            names.insert(shared::quiet::TZ_VARIABLE.to_owned());
            Columns::Only(names)
        }
        Err(_) => Columns::All,
    }
}

/// Most bytes of a `--body-file`: a text is at most 1,600 characters (6,400 bytes of UTF-8); a template's merge
/// fields add little. A larger file is not a message.
const MAX_BODY_FILE_BYTES: u64 = 64 * 1024;

fn read_body(path: &std::path::Path) -> Result<String, Failure> {
    use std::io::Read;
    let cannot = |e: std::io::Error| Failure::Usage(format!("cannot read {}: {e}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path).map_err(cannot)?.take(MAX_BODY_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > MAX_BODY_FILE_BYTES {
        return Err(Failure::Usage(format!(
            "--body-file {}: larger than {} KiB; a text is at most 1,600 characters",
            path.display(),
            MAX_BODY_FILE_BYTES / 1024
        )));
    }
    String::from_utf8(bytes).map_err(|_| Failure::Usage(format!("--body-file {}: not UTF-8 text", path.display())))
}

pub async fn run(settings: Settings, args: BulkArgs) -> Result<ExitCode, Failure> {
    // Validation first: bad input is reported before (and without) touching Redis.
    let prepared = texts::prepare(&request(&args)?)?;
    let deps = connect(settings).await?;
    if args.dry_run {
        let e = texts::estimate(&deps, &prepared).await?;
        if args.json {
            print_json(&e)
        } else {
            print_estimate(&e)
        }
        return Ok(ExitCode::SUCCESS);
    }
    let total = prepared.batch.recipients.len();
    let bar = (total >= 10_000 && std::io::stderr().is_terminal() && !args.json).then(|| {
        let b = ProgressBar::new(total as u64);
        b.set_style(ProgressStyle::with_template("enqueuing {bar:40} {pos}/{len} ({per_sec})").expect("template"));
        b
    });
    let mut progress = |done: usize, _total: usize| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    };
    let how = Enqueue { chunk_size: args.chunk_size, ..Enqueue::BULK };
    let accepted = texts::enqueue(&deps, prepared, how, Some(&mut progress)).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        print_json(&accepted)
    } else {
        print_accepted(&accepted)
    }
    Ok(ExitCode::SUCCESS)
}

fn print_accepted(a: &Accepted) {
    println!("batch {}", a.batch_id);
    println!("  accepted {} recipients, {} duplicates removed", a.accepted, a.duplicates);
    if let Some(s) = &a.smart_encoding {
        println!(
            "  smart encoding: {} {} -> {} {} segment(s) per message; saves {} segments",
            s.encoding_before,
            s.segments_before,
            s.encoding_after,
            s.segments_after,
            s.saved() as u64 * a.accepted as u64
        );
    }
    if a.existing {
        println!(
            "  (idempotency key already used: this is the existing batch; {} jobs were enqueued now)",
            a.enqueued_now
        );
    }
    println!("  follow it with: producer status {} --wait", a.batch_id);
}

fn print_estimate(e: &Estimate) {
    println!("dry run for {}: nothing was written", e.customer);
    println!(
        "  recipients: {} submitted, {} duplicates, {} opted out{} -> {} to text",
        e.recipients_submitted,
        e.duplicates,
        e.opted_out,
        if e.without_consent > 0 {
            format!(", {} without consent on record", e.without_consent)
        } else {
            String::new()
        },
        e.recipients
    );
    if e.under_review > 0 {
        println!("    {} under review (a reply that may revoke consent): held until a person decides", e.under_review);
    }
    for w in &e.warnings {
        println!("  warning: {w}");
    }
    if e.segments_min == e.segments_per_message {
        println!(
            "  body: {} characters, {}, {} segment(s) per message",
            e.characters, e.encoding, e.segments_per_message
        );
    } else {
        println!(
            "  body: {} characters (a template), {}, {} to {} segments per message, {} in all",
            e.characters, e.encoding, e.segments_min, e.segments_per_message, e.segments_total
        );
    }
    for (name, n) in &e.ucs2_variables {
        println!("    {{{{{name}}}}} forces UCS-2 for {n} recipient(s)");
    }
    for (name, n) in &e.segment_variables {
        println!("    {{{{{name}}}}} adds a segment for {n} recipient(s)");
    }
    if !e.ucs2_characters.is_empty() {
        println!("    characters that force UCS-2: {}", e.ucs2_characters.join(", "));
    }
    match &e.smart_encoding {
        Some(s) => println!(
            "  smart encoding: {} {} -> {} {} segment(s) per message ({} replaced: {}); saves {} segments",
            s.encoding_before,
            s.segments_before,
            s.encoding_after,
            s.segments_after,
            s.replaced.len(),
            s.replaced.join(", "),
            s.saved() as u64 * e.recipients as u64
        ),
        None if !e.ucs2_characters.is_empty() => {
            println!("    (--smart-encoding replaces look-alikes such as curly quotes and long dashes with GSM-7)")
        }
        None => {}
    }
    let waiting = if e.deferred > 0 {
        format!("; {} recipients would wait for the next window", e.deferred)
    } else {
        String::new()
    };
    println!(
        "  numbers: {} owned with {} free slot(s); this send needs {}; would buy {} (max {}){waiting}",
        e.numbers_owned, e.slots_available, e.numbers_needed, e.purchases, e.max_numbers,
    );
    println!(
        "  estimated cost: {} segments x ${} = ${:.2}, plus ${:.2} a month for {} new number(s)",
        e.segments_total, e.segment_cost, e.messages_cost, e.numbers_monthly_cost, e.purchases
    );
    match (e.monthly_spend_limit, e.fits_under_limit) {
        (Some(limit), Some(fits)) => println!(
            "  spend: about ${:.2} in all; ${:.2} of the ${limit:.2} monthly limit spent in {}: {}",
            e.total_cost,
            e.spend_this_month,
            e.spend_month,
            if fits { "it fits" } else { "it does NOT fit (the texts beyond the limit would wait)" }
        ),
        _ => println!(
            "  spend: about ${:.2} in all; ${:.2} spent in {} (no monthly limit)",
            e.total_cost, e.spend_this_month, e.spend_month
        ),
    }
    print_timeline(&e.timeline);
    if let Some(c) = &e.carriers {
        print_carriers(c);
    }
}

fn print_carriers(c: &CarrierForecast) {
    let lines: Vec<String> = c.by_line.iter().map(|(l, n)| format!("{n} {l}")).collect();
    println!("  carriers: {}", lines.join(", "));
    if c.lookups_needed > 0 {
        println!("    {} lookup(s) needed, about ${:.2}", c.lookups_needed, c.lookups_cost);
    }
    if c.carrier_fees_cost > 0.0 {
        println!("    carriers' surcharges on the lines looked up: about ${:.2}", c.carrier_fees_cost);
    }
    if c.unreachable > 0 {
        println!("    {} landline(s) or invalid number(s) would fail without a send", c.unreachable);
    }
    if let (Some(today), Some(after), Some(ends)) = (c.tmobile_today, c.tmobile_after, c.tmobile_day_ends_ms) {
        println!("    T-Mobile: {today} today, {after} after the brand's day ends at {}", format_ms(ends));
    }
    if let Some(m) = c.att_minutes {
        println!("    AT&T: spread over about {m} minute(s) by its per-minute cap");
    }
    if let Some(m) = c.per_second_minutes {
        println!("    the per-second cap spreads the batch over about {m} minute(s)");
    }
}

fn print_timeline(t: &Timeline) {
    let when = if t.starts_ms > t.now_ms { format!("at {}", format_ms(t.starts_ms)) } else { "now".to_owned() };
    let quiet = match (&t.quiet_hours, t.urgent) {
        (_, true) => "urgent: quiet hours do not apply".to_owned(),
        (Some(q), _) => format!("quiet hours {q} in each recipient's zone"),
        (None, _) => "quiet hours off".to_owned(),
    };
    println!("  timeline ({quiet}):");
    println!("    {} can be texted {when}", t.sendable_at_start);
    for g in &t.quiet {
        println!("    {} wait for quiet hours to end in {} until {}", g.recipients, g.zone, format_ms(g.until_ms));
    }
    if t.beyond_capacity > 0 {
        println!(
            "    {} wait for the pool's next window (beyond its free slots and the numbers it may buy)",
            t.beyond_capacity
        );
    }
    if let Some(e) = t.expires_at_ms {
        println!("    expires {}: {} would expire unsent", format_ms(e), t.would_expire);
    }
}
