"""The edge of tokentrail: the names a user may choose from, the option objects, the
errors, token display and checked output paths. Pure Python: nothing here imports torch,
so a command line is checked before any heavy import."""
