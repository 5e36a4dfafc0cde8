// Admin / Audit: the audit log, newest first, filtered on the server, paged with a cursor.

import { get, withQuery } from './api.js';
import {
  $, busy, clear, filterBar, formatTime, h, saveUrlFilters, select, showError, startAdminPage,
  table, urlFilters,
} from './ui.js';

const NAMES = ['action', 'actor', 'target_type', 'target_id', 'success', 'since', 'until'];
const filters = urlFilters(NAMES);
let entries = [];
let nextCursor = null;

function query(cursor) {
  const q = { ...filters, limit: 100, cursor };
  // datetime-local values are local times: send them as instants.
  for (const key of ['since', 'until']) if (q[key]) q[key] = new Date(q[key]).toISOString();
  return withQuery('/audit', q);
}

function details(value) {
  const keys = Object.keys(value || {});
  if (!keys.length) return '';
  return h('code', { class: 'details-json' }, keys.map((k) => `${k}=${JSON.stringify(value[k])}`).join(' '));
}

function render() {
  const rows = entries.map((e) => ({
    attrs: { 'data-action': e.action },
    cells: [
      h('time', { datetime: e.created_at }, formatTime(e.created_at)),
      e.actor_name || h('span', { class: 'muted' }, 'system'),
      h('code', {}, e.action),
      `${e.target_type}${e.target_id ? ` ${e.target_id}` : ''}`,
      h('span', { class: `badge ${e.success ? 'success' : 'failure'}` }, e.success ? 'ok' : 'failed'),
      h('td', { class: 'hide-narrow' }, e.client_addr || ''),
      h('td', { class: 'hide-narrow' }, details(e.details)),
    ],
  }));
  clear($('#content'),
    table(['Time', 'Actor', 'Action', 'Target', 'Result', 'Client', 'Details'], rows,
      { empty: 'No audit entry matches these filters.', id: 'audit-table' }),
    nextCursor ? h('p', { class: 'form-actions' }, h('button', {
      type: 'button', id: 'load-more', onclick: (e) => busy(e.currentTarget, () => load(true)),
    }, 'Load older entries')) : null);
  for (const n of [6, 7]) $(`#audit-table th:nth-child(${n})`)?.classList.add('hide-narrow');
  $('#content').setAttribute('aria-busy', 'false');
}

async function load(more = false) {
  try {
    const page = await get(query(more ? nextCursor : undefined));
    entries = more ? entries.concat(page.entries) : page.entries;
    nextCursor = page.next_cursor;
    showError($('#page-error'), null);
    render();
  } catch (e) {
    showError($('#page-error'), e);
  }
}

startAdminPage(() => {
  const text = (id, placeholder) => h('input', { id, value: filters[id], placeholder, autocomplete: 'off' });
  const when = (id) => h('input', { id, type: 'datetime-local', value: filters[id] });
  filterBar([
    ['Action', text('action', 'session.create or session.*')],
    ['Actor', text('actor', 'username')],
    ['Target type', text('target_type', 'user, session, agent…')],
    ['Target', text('target_id', 'id or name')],
    ['Result', select('success', [['true', 'ok'], ['false', 'failed']], { value: filters.success })],
    ['From', when('since')],
    ['Until', when('until')],
  ], () => {
    for (const key of NAMES) filters[key] = $(`#${key}`).value.trim();
    saveUrlFilters(filters);
    load();
  });
  clear($('#page-actions'), h('button', { type: 'button', onclick: (e) => busy(e.currentTarget, () => load()) }, 'Refresh'));
  load();
});
