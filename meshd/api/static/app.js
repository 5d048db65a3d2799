// meshd status page: state from the API, kept live by the events websocket.
//
// On every (re)connect: open the websocket first, buffer its events, fetch the
// snapshot (status, jobs, devices), then replay the buffer over it. Nothing is
// polled; a lost socket reconnects with capped, jittered exponential back-off and
// the snapshot is fetched again. Authentication is the daemon's HttpOnly session
// cookie (set by the link `meshd ui` prints); this script never sees a token.
// Every value from the daemon goes into the page as text (textContent), never HTML.
"use strict";

const API = "/api/v1";
const HISTORY_LIMIT = 200; // jobs fetched on connect
const HISTORY_SHOWN = 50; // terminal jobs listed
const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 30000;
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const STATUS_RANK = { queued: 0, running: 1, completed: 2, failed: 2, cancelled: 2 };

const state = {
  status: null, // /api/v1/status: node, lanes, peers
  lanes: {}, // lane name -> latest lane object
  jobs: new Map(), // id -> job object
  peers: new Map(), // fingerprint -> peer object
  devices: null, // null: no fleet endpoint (section hidden)
  pending: new Set(), // job ids with a button request in flight
};

let socket = null;
let attempt = 0;
let reconnectTimer = null;
let renderQueued = false;
let devicesTimer = null;

// -- helpers ----------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function basename(path) {
  if (!path) return "";
  const parts = String(path).split("/").filter(Boolean);
  return parts.length ? parts[parts.length - 1] : String(path);
}

function ago(epochSeconds) {
  if (typeof epochSeconds !== "number") return "";
  const seconds = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h ago`;
  return new Date(epochSeconds * 1000).toLocaleString();
}

function clock(epochSeconds) {
  if (typeof epochSeconds !== "number") return "";
  return new Date(epochSeconds * 1000).toLocaleTimeString();
}

function duration(job) {
  if (typeof job.started_at !== "number") return "";
  const end = typeof job.finished_at === "number" ? job.finished_at : Date.now() / 1000;
  const seconds = Math.max(0, end - job.started_at);
  if (seconds < 90) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

function peerName(fingerprint) {
  const peer = state.peers.get(fingerprint);
  if (peer && peer.name) return peer.name;
  return fingerprint ? `${String(fingerprint).slice(0, 16)}…` : "";
}

function toast(message) {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

function setConn(kind, text) {
  const badge = document.getElementById("conn");
  badge.dataset.state = kind;
  badge.textContent = text;
}

// -- state --------------------------------------------------------------------------------

// A job's "age" in its life: events and the snapshot can arrive out of order around a
// reconnect, and an older copy must not overwrite a newer one. A re-route (receiver
// lost) sends a compile back to queued and counts up args.reroutes, so it still wins.
function jobRank(job) {
  const reroutes = Number((job.args || {}).reroutes || 0);
  const progress = typeof job.progress === "number" ? job.progress : -1;
  return [reroutes, STATUS_RANK[job.status] ?? 0, progress];
}

function newer(a, b) {
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) return a[i] > b[i];
  }
  return true; // equal: the later message wins (same state, fresher fields)
}

function mergeJob(job) {
  if (!job || typeof job.id !== "string") return;
  const known = state.jobs.get(job.id);
  if (!known || newer(jobRank(job), jobRank(known))) state.jobs.set(job.id, job);
}

function applyEvent(event) {
  switch (event.type) {
    case "job_queued":
    case "job_started":
    case "job_output":
    case "job_completed":
    case "job_failed":
    case "job_cancelled":
      mergeJob(event.job);
      break;
    case "job_progress":
      if (event.job) mergeJob({ ...event.job, progress: event.progress });
      break;
    case "lane_status":
      state.lanes[event.lane] = event;
      break;
    case "peer_changed":
      if (event.peer) state.peers.set(event.fingerprint, event.peer);
      else state.peers.delete(event.fingerprint);
      break;
    default:
      if (/^(device|fleet)/.test(String(event.type))) scheduleDevices();
      return;
  }
  scheduleRender();
}

// -- talking to the daemon --------------------------------------------------------------

class LoginNeeded extends Error {}

async function api(path, options) {
  const response = await fetch(API + path, {
    credentials: "same-origin",
    cache: "no-store",
    ...options,
    headers: { Accept: "application/json", ...((options && options.headers) || {}) },
  });
  if (response.status === 401) throw new LoginNeeded("not logged in");
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

async function fetchDevices() {
  try {
    const body = await api("/devices");
    state.devices = Array.isArray(body) ? body : (body && (body.devices || body.fleet)) || [];
  } catch (error) {
    if (error instanceof LoginNeeded) throw error;
    state.devices = null; // 404 until the fleet lands: the section stays hidden
  }
}

function scheduleDevices() {
  clearTimeout(devicesTimer);
  devicesTimer = setTimeout(() => { fetchDevices().then(scheduleRender, () => {}); }, 250);
}

async function fetchSnapshot() {
  const [status, jobs] = await Promise.all([api("/status"), api(`/jobs?limit=${HISTORY_LIMIT}`)]);
  await fetchDevices();
  state.status = status;
  state.lanes = { ...(status.lanes || {}) };
  state.peers = new Map((status.peers || []).map((peer) => [peer.fingerprint, peer]));
  state.jobs = new Map();
  for (const job of jobs.jobs || []) state.jobs.set(job.id, job);
}

function connect() {
  clearTimeout(reconnectTimer);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}${API}/events`);
  socket = ws;
  let opened = false;
  let buffer = [];
  ws.onopen = async () => {
    opened = true;
    try {
      await fetchSnapshot();
    } catch (error) {
      if (error instanceof LoginNeeded) return showLogin(ws);
      ws.close();
      return;
    }
    if (socket !== ws) return;
    for (const event of buffer) applyEvent(event);
    buffer = null;
    attempt = 0;
    document.getElementById("login").hidden = true;
    setConn("live", "live");
    scheduleRender();
  };
  ws.onmessage = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    if (buffer !== null) buffer.push(event);
    else applyEvent(event);
  };
  ws.onclose = async () => {
    if (socket !== ws) return;
    socket = null;
    if (!opened) {
      // The handshake failed: is the daemon down, or are we not logged in?
      try {
        await api("/status");
      } catch (error) {
        if (error instanceof LoginNeeded) return showLogin(null);
      }
    }
    scheduleReconnect();
  };
}

function scheduleReconnect() {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** attempt);
  const delay = Math.round(base * (0.8 + Math.random() * 0.4));
  attempt += 1;
  setConn("reconnecting", `reconnecting in ${Math.ceil(delay / 1000)} s…`);
  reconnectTimer = setTimeout(connect, delay);
}

function showLogin(ws) {
  if (ws) { socket = null; ws.close(); }
  setConn("login", "not logged in");
  document.getElementById("login").hidden = false;
}

async function cancelJob(job) {
  state.pending.add(job.id);
  scheduleRender();
  try {
    mergeJob(await api(`/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" }));
  } catch (error) {
    toast(`cancel ${job.id} failed: ${error.message}`);
  } finally {
    state.pending.delete(job.id);
    scheduleRender();
  }
}

// What "retry" submits: the same job again (type, configuration, device, new name, the
// local flag), or the whole install chain when the job was half of one, so a retried
// upload never flashes an old build instead of the one that failed to compile.
function retryRequest(job) {
  const args = job.args || {};
  if (args.offloader) return null; // a receiver's copy of someone else's compile
  const dependent = [...state.jobs.values()].find(
    (other) => other.depends_on === job.id && other.type === "upload");
  const body = { type: job.type, configuration: job.configuration };
  if (job.type === "upload" && job.depends_on) {
    body.type = "install";
    body.device = job.device;
  } else if (job.type === "compile" && dependent) {
    body.type = "install";
    body.device = dependent.device;
  } else if (job.device && (job.type === "upload" || job.type === "compile")) {
    body.device = job.device;
  }
  if (job.type === "rename") body.new_name = args.new_name;
  // force_local set by the re-route fallback is not the user's choice; don't keep it.
  if (args.force_local && !(Number(args.reroutes || 0) >= 3) && body.type !== "upload") {
    body.local = true;
  }
  return body;
}

async function retryJob(job) {
  const body = retryRequest(job);
  if (!body) return;
  state.pending.add(job.id);
  scheduleRender();
  try {
    const created = await api("/jobs", {
      method: "POST",
      body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" },
    });
    for (const item of created.jobs || []) mergeJob(item);
  } catch (error) {
    toast(`retry ${job.id} failed: ${error.message}`);
  } finally {
    state.pending.delete(job.id);
    scheduleRender();
  }
}

// -- rendering --------------------------------------------------------------------------

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}

function jobTitle(job) {
  const what = job.type === "reset_build_env" ? "reset build env" : job.type;
  const target = job.type === "reset_build_env" ? job.configuration : basename(job.configuration);
  const device = job.device && job.type !== "compile" ? ` → ${job.device}` : "";
  const rename = job.type === "rename" && job.args ? ` → ${job.args.new_name}` : "";
  return `${what} ${target}${device}${rename}`;
}

function whereLine(job) {
  if (!job.runner && !job.reason) return null;
  const remote = job.runner && job.runner !== "local";
  const where = remote ? `on ${peerName(job.runner)}` : job.runner ? "on this node" : "";
  const args = job.args || {};
  const from = args.offloader ? ` for ${args.offloader_name || String(args.offloader).slice(0, 16)}` : "";
  const reroutes = args.reroutes ? ` · re-routed ${args.reroutes}×` : "";
  return el("div", { class: "where", "data-role": "where" },
    `${where}${from}${job.reason ? `: ${job.reason}` : ""}${reroutes}`);
}

function progressBar(job) {
  const known = typeof job.progress === "number";
  const percent = known ? Math.round(job.progress * 100) : null;
  const bar = el("div", {
    class: known ? "bar" : "bar indeterminate",
    role: "progressbar",
    "aria-valuemin": 0,
    "aria-valuemax": 100,
    "aria-valuenow": known ? percent : null,
    "aria-label": `${jobTitle(job)} progress`,
  }, el("span"));
  if (known) bar.firstChild.style.width = `${percent}%`;
  return bar;
}

function actionButton(label, job, handler, danger) {
  return el("button", {
    type: "button",
    class: danger ? "danger" : null,
    "data-action": label,
    "data-job": job.id,
    disabled: state.pending.has(job.id),
    onclick: () => handler(job),
  }, label);
}

function jobItem(job, { showProgress }) {
  const active = !TERMINAL.has(job.status);
  const actions = el("span", { class: "actions" });
  if (active) actions.append(actionButton("cancel", job, cancelJob, true));
  else if (job.status !== "completed" && retryRequest(job)) {
    const body = retryRequest(job);
    actions.append(actionButton(body.type === "install" && job.type !== "install" ? "retry install" : "retry",
      job, retryJob, false));
  }
  actions.append(el("a", {
    class: "button", href: `${API}/jobs/${encodeURIComponent(job.id)}/log`, target: "_blank",
    rel: "noopener", "aria-label": `log of ${job.id}`,
  }, "log"));
  const percent = typeof job.progress === "number" ? ` ${Math.round(job.progress * 100)}%` : "";
  const held = job.status === "queued" && job.depends_on && state.jobs.has(job.depends_on) &&
    !TERMINAL.has(state.jobs.get(job.depends_on).status);
  const times = TERMINAL.has(job.status)
    ? `${job.status} ${ago(job.finished_at)}${job.started_at ? ` · took ${duration(job)}` : ""}`
    : job.status === "running" ? `running for ${duration(job)}` : `queued ${ago(job.created_at)}`;
  const item = el("li", { class: "job", "data-job": job.id, "data-status": job.status },
    el("div", { class: "job-line" },
      el("span", { class: `badge ${job.status}`, "data-role": "status" }, `${job.status}${active ? percent : ""}`),
      el("span", { class: "job-title" }, jobTitle(job)),
      el("span", { class: "id" }, job.id),
      actions),
    el("div", { class: "where small muted" }, held ? `waits for compile ${job.depends_on} · ${times}` : times),
    whereLine(job),
    showProgress ? progressBar(job) : null);
  if (job.error && job.status !== "completed") {
    const [first, ...rest] = String(job.error).split("\n");
    if (rest.length) {
      item.append(el("details", { class: "error-details" },
        el("summary", { "data-role": "error" }, first), el("pre", {}, rest.join("\n"))));
    } else {
      item.append(el("p", { class: "error", "data-role": "error" }, first));
    }
  }
  return item;
}

function renderNode() {
  const status = state.status;
  if (!status) return;
  const node = status.node || {};
  document.getElementById("node-name").textContent = node.name || "";
  document.title = `meshd · ${node.name || ""}`;
  document.getElementById("footer-version").textContent = `meshd ${node.version || ""}`;
  const facts = [
    ["name", node.name],
    ["meshd", node.version],
    ["esphome", node.esphome_version || (node.warnings && node.warnings.length ? "not available" : "checking…")],
    ["esphome command", node.esphome],
    ["fingerprint", node.short || (node.fingerprint ? String(node.fingerprint).slice(0, 16) : null)],
    ["roles", [node.receiver ? "builds for trusted peers" : null, node.offload ? "offloads compiles" : null]
      .filter(Boolean).join(", ") || "local only"],
    ["pairing", node.pairing_open ? "window open" : null],
  ];
  const list = document.getElementById("node-facts");
  list.replaceChildren(...facts.filter(([, value]) => value).flatMap(([key, value]) =>
    [el("dt", {}, key), el("dd", { "data-fact": key }, value)]));
  const warnings = document.getElementById("warnings");
  warnings.replaceChildren(...(node.warnings || []).map((text) =>
    el("div", { class: "warning", role: "alert" }, el("strong", {}, "warning: "), text)));
}

function renderLanes(jobs) {
  for (const name of ["compile", "upload"]) {
    const lane = state.lanes[name] || {};
    const running = jobs.filter((job) => job.lane === name && job.status === "running");
    const queued = jobs.filter((job) => job.lane === name && job.status === "queued").length;
    const busy = running.length > 0 || lane.idle === false;
    const box = document.getElementById(`lane-${name}`);
    const since = lane.idle && lane.idle_since ? ` since ${clock(lane.idle_since)}` : "";
    box.replaceChildren(
      el("div", { class: "lane-head" },
        el("h2", {}, `${name} lane`),
        el("span", { class: `state ${busy ? "busy" : "idle"}`, "data-role": "lane-state" },
          busy ? "busy" : `idle${since}`)),
      el("div", { class: "small muted" },
        `${running.length} running · ${queued} queued · ${lane.slots || "?"} local slot${lane.slots === 1 ? "" : "s"}`),
      running.length
        ? el("ol", { class: "jobs" }, running.map((job) => jobItem(job, { showProgress: true })))
        : el("p", { class: "empty" }, "nothing running"));
  }
}

function renderQueue(jobs) {
  const queued = jobs.filter((job) => job.status === "queued");
  document.getElementById("queue-count").textContent = queued.length ? `(${queued.length})` : "";
  const list = document.getElementById("queue-list");
  list.replaceChildren(...(queued.length
    ? queued.map((job) => jobItem(job, { showProgress: false }))
    : [el("li", { class: "empty" }, "the queue is empty")]));
}

function renderHistory(jobs) {
  const done = jobs.filter((job) => TERMINAL.has(job.status))
    .sort((a, b) => (b.finished_at || 0) - (a.finished_at || 0)).slice(0, HISTORY_SHOWN);
  const list = document.getElementById("history-list");
  list.replaceChildren(...(done.length
    ? done.map((job) => jobItem(job, { showProgress: false }))
    : [el("li", { class: "empty" }, "no finished jobs yet")]));
}

function renderPeers() {
  const peers = [...state.peers.values()].sort((a, b) => String(a.name).localeCompare(String(b.name)));
  document.getElementById("peers-count").textContent = peers.length ? `(${peers.length})` : "";
  const list = document.getElementById("peers-list");
  if (!peers.length) {
    list.replaceChildren(el("li", { class: "empty" }, "no peers seen (pair one with meshd pair open / join)"));
    return;
  }
  list.replaceChildren(...peers.map((peer) => {
    let lane;
    if (!peer.accepts_builds) lane = "takes no builds";
    else if (!peer.connected) lane = "—";
    else if (peer.idle) lane = `idle${peer.idle_since ? ` since ${clock(peer.idle_since)} (${ago(peer.idle_since)})` : ""}`;
    else lane = `busy: ${peer.running || 0} running, ${peer.queued || 0} queued`;
    const link = peer.connected ? "connected" : `not connected${peer.last_error ? `: ${peer.last_error}` : ""}`;
    return el("li", { class: "peer", "data-peer": peer.fingerprint },
      el("div", { class: "job-line" },
        el("span", { class: "job-title" }, peer.name || "(unnamed)"),
        el("span", { class: `badge ${peer.trusted ? "completed" : "cancelled"}` }, peer.trusted ? "trusted" : "not trusted"),
        el("span", { class: `badge ${peer.connected ? "running" : "cancelled"}` }, peer.connected ? "connected" : "offline"),
        el("span", { class: "id" }, String(peer.fingerprint || "").slice(0, 16))),
      el("div", { class: "where" }, `esphome ${peer.esphome_version || "?"} · ${lane}`),
      el("div", { class: "where" }, `${link}${(peer.addresses || []).length ? ` · ${peer.addresses[0]}` : ""}` +
        (peer.last_seen ? ` · seen ${ago(peer.last_seen)}` : "")));
  }));
}

function renderFleet() {
  const section = document.getElementById("fleet");
  if (state.devices === null) { section.hidden = true; return; }
  section.hidden = false;
  const devices = state.devices;
  document.getElementById("fleet-count").textContent = `(${devices.length})`;
  const body = document.getElementById("fleet-body");
  if (!devices.length) { body.replaceChildren(el("p", { class: "empty" }, "no devices")); return; }
  const columns = [];
  for (const device of devices) {
    for (const key of Object.keys(device || {})) if (!columns.includes(key)) columns.push(key);
  }
  const cell = (value) => (value === null || value === undefined ? "—"
    : typeof value === "object" ? JSON.stringify(value) : String(value));
  body.replaceChildren(el("table", {},
    el("thead", {}, el("tr", {}, columns.map((key) => el("th", {}, key)))),
    el("tbody", {}, devices.map((device) =>
      el("tr", {}, columns.map((key) => el("td", {}, cell((device || {})[key]))))))));
}

function render() {
  const jobs = [...state.jobs.values()].sort((a, b) => (a.created_at || 0) - (b.created_at || 0));
  renderNode();
  renderLanes(jobs);
  renderQueue(jobs);
  renderHistory(jobs);
  renderPeers();
  renderFleet();
}

// Relative times ("3 min ago") age by themselves; this only redraws, it asks nothing.
setInterval(scheduleRender, 15000);
document.addEventListener("DOMContentLoaded", connect);
