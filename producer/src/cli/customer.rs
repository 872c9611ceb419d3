//! `producer customer add` and `producer customer list`.

use std::process::ExitCode;

use clap::Subcommand;
use shared::config::Settings;
use shared::customers::{Change, Customer};
use shared::domain::CustomerId;

use super::{Failure, connect, parse_id, print_json};
use crate::ops::customers::{self, CustomerInput};

#[derive(Subcommand, Debug)]
pub enum CustomerCommand {
    /// Create a customer, or change the settings given (the others keep their stored values).
    Add(Box<AddArgs>),
    /// List customers.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    id: String,
    /// Twilio subaccount that owns this customer's numbers; `main` = the main account (TWILIO_ACCOUNT_SID,
    /// the default for a new customer).
    #[arg(long)]
    account_sid: Option<String>,
    /// Buy numbers in this area code; `any` = any US local number (the default for a new customer).
    #[arg(long)]
    area_code: Option<String>,
    /// Most numbers this customer may own (a new customer: MESSENGER_MAX_NUMBERS).
    #[arg(long)]
    max_numbers: Option<u32>,
    /// Messaging Service (`MG…`, A2P 10DLC) to attach every number of this customer to before it sends;
    /// `none` = no service (the default for a new customer).
    #[arg(long)]
    messaging_service: Option<String>,
    /// Quiet hours in the recipient's local time, e.g. `20:00-09:00`, or `off`; `default` = the fleet's
    /// (MESSENGER_QUIET_HOURS, 21:00-08:00 unless changed).
    #[arg(long)]
    quiet_hours: Option<String>,
    /// Where this customer's tenants live when their number does not say (IANA, e.g. America/New_York); quiet
    /// hours apply in it too. `none` = no default zone.
    #[arg(long)]
    time_zone: Option<String>,
    /// Look recipients' lines up (Twilio Lookup, cached 30 days) before texting them, skipping landlines and
    /// invalid numbers: `on` or `off`. Always on while a T-Mobile or AT&T cap is set.
    #[arg(long, value_parser = ["on", "off"])]
    lookup: Option<String>,
    /// The brand's T-Mobile segments per day (the day ends at midnight Pacific); `none` = no cap.
    #[arg(long)]
    tmobile_daily_cap: Option<String>,
    /// The campaign's AT&T messages per minute (75, 240, 2400, 4500 by class); `none` = no cap.
    #[arg(long)]
    att_per_minute: Option<String>,
    /// The campaign's messages per second over every carrier; `none` = no cap.
    #[arg(long)]
    per_second: Option<String>,
    /// What the customer may spend a month in dollars (texts, numbers bought, lookups at the fleet's prices, in
    /// its time zone's month): texts that would pass it wait until it is raised or the month ends; `none` = no
    /// limit.
    #[arg(long, value_name = "USD")]
    monthly_spend_limit: Option<String>,
    /// Deliverability pause: delivery reports a batch needs before the rule looks (default 50); `default` resets.
    #[arg(long, value_name = "N")]
    pause_after_reports: Option<String>,
    /// Deliverability pause: the percent of those reports with a filtering code that pauses the batch (default
    /// 10; 0 = never); `default` resets.
    #[arg(long, value_name = "PCT")]
    pause_threshold_pct: Option<String>,
    /// Deliverability pause: the Twilio codes that count as carrier filtering (default 30007,30034); `default`
    /// resets.
    #[arg(long, value_name = "CODES")]
    pause_codes: Option<String>,
    /// At most this many texts to one tenant per window, across batches: `3/24h` (urgent batches exempt); texts
    /// over it wait for the window. `none` = no cap.
    #[arg(long, value_name = "N/WINDOW")]
    max_texts_per_tenant: Option<String>,
    /// Record events for the app (`GET /v1/customers/{id}/events`): each message's outcome, replies, opt-outs,
    /// batches completed: `on` or `off`. Applies to batches created after it is turned on.
    #[arg(long, value_parser = ["on", "off"])]
    events: Option<String>,
    /// What a tenant who texts HELP or INFO is sent back (who is texting and how to stop); `none` = no answer.
    #[arg(long)]
    help_text: Option<String>,
    /// Deliver the customer's events to this https URL, signed per Standard Webhooks (turns events on); `none` =
    /// stop delivering. Private, loopback and link-local addresses are refused unless
    /// MESSENGER_EVENTS_ALLOW_PRIVATE=true.
    #[arg(long)]
    events_url: Option<String>,
    /// The signing secret (`whsec_…`); without one, a secret is generated and printed once.
    #[arg(long)]
    events_secret: Option<String>,
    /// The customer's own phrases that revoke consent in a reply, comma-separated ("no mas avisos,stop the
    /// notices"), besides Messenger's table; `none` = none.
    #[arg(long)]
    opt_out_words: Option<String>,
    /// What a reply that may revoke consent does to the tenant's texts until a person decides: `hold` (the
    /// default) or `send`.
    #[arg(long, value_parser = ["hold", "send"])]
    review_hold: Option<String>,
    /// Text only tenants with an opt-in on record (`producer consent opt-in`, or their own START): `on` or `off`.
    #[arg(long, value_parser = ["on", "off"])]
    require_consent: Option<String>,
    /// The one text confirming a revocation in words (`{name}` = --sender-name); `default` = "You won't get more
    /// texts from {name}. Reply START to resubscribe."
    #[arg(long)]
    confirmation_text: Option<String>,
    /// Who the tenant is told has stopped texting them; `none` = the customer's id.
    #[arg(long)]
    sender_name: Option<String>,
    #[arg(long)]
    json: bool,
}

/// A flag's value as a change: absent keeps the stored value, `clear_word` clears it.
fn change(value: Option<String>, clear_word: &str) -> Change<String> {
    match value {
        None => Change::Keep,
        Some(v) if v.eq_ignore_ascii_case(clear_word) => Change::Clear,
        Some(v) => Change::Set(v),
    }
}

pub async fn run(settings: Settings, command: CustomerCommand) -> Result<ExitCode, Failure> {
    match command {
        CustomerCommand::Add(args) => {
            let AddArgs {
                id,
                account_sid,
                area_code,
                max_numbers,
                messaging_service,
                quiet_hours,
                time_zone,
                lookup,
                tmobile_daily_cap,
                att_per_minute,
                per_second,
                monthly_spend_limit,
                pause_after_reports,
                pause_threshold_pct,
                pause_codes,
                max_texts_per_tenant,
                events,
                help_text,
                events_url,
                events_secret,
                opt_out_words,
                review_hold,
                require_consent,
                confirmation_text,
                sender_name,
                json,
            } = *args;
            let id = parse_id(CustomerId::parse, &id)?;
            let input = CustomerInput {
                account_sid: change(account_sid, "main"),
                area_code: change(area_code, "any"),
                max_numbers: max_numbers.map_or(Change::Keep, Change::Set),
                messaging_service_sid: change(messaging_service, "none"),
                quiet_hours: change(quiet_hours, "default"),
                time_zone: change(time_zone, "none"),
                lookup: lookup.map_or(Change::Keep, |v| Change::Set(v == "on")),
                tmobile_daily_cap: change(tmobile_daily_cap, "none"),
                att_per_minute: change(att_per_minute, "none"),
                per_second: change(per_second, "none"),
                monthly_spend_limit: change(monthly_spend_limit, "none"),
                pause_after_reports: change(pause_after_reports, "default"),
                pause_threshold_pct: change(pause_threshold_pct, "default"),
                pause_codes: change(pause_codes, "default"),
                max_texts_per_tenant: change(max_texts_per_tenant, "none"),
                events: events.map_or(Change::Keep, |v| Change::Set(v == "on")),
                help_text: change(help_text, "none"),
                events_url: change(events_url, "none"),
                events_secret: change(events_secret, "none"),
                opt_out_words: change(opt_out_words, "none"),
                review_hold: review_hold.map_or(Change::Keep, Change::Set),
                require_consent: require_consent.map_or(Change::Keep, |v| Change::Set(v == "on")),
                confirmation_text: change(confirmation_text, "default"),
                sender_name: change(sender_name, "none"),
            };
            let deps = connect(settings).await?;
            let saved = customers::save(&deps, &id, input).await?;
            for w in &saved.warnings {
                eprintln!("warning: {w}");
            }
            if json {
                let mut v = serde_json::to_value(&saved.customer).expect("serialisable");
                v["created"] = saved.created.into();
                if let Some(s) = &saved.generated_secret {
                    v["events_secret"] = s.to_string().into();
                }
                print_json(&v);
            } else {
                let verb = if saved.created { "created" } else { "updated" };
                println!("customer {id} {verb}: {}", describe(&saved.customer));
                if let Some(s) = &saved.generated_secret {
                    println!("events secret (shown this once; the app verifies signatures with it): {s}");
                }
            }
        }
        CustomerCommand::List { json } => {
            let all = customers::list(&connect(settings).await?).await?;
            if json {
                print_json(&all);
            } else {
                for c in &all {
                    println!("{}\t{}", c.id, describe(c));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of a customer's settings.
fn describe(c: &Customer) -> String {
    format!(
        "max {} numbers\tarea code {}\taccount {}\tmessaging service {}\tquiet hours {}\ttime zone {}\tlookup {}\tcaps {}\tspend limit {}/month\ttexts per tenant {}\tevents {}\thelp text {}\tconsent: reviews {}, require {}, own words {}",
        c.max_numbers,
        c.area_code.as_ref().map_or("any", |a| a.as_str()),
        c.account_sid.as_ref().map_or("(main)", |a| a.as_str()),
        c.messaging_service.as_ref().map_or("none", |s| s.as_str()),
        c.quiet_hours.map_or("the fleet's".to_owned(), |q| q.to_string()),
        c.time_zone.as_ref().map_or("none", |z| z.name()),
        if c.looks_up() { "on" } else { "off" },
        caps(&c.caps),
        c.monthly_spend_limit.map_or("none".to_owned(), |l| l.to_string()),
        c.max_texts_per_tenant.map_or("no cap".to_owned(), |f| f.to_string()),
        if c.events { "on" } else { "off" },
        if c.help_text.is_some() { "set" } else { "none" },
        c.consent.review_hold.as_str(),
        if c.consent.require_consent { "on" } else { "off" },
        c.consent.opt_out_words.len(),
    )
}

fn caps(c: &shared::carriers::Caps) -> String {
    let parts: Vec<String> = [
        c.tmobile_daily.map(|n| format!("T-Mobile {n}/day")),
        c.att_per_minute.map(|n| format!("AT&T {n}/min")),
        c.per_second.map(|n| format!("{n}/s")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() { "none".into() } else { parts.join(", ") }
}
