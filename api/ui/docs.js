/* The API reference: renders /openapi.json with DOM calls only (every string as text), from
   this origin only, under the dashboard's Content-Security-Policy. */
'use strict';

(function () {
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function refName(schema) {
    if (!schema || typeof schema !== 'object') return '';
    if (schema.$ref) return schema.$ref.split('/').pop();
    if (schema.type === 'array') return refName(schema.items) + '[]';
    if (Array.isArray(schema.oneOf)) return schema.oneOf.map(refName).join(' | ');
    return schema.type || 'object';
  }

  function parameters(params) {
    if (!params || !params.length) return null;
    return h('table', null,
      h('thead', null, h('tr', null, h('th', null, 'Parameter'), h('th', null, 'In'), h('th', null, 'Type'), h('th', null, 'Description'))),
      h('tbody', null, params.map((p) => h('tr', null,
        h('td', null, h('code', null, p.name), p.required ? ' (required)' : ''),
        h('td', null, p.in),
        h('td', null, refName(p.schema)),
        h('td', null, p.description || '')))));
  }

  function body(rb) {
    if (!rb || !rb.content) return null;
    return h('p', null, 'Body: ', Object.entries(rb.content).map(([type, c]) =>
      h('span', null, h('code', null, type), ' ', refName(c.schema), ' ')), rb.description ? ' ' + rb.description : '');
  }

  function responses(rs) {
    return h('ul', { class: 'plain' }, Object.entries(rs || {}).map(([code, r]) => {
      const schema = r.content && Object.values(r.content)[0] ? refName(Object.values(r.content)[0].schema) : '';
      return h('li', null, h('code', null, code), ' ', schema, r.description ? ' ' + r.description : '');
    }));
  }

  function operation(path, method, op) {
    return h('section', { class: 'sub-section', id: (op.operationId || method + path) },
      h('h3', null, h('code', null, method.toUpperCase() + ' ' + path)),
      op.summary ? h('p', null, op.summary) : null,
      op.description ? h('p', null, op.description) : null,
      parameters(op.parameters),
      body(op.requestBody),
      h('h4', null, 'Responses'),
      responses(op.responses));
  }

  function schemas(components) {
    const all = (components && components.schemas) || {};
    return Object.entries(all).map(([name, s]) => h('section', { class: 'sub-section', id: 'schema-' + name },
      h('h3', null, name),
      s.description ? h('p', null, s.description) : null,
      s.properties ? h('ul', { class: 'plain' }, Object.entries(s.properties).map(([prop, p]) =>
        h('li', null, h('code', null, prop), ': ', refName(p),
          (s.required || []).includes(prop) ? ' (required)' : '',
          p.description ? ' ' + p.description : ''))) : null));
  }

  async function load() {
    const status = document.getElementById('docs-status');
    const out = document.getElementById('docs-body');
    let doc;
    try {
      const res = await fetch('/openapi.json', { cache: 'no-store' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      doc = await res.json();
    } catch (err) {
      status.textContent = 'Could not load /openapi.json: ' + err.message;
      return;
    }
    status.textContent = (doc.info && doc.info.description) || '';
    const byTag = new Map();
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const [method, op] of Object.entries(item)) {
        if (!op || typeof op !== 'object' || !op.responses) continue;
        const tag = (op.tags && op.tags[0]) || 'other';
        if (!byTag.has(tag)) byTag.set(tag, []);
        byTag.get(tag).push(operation(path, method, op));
      }
    }
    const tagInfo = new Map((doc.tags || []).map((t) => [t.name, t.description || '']));
    for (const [tag, ops] of byTag) {
      out.append(h('h2', null, tag, tagInfo.get(tag) ? ': ' + tagInfo.get(tag) : ''), ...ops);
    }
    out.append(h('h2', null, 'Schemas'), ...schemas(doc.components));
  }

  load();
})();
