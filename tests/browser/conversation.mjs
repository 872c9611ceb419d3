// Drives Debian's Chromium (playwright-core) through the dashboard's answering-back pages as support staff would:
// signs in, opens Conversations, picks the customer, types a tenant's phone and reads the thread; opens the
// customer's event delivery page. Runs axe-core on each page and saves screenshots.
// Prints one JSON line with what it saw; the Rust test (tests/tests/events.rs) judges it.
//
// usage: node conversation.mjs BASE_URL TOKEN CUSTOMER PHONE SCREENSHOT_DIR
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const [base, token, customer, phone, shots] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const out = { screenshots: [], axe: {} };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

  async function audit(name) {
    await page.evaluate(axeSource);
    const r = await page.evaluate(async () => {
      const res = await axe.run(document, { resultTypes: ["violations"] });
      return res.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length }));
    });
    out.axe[name] = { serious_or_critical: r.filter((v) => v.impact === "serious" || v.impact === "critical"), all: r };
  }
  async function shot(name) {
    const path = `${shots}/${name}.png`;
    await page.screenshot({ path, fullPage: true });
    out.screenshots.push(path);
  }

  await page.goto(`${base}/dashboard/login`);
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(`${base}/dashboard`), page.click("button[type=submit]")]);

  // Conversations: reached from the navigation, filled in like a person would.
  await Promise.all([page.waitForURL(`${base}/dashboard/conversations`), page.click("nav >> text=Conversations")]);
  await audit("conversation_form");
  await page.selectOption("#customer", customer);
  await page.fill("#phone", phone);
  await Promise.all([page.waitForURL(/phone=/), page.click("form.search button[type=submit]")]);
  out.thread = await page.evaluate(() =>
    [...document.querySelectorAll("ol.thread li")].map((li) => ({
      dir: li.classList.contains("in") ? "in" : "out",
      body: li.querySelector(".body").textContent,
    })));
  out.heading = await page.evaluate(() => document.querySelector("#thread-h")?.textContent.trim());
  await audit("conversation");
  await shot("conversation");

  // The customer's event delivery (dead letters, replay).
  await page.goto(`${base}/dashboard/events/${customer}`);
  out.events_heading = await page.evaluate(() => document.querySelector("h1")?.textContent.trim());
  await audit("events");
  await shot("events");
  out.page_errors = errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
