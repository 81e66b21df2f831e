// Images ("image-file", and "images/separated" for a logged list): the picture as an <img> from the
// run's file, its caption, segmentation masks drawn over it and bounding boxes with their labels.
//
// Masks are 8-bit PNGs whose pixel values are class ids: each is read through a canvas and
// re-coloured (one colour per class, the chosen opacity) onto a canvas laid over the image, so the
// picture itself is never touched.  Boxes are absolutely placed elements in percent of the image
// (crisp at any size, and their labels are text a reader can select); a box's position is in
// pixels when its "domain" is "pixel", else in fractions of the image, as W&B's are.

import { color, h } from "../dom.js";

const MIN_W = 160; // tiny images (a 28x28 digit) are scaled up, pixelated
const MAX_W = 380;

function displayWidth(w) {
  if (!w) return MAX_W;
  return Math.round(Math.min(MAX_W, w < MIN_W ? w * Math.ceil(MIN_W / w) : w));
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`could not load ${src}`));
    img.src = src;
  });
}

/** The class id -> name map of a mask or boxes layer (names default to "class_<id>"). */
function labelsOf(layer) {
  return layer && layer.class_labels && typeof layer.class_labels === "object" ? layer.class_labels : {};
}

/** A mask layer recoloured onto a canvas: each class id its palette colour, 0 stays clear when
 * unlabelled (W&B's convention for background). */
async function maskCanvas(layer, ctx) {
  const img = await loadImage(ctx.url(layer.path));
  const c = h("canvas", { class: "media-mask", dataset: { testid: "media-mask" } });
  c.width = img.naturalWidth;
  c.height = img.naturalHeight;
  const g = c.getContext("2d", { willReadFrequently: true });
  g.drawImage(img, 0, 0);
  const data = g.getImageData(0, 0, c.width, c.height);
  const labels = labelsOf(layer);
  const ids = Object.keys(labels).map(Number);
  const px = data.data;
  const classes = new Set();
  for (let i = 0; i < px.length; i += 4) {
    const id = px[i]; // grey: r = g = b = the class id
    classes.add(id);
    if (id === 0 && !(0 in labels)) {
      px[i + 3] = 0;
      continue;
    }
    const k = ids.length ? ids.indexOf(id) : id;
    const hex = color(k < 0 ? id : k);
    const n = parseInt(hex.slice(1), 16);
    px[i] = (n >> 16) & 255;
    px[i + 1] = (n >> 8) & 255;
    px[i + 2] = n & 255;
    px[i + 3] = 255;
  }
  g.putImageData(data, 0, 0);
  c.__classes = [...classes].sort((a, b) => a - b);
  c.__colour = (id) => color(ids.length ? (ids.indexOf(id) < 0 ? id : ids.indexOf(id)) : id);
  return c;
}

/** The box data of a layer: inline in the pointer, else in its boxes2D JSON file. */
async function boxData(layer, ctx) {
  if (Array.isArray(layer.box_data)) return layer;
  const d = await ctx.json(layer.path);
  return { ...layer, ...d };
}

function boxElements(layer, w, hgt) {
  const labels = labelsOf(layer);
  const ids = Object.keys(labels).map(Number);
  return (layer.box_data || []).map((b) => {
    const p = b.position || {};
    let x0, x1, y0, y1;
    if (p.middle) {
      [x0, x1] = [p.middle[0] - p.width / 2, p.middle[0] + p.width / 2];
      [y0, y1] = [p.middle[1] - p.height / 2, p.middle[1] + p.height / 2];
    } else [x0, x1, y0, y1] = [p.minX, p.maxX, p.minY, p.maxY];
    if (b.domain === "pixel") [x0, x1, y0, y1] = [x0 / w, x1 / w, y0 / hgt, y1 / hgt];
    const i = ids.indexOf(b.class_id);
    const col = color(i < 0 ? b.class_id || 0 : i);
    const scores = b.scores && typeof b.scores === "object" ? Object.entries(b.scores).map(([k, v]) => `${k} ${Number(v).toFixed(2)}`) : [];
    const text = [b.box_caption ?? labels[b.class_id] ?? `class_${b.class_id}`, ...scores].join(" ");
    const pct = (v) => `${(v * 100).toFixed(3)}%`;
    return h(
      "div",
      { class: "media-box", dataset: { testid: "media-box", classId: String(b.class_id) }, style: { left: pct(x0), top: pct(y0), width: pct(x1 - x0), height: pct(y1 - y0), borderColor: col } },
      h("span", { class: "media-box-label", dataset: { testid: "media-box-label" }, style: { background: col } }, text),
    );
  });
}

/** One picture with its caption, masks and boxes. */
async function figure(v, ctx, opacity) {
  const w = displayWidth(v.width);
  const img = h("img", { src: ctx.url(v.path), alt: v.caption || v.path, dataset: { testid: "media-image" }, style: { width: `${w}px` } });
  if (v.width && v.width < MIN_W) img.classList.add("pixelated");
  const stage = h("div", { class: "media-stage" }, img);
  const legend = h("div", { class: "legend media-legend" });
  for (const [name, layer] of Object.entries(v.masks || {})) {
    try {
      const c = await maskCanvas(layer, ctx);
      c.style.opacity = String(opacity.value);
      c.dataset.layer = name;
      stage.append(c);
      const labels = labelsOf(layer);
      legend.append(h("span", { class: "muted" }, `${name}:`), ...c.__classes.filter((id) => id !== 0 || 0 in labels).map((id) => h("span", {}, h("span", { class: "swatch", style: { background: c.__colour(id) } }), labels[id] ?? `class_${id}`)));
    } catch (e) {
      legend.append(h("span", { class: "error" }, `mask ${name}: ${e.message}`));
    }
  }
  for (const [name, layer] of Object.entries(v.boxes || {})) {
    try {
      const d = await boxData(layer, ctx);
      stage.append(h("div", { class: "media-boxes", dataset: { layer: name } }, boxElements(d, v.width || 1, v.height || 1)));
    } catch (e) {
      legend.append(h("span", { class: "error" }, `boxes ${name}: ${e.message}`));
    }
  }
  return h("figure", { class: "media-figure" }, stage, v.caption != null ? h("figcaption", { dataset: { testid: "media-caption" } }, String(v.caption)) : null, legend.childNodes.length ? legend : null);
}

/** Draws an image pointer (or a list of them) into `el`. */
export async function renderImage(el, v, ctx) {
  const hasOverlay = (x) => x && (Object.keys(x.masks || {}).length || Object.keys(x.boxes || {}).length);
  const items =
    v._type === "images/separated"
      ? (v.filenames || []).map((path, i) => ({
          path,
          width: v.width,
          height: v.height,
          caption: v.captions ? v.captions[i] : undefined,
          masks: v.all_masks ? v.all_masks[i] || undefined : undefined,
          boxes: v.all_boxes ? v.all_boxes[i] || undefined : undefined,
        }))
      : [v];
  const opacity = h("input", { type: "range", min: "0", max: "1", step: "0.05", value: "0.5", dataset: { testid: "mask-opacity" }, "aria-label": "mask opacity" });
  const figs = await Promise.all(items.map((x) => figure(x, ctx, opacity)));
  opacity.addEventListener("input", () => el.querySelectorAll("canvas.media-mask").forEach((c) => (c.style.opacity = opacity.value)));
  const toggles = h("div", { class: "toolbar" });
  if (items.some((x) => x.masks && Object.keys(x.masks).length)) toggles.append(h("label", {}, "mask opacity", opacity));
  if (items.some(hasOverlay)) {
    const boxBox = h("input", { type: "checkbox", checked: true, dataset: { testid: "show-boxes" } });
    boxBox.addEventListener("change", () => el.querySelectorAll(".media-boxes").forEach((b) => (b.hidden = !boxBox.checked)));
    if (items.some((x) => x.boxes && Object.keys(x.boxes).length)) toggles.append(h("label", {}, boxBox, "boxes"));
  }
  el.replaceChildren(toggles.childNodes.length ? toggles : "", h("div", { class: "media-images" }, figs));
}
