"""A real-node network slot left by a killed run is taken back; one whose claimer lives is not."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from localkube.errors import ClusterError
from localkube.network import CLAIMS_DIR, NodeNetwork, ip

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="network namespaces need root")

# The last slots: clusters take the first free one, so these stay out of the way of running clusters.
LIVE_SLOT, DEAD_SLOT = 14, 15


def leftover(slot: int, claimer: int) -> NodeNetwork:
    """What a run leaves when it dies between claiming a slot and tearing it down."""
    network = NodeNetwork(slot)
    ip("netns", "add", network.netns)
    CLAIMS_DIR.mkdir(parents=True, exist_ok=True)
    network.claim_file.write_text(str(claimer))
    return network


def dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


@pytest.fixture
def slots() -> Iterator[None]:
    for slot in (LIVE_SLOT, DEAD_SLOT):
        if NodeNetwork(slot).netns_path.exists():
            pytest.skip(f"slot {slot} is in use on this machine")
    yield
    for slot in (LIVE_SLOT, DEAD_SLOT):
        NodeNetwork(slot).delete()


@pytest.mark.usefixtures("slots")
def test_a_slot_whose_claimer_died_is_claimed_again() -> None:
    leftover(DEAD_SLOT, dead_pid())
    claimed = NodeNetwork.claim(range(DEAD_SLOT, DEAD_SLOT + 1))
    assert claimed.slot == DEAD_SLOT
    assert int(claimed.claim_file.read_text()) == os.getpid()
    assert not claimed.abandoned()


@pytest.mark.usefixtures("slots")
def test_a_slot_whose_claimer_lives_is_left_alone() -> None:
    network = leftover(LIVE_SLOT, os.getpid())
    with pytest.raises(ClusterError, match="slots are taken"):
        NodeNetwork.claim(range(LIVE_SLOT, LIVE_SLOT + 1))
    assert network.netns_path.exists()
