"""The exact maths and the hooks: one forward pass with scoped hooks (``capture``), the
factorised vocabulary spaces (``spaces``), the fused scoring of a block (``scoring``),
the per-cell metrics (``metrics``), the memory estimate (``budget``), the attention
walkthrough and the geometry corrections. No I/O, no presentation."""
