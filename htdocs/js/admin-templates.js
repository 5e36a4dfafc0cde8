// Admin / Templates: the application catalog; edit, enable/disable, add.

import { get, patch, post } from './api.js';
import {
  $, busy, clear, dialog, field, filterBar, h, saveUrlFilters, select, showError, startAdminPage,
  table, templateIcon, toast, urlFilters,
} from './ui.js';

let templates = [];
const filters = urlFilters(['category', 'enabled']);

function parseJson(label, text) {
  try {
    const value = JSON.parse(text || '{}');
    if (value && typeof value === 'object' && !Array.isArray(value)) return value;
  } catch {
    // reported below
  }
  throw new Error(`${label} must be a JSON object, e.g. {"local": {"command": "xterm"}}.`);
}

function templateForm(t) {
  const isNew = !t;
  const input = (id, value, attrs = {}) => h('input', { id, value: value ?? '', autocomplete: 'off', ...attrs });
  const f = {
    name: isNew ? input('t-name', '', { required: true }) : null,
    display_name: input('t-display', t?.display_name),
    description: h('textarea', { id: 't-description', rows: 3 }, t?.description || ''),
    icon: input('t-icon', t?.icon),
    category: input('t-category', t?.category),
    cpu: input('t-cpu', t?.cpu ?? 1, { type: 'number', step: '0.1', min: '0.01' }),
    memory_mb: input('t-memory', t?.memory_mb ?? 1024, { type: 'number', step: '64', min: '16' }),
    vnc_port: input('t-port', t?.vnc_port ?? 5901, { type: 'number', min: '1', max: '65535' }),
    idle: input('t-idle', t?.idle_timeout_seconds ?? '', { type: 'number', min: '1' }),
    platforms: h('textarea', { id: 't-platforms', rows: 6 }, JSON.stringify(t?.platforms || { local: { command: '' } }, null, 2)),
    env: h('textarea', { id: 't-env', rows: 3 }, JSON.stringify(t?.env || {}, null, 2)),
  };
  const persistent = h('input', { type: 'checkbox', id: 't-persistent', checked: !!t?.persistent_home });
  const enabled = h('input', { type: 'checkbox', id: 't-enabled', checked: isNew || !!t.enabled });
  const error = h('p', { class: 'alert error hidden', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'primary', id: 't-submit' }, isNew ? 'Add template' : 'Save');
  const d = dialog(isNew ? 'New template' : `Edit ${t.display_name}`,
    h('form', {
      novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        let body;
        try {
          body = {
            display_name: f.display_name.value.trim() || undefined, description: f.description.value,
            icon: f.icon.value.trim(), category: f.category.value.trim(),
            cpu: Number(f.cpu.value), memory_mb: Number(f.memory_mb.value), vnc_port: Number(f.vnc_port.value),
            idle_timeout_seconds: f.idle.value === '' ? null : Number(f.idle.value),
            persistent_home: persistent.checked, enabled: enabled.checked,
            platforms: parseJson('Platforms', f.platforms.value), env: parseJson('Environment', f.env.value),
          };
        } catch (err) {
          showError(error, err);
          return;
        }
        if (isNew) body.name = f.name.value.trim();
        await busy(submit, async () => {
          try {
            if (isNew) await post('/templates', body);
            else await patch(`/templates/${t.name}`, body);
            d.close();
            toast(`Saved ${body.display_name || body.name || t.name}.`, 'ok');
            load();
          } catch (err) {
            showError(error, err);
          }
        });
      },
    },
    isNew ? field('Name', f.name, 'A slug: lowercase letters, digits and "-" (e.g. firefox-browser).') : null,
    field('Display name', f.display_name), field('Description', f.description),
    field('Icon', f.icon, 'An emoji or an image URL.'), field('Category', f.category),
    field('CPU cores', f.cpu), field('Memory (MB)', f.memory_mb), field('VNC port', f.vnc_port),
    field('Idle timeout (seconds)', f.idle, 'Empty: never hibernate for idleness.'),
    field('Platforms (JSON)', f.platforms, 'Per platform: {"local": {"command": ...}, "kubernetes": {"image": ...}}.'),
    field('Environment (JSON)', f.env),
    h('label', { class: 'inline', for: 't-persistent' }, persistent, 'Persistent home directory'),
    h('label', { class: 'inline', for: 't-enabled' }, enabled, 'Enabled (shown in the catalog)'),
    error,
    h('div', { class: 'form-actions' }, h('button', { type: 'button', onclick: () => d.close() }, 'Cancel'), submit)));
  (f.name || f.display_name).focus();
}

async function setEnabled(t, value, button) {
  await busy(button, async () => {
    try {
      await patch(`/templates/${t.name}`, { enabled: value });
      toast(`${t.display_name} is ${value ? 'enabled' : 'disabled'}.`, 'ok');
      load();
    } catch (e) {
      toast(e.message, 'error');
    }
  });
}

function render() {
  const categories = [...new Set(templates.map((t) => t.category).filter(Boolean))].sort();
  const cat = $('#category');
  if (filters.category && !categories.includes(filters.category)) categories.push(filters.category);
  clear(cat, h('option', { value: '' }, 'All'), categories.map((c) => h('option', { value: c }, c)));
  cat.value = filters.category;
  const shown = templates.filter((t) => (!filters.category || t.category === filters.category)
    && (!filters.enabled || String(t.enabled) === filters.enabled));
  const rows = shown.map((t) => {
    const btn = (label, fn) => h('button', {
      type: 'button', class: 'small', 'aria-label': `${label} ${t.display_name}`, onclick: (e) => fn(e.currentTarget),
    }, label);
    return {
      attrs: { 'data-template': t.name },
      cells: [
        templateIcon(t.icon, t.display_name),
        h('div', {}, h('strong', {}, t.display_name), h('div', { class: 'muted mono' }, t.name)),
        t.category || '—',
        h('td', { class: 'hide-narrow' }, t.description || ''),
        Object.keys(t.platforms || {}).join(', ') || '—',
        `${t.cpu} CPU, ${t.memory_mb} MB`,
        h('span', { class: `badge ${t.enabled ? 'enabled' : 'disabled'}` }, t.enabled ? 'enabled' : 'disabled'),
        h('td', { class: 'actions' }, btn('Edit', () => templateForm(t)),
          t.enabled ? btn('Disable', (b) => setEnabled(t, false, b)) : btn('Enable', (b) => setEnabled(t, true, b))),
      ],
    };
  });
  clear($('#content'), table(['', 'Template', 'Category', 'Description', 'Platforms', 'Resources', 'Status', ''], rows,
    { empty: 'No template matches these filters.', id: 'templates-table' }));
  // The description column header hides with its cells on narrow windows.
  $('#templates-table th:nth-child(4)')?.classList.add('hide-narrow');
  $('#content').setAttribute('aria-busy', 'false');
}

async function load() {
  try {
    templates = await get('/templates');
    showError($('#page-error'), null);
    render();
  } catch (e) {
    showError($('#page-error'), e);
  }
}

startAdminPage(() => {
  filterBar([
    ['Category', select('category', [], { value: filters.category })],
    ['Status', select('enabled', [['true', 'enabled'], ['false', 'disabled']], { value: filters.enabled })],
  ], () => {
    filters.category = $('#category').value;
    filters.enabled = $('#enabled').value;
    saveUrlFilters(filters);
    render();
  });
  clear($('#page-actions'), h('button', { type: 'button', class: 'primary', id: 'add-template', onclick: () => templateForm(null) }, 'New template'));
  load();
});
