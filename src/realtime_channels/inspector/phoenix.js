// A minimal Phoenix channels client for the inspector, speaking the server's vsn 1.0.0 wire
// format (docs/protocol.md §1–§3): every frame is a JSON object
// {"topic", "event", "payload", "ref", "join_ref"}; a push that expects an answer gets a
// `phx_reply` {"status", "response"} carrying the push's ref.
//
// Deliberately small: one socket, replies matched by ref, a heartbeat every 25 s, no automatic
// reconnect (the inspector shows why a socket closed rather than hiding it).

export const HEARTBEAT_MS = 25000;
export const REPLY_TIMEOUT_MS = 10000;

export class TimeoutError extends Error {}

export class PhoenixSocket {
  /**
   * @param {string} url  the WebSocket URL, with apikey and vsn=1.0.0
   * @param {{onMessage?: (msg: object) => void, onClose?: (ev: CloseEvent, opened: boolean) => void}} hooks
   */
  constructor(url, hooks = {}) {
    this.url = url;
    this.hooks = hooks;
    this.ws = null;
    this.ref = 0;
    this.pending = new Map(); // ref -> {resolve, reject, timer}
    this.heartbeat = null;
    this.heartbeatRef = null;
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  nextRef() {
    this.ref += 1;
    return String(this.ref);
  }

  /** Opens the socket; resolves once open, rejects if it closes first. */
  connect() {
    return new Promise((resolve, reject) => {
      let opened = false;
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.onopen = () => {
        opened = true;
        this.heartbeat = setInterval(() => this.sendHeartbeat(), HEARTBEAT_MS);
        resolve();
      };
      ws.onmessage = (ev) => this.receive(ev.data);
      ws.onclose = (ev) => {
        clearInterval(this.heartbeat);
        this.heartbeat = null;
        for (const [, waiter] of this.pending) {
          clearTimeout(waiter.timer);
          waiter.reject(new Error(`socket closed (${ev.code})`));
        }
        this.pending.clear();
        if (this.ws === ws) this.ws = null;
        if (!opened) reject(new Error(`connection closed (code ${ev.code})`));
        if (this.hooks.onClose) this.hooks.onClose(ev, opened);
      };
    });
  }

  close(code = 1000, reason = "closed by the inspector") {
    if (this.ws !== null) this.ws.close(code, reason);
  }

  /**
   * Sends one frame; returns a promise of its reply ({status, response}).
   * @param {{joinRef?: string|null, ref?: string}} refs
   */
  push(topic, event, payload, { joinRef = null, ref = this.nextRef() } = {}) {
    if (!this.isOpen) return Promise.reject(new Error("not connected"));
    const reply = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(new TimeoutError(`no reply to ${event} within ${REPLY_TIMEOUT_MS / 1000} s`));
      }, REPLY_TIMEOUT_MS);
      this.pending.set(ref, { resolve, reject, timer });
    });
    this.ws.send(JSON.stringify({ topic, event, payload, ref, join_ref: joinRef }));
    return reply;
  }

  /** Sends a frame nobody answers (broadcasts without ack). */
  cast(topic, event, payload, joinRef = null) {
    if (!this.isOpen) throw new Error("not connected");
    this.ws.send(JSON.stringify({ topic, event, payload, ref: this.nextRef(), join_ref: joinRef }));
  }

  sendHeartbeat() {
    if (this.heartbeatRef !== null) {
      // the previous heartbeat is still unanswered: the connection is gone (as realtime-js does)
      this.heartbeatRef = null;
      this.close(1000, "heartbeat timeout");
      return;
    }
    const ref = this.nextRef();
    this.heartbeatRef = ref;
    this.push("phoenix", "heartbeat", {}, { ref }).then(
      () => { if (this.heartbeatRef === ref) this.heartbeatRef = null; },
      () => {},
    );
  }

  receive(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return; // vsn 1.0.0 frames are always JSON text
    }
    if (msg.event === "phx_reply" && msg.ref != null && this.pending.has(msg.ref)) {
      const waiter = this.pending.get(msg.ref);
      this.pending.delete(msg.ref);
      clearTimeout(waiter.timer);
      waiter.resolve(msg.payload);
      return; // the pusher has its answer (and shows it if it is worth showing)
    }
    if (this.hooks.onMessage) this.hooks.onMessage(msg);
  }
}

/** Applies presence_state / presence_diff payloads (docs/protocol.md §5.2) to a state. */
export function applyPresence(state, event, payload) {
  if (event === "presence_state") return structuredClone(payload);
  const next = structuredClone(state);
  for (const [key, { metas }] of Object.entries(payload.leaves || {})) {
    if (!next[key]) continue;
    const gone = new Set(metas.map((m) => m.phx_ref));
    next[key].metas = next[key].metas.filter((m) => !gone.has(m.phx_ref));
    if (next[key].metas.length === 0) delete next[key];
  }
  for (const [key, { metas }] of Object.entries(payload.joins || {})) {
    next[key] = { metas: [...(next[key] ? next[key].metas : []), ...metas] };
  }
  return next;
}
