// Node `ws` raw broadcast: the non-Python reference.  Same protocol subset as
// raw_websockets.py: phx_join and heartbeat are answered, every other text frame is sent
// verbatim to the other members of the sender's room (the broadcast loop of ws's README).
//
//   node bench/peers/ws_server.mjs PORT
import { WebSocketServer } from 'ws'

const port = Number(process.argv[2])
const rooms = new Map()
const reply = (topic, ref, response) => JSON.stringify({ topic, event: 'phx_reply', payload: { status: 'ok', response }, ref })
const JOIN = Buffer.from('"phx_join"')
const HEARTBEAT = Buffer.from('"heartbeat"')

const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, skipUTF8Validation: false })
wss.on('connection', (ws) => {
  let room = null
  ws.on('message', (data, isBinary) => {
    if (isBinary) return
    if (room !== null && data.indexOf(JOIN) < 0 && data.indexOf(HEARTBEAT) < 0) {
      for (const c of room) if (c !== ws && c.readyState === 1) c.send(data, { binary: false })
      return
    }
    const msg = JSON.parse(data.toString())
    if (msg.event === 'phx_join') {
      room = rooms.get(msg.topic)
      if (!room) rooms.set(msg.topic, (room = new Set()))
      room.add(ws)
      ws.send(reply(msg.topic, msg.ref, { postgres_changes: [] }))
    } else if (msg.event === 'heartbeat') {
      ws.send(reply('phoenix', msg.ref, {}))
    }
  })
  ws.on('close', () => room && room.delete(ws))
  ws.on('error', () => {})
})
wss.on('listening', () => console.log(`ws reference server on ${port}`))
