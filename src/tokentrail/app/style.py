"""The page's look: a Gradio theme and a little CSS (token chips, help panels).

Colours come from the theme's CSS variables (``--body-text-color``,
``--background-fill-secondary``, ...), so the page reads in light and dark mode alike;
only the accent (the selected token) is fixed.
"""

from __future__ import annotations

import gradio as gr

from tokentrail.present.plots import ACCENT

# Soft's orange-500 labels, buttons and selected options read at 2.4-3.6:1 (WCAG AA wants
# 4.5:1): the same hue, a shade or two darker, and the help text a shade darker too
THEME = gr.themes.Soft(
    primary_hue="orange", secondary_hue="slate", neutral_hue="slate", font=["Inter", "system-ui", "sans-serif"]
).set(
    block_label_text_color="*primary_800",
    block_label_background_fill_dark="*primary_800",
    block_label_text_color_dark="white",
    block_title_text_color="*primary_800",
    block_title_text_color_dark="*primary_200",
    block_info_text_color="*neutral_600",
    block_info_text_color_dark="*neutral_300",
    body_text_color_subdued="*neutral_600",
    body_text_color_subdued_dark="*neutral_300",
    button_primary_background_fill="*primary_700",
    button_primary_background_fill_hover="*primary_800",
    button_primary_background_fill_dark="*primary_700",
    button_primary_background_fill_hover_dark="*primary_800",
    button_primary_text_color="white",
    button_primary_text_color_dark="white",
    checkbox_label_background_fill_selected="*primary_700",
    checkbox_label_background_fill_selected_dark="*primary_700",
    checkbox_label_text_color_selected="white",
    checkbox_label_text_color_selected_dark="white",
    color_accent="*primary_700",
)

TABLES = ("#table", "#heads", "#lens-table", "#walk-sources", "#walk-vectors", "#cmp-table")
TABLE_CELLS = ", ".join(f"{t} {c}" for t in TABLES for c in ("td", "th", "[role=gridcell]", "[role=columnheader]"))

CSS = f"""
/* colours that follow the colour scheme (Gradio puts .dark on <body>); each pair reads at
   4.5:1 or more on the page's background in its scheme */
:root {{ --tt-accent-text: #9a3412; --tt-accent-strong: #c2410c; --tt-own-bg: #fff1e6; --tt-own-fg: #9a3412; --tt-muted: #4b5563; }}
.dark {{ --tt-accent-text: #fdba74; --tt-accent-strong: #c2410c; --tt-own-bg: #431407; --tt-own-fg: #fed7aa; --tt-muted: #cbd5e1; }}
#tabs [role=tab][aria-selected=true] {{ color: var(--tt-accent-text); }}

/* plotly figures in dark mode: the page's background and light text (the figures are drawn
   for a light page; !important outranks plotly's inline styles, so every redraw follows) */
.dark .js-plotly-plot .main-svg {{ background: transparent !important; }}
.dark .js-plotly-plot .bg {{ fill: var(--block-background-fill) !important; }}
.dark .js-plotly-plot :is([class$="tick"], [class^="g-"][class$="title"], .cbaxis, .cbtitle) :is(text, tspan),
.dark .js-plotly-plot :is(.legendtext, .legendtitletext) {{ fill: #e5e7eb !important; }}
.dark .js-plotly-plot :is(.gridlayer, .zerolinelayer) path {{ stroke: rgba(255, 255, 255, 0.12) !important; }}
.dark .js-plotly-plot .annotation-text-g text {{ fill: #e5e7eb !important; }}
.dark .js-plotly-plot .updatemenu-container rect {{ fill: var(--block-background-fill) !important; stroke: var(--border-color-primary) !important; }}
.dark .js-plotly-plot .updatemenu-container text {{ fill: #e5e7eb !important; }}
/* one line of header: the result, not the title, gets the first screen */
#header h1 {{ display: inline; font-size: 1.45em; margin: 0 0.5em 0 0; }}
#header p {{ display: inline; color: var(--body-text-color-subdued); margin: 0; font-size: 13px; }}
#header p:first-child {{ display: inline; }}
/* the Analyse button beside the text box, level with the box (not as tall as its label and help) */
#text-row {{ align-items: flex-end; }}
#status {{ padding: 6px 12px; border-left: 4px solid var(--tt-accent-strong); background: var(--background-fill-secondary); color: var(--body-text-color); border-radius: 4px; }}

/* token chips: the Radio's options, one pill each; the selected one filled */
#tokens .wrap {{ gap: 6px 6px; }}
#tokens label {{
  border: 1px solid var(--border-color-primary); border-radius: 999px; padding: 3px 12px; margin: 0;
  background: var(--background-fill-primary); color: var(--body-text-color); font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 14px;
  cursor: pointer; transition: background 0.1s;
}}
#tokens label:hover {{ background: var(--color-accent-soft); border-color: {ACCENT}; }}
/* the radio stays in the page (not display:none) so Tab reaches the chips and the arrow
   keys move the selection; it is only made invisible */
#tokens label input {{ position: absolute; opacity: 0; width: 1px; height: 1px; margin: 0; pointer-events: none; }}
#tokens label:focus-within {{ outline: 2px solid {ACCENT}; outline-offset: 2px; }}
#tokens label.selected {{ background: var(--tt-accent-strong); border-color: var(--tt-accent-strong); color: white; }}
#tokens label.selected span {{ color: white; }}
/* where quick arrow presses have moved the selection, before it reaches the server */
#tokens label.tt-pending {{ background: var(--tt-accent-strong); border-color: var(--tt-accent-strong); color: white; }}
#tokens label.tt-pending span {{ color: white; }}
#heat table.heat td:focus-visible {{ outline: 3px solid var(--tt-accent-text); outline-offset: -3px; }}

.howto {{ background: var(--background-fill-secondary); color: var(--body-text-color); border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 2px 12px; }}
.howto p, .howto li {{ font-size: 12.5px; line-height: 1.45; }}
.howto ul {{ padding-left: 1.1em; }}
/* the clickable token x layer grid */
#heat .heat-wrap {{ max-height: 560px; overflow: auto; border: 1px solid var(--border-color-primary); border-radius: 8px; }}
#heat table.heat {{ border-collapse: separate; border-spacing: 0; font-size: 12px; font-variant-numeric: tabular-nums; }}
#heat table.heat th, #heat table.heat td {{ padding: 5px 10px; text-align: right; white-space: nowrap; border: none; border-bottom: 1px solid #fff; border-right: 1px solid #fff; }}
#heat table.heat thead th {{ position: sticky; top: 0; background: var(--background-fill-secondary); color: var(--body-text-color); z-index: 2; }}
#heat table.heat tbody th {{ position: sticky; left: 0; background: var(--background-fill-secondary); color: var(--body-text-color); text-align: left; font-family: ui-monospace, monospace; cursor: pointer; z-index: 1; }}
#heat table.heat td {{ cursor: pointer; min-width: 44px; }}
#heat .heat-wrap {{ display: inline-block; max-width: 100%; }}
#heat table.heat td:hover {{ outline: 2px solid #52606d; outline-offset: -2px; }}
#heat table.heat tr.sel th, #heat table.heat thead th.sel {{ color: var(--tt-accent-text); font-weight: 700; }}
#heat table.heat td.sel {{ outline: 3px solid {ACCENT}; outline-offset: -3px; font-weight: 700; }}
/* Gradio sizes a table's columns on a hidden copy (td) and draws the rows as grid cells:
   both in the same font, or a drawn cell is wider than its column and gets cut ("own ra…") */
{TABLE_CELLS} {{ font-family: var(--font); font-size: 13px; }}
#heat table.heat {{ font-size: 13px; }}
#walk ol {{ line-height: 1.6; }}
"""

# The page's keyboard (issue 24): the token chips are one roving-tabindex group (one Tab
# stop; the arrow keys, Home and End move, and only the last of quick presses reaches the
# server, after a short pause, so no selection is lost to a round trip); the tab strip is
# one Tab stop whose arrow keys open the next/previous tab; the heatmap's cells are one Tab
# stop whose arrow keys move and Enter/Space selects (keeping the focus on the grid as it
# redraws); in the map's points table the arrow keys select the row they reach. Gradio gives every radio of a Radio its own name, so the browser's own
# radio-group keys do not apply.
HEAD = """<script>
(() => {
  const CHIP_PAUSE_MS = 250;
  let chipTimer = null, heatKeys = false, scheduled = false;
  const rove = () => {
    scheduled = false;
    const box = document.getElementById('tokens');
    if (box) {
      const inputs = [...box.querySelectorAll('input[type=radio]')];
      box.querySelectorAll('label.tt-pending.selected').forEach((l) => l.classList.remove('tt-pending'));
      const cur = inputs.find((i) => i === document.activeElement) || inputs.find((i) => i.checked) || inputs[0];
      inputs.forEach((i) => { i.tabIndex = i === cur ? 0 : -1; });
    }
    const tabs = [...document.querySelectorAll('#tabs [role=tab]')];
    const sel = tabs.find((t) => t.getAttribute('aria-selected') === 'true') || tabs[0];
    tabs.forEach((t) => { t.tabIndex = t === sel ? 0 : -1; });
    const cells = [...document.querySelectorAll('#heat td[data-t]')];
    if (cells.length && !cells.some((c) => c.tabIndex === 0)) {
      const home = document.querySelector('#heat td.sel') || cells[0];
      cells.forEach((c) => { c.tabIndex = c === home ? 0 : -1; });
      if (heatKeys && (document.activeElement === document.body || !document.activeElement)) home.focus();
    }
  };
  const schedule = () => { if (!scheduled) { scheduled = true; requestAnimationFrame(rove); } };
  new MutationObserver(schedule).observe(document.documentElement, {
    subtree: true, childList: true, attributes: true, attributeFilter: ['aria-selected', 'class'],
  });
  const STEP = {ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1};
  const target = (e, list, i) => {
    if (e.key === 'Home') return 0;
    if (e.key === 'End') return list.length - 1;
    return STEP[e.key] === undefined ? -1 : i + STEP[e.key];
  };
  document.addEventListener('keydown', (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey || !e.target || !e.target.closest) return;
    const chips = e.target.tagName === 'INPUT' ? e.target.closest('#tokens') : null;
    if (chips) {
      const inputs = [...chips.querySelectorAll('input[type=radio]')];
      const j = target(e, inputs, inputs.indexOf(e.target));
      if (j === -1 && STEP[e.key] === undefined && e.key !== 'Home' && e.key !== 'End') return;
      e.preventDefault();
      if (j < 0 || j >= inputs.length) return;
      inputs.forEach((i) => { i.tabIndex = i === inputs[j] ? 0 : -1; });
      inputs[j].focus();
      chips.querySelectorAll('label.tt-pending').forEach((l) => l.classList.remove('tt-pending'));
      inputs[j].closest('label').classList.add('tt-pending');
      clearTimeout(chipTimer);
      chipTimer = setTimeout(() => { if (!inputs[j].checked) inputs[j].click(); }, CHIP_PAUSE_MS);
      return;
    }
    const tab = e.target.closest('#tabs [role=tab]');
    if (tab) {
      const tabs = [...document.querySelectorAll('#tabs [role=tab]')].filter((t) => t.offsetParent !== null);
      const j = target(e, tabs, tabs.indexOf(tab));
      if (j < 0 || j >= tabs.length) return;
      e.preventDefault();
      tabs[j].focus();
      tabs[j].click();
      return;
    }
    // the map's points table: Gradio's arrow keys move the focused cell without a select
    // event; after a pause, the cell they reached gets the press Gradio selects on
    // (pointerdown/mousedown: its row selects its point)
    if (e.target.closest('#map-points') && STEP[e.key] !== undefined) {
      clearTimeout(chipTimer);
      chipTimer = setTimeout(() => {
        const at = document.activeElement;
        if (!at || !at.closest('#map-points') || at.getAttribute('role') !== 'gridcell') return;
        for (const type of ['pointerdown', 'mousedown', 'pointerup', 'mouseup']) {
          const Event_ = type.startsWith('pointer') ? PointerEvent : MouseEvent;
          at.dispatchEvent(new Event_(type, {bubbles: true, cancelable: true, view: window, button: 0}));
        }
      }, CHIP_PAUSE_MS);
      return;
    }
    const cell = e.target.closest('#heat td[data-t]');
    if (cell) {
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); heatKeys = true; cell.click(); return; }
      const dt = {ArrowDown: 1, ArrowUp: -1}[e.key] || 0, dl = {ArrowRight: 1, ArrowLeft: -1}[e.key] || 0;
      if (!dt && !dl) return;
      const next = document.querySelector(
        `#heat td[data-t="${Number(cell.dataset.t) + dt}"][data-l="${Number(cell.dataset.l) + dl}"]`);
      e.preventDefault();
      if (!next) return;
      cell.tabIndex = -1; next.tabIndex = 0; next.focus();
    }
  });
})();
</script>"""
