// The web UI in a real browser, after the demo's story was played into a test stack
// (tests/tests/web.rs gives BASE_URL and EXPECTED, what the config repo, the cluster and the event
// log say): the matrix shows each environment's release and digest, a release's timeline lists
// its events in order with failures marked, a live event arrives on the event log without a
// reload, the XSS commit renders as text, the DORA page shows its four figures, and every page
// passes axe (no serious or critical violation), sends the CSP and is saved as a full-page
// screenshot. Checks that fail are collected and reported together at the end.

import {
  accessibilityViolations,
  check,
  checkpoint,
  env,
  eventually,
  launch,
  log,
  main,
  report,
  screenshot,
} from './lib.mjs';

const base = env('BASE_URL');
const expected = JSON.parse(env('EXPECTED'));

await main(async (holder) => {
  const { browser, page, seen } = await launch();
  holder.browser = browser;
  const failures = [];
  const expect = (condition, message) => {
    if (!condition) {
      failures.push(message);
      log(`FAILED: ${message}`);
    }
  };
  const pages = {};

  /** Every page: it answered 200 (or `status`), with the CSP; axe finds nothing serious; saved. */
  const visited = async (name, response, status = 200) => {
    expect(response !== null, `${name}: a navigation response`);
    if (response) {
      expect(response.status() === status, `${name}: status ${status}, got ${response.status()} at ${response.url()}`);
      const csp = response.headers()['content-security-policy'] ?? '';
      expect(
        csp.includes("script-src 'self'") && csp.includes("default-src 'none'") && !csp.includes('unsafe-inline'),
        `${name}: the Content-Security-Policy allows scripts from the site only, got ${JSON.stringify(csp)}`,
      );
    }
    const violations = await accessibilityViolations(page);
    for (const violation of violations) expect(false, `${name}: axe: ${violation}`);
    pages[name] = { url: page.url(), violations: violations.length, screenshot: await screenshot(page, `web-${name}`) };
  };
  const text = async (selector) => (await page.locator(selector).allTextContents()).join(' ');
  const pathOf = (href) => (href === null ? null : new URL(href, base).pathname);

  // 1. The environment matrix.
  await visited('matrix', await page.goto(`${base}/`));
  const row = page.locator(`#matrix tr[data-app="${expected.app}"]`);
  expect((await row.count()) === 1, `matrix: one row tr[data-app="${expected.app}"], got ${await row.count()}`);
  for (const [environment, cell] of Object.entries(expected.matrix)) {
    const td = row.locator(`td[data-environment="${environment}"]`);
    if ((await td.count()) !== 1) {
      expect(false, `matrix: one cell td[data-environment="${environment}"] in the app's row, got ${await td.count()}`);
      continue;
    }
    const hrefs = await td.locator('a').evaluateAll((links) => links.map((a) => a.getAttribute('href')));
    expect(
      hrefs.map(pathOf).includes(`/releases/${cell.release}`),
      `matrix ${environment}: a link to /releases/${cell.release}, got ${JSON.stringify(hrefs)}`,
    );
    // The digest may be shortened on screen; its first twelve hex digits are there, in the text
    // or in an attribute (a title with the whole digest).
    const html = await td.innerHTML();
    const hex = cell.digest.replace(/^sha256:/, '');
    expect(html.includes(hex.slice(0, 12)), `matrix ${environment}: the digest ${cell.digest}, cell: ${await td.innerText()}`);
    const shown = await td.innerText();
    for (const word of cell.mentions) {
      expect(shown.toLowerCase().includes(word.toLowerCase()), `matrix ${environment}: mentions "${word}", cell: ${shown}`);
    }
  }

  // 2. Click through to the release production runs; its timeline, in order, nothing failed.
  const production = row.locator('td[data-environment="production"] a[href*="/releases/"]').first();
  if ((await production.count()) === 1) {
    await Promise.all([page.waitForURL(`**/releases/${expected.release.id}`), production.click()]);
  } else {
    expect(false, 'matrix: no release link in the production cell to click; opening the release by URL');
    await page.goto(`${base}/releases/${expected.release.id}`);
  }
  const timeline = async () =>
    page.locator('#timeline li.timeline-event').evaluateAll((items) =>
      items.map((li) => ({ type: li.getAttribute('data-type'), failed: li.classList.contains('failed') })),
    );
  const releaseEvents = await timeline();
  expect(
    JSON.stringify(releaseEvents.map((e) => e.type)) === JSON.stringify(expected.release.timeline),
    `release ${expected.release.id}: timeline ${JSON.stringify(expected.release.timeline)}, got ${JSON.stringify(releaseEvents.map((e) => e.type))}`,
  );
  expect(!releaseEvents.some((e) => e.failed), `release ${expected.release.id}: nothing marked failed`);
  for (const section of ['#changelog', '#diff', '#layers', '#logs', '#approvals']) {
    expect((await page.locator(section).count()) === 1, `release page: a ${section} section`);
  }
  const approvals = await text('#approvals');
  expect(approvals.includes('alice'), `release page: #approvals names alice, got ${JSON.stringify(approvals)}`);
  await visited('release', await page.reload());

  // Failures marked where they happened: the failing tests, the crash-looping rollout.
  for (const [name, failed] of Object.entries(expected.failures)) {
    await visited(`release-${name}`, await page.goto(`${base}/releases/${failed.id}`));
    const events = await timeline();
    for (const type of failed.types) {
      expect(
        events.some((e) => e.type === type && e.failed),
        `release ${failed.id} (${name}): its ${type} marked .failed, timeline ${JSON.stringify(events)}`,
      );
    }
    expect(
      events.filter((e) => e.failed).every((e) => failed.types.includes(e.type)),
      `release ${failed.id} (${name}): only ${failed.types} marked failed, timeline ${JSON.stringify(events)}`,
    );
  }

  // 3. The XSS commit renders as text: no element made of it, no dialog.
  await visited('release-xss', await page.goto(`${base}/releases/${expected.xss.release}`));
  const changelog = await text('#changelog');
  expect(changelog.includes(expected.xss.message), `release-xss: #changelog shows ${expected.xss.message} as text, got ${JSON.stringify(changelog)}`);
  const injected = await page.evaluate(() => document.querySelectorAll('img[src="x"], img[onerror]').length);
  expect(injected === 0, `release-xss: ${injected} img elements made of the commit message`);

  // 4. A build log from the object store, linked from the release page.
  await page.goto(`${base}/releases/${expected.release.id}`);
  const logLink = page.locator('#logs a[href*="/logs/"]').first();
  if ((await logLink.count()) === 1) {
    const href = await logLink.getAttribute('href');
    await Promise.all([page.waitForURL(`**${pathOf(href)}`), logLink.click()]);
    await visited('log', await page.reload());
    const body = await page.locator('body').innerText();
    expect(body.trim().length > 0, `log ${href}: shows the log`);
  } else {
    expect(false, `release ${expected.release.id}: #logs links to /logs/<run>/<step>`);
  }

  // 5. An unknown release: a 404 page naming it.
  const unknown = 'no-such-release-0000';
  await visited('not-found', await page.goto(`${base}/releases/${unknown}`), 404);
  expect((await page.locator('body').innerText()).includes(unknown), `not-found: the page names ${unknown}`);

  // 6. The DORA page of the story's production.
  await visited('dora', await page.goto(`${base}/dora?app=${encodeURIComponent(expected.app)}&environment=production&window=30d`));
  for (const metric of ['deployment-frequency', 'lead-time', 'change-failure-rate', 'time-to-restore']) {
    const figure = page.locator(`#dora [data-metric="${metric}"]`);
    expect((await figure.count()) === 1, `dora: one [data-metric="${metric}"]`);
    if ((await figure.count()) === 1) {
      expect((await figure.getAttribute('data-value')) !== null, `dora: ${metric} has a data-value`);
      expect((await figure.locator('svg').count()) >= 1, `dora: ${metric} has an SVG chart`);
    }
  }
  const deployments = Number(await page.locator('#dora [data-metric="deployment-frequency"]').getAttribute('data-value'));
  expect(deployments > 0, `dora: production was deployed to in the story, deployment-frequency ${deployments}`);

  // 7. The event log; a new event arrives without a reload.
  await visited('events', await page.goto(`${base}/events?app=${encodeURIComponent(expected.app)}`));
  const sequences = async () =>
    page.locator('#events tr.event').evaluateAll((rows) => rows.map((r) => Number(r.getAttribute('data-sequence'))));
  const before = await sequences();
  expect(before.length > 0, 'events: rows tr.event[data-sequence]');
  expect(
    before.every((sequence, i) => i === 0 || before[i - 1] > sequence),
    `events: newest first, got ${JSON.stringify(before.slice(0, 20))}`,
  );
  await eventually('#live-status to say live', 10_000, async () => (await text('#live-status')).trim() === 'live');
  // A reload would lose this mark.
  await page.evaluate(() => {
    window.batonTestMark = 'not reloaded';
  });
  const newest = Math.max(0, ...before);
  const commit = (await checkpoint('events-open')).trim();
  const sent = Date.now();
  let liveMs = null;
  try {
    await eventually(`a new row for the push of ${commit}`, 5_000, async () => {
      const rows = await page
        .locator('#events tr.event')
        .evaluateAll((trs) => trs.map((r) => ({ sequence: Number(r.getAttribute('data-sequence')), text: r.textContent })));
      return rows.some((r) => r.sequence > newest && r.text.includes(commit));
    });
    liveMs = Date.now() - sent;
    log(`the live event appeared after ${liveMs} ms`);
  } catch (error) {
    expect(false, `events: ${error.message}`);
  }
  expect((await page.evaluate(() => window.batonTestMark)) === 'not reloaded', 'events: the page was not reloaded');
  const after = await sequences();
  expect(
    after.every((sequence, i) => i === 0 || after[i - 1] > sequence),
    `events: still newest first after live rows, got ${JSON.stringify(after.slice(0, 20))}`,
  );
  await screenshot(page, 'web-events-live');

  // Nothing ran that the pages did not mean to run.
  expect(seen.dialogs.length === 0, `no dialog opened, got ${JSON.stringify(seen.dialogs)}`);
  expect(seen.pageErrors.length === 0, `no script error, got ${JSON.stringify(seen.pageErrors)}`);
  // The not-found page's own 404 is the one error expected on the console.
  const consoleErrors = seen.consoleErrors.filter((message) => !message.includes('status of 404'));
  expect(consoleErrors.length === 0, `no console error (a CSP refusal among them), got ${JSON.stringify(consoleErrors)}`);

  report({ pages, liveMs, failures });
  check(failures.length === 0, `${failures.length} check(s) failed:\n- ${failures.join('\n- ')}`);
});
