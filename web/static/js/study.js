// The study view: one thumbnail card per series with its live progress, and the series viewer.

import { h, personName, dicomDate, dicomTime } from './dom.js';
import { StudyLoader } from './loader.js';
import { SeriesViewer } from './viewer.js';

export async function renderStudy(main, app, studyUid) {
  const loader = new StudyLoader(app.api, app.cache, app.memory, studyUid);
  app.loader = loader;
  const header = h('div', { class: 'study-header', testid: 'study-header' },
    h('a', { href: '#/studies', class: 'back' }, '← Studies'), h('span', { class: 'muted' }, 'Loading study…'));
  const strip = h('div', { class: 'series-strip', testid: 'series-strip', role: 'list' });
  const viewerHost = h('div', { class: 'viewer-host' });
  const layout = h('section', { class: 'page study-page' }, header, h('div', { class: 'study-body' }, strip, viewerHost));
  main.append(layout);
  const cards = new Map();
  let viewer = null;
  const urls = [];
  const page = {
    destroy() {
      loader.stop();
      viewer?.destroy();
      for (const u of urls) URL.revokeObjectURL(u);
      if (app.loader === loader) app.loader = null;
    },
  };

  let study = {};
  let seriesList;
  try {
    const [studies, listing] = await Promise.all([
      app.api.json(`api/pacs/studies/?StudyInstanceUID=${encodeURIComponent(studyUid)}&limit=1`, { signal: loader.signal }),
      app.api.json(`api/pacs/studies/${encodeURIComponent(studyUid)}/series/`, { signal: loader.signal }),
    ]);
    study = studies.studies[0] || {};
    seriesList = listing.series;
  } catch (err) {
    if (!loader.signal.aborted) {
      header.lastChild.textContent = err.status === 404 ? 'This study is not on the server.' : `The study could not be opened: ${err.message}`;
      header.lastChild.className = 'error';
    }
    return page;
  }
  header.lastChild.remove();
  header.append(
    h('span', { class: 'patient' }, personName(study.patientName) || 'Unknown patient'),
    h('span', {}, study.patientId ? `ID ${study.patientId}` : ''),
    h('span', {}, [dicomDate(study.patientBirthDate), study.patientSex].filter(Boolean).join(' ')),
    h('span', {}, `${dicomDate(study.studyDate)} ${dicomTime(study.studyTime)}`.trim()),
    h('span', { class: 'desc' }, study.studyDescription || ''),
    h('span', { class: 'muted' }, `${seriesList.length} series`));

  for (const info of seriesList) {
    const img = h('img', { alt: '', class: 'thumb-img', draggable: 'false' });
    const bar = h('div', { class: 'bar-fill' });
    const label = h('span', { class: 'bar-label' }, `0 / ${info.imageCount ?? '?'}`);
    const progress = h('div', { class: 'progress not-started', testid: 'series-progress', role: 'progressbar',
      'aria-label': `Series ${info.seriesNumber ?? ''} loaded`, dataset: { loaded: '0', total: String(info.imageCount ?? 0), state: 'pending' } },
    bar, label);
    const error = h('div', { class: 'thumb-error', hidden: true },
      h('span', { class: 'msg' }),
      h('button', { type: 'button', testid: 'series-retry', onclick: (e) => { e.stopPropagation(); loader.retrySeries(info.seriesUid); } }, 'Retry'));
    const card = h('button', { type: 'button', class: 'series-thumb', role: 'listitem', testid: 'series-thumb',
      dataset: { seriesUid: info.seriesUid }, onclick: () => select(info.seriesUid),
      title: info.seriesDescription || '' },
    h('div', { class: 'thumb-box' }, img, h('span', { class: 'badge' }, info.modality || '')),
    h('div', { class: 'thumb-text' },
      h('span', { class: 'series-no' }, `Se ${info.seriesNumber ?? '–'}`),
      h('span', { class: 'series-desc' }, info.seriesDescription || '(no description)'),
      h('span', { class: 'series-count muted' }, `${info.imageCount ?? '?'} images`)),
    progress, error);
    cards.set(info.seriesUid, { card, img, bar, label, progress, error });
    strip.append(card);
  }

  loader.addEventListener('progress', (e) => updateCard(e.detail));
  function updateCard({ seriesUid, loaded, total, state, error }) {
    const c = cards.get(seriesUid);
    if (!c) return;
    const complete = total > 0 && loaded >= total;
    const cls = state === 'error' ? 'failed' : complete ? 'complete' : loaded > 0 || state === 'loading' ? 'loading' : 'not-started';
    c.progress.className = `progress ${cls}`;
    c.progress.dataset.loaded = String(loaded);
    c.progress.dataset.total = String(total);
    c.progress.dataset.state = cls;
    c.progress.setAttribute('aria-valuenow', String(loaded));
    c.progress.setAttribute('aria-valuemax', String(total));
    c.bar.style.width = `${total ? (100 * loaded) / total : 0}%`;
    c.label.textContent = `${loaded} / ${total}`;
    c.error.hidden = state !== 'error';
    c.error.querySelector('.msg').textContent = error || '';
  }

  function select(seriesUid) {
    for (const [uid, c] of cards) c.card.classList.toggle('selected', uid === seriesUid);
    viewer.open(seriesUid);
  }

  viewer = new SeriesViewer(loader, app.settings, study);
  app.viewer = viewer;
  viewerHost.append(viewer.element);
  if (!seriesList.length) {
    viewer.status.textContent = 'This study has no series.';
    return page;
  }
  loader.viewed.seriesUid = seriesList[0].seriesUid;
  for (const info of seriesList) {
    loader.thumbnail(info).then((url) => {
      if (!url) return;
      urls.push(url);
      cards.get(info.seriesUid).img.src = url;
    }).catch(() => { cards.get(info.seriesUid).img.classList.add('missing'); });
  }
  await loader.start(seriesList);
  select(seriesList[0].seriesUid);
  return page;
}
