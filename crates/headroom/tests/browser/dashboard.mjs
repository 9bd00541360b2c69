// Drives the dashboard of a running `headroom serve` in headless Chromium:
// creates a copy task through the form, sees it succeed, creates a failing
// one, cleans up failed tasks with the button, and saves a screenshot.
//
//   node dashboard.mjs PAGE_URL SOURCE DESTINATION MISSING_SOURCE SCREENSHOT
//
// PAGE_URL is the dashboard's address with the token in its fragment, as
// the service prints it: http://HOST:PORT/#token=TOKEN.
import { chromium } from "playwright-core";

const [pageUrl, source, destination, missing, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  page.setDefaultTimeout(60_000);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(pageUrl);
  await page.waitForSelector("#create");

  async function createTask(src, dst) {
    await page.fill("input[name=source]", src);
    await page.fill("input[name=destination]", dst);
    await page.click("button[type=submit]");
  }
  const rowWith = (text, status) =>
    page.waitForSelector(`#tasks tr[data-status=${status}]:has-text("${text}")`);

  await createTask(source, destination);
  await rowWith(source, "succeeded");
  console.log("copy task succeeded");
  // Its shards (the service cuts a shard every 2 keys): 3 for 5 files.
  // The table is redrawn every second: click by selector, not by handle.
  await page.click(`#tasks tr[data-status=succeeded]:has-text("${source}") button.shards`);
  await page.waitForFunction(
    () => document.querySelectorAll("#tasks tr.shards-of tbody tr[data-status=succeeded]").length === 3);
  console.log("its 3 shards succeeded");

  await createTask(missing, destination);
  await rowWith(missing, "failed");
  console.log("failing task failed");

  await page.click("#cleanup");
  await page.waitForFunction(() => !document.querySelector("#tasks tr[data-status=failed]"));
  console.log("failed tasks cleaned up");

  await page.waitForFunction(() => document.querySelector("#memory").textContent.includes("RSS"));
  await page.waitForSelector('#fleet tr:has-text("(this one)"):has-text("alive")');
  console.log("the fleet table shows this replica");
  await page.screenshot({ path: screenshot, fullPage: true });
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log("screenshot " + screenshot);
} finally {
  await browser.close();
}
