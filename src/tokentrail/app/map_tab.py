"""The app's Map tab: 2-D maps of the page's analysis, and clicks on them.

Two modes, both from the session's one forward pass (:mod:`tokentrail.present.maps`): every
token's path through the layers at the page's site (its nearest vocabulary tokens as
faint points), or the queries and keys of the layer and head chosen above (AttentionViz).
A click on a point selects its token and layer in the whole page: ``gr.Plot`` has no
click event, so a hidden ``gr.HTML`` (``PICK_JS``) listens for plotly's ``plotly_click``
on the plot and sends the point's token and layer as its own click event, which
:mod:`.wiring` wires to the same handler as a heatmap cell. Public library only.
"""

from __future__ import annotations

import importlib.util

import gradio as gr
import pandas as pd

from tokentrail.app import help as texts
from tokentrail.app.guard import guarded
from tokentrail.app.queues import EVENTS
from tokentrail.app.session import Session
from tokentrail.present.maps import METHODS
from tokentrail.spec.errors import InputError
from tokentrail.spec.tokens import find_token

MODES = {"token paths through the layers": "paths", "queries and keys of one head": "head"}
METHOD_LABELS = {"pca": "PCA (exact)", "tsne": "t-SNE", "umap": "UMAP"}

# Polls for the map's plotly div (Gradio re-creates it on every new figure, and plotly
# replaces a div's event emitter when it redraws) and attaches one plotly_click listener
# to each emitter; every map point carries (token index, step) as customdata, step 0 being
# the encoding before the first layer.
PICK_JS = """
const attach = () => {
  document.querySelectorAll('#map-plot .js-plotly-plot').forEach((gd) => {
    if (!gd._ev || gd.__ttPick === gd._ev || typeof gd.on !== 'function') return;
    gd.__ttPick = gd._ev;
    gd.on('plotly_click', (ev) => {
      const pt = ev && ev.points && ev.points[0];
      if (!pt || !pt.customdata) return;
      const step = Number(pt.customdata[1]);
      trigger('click', {token: Number(pt.customdata[0]), layer: step > 0 ? step - 1 : null});
    });
  });
};
attach();
setInterval(attach, 400);
"""

HOWTO = """**How to read this**

- *Token paths*: each line is one token, from its encoding (the large dot) through every
  layer at the page's site; grey points are its nearest vocabulary tokens. PCA is exact
  (the top two principal axes of all the points); t-SNE and UMAP keep neighbourhoods,
  not distances.
- *Queries and keys*: the query (orange) and key (blue) vectors of every token at the
  layer and head chosen above; a query close to a key tends to attend to it.
- **Click a point** to select its token and layer in the whole page.

*Tokens*: empty for all, or indices and texts (`2, flies` = token 2 and every *flies*;
`flies:1` = the second). *Layers* (token paths): empty for all, or `0-3, 5`."""


def methods() -> list[tuple[str, str]]:
    """The projection methods installed here (UMAP is an optional extra)."""
    have = {
        "pca": True,
        "tsne": importlib.util.find_spec("sklearn") is not None,
        "umap": importlib.util.find_spec("umap") is not None,
    }
    return [(METHOD_LABELS[m], m) for m in METHODS if have[m]]


def build_map_tab(p, state: gr.State) -> None:
    """Components of the tab (call inside ``gr.Tab``) and its drawing event, on ``p``.
    ``p.map_pick`` is the click bridge; :mod:`.wiring` wires its click."""
    texts.panel(HOWTO)
    with gr.Row(equal_height=True):
        p.map_mode = gr.Radio(
            list(MODES), value=next(iter(MODES)), label="Map", scale=3, min_width=260, elem_id="map-mode"
        )
        p.map_method = gr.Radio(
            methods(), value="pca", label="Projection", scale=2, min_width=200, elem_id="map-method"
        )
        p.map_tokens = gr.Textbox("", label="Tokens (empty: all)", scale=2, min_width=140, elem_id="map-tokens")
        p.map_layers = gr.Textbox("", label="Layers (empty: all)", scale=1, min_width=110, elem_id="map-layers")
        p.map_draw = gr.Button("Draw", variant="primary", scale=1, min_width=90, elem_id="map-draw")
    p.map_status = gr.Markdown("Analyse a text, then open this tab or press **Draw**.", elem_id="map-status")
    p.map_plot = gr.Plot(show_label=False, visible=False, elem_id="map-plot")  # shown once drawn
    # the points as a table: the keyboard's way to a point (a plotly point takes no focus);
    # selecting a row selects its token and layer, as a click on the point does
    with gr.Accordion("The points as a table (select a row to select its token and layer)", open=False):
        p.map_points = gr.Dataframe(interactive=False, max_height=320, elem_id="map-points")
    p.map_pick = gr.HTML("", js_on_load=PICK_JS, visible="hidden", apply_default_css=False, elem_id="map-pick")
    inputs = [state, p.map_mode, p.map_method, p.map_tokens, p.map_layers]
    outputs = [p.map_status, p.map_plot, p.map_points]

    @guarded(len(outputs), 0)  # under the session's lock
    def draw(session, mode, method, tokens, layers):
        if not isinstance(session, Session) or session.trail is None:
            return "Analyse a text first: the map draws the page's analysis.", gr.skip(), gr.skip()
        return _draw(session, mode, method, tokens, layers)

    gr.on(
        [
            p.map_draw.click,
            p.tab_map.select,
            p.map_mode.input,
            p.map_method.input,
            p.map_tokens.submit,
            p.map_layers.submit,
        ],
        draw,
        inputs,
        outputs,
        api_name="map",
        trigger_mode="always_last",
        **EVENTS,
    )


def _draw(session: Session, mode, method, tokens, layers):
    if mode not in MODES:
        raise InputError(f"unknown map {mode!r}: choose {' or '.join(MODES)}")
    if method not in dict((m, l) for l, m in methods()):
        raise InputError(f"unknown or unavailable projection {method!r}: choose {', '.join(m for _, m in methods())}")
    trail = session.require_trail()
    toks = parse_tokens(trail, tokens)
    if MODES[mode] == "head":
        fig, frame = session.head_map(toks, method)
        what = f"queries and keys of layer {session.layer}, head {session.head} (the sliders above choose them)"
    else:
        fig, frame = session.trajectory_map(toks, parse_layers(layers, trail.n_layers), method)
        what = f"paths at `{session.options.sites[0]}`"
    n = len(frame)
    return (
        f"{n} points: {what}, {METHOD_LABELS[method]}. Click a point to select its token and layer.",
        gr.Plot(fig, visible=True),
        points_table(frame),
    )


def points_table(frame) -> pd.DataFrame:
    """The map's token points (not the vocabulary's), one row each: what, token, layer, x, y."""
    rows = frame[frame["kind"] != "neighbour"] if "kind" in frame else frame
    return pd.DataFrame(
        {
            "point": rows["label"].astype(str),
            "token": rows["token_index"].astype(int),
            "layer": ["" if pd.isna(v) else int(v) for v in rows["layer"]],
            "x": rows["x"].astype(float).round(3),
            "y": rows["y"].astype(float).round(3),
        }
    ).reset_index(drop=True)


def parse_tokens(trail, text: object) -> list[int] | None:
    """``"2, flies, bank:1"`` -> token indices (a bare text: every occurrence); empty: None (all)."""
    if text is None or not str(text).strip():
        return None
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if part.lstrip("-").isdigit() or ":" in part:
            out.append(trail.token_index(part))
        else:
            out += find_token(trail.tokens, part)[1]  # every occurrence
    return list(dict.fromkeys(out))


def parse_layers(text: object, n_layers: int) -> list[int] | None:
    """``"0-3, 5"`` -> [0, 1, 2, 3, 5]; empty: None (all). Checked against the model's layers."""
    if text is None or not str(text).strip():
        return None
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not part or not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise InputError(f"layers are whole numbers and ranges such as 0-3, 5 (got {part!r})")
        a, b = int(lo), int(hi) if sep else int(lo)
        if a > b or b >= n_layers:
            raise InputError(f"layers {part} are out of range: the model has {n_layers} layers (0..{n_layers - 1})")
        out += range(a, b + 1)
    return sorted(set(out))
