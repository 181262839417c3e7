"""The optional parts of the install (pyproject.toml's extras) and the one line that names them.

The base install runs the gateway, the web server, the store, its migrations and the CLI. The
``worker`` extra adds PyTorch and the pixel decoders; ``train`` adds what training, evaluation,
synthetic data and the demo need besides. A command that needs an extra checks for it before it
imports anything heavy, so a slim install answers with ``pip install 'cxr-triage[worker]'``
instead of a traceback. Checking costs a ``find_spec`` per module: nothing is imported.
"""

from __future__ import annotations

from importlib.util import find_spec

# extra -> the modules (import names) it provides, in the order worth naming.
EXTRAS: dict[str, tuple[str, ...]] = {
    "worker": ("torch", "torchvision", "PIL", "pylibjpeg"),
    "train": ("torch", "torchvision", "PIL", "pylibjpeg", "sklearn", "matplotlib"),
}


class MissingExtra(Exception):
    """A command needs an optional part of the install that is not there."""

    def __init__(self, extra: str, module: str) -> None:
        self.extra = extra
        self.module = module
        super().__init__(
            f"needs the {extra!r} extra ({module} is not installed): "
            f"pip install 'cxr-triage[{extra}]'"
        )


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (empty when it is installed)."""
    return [name for name in EXTRAS[extra] if not _importable(name)]


def require(extra: str) -> None:
    """Raise :class:`MissingExtra` unless every module of ``extra`` can be imported."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(extra, missing[0])


def extra_providing(module: str) -> str | None:
    """The smallest extra that installs ``module`` (a dotted name), or None if none does."""
    top = module.split(".")[0]
    for extra, modules in EXTRAS.items():  # worker before train: the smaller one first
        if top in modules:
            return extra
    return None


def _importable(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):  # a parent that fails to import; a None in sys.modules
        return False
