"""Fixtures of the functions engine tests (helpers live in fnsupport.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # fnsupport, fnmod

from fnsupport import FnServer  # noqa: E402


@pytest.fixture
async def fn_server() -> AsyncIterator[FnServer]:
    srv = FnServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture(autouse=True)
def reset_fnmod() -> None:
    import fnmod

    fnmod.reset()


