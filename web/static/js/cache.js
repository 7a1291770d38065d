// IndexedDB cache of frames and instance metadata, keyed by SOP Instance UID (and frame).
//
// Frames are large, so each lives in ``frames`` (the bytes) with a small twin in ``entries``
// (size, times, ETag, checksum) that eviction and the "what is cached" question read without
// touching the bytes. Entries past their age are revalidated with If-None-Match; a checksum
// that no longer matches drops the entry, so it is fetched again.

import { checksum32 } from './hashing.js';

const DB_NAME = 'pacsnode-cache';
const VERSION = 1;

function promisify(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = tx.onerror = () => reject(tx.error);
  });
}

export class FrameCache {
  constructor({ maxAgeHours = 24, maxBytes = 1024 * 1024 * 1024 } = {}) {
    this.maxAgeMs = maxAgeHours * 3600 * 1000;
    this.maxBytes = maxBytes;
    this.db = null;
    this.totalBytes = 0;
    this.touched = new Map();
    this.touchTimer = null;
    this.stats = { hits: 0, misses: 0, corrupt: 0, evicted: 0 };
  }

  async open() {
    if (this.db) return this;
    if (!('indexedDB' in window)) return this;
    try {
      this.db = await new Promise((resolve, reject) => {
        const req = indexedDB.open(DB_NAME, VERSION);
        req.onupgradeneeded = () => {
          const db = req.result;
          db.createObjectStore('frames');
          const entries = db.createObjectStore('entries', { keyPath: 'key' });
          entries.createIndex('lastUsed', 'lastUsed');
          db.createObjectStore('meta');
        };
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
        req.onblocked = () => reject(new Error('cache database blocked by another tab'));
      });
      let total = 0;
      const all = await promisify(this.db.transaction('entries').objectStore('entries').getAll());
      for (const e of all) total += e.size;
      this.totalBytes = total;
    } catch (err) {
      console.warn('IndexedDB unavailable, caching off:', err);
      this.db = null;
    }
    return this;
  }

  configure({ maxAgeHours, maxBytes }) {
    if (maxAgeHours) this.maxAgeMs = maxAgeHours * 3600 * 1000;
    if (maxBytes) this.maxBytes = maxBytes;
  }

  /** Keys of every frame entry still fresh (one read of the small records). */
  async freshKeys() {
    if (!this.db) return new Set();
    const all = await promisify(this.db.transaction('entries').objectStore('entries').getAll());
    const now = Date.now();
    return new Set(all.filter((e) => now - e.storedAt < this.maxAgeMs).map((e) => e.key));
  }

  /** {data, etag, stale} or null; a corrupt entry is dropped and reported as a miss. */
  async getFrame(key) {
    if (!this.db) return null;
    const tx = this.db.transaction(['frames', 'entries']);
    const [data, entry] = await Promise.all([
      promisify(tx.objectStore('frames').get(key)), promisify(tx.objectStore('entries').get(key))]);
    if (!data || !entry) { this.stats.misses += 1; return null; }
    if (data.byteLength !== entry.size || checksum32(data) !== entry.checksum) {
      this.stats.corrupt += 1;
      await this.delete(key);
      return null;
    }
    this.stats.hits += 1;
    this.touch(key);
    return { data, etag: entry.etag, stale: Date.now() - entry.storedAt >= this.maxAgeMs };
  }

  async putFrame(key, data, etag) {
    if (!this.db) return;
    const entry = { key, size: data.byteLength, etag: etag || null, checksum: checksum32(data),
      storedAt: Date.now(), lastUsed: Date.now() };
    const tx = this.db.transaction(['frames', 'entries'], 'readwrite');
    const previous = await promisify(tx.objectStore('entries').get(key));
    tx.objectStore('frames').put(data, key);
    tx.objectStore('entries').put(entry);
    await done(tx);
    this.totalBytes += entry.size - (previous ? previous.size : 0);
    if (this.totalBytes > this.maxBytes) await this.evict();
  }

  /** A 304 said the cached bytes are still right: they count as fresh again. */
  async renew(key) {
    if (!this.db) return;
    const tx = this.db.transaction('entries', 'readwrite');
    const entry = await promisify(tx.objectStore('entries').get(key));
    if (entry) { entry.storedAt = Date.now(); tx.objectStore('entries').put(entry); }
    await done(tx);
  }

  async delete(key) {
    if (!this.db) return;
    const tx = this.db.transaction(['frames', 'entries'], 'readwrite');
    const entry = await promisify(tx.objectStore('entries').get(key));
    tx.objectStore('frames').delete(key);
    tx.objectStore('entries').delete(key);
    await done(tx);
    if (entry) this.totalBytes -= entry.size;
  }

  /** Least recently used first, down to 90% of the cap. */
  async evict() {
    const target = this.maxBytes * 0.9;
    const tx = this.db.transaction(['frames', 'entries'], 'readwrite');
    const frames = tx.objectStore('frames');
    const index = tx.objectStore('entries').index('lastUsed');
    await new Promise((resolve, reject) => {
      const req = index.openCursor();
      req.onsuccess = () => {
        const cursor = req.result;
        if (!cursor || this.totalBytes <= target) { resolve(); return; }
        this.totalBytes -= cursor.value.size;
        this.stats.evicted += 1;
        frames.delete(cursor.value.key);
        cursor.delete();
        cursor.continue();
      };
      req.onerror = () => reject(req.error);
    });
    await done(tx);
  }

  touch(key) {
    this.touched.set(key, Date.now());
    if (this.touchTimer) return;
    this.touchTimer = setTimeout(() => this.flushTouches(), 2000);
  }

  async flushTouches() {
    this.touchTimer = null;
    if (!this.db || !this.touched.size) return;
    const touched = this.touched;
    this.touched = new Map();
    const tx = this.db.transaction('entries', 'readwrite');
    const store = tx.objectStore('entries');
    for (const [key, when] of touched) {
      const req = store.get(key);
      req.onsuccess = () => { if (req.result) { req.result.lastUsed = when; store.put(req.result); } };
    }
    await done(tx).catch(() => {});
  }

  async getMeta(key) {
    if (!this.db) return null;
    const value = await promisify(this.db.transaction('meta').objectStore('meta').get(key));
    if (!value || Date.now() - value.storedAt >= this.maxAgeMs) return null;
    return value.data;
  }

  async putMeta(key, data) {
    if (!this.db) return;
    const tx = this.db.transaction('meta', 'readwrite');
    tx.objectStore('meta').put({ data, storedAt: Date.now() }, key);
    await done(tx);
  }

  async clear() {
    if (!this.db) return;
    const tx = this.db.transaction(['frames', 'entries', 'meta'], 'readwrite');
    for (const name of ['frames', 'entries', 'meta']) tx.objectStore(name).clear();
    await done(tx);
    this.totalBytes = 0;
  }
}
