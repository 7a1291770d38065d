// One gate for every API request the page makes: at most ``max`` in flight, the most urgent
// first (priorities may be functions, read again at each dispatch, so "around the current
// image" follows the user as they scroll), and a pause for the whole page after a 429.

export class Limiter {
  constructor(max) {
    this.max = max;
    this.inFlight = 0;
    this.peak = 0;
    this.waiting = [];
    this.sequence = 0;
    this.pausedUntil = 0;
    this.timer = null;
  }

  setMax(max) {
    this.max = Math.max(1, max);
    this.pump();
  }

  /** Resolves with a release function once a slot is free and this waiter is the most urgent. */
  acquire(priority = 0, signal = undefined) {
    return new Promise((resolve, reject) => {
      const waiter = { priority, order: this.sequence++, resolve, reject, signal };
      if (signal) {
        if (signal.aborted) { reject(signal.reason); return; }
        signal.addEventListener('abort', () => {
          const i = this.waiting.indexOf(waiter);
          if (i >= 0) { this.waiting.splice(i, 1); reject(signal.reason); }
        }, { once: true });
      }
      this.waiting.push(waiter);
      this.pump();
    });
  }

  /** The server asked to wait (429 Retry-After): nothing new starts before then. */
  pauseFor(seconds) {
    this.pausedUntil = Math.max(this.pausedUntil, performance.now() + seconds * 1000);
    this.pump();
  }

  pump() {
    const now = performance.now();
    if (now < this.pausedUntil) {
      if (!this.timer) {
        this.timer = setTimeout(() => { this.timer = null; this.pump(); }, this.pausedUntil - now + 1);
      }
      return;
    }
    while (this.inFlight < this.max && this.waiting.length) {
      let best = 0; let bestKey = Infinity; let bestOrder = Infinity;
      for (let i = 0; i < this.waiting.length; i += 1) {
        const w = this.waiting[i];
        const key = typeof w.priority === 'function' ? w.priority() : w.priority;
        if (key < bestKey || (key === bestKey && w.order < bestOrder)) { best = i; bestKey = key; bestOrder = w.order; }
      }
      const [waiter] = this.waiting.splice(best, 1);
      this.inFlight += 1;
      this.peak = Math.max(this.peak, this.inFlight);
      let released = false;
      waiter.resolve(() => {
        if (released) return;
        released = true;
        this.inFlight -= 1;
        this.pump();
      });
    }
  }
}
