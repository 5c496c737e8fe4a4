"""Built-in adapters, one file per implementation family.

Nothing is imported here: ``attnviz.capture.registry`` imports every module of this package by
name on the first lookup, and each module registers its family's adapters. A module whose
name starts with ``_`` is a helper, not a family.
"""
