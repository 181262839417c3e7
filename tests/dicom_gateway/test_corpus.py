"""The malformed-input corpus and a short mutation fuzz run against a real gateway."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cxr_triage.settings import Settings
from dicom_gateway.scp import Gateway
from tests.dicom_gateway.inspection import stored_instances
from tests.fuzzing import fuzz_cases, malformed_corpus, run_cases
from tests.peers import echoscu

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_each_malformed_instance_gets_its_status_and_the_gateway_keeps_serving(
    database_url: str, make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings(database_url=database_url)
    gateway = start_gateway(settings)
    corpus = malformed_corpus()

    report = run_cases("127.0.0.1", settings.dicom_port, corpus, per_association=len(corpus))

    assert report.unexpected == []
    assert report.cases == len(corpus)
    accepted = {c.sop_instance_uid for c in corpus if c.expected == {0}}
    assert {sop for _, sop, _ in stored_instances(gateway.store)} == accepted
    assert echoscu("127.0.0.1", settings.dicom_port).returncode == 0


def test_a_short_fuzz_run_neither_crashes_nor_hangs_the_gateway(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings()
    start_gateway(settings)

    report = run_cases("127.0.0.1", settings.dicom_port, list(fuzz_cases(300, seed=9)))

    assert report.cases == 300
    assert report.processing_failures == 0, report.statuses
    assert report.no_answer == 0, report.statuses
    assert report.unexpected == []
    assert echoscu("127.0.0.1", settings.dicom_port).returncode == 0
