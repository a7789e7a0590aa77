// The inspector page: connect with a key, join one channel, watch what arrives, send
// broadcasts and presence, and chart the server's figures (GET /api/inspector/stats).
//
// Deep links: /inspector?apikey=KEY&topic=room1&private=false[&token=JWT][&presence=false]
//             [&schema=public&table=todos&event=INSERT&filter=id=eq.1]
// connect and join on load; without apikey the page asks for a key.

import { LineChart, formatNumber } from "/inspector/charts.js";
import { PhoenixSocket, TimeoutError, applyPresence } from "/inspector/phoenix.js";

const STATS_MS = 1000;
const LOG_LIMIT = 500;
const TOPIC_PREFIX = "realtime:";

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
const forms = {
  connect: document.getElementById("connect-form"),
  join: document.getElementById("join-form"),
  send: document.getElementById("send-form"),
  presence: document.getElementById("presence-form"),
};

let socket = null;
let channel = null; // {topic, subTopic, joinRef, private, token, joined}
let members = {};

// --- display helpers ----------------------------------------------------------------------

function show(testid, text) {
  const el = $(testid);
  el.textContent = text;
  el.hidden = text === "" || text === null;
}

function setSocketStatus(state, text = state) {
  const el = $("socket-status");
  el.dataset.state = state;
  el.textContent = text;
}

function setJoinStatus(state, text = state) {
  const el = $("join-status");
  el.dataset.state = state;
  el.textContent = text;
  show("join-error", "");
  $("join-why").hidden = true;
  show("join-explain", "");
}

function compact(value) {
  if (value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** Adds one entry on top of the log: time, kind, event, payload. */
function log(kind, event, payload) {
  const li = document.createElement("li");
  li.dataset.testid = "log-entry";
  li.dataset.kind = kind;
  const cells = [
    ["time", new Date().toLocaleTimeString([], { hour12: false }) + "." +
      String(new Date().getMilliseconds()).padStart(3, "0")],
    ["kind", kind],
    ["event", event || ""],
    ["payload", compact(payload)],
  ];
  for (const [name, text] of cells) {
    const span = document.createElement(name === "payload" ? "code" : "span");
    span.className = name;
    span.dataset.testid = `log-${name}`;
    span.textContent = text;
    li.append(span);
  }
  const list = $("log");
  list.prepend(li);
  while (list.children.length > LOG_LIMIT) list.lastElementChild.remove();
}

function renderMembers() {
  const view = {};
  for (const [key, { metas }] of Object.entries(members)) {
    view[key] = metas.map(({ phx_ref, phx_ref_prev, ...rest }) => rest);
  }
  $("presence-state").textContent = JSON.stringify(view, null, 2);
}

function parseJson(text, what) {
  try {
    return [JSON.parse(text), null];
  } catch (err) {
    return [null, `${what} is not valid JSON: ${err.message}`];
  }
}

// --- socket ---------------------------------------------------------------------------------

function credentials() {
  const data = new FormData(forms.connect);
  return { apikey: String(data.get("apikey")).trim(), token: String(data.get("token")).trim() };
}

function askForKey() {
  $("key-prompt").hidden = false;
  $("apikey").focus();
}

async function connect() {
  const { apikey } = credentials();
  if (!apikey) {
    askForKey();
    throw new Error("an API key is needed");
  }
  if (socket !== null && socket.isOpen) return;
  if (socket !== null) socket.close();
  $("key-prompt").hidden = true;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/realtime/v1/websocket?apikey=${encodeURIComponent(apikey)}&vsn=1.0.0`;
  const sock = new PhoenixSocket(url, { onMessage: received, onClose: (ev, opened) => closed(sock, ev, opened) });
  socket = sock;
  setSocketStatus("connecting", "connecting…");
  try {
    await sock.connect();
  } catch (err) {
    // a browser is never told why an upgrade failed: ask the stats endpoint about the key
    const answer = await fetchStats(apikey).catch(() => null);
    const why = answer !== null && answer.status === 401 ? "the server did not accept this API key" : err.message;
    setSocketStatus("error", `not connected: ${why}`);
    throw new Error(why);
  }
  setSocketStatus("connected");
  log("socket", "open", url.replace(/apikey=[^&]*/, "apikey=…"));
  startStats();
}

function closed(sock, ev, opened) {
  if (socket !== sock) return;
  if (opened) {
    setSocketStatus("disconnected", `disconnected (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ""})`);
    log("socket", "close", { code: ev.code, reason: ev.reason });
  }
  if (channel !== null && channel.joined) setJoinStatus("closed", "closed: the socket closed");
  channel = null;
}

function received(msg) {
  const { topic, event, payload } = msg;
  const current = channel !== null && topic === channel.topic;
  switch (event) {
    case "broadcast":
      log("broadcast", payload && payload.event, payload && "payload" in payload ? payload.payload : payload);
      return;
    case "presence_state":
    case "presence_diff":
      if (current) {
        members = applyPresence(members, event, payload);
        renderMembers();
      }
      log(event, event === "presence_diff" ? presenceSummary(payload) : `${Object.keys(payload).length} keys`, payload);
      return;
    case "postgres_changes": {
      const data = payload.data || {};
      const shown = {};
      if (data.record !== undefined) shown.record = data.record;
      if (data.old_record !== undefined) shown.old_record = data.old_record;
      if (data.errors) shown.errors = data.errors;
      log("postgres_changes", `${data.type} ${data.schema}.${data.table}`, shown);
      return;
    }
    case "system":
      log("system", `${payload.extension} ${payload.status}`, payload.message);
      return;
    case "phx_close":
      if (current && msg.join_ref === channel.joinRef) {
        setJoinStatus("closed", "closed by the server");
        channel = null;
      }
      log("phx_close", topic, payload);
      return;
    case "phx_error":
      if (current && msg.join_ref === channel.joinRef) setJoinStatus("errored", "errored: the channel crashed");
      log("phx_error", topic, payload);
      return;
    default:
      log(event, topic, payload);
  }
}

function presenceSummary(diff) {
  const joins = Object.keys(diff.joins || {}).length;
  const leaves = Object.keys(diff.leaves || {}).length;
  return `+${joins} −${leaves}`;
}

// --- channel --------------------------------------------------------------------------------

function joinSettings() {
  const data = new FormData(forms.join);
  const subTopic = String(data.get("topic")).trim().replace(/^realtime:/, "");
  const table = String(data.get("table")).trim();
  const bindings = [];
  if (table) {
    const binding = { event: String(data.get("event")), schema: String(data.get("schema")).trim() || "public", table };
    const filter = String(data.get("filter")).trim();
    if (filter) binding.filter = filter;
    bindings.push(binding);
  }
  return { subTopic, private: data.get("private") !== null, presence: data.get("presence") !== null, bindings };
}

async function join() {
  const settings = joinSettings();
  if (!settings.subTopic) return;
  setJoinStatus("joining", "joining…");
  try {
    await connect();
  } catch (err) {
    setJoinStatus("idle", `not joined: ${err.message}`);
    return;
  }
  if (channel !== null) await leave();
  const { apikey, token } = credentials();
  const joinRef = socket.nextRef();
  const topic = TOPIC_PREFIX + settings.subTopic;
  const joining = { topic, subTopic: settings.subTopic, joinRef, private: settings.private, token: token || apikey, joined: false };
  channel = joining;
  members = {};
  renderMembers();
  const payload = {
    config: {
      broadcast: { self: true },
      presence: { key: "", enabled: settings.presence },
      postgres_changes: settings.bindings,
      private: settings.private,
    },
    access_token: joining.token,
  };
  log("push", "phx_join", payload.config);
  let reply;
  try {
    reply = await socket.push(topic, "phx_join", payload, { joinRef, ref: joinRef });
  } catch (err) {
    if (channel === joining) channel = null;
    setJoinStatus("failed", err instanceof TimeoutError ? "join timed out" : `join failed: ${err.message}`);
    return;
  }
  log("reply", `phx_join ${reply.status}`, reply.response);
  if (channel !== joining) return; // left or replaced while waiting
  if (reply.status === "ok") {
    joining.joined = true;
    setJoinStatus("joined", `joined ${settings.subTopic}${settings.private ? " (private)" : ""}`);
    return;
  }
  channel = null;
  setJoinStatus("refused");
  const reason = reply.response && reply.response.reason ? reply.response.reason : compact(reply.response);
  show("join-error", reason);
  const why = $("join-why");
  why.hidden = false;
  why.onclick = () => explain(joining);
}

async function leave() {
  const leaving = channel;
  if (leaving === null || socket === null || !socket.isOpen) return;
  channel = null;
  try {
    const reply = await socket.push(leaving.topic, "phx_leave", {}, { joinRef: leaving.joinRef });
    log("reply", `phx_leave ${reply.status}`, reply.response);
  } catch (err) {
    log("error", "phx_leave", err.message);
  }
  setJoinStatus("left", `left ${leaving.subTopic}`);
}

/** Asks the server why a join was refused (GET /api/explain/join) and shows its answer. */
async function explain(refused) {
  const { apikey } = credentials();
  const query = new URLSearchParams({ topic: refused.subTopic, private: String(refused.private) });
  const out = $("join-explain");
  out.hidden = false;
  out.textContent = "asking…";
  try {
    const res = await fetch(`/api/explain/join?${query}`, {
      headers: { Authorization: `Bearer ${refused.token}`, apikey },
    });
    if (res.status === 404) {
      out.textContent = "explain unavailable";
      return;
    }
    const text = await res.text();
    const [body] = parseJson(text, "answer");
    out.textContent = body !== null ? JSON.stringify(body, null, 2) : `${res.status}: ${text}`;
  } catch {
    out.textContent = "explain unavailable";
  }
}

function sendBroadcast() {
  const data = new FormData(forms.send);
  const event = String(data.get("event")).trim();
  const [payload, problem] = parseJson(String(data.get("payload")), "the payload");
  if (problem) return show("send-error", problem);
  if (channel === null || !channel.joined) return show("send-error", "join a channel first");
  show("send-error", "");
  socket.cast(channel.topic, "broadcast", { type: "broadcast", event, payload }, channel.joinRef);
  log("sent", event, payload);
}

async function presence(event) {
  let payload;
  if (event === "track") {
    const [state, problem] = parseJson(String(new FormData(forms.presence).get("state")), "the state");
    if (problem) return show("presence-error", problem);
    payload = { type: "presence", event, payload: state };
  } else {
    payload = { type: "presence", event };
  }
  if (channel === null || !channel.joined) return show("presence-error", "join a channel first");
  show("presence-error", "");
  try {
    const reply = await socket.push(channel.topic, "presence", payload, { joinRef: channel.joinRef });
    log("reply", `presence ${event} ${reply.status}`, reply.response);
  } catch (err) {
    show("presence-error", err.message);
  }
}

// --- stats ----------------------------------------------------------------------------------

const charts = {
  connections: new LineChart($("chart-connections"), { color: "#2563eb" }),
  joins: new LineChart($("chart-joins"), { color: "#16a34a" }),
  messages: new LineChart($("chart-messages"), { color: "#d97706" }),
  lag: new LineChart($("chart-lag"), { color: "#dc2626" }),
};
let statsTimer = null;
let previous = null;

function fetchStats(apikey) {
  return fetch("/api/inspector/stats", { headers: { apikey }, cache: "no-store" });
}

function startStats() {
  if (statsTimer === null) pollStats();
}

async function pollStats() {
  statsTimer = setTimeout(pollStats, STATS_MS);
  const { apikey } = credentials();
  let sample;
  try {
    const res = await fetchStats(apikey);
    if (res.status === 401) {
      show("stats-status", "stats: the server did not accept this API key");
      return;
    }
    sample = await res.json();
  } catch (err) {
    show("stats-status", `stats unavailable: ${err.message}`);
    return;
  }
  show("stats-status", `node ${sample.node}${sample.replication ? ` · replication ${sample.replication}` : ""}`);
  const dt = previous !== null ? sample.time - previous.time : 0;
  const rate = (key) => (dt > 0 ? Math.max(0, sample[key] - previous[key]) / dt : null);
  const joins = rate("joins");
  const messages = rate("messages");
  previous = sample;
  charts.connections.add(sample.connections);
  charts.lag.add(sample.replication_lag_bytes);
  $("stat-connections").textContent = `connections: ${sample.connections}`;
  $("stat-lag").textContent = sample.replication_lag_bytes === null
    ? "replication lag: n/a" : `replication lag: ${sample.replication_lag_bytes} bytes`;
  if (joins !== null) {
    charts.joins.add(joins);
    charts.messages.add(messages);
    $("stat-joins").textContent = `joins/s: ${formatNumber(joins)}`;
    $("stat-messages").textContent = `messages/s: ${formatNumber(messages)}`;
  }
}

// --- wiring ---------------------------------------------------------------------------------

forms.connect.addEventListener("submit", (ev) => {
  ev.preventDefault();
  connect().catch(() => {});
});
document.getElementById("disconnect").addEventListener("click", () => {
  if (socket !== null) socket.close();
});
forms.join.addEventListener("submit", (ev) => {
  ev.preventDefault();
  join();
});
document.getElementById("leave").addEventListener("click", () => leave());
forms.send.addEventListener("submit", (ev) => {
  ev.preventDefault();
  sendBroadcast();
});
forms.presence.addEventListener("submit", (ev) => {
  ev.preventDefault();
  presence("track");
});
document.getElementById("untrack").addEventListener("click", () => presence("untrack"));
document.getElementById("clear-log").addEventListener("click", () => $("log").replaceChildren());

function fromLink() {
  const params = new URLSearchParams(location.search);
  const set = (testid, value) => { if (value !== null) $(testid).value = value; };
  const flag = (testid, value) => { if (value !== null) $(testid).checked = value.toLowerCase() === "true"; };
  set("apikey", params.get("apikey"));
  set("token", params.get("token"));
  set("topic", params.get("topic"));
  flag("private", params.get("private"));
  flag("presence", params.get("presence"));
  set("pg-schema", params.get("schema"));
  set("pg-table", params.get("table"));
  set("pg-filter", params.get("filter"));
  const event = params.get("event");
  if (event !== null) $("pg-event").value = event.toUpperCase() === "*" ? "*" : event.toUpperCase();
  if (!params.get("apikey")) {
    askForKey();
    return;
  }
  if (params.get("topic")) join();
  else connect().catch(() => {});
}

fromLink();
