"""Accessibility measurements the browser tests run in the page (issue 24): the contrast of
every visible text run, computed from computed styles, and the page's Tab order.

Kept apart from the tests so that each check reads as a sentence there.
"""

from __future__ import annotations

# Every visible text run (an element's own text, an input's value, SVG text) with its
# colour, the colour behind it and their WCAG 2 contrast ratio. The background is found by
# walking up the ancestors and compositing each one's background colour (with its alpha
# and opacity) until an opaque one (a plotly figure's paper counts); a gradient background counts as its worst colour stop.
# Large text (24px, or 18.66px bold) needs 3:1, the rest 4.5:1; disabled controls are
# exempt (WCAG 1.4.3).
CONTRAST_JS = r"""() => {
  const parse = (c) => {
    const m = c && c.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const p = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const stops = (img) => (img && img.includes('gradient') ? (img.match(/rgba?\([^)]+\)/g) || []).map(parse) : []);
  const over = (top, under) => {  // top (with alpha) composited over an opaque colour
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + under[i] * (1 - a)).concat([1]);
  };
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  const canvas = parse(getComputedStyle(document.documentElement).backgroundColor);
  const base = canvas && canvas[3] === 1 ? canvas : [255, 255, 255, 1];
  // the background layers behind an element: a list of candidate opaque colours (gradients give several)
  const backgrounds = (el) => {
    const layers = [];
    let opacity = 1;
    for (let e = el; e && e.nodeType === 1; e = e.parentElement) {
      const st = getComputedStyle(e);
      opacity *= Number(st.opacity);
      // plotly draws a figure's paper as the background of its first svg, a sibling of
      // the svg that holds the text: it is behind every text of the figure
      if (e.classList.contains('svg-container')) {
        const paper = parse(getComputedStyle(e.querySelector('.main-svg')).backgroundColor);
        if (paper && paper[3] > 0) { layers.push([paper]); if (paper[3] === 1) break; }
      }
      const g = stops(st.backgroundImage);
      if (g.length) { layers.push(g); if (g.every((c) => c[3] === 1)) break; continue; }
      const c = parse(st.backgroundColor);
      if (c && c[3] > 0) { layers.push([c]); if (c[3] === 1) break; }
    }
    let out = [base];
    for (const layer of layers.reverse()) {
      const next = [];
      for (const top of layer) for (const under of out) next.push(over(top, under));
      out = next;
    }
    return {colours: out, opacity};
  };
  const visible = (el) => {
    if (!el.getClientRects().length) return false;
    const r = el.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) return false;
    const st = getComputedStyle(el);
    return st.visibility === 'visible' && st.display !== 'none';
  };
  const disabled = (el) => !!el.closest('button:disabled, input:disabled, [aria-disabled=true], .disabled');
  const runs = [];
  const check = (el, text, colour) => {
    if (!text || !text.trim() || !visible(el) || disabled(el)) return;
    const st = getComputedStyle(el);
    const fg = parse(colour);
    if (!fg || fg[3] === 0) return;
    const {colours, opacity} = backgrounds(el);
    const size = parseFloat(st.fontSize), bold = Number(st.fontWeight) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    let worst = Infinity, against = null;
    for (const bg of colours) {
      const r = ratio(over([fg[0], fg[1], fg[2], fg[3] * opacity], bg), bg);
      if (r < worst) { worst = r; against = bg; }
    }
    runs.push({text: text.trim().slice(0, 40), ratio: Math.round(worst * 100) / 100, need,
               fg: colour, bg: `rgb(${against.slice(0, 3).map(Math.round).join(',')})`,
               where: (el.closest('[id]') || el).id || el.tagName});
  };
  for (const el of document.body.querySelectorAll('*')) {
    if (['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE'].includes(el.tagName)) continue;
    if (el instanceof SVGElement) {
      if (el.tagName === 'text' || el.tagName === 'tspan') {
        if (el.querySelector('tspan')) continue;  // its tspans are the runs
        check(el, el.textContent, getComputedStyle(el).fill);
      }
      continue;
    }
    if (el.matches('textarea, input[type=text], input[type=number], input:not([type])')) {
      check(el, el.value, getComputedStyle(el).color);
      continue;
    }
    const own = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join('');
    check(el, own, getComputedStyle(el).color);
  }
  return runs;
}"""

# The page's figures in dark mode: the background colour of each drawn plotly figure.
FIGURE_BACKGROUNDS_JS = r"""() => [...document.querySelectorAll('.js-plotly-plot .main-svg:first-of-type')]
  .filter((s) => s.getBoundingClientRect().width > 0)
  .map((s) => ({id: (s.closest('[id]') || s).id, bg: getComputedStyle(s).backgroundColor}))"""

# What has the keyboard focus: a short description (id of the nearest element with one).
FOCUSED_JS = r"""() => {
  const e = document.activeElement;
  if (!e || e === document.body) return 'BODY';
  const box = e.closest('[id]');
  return `${e.tagName.toLowerCase()}#${box ? box.id : ''}`;
}"""


def luminance(css: str) -> float:
    """Relative luminance of a CSS ``rgb(...)``/``rgba(...)`` colour (alpha ignored)."""
    parts = css[css.index("(") + 1 : css.index(")")].replace("/", " ").replace(",", " ").split()
    rgb = [float(v) / 255 for v in parts[:3]]
    lin = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
