// Opens a rendered authz-conformance report in headless Chromium and checks that a reader finds in it
// what the Allure results hold: every scenario in the tree, and for the tests it opens (every failed or
// broken one, plus one per scenario, or all with --all) the test page with every probe step and the
// truth-table attachment, whose iframe shows one row per probe and a highlighted cell per failing
// probe; the failure's category in the Awesome page and in the classic report's Categories tab.
//
//   node tools/report/check-report.mjs --report reports/html --results reports/allure-results \
//        [--screenshot shot.png] [--screenshot-test 'wrong-claim · deny-plus-allow [sidecar]'] [--all]
//
// Serves the report itself on 127.0.0.1 (an ephemeral port), drives Debian's /usr/bin/chromium
// (CHROMIUM to override) through playwright-core with the machine's flags, lets no request leave
// loopback (the report pulls an analytics tag), and stops browser and server in `finally`.
// Prints a JSON summary; exits 1 when anything is missing, 2 when it could not run.
import { chromium } from "playwright-core";
// Allure's own step-title linkify (the report's web-commons, pinned by the lockfile): a URL's terminator is dropped
// from what is shown, so a title is checked against what that function leaves of it. conformance/allure_report.py
// `shown_intact` gives every URL a space to lose, so the report shows the title as the suite wrote it.
import { splitTextWithUrls } from "@allurereport/web-commons";
import http from "node:http";
import { mkdtempSync, readFileSync, readdirSync, rmSync, existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { extname, join, normalize, resolve, sep } from "node:path";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  options: {
    report: { type: "string" },
    results: { type: "string" },
    screenshot: { type: "string" },
    "screenshot-test": { type: "string" },
    all: { type: "boolean", default: false },
    timeout: { type: "string", default: "20000" },
  },
});
if (!opts.report || !opts.results) {
  console.error("usage: check-report.mjs --report DIR --results DIR [--screenshot PNG] [--screenshot-test NAME] [--all]");
  process.exit(2);
}
const reportDir = resolve(opts.report);
const timeout = Number(opts.timeout);
const DEFAULT_CATEGORIES = new Set(["Product defects", "Test defects", "Product errors", "Test errors"]);

// --- what the results hold ------------------------------------------------------------------------
const tests = readdirSync(opts.results)
  .filter((f) => f.endsWith("-result.json"))
  .map((f) => JSON.parse(readFileSync(join(opts.results, f), "utf8")))
  .map((r) => ({
    name: r.name,
    status: r.status,
    historyId: r.historyId,
    scenario: (r.labels || []).find((l) => l.name === "parentSuite")?.value,
    steps: (r.steps || []).map((s) => ({ name: s.name, status: s.status })),
    attachments: (r.attachments || []).map((a) => a.name),
  }));
const scenarios = [...new Set(tests.map((t) => t.scenario).filter(Boolean))].sort();
const byId = JSON.parse(readFileSync(join(reportDir, "test-results.json"), "utf8")).byId;
const idsByName = {};
for (const [id, t] of Object.entries(byId)) (idsByName[t.name] ||= []).push(id);

// Every result must be in the report; results sharing a name (a matrix of versions) take its ids in turn.
const unclaimed = Object.fromEntries(Object.entries(idsByName).map(([n, ids]) => [n, [...ids]]));
for (const t of tests) t.id = (unclaimed[t.name] || []).shift();
const bad = (t) => t.status === "failed" || t.status === "broken";
const toOpen = [];
for (const t of tests) {
  if (opts.all || bad(t) || !toOpen.some((o) => o.scenario === t.scenario)) toOpen.push(t);
}

// --- a static server on loopback -----------------------------------------------------------------
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".json": "application/json",
  ".svg": "image/svg+xml", ".txt": "text/plain", ".yaml": "text/plain", ".woff": "font/woff", ".woff2": "font/woff2",
  ".png": "image/png", ".ico": "image/x-icon", ".jsonl": "application/json" };
const server = http.createServer(async (req, res) => {
  let path = decodeURIComponent(new URL(req.url, "http://127.0.0.1").pathname);
  if (path.endsWith("/")) path += "index.html";
  const file = normalize(join(reportDir, path));
  if (!file.startsWith(reportDir + sep)) { res.writeHead(403); res.end(); return; }
  try {
    const body = await readFile(file);
    res.writeHead(200, { "content-type": TYPES[extname(file)] || "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404); res.end();
  }
});

const problems = [];
const t0 = Date.now();
const lap = (what) => process.env.CHECK_REPORT_DEBUG && console.error(`${Date.now() - t0} ms: ${what}`);
const summary = { scenarios: { expected: scenarios.length, found: [] }, tests: { expected: tests.length,
  inReport: tests.filter((t) => t.id).length }, opened: [], classicCategories: {}, problems };
for (const t of tests) if (!t.id) problems.push(`${t.name}: not in the report`);
let browser;
const userData = mkdtempSync(join(tmpdir(), "authz-report-chromium-"));
try {
  await new Promise((ok, fail) => server.listen(0, "127.0.0.1", ok).on("error", fail));
  const base = `http://127.0.0.1:${server.address().port}`;
  browser = await chromium.launchPersistentContext(userData, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1800, height: 1200 },
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-quic"],
  });
  const page = browser.pages()[0] || (await browser.newPage());
  page.setDefaultTimeout(timeout);
  await page.route((u) => !/^(http:\/\/127\.0\.0\.1[:/]|blob:|data:|about:)/.test(u.href), (r) => r.abort());
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));

  // 1. Awesome: every scenario is a top-level group of the tree.
  await page.goto(`${base}/awesome/`, { waitUntil: "networkidle" });
  await page.getByTestId("tree-section").first().waitFor();
  lap("tree");
  const sections = new Set(await page.getByTestId("tree-section-title").allInnerTexts());
  summary.scenarios.found = scenarios.filter((s) => sections.has(s));
  for (const s of scenarios) if (!sections.has(s)) problems.push(`scenario ${s}: not in the report's tree`);

  // 2. Awesome: open tests; steps, attachments, truth table, category.
  for (const t of toOpen) {
    const id = t.id;
    if (!id) continue; // reported above: not in the report
    await page.goto(`${base}/awesome/#${id}`);
    const title = page.getByTestId("test-result-info-title");
    await title.filter({ hasText: t.name }).waitFor();
    const seen = { name: t.name, status: t.status };
    const stepTitles = new Set((await page.getByTestId("test-result-step-title").allInnerTexts()).map((s) => s.trim()));
    const shownAs = (name) => splitTextWithUrls(name).map((seg) => seg.value).join("").trim();
    seen.steps = t.steps.filter((s) => stepTitles.has(shownAs(s.name))).length;
    for (const s of t.steps) if (!stepTitles.has(shownAs(s.name))) problems.push(`${t.name}: step "${s.name}" not shown`);
    const headers = page.getByTestId("test-result-attachment-header");
    const headerTexts = await headers.allInnerTexts();
    seen.attachments = t.attachments.filter((a) => headerTexts.some((h) => h.includes(a)));
    for (const a of t.attachments) {
      if (!headerTexts.some((h) => h.includes(a))) problems.push(`${t.name}: attachment "${a}" not shown`);
    }
    const categoryText = bad(t) ? (await page.getByText(/^Category: /).allInnerTexts())[0] : null;
    seen.category = categoryText ? categoryText.replace(/^Category: /, "") : null;
    if (bad(t) && (!seen.category || DEFAULT_CATEGORIES.has(seen.category))) {
      problems.push(`${t.name}: ${t.status} but in no failure category (${seen.category})`);
    }
    if (t.attachments.includes("truth table: expected vs observed")) {
      let frame = await findFrame(page, "table.truth-table");
      if (!frame) {
        await headers.filter({ hasText: "truth table: expected vs observed" }).first().click();
        frame = await waitForFrame(page, "table.truth-table");
      }
      if (!frame) {
        problems.push(`${t.name}: the truth-table attachment does not render`);
      } else {
        seen.truthTable = await frame.evaluate(() => ({
          rows: document.querySelectorAll("table.truth-table tbody tr").length,
          differing: document.querySelectorAll("td.observed.diff").length,
        }));
        const failingSteps = t.steps.filter((s) => s.status !== "passed").length;
        if (seen.truthTable.rows !== t.steps.length) {
          problems.push(`${t.name}: truth table has ${seen.truthTable.rows} rows for ${t.steps.length} probes`);
        }
        if (seen.truthTable.differing !== failingSteps) {
          problems.push(`${t.name}: ${seen.truthTable.differing} highlighted cells for ${failingSteps} failing probes`);
        }
      }
    }
    if (opts.screenshot && t.name === (opts["screenshot-test"] || toOpen.find(bad)?.name || toOpen[0].name)) {
      await screenshot(page, base, id, opts.screenshot);
      summary.screenshot = opts.screenshot;
    }
    summary.opened.push(seen);
    lap(`opened ${t.name}`);
  }

  // 3. The classic report (allure2 plugin): the Categories tab sorts the failures.
  const expected = summary.opened.filter((o) => bad(o) && o.category);
  if (existsSync(join(reportDir, "allure2", "index.html"))) {
    await page.goto(`${base}/allure2/#categories`, { waitUntil: "networkidle" });
    if (tests.some(bad)) {
      await page.locator(".node__title").first().waitFor();
      for (const text of await page.locator(".tree__content > .tree__node > .node > .node__title, .node__title")
        .allInnerTexts()) {
        const [name, count] = text.split("\n");
        if (count && /^\d+$/.test(count.trim()) && !(name in summary.classicCategories)) {
          summary.classicCategories[name] = Number(count);
        }
      }
      for (const o of expected) {
        if (!(o.category in summary.classicCategories)) {
          problems.push(`${o.name}: category "${o.category}" missing from the classic report's Categories tab`);
        }
      }
    }
  } else {
    problems.push("no classic report (allure2/) in the report directory");
  }
} catch (err) {
  problems.push(`check aborted: ${err.message.split("\n")[0]}`);
} finally {
  if (browser) await browser.close();
  server.close();
  rmSync(userData, { recursive: true, force: true });
}
console.log(JSON.stringify(summary, null, 2));
process.exit(problems.length ? 1 : 0);

async function waitForFrame(page, selector) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    const f = await findFrame(page, selector);
    if (f) return f;
    await page.waitForTimeout(50);
  }
  return null;
}

async function screenshot(page, base, id, path) {
  // The split layout: the tree of scenarios on the left, the failing test on the right, scrolled to its
  // probe steps and the expanded truth table.
  await page.evaluate(() => localStorage.setItem("layout", "split"));
  await page.goto(`${base}/awesome/#${id}`);
  await page.reload({ waitUntil: "networkidle" });
  await page.getByTestId("test-result-info-title").waitFor();
  if (!(await findFrame(page, "table.truth-table"))) {
    await page.getByTestId("test-result-attachment-header").filter({ hasText: "truth table" }).first().click();
    await waitForFrame(page, "table.truth-table");
  }
  // The first probe step at the top, just below the test's sticky header.
  await page.getByTestId("test-result-step-header").first().evaluate((e) => {
    e.style.scrollMarginTop = "190px";
    e.scrollIntoView({ block: "start" });
  });
  await page.waitForTimeout(100); // let the scroll paint: the screenshot is a picture, not a check
  await page.screenshot({ path });
}

async function findFrame(page, selector) {
  for (const f of page.frames()) {
    try {
      if (await f.$(selector)) return f;
    } catch {
      // a frame that navigated away meanwhile
    }
  }
  return null;
}
