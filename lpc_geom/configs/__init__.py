"""The training configs shipped with lpc_geom, found by name from any directory.

``lpc-geom train mnist1d_lpc`` resolves through :func:`resolve_config`: an existing file wins, otherwise a
packaged config of that name (with or without its suffix) is read from the installed package
(:mod:`importlib.resources`), so the README's commands work outside the checkout; ``lpc-geom configs``
prints :func:`list_configs`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["CONFIG_SUFFIXES", "list_configs", "resolve_config"]

#: File suffixes :func:`lpc_geom.config.load_config` reads.
CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".json")


def _packaged() -> dict[str, Path]:
    files = {}
    for entry in resources.files(__name__).iterdir():
        name = entry.name
        if entry.is_file() and name.endswith(CONFIG_SUFFIXES):
            if not isinstance(entry, Path):  # e.g. an install inside a zip archive
                raise RuntimeError(f"packaged config {name} is not a file on disk ({type(entry).__name__}); "
                                   "install lpc_geom unzipped (pip does) to read configs by name")
            files[name] = entry
    return files


def list_configs() -> dict[str, Path]:
    """Names (file stems) of the packaged configs and their files, sorted by name.

    Returns
    -------
    dict of str -> Path
    """
    return {Path(name).stem: path for name, path in sorted(_packaged().items())}


def resolve_config(name_or_path: str | Path) -> Path:
    """The config file a command line names: an existing file, else a packaged config of that name.

    Parameters
    ----------
    name_or_path : str or Path
        A path to a TOML/YAML/JSON file, or the name of a packaged config (``"mnist1d_lpc"``,
        ``"mnist1d_lpc.toml"`` or ``"lpc_geom/configs/mnist1d_lpc.toml"``, see :func:`list_configs`).

    Returns
    -------
    Path

    Raises
    ------
    FileNotFoundError
        Neither a file nor a packaged config; the message lists the packaged names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    # A bare name, or the checkout's spelling lpc_geom/configs/NAME (the README's) from elsewhere.
    if path.name == str(name_or_path) or path.parent.as_posix() == "lpc_geom/configs":
        packaged = _packaged()
        by_stem = list_configs()
        if path.name in packaged:
            return packaged[path.name]
        if path.name in by_stem:
            return by_stem[path.name]
    raise FileNotFoundError(f"config {str(name_or_path)!r} is neither a file nor a packaged config; packaged "
                            f"configs: {', '.join(list_configs())} (see `lpc-geom configs`)")
