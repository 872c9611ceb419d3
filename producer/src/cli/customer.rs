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
    Add {
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
        #[arg(long)]
        json: bool,
    },
    /// List customers.
    List {
        #[arg(long)]
        json: bool,
    },
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
        CustomerCommand::Add {
            id,
            account_sid,
            area_code,
            max_numbers,
            messaging_service,
            quiet_hours,
            time_zone,
            json,
        } => {
            let id = parse_id(CustomerId::parse, &id)?;
            let input = CustomerInput {
                account_sid: change(account_sid, "main"),
                area_code: change(area_code, "any"),
                max_numbers: max_numbers.map_or(Change::Keep, Change::Set),
                messaging_service_sid: change(messaging_service, "none"),
                quiet_hours: change(quiet_hours, "default"),
                time_zone: change(time_zone, "none"),
            };
            let deps = connect(settings).await?;
            let saved = customers::save(&deps, &id, input).await?;
            for w in &saved.warnings {
                eprintln!("warning: {w}");
            }
            if json {
                let mut v = serde_json::to_value(&saved.customer).expect("serialisable");
                v["created"] = saved.created.into();
                print_json(&v);
            } else {
                let verb = if saved.created { "created" } else { "updated" };
                println!("customer {id} {verb}: {}", describe(&saved.customer));
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
        "max {} numbers\tarea code {}\taccount {}\tmessaging service {}\tquiet hours {}\ttime zone {}",
        c.max_numbers,
        c.area_code.as_ref().map_or("any", |a| a.as_str()),
        c.account_sid.as_ref().map_or("(main)", |a| a.as_str()),
        c.messaging_service.as_ref().map_or("none", |s| s.as_str()),
        c.quiet_hours.map_or("the fleet's".to_owned(), |q| q.to_string()),
        c.time_zone.as_ref().map_or("none", |z| z.name()),
    )
}
