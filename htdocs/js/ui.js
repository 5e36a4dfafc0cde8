// DOM helpers every page shares: building elements (text only, never HTML from data),
// the header, messages, dialogs, formatting.

import { currentUser, logout, requireLogin } from './api.js';

/** h('button', {class: 'primary', onclick}, 'Start') -> element; children may be nested. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key in el && typeof value !== 'string') {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? '' : value);
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const ADMIN_PAGES = [
  ['/admin/agents', 'Agents'],
  ['/admin/sessions', 'Sessions'],
  ['/admin/users', 'Users'],
  ['/admin/templates', 'Templates'],
  ['/admin/audit', 'Audit'],
];

/** The top bar: home, admin pages for admins, the account and logout. */
export function renderHeader() {
  const header = document.getElementById('app-header');
  if (!header) return;
  const user = currentUser();
  const here = location.pathname;
  const link = (href, text) => h('a', { href, 'aria-current': here === href ? 'page' : null }, text);
  const nav = h('nav', { 'aria-label': 'Main' }, link('/', 'My sessions'));
  if (user && user.role === 'admin') {
    for (const [href, text] of ADMIN_PAGES) nav.append(link(href, text));
  }
  clear(header,
    h('a', { href: '/', class: 'brand' }, 'StreamSpace'),
    nav,
    user ? h('div', { class: 'user' },
      link('/account', user.display_name || user.username),
      h('button', { type: 'button', class: 'small', id: 'logout', onclick: () => logout() }, 'Log out'))
      : null);
}

/** A message in the corner that goes away by itself (errors stay longer). */
export function toast(message, kind = 'info') {
  let box = document.getElementById('toasts');
  if (!box) {
    box = h('div', { id: 'toasts', 'aria-live': 'polite' });
    document.body.append(box);
  }
  const item = h('div', { class: `alert ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 10000 : 4000);
}

/** Show an error (an ApiError's message) in `el`, or clear it with null. */
export function showError(el, error) {
  el.textContent = error ? (error.message || String(error)) : '';
  el.classList.toggle('hidden', !error);
}

/** A modal dialog element with a title; closed with Escape or its buttons. */
let dialogs = 0;
export function dialog(title, ...content) {
  dialogs += 1;
  const titleId = `dialog-title-${dialogs}`;
  const d = h('dialog', { 'aria-labelledby': titleId }, h('h2', { id: titleId }, title), ...content);
  d.addEventListener('close', () => d.remove());
  document.body.append(d);
  d.showModal();
  return d;
}

/** Ask before something that cannot be undone; resolves true when confirmed. */
export function confirmAction(message, { title = 'Are you sure?', ok = 'Confirm', danger = true } = {}) {
  return new Promise((resolve) => {
    let answer = false;
    const yes = h('button', { type: 'button', class: danger ? 'danger primary' : 'primary', id: 'confirm-ok' }, ok);
    const no = h('button', { type: 'button', id: 'confirm-cancel' }, 'Cancel');
    const d = dialog(title, h('p', {}, message), h('div', { class: 'form-actions' }, no, yes));
    yes.addEventListener('click', () => { answer = true; d.close(); });
    no.addEventListener('click', () => d.close());
    d.addEventListener('close', () => resolve(answer));
    no.focus();
  });
}

/** Disable a button while `work` runs; returns work's result. */
export async function busy(button, work) {
  const was = button.disabled;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    return await work();
  } finally {
    button.disabled = was;
    button.removeAttribute('aria-busy');
  }
}

const DATE = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

export function formatTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : DATE.format(d);
}

export function ago(iso) {
  if (!iso) return 'never';
  const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (Number.isNaN(seconds)) return iso;
  if (seconds < 5) return 'just now';
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

/** Bring every relative time under `root` up to date (without redrawing anything). */
export function refreshTimes(root = document) {
  for (const t of root.querySelectorAll('time.ago[datetime]')) t.textContent = ago(t.dateTime);
}

/** A time element showing "3 min ago" with the exact time on hover. */
export function timeAgo(iso) {
  return h('time', { class: 'ago', datetime: iso || '', title: formatTime(iso) }, ago(iso));
}

// Platform icons as inline SVG line drawings (no icon font, no emoji font needed).
const SVG_NS = 'http://www.w3.org/2000/svg';
const PLATFORM_ICONS = {
  kubernetes: 'M12 2l8.5 4.1 2.1 9.2-5.9 7.4H7.3l-5.9-7.4 2.1-9.2z M12 8v8 M8.5 10l7 4 M15.5 10l-7 4',
  local: 'M3 4h18v12H3z M8 20h8 M12 16v4',
  docker: 'M2 11h20c-1 6-5 9-11 9S3 17 2 11z M5 7h3v4H5z M9 7h3v4H9z M13 7h3v4h-3z M9 3h3v4H9z',
  vm: 'M4 3h16v18H4z M8 7h8 M8 11h8 M8 15h5',
  cloud: 'M7 18h10a4 4 0 0 0 0-8 6 6 0 0 0-11.5 1.5A3.3 3.3 0 0 0 7 18z',
};

function svgIcon(path) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', 'svg-icon');
  svg.setAttribute('aria-hidden', 'true');
  const p = document.createElementNS(SVG_NS, 'path');
  p.setAttribute('d', path);
  svg.append(p);
  return svg;
}

export function platformIcon(platform) {
  if (!platform) return h('span', { class: 'muted' }, '—');
  return h('span', { class: 'platform', title: platform, dataset: { platform } },
    svgIcon(PLATFORM_ICONS[platform] || 'M4 4h16v16H4z'), ' ', platform);
}

const BUSY_STATES = new Set(['pending', 'scheduled', 'starting', 'hibernating', 'waking', 'terminating']);

export function stateBadge(state) {
  return h('span', { class: `badge ${state}${BUSY_STATES.has(state) ? ' busy' : ''}`, dataset: { state } }, state);
}

/** A template's icon: an image URL, or a short text such as an emoji. */
export function templateIcon(icon, label = '') {
  const isUrl = /^(https?:\/\/|\/|data:image\/)/.test(icon || '');
  return h('span', { class: 'icon', 'aria-hidden': 'true' },
    isUrl ? h('img', { src: icon, alt: label }) : (icon || '▣'));
}

/** Labelled form field: field('Username', inputElement, 'help text'). */
export function field(label, input, help) {
  if (!input.id) input.id = `f-${Math.random().toString(36).slice(2, 9)}`;
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input,
    help ? h('p', { class: 'help' }, help) : null);
}

/** A <select> with ('', 'All') first, then `values` (strings or [value, label] pairs). */
export function select(id, values, { all = 'All', value = '' } = {}) {
  const s = h('select', { id, name: id });
  if (all !== null) s.append(h('option', { value: '' }, all));
  for (const v of values) {
    const [val, text] = Array.isArray(v) ? v : [v, v];
    s.append(h('option', { value: val }, text));
  }
  s.value = value;
  return s;
}

/** A table with a header row; rows are arrays of cells (nodes or text). */
export function table(headers, rows, { empty = 'Nothing to show.', id } = {}) {
  if (!rows.length) return h('div', { class: 'table-wrap', id }, h('p', { class: 'empty' }, empty));
  return h('div', { class: 'table-wrap', id },
    h('table', {},
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows.map((cells) => {
        const tr = h('tr');
        const list = Array.isArray(cells) ? cells : cells.cells;
        if (!Array.isArray(cells) && cells.attrs) {
          for (const [k, v] of Object.entries(cells.attrs)) tr.setAttribute(k, v);
        }
        for (const c of list) tr.append(c instanceof Node && c.tagName === 'TD' ? c : h('td', {}, c));
        return tr;
      }))));
}

/** Read the page's filters from its URL; write them back without reloading. */
export function urlFilters(names) {
  const params = new URLSearchParams(location.search);
  return Object.fromEntries(names.map((n) => [n, params.get(n) || '']));
}

export function saveUrlFilters(values) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(values)) if (v) params.set(k, v);
  const s = params.toString();
  history.replaceState(null, '', s ? `${location.pathname}?${s}` : location.pathname);
}

/** Copy text to the clipboard, with a message either way. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast('Copied to the clipboard.', 'ok');
  } catch {
    toast('Could not copy automatically; select the text and copy it.', 'error');
  }
}

/** Start an admin page: log in first, the header, and a clear word for non-admins. */
export function startAdminPage(run) {
  if (!requireLogin()) return;
  renderHeader();
  const user = currentUser();
  if (!user || user.role !== 'admin') {
    showError($('#page-error'), new Error('This page is for administrators; your account is not one.'));
    $('#content')?.setAttribute('aria-busy', 'false');
    return;
  }
  run();
}

/** Labelled filter controls in the page's filter form; `onChange` runs on any change. */
export function filterBar(controls, onChange) {
  const form = $('#filters');
  clear(form, controls.map(([label, control]) => h('div', {}, h('label', { for: control.id }, label), control)),
    h('div', {}, h('button', { type: 'submit', id: 'apply-filters' }, 'Apply')));
  let queued = false; // Enter in a text field fires change and submit: run once
  const run = () => {
    if (queued) return;
    queued = true;
    setTimeout(() => { queued = false; onChange(); }, 0);
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); run(); });
  form.addEventListener('change', run);
  return form;
}

/** Summary cards: [[label, value], ...]. */
export function summary(items) {
  clear($('#summary'), items.map(([label, value, id]) => h('div', { class: 'panel', id },
    h('div', { class: 'value' }, String(value)), h('div', { class: 'label' }, label))));
}

/** Pretty JSON for details views. */
export function pre(value) {
  return h('pre', {}, JSON.stringify(value, null, 2));
}
