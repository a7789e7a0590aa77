// Load generator for bench/supabase_shape.py: virtual users in the shape of Supabase Realtime's
// published broadcast benchmark (docs/benchmarks.md, "Supabase's shape on one box").
//
//   node shape_loadgen.mjs '<json config>'      (bench/supabase_shape.py starts several)
//
// Each virtual user is one WebSocket (protocol V1, protocol.md §1.5) joined to two channels, both
// with `broadcast: {self: true}`:
//   * an echo channel only it is in (realtime:sb-echo-<user>), so it gets its own messages back;
//   * a room of `groupSize` users (realtime:sb-room-<group>), users 6g … 6g+5 in group g.
// It sends `ratePerChannel` broadcasts per second to each of them.  A process holds whole groups
// (group g belongs to process g % procs), so every sender and receiver of a message share one
// clock: the payload carries `"ts":<performance.now()>` and the receiver subtracts it.
//
// Driven over stdin/stdout, one JSON object a line (bench/common.py's Worker):
//   stdin  {"cmd":"grow","users":N}       connect this process's share of users [0, N) not yet open
//          {"cmd":"measure","seconds":D,"graceS":G}
//          {"cmd":"stop"}
//   stdout {"type":"ready"} at start, {"type":"grown",...}, {"type":"step",...} D + ≤ G s after
//          "measure", {"type":"result",...} after "stop"; {"type":"progress","msg":...} meanwhile.
// A step counts the messages sent in its window, the deliveries they should make (1 for the
// echo channel, the room's joined members for the room: self included), the deliveries that
// arrived within the grace time, and their latencies in log buckets (as bench/common.py's
// LogHist, so the driver merges the processes').
import { performance } from 'node:perf_hooks'
import readline from 'node:readline'
import WebSocket from 'ws'
import { LogHist } from './loghist.mjs'

const cfg = JSON.parse(process.argv[2])
const GROUP = cfg.groupSize
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const progress = (msg) => emit({ type: 'progress', msg })
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

// --- reading "ts" and "k" out of a delivery without parsing it -------------------------------------
const TS = Buffer.from('"ts":')
function numberAt(buf, at) {
  let v = 0
  let i = at
  for (; i < buf.length; i++) {
    const c = buf[i]
    if (c < 48 || c > 57) break
    v = v * 10 + (c - 48)
  }
  if (buf[i] === 46) {
    let scale = 0.1
    for (i++; i < buf.length; i++) {
      const c = buf[i]
      if (c < 48 || c > 57) break
      v += (c - 48) * scale
      scale /= 10
    }
  }
  return [v, i]
}

// --- the window being measured ----------------------------------------------------------------------
// {lo, hi, sent, expected, delivered: [echo, room], hist: [LogHist, LogHist], all: LogHist}
let win = null
let closedByServer = 0
let channelErrors = 0
let stopping = false
let hbSent = 0
let hbReplies = 0

const topicEcho = (u) => `realtime:sb-echo-${u}`
const topicRoom = (g) => `realtime:sb-room-${g}`
const pad = 'x'.repeat(Math.max(0, cfg.padBytes))
const joinPayload = () => ({
  config: { broadcast: { self: true, ack: false }, presence: { key: '', enabled: false }, postgres_changes: [], private: false },
  access_token: cfg.apikey,
})

class Room {
  constructor(g) {
    this.g = g
    this.topic = topicRoom(g)
    this.joined = 0 // members whose join was answered ok: the receivers of a message (self included)
  }
}
const rooms = new Map()

class User {
  constructor(u) {
    this.u = u
    this.room = rooms.get(Math.floor(u / GROUP))
    this.echoTopic = topicEcho(u)
    this.pending = 2
    this.active = false
    this.closed = false
  }
  open() {
    return new Promise((resolve, reject) => {
      const url = `ws://${cfg.host}:${cfg.port}/realtime/v1/websocket?apikey=${cfg.apikey}&vsn=1.0.0`
      const ws = new WebSocket(url, { perMessageDeflate: false, skipUTF8Validation: true, handshakeTimeout: 30000 })
      this.ws = ws
      ws.binaryType = 'nodebuffer'
      let settled = false
      const fail = (why) => {
        if (!settled) {
          settled = true
          reject(new Error(why))
        }
      }
      this.onJoinsDone = () => {
        if (!settled) {
          settled = true
          resolve(this)
        }
      }
      this.onJoinFailed = fail
      ws.on('open', () => {
        ws.send(JSON.stringify({ topic: this.echoTopic, event: 'phx_join', payload: joinPayload(), ref: '1', join_ref: '1' }))
        ws.send(JSON.stringify({ topic: this.room.topic, event: 'phx_join', payload: joinPayload(), ref: '2', join_ref: '2' }))
      })
      ws.on('message', (data) => this.onMessage(data))
      ws.on('error', (err) => fail(String(err.message || err)))
      ws.on('close', (code) => {
        this.closed = true
        if (this.active) {
          this.active = false
          this.room.joined--
          if (!stopping) closedByServer++
        }
        fail(`closed ${code} before both joins were answered`)
      })
    })
  }
  onMessage(data) {
    const buf = Buffer.isBuffer(data) ? data : Buffer.concat(data)
    const i = buf.indexOf(TS)
    if (i < 0) return this.onControl(buf.toString())
    const now = performance.now()
    const [ts, j] = numberAt(buf, i + TS.length)
    const w = win
    if (w === null || ts < w.lo || ts >= w.hi) return
    const kind = buf[j + 5] - 48 // `,"k":0` (echo) or 1 (room) follows ts
    w.delivered[kind]++
    w.bytes += buf.length
    w.hist[kind].add(now - ts)
  }
  onControl(text) {
    const m = JSON.parse(text)
    if (m.event === 'phx_reply') {
      if (m.topic === 'phoenix') {
        hbReplies++
        return
      }
      if (m.payload.status !== 'ok') return this.onJoinFailed(`join refused: ${text.slice(0, 300)}`)
      if (m.ref === '1' || m.ref === '2') {
        if (m.ref === '2') this.room.joined++
        if (--this.pending === 0) {
          this.active = true
          this.onJoinsDone()
        }
      }
    } else if (m.event === 'system' || m.event === 'phx_close' || m.event === 'phx_error') {
      if (m.event !== 'system' || m.payload?.status !== 'ok') channelErrors++
    }
  }
  send(kind) {
    if (!this.active) return false
    const ts = performance.now()
    const topic = kind === 0 ? this.echoTopic : this.room.topic
    this.ws.send(`{"topic":"${topic}","event":"broadcast","payload":{"type":"broadcast","event":"m","payload":{"ts":${ts.toFixed(3)},"k":${kind},"pad":"${pad}"}},"ref":null,"join_ref":"${kind + 1}"}`)
    const w = win
    if (w !== null && ts >= w.lo && ts < w.hi) {
      w.sent[kind]++
      w.expected[kind] += kind === 0 ? 1 : this.room.joined
    }
    return true
  }
}

// --- pacing: a wheel of slices over one period; every (user, channel) has a slice ---------------------
const PERIOD_MS = 1000 / cfg.ratePerChannel
const SLICES = 100
const SLICE_MS = PERIOD_MS / SLICES
const wheel = Array.from({ length: SLICES }, () => [])
let wheelT0 = performance.now()
let lastSlice = -1
let skipped = 0 // sends the wheel dropped because the process fell more than a period behind
function place(user) {
  const s = Math.floor(Math.random() * SLICES)
  wheel[s].push([user, 0])
  wheel[(s + SLICES / 2) % SLICES].push([user, 1]) // the room send half a period after the echo one
}
function tick() {
  if (stopping) return
  const now = performance.now()
  const k = Math.floor((now - wheelT0) / SLICE_MS)
  let from = lastSlice + 1
  if (k - from >= SLICES) {
    for (let s = from; s <= k - SLICES; s++) skipped += wheel[s % SLICES].length
    from = k - SLICES + 1
  }
  for (let s = from; s <= k; s++) {
    for (const [user, kind] of wheel[s % SLICES]) user.send(kind)
  }
  lastSlice = k
  setTimeout(tick, Math.max(1, Math.min(5, SLICE_MS)))
}

// Heartbeats as the official clients send them: every socket every `heartbeatS`, spread evenly.
const users = []
let hbSlice = 0
function heartbeats() {
  if (stopping) return
  const slices = Math.max(1, Math.round((cfg.heartbeatS * 1000) / 100))
  const slice = hbSlice++ % slices
  for (let i = slice; i < users.length; i += slices) {
    const us = users[i]
    if (!us.active) continue
    us.ws.send('{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"hb"}')
    hbSent++
  }
  setTimeout(heartbeats, 100)
}

// Event-loop lag: a 10 ms timer notes how late it fires.  A late generator reads deliveries late,
// which would show up as server latency; the step reports the lag so the two can be told apart.
let lagMax = 0
let lagOver20 = 0 // ms spent in stalls longer than 20 ms
let lagLast = performance.now()
function lagProbe() {
  if (stopping) return
  const now = performance.now()
  const late = now - lagLast - 10
  if (late > lagMax) lagMax = late
  if (late > 20) lagOver20 += late
  lagLast = now
  setTimeout(lagProbe, 10)
}

// --- commands ----------------------------------------------------------------------------------------
let opened = 0 // users [0, opened) considered (this process's share of them open)
async function grow(target) {
  const mine = []
  for (let u = opened; u < target; u++) {
    const g = Math.floor(u / GROUP)
    if (g % cfg.procs !== cfg.procIndex) continue
    if (!rooms.has(g)) rooms.set(g, new Room(g))
    mine.push(new User(u))
  }
  opened = Math.max(opened, target)
  const t0 = performance.now()
  let next = 0
  let done = 0
  let failures = 0
  const errors = []
  let lastReport = t0
  async function lane() {
    while (next < mine.length) {
      const user = mine[next++]
      try {
        await user.open()
        users.push(user)
        place(user)
        done++
      } catch (err) {
        failures++
        if (errors.length < 3) errors.push(String(err.message || err))
      }
      const now = performance.now()
      if (now - lastReport > 3000) {
        lastReport = now
        progress(`connected ${done}/${mine.length}`)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(cfg.connectConcurrency, mine.length) }, lane))
  const seconds = (performance.now() - t0) / 1000
  emit({ type: 'grown', added: done, failures, errors, seconds, active: users.filter((x) => x.active).length })
}

async function measure(seconds, graceS) {
  const lo = performance.now()
  const w = {
    lo, hi: lo + seconds * 1000, sent: [0, 0], expected: [0, 0], delivered: [0, 0], bytes: 0,
    hist: [new LogHist(), new LogHist()],
  }
  const skipped0 = skipped
  lagMax = 0
  lagOver20 = 0
  win = w
  await sleep(seconds * 1000)
  const expected = () => w.expected[0] + w.expected[1]
  const deadline = performance.now() + graceS * 1000
  while (w.delivered[0] + w.delivered[1] < expected() && performance.now() < deadline) await sleep(10)
  win = null
  emit({
    type: 'step',
    wall: seconds,
    sent: w.sent, expected: w.expected, delivered: w.delivered, bytes: w.bytes,
    hist: [w.hist[0].toJSON(), w.hist[1].toJSON()],
    skipped: skipped - skipped0,
    lagMaxMs: lagMax, lagStalledMs: lagOver20,
    active: users.filter((x) => x.active).length,
    closedByServer, channelErrors, hbSent, hbReplies,
  })
}

emit({ type: 'ready' })
tick()
heartbeats()
lagProbe()
const queue = []
let busy = false
async function drain() {
  if (busy) return
  busy = true
  while (queue.length) {
    const c = queue.shift()
    try {
      if (c.cmd === 'grow') await grow(c.users)
      else if (c.cmd === 'measure') await measure(c.seconds, c.graceS)
      else if (c.cmd === 'stop') {
        stopping = true
        for (const x of users) x.ws.terminate()
        emit({ type: 'result', users: users.length, closedByServer, channelErrors, hbSent, hbReplies })
        setTimeout(() => process.exit(0), 100).unref()
        return
      }
    } catch (err) {
      emit({ type: 'error', error: String(err && err.stack ? err.stack : err) })
    }
  }
  busy = false
}
const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  queue.push(JSON.parse(line))
  drain()
})
rl.on('close', () => {
  queue.push({ cmd: 'stop' })
  drain()
})
