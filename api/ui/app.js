// Herald dashboard. Plain JavaScript, no build step, no dependencies.
//
// Rule for this file: anything that came from users or subscribers (URLs, payloads, headers,
// response bodies, error texts) reaches the page only as text nodes or textContent. The DOM
// is built with document.createElement and the h() helper below; no string is ever parsed
// as markup.
'use strict';

(() => {
  const KEY_STORAGE = 'herald.apiKey';
  const INGEST_KEY_STORAGE = 'herald.ingestKey';
  const DELIVERIES_REFRESH_MS = 3000;
  const STATS_REFRESH_MS = 5000;
  const PAGE_SIZE = 20;
  const SECRET_MIN = 16;
  const SECRET_MAX = 256;

  // ---------------------------------------------------------------- DOM helpers

  const $ = (selector, root = document) => root.querySelector(selector);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [name, value] of Object.entries(attrs)) {
        if (value === null || value === undefined || value === false) continue;
        if (name.startsWith('on') && typeof value === 'function') {
          el.addEventListener(name.slice(2), value);
        } else if (name === 'class') {
          el.className = value;
        } else if (name === 'dataset') {
          Object.assign(el.dataset, value);
        } else if (value === true) {
          el.setAttribute(name, '');
        } else {
          el.setAttribute(name, String(value));
        }
      }
    }
    appendChildren(el, children);
    return el;
  }

  function appendChildren(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function replaceChildren(el, ...children) {
    el.replaceChildren();
    appendChildren(el, children);
  }

  function subHref(subId, webhookId) {
    let href = '#/s/' + encodeURIComponent(subId);
    if (webhookId) href += '/w/' + encodeURIComponent(webhookId);
    return href;
  }

  // short: the time alone for today, else the date without the year; the full stamp is the
  // element's title either way.
  function fmtTime(iso, short = false) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const time = { hour: '2-digit', minute: '2-digit', second: '2-digit' };
    if (short) {
      const today = new Date().toDateString() === d.toDateString();
      return today ? d.toLocaleTimeString(undefined, time)
        : d.toLocaleString(undefined, { month: 'short', day: 'numeric', ...time });
    }
    return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', ...time });
  }

  function timeEl(iso, short = false) {
    return h('time', { datetime: iso || null, title: iso || null }, fmtTime(iso, short));
  }

  function fmtNumber(n) {
    return typeof n === 'number' && Number.isFinite(n) ? n.toLocaleString() : '–';
  }

  const OUTCOMES = {
    Success: { label: 'Success', cls: 'ok' },
    FailedAttempt: { label: 'Failed, will retry', cls: 'warn' },
    Failure: { label: 'Failed', cls: 'bad' },
  };
  const STATES = {
    queued: { label: 'Queued', cls: 'info' },
    delivering: { label: 'Delivering', cls: 'info' },
    succeeded: { label: 'Succeeded', cls: 'ok' },
    failed: { label: 'Failed', cls: 'bad' },
  };

  function badge(table, value) {
    const known = table[value];
    return h('span', { class: 'badge ' + (known ? known.cls : 'info') },
      known ? known.label : String(value ?? 'unknown'));
  }

  // Keeps keyboard focus on the "same" control when a region is re-rendered.
  function rerenderKeepingFocus(container, render) {
    const active = document.activeElement;
    const key = active && container.contains(active) ? active.dataset.focusKey : undefined;
    render();
    if (key) {
      const again = [...container.querySelectorAll('[data-focus-key]')]
        .find((el) => el.dataset.focusKey === key);
      if (again) again.focus({ preventScroll: true });
    }
  }

  // ---------------------------------------------------------------- notices

  let noticeTimer = null;
  function notify(message, kind = 'info') {
    const box = $('#notice');
    replaceChildren(box, h('p', { class: 'notice-' + kind }, message));
    box.classList.add('shown');
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => {
      box.classList.remove('shown');
      box.replaceChildren();
    }, kind === 'error' ? 10000 : 5000);
  }

  function errorText(err) {
    if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
    let text = err.message;
    const detail = err.body && err.body.detail;
    if (detail !== undefined && detail !== null) {
      text += ': ' + (typeof detail === 'string' ? detail : JSON.stringify(detail));
    }
    return text;
  }

  function showFormError(form, message) {
    const box = $('.form-error', form);
    box.textContent = message || '';
    box.hidden = !message;
  }

  // ---------------------------------------------------------------- API client

  class ApiError extends Error {
    constructor(status, body, message) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  function storedKey(name = KEY_STORAGE) {
    try { return sessionStorage.getItem(name); } catch { return null; }
  }
  function storeKey(key, name = KEY_STORAGE) {
    try {
      if (key) sessionStorage.setItem(name, key);
      else sessionStorage.removeItem(name);
    } catch { /* storage disabled: the key lives for this call only */ }
  }

  let keyPrompt = null; // the pending prompt, shared by every call that got a 401
  let keyDeclined = false; // the user cancelled: stop asking until they click "API key"

  // Management calls send the API key and ask for it on a 401. Ingest calls (ingest: true)
  // send the ingest key (HERALD_INGEST_KEY) when one was typed, else the API key, and never
  // open the API key prompt: their 401 may be about the signature or the ingest key instead.
  async function api(method, path, { body, headers = {}, ingest = false } = {}) {
    for (let round = 0; ; round += 1) {
      const sent = { Accept: 'application/json', ...headers };
      const key = (ingest && storedKey(INGEST_KEY_STORAGE)) || storedKey();
      if (key) sent.Authorization = 'Bearer ' + key;
      let payload;
      if (body !== undefined) {
        payload = typeof body === 'string' ? body : JSON.stringify(body);
        if (!sent['Content-Type']) sent['Content-Type'] = 'application/json';
      }
      let res;
      try {
        res = await fetch(path, { method, headers: sent, body: payload, cache: 'no-store' });
      } catch {
        throw new ApiError(0, null, 'Could not reach Herald');
      }
      if (res.status === 401 && !ingest && round < 5) {
        if (await askForKey(key)) continue;
        throw new ApiError(401, null, 'An API key is required');
      }
      const text = await res.text();
      let data = null;
      if (text) {
        try { data = JSON.parse(text); } catch { data = null; }
      }
      if (!res.ok) {
        const message = data && typeof data.error === 'string' ? data.error : 'HTTP ' + res.status;
        throw new ApiError(res.status, data, message);
      }
      return data;
    }
  }

  // Resolves true when a (new) key is available to retry with.
  function askForKey(rejectedKey) {
    const current = storedKey();
    if (current && current !== rejectedKey) return Promise.resolve(true);
    if (keyPrompt) return keyPrompt;
    if (keyDeclined) return Promise.resolve(false);
    keyPrompt = openKeyDialog(rejectedKey ? 'Herald rejected that key. Try another.' : '')
      .finally(() => { keyPrompt = null; });
    return keyPrompt;
  }

  function openKeyDialog(message) {
    const dialog = $('#key-dialog');
    const form = $('#key-form');
    const input = $('#key-input');
    input.value = '';
    showFormError(form, message);
    $('#key-forget').hidden = !storedKey();
    return new Promise((resolve) => {
      let done = false;
      const finish = (ok) => {
        if (done) return;
        done = true;
        form.removeEventListener('submit', onSubmit);
        dialog.removeEventListener('close', onClose);
        if (dialog.open) dialog.close();
        resolve(ok);
      };
      const onSubmit = (event) => {
        event.preventDefault();
        const key = input.value.trim();
        if (!key) {
          showFormError(form, 'Enter the API key.');
          input.focus();
          return;
        }
        storeKey(key);
        keyDeclined = false;
        finish(true);
      };
      const onClose = () => {
        if (!done) keyDeclined = true;
        finish(false);
      };
      form.addEventListener('submit', onSubmit);
      dialog.addEventListener('close', onClose);
      dialog.showModal();
      input.focus();
    });
  }

  // ---------------------------------------------------------------- state

  const state = {
    subs: [],
    nextCursor: null,
    listLoaded: false,
    route: { sub: null, webhook: null },
    current: null, // the open subscription
    deliveriesSig: null,
    webhookSig: null,
    pollTimer: null,
    pollGeneration: 0,
  };

  // ---------------------------------------------------------------- stats

  async function refreshStats() {
    try {
      const stats = await api('GET', '/stats');
      const queue = (stats && stats.queue) || {};
      const values = {
        ingested: stats.ingested, delivered: stats.delivered, failed: stats.failed,
        ready: queue.ready, scheduled: queue.scheduled, in_flight: queue.in_flight,
      };
      for (const [name, value] of Object.entries(values)) {
        const dd = document.querySelector(`[data-stat="${name}"]`);
        if (dd) dd.textContent = fmtNumber(value);
      }
    } catch {
      // Counters are a convenience; the list shows the real error if Herald is unreachable.
    }
  }

  // ---------------------------------------------------------------- subscription list

  async function loadList({ append = false } = {}) {
    const status = $('#list-status');
    const more = $('#load-more');
    let path = '/subscriptions?limit=' + PAGE_SIZE;
    if (append && state.nextCursor) path += '&cursor=' + encodeURIComponent(state.nextCursor);
    more.disabled = true;
    try {
      const page = await api('GET', path);
      const data = Array.isArray(page && page.data) ? page.data : [];
      state.subs = append ? state.subs.concat(data) : data;
      state.nextCursor = page && page.next_cursor ? page.next_cursor : null;
      state.listLoaded = true;
      renderList();
    } catch (err) {
      status.hidden = false;
      status.textContent = 'Could not load subscriptions: ' + errorText(err);
    } finally {
      more.disabled = false;
    }
  }

  function renderList() {
    const list = $('#subscription-list');
    const status = $('#list-status');
    status.hidden = state.subs.length > 0;
    status.textContent = state.subs.length ? '' : 'No subscriptions yet. Create one to start delivering webhooks.';
    rerenderKeepingFocus(list, () => {
      replaceChildren(list, state.subs.map((sub) => {
        const selected = state.route.sub === sub.id;
        return h('li', null,
          h('a', {
            href: subHref(sub.id),
            class: 'sub-item',
            'aria-current': selected ? 'true' : null,
            dataset: { focusKey: 'sub:' + sub.id, subId: sub.id },
          },
          h('span', { class: 'sub-url break' }, sub.target_url),
          h('span', { class: 'sub-meta' },
            h('span', { class: 'chips' }, eventTypeChips(sub.event_types)),
            sub.disabled_at ? disabledBadge(sub) : null,
            sub.has_secret ? h('span', { class: 'badge info' }, 'signed') : null,
            sub.paused ? h('span', { class: 'badge warn' }, 'paused') : null,
            sub.owner ? h('span', { class: 'badge owner' }, 'k8s ' + ownerName(sub.owner)) : null)));
      }));
    });
    $('#load-more').hidden = !state.nextCursor;
  }

  function disabledReason(sub) {
    return sub.disabled_reason || 'no reason recorded';
  }

  // The list has no room for the reason: sighted users get it as the tooltip, screen readers
  // as hidden text (aria-label on a plain span is not read out everywhere).
  function disabledBadge(sub) {
    const reason = disabledReason(sub);
    return h('span', { class: 'badge bad', title: reason },
      'disabled', h('span', { class: 'visually-hidden' }, ': ' + reason));
  }

  function healthText(sub) {
    if (sub.disabled_at) {
      return h('span', null, h('span', { class: 'badge bad' }, 'disabled'), ' since ', timeEl(sub.disabled_at), ': ',
        h('span', { class: 'disabled-reason' }, disabledReason(sub)));
    }
    if (sub.failing_since) return h('span', null, h('span', { class: 'badge warn' }, 'failing'), ' since ', timeEl(sub.failing_since));
    return 'healthy';
  }

  function secretText(sub) {
    if (!sub.has_secret) return 'none';
    if (!sub.previous_secret_expires_at) return 'set (never shown)';
    return h('span', null, 'set (never shown); the previous secret is also valid until ', timeEl(sub.previous_secret_expires_at));
  }

  async function reEnable(sub, button) {
    button.disabled = true;
    try {
      // Any PATCH re-enables; an empty one changes nothing else.
      const updated = await api('PATCH', '/subscriptions/' + encodeURIComponent(sub.id), { body: {} });
      upsertListed(updated);
      notify('Subscription re-enabled: deliveries resume.', 'ok');
      if (state.route.sub === updated.id) openSubscription(updated.id, { focus: false });
    } catch (err) {
      notify('Not re-enabled: ' + errorText(err), 'error');
      button.disabled = false;
    }
  }

  function eventTypeChips(types) {
    if (!Array.isArray(types) || types.length === 0) return h('span', { class: 'chip all' }, 'all events');
    return types.map((t) => h('span', { class: 'chip' }, t));
  }

  function ownerName(owner) {
    return `${owner.namespace ?? '?'}/${owner.name ?? '?'}`;
  }

  function upsertListed(sub) {
    const i = state.subs.findIndex((s) => s.id === sub.id);
    if (i >= 0) state.subs[i] = sub;
    else state.subs.unshift(sub);
    renderList();
  }

  // ---------------------------------------------------------------- routing

  function parseRoute() {
    const m = /^#\/s\/([^/]+)(?:\/w\/([^/]+))?\/?$/.exec(location.hash);
    if (!m) return { sub: null, webhook: null };
    try {
      return { sub: decodeURIComponent(m[1]), webhook: m[2] ? decodeURIComponent(m[2]) : null };
    } catch {
      return { sub: null, webhook: null };
    }
  }

  function onRoute({ initial = false } = {}) {
    // Hashes that are not routes (the skip link) leave the view as it is.
    if (location.hash && !location.hash.startsWith('#/')) return;
    const next = parseRoute();
    const prev = state.route;
    state.route = next;
    if (state.listLoaded) renderList();
    if (next.sub !== prev.sub || initial) {
      openSubscription(next.sub, { focus: !initial });
    } else if (next.webhook !== prev.webhook) {
      state.webhookSig = null;
      state.deliveriesSig = null;
      renderWebhookSection();
      refreshDeliveries();
      if (next.webhook) refreshWebhook({ focus: true });
    }
  }

  // ---------------------------------------------------------------- detail panel

  function stopPolling() {
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
    state.pollGeneration += 1;
  }

  function schedulePoll(generation) {
    clearTimeout(state.pollTimer);
    state.pollTimer = setTimeout(async () => {
      if (generation !== state.pollGeneration) return;
      if (!document.hidden) {
        await Promise.all([refreshDeliveries(), state.route.webhook ? refreshWebhook() : null]);
      }
      if (generation === state.pollGeneration) schedulePoll(generation);
    }, DELIVERIES_REFRESH_MS);
  }

  async function openSubscription(id, { focus = true } = {}) {
    stopPolling();
    state.current = null;
    state.deliveriesSig = null;
    state.webhookSig = null;
    const detail = $('#detail');
    if (!id) {
      replaceChildren(detail,
        h('h2', { id: 'detail-heading', tabindex: '-1' }, 'No subscription selected'),
        h('p', { class: 'muted' }, 'Choose a subscription from the list to see its settings and recent deliveries, or create a new one.'));
      detail.classList.remove('has-selection');
      return;
    }
    replaceChildren(detail, h('h2', { id: 'detail-heading', tabindex: '-1' }, 'Loading…'));
    const generation = state.pollGeneration;
    let sub;
    try {
      sub = await api('GET', '/subscriptions/' + encodeURIComponent(id));
    } catch (err) {
      if (generation !== state.pollGeneration) return;
      replaceChildren(detail,
        h('h2', { id: 'detail-heading', tabindex: '-1' }, 'Subscription not available'),
        h('p', { class: 'error-text' }, err.status === 404 ? 'No subscription with this id: it may have been deleted.' : errorText(err)),
        h('p', null, h('a', { href: '#/' }, 'Back to the list')));
      if (focus) $('#detail-heading').focus();
      return;
    }
    if (generation !== state.pollGeneration) return; // the user moved on meanwhile
    state.current = sub;
    renderDetail(sub);
    detail.classList.add('has-selection');
    if (focus) {
      const heading = $('#detail-heading');
      heading.focus({ preventScroll: true });
      heading.scrollIntoView({ block: 'start', behavior: 'auto' });
    }
    await Promise.all([refreshDeliveries(), state.route.webhook ? refreshWebhook() : null]);
    if (generation === state.pollGeneration) schedulePoll(generation);
  }

  function renderDetail(sub) {
    const detail = $('#detail');
    const owned = !!sub.owner;
    const rows = [
      ['ID', h('code', null, sub.id)],
      ['Event types', h('span', { class: 'chips' }, eventTypeChips(sub.event_types))],
      ['Health', healthText(sub)],
      ['Signing secret', secretText(sub)],
      ['Extra headers', headerList(sub.headers)],
      ['Max attempts', sub.max_attempts ?? 'default'],
      ['Timeout', sub.timeout_ms != null ? sub.timeout_ms + ' ms' : 'default'],
      ['Retry schedule', Array.isArray(sub.retry_schedule) ? sub.retry_schedule.join(', ') : 'default'],
      ['Paused', sub.paused ? 'yes' : 'no'],
      ['Created', timeEl(sub.created_at)],
      ['Updated', timeEl(sub.updated_at)],
    ];
    if (owned) rows.splice(1, 0, ['Managed by', `${sub.owner.kind || 'kubernetes'} ${ownerName(sub.owner)} (namespace/name)`]);

    replaceChildren(detail,
      h('div', { class: 'detail-head' },
        h('p', { class: 'back-link' }, h('a', { href: '#/' }, '← All subscriptions')),
        h('h2', { id: 'detail-heading', tabindex: '-1', class: 'break' }, sub.target_url),
        h('div', { class: 'actions' },
          owned ? null : h('button', { type: 'button', onclick: () => openSubscriptionDialog(sub) }, 'Edit'),
          owned ? null : h('button', { type: 'button', class: 'danger', onclick: () => confirmDelete(sub) }, 'Delete'))),
      owned ? h('p', { class: 'owned-note' },
        'Read-only: this subscription is managed by the Kubernetes operator (WebhookSubscription ',
        h('strong', null, ownerName(sub.owner)),
        '). Change it through that resource.') : null,
      sub.disabled_at ? h('div', { class: 'disabled-note', role: 'status' },
        h('p', null, h('strong', null, 'Disabled: '), disabledReason(sub)),
        h('p', null, 'Herald does not deliver to it, its queued deliveries ended as failed, and ingest to it answers 409.'),
        owned ? h('p', null, 'Fix the endpoint, then change the WebhookSubscription to re-enable it.')
          : h('p', null, h('button', { type: 'button', id: 're-enable', onclick: (e) => reEnable(sub, e.currentTarget) }, 'Re-enable'),
            ' once the endpoint is fixed (saving an edit re-enables too).')) : null,
      h('dl', { class: 'props' }, rows.map(([k, v]) => h('div', null, h('dt', null, k), h('dd', null, v)))),
      testEventSection(sub),
      h('section', { class: 'sub-section', 'aria-labelledby': 'deliveries-heading' },
        h('div', { class: 'section-head' },
          h('h3', { id: 'deliveries-heading' }, 'Recent deliveries'),
          h('span', { class: 'muted small', id: 'deliveries-updated', 'aria-live': 'off' }, ''),
          h('button', { type: 'button', class: 'quiet small-btn', onclick: () => refreshDeliveries() }, 'Refresh')),
        h('p', { class: 'muted small' }, `Newest first, the last 20 attempts; refreshes every ${DELIVERIES_REFRESH_MS / 1000} seconds.`),
        h('div', { id: 'deliveries' }, h('p', { class: 'muted' }, 'Loading…'))),
      h('section', { class: 'sub-section', id: 'webhook-section', 'aria-labelledby': 'webhook-heading', hidden: true }));
    renderWebhookSection();
  }

  function headerList(headers) {
    const entries = headers && typeof headers === 'object' ? Object.entries(headers) : [];
    if (!entries.length) return 'none';
    return h('ul', { class: 'plain' }, entries.map(([k, v]) => h('li', null, h('code', null, `${k}: ${v}`))));
  }

  // ---------------------------------------------------------------- deliveries

  async function refreshDeliveries() {
    const sub = state.current;
    if (!sub) return;
    const box = $('#deliveries');
    let page;
    try {
      page = await api('GET', '/subscriptions/' + encodeURIComponent(sub.id) + '/deliveries?limit=20');
    } catch (err) {
      if (state.current !== sub || !box.isConnected) return;
      replaceChildren(box, h('p', { class: 'error-text' }, 'Could not load deliveries: ' + errorText(err)));
      state.deliveriesSig = null;
      return;
    }
    if (state.current !== sub || !box.isConnected) return;
    const attempts = Array.isArray(page && page.data) ? page.data : [];
    const updated = $('#deliveries-updated');
    if (updated) updated.textContent = 'updated ' + new Date().toLocaleTimeString();
    const sig = JSON.stringify(attempts) + '|' + state.route.webhook;
    if (sig === state.deliveriesSig) return;
    state.deliveriesSig = sig;
    rerenderKeepingFocus(box, () => renderDeliveries(box, sub, attempts));
  }

  function renderDeliveries(box, sub, attempts) {
    const testEvent = $('#test-event');
    if (testEvent && !attempts.length && !testEvent.dataset.autoOpened) {
      testEvent.dataset.autoOpened = 'yes';
      testEvent.open = true;
    }
    if (!attempts.length) {
      replaceChildren(box, h('p', { class: 'muted', id: 'no-deliveries' }, 'No delivery attempts yet. Send a test event to try it.'));
      return;
    }
    // A webhook's newest attempt is the first row of it; only that row offers "Retry now".
    const seen = new Set();
    const rows = attempts.map((a) => {
      const newest = !seen.has(a.webhook_id);
      seen.add(a.webhook_id);
      const canRetry = newest && a.outcome === 'Failure';
      const open = state.route.webhook === a.webhook_id;
      return h('tr', { class: open ? 'open' : null, dataset: { webhookId: a.webhook_id, attempt: a.attempt } },
        h('td', { 'data-label': 'When', class: 'nowrap' }, timeEl(a.attempted_at, true)),
        h('td', { 'data-label': 'Webhook' },
          h('a', {
            href: subHref(sub.id, a.webhook_id),
            class: 'mono',
            'aria-current': open ? 'true' : null,
            dataset: { focusKey: `wh:${a.webhook_id}:${a.attempt}` },
          }, a.webhook_id)),
        h('td', { 'data-label': 'Event' }, a.event_type ?? '—'),
        h('td', { 'data-label': 'Attempt', class: 'num' }, a.attempt),
        h('td', { 'data-label': 'Outcome' }, badge(OUTCOMES, a.outcome)),
        h('td', { 'data-label': 'HTTP', class: 'num' }, a.http_status ?? '—'),
        h('td', { 'data-label': 'Duration', class: 'num' }, (a.duration_ms ?? '—') + ' ms'),
        h('td', { 'data-label': 'Action' }, canRetry
          ? h('button', {
            type: 'button',
            class: 'small-btn',
            dataset: { focusKey: 'retry:' + a.webhook_id },
            'aria-label': 'Retry webhook ' + a.webhook_id + ' now',
            onclick: (e) => retryWebhook(a.webhook_id, e.currentTarget),
          }, 'Retry now')
          : null));
    });
    replaceChildren(box,
      h('div', { class: 'table-wrap' },
        h('table', { class: 'data responsive', id: 'deliveries-table' },
          h('caption', { class: 'visually-hidden' }, 'Delivery attempts, newest first'),
          h('thead', null, h('tr', null,
            ['When', 'Webhook', 'Event', 'Attempt', 'Outcome', 'HTTP', 'Duration', ''].map((c) =>
              h('th', { scope: 'col' }, c || h('span', { class: 'visually-hidden' }, 'Actions'))))),
          h('tbody', null, rows))));
  }

  async function retryWebhook(webhookId, button) {
    if (button) button.disabled = true;
    try {
      const res = await api('POST', '/webhooks/' + encodeURIComponent(webhookId) + '/retry');
      const n = res && typeof res.requeued === 'number' ? res.requeued : 1;
      notify(`Retry queued for ${webhookId} (${n} ${n === 1 ? 'delivery' : 'deliveries'}).`, 'ok');
    } catch (err) {
      if (err.status === 409) notify(`Nothing to retry for ${webhookId}: no delivery of it has failed.`, 'info');
      else notify('Retry failed: ' + errorText(err), 'error');
    } finally {
      if (button && button.isConnected) button.disabled = false;
    }
    state.deliveriesSig = null;
    state.webhookSig = null;
    refreshDeliveries();
    if (state.route.webhook) refreshWebhook();
    refreshStats();
  }

  // ---------------------------------------------------------------- one webhook's history

  function renderWebhookSection() {
    const section = $('#webhook-section');
    if (!section) return;
    const id = state.route.webhook;
    section.hidden = !id;
    if (!id) {
      section.replaceChildren();
      return;
    }
    replaceChildren(section,
      h('div', { class: 'section-head' },
        h('h3', { id: 'webhook-heading', tabindex: '-1' }, 'Webhook ', h('code', null, id)),
        h('a', { href: subHref(state.route.sub), class: 'small' }, 'Close')),
      h('div', { id: 'webhook-body' }, h('p', { class: 'muted' }, 'Loading…')));
  }

  async function refreshWebhook({ focus = false } = {}) {
    const id = state.route.webhook;
    if (!id) return;
    let wh;
    try {
      wh = await api('GET', '/webhooks/' + encodeURIComponent(id));
    } catch (err) {
      const body = $('#webhook-body');
      if (!body || state.route.webhook !== id) return;
      state.webhookSig = null;
      replaceChildren(body, h('p', { class: 'error-text' }, err.status === 404 ? 'This webhook is not known (it may have expired).' : errorText(err)));
      return;
    }
    const body = $('#webhook-body');
    if (!body || state.route.webhook !== id) return;
    const sig = JSON.stringify(wh);
    if (sig !== state.webhookSig) {
      state.webhookSig = sig;
      rerenderKeepingFocus(body, () => renderWebhook(body, wh));
    }
    if (focus) {
      const heading = $('#webhook-heading');
      if (heading) {
        heading.focus({ preventScroll: true });
        heading.scrollIntoView({ block: 'start', behavior: 'auto' });
      }
    }
  }

  function renderWebhook(box, wh) {
    const deliveries = Array.isArray(wh.deliveries) ? wh.deliveries : [];
    const attempts = Array.isArray(wh.attempts) ? wh.attempts : [];
    const failed = deliveries.some((d) => d.status === 'failed');
    replaceChildren(box,
      h('dl', { class: 'props' },
        h('div', null, h('dt', null, 'Status'), h('dd', null, badge(STATES, wh.status))),
        h('div', null, h('dt', null, 'Event type'), h('dd', null, wh.event_type ?? '—')),
        h('div', null, h('dt', null, 'Received'), h('dd', null, timeEl(wh.received_at)))),
      failed ? h('p', null, h('button', {
        type: 'button',
        class: 'primary',
        dataset: { focusKey: 'retry-webhook' },
        onclick: (e) => retryWebhook(wh.webhook_id, e.currentTarget),
      }, 'Retry now')) : null,
      h('h4', null, 'Deliveries'),
      deliveries.length ? h('div', { class: 'table-wrap' },
        h('table', { class: 'data responsive' },
          h('thead', null, h('tr', null,
            ['Subscription', 'Status', 'Attempts', 'Next attempt', 'Last error'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', null, deliveries.map((d) => h('tr', null,
            h('td', { 'data-label': 'Subscription' }, h('code', null, d.subscription_id)),
            h('td', { 'data-label': 'Status' }, badge(STATES, d.status)),
            h('td', { 'data-label': 'Attempts', class: 'num' }, d.attempts),
            h('td', { 'data-label': 'Next attempt' }, d.next_attempt_at ? timeEl(d.next_attempt_at, true) : '—'),
            h('td', { 'data-label': 'Last error', class: 'break' }, d.last_error ?? '—'))))))
        : h('p', { class: 'muted' }, 'No deliveries.'),
      h('h4', null, 'Attempts (oldest first)'),
      attempts.length ? h('ol', { class: 'attempts', id: 'attempt-list' }, attempts.map((a) => h('li', { class: 'attempt' },
        h('div', { class: 'attempt-head' },
          h('strong', null, 'Attempt ' + a.attempt),
          badge(OUTCOMES, a.outcome),
          h('span', null, a.http_status != null ? 'HTTP ' + a.http_status : 'no response'),
          h('span', null, (a.duration_ms ?? '—') + ' ms'),
          timeEl(a.attempted_at, true)),
        h('p', { class: 'small muted break' }, 'To ', a.target_url),
        a.error ? h('div', { class: 'excerpt' }, h('span', { class: 'excerpt-label' }, 'Error'), h('pre', { class: 'error-text' }, a.error)) : null,
        a.response_excerpt != null && a.response_excerpt !== ''
          ? h('div', { class: 'excerpt' }, h('span', { class: 'excerpt-label' }, 'Response excerpt'), h('pre', { class: 'response-excerpt' }, a.response_excerpt))
          : null)))
        : h('p', { class: 'muted' }, 'No attempts yet.'));
  }

  // ---------------------------------------------------------------- test events

  function testEventSection(sub) {
    const defaultType = Array.isArray(sub.event_types) && sub.event_types.length ? sub.event_types[0] : 'test.event';
    const payloadError = h('p', { class: 'field-error', id: 't-payload-error', role: 'alert', hidden: true });
    const payload = h('textarea', {
      id: 't-payload', name: 'payload', rows: 6, spellcheck: 'false',
      'aria-describedby': 't-payload-help t-payload-error',
    });
    payload.value = JSON.stringify({ hello: 'world', sent_at: new Date().toISOString() }, null, 2);
    const eventType = h('input', { id: 't-event-type', name: 'event_type', type: 'text', autocomplete: 'off', spellcheck: 'false' });
    eventType.value = defaultType;
    const secretField = sub.has_secret ? h('div', { class: 'field' },
      h('label', { for: 't-secret' }, 'Subscription secret (to sign this event)'),
      h('input', { id: 't-secret', name: 'secret', type: 'password', autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 't-secret-help' }),
      h('small', { id: 't-secret-help' },
        'This subscription has a secret, so Herald only accepts events signed with it (X-Hub-Signature-256). ',
        'The signature is computed in this browser; the secret is not stored or sent.')) : null;
    // Shown when Herald wants a key for ingest (HERALD_INGEST_KEY), or one is already kept.
    const ingestKey = h('input', { id: 't-ingest-key', name: 'ingest_key', type: 'password', autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 't-ingest-key-help' });
    ingestKey.value = storedKey(INGEST_KEY_STORAGE) || '';
    const ingestKeyField = h('div', { class: 'field', id: 't-ingest-key-field', hidden: !ingestKey.value },
      h('label', { for: 't-ingest-key' }, 'Ingest key'),
      ingestKey,
      h('small', { id: 't-ingest-key-help' },
        'Herald asks for a key to ingest events (HERALD_INGEST_KEY). Kept in this tab\'s session storage only.'));
    const result = h('div', { id: 't-result', 'aria-live': 'polite' });
    const send = h('button', { type: 'submit', class: 'primary', id: 't-send' }, 'Send test event');

    const validate = () => {
      const text = payload.value;
      let message = '';
      if (!text.trim()) message = 'The payload is empty.';
      else {
        try { JSON.parse(text); } catch (e) { message = 'Not valid JSON: ' + e.message; }
      }
      payloadError.textContent = message;
      payloadError.hidden = !message;
      payload.setAttribute('aria-invalid', message ? 'true' : 'false');
      return !message;
    };
    payload.addEventListener('input', validate);

    const format = () => {
      if (!validate()) { payload.focus(); return; }
      payload.value = JSON.stringify(JSON.parse(payload.value), null, 2);
    };

    const form = h('form', { id: 'test-event-form', novalidate: true },
      h('div', { class: 'field' },
        h('label', { for: 't-event-type' }, 'Event type'),
        eventType),
      h('div', { class: 'field' },
        h('label', { for: 't-payload' }, 'JSON payload'),
        payload,
        h('small', { id: 't-payload-help' }, 'Sent as the request body exactly as written.'),
        payloadError),
      secretField,
      ingestKeyField,
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'quiet', onclick: format }, 'Format JSON'),
        send),
      result);

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!validate()) { payload.focus(); return; }
      const body = payload.value;
      const headers = { 'Content-Type': 'application/json' };
      const type = eventType.value.trim();
      if (type) headers['Event-Type'] = type;
      replaceChildren(result);
      if (sub.has_secret) {
        const secret = $('#t-secret', form).value;
        if (!secret) {
          replaceChildren(result, h('p', { class: 'error-text' }, 'Enter the subscription secret to sign this event.'));
          $('#t-secret', form).focus();
          return;
        }
        try {
          headers['X-Hub-Signature-256'] = await hubSignature(secret, body);
        } catch (err) {
          replaceChildren(result, h('p', { class: 'error-text' }, err.message));
          return;
        }
      }
      if (!ingestKeyField.hidden) storeKey(ingestKey.value.trim(), INGEST_KEY_STORAGE);
      send.disabled = true;
      try {
        const res = await api('POST', '/ingest/' + encodeURIComponent(sub.id), { body, headers, ingest: true });
        const id = res && res.webhook_id;
        replaceChildren(result, h('p', { class: 'ok-text' },
          'Queued as ',
          id ? h('a', { href: subHref(sub.id, id), class: 'mono' }, id) : 'a new webhook',
          '.'));
        state.deliveriesSig = null;
        refreshDeliveries();
        refreshStats();
      } catch (err) {
        replaceChildren(result, h('p', { class: 'error-text' }, 'Not sent: ' + errorText(err)));
        // A 401 about the key (not the signature): ask for the ingest key right here.
        if (err.status === 401 && /key/i.test(err.message) && !/signature/i.test(err.message)) {
          ingestKeyField.hidden = false;
          ingestKey.focus();
        }
      } finally {
        send.disabled = false;
      }
    });

    // Closed by default so the deliveries stay in view; opens itself for a subscription
    // that has had no delivery yet.
    const details = h('details', { class: 'sub-section test-event', id: 'test-event' },
      h('summary', null, h('h3', { id: 'test-heading' }, 'Send a test event')),
      form);
    // Once the user opened or closed it, it is theirs: no opening by itself any more.
    details.querySelector('summary').addEventListener('click', () => { details.dataset.autoOpened = 'user'; });
    return details;
  }

  async function hubSignature(secret, body) {
    const subtle = window.crypto && window.crypto.subtle;
    if (!subtle) {
      throw new Error('This browser cannot sign here: WebCrypto needs HTTPS or localhost. '
        + 'Send signed events with curl instead (X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>).');
    }
    const enc = new TextEncoder();
    const key = await subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    const mac = new Uint8Array(await subtle.sign('HMAC', key, enc.encode(body)));
    return 'sha256=' + Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---------------------------------------------------------------- create / edit

  function parseHeaders(text) {
    const headers = {};
    const lines = text.split('\n');
    for (let i = 0; i < lines.length; i += 1) {
      const line = lines[i].trim();
      if (!line) continue;
      const colon = line.indexOf(':');
      if (colon <= 0) throw new Error(`Header line ${i + 1} must look like "Name: value".`);
      const name = line.slice(0, colon).trim();
      if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) throw new Error(`"${name}" is not a valid header name.`);
      headers[name] = line.slice(colon + 1).trim();
    }
    return headers;
  }

  function parseList(text) {
    return text.split(/[,\n]/).map((s) => s.trim()).filter(Boolean);
  }

  function parseIntField(input, label, min, max) {
    const raw = input.value.trim();
    if (!raw) return null;
    if (!/^\d+$/.test(raw)) throw new Error(`${label} must be a whole number.`);
    const n = Number(raw);
    if (n < min || n > max) throw new Error(`${label} must be between ${min} and ${max}.`);
    return n;
  }

  let editing = null; // the subscription being edited, or null when creating

  function openSubscriptionDialog(sub) {
    editing = sub || null;
    const dialog = $('#subscription-dialog');
    const form = $('#subscription-form');
    form.reset();
    showFormError(form, '');
    $('#subscription-dialog-title').textContent = sub ? 'Edit subscription' : 'New subscription';
    $('#subscription-submit').textContent = sub ? 'Save changes' : 'Create';
    $('#f-clear-secret-row').hidden = !(sub && sub.has_secret);
    $('#f-secret').placeholder = sub && sub.has_secret ? 'Leave empty to keep the current secret' : '';
    if (sub) {
      $('#f-target-url').value = sub.target_url || '';
      $('#f-event-types').value = (sub.event_types || []).join(', ');
      $('#f-headers').value = Object.entries(sub.headers || {}).map(([k, v]) => `${k}: ${v}`).join('\n');
      $('#f-max-attempts').value = sub.max_attempts ?? '';
      $('#f-timeout').value = sub.timeout_ms ?? '';
      $('#f-retry-schedule').value = Array.isArray(sub.retry_schedule) ? sub.retry_schedule.join(', ') : '';
      $('#f-paused').checked = !!sub.paused;
    }
    dialog.showModal();
    $('#f-target-url').focus();
  }

  function readSubscriptionForm() {
    const url = $('#f-target-url').value.trim();
    if (!url) throw new Error('Enter the target URL.');
    let parsed;
    try { parsed = new URL(url); } catch { throw new Error('The target URL is not a valid URL.'); }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new Error('The target URL must start with http:// or https://.');
    const secret = $('#f-secret').value;
    if (secret) {
      const bytes = new TextEncoder().encode(secret).length;
      if (bytes < SECRET_MIN || bytes > SECRET_MAX) throw new Error(`The secret must be ${SECRET_MIN} to ${SECRET_MAX} bytes (it is ${bytes}).`);
    }
    const retry = parseList($('#f-retry-schedule').value);
    return {
      target_url: url,
      event_types: parseList($('#f-event-types').value),
      secret,
      clear_secret: $('#f-clear-secret').checked,
      headers: parseHeaders($('#f-headers').value),
      max_attempts: parseIntField($('#f-max-attempts'), 'Max attempts', 1, 50),
      timeout_ms: parseIntField($('#f-timeout'), 'Timeout', 1, 120000),
      retry_schedule: retry.length ? retry : null,
      paused: $('#f-paused').checked,
    };
  }

  async function submitSubscription(event) {
    event.preventDefault();
    const form = $('#subscription-form');
    let v;
    try {
      v = readSubscriptionForm();
    } catch (err) {
      showFormError(form, err.message);
      return;
    }
    showFormError(form, '');
    const submit = $('#subscription-submit');
    submit.disabled = true;
    try {
      let sub;
      if (editing) {
        const patch = {
          target_url: v.target_url,
          event_types: v.event_types,
          headers: v.headers,
          max_attempts: v.max_attempts,
          timeout_ms: v.timeout_ms,
          retry_schedule: v.retry_schedule,
          paused: v.paused,
        };
        if (v.secret) patch.secret = v.secret;
        else if (v.clear_secret) patch.secret = null;
        sub = await api('PATCH', '/subscriptions/' + encodeURIComponent(editing.id), { body: patch });
      } else {
        const spec = { target_url: v.target_url, event_types: v.event_types, headers: v.headers, paused: v.paused };
        if (v.secret) spec.secret = v.secret;
        if (v.max_attempts != null) spec.max_attempts = v.max_attempts;
        if (v.timeout_ms != null) spec.timeout_ms = v.timeout_ms;
        if (v.retry_schedule) spec.retry_schedule = v.retry_schedule;
        sub = await api('POST', '/subscriptions', { body: spec });
      }
      $('#subscription-dialog').close();
      upsertListed(sub);
      notify(editing ? 'Subscription saved.' : 'Subscription created.', 'ok');
      if (state.route.sub === sub.id) {
        openSubscription(sub.id);
      } else {
        location.hash = subHref(sub.id);
      }
    } catch (err) {
      showFormError(form, (editing ? 'Not saved: ' : 'Not created: ') + errorText(err));
    } finally {
      submit.disabled = false;
    }
  }

  // ---------------------------------------------------------------- delete

  let deleting = null;

  function confirmDelete(sub) {
    deleting = sub;
    const form = $('#delete-form');
    showFormError(form, '');
    $('#delete-target').textContent = sub.target_url;
    $('#delete-dialog').showModal();
    // The safe choice has focus first.
    $('[data-close]', form).focus();
  }

  async function submitDelete(event) {
    event.preventDefault();
    if (!deleting) return;
    const sub = deleting;
    const form = $('#delete-form');
    const button = $('#delete-confirm');
    button.disabled = true;
    try {
      await api('DELETE', '/subscriptions/' + encodeURIComponent(sub.id));
      $('#delete-dialog').close();
      deleting = null;
      state.subs = state.subs.filter((s) => s.id !== sub.id);
      notify('Subscription deleted.', 'ok');
      if (state.route.sub === sub.id) location.hash = '#/';
      renderList();
      $('#list-heading').setAttribute('tabindex', '-1');
      $('#list-heading').focus();
    } catch (err) {
      showFormError(form, 'Not deleted: ' + errorText(err));
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- start

  function wireDialogs() {
    for (const button of document.querySelectorAll('dialog [data-close]')) {
      button.addEventListener('click', () => button.closest('dialog').close());
    }
    $('#subscription-form').addEventListener('submit', submitSubscription);
    $('#delete-form').addEventListener('submit', submitDelete);
    $('#key-forget').addEventListener('click', () => {
      storeKey(null);
      $('#key-forget').hidden = true;
      showFormError($('#key-form'), 'The key was forgotten.');
    });
    $('#key-button').addEventListener('click', async () => {
      keyDeclined = false;
      if (keyPrompt) return;
      keyPrompt = openKeyDialog('').finally(() => { keyPrompt = null; });
      if (await keyPrompt) {
        loadList();
        refreshStats();
        if (state.route.sub) openSubscription(state.route.sub, { focus: false });
      }
    });
  }

  function start() {
    wireDialogs();
    $('#new-subscription').addEventListener('click', () => openSubscriptionDialog(null));
    $('#refresh-list').addEventListener('click', () => { loadList(); refreshStats(); });
    $('#load-more').addEventListener('click', () => loadList({ append: true }));
    window.addEventListener('hashchange', () => onRoute());
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) refreshStats();
    });
    loadList().then(() => onRoute({ initial: true }));
    refreshStats();
    setInterval(() => { if (!document.hidden) refreshStats(); }, STATS_REFRESH_MS);
  }

  start();
})();
