// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, and a
// login token must never go in a URL, so the text/event-stream body is read with a
// ReadableStream reader and parsed here. followSession() adds the fallback: polling
// GET /sessions/{id} every 2 s while the stream cannot be used.

import { API, ApiError, authHeaders, get } from './api.js';

/** An incremental text/event-stream parser (the WHATWG rules, minus reconnection). */
export class SSEParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.reset();
    this.lastEventId = '';
    this.retry = null;
    this.first = true;
  }

  reset() {
    this.data = [];
    this.type = '';
    this.hasData = false;
  }

  feed(text) {
    if (this.first && text) {
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      this.first = false;
    }
    this.buffer += text;
    // A line ends with CRLF, LF or CR; a CR at the very end may be half of a CRLF.
    const lines = this.buffer.split(/\r\n|\n|\r(?!$)/);
    this.buffer = lines.pop(); // the unfinished line (a trailing CR waits for its LF)
    for (const line of lines) this.line(line);
  }

  end() {
    if (this.buffer) {
      this.line(this.buffer.replace(/\r$/, ''));
      this.buffer = '';
    }
    // A final event without its blank line is dropped, as the spec says.
    this.reset();
  }

  line(line) {
    if (line === '') {
      if (this.hasData) {
        this.onEvent({ type: this.type || 'message', data: this.data.join('\n'), id: this.lastEventId });
      }
      this.reset();
      return;
    }
    if (line.startsWith(':')) return; // a comment (keep-alive)
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') {
      this.data.push(value);
      this.hasData = true;
    } else if (field === 'event') {
      this.type = value;
    } else if (field === 'id') {
      if (!value.includes('\0')) this.lastEventId = value;
    } else if (field === 'retry') {
      if (/^\d+$/.test(value)) this.retry = Number(value);
    }
  }
}

/**
 * GET `url` as an event stream with the login token in the header; calls onEvent for
 * each event until the server ends the body (resolves) or something fails (rejects).
 */
export async function readEventStream(url, { onEvent, onOpen, signal } = {}) {
  const response = await fetch(url, {
    headers: authHeaders({ Accept: 'text/event-stream' }),
    cache: 'no-store',
    signal,
  });
  if (!response.ok) {
    let message = `the event stream answered ${response.status}`;
    try {
      message = (await response.json()).error.message || message;
    } catch {
      // keep the status
    }
    throw new ApiError(response.status, 'stream_error', message);
  }
  const type = response.headers.get('Content-Type') || '';
  if (!type.startsWith('text/event-stream') || !response.body) {
    await response.body?.cancel();
    throw new ApiError(response.status, 'not_a_stream', 'the server sent no event stream');
  }
  if (onOpen) onOpen();
  const parser = new SSEParser(onEvent);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.feed(value);
    }
    parser.end();
  } finally {
    reader.releaseLock();
  }
}

const POLL_MS = 2000;
const COALESCE_MS = 150;
const RESTARTS = 5;
// States a session rests in; anything else is on its way somewhere.
export const RESTING = new Set(['running', 'hibernated', 'failed', 'stopped', 'terminated', 'unreachable']);

/**
 * Follow one session's state: the events stream first, polling when it errors.
 *
 * The stream replays the session's history before live events, so events arriving close
 * together are coalesced: onEvent({state, message, at}) sees the latest of each burst,
 * which is the session's current state. Stops by itself once `until(state)` is true (by
 * default: the session is resting). Returns {stop(), stopped}.
 */
export function followSession(id, { onEvent, onMode, until = (s) => RESTING.has(s) } = {}) {
  const controller = new AbortController();
  let stopped = false;
  let lastState = null;
  let latest = null;
  let timer = null;
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
    controller.abort();
  };
  const deliver = (event) => {
    if (stopped) return;
    lastState = event.state;
    onEvent(event);
    if (until(event.state)) stop();
  };
  const flush = () => {
    clearTimeout(timer);
    timer = null;
    if (latest) {
      const event = latest;
      latest = null;
      deliver(event);
    }
  };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function poll() {
    onMode?.('polling');
    let previous = null;
    while (!stopped) {
      try {
        const s = await get(`/sessions/${id}`, { signal: controller.signal });
        const key = `${s.state}|${s.error || ''}`;
        if (key !== previous) {
          previous = key;
          deliver({ state: s.state, message: s.error || '', at: s.state_changed_at, session: s });
        }
      } catch (e) {
        if (stopped || e.name === 'AbortError') return;
        if (e.status === 404 || e.status === 401) {
          deliver({ state: 'terminated', message: e.message, at: null, gone: true });
          return;
        }
        onMode?.('error', e);
      }
      if (!stopped) await sleep(POLL_MS);
    }
  }

  async function run() {
    for (let attempt = 0; attempt < RESTARTS && !stopped; attempt += 1) {
      try {
        await readEventStream(`${API}/sessions/${id}/events`, {
          signal: controller.signal,
          onOpen: () => onMode?.('stream'),
          onEvent: (ev) => {
            let data;
            try {
              data = JSON.parse(ev.data);
            } catch {
              return; // not ours
            }
            if (data && typeof data.state === 'string') {
              latest = { state: data.state, message: data.message || '', at: data.at || null };
              if (!timer) timer = setTimeout(flush, COALESCE_MS);
            }
          },
        });
        flush();
        // The server ends the stream once the session settles. Settled where we wanted:
        // done. Settled elsewhere (e.g. hibernated, waiting to be woken): poll. Ended
        // on its way (a server restart): reopen.
        if (stopped) return;
        if (lastState && RESTING.has(lastState)) break;
        await sleep(1000);
      } catch (e) {
        flush();
        if (stopped || e.name === 'AbortError') return;
        if (e.status === 404) {
          deliver({ state: 'terminated', message: e.message, at: null, gone: true });
          return;
        }
        break; // the stream does not work here: poll instead
      }
    }
    if (!stopped) await poll();
  }

  run();
  return { stop, get stopped() { return stopped; } };
}
