// A long-lived Node peer that drives the OFFICIAL Supabase Realtime JS clients
// (supabase-js / realtime-js 2.119.1) on behalf of the Python conformance tests.
//
// Protocol (one JSON object per line):
//   stdin  -> commands  {"id": <any>, "cmd": "<name>", ...arguments}
//   stdout <- events    {"type": "<kind>", ...fields}
// Every command is answered by exactly one {"type":"result","id":..,"ok":bool,"value"|"error"}.
// Asynchronous client activity is reported as it happens:
//   {"type":"status","client","ch","status":"SUBSCRIBED|CHANNEL_ERROR|CLOSED|TIMED_OUT","error","cause"}
//   {"type":"broadcast","client","ch","event","payload","binary","meta"}   (binary payloads hex)
//   {"type":"presence","client","ch","kind":"sync|join|leave","key","presences","state"}
//   {"type":"system","client","ch","payload"}
//   {"type":"postgres_changes","client","ch","payload"}                    (with "postgres" bindings)
//   {"type":"committed","client","ch","body"|"error"}                      (subscribe with "commitUrl")
//   {"type":"log","client","kind","msg"}                                   (only with "log": true)
// stdout carries nothing else: library console output is redirected to stderr.

import readline from 'node:readline'
import { createClient } from '@supabase/supabase-js'
import { RealtimeClient } from '@supabase/realtime-js'
import WebSocket from 'ws'

// Libraries may print warnings with console.log/warn; keep stdout a clean event stream.
console.log = (...args) => console.error(...args)
console.info = (...args) => console.error(...args)
console.warn = (...args) => console.error(...args)

/** @type {Map<string, {realtime: RealtimeClient, supabase: any}>} */
const clients = new Map()
/** @type {Map<string, {client: string, channel: any}>} */
const channels = new Map()

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function toHex(buf) {
  const bytes = buf instanceof ArrayBuffer ? new Uint8Array(buf) : new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength)
  return Buffer.from(bytes).toString('hex')
}

function fromHex(hex) {
  const b = Buffer.from(hex, 'hex')
  // A standalone ArrayBuffer (not a view into Node's pooled buffer), as an app would pass.
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)
}

function isBinary(v) {
  return v instanceof ArrayBuffer || ArrayBuffer.isView(v)
}

function describeError(err) {
  if (err === undefined || err === null) return null
  if (err instanceof Error) return err.message
  try {
    return JSON.stringify(err)
  } catch {
    return String(err)
  }
}

function getClient(name) {
  const c = clients.get(name)
  if (!c) throw new Error(`unknown client ${name}`)
  return c
}

function getChannel(name) {
  const c = channels.get(name)
  if (!c) throw new Error(`unknown channel ${name}`)
  return c
}

function makeClient(cmd) {
  if (clients.has(cmd.client)) throw new Error(`client ${cmd.client} exists`)
  const logger = cmd.log
    ? (kind, msg, data) => emit({ type: 'log', client: cmd.client, kind, msg, data: safeJson(data) })
    : undefined
  const timeout = cmd.timeout ?? 10000
  // cmd.host: the Host header the upgrade carries (a tenant's name), the socket still going to cmd.url
  const transport = cmd.host
    ? class extends WebSocket {
        constructor(url, protocols, opts) {
          super(url, protocols, { ...(opts || {}), headers: { ...((opts || {}).headers || {}), Host: cmd.host } })
        }
      }
    : WebSocket
  const tokenFn = cmd.token !== undefined && cmd.token !== null ? async () => cmd.token : undefined
  let realtime
  let supabase = null
  if (cmd.kind === 'supabase') {
    // Exactly what an application does: createClient(projectUrl, key).channel(...)
    supabase = createClient(cmd.url, cmd.key, {
      auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
      realtime: { transport, timeout, logger, ...(cmd.vsn ? { vsn: cmd.vsn } : {}) },
      ...(tokenFn ? { accessToken: tokenFn } : {}),
    })
    realtime = supabase.realtime
  } else if (cmd.kind === 'realtime') {
    realtime = new RealtimeClient(cmd.url, {
      params: { apikey: cmd.key },
      transport,
      timeout,
      logger,
      vsn: cmd.vsn ?? '2.0.0',
      ...(tokenFn ? { accessToken: tokenFn } : {}),
    })
  } else {
    throw new Error(`unknown client kind ${cmd.kind}`)
  }
  clients.set(cmd.client, { realtime, supabase })
  return { endpoint: realtime.endpointURL(), vsn: realtime.vsn }
}

async function primeToken(realtime) {
  // supabase-js fetches the accessToken() value as soon as the client is created, so the
  // first join already carries it. A bare RealtimeClient only starts fetching on connect(),
  // after subscribe() has queued the join; do what supabase-js does so both variants send
  // the token as the join's access_token.
  await realtime.setAuth()
}

function safeJson(v) {
  if (v === undefined) return null
  try {
    return JSON.parse(JSON.stringify(v, (_k, x) => (isBinary(x) ? { $hex: toHex(x) } : x)))
  } catch {
    return String(v)
  }
}

function makeChannel(cmd) {
  const existing = channels.get(cmd.ch)
  if (existing) return existing
  const { realtime, supabase } = getClient(cmd.client)
  const opts = { config: cmd.config ?? {} }
  const channel = supabase ? supabase.channel(cmd.topic, opts) : realtime.channel(cmd.topic, opts)
  const base = { client: cmd.client, ch: cmd.ch }
  channel.on('broadcast', { event: '*' }, (msg) => {
    const binary = isBinary(msg.payload)
    emit({
      type: 'broadcast',
      ...base,
      event: msg.event,
      payload: binary ? toHex(msg.payload) : msg.payload,
      binary,
      meta: msg.meta ?? null,
      keys: Object.keys(msg).sort(),
    })
  })
  channel.on('system', {}, (payload) => emit({ type: 'system', ...base, payload: safeJson(payload) }))
  for (const filter of cmd.postgres ?? []) {
    // Bindings are sent in the join; realtime-js then checks the server's echo (protocol.md §3.4).
    channel.on('postgres_changes', filter, (payload) =>
      emit({ type: 'postgres_changes', ...base, payload: safeJson(payload) }),
    )
  }
  if (cmd.presence) {
    // Registering presence listeners is what makes realtime-js send presence.enabled=true.
    channel.on('presence', { event: 'sync' }, () =>
      emit({ type: 'presence', ...base, kind: 'sync', state: safeJson(channel.presenceState()) }),
    )
    channel.on('presence', { event: 'join' }, ({ key, newPresences }) =>
      emit({ type: 'presence', ...base, kind: 'join', key, presences: safeJson(newPresences), state: safeJson(channel.presenceState()) }),
    )
    channel.on('presence', { event: 'leave' }, ({ key, leftPresences }) =>
      emit({ type: 'presence', ...base, kind: 'leave', key, presences: safeJson(leftPresences), state: safeJson(channel.presenceState()) }),
    )
  }
  const entry = { client: cmd.client, channel }
  channels.set(cmd.ch, entry)
  return entry
}

function broadcastArgs(cmd) {
  const payload = cmd.binary !== undefined ? fromHex(cmd.binary) : cmd.payload
  const args = { type: cmd.kind ?? 'broadcast', event: cmd.event }
  if (payload !== undefined) args.payload = payload
  if (cmd.persist !== undefined) args.persist = cmd.persist
  return args
}

const handlers = {
  async client(cmd) {
    const info = makeClient(cmd)
    if (cmd.token !== undefined && cmd.token !== null) await primeToken(getClient(cmd.client).realtime)
    return info
  },
  async channel(cmd) {
    makeChannel(cmd)
    return null
  },
  async subscribe(cmd) {
    const { client, channel } = makeChannel(cmd)
    channel.subscribe((status, err) => {
      if (status === 'SUBSCRIBED' && cmd.commitUrl) {
        // What an app does to race its own subscription: write to the database from inside the
        // SUBSCRIBED callback (here a GET to the test's endpoint, which commits a row, then
        // answers); {"type":"committed","client","ch","body"|"error"} reports the outcome.
        fetch(cmd.commitUrl)
          .then((r) => r.text())
          .then(
            (body) => emit({ type: 'committed', client, ch: cmd.ch, body }),
            (e) => emit({ type: 'committed', client, ch: cmd.ch, error: describeError(e) }),
          )
      }
      emit({ type: 'status', client, ch: cmd.ch, status, error: describeError(err), cause: safeJson(err?.cause) })
    }, cmd.timeout)
    return null
  },
  async send(cmd) {
    const { channel } = getChannel(cmd.ch)
    return await channel.send(broadcastArgs(cmd), cmd.timeout ? { timeout: cmd.timeout } : {})
  },
  async sendBurst(cmd) {
    // Issue every send() synchronously, in order, before awaiting any of them.
    const { channel } = getChannel(cmd.ch)
    const pending = []
    for (let i = 0; i < cmd.count; i++) {
      pending.push(channel.send({ type: 'broadcast', event: cmd.event, payload: { i, tag: cmd.tag ?? null } }))
    }
    return await Promise.all(pending)
  },
  async httpSend(cmd) {
    const { channel } = getChannel(cmd.ch)
    const payload = cmd.binary !== undefined ? fromHex(cmd.binary) : cmd.payload
    const opts = cmd.timeout ? { timeout: cmd.timeout } : {}
    if (cmd.persist !== undefined) opts.persist = cmd.persist
    return await channel.httpSend(cmd.event, payload, opts)
  },
  async track(cmd) {
    const { channel } = getChannel(cmd.ch)
    return await channel.track(cmd.payload ?? {})
  },
  async untrack(cmd) {
    const { channel } = getChannel(cmd.ch)
    return await channel.untrack()
  },
  async unsubscribe(cmd) {
    const { channel } = getChannel(cmd.ch)
    return await channel.unsubscribe()
  },
  async removeChannel(cmd) {
    const { client, channel } = getChannel(cmd.ch)
    const { realtime } = getClient(client)
    const status = await realtime.removeChannel(channel)
    channels.delete(cmd.ch)
    return status
  },
  async presenceState(cmd) {
    const { channel } = getChannel(cmd.ch)
    return safeJson(channel.presenceState())
  },
  async channelState(cmd) {
    const { channel } = getChannel(cmd.ch)
    return channel.state
  },
  async setAuth(cmd) {
    const { realtime } = getClient(cmd.client)
    await realtime.setAuth(cmd.token ?? null)
    return realtime.accessTokenValue
  },
  async disconnect(cmd) {
    const { realtime } = getClient(cmd.client)
    for (const [name, entry] of channels) {
      if (entry.client === cmd.client) channels.delete(name)
    }
    clients.delete(cmd.client)
    for (const channel of realtime.getChannels()) channel.teardown()
    return await realtime.disconnect()
  },
  async ping() {
    return 'pong'
  },
}

async function run(cmd) {
  const handler = handlers[cmd.cmd]
  try {
    if (!handler) throw new Error(`unknown command ${cmd.cmd}`)
    const value = await handler(cmd)
    emit({ type: 'result', id: cmd.id ?? null, ok: true, value: safeJson(value) })
  } catch (err) {
    emit({ type: 'result', id: cmd.id ?? null, ok: false, error: describeError(err) })
  }
}

async function shutdown(code) {
  for (const { realtime } of clients.values()) {
    try {
      await realtime.disconnect()
    } catch {
      // Best effort: the process is exiting anyway.
    }
  }
  process.exit(code)
}

process.on('unhandledRejection', (reason) => emit({ type: 'error', error: describeError(reason) }))
process.on('uncaughtException', (err) => emit({ type: 'error', error: describeError(err) }))

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', (line) => {
  if (!line.trim()) return
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (err) {
    emit({ type: 'result', id: null, ok: false, error: `bad command line: ${describeError(err)}` })
    return
  }
  if (cmd.cmd === 'exit') {
    shutdown(0)
    return
  }
  run(cmd)
})
rl.on('close', () => shutdown(0))
emit({ type: 'ready', node: process.version })
