"""What the Streamlit pages need beyond layout: the store, run forms, cached models, what-if, collapse, live views.

The pages under ``app/`` only lay out widgets; every decision and computation lives here so it can be
tested without a browser. Streamlit is imported only inside the functions that need it (the ``cached_*``
wrappers and the page preamble), so ``prunekit bench app`` and tests import this package cheaply.

Which module holds what:

- ``_runs``: run store actions: :func:`open_store`, :func:`cached_store`, :func:`start`, :func:`stop`,
  :func:`resume`, :func:`resume_blocker` (why Resume is disabled), :func:`pick_run`, :func:`find_default_run`,
  :func:`run_label`, :func:`run_warnings_of` (a finished run's warnings), :func:`runs_table`,
  :func:`display_table` (tables as text, never "None"/"nan"), :func:`describe_error` (an exception as one line
  for the user), :data:`ACTIVE`, :data:`RESUMABLE` and :data:`MISSING`.
- ``_page``: the preamble the pages share: :func:`open_store_or_stop` (the store, or an error and
  ``st.stop()``), :func:`select_run` (the run select box, remembered in ``st.session_state.run_id``),
  :func:`page_run_picker` (both, with a message when there are no runs), :func:`watch_statuses` (rerun the
  page when a run's status changes; :func:`statuses_changed`), :func:`read_run` (the page's
  "Cannot read run" error) and :func:`show_figures` (figures with their readings, in columns).
- ``_form``: the run-config form: :class:`FieldSpec`, :func:`method_fields`, :func:`target_field`,
  :func:`parse_option`, :func:`option_text`, :func:`build_run_config`, :func:`default_config`, the data fields
  (:func:`form_datasets`, :func:`dataset_name`, :func:`default_data_root`, :func:`check_dataset`) and the
  default experiment (``DEFAULT_MODEL``, ``DEFAULT_DATASET``, ``DEFAULT_METHOD``, ``DEFAULT_TARGET``).
- ``_loaded``: a run rebuilt from a checkpoint and what the pages do with it: :class:`LoadedRun`,
  :func:`load_run`, :func:`cached_run`, :func:`find_gated`, :func:`what_if`, :func:`collapse_and_compare`,
  :func:`widths_frame`, :func:`zip_files`, :func:`jsonable`.
- ``_live``: live views: :class:`LiveSnapshot`, :func:`live_metrics`, :func:`frame_version`,
  :func:`training_figures`, :func:`gate_figures`, :func:`trend_figures`, :func:`tradeoff`,
  :func:`runs_for_explore`, :func:`cached_runs_for_explore` and :data:`LIVE_EVERY_S`.
- ``_network``: the Model page's data: :func:`network_of` (a run's network graph, built once per architecture),
  :func:`live_keep` (each group's keep ratio from the run's latest per-layer rows), :func:`network_views` (the
  live figure, its reading and the group table) and :func:`collapsed_view` (the graph after the latest collapse).
- ``_sensitivity``: layer sensitivity on the Explore page, computed in the background and kept in the run store:
  :data:`SENSITIVITY_SETTINGS`, :func:`sensitivity_settings`, :func:`stored_sensitivity`, :func:`start_sensitivity`,
  :func:`sensitivity_job`, :func:`compute_sensitivity`, :func:`sensitivity_frame`.
- ``_process``: the app process and all module-level state shared by sessions: :class:`Job`,
  :func:`background_job` and :func:`find_job` (work on a daemon thread that pages poll), :func:`settle_process`,
  :func:`app_threads`, :func:`cached_figure` (LRU of :data:`FIGURE_CACHE_SIZE`), :func:`clear_figure_cache`,
  :func:`file_version`, :func:`checkpoint_has_gates` and the Streamlit cache wrappers. Patch state there
  (``prunekit.app_support._process.FIGURE_CACHE_SIZE``), not on this package.

Performance (issue 8: re-render ≤ 0.5 s while a run trains, training ≥ 0.8× as fast with the app open) is
explained in ``_process``: the app shares the CPU with the runs it shows.
"""

from prunekit.app_support._form import (
    DEFAULT_DATASET,
    DEFAULT_METHOD,
    DEFAULT_MODEL,
    DEFAULT_TARGET,
    IMAGEFOLDER,
    FieldSpec,
    build_run_config,
    check_dataset,
    dataset_name,
    default_config,
    default_data_root,
    dense_latency,
    form_datasets,
    latency_field,
    method_fields,
    method_help,
    option_text,
    own_threshold,
    parse_option,
    target_field,
)
from prunekit.app_support._live import (
    GATE_NAMES,
    LIVE_EVERY_S,
    TRAINING_VIEWS,
    TREND_NAMES,
    LiveSnapshot,
    cached_runs_for_explore,
    frame_version,
    gate_figures,
    live_metrics,
    runs_for_explore,
    tradeoff,
    training_figures,
    trend_figures,
)
from prunekit.app_support._loaded import (
    LoadedRun,
    cached_run,
    collapse_and_compare,
    jsonable,
    load_run,
    what_if,
    widths_frame,
    zip_files,
)
from prunekit.app_support._network import collapsed_view, live_keep, network_of, network_views
from prunekit.app_support._page import (
    NO_RUNS,
    RUN_KEY,
    open_store_or_stop,
    page_run_picker,
    read_run,
    select_run,
    show_figures,
    statuses_changed,
    watch_statuses,
)
from prunekit.app_support._process import (
    APP_THREADS,
    FIGURE_CACHE_SIZE,
    Job,
    app_threads,
    background_job,
    cached_figure,
    checkpoint_has_gates,
    clear_figure_cache,
    file_version,
    find_job,
    settle_process,
)
from prunekit.app_support._runs import (
    ACTIVE,
    MISSING,
    RESUMABLE,
    cached_store,
    describe_error,
    display_table,
    find_default_run,
    missing,
    open_store,
    pick_run,
    resume,
    resume_blocker,
    run_label,
    run_warnings_of,
    runs_table,
    start,
    stop,
)
from prunekit.app_support._sensitivity import (
    SENSITIVITY_SETTINGS,
    compute_sensitivity,
    sensitivity_frame,
    sensitivity_job,
    sensitivity_settings,
    start_sensitivity,
    stored_sensitivity,
)
from prunekit.augment import find_gated
from prunekit.errors import ConfigError, PrunekitError
from prunekit.methods import run_target
from prunekit.train.config import RunConfig, TrainConfig

__all__ = [
    # _runs
    "ACTIVE", "MISSING", "RESUMABLE", "cached_store", "describe_error", "display_table", "find_default_run",
    "missing", "open_store", "pick_run", "resume", "resume_blocker", "run_label", "run_warnings_of", "runs_table",
    "start", "stop",
    # _page
    "NO_RUNS", "RUN_KEY", "open_store_or_stop", "page_run_picker", "read_run", "select_run", "show_figures",
    "statuses_changed", "watch_statuses",
    # _form
    "DEFAULT_DATASET", "DEFAULT_METHOD", "DEFAULT_MODEL", "DEFAULT_TARGET", "IMAGEFOLDER", "FieldSpec",
    "build_run_config", "check_dataset", "dataset_name", "default_config", "default_data_root", "form_datasets", "method_fields", "method_help", "run_target", "dense_latency", "latency_field", "option_text", "own_threshold", "parse_option", "target_field",
    # _loaded
    "LoadedRun", "cached_run", "collapse_and_compare", "find_gated", "jsonable", "load_run", "what_if",
    "widths_frame", "zip_files",
    # _live
    "GATE_NAMES", "LIVE_EVERY_S", "TRAINING_VIEWS", "TREND_NAMES", "LiveSnapshot", "cached_runs_for_explore",
    "frame_version", "gate_figures", "live_metrics", "runs_for_explore", "tradeoff", "training_figures",
    "trend_figures",
    # _network
    "collapsed_view", "live_keep", "network_of", "network_views",
    # _sensitivity
    "SENSITIVITY_SETTINGS", "compute_sensitivity", "sensitivity_frame", "sensitivity_job", "sensitivity_settings",
    "start_sensitivity", "stored_sensitivity",
    # _process
    "APP_THREADS", "FIGURE_CACHE_SIZE", "Job", "app_threads", "background_job", "cached_figure",
    "checkpoint_has_gates", "clear_figure_cache", "file_version", "find_job", "settle_process",
    # re-exported: the pages raise and catch errors through this package (``sup.ConfigError``)
    "ConfigError", "PrunekitError", "RunConfig", "TrainConfig",
]
