// Browser tests for the dashboard: Debian chromium driven by playwright-core.
// Run through ./run.sh, which starts Herald (HERALD_URL) and the receiver (RECEIVER_URL).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERALD = process.env.HERALD_URL;
const RECEIVER = process.env.RECEIVER_URL;
if (!HERALD || !RECEIVER) throw new Error('run these tests through ui-tests/run.sh (HERALD_URL and RECEIVER_URL unset)');

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const SCREENSHOT = join(ROOT, 'docs', 'dashboard.png');
const XSS_BODY = '<script>alert(1)</script><img src=x onerror=alert(2)>';
const LAPTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };

// Chromium as this machine needs it; playwright adds a fresh --user-data-dir of its own.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];

let browser;
const problems = []; // console errors, page errors and JS dialogs, from every page
const expectedConsole = []; // regexes of console errors a test provokes on purpose

// ---------------------------------------------------------------- helpers

async function newPage(viewport = LAPTOP, options = {}) {
  const context = await browser.newContext({ viewport, ...options });
  const page = await context.newPage();
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    if (expectedConsole.some((re) => re.test(text))) return;
    problems.push(`console error on ${page.url()}: ${text}`);
  });
  page.on('pageerror', (err) => problems.push(`page error on ${page.url()}: ${err.message}`));
  page.on('dialog', async (dialog) => {
    problems.push(`unexpected ${dialog.type()} dialog: ${dialog.message()}`);
    await dialog.dismiss();
  });
  return page;
}

// Chromium logs every 4xx answer as "Failed to load resource"; a test that provokes one on
// purpose (a validation error, a wrong signature, a missing API key) says so around that step.
async function provoking(pattern, fn) {
  expectedConsole.push(pattern);
  try {
    return await fn();
  } finally {
    expectedConsole.splice(expectedConsole.indexOf(pattern), 1);
  }
}

async function until(fn, { timeout = 15000, interval = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

async function received(path) {
  const res = await fetch(RECEIVER + '/_received');
  return (await res.json()).filter((r) => r.path === path);
}

async function apiJson(method, path, body, base = HERALD, headers = {}) {
  const res = await fetch(base + path, {
    method,
    headers: { 'Content-Type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function createViaApi(spec) {
  const res = await apiJson('POST', '/subscriptions', spec);
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body;
}

async function findSubscription(targetUrl, base = HERALD, headers = {}) {
  let cursor = null;
  do {
    const res = await apiJson('GET', '/subscriptions?limit=100' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''), undefined, base, headers);
    assert.equal(res.status, 200);
    const hit = res.body.data.find((s) => s.target_url === targetUrl);
    if (hit) return hit;
    cursor = res.body.next_cursor;
  } while (cursor);
  return null;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function createThroughPage(page, fields, { base = HERALD, headers = {} } = {}) {
  await page.getByRole('button', { name: 'New subscription' }).click();
  const dialog = page.getByRole('dialog', { name: 'New subscription' });
  await dialog.waitFor();
  await dialog.getByLabel('Target URL').fill(fields.url);
  if (fields.eventTypes) await dialog.getByLabel('Event types').fill(fields.eventTypes);
  if (fields.secret) await dialog.getByLabel('Signing secret').fill(fields.secret);
  if (fields.headers) await dialog.getByLabel('Extra headers').fill(fields.headers);
  if (fields.maxAttempts) await dialog.getByLabel('Max attempts').fill(String(fields.maxAttempts));
  await dialog.getByRole('button', { name: 'Create' }).click();
  await dialog.waitFor({ state: 'hidden' });
  await page.locator('#detail-heading', { hasText: fields.url }).waitFor();
  const sub = await findSubscription(fields.url, base, headers);
  assert.ok(sub, 'the subscription exists in the api');
  return sub;
}

async function sendTestEvent(page, { eventType, payload, secret }) {
  // Wait for the deliveries first: the form opens by itself when there are none yet.
  await page.locator('#deliveries-table, #no-deliveries').first().waitFor();
  const details = page.locator('#test-event');
  if ((await details.getAttribute('open')) === null) await details.locator('summary').click();
  const form = page.locator('#test-event-form');
  if (eventType !== undefined) await form.getByLabel('Event type').fill(eventType);
  await form.getByLabel('JSON payload').fill(payload);
  if (secret !== undefined) await form.getByLabel(/Subscription secret/).fill(secret);
  await form.getByRole('button', { name: 'Send test event' }).click();
}

function deliveryRows(page) {
  return page.locator('#deliveries-table tbody tr');
}

// ---------------------------------------------------------------- setup

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  });
});

after(async () => {
  if (browser) await browser.close();
});

// Shared between the scenarios below, which run in order.
const okPath = '/ok/orders';
const okUrl = RECEIVER + okPath;
let okSub;
let okWebhook;

// ---------------------------------------------------------------- scenarios

test('the page and its assets are served with content types and a strict CSP', async () => {
  for (const [path, type] of [
    ['/', 'text/html'], ['/ui', 'text/html'], ['/ui/app.js', 'text/javascript'], ['/ui/app.css', 'text/css'],
  ]) {
    const res = await fetch(HERALD + path);
    assert.equal(res.status, 200, path);
    assert.ok(res.headers.get('content-type').startsWith(type), `${path}: ${res.headers.get('content-type')}`);
    const csp = res.headers.get('content-security-policy') || '';
    assert.match(csp, /script-src 'self'/, path);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, path);
    await res.arrayBuffer();
  }
});

test('keyboard: the create dialog opens from the keyboard and focus is visible', async () => {
  const page = await newPage();
  await page.goto(HERALD + '/');
  await page.locator('#list-status').waitFor();
  let reached = false;
  for (let i = 0; i < 12 && !reached; i += 1) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement && document.activeElement.textContent === 'New subscription');
  }
  assert.ok(reached, 'Tab reaches the "New subscription" button');
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, 'none', 'the focused button shows a focus outline');
  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog', { name: 'New subscription' });
  await dialog.waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.id), 'f-target-url', 'focus moves into the form');
  // The browser's own validation is off; ours names the problem.
  await page.keyboard.press('Enter');
  await dialog.getByRole('alert').filter({ hasText: 'Enter the target URL' }).waitFor();
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
  await page.context().close();
});

test('create a subscription through the page', async () => {
  const page = await newPage();
  await page.goto(HERALD + '/');
  okSub = await createThroughPage(page, {
    url: okUrl,
    eventTypes: 'order.created, order.paid',
    headers: 'X-Team: shop',
    maxAttempts: 3,
  });
  assert.deepEqual(okSub.event_types, ['order.created', 'order.paid']);
  assert.deepEqual(okSub.headers, { 'X-Team': '********' }, 'header values are masked');
  assert.equal(okSub.max_attempts, 3);
  assert.equal(okSub.has_secret, false);
  assert.equal(okSub.owner, null);
  // The list shows it and marks it as the open one; the URL is the route to it.
  await page.locator('#subscription-list a[aria-current="true"]', { hasText: okUrl }).waitFor();
  assert.ok(page.url().endsWith('#/s/' + okSub.id), page.url());
  await page.context().close();
});

test('send a test event: it reaches the receiver and shows up in the deliveries', async () => {
  const page = await newPage();
  await page.goto(`${HERALD}/#/s/${okSub.id}`);
  await page.locator('#detail-heading', { hasText: okUrl }).waitFor();
  await page.getByText('No delivery attempts yet').waitFor();

  // Invalid JSON is caught before anything is sent.
  await sendTestEvent(page, { eventType: 'order.created', payload: '{"order": 42,' });
  await page.locator('#t-payload-error', { hasText: 'Not valid JSON' }).waitFor();
  assert.equal(await page.locator('#t-payload').getAttribute('aria-invalid'), 'true');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await received(okPath)).length, 0, 'nothing sent for invalid JSON');

  const payload = '{"order": 42, "note": "<b>not bold</b>"}';
  await sendTestEvent(page, { eventType: 'order.created', payload });
  await page.locator('#t-payload-error').waitFor({ state: 'hidden' });
  const queued = page.locator('#t-result a');
  await queued.waitFor();
  okWebhook = (await queued.textContent()).trim();
  assert.match(okWebhook, /^msg_/);

  const got = await until(async () => (await received(okPath))[0], { what: 'the delivery at the receiver' });
  assert.equal(got.body, payload, 'the receiver gets the payload byte for byte');
  assert.equal(got.headers['x-team'], 'shop');

  const row = deliveryRows(page).filter({ hasText: okWebhook });
  await row.filter({ hasText: 'Success' }).waitFor({ timeout: 15000 });
  const cells = await row.first().locator('td').allTextContents();
  assert.equal(cells[3], '1', 'attempt number');
  assert.equal(cells[5], '200', 'status code');
  assert.match(cells[6], /^\d+ ms$/, 'duration');
  assert.equal(cells[2], 'order.created', 'event type');

  // Click through to the webhook's attempt history.
  await row.first().getByRole('link', { name: okWebhook }).click();
  await page.locator('#webhook-heading', { hasText: okWebhook }).waitFor();
  const attempt = page.locator('#attempt-list li');
  await attempt.filter({ hasText: 'Attempt 1' }).filter({ hasText: 'HTTP 200' }).waitFor();
  await page.locator('#webhook-body .response-excerpt', { hasText: 'ok' }).waitFor();
  assert.ok(page.url().endsWith(`#/s/${okSub.id}/w/${okWebhook}`));
  await page.context().close();
});

test('edit a subscription (PATCH), clearing an optional field', async () => {
  const page = await newPage();
  await page.goto(`${HERALD}/#/s/${okSub.id}`);
  await page.locator('#detail-heading', { hasText: okUrl }).waitFor();
  await page.locator('#detail').getByRole('button', { name: 'Edit' }).click();
  const dialog = page.getByRole('dialog', { name: 'Edit subscription' });
  await dialog.waitFor();
  assert.equal(await dialog.getByLabel('Target URL').inputValue(), okUrl);
  // Values are masked; saving the masked value back keeps the stored one.
  assert.equal(await dialog.getByLabel('Extra headers').inputValue(), 'X-Team: ********');
  assert.equal(await dialog.getByLabel('Max attempts').inputValue(), '3');
  await dialog.getByLabel('Max attempts').fill('');
  await dialog.getByLabel('Extra headers').fill('X-Team: ********\nX-Env: test');
  await dialog.getByRole('button', { name: 'Save changes' }).click();
  await dialog.waitFor({ state: 'hidden' });
  await page.locator('#detail .props', { hasText: 'X-Env: ********' }).waitFor();
  const res = await apiJson('GET', '/subscriptions/' + okSub.id);
  assert.equal(res.body.max_attempts, null, 'max attempts cleared');
  assert.deepEqual(res.body.headers, { 'X-Env': '********', 'X-Team': '********' });
  assert.deepEqual(res.body.event_types, ['order.created', 'order.paid'], 'untouched fields stay');

  // Checked in the page before sending...
  await page.locator('#detail').getByRole('button', { name: 'Edit' }).click();
  await dialog.waitFor();
  await dialog.getByLabel('Signing secret').fill('short');
  await dialog.getByRole('button', { name: 'Save changes' }).click();
  await dialog.getByRole('alert').filter({ hasText: 'must be 16 to 256 bytes' }).waitFor();
  // ...and the server's validation errors are shown in the form too.
  await dialog.getByLabel('Signing secret').fill('');
  await dialog.getByLabel('Extra headers').fill('Content-Type: text/plain');
  await provoking(/status of 4\d\d/, async () => {
    await dialog.getByRole('button', { name: 'Save changes' }).click();
    await dialog.getByRole('alert').filter({ hasText: 'Not saved' }).filter({ hasText: 'Content-Type' }).waitFor();
  });
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await dialog.waitFor({ state: 'hidden' });
  await page.context().close();
});

test('a signed subscription: the page signs the test event with the secret typed for it', async () => {
  const page = await newPage();
  await page.goto(HERALD + '/');
  const secret = 'a-very-secret-secret-for-tests';
  const path = '/ok/signed';
  const sub = await createThroughPage(page, { url: RECEIVER + path, secret });
  assert.equal(sub.has_secret, true);
  const payload = '{"signed": true}';

  await sendTestEvent(page, { eventType: 'signed.test', payload, secret: '' });
  await page.locator('#t-result', { hasText: 'Enter the subscription secret' }).waitFor();

  await provoking(/status of 4\d\d/, async () => {
    await sendTestEvent(page, { eventType: 'signed.test', payload, secret: 'the-wrong-secret-entirely' });
    await page.locator('#t-result .error-text', { hasText: 'Not sent' }).waitFor();
  });
  assert.equal(await page.locator('#key-dialog').isVisible(), false,
    'a rejected signature does not ask for an API key');

  await sendTestEvent(page, { eventType: 'signed.test', payload, secret });
  await page.locator('#t-result a').waitFor();
  const got = await until(async () => (await received(path))[0], { what: 'the signed delivery' });
  assert.equal(got.body, payload);
  const expected = 'sha256=' + createHmac('sha256', secret).update(payload).digest('hex');
  assert.equal(got.headers['x-hub-signature-256'], expected, 'Herald signs the delivery with the same secret');
  await deliveryRows(page).filter({ hasText: 'Success' }).first().waitFor();
  await page.context().close();
});

test("a failing subscription: see its attempts, then retry it", async () => {
  const page = await newPage();
  await page.goto(HERALD + '/');
  const path = '/toggle/flaky';
  const sub = await createThroughPage(page, { url: RECEIVER + path, maxAttempts: 2 });
  await sendTestEvent(page, { eventType: 'order.created', payload: '{"n": 1}' });
  const webhook = (await page.locator('#t-result a').textContent()).trim();

  // Two attempts, both 500: the first will be retried, the second is final.
  const retryInRow = page.getByRole('button', { name: `Retry webhook ${webhook} now` });
  await retryInRow.waitFor({ timeout: 20000 });
  const rows = deliveryRows(page).filter({ hasText: webhook });
  assert.equal(await rows.count(), 2);
  const newest = await rows.nth(0).locator('td').allTextContents();
  const oldest = await rows.nth(1).locator('td').allTextContents();
  assert.deepEqual([newest[3], newest[4], newest[5]], ['2', 'Failed', '500']);
  assert.deepEqual([oldest[3], oldest[4], oldest[5]], ['1', 'Failed, will retry', '500']);

  // The webhook's history: both attempts, the error and the response excerpt.
  await rows.nth(0).getByRole('link', { name: webhook }).click();
  const section = page.locator('#webhook-section');
  await section.locator('#webhook-heading', { hasText: webhook }).waitFor();
  await section.getByText('Attempt 2').waitFor();
  assert.equal(await section.locator('#attempt-list li').count(), 2);
  assert.equal(await section.locator('.response-excerpt', { hasText: 'toggle is off' }).count(), 2);
  await section.locator('.badge', { hasText: 'Failed' }).first().waitFor();
  const history = await apiJson('GET', '/webhooks/' + webhook);
  const lastError = history.body.deliveries[0].last_error;
  if (lastError) await section.getByText(lastError, { exact: false }).first().waitFor();

  // The receiver recovers; "Retry now" delivers it.
  await fetch(`${RECEIVER}/_toggle/flaky?status=200`, { method: 'POST' });
  await section.getByRole('button', { name: 'Retry now' }).click();
  await page.locator('#notice', { hasText: 'Retry queued' }).waitFor();
  await deliveryRows(page).filter({ hasText: webhook }).filter({ hasText: 'Success' }).waitFor({ timeout: 20000 });
  await section.locator('#attempt-list li', { hasText: 'Success' }).waitFor({ timeout: 10000 });
  assert.equal((await received(path)).length, 3, 'two failed attempts and the retried one');
  assert.equal(await retryInRow.count(), 0, 'no retry button once it succeeded');
  assert.equal((await apiJson('GET', '/subscriptions/' + sub.id)).status, 200);
  await page.context().close();
});

test('a disabled subscription: the badge and its reason, then re-enable it', async () => {
  const path = '/toggle/gone';
  await fetch(`${RECEIVER}/_toggle/gone?status=410`, { method: 'POST' });
  const sub = await createViaApi({ target_url: RECEIVER + path });
  const ingest = () => fetch(HERALD + '/ingest/' + encodeURIComponent(sub.id), {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"n": 1}',
  });
  assert.equal((await ingest()).status, 202);
  // A 410 Gone disables the subscription at once.
  const disabled = await until(async () => {
    const res = await apiJson('GET', '/subscriptions/' + sub.id);
    return res.body.disabled_at ? res.body : null;
  }, { what: 'the 410 to disable the subscription' });
  assert.match(disabled.disabled_reason, /410/);

  const page = await newPage();
  await page.goto(HERALD + '/#/s/' + encodeURIComponent(sub.id));
  const item = page.locator(`a.sub-item[data-sub-id="${sub.id}"]`);
  const listBadge = item.locator('.badge.bad', { hasText: 'disabled' });
  await listBadge.waitFor();
  assert.equal(await listBadge.getAttribute('title'), disabled.disabled_reason);
  const note = page.locator('.disabled-note');
  await note.waitFor();
  assert.ok((await note.textContent()).includes(disabled.disabled_reason), 'the detail shows the reason');
  await page.locator('.props', { hasText: 'Health' }).locator('.badge.bad', { hasText: 'disabled' }).waitFor();

  // The endpoint is fixed; "Re-enable" lifts it and deliveries resume.
  await fetch(`${RECEIVER}/_toggle/gone?status=200`, { method: 'POST' });
  await note.getByRole('button', { name: 'Re-enable' }).click();
  await page.locator('#notice', { hasText: 're-enabled' }).waitFor();
  await note.waitFor({ state: 'detached' });
  await page.locator('.props', { hasText: 'Health' }).getByText('healthy').waitFor();
  assert.equal(await item.locator('.badge.bad').count(), 0, 'no badge in the list any more');
  const after = await apiJson('GET', '/subscriptions/' + sub.id);
  assert.equal(after.body.disabled_at, null);
  assert.equal((await ingest()).status, 202);
  await until(async () => (await received(path)).length === 2, { what: 'the delivery after re-enabling' });
  await page.context().close();
});

test('a response body with <script> and <img onerror> is shown as literal text', async () => {
  const path = '/xss/1';
  const sub = await createViaApi({ target_url: RECEIVER + path });
  const page = await newPage();
  await page.goto(`${HERALD}/#/s/${sub.id}`);
  await page.locator('#detail-heading', { hasText: RECEIVER + path }).waitFor();
  await sendTestEvent(page, { eventType: 'xss.test', payload: '{"html": "<img src=x onerror=alert(3)>"}' });
  const webhook = (await page.locator('#t-result a').textContent()).trim();
  await deliveryRows(page).filter({ hasText: 'Success' }).waitFor();
  await page.getByRole('link', { name: webhook }).first().click();
  const excerpt = page.locator('#webhook-body .response-excerpt');
  await excerpt.waitFor();
  assert.equal(await excerpt.textContent(), XSS_BODY);
  assert.ok(await page.getByText('<script>alert(1)</script>', { exact: false }).isVisible(), 'the markup is visible as text');
  await new Promise((r) => setTimeout(r, 500)); // give any injected handler a chance to fire
  assert.equal(await page.locator('img').count(), 0, 'no img element was created');
  assert.equal(await page.locator('script').count(), 1, 'no script element besides app.js');
  assert.equal(await excerpt.locator('*').count(), 0, 'the excerpt has no child elements');
  assert.ok(!problems.some((p) => p.includes('dialog')), 'no alert dialog');
  await page.context().close();
});

test('screenshot of the dashboard for the README', async () => {
  // The flaky subscription: two failed attempts, then the retried one that succeeded.
  const sub = await findSubscription(RECEIVER + '/toggle/flaky');
  const deliveries = await apiJson('GET', `/subscriptions/${sub.id}/deliveries?limit=20`);
  const webhook = deliveries.body.data[0].webhook_id;
  const page = await newPage({ width: 1280, height: 1100 });
  await page.goto(`${HERALD}/#/s/${sub.id}/w/${webhook}`);
  await page.locator('#webhook-body #attempt-list').waitFor();
  await deliveryRows(page).first().waitFor();
  await page.locator('[data-stat="delivered"]').filter({ hasNotText: '–' }).waitFor();
  await page.evaluate(() => { document.activeElement.blur(); window.scrollTo(0, 0); });
  await page.screenshot({ path: SCREENSHOT });
  await page.context().close();
});

test('delete a subscription, with confirmation', async () => {
  const page = await newPage();
  await page.goto(`${HERALD}/#/s/${okSub.id}`);
  await page.locator('#detail-heading', { hasText: okUrl }).waitFor();
  const dialog = page.getByRole('dialog', { name: 'Delete subscription?' });

  await page.locator('#detail').getByRole('button', { name: 'Delete' }).click();
  await dialog.waitFor();
  assert.equal(await dialog.locator('#delete-target').textContent(), okUrl);
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Cancel', 'the safe choice has focus');
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await dialog.waitFor({ state: 'hidden' });
  assert.equal((await apiJson('GET', '/subscriptions/' + okSub.id)).status, 200, 'cancel keeps it');

  await page.locator('#detail').getByRole('button', { name: 'Delete' }).click();
  await dialog.waitFor();
  await dialog.getByRole('button', { name: 'Delete' }).click();
  await dialog.waitFor({ state: 'hidden' });
  await page.locator('#notice', { hasText: 'Subscription deleted' }).waitFor();
  await page.locator('#detail-heading', { hasText: 'No subscription selected' }).waitFor();
  assert.equal(await page.locator('#subscription-list a', { hasText: okUrl }).count(), 0);
  assert.equal((await apiJson('GET', '/subscriptions/' + okSub.id)).status, 404);
  await page.context().close();
});

test('operator-owned subscriptions are read-only and show their namespace/name', async () => {
  // The REST API cannot create operator-owned subscriptions, so the page gets one from a stub.
  const owned = {
    id: 'sub_01OPERATOROWNED00000000000',
    target_url: 'https://orders.shop.svc.example/webhooks',
    event_types: ['order.created'],
    has_secret: true,
    headers: {},
    max_attempts: null,
    timeout_ms: null,
    retry_schedule: null,
    paused: false,
    owner: { kind: 'kubernetes', namespace: 'shop', name: 'orders-hook' },
    created_at: '2026-01-01T00:00:00Z',
    updated_at: '2026-01-01T00:00:00Z',
  };
  const page = await newPage();
  await page.route(/\/subscriptions(\?.*)?$/, (route) => route.fulfill({ json: { data: [owned], next_cursor: null } }));
  await page.route(new RegExp(`/subscriptions/${owned.id}$`), (route) => route.fulfill({ json: owned }));
  await page.route(new RegExp(`/subscriptions/${owned.id}/deliveries`), (route) => route.fulfill({ json: { data: [] } }));
  await page.goto(`${HERALD}/#/s/${owned.id}`);
  await page.locator('#detail-heading', { hasText: owned.target_url }).waitFor();
  await page.locator('#subscription-list a', { hasText: 'k8s shop/orders-hook' }).waitFor();
  await page.locator('#detail .owned-note', { hasText: 'shop/orders-hook' }).waitFor();
  await page.locator('#detail .props', { hasText: 'kubernetes shop/orders-hook' }).waitFor();
  assert.equal(await page.locator('#detail').getByRole('button', { name: 'Edit' }).count(), 0);
  assert.equal(await page.locator('#detail').getByRole('button', { name: 'Delete' }).count(), 0);
  // Test events still work for it (signed, since it has a secret).
  await page.locator('#t-secret').waitFor();
  await page.context().close();
});

test('the list is paginated with next_cursor', async () => {
  const existing = [];
  let cursor = null;
  do {
    const res = await apiJson('GET', '/subscriptions?limit=100' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''));
    existing.push(...res.body.data);
    cursor = res.body.next_cursor;
  } while (cursor);
  const wanted = 23;
  for (let i = existing.length; i < wanted; i += 1) {
    await createViaApi({ target_url: `${RECEIVER}/ok/page-${String(i).padStart(2, '0')}` });
  }
  const total = Math.max(existing.length, wanted);
  const page = await newPage();
  await page.goto(HERALD + '/');
  const items = page.locator('#subscription-list li');
  await until(async () => (await items.count()) === 20, { what: 'the first page of 20' });
  const more = page.getByRole('button', { name: 'Load more' });
  await more.click();
  await until(async () => (await items.count()) === total, { what: `all ${total} subscriptions` });
  await more.waitFor({ state: 'hidden' });
  const ids = await page.locator('#subscription-list a').evaluateAll((as) => as.map((a) => a.dataset.subId));
  assert.equal(new Set(ids).size, ids.length, 'no subscription listed twice');
  await page.context().close();
});

test('phone width: one column, no horizontal scrolling, history readable', async () => {
  const sub = await findSubscription(RECEIVER + '/toggle/flaky');
  const deliveries = await apiJson('GET', `/subscriptions/${sub.id}/deliveries?limit=20`);
  const webhook = deliveries.body.data[0].webhook_id;
  const page = await newPage(PHONE, { isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  await page.goto(`${HERALD}/#/s/${sub.id}/w/${webhook}`);
  await page.locator('#webhook-body #attempt-list').waitFor();
  await deliveryRows(page).first().waitFor();
  const layout = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    detailTop: document.querySelector('#detail').getBoundingClientRect().top,
    listTop: document.querySelector('#list-panel').getBoundingClientRect().top,
    overflowing: [...document.querySelectorAll('.table-wrap, .panel, .attempt')]
      .filter((el) => el.scrollWidth > el.clientWidth + 1)
      .map((el) => el.className),
  }));
  assert.deepEqual(layout.overflowing, [], 'nothing needs sideways scrolling inside the page either');
  assert.ok(layout.scrollWidth <= layout.innerWidth, `no horizontal scroll (${layout.scrollWidth} > ${layout.innerWidth})`);
  assert.ok(layout.detailTop < layout.listTop, 'the open subscription comes first on a phone');
  assert.ok(await page.getByRole('link', { name: '← All subscriptions' }).isVisible());
  await page.screenshot({ path: join(process.env.UI_TESTS_WORK || tmpdir(), 'dashboard-phone.png'), fullPage: true });
  if (process.env.UI_TESTS_PHONE_SCREENSHOT) {
    await page.screenshot({ path: process.env.UI_TESTS_PHONE_SCREENSHOT, fullPage: true });
  }
  await page.context().close();
});

test('API keys: asked for once on 401, kept in sessionStorage only; the ingest key in the test form', async (t) => {
  const bin = process.env.HERALD_BIN;
  if (!bin) {
    t.skip('HERALD_BIN not set');
    return;
  }
  const key = 'ui-test-api-key-0123456789';
  const ingestKey = 'ui-test-ingest-key-9876543210';
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'herald-ui-key-'));
  const base = `http://127.0.0.1:${port}`;
  const child = spawn(bin, [], {
    env: {
      ...process.env,
      HERALD_ADDR: `127.0.0.1:${port}`,
      HERALD_SQLITE_PATH: join(dir, 'herald.db'),
      HERALD_ALLOW_TARGETS: '127.0.0.0/8,::1/128',
      HERALD_API_KEY: key,
      HERALD_INGEST_KEY: ingestKey,
    },
    stdio: 'ignore',
  });
  // This whole test provokes 401 answers on purpose.
  const allow = /status of 401/;
  expectedConsole.push(allow);
  try {
    await until(async () => (await fetch(base + '/ping')).ok, { timeout: 30000, what: 'the keyed herald' });
    assert.equal((await fetch(base + '/subscriptions')).status, 401, 'this herald wants a key');

    const page = await newPage();
    const authHeaders = [];
    page.on('request', (req) => {
      if (new URL(req.url()).pathname.startsWith('/subscriptions')) authHeaders.push(req.headers().authorization || null);
    });
    await page.goto(base + '/');
    const dialog = page.getByRole('dialog', { name: 'API key required' });
    await dialog.waitFor();

    await dialog.getByLabel('API key').fill('not-the-key');
    await dialog.getByRole('button', { name: 'Use key' }).click();
    await dialog.getByRole('alert').filter({ hasText: 'rejected' }).waitFor();

    await dialog.getByLabel('API key').fill(key);
    await dialog.getByRole('button', { name: 'Use key' }).click();
    await dialog.waitFor({ state: 'hidden' });
    await page.locator('#list-status', { hasText: 'No subscriptions yet' }).waitFor();
    await page.locator('[data-stat="ingested"]', { hasText: '0' }).waitFor();

    assert.equal(await page.evaluate(() => sessionStorage.getItem('herald.apiKey')), key);
    assert.equal(await page.evaluate(() => localStorage.length), 0, 'nothing in localStorage');
    assert.equal(await page.context().cookies().then((c) => c.length), 0, 'no cookies');

    // Creating works with the key, and nothing asks again, including after a reload.
    await createThroughPage(page, { url: RECEIVER + '/ok/keyed' }, { base, headers: { Authorization: 'Bearer ' + key } });

    // Ingest has a key of its own: the test-event form asks for it, the API key prompt stays shut.
    await sendTestEvent(page, { eventType: 'keyed.test', payload: '{"keyed": true}' });
    await page.locator('#t-result .error-text', { hasText: 'Not sent' }).waitFor();
    assert.equal(await dialog.isVisible(), false, 'an ingest 401 does not open the API key prompt');
    await page.getByLabel('Ingest key').fill(ingestKey);
    await page.locator('#test-event-form').getByRole('button', { name: 'Send test event' }).click();
    await page.locator('#t-result a').waitFor();
    await until(async () => (await received('/ok/keyed')).length === 1, { what: 'the keyed delivery' });
    assert.equal(await page.evaluate(() => sessionStorage.getItem('herald.ingestKey')), ingestKey);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('herald.apiKey')), key, 'the API key is untouched');
    await page.reload();
    await page.locator('#subscription-list a', { hasText: RECEIVER + '/ok/keyed' }).waitFor();
    assert.equal(await dialog.isVisible(), false, 'not asked again after a reload');
    assert.ok(authHeaders.includes('Bearer ' + key), 'requests carry Authorization: Bearer');
    await page.context().close();
  } finally {
    child.kill('SIGTERM');
    await rm(dir, { recursive: true, force: true });
    expectedConsole.splice(expectedConsole.indexOf(allow), 1);
  }
});

test('no console errors, page errors or JS dialogs on any page', () => {
  assert.deepEqual(problems, []);
});
