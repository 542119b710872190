"""Every figure renders (PDF + PNG) from fabricated run folders, also with partial data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runfolders import make_grid, make_run

from hypersparse.analysis import FIGURES, NothingToPlotError, plot_figure, style
from hypersparse.analysis.figs_sparsity import conv3x3_stages, kernel_stats


@pytest.fixture(scope="module")
def grid_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dense + three ART regularizers + OMP + a user method, two kappas, two seeds."""
    root = tmp_path_factory.mktemp("figs") / "runs"
    make_grid(
        root,
        methods=("art_hs", "art_l1", "art_l2", "omp", "my_method"),
        kappas=(0.9, 0.98),
        seeds=(0, 1),
    )
    make_run(root, method="snip", kappa=0.9, seed=0, status="failed")  # failed: left out
    return root


def _check_outputs(paths: list[Path], out_base: Path) -> None:
    assert sorted(p.suffix for p in paths) == [".pdf", ".png"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000 and p.name.startswith(out_base.name)
    assert paths[0].read_bytes()[:5] == b"%PDF-"
    with Image.open([p for p in paths if p.suffix == ".png"][0]) as im:
        w, h = im.size
    assert 300 < w < 4000 and 200 < h < 6000


# kernel_patterns draws 10 axes per method: three methods keep the test fast.
_OPTS = {"kernel_patterns": {"methods": "art_hs,omp,my_method"}}


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_figure_renders(name: str, grid_root: Path, tmp_path: Path) -> None:
    out = tmp_path / name
    _check_outputs(plot_figure(name, grid_root, out, **_OPTS.get(name, {})), out)


@pytest.mark.parametrize("name", ["exploration", "art_termination", "magnitudes", "hs_gradient"])
def test_art_figures_with_only_hyperspare_run(name: str, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, method="art_hs", kappa=0.9, seed=3, final_test_acc=90.0)
    out = tmp_path / name
    _check_outputs(plot_figure(name, root, out), out)  # L1 / L2 panels say "not run"


def test_partial_data_dense_only_and_single_method(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, method="dense", kappa=0.0, final_test_acc=94.0)
    _check_outputs(plot_figure("acc_vs_sparsity", root, tmp_path / "a"), tmp_path / "a")
    make_run(root, method="omp", kappa=0.9, seed=1, final_test_acc=90.0, sparsity_miss=2)
    for name in ("acc_vs_sparsity", "layer_density", "kernel_patterns"):
        _check_outputs(plot_figure(name, root, tmp_path / name), tmp_path / name)


def test_clear_errors_when_nothing_to_plot(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, method="omp", kappa=0.9, final_test_acc=90.0)
    with pytest.raises(NothingToPlotError, match="art_hs.*art_trace.npz"):
        plot_figure("hs_gradient", root, tmp_path / "x")
    with pytest.raises(NothingToPlotError, match="art_hs or art_l1 or art_l2"):
        plot_figure("exploration", root, tmp_path / "x")
    with pytest.raises(NothingToPlotError, match="sparse runs"):
        plot_figure("layer_density", root, tmp_path / "x", kappa=0.5)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NothingToPlotError, match="no finished runs"):
        plot_figure("acc_vs_sparsity", empty, tmp_path / "x")
    with pytest.raises(KeyError, match="acc_vs_sparsity"):
        plot_figure("no_such_figure", root, tmp_path / "x")
    assert not list(tmp_path.glob("x.*"))


def test_ambiguous_pair_needs_dataset_and_model(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, dataset="a", method="omp", kappa=0.9)
    make_run(root, dataset="b", method="omp", kappa=0.9)
    with pytest.raises(ValueError, match="pass dataset= and model="):
        plot_figure("acc_vs_sparsity", root, tmp_path / "x")
    _check_outputs(
        plot_figure("acc_vs_sparsity", root, tmp_path / "y", dataset="b", model="resnet8"),
        tmp_path / "y",
    )


def test_style_colours_fixed_and_deterministic() -> None:
    known = [style.method_color(m) for m in style.METHOD_ORDER]
    assert len(set(known)) == len(known)  # every known method has its own colour
    assert style.method_color("art_hs") == "#d62728"
    c = style.method_color("my_new_method")
    assert c == style.method_color("my_new_method") and c.startswith("#") and len(c) == 7
    assert style.sort_methods(["zz", "omp", "dense", "aa"]) == ["dense", "omp", "aa", "zz"]
    assert style.kappa_percent(0.995) == "99.5%" and style.kappa_percent(0.9) == "90%"


def test_kernel_stats_and_stages() -> None:
    k = np.zeros((2, 1, 3, 3))
    k[0, 0, 1, 1] = 1.0  # centre survives in one kernel of two
    k[1, 0] = 1.0  # all nine survive in the other
    freq, hist = kernel_stats([k])
    assert freq[1, 1] == 1.0 and freq[0, 0] == 0.5
    assert hist.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    w = np.ones((4, 4, 3, 3))
    res = conv3x3_stages(
        [
            ("conv1.weight", w),
            ("layer1.0.conv1.weight", w),
            ("layer2.0.shortcut.0.weight", np.ones((8, 4, 1, 1))),
            ("layer2.0.conv1.weight", w),
            ("fc.weight", np.ones((10, 4))),
        ]
    )
    assert list(res) == ["stem", "layer1", "layer2"] and len(res["layer2"]) == 1
    vgg = conv3x3_stages(
        [
            ("features.0.weight", np.ones((8, 3, 3, 3))),
            ("features.3.weight", np.ones((8, 8, 3, 3))),
            ("features.7.weight", np.ones((16, 8, 3, 3))),
        ]
    )
    assert list(vgg) == ["8 ch", "16 ch"] and len(vgg["8 ch"]) == 2


def _drawn(monkeypatch: pytest.MonkeyPatch, name: str, root: Path, out: Path, **opts):
    """The matplotlib figure ``name`` draws (captured before it is saved and closed)."""
    import matplotlib.pyplot as plt

    seen = []
    real = style.save_figure

    def keep(fig, base):
        seen.append(fig)
        fig.canvas.draw()
        return real(fig, base)

    monkeypatch.setattr(style, "save_figure", keep)
    _check_outputs(plot_figure(name, root, out, **opts), out)
    assert len(seen) == 1
    plt.close("all")
    return seen[0]


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_acc_vs_sparsity_marks_missed_targets_and_places_emergent_runs(monkeypatch, tmp_path):
    import json

    root = tmp_path / "runs"
    make_run(root, method="dense", kappa=0.0, final_test_acc=94.0)
    make_run(root, method="omp", kappa=0.9, final_test_acc=90.0, sparsity_miss=2)
    make_run(root, method="art_hs", kappa=0.9, final_test_acc=91.0)
    x = make_run(root, method="xrda", kappa=0.9, final_test_acc=88.0)
    m = json.loads((x / "metrics.json").read_text())
    m.update(target_zeros=None, sparsity_ok=None)  # xRDA: sparsity emerges, no target
    (x / "metrics.json").write_text(json.dumps(m))
    fig = _drawn(monkeypatch, "acc_vs_sparsity", root, tmp_path / "a")
    labels = _legend_texts(fig)
    assert "missed target sparsity (†)" in labels
    assert any(lab.endswith("(emergent sparsity)") for lab in labels)
    ax = fig.axes[0]
    # the two methods at kappa 0.9 are dodged apart, both near x = 0.1
    xs = sorted(float(line.get_xdata()[0]) for line in ax.lines
                if len(line.get_xdata()) == 1 and line.get_marker() not in ("None", "o"))
    assert len(xs) >= 2 and xs[0] < xs[-1] and all(0.09 < v < 0.11 for v in xs)


def test_acc_vs_flops_puts_dense_at_one_and_pruning_after_dense_above(monkeypatch, tmp_path):
    root = tmp_path / "runs"
    make_run(root, method="dense", kappa=0.0, final_test_acc=94.0)
    make_run(root, method="omp", kappa=0.9, final_test_acc=90.0)
    make_run(root, method="snip", kappa=0.9, final_test_acc=85.0, with_flops=False)
    fig = _drawn(monkeypatch, "acc_vs_flops", root, tmp_path / "f")
    ax = fig.axes[0]
    labels = _legend_texts(fig)
    assert style.method_label("omp") in labels
    assert style.method_label("snip") not in labels  # a run without FLOPs counts is not drawn
    xs = {float(line.get_xdata()[0]) for line in ax.lines if len(line.get_xdata())}
    assert 1.0 in xs and any(v > 1.0 for v in xs)
    assert "FLOPs" in ax.get_xlabel()
    with pytest.raises(NothingToPlotError, match="FLOPs"):
        empty = tmp_path / "old"
        make_run(empty, method="omp", kappa=0.9, with_flops=False)
        plot_figure("acc_vs_flops", empty, tmp_path / "g")


@pytest.mark.parametrize("with_top", [True, False])
def test_magnitudes_zoom_row_shows_the_kept_weights(monkeypatch, tmp_path, with_top):
    root = tmp_path / "runs"
    make_run(root, method="art_hs", kappa=0.9, with_top=with_top)
    fig = _drawn(monkeypatch, "magnitudes", root, tmp_path / "m", methods="art_hs")
    top_ax, low_ax = fig.axes[0], fig.axes[1]
    assert top_ax.get_yscale() == "log" and low_ax.get_yscale() == "linear"
    assert low_ax.get_xlim() == pytest.approx((0.9, 1.0))
    assert len(low_ax.lines) == 3  # before ART, selected epoch, after fine-tuning
    for line in low_ax.lines:
        x = np.asarray(line.get_xdata(), float)
        assert x.min() >= 0.9 - 1e-12 and len(x) >= (64 if with_top else 20)


def test_window_mean_is_drawn_at_the_windows_middle_epoch():
    from hypersparse.analysis.figs_art import window_centres

    e = np.arange(5, 10)
    assert window_centres(e, 1).tolist() == [5, 6, 6, 7, 8]
    assert window_centres(e, 0).tolist() == e.tolist()
    assert window_centres(e, 2).tolist() == [5, 6, 7, 7, 7]
