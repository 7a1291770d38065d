// The series viewer: one canvas, raw frames windowed in the browser, and the interactions a
// radiologist expects (wheel, keys, cine, window/level drag and presets, zoom and pan, touch).

import { h, clear, personName, dicomDate } from './dom.js';
import { paint, storedWindow, CT_PRESETS } from './render.js';

const NEIGHBOURS = 3;

export class SeriesViewer {
  constructor(loader, settings, study) {
    this.loader = loader;
    this.settings = settings;
    this.study = study || {};
    this.seriesUid = null;
    this.index = 0;
    this.window = null;            // null: each image's stored window
    this.scale = null;             // null: fit
    this.pan = { x: 0, y: 0 };
    this.tool = 'wl';
    this.overlayOn = true;
    this.wheelAccumulator = 0;
    this.showToken = 0;
    this.current = null;           // the decoded frame on screen
    this.cine = { playing: false, fps: settings.cineFps || 10, startIndex: 0, last: 0, raf: 0 };
    this.stats = { draws: 0, lastDrawMs: 0, lastStepMs: 0, stepTimes: [] };
    this.image = document.createElement('canvas');
    this.imageData = null;
    this.build();
  }

  build() {
    this.canvas = h('canvas', { testid: 'viewport', class: 'viewport', tabindex: '0',
      'aria-label': 'Image viewport: wheel or arrow keys to move through images' });
    this.overlay = {
      tl: h('div', { class: 'ov tl', testid: 'overlay-patient' }),
      tr: h('div', { class: 'ov tr', testid: 'overlay-study' }),
      bl: h('div', { class: 'ov bl', testid: 'overlay-series' }),
      br: h('div', { class: 'ov br', testid: 'overlay-display' }),
    };
    this.status = h('div', { class: 'viewport-status', testid: 'viewport-status' });
    this.stage = h('div', { class: 'stage' }, this.canvas, Object.values(this.overlay), this.status);
    this.counter = h('span', { testid: 'image-counter', class: 'counter' }, '0 / 0');
    this.jump = h('input', { type: 'number', min: '1', value: '1', class: 'jump', testid: 'image-jump',
      'aria-label': 'Go to image', onchange: () => this.show(Number(this.jump.value) - 1) });
    this.slider = h('input', { type: 'range', min: '1', max: '1', value: '1', class: 'scrub', testid: 'image-slider',
      'aria-label': 'Image position', oninput: () => this.show(Number(this.slider.value) - 1) });
    this.fpsInput = h('input', { type: 'number', min: '1', max: '60', value: String(this.cine.fps), class: 'fps',
      testid: 'cine-fps', 'aria-label': 'Frames per second',
      onchange: () => { this.cine.fps = Math.min(60, Math.max(1, Number(this.fpsInput.value) || 10)); } });
    this.playButton = h('button', { type: 'button', testid: 'cine-play', title: 'Play / pause (space)',
      onclick: () => this.togglePlay() }, 'Play');
    this.sensitivity = h('input', { type: 'range', min: '0.5', max: '3', step: '0.25',
      value: String(this.settings.wheelSensitivity || 1), testid: 'wheel-sensitivity', 'aria-label': 'Wheel sensitivity',
      oninput: () => { this.settings.wheelSensitivity = Number(this.sensitivity.value); this.sensitivityLabel.textContent = `${this.sensitivity.value}x`; } });
    this.sensitivityLabel = h('span', { class: 'muted' }, `${this.settings.wheelSensitivity || 1}x`);
    this.presetBar = h('div', { class: 'group presets', role: 'group', 'aria-label': 'Window presets' });
    const toolButton = (id, label, title) => h('button', { type: 'button', class: id === this.tool ? 'active' : '',
      dataset: { tool: id }, testid: `tool-${id}`, title, onclick: (e) => this.setTool(id, e.currentTarget) }, label);
    this.toolbar = h('div', { class: 'toolbar', role: 'toolbar' },
      h('div', { class: 'group', role: 'group', 'aria-label': 'Mouse tool' },
        toolButton('wl', 'W/L', 'Drag: window (left-right) and level (up-down)'),
        toolButton('pan', 'Pan', 'Drag to move the image'),
        toolButton('zoom', 'Zoom', 'Drag up/down to zoom')),
      this.presetBar,
      h('div', { class: 'group', role: 'group', 'aria-label': 'Zoom' },
        h('button', { type: 'button', testid: 'zoom-fit', onclick: () => this.setScale(null) }, 'Fit'),
        h('button', { type: 'button', testid: 'zoom-1to1', onclick: () => this.setScale(1) }, '1:1'),
        h('button', { type: 'button', testid: 'zoom-in', title: 'Zoom in (+)', onclick: () => this.zoomBy(1.25) }, '+'),
        h('button', { type: 'button', testid: 'zoom-out', title: 'Zoom out (-)', onclick: () => this.zoomBy(0.8) }, '−'),
        h('button', { type: 'button', testid: 'view-reset', title: 'Reset window, zoom and pan (R)', onclick: () => this.reset() }, 'Reset')),
      h('div', { class: 'group', role: 'group', 'aria-label': 'Cine' },
        this.playButton,
        h('button', { type: 'button', testid: 'cine-stop', onclick: () => this.stopCine() }, 'Stop'),
        h('label', { class: 'inline' }, this.fpsInput, ' fps')),
      h('div', { class: 'group', role: 'group' },
        h('button', { type: 'button', testid: 'overlay-toggle', title: 'Show or hide the text overlay (O)',
          onclick: () => this.toggleOverlay() }, 'Overlay'),
        h('label', { class: 'inline', title: 'Mouse wheel sensitivity' }, 'Wheel ', this.sensitivity, ' ', this.sensitivityLabel)));
    this.footer = h('div', { class: 'viewer-footer' }, this.counter, h('label', { class: 'inline' }, 'Go to ', this.jump), this.slider);
    this.element = h('section', { class: 'viewer', testid: 'viewer' }, this.toolbar, this.stage, this.footer);
    this.bindInput();
    this.resizeObserver = new ResizeObserver(() => this.compose());
    this.resizeObserver.observe(this.stage);
  }

  destroy() {
    this.pauseCine();
    this.resizeObserver.disconnect();
    document.removeEventListener('keydown', this.onKey);
  }

  get seriesState() { return this.loader.series.get(this.seriesUid); }

  get count() { return this.seriesState?.images?.length || 0; }

  async open(seriesUid) {
    this.pauseCine();
    this.seriesUid = seriesUid;
    this.loader.memory.clear();
    this.current = null;
    const s = this.seriesState;
    this.renderPresets(s.info.modality);
    this.status.textContent = 'Loading…';
    await waitFor(() => s.images || s.state === 'error', this.loader.signal);
    if (!s.images) { this.status.textContent = s.error || 'This series could not be listed.'; return; }
    this.slider.max = String(Math.max(1, this.count));
    this.jump.max = String(Math.max(1, this.count));
    await this.show(0);
  }

  renderPresets(modality) {
    clear(this.presetBar);
    const preset = (id, label, title) => h('button', { type: 'button', testid: 'wl-preset', dataset: { preset: id },
      title, onclick: () => this.applyPreset(id) }, label);
    this.presetBar.append(preset('stored', 'Stored', 'The window stored with each image'));
    if (modality === 'CT') {
      for (const p of CT_PRESETS) this.presetBar.append(preset(p.id, p.label, `C ${p.center} / W ${p.width}`));
    }
    this.presetBar.append(preset('full', 'Full range', 'Every value of this image'));
  }

  applyPreset(id) {
    if (id === 'stored') this.window = null;
    else if (id === 'full' && this.current) {
      const meta = { ...this.current.meta, windowCenter: undefined, windowWidth: undefined };
      this.window = storedWindow(meta, this.current.samples);
    } else {
      const p = CT_PRESETS.find((x) => x.id === id);
      if (p) this.window = { center: p.center, width: p.width };
    }
    for (const b of this.presetBar.querySelectorAll('button')) b.classList.toggle('active', b.dataset.preset === id);
    this.draw();
  }

  /** Shows image ``index`` (0-based): from memory at once, else as soon as it arrives. */
  async show(index, started = performance.now()) {
    const n = this.count;
    if (!n) return;
    index = Math.max(0, Math.min(n - 1, Math.round(index)));
    this.index = index;
    this.loader.setViewed(this.seriesUid, index);
    this.updateCounter();
    const token = ++this.showToken;
    const key = this.seriesState.images[index].key;
    let frame = this.loader.memory.get(key);
    if (!frame) {
      this.status.textContent = 'Loading…';
      try {
        frame = await this.loader.decoded(this.seriesUid, index, -1);
      } catch (err) {
        if (token === this.showToken) this.status.textContent = `Image ${index + 1} could not be loaded: ${err.message}`;
        return;
      }
      if (token !== this.showToken) return;
    }
    this.status.textContent = '';
    this.current = frame;
    this.draw();
    const ms = performance.now() - started;
    this.stats.lastStepMs = ms;
    this.stats.stepTimes.push(ms);
    if (this.stats.stepTimes.length > 1000) this.stats.stepTimes.shift();
    this.preloadNeighbours();
  }

  preloadNeighbours() {
    for (let d = 1; d <= NEIGHBOURS; d += 1) {
      for (const i of [this.index + d, this.index - d]) {
        if (i < 0 || i >= this.count) continue;
        const key = this.seriesState.images[i].key;
        if (!this.loader.memory.has(key)) this.loader.decoded(this.seriesUid, i, d).catch(() => {});
      }
    }
  }

  updateCounter() {
    const text = `${this.index + 1} / ${this.count}`;
    this.counter.textContent = text;
    this.counter.dataset.index = String(this.index + 1);
    this.counter.dataset.total = String(this.count);
    if (document.activeElement !== this.jump) this.jump.value = String(this.index + 1);
    this.slider.value = String(this.index + 1);
  }

  /** Paints the current frame into the image canvas with the active window, then composes. */
  draw() {
    const frame = this.current;
    if (!frame) return;
    const t0 = performance.now();
    const { meta, samples } = frame;
    const win = this.window || storedWindow(meta, samples);
    this.shownWindow = win;
    if (this.image.width !== meta.columns || this.image.height !== meta.rows || !this.imageData) {
      this.image.width = meta.columns;
      this.image.height = meta.rows;
      this.imageData = new ImageData(meta.columns, meta.rows);
    }
    paint(samples, meta, win.center, win.width, this.imageData.data);
    this.image.getContext('2d').putImageData(this.imageData, 0, 0);
    this.compose();
    this.stats.draws += 1;
    this.stats.lastDrawMs = performance.now() - t0;
    this.updateOverlay();
  }

  /** The image canvas onto the viewport with zoom and pan (and the device pixel ratio). */
  compose() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(this.stage.clientWidth * dpr));
    const hgt = Math.max(1, Math.round(this.stage.clientHeight * dpr));
    if (this.canvas.width !== w || this.canvas.height !== hgt) { this.canvas.width = w; this.canvas.height = hgt; }
    const ctx = this.canvas.getContext('2d');
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, w, hgt);
    if (!this.current) return;
    const s = this.effectiveScale() * dpr;
    const dw = Math.round(this.image.width * s); const dh = Math.round(this.image.height * s);
    const x = Math.round((w - dw) / 2 + this.pan.x * dpr); const y = Math.round((hgt - dh) / 2 + this.pan.y * dpr);
    ctx.imageSmoothingEnabled = s !== 1;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(this.image, x, y, dw, dh);
    this.placement = { x, y, scale: s };
  }

  effectiveScale() {
    if (this.scale) return this.scale;
    if (!this.image.width) return 1;
    return Math.min(this.stage.clientWidth / this.image.width, this.stage.clientHeight / this.image.height);
  }

  /** Where image pixel (col, row) is drawn on the viewport canvas (its centre). */
  canvasPointOf(col, row) {
    const p = this.placement;
    return { x: Math.floor(p.x + (col + 0.5) * p.scale), y: Math.floor(p.y + (row + 0.5) * p.scale) };
  }

  updateOverlay() {
    for (const el of Object.values(this.overlay)) el.hidden = !this.overlayOn;
    if (!this.overlayOn || !this.current) return;
    const st = this.study; const info = this.seriesState.info; const meta = this.current.meta;
    const img = this.current.image;
    setLines(this.overlay.tl, [personName(st.patientName), st.patientId && `ID ${st.patientId}`,
      [dicomDate(st.patientBirthDate), st.patientSex].filter(Boolean).join('  ')]);
    setLines(this.overlay.tr, [st.institutionName, st.studyDescription, dicomDate(st.studyDate),
      st.accessionNumber && `Acc ${st.accessionNumber}`]);
    setLines(this.overlay.bl, [`Se ${info.seriesNumber ?? ''}  ${info.seriesDescription || ''}`.trim(),
      `Im ${img.imageNumber ?? this.index + 1}  (${this.index + 1} / ${this.count})`,
      `${meta.modality || info.modality || ''}  ${meta.columns}×${meta.rows}`,
      meta.pixelSpacing ? `${[].concat(meta.pixelSpacing).map((v) => Number(v).toFixed(2)).join(' × ')} mm` : '']);
    const win = this.shownWindow;
    setLines(this.overlay.br, [`C ${fmt(win.center)}  W ${fmt(win.width)}`,
      `Zoom ${Math.round(this.effectiveScale() * 100)}%`, this.cine.playing ? `Cine ${this.cine.fps} fps` : '']);
  }

  toggleOverlay() {
    this.overlayOn = !this.overlayOn;
    this.updateOverlay();
  }

  setTool(tool, button) {
    this.tool = tool;
    for (const b of this.toolbar.querySelectorAll('[data-tool]')) b.classList.toggle('active', b === button);
  }

  setScale(scale) {
    this.scale = scale;
    if (scale === null) this.pan = { x: 0, y: 0 };
    this.compose();
    this.updateOverlay();
  }

  zoomBy(factor) {
    this.scale = Math.min(32, Math.max(0.05, this.effectiveScale() * factor));
    this.compose();
    this.updateOverlay();
  }

  reset() {
    this.window = null;
    this.scale = null;
    this.pan = { x: 0, y: 0 };
    for (const b of this.presetBar.querySelectorAll('button')) b.classList.remove('active');
    this.draw();
  }

  togglePlay() {
    if (this.cine.playing) this.pauseCine(); else this.playCine();
  }

  playCine() {
    if (this.cine.playing || this.count < 2) return;
    this.cine.playing = true;
    this.cine.startIndex = this.index;
    this.cine.last = performance.now();
    this.playButton.textContent = 'Pause';
    this.playButton.classList.add('active');
    const tick = async (now) => {
      if (!this.cine.playing) return;
      if (now - this.cine.last >= 1000 / this.cine.fps && !this.cine.busy) {
        this.cine.last = now;
        this.cine.busy = true;
        await this.show((this.index + 1) % this.count);  // waits for an image not yet loaded
        this.cine.busy = false;
      }
      this.cine.raf = requestAnimationFrame(tick);
    };
    this.cine.raf = requestAnimationFrame(tick);
  }

  pauseCine() {
    this.cine.playing = false;
    cancelAnimationFrame(this.cine.raf);
    this.playButton.textContent = 'Play';
    this.playButton.classList.remove('active');
  }

  stopCine() {
    const wasPlaying = this.cine.playing;
    this.pauseCine();
    if (wasPlaying) this.show(this.cine.startIndex);
  }

  step(delta, started) {
    if (this.cine.playing) this.pauseCine();
    this.show(this.index + delta, started);
  }

  bindInput() {
    this.canvas.addEventListener('wheel', (e) => {
      e.preventDefault();
      if (e.ctrlKey) { this.zoomBy(e.deltaY < 0 ? 1.1 : 1 / 1.1); return; }
      const started = performance.now();
      const unit = e.deltaMode === 1 ? 3 : e.deltaMode === 2 ? 100 : 100;  // lines or pages to a notch
      this.wheelAccumulator += (e.deltaY / unit) * (this.settings.wheelSensitivity || 1);
      const steps = Math.trunc(this.wheelAccumulator);
      if (steps) { this.wheelAccumulator -= steps; this.step(steps, started); }
    }, { passive: false });

    this.onKey = (e) => {
      if (!this.element.isConnected || e.target.closest?.('input, textarea, select')) return;
      const started = performance.now();
      const moves = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };
      if (e.key in moves) this.step(moves[e.key], started);
      else if (e.key === 'Home') this.step(-this.index, started);
      else if (e.key === 'End') this.step(this.count - 1 - this.index, started);
      else if (e.key === ' ') this.togglePlay();
      else if (e.key === '+' || e.key === '=') this.zoomBy(1.25);
      else if (e.key === '-') this.zoomBy(0.8);
      else if (e.key === 'r' || e.key === 'R') this.reset();
      else if (e.key === 'o' || e.key === 'O') this.toggleOverlay();
      else return;
      e.preventDefault();
    };
    document.addEventListener('keydown', this.onKey);

    let drag = null;
    this.canvas.addEventListener('pointerdown', (e) => {
      this.canvas.focus();
      this.canvas.setPointerCapture(e.pointerId);
      const tool = e.pointerType === 'touch' ? 'swipe' : e.button === 1 || e.shiftKey ? 'pan' : e.button === 2 ? 'zoom' : this.tool;
      drag = { tool, x: e.clientX, y: e.clientY, swipe: 0,
        window: this.window || this.shownWindow, pan: { ...this.pan }, scale: this.effectiveScale() };
    });
    this.canvas.addEventListener('pointermove', (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x; const dy = e.clientY - drag.y;
      if (drag.tool === 'wl' && drag.window) {
        const k = Math.max(0.5, drag.window.width / 400);
        this.window = { center: drag.window.center - dy * k, width: Math.max(1, drag.window.width + dx * k * 2) };
        for (const b of this.presetBar.querySelectorAll('button')) b.classList.remove('active');
        this.draw();
      } else if (drag.tool === 'pan') {
        this.pan = { x: drag.pan.x + dx, y: drag.pan.y + dy };
        this.compose();
      } else if (drag.tool === 'zoom') {
        this.scale = Math.min(32, Math.max(0.05, drag.scale * 2 ** (-dy / 150)));
        this.compose();
        this.updateOverlay();
      } else if (drag.tool === 'swipe') {
        const steps = Math.trunc(-dy / 24) - drag.swipe;  // a finger moving up goes forward
        if (steps) { drag.swipe += steps; this.step(steps, performance.now()); }
      }
    });
    const end = () => { drag = null; };
    this.canvas.addEventListener('pointerup', end);
    this.canvas.addEventListener('pointercancel', end);
    this.canvas.addEventListener('contextmenu', (e) => e.preventDefault());
  }
}

function setLines(el, lines) {
  clear(el);
  for (const line of lines) if (line) el.append(h('div', {}, line));
}

function fmt(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(Math.abs(v) < 10 ? 2 : 0);
}

function waitFor(predicate, signal) {
  return new Promise((resolve) => {
    const check = () => {
      if (predicate() || signal?.aborted) resolve();
      else setTimeout(check, 20);
    };
    check();
  });
}
