"""Terminal rendering of a Trail (rich). Reads results only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tokentrail.spec.errors import InputError

if TYPE_CHECKING:
    from tokentrail.results.trail import Trail, View


def _neighbours_cell(trail: Trail, ids, sims, own: int, k: int) -> str:
    parts = []
    for i, _s in zip(ids[:k], sims[:k]):
        label = trail.labels.get(int(i), str(int(i)))
        label = label.replace("[", "\\[")
        parts.append(f"[bold green]{label}[/]" if int(i) == own else label)
    return " ".join(parts)


def _header(console: Console, trail: Trail, v: View) -> None:
    info = trail.info
    mode = ""
    if info.causal is not None:
        mode = " · causal mask on" if info.causal else " · causal mask OFF (bidirectional)"
    console.print(
        f"[bold]{info.model}[/] ({info.family}, {trail.n_layers} layers) · site [cyan]{v.site}[/] · "
        f"space [cyan]{v.space}[/] · {v.similarity}{mode}"
        + (
            f" · corrected [cyan]{info.options.correct}[/] (fitted per layer to {'the study ' + escape(info.options.correct_from) if info.options.correct_from else 'this text'})"
            if info.options.correct and v.site != "heads"
            else ""
        )
    )
    if v.per_head and v.space != "query" and trail.kv_groups > 1:
        console.print(
            f"[dim]grouped-query attention: each {v.space} space is shared by {trail.kv_groups} query heads "
            f"(head h uses key/value head h // {trail.kv_groups})[/]"
        )


def print_report(
    console: Console,
    trail: Trail,
    *,
    token=None,
    layer: int | None = None,
    head: int | None = None,
    stack: str | None = None,
    beside: Trail | None = None,
) -> None:
    """The default output: one token's journey, or a grid of every token's self-similarity
    (its rank where the token is not its own nearest row).

    ``beside``: the same text traced under a geometry correction; a token's journey then
    shows the corrected rank and neighbours next to the raw ones (residual sites).

    Encoder-decoders: each stack under its own heading (``stack``: only that one), the
    decoder's with its cross-attention (which source tokens each head's output is nearest)."""
    if trail.decoder is None:
        _print_stack(console, trail, token=token, layer=layer, head=head, beside=beside)
        return
    shown = [s for s in trail.stacks if stack is None or s.stack == stack]
    if token is not None and len(shown) > 1:
        raise InputError("--token follows a token of one stack: add --stack encoder (the source) or --stack decoder")
    for s in shown:
        if s.stack == "encoder":
            console.print(f"[bold magenta]encoder stack[/]: the source text, {s.n_tokens} tokens")
        else:
            console.print(
                f"[bold magenta]decoder stack[/]: {s.n_tokens} tokens; its input is the {s.info.decoder_input}: {s.text!r}"
            )
        console.print()
        _print_stack(console, s, token=token, layer=layer, head=head)
        if s.cross_views:
            _cross(console, s, token, layer, head)


def _cross(console: Console, trail: Trail, token, layer: int | None, head: int | None) -> None:
    """One decoder token's cross-attention heads: the source tokens nearest to each head's vector."""
    layers = range(trail.n_layers) if layer is None else [trail.check_layer(layer)]
    heads = range(trail.n_heads) if head is None else [trail.check_head(head)]
    t = trail.n_tokens - 1 if token is None else trail.token_index(token)
    note = " (the last decoder token; pass --stack decoder --token to choose)" if token is None else ""
    for v in trail.cross_views:
        what = (
            "its z against the source tokens' values"
            if v.space == "value"
            else "its query against the source tokens' keys"
        )
        console.print(
            f"[bold]cross-attention[/] · token {t} [bold]{trail.tokens[t]}[/]{note} · each head's space is the source tokens "
            f"of this input ({what}) · {v.similarity}"
        )
        table = Table("layer", "head", "nearest source tokens (similarity)", "most attended (weight)", box=None)
        for l in layers:
            for h in heads:
                order, sims = v.source_order[l, h, t], v.source_sims[l, h, t]
                near = "  ".join(
                    f"{trail.source_tokens[int(s)]}:{int(s)} {x:.2f}".replace("[", "\\[")
                    for s, x in zip(order[:5], sims[:5])
                )
                att = trail.cross_attentions[l, h, t]
                top = int(att.argmax())
                table.add_row(
                    str(l), str(h), near, f"{trail.source_tokens[top]}:{top} {att[top]:.2f}".replace("[", "\\[")
                )
        console.print(table)
        console.print()


def _print_stack(
    console: Console,
    trail: Trail,
    *,
    token=None,
    layer: int | None = None,
    head: int | None = None,
    beside: Trail | None = None,
) -> None:
    layers = range(trail.n_layers) if layer is None else [trail.check_layer(layer)]
    if head is not None:
        trail.check_head(head)
    t = None if token is None else trail.token_index(token)  # errors before any output
    for v in trail.views:
        _header(console, trail, v)
        fixed = _beside_view(beside, v)
        if t is None:
            _grid(console, trail, v, layers, head)
            if fixed is not None:
                console.print(
                    f"[dim]corrected ({beside.info.options.correct}) neighbours beside the raw ones: pass --token N[/]"
                )
        else:
            _journey(console, trail, v, t, layers, head, fixed, beside)
        console.print()
    if trail.lens is not None:
        _lens(console, trail, t, layers)


def _beside_view(beside: Trail | None, v: View) -> View | None:
    """The corrected trace's view of the same residual site, space and similarity."""
    if beside is None or v.per_head:
        return None
    for w in beside.views:
        if w.key == v.key:
            return w
    return None


def _journey(
    console: Console, trail: Trail, v: View, t: int, layers, head, fixed: View | None = None, beside=None
) -> None:
    import numpy as np  # numpy when a report is printed: importing this module stays cheap for the CLI's checks

    own = int(trail.ids[t])
    k = v.top_ids.shape[-1]
    console.print(
        f"token {t} [bold]{trail.tokens[t]}[/] (id {own}, position {int(trail.positions[t])})"
        + (" [dim]special[/]" if trail.special[t] else "")
    )
    if v.per_head:
        if head is None:
            table = Table(
                "layer",
                *[f"h{h}" for h in range(trail.n_heads)],
                title=f"rank of the token in each head's {v.space} space (0 = nearest)",
                box=None,
            )
            for l in layers:
                table.add_row(str(l), *[str(int(v.rank[l, h, t])) for h in range(trail.n_heads)])
            console.print(table)
            console.print("[dim]pass --head N to see a head's nearest vocabulary tokens[/]")
            return
        table = Table("layer", "self sim", "rank", f"nearest {k} ({v.space}@layer,head {head})", box=None)
        table.columns[-1].overflow = "fold"  # a long token wraps; it is never replaced by "…"
        for l in layers:
            table.add_row(
                str(l),
                f"{v.self_sim[l, head, t]:.3f}",
                str(int(v.rank[l, head, t])),
                _neighbours_cell(trail, v.top_ids[l, head, t], v.top_sims[l, head, t], own, k),
            )
        console.print(table)
        return
    cols = ["layer", "self sim", "rank", f"overlap@{v.overlap_k}", f"nearest {k} (own token in green)"]
    if fixed is not None:
        spec = beside.info.options.correct
        k = min(k, 5)  # two neighbour lists side by side: five each
        cols[-1] = f"nearest {k} raw"
        cols += [f"rank {spec}", f"nearest {k} corrected ({spec})"]
    table = Table(*cols, box=None)
    table.columns[4].overflow = "fold"  # a long token wraps; it is never replaced by "…"
    if fixed is not None:
        table.columns[-1].overflow = "fold"
    if v.origin_top_ids is not None and len(layers) == trail.n_layers:
        row = ["emb", "1.000" if v.space == "encodings" else "", "", ""]
        row.append(_neighbours_cell(trail, v.origin_top_ids[t], v.origin_top_sims[t], own, k))
        if fixed is not None:
            row += ["", ""]
        table.add_row(*row)
    for l in layers:
        ov = v.overlap[l, t]
        row = [
            str(l),
            f"{v.self_sim[l, t]:.3f}",
            str(int(v.rank[l, t])),
            "" if np.isnan(ov) else str(int(ov)),
            _neighbours_cell(trail, v.top_ids[l, t], v.top_sims[l, t], own, k),
        ]
        if fixed is not None:
            row += [
                str(int(fixed.rank[l, t])),
                _neighbours_cell(beside, fixed.top_ids[l, t], fixed.top_sims[l, t], own, k),
            ]
        table.add_row(*row)
    console.print(table)


def _grid(console: Console, trail: Trail, v: View, layers, head) -> None:
    import numpy as np

    title = f"{v.similarity} self-similarity; ·N: its rank where not 0"
    if v.per_head:
        if head is None:
            console.print("[dim]heads site: showing the median over heads; pass --head N for one head[/]")
            ranks, sims = np.median(v.rank, axis=1), np.median(v.self_sim, axis=1)
        else:
            ranks, sims = v.rank[:, head], v.self_sim[:, head]
    else:
        ranks, sims = v.rank, v.self_sim
    labels = [(f"{t}:{tok}" + ("*" if trail.special[t] else "")) for t, tok in enumerate(trail.tokens)]
    layers = list(layers)
    cells = {l: [_grid_cell(sims[l, t], ranks[l, t], v.similarity) for t in range(len(labels))] for l in layers}
    console.print(title)  # a line of its own: a table's title wraps to the table's width
    for block in _layer_blocks(console.width, labels, layers, cells):
        table = Table("token", *[f"L{l}" for l in block], box=None, pad_edge=False)
        for col in table.columns:
            col.no_wrap = True
        for t, label in enumerate(labels):
            table.add_row(label.replace("[", "\\["), *[cells[l][t][1] for l in block])
        console.print(table)
    if not np.asarray(ranks)[layers].any():
        console.print("[dim]every token is its own nearest row at every layer shown (rank 0 everywhere)[/]")
    console.print("[dim]* special token · pass --token N (or its text) to follow one token[/]")


def _grid_cell(sim, rank, similarity: str) -> tuple[str, str]:
    """(plain text, rich markup) of a grid cell: the self-similarity, and ``·rank`` where the
    rank is not 0 (coloured as the rank grid was: green near, yellow, red far)."""
    value = f"{float(sim):.2f}" if similarity == "cosine" else f"{float(sim):.3g}"
    r = int(rank)
    if r == 0:
        return value, value
    colour = "green" if r < 10 else "yellow" if r < 1000 else "red"
    return f"{value}·{r}", f"{value}[{colour}]·{r}[/]"


def _layer_blocks(width: int, labels: list[str], layers: list[int], cells) -> list[list[int]]:
    """Layers split into blocks whose tables fit ``width`` columns, so no cell is cut.

    Each block repeats the token column; a deep model (30-48 layers) reads as two or three
    stacked tables in a 100-column terminal instead of one table of truncated cells.
    """
    from rich.cells import cell_len

    label_w = max([cell_len("token"), *(cell_len(x) for x in labels)])
    cell_w = {l: max(len(f"L{l}"), *(cell_len(plain) for plain, _ in cells[l])) for l in layers}
    blocks: list[list[int]] = [[]]
    used = label_w
    for l in layers:
        need = cell_w[l] + 2  # rich pads each column by one cell on both sides
        if blocks[-1] and used + need > width:
            blocks.append([])
            used = label_w
        blocks[-1].append(l)
        used += need
    return blocks


def _lens(console: Console, trail: Trail, t: int | None, layers) -> None:
    """The logit lens for one token (default: the last one, where a decoder predicts)."""
    lens = trail.lens
    note = "" if t is not None else " (the last token; pass --token to choose)"
    t = trail.n_tokens - 1 if t is None else t
    nxt = lens.next_rank is not None and t + 1 < trail.n_tokens
    console.print(
        f"[bold]logit lens[/]: the model's own output head on each layer's {lens.site}, token {t} "
        f"[bold]{trail.tokens[t]}[/]{note}" + (f"; next token [bold]{trail.tokens[t + 1]}[/]" if nxt else "")
    )
    cols = ["layer", "own rank"] + (["next rank"] if nxt else []) + ["top predictions (probability)"]
    table = Table(*cols, box=None)
    table.columns[-1].overflow = "fold"
    own, following = int(trail.ids[t]), int(trail.ids[t + 1]) if nxt else None
    for l in layers:
        preds = []
        for i, p in zip(lens.top_ids[l, t][:5], lens.top_probs[l, t][:5]):
            label = trail.labels.get(int(i), str(int(i))).replace("[", "\\[")
            if int(i) == following:
                label = f"[bold green]{label}[/]"
            elif int(i) == own:
                label = f"[bold]{label}[/]"
            preds.append(f"{label} {p:.2f}")
        row = [str(l), str(int(lens.own_rank[l, t]))] + ([str(int(lens.next_rank[l, t]))] if nxt else [])
        table.add_row(*row, "  ".join(preds))
    console.print(table)
