// Walks a dashboard session in Debian's Chromium as a person would, then as someone holding a copy of its cookie:
// signs in with an API token, keeps a copy of the session cookie, signs out with the button, puts the copy back,
// and opens the dashboard again. A session that ended on the server sends the copy to the sign-in page.
// Prints one JSON line with what it saw; the Rust test (tests/tests/security.rs) judges it.
//
// usage: node session.mjs BASE_URL TOKEN SCREENSHOT_DIR
import { launch, open } from "./common.mjs";

const [base, token, shots] = process.argv.slice(2);
const out = { screenshots: [], axe: {} };

const browser = await launch();
try {
  const { context, page, errors, audit, shot } = await open(browser, out, shots);

  await page.goto(`${base}/dashboard/login`);
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(`${base}/dashboard`), page.click("button[type=submit]")]);
  out.signed_in_at = new URL(page.url()).pathname;
  out.signed_in_as = await page.evaluate(() => document.querySelector(".signout strong")?.textContent.trim());
  await audit("signed_in");
  const copy = (await context.cookies()).find((c) => c.name === "msgr_session");
  out.had_cookie = Boolean(copy);

  // Sign out with the button in the header.
  await Promise.all([page.waitForURL(`${base}/dashboard/login`), page.click(".signout button[type=submit]")]);
  out.after_sign_out = new URL(page.url()).pathname;
  out.cookie_after_sign_out = (await context.cookies()).some((c) => c.name === "msgr_session" && c.value);
  await audit("signed_out");
  await shot("signed-out");

  // The copy, put back: the server ended the session, so it is no session.
  await context.addCookies([copy]);
  await page.goto(`${base}/dashboard/pools`);
  out.reused_lands_on = new URL(page.url()).pathname;
  out.reused_sees_sign_in = await page.evaluate(() => Boolean(document.querySelector("#token")));

  // Signing in again works.
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(`${base}/dashboard`), page.click("button[type=submit]")]);
  out.signed_in_again_at = new URL(page.url()).pathname;
  out.page_errors = errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
