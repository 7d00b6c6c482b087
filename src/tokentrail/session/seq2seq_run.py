"""A :class:`Seq2SeqRun`: an encoder-decoder's :class:`~tokentrail.session.runner.Run`, the
encoder over the source text and the decoder over the decoder input, with cross-attention."""

from __future__ import annotations

from typing import Any, cast

from tokentrail.adapters import EncoderStack
from tokentrail.analysis.cross import cross_views
from tokentrail.analysis.heads import heads_at
from tokentrail.analysis.lens import logit_lens
from tokentrail.analysis.trail import make_trail
from tokentrail.analysis.views import Progress, compute_views
from tokentrail.engine.walkthrough import AttentionStep, attention_step, cross_attention_step
from tokentrail.results.trail import AttentionPatterns, HeadsAt, LensResult, Trail
from tokentrail.session.runner import Lengths, Run
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import TraceOptions


class Seq2SeqRun(Run):
    """An encoder-decoder's run: the encoder stack over the source text (``acts``) and the
    decoder stack over the decoder input (``decoder_acts``), with cross-attention.

    :meth:`trail` gives the encoder's Trail carrying the decoder's (``trail.decoder``);
    :meth:`heads` and :meth:`step` take ``stack="decoder"`` for the decoder; the logit lens
    reads the decoder (the encoder has no output head)."""

    def __init__(
        self,
        model,
        text,
        encoded,
        acts,
        options,
        *,
        decoder_acts,
        decoder_text: str,
        decoder_tokens,
        decoder_special,
        decoder_input: str,
    ):
        super().__init__(model, text, encoded, acts, options)
        self.decoder_acts = decoder_acts
        self.decoder_text = decoder_text
        self.decoder_tokens = list(decoder_tokens)
        self.decoder_special = list(decoder_special)
        self.decoder_input = decoder_input  # "target" or "greedy output (...)"

    def _lengths(self) -> Lengths:
        return {"tokens": self.n_tokens, "decoder_tokens": len(self.decoder_tokens)}

    def __repr__(self) -> str:
        return f"Seq2SeqRun(model={self.model.name!r}, source tokens={self.n_tokens}, decoder tokens={len(self.decoder_tokens)}, decoder input={self.decoder_input!r})"

    def _encoder(self) -> EncoderStack:
        """The model's adapter: an encoder-decoder's primary adapter is its encoder stack."""
        return cast(EncoderStack, self.model.adapter)

    def _stack(self, stack: str):
        m = self.model
        if stack == "encoder":
            return m.adapter, m.spaces, self.acts
        if stack == "decoder":
            return self._encoder().decoder_stack(), m.decoder_spaces, self.decoder_acts
        raise InputError(f"unknown stack {stack!r}: choose encoder or decoder")

    def trail(self, options: TraceOptions | None = None, *, progress: Progress | None = None, **changes: Any) -> Trail:
        opts = self._options(options, changes)
        cached = self._cached(opts)
        if cached is not None:
            return cached
        say = progress or (lambda f, m: None)
        m = self.model
        dec, dec_spaces, dec_acts = self._stack("decoder")
        enc_views = compute_views(m.adapter, m.spaces, self.acts, opts, lambda f, msg: say(f / 2, f"encoder: {msg}"))
        dec_views = compute_views(dec, dec_spaces, dec_acts, opts, lambda f, msg: say(0.5 + f / 2, f"decoder: {msg}"))
        cross = cross_views(dec, dec_acts, opts)
        lens = self.lens(k=opts.k, site=opts.lens_site) if opts.lens else None
        say(1.0, "done")
        common: dict[str, Any] = dict(  # the keywords both stacks' Trails share
            options=opts,
            label=m.labels,
            model_name=m.name,
            revision=m.revision,
            device=m.device,
            dtype=m.dtype,
            decoder_input=self.decoder_input,
        )
        decoder = make_trail(
            dec,
            dec_acts,
            dec_views,
            lens,
            text=self.decoder_text,
            tokens=self.decoder_tokens,
            special=self.decoder_special,
            cross=cross,
            source_tokens=self.tokens,
            **common,
        )
        trail = make_trail(
            m.adapter,
            self.acts,
            enc_views,
            None,
            text=self.text,
            tokens=self.tokens,
            special=self.encoded.special,
            truncated_from=self.encoded.truncated_from,
            decoder=decoder,
            **common,
        )
        return self._store(opts, trail)

    def lens(self, *, k: int = 15, site: str = "layer_out") -> LensResult:
        """The logit lens over the decoder's layers and tokens. Cached."""
        key = (k, site)
        with self._lock:
            if key not in self._lenses:
                lens = logit_lens(self._encoder().decoder_stack(), self.decoder_acts, k=k, site=site)
                self._lenses[key] = lens.labelled(self.decoder_tokens, self.model.labels)
            return self._lenses[key]

    def attention(self, kind: str = "self", *, stack: str = "encoder") -> AttentionPatterns:
        """Every head's attention pattern of one stack: self-attention of the encoder or the
        decoder (``stack``), or the decoder's cross-attention over the source (``kind="cross"``)."""
        if kind not in ("self", "cross"):
            raise InputError(f"unknown attention kind {kind!r}: choose self or cross")
        if kind == "cross":
            weights = self.decoder_acts.cross_attentions
            return AttentionPatterns(
                weights=weights.cpu().numpy(),
                tokens=tuple(self.decoder_tokens),
                source_tokens=tuple(self.tokens),
                kind="cross",
                stack="decoder",
                model=self.model.name,
            )
        _, _, acts = self._stack(stack)
        tokens = self.decoder_tokens if stack == "decoder" else self.tokens
        return AttentionPatterns(
            weights=acts.attentions.cpu().numpy(),
            tokens=tuple(tokens),
            source_tokens=tuple(tokens),
            stack=stack,
            causal=stack == "decoder",
            model=self.model.name,
        )

    def heads(
        self,
        layer: int,
        token: int,
        *,
        kind: str = "value",
        similarity: str = "cosine",
        k: int = 15,
        stack: str = "encoder",
    ) -> HeadsAt:
        """Every self-attention head of ``layer`` of one stack for ``token``. Cached."""
        key = (stack, layer, token, kind, similarity, k)
        with self._lock:
            if key in self._heads:
                return self._heads[key]
        adapter, spaces, acts = self._stack(stack)
        result = heads_at(
            adapter, spaces, acts, layer, token, label=self.model.labels, kind=kind, similarity=similarity, k=k
        )
        with self._lock:
            self._heads[key] = result
            while len(self._heads) > 64:
                self._heads.popitem(last=False)
        return result

    def step(self, layer: int, head: int, token: int, *, stack: str = "encoder") -> AttentionStep:
        """How self-attention ``head`` of ``layer`` of one stack computed ``token``'s output."""
        adapter, _, acts = self._stack(stack)
        return attention_step(adapter, acts, layer, head, token)

    def cross_step(self, layer: int, head: int, token: int):
        """How cross-attention ``head`` of decoder ``layer`` computed decoder ``token``'s
        output: the query from the decoder, keys and values from the encoder output
        (:class:`~tokentrail.engine.walkthrough.CrossAttentionStep`)."""
        return cross_attention_step(self._encoder().decoder_stack(), self.decoder_acts, layer, head, token)
