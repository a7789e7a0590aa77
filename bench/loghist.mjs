// Latencies in log buckets (bucket i ≥ 1 holds (0.01·1.04^(i-1), 0.01·1.04^i] ms), as
// bench/common.py's LogHist reads them: memory stays flat however many samples are added.
const HIST_LO_MS = 0.01
const LOG_GROWTH = Math.log(1.04)

export class LogHist {
  constructor() {
    this.b = new Map()
    this.n = 0
    this.max = 0
  }
  add(ms) {
    const i = ms <= HIST_LO_MS ? 0 : Math.ceil(Math.log(ms / HIST_LO_MS) / LOG_GROWTH)
    this.b.set(i, (this.b.get(i) ?? 0) + 1)
    this.n++
    if (ms > this.max) this.max = ms
  }
  toJSON() {
    return { b: Object.fromEntries(this.b), n: this.n, max: this.max }
  }
}
