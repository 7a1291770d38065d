// The admin page: users (add, disable, role), deleting a study or series, storage figures.
// Each part names the API route it needs and says so plainly when the server lacks it.

import { h, clear, formatBytes, personName, dicomDate, toast } from './dom.js';

const ROLES = ['viewer', 'uploader', 'admin'];

export async function renderAdmin(main, app) {
  const api = app.api;
  const stats = h('div', { class: 'panel', testid: 'admin-stats' }, h('h2', {}, 'Storage and catalogue'), h('p', { class: 'muted' }, 'Loading…'));
  const users = h('div', { class: 'panel', testid: 'admin-users' }, h('h2', {}, 'Users'), h('p', { class: 'muted' }, 'Loading…'));
  const del = h('div', { class: 'panel', testid: 'admin-delete' }, h('h2', {}, 'Delete a study or series'));
  main.append(h('section', { class: 'page admin-page' }, h('h1', {}, 'Administration'), stats, users, del));

  const missing = (el, what, err) => {
    const p = h('p', { class: err.status === 404 || err.status === 405 ? 'muted' : 'error', testid: 'admin-unavailable' },
      err.status === 404 || err.status === 405 ? `This server does not offer ${what} over HTTP yet.` : `${what}: ${err.message}`);
    el.querySelectorAll('p.muted').forEach((x) => x.remove());
    el.append(p);
  };

  async function loadStats() {
    try {
      const s = await api.json('api/admin/stats');
      stats.querySelectorAll('p, dl').forEach((x) => x.remove());
      stats.append(h('dl', { class: 'figures' },
        ['patients', 'studies', 'series', 'instances'].flatMap((k) => [h('dt', {}, k), h('dd', {}, String(s[k] ?? '–'))]),
        h('dt', {}, 'stored'), h('dd', {}, formatBytes(s.bytes))));
    } catch (err) { missing(stats, 'storage figures (GET /api/admin/stats)', err); }
  }

  async function loadUsers() {
    let result;
    try { result = await api.json('api/admin/users/'); } catch (err) { missing(users, 'user management (GET /api/admin/users/)', err); return; }
    clear(users).append(h('h2', {}, 'Users'));
    const body = h('tbody', {});
    for (const u of result.users) {
      const role = h('select', { 'aria-label': `Role of ${u.username}`, onchange: () => patch(u.username, { role: role.value }) },
        ROLES.map((r) => h('option', { value: r, selected: r === u.role }, r)));
      body.append(h('tr', { testid: 'user-row', dataset: { username: u.username } },
        h('td', {}, u.username), h('td', {}, role), h('td', {}, u.disabled ? 'disabled' : 'active'),
        h('td', {}, u.disabled ? null : h('button', { type: 'button', onclick: () => {
          if (confirm(`Disable ${u.username}? Their sessions end at once.`)) patch(u.username, { disabled: true });
        } }, 'Disable'))));
    }
    const name = h('input', { name: 'username', required: true, autocomplete: 'off' });
    const password = h('input', { name: 'password', type: 'password', required: true, autocomplete: 'new-password' });
    const newRole = h('select', { name: 'role' }, ROLES.map((r) => h('option', { value: r }, r)));
    users.append(h('table', {}, h('thead', {}, h('tr', {}, ['User', 'Role', 'State', ''].map((t) => h('th', {}, t)))), body),
      h('form', { class: 'inline-form', onsubmit: async (e) => {
        e.preventDefault();
        try {
          await api.send('api/admin/users/', 'POST', { username: name.value.trim(), password: password.value, role: newRole.value });
          toast(`User ${name.value} added.`);
          loadUsers();
        } catch (err) { toast(`Could not add the user: ${err.message}`, 'error'); }
      } }, h('label', {}, 'User name', name), h('label', {}, 'Password', password), h('label', {}, 'Role', newRole),
      h('button', { type: 'submit', class: 'primary' }, 'Add user')));
  }

  async function patch(username, change) {
    try {
      await api.send(`api/admin/users/${encodeURIComponent(username)}`, 'PATCH', change);
      toast(`${username} updated.`);
    } catch (err) { toast(`Could not change ${username}: ${err.message}`, 'error'); }
    loadUsers();
  }

  const studyUid = h('input', { name: 'study', placeholder: 'Study Instance UID', pattern: '[0-9.]{1,64}', required: true, testid: 'delete-study-uid' });
  const seriesUid = h('input', { name: 'series', placeholder: 'Series Instance UID (empty: the whole study)', pattern: '[0-9.]{0,64}' });
  const preview = h('div', { class: 'muted' });
  del.append(h('form', { class: 'inline-form', onsubmit: async (e) => {
    e.preventDefault();
    const study = studyUid.value.trim(); const series = seriesUid.value.trim();
    let what = `series ${series}`;
    try {
      const found = await api.json(`api/pacs/studies/?StudyInstanceUID=${study}&limit=1`);
      const st = found.studies[0];
      if (!st) { preview.textContent = 'No such study.'; return; }
      what = series ? `series ${series} of ${personName(st.patientName)}'s study of ${dicomDate(st.studyDate)}`
        : `the whole study of ${personName(st.patientName)} (${st.patientId}) of ${dicomDate(st.studyDate)}, ${st.numberOfInstances} images`;
    } catch (err) { preview.textContent = err.message; return; }
    if (!confirm(`Delete ${what}? The files and catalogue rows go; the audit trail stays.`)) return;
    try {
      await api.request(series ? `api/pacs/studies/${study}/series/${series}/` : `api/pacs/studies/${study}/`, { method: 'DELETE' });
      toast('Deleted.');
      preview.textContent = `Deleted ${what}.`;
    } catch (err) {
      preview.textContent = err.status === 404 || err.status === 405
        ? 'This server does not offer deletion over HTTP yet (DELETE /api/pacs/studies/{uid}/).' : err.message;
    }
  } }, h('label', {}, 'Study', studyUid), h('label', {}, 'Series', seriesUid),
  h('button', { type: 'submit', class: 'danger' }, 'Delete…')), preview);

  loadStats();
  loadUsers();
  return {};
}
