"""Fitted translators on held-out text (issue 26): the tables of docs/translators.md.

    python benchmarks/translator_eval.py --model minilm --fit 1801 --eval 200
    python benchmarks/translator_eval.py --model smollm2 --fit 400 --eval 40 --lens --threads 2

The UD English EWT dev split (``--corpus``; beside the repository or in /work/shared/data,
never copied into it) is cut in two by sentence order: the first ``--fit`` sentences fit
the translators, the last ``--eval`` ones (which the fit never saw) evaluate them.

* identity (``--site``, default attn_resid): an identity translator is fitted
  (``tt.fit``, ridge chosen per layer among ``--ridge`` on a 10% held-out share of the fit
  texts); on the evaluation texts, per layer, the own-token rank-0 rate and median rank
  of the raw site and of its translation (``<site>_translated``), against the encodings
  space with cosine, special tokens left out.
* ``--lens`` (models with an output head): a prediction translator of layer_out (the
  fitted lens, Din et al. 2023) is fitted the same way; per layer, the logit lens and the
  fitted lens are compared with the model's own final distribution: top-1 agreement, mean
  KL(final || lens) in nats, and the median rank of the actual next token (every token
  but the last of each text; special tokens left out).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
CANDIDATES = (
    HERE.parent / "shared" / "data" / "ud-english-ewt" / "en_ewt-ud-dev.conllu",
    Path("/work/shared/data/ud-english-ewt/en_ewt-ud-dev.conllu"),
)


def identity_table(tt, loaded, translator, site: str, texts: list[str]) -> list[str]:
    raw: list[list[np.ndarray]] = []
    moved: list[list[np.ndarray]] = []
    for text in texts:
        run = loaded.run(text, tt.TraceOptions.make(site=site, k=1, overlap_k=1))
        trail = run.trail()
        keep = ~trail.special
        both = tt.translate(run, trail, translator)
        r = trail.view(site, "encodings", "cosine").metrics["rank"][:, keep]
        m = both.view(site + "_translated", "encodings", "cosine").metrics["rank"][:, keep]
        raw.append(r)
        moved.append(m)
    R, M = np.concatenate(raw, axis=1), np.concatenate(moved, axis=1)
    lines = [
        "| layer | rank-0 raw | rank-0 translated | median rank raw | median rank translated |",
        "|---:|---:|---:|---:|---:|",
    ]
    for layer in range(R.shape[0]):
        lines.append(
            f"| {layer} | {np.mean(R[layer] == 0):.3f} | {np.mean(M[layer] == 0):.3f} | "
            f"{np.median(R[layer]):g} | {np.median(M[layer]):g} |"
        )
    lines.append(f"\n{R.shape[1]:,} evaluation tokens (special tokens left out).")
    return lines


def lens_table(loaded, translator, texts: list[str]) -> list[str]:
    """Per layer, each lens's logits made once: top-1 = final, KL(final || lens), next-token rank."""
    import torch

    head = loaded.adapter.lens_head()
    special = set(loaded.tokenizer.all_special_ids)
    rows: dict[str, list] = {k: [] for k in ("agree_raw", "agree_fit", "kl_raw", "kl_fit", "next_raw", "next_fit")}
    with torch.no_grad():
        for text in texts:
            acts = loaded.run(text).acts
            ids = acts.input_ids
            keep = torch.tensor([int(i) not in special for i in ids])
            ref = torch.log_softmax(head(acts.layer_out[-1]).float(), -1)
            top = ref.argmax(-1)
            nxt = torch.cat([ids[1:], ids[:1]])
            fitted = translator.apply("layer_out", acts.layer_out)
            for tag, vecs in (("raw", acts.layer_out), ("fit", fitted)):
                agree, kl, ranks = [], [], []
                for layer in range(vecs.shape[0]):
                    logits = head(vecs[layer]).float()
                    logp = torch.log_softmax(logits, -1)
                    agree.append(logits.argmax(-1) == top)
                    kl.append((ref.exp() * (ref - logp)).sum(-1))
                    ranks.append((logits > logits.gather(1, nxt[:, None])).sum(1))
                rows[f"agree_{tag}"].append(torch.stack(agree)[:, keep].numpy())
                rows[f"kl_{tag}"].append(torch.stack(kl)[:, keep].numpy())
                with_next = keep.clone()
                with_next[-1] = False  # the last token has no next token
                rows[f"next_{tag}"].append(torch.stack(ranks)[:, with_next].numpy())
    cat = {k: np.concatenate(v, axis=1) for k, v in rows.items()}
    lines = [
        "| layer | top-1 = final, logit lens | top-1 = final, fitted lens | KL to final, logit lens | "
        "KL to final, fitted lens | median next-token rank, logit lens | median next-token rank, fitted lens |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layer in range(cat["agree_raw"].shape[0]):
        lines.append(
            f"| {layer} | {cat['agree_raw'][layer].mean():.3f} | {cat['agree_fit'][layer].mean():.3f} | "
            f"{cat['kl_raw'][layer].mean():.2f} | {cat['kl_fit'][layer].mean():.2f} | "
            f"{np.median(cat['next_raw'][layer]):g} | {np.median(cat['next_fit'][layer]):g} |"
        )
    lines.append(f"\n{cat['agree_raw'].shape[1]:,} evaluation tokens (special tokens left out).")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--fit", type=int, default=1801, help="fit on the first FIT sentences")
    p.add_argument("--eval", type=int, default=200, help="evaluate on the last EVAL sentences")
    p.add_argument("--site", default="attn_resid")
    p.add_argument("--ridge", default="1e-4,1e-3,1e-2,1e-1")
    p.add_argument("--no-identity", action="store_true", help="skip the identity translator")
    p.add_argument("--lens", action="store_true", help="also fit and compare the prediction translator (fitted lens)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--corpus", type=Path, default=next((c for c in CANDIDATES if c.exists()), CANDIDATES[0]))
    args = p.parse_args()
    if not args.corpus.exists():
        sys.exit(f"no corpus at {args.corpus}: give --corpus (the UD English EWT dev split, en_ewt-ud-dev.conllu)")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import tokentrail as tt
    from tokentrail.corpus.inputs import Skipped, records

    texts = [r.text for r in records(args.corpus, skipped=Skipped())]
    if args.fit + args.eval > len(texts):
        sys.exit(f"the corpus has {len(texts)} sentences: --fit + --eval must not exceed it")
    fit_texts, eval_texts = texts[: args.fit], texts[-args.eval :]
    ridges = [float(x) for x in args.ridge.split(",")]
    loaded = tt.load(args.model)
    print(f"# {args.model}: fit on UD dev sentences 0-{args.fit - 1}, evaluated on the last {args.eval}\n")
    with tempfile.TemporaryDirectory() as d:
        if not args.no_identity:
            t0 = time.perf_counter()
            ident = tt.fit(fit_texts, args.model, Path(d) / "id", sites=[args.site], ridge=ridges, holdout=0.1,
                           batch=args.batch)  # fmt: skip
            chosen = [ident.meta["fit"][f"{args.site}/{layer}"]["ridge"] for layer in ident.layers(args.site)]
            print(f"## identity translator of {args.site} ({ident.meta['tokens']:,} fit tokens, "
                  f"{time.perf_counter() - t0:.0f} s; ridge per layer {chosen})\n")  # fmt: skip
            print("\n".join(identity_table(tt, loaded, ident, args.site, eval_texts)) + "\n")
        if args.lens:
            t0 = time.perf_counter()
            pred = tt.fit(fit_texts, args.model, Path(d) / "pred", kind="prediction", sites=["layer_out"],
                          ridge=ridges, holdout=0.1, batch=args.batch)  # fmt: skip
            chosen = [pred.meta["fit"][f"layer_out/{layer}"]["ridge"] for layer in pred.layers("layer_out")]
            print(f"## prediction translator of layer_out: logit lens vs fitted lens ({pred.meta['tokens']:,} fit "
                  f"tokens, {time.perf_counter() - t0:.0f} s; ridge per layer {chosen})\n")  # fmt: skip
            print("\n".join(lens_table(loaded, pred, eval_texts)) + "\n")


if __name__ == "__main__":
    main()
