// Clients for bench/flood.py (limits under a flood).  Two modes, one process each:
//
//   node flood_client.mjs '{"mode":"legit", ...}'    well-behaved subscribers + paced publishers
//   node flood_client.mjs '{"mode":"abuser", ...}'   one connection flooding as fast as it can
//
// Both speak the Supabase Realtime protocol (protocol.md §1.5, §1.6).  Timestamps are epoch
// milliseconds with sub-ms resolution (performance.timeOrigin + performance.now()) so flood.py can
// line the two processes up on one clock.  Output: JSON lines on stdout; the legit process also
// writes its raw samples to cfg.outFile.
import { writeFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import WebSocket from 'ws'

const cfg = JSON.parse(process.argv[2])
const now = () => performance.timeOrigin + performance.now()
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

// --- protocol helpers ---------------------------------------------------------------------------
function url(vsn) {
  return `ws://${cfg.host}:${cfg.port}/realtime/v1/websocket?apikey=${cfg.apikey}&vsn=${vsn}`
}
function textFrame(vsn, joinRef, ref, topic, event, payload) {
  return vsn === '2.0.0'
    ? JSON.stringify([joinRef, ref, topic, event, payload])
    : JSON.stringify({ topic, event, payload, ref, join_ref: joinRef })
}
function parseText(vsn, text) {
  const m = JSON.parse(text)
  return vsn === '2.0.0' ? { join_ref: m[0], ref: m[1], topic: m[2], event: m[3], payload: m[4] } : m
}
function joinPayload({ presenceKey = null } = {}) {
  return {
    config: {
      broadcast: { self: false, ack: false },
      presence: { key: presenceKey ?? '', enabled: presenceKey !== null },
      postgres_changes: [],
      private: false,
    },
    access_token: cfg.apikey,
  }
}
// kind 3 user broadcast push (protocol.md §1.6): no ref, no metadata, JSON payload
function kind3(joinRef, topic, event, body) {
  const jr = Buffer.from(joinRef)
  const t = Buffer.from(topic)
  const e = Buffer.from(event)
  const head = Buffer.from([3, jr.length, 0, t.length, e.length, 0, 1])
  return Buffer.concat([head, jr, t, e, Buffer.from(body)])
}
const asBuffer = (d) => (Buffer.isBuffer(d) ? d : Array.isArray(d) ? Buffer.concat(d) : Buffer.from(d))

// "ts" and "seq" are read with a byte search, not a JSON parse, to keep receivers cheap
const TS = Buffer.from('"ts":')
const SEQ = Buffer.from('"seq":')
const SPAM = Buffer.from('"spam":')
function numberAt(buf, at) {
  let v = 0
  let i = at
  for (; i < buf.length && buf[i] >= 48 && buf[i] <= 57; i++) v = v * 10 + (buf[i] - 48)
  if (buf[i] === 46) {
    let scale = 0.1
    for (i++; i < buf.length && buf[i] >= 48 && buf[i] <= 57; i++, scale /= 10) v += (buf[i] - 48) * scale
  }
  return v
}
function stamp(buf) {
  const i = buf.indexOf(TS)
  if (i < 0) return null
  const j = buf.indexOf(SEQ, i)
  return j < 0 ? null : [numberAt(buf, i + TS.length), numberAt(buf, j + SEQ.length)]
}

// --- legit: N subscribers per room and one paced publisher per room ------------------------------
async function legit() {
  const vsn = '2.0.0' // realtime-js: publishes as binary kind 3
  const topicOf = (r) => `realtime:room-${r}`
  const samples = [] // flat: sendTs, latencyMs, room
  const sends = [] // flat: sendTs, room  (only sends made while the publisher's channel was joined)
  const skipped = [] // flat: dueTs, room  (ticks not sent because the channel was shut down)
  const events = [] // {t, role, room, kind, text}
  const lag = [] // flat: t, lagMs  (this process's own event-loop delay, to prove it is not the bottleneck)
  let closedSockets = 0
  let spam = 0

  function open(room, role) {
    return new Promise((resolve, reject) => {
      const c = { room, role, joined: false, joinRef: 1, ws: null }
      const ws = new WebSocket(url(vsn), { perMessageDeflate: false, skipUTF8Validation: true })
      c.ws = ws
      ws.binaryType = 'nodebuffer'
      c.join = () => {
        c.joinRef++
        ws.send(textFrame(vsn, String(c.joinRef), 'j' + c.joinRef, topicOf(room), 'phx_join', joinPayload()))
      }
      ws.on('open', () => c.join())
      ws.on('message', (data, isBinary) => {
        const buf = asBuffer(data)
        const st = buf.length > 16 ? stamp(buf) : null
        if (st !== null) {
          samples.push(st[0], now() - st[0], room)
          return
        }
        if (isBinary || buf.includes(SPAM)) {
          spam++ // the abuser's messages, when it floods a room legit clients are in
          return
        }
        const m = parseText(vsn, buf.toString())
        if (m.event === 'phx_reply' && m.ref === 'j' + c.joinRef) {
          if (m.payload.status === 'ok') {
            if (!c.joined && resolve) resolve(c)
            resolve = null
            c.joined = true
          } else {
            events.push({ t: now(), role, room, kind: 'join_error', text: JSON.stringify(m.payload.response) })
            setTimeout(() => c.join(), 1000)
          }
        } else if (m.event === 'system' && m.payload.status === 'error') {
          events.push({ t: now(), role, room, kind: 'system', text: m.payload.message })
        } else if (m.event === 'phx_close') {
          c.joined = false
          events.push({ t: now(), role, room, kind: 'phx_close', text: '' })
          // a well-behaved client backs off before rejoining a channel the server shut down
          setTimeout(() => c.join(), 1000)
        }
      })
      ws.on('close', (code) => {
        c.joined = false
        if (!stopping) {
          closedSockets++
          events.push({ t: now(), role, room, kind: 'socket_close', text: String(code) })
        }
        if (resolve) reject(new Error(`closed ${code} before join`))
      })
      ws.on('error', (err) => {
        if (resolve) reject(err)
      })
    })
  }

  let stopping = false
  const subs = []
  const pubs = []
  for (let r = 0; r < cfg.rooms; r++) {
    for (let i = 0; i < cfg.subsPerRoom; i++) subs.push(open(r, 'sub'))
    pubs.push(open(r, 'pub'))
  }
  const all = [...(await Promise.all(subs)), ...(await Promise.all(pubs))]
  const publishers = all.filter((c) => c.role === 'pub')

  // heartbeats (protocol.md §2.1) so the idle timeout never interferes
  const hb = setInterval(() => {
    for (const c of all) if (c.ws.readyState === WebSocket.OPEN) c.ws.send(textFrame(vsn, null, 'hb', 'phoenix', 'heartbeat', {}))
  }, 20000)

  // own event-loop delay, sampled every 10 ms
  let lagLast = now()
  const lagTimer = setInterval(() => {
    const t = now()
    lag.push(t, Math.max(0, t - lagLast - 10))
    lagLast = t
  }, 10)

  const t0 = now()
  emit({ type: 'ready', t: t0, connections: all.length })
  const end = t0 + cfg.durationS * 1000
  const pad = 'x'.repeat(cfg.pad ?? 64)
  let seq = 0
  // message k of room r is due at t0 + (k + r / rooms) / rate: rooms are staggered, no drift
  const next = publishers.map((_, r) => 0)
  await new Promise((resolve) => {
    const tick = () => {
      const t = now()
      for (let r = 0; r < publishers.length; r++) {
        const p = publishers[r]
        while (true) {
          const due = t0 + ((next[r] + r / publishers.length) / cfg.ratePerRoom) * 1000
          if (due > t || due >= end) break
          next[r]++
          if (!p.joined || p.ws.readyState !== WebSocket.OPEN) {
            skipped.push(due, r)
            continue
          }
          const ts = now()
          p.ws.send(kind3(String(p.joinRef), topicOf(r), 'm', `{"ts":${ts.toFixed(3)},"seq":${seq++},"pad":"${pad}"}`))
          sends.push(ts, r)
        }
      }
      if (t >= end) return resolve()
      setTimeout(tick, 1)
    }
    tick()
  })
  await sleep(cfg.graceMs ?? 1000) // let in-flight deliveries land
  stopping = true
  clearInterval(hb)
  clearInterval(lagTimer)
  for (const c of all) c.ws.close(1000)
  writeFileSync(cfg.outFile, JSON.stringify({ t0, end, subsPerRoom: cfg.subsPerRoom, samples, sends, skipped, events, lag, closedSockets, spam }))
  emit({ type: 'done', samples: samples.length / 3, sends: sends.length / 2 })
  process.exit(0)
}

// --- abuser: one connection, flooding as fast as the socket takes it ----------------------------
async function abuser() {
  const variant = cfg.variant
  const vsn = variant === 'v1' ? '1.0.0' : '2.0.0'
  const topic = cfg.topic
  const res = {
    variant,
    vsn,
    frames: 0,
    bytes: 0,
    replies: 0,
    unmatched: 0,
    joinsOk: 0,
    joinErrors: {},
    systemErrors: {},
    phxClose: 0,
    firstSystemError: null,
    firstJoinError: null,
    closeCode: null,
    closeReason: null,
    closeAt: null,
  }
  let finished = false
  const ws = new WebSocket(url(vsn), { perMessageDeflate: false, skipUTF8Validation: true })
  ws.binaryType = 'nodebuffer'
  let joinRef = 1
  const presenceKey = variant === 'presence' ? 'abuser' : null
  const joinFrame = () => textFrame(vsn, String(++joinRef), 'j' + joinRef, topic, 'phx_join', joinPayload({ presenceKey }))
  let joinedOnce = null
  const joined = new Promise((r) => (joinedOnce = r))
  let start = null
  let pendingRejoin = false
  ws.on('open', () => ws.send(joinFrame()))
  ws.on('message', (data, isBinary) => {
    res.replies++
    if (isBinary) return
    const m = parseText(vsn, data.toString())
    const t = start === null ? 0 : now() - start
    if (m.event === 'phx_reply' && typeof m.ref === 'string' && m.ref.startsWith('j')) {
      if (m.payload.status === 'ok') {
        res.joinsOk++
        if (joinedOnce) joinedOnce()
        joinedOnce = null
      } else {
        const reason = m.payload.response?.reason ?? JSON.stringify(m.payload.response)
        res.joinErrors[reason] = (res.joinErrors[reason] ?? 0) + 1
        if (res.firstJoinError === null) res.firstJoinError = { t, reason }
      }
    } else if (m.event === 'phx_reply' && m.payload?.response?.reason === 'unmatched topic') {
      res.unmatched++
    } else if (m.event === 'system' && m.payload.status === 'error') {
      const text = m.payload.message
      res.systemErrors[text] = (res.systemErrors[text] ?? 0) + 1
      if (res.firstSystemError === null) res.firstSystemError = { t, text }
    } else if (m.event === 'phx_close' && m.topic === topic) {
      res.phxClose++
      // a persistent abuser rejoins at once (the join flood rejoins anyway)
      if (variant !== 'join') pendingRejoin = true
    }
  })
  ws.on('close', (code, reason) => {
    if (res.closeCode === null && !finished) {
      res.closeCode = code
      res.closeReason = reason.toString()
      res.closeAt = start === null ? 0 : now() - start
    }
  })
  ws.on('error', () => {})
  await joined
  if (cfg.startAt) await sleep(Math.max(0, cfg.startAt - now()))

  const spam = 'y'.repeat(cfg.pad ?? 100)
  let n = 0
  const frameFor = {
    v2: () => kind3(String(joinRef), topic, 'spam', `{"n":${n},"spam":"${spam}"}`),
    v2room: () => kind3(String(joinRef), topic, 'spam', `{"n":${n},"spam":"${spam}"}`),
    v1: () =>
      `{"topic":"${topic}","event":"broadcast","payload":{"type":"broadcast","event":"spam","payload":{"n":${n},"spam":"${spam}"}},"ref":null,"join_ref":"${joinRef}"}`,
    presence: () => textFrame(vsn, String(joinRef), 'p' + n, topic, 'presence', { type: 'presence', event: 'track', payload: { n, spam } }),
    join: () => joinFrame(),
  }[variant]
  start = now()
  emit({ type: 'start', t: start })
  const end = start + cfg.durationS * 1000
  const high = 1 << 20
  await new Promise((resolve) => {
    const pump = () => {
      if (ws.readyState !== WebSocket.OPEN && res.closeCode === null && ws._closeFrameReceived) {
        // the server's close frame arrived (the TCP close may lag behind our queued frames)
        res.closeCode = ws._closeCode
        res.closeReason = String(ws._closeMessage ?? '')
        res.closeAt = now() - start
      }
      if (ws.readyState !== WebSocket.OPEN || now() >= end) return resolve()
      let burst = 0
      while (ws.bufferedAmount < high && burst < 2000) {
        if (pendingRejoin) {
          pendingRejoin = false
          const f = joinFrame()
          ws.send(f)
          res.frames++
          res.bytes += f.length
        }
        const f = frameFor()
        n++
        ws.send(f)
        res.frames++
        res.bytes += f.length
        burst++
      }
      setImmediate(pump)
    }
    pump()
  })
  const stoppedAt = now()
  res.sendSeconds = (stoppedAt - start) / 1000
  res.framesPerSecond = res.frames / res.sendSeconds
  emit({ type: 'stopped', t: stoppedAt })
  await sleep(300)
  finished = true
  if (ws.readyState === WebSocket.OPEN) ws.close(1000)
  emit({ type: 'result', t: stoppedAt, ...res })
  process.exit(0)
}

if (cfg.mode === 'legit') await legit()
else if (cfg.mode === 'abuser') await abuser()
else throw new Error(`unknown mode ${cfg.mode}`)
