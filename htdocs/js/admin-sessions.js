// Admin / Sessions: every user's sessions, filtered on the server; terminate with confirmation.

import { del, get, withQuery } from './api.js';
import {
  $, busy, clear, confirmAction, filterBar, h, platformIcon, saveUrlFilters, select, showError,
  startAdminPage, stateBadge, table, timeAgo, toast, urlFilters,
} from './ui.js';

const STATES = ['pending', 'scheduled', 'starting', 'running', 'hibernating', 'hibernated',
  'waking', 'terminating', 'terminated', 'failed', 'unreachable'];
const filters = urlFilters(['state', 'user', 'platform', 'agent_id', 'include_terminated']);

async function terminate(session, button) {
  const ok = await confirmAction(
    `Terminate ${session.owner}'s session “${session.name}”? Its programs are stopped and unsaved work is lost.`,
    { title: 'Terminate this session?', ok: 'Terminate' });
  if (!ok) return;
  await busy(button, async () => {
    try {
      await del(`/sessions/${session.id}`);
      toast(`Terminating ${session.name}.`, 'ok');
      load();
    } catch (e) {
      toast(e.message, 'error');
    }
  });
}

async function load() {
  try {
    const list = await get(withQuery('/sessions', filters));
    showError($('#page-error'), null);
    const rows = list.map((s) => ({
      attrs: { 'data-session-id': s.id },
      cells: [
        h('div', {}, h('strong', {}, s.name), h('div', { class: 'muted mono' }, s.id.slice(0, 8))),
        s.owner, s.template,
        h('div', {}, stateBadge(s.state), s.error ? h('div', { class: 'reason' }, s.error) : null),
        platformIcon(s.platform), s.agent_id ? h('code', {}, s.agent_id) : '—', s.region || '—',
        timeAgo(s.created_at), timeAgo(s.last_activity),
        h('td', { class: 'actions' }, s.state !== 'terminated' && s.state !== 'terminating'
          ? h('button', {
            type: 'button', class: 'small danger', 'aria-label': `Terminate ${s.name}`,
            onclick: (e) => terminate(s, e.currentTarget),
          }, 'Terminate') : null),
      ],
    }));
    clear($('#content'), table(
      ['Session', 'Owner', 'Template', 'State', 'Platform', 'Agent', 'Region', 'Created', 'Last activity', ''],
      rows, { empty: 'No session matches these filters.', id: 'sessions-table' }));
    $('#content').setAttribute('aria-busy', 'false');
  } catch (e) {
    showError($('#page-error'), e);
  }
}

startAdminPage(() => {
  const text = (id, placeholder) => h('input', { id, name: id, value: filters[id] || '', placeholder, autocomplete: 'off' });
  const terminated = h('input', { type: 'checkbox', id: 'include_terminated', checked: filters.include_terminated === 'true' });
  filterBar([
    ['State', select('state', STATES, { value: filters.state })],
    ['User', text('user', 'username')],
    ['Platform', text('platform', 'local, kubernetes…')],
    ['Agent', text('agent_id', 'agent id')],
    ['Include terminated', terminated],
  ], () => {
    for (const key of ['state', 'user', 'platform', 'agent_id']) filters[key] = $(`#${key}`).value.trim();
    filters.include_terminated = terminated.checked ? 'true' : '';
    saveUrlFilters(filters);
    load();
  });
  clear($('#page-actions'), h('button', { type: 'button', onclick: (e) => busy(e.currentTarget, load) }, 'Refresh'));
  load();
});
