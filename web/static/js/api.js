// The HTTP API client: sign-in, refresh-token rotation, and every request through the limiter.
//
// The access token lives in memory only. The refresh token is kept in sessionStorage, so a
// reload of the tab keeps the session while a closed tab ends it; it is per tab on purpose:
// two tabs rotating one shared refresh token would look like token theft to the server, which
// then revokes the whole family.

import { Limiter } from './limiter.js';

const REFRESH_KEY = 'pacsnode.refresh';
const REFRESH_MARGIN_S = 60;

export class ApiError extends Error {
  constructor(status, title, detail, url) {
    super(detail || title || `HTTP ${status}`);
    this.status = status;
    this.title = title;
    this.url = url;
  }
}

export class SessionEnded extends Error {}

/** A finished response: status, headers and the whole body, already read. */
export class Reply {
  constructor(response, bytes) {
    this.status = response.status;
    this.ok = response.ok;
    this.headers = response.headers;
    this.bytes = bytes;
  }

  arrayBuffer() { return this.bytes; }

  json() { return this.bytes && this.bytes.byteLength ? JSON.parse(new TextDecoder().decode(this.bytes)) : null; }
}

function decodeClaims(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return {};
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); reject(signal.reason); }, { once: true });
  });
}

async function problemOf(response) {
  try {
    const body = await response.json();
    return { title: body.title, detail: body.detail || body.reason || body.message };
  } catch {
    return { title: response.statusText, detail: '' };
  }
}

export class Api {
  constructor({ maxConcurrent = 4 } = {}) {
    this.limiter = new Limiter(maxConcurrent);
    this.access = null;
    this.claims = {};
    this.refreshing = null;
    this.refreshTimer = null;
    this.listeners = new Set();
    this.stats = { requests: 0, retries: 0, throttled: 0 };
  }

  get user() { return this.access ? { name: this.claims.sub, role: this.claims.role } : null; }

  onSessionChange(listener) { this.listeners.add(listener); }

  emit(reason) { for (const l of this.listeners) l(this.user, reason); }

  async login(username, password) {
    const response = await fetch('api/token/', {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password }), cache: 'no-store',
    });
    if (!response.ok) {
      const p = await problemOf(response);
      if (response.status === 429) {
        throw new ApiError(429, p.title, `Too many failed sign-ins; try again in ${response.headers.get('Retry-After') || 'a few'} s.`);
      }
      throw new ApiError(response.status, p.title, response.status === 401 ? 'User name or password not accepted.' : p.detail);
    }
    this.adopt(await response.json());
    this.emit('signed-in');
  }

  /** At page load: a refresh token kept by this tab opens the session again. */
  async restore() {
    if (!sessionStorage.getItem(REFRESH_KEY)) return false;
    try {
      await this.refresh();
      return true;
    } catch {
      return false;
    }
  }

  adopt(pair) {
    this.access = pair.access;
    this.claims = decodeClaims(pair.access);
    sessionStorage.setItem(REFRESH_KEY, pair.refresh);
    clearTimeout(this.refreshTimer);
    const lifetime = this.claims.exp && this.claims.iat ? this.claims.exp - this.claims.iat : (pair.expiresIn || 900);
    const delay = Math.max(5, lifetime - REFRESH_MARGIN_S) * 1000;
    this.refreshTimer = setTimeout(() => this.refresh().catch(() => {}), delay);
  }

  /** One refresh at a time: every caller that needs one waits for the same exchange. */
  refresh() {
    if (this.refreshing) return this.refreshing;
    this.refreshing = (async () => {
      const token = sessionStorage.getItem(REFRESH_KEY);
      if (!token) throw new SessionEnded('Please sign in.');
      let response;
      try {
        response = await fetch('api/token/refresh/', {
          method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ refresh: token }), cache: 'no-store',
        });
      } catch {
        throw new ApiError(0, 'Network error', 'The server cannot be reached.');
      }
      if (!response.ok) {
        const p = await problemOf(response);
        this.end(`Your session has ended (${p.detail || 'refresh refused'}). Please sign in again.`);
        throw new SessionEnded(p.detail);
      }
      this.adopt(await response.json());
      this.emit('refreshed');
    })().finally(() => { this.refreshing = null; });
    return this.refreshing;
  }

  end(message) {
    clearTimeout(this.refreshTimer);
    this.access = null;
    this.claims = {};
    sessionStorage.removeItem(REFRESH_KEY);
    this.emit(message || 'signed-out');
  }

  /**
   * One API request: waits for a slot, sends, and handles what a viewer must survive:
   * 401 (one shared refresh, then again), 429 (the whole page waits Retry-After), network
   * errors and 5xx (exponential backoff with jitter). Resolves with a Reply (2xx or 304).
   */
  async request(path, { method = 'GET', headers = {}, body, priority = 0, signal, retries = 5 } = {}) {
    let authRetried = false;
    for (let attempt = 0; ; attempt += 1) {
      if (!this.access) {
        if (this.refreshing) await this.refreshing.catch(() => {});
        if (!this.access) throw new SessionEnded('Please sign in.');
      }
      const release = await this.limiter.acquire(priority, signal);
      let response = null;
      let problem = null;
      try {
        this.stats.requests += 1;
        response = await fetch(path, {
          method, body, signal, cache: 'no-store',
          headers: { ...headers, Authorization: `Bearer ${this.access}` },
        });
        // Bodies are read inside the slot: the server counts a request until its last byte.
        if (response.ok || response.status === 304) {
          const bytes = response.status === 304 || method === 'HEAD' ? null : await response.arrayBuffer();
          return new Reply(response, bytes);
        }
        problem = method === 'HEAD' ? { title: response.statusText, detail: '' } : await problemOf(response);
      } catch (err) {
        if (signal?.aborted) throw err;
        response = null;
      } finally {
        release();
      }
      if (response && response.status === 401 && !authRetried) {
        authRetried = true;
        await this.refresh();
        attempt -= 1;
        continue;
      }
      if (response && response.status === 429 && attempt < retries + 5) {
        const after = parseFloat(response.headers.get('Retry-After')) || 1;
        this.stats.throttled += 1;
        this.limiter.pauseFor(after);
        continue;
      }
      const transient = !response || response.status >= 500;
      if (transient && attempt < retries) {
        this.stats.retries += 1;
        const base = Math.min(8000, 250 * 2 ** attempt);
        await sleep(base / 2 + Math.random() * base / 2, signal);
        continue;
      }
      if (!response) throw new ApiError(0, 'Network error', `The server cannot be reached (${path}).`, path);
      const error = new ApiError(response.status, problem.title, problem.detail, path);
      error.headers = response.headers;
      throw error;
    }
  }

  async json(path, options = {}) {
    const response = await this.request(path, {
      ...options, headers: { Accept: 'application/json', ...(options.headers || {}) },
    });
    return response.json();
  }

  async send(path, method, payload, options = {}) {
    return this.json(path, {
      ...options, method, body: payload === undefined ? undefined : JSON.stringify(payload),
      headers: { 'Content-Type': 'application/json', ...(options.headers || {}) },
    });
  }
}
