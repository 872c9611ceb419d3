// Drives Debian's Chromium (playwright-core) through the dashboard's answering-back pages as support staff would:
// signs in, opens Conversations, picks the customer, types a tenant's phone and reads the thread; opens the
// customer's event delivery page. Runs axe-core on each page and saves screenshots.
// Prints one JSON line with what it saw; the Rust test (tests/tests/events.rs) judges it.
//
// usage: node conversation.mjs BASE_URL TOKEN CUSTOMER PHONE SCREENSHOT_DIR
import { launch, open } from "./common.mjs";

const [base, token, customer, phone, shots] = process.argv.slice(2);
const out = { screenshots: [], axe: {} };

const browser = await launch();
try {
  const { page, errors, audit, shot } = await open(browser, out, shots);

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
