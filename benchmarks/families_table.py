"""The families table (docs/families.md): every ``model_type`` tokentrail supports, traced
and verified on a tiny random model of its own.

    python benchmarks/families_table.py                 # every family, Markdown on stdout
    python benchmarks/families_table.py bert mbart      # only these

For each ``model_type`` in ``tokentrail.adapters.REGISTRY`` it builds the tiny model of
``tests/tiny_models.py`` (seeded, norms/biases/matrices perturbed), saves it with
``save_pretrained`` next to a tiny word-level tokenizer, loads the folder with
``tokentrail.load`` (the real loader: it picks the Auto class by the checkpoint's head keys)
and then, on one sentence:

* all: ``trace(site="all", space="all", lens=<where there is a head>)``: ✓ when every
  site and space was computed (a space the model cannot factorise is left out of ``all``
  and named; its own column gives the reason);
* spaces: ``trace(site=..., space=<one space>)`` for each space, so that a space the model
  cannot factorise is refused in its own cell;
* lens: ``trace(lens=True)`` (the logit lens' last layer must equal the model's logits: that
  is the ``lens = logits`` row of verify);
* cross: encoder-decoders only, ``trace(site="cross_resid,cross_heads")`` on the decoder;
* verify: ``tokentrail.verify`` (every identity, both stacks and cross-attention for an
  encoder-decoder), ✓ when no identity fails.

A cell is ✓, or the one-line reason tokentrail gives (``n/a`` where the column does not
apply). Adding a family is one entry in ``tests/tiny_models.py``'s ``TINY`` (the script
says which ``model_type`` has none).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models.py and its tokenizer live with the tests

import tiny_models  # noqa: E402
import tokentrail  # noqa: E402
from tokentrail.adapters import REGISTRY  # noqa: E402
from tokentrail.spec.errors import TokentrailError  # noqa: E402
from tokentrail.spec.options import CROSS_SITES, HEAD_SITE, HEAD_SPACES, RESIDUAL_SITES  # noqa: E402

TEXT = "the cat sat on the mat"
TARGET = "le chat est sur le tapis"
SPACES = ("embeddings", "encodings", *HEAD_SPACES)
OK = "✓"


def _cell(fn) -> str:
    """✓ when ``fn()`` runs, else tokentrail's one-line reason."""
    try:
        fn()
    except TokentrailError as exc:
        return str(exc).splitlines()[0].replace("|", "\\|")
    return OK


def _all(trail) -> None:
    """What ``site="all", space="all"`` computed must be every site, or raise the note."""
    views = [*trail.views, *(trail.decoder.views if trail.decoder is not None else ())]
    sites, spaces = {v.site for v in views}, {v.space for v in views}
    left = [s for s in (*RESIDUAL_SITES, HEAD_SITE) if s not in sites] + [s for s in SPACES if s not in spaces]
    if left:
        raise TokentrailError(f"✓ all but {', '.join(left)} (refused alone: see its column)")


def row(model_type: str, folder: Path) -> dict[str, str]:
    entry = tiny_models.TINY.get(model_type)
    if entry is None:
        return {"family": model_type, "all": "no tiny model in tests/tiny_models.py TINY"}
    model = tiny_models.build(model_type)
    loaded = tokentrail.load(str(tiny_models.save(model, folder / model_type)))
    seq2seq = loaded.adapter.is_seq2seq
    kw = dict(target=TARGET) if seq2seq else {}

    def trace(**opts):
        return tokentrail.trace(TEXT, loaded, **kw, **opts)

    out = {"family": model_type, "class": type(loaded.adapter.model).__name__}
    out["all"] = _cell(lambda: _all(trace(site="all", space="all", lens=loaded.adapter.lens_head() is not None)))
    for space in SPACES:
        site = "heads" if space in HEAD_SPACES else "layer_out"
        out[space] = _cell(lambda site=site, space=space: trace(site=site, space=space))
    out["lens"] = _cell(lambda: trace(lens=True))
    out["cross"] = _cell(lambda: trace(site=list(CROSS_SITES))) if seq2seq else "n/a"
    verification = tokentrail.verify(loaded, TEXT)
    failed = [r.identity for r in verification.failed]
    out["verify"] = OK if not failed else "fails: " + ", ".join(failed)
    return out


COLUMNS = ("family", "class", "all", *SPACES, "lens", "cross", "verify")


def markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(r.get(c, "") for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("families", nargs="*", help="model types (default: every one tokentrail supports)")
    args = p.parse_args(argv)
    wanted = args.families or sorted(REGISTRY)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row(t, Path(tmp)) for t in wanted]
    print(markdown(rows))
    return 0 if all(r.get("verify") == OK for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
