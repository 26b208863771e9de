"""RowFile: the positioned-write .npy matrix that streaming collection fills."""

from __future__ import annotations

import numpy as np
import pytest

from tl_funcnet.activations.store import RowFile
from tl_funcnet.errors import FormatError


def test_row_file_blocks_in_any_order_load_back_as_npy(tmp_path):
    rng = np.random.default_rng(0)
    full = rng.standard_normal((10, 3)).astype(np.float16)
    f = RowFile(tmp_path / "a.npy", 10, 3, np.float16, create=True)
    for start, stop in [(6, 10), (0, 2), (2, 6)]:
        f.write(start, full[start:stop])
    f.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), full)


def test_row_file_reopens_for_resume_and_checks_its_header(tmp_path):
    full = np.arange(12, dtype=np.float32).reshape(4, 3)
    first = RowFile(tmp_path / "a.npy", 4, 3, np.float32, create=True)
    first.write(0, full[:2])
    first.close()
    again = RowFile(tmp_path / "a.npy", 4, 3, np.float32, create=False)
    again.write(2, full[2:])
    again.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), full)
    with pytest.raises(FormatError, match=r"expected float32 \(5, 3\)"):
        RowFile(tmp_path / "a.npy", 5, 3, np.float32, create=False)
    with pytest.raises(FormatError, match="expected float16"):
        RowFile(tmp_path / "a.npy", 4, 3, np.float16, create=False)
