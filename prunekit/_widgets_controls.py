"""ipywidgets controls for the notebooks: figures inside ``Output`` widgets, sliders, live figures, a matrix editor.

Figures are shown as plotly outputs inside ``ipywidgets.Output`` widgets, replaced by assigning
``Output.outputs`` (the documented way to update output from a background thread). Unlike
``go.FigureWidget`` this needs no ``anywidget`` (plotly >= 6), and the outputs live in the widget state, so
a notebook executed headless with its widget state saved still shows the charts when rendered.

Public through :mod:`prunekit.widgets`; the run dashboard there draws its charts with :func:`set_figure`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from prunekit.errors import ConfigError

_PLOTLY_MIME = "application/vnd.plotly.v1+json"


# -- figures inside Output widgets -----------------------------------------------------------------
def figure_bundle(fig: go.Figure) -> dict[str, Any]:
    """MIME bundle of a plotly figure: the plotly JSON (JupyterLab, VS Code), HTML loading plotly.js from
    its CDN (classic notebook, nbviewer, the widget HTML manager) and a plain-text line."""
    spec = json.loads(pio.to_json(fig, validate=False))
    title = fig.layout.title.text or "figure"
    return {
        _PLOTLY_MIME: {"data": spec.get("data", []), "layout": spec.get("layout", {}), "config": {"responsive": True}},
        "text/html": pio.to_html(fig, include_plotlyjs="cdn", full_html=False, config={"responsive": True}),
        "text/plain": f"<plotly figure: {title}>",
    }


def figure_output(fig: go.Figure | None = None, **layout: Any) -> widgets.Output:
    """An ``Output`` widget showing ``fig`` (replace it later with :func:`set_figure`)."""
    out = widgets.Output(layout=widgets.Layout(**layout))
    if fig is not None:
        set_figure(out, fig)
    return out


def set_figure(out: widgets.Output, fig: go.Figure) -> None:
    """Replace whatever ``out`` shows by ``fig`` (safe from any thread: one state update, no capture)."""
    out.outputs = ({"output_type": "display_data", "data": figure_bundle(fig), "metadata": {}},)


def shown_figure(out: widgets.Output) -> dict[str, Any] | None:
    """The plotly JSON (``{"data", "layout", ...}``) that ``out`` currently shows, or None."""
    for o in out.outputs:
        spec = o.get("data", {}).get(_PLOTLY_MIME)
        if spec is not None:
            return spec
    return None


# -- slider helpers ----------------------------------------------------------------------------------
_STYLE = {"description_width": "initial"}


def slider(
    description: str,
    value: float,
    min: float,  # noqa: A002 - the ipywidgets name
    max: float,  # noqa: A002
    step: float | None = None,
    *,
    log: bool = False,
    readout_format: str = ".3g",
    continuous_update: bool = False,
) -> widgets.FloatSlider | widgets.FloatLogSlider:
    """A float slider with a readable label; ``log=True`` spaces it logarithmically (temperatures, scales).

    Args:
        description: label shown left of the slider (may contain math such as ``τ``).
        value, min, max: the range (for ``log=True`` the real values, not exponents).
        step: increment (for ``log=True``: of the base-10 exponent); default 1/100 of the range.
        continuous_update: update while dragging (off by default: every change recomputes a figure).
    """
    if not min < max:
        raise ConfigError(f"slider {description!r}: min must be < max, got min={min}, max={max}")
    if not min <= value <= max:
        raise ConfigError(f"slider {description!r}: value must be in [{min}, {max}], got {value}")
    common = dict(description=description, readout_format=readout_format, continuous_update=continuous_update,
                  style=_STYLE, layout=widgets.Layout(width="420px"))
    if log:
        if min <= 0:
            raise ConfigError(f"slider {description!r}: a log slider needs min > 0, got {min}")
        lo, hi = float(np.log10(min)), float(np.log10(max))
        return widgets.FloatLogSlider(value=value, base=10, min=lo, max=hi, step=step or (hi - lo) / 100, **common)
    return widgets.FloatSlider(value=value, min=min, max=max, step=step or (max - min) / 100, **common)


def int_slider(description: str, value: int, min: int, max: int, step: int = 1) -> widgets.IntSlider:  # noqa: A002
    """An integer slider with the same look as :func:`slider`."""
    if not min <= value <= max:
        raise ConfigError(f"slider {description!r}: value must be in [{min}, {max}], got {value}")
    return widgets.IntSlider(value=value, min=min, max=max, step=step, description=description,
                             continuous_update=False, style=_STYLE, layout=widgets.Layout(width="420px"))


class LiveFigure:
    """A figure recomputed whenever one of its controls changes.

    ``build(**values)`` receives each control's ``.value`` under its keyword and returns a figure, or a
    ``(figure, caption)`` pair whose caption (HTML) is shown under it.

    Attributes:
        controls: the keyword → control mapping (widgets, or anything with ``.value`` and
            ``.observe(handler, names="value")`` such as :class:`MatrixEditor`).
        figure: the figure shown now. caption: its caption widget. widget: the whole view.
        updates: number of recomputations so far.
    """

    def __init__(self, build: Callable[..., go.Figure | tuple[go.Figure, str]], **controls: Any) -> None:
        self.build = build
        self.controls = controls
        self.output = figure_output()
        self.caption = widgets.HTML()
        self.figure: go.Figure | None = None
        self.updates = 0
        boxes = [getattr(c, "widget", c) for c in controls.values()]
        self.widget = widgets.VBox([*boxes, self.output, self.caption])
        for c in controls.values():
            c.observe(self.update, names="value")
        self.update()

    def values(self) -> dict[str, Any]:
        return {k: c.value for k, c in self.controls.items()}

    def update(self, *_: Any) -> None:
        res = self.build(**self.values())
        fig, text = res if isinstance(res, tuple) else (res, "")
        self.figure = fig
        set_figure(self.output, fig)
        self.caption.value = text
        self.updates += 1

    def _repr_mimebundle_(self, **kw: Any) -> Any:
        return self.widget._repr_mimebundle_(**kw)


def live_figure(build: Callable[..., go.Figure | tuple[go.Figure, str]], **controls: Any) -> LiveFigure:
    """Shorthand for :class:`LiveFigure` (``pk.widgets.live_figure(plot, tau=pk.widgets.slider(...))``)."""
    return LiveFigure(build, **controls)


class MatrixEditor:
    """An editable M × N grid of numbers (e.g. logits Φ of a hand-made mask), one text box per entry.

    Args:
        values: the initial matrix, shape [M, N].
        step: increment of the boxes' arrows.
        row_label, col_label: prefixes of the row and column headers ("filter 0", "candidate 3").

    ``value`` is the current matrix (a float array [M, N]); assigning it fills the boxes and notifies
    observers once. ``observe(handler, names="value")`` calls ``handler(change)`` after every edit.
    """

    def __init__(self, values: Any, *, step: float = 0.5, row_label: str = "row", col_label: str = "") -> None:
        arr = np.asarray(values, dtype=float)
        if arr.ndim != 2 or arr.size == 0:
            raise ConfigError(f"values must be a non-empty [M, N] matrix, got shape {arr.shape}")
        m, n = arr.shape
        self._handlers: list[Callable[[dict[str, Any]], None]] = []
        self._muted = False
        self.cells = [[widgets.FloatText(value=float(arr[i, j]), step=step, layout=widgets.Layout(width="64px"))
                       for j in range(n)] for i in range(m)]
        header = [widgets.Label("")] + [widgets.Label(f"{col_label}{j}") for j in range(n)]
        rows = [[widgets.Label(f"{row_label} {i}"), *self.cells[i]] for i in range(m)]
        self.widget = widgets.GridBox(
            header + [w for r in rows for w in r],
            layout=widgets.Layout(grid_template_columns=f"80px repeat({n}, 70px)", grid_gap="2px"),
        )
        for r in self.cells:
            for c in r:
                c.observe(self._changed, names="value")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.cells), len(self.cells[0])

    @property
    def value(self) -> np.ndarray:
        return np.array([[c.value for c in r] for r in self.cells], dtype=float)

    @value.setter
    def value(self, values: Any) -> None:
        arr = np.asarray(values, dtype=float)
        if arr.shape != self.shape:
            raise ConfigError(f"values must have shape {self.shape}, got {arr.shape}")
        self._muted = True
        try:
            for i, r in enumerate(self.cells):
                for j, c in enumerate(r):
                    c.value = float(arr[i, j])
        finally:
            self._muted = False
        self._notify()

    def observe(self, handler: Callable[[dict[str, Any]], None], names: str = "value") -> None:
        if names != "value":
            raise ConfigError(f"MatrixEditor only reports 'value' changes, got names={names!r}")
        self._handlers.append(handler)

    def _changed(self, _: Any) -> None:
        if not self._muted:
            self._notify()

    def _notify(self) -> None:
        change = {"name": "value", "new": self.value, "owner": self}
        for h in self._handlers:
            h(change)

    def _repr_mimebundle_(self, **kw: Any) -> Any:
        return self.widget._repr_mimebundle_(**kw)

