// A supabase-js subscriber using clients/js/resumable.mjs, for test_resume_clients.py.
// argv: <project url> <anon key> <sub-topic> [<table>].  stdout, one JSON object a line:
//   {"type":"status","status":…}  {"type":"msg","i":…,"meta":…}  {"type":"system","payload":…}
// With a table it also listens to the table's INSERTs: {"type":"row","i":<new.id>,"ref":…}.
import { createRequire } from 'node:module'
import { resumable } from '../../clients/js/resumable.mjs'

// the official clients installed for the conformance tests (tests/js/node_modules)
const require = createRequire(new URL('../js/package.json', import.meta.url))
const { createClient } = require('@supabase/supabase-js')
const WebSocket = require('ws')

console.log = (...args) => console.error(...args)
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const [url, key, topic, table] = process.argv.slice(2)

const supabase = createClient(url, key, {
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  realtime: { transport: WebSocket, heartbeatIntervalMs: 1000, reconnectAfterMs: () => 500 },
})
const channel = resumable(supabase.channel(topic))
  .on('broadcast', { event: 'n' }, (msg) => emit({ type: 'msg', i: msg.payload.i, meta: msg.meta ?? null }))
  .on('system', {}, (payload) => emit({ type: 'system', payload }))
if (table) {
  channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table },
    (payload, ref) => emit({ type: 'row', i: payload.new.id, ref: ref ?? null }))
}
channel.subscribe((status) => emit({ type: 'status', status }))
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
