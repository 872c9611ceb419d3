// What both browser scripts share: Debian's Chromium started headless (playwright-core, no downloaded browser), a
// page that collects its script errors, axe-core run in the page, and full-page screenshots. Each records into
// `out` (`axe`, `screenshots`) for the one JSON line the script prints.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
}

// A 1280×900 page, its context, the errors it reports, and its audit and screenshot helpers.
export async function open(browser, out, shots) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

  // axe-core, run in the page (evaluate is not subject to the page's CSP); serious and critical violations.
  async function audit(name) {
    await page.evaluate(axeSource);
    const r = await page.evaluate(async () => {
      const res = await axe.run(document, { resultTypes: ["violations"] });
      return res.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length }));
    });
    out.axe[name] = { serious_or_critical: r.filter((v) => v.impact === "serious" || v.impact === "critical"), all: r };
  }
  async function shot(name, opts = {}) {
    const path = `${shots}/${name}.png`;
    await page.screenshot({ path, fullPage: true, ...opts });
    out.screenshots.push(path);
  }
  return { context, page, errors, audit, shot };
}
