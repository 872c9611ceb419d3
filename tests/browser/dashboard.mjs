// Drives Debian's Chromium (playwright-core, no downloaded browser) through Messenger's dashboard, as support staff
// would: signs in with an API token, starts a bulk text through the API, watches the batch page's progress bar rise
// to 100% without reloading, looks at the pool, runs axe-core on every page, and saves screenshots.
// Prints one JSON line with what it saw; the Rust test (tests/tests/dashboard.rs) judges it.
//
// usage: node dashboard.mjs BASE_URL ADMIN_TOKEN CUSTOMER RECIPIENTS SCREENSHOT_DIR
import { launch, open } from "./common.mjs";

const [base, token, customer, recipientsRaw, shots] = process.argv.slice(2);
const recipients = Number(recipientsRaw);
const out = { screenshots: [], axe: {} };

const browser = await launch();
try {
  const { context, page, errors, audit, shot } = await open(browser, out, shots);

  // Sign in: the dashboard sends an unsigned-in visitor to the login page.
  await page.goto(`${base}/dashboard`);
  out.login_redirect = new URL(page.url()).pathname;
  await audit("login");
  // Keyboard: the first Tab reaches the skip link.
  await page.keyboard.press("Tab");
  out.first_tab = await page.evaluate(() => document.activeElement && document.activeElement.textContent.trim());
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(`${base}/dashboard`), page.click("button[type=submit]")]);
  const session = (await context.cookies()).find((c) => c.name === "msgr_session");
  out.cookie = session && { httpOnly: session.httpOnly, secure: session.secure, sameSite: session.sameSite, path: session.path };

  // Start a bulk text through the API (the property app's side), with workers running.
  // Valid US numbers (exchanges from 300, clear of the 555 fiction range), as the Rust fixtures make them.
  const to = Array.from({ length: recipients }, (_, i) => `+1415${300 + Math.floor(i / 10000)}${String(i % 10000).padStart(4, "0")}`);
  const resp = await fetch(`${base}/v1/customers/${customer}/bulk-texts`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ body: "Water will be off Tuesday 9-11am. Sorry for the trouble.", recipients: to }),
  });
  const batch = (await resp.json()).batch_id;
  out.batch = batch;

  // The batch page: mark the document, then watch the progress bar rise without a reload.
  await page.goto(`${base}/dashboard/batches/${batch}`);
  await page.evaluate(() => { window.__notReloaded = true; });
  const samples = [];
  const deadline = Date.now() + 180_000;
  let shotMidway = false;
  for (;;) {
    const v = await page.evaluate(() => {
      const p = document.querySelector("#batch-progress");
      return p ? { value: Number(p.value), max: Number(p.max) } : null;
    });
    if (v) samples.push(v.value);
    if (v && !shotMidway && v.value > 0 && v.value < v.max) {
      await shot("batch-running");
      shotMidway = true;
    }
    if (v && v.value >= v.max) break;
    if (Date.now() > deadline) break;
    await page.waitForTimeout(250);
  }
  out.progress_samples = samples;
  out.progress_max = await page.evaluate(() => Number(document.querySelector("#batch-progress").max));
  out.not_reloaded = await page.evaluate(() => window.__notReloaded === true);
  out.progress_label = await page.evaluate(() => document.querySelector("label[for=batch-progress]").textContent.trim());
  await audit("batch");
  await shot("batch");

  // Overview (after the batch, so the chart has data), desktop and phone-sized.
  await page.goto(`${base}/dashboard`);
  await page.waitForTimeout(2500);
  out.overview_sent_last_hour = await page.evaluate(() => {
    const dt = [...document.querySelectorAll("dl.figures dt")].find((d) => d.textContent.trim() === "Texts sent");
    return dt ? Number(dt.nextElementSibling.textContent.trim()) : null;
  });
  out.overview_chart_bars = await page.evaluate(() => document.querySelectorAll("svg.chart rect").length);
  await audit("overview");
  await shot("overview");
  await page.setViewportSize({ width: 390, height: 844 });
  await shot("overview-phone");
  out.phone_overflows = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  await page.setViewportSize({ width: 1280, height: 900 });

  // The pool: every number bought, with its use of the window.
  await page.goto(`${base}/dashboard/pools/${customer}`);
  out.pool_rows = await page.evaluate(() => document.querySelectorAll("table.numbers tbody tr").length);
  out.pool_meter_total = await page.evaluate(() =>
    [...document.querySelectorAll("table.numbers meter")].reduce((s, m) => s + Number(m.value), 0));
  await audit("pool");
  await shot("pool");

  // The batch list.
  await page.goto(`${base}/dashboard/batches?q=${encodeURIComponent(batch.split(".")[1].slice(0, 8))}`);
  out.search_hits = await page.evaluate(() => document.querySelectorAll("table.batches tbody tr").length);
  await audit("batches");
  out.page_errors = errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
