// The admin page: catalogue and storage figures, users (add, role, disable, enable), and deleting
// a study or series after a confirmation that names the patient, the study and what goes.
// Routes: GET /api/admin/stats, GET|POST /api/admin/users/, PATCH /api/admin/users/{name},
// DELETE /api/pacs/studies/{uid}/ and /api/pacs/studies/{uid}/series/{uid}/.

import { h, clear, formatBytes, personName, dicomDate, toast } from './dom.js';

const ROLES = ['viewer', 'uploader', 'admin'];
const ROLE_HELP = { viewer: 'reads studies', uploader: 'uploads only', admin: 'reads, uploads, manages' };
const UID = /^[0-9]+(\.[0-9]+)+$/;

export async function renderAdmin(main, app) {
  const api = app.api;
  const stats = h('div', { class: 'panel', testid: 'admin-stats' });
  const users = h('div', { class: 'panel', testid: 'admin-users' });
  const del = h('div', { class: 'panel', testid: 'admin-delete' });
  main.append(h('section', { class: 'page admin-page' }, h('h1', {}, 'Administration'), stats, users, del));

  const problem = (el, what, err) => el.append(h('p', { class: 'error', testid: 'admin-unavailable', role: 'alert' },
    err.status === 405 ? `This server does not offer ${what} over HTTP.` : `${what}: ${err.message}`));

  async function loadStats() {
    clear(stats).append(h('h2', {}, 'Storage and catalogue'));
    let s;
    try { s = await api.json('api/admin/stats'); } catch (err) { problem(stats, 'Figures', err); return; }
    const figure = (key, label, value) => [h('dt', {}, label), h('dd', { testid: `stat-${key}` }, value)];
    const count = (n) => (Number.isFinite(n) ? n.toLocaleString('en') : '–');
    const used = s.diskTotalBytes ? 1 - s.diskFreeBytes / s.diskTotalBytes : 0;
    const usedBar = h('div', { class: 'disk-used' });
    usedBar.style.width = `${(used * 100).toFixed(1)}%`; // CSSOM: the CSP refuses style attributes
    stats.append(h('dl', { class: 'figures' },
      figure('patients', 'Patients', count(s.patients)), figure('studies', 'Studies', count(s.studies)),
      figure('series', 'Series', count(s.series)), figure('instances', 'Images', count(s.instances)),
      figure('bytes', 'Stored', formatBytes(s.bytes)),
      figure('disk-free', 'Disk free', s.diskTotalBytes ? `${formatBytes(s.diskFreeBytes)} of ${formatBytes(s.diskTotalBytes)}` : '–')),
    h('div', { class: `disk-bar${used > 0.9 ? ' full' : ''}`, testid: 'disk-bar' }, usedBar),
    h('p', { class: 'muted disk-note' }, `Disk ${Math.round(used * 100)} % used${used > 0.9 ? ': free space before the scanners fill it' : ''}.`));
  }

  async function loadUsers() {
    clear(users).append(h('h2', {}, 'Users'));
    let result;
    try { result = await api.json('api/admin/users/'); } catch (err) { problem(users, 'User management', err); return; }
    const me = api.user?.name;
    const body = h('tbody', {});
    for (const u of result.users) {
      const role = h('select', { 'aria-label': `Role of ${u.username}`, testid: 'user-role',
        onchange: () => patch(u.username, { role: role.value }, `${u.username} is now ${role.value}.`) },
      ROLES.map((r) => h('option', { value: r, selected: r === u.role }, r)));
      const action = u.disabled
        ? h('button', { type: 'button', testid: 'user-enable', onclick: () => patch(u.username, { disabled: false }, `${u.username} may sign in again.`) }, 'Enable')
        : h('button', { type: 'button', testid: 'user-disable', onclick: async () => {
          const ok = await confirmDialog(`Disable ${u.username}?`, [
            `${u.username} can no longer sign in; a session already open ends when its access token expires (15 minutes by default).`],
          'Disable user');
          if (ok) patch(u.username, { disabled: true }, `${u.username} is disabled.`);
        } }, 'Disable');
      body.append(h('tr', { testid: 'user-row', class: u.disabled ? 'disabled' : '', dataset: { username: u.username, state: u.disabled ? 'disabled' : 'active' } },
        h('td', { class: 'name' }, u.username, u.username === me ? h('span', { class: 'muted' }, ' (you)') : null),
        h('td', {}, role, h('span', { class: 'muted role-help' }, ROLE_HELP[u.role] || '')),
        h('td', { testid: 'user-state' }, h('span', { class: `state ${u.disabled ? 'off' : 'on'}` }, u.disabled ? 'disabled' : 'active')),
        h('td', { class: 'muted' }, (u.createdAt || '').slice(0, 10)),
        h('td', { class: 'actions-cell' }, action)));
    }
    const name = h('input', { name: 'username', required: true, autocomplete: 'off', pattern: '[A-Za-z0-9._@\\-]{1,64}',
      title: '1-64 letters, digits or . _ @ -', testid: 'add-user-name' });
    const password = h('input', { name: 'password', type: 'password', required: true, minlength: '8',
      autocomplete: 'new-password', testid: 'add-user-password' });
    const newRole = h('select', { name: 'role', testid: 'add-user-role' }, ROLES.map((r) => h('option', { value: r }, r)));
    const message = h('p', { class: 'error', role: 'alert', testid: 'add-user-message' });
    users.append(h('div', { class: 'table-wrap' }, h('table', { class: 'users' },
      h('thead', {}, h('tr', {}, ['User', 'Role', 'State', 'Added', ''].map((t) => h('th', { scope: 'col' }, t)))), body)),
    h('form', { class: 'inline-form', testid: 'add-user-form', onsubmit: async (e) => {
      e.preventDefault();
      message.textContent = '';
      try {
        await api.send('api/admin/users/', 'POST', { username: name.value.trim(), password: password.value, role: newRole.value });
        toast(`User ${name.value.trim()} added as ${newRole.value}.`);
        loadUsers();
      } catch (err) { message.textContent = `Could not add the user: ${err.message}`; }
    } }, h('label', {}, 'New user name', name), h('label', {}, 'Password (8+ characters)', password),
    h('label', {}, 'Role', newRole), h('button', { type: 'submit', class: 'primary', testid: 'add-user' }, 'Add user')), message);
  }

  async function patch(username, change, done) {
    try {
      await api.send(`api/admin/users/${encodeURIComponent(username)}`, 'PATCH', change);
      toast(done);
    } catch (err) { toast(`Could not change ${username}: ${err.message}`, 'error'); }
    loadUsers();
  }

  // --- deleting ------------------------------------------------------------------------------
  const find = h('input', { name: 'find', required: true, placeholder: 'Patient ID, accession number or Study UID',
    testid: 'delete-find', autocomplete: 'off', class: 'wide' });
  const found = h('div', { class: 'found', testid: 'delete-found' });
  const result = h('p', { class: 'muted', role: 'status', testid: 'delete-result' });
  del.append(h('h2', {}, 'Delete a study or series'),
    h('p', { class: 'muted' }, 'The files and catalogue rows are removed for good; the audit trail and upload records stay.'),
    h('form', { class: 'inline-form', onsubmit: (e) => { e.preventDefault(); search(find.value.trim()); } },
      h('label', {}, 'Find the study', find), h('button', { type: 'submit', testid: 'delete-search' }, 'Find')),
    result, found);

  async function search(text, note = '') {
    result.textContent = note || 'Searching…';
    const keys = UID.test(text) ? ['StudyInstanceUID'] : ['PatientID', 'AccessionNumber'];
    let studies;
    try {
      const answers = await Promise.all(keys.map((k) => api.json(`api/pacs/studies/?${new URLSearchParams({ [k]: text, limit: '20' })}`)));
      studies = [...new Map(answers.flatMap((a) => a.studies).map((s) => [s.studyUid, s])).values()];
    } catch (err) { result.textContent = `Search failed: ${err.message}`; return; }
    result.textContent = note || (studies.length ? '' : `No study with the patient ID, accession number or UID “${text}”.`);
    // swapped in whole once built, so the page keeps its scroll position after a deletion
    found.replaceChildren(...await Promise.all(studies.map(studyBlock)));
  }

  async function studyBlock(st) {
    const who = `${personName(st.patientName) || 'Unknown patient'} (${st.patientId || 'no ID'})`;
    const when = `${dicomDate(st.studyDate)} ${st.studyDescription || ''}`.trim();
    const block = h('div', { class: 'delete-study', testid: 'delete-study-row', dataset: { studyUid: st.studyUid } },
      h('div', { class: 'delete-head' },
        h('div', {}, h('strong', {}, who), h('span', { class: 'muted' }, ` · ${when} · accession ${st.accessionNumber || '–'}`),
          h('div', { class: 'muted uid' }, st.studyUid)),
        h('button', { type: 'button', class: 'danger', testid: 'delete-study', onclick: async () => {
          const ok = await confirmDialog('Delete the whole study?', [
            `${who}, ${when}`, `${st.numberOfSeries} series, ${st.numberOfInstances} images.`], 'Delete study');
          if (ok) remove(`api/pacs/studies/${st.studyUid}/`, `the study of ${who} of ${dicomDate(st.studyDate)}`);
        } }, 'Delete study…')));
    let series = [];
    try { series = (await api.json(`api/pacs/studies/${st.studyUid}/series/`)).series; } catch (err) {
      block.append(h('p', { class: 'error' }, `Series: ${err.message}`));
    }
    const rows = h('tbody', {});
    for (const s of series) {
      const label = `series ${s.seriesNumber ?? '?'} ${s.modality || ''} “${s.seriesDescription || 'no description'}”`;
      rows.append(h('tr', { testid: 'delete-series-row', dataset: { seriesUid: s.seriesUid } },
        h('td', { class: 'num' }, s.seriesNumber ?? ''), h('td', {}, s.modality || ''), h('td', {}, s.seriesDescription || ''),
        h('td', { class: 'num' }, `${s.imageCount} images`),
        h('td', { class: 'actions-cell' }, h('button', { type: 'button', class: 'danger small', testid: 'delete-series',
          dataset: { seriesUid: s.seriesUid }, onclick: async () => {
            const last = series.length === 1 ? ' It is the last series: the study goes with it.' : '';
            const ok = await confirmDialog(`Delete ${label}?`, [`${who}, ${when}`, `${s.imageCount} images.${last}`], 'Delete series');
            if (ok) remove(`api/pacs/studies/${st.studyUid}/series/${s.seriesUid}/`, `${label} of ${who}`);
          } }, 'Delete series…'))));
    }
    if (series.length) block.append(h('table', { class: 'series-table' }, rows));
    return block;
  }

  async function remove(path, what) {
    result.textContent = `Deleting ${what}…`;
    let note;
    try {
      const done = await (await api.request(path, { method: 'DELETE', retries: 0 })).json();
      note = `Deleted ${what}: ${done.instances} images, ${formatBytes(done.bytes)}.`;
      toast(`Deleted ${what}.`);
    } catch (err) {
      note = err.status === 404 ? `Already gone: ${what}.` : `Could not delete ${what}: ${err.message}`;
    }
    await search(find.value.trim(), note);
    loadStats();
  }

  loadStats();
  loadUsers();
  return {};
}

/** A modal question with the facts on separate lines; resolves true only for the named action. */
function confirmDialog(title, lines, action) {
  return new Promise((resolve) => {
    const dialog = h('dialog', { class: 'panel confirm', testid: 'confirm-dialog' },
      h('form', { method: 'dialog' }, h('h2', {}, title), lines.map((l) => h('p', {}, l)),
        h('div', { class: 'actions' },
          h('button', { value: 'cancel', testid: 'confirm-cancel', autofocus: true }, 'Cancel'),
          h('button', { value: 'ok', class: 'danger', testid: 'confirm-ok' }, action))));
    dialog.addEventListener('close', () => { resolve(dialog.returnValue === 'ok'); dialog.remove(); });
    document.body.append(dialog);
    dialog.showModal();
  });
}
