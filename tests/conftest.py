"""Fixtures every test package may use."""

import pytest


@pytest.fixture
def interrupted_run():
    """``interrupted_run(config, out, at_round)``: a run stopped in round ``at_round``, after that round's
    metrics row and before its checkpoint, so ``out`` holds the checkpoint of round ``at_round - 1``."""
    from pfedlora.federation.simulation import run

    def interrupt(config, out, at_round: int) -> None:
        def stop(round_index, rounds, row):
            if round_index == at_round:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run(config, out, progress=stop, log=lambda _: None)

    return interrupt
