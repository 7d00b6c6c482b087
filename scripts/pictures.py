"""Draw the pictures docs/pictures.md shows, from the bundled models, with kaleido (PNG):

    PYTHONPATH=src python scripts/pictures.py [OUT_FOLDER]   # default docs/images

- lens-smollm2.png: the logit lens of SmolLM2 on "Time flies like an arrow." (colour: the
  top token's probability);
- lens-smollm2-rank.png: the same, coloured by the rank of the actual next token;
- attention-minilm.png: every head of MiniLM's layer 2 on "The bank by the river was
  steep." (small multiples);
- attention-minilm-head.png: one head of it.

The same pictures come from the command line (``tokentrail trace ... --lens --plot
lens.png``, ``--plot-attention heads.png --layer 2``); this script keeps the docs' copies
reproducible. Needs the bundled models, kaleido and a Chrome or Chromium."""

from __future__ import annotations

import sys
from pathlib import Path

import tokentrail as tt
from tokentrail.present.images import image_problem, write_figure


def main(out: Path) -> None:
    problem = image_problem()
    if problem is not None:
        sys.exit(problem)
    out.mkdir(parents=True, exist_ok=True)
    smol = tt.load("smollm2").run("Time flies like an arrow.")
    lens = smol.lens(k=5)
    write_figure(tt.plots.lens_heatmap(lens), out / "lens-smollm2.png")
    write_figure(tt.plots.lens_heatmap(lens, "rank"), out / "lens-smollm2-rank.png")
    minilm = tt.load("minilm").run("The bank by the river was steep.")
    write_figure(tt.plots.attention_pattern(minilm, layer=2), out / "attention-minilm.png")
    write_figure(tt.plots.attention_pattern(minilm, layer=2, head=5), out / "attention-minilm-head.png")
    for name in ("lens-smollm2.png", "lens-smollm2-rank.png", "attention-minilm.png", "attention-minilm-head.png"):
        print(out / name)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/images"))
