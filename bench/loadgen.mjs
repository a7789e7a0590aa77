// Fan-out load generator for bench/fanout.py (one process, meant to be pinned to its own core).
//
//   node loadgen.mjs '<json config>'       (bench/fanout.py builds the config)
//
// It speaks the Supabase Realtime protocol (protocol.md §1.5: V1 JSON objects, V2 JSON arrays and
// binary kind 3 → kind 4, §1.6), the same V1 subset against the raw peers (they answer joins and
// rebroadcast frames verbatim), and Engine.IO v4 / Socket.IO v5 over a plain WebSocket for
// python-socketio.  Every publish carries `"ts":<performance.now()>,"seq":<n>` inside its payload;
// receivers find those two numbers with a byte search instead of a JSON parse so the generator
// stays cheap per delivery (it reports its own CPU so a saturated generator is visible).
//
// Output: one JSON object per line on stdout ({"type": "progress" | "step" | "result" | ...}).
import { readFileSync, readdirSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import readline from 'node:readline'
import WebSocket from 'ws'
import { LogHist } from './loghist.mjs'

const cfg = JSON.parse(process.argv[2])
const CLK_TCK = 100 // /proc/<pid>/stat times are in USER_HZ ticks; 100 on Linux

// --- output -------------------------------------------------------------------------------------
function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}
function progress(msg, extra = {}) {
  emit({ type: 'progress', msg, ...extra })
}

// --- server and own resource usage ----------------------------------------------------------------
function serverCpuSeconds() {
  if (!cfg.serverPid) return 0
  const stat = readFileSync(`/proc/${cfg.serverPid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK // utime, stime (proc(5) fields 14, 15)
}
function serverRssBytes() {
  if (!cfg.serverPid) return 0
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${cfg.serverPid}/status`, 'utf8'))
  return m ? Number(m[1]) * 1024 : 0
}
function serverFds() {
  if (!cfg.serverPid) return 0
  try {
    return readdirSync(`/proc/${cfg.serverPid}/fd`).length
  } catch {
    return 0
  }
}
// Time the thread spent runnable but waiting for a CPU (proc(5) schedstat, ns): high values mean
// other work on the machine was taking the core, so the figures are "measured under load".
function runQueueWait(pid) {
  try {
    return Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[1]) / 1e9
  } catch {
    return 0
  }
}
function usageSnapshot() {
  const u = process.cpuUsage()
  return {
    t: performance.now(),
    gen: (u.user + u.system) / 1e6,
    srv: serverCpuSeconds(),
    srvWait: cfg.serverPid ? runQueueWait(cfg.serverPid) : 0,
    genWait: runQueueWait(process.pid),
  }
}
function usageDelta(a, b) {
  const wall = (b.t - a.t) / 1000
  return {
    wall,
    genCpu: (b.gen - a.gen) / wall,
    srvCpu: (b.srv - a.srv) / wall,
    srvCpuSeconds: b.srv - a.srv,
    srvWait: (b.srvWait - a.srvWait) / wall,
    genWait: (b.genWait - a.genWait) / wall,
  }
}

// --- latency samples ----------------------------------------------------------------------------
class Samples {
  constructor(cap = 1 << 16) {
    this.a = new Float64Array(cap)
    this.n = 0
  }
  push(v) {
    if (this.n === this.a.length) {
      const b = new Float64Array(this.a.length * 2)
      b.set(this.a)
      this.a = b
    }
    this.a[this.n++] = v
  }
  summary() {
    const s = this.a.subarray(0, this.n).sort()
    const q = (p) => (s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : null)
    return { n: s.length, p50: q(0.5), p95: q(0.95), p99: q(0.99), max: s.length ? s[s.length - 1] : null }
  }
}

// --- reading "ts" and "seq" out of a frame without parsing it ------------------------------------
const TS = Buffer.from('"ts":')
const SEQ = Buffer.from('"seq":')
function numberAt(buf, at) {
  // a non-negative decimal number written by JSON.stringify
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
  return v
}
// returns [ts, seq] or null when the frame is not a benchmark delivery
function stamp(buf) {
  const i = buf.indexOf(TS)
  if (i < 0) return null
  const j = buf.indexOf(SEQ, i)
  return [numberAt(buf, i + TS.length), numberAt(buf, j + SEQ.length)]
}
function asBuffer(data) {
  return Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data)
}

// --- protocols ----------------------------------------------------------------------------------
// Each protocol: url(), onOpen(conn), onControl(conn, text) for non-delivery frames,
// publish(conn, body, at) (at: which of the socket's rooms), heartbeat(conn) (or null when the server drives liveness).
const topicOf = (room) => `realtime:bench-${room}`
const joinRefOf = (i) => (i === 0 ? '1' : `j${i}`)
function joinConfig(presenceKey) {
  return {
    config: {
      broadcast: { self: false, ack: false },
      presence: { key: presenceKey ?? '', enabled: presenceKey !== undefined },
      postgres_changes: [],
      private: false,
    },
    access_token: cfg.apikey,
  }
}

function supabase(vsn) {
  const v2 = vsn === '2.0.0'
  const frame = (joinRef, ref, topic, event, payload) =>
    v2 ? JSON.stringify([joinRef, ref, topic, event, payload]) : JSON.stringify({ topic, event, payload, ref, join_ref: joinRef })
  const parse = (text) => {
    const m = JSON.parse(text)
    return v2 ? { join_ref: m[0], ref: m[1], topic: m[2], event: m[3], payload: m[4] } : m
  }
  return {
    url: () => `ws://${cfg.host}:${cfg.port}/realtime/v1/websocket?apikey=${cfg.apikey}&vsn=${vsn}`,
    onOpen(conn) {
      // the first channel's join_ref and ref are "1"; a socket joined to several rooms
      // (cfg.roomsPerConn) uses "j<i>" for the others
      conn.rooms.forEach((room, i) => {
        const ref = joinRefOf(i)
        conn.ws.send(frame(ref, ref, topicOf(room), 'phx_join', joinConfig(conn.presenceKey)))
      })
    },
    onControl(conn, text) {
      const m = parse(text)
      if (m.event === 'phx_reply') {
        if (m.topic === 'phoenix') return conn.onHeartbeatReply()
        if (m.ref === '1' || (typeof m.ref === 'string' && m.ref.startsWith('j'))) {
          if (m.payload.status === 'ok') return conn.onJoinReply()
          return conn.fail(`join refused: ${JSON.stringify(m.payload)}`)
        }
        if (m.ref === '2') return conn.onTracked(m.payload.status)
      } else if (m.event === 'presence_state') {
        conn.onPresence(text.length, Object.keys(m.payload), [], true)
      } else if (m.event === 'presence_diff') {
        conn.onPresence(text.length, Object.keys(m.payload.joins), Object.keys(m.payload.leaves), false)
      } else if (m.event === 'system' || m.event === 'phx_close' || m.event === 'phx_error') {
        channelErrors++
      }
    },
    publish(conn, body, at = 0) {
      const room = conn.rooms[at]
      const joinRef = joinRefOf(at)
      if (!v2) {
        conn.ws.send(`{"topic":"${topicOf(room)}","event":"broadcast","payload":{"type":"broadcast","event":"m","payload":${body}},"ref":null,"join_ref":"${joinRef}"}`)
        return
      }
      // kind 3 (protocol.md §1.6): the channel's join_ref, no ref, user event "m", no metadata, JSON payload
      const topic = Buffer.from(topicOf(room))
      const head = Buffer.from([3, joinRef.length, 0, topic.length, 1, 0, 1])
      conn.ws.send(Buffer.concat([head, Buffer.from(joinRef), topic, Buffer.from('m'), Buffer.from(body)]))
    },
    track(conn, meta) {
      conn.ws.send(frame('1', '2', topicOf(conn.room), 'presence', { type: 'presence', event: 'track', payload: meta }))
    },
    heartbeat(conn) {
      conn.ws.send(frame(null, 'hb', 'phoenix', 'heartbeat', {}))
    },
  }
}

// Engine.IO v4 packets over WebSocket: 0 open, 2 ping, 3 pong, 4 message; Socket.IO v5 inside
// a message: 0 connect, 2 event, 3 ack.  Joins use an ack so the generator knows when they hold.
const socketio = {
  url: () => `ws://${cfg.host}:${cfg.port}/socket.io/?EIO=4&transport=websocket`,
  onOpen() {},
  onControl(conn, text) {
    if (text === '2') return conn.ws.send('3')
    if (text.startsWith('0')) return conn.ws.send('40')
    if (text.startsWith('40')) return conn.ws.send(`421["join","bench-${conn.room}"]`)
    if (text.startsWith('431')) return conn.onJoined()
    if (text.startsWith('44')) return conn.fail(`socket.io connect error ${text}`)
  },
  publish(conn, body) {
    conn.ws.send(`42["pub","bench-${conn.room}",${body}]`)
  },
  track() {
    throw new Error('socket.io has no presence')
  },
  heartbeat: null,
}

const PROTOCOLS = { v1: supabase('1.0.0'), v2: supabase('2.0.0'), socketio }
const proto = PROTOCOLS[cfg.protocol]
if (!proto) throw new Error(`unknown protocol ${cfg.protocol}`)

// --- connections --------------------------------------------------------------------------------
let measuring = null // {lo, hi, lat: Samples, counted, late, ooo} while a step's window is open
const conns = []
let hbSent = 0
let hbReplies = 0
let closedByServer = 0
let channelErrors = 0 // system errors, phx_close and phx_error the server sent to a joined channel
let soakStats = null // the current report interval of the soak mode

class Conn {
  constructor(room, { role = 'sub', presenceKey, slow = false, rooms } = {}) {
    this.room = room
    this.rooms = rooms ?? [room] // the channels this socket joins (several with cfg.roomsPerConn)
    this.joinReplies = 0
    this.role = role
    this.presenceKey = presenceKey
    this.slow = slow
    this.lastSeq = -1
    this.received = 0
    this.joined = false
    this.closed = false
    this.closeCode = null
    this.presence = new Set()
    this.presenceFrames = 0
    this.presenceBytes = 0
    this.syncedAt = null
    this.hbSentAt = 0
  }
  open() {
    return new Promise((resolve, reject) => {
      this.resolve = resolve
      this.reject = reject
      const opts = { perMessageDeflate: false, skipUTF8Validation: true, handshakeTimeout: 30000 }
      // a source address of its own per generator process: ~28,000 ephemeral ports per address
      if (cfg.localAddress) opts.localAddress = cfg.localAddress
      const ws = new WebSocket(proto.url(), opts)
      this.ws = ws
      ws.binaryType = 'nodebuffer'
      ws.on('open', () => proto.onOpen(this))
      ws.on('message', (data, isBinary) => this.onMessage(data, isBinary))
      ws.on('error', (err) => {
        if (!this.joined) this.fail(String(err.message || err))
      })
      ws.on('close', (code) => {
        this.closed = true
        this.closeCode = code
        if (!this.joined) this.fail(`closed ${code} before join`)
        else if (!stopping) closedByServer++
      })
    })
  }
  fail(why) {
    if (this.reject) this.reject(new Error(why))
    this.reject = this.resolve = null
  }
  onJoinReply() {
    if (++this.joinReplies === this.rooms.length) this.onJoined()
  }
  onJoined() {
    this.joined = true
    if (this.resolve) this.resolve(this)
    this.reject = this.resolve = null
  }
  onMessage(data, isBinary) {
    const buf = asBuffer(data)
    const st = buf.length > 16 ? stamp(buf) : null
    if (st === null) {
      if (!isBinary) proto.onControl(this, buf.toString())
      return
    }
    this.received++
    if (soakStats !== null) soakStats.add(performance.now() - st[0])
    const seq = st[1]
    if (seq <= this.lastSeq) {
      if (measuring) measuring.ooo++
    }
    this.lastSeq = seq
    const m = measuring
    if (m !== null && seq >= m.lo && seq < m.hi) {
      m.counted++
      m.lat.push(performance.now() - st[0])
    }
  }
  onHeartbeatReply() {
    hbReplies++
    if (soakStats === null) hbRtt.push(performance.now() - this.hbSentAt) // a soak runs for hours: no per-reply samples
  }
  onTracked(status) {
    if (status !== 'ok') progress(`track refused: ${status}`)
  }
  onPresence(bytes, joins, leaves, isState) {
    if (!isState) {
      this.presenceFrames++
      this.presenceBytes += bytes
    } else {
      this.presenceStateBytes = bytes
    }
    for (const k of joins) this.presence.add(k)
    for (const k of leaves) this.presence.delete(k)
    if (this.syncedAt === null && this.presence.size >= presenceTarget) this.syncedAt = performance.now()
  }
}
let stopping = false
let presenceTarget = Infinity
const hbRtt = new Samples(1024)

async function openAll(list, concurrency) {
  const t0 = performance.now()
  let next = 0
  let done = 0
  let lastReport = t0
  async function worker() {
    while (next < list.length) {
      const c = list[next++]
      await c.open()
      done++
      const now = performance.now()
      if (now - lastReport > 2000) {
        lastReport = now
        progress(`connected+joined ${done}/${list.length}`)
      }
    }
  }
  const u0 = usageSnapshot()
  await Promise.all(Array.from({ length: Math.min(concurrency, list.length) }, worker))
  const use = usageDelta(u0, usageSnapshot())
  const secs = (performance.now() - t0) / 1000
  // server CPU per connect+join bounds the rate the server could take with a faster generator
  return {
    n: list.length,
    seconds: secs,
    perSecond: list.length / secs,
    genCpu: use.genCpu,
    serverCpu: use.srvCpu,
    serverCpuPerConnMs: (use.srvCpuSeconds / list.length) * 1000,
  }
}

// Heartbeats as the official clients send them: every connection every `heartbeatS` seconds,
// spread evenly (protocol.md §2.1).  Socket.IO servers ping the clients instead.
let hbTimer = null
function startHeartbeats() {
  if (!proto.heartbeat) return
  const periodMs = cfg.heartbeatS * 1000
  const tickMs = 100
  const slices = Math.max(1, Math.round(periodMs / tickMs))
  let tick = 0
  hbTimer = setInterval(() => {
    const slice = tick++ % slices
    for (let i = slice; i < conns.length; i += slices) {
      const c = conns[i]
      // not yet joined: skipped; slow consumers keep heartbeating: they stall reading, not sending
      if (c.closed || !c.joined) continue
      c.hbSentAt = performance.now()
      proto.heartbeat(c)
      hbSent++
    }
  }, tickMs)
}

// --- paced publishing -----------------------------------------------------------------------------
let seq = 0
let pad = ''
function body(room) {
  return `{"ts":${performance.now().toFixed(3)},"seq":${seq++},"room":${room},"pad":"${pad}"}`
}
// Publishes `totalRate` messages/s spread over the rooms' publishers (message j goes to room
// j % rooms at t0 + j / totalRate) until `untilMs`; resolves when done.
function publishUntil(publishers, totalRate, untilMs) {
  return new Promise((resolve) => {
    const t0 = performance.now()
    let j = 0
    const tick = () => {
      const now = performance.now()
      const due = Math.min(Math.floor(((now - t0) / 1000) * totalRate) + 1, Math.ceil(((untilMs - t0) / 1000) * totalRate))
      while (j < due) {
        const p = publishers[j % publishers.length] // a Conn, or {conn, at, room} for a socket in several rooms
        proto.publish(p.conn ?? p, body(p.room), p.at ?? 0)
        j++
      }
      if (now >= untilMs) return resolve(j)
      setTimeout(tick, 1)
    }
    tick()
  })
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
async function waitFor(cond, timeoutMs) {
  const t0 = performance.now()
  while (!cond() && performance.now() - t0 < timeoutMs) await sleep(5)
  return cond()
}

// --- scenarios ----------------------------------------------------------------------------------
function buildRooms(rooms, subs, slowPerRoom = 0) {
  const pubs = []
  const k = cfg.roomsPerConn ?? 1
  if (k > 1) {
    // rooms in blocks of k: each block's `subs` subscriber sockets and its publisher socket join
    // all k rooms of the block (one channel per room on each socket)
    for (let b = 0; b < rooms; b += k) {
      const block = []
      for (let r = b; r < Math.min(rooms, b + k); r++) block.push(r)
      for (let s = 0; s < subs; s++) conns.push(new Conn(b, { rooms: block, slow: s < slowPerRoom }))
      const p = new Conn(b, { role: 'pub', rooms: block })
      conns.push(p)
      block.forEach((room, at) => pubs.push({ conn: p, at, room }))
    }
    return pubs
  }
  for (let r = 0; r < rooms; r++) {
    for (let s = 0; s < subs; s++) conns.push(new Conn(r, { slow: s < slowPerRoom }))
    const p = new Conn(r, { role: 'pub' })
    conns.push(p)
    pubs.push(p)
  }
  return pubs
}

// Stepped fan-out: for each target deliveries/s, warm up, measure, drain; stop at the first
// step whose p99 exceeds the limit or whose delivery ratio falls below the floor.
async function fanout() {
  const pubs = buildRooms(cfg.rooms, cfg.subs)
  pad = 'x'.repeat(cfg.payloadPad)
  startHeartbeats()
  const conn = await openAll(conns, cfg.connectConcurrency)
  progress(`all ${conns.length} connections joined in ${conn.seconds.toFixed(1)} s`)
  // the server's CPU with every socket joined and heartbeating but nothing published, so a
  // caller can take that floor out of the per-delivery cost
  let idleUse = null
  if (cfg.idleMeasureS) {
    await sleep(300)
    const i0 = usageSnapshot()
    await sleep(cfg.idleMeasureS * 1000)
    idleUse = usageDelta(i0, usageSnapshot())
  }
  const fanoutPerMsg = cfg.subs
  // warm-up at the first step's rate
  const first = cfg.steps[0] / fanoutPerMsg
  await publishUntil(pubs, first, performance.now() + cfg.warmupS * 1000)
  await sleep(200)
  for (const target of cfg.steps) {
    const totalRate = target / fanoutPerMsg
    await publishUntil(pubs, totalRate, performance.now() + cfg.stepWarmupS * 1000)
    const m = { lo: seq, hi: Infinity, lat: new Samples(), counted: 0, ooo: 0 }
    measuring = m
    const u0 = usageSnapshot()
    const sent = await publishUntil(pubs, totalRate, performance.now() + cfg.measureS * 1000)
    m.hi = m.lo + sent
    const u1 = usageSnapshot()
    const rss = serverRssBytes()
    const expected = sent * fanoutPerMsg
    await waitFor(() => m.counted >= expected, cfg.graceS * 1000)
    measuring = null
    const use = usageDelta(u0, u1)
    const lat = m.lat.summary()
    const step = {
      type: 'step',
      target,
      windowEpochMs: [performance.timeOrigin + u0.t, performance.timeOrigin + u1.t],
      msgsPerSecond: sent / use.wall,
      deliveriesPerSecond: m.counted / use.wall,
      delivery: expected ? m.counted / expected : 0,
      expected,
      delivered: m.counted,
      outOfOrder: m.ooo,
      latencyMs: lat,
      serverCpu: use.srvCpu,
      serverCpuPerDeliveryUs: m.counted ? (use.srvCpuSeconds / m.counted) * 1e6 : null,
      serverRss: rss,
      genCpu: use.genCpu,
      serverRunQueueWait: use.srvWait,
      genRunQueueWait: use.genWait,
      closedByServer,
    }
    step.ok = lat.p99 !== null && lat.p99 <= cfg.stopP99Ms && step.delivery >= cfg.stopDelivery
    emit(step)
    if (!step.ok) break
    // let anything still queued drain before the next step
    await sleep(300)
  }
  emit({ type: 'result', connect: conn, heartbeats: { sent: hbSent, replies: hbReplies }, idle: idleUse, closedByServer, channelErrors })
}

// Idle joined connections: RSS per connection, connect+join rate, heartbeats flowing.
async function idle() {
  const rss0 = serverRssBytes()
  for (let i = 0; i < cfg.conns; i++) conns.push(new Conn(i % cfg.rooms))
  startHeartbeats()
  const conn = await openAll(conns, cfg.connectConcurrency)
  progress(`${conns.length} connections joined in ${conn.seconds.toFixed(1)} s (${conn.perSecond.toFixed(0)}/s)`)
  await sleep(1000)
  const rss1 = serverRssBytes()
  const u0 = usageSnapshot()
  const t0 = performance.now()
  while (performance.now() - t0 < cfg.holdS * 1000) {
    await sleep(Math.min(5000, cfg.holdS * 1000))
    progress(`holding: ${((performance.now() - t0) / 1000).toFixed(0)}/${cfg.holdS} s, heartbeats ${hbReplies}/${hbSent}, server RSS ${(serverRssBytes() / 1048576).toFixed(1)} MiB`)
  }
  await waitFor(() => hbReplies >= hbSent, 5000)
  const use = usageDelta(u0, usageSnapshot())
  const rss2 = serverRssBytes()
  const open = conns.filter((c) => !c.closed).length
  emit({
    type: 'result',
    connect: conn,
    rssBefore: rss0,
    rssJoined: rss1,
    rssAfterHold: rss2,
    bytesPerConn: (rss2 - rss0) / cfg.conns,
    heartbeats: { sent: hbSent, replies: hbReplies, rttMs: hbRtt.summary() },
    holdServerCpu: use.srvCpu,
    stillOpen: open,
  })
}

// Idle joined connections held until told to stop (bench/curves.py adds processes step by step):
//   stdout {"type":"ready", connect} once all joined, {"type":"report", ...} per report, {"type":"result"}
//   stdin  {"cmd":"report"} | {"cmd":"stop"}
async function held() {
  for (let i = 0; i < cfg.conns; i++) conns.push(new Conn((cfg.roomBase ?? 0) + (i % cfg.rooms)))
  startHeartbeats()
  const conn = await openAll(conns, cfg.connectConcurrency)
  emit({ type: 'ready', connections: conns.length, connect: conn })
  const counters = () => ({ hbSent, hbReplies, open: conns.filter((c) => !c.closed).length, closedByServer, channelErrors })
  await new Promise((resolve) => {
    const rl = readline.createInterface({ input: process.stdin })
    rl.on('line', (line) => {
      const c = JSON.parse(line)
      if (c.cmd === 'report') emit({ type: 'report', ...counters() })
      else if (c.cmd === 'stop') rl.close()
    })
    rl.on('close', resolve)
  })
  emit({ type: 'result', ...counters(), rttMs: hbRtt.summary() })
}

// Presence: members join one topic with presence enabled and track; time until every member's
// view holds every key, and the presence_diff traffic it took.
async function presence() {
  presenceTarget = cfg.members
  for (let i = 0; i < cfg.members; i++) conns.push(new Conn(0, { presenceKey: `m-${i}` }))
  const t0 = performance.now()
  const origJoined = Conn.prototype.onJoined
  for (const c of conns) {
    c.onJoined = function () {
      origJoined.call(this)
      proto.track(this, { i: Number(this.presenceKey.slice(2)), online_at: new Date().toISOString() })
    }
  }
  // heartbeats as realtime-js sends them: a room that takes minutes to fill must not lose its
  // first members to the server's idle timeout (60 s without a frame from the client)
  startHeartbeats()
  const u0 = usageSnapshot()
  const conn = await openAll(conns, cfg.connectConcurrency)
  progress(`${conns.length} members joined in ${conn.seconds.toFixed(1)} s; waiting for full sync`)
  let lastProgress = performance.now()
  const synced = await waitFor(() => {
    const now = performance.now()
    if (now - lastProgress > 5000) {
      lastProgress = now
      const n = conns.filter((c) => c.syncedAt !== null).length
      progress(`synced ${n}/${conns.length} members; closed by the server ${closedByServer}`)
    }
    return conns.every((c) => c.syncedAt !== null)
  }, cfg.syncTimeoutS * 1000)
  const t1 = performance.now()
  const use = usageDelta(u0, usageSnapshot())
  await sleep(500)
  const views = conns.map((c) => c.presence.size).sort((a, b) => a - b)
  const frames = conns.reduce((a, c) => a + c.presenceFrames, 0)
  const bytes = conns.reduce((a, c) => a + c.presenceBytes, 0)
  const last = Math.max(...conns.map((c) => c.syncedAt ?? t1))
  emit({
    type: 'result',
    connect: conn,
    synced,
    syncedMembers: conns.filter((c) => c.syncedAt !== null).length,
    timeToFullSyncS: (last - t0) / 1000,
    diffFrames: frames,
    diffBytes: bytes,
    diffFramesPerMember: frames / conns.length,
    diffBytesPerMember: bytes / conns.length,
    stateBytesMax: Math.max(...conns.map((c) => c.presenceStateBytes ?? 0)),
    stateBytesTotal: conns.reduce((a, c) => a + (c.presenceStateBytes ?? 0), 0),
    serverRss: serverRssBytes(),
    genCpu: use.genCpu,
    serverCpu: use.srvCpu,
    closedByServer,
    stillOpen: conns.filter((c) => !c.closed).length,
    viewMin: views[0],
    viewMedian: views[Math.floor(views.length / 2)],
    heartbeats: { sent: hbSent, replies: hbReplies },
  })
}

// Slow consumers: a share of the room's subscribers stop reading right after joining; the others'
// latency, the server's RSS and open sockets are reported every second.
async function slow() {
  const slowN = Math.round(cfg.subs * cfg.slowFraction)
  const pubs = buildRooms(1, cfg.subs, slowN)
  pad = 'x'.repeat(cfg.payloadPad)
  const rss0 = serverRssBytes()
  startHeartbeats()
  const conn = await openAll(conns, cfg.connectConcurrency)
  const slowConns = conns.filter((c) => c.slow)
  for (const c of slowConns) c.ws.pause() // stop reading: the kernel buffers fill, then the server's outbox
  progress(`${conns.length} connections joined; ${slowN} stopped reading; publishing ${cfg.rate}/s for ${cfg.durationS} s`)
  const fast = cfg.subs - slowN
  const timeline = []
  const t0 = performance.now()
  const fds0 = serverFds()
  let all = new Samples()
  let counted = 0
  let expectedTotal = 0
  while (performance.now() - t0 < cfg.durationS * 1000) {
    const m = { lo: seq, hi: Infinity, lat: new Samples(1024), counted: 0, ooo: 0 }
    measuring = m
    const u0 = usageSnapshot()
    const sent = await publishUntil(pubs, cfg.rate, performance.now() + 1000)
    m.hi = m.lo + sent
    const u1 = usageSnapshot()
    await waitFor(() => m.counted >= sent * fast, 200)
    measuring = null
    const lat = m.lat.summary()
    for (let i = 0; i < m.lat.n; i++) all.push(m.lat.a[i])
    counted += m.counted
    expectedTotal += sent * fast
    const point = {
      t: (performance.now() - t0) / 1000,
      p50: lat.p50,
      p99: lat.p99,
      max: lat.max,
      delivery: sent ? m.counted / (sent * fast) : 0,
      serverRss: serverRssBytes(),
      serverFds: serverFds(),
      serverCpu: usageDelta(u0, u1).srvCpu,
      genCpu: usageDelta(u0, u1).genCpu,
    }
    timeline.push(point)
    progress(`slow t=${point.t.toFixed(0)}s p99=${(lat.p99 ?? 0).toFixed(1)}ms delivery=${(point.delivery * 100).toFixed(1)}% server RSS ${(point.serverRss / 1048576).toFixed(0)} MiB fds ${point.serverFds}`)
  }
  const rssEnd = serverRssBytes()
  // read whatever the slow sockets still hold: the server closed (1008) or aborted them
  for (const c of slowConns) c.ws.resume()
  await waitFor(() => slowConns.every((c) => c.closed), 5000)
  const dropped = slowConns.filter((c) => c.closed)
  const fastOpen = conns.filter((c) => !c.slow && !c.closed).length
  emit({
    type: 'result',
    connect: conn,
    slow: slowN,
    slowDisconnected: dropped.length,
    slowCloseCodes: dropped.reduce((a, c) => ((a[c.closeCode] = (a[c.closeCode] ?? 0) + 1), a), {}),
    fastStillOpen: fastOpen,
    fastExpected: cfg.subs + pubs.length - slowN,
    delivery: expectedTotal ? counted / expectedTotal : 0,
    latencyMs: all.summary(),
    rssBefore: rss0,
    rssEnd,
    rssPeak: Math.max(...timeline.map((p) => p.serverRss)),
    fdsStart: fds0,
    timeline,
  })
}

// Soak: the rooms publish at a rate set on stdin until told to stop; each report gives the
// interval's publishes, deliveries and latency histogram (bench/soak.py merges the processes').
//   stdin  {"cmd":"rate","value":<deliveries/s>} | {"cmd":"report"} | {"cmd":"stop"}
//   stdout {"type":"ready"} once joined, {"type":"report", ...} per report, {"type":"result"} at the end
// Latencies go to log buckets (bench/loghist.mjs), so memory stays flat for hours.

async function soak() {
  const base = cfg.roomBase ?? 0
  const pubs = buildRooms(cfg.rooms, cfg.subs)
  for (const c of conns) {
    c.room += base
    c.rooms = [c.room]
  }
  pad = 'x'.repeat(cfg.payloadPad)
  startHeartbeats()
  const conn = await openAll(conns, cfg.connectConcurrency)
  emit({ type: 'ready', connections: conns.length, connect: conn })
  let rate = 0
  let stop = false
  let lastSeq = seq
  let totals = { sent: 0, received: 0 }
  soakStats = new LogHist()
  const report = () => {
    const h = soakStats
    soakStats = new LogHist()
    const sent = seq - lastSeq
    lastSeq = seq
    totals.sent += sent
    totals.received += h.n
    return { sent, expected: sent * cfg.subs, received: h.n, hist: h.toJSON(), closedByServer, channelErrors,
             hbSent, hbReplies, open: conns.filter((c) => !c.closed).length }
  }
  const rl = readline.createInterface({ input: process.stdin })
  rl.on('line', (line) => {
    const c = JSON.parse(line)
    if (c.cmd === 'rate') rate = c.value
    else if (c.cmd === 'report') emit({ type: 'report', ...report() })
    else if (c.cmd === 'stop') stop = true
  })
  rl.on('close', () => (stop = true))
  // message j of a rate's run goes out at t0 + j / msgsPerSecond, to room j % rooms
  let t0 = 0
  let j = 0
  let current = -1
  while (!stop) {
    if (rate !== current) {
      current = rate
      t0 = performance.now()
      j = 0
    }
    if (current <= 0) {
      await sleep(50)
      continue
    }
    const due = Math.floor((((performance.now() - t0) / 1000) * current) / cfg.subs)
    for (; j < due; j++) {
      const p = pubs[j % pubs.length]
      if (!p.closed) proto.publish(p, body(p.room))
    }
    await sleep(1)
  }
  const last = report()
  emit({ type: 'result', sent: totals.sent, expected: totals.sent * cfg.subs, received: totals.received, last })
}

const SCENARIOS = { fanout, idle, held, presence, slow, soak }
try {
  await SCENARIOS[cfg.mode]()
} catch (err) {
  emit({ type: 'error', error: String(err && err.stack ? err.stack : err) })
  process.exitCode = 1
}
stopping = true
clearInterval(hbTimer)
for (const c of conns) {
  try {
    c.ws.terminate()
  } catch {}
}
setTimeout(() => process.exit(), 200).unref()
