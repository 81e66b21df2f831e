// Video, audio and HTML media.  The file route serves every run file as
// application/octet-stream; browsers sniff images, GIFs and audio/video containers in <img>,
// <video> and <audio> regardless, so the elements point straight at it (the page's CSP allows
// media from the server only, which this is).
//
// HTML is untrusted (anything a training script wrote): it is fetched as text and shown in an
// iframe with sandbox="" (no scripts, no forms, no same-origin access, no top navigation).  It is
// passed as srcdoc, since the file route sends files as downloads, which a frame would not show.

import { h } from "../dom.js";

function caption(v) {
  return v.caption != null ? h("figcaption", { dataset: { testid: "media-caption" } }, String(v.caption)) : null;
}

export function renderVideo(el, v, ctx) {
  const src = ctx.url(v.path);
  const gif = /\.gif$/i.test(v.path || "") || v.format === "gif";
  const style = { maxWidth: "100%", width: v.width ? `${Math.min(380, Math.max(160, v.width))}px` : undefined };
  const media = gif
    ? h("img", { src, alt: v.caption || v.path, class: "pixelated", dataset: { testid: "media-video" }, style })
    : h("video", { src, controls: true, loop: true, muted: true, preload: "metadata", dataset: { testid: "media-video" }, style });
  el.replaceChildren(h("figure", { class: "media-figure" }, media, caption(v)));
}

export function renderAudio(el, v, ctx) {
  const audio = h("audio", { src: ctx.url(v.path), controls: true, preload: "metadata", dataset: { testid: "media-audio" } });
  el.replaceChildren(h("figure", { class: "media-figure" }, audio, caption(v)));
}

export async function renderHtml(el, v, ctx) {
  const text = await ctx.text(v.path);
  const frame = h("iframe", { class: "media-html", sandbox: "", title: v.path, dataset: { testid: "media-html" } });
  frame.setAttribute("sandbox", ""); // h() skips "": set it explicitly, every permission off
  frame.srcdoc = text;
  el.replaceChildren(frame);
}
