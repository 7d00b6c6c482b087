"""Loading a model (bundled, cached, hub, folder or object: ``models``), encoding texts
(``inputs``) and running them (``runner``: one text, many, encoder-decoders); the
``verify`` and ``compare`` commands built on those runs."""
