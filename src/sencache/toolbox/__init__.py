"""Small utilities every layer uses, written once: atomic file writes (:mod:`.files`) and number handling
(:mod:`.numbers`). The bottom layer, beside :mod:`sencache.errors`: it imports nothing of the package."""
