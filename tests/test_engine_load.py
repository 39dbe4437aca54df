"""Engines are picked from one table and loaded from settings alone."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from genq.errors import WorkerConfigError
from genq.settings import Settings
from genq.worker.engines import ENGINES, engine_class, load_engine


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_engine_in_the_table_loads_from_settings_alone(name: str) -> None:
    cls = engine_class(name)
    assert inspect.isclass(cls)
    assert list(inspect.signature(cls.load).parameters) == ["settings"]
    assert vars(cls)["name"] == name


def test_the_null_engine_loads_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from genq.settings import Settings\n"
        "from genq.worker.engines import load_engine\n"
        "engine = load_engine(Settings(engine='null'))\n"
        "assert engine.name == 'null'\n"
        "assert 'torch' not in sys.modules, 'null imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_missing_ctranslate2_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "genq.worker.engines.ct2", None)  # import fails
    settings = Settings(engine="ct2", model=str(tmp_path))
    with pytest.raises(WorkerConfigError, match=r"needs CTranslate2: pip install 'genq\[ct2\]'"):
        load_engine(settings)


def test_an_engine_missing_from_the_table_is_a_config_error() -> None:
    with pytest.raises(WorkerConfigError, match="not one of hf, ct2, null"):
        engine_class("vllm")
