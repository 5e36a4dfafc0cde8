// The session viewer /vnc-viewer/{id}: noVNC, full window, through the control plane's
// VNC proxy with a fresh session-scoped token for every connection.
//
//   POST /api/v1/sessions/{id}/vnc-token (login JWT in the header) -> {token, expires_at}
//   WS   /api/v1/vnc/{id}?token=<that short-lived VNC token>  (never the login JWT)

import RFB from '/novnc/core/rfb.js';
import { ApiError, get, patch, post, requireLogin } from './api.js';
import { followSession } from './sse.js';
import { $, clear, h, toast } from './ui.js';

const sessionId = decodeURIComponent(location.pathname.split('/')[2] || '');
const RETRIES = 3; // automatic reconnects after a dropped connection, then the user decides

let rfb = null;
let generation = 0; // which connection attempt the events belong to
let everConnected = false;
let retries = 0;
let watcher = null;
let session = null;

// -- status ------------------------------------------------------------------------

function status(kind, message, actions = []) {
  const overlay = $('#overlay');
  $('#conn-state').textContent = kind === 'connected' ? 'Connected' : message;
  if (kind === 'connected') {
    overlay.classList.add('hidden');
    return;
  }
  overlay.classList.remove('hidden');
  $('#spinner').classList.toggle('hidden', kind !== 'busy');
  $('#overlay-message').textContent = message;
  clear($('#overlay-actions'), actions);
}

const button = (label, onclick, primary = false) =>
  h('button', { type: 'button', class: primary ? 'primary' : '', onclick }, label);
const retryButton = () => button('Try again', () => reconnect(), true);
const backLink = () => h('a', { class: 'button', href: '/' }, 'My sessions');

function setTitle(name) {
  document.title = `${name} - StreamSpace`;
  $('#title').textContent = name;
}

// -- the session's state -------------------------------------------------------------

function stopWatching() {
  watcher?.stop();
  watcher = null;
}

/** Wait (events stream, else polling) until the session runs, then connect. */
function waitUntilRunning(message) {
  stopWatching();
  status('busy', message, [backLink()]);
  watcher = followSession(sessionId, {
    until: (s) => ['running', 'failed', 'stopped', 'terminated'].includes(s),
    onEvent: (event) => {
      if (event.state === 'running') {
        retries = 0;
        connect();
      } else if (event.state === 'hibernated') {
        showHibernated();
      } else if (['failed', 'stopped', 'terminated'].includes(event.state)) {
        notRunning({ state: event.state, error: event.message });
      } else {
        status('busy', `The session is ${event.state}${event.message ? `: ${event.message}` : ''}…`, [backLink()]);
      }
    },
  });
}

function showHibernated() {
  // Keep following: whoever wakes it (here or on the home page), we reconnect.
  if (!watcher || watcher.stopped) waitUntilRunning('');
  status('info', 'This session is hibernated. Wake it to continue where you left off.', [
    button('Wake session', (e) => startAgain(e, 'Waking the session… (it reconnects by itself)'),
      true),
    backLink(),
  ]);
}

/** Wake a hibernated session or restart a stopped/failed one, then follow it to running. */
async function startAgain(e, message) {
  e.currentTarget.disabled = true;
  try {
    await patch(`/sessions/${sessionId}`, { state: 'running' });
    waitUntilRunning(message);
  } catch (err) {
    // refused (the session limit, its agent full or offline): it stays as it was
    status('error', err.message, [backLink()]);
  }
}

const restartButton = () => button('Restart session',
  (e) => startAgain(e, 'Restarting the session… (same application, same home)'), true);

/** Explain a session that cannot be connected to now, and what happens next. */
function notRunning(s) {
  switch (s.state) {
    case 'hibernated':
      showHibernated();
      break;
    case 'hibernating':
      waitUntilRunning('The session is hibernating…');
      break;
    case 'pending': case 'scheduled': case 'starting': case 'waking':
      waitUntilRunning(`The session is ${s.state}…`);
      break;
    case 'unreachable':
      waitUntilRunning('The agent running this session is offline. Waiting for it: the session '
        + 'returns if the agent comes back still running it, else it fails.');
      break;
    case 'failed':
      stopWatching();
      status('error', `This session failed: ${s.error || 'no reason was given'}.`,
        [restartButton(), backLink()]);
      break;
    case 'stopped':
      stopWatching();
      status('info', `This session stopped: ${s.error || 'its application exited'}.`,
        [restartButton(), backLink()]);
      break;
    default:
      stopWatching();
      status('error', 'This session has ended.', [backLink()]);
  }
}

// -- connecting ----------------------------------------------------------------------

function teardown() {
  generation += 1;
  if (rfb) {
    const old = rfb;
    rfb = null;
    try {
      old.disconnect();
    } catch {
      // already closed
    }
  }
  $('#btn-cad').disabled = true;
}

async function connect() {
  teardown();
  stopWatching();
  const mine = generation;
  status('busy', 'Checking the session…');
  let token;
  try {
    session = await get(`/sessions/${sessionId}`);
    if (mine !== generation) return;
    setTitle(session.name);
    if (session.state !== 'running') {
      notRunning(session);
      return;
    }
    status('busy', 'Requesting access…');
    ({ token } = await post(`/sessions/${sessionId}/vnc-token`, {}));
  } catch (e) {
    if (mine !== generation) return;
    if (e instanceof ApiError && e.status === 404 && e.message.includes('endpoint')) {
      status('error', 'This server cannot open viewers yet (no VNC token endpoint).', [backLink()]);
    } else if (e instanceof ApiError && e.status === 404) {
      status('error', 'This session does not exist, or it is not yours.', [backLink()]);
    } else if (e instanceof ApiError && e.status === 409) {
      status('error', e.message, [retryButton(), backLink()]);
    } else if (e instanceof ApiError && e.status !== 0 && e.status !== 503) {
      status('error', e.message, [backLink()]);
    } else {
      status('error', e.message, [retryButton(), backLink()]);
    }
    return;
  }
  if (mine !== generation) return;
  status('busy', 'Connecting to the desktop…');
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const url = `${scheme}://${location.host}/api/v1/vnc/${encodeURIComponent(sessionId)}`
    + `?token=${encodeURIComponent(token)}`;
  try {
    rfb = new RFB($('#vnc'), url, { shared: true });
  } catch (e) {
    status('error', `The viewer could not start: ${e.message}`, [retryButton(), backLink()]);
    return;
  }
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = true;
  rfb.background = '#111';
  const live = (handler) => (event) => {
    if (mine === generation) handler(event);
  };
  rfb.addEventListener('connect', live(onConnect));
  rfb.addEventListener('disconnect', live(onDisconnect));
  rfb.addEventListener('securityfailure', live((e) => {
    status('error', `The session refused the connection: ${e.detail.reason || `security failure (${e.detail.status})`}.`,
      [retryButton(), backLink()]);
  }));
  rfb.addEventListener('credentialsrequired', live(askPassword));
  rfb.addEventListener('desktopname', live((e) => setTitle(e.detail.name || session.name)));
  rfb.addEventListener('clipboard', live((e) => fromRemoteClipboard(e.detail.text)));
}

function onConnect() {
  everConnected = true;
  retries = 0;
  $('#btn-cad').disabled = false;
  status('connected');
  rfb.focus();
}

async function onDisconnect(event) {
  const mine = generation;
  const wasUp = $('#overlay').classList.contains('hidden');
  rfb = null;
  $('#btn-cad').disabled = true;
  status('busy', 'The connection closed. Checking the session…');
  try {
    session = await get(`/sessions/${sessionId}`);
  } catch (e) {
    if (mine === generation) status('error', `The connection closed, and ${e.message}`, [retryButton(), backLink()]);
    return;
  }
  if (mine !== generation) return;
  if (session.state !== 'running') {
    notRunning(session);
    return;
  }
  if (wasUp && retries < RETRIES) {
    retries += 1;
    status('busy', `The connection was lost. Reconnecting (attempt ${retries} of ${RETRIES})…`);
    setTimeout(() => mine === generation && connect(), 1000 * retries);
    return;
  }
  const message = everConnected
    ? 'The connection to the desktop was lost.'
    : 'Could not connect to the desktop. The session\'s agent may be unreachable.';
  status('error', event.detail.clean ? message : `${message} (the network connection failed)`,
    [retryButton(), backLink()]);
}

function askPassword() {
  const input = h('input', { type: 'password', id: 'vnc-password', autocomplete: 'off', 'aria-label': 'Desktop password' });
  const form = h('form', {
    onsubmit: (e) => {
      e.preventDefault();
      rfb?.sendCredentials({ password: input.value });
      status('busy', 'Connecting to the desktop…');
    },
  }, input, ' ', h('button', { type: 'submit', class: 'primary' }, 'Connect'));
  status('info', 'This desktop asks for its password.', [form]);
  input.focus();
}

/** Ctrl+Alt+Shift+R, the Reconnect button, Try again: a fresh token, no reload. */
function reconnect() {
  retries = 0;
  connect();
}

// -- clipboard, fullscreen, keys -------------------------------------------------------

function fromRemoteClipboard(text) {
  $('#clipboard-text').value = text;
  // Mirror into the local clipboard when the browser lets us (focused, secure context).
  if (document.hasFocus() && navigator.clipboard?.writeText) {
    navigator.clipboard.writeText(text).catch(() => {});
  }
}

function toggleClipboard(show = $('#clipboard').classList.contains('hidden')) {
  $('#clipboard').classList.toggle('hidden', !show);
  $('#btn-clipboard').setAttribute('aria-expanded', String(show));
  if (show) $('#clipboard-text').focus();
  else rfb?.focus();
}

async function toggleFullscreen() {
  try {
    if (document.fullscreenElement) await document.exitFullscreen();
    else await document.documentElement.requestFullscreen();
  } catch (e) {
    toast(`Fullscreen is not available: ${e.message}`, 'error');
  }
  rfb?.focus();
}

function shortcuts(event) {
  if (!(event.ctrlKey && event.altKey && event.shiftKey)) return;
  const action = { KeyF: toggleFullscreen, KeyR: reconnect }[event.code];
  if (!action) return;
  // Capture phase: runs before noVNC's keyboard handler, so the key never reaches the session.
  event.preventDefault();
  event.stopPropagation();
  if (event.type === 'keydown' && !event.repeat) action();
}

function start() {
  if (!/^[0-9a-fA-F-]{36}$/.test(sessionId)) {
    status('error', 'This address does not name a session.', [backLink()]);
    return;
  }
  window.addEventListener('keydown', shortcuts, true);
  window.addEventListener('keyup', shortcuts, true);
  $('#btn-reconnect').addEventListener('click', reconnect);
  $('#btn-fullscreen').addEventListener('click', toggleFullscreen);
  $('#btn-cad').addEventListener('click', () => rfb?.sendCtrlAltDel());
  $('#btn-clipboard').addEventListener('click', () => toggleClipboard());
  $('#clipboard-close').addEventListener('click', () => toggleClipboard(false));
  $('#clipboard').addEventListener('submit', (e) => {
    e.preventDefault();
    if (!rfb) {
      toast('Not connected: the text was not sent.', 'error');
      return;
    }
    rfb.clipboardPasteFrom($('#clipboard-text').value);
    toast('Sent to the session\'s clipboard.', 'ok');
    toggleClipboard(false);
  });
  connect();
}

// Expose the connection for diagnostics and the browser tests (read-only use).
Object.defineProperty(window, 'streamspaceViewer', { get: () => ({ rfb, sessionId }) });

if (requireLogin()) start();
