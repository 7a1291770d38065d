// The upload page: files and folders (drag-and-drop, a folder picker for USB sticks and DVDs)
// sent through upload sessions: SHA-256 first, then metadata, then tus 1.0.0 chunks with
// Upload-Checksum, resumed from the server's offset, at most three files at once.

import { h, clear, formatBytes, personName, dicomDate } from './dom.js';
import { readDicomHeader, DICOMDIR_CLASS } from './dicomheader.js';
import { Sha256, sha256, toBase64, toHex } from './hashing.js';
import { ApiError } from './api.js';

const FILES_AT_ONCE = 3;
const CHUNK = 512 * 1024;
const HASH_SLICE = 4 * 1024 * 1024;
const TUS = { 'Tus-Resumable': '1.0.0' };
const DONE_STATES = new Set(['SYNCED', 'ACK_RECEIVED']);

export async function renderUpload(main, app) {
  const canRead = ['viewer', 'admin'].includes(app.api.user.role);
  const items = [];
  let running = 0;
  let stopped = false;

  const fileInput = h('input', { type: 'file', multiple: true, hidden: true, testid: 'upload-files',
    onchange: () => { addFiles([...fileInput.files].map((f) => ({ file: f, path: f.name }))); fileInput.value = ''; } });
  const folderInput = h('input', { type: 'file', multiple: true, hidden: true, webkitdirectory: true, testid: 'upload-folder',
    onchange: () => { addFiles([...folderInput.files].map((f) => ({ file: f, path: f.webkitRelativePath || f.name }))); folderInput.value = ''; } });
  const drop = h('div', { class: 'drop', testid: 'upload-drop', tabindex: '0', role: 'button',
    'aria-label': 'Drop DICOM files or folders here, or press Enter to choose files',
    onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); fileInput.click(); } },
    ondragover: (e) => { e.preventDefault(); drop.classList.add('over'); },
    ondragleave: () => drop.classList.remove('over'),
    ondrop: async (e) => {
      e.preventDefault();
      drop.classList.remove('over');
      addFiles(await droppedFiles(e.dataTransfer));
    } },
  h('strong', {}, 'Drop DICOM files or folders here'),
  h('span', { class: 'muted' }, 'Non-DICOM files are skipped. Each file is checked with SHA-256 and can resume after a broken connection.'),
  h('div', { class: 'actions' },
    h('button', { type: 'button', class: 'primary', testid: 'upload-usb', onclick: () => folderInput.click() }, 'Load from USB/DVD…'),
    h('button', { type: 'button', onclick: () => fileInput.click() }, 'Choose files…')));

  const overallFill = h('div', { class: 'bar-fill' });
  const overallLabel = h('span', { class: 'bar-label' }, '');
  const overall = h('div', { class: 'progress big', testid: 'upload-progress', role: 'progressbar',
    dataset: { done: '0', total: '0', bytesDone: '0', bytesTotal: '0' } }, overallFill, overallLabel);
  const list = h('ul', { class: 'upload-list', testid: 'upload-list' });
  const summary = h('div', { class: 'panel summary', testid: 'upload-summary', hidden: true });
  main.append(h('section', { class: 'page upload-page' }, h('h1', {}, 'Upload'), drop, fileInput, folderInput,
    overall, summary, list));

  function addFiles(entries) {
    summary.hidden = true;
    // in folder order, as on the medium: a series arrives together and the list reads like the stick
    entries.sort((a, b) => a.path.localeCompare(b.path, 'en', { numeric: true }));
    for (const { file, path } of entries) {
      const item = { file, path, state: 'waiting', sent: 0, message: '', header: null, session: null };
      item.row = fileRow(item);
      items.push(item);
      list.append(item.row.element);
    }
    refresh();
    pump();
  }

  function fileRow(item) {
    const fill = h('div', { class: 'bar-fill' });
    const state = h('span', { class: 'file-state' }, 'waiting');
    const retry = h('button', { type: 'button', hidden: true, testid: 'upload-retry',
      onclick: () => { item.state = 'waiting'; item.message = ''; update(item); refresh(); pump(); } }, 'Retry');
    const element = h('li', { class: 'upload-file', testid: 'upload-file', dataset: { state: 'waiting', path: item.path } },
      h('span', { class: 'file-name', title: item.path }, item.path),
      h('span', { class: 'muted' }, formatBytes(item.file.size)),
      h('div', { class: 'progress small' }, fill), state, retry);
    return { element, fill, state, retry };
  }

  function update(item) {
    const r = item.row;
    r.element.dataset.state = item.state;
    r.fill.style.width = `${item.file.size ? (100 * item.sent) / item.file.size : 100}%`;
    r.state.textContent = item.message || item.state;
    r.state.className = `file-state ${item.state}`;
    r.retry.hidden = item.state !== 'failed';
  }

  function refresh() {
    const considered = items.filter((i) => i.state !== 'skipped');
    const done = considered.filter((i) => i.state === 'stored' || i.state === 'present').length;
    const bytesTotal = considered.reduce((n, i) => n + i.file.size, 0);
    const bytesDone = considered.reduce((n, i) => n + i.sent, 0);
    Object.assign(overall.dataset, { done: String(done), total: String(considered.length),
      bytesDone: String(bytesDone), bytesTotal: String(bytesTotal) });
    overallFill.style.width = `${bytesTotal ? (100 * bytesDone) / bytesTotal : 0}%`;
    overallLabel.textContent = considered.length
      ? `${done} / ${considered.length} files · ${formatBytes(bytesDone)} of ${formatBytes(bytesTotal)}` : 'No files yet';
    if (items.length && items.every((i) => ['stored', 'present', 'skipped', 'failed'].includes(i.state))) showSummary();
  }

  function pump() {
    while (!stopped && running < FILES_AT_ONCE) {
      const next = items.find((i) => i.state === 'waiting');
      if (!next) return;
      running += 1;
      next.state = 'checking';
      update(next);
      uploadFile(app.api, next, () => { update(next); refresh(); })
        .catch((err) => {
          next.state = 'failed';
          next.message = err instanceof ApiError && err.status === 403 ? 'Your role may not upload.' : err.message;
        })
        .finally(() => { running -= 1; update(next); refresh(); pump(); });
    }
  }

  function showSummary() {
    clear(summary);
    summary.hidden = false;
    const count = (s) => items.filter((i) => i.state === s).length;
    const failures = count('failed');
    summary.classList.toggle('with-failures', failures > 0);
    summary.append(h('h2', {}, failures ? `Upload finished: ${failures} file${failures > 1 ? 's' : ''} failed` : 'Upload finished'),
      h('p', { testid: 'upload-counts' }, `${count('stored')} stored, ${count('present')} already on the server, `
        + `${count('skipped')} skipped, ${count('failed')} failed.`));
    const studies = new Map();
    for (const i of items) {
      if ((i.state === 'stored' || i.state === 'present') && i.header?.studyUid) {
        const s = studies.get(i.header.studyUid) || { ...i.header, files: 0 };
        s.files += 1;
        studies.set(i.header.studyUid, s);
      }
    }
    if (studies.size) {
      summary.append(h('ul', { class: 'uploaded-studies' }, [...studies.values()].map((s) => h('li', { testid: 'uploaded-study', dataset: { studyUid: s.studyUid } },
        `${personName(s.patientName) || 'Unknown patient'} · ${s.patientId || ''} · ${dicomDate(s.studyDate)} · ${s.studyDescription || ''} (${s.files} files) `,
        canRead ? h('a', { href: `#/study/${encodeURIComponent(s.studyUid)}`, testid: 'open-uploaded-study' }, 'Open') : null))));
    }
    const failed = items.filter((i) => i.state === 'failed');
    if (failed.length) {
      summary.append(h('button', { type: 'button', testid: 'upload-retry-all', onclick: () => {
        for (const i of failed) { i.state = 'waiting'; i.message = ''; update(i); }
        refresh(); pump();
      } }, `Retry ${failed.length} failed`));
    }
  }

  refresh();
  return { destroy() { stopped = true; } };
}

/** Every file of a drop, folders walked recursively (File System entries API). */
async function droppedFiles(dataTransfer) {
  const entries = [...dataTransfer.items].map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.length) return [...dataTransfer.files].map((f) => ({ file: f, path: f.name }));
  const out = [];
  async function walk(entry, prefix) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, path: prefix + file.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
      }
    }
  }
  for (const entry of entries) await walk(entry, '');
  return out;
}

async function fileSha256(file, onProgress) {
  const hash = new Sha256();
  for (let at = 0; at < file.size; at += HASH_SLICE) {
    hash.update(new Uint8Array(await file.slice(at, at + HASH_SLICE).arrayBuffer()));
    onProgress(Math.min(file.size, at + HASH_SLICE));
  }
  return toHex(hash.digest());
}

/** One file through its upload session, from hashing to the acknowledged instance. */
async function uploadFile(api, item, changed) {
  const { file } = item;
  item.header = await readDicomHeader(file);
  if (!item.header) { item.state = 'skipped'; item.message = 'skipped: not a DICOM file'; return; }
  if (item.header.mediaStorageSopClassUid === DICOMDIR_CLASS || /(^|\/)DICOMDIR$/i.test(item.path)) {
    item.state = 'skipped'; item.message = 'skipped: DICOMDIR (the media index; its images are sent from the folder)';
    return;
  }
  item.message = 'checking…';
  changed();
  const digest = await fileSha256(file, () => {});
  let session = await api.send('api/upload-sessions/', 'POST', {
    fileName: item.path.split('/').pop(), size: file.size, sha256: digest, contentType: 'application/dicom',
    metadata: { relativePath: item.path, source: 'browser' } });
  item.session = session;
  if (DONE_STATES.has(session.status)) {
    item.state = 'present'; item.sent = file.size; item.message = 'already on the server';
    await acknowledge(api, session);
    return;
  }
  const base = `api/upload-sessions/${session.sessionId}`;
  if (session.status === 'FAILED' || session.status === 'EXPIRED') {
    session = await api.send(`${base}/retry`, 'POST', {});
  }
  if (session.status === 'QUEUED') {
    session = await api.send(`${base}/metadata`, 'PUT', { relativePath: item.path, source: 'browser',
      patientId: item.header.patientId, studyUid: item.header.studyUid, sopInstanceUid: item.header.sopInstanceUid }) || session;
  }
  const uploadUrl = (session.uploadUrl || `/${base}/binary`).replace(/^\//, '');
  item.state = 'sending';
  let offset = await serverOffset(api, uploadUrl);
  let checksumFailures = 0;
  while (offset < file.size) {
    item.sent = offset;
    item.message = `sending ${Math.round((100 * offset) / file.size)}%`;
    changed();
    const chunk = new Uint8Array(await file.slice(offset, offset + CHUNK).arrayBuffer());
    try {
      const response = await api.request(uploadUrl, { method: 'PATCH', body: chunk, headers: { ...TUS,
        'Upload-Offset': String(offset), 'Content-Type': 'application/offset+octet-stream',
        'Upload-Checksum': `sha256 ${toBase64(sha256(chunk))}` } });
      offset = Number(response.headers.get('Upload-Offset') ?? offset + chunk.length);
    } catch (err) {
      if (err.status === 409) { offset = await serverOffset(api, uploadUrl); continue; }
      if (err.status === 460 && ++checksumFailures < 3) continue;
      throw err;
    }
  }
  item.sent = file.size;
  item.message = 'storing…';
  changed();
  session = await finalState(api, base);
  if (session.status === 'FAILED') {
    throw new Error(`${session.errorCode || 'FAILED'}: ${session.errorMessage || 'the server refused the file'}`);
  }
  await acknowledge(api, session);
  item.state = 'stored';
  item.message = 'stored';
}

async function serverOffset(api, uploadUrl) {
  const response = await api.request(uploadUrl, { method: 'HEAD', headers: TUS });
  return Number(response.headers.get('Upload-Offset') || 0);
}

async function finalState(api, base) {
  const deadline = performance.now() + 120000;
  for (let wait = 50; performance.now() < deadline; wait = Math.min(1000, wait * 2)) {
    const session = await api.json(`${base}/`).catch(async (err) => {
      if (err.status === 404 || err.status === 405) return api.json(base);
      throw err;
    });
    if (DONE_STATES.has(session.status) || session.status === 'FAILED') return session;
    await new Promise((r) => setTimeout(r, wait));
  }
  throw new Error('the server has not finished storing the file after 2 minutes; retry later');
}

async function acknowledge(api, session) {
  if (session.status !== 'SYNCED' || !session.serverImageId) return;
  await api.send(`api/upload-sessions/${session.sessionId}/acknowledge`, 'POST', { serverImageId: session.serverImageId });
}
