"""The science modules' Examples run and show what they return (doctest), and their ``__all__``.

Every module of :mod:`dagster_project.science` is run through :func:`doctest.testmod`
(ELLIPSIS, NORMALIZE_WHITESPACE): no example may fail, and the main entry points below
must each carry at least one example. Examples are small (tiny arrays): each docstring's
examples must run in well under a few seconds, even on a loaded machine.
"""

import doctest
import importlib
import inspect
import pkgutil
import time

import pytest

from dagster_project import science

MODULES = sorted(info.name for info in pkgutil.iter_modules(science.__path__))

#: Functions whose docstring must hold at least one example, per module.
ENTRY_POINTS = {
    "astrometry": ["solve_wcs", "nominal_wcs_header"],
    "background": ["estimate_background"],
    "calibration": ["calibrate_science_frame", "make_master_bias"],
    "depth": ["measure_depth"],
    "detection": ["detect_transients"],
    "difference": ["difference_images", "difference_with_added_flux"],
    "forced_photometry": ["forced_photometry"],
    "injection": ["draw_fakes", "inject_point_sources", "completeness_fit"],
    "photometric_scaling": ["flux_ratio"],
    "psf": ["estimate_psf", "characterize_image"],
    "psf_models": ["moffat_stamps", "moffat_stamp", "pixel_integrated_moffat", "render_point_sources"],
    "reference_selection": ["choose_coadd_frames", "depth_gain_mag"],
    "realbogus": ["feature_matrix", "train_classifier", "evaluate"],
    "realbogus_cnn": ["train_cnn", "score_cnn"],
    "registration": ["register_images"],
    "scene": ["reference_light", "classify_scene"],
    "zogy": ["zogy"],
    "zogy_tiles": ["zogy_tiled"],
}

#: Seconds one docstring's examples may take (they take < 1 s; the margin is for a busy machine).
MAX_SECONDS = 5.0

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module(name: str):
    return importlib.import_module(f"{science.__name__}.{name}")


@pytest.mark.parametrize("name", MODULES)
def test_examples_pass(name):
    module = _module(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    slow = []
    for test in doctest.DocTestFinder().find(module):
        start = time.perf_counter()
        runner.run(test)
        seconds = time.perf_counter() - start
        if seconds > MAX_SECONDS:
            slow.append(f"{test.name}: {seconds:.1f} s")
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples of {module.__name__} fail"
    assert not slow, f"examples too slow: {slow}"


@pytest.mark.parametrize("name, functions", sorted(ENTRY_POINTS.items()))
def test_entry_points_have_examples(name, functions):
    module = _module(name)
    tests = {test.name: test for test in doctest.DocTestFinder().find(module)}
    for function in functions:
        test = tests.get(f"{module.__name__}.{function}")
        assert test is not None and len(test.examples) >= 1, f"{module.__name__}.{function} has no Examples"
        assert "Examples\n" in inspect.getdoc(getattr(module, function)), f"{function}: no Examples section"


def test_testmod_over_every_module():
    # the plain call the house rule names: doctest.testmod of each module, nothing failing
    attempted = 0
    for name in MODULES:
        results = doctest.testmod(_module(name), optionflags=FLAGS, report=False)
        assert results.failed == 0, name
        attempted += results.attempted
    assert attempted >= 30


def test_package_all_lists_every_module():
    assert sorted(science.__all__) == MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_all_lists_its_public_names(name):
    module = _module(name)
    assert hasattr(module, "__all__"), f"{module.__name__} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{module.__name__}.__all__ names what it does not define: {missing}"
    defined = [
        n for n, obj in vars(module).items()
        if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    ]
    unlisted = sorted(set(defined) - set(module.__all__))
    assert not unlisted, f"public names of {module.__name__} missing from __all__: {unlisted}"
