// Messenger dashboard: refreshes the regions marked data-live="<fragment URL>" every data-every ms (default 2 s),
// without reloading the page, and stops once a region says data-done="1" (a finished batch). No inline script:
// the Content-Security-Policy allows this file only.
"use strict";

function refresh(el) {
  const every = Number(el.dataset.every) || 2000;
  let busy = false;
  const timer = setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const r = await fetch(el.dataset.live, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (r.status === 403 || r.redirected) {
        clearInterval(timer);
        return;
      }
      if (r.ok) {
        el.innerHTML = await r.text();
        const bar = el.querySelector("progress");
        if (bar && Number(bar.value) >= Number(bar.max)) {
          el.dataset.done = "1";
        }
        if (el.dataset.done === "1") clearInterval(timer);
      }
    } catch (e) {
      // The network hiccuped: the next tick tries again.
    } finally {
      busy = false;
    }
  }, every);
}

// Each instant shown in UTC (a <time class="local">) gets the viewer's own zone beside it.
function localTimes(root) {
  root.querySelectorAll("time.local[datetime]").forEach((t) => {
    if (t.dataset.localised) return;
    const d = new Date(t.getAttribute("datetime"));
    if (Number.isNaN(d.getTime())) return;
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone === "UTC" || zone === "Etc/UTC") return;
    const local = d.toLocaleString([], { dateStyle: "medium", timeStyle: "short", timeZoneName: "short" });
    t.insertAdjacentText("afterend", " (" + local + ")");
    t.dataset.localised = "1";
  });
}

// A region marked data-now="1" is filled at once (the navigation's unread badge), then refreshed.
async function fillNow(el) {
  try {
    const r = await fetch(el.dataset.live, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (r.ok && !r.redirected) el.innerHTML = await r.text();
  } catch (e) {
    // The next refresh tries again.
  }
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  document.querySelectorAll("[data-live]").forEach((el) => {
    if (el.dataset.now === "1") fillNow(el);
    if (el.dataset.done !== "1") refresh(el);
  });
});
