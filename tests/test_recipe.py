"""The NumPy recipe on bad input: missing samples in recordings, and arguments that cannot be right."""

import numpy as np
import pytest

from data_prep.synthetic import generate_records
from stmem_jax import api
from stmem_jax.core.leads import LEAD_NAMES
from stmem_jax.core.recipe import AUTHORS, Recipe, band_filter, make_windows, resample
from stmem_jax.core.signal import RecordError, Signal


def thirty_seconds(offset_mv=1.0):
    signals, _ = generate_records(3, seed=1)
    return np.concatenate(list(signals), axis=1).astype(np.float64) + offset_mv  # (12, 15000) at 500 Hz


def test_a_nan_or_inf_in_an_api_input_is_an_error_naming_the_example_and_lead():
    ecgs = np.stack([thirty_seconds()[:, :5000]] * 2)
    ecgs[1, 7, 1000] = np.nan
    with pytest.raises(ValueError, match=r"ECG 1, lead V2: 1 NaN or infinite sample\(s\), the first at 2.000 s"):
        api.model_inputs(ecgs, fs=500, leads="12")
    ecgs[1, 7, 1000] = np.inf
    with pytest.raises(ValueError, match="ECG 1, lead row 7"):
        api.model_inputs(ecgs, fs=500)


def test_short_gaps_are_interpolated_when_the_recipe_allows_them_in_the_api_and_in_prepare():
    x = thirty_seconds()[:, :5000]
    gap = x.copy()
    gap[3, 2000:2020] = np.nan  # 40 ms
    recipe = Recipe(max_gap_s=0.05)
    inputs = api.model_inputs(gap, fs=500, recipe=recipe)
    assert np.isfinite(inputs).all()
    assert np.abs(inputs - api.model_inputs(x, fs=500, recipe=recipe)).max() < 0.2  # z-scored: a line over 40 ms
    with pytest.raises(ValueError, match="lead row 3"):
        api.model_inputs(gap, fs=500, recipe=Recipe(max_gap_s=0.02))
    windows, dropped = make_windows(Signal(gap, 500, list(LEAD_NAMES)), LEAD_NAMES, recipe)
    assert dropped == 0 and len(windows) == 1
    assert np.abs(windows[0][1] - resample_filter(x, 500)[:, :2500]).max() < 0.1
    assert make_windows(Signal(gap, 500, list(LEAD_NAMES)), LEAD_NAMES, Recipe()) == ([], 1)


def resample_filter(x, fs):
    return band_filter(resample(x, fs, 250), Recipe())


def test_a_long_gap_does_not_ring_into_the_windows_beside_it():
    """A gap from 8 to 9.9 s on a 1 mV baseline: the window after it stays within 0.1 mV of the
    same recording without the gap (a zero fill left 0.40 mV in its first 0.5 s)."""
    x = thirty_seconds(offset_mv=1.0)
    clean = resample_filter(x, 500)
    gap = x.copy()
    gap[:, 4000:4950] = np.inf
    windows, dropped = make_windows(Signal(gap, 500, list(LEAD_NAMES)), LEAD_NAMES, Recipe())
    assert [w for w, _ in windows] == [1, 2] and dropped == 1
    assert np.abs(windows[0][1] - clean[:, 2500:5000]).max() < 0.1
    np.testing.assert_allclose(windows[1][1], clean[:, 5000:7500], atol=0.02)


@pytest.mark.parametrize("fs", [0, -250, float("nan"), float("inf")])
def test_a_sampling_rate_that_is_not_a_positive_number_is_an_error(fs):
    with pytest.raises(ValueError, match="sampling rate must be a positive number"):
        api.model_inputs(thirty_seconds()[:, :5000], fs=fs)


def test_a_transposed_array_and_zero_crops_are_errors():
    x = thirty_seconds()[:, :5000]
    with pytest.raises(ValueError, match=r"12 samples \(transposed\?\)|transposed"):
        api.model_inputs(x.T, fs=500)
    with pytest.raises(ValueError, match="crops must be at least 1, got 0"):
        api.model_inputs(x, fs=500, crops=0)
    with pytest.raises(ValueError, match="max_gap_s must be 0 or more"):
        Recipe(max_gap_s=-1)


def test_the_authors_windows_are_each_native_window_fft_resampled_unfiltered_and_flat_leads_kept():
    """Spec ``recipe.md`` section 1: 10 s windows cut at the native rate, each resampled on its own by
    ``scipy.signal.resample`` to floor(n x 250 / fs) samples (to 1e-5 mV), no filter at preparation,
    a window holding NaN skipped, a record with a flat lead kept (stmem-jax's recipe drops it)."""
    from scipy import signal as sps

    x = thirty_seconds()
    x[5] = 0.3  # a flat lead
    x[2, 7000] = np.nan  # in the second window
    windows, dropped = make_windows(Signal(x, 500, list(LEAD_NAMES)), LEAD_NAMES, AUTHORS)
    assert [w for w, _ in windows] == [0, 2] and dropped == 1
    for w, window in windows:
        expected = sps.resample(x[:, w * 5000:(w + 1) * 5000], 2500, axis=-1)
        assert window.shape == (12, 2500) and np.abs(window - expected).max() <= 1e-5
    np.testing.assert_allclose(resample(x[:, :5000], 500, 250, "fft"), sps.resample(x[:, :5000], 2500, axis=-1))
    with pytest.raises(RecordError, match="lead aVF is flat"):
        make_windows(Signal(x, 500, list(LEAD_NAMES)), LEAD_NAMES, Recipe())


def test_crops_filtered_one_by_one_differ_from_crops_of_a_filtered_window_at_their_edges():
    """The authors' per-crop filter leaves edge transients that filtering the record does not: the
    evaluation crops of the two recipes differ, most in each crop's first and last half second."""
    x = thirty_seconds()[:, :5000]
    authors = api.model_inputs(x, fs=500)
    ours = api.model_inputs(x, fs=500, recipe=Recipe())
    difference = np.abs(authors - ours)
    assert difference.max() > 0.1
    edges = np.concatenate([difference[..., :125], difference[..., -125:]], axis=-1)
    assert edges.mean() > 3 * difference[..., 125:-125].mean()
