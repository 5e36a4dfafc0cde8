// Home: the template catalog and my sessions, each followed live through its events
// stream while it is on its way somewhere (starting, hibernating, waking, terminating).
// States and actions as docs/operations.md describes them: Hibernate a running session,
// Wake a hibernated one, Restart a stopped or failed one (same template, same home).

import { del, get, patch, post, requireLogin, withQuery } from './api.js';
import { RESTING, followSession } from './sse.js';
import {
  $, busy, clear, confirmAction, h, platformIcon, refreshTimes, renderHeader, showError,
  stateBadge, templateIcon, timeAgo, toast,
} from './ui.js';

const STARTUP = ['pending', 'scheduled', 'starting', 'running'];
const ACTIVE = new Set(['pending', 'scheduled', 'starting', 'running', 'hibernating', 'waking', 'unreachable']);
const REFRESH_MS = 30000; // resting sessions can still change (a process dies): re-list now and then
const RESTARTABLE = new Set(['stopped', 'failed']);
const UNREACHABLE_TEXT = 'The agent running this session is offline. If the agent comes back '
  + 'still running it, the session returns; if the agent restarted, the session is lost and '
  + 'shows as failed (Restart starts it again).';

let me = null;
const templates = new Map(); // name -> template
const sessions = new Map(); // id -> {session, message, follower, card}

function progress(state) {
  const at = STARTUP.indexOf(state);
  if (at < 0 || state === 'running') return null;
  return h('ol', { class: 'progress', 'aria-label': 'Start-up progress' },
    STARTUP.map((step, i) => h('li', {
      class: i < at ? 'done' : i === at ? 'current' : '',
      'aria-current': i === at ? 'step' : null,
    }, step)));
}

function sessionCard(entry) {
  const s = entry.session;
  const t = templates.get(s.template);
  const title = t ? t.display_name : s.template;
  const action = (label, handler, attrs = {}) =>
    h('button', { type: 'button', class: 'small', ...attrs, onclick: (e) => handler(e.currentTarget) }, label);
  const running = s.state === 'running';
  const actions = h('div', { class: 'actions' },
    h('a', {
      class: `button small${running ? ' primary' : ''}`, href: s.viewer_url, target: '_blank',
      rel: 'noopener', 'aria-disabled': running ? null : 'true', tabindex: running ? null : '-1',
      'data-action': 'connect',
    }, 'Connect'),
    running ? action('Hibernate', (b) => changeState(b, s, 'hibernated'), { 'data-action': 'hibernate' }) : null,
    s.state === 'hibernated' ? action('Wake', (b) => changeState(b, s, 'running'), { 'data-action': 'wake' }) : null,
    RESTARTABLE.has(s.state)
      ? action('Restart', (b) => changeState(b, s, 'running'), { 'data-action': 'restart' }) : null,
    s.state !== 'terminating' && s.state !== 'terminated'
      ? action('Delete', (b) => remove(b, s), { class: 'small danger', 'data-action': 'delete' }) : null);
  const failed = s.state === 'failed' || s.state === 'unreachable';
  const reason = s.state === 'unreachable' ? UNREACHABLE_TEXT
    : failed ? (s.error || entry.message || 'The session failed.') : null;
  const meta = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
  return h('article', { class: 'card session', dataset: { sessionId: s.id, state: s.state }, 'aria-label': `Session ${s.name}` },
    h('div', { class: 'top' }, templateIcon(t?.icon, title),
      h('div', {}, h('h3', {}, s.name), h('span', { class: 'muted' }, title))),
    h('div', {}, stateBadge(s.state)),
    progress(s.state),
    !failed ? h('p', { class: 'status-line', 'aria-live': 'polite' }, entry.message
      || (s.state === 'stopped' ? 'The application exited. Restart starts it again.' : '')) : null,
    reason ? h('p', { class: 'reason', role: 'alert' }, reason) : null,
    h('dl', { class: 'session-meta' },
      meta('Platform', platformIcon(s.platform)),
      meta('Agent', s.agent_id ? h('code', {}, s.agent_id) : '—'),
      meta('Region', s.region || '—'),
      meta('Created', timeAgo(s.created_at)),
      meta('Last activity', timeAgo(s.last_activity))),
    actions);
}

function render(entry) {
  // Unchanged sessions keep their card (and the keyboard focus inside it).
  const key = JSON.stringify([entry.session, entry.message]);
  if (entry.card && entry.card.isConnected && entry.key === key) return;
  entry.key = key;
  const card = sessionCard(entry);
  const focused = entry.card?.contains(document.activeElement)
    ? document.activeElement.dataset.action : null;
  if (entry.card && entry.card.isConnected) entry.card.replaceWith(card);
  else $('#sessions').append(card);
  entry.card = card;
  if (focused) card.querySelector(`[data-action="${focused}"]`)?.focus();
  renderUsage();
}

function renderUsage() {
  const active = [...sessions.values()].filter((e) => ACTIVE.has(e.session.state)).length;
  $('#no-sessions').classList.toggle('hidden', sessions.size > 0);
  if (me) $('#session-usage').textContent = `${active} of ${me.session_limit} active sessions in use`;
}

function forget(id) {
  const entry = sessions.get(id);
  if (!entry) return;
  entry.follower?.stop();
  entry.card?.remove();
  sessions.delete(id);
  renderUsage();
}

/** Put a session on the page (or update it) and follow it while it is not resting. */
function upsert(session, message) {
  let entry = sessions.get(session.id);
  if (!entry) {
    entry = { session, message: message || '' };
    sessions.set(session.id, entry);
  } else {
    entry.session = session;
    if (message !== undefined) entry.message = message;
  }
  if (session.state === 'terminated') {
    forget(session.id);
    return;
  }
  render(entry);
  if (!RESTING.has(session.state) && (!entry.follower || entry.follower.stopped)) follow(entry);
}

function follow(entry) {
  const id = entry.session.id;
  entry.follower = followSession(id, {
    onEvent: async (event) => {
      if (event.gone) return forget(id);
      const changed = event.state !== entry.session.state;
      entry.message = event.message || entry.message;
      if (!changed) return render(entry);
      // A new state can come with new details (agent, platform, region, error).
      try {
        upsert(event.session || await get(`/sessions/${id}`), event.message);
      } catch (e) {
        if (e.status === 404) forget(id);
      }
    },
  });
}

async function changeState(button, session, state) {
  const doing = state === 'hibernated' ? 'hibernating'
    : RESTARTABLE.has(session.state) ? 'restarting' : 'waking up';
  await busy(button, async () => {
    try {
      upsert(await patch(`/sessions/${session.id}`, { state }), doing);
    } catch (e) {
      // e.g. at the session limit, or its agent is full or offline: it stays as it was
      toast(e.message, 'error');
    }
  });
}

async function remove(button, session) {
  const ok = await confirmAction(
    `Delete the session “${session.name}”? Its programs are stopped and unsaved work is lost.`,
    { title: 'Delete this session?', ok: 'Delete' });
  if (!ok) return;
  await busy(button, async () => {
    try {
      const answer = await del(`/sessions/${session.id}`);
      if (answer === null) forget(session.id);
      else upsert(answer, 'deleting');
    } catch (e) {
      toast(e.message, 'error');
    }
  });
}

async function start(button, template) {
  showError($('#catalog-error'), null);
  await busy(button, async () => {
    try {
      const session = await post('/sessions', { template: template.name });
      upsert(session, 'waiting for an agent');
      toast(`Starting ${template.display_name}…`, 'ok');
      sessions.get(session.id)?.card?.scrollIntoView({ block: 'nearest' });
    } catch (e) {
      const error = e.status === 409 && e.code === 'session_limit_reached'
        ? new Error(`Session limit reached: ${e.message}. Hibernated sessions do not count.`)
        : e;
      showError($('#catalog-error'), error);
    }
  });
}

function templateCard(t) {
  return h('article', { class: 'card template', dataset: { template: t.name }, 'aria-label': t.display_name },
    h('div', { class: 'top' }, templateIcon(t.icon, t.display_name),
      h('div', {}, h('h3', {}, t.display_name), t.category ? h('span', { class: 'muted' }, t.category) : null)),
    h('p', { class: 'desc' }, t.description || ''),
    h('div', { class: 'actions' },
      h('button', {
        type: 'button', class: 'primary', 'aria-label': `Start ${t.display_name}`,
        onclick: (e) => start(e.currentTarget, t),
      }, 'Start')));
}

async function loadSessions() {
  const list = await get(withQuery('/sessions', { user: me.username }));
  const seen = new Set(list.map((s) => s.id));
  for (const id of [...sessions.keys()]) if (!seen.has(id)) forget(id);
  for (const s of list) upsert(s);
}

async function load() {
  try {
    me = await get('/auth/me');
    const list = await get('/templates');
    for (const t of list) templates.set(t.name, t);
    const enabled = list.filter((t) => t.enabled);
    clear($('#catalog'), enabled.length ? enabled.map(templateCard)
      : h('p', { class: 'empty' }, 'No applications are available yet. Ask an administrator to add templates.'));
    $('#catalog').setAttribute('aria-busy', 'false');
    await loadSessions();
    $('#sessions').setAttribute('aria-busy', 'false');
    renderUsage();
  } catch (e) {
    showError($('#sessions-error'), e);
  }
}

if (requireLogin()) {
  renderHeader();
  load();
  const refresh = () => {
    if (me && document.visibilityState === 'visible') {
      loadSessions().then(() => {
        refreshTimes($('#sessions'));
        showError($('#sessions-error'), null);
      },
        (e) => showError($('#sessions-error'), e));
    }
  };
  setInterval(refresh, REFRESH_MS);
  document.addEventListener('visibilitychange', refresh);
}
