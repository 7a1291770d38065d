// The study list: search by patient, ID, date range, modality and accession; newest first; paged.

import { h, clear, personName, dicomDate, dicomTime } from './dom.js';

const PAGE_SIZE = 25;
const MODALITIES = ['', 'CT', 'MR', 'CR', 'DX', 'US', 'NM', 'PT', 'MG', 'XA', 'RF', 'OT', 'SC'];
let lastQuery = { PatientName: '', PatientID: '', from: '', to: '', ModalitiesInStudy: '', AccessionNumber: '', offset: 0 };

export async function renderStudyList(main, app) {
  const q = { ...lastQuery };
  const input = (name, label, attrs = {}) => h('label', {}, label,
    h('input', { name, value: q[name] || '', testid: `search-${name}`, ...attrs }));
  const modality = h('select', { name: 'ModalitiesInStudy', testid: 'search-modality' },
    MODALITIES.map((m) => h('option', { value: m, selected: m === q.ModalitiesInStudy }, m || 'Any')));
  const form = h('form', { class: 'search', testid: 'study-search', onsubmit: (e) => {
    e.preventDefault();
    const data = new FormData(form);
    for (const [k, v] of data) q[k] = String(v).trim();
    q.offset = 0;
    load();
  } },
  input('PatientName', 'Patient name', { placeholder: 'SMITH* or *ANN*', title: '* any characters, ? one character' }),
  input('PatientID', 'Patient ID'),
  input('from', 'From', { type: 'date' }), input('to', 'To', { type: 'date' }),
  h('label', {}, 'Modality', modality),
  input('AccessionNumber', 'Accession'),
  h('button', { type: 'submit', class: 'primary', testid: 'search-submit' }, 'Search'),
  h('button', { type: 'button', onclick: () => { form.reset(); for (const k of Object.keys(q)) q[k] = ''; q.offset = 0; load(); } }, 'Clear'));

  const body = h('tbody', {});
  const status = h('p', { class: 'muted', testid: 'study-count', role: 'status' });
  const prev = h('button', { type: 'button', testid: 'page-prev', onclick: () => { q.offset = Math.max(0, q.offset - PAGE_SIZE); load(); } }, '← Newer');
  const next = h('button', { type: 'button', testid: 'page-next', onclick: () => { q.offset += PAGE_SIZE; load(); } }, 'Older →');
  const table = h('table', { class: 'studies' },
    h('thead', {}, h('tr', {}, ['Patient', 'Patient ID', 'Born', 'Study date', 'Description', 'Modalities',
      'Accession', 'Series', 'Images'].map((t) => h('th', { scope: 'col' }, t)))), body);
  main.append(h('section', { class: 'page studies-page' }, h('h1', {}, 'Studies'), form, status,
    h('div', { class: 'table-wrap' }, table), h('div', { class: 'pager' }, prev, next)));

  const controller = new AbortController();
  async function load() {
    lastQuery = { ...q };
    const params = new URLSearchParams();
    for (const key of ['PatientName', 'PatientID', 'ModalitiesInStudy', 'AccessionNumber']) if (q[key]) params.set(key, q[key]);
    if (q.from || q.to) params.set('StudyDate', `${(q.from || '').replaceAll('-', '')}-${(q.to || '').replaceAll('-', '')}`);
    params.set('limit', String(PAGE_SIZE));
    params.set('offset', String(q.offset));
    status.textContent = 'Searching…';
    let result;
    try {
      result = await app.api.json(`api/pacs/studies/?${params}`, { signal: controller.signal });
    } catch (err) {
      if (controller.signal.aborted) return;
      status.textContent = `Search failed: ${err.message}`;
      return;
    }
    clear(body);
    for (const st of result.studies) {
      const open = () => app.navigate(`study/${encodeURIComponent(st.studyUid)}`);
      body.append(h('tr', { testid: 'study-row', tabindex: '0', class: 'clickable', dataset: { studyUid: st.studyUid },
        onclick: open, onkeydown: (e) => { if (e.key === 'Enter') open(); } },
      h('td', { class: 'name' }, personName(st.patientName)), h('td', {}, st.patientId || ''),
      h('td', {}, dicomDate(st.patientBirthDate)),
      h('td', {}, `${dicomDate(st.studyDate)} ${dicomTime(st.studyTime)}`.trim()),
      h('td', {}, st.studyDescription || ''), h('td', {}, (st.modalitiesInStudy || []).join(', ')),
      h('td', {}, st.accessionNumber || ''), h('td', { class: 'num' }, st.numberOfSeries ?? ''),
      h('td', { class: 'num' }, st.numberOfInstances ?? '')));
    }
    const total = result.total ?? result.studies.length;
    status.textContent = total
      ? `${q.offset + 1}–${q.offset + result.studies.length} of ${total} studies, newest first`
      : 'No study matches.';
    prev.disabled = q.offset === 0;
    next.disabled = q.offset + result.studies.length >= total;
  }
  load();
  return { destroy: () => controller.abort() };
}
