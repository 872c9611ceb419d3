//! `producer serve`: the HTTP server, started by [`Application`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use shared::config::Settings;

use super::Failure;
use crate::server::auth::Tokens;
use crate::server::dashboard::DashboardConfig;
use crate::server::dashboard::session::SigninLimit;
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
    /// Failed dashboard sign-ins allowed from one client address per `MESSENGER_SIGNIN_WINDOW_SECS`; then 429 with
    /// `Retry-After` until the window ends (counted in Redis, so every server behind one address shares it).
    #[arg(long, env = "MESSENGER_SIGNIN_FAILURES", default_value_t = 10)]
    pub signin_failures: u32,
    #[arg(long, env = "MESSENGER_SIGNIN_WINDOW_SECS", default_value_t = 300)]
    pub signin_window_secs: u64,
    /// The header your proxy writes the client's address into (`X-Forwarded-For`; its last entry counts). Unset:
    /// the connection's peer is the client. Set it only behind a proxy that writes it, or anyone could pick theirs.
    #[arg(long, env = "MESSENGER_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
    /// Bulk texts (and dry runs) one server handles at once; each holds its body (up to 8 MB) and its recipients in
    /// memory. Others wait a second, then are answered 503 with `Retry-After`.
    #[arg(long, env = "MESSENGER_MAX_HEAVY_REQUESTS", default_value_t = 2)]
    pub max_heavy_requests: usize,
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
        let file = read_bounded(path, 1024 * 1024)?;
        spec.push('\n');
        spec.push_str(&file);
    }
    let mut dashboard =
        DashboardConfig::new(args.dashboard_secret.as_deref(), args.dashboard_show_numbers).map_err(Failure::Usage)?;
    if args.signin_failures == 0 || args.signin_window_secs == 0 {
        return Err(Failure::Usage(
            "MESSENGER_SIGNIN_FAILURES and MESSENGER_SIGNIN_WINDOW_SECS must be at least 1".into(),
        ));
    }
    dashboard.signin =
        SigninLimit { failures: args.signin_failures, window: Duration::from_secs(args.signin_window_secs) };
    if let Some(h) = &args.client_ip_header {
        axum::http::HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| Failure::Usage(format!("MESSENGER_CLIENT_IP_HEADER {h:?} is not a header name")))?;
    }
    dashboard.client_ip_header = args.client_ip_header.clone();
    Ok(ServeConfig {
        tokens: Tokens::parse(&spec).map_err(Failure::Usage)?,
        public_url: args.public_url,
        dashboard,
        token_policy: TokenPolicy {
            ttl: Duration::from_secs(args.subaccount_token_ttl_secs),
            refresh_every: Duration::from_secs(args.subaccount_token_refresh_secs),
        },
        limits: Limits { heavy_requests: args.max_heavy_requests.max(1), ..Limits::default() },
    })
}

/// A small file (tokens), at most `max` bytes.
fn read_bounded(path: &std::path::Path, max: u64) -> Result<String, Failure> {
    use std::io::Read;
    let cannot = |e: std::io::Error| Failure::Usage(format!("cannot read {}: {e}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path).map_err(cannot)?.take(max + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > max {
        return Err(Failure::Usage(format!("{} is larger than {} KiB", path.display(), max / 1024)));
    }
    String::from_utf8(bytes).map_err(|_| Failure::Usage(format!("{} is not UTF-8 text", path.display())))
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
