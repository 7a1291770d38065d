// Just enough of a DICOM Part 10 reader for the upload page: is this file DICOM, is it a
// DICOMDIR, and which patient and study does it hold (PS3.10 7.1, PS3.5 7.1).

const LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);
const WANTED = {
  0x00020002: 'mediaStorageSopClassUid', 0x00020010: 'transferSyntaxUid',
  0x00080018: 'sopInstanceUid', 0x00080020: 'studyDate', 0x00080060: 'modality',
  0x00081030: 'studyDescription', 0x0008103e: 'seriesDescription',
  0x00100010: 'patientName', 0x00100020: 'patientId',
  0x0020000d: 'studyUid', 0x0020000e: 'seriesUid',
};
export const DICOMDIR_CLASS = '1.2.840.10008.1.3.10';
const HEADER_BYTES = 256 * 1024;

/** null when the file is not Part 10 DICOM, else what the header says (partial if unreadable). */
export async function readDicomHeader(file) {
  if (file.size < 132) return null;
  const bytes = new Uint8Array(await file.slice(0, Math.min(file.size, HEADER_BYTES)).arrayBuffer());
  if (bytes[128] !== 0x44 || bytes[129] !== 0x49 || bytes[130] !== 0x43 || bytes[131] !== 0x4d) return null;
  const out = {};
  try {
    const view = new DataView(bytes.buffer);
    let pos = readElements(view, bytes, 132, { explicit: true, little: true }, out, 0x0002ffff);
    const ts = out.transferSyntaxUid || '1.2.840.10008.1.2.1';
    if (ts !== '1.2.840.10008.1.2.1.99') {  // deflated: the header stays unknown, the file is still sent
      readElements(view, bytes, pos, { explicit: ts !== '1.2.840.10008.1.2', little: ts !== '1.2.840.10008.1.2.2' },
        out, 0x0020000e);
    }
  } catch {
    // a header running past the bytes read: what was found so far is enough
  }
  return out;
}

function readElements(view, bytes, pos, syntax, out, lastTag, depth = 0) {
  while (pos + 8 <= bytes.length) {
    const group = view.getUint16(pos, syntax.little); const element = view.getUint16(pos + 2, syntax.little);
    const tag = ((group << 16) | element) >>> 0;
    if (tag === 0xfffee00d || tag === 0xfffee0dd) return pos + 8;  // item or sequence end
    if (depth === 0 && tag > lastTag) return pos;
    let vr = null; let length; let start;
    const explicit = group === 0x0002 ? true : syntax.explicit;
    const little = group === 0x0002 ? true : syntax.little;
    if (explicit && group !== 0xfffe) {
      vr = String.fromCharCode(bytes[pos + 4], bytes[pos + 5]);
      if (LONG_VRS.has(vr)) { length = view.getUint32(pos + 8, little); start = pos + 12; } else {
        length = view.getUint16(pos + 6, little); start = pos + 8;
      }
    } else {
      length = view.getUint32(pos + 4, little); start = pos + 8;
    }
    if (length === 0xffffffff) {
      pos = skipUndefined(view, bytes, start, syntax, depth);
      continue;
    }
    if (depth === 0 && WANTED[tag]) {
      out[WANTED[tag]] = decodeText(bytes.subarray(start, Math.min(start + length, bytes.length)));
    }
    pos = start + length;
  }
  throw new RangeError('header longer than the bytes read');
}

/** Past a sequence (or item) of undefined length: items, each read until its delimiter. */
function skipUndefined(view, bytes, pos, syntax, depth) {
  while (pos + 8 <= bytes.length) {
    const tag = ((view.getUint16(pos, syntax.little) << 16) | view.getUint16(pos + 2, syntax.little)) >>> 0;
    const length = view.getUint32(pos + 4, syntax.little);
    if (tag === 0xfffee0dd) return pos + 8;
    if (tag === 0xfffee000) {
      if (length === 0xffffffff) pos = readElements(view, bytes, pos + 8, syntax, {}, 0, depth + 1);
      else pos += 8 + length;
    } else {
      return readElements(view, bytes, pos, syntax, {}, 0, depth + 1);  // encapsulated pixel data
    }
  }
  throw new RangeError('sequence longer than the bytes read');
}

function decodeText(bytes) {
  let s;
  try { s = new TextDecoder('utf-8', { fatal: true }).decode(bytes); } catch { s = new TextDecoder('latin1').decode(bytes); }
  return s.replace(/[\0 ]+$/, '').trim();
}
