// The DORA page against a fixture history (tests/tests/web.rs gives BASE_URL and EXPECTED: the
// figures computed by hand per environment, null for "no data"): each of the four figures'
// data-value matches, each has its SVG chart, the page passes axe and is saved as a screenshot.

import { accessibilityViolations, check, env, launch, log, main, report, screenshot } from './lib.mjs';

const base = env('BASE_URL');
const expected = JSON.parse(env('EXPECTED'));

/** Whether the page's number is the expected one within display rounding (0.5 %, at least 0.005). */
const close = (shown, wanted) => Math.abs(shown - wanted) <= Math.max(Math.abs(wanted) * 0.005, 0.005);

await main(async (holder) => {
  const { browser, page, seen } = await launch();
  holder.browser = browser;
  const failures = [];
  const shown = {};
  for (const [environment, figures] of Object.entries(expected.environments)) {
    const url = `${base}/dora?app=${encodeURIComponent(expected.app)}&environment=${environment}&window=30d`;
    const response = await page.goto(url);
    if (response.status() !== 200) failures.push(`${url}: status ${response.status()}`);
    shown[environment] = {};
    for (const [metric, wanted] of Object.entries(figures)) {
      const figure = page.locator(`#dora [data-metric="${metric}"]`);
      if ((await figure.count()) !== 1) {
        failures.push(`${environment}: one #dora [data-metric="${metric}"], got ${await figure.count()}`);
        continue;
      }
      const raw = await figure.getAttribute('data-value');
      shown[environment][metric] = raw;
      if (wanted === null) {
        // No data is not zero: no number on the figure.
        if (raw !== null && raw !== '' && Number.isFinite(Number(raw))) {
          failures.push(`${environment}: ${metric} has no data, the page says ${JSON.stringify(raw)}`);
        }
      } else if (raw === null || !close(Number(raw), wanted)) {
        failures.push(`${environment}: ${metric} is ${wanted}, the page says ${JSON.stringify(raw)}`);
      }
      if ((await figure.locator('svg').count()) < 1) failures.push(`${environment}: ${metric} has an SVG chart`);
    }
    for (const violation of await accessibilityViolations(page)) failures.push(`dora ${environment}: axe: ${violation}`);
    await screenshot(page, `web-dora-fixture-${environment}`);
    log(`${environment}: ${JSON.stringify(shown[environment])}`);
  }
  if (seen.dialogs.length + seen.pageErrors.length + seen.consoleErrors.length > 0) {
    failures.push(`nothing unexpected ran: ${JSON.stringify(seen)}`);
  }
  report({ shown, failures });
  check(failures.length === 0, `${failures.length} check(s) failed:\n- ${failures.join('\n- ')}`);
});
