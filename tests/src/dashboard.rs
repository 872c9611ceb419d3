//! Driving the dashboard over plain HTTP: signing in (form, CSRF and cookies as a browser does them), requesting
//! pages, and measuring what each page costs Redis (`INFO commandstats` around one request) and how long it takes.
//! Used by the dashboard tests and by `loadtest dashboard`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A signed-in dashboard session: its cookie and its CSRF token.
#[derive(Clone, Debug)]
pub struct Session {
    pub base: String,
    pub cookie: String,
    pub csrf: String,
    /// The `Set-Cookie` header of the session, as the server sent it (flags included).
    pub set_cookie: String,
}

fn client() -> reqwest::Client {
    crate::http_builder().redirect(reqwest::redirect::Policy::none()).build().expect("HTTP client")
}

/// The value of the first `name="csrf" value="…"` in a page.
pub fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(html[at..at + html[at..].find('"')?].to_owned())
}

/// `name=value` of a `Set-Cookie` header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_owned()
}

/// Signs in with an API token the way the login form does. Panics with the server's answer if it refuses.
pub async fn login(base: &str, token: &str) -> Session {
    let c = client();
    let page = c.get(format!("{base}/dashboard/login")).send().await.expect("login page");
    let login_cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("msgr_login="))
        .map(cookie_pair)
        .expect("the login page sets its cookie");
    let csrf = csrf_of(&page.text().await.unwrap()).expect("the login form's CSRF token");
    let resp = c
        .post(format!("{base}/dashboard/login"))
        .header("cookie", login_cookie)
        .form(&[("token", token), ("csrf", csrf.as_str())])
        .send()
        .await
        .expect("sign in");
    let set_cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("msgr_session=") && !v.starts_with("msgr_session=;"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("sign-in refused: {}", resp.status()));
    let cookie = cookie_pair(&set_cookie);
    let overview = c.get(format!("{base}/dashboard")).header("cookie", &cookie).send().await.unwrap();
    let csrf = csrf_of(&overview.text().await.unwrap()).expect("the sign-out form's CSRF token");
    Session { base: base.to_owned(), cookie, csrf, set_cookie }
}

impl Session {
    /// `GET path` with the session: (status, headers, body).
    pub async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let resp = client().get(format!("{}{path}", self.base)).header("cookie", &self.cookie).send().await.unwrap();
        (resp.status().as_u16(), resp.headers().clone(), resp.text().await.unwrap())
    }

    /// `POST path` with a form, with the session's cookie (and, if `with_csrf`, its CSRF token).
    pub async fn post(&self, path: &str, form: &[(&str, &str)], with_csrf: bool) -> (u16, String) {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        if with_csrf {
            fields.push(("csrf", &self.csrf));
        }
        let resp = client()
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(&fields)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

/// What one page costs.
#[derive(Clone, Debug, Serialize)]
pub struct PageCost {
    pub path: String,
    pub status: u16,
    /// Commands Redis ran for one request (scripts' inner commands included).
    pub commands: u64,
    pub by_command: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn calls(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let n = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), n))
        })
        .collect()
}

/// Requests each page once between two `INFO commandstats` on `redis` (a node that holds all the data), then
/// `rounds` more times for its latency.
pub async fn page_costs(
    session: &Session,
    redis: &mut redis::Connection,
    paths: &[String],
    rounds: usize,
) -> Vec<PageCost> {
    let mut out = Vec::new();
    for path in paths {
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(redis).unwrap();
        let (status, _, _) = session.get(path).await;
        let info: String = redis::cmd("INFO").arg("commandstats").query(redis).unwrap();
        let mut by_command = calls(&info);
        // The measurement's own commands (`config|resetstat`, `info`).
        by_command.retain(|k, _| !k.starts_with("config") && k != "info");
        let commands = by_command.values().sum();
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            let _ = session.get(path).await;
            times.push(started.elapsed());
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |p: f64| {
            times.get(((times.len().saturating_sub(1)) as f64 * p).round() as usize).copied().map(ms).unwrap_or(0.0)
        };
        out.push(PageCost {
            path: path.clone(),
            status,
            commands,
            by_command,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: times.last().copied().map(ms).unwrap_or(0.0),
        });
    }
    out
}

/// The serious and critical axe-core violations per page of a browser script's report (its `axe` field).
pub fn axe_serious(report: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    report["axe"]
        .as_object()
        .map(|pages| pages.iter().map(|(k, r)| (k.clone(), r["serious_or_critical"].clone())).collect())
        .unwrap_or_default()
}

/// Panics, naming the page and its findings, if axe-core found anything serious or critical on any page.
pub fn assert_axe_clean(report: &serde_json::Value) {
    assert!(report["axe"].as_object().is_some_and(|p| !p.is_empty()), "no page was audited: {report}");
    for (page, findings) in axe_serious(report) {
        assert_eq!(findings, serde_json::json!([]), "{page}: {}", report["axe"][&page]);
    }
}
