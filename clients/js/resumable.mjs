// resumable(channel): gap-free resume for a realtime-js (supabase-js) channel on a
// realtime-channels server (docs/protocol.md §4.10). Plain ES module, no build step.
//
//   import { resumable } from './resumable.mjs'
//   const channel = resumable(supabase.channel('room1'))
//   channel.on('broadcast', { event: 'move' }, onMove).subscribe()
//
// Call it before subscribe(). It asks for offsets in the join payload, remembers the last
// broadcast offset/epoch (from `meta`) and the last postgres_changes offset (the callbacks'
// second argument, `ref`), and makes every automatic rejoin resume from them, so callbacks
// see each message once. `channel.resumePosition()` returns what it has seen so far.

export function resumable(channel) {
  const adapter = channel.channelAdapter
  const phx = adapter.getChannel()
  const seen = { broadcast: null, postgres: null }

  // Every rejoin resends joinPush.payload(): compute it from what was seen, each time.
  const withResume = (payload) => {
    const config = { ...(payload.config || {}) }
    config.broadcast = { ...(config.broadcast || {}), resume: seen.broadcast ? { ...seen.broadcast } : true }
    config.postgres_changes_options = {
      ...(config.postgres_changes_options || {}),
      resume: seen.postgres ? { offset: seen.postgres } : true,
    }
    return { ...payload, config }
  }
  const update = adapter.updateJoinPayload.bind(adapter)
  adapter.updateJoinPayload = (payload) => {
    update(payload)
    const base = phx.joinPush.payload
    phx.joinPush.payload = () => withResume(base())
  }
  adapter.updateJoinPayload({})

  // Observe every message before the channel's listeners do (stale joins are filtered earlier).
  const trigger = phx.trigger.bind(phx)
  phx.trigger = (event, payload, ref, joinRef) => {
    if (event === 'broadcast') {
      const meta = payload && payload.meta
      if (meta && typeof meta.offset === 'number' && typeof meta.epoch === 'string') {
        seen.broadcast = { epoch: meta.epoch, offset: meta.offset }
      }
    } else if (event === 'postgres_changes' && typeof ref === 'string' && ref) {
      seen.postgres = ref.split(';')[0]
    } else if (event === 'system' && payload) {
      const gap = payload.gap
      if (gap && payload.extension === 'broadcast' && typeof gap.next === 'number') {
        // nothing before gap.next can come any more: resume after it next time
        seen.broadcast = { epoch: gap.epoch, offset: gap.next - 1 }
      }
      if (payload.snapshot && typeof payload.snapshot.offset === 'string') {
        seen.postgres = payload.snapshot.offset // a snapshot's rows: resume after it, not again
      }
    }
    return trigger(event, payload, ref, joinRef)
  }

  channel.resumePosition = () => ({ ...seen })
  return channel
}
