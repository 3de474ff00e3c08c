"""ipywidgets views for the notebooks: a live dashboard of a run, and small slider helpers.

:class:`RunDashboard` only *reads* the run store (``RunStore.metrics`` / ``layer_metrics``), so it watches a
run trained by another process (``prunekit.start_run``), by the app, or one that finished long ago. Its
charts are the figure builders of :mod:`prunekit.viz` shared with the Streamlit app, shown in ``Output``
widgets (see :mod:`prunekit._widgets_controls`, home of the slider helpers, :class:`LiveFigure` and
:class:`MatrixEditor`, all importable from here).

Widget updates sent from a background thread may be tagged with an earlier cell by the kernel; a headless
executor that records widget state per cell can then miss them. :meth:`RunDashboard.wait` therefore ends
with a full re-send of every widget's state from the calling (foreground) cell.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go

from prunekit import viz
from prunekit._widgets_controls import (
    LiveFigure,
    MatrixEditor,
    figure_bundle,
    figure_output,
    int_slider,
    live_figure,
    set_figure,
    shown_figure,
    slider,
)
from prunekit.errors import ConfigError
from prunekit.methods import OptionSpec, list_methods, method_class, run_target
from prunekit.train.store import TERMINAL, RunInfo, RunStore

logger = logging.getLogger(__name__)

# names of the per-layer rows the gate heat map needs; reading only these at the last step keeps a
# refresh cheap however long the run has been logging
_GATE_ROWS = ["gate_values", "gate_hist"]

__all__ = [
    "LiveFigure", "MatrixEditor", "MethodForm", "RunDashboard", "figure_bundle", "figure_output", "int_slider", "live_figure",
    "set_figure", "shown_figure", "slider",
]


# -- a method and its options -------------------------------------------------------------------------
class MethodForm:
    """A method picker with one widget per option, generated from the method's Config (``Method.options()``).

    ``form.widget`` shows it; ``form.method`` and ``form.options()`` (only the options changed from their
    defaults, typed) give what a ``RunConfig`` needs. Changing the method rebuilds the option widgets.

    Args:
        method: the method shown first (default ``crisp`` when registered).
        methods: the methods offered (default: every registered method).
    """

    def __init__(self, method: str | None = None, methods: list[str] | None = None) -> None:
        offered = list(methods or list_methods())
        if not offered:
            raise ConfigError(f"methods must not be empty, got {methods!r}")
        first = method or ("crisp" if "crisp" in offered else offered[0])
        if first not in offered:
            raise ConfigError(f"method must be one of {', '.join(offered)}, got {first!r}")
        self.picker = widgets.Dropdown(options=offered, value=first, description="method", style={"description_width": "initial"})
        self.about = widgets.HTML()
        self.box = widgets.VBox()
        self.inputs: dict[str, tuple[OptionSpec, widgets.Widget]] = {}
        self.widget = widgets.VBox([self.picker, self.about, self.box])
        self.picker.observe(lambda _change: self._build(), names="value")
        self._build()

    @property
    def method(self) -> str:
        return str(self.picker.value)

    def _build(self) -> None:
        cls = method_class(self.method)
        self.about.value = f"<i>{html.escape(cls.summary)}.</i> Own rule: {html.escape(cls.decision_rule)}."
        self.inputs = {s.name: (s, _option_widget(s)) for s in cls.options()}
        self.box.children = [w for _, w in self.inputs.values()]

    def options(self) -> dict[str, Any]:
        """The options whose widget differs from the default, typed as the method's Config wants them."""
        out: dict[str, Any] = {}
        for name, (spec, w) in self.inputs.items():
            value = w.value
            if isinstance(w, widgets.Text):
                value = spec.parse_text(value)
            if value != spec.default:
                out[name] = value
        return out


def _option_widget(spec: OptionSpec) -> widgets.Widget:
    """One option as a widget: checkbox, dropdown, bounded number box or text (None-able numbers as text)."""
    common = {"description": spec.name, "tooltip": spec.describe(),
              "style": {"description_width": "initial"},
              "layout": widgets.Layout(width="420px")}
    if spec.kind == "bool":
        return widgets.Checkbox(value=bool(spec.default), indent=False, **common)
    if spec.kind == "choice":
        return widgets.Dropdown(options=list(spec.choices), value=spec.default, **common)
    if spec.kind in ("int", "float") and spec.default is not None:
        box = widgets.BoundedIntText if spec.kind == "int" else widgets.BoundedFloatText
        lo = spec.low if spec.low is not None else -1e12
        hi = spec.high if spec.high is not None else 1e12
        return box(value=spec.default, min=lo, max=hi, **common)
    return widgets.Text(value="None" if spec.default is None else str(spec.default), **common)


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
        self._target = run_target(cfg.get("method"), cfg.get("method_options"))
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
