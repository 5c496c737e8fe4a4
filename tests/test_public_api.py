"""Every name in ``attnviz.__all__`` resolves (lazy re-exports included)."""

import attnviz


def test_all_public_names_resolve():
    for name in attnviz.__all__:
        assert getattr(attnviz, name) is not None, name
    assert callable(attnviz.scale_sweep) and callable(attnviz.load_model)
    assert attnviz.plot.plot_stage_bars is not None
    assert "scale_sweep" in dir(attnviz)


def test_lazy_names_are_listed_in_all():
    assert set(attnviz._LAZY) <= set(attnviz.__all__)
