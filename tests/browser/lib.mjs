// What every browser script under tests/browser shares: chromium launched headless from Debian's
// package through playwright-core's library API, axe's serious and critical violations, full-page
// screenshots, and the protocol baton_tests::browser speaks (progress on stderr, one JSON line per
// result on stdout, `checkpoint <name>` on stdout answered by a line on stdin).

import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { join } from 'node:path';

/** The environment variable `name`, which the harness or the test sets. */
export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: browser scripts run from baton_tests::browser`);
  return value;
}

// The npm modules live in a cache outside the repo (`just setup`), not next to the scripts.
const require = createRequire(join(env('BATON_BROWSER_MODULES'), 'resolve-from-here.js'));
const { chromium } = require('playwright-core');
const { AxeBuilder } = require('@axe-core/playwright');

/** Progress, for the test's error message when the script fails. */
export function log(...parts) {
  console.error(...parts);
}

/** One result line for the test. */
export function report(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

let stdinLines;

/** Tells the test the script waits at `name`; resolves with the test's answer. */
export async function checkpoint(name) {
  stdinLines ??= createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  log(`waiting for the test at checkpoint ${name}`);
  process.stdout.write(`checkpoint ${name}\n`);
  const { value, done } = await stdinLines.next();
  if (done) throw new Error(`the test closed stdin instead of answering checkpoint ${name}`);
  return value;
}

/** Fails with `message` unless `condition` holds. */
export function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Fails unless `actual` equals `expected` (compared as JSON), naming `what`. */
export function equal(actual, expected, what) {
  const [a, e] = [JSON.stringify(actual), JSON.stringify(expected)];
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

/** Calls `probe` every 100 ms until it returns a truthy value, which it returns; after
 * `timeoutMs` fails naming `what` and the last value seen. */
export async function eventually(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Chromium, headless, and one page in a fresh context; dialogs (an `alert` an injected script
 * would open), uncaught page errors and console errors (CSP refusals among them) are recorded in
 * `seen` rather than left to block the page. */
export async function launch() {
  const browser = await chromium.launch({
    executablePath: env('BATON_CHROMIUM'),
    args: ['--headless', '--no-sandbox', '--disable-background-networking'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const seen = { dialogs: [], pageErrors: [], consoleErrors: [] };
  page.on('dialog', async (dialog) => {
    seen.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
    await dialog.dismiss();
  });
  page.on('pageerror', (error) => seen.pageErrors.push(String(error)));
  page.on('console', (message) => {
    if (message.type() === 'error') seen.consoleErrors.push(message.text());
  });
  return { browser, context, page, seen };
}

/** axe's serious and critical violations on the page as it is now, one line each. */
export async function accessibilityViolations(page) {
  const results = await new AxeBuilder({ page }).analyze();
  return results.violations
    .filter((violation) => violation.impact === 'serious' || violation.impact === 'critical')
    .map(
      (violation) =>
        `${violation.impact} ${violation.id} (${violation.help}) at ${violation.nodes
          .map((node) => node.target.join(' '))
          .join(', ')}`,
    );
}

/** A full-page screenshot `<name>.png` in the screenshot directory; returns its path. */
export async function screenshot(page, name) {
  const path = join(env('BATON_SCREENSHOTS'), `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  log(`screenshot ${path}`);
  return path;
}

/** Runs `body`, then exits: 0 when it resolved, 1 with the error's stack on stderr when not.
 * `browser`, if `body` sets it through the holder it is given, is closed either way. */
export async function main(body) {
  const holder = {};
  let code = 0;
  try {
    await body(holder);
  } catch (error) {
    console.error(error?.stack ?? String(error));
    code = 1;
  } finally {
    await holder.browser?.close().catch(() => {});
  }
  process.exit(code);
}
