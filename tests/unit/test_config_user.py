"""``[gateway] user`` and ``group`` (issue #9): the account must exist when the file is read,
so ``tunneld check`` catches a typo; every error names the file, the key and the reason."""

from __future__ import annotations

import grp
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.configfiles import REPO, base, load, make_confdir, make_pki, write
from tunneld.config import ConfigError, describe


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def confdir(tmp_path: Path, pki_dir: Path) -> Path:
    return make_confdir(tmp_path, pki_dir)


def with_gateway(**keys: object) -> dict[str, Any]:
    data = base()
    data["gateway"].update(keys)
    return data


def test_without_user_the_daemon_stays_as_started(confdir: Path) -> None:
    gateway = load(confdir, base()).gateway
    assert gateway.user is None and gateway.group is None


def test_user_and_group(confdir: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    config = load(confdir, with_gateway(user="nobody", group=group))
    assert (config.gateway.user, config.gateway.group) == ("nobody", group)
    assert f"runs as nobody:{group}" in describe(config)
    assert load(confdir, with_gateway(user="nobody")).gateway.group is None


@pytest.mark.parametrize(
    ("keys", "key", "reason"),
    [
        ({"user": "no-such-user-tunneld"}, "gateway.user", "no such user 'no-such-user-tunneld'"),
        (
            {"user": "nobody", "group": "no-such-group-tunneld"},
            "gateway.group",
            "no such group 'no-such-group-tunneld' on this system",
        ),
        ({"group": "nogroup"}, "gateway.group", "only used with gateway.user"),
        ({"user": 65534}, "gateway.user", "expected a string, got integer"),
        ({"user": " "}, "gateway.user", "must not be empty"),
    ],
    ids=["no-user", "no-group", "group-alone", "uid-number", "empty"],
)
def test_errors_name_file_key_and_reason(
    confdir: Path, keys: dict[str, object], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(confdir, with_gateway(**keys))
    assert info.value.key == key and reason in info.value.reason
    assert str(info.value).startswith(f"{confdir / 'gw.toml'}: {key}: ")


def test_tunneld_check_refuses_an_unknown_user(confdir: Path) -> None:
    conf = write(confdir, with_gateway(user="no-such-user-tunneld"))
    done = subprocess.run(
        [sys.executable, "-m", "tunneld.cli", "check", "-c", str(conf)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert done.stderr.strip() == (
        f"tunneld: {conf}: gateway.user: no such user 'no-such-user-tunneld' on this system"
    )
