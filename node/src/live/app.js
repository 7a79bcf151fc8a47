// The live activity page: no build step, no dependencies. The feed is Server-Sent Events read
// with fetch() (EventSource can send neither Authorization nor a chosen Last-Event-ID); on a
// broken or silent stream it resumes after the last position shown, on the next node of
// `#nodes=`, so no event is shown twice and none is skipped.
'use strict';
(() => {
  const FIELDS = ['token', 'tenant', 'min_severity', 'project', 'task', 'agent_type', 'type'];
  const STORAGE_KEY = 'switchboard.live';
  const FEED_ROWS_MAX = 500;
  // Progress comes every second: three missed ones mean a stalled node.
  const STALL_MS = 3500;
  const BACKOFF_MS_MIN = 200;
  const BACKOFF_MS_MAX = 2000;
  const POLL_MS = 2000;

  const $ = (id) => document.getElementById(id);
  const hash = new URLSearchParams(location.hash.slice(1));
  const nodes = (hash.get('nodes') || '')
    .split(',').map((s) => s.trim().replace(/\/+$/, '')).filter(Boolean);
  if (nodes.length === 0) nodes.push(location.origin);
  const startFrom = Number(hash.get('from') || 0);

  let nodeIndex = 0;
  let lastPosition = 0; // the last event shown
  let resumeFrom = startFrom; // the next position to ask for; 0: from now
  let shown = 0;
  let generation = 0;
  let controller = null;

  function loadSettings() {
    let saved = {};
    try { saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || '{}'); } catch (_) { saved = {}; }
    for (const f of FIELDS) {
      const value = hash.has(f) ? hash.get(f) : saved[f];
      if (value !== undefined && value !== null) $(f).value = value;
    }
    // A token given in the fragment moves to sessionStorage and out of the address bar.
    if (hash.has('token')) {
      hash.delete('token');
      saveSettings();
      history.replaceState(null, '', location.pathname + location.search + '#' + hash.toString());
    }
  }

  function saveSettings() {
    const s = settings();
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(s));
  }

  function settings() {
    const s = {};
    for (const f of FIELDS) s[f] = $(f).value.trim();
    return s;
  }

  function base() { return nodes[nodeIndex % nodes.length]; }

  function query(s, keys) {
    const q = new URLSearchParams();
    for (const k of keys) if (s[k]) q.set(k, s[k]);
    const text = q.toString();
    return text ? '?' + text : '';
  }

  function authHeaders(s) { return { Authorization: 'Bearer ' + s.token }; }

  function setStatus(state, text) {
    document.body.dataset.state = state;
    $('status').dataset.state = state;
    $('status').textContent = text;
    $('node').textContent = base();
    document.body.dataset.node = base();
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function cell(tr, text, className) {
    const td = document.createElement('td');
    td.textContent = text === undefined || text === null ? '' : String(text);
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }

  function severityName(value) {
    return value ? String(value).replace(/^SEVERITY_/, '').toLowerCase() : '';
  }

  function render(ev) {
    const position = Number(ev.position);
    const a = ev.activity || {};
    const severity = severityName(a.severity);
    const tr = document.createElement('tr');
    tr.className = 'sev-' + (severity || 'none');
    tr.dataset.position = String(position);
    tr.dataset.type = ev.eventType || '';
    tr.dataset.atMs = String(ev.atMs || 0);
    cell(tr, position);
    cell(tr, new Date(Number(ev.atMs || 0)).toISOString().slice(11, 23));
    cell(tr, ev.eventType);
    const sev = cell(tr, '');
    if (severity) {
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.textContent = severity;
      sev.appendChild(badge);
    }
    const named = a.agentName && a.agentName !== a.agentType;
    cell(tr, a.agentType ? a.agentType + (named ? ' (' + a.agentName + ')' : '') : '');
    cell(tr, [a.projectId, a.taskId].filter(Boolean).join(' / '));
    // Call ids are UUIDv7: their first digits are a timestamp, their last ones tell calls apart.
    cell(tr, ev.callId ? '…' + ev.callId.slice(-8) : '');
    cell(tr, a.message || a.taskDescription || ev.payloadJson || '');
    const body = $('feed').tBodies[0];
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > FEED_ROWS_MAX) body.deleteRow(body.rows.length - 1);
    // From the leader's stamp to this row being in the document.
    tr.dataset.delayMs = String(Date.now() - Number(ev.atMs || 0));
    lastPosition = position;
    resumeFrom = position + 1;
    shown += 1;
    document.body.dataset.lastPosition = String(lastPosition);
    document.body.dataset.shown = String(shown);
  }

  function handle(message) {
    let data = null;
    try { data = JSON.parse(message.data || 'null'); } catch (_) { data = null; }
    switch (message.event) {
      case 'open':
        if (resumeFrom === 0 && data) resumeFrom = Number(data.resumeFrom);
        setStatus('live', 'live');
        return true;
      case 'progress':
        if (data && Number(data.resumeFrom) > resumeFrom) resumeFrom = Number(data.resumeFrom);
        return true;
      case 'end':
        setStatus('reconnecting', 'stream ended: ' + (data ? data.message : ''));
        return false;
      default: {
        if (!data) return true;
        // Each position once: a replay after a reconnect is dropped.
        if (Number(data.position) <= lastPosition) return true;
        render(data);
        return true;
      }
    }
  }

  function parseBlock(block) {
    const message = { event: 'message', data: '', id: null };
    const data = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') message.event = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id') message.id = value;
    }
    message.data = data.join('\n');
    return message;
  }

  // One stream from one node: returns 'refused' when retrying cannot help, else 'broken'.
  async function stream(s, gen) {
    const ctl = new AbortController();
    controller = ctl;
    let stall = setTimeout(() => ctl.abort(), STALL_MS);
    const armStall = () => { clearTimeout(stall); stall = setTimeout(() => ctl.abort(), STALL_MS); };
    try {
      const headers = authHeaders(s);
      if (resumeFrom > 0) headers['Last-Event-ID'] = String(resumeFrom - 1);
      const keys = ['tenant', 'min_severity', 'project', 'task', 'agent_type', 'type'];
      const response = await fetch(base() + '/live/events' + query(s, keys), {
        headers, signal: ctl.signal, cache: 'no-store',
      });
      if (!response.ok) {
        const text = await response.text();
        setStatus(response.status === 401 || response.status === 403 ? 'refused' : 'reconnecting',
          'refused (' + response.status + '): ' + text);
        return [400, 401, 403, 404].includes(response.status) ? 'refused' : 'broken';
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done || gen !== generation) return 'broken';
        armStall();
        buffer += decoder.decode(value, { stream: true });
        buffer = buffer.replace(/\r\n/g, '\n');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (gen !== generation) return 'broken';
          if (!handle(parseBlock(block))) return 'broken';
        }
      }
    } catch (e) {
      return 'broken';
    } finally {
      clearTimeout(stall);
      ctl.abort();
    }
  }

  async function follow() {
    const gen = ++generation;
    if (controller) controller.abort();
    const s = settings();
    if (!s.token) { setStatus('signed-out', 'enter a token'); return; }
    let backoff = BACKOFF_MS_MIN;
    while (gen === generation) {
      setStatus('connecting', 'connecting');
      const shownBefore = shown;
      const outcome = await stream(s, gen);
      if (gen !== generation || outcome === 'refused') return;
      if (shown > shownBefore) backoff = BACKOFF_MS_MIN;
      nodeIndex += 1;
      setStatus('reconnecting', 'reconnecting after position ' + lastPosition);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, BACKOFF_MS_MAX);
    }
  }

  function dl(title, entries) {
    const h = document.createElement('h3');
    h.textContent = title;
    const list = document.createElement('dl');
    for (const [k, v] of entries) {
      const dt = document.createElement('dt'); dt.textContent = k;
      const dd = document.createElement('dd'); dd.textContent = String(v);
      list.append(dt, dd);
    }
    return [h, list];
  }

  async function pollStats() {
    const s = settings();
    if (!s.token) return;
    try {
      const response = await fetch(base() + '/live/stats' + query(s, ['tenant', 'project']),
        { headers: authHeaders(s), cache: 'no-store' });
      if (!response.ok) throw new Error(String(response.status));
      const stats = await response.json();
      const out = [];
      out.push(...dl('Totals', [['events', stats.total || 0], ['activity', stats.activity || 0]]));
      out.push(...dl('By type', Object.entries(stats.byType || {}).sort()));
      out.push(...dl('By severity', Object.entries(stats.bySeverity || {}).sort()));
      out.push(...dl('Agents: success rate', (stats.agents || []).map((a) => [
        a.agentType,
        (a.successRate === undefined ? '-' : Math.round(a.successRate * 100) + '%')
          + ' (' + (a.completed || 0) + ' ok, ' + (a.errors || 0) + ' err)',
      ])));
      $('stats').replaceChildren(...out);
    } catch (e) {
      $('stats').textContent = 'statistics unavailable (' + e.message + ')';
    }
  }

  async function pollCalls() {
    const s = settings();
    if (!s.token) return;
    try {
      const response = await fetch(base() + '/live/calls' + query(s, ['tenant']),
        { headers: authHeaders(s), cache: 'no-store' });
      if (!response.ok) throw new Error(String(response.status));
      const answer = await response.json();
      const rows = (answer.calls || []).map((c) => {
        const tr = document.createElement('tr');
        tr.dataset.callId = c.callId;
        cell(tr, '…' + c.callId.slice(-8));
        cell(tr, String(c.state || '').replace(/^CALL_STATE_/, '').toLowerCase());
        cell(tr, String(c.channel || '').replace(/^CHANNEL_/, '').toLowerCase());
        cell(tr, c.turnCount || 0);
        return tr;
      });
      $('calls').tBodies[0].replaceChildren(...rows);
    } catch (e) {
      const tr = document.createElement('tr');
      cell(tr, 'calls unavailable (' + e.message + ')');
      $('calls').tBodies[0].replaceChildren(tr);
    }
  }

  async function poll() {
    for (;;) {
      await Promise.all([pollStats(), pollCalls()]);
      await sleep(POLL_MS);
    }
  }

  $('settings').addEventListener('submit', (e) => {
    e.preventDefault();
    saveSettings();
    $('feed').tBodies[0].replaceChildren();
    lastPosition = 0;
    resumeFrom = startFrom;
    shown = 0;
    follow();
    pollStats();
    pollCalls();
  });

  loadSettings();
  follow();
  poll();
})();
