"""tools/derive_load_shapes.py: the committed shapes are exactly what the real data gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tools.derive_load_shapes import DEFAULT_OUTPUT, OBSERVATION, SHA256, TARGET, WEATHER, DerivationError, main, render

from gridhub.edge.apps import load_shapes


def test_load_shapes_module_is_what_the_reference_data_derives(reference_dir: Path) -> None:
    text = render(reference_dir)
    assert text == DEFAULT_OUTPUT.read_text(encoding="utf-8"), "re-run tools/derive_load_shapes.py"
    for name in (OBSERVATION, TARGET, WEATHER):
        assert name in text and SHA256[name] in text  # the header names each source and its sha256
    assert "Western Power Distribution" in text and "NASA MERRA-2" in text
    assert main(["--reference", str(reference_dir), "--check"]) == 0


def test_derived_tables_have_their_documented_shape_and_meaning() -> None:
    shape = load_shapes.LOAD_SHAPE
    assert (len(shape), len(shape[0]), len(shape[0][0])) == (12, 2, 48)
    assert max(v for month in shape for day in month for v in day) == 1.0
    winter = sum(shape[0][0]) / 48
    summer = sum(shape[6][0]) / 48
    assert winter > summer  # Cornwall: more demand in winter
    assert len(load_shapes.MINUTE_SIGMA) == 48 and all(0 < s < 0.2 for s in load_shapes.MINUTE_SIGMA)
    assert list(load_shapes.SPIKE_UP) == sorted(load_shapes.SPIKE_UP)
    assert len(load_shapes.SPIKE_UP) == len(load_shapes.SPIKE_DOWN) == len(load_shapes.SPIKE_QUANTILES)
    assert max(load_shapes.AMBIENT[6]) > max(load_shapes.AMBIENT[0])  # July warmer than January
    assert max(load_shapes.IRRADIANCE[5]) > max(load_shapes.IRRADIANCE[11])
    assert 0 < load_shapes.AMBIENT_DAY_PHI < 1 and 0 < load_shapes.LOAD_DAY_PHI < 1


def test_a_changed_input_file_is_refused_naming_it(reference_dir: Path, tmp_path: Path) -> None:
    for name in (OBSERVATION, TARGET, WEATHER):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(reference_dir / name, tmp_path / name)
    with (tmp_path / WEATHER).open("a", encoding="utf-8") as handle:
        handle.write("2021-10-01 00:00:00,15.0,0.0,1.0,1.0,101000.0,0.01\n")
    with pytest.raises(DerivationError, match=r"df_mousehole_1_hourly\.csv: sha256 .* differs"):
        render(tmp_path)
    (tmp_path / TARGET).unlink()
    with pytest.raises(DerivationError, match="input file not found"):
        render(tmp_path)
    output = tmp_path / "out.py"
    assert main(["--reference", str(tmp_path), "--output", str(output)]) == 2
    assert not output.exists()  # nothing written after an error
