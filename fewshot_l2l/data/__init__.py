"""Data: few-shot splits and the episode sampler, the embedded glyph dataset, and real datasets built once into HDF5.

* :mod:`.episodes` - :class:`FewShotSplit` (a split as one uint8 tensor) and the seeded, vectorized
  N-way K-shot :class:`EpisodeSampler`;
* :mod:`.glyphs` - the embedded dataset: procedurally generated stroke glyphs;
* :mod:`.hdf5` - the dataset file format (atomic writer, checksum, lazily opened reader);
* :mod:`.omniglot`, :mod:`.miniimagenet` - builders from the official archives / folders into HDF5;
* :mod:`.download` - the official Omniglot zips, MD5-verified, with a clear offline message;
* :mod:`.registry` - datasets by name (:func:`load_splits`), the entry point of training and scripts.

The builders (:mod:`.omniglot`, :mod:`.miniimagenet`) need Pillow and h5py and are imported on use.
"""

from .episodes import Episode, EpisodeSampler, FewShotSplit, add_rotated_classes
from .glyphs import make_glyph_splits
from .registry import DATASETS, FILE_DATASETS, ROTATE_CHOICES, load_splits

__all__ = [
    "DATASETS", "Episode", "EpisodeSampler", "FILE_DATASETS", "FewShotSplit", "ROTATE_CHOICES", "add_rotated_classes",
    "load_splits", "make_glyph_splits",
]
