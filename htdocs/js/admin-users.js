// Admin / Users: create accounts, change role, disable, set per-user session limits.

import { del, get, patch, post, withQuery } from './api.js';
import {
  $, busy, clear, confirmAction, dialog, field, filterBar, formatTime, h, saveUrlFilters, select,
  showError, startAdminPage, table, toast, urlFilters,
} from './ui.js';

const filters = urlFilters(['role', 'disabled']);

function userForm(user, onSave) {
  const isNew = !user;
  const inputs = {
    username: isNew ? h('input', { id: 'u-username', required: true, autocomplete: 'off', autocapitalize: 'none' }) : null,
    display_name: h('input', { id: 'u-display', value: user?.display_name || '' }),
    email: h('input', { id: 'u-email', type: 'email', value: user?.email || '' }),
    role: select('u-role', [['user', 'user'], ['admin', 'admin']], { all: null, value: user?.role || 'user' }),
    max_sessions: h('input', {
      id: 'u-max', type: 'number', min: '0', step: '1',
      value: user?.max_sessions === null || user?.max_sessions === undefined ? '' : String(user.max_sessions),
    }),
    password: h('input', { id: 'u-password', type: 'password', autocomplete: 'new-password', required: isNew }),
  };
  const disabled = h('input', { type: 'checkbox', id: 'u-disabled', checked: !!user?.disabled });
  const error = h('p', { class: 'alert error hidden', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'primary', id: 'u-submit' }, isNew ? 'Create user' : 'Save');
  const d = dialog(isNew ? 'New user' : `Edit ${user.username}`,
    h('form', {
      novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        const body = {
          display_name: inputs.display_name.value.trim(), email: inputs.email.value.trim(),
          role: inputs.role.value, disabled: disabled.checked,
          max_sessions: inputs.max_sessions.value === '' ? null : Number(inputs.max_sessions.value),
        };
        if (inputs.password.value) body.password = inputs.password.value;
        if (isNew) body.username = inputs.username.value.trim().toLowerCase();
        await busy(submit, async () => {
          try {
            await onSave(body);
            d.close();
          } catch (err) {
            showError(error, err);
          }
        });
      },
    },
    isNew ? field('Username', inputs.username, 'Lowercase letters, digits, ".", "_", "-".') : null,
    field(isNew ? 'Password' : 'New password', inputs.password,
      isNew ? 'At least 12 characters, not the username.' : 'Leave empty to keep the current one (at least 12 characters, not the username). A new password logs the user out everywhere.'),
    field('Display name', inputs.display_name),
    field('Email', inputs.email),
    field('Role', inputs.role),
    field('Session limit', inputs.max_sessions, 'Concurrent sessions; leave empty for the server default.'),
    h('label', { class: 'inline', for: 'u-disabled' }, disabled, 'Disabled (cannot log in)'),
    error,
    h('div', { class: 'form-actions' }, h('button', { type: 'button', onclick: () => d.close() }, 'Cancel'), submit)));
  (inputs.username || inputs.display_name).focus();
}

async function setDisabled(user, value, button) {
  if (value && !await confirmAction(`Disable ${user.username}? They are logged out and cannot log in until enabled again.`,
    { title: 'Disable this account?', ok: 'Disable' })) return;
  await busy(button, async () => {
    try {
      await patch(`/users/${user.id}`, { disabled: value });
      toast(`${user.username} is ${value ? 'disabled' : 'enabled'}.`, 'ok');
      load();
    } catch (e) {
      toast(e.message, 'error');
    }
  });
}

async function remove(user, button) {
  if (!await confirmAction(`Delete the account ${user.username}? This cannot be undone.`,
    { title: 'Delete this user?', ok: 'Delete' })) return;
  await busy(button, async () => {
    try {
      await del(`/users/${user.id}`);
      toast(`Deleted ${user.username}.`, 'ok');
      load();
    } catch (e) {
      toast(e.message, 'error');
    }
  });
}

async function load() {
  try {
    const users = await get(withQuery('/users', filters));
    showError($('#page-error'), null);
    const rows = users.map((u) => {
      const btn = (label, fn, cls = 'small') =>
        h('button', { type: 'button', class: cls, 'aria-label': `${label} ${u.username}`, onclick: (e) => fn(e.currentTarget) }, label);
      return {
        attrs: { 'data-username': u.username },
        cells: [
          h('div', {}, h('strong', {}, u.username), u.display_name ? h('div', { class: 'muted' }, u.display_name) : null),
          u.email || '—',
          h('span', { class: `badge ${u.role === 'admin' ? 'warning' : ''}` }, u.role),
          h('span', { class: `badge ${u.disabled ? 'disabled' : 'enabled'}` }, u.disabled ? 'disabled' : 'active'),
          u.max_sessions === null ? h('span', { class: 'muted' }, 'default') : String(u.max_sessions),
          formatTime(u.created_at),
          h('td', { class: 'actions' },
            btn('Edit', () => userForm(u, async (body) => {
              await patch(`/users/${u.id}`, body);
              toast(`Saved ${u.username}.`, 'ok');
              load();
            })),
            u.disabled ? btn('Enable', (b) => setDisabled(u, false, b)) : btn('Disable', (b) => setDisabled(u, true, b)),
            btn('Delete', (b) => remove(u, b), 'small danger')),
        ],
      };
    });
    clear($('#content'), table(['User', 'Email', 'Role', 'Status', 'Session limit', 'Created', ''], rows,
      { empty: 'No user matches these filters.', id: 'users-table' }));
    $('#content').setAttribute('aria-busy', 'false');
  } catch (e) {
    showError($('#page-error'), e);
  }
}

startAdminPage(() => {
  filterBar([
    ['Role', select('role', ['admin', 'user'], { value: filters.role })],
    ['Status', select('disabled', [['false', 'active'], ['true', 'disabled']], { value: filters.disabled })],
  ], () => {
    filters.role = $('#role').value;
    filters.disabled = $('#disabled').value;
    saveUrlFilters(filters);
    load();
  });
  clear($('#page-actions'), h('button', {
    type: 'button', class: 'primary', id: 'add-user',
    onclick: () => userForm(null, async (body) => {
      const user = await post('/users', body);
      toast(`Created ${user.username}.`, 'ok');
      load();
    }),
  }, 'New user'));
  load();
});
