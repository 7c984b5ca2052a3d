"""What the command-line tools share: TensorFlow's start-up log lines kept quiet unless --verbose, and the
rule for a model directory given as --out (`check_out`)."""

import os
import re
import sys
import tempfile
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

# absl's INFO lines ("I0000 00:00:... port.cc:153] oneDNN custom operations are on ...") and its notice that
# logging is not initialised yet, both printed while TensorFlow's libraries load; LiteRT's notice for its
# first interpreter.
START_UP_NOISE = re.compile(
    rb"I\d{4} |WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU"
)


def add_runtime_flags(parser):
    """--runtime and --precision, as model.inference.choose_runtime takes them."""
    parser.add_argument(
        "--runtime",
        choices=["auto", "openvino", "litert", "keras"],
        default="auto",
        help="forward passes (default auto: the fastest that passes the parity gate here, see docs/runtime.md)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "f32", "bf16", "int8"],
        default="auto",
        help="arithmetic (default auto: bf16 on OpenVINO where the CPU has it, else f32; litert and keras run f32)",
    )


class OutError(ValueError):
    """--out names something the tool must not replace; the message says why."""


def check_out(out, force):
    """The --out rule of every CLI that writes a model directory: `out` may be new or an empty directory; one that
    holds a model directory (model.keras + thresholds.json) is replaced only with --force; anything else (a file,
    a folder of other things) is refused, --force or not, so that nothing that is not a model is ever deleted."""
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not (out.is_dir() and (out / "model.keras").is_file() and (out / "thresholds.json").is_file()):
        raise OutError(
            f"{out}: exists and is not a model directory (model.keras + thresholds.json) nor empty; "
            "it is never replaced, even with --force: choose another --out"
        )
    if not force:
        raise OutError(f"{out}: already holds a model directory; pass --force to replace it")


def add_verbose_flag(parser):
    parser.add_argument(
        "--verbose", action="store_true", help="show TensorFlow's start-up and C++ log lines, and an error's traceback"
    )


def exit_with(error: BaseException, verbose: bool = False, message: str | None = None) -> NoReturn:
    """End the command on one of our own errors: one line, `error: <message>` (default: the error's, which names
    the file); with --verbose, its traceback first."""
    if verbose:
        traceback.print_exception(error)
    sys.exit(f"error: {message or error}")


_verbose = False  # the command's --verbose, as quiet_tensorflow was last told it
_IMPORTING = threading.Lock()  # TensorFlow's first import, one thread at a time


def quiet_tensorflow(verbose=False, on_demand=False):
    """Import TensorFlow without its start-up lines (oneDNN notice, CPU features, absl's warning), unless `verbose`.
    `on_demand`: import nothing now, only remember `verbose`; the code that needs TensorFlow imports it with a plain
    quiet_tensorflow() (the server: model.inference.Classifier when it loads a Keras model), quietly or not as the
    command said.

    TF_CPP_MIN_LOG_LEVEL=3 hides TensorFlow's C++ log lines (also runtime notices logged as errors, such as
    "oneDNN supports DT_BOOL only on ..."; a failing operation still raises a Python exception with its message),
    but the absl INFO lines printed while its libraries load ignore it: so during the import stderr goes to a
    file, and only those lines are dropped. oneDNN itself stays on (TF_ENABLE_ONEDNN_OPTS is left alone), so
    the numbers do not change."""
    global _verbose
    if verbose or on_demand:
        _verbose = verbose
    if not _verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read when TensorFlow is imported, by whatever imports it
    if on_demand:
        return
    # One thread imports it; another waits until it is whole. Two first imports at once (a quick-mode job's thread
    # and a request loading a Keras model) cross TensorFlow's and Keras's circular imports and one of them sees a
    # half-initialised module ("module 'tensorflow.python.data.ops.dataset_ops' has no attribute 'DatasetV2'").
    with _IMPORTING:
        if _verbose or "tensorflow" in sys.modules:
            import tensorflow  # noqa: F401
        else:
            with without_start_up_noise():
                import tensorflow  # noqa: F401


# File descriptor 2 belongs to the whole process: two threads redirecting it at once (the app builds LiteRT
# interpreters on request threads) would each restore the other's temporary file, and stderr would end up
# pointing at a deleted one. One redirect at a time.
_REDIRECT = threading.RLock()


@contextmanager
def without_start_up_noise():
    """Send stderr (the file descriptor: C++ writes there) to a file meanwhile; then write back all but START_UP_NOISE."""
    with _REDIRECT:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                for line in captured:
                    if not START_UP_NOISE.match(line):
                        sys.stderr.write(line.decode(errors="replace"))
