// Drives Debian's Chromium (playwright-core) through the support desk as a support person would: signs in, reads
// the Inbox's unread badge, opens the Inbox from the navigation, opens the newest unread thread, types an answer in
// its box and sends it; follows the thread to its batch, downloads the failed and undelivered recipients as CSV,
// reads the Resend button's count and presses it. Runs axe-core on each page and saves screenshots.
// Prints one JSON line with what it saw; the Rust test (tests/tests/desk.rs) judges it.
//
// usage: node desk.mjs BASE_URL TOKEN CUSTOMER ANSWER SCREENSHOT_DIR
import { readFileSync } from "node:fs";
import { launch, open } from "./common.mjs";

const [base, token, customer, answer, shots] = process.argv.slice(2);
const out = { screenshots: [], axe: {} };

const browser = await launch();
try {
  const { page, errors, audit, shot } = await open(browser, out, shots);

  await page.goto(`${base}/dashboard/login`);
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(`${base}/dashboard`), page.click("button[type=submit]")]);
  // The badge is filled in by the page's script.
  await page.waitForFunction(() => document.querySelector("nav .badge")?.textContent.trim().length > 0, null, { timeout: 10000 });
  out.badge = await page.evaluate(() => document.querySelector("nav .badge").textContent.trim());

  await Promise.all([page.waitForURL(/\/dashboard\/inbox/), page.click("nav >> text=Inbox")]);
  await page.selectOption("#customer", customer);
  await page.check("#unread");
  await Promise.all([page.waitForURL(/unread=1/), page.click("form.search >> text=Show")]);
  out.inbox = await page.evaluate(() =>
    [...document.querySelectorAll("table.inbox tbody tr")].map((tr) => ({
      tenant: tr.querySelector("th a").textContent.trim(),
      fields: tr.querySelector("th .hint")?.textContent.trim() ?? "",
      unread: tr.querySelector("td").textContent.trim(),
      last: tr.querySelectorAll("td")[1].textContent.trim(),
    })));
  await audit("inbox");
  await shot("inbox");

  // The newest unread thread, answered from its box.
  await Promise.all([page.waitForURL(/\/dashboard\/conversations\?/), page.click("table.inbox tbody tr >> nth=0 >> th a")]);
  out.thread_url_has_number = /%2B1|\+1\d{6}/.test(page.url());
  out.thread_before = await page.evaluate(() =>
    [...document.querySelectorAll("ol.thread li")].map((li) => li.querySelector(".body").textContent.trim()));
  await audit("thread");
  await page.fill("#reply-body", answer);
  await Promise.all([page.waitForLoadState("load"), page.click("form.reply button[type=submit]")]);
  await page.waitForSelector("p.done");
  out.reply_done = await page.evaluate(() => document.querySelector("p.done").textContent.trim());
  await shot("thread");

  // The batch the tenant answered: its failed and undelivered, the export, and the resend.
  const batchLink = await page.$("ol.thread li .meta a[href^='/dashboard/batches/']");
  await Promise.all([page.waitForURL(/\/dashboard\/batches\//), batchLink.click()]);
  out.batch_title = await page.evaluate(() => document.querySelector("h1").textContent.trim());
  out.table_rows = await page.evaluate(() => document.querySelectorAll("#failed-recipients ~ div table tbody tr").length);
  out.resend_button = await page.evaluate(() => document.querySelector("form.resend button")?.textContent.trim() ?? "");
  out.resend_hint = await page.evaluate(() => document.querySelector("form.resend .hint")?.textContent.trim() ?? "");
  await audit("batch");
  await shot("batch");
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("a[download]")]);
  out.csv = readFileSync(await download.path(), "utf8");
  await Promise.all([page.waitForURL(/\/resend$/), page.click("form.resend button")]);
  out.resent = await page.evaluate(() => document.querySelector("main").textContent.replace(/\s+/g, " ").trim());
  await audit("resent");
  await shot("resent");
  out.page_errors = errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
