"""The short "how to read this" panels shown with each view, and :func:`panel`, which
puts one in the page (every tab uses it)."""

import gradio as gr


def panel(text: str, title: str = "How to read this") -> None:
    """A view's help, folded above it: one line until opened, so the view keeps the
    page's width and height (a result shows on the first screen of a laptop)."""
    with gr.Accordion(title, open=False, elem_classes="howto"):
        gr.Markdown(text.removeprefix(f"**{title}**").lstrip())


INTRO = (
    "Follow each token's vector through every layer, compared with the model's own vocabulary: "
    "which tokens does it still look like, and where does it stop looking like itself?"
)

ACROSS_LAYERS = """**How to read this**

Each column is a layer. Its rows are the vocabulary tokens whose *original encodings*
(the model's own input vector for that token, placed at this position) are most similar
to the selected token's vector at the chosen **site**. Untick *Use positional embeddings*
to compare with the raw, position-free embedding table instead.

- ★ is the token itself. When it falls outside the top-k, the last row gives its
  **rank**: how many vocabulary tokens are closer (0 = nearest).
- **Similarity to the original encoding**: how much of the token it started as is left.
- **Rank** (log scale, lower is better): 1 means its own token is the nearest.
- **Overlap**: how many of the top-100 neighbours it shares with the previous layer; a
  drop marks a layer that rewrites the token.

Grey lines are the other tokens, orange the selected one. *Anisotropy-adjusted*
subtracts the layer's mean similarity between different tokens (Ethayarajh 2019):
late layers make every vector look alike.
"""

HEATMAPS = """**How to read this**

Every token (rows) at every layer (columns) at once. **Click a cell** to select
that token and layer (or a token's name to select just the token); the other views
follow.

- **rank**: darker is worse: more vocabulary tokens are closer than its own (white: 0,
  its own token is the nearest; log scale).
- **self-similarity**: darker is more similar to its original encoding.
- **overlap**: darker keeps more of its top-100 neighbours from the previous layer.
"""

HEADS = """**How to read this**

For the selected token and **layer**, each head against the vocabulary as seen through
that head's own map, at this position (**space** above): *value* compares the head's
output *z* (its weighted sum of values, before the output projection) with every
token's value vector; *key* and *query* compare the token's own key or query vector
with every token's key or query (RoPE at this position for rotary models). ★ marks the
token itself; *own rank* is where it stands (0 = nearest).

The map shows where the token's attention went: one row per head, one column per
token of the text; darker is more weight. Each row sums to 1.
"""

ATTENTION = """**How to read this**

Where each token looks: one square per head of the **layer** chosen with the slider (or
only the **head** chosen), query tokens as rows and the tokens they attend to as columns;
darker is more weight and each row sums to 1 (decoders: nothing above the diagonal, a
token sees only the tokens before it). The figure's menu picks another layer.
"""

LENS = """**How to read this**

The picture: layers (rows, the last on top) × the tokens of the text (columns); each cell
is the top prediction of the model's output head at that layer and position, coloured by
its probability, the entropy, the KL divergence from the last layer, or the rank of the
actual next token (decoders; encoders: of the token itself). Hover a cell for the top 5.
The table below gives the selected token's predictions.

The logit lens applies the model's **own output head** (a decoder's final norm and
LM head; an encoder's masked-LM head) to the selected token's residual vector at every
layer, as if the model stopped there. **Residual read**: *layer_out* is each layer's
output (the default, also `tokentrail trace --lens`); *attn_resid* is the residual right
after attention, before the feed-forward block (`--lens-site attn_resid`). The `emb`
row applies the head to the original encoding.

*own rank*: how many tokens score higher than the token itself (0 = top). *next rank*
(decoders): the same for the following token, what the model is trained to predict.
*entropy*: how spread the prediction is (nats; 0 = certain).

Models without an output head (the bundled MiniLM is a sentence-embedding checkpoint)
have no lens.
"""

WALKTHROUGH = """**How to read this**

One head's computation for the selected token, with this text's real numbers:
query · key scores, scaled by √d_k, turned into weights by softmax, used to average the
value vectors; then the output projection, the residual add and (post-LN models) the
LayerNorm.

Everything is recomputed from the captured layer input and the model's own weights,
then checked against what the model itself produced (the ✓ line): the numbers are
the model's, not an approximation.
"""

EXPORT = """**How to read this**

**Analysis**: the tidy table behind every view (one row per token, layer, metric),
as CSV or Parquet, or JSON with the top-k neighbours and the run's metadata.

**Plots**: standalone HTML (interactive, works offline), or SVG/PNG drawn on the
server with kaleido and Chromium when they are installed. The camera icon on each
plot also saves a PNG straight from your browser.

Files are made for this page only and deleted after an hour.
"""

LIMITS = "Up to {chars:,} characters and {tokens} tokens. Enter or **Analyse** runs it."
CORRECTION = "geometry fix of the vector and every row: zscore, center, rogue:N, abtt:N; fitted to the text, or to a corpus study the server offers"
TRANSLATOR = "a translator fitted on a corpus (tokentrail fit) for this model: identity adds the translated site beside the raw one (Layers), prediction the fitted lens (Lens)"
