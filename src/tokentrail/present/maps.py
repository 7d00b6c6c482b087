"""2-D maps of token trajectories through the layers (issue 9, "Maps").

Each token's path is one line: its encoding before the first layer (step 0), then its
vector at ``site`` after each layer (steps 1..L). Its nearest vocabulary tokens at every
step (the reference rows of ``space`` at the token's position, the trail's top-k) are
faint context points. All points are projected together:

* ``pca`` (default, exact): the top two right singular vectors of the centred points
  (``numpy.linalg.svd``); coordinates ``(X - mean) @ V[:2].T``;
* ``tsne``: scikit-learn's t-SNE (``pip install 'tokentrail[maps]'``);
* ``umap``: umap-learn, if installed (the same extra); otherwise a clear error.

:func:`trajectory_map` returns the plotly figure and the coordinates as a DataFrame
(one row per point: kind, token index, token, step, layer, label, x, y).

:func:`head_map` is the second mode (the AttentionViz idea, Yeh et al. 2023): for one
layer and head, the text's query vectors and key vectors of that head (the model's own,
:func:`tokentrail.engine.capture.head_qkv`: RoPE applied where the model applies it; a
grouped-query head reads its key/value head's keys) projected together, so a query near
a key is a query that scores that key highly when their norms are alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tokentrail.spec.errors import InputError
from tokentrail.spec.options import RESIDUAL_SITES, RESIDUAL_SPACES, check_index

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go

    from tokentrail.session.runner import Run

METHODS: tuple[str, ...] = ("pca", "tsne", "umap")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"unknown map method {method!r}: choose from {', '.join(METHODS)}")
    return method


def pca_2d(points: np.ndarray) -> np.ndarray:
    """(N, d) -> (N, 2): exact PCA through numpy's SVD of the centred points."""
    import numpy as np  # numpy when a map is drawn: importing this module stays cheap for the CLI's checks

    x = np.asarray(points, dtype=np.float64)
    xc = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    out = xc @ vt[:2].T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


NEIGHBOURS = 3  # faint context points per token and layer
MAX_EMBEDDED_POINTS = 20_000
"""t-SNE and UMAP are iterative: past this many points they run for many minutes on a CPU
with nothing to show (PCA, exact and one SVD, has no such bound)."""


def map_points(tokens: int, layers: int, neighbours: int) -> int:
    """The most points a map of ``tokens`` tokens over ``layers`` layers can hold: each token's
    encoding and its vector at every layer, each with up to ``neighbours`` context points."""
    return tokens * (layers + 1) * (1 + neighbours)


def check_points(method: str, n_points: int) -> None:
    """Refuse, with the figure and the fix, an iterative map of more points than it can draw in reasonable time."""
    if method != "pca" and n_points > MAX_EMBEDDED_POINTS:
        raise InputError(
            f"a {method} map of this text would place up to {n_points:,} points; {method} takes at most "
            f"{MAX_EMBEDDED_POINTS:,} (minutes without progress past that): use --map-method pca, or a shorter text"
        )


def project(points: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, d) -> (N, 2) by ``method``."""
    import numpy as np

    check_method(method)
    check_points(method, len(points))
    if method == "pca":
        return pca_2d(points)
    x = np.asarray(points, dtype=np.float64)
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            raise InputError("t-SNE maps need scikit-learn: pip install 'tokentrail[maps]'") from None
        perplexity = float(min(30, max(1, len(x) - 1) / 3))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    try:
        import umap
    except ImportError:
        raise InputError(
            "UMAP maps need umap-learn: pip install 'tokentrail[umap]' (or use --map-method pca/tsne)"
        ) from None
    return umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(x) - 1)).fit_transform(x)


def trajectory_map(
    run: Run,
    *,
    site: str = "attn_resid",
    space: str = "encodings",
    tokens: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    neighbours: int = NEIGHBOURS,
    method: str = "pca",
    seed: int = 0,
    highlight: int | None = None,
) -> tuple[go.Figure, pd.DataFrame]:
    """The map of ``run``'s token paths at ``site`` (see the module docstring).

    tokens: indices to draw (default: all); layers: the layers whose vectors are drawn
    (default: all; step 0, the encoding, is always the start); neighbours: nearest
    vocabulary tokens per point (0 for none); highlight: a token index drawn bold, the
    other paths faded (the token a user follows)."""
    import pandas as pd
    import torch

    toks, lays = _map_selection(run, site, space, tokens, layers, neighbours, method)
    points, rows = _token_points(run, site, toks, lays)
    if neighbours:
        _add_neighbour_points(run, site, space, toks, lays, neighbours, points, rows)
    X = torch.stack([p.detach().float().cpu() for p in points]).numpy()
    xy = project(X, method, seed)
    frame = pd.DataFrame(rows)
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    return _figure(frame, method, site, run, highlight), frame


def _map_selection(
    run: Run,
    site: str,
    space: str,
    tokens: Sequence[int] | None,
    layers: Sequence[int] | None,
    neighbours: int,
    method: str,
) -> tuple[list[int], list[int]]:
    """:func:`trajectory_map`'s arguments checked: the token indices and (sorted) layers to draw."""
    check_method(method)
    if site not in RESIDUAL_SITES:
        raise InputError(f"maps draw a residual site ({', '.join(RESIDUAL_SITES)}), not {site!r}")
    if space not in RESIDUAL_SPACES:
        raise InputError(f"maps place neighbours from {' or '.join(RESIDUAL_SPACES)}, not {space!r}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
        raise InputError(f"neighbours must be a whole number >= 0, not {neighbours!r}")
    n, L = run.n_tokens, run.model.adapter.n_layers
    toks = (
        list(range(n))
        if tokens is None
        else [check_index(t, n, "token index", f"the text has {n} tokens") for t in tokens]
    )
    lays = (
        list(range(L))
        if layers is None
        else sorted({check_index(x, L, "layer", f"the model has {L} layers") for x in layers})
    )
    check_points(method, map_points(len(toks), len(lays), neighbours))
    return toks, lays


def _token_points(run: Run, site: str, toks: list[int], lays: list[int]) -> tuple[list, list[dict]]:
    """Each token's path: its encoding (step 0), then its vector at ``site`` after each layer."""
    acts = run.acts
    vecs = acts.site(site)  # (L, n, d)
    names = run.tokens
    rows, points = [], []
    for t in toks:
        points.append(acts.embedded[t])
        rows.append(
            dict(kind="token", token_index=t, token=names[t], step=0, layer=None, label=f"{names[t]!r} #{t} · encoding")
        )
        for layer in lays:
            points.append(vecs[layer, t])
            rows.append(
                dict(
                    kind="token",
                    token_index=t,
                    token=names[t],
                    step=layer + 1,
                    layer=layer,
                    label=f"{names[t]!r} #{t} · layer {layer}",
                )
            )
    return points, rows


def _add_neighbour_points(
    run: Run,
    site: str,
    space: str,
    toks: list[int],
    lays: list[int],
    neighbours: int,
    points: list,
    rows: list[dict],
) -> None:
    """Append each token's nearest vocabulary tokens at every step (``space``'s reference
    rows at the token's position), each (id, position) once, to ``points`` and ``rows``."""
    import torch

    acts = run.acts
    names = run.tokens
    trail = run.trail(sites=(site,), spaces=(space,), similarities=("cosine",), k=max(neighbours, 1))
    view = trail.view(site, space, "cosine")
    sp = run.model.spaces.get(space)
    seen: set[tuple[int, int]] = set()
    for t in toks:
        p = int(acts.position_ids[t])
        picks = [(None, view.origin_top_ids[t, :neighbours])] + [
            (layer, view.top_ids[layer, t, :neighbours]) for layer in lays
        ]
        for layer, ids in picks:
            for i in ids.tolist():
                if (i, p) in seen:
                    continue
                seen.add((i, p))
                label = trail.labels.get(int(i), str(i))
                points.append(sp.rows(torch.tensor([int(i)], device=acts.embedded.device), p)[0, 0])
                where = "encoding" if layer is None else f"layer {layer}"
                rows.append(
                    dict(
                        kind="neighbour",
                        token_index=t,
                        token=names[t],
                        step=None if layer is None else layer + 1,
                        layer=layer,
                        label=f"{label!r} (near {names[t]!r} #{t}, {where})",
                    )
                )


def path_colours(n: int) -> list[str]:
    """``n`` distinct colours for ``n`` token paths: plotly's 24-colour Dark24, then its
    Light24 (48 before a colour repeats; a 10-colour cycle made 15 tokens share colours)."""
    from plotly.colors import qualitative

    palette = list(qualitative.Dark24) + list(qualitative.Light24)
    return [palette[i % len(palette)] for i in range(n)]


def _figure(frame: pd.DataFrame, method: str, site: str, run: Run, highlight: int | None = None) -> go.Figure:
    import numpy as np
    import plotly.graph_objects as go

    # every point carries (token index, step) as customdata: a click in the app selects them
    fig = go.Figure()
    ctx = frame[frame.kind == "neighbour"]
    if len(ctx):
        fig.add_trace(
            go.Scatter(
                x=ctx.x,
                y=ctx.y,
                mode="markers",
                name="nearest vocabulary tokens",
                opacity=0.3,
                marker=dict(size=6, color="grey"),
                hovertext=ctx.label,
                hoverinfo="text",
                customdata=np.stack([ctx.token_index, ctx.step.fillna(0)], 1),  # a click selects the token it is near
            )
        )
    paths = list(frame[frame.kind == "token"].groupby("token_index", sort=True))
    for (t, path), colour in zip(paths, path_colours(len(paths))):
        path = path.sort_values("step")
        chosen = highlight is not None and int(t) == highlight
        faded = highlight is not None and not chosen
        fig.add_trace(
            go.Scatter(
                x=path.x,
                y=path.y,
                mode="lines+markers",
                name=f"{path.token.iloc[0]!r} #{t}" + (" (followed)" if chosen else ""),
                hovertext=path.label,
                hoverinfo="text",
                customdata=np.stack([path.token_index, path.step], 1),
                line=dict(color=colour, width=4 if chosen else 2),
                marker=dict(color=colour, size=[14 if chosen else 10] + [8 if chosen else 6] * (len(path) - 1)),
                opacity=0.35 if faded else 1.0,
            )
        )
    fig.update_layout(
        title=f"Token paths through {run.model.name}'s layers ({site}, {method.upper() if method != 'tsne' else 't-SNE'})",
        xaxis_title=f"{method} 1",
        yaxis_title=f"{method} 2",
        template="plotly_white",
        legend_title="token",
    )
    return fig


def head_map(
    run: Run,
    layer: int,
    head: int,
    *,
    tokens: Sequence[int] | None = None,
    method: str = "pca",
    seed: int = 0,
) -> tuple[go.Figure, pd.DataFrame]:
    """The 2-D map of one head's query and key vectors (see the module docstring).

    Points: the query of every token in ``tokens`` (default: all) at ``layer``, head
    ``head``, then their keys (from the key/value head that ``head`` reads), projected
    together by ``method``. Frame: one row per point (kind ``query``/``key``, token index,
    token, layer, head, label, x, y)."""
    import pandas as pd
    import torch

    if not hasattr(run, "queries_keys"):
        raise InputError(
            f"a head map needs a Run (its activations): tt.load(model).run(text), not {type(run).__name__}"
        )
    check_method(method)
    n, L, H = run.n_tokens, run.model.n_layers, run.model.n_heads
    layer = check_index(layer, L, "layer", f"the model has {L} layers")
    head = check_index(head, H, "head", f"the model has {H} heads")
    toks = (
        list(range(n))
        if tokens is None
        else [check_index(t, n, "token index", f"the text has {n} tokens") for t in tokens]
    )
    check_points(method, 2 * len(toks))
    q, k, kv = run.queries_keys(layer, head)  # (n, d_head) each
    idx = torch.tensor(toks, dtype=torch.long, device=q.device)
    X = torch.cat([q[idx], k[idx]]).detach().double().cpu().numpy()  # (2 n', d_head): queries, then keys
    xy = project(X, method, seed)
    names = run.tokens
    gqa = f" (key/value head {kv})" if kv != head else ""
    rows = [
        dict(
            kind=kind,
            token_index=t,
            token=names[t],
            layer=layer,
            head=head,
            label=f"{kind} of {names[t]!r} #{t} · layer {layer} head {head}{gqa if kind == 'key' else ''}",
        )
        for kind in ("query", "key")
        for t in toks
    ]
    frame = pd.DataFrame(rows)
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    return _head_figure(frame, method, run, layer, head, gqa), frame


def _head_figure(frame: pd.DataFrame, method: str, run: Run, layer: int, head: int, gqa: str) -> go.Figure:
    import numpy as np
    import plotly.graph_objects as go

    fig = go.Figure()
    for kind, colour, symbol in (("query", "#d9480f", "circle"), ("key", "#1c7ed6", "diamond")):
        part = frame[frame.kind == kind]
        fig.add_trace(
            go.Scatter(
                x=part.x,
                y=part.y,
                mode="markers+text",
                name="queries" if kind == "query" else "keys",
                text=part.token,
                textposition="top center",
                hovertext=part.label,
                hoverinfo="text",
                marker=dict(size=9, color=colour, symbol=symbol),
                customdata=np.stack([part.token_index, np.full(len(part), layer + 1)], 1),
            )
        )
    name = method.upper() if method != "tsne" else "t-SNE"
    fig.update_layout(
        title=f"Queries and keys of {run.model.name}'s layer {layer}, head {head}{gqa} ({name})",
        xaxis_title=f"{method} 1",
        yaxis_title=f"{method} 2",
        template="plotly_white",
        legend_title="vectors",
    )
    return fig
