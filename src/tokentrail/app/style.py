"""The page's look: a Gradio theme and a little CSS (token chips, help panels)."""

from __future__ import annotations

import gradio as gr

from ..plots import ACCENT

THEME = gr.themes.Soft(primary_hue="orange", secondary_hue="slate", neutral_hue="slate", font=["Inter", "system-ui", "sans-serif"])

CSS = f"""
#header h1 {{ margin-bottom: 0.1em; }}
#header p {{ color: #52606d; margin-top: 0; }}
#status {{ padding: 6px 12px; border-left: 4px solid {ACCENT}; background: #fffaf5; border-radius: 4px; }}

/* token chips: the Radio's options, one pill each; the selected one filled */
#tokens .wrap {{ gap: 6px 6px; }}
#tokens label {{
  border: 1px solid #cbd2d9; border-radius: 999px; padding: 3px 12px; margin: 0;
  background: white; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 14px;
  cursor: pointer; transition: background 0.1s;
}}
#tokens label:hover {{ background: #fff1e6; border-color: {ACCENT}; }}
#tokens label input {{ display: none; }}
#tokens label.selected {{ background: {ACCENT}; border-color: {ACCENT}; color: white; }}
#tokens label.selected span {{ color: white; }}

.howto {{ background: #f8fafc; border: 1px solid #e4e7eb; border-radius: 8px; padding: 2px 12px; }}
.howto p, .howto li {{ font-size: 12.5px; line-height: 1.45; }}
.howto ul {{ padding-left: 1.1em; }}
/* the clickable token x layer grid */
#heat .heat-wrap {{ max-height: 560px; overflow: auto; border: 1px solid #e4e7eb; border-radius: 8px; }}
#heat table.heat {{ border-collapse: separate; border-spacing: 0; font-size: 12px; font-variant-numeric: tabular-nums; }}
#heat table.heat th, #heat table.heat td {{ padding: 5px 10px; text-align: right; white-space: nowrap; border: none; border-bottom: 1px solid #fff; border-right: 1px solid #fff; }}
#heat table.heat thead th {{ position: sticky; top: 0; background: #f8fafc; z-index: 2; }}
#heat table.heat tbody th {{ position: sticky; left: 0; background: #f8fafc; text-align: left; font-family: ui-monospace, monospace; cursor: pointer; z-index: 1; }}
#heat table.heat td {{ cursor: pointer; min-width: 44px; }}
#heat .heat-wrap {{ display: inline-block; max-width: 100%; }}
#heat table.heat td:hover {{ outline: 2px solid #52606d; outline-offset: -2px; }}
#heat table.heat tr.sel th, #heat table.heat thead th.sel {{ color: {ACCENT}; font-weight: 700; }}
#heat table.heat td.sel {{ outline: 3px solid {ACCENT}; outline-offset: -3px; font-weight: 700; }}
#table table, #heads table, #walk-sources table, #walk-vectors table {{ font-size: 13px; }}
#table td, #table th, #heads td, #heads th {{ font-family: var(--font); }}
#heat table.heat {{ font-size: 13px; }}
#walk ol {{ line-height: 1.6; }}
"""
