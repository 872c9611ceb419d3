//! The `producer` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shared::batches::{self, BatchStatus};
use shared::config::{CommonArgs, Settings};
use shared::customers::{self, Customer};
use shared::domain::{AccountSid, BatchId, CustomerId, PhoneNumber, ServiceSid};
use shared::ledger::{Inbound, Ledger};
use shared::store::{self, Conn};

use crate::enqueue;
use crate::recipients::{self, RawRecipient};
use crate::validate::BulkRequest;

/// Enqueues bulk texts for Messenger's workers and reports on them.
#[derive(Parser, Debug)]
#[command(name = "producer", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage customers.
    #[command(subcommand)]
    Customer(CustomerCommand),
    /// Validate a bulk text and enqueue one job per distinct recipient.
    Bulk(BulkArgs),
    /// Show a batch's counts per state.
    Status {
        batch: String,
        #[arg(long)]
        json: bool,
        /// Show a progress bar until every job is terminal.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 1).
        #[arg(long, requires = "wait")]
        timeout: Option<u64>,
        /// Also list the recipients that failed and why.
        #[arg(long)]
        failures: bool,
    },
    /// Show a customer's numbers (sent / limit in the current window, last send, monthly cost), or release idle
    /// ones (`pool release-idle`).
    Pool(PoolArgs),
    /// Cancel a batch: queued and parked jobs end as cancelled; in-flight sends finish.
    Cancel { batch: String },
    /// Record a message received on one of a customer's numbers (+1 to its limit for one window, up to the cap).
    /// Twilio's inbound webhook does this automatically; this is for operators and tests.
    Inbound {
        #[arg(long)]
        customer: String,
        /// The customer's number that received the message.
        #[arg(long)]
        number: String,
        /// The inbound message's sid (repeats are counted once).
        #[arg(long)]
        sid: Option<String>,
    },
    /// Store this process's quota settings as the fleet's (after changing them on purpose).
    Settings {
        #[arg(long)]
        apply: bool,
    },
    /// Serve the HTTP API (`/v1`), Twilio's webhooks, `/healthz`, `/metrics` and `/openapi.json`.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the address is printed on stdout).
    #[arg(long, env = "MESSENGER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The public base URL Twilio reaches this server at (`https://messenger.example.com`). Webhook signatures are
    /// computed over it, so behind a proxy it must be the outside URL, not the listening address.
    #[arg(long, env = "MESSENGER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// API tokens, `NAME:TOKEN:SCOPE` separated by commas; SCOPE is `admin` or customer ids joined by `+`.
    #[arg(long, env = "MESSENGER_API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<String>,
    /// A file of API tokens, one `NAME:TOKEN:SCOPE` per line (`#` comments).
    #[arg(long, env = "MESSENGER_API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,
    /// Key of the dashboard's session cookies and CSRF tokens (at least 32 characters). Give every `producer serve`
    /// behind one address the same one; when unset, a random key is used and sessions end with the process.
    #[arg(long, env = "MESSENGER_DASHBOARD_SECRET", hide_env_values = true)]
    pub dashboard_secret: Option<String>,
    /// Show phone numbers in full on the dashboard to customer-scoped tokens too (admins always see them).
    #[arg(long, env = "MESSENGER_DASHBOARD_SHOW_NUMBERS", default_value_t = false, action = clap::ArgAction::Set)]
    pub dashboard_show_numbers: bool,
    /// How long a subaccount's auth token (read from Twilio to verify its webhooks) is used before it is read again.
    #[arg(long, env = "MESSENGER_SUBACCOUNT_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub subaccount_token_ttl_secs: u64,
    /// Least time between two look-ups of one subaccount's token (after a webhook fails verification, the token is
    /// read again in case it was rotated): bounds what a flood of forged webhooks can cost.
    #[arg(long, env = "MESSENGER_SUBACCOUNT_TOKEN_REFRESH_SECS", default_value_t = 30)]
    pub subaccount_token_refresh_secs: u64,
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PoolArgs {
    #[command(subcommand)]
    pub action: Option<PoolCommand>,
    #[arg(required = true)]
    pub customer: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// Release numbers that sent nothing for `--idle-days` (Twilio DELETE), keeping what the customer's backlog and
    /// its numbers' sticky recipients need and never a number with a send in progress.
    ReleaseIdle {
        customer: String,
        /// Days without a send (fractions allowed; 0 = any number that is not busy).
        #[arg(long, default_value_t = 30.0)]
        idle_days: f64,
        /// Only list what would be released; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CustomerCommand {
    /// Create or update a customer.
    Add {
        id: String,
        /// Twilio subaccount that owns this customer's numbers (default: TWILIO_ACCOUNT_SID).
        #[arg(long)]
        account_sid: Option<String>,
        /// Buy numbers in this area code (default: any US local number).
        #[arg(long)]
        area_code: Option<String>,
        /// Most numbers this customer may own (default: MESSENGER_MAX_NUMBERS).
        #[arg(long)]
        max_numbers: Option<u32>,
        /// Messaging Service (`MG…`, A2P 10DLC) to attach every number of this customer to before it sends.
        #[arg(long)]
        messaging_service: Option<String>,
    },
    /// List customers.
    List {
        #[arg(long)]
        json: bool,
    },
}

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
    /// A file with one number per line, or CSV with a `phone` column.
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
    /// Jobs per Redis round trip while enqueuing.
    #[arg(long, default_value_t = 1_000, hide = true)]
    pub chunk_size: usize,
}

/// A failure that decides the exit code: 2 = the request was wrong (nothing changed), 1 = could not do it.
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Runtime(String),
}

impl<E: std::error::Error + 'static> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Runtime(shared::telemetry::cause_chain(&e))
    }
}

pub async fn main(cli: Cli) -> ExitCode {
    match run(cli).await {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
    }
}

/// Connects for a one-shot command. A configuration problem (refused credentials, an untrusted certificate) is a
/// usage error naming the setting to fix (exit 2); Redis being down is a runtime error (exit 1).
async fn connect(settings: &Settings) -> Result<Conn, Failure> {
    // Long enough to ride out a cluster failover (a few seconds) or a Redis restart.
    let give_up = Duration::from_secs(30);
    store::connect_with_retry(&settings.redis, give_up).await.map_err(|e| {
        match store::config_problem(&e, &settings.redis) {
            Some(problem) => Failure::Usage(problem),
            None => Failure::Runtime(format!("cannot connect to Redis: {e}")),
        }
    })
}

pub async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let settings = cli.common.settings().map_err(|e| Failure::Usage(e.to_string()))?;
    match cli.command {
        Command::Customer(CustomerCommand::Add { id, account_sid, area_code, max_numbers, messaging_service }) => {
            let id = CustomerId::parse(&id).map_err(|e| Failure::Usage(e.to_string()))?;
            let account_sid =
                account_sid.map(|a| AccountSid::parse(&a)).transpose().map_err(|e| Failure::Usage(e.to_string()))?;
            let area_code = area_code.map(|a| customers::parse_area_code(&a)).transpose().map_err(Failure::Usage)?;
            let max_numbers = max_numbers.unwrap_or(settings.default_max_numbers);
            if max_numbers == 0 {
                return Err(Failure::Usage("--max-numbers must be at least 1".into()));
            }
            let messaging_service = messaging_service
                .map(|s| ServiceSid::parse(&s))
                .transpose()
                .map_err(|e| Failure::Usage(format!("--messaging-service: {e}")))?;
            if account_sid.is_some() && messaging_service.is_some() {
                return Err(Failure::Usage(
                    "--messaging-service with --account-sid is not supported yet: Messenger manages Messaging \
                     Services with the main account's credentials, and Twilio lets those reach only the main \
                     account's services"
                        .into(),
                ));
            }
            if let Some(account) = &account_sid {
                check_account(&settings, account).await?;
            }
            if let Some(service) = &messaging_service {
                check_service(&settings, service).await?;
            }
            let mut conn = connect(&settings).await?;
            let customer = Customer { id: id.clone(), account_sid, area_code, max_numbers, messaging_service };
            let created = customers::upsert(&mut conn, &customer).await?;
            println!("customer {id} {} (max {max_numbers} numbers)", if created { "created" } else { "updated" });
        }
        Command::Customer(CustomerCommand::List { json }) => {
            let mut conn = connect(&settings).await?;
            let mut all = Vec::new();
            for id in customers::list(&mut conn).await? {
                if let Some(c) = customers::get(&mut conn, &id).await? {
                    all.push(c);
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all).unwrap());
            } else {
                for c in all {
                    println!(
                        "{}\tmax {} numbers\tarea code {}\taccount {}",
                        c.id,
                        c.max_numbers,
                        c.area_code.as_deref().unwrap_or("any"),
                        c.account_sid.as_ref().map(|a| a.as_str()).unwrap_or("(main)")
                    );
                }
            }
        }
        Command::Bulk(args) => return bulk(&settings, args).await,
        Command::Status { batch, json, wait, timeout, failures } => {
            let id = BatchId::parse(&batch).map_err(|e| Failure::Usage(e.to_string()))?;
            let mut conn = connect(&settings).await?;
            let status = if wait {
                wait_for(&mut conn, &id, timeout.map(Duration::from_secs), json).await?
            } else {
                read_status(&mut conn, &id).await?
            };
            let failed_list = if failures { Some(batches::failures(&mut conn, &id).await?) } else { None };
            if json {
                let mut v = serde_json::to_value(&status).unwrap();
                v["pending"] = status.pending().into();
                if let Some(f) = failed_list {
                    v["failed_recipients"] = serde_json::to_value(f).unwrap();
                }
                println!("{}", serde_json::to_string_pretty(&v).unwrap());
            } else {
                print_status(&status);
                if let Some(f) = failed_list {
                    for (to, why) in f {
                        println!("  failed {to}: {why}");
                    }
                }
            }
            if wait && !status.is_complete() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Pool(PoolArgs {
            action: Some(PoolCommand::ReleaseIdle { customer, idle_days, dry_run, json }),
            ..
        }) => {
            return release_idle(&settings, &customer, idle_days, dry_run, json).await;
        }
        Command::Pool(PoolArgs { action: None, customer, json }) => {
            let customer = customer.unwrap_or_default();
            let id = CustomerId::parse(&customer).map_err(|e| Failure::Usage(e.to_string()))?;
            let mut conn = connect(&settings).await?;
            let report = customers::pool(&mut conn, &id, &settings.quota)
                .await?
                .ok_or_else(|| Failure::Usage(format!("unknown customer {id}")))?
                .with_cost(settings.pricing.number_monthly);
            if json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap());
            } else {
                println!(
                    "customer {}: {} of {} numbers; window {}s, quota {} per number (+1 per reply, cap {})",
                    report.customer,
                    report.numbers.len(),
                    report.max_numbers,
                    report.window_secs,
                    report.daily_quota,
                    report.conversational_cap
                );
                println!("  {:<16} {:>6} {:>6} {:>6} {:>9}  LAST SEND", "NUMBER", "SENT", "RECV", "LIMIT", "AVAILABLE");
                for n in &report.numbers {
                    println!(
                        "  {:<16} {:>6} {:>6} {:>6} {:>9}  {}",
                        n.number,
                        n.sent,
                        n.received,
                        n.limit,
                        n.available,
                        n.last_send_ms.map(format_ms).unwrap_or_else(|| "never".into())
                    );
                }
                println!(
                    "  available now: {}; purchases in flight: {}; releases in flight: {}",
                    report.total_available(),
                    report.pending_purchases,
                    report.pending_releases
                );
                println!(
                    "  monthly cost: ${:.2} ({} numbers at ${:.2}){}",
                    report.monthly_cost.unwrap_or_default(),
                    report.numbers.len(),
                    settings.pricing.number_monthly,
                    report.messaging_service_sid.map(|s| format!("; messaging service {s}")).unwrap_or_default()
                );
            }
        }
        Command::Cancel { batch } => {
            let id = BatchId::parse(&batch).map_err(|e| Failure::Usage(e.to_string()))?;
            let mut conn = connect(&settings).await?;
            match batches::cancel(&mut conn, &id, settings.batch_retention).await? {
                batches::CancelOutcome::Cancelled { cancelled_now } => {
                    println!(
                        "batch {id} cancelled ({cancelled_now} parked jobs ended now; queued ones end as workers reach them)"
                    )
                }
                batches::CancelOutcome::AlreadyComplete => {
                    println!("batch {id} is already complete")
                }
                batches::CancelOutcome::NotFound => {
                    return Err(Failure::Usage(format!("unknown batch {id}")));
                }
            }
        }
        Command::Inbound { customer, number, sid } => {
            let id = CustomerId::parse(&customer).map_err(|e| Failure::Usage(e.to_string()))?;
            let number = PhoneNumber::from_trusted(&number).map_err(|e| Failure::Usage(format!("--number: {e}")))?;
            let sid = sid.unwrap_or_else(|| format!("SM{}", ulid::Ulid::new().to_string().to_ascii_lowercase()));
            let conn = connect(&settings).await?;
            let ledger = Ledger::new(conn, settings.quota, settings.batch_retention);
            match ledger.record_inbound(&id, number.as_str(), &sid).await? {
                Inbound::Credited { received_in_window } | Inbound::Duplicate { received_in_window } => {
                    println!("{} received {received_in_window} messages in the current window", number.masked())
                }
                Inbound::UnknownNumber => {
                    return Err(Failure::Usage(format!("{number} is not one of {id}'s numbers")));
                }
            }
        }
        Command::Serve(args) => return serve(settings, args).await,
        Command::Settings { apply } => {
            let mut conn = connect(&settings).await?;
            match store::ensure_fleet_settings(&mut conn, &settings.quota, apply).await {
                Ok(()) => println!(
                    "fleet quota settings: window {}s, quota {}, cap {}",
                    settings.quota.window.as_secs(),
                    settings.quota.daily_quota,
                    settings.quota.conversational_cap
                ),
                Err(e) => return Err(Failure::Usage(e.to_string())),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks with Twilio that `account` is a subaccount of `TWILIO_ACCOUNT_SID` (or that account itself). A definite
/// "no" is a usage error; when Twilio cannot be asked, says so and lets the caller go on.
async fn check_account(settings: &Settings, account: &AccountSid) -> Result<(), Failure> {
    use shared::twilio::accounts::{TokenError, check_subaccount};
    let Ok(client) = shared::twilio::TwilioClient::new(&settings.twilio) else {
        eprintln!(
            "note: {account} not checked with Twilio (TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not both set)"
        );
        return Ok(());
    };
    match check_subaccount(&client, account).await {
        Ok(a) if a.sid.as_deref() == Some(client.account().as_str()) => Ok(()),
        Ok(a) => {
            if a.status.as_deref() == Some("suspended") {
                eprintln!("warning: subaccount {account} is suspended: Twilio will refuse its sends until reactivated");
            }
            Ok(())
        }
        Err(TokenError::NotOurs(_)) => Err(Failure::Usage(format!(
            "--account-sid {account} is not an active subaccount of TWILIO_ACCOUNT_SID {}: Twilio does not list it \
             under that account (check the sid, or create it under this account first)",
            client.account()
        ))),
        Err(e) => {
            eprintln!("warning: {e}; storing the account without checking it");
            Ok(())
        }
    }
}

/// Checks with Twilio that the Messaging Service exists in the main account. A definite "no" is a usage error;
/// when Twilio cannot be asked, says so and lets the caller go on.
async fn check_service(settings: &Settings, service: &ServiceSid) -> Result<(), Failure> {
    let Ok(client) = shared::twilio::TwilioClient::new(&settings.twilio) else {
        eprintln!(
            "note: {service} not checked with Twilio (TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not both set)"
        );
        return Ok(());
    };
    match client.fetch_service(service.as_str()).await {
        Ok(_) => Ok(()),
        Err(shared::twilio::TwilioError::Api { status: 404, .. }) => Err(Failure::Usage(format!(
            "--messaging-service {service}: Twilio has no such Messaging Service in account {}",
            client.account()
        ))),
        Err(e) => {
            eprintln!("warning: could not check {service} with Twilio ({}); storing it unchecked", e.short_reason());
            Ok(())
        }
    }
}

/// A Redis time (ms) as a UTC timestamp.
fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

async fn release_idle(
    settings: &Settings,
    customer: &str,
    idle_days: f64,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode, Failure> {
    let id = CustomerId::parse(customer).map_err(|e| Failure::Usage(e.to_string()))?;
    if !(0.0..=3650.0).contains(&idle_days) {
        return Err(Failure::Usage(format!("--idle-days must be between 0 and 3650, not {idle_days}")));
    }
    let twilio = shared::twilio::TwilioClient::new(&settings.twilio).ok();
    if twilio.is_none() && !dry_run {
        return Err(Failure::Usage(
            "releasing numbers calls Twilio: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or use --dry-run)".into(),
        ));
    }
    let mut conn = connect(settings).await?;
    let customer =
        customers::get(&mut conn, &id).await?.ok_or_else(|| Failure::Usage(format!("unknown customer {id}")))?;
    let idle = Duration::from_secs_f64(idle_days * 86_400.0);
    let lock_ttl = Duration::from_secs(10);
    let report = shared::release::release_idle(
        &mut conn,
        twilio.as_ref(),
        &customer,
        &settings.quota,
        shared::release::ReleaseOptions { idle, dry_run, lock_ttl, acks: settings.redis.acks },
    )
    .await
    .map_err(|e| match e {
        shared::release::ReleaseError::Busy(_) => Failure::Runtime(e.to_string()),
        shared::release::ReleaseError::Redis(e) => Failure::from(e),
    })?;
    let saved = report.released.len() as f64 * settings.pricing.number_monthly;
    if json {
        let mut v = serde_json::to_value(&report).unwrap();
        v["monthly_saving"] = ((saved * 100.0).round() / 100.0).into();
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
    } else {
        let verb = if dry_run { "would release" } else { "released" };
        println!(
            "customer {id}: {verb} {} number(s) idle for {idle_days} day(s) or more; keeps {} (backlog: {} jobs); \
             saves ${saved:.2} a month",
            report.released.len(),
            report.kept,
            report.backlog
        );
        for n in &report.released {
            println!(
                "  {:<16} {}  last send {}",
                n.number,
                n.sid,
                n.last_send_ms.map(format_ms).unwrap_or_else(|| "never".into())
            );
        }
        if !report.pending.is_empty() {
            println!(
                "  {} number(s) left the pool but Twilio did not confirm the release yet; workers will finish it",
                report.pending.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(settings: Settings, args: ServeArgs) -> Result<ExitCode, Failure> {
    use crate::server::{AppState, Limits, TokenPolicy, auth::Tokens};
    let mut spec = args.api_tokens.unwrap_or_default();
    if let Some(path) = &args.api_tokens_file {
        let file = std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
        spec.push('\n');
        spec.push_str(&file);
    }
    let tokens = Tokens::parse(&spec).map_err(Failure::Usage)?;
    if tokens.is_empty() {
        tracing::warn!("no API tokens configured (MESSENGER_API_TOKENS or MESSENGER_API_TOKENS_FILE): /v1 answers 401");
    }
    let public_url = match args.public_url {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => Some(u.trim_end_matches('/').into()),
        Some(u) => return Err(Failure::Usage(format!("MESSENGER_PUBLIC_URL {u:?} must be an http(s) URL"))),
        None => None,
    };
    if public_url.is_none() || settings.twilio.auth_token.is_none() {
        tracing::warn!("webhooks disabled: they need MESSENGER_PUBLIC_URL and TWILIO_AUTH_TOKEN");
    }
    // A server waits for Redis (a cluster mid-failover, a node restarting) rather than exit; only a configuration
    // problem stops it.
    let conn = loop {
        match store::connect_with_retry(&settings.redis, Duration::from_secs(60)).await {
            Ok(c) => break c,
            Err(e) => {
                if let Some(problem) = store::config_problem(&e, &settings.redis) {
                    return Err(Failure::Usage(problem));
                }
                tracing::warn!(error.message = %e, "redis still not reachable; the server keeps waiting for it");
            }
        }
    };
    let policy = TokenPolicy {
        ttl: Duration::from_secs(args.subaccount_token_ttl_secs.max(1)),
        refresh_every: Duration::from_secs(args.subaccount_token_refresh_secs),
    };
    let acked = match settings.redis.acks {
        Some(_) => Some(store::connect_with_retry(&settings.redis, Duration::from_secs(60)).await.map_err(|e| {
            Failure::Runtime(format!("cannot open the connection for replica-acknowledged enqueues: {e}"))
        })?),
        None => None,
    };
    let dashboard =
        crate::server::dashboard::DashboardConfig::new(args.dashboard_secret.as_deref(), args.dashboard_show_numbers)
            .map_err(Failure::Usage)?;
    let mut state =
        AppState::new(conn, settings, tokens, public_url, Limits::default(), policy).with_dashboard(dashboard);
    if let Some(c) = acked {
        state = state.with_acked_conn(c);
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Failure::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr().map_err(Failure::from)?;
    println!("producer listening on http://{addr}");
    tracing::info!(%addr, "producer serving");
    crate::server::serve(listener, state, shared::telemetry::shutdown_signal()).await.map_err(Failure::from)?;
    Ok(ExitCode::SUCCESS)
}

async fn bulk(settings: &Settings, args: BulkArgs) -> Result<ExitCode, Failure> {
    let body = match (&args.body, &args.body_file) {
        (Some(b), _) => b.clone(),
        (None, Some(p)) => {
            std::fs::read_to_string(p).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", p.display())))?
        }
        (None, None) => return Err(Failure::Usage("--body or --body-file is required".into())),
    };
    let raw = match &args.recipients {
        Some(path) => recipients::read_file(path).map_err(|e| Failure::Usage(e.to_string()))?,
        None => args
            .to
            .iter()
            .enumerate()
            .map(|(i, v)| RawRecipient { origin: format!("--to #{}", i + 1), value: v.clone() })
            .collect(),
    };
    let request = BulkRequest {
        customer: args.customer.clone(),
        body,
        recipients: raw,
        idempotency_key: args.idempotency_key.clone(),
        smart_encoding: args.smart_encoding,
    };
    // Validation first: bad input is reported before (and without) touching Redis.
    let batch = enqueue::prepare(&request, false).map_err(|e| Failure::Usage(e.to_string()))?;
    let smart = request.smart_report();
    let mut conn = connect(settings).await?;
    if args.dry_run {
        let e = crate::estimate::estimate(&mut conn, &batch, smart, settings).await.map_err(|e| match e {
            crate::estimate::EstimateError::UnknownCustomer(_) => Failure::Usage(e.to_string()),
            crate::estimate::EstimateError::Redis(r) => Failure::from(r),
        })?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&e).unwrap());
        } else {
            crate::estimate::print(&e);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let total = batch.recipients.len();
    let bar = (total >= 10_000 && std::io::stderr().is_terminal() && !args.json).then(|| {
        let b = ProgressBar::new(total as u64);
        b.set_style(ProgressStyle::with_template("enqueuing {bar:40} {pos}/{len} ({per_sec})").unwrap());
        b
    });
    let mut progress = |done: usize, _total: usize| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    };
    let receipt = enqueue::enqueue(
        &mut conn,
        batch,
        settings.batch_retention,
        args.chunk_size,
        Some(&mut progress),
        settings.redis.acks,
    )
    .await
    .map_err(|e| if e.is_redis() { Failure::Runtime(e.to_string()) } else { Failure::Usage(e.to_string()) })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&receipt).unwrap());
    } else {
        println!("batch {}", receipt.batch_id);
        println!("  accepted {} recipients, {} duplicates removed", receipt.accepted, receipt.duplicates);
        if let Some(s) = &smart {
            println!(
                "  smart encoding: {} {} -> {} {} segment(s) per message; saves {} segments",
                s.encoding_before,
                s.segments_before,
                s.encoding_after,
                s.segments_after,
                s.saved() as u64 * receipt.accepted as u64
            );
        }
        if receipt.existing {
            println!(
                "  (idempotency key already used: this is the existing batch; {} jobs were enqueued now)",
                receipt.enqueued_now
            );
        }
        println!("  follow it with: producer status {} --wait", receipt.batch_id);
    }
    Ok(ExitCode::SUCCESS)
}

async fn read_status(conn: &mut Conn, id: &BatchId) -> Result<BatchStatus, Failure> {
    batches::status(conn, id)
        .await?
        .ok_or_else(|| Failure::Usage(format!("unknown batch {id} (never created, or expired)")))
}

async fn wait_for(
    conn: &mut Conn,
    id: &BatchId,
    timeout: Option<Duration>,
    quiet: bool,
) -> Result<BatchStatus, Failure> {
    let start = std::time::Instant::now();
    let mut status = read_status(conn, id).await?;
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(status.total);
        b.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} terminal  {msg}").unwrap());
        b
    });
    while !status.is_complete() {
        if timeout.is_some_and(|t| start.elapsed() > t) {
            break;
        }
        if let Some(b) = &bar {
            b.set_position(status.terminal());
            b.set_message(format!(
                "sent {} · failed {} · opted out {} · deferred {}",
                status.sent, status.failed, status.opted_out, status.deferred
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        status = read_status(conn, id).await?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(status)
}

pub fn print_status(s: &BatchStatus) {
    println!("batch {}  (customer {})  state: {}", s.batch_id, s.customer, s.state);
    println!(
        "  total {} recipients ({} duplicates removed), {} segments each ({})",
        s.total, s.duplicates, s.segments, s.encoding
    );
    if s.enqueue_incomplete() {
        println!(
            "  ENQUEUE INCOMPLETE: {} of {} jobs enqueued. If the producer stopped, resubmit the same request with the \
             same idempotency key to finish it.",
            s.enqueued, s.total
        );
    }
    println!("  queued     {:>8}", s.queued);
    let why = s.deferred_reason.as_deref().unwrap_or("no number can be added");
    match s.deferred {
        0 => println!("  deferred   {:>8}", 0),
        n => println!("  deferred   {n:>8}   ({why}; waiting for the window to free a slot)"),
    }
    println!("  sent       {:>8}", s.sent);
    let reasons: Vec<String> = s.failure_reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect();
    if reasons.is_empty() {
        println!("  failed     {:>8}", s.failed);
    } else {
        println!("  failed     {:>8}   ({})", s.failed, reasons.join(", "));
    }
    println!("  opted out  {:>8}", s.opted_out);
    println!("  cancelled  {:>8}{}", s.cancelled, if s.cancel_requested { "   (cancel requested)" } else { "" });
    if s.delivered + s.undelivered > 0 {
        println!("  delivery reports: {} delivered, {} undelivered", s.delivered, s.undelivered);
        for (code, n) in &s.undelivered_reasons {
            let meaning =
                code.parse().ok().and_then(shared::twilio::error::describe).unwrap_or("see twilio.com/docs/errors");
            println!("    error {code} × {n}: {meaning}");
        }
    }
    if s.dup_sends > 0 {
        println!("  DUPLICATE SENDS {:>3}   (a worker was paused past its lease)", s.dup_sends);
    }
}
