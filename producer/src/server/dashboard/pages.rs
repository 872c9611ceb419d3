//! The dashboard's HTML, rendered on the server (maud escapes everything interpolated). No inline script or style:
//! the Content-Security-Policy allows only `/dashboard/static/*`. Bars are SVG shapes and `<progress>`/`<meter>`
//! elements sized by attributes, so they need no style either. Regions that update while a batch runs carry
//! `data-live` (the URL of their fragment) and are refreshed by `dashboard.js`.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use shared::batches::BatchStatus;
use shared::customers::{Customer, PoolReport};
use shared::domain::{IdleDays, Masked};
use shared::twilio::error::describe;

use super::data::{MAX_BATCHES, Overview, Pending};
use crate::ops::desk::{InboxPage, RecipientPage, ResendOutcome, Thread};
use crate::ops::events::DeadLetter;

/// Who is looking, for the header and what may be shown.
pub struct Viewer<'a> {
    pub name: &'a str,
    pub admin: bool,
    /// Phone numbers in full (admins, or when `MESSENGER_DASHBOARD_SHOW_NUMBERS` allows it).
    pub full_numbers: bool,
    pub csrf: &'a str,
}

impl Viewer<'_> {
    pub fn number(&self, n: &str) -> String {
        if self.full_numbers { n.to_owned() } else { Masked(n).to_string() }
    }
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// The navigation: link, and the label a page passes as `current`.
const NAV: [(&str, &str); 7] = [
    ("/dashboard", "Overview"),
    ("/dashboard/inbox", "Inbox"),
    ("/dashboard/batches", "Batches"),
    ("/dashboard/pools", "Pools"),
    ("/dashboard/conversations", "Conversations"),
    ("/dashboard/events", "Events"),
    ("/dashboard/consent", "Consent"),
];

/// The page frame: landmarks, a skip link, the navigation and the sign-out form.
pub fn layout(title: &str, viewer: Option<&Viewer<'_>>, current: &str, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — Messenger" }
                link rel="stylesheet" href="/dashboard/static/dashboard.css";
                // No favicon request (it would 404): an empty one.
                link rel="icon" href="data:,";
                script src="/dashboard/static/dashboard.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    p class="brand" { "Messenger" }
                    @if let Some(v) = viewer {
                        nav aria-label="Main" {
                            ul {
                                @for (href, label) in NAV {
                                    li {
                                        @if current == label {
                                            a href=(href) aria-current="page" { (label) (nav_badge(label)) }
                                        } @else {
                                            a href=(href) { (label) (nav_badge(label)) }
                                        }
                                    }
                                }
                            }
                        }
                        form method="post" action="/dashboard/logout" class="signout" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            span { "Signed in as " strong { (v.name) } }
                            " "
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" { (main) }
                footer { p { "Messenger dashboard · figures refresh by themselves while work is running" } }
            }
        }
    }
}

/// The Inbox link's unread count, filled in (and kept fresh) by the page's script.
fn nav_badge(label: &str) -> Markup {
    html! {
        @if label == "Inbox" {
            " " span class="badge" data-live="/dashboard/live/unread" data-every="15000" data-now="1" {}
        }
    }
}

/// The unread badge's content: threads with unread replies.
pub fn unread_badge(n: u64) -> Markup {
    html! { @if n > 0 { (n) span class="visually-hidden" { " threads with unread replies" } } }
}

/// An instant for people: UTC, with the viewer's own zone added beside it by the page's script.
fn when(ms: i64) -> Markup {
    let iso = shared::batches::rfc3339(ms);
    html! { time class="local" datetime=(iso) { (time(ms)) } }
}

pub fn login(csrf: &str, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        "",
        html! {
            h1 { "Sign in" }
            p { "Use the API token you were given (admin, or scoped to your customers)." }
            @if let Some(e) = error {
                p class="error" role="alert" { (e) }
            }
            form method="post" action="/dashboard/login" class="login" {
                input type="hidden" name="csrf" value=(csrf);
                label for="token" { "API token" }
                input type="password" id="token" name="token" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub fn message(title: &str, viewer: Option<&Viewer<'_>>, text: &str) -> Markup {
    layout(
        title,
        viewer,
        "",
        html! { h1 { (title) } p { (text) } p { a href="/dashboard" { "Back to the overview" } } },
    )
}

/// A horizontal stacked bar of a batch's states (an SVG sized by attributes), with its text equivalent.
fn batch_bar(s: &BatchStatus) -> Markup {
    let total = s.total.max(1) as f64;
    let parts = [
        ("sent", s.sent, "bar-sent"),
        ("failed", s.failed, "bar-failed"),
        ("opted out", s.opted_out, "bar-optout"),
        ("cancelled", s.cancelled, "bar-cancelled"),
        ("expired", s.expired, "bar-cancelled"),
        ("deferred", s.deferred, "bar-deferred"),
        ("waiting for quiet hours", s.quiet_hours, "bar-deferred"),
        ("waiting for a carrier cap", s.capped, "bar-deferred"),
        ("held for a consent review", s.held_for_review, "bar-deferred"),
        ("waiting for the spend limit", s.spend_limit, "bar-deferred"),
        ("held by the pause", s.held_by_pause, "bar-deferred"),
        ("waiting for the frequency cap", s.frequency_capped, "bar-deferred"),
        ("queued", s.queued, "bar-queued"),
    ];
    let label = parts.iter().map(|(n, v, _)| format!("{v} {n}")).collect::<Vec<_>>().join(", ");
    // Each part starts where the previous ones end.
    let mut x = 0.0;
    let rects: Vec<(&str, u64, &str, f64, f64)> = parts
        .iter()
        .map(|&(name, v, class)| {
            let w = v as f64 * 100.0 / total;
            let at = x;
            x += w;
            (name, v, class, at, w)
        })
        .filter(|r| r.4 > 0.0)
        .collect();
    html! {
        svg class="bar" viewBox="0 0 100 4" preserveAspectRatio="none" role="img" aria-label=(label) {
            @for (name, v, class, at, w) in rects {
                rect class=(class) x=(format!("{at:.3}")) y="0" width=(format!("{w:.3}")) height="4" {
                    title { (v) " " (name) }
                }
            }
        }
    }
}

fn percent(s: &BatchStatus) -> u64 {
    (s.terminal() * 100).checked_div(s.total).unwrap_or(100)
}

pub fn overview(o: &Overview, v: &Viewer<'_>) -> Markup {
    layout(
        "Overview",
        Some(v),
        "Overview",
        html! {
            h1 { "Overview" }
            div data-live="/dashboard/live/overview" data-every="2000" { (overview_live(o, v)) }
            @if v.admin {
                section aria-labelledby="sessions-h" {
                    h2 id="sessions-h" { "Sessions" }
                    p { "After a token leaked or someone left: sign every dashboard session out, yours included. Remove or change the token itself in the server's configuration too." }
                    form method="post" action="/dashboard/sessions/revoke-all" class="revoke-all" {
                        input type="hidden" name="csrf" value=(v.csrf);
                        button type="submit" { "Sign everyone out" }
                    }
                }
            }
        },
    )
}

/// The part of the overview that refreshes itself.
pub fn overview_live(o: &Overview, v: &Viewer<'_>) -> Markup {
    let peak = o.minutes.iter().map(|m| m.sent).max().unwrap_or(0).max(1) as f64;
    html! {
        section aria-labelledby="activity" {
            h2 id="activity" { "Last hour" }
            dl class="figures" {
                div { dt { "Texts sent" } dd { (o.sent_last_hour()) } }
                div { dt { "Failed" } dd { (o.failed_last_hour()) } }
                div { dt { "Numbers bought" } dd { (o.purchases_last_hour()) } }
            }
            figure {
                svg class="chart" viewBox="0 0 600 120" role="img" aria-labelledby="chart-title chart-desc" {
                    title id="chart-title" { "Texts sent per minute, last 60 minutes" }
                    desc id="chart-desc" {
                        (o.sent_last_hour()) " texts in the last hour; busiest minute " (peak as u64)
                    }
                    @for (i, m) in o.minutes.iter().enumerate() {
                        @let h = m.sent as f64 * 110.0 / peak;
                        rect class="chart-bar" x=(i * 10 + 1) y=(format!("{:.1}", 115.0 - h)) width="8" height=(format!("{h:.1}")) {
                            title { (time(m.minute * 60_000)) ": " (m.sent) " sent, " (m.failed) " failed" }
                        }
                    }
                    line class="axis" x1="0" y1="115.5" x2="600" y2="115.5" {}
                }
                figcaption { "Texts sent per minute over the last 60 minutes (oldest on the left)." }
            }
        }
        section aria-labelledby="queues" {
            h2 id="queues" { "Queues" }
            @if o.queues.is_empty() {
                p { "No customer has work waiting." }
            } @else {
                div class="scroll" role="region" aria-label="Queues per customer" tabindex="0" {
                    table {
                        caption { "Jobs per customer with work" }
                        thead { tr { th scope="col" { "Customer" } th scope="col" { "Ready" } th scope="col" { "Scheduled" } th scope="col" { "In flight" } } }
                        tbody {
                            @for q in &o.queues {
                                tr {
                                    th scope="row" { a href=(format!("/dashboard/batches?customer={}", q.customer)) { (q.customer) } }
                                    td { (q.ready) } td { (q.scheduled) } td { (q.in_flight) }
                                }
                            }
                        }
                    }
                }
                @if o.more_customers > 0 { p { "…and " (o.more_customers) " more customers with work." } }
            }
        }
        @if let Some(workers) = &o.workers {
            section aria-labelledby="fleet" {
                h2 id="fleet" { "Workers" }
                @if workers.is_empty() {
                    p { "No worker has reported in." }
                } @else {
                    div class="scroll" role="region" aria-label="Worker fleet" tabindex="0" {
                        table {
                            caption { "Worker processes and their totals since they started" }
                            thead { tr { th scope="col" { "Worker" } th scope="col" { "Last heartbeat" } th scope="col" { "Sent" } th scope="col" { "Failed" } th scope="col" { "Bought" } th scope="col" { "Restarts" } } }
                            tbody {
                                @for w in workers {
                                    tr {
                                        th scope="row" { (w.name) }
                                        td { (format!("{:.0} s ago", w.heartbeat_age_s)) }
                                        td { (w.sent) } td { (w.failed) } td { (w.purchases) } td { (w.restarts) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p class="updated" { "Updated " (time(o.now_ms)) }
        @let _ = v;
    }
}

pub fn batches(list: &[BatchStatus], q: &str, customer: Option<&str>, v: &Viewer<'_>) -> Markup {
    layout(
        "Batches",
        Some(v),
        "Batches",
        html! {
            h1 { "Batches" @if let Some(c) = customer { " of " (c) } }
            form method="get" action="/dashboard/batches" class="search" role="search" {
                label for="q" { "Batch id contains" }
                input type="search" id="q" name="q" value=(q);
                label for="customer" { "Customer" }
                input type="text" id="customer" name="customer" value=(customer.unwrap_or(""));
                button type="submit" { "Search" }
            }
            @if list.is_empty() {
                p { "No batches found." }
            } @else {
                div class="scroll" role="region" aria-label="Batches" tabindex="0" {
                    table class="batches" {
                        caption { "The newest " (list.len()) " batches (at most " (MAX_BATCHES) ")" }
                        thead { tr { th scope="col" { "Batch" } th scope="col" { "Kind" } th scope="col" { "Created" } th scope="col" { "Progress" } th scope="col" { "Sent" } th scope="col" { "Failed" } th scope="col" { "Undelivered" } th scope="col" { "Opted out" } th scope="col" { "Waiting" } } }
                        tbody {
                            @for s in list {
                                tr {
                                    th scope="row" {
                                        a href=(format!("/dashboard/batches/{}", s.batch_id)) { (s.label.as_deref().unwrap_or(&s.batch_id)) }
                                        @if s.label.is_some() { br; span class="hint" { (s.batch_id) } }
                                    }
                                    td { (s.kind) }
                                    td { (when(s.created_ms)) }
                                    td { (batch_bar(s)) span class="pct" { (percent(s)) "%" } }
                                    td { (s.sent) } td { (s.failed) } td { (s.undelivered) } td { (s.opted_out) } td { (s.pending()) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub fn batch(s: &BatchStatus, page: &RecipientPage, plan: Option<&ResendOutcome>, v: &Viewer<'_>) -> Markup {
    let live = format!("/dashboard/batches/{}/live", s.batch_id);
    let title = s.label.clone().unwrap_or_else(|| format!("Batch {}", s.batch_id));
    layout(
        &title,
        Some(v),
        "Batches",
        html! {
            h1 { (title) }
            p {
                "Batch " (s.batch_id) " (" (s.kind) ") of "
                a href=(format!("/dashboard/pools/{}", s.customer)) { (s.customer) } " · created " (when(s.created_ms))
                " · " (s.segments) " segment(s) per text, " (s.encoding)
            }
            @if let Some(of) = &s.resend_of { p { "A resend of " a href=(format!("/dashboard/batches/{of}")) { (of) } "." } }
            @if let Some(by) = &s.resent_by { p { "Its failed and undelivered recipients were resent as " a href=(format!("/dashboard/batches/{by}")) { (by) } "." } }
            p { a href=(format!("/dashboard/inbox?customer={}&batch={}", s.customer, s.batch_id)) { "Replies to this batch" } }
            div data-live=(live) data-every="1000" data-done=(if s.is_complete() { "1" } else { "0" }) { (batch_live(s, v)) }
            @if !s.is_complete() && !s.cancel_requested {
                @if s.paused {
                    form method="post" action=(format!("/dashboard/batches/{}/resume", s.batch_id)) {
                        input type="hidden" name="csrf" value=(v.csrf);
                        button type="submit" { "Resume this batch" }
                        span class="hint" { " The texts it held go at once." }
                    }
                } @else {
                    form method="post" action=(format!("/dashboard/batches/{}/pause", s.batch_id)) {
                        input type="hidden" name="csrf" value=(v.csrf);
                        button type="submit" { "Pause this batch" }
                        span class="hint" { " Its texts wait until you resume it; texts already on their way finish." }
                    }
                }
                form method="post" action=(format!("/dashboard/batches/{}/cancel", s.batch_id)) class="danger" {
                    input type="hidden" name="csrf" value=(v.csrf);
                    button type="submit" { "Cancel this batch" }
                    span class="hint" { " Queued texts end as cancelled; texts already on their way finish." }
                }
            }
            @if page.total > 0 {
                section aria-labelledby="failed-recipients" {
                    h2 id="failed-recipients" { "Failed and undelivered recipients" }
                    p {
                        (page.total) " recipient(s): failed (Messenger or Twilio refused the text) or undelivered (the carrier did not deliver it). "
                        a href=(format!("/dashboard/batches/{}/recipients.csv", s.batch_id)) download { "Download them as CSV" }
                    }
                    @if let Some(p) = plan {
                        form method="post" action=(format!("/dashboard/batches/{}/resend", s.batch_id)) class="resend" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            input type="hidden" name="which" value="failed,undelivered";
                            button type="submit" { "Resend to " (p.recipients) " recipient(s)" }
                            span class="hint" {
                                " The same text and merge fields, as a new batch."
                                @if !p.skipped.is_empty() {
                                    " Skipped, as they cannot succeed: "
                                    (p.skipped.iter().map(|(k, n)| format!("{n} {}", k.replace('_', " "))).collect::<Vec<_>>().join(", ")) "."
                                }
                            }
                        }
                    } @else if !s.is_complete() {
                        p class="hint" { "A resend is possible once the batch is complete." }
                    }
                    @let vars: Vec<&String> = s.variables.iter().filter(|n| n.as_str() != "tz").collect();
                    div class="scroll" role="region" aria-label="Failed and undelivered recipients" tabindex="0" {
                        table {
                            caption { "The first " (page.recipients.len()) " of " (page.total) ", by number" }
                            thead { tr {
                                th scope="col" { "Recipient" } th scope="col" { "State" } th scope="col" { "Reason" } th scope="col" { "What it means" }
                                @for n in &vars { th scope="col" { (n) } }
                            } }
                            tbody {
                                @for r in &page.recipients {
                                    tr {
                                        th scope="row" { (v.number(&r.phone)) }
                                        td { @if r.state == "undelivered" { "undelivered (carrier)" } @else { "failed" } }
                                        td { (r.reason) @if let Some(c) = r.error_code.filter(|c| !r.reason.contains(&c.to_string())) { " (" (c) ")" } }
                                        td { (r.meaning.as_deref().unwrap_or("")) }
                                        @for n in &vars { td { (r.fields.get(*n).map(String::as_str).unwrap_or("")) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// After a resend from the batch page.
pub fn resent(out: &ResendOutcome, v: &Viewer<'_>) -> Markup {
    layout(
        "Resent",
        Some(v),
        "Batches",
        html! {
            h1 { "Resent" }
            @if let Some(b) = &out.batch_id {
                p { "Batch " a href=(format!("/dashboard/batches/{b}")) { (b) } " texts " (out.recipients) " recipient(s) of "
                    a href=(format!("/dashboard/batches/{}", out.resend_of)) { (out.resend_of) } " again."
                    @if out.existing { " (It had been made already: nothing new was queued.)" } }
            }
            @if !out.skipped.is_empty() {
                p { "Skipped, as their texts cannot succeed: "
                    (out.skipped.iter().map(|(k, n)| format!("{n} {}", k.replace('_', " "))).collect::<Vec<_>>().join(", ")) "." }
            }
        },
    )
}

/// Filters of the inbox page.
pub struct InboxFilters<'a> {
    pub unread: bool,
    pub batch: Option<&'a str>,
}

/// The inbox: a customer's threads newest reply first.
pub fn inbox(customers: &[String], page: &InboxPage, refs: &[String], f: &InboxFilters<'_>, v: &Viewer<'_>) -> Markup {
    let c = &page.customer;
    layout(
        "Inbox",
        Some(v),
        "Inbox",
        html! {
            h1 { "Inbox of " (c) }
            p { (page.unread_threads) " thread(s) with unread replies. Tenants' replies, newest first, with what they answered; opening a thread marks it read." }
            form method="get" action="/dashboard/inbox" class="search" {
                label for="customer" { "Customer" }
                select id="customer" name="customer" {
                    @for x in customers { option value=(x) selected[x == c] { (x) } }
                }
                label for="unread" { "Unread only" }
                input type="checkbox" id="unread" name="unread" value="1" checked[f.unread];
                label for="batch" { "Replies to batch" }
                input type="text" id="batch" name="batch" value=(f.batch.unwrap_or("")) placeholder="acme.01k…";
                button type="submit" { "Show" }
            }
            form method="get" action="/dashboard/inbox" class="search" role="search" {
                label for="phone" { "Find a tenant's phone (E.164) across your customers" }
                input type="tel" id="phone" name="phone" placeholder="+14155550123" autocomplete="off";
                button type="submit" { "Find" }
            }
            @if page.threads.is_empty() {
                p { "No replies here." }
            } @else {
                div class="scroll" role="region" aria-label="Threads" tabindex="0" {
                    table class="inbox" {
                        caption { (page.threads.len()) " thread(s), newest reply first" }
                        thead { tr { th scope="col" { "Tenant" } th scope="col" { "Unread" } th scope="col" { "Last message" } th scope="col" { "When" } th scope="col" { "Answering" } } }
                        tbody {
                            @for (t, r) in page.threads.iter().zip(refs) {
                                tr class=(if t.unread > 0 { "unread" } else { "" }) {
                                    th scope="row" {
                                        a href=(format!("/dashboard/conversations?customer={}&t={}", c, urlencode(r))) {
                                            (v.number(&t.phone))
                                        }
                                        @if !t.fields.is_empty() {
                                            br;
                                            span class="hint" { (t.fields.iter().filter(|(k, _)| k.as_str() != "tz").map(|(k, x)| format!("{k}: {x}")).collect::<Vec<_>>().join(" · ")) }
                                        }
                                        @if t.opted_out { br; span class="hint" { "opted out" } }
                                    }
                                    td { @if t.unread > 0 { strong { (t.unread) } } @else { "0" } }
                                    td { @if let Some(m) = &t.last { @if m.direction == "inbound" { "Tenant: " } @else { "Sent: " } (desk_preview(&m.body)) } }
                                    td { (when(t.last_reply_ms)) }
                                    td {
                                        @if let Some(b) = &t.batch {
                                            a href=(format!("/dashboard/batches/{b}")) { (t.batch_label.as_deref().unwrap_or(b)) }
                                        } @else { "no batch (a number Messenger never texted, or an older thread)" }
                                    }
                                }
                            }
                        }
                    }
                }
                @if let Some(next) = &page.next {
                    p { a href=(format!("/dashboard/inbox?customer={}&unread={}&batch={}&after={}", c, if f.unread { "1" } else { "" }, urlencode(f.batch.unwrap_or("")), urlencode(next))) { "Older threads" } }
                }
            }
        },
    )
}

fn desk_preview(body: &str) -> String {
    crate::ops::desk::preview(body)
}

/// A query-string value, percent-encoded (everything but RFC 3986's unreserved characters).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where a tenant's phone has a thread, for the inbox's search.
pub struct Found {
    pub customer: String,
    pub reference: String,
    pub last_reply_ms: Option<i64>,
}

pub fn inbox_search(customers: &[String], phone: &str, hits: &[Found], v: &Viewer<'_>) -> Markup {
    layout(
        "Inbox",
        Some(v),
        "Inbox",
        html! {
            h1 { "Threads with " (v.number(phone)) }
            p { "Searched " (customers.len().min(200)) " customer(s)." }
            @if hits.is_empty() {
                p { "No thread with this number: Messenger has not texted it, and it has not written, in the last 30 days." }
            } @else {
                ul {
                    @for h in hits {
                        li {
                            a href=(format!("/dashboard/conversations?customer={}&t={}", h.customer, urlencode(&h.reference))) { (h.customer) }
                            @if let Some(ms) = h.last_reply_ms { " · last reply " (when(ms)) } @else { " · no reply yet" }
                        }
                    }
                }
            }
            p { a href="/dashboard/inbox" { "Back to the inbox" } }
        },
    )
}

fn code_meaning(reason: &str) -> String {
    reason
        .split_whitespace()
        .find_map(|w| w.parse::<u32>().ok())
        .and_then(describe)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// The part of the batch page that refreshes itself while the batch runs.
pub fn batch_live(s: &BatchStatus, _v: &Viewer<'_>) -> Markup {
    html! {
        section aria-labelledby="progress-h" {
            h2 id="progress-h" { "Progress" }
            label for="batch-progress" { (percent(s)) "% done: " (s.terminal()) " of " (s.total) " texts settled" }
            progress id="batch-progress" max=(s.total.max(1)) value=(s.terminal()) { (percent(s)) "%" }
            (batch_bar(s))
            p class="state" role="status" {
                "State: " strong { (s.state) } @if s.cancel_requested { " (cancel requested)" }
                @if s.paused { " " strong class="paused" { "(paused)" } }
                @for w in &s.waiting { br; (w) }
            }
            dl class="figures" {
                div { dt { "Sent" } dd { (s.sent) } }
                div { dt { "Failed" } dd { (s.failed) } }
                div { dt { "Undelivered (carrier)" } dd { (s.undelivered) } }
                div { dt { "Opted out" } dd { (s.opted_out) } }
                div { dt { "Cancelled" } dd { (s.cancelled) } }
                div { dt { "Expired" } dd { (s.expired) } }
                div { dt { "Deferred" } dd { (s.deferred) } }
                div { dt { "Quiet hours" } dd { (s.quiet_hours) } }
                div { dt { "Carrier caps" } dd { (s.capped) } }
                div { dt { "Held for review" } dd { (s.held_for_review) } }
                div { dt { "Spend limit" } dd { (s.spend_limit) } }
                div { dt { "Frequency cap" } dd { (s.frequency_capped) } }
                div { dt { "Held by the pause" } dd { (s.held_by_pause) } }
                div { dt { "Queued" } dd { (s.queued) } }
            }
            @if let (true, Some(why)) = (s.deferred > 0, &s.deferred_reason) { p { "Deferred because " (why) "." } }
            @if let Some(at) = s.send_at_ms { p { "Scheduled for " (time(at)) "." } }
            @if let Some(at) = s.expires_at_ms { p { "Texts not sent by " (time(at)) " expire." } }
            @if s.urgent { p { "Urgent: sent whatever the hour (quiet hours do not apply)." } }
            @for (zone, w) in &s.quiet_by_zone {
                p { (w.count) " waiting for quiet hours to end in " (zone) " (until " (time(w.until_ms)) ")." }
            }
            @for (cap, w) in &s.capped_by_cap {
                p { (w.count) " waiting for the " (cap) " to renew (until " (time(w.until_ms)) ")." }
            }
            @if s.held_for_review > 0 {
                p { (s.held_for_review) " held: their tenant's reply may have revoked consent, and waits for a person on the "
                    a href="/dashboard/consent" { "Consent" } " page." }
            }
            @if s.spend_limit > 0 {
                p { (s.spend_limit) " waiting: sending them would pass the customer's monthly spend limit. They go when "
                    "the limit is raised or the month ends." }
            }
        }
        @if !s.failure_reasons.is_empty() {
            section aria-labelledby="failures-h" {
                h2 id="failures-h" { "Failures by reason" }
                table {
                    thead { tr { th scope="col" { "Reason" } th scope="col" { "Texts" } th scope="col" { "What it means" } } }
                    tbody { @for (r, n) in &s.failure_reasons { tr { th scope="row" { (r) } td { (n) } td { (code_meaning(r)) } } } }
                }
            }
        }
        section aria-labelledby="delivery-h" {
            h2 id="delivery-h" { "Delivery reports" }
            p { (s.delivered) " delivered, " (s.undelivered) " undelivered (reported by Twilio's status callbacks)." }
            @if !s.undelivered_reasons.is_empty() {
                table {
                    thead { tr { th scope="col" { "Twilio error" } th scope="col" { "Texts" } th scope="col" { "What it means" } } }
                    tbody {
                        @for (code, n) in &s.undelivered_reasons {
                            tr { th scope="row" { (code) } td { (n) } td { (code.parse().ok().and_then(describe).unwrap_or("")) } }
                        }
                    }
                }
            }
        }
    }
}

pub fn pools(customers: &[String], v: &Viewer<'_>) -> Markup {
    layout(
        "Pools",
        Some(v),
        "Pools",
        html! {
            h1 { "Number pools" }
            @if customers.is_empty() { p { "No customers." } }
            ul class="pools" { @for c in customers { li { a href=(format!("/dashboard/pools/{c}")) { (c) } } } }
        },
    )
}

pub fn pool(p: &PoolReport, pending: &[Pending], v: &Viewer<'_>) -> Markup {
    layout(
        &format!("Pool of {}", p.customer),
        Some(v),
        "Pools",
        html! {
            h1 { "Numbers of " (p.customer) }
            p {
                (p.numbers.len()) " of at most " (p.max_numbers) " numbers · " (p.total_available()) " texts available now · window "
                (p.window_secs) " s, " (p.daily_quota) " per number (+1 per reply, up to " (p.conversational_cap) ")"
                @if let Some(c) = p.monthly_cost { " · " (format!("${c:.2}")) " a month" }
                @if let Some(s) = &p.messaging_service_sid { " · Messaging Service " (s) }
            }
            @if p.messaging_service_sid.is_none() { p class="warning" role="note" { "Warning: " (shared::customers::NO_A2P_WARNING) "." } }
            p { "Spend this month (" (p.spend_month) "): " (format!("${:.2}", p.spend_this_month))
                @if let Some(l) = p.monthly_spend_limit { " of a " (format!("${l:.2}")) " monthly limit" } @else { " (no monthly limit)" } }
            div data-live=(format!("/dashboard/pools/{}/live", p.customer)) data-every="2000" { (pool_live(p, pending, v)) }
            @if v.admin {
                form method="post" action=(format!("/dashboard/pools/{}/release-idle", p.customer)) class="release" {
                    input type="hidden" name="csrf" value=(v.csrf);
                    label for="idle_days" { "Release numbers idle for at least (days)" }
                    input type="number" id="idle_days" name="idle_days" min="0" max=(IdleDays::MAX) step="any"
                        value=(IdleDays::DEFAULT) required;
                    label class="check" { input type="checkbox" name="dry_run" value="1" checked; " Only show what would be released" }
                    button type="submit" { "Release idle numbers" }
                }
            }
        },
    )
}

/// A customer's carrier caps and today's use.
fn carrier_caps(c: &shared::carriers::CapUse) -> Markup {
    let cap = |n: Option<u32>| n.map_or("no cap".to_owned(), |n| n.to_string());
    html! {
        section aria-labelledby="caps-h" {
            h2 id="caps-h" { "Carrier caps" }
            dl class="figures" {
                div { dt { "T-Mobile today (segments)" } dd { (c.tmobile_today) " of " (cap(c.caps.tmobile_daily)) } }
                div { dt { "AT&T in the last minute" } dd { (c.att_last_minute) " of " (cap(c.caps.att_per_minute)) } }
                div { dt { "In the last second" } dd { (c.last_second) " of " (cap(c.caps.per_second)) } }
                div { dt { "Line lookups" } dd { @if c.lookup { "on" } @else { "off" } } }
            }
            @for (what, until) in &c.spent_until {
                p { "Twilio reported the " (what) " cap spent: those texts wait until " (time(*until)) "." }
            }
            @if !c.lines.is_empty() {
                p { "Looked-up recipients: " (c.lines.iter().map(|(l, n)| format!("{n} {l}")).collect::<Vec<_>>().join(", ")) "." }
            }
        }
    }
}

/// The part of the pool page that refreshes itself.
pub fn pool_live(p: &PoolReport, pending: &[Pending], v: &Viewer<'_>) -> Markup {
    html! {
        @if let Some(c) = &p.carriers { (carrier_caps(c)) }
        div class="scroll" role="region" aria-label="Numbers" tabindex="0" {
            table class="numbers" {
                caption { "Use of each number in the current window" }
                thead { tr { th scope="col" { "Number" } th scope="col" { "Window use" } th scope="col" { "Sent / limit" } th scope="col" { "Replies" } th scope="col" { "Last send" } th scope="col" { "Bought" } } }
                tbody {
                    @for n in &p.numbers {
                        tr {
                            th scope="row" { (v.number(&n.number)) }
                            td { meter min="0" max=(n.limit.max(1)) value=(n.sent) aria-label=(format!("{} of {} used", n.sent, n.limit)) { (n.sent) " of " (n.limit) } }
                            td { (n.sent) " / " (n.limit) }
                            td { @if n.received > 0 { a href=(format!("/dashboard/inbox?customer={}", p.customer)) { (n.received) } } @else { "0" } }
                            td { (n.last_send_ms.map(time).unwrap_or_else(|| "never".into())) }
                            td { (time(n.bought_ms)) }
                        }
                    }
                }
            }
        }
        section aria-labelledby="pending-h" {
            h2 id="pending-h" { "Purchases and releases in flight" }
            @if pending.is_empty() {
                p { "None: every purchase and release has finished." }
            } @else {
                table {
                    thead { tr { th scope="col" { "What" } th scope="col" { "Intent" } th scope="col" { "Since" } th scope="col" { "Detail" } } }
                    tbody {
                        @for x in pending {
                            tr {
                                th scope="row" { (x.what) }
                                td { @if x.what == "release" { (v.number(&x.id)) } @else { (x.id) } }
                                td { (time(x.since_ms)) }
                                td { (x.detail) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The report of a release run from the pool page.
pub fn released(report: &shared::release::ReleaseReport, v: &Viewer<'_>) -> Markup {
    let verb = if report.dry_run { "Would release" } else { "Released" };
    layout(
        "Idle numbers",
        Some(v),
        "Pools",
        html! {
            h1 { (verb) " " (report.released.len()) " number(s) of " (report.customer) }
            p { "Kept " (report.kept) " number(s) for a backlog of " (report.backlog) " texts." }
            ul { @for n in &report.released { li { (v.number(&n.number)) " — last send " (n.last_send_ms.map(time).unwrap_or_else(|| "never".into())) } } }
            @if !report.pending.is_empty() { p { (report.pending.len()) " release(s) will be finished by the workers." } }
            p { a href=(format!("/dashboard/pools/{}", report.customer)) { "Back to the pool" } }
        },
    )
}

/// A thread to show: the messages, the tenant's reference for the reply form, and what was just done.
pub struct ThreadView<'a> {
    pub thread: &'a Thread,
    pub reference: &'a str,
    pub done: Option<&'a str>,
}

/// The conversation page: the form (customer, tenant's phone) and, once both are given, the thread with its reply box.
pub fn conversation(
    customers: &[String],
    customer: &str,
    phone: &str,
    view: Option<ThreadView<'_>>,
    v: &Viewer<'_>,
) -> Markup {
    layout(
        "Conversations",
        Some(v),
        "Conversations",
        html! {
            h1 { "Conversations" }
            p { "A tenant's thread: the texts sent to them with their delivery, the texts that could not be sent and why, and their replies (the last 50, kept 30 days). The " a href="/dashboard/inbox" { "Inbox" } " lists the threads with replies." }
            form method="get" action="/dashboard/conversations" class="search" {
                label for="customer" { "Customer" }
                select id="customer" name="customer" required {
                    @for c in customers {
                        option value=(c) selected[c == customer] { (c) }
                    }
                }
                label for="phone" { "Tenant's phone (E.164)" }
                input type="tel" id="phone" name="phone" value=(phone) placeholder="+14155550123" autocomplete="off" required;
                button type="submit" { "Show the thread" }
            }
            @if let Some(ThreadView { thread: c, reference, done }) = view {
                section aria-labelledby="thread-h" {
                    h2 id="thread-h" { "Thread with " (v.number(&c.phone)) " (" (c.customer) ")" }
                    @if let Some(d) = done { p class="done" role="status" { (d) } }
                    @if c.opted_out {
                        p class="error" role="status" { "This tenant opted out: nothing is texted to them from any of the customer's numbers until they reply START." }
                    }
                    @if c.messages.is_empty() {
                        p { "Nothing on record for this number in the last 30 days: no text was sent to it or failed, and it has not written. If the tenant says they never got a text, check the number, and the batch's failed and undelivered recipients." }
                    } @else {
                        ol class="thread" {
                            @for m in &c.messages {
                                @let inbound = m.direction == "inbound";
                                @let failed = m.direction == "failed";
                                li class=(if inbound { "msg in" } else if failed { "msg out failed" } else { "msg out" }) {
                                    p class="meta" {
                                        @if inbound { "Tenant → " (v.number(m.number.as_deref().unwrap_or(""))) }
                                        @else if failed { "Not sent" @if let Some(n) = &m.number { " from " (v.number(n)) } }
                                        @else { (v.number(m.number.as_deref().unwrap_or(""))) " → tenant" }
                                        " · " time class="local" datetime=(m.at) { (m.at.replace('T', " ").trim_end_matches('Z')) " UTC" }
                                        @if let Some(b) = &m.batch { " · " a href=(format!("/dashboard/batches/{b}")) { "batch " (b) } }
                                        @if m.direction == "outbound" && m.message_sid.is_none() { " · automatic HELP answer" }
                                        @if let (false, Some(st)) = (failed, &m.status) { " · " strong { (st) } }
                                        @if let Some(code) = m.error_code { " · error " (code) }
                                        @if let Some(why) = &m.meaning { ": " (why) }
                                    }
                                    @if failed {
                                        p class="body" { "This text could not be sent: " (m.reason.as_deref().unwrap_or("")) }
                                    } @else {
                                        p class="body" { (m.body) }
                                    }
                                }
                            }
                        }
                    }
                    @if !c.opted_out {
                        form method="post" action=(format!("/dashboard/conversations/{}/reply", c.customer)) class="reply" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            input type="hidden" name="t" value=(reference);
                            input type="hidden" name="nonce" value=(format!("{:032x}", rand::random::<u128>()));
                            label for="reply-body" { "Answer the tenant" }
                            textarea id="reply-body" name="body" rows="3" maxlength="1600" required {}
                            button type="submit" { "Send" }
                            span class="hint" { " Sent from the number the tenant last wrote to, ahead of bulk texts; quiet hours apply." }
                        }
                    }
                }
            }
        },
    )
}

/// Customers whose event delivery one may look at.
pub fn events_index(customers: &[String], v: &Viewer<'_>) -> Markup {
    layout(
        "Events",
        Some(v),
        "Events",
        html! {
            h1 { "Event delivery" }
            @if customers.is_empty() { p { "No customers." } }
            ul class="pools" { @for c in customers { li { a href=(format!("/dashboard/events/{c}")) { (c) } } } }
        },
    )
}

/// A customer's event delivery and its dead letters, each with a replay button.
pub fn events(c: &Customer, dead: &[DeadLetter], v: &Viewer<'_>) -> Markup {
    let replay = format!("/dashboard/events/{}/replay", c.id);
    layout(
        &format!("Events of {}", c.id),
        Some(v),
        "Events",
        html! {
            h1 { "Events of " (c.id) }
            dl class="figures" {
                div { dt { "Recording" } dd { @if c.events { "on" } @else { "off" } } }
                div { dt { "Endpoint" } dd { (c.events_url.as_deref().unwrap_or("none: the app pulls them")) } }
                @if let Some(why) = &c.events_disabled {
                    div { dt { "Delivery stopped" } dd { (why) " (save the URL again to resume)" } }
                }
            }
            section aria-labelledby="dead-h" {
                h2 id="dead-h" { "Dead letters (" (dead.len()) ")" }
                @if dead.is_empty() {
                    p { "None: every event was delivered, or is still being retried." }
                } @else {
                    p { "Events given up after every attempt. Replaying sends each once more, out of its original order." }
                    form method="post" action=(replay) class="replay" {
                        input type="hidden" name="csrf" value=(v.csrf);
                        button type="submit" { "Replay all " (dead.len()) }
                    }
                    div class="scroll" role="region" aria-label="Dead letters" tabindex="0" {
                        table {
                            thead { tr { th scope="col" { "Event" } th scope="col" { "Type" } th scope="col" { "Recipient" } th scope="col" { "Why" } th scope="col" { "Action" } } }
                            tbody {
                                @for d in dead {
                                    tr {
                                        th scope="row" { (d.event.id) }
                                        td { (d.event.kind) }
                                        td { (d.event.data.get("recipient").and_then(|r| r.as_str()).map(|r| v.number(r)).unwrap_or_default()) }
                                        td { (d.why) }
                                        td {
                                            form method="post" action=(replay) {
                                                input type="hidden" name="csrf" value=(v.csrf);
                                                input type="hidden" name="id" value=(d.event.id);
                                                button type="submit" aria-label=(format!("Replay {}", d.event.id)) { "Replay" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// After a replay was queued.
pub fn replayed(c: &shared::domain::CustomerId, queued: u64, v: &Viewer<'_>) -> Markup {
    layout(
        "Replay queued",
        Some(v),
        "Events",
        html! {
            h1 { "Replay queued" }
            p { (queued) " dead letter(s) of " (c) " will be delivered once more; one that fails again is a dead letter again." }
            p { a href=(format!("/dashboard/events/{c}")) { "Back to the events of " (c) } }
        },
    )
}

/// An empty fragment (for pages whose subject went away).
pub fn nothing() -> Markup {
    PreEscaped(String::new())
}

pub fn consent_index(customers: &[String], v: &Viewer<'_>) -> Markup {
    layout(
        "Consent",
        Some(v),
        "Consent",
        html! {
            h1 { "Consent" }
            p { "Replies that may revoke consent wait here for a person; opt-outs that came another way are recorded here." }
            @if customers.is_empty() { p { "No customers." } }
            ul class="pools" { @for c in customers { li { a href=(format!("/dashboard/consent/{c}")) { (c) } } } }
        },
    )
}

/// A customer's consent desk: the reviews waiting (deadline, words, confirm or dismiss with a note), a form for an
/// opt-out that came another way, and the export.
/// `refs`: for each review, the opaque reference its form posts (the phone number never leaves the server for a viewer
/// who sees numbers masked).
pub fn consent(
    customer: &str,
    reviews: &[crate::ops::consent::Review],
    refs: &[String],
    done: Option<&str>,
    v: &Viewer<'_>,
) -> Markup {
    let decide = format!("/dashboard/consent/{customer}/review");
    layout(
        &format!("Consent of {customer}"),
        Some(v),
        "Consent",
        html! {
            h1 { "Consent of " (customer) }
            @if let Some(d) = done { p class="notice" role="status" { (d) } }
            section aria-labelledby="reviews-h" {
                h2 id="reviews-h" { "Replies under review (" (reviews.len()) ")" }
                @if reviews.is_empty() {
                    p { "None: no reply waits for a decision." }
                } @else {
                    p { "Each reply may revoke consent. Until you decide, the tenant's texts are held (unless the customer sends them). Confirm: the tenant is opted out, as of when they wrote. Dismiss: the held texts go; say why." }
                    @for (i, r) in reviews.iter().enumerate() {
                        article class="review" aria-labelledby=(format!("review-{i}")) {
                            h3 id=(format!("review-{i}")) { (v.number(&r.phone)) @if r.overdue { " — " strong { "overdue" } } }
                            dl class="figures" {
                                div { dt { "Reply" } dd { (r.words) } }
                                div { dt { "Read as" } dd { (r.rule) } }
                                div { dt { "Received" } dd { (r.received) } }
                                div { dt { "Decide by" } dd { (r.deadline) } }
                            }
                            form method="post" action=(decide) class="decide" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                input type="hidden" name="ref" value=(refs[i]);
                                label for=(format!("note-{i}")) { "Note (required to dismiss)" }
                                input type="text" id=(format!("note-{i}")) name="note" maxlength="1000";
                                button type="submit" name="decision" value="confirm" { "Confirm: opt out" }
                                " "
                                button type="submit" name="decision" value="dismiss" { "Dismiss: not a revocation" }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="optout-h" {
                h2 id="optout-h" { "Record an opt-out that came another way" }
                form method="post" action=(format!("/dashboard/consent/{customer}/opt-out")) class="optout" {
                    input type="hidden" name="csrf" value=(v.csrf);
                    label for="phone" { "Tenant's number" }
                    input type="tel" id="phone" name="phone" required maxlength="32" autocomplete="off";
                    label for="source" { "How they asked" }
                    input type="text" id="source" name="source" required maxlength="200" placeholder="phone call to the office";
                    label for="note" { "Note" }
                    input type="text" id="note" name="note" maxlength="1000";
                    button type="submit" { "Opt out" }
                }
            }
            section aria-labelledby="export-h" {
                h2 id="export-h" { "For an audit" }
                p { a href=(format!("/dashboard/consent/{customer}/export.csv")) download { "Download every consent record (CSV)" } }
            }
        },
    )
}
