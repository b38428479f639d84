/* tqueues dashboard: plain JavaScript, no build step, no third-party code.
 *
 * The page reads the REST API once per view, then follows /api/v1/events over one websocket.
 * Events are applied to in-memory state as they come, and the DOM is redrawn at most once per
 * animation frame (and lists that need a server round trip at most once a second), so a burst of
 * thousands of events per second costs a few redraws, not thousands. A dropped connection
 * resumes from the last seq it saw, so nothing is missed and nothing is applied twice.
 */
(function () {
  "use strict";

  const TOKEN_KEY = "tqueues.token";
  const STATUSES = ["pending", "started", "finished", "failed", "aborted"];
  const SERIES_WINDOW = 600, SERIES_STEP = 10;
  const MAX_ROWS = 500;

  const state = {
    token: localStorage.getItem(TOKEN_KEY) || "",
    me: null,
    lastSeq: 0,
    ws: null,
    wsDelay: 500,
    queueFilter: "",     // set for a token limited to some queues
    view: null,          // the current view object: {name, onEvent(e), redraw(), dispose()}
    dirty: false,
  };

  // ------------------------------------------------------------------ small helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const $ = (sel, root) => (root || document).querySelector(sel);
  const main = () => $("#main");
  const now = () => Date.now() / 1000;
  const json = (v) => JSON.stringify(v, null, 2);

  function ago(t) {
    if (t === null || t === undefined) return "—";
    let s = Math.max(0, now() - t);
    if (s < 1) return "just now";
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }
  function age(t) {
    if (t === null || t === undefined) return "—";
    const s = Math.max(0, now() - t);
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  }
  const when = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 23) : "");
  const bytes = (n) => (n ? `${(n / 1048576).toFixed(0)} MB` : "—");
  const badge = (s) => h("span", { class: `status s-${s}` }, s);
  const can = (scope) => !!state.me && (state.me.scopes.includes("admin") || state.me.scopes.includes(scope));

  function toast(message) {
    const el = $("#toast");
    el.textContent = message;
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, 5000);
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    if (state.token) opts.headers.Authorization = `Bearer ${state.token}`;
    if (opts.body !== undefined && typeof opts.body !== "string") {
      opts.body = JSON.stringify(opts.body);
      opts.headers["Content-Type"] = "application/json";
    }
    const res = await fetch(path, opts);
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) {
      const message = (body && body.error && body.error.message) || `HTTP ${res.status}`;
      if (res.status === 401) askToken(message);
      throw new ApiError(res.status, message);
    }
    return { body, headers: res.headers };
  }
  const get = async (path) => (await api(path)).body;

  async function act(label, path) {
    try {
      await api(path, { method: "POST", body: {} });
      toast(`${label}: done`);
    } catch (e) {
      toast(`${label}: ${e.message}`);
    }
  }

  // A function that runs at most once per `ms`, trailing calls coalesced into one.
  function throttle(fn, ms) {
    let last = 0, timer = null;
    return function () {
      const wait = last + ms - Date.now();
      if (timer) return;
      timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, Math.max(0, wait));
    };
  }

  // Counters a test (or a curious user, from the console) can read: events applied, redraws done.
  const counters = { events: 0, redraws: 0, connects: 0 };
  window.tqueuesDashboard = counters;

  function markDirty() {
    if (state.dirty) return;
    state.dirty = true;
    requestAnimationFrame(() => {
      state.dirty = false;
      counters.redraws += 1;
      if (state.view && state.view.redraw) state.view.redraw();
    });
  }

  // Keep the rows of `tbody` equal to `items`, touching only rows whose content changed, so a
  // focused button keeps its focus while other rows update.
  function syncRows(tbody, items, key, sig, build) {
    const existing = new Map();
    for (const row of tbody.rows) existing.set(row.dataset.key, row);
    items.forEach((item, index) => {
      const k = String(key(item)), s = sig(item);
      let row = existing.get(k);
      if (row && row.dataset.sig !== s) {
        const fresh = build(item);
        fresh.dataset.key = k; fresh.dataset.sig = s; fresh.dataset.seen = "1";
        fresh.classList.add("flash");
        row.replaceWith(fresh);
        row = fresh;
      } else if (!row) {
        row = build(item);
        row.dataset.key = k; row.dataset.sig = s; row.dataset.seen = "1";
      }
      existing.delete(k);
      const at = tbody.rows[index] || null;
      if (row !== at) tbody.insertBefore(row, at);
    });
    for (const row of existing.values()) row.remove();
  }

  function table(headers, tbody, caption) {
    return h("div", { class: "scroll" }, h("table", {},
      caption ? h("caption", { class: "muted", style: "text-align:left" }, caption) : null,
      h("thead", {}, h("tr", {}, headers.map(([text, cls]) => h("th", { scope: "col", class: cls || null }, text)))),
      tbody));
  }

  // ------------------------------------------------------------------ token and identity

  function askToken(why) {
    const dialog = $("#token-dialog");
    $("#token-error").hidden = !state.token;
    $("#token-error").textContent = state.token ? `The token was refused: ${why}` : "";
    $("#token-input").value = "";
    if (!dialog.open) dialog.showModal();
  }

  function setupToken() {
    const dialog = $("#token-dialog");
    $("#token-form").addEventListener("submit", (ev) => {
      const value = $("#token-input").value.trim();
      if (!value) { ev.preventDefault(); return; }
      state.token = value;
      localStorage.setItem(TOKEN_KEY, value);
      dialog.close();
      boot();
    });
    $("#token-forget").addEventListener("click", () => {
      state.token = "";
      localStorage.removeItem(TOKEN_KEY);
      $("#token-input").value = "";
      dialog.close();
      boot();
    });
    $("#token-button").addEventListener("click", () => {
      $("#token-error").hidden = true;
      $("#token-why").textContent = state.me && state.me.auth
        ? `Signed in as ${state.me.id} (${state.me.scopes.join(", ")}).`
        : "This dispatcher does not ask for a token.";
      dialog.showModal();
    });
  }

  // ------------------------------------------------------------------ the event stream

  function connect() {
    if (state.ws) { state.ws.onclose = null; state.ws.close(); }
    const live = $("#live");
    live.dataset.state = "connecting"; live.textContent = "connecting…";
    const params = new URLSearchParams({ since: String(state.lastSeq) });
    if (state.token) params.set("token", state.token);
    if (state.queueFilter) params.set("queue", state.queueFilter);
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/api/v1/events?${params}`);
    state.ws = ws;
    ws.onopen = () => { state.wsDelay = 500; counters.connects += 1; live.dataset.state = "live"; live.textContent = "live"; };
    ws.onmessage = (msg) => {
      let event;
      try { event = JSON.parse(msg.data); } catch (e) { return; }
      if (typeof event.seq === "number") {
        if (event.seq <= state.lastSeq) return;   // already applied before a reconnect
        state.lastSeq = event.seq;
      }
      counters.events += 1;
      if (state.view && state.view.onEvent) state.view.onEvent(event);
    };
    ws.onclose = () => {
      live.dataset.state = "down"; live.textContent = "reconnecting…";
      state.ws = null;
      setTimeout(() => { if (!state.ws) connect(); }, state.wsDelay);
      state.wsDelay = Math.min(state.wsDelay * 2, 10000);
    };
  }

  // ------------------------------------------------------------------ overview

  function queueRows(tbody, queues) {
    syncRows(tbody, queues, (q) => q.name,
      (q) => JSON.stringify([q.counts, q.paused, Math.floor((now() - (q.oldest_pending || now())) / 5), can("admin")]),
      (q) => h("tr", {},
        h("th", { scope: "row" }, h("a", { href: `#/jobs?queue=${encodeURIComponent(q.name)}` }, q.name)),
        ...["pending", "started", "failed", "finished"].map((s) => h("td", { class: "num" }, q.counts[s] || 0)),
        h("td", { class: "num" }, age(q.oldest_pending)),
        h("td", {}, q.paused ? badge("paused") : h("span", { class: "muted" }, "running")),
        h("td", {}, can("admin") ? h("button", {
          type: "button", class: "quiet", "aria-label": `${q.paused ? "Resume" : "Pause"} queue ${q.name}`,
          onclick: () => act(`${q.paused ? "Resume" : "Pause"} ${q.name}`,
                             `/api/v1/queues/${encodeURIComponent(q.name)}/${q.paused ? "resume" : "pause"}`),
        }, q.paused ? "Resume" : "Pause") : null)));
  }

  function workerRows(tbody, workers) {
    syncRows(tbody, workers, (w) => w.id,
      (w) => JSON.stringify([w.status, w.current, w.done, w.failed, w.rss_bytes, Math.floor(now() - w.last_seen) > 10, can("admin")]),
      (w) => h("tr", {},
        h("th", { scope: "row", class: "mono" }, w.id),
        h("td", { class: "hide-narrow" }, `${w.host || "?"}:${w.pid || "?"}`),
        h("td", {}, badge(w.status || "alive")),
        h("td", { class: "num" }, `${(w.current || []).length}/${w.concurrency || "?"}`),
        h("td", {}, (w.current || []).slice(0, 5).map((id) => h("a", { class: "mono", href: `#/jobs/${id}` }, id.slice(-8), " "))),
        h("td", { class: "num hide-narrow" }, `${w.done || 0} / ${w.failed || 0}`),
        h("td", { class: "num hide-narrow" }, bytes(w.rss_bytes)),
        h("td", { class: "hide-narrow" }, ago(w.last_seen)),
        h("td", {}, can("admin") && w.status === "alive" ? h("button", {
          type: "button", class: "quiet", "aria-label": `Drain worker ${w.id}`,
          onclick: () => { if (confirm(`Drain worker ${w.id}? It finishes or releases its jobs, then exits.`))
                             act(`Drain ${w.id}`, `/api/v1/workers/${encodeURIComponent(w.id)}/stop`); },
        }, "Drain") : null)));
  }

  const WORKER_HEADERS = [["Worker"], ["Host", "hide-narrow"], ["Status"], ["Load", "num"], ["Current jobs"],
                          ["Done / failed", "num hide-narrow"], ["RSS", "num hide-narrow"], ["Seen", "hide-narrow"], [""]];

  function drawChart(canvas, series) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    canvas.width = width * ratio; canvas.height = height * ratio;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(document.documentElement);
    const ok = style.getPropertyValue("--ok").trim(), bad = style.getPropertyValue("--bad").trim();
    const line = style.getPropertyValue("--line").trim(), muted = style.getPropertyValue("--muted").trim();
    const top = Math.max(1, ...series.map((b) => b.finished + b.failed));
    const barW = width / Math.max(series.length, 1);
    ctx.strokeStyle = line; ctx.beginPath(); ctx.moveTo(0, height - 0.5); ctx.lineTo(width, height - 0.5); ctx.stroke();
    series.forEach((b, i) => {
      const hOk = (b.finished / top) * (height - 16), hBad = (b.failed / top) * (height - 16);
      ctx.fillStyle = ok; ctx.fillRect(i * barW + 1, height - hOk, Math.max(barW - 2, 1), hOk);
      ctx.fillStyle = bad; ctx.fillRect(i * barW + 1, height - hOk - hBad, Math.max(barW - 2, 1), hBad);
    });
    ctx.fillStyle = muted; ctx.font = "11px system-ui, sans-serif";
    ctx.fillText(`${(top / SERIES_STEP).toFixed(top / SERIES_STEP < 10 ? 1 : 0)} jobs/s`, 4, 11);
  }

  function overviewView() {
    const queuesBody = h("tbody", {}), workersBody = h("tbody", {});
    const canvas = h("canvas", { class: "chart", role: "img", "aria-label": "Jobs ended per 10 seconds over the last 10 minutes" });
    const summary = h("p", { class: "muted", "aria-live": "polite" }, "");
    const data = { queues: [], workers: [], stats: null };
    main().replaceChildren(
      h("h1", {}, "Overview"),
      h("div", { class: "grid" },
        h("section", { class: "panel", "aria-labelledby": "q-title" },
          h("h2", { id: "q-title" }, "Queues"),
          table([["Queue"], ["Pending", "num"], ["Started", "num"], ["Failed", "num"], ["Finished", "num"],
                 ["Oldest pending", "num"], ["State"], [""]], queuesBody)),
        h("section", { class: "panel", "aria-labelledby": "t-title" },
          h("h2", { id: "t-title" }, "Throughput, last 10 minutes"),
          canvas,
          h("div", { class: "legend" }, h("span", { class: "ok" }, "finished"), h("span", { class: "bad" }, "failed")),
          summary)),
      h("section", { class: "panel", "aria-labelledby": "w-title", style: "margin-top:18px" },
        h("h2", { id: "w-title" }, "Workers"),
        table(WORKER_HEADERS, workersBody)));

    const loadQueues = throttle(async () => { try { data.queues = (await get("/api/v1/queues")).queues || []; markDirty(); } catch (e) {} }, 1000);
    const loadWorkers = throttle(async () => { try { data.workers = (await get("/api/v1/workers")).workers; markDirty(); } catch (e) {} }, 1000);
    const loadStats = throttle(async () => {
      try { data.stats = await get(`/api/v1/stats?window=${SERIES_WINDOW}&step=${SERIES_STEP}`); markDirty(); } catch (e) {}
    }, 2000);
    loadQueues(); loadWorkers(); loadStats();
    const tick = setInterval(() => { loadQueues(); loadWorkers(); loadStats(); }, 5000);
    return {
      name: "overview",
      onEvent(e) {
        if (e.kind && e.kind.startsWith("job.") && e.kind !== "job.log") loadQueues();
        if (e.kind === "queue.updated") loadQueues();
        if (e.kind === "worker.updated") loadWorkers();
        if (e.kind === "job.finished" || e.kind === "job.failed") loadStats();
      },
      redraw() {
        queueRows(queuesBody, data.queues);
        if (!data.queues.length) queuesBody.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No queue yet.")));
        workerRows(workersBody, data.workers);
        if (!data.workers.length) workersBody.replaceChildren(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No worker has registered.")));
        if (data.stats && data.stats.series) {
          drawChart(canvas, data.stats.series);
          const last = data.stats.series.slice(-6);
          const fin = last.reduce((a, b) => a + b.finished, 0), failed = last.reduce((a, b) => a + b.failed, 0);
          const rate = fin + failed ? ((100 * failed) / (fin + failed)).toFixed(1) : "0.0";
          summary.textContent = `Last minute: ${(fin / 60).toFixed(1)} finished/s, ${failed} failed (${rate}% failure rate). ` +
            `${data.stats.counts.pending} pending, ${data.stats.counts.started} running.`;
        }
      },
      dispose() { clearInterval(tick); },
    };
  }

  function workersView() {
    const body = h("tbody", {});
    let workers = [];
    main().replaceChildren(h("h1", {}, "Workers"), h("section", { class: "panel" }, table(WORKER_HEADERS, body)));
    const load = throttle(async () => { try { workers = (await get("/api/v1/workers")).workers; markDirty(); } catch (e) {} }, 1000);
    load();
    const tick = setInterval(load, 5000);
    return {
      name: "workers",
      onEvent(e) { if (e.kind === "worker.updated") load(); },
      redraw() {
        workerRows(body, workers);
        if (!workers.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No worker has registered.")));
      },
      dispose() { clearInterval(tick); },
    };
  }

  // ------------------------------------------------------------------ jobs list

  function matches(job, f) {
    if (f.queue && job.queue !== f.queue) return false;
    if (f.status && job.status !== f.status) return false;
    if (f.method && job.method !== f.method) return false;
    if (f.text) {
      const t = f.text.toLowerCase();
      const hay = [job.id, job.method, job.key || "", JSON.stringify(job.args), job.error ? JSON.stringify(job.error) : ""];
      if (!hay.some((s) => s.toLowerCase().includes(t))) return false;
    }
    return true;
  }

  function jobsView(params) {
    const f = { queue: params.get("queue") || "", status: params.get("status") || "",
                method: params.get("method") || "", text: params.get("text") || "" };
    const jobs = new Map();      // id -> job, shown newest first
    let order = [], next = null, loading = false;
    const body = h("tbody", {});
    const more = h("button", { type: "button", class: "quiet", hidden: true, onclick: () => load(true) }, "Load older jobs");
    const note = h("p", { class: "muted", "aria-live": "polite" });
    const queueSelect = h("select", { id: "f-queue", name: "queue" }, h("option", { value: "" }, "all queues"));
    const form = h("form", { class: "filters", role: "search", onsubmit: (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      for (const el of form.elements) if (el.name && el.value) q.set(el.name, el.value);
      location.hash = `#/jobs${q.toString() ? "?" + q : ""}`;
    } },
      h("div", {}, h("label", { for: "f-queue" }, "Queue"), queueSelect),
      h("div", {}, h("label", { for: "f-status" }, "Status"),
        h("select", { id: "f-status", name: "status" }, h("option", { value: "" }, "any status"),
          STATUSES.map((s) => h("option", { value: s, selected: s === f.status }, s)))),
      h("div", {}, h("label", { for: "f-method" }, "Method"),
        h("input", { id: "f-method", name: "method", value: f.method, placeholder: "module:function" })),
      h("div", {}, h("label", { for: "f-text" }, "Text"),
        h("input", { id: "f-text", name: "text", type: "search", value: f.text, placeholder: "id, method, key, args, error" })),
      h("button", { type: "submit" }, "Filter"));
    main().replaceChildren(h("h1", {}, "Jobs"), form,
      h("section", { class: "panel" },
        table([["Job"], ["Queue"], ["Method"], ["Status"], ["Attempts", "num"], ["Created", "hide-narrow"], ["Updated"]], body),
        note, more));

    get("/api/v1/queues").then((answer) => {
      const names = (answer.queues || []).map((q) => q.name);
      if (f.queue && !names.includes(f.queue)) names.push(f.queue);
      for (const n of names) queueSelect.append(h("option", { value: n, selected: n === f.queue }, n));
    }).catch(() => {});

    async function load(older) {
      if (loading) return;
      loading = true;
      const q = new URLSearchParams({ limit: "100" });
      for (const k of ["queue", "status", "method", "text"]) if (f[k]) q.set(k, f[k]);
      if (older && next) q.set("before", next);
      try {
        const answer = await get(`/api/v1/jobs?${q}`);
        for (const job of answer.jobs) {
          if (!jobs.has(job.id)) order.push(job.id);
          jobs.set(job.id, job);
        }
        next = answer.jobs.length === 100 ? answer.next : null;
        note.textContent = jobs.size ? "" : "No job matches.";
      } catch (e) {
        note.textContent = e.message;
      } finally {
        loading = false;
        markDirty();
      }
    }
    load(false);
    const tick = setInterval(markDirty, 5000);   // keeps the "… ago" columns true

    return {
      name: "jobs",
      dispose() { clearInterval(tick); },
      onEvent(e) {
        const doc = e.new_val;
        if (!e.kind || !e.kind.startsWith("job.") || e.kind === "job.log" || !doc || !doc.id) return;
        if (jobs.has(doc.id)) { jobs.set(doc.id, doc); markDirty(); }
        else if (e.kind === "job.created" && matches(doc, f)) {
          jobs.set(doc.id, doc); order.unshift(doc.id);
          if (order.length > MAX_ROWS) for (const id of order.splice(MAX_ROWS)) jobs.delete(id);
          note.textContent = "";
          markDirty();
        }
      },
      redraw() {
        syncRows(body, order.map((id) => jobs.get(id)), (j) => j.id,
          (j) => `${j.status}|${j.attempts}|${j.updated_at}|${Math.floor((now() - j.updated_at) / 10)}`,
          (j) => h("tr", {},
            h("td", { class: "mono" }, h("a", { href: `#/jobs/${j.id}`, title: j.id }, j.id.slice(-12))),
            h("td", {}, j.queue),
            h("td", { class: "mono" }, j.method),
            h("td", {}, badge(j.status)),
            h("td", { class: "num" }, `${j.attempts}/${j.max_attempts}`),
            h("td", { class: "hide-narrow", title: when(j.created_at) }, ago(j.created_at)),
            h("td", { title: when(j.updated_at) }, ago(j.updated_at))));
        more.hidden = !next;
      },
    };
  }

  // ------------------------------------------------------------------ one job

  function jobView(id) {
    let job = null, executions = [];
    const logs = new Map();          // attempt -> [line]
    const seenLines = new Set();
    const head = h("div", {}), facts = h("div", {}), execBox = h("div", {});
    main().replaceChildren(h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")), head, facts,
      h("section", { "aria-labelledby": "x-title" }, h("h2", { id: "x-title" }, "Executions"), execBox));

    function addLines(lines) {
      for (const line of lines || []) {
        if (seenLines.has(line.id)) continue;
        seenLines.add(line.id);
        if (!logs.has(line.attempt)) logs.set(line.attempt, []);
        logs.get(line.attempt).push(line);
      }
    }

    async function load() {
      try {
        job = await get(`/api/v1/jobs/${encodeURIComponent(id)}`);
        executions = await get(`/api/v1/jobs/${encodeURIComponent(id)}/executions?logs=true`);
        for (const x of executions) addLines(x.logs);
      } catch (e) {
        head.replaceChildren(h("h1", {}, "Job"), h("p", { class: "error" }, e.message));
        job = null;
        return;
      }
      markDirty();
    }
    const reloadExecutions = throttle(async () => {
      try {
        executions = await get(`/api/v1/jobs/${encodeURIComponent(id)}/executions?logs=true`);
        for (const x of executions) addLines(x.logs);
        markDirty();
      } catch (e) {}
    }, 500);
    load();

    function errorBlock(err) {
      if (!err) return null;
      return h("div", {}, h("p", { class: "error" }, `${err.type || "Error"}: ${err.message || ""}`),
        err.traceback ? h("pre", { class: "traceback" }, err.traceback) : null);
    }

    function progress(data) {
      const p = data && typeof data.progress === "number" ? data.progress : null;
      if (p === null) return null;
      const pct = Math.max(0, Math.min(100, p <= 1 ? p * 100 : p));
      return h("div", { class: "progress", role: "progressbar", "aria-valuenow": pct.toFixed(0), "aria-valuemin": "0",
                        "aria-valuemax": "100", "aria-label": "Progress" }, h("span", { style: `width:${pct}%` }));
    }

    return {
      name: "job",
      onEvent(e) {
        if (e.job_id !== id) return;
        if (e.kind === "job.log") { addLines(e.new_val && e.new_val.lines); markDirty(); return; }
        if (e.new_val && e.new_val.id === id) { job = e.new_val; markDirty(); }
        if (e.kind !== "job.updated") reloadExecutions();
      },
      redraw() {
        if (!job) return;
        const active = job.status === "pending" || job.status === "started";
        const ended = job.status === "failed" || job.status === "aborted" || job.status === "finished";
        head.replaceChildren(
          h("h1", {}, h("span", { class: "mono" }, job.method), " ", badge(job.status)),
          h("div", { class: "actions" },
            can("admin") && active ? h("button", { type: "button", class: "danger", onclick: () => act("Abort", `/api/v1/jobs/${id}/abort`) }, "Abort") : null,
            can("admin") && ended ? h("button", { type: "button", onclick: () => act("Retry", `/api/v1/jobs/${id}/retry`) }, "Retry") : null));
        facts.replaceChildren(h("div", { class: "grid" },
          h("section", { class: "panel", "aria-label": "Job" }, h("dl", { class: "facts" },
            ...[["Id", job.id], ["Queue", job.queue], ["Attempts", `${job.attempts} of ${job.max_attempts}`],
                ["Priority", job.priority], ["Timeout", job.timeout ? `${job.timeout} s` : "none"], ["Key", job.key || "—"],
                ["Worker", job.worker || "—"], ["Created", when(job.created_at)], ["Run at", when(job.run_at)],
                ["Started", when(job.started_at) || "—"], ["Ended", when(job.finished_at) || "—"]]
              .flatMap(([k, v]) => [h("dt", {}, k), h("dd", { class: k === "Id" ? "mono" : null }, String(v))]))),
          h("section", { class: "panel", "aria-label": "Arguments and result" },
            h("h2", {}, "Arguments"), h("pre", { class: "args" }, json(job.args)),
            Object.keys(job.kwargs || {}).length ? h("pre", { class: "kwargs" }, json(job.kwargs)) : null,
            h("h2", {}, "Data"), progress(job.data), h("pre", { class: "data" }, json(job.data || {})),
            job.status === "finished" ? [h("h2", {}, "Result"), h("pre", { class: "result" }, json(job.result))] : null,
            job.error ? [h("h2", {}, "Error"), errorBlock(job.error)] : null)));
        const blocks = executions.slice().reverse().map((x) => {
          const lines = logs.get(x.attempt) || [];
          return h("article", { class: "execution", "data-attempt": x.attempt },
            h("h3", {}, `Attempt ${x.attempt} `, badge(x.status)),
            h("p", { class: "muted" }, `worker ${x.worker || "?"} · started ${when(x.started_at)}`,
              x.finished_at ? ` · ended ${when(x.finished_at)} (${(x.finished_at - x.started_at).toFixed(3)} s)` : ""),
            errorBlock(x.error),
            h("pre", { class: "logs", "aria-label": `Log of attempt ${x.attempt}` },
              lines.length ? lines.map((l) => h("span", { class: `logline ${l.stream}` }, l.line + "\n"))
                           : h("span", { class: "muted" }, "no output")));
        });
        execBox.replaceChildren(...(blocks.length ? blocks : [h("p", { class: "muted" }, "Not run yet.")]));
      },
    };
  }

  // ------------------------------------------------------------------ routing and start

  function route() {
    if (state.view && state.view.dispose) state.view.dispose();
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, query] = hash.split("?");
    const params = new URLSearchParams(query || "");
    let nav = "overview";
    const m = path.match(/^\/jobs\/([^/]+)$/);
    if (m) { state.view = jobView(decodeURIComponent(m[1])); nav = "jobs"; }
    else if (path === "/jobs") { state.view = jobsView(params); nav = "jobs"; }
    else if (path === "/workers") { state.view = workersView(); nav = "workers"; }
    else state.view = overviewView();
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.nav === nav) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    document.title = `tqueues · ${nav}`;
    main().focus({ preventScroll: true });
  }

  async function boot() {
    try {
      state.me = await get("/api/v1/me");
      // A token limited to some queues may only follow those queues' events.
      state.queueFilter = state.me.queues.includes("*") ? ""
        : ((await get("/api/v1/queues")).queues || []).map((q) => q.name).join(",");
      const first = await api(`/api/v1/events?limit=1${state.queueFilter ? "&queue=" + encodeURIComponent(state.queueFilter) : ""}`);
      state.lastSeq = Math.max(state.lastSeq, parseInt(first.headers.get("X-Last-Seq") || "0", 10) || 0);
    } catch (e) {
      if (e.status !== 401) {
        main().replaceChildren(h("p", { class: "error" }, `The dispatcher cannot be read: ${e.message}`));
        setTimeout(boot, 3000);
      }
      return;
    }
    route();
    connect();
  }

  window.addEventListener("hashchange", route);
  // The skip link moves focus to the content without touching the hash (which is the route).
  $(".skip").addEventListener("click", (ev) => { ev.preventDefault(); main().focus(); });
  setupToken();
  boot();
})();
