"""scikit-image's bundled immunohistochemistry image (skimage.data.immunohistochemistry(): 512 x 512 RGB, IHC
stained, haematoxylin counterstain) as the demonstration's data: a training region (the top rows) to pretrain and
train the decoder on, a held-out region (the bottom rows) to score it, and nuclei pseudo-labels on both made by a
classical algorithm, not by a person: the haematoxylin channel of the colour deconvolution, smoothed, thresholded at
the upper of two multi-Otsu thresholds (the darkest of three classes: the DAB-stained membranes and cytoplasm take
the middle one), small components dropped and holes filled, and split into instances by a watershed on the distance
to the background from its distance peaks.
They measure agreement with that algorithm on one image, nothing more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..data.nuclei import NucleiImage, write_nuclei_image
from ..errors import UserError

HELD_OUT_ROWS = 128  # the bottom rows of the 512 x 512 image: the test region
SMOOTHING_SIGMA = 1.5  # px, Gaussian smoothing of the haematoxylin density before thresholding
MIN_NUCLEUS = 30  # px; smaller foreground components are dropped
PEAK_DISTANCE = 6  # px between two nuclei centres (distance-transform peaks) at least


def _skimage():
    try:
        import skimage
    except ImportError as err:
        raise UserError("the IHC demonstration needs scikit-image: `pip install scikit-image` (or the [pathology] "
                        "extra)") from err
    return skimage


def ihc_image() -> np.ndarray:
    """The bundled IHC image, (512, 512, 3) uint8."""
    return _skimage().data.immunohistochemistry()


def hematoxylin_nuclei(image: np.ndarray) -> np.ndarray:
    """Nuclei pseudo-labels of an RGB image, an instance map (H, W) int32 (see the module's docstring)."""
    _skimage()
    from scipy import ndimage
    from skimage.color import rgb2hed
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_multiotsu
    from skimage.segmentation import watershed

    density = gaussian(rgb2hed(image)[..., 0], sigma=SMOOTHING_SIGMA)
    components, _ = ndimage.label(density > threshold_multiotsu(density, classes=3)[1])
    large = np.bincount(components.ravel()) >= MIN_NUCLEUS
    large[0] = False
    mask = ndimage.binary_fill_holes(large[components])
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=PEAK_DISTANCE, labels=ndimage.label(mask)[0], exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask).astype(np.int32)


def prepare_ihc(out: str | Path) -> dict[str, Path]:
    """Write the demonstration's data under `out`: slides/ihc_train.png (the training region, for pretraining with
    data.name=slides), nuclei/train and nuclei/test (each region and its pseudo-labels, for mochi-nuclei). The
    pseudo-labels are computed on the whole image, then cut, so that nuclei on the cut are labelled alike."""
    folder = Path(out)
    image = ihc_image()
    instances = hematoxylin_nuclei(image)
    cut = image.shape[0] - HELD_OUT_ROWS
    (folder / "slides").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[:cut]).save(folder / "slides" / "ihc_train.png")
    write_nuclei_image(folder / "nuclei" / "train", NucleiImage("ihc_train", image[:cut], instances[:cut]))
    write_nuclei_image(folder / "nuclei" / "test", NucleiImage("ihc_test", image[cut:], instances[cut:]))
    return {"slides": folder / "slides", "train": folder / "nuclei" / "train", "test": folder / "nuclei" / "test"}
