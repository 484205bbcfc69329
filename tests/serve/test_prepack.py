"""Weights packed for MKL's small-batch product (`tunelab.serve.prepack`): the same products
as `F.linear` to float32 rounding, each row's result independent of the rows beside it (the
padding included), taken from the pack only for the row counts it serves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunelab.serve import prepack, products

pytestmark = pytest.mark.skipif(
    not prepack.available(), reason="this torch has no MKL packed product (x86 CPU wheels do)"
)


def test_packed_products_equal_f_linear_for_every_row_count_shape_and_bias():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 40, generator=generator)
    bias = torch.randn(48, generator=generator)
    packed = prepack.pack(weight)
    for rows in range(prepack.FEW, prepack.ROWS + 1):
        for shape in ((rows, 40), (rows, 1, 40), (1, rows, 40)):
            x = torch.randn(*shape, generator=generator)
            for b in (None, bias):
                got, want = prepack.linear(x, weight, b, packed), F.linear(x, weight, b)
                assert got.shape == want.shape and got.is_contiguous()
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_rows_product_does_not_depend_on_the_other_rows():
    """Bit for bit: a row alone (padded), among other rows, or at another place."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 32, generator=generator)
    packed = prepack.pack(weight)
    rows = torch.randn(prepack.ROWS, 32, generator=generator)
    together = prepack.linear(rows, weight, None, packed)
    for index in range(prepack.ROWS):
        others = torch.randn(prepack.FEW - 1, 32, generator=generator)
        with_others = prepack.linear(torch.cat([others, rows[index : index + 1]]), weight, None,
                                     packed)  # fmt: skip
        assert torch.equal(with_others[-1], together[index])


def test_the_pack_serves_only_the_row_counts_it_is_faster_for(monkeypatch):
    """A `packed` product takes 4 to 8 rows from the pack, fewer or more from F.linear; a
    weight that cannot be packed (not float32) has no pack."""
    weight = torch.randn(16, 8)
    packed, taken = prepack.pack(weight), []
    real = prepack.linear
    monkeypatch.setattr(prepack, "linear", lambda *a: taken.append(a[0].shape[0]) or real(*a))
    for rows in range(1, 13):
        x = torch.randn(rows, 8)
        got = products.product(x, weight, None, packed, "packed")
        torch.testing.assert_close(got, F.linear(x, weight))
    assert taken == list(range(prepack.FEW, prepack.ROWS + 1))
    assert prepack.pack(weight.to(torch.bfloat16)) is None
