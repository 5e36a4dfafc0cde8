// Admin / Agents: the fleet at a glance, filters, details, create, rotate token, remove.

import { del, get, post } from './api.js';
import {
  $, ago, busy, clear, confirmAction, copyText, dialog, field, filterBar, formatTime, h,
  platformIcon, pre, saveUrlFilters, select, showError, startAdminPage, summary, table,
  timeAgo, toast, urlFilters,
} from './ui.js';

const REFRESH_KEY = 'streamspace.agents.refresh';
const STALE_SECONDS = 30; // online, yet no heartbeat for this long: worth a look

let agents = [];
let timer = null;
const filters = urlFilters(['platform', 'status', 'region']);

function health(agent) {
  if (agent.status !== 'online') return ['offline', 'offline'];
  const age = agent.last_heartbeat ? (Date.now() - Date.parse(agent.last_heartbeat)) / 1000 : Infinity;
  return age > STALE_SECONDS ? ['warning', 'online, no recent heartbeat'] : ['online', 'online'];
}

function statusBadge(agent) {
  const [kind, text] = health(agent);
  return h('span', { class: `badge ${kind}`, dataset: { status: agent.status } }, text);
}

function usage(agent) {
  const max = Number(agent.capacity?.max_sessions) || 0;
  const used = agent.active_sessions;
  const parts = [h('span', {}, `${used} / ${max || '∞'} sessions`)];
  if (max) {
    const pct = Math.min(100, Math.round((used / max) * 100));
    const bar = h('span', {});
    bar.style.width = `${pct}%`;
    parts.unshift(h('span', { class: 'meter', title: `${pct}% of capacity`, 'aria-hidden': 'true' }, bar), ' ');
  }
  const u = agent.metadata?.usage || {};
  const limits = [];
  if (agent.capacity?.max_cpu) limits.push(`CPU ${u.cpu ?? 0} / ${agent.capacity.max_cpu}`);
  if (agent.capacity?.max_memory_gb) limits.push(`memory ${u.memory_gb ?? 0} / ${agent.capacity.max_memory_gb} GB`);
  if (limits.length) parts.push(h('div', { class: 'muted' }, limits.join(', ')));
  return h('div', {}, parts);
}

function shellQuote(value) {
  const s = String(value);
  return /^[A-Za-z0-9._:/@%+=,-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`;
}

// One line a shell runs as pasted: it makes the agent its own private directory, asks for
// the token without echo (so it is never in argv, the environment shown here, or the
// shell history) and keeps it in a 0600 file, then starts this installation's twistd
// from that directory, with no pidfile.
function startCommand(agent, twistd) {
  const dir = `"$HOME/.streamspace-agents/${agent.agent_id}"`;
  const env = [
    ['AGENT_ID', agent.agent_id], ['CONTROL_PLANE_URL', location.origin],
    ['PLATFORM', agent.platform],
  ];
  if (agent.region) env.push(['REGION', agent.region]);
  const vars = env.map(([k, v]) => `${k}=${shellQuote(v)}`).join(' ');
  return [
    `d=${dir}`, 'install -d -m 700 "$d" "$d/state"',
    `(umask 077; printf 'Paste the agent token: '; stty -echo 2>/dev/null; read -r t; `
      + `stty echo 2>/dev/null; echo; printf '%s\\n' "$t" > "$d/token")`,
    'cd "$d"',
    `${vars} AGENT_TOKEN_FILE="$d/token" AGENT_STATE_DIR="$d/state" `
      + `${shellQuote(twistd || 'twistd')} --nodaemon --pidfile= agent`,
  ].join(' && ');
}

function showToken(agent, token, title, twistd) {
  const command = startCommand(agent, twistd);
  dialog(title,
    h('p', { class: 'alert info' }, 'This token is shown only now; StreamSpace keeps only its hash. Copy it before closing.'),
    h('p', {}, 'Token:'),
    h('pre', { class: 'secret', id: 'agent-token' }, token),
    h('p', {}, 'Start the agent with this command, then paste the token when it asks (it is not echoed, and is kept in a file only you can read). On another machine, use the twistd of its own StreamSpace installation.'),
    h('pre', { class: 'secret', id: 'agent-command' }, command),
    h('form', { method: 'dialog', class: 'form-actions' },
      h('button', { type: 'button', onclick: () => copyText(command) }, 'Copy command'),
      h('button', { type: 'button', onclick: () => copyText(token) }, 'Copy token'),
      h('button', { type: 'submit', class: 'primary' }, 'Done')));
}

function showDetails(agent) {
  const row = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
  dialog(`Agent ${agent.agent_id}`,
    h('dl', { class: 'details', id: 'agent-details' },
      row('Agent ID', h('code', {}, agent.agent_id)),
      row('Platform', platformIcon(agent.platform)),
      row('Region', agent.region || '—'),
      row('Status', statusBadge(agent)),
      row('Last heartbeat', `${formatTime(agent.last_heartbeat)} (${ago(agent.last_heartbeat)})`),
      row('Active sessions', String(agent.active_sessions)),
      row('Protocol version', agent.protocol_version ?? '—'),
      row('Created', formatTime(agent.created_at)),
      row('Updated', formatTime(agent.updated_at))),
    h('h3', {}, 'Capacity'), pre(agent.capacity || {}),
    h('h3', {}, 'Metadata'), pre(agent.metadata || {}),
    h('form', { method: 'dialog', class: 'form-actions' }, h('button', { type: 'submit', class: 'primary' }, 'Close')));
}

async function rotate(agent, button) {
  const ok = await confirmAction(
    `Issue a new token for ${agent.agent_id}? The current token stops working at once: the agent disconnects until it is restarted with the new one.`,
    { title: 'Rotate the agent token?', ok: 'Rotate token' });
  if (!ok) return;
  await busy(button, async () => {
    try {
      const answer = await post(`/agents/${encodeURIComponent(agent.agent_id)}/token`, {});
      showToken(agent, answer.token, `New token for ${agent.agent_id}`, answer.twistd);
      load();
    } catch (e) {
      toast(e.message, 'error');
    }
  });
}

async function remove(agent, button) {
  const ok = await confirmAction(
    `Remove the agent ${agent.agent_id}? Its token stops working and it disappears from the fleet.`,
    { title: 'Remove this agent?', ok: 'Remove' });
  if (!ok) return;
  await busy(button, async () => {
    try {
      await del(`/agents/${encodeURIComponent(agent.agent_id)}`);
      toast(`Removed ${agent.agent_id}.`, 'ok');
      load();
    } catch (e) {
      toast(e.message, 'error');
    }
  });
}

function createAgent() {
  const id = h('input', { id: 'new-agent-id', required: true, autocomplete: 'off', pattern: '[A-Za-z0-9][A-Za-z0-9._:\\-]{0,254}' });
  const platform = select('new-agent-platform', ['local', 'kubernetes'], { all: null, value: 'local' });
  const region = h('input', { id: 'new-agent-region', autocomplete: 'off' });
  const max = h('input', { id: 'new-agent-max', type: 'number', min: '0', step: '1' });
  const error = h('p', { class: 'alert error hidden', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'primary', id: 'new-agent-submit' }, 'Create agent');
  const d = dialog('Add an agent',
    h('form', {
      novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        const body = { agent_id: id.value.trim(), platform: platform.value, region: region.value.trim() };
        if (max.value) body.capacity = { max_sessions: Number(max.value) };
        if (!body.agent_id) return showError(error, new Error('Give the agent an ID.'));
        await busy(submit, async () => {
          try {
            const agent = await post('/agents', body);
            d.close();
            showToken(agent, agent.token, `Agent ${agent.agent_id} created`, agent.twistd);
            load();
          } catch (err) {
            showError(error, err);
          }
        });
      },
    },
    field('Agent ID', id, 'Letters, digits, ".", "_", ":", "-"; e.g. edge-1.'),
    field('Platform', platform),
    field('Region', region, 'Optional, e.g. us-east-1.'),
    field('Max sessions', max, 'Optional; the agent reports its real capacity when it connects.'),
    error,
    h('div', { class: 'form-actions' },
      h('button', { type: 'button', onclick: () => d.close() }, 'Cancel'), submit)));
  id.focus();
}

function options(key) {
  return [...new Set(agents.map((a) => a[key]).filter(Boolean))].sort();
}

function render() {
  const online = agents.filter((a) => a.status === 'online');
  summary([
    ['Agents', agents.length, 'sum-total'],
    ['Online', online.length, 'sum-online'],
    ['Active sessions', agents.reduce((n, a) => n + a.active_sessions, 0), 'sum-sessions'],
    ['Platforms', options('platform').length, 'sum-platforms'],
  ]);
  // Keep the filter choices in step with the fleet, keeping what is chosen.
  for (const key of ['platform', 'region']) {
    const s = $(`#filter-${key}`);
    const values = options(key);
    if (filters[key] && !values.includes(filters[key])) values.push(filters[key]);
    clear(s, h('option', { value: '' }, 'All'), values.map((v) => h('option', { value: v }, v)));
    s.value = filters[key];
  }
  const shown = agents.filter((a) => (!filters.platform || a.platform === filters.platform)
    && (!filters.status || a.status === filters.status)
    && (!filters.region || a.region === filters.region));
  const rows = shown.map((a) => {
    const action = (label, fn, cls = 'small') =>
      h('button', { type: 'button', class: cls, onclick: (e) => fn(a, e.currentTarget), 'aria-label': `${label} ${a.agent_id}` }, label);
    return {
      attrs: { 'data-agent-id': a.agent_id },
      cells: [
        h('button', { type: 'button', class: 'small mono', onclick: () => showDetails(a), title: 'Details', 'aria-label': `Details of ${a.agent_id}` }, a.agent_id),
        platformIcon(a.platform), statusBadge(a), a.region || '—', usage(a), timeAgo(a.last_heartbeat),
        h('td', { class: 'actions' }, action('Details', showDetails), action('Rotate token', rotate),
          action('Remove', remove, 'small danger')),
      ],
    };
  });
  // Auto-refresh redraws the table: keep the keyboard focus on the same button.
  const active = document.activeElement;
  const focusRow = active?.closest?.('#agents-table tr')?.dataset.agentId;
  const focusLabel = active?.getAttribute?.('aria-label');
  const empty = agents.length ? 'No agent matches these filters.'
    : 'No agents yet. Add one, then start it with the command shown.';
  clear($('#content'), table(
    ['Agent', 'Platform', 'Status', 'Region', 'Capacity and usage', 'Last heartbeat', ''], rows,
    { empty, id: 'agents-table' }));
  if (focusRow && focusLabel) {
    [...document.querySelectorAll('#agents-table tr')]
      .find((tr) => tr.dataset.agentId === focusRow)
      ?.querySelector(`[aria-label="${CSS.escape(focusLabel)}"]`)?.focus();
  }
  $('#content').setAttribute('aria-busy', 'false');
}

async function load() {
  try {
    agents = await get('/agents');
    showError($('#page-error'), null);
    render();
  } catch (e) {
    showError($('#page-error'), e);
  }
}

function schedule(seconds) {
  clearInterval(timer);
  localStorage.setItem(REFRESH_KEY, String(seconds));
  if (seconds > 0) {
    timer = setInterval(() => document.visibilityState === 'visible' && load(), seconds * 1000);
  }
}

startAdminPage(() => {
  const refresh = select('refresh', [['0', 'Off'], ['5', 'Every 5 s'], ['10', 'Every 10 s'], ['30', 'Every 30 s'], ['60', 'Every minute']],
    { all: null, value: localStorage.getItem(REFRESH_KEY) || '10' });
  filterBar([
    ['Platform', select('filter-platform', [], { value: filters.platform })],
    ['Status', select('filter-status', ['online', 'offline'], { value: filters.status })],
    ['Region', select('filter-region', [], { value: filters.region })],
    ['Auto-refresh', refresh],
  ], () => {
    filters.platform = $('#filter-platform').value;
    filters.status = $('#filter-status').value;
    filters.region = $('#filter-region').value;
    saveUrlFilters(filters);
    schedule(Number(refresh.value));
    render();
  });
  clear($('#page-actions'),
    h('button', { type: 'button', onclick: (e) => busy(e.currentTarget, load) }, 'Refresh'), ' ',
    h('button', { type: 'button', class: 'primary', id: 'add-agent', onclick: createAgent }, 'Add agent'));
  schedule(Number(refresh.value));
  load();
});
