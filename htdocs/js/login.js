// The login page: POST /auth/login, keep the token, go where the user was going.

import { ApiError, getToken, post, safeNext, setAuth } from './api.js';
import { $, showError } from './ui.js';

const next = safeNext(new URLSearchParams(location.search).get('next') || '/');
const form = $('#login-form');
const submit = $('#login-submit');
const error = $('#login-error');
const info = $('#login-info');
let waitTimer = null;

if (getToken()) location.replace(next);
if (new URLSearchParams(location.search).has('next')) {
  info.textContent = 'Please log in to continue.';
  info.classList.remove('hidden');
}

/** After a 429: keep the button disabled and count down the Retry-After seconds. */
function rateLimited(seconds, message) {
  clearInterval(waitTimer);
  let left = seconds;
  const show = () => showError(error, new Error(
    left > 0 ? `Too many failed attempts. Try again in ${left} s.` : message));
  submit.disabled = true;
  show();
  waitTimer = setInterval(() => {
    left -= 1;
    if (left <= 0) {
      clearInterval(waitTimer);
      submit.disabled = false;
      showError(error, new Error('You can try again now.'));
      return;
    }
    show();
  }, 1000);
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const username = $('#username').value.trim();
  const password = $('#password').value;
  if (!username || !password) {
    showError(error, new Error('Enter your username and password.'));
    (username ? $('#password') : $('#username')).focus();
    return;
  }
  showError(error, null);
  info.classList.add('hidden');
  submit.disabled = true;
  try {
    const answer = await post('/auth/login', { username, password }, { redirectOn401: false });
    setAuth(answer);
    location.assign(next);
    return;
  } catch (e) {
    if (e instanceof ApiError && e.status === 429) {
      rateLimited(e.retryAfter || 30, e.message);
      return;
    }
    if (e instanceof ApiError && e.status === 401) {
      showError(error, new Error('Wrong username or password.'));
      $('#password').select();
    } else {
      showError(error, e);
    }
  }
  submit.disabled = false;
});
