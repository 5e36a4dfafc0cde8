// The REST API client: the login token, JSON in and out, errors a user can read.
//
// The login JWT lives in localStorage (so a viewer opened in a new tab has it) and only
// ever travels in the Authorization header, never in a URL.

const TOKEN_KEY = 'streamspace.token';
const USER_KEY = 'streamspace.user';
const EXPIRES_KEY = 'streamspace.expires';
export const API = '/api/v1';

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export function getToken() {
  const token = localStorage.getItem(TOKEN_KEY);
  const expires = Date.parse(localStorage.getItem(EXPIRES_KEY) || '');
  if (!token || (expires && expires <= Date.now())) return null;
  return token;
}

export function currentUser() {
  try {
    return getToken() ? JSON.parse(localStorage.getItem(USER_KEY) || 'null') : null;
  } catch {
    return null;
  }
}

/** Store what POST /auth/login (or /auth/password) answered. */
export function setAuth({ token, user, expires_at: expiresAt }) {
  localStorage.setItem(TOKEN_KEY, token);
  if (user) localStorage.setItem(USER_KEY, JSON.stringify(user));
  if (expiresAt) localStorage.setItem(EXPIRES_KEY, expiresAt);
}

export function clearAuth() {
  for (const key of [TOKEN_KEY, USER_KEY, EXPIRES_KEY]) localStorage.removeItem(key);
}

/** A same-origin path to return to after login (never another site). */
export function safeNext(value) {
  return typeof value === 'string' && value.startsWith('/') && !value.startsWith('//')
    && !value.startsWith('/\\') ? value : '/';
}

export function loginUrl(next = location.pathname + location.search) {
  return next && next !== '/' ? `/login?next=${encodeURIComponent(next)}` : '/login';
}

/** Leave for the login page unless logged in; true when the page may go on. */
export function requireLogin() {
  if (getToken()) return true;
  location.replace(loginUrl());
  return false;
}

export function authHeaders(extra = {}) {
  const token = getToken();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

async function errorFrom(response) {
  let code = 'http_error';
  let message = `${response.status} ${response.statusText || 'error'}`.trim();
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON (a proxy's error page): keep the status line
  }
  const retry = response.headers.get('Retry-After');
  const seconds = retry && /^\d+$/.test(retry) ? Number(retry) : null;
  return new ApiError(response.status, code, message, seconds);
}

/**
 * Call the API. Resolves to the parsed JSON (null for 204); rejects with ApiError.
 * A 401 on an authenticated call means the login is gone: the token is dropped and,
 * unless `redirectOn401` is false, the page goes to the login page.
 */
export async function api(method, path, { body, signal, redirectOn401 = true } = {}) {
  const headers = authHeaders({ Accept: 'application/json' });
  const init = { method, headers, signal, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network_error',
      'Cannot reach the StreamSpace server. Check your connection and try again.');
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401 && headers.Authorization) {
      clearAuth();
      if (redirectOn401) location.assign(loginUrl());
    }
    throw error;
  }
  if (response.status === 204) return null;
  const type = response.headers.get('Content-Type') || '';
  return type.includes('json') ? response.json() : response.text();
}

export const get = (path, opts) => api('GET', path, opts);
export const post = (path, body, opts) => api('POST', path, { ...opts, body });
export const patch = (path, body, opts) => api('PATCH', path, { ...opts, body });
export const del = (path, opts) => api('DELETE', path, opts);

/** Log out on the server (revokes the token), then forget it here. */
export async function logout() {
  try {
    if (getToken()) await api('POST', '/auth/logout', { redirectOn401: false });
  } catch {
    // the token is forgotten below whatever the server said
  }
  clearAuth();
  location.assign('/login');
}

/** `path?query` with empty values left out. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}
