// Subscribers for bench/cdc_fanout.py (not a test): N raw WebSocket connections, all joined to
// ONE topic with a postgres_changes INSERT binding on one table, so the same sockets receive both
// the table's changes and the topic's broadcasts.
//
// Protocol with the bench (one JSON object per line):
//   stdin  <- first line: {"url", "token", "topic", "table", "subs", "vsns": ["1.0.0", "2.0.0"],
//             "offsets": false}   (offsets: join asking for offsets on broadcasts and changes;
//             optional "tokens": [...] — subscriber i uses tokens[i % tokens.length], e.g. one per
//             claims cohort; optional "localAddress": the sockets' source address; optional "progress": true — a {"type":"progress"} line every 2 s while joining)
//             then "count" (answer with the counters) any number of times, then "stop"
//   stdout -> {"type":"ready"}                       every socket got "Subscribed to PostgreSQL"
//             {"type":"count", "changes", "broadcasts", "changeBytes", "broadcastBytes", "closed"}
//             {"type":"error", "message"}            a join or a subscription failed (then exit 1)
//
// Frames are classified with Buffer.indexOf near the head (no JSON parse on the hot path).

import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import readline from 'node:readline'

const here = path.dirname(fileURLToPath(import.meta.url))
// `ws` is installed for the conformance tests; resolve it from there.
const require = createRequire(path.join(here, '..', 'tests', 'js', 'package.json'))
const WebSocket = require('ws')

const SUBSCRIBED = 'Subscribed to PostgreSQL'
const CHANGE = Buffer.from(',"postgres_changes",{')
const CHANGE_V1 = Buffer.from('"event":"postgres_changes"')
const BROADCAST = Buffer.from(',"broadcast",{')
const BROADCAST_V1 = Buffer.from('"event":"broadcast"')
const HEARTBEAT_MS = 25_000
const CONNECT_CONCURRENCY = 50

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
function fail(message) {
  emit({ type: 'error', message })
  process.exit(1)
}

let changes = 0
let broadcasts = 0
let changeBytes = 0
let broadcastBytes = 0
let closed = 0
let subscribed = 0

class Sub {
  constructor(index, cfg, vsn, done) {
    this.index = index
    this.cfg = cfg
    this.v2 = vsn === '2.0.0'
    this.token = cfg.tokens ? cfg.tokens[index % cfg.tokens.length] : cfg.token
    this.ref = 0
    this.done = done
    this.subscribed = false
    const q = new URLSearchParams({ apikey: this.token, vsn })
    const opts = { perMessageDeflate: false }
    if (cfg.localAddress) opts.localAddress = cfg.localAddress // a source address of its own
    this.ws = new WebSocket(`${cfg.url}?${q}`, opts)
    this.ws.on('open', () => this.join())
    this.ws.on('message', (data, isBinary) => this.onMessage(data, isBinary))
    this.ws.on('close', () => { if (this.subscribed) closed++ })
    this.ws.on('error', (err) => { if (!this.subscribed) fail(`subscriber ${index}: ${err.message}`) })
  }

  send(topic, event, payload, joinRef) {
    const ref = String(++this.ref)
    this.ws.send(this.v2
      ? JSON.stringify([joinRef, ref, topic, event, payload])
      : JSON.stringify({ topic, event, payload, ref, join_ref: joinRef }))
    return ref
  }

  join() {
    const config = {
      broadcast: { self: false, ack: false },
      presence: { key: '', enabled: false },
      postgres_changes: [{ event: 'INSERT', schema: 'public', table: this.cfg.table }],
      private: false,
    }
    if (this.cfg.offsets) {
      config.broadcast.resume = true
      config.postgres_changes_options = { resume: true }
    }
    this.send(this.cfg.topic, 'phx_join', { config, access_token: this.token }, '1')
    this.heartbeat = setInterval(() => this.send('phoenix', 'heartbeat', {}, null), HEARTBEAT_MS)
  }

  onMessage(buf, isBinary) {
    if (isBinary) return
    const c = buf.indexOf(this.v2 ? CHANGE : CHANGE_V1)
    if (c >= 0 && c < 120) {
      changes++
      changeBytes += buf.length
      return
    }
    const b = buf.indexOf(this.v2 ? BROADCAST : BROADCAST_V1)
    if (b >= 0 && b < 120) {
      broadcasts++
      broadcastBytes += buf.length
      return
    }
    const m = JSON.parse(buf.toString('utf8'))
    const msg = this.v2 ? { topic: m[2], event: m[3], payload: m[4] } : m
    if (msg.event === 'phx_reply' && msg.topic === this.cfg.topic && msg.payload.status !== 'ok') {
      fail(`subscriber ${this.index}: join refused: ${JSON.stringify(msg.payload)}`)
    }
    if (msg.event === 'system' && msg.payload.extension === 'postgres_changes') {
      if (msg.payload.status === 'ok' && msg.payload.message === SUBSCRIBED) {
        if (!this.subscribed) {
          this.subscribed = true
          subscribed++
          this.done()
        }
      } else if (!String(msg.payload.message).includes('unable to connect')) {
        // "unable to connect" is transient and retried by the server; anything else is fatal
        fail(`subscriber ${this.index}: ${JSON.stringify(msg.payload)}`)
      }
    }
  }

  close() {
    clearInterval(this.heartbeat)
    this.ws.terminate()
  }
}

const rl = readline.createInterface({ input: process.stdin })
let cfg = null
const subs = []
rl.on('line', async (line) => {
  if (cfg === null) {
    cfg = JSON.parse(line)
    // open in waves so the join burst stays modest
    let lastProgress = Date.now()
    for (let start = 0; start < cfg.subs; start += CONNECT_CONCURRENCY) {
      if (cfg.progress && Date.now() - lastProgress > 2000) {
        lastProgress = Date.now()
        emit({ type: 'progress', subscribed, of: cfg.subs })
      }
      const wave = []
      for (let i = start; i < Math.min(cfg.subs, start + CONNECT_CONCURRENCY); i++) {
        wave.push(new Promise((resolve) => subs.push(new Sub(i, cfg, cfg.vsns[i % cfg.vsns.length], resolve))))
      }
      await Promise.all(wave)
    }
    emit({ type: 'ready', subs: subscribed })
  } else if (line.trim() === 'count') {
    emit({ type: 'count', changes, broadcasts, changeBytes, broadcastBytes, closed })
  } else if (line.trim() === 'stop') {
    for (const s of subs) s.close()
    process.exit(0)
  }
})
