// A headless Chromium under playwright-core, driven by JSON lines on stdin (one command per
// line, one JSON reply per line on stdout). Used by tests/dashboard_browser.py.
//
//   {"cmd": "open", "url": "...", "width": 1280, "height": 900}
//   {"cmd": "wait", "expr": "<JS expression>", "timeout_ms": 5000}   -> {"ok": true, "value": ..., "at_ms": ...}
//   {"cmd": "eval", "expr": "<JS expression>"}                          -> {"ok": true, "value": ...}
//   {"cmd": "screenshot", "path": "out.png", "full_page": true}
//   {"cmd": "close"}
//
// Waits are Playwright's waitForFunction (checked on every animation frame), never sleeps.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
let browser = null;
let page = null;

const asFunction = (expr) => new Function(`return (${expr});`);

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function handle(msg) {
  switch (msg.cmd) {
    case "open": {
      if (!browser) {
        browser = await chromium.launch({ executablePath, headless: true,
          args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
      }
      page = await browser.newPage({ viewport: { width: msg.width || 1280, height: msg.height || 900 } });
      page.on("console", (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));
      page.on("pageerror", (e) => process.stderr.write(`[page error] ${e.message}\n`));
      await page.goto(msg.url, { waitUntil: "load" });
      return { ok: true };
    }
    case "wait": {
      // A function, not a string: Playwright then calls it through the debugger protocol instead
      // of eval() in the page, so the page's Content-Security-Policy stays enforced.
      const handle = await page.waitForFunction(asFunction(msg.expr), null, { timeout: msg.timeout_ms ?? 5000, polling: "raf" });
      return { ok: true, value: await handle.jsonValue(), at_ms: Date.now() };
    }
    case "eval":
      return { ok: true, value: await page.evaluate(asFunction(msg.expr)) };
    case "screenshot":
      await page.screenshot({ path: msg.path, fullPage: msg.full_page ?? true });
      return { ok: true };
    case "close":
      if (browser) await browser.close();
      browser = null;
      return { ok: true };
    default:
      return { ok: false, error: `unknown command ${msg.cmd}` };
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let msg;
  try {
    msg = JSON.parse(line);
    reply(await handle(msg));
  } catch (err) {
    reply({ ok: false, error: String(err && err.message || err) });
  }
  if (msg && msg.cmd === "close") break;
}
if (browser) await browser.close();
process.exit(0);
