// Small images drawn pixel by pixel on canvases: grey pictures, heat maps and signed maps.
"use strict";

// A perceptual colour scale, dark (quiet) to bright (active): stops of "inferno".
const INFERNO = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
  [250, 193, 39], [252, 255, 164]];

export function heat(t) {
  const x = Math.min(1, Math.max(0, t)) * (INFERNO.length - 1);
  const i = Math.min(INFERNO.length - 2, Math.floor(x)), f = x - i;
  return INFERNO[i].map((a, k) => Math.round(a + f * (INFERNO[i + 1][k] - a)));
}

const NEGATIVE = [37, 99, 235];  // blue
const POSITIVE = [220, 38, 38];  // red

// A signed value in -1..1 as a colour over `base` (an [r, g, b] background): red above 0, blue below.
export function signed(t, base = [255, 255, 255]) {
  const a = Math.min(1, Math.abs(t)), c = t >= 0 ? POSITIVE : NEGATIVE;
  return base.map((b, k) => Math.round(b + a * (c[k] - b)));
}

// The largest |value| of a list or of a list of rows (1 when all are 0).
export function extent(values) {
  let m = 0;
  for (const v of values.flat()) m = Math.max(m, Math.abs(v));
  return m || 1;
}

// Paint rows of values onto `canvas` (resized to them): colour(value, x, y) -> [r, g, b].
export function paintRows(canvas, rows, colour) {
  const h = rows.length, w = rows[0].length;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const c = canvas.getContext("2d");
  const pixels = c.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const rgb = colour(rows[y][x], x, y), k = 4 * (y * w + x);
      pixels.data[k] = rgb[0]; pixels.data[k + 1] = rgb[1]; pixels.data[k + 2] = rgb[2]; pixels.data[k + 3] = 255;
    }
  }
  c.putImageData(pixels, 0, 0);
}

// A 28x28 MNIST-style image (0 black .. 255 ink) as it is stored: bright ink on black.
export function paintGrey(canvas, rows) {
  paintRows(canvas, rows, (v) => [v, v, v]);
}

// Weights or saliency: red positive, blue negative, white 0, scaled by the largest |value|.
export function paintSigned(canvas, rows) {
  const scale = extent(rows);
  paintRows(canvas, rows, (v) => signed(v / scale));
}
