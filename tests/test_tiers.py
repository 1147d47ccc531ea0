"""Every test is in exactly one tier (tests/tiers.py), so ``pytest -m <tier>`` runs each test once
across the tiers, and a tier's test is held to its boundary."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests import tiers


def test_every_collected_test_has_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    # The items of this run: the whole suite under ./scripts/test (every xdist worker collects all of it).
    items = request.session.items
    assert request.node in items
    tiers_of = {item.nodeid: [m.name for m in item.iter_markers() if m.name in tiers.TIERS] for item in items}
    assert {nodeid: names for nodeid, names in tiers_of.items() if len(set(names)) != 1} == {}
    assert all(tiers_of[item.nodeid][0] == item.stash[tiers.TIER] for item in items)


def test_the_tiers_are_the_registered_markers(pytestconfig: pytest.Config) -> None:
    registered = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    assert set(tiers.TIERS) <= registered


def test_a_test_is_in_the_heaviest_tier_its_fixtures_imports_or_marker_name(tmp_path: Path) -> None:
    plain, torch_user, editor_user = tmp_path / "plain.py", tmp_path / "torch_user.py", tmp_path / "editor.py"
    plain.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n")
    torch_user.write_text("import numpy as np\nimport torch.nn\n")
    editor_user.write_text("from processor.adapters.diffusers.engine import DiffusersEditor\n")
    assert tiers.tier_of("t", [], [], str(plain)) == "unit"
    assert tiers.tier_of("t", [], ["database"], str(plain)) == "database"
    assert tiers.tier_of("t", [], ["database", "service", "database"], str(plain)) == "service"
    assert tiers.tier_of("t", [], ["service", "model"], str(plain)) == "model"
    assert tiers.tier_of("t", [], [], str(torch_user)) == "model"
    assert tiers.tier_of("t", [], ["database"], str(editor_user)) == "model"
    # A marker may say more than the fixtures show (a process the test starts itself).
    assert tiers.tier_of("t", ["service"], ["database"], str(plain)) == "service"
    assert tiers.tier_of("t", ["benchmark"], ["model"], str(torch_user)) == "benchmark"


def test_the_shared_fixtures_name_their_tiers(request: pytest.FixtureRequest) -> None:
    manager = request._fixturemanager
    named = {
        name: getattr(manager.getfixturedefs(name, request.node)[-1].func, "tier", None)  # type: ignore[index]
        for name in (
            "template_database",
            "private_server",
            "storage_server",
            "start_processor",
            "spawn_worker",
            "tiny_model_dir",
        )
    }
    assert named == {
        "template_database": "database",
        "private_server": "database",
        "storage_server": "service",
        "start_processor": "service",
        "spawn_worker": "service",
        "tiny_model_dir": "model",
    }


def test_a_marker_lighter_than_the_fixtures_or_a_second_one_fails_collection() -> None:
    with pytest.raises(tiers.TierError, match="marked unit but its fixtures or imports need database"):
        tiers.tier_of("t", ["unit"], ["database"], None)
    with pytest.raises(tiers.TierError, match="one tier per test"):
        tiers.tier_of("t", ["service", "model"], [], None)
    # The same marker twice (module and function) is still one tier.
    assert tiers.tier_of("t", ["service", "service"], [], None) == "service"


def test_a_unit_test_may_not_connect_listen_or_start_a_process() -> None:
    boundary, before = (
        tiers.TierBoundary(),
        (socket.socket.connect, psycopg.connect, subprocess.Popen.__init__),
    )
    with pytest.MonkeyPatch.context() as patch, boundary.holding("unit", patch):
        with pytest.raises(tiers.TierError, match="a unit test connected to PostgreSQL: mark it database"):
            psycopg.connect("postgresql://nobody@127.0.0.1:1/none")
        with socket.socket() as sock, pytest.raises(tiers.TierError, match="mark it service"):
            sock.connect(("127.0.0.1", 1))
        with socket.socket() as sock, pytest.raises(tiers.TierError, match="listened on a socket"):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        with pytest.raises(tiers.TierError, match="started a process"):
            subprocess.run([sys.executable, "-c", "pass"], check=True)
    # Undone with the test: the next test, of another tier, is not held.
    assert (socket.socket.connect, psycopg.connect, subprocess.Popen.__init__) == before


def test_a_database_test_may_not_start_a_process() -> None:
    boundary = tiers.TierBoundary()
    with (
        pytest.MonkeyPatch.context() as patch,
        boundary.holding("database", patch),
        pytest.raises(tiers.TierError, match="a database test started a process"),
    ):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
