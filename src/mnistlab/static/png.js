// A canvas as a grey PNG: what the Draw view sends the server for a drawing.
//
// The page draws in grey only (ink #111 on white paper, test images as grey levels), but a browser's
// canvas.toBlob writes four channels, each grey level four times, which the server must inflate and
// convert back to one. A one-channel PNG holds the same picture (Pillow reads its levels exactly as
// it converts the RGBA export's: R = G = B = v gives v) at a quarter of the raw size: docs/serve.md
// measures what that saves the server per drawing.
"use strict";

// The PNG bytes as a Blob, or null when a pixel is coloured or not opaque (a photo painted on the
// canvas) or the browser has no CompressionStream (before 2023 in Firefox and Safari): the caller
// then sends toBlob's export.
export async function greyPng(canvas) {
  if (typeof CompressionStream === "undefined") return null;
  const { width, height } = canvas;
  const rgba = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  const rows = new Uint8Array((width + 1) * height);  // each row: its filter type (0, none), then its levels
  for (let y = 0, i = 0, o = 0; y < height; y++) {
    rows[o++] = 0;
    for (let x = 0; x < width; x++, i += 4) {
      const v = rgba[i];
      if (rgba[i + 1] !== v || rgba[i + 2] !== v || rgba[i + 3] !== 255) return null;
      rows[o++] = v;
    }
  }
  // "deflate" is zlib's format (RFC 1950), which a PNG's image data is.
  const zlib = new Blob([rows]).stream().pipeThrough(new CompressionStream("deflate"));
  const data = new Uint8Array(await new Response(zlib).arrayBuffer());
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header.set([8, 0, 0, 0, 0], 8);  // 8 bits a pixel, grey, deflate, filters per row, not interlaced
  return new Blob([SIGNATURE, chunk("IHDR", header), chunk("IDAT", data), chunk("IEND", new Uint8Array(0))],
    { type: "image/png" });
}

const SIGNATURE = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);

// length, type, data, then the CRC-32 of type and data (PNG's chunk layout; integers big-endian).
function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let k = 0; k < 4; k++) out[4 + k] = type.charCodeAt(k);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

let CRC_TABLE = null;  // made at the first chunk, not when the page loads

function crc32(bytes) {
  if (CRC_TABLE === null) {
    CRC_TABLE = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      CRC_TABLE[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
