(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  // Every text for a state value comes from the server, keyed by the value's JSON name.
  let LABELS = { modes: {}, reasons: {}, heater: {}, keep_warm: {}, link: {}, formats: {}, schedule: {}, sources: {} };
  try { LABELS = JSON.parse($('initial').dataset.labels); } catch (e) { /* names shown as they are */ }
  const label = (table, name) => LABELS[table][name] || name;
  const HISTORY_MS = 10 * 60 * 1000;
  let history = [];
  let doc = null;
  let failures = 0;
  let polls = 0;
  let skewMs = 0;

  /** Now on the server's clock, as far as the Date header tells. */
  function now() { return Date.now() + skewMs; }
  function text(id, value) { const el = $(id); if (el.textContent !== value) el.textContent = value; }
  function attr(id, name, value) { const el = $(id); if (el.getAttribute(name) !== value) el.setAttribute(name, value); }
  function firmwareLabel(d) {
    const name = d.firmware || 'Firmware unknown';
    return d.reply_format ? name + ' · ' + label('formats', d.reply_format) : name;
  }
  function fmtDuration(s) {
    if (s === null || s === undefined) return '—';
    const m = Math.floor(s / 60), r = s % 60;
    return m + ':' + String(r).padStart(2, '0');
  }
  function fmtAgo(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) return s + ' s ago';
    if (s < 90 * 60) return Math.round(s / 60) + ' min ago';
    return Math.round(s / 3600) + ' h ago';
  }
  function fmtClock(t) {
    return new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }

  /** `YYYY-MM-DD HH:MM` as written (the schedule's zone), as the server shows it. */
  function wallMinute(t) { return t.slice(0, 10) + ' ' + t.slice(11, 16); }
  function renderNextBrew(d) {
    const b = d.next_brew;
    attr('next-brew', 'datetime', b ? b.ready_at : '');
    text('next-brew', b ? 'Ready ' + wallMinute(b.ready_at) : label('schedule', d.schedule));
    text('next-brew-detail', b
      ? b.cups + (b.cups === 1 ? ' cup' : ' cups') + ' · ' + label('sources', b.source) + ' · starts ' + b.start_at.slice(11, 16)
      : '');
  }

  function render(d) {
    const t = d.temperature_c;
    text('temperature', t === null ? '—' : t.toFixed(1));
    attr('mode', 'data-value', d.mode);
    text('mode', label('modes', d.mode));
    attr('heater', 'data-value', d.heater || 'unknown');
    text('heater', label('heater', d.heater || 'unknown'));
    text('water-level', d.water_level_pct === null ? '—' : d.water_level_pct + ' %');
    attr('water-bar', 'width', String(d.water_level_pct || 0));
    text('water-distance', d.water_distance_in === null ? 'No reading' : d.water_distance_in.toFixed(2) + ' in to the surface');
    text('brew-remaining', d.mode === 'brewing' ? fmtDuration(d.brew_remaining_s) : '—');
    text('cups', d.cups + (d.cups === 1 ? ' cup selected' : ' cups selected'));
    renderNextBrew(d);
    attr('keep-warm', 'data-value', d.keep_warm);
    text('keep-warm', label('keep_warm', d.keep_warm));
    attr('link', 'data-value', d.link);
    text('link', label('link', d.link));
    text('firmware', firmwareLabel(d));
    text('reboots', d.controller_reboots + (d.controller_reboots === 1 ? ' reboot' : ' reboots') + ' since start');
    const faults = d.faults.map((f) => label('reasons', f));
    const ul = $('faults');
    const key = faults.join('|') || 'none';
    if (ul.dataset.key !== key) {
      ul.dataset.key = key;
      ul.replaceChildren(...(faults.length ? faults : ['None']).map((f) => {
        const li = document.createElement('li');
        li.textContent = f;
        if (!faults.length) li.className = 'none';
        return li;
      }));
    }
    const lf = d.last_fault;
    text('last-fault', lf ? 'Last: ' + label('reasons', lf.reason) + ' at ' + fmtClock(lf.at) : 'No trips since start');
    attr('updated-clock', 'datetime', d.updated_at || '');
    text('updated-clock', d.updated_at ? fmtClock(d.updated_at) : 'Never');
    document.title = (t === null ? '' : t.toFixed(1) + ' °C · ') + label('modes', d.mode) + ' — ' + $('initial').dataset.title;
    renderAgo();
  }
  function renderAgo() {
    if (!doc) return;
    text('updated-ago', doc.updated_at ? fmtAgo(now() - Date.parse(doc.updated_at)) : 'The controller has not answered yet');
  }

  function record(d) {
    const t = now();
    if (d.temperature_c !== null) history.push([t, d.temperature_c]);
    history = history.filter((p) => t - p[0] <= HISTORY_MS);
    drawSparkline(t);
  }
  function drawSparkline(end) {
    const pts = history;
    if (pts.length < 2) return;
    const t0 = pts[0][0];
    const span = Math.max(10000, end - t0);
    let lo = Math.min(...pts.map((p) => p[1])), hi = Math.max(...pts.map((p) => p[1]));
    const mid = (lo + hi) / 2;
    if (hi - lo < 4) { lo = mid - 2; hi = mid + 2; }
    const W = 300, H = 80, pad = 4;
    const x = (t) => (W * (t - (end - span)) / span).toFixed(1);
    const y = (v) => (pad + (H - 2 * pad) * (1 - (v - lo) / (hi - lo))).toFixed(1);
    const line = pts.map((p, i) => (i ? 'L' : 'M') + x(p[0]) + ' ' + y(p[1])).join(' ');
    attr('spark-line', 'd', line);
    attr('spark-area', 'd', line + ' L' + x(pts[pts.length - 1][0]) + ' ' + H + ' L' + x(t0) + ' ' + H + ' Z');
    const temps = pts.map((p) => p[1]);
    const secs = Math.round((end - t0) / 1000);
    const span_ = secs < 90 ? secs + ' s' : Math.round(secs / 60) + ' min';
    text('spark-caption', 'Last ' + span_ + ': ' + Math.min(...temps).toFixed(1) + '–' + Math.max(...temps).toFixed(1) + ' °C');
  }

  function setConn(state, message) { attr('conn', 'data-state', state); text('conn', message); }

  /** A state pushed or fetched: shown, recorded for the sparkline. */
  function apply(d, source) {
    doc = d;
    render(d);
    record(d);
    setConn('live', 'Live');
    document.body.dataset.source = source;
  }

  /** Fallback when the stream is unavailable: status.json every second. */
  async function poll() {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 4000);
    try {
      const res = await fetch('status.json', { cache: 'no-cache', signal: ctl.signal });
      if (res.status === 503) {
        setConn('waiting', 'Waiting for the controller…');
      } else if (!res.ok) {
        throw new Error('HTTP ' + res.status);
      } else {
        const d = await res.json();
        const date = Date.parse(res.headers.get('Date') || '');
        // The server's clock wins when this device's clock is clearly off.
        if (!Number.isNaN(date)) { const s = date - Date.now(); skewMs = Math.abs(s) > 5000 ? s : 0; }
        apply(d, 'poll');
      }
      failures = 0;
      polls += 1;
      document.body.dataset.polls = String(polls);
    } catch (e) {
      failures += 1;
      if (failures >= 3) setConn('lost', 'Cannot reach coffeebot; showing the last values');
    } finally {
      clearTimeout(timer);
      setTimeout(poll, 1000);
    }
  }

  /** Pushed updates from /events; the browser reconnects a dropped stream by itself (with
   *  Last-Event-ID). A stream refused (503: too many viewers) or failing again and again
   *  gives way to polling. */
  function listen() {
    if (typeof EventSource !== 'function') { poll(); return; }
    const source = new EventSource('events');
    let errors = 0;
    let events = 0;
    source.onmessage = (m) => {
      errors = 0;
      let d;
      try { d = JSON.parse(m.data); } catch (e) { return; }
      events += 1;
      document.body.dataset.events = String(events);
      apply(d, 'sse');
    };
    source.onerror = () => {
      errors += 1;
      if (source.readyState === EventSource.CLOSED || errors >= 3) {
        source.close();
        setConn('waiting', 'Reconnecting…');
        poll();
      }
    };
  }

  try { doc = JSON.parse($('initial').textContent); } catch (e) { doc = null; }
  try {
    const h = JSON.parse($('history').textContent);
    if (Array.isArray(h)) history = h.filter((p) => Array.isArray(p) && p.length === 2);
  } catch (e) { history = []; }
  if (doc) { render(doc); drawSparkline(history.length ? Math.max(Date.now(), history[history.length - 1][0]) : Date.now()); }
  setInterval(renderAgo, 1000);
  listen();
})();
