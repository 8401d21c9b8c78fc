"""The qualitative figures on a tiny digits checkpoint (T=10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sampling_helpers import tiny_checkpoint

from ddpm.commands import figures
from ddpm.core.data import model_to_uint8 as to_uint8
from ddpm.services.generate import generate, seeds_for
from ddpm.services.loading import load_model, model_datamodule


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    ckpt = tiny_checkpoint(tmp_path_factory)
    return ckpt, load_model(ckpt, None, True)


def _figure(*overrides: str):
    """``python -m ddpm.figures OVERRIDES`` in this process."""
    from ddpm.core.config import compose

    return figures.make_figure(compose("figures", list(overrides)))


def _size(n_rows, n_cols, px=8, up=8, pad=2):
    return (n_cols * (px * up + pad) + pad, n_rows * (px * up + pad) + pad)  # PIL (width, height)


def test_progressive(model, tmp_path):
    ckpt, m = model
    x = figures.progressive(m.model_fn(), m.diffusion, m.image_shape, num_images=3, frames=5, seed=4)
    assert x.shape == (3, 5, 1, 8, 8) and x.dtype == torch.uint8
    final = to_uint8(generate(m.model_fn(), m.diffusion, seeds_for(4, 0, 3), m.image_shape))
    torch.testing.assert_close(x[:, -1], final)  # the last column is the final sample
    png = figures.grid_png(x.flatten(0, 1), tmp_path / "p.png", x.shape[1], None)
    assert Image.open(png).size == _size(3, 5)


def test_interpolation_endpoints_and_size(model, tmp_path):
    ckpt, m = model
    dm = model_datamodule(m, None, "test")
    test = dm.splits()["test"]
    a, b = (test[i].float() / 127.5 - 1 for i in (0, 1))
    # t small (paper t=100 -> code index 0 at T=10): lambda = 0 / 1 reconstruct the inputs closely
    row = figures.interpolation(m.model_fn(), m.diffusion, a, b, t_paper=100, lambdas=5)
    assert row.shape == (7, 1, 8, 8)
    err = lambda u, v: (u.float() - v.float()).abs().mean().item()  # noqa: E731
    assert err(row[1], test[0]) < 25 and err(row[5], test[1]) < 25
    assert err(test[0], test[1]) > 2 * max(err(row[1], test[0]), err(row[5], test[1]))
    # t = 0: pixel-space mixing, exact at the endpoints
    row0 = figures.interpolation(m.model_fn(), m.diffusion, a, b, t_paper=0, lambdas=3)
    torch.testing.assert_close(row0[1], test[0])
    torch.testing.assert_close(row0[3], test[1])
    png = figures.grid_png(torch.cat([row, row]), tmp_path / "i.png", row.shape[0], None)
    assert Image.open(png).size == _size(2, 7)


def _shared_xt_recording(m, **kw):
    """``figures.shared_xt`` with a network that records every call's input: the figure and the calls."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    fn = m.model_fn()

    def recording(x, t):
        calls.append((x.clone(), t.clone()))
        return fn(x, t)

    return figures.shared_xt(recording, m.diffusion, m.image_shape, **kw), calls


def check_shared_xt(x: torch.Tensor, calls, T: int, codes: list[int], k: int) -> None:
    """Figure 7 by its definition, read off the network's inputs: the main chain is the one batch-1 pass from
    t = T-1 down (an ancestral step at code t takes x_t as input); row r's column 0 is that chain's x_t at the
    split (clamped, as uint8) and every one of its k continuations starts from exactly that x_t."""
    main = {int(t): xin for xin, t in calls if xin.shape[0] == 1}
    assert sorted(main) == list(range(T))  # one full chain
    passes: list[list[tuple[torch.Tensor, int]]] = []  # the batch-k passes, split where t stops decreasing
    for xin, t in ((xin, int(t[0])) for xin, t in calls if xin.shape[0] == k):
        if not passes or t >= passes[-1][-1][1]:
            passes.append([])
        passes[-1].append((xin, t))
    assert [[t for _, t in p] for p in passes] == [list(range(c, -1, -1)) for c in codes]  # each down to 0
    for r, c in enumerate(codes):
        torch.testing.assert_close(x[r, 0], to_uint8(main[c].clamp(-1, 1))[0], rtol=0, atol=0)
        first = passes[r][0][0]
        assert torch.equal(first, main[c].expand_as(first))  # all k start from the chain's x_t
        assert len({tuple(img.flatten().tolist()) for img in x[r, 1:]}) == k  # and then part ways


def test_shared_xt(model, tmp_path):
    ckpt, m = model
    x, calls = _shared_xt_recording(m, splits=(1000, 500), continuations=3)
    assert x.shape == (2, 4, 1, 8, 8)
    check_shared_xt(x, calls, 10, [9, 4], 3)  # paper t=1000, 500 at T=10: code indices 9 and 4
    png = figures.grid_png(x.flatten(0, 1), tmp_path / "s.png", x.shape[1], None)
    assert Image.open(png).size == _size(2, 4)


def test_shared_xt_check_catches_continuations_that_do_not_share_x_t(model, monkeypatch):
    """A broken figure whose continuations start from x_t plus a little fresh noise fails the check above."""
    ckpt, m = model
    chain = figures._chain

    def unshared(model_fn, diffusion, shape, sampler, *, noise, device, x_start_t=None, t_start=None):
        if x_start_t is not None and shape[0] > 1:
            x_start_t = x_start_t + 0.05 * torch.randn(x_start_t.shape, generator=torch.Generator().manual_seed(0))
        return chain(model_fn, diffusion, shape, sampler, noise=noise, device=device, x_start_t=x_start_t,
                     t_start=t_start)  # fmt: skip

    monkeypatch.setattr(figures, "_chain", unshared)
    x, calls = _shared_xt_recording(m, splits=(1000, 500), continuations=3)
    with pytest.raises(AssertionError):
        check_shared_xt(x, calls, 10, [9, 4], 3)


@pytest.mark.slow
def test_figure_commands(model, tmp_path):
    """python -m ddpm.figures {progressive,interpolation,shared_xt}: PNGs of the expected size, with a band of
    labels (t, lambda) above the columns and, where rows differ, left of the rows; by default in the run
    directory beside the checkpoint."""
    ckpt, _ = model

    def check(out, rows, cols, row_labels):
        img = np.asarray(Image.open(out).convert("L"))
        w, h = _size(rows, cols)
        assert img.shape[0] == h + 16 and (img.shape[1] > w if row_labels else img.shape[1] == w)
        assert (img[:14, img.shape[1] - w:] < 128).any()  # label text above the columns
        if row_labels:
            assert (img[16:, : img.shape[1] - w] < 128).any()  # and left of the rows

    out = _figure(f"ckpt_path={ckpt}", "figure.num_images=3", "figure.frames=5")
    assert out == ckpt.parent.parent / "figures" / "progressive.png"  # the run directory, not the cwd
    check(out, 3, 5, row_labels=False)
    out = _figure("figure=interpolation", f"ckpt_path={ckpt}", "figure.lambdas=5", "figure.sweep=true",
                  f"out={tmp_path}/i.png")
    check(out, 9, 7, row_labels=True)
    out = _figure("figure=shared_xt", f"ckpt_path={ckpt}", "figure.splits=[1000,750,500,250]",
                  "figure.continuations=4", f"out={tmp_path}/s.png")
    check(out, 4, 5, row_labels=True)


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_progressive_and_interpolation_with_dpm_solver_by_name(model, tmp_path):
    """sampler=dpm_solver steps=N: the progressive figure's last column is what sample.py's dpm_solver draws
    for the same seeds; its columns are x0-hat at the solver's own timesteps; shared_xt refuses it."""
    from ddpm.core.config import SamplerConfig

    ckpt, m = model
    x, ts = figures.progressive_chain(m.model_fn(), m.diffusion, m.image_shape, num_images=3, frames=4, seed=4,
                                      sampler={"name": "dpm_solver", "steps": 5})
    assert x.shape == (3, 4, 1, 8, 8)
    final = to_uint8(generate(m.model_fn(), m.diffusion, seeds_for(4, 0, 3), m.image_shape,
                              SamplerConfig(name="dpm_solver", steps=5)))
    torch.testing.assert_close(x[:, -1], final)
    ancestral = figures.progressive(m.model_fn(), m.diffusion, m.image_shape, num_images=3, frames=4, seed=4)
    assert not torch.equal(x[:, -1], ancestral[:, -1])
    # 5 evaluations from T-1 down to 0 (T=10); the paper's chain: every index
    assert len(ts) == 5 and ts[0] == 9 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    _, full = figures.progressive_chain(m.model_fn(), m.diffusion, m.image_shape, num_images=1)
    assert full == list(range(9, -1, -1))

    test = model_datamodule(m, None, "test").splits()["test"]
    a, b = (test[i].float() / 127.5 - 1 for i in (0, 1))
    rows = [figures.interpolation(m.model_fn(), m.diffusion, a, b, t_paper=500, lambdas=3, seed=s,
                                  sampler={"name": "dpm_solver", "steps": 3}) for s in (0, 0)]
    torch.testing.assert_close(rows[0], rows[1])  # deterministic decoding
    assert rows[0].shape == (5, 1, 8, 8)

    out = _figure(f"ckpt_path={ckpt}", "sampler=dpm_solver", "sampler.steps=5", "figure.frames=4",
                  f"out={tmp_path}/p.png")
    assert out.is_file()
    with pytest.raises(ValueError, match="sampler=dpm_solver is deterministic: the continuations"):
        _figure("figure=shared_xt", f"ckpt_path={ckpt}", "sampler=dpm_solver", "sampler.steps=5")


def test_the_figures_choose_from_the_sampler_registry(model):
    """Any registered sampler on the model's own chain; shared_xt refuses a deterministic one by the registry's
    flag; a respaced chain is refused naming the valid ones."""
    ckpt, m = model
    x, ts = figures.progressive_chain(m.model_fn(), m.diffusion, m.image_shape, num_images=2, frames=3,
                                      sampler={"name": "dpm_solver_sde", "steps": 4})
    assert x.shape == (2, 3, 1, 8, 8) and len(ts) == 4
    with pytest.raises(ValueError, match=r"sampler=ddim runs on a respaced chain.*valid \['ancestral', 'dpm_solver'"):
        figures.figure_sampler({"name": "ddim", "steps": 5}, "progressive")
    with pytest.raises(ValueError, match="sampler=dpm_solver is deterministic"):
        figures.figure_sampler({"name": "dpm_solver", "steps": 5}, "shared_xt")
    with pytest.raises(ValueError, match="sampler=dpm_solver_sde does not step through every t"):
        figures.figure_sampler({"name": "dpm_solver_sde", "steps": 5}, "shared_xt")
    with pytest.raises(ValueError, match="sampler=restart always starts at x_T; figure=interpolation"):
        figures.figure_sampler({"name": "restart", "steps": 5}, "interpolation")
    assert figures.figure_sampler(None, "shared_xt").name == "ancestral"


def test_progressive_frames_are_distinct_and_labelled_once_each():
    """Figure 6 with 10 frames on the 1000-step chain: nine distinct x0-hat columns from t=1000 down, then x_0
    (the first two columns were the same frame, both labelled t=889)."""
    ts = list(range(999, -1, -1))
    marks = figures.progressive_marks(1000, 10)
    labels = figures.progressive_labels(ts, marks, 1000)
    assert len(marks) == 9 and len(set(labels)) == len(labels) == 10
    assert labels[0] == "t=1000" and labels[-1] == "x_0"
    assert figures.progressive_marks(10, 20) == list(range(1, 10))  # no more frames than the chain has steps


def test_progressive_has_as_many_distinct_columns_as_frames(model):
    ckpt, m = model
    x = figures.progressive(m.model_fn(), m.diffusion, m.image_shape, num_images=2, frames=10, seed=1)
    assert x.shape[1] == 10
    assert all(not torch.equal(x[:, k], x[:, k + 1]) for k in range(9))


def test_a_time_outside_the_papers_scale_is_a_clean_error(model):
    ckpt, m = model
    a = torch.zeros(m.image_shape)
    with pytest.raises(ValueError, match=r"t=5000 is out of range: .*0\.\.1000"):
        figures.interpolation(m.model_fn(), m.diffusion, a, a, t_paper=5000, lambdas=3)
    with pytest.raises(ValueError, match=r"splits=-5 is out of range"):
        figures.shared_xt(m.model_fn(), m.diffusion, m.image_shape, splits=(1000, -5), continuations=2)


def test_labelled_grid_warns_nothing_and_draws_each_label_over_its_own_cell(tmp_path):
    """Labels go in a white band above each column and left of each row; the cells are the images, unchanged;
    and no warning (torch's "non-writable NumPy array" UserWarning was printed by every figure)."""
    import warnings

    images = torch.full((8, 1, 8, 8), 255, dtype=torch.uint8)  # white cells: any dark pixel in a band is text
    images[5] = 0  # one black cell: row 1, column 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = figures.grid_png(images, tmp_path / "g.png", 4, 8, col_labels=["a", "", "c", ""], row_labels=["r", ""])
    img = np.asarray(Image.open(png).convert("L")).astype(int)
    w, h = _size(2, 4)
    left = img.shape[1] - w
    assert img.shape[0] == h + 16 and left > 0
    cells = img[16:, left:]
    assert (cells[2 + 66 : 2 + 66 + 64, 2 + 66 : 2 + 66 + 64] == 0).all()  # the black cell, in place, unlabelled
    assert (cells[2:66, 2:66] == 255).all()
    col_text = [(img[:14, left + 2 + j * 66 : left + 2 + j * 66 + 64] < 128).any() for j in range(4)]
    row_text = [(img[16 + 2 + i * 66 : 16 + 2 + i * 66 + 64, :left] < 128).any() for i in range(2)]
    assert col_text == [True, False, True, False] and row_text == [True, False]
    # the warning filter above does turn that warning into a failure
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    with warnings.catch_warnings(), pytest.raises(UserWarning, match="not writable"):
        warnings.simplefilter("error")
        torch.from_numpy(frozen)


@pytest.mark.parametrize("override, start, needle", [
    # figure.t=5000 ended in an IndexError
    ("figure.t=5000", "Error: figure.t=5000", "0..1000"),
    # figure.pair beyond the digits' 181 test images too (the split's size is known only from the data)
    ("figure.pair=[0,5000]", "Error: figure.pair=[0, 5000] is not valid for the test split of ",
     "expected two indices in 0.."),
])
def test_interpolation_command_with_a_bad_value_is_one_clean_error(model, tmp_path, capsys, monkeypatch, override,
                                                                   start, needle):
    """python -m ddpm.figures figure=interpolation ckpt_path=RUN with a t or an image index out of range."""
    from ddpm.core.cli import user_errors

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    ckpt, _ = model
    with pytest.raises(SystemExit) as info, user_errors():
        _figure("figure=interpolation", f"ckpt_path={ckpt}", override, f"out={tmp_path}/i.png")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(start) and needle in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("Error:")]) == 1 and not (tmp_path / "i.png").exists()
