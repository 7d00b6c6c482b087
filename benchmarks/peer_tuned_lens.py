"""tuned-lens (Belrose et al. 2023) trained by its own training loop, beside the logit lens (issue 26).

The other side of docs/translators.md's "logit lens vs fitted lens" table: the ``tuned-lens``
package's SGD-trained translators on the same model and the same UD English EWT dev
sentences, fitted on the same sentences and scored on the same held-out ones. It runs in its
OWN venv, never the project's (tuned-lens is no dependency of tokentrail):

    python3 -m venv /work/peers/tunedlens/venv
    /work/peers/tunedlens/venv/bin/pip install torch==2.13.0      # the CPU wheel, first
    /work/peers/tunedlens/venv/bin/pip install tuned-lens          # 0.2.0: transformers 5.25, torchdata 0.11
    /work/peers/tunedlens/venv/bin/pip install --no-deps torchdata==0.9.0
    # tuned_lens.scripts imports torchdata.dataloader2, gone since torchdata 0.10

    OMP_NUM_THREADS=1 /work/peers/tunedlens/venv/bin/python benchmarks/peer_tuned_lens.py \\
        --model-dir DIR --fit 300 --eval 40 --epochs 4 --out /work/peers/tunedlens/results

DIR is a Hugging Face folder of the model (config.json + model.safetensors + tokenizer): for
``smollm2``, the de-quantized float32 copy tokentrail caches under
~/.cache/tokentrail/gguf/SmolLM2-135M-Instruct.Q4_1-*/.

* The split is translator_eval.py's: the ``# text`` sentences of the dev file in file order,
  the first ``--fit`` fit, the last ``--eval`` evaluate. Each sentence is its own sequence,
  tokenized with the tokenizer's special tokens as tokentrail does (no packing across
  sentences, so every token has the same context as in tokentrail's fit and evaluation).
* Training is tuned-lens's own: ``tuned_lens.scripts.train_loop.Train.execute`` (KL to the
  final distribution at the current token, bfloat16 autocast, SGD with Nesterov momentum,
  its default learning rate, weight decay and linear decay, gradient clipping at 1), with two
  things replaced because the package cannot do them here: the model is loaded without the
  ``load_in_8bit`` argument transformers 5 refuses, and the data are one sentence per sample
  (``--epochs`` copies, shuffled by its own data pipe) with ``--sentences-per-step``
  sentences of gradient accumulation per step (its own count assumes equal-length chunks).
  The wall time of the training loop is printed beside the model load.
* Evaluation, per layer l = 0..L-1 of layer_out (h_{l+1}, the decoder layer's output before
  the final norm, as tokentrail's ``layer_out``): the logit lens (final norm + head) and the
  tuned lens (translator l+1 of tuned-lens, whose translator i reads ``hidden_states[i]``;
  the last layer is the model's own output, so both lenses are the logit lens there) against
  the model's final distribution: mean KL(final || lens) in nats, top-1 agreement, median
  rank of the actual next token (every token but the last of each sentence); special tokens
  left out. Prints the Markdown table and writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path("/work/shared/data/ud-english-ewt/en_ewt-ud-dev.conllu")


def sentences(path: Path) -> list[str]:
    """The ``# text`` of each sentence block, in file order (as tokentrail's corpus reader)."""
    texts: list[str] = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        for line in block.splitlines():
            if line.startswith("#") and line[1:].partition("=")[0].strip() == "text":
                texts.append(line[1:].partition("=")[2].strip())
                break
    return texts


def train(args, fit_ids: list[list[int]]):
    """tuned-lens's Train.execute on one-sentence samples; returns (lens, seconds, settings)."""
    import datasets
    import torch
    import tuned_lens.scripts.ingredients as ing
    from transformers import AutoModelForCausalLM
    from tuned_lens import TunedLens
    from tuned_lens.scripts.train_loop import Train

    class Model(ing.Model):
        def load(self, device, must_use_cache=False):
            model = AutoModelForCausalLM.from_pretrained(self.name, dtype=torch.float32, local_files_only=True)
            model.eval()
            model.requires_grad_(False)
            return model, self.load_tokenizer(must_use_cache=True)

    class Data(ing.Data):
        def load(self, tokenizer):
            rows = [ids for _ in range(args.epochs) for ids in fit_ids]
            return datasets.Dataset.from_dict({"input_ids": rows}).with_format("torch", columns=["input_ids"]), 1.0

    @dataclass
    class Run(Train):
        setup_s: float = 0.0

        def setup(self):
            t0 = time.perf_counter()
            out = super().setup()
            self.setup_s = time.perf_counter() - t0
            return out

        def calculate_gradient_accumulation_steps(self, tokens_per_sample: int) -> int:
            return args.sentences_per_step

    steps = args.epochs * len(fit_ids) // args.sentences_per_step
    run = Run(
        model=Model(name=str(args.model_dir), precision="float32"),
        data=Data(name=["fit sentences"]),
        opt=ing.Optimizer(),
        dist=ing.Distributed(per_gpu_batch_size=1),
        output=args.out.parent / (args.out.name + "-lens"),
        num_steps=steps,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    run.execute()
    total = time.perf_counter() - t0
    model = AutoModelForCausalLM.from_pretrained(str(args.model_dir), dtype=torch.float32, local_files_only=True)
    model.eval()
    lens = TunedLens.from_model_and_pretrained(model, str(run.output))
    settings = {
        "steps": steps,
        "sentences_per_step": args.sentences_per_step,
        "epochs": args.epochs,
        "optimizer": "SGD, Nesterov, momentum 0.9, lr 1.0*(1-0.9), weight decay 1e-3, linear decay, no warmup",
        "loss": "KL(final || lens) at the current token, bfloat16 autocast, grad clip 1.0",
        "fit_tokens_seen": args.epochs * sum(len(x) for x in fit_ids),
        "setup_s": round(run.setup_s, 1),
        "train_loop_s": round(total - run.setup_s, 1),
        "total_s": round(total, 1),
    }
    return model, lens, settings


def evaluate(model, lens, eval_ids: list[list[int]], special: set[int]) -> dict[str, list[float]]:
    import numpy as np
    import torch

    layers = model.model.layers
    store: dict[int, torch.Tensor] = {}

    def hook(i):
        def grab(_module, _inputs, output):
            store[i] = (output[0] if isinstance(output, tuple) else output).detach()

        return grab

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("kl_logit", "kl_tuned", "agree_logit", "agree_tuned")}
    cols |= {"next_logit": [], "next_tuned": []}
    with torch.no_grad():
        for ids in eval_ids:
            x = torch.tensor([ids])
            out = model(x, output_hidden_states=True)
            ref = torch.log_softmax(out.logits[0].float(), -1)
            top = ref.argmax(-1)
            keep = torch.tensor([i not in special for i in ids])
            nxt = torch.tensor(ids[1:] + ids[:1])
            with_next = keep.clone()
            with_next[-1] = False
            for tag in ("logit", "tuned"):
                kl, agree, ranks = [], [], []
                for i in range(len(layers)):
                    h = store[i][0]
                    if i < len(layers) - 1:
                        assert torch.equal(h, out.hidden_states[i + 1][0])
                    if tag == "tuned" and i < len(layers) - 1:
                        logits = lens(h, idx=i + 1).float()
                    else:
                        logits = lens.unembed(h).float()
                    logp = torch.log_softmax(logits, -1)
                    kl.append((ref.exp() * (ref - logp)).sum(-1))
                    agree.append(logits.argmax(-1) == top)
                    ranks.append((logits > logits.gather(1, nxt[:, None])).sum(1))
                cols[f"kl_{tag}"].append(torch.stack(kl)[:, keep].numpy())
                cols[f"agree_{tag}"].append(torch.stack(agree)[:, keep].numpy())
                cols[f"next_{tag}"].append(torch.stack(ranks)[:, with_next].numpy())
    for handle in handles:
        handle.remove()
    cat = {k: np.concatenate(v, axis=1) for k, v in cols.items()}
    table: dict[str, list[float]] = {}
    for k, v in cat.items():
        table[k] = [float(np.median(r)) if k.startswith("next") else float(r.mean()) for r in v]
    table["tokens"] = [float(cat["kl_logit"].shape[1])]
    return table


def markdown(table: dict[str, list[float]]) -> list[str]:
    lines = [
        "| layer | top-1 = final, logit lens | top-1 = final, tuned lens | KL to final, logit lens | "
        "KL to final, tuned lens | median next-token rank, logit lens | median next-token rank, tuned lens |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layer in range(len(table["kl_logit"])):
        lines.append(
            f"| {layer} | {table['agree_logit'][layer]:.3f} | {table['agree_tuned'][layer]:.3f} | "
            f"{table['kl_logit'][layer]:.2f} | {table['kl_tuned'][layer]:.2f} | "
            f"{table['next_logit'][layer]:g} | {table['next_tuned'][layer]:g} |"
        )
    lines.append(f"\n{int(table['tokens'][0]):,} evaluation tokens (special tokens left out).")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True, help="a Hugging Face folder of the model")
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--fit", type=int, default=300, help="train on the first FIT sentences")
    p.add_argument("--eval", type=int, default=40, help="evaluate on the last EVAL sentences")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--sentences-per-step", type=int, default=8)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("/work/peers/tunedlens/results"))
    args = p.parse_args()
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    texts = sentences(args.corpus)
    if args.fit + args.eval > len(texts):
        sys.exit(f"the corpus has {len(texts)} sentences: --fit + --eval must not exceed it")
    tok = AutoTokenizer.from_pretrained(str(args.model_dir), local_files_only=True)
    fit_ids = [tok(t, add_special_tokens=True)["input_ids"] for t in texts[: args.fit]]
    eval_ids = [tok(t, add_special_tokens=True)["input_ids"] for t in texts[-args.eval :]]
    model, lens, settings = train(args, fit_ids)
    t0 = time.perf_counter()
    table = evaluate(model, lens, eval_ids, set(tok.all_special_ids))
    settings["eval_s"] = round(time.perf_counter() - t0, 1)
    head = (
        f"# tuned-lens {args.model_dir.name}: trained on UD dev sentences 0-{args.fit - 1} "
        f"({sum(map(len, fit_ids)):,} tokens, {args.epochs} epochs, {settings['steps']} steps of "
        f"{args.sentences_per_step} sentences, {settings['train_loop_s']:.0f} s training loop + "
        f"{settings['setup_s']:.0f} s setup, {args.threads} thread(s)), evaluated on the last {args.eval}"
    )
    lines = [head, "", *markdown(table)]
    print("\n".join(lines))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    record = {"corpus": str(args.corpus), "fit": args.fit, "eval": args.eval, "texts": len(texts)}
    args.out.with_suffix(".json").write_text(json.dumps(record | {"settings": settings, "table": table}, indent=1))


if __name__ == "__main__":
    main()
