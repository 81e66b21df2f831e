// 3-D point clouds ("object3D-file" whose file is .pts.json: a list of [x, y, z], [x, y, z, category]
// or [x, y, z, r, g, b]; or a "lidar/beta" scene whose "points" are such a list).  A small canvas
// viewer: drag to rotate, wheel to zoom.  Points are projected with a simple perspective after
// rotating about the cloud's centre and drawn back to front, so near points cover far ones.
// Colours: r, g, b (0..255) when given, else the category's palette colour, else by height.
// Other 3-D files (obj, gltf, glb, stl) are offered as downloads: a mesh renderer is out of scope.

import { color, h } from "../dom.js";
import { hiDpiCanvas } from "./plot.js";

const SIZE = 320;
const MAX_POINTS = 50_000; // more: every n-th point, so dragging stays smooth

function parsePoints(d) {
  const list = Array.isArray(d) ? d : d && Array.isArray(d.points) ? d.points : [];
  const every = Math.max(1, Math.ceil(list.length / MAX_POINTS));
  return list.filter((p, i) => i % every === 0 && Array.isArray(p) && p.length >= 3);
}

function colours(pts) {
  let zlo = Infinity;
  let zhi = -Infinity;
  for (const p of pts) (zlo = Math.min(zlo, p[2])), (zhi = Math.max(zhi, p[2]));
  return pts.map((p) => {
    if (p.length >= 6) return `rgb(${p[3] | 0},${p[4] | 0},${p[5] | 0})`;
    if (p.length === 4) return color((p[3] | 0) - 1); // categories are 1..14
    const t = zhi > zlo ? (p[2] - zlo) / (zhi - zlo) : 0.5;
    return `hsl(${Math.round(240 - 200 * t)},70%,50%)`;
  });
}

/** A viewer of `pts`; the element keeps {points, yaw, pitch} as __view for tests. */
export function pointViewer(pts) {
  const { c, ctx } = hiDpiCanvas(SIZE, SIZE);
  c.classList.add("media-points");
  c.dataset.testid = "media-points";
  const cols = colours(pts);
  const centre = [0, 1, 2].map((k) => pts.reduce((s, p) => s + p[k], 0) / (pts.length || 1));
  const radius = Math.max(1e-9, ...pts.map((p) => Math.hypot(p[0] - centre[0], p[1] - centre[1], p[2] - centre[2])));
  const view = { points: pts.length, yaw: 0.6, pitch: -0.4, zoom: 1 };
  c.__view = view;

  function draw() {
    const [cy, sy, cp, sp] = [Math.cos(view.yaw), Math.sin(view.yaw), Math.cos(view.pitch), Math.sin(view.pitch)];
    const proj = pts.map((p, i) => {
      const x = (p[0] - centre[0]) / radius;
      const y = (p[1] - centre[1]) / radius;
      const z = (p[2] - centre[2]) / radius;
      // z is up: yaw turns about z, pitch tilts towards the viewer.
      const x1 = x * cy - y * sy;
      const y1 = x * sy + y * cy;
      const depth = y1 * cp - z * sp;
      const up = y1 * sp + z * cp;
      const f = (view.zoom * SIZE * 0.42) / (1 + 0.25 * (depth + 1));
      return [SIZE / 2 + x1 * f, SIZE / 2 - up * f, depth, i];
    });
    proj.sort((a, b) => b[2] - a[2]);
    ctx.clearRect(0, 0, SIZE, SIZE);
    const s = pts.length > 5000 ? 1.5 : 3;
    for (const [x, y, , i] of proj) {
      ctx.fillStyle = cols[i];
      ctx.fillRect(x - s / 2, y - s / 2, s, s);
    }
  }

  let drag = null;
  c.addEventListener("pointerdown", (e) => ((drag = [e.clientX, e.clientY]), c.setPointerCapture(e.pointerId)));
  c.addEventListener("pointermove", (e) => {
    if (!drag) return;
    view.yaw += (e.clientX - drag[0]) * 0.01;
    view.pitch = Math.max(-1.5, Math.min(1.5, view.pitch + (e.clientY - drag[1]) * 0.01));
    drag = [e.clientX, e.clientY];
    draw();
  });
  c.addEventListener("pointerup", () => (drag = null));
  c.addEventListener("wheel", (e) => {
    e.preventDefault();
    view.zoom = Math.max(0.2, Math.min(8, view.zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1)));
    draw();
  });
  draw();
  return c;
}

export async function renderPoints(el, v, ctx) {
  if (!/\.json$/i.test(v.path || "")) {
    el.replaceChildren(h("a", { href: ctx.url(v.path), download: "" }, `download ${v.path.split("/").pop()}`));
    return;
  }
  const pts = parsePoints(await ctx.json(v.path));
  el.replaceChildren(pointViewer(pts), h("div", { class: "muted small" }, `${pts.length.toLocaleString("en-US")} points · drag to rotate, wheel to zoom`));
}
