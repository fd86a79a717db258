// Drives the dashboard of a running `otwatch demo --dashboard` in Debian's
// chromium (headless) and prints what it measured as one JSON line.
//
//   node dashboard.mjs URL ANALYST_PASSWORD VIEWER_PASSWORD SCREENSHOT_DIR
//
// PLAYWRIGHT_DIR names the directory whose node_modules holds
// playwright-core (scripts/test.sh installs it from package-lock.json);
// CHROMIUM the browser (default /usr/bin/chromium).
import { createRequire } from "node:module";
import { join } from "node:path";

const [url, analystPw, viewerPw, shots] = process.argv.slice(2);
const require = createRequire(join(process.env.PLAYWRIGHT_DIR || process.cwd(), "package.json"));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update"],
});
const result = {};
const fail = (what) => { throw new Error(what); };

async function signIn(user, password) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector("#signin");
  await page.fill("input[name=user]", user);
  await page.fill("input[name=password]", password);
  await page.click("#signin button[type=submit]");
  await page.waitForSelector("#alerts tbody tr");
  return { context, page, requests };
}

try {
  // First paint of a fresh load, and what the page weighs.
  {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(url, { waitUntil: "load" });
    await page.waitForSelector("#signin");
    const loaded = await page.evaluate(() => {
      const p = performance.getEntriesByType("paint").find((e) => e.name === "first-contentful-paint")
        || performance.getEntriesByType("paint")[0];
      // The page and what it loads (the session check, a 401, included).
      const entries = performance.getEntriesByType("navigation").concat(performance.getEntriesByType("resource"));
      return { paint: p ? p.startTime : null, bytes: entries.reduce((n, e) => n + (e.decodedBodySize || 0), 0) };
    });
    result.first_paint_ms = loaded.paint;
    result.page_bytes = loaded.bytes;
    await page.screenshot({ path: join(shots, "signin.png") });
    await context.close();
  }

  // The analyst: alerts listed, an alert's evidence, the asset's plot with
  // its band, an ack.
  const analyst = await signIn("analyst", analystPw);
  const page = analyst.page;
  await page.waitForSelector("#timeline canvas");
  result.alert_rows = await page.locator("#alerts tbody tr").count();
  await page.screenshot({ path: join(shots, "alerts.png"), fullPage: false });
  // A cycle alert that is still open: its asset has a cycle-time band.
  const row = page.locator("#alerts tbody tr", { has: page.locator("[data-state=open]") })
    .filter({ hasText: "cycle" }).first();
  if (await row.count() === 0) fail("no open cycle alert listed");
  const id = await row.getAttribute("data-id");
  result.acked_id = id;
  await row.click();
  await page.waitForSelector("#evidence");
  result.evidence_rows = await page.locator("#evidence tr").count() - 1;
  await page.screenshot({ path: join(shots, "alert.png"), fullPage: true });
  await page.fill("#comment", "checked from the dashboard");
  await page.click("#btn-ack");
  await page.waitForFunction(() => /recorded/.test(document.getElementById("action-note").textContent));
  // The asset of that alert: the cycle-time plot with the learned band.
  await page.click("a[href^='#/asset?']");
  await page.waitForSelector("#plot canvas");
  await page.waitForFunction(() => window.otwatchLastPlot && window.otwatchLastPlot.points > 0);
  result.asset_plot = await page.evaluate(() => window.otwatchLastPlot);
  result.plot_note = await page.textContent("#plot-note");
  if (!/learned band/.test(result.plot_note)) fail("the plot has no learned band: " + result.plot_note);
  await page.screenshot({ path: join(shots, "asset.png"), fullPage: true });
  // 100,000 points through the page's own plotting, timed until drawn.
  result.plot_100k_ms = await page.evaluate(async () => {
    const n = 100000, t = new Array(n), v = new Array(n), t0 = Date.now() - n * 1000;
    for (let i = 0; i < n; i++) { t[i] = t0 + i * 1000; v[i] = 10000 + 500 * Math.sin(i / 50) + (i % 97); }
    const el = document.getElementById("plot");
    const start = performance.now();
    window.otwatchDrawSeries(el, t, v, [9000, 11000], [t0 + 50000000], "cycle time (ms)");
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    return performance.now() - start;
  });
  await page.click("a[href='#/fleet']");
  await page.waitForSelector("#fleet tr:nth-child(2)");
  result.fleet_rows = await page.locator("#fleet tr").count() - 1;
  // Version, backlog and certificate expiry as the collector sees them.
  result.fleet_cells = await page.$$eval("#fleet tr:not(:first-child)", (rows) => rows.map((r) =>
    Object.fromEntries([...r.children].map((td, i) => [r.parentElement.rows[0].children[i].textContent, td.textContent]))));
  await page.screenshot({ path: join(shots, "fleet.png") });
  await page.click("a[href='#/overview']");
  await page.waitForSelector("#components tr:nth-child(2)");
  await page.screenshot({ path: join(shots, "overview.png") });
  result.requests_elsewhere = analyst.requests.filter((r) => !r.startsWith(url)).length;

  // The viewer: the same alert, no way to change it.
  const viewer = await signIn("viewer", viewerPw);
  await viewer.page.goto(url + "#/alert?id=" + id);
  await viewer.page.waitForSelector("#evidence");
  result.viewer_ack_disabled = await viewer.page.locator("#btn-ack").isDisabled();
  result.viewer_forced_ack_status = await viewer.page.evaluate(async (id) => {
    const me = await (await fetch("/api/session")).json();
    const r = await fetch("/api/alerts/" + id + "/resolve", {
      method: "POST", headers: { "X-CSRF-Token": me.csrf, "Content-Type": "application/json" }, body: "{}",
    });
    return r.status;
  }, id);
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
