"""Run properimage's ZOGY on one reference/new pair of FITS files (benchmark helper; runs in .bench-venv).

Called by ``peer_properimage.py``, one pair per process, with the benchmark
virtual environment that has properimage installed (never the runtime .venv)::

    .bench-venv/bin/python benchmarks/properimage_worker.py REF.fits NEW.fits OUT.fits [gauss|kl]

Inputs: primary HDU = calibrated image (e-, sky included), extension ``MASK`` =
non-zero for bad pixels (the pipeline's mask plane). The call is
``properimage.operations.subtract(ref, new, align=True)`` with its defaults
otherwise (Gaussian-fitted PSFs, flux ratio ``beta`` and sub-pixel shift fitted),
on ``SingleImageGaussPSF`` objects built from the arrays and masks; with ``kl``
as fourth argument, its Karhunen-Loeve PSF instead (``SingleImage``,
``fitted_psf=False``). properimage
aligns NEW onto the REFERENCE grid (astroalign), so the outputs are on the
reference grid. Writes D (real part), S_corr and the union mask to OUT.fits and
prints one JSON line with the wall time of the subtraction (image objects,
alignment, PSFs, fits and transforms; file I/O and imports excluded).
"""

import json
import logging
import sys
import time
import warnings

import numpy as np
from astropy.io import fits


def main(ref_path: str, new_path: str, out_path: str, psf: str = "gauss") -> None:
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    from properimage.operations import subtract
    from properimage.single_image import SingleImage, SingleImageGaussPSF

    image_class = SingleImageGaussPSF if psf == "gauss" else SingleImage

    def load(path):
        with fits.open(path, memmap=False) as hdul:
            return hdul[0].data.astype(np.float32), hdul["MASK"].data != 0

    ref_data, ref_mask = load(ref_path)
    new_data, new_mask = load(new_path)
    start = time.perf_counter()
    ref = image_class(ref_data, mask=ref_mask)
    new = image_class(new_data, mask=new_mask)
    D, P, S_corr, mix_mask = subtract(ref=ref, new=new, align=True, fitted_psf=psf == "gauss")
    seconds = time.perf_counter() - start
    for image in (ref, new):
        try:
            image._clean()
        except Exception:  # its temporary stamp database; nothing to do if already gone
            pass
    mask = np.ma.getmaskarray(mix_mask) if np.ma.isMaskedArray(mix_mask) else np.asarray(mix_mask, bool)
    hdus = fits.HDUList([
        fits.PrimaryHDU(np.asarray(S_corr, dtype=np.float32)),
        fits.ImageHDU(np.asarray(np.real(D), dtype=np.float32), name="D"),
        fits.ImageHDU(mask.astype(np.uint8), name="MASK"),
    ])
    hdus.writeto(out_path, overwrite=True)
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
