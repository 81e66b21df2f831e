"""Rich data for ``log``: images, tables, histograms, video, audio, HTML, 3-D objects, plots.

Each type holds what the user gave it, checked and copied, and nothing encoded; the sidecar
writes the files (PNG, GIF, WAV, JSON) and W&B's pointer into the history row.  The formats,
the file layout and how payloads travel are in docs/media.md.  ``import runstream`` does not load
this package (it imports numpy); ``runstream.Image`` and the others load it on first use.
"""

from runstream.media.chart import CustomChart
from runstream.media.classes import Classes, box3d
from runstream.media.histogram import Histogram
from runstream.media.image import Image
from runstream.media.others import Audio, Html, Molecule, Object3D, Plotly, Video
from runstream.media.table import Table

__all__ = [
    "Audio",
    "Classes",
    "CustomChart",
    "Histogram",
    "Html",
    "Image",
    "Molecule",
    "Object3D",
    "Plotly",
    "Table",
    "Video",
    "box3d",
]
