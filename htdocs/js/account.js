// The account page: who I am, my session limit, change my password.

import { get, post, requireLogin, setAuth } from './api.js';
import { $, clear, formatTime, h, renderHeader, showError } from './ui.js';

const error = $('#password-error');
const ok = $('#password-ok');

async function showAccount() {
  try {
    const me = await get('/auth/me');
    const row = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
    clear($('#account-details'),
      row('Username', me.username), row('Display name', me.display_name || '—'),
      row('Email', me.email || '—'), row('Role', me.role),
      row('Session limit', String(me.session_limit)), row('Member since', formatTime(me.created_at)));
  } catch (e) {
    clear($('#account-details'), h('p', { class: 'alert error', role: 'alert' }, e.message));
  }
}

$('#password-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  showError(error, null);
  ok.classList.add('hidden');
  const current = $('#current-password').value;
  const fresh = $('#new-password').value;
  if (!current || !fresh) return showError(error, new Error('Fill in both passwords.'));
  if (fresh.length < 12) return showError(error, new Error('The new password needs at least 12 characters (and must not be your username).'));
  if (fresh !== $('#confirm-password').value) {
    return showError(error, new Error('The two new passwords differ.'));
  }
  const button = $('#password-submit');
  button.disabled = true;
  try {
    // The answer carries a new token: every older one (this one too) stopped working.
    setAuth(await post('/auth/password', { current_password: current, new_password: fresh }));
    event.target.reset();
    ok.textContent = 'Your password was changed.';
    ok.classList.remove('hidden');
  } catch (e) {
    showError(error, e.status === 429 && e.retryAfter
      ? new Error(`Too many failed attempts. Try again in ${e.retryAfter} s.`) : e);
  } finally {
    button.disabled = false;
  }
});

if (requireLogin()) {
  renderHeader();
  showAccount();
}
