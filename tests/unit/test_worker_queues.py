"""How a worker is told which queues to serve: names, weights, strict order."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from conveyor.cli import main
from conveyor.errors import ConfigurationError
from conveyor.worker.loop import WorkerConfig


def test_weights_in_the_queue_list() -> None:
    config = WorkerConfig(queues=["a:3", "b"])
    assert config.queue_weights == {"a": 3, "b": 1}
    assert config.queue_names == ["a", "b"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queues": ["a:0"]}, ">= 1"),
        ({"queues": ["a", "a"]}, "twice"),
        ({"queues": ["a:2", "b"], "strict": True}, "exclude"),
    ],
)
def test_bad_queue_lists_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        WorkerConfig(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--queues", "a:0,b"], "weight must be >= 1"),
        (["--queues", "a:2,b", "--strict"], "exclude each other"),
    ],
)
def test_the_worker_command_refuses_bad_queue_lists_before_importing_the_app(
    args: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, ["worker", "no_such_module:app", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "no_such_module" not in result.output
