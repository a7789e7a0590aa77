// Raw WebSocket postgres_changes subscribers for bench/cdc_e2e.py (not a test).
//
// Protocol with the bench (one JSON object per line):
//   stdin  <- first line: {"url", "subs": [{"token", "vsn", "topic", "table"}], "progress_ms",
//                          "verify_every"}
//             then the word "stop" (final report, close sockets, exit)
//   stdout -> {"type":"ready", "subs"}                         every subscriber got "Subscribed to PostgreSQL"
//             {"type":"progress", "received", "warm", "closed"} every progress_ms
//             {"type":"result", ...}                            after "stop"
//             {"type":"error", "message"}                       a join or subscription failed (then exit 1)
//
// Counting is on the hot path, so postgres_changes frames are not JSON-parsed: the event name,
// the row id and the `sent_ms` column (the writer's wall clock just before its COMMIT, in ms
// with µs digits) are located with Buffer.indexOf. Every `verify_every`-th frame is parsed in
// full and checked against the fast path (shape, table, id, sent_ms); the parsed ones also give
// a latency from data.commit_timestamp, which has only millisecond precision (protocol.md §6.5).
// Rows with sent_ms < 0 are the bench's warm-up rows: counted apart, not in the statistics.

import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import readline from 'node:readline'

const here = path.dirname(fileURLToPath(import.meta.url))
// `ws` is installed for the conformance tests; resolve it from there.
const require = createRequire(path.join(here, '..', 'tests', 'js', 'package.json'))
const WebSocket = require('ws')

const SUBSCRIBED = 'Subscribed to PostgreSQL'
const V2_EVENT = Buffer.from(',"postgres_changes",{')
const V1_EVENT = Buffer.from('"event":"postgres_changes"')
const SENT_KEY = Buffer.from('"sent_ms":')
const ID_KEY = Buffer.from('"id":')
const HEARTBEAT_MS = 25_000
const MAX_SAMPLES = 20_000_000

const nowMs = () => performance.timeOrigin + performance.now()
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

function fail(message) {
  emit({ type: 'error', message })
  process.exit(1)
}

// --- statistics ---------------------------------------------------------------------------

let latencies = new Float64Array(1 << 20)
let nLat = 0
const commitTsLat = []
let received = 0
let warm = 0
let verified = 0
let verifyFailures = []
let firstMs = null
let lastMs = null

function addLatency(ms) {
  if (nLat === latencies.length) {
    if (nLat >= MAX_SAMPLES) return
    const grown = new Float64Array(latencies.length * 2)
    grown.set(latencies)
    latencies = grown
  }
  latencies[nLat++] = ms
}

function percentile(sorted, q) {
  if (sorted.length === 0) return null
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[i]
}

// A number starting at `at` in `buf` (ASCII digits, sign, '.', exponent).
function numberAt(buf, at) {
  let end = at
  while (end < buf.length) {
    const c = buf[end]
    if ((c >= 48 && c <= 57) || c === 45 || c === 46 || c === 43 || c === 101 || c === 69) end++
    else break
  }
  return Number(buf.latin1Slice(at, end))
}

// --- one subscriber ------------------------------------------------------------------------

class Sub {
  constructor(index, spec, url) {
    this.index = index
    this.spec = spec
    this.v2 = spec.vsn === '2.0.0'
    this.count = 0
    this.dups = 0
    this.seen = new Uint8Array(1 << 16) // bitmap of row ids, grows
    this.subscribed = false
    this.closed = false
    this.ref = 0
    const q = new URLSearchParams({ apikey: spec.token, vsn: spec.vsn })
    this.ws = new WebSocket(`${url}?${q}`, { perMessageDeflate: false })
    this.ws.on('open', () => this.join())
    this.ws.on('message', (data, isBinary) => this.onMessage(data, isBinary))
    this.ws.on('close', () => { this.closed = true })
    this.ws.on('error', (err) => { if (!this.subscribed) fail(`subscriber ${index}: ${err.message}`) })
  }

  send(topic, event, payload, joinRef) {
    const ref = String(++this.ref)
    const text = this.v2
      ? JSON.stringify([joinRef, ref, topic, event, payload])
      : JSON.stringify({ topic, event, payload, ref, join_ref: joinRef })
    this.ws.send(text)
    return ref
  }

  join() {
    const config = {
      broadcast: { self: false, ack: false },
      presence: { key: '', enabled: false },
      postgres_changes: [{ event: 'INSERT', schema: 'public', table: this.spec.table }],
      private: false,
    }
    this.joinRef = this.send(this.spec.topic, 'phx_join', { config, access_token: this.spec.token }, null)
    this.heartbeat = setInterval(() => this.send('phoenix', 'heartbeat', {}, null), HEARTBEAT_MS)
  }

  decode(text) {
    const m = JSON.parse(text)
    return this.v2 ? { topic: m[2], event: m[3], payload: m[4] } : m
  }

  onMessage(buf, isBinary) {
    if (!isBinary) {
      const head = this.v2 ? buf.indexOf(V2_EVENT) : buf.indexOf(V1_EVENT)
      if (head >= 0 && head < 200) return this.onChange(buf)
    }
    if (isBinary) return
    const m = this.decode(buf.toString('utf8'))
    if (m.event === 'phx_reply' && m.topic === this.spec.topic && m.payload.status !== 'ok') {
      fail(`subscriber ${this.index}: join refused: ${JSON.stringify(m.payload)}`)
    }
    if (m.event === 'system' && m.payload.extension === 'postgres_changes') {
      if (m.payload.status === 'ok' && m.payload.message === SUBSCRIBED) {
        this.subscribed = true
        onSubscribed()
      } else if (!String(m.payload.message).includes('unable to connect')) {
        // Transient "unable to connect" errors are retried by the server (§6.3); others are fatal.
        fail(`subscriber ${this.index}: ${JSON.stringify(m.payload)}`)
      }
    }
  }

  onChange(buf) {
    const t = nowMs()
    const s = buf.indexOf(SENT_KEY)
    const i = buf.indexOf(ID_KEY)
    const sent = s >= 0 ? numberAt(buf, s + SENT_KEY.length) : NaN
    const id = i >= 0 ? numberAt(buf, i + ID_KEY.length) : NaN
    if (sent < 0) { warm++; return }
    received++
    this.count++
    if (firstMs === null) firstMs = t
    lastMs = t
    if (Number.isInteger(id) && id >= 0) {
      const byte = id >> 3
      if (byte >= this.seen.length) {
        const grown = new Uint8Array(Math.max(byte + 1, this.seen.length * 2))
        grown.set(this.seen)
        this.seen = grown
      }
      const bit = 1 << (id & 7)
      if (this.seen[byte] & bit) this.dups++
      else this.seen[byte] |= bit
    } else {
      verifyFailures.push(`no id in frame: ${buf.toString('utf8').slice(0, 200)}`)
    }
    if (Number.isFinite(sent)) addLatency(t - sent)
    if (received % verifyEvery === 0) this.verify(buf, t, id, sent)
  }

  verify(buf, t, id, sent) {
    verified++
    const m = this.decode(buf.toString('utf8'))
    const d = m.payload?.data
    const ok = m.topic === this.spec.topic && Array.isArray(m.payload.ids) && d && d.type === 'INSERT' &&
      d.schema === 'public' && d.table === this.spec.table && d.record?.id === id && d.record?.sent_ms === sent &&
      Array.isArray(d.columns) && d.errors === null
    if (!ok) {
      if (verifyFailures.length < 5) verifyFailures.push(buf.toString('utf8').slice(0, 400))
      return
    }
    commitTsLat.push(t - Date.parse(d.commit_timestamp))
  }
}

// --- main ------------------------------------------------------------------------------------

let verifyEvery = 1000
let subs = []
let ready = false

function onSubscribed() {
  if (ready || !subs.every((s) => s.subscribed)) return
  ready = true
  emit({ type: 'ready', subs: subs.length })
}

function report() {
  const sorted = latencies.subarray(0, nLat).sort()
  const cts = Float64Array.from(commitTsLat).sort()
  const counts = subs.map((s) => s.count)
  emit({
    type: 'result',
    received,
    warm,
    per_sub_min: Math.min(...counts),
    per_sub_max: Math.max(...counts),
    duplicates: subs.reduce((a, s) => a + s.dups, 0),
    closed: subs.filter((s) => s.closed).length,
    latency_samples: nLat,
    p50_ms: percentile(sorted, 0.5),
    p99_ms: percentile(sorted, 0.99),
    max_ms: nLat ? sorted[nLat - 1] : null,
    commit_ts_samples: cts.length,
    commit_ts_p50_ms: percentile(cts, 0.5),
    commit_ts_p99_ms: percentile(cts, 0.99),
    verified,
    verify_failures: verifyFailures.slice(0, 5),
    first_ms: firstMs,
    last_ms: lastMs,
  })
}

const lines = readline.createInterface({ input: process.stdin })
let configured = false
lines.on('line', (line) => {
  if (!configured) {
    configured = true
    const cfg = JSON.parse(line)
    verifyEvery = Math.max(1, cfg.verify_every ?? 1000)
    subs = cfg.subs.map((spec, i) => new Sub(i, spec, cfg.url))
    setInterval(() => emit({
      type: 'progress', received, warm, closed: subs.filter((s) => s.closed).length,
    }), cfg.progress_ms ?? 50)
    return
  }
  if (line.trim() === 'stop') {
    report()
    for (const s of subs) { clearInterval(s.heartbeat); s.ws.terminate() }
    process.exit(0)
  }
})
