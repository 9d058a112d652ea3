"""The machine fingerprint's CPU facts: host classes from ISA flags, never from the model name."""
from __future__ import annotations

import pytest

from harness import host
from harness.host import CpuFacts


def _cpu(flags: str, arch: str = "x86_64", model: str = "AMD EPYC") -> CpuFacts:
    return CpuFacts(model, 2, arch, frozenset(flags.split()), "test")


@pytest.mark.parametrize("flags, cls, saturates", [
    ("sse4_2 avx avx2 fma", "x86-avx2", True),                            # issue 15's host
    ("avx2 fma avx512f avx512bw", "x86-avx512", True),                    # Skylake-SP: VPMADDUBSW too
    ("avx2 fma avx512f avx512bw avx512_vnni", "x86-avx512-vnni", False),  # this project's VNNI hosts
    ("avx2 fma avx_vnni", "x86-avx-vnni", False),                         # Alder Lake client cores
    ("avx2 avx512f avx512_vnni amx_tile amx_int8", "x86-amx", False),
    ("sse4_2", "x86", True),
])
def test_x86_host_class_and_saturation_come_from_the_flags(flags, cls, saturates):
    cpu = _cpu(flags)
    assert host.host_class(cpu) == cls
    assert host.u8s8_may_saturate(cpu) is saturates


def test_the_same_model_name_on_two_isas_gives_two_classes():
    # the issue-15 failure: both hosts say "AMD EPYC", 2 cores
    assert host.host_class(_cpu("avx2 fma")) != host.host_class(_cpu("avx2 fma avx512f avx512_vnni"))


@pytest.mark.parametrize("flags, cls", [("fp asimd asimddp i8mm", "arm-i8mm"), ("fp asimd asimddp", "arm-dotprod"),
                                        ("fp asimd", "arm"), ("", "arm-unknown")])
def test_arm_host_class_by_int8_dot_product_extensions(flags, cls):
    cpu = _cpu(flags, arch="aarch64", model="Neoverse")
    assert host.host_class(cpu) == cls
    assert not host.u8s8_may_saturate(cpu)


def test_unread_flags_say_unknown_and_claim_no_saturation():
    cpu = _cpu("")
    assert host.host_class(cpu) == "x86-unknown" and not host.u8s8_may_saturate(cpu)


def test_proc_cpuinfo_is_parsed_for_model_and_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 fma AVX512F avx512_vnni\n\n"
                 "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2\n")
    cpu = host.cpu_facts(f)
    assert cpu.model == "AMD EPYC 7B13" and cpu.source == str(f)
    assert {"avx2", "avx512f", "avx512_vnni"} <= cpu.flags  # first processor's line, lower-cased
    assert cpu.isa[:2] == ["avx2", "fma"]


def test_fingerprint_without_peaks_carries_class_isa_and_versions():
    fp = host.fingerprint(versions={"onnxruntime": "1.0"}, cpu=_cpu("avx2 fma"))
    d = fp.as_dict()
    assert d["host_class"] == "x86-avx2" and d["u8s8_saturates"] and d["versions"] == {"onnxruntime": "1.0"}
    assert d["fp32_peak_gflops"] is None
    assert fp.one_line().startswith("x86-avx2 · AMD EPYC, 2 cores · avx2 fma")


def test_an_xdist_worker_takes_its_share_of_the_cpus_not_all_of_them(monkeypatch):
    from harness.host import usable_cpus, xdist_share_of_cpus

    monkeypatch.setattr("harness.host.usable_cpus", lambda: 8)
    assert xdist_share_of_cpus({"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2"}) == 4
    assert xdist_share_of_cpus({"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "16"}) == 1
    assert xdist_share_of_cpus({}) is None  # not a worker: torch's and ORT's own defaults
    assert xdist_share_of_cpus({"PYTEST_XDIST_WORKER_COUNT": "2"}) is None  # the controller
    monkeypatch.undo()
    assert usable_cpus() >= 1


def test_settings_of_an_xdist_worker_do_not_oversubscribe_the_cpus(pytester, monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setattr("harness.host.usable_cpus", lambda: 2)
    from harness.plugin import settings_from

    config = pytester.parseconfig("-p", "harness.plugin")
    assert settings_from(config).threads == 1
    config = pytester.parseconfig("-p", "harness.plugin", "--threads", "2")
    assert settings_from(config).threads == 2


def test_the_last_xdist_worker_running_takes_every_cpu(tmp_path, monkeypatch):
    from harness.host import WorkerCpuShare

    monkeypatch.setattr("harness.host.usable_cpus", lambda: 2)
    gw0, gw1 = (WorkerCpuShare(tmp_path / "run", name, 2) for name in ("gw0", "gw1"))
    gw0.enter()
    assert gw0.threads() == 1  # gw1 not started yet: the static share, not every CPU
    gw1.enter()
    assert gw0.threads() == gw1.threads() == 1
    gw1.leave()  # xdist shut gw1 down: its queue was empty
    assert gw0.threads() == 2
    gw0.leave()
    assert not (tmp_path / "run").exists()


def test_a_phase_started_after_the_other_worker_left_runs_on_every_cpu(tmp_path, monkeypatch):
    # resnest50's int8 check started while the other worker ran: its evaluation phase, started
    # after that worker had left, stayed on 1 thread when the share was taken per test only
    from types import SimpleNamespace

    from harness.host import WorkerCpuShare
    from harness.phases import PhaseLog
    from harness.plugin import _take_cpu_share

    monkeypatch.setattr("harness.host.usable_cpus", lambda: 2)
    gw0, gw1 = (WorkerCpuShare(tmp_path / "run", name, 2) for name in ("gw0", "gw1"))
    gw0.enter()
    gw1.enter()
    lab = SimpleNamespace(settings=SimpleNamespace(threads=1))
    lab.take_threads = lambda n: setattr(lab.settings, "threads", n)
    log = PhaseLog(on_start=lambda: _take_cpu_share(lab, gw0))
    with log("calibration", "resnest50"):
        assert lab.settings.threads == 1
        gw1.leave()
        with log("evaluation", "resnest50"):
            assert lab.settings.threads == 2
    gw0.leave()
