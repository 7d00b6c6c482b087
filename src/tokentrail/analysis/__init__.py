"""Views: captured activations scored against the vocabulary, per site, space, head and
layer (``views``), the logit lens (``lens``), and the checks of options against a model
before its forward pass."""
