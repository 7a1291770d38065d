// Loads a whole study for the page: thumbnails first, then the viewed series around the current
// image, then the other series, every request through the one limiter of the Api. Each image is
// fetched at most once (a Map of promises), kept in IndexedDB, and the viewed series' images are
// also kept decoded in memory (an LRU bounded in bytes) so scrolling never waits for a decode.

import { frameSamples } from './render.js';

// Frames in these syntaxes are little endian pixels as stored; others are asked for decoded.
const NATIVE_LE = new Set(['1.2.840.10008.1.2', '1.2.840.10008.1.2.1']);
const EXPLICIT_LE = '1.2.840.10008.1.2.1';
const PAGE = 500;

/** Decoded frames in memory, least recently used dropped first past ``maxBytes``. */
export class FrameMemory {
  constructor(maxBytes) {
    this.maxBytes = maxBytes;
    this.bytes = 0;
    this.map = new Map();
  }

  get(key) {
    const value = this.map.get(key);
    if (value) { this.map.delete(key); this.map.set(key, value); }
    return value;
  }

  has(key) { return this.map.has(key); }

  set(key, value) {
    const old = this.map.get(key);
    if (old) { this.bytes -= old.samples.byteLength; this.map.delete(key); }
    this.map.set(key, value);
    this.bytes += value.samples.byteLength;
    for (const [k, v] of this.map) {
      if (this.bytes <= this.maxBytes || k === key) break;
      this.map.delete(k);
      this.bytes -= v.samples.byteLength;
    }
  }

  clear() { this.map.clear(); this.bytes = 0; }
}

export function frameKey(instanceUid, frameNumber) {
  return `${instanceUid}/${frameNumber || 1}`;
}

export class StudyLoader extends EventTarget {
  constructor(api, cache, memory, studyUid) {
    super();
    this.api = api;
    this.cache = cache;
    this.memory = memory;
    this.studyUid = studyUid;
    this.series = new Map();
    this.order = [];
    this.viewed = { seriesUid: null, index: 0 };
    this.frames = new Map();   // key -> promise of {data, meta}
    this.metas = new Map();    // instance UID -> promise of metadata
    this.cachedKeys = new Set();
    this.abort = new AbortController();
    this.stats = { frameRequests: 0, metaRequests: 0, fromCache: 0, revalidated: 0 };
  }

  stop() {
    this.abort.abort(new DOMException('study closed', 'AbortError'));
  }

  get signal() { return this.abort.signal; }

  async start(seriesList) {
    seriesList.forEach((info, order) => {
      this.series.set(info.seriesUid, {
        info, order, images: null, total: info.imageCount || 0, loaded: 0, failed: 0,
        state: 'pending', error: null,
      });
      this.order.push(info.seriesUid);
    });
    this.cachedKeys = await this.cache.freshKeys();
    for (const uid of this.order) this.loadSeries(uid);
  }

  setViewed(seriesUid, index) {
    this.viewed = { seriesUid, index };
    this.api.limiter.pump();
  }

  /** Lower runs sooner: the viewed series by distance from the current image, then the rest. */
  priorityOf(seriesUid, index) {
    if (seriesUid === this.viewed.seriesUid) {
      const d = index - this.viewed.index;
      return 10 + (d >= 0 ? d : -d * 1.5);
    }
    const s = this.series.get(seriesUid);
    return 1e6 + (s ? s.order : 0) * 1e5 + index;
  }

  async loadSeries(uid) {
    const s = this.series.get(uid);
    s.state = 'loading';
    s.error = null;
    this.progress(s);
    try {
      if (!s.images) s.images = await this.listImages(uid);
      s.total = s.images.length;
      s.loaded = s.images.filter((img) => img.loaded).length;
      this.progress(s);
      await Promise.all(s.images.map((img, i) => this.ensureLoaded(uid, i)));
      s.state = s.failed ? 'error' : 'complete';
      if (s.failed) s.error = `${s.failed} image(s) could not be loaded`;
    } catch (err) {
      if (this.signal.aborted) return;
      s.state = 'error';
      s.error = err.message || String(err);
    }
    this.progress(s);
  }

  retrySeries(uid) {
    const s = this.series.get(uid);
    if (!s || s.state === 'loading') return;
    s.failed = 0;
    if (s.images) for (const img of s.images) if (img.error) { img.error = null; this.frames.delete(img.key); }
    this.loadSeries(uid);
  }

  async listImages(uid) {
    const images = [];
    const base = `api/pacs/studies/${this.studyUid}/series/${uid}/images/bulk`;
    for (let start = 0; ; ) {
      const page = await this.api.json(`${base}?start=${start}&count=${PAGE}`, {
        priority: () => (uid === this.viewed.seriesUid ? 2 : 5e5 + this.series.get(uid).order),
        signal: this.signal,
      });
      for (const img of page.images) {
        const key = frameKey(img.instanceUid, img.frameNumber);
        images.push({ ...img, key, loaded: this.cachedKeys.has(key), error: null });
      }
      start += page.images.length;
      if (!page.hasMore || page.images.length === 0) break;
    }
    return images;
  }

  progress(s) {
    this.dispatchEvent(new CustomEvent('progress', { detail: {
      seriesUid: s.info.seriesUid, loaded: s.loaded, total: s.total, state: s.state, error: s.error } }));
  }

  async ensureLoaded(uid, index) {
    const s = this.series.get(uid);
    const img = s.images[index];
    if (img.loaded) return;
    try {
      await this.frame(uid, index, () => this.priorityOf(uid, index));
    } catch (err) {
      if (this.signal.aborted) return;
      img.error = err;
      s.failed += 1;
    }
  }

  markLoaded(uid, img) {
    if (img.loaded) return;
    img.loaded = true;
    const s = this.series.get(uid);
    s.loaded += 1;
    this.progress(s);
  }

  meta(instanceUid, priority) {
    let p = this.metas.get(instanceUid);
    if (!p) {
      p = (async () => {
        const cached = await this.cache.getMeta(instanceUid);
        if (cached) return cached;
        this.stats.metaRequests += 1;
        const meta = await this.api.json(`api/pacs/instances/${instanceUid}/`, { priority, signal: this.signal });
        await this.cache.putMeta(instanceUid, meta).catch(() => {});
        return meta;
      })();
      p.catch(() => this.metas.delete(instanceUid));
      this.metas.set(instanceUid, p);
    }
    return p;
  }

  /**
   * The decoded frame {samples, meta, key, image} of image ``index``: from memory, else from
   * IndexedDB, else from the server. ``keep`` puts it in memory (the viewed series).
   */
  async decoded(uid, index, priority = -1) {
    const s = this.series.get(uid);
    const img = s.images[index];
    const hit = this.memory.get(img.key);
    if (hit) return hit;
    const { data, meta } = await this.frame(uid, index, priority);
    const value = this.memory.get(img.key) || this.decode(img, data, meta);
    return value;
  }

  decode(img, data, meta) {
    const samples = frameSamples(data, meta);
    const value = { samples, meta, key: img.key, image: img };
    this.memory.set(img.key, value);
    return value;
  }

  /** The raw frame and its metadata; fetched once, whoever asks. */
  frame(uid, index, priority) {
    const s = this.series.get(uid);
    const img = s.images[index];
    let p = this.frames.get(img.key);
    if (p) return p;
    const fetchIt = async () => {
      const meta = await this.meta(img.instanceUid, priority);
      let cached = img.loaded || this.cachedKeys.has(img.key) ? await this.cache.getFrame(img.key) : null;
      let data = cached && !cached.stale ? cached.data : null;
      if (data) this.stats.fromCache += 1;
      if (!data) {
        const decode = needsDecode(meta);
        const url = (img.imageUrl || `api/pacs/instances/${img.instanceUid}/frames/${img.frameNumber || 1}`)
          .replace(/^\//, '') + (decode ? '?decode=1' : '');
        const headers = cached?.etag ? { 'If-None-Match': cached.etag } : {};
        this.stats.frameRequests += 1;
        const response = await this.api.request(url, { priority, signal: this.signal, headers });
        if (response.status === 304 && cached) {
          this.stats.revalidated += 1;
          data = cached.data;
          await this.cache.renew(img.key).catch(() => {});
        } else {
          data = await response.arrayBuffer();
          await this.cache.putFrame(img.key, data, response.headers.get('ETag')).catch(() => {});
        }
      }
      const frameMeta = decodedMeta(meta, s.info);
      this.markLoaded(uid, img);
      if (uid === this.viewed.seriesUid && !this.memory.has(img.key)) this.decode(img, data, frameMeta);
      return { data, meta: frameMeta };
    };
    // Only while in flight: once settled the bytes are in IndexedDB (and memory when viewed),
    // and holding them here too would keep every frame of the study alive.
    p = fetchIt();
    this.frames.set(img.key, p);
    const forget = () => { if (this.frames.get(img.key) === p) this.frames.delete(img.key); };
    p.then(forget, forget);
    return p;
  }

  /** A blob: URL of the series' thumbnail, from IndexedDB when it is there. */
  async thumbnail(info) {
    const url = info.thumbnailUrl;
    if (!url) return null;
    const key = `thumb:${this.studyUid}/${info.seriesUid}`;
    let entry = await this.cache.getMeta(key);
    if (!entry) {
      const response = await this.api.request(url.replace(/^\//, ''), { priority: 1, signal: this.signal });
      entry = { type: response.headers.get('Content-Type') || 'image/jpeg', data: await response.arrayBuffer() };
      await this.cache.putMeta(key, entry).catch(() => {});
    }
    return URL.createObjectURL(new Blob([entry.data], { type: entry.type }));
  }
}

/** What the renderer needs, with the series' modality filled in and decoded colour as RGB. */
function decodedMeta(meta, seriesInfo) {
  const out = { ...meta, modality: meta.modality || seriesInfo.modality };
  if (needsDecode(meta)) {
    out.transferSyntaxUid = EXPLICIT_LE;
    if ((meta.samplesPerPixel || 1) === 3) {
      out.photometricInterpretation = 'RGB';
      out.planarConfiguration = 0;
    }
  }
  return out;
}

function needsDecode(meta) {
  return Boolean(meta.transferSyntaxUid) && !NATIVE_LE.has(meta.transferSyntaxUid);
}
