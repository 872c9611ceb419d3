//! `producer serve`: the HTTP server, started by [`Application`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use shared::config::Settings;

use super::Failure;
use crate::server::auth::Tokens;
use crate::server::dashboard::DashboardConfig;
use crate::server::webhooks::TokenPolicy;
use crate::server::{Application, Limits, ServeConfig, StartError};

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

/// The server's configuration from the flags (and the token file they name).
fn config(args: ServeArgs) -> Result<ServeConfig, Failure> {
    let mut spec = args.api_tokens.unwrap_or_default();
    if let Some(path) = &args.api_tokens_file {
        let file = std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
        spec.push('\n');
        spec.push_str(&file);
    }
    Ok(ServeConfig {
        tokens: Tokens::parse(&spec).map_err(Failure::Usage)?,
        public_url: args.public_url,
        dashboard: DashboardConfig::new(args.dashboard_secret.as_deref(), args.dashboard_show_numbers)
            .map_err(Failure::Usage)?,
        token_policy: TokenPolicy {
            ttl: Duration::from_secs(args.subaccount_token_ttl_secs),
            refresh_every: Duration::from_secs(args.subaccount_token_refresh_secs),
        },
        limits: Limits::default(),
    })
}

pub async fn run(settings: Settings, args: ServeArgs) -> Result<ExitCode, Failure> {
    let listen = args.listen.clone();
    let app = Application::build(settings, config(args)?, &listen).await.map_err(|e| match e {
        StartError::Config(m) => Failure::Usage(m),
        e @ StartError::Listen { .. } => Failure::Usage(e.to_string()),
    })?;
    println!("producer listening on http://{}", app.addr());
    app.run_until(shared::telemetry::shutdown_signal()).await.map_err(|e| Failure::Runtime(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
