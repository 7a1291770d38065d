// The page: sign-in, a hash router, the top bar, and one shared Api, cache and memory.

import { Api } from './api.js';
import { FrameCache } from './cache.js';
import { h, clear, toast } from './dom.js';
import { FrameMemory } from './loader.js';
import { loadSettings, saveSettings } from './settings.js';
import { renderStudyList } from './studies.js';
import { renderStudy } from './study.js';
import { renderUpload } from './upload.js';
import { renderAdmin } from './admin.js';

const settings = loadSettings();
const api = new Api({ maxConcurrent: settings.maxConcurrent });
const cache = new FrameCache({ maxAgeHours: settings.cacheHours, maxBytes: settings.cacheMaxMB * 1e6 });
const memory = new FrameMemory(settings.memoryMB * 1e6);
const app = { api, cache, memory, settings, page: null, signInMessage: '' };
// For people debugging in the console and for the page's browser tests.
window.pacsnode = app;

const ROLE_PAGES = { upload: ['uploader', 'admin'], admin: ['admin'], studies: ['viewer', 'admin'],
  study: ['viewer', 'admin'] };

function route() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [name = '', ...rest] = hash.split('/');
  return { name, args: rest.map(decodeURIComponent) };
}

export function navigate(path) {
  if (location.hash === `#/${path}`) render(); else location.hash = `#/${path}`;
}
app.navigate = navigate;

function homeFor(role) {
  return role === 'uploader' ? 'upload' : 'studies';
}

async function render() {
  const main = document.getElementById('app');
  app.page?.destroy?.();
  app.page = null;
  clear(main);
  const user = api.user;
  renderTopbar(user);
  if (!user) { main.append(signInForm()); return; }
  let { name, args } = route();
  if (!name) { navigate(homeFor(user.role)); return; }
  if (ROLE_PAGES[name] && !ROLE_PAGES[name].includes(user.role)) {
    main.append(h('div', { class: 'panel notice', testid: 'forbidden', role: 'alert' },
      h('h2', {}, 'Not available for your role'),
      h('p', {}, `Signed in as ${user.name} (${user.role}). This page needs the role ${ROLE_PAGES[name].join(' or ')}.`),
      h('a', { href: `#/${homeFor(user.role)}` }, 'Back')));
    return;
  }
  const pages = { studies: renderStudyList, study: renderStudy, upload: renderUpload, admin: renderAdmin };
  const page = pages[name];
  if (!page) { navigate(homeFor(user.role)); return; }
  app.page = await page(main, app, ...args);
}

function renderTopbar(user) {
  const bar = clear(document.getElementById('topbar'));
  bar.hidden = !user;
  if (!user) return;
  const current = route().name;
  const link = (name, label) => (ROLE_PAGES[name].includes(user.role)
    ? h('a', { href: `#/${name}`, class: current === name || (name === 'studies' && current === 'study') ? 'active' : '',
      testid: `nav-${name}` }, label) : null);
  bar.append(
    h('a', { class: 'brand', href: '#/' }, 'PACSNODE'),
    h('nav', {}, link('studies', 'Studies'), link('upload', 'Upload'), link('admin', 'Admin')),
    h('span', { class: 'spacer' }),
    h('button', { type: 'button', class: 'link', testid: 'settings-open', onclick: openSettings }, 'Settings'),
    h('span', { class: 'who', testid: 'user-name' }, `${user.name} · ${user.role}`),
    h('button', { type: 'button', testid: 'sign-out', onclick: signOut }, 'Sign out'));
}

async function signOut() {
  // The cache holds patient images: a shared workstation must not keep them past sign-out.
  await cache.clear().catch(() => {});
  memory.clear();
  app.signInMessage = 'You are signed out.';
  api.end('signed-out');
}

function signInForm() {
  const message = h('p', { class: 'error', testid: 'sign-in-message', role: 'alert' }, app.signInMessage || '');
  const username = h('input', { name: 'username', autocomplete: 'username', required: true, testid: 'username' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true,
    testid: 'password' });
  const button = h('button', { type: 'submit', class: 'primary', testid: 'sign-in' }, 'Sign in');
  const form = h('form', { class: 'panel sign-in', testid: 'sign-in-form', onsubmit: async (e) => {
    e.preventDefault();
    button.disabled = true;
    message.textContent = '';
    try {
      await api.login(username.value.trim(), password.value);
      app.signInMessage = '';
    } catch (err) {
      message.textContent = err.message;
    } finally {
      button.disabled = false;
    }
  } },
  h('h1', {}, 'PACSNODE'),
  h('p', { class: 'muted' }, 'Sign in to view and upload studies.'),
  h('label', {}, 'User name', username), h('label', {}, 'Password', password), button, message);
  setTimeout(() => username.focus(), 0);
  return form;
}

function openSettings() {
  const field = (key, label, attrs) => h('label', {}, label,
    h('input', { type: 'number', name: key, value: String(settings[key]), ...attrs }));
  const dialog = h('dialog', { class: 'panel settings', testid: 'settings-dialog' },
    h('form', { method: 'dialog', onsubmit: async (e) => {
      if (e.submitter?.value !== 'save') return;
      const form = new FormData(e.target);
      for (const [key, value] of form) settings[key] = Number(value);
      saveSettings(settings);
      Object.assign(settings, loadSettings());
      api.limiter.setMax(settings.maxConcurrent);
      cache.configure({ maxAgeHours: settings.cacheHours, maxBytes: settings.cacheMaxMB * 1e6 });
      memory.maxBytes = settings.memoryMB * 1e6;
      toast('Settings saved.');
    } },
    h('h2', {}, 'Settings'),
    field('maxConcurrent', 'Requests at once (3 to 5)', { min: '3', max: '5', step: '1' }),
    field('cacheHours', 'Keep cached images for (hours)', { min: '0.1', step: '0.1' }),
    field('cacheMaxMB', 'Cache size limit (MB)', { min: '64', step: '64' }),
    field('memoryMB', 'Images kept in memory (MB)', { min: '64', step: '64' }),
    field('cineFps', 'Cine frames per second', { min: '1', max: '60', step: '1' }),
    h('div', { class: 'actions' },
      h('button', { type: 'button', onclick: async () => { await cache.clear(); toast('Cache emptied.'); } }, 'Empty cache'),
      h('button', { value: 'cancel', formnovalidate: true }, 'Cancel'),
      h('button', { class: 'primary', value: 'save' }, 'Save'))));
  dialog.addEventListener('close', () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}

api.onSessionChange((user, reason) => {
  if (!user && reason && reason !== 'signed-out') app.signInMessage = reason;
  if (reason !== 'refreshed') render();
});

window.addEventListener('hashchange', render);

(async () => {
  await cache.open();
  await api.restore();
  render();
})();
