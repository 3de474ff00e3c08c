"""ipywidgets views for the notebooks: a live dashboard of a run, and small slider helpers.

:class:`RunDashboard` only *reads* the run store (``RunStore.metrics`` / ``layer_metrics``), so it watches a
run trained by another process (``prunekit.start_run``), by the app, or one that finished long ago. Its
charts are the figure builders of :mod:`prunekit.viz` shared with the Streamlit app.

Figures are shown as plotly outputs inside ``ipywidgets.Output`` widgets, replaced by assigning
``Output.outputs`` (the documented way to update output from a background thread). Unlike
``go.FigureWidget`` this needs no ``anywidget`` (plotly >= 6), and the outputs live in the widget state, so
a notebook executed headless with its widget state saved still shows the charts when rendered.

Widget updates sent from a background thread may be tagged with an earlier cell by the kernel; a headless
executor that records widget state per cell can then miss them. :meth:`RunDashboard.wait` therefore ends
with a full re-send of every widget's state from the calling (foreground) cell.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from prunekit import viz
from prunekit.errors import ConfigError
from prunekit.train.store import TERMINAL, RunInfo, RunStore

logger = logging.getLogger(__name__)

_PLOTLY_MIME = "application/vnd.plotly.v1+json"
# names of the per-layer rows the gate heat map needs; reading only these at the last step keeps a
# refresh cheap however long the run has been logging
_GATE_ROWS = ["gate_values", "gate_hist"]


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


# -- the run dashboard --------------------------------------------------------------------------------
class RunDashboard:
    """Live view of one run from the run store: status, loss, accuracy, MACs ratio and per-layer gates.

    Args:
        run_or_run_id: a ``RunHandle`` (from ``prunekit.start_run``) or a run id.
        workspace: the run store folder (default: the handle's, else ``$PRUNEKIT_HOME`` / ``./prunekit-runs``).
        refresh_s: seconds between two reads of the store by the background refresher.
        autostart: start the background refresher now (it stops by itself once the run has ended).

    Display it as the last expression of a cell. ``refresh()`` re-reads the store once; ``wait()`` blocks
    until the run ends, refreshing, and returns its final ``RunInfo``.

    Attributes:
        figures: ``{"loss", "accuracy", "macs", "gates"}`` → the ``go.Figure`` shown now.
        status: the status label (HTML widget). explanation: the plain-language reading of the charts.
        refreshes: how many refreshes changed the view.
    """

    VIEWS = ("loss", "accuracy", "macs", "gates")

    def __init__(
        self, run_or_run_id: Any, workspace: str | Path | None = None, refresh_s: float = 1.0, *,
        autostart: bool = True,
    ) -> None:
        if not refresh_s > 0:
            raise ConfigError(f"refresh_s must be > 0, got {refresh_s}")
        if isinstance(run_or_run_id, str):
            run_id = run_or_run_id
        elif hasattr(run_or_run_id, "id"):
            run_id = str(run_or_run_id.id)
            if workspace is None:
                workspace = getattr(run_or_run_id, "workspace", None)
        else:
            raise ConfigError(f"run_or_run_id must be a RunHandle or a run id, got {type(run_or_run_id).__name__}")
        self.store = RunStore(workspace)
        self.run_id = run_id
        self.refresh_s = float(refresh_s)
        self.info: RunInfo = self.store.get_run(run_id)  # unknown ids fail here, before any widget exists
        cfg = self.info.config
        target = (cfg.get("method_options") or {}).get("target_macs")
        self._target = float(target) if isinstance(target, (int, float)) else None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signature: tuple[Any, ...] | None = None
        self.refreshes = 0
        self.figures: dict[str, go.Figure] = {}

        self.title = widgets.HTML(self._title_html(cfg))
        self.status = widgets.HTML()
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="260px"))
        self.stop_button = widgets.Button(description="Stop run", icon="stop", button_style="warning",
                                          tooltip="ask the run to stop after its current step (it checkpoints)")
        self.stop_button.on_click(lambda _: self.stop_run())
        self.views = {k: figure_output(width="50%") for k in self.VIEWS}
        self.explanation = widgets.HTML()
        self.widget = widgets.VBox([
            self.title,
            widgets.HBox([self.status, self.progress, self.stop_button]),
            widgets.HBox([self.views["loss"], self.views["accuracy"]]),
            widgets.HBox([self.views["macs"], self.views["gates"]]),
            self.explanation,
        ])
        self.refresh()
        if autostart:
            self.start()

    # -- reading the store ---------------------------------------------------------------------------
    @staticmethod
    def _title_html(cfg: dict[str, Any]) -> str:
        name = cfg.get("name") or f"{cfg.get('method')} on {cfg.get('model')} / {cfg.get('dataset')}"
        opts = ", ".join(f"{k}={v}" for k, v in (cfg.get("method_options") or {}).items())
        return f"<b>{html.escape(str(name))}</b>" + (f" <small>({html.escape(opts)})</small>" if opts else "")

    def refresh(self, force: bool = False) -> bool:
        """Re-read the store and redraw what changed; returns True when the view changed.

        Args:
            force: redraw even when nothing new was logged.
        """
        with self._lock:
            info = self.store.get_run(self.run_id)
            metrics = self.store.metrics(self.run_id)
            last_step = int(metrics["step"].max()) if not metrics.empty else -1
            signature = (info.status, round(info.progress, 4), len(metrics), last_step)
            if signature == self._signature and not force:
                return False
            self.info, self._signature = info, signature
            layers = self.store.layer_metrics(self.run_id, names=_GATE_ROWS, step="last")
            self._draw(info, metrics, layers, last_step)
            self.refreshes += 1
            return True

    def _draw(self, info: RunInfo, metrics: pd.DataFrame, layers: pd.DataFrame, last_step: int) -> None:
        figs = {
            "loss": viz.loss_figure(metrics),
            "accuracy": viz.accuracy_figure(metrics),
            "macs": viz.macs_figure(metrics, self._target),
            "gates": viz.gate_heatmap_figure(layers),
        }
        for key, fig in figs.items():
            set_figure(self.views[key], fig)
        self.figures = figs
        colour = {"done": "green", "failed": "crimson", "running": "steelblue"}.get(info.status, "gray")
        step = f", step {last_step}" if last_step >= 0 else ""
        text = f"<span style='color:{colour}'><b>{info.status}</b></span>{step}, {info.progress:.0%}"
        if info.error:
            text += f"<br><small>{html.escape(info.error)}</small>"
        self.status.value = text
        self.progress.value = float(info.progress)
        self.progress.bar_style = {"done": "success", "failed": "danger"}.get(info.status, "")
        self.stop_button.disabled = info.status in TERMINAL
        sentences = [viz.explain_loss(metrics), viz.explain_macs(metrics, self._target),
                     viz.explain_gate_heatmap(layers)]
        self.explanation.value = "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in sentences) + "</ul>"

    # -- background refresh --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the background refresher is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Refresh every ``refresh_s`` seconds in a daemon thread until the run ends or :meth:`stop`."""
        if self.running or self.info.status in TERMINAL:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"RunDashboard-{self.run_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background refresher (the run itself keeps training; see :meth:`stop_run`)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 2 * self.refresh_s))
        self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a transient read error must not kill the live view
                logger.exception("dashboard refresh of run %s failed", self.run_id)
            if self.info.status in TERMINAL:
                break

    def stop_run(self) -> None:
        """Ask the run itself to stop gracefully (same as ``prunekit runs stop``)."""
        from prunekit.train.runner import stop_run

        stop_run(self.run_id, self.store)
        self.refresh(force=True)

    def wait(self, timeout: float | None = None) -> RunInfo:
        """Block, refreshing every ``refresh_s``, until the run ends; returns its final ``RunInfo``.

        Raises:
            TimeoutError: the run is still going after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self.stop()
        while True:
            self.refresh()
            if self.info.status in TERMINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.run_id} still {self.info.status} after {timeout} s")
            time.sleep(self.refresh_s)
        self.refresh(force=True)
        self.send_state()
        return self.info

    def send_state(self) -> None:
        """Re-send every widget's full state from the current cell (see the module docstring)."""
        for w in self._widgets():
            # An Output's empty msg_id means "stop capturing"; nbclient (0.10) fails on it for an Output that
            # never captured, and these Outputs never capture (their outputs are assigned), so leave it out.
            w.send_state(key=[k for k in w.keys if k != "msg_id"] if isinstance(w, widgets.Output) else None)

    def close(self) -> None:
        """Stop refreshing and close the widgets and the store connection."""
        self.stop()
        for w in self._widgets():
            w.close()
        self.store.close()

    def _widgets(self) -> list[widgets.Widget]:
        """The dashboard's widget tree, parents first."""
        out, todo = [], [self.widget]
        while todo:
            w = todo.pop()
            out.append(w)
            todo.extend(c for c in getattr(w, "children", ()) if isinstance(c, widgets.Widget))
        return out

    def _repr_mimebundle_(self, **kw: Any) -> Any:
        return self.widget._repr_mimebundle_(**kw)

    def __repr__(self) -> str:
        return f"RunDashboard({self.run_id!r}, status={self.info.status!r})"
