// The page's settings, kept in localStorage (no patient data here).

const KEY = 'pacsnode.settings';
export const DEFAULTS = { maxConcurrent: 4, cacheHours: 24, cacheMaxMB: 2048, memoryMB: 384,
  wheelSensitivity: 1, cineFps: 10 };

export function loadSettings() {
  let stored = {};
  try { stored = JSON.parse(localStorage.getItem(KEY) || '{}'); } catch { stored = {}; }
  return sanitise({ ...DEFAULTS, ...stored });
}

export function saveSettings(settings) {
  localStorage.setItem(KEY, JSON.stringify(sanitise(settings)));
}

function sanitise(s) {
  const clamp = (v, lo, hi, d) => (Number.isFinite(+v) ? Math.min(hi, Math.max(lo, +v)) : d);
  return {
    maxConcurrent: Math.round(clamp(s.maxConcurrent, 3, 5, DEFAULTS.maxConcurrent)),
    cacheHours: clamp(s.cacheHours, 0.1, 24 * 30, DEFAULTS.cacheHours),
    cacheMaxMB: clamp(s.cacheMaxMB, 64, 64 * 1024, DEFAULTS.cacheMaxMB),
    memoryMB: clamp(s.memoryMB, 64, 2048, DEFAULTS.memoryMB),
    wheelSensitivity: clamp(s.wheelSensitivity, 0.5, 3, DEFAULTS.wheelSensitivity),
    cineFps: Math.round(clamp(s.cineFps, 1, 60, DEFAULTS.cineFps)),
  };
}
