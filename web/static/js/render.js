// Raw DICOM pixels to RGBA: modality LUT (rescale), VOI LUT function LINEAR, MONOCHROME1 inversion.
// PS3.3 C.11.1 (modality LUT) and C.11.2.1.2.1 (window centre/width, LINEAR); pure functions.

/** Typed samples of one frame, sign-extended or masked to Bits Stored (PS3.5 8.1.1). */
export function frameSamples(buffer, meta) {
  const bits = meta.bitsAllocated;
  const signed = meta.pixelRepresentation === 1;
  const count = meta.rows * meta.columns * (meta.samplesPerPixel || 1);
  const bigEndian = meta.transferSyntaxUid === '1.2.840.10008.1.2.2';
  let data;
  if (bits === 8) {
    data = signed ? new Int8Array(buffer, 0, count) : new Uint8Array(buffer, 0, count);
  } else if (bits === 16) {
    const aligned = bigEndian ? buffer.slice(0, count * 2) : buffer;
    if (bigEndian) swapBytes(new Uint8Array(aligned), 2);
    data = signed ? new Int16Array(aligned, 0, count) : new Uint16Array(aligned, 0, count);
  } else if (bits === 32) {
    const aligned = bigEndian ? buffer.slice(0, count * 4) : buffer;
    if (bigEndian) swapBytes(new Uint8Array(aligned), 4);
    data = signed ? new Int32Array(aligned, 0, count) : new Uint32Array(aligned, 0, count);
  } else {
    throw new Error(`Bits Allocated ${bits} is not supported by the viewer`);
  }
  const stored = meta.bitsStored || bits;
  if (stored < bits && (meta.samplesPerPixel || 1) === 1) {
    const shift = 32 - stored;
    const mask = stored >= 32 ? 0xffffffff : (2 ** stored) - 1;
    for (let i = 0; i < data.length; i += 1) {
      data[i] = signed ? (data[i] << shift) >> shift : data[i] & mask;
    }
  }
  return data;
}

function swapBytes(bytes, width) {
  for (let i = 0; i + width <= bytes.length; i += width) {
    for (let a = i, b = i + width - 1; a < b; a += 1, b -= 1) {
      const t = bytes[a]; bytes[a] = bytes[b]; bytes[b] = t;
    }
  }
}

/** Smallest and largest modality value of a frame (for images without a stored window). */
export function modalityRange(samples, meta) {
  let lo = Infinity; let hi = -Infinity;
  for (let i = 0; i < samples.length; i += 1) {
    const v = samples[i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const slope = meta.rescaleSlope ?? 1;
  const intercept = meta.rescaleIntercept ?? 0;
  const a = lo * slope + intercept; const b = hi * slope + intercept;
  return [Math.min(a, b), Math.max(a, b)];
}

/** Output 0..255 of LINEAR windowing for one modality value x (PS3.3 C.11.2.1.2.1). */
export function windowLinear(x, center, width) {
  if (width < 1) width = 1;
  const lower = center - 0.5 - (width - 1) / 2;
  const upper = center - 0.5 + (width - 1) / 2;
  if (x <= lower) return 0;
  if (x > upper) return 255;
  return ((x - (center - 0.5)) / (width - 1) + 0.5) * 255;
}

/**
 * Paints ``samples`` into ``rgba`` (a Uint8ClampedArray of rows*columns*4).
 * For 8/16-bit grey images a lookup table over every stored value keeps a window change at a
 * few milliseconds for 512x512; other depths are computed per pixel.
 */
export function paintGrey(samples, meta, center, width, rgba) {
  const slope = meta.rescaleSlope ?? 1;
  const intercept = meta.rescaleIntercept ?? 0;
  const invert = meta.photometricInterpretation === 'MONOCHROME1';
  const n = samples.length;
  const bits = meta.bitsAllocated;
  if (bits <= 16) {
    const signed = meta.pixelRepresentation === 1;
    const size = 1 << bits;
    const offset = signed ? size / 2 : 0;
    const lut = new Uint8ClampedArray(size);
    for (let i = 0; i < size; i += 1) {
      const y = Math.round(windowLinear((i - offset) * slope + intercept, center, width));
      lut[i] = invert ? 255 - y : y;
    }
    for (let i = 0, j = 0; i < n; i += 1, j += 4) {
      const y = lut[samples[i] + offset];
      rgba[j] = y; rgba[j + 1] = y; rgba[j + 2] = y; rgba[j + 3] = 255;
    }
  } else {
    for (let i = 0, j = 0; i < n; i += 1, j += 4) {
      let y = Math.round(windowLinear(samples[i] * slope + intercept, center, width));
      if (invert) y = 255 - y;
      rgba[j] = y; rgba[j + 1] = y; rgba[j + 2] = y; rgba[j + 3] = 255;
    }
  }
}

/** Colour images (8-bit RGB or YBR_FULL, either planar configuration) with an optional window. */
export function paintColour(samples, meta, center, width, rgba) {
  const pixels = meta.rows * meta.columns;
  const planar = meta.planarConfiguration === 1;
  const ybr = String(meta.photometricInterpretation || '').startsWith('YBR_FULL');
  const lut = new Uint8ClampedArray(256);
  for (let i = 0; i < 256; i += 1) lut[i] = Math.round(windowLinear(i, center, width));
  for (let p = 0, j = 0; p < pixels; p += 1, j += 4) {
    let a; let b; let c;
    if (planar) { a = samples[p]; b = samples[p + pixels]; c = samples[p + 2 * pixels]; } else {
      a = samples[3 * p]; b = samples[3 * p + 1]; c = samples[3 * p + 2];
    }
    if (ybr) {
      const y = a; const cb = b - 128; const cr = c - 128;
      a = y + 1.402 * cr; b = y - 0.344136 * cb - 0.714136 * cr; c = y + 1.772 * cb;
      a = a < 0 ? 0 : a > 255 ? 255 : a; b = b < 0 ? 0 : b > 255 ? 255 : b; c = c < 0 ? 0 : c > 255 ? 255 : c;
    }
    rgba[j] = lut[a | 0]; rgba[j + 1] = lut[b | 0]; rgba[j + 2] = lut[c | 0]; rgba[j + 3] = 255;
  }
}

/** The window an image asks for: its first stored pair, else its full modality range. */
export function storedWindow(meta, samples) {
  const centers = [].concat(meta.windowCenter ?? []);
  const widths = [].concat(meta.windowWidth ?? []);
  if (centers.length && widths.length && Number.isFinite(+centers[0]) && +widths[0] >= 1) {
    return { center: +centers[0], width: +widths[0] };
  }
  if ((meta.samplesPerPixel || 1) === 3) return { center: 127.5, width: 256 };
  const [lo, hi] = modalityRange(samples, meta);
  return { center: (lo + hi + 1) / 2, width: Math.max(1, hi - lo + 1) };
}

export function paint(samples, meta, center, width, rgba) {
  if ((meta.samplesPerPixel || 1) === 3) paintColour(samples, meta, center, width, rgba);
  else paintGrey(samples, meta, center, width, rgba);
}

/** CT windows radiologists use (centre/width in HU). */
export const CT_PRESETS = [
  { id: 'brain', label: 'Brain', center: 40, width: 80 },
  { id: 'soft-tissue', label: 'Soft tissue', center: 40, width: 400 },
  { id: 'abdomen', label: 'Abdomen', center: 60, width: 400 },
  { id: 'lung', label: 'Lung', center: -600, width: 1500 },
  { id: 'bone', label: 'Bone', center: 400, width: 1800 },
];
