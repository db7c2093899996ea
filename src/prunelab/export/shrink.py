"""``prunelab.export.shrink``, kept where users import it from: the cut itself is a structure operation
(:mod:`prunelab.structure.surgery`), the file it is saved in a file format (:mod:`prunelab.export.shrunk`)."""
from ..structure.surgery import ShrinkError, shrink, widths_of
from .shrunk import FORMAT, apply_widths, load_shrunk, model_spec, save_shrunk

__all__ = ["FORMAT", "ShrinkError", "apply_widths", "load_shrunk", "model_spec", "save_shrunk", "shrink", "widths_of"]
