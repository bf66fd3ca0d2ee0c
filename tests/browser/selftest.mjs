// The browser harness's own check (baton_tests::browser's unit test): a local page whose script
// fetches an answer, read before and after the test changes it at a checkpoint; axe and a
// screenshot as the real suites take them, and axe on a page it must fault. SELFTEST_EXPECT
// makes the heading check fail on purpose, to show the test a failure's stderr.

import { accessibilityViolations, checkpoint, env, equal, eventually, launch, log, main, report, screenshot } from './lib.mjs';

await main(async (holder) => {
  const base = env('BASE_URL');
  const { browser, page } = await launch();
  holder.browser = browser;
  const answer = async () => {
    const text = await page.locator('#answer').textContent();
    return text === 'waiting' ? null : text;
  };

  await page.goto(`${base}/`);
  const heading = await page.locator('h1').textContent();
  equal(heading, process.env.SELFTEST_EXPECT ?? 'Harness check', 'the heading');
  const first = await eventually('the page script to write the answer', 10_000, answer);
  log(`first answer ${first}`);

  await checkpoint('first-answer-read');
  await page.reload();
  const second = await eventually('the answer after reload', 10_000, answer);
  log(`second answer ${second}`);

  const violations = await accessibilityViolations(page);
  await screenshot(page, 'harness-selftest');
  await page.goto(`${base}/unlabelled`);
  const unlabelled = await accessibilityViolations(page);
  report({ heading, first, second, violations, unlabelled });
});
